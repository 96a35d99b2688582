//! The consent endpoints: `GET /oauth/servicenow/start?connection=<ns>/<name>` sends the browser
//! to the instance's `/oauth_auth.do` (state + PKCE S256); `GET /oauth/servicenow/callback`
//! checks the state (signed, expiring, single use across replicas), exchanges the code, stores
//! the refresh token in the connection's token Secret (which wakes the reconcile) and shows a
//! plain page. Failures show the connect guide's remedy; nothing is stored on a failure.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use k8s_openapi::{
    api::core::v1::Secret,
    jiff::{SignedDuration, Timestamp},
};
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
    api::{CONSENT_NONCES, CONSENT_RESULT, ServiceNowConnection, paths, split_key},
    secrets::{self, StoredToken},
    servicenow::{ErrorKind, InstanceUrl, SecretString, ServiceNow, oauth},
};

/// What the consent endpoints need.
pub struct ConsentContext<S> {
    /// The Kubernetes client.
    pub kube: kube::Client,
    /// The ServiceNow client.
    pub servicenow: S,
    /// The operator's public base URL; the redirect URL is this + [`paths::CONSENT_CALLBACK`].
    pub public_url: url::Url,
    /// The key that signs consent states (the same on every replica).
    pub state_key: SecretString,
    /// The refresh-token lifespan assumed at issue (the token endpoint does not say it).
    pub refresh_token_lifespan: Duration,
}

impl<S> ConsentContext<S> {
    /// The redirect URL registered in the Application Registry, byte for byte.
    pub fn redirect_uri(&self) -> String {
        paths::redirect_url(&self.public_url)
    }
}

/// The consent routes.
pub fn router<S: ServiceNow>(context: Arc<ConsentContext<S>>) -> Router {
    Router::new()
        .route(paths::CONSENT_START, get(start::<S>))
        .route(paths::CONSENT_CALLBACK, get(callback::<S>))
        .with_state(context)
}

#[derive(Debug, Deserialize)]
struct StartQuery {
    connection: Option<String>,
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

const START_AGAIN: &str =
    "Open the connection's status.consentUrl again (kubectl get snc NAME -o jsonpath='{.status.consentUrl}').";

async fn load<S>(context: &ConsentContext<S>, namespace: &str, name: &str) -> Result<ServiceNowConnection, Response> {
    let api: Api<ServiceNowConnection> = Api::namespaced(context.kube.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(connection)) => Ok(connection),
        Ok(None) => Err(page(
            StatusCode::NOT_FOUND,
            "Connection not found",
            &format!("There is no ServiceNowConnection {namespace}/{name}. {START_AGAIN}"),
        )),
        Err(error) => {
            tracing::error!(%error, connection = %format!("{namespace}/{name}"), "failed to read the connection");
            Err(unavailable())
        }
    }
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "The operator could not reach the Kubernetes API. Reload this page in a moment.",
    )
}

async fn credentials<S>(
    context: &ConsentContext<S>,
    connection: &ServiceNowConnection,
) -> Result<(InstanceUrl, crate::servicenow::ClientCredentials), Response> {
    let instance = InstanceUrl::parse(&connection.spec.instance_url).map_err(|error| {
        page(
            StatusCode::BAD_REQUEST,
            "Invalid connection",
            &format!("spec.instanceUrl: {error}."),
        )
    })?;
    let secrets: Api<Secret> = Api::namespaced(context.kube.clone(), &connection.namespace().unwrap_or_default());
    let credentials = secrets::read_credentials(&secrets, &connection.spec.credentials_secret_ref.name)
        .await
        .map_err(|error| {
            page(
                StatusCode::BAD_REQUEST,
                "Credentials missing",
                &format!("{error}. Create it with the clientId and clientSecret of the instance's Application Registry entry, then start again."),
            )
        })?;
    Ok((instance, credentials))
}

async fn start<S: ServiceNow>(
    State(context): State<Arc<ConsentContext<S>>>,
    Query(query): Query<StartQuery>,
) -> Response {
    let Some((namespace, name)) = query.connection.as_deref().and_then(split_key) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Consent cannot start",
            &format!("This link lacks ?connection=<namespace>/<name>. {START_AGAIN}"),
        );
    };
    let connection = match load(&context, namespace, name).await {
        Ok(connection) => connection,
        Err(page) => return page,
    };
    let (instance, credentials) = match credentials(&context, &connection).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let minted = consent_state::mint(
        context.state_key.expose().as_bytes(),
        &format!("{namespace}/{name}"),
        &connection.uid().unwrap_or_default(),
        Timestamp::now(),
    );
    let authorize = oauth::authorize_url(
        &instance,
        credentials.client_id.expose(),
        &context.redirect_uri(),
        &minted.state,
        &minted.code_challenge,
    );
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, authorize),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

async fn callback<S: ServiceNow>(
    State(context): State<Arc<ConsentContext<S>>>,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let Some(state) = query.state.as_deref() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Consent failed",
            &format!("The answer from the instance has no state. {START_AGAIN}"),
        );
    };
    let verified = match consent_state::verify(context.state_key.expose().as_bytes(), state, Timestamp::now()) {
        Ok(verified) => verified,
        Err(error) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Consent failed",
                &format!("{}.", capitalised(&error.to_string())),
            );
        }
    };
    let Some((namespace, name)) = split_key(&verified.connection) else {
        return page(StatusCode::BAD_REQUEST, "Consent failed", START_AGAIN);
    };
    let connection = match load(&context, namespace, name).await {
        Ok(connection) => connection,
        Err(page) => return page,
    };
    if connection.uid().as_deref() != Some(verified.uid.as_str()) {
        return page(
            StatusCode::BAD_REQUEST,
            "Consent failed",
            &format!("The connection {namespace}/{name} was re-created after this consent started. {START_AGAIN}"),
        );
    }
    let denied = query.error.is_some();
    if let Err(response) = consume(&context, &connection, &verified, denied).await {
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
    let (instance, credentials) = match credentials(&context, &connection).await {
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
    let lifespan = SignedDuration::try_from(context.refresh_token_lifespan).unwrap_or(SignedDuration::ZERO);
    let stored = StoredToken {
        refresh_token,
        expires_at: Timestamp::now().checked_add(lifespan).ok(),
    };
    let secrets_api: Api<Secret> = Api::namespaced(context.kube.clone(), namespace);
    if let Err(error) = secrets::write_token(
        &secrets_api,
        &secrets::token_secret_name(&connection),
        &connection,
        &stored,
    )
    .await
    {
        tracing::error!(%error, connection = %verified.connection, "failed to store the refresh token");
        return unavailable();
    }
    tracing::info!(connection = %verified.connection, "consent recorded");
    page(
        StatusCode::OK,
        "Consent recorded",
        &format!(
            "The connection {namespace}/{name} now holds a refresh token; the operator takes it from here. You can close this window."
        ),
    )
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Records that `verified`'s state was used (refusing a replay) and whether consent was denied,
/// in the connection's annotations, guarded by its resourceVersion so two replicas cannot both
/// accept one state.
async fn consume<S>(
    context: &ConsentContext<S>,
    connection: &ServiceNowConnection,
    verified: &Verified,
    denied: bool,
) -> Result<(), Response> {
    let api: Api<ServiceNowConnection> =
        Api::namespaced(context.kube.clone(), &connection.namespace().unwrap_or_default());
    let name = connection.name_any();
    let mut current = connection.clone();
    for _ in 0..5 {
        let now = Timestamp::now().as_second();
        let mut used: BTreeMap<String, i64> = current
            .annotations()
            .get(CONSENT_NONCES)
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        used.retain(|_, expires| *expires > now);
        if used.contains_key(&verified.nonce) {
            return Err(page(
                StatusCode::BAD_REQUEST,
                "Consent failed",
                &format!("This consent link was already used; each one works once. {START_AGAIN}"),
            ));
        }
        used.insert(verified.nonce.clone(), verified.expires_at.as_second());
        let result = if denied {
            serde_json::Value::from("denied")
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": current.resource_version(),
            "annotations": {CONSENT_NONCES: serde_json::to_string(&used).unwrap_or_default(), CONSENT_RESULT: result},
        }});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => match api.get(&name).await {
                Ok(fresh) => current = fresh,
                Err(_) => return Err(unavailable()),
            },
            Err(error) => {
                tracing::error!(%error, connection = %verified.connection, "failed to record a consent state as used");
                return Err(unavailable());
            }
        }
    }
    Err(unavailable())
}
