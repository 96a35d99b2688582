//! Conformance: servicenow-api.md §3 (records, roles, rights), §6 items 9–10.

mod common;

use common::*;
use serde_json::json;
use snowsim::{ADMIN_ROLE_SYS_ID, ITIL_ROLE_SYS_ID};

/// The child classes of `task`, in creation order, with the number each one's first record gets.
const TASK_CHILDREN: [(&str, &str); 6] = [
    ("incident", "INC0010001"),
    ("problem", "PRB0010001"),
    ("change_request", "CHG0010001"),
    ("sc_request", "REQ0010001"),
    ("sc_req_item", "RITM0010001"),
    ("sc_task", "SCTASK0010001"),
];

/// The names of [`TASK_CHILDREN`].
fn task_child_names() -> Vec<&'static str> {
    TASK_CHILDREN.iter().map(|(table, _)| *table).collect()
}

/// POSTs `body` to `/api/now/table/{table}` as `user`.
async fn insert(
    client: &reqwest::Client,
    user: &str,
    table: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    post_json(client, user, &format!("/api/now/table/{table}"), body).await
}

/// PATCHes `{"value": "w"}` onto the property `sys_id` as `bob`.
async fn patch_property_as_bob(client: &reqwest::Client, sys_id: &str) -> reqwest::Response {
    client
        .patch(url(&format!("/api/now/table/sys_properties/{sys_id}")))
        .basic_auth("bob", Some("bob"))
        .json(&json!({"value": "w"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_task_lists_every_child_class_and_children_are_numbered_per_table() {
    let (_server, client) = start().await;
    let mut numbers = Vec::new();
    for (table, _) in TASK_CHILDREN {
        let (status, body) = insert(&client, "neo.agent", table, json!({"short_description": table})).await;
        assert_eq!(status, 201, "{table}: {body}");
        assert_eq!(body["result"]["sys_class_name"], table);
        numbers.push(body["result"]["number"].as_str().unwrap().to_string());
    }
    let expected: Vec<&str> = TASK_CHILDREN.iter().map(|(_, number)| *number).collect();
    assert_eq!(numbers, expected);
    let (_, tasks) = get_json(
        &client,
        "neo.agent",
        "/api/now/table/task?sysparm_fields=sys_class_name,number",
    )
    .await;
    let classes: Vec<&str> = tasks["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sys_class_name"].as_str().unwrap())
        .collect();
    assert_eq!(classes, task_child_names());
    let (_, incidents) = get_json(&client, "neo.agent", "/api/now/table/incident").await;
    assert_eq!(incidents["result"].as_array().unwrap().len(), 1);
    let incident = incidents["result"][0]["sys_id"].as_str().unwrap();
    let (_, as_task) = get_json(&client, "neo.agent", &format!("/api/now/table/task/{incident}")).await;
    assert!(as_task["result"].get("caller_id").is_none(), "task-level fields only");
    assert_eq!(as_task["result"]["sys_class_name"], "incident");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_sys_db_object_describes_the_hierarchy() {
    let (_server, client) = start().await;
    for child in task_child_names() {
        let (_, body) = get_json(
            &client,
            "neo.agent",
            &format!("/api/now/table/sys_db_object?sysparm_query=name={child}&sysparm_fields=name,super_class.name"),
        )
        .await;
        assert_eq!(body["result"], json!([{"name": child, "super_class.name": "task"}]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_4_roles_have_out_of_box_sys_ids_and_users_see_their_own_grants() {
    let (server, client) = start().await;
    add_itil_only(&server, "bob");
    let (_, roles) = get_json(
        &client,
        "bob",
        "/api/now/table/sys_user_role?sysparm_query=nameINitil,admin^ORDERBYname&sysparm_fields=name,sys_id",
    )
    .await;
    assert_eq!(
        roles["result"],
        json!([{"name": "admin", "sys_id": ADMIN_ROLE_SYS_ID}, {"name": "itil", "sys_id": ITIL_ROLE_SYS_ID}])
    );
    let (_, admin) = get_json(
        &client,
        "bob",
        "/api/now/table/sys_user?sysparm_query=user_name=admin&sysparm_fields=sys_id",
    )
    .await;
    assert_eq!(admin["result"][0]["sys_id"], snowsim::ADMIN_SYS_ID);
    let (_, grants) = get_json(
        &client,
        "bob",
        "/api/now/table/sys_user_has_role?sysparm_fields=user.user_name,role.name,state,inherited",
    )
    .await;
    assert_eq!(
        grants["result"],
        json!([{"user.user_name": "bob", "role.name": "itil", "state": "active", "inherited": "false"}])
    );
    let (_, all) = get_json(
        &client,
        "admin",
        "/api/now/table/sys_user_has_role?sysparm_query=user.user_name=neo.agent&sysparm_fields=role.name",
    )
    .await;
    assert_eq!(
        all["result"],
        json!([{"role.name": "itil"}]),
        "a new account holds itil only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_an_itil_only_user_gets_403_on_rules_and_properties_until_granted() {
    let (server, client) = start().await;
    add_itil_only(&server, "bob");
    let rule = || json!({"name": "x", "collection": "task"});
    let (status, body) = insert(&client, "bob", "sys_script", rule()).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error": {"message": "Operation Failed", "detail": "ACL Exception Insert Failed due to security constraints"}, "status": "failure"})
    );
    let callback_property = || json!({"name": "x_neoagent.callback_url", "value": "v"});
    let (status, body) = insert(&client, "bob", "sys_properties", callback_property()).await;
    assert_eq!(
        (status, body["error"]["detail"].as_str()),
        (403, Some("ACL Exception Insert Failed due to security constraints"))
    );
    let (status, body) = get_json(&client, "bob", "/api/now/table/sys_script").await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (403, Some("Insufficient rights to query records")),
        "a table the user may read nothing of"
    );
    let mut lenient = server.admin().behaviour();
    lenient.list_denied_is_403 = false;
    server.admin().set_behaviour(lenient);
    let (status, body) = get_json(&client, "bob", "/api/now/table/sys_script").await;
    assert_eq!(
        (status, body),
        (200, json!({"result": []})),
        "or unreadable rows are silently dropped"
    );
    let (_, created) = insert(&client, "admin", "sys_properties", callback_property()).await;
    let property = created["result"]["sys_id"].as_str().unwrap().to_string();
    let update = patch_property_as_bob(&client, &property).await;
    assert_eq!(update.status(), 404, "a record the user cannot read is not found");
    server.admin().set_acl(snowsim::AclRule::new(
        "sys_properties",
        snowsim::Operation::Read,
        &["itil"],
    ));
    let update = patch_property_as_bob(&client, &property).await;
    assert_eq!(update.status(), 403);
    let body: serde_json::Value = update.json().await.unwrap();
    assert_eq!(
        body["error"]["detail"],
        "ACL Exception Update Failed due to security constraints"
    );
    let delete = client
        .delete(url(&format!("/api/now/table/sys_properties/{property}")))
        .basic_auth("bob", Some("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);
    server.admin().grant_role("bob", "business_rule_admin").unwrap();
    let (status, _) = insert(&client, "bob", "sys_script", rule()).await;
    assert_eq!(status, 201);
    // No granular role writes a property: business_rule_admin does not.
    let (status, _) = insert(&client, "bob", "sys_properties", json!({"name": "y", "value": "v"})).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_journal_inputs_land_in_sys_journal_field_and_read_back_empty() {
    let (_server, client) = start().await;
    let (_, created) = insert(
        &client,
        "neo.agent",
        "incident",
        json!({"work_notes": "looked at it", "comments": "hello"}),
    )
    .await;
    assert_eq!(created["result"]["work_notes"], "");
    let sys_id = created["result"]["sys_id"].as_str().unwrap();
    let (_, journal) = get_json(&client, "neo.agent",
        &format!("/api/now/table/sys_journal_field?sysparm_query=element_id={sys_id}^ORDERBYelement&sysparm_fields=element,value,name,sys_created_by")).await;
    assert_eq!(
        journal["result"],
        json!([
            {"element": "comments", "value": "hello", "name": "incident", "sys_created_by": "neo.agent"},
            {"element": "work_notes", "value": "looked at it", "name": "incident", "sys_created_by": "neo.agent"},
        ])
    );
    let (status, _) = insert(
        &client,
        "neo.agent",
        "task_time_worked",
        json!({"task": sys_id, "time_worked": "1970-01-01 01:00:00"}),
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_4_inactive_users_cannot_authenticate() {
    let (server, client) = start().await;
    server.admin().set_user_active("neo.agent", false).unwrap();
    assert_eq!(get_json(&client, "neo.agent", "/api/now/table/incident").await.0, 401);
}
