//! The Batch API (servicenow-api.md §7 "Batch API", `api-reference/rest-apis/batch-api.md`):
//! items run as the batch's caller through the Table API (same ACLs, same request log), each
//! answered inside a 200; size and time limits leave the rest unserviced.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{HOST, add_itil_only, start, url};
use serde_json::{Value, json};
use snowsim::{Fault, FaultAction};

/// The batch path.
const BATCH: &str = "/api/now/v1/batch";

/// A batch item.
fn item(id: &str, method: &str, url: &str, body: Option<Value>) -> Value {
    let mut item = json!({
        "id": id,
        "method": method,
        "url": url,
        "headers": [{"name": "Content-Type", "value": "application/json"},
                    {"name": "Accept", "value": "application/json"}],
    });
    if let Some(body) = body {
        item["body"] = json!(STANDARD.encode(body.to_string()));
    }
    item
}

/// POSTs `body` to `path` as `user` (password = user name; none: no credentials) with `headers`.
async fn post(
    client: &reqwest::Client,
    user: Option<&str>,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = client
        .post(url(path))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(user) = user {
        request = request.basic_auth(user, Some(user));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the batch is answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends a batch of `items` as `user`.
async fn batch(client: &reqwest::Client, user: &str, items: Vec<Value>, headers: &[(&str, &str)]) -> (u16, Value) {
    let body = json!({"batch_request_id": "b1", "rest_requests": items});
    post(client, Some(user), BATCH, &body.to_string(), headers).await
}

/// The decoded JSON body of a serviced item.
fn item_body(item: &Value) -> Value {
    let bytes = STANDARD
        .decode(item["body"].as_str().expect("a Base64 body"))
        .expect("Base64");
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// The ids of `answer[list]`.
fn ids(answer: &Value, list: &str) -> Vec<String> {
    answer[list]
        .as_array()
        .expect(list)
        .iter()
        .map(|v| v.get("id").unwrap_or(v).as_str().expect("an id").to_string())
        .collect()
}

#[tokio::test]
async fn a_get_and_a_post_in_one_batch_run_as_the_caller_and_an_acl_refusal_is_a_403_item() {
    let (server, client) = start().await;
    add_itil_only(&server, "bob");
    server.admin().clear_request_log();
    let (status, answer) = batch(
        &client,
        "bob",
        vec![
            item("1", "POST", "/api/now/table/incident", Some(json!({"short_description": "batched"}))),
            item(
                "2",
                "GET",
                "/api/now/table/incident?sysparm_query=short_description=batched&sysparm_fields=short_description,opened_by",
                None,
            ),
            item("3", "POST", "/api/now/table/sys_script", Some(json!({"name": "no"}))),
        ],
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["batch_request_id"], "b1");
    assert_eq!(ids(&answer, "serviced_requests"), ["1", "2", "3"]);
    assert_eq!(answer["unserviced_requests"], json!([]));
    let items = answer["serviced_requests"].as_array().unwrap();

    assert_eq!(
        (items[0]["status_code"].as_u64(), items[0]["status_text"].as_str()),
        (Some(201), Some("Created"))
    );
    assert!(items[0]["execution_time"].is_u64());
    let created = item_body(&items[0]);
    assert_eq!(created["result"]["short_description"], "batched");
    let headers = items[0]["headers"].as_array().expect("headers");
    let location = headers
        .iter()
        .find(|h| h["name"] == "Location")
        .expect("a Location header");
    assert!(
        location["value"]
            .as_str()
            .unwrap()
            .starts_with(&format!("https://{HOST}/api/now/table/incident/")),
        "{location}"
    );

    assert_eq!(items[1]["status_code"], 200);
    let bob = server.admin().user_sys_id("bob").unwrap();
    assert_eq!(
        item_body(&items[1])["result"][0]["opened_by"]["value"],
        bob.as_str(),
        "the item ran as the batch's caller"
    );

    assert_eq!(items[2]["status_code"], 403);
    assert_eq!(items[2]["error_message"], "Operation Failed");
    assert_eq!(item_body(&items[2])["error"]["message"], "Operation Failed");
    assert!(server.admin().records("sys_script", "name=no").is_empty());

    let entries = server.admin().request_log();
    let writes: Vec<bool> = entries.iter().map(|e| e.is_write()).collect();
    assert_eq!(
        writes,
        [true, false, true, false],
        "the batch's own POST writes nothing"
    );
    let log: Vec<(String, String, Option<String>, u16, bool)> = entries
        .into_iter()
        .map(|e| (e.method, e.path, e.user, e.status, e.batch_item))
        .collect();
    let bob = Some("bob".to_string());
    assert_eq!(
        log,
        [
            ("POST".into(), "/api/now/table/incident".into(), bob.clone(), 201, true),
            ("GET".into(), "/api/now/table/incident".into(), bob.clone(), 200, true),
            (
                "POST".into(),
                "/api/now/table/sys_script".into(),
                bob.clone(),
                403,
                true
            ),
            ("POST".into(), BATCH.into(), bob, 200, false),
        ],
        "each item is a request of its own in the log"
    );
}

#[tokio::test]
async fn excluded_headers_are_left_out_and_paths_that_are_no_rest_api_answer_400_items() {
    let (_server, client) = start().await;
    let mut excluded = item("1", "GET", "/api/now/table/incident?sysparm_limit=1", None);
    excluded["exclude_response_headers"] = json!(true);
    let (status, answer) = batch(
        &client,
        "admin",
        vec![
            excluded,
            item("2", "GET", "/snowsim/requests", None),
            item("3", "POST", BATCH, Some(json!({"rest_requests": []}))),
        ],
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let items = answer["serviced_requests"].as_array().unwrap();
    assert_eq!(items[0]["headers"], json!([]));
    for item in &items[1..] {
        assert_eq!(item["status_code"], 400, "{item}");
        assert_eq!(item["error_message"], "Requested URI does not represent any resource");
    }
}

#[tokio::test]
async fn a_malformed_batch_answers_400_no_credentials_401_and_other_versions_are_no_resource() {
    let (server, client) = start().await;
    server.admin().clear_request_log();
    for body in [
        "not json".to_string(),
        json!({"batch_request_id": "1"}).to_string(),
        json!({"rest_requests": [{"id": "1", "method": "GET"}]}).to_string(),
        json!({"rest_requests": [{"id": "1", "method": "POST", "url": "/api/now/table/incident", "body": "%%%"}]})
            .to_string(),
    ] {
        let (status, answer) = post(&client, Some("admin"), BATCH, &body, &[]).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["status"], "failure", "{answer}");
    }
    let valid = json!({"rest_requests": [item("1", "GET", "/api/now/table/incident", None)]}).to_string();
    let (status, answer) = post(&client, None, BATCH, &valid, &[]).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["message"], "User Not Authenticated");
    for path in ["/api/now/batch", "/api/now/v2/batch"] {
        let (status, answer) = post(&client, Some("admin"), path, &valid, &[]).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(
            answer["error"]["message"],
            "Requested URI does not represent any resource"
        );
    }
    assert!(
        server
            .admin()
            .request_log()
            .iter()
            .all(|e| e.path != "/api/now/table/incident"),
        "no item of a refused batch ran"
    );
}

#[tokio::test]
async fn size_limits_leave_the_item_and_the_rest_unserviced() {
    let (server, client) = start().await;
    server.admin().set_property("glide.rest.batch.max.inputSize", "64");
    let small = item(
        "1",
        "POST",
        "/api/now/table/incident",
        Some(json!({"short_description": "s"})),
    );
    let large = item(
        "2",
        "POST",
        "/api/now/table/incident",
        Some(json!({"short_description": "x".repeat(80)})),
    );
    let after = item("3", "GET", "/api/now/table/incident?sysparm_limit=1", None);
    let (status, answer) = batch(&client, "admin", vec![small, large, after.clone()], &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer, "serviced_requests"), ["1"]);
    assert_eq!(answer["unserviced_requests"], json!(["2", "3"]));
    assert!(
        server
            .admin()
            .records("incident", "short_descriptionLIKExxxx")
            .is_empty()
    );

    let (status, answer) = batch(
        &client,
        "admin",
        vec![after],
        &[("X-BATCHREQUEST-MAX-OUTPUT-SIZE", "10")],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer, "serviced_requests"), Vec::<String>::new());
    assert_eq!(answer["unserviced_requests"], json!(["3"]));
}

#[tokio::test]
async fn the_batch_stops_at_its_time_limit_and_the_rest_is_unserviced() {
    let (server, client) = start().await;
    let mut behaviour = server.admin().behaviour();
    behaviour.batch_timeout_ms = 200;
    server.admin().set_behaviour(behaviour);
    server
        .admin()
        .inject_fault(Fault::new("/api/now/table/problem", FaultAction::Latency { ms: 400 }));
    let (status, answer) = batch(
        &client,
        "admin",
        vec![
            item("fast", "GET", "/api/now/table/incident?sysparm_limit=1", None),
            item("slow", "GET", "/api/now/table/problem?sysparm_limit=1", None),
            item("never", "GET", "/api/now/table/incident?sysparm_limit=1", None),
        ],
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer, "serviced_requests"), ["fast"]);
    assert_eq!(answer["unserviced_requests"], json!(["slow", "never"]));
}
