//! Conformance: servicenow-api.md §1 (OAuth 2.0), §6 items 1–5.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use snowsim::{Behaviour, Config, OAuthApp};

const REDIRECT: &str = "http://127.0.0.1:8080/oauth/servicenow/callback";

fn app(server: &snowsim::Server) -> OAuthApp {
    server.admin().oauth_app("Neo Agent").expect("default app")
}

fn authorize_query(app: &OAuthApp, state: &str, challenge: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", &app.client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("state", state);
    if let Some(challenge) = challenge {
        query
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
    }
    query.finish()
}

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn token(client: &reqwest::Client, form: &[(&str, &str)]) -> (u16, Value, String) {
    let response = client
        .post(url("/oauth_token.do"))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
}

/// The `authorization_code` grant's form, with the application's credentials.
fn code_form<'a>(
    app: &'a OAuthApp,
    code: &'a str,
    redirect_uri: &'a str,
    verifier: &'a str,
) -> [(&'a str, &'a str); 6] {
    [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", &app.client_id),
        ("client_secret", &app.client_secret),
        ("code_verifier", verifier),
    ]
}

/// The `refresh_token` grant's form for `refresh`, with the application's credentials.
fn refresh_form<'a>(app: &'a OAuthApp, refresh: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", &app.client_id),
        ("client_secret", &app.client_secret),
    ]
}

/// The `password` grant for `user` (password = user name).
async fn password_grant(client: &reqwest::Client, app: &OAuthApp, user: &str) -> (u16, Value, String) {
    token(client, &password_form(app, user)).await
}

async fn code_for(server: &snowsim::Server, app: &OAuthApp, verifier: &str) -> String {
    let location = consent(
        server,
        &authorize_query(app, "st-1", Some(&challenge(verifier))),
        Decision::Allow,
    )
    .await;
    query_param(&location, "code").expect("code in redirect")
}

async fn exchange(client: &reqwest::Client, app: &OAuthApp, code: &str, verifier: &str) -> (u16, Value, String) {
    token(client, &code_form(app, code, REDIRECT, verifier)).await
}

/// `GET /oauth_auth.do?{authorize_query}` without a session.
async fn authorize_page(client: &reqwest::Client, authorize_query: &str) -> reqwest::Response {
    client
        .get(url(&format!("/oauth_auth.do?{authorize_query}")))
        .send()
        .await
        .unwrap()
}

/// `GET /api/now/ui/user/current_user` with `access` as the Bearer token.
async fn current_user(client: &reqwest::Client, access: &str) -> reqwest::Response {
    client
        .get(url("/api/now/ui/user/current_user"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

const GENERIC_401: &str = "{\"error_description\":\"access_denied\",\"error\":\"server_error\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_2_login_then_allow_redirects_with_code_and_state() {
    let (server, _) = start().await;
    let app = app(&server);
    let location = consent(&server, &authorize_query(&app, "opaque-42", None), Decision::Allow).await;
    assert!(location.starts_with(&format!("{REDIRECT}?code=")), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("opaque-42"));
    let url = url::Url::parse(&location).unwrap();
    let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    assert_eq!(names, vec!["code", "state"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_2_deny_redirects_with_access_denied_and_state() {
    let (server, _) = start().await;
    let app = app(&server);
    let location = consent(&server, &authorize_query(&app, "s", None), Decision::Deny).await;
    assert_eq!(query_param(&location, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&location, "state").as_deref(), Some("s"));
    assert_eq!(query_param(&location, "code"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_2_missing_state_is_refused_with_the_documented_text() {
    let (server, client) = start().await;
    let app = app(&server);
    let query = format!("response_type=code&client_id={}&redirect_uri={REDIRECT}", app.client_id);
    let page = authorize_page(&client, &query).await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Missing State parameter in request."), "{html}");
    assert!(!html.contains("login_form"));
    server
        .admin()
        .set_property("glide.oauth.state.parameter.required", "false");
    let page = authorize_page(&client, &query).await;
    assert!(page.text().await.unwrap().contains("login_form"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_1_unregistered_redirect_falls_back_to_the_first_registered_url_or_is_rejected_by_switch() {
    let (server, client) = start().await;
    let app = app(&server);
    let query = authorize_query(&app, "s", None).replace("127.0.0.1%3A8080", "evil.example");
    let location = consent(&server, &query, Decision::Allow).await;
    assert!(location.starts_with(REDIRECT), "{location}");
    server.admin().set_behaviour(Behaviour {
        reject_unregistered_redirect: true,
        ..Behaviour::default()
    });
    let page = authorize_page(&client, &query).await;
    assert_eq!(page.status(), 400);
    assert!(page.text().await.unwrap().contains("Invalid redirect_uri."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_3_code_exchange_answers_the_exact_shape_with_expires_in_1799() {
    let (server, client) = start().await;
    let app = app(&server);
    let code = code_for(&server, &app, "verifier-verifier-verifier-verifier-verifier").await;
    let (status, body, text) = exchange(&client, &app, &code, "verifier-verifier-verifier-verifier-verifier").await;
    assert_eq!(status, 200, "{text}");
    let object = body.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["access_token", "expires_in", "refresh_token", "scope", "token_type"]
    );
    assert_eq!(body["scope"], "useraccount");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], Value::from(1799));
    assert!(text.starts_with("{\"access_token\":"), "observed member order: {text}");
    let access = body["access_token"].as_str().unwrap();
    assert!(
        access.len() >= 75
            && access
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let me = current_user(&client, access).await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["result"]["user_name"], "neo.agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_3_codes_are_single_use_bound_to_client_and_redirect_and_pkce_verified() {
    let (server, client) = start().await;
    let app = app(&server);
    let verifier = "the-right-verifier-with-enough-entropy-0123456789";
    let code = code_for(&server, &app, verifier).await;
    let (status, _, text) = exchange(&client, &app, &code, "a-wrong-verifier").await;
    assert_eq!((status, text.as_str()), (401, GENERIC_401));
    let code = code_for(&server, &app, verifier).await;
    let wrong_redirect = token(
        &client,
        &code_form(&app, &code, "http://127.0.0.1:9999/other", verifier),
    )
    .await;
    assert_eq!(wrong_redirect.0, 401);
    let code = code_for(&server, &app, verifier).await;
    assert_eq!(exchange(&client, &app, &code, verifier).await.0, 200);
    let (status, _, text) = exchange(&client, &app, &code, verifier).await;
    assert_eq!((status, text.as_str()), (401, GENERIC_401), "second use must fail");
    let other = server
        .admin()
        .add_oauth_app(&snowsim::OAuthAppSpec::new("Other", REDIRECT));
    let code = code_for(&server, &app, verifier).await;
    assert_eq!(exchange(&client, &other, &code, verifier).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_2_authorization_codes_expire() {
    let (server, client) = start().await;
    let app = app(&server);
    let code = code_for(&server, &app, "v-0123456789-0123456789-0123456789-0123").await;
    server.admin().advance_clock(Duration::from_secs(61));
    assert_eq!(
        exchange(&client, &app, &code, "v-0123456789-0123456789-0123456789-0123")
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_3_http_basic_client_auth_is_rejected_by_default_and_accepted_by_switch() {
    let (server, client) = start().await;
    let app = app(&server);
    // The password grant with the client credentials in the Authorization header, not the form.
    let form = &password_form(&app, "neo.agent")[..3];
    let send = || {
        client
            .post(url("/oauth_token.do"))
            .basic_auth(&app.client_id, Some(&app.client_secret))
            .form(form)
            .send()
    };
    let response = send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), GENERIC_401);
    server.admin().set_behaviour(Behaviour {
        accept_basic_client_auth: true,
        ..Behaviour::default()
    });
    assert_eq!(send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_3_json_bodies_and_query_string_parameters_are_refused() {
    let (server, client) = start().await;
    let app = app(&server);
    let json = client
        .post(url("/oauth_token.do"))
        .json(
            &serde_json::json!({"grant_type": "password", "username": "neo.agent", "password": "neo.agent",
            "client_id": app.client_id, "client_secret": app.client_secret}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 401);
    let query = format!(
        "/oauth_token.do?grant_type=password&username=neo.agent&password=neo.agent&client_id={}&client_secret={}",
        app.client_id, app.client_secret
    );
    let in_query = client
        .post(url(&query))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_3_every_token_failure_is_the_generic_401_and_the_cause_goes_to_the_system_log() {
    let (server, client) = start().await;
    let app = app(&server);
    let mut wrong_secret = password_form(&app, "neo.agent");
    wrong_secret[4] = ("client_secret", "wrong");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        refresh_form(&app, "nope").to_vec(),
        wrong_secret.to_vec(),
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", &app.client_id),
            ("client_secret", &app.client_secret),
        ],
        vec![
            ("grant_type", "bogus"),
            ("client_id", &app.client_id),
            ("client_secret", &app.client_secret),
        ],
        vec![],
    ];
    for form in &cases {
        let (status, _, text) = token(&client, form).await;
        assert_eq!((status, text.as_str()), (401, GENERIC_401), "{form:?}");
    }
    let log = server.admin().system_log();
    assert!(
        log.iter()
            .any(|e| e.message.contains("Exception on token flow - invalid_grant")),
        "{log:?}"
    );
    server.admin().set_behaviour(Behaviour {
        rfc_token_errors: true,
        ..Behaviour::default()
    });
    let (status, body, _) = token(&client, &cases[0]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_3_refresh_returns_a_new_access_token_and_the_same_unextended_refresh_token() {
    let (server, client) = start().await;
    let app = app(&server);
    let verifier = "refresh-verifier-0123456789-0123456789-0123456789";
    let code = code_for(&server, &app, verifier).await;
    let (_, first, _) = exchange(&client, &app, &code, verifier).await;
    let refresh = first["refresh_token"].as_str().unwrap().to_string();
    let before = server
        .admin()
        .tokens()
        .into_iter()
        .find(|t| t.token == refresh)
        .unwrap();
    server.admin().advance_clock(Duration::from_secs(600));
    let form = refresh_form(&app, &refresh);
    let (status, second, _) = token(&client, &form).await;
    assert_eq!(status, 200);
    assert_eq!(second["refresh_token"].as_str(), Some(refresh.as_str()));
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(second["expires_in"], Value::from(1799));
    let after = server
        .admin()
        .tokens()
        .into_iter()
        .find(|t| t.token == refresh)
        .unwrap();
    assert_eq!(
        after.expires_ms, before.expires_ms,
        "refresh token expiry must not move"
    );
    server.admin().set_behaviour(Behaviour {
        omit_refresh_token_on_refresh: true,
        ..Behaviour::default()
    });
    let (_, third, _) = token(&client, &form).await;
    assert!(third.get("refresh_token").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_1_lifespans_expire_tokens_on_the_simulated_clock() {
    let (server, client) = start().await;
    let app = app(&server);
    let verifier = "lifespan-verifier-0123456789-0123456789-0123456789";
    let code = code_for(&server, &app, verifier).await;
    let (_, tokens, _) = exchange(&client, &app, &code, verifier).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(current_user(&client, access).await.status(), 200);
    server.admin().advance_clock(Duration::from_secs(1800));
    let expired = current_user(&client, access).await;
    assert_eq!(expired.status(), 401);
    assert_eq!(expired.headers()["www-authenticate"], "BASIC realm=\"Service-now\"");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let form = refresh_form(&app, refresh);
    assert_eq!(token(&client, &form).await.0, 200);
    server.admin().advance_clock(Duration::from_secs(8_640_000));
    assert_eq!(token(&client, &form).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_4_revocation_needs_no_authentication_and_kills_the_token() {
    let (server, client) = start().await;
    let app = app(&server);
    let (_, tokens, _) = password_grant(&client, &app, "neo.agent").await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let revoked = client
        .post(url(&format!("/oauth_revoke_token.do?token={refresh}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let me = current_user(&client, access).await;
    assert_eq!(me.status(), 401, "revoking the refresh token revokes its access tokens");
    let form = refresh_form(&app, refresh);
    assert_eq!(token(&client, &form).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_4_bearer_header_query_parameter_and_basic_auth_all_authenticate() {
    let (server, client) = start().await;
    let app = app(&server);
    let (_, tokens, _) = password_grant(&client, &app, "neo.agent").await;
    let access = tokens["access_token"].as_str().unwrap();
    let by_query = client
        .get(url(&format!("/api/now/table/incident?access_token={access}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
    let (status, _) = get_json(&client, "neo.agent", "/api/now/table/incident").await;
    assert_eq!(status, 200);
    let wrong = client
        .get(url("/api/now/table/incident"))
        .basic_auth("neo.agent", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}, "status": "failure"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_2_public_clients_must_use_pkce_and_need_no_secret() {
    let (server, client) = start().await;
    let public = server.admin().add_oauth_app(&snowsim::OAuthAppSpec {
        public_client: true,
        ..snowsim::OAuthAppSpec::new("Public", REDIRECT)
    });
    let page = authorize_page(&client, &authorize_query(&public, "s", None)).await;
    assert_eq!(page.status(), 400);
    let verifier = "public-verifier-0123456789-0123456789-0123456789";
    let location = consent(
        &server,
        &authorize_query(&public, "s", Some(&challenge(verifier))),
        Decision::Allow,
    )
    .await;
    let code = query_param(&location, "code").unwrap();
    let (status, body, _) = token(
        &client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &public.client_id),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_1_inactive_applications_issue_nothing() {
    let mut config = Config::default();
    config.instances[0].oauth_apps[0].active = false;
    let (server, client) = start_with(config).await;
    let app = app(&server);
    let page = authorize_page(&client, &authorize_query(&app, "s", None)).await;
    assert_eq!(page.status(), 400);
    let (status, _, _) = password_grant(&client, &app, "neo.agent").await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_refresh_token_refreshes_on_its_own_instance_only() {
    let (server, _) = start().await;
    let other = "c00002.service-now.com";
    let admin = server.add_instance(&snowsim::InstanceConfig::new(other));
    let refresh = admin.mint_refresh_token("Neo Agent", "neo.agent").expect("mint");
    assert!(admin.request_log().is_empty(), "minting is no request to the instance");
    let app = admin.oauth_app("Neo Agent").expect("the app of the added instance");
    let client = server.client_builder().build().expect("client builds");
    let on = |host: &str| format!("https://{host}/oauth_token.do");
    let (status, answer) = {
        let response = client
            .post(on(other))
            .form(&refresh_form(&app, &refresh))
            .send()
            .await
            .expect("token request");
        (
            response.status().as_u16(),
            response.json::<Value>().await.expect("JSON"),
        )
    };
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["refresh_token"].as_str(), Some(refresh.as_str()));
    let elsewhere = client
        .post(on(HOST))
        .form(&refresh_form(&self::app(&server), &refresh))
        .send()
        .await
        .expect("token request");
    assert_eq!(
        elsewhere.status().as_u16(),
        401,
        "another instance knows nothing of the token"
    );
    assert_eq!(
        admin.mint_refresh_token("Neo Agent", "nobody"),
        Err(snowsim::AdminError::UnknownUser("nobody".into()))
    );
    assert_eq!(server.hosts(), vec![HOST.to_owned(), other.to_owned()]);
}
