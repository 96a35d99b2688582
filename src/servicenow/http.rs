//! The one HTTP client every call to ServiceNow goes through: a limit on calls in flight per
//! instance, call counting, and the translation of answers into [`ErrorKind`]s. The client itself
//! (TLS roots, DNS overrides, proxy, timeouts, no redirects) comes from `crate::outbound`, which
//! also builds the webhook sinks' client.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::{RequestBuilder, StatusCode, header::HeaderMap};
use tokio::sync::Semaphore;

use super::{Error, ErrorKind, InstanceUrl};
// Two leaves (see `tests/architecture.rs`); one `use` each, so the import check sees their names.
use crate::outbound::{self, Peer, SetupError, transport_reason};
use crate::sync::LockExt as _;

/// Calls in flight to one instance at a time; more wait their turn.
pub const IN_FLIGHT_PER_INSTANCE: usize = 4;
/// Largest answer read; a longer one is an unexpected answer.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Longest `Retry-After` taken at its word (rate-limit windows are hourly).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Told about every call to ServiceNow, for metrics.
pub trait CallObserver: Send + Sync + 'static {
    /// One call ended: `action` names it (e.g. `refresh_token`, `list_sys_script`), `status` is
    /// the HTTP status, or 0 when no answer came.
    fn observe(&self, action: &'static str, status: u16);
}

/// A [`CallObserver`] that ignores every call.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl CallObserver for NoObserver {
    fn observe(&self, _action: &'static str, _status: u16) {}
}

/// How to reach instances.
#[derive(Clone)]
pub struct ClientConfig {
    /// A PEM file of extra CA certificates to trust (one or more); the built-in roots stay.
    pub ca_bundle: Option<PathBuf>,
    /// DNS overrides: each host name connects to the address given (its port included).
    pub resolve: Vec<(String, SocketAddr)>,
    /// Timeout of one call, from sending to the end of the answer ([`outbound::CONNECT_TIMEOUT`] applies
    /// to connecting, when shorter).
    pub request_timeout: Duration,
    /// Told about every call.
    pub observer: Arc<dyn CallObserver>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("ca_bundle", &self.ca_bundle)
            .field("resolve", &self.resolve)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// One call: which instance, how it is counted, and what an error says it was doing.
#[derive(Clone, Debug)]
pub(crate) struct Call<'a> {
    /// The instance.
    pub instance: &'a InstanceUrl,
    /// The metric label, e.g. `list_sys_script`.
    pub metric: &'static str,
    /// What the call does, for errors: e.g. `list sys_script`.
    pub action: String,
    /// The table (or endpoint) an ACL refusal names.
    pub resource: &'a str,
    /// `read`, `create`, `update`, `delete` (or `call` for non-table endpoints).
    pub operation: &'static str,
}

impl Call<'_> {
    /// Whether the call counts against the instance's inbound REST rate limits, which cover the
    /// REST API (`/api/…`) and not the OAuth processors (`/oauth_token.do`, `/oauth_revoke_token.do`).
    fn rate_limited(&self) -> bool {
        !self.resource.ends_with(".do")
    }

    /// An [`Error`] of this call.
    pub fn error(&self, kind: ErrorKind) -> Error {
        Error {
            action: self.action.clone(),
            host: self.instance.host().to_owned(),
            kind,
        }
    }
}

/// An answer, read in full.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

/// `true` for the message of a REST API Auth Scope refusal (servicenow-api.md §7,
/// `rest-api-scope-troubleshooting.md`).
fn is_scope_refusal(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("missing required api access scope")
}

impl Answer {
    /// The body as JSON of type `T`. The error never quotes the body.
    pub fn json<T: serde::de::DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|error| {
            let content_type = self.headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            call.error(ErrorKind::Protocol {
                reason: format!(
                    "unexpected answer: HTTP {} with a body that is not the expected JSON ({:?} error at line {} column {}; content type {})",
                    self.status.as_u16(),
                    error.classify(),
                    error.line(),
                    error.column(),
                    content_type.unwrap_or("none"),
                ),
            })
        })
    }

    /// The error an answer with an unexpected status stands for.
    pub fn error(&self, call: &Call<'_>) -> Error {
        let message = envelope_message(&self.body);
        let status = self.status.as_u16();
        let kind = match status {
            401 => ErrorKind::Unauthorized {
                detail: message.unwrap_or_else(|| "no detail".to_owned()),
            },
            403 if message.as_deref().is_some_and(is_scope_refusal) => ErrorKind::ScopeRestricted {
                api: call.resource.to_owned(),
                message: message.unwrap_or_default(),
            },
            403 => ErrorKind::Forbidden {
                table: call.resource.to_owned(),
                operation: call.operation,
                message: message.unwrap_or_else(|| "no detail".to_owned()),
            },
            404 => ErrorKind::NotFound {
                message: message.unwrap_or_else(|| "no detail".to_owned()),
            },
            429 => ErrorKind::RateLimited {
                retry_after: retry_after(&self.headers),
            },
            500..=599 => ErrorKind::Server { status },
            _ => ErrorKind::Protocol {
                reason: match message {
                    Some(message) => format!("unexpected answer: HTTP {status}: {message}"),
                    None => format!("unexpected answer: HTTP {status}"),
                },
            },
        };
        call.error(kind)
    }
}

/// Whether an answer is a hibernating instance's page: an HTML body (or one without a content
/// type) naming it, whatever the status (servicenow-api.md §7: clients look for its text).
fn is_hibernation_page(headers: &HeaderMap, body: &[u8]) -> bool {
    let html = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|content_type| content_type.to_ascii_lowercase().starts_with("text/html"));
    if !html {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("instance-hibernating-page") || text.contains("instance hibernating page")
}

/// The instance's words in an error envelope `{"error":{"message","detail"},"status":"failure"}`:
/// `message: detail` (or just `message` when `detail` is `null` or empty).
pub(crate) fn envelope_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<Detail>,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        message: Option<String>,
        detail: Option<String>,
    }
    let Detail { message, detail } = serde_json::from_slice::<Envelope>(body).ok()?.error?;
    let parts: Vec<String> = [message, detail]
        .into_iter()
        .flatten()
        .filter(|part| !part.trim().is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(": "))
}

/// `Retry-After` in seconds (the form ServiceNow sends), at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    outbound::retry_after(headers).map(|wait| wait.min(MAX_RETRY_AFTER))
}

/// The transport: one reqwest client, the per-instance limits, the observer.
pub(crate) struct Transport {
    client: reqwest::Client,
    observer: Arc<dyn CallObserver>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Per instance host: until when no REST API call may be sent, after a 429 with
    /// `Retry-After` — whichever reconcile (or connection) asks next.
    quiet_until: Mutex<HashMap<String, Instant>>,
}

impl Transport {
    /// Builds the transport. Fails on a CA bundle that cannot be read or holds no certificate.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let client = outbound::client(&settings(&config), Peer::Instance).map_err(setup_error)?;
        Ok(Transport {
            client,
            observer: config.observer,
            limits: Mutex::new(HashMap::new()),
            quiet_until: Mutex::new(HashMap::new()),
        })
    }

    /// The reqwest client, to start a request.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` within the instance's in-flight limit, reads the answer, counts the call.
    /// Fails only when no complete answer came ([`ErrorKind::Unreachable`]) or it is too long.
    /// While the instance's `Retry-After` runs, a REST API call is refused here, unsent, as the
    /// rate limit it would meet.
    pub async fn send(&self, call: &Call<'_>, request: RequestBuilder) -> Result<Answer, Error> {
        let host = call.instance.host();
        if call.rate_limited()
            && let Some(rest) = self.quiet_for(host, Instant::now())
        {
            return Err(call.error(ErrorKind::RateLimited {
                retry_after: Some(rest),
            }));
        }
        let limit = self.limit(host);
        // The semaphore is never closed, so acquiring only waits.
        let _permit = limit.acquire_owned().await;
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                self.observer.observe(call.metric, 0);
                return Err(call.error(ErrorKind::Unreachable {
                    reason: transport_reason(error),
                }));
            }
        };
        let status = response.status();
        self.observer.observe(call.metric, status.as_u16());
        let headers = std::mem::take(response.headers_mut());
        self.note_rate_limit(call, status, &headers);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_BODY_BYTES => {
                    return Err(call.error(ErrorKind::Protocol {
                        reason: format!(
                            "unexpected answer: HTTP {} with a body over {MAX_BODY_BYTES} bytes",
                            status.as_u16()
                        ),
                    }));
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(error) => {
                    return Err(call.error(ErrorKind::Unreachable {
                        reason: transport_reason(error),
                    }));
                }
            }
        }
        if is_hibernation_page(&headers, &body) {
            return Err(call.error(ErrorKind::Hibernating));
        }
        Ok(Answer { status, headers, body })
    }

    /// Sends and requires one of the `expected` statuses; any other becomes its error.
    pub async fn expect(&self, call: &Call<'_>, request: RequestBuilder, expected: &[u16]) -> Result<Answer, Error> {
        let answer = self.send(call, request).await?;
        if expected.contains(&answer.status.as_u16()) {
            Ok(answer)
        } else {
            Err(answer.error(call))
        }
    }

    /// After a 429 with `Retry-After` to a REST API call (sent alone, or an item of a batch):
    /// no REST API call to its instance is sent before that time.
    pub fn note_rate_limit(&self, call: &Call<'_>, status: StatusCode, headers: &HeaderMap) {
        if status == StatusCode::TOO_MANY_REQUESTS
            && call.rate_limited()
            && let Some(wait) = retry_after(headers)
        {
            self.quiet(call.instance.host(), Instant::now() + wait);
        }
    }

    /// Keeps REST API calls to `host` from being sent before `until`.
    fn quiet(&self, host: &str, until: Instant) {
        let mut quiet = self.quiet_until.locked();
        let entry = quiet.entry(host.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The rest of `host`'s quiet period at `now`, if any.
    fn quiet_for(&self, host: &str, now: Instant) -> Option<Duration> {
        let mut quiet = self.quiet_until.locked();
        let until = *quiet.get(host)?;
        if until <= now {
            quiet.remove(host);
            return None;
        }
        // Whole seconds, rounded up, as Retry-After counts.
        let rest = until - now;
        Some(Duration::from_secs(rest.as_secs() + u64::from(rest.subsec_nanos() > 0)))
    }

    fn limit(&self, host: &str) -> Arc<Semaphore> {
        let mut limits = self.limits.locked();
        limits
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(IN_FLIGHT_PER_INSTANCE)))
            .clone()
    }
}

/// A client for destinations other than instances (the webhook sink): the same TLS roots
/// (`--ca-bundle` included), DNS overrides, proxy, timeouts and refusal of redirects as the
/// instances' client, but plain `http://` allowed (in-cluster sinks often are). Fails like
/// [`Transport::new`].
pub fn outbound_client(config: &ClientConfig) -> Result<reqwest::Client, Error> {
    outbound::client(&settings(config), Peer::Sink).map_err(setup_error)
}

/// The part of `config` that [`outbound::client`] takes.
fn settings(config: &ClientConfig) -> outbound::Settings<'_> {
    outbound::Settings {
        ca_bundle: config.ca_bundle.as_deref(),
        resolve: &config.resolve,
        request_timeout: config.request_timeout,
    }
}

fn setup_error(SetupError { action, reason }: SetupError) -> Error {
    Error {
        action,
        host: String::new(),
        kind: ErrorKind::Protocol { reason },
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    use super::*;

    #[test]
    fn a_quiet_period_counts_down_per_host_in_whole_seconds_and_only_grows() {
        let transport = Transport::new(ClientConfig {
            ca_bundle: None,
            resolve: Vec::new(),
            request_timeout: Duration::from_secs(5),
            observer: Arc::new(NoObserver),
        })
        .unwrap();
        let start = Instant::now();
        transport.quiet("acme.service-now.com", start + Duration::from_secs(10));
        transport.quiet("acme.service-now.com", start + Duration::from_secs(3));
        let later = start + Duration::from_millis(2500);
        assert_eq!(
            transport.quiet_for("acme.service-now.com", later),
            Some(Duration::from_secs(8))
        );
        assert_eq!(transport.quiet_for("other.service-now.com", later), None);
        assert_eq!(
            transport.quiet_for("acme.service-now.com", start + Duration::from_secs(10)),
            None
        );
    }

    #[test]
    fn only_rest_api_calls_count_against_rate_limits() {
        let instance = InstanceUrl::parse("https://acme.service-now.com").unwrap();
        let call = |resource| Call {
            instance: &instance,
            metric: "m",
            action: "a".into(),
            resource,
            operation: "call",
        };
        assert!(call("sys_script").rate_limited());
        assert!(!call("/oauth_token.do").rate_limited());
        assert!(!call("/oauth_revoke_token.do").rate_limited());
    }

    fn answer(status: u16, body: &str, retry: Option<&'static str>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(retry) = retry {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(retry));
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn kind_of(answer: &Answer) -> ErrorKind {
        let instance = InstanceUrl::parse("https://acme.service-now.com").unwrap();
        let call = Call {
            instance: &instance,
            metric: "create_sys_script",
            action: "create a record in sys_script".into(),
            resource: "sys_script",
            operation: "create",
        };
        let error = answer.error(&call);
        assert_eq!(error.host, "acme.service-now.com");
        error.kind
    }

    #[test]
    fn the_error_envelope_reads_as_message_and_detail() {
        let body = r#"{"error":{"message":"Operation Failed","detail":"ACL Exception Insert Failed due to security constraints"},"status":"failure"}"#;
        assert_eq!(
            envelope_message(body.as_bytes()).as_deref(),
            Some("Operation Failed: ACL Exception Insert Failed due to security constraints")
        );
        let no_detail = r#"{"error":{"message":"Invalid table x","detail":null},"status":"failure"}"#;
        assert_eq!(
            envelope_message(no_detail.as_bytes()).as_deref(),
            Some("Invalid table x")
        );
        assert_eq!(envelope_message(b"<html>"), None);
        assert_eq!(envelope_message(br#"{"result":[]}"#), None);
    }

    #[test]
    fn a_403_is_forbidden_on_the_calls_table_with_the_instances_words() {
        let body = r#"{"error":{"message":"Operation Failed","detail":"ACL Exception Insert Failed due to security constraints"},"status":"failure"}"#;
        match kind_of(&answer(403, body, None)) {
            ErrorKind::Forbidden {
                table,
                operation,
                message,
            } => {
                assert_eq!((table.as_str(), operation), ("sys_script", "create"));
                assert!(message.contains("ACL Exception Insert"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_403_for_a_missing_auth_scope_is_scope_restricted_not_an_acl_refusal() {
        let body = r#"{"error":{"message":"Missing required api access scope","detail":null},"status":"failure"}"#;
        match kind_of(&answer(403, body, None)) {
            ErrorKind::ScopeRestricted { api, message } => {
                assert_eq!(api, "sys_script");
                assert_eq!(message, "Missing required api access scope");
            }
            other => panic!("{other:?}"),
        }
        assert!(is_scope_refusal("MISSING REQUIRED API ACCESS SCOPE: x"));
        assert!(!is_scope_refusal("Operation Failed"));
    }

    #[test]
    fn a_429_carries_retry_after_in_seconds() {
        let body = r#"{"error":{"message":"Rate limit exceeded","detail":"Rate limit of 5 requests per hour for Table API exceeded"},"status":"failure"}"#;
        assert!(matches!(
            kind_of(&answer(429, body, Some("17"))),
            ErrorKind::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(17)
        ));
        assert!(matches!(
            kind_of(&answer(429, body, Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            ErrorKind::RateLimited { retry_after: None }
        ));
        assert!(matches!(
            kind_of(&answer(429, "", Some("99999999"))),
            ErrorKind::RateLimited { retry_after: Some(d) } if d == MAX_RETRY_AFTER
        ));
    }

    #[test]
    fn other_statuses_classify_by_their_meaning() {
        let unauthenticated = r#"{"error":{"message":"User Not Authenticated","detail":"Required to provide Auth information"},"status":"failure"}"#;
        assert!(matches!(
            kind_of(&answer(401, unauthenticated, None)),
            ErrorKind::Unauthorized { detail } if detail == "User Not Authenticated: Required to provide Auth information"
        ));
        assert!(matches!(kind_of(&answer(404, "{}", None)), ErrorKind::NotFound { .. }));
        assert!(matches!(
            kind_of(&answer(502, "<html>", None)),
            ErrorKind::Server { status: 502 }
        ));
        let invalid = r#"{"error":{"message":"Invalid table sys_scrip","detail":null},"status":"failure"}"#;
        assert!(matches!(
            kind_of(&answer(400, invalid, None)),
            ErrorKind::Protocol { reason } if reason == "unexpected answer: HTTP 400: Invalid table sys_scrip"
        ));
        assert!(matches!(kind_of(&answer(302, "", None)), ErrorKind::Protocol { .. }));
    }

    #[test]
    fn a_body_that_is_not_the_expected_json_is_described_without_quoting_it() {
        let instance = InstanceUrl::parse("https://acme.service-now.com").unwrap();
        let call = Call {
            instance: &instance,
            metric: "list_sys_script",
            action: "list sys_script".into(),
            resource: "sys_script",
            operation: "read",
        };
        let error = answer(200, r#"{"result":"secret-ish"}"#, None)
            .json::<Vec<String>>(&call)
            .unwrap_err();
        assert!(matches!(error.kind, ErrorKind::Protocol { .. }));
        assert!(!error.to_string().contains("secret-ish"), "{error}");
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_refused_at_start() {
        let dir = std::env::temp_dir().join(format!("servicenow-http-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let config = |ca_bundle| ClientConfig {
            ca_bundle,
            resolve: Vec::new(),
            request_timeout: Duration::from_secs(1),
            observer: Arc::new(NoObserver),
        };
        let error = Transport::new(config(Some(path))).err().unwrap();
        assert!(error.to_string().starts_with("failed to read the CA bundle"), "{error}");
        assert!(Transport::new(config(Some(dir.join("missing.pem")))).is_err());
        assert!(Transport::new(config(None)).is_ok());
    }

    #[test]
    fn a_hibernation_page_is_recognised_whatever_its_status_but_only_as_html() {
        let html = |content_type: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(content_type) = content_type {
                headers.insert(reqwest::header::CONTENT_TYPE, content_type.parse().unwrap());
            }
            headers
        };
        let page = b"<html><head><title>Instance Hibernating page</title></head><body></body></html>";
        let marked = b"<html><body class=\"instance-hibernating-page\">asleep</body></html>";
        assert!(is_hibernation_page(&html(Some("text/html;charset=UTF-8")), page));
        assert!(is_hibernation_page(&html(None), marked));
        assert!(is_hibernation_page(&html(Some("TEXT/HTML")), marked));
        assert!(!is_hibernation_page(&html(Some("application/json")), marked));
        assert!(!is_hibernation_page(
            &html(Some("text/html")),
            b"<html><body>Page not found</body></html>"
        ));
    }
}
