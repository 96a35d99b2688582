//! Benchmark of the operator against a real API server and snowsim, on this machine: how long a
//! consented connection takes from the operator's start to `READY_TO_SYNC`, how long a requested
//! reconcile takes from the annotation to its echo in the status (seen on one watch opened
//! beforehand, not polled), and what a steady-state reconcile costs the instance. Prints the figures; targets, when there are any,
//! are read off them, never asserted in a timed test.
//!
//! `cargo bench --bench reconcile` (with `ENVTEST_KUBECONFIG` set, as `make bench` does, or it
//! starts its own control plane).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt as _};
use kube::runtime::watcher::{self, watch_object};
use servicenow_operator::api::{RECONCILE_REQUESTED_AT, ServiceNowConnection, SyncState};
use support::scene::{CONNECTION, Scene};

/// Requested reconciles measured.
const ROUNDS: usize = 40;
/// Longest wait for one reconcile.
const DEADLINE: Duration = Duration::from_secs(30);

/// Reads `updates` (a watch on the connection) until the connection satisfies `done`.
async fn watch_until(
    updates: &mut (impl Stream<Item = Result<Option<ServiceNowConnection>, watcher::Error>> + Unpin),
    what: &str,
    done: impl Fn(&ServiceNowConnection) -> bool,
) {
    let seen = async {
        while let Some(update) = updates
            .try_next()
            .await
            .unwrap_or_else(|error| panic!("watching for {what}: {error}"))
        {
            if update.as_ref().is_some_and(&done) {
                return;
            }
        }
        panic!("the watch ended before {what}");
    };
    if tokio::time::timeout(DEADLINE, seen).await.is_err() {
        panic!("{what} did not happen within {DEADLINE:?}");
    }
}

/// The `q`-quantile of sorted `samples`, in milliseconds.
fn quantile(samples: &[Duration], q: f64) -> f64 {
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let scene = Scene::new(serde_json::json!({})).await;
    let mut updates = std::pin::pin!(watch_object(scene.api(), CONNECTION));
    let started = Instant::now();
    let operator = scene.start_operator(&[]).await;
    let up = started.elapsed();
    watch_until(&mut updates, "READY_TO_SYNC", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.sync_state == Some(SyncState::ReadyToSync))
    })
    .await;
    let ready = started.elapsed();

    let admin = scene.simulator.admin();
    admin.clear_request_log();
    let reconcile_seconds = "servicenow_operator_reconcile_duration_seconds";
    let sum_before = operator.metric(&format!("{reconcile_seconds}_sum")).await;
    let count_before = operator.metric(&format!("{reconcile_seconds}_count")).await;
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let token = format!("bench-{round}");
        let asked = Instant::now();
        scene.annotate(RECONCILE_REQUESTED_AT, &token).await;
        watch_until(&mut updates, &format!("the reconcile {token}"), |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.last_handled_reconcile_at.as_deref() == Some(token.as_str()))
        })
        .await;
        samples.push(asked.elapsed());
    }
    samples.sort();
    let inside = (operator.metric(&format!("{reconcile_seconds}_sum")).await - sum_before)
        / (operator.metric(&format!("{reconcile_seconds}_count")).await - count_before);
    let log = admin.request_log();
    let per_round = |count: usize| count as f64 / ROUNDS as f64;
    // A batch is one call; its items are logged each and counted as reads (or writes).
    let calls = log.iter().filter(|c| !c.batch_item).count();
    let reads = log
        .iter()
        .filter(|c| c.path.starts_with("/api/") && c.method == "GET")
        .count();
    let writes = log.iter().filter(|c| c.is_write()).count();
    let refreshes = log.iter().filter(|c| c.path == "/oauth_token.do").count();

    println!("operator bench: real kube-apiserver + etcd, snowsim over HTTPS, loopback");
    println!(
        "start to READY_TO_SYNC: {:.0} ms (process up and ready after {:.0} ms)",
        ready.as_secs_f64() * 1000.0,
        up.as_secs_f64() * 1000.0
    );
    println!(
        "requested reconcile, annotation to status echo ({ROUNDS} rounds): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        quantile(&samples, 0.5),
        quantile(&samples, 0.95),
        quantile(&samples, 1.0)
    );
    println!(
        "of which inside the reconcile (the operator's histogram, mean): {:.1} ms",
        inside * 1000.0
    );
    println!(
        "instance calls per steady-state reconcile: {:.1} ({:.1} reads, {:.1} writes, {:.1} token refreshes)",
        per_round(calls),
        per_round(reads),
        per_round(writes),
        per_round(refreshes)
    );
}
