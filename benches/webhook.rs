//! Benchmark of the webhook receiver against a real API server, on loopback: how many signed
//! events a second the operator accepts (signature, time window, replay and body checks and the
//! rate limiter included) and forwards to a sink, with the latency of an accepted request, for
//! [`CONNECTIONS`] connections — each its own instance in snowsim (`c00001.service-now.com` …,
//! as `make bench-scale` has them), its own signing key and its own forwarding queue — posted to
//! over `WEBHOOK_IN_FLIGHT` HTTP connections at once (default [`IN_FLIGHT`]). Prints the figures and their ratio to the target
//! of issue 16 (≥ 20,000 events/s accepted); never asserts them.
//!
//! `cargo bench --bench webhook` (with `ENVTEST_KUBECONFIG` set, as `make bench` does, or it
//! starts its own control plane). The public listener's rate limits are raised for the run: they
//! are what a real deployment sets per client, not what the receiver can take. The operator logs
//! at `info`, as deployed (at `debug` it writes a line per event).

#[path = "../tests/support/mod.rs"]
mod support;

#[allow(dead_code)] // the scale bench uses the rest
#[path = "scale/fleet.rs"]
mod fleet;
#[allow(dead_code)] // the scale bench uses the rest
#[path = "scale/measure.rs"]
mod measure;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use servicenow_operator::{
    api::{ServiceNowConnection, SyncState},
    servicenow::SecretString,
    webhook::signature,
};
use support::{TestNamespace, control_plane, install_crd, operator::free_port, poll_until};

/// Connections posted to, each with its own key and queue.
const CONNECTIONS: usize = 100;
/// Events sent to each connection, unless `WEBHOOK_EVENTS_PER_CONNECTION` says otherwise.
const EVENTS_PER_CONNECTION: usize = 400;

/// Requests in flight at once (as many HTTP connections to the receiver), unless
/// `WEBHOOK_IN_FLIGHT` says otherwise.
const IN_FLIGHT: usize = 100;
/// The target of issue 16, in events accepted per second.
const TARGET: f64 = 20_000.0;

/// A sink on loopback that counts what it receives.
async fn sink(port: u16) -> Arc<AtomicUsize> {
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = Router::new().route(
        "/events",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the sink");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve the sink") });
    received
}

/// The `q`-quantile of sorted `samples`, in milliseconds.
fn quantile(samples: &[Duration], q: f64) -> f64 {
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

/// The signing key the operator wrote into `<name>-webhook`.
async fn signing_key(secrets: &Api<Secret>, name: &str) -> SecretString {
    secrets
        .get(&format!("{name}-webhook"))
        .await
        .expect("the webhook Secret")
        .data
        .and_then(|mut data| data.remove("token"))
        .map(|value| SecretString::new(String::from_utf8(value.0).expect("a UTF-8 key")))
        .expect("a signing key")
}

/// One signed request: the connection's URL, the body and its signature.
struct Signed {
    url: String,
    body: String,
    signature: String,
}

#[tokio::main]
async fn main() {
    let port = free_port();
    let forwarded = sink(port).await;
    let sink_url = format!("http://127.0.0.1:{port}/events");
    let client = install_crd().await;
    let (simulator, members) = fleet::instances(CONNECTIONS).await;
    let ns = TestNamespace::new(&client).await;
    fleet::create(&client, ns.name(), &members, false).await;
    fleet::patch_specs(
        &client,
        ns.name(),
        &members,
        &serde_json::json!({"spec": {"webhook": {"sinkUrl": sink_url}}}),
    )
    .await;
    let unlimited = "1000000/1s";
    let operator = fleet::operator(
        ns.name(),
        &simulator,
        &[
            "--webhook-rate-limit-per-ip",
            unlimited,
            "--webhook-rate-limit",
            unlimited,
        ],
    )
    .await;
    let connections: Api<ServiceNowConnection> = Api::namespaced(client.clone(), ns.name());
    poll_until(Duration::from_secs(300), "every connection READY_TO_SYNC", || async {
        let listed = connections.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let ready = listed
            .items
            .iter()
            .filter(|c| c.status.as_ref().and_then(|s| s.sync_state) == Some(SyncState::ReadyToSync))
            .count();
        Ok::<_, String>((ready == CONNECTIONS).then_some(()))
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let mut keys = Vec::with_capacity(CONNECTIONS);
    for member in &members {
        keys.push(signing_key(&secrets, &member.name).await);
    }

    // Signed up front, as each instance signs its events before it sends them; the connections
    // take turns.
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond().to_string();
    let events = CONNECTIONS * measure::env_number("WEBHOOK_EVENTS_PER_CONNECTION", EVENTS_PER_CONNECTION);
    let requests: Vec<Signed> = (0..events)
        .map(|n| {
            let (member, key) = (&members[n % CONNECTIONS], &keys[n % CONNECTIONS]);
            let body = serde_json::json!({
                "id": format!("{n:032x}"), "table": "incident", "sys_id": format!("{n:032x}"),
                "operation": "update", "number": format!("INC{n:07}"), "sys_updated_on": "2026-12-04 12:00:00",
                "instance": format!("https://{}.service-now.com", member.name),
            })
            .to_string();
            Signed {
                url: format!(
                    "{}/callback/servicenow?connection={}%2F{}",
                    operator.public_url,
                    ns.name(),
                    member.name
                ),
                signature: signature::sign(key, &now, body.as_bytes()),
                body,
            }
        })
        .collect();
    let in_flight = measure::env_number("WEBHOOK_IN_FLIGHT", IN_FLIGHT);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .build()
        .expect("an HTTP client");

    let ledger = measure::CpuLedger::of_control_plane(control_plane().await.kubeconfig_path());
    let (_, cpu_before) = measure::process_usage(operator.pid());
    let split_before = measure::cpu_split(operator.pid());
    let own_before = measure::cpu_split(std::process::id());
    let (plane_before, machine_before) = (ledger.read(), machine_cpu());
    let started = Instant::now();
    let outcomes: Vec<(u16, Duration)> = futures::stream::iter(requests)
        .map(|request| {
            let (http, now) = (&http, &now);
            async move {
                let sent = Instant::now();
                let status = http
                    .post(request.url)
                    .header("content-type", "application/json")
                    .header(signature::TIMESTAMP_HEADER, now.as_str())
                    .header(signature::SIGNATURE_HEADER, request.signature)
                    .body(request.body)
                    .send()
                    .await
                    .map_or(0, |answer| answer.status().as_u16());
                (status, sent.elapsed())
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let took = started.elapsed();
    let (plane_after, machine_after) = (ledger.read(), machine_cpu());
    let accepted = outcomes.iter().filter(|(status, _)| *status == 202).count();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|(_, latency)| *latency).collect();
    latencies.sort_unstable();

    // Forwarding is in the background: poll the sink until it has them all, or its count has not
    // moved for 2 s (events past a connection's queue are dropped and counted, not delivered), or
    // a deadline.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut delivered, mut moved_at) = (0, Instant::now());
    let mut forward_took = started.elapsed();
    while delivered < accepted && moved_at.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = forwarded.load(Ordering::Relaxed);
        if now != delivered {
            (delivered, moved_at, forward_took) = (now, Instant::now(), started.elapsed());
        }
    }
    let (rss, cpu_after) = measure::process_usage(operator.pid());
    let split_after = measure::cpu_split(operator.pid());
    let own_after = measure::cpu_split(std::process::id());

    println!(
        "webhook receiver, loopback, {events} signed events to {CONNECTIONS} connections, {in_flight} in flight; load {}:",
        measure::load()
    );
    let rate = accepted as f64 / took.as_secs_f64();
    println!(
        "  accepted {accepted}/{events} in {:.2} s: {rate:.0} events/s, {:.2}× the target of {TARGET:.0}",
        took.as_secs_f64(),
        rate / TARGET
    );
    println!(
        "  latency p50 {:.2} ms, p99 {:.2} ms",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99)
    );
    println!(
        "  forwarded {delivered}/{accepted} to the sink, the last at {:.2} s: {:.0} events/s; {} dropped past a \
         connection's queue",
        forward_took.as_secs_f64(),
        delivered as f64 / forward_took.as_secs_f64(),
        accepted - delivered
    );
    println!(
        "  operator: {:.2} CPU s for the run ({:.0} events per CPU second), peak RSS {rss:.1} MiB",
        cpu_after - cpu_before,
        accepted as f64 / (cpu_after - cpu_before)
    );
    let per_event = |after: (f64, f64), before: (f64, f64)| {
        (
            (after.0 - before.0) / accepted as f64 * 1e6,
            (after.1 - before.1) / accepted as f64 * 1e6,
        )
    };
    let (user, system) = per_event(split_after, split_before);
    let (own_user, own_system) = per_event(own_after, own_before);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "  CPU per event: operator {user:.0} µs user + {system:.0} µs kernel; load generator and sink (this \
         process) {own_user:.0} µs user + {own_system:.0} µs kernel; {cores} cores: {:.0} events/s at most at \
         this cost",
        cores as f64 * 1e6 / (user + system + own_user + own_system)
    );
    let (busy, total) = (machine_after.0 - machine_before.0, machine_after.1 - machine_before.1);
    println!(
        "  while posting: the machine's cores {:.0} % busy; per event, kube-apiserver {:.0} µs and etcd {:.0} µs \
         (the receiver's counts written to the connections' status every {:?}: a read and a patch each)",
        100.0 * busy / total.max(1.0),
        (plane_after[0] - plane_before[0]) / accepted as f64 * 1e6,
        (plane_after[1] - plane_before[1]) / accepted as f64 * 1e6,
        servicenow_operator::webhook::counter::FLUSH_EVERY,
    );
    let refused: Vec<u16> = outcomes
        .iter()
        .map(|(status, _)| *status)
        .filter(|status| *status != 202)
        .collect();
    if !refused.is_empty() {
        println!(
            "  not accepted: {} (statuses {:?})",
            refused.len(),
            &refused[..refused.len().min(10)]
        );
    }
}

/// The machine's CPU time so far, in clock ticks of all cores: (busy, total), from `/proc/stat`.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .expect("the cpu line of /proc/stat")
        .split_whitespace()
        .map(|field| field.parse().expect("a tick count"))
        .collect();
    let total: f64 = ticks.iter().sum();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    (total - ticks[3] - ticks[4], total)
}
