//! The Secret cache (`src/secrets/cache.rs`) against a real API server and snowsim: a resync
//! with nothing changed reads no Secret, and every change to a Secret a connection already read
//! — a rotated or broken client secret, a deleted token Secret, a stranger's Secret put in the
//! place of the token Secret — is followed at once, never hidden by the value cached before.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use servicenow_operator::{
    api::{SyncState, conditions::Reason},
    secrets::ownership::MANAGED_BY_LABEL,
};
use support::{
    audit::AuditLog,
    conditions::{assert_condition, has_condition},
    scene::{TOKEN_SECRET, ready_connection},
};

/// A client secret the instance never issued.
const WRONG_SECRET: &str = "not-the-client-secret-0f9e8d7c";

/// `true` when the instance answered a token refresh with `status`.
fn refreshed(admin: &snowsim::Admin, status: u16) -> bool {
    admin
        .request_log()
        .iter()
        .any(|c| c.path == "/oauth_token.do" && c.status == status)
}

#[tokio::test]
async fn a_resync_with_nothing_changed_reads_no_secret() {
    let ready = ready_connection(serde_json::json!({})).await;
    let audit = AuditLog::of(&ready.client, ready.ns.name()).await;
    // Once this request is echoed, every reconcile of the provisioning is over.
    ready.reconcile_now("before-the-resync").await;
    let mark = audit.mark().await;
    let status = ready.reconcile_now("the-resync").await;
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync));
    let requests = audit.since(&mark).await;
    let secret_reads = requests.matching(|r| r.client() == "operator" && r.object_ref.resource == "secrets");
    assert!(
        secret_reads.is_empty(),
        "a resync with nothing changed read a Secret:\n{requests}"
    );
    let status_patches = requests.writes_to("servicenowconnections", Some("status"));
    assert_eq!(
        status_patches.len(),
        1,
        "only the echo of the request patches the status:\n{requests}"
    );
    ready.assert_no_secret_leaked().await;
}

/// The `c00002` lead of BENCHMARKS.md: a reconcile may conclude only from the credentials at the
/// version the Secret watch has seen last. The Secret is broken and mended again and again, each
/// time with a reconcile requested at once (it may start on the value cached before, and must then
/// be followed by one on the new value); after each, a later reconcile must still agree.
#[tokio::test]
async fn a_credentials_secret_broken_and_mended_again_and_again_is_always_followed() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    let (client_id, client_secret) = (ready.seed.client_id.clone(), ready.seed.client_secret.clone());
    for round in 0..4 {
        ready.put_credentials(&client_id, &format!("{client_secret}\n")).await;
        ready
            .annotate("neoagent.io/reconnect", &format!("broken-{round}"))
            .await;
        ready
            .wait_for_condition("Authorized", "False", Reason::CredentialsMalformed)
            .await;
        let status = ready.reconcile_now(&format!("still-broken-{round}")).await;
        assert_condition(&status, "Authorized", "False", Reason::CredentialsMalformed);

        admin.clear_request_log();
        ready.put_credentials(&client_id, &client_secret).await;
        ready
            .annotate("neoagent.io/reconnect", &format!("mended-{round}"))
            .await;
        let status = ready
            .wait_for("READY_TO_SYNC once mended", |s| {
                s.sync_state == Some(SyncState::ReadyToSync)
                    && has_condition(s, "Authorized", "True", Reason::TokenValid)
            })
            .await;
        assert_condition(&status, "Authorized", "True", Reason::TokenValid);
        let status = ready.reconcile_now(&format!("still-mended-{round}")).await;
        assert_eq!(status.sync_state, Some(SyncState::ReadyToSync), "{status:#?}");
        assert!(
            refreshed(&admin, 200),
            "the mended credentials were not used for a refresh"
        );
    }
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_client_secret_rotated_after_it_was_cached_is_used_at_once() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    // Cached: a reconcile with nothing changed reads no Secret (see above).
    ready.reconcile_now("cached").await;
    admin.clear_request_log();
    ready.put_credentials(&ready.seed.client_id, WRONG_SECRET).await;
    ready
        .wait_for_condition("Authorized", "False", Reason::CredentialsChanged)
        .await;
    assert!(refreshed(&admin, 401), "the rotated client secret was not sent");
    ready
        .put_credentials(&ready.seed.client_id, &ready.seed.client_secret)
        .await;
    ready
        .wait_for("READY_TO_SYNC with the client secret rotated back", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_token_secret_deleted_after_it_was_cached_is_noticed() {
    let ready = ready_connection(serde_json::json!({})).await;
    ready.reconcile_now("cached").await;
    let secrets: Api<Secret> = Api::namespaced(ready.client.clone(), ready.ns.name());
    secrets
        .delete(TOKEN_SECRET, &DeleteParams::default())
        .await
        .expect("delete the token Secret");
    let status = ready
        .wait_for("AWAITING_CONSENT once the token Secret is gone", |s| {
            s.sync_state == Some(SyncState::AwaitingConsent)
        })
        .await;
    assert_condition(&status, "Authorized", "False", Reason::ConsentRequired);
    let status = ready.reconcile_now("still-gone").await;
    assert_eq!(status.sync_state, Some(SyncState::AwaitingConsent));
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_strangers_label_on_a_cached_token_secret_is_secret_not_owned() {
    let ready = ready_connection(serde_json::json!({})).await;
    ready.reconcile_now("cached").await;
    let secrets: Api<Secret> = Api::namespaced(ready.client.clone(), ready.ns.name());
    // Someone else claims the Secret: the operator's managed-by label is replaced.
    let claim = serde_json::json!({"metadata": {"labels": {MANAGED_BY_LABEL: "helm"}}});
    secrets
        .patch(TOKEN_SECRET, &PatchParams::default(), &Patch::Merge(&claim))
        .await
        .expect("relabel the token Secret");
    let status = ready
        .wait_for_condition("Authorized", "False", Reason::SecretNotOwned)
        .await;
    assert_eq!(status.sync_state, Some(SyncState::Error));
    let status = ready.reconcile_now("still-not-owned").await;
    assert_condition(&status, "Authorized", "False", Reason::SecretNotOwned);
    ready.assert_no_secret_leaked().await;
}
