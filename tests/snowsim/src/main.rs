//! `snowsim --listen 127.0.0.1:8443 [--config FILE] [--state-dir DIR] [--redirect-url URL]`:
//! serves the configured instances (default: `acme.service-now.com`) until interrupted, after
//! printing where the CA certificate is and how to log in.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use snowsim::{CertificateAuthority, Config, Server};

/// A ServiceNow instance simulator over HTTPS.
#[derive(Debug, Parser)]
#[command(name = "snowsim", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "SNOWSIM_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// JSON configuration file (see the README); default: one instance, acme.service-now.com.
    #[arg(long, env = "SNOWSIM_CONFIG")]
    config: Option<PathBuf>,
    /// Directory keeping the CA (ca.pem, ca-key.pem) and the OAuth credentials across restarts.
    #[arg(long, env = "SNOWSIM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Redirect URL of the default OAuth application (the operator's
    /// `<public url>/oauth/servicenow/callback`).
    #[arg(long, env = "SNOWSIM_REDIRECT_URL")]
    redirect_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Start(#[from] snowsim::StartError),
    #[error(transparent)]
    Tls(#[from] snowsim::tls::TlsError),
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    if let Err(error) = run(Cli::parse()).await {
        eprintln!("snowsim: {error}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), MainError> {
    let Cli {
        listen,
        config,
        state_dir,
        redirect_url,
    } = cli;
    let mut config = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| MainError::Read {
                path: path.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|source| MainError::Parse {
                path: path.clone(),
                source,
            })?
        }
        None => Config::default(),
    };
    if let Some(url) = &redirect_url {
        for instance in &mut config.instances {
            for app in &mut instance.oauth_apps {
                app.redirect_urls = vec![url.clone()];
            }
        }
    }
    let ca = match &state_dir {
        Some(dir) => load_state(dir, &mut config)?,
        None => CertificateAuthority::generate()?,
    };
    let server = Server::start_with_ca(config, listen, ca).await?;
    let ca_path = match &state_dir {
        Some(dir) => dir.join("ca.pem"),
        None => server.ca_path().map_err(|source| MainError::Write {
            path: PathBuf::from("ca.pem"),
            source,
        })?,
    };
    if let Some(dir) = &state_dir {
        save_apps(dir, &server)?;
    }
    print_banner(&server, &ca_path);
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

fn print_banner(server: &Server, ca_path: &std::path::Path) {
    let addr = server.addr();
    println!("snowsim listening on {addr}");
    println!("ca_certificate: {}", ca_path.display());
    for host in server.hosts() {
        let Some(admin) = server.instance(&host) else { continue };
        println!(
            "instance: {} (curl --resolve {host}:{}:{} --cacert {} ...)",
            server.base_url(&host),
            addr.port(),
            addr.ip(),
            ca_path.display()
        );
        println!("  users: admin/admin, neo.agent/neo.agent (when seeded by default)");
        for app in admin.oauth_apps() {
            println!("  oauth_app: {}", app.name);
            println!("    client_id: {}", app.client_id);
            println!("    client_secret: {}", app.client_secret);
            println!("    redirect_url: {}", app.redirect_urls.join(","));
        }
    }
    println!(
        "management: https://<instance host>/snowsim/ (requests, syslog, records/<table>, clock/advance, faults, ...)"
    );
    println!("ready");
}

/// Reuses the CA and the OAuth credentials kept in `dir`, creating them on first use.
fn load_state(dir: &std::path::Path, config: &mut Config) -> Result<CertificateAuthority, MainError> {
    std::fs::create_dir_all(dir).map_err(|source| MainError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let ca = match (std::fs::read_to_string(&cert), std::fs::read_to_string(&key)) {
        (Ok(cert_pem), Ok(key_pem)) => CertificateAuthority::load(&cert_pem, &key_pem)?,
        _ => {
            let ca = CertificateAuthority::generate()?;
            write(&cert, ca.cert_pem())?;
            write(&key, ca.key_pem())?;
            ca
        }
    };
    let apps = dir.join("oauth-apps.json");
    if let Ok(text) = std::fs::read_to_string(&apps) {
        let saved: Vec<(String, String, String, String)> = serde_json::from_str(&text).unwrap_or_default();
        for instance in &mut config.instances {
            for app in &mut instance.oauth_apps {
                let found = saved
                    .iter()
                    .find(|(host, name, _, _)| *host == instance.host && *name == app.name);
                if let Some((_, _, id, secret)) = found {
                    app.client_id.get_or_insert_with(|| id.clone());
                    app.client_secret.get_or_insert_with(|| secret.clone());
                }
            }
        }
    }
    Ok(ca)
}

fn save_apps(dir: &std::path::Path, server: &Server) -> Result<(), MainError> {
    let mut saved = Vec::new();
    for host in server.hosts() {
        if let Some(admin) = server.instance(&host) {
            for app in admin.oauth_apps() {
                saved.push((host.clone(), app.name, app.client_id, app.client_secret));
            }
        }
    }
    let text = serde_json::to_string_pretty(&saved).unwrap_or_default();
    write(&dir.join("oauth-apps.json"), &text)
}

fn write(path: &std::path::Path, text: &str) -> Result<(), MainError> {
    std::fs::write(path, text).map_err(|source| MainError::Write {
        path: path.to_path_buf(),
        source,
    })
}
