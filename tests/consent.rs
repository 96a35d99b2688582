//! The consent flow end to end: the operator's `status.consentUrl`, opened in headless Chromium,
//! through snowsim's login and consent pages, back to the operator's callback, to a stored
//! refresh token and `READY_TO_SYNC`; and every way it can go wrong — a tampered, expired or
//! replayed state, Deny, an unregistered redirect URL, the wrong user (refused, revoked), a
//! browser that did not start the flow, a `/start` without a valid unused ticket (one generic
//! page, nothing written), an outsider trying to re-consent a READY connection — with nothing
//! stored; and a re-consent revoking the refresh token it replaces.
//! Screenshots of each page land in the artifacts directory (`tests/support/browser.rs`).

mod support;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, ResourceExt};
use reqwest::{StatusCode, redirect::Policy};
use servicenow_operator::{
    api::{RECONSENT, ServiceNowConnectionStatus, SyncState, conditions::Reason},
    http::consent_state,
    secrets::STATE_KEY_KEY,
    ticket,
};
use support::{
    audit::AuditLog,
    conditions::assert_condition,
    consent::{CALLBACK, browser, calls_to, consent_as, consent_url, new_consent_url},
    instance::{AGENT, HOST},
    operator::{Operator, free_port},
    scene::{CONNECTION, RULE_QUERY, Scene, TOKEN_SECRET, ready_connection},
};

/// The consent start path.
const START: &str = "/oauth/servicenow/start";
/// The title of the one page `/start` shows for anything but a valid, unused ticket.
const INVALID_LINK: &str = "This consent link is not valid";
/// The browser-binding cookie over the tests' http public URL.
const COOKIE: &str = "snc-consent";

/// A scene awaiting consent, with the operator listening on a port whose callback URL is the
/// OAuth application's registered Redirect URL.
async fn awaiting_consent(extra_spec: serde_json::Value) -> (Scene, Operator) {
    support::consent::awaiting_consent(extra_spec, &[]).await
}

/// A client that does not follow redirects.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("an HTTP client")
}

/// The ticket in a consent URL.
fn ticket_of(url: &str) -> String {
    url::Url::parse(url)
        .expect("a URL")
        .query_pairs()
        .find(|(key, _)| key == "ticket")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| panic!("no ticket in {url}"))
}

/// The operator's consent-state key (which also signs tickets).
async fn state_key(scene: &Scene) -> Vec<u8> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(scene.client.clone(), scene.ns.name());
    secrets
        .get("servicenow-operator-consent-key")
        .await
        .expect("the operator's state key Secret")
        .data
        .and_then(|mut data| data.remove(STATE_KEY_KEY))
        .expect("a state key")
        .0
}

/// Asserts the public listener's security headers on `response`.
fn assert_security_headers(response: &reqwest::Response) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("cache-control"), "no-store", "{}", response.url());
    assert!(
        header("content-security-policy").contains("frame-ancestors 'none'")
            && header("content-security-policy").contains("default-src 'none'"),
        "{}",
        response.url()
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
}

/// What an anonymous caller sees: the generic page, with the security headers, naming nothing.
async fn assert_generic_page(response: reqwest::Response, scene: &Scene, what: &str) -> String {
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "{what}");
    assert_security_headers(&response);
    assert!(response.headers().get("set-cookie").is_none(), "{what}: no cookie");
    let page = response.text().await.expect("the page");
    assert!(page.contains(INVALID_LINK), "{what}: {page}");
    let uid = scene
        .api()
        .get(CONNECTION)
        .await
        .expect("the connection")
        .uid()
        .unwrap_or_default();
    for secret in [HOST, scene.ns.name(), scene.seed.client_id.as_str(), uid.as_str()] {
        assert!(!page.contains(secret), "{what}: the page shows {secret:?}: {page}");
    }
    page
}

/// The connection's resourceVersion, annotations and status, to prove nothing wrote to it.
async fn snapshot(scene: &Scene) -> (Option<String>, String, String) {
    let connection = scene.api().get(CONNECTION).await.expect("the connection");
    (
        connection.resource_version(),
        serde_json::to_string(connection.annotations()).unwrap(),
        serde_json::to_string(&connection.status).unwrap(),
    )
}

#[tokio::test]
async fn consent_in_a_browser_stores_the_token_and_reaches_ready_to_sync() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    assert!(
        url.starts_with(&format!("{}/oauth/servicenow/start?ticket=t1.", operator.public_url)),
        "{url}"
    );
    let issued = scene
        .api()
        .get_status(CONNECTION)
        .await
        .expect("the connection")
        .status
        .unwrap_or_default();
    let kept = issued.consent_ticket.expect("status.consentTicket");
    assert_eq!(
        kept.hash,
        ticket::hash(&ticket_of(&url)),
        "the status keeps the ticket's hash"
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

    // The same answer again, in the same browser: refused as a replay; from another client (no
    // cookie): refused as foreign. Nothing changes.
    // Counted: the code exchanges on the instance, the writes through the API server (its audit
    // log: an identical write would leave the resourceVersion as it was). Once this request is
    // echoed, the reconciles of the consent are over, and nothing else writes in the namespace
    // but the Lease.
    scene.reconcile_now("before-the-replay").await;
    let audit = AuditLog::of(&scene.client, scene.ns.name()).await;
    let mark = audit.mark().await;
    let exchanges = calls_to(&scene, "/oauth_token.do");
    browser.goto(callback.as_str()).await;
    let text = browser.page_text().await;
    assert!(text.contains("already used"), "{text}");
    browser.close().await;
    let replay = http().get(callback.as_str()).send().await.expect("replay the callback");
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_security_headers(&replay);
    let page = replay.text().await.expect("the page");
    assert!(page.contains("did not start this consent"), "{page}");
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
    assert!(!operator.logs().contains(&ticket_of(&url)), "the ticket is not logged");

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
    assert_security_headers(&start);
    let cookie = start
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .expect("a binding cookie")
        .to_owned();
    assert!(
        cookie.starts_with(&format!("{COOKIE}="))
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().expect("name=value").to_owned();
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
    let key = state_key(&scene).await;
    let uid = scene.api().get(CONNECTION).await.expect("the connection").uid();
    let expired = consent_state::mint(
        &key,
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
    // The real state, but from a client without the cookie /start set, or with another one.
    for (what, cookie, says) in [
        ("no cookie", None, "cookie is missing"),
        (
            "another cookie",
            Some(format!("{COOKIE}=AAAA")),
            "belongs to another one",
        ),
    ] {
        let mut request = http
            .get(format!("{}{CALLBACK}", operator.public_url))
            .query(&[("code", "made-up-code"), ("state", state.as_str())]);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let answer = request.send().await.expect("the callback");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{what}");
        let page = answer.text().await.expect("the page");
        assert!(page.contains(says), "{what}: {page}");
    }
    // With the cookie, a made-up code reaches the instance, which refuses it; nothing stored.
    let answer = http
        .get(format!("{}{CALLBACK}", operator.public_url))
        .query(&[("code", "made-up-code"), ("state", state.as_str())])
        .header("cookie", &cookie)
        .send()
        .await
        .expect("the callback");
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls_to(&scene, "/oauth_token.do"), 1, "one exchange, refused");
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
    // Started under the same spelling, so the browser holds the start cookie for that host.
    let url = consent_url(&scene)
        .await
        .replace("http://127.0.0.1:", "http://localhost:");
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
async fn consent_as_the_wrong_user_stores_nothing_revokes_the_token_and_says_why() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, "admin", "admin", "#allow", "consent/wrong-user").await;
    let text = browser.page_text().await;
    browser.close().await;
    assert_eq!(title, "Consent refused", "{text}");
    assert!(
        text.contains("\"admin\"") && text.contains(&format!("\"{AGENT}\"")) && text.contains("Nothing was stored"),
        "the page says who signed in and who must: {text}"
    );
    assert!(scene.token_secret().await.is_none(), "nothing was stored");
    let admin = scene.simulator.admin();
    let admin_id = admin.user_sys_id("admin").expect("admin's sys_id");
    let refresh: Vec<_> = admin
        .tokens()
        .into_iter()
        .filter(|t| t.user_sys_id == admin_id && t.kind == snowsim::oauth::TokenKind::Refresh)
        .collect();
    assert_eq!(refresh.len(), 1, "one refresh token was issued to admin");
    assert!(
        refresh[0].revoked,
        "the refused refresh token is revoked on the instance"
    );
    assert!(
        admin
            .request_log()
            .iter()
            .any(|entry| entry.path == "/oauth_revoke_token.do" && entry.query.contains(&refresh[0].token)),
        "snowsim saw the revocation"
    );
    assert!(admin.records("sys_script", RULE_QUERY).is_empty(), "no rule");

    // The ticket is spent; the status offers a new one, and the right account succeeds.
    let status = scene
        .api()
        .get_status(CONNECTION)
        .await
        .expect("the connection")
        .status
        .unwrap_or_default();
    assert_eq!(status.identity, None, "no identity was recorded");
    let url = new_consent_url(&scene, &url).await;
    let browser = self::browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "consent/right-user").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    let status = scene
        .wait_for("READY_TO_SYNC as neo.agent", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    assert_eq!(status.identity.map(|i| i.user_name).as_deref(), Some(AGENT));
    scene.assert_no_secret_leaked().await;
    drop(operator);
}

#[tokio::test]
async fn a_re_consent_revokes_the_refresh_token_it_replaces() {
    let ready = ready_connection(serde_json::json!({})).await;
    ready.register_redirect_url(&format!("{}{CALLBACK}", ready.operator.public_url));
    let old = ready.seed.refresh_token.clone();
    ready.annotate(RECONSENT, "rotate").await;
    let status: ServiceNowConnectionStatus = ready
        .wait_for("AWAITING_CONSENT after the reconsent annotation", |s| {
            s.sync_state == Some(SyncState::AwaitingConsent)
                && s.last_handled_reconsent_at.as_deref() == Some("rotate")
                && s.consent_url.is_some()
        })
        .await;
    let admin = ready.simulator.admin();
    assert!(
        admin
            .request_log()
            .iter()
            .any(|entry| entry.path == "/oauth_revoke_token.do" && entry.query.contains(&old)),
        "snowsim's request log shows the replaced refresh token revoked"
    );
    assert!(
        admin.tokens().iter().any(|t| t.token == old && t.revoked),
        "the replaced refresh token no longer works"
    );
    let browser = browser(&ready).await;
    let url = status.consent_url.expect("a consentUrl");
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "consent/re-consent").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    ready
        .wait_for("READY_TO_SYNC after the re-consent", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_ready_connection_cannot_be_re_consented_from_outside_the_cluster() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "consent/outsider-first").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    let status = scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    assert_eq!((status.consent_url, status.consent_ticket), (None, None));
    let token = scene.token_secret().await.expect("the token Secret");
    let before = snapshot(&scene).await;
    let authorizations = calls_to(&scene, "/oauth_auth.do");

    // An employee of the instance, without cluster access, tries every link they could know of:
    // the used consentUrl, the old ?connection= form, a forged ticket, in a real browser.
    let forged = ticket::issue(
        b"not the operator's key, same size",
        &format!("{}/{CONNECTION}", scene.ns.name()),
        [9; ticket::RANDOM_LEN],
        Timestamp::now(),
    )
    .ticket;
    let outsider = self::browser(&scene).await;
    for (what, link) in [
        ("the used consentUrl", url.clone()),
        (
            "the old connection link",
            format!(
                "{}{START}?connection={}%2F{CONNECTION}",
                operator.public_url,
                scene.ns.name()
            ),
        ),
        (
            "a forged ticket",
            format!("{}{START}?ticket={forged}", operator.public_url),
        ),
    ] {
        outsider.goto(&link).await;
        let title = outsider.find("#title").await.text().await.expect("a title");
        assert_eq!(title, INVALID_LINK, "{what}");
        assert_eq!(
            outsider.current_url().await.host_str(),
            Some("127.0.0.1"),
            "{what}: stays on the operator"
        );
    }
    outsider.screenshot("consent/outsider-refused.png").await;
    outsider.close().await;

    assert_eq!(
        calls_to(&scene, "/oauth_auth.do"),
        authorizations,
        "never sent to the instance"
    );
    assert_eq!(snapshot(&scene).await, before, "the connection was not written");
    let status = scene.reconcile_now("after-the-outsider").await;
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync));
    assert_eq!(
        status.identity.map(|i| i.user_name).as_deref(),
        Some(AGENT),
        "the original identity keeps working"
    );
    assert_eq!(
        scene.token_secret().await.expect("the token Secret").resource_version(),
        token.resource_version(),
        "no token was stored"
    );
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn start_without_a_valid_unused_ticket_shows_one_generic_page_and_writes_nothing() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    let before = snapshot(&scene).await;
    let http = http();
    let key = state_key(&scene).await;
    let now = Timestamp::now();
    let here = format!("{}/{CONNECTION}", scene.ns.name());
    let real = ticket_of(&url);
    let expired = ticket::issue(
        &key,
        &here,
        [1; ticket::RANDOM_LEN],
        now - SignedDuration::from_hours(2),
    )
    .ticket;
    let other_connection = ticket::issue(
        &key,
        &format!("{}/nobody", scene.ns.name()),
        [2; ticket::RANDOM_LEN],
        now,
    )
    .ticket;
    let not_in_status = ticket::issue(&key, &here, [3; ticket::RANDOM_LEN], now).ticket;
    let start = format!("{}{START}", operator.public_url);
    let mut pages = Vec::new();
    for (what, query) in [
        ("no ticket", String::new()),
        (
            "the old connection form",
            format!("?connection={}%2F{CONNECTION}", scene.ns.name()),
        ),
        ("garbage", "?ticket=garbage".to_owned()),
        ("a truncated ticket", format!("?ticket={}", &real[..real.len() - 3])),
        ("an expired ticket", format!("?ticket={expired}")),
        (
            "a ticket for a connection that does not exist",
            format!("?ticket={other_connection}"),
        ),
        (
            "a signed ticket the status does not hold",
            format!("?ticket={not_in_status}"),
        ),
    ] {
        let response = http.get(format!("{start}{query}")).send().await.expect("start");
        pages.push(assert_generic_page(response, &scene, what).await);
    }
    assert!(pages.windows(2).all(|w| w[0] == w[1]), "one page for every refusal");
    assert_eq!(
        snapshot(&scene).await,
        before,
        "no anonymous request wrote the connection"
    );
    assert_eq!(calls_to(&scene, "/oauth_token.do"), 0);

    // Other paths of the public listener carry the headers too.
    for response in [
        http.get(format!("{}/nowhere", operator.public_url))
            .send()
            .await
            .expect("a 404"),
        http.post(format!("{}/callback/servicenow", operator.public_url))
            .send()
            .await
            .expect("a webhook without token"),
        http.get(format!("{}{CALLBACK}", operator.public_url))
            .send()
            .await
            .expect("a bare callback"),
    ] {
        assert_security_headers(&response);
    }

    // The real ticket works once: the status then offers a new one, and the used one is refused
    // without a write.
    let first = http.get(&url).send().await.expect("start");
    assert_eq!(first.status(), StatusCode::FOUND);
    new_consent_url(&scene, &url).await;
    let settled = snapshot(&scene).await;
    let again = http.get(&url).send().await.expect("start again");
    assert_generic_page(again, &scene, "a used ticket").await;
    assert_eq!(snapshot(&scene).await, settled, "a used ticket wrote nothing");
    let logs = operator.logs();
    assert!(
        !logs.contains(&real) && !logs.contains(&not_in_status),
        "no ticket in the logs"
    );
    scene.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_callback_in_a_browser_that_did_not_start_the_consent_is_refused() {
    let (scene, operator) = awaiting_consent(serde_json::json!({})).await;
    let url = consent_url(&scene).await;
    // An attacker starts the flow (the cookie goes to them) and gets a victim's browser to finish it.
    let start = http().get(&url).send().await.expect("start");
    assert_eq!(start.status(), StatusCode::FOUND);
    let authorize = start
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("a Location")
        .to_owned();
    let victim = browser(&scene).await;
    let title = consent_as(&victim, &authorize, AGENT, AGENT, "#allow", "consent/no-cookie").await;
    let text = victim.page_text().await;
    victim.close().await;
    assert_eq!(title, "Consent failed", "{text}");
    assert!(text.contains("did not start this consent"), "{text}");
    assert_eq!(calls_to(&scene, "/oauth_token.do"), 0, "the code was not exchanged");
    assert!(scene.token_secret().await.is_none(), "nothing was stored");

    // The person with the (new) consentUrl still connects.
    let url = new_consent_url(&scene, &url).await;
    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "consent/after-no-cookie").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
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
