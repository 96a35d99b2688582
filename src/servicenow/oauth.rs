//! OAuth against the instance as authorization server: the authorize URL (with PKCE S256), the
//! code exchange and the refresh at `/oauth_token.do`, and revocation at
//! `/oauth_revoke_token.do`.
//!
//! Plain form posts through the module's one HTTP client (`http`), not the `oauth2` crate's token
//! requests, because:
//! * every call must go through the one client with the operator's CA bundle, `--resolve`
//!   overrides, timeouts, per-instance limit and call counting;
//! * `oauth2`'s token errors drop the HTTP status, and ServiceNow's single answer to every token
//!   failure (401 `{"error":"server_error","error_description":"access_denied"}`) has to be
//!   told apart from a 429, a 5xx or an unreachable instance;
//! * its default client authentication is HTTP Basic, which ServiceNow does not document (the
//!   client id and secret go in the form, always, here);
//! * ServiceNow's revocation is not RFC 7009 (unauthenticated, `token` in the query).
//!
//! `oauth2` is used for what fits: the PKCE verifier and challenge.

use std::time::Duration;

use serde::Deserialize;

use super::{
    ClientCredentials, Error, ErrorKind, InstanceUrl, SecretString, TokenGrant,
    http::{Call, Transport},
};

/// The authorize endpoint.
pub const AUTHORIZE_PATH: &str = "/oauth_auth.do";
/// The token endpoint.
pub const TOKEN_PATH: &str = "/oauth_token.do";
/// The revocation endpoint.
pub const REVOKE_PATH: &str = "/oauth_revoke_token.do";

/// The URL that starts a consent: `/oauth_auth.do?response_type=code&client_id&redirect_uri&state&code_challenge&code_challenge_method=S256`.
pub fn authorize_url(
    instance: &InstanceUrl,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    code_challenge: &str,
) -> String {
    let base = instance.join(AUTHORIZE_PATH) + "?";
    let start = base.len();
    let mut url = url::form_urlencoded::Serializer::for_suffix(base, start);
    url.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state)
        .append_pair("code_challenge", code_challenge)
        .append_pair("code_challenge_method", "S256");
    url.finish()
}

/// A PKCE pair: the verifier (kept, sent with the code exchange) and its S256 challenge (put on
/// the authorize URL).
#[derive(Clone, Debug)]
pub struct Pkce {
    /// The `code_verifier`: 43 characters of base64url from 32 random bytes.
    pub verifier: SecretString,
    /// The `code_challenge`: base64url(SHA-256(verifier)), no padding.
    pub challenge: String,
}

impl Pkce {
    /// A fresh random pair.
    pub fn generate() -> Self {
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        Pkce {
            verifier: SecretString::new(verifier.secret().clone()),
            challenge: challenge.as_str().to_owned(),
        }
    }
}

/// The S256 `code_challenge` of `verifier`.
pub fn pkce_challenge(verifier: &SecretString) -> String {
    let verifier = oauth2::PkceCodeVerifier::new(verifier.expose().to_owned());
    oauth2::PkceCodeChallenge::from_code_verifier_sha256(&verifier)
        .as_str()
        .to_owned()
}

/// The `authorization_code` grant: `code`, `redirect_uri` (byte for byte the one of the
/// authorize request), the client's id and secret as form fields, and the PKCE verifier.
pub(crate) async fn exchange_code(
    transport: &Transport,
    instance: &InstanceUrl,
    credentials: &ClientCredentials,
    code: &SecretString,
    redirect_uri: &str,
    pkce_verifier: &SecretString,
) -> Result<TokenGrant, Error> {
    let call = token_call(instance, "exchange_code", "exchange the authorization code for tokens");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.expose()),
        ("redirect_uri", redirect_uri),
        ("client_id", credentials.client_id.expose()),
        ("client_secret", credentials.client_secret.expose()),
        ("code_verifier", pkce_verifier.expose()),
    ];
    request_token(transport, &call, &form).await
}

/// The `refresh_token` grant, client id and secret as form fields. When the answer carries no
/// refresh token (ServiceNow may leave it out), the grant keeps `refresh_token`.
pub(crate) async fn refresh(
    transport: &Transport,
    instance: &InstanceUrl,
    credentials: &ClientCredentials,
    refresh_token: &SecretString,
) -> Result<TokenGrant, Error> {
    let call = token_call(instance, "refresh_token", "refresh the access token");
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
        ("client_id", credentials.client_id.expose()),
        ("client_secret", credentials.client_secret.expose()),
    ];
    let mut grant = request_token(transport, &call, &form).await?;
    grant.refresh_token.get_or_insert_with(|| refresh_token.clone());
    Ok(grant)
}

/// Revokes `token` (access or refresh; revoking a refresh token ends its access tokens too):
/// `POST /oauth_revoke_token.do?token=…`, unauthenticated, as documented. Any 2xx is success.
pub(crate) async fn revoke(transport: &Transport, instance: &InstanceUrl, token: &SecretString) -> Result<(), Error> {
    let call = Call {
        instance,
        metric: "revoke_token",
        action: "revoke the token".to_owned(),
        resource: REVOKE_PATH,
        operation: "call",
    };
    let request = transport
        .client()
        .post(instance.join(REVOKE_PATH))
        .query(&[("token", token.expose())]);
    let answer = transport.send(&call, request).await?;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(answer.error(&call))
    }
}

fn token_call<'a>(instance: &'a InstanceUrl, metric: &'static str, action: &str) -> Call<'a> {
    Call {
        instance,
        metric,
        action: action.to_owned(),
        resource: TOKEN_PATH,
        operation: "call",
    }
}

async fn request_token(transport: &Transport, call: &Call<'_>, form: &[(&str, &str)]) -> Result<TokenGrant, Error> {
    let request = transport
        .client()
        .post(call.instance.join(TOKEN_PATH))
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form);
    let answer = transport.send(call, request).await?;
    match answer.status.as_u16() {
        200 => parse_token_response(&answer.body).map_err(|reason| call.error(ErrorKind::Protocol { reason })),
        400 | 401 => Err(match token_error(&answer.body) {
            Some(detail) => call.error(ErrorKind::Unauthorized { detail }),
            None => answer.error(call),
        }),
        _ => Err(answer.error(call)),
    }
}

/// A token endpoint success: `{access_token, refresh_token?, scope, token_type, expires_in}`.
/// The error says what is wrong without quoting the body (it holds tokens).
pub(crate) fn parse_token_response(body: &[u8]) -> Result<TokenGrant, String> {
    #[derive(Deserialize)]
    struct Raw {
        access_token: Option<String>,
        refresh_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<Seconds>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|error| {
        format!(
            "unexpected answer: the token response is not a JSON object of the expected shape ({:?} error at line {} column {})",
            error.classify(),
            error.line(),
            error.column()
        )
    })?;
    let access_token = raw
        .access_token
        .filter(|token| !token.is_empty())
        .ok_or("unexpected answer: the token response has no access_token")?;
    if raw
        .token_type
        .as_deref()
        .is_some_and(|kind| !kind.eq_ignore_ascii_case("bearer"))
    {
        return Err("unexpected answer: the token response's token_type is not Bearer".to_owned());
    }
    let seconds = match raw.expires_in {
        Some(Seconds::Number(seconds)) => seconds,
        Some(Seconds::Text(text)) => text
            .trim()
            .parse()
            .map_err(|_| "unexpected answer: the token response's expires_in is not a number")?,
        None => return Err("unexpected answer: the token response has no expires_in".to_owned()),
    };
    Ok(TokenGrant {
        access_token: SecretString::new(access_token),
        refresh_token: raw
            .refresh_token
            .filter(|token| !token.is_empty())
            .map(SecretString::new),
        expires_in: Duration::from_secs(seconds),
    })
}

/// The OAuth error of a failed token request, `error: error_description` (ServiceNow's is
/// always `server_error: access_denied`; other servers' RFC 6749 codes read the same way).
pub(crate) fn token_error(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Raw {
        error: String,
        error_description: Option<String>,
    }
    let raw: Raw = serde_json::from_slice(body).ok()?;
    Some(
        match raw.error_description.filter(|description| !description.is_empty()) {
            Some(description) => format!("{}: {description}", raw.error),
            None => raw.error,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_response_as_servicenow_sends_it_parses_with_a_numeric_lifetime() {
        let body = br#"{"access_token":"at-1","refresh_token":"rt-1","scope":"useraccount","token_type":"Bearer","expires_in":1799}"#;
        let grant = parse_token_response(body).unwrap();
        assert_eq!(grant.access_token.expose(), "at-1");
        assert_eq!(grant.refresh_token.as_ref().map(SecretString::expose), Some("rt-1"));
        assert_eq!(grant.expires_in, Duration::from_secs(1799));
    }

    #[test]
    fn a_refresh_response_may_leave_out_the_refresh_token() {
        let grant = parse_token_response(
            br#"{"access_token":"at-2","scope":"useraccount","token_type":"Bearer","expires_in":1800}"#,
        )
        .unwrap();
        assert!(grant.refresh_token.is_none());
    }

    #[test]
    fn a_lifetime_sent_as_a_string_of_digits_is_accepted() {
        let grant =
            parse_token_response(br#"{"access_token":"at","token_type":"bearer","expires_in":"1800"}"#).unwrap();
        assert_eq!(grant.expires_in, Duration::from_secs(1800));
    }

    #[test]
    fn a_malformed_token_response_is_described_without_quoting_it() {
        for body in [
            &br#"{"access_token":"secret-at","expires_in":"soon"}"#[..],
            br#"{"refresh_token":"secret-rt","expires_in":5}"#,
            br#"{"access_token":"secret-at","token_type":"MAC","expires_in":5}"#,
            br#"<html>secret-at</html>"#,
        ] {
            let reason = parse_token_response(body).unwrap_err();
            assert!(!reason.contains("secret"), "{reason}");
        }
    }

    #[test]
    fn servicenows_generic_token_failure_reads_as_its_two_codes() {
        assert_eq!(
            token_error(br#"{"error_description":"access_denied","error":"server_error"}"#).as_deref(),
            Some("server_error: access_denied")
        );
        assert_eq!(
            token_error(br#"{"error":"invalid_grant"}"#).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(token_error(b"not json"), None);
    }

    #[test]
    fn the_authorize_url_carries_every_parameter_encoded() {
        let instance = InstanceUrl::parse("https://acme.service-now.com").unwrap();
        let url = authorize_url(
            &instance,
            "c1d",
            "https://op.example.com/oauth/servicenow/callback",
            "v1.a-b",
            "ch_al",
        );
        assert_eq!(
            url,
            "https://acme.service-now.com/oauth_auth.do?response_type=code&client_id=c1d\
             &redirect_uri=https%3A%2F%2Fop.example.com%2Foauth%2Fservicenow%2Fcallback&state=v1.a-b\
             &code_challenge=ch_al&code_challenge_method=S256"
        );
    }

    #[test]
    fn the_pkce_challenge_is_the_s256_of_the_verifier() {
        // RFC 7636, appendix B.
        let verifier = SecretString::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(pkce_challenge(&verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let pair = Pkce::generate();
        assert_eq!(pair.verifier.expose().len(), 43);
        assert_eq!(pkce_challenge(&pair.verifier), pair.challenge);
        assert_eq!(format!("{pair:?}").matches(pair.verifier.expose()).count(), 0);
    }
}
