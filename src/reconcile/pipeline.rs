//! The reconcile of a live connection: the steps in order, then one status write (only when the
//! status changed) and Events for the transitions.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};

use super::{
    Context, Error, FIELD_MANAGER, authorize, backoff,
    error::{Retry, Stop, kube},
    events, identity, key, publish,
    status::{self, Progress, Truth, Verdict},
    webhook,
};
use crate::{
    api::{ConditionType, RECONCILE_REQUESTED_AT, RECONNECT, ServiceNowConnection, conditions::Reason},
    cli::parse_duration,
    servicenow::{InstanceUrl, ServiceNow},
};

/// Why the steps ended early.
pub enum Halt {
    /// An outcome for the status.
    Stop(Stop),
    /// A Kubernetes API failure: retried with backoff.
    Failed(Error),
}

impl From<Stop> for Halt {
    fn from(stop: Stop) -> Self {
        Halt::Stop(stop)
    }
}

impl From<Error> for Halt {
    fn from(error: Error) -> Self {
        Halt::Failed(error)
    }
}

/// What the steps share while they run.
pub struct Run<'a, S> {
    /// The connection.
    pub connection: &'a ServiceNowConnection,
    /// The controller's context.
    pub context: &'a Context<S>,
    /// The status being built (starts as the stored one).
    pub status: crate::api::ServiceNowConnectionStatus,
    /// The conditions decided so far.
    pub verdicts: Vec<Verdict>,
    /// The wall clock at the start of the run.
    pub now: Timestamp,
    /// The earliest moment something is due (token refresh, expiry warning), if any.
    pub due: Option<Instant>,
    /// Events to publish beyond condition transitions (e.g. an identity change).
    pub notes: Vec<events::Transition>,
}

impl<S> Run<'_, S> {
    /// Records a condition that holds.
    pub fn holds(&mut self, verdict: Verdict) {
        self.verdicts.push(verdict);
    }

    /// Brings the next reconcile forward to `at` if it is earlier than what is already due.
    pub fn due_at(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |due| due.min(at)));
    }
}

/// What a person can change on the connection itself — the object (uid), its generation (the
/// spec), annotations (reconcile, reconnect, reconsent requests) and deletion — hashed; its status
/// excluded.
pub fn inputs(connection: &ServiceNowConnection) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    connection.metadata.uid.hash(&mut hash);
    connection.metadata.generation.hash(&mut hash);
    connection.annotations().hash(&mut hash);
    connection.metadata.deletion_timestamp.is_some().hash(&mut hash);
    hash.finish()
}

/// Reconciles a connection that is not being deleted.
pub async fn apply<S: ServiceNow>(connection: &ServiceNowConnection, context: &Context<S>) -> Result<Action, Error> {
    let connection_key = key(connection);
    let inputs = inputs(connection);
    if let Some(rest) = context.backoff.held(&connection_key, inputs, Instant::now()) {
        // Woken by a watch event (often our own status write) while waiting out Retry-After or a
        // backoff delay, and nothing a person controls changed: no call, no write.
        tracing::debug!(connection = %connection_key, wait = ?rest, "still waiting after a transient failure");
        return Ok(Action::requeue(rest));
    }
    let old = connection.status.clone().unwrap_or_default();
    let mut run = Run {
        connection,
        context,
        status: old.clone(),
        verdicts: Vec::new(),
        now: Timestamp::now(),
        due: None,
        notes: Vec::new(),
    };
    let outcome = steps(&mut run).await;
    let Run {
        mut status,
        verdicts,
        now,
        due,
        notes,
        ..
    } = run;
    let generation = connection.metadata.generation;
    for verdict in &verdicts {
        status::set_condition(&mut status.conditions, verdict, generation, now);
    }
    let annotations = connection.annotations();
    status.last_handled_reconcile_at = annotations
        .get(RECONCILE_REQUESTED_AT)
        .cloned()
        .or(old.last_handled_reconcile_at.clone());
    let resync = parse_duration(&connection.spec.resync_interval).unwrap_or(Duration::from_secs(600));
    let action = match outcome {
        Ok(()) => {
            status.last_handled_reconnect_at = annotations.get(RECONNECT).cloned();
            status::summarise(&mut status, Progress::Ready, None, generation, now);
            context.backoff.reset(&connection_key);
            let mut delay = backoff::jittered_resync(resync);
            if let Some(due) = due {
                delay = delay.min(due.saturating_duration_since(Instant::now()));
            }
            Action::requeue(super::capped(delay.max(Duration::from_secs(1))))
        }
        Err(Halt::Stop(stop)) => {
            status::set_condition(&mut status.conditions, &stop.verdict, generation, now);
            status::summarise(&mut status, stop.progress, Some(&stop.verdict), generation, now);
            let wait_out = |delay: Duration| {
                context.backoff.hold(&connection_key, inputs, Instant::now(), delay);
                Action::requeue(delay)
            };
            match stop.retry {
                Retry::After(delay) => wait_out(delay.max(Duration::from_secs(1))),
                Retry::Backoff => wait_out(context.backoff.next_delay(&connection_key)),
                Retry::Resync => Action::requeue(super::capped(backoff::jittered_resync(resync))),
                Retry::OnChange => Action::await_change(),
            }
        }
        Err(Halt::Failed(error)) => return Err(error),
    };
    if status::changed(connection.status.as_ref(), &status) {
        let mut transitions = events::transitions(&old.conditions, &status.conditions);
        transitions.extend(notes);
        write_status(connection, context, &status).await?;
        publish(context, connection, transitions).await;
    }
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str());
    context.metrics.connections.observe(
        &connection.namespace().unwrap_or_default(),
        &connection.name_any(),
        ready.map_or("Unknown", |c| c.status.as_str()),
        status
            .token
            .as_ref()
            .and_then(|t| t.refresh_token_expires_at.as_ref())
            .map(|at| at.0.as_second()),
    );
    Ok(action)
}

async fn steps<S: ServiceNow>(run: &mut Run<'_, S>) -> Result<(), Halt> {
    let connection = run.connection;
    let spec = &connection.spec;
    if spec.suspend {
        return Err(Stop {
            verdict: Verdict::new(
                ConditionType::Ready,
                Truth::False,
                Reason::Suspended,
                "spec.suspend is true: no calls to ServiceNow.",
            ),
            progress: Progress::Suspended,
            retry: Retry::OnChange,
        }
        .into());
    }
    let instance = InstanceUrl::parse(&spec.instance_url).map_err(|error| {
        Stop::terminal(
            ConditionType::Ready,
            Reason::InvalidSpec,
            format!("spec.instanceUrl: {error}."),
        )
    })?;
    parse_duration(&spec.resync_interval).map_err(|error| {
        Stop::terminal(
            ConditionType::Ready,
            Reason::InvalidSpec,
            format!("spec.resyncInterval: {error}."),
        )
    })?;
    let reconnect = connection.annotations().get(RECONNECT);
    if let Some(request) = reconnect.filter(|request| Some(*request) != run.status.last_handled_reconnect_at.as_ref()) {
        run.context.tokens.forget_for_reconnect(&key(connection), request);
    }
    let access_token = authorize::authorize(run, &instance).await?;
    identity::resolve(run, &instance, &access_token).await?;
    webhook::provision(run, &instance, &access_token).await?;
    Ok(())
}

async fn write_status<S>(
    connection: &ServiceNowConnection,
    context: &Context<S>,
    status: &crate::api::ServiceNowConnectionStatus,
) -> Result<(), Error> {
    let api: Api<ServiceNowConnection> =
        Api::namespaced(context.kube.clone(), &connection.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "neoagent.io/v1alpha1",
        "kind": "ServiceNowConnection",
        "status": applied_status(status),
    });
    api.patch_status(
        &connection.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube("write the connection's status"))?;
    Ok(())
}

/// `status` as the reconcile applies it: without `webhook.eventsReceived` and
/// `webhook.lastEventTime`, which the webhook receiver owns (`crate::webhook::counter`, its own
/// field manager, read-modify-write). Applying them, with force, would take them over and put
/// back the count the reconcile started from, losing the events counted in between.
fn applied_status(status: &crate::api::ServiceNowConnectionStatus) -> serde_json::Value {
    let mut applied = serde_json::json!(status);
    if let Some(webhook) = applied.get_mut("webhook").and_then(serde_json::Value::as_object_mut) {
        webhook.remove("eventsReceived");
        webhook.remove("lastEventTime");
    }
    applied
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{ServiceNowConnectionStatus, WebhookStatus};

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
