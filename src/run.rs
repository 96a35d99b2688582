//! Startup wiring of `run`: clients, the controller, the listeners, and shutdown on a signal.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{
    cli::{ControllerArgs, HttpArgs, RunArgs, ServiceNowArgs},
    controller,
    http::{self, admin::AdminState, consent::ConsentContext},
    reconcile::Context,
    secrets, servicenow,
    telemetry::{self, Metrics},
};

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable Kubernetes configuration.
    #[error("failed to configure the Kubernetes client (in-cluster or KUBECONFIG): {0}")]
    Kube(#[source] kube::Error),
    /// The ServiceNow client could not be built (e.g. an unreadable CA bundle).
    #[error("failed to configure the ServiceNow client: {0}")]
    ServiceNow(#[source] servicenow::Error),
    /// The consent-state key could not be read or created.
    #[error("failed to read or create the consent-state key Secret {secret}: {source}")]
    StateKey {
        /// `namespace/name` of the Secret.
        secret: String,
        /// Why.
        source: kube::Error,
    },
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
    let ControllerArgs { concurrency, namespace } = controller_args;
    let ServiceNowArgs {
        ca_bundle,
        resolve,
        request_timeout,
        refresh_token_lifespan,
    } = servicenow_args;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let servicenow = servicenow::Client::new(servicenow::ClientConfig {
        ca_bundle,
        resolve,
        request_timeout,
        observer: Arc::new(metrics.clone()),
    })
    .map_err(StartError::ServiceNow)?;
    let client = kube::Client::try_default().await.map_err(StartError::Kube)?;

    let (stop_tx, stop_rx) = watch::channel(false);
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
        state_key,
        refresh_token_lifespan,
    }));
    let public_server = tokio::spawn(http::serve(listen, consent, stopped()));

    let context = Arc::new(Context::new(client.clone(), servicenow, public_url, metrics));
    let synced = move || ready.store(true, Ordering::Release);
    controller::run(client, namespace.as_deref(), concurrency, context, synced, stopped()).await;

    for (address, server) in [(admin_listen, admin_server), (listen, public_server)] {
        if let Ok(Err(source)) = server.await {
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
