//! The `state` of the consent flow, and the PKCE verifier that goes with it. Pure: no I/O, no clock,
//! no randomness other than the nonce [`mint`] draws.
//!
//! `GET /oauth/servicenow/start?connection=<ns>/<name>` calls [`mint`] and redirects to the
//! instance's `/oauth_auth.do` with the `state` and the PKCE `code_challenge` (S256); the callback
//! `GET /oauth/servicenow/callback?code&state` calls [`verify`] and exchanges the code with
//! [`Verified::pkce_verifier`].
//!
//! * Unforgeable: the state carries an HMAC-SHA256 over everything else in it, under the key the
//!   operator keeps in a Secret (compared in constant time).
//! * Bound to the connection (`ns/name`) and its UID: both are in the signed part, and the caller
//!   checks that the connection still exists with that UID.
//! * Expires [`LIFETIME`] after minting.
//! * Works with any number of replicas: nothing is kept in memory. The PKCE verifier is derived
//!   from the key and the state's random nonce (HMAC-SHA256 with a label of its own), so whichever
//!   replica receives the callback computes the same verifier; it is never stored nor sent to
//!   the browser.
//! * Bound to the browser that started the flow: [`mint`] also draws a random cookie value
//!   ([`Minted::cookie`], set by `/start` as an HttpOnly, SameSite=Lax cookie) and the state
//!   carries its SHA-256; the callback calls [`Verified::check_cookie`] with the cookie the browser
//!   sent (RFC 9700 §4.7, against login CSRF: a state alone, sent to someone else's browser, is
//!   refused).
//! * Single use is the caller's part: record [`Verified::nonce`] in a shared place (annotation,
//!   Secret) until [`Verified::expires_at`] and refuse a nonce seen before.
//!
//! Format: `v2.<connection>.<uid>.<nonce>.<binding>.<expires>.<mac>`, each part base64url without
//! padding (`<expires>` is Unix seconds in decimal), so the state holds only `[A-Za-z0-9._-]` —
//! ServiceNow asks for a state with "no special characters".

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sha2::Sha256;

use crate::servicenow::SecretString;

type HmacSha256 = Hmac<Sha256>;

/// How long a state is accepted after [`mint`].
pub const LIFETIME: SignedDuration = SignedDuration::from_mins(10);

/// The first part of every state this version mints.
const VERSION: &str = "v2";
/// Bytes of randomness in a state.
const NONCE_LEN: usize = 16;
/// Bytes of randomness in the browser-binding cookie.
const COOKIE_LEN: usize = 32;
/// Longer states are refused before any work (Kubernetes names and UIDs keep real ones far below).
const MAX_STATE_LEN: usize = 2048;
/// Domain separation: the MAC of a state and the PKCE verifier use the same key with these labels,
/// so one can never stand for the other.
const STATE_LABEL: &[u8] = b"servicenow-operator consent state v1\0";
const VERIFIER_LABEL: &[u8] = b"servicenow-operator pkce verifier v1\0";

/// What [`mint`] makes: the `state` and `code_challenge` to put on the authorize URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    /// The `state` parameter: only `[A-Za-z0-9._-]`.
    pub state: String,
    /// The PKCE `code_challenge` (method `S256`): base64url(SHA-256(verifier)), no padding.
    pub code_challenge: String,
    /// The state's nonce (base64url), the same [`Verified::nonce`] will return.
    pub nonce: String,
    /// When the state stops being accepted.
    pub expires_at: Timestamp,
    /// The value of the cookie that binds the flow to the browser (its SHA-256 is in the state).
    pub cookie: SecretString,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("nonce", &self.nonce)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A state that [`verify`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The connection the consent is for, `<namespace>/<name>`, as given to [`mint`].
    pub connection: String,
    /// The connection's `metadata.uid` when the state was minted: a connection deleted and
    /// re-created under the same name has another one.
    pub uid: String,
    /// The state's random nonce (base64url, 22 characters): the key under which the caller records
    /// that this state was used, until [`Self::expires_at`].
    pub nonce: String,
    /// When the state stops being accepted; a record of its use may be dropped after that.
    pub expires_at: Timestamp,
    /// The PKCE `code_verifier` for the token request (43 characters, base64url).
    pub pkce_verifier: SecretString,
    /// base64url(SHA-256(cookie value)) of the browser that started the flow.
    pub binding: String,
}

impl Verified {
    /// Checks that `cookie` (the binding cookie's value as the browser sent it) is the one the
    /// flow started with, in constant time.
    pub fn check_cookie(&self, cookie: Option<&str>) -> Result<(), StateError> {
        let cookie = cookie.ok_or(StateError::CookieMissing)?;
        if crate::ticket::same_hash(&binding(cookie), &self.binding) {
            Ok(())
        } else {
            Err(StateError::CookieMismatch)
        }
    }
}

/// The binding of a cookie value: base64url(SHA-256(value)).
fn binding(cookie: &str) -> String {
    crate::ticket::hash(cookie)
}

/// Why [`verify`] refused a state. The messages say what to do and never contain the key, the
/// verifier or the state itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not a state this operator mints (truncated, altered in transit, or from another program).
    #[error(
        "the consent state is malformed (not one this operator issues, or cut short): open the connection's \
         consentUrl again to start a new consent"
    )]
    Malformed,
    /// Well-formed but not signed with the operator's key: forged, altered, or minted before the
    /// key was replaced.
    #[error(
        "the consent state's signature does not match: it was altered, forged, or issued before the operator's \
         state key changed; open the connection's consentUrl again to start a new consent"
    )]
    BadSignature,
    /// Signed by the operator, but older than [`LIFETIME`].
    #[error(
        "the consent state expired at {expires_at} (a consent must be completed within 10 minutes of opening the \
         consentUrl); open the connection's consentUrl again"
    )]
    Expired {
        /// When it expired.
        expires_at: Timestamp,
    },
    /// The browser sent no binding cookie: it is not the one that opened the consentUrl.
    #[error(
        "this browser did not start this consent (its consent cookie is missing): open the connection's consentUrl \
         in the browser you finish the consent in"
    )]
    CookieMissing,
    /// The browser's binding cookie belongs to another consent.
    #[error(
        "this browser did not start this consent (its consent cookie belongs to another one): open the \
         connection's consentUrl again in this browser"
    )]
    CookieMismatch,
}

/// Mints a state for `connection` (`<namespace>/<name>`) with UID `uid`, valid for [`LIFETIME`]
/// from `now`, with a fresh random nonce. `key` is the operator's state key (32 random bytes from
/// its Secret); every replica must use the same one.
pub fn mint(key: &[u8], connection: &str, uid: &str, now: Timestamp) -> Minted {
    mint_with(key, connection, uid, now, rand::random(), rand::random())
}

/// [`mint`] with a given nonce and cookie value.
fn mint_with(
    key: &[u8],
    connection: &str,
    uid: &str,
    now: Timestamp,
    nonce: [u8; NONCE_LEN],
    cookie: [u8; COOKIE_LEN],
) -> Minted {
    let expires_at = now.saturating_add(LIFETIME).unwrap_or(now);
    let cookie = URL_SAFE_NO_PAD.encode(cookie);
    let signed = format!(
        "{VERSION}.{}.{}.{}.{}.{}",
        URL_SAFE_NO_PAD.encode(connection),
        URL_SAFE_NO_PAD.encode(uid),
        URL_SAFE_NO_PAD.encode(nonce),
        binding(&cookie),
        expires_at.as_second()
    );
    let tag = URL_SAFE_NO_PAD.encode(state_mac(key, &signed).finalize().into_bytes());
    let verifier = pkce_verifier(key, &nonce);
    Minted {
        state: format!("{signed}.{tag}"),
        code_challenge: crate::servicenow::oauth::pkce_challenge(&verifier),
        nonce: URL_SAFE_NO_PAD.encode(nonce),
        expires_at,
        cookie: SecretString::new(cookie),
    }
}

/// Checks `state` against `key` at `now`: format, then signature (constant time), then expiry.
/// Does not check single use nor that the connection still exists with the UID: the caller does.
pub fn verify(key: &[u8], state: &str, now: Timestamp) -> Result<Verified, StateError> {
    if state.len() > MAX_STATE_LEN {
        return Err(StateError::Malformed);
    }
    let (signed, tag) = state.rsplit_once('.').ok_or(StateError::Malformed)?;
    let parts: Vec<&str> = signed.split('.').collect();
    let [version, connection, uid, nonce, bound, expires] = parts[..] else {
        return Err(StateError::Malformed);
    };
    if version != VERSION {
        return Err(StateError::Malformed);
    }
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| StateError::Malformed)?;
    state_mac(key, signed)
        .verify_slice(&tag)
        .map_err(|_| StateError::BadSignature)?;

    // Signed by us: what follows only fails if a future version changed the format.
    let text = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(StateError::Malformed)
    };
    let nonce_bytes: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
        .decode(nonce)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(StateError::Malformed)?;
    let expires_at = expires
        .parse::<i64>()
        .ok()
        .and_then(|seconds| Timestamp::from_second(seconds).ok())
        .ok_or(StateError::Malformed)?;
    if now >= expires_at {
        return Err(StateError::Expired { expires_at });
    }
    Ok(Verified {
        connection: text(connection)?,
        uid: text(uid)?,
        nonce: nonce.to_owned(),
        expires_at,
        pkce_verifier: pkce_verifier(key, &nonce_bytes),
        binding: bound.to_owned(),
    })
}

/// The HMAC of a state's signed part, not yet finalized.
fn state_mac(key: &[u8], signed: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(STATE_LABEL);
    mac.update(signed.as_bytes());
    mac
}

/// The PKCE verifier of the state with `nonce`: base64url(HMAC-SHA256(key, label ‖ nonce)),
/// 43 characters of RFC 7636's alphabet.
fn pkce_verifier(key: &[u8], nonce: &[u8; NONCE_LEN]) -> SecretString {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(VERIFIER_LABEL);
    mac.update(nonce);
    SecretString::new(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// The S256 `code_challenge` of `verifier`: base64url(SHA-256(verifier)), no padding.
#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const CONNECTION: &str = "team-a/acme";
    const UID: &str = "6f1c2b7e-2d4a-4c55-9f0e-3b1a9f3c8d21";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    /// Replaces the character at `index` of `text` by another one of the base64url alphabet.
    fn flip(text: &str, index: usize) -> String {
        let mut bytes = text.as_bytes().to_vec();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_minted_state_verifies_and_gives_back_the_connection_uid_nonce_and_expiry() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        let verified = verify(KEY, &minted.state, at(60)).unwrap();
        assert_eq!(verified.connection, CONNECTION);
        assert_eq!(verified.uid, UID);
        assert_eq!(verified.nonce, minted.nonce);
        assert_eq!(verified.expires_at, at(600));
        assert_eq!(minted.expires_at, at(600));
        assert_eq!(verified.pkce_verifier.expose().len(), 43);
        assert_eq!(
            crate::servicenow::oauth::pkce_challenge(&verified.pkce_verifier),
            minted.code_challenge
        );
    }

    #[test]
    fn two_states_for_the_same_connection_differ_and_have_different_verifiers() {
        let first = mint(KEY, CONNECTION, UID, at(0));
        let second = mint(KEY, CONNECTION, UID, at(0));
        assert_ne!(first.state, second.state);
        assert_ne!(first.nonce, second.nonce);
        assert_ne!(first.code_challenge, second.code_challenge);
    }

    #[test]
    fn a_tampered_payload_is_refused_as_a_bad_signature() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        let other = mint(KEY, "team-b/acme", UID, at(0));
        // Another connection's name spliced into a valid state.
        let parts: Vec<&str> = minted.state.split('.').collect();
        let other_connection = other.state.split('.').nth(1).unwrap();
        let spliced = [
            parts[0],
            other_connection,
            parts[2],
            parts[3],
            parts[4],
            parts[5],
            parts[6],
        ]
        .join(".");
        assert_eq!(verify(KEY, &spliced, at(1)), Err(StateError::BadSignature));
        // A later expiry.
        let later = [parts[0], parts[1], parts[2], parts[3], parts[4], "1900000000", parts[6]].join(".");
        // Another browser's binding.
        let rebound = [
            parts[0],
            parts[1],
            parts[2],
            parts[3],
            other.state.split('.').nth(4).unwrap(),
            parts[5],
            parts[6],
        ]
        .join(".");
        assert_eq!(verify(KEY, &rebound, at(1)), Err(StateError::BadSignature));
        assert_eq!(verify(KEY, &later, at(1)), Err(StateError::BadSignature));
        // One character of the nonce.
        let nonce_at = parts[..3].iter().map(|part| part.len() + 1).sum::<usize>();
        assert_eq!(
            verify(KEY, &flip(&minted.state, nonce_at), at(1)),
            Err(StateError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        let (signed, tag) = minted.state.rsplit_once('.').unwrap();
        assert_eq!(
            verify(KEY, &flip(&minted.state, signed.len() + 1), at(1)),
            Err(StateError::BadSignature)
        );
        // A signature one byte short is refused too, and not as malformed.
        let short = URL_SAFE_NO_PAD.encode(&URL_SAFE_NO_PAD.decode(tag).unwrap()[..31]);
        assert_eq!(
            verify(KEY, &format!("{signed}.{short}"), at(1)),
            Err(StateError::BadSignature)
        );
        assert_eq!(verify(KEY, &format!("{signed}."), at(1)), Err(StateError::BadSignature));
    }

    #[test]
    fn a_state_minted_with_another_key_is_refused() {
        let minted = mint(b"another key of the same length..", CONNECTION, UID, at(0));
        assert_eq!(verify(KEY, &minted.state, at(1)), Err(StateError::BadSignature));
    }

    #[test]
    fn a_state_is_accepted_until_ten_minutes_after_minting_and_expired_from_then_on() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        assert!(verify(KEY, &minted.state, at(599)).is_ok());
        assert_eq!(
            verify(KEY, &minted.state, at(600)),
            Err(StateError::Expired { expires_at: at(600) })
        );
        assert_eq!(
            verify(KEY, &minted.state, at(86_400)),
            Err(StateError::Expired { expires_at: at(600) })
        );
    }

    #[test]
    fn an_expired_state_with_a_bad_signature_is_reported_as_a_bad_signature() {
        let minted = mint(b"another key of the same length..", CONNECTION, UID, at(0));
        assert_eq!(verify(KEY, &minted.state, at(3600)), Err(StateError::BadSignature));
    }

    #[test]
    fn the_verifier_is_the_same_on_two_replicas_sharing_the_key() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        // Each "replica" verifies on its own, from the key and the state alone.
        let replica_a = verify(KEY.to_vec().as_slice(), &minted.state, at(5)).unwrap();
        let replica_b = verify(KEY.to_vec().as_slice(), &minted.state, at(9)).unwrap();
        assert_eq!(replica_a.pkce_verifier, replica_b.pkce_verifier);
        assert_eq!(replica_a.nonce, replica_b.nonce);
        // And a replica minting with the same nonce derives the same challenge.
        let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD.decode(&minted.nonce).unwrap().try_into().unwrap();
        let cookie: [u8; COOKIE_LEN] = URL_SAFE_NO_PAD
            .decode(minted.cookie.expose())
            .unwrap()
            .try_into()
            .unwrap();
        let again = mint_with(KEY, CONNECTION, UID, at(0), nonce, cookie);
        assert_eq!(again, minted);
    }

    #[test]
    fn the_state_uses_only_letters_digits_dot_underscore_and_dash() {
        for connection in ["team-a/acme", "ns/ünïcödé", "a/b", "x/y?z=1&w= +/"] {
            for _ in 0..50 {
                let state = mint(KEY, connection, "uid with spaces/+=", at(0)).state;
                assert!(
                    state
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
                    "{state}"
                );
                assert_eq!(verify(KEY, &state, at(1)).unwrap().connection, connection);
            }
        }
    }

    #[test]
    fn the_challenge_is_the_base64url_sha256_of_the_verifier() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        let verifier = verify(KEY, &minted.state, at(1)).unwrap().pkce_verifier;
        let digest = Sha256::digest(verifier.expose().as_bytes());
        assert_eq!(URL_SAFE_NO_PAD.decode(&minted.code_challenge).unwrap(), digest.to_vec());
        assert_eq!(minted.code_challenge.len(), 43);
        // RFC 7636: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
        assert!(
            verifier
                .expose()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        );
        // RFC 7636 appendix B's example, to pin the encoding.
        let example = SecretString::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            crate::servicenow::oauth::pkce_challenge(&example),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_state_is_bound_to_the_cookie_minted_with_it() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        let other = mint(KEY, CONNECTION, UID, at(0));
        assert_ne!(minted.cookie, other.cookie);
        assert_eq!(minted.cookie.expose().len(), 43);
        let verified = verify(KEY, &minted.state, at(1)).unwrap();
        assert_eq!(verified.check_cookie(Some(minted.cookie.expose())), Ok(()));
        assert_eq!(verified.check_cookie(None), Err(StateError::CookieMissing));
        assert_eq!(
            verified.check_cookie(Some(other.cookie.expose())),
            Err(StateError::CookieMismatch)
        );
        assert_eq!(verified.check_cookie(Some("")), Err(StateError::CookieMismatch));
        // The state carries the cookie's hash, never the cookie.
        assert!(!minted.state.contains(minted.cookie.expose()));
        assert!(!format!("{minted:?}").contains(minted.cookie.expose()));
        // It shows the nonce instead.
        assert!(format!("{minted:?}").contains(&minted.nonce), "{minted:?}");
    }

    /// The length bound refuses only what is longer than [`MAX_STATE_LEN`]: a state of exactly
    /// that length (for a long connection name) verifies.
    #[test]
    fn a_state_of_exactly_the_maximum_length_verifies() {
        let (connection, minted) = (1..MAX_STATE_LEN)
            .map(|n| format!("team-a/{}", "a".repeat(n)))
            .map(|connection| {
                let minted = mint(KEY, &connection, UID, at(0));
                (connection, minted)
            })
            .find(|(_, minted)| minted.state.len() == MAX_STATE_LEN)
            .expect("some connection name gives a state of the maximum length");
        assert_eq!(
            verify(KEY, &minted.state, at(1)).map(|verified| verified.connection),
            Ok(connection)
        );
    }

    #[test]
    fn malformed_states_are_refused_as_malformed() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        let long = "a".repeat(MAX_STATE_LEN + 1);
        let v2 = minted.state.replacen("v2.", "v1.", 1);
        let fewer = minted.state.split_once('.').unwrap().1.to_owned();
        let bad_tag = format!("{}.!!", minted.state.rsplit_once('.').unwrap().0);
        for state in ["", "xyz", "v2.a.b.c.d.e", &long, &v2, &fewer, &bad_tag] {
            assert_eq!(verify(KEY, state, at(1)), Err(StateError::Malformed), "{state:?}");
        }
    }

    #[test]
    fn errors_and_debug_output_never_show_the_key_the_verifier_or_the_state() {
        let minted = mint(KEY, CONNECTION, UID, at(0));
        let verified = verify(KEY, &minted.state, at(1)).unwrap();
        let verifier = verified.pkce_verifier.expose().to_owned();
        let key = String::from_utf8(KEY.to_vec()).unwrap();
        let mut shown = vec![format!("{verified:?}"), format!("{minted:?}")];
        for error in [
            verify(KEY, "v1.x", at(1)).unwrap_err(),
            verify(b"other", &minted.state, at(1)).unwrap_err(),
            verify(KEY, &minted.state, at(601)).unwrap_err(),
        ] {
            shown.push(error.to_string());
            shown.push(format!("{error:?}"));
        }
        for text in shown {
            assert!(
                !text.contains(&verifier)
                    && !text.contains(&key)
                    && !text.contains(&minted.state)
                    && !text.contains(minted.cookie.expose()),
                "{text}"
            );
        }
        assert!(
            verify(KEY, &minted.state, at(601))
                .unwrap_err()
                .to_string()
                .contains("expired at 2027-01-15T08:10:00Z"),
        );
    }
}
