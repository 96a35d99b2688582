//! The instance as an OAuth 2.0 authorization server (servicenow-api.md §1): the application
//! registry, authorization codes, issued tokens, the token endpoint `POST /oauth_token.do` and
//! revocation `oauth_revoke_token.do`. The browser side (`oauth_auth.do`) is in `consent`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Behaviour, OAuthAppSpec};
use crate::envelope::JSON_UTF8;
use crate::instance::{Instance, State};
use crate::logs::Level;

/// The scope every token carries: the user's own rights.
pub const SCOPE: &str = "useraccount";

/// An application registry record (`oauth_entity`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OAuthApp {
    /// Record sys_id.
    pub sys_id: String,
    /// Name.
    pub name: String,
    /// Client ID (32 hex).
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Registered redirect URLs; the first is the fallback.
    pub redirect_urls: Vec<String>,
    /// Active flag.
    pub active: bool,
    /// Access token lifespan, seconds.
    pub access_token_lifespan: u64,
    /// Refresh token lifespan, seconds.
    pub refresh_token_lifespan: u64,
    /// Public (PKCE) client.
    pub public_client: bool,
    /// User the client-credentials grant acts as.
    pub client_credentials_user: Option<String>,
    /// The entity's Auth Scopes; read when a token is used, not when it is issued (§7).
    pub auth_scopes: Vec<String>,
}

/// A code issued by the consent page.
#[derive(Clone, Debug)]
pub struct AuthorizationCode {
    /// Client it was issued to.
    pub client_id: String,
    /// The redirect URL it was delivered to.
    pub redirect_uri: String,
    /// Whether the authorization request named `redirect_uri` itself.
    pub redirect_uri_given: bool,
    /// The consenting user.
    pub user_sys_id: String,
    /// PKCE challenge and method.
    pub challenge: Option<(String, String)>,
    /// Expiry, simulated epoch milliseconds.
    pub expires_ms: i64,
}

/// Access or refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Access token.
    Access,
    /// Refresh token.
    Refresh,
}

/// An issued token (an `oauth_credential` row).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The token string.
    pub token: String,
    /// Access or refresh.
    pub kind: TokenKind,
    /// Client it was issued to.
    pub client_id: String,
    /// The user it acts as.
    pub user_sys_id: String,
    /// Expiry, simulated epoch milliseconds.
    pub expires_ms: i64,
    /// Revoked (marked expired).
    pub revoked: bool,
    /// For access tokens: the refresh token issued with them.
    pub refresh_token: Option<String>,
}

/// OAuth state of one instance.
#[derive(Debug, Default)]
pub struct OAuthState {
    apps: Vec<OAuthApp>,
    codes: HashMap<String, AuthorizationCode>,
    tokens: HashMap<String, TokenInfo>,
}

impl OAuthState {
    /// Registers an application, generating what the spec leaves blank.
    pub fn add_app(&mut self, spec: &OAuthAppSpec) -> OAuthApp {
        let app = OAuthApp {
            sys_id: crate::store::new_sys_id(),
            name: spec.name.clone(),
            client_id: spec.client_id.clone().unwrap_or_else(crate::store::new_sys_id),
            client_secret: spec.client_secret.clone().unwrap_or_else(|| random_text(20)),
            redirect_urls: spec.redirect_urls.clone(),
            active: spec.active,
            access_token_lifespan: spec.access_token_lifespan,
            refresh_token_lifespan: spec.refresh_token_lifespan,
            public_client: spec.public_client,
            client_credentials_user: spec.client_credentials_user.clone(),
            auth_scopes: spec.auth_scopes.clone(),
        };
        self.apps.retain(|a| a.client_id != app.client_id);
        self.apps.push(app.clone());
        app
    }

    /// Every registered application.
    pub fn apps(&self) -> &[OAuthApp] {
        &self.apps
    }

    /// Mutable access to an application by name.
    pub fn app_mut(&mut self, name: &str) -> Option<&mut OAuthApp> {
        self.apps.iter_mut().find(|a| a.name == name)
    }

    /// An application by client ID.
    pub fn app(&self, client_id: &str) -> Option<&OAuthApp> {
        self.apps.iter().find(|a| a.client_id == client_id)
    }

    /// Stores a new authorization code and returns it.
    pub fn add_code(&mut self, code: AuthorizationCode) -> String {
        let text = random_text(86);
        self.codes.insert(text.clone(), code);
        text
    }

    /// The user a valid access token acts as.
    pub fn access_token_user(&self, token: &str, now_ms: i64) -> Option<String> {
        self.access_token(token, now_ms).map(|t| t.user_sys_id.clone())
    }

    /// The application of a usable access token.
    pub fn access_token_app(&self, token: &str, now_ms: i64) -> Option<&OAuthApp> {
        self.access_token(token, now_ms).and_then(|t| self.app(&t.client_id))
    }

    fn access_token(&self, token: &str, now_ms: i64) -> Option<&TokenInfo> {
        self.tokens
            .get(token)
            .filter(|t| t.kind == TokenKind::Access && !t.revoked && t.expires_ms > now_ms)
            .filter(|t| self.app(&t.client_id).is_some_and(|a| a.active))
    }

    /// Every issued token.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        self.tokens.values().cloned().collect()
    }

    /// Revokes one token (a refresh token takes its access tokens with it); false if unknown.
    pub fn revoke(&mut self, token: &str) -> bool {
        let Some(info) = self.tokens.get_mut(token) else {
            return false;
        };
        info.revoked = true;
        if info.kind == TokenKind::Refresh {
            for t in self.tokens.values_mut() {
                if t.refresh_token.as_deref() == Some(token) {
                    t.revoked = true;
                }
            }
        }
        true
    }

    /// Revokes every token of a user (all users when `None`); returns how many.
    pub fn revoke_user(&mut self, user_sys_id: Option<&str>) -> usize {
        let mut count = 0;
        for t in self.tokens.values_mut() {
            if !t.revoked && user_sys_id.is_none_or(|u| u == t.user_sys_id) {
                t.revoked = true;
                count += 1;
            }
        }
        count
    }

    /// Issues a refresh token (and its access token) to `user_sys_id` for `app` as a consent
    /// would, without the consent pages; returns the refresh token.
    pub fn mint_refresh_token(&mut self, app: &OAuthApp, user_sys_id: &str, now_ms: i64) -> String {
        let issued = self.issue(app, user_sys_id, true, false, now_ms);
        issued.refresh_token.unwrap_or_default()
    }

    fn issue(&mut self, app: &OAuthApp, user_sys_id: &str, with_refresh: bool, reuse: bool, now_ms: i64) -> Issued {
        let access_expiry = now_ms + app.access_token_lifespan as i64 * 1000;
        let refresh_expiry = now_ms + app.refresh_token_lifespan as i64 * 1000;
        if reuse {
            let existing = self.tokens.values().find(|t| {
                t.kind == TokenKind::Access
                    && t.client_id == app.client_id
                    && t.user_sys_id == user_sys_id
                    && !t.revoked
                    && t.expires_ms > now_ms
            });
            if let Some(existing) = existing.cloned() {
                let refresh = existing
                    .refresh_token
                    .clone()
                    .filter(|r| self.valid(r, TokenKind::Refresh, &app.client_id, now_ms));
                if let Some(t) = self.tokens.get_mut(&existing.token) {
                    t.expires_ms = access_expiry;
                }
                if let Some(t) = refresh.as_ref().and_then(|r| self.tokens.get_mut(r)) {
                    t.expires_ms = refresh_expiry;
                }
                return Issued {
                    access_token: existing.token,
                    refresh_token: refresh.filter(|_| with_refresh),
                    expires_ms: access_expiry,
                };
            }
        }
        let refresh_token = with_refresh.then(|| {
            let token = random_text(80);
            self.tokens.insert(
                token.clone(),
                TokenInfo {
                    token: token.clone(),
                    kind: TokenKind::Refresh,
                    client_id: app.client_id.clone(),
                    user_sys_id: user_sys_id.to_string(),
                    expires_ms: refresh_expiry,
                    revoked: false,
                    refresh_token: None,
                },
            );
            token
        });
        let access_token = self.add_access(app, user_sys_id, refresh_token.clone(), access_expiry);
        Issued {
            access_token,
            refresh_token,
            expires_ms: access_expiry,
        }
    }

    fn add_access(
        &mut self,
        app: &OAuthApp,
        user_sys_id: &str,
        refresh_token: Option<String>,
        expires_ms: i64,
    ) -> String {
        let token = random_text(80);
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                token: token.clone(),
                kind: TokenKind::Access,
                client_id: app.client_id.clone(),
                user_sys_id: user_sys_id.to_string(),
                expires_ms,
                revoked: false,
                refresh_token,
            },
        );
        token
    }

    fn valid(&self, token: &str, kind: TokenKind, client_id: &str, now_ms: i64) -> bool {
        self.tokens
            .get(token)
            .is_some_and(|t| t.kind == kind && t.client_id == client_id && !t.revoked && t.expires_ms > now_ms)
    }
}

struct Issued {
    access_token: String,
    refresh_token: Option<String>,
    expires_ms: i64,
}

/// Why a token request failed: the RFC 6749 code (answered only in RFC mode) and the cause
/// (written to the system log, as the instance does).
struct TokenFailure {
    code: &'static str,
    cause: String,
}

fn fail<T>(code: &'static str, cause: impl Into<String>) -> Result<T, TokenFailure> {
    Err(TokenFailure {
        code,
        cause: cause.into(),
    })
}

/// `POST /oauth_token.do`.
pub async fn token_endpoint(
    Extension(instance): Extension<Arc<Instance>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let now_ms = instance.clock.now_ms();
    let mut state = instance.state.lock();
    let behaviour = state.behaviour.clone();
    match exchange(&mut state, &behaviour, &headers, uri.query(), &body, now_ms) {
        Ok(issued) => {
            let mut body = format!("{{\"access_token\":{}", serde_json::Value::from(issued.access_token));
            if let Some(refresh) = issued.refresh_token {
                body.push_str(&format!(",\"refresh_token\":{}", serde_json::Value::from(refresh)));
            }
            let expires_in = ((issued.expires_ms - now_ms - 1) / 1000).max(0);
            body.push_str(&format!(
                ",\"scope\":\"{SCOPE}\",\"token_type\":\"Bearer\",\"expires_in\":{expires_in}}}"
            ));
            json_text(StatusCode::OK, body)
        }
        Err(failure) => {
            let time = instance.clock.glide_now();
            state.syslog(
                Level::Error,
                "OAuth",
                &format!("Exception on token flow - {}: {}", failure.code, failure.cause),
                &time,
            );
            if behaviour.rfc_token_errors {
                let status = if failure.code == "invalid_client" {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                };
                let body = serde_json::json!({"error": failure.code, "error_description": failure.cause});
                json_text(status, body.to_string())
            } else {
                json_text(
                    StatusCode::UNAUTHORIZED,
                    "{\"error_description\":\"access_denied\",\"error\":\"server_error\"}".into(),
                )
            }
        }
    }
}

fn json_text(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    response
}

fn exchange(
    state: &mut State,
    behaviour: &Behaviour,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Result<Issued, TokenFailure> {
    if !state.property_is_true("com.snc.platform.security.oauth.is.active") {
        return fail("invalid_request", "OAuth is not active on this instance");
    }
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form_encoded {
        return fail(
            "invalid_request",
            "request body is not application/x-www-form-urlencoded",
        );
    }
    let mut params: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    if !state.property_is_true("glide.oauth.allow.parameters.in.post.body.only") {
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned() {
            params.entry(k).or_insert(v);
        }
    }
    if behaviour.accept_basic_client_auth
        && !params.contains_key("client_id")
        && let Some((id, secret)) = basic_credentials(headers)
    {
        params.insert("client_id".into(), id);
        params.insert("client_secret".into(), secret);
    }
    let param = |name: &str| params.get(name).map(String::as_str).unwrap_or("");
    let Some(app) = state.oauth.app(param("client_id")).cloned() else {
        return fail("invalid_client", "unknown client_id");
    };
    if !app.active {
        return fail("invalid_client", "client is not active");
    }
    let secret_ok = param("client_secret") == app.client_secret;
    if !app.public_client && !secret_ok {
        return fail("invalid_client", "client authentication failed");
    }
    let reuse = behaviour.reuse_valid_access_token;
    match param("grant_type") {
        "authorization_code" => {
            let Some(code) = state.oauth.codes.remove(param("code")) else {
                return fail("invalid_grant", "unknown or already used authorization code");
            };
            if code.expires_ms <= now_ms {
                return fail("invalid_grant", "authorization code expired");
            }
            if code.client_id != app.client_id {
                return fail("invalid_grant", "authorization code issued to another client");
            }
            let redirect = param("redirect_uri");
            let redirect_ok = redirect == code.redirect_uri || (redirect.is_empty() && !code.redirect_uri_given);
            if !redirect_ok {
                return fail("invalid_grant", "redirect_uri does not match the authorization request");
            }
            match &code.challenge {
                Some((challenge, method)) => {
                    let verifier = param("code_verifier");
                    let computed = if method == "S256" {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                    } else {
                        verifier.to_string()
                    };
                    if verifier.is_empty() || &computed != challenge {
                        return fail("invalid_grant", "PKCE verification failed");
                    }
                }
                None if app.public_client => {
                    return fail("invalid_request", "public clients must use PKCE");
                }
                None => {}
            }
            Ok(state.oauth.issue(&app, &code.user_sys_id, true, reuse, now_ms))
        }
        "refresh_token" => {
            let refresh = param("refresh_token").to_string();
            if !state.oauth.valid(&refresh, TokenKind::Refresh, &app.client_id, now_ms) {
                return fail("invalid_grant", "refresh token unknown, expired or revoked");
            }
            let user = state.oauth.tokens[&refresh].user_sys_id.clone();
            if crate::auth::caller(state, &user).is_none() {
                return fail("invalid_grant", "the token's user is inactive or locked out");
            }
            let expires_ms = now_ms + app.access_token_lifespan as i64 * 1000;
            let access_token = state.oauth.add_access(&app, &user, Some(refresh.clone()), expires_ms);
            Ok(Issued {
                access_token,
                refresh_token: (!behaviour.omit_refresh_token_on_refresh).then_some(refresh),
                expires_ms,
            })
        }
        "password" => {
            let Some(user) = crate::auth::check_password(state, param("username"), param("password")) else {
                return fail("invalid_grant", "user name or password invalid");
            };
            Ok(state.oauth.issue(&app, &user, true, reuse, now_ms))
        }
        "client_credentials" => {
            if !state.property_is_true("glide.oauth.inbound.client.credential.grant_type.enabled") {
                return fail("unauthorized_client", "client_credentials grant is not enabled");
            }
            let user = app
                .client_credentials_user
                .as_deref()
                .and_then(|name| state.user_by_name(name))
                .map(|u| u.sys_id().to_string());
            let (Some(user), false) = (user, app.public_client) else {
                return fail(
                    "unauthorized_client",
                    "no OAuth application user for client_credentials",
                );
            };
            Ok(state.oauth.issue(&app, &user, false, reuse, now_ms))
        }
        other => fail(
            "unsupported_grant_type",
            format!("grant_type '{other}' is not supported"),
        ),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(s.as_bytes())
            .map(|(k, _)| k.into_owned())
            .next()
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// `GET|POST /oauth_revoke_token.do?token=...`: no authentication; the token is marked expired.
/// Answers 200 with an empty body whether or not the token was known.
pub async fn revoke_endpoint(Extension(instance): Extension<Arc<Instance>>, uri: Uri, body: Bytes) -> Response {
    let from_query = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes());
    let from_body = url::form_urlencoded::parse(&body);
    let token = from_query
        .chain(from_body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    if let Some(token) = token {
        instance.state.lock().oauth.revoke(&token);
    }
    StatusCode::OK.into_response()
}

/// Random text of `len` characters from `[A-Za-z0-9_-]`, like the instance's opaque tokens.
pub fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
