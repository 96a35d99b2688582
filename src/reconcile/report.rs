//! Phase 4, report: the one status write of a reconcile (only when the status changed, by
//! server-side apply under the operator's field manager), its Events, and the per-connection
//! gauges.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};

use super::{Context, Error, FIELD_MANAGER, decide::Conclusion, error::kube, events::Transition, key, status};
use crate::api::{ConditionType, ServiceNowConnection, ServiceNowConnectionStatus};

/// Writes `conclusion`'s status when it differs from the stored one, then publishes its Events,
/// and updates the connection's gauges.
pub async fn report<S>(
    connection: &ServiceNowConnection,
    context: &Context<S>,
    conclusion: &Conclusion,
) -> Result<(), Error> {
    let new = &conclusion.status;
    if status::changed(connection.status.as_ref(), new) {
        write_status(connection, context, new).await?;
        publish(context, connection, &conclusion.events);
    }
    let ready = new.conditions.iter().find(|c| c.type_ == ConditionType::Ready.as_str());
    context.metrics.connections.observe(
        &connection.namespace().unwrap_or_default(),
        &connection.name_any(),
        ready.map_or("Unknown", |c| c.status.as_str()),
        new.token
            .as_ref()
            .and_then(|t| t.refresh_token_expires_at.as_ref())
            .map(|at| at.0.as_second()),
    );
    Ok(())
}

/// Publishes `transitions` as Events on `connection`, in order, off the reconcile's path (best
/// effort, as client-go's recorder: a failed Event is logged, and the reconcile does not wait for
/// the API server to store them — two to three POSTs a first provisioning would otherwise add to
/// every connection's latency). Each is a new Event: only transitions are posted, so the repeats
/// a recorder's memory would count as a series are rare, and that memory grew with every
/// connection ([`Context::reporter`]).
pub fn publish<S>(context: &Context<S>, connection: &ServiceNowConnection, transitions: &[Transition]) {
    use kube::runtime::events::{Event, EventType};
    if transitions.is_empty() {
        return;
    }
    let events: Vec<Event> = transitions
        .iter()
        .map(|transition| Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.clone(),
            note: Some(transition.note.clone()),
            action: transition.action.clone(),
            secondary: None,
        })
        .collect();
    let reference = connection.object_ref(&());
    let recorder = kube::runtime::events::Recorder::new(context.kube.clone(), context.reporter.clone());
    let connection_key = key(connection);
    tokio::spawn(async move {
        for event in &events {
            if let Err(error) = recorder.publish(event, &reference).await {
                tracing::warn!(connection = %connection_key, %error, "failed to publish an Event");
            }
        }
    });
}

/// Applies `status`, conditional on the version of `connection` the reconcile started from: a
/// reconcile that ran on a cached connection older than the stored one (the cache lags behind a
/// write made a moment ago, a status with a consent ticket in it, say) is refused, 409, rather
/// than undo that write with what it decided from the older one.
async fn write_status<S>(
    connection: &ServiceNowConnection,
    context: &Context<S>,
    status: &ServiceNowConnectionStatus,
) -> Result<(), Error> {
    let api: Api<ServiceNowConnection> =
        Api::namespaced(context.kube.clone(), &connection.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "neoagent.io/v1alpha1",
        "kind": "ServiceNowConnection",
        "metadata": {"resourceVersion": connection.resource_version()},
        "status": applied_status(status),
    });
    match api
        .patch_status(
            &connection.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(refused)) if refused.code == 409 => Err(Error::StaleStatus),
        Err(error) => Err(kube("write the connection's status")(error)),
    }
}

/// `status` as the reconcile applies it: without `webhook.eventsReceived` and
/// `webhook.lastEventTime`, which the webhook receiver owns (`crate::webhook::counter`, its own
/// field manager, read-modify-write). Applying them, with force, would take them over and put
/// back the count the reconcile started from, losing the events counted in between.
fn applied_status(status: &ServiceNowConnectionStatus) -> serde_json::Value {
    let mut applied = serde_json::json!(status);
    if let Some(webhook) = applied.get_mut("webhook").and_then(serde_json::Value::as_object_mut) {
        webhook.remove("eventsReceived");
        webhook.remove("lastEventTime");
    }
    applied
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;
    use crate::api::WebhookStatus;

    #[test]
    fn the_reconcile_never_applies_the_receivers_fields() {
        let status = ServiceNowConnectionStatus {
            webhook: Some(WebhookStatus {
                business_rule_sys_id: Some("rule".into()),
                callback_property_sys_id: Some("property".into()),
                last_event_time: Some(Time(Timestamp::UNIX_EPOCH)),
                events_received: 3,
            }),
            ..ServiceNowConnectionStatus::default()
        };
        assert_eq!(
            applied_status(&status)["webhook"],
            serde_json::json!({"businessRuleSysId": "rule", "callbackPropertySysId": "property"})
        );
        assert_eq!(
            applied_status(&ServiceNowConnectionStatus::default()),
            serde_json::json!({})
        );
    }
}
