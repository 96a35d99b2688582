//! Delivery of accepted events to the connection's sink (`spec.webhook.sinkUrl`) as CloudEvents
//! in HTTP binary mode. Each connection has a bounded queue and one worker that delivers its
//! events in order, one at a time; the handler only queues, never waits, and a full queue drops
//! the event (counted and logged). A delivery is tried again with exponential backoff after no
//! answer, a 5xx, a 408 or a 429 (honouring `Retry-After`), up to [`MAX_ATTEMPTS`] times; any
//! other answer ends it. A worker with nothing to do for [`IDLE`] stops. When the operator stops,
//! [`Forwarder::finish`] gives the queued events a grace period to reach the sink; those still
//! waiting after it are counted as dropped (`shutdown`).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::body::Bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::event::CloudEvent;
use crate::{
    outbound::{retry_after, transport_reason},
    retry,
    sync::LockExt as _,
    telemetry::{ReasonLabels, WebhookMetrics},
};

/// Events waiting per connection; one more is dropped.
pub const QUEUE_CAPACITY: usize = 256;
/// Attempts per event, the first included.
pub const MAX_ATTEMPTS: u32 = 8;
/// Longest wait for the sink's answer to one attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `Retry-After` taken at its word.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long a worker waits for work before it stops.
const IDLE: Duration = Duration::from_secs(60);

/// One event to deliver.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Where to (`spec.webhook.sinkUrl` when the event was accepted).
    pub sink: String,
    /// Its CloudEvents attributes.
    pub event: CloudEvent,
    /// Its JSON, as the instance sent it.
    pub body: Bytes,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attempt {
    /// The sink took it (2xx).
    Delivered,
    /// Worth trying again, after the sink's `Retry-After` when it gave one.
    Retry { reason: String, after: Option<Duration> },
    /// Trying again would not help.
    Failed { reason: String, metric: &'static str },
}

/// The queues and their workers.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    metrics: WebhookMetrics,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Delivery>>>>,
    /// Every worker, to wait for them when the operator stops.
    workers: TaskTracker,
    /// Events queued and not yet done with (delivered or dropped).
    waiting: Arc<AtomicU64>,
}

impl Forwarder {
    /// Delivers with `client` (the operator's outbound client: its TLS roots, proxy and
    /// `--ca-bundle`).
    pub fn new(client: reqwest::Client, metrics: WebhookMetrics) -> Self {
        Forwarder {
            client,
            metrics,
            queues: Arc::default(),
            workers: TaskTracker::new(),
            waiting: Arc::default(),
        }
    }

    /// Takes no more events and waits up to `grace` for the queued ones to be delivered (retries
    /// included); what is still waiting then is counted and logged as dropped (`shutdown`). Call it
    /// once the listener that queues events has stopped.
    pub async fn finish(&self, grace: Duration) {
        // Without their senders the workers deliver what they hold, then stop.
        self.queues.locked().clear();
        self.workers.close();
        if tokio::time::timeout(grace, self.workers.wait()).await.is_err() {
            let left = self.waiting.load(Ordering::Acquire);
            self.metrics
                .forward_failed
                .get_or_create(&ReasonLabels { reason: "shutdown" })
                .inc_by(left);
            tracing::warn!(
                events = left,
                ?grace,
                "stopping with webhook events not forwarded to their sinks"
            );
        }
    }

    /// Queues `delivery` for the connection `key` without waiting; drops it when the queue is full.
    pub fn enqueue(&self, key: &str, delivery: Delivery) {
        let mut queues = self.queues.locked();
        if queues.get(key).is_none_or(mpsc::Sender::is_closed) {
            // No worker yet, or it left (idle) or died.
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
            self.workers.spawn(self.clone().drain(key.to_owned(), receiver));
            queues.insert(key.to_owned(), sender);
        }
        if queues[key].try_send(delivery).is_ok() {
            self.waiting.fetch_add(1, Ordering::AcqRel);
        } else {
            self.failed(
                key,
                "queue_full",
                &format!("{QUEUE_CAPACITY} events are already waiting"),
            );
        }
    }

    /// The worker of `key`: delivers what arrives until idle, then leaves.
    async fn drain(self, key: String, mut receiver: mpsc::Receiver<Delivery>) {
        loop {
            match tokio::time::timeout(IDLE, receiver.recv()).await {
                Ok(Some(delivery)) => {
                    self.deliver(&key, &delivery).await;
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                }
                Ok(None) => return,
                Err(_idle) => {
                    // Under the lock `enqueue` takes: nothing can arrive between the look and
                    // the removal.
                    let mut queues = self.queues.locked();
                    if receiver.is_empty() {
                        queues.remove(&key);
                        return;
                    }
                }
            }
        }
    }

    async fn deliver(&self, key: &str, delivery: &Delivery) {
        for attempt in 1..=MAX_ATTEMPTS {
            match self.attempt(delivery).await {
                Attempt::Delivered => {
                    self.metrics.forwarded.inc();
                    tracing::debug!(connection = %key, id = %delivery.event.id, attempt, "event forwarded");
                    return;
                }
                Attempt::Failed { reason, metric } => return self.failed(key, metric, &reason),
                Attempt::Retry { reason, .. } if attempt == MAX_ATTEMPTS => {
                    return self.failed(key, "gave_up", &format!("{reason}, after {MAX_ATTEMPTS} attempts"));
                }
                Attempt::Retry { reason, after } => {
                    let delay = after.map_or_else(
                        || retry::with_equal_jitter(retry::exponential(attempt), rand::random()),
                        |after| after.min(MAX_RETRY_AFTER),
                    );
                    self.metrics.forward_retries.inc();
                    tracing::info!(
                        connection = %key, sink = %origin(&delivery.sink), id = %delivery.event.id, attempt,
                        error = %reason, retry_in = ?delay, "the sink did not take an event; trying again"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let mut request = self
            .client
            .post(&delivery.sink)
            .timeout(ATTEMPT_TIMEOUT)
            .body(delivery.body.clone());
        for (name, value) in delivery.event.headers() {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => judge(response.status().as_u16(), retry_after(response.headers())),
            Err(error) if error.is_builder() => Attempt::Failed {
                reason: format!("no request could be made: {}", transport_reason(error)),
                metric: "invalid",
            },
            Err(error) => Attempt::Retry {
                reason: transport_reason(error),
                after: None,
            },
        }
    }

    /// Counts and logs an event that will not reach the sink. The log names the connection
    /// only: the sink URL may carry a credential of its own.
    fn failed(&self, key: &str, metric: &'static str, reason: &str) {
        self.metrics
            .forward_failed
            .get_or_create(&ReasonLabels { reason: metric })
            .inc();
        tracing::warn!(connection = %key, reason = metric, error = %reason, "dropped a webhook event: it was not forwarded to the sink");
    }
}

/// What an answer with `status` means for the delivery.
fn judge(status: u16, retry_after: Option<Duration>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        408 | 429 | 500..=599 => Attempt::Retry {
            reason: format!("the sink answered HTTP {status}"),
            after: retry_after,
        },
        _ => Attempt::Failed {
            reason: format!("the sink answered HTTP {status}"),
            metric: "refused",
        },
    }
}

/// The scheme, host and port of `url`: what logs may show of a sink.
fn origin(url: &str) -> String {
    url::Url::parse(url).map_or_else(|_| "(invalid URL)".to_owned(), |url| url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_any_2xx() {
        for status in [200, 201, 202, 204] {
            assert_eq!(judge(status, None), Attempt::Delivered);
        }
    }

    #[test]
    fn server_errors_timeouts_and_rate_limits_are_tried_again() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(judge(status, None), Attempt::Retry { after: None, .. }),
                "{status}"
            );
        }
        assert_eq!(
            judge(429, Some(Duration::from_secs(7))),
            Attempt::Retry {
                reason: "the sink answered HTTP 429".into(),
                after: Some(Duration::from_secs(7)),
            }
        );
    }

    #[test]
    fn other_answers_end_the_delivery() {
        for status in [301, 400, 401, 403, 404, 413] {
            assert!(
                matches!(judge(status, None), Attempt::Failed { metric: "refused", .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn logs_show_only_the_origin_of_a_sink() {
        assert_eq!(
            origin("https://user:key@events.example:8443/hook?key=s3cret"),
            "https://events.example:8443"
        );
        assert_eq!(origin("not a url"), "(invalid URL)");
    }

    #[tokio::test]
    async fn events_still_waiting_after_the_grace_are_counted_as_dropped_at_shutdown() {
        // A sink nobody listens on: every attempt fails and is retried after a backoff.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let sink = format!("http://{}/events", closed.local_addr().expect("its address"));
        drop(closed);
        let body = br#"{"table":"incident","sys_id":"0123456789abcdef0123456789abcdef","operation":"insert"}"#;
        let event = super::super::event::parse(body).expect("an event");
        let metrics = WebhookMetrics::default();
        let forwarder = Forwarder::new(reqwest::Client::new(), metrics.clone());
        for _ in 0..2 {
            forwarder.enqueue(
                "itsm/acme",
                Delivery {
                    sink: sink.clone(),
                    event: CloudEvent::of(&event, "https://acme.service-now.com", "id".into()),
                    body: Bytes::from_static(body),
                },
            );
        }
        forwarder.finish(Duration::from_millis(200)).await;
        let dropped = metrics
            .forward_failed
            .get_or_create(&ReasonLabels { reason: "shutdown" })
            .get();
        assert_eq!(dropped, 2);
        assert_eq!(metrics.forwarded.get(), 0);
    }
}
