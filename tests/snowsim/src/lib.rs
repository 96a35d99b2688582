//! snowsim — a faithful, in-memory simulator of ServiceNow instances over real HTTPS, built to
//! `shared/servicenow-api.md`, with a management interface of its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = snowsim::Server::start(snowsim::Config::default(), "127.0.0.1:0".parse()?).await?;
//! let url = server.base_url("acme.service-now.com");          // https://acme.service-now.com
//! let client = server.client_builder().build()?;               // resolves the host, trusts the CA
//! let admin = server.admin();                                   // the default instance
//! let app = admin.oauth_app("Neo Agent").unwrap();              // client_id / client_secret
//! let rules = admin.records("sys_script", "name=Neo Agent — Task Webhook");
//! let calls = admin.request_log();                              // {method, path, query, user, status}
//! # let _ = (url, client, app, rules, calls); Ok(()) }
//! ```
//!
//! Clients reach an instance by mapping its host name to [`Server::addr`] (reqwest `resolve`, curl
//! `--resolve`, the operator's `--resolve HOST=IP:PORT`) and trusting [`Server::ca_pem`] /
//! [`Server::ca_path`], so URL validation and TLS verification stay on.
//!
//! Layout: `server` (listener and gateway), `oauth` + `consent` (§1), `table` + `render` +
//! `query` (§2), `store` + `schema` + `seed` + `acl` (§3), `rules` + `script` (Business Rules),
//! `email` (§4), `batch` (the Batch API), `mfa` (the login's MFA step), `faults` (rate limits
//! and injected faults), `envelope` (answers and errors),
//! `manage` (the [`Admin`] handle and `/snowsim/` HTTP paths); `drive` is the other side, for
//! tests: the password grant and a person's consent over the public pages.

pub mod acl;
pub mod auth;
pub mod batch;
pub mod clock;
pub mod config;
mod consent;
pub mod drive;
mod email;
pub mod envelope;
pub mod faults;
pub mod instance;
pub mod logs;
pub mod manage;
mod mfa;
pub mod oauth;
pub mod query;
pub mod render;
pub mod rules;
pub mod schema;
pub mod script;
pub mod seed;
mod server;
pub mod store;
mod table;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use acl::{AclRule, Operation};
pub use config::{
    Behaviour, Config, INTEGRATION_PROPERTIES, INTEGRATION_ROLE, InstanceConfig, OAuthAppSpec, SCRIPT_WRITER_ROLE,
    UserSpec,
};
pub use faults::{Fault, FaultAction, RateLimitRule, RateLimitTarget};
pub use logs::{OutboundLogEntry, RequestLogEntry, SystemLogEntry};
pub use manage::{Admin, AdminError};
pub use oauth::{OAuthApp, TokenInfo, TokenKind};
pub use seed::{ADMIN_ROLE_SYS_ID, ADMIN_SYS_ID, ITIL_ROLE_SYS_ID};
pub use tls::CertificateAuthority;

use instance::Instance;
use server::Shared;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificate generation or TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The outbound HTTP client could not be built (bad extra CA?).
    #[error("failed to build the outbound HTTP client: {0}")]
    OutboundClient(#[from] reqwest::Error),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running simulator: one HTTPS listener serving one or more instances. Dropping it stops
/// accepting connections.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    outbound: reqwest::Client,
    shutdown: tokio::sync::watch::Sender<bool>,
    ca_file: Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Starts a server with a freshly generated CA on `addr` (port 0 picks a free port).
    pub async fn start(config: Config, addr: SocketAddr) -> Result<Server, StartError> {
        Server::start_with_ca(config, addr, CertificateAuthority::generate()?).await
    }

    /// Starts a server whose certificate is issued by `ca` (e.g. one kept across restarts).
    pub async fn start_with_ca(
        config: Config,
        addr: SocketAddr,
        ca: CertificateAuthority,
    ) -> Result<Server, StartError> {
        let mut hosts: Vec<String> = config.instances.iter().map(|i| i.host.to_ascii_lowercase()).collect();
        hosts.sort();
        if hosts.windows(2).any(|w| w[0] == w[1]) {
            return Err(StartError::Config("two instances share a host name".into()));
        }
        if hosts.is_empty() {
            return Err(StartError::Config("no instance configured".into()));
        }
        let mut outbound = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())?)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(extra) = &config.outbound_extra_ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(extra.as_bytes())? {
                outbound = outbound.add_root_certificate(cert);
            }
        }
        let outbound = outbound.build()?;
        let clock = clock::Clock::default();
        let mut instances = server::Instances::default();
        for instance in &config.instances {
            instances.insert(Arc::new(Instance::new(instance, clock.clone(), outbound.clone())));
        }
        let shared = Arc::new(Shared {
            clock,
            instances: RwLock::new(instances),
            ca_pem: ca.cert_pem().to_string(),
        });
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config()?));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(server::serve(listener, acceptor, server::app(shared.clone()), watch));
        Ok(Server {
            shared,
            addr,
            outbound,
            shutdown,
            ca_file: Mutex::new(None),
        })
    }

    /// The address the listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host names served, default instance first.
    pub fn hosts(&self) -> Vec<String> {
        self.shared.instances.read().iter().map(|i| i.host.clone()).collect()
    }

    /// The instance URL of `host` as a client configures it: `https://<host>`, no port (map the
    /// host to [`Server::addr`]).
    pub fn base_url(&self, host: &str) -> String {
        format!("https://{host}")
    }

    /// The default instance's URL.
    pub fn url(&self) -> String {
        self.base_url(&self.hosts()[0])
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.shared.ca_pem
    }

    /// Writes the CA certificate to a file (once) and returns its path.
    pub fn ca_path(&self) -> std::io::Result<PathBuf> {
        let mut file = self.ca_file.lock();
        if let Some(path) = file.as_ref() {
            return Ok(path.clone());
        }
        let dir = std::env::temp_dir().join(format!("snowsim-{}-{}", std::process::id(), self.addr.port()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.ca_pem())?;
        *file = Some(path.clone());
        Ok(path)
    }

    /// The management handle of the default instance.
    pub fn admin(&self) -> Admin {
        let instance = self.shared.default_instance().expect("a server has an instance");
        Admin::new(instance, self.shared.clock.clone())
    }

    /// The management handle of the instance serving `host`.
    pub fn instance(&self, host: &str) -> Option<Admin> {
        self.shared
            .instance(host)
            .map(|i| Admin::new(i, self.shared.clock.clone()))
    }

    /// Adds an instance at run time (replacing one with the same host, which keeps its place).
    pub fn add_instance(&self, config: &InstanceConfig) -> Admin {
        let instance = Arc::new(Instance::new(config, self.shared.clock.clone(), self.outbound.clone()));
        self.shared.instances.write().insert(instance.clone());
        Admin::new(instance, self.shared.clock.clone())
    }

    /// A reqwest client builder that resolves every instance host to this server and trusts
    /// its CA (and nothing else), with redirects off so OAuth redirects can be inspected.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none());
        if let Ok(cert) = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()) {
            builder = builder.add_root_certificate(cert);
        }
        for host in self.hosts() {
            builder = builder.resolve(&host, self.addr);
        }
        builder
    }

    /// Stops accepting connections.
    pub fn shutdown(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
