//! A connection over its life, against a real API server and snowsim: credentials rotated in
//! place, an operator killed half-way through provisioning, an operator whose public URL changed,
//! an instance whose webhook another connection owns, deletion with either policy (including a
//! connection whose instance cannot be reached), suspension, and one operator watching two
//! namespaces.

mod support;

use std::time::Duration;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::{Api, api::DeleteParams};
use servicenow_operator::api::{RECONNECT, SyncState, conditions::Reason};
use snowsim::{Fault, FaultAction};
use support::{
    conditions::{assert_condition, condition},
    control_plane,
    instance::AGENT,
    operator::{Operator, free_port},
    poll_until,
    scene::{CONNECTION, LEGACY_QUERY, PROPERTY_QUERY, RULE_QUERY, Scene, ready_connection},
};

/// Deletes the connection (its finalizer still to run).
async fn delete(scene: &Scene) {
    scene
        .api()
        .delete(CONNECTION, &DeleteParams::default())
        .await
        .expect("delete the connection");
}

/// Waits until the connection is gone (its finalizer done).
async fn wait_until_gone(scene: &Scene) {
    poll_until(Duration::from_secs(30), "the connection to be gone", || async {
        match scene.api().get_opt(CONNECTION).await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;
}

/// `true` when snowsim marked the seed's refresh token revoked.
fn refresh_token_revoked(scene: &Scene) -> bool {
    let tokens = scene.simulator.admin().tokens();
    let token = tokens.iter().find(|t| t.token == scene.seed.refresh_token);
    token.expect("the seed's refresh token").revoked
}

#[tokio::test]
async fn rotated_credentials_are_verified_within_five_seconds() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    let before = ready.api().get(CONNECTION).await.expect("the connection");
    let hash_before = before
        .status
        .and_then(|s| s.credentials_hash)
        .expect("a credentials hash");

    // A new client secret in the Application Registry (the old one stops working), then in the Secret.
    let rotated = format!("rotated-{}", ready.ns.name());
    admin
        .edit_oauth_app("Neo Agent", |app| app.client_secret = rotated.clone())
        .expect("rotate the client secret");
    admin.clear_request_log();
    ready.put_credentials(&ready.seed.client_id, &rotated).await;
    let status = poll_until(
        Duration::from_secs(5),
        "a new credentials hash with the connection still Ready",
        || async {
            let status = ready.api().get(CONNECTION).await.ok()?.status?;
            let verified = status
                .credentials_hash
                .as_ref()
                .is_some_and(|hash| *hash != hash_before)
                && status.sync_state == Some(SyncState::ReadyToSync);
            verified.then_some(status)
        },
    )
    .await;
    assert_eq!(
        condition(&status, "Authorized"),
        Some(("True".into(), Reason::TokenValid.as_str().into()))
    );
    let log = admin.request_log();
    let refreshes: Vec<_> = log.iter().filter(|c| c.path == "/oauth_token.do").collect();
    assert!(
        !refreshes.is_empty() && refreshes.iter().all(|c| c.status == 200),
        "no refresh with the new credentials, or a refused one: {log:#?}"
    );
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn an_operator_killed_after_creating_the_rule_leaves_one_rule_and_one_property_after_restart() {
    let scene = Scene::new(serde_json::json!({})).await;
    let admin = scene.simulator.admin();
    // A legacy rule makes its deletion the last write of the first provisioning, after the
    // property and the rule. That deletion stalls, then fails: the operator is killed while it
    // waits — after the rule was created, before any status was written.
    scene.insert_legacy_rule().await;
    for action in [
        FaultAction::Latency { ms: 5000 },
        FaultAction::Status { code: 503, body: None },
    ] {
        // The only deletion of a first provisioning (whichever API version the path names).
        admin.inject_fault(Fault {
            method: Some("DELETE".into()),
            times: Some(1),
            ..Fault::new("/api/now/", action)
        });
    }
    let mut first = scene.start_operator(&[]).await;
    poll_until(Duration::from_secs(30), "the rule to be created", || async {
        admin
            .request_log()
            .iter()
            .any(|c| c.method == "POST" && c.path.ends_with("/table/sys_script") && c.status == 201)
            .then_some(())
    })
    .await;
    first.kill();
    let connection = scene.api().get(CONNECTION).await.expect("the connection");
    assert_eq!(
        connection.status.and_then(|s| s.webhook),
        None,
        "the status was written before the kill"
    );
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1, "one rule before the restart");
    let rule_id = rules[0]["sys_id"].clone();

    let (_second, status) = scene.restarted_ready(&first).await;
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1, "exactly one rule: {rules:#?}");
    assert_eq!(rules[0]["sys_id"], rule_id, "the rule was created again");
    let properties = admin.records("sys_properties", PROPERTY_QUERY);
    assert_eq!(properties.len(), 1, "exactly one property: {properties:#?}");
    assert!(
        admin.records("sys_script", LEGACY_QUERY).is_empty(),
        "the legacy rule is left"
    );
    let webhook = status.webhook.expect("webhook status");
    assert_eq!(webhook.business_rule_sys_id.as_deref(), Some(rule_id.as_str()));
    assert_eq!(
        webhook.callback_property_sys_id.as_deref(),
        Some(properties[0]["sys_id"].as_str())
    );
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn deleting_with_policy_delete_removes_rule_and_property_and_revokes_the_token() {
    let ready = ready_connection(serde_json::json!({"deletionPolicy": "Delete"})).await;
    let admin = ready.simulator.admin();
    assert!(!refresh_token_revoked(&ready));
    delete(&ready).await;
    wait_until_gone(&ready).await;
    assert!(admin.records("sys_script", RULE_QUERY).is_empty(), "the rule is left");
    assert!(
        admin.records("sys_properties", PROPERTY_QUERY).is_empty(),
        "the property is left"
    );
    assert!(refresh_token_revoked(&ready), "the refresh token was not revoked");
    let page = ready.operator.metrics_page().await;
    assert!(
        !page.contains(&format!("namespace=\"{}\"", ready.ns.name())),
        "the deleted connection's series are left: {page}"
    );
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_revocation_the_instance_refuses_does_not_hold_the_deletion() {
    let ready = ready_connection(serde_json::json!({"deletionPolicy": "Delete"})).await;
    let admin = ready.simulator.admin();
    admin.inject_fault(Fault::new(
        "/oauth_revoke_token.do",
        FaultAction::Status { code: 400, body: None },
    ));
    delete(&ready).await;
    wait_until_gone(&ready).await;
    assert!(admin.records("sys_script", RULE_QUERY).is_empty(), "the rule is left");
    assert!(
        admin.records("sys_properties", PROPERTY_QUERY).is_empty(),
        "the property is left"
    );
    assert!(
        admin
            .request_log()
            .iter()
            .any(|c| c.path == "/oauth_revoke_token.do" && c.status == 400),
        "the revocation was not tried"
    );
    assert!(!refresh_token_revoked(&ready), "the fault did not hold");
    let event = ready.wait_for_event("TokenNotRevoked").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:#?}");
    let note = event.message.unwrap_or_default();
    assert!(note.contains("Manage Tokens"), "{note:?}");
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn deleting_with_policy_orphan_leaves_rule_property_and_token() {
    let ready = ready_connection(serde_json::json!({"deletionPolicy": "Orphan"})).await;
    let admin = ready.simulator.admin();
    admin.clear_request_log();
    delete(&ready).await;
    wait_until_gone(&ready).await;
    assert_eq!(admin.records("sys_script", RULE_QUERY).len(), 1, "the rule is gone");
    assert_eq!(
        admin.records("sys_properties", PROPERTY_QUERY).len(),
        1,
        "the property is gone"
    );
    assert!(!refresh_token_revoked(&ready), "the refresh token was revoked");
    let log = admin.request_log();
    assert!(
        log.iter().all(|c| !c.is_write()),
        "an orphaning deletion wrote to the instance: {log:#?}"
    );
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_connection_whose_instance_cannot_be_reached_is_removed_once_orphaned() {
    let scene = Scene::new(serde_json::json!({})).await;
    let _operator = scene.start_operator_without_instance().await;
    scene.wait_for_condition("Ready", "False", Reason::Unreachable).await;
    delete(&scene).await;
    // The finalizer holds it while the cleanup cannot reach the instance...
    let pending = poll_until(Duration::from_secs(10), "the deletion to be pending", || async {
        let connection = scene.api().get(CONNECTION).await.ok()?;
        connection.metadata.deletion_timestamp.is_some().then_some(connection)
    })
    .await;
    assert_eq!(
        pending.metadata.finalizers,
        Some(vec!["neoagent.io/cleanup".to_owned()]),
        "no finalizer holds the connection"
    );
    // ...until the policy says to leave the instance as it is.
    scene.patch_spec(serde_json::json!({"deletionPolicy": "Orphan"})).await;
    wait_until_gone(&scene).await;
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_suspended_connection_makes_no_call_to_the_instance() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    ready.patch_spec(serde_json::json!({"suspend": true})).await;
    let status = ready
        .wait_for("SUSPENDED", |s| s.sync_state == Some(SyncState::Suspended))
        .await;
    assert_condition(&status, "Ready", "False", Reason::Suspended);
    admin.clear_request_log();
    ready.reconcile_now("while-suspended").await;
    let log = admin.request_log();
    assert!(log.is_empty(), "a suspended connection called the instance: {log:#?}");

    ready.patch_spec(serde_json::json!({"suspend": false})).await;
    ready
        .wait_for("READY_TO_SYNC after resuming", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert!(
        admin.request_log().iter().any(|c| c.user.as_deref() == Some(AGENT)),
        "resuming made no call"
    );
    ready.assert_no_secret_leaked().await;
}

/// The instance's one callback property and one rule; fails when there are others.
fn the_property_and_the_rule(scene: &Scene) -> (String, String) {
    let admin = scene.simulator.admin();
    let properties = admin.records("sys_properties", PROPERTY_QUERY);
    assert_eq!(properties.len(), 1, "exactly one property: {properties:#?}");
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1, "exactly one rule: {rules:#?}");
    (properties[0]["value"].clone(), rules[0]["description"].clone())
}

#[tokio::test]
async fn an_operator_whose_public_url_changed_takes_its_own_webhook_along() {
    let mut ready = ready_connection(serde_json::json!({})).await;
    let (before, _) = the_property_and_the_rule(&ready);
    assert!(before.starts_with(&ready.operator.public_url), "{before:?}");
    ready.operator.kill();
    // Another port: another public URL. The property still names the old one, with the
    // connection's own webhook token: it is this connection's, not another owner's.
    ready.operator = ready.scene.start_operator(&[]).await;
    ready.annotate(RECONNECT, "moved").await;
    let status = ready
        .wait_for("the reconnect after the move", |s| {
            s.last_handled_reconnect_at.as_deref() == Some("moved") && s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_condition(&status, "WebhookProvisioned", "True", Reason::DriftRepaired);
    let (after, description) = the_property_and_the_rule(&ready);
    assert!(after.starts_with(&ready.operator.public_url), "{after:?}");
    assert!(
        description.contains(&ready.operator.public_url),
        "the rule still names the old operator: {description:?}"
    );
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn an_instance_whose_webhook_another_connection_owns_is_left_alone_until_taken_over() {
    let scene = Scene::new(serde_json::json!({})).await;
    let admin = scene.simulator.admin();
    let theirs = "https://other.example.com/callback/servicenow?connection=ops%2Fsn&token=theirs";
    admin
        .insert(
            "sys_properties",
            [
                ("name", "x_neoagent.callback_url"),
                ("value", theirs),
                ("type", "string"),
            ],
        )
        .await
        .expect("insert the other owner's property");
    admin.clear_request_log();
    let operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for_condition("WebhookProvisioned", "False", Reason::InstanceClaimedElsewhere)
        .await;
    let message = assert_condition(&status, "WebhookProvisioned", "False", Reason::InstanceClaimedElsewhere);
    assert!(
        message.contains("connection ops/sn of the operator at https://other.example.com"),
        "the owner is not named: {message:?}"
    );
    assert_condition(&status, "Stalled", "True", Reason::InstanceClaimedElsewhere);
    assert_eq!(status.sync_state, Some(SyncState::Error));
    let log = admin.request_log();
    assert!(
        log.iter().all(|c| !c.is_write()),
        "wrote to an instance another connection owns: {log:#?}"
    );
    assert!(admin.records("sys_script", RULE_QUERY).is_empty());

    scene
        .patch_spec(serde_json::json!({"webhook": {"takeOver": true}}))
        .await;
    scene
        .wait_for("READY_TO_SYNC after taking over", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    let (value, _) = the_property_and_the_rule(&scene);
    assert!(value.starts_with(&operator.public_url), "{value:?}");
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn without_an_operator_namespace_the_lease_and_consent_key_live_in_the_kubeconfigs_namespace() {
    let scene = Scene::new(serde_json::json!({})).await;
    let plane = control_plane().await;
    // A kubeconfig whose context names the test namespace, as a pod's in-cluster config names its own.
    let kubeconfig = std::env::temp_dir().join(format!("{}-context.kubeconfig", scene.ns.name()));
    std::fs::copy(plane.kubeconfig_path(), &kubeconfig).expect("copy the kubeconfig");
    let set = plane
        .command("kubectl")
        .args(["config", "set-context", "--current", "--namespace", scene.ns.name()])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .expect("run kubectl config");
    assert!(set.status.success(), "kubectl config set-context: {set:?}");
    // An empty POD_NAMESPACE is unset, and no --operator-namespace is given.
    let _operator = Operator::start_as(
        scene.ns.name(),
        &scene.simulator,
        free_port(),
        &[],
        &[("POD_NAMESPACE", "")],
        &kubeconfig,
    )
    .await;
    scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), scene.ns.name());
    assert!(
        leases
            .get_opt("servicenow-operator")
            .await
            .expect("read the Lease")
            .is_some(),
        "no Lease in the kubeconfig's namespace"
    );
    let secrets: Api<Secret> = Api::namespaced(scene.client.clone(), scene.ns.name());
    assert!(
        secrets
            .get_opt("servicenow-operator-consent-key")
            .await
            .expect("read the consent key")
            .is_some(),
        "no consent key in the kubeconfig's namespace"
    );
    scene.assert_no_secret_leaked().await;
}

/// An operator watching two namespaces (`--namespace A --watch-namespace B`, as
/// `WATCH_NAMESPACE=A,B`) reconciles the connections of both — one controller per namespace —
/// and leaves a third namespace's alone.
#[tokio::test]
async fn an_operator_watching_two_namespaces_reconciles_both_and_no_other() {
    use support::{
        TestNamespace,
        scene::{CREDENTIALS_SECRET, create_connection, put_secret, wait_for_status},
    };
    let scene = Scene::new(serde_json::json!({})).await;
    let second = TestNamespace::new(&scene.client).await;
    let unwatched = TestNamespace::new(&scene.client).await;
    for ns in [&second, &unwatched] {
        put_secret(
            &scene.client,
            ns.name(),
            CREDENTIALS_SECRET,
            &[
                ("clientId", &scene.seed.client_id),
                ("clientSecret", &scene.seed.client_secret),
            ],
        )
        .await;
        create_connection(
            &scene.client,
            ns.name(),
            CONNECTION,
            serde_json::json!({
                "instanceUrl": "https://acme.service-now.com",
                "credentialsSecretRef": {"name": CREDENTIALS_SECRET},
            }),
        )
        .await;
    }
    let _operator = scene.start_operator(&["--watch-namespace", second.name()]).await;
    scene
        .wait_for("READY_TO_SYNC in the first namespace", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    // No token there: it asks for consent.
    wait_for_status(
        &scene.client,
        second.name(),
        CONNECTION,
        "AWAITING_CONSENT in the second namespace",
        |s| s.sync_state == Some(SyncState::AwaitingConsent),
    )
    .await;
    let untouched: Api<servicenow_operator::api::ServiceNowConnection> =
        Api::namespaced(scene.client.clone(), unwatched.name());
    let connection = untouched.get(CONNECTION).await.expect("the unwatched connection");
    assert!(
        connection.status.is_none() && connection.metadata.finalizers.is_none(),
        "a connection outside the watched namespaces was reconciled: {connection:?}"
    );
}
