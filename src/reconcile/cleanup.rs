//! Deletion behind the finalizer. `deletionPolicy: Delete` removes the Business Rule and the
//! callback property (only when this connection owns it) and revokes the refresh token;
//! `Orphan` leaves them. An instance that cannot be reached is retried with backoff; a refusal
//! (rights, credentials) waits for the resync period or a change; to let go anyway, set
//! `deletionPolicy: Orphan` (the spec stays editable while the object is deleted).

use kube::runtime::controller::Action;

use super::{
    Context, Error,
    error::{CleanupError, kube},
    events::Transition,
    gather, key, report,
};
use crate::{
    api::{DeletionPolicy, ServiceNowConnection},
    provision,
    secrets::{self, SecretError},
    servicenow::{InstanceUrl, ServiceNow},
};

/// Cleans up after `connection` according to its deletion policy.
pub async fn cleanup<S: ServiceNow>(connection: &ServiceNowConnection, context: &Context<S>) -> Result<Action, Error> {
    let connection_key = key(connection);
    if connection.spec.deletion_policy == DeletionPolicy::Orphan || connection.spec.suspend {
        tracing::info!(connection = %connection_key, "deleted; leaving the instance as it is (Orphan or suspended)");
        return Ok(Action::await_change());
    }
    let Ok(instance) = InstanceUrl::parse(&connection.spec.instance_url) else {
        return Ok(Action::await_change());
    };
    let secrets_api = context.secrets_of(connection);
    let stored = match secrets::read_owned_token(&secrets_api, connection).await {
        Ok(stored) => stored,
        Err(SecretError::Kube(source)) => return Err(kube("read the token Secret")(source)),
        Err(SecretError::NotOwned(not_owned)) => {
            // Its token is not the connection's to use: nothing was provisioned with it.
            tracing::warn!(connection = %connection_key, error = %not_owned, "deleted; the instance is left as it is");
            return Ok(Action::await_change());
        }
    };
    let Some(stored) = stored else {
        // Never consented: nothing was provisioned under this connection.
        return Ok(Action::await_change());
    };
    let credentials = gather::credentials(&secrets_api, &connection.spec.credentials_secret_ref.name)
        .await?
        .map_err(CleanupError::Credentials)?;
    let servicenow = &context.servicenow;
    let failed = CleanupError::Instance;
    let grant = servicenow
        .refresh_token(&instance, &credentials, &stored.refresh_token)
        .await
        .map_err(failed)?;
    let token = grant.access_token;
    let owner = provision::Owner {
        public_url: context.public_url.to_string(),
        connection: connection_key.clone(),
    };
    let properties = servicenow
        .properties(&instance, &token, provision::PROPERTY_NAME)
        .await
        .map_err(failed)?;
    let webhook_token = secrets::read_webhook_keys(&secrets_api, connection)
        .await
        .map_err(kube("read the webhook signing key Secret"))?
        .map(|keys| keys.current);
    // The rule serves whoever owns the property: leave both to another owner.
    if provision::claimed_by_other(&properties, &owner, webhook_token.as_ref()).is_none() {
        let rules = servicenow
            .business_rules(&instance, &token, &[provision::RULE_NAME, provision::LEGACY_RULE_NAME])
            .await
            .map_err(failed)?;
        for rule in &rules {
            servicenow
                .delete_business_rule(&instance, &token, &rule.sys_id)
                .await
                .map_err(failed)?;
        }
        for property in &properties {
            servicenow
                .delete_property(&instance, &token, &property.sys_id)
                .await
                .map_err(failed)?;
        }
    }
    // A revocation the instance refuses (its answers are not documented, servicenow-api.md §7)
    // must not hold the connection forever: the webhook is gone already, so the deletion finishes
    // and says what is left to do.
    if let Err(error) = servicenow.revoke(&instance, &credentials, &stored.refresh_token).await {
        tracing::warn!(connection = %connection_key, %error, "deleted; removed the webhook, but the instance did not revoke the refresh token");
        let note = format!(
            "The rule and the property were removed, but the instance did not revoke the refresh token ({error}). Revoke it on the instance (System OAuth > Manage Tokens) or let it expire."
        );
        report::publish(
            context,
            connection,
            &[Transition {
                warning: true,
                reason: "TokenNotRevoked".to_owned(),
                action: "Cleanup".to_owned(),
                note,
            }],
        );
        return Ok(Action::await_change());
    }
    tracing::info!(connection = %connection_key, "deleted; removed the webhook and revoked the token");
    Ok(Action::await_change())
}
