//! The webhook receiver's logic, behind `POST /callback/servicenow` (`crate::http::receiver`):
//! the request's signature is checked (`signature`, pure) against the connection's keys
//! (`lookup`) and refused when seen before (`replay`, pure), the body is checked and
//! turned into CloudEvents attributes (`event`, pure), accepted events are counted into
//! `status.webhook` (`counter`) and forwarded to the connection's sink (`forward`). Every replica
//! receives: nothing here needs the leader.

pub mod counter;
pub mod event;
pub mod forward;
pub mod lookup;
pub mod replay;
pub mod signature;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::body::Bytes;
use k8s_openapi::jiff::Timestamp;

use crate::{
    sync::LockExt as _,
    telemetry::{ReasonLabels, WebhookMetrics},
};
use counter::Counter;
use event::{CloudEvent, TaskEvent};
use forward::{Delivery, Forwarder};
use lookup::{Lookup, Refused, Target};
use replay::Replays;
use signature::Signed;

/// Everything the receiver shares between requests.
pub struct Receiver {
    lookup: Lookup,
    counter: Arc<Counter>,
    forwarder: Forwarder,
    replays: Mutex<Replays>,
    metrics: WebhookMetrics,
}

impl Receiver {
    /// A receiver reading connections through `kube` (only in `namespaces` when any) and
    /// delivering with `sink_client`.
    pub fn new(
        kube: kube::Client,
        namespaces: Vec<String>,
        sink_client: reqwest::Client,
        metrics: WebhookMetrics,
    ) -> Self {
        Receiver {
            lookup: Lookup::new(kube.clone(), namespaces),
            counter: Arc::new(Counter::new(kube)),
            forwarder: Forwarder::new(sink_client, metrics.clone()),
            replays: Mutex::default(),
            metrics,
        }
    }

    /// The status writer; run it with [`Counter::run`].
    pub fn counter(&self) -> Arc<Counter> {
        self.counter.clone()
    }

    /// The connection `connection` (`<namespace>/<name>`) when one of its usable keys made
    /// `signed` over `body` at `now`.
    pub async fn authenticate(
        &self,
        connection: Option<&str>,
        signed: &Signed,
        body: &[u8],
        now: Timestamp,
    ) -> Result<Arc<Target>, Refused> {
        self.lookup
            .authenticate(connection, |keys| signed.made_by_one_of(keys.usable(now), body))
            .await
    }

    /// `true` the first time this replica sees `signed` (checked and recorded at `now_millis`);
    /// `false` for a replay.
    pub fn first_time(&self, signed: &Signed, now_millis: i64) -> bool {
        self.replays
            .locked()
            .first_time(signed.replay_id(), signed.millis(), now_millis)
    }

    /// Takes `event` (whose JSON is `body`) for `target`: counts it and queues its forward
    /// when the connection has a sink. Never waits.
    pub fn accept(&self, target: &Target, event: &TaskEvent, body: Bytes) {
        self.metrics.received.inc();
        self.counter.count(&target.key, Timestamp::now());
        tracing::debug!(
            connection = %target.key, table = %event.table, sys_id = %event.sys_id,
            operation = event.operation.as_str(), "webhook event accepted"
        );
        if let Some(sink) = &target.sink_url {
            let id = event.id.clone().unwrap_or_else(|| event::uuid_v4(rand::random()));
            let event = CloudEvent::of(event, &target.instance_url, id);
            let delivery = Delivery {
                sink: sink.clone(),
                event,
                body,
            };
            self.forwarder.enqueue(&target.key, delivery);
        }
    }

    /// Gives the queued forwards up to `grace` to finish (see [`Forwarder::finish`]).
    pub async fn finish(&self, grace: Duration) {
        self.forwarder.finish(grace).await;
    }

    /// Counts a refused request under `reason`.
    pub fn rejected(&self, reason: &'static str) {
        self.metrics.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }
}
