//! Phase 3, act: the plan's writes, in order, to Kubernetes (the token Secret), to memory (the
//! access token) and to the instance (the webhook records) — the only place a reconcile writes to
//! ServiceNow. A refusal by the instance stops the writes and is reported in the [`Outcome`]; a
//! Kubernetes failure is an error (retried with backoff, no status written).

use super::{
    Context, Error,
    decide::{Act, Outcome, Plan},
    error::secret,
    key,
};
use crate::{
    api::ServiceNowConnection,
    provision::Step,
    secrets::{self, Secrets},
    servicenow::{ClientCredentials, ErrorKind, InstanceUrl, SecretString, ServiceNow},
};

/// Carries out `plan`'s writes for `connection`; `access_token` is the one `gather` obtained
/// (needed only when the plan writes to the instance).
pub async fn act<S: ServiceNow>(
    connection: &ServiceNowConnection,
    context: &Context<S>,
    secrets_api: &Secrets<'_>,
    instance: &InstanceUrl,
    credentials: Option<&ClientCredentials>,
    access_token: Option<&SecretString>,
    plan: &Plan,
) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    for act in &plan.acts {
        match act {
            Act::ForgetAccessToken => context.tokens.forget(&key(connection)),
            Act::RevokeStoredToken(token) => {
                // Best effort: a token the instance does not revoke now still dies at its lifespan,
                // and the re-consent must not wait for the instance.
                let Some(credentials) = credentials else { continue };
                match context
                    .servicenow
                    .revoke(instance, credentials, &token.0.refresh_token)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(connection = %key(connection), "revoked the refresh token a re-consent replaces")
                    }
                    Err(error) => {
                        tracing::warn!(connection = %key(connection), %error, "failed to revoke the refresh token a re-consent replaces")
                    }
                }
            }
            Act::ForgetStoredToken => {
                secrets::forget_token(secrets_api, &secrets::token_secret_name(connection), connection)
                    .await
                    .map_err(secret("delete the token Secret for re-consent"))?
            }
            Act::StoreRefreshToken(token) => {
                secrets::write_token(
                    secrets_api,
                    &secrets::token_secret_name(connection),
                    connection,
                    &token.0,
                )
                .await
                .map_err(secret("store the renewed refresh token"))?;
            }
            Act::Instance(step) => {
                let (Some(desired), Some(token)) = (plan.desired.as_ref(), access_token) else {
                    // decide plans instance writes only with the desired records, after a token.
                    tracing::error!(connection = %key(connection), ?step, "an instance write without its desired records or token; skipped");
                    continue;
                };
                if let Err(error) = write(&context.servicenow, instance, token, step, desired, &mut outcome).await {
                    if matches!(error.kind, ErrorKind::Unauthorized { .. }) {
                        // The access token died early (revoked): the next try refreshes.
                        context.tokens.forget(&key(connection));
                    }
                    outcome.failed = Some(error);
                    break;
                }
            }
        }
    }
    Ok(outcome)
}

/// One write to the instance; a created record's sys_id goes into `outcome`.
async fn write<S: ServiceNow>(
    servicenow: &S,
    instance: &InstanceUrl,
    token: &SecretString,
    step: &Step,
    desired: &crate::provision::Desired,
    outcome: &mut Outcome,
) -> Result<(), crate::servicenow::Error> {
    match step {
        Step::CreateRule => {
            let rule = servicenow.create_business_rule(instance, token, &desired.rule).await?;
            outcome.created_rule = Some(rule.sys_id);
        }
        Step::RepairRule { sys_id } => {
            servicenow
                .update_business_rule(instance, token, sys_id, &desired.rule)
                .await?;
        }
        Step::DeleteDuplicateRule { sys_id } | Step::DeleteLegacyRule { sys_id } => {
            servicenow.delete_business_rule(instance, token, sys_id).await?;
        }
        Step::CreateProperty => {
            let property = servicenow.create_property(instance, token, &desired.property).await?;
            outcome.created_property = Some(property.sys_id);
        }
        Step::UpdateProperty { sys_id } => {
            servicenow
                .update_property(instance, token, sys_id, &desired.property)
                .await?;
        }
        Step::DeleteDuplicateProperty { sys_id } => servicenow.delete_property(instance, token, sys_id).await?,
    }
    Ok(())
}
