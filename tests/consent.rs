//! The consent flow end to end: the operator's `status.consentUrl`, opened in headless Chromium,
//! through snowsim's login and consent pages, back to the operator's callback, to a stored
//! refresh token and `READY_TO_SYNC`; and every way it can go wrong — a tampered, expired or
//! replayed state, Deny, an unregistered redirect URL, the wrong user — with nothing stored.
//! Screenshots of each page land in the artifacts directory (`tests/support/browser.rs`).

mod support;

use std::path::Path;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, ResourceExt};
use reqwest::{StatusCode, redirect::Policy};
use servicenow_operator::{
    api::{RECONSENT, ServiceNowConnectionStatus, SyncState, conditions::Reason},
    http::consent_state,
    secrets::STATE_KEY_KEY,
};
use support::{
    audit::AuditLog,
    browser::{Browser, BrowserOptions},
    conditions::assert_condition,
    instance::{AGENT, HOST},
    operator::{Operator, free_port},
    scene::{CONNECTION, PROPERTY_QUERY, RULE_QUERY, Scene, TOKEN_SECRET, ready_connection},
};

/// The operator's redirect (callback) path.
const CALLBACK: &str = "/oauth/servicenow/callback";

/// A scene awaiting consent, with the operator listening on a port whose callback URL is the
/// OAuth application's registered Redirect URL.
async fn awaiting_consent(extra_spec: serde_json::Value) -> (Scene, Operator) {
    let scene = Scene::awaiting_consent(extra_spec).await;
    let port = free_port();
    scene.register_redirect_url(&format!("http://127.0.0.1:{port}{CALLBACK}"));
    let operator = Operator::start_with(scene.ns.name(), &scene.simulator, port, &[]).await;
    (scene, operator)
}

/// Waits until the connection asks for consent and returns its `status.consentUrl`.
async fn consent_url(scene: &Scene) -> String {
    let status = scene
        .wait_for("AWAITING_CONSENT with a consentUrl", |s| {
            s.sync_state == Some(SyncState::AwaitingConsent) && s.consent_url.is_some()
        })
        .await;
    status.consent_url.expect("a consentUrl")
}

/// A headless Chromium that reaches the scene's instance under its real host name.
async fn browser(scene: &Scene) -> Browser {
    Browser::start(
        BrowserOptions::new()
            .map_host(HOST, scene.simulator.addr())
            .trust_certificates_pem(scene.simulator.ca_pem()),
    )
    .await
}

/// Opens `url`, signs in to the instance as `user`, answers the consent page with `button`
/// (`#allow` or `#deny`) and waits for the operator's page; returns its title. Screenshots each
/// page under `shots/`.
async fn consent_as(browser: &Browser, url: &str, user: &str, password: &str, button: &str, shots: &str) -> String {
    browser
        .answer_consent(url, HOST, user, password, button, Path::new(shots))
        .await
        .unwrap_or_else(|error| panic!("not sent to the instance: {error}"));
    browser
        .wait_for_url("the operator's callback", |url| url.path() == CALLBACK)
        .await;
    let title = browser.find("#title").await.text().await.expect("the page's title");
    browser.screenshot(format!("{shots}/3-result.png")).await;
    title
}

/// A client that does not follow redirects.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("an HTTP client")
}

/// The requests the instance answered on `path`.
fn calls_to(scene: &Scene, path: &str) -> usize {
    scene
        .simulator
        .admin()
        .request_log()
        .iter()
        .filter(|entry| entry.path == path)
        .count()
}

#[tokio::test]
async fn consent_in_a_browser_stores_the_token_and_reaches_ready_to_sync() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    assert!(
        url.starts_with(&format!("{}/oauth/servicenow/start?connection=", operator.public_url)),
        "{url}"
    );
    let status = scene
        .wait_for("Authorized=False ConsentRequired", |s| {
            support::conditions::has_condition(s, "Authorized", "False", Reason::ConsentRequired)
        })
        .await;
    assert_condition(&status, "Authorized", "False", Reason::ConsentRequired);
    assert!(scene.token_secret().await.is_none());

    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "consent/allow").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    let callback = browser.current_url().await;
    browser.close().await;

    let status = scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    let agent = scene.simulator.admin().user_sys_id(AGENT).expect("neo.agent's sys_id");
    let identity = status.identity.clone().expect("an identity");
    assert_eq!(
        (identity.sys_id.as_str(), identity.user_name.as_str()),
        (agent.as_str(), AGENT)
    );
    assert_eq!(
        status.consent_url, None,
        "the consentUrl is cleared once consent succeeded"
    );
    assert_eq!(scene.simulator.admin().records("sys_script", RULE_QUERY).len(), 1);
    let token = scene.token_secret().await.expect("the token Secret");
    assert_eq!(
        token
            .owner_references()
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        [CONNECTION],
        "the token Secret is owned by the connection"
    );

    // The same answer again: refused as a replay, and nothing changes. Counted: the code
    // exchanges on the instance, the writes through the API server (its audit log: an identical
    // write would leave the resourceVersion as it was). Once this request is echoed, the reconciles
    // of the consent are over, and nothing else writes in the namespace but the Lease.
    scene.reconcile_now("before-the-replay").await;
    let audit = AuditLog::of(&scene.client, scene.ns.name()).await;
    let mark = audit.mark().await;
    let exchanges = calls_to(&scene, "/oauth_token.do");
    let replay = http().get(callback.as_str()).send().await.expect("replay the callback");
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    let page = replay.text().await.expect("the page");
    assert!(page.contains("already used"), "{page}");
    assert_eq!(
        calls_to(&scene, "/oauth_token.do"),
        exchanges,
        "no code exchange for a replay"
    );
    let requests = audit.since(&mark).await;
    let writes = requests.matching(|r| r.is_write() && r.object_ref.resource != "leases");
    assert!(writes.is_empty(), "a replay wrote through the API server:\n{requests}");
    let after = scene.token_secret().await.expect("the token Secret");
    assert_eq!(after.data, token.data, "the token Secret's data changed");

    scene.assert_no_secret_leaked().await;
    drop(operator);
}

#[tokio::test]
async fn tampered_malformed_and_expired_states_get_a_400_and_nothing_is_stored() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    let http = http();

    let start = http.get(&url).send().await.expect("the start endpoint");
    assert_eq!(start.status(), StatusCode::FOUND);
    let location = start
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .and_then(|l| url::Url::parse(l).ok())
        .expect("a Location");
    assert_eq!(location.host_str(), Some(HOST));
    assert_eq!(location.path(), "/oauth_auth.do");
    let param = |name: &str| {
        location
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .unwrap_or_else(|| panic!("no {name} in {location}"))
    };
    assert_eq!(param("redirect_uri"), format!("{}{CALLBACK}", operator.public_url));
    assert_eq!(param("code_challenge_method"), "S256");
    assert_eq!(param("response_type"), "code");
    let state = param("state");

    // One character of the signature changed: the next-to-last, whose 6 bits all count (the last
    // one of unpadded base64url also carries padding bits, and changing those makes the state
    // malformed, not forged).
    let mut tampered: Vec<char> = state.chars().collect();
    let at = tampered.len() - 2;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    // Signed with the operator's real key, but minted 11 minutes ago.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(scene.client.clone(), scene.ns.name());
    let key = secrets
        .get("servicenow-operator-consent-key")
        .await
        .expect("the operator's state key Secret")
        .data
        .and_then(|mut data| data.remove(STATE_KEY_KEY))
        .expect("a state key");
    let uid = scene.api().get(CONNECTION).await.expect("the connection").uid();
    let expired = consent_state::mint(
        &key.0,
        &format!("{}/{CONNECTION}", scene.ns.name()),
        &uid.expect("a uid"),
        Timestamp::now()
            .checked_sub(SignedDuration::from_mins(11))
            .expect("a time"),
    );

    for (what, state, says) in [
        ("tampered", tampered.as_str(), "signature does not match"),
        ("malformed", "v1.not-a-state", "malformed"),
        ("expired", expired.state.as_str(), "expired"),
    ] {
        let answer = http
            .get(format!("{}{CALLBACK}", operator.public_url))
            .query(&[("code", "made-up-code"), ("state", state)])
            .send()
            .await
            .expect("the callback");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{what} state");
        let page = answer.text().await.expect("the page");
        assert!(page.contains(says), "the page for a {what} state says {says:?}: {page}");
        assert!(page.contains("consentUrl"), "the page says how to start again: {page}");
    }
    assert_eq!(calls_to(&scene, "/oauth_token.do"), 0, "no code was exchanged");
    assert!(scene.token_secret().await.is_none(), "nothing was stored");
    let status = scene.api().get_status(CONNECTION).await.expect("the connection").status;
    assert_eq!(status.and_then(|s| s.sync_state), Some(SyncState::AwaitingConsent));
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn deny_leaves_the_connection_awaiting_consent_and_says_it_was_denied() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#deny", "consent/deny").await;
    assert_eq!(title, "Consent denied", "{}", browser.page_text().await);
    assert!(browser.page_text().await.contains("click Allow"));
    browser.close().await;

    let status = scene
        .wait_for_condition("Authorized", "False", Reason::ConsentDenied)
        .await;
    assert_condition(&status, "Authorized", "False", Reason::ConsentDenied);
    assert_eq!(status.sync_state, Some(SyncState::AwaitingConsent));
    assert!(status.consent_url.is_some(), "the consentUrl stays for another try");
    assert!(scene.token_secret().await.is_none(), "nothing was stored");
    assert_eq!(calls_to(&scene, "/oauth_token.do"), 0, "no code was exchanged");
    scene.wait_for_event(Reason::ConsentDenied.as_str()).await;
    scene.assert_no_secret_leaked().await;
    drop(operator);
}

#[tokio::test]
async fn an_unregistered_redirect_url_gets_a_page_that_names_the_fix() {
    let scene = Scene::awaiting_consent(serde_json::json!({})).await;
    let port = free_port();
    // Registered under another spelling of the operator's address: the instance falls back to the
    // registered URL (servicenow-api.md §1.1), the browser still reaches the operator, and the
    // code is bound to a redirect URL that is not the operator's.
    scene.register_redirect_url(&format!("http://localhost:{port}{CALLBACK}"));
    let operator = Operator::start_with(scene.ns.name(), &scene.simulator, port, &[]).await;
    let url = consent_url(&scene).await;
    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "consent/unregistered-redirect").await;
    let text = browser.page_text().await;
    browser.close().await;
    assert_eq!(title, "Consent failed", "{text}");
    let ours = format!("{}{CALLBACK}", operator.public_url);
    assert!(
        text.contains(&format!("Check that {ours} is registered, exactly, as a Redirect URL")),
        "the page names the redirect URL to register: {text}"
    );
    assert!(scene.token_secret().await.is_none(), "nothing was stored");
    let status = scene.api().get_status(CONNECTION).await.expect("the connection").status;
    assert_eq!(status.and_then(|s| s.sync_state), Some(SyncState::AwaitingConsent));
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn consent_as_the_wrong_user_is_an_identity_mismatch_and_reconsent_fixes_it() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, "admin", "admin", "#allow", "consent/wrong-user").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;

    let status = scene
        .wait_for_condition("IdentityResolved", "False", Reason::IdentityMismatch)
        .await;
    let message = assert_condition(&status, "IdentityResolved", "False", Reason::IdentityMismatch);
    assert!(message.contains("\"admin\"") && message.contains(AGENT), "{message}");
    assert_eq!(status.sync_state, Some(SyncState::Error));
    let admin = scene.simulator.admin();
    assert!(
        admin.records("sys_script", RULE_QUERY).is_empty(),
        "no rule under the wrong identity"
    );
    assert!(
        admin.records("sys_properties", PROPERTY_QUERY).is_empty(),
        "no property either"
    );

    // Re-consent: back to AWAITING_CONSENT, then consent as the service account.
    scene.annotate(RECONSENT, "wrong-user").await;
    let status: ServiceNowConnectionStatus = scene
        .wait_for("AWAITING_CONSENT after the reconsent annotation", |s| {
            s.sync_state == Some(SyncState::AwaitingConsent)
                && s.last_handled_reconsent_at.as_deref() == Some("wrong-user")
        })
        .await;
    assert!(scene.token_secret().await.is_none(), "the old refresh token is gone");
    let url = status.consent_url.expect("a consentUrl again");
    let browser = self::browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "consent/reconsent").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    let status = scene
        .wait_for("READY_TO_SYNC as neo.agent", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_eq!(status.identity.map(|i| i.user_name).as_deref(), Some(AGENT));
    let changed = scene.wait_for_event("IdentityChanged").await;
    let note = changed.message.unwrap_or_default();
    assert!(note.contains("admin") && note.contains(AGENT), "{note}");
    scene.assert_no_secret_leaked().await;
    drop(operator);
}

#[tokio::test]
async fn consent_started_on_one_replica_completes_on_the_other() {
    let scene = Scene::awaiting_consent(serde_json::json!({})).await;
    // Both replicas announce B's address; the browser starts on A and the instance sends it
    // back to B, as a Service in front of two pods may.
    let (port_a, port_b) = (free_port(), free_port());
    let public_url = format!("http://127.0.0.1:{port_b}");
    scene.register_redirect_url(&format!("{public_url}{CALLBACK}"));
    let a = Operator::start_behind(scene.ns.name(), &scene.simulator, port_a, &public_url).await;
    let b = Operator::start_behind(scene.ns.name(), &scene.simulator, port_b, &public_url).await;
    let url = consent_url(&scene).await;
    let on_a = url.replace(&public_url, &format!("http://127.0.0.1:{port_a}"));
    assert_ne!(on_a, url);

    let browser = browser(&scene).await;
    let title = consent_as(&browser, &on_a, AGENT, AGENT, "#allow", "consent/two-replicas").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    assert!(b.logs().contains("consent recorded"), "B completed the consent");
    assert!(!a.logs().contains("consent recorded"), "A only started it");
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn deleting_the_token_secret_goes_back_to_awaiting_consent() {
    let ready = ready_connection(serde_json::json!({})).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ready.client.clone(), ready.ns.name());
    secrets
        .delete(TOKEN_SECRET, &Default::default())
        .await
        .expect("delete the token Secret");
    let status = ready
        .wait_for("AWAITING_CONSENT once the token Secret is gone", |s| {
            s.sync_state == Some(SyncState::AwaitingConsent) && s.consent_url.is_some()
        })
        .await;
    assert_condition(&status, "Authorized", "False", Reason::ConsentRequired);
    assert_eq!(status.token, None, "no token expiry without a token");
    ready.assert_no_secret_leaked().await;
}
