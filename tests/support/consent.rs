//! A connection awaiting consent and a person consenting in headless Chromium: the steps the
//! consent tests (`tests/consent.rs`) and the public listener's burst test
//! (`tests/public_burst.rs`) share.

use std::path::Path;

use servicenow_operator::api::SyncState;

use super::{
    browser::{Browser, BrowserOptions},
    instance::HOST,
    operator::{Operator, free_port},
    scene::Scene,
};

/// The operator's redirect (callback) path.
pub const CALLBACK: &str = "/oauth/servicenow/callback";

/// A scene awaiting consent (`extra_spec` merged into the connection's spec), with the operator
/// (given `flags` on top of the harness's) listening on a port whose callback URL is the OAuth
/// application's registered Redirect URL.
pub async fn awaiting_consent(extra_spec: serde_json::Value, flags: &[&str]) -> (Scene, Operator) {
    let scene = Scene::awaiting_consent(extra_spec).await;
    let port = free_port();
    scene.register_redirect_url(&format!("http://127.0.0.1:{port}{CALLBACK}"));
    let operator = Operator::start_with(scene.ns.name(), &scene.simulator, port, flags).await;
    (scene, operator)
}

/// Waits until the connection asks for consent and returns its `status.consentUrl`.
pub async fn consent_url(scene: &Scene) -> String {
    let status = scene
        .wait_for("AWAITING_CONSENT with a consentUrl", |s| {
            s.sync_state == Some(SyncState::AwaitingConsent) && s.consent_url.is_some()
        })
        .await;
    status.consent_url.expect("a consentUrl")
}

/// Waits until the status carries a consent URL other than `old`.
pub async fn new_consent_url(scene: &Scene, old: &str) -> String {
    scene
        .wait_for("a new consentUrl", |s| {
            s.consent_url.as_deref().is_some_and(|url| url != old)
        })
        .await
        .consent_url
        .expect("a consentUrl")
}

/// The requests the scene's instance answered on `path`.
pub fn calls_to(scene: &Scene, path: &str) -> usize {
    scene
        .simulator
        .admin()
        .request_log()
        .iter()
        .filter(|entry| entry.path == path)
        .count()
}

/// A headless Chromium that reaches the scene's instance under its real host name.
pub async fn browser(scene: &Scene) -> Browser {
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
pub async fn consent_as(browser: &Browser, url: &str, user: &str, password: &str, button: &str, shots: &str) -> String {
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
