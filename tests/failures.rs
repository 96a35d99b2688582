//! What a connection says when something is wrong — rejected credentials or tokens, missing
//! roles, the wrong identity, an instance that cannot be reached, fails, stalls or rate-limits —
//! each against a real API server and snowsim: the condition, its reason and remedy, the Events,
//! what reached the instance, and no secret anywhere.

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Secret,
    jiff::{Timestamp, civil::DateTime, tz::TimeZone},
};
use kube::{Api, api::DeleteParams};
use servicenow_operator::api::{RECONNECT, SyncState, conditions::Reason};
use snowsim::{Fault, FaultAction, RateLimitRule, RateLimitTarget, RequestLogEntry};
use support::{
    Observed,
    conditions::{assert_condition, condition, has_condition},
    instance::{self, AGENT, APP},
    operator::Operator,
    poll_until,
    scene::{CREDENTIALS_SECRET, PROPERTY_QUERY, RULE_QUERY, Ready, Scene, put_secret, ready_connection},
};

/// A client secret the instance never issued.
const WRONG_SECRET: &str = "not-the-client-secret-0f9e8d7c";

/// The calls that changed something on the instance.
fn writes(log: &[RequestLogEntry]) -> Vec<&RequestLogEntry> {
    log.iter().filter(|c| c.is_write()).collect()
}

/// Asserts that the connection's Events hold a Warning with `reason` for condition `type_`.
async fn assert_warning_event(scene: &Scene, type_: &str, reason: Reason) {
    let event = scene.wait_for_event(reason.as_str()).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:#?}");
    assert_eq!(event.action.as_deref(), Some(type_), "{event:#?}");
    let note = event.message.unwrap_or_default();
    assert!(note.contains(reason.remedy()), "the Event lacks the remedy: {note:?}");
}

/// Waits until the refresh is refused for `reason` — `Authorized=False`, and `Stalled` since it
/// needs a person — and checks the summary, the Warning Event, and that the instance saw a refused
/// refresh and no write. Returns the request log.
async fn assert_refresh_refused(scene: &Scene, reason: Reason) -> Vec<RequestLogEntry> {
    let status = scene
        .wait_for(&format!("Authorized=False {} and Stalled", reason.as_str()), |s| {
            has_condition(s, "Authorized", "False", reason) && has_condition(s, "Stalled", "True", reason)
        })
        .await;
    assert_condition(&status, "Authorized", "False", reason);
    assert_condition(&status, "Ready", "False", reason);
    assert_eq!(status.sync_state, Some(SyncState::Error));
    assert_warning_event(scene, "Authorized", reason).await;
    let log = scene.simulator.admin().request_log();
    assert!(
        log.iter().any(|c| c.path == "/oauth_token.do" && c.status == 401),
        "no refused refresh: {log:#?}"
    );
    assert!(writes(&log).is_empty(), "wrote without a good token: {log:#?}");
    log
}

#[tokio::test]
async fn a_wrong_client_secret_is_token_rejected() {
    let scene = Scene::new(serde_json::json!({})).await;
    scene.put_credentials(&scene.seed.client_id, WRONG_SECRET).await;
    let _operator = scene.start_operator(&[]).await;
    let log = assert_refresh_refused(&scene, Reason::TokenRejected).await;
    assert!(
        log.iter().all(|c| !c.path.starts_with("/api/")),
        "a call went past the refused refresh: {log:#?}"
    );
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_client_secret_changed_after_a_good_refresh_is_credentials_changed() {
    let ready = ready_connection(serde_json::json!({})).await;
    ready.simulator.admin().clear_request_log();
    ready.put_credentials(&ready.seed.client_id, WRONG_SECRET).await;
    assert_refresh_refused(&ready, Reason::CredentialsChanged).await;
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_revoked_refresh_token_is_token_rejected() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    admin.revoke_tokens(Some(AGENT)).expect("revoke the agent's tokens");
    admin.clear_request_log();
    ready.annotate(RECONNECT, "after-revocation").await;
    assert_refresh_refused(&ready, Reason::TokenRejected).await;
    ready.assert_no_secret_leaked().await;
}

/// Waits until `Authorized` is False for `reason` with `in_message` in the message — `Stalled`, since
/// only a person can fix the credentials Secret — and checks the Warning Event and that no call
/// reached the instance.
async fn assert_credentials_refused(scene: &Scene, reason: Reason, in_message: &str) {
    let status = scene
        .wait_for(
            &format!("Authorized=False {} naming {in_message}", reason.as_str()),
            |s| {
                has_condition(s, "Authorized", "False", reason)
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Authorized" && c.message.contains(in_message))
            },
        )
        .await;
    let message = assert_condition(&status, "Authorized", "False", reason);
    assert!(
        message.starts_with("spec.credentialsSecretRef: "),
        "the message names no field: {message:?}"
    );
    assert_condition(&status, "Stalled", "True", reason);
    assert_condition(&status, "Ready", "False", reason);
    assert_eq!(status.sync_state, Some(SyncState::Error));
    assert_warning_event(scene, "Authorized", reason).await;
    let log = scene.simulator.admin().request_log();
    assert!(log.is_empty(), "the instance was called without credentials: {log:#?}");
}

#[tokio::test]
async fn missing_or_malformed_credentials_name_the_secret_and_key_until_corrected() {
    let scene = Scene::new(serde_json::json!({})).await;
    let secrets: Api<Secret> = Api::namespaced(scene.client.clone(), scene.ns.name());
    secrets
        .delete(CREDENTIALS_SECRET, &DeleteParams::default())
        .await
        .expect("delete the credentials Secret");
    let _operator = scene.start_operator(&[]).await;
    assert_credentials_refused(&scene, Reason::CredentialsMissing, "\"acme-oauth\" does not exist").await;

    let client_id = scene.seed.client_id.as_str();
    put_secret(
        &scene.client,
        scene.ns.name(),
        CREDENTIALS_SECRET,
        &[("clientId", client_id)],
    )
    .await;
    assert_credentials_refused(&scene, Reason::CredentialsMissing, "no key \"clientSecret\"").await;

    scene
        .put_credentials(client_id, &format!("{}\n", scene.seed.client_secret))
        .await;
    assert_credentials_refused(
        &scene,
        Reason::CredentialsMalformed,
        "\"clientSecret\" in the credentials Secret \"acme-oauth\" ends with a newline",
    )
    .await;
    scene
        .put_credentials(&format!(" {client_id}"), &scene.seed.client_secret)
        .await;
    assert_credentials_refused(
        &scene,
        Reason::CredentialsMalformed,
        "\"clientId\" in the credentials Secret \"acme-oauth\" has leading or trailing whitespace",
    )
    .await;

    // Corrected: the Secret's change alone wakes the connection.
    scene.put_credentials(client_id, &scene.seed.client_secret).await;
    let status = scene
        .wait_for("READY_TO_SYNC once the credentials are right", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_condition(&status, "Authorized", "True", Reason::TokenValid);
    assert_eq!(condition(&status, "Stalled"), None);
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_refresh_token_near_its_end_warns_and_one_past_it_is_refresh_token_expired() {
    let scene = Scene::new(serde_json::json!({})).await;
    let now = Timestamp::now().as_second();
    let in_two_days = Timestamp::from_second(now + 2 * 24 * 3600).expect("a time");
    scene.put_token_expiring_at(in_two_days).await;
    let ready = scene.ready(&[]).await;
    let status = ready
        .wait_for_condition("Authorized", "True", Reason::RefreshTokenExpiring)
        .await;
    let message = assert_condition(&status, "Authorized", "True", Reason::RefreshTokenExpiring);
    assert!(message.contains(&in_two_days.to_string()), "{message:?}");
    assert!(message.contains(Reason::RefreshTokenExpiring.remedy()), "{message:?}");
    assert_condition(&status, "Ready", "True", Reason::ReadyToSync);
    assert_eq!(
        status.token.and_then(|t| t.refresh_token_expires_at).map(|t| t.0),
        Some(in_two_days)
    );
    assert_warning_event(&ready, "Authorized", Reason::RefreshTokenExpiring).await;
    let expiration = format!(
        "servicenow_operator_refresh_token_expiration_timestamp_seconds{{namespace=\"{}\",name=\"acme\"}}",
        ready.ns.name()
    );
    assert_eq!(ready.operator.metric(&expiration).await, in_two_days.as_second() as f64);

    // The lifespan passes on the instance; the Secret says when it ended. The next refresh is
    // refused, and the operator knows why.
    ready
        .simulator
        .admin()
        .advance_clock(Duration::from_secs(101 * 24 * 3600));
    ready
        .put_token_expiring_at(Timestamp::from_second(now - 3600).expect("a time"))
        .await;
    ready.simulator.admin().clear_request_log();
    ready.annotate(RECONNECT, "after-expiry").await;
    assert_refresh_refused(&ready, Reason::RefreshTokenExpired).await;
    ready.assert_no_secret_leaked().await;
}

/// Sets a scene, lets `restrict` take a right from its service account, starts the operator and
/// waits until condition `type_` is False for `InsufficientPrivileges`, with `named` in the
/// message; checks the summary and the Warning Event.
async fn refused_after(restrict: impl FnOnce(&snowsim::Admin), type_: &str, named: &str) -> (Scene, Operator) {
    let scene = Scene::new(serde_json::json!({})).await;
    restrict(&scene.simulator.admin());
    let operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for_condition(type_, "False", Reason::InsufficientPrivileges)
        .await;
    let message = assert_condition(&status, type_, "False", Reason::InsufficientPrivileges);
    assert!(message.contains(named), "{named:?} not in {message:?}");
    assert_condition(&status, "Ready", "False", Reason::InsufficientPrivileges);
    assert_condition(&status, "Stalled", "True", Reason::InsufficientPrivileges);
    assert_eq!(status.sync_state, Some(SyncState::Error));
    assert_warning_event(&scene, type_, Reason::InsufficientPrivileges).await;
    (scene, operator)
}

#[tokio::test]
async fn an_account_without_itil_is_insufficient_privileges_until_the_role_is_granted() {
    let (scene, _operator) = refused_after(
        |admin| admin.remove_role(AGENT, "itil").expect("remove the role"),
        "IdentityResolved",
        "itil",
    )
    .await;
    assert!(
        writes(&scene.simulator.admin().request_log()).is_empty(),
        "provisioned without itil"
    );
    // The remedy: grant the role, then ask for a reconcile.
    scene.simulator.admin().grant_role(AGENT, "itil").expect("grant itil");
    let status = scene.reconcile_now("itil-granted").await;
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync), "{status:#?}");
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn an_itil_only_account_stalls_with_missing_provisioning_privileges_before_any_write() {
    // A fresh account: itil only, no ACL for the integration's role.
    let simulator = instance::simulator_of(instance::fresh_account()).await;
    let scene = Scene::with_simulator(simulator, serde_json::json!({})).await;
    let _operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for_condition("IdentityResolved", "False", Reason::MissingProvisioningPrivileges)
        .await;
    let message = assert_condition(
        &status,
        "IdentityResolved",
        "False",
        Reason::MissingProvisioningPrivileges,
    );
    for named in [AGENT, "business_rule_admin", "x_neoagent_integration"] {
        assert!(message.contains(named), "{named:?} not in {message:?}");
    }
    assert_condition(&status, "Stalled", "True", Reason::MissingProvisioningPrivileges);
    assert_eq!(status.sync_state, Some(SyncState::Error));
    assert_warning_event(&scene, "IdentityResolved", Reason::MissingProvisioningPrivileges).await;
    let admin = scene.simulator.admin();
    let log = admin.request_log();
    assert!(
        writes(&log).is_empty(),
        "wrote before checking its privileges: {log:#?}"
    );
    assert!(
        !log.iter()
            .any(|call| call.path.contains("sys_script") || call.path.contains("sys_properties")),
        "read the webhook records although it may not write them: {log:#?}"
    );
    // The remedy, as the README's least-privilege option says: roles, then the property ACLs.
    for role in [
        "business_rule_admin",
        snowsim::SCRIPT_WRITER_ROLE,
        snowsim::INTEGRATION_ROLE,
    ] {
        admin.grant_role(AGENT, role).expect("grant the role");
    }
    for operation in [
        snowsim::Operation::Read,
        snowsim::Operation::Create,
        snowsim::Operation::Write,
        snowsim::Operation::Delete,
    ] {
        admin.set_acl(
            snowsim::AclRule::new("sys_properties", operation, &[snowsim::INTEGRATION_ROLE])
                .on_rows(snowsim::INTEGRATION_PROPERTIES),
        );
    }
    let status = scene.reconcile_now("privileges-granted").await;
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync), "{status:#?}");
    assert_eq!(admin.records("sys_script", RULE_QUERY).len(), 1);
    assert_eq!(admin.records("sys_properties", PROPERTY_QUERY).len(), 1);
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_list_query_the_instance_refuses_is_insufficient_privileges_naming_the_table() {
    // The list query answers 403 "Insufficient rights to query records" (servicenow-api.md §7).
    let (scene, _operator, log) = refused_on_sys_script(snowsim::Operation::Read, "GET").await;
    assert!(
        writes(&log).iter().all(|c| !c.path.ends_with("/sys_script")),
        "{log:#?}"
    );
    scene.assert_no_secret_leaked().await;
}

/// A scene whose instance's ACL for `operation` on sys_script asks for another role than the
/// account holds (a customised instance: the roles the operator checks are there, only the call
/// tells); waits for `InsufficientPrivileges` naming sys_script and checks that snowsim refused
/// a `method` on it with 403. Returns the scene, its operator and snowsim's request log.
async fn refused_on_sys_script(operation: snowsim::Operation, method: &str) -> (Scene, Operator, Vec<RequestLogEntry>) {
    let (scene, operator) = refused_after(
        |admin| admin.set_acl(snowsim::AclRule::new("sys_script", operation, &["nobody"])),
        "WebhookProvisioned",
        "sys_script",
    )
    .await;
    let log = scene.simulator.admin().request_log();
    assert!(
        log.iter()
            .any(|c| c.method == method && c.path.ends_with("/table/sys_script") && c.status == 403),
        "no refused {method} on sys_script: {log:#?}"
    );
    (scene, operator, log)
}

#[tokio::test]
async fn a_429_without_retry_after_is_retried_with_backoff_until_ready() {
    // Semaphore 429s come without Retry-After: the operator backs off and tries again.
    let scene = Scene::new(serde_json::json!({})).await;
    let admin = scene.simulator.admin();
    let busy = r#"{"error":{"message":"Too many requests","detail":"The transaction was cancelled: too many concurrent requests"},"status":"failure"}"#;
    admin.inject_fault(Fault {
        times: Some(2),
        ..Fault::new(
            "/api/now/v2/table/sys_properties",
            FaultAction::Status {
                code: 429,
                body: Some(busy.into()),
            },
        )
    });
    let _operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for("READY_TO_SYNC after the 429s", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_eq!(condition(&status, "Reconciling"), None);
    let refused = admin.request_log().iter().filter(|c| c.status == 429).count();
    assert_eq!(refused, 2, "both 429s were met and retried");
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_token_restricted_to_other_apis_is_token_scope_restricted_and_the_token_is_kept() {
    let scene = Scene::new(serde_json::json!({})).await;
    let admin = scene.simulator.admin();
    // REST API Auth Scope: the UI API needs the scope ui_api; the application has table_api only.
    admin.bind_api_scope("/api/now/ui/", Some("ui_api"));
    admin
        .edit_oauth_app(APP, |app| app.auth_scopes = vec!["table_api".into()])
        .expect("edit the application");
    let _operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for_condition("IdentityResolved", "False", Reason::TokenScopeRestricted)
        .await;
    let message = assert_condition(&status, "IdentityResolved", "False", Reason::TokenScopeRestricted);
    assert!(
        message.contains("current_user") && message.contains("useraccount"),
        "{message:?}"
    );
    assert_condition(&status, "Stalled", "True", Reason::TokenScopeRestricted);
    assert_warning_event(&scene, "IdentityResolved", Reason::TokenScopeRestricted).await;
    assert!(scene.token_secret().await.is_some(), "a good token was forgotten");
    assert!(writes(&admin.request_log()).is_empty());
    // The remedy: the scope on the application; read at call time, so no new consent.
    admin
        .edit_oauth_app(APP, |app| app.auth_scopes.push("useraccount".into()))
        .expect("edit the application");
    let status = scene.reconcile_now("scope-granted").await;
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync), "{status:#?}");
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn an_administrator_without_the_script_writer_role_is_refused_creating_the_rule() {
    // Zurich and later: admin lacks snc_required_script_writer_permission by default.
    let simulator = instance::simulator_of(instance::admin_account()).await;
    let scene = Scene::with_simulator(simulator, serde_json::json!({})).await;
    scene
        .simulator
        .admin()
        .remove_role(AGENT, snowsim::SCRIPT_WRITER_ROLE)
        .expect("remove the role");
    let _operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for_condition("WebhookProvisioned", "False", Reason::InsufficientPrivileges)
        .await;
    let message = assert_condition(&status, "WebhookProvisioned", "False", Reason::InsufficientPrivileges);
    assert!(
        message.contains("sys_script") && message.contains("snc_required_script_writer_permission"),
        "{message:?}"
    );
    assert_condition(&status, "IdentityResolved", "True", Reason::IdentityResolved);
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn email_via_psa_without_email_api_send_provisions_nothing_until_the_role_is_granted() {
    let scene = Scene::new(serde_json::json!({"notifications": {"emailViaPsa": true}})).await;
    let _operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for_condition("EmailViaPsa", "False", Reason::MissingEmailApiSendRole)
        .await;
    let message = assert_condition(&status, "EmailViaPsa", "False", Reason::MissingEmailApiSendRole);
    assert!(
        message.contains(AGENT) && message.contains("email_api_send"),
        "the message names neither the account nor the role: {message:?}"
    );
    assert_condition(&status, "Ready", "False", Reason::MissingEmailApiSendRole);
    assert_condition(&status, "Stalled", "True", Reason::MissingEmailApiSendRole);
    assert_condition(&status, "IdentityResolved", "True", Reason::IdentityResolved);
    assert_eq!(status.capabilities.and_then(|c| c.email_via_psa), Some(false));
    assert_warning_event(&scene, "EmailViaPsa", Reason::MissingEmailApiSendRole).await;
    assert!(
        writes(&scene.simulator.admin().request_log()).is_empty(),
        "provisioned without email_api_send"
    );
    // The remedy: grant the role, then ask for a reconcile.
    scene
        .simulator
        .admin()
        .grant_role(AGENT, "email_api_send")
        .expect("grant email_api_send");
    let status = scene.reconcile_now("email-granted").await;
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync), "{status:#?}");
    assert_condition(&status, "EmailViaPsa", "True", Reason::EmailApiSendGranted);
    assert_eq!(status.capabilities.and_then(|c| c.email_via_psa), Some(true));
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn an_identity_other_than_the_expected_one_is_a_mismatch_and_provisions_nothing() {
    let scene = Scene::new(serde_json::json!({"expectedUserName": "someone.else"})).await;
    let _operator = scene.start_operator(&[]).await;
    let status = scene
        .wait_for_condition("IdentityResolved", "False", Reason::IdentityMismatch)
        .await;
    let message = assert_condition(&status, "IdentityResolved", "False", Reason::IdentityMismatch);
    assert!(
        message.contains(AGENT) && message.contains("someone.else"),
        "the message names neither identity: {message:?}"
    );
    assert_warning_event(&scene, "IdentityResolved", Reason::IdentityMismatch).await;
    let admin = scene.simulator.admin();
    assert!(admin.records("sys_script", RULE_QUERY).is_empty(), "a rule was created");
    assert!(
        admin.records("sys_properties", PROPERTY_QUERY).is_empty(),
        "a property was created"
    );
    assert!(
        writes(&admin.request_log()).is_empty(),
        "wrote under the wrong identity"
    );
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_403_on_sys_script_is_insufficient_privileges_naming_the_table() {
    let (scene, _operator, _log) = refused_on_sys_script(snowsim::Operation::Create, "POST").await;
    assert!(scene.simulator.admin().records("sys_script", RULE_QUERY).is_empty());
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn an_instance_that_cannot_be_reached_is_unreachable_and_still_reconciling() {
    let scene = Scene::new(serde_json::json!({})).await;
    let _operator = scene.start_operator_without_instance().await;
    let status = scene
        .wait_for_condition("Authorized", "Unknown", Reason::Unreachable)
        .await;
    assert_condition(&status, "Authorized", "Unknown", Reason::Unreachable);
    assert_condition(&status, "Ready", "False", Reason::Unreachable);
    assert_condition(&status, "Reconciling", "True", Reason::Unreachable);
    assert_eq!(
        condition(&status, "Stalled"),
        None,
        "a transient failure is not Stalled"
    );
    assert_eq!(status.sync_state, Some(SyncState::Provisioning));
    assert_warning_event(&scene, "Authorized", Reason::Unreachable).await;
    assert!(
        scene.simulator.admin().request_log().is_empty(),
        "the simulator was reached"
    );
    scene.assert_no_secret_leaked().await;
}

/// Breaks the instance with `fault` on the Table API, checks that a reconcile turns the connection
/// Unreachable with `in_message` in the message, lifts the fault and checks that it recovers
/// without a restart. Returns the request log from the fault on.
async fn unreachable_until_lifted(ready: &Ready, fault: FaultAction, in_message: &str) -> Vec<RequestLogEntry> {
    let admin = ready.simulator.admin();
    admin.inject_fault(Fault::new("/api/now", fault));
    admin.clear_request_log();
    let status = ready.reconcile_now("while-broken").await;
    let message = assert_condition(&status, "IdentityResolved", "Unknown", Reason::Unreachable);
    assert!(message.contains(in_message), "{in_message:?} not in {message:?}");
    assert_condition(&status, "Ready", "False", Reason::Unreachable);
    assert_condition(&status, "Reconciling", "True", Reason::Unreachable);
    assert_eq!(status.sync_state, Some(SyncState::Provisioning));

    admin.clear_faults();
    let status = ready
        .wait_for("READY_TO_SYNC once the fault is lifted", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_eq!(condition(&status, "Reconciling"), None);
    let log = admin.request_log();
    assert!(
        log.iter().any(|c| c.path.starts_with("/api/") && c.status == 200),
        "no call reached the instance after the fault: {log:#?}"
    );
    assert!(
        writes(&log).is_empty(),
        "recovery wrote to an intact instance: {log:#?}"
    );
    log
}

#[tokio::test]
async fn server_errors_are_unreachable_and_recovered_from_without_a_restart() {
    let ready = ready_connection(serde_json::json!({})).await;
    let log = unreachable_until_lifted(&ready, FaultAction::Status { code: 500, body: None }, "500").await;
    assert!(
        log.iter().any(|c| c.path.starts_with("/api/") && c.status == 500),
        "no 500 in the request log: {log:#?}"
    );
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn timeouts_are_unreachable_and_recovered_from_without_a_restart() {
    let ready = Scene::new(serde_json::json!({}))
        .await
        .ready(&["--request-timeout", "2s"])
        .await;
    // The instance stalls each call for longer than the operator waits (the stalled calls never
    // finish, so they are not in the request log).
    unreachable_until_lifted(&ready, FaultAction::Latency { ms: 6000 }, "timed out").await;
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_hibernating_instance_is_instance_hibernating_and_carries_on_once_awake() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    let awake = admin.behaviour();
    admin.set_behaviour(snowsim::Behaviour {
        hibernating: true,
        ..awake.clone()
    });
    admin.clear_request_log();
    let status = ready.reconcile_now("while-hibernating").await;
    // The cached access token is still good: the first call is the current user's, and it gets
    // the hibernation page (HTTP 200, HTML) — not a success, not a token or privilege problem.
    let message = assert_condition(&status, "IdentityResolved", "Unknown", Reason::InstanceHibernating);
    assert!(message.contains("wake"), "{message:?}");
    assert_condition(&status, "Ready", "False", Reason::InstanceHibernating);
    assert_condition(&status, "Authorized", "True", Reason::TokenValid);
    assert_eq!(status.sync_state, Some(SyncState::Provisioning));
    let log = admin.request_log();
    assert!(
        log.iter().any(|c| c.path.starts_with("/api/") && c.status == 200),
        "the hibernating instance was not asked: {log:#?}"
    );
    assert!(writes(&log).is_empty(), "a write to a hibernating instance: {log:#?}");
    // A Warning Event with the remedy (on whichever step first met the page: a reconcile already
    // under way when the instance fell asleep may have met it reading the webhook records).
    let event = ready.wait_for_event(Reason::InstanceHibernating.as_str()).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:#?}");
    let note = event.message.unwrap_or_default();
    assert!(note.contains(Reason::InstanceHibernating.remedy()), "{note:?}");

    // Woken (a person signs in to the developer site); the next look carries on without a
    // restart, a write or a new consent.
    admin.set_behaviour(awake);
    admin.clear_request_log();
    let status = ready.reconcile_now("once-awake").await;
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync));
    assert_condition(&status, "IdentityResolved", "True", Reason::IdentityResolved);
    assert!(writes(&admin.request_log()).is_empty());
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn the_retries_of_a_reconnect_refresh_the_token_once() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    admin.inject_fault(Fault::new("/api/now", FaultAction::Status { code: 500, body: None }));
    admin.clear_request_log();
    ready.annotate(RECONNECT, "during-an-outage").await;
    poll_until(
        Duration::from_secs(30),
        "the reconnect to be tried three times",
        || async {
            let failed = admin
                .request_log()
                .iter()
                .filter(|c| c.path.starts_with("/api/") && c.status == 500)
                .count();
            if failed >= 3 {
                Observed::Done(())
            } else {
                Observed::not_yet(failed)
            }
        },
    )
    .await;
    admin.clear_faults();
    ready
        .wait_for("the reconnect to succeed once the instance is back", |s| {
            s.last_handled_reconnect_at.as_deref() == Some("during-an-outage")
                && s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    let log = admin.request_log();
    let refreshes = log.iter().filter(|c| c.path == "/oauth_token.do").count();
    assert_eq!(refreshes, 1, "one refresh per reconnect, not per retry: {log:#?}");
    ready.assert_no_secret_leaked().await;
}

/// A request log time (`YYYY-MM-DD HH:MM:SS`, UTC) as UNIX seconds.
fn glide_seconds(time: &str) -> i64 {
    let civil: DateTime = time.replacen(' ', "T", 1).parse().expect("a glide_date_time");
    civil
        .to_zoned(TimeZone::UTC)
        .expect("a UTC time")
        .timestamp()
        .as_second()
}

#[tokio::test]
async fn a_429_is_rate_limited_and_nothing_reaches_the_instance_before_retry_after() {
    let ready = ready_connection(serde_json::json!({})).await;
    let admin = ready.simulator.admin();
    // Rate-limit windows are the hours of the instance's clock, and Retry-After counts down to the
    // next one: bring the clock to 10 s before an hour ends, and refuse every API call of the agent.
    let now = glide_seconds(&admin.now());
    let jump = (3600 - now.rem_euclid(3600) - 10).rem_euclid(3600);
    admin.advance_clock(Duration::from_secs(u64::try_from(jump).expect("a forward jump")));
    admin.add_rate_limit(RateLimitRule {
        name: "Neo Agent".into(),
        method: None,
        resource: "/api/now".into(),
        applies_to: RateLimitTarget::User(AGENT.into()),
        requests_per_hour: 0,
        sys_id: None,
    });
    admin.clear_request_log();
    // The jump outlived the cached access token: a reconnect refreshes it (the token endpoint is
    // not rate-limited) before the first API call.
    ready.annotate(RECONNECT, "rate-limited").await;
    let status = ready
        .wait_for_condition("IdentityResolved", "Unknown", Reason::RateLimited)
        .await;
    let message = assert_condition(&status, "IdentityResolved", "Unknown", Reason::RateLimited);
    assert!(message.contains("retry after"), "{message:?}");
    assert_condition(&status, "Ready", "False", Reason::RateLimited);
    assert_condition(&status, "Reconciling", "True", Reason::RateLimited);
    admin.clear_rate_limits();

    let status = ready
        .wait_for("READY_TO_SYNC after Retry-After", |s| {
            s.last_handled_reconnect_at.as_deref() == Some("rate-limited")
                && s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_eq!(condition(&status, "Reconciling"), None);
    let log = admin.request_log();
    let refused = log
        .iter()
        .position(|c| c.status == 429)
        .expect("a 429 in the request log");
    let refused_at = glide_seconds(&log[refused].time);
    // What the 429's Retry-After counted down to.
    let window_end = (refused_at.div_euclid(3600) + 1) * 3600;
    let early: Vec<_> = log[refused + 1..]
        .iter()
        .filter(|c| c.path.starts_with("/api/") && glide_seconds(&c.time) < window_end)
        .collect();
    assert!(
        early.is_empty(),
        "calls reached the instance before Retry-After ({}s after the 429) elapsed: {early:#?}",
        window_end - refused_at
    );
    assert!(
        log[refused + 1..]
            .iter()
            .any(|c| c.path.starts_with("/api/") && c.status == 200),
        "no call after Retry-After: {log:#?}"
    );
    ready.assert_no_secret_leaked().await;
}
