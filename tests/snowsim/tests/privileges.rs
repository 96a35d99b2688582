//! servicenow-api.md §7: what a service account may write on a new instance — the jump-start
//! ACLs (`sys_script` for `admin` or `business_rule_admin`, `sys_properties` for `admin` only),
//! a `security_admin`'s conditional ACL opening `x_neoagent.*` properties to a custom role, the
//! script-writer role even `admin` lacks, and roles contained in `admin`, found by name.

mod common;

use common::*;
use serde_json::json;
use snowsim::{Config, InstanceConfig, UserSpec};

const RULE: &str = "/api/now/table/sys_script";
const PROPERTIES: &str = "/api/now/table/sys_properties";

fn rule() -> serde_json::Value {
    json!({"name": "r", "collection": "task", "when": "after", "advanced": true, "script": "gs.info('x');"})
}

/// A server whose user `worker` (password `worker`) holds `roles`.
async fn with_worker(roles: &[&str]) -> (snowsim::Server, reqwest::Client) {
    let (server, client) = start().await;
    server
        .admin()
        .add_user(&UserSpec {
            user_name: "worker".into(),
            password: "worker".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..UserSpec::default()
        })
        .unwrap();
    (server, client)
}

#[tokio::test]
async fn a_fresh_agent_has_itil_only_and_may_write_neither_rules_nor_properties() {
    let (_server, client) = start().await;
    let (status, body) = post_json(&client, "neo.agent", RULE, rule()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["message"], "Operation Failed",
        "the documented ACL refusal: {body}"
    );
    let (status, _) = post_json(
        &client,
        "neo.agent",
        PROPERTIES,
        json!({"name": "x_neoagent.a", "value": "v"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post_json(&client, "neo.agent", "/api/now/table/incident", json!({})).await;
    assert_eq!(status, 201, "itil writes tasks");
}

#[tokio::test]
async fn business_rule_admin_writes_rules_but_not_properties() {
    let (_server, client) = with_worker(&["business_rule_admin", snowsim::SCRIPT_WRITER_ROLE]).await;
    let (status, body) = post_json(&client, "worker", RULE, rule()).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = post_json(
        &client,
        "worker",
        PROPERTIES,
        json!({"name": "x_neoagent.a", "value": "v"}),
    )
    .await;
    assert_eq!(status, 403, "no granular role writes a property");
}

#[tokio::test]
async fn writing_a_script_needs_the_script_writer_role_even_for_admin() {
    let (server, client) = with_worker(&["admin"]).await;
    let (status, body) = post_json(&client, "worker", RULE, rule()).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = post_json(
        &client,
        "worker",
        RULE,
        json!({"name": "no script", "collection": "task"}),
    )
    .await;
    assert_eq!(status, 201, "a rule without a script needs no script-writer role");
    server
        .admin()
        .grant_role("worker", snowsim::SCRIPT_WRITER_ROLE)
        .unwrap();
    let (status, body) = post_json(&client, "worker", RULE, rule()).await;
    assert_eq!(status, 201, "{body}");
    // On a release before Zurich, no such check.
    let mut behaviour = server.admin().behaviour();
    behaviour.script_writer_role = false;
    server.admin().set_behaviour(behaviour);
    server
        .admin()
        .remove_role("worker", snowsim::SCRIPT_WRITER_ROLE)
        .unwrap();
    let (status, body) = post_json(&client, "worker", RULE, rule()).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_conditional_acl_opens_only_the_matching_properties_to_the_custom_role() {
    let config = Config {
        instances: vec![InstanceConfig::new(HOST).least_privilege("neo.agent")],
        ..Config::default()
    };
    let (server, client) = start_with(config).await;
    let (status, body) = post_json(
        &client,
        "neo.agent",
        PROPERTIES,
        json!({"name": "x_neoagent.callback_url", "value": "https://x"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = post_json(
        &client,
        "neo.agent",
        PROPERTIES,
        json!({"name": "glide.x", "value": "v"}),
    )
    .await;
    assert_eq!(status, 403, "outside the condition");
    let (status, body) = get_json(
        &client,
        "neo.agent",
        &format!("{PROPERTIES}?sysparm_query=nameSTARTSWITHglide"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["result"],
        json!([]),
        "rows outside the condition are not read: {body}"
    );
    let (_, body) = get_json(
        &client,
        "neo.agent",
        &format!("{PROPERTIES}?sysparm_query=name=x_neoagent.callback_url"),
    )
    .await;
    assert_eq!(body["result"].as_array().map(Vec::len), Some(1), "{body}");
    // Without the role, nothing.
    server
        .admin()
        .remove_role("neo.agent", snowsim::INTEGRATION_ROLE)
        .unwrap();
    let (status, body) = get_json(
        &client,
        "neo.agent",
        &format!("{PROPERTIES}?sysparm_query=name=x_neoagent.callback_url"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (403, Some("Insufficient rights to query records")),
        "{body}"
    );
}

#[tokio::test]
async fn admin_contains_itil_and_a_query_by_role_name_finds_the_inherited_grant() {
    let (server, client) = with_worker(&["admin"]).await;
    let user = server.admin().user_sys_id("worker").unwrap();
    let query = format!("/api/now/table/sys_user_has_role?sysparm_query=user={user}^role.name=itil");
    let (status, body) = get_json(&client, "admin", &query).await;
    assert_eq!(status, 200);
    let rows = body["result"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["inherited"], "true");
    let mut roles = server.admin().roles("worker").unwrap();
    roles.sort();
    for role in ["admin", "itil", "business_rule_admin", "email_api_send"] {
        assert!(roles.iter().any(|r| r == role), "{role} not in {roles:?}");
    }
    assert!(
        !roles.iter().any(|r| r == snowsim::SCRIPT_WRITER_ROLE),
        "admin lacks the script-writer role"
    );
    // Removing admin removes what it brought.
    server.admin().remove_role("worker", "admin").unwrap();
    assert_eq!(server.admin().roles("worker").unwrap(), Vec::<String>::new());
    let (_, body) = get_json(&client, "admin", &query).await;
    assert_eq!(body["result"], json!([]));
}
