//! Who is calling: HTTP Basic (user name and password of a `sys_user`), OAuth Bearer tokens and
//! the `access_token` query parameter (servicenow-api.md §1.4, §6 item 5). Every failure is the
//! same 401 to the client.

use std::collections::HashSet;

use axum::http::{HeaderMap, header};
use base64::Engine;

use crate::instance::State;
use crate::store::{Actor, Record};

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The user's sys_id.
    pub sys_id: String,
    /// Login name.
    pub user_name: String,
    /// Names of the user's roles.
    pub roles: HashSet<String>,
}

impl Caller {
    /// The caller as the writer of records.
    pub fn actor(&self) -> Actor {
        Actor {
            sys_id: self.sys_id.clone(),
            user_name: self.user_name.clone(),
        }
    }
}

/// Authenticates a REST request, or `None` (answered with 401).
pub fn authenticate(state: &State, headers: &HeaderMap, query: Option<&str>, now_ms: i64) -> Option<Caller> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, credentials) = value.split_once(' ')?;
        let credentials = credentials.trim();
        return if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, password) = decoded.split_once(':')?;
            let sys_id = check_password(state, user, password)?;
            caller(state, &sys_id)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let sys_id = state.oauth.access_token_user(credentials, now_ms)?;
            caller(state, &sys_id)
        } else {
            None
        };
    }
    let token = url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())?;
    let sys_id = state.oauth.access_token_user(&token, now_ms)?;
    caller(state, &sys_id)
}

/// The access token a request carries (Bearer header or `access_token` query parameter).
pub fn access_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, credentials) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim().to_string());
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// `true` when the request carries an OAuth token whose entity lacks the auth scope a REST API
/// Auth Scope policy binds `resource` to (and `useraccount`): the instance then answers 403
/// "Missing required api access scope" (servicenow-api.md §7, `rest-api-auth-scope.md`). Basic
/// authentication is not scoped.
pub fn missing_scope(state: &State, headers: &HeaderMap, query: Option<&str>, resource: &str, now_ms: i64) -> bool {
    let Some(required) = state
        .api_auth_scopes
        .iter()
        .find(|(prefix, _)| resource.starts_with(prefix.as_str()))
        .map(|(_, scope)| scope)
    else {
        return false;
    };
    access_token(headers, query)
        .and_then(|token| state.oauth.access_token_app(&token, now_ms).cloned())
        .is_some_and(|app| {
            !app.auth_scopes
                .iter()
                .any(|scope| scope == crate::config::USERACCOUNT_SCOPE || scope == required)
        })
}

/// The sys_id of an active, unlocked user whose password matches.
pub fn check_password(state: &State, user_name: &str, password: &str) -> Option<String> {
    let user = state.user_by_name(user_name)?;
    let matches = !password.is_empty() && user.get("user_password") == password;
    (matches && usable(user)).then(|| user.sys_id().to_string())
}

/// The caller for a user sys_id, when the user exists and may log in.
pub fn caller(state: &State, user_sys_id: &str) -> Option<Caller> {
    let user = state.user(user_sys_id).filter(|u| usable(u))?;
    Some(Caller {
        sys_id: user.sys_id().to_string(),
        user_name: user.get("user_name").to_string(),
        roles: state.db.role_names(user_sys_id).into_iter().collect(),
    })
}

fn usable(user: &Record) -> bool {
    user.get("active") == "true" && user.get("locked_out") != "true"
}
