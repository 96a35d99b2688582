//! Conformance: who can log in to give OAuth consent (servicenow-api.md §7 "Who can consent"):
//! a "Web service access only" user cannot log in to the UI but keeps using the REST API, and
//! with `require_mfa` the login asks for an MFA code before the consent page.

mod common;

use common::*;
use serde_json::Value;
use snowsim::UserSpec;

/// The session cookie the login sets.
const SESSION: &str = "JSESSIONID=";

/// The query of an authorization request of the seeded application.
fn authorize_query(server: &snowsim::Server) -> String {
    let app = server.admin().oauth_app("Neo Agent").expect("the seeded app");
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &app.client_id)
        .append_pair("state", "s1")
        .finish()
}

/// Opens the authorization page without a session and submits its login form as `user` with
/// `password`; the answer of `/login.do`.
async fn log_in(client: &reqwest::Client, server: &snowsim::Server, user: &str, password: &str) -> reqwest::Response {
    let page = client
        .get(url(&format!("/oauth_auth.do?{}", authorize_query(server))))
        .send()
        .await
        .expect("the authorize page");
    let html = page.text().await.expect("the login page");
    submit(
        client,
        &html,
        "login_form",
        &[("user_name", user), ("user_password", password)],
    )
    .await
}

/// Submits the form `form_id` of `html` (its hidden fields and `fields`) to its action.
async fn submit(client: &reqwest::Client, html: &str, form_id: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form = snowsim::drive::hidden_fields(html, form_id);
    form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let start = html.find(&format!("id=\"{form_id}\"")).expect("the form");
    let action = html[start..]
        .split("action=\"")
        .nth(1)
        .and_then(|a| a.split('"').next())
        .expect("its action");
    client
        .post(url(action))
        .form(&form)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{action}: {error}"))
}

/// The `JSESSIONID=…` pair `response` sets, if any.
fn session_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(SESSION))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

/// Submits the MFA page's form with `code`.
async fn submit_code(client: &reqwest::Client, mfa_page: &str, code: &str) -> reqwest::Response {
    submit(client, mfa_page, "mfa_form", &[("mfa_code", code)]).await
}

#[tokio::test]
async fn a_web_service_access_only_user_cannot_log_in_but_keeps_the_rest_api() {
    let (server, client) = start().await;
    server
        .admin()
        .add_user(&UserSpec {
            user_name: "machine".into(),
            password: "machine".into(),
            roles: vec!["itil".into()],
            web_service_access_only: true,
            ..UserSpec::default()
        })
        .unwrap();
    let sys_id = server.admin().user_sys_id("machine").unwrap();
    assert_eq!(
        server.admin().record("sys_user", &sys_id).unwrap()["web_service_access_only"],
        "true"
    );

    let refused = log_in(&client, &server, "machine", "machine").await;
    assert_eq!(refused.status(), 200);
    assert_eq!(session_of(&refused), None, "no session for a web-service-only user");
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("id=\"login_error\">User name or password invalid<"),
        "{page}"
    );
    assert!(!page.contains("consent_form"), "{page}");

    let (status, _) = get_json(&client, "machine", "/api/now/table/incident").await;
    assert_eq!(status, 200, "Basic auth keeps working");
    let app = server.admin().oauth_app("Neo Agent").unwrap();
    let grant = snowsim::drive::password_grant(&server, HOST, &app, "machine").await;
    let access = grant["access_token"].as_str().expect("an access token");
    let bearer = client
        .get(url("/api/now/table/incident"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200, "OAuth tokens keep working");

    let accepted = log_in(&client, &server, "neo.agent", "neo.agent").await;
    assert_eq!(accepted.status(), 302, "an interactive user still logs in");
    let session = session_of(&accepted).expect("a session");
    let back = accepted.headers()["location"].to_str().unwrap().to_string();
    let consent_page = |session: String| {
        let request = client.get(url(&back)).header("cookie", session);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert!(consent_page(session.clone()).await.contains("id=\"consent_form\""));
    let agent = server.admin().user_sys_id("neo.agent").unwrap();
    server
        .admin()
        .update("sys_user", &agent, [("web_service_access_only", "true")])
        .await
        .unwrap();
    let page = consent_page(session).await;
    assert!(
        page.contains("id=\"login_form\"") && !page.contains("consent_form"),
        "a session of a user made web-service-only no longer consents: {page}"
    );
}

#[tokio::test]
async fn with_require_mfa_the_login_asks_for_the_code_before_the_consent_page() {
    let (server, client) = start().await;
    let mut behaviour = server.admin().behaviour();
    behaviour.require_mfa = true;
    server.admin().set_behaviour(behaviour);

    let wrong_password = log_in(&client, &server, "neo.agent", "nope").await;
    assert!(
        !wrong_password.text().await.unwrap().contains("mfa_form"),
        "no MFA step before the password"
    );

    let asked = log_in(&client, &server, "neo.agent", "neo.agent").await;
    assert_eq!(asked.status(), 200);
    assert_eq!(session_of(&asked), None, "no session before the code");
    let mfa_page = asked.text().await.unwrap();
    assert!(mfa_page.contains("id=\"mfa_code\""), "{mfa_page}");

    let code = server.admin().mfa_code("neo.agent").unwrap();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    let over_http: Value = client
        .get(url("/snowsim/mfa/neo.agent"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http["code"], code.as_str());

    let wrong = if code == "000000" { "000001" } else { "000000" };
    let again = submit_code(&client, &mfa_page, wrong).await;
    assert_eq!(again.status(), 200);
    assert_eq!(session_of(&again), None);
    let again = again.text().await.unwrap();
    assert!(again.contains("id=\"mfa_error\""), "{again}");

    let passed = submit_code(&client, &again, &code).await;
    assert_eq!(passed.status(), 302);
    let session = session_of(&passed).expect("a session once the code is right");
    let back = passed.headers()["location"].to_str().unwrap().to_string();
    assert!(back.starts_with("/oauth_auth.do?"), "{back}");
    let consent = client
        .get(url(&back))
        .header("cookie", session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(consent.contains("id=\"consent_form\""), "{consent}");

    let replayed = submit_code(&client, &again, &code).await;
    assert_eq!(
        session_of(&replayed),
        None,
        "a used code and login do not start a second session"
    );
    assert!(replayed.text().await.unwrap().contains("id=\"login_form\""));
    assert_ne!(
        server.admin().mfa_code("neo.agent").unwrap(),
        "",
        "a fresh code after use"
    );
}
