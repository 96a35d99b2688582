//! The headless-browser tooling works end to end: Debian's Chromium, driven through chromedriver,
//! reaches the simulator under its real host name with TLS verification on, logs in on the
//! simulated `/oauth_auth.do`, clicks Allow, and lands on the redirect target with a `code` that
//! the token endpoint accepts. Screenshots of each page are kept (see `tests/support/browser.rs`).
//! Without Chromium the test fails, pointing at `tests/browser/install`.

// The harness is `tests/support/browser.rs` (also `support::browser` for tests that use `mod support;`);
// included alone here so this test needs nothing else of the support module.
#[path = "support/browser.rs"]
mod browser;

use std::{path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use browser::{Browser, BrowserOptions, spki_sha256_base64};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

const HOST: &str = "acme.service-now.com";
const APP: &str = "Neo Agent";
const VERIFIER: &str = "browser-smoke-test-verifier-0123456789-abcdefghijklmnop";
const SCREENSHOTS: &str = "browser_smoke";

/// A plain HTTP listener on loopback standing in for the operator's callback: answers a small page
/// and hands over each request's query.
async fn callback_listener() -> (String, mpsc::UnboundedReceiver<String>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let router = axum::Router::new().route(
        "/oauth/servicenow/callback",
        axum::routing::get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
            let _ = sender.send(query.unwrap_or_default());
            async { axum::response::Html("<h1>Consent received</h1><p id=\"done\">You can close this page.</p>") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port for the callback");
    let address = listener.local_addr().expect("the callback listener's address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}/oauth/servicenow/callback"), receiver)
}

#[tokio::test]
async fn snowsim_consent_page_works_in_headless_chromium() {
    let (callback_url, mut callbacks) = callback_listener().await;
    let server = snowsim::Server::start(snowsim::Config::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start snowsim");
    let admin = server.admin();
    admin
        .edit_oauth_app(APP, |app| app.redirect_urls = vec![callback_url.clone()])
        .expect("the default instance has the Neo Agent application");
    let app = admin.oauth_app(APP).expect("the Neo Agent application");

    let browser = Browser::start(
        BrowserOptions::new()
            .map_host(HOST, server.addr())
            .trust_certificates_pem(server.ca_pem()),
    )
    .await;

    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER));
    let mut authorize = url::Url::parse(&server.base_url(HOST))
        .unwrap()
        .join("/oauth_auth.do")
        .unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &app.client_id)
        .append_pair("redirect_uri", &callback_url)
        .append_pair("state", "xyz")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let pages = browser
        .answer_consent(
            authorize.as_str(),
            HOST,
            "neo.agent",
            "neo.agent",
            "#allow",
            Path::new(SCREENSHOTS),
        )
        .await
        .expect("served under the real host name");
    let consent = pages.consent_text;
    assert!(
        consent.contains(APP) && consent.contains("Allow") && consent.contains("Deny"),
        "the consent page names the application and offers Allow and Deny:\n{consent}"
    );

    let landed = browser
        .wait_for_url("the redirect to the callback", |url| {
            url.as_str().starts_with(&callback_url)
        })
        .await;
    browser.find("#done").await;
    let shot = browser.screenshot(format!("{SCREENSHOTS}/3-callback.png")).await;
    eprintln!("screenshots in {}", shot.parent().unwrap().display());

    let param = |name: &str| {
        landed
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    assert_eq!(
        param("state").as_deref(),
        Some("xyz"),
        "state echoed unchanged in {landed}"
    );
    let code = param("code").filter(|code| !code.is_empty());
    let code = code.unwrap_or_else(|| panic!("no code in {landed}"));
    let received = tokio::time::timeout(Duration::from_secs(5), callbacks.recv())
        .await
        .expect("the callback listener got the request within 5 s")
        .expect("the callback listener is running");
    assert_eq!(
        received,
        landed.query().unwrap_or_default(),
        "the page loaded from the listener"
    );

    // The code is a real one: the token endpoint accepts it with the PKCE verifier.
    let client = server.client_builder().build().expect("a client for snowsim");
    let token = client
        .post(format!("{}/oauth_token.do", server.base_url(HOST)))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", callback_url.as_str()),
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.as_str()),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .expect("POST /oauth_token.do");
    assert_eq!(token.status(), 200, "the code from the browser is accepted once");
    let body: serde_json::Value = token.json().await.expect("a JSON token response");
    assert!(body["refresh_token"].as_str().is_some_and(|token| !token.is_empty()));

    browser.close().await;
}

#[tokio::test]
async fn chromium_refuses_the_simulator_unless_told_to_trust_its_certificate() {
    let server = snowsim::Server::start(snowsim::Config::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start snowsim");
    // The host is mapped, but nothing is trusted: verification must fail before any HTTP request.
    let browser = Browser::start(BrowserOptions::new().map_host(HOST, server.addr())).await;
    let login = format!("{}/login.do", server.base_url(HOST));
    let navigation = browser.client().goto(&login).await;
    let source = browser.client().source().await.unwrap_or_default();
    let refused = match &navigation {
        Err(error) => error.to_string().contains("ERR_CERT_AUTHORITY_INVALID"),
        Ok(()) => source.contains("ERR_CERT_AUTHORITY_INVALID"),
    };
    browser.screenshot(format!("{SCREENSHOTS}/untrusted.png")).await;
    assert!(
        refused,
        "expected a certificate error for {login}, got {navigation:?} and the page:\n{source}"
    );
    assert!(
        server.admin().request_log().is_empty(),
        "no request may reach the simulator over an unverified connection: {:?}",
        server.admin().request_log()
    );
    // Dropped without `close`: the harness kills chromedriver and Chromium.
}

#[test]
fn the_spki_hash_is_the_one_chromium_expects() {
    // rcgen serializes the SubjectPublicKeyInfo itself; the harness finds it inside the certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["acme.service-now.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let expected = base64::engine::general_purpose::STANDARD
        .encode(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)));
    let pem = format!("{}\n{}", certificate.pem(), certificate.pem());
    assert_eq!(spki_sha256_base64(&pem), vec![expected.clone(), expected]);
    assert!(spki_sha256_base64("not a certificate").is_empty());
}
