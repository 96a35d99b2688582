//! Step: the webhook. Reads the Business Rules (current and legacy names, one read) and the
//! callback property (one read), checks who owns the instance, plans with `crate::provision`
//! and executes the plan — the only place that writes to ServiceNow during a reconcile.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{
    error::{Stop, kube},
    identity::failure,
    pipeline::{Halt, Run},
    status::{Truth, Verdict},
};
use crate::{
    api::{ConditionType, WebhookStatus, conditions::Reason},
    provision::{self, Step},
    secrets,
    servicenow::{InstanceUrl, SecretString, ServiceNow},
};

/// The callback URL of a connection: public URL + `/callback/servicenow?connection=<ns>/<name>&token=<t>`.
pub fn callback_url(public_url: &url::Url, namespace: &str, name: &str, token: &SecretString) -> String {
    let mut url = public_url.clone();
    url.set_path(&format!(
        "{}{}",
        public_url.path().trim_end_matches('/'),
        provision::CALLBACK_PATH
    ));
    url.query_pairs_mut()
        .clear()
        .append_pair("connection", &format!("{namespace}/{name}"))
        .append_pair("token", token.expose());
    url.to_string()
}

/// Runs the step.
pub async fn provision<S: ServiceNow>(
    run: &mut Run<'_, S>,
    instance: &InstanceUrl,
    access_token: &SecretString,
) -> Result<(), Halt> {
    let connection = run.connection;
    let context = run.context;
    let namespace = connection.namespace().unwrap_or_default();
    let name = connection.name_any();
    let secrets_api: Api<Secret> = Api::namespaced(context.kube.clone(), &namespace);
    let webhook_token = secrets::ensure_webhook_token(&secrets_api, connection)
        .await
        .map_err(kube("create the webhook token Secret"))?;
    let callback = callback_url(&context.public_url, &namespace, &name, &webhook_token);
    let owner = provision::Owner {
        public_url: context.public_url.to_string(),
        connection: format!("{namespace}/{name}"),
    };
    let desired = provision::desired(&callback, &owner);

    let servicenow = &context.servicenow;
    let rules = servicenow
        .business_rules(
            instance,
            access_token,
            &[provision::RULE_NAME, provision::LEGACY_RULE_NAME],
        )
        .await
        .map_err(|e| failure_on_webhook(run, &e))?;
    let properties = servicenow
        .properties(instance, access_token, provision::PROPERTY_NAME)
        .await
        .map_err(|e| failure_on_webhook(run, &e))?;

    if let Some(other) = provision::claimed_by_other(&properties, &owner, Some(&webhook_token))
        && !connection.spec.webhook.take_over
    {
        return Err(Stop::terminal(
            ConditionType::WebhookProvisioned,
            Reason::InstanceClaimedElsewhere,
            format!(
                "The callback property {} on this instance belongs to {other}.",
                provision::PROPERTY_NAME
            ),
        )
        .into());
    }

    let plan = provision::plan(&rules, &properties, &desired);
    let mut rule_id = provision::kept_rule(&rules).map(|rule| rule.sys_id.clone());
    let mut property_id = provision::kept_property(&properties).map(|property| property.sys_id.clone());
    for step in &plan {
        let result = match step {
            Step::CreateRule => servicenow
                .create_business_rule(instance, access_token, &desired.rule)
                .await
                .map(|rule| rule_id = Some(rule.sys_id)),
            Step::RepairRule { sys_id } => servicenow
                .update_business_rule(instance, access_token, sys_id, &desired.rule)
                .await
                .map(|_| ()),
            Step::DeleteDuplicateRule { sys_id } | Step::DeleteLegacyRule { sys_id } => {
                servicenow.delete_business_rule(instance, access_token, sys_id).await
            }
            Step::CreateProperty => servicenow
                .create_property(instance, access_token, &desired.property)
                .await
                .map(|property| property_id = Some(property.sys_id)),
            Step::UpdateProperty { sys_id } => servicenow
                .update_property(instance, access_token, sys_id, &desired.property)
                .await
                .map(|_| ()),
            Step::DeleteDuplicateProperty { sys_id } => {
                servicenow.delete_property(instance, access_token, sys_id).await
            }
        };
        result.map_err(|e| failure_on_webhook(run, &e))?;
    }

    let webhook = run.status.webhook.get_or_insert_with(WebhookStatus::default);
    let first_time = webhook.business_rule_sys_id.is_none();
    webhook.business_rule_sys_id = rule_id;
    webhook.callback_property_sys_id = property_id;
    let already_true = run
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::WebhookProvisioned.as_str() && c.status == "True");
    if plan.is_empty() && already_true {
        // Steady state: nothing written, and the condition (a past repair included) stays as it is.
        return Ok(());
    }
    let (reason, message) = if plan.iter().any(|step| matches!(step, Step::DeleteLegacyRule { .. })) {
        (
            Reason::LegacyRuleRemoved,
            format!(
                "Provisioned; removed the legacy rule {:?}.",
                provision::LEGACY_RULE_NAME
            ),
        )
    } else if !plan.is_empty() && !first_time {
        (
            Reason::DriftRepaired,
            format!("Repaired on the instance: {}.", provision::describe(&plan)),
        )
    } else {
        (
            Reason::Provisioned,
            format!(
                "Business Rule {:?} on task and property {} are in place.",
                provision::RULE_NAME,
                provision::PROPERTY_NAME
            ),
        )
    };
    run.holds(Verdict::new(
        ConditionType::WebhookProvisioned,
        Truth::True,
        reason,
        message,
    ));
    Ok(())
}

fn failure_on_webhook<S>(run: &Run<'_, S>, error: &crate::servicenow::Error) -> Halt {
    failure(run, ConditionType::WebhookProvisioned, error)
}
