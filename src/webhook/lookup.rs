//! Which connection a callback names, and whether its token is the one in the connection's
//! webhook Secret (`<name>-webhook`, key `token`). Both are read through the API by whichever
//! replica got the request and kept a few seconds; a token that does not match what is kept is
//! checked against the Secret again (at most once a second per connection), so a rotated token
//! works at once and the old one stops within [`TTL`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sha2::Sha256;

use crate::{api::ServiceNowConnection, secrets, servicenow::SecretString, sync::LockExt as _};

/// How long what was read (a connection and its token, or their absence) is trusted.
pub const TTL: Duration = Duration::from_secs(5);
/// How old what was read must be before a token that does not match makes the receiver read
/// again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Most connections kept; past this the expired ones are dropped, then all.
const MAX_ENTRIES: usize = 1024;
/// The HMAC key the token comparison uses (any fixed value serves; see [`same_token`]).
const COMPARISON_KEY: &[u8] = b"servicenow-operator webhook token comparison";

/// What the receiver needs of a connection whose token matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `<namespace>/<name>`.
    pub key: String,
    /// `spec.instanceUrl`.
    pub instance_url: String,
    /// `spec.webhook.sinkUrl`.
    pub sink_url: Option<String>,
}

/// Why a callback is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No such connection (or one this operator does not watch), no webhook token, or another
    /// token than the one given.
    #[error("unknown connection or wrong token")]
    Unauthorized,
    /// The API server could not say.
    #[error("failed to read the connection or its webhook Secret: {0}")]
    Unavailable(#[source] kube::Error),
}

/// A connection and its token, as read.
#[derive(Clone)]
struct Known {
    target: Target,
    token: SecretString,
}

/// What was read for one connection, and when.
struct Entry {
    read_at: Instant,
    /// `None`: no such connection, or it has no webhook token.
    known: Option<Known>,
}

/// Finds connections and checks tokens, with a small cache.
pub struct Lookup {
    kube: kube::Client,
    namespace: Option<String>,
    cache: Mutex<HashMap<String, Entry>>,
}

impl Lookup {
    /// A lookup through `kube`; with `namespace`, connections elsewhere are unknown (the
    /// operator watches only that namespace).
    pub fn new(kube: kube::Client, namespace: Option<String>) -> Self {
        Lookup {
            kube,
            namespace,
            cache: Mutex::default(),
        }
    }

    /// The connection `connection` (`<namespace>/<name>`) when `token` is its webhook token.
    pub async fn authenticate(
        &self,
        connection: Option<&str>,
        token: Option<&SecretString>,
    ) -> Result<Target, Refused> {
        let (Some((namespace, name)), Some(token)) = (
            connection.and_then(crate::api::split_key),
            token.filter(|token| !token.expose().is_empty()),
        ) else {
            return Err(Refused::Unauthorized);
        };
        if self.namespace.as_deref().is_some_and(|watched| watched != namespace) {
            return Err(Refused::Unauthorized);
        }
        let key = format!("{namespace}/{name}");
        let now = Instant::now();
        if let Some((read_at, known)) = self.cached(&key, now) {
            let verdict = check(known.as_ref(), token);
            if verdict.is_ok() || now.duration_since(read_at) < RECHECK_AFTER {
                return verdict;
            }
        }
        let known = self.read(namespace, name).await.map_err(Refused::Unavailable)?;
        let verdict = check(known.as_ref(), token);
        self.keep(key, Entry { read_at: now, known });
        verdict
    }

    fn cached(&self, key: &str, now: Instant) -> Option<(Instant, Option<Known>)> {
        let cache = self.cache.locked();
        cache
            .get(key)
            .filter(|entry| now.duration_since(entry.read_at) < TTL)
            .map(|entry| (entry.read_at, entry.known.clone()))
    }

    fn keep(&self, key: String, entry: Entry) {
        let mut cache = self.cache.locked();
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(&key) {
            cache.retain(|_, kept| kept.read_at.elapsed() < TTL);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, entry);
    }

    async fn read(&self, namespace: &str, name: &str) -> Result<Option<Known>, kube::Error> {
        let connections: Api<ServiceNowConnection> = Api::namespaced(self.kube.clone(), namespace);
        let Some(connection) = connections.get_opt(name).await? else {
            return Ok(None);
        };
        let secrets_api: Api<Secret> = Api::namespaced(self.kube.clone(), namespace);
        let token = secrets::read_webhook_token(&secrets_api, &secrets::webhook_secret_name(&connection)).await?;
        Ok(token.map(|token| Known {
            target: Target {
                key: crate::api::key(&connection),
                instance_url: connection.spec.instance_url.clone(),
                sink_url: connection.spec.webhook.sink_url.clone(),
            },
            token,
        }))
    }
}

fn check(known: Option<&Known>, token: &SecretString) -> Result<Target, Refused> {
    match known {
        Some(known) if same_token(&known.token, token) => Ok(known.target.clone()),
        _ => Err(Refused::Unauthorized),
    }
}

/// `true` when `given` is `expected`. Both go through HMAC-SHA256 under a fixed key and the tags
/// are compared with hmac's `verify_slice`, which is constant time (the `subtle` crate
/// underneath): no new dependency, and neither a matching prefix nor the token's length shows in
/// the time taken.
fn same_token(expected: &SecretString, given: &SecretString) -> bool {
    let tag = |token: &SecretString| {
        let mut mac = Hmac::<Sha256>::new_from_slice(COMPARISON_KEY).expect("HMAC takes a key of any length");
        mac.update(token.expose().as_bytes());
        mac
    };
    tag(given).verify_slice(&tag(expected).finalize().into_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_token_matches() {
        let token = SecretString::new("Jm3Qy1kz0rX2pW8vN4bT6cH9dL5fA7eS1gU3iO0qR2t");
        assert!(same_token(&token, &token.clone()));
        assert!(!same_token(
            &token,
            &SecretString::new("Jm3Qy1kz0rX2pW8vN4bT6cH9dL5fA7eS1gU3iO0qR2u")
        ));
        assert!(!same_token(&token, &SecretString::new("Jm3Qy1kz")));
        assert!(!same_token(&token, &SecretString::new("")));
    }
}
