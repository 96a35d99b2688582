//! Every path the operator serves on its public URL, and the URLs built from them: the consent
//! URL a connection's status carries, the OAuth redirect URL registered on the instance, and the
//! callback URL the Business Rule posts to. One home, so the router, the status and the instance
//! always agree.

use url::Url;

/// Consent start: where `status.consentUrl` points.
pub const CONSENT_START: &str = "/oauth/servicenow/start";
/// The OAuth redirect (callback) endpoint: registered, byte for byte, as the Application
/// Registry's Redirect URL.
pub const CONSENT_CALLBACK: &str = "/oauth/servicenow/callback";
/// The webhook receiver: where the Business Rule posts task events.
pub const WEBHOOK: &str = "/callback/servicenow";

/// `public_url` with `path` appended to its own path (a trailing `/` is not significant), and no
/// query.
fn under(public_url: &Url, path: &str) -> Url {
    let mut url = public_url.clone();
    url.set_path(&format!("{}{path}", public_url.path().trim_end_matches('/')));
    url.set_query(None);
    url
}

/// The consent URL carrying `ticket` (see `crate::ticket`: only `[A-Za-z0-9._-]`).
pub fn consent_url(public_url: &Url, ticket: &str) -> String {
    let mut url = under(public_url, CONSENT_START);
    url.query_pairs_mut().append_pair("ticket", ticket);
    url.to_string()
}

/// Whether `consent_url` is one [`consent_url`] makes under `public_url` (after `--public-url`
/// changed, it is not).
pub fn is_consent_url(public_url: &Url, consent_url: &str) -> bool {
    let start = under(public_url, CONSENT_START).to_string();
    consent_url
        .strip_prefix(&start)
        .is_some_and(|rest| rest.starts_with("?ticket="))
}

/// The OAuth redirect URL.
pub fn redirect_url(public_url: &Url) -> String {
    under(public_url, CONSENT_CALLBACK).to_string()
}

/// The webhook callback URL of the connection `namespace/name`. It carries nothing secret: events
/// are signed (see `webhook::signature`).
pub fn callback_url(public_url: &Url, namespace: &str, name: &str) -> String {
    let mut url = under(public_url, WEBHOOK);
    url.query_pairs_mut()
        .append_pair("connection", &format!("{namespace}/{name}"));
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_sit_under_the_public_url_whatever_its_trailing_slash() {
        for base in ["https://neo.example.com/base", "https://neo.example.com/base/"] {
            let public = Url::parse(base).unwrap();
            let url = consent_url(&public, "t1.abc_-.9");
            assert_eq!(
                url,
                "https://neo.example.com/base/oauth/servicenow/start?ticket=t1.abc_-.9"
            );
            assert!(is_consent_url(&public, &url));
            assert!(!is_consent_url(&Url::parse("https://other.example.com").unwrap(), &url));
            assert_eq!(
                redirect_url(&public),
                "https://neo.example.com/base/oauth/servicenow/callback"
            );
            assert_eq!(
                callback_url(&public, "itsm", "acme"),
                "https://neo.example.com/base/callback/servicenow?connection=itsm%2Facme"
            );
        }
        let root = Url::parse("https://neo.example.com?x=1").unwrap();
        assert_eq!(redirect_url(&root), "https://neo.example.com/oauth/servicenow/callback");
    }
}
