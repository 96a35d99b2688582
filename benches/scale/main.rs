//! `make bench-scale N=…`: one operator holding N connections, each to an instance of its own
//! (`c00001.service-now.com` …, one snowsim listener, the operator's `--resolve
//! *.service-now.com=…`), against a real API server; the figures of issue 16 and BENCHMARKS.md:
//!
//! * operator start → all N READY_TO_SYNC, connections/s; instance calls, API-server requests
//!   (its own `apiserver_request_total`) and status patches per connection;
//! * the same per steady-state resync (`resyncInterval: 30s`), per reconcile;
//! * the operator's peak RSS and CPU seconds (`/proc/<pid>`);
//! * credentials Secret change → READY_TO_SYNC again, p50/p99 over up to 100 changes;
//! * the floor (floor.rs): the necessary calls alone at the same concurrency, and the operator's
//!   time over the floor's.
//!
//! Prints the figures with the machine's load; targets are read off them, never asserted.
//! Env: `SCALE_N` (default 1000), `SCALE_CONCURRENCY` (the operator's `--concurrency`, default
//! 8), `ENVTEST_KUBECONFIG` (or it starts its own control plane).

#[path = "../../tests/support/mod.rs"]
mod support;

mod fleet;
mod floor;
mod measure;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher, watcher::watch_object},
};
use servicenow_operator::api::{ServiceNowConnection, SyncState};
use support::{TestNamespace, install_crd, poll_until};

use crate::measure::{ApiRequests, CpuLedger, InstanceCalls, env_number, load, process_usage};

/// Credentials Secret changes measured (fewer when N is smaller).
const SECRET_CHANGES: usize = 100;

fn is_ready(connection: &ServiceNowConnection) -> bool {
    connection
        .status
        .as_ref()
        .is_some_and(|s| s.sync_state == Some(SyncState::ReadyToSync))
}

/// Waits (on one watch of the namespace) until `count` connections are READY_TO_SYNC at once.
async fn all_ready(api: Api<ServiceNowConnection>, count: usize, deadline: Duration) {
    let mut ready = HashSet::new();
    let mut updates = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
    let wait = async {
        while let Some(connection) = updates.try_next().await.expect("watch the connections") {
            let name = kube::ResourceExt::name_any(&connection);
            if is_ready(&connection) {
                ready.insert(name);
            } else {
                ready.remove(&name);
            }
            if ready.len() == count {
                return;
            }
        }
    };
    if tokio::time::timeout(deadline, wait).await.is_err() {
        panic!("not all {count} connections were READY_TO_SYNC within {deadline:?}");
    }
}

/// Reads a watch on one connection until `done` accepts it.
async fn watch_until(
    updates: &mut (impl futures::Stream<Item = Result<Option<ServiceNowConnection>, watcher::Error>> + Unpin),
    what: &str,
    done: impl Fn(&ServiceNowConnection) -> bool,
) {
    let seen = async {
        while let Some(update) = updates.try_next().await.expect("watch the connection") {
            if update.as_ref().is_some_and(&done) {
                return;
            }
        }
        panic!("the watch ended before {what}");
    };
    if tokio::time::timeout(Duration::from_secs(60), seen).await.is_err() {
        panic!("{what} did not happen within 60 s");
    }
}

/// The `q`-quantile of sorted `samples`, in milliseconds.
fn quantile(samples: &[Duration], q: f64) -> f64 {
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

/// Breaks (a client secret with a trailing newline: CredentialsMalformed, found without a call)
/// and mends the credentials Secret of each of `members`; returns the times from the mending
/// write to READY_TO_SYNC, sorted.
async fn secret_changes(client: &Client, namespace: &str, members: &[fleet::Member]) -> Vec<Duration> {
    let api: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let mut samples = Vec::with_capacity(members.len());
    for member in members {
        let mut updates = std::pin::pin!(watch_object(api.clone(), &member.name));
        let write = |secret: String| {
            let patch = serde_json::json!({"stringData": {"clientSecret": secret}});
            let secrets = secrets.clone();
            let name = format!("{}-oauth", member.name);
            async move {
                secrets
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("write the credentials Secret");
            }
        };
        watch_until(&mut updates, "READY_TO_SYNC before the change", is_ready).await;
        write(format!("{}\n", member.client_secret)).await;
        watch_until(&mut updates, "the broken Secret noticed", |c| !is_ready(c)).await;
        let mended = Instant::now();
        write(member.client_secret.clone()).await;
        watch_until(&mut updates, "READY_TO_SYNC again", is_ready).await;
        samples.push(mended.elapsed());
    }
    samples.sort();
    samples
}

/// API-server requests of a phase, per `units`: reads, writes, status patches, Secret GETs.
fn api_summary(delta: &ApiRequests, units: f64) -> String {
    let (reads, writes) = delta.reads_and_writes();
    format!(
        "{:.2} reads, {:.2} writes; {:.2} status patches, {:.2} Secret GETs",
        reads / units,
        writes / units,
        delta.count(&["APPLY", "PATCH", "UPDATE"], "servicenowconnections", Some("status")) / units,
        delta.count(&["GET"], "secrets", None) / units
    )
}

#[tokio::main]
async fn main() {
    let count = env_number("SCALE_N", 1000);
    let concurrency = env_number("SCALE_CONCURRENCY", 8);
    assert!(
        count > 0 && concurrency > 0,
        "SCALE_N and SCALE_CONCURRENCY must be at least 1"
    );
    println!(
        "scale bench: N = {count}, concurrency {concurrency}; load at start {}",
        load()
    );
    let client = install_crd().await;

    let started = Instant::now();
    let (simulator, members) = fleet::instances(count).await;
    println!(
        "snowsim: {count} instances seeded, tokens minted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ns = TestNamespace::new(&client).await;
    let floor_ns = TestNamespace::new(&client).await;
    let started = Instant::now();
    fleet::create(&client, ns.name(), &members, false).await;
    fleet::create(&client, floor_ns.name(), &members, true).await;
    let created = started.elapsed().as_secs_f64();
    println!(
        "API server: {} objects created in {created:.1} s ({:.0}/s, {} in flight); load {}",
        count * 4,
        (count * 4) as f64 / created,
        64,
        load()
    );

    // The floor, alone on the machine, then its records removed from the instances.
    // A connection is reused within one member's calls only: idle ones close at once, or
    // 10,000 of them (both ends in this process) would exhaust the descriptors.
    let http = simulator
        .client_builder()
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .expect("the floor's HTTP client");
    let floor_connections: Api<ServiceNowConnection> = Api::namespaced(client.clone(), floor_ns.name());
    let plane = support::control_plane::control_plane().await;
    let ledger = CpuLedger::of_control_plane(plane.kubeconfig_path());
    let cpu_before = ledger.read();
    let floor_time = floor::run(&http, &floor_connections, &members, concurrency).await;
    let floor_cpu = ledger.since(&cpu_before, count as f64);
    let admins: Vec<snowsim::Admin> = members.iter().map(|m| m.admin.clone()).collect();
    let floor_calls = InstanceCalls::take(&admins);
    println!(
        "floor: {count} READY_TO_SYNC in {:.2} s ({:.0}/s); {} per connection; load {}",
        floor_time.as_secs_f64(),
        count as f64 / floor_time.as_secs_f64(),
        floor_calls.per(count as f64),
        load()
    );
    println!("  CPU per connection: {floor_cpu}");
    floor::undo(&members).await;

    // The operator: start to all READY_TO_SYNC.
    let connections: Api<ServiceNowConnection> = Api::namespaced(client.clone(), ns.name());
    let before = ApiRequests::read(&client).await;
    let cpu_before = ledger.read();
    let started = Instant::now();
    let operator = fleet::operator(ns.name(), &simulator, &["--concurrency", &concurrency.to_string()]).await;
    let up = started.elapsed();
    all_ready(connections.clone(), count, Duration::from_secs(3600)).await;
    let ready = started.elapsed();
    let provisioning = ApiRequests::read(&client).await.since(&before);
    let provisioning_cpu = ledger.since(&cpu_before, count as f64);
    let calls = InstanceCalls::take(&admins);
    let (rss, cpu) = process_usage(operator.pid());
    let n = count as f64;
    println!(
        "operator: start to all READY_TO_SYNC {:.2} s ({:.0} connections/s; process ready after {:.2} s); load {}",
        ready.as_secs_f64(),
        n / ready.as_secs_f64(),
        up.as_secs_f64(),
        load()
    );
    println!(
        "operator / floor: {:.2}",
        ready.as_secs_f64() / floor_time.as_secs_f64()
    );
    println!("  per connection, instance: {}", calls.per(n));
    println!("  per connection, API server: {}", api_summary(&provisioning, n));
    println!("{}", provisioning.breakdown(n));
    println!("  operator so far: peak RSS {rss:.1} MiB, CPU {cpu:.1} s");
    println!(
        "  CPU per connection: operator {:.2} ms, {provisioning_cpu}",
        cpu / n * 1000.0
    );
    let reconcile_seconds = "servicenow_operator_reconcile_duration_seconds";
    let (inside, reconciles) = (
        operator.metric(&format!("{reconcile_seconds}_sum")).await,
        operator.metric(&format!("{reconcile_seconds}_count")).await,
    );
    println!(
        "  {reconciles:.0} reconciles ({:.2} per connection), {:.0} ms each on average (the operator's histogram)",
        reconciles / n,
        inside / reconciles * 1000.0
    );

    // One steady-state resync of every connection (nothing changed), after the reconciles of the
    // shorter resync interval.
    let reconciles = "servicenow_operator_reconcile_duration_seconds_count";
    let reconciled_before = operator.metric(reconciles).await;
    fleet::resync_often(&client, ns.name(), &members).await;
    let at_least = |count: f64| {
        let operator = &operator;
        move || async move {
            let done = operator.metric(reconciles).await;
            (done >= count).then_some(done)
        }
    };
    let spec_changed = poll_until(
        Duration::from_secs(600),
        "a reconcile of every changed spec",
        at_least(reconciled_before + n),
    )
    .await;
    let before = ApiRequests::read(&client).await;
    InstanceCalls::take(&admins);
    let started = Instant::now();
    let reconciled = poll_until(
        Duration::from_secs(600),
        "a resync of every connection",
        at_least(spec_changed + n),
    )
    .await
        - spec_changed;
    let steady = ApiRequests::read(&client).await.since(&before);
    let calls = InstanceCalls::take(&admins);
    println!(
        "steady state: {reconciled:.0} reconciles in {:.1} s; load {}",
        started.elapsed().as_secs_f64(),
        load()
    );
    println!("  per reconcile, instance: {}", calls.per(reconciled));
    println!("  per reconcile, API server: {}", api_summary(&steady, reconciled));
    println!("{}", steady.breakdown(reconciled));

    // Secret change → READY_TO_SYNC again.
    let changed = &members[..count.min(SECRET_CHANGES)];
    let samples = secret_changes(&client, ns.name(), changed).await;
    println!(
        "credentials Secret change → READY_TO_SYNC again ({} changes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; load {}",
        samples.len(),
        quantile(&samples, 0.5),
        quantile(&samples, 0.99),
        quantile(&samples, 1.0),
        load()
    );
    let (rss, cpu) = process_usage(operator.pid());
    println!("operator at the end: peak RSS {rss:.1} MiB, CPU {cpu:.1} s");
    drop(operator);
    drop(connections);
}
