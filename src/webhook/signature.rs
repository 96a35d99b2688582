//! Pure: the signature the Business Rule puts on each event, and its check.
//!
//! The rule (`src/provision/task_webhook.js`) sends two headers:
//! - `X-Neoagent-Timestamp`: when it signed, in milliseconds since the Unix epoch
//!   (`new GlideDateTime().getNumericValue()`);
//! - `X-Neoagent-Signature`: `v1=` and the HMAC-SHA256, in standard Base64, of
//!   `<timestamp>.<body>` under the connection's signing key
//!   (`GlideCertificateEncryption.generateMac`, servicenow-api.md §3.6).
//!
//! A request is authentic when the signature matches under one of the connection's usable keys
//! (the current one, or the one a rotation replaced during its grace period) and its timestamp is
//! within [`WINDOW`] of the receiver's clock. The same signature seen twice is a replay
//! (`replay.rs`).

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::servicenow::SecretString;

/// The header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "x-neoagent-timestamp";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-neoagent-signature";
/// How far a signing time may be from the receiver's clock, either way.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);
/// The scheme prefix of the signature header's value.
const SCHEME: &str = "v1=";
/// The length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// Why a request's signature is refused. The messages never quote a header or the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    /// A header is absent or not of the form the rule sends.
    #[error("the request is not signed (headers X-Neoagent-Timestamp and X-Neoagent-Signature: v1=…)")]
    Unsigned,
    /// The signing time is too far from now: a late replay, or a clock that is off.
    #[error("the signature's timestamp is more than 5 minutes from the receiver's clock")]
    OutsideWindow,
}

/// The signing headers of a request, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// `X-Neoagent-Timestamp` as sent (it is signed as text).
    timestamp: String,
    /// The same in milliseconds since the epoch.
    millis: i64,
    /// The HMAC tag.
    tag: [u8; TAG_LEN],
}

impl Signed {
    /// The signing headers' values; `None` when a header is absent.
    pub fn parse(timestamp: Option<&str>, signature: Option<&str>) -> Result<Signed, BadSignature> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(BadSignature::Unsigned);
        };
        let millis = Some(timestamp)
            .filter(|t| !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or(BadSignature::Unsigned)?;
        let tag = signature
            .strip_prefix(SCHEME)
            .and_then(|tag| base64::engine::general_purpose::STANDARD.decode(tag).ok())
            .and_then(|tag| <[u8; TAG_LEN]>::try_from(tag).ok())
            .ok_or(BadSignature::Unsigned)?;
        Ok(Signed {
            timestamp: timestamp.to_owned(),
            millis,
            tag,
        })
    }

    /// `Ok` when the signing time is within [`WINDOW`] of `now_millis`.
    pub fn check_time(&self, now_millis: i64) -> Result<(), BadSignature> {
        let window = i64::try_from(WINDOW.as_millis()).unwrap_or(i64::MAX);
        if self.millis.abs_diff(now_millis) <= window.unsigned_abs() {
            Ok(())
        } else {
            Err(BadSignature::OutsideWindow)
        }
    }

    /// `true` when one of `keys` made this signature over `body` (compared in constant time).
    pub fn made_by_one_of<'a>(&self, mut keys: impl Iterator<Item = &'a SecretString>, body: &[u8]) -> bool {
        keys.any(|key| mac(key, &self.timestamp, body).verify_slice(&self.tag).is_ok())
    }

    /// What identifies this request among replays: its tag.
    pub fn replay_id(&self) -> [u8; TAG_LEN] {
        self.tag
    }

    /// When it was signed, in milliseconds since the epoch.
    pub fn millis(&self) -> i64 {
        self.millis
    }
}

fn mac(key: &SecretString, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Neoagent-Signature` value for `body` signed at `timestamp` with `key`, as the rule
/// computes it (for clients and tests that play the instance).
pub fn sign(key: &SecretString, timestamp: &str, body: &[u8]) -> String {
    let tag = mac(key, timestamp, body).finalize().into_bytes();
    format!("{SCHEME}{}", base64::engine::general_purpose::STANDARD.encode(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_849_600_000;

    fn key(text: &str) -> SecretString {
        SecretString::new(text)
    }

    #[test]
    fn a_signature_checks_under_its_key_only_over_its_body() {
        let body = br#"{"table":"incident"}"#;
        let header = sign(&key("k1"), "1764849600000", body);
        let signed = Signed::parse(Some("1764849600000"), Some(&header)).unwrap();
        assert!(signed.made_by_one_of([key("k1")].iter(), body));
        assert!(signed.made_by_one_of([key("k0"), key("k1")].iter(), body));
        assert!(!signed.made_by_one_of([key("k0")].iter(), body));
        assert!(!signed.made_by_one_of(std::iter::empty(), body));
        assert!(!signed.made_by_one_of([key("k1")].iter(), br#"{"table":"problem"}"#));
        // The timestamp is signed: the same tag with another time does not check.
        let moved = Signed::parse(Some("1764849600001"), Some(&header)).unwrap();
        assert!(!moved.made_by_one_of([key("k1")].iter(), body));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_base64() {
        // Computed independently: printf '1.{}' | openssl dgst -sha256 -hmac key -binary | base64
        assert_eq!(
            sign(&key("key"), "1", b"{}"),
            "v1=G6a4FxGG78YT6LzAy9qydI8kmE18WoT6omN6+g5A0iQ="
        );
    }

    #[test]
    fn headers_of_another_form_are_unsigned() {
        let good = sign(&key("k"), "1", b"");
        for (timestamp, signature) in [
            (None, Some(good.as_str())),
            (Some("1"), None),
            (Some(""), Some(good.as_str())),
            (Some("-1"), Some(good.as_str())),
            (Some("1.5"), Some(good.as_str())),
            (Some("99999999999999999999"), Some(good.as_str())),
            (Some("1"), Some(good.trim_start_matches("v1="))),
            (Some("1"), Some("v2=abc")),
            (Some("1"), Some("v1=not base64!")),
            (Some("1"), Some("v1=c2hvcnQ=")),
        ] {
            assert_eq!(
                Signed::parse(timestamp, signature),
                Err(BadSignature::Unsigned),
                "{timestamp:?} {signature:?}"
            );
        }
        assert!(Signed::parse(Some("9223372036854775807"), Some(&good)).is_ok());
    }

    #[test]
    fn the_window_is_five_minutes_either_way() {
        let at = |millis: i64| Signed::parse(Some(&millis.to_string()), Some(&sign(&key("k"), "0", b""))).unwrap();
        let window = 5 * 60 * 1000;
        for inside in [NOW, NOW - window, NOW + window] {
            assert_eq!(at(inside).check_time(NOW), Ok(()), "{}", inside - NOW);
        }
        for outside in [NOW - window - 1, NOW + window + 1, 0, i64::MAX] {
            assert_eq!(
                at(outside).check_time(NOW),
                Err(BadSignature::OutsideWindow),
                "{}",
                outside.wrapping_sub(NOW)
            );
        }
        assert_eq!(at(NOW).millis(), NOW);
    }

    #[test]
    fn the_replay_id_is_the_tag() {
        let one = Signed::parse(Some("1"), Some(&sign(&key("k"), "1", b"a"))).unwrap();
        let same = Signed::parse(Some("1"), Some(&sign(&key("k"), "1", b"a"))).unwrap();
        let other = Signed::parse(Some("1"), Some(&sign(&key("k"), "1", b"b"))).unwrap();
        assert_eq!(one.replay_id(), same.replay_id());
        assert_ne!(one.replay_id(), other.replay_id());
    }
}
