//! Conformance: servicenow-api.md §3.2 and §3.5 (Business Rules run), §6 items 10–11.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use serde_json::json;

/// A plain HTTP listener on loopback recording every POST body.
async fn listener() -> (String, Arc<Mutex<Vec<String>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().push(body);
                "ok"
            }
        }),
    );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(socket, app).await });
    (format!("http://{addr}/callback"), received)
}

/// What the callback property carries after the URL: the signing key (Base64 of `key`), which the
/// rule signs with and never sends.
const SIGNING_KEY: &str = "#key=a2V5";

/// The operator's rule posting to `{callback}?marker` instead of the callback property.
fn marker_script(callback: &str) -> String {
    const PROPERTY: &str = "gs.getProperty('x_neoagent.callback_url', '')";
    assert!(
        OPERATOR_RULE_SCRIPT.contains(PROPERTY),
        "the operator's rule no longer reads the property as {PROPERTY}"
    );
    OPERATOR_RULE_SCRIPT.replace(PROPERTY, &format!("'{callback}?marker{SIGNING_KEY}'"))
}

async fn install(client: &reqwest::Client, callback: &str, active: bool) -> String {
    let (status, _) = post_json(
        client,
        "neo.agent",
        "/api/now/table/sys_properties",
        json!({"name": "x_neoagent.callback_url", "value": format!("{callback}{SIGNING_KEY}")}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = post_json(
        client,
        "neo.agent",
        "/api/now/table/sys_script",
        json!({
            "name": "Neo Agent — Task Webhook", "collection": "task", "when": "async", "active": active,
            "advanced": true, "action_insert": true, "action_update": true, "script": OPERATOR_RULE_SCRIPT,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["result"]["sys_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5_a_rule_on_task_posts_for_incident_sc_task_and_change_request_inserts() {
    let (server, client) = start_least_privilege().await;
    let (callback, received) = listener().await;
    install(&client, &callback, true).await;
    for table in ["incident", "sc_task", "change_request"] {
        let (status, _) = post_json(
            &client,
            "neo.agent",
            &format!("/api/now/table/{table}"),
            json!({"short_description": table}),
        )
        .await;
        assert_eq!(status, 201);
    }
    let delivered = poll_until(Duration::from_secs(10), || {
        let received = received.clone();
        async move {
            let received = received.lock();
            (received.len() >= 3).then(|| received.clone())
        }
    })
    .await;
    let Some(delivered) = delivered else {
        panic!(
            "3 POSTs expected, got {:?}; system log: {:?}",
            received.lock(),
            server.admin().system_log()
        );
    };
    let mut tables: Vec<String> = delivered
        .iter()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["table"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    tables.sort();
    assert_eq!(tables, vec!["change_request", "incident", "sc_task"]);
    assert!(
        server
            .admin()
            .outbound_log()
            .iter()
            .all(|e| e.status == Some(200) && !e.synchronous)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5_an_inactive_rule_posts_nothing() {
    let (server, client) = start_least_privilege().await;
    let (callback, received) = listener().await;
    install(&client, &callback, false).await;
    post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"short_description": "quiet"}),
    )
    .await;
    // A marker rule proves the engine ran for this write: when its POST arrived, the inactive
    // rule's would have too.
    let marker = json!({
        "name": "marker", "collection": "incident", "when": "async", "active": true, "advanced": true,
        "action_insert": true, "script": marker_script(&callback),
    });
    let (status, _) = post_json(&client, "neo.agent", "/api/now/table/sys_script", marker).await;
    assert_eq!(status, 201);
    post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"short_description": "marked"}),
    )
    .await;
    let marker = poll_until(Duration::from_secs(10), || {
        let server = &server;
        async move { (!server.admin().outbound_log().is_empty()).then_some(()) }
    })
    .await;
    assert!(
        marker.is_some(),
        "marker rule did not run: {:?}",
        server.admin().system_log()
    );
    let outbound = server.admin().outbound_log();
    assert_eq!(outbound.len(), 1, "{outbound:?}");
    assert_eq!(outbound[0].rule, "marker");
    assert_eq!(received.lock().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5_a_broken_script_is_logged_and_never_breaks_the_write() {
    let (server, client) = start_least_privilege().await;
    let (status, _) = post_json(
        &client,
        "neo.agent",
        "/api/now/table/sys_script",
        json!({
            "name": "Broken", "collection": "task", "when": "after", "active": true, "advanced": true,
            "action_insert": true, "script": "this is ( not javascript",
        }),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"short_description": "still saved"}),
    )
    .await;
    assert_eq!(status, 201);
    let sys_id = body["result"]["sys_id"].as_str().unwrap();
    assert!(server.admin().record("incident", sys_id).is_some());
    let log = server.admin().system_log();
    assert!(
        log.iter()
            .any(|e| e.source == "Broken" && e.message.contains("did not parse")),
        "{log:?}"
    );
}
