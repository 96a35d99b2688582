//! Controller wiring: watch connections and the metadata of Secrets (never their values), map a
//! Secret change to the connections that reference it through an index kept in step with the
//! connection watch ([`index::SecretIndex`]: one lookup per event, not a scan of every
//! connection), reconcile with bounded concurrency. A change to a connection wakes its
//! reconcile only when something the reconcile reads of the object changed ([`trigger`]):
//! status writes — the reconcile's own, and the webhook receiver's event counts every few
//! seconds — and its finalizer (added by the reconcile, which carries on) cost no call to
//! ServiceNow.
//!
//! The Secret watch is not narrowed to the operator's label
//! ([`crate::secrets::ownership::MANAGED_BY_LABEL`]), because two kinds of Secret that must wake
//! a connection carry no label of ours: the user's credentials Secret (a rotated client secret
//! is verified at once), and a stranger's Secret sitting on a token or webhook Secret name (the
//! connection stops on `SecretNotOwned` until that Secret is removed or labelled, and must
//! carry on as soon as it is). It watches metadata only: the values are those the reconciles
//! read or wrote themselves, kept in [`SecretCache`], which this watch keeps in step (each value
//! is used only at the latest `resourceVersion` the watch has seen) before it maps an event to
//! the connections to wake — not those that concluded from that version already.

mod backoff;
mod index;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Config,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use crate::{
    api::ServiceNowConnection,
    reconcile::{self, Context},
    secrets::SecretCache,
    servicenow::ServiceNow,
    sync::LockExt as _,
};

/// How long the connections' reconciles wait, at the start, for the Secret watch's first list:
/// as controller-runtime starts no worker before its caches are synced, a first reconcile
/// decides from a complete view of the Secrets (the webhook Secret the watch did not list need
/// not be asked for before it is created). Past it — the watch refused, say — they run without.
const SECRET_LIST_GRACE: Duration = Duration::from_secs(30);

/// The connections a Secret watch event wakes: those that read `secret` ([`index`]) and have
/// not concluded from the version the event carries already — a version a connection wrote
/// itself, or read before the event came, wakes nothing; a change by anyone else, and a
/// deletion (the cache forgot what the readers used), wakes every reader.
fn connections_to_wake(
    index: &Mutex<index::SecretIndex>,
    cache: &Mutex<SecretCache>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<ServiceNowConnection>> {
    let readers = index
        .locked()
        .connections_using(&secret.namespace().unwrap_or_default(), &secret.name_any());
    let woken = cache.locked().stale_readers(&secret.metadata, readers);
    if !woken.is_empty() {
        tracing::debug!(
            secret = %format!("{}/{}", secret.namespace().unwrap_or_default(), secret.name_any()),
            version = secret.resource_version().unwrap_or_default(),
            connections = woken.len(),
            "a Secret changed: waking the connections that read it"
        );
    }
    woken
}

/// Drops what the reconcile never reads before a connection enters the cache: its
/// `metadata.managedFields` (the field managers' records — the creator's, the operator's, the
/// webhook counter's — as large as the rest of the object), which the cache would otherwise hold
/// for every connection. Spec, status, labels and annotations stay: the reconcile reads them.
fn without_managed_fields(connection: &mut ServiceNowConnection) {
    connection.metadata.managed_fields = None;
}

/// What of a connection wakes its reconcile: what a person can change on it
/// ([`reconcile::inputs`]). Its status is not part of it, nor its finalizers: the first
/// reconcile adds the finalizer and carries on, so the change need not wake another (a
/// finalizer someone removed is added again by the next reconcile).
fn trigger(connection: &ServiceNowConnection) -> Option<u64> {
    Some(reconcile::inputs(connection))
}

/// Runs the controller until `shutdown` resolves: over all namespaces, or one controller per
/// namespace of `namespaces` (each with its own watches and cache, `concurrency` each: a
/// reflector's store is fed by one watcher whose re-list replaces its contents, so the watches of
/// several namespaces cannot share one). `on_synced` is called once every connection cache has
/// its first full list.
pub async fn run<S: ServiceNow>(
    client: Client,
    namespaces: &[String],
    concurrency: u16,
    context: Arc<Context<S>>,
    on_synced: impl FnOnce() + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scopes: Vec<_> = if namespaces.is_empty() {
        vec![(Api::all(client.clone()), Api::all(client))]
    } else {
        namespaces
            .iter()
            .map(|ns| (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)))
            .collect()
    };
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for (connections, secret_metadata) in scopes {
        let (store, controller) = scope(
            connections,
            secret_metadata,
            concurrency,
            shutdown.clone(),
            context.clone(),
        );
        stores.push(store);
        controllers.push(controller);
    }
    tokio::spawn(async move {
        // The store's readiness signal wakes only its last waiter (the controller's runner), so
        // look again now and then rather than wait once.
        for store in stores {
            loop {
                match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
        }
        on_synced();
    });
    futures::future::join_all(controllers).await;
}

/// One controller over the connections of `connections` and the Secrets of `secret_metadata`
/// (one namespace, or all): its cache, and its run until `shutdown`.
fn scope<S: ServiceNow>(
    connections: Api<ServiceNowConnection>,
    secret_metadata: Api<PartialObjectMeta<Secret>>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    context: Arc<Context<S>>,
) -> (Store<ServiceNowConnection>, impl Future<Output = ()>) {
    let (store, writer) = reflector::store();
    let scope_namespace = secret_metadata.namespace().map(str::to_owned);
    let (secrets_listed, listed) = tokio::sync::watch::channel(false);
    let first_listed = listed.clone();
    let listed_by = tokio::time::Instant::now() + SECRET_LIST_GRACE;
    let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = Arc::new(Mutex::new(index::SecretIndex::default()));
    let indexed = readers.clone();
    let changes = watcher(connections, watcher::Config::default().any_semantic())
        .backoff(backoff::watch_backoff())
        .modify(without_managed_fields)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                indexed.locked().apply(event);
            }
        })
        .applied_objects()
        .predicate_filter(trigger, Default::default())
        .then(move |change| {
            let (mut listed, warned) = (listed.clone(), warned.clone());
            async move {
                let waited = tokio::time::timeout_at(listed_by, listed.wait_for(|listed| *listed)).await;
                if waited.is_err() && !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "the Secret watch has not listed its Secrets within {SECRET_LIST_GRACE:?}: reconciling without it"
                    );
                }
                change
            }
        });
    // kube-runtime retries the merged trigger streams too, after any error of one of them (a 410
    // Expired once the API server is back, say), with a backoff of its own: bounded the same way,
    // or it grows to 30 s during an outage and a change waits a minute after it.
    let controller = Controller::for_stream(changes, store.clone())
        .with_config(Config::default().concurrency(concurrency))
        .trigger_backoff(backoff::watch_backoff());
    // The Secret watch (retried as the connection watch is) keeps the Secret cache in step
    // (latest versions, deletions, re-lists) before its events are mapped to the connections to
    // wake.
    let observed = context.clone();
    let secret_changes = watcher(secret_metadata, watcher::Config::default().any_semantic())
        .backoff(backoff::watch_backoff())
        .inspect(move |event| {
            if let Ok(event) = event {
                observed.secrets.locked().observe(scope_namespace.as_deref(), event);
                if matches!(event, watcher::Event::InitDone) {
                    secrets_listed.send_replace(true);
                }
            }
        })
        .touched_objects()
        // The first list's Secrets wake nobody: every connection is reconciled once it is done,
        // on its own watch's event.
        .filter(move |_| std::future::ready(*first_listed.borrow()));
    let cache = context.clone();
    let run = controller
        .watches_stream(secret_changes, move |secret| {
            connections_to_wake(&readers, &cache.secrets, &secret)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        });
    (store, run)
}
