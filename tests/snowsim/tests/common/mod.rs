//! Shared harness of the conformance tests: an in-process server and a client that reaches
//! `acme.service-now.com` through it over verified TLS.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses some
pub use snowsim::drive::{Decision, password_form, query_param};
use snowsim::{Config, Server};

/// The default instance.
pub const HOST: &str = "acme.service-now.com";

/// The Business Rule script the operator provisions, from the operator's source (one copy).
pub const OPERATOR_RULE_SCRIPT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../src/provision/task_webhook.js"
));

/// A server with the default configuration and a client (no redirects followed).
pub async fn start() -> (Server, reqwest::Client) {
    start_with(Config::default()).await
}

/// A server whose `neo.agent` has the operator's least-privilege setup (it may write Business
/// Rules and the `x_neoagent.*` properties), and a client.
pub async fn start_least_privilege() -> (Server, reqwest::Client) {
    start_with(Config {
        instances: vec![snowsim::InstanceConfig::new(HOST).least_privilege("neo.agent")],
        ..Config::default()
    })
    .await
}

/// A server with `config` and a client.
pub async fn start_with(config: Config) -> (Server, reqwest::Client) {
    let server = Server::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts");
    let client = server.client_builder().build().expect("client builds");
    (server, client)
}

/// Adds `user` (password = user name) with only the role `itil`: reads and writes tickets, not
/// Business Rules or properties.
pub fn add_itil_only(server: &Server, user: &str) {
    server
        .admin()
        .add_user(&snowsim::UserSpec {
            user_name: user.into(),
            password: user.into(),
            first_name: user.into(),
            roles: vec!["itil".into()],
            ..snowsim::UserSpec::default()
        })
        .expect("an itil-only user");
}

/// `https://acme.service-now.com{path}`.
pub fn url(path: &str) -> String {
    format!("https://{HOST}{path}")
}

/// Polls `probe` until it returns `Some` or the deadline passes.
pub async fn poll_until<T, F, Fut>(deadline: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET as `user:password`, returning status and JSON body.
pub async fn get_json(client: &reqwest::Client, user: &str, path: &str) -> (u16, serde_json::Value) {
    status_and_json(client.get(url(path)).basic_auth(user, Some(user))).await
}

/// Sends `request`: its status and JSON body (`null` when the body is not JSON).
async fn status_and_json(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// POST JSON as `user` (password = user name).
pub async fn post_json(
    client: &reqwest::Client,
    user: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    status_and_json(
        client
            .post(url(path))
            .basic_auth(user, Some(user))
            .header("Accept", "application/json")
            .json(&body),
    )
    .await
}

/// `/oauth_auth.do?{authorize_query}` answered by `neo.agent` with `decision` in a fresh session;
/// the final redirect's `Location`.
pub async fn consent(server: &Server, authorize_query: &str, decision: Decision) -> String {
    snowsim::drive::consent(
        server,
        &url(&format!("/oauth_auth.do?{authorize_query}")),
        "neo.agent",
        decision,
    )
    .await
}
