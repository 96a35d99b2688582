//! The webhook endpoint: `POST /callback/servicenow?connection=<ns>/<name>`, where the Business
//! Rule on the instance posts each task event, signed (`webhook::signature`). The signing headers
//! and their time are checked before anything is read; then the body (JSON, at most 64 KiB) is
//! read, the signature checked against the connection's keys, a replay refused, the body checked
//! and the event accepted (202) — counting and forwarding happen in the background. An unsigned,
//! late or wrongly signed request costs no API-server write and no ServiceNow call. Answers are
//! short plain text and never echo a header or the body.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, RawQuery, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use k8s_openapi::jiff::Timestamp;

use crate::webhook::{
    Receiver,
    event::{self, InvalidEvent, MAX_BODY_BYTES},
    lookup::Refused,
    signature::{BadSignature, SIGNATURE_HEADER, Signed, TIMESTAMP_HEADER},
};

/// The webhook route, with its body limit.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route(crate::api::paths::WEBHOOK, post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(receiver)
}

/// A refused request: its status, its metric label and a short message.
pub(super) struct Refusal {
    status: StatusCode,
    /// The label of `servicenow_operator_webhook_requests_rejected_total`.
    pub(super) reason: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, format!("{}\n", self.message)).into_response()
    }
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            message: message.into(),
        }
    }
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unauthorized => Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", refused.to_string()),
            Refused::Unavailable(error) => {
                tracing::warn!(%error, "webhook request refused: the Kubernetes API could not be read");
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the operator cannot check the connection right now; try again",
                )
            }
        }
    }
}

impl From<BadSignature> for Refusal {
    fn from(bad: BadSignature) -> Self {
        let reason = match bad {
            BadSignature::Unsigned => "unsigned",
            BadSignature::OutsideWindow => "stale",
        };
        Refusal::new(StatusCode::UNAUTHORIZED, reason, bad.to_string())
    }
}

impl From<InvalidEvent> for Refusal {
    fn from(invalid: InvalidEvent) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, "malformed", invalid.to_string())
    }
}

async fn receive(State(receiver): State<Arc<Receiver>>, RawQuery(query): RawQuery, request: Request) -> Response {
    match handle(&receiver, query.as_deref().unwrap_or_default(), request).await {
        Ok(()) => (StatusCode::ACCEPTED, "accepted\n").into_response(),
        Err(refusal) => {
            receiver.rejected(refusal.reason);
            refusal.into_response()
        }
    }
}

async fn handle(receiver: &Receiver, query: &str, request: Request) -> Result<(), Refusal> {
    let now = Timestamp::now();
    let signed = check_head(request.headers(), now)?;
    let body = read_body(request).await?;
    let target = receiver
        .authenticate(connection_of(query).as_deref(), &signed, &body, now)
        .await?;
    if !receiver.first_time(&signed, now.as_millisecond()) {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "replayed",
            "this signed request was received before",
        ));
    }
    let event = event::parse(&body)?;
    if !event.is_from(target.instance_host.as_deref()) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "instance_mismatch",
            "the event comes from another instance than the connection's spec.instanceUrl (a clone that kept \
             the callback property?)",
        ));
    }
    receiver.accept(&target, &event, body);
    Ok(())
}

/// What the request's head alone tells, checked before anything is read: signed, within the
/// time window (at `now`), a JSON body. The public component checks it before the hand-off
/// (`super::handoff`), the receiver again.
pub(super) fn check_head(headers: &HeaderMap, now: Timestamp) -> Result<Signed, Refusal> {
    let signed = signed(headers)?;
    signed.check_time(now.as_millisecond())?;
    if !is_json(headers) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    Ok(signed)
}

/// The body of `request`, at most [`MAX_BODY_BYTES`] (the route's limit).
pub(super) async fn read_body(request: Request) -> Result<Bytes, Refusal> {
    Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            )
        } else {
            Refusal::new(StatusCode::BAD_REQUEST, "malformed", "the body could not be read")
        }
    })
}

/// The signing headers of `headers`.
fn signed(headers: &HeaderMap) -> Result<Signed, BadSignature> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    Signed::parse(header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER))
}

/// `connection` of the query string (the first).
fn connection_of(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "connection")
        .map(|(_, value)| value.into_owned())
}

/// `true` for `application/json` and `application/<anything>+json`, parameters allowed.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(media_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
    else {
        return false;
    };
    media_type == "application/json"
        || media_type
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_query_gives_the_first_connection_decoded() {
        assert_eq!(
            connection_of("x=1&connection=itsm%2Facme&connection=second").as_deref(),
            Some("itsm/acme")
        );
        assert_eq!(connection_of(""), None);
    }

    #[test]
    fn json_media_types_are_recognised() {
        let headers =
            |value: &'static str| HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static(value))]);
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(is_json(&headers(json)), "{json}");
        }
        for other in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "text/json+json",
        ] {
            assert!(!is_json(&headers(other)), "{other}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
