//! The fault matrix of a first provisioning, against a real API server and snowsim. The operator
//! is killed (SIGKILL) after **each** call it makes to the instance — after the token refresh,
//! the identity and role reads, the record lookups, the property create, the rule create, the
//! legacy-rule delete (then in the status write that follows) — and started again. The instance
//! resets the connection of the rule's create, or answers it with truncated JSON, or answers it
//! after 25 s; its address serves a certificate of an untrusted CA, then the right one again. The
//! leader's Lease is taken away while it is stalled on an instance call, with a second replica
//! standing by.
//! After each fault the invariants hold: exactly one rule and one property on the instance, each
//! created by exactly one request, a status naming them, a clear reason while the fault lasts,
//! recovery without a restart, no secret in any log, Event or status.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use servicenow_operator::api::{SyncState, conditions::Reason};
use snowsim::{Fault, FaultAction};
use support::{
    conditions::{assert_condition, condition},
    control_plane,
    forward::Forwarder,
    instance,
    operator::{Operator, free_port},
    poll_until,
    scene::{CONNECTION, Scene, assert_one_rule_and_one_property},
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
    assert_one_rule_and_one_property(&scene, status, 0, &format!("killed after {after}"));
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
    // refresh, identity, roles, the batch of lookups (its items logged each, then the batch), then
    // the three writes.
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

/// The rule's create, the provisioning's second write (the property is written by then).
const RULE_CREATE: &str = "/api/now/v2/table/sys_script";

/// How many times the rule's create is faulted before the fault lifts by itself: each retry
/// (backoff 1 s, 2 s, 4 s) meets it, and the connection shows it for seconds.
const FAULTED_CREATES: u32 = 3;

/// A scene with a legacy rule to delete, the operator not started yet, `action` on the first
/// [`FAULTED_CREATES`] creates of the rule.
async fn scene_with_rule_create_fault(action: FaultAction) -> Scene {
    let scene = Scene::new(serde_json::json!({})).await;
    scene.insert_legacy_rule().await;
    let admin = scene.simulator.admin();
    admin.clear_request_log();
    admin.inject_fault(Fault {
        method: Some("POST".into()),
        times: Some(FAULTED_CREATES),
        ..Fault::new(RULE_CREATE, action)
    });
    scene
}

#[tokio::test]
async fn a_reset_or_a_truncated_answer_mid_provisioning_names_a_reason_and_is_recovered_from_without_a_restart() {
    let truncated = |code| FaultAction::Page {
        code,
        content_type: "application/json".into(),
        body: "{\"result\":[{".into(),
    };
    let cases = [
        (
            "a connection reset",
            FaultAction::DropConnection,
            "Unknown",
            Reason::Unreachable,
            "could not be reached",
        ),
        // A create answers 201: a 200 is refused for its status before its body is read.
        (
            "a truncated JSON answer with 200",
            truncated(200),
            "False",
            Reason::ProvisioningFailed,
            "unexpected answer: HTTP 200",
        ),
        (
            "a truncated JSON answer with 201",
            truncated(201),
            "False",
            Reason::ProvisioningFailed,
            "HTTP 201 with a body that is not the expected JSON",
        ),
    ];
    for (fault, action, truth, reason, words) in cases {
        let scene = scene_with_rule_create_fault(action).await;
        let _operator = scene.start_operator(&[]).await;
        let status = scene.wait_for_condition("WebhookProvisioned", truth, reason).await;
        let message = assert_condition(&status, "WebhookProvisioned", truth, reason);
        assert!(message.contains(words), "{fault}: {words:?} not in {message:?}");
        assert_ne!(status.sync_state, Some(SyncState::ReadyToSync), "{fault}");

        let status = scene
            .wait_for("READY_TO_SYNC once the fault has lifted", |s| {
                s.sync_state == Some(SyncState::ReadyToSync)
            })
            .await;
        assert_eq!(condition(&status, "Reconciling"), None, "{fault}");
        assert_one_rule_and_one_property(&scene, status, FAULTED_CREATES as usize, fault);
        scene.assert_no_secret_leaked().await;
    }
}

#[tokio::test]
async fn a_slow_instance_within_the_default_request_timeout_is_waited_for_and_provisioned_once() {
    // 25 s: slower than any healthy instance, within the default --request-timeout (30 s).
    let slow = Duration::from_secs(25);
    let scene = scene_with_rule_create_fault(FaultAction::Latency {
        ms: slow.as_millis() as u64,
    })
    .await;
    let started = Instant::now();
    let _operator = scene.start_operator(&[]).await;
    let api = scene.api();
    let status = poll_until(
        slow + Duration::from_secs(30),
        "READY_TO_SYNC after the slow create",
        || async {
            let status = api.get(CONNECTION).await.ok()?.status?;
            (status.sync_state == Some(SyncState::ReadyToSync)).then_some(status)
        },
    )
    .await;
    assert!(started.elapsed() >= slow, "ready before the slow answer came");
    // The slow create was carried out, not faulted: sent once, answered once.
    assert_one_rule_and_one_property(&scene, status, 0, "a 25 s answer");
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_unreachable_naming_it_and_gets_no_token_until_the_right_one_is_back() {
    let scene = Scene::new(serde_json::json!({})).await;
    // Another snowsim answering as the instance, with a certificate of its own CA, which the
    // operator (trusting the instance's CA) does not trust — behind the instance's address.
    let impostor = instance::simulator().await;
    let address = Forwarder::start(impostor.addr()).await;
    let _operator = scene.start_operator_reaching(address.addr, &[]).await;
    let status = scene
        .wait_for_condition("Authorized", "Unknown", Reason::Unreachable)
        .await;
    let message = assert_condition(&status, "Authorized", "Unknown", Reason::Unreachable);
    assert!(
        message.contains("invalid peer certificate"),
        "the message does not name the certificate: {message:?}"
    );
    let reached = impostor.admin().request_log();
    assert!(reached.is_empty(), "requests reached the impostor: {reached:#?}");

    address.switch_to(scene.simulator.addr());
    let status = scene
        .wait_for("READY_TO_SYNC once the instance's certificate is back", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_one_rule_and_one_property(&scene, status, 0, "an untrusted certificate");
    assert!(
        impostor.admin().request_log().is_empty(),
        "requests reached the impostor"
    );
    scene.assert_no_secret_leaked().await;
}

/// The leader-election Lease (the operator's default name), in the test's namespace.
const LEASE: &str = "servicenow-operator";

/// The holder of the Lease, once there is one.
async fn lease_holder(leases: &Api<Lease>, what: &str) -> String {
    poll_until(Duration::from_secs(30), what, || async {
        leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
    })
    .await
}

/// The leader's roles read, which the test stalls.
const ROLES_READ: &str = "/api/now/v2/table/sys_user_has_role";

#[tokio::test]
async fn a_leader_that_loses_its_lease_mid_reconcile_stops_at_once_and_the_next_provisions_once() {
    let scene = Scene::new(serde_json::json!({})).await;
    let admin = scene.simulator.admin();
    // The leader's roles read stalls for far longer than the Lease takes to change hands.
    admin.inject_fault(Fault {
        method: Some("GET".into()),
        times: Some(1),
        ..Fault::new(ROLES_READ, FaultAction::Latency { ms: 15_000 })
    });
    let plane = control_plane().await;
    let replica = |name: &'static str| {
        let scene = &scene;
        async move {
            let env = [("POD_NAME", name)];
            Operator::start_as(
                scene.ns.name(),
                &scene.simulator,
                free_port(),
                &[],
                &env,
                plane.kubeconfig_path(),
            )
            .await
        }
    };
    let first = replica("replica-a").await;
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), scene.ns.name());
    assert_eq!(lease_holder(&leases, "a leader").await, "replica-a");
    let second = replica("replica-b").await;
    poll_until(Duration::from_secs(30), "the leader's identity read", || async {
        let log = admin.request_log();
        log.iter()
            .any(|c| c.path == "/api/now/ui/user/current_user")
            .then_some(())
    })
    .await;
    // The leader is in the stalled roles read now: the Lease is taken from it, given to the other.
    let now = serde_json::to_value(MicroTime(Timestamp::now())).expect("a time");
    let patch = serde_json::json!({"spec": {"holderIdentity": "replica-b", "acquireTime": now, "renewTime": now}});
    leases
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("take the Lease");

    // At once: well before its stalled read is answered (15 s), not after finishing the reconcile.
    poll_until(
        Duration::from_secs(10),
        "the first replica to stop its controller before its stalled read is answered",
        || async {
            first
                .logs()
                .contains("lost leadership: the controller stopped")
                .then_some(())
        },
    )
    .await;
    let status = scene
        .wait_for("READY_TO_SYNC under the second replica", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_eq!(lease_holder(&leases, "the new leader").await, "replica-b");
    assert!(
        !second.logs().contains("lost leadership"),
        "the second replica lost the Lease too"
    );
    assert_one_rule_and_one_property(&scene, status, 0, "the Lease lost mid-reconcile");
    scene.assert_no_secret_leaked().await;
}

/// A listener whose address is taken stops the start at once, with an error naming the address
/// and the flag that set it: never a process that passes its `/readyz` without that listener (a
/// controller once did without its hand-off listener, and the public component's requests
/// reached whatever else held the port).
#[tokio::test]
async fn an_address_in_use_stops_the_start_naming_it_and_its_flag() {
    let scene = Scene::new(serde_json::json!({})).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let address = format!("127.0.0.1:{port}");
    let free = format!("127.0.0.1:{}", free_port());
    let key_file = std::env::temp_dir().join(format!("{}-handoff-key", scene.ns.name()));
    std::fs::write(&key_file, "k".repeat(64)).expect("write the hand-off key");
    let key_file = key_file.display().to_string();
    let cases: [(&str, u16, Vec<&str>, &str); 3] = [
        ("run", free_port(), vec!["--listen", &address], "--listen or LISTEN"),
        ("run", port, vec!["--listen", &free], "--admin-listen or ADMIN_LISTEN"),
        (
            "controller",
            free_port(),
            vec!["--handoff-listen", &address, "--handoff-key-file", &key_file],
            "--handoff-listen or HANDOFF_LISTEN",
        ),
    ];
    for (subcommand, admin_port, extra, flag) in cases {
        let (status, logs) =
            Operator::run_to_exit(subcommand, scene.ns.name(), &scene.simulator, admin_port, &extra).await;
        assert!(!status.success(), "{subcommand} {extra:?} ended with {status}: {logs}");
        assert!(
            logs.contains(&format!("failed to serve HTTP on {address} ({flag})")),
            "{subcommand} {extra:?}: the error does not name {address} and {flag}: {logs}"
        );
        assert!(
            logs.contains(&format!("give {flag} another address")),
            "no remedy: {logs}"
        );
    }
    drop(taken);
    let _ = std::fs::remove_file(&key_file);
}
