//! The access tokens the operator holds, in memory only, one per connection: reused until
//! shortly before they expire, refreshed once when several reconciles need one at the same time;
//! with each, the OAuth user behind it, read once per origin (the user behind a refresh token
//! cannot change).

use crate::sync::LockExt as _;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::servicenow::{SecretString, User};

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
    /// The OAuth user behind the token, once read: kept across refreshes of the same origin.
    pub user: Option<User>,
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
    /// The last reconnect request (`neoagent.io/reconnect`) each connection's token was
    /// forgotten for.
    reconnects: Mutex<HashMap<String, String>>,
}

impl TokenCache {
    /// The slot of `key`; hold its lock while checking and refreshing.
    pub fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<AccessToken>>> {
        let mut slots = self.slots.locked();
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// Keeps `user` with the token of `key`, if the slot still holds `access_token`.
    pub async fn remember_user(&self, key: &str, access_token: &SecretString, user: &User) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some(token) = cached
            .as_mut()
            .filter(|token| token.token.expose() == access_token.expose())
        {
            token.user = Some(user.clone());
        }
    }

    /// Forgets the token of `key` (rejected token, re-consent).
    pub fn forget(&self, key: &str) {
        self.slots.locked().remove(key);
    }

    /// Forgets the token of `key` for the reconnect request `request`, once: the retries of a
    /// reconnect that failed half-way reuse the token its first attempt obtained.
    pub fn forget_for_reconnect(&self, key: &str, request: &str) {
        let mut handled = self.reconnects.locked();
        if handled.get(key).is_some_and(|last| last == request) {
            return;
        }
        handled.insert(key.to_owned(), request.to_owned());
        drop(handled);
        self.forget(key);
    }

    /// Forgets everything about `key` (a deleted connection).
    pub fn remove(&self, key: &str) {
        self.forget(key);
        self.reconnects.locked().remove(key);
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
            user: None,
        };
        assert!(token.is_fresh(now));
        assert!(!token.is_fresh(now + Duration::from_secs(31)));
    }

    #[test]
    fn a_reconnect_request_forgets_the_token_once() {
        let cache = TokenCache::default();
        let store = |cache: &TokenCache| {
            *cache.slot("itsm/acme").try_lock().expect("free") = Some(AccessToken {
                token: SecretString::new("t"),
                expires_at: Instant::now() + Duration::from_secs(1800),
                origin: String::new(),
                user: None,
            });
        };
        let held = |cache: &TokenCache| cache.slot("itsm/acme").try_lock().expect("free").is_some();
        store(&cache);
        cache.forget_for_reconnect("itsm/acme", "1");
        assert!(!held(&cache), "the first sight of a request forgets the token");
        store(&cache);
        cache.forget_for_reconnect("itsm/acme", "1");
        assert!(held(&cache), "a retry of the same request keeps the new token");
        cache.forget_for_reconnect("itsm/acme", "2");
        assert!(!held(&cache), "a new request forgets it again");
        store(&cache);
        cache.remove("itsm/acme");
        assert!(!held(&cache));
        store(&cache);
        cache.forget_for_reconnect("itsm/acme", "2");
        assert!(
            !held(&cache),
            "a connection created again under the same name starts afresh"
        );
    }

    #[tokio::test]
    async fn the_user_is_kept_with_the_token_it_was_read_with_only() {
        let cache = TokenCache::default();
        let user = User {
            sys_id: "u1".into(),
            user_name: "neo.agent".into(),
            display_name: String::new(),
        };
        let (t1, t2) = (SecretString::new("t1"), SecretString::new("t2"));
        cache.remember_user("itsm/acme", &t1, &user).await;
        assert!(cache.slot("itsm/acme").lock().await.is_none(), "no token, nothing kept");
        *cache.slot("itsm/acme").lock().await = Some(AccessToken {
            token: t1.clone(),
            expires_at: Instant::now() + Duration::from_secs(1800),
            origin: "o1".into(),
            user: None,
        });
        cache.remember_user("itsm/acme", &t2, &user).await;
        let kept = |cache: &TokenCache| {
            cache
                .slot("itsm/acme")
                .try_lock()
                .expect("free")
                .as_ref()
                .and_then(|t| t.user.clone())
        };
        assert_eq!(kept(&cache), None, "another token (replaced meanwhile)");
        cache.remember_user("itsm/acme", &t1, &user).await;
        assert_eq!(kept(&cache), Some(user));
    }

    #[test]
    fn the_origin_changes_with_the_refresh_token() {
        assert_ne!(
            origin("c", &SecretString::new("a")),
            origin("c", &SecretString::new("b"))
        );
    }
}
