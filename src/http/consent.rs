//! The consent endpoints. Only who can read a connection's status can start a consent:
//!
//! * `GET /oauth/servicenow/start?ticket=<ticket>` accepts only the ticket the controller put in
//!   `status.consentUrl` while the connection needs consent (`crate::ticket`): checked first
//!   without any read (MAC, expiry), then against `status.consentTicket` (one read), then recorded
//!   as used in the annotation `neoagent.io/consent-session` (the only write, guarded by the
//!   resourceVersion so two replicas cannot both accept one ticket). Anything else gets one
//!   generic page that says nothing about which connections exist. It then sends the browser to
//!   the instance's `/oauth_auth.do` (state + PKCE S256) with a cookie that binds the flow to it.
//! * `GET /oauth/servicenow/callback` checks the state (signed, expiring), the browser's cookie,
//!   and that the state is the session's and unused (recorded as used), exchanges the code,
//!   resolves who signed in with the new access token and refuses — revoking it — a token of
//!   anyone but `spec.expectedUserName`; then stores the refresh token in the connection's token
//!   Secret (which wakes the reconcile), revokes the one it replaces, and shows a plain page.
//!
//! Pages never show a Kubernetes error, a token, a ticket or a code.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::Deserialize;

use super::{
    consent_state::{self, Verified},
    pages::page,
};
use crate::{
    api::{CONSENT_NONCES, CONSENT_RESULT, CONSENT_SESSION, ConsentSession, ServiceNowConnection, paths, split_key},
    secrets::{self, StoredToken},
    servicenow::{ClientCredentials, ErrorKind, InstanceUrl, SecretString, ServiceNow, oauth},
    ticket,
};

/// What the consent endpoints need.
pub struct ConsentContext<S> {
    /// The Kubernetes client.
    pub kube: kube::Client,
    /// The ServiceNow client.
    pub servicenow: S,
    /// The operator's public base URL; the redirect URL is this + [`paths::CONSENT_CALLBACK`].
    pub public_url: url::Url,
    /// The key that signs consent tickets and states (the same on every replica).
    pub state_key: SecretString,
    /// The refresh-token lifespan assumed at issue (the token endpoint does not say it).
    pub refresh_token_lifespan: Duration,
}

impl<S> ConsentContext<S> {
    /// The redirect URL registered in the Application Registry, byte for byte.
    pub fn redirect_uri(&self) -> String {
        paths::redirect_url(&self.public_url)
    }

    /// The name of the cookie that binds a consent to the browser that started it:
    /// `__Host-` prefixed (Secure, Path=/, no Domain) when the public URL is https; browsers
    /// refuse `Secure` cookies over plain http, so an http public URL (local tests and demos
    /// only) gets the same cookie without the prefix and without `Secure`.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure() { SECURE_COOKIE } else { PLAIN_COOKIE }
    }

    fn secure(&self) -> bool {
        self.public_url.scheme() == "https"
    }
}

/// The binding cookie's name over https.
pub const SECURE_COOKIE: &str = "__Host-snc-consent";
/// The binding cookie's name over http (local use).
pub const PLAIN_COOKIE: &str = "snc-consent";

/// The consent routes.
pub fn router<S: ServiceNow>(context: Arc<ConsentContext<S>>) -> Router {
    Router::new()
        .route(paths::CONSENT_START, get(start::<S>))
        .route(paths::CONSENT_CALLBACK, get(callback::<S>))
        .with_state(context)
}

#[derive(Deserialize)]
struct StartQuery {
    ticket: Option<String>,
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

const START_AGAIN: &str =
    "Open the connection's status.consentUrl again (kubectl get snc NAME -o jsonpath='{.status.consentUrl}').";

/// The one page `/start` answers to anything but a valid, unused ticket of a connection that
/// needs consent: the same for a missing, malformed, forged, expired or used ticket, an unknown
/// connection or a READY one, so it tells an anonymous caller nothing.
pub fn invalid_link() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "This consent link is not valid",
        "The link is incomplete, has expired, was already used, or no consent is awaited. A consent link works \
         once, for an hour, and only while a connection waits for consent. Ask whoever manages the connection \
         for its current status.consentUrl (kubectl get snc NAME -o jsonpath='{.status.consentUrl}').",
    )
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "The operator could not reach the Kubernetes API. Reload this page in a moment.",
    )
}

/// The page for a consent whose token could not be stored once its state was used (the token just
/// issued is revoked): a reload would be refused as a used state, so it says to start again.
fn unstored() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        &format!(
            "The operator could not reach the Kubernetes API, so nothing was stored and the token just issued was revoked. {START_AGAIN}"
        ),
    )
}

/// Reads the connection `namespace/name`; `None` when it does not exist or cannot be read (logged,
/// never shown).
async fn load<S>(context: &ConsentContext<S>, namespace: &str, name: &str) -> Result<Option<ServiceNowConnection>, ()> {
    let api: Api<ServiceNowConnection> = Api::namespaced(context.kube.clone(), namespace);
    api.get_opt(name).await.map_err(|error| {
        tracing::error!(%error, connection = %format!("{namespace}/{name}"), "failed to read the connection");
    })
}

/// The connection's instance and client credentials; a page that says what to fix (never the
/// Kubernetes error) when they cannot be used.
async fn credentials<S>(
    context: &ConsentContext<S>,
    connection: &ServiceNowConnection,
) -> Result<(InstanceUrl, ClientCredentials), Response> {
    let instance = InstanceUrl::parse(&connection.spec.instance_url).map_err(|error| {
        page(
            StatusCode::BAD_REQUEST,
            "Invalid connection",
            &format!("spec.instanceUrl: {error}."),
        )
    })?;
    let secrets = secrets::Secrets::uncached(Api::namespaced(
        context.kube.clone(),
        &connection.namespace().unwrap_or_default(),
    ));
    let credentials = secrets::read_credentials(&secrets, &connection.spec.credentials_secret_ref.name)
        .await
        .map_err(|error| {
            tracing::warn!(connection = %crate::api::key(connection), %error, "consent: the credentials cannot be used");
            page(
                StatusCode::BAD_REQUEST,
                "Credentials missing",
                "The connection's credentials Secret cannot be used (see the connection's conditions). Put the clientId and clientSecret of the instance's Application Registry entry in it, then start again.",
            )
        })?;
    Ok((instance, credentials))
}

/// Whether `connection` holds `ticket_hash` as its current, unexpired, unused consent ticket.
fn holds_ticket(connection: &ServiceNowConnection, ticket_hash: &str, now: Timestamp) -> bool {
    let Some(status) = connection.status.as_ref() else {
        return false;
    };
    let current = status
        .consent_ticket
        .as_ref()
        .filter(|current| status.consent_url.is_some() && current.expires_at.0 > now)
        .is_some_and(|current| ticket::same_hash(&current.hash, ticket_hash));
    let used = ConsentSession::of(connection.annotations())
        .is_some_and(|session| ticket::same_hash(&session.ticket, ticket_hash));
    current && !used
}

async fn start<S: ServiceNow>(
    State(context): State<Arc<ConsentContext<S>>>,
    Query(query): Query<StartQuery>,
) -> Response {
    let now = Timestamp::now();
    let Some(given) = query.ticket else {
        return invalid_link();
    };
    // No read, no write for anything but a ticket this operator issued, unexpired.
    let Ok(connection_key) = ticket::verify(context.state_key.expose().as_bytes(), &given, now) else {
        return invalid_link();
    };
    let Some((namespace, name)) = split_key(&connection_key) else {
        return invalid_link();
    };
    let hash = ticket::hash(&given);
    let mut connection = match load(&context, namespace, name).await {
        Ok(Some(connection)) => connection,
        Ok(None) => return invalid_link(),
        Err(()) => return unavailable(),
    };
    if !holds_ticket(&connection, &hash, now) {
        return invalid_link();
    }
    let (instance, credentials) = match credentials(&context, &connection).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let minted = consent_state::mint(
        context.state_key.expose().as_bytes(),
        &connection_key,
        &connection.uid().unwrap_or_default(),
        now,
    );
    let session = ConsentSession {
        ticket: hash.clone(),
        state: minted.nonce.clone(),
        done: false,
    };
    // Record the ticket as used, guarded by the resourceVersion: of two concurrent uses, one wins.
    let api: Api<ServiceNowConnection> = Api::namespaced(context.kube.clone(), namespace);
    let mut recorded = false;
    for _ in 0..5 {
        match record(&api, &connection, &session, None).await {
            Ok(()) => {
                recorded = true;
                break;
            }
            Err(Conflict::Changed) => match load(&context, namespace, name).await {
                Ok(Some(fresh)) if holds_ticket(&fresh, &hash, now) => connection = fresh,
                Ok(_) => return invalid_link(),
                Err(()) => return unavailable(),
            },
            Err(Conflict::Failed) => return unavailable(),
        }
    }
    if !recorded {
        return unavailable();
    }
    tracing::info!(connection = %connection_key, "consent started");
    let authorize = oauth::authorize_url(
        &instance,
        credentials.client_id.expose(),
        &context.redirect_uri(),
        &minted.state,
        &minted.code_challenge,
    );
    let cookie = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        context.cookie_name(),
        minted.cookie.expose(),
        consent_state::LIFETIME.as_secs(),
        if context.secure() { "; Secure" } else { "" }
    );
    let mut response = (StatusCode::FOUND, [(header::LOCATION, authorize)]).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Why a guarded annotation write did not happen.
enum Conflict {
    /// The connection changed since it was read (409): read it again and re-check.
    Changed,
    /// Any other failure (logged).
    Failed,
}

/// Writes `session` (and, at the callback, the consent result: `Some(denied)`) into the
/// connection's annotations, guarded by its resourceVersion; drops the older nonce record.
async fn record(
    api: &Api<ServiceNowConnection>,
    connection: &ServiceNowConnection,
    session: &ConsentSession,
    denied: Option<bool>,
) -> Result<(), Conflict> {
    let mut annotations = serde_json::json!({
        CONSENT_SESSION: serde_json::to_string(session).unwrap_or_default(),
        CONSENT_NONCES: serde_json::Value::Null,
    });
    if let Some(denied) = denied {
        annotations[CONSENT_RESULT] = if denied {
            serde_json::Value::from("denied")
        } else {
            serde_json::Value::Null
        };
    }
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": connection.resource_version(),
        "annotations": annotations,
    }});
    match api
        .patch(&connection.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Conflict::Changed),
        Err(error) => {
            tracing::error!(%error, connection = %crate::api::key(connection), "failed to record the consent session");
            Err(Conflict::Failed)
        }
    }
}

/// The value of the cookie `name` among the request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

async fn callback<S: ServiceNow>(
    State(context): State<Arc<ConsentContext<S>>>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    // The binding cookie stays until it expires: a replay in the same browser is then refused as
    // a used state, in another browser as a foreign one.
    finish(&context, &headers, query).await
}

async fn finish<S: ServiceNow>(context: &ConsentContext<S>, headers: &HeaderMap, query: CallbackQuery) -> Response {
    let Some(state) = query.state.as_deref() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Consent failed",
            &format!("The answer from the instance has no state. {START_AGAIN}"),
        );
    };
    let verified = match consent_state::verify(context.state_key.expose().as_bytes(), state, Timestamp::now()) {
        Ok(verified) => verified,
        Err(error) => return refused(&error),
    };
    if let Err(error) = verified.check_cookie(cookie(headers, context.cookie_name())) {
        return refused(&error);
    }
    let Some((namespace, name)) = split_key(&verified.connection) else {
        return page(StatusCode::BAD_REQUEST, "Consent failed", START_AGAIN);
    };
    let connection = match load(context, namespace, name).await {
        Ok(Some(connection)) if connection.uid().as_deref() == Some(verified.uid.as_str()) => connection,
        Ok(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Consent failed",
                &format!("The connection was deleted or re-created after this consent started. {START_AGAIN}"),
            );
        }
        Err(()) => return unavailable(),
    };
    let denied = query.error.is_some();
    if let Err(response) = consume(context, connection.clone(), &verified, denied).await {
        return response;
    }
    if denied {
        return page(
            StatusCode::FORBIDDEN,
            "Consent denied",
            &format!(
                "Access was denied on the instance, so the connection has no token. To connect, sign in to the instance as the integration's service account and click Allow. {START_AGAIN}"
            ),
        );
    }
    let Some(code) = query.code.map(SecretString::new) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Consent failed",
            &format!("The answer from the instance has no code. {START_AGAIN}"),
        );
    };
    let (instance, credentials) = match credentials(context, &connection).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let redirect_uri = context.redirect_uri();
    let grant = match context
        .servicenow
        .exchange_code(&instance, &credentials, &code, &redirect_uri, &verified.pkce_verifier)
        .await
    {
        Ok(grant) => grant,
        Err(error) => {
            tracing::warn!(connection = %verified.connection, %error, "code exchange failed");
            return match error.kind {
                ErrorKind::Unauthorized { .. } => page(
                    StatusCode::BAD_GATEWAY,
                    "Consent failed",
                    &format!(
                        "The instance refused the authorization code. Check that {redirect_uri} is registered, exactly, as a Redirect URL of the Application Registry entry, that the entry is active and that clientId and clientSecret in the credentials Secret match it. {START_AGAIN}"
                    ),
                ),
                _ => page(
                    StatusCode::BAD_GATEWAY,
                    "Consent failed",
                    &format!("{error}. {START_AGAIN}"),
                ),
            };
        }
    };
    let Some(refresh_token) = grant.refresh_token else {
        return page(
            StatusCode::BAD_GATEWAY,
            "Consent failed",
            "The instance issued no refresh token. Make the Application Registry entry a confidential client with a Refresh Token Lifespan above zero, then start again.",
        );
    };
    // Every token this callback lets go of is revoked (best effort, logged): the one issued when
    // it cannot be verified, stored or is refused, and the one a re-consent replaces.
    let (instance_ref, credentials_ref, connection_ref) = (&instance, &credentials, verified.connection.as_str());
    let revoke_token = move |token: &SecretString, what: &'static str| {
        let token = token.clone();
        async move { revoke(context, instance_ref, credentials_ref, &token, connection_ref, what).await }
    };
    // Who signed in, before anything is stored.
    let user = match context.servicenow.current_user(&instance, &grant.access_token).await {
        Ok(user) => user,
        Err(error) => {
            tracing::warn!(connection = %verified.connection, %error, "could not resolve the consenting user");
            revoke_token(&refresh_token, "unverified").await;
            return page(
                StatusCode::BAD_GATEWAY,
                "Consent failed",
                &format!("The instance did not say who signed in, so nothing was stored. {START_AGAIN}"),
            );
        }
    };
    if let Some(expected) = connection
        .spec
        .expected_user_name
        .as_deref()
        .filter(|expected| *expected != user.user_name)
    {
        tracing::warn!(connection = %verified.connection, user = %user.user_name, %expected, "consent refused: not the expected user");
        revoke_token(&refresh_token, "refused").await;
        return page(
            StatusCode::FORBIDDEN,
            "Consent refused",
            &format!(
                "You signed in to the instance as {:?}, but this connection must act as {expected:?} (spec.expectedUserName). Nothing was stored and the token just issued was revoked. Sign out of the instance, then open the connection's status.consentUrl again (it holds a new link) and sign in as {expected:?}.",
                user.user_name
            ),
        );
    }
    let lifespan = SignedDuration::try_from(context.refresh_token_lifespan).unwrap_or(SignedDuration::ZERO);
    let stored = StoredToken {
        refresh_token,
        expires_at: Timestamp::now().checked_add(lifespan).ok(),
    };
    let secrets_api = secrets::Secrets::uncached(Api::namespaced(context.kube.clone(), namespace));
    let secret_name = secrets::token_secret_name(&connection);
    let replaced = match secrets::read_token(&secrets_api, &secret_name).await {
        Ok(replaced) => replaced,
        Err(error) => {
            tracing::error!(%error, connection = %verified.connection, "failed to read the token Secret");
            revoke_token(&stored.refresh_token, "unstored").await;
            return unstored();
        }
    };
    if let Err(error) = secrets::write_token(&secrets_api, &secret_name, &connection, &stored).await {
        tracing::error!(%error, connection = %verified.connection, "failed to store the refresh token");
        revoke_token(&stored.refresh_token, "unstored").await;
        return unstored();
    }
    tracing::info!(connection = %verified.connection, user = %user.user_name, "consent recorded");
    if let Some(replaced) = replaced.filter(|replaced| replaced.refresh_token != stored.refresh_token) {
        revoke_token(&replaced.refresh_token, "replaced").await;
    }
    page(
        StatusCode::OK,
        "Consent recorded",
        &format!(
            "The connection {namespace}/{name} now holds a refresh token of {:?}; the operator takes it from here. You can close this window.",
            user.user_name
        ),
    )
}

/// A page for a state the callback refuses (its message says what to do; never a secret).
fn refused(error: &consent_state::StateError) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Consent failed",
        &format!("{}.", capitalised(&error.to_string())),
    )
}

/// Revokes `token` at the instance, best effort (logged; `what` says which token it was).
async fn revoke<S: ServiceNow>(
    context: &ConsentContext<S>,
    instance: &InstanceUrl,
    credentials: &ClientCredentials,
    token: &SecretString,
    connection: &str,
    what: &str,
) {
    match context.servicenow.revoke(instance, credentials, token).await {
        Ok(()) => tracing::info!(%connection, token = %what, "revoked a refresh token"),
        Err(error) => tracing::warn!(%connection, token = %what, %error, "failed to revoke a refresh token"),
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Records that `verified`'s state was used (refusing a replay, or a state the session no longer
/// names) and whether consent was denied, guarded by the resourceVersion so two replicas cannot
/// both accept one state.
async fn consume<S>(
    context: &ConsentContext<S>,
    mut connection: ServiceNowConnection,
    verified: &Verified,
    denied: bool,
) -> Result<(), Response> {
    let namespace = connection.namespace().unwrap_or_default();
    let api: Api<ServiceNowConnection> = Api::namespaced(context.kube.clone(), &namespace);
    for _ in 0..5 {
        let session = ConsentSession::of(connection.annotations())
            .filter(|session| !session.done && ticket::same_hash(&session.state, &verified.nonce));
        let Some(mut session) = session else {
            return Err(page(
                StatusCode::BAD_REQUEST,
                "Consent failed",
                &format!(
                    "This consent was already used, or a newer one replaced it; each consent link works once. {START_AGAIN}"
                ),
            ));
        };
        session.done = true;
        match record(&api, &connection, &session, Some(denied)).await {
            Ok(()) => return Ok(()),
            Err(Conflict::Changed) => match load(context, &namespace, &connection.name_any()).await {
                Ok(Some(fresh)) => connection = fresh,
                Ok(None) | Err(()) => return Err(unavailable()),
            },
            Err(Conflict::Failed) => return Err(unavailable()),
        }
    }
    Err(unavailable())
}
