//! The Table API (servicenow-api.md §2.1–2.4): `/api/now[/v1|/v2]/table/{table}[/{sys_id}]` with
//! GET (list and single), POST, PUT, PATCH and DELETE, the `sysparm_*` parameters, pagination
//! headers, access control and the exact error answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::acl::{Access, Operation};
use crate::auth::Caller;
use crate::config::SCRIPT_WRITER_ROLE;
use crate::envelope::{ApiError, json_response, result};
use crate::instance::{Instance, State};
use crate::query::{self, FieldValue, Query};
use crate::render::{self, DisplayMode, RenderOptions};
use crate::schema::{FieldKind, Schema, Table};
use crate::store::Record;
/// The script-type fields of `sys_script`.
const SCRIPT_FIELDS: [&str; 2] = ["script", "condition"];

/// The host a request addressed (`Host` header or HTTP/2 authority), set by the gateway.
#[derive(Clone, Debug)]
pub struct RequestHost(pub String);

/// The Table API routes.
pub fn router() -> Router {
    let collection = || get(list).post(create).fallback(not_supported);
    let record = || {
        get(read)
            .put(update)
            .patch(update)
            .delete(remove)
            .fallback(not_supported)
    };
    Router::new()
        .route("/api/now/table/{table}", collection())
        .route("/api/now/table/{table}/{sys_id}", record())
        .route("/api/now/{version}/table/{table}", collection())
        .route("/api/now/{version}/table/{table}/{sys_id}", record())
}

/// What every Table API handler starts from.
struct Request {
    instance: Arc<Instance>,
    caller: Caller,
    table: &'static Table,
    sys_id: Option<String>,
    version: Option<String>,
    base_url: String,
    params: Params,
    raw_query: String,
    path: String,
}

/// The `sysparm_*` parameters.
#[derive(Debug, Default)]
struct Params {
    query: Option<String>,
    pairs: Vec<(String, String)>,
    fields: Option<Vec<String>>,
    limit: Option<usize>,
    offset: usize,
    display: Option<DisplayMode>,
    exclude_reference_link: bool,
    suppress_pagination_header: bool,
    no_count: bool,
    input_display_value: bool,
}

const DEFAULT_LIMIT: usize = 10_000;

impl Params {
    fn parse(raw: &str) -> Params {
        let mut params = Params::default();
        let truthy = |v: &str| v.eq_ignore_ascii_case("true");
        for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            match key.as_ref() {
                "sysparm_query" => params.query = Some(value.into_owned()),
                "sysparm_fields" => {
                    let fields: Vec<String> = value
                        .split(',')
                        .map(|f| f.trim().to_string())
                        .filter(|f| !f.is_empty())
                        .collect();
                    params.fields = (!fields.is_empty()).then_some(fields);
                }
                "sysparm_limit" => params.limit = value.trim().parse().ok(),
                "sysparm_offset" => params.offset = value.trim().parse().unwrap_or(0),
                "sysparm_display_value" => {
                    params.display = Some(match value.to_ascii_lowercase().as_str() {
                        "true" => DisplayMode::Display,
                        "all" => DisplayMode::Both,
                        _ => DisplayMode::Raw,
                    })
                }
                "sysparm_exclude_reference_link" => params.exclude_reference_link = truthy(&value),
                "sysparm_suppress_pagination_header" => params.suppress_pagination_header = truthy(&value),
                "sysparm_no_count" => params.no_count = truthy(&value),
                "sysparm_input_display_value" => params.input_display_value = truthy(&value),
                "access_token" => {}
                other if other.starts_with("sysparm_") => {}
                other => params.pairs.push((other.to_string(), value.into_owned())),
            }
        }
        params
    }

    /// The encoded query: `sysparm_query`, or else the `name=value` pairs AND'ed.
    fn encoded_query(&self) -> String {
        match &self.query {
            Some(q) => q.clone(),
            None => self
                .pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("^"),
        }
    }
}

impl Request {
    fn from_parts(
        instance: Arc<Instance>,
        caller: Caller,
        host: RequestHost,
        path: HashMap<String, String>,
        raw_query: Option<String>,
        uri_path: String,
    ) -> Result<Request, ApiError> {
        let version = path.get("version").cloned();
        if version.as_deref().is_some_and(|v| v != "v1" && v != "v2") {
            return Err(ApiError::NoResource);
        }
        let table_name = path.get("table").cloned().unwrap_or_default();
        let table = Schema::get()
            .table(&table_name)
            .ok_or(ApiError::InvalidTable(table_name))?;
        let raw_query = raw_query.unwrap_or_default();
        Ok(Request {
            instance,
            caller,
            table,
            sys_id: path.get("sys_id").cloned(),
            version,
            base_url: format!("https://{}", host.0),
            params: Params::parse(&raw_query),
            raw_query,
            path: uri_path,
        })
    }

    fn render_options(&self) -> RenderOptions {
        RenderOptions {
            base_url: self.base_url.clone(),
            version: self.version.clone(),
            display: self.params.display.unwrap_or(DisplayMode::Raw),
            exclude_reference_link: self.params.exclude_reference_link,
            fields: self.params.fields.clone(),
        }
    }

    fn may_read(&self, state: &State, record: &Record) -> bool {
        let table = Schema::get().table(record.class).unwrap_or(self.table);
        self.may(state, table, Operation::Read, record)
    }

    fn may(&self, state: &State, table: &Table, operation: Operation, record: &Record) -> bool {
        let lookup = |field: &str| state.db.lookup(record, field);
        self.allowed(state, table, operation, &lookup)
    }

    /// Whether the caller may `operation` on `table` a row whose fields `lookup` gives.
    fn allowed(&self, state: &State, table: &Table, operation: Operation, lookup: &dyn Fn(&str) -> FieldValue) -> bool {
        match state.acl.access(table, operation, &self.caller.roles) {
            Access::All => true,
            Access::OwnRows(field) => lookup(&field).value == self.caller.sys_id,
            Access::Matching(conditions) => conditions
                .iter()
                .any(|condition| Query::parse(condition).matches(lookup, true)),
            Access::Denied => false,
        }
    }

    /// Whether the caller may insert `input` into this table: the table's create rules, and for
    /// script fields the script-writer role (servicenow-api.md §7).
    fn may_create(&self, state: &State, input: &BTreeMap<String, String>) -> Result<(), ApiError> {
        let lookup = |field: &str| FieldValue::from(input.get(field).cloned().unwrap_or_default());
        if !self.allowed(state, self.table, Operation::Create, &lookup) {
            return Err(ApiError::AclDenied(Operation::Create));
        }
        self.may_write_scripts(state, self.table, Operation::Create, input)
    }

    /// On Zurich and later, writing a script field (`script`, `condition` of `sys_script`) needs
    /// the role `snc_required_script_writer_permission`, which `admin` does not hold by default
    /// (`platform-security/access-control/explore-sgt.md`); [`Behaviour::script_writer_role`].
    fn may_write_scripts(
        &self,
        state: &State,
        table: &Table,
        operation: Operation,
        input: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let writes_script = table.lineage.contains(&"sys_script")
            && SCRIPT_FIELDS
                .iter()
                .any(|field| input.get(*field).is_some_and(|v| !v.is_empty()));
        if writes_script && state.behaviour.script_writer_role && !self.caller.roles.contains(SCRIPT_WRITER_ROLE) {
            return Err(ApiError::AclDenied(operation));
        }
        Ok(())
    }

    /// The class of the record `sys_id` when the caller may read it and may `operation` it;
    /// otherwise no record (a row the caller cannot read is not found) or the ACL denial.
    fn class_if_permitted(
        &self,
        state: &State,
        sys_id: &str,
        operation: Operation,
    ) -> Result<&'static Table, ApiError> {
        let Some(record) = state.db.get(self.table, sys_id).filter(|r| self.may_read(state, r)) else {
            return Err(ApiError::NoRecord);
        };
        let class = Schema::get().table(record.class).unwrap_or(self.table);
        if !self.may(state, class, operation, record) {
            return Err(ApiError::AclDenied(operation));
        }
        Ok(class)
    }
}

macro_rules! request {
    ($instance:ident, $caller:ident, $host:ident, $path:ident, $query:ident, $uri:ident) => {
        match Request::from_parts($instance, $caller, $host, $path, $query, $uri.path().to_string()) {
            Ok(request) => request,
            Err(error) => return error.into_response(),
        }
    };
}

type Parts = (
    Extension<Arc<Instance>>,
    Extension<Caller>,
    Extension<RequestHost>,
    Path<HashMap<String, String>>,
    RawQuery,
    axum::http::Uri,
);

/// `GET /api/now/table/{table}`.
async fn list(
    (Extension(instance), Extension(caller), Extension(host), Path(path), RawQuery(query), uri): Parts,
) -> Response {
    let request = request!(instance, caller, host, path, query, uri);
    let state = request.instance.state.lock();
    if state.behaviour.list_denied_is_403
        && state.acl.access(request.table, Operation::Read, &request.caller.roles) == Access::Denied
    {
        return ApiError::QueryDenied.into_response();
    }
    let db = &state.db;
    let mut query = Query::parse(&request.params.encoded_query());
    let now = request.instance.clock.glide_now();
    for condition in query.conditions_mut() {
        resolve_script_value(&mut condition.value, &request.caller, &now);
    }
    query.retain_valid(|path| db.is_valid_path(request.table, path));
    let no_rows = !query.invalid.is_empty() && state.property_is_true("glide.invalid_query.returns_no_rows");
    let case_sensitive = state.behaviour.case_sensitive_queries;
    let mut rows: Vec<&Record> = if no_rows {
        Vec::new()
    } else {
        db.rows(request.table)
            .filter(|r| query.matches(&|f| db.lookup(r, f), case_sensitive))
            .collect()
    };
    for order in query.order.iter().rev() {
        rows.sort_by(|a, b| {
            let ordering = query::compare(
                &db.lookup(a, &order.field).value,
                &db.lookup(b, &order.field).value,
                false,
            );
            if order.descending { ordering.reverse() } else { ordering }
        });
    }
    let total = rows.len();
    let limit = request.params.limit.unwrap_or(DEFAULT_LIMIT).max(1);
    let offset = request.params.offset;
    let options = request.render_options();
    let page: Vec<Value> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .filter(|r| request.may_read(&state, r))
        .map(|r| render::render(db, request.table, r, &options))
        .collect();
    let behaviour = state.behaviour.clone();
    drop(state);
    if page.is_empty() && request.version.as_deref() == Some("v1") {
        return ApiError::NoRecord.into_response();
    }
    let mut response = result(Value::Array(page));
    let headers = response.headers_mut();
    if !(request.params.no_count && behaviour.no_count_omits_total) {
        headers.insert("x-total-count", HeaderValue::from(total));
    }
    if !request.params.suppress_pagination_header {
        let link = link_header(&request, total, limit, offset, behaviour.next_link_on_last_page);
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    response
}

/// The `Link` header: first, prev (offset − limit, even when negative), next (omitted on the last
/// page unless switched on), last; other query parameters kept, `sysparm_limit` before
/// `sysparm_offset`.
fn link_header(request: &Request, total: usize, limit: usize, offset: usize, next_on_last: bool) -> String {
    let kept: Vec<&str> = request
        .raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split('=').next().unwrap_or("");
            key != "sysparm_limit" && key != "sysparm_offset"
        })
        .collect();
    let prefix = if kept.is_empty() {
        format!("{}{}?", request.base_url, request.path)
    } else {
        format!("{}{}?{}&", request.base_url, request.path, kept.join("&"))
    };
    let url = |o: i64| format!("<{prefix}sysparm_limit={limit}&sysparm_offset={o}>");
    let (limit_i, offset_i) = (limit as i64, offset as i64);
    let last = if total == 0 {
        0
    } else {
        ((total as i64 - 1) / limit_i) * limit_i
    };
    let mut links = vec![
        format!("{};rel=\"first\"", url(0)),
        format!("{};rel=\"prev\"", url(offset_i - limit_i)),
    ];
    if offset_i + limit_i < total as i64 || next_on_last {
        links.push(format!("{};rel=\"next\"", url(offset_i + limit_i)));
    }
    links.push(format!("{};rel=\"last\"", url(last)));
    links.join(",")
}

/// Resolves `javascript:` query values the REST sandbox can evaluate (servicenow-api.md §2.5):
/// `gs.getUserID()`, `gs.getUserName()`, `gs.nowDateTime()`. Anything else becomes `""`.
fn resolve_script_value(value: &mut String, caller: &Caller, now: &str) {
    let Some(expression) = value
        .strip_prefix("javascript:")
        .or_else(|| value.strip_prefix("javascript&colon;"))
    else {
        return;
    };
    let compact: String = expression
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .trim_end_matches(';')
        .to_string();
    *value = match compact.as_str() {
        "gs.getUserID()" => caller.sys_id.clone(),
        "gs.getUserName()" => caller.user_name.clone(),
        "gs.nowDateTime()" => now.to_string(),
        _ => String::new(),
    };
}

/// `GET /api/now/table/{table}/{sys_id}`.
async fn read(
    (Extension(instance), Extension(caller), Extension(host), Path(path), RawQuery(query), uri): Parts,
) -> Response {
    let request = request!(instance, caller, host, path, query, uri);
    let state = request.instance.state.lock();
    let sys_id = request.sys_id.as_deref().unwrap_or("");
    match state.db.get(request.table, sys_id) {
        Some(record) if request.may_read(&state, record) => result(render::render(
            &state.db,
            request.table,
            record,
            &request.render_options(),
        )),
        _ => ApiError::NoRecord.into_response(),
    }
}

/// `POST /api/now/table/{table}`.
async fn create(
    (Extension(instance), Extension(caller), Extension(host), Path(path), RawQuery(query), uri): Parts,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = request!(instance, caller, host, path, query, uri);
    let input = {
        let state = request.instance.state.lock();
        let input = match parse_body(&body) {
            Ok(input) => display_inputs(&state, request.table, input, request.params.input_display_value),
            Err(error) => return error.into_response(),
        };
        if let Err(denied) = request.may_create(&state, &input) {
            return denied.into_response();
        }
        input
    };
    let record = match request.instance.insert(request.table, &input, &request.caller).await {
        Ok(record) => record,
        Err(error) => return ApiError::OperationFailed(error.to_string()).into_response(),
    };
    let options = request.render_options();
    let location = options.record_url(request.table.name, record.sys_id());
    let mut response = written(&request, &record, &headers, StatusCode::CREATED);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `PUT|PATCH /api/now/table/{table}/{sys_id}`.
async fn update(
    (Extension(instance), Extension(caller), Extension(host), Path(path), RawQuery(query), uri): Parts,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = request!(instance, caller, host, path, query, uri);
    let sys_id = request.sys_id.clone().unwrap_or_default();
    let input = {
        let state = request.instance.state.lock();
        let class = match request.class_if_permitted(&state, &sys_id, Operation::Write) {
            Ok(class) => class,
            Err(error) => return error.into_response(),
        };
        let input = match parse_body(&body) {
            Ok(input) => display_inputs(&state, class, input, request.params.input_display_value),
            Err(error) => return error.into_response(),
        };
        if let Err(denied) = request.may_write_scripts(&state, class, Operation::Write, &input) {
            return denied.into_response();
        }
        input
    };
    match request
        .instance
        .update(request.table, &sys_id, &input, &request.caller)
        .await
    {
        Some(record) => written(&request, &record, &headers, StatusCode::OK),
        None => ApiError::NoRecord.into_response(),
    }
}

/// `DELETE /api/now/table/{table}/{sys_id}`.
async fn remove(
    (Extension(instance), Extension(caller), Extension(host), Path(path), RawQuery(query), uri): Parts,
) -> Response {
    let request = request!(instance, caller, host, path, query, uri);
    let sys_id = request.sys_id.clone().unwrap_or_default();
    {
        let state = request.instance.state.lock();
        if let Err(error) = request.class_if_permitted(&state, &sys_id, Operation::Delete) {
            return error.into_response();
        }
    }
    match request.instance.delete(request.table, &sys_id, &request.caller).await {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => ApiError::NoRecord.into_response(),
    }
}

/// Any other method on a Table API resource.
async fn not_supported(method: axum::http::Method) -> Response {
    ApiError::MethodNotSupported(format!("{method} method not supported for API")).into_response()
}

/// The answer to a successful write: the full record (or no body with `X-no-response-body`).
fn written(request: &Request, record: &Record, headers: &HeaderMap, status: StatusCode) -> Response {
    let no_body = headers
        .get("x-no-response-body")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if no_body {
        return status.into_response();
    }
    let state = request.instance.state.lock();
    let body = render::render(&state.db, request.table, record, &request.render_options());
    json_response(status, &json!({ "result": body }))
}

/// A write body: a JSON object (the first one of an array) whose values become strings.
fn parse_body(body: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    let invalid = || ApiError::BadPayload("The payload is not valid JSON.".into());
    let value: Value = serde_json::from_slice(body).map_err(|_| invalid())?;
    let object = match value {
        Value::Object(object) => object,
        Value::Array(items) => match items.into_iter().next() {
            Some(Value::Object(object)) => object,
            _ => return Err(invalid()),
        },
        _ => return Err(invalid()),
    };
    Ok(object.into_iter().map(|(k, v)| (k, input_text(v))).collect())
}

fn input_text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(mut o) => o.remove("value").map(input_text).unwrap_or_default(),
        Value::Array(items) => items.into_iter().map(input_text).collect::<Vec<_>>().join(","),
    }
}

/// With `sysparm_input_display_value=true`, reference inputs may name the record by its display
/// value; they are turned into sys_ids here.
fn display_inputs(
    state: &State,
    table: &Table,
    mut input: BTreeMap<String, String>,
    enabled: bool,
) -> BTreeMap<String, String> {
    if !enabled {
        return input;
    }
    for (name, value) in input.iter_mut() {
        let Some(FieldKind::Reference(target)) = table.field(name).map(|f| f.kind) else {
            continue;
        };
        let Some(target) = Schema::get().table(target) else {
            continue;
        };
        if state.db.get(target, value).is_some() {
            continue;
        }
        if let Some(found) = state.db.rows(target).find(|r| state.db.record_display(r) == *value) {
            *value = found.sys_id().to_string();
        }
    }
    input
}

/// `GET /api/now/ui/user/current_user` (servicenow-api.md §2.9, with §7's correction: the display
/// name is `user_display_name`; there is no `name` member).
pub async fn current_user(
    Extension(instance): Extension<Arc<Instance>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let state = instance.state.lock();
    let Some(user) = state.user(&caller.sys_id) else {
        return ApiError::NotAuthenticated.into_response();
    };
    let mut roles: Vec<&String> = caller.roles.iter().collect();
    roles.sort();
    result(json!({
        "user_sys_id": user.sys_id(),
        "user_name": user.get("user_name"),
        "user_display_name": user.get("name"),
        "first_name": user.get("first_name"),
        "last_name": user.get("last_name"),
        "email": user.get("email"),
        "user_avatar": "",
        "roles": roles,
    }))
}
