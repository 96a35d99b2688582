//! Access tokens kept in memory and reused until shortly before they expire, keyed by
//! (instance host, client id, refresh token) — the two last as fingerprints, never as values.
//! A refresh is single-flight per key: callers arriving while one runs wait for its result.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use super::{ClientCredentials, Error, InstanceUrl, SecretString, ServiceNow, TokenGrant};

/// The longest a token is refreshed ahead of its expiry; short-lived tokens are refreshed a
/// tenth of their lifetime ahead instead.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// An access token and when it stops being used.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The token.
    pub token: SecretString,
    /// When it was obtained.
    pub obtained_at: Instant,
    /// When the instance stops accepting it.
    pub expires_at: Instant,
    /// When it is replaced: [`REFRESH_AHEAD`] (or a tenth of its lifetime, if less) before
    /// `expires_at`.
    pub refresh_at: Instant,
    /// The refresh token the grant carried (the one sent, when the instance left it out); the
    /// caller stores it if it changed.
    pub refresh_token: Option<SecretString>,
}

impl AccessToken {
    /// The token of `grant`, obtained at `now`.
    pub fn new(grant: TokenGrant, now: Instant) -> Self {
        let ahead = REFRESH_AHEAD.min(grant.expires_in / 10);
        let expires_at = now + grant.expires_in;
        AccessToken {
            token: grant.access_token,
            obtained_at: now,
            expires_at,
            refresh_at: expires_at - ahead,
            refresh_token: grant.refresh_token,
        }
    }

    /// `true` while the token is used as it is.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }
}

/// What a cached token is for. Shows nothing secret: the client id and refresh token enter as
/// SHA-256 fingerprints.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    host: String,
    client_id: [u8; 16],
    refresh_token: [u8; 16],
}

impl SessionKey {
    /// The key of tokens for `instance`, obtained with `credentials` and `refresh_token`.
    pub fn new(instance: &InstanceUrl, credentials: &ClientCredentials, refresh_token: &SecretString) -> Self {
        SessionKey {
            host: instance.host().to_owned(),
            client_id: fingerprint(b"client id", credentials.client_id.expose()),
            refresh_token: fingerprint(b"refresh token", refresh_token.expose()),
        }
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

fn fingerprint(label: &[u8], value: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(label)
        .chain_update(b"\0")
        .chain_update(value.as_bytes())
        .finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

type Slot = Arc<tokio::sync::Mutex<Option<AccessToken>>>;

/// The token cache. `Send + Sync`; clones share the cache.
#[derive(Clone, Default)]
pub struct Sessions {
    slots: Arc<Mutex<HashMap<SessionKey, Slot>>>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions").field("keys", &self.lock().len()).finish()
    }
}

impl Sessions {
    /// An empty cache.
    pub fn new() -> Self {
        Sessions::default()
    }

    /// A fresh access token for `instance`: the cached one, or one from the `refresh_token`
    /// grant through `servicenow`.
    pub async fn access_token<S: ServiceNow>(
        &self,
        servicenow: &S,
        instance: &InstanceUrl,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<AccessToken, Error> {
        let key = SessionKey::new(instance, credentials, refresh_token);
        self.get_or_refresh(key, || servicenow.refresh_token(instance, credentials, refresh_token))
            .await
    }

    /// The cached token of `key` while fresh; otherwise runs `refresh` (once, however many
    /// callers wait) and caches its grant. A failed refresh caches nothing.
    pub async fn get_or_refresh<F, Fut>(&self, key: SessionKey, refresh: F) -> Result<AccessToken, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<TokenGrant, Error>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|token| token.is_fresh(Instant::now())) {
            return Ok(token.clone());
        }
        let token = AccessToken::new(refresh().await?, Instant::now());
        *cached = Some(token.clone());
        Ok(token)
    }

    /// When the cached token of `key` expires, if one is cached.
    pub fn expires_at(&self, key: &SessionKey) -> Option<Instant> {
        let slot = self.lock().get(key).cloned()?;
        let cached = slot.try_lock().ok()?;
        cached.as_ref().map(|token| token.expires_at)
    }

    /// Drops the token of `key` (rejected by the instance, connection deleted, reconnect).
    pub fn forget(&self, key: &SessionKey) {
        self.lock().remove(key);
    }

    fn slot(&self, key: SessionKey) -> Slot {
        let mut slots = self.lock();
        let now = Instant::now();
        // Drop the slots of tokens past their expiry that nobody is using.
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .try_lock()
                    .map(|token| token.as_ref().is_some_and(|t| t.expires_at > now))
                    .unwrap_or(true)
        });
        slots.entry(key).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn key(refresh_token: &str) -> SessionKey {
        let instance = InstanceUrl::parse("https://acme.service-now.com").unwrap();
        let credentials = ClientCredentials {
            client_id: SecretString::new("id"),
            client_secret: SecretString::new("secret"),
        };
        SessionKey::new(&instance, &credentials, &SecretString::new(refresh_token))
    }

    fn grant(token: &str, seconds: u64) -> TokenGrant {
        TokenGrant {
            access_token: SecretString::new(token),
            refresh_token: None,
            expires_in: Duration::from_secs(seconds),
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_refresh_and_then_the_cached_token() {
        let sessions = Sessions::new();
        let refreshes = AtomicUsize::new(0);
        let refresh = || async {
            refreshes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(grant("at-1", 1800))
        };
        let (a, b, c) = tokio::join!(
            sessions.get_or_refresh(key("rt"), refresh),
            sessions.get_or_refresh(key("rt"), refresh),
            sessions.get_or_refresh(key("rt"), refresh),
        );
        for token in [a, b, c] {
            assert_eq!(token.unwrap().token.expose(), "at-1");
        }
        assert_eq!(refreshes.load(Ordering::SeqCst), 1);
        assert!(sessions.expires_at(&key("rt")).is_some());
    }

    #[tokio::test]
    async fn another_refresh_token_gets_its_own_access_token() {
        let sessions = Sessions::new();
        sessions
            .get_or_refresh(key("rt-1"), || async { Ok(grant("at-1", 1800)) })
            .await
            .unwrap();
        let token = sessions
            .get_or_refresh(key("rt-2"), || async { Ok(grant("at-2", 1800)) })
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "at-2");
    }

    #[tokio::test]
    async fn a_token_near_its_expiry_is_refreshed_and_a_forgotten_one_too() {
        let sessions = Sessions::new();
        // 5 s of life: refreshed half a second ahead, so usable now.
        sessions
            .get_or_refresh(key("rt"), || async { Ok(grant("short", 5)) })
            .await
            .unwrap();
        let token = sessions
            .get_or_refresh(key("rt"), || async { Ok(grant("unused", 5)) })
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "short");
        // 0 s of life: stale at once.
        sessions.forget(&key("rt"));
        sessions
            .get_or_refresh(key("rt"), || async { Ok(grant("dead", 0)) })
            .await
            .unwrap();
        let token = sessions
            .get_or_refresh(key("rt"), || async { Ok(grant("next", 1800)) })
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "next");
    }

    #[test]
    fn the_refresh_happens_a_minute_ahead_or_a_tenth_of_a_short_lifetime() {
        let now = Instant::now();
        let long = AccessToken::new(grant("a", 1800), now);
        assert_eq!(long.expires_at - long.refresh_at, Duration::from_secs(60));
        let short = AccessToken::new(grant("b", 100), now);
        assert_eq!(short.expires_at - short.refresh_at, Duration::from_secs(10));
    }

    #[test]
    fn the_key_shows_no_secret() {
        let shown = format!("{:?}", key("refresh-token-value"));
        assert!(
            !shown.contains("refresh-token-value") && !shown.contains("id\""),
            "{shown}"
        );
    }
}
