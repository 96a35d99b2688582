//! The management interface, outside `/api/now`: the [`Admin`] handle for in-process tests and
//! the same operations over HTTP under `/snowsim/` for the binary. Nothing here is part of the
//! simulated instance; management calls are neither authenticated, faulted nor logged.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::acl::AclRule;
use crate::auth::Caller;
use crate::clock::Clock;
use crate::config::{Behaviour, OAuthAppSpec, UserSpec};
use crate::faults::{Fault, RateLimitRule};
use crate::instance::Instance;
use crate::logs::{OutboundLogEntry, RequestLogEntry, SystemLogEntry};
use crate::oauth::{OAuthApp, TokenInfo};
use crate::query::Query;
use crate::schema::{FieldKind, Schema};
use crate::seed;
use crate::server::Shared;
use crate::table::RequestHost;

/// Why a management operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// The table is not in the dictionary.
    #[error("unknown table {0}")]
    UnknownTable(String),
    /// No such user.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// No such record.
    #[error("no record {sys_id} in {table}")]
    UnknownRecord {
        /// Table.
        table: String,
        /// sys_id.
        sys_id: String,
    },
    /// No such OAuth application.
    #[error("unknown OAuth application {0}")]
    UnknownApp(String),
    /// The store refused the write.
    #[error("failed to write: {0}")]
    Write(String),
}

/// A handle on one instance for tests: seed, inspect, break. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    instance: Arc<Instance>,
    clock: Clock,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("host", &self.instance.host).finish()
    }
}

/// The identity management writes act as (`gs.getUserName()` is `system` in their rules).
fn system_caller() -> Caller {
    Caller {
        sys_id: String::new(),
        user_name: "system".to_string(),
        roles: HashSet::from(["admin".to_string()]),
    }
}

fn string_map<K: Into<String>, V: Into<String>>(fields: impl IntoIterator<Item = (K, V)>) -> BTreeMap<String, String> {
    fields.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

impl Admin {
    pub(crate) fn new(instance: Arc<Instance>, clock: Clock) -> Admin {
        Admin { instance, clock }
    }

    /// The instance's host name.
    pub fn host(&self) -> &str {
        &self.instance.host
    }

    /// Records of `table` (and tables extending it) matching an encoded query, raw values,
    /// passwords left out. An unknown table has no records.
    pub fn records(&self, table: &str, encoded_query: &str) -> Vec<BTreeMap<String, String>> {
        let Some(table) = Schema::get().table(table) else {
            return Vec::new();
        };
        let state = self.instance.state.lock();
        let mut query = Query::parse(encoded_query);
        query.retain_valid(|path| state.db.is_valid_path(table, path));
        state
            .db
            .rows(table)
            .filter(|r| query.matches(&|f| state.db.lookup(r, f), false))
            .map(|r| {
                let class = Schema::get().table(r.class).unwrap_or(table);
                r.values
                    .iter()
                    .filter(|(k, _)| class.field(k).is_none_or(|f| f.kind != FieldKind::Password))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect()
    }

    /// One record by sys_id.
    pub fn record(&self, table: &str, sys_id: &str) -> Option<BTreeMap<String, String>> {
        self.records(table, &format!("sys_id={sys_id}")).into_iter().next()
    }

    /// Inserts a record as `system`, running Business Rules; returns its sys_id.
    pub async fn insert<K: Into<String>, V: Into<String>>(
        &self,
        table: &str,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Result<String, AdminError> {
        let table = Schema::get()
            .table(table)
            .ok_or_else(|| AdminError::UnknownTable(table.to_string()))?;
        let record = self
            .instance
            .insert(table, &string_map(fields), &system_caller())
            .await
            .map_err(|e| AdminError::Write(e.to_string()))?;
        Ok(record.sys_id().to_string())
    }

    /// Updates a record as `system`, running Business Rules when something changes.
    pub async fn update<K: Into<String>, V: Into<String>>(
        &self,
        table: &str,
        sys_id: &str,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), AdminError> {
        let schema_table = Schema::get()
            .table(table)
            .ok_or_else(|| AdminError::UnknownTable(table.to_string()))?;
        self.instance
            .update(schema_table, sys_id, &string_map(fields), &system_caller())
            .await
            .map(|_| ())
            .ok_or_else(|| AdminError::UnknownRecord {
                table: table.to_string(),
                sys_id: sys_id.to_string(),
            })
    }

    /// Deletes a record as `system`, running Business Rules.
    pub async fn delete(&self, table: &str, sys_id: &str) -> Result<(), AdminError> {
        let schema_table = Schema::get()
            .table(table)
            .ok_or_else(|| AdminError::UnknownTable(table.to_string()))?;
        self.instance
            .delete(schema_table, sys_id, &system_caller())
            .await
            .map(|_| ())
            .ok_or_else(|| AdminError::UnknownRecord {
                table: table.to_string(),
                sys_id: sys_id.to_string(),
            })
    }

    /// Adds a user with its roles; returns the user's sys_id.
    pub fn add_user(&self, spec: &UserSpec) -> Result<String, AdminError> {
        let now = self.clock.glide_now();
        let mut state = self.instance.state.lock();
        seed::add_user(&mut state, &self.instance.host, spec, &now)
            .ok_or_else(|| AdminError::Write(format!("user {} could not be added", spec.user_name)))
    }

    /// A user's sys_id.
    pub fn user_sys_id(&self, user_name: &str) -> Option<String> {
        let state = self.instance.state.lock();
        state.user_by_name(user_name).map(|u| u.sys_id().to_string())
    }

    fn require_user(&self, user_name: &str) -> Result<String, AdminError> {
        self.user_sys_id(user_name)
            .ok_or_else(|| AdminError::UnknownUser(user_name.to_string()))
    }

    /// Names of a user's roles.
    pub fn roles(&self, user_name: &str) -> Result<Vec<String>, AdminError> {
        let user = self.require_user(user_name)?;
        Ok(self.instance.state.lock().db.role_names(&user))
    }

    /// Grants a role (created when unknown).
    pub fn grant_role(&self, user_name: &str, role: &str) -> Result<(), AdminError> {
        let user = self.require_user(user_name)?;
        let now = self.clock.glide_now();
        seed::grant_role(&mut self.instance.state.lock().db, &user, role, &now);
        Ok(())
    }

    /// Removes a role grant (every `sys_user_has_role` row of that user and role, and the rows
    /// it brought in as inherited).
    pub fn remove_role(&self, user_name: &str, role: &str) -> Result<(), AdminError> {
        let user = self.require_user(user_name)?;
        let schema = Schema::get();
        let grants = schema.table("sys_user_has_role").expect("sys_user_has_role");
        let role_id = seed::role_sys_id(role);
        let mut state = self.instance.state.lock();
        let ids: Vec<String> = state
            .db
            .rows(grants)
            .filter(|g| g.get("user") == user && (g.get("role") == role_id || g.get("included_in_role") == role_id))
            .map(|g| g.sys_id().to_string())
            .collect();
        for id in ids {
            state.db.remove(grants, &id);
        }
        Ok(())
    }

    /// Sets `active` (false: the user can no longer log in, its tokens stop working).
    pub fn set_user_active(&self, user_name: &str, active: bool) -> Result<(), AdminError> {
        self.set_user_field(user_name, "active", if active { "true" } else { "false" })
    }

    /// The user's current MFA code, what their authenticator app would show (the login's MFA
    /// step, `Behaviour::require_mfa`); good once, a new one after it was used.
    pub fn mfa_code(&self, user_name: &str) -> Result<String, AdminError> {
        let user = self.require_user(user_name)?;
        Ok(self.instance.state.lock().mfa.code(&user))
    }

    /// Changes a user's password.
    pub fn set_password(&self, user_name: &str, password: &str) -> Result<(), AdminError> {
        self.set_user_field(user_name, "user_password", password)
    }

    fn set_user_field(&self, user_name: &str, field: &str, value: &str) -> Result<(), AdminError> {
        let user = self.require_user(user_name)?;
        let users = Schema::get().table("sys_user").expect("sys_user");
        let now = self.clock.glide_now();
        let mut state = self.instance.state.lock();
        let current = state
            .db
            .get(users, &user)
            .cloned()
            .ok_or_else(|| AdminError::UnknownUser(user_name.into()))?;
        let prepared = state
            .db
            .prepare_update(&current, &string_map([(field, value)]), &system_caller().actor(), &now);
        state.db.commit(&prepared, &system_caller().actor(), &now);
        Ok(())
    }

    /// Sets a system property (created when absent), without business rules.
    pub fn set_property(&self, name: &str, value: &str) {
        let table = Schema::get().table("sys_properties").expect("sys_properties");
        let now = self.clock.glide_now();
        let actor = system_caller().actor();
        let mut state = self.instance.state.lock();
        let existing = state.db.rows(table).find(|r| r.get("name") == name).cloned();
        match existing {
            Some(current) => {
                let prepared = state
                    .db
                    .prepare_update(&current, &string_map([("value", value)]), &actor, &now);
                state.db.commit(&prepared, &actor, &now);
            }
            None => {
                seed::put(
                    &mut state.db,
                    "sys_properties",
                    &[("name", name), ("value", value)],
                    &now,
                );
            }
        }
    }

    /// A system property's value.
    pub fn property(&self, name: &str) -> Option<String> {
        self.instance.state.lock().property(name)
    }

    /// Registers an OAuth application.
    pub fn add_oauth_app(&self, spec: &OAuthAppSpec) -> OAuthApp {
        self.instance.state.lock().oauth.add_app(spec)
    }

    /// An OAuth application by name.
    pub fn oauth_app(&self, name: &str) -> Option<OAuthApp> {
        let state = self.instance.state.lock();
        state.oauth.apps().iter().find(|a| a.name == name).cloned()
    }

    /// Every OAuth application.
    pub fn oauth_apps(&self) -> Vec<OAuthApp> {
        self.instance.state.lock().oauth.apps().to_vec()
    }

    /// Changes an application: e.g. `|app| app.active = false`, or a new secret.
    pub fn edit_oauth_app(&self, name: &str, edit: impl FnOnce(&mut OAuthApp)) -> Result<(), AdminError> {
        let mut state = self.instance.state.lock();
        let app = state
            .oauth
            .app_mut(name)
            .ok_or_else(|| AdminError::UnknownApp(name.to_string()))?;
        edit(app);
        Ok(())
    }

    /// A refresh token for `user_name` from the application `app_name`, as a person's consent
    /// leaves one (the token store is the same; no request reaches the instance's pages or log):
    /// how a benchmark pre-consents thousands of connections in one go.
    pub fn mint_refresh_token(&self, app_name: &str, user_name: &str) -> Result<String, AdminError> {
        let user = self.require_user(user_name)?;
        let app = self
            .oauth_app(app_name)
            .ok_or_else(|| AdminError::UnknownApp(app_name.to_string()))?;
        let now_ms = self.clock.now_ms();
        Ok(self.instance.state.lock().oauth.mint_refresh_token(&app, &user, now_ms))
    }

    /// Every issued token.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        self.instance.state.lock().oauth.tokens()
    }

    /// Revokes every token of a user (of everybody with `None`); returns how many.
    pub fn revoke_tokens(&self, user_name: Option<&str>) -> Result<usize, AdminError> {
        let user = user_name.map(|u| self.require_user(u)).transpose()?;
        Ok(self.instance.state.lock().oauth.revoke_user(user.as_deref()))
    }

    /// Revokes one token; false when unknown.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.instance.state.lock().oauth.revoke(token)
    }

    /// Moves the server's clock (shared by all its instances) forward.
    pub fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The simulated time, `YYYY-MM-DD HH:MM:SS` UTC.
    pub fn now(&self) -> String {
        self.clock.glide_now()
    }

    /// Injects a fault.
    pub fn inject_fault(&self, fault: Fault) {
        self.instance.state.lock().faults.inject(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.instance.state.lock().faults.clear();
    }

    /// Adds a rate-limit rule; returns its sys_id.
    pub fn add_rate_limit(&self, rule: RateLimitRule) -> String {
        self.instance.state.lock().rate.add(rule)
    }

    /// Removes every rate-limit rule.
    pub fn clear_rate_limits(&self) {
        self.instance.state.lock().rate.clear();
    }

    /// Sets an access rule (replacing the one for the same table and operation).
    pub fn set_acl(&self, rule: AclRule) {
        self.instance.state.lock().acl.set(rule);
    }

    /// The current switches.
    pub fn behaviour(&self) -> Behaviour {
        self.instance.state.lock().behaviour.clone()
    }

    /// Binds the APIs under `resource_prefix` (e.g. `/api/now/ui/`) to `scope` (REST API Auth
    /// Scope); `None` removes the policy.
    pub fn bind_api_scope(&self, resource_prefix: &str, scope: Option<&str>) {
        let mut state = self.instance.state.lock();
        match scope {
            Some(scope) => state
                .api_auth_scopes
                .insert(resource_prefix.to_string(), scope.to_string()),
            None => state.api_auth_scopes.remove(resource_prefix),
        };
    }

    /// Replaces the switches.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.instance.state.lock().behaviour = behaviour;
    }

    /// Requests received, oldest first.
    pub fn request_log(&self) -> Vec<RequestLogEntry> {
        self.instance.state.lock().logs.requests.snapshot()
    }

    /// Forgets the request log.
    pub fn clear_request_log(&self) {
        self.instance.state.lock().logs.requests.clear();
    }

    /// The system log, oldest first.
    pub fn system_log(&self) -> Vec<SystemLogEntry> {
        self.instance.state.lock().logs.system.snapshot()
    }

    /// Forgets the system log.
    pub fn clear_system_log(&self) {
        self.instance.state.lock().logs.system.clear();
    }

    /// Outbound calls made by Business Rules, oldest first.
    pub fn outbound_log(&self) -> Vec<OutboundLogEntry> {
        self.instance.state.lock().logs.outbound.snapshot()
    }
}

/// The management routes under `/snowsim/`.
pub fn router() -> Router {
    Router::new()
        .route("/snowsim/ca.pem", get(ca_pem))
        .route("/snowsim/instances", get(instances))
        .route("/snowsim/requests", get(requests).delete(clear_requests))
        .route("/snowsim/syslog", get(syslog).delete(clear_syslog))
        .route("/snowsim/outbound", get(outbound))
        .route("/snowsim/records/{table}", get(records).post(insert_record))
        .route("/snowsim/oauth/apps", get(apps).post(add_app))
        .route("/snowsim/tokens", get(tokens))
        .route("/snowsim/tokens/revoke", post(revoke))
        .route("/snowsim/users", post(add_user))
        .route("/snowsim/mfa/{user}", get(mfa_code))
        .route("/snowsim/roles/grant", post(grant))
        .route("/snowsim/roles/remove", post(remove))
        .route("/snowsim/clock", get(clock))
        .route("/snowsim/clock/advance", post(advance))
        .route("/snowsim/faults", post(add_fault).delete(clear_faults))
        .route("/snowsim/rate-limits", post(add_rate_limit).delete(clear_rate_limits))
        .route("/snowsim/acl", post(set_acl))
        .route("/snowsim/behaviour", get(behaviour).put(set_behaviour))
        .route("/snowsim/properties/{name}", put(set_property))
}

type Ctx = (Extension<Arc<Shared>>, Extension<RequestHost>, RawQuery);

/// The instance a management call is about: `?instance=HOST`, else the `Host` header's, else the
/// default one.
fn admin_for((Extension(shared), Extension(host), RawQuery(query)): &Ctx) -> Result<Admin, Box<Response>> {
    let named = url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "instance")
        .map(|(_, v)| v.into_owned());
    let instance = match named {
        Some(name) => shared.instance(&name),
        None => shared.instance(&host.0).or_else(|| shared.default_instance()),
    };
    instance
        .map(|i| Admin::new(i, shared.clock.clone()))
        .ok_or_else(|| Box::new(problem(StatusCode::NOT_FOUND, "no such instance".into())))
}

fn problem(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(problem(StatusCode::BAD_REQUEST, e.to_string())))
}

macro_rules! admin {
    ($ctx:expr) => {
        match admin_for(&$ctx) {
            Ok(admin) => admin,
            Err(response) => return *response,
        }
    };
}

macro_rules! body {
    ($bytes:expr) => {
        match parse(&$bytes) {
            Ok(value) => value,
            Err(response) => return *response,
        }
    };
}

fn done<T: serde::Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(value) => Json(json!(value)).into_response(),
        Err(error) => problem(StatusCode::NOT_FOUND, error.to_string()),
    }
}

async fn ca_pem(Extension(shared): Extension<Arc<Shared>>) -> Response {
    shared.ca_pem.clone().into_response()
}

async fn instances(Extension(shared): Extension<Arc<Shared>>) -> Response {
    let hosts: Vec<Value> = shared
        .instances
        .read()
        .iter()
        .map(|i| json!({"host": i.host, "url": format!("https://{}", i.host)}))
        .collect();
    Json(hosts).into_response()
}

async fn requests(ctx: Ctx) -> Response {
    Json(admin!(ctx).request_log()).into_response()
}

async fn clear_requests(ctx: Ctx) -> Response {
    admin!(ctx).clear_request_log();
    StatusCode::NO_CONTENT.into_response()
}

async fn syslog(ctx: Ctx) -> Response {
    Json(admin!(ctx).system_log()).into_response()
}

async fn clear_syslog(ctx: Ctx) -> Response {
    admin!(ctx).clear_system_log();
    StatusCode::NO_CONTENT.into_response()
}

async fn outbound(ctx: Ctx) -> Response {
    Json(admin!(ctx).outbound_log()).into_response()
}

async fn records(ctx: Ctx, Path(table): Path<String>) -> Response {
    let admin = admin!(ctx);
    let query = url::form_urlencoded::parse(ctx.2.0.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "sysparm_query")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    Json(admin.records(&table, &query)).into_response()
}

async fn insert_record(ctx: Ctx, Path(table): Path<String>, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let fields: BTreeMap<String, String> = body!(bytes);
    match admin.insert(&table, fields).await {
        Ok(sys_id) => (StatusCode::CREATED, Json(json!({ "sys_id": sys_id }))).into_response(),
        Err(error) => problem(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

async fn apps(ctx: Ctx) -> Response {
    Json(admin!(ctx).oauth_apps()).into_response()
}

async fn add_app(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let spec: OAuthAppSpec = body!(bytes);
    (StatusCode::CREATED, Json(admin.add_oauth_app(&spec))).into_response()
}

async fn tokens(ctx: Ctx) -> Response {
    Json(admin!(ctx).tokens()).into_response()
}

#[derive(Deserialize)]
struct RevokeRequest {
    user: Option<String>,
    token: Option<String>,
}

async fn revoke(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let request: RevokeRequest = body!(bytes);
    match request.token {
        Some(token) => Json(json!({ "revoked": usize::from(admin.revoke_token(&token)) })).into_response(),
        None => done(
            admin
                .revoke_tokens(request.user.as_deref())
                .map(|n| json!({ "revoked": n })),
        ),
    }
}

async fn add_user(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let spec: UserSpec = body!(bytes);
    done(admin.add_user(&spec).map(|sys_id| json!({ "sys_id": sys_id })))
}

async fn mfa_code(ctx: Ctx, Path(user): Path<String>) -> Response {
    done(admin!(ctx).mfa_code(&user).map(|code| json!({ "code": code })))
}

#[derive(Deserialize)]
struct RoleRequest {
    user: String,
    role: String,
}

async fn grant(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let request: RoleRequest = body!(bytes);
    done(admin.grant_role(&request.user, &request.role))
}

async fn remove(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let request: RoleRequest = body!(bytes);
    done(admin.remove_role(&request.user, &request.role))
}

async fn clock(ctx: Ctx) -> Response {
    Json(json!({ "now": admin!(ctx).now() })).into_response()
}

#[derive(Deserialize)]
struct AdvanceRequest {
    seconds: u64,
}

async fn advance(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let request: AdvanceRequest = body!(bytes);
    admin.advance_clock(Duration::from_secs(request.seconds));
    Json(json!({ "now": admin.now() })).into_response()
}

async fn add_fault(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let fault: Fault = body!(bytes);
    admin.inject_fault(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(ctx: Ctx) -> Response {
    admin!(ctx).clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

async fn add_rate_limit(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let rule: RateLimitRule = body!(bytes);
    Json(json!({ "sys_id": admin.add_rate_limit(rule) })).into_response()
}

async fn clear_rate_limits(ctx: Ctx) -> Response {
    admin!(ctx).clear_rate_limits();
    StatusCode::NO_CONTENT.into_response()
}

async fn set_acl(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let rule: AclRule = body!(bytes);
    admin.set_acl(rule);
    StatusCode::NO_CONTENT.into_response()
}

async fn behaviour(ctx: Ctx) -> Response {
    Json(admin!(ctx).behaviour()).into_response()
}

async fn set_behaviour(ctx: Ctx, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let behaviour: Behaviour = body!(bytes);
    admin.set_behaviour(behaviour);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct PropertyRequest {
    value: String,
}

async fn set_property(ctx: Ctx, Path(name): Path<String>, bytes: Bytes) -> Response {
    let admin = admin!(ctx);
    let request: PropertyRequest = body!(bytes);
    admin.set_property(&name, &request.value);
    StatusCode::NO_CONTENT.into_response()
}
