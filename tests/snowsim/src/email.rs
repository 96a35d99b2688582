//! The Email API (servicenow-api.md §4): `POST /api/now/v1/email` queues a `sys_email` record
//! for callers holding `email_api_send` (and create access to `sys_email`), `GET
//! /api/now/v1/email/{id}` reads it back. Versioned URL only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{Map, Value, json};

use crate::acl::{Access, Operation};
use crate::auth::Caller;
use crate::envelope::{ApiError, json_response, result};
use crate::instance::Instance;
use crate::schema::Schema;
use crate::store::Record;

/// The Email API routes.
pub fn router() -> Router {
    Router::new()
        .route("/api/now/v1/email", axum::routing::post(send))
        .route("/api/now/v1/email/{id}", get(read))
}

const MAX_RECIPIENTS: usize = 100;

fn addresses(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_RECIPIENTS => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::BadRequest(format!("{field} must be an array of addresses"))),
        Some(_) => Err(ApiError::BadRequest(format!(
            "{field} must be an array of at most {MAX_RECIPIENTS} addresses"
        ))),
    }
}

/// `POST /api/now/v1/email`.
async fn send(
    Extension(instance): Extension<Arc<Instance>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let schema = Schema::get();
    let emails = schema.table("sys_email").expect("sys_email is in the dictionary");
    let input = {
        let state = instance.state.lock();
        let may_send = caller.roles.contains("email_api_send") || caller.roles.contains("admin");
        if !may_send || state.acl.access(emails, Operation::Create, &caller.roles) != Access::All {
            return ApiError::AclDenied(Operation::Create).into_response();
        }
        let body: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(Value::Object(body)) => body,
            _ => return ApiError::BadPayload("The payload is not valid JSON.".into()).into_response(),
        };
        let (to, cc, bcc) = match (addresses(&body, "to"), addresses(&body, "cc"), addresses(&body, "bcc")) {
            (Ok(to), Ok(cc), Ok(bcc)) if !to.is_empty() => (to, cc, bcc),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
            _ => return ApiError::BadRequest("to is required".into()).into_response(),
        };
        let text = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("").to_string();
        let (target_table, target_id) = (text("table_name"), text("table_record_id"));
        if target_table.is_empty() != target_id.is_empty() {
            return ApiError::BadRequest("table_name and table_record_id must be given together".into())
                .into_response();
        }
        if !target_table.is_empty() {
            let Some(table) = schema.table(&target_table) else {
                return ApiError::InvalidTable(target_table).into_response();
            };
            let readable = state.db.get(table, &target_id).is_some_and(|record| {
                let class = schema.table(record.class).unwrap_or(table);
                match state.acl.access(class, Operation::Read, &caller.roles) {
                    Access::All => true,
                    Access::OwnRows(field) => record.get(&field) == caller.sys_id,
                    Access::Matching(conditions) => conditions.iter().any(|condition| {
                        crate::query::Query::parse(condition).matches(&|field| state.db.lookup(record, field), true)
                    }),
                    Access::Denied => false,
                }
            });
            if !readable {
                return ApiError::AclDenied(Operation::Read).into_response();
            }
        }
        let headers = body.get("headers").cloned().unwrap_or(json!({})).to_string();
        BTreeMap::from([
            ("recipients".to_string(), to.join(",")),
            ("copied".to_string(), cc.join(",")),
            ("blind_copied".to_string(), bcc.join(",")),
            ("subject".to_string(), text("subject")),
            ("body".to_string(), text("html")),
            ("body_text".to_string(), text("text")),
            ("headers".to_string(), headers),
            ("importance".to_string(), text("importance")),
            ("target_table".to_string(), target_table),
            ("instance".to_string(), target_id),
        ])
    };
    let record = match instance.insert(emails, &input, &caller).await {
        Ok(record) => record,
        Err(error) => return ApiError::OperationFailed(error.to_string()).into_response(),
    };
    let id = record.sys_id();
    let status = instance.state.lock().behaviour.email_send_status;
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        &json!({"result": {
            "id": id,
            "links": [
                {"rel": "self", "href": format!("/now/v1/email/{id}")},
                {"rel": "status", "href": format!("/now/v1/email/{id}?sysparm_fields=id,type,state,error")},
            ],
        }}),
    )
}

/// `GET /api/now/v1/email/{id}`.
async fn read(
    Extension(instance): Extension<Arc<Instance>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let emails = Schema::get()
        .table("sys_email")
        .expect("sys_email is in the dictionary");
    let state = instance.state.lock();
    if state.acl.access(emails, Operation::Read, &caller.roles) != Access::All {
        return ApiError::NoRecord.into_response();
    }
    let Some(record) = state.db.get(emails, &id) else {
        return ApiError::NoRecord.into_response();
    };
    let mut view = email_view(record);
    let fields: Option<Vec<String>> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "sysparm_fields")
        .map(|(_, v)| v.split(',').map(|f| f.trim().to_string()).collect());
    if let Some(fields) = fields {
        view.retain(|k, _| fields.contains(k));
    }
    result(Value::Object(view))
}

fn email_view(record: &Record) -> Map<String, Value> {
    let list = |field: &str| -> Vec<&str> { record.get(field).split(',').filter(|a| !a.is_empty()).collect() };
    let headers: Value = serde_json::from_str(record.get("headers")).unwrap_or(json!({}));
    let error = record.get("error_string");
    let view = json!({
        "id": record.sys_id(),
        "type": record.get("type"),
        "state": record.get("state"),
        "subject": record.get("subject"),
        "html": record.get("body"),
        "text": record.get("body_text"),
        "to": list("recipients"),
        "cc": list("copied"),
        "bcc": list("blind_copied"),
        "headers": headers,
        "importance": record.get("importance"),
        "error": if error.is_empty() { Value::Null } else { json!(error) },
    });
    match view {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
