//! One connection's reconcile, as a pipeline: the spec is checked (`validate`), credentials and
//! tokens read and refreshed (`authorize`), the identity resolved (`identity`), the webhook
//! planned and written (`webhook` + `crate::provision`), and the status computed (`status`) and
//! written only when it changed. Deletion runs `cleanup` behind a finalizer.

pub mod authorize;
pub mod backoff;
pub mod cleanup;
pub mod error;
pub mod events;
pub mod identity;
pub mod pipeline;
pub mod status;
pub mod tokens;
pub mod webhook;

use std::{sync::Arc, time::Duration};

use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Recorder, Reporter},
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};

pub use error::Error;

use crate::{api::ServiceNowConnection, servicenow::ServiceNow, telemetry::Metrics};

/// The finalizer that holds a connection until its rule, property and token are cleaned up.
pub const FINALIZER: &str = "neoagent.io/cleanup";
/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "servicenow-operator";

/// What every reconcile shares.
pub struct Context<S> {
    /// The Kubernetes client.
    pub kube: kube::Client,
    /// The ServiceNow client.
    pub servicenow: S,
    /// The operator's public base URL (consent and webhook endpoints).
    pub public_url: url::Url,
    /// Metrics.
    pub metrics: Metrics,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Per-connection failure counts for backoff.
    pub backoff: backoff::Backoff,
    /// Access tokens in memory.
    pub tokens: tokens::TokenCache,
}

impl<S: ServiceNow> Context<S> {
    /// A context for the controller.
    pub fn new(kube: kube::Client, servicenow: S, public_url: url::Url, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(kube.clone(), reporter),
            kube,
            servicenow,
            public_url,
            metrics,
            backoff: Default::default(),
            tokens: Default::default(),
        }
    }
}

/// The key of a connection in the per-connection maps: `namespace/name`.
pub fn key(connection: &ServiceNowConnection) -> String {
    format!(
        "{}/{}",
        connection.namespace().unwrap_or_default(),
        connection.name_any()
    )
}

/// A connection's `namespace/name` split in two, when both are names the API server could hold
/// (DNS-1123: lower-case letters, digits, `-` and `.`, starting and ending with a letter or
/// digit, at most 253); anything else names no connection and is never sent to the API server.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    let is_name = |part: &str| {
        part.len() <= 253
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    key.split_once('/')
        .filter(|(namespace, name)| is_name(namespace) && is_name(name))
}

/// Reconciles one connection (kube-runtime's reconciler).
pub async fn reconcile<S: ServiceNow>(
    connection: Arc<ServiceNowConnection>,
    context: Arc<Context<S>>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let namespace = connection.namespace().unwrap_or_default();
    let api: Api<ServiceNowConnection> = Api::namespaced(context.kube.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, connection, |event| async {
        match event {
            FinalizerEvent::Apply(connection) => pipeline::apply(&connection, &context).await,
            FinalizerEvent::Cleanup(connection) => {
                let action = cleanup::cleanup(&connection, &context).await?;
                // The connection is gone: so are its access token, failure count, any hold and
                // its metrics.
                let connection_key = key(&connection);
                context.tokens.remove(&connection_key);
                context.backoff.reset(&connection_key);
                context
                    .metrics
                    .connections
                    .forget(&connection.namespace().unwrap_or_default(), &connection.name_any());
                Ok(action)
            }
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)));
    context
        .metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    context
        .metrics
        .reconciles
        .get_or_create(&crate::telemetry::ReconcileLabels { outcome })
        .inc();
    result
}

/// How soon a reconcile that met a stale cached connection looks again, should the watch event
/// that normally wakes it not come.
const STALE_CACHE_RETRY: Duration = Duration::from_secs(2);

/// kube-runtime's error policy: per-connection exponential backoff with jitter — except for a
/// finalizer patch refused because the cache lagged behind, which is no failure.
pub fn error_policy<S: ServiceNow>(
    connection: Arc<ServiceNowConnection>,
    error: &Error,
    context: Arc<Context<S>>,
) -> Action {
    if error.is_stale_finalizer_patch() {
        tracing::debug!(connection = %key(&connection), %error, "the cached connection was stale; waiting for the watch");
        return Action::requeue(STALE_CACHE_RETRY);
    }
    let delay = context.backoff.next_delay(&key(&connection));
    tracing::warn!(connection = %key(&connection), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Publishes `transitions` as Events on `connection` (best effort: a failed Event is logged).
pub async fn publish<S>(context: &Context<S>, connection: &ServiceNowConnection, transitions: Vec<events::Transition>) {
    use kube::runtime::events::{Event, EventType};
    let reference = connection.object_ref(&());
    for transition in transitions {
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason,
            note: Some(transition.note),
            action: transition.action,
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            tracing::warn!(connection = %key(connection), %error, "failed to publish an Event");
        }
    }
}

/// Caps a requeue delay so a very long resync interval still re-checks daily.
pub fn capped(delay: Duration) -> Duration {
    delay.min(Duration::from_secs(24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn a_key_splits_into_a_namespace_and_a_name_the_api_server_could_hold() {
        assert_eq!(split_key("itsm/acme"), Some(("itsm", "acme")));
        assert_eq!(split_key("t-1/acme.prod-2"), Some(("t-1", "acme.prod-2")));
        for refused in [
            "",
            "acme",
            "/acme",
            "itsm/",
            "itsm/acme/x",
            "itsm/Acme",
            "itsm/a b",
            "../acme",
            "itsm/-a",
            "itsm/a?b",
        ] {
            assert_eq!(split_key(refused), None, "{refused:?}");
        }
        assert_eq!(split_key(&format!("itsm/{}", "a".repeat(254))), None);
    }
}
