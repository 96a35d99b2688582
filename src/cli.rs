//! Command-line interface: the subcommands and their flags. Every flag of `run` can also be set
//! through the environment variable named in its help.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::api::duration::parse as parse_duration;

use clap::{Args, Parser, Subcommand};

use crate::{http::limits::PublicLimitsArgs, telemetry::TelemetryArgs};

/// The servicenow-operator binary.
#[derive(Debug, Parser)]
#[command(
    name = "servicenow-operator",
    version,
    about = "Kubernetes operator for ServiceNow connections"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller and its HTTP listeners.
    Run(Box<RunArgs>),
    /// Print the ServiceNowConnection CustomResourceDefinition as YAML.
    Crd,
    /// Print the version.
    Version,
}

/// Flags of `run`, in groups.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The HTTP listeners.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Limits on the public listener.
    #[command(flatten)]
    pub limits: PublicLimitsArgs,
    /// How the operator reaches ServiceNow.
    #[command(flatten)]
    pub servicenow: ServiceNowArgs,
    /// The controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Logs.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The HTTP listeners.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The operator's externally reachable base URL (through the Ingress), e.g.
    /// `https://neo.example.com`. The consent redirect URL is this + `/oauth/servicenow/callback`
    /// and the webhook callback is this + `/callback/servicenow`.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: url::Url,
    /// Address of the public listener (consent and webhook endpoints).
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    pub admin_listen: SocketAddr,
    /// The namespace the operator runs in, where its Lease and consent-key Secret live (default:
    /// the Kubernetes client's namespace — the pod's own in a cluster, the kubeconfig context's
    /// outside; an empty value counts as unset).
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// The operator's own Secret holding the key that signs consent states (created if missing;
    /// shared by all replicas).
    #[arg(long, env = "STATE_KEY_SECRET", default_value = "servicenow-operator-consent-key")]
    pub state_key_secret: String,
}

/// How the operator reaches ServiceNow.
#[derive(Debug, Args)]
pub struct ServiceNowArgs {
    /// A PEM file of extra CA certificates to trust for ServiceNow (TLS verification stays on).
    #[arg(long, env = "CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Resolve HOST to IP:PORT instead of asking DNS, e.g. `acme.service-now.com=127.0.0.1:8443`;
    /// `*.service-now.com=IP:PORT` covers every host under the domain. Repeatable. For tests and
    /// for instances reached through a fixed address.
    #[arg(long = "resolve", env = "RESOLVE", value_delimiter = ',', value_parser = parse_resolve)]
    pub resolve: Vec<(String, SocketAddr)>,
    /// Timeout of one call to ServiceNow.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// The Refresh Token Lifespan of the instances' Application Registry entries (the token
    /// endpoint does not tell it); ServiceNow's default is 100 days.
    #[arg(long, env = "REFRESH_TOKEN_LIFESPAN", default_value = "2400h", value_parser = parse_duration)]
    pub refresh_token_lifespan: Duration,
}

/// The controller.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// How many connections are reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Elect one leader among the replicas (a Lease in the operator namespace); only the leader
    /// reconciles, every replica serves the consent and webhook endpoints.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "servicenow-operator")]
    pub lease_name: String,
    /// How long a leader's Lease lasts without renewal (a crashed leader is replaced after this).
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,
}

fn parse_lease_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration < Duration::from_secs(3) {
        return Err(format!("--lease-duration {value:?} is too short: use at least 3s"));
    }
    Ok(duration)
}

fn parse_resolve(value: &str) -> Result<(String, SocketAddr), String> {
    let (host, address) = value
        .split_once('=')
        .ok_or_else(|| format!("--resolve {value:?}: expected HOST=IP:PORT"))?;
    let address = address
        .parse()
        .map_err(|e| format!("--resolve {value:?}: {address:?} is not IP:PORT ({e})"))?;
    if host.is_empty() {
        return Err(format!("--resolve {value:?}: the host is empty"));
    }
    if host.contains('*') && (host.len() < 3 || !host.starts_with("*.") || host[2..].contains('*')) {
        return Err(format!(
            "--resolve {value:?}: a wildcard must be the whole first label, as in *.service-now.com=IP:PORT"
        ));
    }
    Ok((host.to_owned(), address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_takes_host_equals_address() {
        let (host, address) = parse_resolve("acme.service-now.com=127.0.0.1:8443").unwrap();
        assert_eq!(host, "acme.service-now.com");
        assert_eq!(address.port(), 8443);
        assert!(parse_resolve("acme.service-now.com").is_err());
        assert!(parse_resolve("acme=localhost").is_err());
        let (wildcard, _) = parse_resolve("*.service-now.com=127.0.0.1:8443").unwrap();
        assert_eq!(wildcard, "*.service-now.com");
        for misplaced in ["c*.service-now.com", "*", "*.", "*.a.*.com"] {
            let error = parse_resolve(&format!("{misplaced}=127.0.0.1:1")).unwrap_err();
            assert!(error.contains("whole first label"), "{misplaced}: {error}");
        }
    }
}
