//! Step: the identity. The OAuth user's sys_id, user name and display name; the `itil` role
//! (required), `expectedUserName` (enforced), and `email_api_send` when email is asked for.

use super::{
    error::{Stop, classify},
    pipeline::{Halt, Run},
    status::{Truth, Verdict, remove_condition},
};
use crate::{
    api::{Capabilities, ConditionType, Identity, conditions::Reason},
    servicenow::{ErrorKind, InstanceUrl, SecretString, ServiceNow},
};

/// The role every agent identity needs.
pub const ITIL: &str = "itil";
/// The role the Email API needs.
pub const EMAIL_API_SEND: &str = "email_api_send";

/// Runs the step.
pub async fn resolve<S: ServiceNow>(
    run: &mut Run<'_, S>,
    instance: &InstanceUrl,
    access_token: &SecretString,
) -> Result<(), Halt> {
    let servicenow = &run.context.servicenow;
    let user = servicenow
        .current_user(instance, access_token)
        .await
        .map_err(|e| failure(run, ConditionType::IdentityResolved, &e))?;
    let roles = servicenow
        .user_roles(instance, access_token, &user.sys_id)
        .await
        .map_err(|e| failure(run, ConditionType::IdentityResolved, &e))?;
    if let Some(previous) = run
        .status
        .identity
        .as_ref()
        .filter(|previous| previous.sys_id != user.sys_id)
    {
        run.notes.push(super::events::Transition {
            warning: false,
            reason: "IdentityChanged".to_owned(),
            action: ConditionType::IdentityResolved.as_str().to_owned(),
            note: format!(
                "The connection now acts as {:?} ({}) instead of {:?} ({}).",
                user.user_name, user.sys_id, previous.user_name, previous.sys_id
            ),
        });
    }
    run.status.identity = Some(Identity {
        sys_id: user.sys_id.clone(),
        user_name: user.user_name.clone(),
        display_name: (!user.name.is_empty()).then(|| user.name.clone()),
    });
    let spec = &run.connection.spec;
    if let Some(expected) = spec
        .expected_user_name
        .as_deref()
        .filter(|expected| *expected != user.user_name)
    {
        return Err(Stop::terminal(
            ConditionType::IdentityResolved,
            Reason::IdentityMismatch,
            format!(
                "Consent was given as {:?}, but spec.expectedUserName is {expected:?}; nothing is provisioned under the wrong identity.",
                user.user_name
            ),
        )
        .into());
    }
    if !roles.iter().any(|role| role == ITIL) {
        return Err(Stop::terminal(
            ConditionType::IdentityResolved,
            Reason::InsufficientPrivileges,
            format!(
                "The service account {:?} lacks the itil role, which the agent needs to work on tasks.",
                user.user_name
            ),
        )
        .into());
    }
    run.holds(Verdict::new(
        ConditionType::IdentityResolved,
        Truth::True,
        Reason::IdentityResolved,
        format!("Acting as {:?} ({}).", user.user_name, user.sys_id),
    ));
    let email = roles.iter().any(|role| role == EMAIL_API_SEND);
    run.status.capabilities = Some(Capabilities {
        email_via_psa: Some(email),
    });
    if !spec.notifications.email_via_psa {
        remove_condition(&mut run.status.conditions, ConditionType::EmailViaPsa);
        return Ok(());
    }
    if !email {
        return Err(Stop::terminal(
            ConditionType::EmailViaPsa,
            Reason::MissingEmailApiSendRole,
            format!(
                "spec.notifications.emailViaPsa is true but {:?} lacks the email_api_send role.",
                user.user_name
            ),
        )
        .into());
    }
    run.holds(Verdict::new(
        ConditionType::EmailViaPsa,
        Truth::True,
        Reason::EmailApiSendGranted,
        "The service account may send email through the Email API.",
    ));
    Ok(())
}

/// A failed Table API call during `condition`'s step: a 401 means the access token died early
/// (revoked), so it is dropped and the next try refreshes; anything else is classified as usual.
pub fn failure<S>(run: &Run<'_, S>, condition: ConditionType, error: &crate::servicenow::Error) -> Halt {
    if matches!(error.kind, ErrorKind::Unauthorized { .. }) {
        run.context.tokens.forget(&super::key(run.connection));
        return classify(ConditionType::Authorized, Reason::TokenRejected, error).into();
    }
    let fallback = match condition {
        ConditionType::WebhookProvisioned => Reason::ProvisioningFailed,
        _ => Reason::InsufficientPrivileges,
    };
    classify(condition, fallback, error).into()
}
