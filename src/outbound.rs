//! The operator's outbound HTTP clients, built in one place: the ServiceNow client
//! (`servicenow::http`) and the webhook sink forwarder (`webhook::forward`) both take theirs from
//! here, so they trust, resolve, proxy and time out alike. A leaf: imports nothing of ours.
//!
//! * TLS: rustls with the ring provider (reqwest's own choice when no process default is
//!   installed; `run` installs ring as the default), verification always on, the webpki roots
//!   plus the certificates of the `--ca-bundle` PEM file.
//! * `--resolve HOST=IP:PORT`: the host keeps its name (SNI and certificate checks use it), the
//!   connection goes to `IP:PORT` — URLs without a port (all instance URLs) take the override's
//!   port. `--resolve *.DOMAIN=IP:PORT` does the same for every host under `DOMAIN` ([`wildcard`]):
//!   one simulator serving an instance per customer, say.
//! * `HTTPS_PROXY` / `NO_PROXY` are honoured (reqwest's system-proxy behaviour).
//! * Idle connections are closed soon ([`Peer::idle_timeout`]), so one operator holding
//!   thousands of instances does not hold a TLS connection to each.
//! * Redirects are not followed: an API answering with a redirect (a hibernating instance sends
//!   the browser elsewhere) is an unexpected answer, and credentials never follow one.

pub mod wildcard;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use reqwest::header::HeaderMap;

/// Longest wait for a TCP + TLS connection (capped by the request timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle connection to an instance is kept for the next call. A reconcile's calls to
/// its instance come back to back (a Kubernetes request or two between them at most), and its
/// next reconcile is a resync interval away (30 s at the least): kept longer, an idle TLS
/// connection — its buffers and a descriptor, tens of KiB — waits for nothing. An operator
/// resyncing 10,000 connections makes some 350 new ones a second: at 4 s it held about 1,400 of
/// them at a time, at 1 s about 350 (reqwest's default keeps them 90 s); from 1 s to 250 ms the
/// peak RSS of `make bench-scale N=3000` fell from 84.6 to 77.8 MiB, its CPU unchanged.
pub const INSTANCE_IDLE_TIMEOUT: Duration = Duration::from_millis(250);

/// How long an idle connection to a webhook sink is kept: a sink that receives events keeps its
/// connections busy, and one that receives a few should not pay a handshake for each. Below the
/// 5 s after which common servers close an idle connection themselves (Node.js), so a call
/// seldom lands on one being closed.
pub const SINK_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// What every outbound client shares.
#[derive(Clone, Debug)]
pub struct Settings<'a> {
    /// A PEM file of extra CA certificates to trust (one or more); the built-in roots stay.
    pub ca_bundle: Option<&'a Path>,
    /// DNS overrides: each host name (or `*.DOMAIN`: each host under it) connects to the
    /// address given (its port included).
    pub resolve: &'a [(String, SocketAddr)],
    /// Timeout of one call, from sending to the end of the answer ([`CONNECT_TIMEOUT`] applies
    /// to connecting, when shorter).
    pub request_timeout: Duration,
}

/// What a client calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// ServiceNow instances: `https://` only.
    Instance,
    /// Webhook sinks: `http://` too (in-cluster sinks often are plain HTTP).
    Sink,
}

impl Peer {
    /// How long an idle connection to this peer is kept.
    pub fn idle_timeout(self) -> Duration {
        match self {
            Peer::Instance => INSTANCE_IDLE_TIMEOUT,
            Peer::Sink => SINK_IDLE_TIMEOUT,
        }
    }
}

/// A client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action}: {reason}")]
pub struct SetupError {
    /// What was being done, e.g. `read the CA bundle /etc/ca.pem`.
    pub action: String,
    /// Why it failed (the error and its causes).
    pub reason: String,
}

/// A client with `settings` for `peer` (see the module documentation). Fails on a CA bundle
/// that cannot be read or holds no certificate.
pub fn client(settings: &Settings<'_>, peer: Peer) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT.min(settings.request_timeout))
        .timeout(settings.request_timeout)
        .pool_idle_timeout(peer.idle_timeout())
        .user_agent(concat!("servicenow-operator/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = settings.ca_bundle {
        for certificate in read_ca_bundle(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    let (wildcards, exact): (Vec<_>, Vec<_>) = settings
        .resolve
        .iter()
        .cloned()
        .partition(|(host, _)| wildcard::is_wildcard(host));
    for (host, address) in exact {
        builder = builder.resolve(&host, address);
    }
    if !wildcards.is_empty() {
        builder = builder.dns_resolver(Arc::new(wildcard::Resolver::new(wildcards)));
    }
    if peer == Peer::Instance {
        builder = builder.https_only(true);
    }
    builder
        .build()
        .map_err(|error| setup_error("build the HTTP client", &error.without_url()))
}

/// The certificates of a PEM bundle; at least one.
fn read_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, SetupError> {
    let action = format!("read the CA bundle {}", path.display());
    let pem = std::fs::read(path).map_err(|error| setup_error(&action, &error))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| setup_error(&action, &error))?;
    if certificates.is_empty() {
        return Err(SetupError {
            action,
            reason: "the file holds no PEM certificate".to_owned(),
        });
    }
    Ok(certificates)
}

fn setup_error(action: &str, error: &dyn std::error::Error) -> SetupError {
    SetupError {
        action: action.to_owned(),
        reason: chain(error),
    }
}

/// `Retry-After` in seconds (the form ServiceNow sends), uncapped; an HTTP date is not used.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Why no answer came: the error and its causes, without the URL (it may carry a token in a
/// query string).
pub fn transport_reason(error: reqwest::Error) -> String {
    let timeout = error.is_timeout();
    let text = chain(&error.without_url());
    if timeout { format!("timed out ({text})") } else { text }
}

/// An error and its sources joined by `: `, each layer once.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_reads_whole_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn a_missing_ca_bundle_names_the_file() {
        let missing = Path::new("/nonexistent/ca.pem");
        let settings = Settings {
            ca_bundle: Some(missing),
            resolve: &[],
            request_timeout: Duration::from_secs(1),
        };
        let error = client(&settings, Peer::Sink).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("failed to read the CA bundle /nonexistent/ca.pem: "),
            "{error}"
        );
    }
}
