//! Logs and metrics: tracing initialisation and the Prometheus metric families.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::cli::{LogFormat, TelemetryArgs};

/// Installs the global tracing subscriber.
pub fn init_logging(args: &TelemetryArgs) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(args.log_filter.as_str())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Labels of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ok`, `requeue` or `error`.
    pub outcome: &'static str,
}

/// Labels of one call to ServiceNow.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// What the call did, e.g. `refresh_token`, `list_sys_script`.
    pub action: &'static str,
    /// The HTTP status, or 0 when there was no answer.
    pub status: u16,
}

/// Labels of a webhook request refused or an event not delivered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why, e.g. `unauthorized`, `malformed`, `queue_full`.
    pub reason: &'static str,
}

/// The webhook receiver's metrics.
#[derive(Clone, Default)]
pub struct WebhookMetrics {
    /// Events accepted (answered 202).
    pub received: Counter,
    /// Requests refused, by reason: `unauthorized`, `unsupported_media_type`, `too_large`,
    /// `malformed`, `unavailable`.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Events the sink accepted.
    pub forwarded: Counter,
    /// Events not delivered to the sink, by reason: `queue_full`, `refused` (the sink answered
    /// 4xx), `gave_up` (still failing after the last attempt), `invalid` (no request could be
    /// built), `shutdown` (still waiting when the operator stopped, after the grace period).
    pub forward_failed: Family<ReasonLabels, Counter>,
    /// Delivery attempts that failed and were retried.
    pub forward_retries: Counter,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles by outcome.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_seconds: Histogram,
    /// Calls to ServiceNow by action and status.
    pub servicenow_calls: Family<CallLabels, Counter>,
    /// The webhook receiver.
    pub webhook: WebhookMetrics,
}

impl Metrics {
    /// Creates the metric families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            reconcile_seconds: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            servicenow_calls: Family::default(),
            webhook: WebhookMetrics::default(),
        };
        registry.register(
            "servicenow_operator_reconciles",
            "Reconciles by outcome",
            metrics.reconciles.clone(),
        );
        registry.register(
            "servicenow_operator_reconcile_duration_seconds",
            "Time one reconcile took",
            metrics.reconcile_seconds.clone(),
        );
        registry.register(
            "servicenow_operator_servicenow_calls",
            "Calls to ServiceNow by action and HTTP status (0: no answer)",
            metrics.servicenow_calls.clone(),
        );
        let webhook = &metrics.webhook;
        let webhook_registry = registry.sub_registry_with_prefix("servicenow_operator_webhook");
        for (name, help, counter) in [
            ("events_received", "Webhook events accepted", &webhook.received),
            (
                "events_forwarded",
                "Webhook events delivered to the sink",
                &webhook.forwarded,
            ),
            (
                "forward_retries",
                "Deliveries to the sink that failed and were retried",
                &webhook.forward_retries,
            ),
        ] {
            webhook_registry.register(name, help, counter.clone());
        }
        for (name, help, family) in [
            (
                "requests_rejected",
                "Webhook requests refused, by reason",
                &webhook.rejected,
            ),
            (
                "events_forward_failed",
                "Webhook events not delivered to the sink, by reason",
                &webhook.forward_failed,
            ),
        ] {
            webhook_registry.register(name, help, family.clone());
        }
        metrics
    }
}

impl crate::servicenow::CallObserver for Metrics {
    fn observe(&self, action: &'static str, status: u16) {
        self.servicenow_calls
            .get_or_create(&CallLabels { action, status })
            .inc();
    }
}
