//! The fault matrix of a first provisioning, against a real API server and snowsim: the operator
//! is killed (SIGKILL) after **each** call it makes to the instance — after the token refresh,
//! the identity and role reads, the record lookups, the property create, the rule create, the
//! legacy-rule delete (then in the status write that follows) — and started again. After each
//! kill the invariants hold: exactly one rule and one property on the instance, each created by
//! exactly one request, a status naming them, no secret in any log, Event or status.

mod support;

use std::time::Duration;

use support::{
    poll_until,
    scene::{LEGACY_QUERY, PROPERTY_QUERY, RULE_QUERY, Scene},
};

/// `METHOD path → status` of a request-log entry, a record's sys_id in the path as `{sys_id}`.
fn call(entry: &snowsim::RequestLogEntry) -> String {
    let path = match entry.path.rsplit_once('/') {
        Some((table, id)) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("{table}/{{sys_id}}")
        }
        _ => entry.path.clone(),
    };
    format!("{} {path} → {}", entry.method, entry.status)
}

/// Provisions with a legacy rule to delete (so the first provisioning makes every kind of write),
/// kills the operator once the instance has served `calls` requests, starts it again, and checks
/// the invariants. Returns the call the kill followed.
async fn killed_after_call(calls: usize) -> String {
    let scene = Scene::new(serde_json::json!({})).await;
    scene.insert_legacy_rule().await;
    let admin = scene.simulator.admin();
    admin.clear_request_log();
    let mut first = scene.start_operator(&[]).await;
    let served = poll_until(
        Duration::from_secs(30),
        &format!("the instance to serve {calls} calls"),
        || async {
            let log = admin.request_log();
            (log.len() >= calls).then(|| log[calls - 1].clone())
        },
    )
    .await;
    first.kill();

    let (_second, status) = scene.restarted_ready(&first).await;

    let after = call(&served);
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1, "killed after {after}: exactly one rule: {rules:#?}");
    let properties = admin.records("sys_properties", PROPERTY_QUERY);
    assert_eq!(
        properties.len(),
        1,
        "killed after {after}: exactly one property: {properties:#?}"
    );
    assert!(
        admin.records("sys_script", LEGACY_QUERY).is_empty(),
        "killed after {after}: the legacy rule is left"
    );
    let log = admin.request_log();
    for table in ["sys_script", "sys_properties"] {
        let creates = log
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with(&format!("/table/{table}")))
            .count();
        assert_eq!(creates, 1, "killed after {after}: {table} created {creates} times");
    }
    let webhook = status.webhook.expect("webhook status");
    assert_eq!(
        webhook.business_rule_sys_id.as_deref(),
        Some(rules[0]["sys_id"].as_str())
    );
    assert_eq!(
        webhook.callback_property_sys_id.as_deref(),
        Some(properties[0]["sys_id"].as_str())
    );
    scene.assert_no_secret_leaked().await;
    after
}

/// The calls of an uninterrupted first provisioning with a legacy rule to delete.
async fn first_provisioning_calls() -> Vec<String> {
    let scene = Scene::new(serde_json::json!({})).await;
    scene.insert_legacy_rule().await;
    scene.simulator.admin().clear_request_log();
    let ready = scene.ready(&[]).await;
    ready.simulator.admin().request_log().iter().map(call).collect()
}

#[tokio::test]
async fn an_operator_killed_after_each_call_of_a_first_provisioning_ends_with_one_rule_and_one_property() {
    let calls = first_provisioning_calls().await;
    // refresh, identity, roles, the lookups, then the three writes.
    for write in [
        "POST /api/now/v2/table/sys_properties",
        "POST /api/now/v2/table/sys_script",
        "DELETE",
    ] {
        assert!(calls.iter().any(|c| c.starts_with(write)), "no {write} in {calls:#?}");
    }
    // Up to the last write (the legacy rule's delete): the kill after it lands in the status write.
    let last_write = calls.iter().position(|c| c.starts_with("DELETE")).expect("a delete") + 1;
    let mut killed_after = Vec::new();
    for index in 1..=last_write {
        killed_after.push(killed_after_call(index).await);
    }
    // Each kill followed the call of the same rank in an uninterrupted run: every step was hit.
    assert_eq!(killed_after, calls[..last_write]);
}
