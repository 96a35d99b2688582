//! The operator end to end against a real API server and snowsim: a connection with a refresh
//! token reaches READY_TO_SYNC with exactly one rule and one property; a resync then makes no
//! write to ServiceNow and no status patch; drift is repaired; no secret leaks anywhere.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use servicenow_operator::api::{ServiceNowConnection, SyncState};
use support::{
    TestNamespace,
    operator::{
        AGENT, Operator, Seed, condition, create_connection, install_crd, put_secret, seed, simulator, wait_for_status,
    },
    poll_until,
};

const RULE_QUERY: &str = "name=Neo Agent — Task Webhook^collection=task";
const LEGACY_QUERY: &str = "name=Neo Agent — Incident Webhook";
const PROPERTY_QUERY: &str = "name=x_neoagent.callback_url";

/// A namespace, a simulator, the Secrets of a consented connection `acme`, the connection, and
/// the operator; returns once the connection is READY_TO_SYNC.
struct Ready {
    client: Client,
    ns: TestNamespace,
    simulator: snowsim::Server,
    operator: Operator,
    seed: Seed,
}

async fn ready_connection(extra_spec: serde_json::Value) -> Ready {
    let client = install_crd().await;
    let ns = TestNamespace::new(&client).await;
    let simulator = simulator().await;
    let seed = seed(&simulator, AGENT).await;
    put_secret(
        &client,
        ns.name(),
        "acme-oauth",
        &[("clientId", &seed.client_id), ("clientSecret", &seed.client_secret)],
    )
    .await;
    put_secret(
        &client,
        ns.name(),
        "acme-token",
        &[("refreshToken", &seed.refresh_token)],
    )
    .await;
    let mut spec = serde_json::json!({
        "instanceUrl": "https://acme.service-now.com",
        "credentialsSecretRef": {"name": "acme-oauth"},
        "expectedUserName": AGENT,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    create_connection(&client, ns.name(), "acme", spec).await;
    let operator = Operator::start(ns.name(), &simulator).await;
    wait_for_status(&client, ns.name(), "acme", "READY_TO_SYNC", |s| {
        s.sync_state == Some(SyncState::ReadyToSync)
    })
    .await;
    Ready {
        client,
        ns,
        simulator,
        operator,
        seed,
    }
}

impl Ready {
    fn api(&self) -> Api<ServiceNowConnection> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    async fn annotate(&self, key: &str, value: &str) {
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        self.api()
            .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }

    /// Every secret value this test knows of.
    fn secrets(&self) -> Vec<String> {
        let mut values = vec![self.seed.client_secret.clone(), self.seed.refresh_token.clone()];
        values.extend(self.simulator.admin().tokens().into_iter().map(|t| t.token));
        values
    }

    /// Fails when a secret value appears in the operator's logs, the connection (status
    /// included) or its Events.
    async fn assert_no_secret_leaked(&self) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), self.ns.name());
        let webhook = secrets.get("acme-webhook").await.expect("the webhook token Secret");
        let webhook_token = String::from_utf8(webhook.data.unwrap()["token"].0.clone()).unwrap();
        let connection = serde_json::to_string(&self.api().get("acme").await.unwrap()).unwrap();
        let events: Api<Event> = Api::namespaced(self.client.clone(), self.ns.name());
        let events = serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
        let logs = self.operator.logs();
        let mut values = self.secrets();
        values.push(webhook_token);
        for value in values.iter().filter(|v| v.len() >= 8) {
            assert!(
                !logs.contains(value.as_str()),
                "a secret value appears in the operator's logs"
            );
            assert!(
                !connection.contains(value.as_str()),
                "a secret value appears in the connection"
            );
            assert!(!events.contains(value.as_str()), "a secret value appears in an Event");
        }
    }
}

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
    repaired_after(&ready, "legacy-present", async |admin| {
        admin
            .insert(
                "sys_script",
                [
                    ("name", "Neo Agent — Incident Webhook"),
                    ("collection", "incident"),
                    ("active", "true"),
                ],
            )
            .await
            .unwrap();
    })
    .await;
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
