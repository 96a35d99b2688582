//! The control plane failing under the operator, on a private control plane of this test binary
//! (`private_control_plane`: restarting the shared one would break every other binary's tests):
//! the kube-apiserver killed and started again while connections are mid-provisioning, or as a
//! consent's callback arrives (the page asks for a reload, which completes the consent) or while
//! it holds the token to store (the page says to start again, which completes it), and etcd
//! stopped for longer than the operator's Lease lasts while a reconcile is under way (the leader
//! stops leading, says so, and leads again once it renews the Lease). Afterwards the invariants hold: every
//! connection READY_TO_SYNC with a status naming exactly one rule and one property on its instance,
//! each created by one request; the watch resumed (a change made after the fault is reconciled);
//! the operator never exited; no secret leaked.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use kube::ResourceExt;
use servicenow_operator::api::{ConsentSession, RECONCILE_REQUESTED_AT, SyncState};
use snowsim::{Fault, FaultAction};
use support::{
    browser::{Browser, LoginOutcome},
    consent::{CALLBACK, awaiting_consent, browser, consent_as, consent_url, new_consent_url},
    control_plane::{Component, ControlPlane, private_control_plane},
    instance::{AGENT, HOST},
    operator::Operator,
    poll_until,
    scene::{CONNECTION, Scene, assert_one_rule_and_one_property},
};
use tokio::{sync::Mutex, task::JoinHandle};

/// The faults take down the control plane every test of this binary uses: one at a time.
static ONE_FAULT_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// How many connections (each in its namespace, with its instance and operator) are mid-provisioning
/// when the API server is killed.
const CONNECTIONS: usize = 5;

/// The rule's create, the provisioning's second write (the property is written by then).
const RULE_CREATE: &str = "/api/now/v2/table/sys_script";

/// How long each instance holds its rule's create: long enough for all connections to be inside it
/// when the API server is killed.
const HELD: Duration = Duration::from_secs(12);
/// How long the API server stays away: longer than [`HELD`], so every held create is answered, and
/// every status write that follows it made, while the API server is away.
const API_SERVER_DOWN: Duration = Duration::from_secs(14);
/// How long a change made after the restart may take to be reconciled: the watches, and
/// kube-runtime's retry of the streams that trigger reconciles, retry within a few seconds of an
/// error (`src/controller/backoff.rs`), then meet 410 Expired once the API server's watch cache
/// is up again. With kube-runtime's default backoff (growing to 30 s) it took 56-72 s.
const WATCH_RESUMED: Duration = Duration::from_secs(30);
/// The operators' Lease: longer than the API server is away, so they lead throughout and the
/// change made after the restart reaches them through the watches they had before it (not
/// those of a controller started again after a lost Lease, see the etcd test).
const LONG_LEASE: [&str; 2] = ["--lease-duration", "60s"];
/// The reconcile request made after the restart.
const AFTER_RESTART: &str = "after-the-api-server-restart";

#[tokio::test]
async fn an_api_server_killed_while_connections_provision_loses_no_status_and_writes_nothing_twice() {
    let _alone = ONE_FAULT_AT_A_TIME.lock().await;
    let plane = private_control_plane().await;
    let mut scenes = Vec::new();
    for _ in 0..CONNECTIONS {
        let scene = Scene::new(serde_json::json!({})).await;
        scene.simulator.admin().inject_fault(Fault {
            method: Some("POST".into()),
            times: Some(1),
            ..Fault::new(
                RULE_CREATE,
                FaultAction::Latency {
                    ms: HELD.as_millis() as u64,
                },
            )
        });
        scenes.push(scene);
    }
    let mut operators = Vec::new();
    for scene in &scenes {
        operators.push(scene.start_operator(&LONG_LEASE).await);
    }
    // Each operator wrote the property: it is in the held rule create now.
    poll_until(
        Duration::from_secs(30),
        "every connection's property to be created",
        || async {
            scenes
                .iter()
                .all(|scene| {
                    let log = scene.simulator.admin().request_log();
                    log.iter()
                        .any(|c| c.method == "POST" && c.path.ends_with("/table/sys_properties"))
                })
                .then_some(())
        },
    )
    .await;
    for scene in &scenes {
        let status = scene.api().get(CONNECTION).await.expect("read the connection").status;
        assert_ne!(
            status.and_then(|s| s.sync_state),
            Some(SyncState::ReadyToSync),
            "a connection was ready before the API server was killed: the fault came too late"
        );
    }

    let took = tokio::task::spawn_blocking(|| plane.restart(Component::ApiServer, API_SERVER_DOWN))
        .await
        .expect("the restart thread");
    let back = Instant::now();
    eprintln!("kube-apiserver killed, away {API_SERVER_DOWN:?}, serving again after {took:?}");
    for (index, operator) in operators.iter().enumerate() {
        // Its status write after the held create met the outage.
        assert!(
            operator.logs().contains("reconcile failed"),
            "operator {index} had no reconcile fail while the API server was away"
        );
    }

    for scene in &scenes {
        scene
            .wait_for("READY_TO_SYNC after the API server's restart", |s| {
                s.sync_state == Some(SyncState::ReadyToSync)
            })
            .await;
    }
    // A change made now is reconciled soon: the watches resumed (after meeting 410 Expired).
    for scene in &scenes {
        scene.annotate(RECONCILE_REQUESTED_AT, AFTER_RESTART).await;
    }
    let asked = Instant::now();
    for (index, scene) in scenes.iter().enumerate() {
        let api = scene.api();
        let status = poll_until(WATCH_RESUMED, "a reconcile asked for after the restart", || async {
            let status = api.get(CONNECTION).await.ok()?.status?;
            (status.last_handled_reconcile_at.as_deref() == Some(AFTER_RESTART)).then_some(status)
        })
        .await;
        eprintln!(
            "connection {index}: the change made after the restart reconciled within {:?} ({:?} after \
             the API server served again)",
            asked.elapsed(),
            back.elapsed()
        );
        let after = format!("connection {index}, the API server killed mid-provisioning");
        assert_one_rule_and_one_property(scene, status, 0, &after);
        scene.assert_no_secret_leaked().await;
    }
    for operator in &mut operators {
        assert!(operator.running(), "an operator exited: {}", operator.logs());
    }
}

/// How long etcd stays away (beyond the seconds it takes to stop): over three times the Lease the
/// test operators get (3 s, see `support::operator`), so the leader cannot renew its Lease for
/// longer than it lasts, as with 30 s and the default 15 s Lease, in less time.
const ETCD_DOWN: Duration = Duration::from_secs(10);
/// What the operator logs when it stops leading because it could not renew its Lease in time.
const LEASE_LAPSED: &str = "lost leadership: the Lease could not be renewed";

#[tokio::test]
async fn etcd_stopped_for_longer_than_the_lease_stops_the_leader_which_leads_again_without_a_lost_status_or_a_write() {
    let _alone = ONE_FAULT_AT_A_TIME.lock().await;
    let plane = private_control_plane().await;
    let scene = Scene::new(serde_json::json!({})).await;
    let mut operator = scene.start_operator(&[]).await;
    scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;

    // A reconcile asked for as etcd goes away: its status write meets the outage.
    scene.annotate(RECONCILE_REQUESTED_AT, "as-etcd-stops").await;
    let outage = tokio::task::spawn_blocking(|| plane.restart(Component::Etcd, ETCD_DOWN));
    let took = outage.await.expect("the restart thread");
    eprintln!("etcd stopped, away {ETCD_DOWN:?}, serving again after {took:?}");
    assert!(operator.running(), "the operator exited: {}", operator.logs());
    // It could not renew its Lease for longer than the Lease lasts: it stopped leading, and said
    // why at WARN.
    let logs = operator.logs();
    let lapsed = logs
        .find(LEASE_LAPSED)
        .unwrap_or_else(|| panic!("no {LEASE_LAPSED:?} in the operator's log:\n{logs}"));
    let line = &logs[logs[..lapsed].rfind('\n').map_or(0, |start| start + 1)..lapsed];
    assert!(line.contains("WARN"), "lost leadership not logged at WARN: {line}");
    let back = Instant::now();
    scene
        .wait_for("the reconcile asked for as etcd stopped", |s| {
            s.last_handled_reconcile_at.as_deref() == Some("as-etcd-stops")
        })
        .await;
    eprintln!(
        "the reconcile asked for as etcd stopped handled {:?} after etcd served again",
        back.elapsed()
    );
    // (That status write may have been sent before the Lease lapsed and held by the API server
    // until etcd was back — a request already sent cannot be taken back; it is conditional on the
    // connection's version, so it cannot undo a newer status.) A change made now needs the
    // controller started again, once the Lease was renewed.
    let status = scene.reconcile_now("after-etcd-came-back").await;
    let logs = operator.logs();
    assert!(
        logs[logs.find(LEASE_LAPSED).expect("logged above")..].contains("leading: starting the controller"),
        "the operator reconciled without leading again:\n{logs}"
    );
    assert_one_rule_and_one_property(&scene, status, 0, "etcd stopped");
    assert!(operator.running(), "the operator exited: {}", operator.logs());
    scene.assert_no_secret_leaked().await;
}

/// How long the API server stays away in the consent tests: long enough for the browser to be
/// sent to the callback and shown its answer meanwhile.
const CALLBACK_OUTAGE: Duration = Duration::from_secs(6);
/// How long the instance holds the code exchange of the second consent test: long enough for the
/// API server to be killed meanwhile, shorter than [`CALLBACK_OUTAGE`], so the token Secret's read
/// after it meets the outage.
const EXCHANGE_HELD: Duration = Duration::from_secs(4);

/// A connection awaiting consent, its operator, its consentUrl, and a browser signed in to the
/// instance through it, on the consent page (the operator recorded the ticket as used).
async fn on_the_consent_page(shots: &str) -> (Scene, Operator, String, Browser) {
    let (scene, operator) = awaiting_consent(serde_json::json!({}), &[]).await;
    let url = consent_url(&scene).await;
    let browser = browser(&scene).await;
    let signed_in = browser
        .sign_in(&url, HOST, AGENT, AGENT, Path::new(shots))
        .await
        .unwrap_or_else(|error| panic!("not sent to the instance: {error}"));
    assert!(
        matches!(signed_in.outcome, LoginOutcome::Consent),
        "not on the consent page: {}",
        browser.page_text().await
    );
    (scene, operator, url, browser)
}

/// Kills the API server of `plane` (away [`CALLBACK_OUTAGE`], then started again) and returns once
/// it no longer answers `scene`'s client; the handle answers how long until it served again.
async fn api_server_killed(plane: &'static ControlPlane, scene: &Scene) -> JoinHandle<Duration> {
    let restart = tokio::task::spawn_blocking(|| plane.restart(Component::ApiServer, CALLBACK_OUTAGE));
    poll_until(Duration::from_secs(10), "the API server to be gone", || async {
        scene.client.apiserver_version().await.err().map(|_| ())
    })
    .await;
    restart
}

/// The title of the page `browser` shows, and its text.
async fn page(browser: &Browser) -> (String, String) {
    let title = browser.find("#title").await.text().await.expect("the page's title");
    (title, browser.page_text().await)
}

/// After a consent recorded: READY_TO_SYNC with the token Secret, one rule and one property, no
/// secret leaked.
async fn assert_consented(scene: &Scene, after: &str) {
    let status = scene
        .wait_for("READY_TO_SYNC after the consent", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert!(scene.token_secret().await.is_some(), "the token Secret");
    assert_one_rule_and_one_property(scene, status, 0, after);
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_consent_callback_that_meets_the_api_server_away_asks_for_a_reload_which_completes_it() {
    let _alone = ONE_FAULT_AT_A_TIME.lock().await;
    let plane = private_control_plane().await;
    let (scene, operator, _, browser) = on_the_consent_page("control-plane/reload").await;

    // Once the API server is gone, Allow sends the browser to the callback.
    let restart = api_server_killed(plane, &scene).await;
    browser.click("#allow").await;
    let callback = browser
        .wait_for_url("the operator's callback", |url| url.path() == CALLBACK)
        .await;
    let (title, text) = page(&browser).await;
    assert_eq!(title, "Try again", "{text}");
    assert!(
        text.contains("could not reach the Kubernetes API. Reload this page in a moment."),
        "{text}"
    );
    assert!(!text.contains("error"), "the page shows an error's details: {text}");
    let took = restart.await.expect("the restart thread");
    eprintln!("kube-apiserver killed, away {CALLBACK_OUTAGE:?}, serving again after {took:?}");
    assert!(
        scene.token_secret().await.is_none(),
        "a token stored while the API server was away"
    );

    // The person reloads the page: the consent completes.
    browser.goto(callback.as_str()).await;
    let (title, text) = page(&browser).await;
    assert_eq!(title, "Consent recorded", "{text}");
    browser.close().await;
    assert_consented(&scene, "a consent across an API server restart").await;
    drop(operator);
}

#[tokio::test]
async fn a_consent_whose_token_cannot_be_stored_as_the_api_server_goes_away_says_to_start_again() {
    let _alone = ONE_FAULT_AT_A_TIME.lock().await;
    let plane = private_control_plane().await;
    let (scene, operator, url, browser) = on_the_consent_page("control-plane/start-again").await;
    // Every token request, the callback's code exchange among them, is held until the callback
    // has answered.
    scene.simulator.admin().inject_fault(Fault {
        method: Some("POST".into()),
        ..Fault::new(
            "/oauth_token.do",
            FaultAction::Latency {
                ms: EXCHANGE_HELD.as_millis() as u64,
            },
        )
    });

    // Allow: the callback uses the state (the session is done), then waits for the held exchange;
    // the API server is killed meanwhile, so the token Secret cannot be read or written.
    // (A WebDriver click returns once the page it leads to has loaded: the kill runs beside it.)
    let state_used_then_killed = async {
        poll_until(Duration::from_secs(10), "the consent's state used", || async {
            let connection = scene.api().get(CONNECTION).await.ok()?;
            ConsentSession::of(connection.annotations())
                .filter(|session| session.done)
                .map(|_| ())
        })
        .await;
        let restart = api_server_killed(plane, &scene).await;
        restart.await.expect("the restart thread")
    };
    let ((), took) = tokio::join!(browser.click("#allow"), state_used_then_killed);
    browser
        .wait_for_url("the operator's callback", |url| url.path() == CALLBACK)
        .await;
    let (title, text) = page(&browser).await;
    assert_eq!(title, "Try again", "{text}");
    assert!(
        text.contains("nothing was stored and the token just issued was revoked")
            && text.contains("Open the connection's status.consentUrl again"),
        "the page must say to start again (a reload is refused as used): {text}"
    );
    scene.simulator.admin().clear_faults();
    eprintln!("kube-apiserver killed, away {CALLBACK_OUTAGE:?}, serving again after {took:?}");
    assert!(
        scene.token_secret().await.is_none(),
        "a token stored while the API server was away"
    );

    browser.close().await;

    // Started again from the new consentUrl (in a new browser), the consent completes.
    let url = new_consent_url(&scene, &url).await;
    let browser = self::browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "control-plane/start-again-2").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    assert_consented(&scene, "a consent started again after an unstored token").await;
    drop(operator);
}
