//! Startup wiring of the three ways to run: `run` (everything in one process), `controller` (the
//! reconciler, serving consent and webhooks only to the public component through the hand-off
//! listener) and `public` (the internet-facing listener, forwarding to the controller): clients,
//! the controller, the listeners, and shutdown on a signal.

mod lease;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::{sync::watch, task::JoinHandle};

use self::lease::Leadership;

use crate::{
    cli::{ControllerArgs, ControllerCommandArgs, CoreArgs, HttpArgs, PublicArgs, RunArgs, ServiceNowArgs},
    controller,
    http::{
        self,
        admin::AdminState,
        consent::ConsentContext,
        handoff::{Forwarder, HandOffError, HandOffKey},
        limits::{PublicLimits, PublicLimitsArgs},
    },
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
    /// The hand-off between the components could not be set up (its key, its client).
    #[error(transparent)]
    HandOff(#[from] HandOffError),
    /// Leader election could not start.
    #[error("failed to start leader election: {0}")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),
    /// A listener could not be bound or failed.
    #[error(
        "failed to serve HTTP on {address} ({flag}): {source}; if another process listens there, give {flag} another address"
    )]
    Listen {
        /// The flag that set the address.
        flag: &'static str,
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs everything in one process until SIGINT or SIGTERM: the controller serves the consent and
/// webhook endpoints on the public listener itself.
pub async fn run(args: RunArgs) -> Result<(), StartError> {
    let RunArgs { public, limits, core } = args;
    telemetry::init_logging(&core.telemetry);
    operate(
        core,
        Front::Public {
            listen: public.listen,
            limits,
        },
    )
    .await
}

/// Runs the controller component until SIGINT or SIGTERM: the consent and webhook endpoints are
/// served on the hand-off listener, to holders of the hand-off key only.
pub async fn controller(args: ControllerCommandArgs) -> Result<(), StartError> {
    let ControllerCommandArgs {
        core,
        handoff_listen,
        key,
    } = args;
    telemetry::init_logging(&core.telemetry);
    let key = HandOffKey::read(&key.handoff_key_file)?;
    operate(
        core,
        Front::HandOff {
            listen: handoff_listen,
            key,
        },
    )
    .await
}

/// Runs the public component until SIGINT or SIGTERM: the public listener, under its limits,
/// forwards each request to the controller component ([`http::handoff`]); the admin listener
/// serves its health and the limits' metrics. It uses no Kubernetes client.
pub async fn public(args: PublicArgs) -> Result<(), StartError> {
    let PublicArgs {
        public,
        limits,
        admin,
        controller_url,
        key,
        telemetry,
    } = args;
    telemetry::init_logging(&telemetry);
    let key = HandOffKey::read(&key.handoff_key_file)?;
    let stop = Stop::on_signal();
    let mut registry = Registry::default();
    let forwarder = Forwarder::new(controller_url, key, &mut registry)?;
    let limits = PublicLimits::new(limits, &mut registry);
    let admin_router = http::admin::router(AdminState {
        ready: Arc::new(AtomicBool::new(true)),
        registry: Arc::new(registry),
    });
    let admin_listener = listen((ADMIN_FLAG, admin.admin_listen)).await?;
    let public_listener = listen((PUBLIC_FLAG, public.listen)).await?;
    let admin_server = tokio::spawn(http::serve(admin_listener, admin_router, stop.stopped()));
    let (consent, webhook) = forwarder.routers();
    let router = http::with_security_headers(limits.router(consent, webhook));
    limits.serve(public_listener, router, stop.stopped()).await;
    listened([((ADMIN_FLAG, admin.admin_listen), admin_server.await)])
}

/// Where the consent and webhook endpoints are served; `L`: the public limits' settings, then
/// the limits themselves.
enum Front<L = PublicLimitsArgs> {
    /// To the internet, under the public listener's limits (`run`).
    Public { listen: SocketAddr, limits: L },
    /// To the public component, behind the hand-off key (`controller`).
    HandOff { listen: SocketAddr, key: HandOffKey },
}

impl<L> Front<L> {
    /// Where it listens, and the flag that says so.
    fn address(&self) -> ListenAt {
        match self {
            Front::Public { listen, .. } => (PUBLIC_FLAG, *listen),
            Front::HandOff { listen, .. } => (HANDOFF_FLAG, *listen),
        }
    }
}

impl Front {
    /// The limits set up, their metrics registered in `registry`.
    fn limited(self, registry: &mut Registry) -> Front<PublicLimits> {
        match self {
            Front::Public { listen, limits } => Front::Public {
                listen,
                limits: PublicLimits::new(limits, registry),
            },
            Front::HandOff { listen, key } => Front::HandOff { listen, key },
        }
    }
}

/// Runs the controller until SIGINT or SIGTERM: setup, then the controller (under leader election
/// unless it is off), then the ordered shutdown.
async fn operate(core: CoreArgs, front: Front) -> Result<(), StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stop = Stop::on_signal();
    let operator = setup(core, front, &stop).await?;
    let result = if operator.leader_election.enabled {
        lead(&operator, &stop).await
    } else {
        let ready = operator.ready.clone();
        controller::run(
            operator.kube.clone(),
            &operator.namespaces,
            operator.concurrency,
            operator.context.clone(),
            move || ready.store(true, Ordering::Release),
            stop.stopped(),
        )
        .await;
        Ok(())
    };
    let shut_down = shutdown(operator.listeners).await;
    result.and(shut_down)
}

/// The operator's stop request (a signal), shared by everything that must stop.
struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A stop requested by SIGINT or SIGTERM.
    fn on_signal() -> Stop {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        Stop(stop_rx)
    }

    /// Resolves once the stop is requested.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.0.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Whether the stop was requested.
    fn requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// Leader election's settings.
struct LeaderElection {
    enabled: bool,
    namespace: String,
    lease_name: String,
    lease_duration: Duration,
}

/// What setup built: the clients, the controller's context and the running listeners.
struct Operator {
    kube: kube::Client,
    namespaces: Vec<String>,
    concurrency: u16,
    context: Arc<Context<servicenow::Client>>,
    ready: Arc<AtomicBool>,
    leader_election: LeaderElection,
    listeners: Listeners,
}

/// The listeners and the receiver's workers, stopped in order by [`shutdown`].
struct Listeners {
    admin: (ListenAt, JoinHandle<std::io::Result<()>>),
    /// The listener of the consent and webhook endpoints: the public one or the hand-off one.
    front: (ListenAt, JoinHandle<std::io::Result<()>>),
    receiver: Arc<Receiver>,
    counting: JoinHandle<()>,
    public_stopped: tokio::sync::oneshot::Sender<()>,
}

/// Setup: metrics, the ServiceNow and sink clients, the Kubernetes client, the consent-state key,
/// the admin listener and the consent and webhook endpoints on `front` (serving until `stop`) and
/// the controller's context.
async fn setup(core: CoreArgs, front: Front, stop: &Stop) -> Result<Operator, StartError> {
    let CoreArgs {
        http: http_args,
        servicenow: servicenow_args,
        controller: controller_args,
        telemetry: _,
    } = core;
    let HttpArgs {
        public_url,
        admin,
        operator_namespace,
        state_key_secret,
    } = http_args;
    let namespaces = controller_args.watched_namespaces();
    let ControllerArgs {
        concurrency,
        namespace: _,
        leader_election,
        lease_name,
        lease_duration,
    } = controller_args;
    let admin_listen = admin.admin_listen;
    let ServiceNowArgs {
        ca_bundle,
        resolve,
        request_timeout,
        refresh_token_lifespan,
    } = servicenow_args;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let front = front.limited(&mut registry);
    let client_config = servicenow::ClientConfig {
        ca_bundle,
        resolve,
        request_timeout,
        observer: Arc::new(metrics.clone()),
    };
    let sink_client = servicenow::http::outbound_client(&client_config).map_err(StartError::HttpClient)?;
    let servicenow = servicenow::Client::new(client_config).map_err(StartError::HttpClient)?;
    let client = kube::Client::try_default().await.map_err(StartError::Kube)?;

    let ready = Arc::new(AtomicBool::new(false));
    let admin = http::admin::router(AdminState {
        ready: ready.clone(),
        registry: Arc::new(registry),
    });
    let admin_listener = listen((ADMIN_FLAG, admin_listen)).await?;
    let front_at = front.address();
    let front_listener = listen(front_at).await?;
    let admin_server = tokio::spawn(http::serve(admin_listener, admin, stop.stopped()));

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
        namespaces.clone(),
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
    let webhook = http::receiver::router(receiver.clone());
    let stopped = stop.stopped();
    let front_server = match front {
        Front::Public { limits, .. } => {
            let public = http::with_security_headers(limits.router(consent, webhook));
            tokio::spawn(async move {
                limits.serve(front_listener, public, stopped).await;
                Ok(())
            })
        }
        Front::HandOff { key, .. } => {
            let handoff = http::handoff::authenticated(key, consent.merge(webhook));
            tokio::spawn(http::serve(front_listener, handoff, stopped))
        }
    };

    Ok(Operator {
        context: Arc::new(Context::new(client.clone(), servicenow, public_url, metrics, state_key)),
        kube: client,
        namespaces,
        concurrency,
        ready,
        leader_election: LeaderElection {
            enabled: leader_election,
            namespace: operator_namespace,
            lease_name,
            lease_duration,
        },
        listeners: Listeners {
            admin: ((ADMIN_FLAG, admin_listen), admin_server),
            front: (front_at, front_server),
            receiver,
            counting,
            public_stopped,
        },
    })
}

/// Leader election: stand by (serving HTTP, reconciling nothing) until this replica holds the
/// Lease, run the controller while it does, and stand by again when it loses it, to another
/// replica or because it could not renew it before it expired ([`lease::follow`]); until `stop`.
async fn lead(operator: &Operator, stop: &Stop) -> Result<(), StartError> {
    let LeaderElection {
        namespace,
        lease_name,
        lease_duration,
        ..
    } = &operator.leader_election;
    let ready = &operator.ready;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let seconds = lease_duration.as_secs();
    let (held, lease_task) = LeaseManagerBuilder::new(operator.kube.clone(), lease_name)
        .with_namespace(namespace)
        .with_identity(&identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .build()
        .await
        .map_err(StartError::Lease)?
        .watch()
        .await;
    let leases: Api<Lease> = Api::namespaced(operator.kube.clone(), namespace);
    let mut leadership = lease::follow(held, leases, lease_name.clone(), identity.clone(), *lease_duration);
    let mut stopped = Box::pin(stop.stopped());
    loop {
        ready.store(true, Ordering::Release);
        tracing::info!(%identity, lease = %lease_name, "standing by for leadership");
        let leads = leadership.wait_for(|standing| *standing == Leadership::Leading);
        let became_leader = tokio::select! {
            leads = leads => leads.is_ok(),
            () = &mut stopped => false,
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
        let mut lost = leadership.clone();
        let controller = controller::run(
            operator.kube.clone(),
            &operator.namespaces,
            operator.concurrency,
            operator.context.clone(),
            synced,
            stop.stopped(),
        );
        // A stop lets the reconciles under way finish; a lost Lease drops them at once: a replica
        // that no longer leads must make no further call to the instance nor write a status while
        // the new leader reconciles the same connections (a duplicate rule or property).
        tokio::select! {
            () = controller => {}
            _ = lost.wait_for(|standing| *standing != Leadership::Leading) => {}
        }
        if stop.requested() {
            break;
        }
        if *leadership.borrow() == Leadership::Lapsed {
            tracing::warn!(
                %identity,
                lease = %lease_name,
                duration = ?lease_duration,
                "lost leadership: the Lease could not be renewed within its duration (is the API server \
                 answering?): the controller stopped; leading again once it is renewed"
            );
        } else {
            tracing::warn!(%identity, "lost leadership: the controller stopped");
        }
        // The new leader reports the connections now; stale series here would contradict it.
        operator.context.metrics.connections.clear();
    }
    // Dropping the receiver stops the follower, which drops the lease manager's receiver: the
    // lease task releases the Lease for the next leader.
    drop(leadership);
    let _ = lease_task.await;
    Ok(())
}

/// The ordered shutdown, once the controller stopped: the public listener stops taking events;
/// those it took get their grace to reach the sinks; the last counts are written; then the
/// listeners' results are checked.
async fn shutdown(listeners: Listeners) -> Result<(), StartError> {
    let Listeners {
        admin: (admin_address, admin_server),
        front: (front_address, front_server),
        receiver,
        counting,
        public_stopped,
    } = listeners;
    let front_result = front_server.await;
    drop(public_stopped);
    receiver.finish(FORWARD_GRACE).await;
    let _ = counting.await;
    listened([(admin_address, admin_server.await), (front_address, front_result)])
}

/// A listener's address, with the flag that set it (for the error that names both).
type ListenAt = (&'static str, SocketAddr);

/// The flags of the listeners' addresses.
const PUBLIC_FLAG: &str = "--listen or LISTEN";
const ADMIN_FLAG: &str = "--admin-listen or ADMIN_LISTEN";
const HANDOFF_FLAG: &str = "--handoff-listen or HANDOFF_LISTEN";

/// Binds a listener at the start ([`http::bind`]); a failure names the address.
async fn listen((flag, address): ListenAt) -> Result<tokio::net::TcpListener, StartError> {
    http::bind(address)
        .await
        .map_err(|source| StartError::Listen { flag, address, source })
}

/// The first listener that failed, as the error.
fn listened<const N: usize>(
    results: [(ListenAt, Result<std::io::Result<()>, tokio::task::JoinError>); N],
) -> Result<(), StartError> {
    for ((flag, address), result) in results {
        if let Ok(Err(source)) = result {
            return Err(StartError::Listen { flag, address, source });
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "operator".into())
}
