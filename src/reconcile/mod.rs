//! One connection's reconcile, by phase (see ARCHITECTURE.md):
//!
//! 1. [`gather`] — all reads: the connection's Secrets, an access token (memory or one refresh),
//!    the OAuth user and roles, the webhook records on the instance;
//! 2. [`decide`] — pure: the writes to make and the status they lead to (every condition reason
//!    is decided there);
//! 3. [`act`] — the writes: the token Secret, the access-token cache, the instance;
//! 4. [`decide::conclude`] then [`report`] — the final status, written only when it changed, its
//!    Events and gauges.
//!
//! Deletion runs [`cleanup`] behind a finalizer, which the first reconcile adds before it carries
//! on. Shared state: [`tokens`] (access tokens in memory), the Secret cache
//! ([`crate::secrets::cache`]), [`backoff`] (per-connection failure counts and holds); pure helpers: [`status`]
//! (conditions and the kstatus summary), [`events`] (which transitions deserve an Event).

pub mod act;
pub mod backoff;
pub mod cleanup;
pub mod decide;
pub mod error;
pub mod events;
pub mod gather;
pub mod report;
pub mod status;
pub mod tokens;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::Reporter,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};

pub use error::Error;

use crate::{api::ServiceNowConnection, servicenow::ServiceNow, sync::LockExt as _, telemetry::Metrics};

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
    /// Who publishes the Kubernetes Events (a recorder is made for each reconcile's Events:
    /// kube-runtime's keeps every Event it published for 6 minutes, 1.4 KiB each in its table,
    /// to count repeats — 47 MiB at 6,000 connections provisioning, for repeats a reconcile that
    /// posts only transitions seldom makes).
    pub reporter: Reporter,
    /// Per-connection failure counts for backoff.
    pub backoff: backoff::Backoff,
    /// Access tokens in memory.
    pub tokens: tokens::TokenCache,
    /// The Secrets reconciles read or wrote, and what the Secret watch has seen of them.
    pub secrets: std::sync::Mutex<crate::secrets::SecretCache>,
    /// The key that signs consent tickets (and states: the same on every replica).
    pub state_key: crate::servicenow::SecretString,
}

impl<S: ServiceNow> Context<S> {
    /// The Secrets of `connection`'s namespace, as its reconcile reads and writes them.
    pub fn secrets_of(&self, connection: &ServiceNowConnection) -> crate::secrets::Secrets<'_> {
        crate::secrets::Secrets::cached(self.kube.clone(), &self.secrets, connection)
    }

    /// A context for the controller.
    pub fn new(
        kube: kube::Client,
        servicenow: S,
        public_url: url::Url,
        metrics: Metrics,
        state_key: crate::servicenow::SecretString,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            reporter,
            kube,
            servicenow,
            public_url,
            metrics,
            backoff: Default::default(),
            tokens: Default::default(),
            secrets: Default::default(),
            state_key,
        }
    }
}

pub use crate::api::{key, split_key};

/// Reconciles one connection (kube-runtime's reconciler).
pub async fn reconcile<S: ServiceNow>(
    connection: Arc<ServiceNowConnection>,
    context: Arc<Context<S>>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    // At `debug`, one line per reconcile; kube-runtime's span around it names what woke it
    // (`object.reason`).
    tracing::debug!(connection = %key(&connection), "reconciling");
    let namespace = connection.namespace().unwrap_or_default();
    let api: Api<ServiceNowConnection> = Api::namespaced(context.kube.clone(), &namespace);
    let result = async {
        let secrets = context.secrets_of(&connection);
        // kube-runtime's helper would add the finalizer and wait for the watch to bring the
        // change back; adding it here lets the same reconcile carry on (the helper then applies).
        // A first reconcile reads the connection's Secrets meanwhile.
        let connection = if needs_finalizer(&connection) {
            let prefetch = async {
                if decide::validate(&connection.spec).is_ok() {
                    crate::secrets::prefetch(&secrets, &connection).await;
                }
            };
            let (patched, ()) = tokio::join!(add_finalizer(&api, &connection), prefetch);
            Arc::new(patched?)
        } else {
            connection
        };
        finalizer(&api, FINALIZER, connection, |event| async {
            match event {
                FinalizerEvent::Apply(connection) => apply(&connection, &context, &secrets).await,
                FinalizerEvent::Cleanup(connection) => {
                    let action = cleanup::cleanup(&connection, &context).await?;
                    // The connection is gone: so are its access token, failure count, any hold and
                    // its metrics.
                    let connection_key = key(&connection);
                    context.tokens.remove(&connection_key);
                    context.backoff.reset(&connection_key);
                    let (namespace, name) = (connection.namespace().unwrap_or_default(), connection.name_any());
                    context.secrets.locked().forget_connection(&namespace, &name);
                    context.metrics.connections.forget(&namespace, &name);
                    Ok(action)
                }
            }
        })
        .await
        .map_err(|error| Error::Finalizer(Box::new(error)))
        // The watch event that would have woken it was held while it wrote.
        .map(|action| {
            if secrets.changed_while_writing() {
                Action::requeue(Duration::ZERO)
            } else {
                action
            }
        })
    }
    .await;
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

/// `true` when `connection` is not being deleted and lacks the finalizer.
fn needs_finalizer(connection: &ServiceNowConnection) -> bool {
    connection.metadata.deletion_timestamp.is_none() && !connection.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds the finalizer to `connection`, conditional on the version read (a newer one is refused,
/// 409, and its watch event wakes the reconcile again): the patched connection.
async fn add_finalizer(
    api: &Api<ServiceNowConnection>,
    connection: &ServiceNowConnection,
) -> Result<ServiceNowConnection, Error> {
    let mut finalizers = connection.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": connection.resource_version(),
        "finalizers": finalizers,
    }});
    api.patch(&connection.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|error| Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(error))))
}

/// How soon a reconcile that met a stale cached connection looks again, should the watch event
/// that normally wakes it not come.
const STALE_CACHE_RETRY: Duration = Duration::from_secs(2);

/// kube-runtime's error policy: per-connection exponential backoff with jitter — except for a
/// conditional write (the finalizer patch, the status) refused because the cache lagged behind,
/// which is no failure.
pub fn error_policy<S: ServiceNow>(
    connection: Arc<ServiceNowConnection>,
    error: &Error,
    context: Arc<Context<S>>,
) -> Action {
    if error.is_stale_cache() {
        tracing::debug!(connection = %key(&connection), %error, "the cached connection was stale; waiting for the watch");
        return Action::requeue(STALE_CACHE_RETRY);
    }
    if error.needs_a_person() {
        // Retrying at once changes nothing: look again at the resync period (or on a change).
        let every = crate::api::duration::parse(&connection.spec.resync_interval).unwrap_or(Duration::from_secs(600));
        tracing::warn!(connection = %key(&connection), %error, retry_in = ?every, "cleanup needs a person");
        return Action::requeue(capped(every));
    }
    let delay = context.backoff.next_delay(&key(&connection));
    tracing::warn!(connection = %key(&connection), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
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

/// Reconciles a connection that is not being deleted: gather (its Secrets through `secrets`) →
/// decide → act → conclude → report.
pub async fn apply<S: ServiceNow>(
    connection: &ServiceNowConnection,
    context: &Context<S>,
    secrets: &crate::secrets::Secrets<'_>,
) -> Result<Action, Error> {
    let connection_key = key(connection);
    let inputs = inputs(connection);
    if let Some(rest) = context.backoff.held(&connection_key, inputs, Instant::now()) {
        // Woken by a watch event (often our own status write) while waiting out Retry-After or a
        // backoff delay, and nothing a person controls changed: no call, no write.
        tracing::debug!(connection = %connection_key, wait = ?rest, "still waiting after a transient failure");
        return Ok(Action::requeue(rest));
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let instance = decide::validate(&connection.spec).ok();
    let gathered = match &instance {
        Some(instance) => gather::gather(connection, context, secrets, instance).await?,
        None => gather::Gathered::default(),
    };
    let plan = decide::decide(connection, &gathered, &context.public_url, now);
    let outcome = match &instance {
        Some(instance) => {
            let token = gathered.access.as_ref().and_then(|a| a.as_ref().ok()).map(|a| &a.token);
            let credentials = gathered.credentials.as_ref().and_then(|c| c.as_ref().ok());
            act::act(connection, context, secrets, instance, credentials, token, &plan).await?
        }
        None => decide::Outcome::default(),
    };
    let conclusion = decide::conclude(connection, plan, outcome, now);
    report::report(connection, context, &conclusion).await?;
    Ok(next_action(context, &connection_key, inputs, conclusion.next))
}

/// The requeue for `next`: jittered resync (sooner when something is due), or the stop's retry —
/// waited out without calls or writes (`backoff.hold`) for Retry-After and backoff delays.
fn next_action<S>(context: &Context<S>, connection_key: &str, inputs: u64, next: decide::Next) -> Action {
    use decide::{Next, Retry};
    let wait_out = |delay: Duration| {
        context.backoff.hold(connection_key, inputs, Instant::now(), delay);
        Action::requeue(delay)
    };
    match next {
        Next::Resync { every, due } => {
            context.backoff.reset(connection_key);
            let mut delay = backoff::jittered_resync(every);
            if let Some(due) = due {
                delay = delay.min(due);
            }
            Action::requeue(capped(delay.max(Duration::from_secs(1))))
        }
        Next::Stopped { retry, every } => match retry {
            Retry::After(delay) => wait_out(delay.max(Duration::from_secs(1))),
            Retry::Backoff => wait_out(context.backoff.next_delay(connection_key)),
            Retry::Resync => Action::requeue(capped(backoff::jittered_resync(every))),
            Retry::OnChange => Action::await_change(),
            Retry::ChangeOrAfter(delay) => Action::requeue(capped(delay.max(Duration::from_secs(1)))),
        },
    }
}

/// Caps a requeue delay so a very long resync interval still re-checks daily.
pub fn capped(delay: Duration) -> Duration {
    delay.min(Duration::from_secs(24 * 3600))
}
