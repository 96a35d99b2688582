//! Fixtures for tests that run the whole operator: the CRD installed once per process, a snowsim
//! instance per test, the operator binary as a child process watching only the test's namespace
//! (its logs kept in a file so tests can grep them for secrets), and a seeded connection.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use servicenow_operator::api::{ServiceNowConnection, ServiceNowConnectionStatus};
use tokio::sync::OnceCell;

use super::{control_plane, poll_until};

/// The host every test instance answers as.
pub const HOST: &str = "acme.service-now.com";
/// The service account's password in snowsim's seed (`neo.agent` / `neo.agent`).
pub const AGENT: &str = "neo.agent";

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

/// A snowsim server with the default instance `acme.service-now.com`.
pub async fn simulator() -> snowsim::Server {
    snowsim::Server::start(snowsim::Config::default(), "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("start snowsim")
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for a test's own listeners).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
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
        Self::start_as(namespace, simulator, public_port, extra, plane.kubeconfig_path()).await
    }

    /// Starts the operator with the identity of `kubeconfig` (e.g. the chart's ServiceAccount).
    pub async fn start_as(
        namespace: &str,
        simulator: &snowsim::Server,
        public_port: u16,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Operator {
        let admin_port = free_port();
        let public_url = format!("http://127.0.0.1:{public_port}");
        let ca = simulator.ca_path().expect("write the simulator's CA");
        let dir = std::env::temp_dir().join(format!("snop-{namespace}"));
        fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("operator-{public_port}-{admin_port}.log"));
        let log_file = fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_servicenow-operator"))
            .arg("run")
            .args(["--public-url", &public_url])
            .args(["--listen", &format!("127.0.0.1:{public_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--namespace", namespace])
            // The test namespace is also the operator's own: its Lease and state-key Secret stay
            // per test, so concurrent tests never wait for each other's leader.
            .args(["--operator-namespace", namespace])
            .args(["--lease-duration", "3s"])
            .args(["--resolve", &format!("{HOST}={}", simulator.addr())])
            .arg("--ca-bundle")
            .arg(&ca)
            .args(["--log-filter", "info,servicenow_operator=debug"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start the operator binary");
        let operator = Operator {
            child,
            log,
            public_url,
            admin_url: format!("http://127.0.0.1:{admin_port}"),
        };
        let readyz = format!("{}/readyz", operator.admin_url);
        let logs = operator.log.clone();
        poll_until(Duration::from_secs(30), "the operator's /readyz", || {
            let readyz = readyz.clone();
            let logs = logs.clone();
            async move {
                match reqwest::get(&readyz).await {
                    Ok(answer) if answer.status().is_success() => super::Observed::Done(()),
                    other => super::Observed::not_yet(format!(
                        "{other:?}; log: {}",
                        fs::read_to_string(&logs).unwrap_or_default()
                    )),
                }
            }
        })
        .await;
        operator
    }

    /// Everything the operator wrote so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The credentials and a refresh token for `neo.agent`, as a platform team would have them
/// after consent (the token obtained with the documented password grant).
pub struct Seed {
    /// Client id of the OAuth app.
    pub client_id: String,
    /// Client secret of the OAuth app.
    pub client_secret: String,
    /// A refresh token issued to `neo.agent`.
    pub refresh_token: String,
}

/// Gets a refresh token for `user` from the simulator's token endpoint (password grant).
pub async fn seed(simulator: &snowsim::Server, user: &str) -> Seed {
    let app = simulator.admin().oauth_app("Neo Agent").expect("the seeded OAuth app");
    let client = simulator.client_builder().build().expect("client");
    let answer: serde_json::Value = client
        .post(format!("{}/oauth_token.do", simulator.base_url(HOST)))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", user),
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.as_str()),
        ])
        .send()
        .await
        .expect("token endpoint")
        .json()
        .await
        .expect("token answer");
    let refresh_token = answer["refresh_token"].as_str().expect("a refresh token").to_owned();
    // What the operator does is counted from here.
    simulator.admin().clear_request_log();
    Seed {
        client_id: app.client_id,
        client_secret: app.client_secret,
        refresh_token,
    }
}

/// Creates (or replaces) an Opaque Secret.
pub async fn put_secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    let _ = secrets.delete(name, &Default::default()).await;
    poll_until(Duration::from_secs(10), "the Secret to be created", || {
        let secrets = secrets.clone();
        let secret = secret.clone();
        async move { secrets.create(&PostParams::default(), &secret).await.ok().map(|_| ()) }
    })
    .await;
}

/// Creates the connection `name` from YAML-ish JSON `spec`.
pub async fn create_connection(client: &Client, namespace: &str, name: &str, spec: serde_json::Value) {
    let api: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    let object = serde_json::json!({
        "apiVersion": "neoagent.io/v1alpha1", "kind": "ServiceNowConnection",
        "metadata": {"name": name}, "spec": spec,
    });
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).expect("connection"),
    )
    .await
    .expect("create the connection");
}

/// Polls the connection's status until `done` accepts it.
pub async fn wait_for_status(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    done: impl Fn(&ServiceNowConnectionStatus) -> bool,
) -> ServiceNowConnectionStatus {
    let api: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    poll_until(Duration::from_secs(30), what, || {
        let api = api.clone();
        let done = &done;
        async move {
            let connection = api.get(name).await.map_err(|e| e.to_string())?;
            let status = connection.status.unwrap_or_default();
            Ok::<_, String>(if done(&status) {
                super::Observed::Done(status)
            } else {
                super::Observed::not_yet(serde_json::to_string(&status).unwrap_or_default())
            })
        }
    })
    .await
}

/// The condition `type_` of `status` as (status, reason).
pub fn condition(status: &ServiceNowConnectionStatus, type_: &str) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}
