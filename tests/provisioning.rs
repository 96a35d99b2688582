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
    Observed,
    audit::AuditLog,
    conditions::condition,
    instance::{self, AGENT},
    poll_until,
    proxy::ConnectProxy,
    scene::{LEGACY_QUERY, PROPERTY_QUERY, RULE_QUERY, Ready, Scene, ready_connection, wait_for_status},
};

#[tokio::test]
async fn a_consented_connection_reaches_ready_to_sync_with_one_rule_and_one_property() {
    reaches_ready_to_sync_with_one_rule_and_one_property(instance::least_privilege()).await;
}

#[tokio::test]
async fn with_an_administrator_account_too() {
    reaches_ready_to_sync_with_one_rule_and_one_property(instance::admin_account()).await;
}

/// The happy path on an instance set up as `config` says.
async fn reaches_ready_to_sync_with_one_rule_and_one_property(config: snowsim::Config) {
    let simulator = instance::simulator_of(config).await;
    let scene = Scene::with_simulator(simulator, serde_json::json!({})).await;
    let audit = AuditLog::of(&scene.client, scene.ns.name()).await;
    let mark = audit.mark().await;
    let ready = scene.ready(&[]).await;
    let admin = ready.simulator.admin();
    let connection = ready.api().get("acme").await.unwrap();
    // The webhook Secret, which only the operator creates, is not asked for before it is created:
    // the Secret watch had listed the namespace without it (a create would be refused, 409, if
    // it existed after all).
    let requests = audit.since(&mark).await;
    let webhook_secret = servicenow_operator::secrets::webhook_secret_name(&connection);
    let of_webhook_secret = |verb: &str| {
        requests
            .matching(|r| r.verb == verb && r.object_ref.resource == "secrets" && r.object_ref.name == webhook_secret)
    };
    let created = of_webhook_secret("create");
    assert_eq!(created.len(), 1, "one create of {webhook_secret}:\n{requests}");
    assert!(
        of_webhook_secret("get")
            .iter()
            .all(|get| get.received() > created[0].received()),
        "{webhook_secret} was read before it was created:\n{requests}"
    );
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
    // The gauges are set after the status write that the test saw: wait for them, with a deadline.
    poll_until(Duration::from_secs(10), "the Ready=True gauge to be 1", || async {
        let value = ready.operator.metric(&series("True")).await;
        if value == 1.0 {
            Observed::Done(())
        } else {
            Observed::not_yet(value)
        }
    })
    .await;
    let page = ready.operator.metrics_page().await;
    for other in ["False", "Unknown"] {
        assert!(page.contains(&format!("{} 0", series(other))), "{other}: {page}");
    }
    ready.assert_no_secret_leaked().await;
}

/// A resync that finds everything as it should be writes nothing: no status patch, no Secret, no
/// Event, no call to ServiceNow but one batch of reads (roles, rule, property) per reconcile. Counted, not inferred: the API server's requests from
/// its audit log (a `resourceVersion` would not see an identical status patch), the instance's
/// calls from snowsim's request log. The reads are printed.
#[tokio::test]
async fn a_resync_makes_no_write_to_servicenow_and_no_status_patch() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    let audit = AuditLog::of(&ready.client, ready.ns.name()).await;
    // Reconciles of one connection run one at a time: once this request is echoed, every
    // reconcile of the provisioning is over. Its own status patch (the echo) comes before the mark.
    ready.reconcile_now("before-the-resync").await;
    let mark = audit.mark().await;
    admin.clear_request_log();
    // The resync: a change to the credentials Secret's metadata wakes a reconcile that finds
    // nothing to change (the test's own write is not counted: it carries the harness's agent).
    let secrets: Api<Secret> = Api::namespaced(ready.client.clone(), ready.ns.name());
    let label = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    secrets
        .patch("acme-oauth", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    poll_until(
        Duration::from_secs(20),
        "the resync to read the instance's properties",
        || async {
            admin
                .request_log()
                .iter()
                .any(|c| c.path.ends_with("/sys_properties"))
                .then_some(())
        },
    )
    .await;
    // That reconcile started before this request, so the request wakes another one after it: the
    // window holds the whole resync, and ends with the echo of this request — its one status patch.
    ready.reconcile_now("after-the-resync").await;
    let requests = audit.since(&mark).await;
    let calls = admin.request_log();
    eprintln!(
        "the API server's requests in {} during the resync and the reconcile after it:\n{requests}",
        ready.ns.name()
    );
    eprintln!(
        "their calls to the instance: {} ({} reads, batched or not)",
        calls.iter().filter(|c| !c.batch_item).count(),
        calls.iter().filter(|c| c.method == "GET").count()
    );

    let status_patches = requests.writes_to("servicenowconnections", Some("status"));
    assert_eq!(
        status_patches.len(),
        1,
        "a resync patched the status (the one patch expected is the echo that ends the window):\n{requests}"
    );
    let connection_writes = requests.writes_to("servicenowconnections", None);
    assert_eq!(
        connection_writes.len(),
        1,
        "a resync wrote to the connection:\n{requests}"
    );
    let secret_writes = requests.writes_to("secrets", None);
    assert!(secret_writes.is_empty(), "a resync wrote a Secret:\n{requests}");
    let event_writes = requests.writes_to("events", None);
    assert!(event_writes.is_empty(), "a resync wrote an Event:\n{requests}");
    assert!(
        !requests.reads().is_empty(),
        "no read counted: the audit log shows nothing of the resync\n{requests}"
    );
    let writes: Vec<_> = calls.iter().filter(|c| c.is_write()).collect();
    assert!(writes.is_empty(), "a resync wrote to ServiceNow: {writes:#?}");
    // The token and the OAuth user are known: each reconcile reads the roles and the webhook
    // records in one Batch API call, and calls nothing else.
    let other: Vec<_> = calls
        .iter()
        .filter(|c| !c.batch_item && c.path != snowsim::batch::PATH)
        .collect();
    assert!(other.is_empty(), "a resync made calls beside its batch: {other:#?}");
    assert!(
        calls
            .iter()
            .any(|c| c.batch_item && c.path.ends_with("/sys_user_has_role")),
        "a resync did not check the roles: {calls:#?}"
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
