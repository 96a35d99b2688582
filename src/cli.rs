//! Command-line interface: the subcommands and their flags. Every flag of `run`, `controller`
//! and `public` can also be set through the environment variable named in its help.

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
    /// Run everything in one process: the controller, the public listener (consent and webhook
    /// endpoints) and the admin listener.
    Run(Box<RunArgs>),
    /// Run the controller component: the reconciler (under leader election), its admin listener
    /// and the internal hand-off listener that only the public component calls.
    Controller(Box<ControllerCommandArgs>),
    /// Run the public component: the consent and webhook endpoints with their limits, handing
    /// every request on to the controller component; it needs no Kubernetes API access.
    Public(Box<PublicArgs>),
    /// Print the ServiceNowConnection CustomResourceDefinition as YAML.
    Crd,
    /// Print the version.
    Version,
}

/// Flags of `run` (everything in one process), in groups.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The public listener's address.
    #[command(flatten)]
    pub public: PublicListenArgs,
    /// Limits on the public listener.
    #[command(flatten)]
    pub limits: PublicLimitsArgs,
    /// Everything the controller needs.
    #[command(flatten)]
    pub core: CoreArgs,
}

/// Flags of `controller`: what the controller needs, and the internal hand-off listener.
#[derive(Debug, Args)]
pub struct ControllerCommandArgs {
    /// Everything the controller needs.
    #[command(flatten)]
    pub core: CoreArgs,
    /// Address of the internal hand-off listener, which serves the consent and webhook
    /// endpoints to the public component only (the chart's NetworkPolicy admits nothing else).
    #[arg(long, env = "HANDOFF_LISTEN", default_value = "0.0.0.0:8082")]
    pub handoff_listen: SocketAddr,
    /// The hand-off key both components share.
    #[command(flatten)]
    pub key: HandOffKeyArgs,
}

/// Flags of `public`: the public listener, its limits, and where the controller component is.
#[derive(Debug, Args)]
pub struct PublicArgs {
    /// The public listener's address.
    #[command(flatten)]
    pub public: PublicListenArgs,
    /// Limits on the public listener.
    #[command(flatten)]
    pub limits: PublicLimitsArgs,
    /// The admin listener's address.
    #[command(flatten)]
    pub admin: AdminListenArgs,
    /// Base URL of the controller component's hand-off listener, e.g.
    /// `http://neo-servicenow-operator-controller:8082`.
    #[arg(long, env = "CONTROLLER_URL")]
    pub controller_url: url::Url,
    /// The hand-off key both components share.
    #[command(flatten)]
    pub key: HandOffKeyArgs,
    /// Logs.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The public listener's address.
#[derive(Debug, Args)]
pub struct PublicListenArgs {
    /// Address of the public listener (consent and webhook endpoints).
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
}

/// The admin listener's address.
#[derive(Debug, Args)]
pub struct AdminListenArgs {
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    pub admin_listen: SocketAddr,
}

/// The key that authenticates the public component to the controller component.
#[derive(Debug, Args)]
pub struct HandOffKeyArgs {
    /// A file holding the hand-off key (at least 32 characters; surrounding whitespace ignored),
    /// the same for both components. The chart generates it into a Secret mounted into both pods.
    #[arg(long, env = "HANDOFF_KEY_FILE")]
    pub handoff_key_file: PathBuf,
}

/// What the controller needs, whether alone (`controller`) or with the public listener (`run`).
#[derive(Debug, Args)]
pub struct CoreArgs {
    /// The operator's URLs, its admin listener and its own namespace.
    #[command(flatten)]
    pub http: HttpArgs,
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

/// The operator's URLs, its admin listener and its own namespace.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The operator's externally reachable base URL (through the Ingress), e.g.
    /// `https://neo.example.com`. The consent redirect URL is this + `/oauth/servicenow/callback`
    /// and the webhook callback is this + `/callback/servicenow`.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: url::Url,
    /// The admin listener's address.
    #[command(flatten)]
    pub admin: AdminListenArgs,
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
    /// Watch only these namespaces, comma-separated or repeated (default: all namespaces).
    /// Empty entries are ignored.
    #[arg(
        long,
        visible_alias = "watch-namespace",
        env = "WATCH_NAMESPACE",
        value_delimiter = ',',
        value_parser = parse_namespace
    )]
    pub namespace: Vec<String>,
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

/// A namespace name (an RFC 1123 label), or the empty string (ignored).
fn parse_namespace(value: &str) -> Result<String, String> {
    let value = value.trim();
    let label = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !label {
        return Err(format!(
            "--watch-namespace {value:?} is not a namespace name: use lower-case letters, digits and '-', \
             at most 63 characters, e.g. --watch-namespace itsm,hr"
        ));
    }
    Ok(value.to_owned())
}

impl ControllerArgs {
    /// The namespaces to watch (empty entries dropped); none means all namespaces.
    pub fn watched_namespaces(&self) -> Vec<String> {
        self.namespace.iter().filter(|ns| !ns.is_empty()).cloned().collect()
    }
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

    #[test]
    fn namespaces_are_comma_separated_labels_and_empty_ones_are_dropped() {
        let parsed = |args: &[&str]| {
            let mut argv = vec!["servicenow-operator", "run", "--public-url", "https://neo.example.com"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Run(run)) => Ok(run.core.controller.watched_namespaces()),
                Ok(other) => panic!("{other:?}"),
                Err(error) => Err(error.to_string()),
            }
        };
        assert_eq!(parsed(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(parsed(&["--namespace", "itsm"]).unwrap(), ["itsm"]);
        assert_eq!(
            parsed(&["--watch-namespace", "a,b", "--namespace", "c"]).unwrap(),
            ["a", "b", "c"]
        );
        assert_eq!(parsed(&["--watch-namespace", ""]).unwrap(), Vec::<String>::new());
        let error = parsed(&["--watch-namespace", "a,B_c"]).unwrap_err();
        assert!(error.contains("\"B_c\" is not a namespace name"), "{error}");
    }
}
