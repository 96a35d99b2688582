//! The Batch API (servicenow-api.md §7 "Batch API", ServiceNow's
//! `api-reference/rest-apis/batch-api.md`): `POST /api/now/v1/batch` carries REST calls whose
//! bodies are Base64; each runs through the same router and gateway as a call of its own — the
//! same Table API code, ACLs and request log — as the batch's caller, and the answer lists what
//! each returned (`serviced_requests`) and the ids left undone once a size or time limit was
//! reached (`unserviced_requests`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::Caller;
use crate::envelope::{ApiError, json_response};
use crate::instance::Instance;
use crate::server::Shared;
use crate::table::RequestHost;

/// The one versioned path: `/api/now/batch` and `v2` answer "Requested URI does not represent
/// any resource" (servicenow-api.md §7; **EXT** a ServiceNow community thread, "Batch API
/// doesn't work", 2023).
pub const PATH: &str = "/api/now/v1/batch";
/// One megabyte.
const MB: u64 = 1024 * 1024;
/// System property: the largest item body (decoded), bytes; default 5 MB, at most 10 MB.
pub const INPUT_SIZE_PROPERTY: &str = "glide.rest.batch.max.inputSize";
/// System property: the largest item answer body, bytes; default 10 MB.
pub const OUTPUT_SIZE_PROPERTY: &str = "glide.rest.batch.max.outputSize";
/// Request header lowering the output limit (never above the property).
const OUTPUT_SIZE_HEADER: &str = "x-batchrequest-max-output-size";
/// The largest batch body the simulator reads.
const MAX_BATCH_BODY: usize = 128 * 1024 * 1024;
/// Item request headers the batch's own request decides (authentication, routing, framing).
const CONTROLLED_HEADERS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// Marks a request made by the Batch API for one of its items: the gateway takes this caller
/// (the batch's) instead of authenticating the item. Only this module creates it; a client
/// cannot.
#[derive(Clone, Debug)]
pub struct BatchCaller(pub Caller);

/// The Batch API route.
pub fn router() -> Router {
    Router::new().route(PATH, post(batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)))
}

/// The batch's JSON body.
#[derive(Debug, Deserialize)]
struct BatchRequest {
    batch_request_id: Option<String>,
    rest_requests: Vec<ItemRequest>,
}

/// One REST call of a batch.
#[derive(Debug, Deserialize)]
struct ItemRequest {
    id: String,
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<NamedValue>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    exclude_response_headers: bool,
}

/// A header, as the Batch API spells one in both directions.
#[derive(Debug, Deserialize)]
struct NamedValue {
    name: String,
    value: String,
}

/// An item, checked and decoded.
struct Item {
    id: String,
    method: Method,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    exclude_response_headers: bool,
}

impl Item {
    /// Checks an item; `None` when it is malformed (the whole batch is then a bad request).
    fn decode(item: ItemRequest) -> Option<Item> {
        let headers = item
            .headers
            .iter()
            .map(|h| {
                Some((
                    HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                    HeaderValue::from_str(&h.value).ok()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        let body: String = item.body.unwrap_or_default().split_whitespace().collect();
        Some(Item {
            id: item.id,
            method: Method::from_bytes(item.method.trim().to_ascii_uppercase().as_bytes()).ok()?,
            url: item.url,
            headers,
            body: STANDARD.decode(body).ok()?,
            exclude_response_headers: item.exclude_response_headers,
        })
    }
}

/// How one item ended.
enum Outcome {
    /// It ran: its entry of `serviced_requests`.
    Serviced(Value),
    /// A size limit stopped the batch here.
    OverLimit,
}

/// The limits one batch runs under.
struct Limits {
    input: u64,
    output: u64,
    deadline: Instant,
}

impl Limits {
    /// The instance's limits (properties, the `REST Batch API request timeout` quota as the
    /// `batch_timeout_ms` switch) and the caller's lower output limit.
    fn of(instance: &Instance, headers: &HeaderMap) -> Limits {
        let state = instance.state.lock();
        let property = |name: &str, default: u64| {
            state
                .property(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        let input = property(INPUT_SIZE_PROPERTY, 5 * MB).min(10 * MB);
        let mut output = property(OUTPUT_SIZE_PROPERTY, 10 * MB);
        if let Some(asked) = headers
            .get(OUTPUT_SIZE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            output = output.min(asked);
        }
        Limits {
            input,
            output,
            deadline: Instant::now() + Duration::from_millis(state.behaviour.batch_timeout_ms),
        }
    }
}

/// `POST /api/now/v1/batch`.
async fn batch(
    Extension(shared): Extension<Arc<Shared>>,
    Extension(instance): Extension<Arc<Instance>>,
    Extension(caller): Extension<Caller>,
    Extension(host): Extension<RequestHost>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let malformed = || ApiError::BadPayload("The batch request is not valid.".into()).into_response();
    let Ok(request) = serde_json::from_slice::<BatchRequest>(&body) else {
        return malformed();
    };
    let Some(items) = request
        .rest_requests
        .into_iter()
        .map(Item::decode)
        .collect::<Option<Vec<_>>>()
    else {
        return malformed();
    };
    let limits = Limits::of(&instance, &headers);
    let app = crate::server::app(shared);
    let mut serviced = Vec::new();
    let mut unserviced = Vec::new();
    for item in items {
        if !unserviced.is_empty() {
            unserviced.push(Value::String(item.id));
            continue;
        }
        let remaining = limits.deadline.saturating_duration_since(Instant::now());
        let id = item.id.clone();
        let outcome = if remaining.is_zero() {
            None
        } else {
            tokio::time::timeout(remaining, run(&app, item, &caller, &host, &limits))
                .await
                .ok()
        };
        match outcome {
            Some(Outcome::Serviced(entry)) => serviced.push(entry),
            Some(Outcome::OverLimit) | None => unserviced.push(Value::String(id)),
        }
    }
    json_response(
        StatusCode::OK,
        &json!({
            "batch_request_id": request.batch_request_id.unwrap_or_default(),
            "serviced_requests": serviced,
            "unserviced_requests": unserviced,
        }),
    )
}

/// Runs one item through the whole router as `caller`.
async fn run(app: &Router, item: Item, caller: &Caller, host: &RequestHost, limits: &Limits) -> Outcome {
    if item.body.len() as u64 > limits.input {
        return Outcome::OverLimit;
    }
    let started = Instant::now();
    let response = match inner_request(&item, caller, host) {
        Some(request) => match app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        },
        None => ApiError::NoResource.into_response(),
    };
    let (parts, body) = response.into_parts();
    let limit = usize::try_from(limits.output).unwrap_or(usize::MAX);
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return Outcome::OverLimit;
    };
    let headers: Vec<Value> = if item.exclude_response_headers {
        Vec::new()
    } else {
        parts
            .headers
            .iter()
            .filter(|(name, _)| *name != header::SET_COOKIE)
            .map(|(name, value)| {
                json!({"name": header_case(name.as_str()), "value": String::from_utf8_lossy(value.as_bytes())})
            })
            .collect()
    };
    let mut entry = json!({
        "id": item.id,
        "status_code": parts.status.as_u16(),
        "status_text": parts.status.canonical_reason().unwrap_or(""),
        "headers": headers,
        "body": STANDARD.encode(&body),
        "execution_time": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    if parts.status.is_client_error() || parts.status.is_server_error() {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .or_else(|| parts.status.canonical_reason().map(str::to_string));
        entry["error_message"] = json!(message);
    }
    if parts.status.is_redirection()
        && let Some(location) = parts.headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
    {
        entry["redirect_url"] = json!(location);
    }
    Outcome::Serviced(entry)
}

/// The request an item stands for, on the batch's host, as the batch's caller; `None` for a URL
/// that is not a REST API path of this instance (the management interface, pages, another
/// batch), answered as a resource that does not exist.
fn inner_request(item: &Item, caller: &Caller, host: &RequestHost) -> Option<axum::extract::Request> {
    let path = item.url.split(['?', '#']).next().unwrap_or("");
    if !item.url.starts_with("/api/") || path.trim_end_matches('/').ends_with("/batch") {
        return None;
    }
    let mut request = axum::http::Request::builder()
        .method(item.method.clone())
        .uri(&item.url)
        .header(header::HOST, &host.0);
    for (name, value) in &item.headers {
        if !CONTROLLED_HEADERS.contains(name) {
            request = request.header(name, value);
        }
    }
    let mut request = request
        .extension(BatchCaller(caller.clone()))
        .body(Body::from(item.body.clone()))
        .ok()?;
    crate::server::override_method(&mut request);
    Some(request)
}

/// `content-type` → `Content-Type`, as the Batch API lists headers.
fn header_case(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_spelt_as_the_batch_api_lists_them() {
        assert_eq!(header_case("content-type"), "Content-Type");
        assert_eq!(header_case("x-total-count"), "X-Total-Count");
        assert_eq!(header_case("link"), "Link");
    }

    #[test]
    fn an_item_with_a_body_that_is_not_base64_is_malformed() {
        let item = |body: &str| ItemRequest {
            id: "1".into(),
            method: "post".into(),
            url: "/api/now/table/incident".into(),
            headers: Vec::new(),
            body: Some(body.into()),
            exclude_response_headers: false,
        };
        assert!(Item::decode(item("not base64!")).is_none());
        let decoded = Item::decode(item("e30=\n")).expect("Base64 with a line break");
        assert_eq!((decoded.method, decoded.body), (Method::POST, b"{}".to_vec()));
    }
}
