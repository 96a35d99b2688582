//! How the instance answers: the `{"result": ...}` success envelope, the
//! `{"error": {...}, "status": "failure"}` error envelope with the exact messages of
//! servicenow-api.md §2.6, and the headers of §2.8.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::acl::Operation;

/// The content type of every JSON answer.
pub const JSON_UTF8: &str = "application/json;charset=UTF-8";

/// An error the REST API answers with its standard envelope.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 401: no, wrong, expired or revoked credentials.
    #[error("User Not Authenticated")]
    NotAuthenticated,
    /// 400: the table does not exist.
    #[error("Invalid table {0}")]
    InvalidTable(String),
    /// 404: no such record, or the ACL hides it.
    #[error("No Record found")]
    NoRecord,
    /// 403: the ACL refuses the operation.
    #[error("Operation Failed")]
    AclDenied(Operation),
    /// 403 from a failed write that is not an ACL matter.
    #[error("Operation Failed")]
    OperationFailed(String),
    /// 400: the URI names no resource.
    #[error("Requested URI does not represent any resource")]
    NoResource,
    /// 400: the body is not JSON (or not an object).
    #[error("Exception while reading request")]
    BadPayload(String),
    /// 400: a request parameter is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 403: a list query on a table the caller may read no row of (servicenow-api.md §7, issue
    /// 13: "Read ACLs can answer 403 Insufficient rights to query records to a list query").
    #[error("Insufficient rights to query records")]
    QueryDenied,
    /// 403: the OAuth token's entity lacks the auth scope a REST API Auth Scope policy requires
    /// (servicenow-api.md §7).
    #[error("Missing required api access scope")]
    ScopeMissing,
    /// 405: the method is not supported on this resource.
    #[error("Method not Supported")]
    MethodNotSupported(String),
    /// 429: a rate-limit rule refused the request.
    #[error("Rate limit exceeded")]
    RateLimited {
        /// Requests per hour of the rule.
        limit: u32,
        /// API name for the detail text (`Table API`).
        api: String,
        /// Seconds until the window resets.
        retry_after: i64,
    },
    /// Any status injected by a fault.
    #[error("injected status {0}")]
    Injected(u16),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotAuthenticated => StatusCode::UNAUTHORIZED,
            ApiError::InvalidTable(_) | ApiError::NoResource | ApiError::BadPayload(_) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::NoRecord => StatusCode::NOT_FOUND,
            ApiError::AclDenied(_) | ApiError::OperationFailed(_) | ApiError::ScopeMissing | ApiError::QueryDenied => {
                StatusCode::FORBIDDEN
            }
            ApiError::MethodNotSupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Injected(code) => StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn detail(&self) -> Value {
        match self {
            ApiError::NotAuthenticated => json!("Required to provide Auth information"),
            ApiError::InvalidTable(_) | ApiError::NoResource | ApiError::Injected(_) | ApiError::ScopeMissing => {
                Value::Null
            }
            ApiError::QueryDenied => json!("Field(s) present in the query do not have permission to be read"),
            ApiError::NoRecord => {
                json!("Record doesn't exist or ACL restricts the record retrieval")
            }
            ApiError::AclDenied(op) => json!(format!(
                "ACL Exception {} Failed due to security constraints",
                op.exception_word()
            )),
            ApiError::OperationFailed(detail) | ApiError::BadPayload(detail) | ApiError::MethodNotSupported(detail) => {
                json!(detail)
            }
            ApiError::BadRequest(_) => Value::Null,
            ApiError::RateLimited { limit, api, .. } => {
                json!(format!("Rate limit of {limit} requests per hour for {api} exceeded"))
            }
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Injected(code) => StatusCode::from_u16(*code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error")
                .to_string(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {"message": self.message(), "detail": self.detail()},
            "status": "failure",
        });
        let mut response = json_response(self.status(), &body);
        match &self {
            ApiError::NotAuthenticated => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("BASIC realm=\"Service-now\""),
                );
            }
            ApiError::RateLimited { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}

/// A JSON answer with the instance's content type.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    response
}

/// `{"result": value}` with status 200.
pub fn result(value: Value) -> Response {
    json_response(StatusCode::OK, &json!({ "result": value }))
}

/// Adds the headers a real instance sends on every answer (servicenow-api.md §2.8).
pub fn add_standard_headers(headers: &mut HeaderMap, transaction_id: &str, logged_in: bool) {
    let fixed = [
        ("cache-control", "no-cache,no-store,must-revalidate,max-age=-1"),
        ("pragma", "no-store,no-cache"),
        ("expires", "0"),
        ("server", "ServiceNow"),
        ("x-content-type-options", "nosniff"),
        ("strict-transport-security", "max-age=63072000; includeSubDomains"),
        ("server-timing", "sem_wait;dur=0, sesh_wait;dur=0"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "x-is-logged-in",
        HeaderValue::from_static(if logged_in { "true" } else { "false" }),
    );
    if let Ok(value) = HeaderValue::from_str(transaction_id) {
        headers.insert("x-transaction-id", value);
    }
}
