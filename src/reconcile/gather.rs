//! Phase 1, gather: all that a reconcile reads, in order — the credentials Secret, the stored
//! refresh token, an access token (from memory, or one refresh at the instance), the OAuth user
//! (once per token origin, then from memory), its roles and the webhook records on the instance
//! (one Batch API call: `ServiceNow::lookup`; until the stored status says the roles passed, the
//! roles are read alone first), and the connection's webhook token. A layer
//! is read only when the one before it succeeded and `decide` could use it (a failure is kept, as
//! it is, for `decide` to explain); nothing here sets a condition.
//!
//! Two writes happen here because reading needs them: the access-token cache in memory (a refresh
//! is shared by every reconcile of the connection), and the connection's webhook-token Secret,
//! created once when it does not exist yet (the callback URL the rule posts to carries it). A
//! token or webhook Secret that is not the connection's ([`NotOwned`]) ends the gathering before
//! anything is written, for `decide` to report `SecretNotOwned`.

use std::time::Instant;

use kube::ResourceExt;

pub use super::decide::{Access, CredentialsProblem, Gathered, InstanceRecords, Refreshed};
use super::{
    Context, Error, decide,
    error::kube,
    key,
    tokens::{self, AccessToken},
};
use crate::{
    api::ServiceNowConnection,
    provision::{LEGACY_RULE_NAME, PROPERTY_NAME, RULE_NAME},
    secrets::{self, CredentialsError, NotOwned, SecretError, Secrets, StoredToken},
    servicenow::{self, ClientCredentials, InstanceUrl, Lookup, ServiceNow, User},
};

/// Gathers for `connection`. `Err` only when the Kubernetes API failed (retried with backoff).
pub async fn gather<S: ServiceNow>(
    connection: &ServiceNowConnection,
    context: &Context<S>,
    secrets_api: &Secrets<'_>,
    instance: &InstanceUrl,
) -> Result<Gathered, Error> {
    let mut gathered = Gathered::default();
    let status = connection.status.clone().unwrap_or_default();

    let credentials = match credentials(secrets_api, &connection.spec.credentials_secret_ref.name).await? {
        Ok(credentials) => credentials,
        Err(problem) => {
            gathered.credentials = Some(Err(problem));
            return Ok(gathered);
        }
    };
    gathered.credentials = Some(Ok(credentials.clone()));

    let connection_key = key(connection);
    if let Some(request) = decide::reconnect_request(connection, &status) {
        context.tokens.forget_for_reconnect(&connection_key, request);
    }
    let stored = match owned(
        secrets::read_owned_token(secrets_api, connection).await,
        "read the token Secret",
    )? {
        Ok(stored) => stored,
        Err(not_owned) => {
            gathered.not_owned = Some(not_owned);
            return Ok(gathered);
        }
    };
    gathered.stored = Some(stored.clone());
    let reconsent = decide::reconsent_request(connection, &status).is_some();
    if reconsent || stored.is_none() {
        // Consent is needed: a ticket, should the status hold no usable one.
        gathered.consent_ticket = Some(crate::ticket::issue(
            context.state_key.expose().as_bytes(),
            &connection_key,
            rand::random(),
            k8s_openapi::jiff::Timestamp::now(),
        ));
    }
    let Some(stored) = stored.filter(|_| !reconsent) else {
        // No token, or one about to be replaced (revoked and forgotten): nothing more to read.
        return Ok(gathered);
    };

    let (access, known_user) = match access_token(context, &connection_key, instance, &credentials, &stored).await {
        Ok(access) => access,
        Err(error) => {
            gathered.access = Some(Err(error));
            return Ok(gathered);
        }
    };
    gathered.access = Some(Ok(access.clone()));
    let token = &access.token;

    let servicenow = &context.servicenow;
    let user = match known_user {
        Some(user) => user,
        None => match servicenow.current_user(instance, token).await {
            Ok(user) => {
                context.tokens.remember_user(&connection_key, token, &user).await;
                user
            }
            Err(error) => {
                gathered.user = Some(Err(error));
                return Ok(gathered);
            }
        },
    };
    gathered.user = Some(Ok(user.clone()));
    let acceptable = |roles: &Result<Vec<String>, servicenow::Error>| {
        roles
            .as_ref()
            .is_ok_and(|roles| decide::identity(&connection.spec, &user, roles).is_ok())
    };
    if !decide::identity_resolved(&status) {
        let roles = servicenow
            .user_roles(instance, token, &user.sys_id, &decide::CHECKED_ROLES)
            .await;
        if !acceptable(&roles) {
            gathered.roles = Some(roles);
            return Ok(gathered);
        }
    }
    let lookup = Lookup {
        user_sys_id: &user.sys_id,
        roles: &decide::CHECKED_ROLES,
        rule_names: &[RULE_NAME, LEGACY_RULE_NAME],
        property_name: PROPERTY_NAME,
    };
    let found = servicenow.lookup(instance, token, &lookup).await;
    let passed = acceptable(&found.roles);
    gathered.roles = Some(found.roles);
    if !passed {
        return Ok(gathered);
    }

    let rotation = connection.annotations().get(crate::api::ROTATE_WEBHOOK_KEY);
    let webhook_token = secrets::ensure_webhook_key(secrets_api, connection, rotation.map(String::as_str)).await;
    match owned(webhook_token, "create or rotate the webhook signing key")? {
        Ok(webhook_token) => gathered.webhook_token = Some(webhook_token),
        Err(not_owned) => {
            gathered.not_owned = Some(not_owned);
            return Ok(gathered);
        }
    }
    gathered.records = found.records;
    Ok(gathered)
}

/// Splits a Secret access's failure: a Secret that is not the connection's is `Ok(Err(..))`, for
/// `decide` to report; an API failure is the reconcile's error.
fn owned<T>(result: Result<T, SecretError>, action: &'static str) -> Result<Result<T, NotOwned>, Error> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(SecretError::NotOwned(not_owned)) => Ok(Err(not_owned)),
        Err(SecretError::Kube(source)) => Err(kube(action)(source)),
    }
}

/// Reads and checks the credentials Secret `name`: `Ok(Err(..))` for a problem a person must fix.
pub async fn credentials(
    secrets_api: &Secrets<'_>,
    name: &str,
) -> Result<Result<ClientCredentials, CredentialsProblem>, Error> {
    match secrets::read_credentials(secrets_api, name).await {
        Ok(credentials) => Ok(Ok(credentials)),
        Err(CredentialsError::Kube { source, .. }) => Err(Error::Kube {
            action: "read the credentials Secret",
            source,
        }),
        Err(problem) => Ok(Err(problem)),
    }
}

/// The connection's access token: the one in memory while it is fresh and was obtained with these
/// credentials and this refresh token, or else one refresh (single-flight per connection); with
/// the OAuth user behind it when already read for this origin.
async fn access_token<S: ServiceNow>(
    context: &Context<S>,
    connection_key: &str,
    instance: &InstanceUrl,
    credentials: &ClientCredentials,
    stored: &StoredToken,
) -> Result<(Access, Option<User>), servicenow::Error> {
    let origin = tokens::origin(&credentials.fingerprint(), &stored.refresh_token);
    let slot = context.tokens.slot(connection_key);
    let mut cached = slot.lock().await;
    let now = Instant::now();
    if let Some(token) = cached.as_ref().filter(|t| t.origin == origin && t.is_fresh(now)) {
        let access = Access {
            token: token.token.clone(),
            lifetime: token.expires_at.saturating_duration_since(now),
            refreshed: None,
        };
        return Ok((access, token.user.clone()));
    }
    let grant = context
        .servicenow
        .refresh_token(instance, credentials, &stored.refresh_token)
        .await?;
    let refresh_token = grant.refresh_token.unwrap_or_else(|| stored.refresh_token.clone());
    let new_origin = tokens::origin(&credentials.fingerprint(), &refresh_token);
    // The user behind the same credentials and refresh token is the same user.
    let user = cached
        .as_ref()
        .filter(|t| t.origin == new_origin)
        .and_then(|t| t.user.clone());
    *cached = Some(AccessToken {
        token: grant.access_token.clone(),
        expires_at: Instant::now() + grant.expires_in,
        origin: new_origin,
        user: user.clone(),
    });
    let access = Access {
        token: grant.access_token,
        lifetime: grant.expires_in,
        refreshed: Some(Refreshed { refresh_token }),
    };
    Ok((access, user))
}
