//! The one real control plane (etcd + kube-apiserver + kube-controller-manager, see
//! `tests/envtest/README.md`) that all tests of a test binary share, and the CRD installed on it.
//! With `ENVTEST_KUBECONFIG=DIR/kubeconfig` set (what `make test` does after `tests/envtest/up
//! DIR`) the tests attach to that one; otherwise the first test to ask runs `tests/envtest/up`
//! into `$CARGO_TARGET_TMPDIR/envtest-<pid>`, and the watcher that `up` leaves behind
//! (`ENVTEST_WATCH_PID`) stops it once this process exits, panics included. No control plane
//! means every test that asks for one fails with the reason; nothing is ever skipped.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::OnceCell;

use super::poll_until;

/// Where `tests/envtest/up` lives, relative to the repository.
const UP_SCRIPT: &str = "tests/envtest/up";
/// Where `tests/envtest/restart` lives, relative to the repository.
const RESTART_SCRIPT: &str = "tests/envtest/restart";
/// How long a new control plane may take to answer its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The `User-Agent` of every request the test harness's own clients make, so that counts of the
/// API server's requests (`super::audit`) leave the test's own requests out. The operator's
/// requests carry none of their own.
pub const HARNESS_USER_AGENT: &str = "servicenow-operator-tests";

/// A running control plane: where its kubeconfig is and which binaries belong to it.
pub struct ControlPlane {
    kubeconfig_path: PathBuf,
    bin_dir: PathBuf,
    /// The API server's audit log (`ENVTEST_AUDIT_LOG` of `DIR/env`).
    audit_log: PathBuf,
    config: Config,
    server_version: String,
    /// The directory `tests/envtest/up` ran in, when this process started the control plane.
    started_in: Option<PathBuf>,
}

/// `relative` in this checkout. Read from `CARGO_MANIFEST_DIR` when the test runs (cargo sets it),
/// not when it is built: the build directory is shared by every checkout on the machine, and a
/// test binary built in another one would point there.
pub fn repo_path(relative: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .expect("CARGO_MANIFEST_DIR is not set: run the tests through `cargo test` (or `make test`)");
    PathBuf::from(root).join(relative)
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane of this process when one was started or attached and works; never starts one.
pub fn started_control_plane() -> Option<&'static ControlPlane> {
    CONTROL_PLANE.get()?.as_ref().ok()
}

/// The control plane of this test process, started or attached on first use (see the module
/// docs). Panics with the reason when there is none.
pub async fn control_plane() -> &'static ControlPlane {
    let plane = tokio::task::spawn_blocking(|| CONTROL_PLANE.get_or_init(ControlPlane::start_or_attach))
        .await
        .expect("the thread starting the control plane panicked");
    match plane {
        Ok(plane) => plane,
        Err(reason) => panic!("no Kubernetes control plane for the integration tests: {reason}"),
    }
}

/// A control plane of this process's own, started even when `ENVTEST_KUBECONFIG` names a shared one:
/// for a test binary whose tests stop and restart its processes ([`ControlPlane::restart`]), which
/// would break every other binary's tests on a shared one. Call it before anything else asks for
/// the control plane ([`control_plane`], [`install_crd`], a scene): they use this one from then on.
/// Panics with the reason when it cannot be started, or when the process attached to a shared one
/// already.
pub async fn private_control_plane() -> &'static ControlPlane {
    let plane =
        tokio::task::spawn_blocking(|| CONTROL_PLANE.get_or_init(|| ControlPlane::open(ControlPlane::start()?)))
            .await
            .expect("the thread starting the control plane panicked");
    match plane {
        Ok(plane) if plane.started_in.is_some() => plane,
        Ok(plane) => panic!(
            "this process attached to the shared control plane {} before asking for a private one",
            plane.kubeconfig_path.display()
        ),
        Err(reason) => panic!("no private Kubernetes control plane: {reason}"),
    }
}

/// A component of the control plane that [`ControlPlane::restart`] takes away and brings back.
#[derive(Clone, Copy, Debug)]
pub enum Component {
    /// kube-apiserver, killed (SIGKILL).
    ApiServer,
    /// etcd, stopped (SIGTERM).
    Etcd,
}

impl ControlPlane {
    /// Takes `component` away for `down_for` and starts it again as it was (`tests/envtest/restart`);
    /// returns once it serves again. Blocking: run it on a blocking thread while the test observes.
    /// Panics when this process did not start the control plane (see [`private_control_plane`]) or
    /// the restart fails (with its output).
    pub fn restart(&self, component: Component, down_for: Duration) -> Duration {
        let dir = self
            .started_in
            .as_deref()
            .expect("only a control plane this process started is restarted (private_control_plane)");
        let name = match component {
            Component::ApiServer => "apiserver",
            Component::Etcd => "etcd",
        };
        let started = std::time::Instant::now();
        let output = Command::new("bash")
            .arg(repo_path(RESTART_SCRIPT))
            .arg(dir)
            .args([name, "--down-for", &down_for.as_secs().to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("could not run {RESTART_SCRIPT}: {error}"));
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "`{RESTART_SCRIPT} {} {name}` failed ({}):\n{log}",
            dir.display(),
            output.status
        );
        eprintln!("{log}");
        started.elapsed()
    }

    fn start_or_attach() -> Result<Self, String> {
        match std::env::var_os("ENVTEST_KUBECONFIG") {
            Some(path) => Self::open(Self::attach(PathBuf::from(path))?),
            None => Self::open(Self::start()?),
        }
    }

    fn open((kubeconfig_path, bin_dir, started_in): (PathBuf, PathBuf, Option<PathBuf>)) -> Result<Self, String> {
        // kube's rustls needs a process-wide provider; the project builds rustls with ring only.
        // An error only means another part of the process installed one first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (config, server_version) = load_and_check(&kubeconfig_path)?;
        let env_file = kubeconfig_path.with_file_name("env");
        // The environment names the audit log of an attached control plane only.
        let audit_log = std::env::var_os("ENVTEST_AUDIT_LOG")
            .filter(|_| started_in.is_none())
            .map(PathBuf::from)
            .or_else(|| value_from_env_file(&env_file, "ENVTEST_AUDIT_LOG").map(PathBuf::from))
            .ok_or_else(|| {
                format!(
                    "no ENVTEST_AUDIT_LOG in the environment nor in {} (written by {UP_SCRIPT}); \
                     restart the control plane with this checkout's {UP_SCRIPT}",
                    env_file.display()
                )
            })?;
        Ok(Self {
            kubeconfig_path,
            bin_dir,
            audit_log,
            config,
            server_version,
            started_in,
        })
    }

    /// Uses the control plane that `ENVTEST_KUBECONFIG` names (started by `tests/envtest/up`).
    fn attach(kubeconfig_path: PathBuf) -> Result<(PathBuf, PathBuf, Option<PathBuf>), String> {
        if !kubeconfig_path.is_file() {
            return Err(format!(
                "ENVTEST_KUBECONFIG={} does not exist; start one with `tests/envtest/up DIR` and set \
                 ENVTEST_KUBECONFIG=DIR/kubeconfig, or unset ENVTEST_KUBECONFIG to let the tests start their own",
                kubeconfig_path.display()
            ));
        }
        let bin_dir = match std::env::var_os("ENVTEST_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let env_file = kubeconfig_path.with_file_name("env");
                bin_dir_from_env_file(&env_file).ok_or_else(|| {
                    format!(
                        "ENVTEST_KUBECONFIG is set but the binaries are unknown: no ENVTEST_BIN_DIR in the \
                         environment nor in {} (written by tests/envtest/up)",
                        env_file.display()
                    )
                })?
            }
        };
        Ok((kubeconfig_path, bin_dir, None))
    }

    /// Runs `tests/envtest/up` into a directory of this process, with a watcher on this process.
    fn start() -> Result<(PathBuf, PathBuf, Option<PathBuf>), String> {
        let runs = PathBuf::from(option_env!("CARGO_TARGET_TMPDIR").unwrap_or("/tmp"));
        remove_stopped_runs(&runs);
        let dir = runs.join(format!("envtest-{}", std::process::id()));
        let started = std::time::Instant::now();
        let up = Command::new("bash")
            .arg(repo_path(UP_SCRIPT))
            .arg(&dir)
            .env("ENVTEST_WATCH_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("could not run {UP_SCRIPT}: {error}"))?;
        let stderr = String::from_utf8_lossy(&up.stderr);
        if !up.status.success() {
            return Err(format!(
                "`{UP_SCRIPT} {}` failed ({}):\n{stderr}",
                dir.display(),
                up.status
            ));
        }
        eprintln!(
            "envtest: started a control plane in {} in {:.1}s (stopped when this process exits)",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        let env_file = dir.join("env");
        let bin_dir = bin_dir_from_env_file(&env_file).ok_or_else(|| {
            format!(
                "{UP_SCRIPT} succeeded but wrote no ENVTEST_BIN_DIR to {}",
                env_file.display()
            )
        })?;
        Ok((dir.join("kubeconfig"), bin_dir, Some(dir)))
    }

    /// A new client for the calling test. Call it inside the test's Tokio runtime: a client belongs
    /// to the runtime it was made in, so clients are not shared between tests. Its requests carry
    /// [`HARNESS_USER_AGENT`].
    pub fn client(&self) -> Client {
        let mut config = self.config.clone();
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(HARNESS_USER_AGENT),
        ));
        Client::try_from(config).expect("a kube client from the control plane's kubeconfig")
    }

    /// The API server's audit log (JSON lines, see `tests/envtest/up`), read by [`super::audit`].
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_log
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The directory with `kubectl`, `helm`, `kube-apiserver`, `kube-controller-manager`, `etcd`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `gitVersion` the API server reported when the harness first reached it.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// Where `tests/envtest/up` ran when this process started the control plane (its logs are in
    /// `logs/`); `None` when attached through `ENVTEST_KUBECONFIG`.
    pub fn started_in(&self) -> Option<&Path> {
        self.started_in.as_deref()
    }

    /// A command for `program` (a tool of [`Self::bin_dir`] when it has one by that name) with
    /// `KUBECONFIG` and `KUBECACHEDIR` set and the bin dir first on `PATH`.
    pub fn command(&self, program: &str) -> Command {
        let ours = self.bin_dir.join(program);
        let mut command = Command::new(if ours.is_file() { ours } else { PathBuf::from(program) });
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(self.bin_dir.clone()).chain(std::env::split_paths(&path)))
            .expect("PATH entries without ':'");
        // kubectl's discovery cache goes beside the kubeconfig rather than into ~/.kube/cache.
        let cache = self.kubeconfig_path.with_file_name("kubectl-cache");
        command
            .env("KUBECONFIG", &self.kubeconfig_path)
            .env("KUBECACHEDIR", cache)
            .env("PATH", path);
        command
    }

    /// `kubectl ARGS...` against this control plane, not yet started (to pipe stdin, for example).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = self.command("kubectl");
        command.args(args);
        command
    }

    /// Runs `kubectl ARGS...` against this control plane and returns what it did; the caller
    /// checks `status`. Blocking: fine for the short commands of a test.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("could not run {}/kubectl: {error}", self.bin_dir.display()))
    }

    /// Prints what is in `namespace` to stderr (the test's captured output): events, then every
    /// namespaced kind as YAML. Secrets are listed by name only.
    pub fn dump_namespace(&self, namespace: &str) {
        let stdout = |output: Output| {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text
        };
        let kinds = stdout(self.kubectl(&["api-resources", "--namespaced", "--verbs=list", "-o", "name"]));
        let kinds: Vec<&str> = kinds
            .lines()
            .filter(|kind| !matches!(kind.split('.').next(), Some("events" | "secrets" | "endpoints")))
            .collect();
        eprintln!("---- state of namespace {namespace} at the failure ----");
        eprintln!(
            "{}",
            stdout(self.kubectl(&[
                "get",
                "events",
                "-n",
                namespace,
                "--sort-by=.metadata.creationTimestamp"
            ]))
        );
        eprintln!("{}", stdout(self.kubectl(&["get", "secrets", "-n", namespace])));
        eprintln!(
            "{}",
            stdout(self.kubectl(&["get", &kinds.join(","), "-n", namespace, "-o", "yaml"]))
        );
        eprintln!("---- end of namespace {namespace} ----");
    }
}

/// Reads the kubeconfig into a [`Config`] and checks that the API server answers. Runs on a thread
/// and runtime of its own: the caller may be inside a Tokio runtime, and a client made in one of
/// the tests' runtimes would die with that test.
fn load_and_check(kubeconfig_path: &Path) -> Result<(Config, String), String> {
    let path = kubeconfig_path.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("could not start a Tokio runtime: {error}"))?;
        runtime.block_on(async move {
            let kubeconfig = Kubeconfig::read_from(&path)
                .map_err(|error| format!("could not read kubeconfig {}: {error}", path.display()))?;
            let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|error| format!("kubeconfig {} is unusable: {error}", path.display()))?;
            let server = config.cluster_url.clone();
            let client = Client::try_from(config.clone())
                .map_err(|error| format!("could not build a client for {server}: {error}"))?;
            let version = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, client.apiserver_version())
                .await
                .map_err(|_| format!("the API server at {server} did not answer within {FIRST_REQUEST_TIMEOUT:?}"))?
                .map_err(|error| format!("the API server at {server} does not answer: {error}"))?;
            Ok((config, version.git_version))
        })
    })
    .join()
    .map_err(|_| "the thread checking the control plane panicked".to_owned())?
}

/// `ENVTEST_BIN_DIR=...` from the `env` file `tests/envtest/up` writes (bash `%q` quoting, which is
/// the plain path for the paths it uses; anything that needed quoting is refused).
fn bin_dir_from_env_file(env_file: &Path) -> Option<PathBuf> {
    value_from_env_file(env_file, "ENVTEST_BIN_DIR").map(PathBuf::from)
}

/// `NAME=...` from the `env` file `tests/envtest/up` writes, when its value is a plain path (bash
/// `%q` leaves those as they are; anything that needed quoting is refused).
fn value_from_env_file(env_file: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(env_file).ok()?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))?;
    let plain = !value.is_empty() && !value.contains(['\\', '\'', '"', '$', ' ']);
    plain.then(|| value.to_owned())
}

/// Removes the directories of earlier runs (`envtest-<pid>`) whose test process is gone and whose
/// control plane is stopped (`tests/envtest/down` removes `pids/`). A run still in use is kept.
fn remove_stopped_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix("envtest-")) else {
            continue;
        };
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let owner_alive = Path::new("/proc").join(pid).exists();
        if pid == std::process::id().to_string() || owner_alive || entry.path().join("pids").exists() {
            continue;
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Installs the CRD exactly as a user would (`servicenow-operator crd | kubectl apply
/// --server-side -f -`) once per test process and waits until it is Established; returns a client.
pub async fn install_crd() -> Client {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let plane = control_plane().await;
    INSTALLED
        .get_or_init(|| async {
            let crd = Command::new(env!("CARGO_BIN_EXE_servicenow-operator"))
                .arg("crd")
                .output()
                .expect("run crd");
            assert!(crd.status.success(), "servicenow-operator crd failed: {crd:?}");
            let mut apply = plane
                .kubectl_command(&["apply", "--server-side", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start kubectl apply");
            apply
                .stdin
                .take()
                .expect("stdin")
                .write_all(&crd.stdout)
                .expect("write the CRD to kubectl");
            let applied = apply.wait_with_output().expect("kubectl apply");
            assert!(
                applied.status.success(),
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&applied.stderr)
            );
            let crds: Api<CustomResourceDefinition> = Api::all(plane.client());
            poll_until(Duration::from_secs(30), "the CRD to become Established", || {
                let crds = crds.clone();
                async move {
                    let crd = crds.get("servicenowconnections.neoagent.io").await.ok()?;
                    let conditions = crd.status?.conditions?;
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            })
            .await;
        })
        .await;
    plane.client()
}
