//! Benchmark of the webhook receiver against a real API server, on loopback: how many signed
//! events a second the operator accepts (signature, time window and replay checks included) and
//! forwards to a sink, with the latency of an accepted request. Prints the figures; the target of
//! issue 16 (≥ 20,000 events/s accepted) is read off them, never asserted.
//!
//! `cargo bench --bench webhook` (with `ENVTEST_KUBECONFIG` set, as `make bench` does, or it
//! starts its own control plane). The public listener's rate limits are raised for the run: they
//! are what a real deployment sets per client, not what the receiver can take.

#[path = "../tests/support/mod.rs"]
mod support;

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
use servicenow_operator::{servicenow::SecretString, webhook::signature};
use support::{
    operator::free_port,
    scene::{CONNECTION, Scene},
};

/// Events sent.
const EVENTS: usize = 20_000;
/// Requests in flight at once.
const IN_FLIGHT: usize = 64;

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

#[tokio::main]
async fn main() {
    let port = free_port();
    let forwarded = sink(port).await;
    let sink_url = format!("http://127.0.0.1:{port}/events");
    let unlimited = ["1000000/1s"; 2];
    let ready = Scene::new(serde_json::json!({"webhook": {"sinkUrl": sink_url}}))
        .await
        .ready(&[
            "--webhook-rate-limit-per-ip",
            unlimited[0],
            "--webhook-rate-limit",
            unlimited[1],
        ])
        .await;
    let secrets: Api<Secret> = Api::namespaced(ready.client.clone(), ready.ns.name());
    let key = secrets
        .get("acme-webhook")
        .await
        .expect("the webhook Secret")
        .data
        .and_then(|mut data| data.remove("token"))
        .map(|value| SecretString::new(String::from_utf8(value.0).expect("a UTF-8 key")))
        .expect("a signing key");
    let url = format!(
        "{}/callback/servicenow?connection={}%2F{CONNECTION}",
        ready.operator.public_url,
        ready.ns.name()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("an HTTP client");
    // Signed up front, as the instance signs each event before it sends it.
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond().to_string();
    let requests: Vec<(String, String)> = (0..EVENTS)
        .map(|n| {
            let body = serde_json::json!({
                "id": format!("{n:032x}"), "table": "incident", "sys_id": format!("{n:032x}"),
                "operation": "update", "number": format!("INC{n:07}"), "sys_updated_on": "2026-12-04 12:00:00",
            })
            .to_string();
            let signature = signature::sign(&key, &now, body.as_bytes());
            (body, signature)
        })
        .collect();

    let started = Instant::now();
    let outcomes: Vec<(u16, Duration)> = futures::stream::iter(requests)
        .map(|(body, signature)| {
            let (client, url, now) = (&client, &url, &now);
            async move {
                let sent = Instant::now();
                let status = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header(signature::TIMESTAMP_HEADER, now.as_str())
                    .header(signature::SIGNATURE_HEADER, signature)
                    .body(body)
                    .send()
                    .await
                    .map_or(0, |answer| answer.status().as_u16());
                (status, sent.elapsed())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let took = started.elapsed();
    let accepted = outcomes.iter().filter(|(status, _)| *status == 202).count();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|(_, latency)| *latency).collect();
    latencies.sort_unstable();

    // Forwarding is in the background: poll the sink until it has them all, or its count has not
    // moved for 2 s (events past the per-connection queue of 256 are dropped and counted, not
    // delivered), or a deadline.
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

    println!("webhook receiver, loopback, {EVENTS} signed events, {IN_FLIGHT} in flight:");
    println!(
        "  accepted {accepted}/{EVENTS} in {:.2} s: {:.0} events/s (target ≥ 20,000)",
        took.as_secs_f64(),
        accepted as f64 / took.as_secs_f64()
    );
    println!(
        "  latency p50 {:.2} ms, p99 {:.2} ms",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99)
    );
    println!(
        "  forwarded {delivered}/{accepted} to the sink, the last at {:.2} s: {:.0} events/s; {} dropped past the \
         per-connection queue (256 waiting)",
        forward_took.as_secs_f64(),
        delivered as f64 / forward_took.as_secs_f64(),
        accepted - delivered
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
