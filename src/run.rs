//! Startup wiring of `run`: clients, the controller, the listeners, and shutdown on a signal.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{
    cli::{ControllerArgs, HttpArgs, RunArgs, ServiceNowArgs},
    controller,
    http::{self, admin::AdminState, consent::ConsentContext},
    reconcile::Context,
    secrets, servicenow,
    telemetry::{self, Metrics},
    webhook::Receiver,
};

/// How long the webhook events queued when the operator is asked to stop may take to reach their
/// sinks (inside Kubernetes' default termination grace period of 30 s).
pub const FORWARD_GRACE: Duration = Duration::from_secs(10);

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable Kubernetes configuration.
    #[error("failed to configure the Kubernetes client (in-cluster or KUBECONFIG): {0}")]
    Kube(#[source] kube::Error),
    /// The ServiceNow client or the webhook sink client could not be built (e.g. an unreadable
    /// CA bundle).
    #[error("failed to configure the HTTP client: {0}")]
    HttpClient(#[source] servicenow::Error),
    /// The consent-state key could not be read or created.
    #[error("failed to read or create the consent-state key Secret {secret}: {source}")]
    StateKey {
        /// `namespace/name` of the Secret.
        secret: String,
        /// Why.
        source: kube::Error,
    },
    /// Leader election could not start.
    #[error("failed to start leader election: {0}")]
    Lease(String),
    /// A listener failed.
    #[error("failed to serve HTTP on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), StartError> {
    let RunArgs {
        http: http_args,
        servicenow: servicenow_args,
        controller: controller_args,
        telemetry: telemetry_args,
    } = args;
    telemetry::init_logging(&telemetry_args);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let HttpArgs {
        public_url,
        listen,
        admin_listen,
        operator_namespace,
        state_key_secret,
    } = http_args;
    let ControllerArgs {
        concurrency,
        namespace,
        leader_election,
        lease_name,
        lease_duration,
    } = controller_args;
    let ServiceNowArgs {
        ca_bundle,
        resolve,
        request_timeout,
        refresh_token_lifespan,
    } = servicenow_args;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let client_config = servicenow::ClientConfig {
        ca_bundle,
        resolve,
        request_timeout,
        observer: Arc::new(metrics.clone()),
    };
    let sink_client = servicenow::http::outbound_client(&client_config).map_err(StartError::HttpClient)?;
    let servicenow = servicenow::Client::new(client_config).map_err(StartError::HttpClient)?;
    let client = kube::Client::try_default().await.map_err(StartError::Kube)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_check = stop_rx.clone();
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let ready = Arc::new(AtomicBool::new(false));
    let admin = http::admin::router(AdminState {
        ready: ready.clone(),
        registry: Arc::new(registry),
    });
    let admin_server = tokio::spawn(http::serve(admin_listen, admin, stopped()));

    // An empty POD_NAMESPACE counts as unset.
    let operator_namespace = operator_namespace
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &operator_namespace);
    let state_key = secrets::ensure_state_key(&secrets_api, &state_key_secret)
        .await
        .map_err(|source| StartError::StateKey {
            secret: format!("{operator_namespace}/{state_key_secret}"),
            source,
        })?;
    let consent = http::consent::router(Arc::new(ConsentContext {
        kube: client.clone(),
        servicenow: servicenow.clone(),
        public_url: public_url.clone(),
        state_key: state_key.clone(),
        refresh_token_lifespan,
    }));
    let receiver = Arc::new(Receiver::new(
        client.clone(),
        namespace.clone(),
        sink_client,
        metrics.webhook.clone(),
    ));
    let counter = receiver.counter();
    // The counts are written a last time once the public listener has stopped taking events.
    let (public_stopped, counting_stop) = tokio::sync::oneshot::channel::<()>();
    let counting = tokio::spawn(async move {
        counter
            .run(async {
                let _ = counting_stop.await;
            })
            .await;
    });
    let public = http::with_security_headers(consent.merge(http::receiver::router(receiver.clone())));
    let public_server = tokio::spawn(http::serve(listen, public, stopped()));

    let context = Arc::new(Context::new(client.clone(), servicenow, public_url, metrics, state_key));
    if !leader_election {
        let synced = move || ready.store(true, Ordering::Release);
        controller::run(client, namespace.as_deref(), concurrency, context, synced, stopped()).await;
    } else {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
        let seconds = lease_duration.as_secs();
        let (mut leader, lease_task) = LeaseManagerBuilder::new(client.clone(), &lease_name)
            .with_namespace(&operator_namespace)
            .with_identity(&identity)
            .with_duration(seconds)
            .with_grace((seconds / 3).max(1))
            .build()
            .await
            .map_err(|source| StartError::Lease(source.to_string()))?
            .watch()
            .await;
        let mut stop = Box::pin(stopped());
        loop {
            // Standby: serve HTTP, reconcile nothing, until this replica leads or the operator stops.
            ready.store(true, Ordering::Release);
            tracing::info!(%identity, lease = %lease_name, "standing by for leadership");
            let leads = async {
                while !*leader.borrow_and_update() {
                    if leader.changed().await.is_err() {
                        return false;
                    }
                }
                true
            };
            let became_leader = tokio::select! {
                leads = leads => leads,
                () = &mut stop => false,
            };
            if !became_leader {
                break;
            }
            tracing::info!(%identity, "leading: starting the controller");
            ready.store(false, Ordering::Release);
            let synced = {
                let ready = ready.clone();
                move || ready.store(true, Ordering::Release)
            };
            let mut lost = leader.clone();
            let stopped_or_lost = {
                let stopped = stopped();
                async move {
                    tokio::select! {
                        () = stopped => {}
                        _ = lost.wait_for(|leads| !*leads) => {}
                    }
                }
            };
            controller::run(
                client.clone(),
                namespace.as_deref(),
                concurrency,
                context.clone(),
                synced,
                stopped_or_lost,
            )
            .await;
            if stop_requested(&stop_check) {
                break;
            }
            tracing::warn!(%identity, "lost leadership: the controller stopped");
            // The new leader reports the connections now; stale series here would contradict it.
            context.metrics.connections.clear();
        }
        // Dropping the receiver makes the lease task release the Lease for the next leader.
        drop(leader);
        let _ = lease_task.await;
    }

    // The public listener stops taking events; those it took get their grace to reach the sinks,
    // and the last counts are written.
    let public_result = public_server.await;
    drop(public_stopped);
    receiver.finish(FORWARD_GRACE).await;
    let _ = counting.await;
    for (address, result) in [(admin_listen, admin_server.await), (listen, public_result)] {
        if let Ok(Err(source)) = result {
            return Err(StartError::Listen { address, source });
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "operator".into())
}
