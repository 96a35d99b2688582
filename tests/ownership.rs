//! Only its own Secrets, against a real API server (with its garbage collector), snowsim and the
//! operator binary: a token or webhook Secret that sits on a connection's name without the
//! operator's labels is left byte for byte as it was — not written, not deleted, not owned, not
//! garbage-collected with the connection — and reported as `SecretNotOwned` before any call
//! that could write to the instance; an older version's Secret is adopted; removing the
//! stranger's Secret lets the connection carry on without a restart.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use servicenow_operator::{
    api::{RECONSENT, SyncState, conditions::Reason},
    secrets::ownership::{CONNECTION_UID_LABEL, MANAGED_BY_LABEL, MANAGER},
    servicenow::SecretString,
    webhook::signature,
};
use support::{
    conditions::assert_condition,
    consent::calls_to,
    instance::AGENT,
    operator::Operator,
    poll_until,
    scene::{CONNECTION, Scene, TOKEN_SECRET, put_owned_secret, put_secret},
};

const WEBHOOK_SECRET: &str = "acme-webhook";
/// The signing key in a stranger's webhook Secret.
const STRANGERS_KEY: &str = "a-strangers-signing-key-0123456789";
/// A Secret the connection controls, as the operator's are: proof that the garbage collector ran.
const CONTROL_SECRET: &str = "acme-gc-control";

/// What must not change of a Secret the operator does not own.
#[derive(Debug, PartialEq)]
struct Untouched {
    resource_version: Option<String>,
    data: Option<BTreeMap<String, ByteString>>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: usize,
}

fn untouched(secret: &Secret) -> Untouched {
    Untouched {
        resource_version: secret.metadata.resource_version.clone(),
        data: secret.data.clone(),
        labels: secret.metadata.labels.clone(),
        owner_references: secret.metadata.owner_references.iter().flatten().count(),
    }
}

async fn secret(scene: &Scene, name: &str) -> Option<Secret> {
    let secrets: Api<Secret> = Api::namespaced(scene.client.clone(), scene.ns.name());
    secrets.get_opt(name).await.expect("read the Secret")
}

/// Writes `name` without the operator's labels, as a person or another tool would, and returns
/// what it looks like.
async fn strangers_secret(scene: &Scene, name: &str, data: &[(&str, &str)]) -> Untouched {
    put_secret(&scene.client, scene.ns.name(), name, data).await;
    let found = untouched(&secret(scene, name).await.expect("the stranger's Secret"));
    assert_eq!(found.owner_references, 0);
    found
}

/// POSTs an event for the connection to `operator`'s receiver, signed with `key` as the Business
/// Rule signs; returns the status code.
async fn post_signed(operator: &Operator, scene: &Scene, key: &str) -> u16 {
    let body = serde_json::json!({
        "table": "incident", "sys_id": "0".repeat(32), "number": "INC0000001", "operation": "update",
        "sys_updated_on": "2026-01-31 12:00:00", "sys_updated_by": AGENT,
    })
    .to_string();
    let timestamp = k8s_openapi::jiff::Timestamp::now().as_millisecond().to_string();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("connection", &format!("{}/{CONNECTION}", scene.ns.name()))
        .finish();
    let answer = reqwest::Client::new()
        .post(format!("{}/callback/servicenow?{query}", operator.public_url))
        .header("content-type", "application/json")
        .header(signature::TIMESTAMP_HEADER, &timestamp)
        .header(
            signature::SIGNATURE_HEADER,
            signature::sign(&SecretString::new(key), &timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("the operator answers");
    answer.status().as_u16()
}

/// Writes [`CONTROL_SECRET`], controlled by the connection like the operator's own Secrets.
async fn controlled_secret(scene: &Scene) {
    put_owned_secret(
        &scene.client,
        scene.ns.name(),
        CONNECTION,
        CONTROL_SECRET,
        &[("x", "y")],
    )
    .await;
}

/// Deletes the connection and waits until the garbage collector removed [`CONTROL_SECRET`]: by
/// then it would have removed any other Secret the connection owned.
async fn delete_and_collect(scene: &Scene) {
    scene
        .api()
        .delete(CONNECTION, &DeleteParams::default())
        .await
        .expect("delete the connection");
    poll_until(
        Duration::from_secs(30),
        "the connection gone and its controlled Secret collected",
        || async {
            let gone = scene.api().get_opt(CONNECTION).await.ok()?.is_none();
            (gone && secret(scene, CONTROL_SECRET).await.is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_strangers_token_secret_is_left_untouched_and_reported() {
    let scene = Scene::awaiting_consent(serde_json::json!({})).await;
    controlled_secret(&scene).await;
    let before = strangers_secret(&scene, TOKEN_SECRET, &[("refreshToken", &scene.seed.refresh_token)]).await;
    // A re-consent request would revoke and delete the stored token: not a stranger's.
    scene.annotate(RECONSENT, "1").await;
    let _operator = scene.start_operator(&[]).await;

    let status = scene
        .wait_for_condition("Authorized", "False", Reason::SecretNotOwned)
        .await;
    assert_eq!(status.sync_state, Some(SyncState::Error));
    assert_eq!(
        status.consent_url, None,
        "no consent into a Secret that cannot be written"
    );
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Authorized")
        .expect("Authorized")
        .message;
    assert!(message.contains("\"acme-token\""), "{message}");
    assert!(message.contains(MANAGED_BY_LABEL), "{message}");
    assert_eq!(
        calls_to(&scene, "/oauth_token.do"),
        0,
        "the stranger's token was used or revoked"
    );
    let status = scene.reconcile_now("after-the-refusal").await;
    assert_condition(&status, "Authorized", "False", Reason::SecretNotOwned);
    assert_eq!(
        untouched(&secret(&scene, TOKEN_SECRET).await.expect("still there")),
        before
    );

    delete_and_collect(&scene).await;
    assert_eq!(
        untouched(&secret(&scene, TOKEN_SECRET).await.expect("kept after the deletion")),
        before
    );
    assert_eq!(calls_to(&scene, "/oauth_token.do"), 0);
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_strangers_webhook_secret_is_left_untouched_and_nothing_is_provisioned() {
    let scene = Scene::new(serde_json::json!({})).await;
    controlled_secret(&scene).await;
    let before = strangers_secret(&scene, WEBHOOK_SECRET, &[("token", STRANGERS_KEY)]).await;
    let operator = scene.start_operator(&[]).await;

    let status = scene
        .wait_for_condition("WebhookProvisioned", "False", Reason::SecretNotOwned)
        .await;
    assert_eq!(status.sync_state, Some(SyncState::Error));
    assert_condition(&status, "Authorized", "True", Reason::TokenValid);
    let log = scene.simulator.admin().request_log();
    let writes: Vec<_> = log
        .iter()
        .filter(|entry| entry.path.starts_with("/api/now/table/") && entry.method != "GET")
        .collect();
    assert!(writes.is_empty(), "the instance was written: {writes:#?}");
    assert_eq!(
        post_signed(&operator, &scene, STRANGERS_KEY).await,
        401,
        "the receiver accepted a key from a Secret that is not the connection's"
    );
    let status = scene.reconcile_now("after-the-refusal").await;
    assert_condition(&status, "WebhookProvisioned", "False", Reason::SecretNotOwned);
    assert_eq!(
        untouched(&secret(&scene, WEBHOOK_SECRET).await.expect("still there")),
        before
    );

    delete_and_collect(&scene).await;
    assert_eq!(
        untouched(&secret(&scene, WEBHOOK_SECRET).await.expect("kept after the deletion")),
        before
    );
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn an_older_versions_secret_is_adopted_and_a_removed_strangers_secret_unblocks_the_connection() {
    let scene = Scene::new(serde_json::json!({})).await;
    // As versions before the uid label wrote it: managed-by and a controller reference only.
    let secrets: Api<Secret> = Api::namespaced(scene.client.clone(), scene.ns.name());
    let unlabel = serde_json::json!({"metadata": {"labels": {CONNECTION_UID_LABEL: null}}});
    secrets
        .patch(TOKEN_SECRET, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .expect("remove the uid label");
    strangers_secret(&scene, WEBHOOK_SECRET, &[("token", STRANGERS_KEY)]).await;
    let _operator = scene.start_operator(&[]).await;
    scene
        .wait_for_condition("WebhookProvisioned", "False", Reason::SecretNotOwned)
        .await;
    let connection = scene.api().get(CONNECTION).await.expect("the connection");
    let token = secret(&scene, TOKEN_SECRET).await.expect("the token Secret");
    let labels = token.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(MANAGED_BY_LABEL).map(String::as_str), Some(MANAGER));
    assert_eq!(
        labels.get(CONNECTION_UID_LABEL),
        connection.metadata.uid.as_ref(),
        "adopted"
    );

    // The stranger takes its Secret away: the Secret watch wakes the connection (its own stop
    // waits for the resync period, ten minutes), which writes its own key and provisions.
    secrets
        .delete(WEBHOOK_SECRET, &DeleteParams::default())
        .await
        .expect("delete the stranger's Secret");
    scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    let own = secret(&scene, WEBHOOK_SECRET)
        .await
        .expect("the operator's webhook Secret");
    assert_eq!(
        own.metadata.labels.unwrap_or_default().get(CONNECTION_UID_LABEL),
        connection.metadata.uid.as_ref()
    );
    scene.assert_no_secret_leaked().await;
}
