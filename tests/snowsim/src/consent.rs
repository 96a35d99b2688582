//! The browser side of OAuth (servicenow-api.md §1.2): `GET /oauth_auth.do` validates the
//! authorization request, shows the login form to a visitor without a session and the consent
//! page (Allow / Deny) to a logged-in one; the consent form posts back to `/oauth_auth.do`, which
//! redirects to `redirect_uri?code=…&state=…`. Plain HTML forms with stable ids and names, so a
//! browser and a plain HTTP client with a cookie jar drive it alike:
//!
//! - login form `#login_form` (POST `/login.do`): `#user_name`, `#user_password`, hidden
//!   `sysparm_goto`, submit `#sysverb_login`;
//! - consent form `#consent_form` (POST `/oauth_auth.do`): the request's parameters as hidden
//!   fields, hidden `sysparm_ck`, submit buttons `#allow` (`action=allow`) and `#deny`
//!   (`action=deny`); a "Not You?" link `#not_you` to `/logout.do`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};

use crate::instance::{Instance, State};
use crate::oauth::{AuthorizationCode, OAuthApp, random_text};

/// The session cookie.
const SESSION_COOKIE: &str = "JSESSIONID";
/// Idle lifetime of a browser session, seconds (`glide_session_store` Max-Age).
const SESSION_SECONDS: i64 = 1800;

/// A logged-in browser.
#[derive(Clone, Debug)]
struct Session {
    user_sys_id: String,
    /// Anti-forgery token the consent form carries.
    ck: String,
    expires_ms: i64,
}

/// Browser sessions of one instance.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<String, Session>,
}

impl Sessions {
    fn create(&mut self, user_sys_id: &str, now_ms: i64) -> String {
        let session = Session {
            user_sys_id: user_sys_id.to_string(),
            ck: random_text(40),
            expires_ms: now_ms + SESSION_SECONDS * 1000,
        };
        insert_fresh(&mut self.by_id, session, |s| s.expires_ms > now_ms)
    }

    fn get(&mut self, id: &str, now_ms: i64) -> Option<Session> {
        let session = self.by_id.get_mut(id).filter(|s| s.expires_ms > now_ms)?;
        session.expires_ms = now_ms + SESSION_SECONDS * 1000;
        Some(session.clone())
    }
}

/// Keeps the entries of `map` that are still `live`, adds `value` under a new random id (32
/// characters) and returns the id.
pub(crate) fn insert_fresh<T>(map: &mut HashMap<String, T>, value: T, live: impl Fn(&T) -> bool) -> String {
    map.retain(|_, entry| live(entry));
    let id = random_text(32);
    map.insert(id.clone(), value);
    id
}

/// A validated authorization request.
struct AuthRequest {
    app: OAuthApp,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    challenge: Option<(String, String)>,
    params: Vec<(String, String)>,
}

/// Why an authorization request is refused; shown as a page, never redirected.
struct AuthPageError(&'static str);

fn validate(state: &State, params: &[(String, String)]) -> Result<AuthRequest, AuthPageError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    if !state.property_is_true("com.snc.platform.security.oauth.is.active") {
        return Err(AuthPageError("OAuth is not active on this instance."));
    }
    let app = state
        .oauth
        .app(get("client_id"))
        .filter(|a| a.active)
        .cloned()
        .ok_or(AuthPageError("Invalid client_id or the OAuth application is inactive."))?;
    if get("response_type") != "code" {
        return Err(AuthPageError("Unsupported response_type: only code is supported."));
    }
    let state_param = get("state");
    if state_param.is_empty() && state.property_is_true("glide.oauth.state.parameter.required") {
        return Err(AuthPageError("Missing State parameter in request."));
    }
    if get("scope").is_empty() && state.behaviour.require_scope {
        return Err(AuthPageError("Missing scope parameter in request."));
    }
    let requested = get("redirect_uri");
    let redirect_uri = if app.redirect_urls.iter().any(|u| u == requested) {
        requested.to_string()
    } else if requested.is_empty() || !state.behaviour.reject_unregistered_redirect {
        app.redirect_urls
            .first()
            .cloned()
            .ok_or(AuthPageError("The OAuth application has no redirect URL."))?
    } else {
        return Err(AuthPageError("Invalid redirect_uri."));
    };
    let challenge = match (get("code_challenge"), get("code_challenge_method")) {
        ("", _) => None,
        (challenge, "S256") => Some((challenge.to_string(), "S256".to_string())),
        (challenge, "plain" | "") if state.behaviour.allow_plain_pkce => {
            Some((challenge.to_string(), "plain".to_string()))
        }
        _ => return Err(AuthPageError("Unsupported code_challenge_method.")),
    };
    if app.public_client && challenge.is_none() {
        return Err(AuthPageError("A code_challenge is required for this client."));
    }
    Ok(AuthRequest {
        app,
        redirect_uri,
        redirect_uri_given: !requested.is_empty(),
        state: (!state_param.is_empty()).then(|| state_param.to_string()),
        challenge,
        params: params
            .iter()
            .filter(|(k, _)| k != "sysparm_ck" && k != "action")
            .cloned()
            .collect(),
    })
}

/// `GET /oauth_auth.do`.
pub async fn authorize(Extension(instance): Extension<Arc<Instance>>, headers: HeaderMap, uri: Uri) -> Response {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let now_ms = instance.clock.now_ms();
    let mut state = instance.state.lock();
    let request = match validate(&state, &params) {
        Ok(request) => request,
        Err(AuthPageError(message)) => return error_page(message),
    };
    let goto = match uri.query() {
        Some(q) => format!("/oauth_auth.do?{q}"),
        None => "/oauth_auth.do".to_string(),
    };
    let session = ui_session(&mut state, &headers, now_ms);
    match session {
        None => login_page(&goto, None),
        Some(session) => {
            let user = state
                .user(&session.user_sys_id)
                .map(|u| u.get("name").to_string())
                .unwrap_or_default();
            consent_page(&request, &user, &session.ck, &goto)
        }
    }
}

/// `POST /oauth_auth.do`: the consent form's Allow or Deny.
pub async fn decide(Extension(instance): Extension<Arc<Instance>>, headers: HeaderMap, body: Bytes) -> Response {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let now_ms = instance.clock.now_ms();
    let mut state = instance.state.lock();
    let request = match validate(&state, &params) {
        Ok(request) => request,
        Err(AuthPageError(message)) => return error_page(message),
    };
    let session = ui_session(&mut state, &headers, now_ms);
    let Some(session) = session.filter(|s| s.ck == get("sysparm_ck")) else {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&request.params)
            .finish();
        return login_page(&format!("/oauth_auth.do?{query}"), None);
    };
    let mut target = url::Url::parse(&request.redirect_uri).ok();
    let Some(url) = target.as_mut() else {
        return error_page("The redirect URL is not a valid URL.");
    };
    if get("action") == "allow" {
        let ttl = state.behaviour.authorization_code_ttl_secs as i64;
        let code = state.oauth.add_code(AuthorizationCode {
            client_id: request.app.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            redirect_uri_given: request.redirect_uri_given,
            user_sys_id: session.user_sys_id.clone(),
            challenge: request.challenge.clone(),
            expires_ms: now_ms + ttl * 1000,
        });
        url.query_pairs_mut().append_pair("code", &code);
    } else {
        if state.behaviour.deny_shows_page {
            return error_page("Access was denied.");
        }
        url.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("error_description", "The user denied the request");
    }
    if let Some(s) = &request.state {
        url.query_pairs_mut().append_pair("state", s);
    }
    redirect(url.as_str(), None)
}

/// `GET /login.do`: the login form.
pub async fn login_form(uri: Uri) -> Response {
    let goto = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "sysparm_goto")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| "/".to_string());
    login_page(&goto, None)
}

/// `POST /login.do`: checks the password, then (with `require_mfa`) asks for the MFA code, starts
/// a session and returns to `sysparm_goto`. A "Web service access only" user cannot log in to the
/// UI (servicenow-api.md §7 "Who can consent", `c_NonInteractiveSessions.md`): the form answers as
/// for a wrong password — the wording is the simulator's choice, the one a real login form shows
/// for every refused login.
pub async fn login(Extension(instance): Extension<Arc<Instance>>, body: Bytes) -> Response {
    let params: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |name: &str| params.get(name).cloned().unwrap_or_default();
    let goto = local_goto(&get("sysparm_goto"));
    let now_ms = instance.clock.now_ms();
    let mut state = instance.state.lock();
    let user = crate::auth::check_password(&state, &get("user_name"), &get("user_password"))
        .filter(|user| may_use_ui(&state, user));
    let Some(user) = user else {
        return login_page(&goto, Some("User name or password invalid"));
    };
    match crate::mfa::challenge(&mut state, &user, &goto, now_ms) {
        Some(page) => page,
        None => start_session(&mut state, &user, &goto, now_ms),
    }
}

/// True when the user may use the UI: active, not locked out, not "Web service access only".
fn may_use_ui(state: &State, user_sys_id: &str) -> bool {
    crate::auth::caller(state, user_sys_id).is_some()
        && state
            .user(user_sys_id)
            .is_some_and(|u| u.get("web_service_access_only") != "true")
}

/// The browser's session, while its user may still use the UI (a user made inactive or "Web
/// service access only" since logging in is sent back to the login form).
fn ui_session(state: &mut State, headers: &HeaderMap, now_ms: i64) -> Option<Session> {
    let session = cookie(headers, SESSION_COOKIE).and_then(|id| state.sessions.get(&id, now_ms))?;
    may_use_ui(state, &session.user_sys_id).then_some(session)
}

/// `goto` when it is a path on this instance, else `/`.
pub(crate) fn local_goto(goto: &str) -> String {
    Some(goto)
        .filter(|g| g.starts_with('/') && !g.starts_with("//"))
        .unwrap_or("/")
        .to_string()
}

/// Starts a browser session for `user` and sends it on to `goto` with its cookie.
pub(crate) fn start_session(state: &mut State, user: &str, goto: &str, now_ms: i64) -> Response {
    let id = state.sessions.create(user, now_ms);
    let cookie = format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={SESSION_SECONDS}; Secure; HttpOnly; SameSite=None");
    redirect(goto, Some(cookie))
}

/// `GET /logout.do`: ends the session ("Not You?").
pub async fn logout(uri: Uri) -> Response {
    let goto = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "sysparm_goto")
        .map(|(_, v)| v.into_owned())
        .filter(|g| g.starts_with('/') && !g.starts_with("//"))
        .unwrap_or_else(|| "/login.do".to_string());
    let cookie = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=None");
    redirect(&goto, Some(cookie))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn redirect(location: &str, set_cookie: Option<String>) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Some(value) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// HTML's escapes, `&` first: escaping goes down the list, unescaping (`drive`) up it.
pub(crate) const HTML_ESCAPES: [(&str, &str); 5] = [
    ("&", "&amp;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ("\"", "&quot;"),
    ("'", "&#39;"),
];

pub(crate) fn escape(text: &str) -> String {
    HTML_ESCAPES
        .iter()
        .fold(text.to_owned(), |text, (plain, escaped)| text.replace(plain, escaped))
}

pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

fn error_page(message: &str) -> Response {
    let body = format!("<h1>OAuth error</h1>\n<p id=\"error_message\">{}</p>", escape(message));
    (StatusCode::BAD_REQUEST, Html(page("OAuth error", &body))).into_response()
}

pub(crate) fn login_page(goto: &str, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p id=\"login_error\">{}</p>\n", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Log in</h1>\n{error}<form id=\"login_form\" method=\"POST\" action=\"/login.do\">\n\
         <label for=\"user_name\">User name</label> <input id=\"user_name\" name=\"user_name\" type=\"text\" autocomplete=\"username\">\n\
         <label for=\"user_password\">Password</label> <input id=\"user_password\" name=\"user_password\" type=\"password\" autocomplete=\"current-password\">\n\
         <input type=\"hidden\" name=\"sysparm_goto\" value=\"{}\">\n\
         <button id=\"sysverb_login\" name=\"sysverb_login\" type=\"submit\">Log in</button>\n</form>",
        escape(goto)
    );
    Html(page("Log in | ServiceNow", &body)).into_response()
}

fn consent_page(request: &AuthRequest, user: &str, ck: &str, goto: &str) -> Response {
    let hidden: String = request
        .params
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                escape(k),
                escape(v)
            )
        })
        .collect();
    let logout = format!(
        "/logout.do?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("sysparm_goto", goto)
            .finish()
    );
    let body = format!(
        "<h1>Grant access</h1>\n<p id=\"consent_text\"><strong id=\"app_name\">{}</strong> would like to connect to your account.</p>\n\
         <p>Signed in as <span id=\"user_display_name\">{}</span>. <a id=\"not_you\" href=\"{}\">Not You?</a></p>\n\
         <form id=\"consent_form\" method=\"POST\" action=\"/oauth_auth.do\">\n{hidden}\
         <input type=\"hidden\" name=\"sysparm_ck\" value=\"{}\">\n\
         <button id=\"allow\" name=\"action\" value=\"allow\" type=\"submit\">Allow</button>\n\
         <button id=\"deny\" name=\"action\" value=\"deny\" type=\"submit\">Deny</button>\n</form>",
        escape(&request.app.name),
        escape(user),
        escape(&logout),
        escape(ck)
    );
    Html(page("Grant access | ServiceNow", &body)).into_response()
}
