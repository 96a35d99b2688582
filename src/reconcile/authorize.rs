//! Step: credentials and tokens. Reads the credentials and the stored refresh token, obtains an
//! access token (cached until shortly before it expires) and tells the token failures apart —
//! ServiceNow answers all of them with the same 401 — from what the operator knows.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, ResourceExt};

use super::{
    Context,
    error::{Retry, Stop, classify, kube},
    key,
    pipeline::{Halt, Run},
    status::{Progress, Truth, Verdict},
    tokens::{self, AccessToken},
};
use crate::{
    api::{CONSENT_RESULT, ConditionType, RECONSENT, TokenStatus, conditions::Reason},
    secrets::{self, CredentialsError, StoredToken},
    servicenow::{ClientCredentials, ErrorKind, InstanceUrl, SecretString, ServiceNow},
};

/// How long before the refresh token's expiry the connection warns (`RefreshTokenExpiring`).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The consent URL of a connection: the operator's public URL + `/oauth/servicenow/start`.
pub fn consent_url(public_url: &url::Url, namespace: &str, name: &str) -> String {
    let mut url = public_url.clone();
    url.set_path(&format!(
        "{}/oauth/servicenow/start",
        public_url.path().trim_end_matches('/')
    ));
    url.query_pairs_mut()
        .clear()
        .append_pair("connection", &format!("{namespace}/{name}"));
    url.to_string()
}

/// Reads the credentials of the connection.
pub async fn credentials<S>(context: &Context<S>, namespace: &str, name: &str) -> Result<ClientCredentials, Halt> {
    let secrets: Api<Secret> = Api::namespaced(context.kube.clone(), namespace);
    secrets::read_credentials(&secrets, name).await.map_err(|error| {
        let message = format!("spec.credentialsSecretRef: {error}.");
        let reason = match error {
            CredentialsError::Kube { source, .. } => {
                return Halt::Failed(super::Error::Kube {
                    action: "read the credentials Secret",
                    source,
                });
            }
            CredentialsError::SecretMissing { .. } | CredentialsError::KeyMissing { .. } => Reason::CredentialsMissing,
            CredentialsError::Malformed { .. } => Reason::CredentialsMalformed,
        };
        Halt::Stop(Stop {
            verdict: Verdict::new(ConditionType::Authorized, Truth::False, reason, message),
            progress: Progress::Stalled,
            retry: Retry::OnChange,
        })
    })
}

/// Runs the step; returns an access token.
pub async fn authorize<S: ServiceNow>(run: &mut Run<'_, S>, instance: &InstanceUrl) -> Result<SecretString, Halt> {
    let connection = run.connection;
    let context = run.context;
    let namespace = connection.namespace().unwrap_or_default();
    let credentials = credentials(context, &namespace, &connection.spec.credentials_secret_ref.name).await?;

    let secrets_api: Api<Secret> = Api::namespaced(context.kube.clone(), &namespace);
    let token_secret = secrets::token_secret_name(connection);
    let reconsent = connection.annotations().get(RECONSENT);
    if reconsent.is_some() && reconsent != run.status.last_handled_reconsent_at.as_ref() {
        secrets::forget_token(&secrets_api, &token_secret)
            .await
            .map_err(kube("delete the token Secret for re-consent"))?;
        context.tokens.forget(&key(connection));
        run.status.last_handled_reconsent_at = reconsent.cloned();
    }
    let Some(stored) = secrets::read_token(&secrets_api, &token_secret)
        .await
        .map_err(kube("read the token Secret"))?
    else {
        run.status.consent_url = Some(consent_url(&context.public_url, &namespace, &connection.name_any()));
        run.status.token = None;
        let denied = connection
            .annotations()
            .get(CONSENT_RESULT)
            .is_some_and(|result| result == "denied");
        let (reason, message) = if denied {
            (Reason::ConsentDenied, "Consent was denied on the instance.".to_owned())
        } else {
            (
                Reason::ConsentRequired,
                format!("No refresh token in Secret {token_secret:?} yet."),
            )
        };
        return Err(Stop {
            verdict: Verdict::new(ConditionType::Authorized, Truth::False, reason, message),
            progress: Progress::AwaitingConsent,
            retry: Retry::OnChange,
        }
        .into());
    };
    run.status.consent_url = None;

    let fingerprint = credentials.fingerprint();
    let origin = tokens::origin(&fingerprint, &stored.refresh_token);
    let slot = context.tokens.slot(&key(connection));
    let mut cached = slot.lock().await;
    let access = match cached.as_ref() {
        Some(token) if token.origin == origin && token.is_fresh(Instant::now()) => token.clone(),
        _ => {
            let grant = context
                .servicenow
                .refresh_token(instance, &credentials, &stored.refresh_token)
                .await
                .map_err(|error| token_failure(run, &fingerprint, &stored, &error))?;
            if let Some(new) = grant.refresh_token.as_ref().filter(|new| **new != stored.refresh_token) {
                let renewed = StoredToken {
                    refresh_token: new.clone(),
                    expires_at: stored.expires_at,
                };
                secrets::write_token(&secrets_api, &token_secret, connection, &renewed)
                    .await
                    .map_err(kube("store the renewed refresh token"))?;
            }
            let expires_at = run.now + SignedDuration::try_from(grant.expires_in).unwrap_or_default();
            let token = AccessToken {
                token: grant.access_token,
                expires_at: Instant::now() + grant.expires_in,
                origin: tokens::origin(
                    &fingerprint,
                    grant.refresh_token.as_ref().unwrap_or(&stored.refresh_token),
                ),
            };
            let status = run.status.token.get_or_insert_with(TokenStatus::default);
            status.access_token_expires_at = Some(Time(expires_at));
            status.last_refresh_time = Some(Time(run.now));
            *cached = Some(token.clone());
            token
        }
    };
    drop(cached);
    run.status.credentials_hash = Some(fingerprint);
    run.status
        .token
        .get_or_insert_with(TokenStatus::default)
        .refresh_token_expires_at = stored.expires_at.map(Time);
    run.due_at(
        access
            .expires_at
            .checked_sub(tokens::REFRESH_AHEAD)
            .unwrap_or(access.expires_at),
    );
    run.holds(expiry_verdict(&stored, run.now));
    if let Some(warn_at) = stored.expires_at.and_then(|at| at.checked_sub(EXPIRY_WARNING).ok())
        && let Ok(until) = Duration::try_from(warn_at.duration_since(run.now))
    {
        run.due_at(Instant::now() + until);
    }
    Ok(access.token)
}

/// `Authorized=True`, warning while the refresh token nears its end — and once past it, while the
/// access token obtained before still works (the next refresh fails as `RefreshTokenExpired`).
fn expiry_verdict(stored: &StoredToken, now: Timestamp) -> Verdict {
    let warn_within = SignedDuration::try_from(EXPIRY_WARNING).unwrap_or(SignedDuration::MAX);
    match stored.expires_at {
        Some(at) if at <= now => Verdict::new(
            ConditionType::Authorized,
            Truth::True,
            Reason::RefreshTokenExpiring,
            format!("The refresh token expired at {at}; the access token obtained before still works."),
        ),
        Some(at) if at.duration_since(now) < warn_within => Verdict::new(
            ConditionType::Authorized,
            Truth::True,
            Reason::RefreshTokenExpiring,
            format!("The refresh token expires at {at}."),
        ),
        _ => Verdict::new(
            ConditionType::Authorized,
            Truth::True,
            Reason::TokenValid,
            "The instance accepts the refresh token.",
        ),
    }
}

/// Tells apart the causes of a failed refresh.
fn token_failure<S>(
    run: &Run<'_, S>,
    fingerprint: &str,
    stored: &StoredToken,
    error: &crate::servicenow::Error,
) -> Halt {
    if !matches!(error.kind, ErrorKind::Unauthorized { .. }) {
        return classify(ConditionType::Authorized, Reason::TokenRejected, error).into();
    }
    let known = run.status.credentials_hash.as_deref();
    let (reason, message) = if known.is_some_and(|known| known != fingerprint) {
        (
            Reason::CredentialsChanged,
            "The instance refused the token refresh with the credentials now in the Secret (they changed since the last good refresh).".to_owned(),
        )
    } else if stored.expires_at.is_some_and(|at| at <= run.now) {
        (
            Reason::RefreshTokenExpired,
            format!("The refresh token expired at {}.", stored.expires_at.unwrap_or(run.now)),
        )
    } else {
        (
            Reason::TokenRejected,
            "The instance refused the token refresh (401 access_denied).".to_owned(),
        )
    };
    Stop::terminal(ConditionType::Authorized, reason, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consent_url_names_the_connection() {
        let public = url::Url::parse("https://neo.example.com/base/").unwrap();
        assert_eq!(
            consent_url(&public, "itsm", "acme"),
            "https://neo.example.com/base/oauth/servicenow/start?connection=itsm%2Facme"
        );
    }

    #[test]
    fn a_token_near_its_end_warns() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let soon = StoredToken {
            refresh_token: SecretString::new("r"),
            expires_at: Some(now + SignedDuration::from_hours(24)),
        };
        assert_eq!(expiry_verdict(&soon, now).reason, Reason::RefreshTokenExpiring);
        let later = StoredToken {
            expires_at: Some(now + SignedDuration::from_hours(24 * 60)),
            ..soon
        };
        assert_eq!(expiry_verdict(&later, now).reason, Reason::TokenValid);
        let past = StoredToken {
            expires_at: Some(now - SignedDuration::from_hours(1)),
            ..later
        };
        let verdict = expiry_verdict(&past, now);
        assert_eq!(verdict.reason, Reason::RefreshTokenExpiring);
        assert!(verdict.message.contains("expired"), "{}", verdict.message);
    }
}
