//! Logs and metrics: the log flags and tracing initialisation, and the Prometheus metric
//! families.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Logs.
#[derive(Debug, clap::Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "LOG_FILTER", default_value = "info")]
    pub log_filter: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber.
pub fn init_logging(args: &TelemetryArgs) {
    // Colours only on a terminal: a pod's log, a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(args.log_filter.as_str())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

/// Labels of one connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// The connection's namespace.
    pub namespace: String,
    /// The connection's name.
    pub name: String,
}

impl ConnectionLabels {
    fn of(namespace: &str, name: &str) -> Self {
        ConnectionLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The labels of this connection's `Ready` series for `condition`.
    fn ready(&self, condition: &'static str) -> ReadyLabels {
        ReadyLabels {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            condition,
        }
    }
}

/// The statuses a condition can have.
const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// Labels of one status of one connection's `Ready` condition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// The connection's namespace.
    pub namespace: String,
    /// The connection's name.
    pub name: String,
    /// `True`, `False` or `Unknown`.
    pub condition: &'static str,
}

/// Per-connection gauges, for alerts (the leader's view; one series set per connection, removed
/// with the connection).
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    /// 1 for the status the connection's `Ready` condition has, 0 for the other two.
    pub ready: Family<ReadyLabels, Gauge>,
    /// When the connection's refresh token expires, in UNIX seconds (absent while unknown).
    pub refresh_token_expiration: Family<ConnectionLabels, Gauge<f64, AtomicU64>>,
}

impl ConnectionMetrics {
    /// Shows the connection `namespace/name` as `ready` (`True`, `False` or `Unknown`) with its
    /// refresh token expiring at `refresh_token_expires_at` (UNIX seconds) when known.
    pub fn observe(&self, namespace: &str, name: &str, ready: &str, refresh_token_expires_at: Option<i64>) {
        let labels = ConnectionLabels::of(namespace, name);
        for condition in CONDITION_STATUSES {
            self.ready
                .get_or_create(&labels.ready(condition))
                .set(i64::from(condition == ready));
        }
        match refresh_token_expires_at {
            // UNIX seconds fit an f64 exactly for the next 285 million years.
            Some(at) => {
                self.refresh_token_expiration.get_or_create(&labels).set(at as f64);
            }
            None => {
                self.refresh_token_expiration.remove(&labels);
            }
        }
    }

    /// Removes every connection's series (this replica stopped leading: the new leader shows them).
    pub fn clear(&self) {
        self.ready.clear();
        self.refresh_token_expiration.clear();
    }

    /// Removes every series of the connection `namespace/name` (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = ConnectionLabels::of(namespace, name);
        for condition in CONDITION_STATUSES {
            self.ready.remove(&labels.ready(condition));
        }
        self.refresh_token_expiration.remove(&labels);
    }
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
    /// Per-connection gauges.
    pub connections: ConnectionMetrics,
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
            connections: ConnectionMetrics::default(),
            webhook: WebhookMetrics::default(),
        };
        registry.register(
            "servicenow_operator_connection_ready_status",
            "1 for the status (condition label) of each connection's Ready condition, 0 for the others",
            metrics.connections.ready.clone(),
        );
        registry.register(
            "servicenow_operator_refresh_token_expiration_timestamp_seconds",
            "When each connection's refresh token expires, in UNIX seconds",
            metrics.connections.refresh_token_expiration.clone(),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    #[test]
    fn a_connection_shows_its_ready_status_and_token_expiry_until_it_is_forgotten() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics
            .connections
            .observe("itsm", "acme", "False", Some(1_800_000_000));
        let text = page(&registry);
        for line in [
            r#"servicenow_operator_connection_ready_status{namespace="itsm",name="acme",condition="True"} 0"#,
            r#"servicenow_operator_connection_ready_status{namespace="itsm",name="acme",condition="False"} 1"#,
            r#"servicenow_operator_connection_ready_status{namespace="itsm",name="acme",condition="Unknown"} 0"#,
            r#"servicenow_operator_refresh_token_expiration_timestamp_seconds{namespace="itsm",name="acme"} 1800000000"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        metrics.connections.observe("itsm", "acme", "True", None);
        let text = page(&registry);
        assert!(text.contains(r#"condition="True"} 1"#), "{text}");
        assert!(!text.contains(r#"expiration_timestamp_seconds{"#), "{text}");
        metrics.connections.forget("itsm", "acme");
        assert!(!page(&registry).contains("acme"));
        metrics.connections.observe("itsm", "acme", "True", Some(1));
        metrics.connections.observe("ops", "beta", "False", Some(2));
        metrics.connections.clear();
        assert!(!page(&registry).contains("namespace="));
    }
}
