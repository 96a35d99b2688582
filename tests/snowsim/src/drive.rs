//! What a user of the instance does over HTTP, for tests (snowsim's own and the operator's): the
//! documented `password` grant, and a person's consent — sign in on `login.do`, answer the
//! consent page — as a browser without JavaScript would. Only the public pages are used, never
//! the management interface, so what the test gets is what a real instance would hand out.

use crate::{OAuthApp, Server};

/// The `password` grant's form for `user` (password = user name, as in the seed), with `app`'s
/// credentials.
pub fn password_form<'a>(app: &'a OAuthApp, user: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("grant_type", "password"),
        ("username", user),
        ("password", user),
        ("client_id", &app.client_id),
        ("client_secret", &app.client_secret),
    ]
}

/// The token answer of the `password` grant for `user` on `host` (access and refresh token).
/// Panics when the instance refuses.
pub async fn password_grant(server: &Server, host: &str, app: &OAuthApp, user: &str) -> serde_json::Value {
    let client = server.client_builder().build().expect("a client for snowsim");
    let answer = client
        .post(format!("{}/oauth_token.do", server.base_url(host)))
        .form(&password_form(app, user))
        .send()
        .await
        .expect("the token endpoint answers");
    let status = answer.status();
    let body = answer.text().await.expect("the token answer");
    assert_eq!(status, 200, "the password grant for {user} was refused: {body}");
    serde_json::from_str(&body).expect("the token answer is JSON")
}

/// How a person answers the consent page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The Allow button.
    Allow,
    /// The Deny button.
    Deny,
}

impl Decision {
    /// The value the page's button submits as `action`.
    fn action(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// Opens `authorize_url` (`https://<host>/oauth_auth.do?…`) in a fresh session, signs in as
/// `user` (password = user name), answers the consent page with `decision` and returns the
/// final redirect's `Location`. Panics when a page is not what a person would see.
pub async fn consent(server: &Server, authorize_url: &str, user: &str, decision: Decision) -> String {
    let client = server.client_builder().build().expect("a client for snowsim");
    let base = url::Url::parse(authorize_url).expect("an absolute authorize URL");
    let absolute = |location: &str| base.join(location).expect("a location").to_string();
    let page = client.get(authorize_url).send().await.expect("the authorize page");
    assert_eq!(page.status(), 200, "the authorize page");
    let html = page.text().await.expect("the login page");
    assert!(html.contains("id=\"login_form\""), "login form expected: {html}");
    let mut form = hidden_fields(&html, "login_form");
    form.push(("user_name".into(), user.into()));
    form.push(("user_password".into(), user.into()));
    let login = client
        .post(absolute("/login.do"))
        .form(&form)
        .send()
        .await
        .expect("login.do");
    assert_eq!(login.status(), 302, "signing in as {user}");
    let session = session_cookie(login.headers());
    let back = location(login.headers());
    let page = client
        .get(absolute(&back))
        .header("cookie", &session)
        .send()
        .await
        .expect("the consent page");
    assert_eq!(page.status(), 200, "the consent page");
    let html = page.text().await.expect("the consent page");
    assert!(
        html.contains("id=\"allow\"") && html.contains("id=\"deny\""),
        "consent page expected: {html}"
    );
    let mut form = hidden_fields(&html, "consent_form");
    form.push(("action".into(), decision.action().into()));
    let decided = client
        .post(absolute("/oauth_auth.do"))
        .header("cookie", &session)
        .form(&form)
        .send()
        .await
        .expect("the consent decision");
    assert_eq!(decided.status(), 302, "answering the consent page");
    location(decided.headers())
}

/// The `JSESSIONID=…` pair a sign-in set.
fn session_cookie(headers: &http::HeaderMap) -> String {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("JSESSIONID="))
        .and_then(|value| value.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

fn location(headers: &http::HeaderMap) -> String {
    headers["location"].to_str().expect("a text Location").to_owned()
}

/// The hidden inputs of the form with `form_id` in `html`, HTML entities decoded.
pub fn hidden_fields(html: &str, form_id: &str) -> Vec<(String, String)> {
    let start = html
        .find(&format!("id=\"{form_id}\""))
        .unwrap_or_else(|| panic!("no form {form_id} in {html}"));
    let form = &html[start..html[start..].find("</form>").map_or(html.len(), |end| start + end)];
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

/// The inverse of the pages' escaping (`consent::HTML_ESCAPES`, `&amp;` last).
fn unescape(text: &str) -> String {
    crate::consent::HTML_ESCAPES
        .iter()
        .rev()
        .fold(text.to_owned(), |text, (plain, escaped)| text.replace(escaped, plain))
}

/// The value of the query parameter `name` of the URL `location`.
pub fn query_param(location: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(location).ok()?;
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}
