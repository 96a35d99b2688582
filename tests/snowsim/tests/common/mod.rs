//! Shared harness of the conformance tests: an in-process server and a client that reaches
//! `acme.service-now.com` through it over verified TLS.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use snowsim::{Config, Server};

/// The default instance.
pub const HOST: &str = "acme.service-now.com";

/// A server with the default configuration and a client (no redirects followed).
pub async fn start() -> (Server, reqwest::Client) {
    start_with(Config::default()).await
}

/// A server with `config` and a client.
pub async fn start_with(config: Config) -> (Server, reqwest::Client) {
    let server = Server::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts");
    let client = server.client_builder().build().expect("client builds");
    (server, client)
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
    let response = client
        .get(url(path))
        .basic_auth(user, Some(user))
        .send()
        .await
        .expect("request");
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
    let response = client
        .post(url(path))
        .basic_auth(user, Some(user))
        .header("Accept", "application/json")
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// A client with a cookie jar, for the browser-like consent flow.
pub fn browser(server: &Server) -> reqwest::Client {
    server
        .client_builder()
        .cookie_store(true)
        .build()
        .expect("client builds")
}

/// The hidden inputs of the first form with `id` in `html`, HTML entities decoded.
pub fn hidden_fields(html: &str, form_id: &str) -> Vec<(String, String)> {
    let start = html.find(&format!("id=\"{form_id}\"")).expect("form present");
    let form = &html[start..html[start..].find("</form>").map_or(html.len(), |e| start + e)];
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = tag[at..].find('"')? + at;
        Some(unescape(&tag[at..end]))
    };
    form.split("<input")
        .skip(1)
        .filter_map(|tag| {
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            if !tag.contains("type=\"hidden\"") {
                return None;
            }
            Some((attribute(tag, "name")?, attribute(tag, "value")?))
        })
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Drives `oauth_auth.do` like a person: opens `authorize_query`, logs in as `user` (password =
/// user name), presses `button` (`allow` or `deny`) and returns the final redirect's `Location`.
pub async fn consent(client: &reqwest::Client, authorize_query: &str, user: &str, button: &str) -> String {
    let page = client
        .get(url(&format!("/oauth_auth.do?{authorize_query}")))
        .send()
        .await
        .expect("authorize");
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"login_form\""), "login form expected: {html}");
    let mut form = hidden_fields(&html, "login_form");
    form.push(("user_name".into(), user.into()));
    form.push(("user_password".into(), user.into()));
    let login = client.post(url("/login.do")).form(&form).send().await.expect("login");
    assert_eq!(login.status(), 302);
    let back = login.headers()["location"].to_str().unwrap().to_string();
    let page = client.get(url(&back)).send().await.expect("consent page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("id=\"allow\"") && html.contains("id=\"deny\""),
        "consent page expected: {html}"
    );
    let mut form = hidden_fields(&html, "consent_form");
    form.push(("action".into(), button.into()));
    let decided = client
        .post(url("/oauth_auth.do"))
        .form(&form)
        .send()
        .await
        .expect("decide");
    assert_eq!(decided.status(), 302);
    decided.headers()["location"].to_str().unwrap().to_string()
}

/// The value of a query parameter of `location`.
pub fn query_param(location: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(location).ok()?;
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}
