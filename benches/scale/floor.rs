//! The floor: the least any client must do to bring one connection to READY_TO_SYNC — refresh
//! the token, read the identity and its roles, look up the callback property and the Business
//! Rule (both in one Batch API request, as the operator does, and only once the roles are known:
//! an account that may not provision does not read the records), create them, write the status
//! once — with nothing else (no Secret reads, no retries, no Events), at the operator's
//! concurrency: 6 instance calls. The operator's time over this time is the overhead.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, stream};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use servicenow_operator::api::{ServiceNowConnection, SyncState};

use crate::{fleet::Member, support::instance::AGENT};

/// The Business Rule's script, as the operator provisions it.
const RULE_SCRIPT: &str = include_str!("../../src/provision/task_webhook.js");
/// The Business Rule's name.
const RULE_NAME: &str = "Neo Agent — Task Webhook";
/// The callback property's name.
const PROPERTY: &str = "x_neoagent.callback_url";

/// Brings every member's connection (in `connections`) to READY_TO_SYNC, `concurrency` at a
/// time, with `http` (resolving every instance host to the simulator); returns the wall time.
pub async fn run(
    http: &reqwest::Client,
    connections: &Api<ServiceNowConnection>,
    members: &[Member],
    concurrency: usize,
) -> Duration {
    let started = Instant::now();
    stream::iter(members)
        .for_each_concurrent(concurrency, |member| one(http, connections, member))
        .await;
    started.elapsed()
}

/// Panics with the call and the answer unless it is a success; returns its JSON.
async fn expect_success(what: &str, answer: reqwest::Result<reqwest::Response>) -> Value {
    let answer = answer.unwrap_or_else(|error| panic!("floor: {what}: {error}"));
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    assert!(status.is_success(), "floor: {what}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("floor: {what}: {error} in {body}"))
}

async fn one(http: &reqwest::Client, connections: &Api<ServiceNowConnection>, member: &Member) {
    let base = format!("https://{}.service-now.com", member.name);
    let token = expect_success(
        "refresh the token",
        http.post(format!("{base}/oauth_token.do"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &member.refresh_token),
                ("client_id", &member.client_id),
                ("client_secret", &member.client_secret),
            ])
            .send()
            .await,
    )
    .await;
    let access = token["access_token"].as_str().expect("an access token").to_owned();
    let table = |name: &str| format!("{base}/api/now/table/{name}");
    let get = |name: &str, query: &[(&str, &str)]| http.get(table(name)).bearer_auth(&access).query(query).send();
    let post = |name: &str, body: Value| http.post(table(name)).bearer_auth(&access).json(&body).send();

    let users = expect_success(
        "read the identity",
        get(
            "sys_user",
            &[
                ("sysparm_query", &format!("user_name={AGENT}")),
                ("sysparm_fields", "sys_id,user_name"),
                ("sysparm_limit", "1"),
            ],
        )
        .await,
    )
    .await;
    let user = users["result"][0]["sys_id"]
        .as_str()
        .expect("the user's sys_id")
        .to_owned();
    expect_success(
        "read the roles",
        get(
            "sys_user_has_role",
            &[
                ("sysparm_query", &format!("user={user}^state=active")),
                ("sysparm_fields", "role.name"),
            ],
        )
        .await,
    )
    .await;
    let lookups = json!({
        "batch_request_id": "1",
        "rest_requests": [
            {
                "id": "property", "method": "GET",
                "url": format!("/api/now/table/sys_properties?sysparm_query=name%3D{PROPERTY}&sysparm_limit=1"),
                "headers": [{"name": "Accept", "value": "application/json"}],
            },
            {
                "id": "rule", "method": "GET",
                "url": format!(
                    "/api/now/table/sys_script?sysparm_query={}&sysparm_limit=1",
                    url::form_urlencoded::byte_serialize(format!("name={RULE_NAME}^collection=task").as_bytes())
                        .collect::<String>()
                ),
                "headers": [{"name": "Accept", "value": "application/json"}],
            },
        ],
    });
    let looked_up = expect_success(
        "look up the property and the rule",
        http.post(format!("{base}/api/now/v1/batch"))
            .bearer_auth(&access)
            .json(&lookups)
            .send()
            .await,
    )
    .await;
    let statuses: Vec<u64> = looked_up["serviced_requests"]
        .as_array()
        .expect("floor: a batch answer")
        .iter()
        .filter_map(|item| item["status_code"].as_u64())
        .collect();
    assert_eq!(statuses, [200, 200], "floor: the lookups: {looked_up}");
    expect_success(
        "create the property",
        post(
            "sys_properties",
            json!({"name": PROPERTY, "value": "https://operator.example/callback/servicenow"}),
        )
        .await,
    )
    .await;
    expect_success(
        "create the rule",
        post(
            "sys_script",
            json!({
                "name": RULE_NAME, "collection": "task", "when": "after", "active": "true",
                "action_insert": "true", "action_update": "true", "script": RULE_SCRIPT,
            }),
        )
        .await,
    )
    .await;
    let status = json!({"status": {"syncState": SyncState::ReadyToSync, "observedGeneration": 1}});
    connections
        .patch_status(&member.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("floor: write the status");
}

/// Removes what the floor created on the instances, so the operator starts from the same state.
pub async fn undo(members: &[Member]) {
    for member in members {
        for (table, query) in [
            ("sys_properties", format!("name={PROPERTY}")),
            ("sys_script", format!("name={RULE_NAME}")),
        ] {
            for record in member.admin.records(table, &query) {
                member
                    .admin
                    .delete(table, &record["sys_id"])
                    .await
                    .expect("delete what the floor created");
            }
        }
        member.admin.clear_request_log();
    }
}
