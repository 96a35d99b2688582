//! Who can give consent on a real instance (servicenow-api.md §7 "Who can consent"), end to end in
//! headless Chromium: an instance that demands MFA at login (Yokohama on) still leads to a stored
//! token and `READY_TO_SYNC`, and an account marked "Web service access only" cannot log in to
//! the instance's UI, so cannot consent — the connection stays `AWAITING_CONSENT` with nothing
//! stored.

mod support;

use std::path::Path;

use servicenow_operator::api::SyncState;
use support::{
    browser::LoginOutcome,
    consent::{CALLBACK, awaiting_consent, browser, calls_to, consent_url},
    instance::{AGENT, HOST},
    scene::CONNECTION,
};

#[tokio::test]
async fn consent_through_an_mfa_step_stores_the_token_and_reaches_ready_to_sync() {
    let (scene, operator) = awaiting_consent(serde_json::json!({}), &[]).await;
    let admin = scene.simulator.admin();
    let mut behaviour = admin.behaviour();
    behaviour.require_mfa = true;
    admin.set_behaviour(behaviour);
    let url = consent_url(&scene).await;

    let browser = browser(&scene).await;
    let pages = browser
        .answer_consent(&url, HOST, AGENT, AGENT, "#allow", Path::new("consent_login/mfa"))
        .await
        .unwrap_or_else(|error| panic!("not sent to the instance: {error}"));
    assert!(pages.mfa_shot.is_some(), "the instance asked for an MFA code");
    assert_eq!(
        calls_to(&scene, "/validate_multifactor_auth_code.do"),
        1,
        "one code, the right one"
    );
    browser
        .wait_for_url("the operator's callback", |url| url.path() == CALLBACK)
        .await;
    let title = browser.find("#title").await.text().await.expect("the page's title");
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.screenshot("consent_login/mfa/3-result.png").await;
    browser.close().await;

    let status = scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    let identity = status.identity.expect("an identity");
    assert_eq!(identity.user_name, AGENT);
    assert!(scene.token_secret().await.is_some(), "the token is stored");
    scene.assert_no_secret_leaked().await;
    drop(operator);
}

#[tokio::test]
async fn a_web_service_only_account_cannot_consent_and_nothing_is_stored() {
    let (scene, operator) = awaiting_consent(serde_json::json!({}), &[]).await;
    let admin = scene.simulator.admin();
    admin
        .add_user(&snowsim::UserSpec {
            user_name: "machine.agent".into(),
            password: "machine.agent".into(),
            roles: vec!["itil".into()],
            web_service_access_only: true,
            ..snowsim::UserSpec::default()
        })
        .expect("a web-service-only user");
    let url = consent_url(&scene).await;

    let browser = browser(&scene).await;
    let signed = browser
        .sign_in(
            &url,
            HOST,
            "machine.agent",
            "machine.agent",
            Path::new("consent_login/web-service-only"),
        )
        .await
        .unwrap_or_else(|error| panic!("not sent to the instance: {error}"));
    assert_eq!(
        signed.outcome,
        LoginOutcome::Refused("User name or password invalid".into()),
        "{}",
        browser.page_text().await
    );
    assert_eq!(
        browser.current_url().await.host_str(),
        Some(HOST),
        "the browser stays on the instance"
    );
    browser.screenshot("consent_login/web-service-only/2-refused.png").await;
    browser.close().await;

    let status = scene.api().get_status(CONNECTION).await.expect("the connection").status;
    let status = status.expect("a status");
    assert_eq!(status.sync_state, Some(SyncState::AwaitingConsent));
    assert!(status.consent_url.is_some(), "the consentUrl stays for another account");
    assert!(scene.token_secret().await.is_none(), "nothing was stored");
    assert_eq!(
        calls_to(&scene, "/oauth_token.do"),
        0,
        "no code was issued or exchanged"
    );
    let machine = admin.user_sys_id("machine.agent").expect("its sys_id");
    assert!(
        admin.tokens().iter().all(|t| t.user_sys_id != machine),
        "no token for the web-service-only account"
    );
    scene.assert_no_secret_leaked().await;
    drop(operator);
}
