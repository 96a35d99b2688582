//! Controller wiring: watch connections and the metadata of Secrets (never their values), map a
//! Secret change to the connections that reference it, reconcile with bounded concurrency.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller,
        controller::Config,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use crate::{
    api::ServiceNowConnection,
    reconcile::{self, Context},
    secrets,
    servicenow::ServiceNow,
};

/// The connections that reference the Secret `secret` (credentials, token or webhook Secret).
pub fn connections_using(
    store: &Store<ServiceNowConnection>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<ServiceNowConnection>> {
    let (name, namespace) = (secret.name_any(), secret.namespace());
    store
        .state()
        .iter()
        .filter(|connection| connection.namespace() == namespace)
        .filter(|connection| {
            connection.spec.credentials_secret_ref.name == name
                || secrets::token_secret_name(connection) == name
                || secrets::webhook_secret_name(connection) == name
        })
        .map(|connection| ObjectRef::from_obj(connection.as_ref()))
        .collect()
}

/// Runs the controller until `shutdown` resolves. `on_synced` is called once the connection
/// cache has its first full list.
pub async fn run<S: ServiceNow>(
    client: Client,
    namespace: Option<&str>,
    concurrency: u16,
    context: Arc<Context<S>>,
    on_synced: impl FnOnce() + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (connections, secret_metadata) = match namespace {
        Some(ns) => (
            Api::<ServiceNowConnection>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Secret>>::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let controller = Controller::new(connections, watcher::Config::default().any_semantic())
        .with_config(Config::default().concurrency(concurrency));
    let store = controller.store();
    let mapper_store = store.clone();
    tokio::spawn(async move {
        // The store's readiness signal wakes only its last waiter (the controller's runner), so
        // look again now and then rather than wait once.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                Ok(Ok(())) => break on_synced(),
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
    });
    controller
        .watches(
            secret_metadata,
            watcher::Config::default().any_semantic(),
            move |secret| connections_using(&mapper_store, &secret),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}
