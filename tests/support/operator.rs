//! The operator binary as a child process watching only the test's namespace (its logs kept in a
//! file so tests can grep them for secrets), and what it shows on its admin listener.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{Observed, control_plane, instance::HOST, poll_until};

/// A free TCP port on 127.0.0.1 (bound and released; fine for a test's own listeners), never
/// one this test binary was given before: its tests run side by side, and a port released but
/// not yet bound again by the listener it was chosen for could otherwise go to a second one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("address")
            .port();
        if GIVEN.lock().expect("the ports given").insert(port) {
            return port;
        }
    }
}

/// The operator binary, running as a child process until dropped.
pub struct Operator {
    child: Child,
    log: PathBuf,
    /// The operator's public base URL (`http://127.0.0.1:<port>`).
    pub public_url: String,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_url: String,
}

impl Operator {
    /// Starts the operator against `simulator`, watching only `namespace`.
    pub async fn start(namespace: &str, simulator: &snowsim::Server) -> Operator {
        let public_port = free_port();
        Self::start_with(namespace, simulator, public_port, &[]).await
    }

    /// Starts the operator with a given public port and extra flags.
    pub async fn start_with(
        namespace: &str,
        simulator: &snowsim::Server,
        public_port: u16,
        extra: &[&str],
    ) -> Operator {
        let plane = control_plane().await;
        Self::start_as(namespace, simulator, public_port, extra, &[], plane.kubeconfig_path()).await
    }

    /// Starts the operator with the identity of `kubeconfig` (e.g. the chart's ServiceAccount)
    /// and the environment variables `env` on top of the harness's.
    pub async fn start_as(
        namespace: &str,
        simulator: &snowsim::Server,
        public_port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        kubeconfig: &std::path::Path,
    ) -> Operator {
        let public_url = format!("http://127.0.0.1:{public_port}");
        Self::spawn(
            namespace,
            simulator,
            simulator.addr(),
            public_port,
            &public_url,
            extra,
            env,
            kubeconfig,
        )
        .await
    }

    /// Starts the operator listening on `listen_port` but announcing `public_url` (another
    /// replica's address, say: two replicas behind one Service).
    pub async fn start_behind(
        namespace: &str,
        simulator: &snowsim::Server,
        listen_port: u16,
        public_url: &str,
    ) -> Operator {
        let plane = control_plane().await;
        Self::spawn(
            namespace,
            simulator,
            simulator.addr(),
            listen_port,
            public_url,
            &[],
            &[],
            plane.kubeconfig_path(),
        )
        .await
    }

    /// Starts the operator; the instance's host resolves to `instance` (the simulator, or a port
    /// nobody listens on).
    #[allow(clippy::too_many_arguments)] // one constructor behind the named ones (and `Scene`'s)
    pub(super) async fn spawn(
        namespace: &str,
        simulator: &snowsim::Server,
        instance: SocketAddr,
        public_port: u16,
        public_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        kubeconfig: &std::path::Path,
    ) -> Operator {
        let admin_port = free_port();
        let mut command = controller_command("run", namespace, simulator, instance, public_url, admin_port);
        command
            .args(["--listen", &format!("127.0.0.1:{public_port}")])
            .args(
                // Debug logs unless `extra` chooses (a benchmark of thousands of connections).
                (!extra.contains(&"--log-filter"))
                    .then_some(["--log-filter", DEBUG_LOGS])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .envs(env.iter().copied());
        Self::launch(
            command,
            namespace,
            &format!("operator-{public_port}-{admin_port}"),
            public_url,
            admin_port,
        )
        .await
    }

    /// Starts the two components as the chart deploys them: `controller` with the identity of
    /// `controller_kubeconfig` and the environment `controller_env` on top of the harness's, its
    /// hand-off listener on a free port; and `public` on `public_port` (with the identity of
    /// `public_kubeconfig`, which it does not use), forwarding to it. Both read the hand-off key
    /// from `key_file`. Returns (controller, public); the public one's `public_url` is where
    /// browsers and the instance go.
    pub async fn start_split(
        namespace: &str,
        simulator: &snowsim::Server,
        public_port: u16,
        controller_env: &[(&str, &str)],
        controller_kubeconfig: &std::path::Path,
        public_kubeconfig: &std::path::Path,
        key_file: &std::path::Path,
    ) -> (Operator, Operator) {
        let public_url = format!("http://127.0.0.1:{public_port}");
        let (admin_port, handoff_port) = (free_port(), free_port());
        let mut command = controller_command(
            "controller",
            namespace,
            simulator,
            simulator.addr(),
            &public_url,
            admin_port,
        );
        command
            .args(["--handoff-listen", &format!("127.0.0.1:{handoff_port}")])
            .arg("--handoff-key-file")
            .arg(key_file)
            .args(["--log-filter", DEBUG_LOGS])
            .env("KUBECONFIG", controller_kubeconfig)
            .envs(controller_env.iter().copied());
        let controller = Self::launch(
            command,
            namespace,
            &format!("controller-{admin_port}"),
            &public_url,
            admin_port,
        )
        .await;
        let admin_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_servicenow-operator"));
        command
            .arg("public")
            .args(["--listen", &format!("127.0.0.1:{public_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--controller-url", &format!("http://127.0.0.1:{handoff_port}")])
            .arg("--handoff-key-file")
            .arg(key_file)
            .args(["--log-filter", DEBUG_LOGS])
            .env("KUBECONFIG", public_kubeconfig);
        let public = Self::launch(
            command,
            namespace,
            &format!("public-{public_port}"),
            &public_url,
            admin_port,
        )
        .await;
        (controller, public)
    }

    /// Runs `subcommand` against `simulator` watching `namespace`, its admin listener on
    /// `admin_port` and `extra` flags on top, as a start that must fail: waits up to 30 s for it
    /// to exit (killed and failed after that); returns how it ended and what it wrote.
    pub async fn run_to_exit(
        subcommand: &str,
        namespace: &str,
        simulator: &snowsim::Server,
        admin_port: u16,
        extra: &[&str],
    ) -> (std::process::ExitStatus, String) {
        let plane = control_plane().await;
        let mut command = controller_command(
            subcommand,
            namespace,
            simulator,
            simulator.addr(),
            "http://127.0.0.1:9",
            admin_port,
        );
        command.args(extra).env("KUBECONFIG", plane.kubeconfig_path());
        let name = format!("{subcommand}-{admin_port}-exit");
        let mut operator = Self::spawn_logged(command, namespace, &name, "", admin_port);
        let status = operator.wait_for_exit(Duration::from_secs(30)).await;
        (status, operator.logs())
    }

    /// Starts `command`, its output in a log file `name` among `namespace`'s.
    fn spawn_logged(mut command: Command, namespace: &str, name: &str, public_url: &str, admin_port: u16) -> Operator {
        let dir = log_dir(namespace);
        fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{name}.log"));
        let log_file = fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start the operator binary");
        Operator {
            child,
            log,
            public_url: public_url.to_owned(),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
        }
    }

    /// Starts `command` (its output in a log file `name` among `namespace`'s) and waits for its
    /// `/readyz` on `admin_port`.
    async fn launch(command: Command, namespace: &str, name: &str, public_url: &str, admin_port: u16) -> Operator {
        let operator = Self::spawn_logged(command, namespace, name, public_url, admin_port);
        let readyz = format!("{}/readyz", operator.admin_url);
        let logs = operator.log.clone();
        poll_until(Duration::from_secs(30), "the operator's /readyz", || {
            let readyz = readyz.clone();
            let logs = logs.clone();
            async move {
                match reqwest::get(&readyz).await {
                    Ok(answer) if answer.status().is_success() => Observed::Done(()),
                    other => Observed::not_yet(format!(
                        "{other:?}; log: {}",
                        fs::read_to_string(&logs).unwrap_or_default()
                    )),
                }
            }
        })
        .await;
        operator
    }

    /// The value of the series `series` on the operator's `/metrics`, written as the page
    /// writes it (e.g. `servicenow_operator_webhook_requests_rejected_total{reason="malformed"}`);
    /// 0 when the page does not show it (yet).
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_page()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The operator's `/metrics` page.
    pub async fn metrics_page(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics page")
    }

    /// The process id (its `/proc/<pid>` figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the operator wrote so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs (it has not exited).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("check on the operator").is_none()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the operator to stop as Kubernetes does (SIGTERM), without waiting.
    pub fn terminate(&self) {
        let pid = self.child.id();
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
    }

    /// Waits up to `deadline` for the operator to exit; returns how it ended.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the operator") {
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "the operator did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- operator log ({}) ---\n{}", self.log.display(), self.logs());
        }
        self.kill();
    }
}

/// `servicenow-operator SUBCOMMAND` (`run` or `controller`) with the harness's flags: watching only
/// `namespace`, which is also its own, the instance's host resolved to `instance`, the simulator's
/// CA trusted, announcing `public_url`, its admin listener on `admin_port`.
/// The log filter of the operators the tests start, unless a test chooses another.
const DEBUG_LOGS: &str = "info,servicenow_operator=debug";

fn controller_command(
    subcommand: &str,
    namespace: &str,
    simulator: &snowsim::Server,
    instance: SocketAddr,
    public_url: &str,
    admin_port: u16,
) -> Command {
    let ca = simulator.ca_path().expect("write the simulator's CA");
    let mut command = Command::new(env!("CARGO_BIN_EXE_servicenow-operator"));
    command
        .arg(subcommand)
        .args(["--public-url", public_url])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--namespace", namespace])
        // The test namespace is also the operator's own: its Lease and state-key Secret stay
        // per test, so concurrent tests never wait for each other's leader. Through the
        // environment, as the chart does, so that `env` can override it.
        .env("POD_NAMESPACE", namespace)
        // Through the environment, so that a test's `--lease-duration` takes precedence.
        .env("LEASE_DURATION", "3s")
        .args(["--resolve", &format!("{HOST}={instance}")])
        .arg("--ca-bundle")
        .arg(&ca)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    command
}

/// Where the operators of `namespace` write their logs (one file each).
fn log_dir(namespace: &str) -> PathBuf {
    std::env::temp_dir().join(format!("snop-{namespace}"))
}

/// Everything every operator started for `namespace` wrote so far (a killed one included).
pub fn all_operator_logs(namespace: &str) -> String {
    let Ok(entries) = fs::read_dir(log_dir(namespace)) else {
        return String::new();
    };
    entries
        .flatten()
        .map(|entry| fs::read_to_string(entry.path()).unwrap_or_default())
        .collect()
}
