//! The operator end to end against a real API server and snowsim: a connection with a refresh
//! token reaches READY_TO_SYNC with exactly one rule and one property; a resync then makes no
//! write to ServiceNow and no status patch; drift is repaired; `HTTPS_PROXY` is honoured; no secret
//! leaks anywhere.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use servicenow_operator::api::SyncState;
use support::{
    conditions::condition,
    instance::AGENT,
    poll_until,
    proxy::ConnectProxy,
    scene::{LEGACY_QUERY, PROPERTY_QUERY, RULE_QUERY, Ready, Scene, ready_connection, wait_for_status},
};

#[tokio::test]
async fn a_consented_connection_reaches_ready_to_sync_with_one_rule_and_one_property() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    let connection = ready.api().get("acme").await.unwrap();
    let status = connection.status.clone().unwrap();
    assert_eq!(condition(&status, "Ready"), Some(("True".into(), "ReadyToSync".into())));
    assert_eq!(status.observed_generation, connection.metadata.generation);
    let identity = status.identity.clone().expect("identity");
    assert_eq!(Some(identity.sys_id.clone()), admin.user_sys_id(AGENT));
    assert_eq!(identity.user_name, AGENT);
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1, "exactly one rule");
    let rule = &rules[0];
    assert_eq!(
        (
            rule["active"].as_str(),
            rule["action_insert"].as_str(),
            rule["action_update"].as_str()
        ),
        ("true", "true", "true")
    );
    assert_eq!(rule["advanced"], "true");
    assert!(rule["script"].contains("x_neoagent.callback_url") && rule["script"].contains("executeAsync"));
    let properties = admin.records("sys_properties", PROPERTY_QUERY);
    assert_eq!(properties.len(), 1, "exactly one property");
    assert!(properties[0]["value"].starts_with(&format!(
        "{}/callback/servicenow?connection=",
        ready.operator.public_url
    )));
    let webhook = status.webhook.expect("webhook status");
    assert_eq!(webhook.business_rule_sys_id.as_deref(), Some(rule["sys_id"].as_str()));
    assert_eq!(
        webhook.callback_property_sys_id.as_deref(),
        Some(properties[0]["sys_id"].as_str())
    );
    let calls = admin.request_log();
    assert!(
        calls.iter().filter(|c| c.path == "/oauth_token.do").count() == 1,
        "one token refresh: {calls:#?}"
    );
    let series = |condition: &str| {
        format!(
            "servicenow_operator_connection_ready_status{{namespace=\"{}\",name=\"acme\",condition=\"{condition}\"}}",
            ready.ns.name()
        )
    };
    assert_eq!(ready.operator.metric(&series("True")).await, 1.0);
    let page = ready.operator.metrics_page().await;
    for other in ["False", "Unknown"] {
        assert!(page.contains(&format!("{} 0", series(other))), "{other}: {page}");
    }
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_resync_makes_no_write_to_servicenow_and_no_status_patch() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    let before = ready.api().get("acme").await.unwrap();
    admin.clear_request_log();
    // A change to the credentials Secret's metadata triggers a reconcile without changing anything.
    let secrets: Api<Secret> = Api::namespaced(ready.client.clone(), ready.ns.name());
    let label = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    secrets
        .patch("acme-oauth", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    poll_until(Duration::from_secs(20), "the drift check to read the rules", || async {
        admin
            .request_log()
            .iter()
            .any(|c| c.path.ends_with("/sys_properties"))
            .then_some(())
    })
    .await;
    let writes: Vec<_> = admin.request_log().into_iter().filter(|c| c.method != "GET").collect();
    assert!(writes.is_empty(), "a resync wrote to ServiceNow: {writes:#?}");
    let after = ready.api().get("acme").await.unwrap();
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "a resync patched the status"
    );
    ready.assert_no_secret_leaked().await;
}

async fn repaired_after(ready: &Ready, what: &str, damage: impl AsyncFnOnce(&snowsim::Admin)) {
    let admin = ready.simulator.admin();
    damage(&admin).await;
    ready.annotate("neoagent.io/reconnect", what).await;
    wait_for_status(
        &ready.client,
        ready.ns.name(),
        "acme",
        &format!("the reconnect after {what}"),
        |s| s.last_handled_reconnect_at.as_deref() == Some(what) && s.sync_state == Some(SyncState::ReadyToSync),
    )
    .await;
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1, "{what}: exactly one rule");
    assert_eq!(rules[0]["active"], "true", "{what}: the rule is active");
    assert!(
        rules[0]["script"].contains("executeAsync"),
        "{what}: the script is ours"
    );
    assert!(
        admin.records("sys_script", LEGACY_QUERY).is_empty(),
        "{what}: no legacy rule"
    );
    let properties = admin.records("sys_properties", PROPERTY_QUERY);
    assert_eq!(properties.len(), 1, "{what}: exactly one property");
    assert!(
        properties[0]["value"].contains("/callback/servicenow?connection="),
        "{what}: the property is ours"
    );
}

#[tokio::test]
async fn drift_on_the_instance_is_repaired_by_a_reconnect() {
    let ready = ready_connection(serde_json::json!({})).await;
    let rule_id = || ready.simulator.admin().records("sys_script", RULE_QUERY)[0]["sys_id"].clone();
    let property_id = || ready.simulator.admin().records("sys_properties", PROPERTY_QUERY)[0]["sys_id"].clone();

    let id = rule_id();
    repaired_after(&ready, "rule-deleted", async |admin| {
        admin.delete("sys_script", &id).await.unwrap()
    })
    .await;
    let id = rule_id();
    repaired_after(&ready, "rule-deactivated", async |admin| {
        admin.update("sys_script", &id, [("active", "false")]).await.unwrap();
    })
    .await;
    let id = rule_id();
    repaired_after(&ready, "script-edited", async |admin| {
        admin
            .update("sys_script", &id, [("script", "gs.info('hijacked');")])
            .await
            .unwrap();
    })
    .await;
    repaired_after(&ready, "duplicate-added", async |admin| {
        let original = admin.records("sys_script", RULE_QUERY).remove(0);
        let copy: Vec<(String, String)> = original.into_iter().filter(|(k, _)| !k.starts_with("sys_")).collect();
        admin.insert("sys_script", copy).await.unwrap();
    })
    .await;
    repaired_after(&ready, "legacy-present", async |_| ready.insert_legacy_rule().await).await;
    let id = property_id();
    repaired_after(&ready, "property-changed", async |admin| {
        admin
            .update("sys_properties", &id, [("value", "https://evil.example/steal")])
            .await
            .unwrap();
    })
    .await;
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn through_https_proxy_a_connection_reaches_ready_to_sync_with_tls_verified_end_to_end() {
    let scene = Scene::new(serde_json::json!({})).await;
    let proxy = ConnectProxy::start(scene.simulator.addr()).await;
    // The instance's host name leads nowhere: only the proxy reaches the simulator.
    let _operator = scene.start_operator_via_proxy(&proxy.url).await;
    scene
        .wait_for("READY_TO_SYNC through the proxy", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    let connects = proxy.connects();
    assert!(!connects.is_empty(), "nothing went through the proxy");
    assert!(
        connects.iter().all(|authority| authority == "acme.service-now.com:443"),
        "the proxy was asked for something else: {connects:?}"
    );
    scene.assert_no_secret_leaked().await;
}
