//! Conformance: servicenow-api.md §4 (Email API), §6 item 14.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_sending_needs_email_api_send_and_answers_200_with_id_and_links() {
    let (server, client) = start().await;
    let (_, incident) = post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"short_description": "mail me"}),
    )
    .await;
    let incident = incident["result"]["sys_id"].as_str().unwrap().to_string();
    let mail = json!({"to": ["a@example.com"], "subject": "Hi", "text": "body", "table_name": "incident", "table_record_id": incident});
    let (status, body) = post_json(&client, "neo.agent", "/api/now/v1/email", mail.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["status"], "failure");
    server.admin().grant_role("neo.agent", "email_api_send").unwrap();
    let (status, body) = post_json(&client, "neo.agent", "/api/now/v1/email", mail).await;
    assert_eq!(status, 200, "{body}");
    let id = body["result"]["id"].as_str().unwrap();
    assert_eq!(
        body["result"]["links"][0],
        json!({"rel": "self", "href": format!("/now/v1/email/{id}")})
    );
    assert_eq!(body["result"]["links"][1]["rel"], "status");
    let (status, read) = get_json(&client, "neo.agent", &format!("/api/now/v1/email/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["result"]["to"], json!(["a@example.com"]));
    assert_eq!(read["result"]["type"], "send-ready");
    assert_eq!(read["result"]["subject"], "Hi");
    assert_eq!(server.admin().records("sys_email", "instance=").len(), 0);
    assert_eq!(
        server
            .admin()
            .records("sys_email", &format!("instance={incident}"))
            .len(),
        1
    );
    let (status, _) = post_json(
        &client,
        "neo.agent",
        "/api/now/v1/email",
        json!({"subject": "no recipients"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post_json(&client, "neo.agent", "/api/now/email", json!({"to": ["a@example.com"]})).await;
    assert_eq!(status, 400, "versioned URL only");
}
