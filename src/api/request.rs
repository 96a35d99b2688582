//! What the status records of a request annotation's value (`neoagent.io/reconcile-requested-at`,
//! `reconnect`, `reconsent`): the value itself when it is short, else a digest of it. Annotations
//! may hold up to 256 KiB in all; copying such a value into the status (three times over) would
//! bloat every status write and every `kubectl get -o yaml`. Pure.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};

/// The longest value the status records as it is, in bytes (a DNS subdomain's length: room for
/// any timestamp, UUID or name a person or tool puts there).
pub const RECORDED_AS_IS: usize = 253;

/// The prefix of a recorded digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// How the status records the request `value`: `value` when at most [`RECORDED_AS_IS`] bytes,
/// else [`DIGEST_PREFIX`] + the unpadded base64url SHA-256 of it (50 bytes in all).
pub fn recorded(value: &str) -> String {
    if value.len() <= RECORDED_AS_IS {
        value.to_owned()
    } else {
        format!(
            "{DIGEST_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_recorded_as_they_are_and_long_ones_as_a_digest() {
        let short = "x".repeat(RECORDED_AS_IS);
        assert_eq!(recorded(&short), short);
        let long = "x".repeat(256 * 1024);
        let digest = recorded(&long);
        assert!(digest.starts_with(DIGEST_PREFIX), "{digest}");
        assert_eq!(digest.len(), DIGEST_PREFIX.len() + 43);
        assert_eq!(recorded(&long), digest, "the same value, the same record");
        assert_ne!(recorded(&format!("{long}y")), digest, "another value, another record");
    }
}
