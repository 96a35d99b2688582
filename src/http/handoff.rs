//! The hand-off between the two components (`servicenow-operator public` and `… controller`).
//!
//! The public component faces the internet and holds nothing worth stealing: no Kubernetes
//! credentials, no client secret, no webhook key. It takes each request under its limits
//! (`super::limits`), keeps only the few fields an endpoint uses — each bounded — and sends them,
//! rebuilt into a fresh request, to the controller component's hand-off listener with the shared
//! hand-off key. The controller answers with the page, redirect or status it would have given the
//! browser or the instance, and the public component relays its status, a few headers
//! ([`RELAYED_HEADERS`]) and its body.
//!
//! What is forwarded, per endpoint (nothing else of the request reaches the controller):
//!
//! * `GET /oauth/servicenow/start`: the query parameter `ticket`;
//! * `GET /oauth/servicenow/callback`: `code`, `state`, `error` and the consent-binding cookie;
//! * `POST /callback/servicenow`: `connection`, the body (at most
//!   [`MAX_BODY_BYTES`](crate::webhook::event::MAX_BODY_BYTES)), `Content-Type` and the two
//!   signing headers — only when the head passes the checks that need no key (signed, within the
//!   time window, JSON; `super::receiver::check_head`), so junk stops here, counted in
//!   `servicenow_operator_webhook_requests_rejected_total` of this component.
//!
//! The controller checks everything as it does when it serves the internet itself (tickets,
//! states, cookies, signatures): a compromised public pod can send it only what any client on the
//! internet can, without the rate limits.

use std::{path::Path, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, RawQuery, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use k8s_openapi::jiff::Timestamp;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{
    consent::{self, PLAIN_COOKIE, SECURE_COOKIE},
    pages::page,
    receiver::{check_head, read_body},
};
use crate::{
    api::paths,
    servicenow::SecretString,
    telemetry::ReasonLabels,
    webhook::{
        event::MAX_BODY_BYTES,
        signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER},
    },
};

/// The shortest hand-off key accepted.
pub const MIN_KEY_CHARS: usize = 32;
/// The longest query parameter forwarded (a ticket, a state, a code: a few hundred characters).
pub const MAX_PARAMETER_CHARS: usize = 2048;
/// The longest answer relayed from the controller (its pages are a few KiB).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The response headers relayed from the controller to the client.
pub const RELAYED_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::SET_COOKIE,
    header::RETRY_AFTER,
];

/// Why the hand-off could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandOffError {
    /// The key file could not be read.
    #[error("--handoff-key-file {path}: cannot read it ({source}); mount the chart's hand-off Secret there")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key is too short to be a secret.
    #[error(
        "--handoff-key-file {path}: the key has {chars} characters, at least {MIN_KEY_CHARS} are needed; \
         write a random one (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort {
        /// The file.
        path: String,
        /// Its length.
        chars: usize,
    },
    /// The HTTP client to the controller could not be built.
    #[error("failed to configure the HTTP client to the controller: {0}")]
    Client(#[source] reqwest::Error),
}

/// The key both components share; the controller's hand-off listener answers only requests that
/// carry it.
#[derive(Clone)]
pub struct HandOffKey(Arc<SecretString>);

impl HandOffKey {
    /// The key in the file `path`, surrounding whitespace ignored.
    pub fn read(path: &Path) -> Result<Self, HandOffError> {
        let text = std::fs::read_to_string(path).map_err(|source| HandOffError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let key = text.trim();
        if key.chars().count() < MIN_KEY_CHARS {
            return Err(HandOffError::TooShort {
                path: path.display().to_string(),
                chars: key.chars().count(),
            });
        }
        Ok(HandOffKey(Arc::new(SecretString::new(key))))
    }

    /// The `Authorization` value that carries the key.
    fn bearer(&self) -> String {
        format!("Bearer {}", self.0.expose())
    }

    /// Whether `authorization` carries the key (compared in constant time).
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        authorization
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| crate::ticket::same_hash(value, &self.bearer()))
    }
}

/// The controller's side: `router` behind the key. A request without it gets 401 and reaches no
/// handler.
pub fn authenticated(key: HandOffKey, router: Router) -> Router {
    router.layer(middleware::from_fn_with_state(key, admit))
}

async fn admit(State(key): State<HandOffKey>, request: Request, next: Next) -> Response {
    if key.admits(request.headers().get(header::AUTHORIZATION)) {
        next.run(request).await
    } else {
        tracing::warn!("hand-off request refused: no or a wrong hand-off key");
        (StatusCode::UNAUTHORIZED, "hand-off key missing or wrong\n").into_response()
    }
}

/// The public component's side: sends what it took to the controller's hand-off listener.
pub struct Forwarder {
    client: reqwest::Client,
    controller: url::Url,
    key: HandOffKey,
    rejected: Family<ReasonLabels, Counter>,
}

impl Forwarder {
    /// A forwarder to the hand-off listener at `controller` (its base URL), carrying `key`;
    /// registers `servicenow_operator_webhook_requests_rejected_total` (the webhook requests it
    /// refuses itself, by reason) in `registry`.
    pub fn new(controller: url::Url, key: HandOffKey, registry: &mut Registry) -> Result<Self, HandOffError> {
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry
            .sub_registry_with_prefix("servicenow_operator_webhook")
            .register(
                "requests_rejected",
                "Webhook requests refused before the hand-off, by reason",
                rejected.clone(),
            );
        let client = reqwest::Client::builder()
            // The answer is relayed as it is: a redirect goes to the browser.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(HandOffError::Client)?;
        Ok(Forwarder {
            client,
            controller,
            key,
            rejected,
        })
    }

    /// The consent routes and the webhook route, forwarding (to go under the public limits).
    pub fn routers(self) -> (Router, Router) {
        let forwarder = Arc::new(self);
        let consent = Router::new()
            .route(paths::CONSENT_START, get(start))
            .route(paths::CONSENT_CALLBACK, get(callback))
            .with_state(forwarder.clone());
        let webhook = Router::new()
            .route(paths::WEBHOOK, post(webhook))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(forwarder);
        (consent, webhook)
    }

    /// Sends `request` (path and query, method, headers, body) to the controller and relays its
    /// answer; `unreachable` answers when the controller does not.
    async fn send(&self, request: HandOff, unreachable: fn() -> Response) -> Response {
        let mut url = self.controller.clone();
        url.set_path(request.path);
        url.set_query(None);
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&request.query);
        }
        let mut outbound = self
            .client
            .request(request.method, url)
            .header(header::AUTHORIZATION, self.key.bearer());
        for (name, value) in request.headers {
            outbound = outbound.header(name, value);
        }
        if let Some(body) = request.body {
            outbound = outbound.body(body);
        }
        match outbound.send().await {
            Ok(answer) => relay(answer).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "hand-off: the controller's answer could not be read");
                unreachable()
            }),
            Err(error) => {
                tracing::warn!(error = %error.without_url(), "hand-off: the controller cannot be reached");
                unreachable()
            }
        }
    }
}

/// What one public request becomes: only the fields its endpoint uses.
struct HandOff {
    method: reqwest::Method,
    path: &'static str,
    query: Vec<(&'static str, String)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
}

/// Why a controller's answer was not relayed.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("{0}")]
    Read(#[source] reqwest::Error),
    #[error("the answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// The controller's answer as the client gets it: status, [`RELAYED_HEADERS`], body.
async fn relay(mut answer: reqwest::Response) -> Result<Response, RelayError> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(RelayError::Read)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(RelayError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = answer.status();
    for name in RELAYED_HEADERS {
        for value in answer.headers().get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(response)
}

/// The first value of each of `names` in the query string `query`, when at most
/// [`MAX_PARAMETER_CHARS`] long (a longer one is dropped, as no valid one is that long).
fn parameters(query: Option<&str>, names: &[&'static str]) -> Vec<(&'static str, String)> {
    let pairs: Vec<_> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).collect();
    names
        .iter()
        .filter_map(|name| {
            let (_, value) = pairs.iter().find(|(key, _)| key == name)?;
            (value.chars().count() <= MAX_PARAMETER_CHARS).then(|| (*name, value.clone().into_owned()))
        })
        .collect()
}

/// The headers of `headers` among `names` (the first value of each).
fn headers_named(headers: &HeaderMap, names: &[&str]) -> Vec<(HeaderName, HeaderValue)> {
    names
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?;
            Some((HeaderName::from_bytes(name.as_bytes()).ok()?, value.clone()))
        })
        .collect()
}

/// The consent-binding cookie of `headers` (either name), as one `Cookie` header.
fn binding_cookie(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    [SECURE_COOKIE, PLAIN_COOKIE]
        .into_iter()
        .filter_map(|name| {
            let value = consent::cookie(headers, name).filter(|value| value.len() <= MAX_PARAMETER_CHARS)?;
            Some((header::COOKIE, HeaderValue::from_str(&format!("{name}={value}")).ok()?))
        })
        .collect()
}

fn consent_unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "The operator cannot take this request right now. Reload this page in a moment.",
    )
}

fn webhook_unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the operator cannot take events right now; try again\n",
    )
        .into_response()
}

async fn start(State(forwarder): State<Arc<Forwarder>>, RawQuery(query): RawQuery) -> Response {
    let request = HandOff {
        method: reqwest::Method::GET,
        path: paths::CONSENT_START,
        query: parameters(query.as_deref(), &["ticket"]),
        headers: Vec::new(),
        body: None,
    };
    forwarder.send(request, consent_unavailable).await
}

async fn callback(State(forwarder): State<Arc<Forwarder>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let request = HandOff {
        method: reqwest::Method::GET,
        path: paths::CONSENT_CALLBACK,
        query: parameters(query.as_deref(), &["code", "state", "error"]),
        headers: binding_cookie(&headers),
        body: None,
    };
    forwarder.send(request, consent_unavailable).await
}

async fn webhook(State(forwarder): State<Arc<Forwarder>>, RawQuery(query): RawQuery, request: Request) -> Response {
    let headers = request.headers().clone();
    let checked = match check_head(&headers, Timestamp::now()) {
        Ok(_) => read_body(request).await,
        Err(refusal) => Err(refusal),
    };
    let body = match checked {
        Ok(body) => body,
        Err(refusal) => {
            forwarder
                .rejected
                .get_or_create(&ReasonLabels { reason: refusal.reason })
                .inc();
            return refusal.into_response();
        }
    };
    let request = HandOff {
        method: reqwest::Method::POST,
        path: paths::WEBHOOK,
        query: parameters(query.as_deref(), &["connection"]),
        headers: headers_named(
            &headers,
            &[header::CONTENT_TYPE.as_str(), TIMESTAMP_HEADER, SIGNATURE_HEADER],
        ),
        body: Some(body),
    };
    forwarder.send(request, webhook_unavailable).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_parameters_go_on_the_first_of_each_and_none_too_long() {
        let long = "x".repeat(MAX_PARAMETER_CHARS + 1);
        let query = format!("state=s%2F1&evil=1&code=c&code=second&error={long}");
        assert_eq!(
            parameters(Some(&query), &["code", "state", "error"]),
            [("code", "c".to_owned()), ("state", "s/1".to_owned())]
        );
        assert!(parameters(None, &["ticket"]).is_empty());
    }

    #[test]
    fn only_the_binding_cookie_goes_on() {
        let headers = HeaderMap::from_iter([(
            header::COOKIE,
            HeaderValue::from_static("session=other; snc-consent=abc; theme=dark"),
        )]);
        let forwarded = binding_cookie(&headers);
        assert_eq!(forwarded.len(), 1);
        assert_eq!(forwarded[0].1, "snc-consent=abc");
        assert!(binding_cookie(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn the_key_is_admitted_only_whole() {
        let key = HandOffKey(Arc::new(SecretString::new("k".repeat(MIN_KEY_CHARS))));
        let bearer = HeaderValue::from_str(&key.bearer()).unwrap();
        assert!(key.admits(Some(&bearer)));
        let shorter = HeaderValue::from_str(&format!("Bearer {}", "k".repeat(MIN_KEY_CHARS - 1))).unwrap();
        assert!(!key.admits(Some(&shorter)));
        assert!(!key.admits(None));
    }

    #[tokio::test]
    async fn the_hand_off_listener_answers_only_the_key_holder() {
        use tower::ServiceExt as _;
        let key = HandOffKey(Arc::new(SecretString::new("k".repeat(MIN_KEY_CHARS))));
        let router = authenticated(key.clone(), Router::new().route("/x", get(|| async { "reached" })));
        let status = |authorization: Option<String>| {
            let router = router.clone();
            async move {
                let mut request = axum::http::Request::get("/x");
                if let Some(value) = authorization {
                    request = request.header(header::AUTHORIZATION, value);
                }
                router
                    .oneshot(request.body(Body::empty()).unwrap())
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Bearer wrong".into())).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some(key.bearer())).await, StatusCode::OK);
    }

    #[test]
    fn a_short_or_missing_key_file_is_refused_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("handoff-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let error = HandOffKey::read(&short).err().expect("a short key").to_string();
        assert!(error.contains("8 characters, at least 32"), "{error}");
        let error = HandOffKey::read(&dir.join("missing"))
            .err()
            .expect("no file")
            .to_string();
        assert!(error.contains("cannot read it"), "{error}");
        let good = dir.join("good");
        std::fs::write(&good, format!("  {}\n", "a".repeat(40))).unwrap();
        assert!(HandOffKey::read(&good).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
