//! The access tokens the operator holds, in memory only, one per connection: reused until
//! shortly before they expire, refreshed once when several reconciles need one at the same time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::servicenow::SecretString;

/// How long before its expiry an access token is refreshed.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// A cached access token.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The token.
    pub token: SecretString,
    /// When it expires (monotonic clock).
    pub expires_at: Instant,
    /// Fingerprint of the credentials and refresh token it was obtained with: a change of either
    /// makes it unusable.
    pub origin: String,
}

impl AccessToken {
    /// `true` while the token can be used for another call.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now + REFRESH_AHEAD < self.expires_at
    }
}

/// Access tokens by connection (`namespace/name`), each behind its own lock so a refresh is
/// single-flight per connection and independent across connections.
#[derive(Debug, Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<AccessToken>>>>>,
}

impl TokenCache {
    /// The slot of `key`; hold its lock while checking and refreshing.
    pub fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<AccessToken>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// Forgets the token of `key` (deleted connection, rejected token, reconnect).
    pub fn forget(&self, key: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

/// The origin fingerprint of a token obtained with `credentials_fingerprint` and `refresh_token`.
pub fn origin(credentials_fingerprint: &str, refresh_token: &SecretString) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(credentials_fingerprint.as_bytes());
    hash.update(b"\0");
    hash.update(refresh_token.expose().as_bytes());
    hash.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_a_minute_before_it_expires() {
        let now = Instant::now();
        let token = AccessToken {
            token: SecretString::new("t"),
            expires_at: now + Duration::from_secs(90),
            origin: String::new(),
        };
        assert!(token.is_fresh(now));
        assert!(!token.is_fresh(now + Duration::from_secs(31)));
    }

    #[test]
    fn the_origin_changes_with_the_refresh_token() {
        assert_ne!(
            origin("c", &SecretString::new("a")),
            origin("c", &SecretString::new("b"))
        );
    }
}
