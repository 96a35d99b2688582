//! Which connection a callback names, and its webhook signing keys (the Secret `<name>-webhook`).
//! Both are read through the API by whichever replica got the request and kept a few seconds; a
//! signature that no kept key checks makes the receiver read again (at most once a second per
//! connection), so a rotated key works at once and a removed one stops within [`TTL`].
//!
//! What exists and what does not are kept apart: a name that names no connection is remembered
//! among at most [`MAX_UNKNOWN`] others (forgotten all at once when full), so junk names cannot
//! push the real connections out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::Api;

use crate::{
    api::ServiceNowConnection,
    secrets::{self, WebhookKeys},
    sync::LockExt as _,
};

/// How long what was read (a connection and its token, or their absence) is trusted.
pub const TTL: Duration = Duration::from_secs(5);
/// How old what was read must be before a signature that no kept key checks makes the receiver
/// read again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Most names of no connection remembered; past this they are all forgotten.
pub const MAX_UNKNOWN: usize = 4096;

/// What the receiver needs of a connection whose token matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `<namespace>/<name>`.
    pub key: String,
    /// `spec.instanceUrl`.
    pub instance_url: String,
    /// Its host, as [`event::host_of`](super::event::host_of) gives it (what an event's
    /// `instance` is compared with).
    pub instance_host: Option<String>,
    /// `spec.webhook.sinkUrl`.
    pub sink_url: Option<String>,
}

/// Why a callback is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No such connection (or one this operator does not watch), no signing key, or a signature
    /// no usable key made.
    #[error("unknown connection or wrong signature")]
    Unauthorized,
    /// The API server could not say.
    #[error("failed to read the connection or its webhook Secret: {0}")]
    Unavailable(#[source] kube::Error),
}

/// A connection and its keys, as read; shared, so that a request takes it from the cache without
/// copying its strings.
struct Known {
    target: Arc<Target>,
    keys: WebhookKeys,
}

/// An existing connection's keys, and when they were read.
struct Entry {
    read_at: Instant,
    known: Arc<Known>,
}

/// What was read lately: the connections that exist, and the names that name none.
#[derive(Default)]
struct Cache {
    known: HashMap<String, Entry>,
    unknown: HashMap<String, Instant>,
}

/// Finds connections and their keys, with a small cache.
pub struct Lookup {
    kube: kube::Client,
    namespaces: Vec<String>,
    cache: Mutex<Cache>,
}

impl Lookup {
    /// A lookup through `kube`; with `namespaces`, connections elsewhere are unknown (the
    /// operator watches only those namespaces; none: all).
    pub fn new(kube: kube::Client, namespaces: Vec<String>) -> Self {
        Lookup {
            kube,
            namespaces,
            cache: Mutex::default(),
        }
    }

    /// The connection `connection` (`<namespace>/<name>`) when `accepts` takes its keys (when one
    /// of them made the request's signature).
    pub async fn authenticate(
        &self,
        connection: Option<&str>,
        accepts: impl Fn(&WebhookKeys) -> bool,
    ) -> Result<Arc<Target>, Refused> {
        let Some((namespace, name)) = connection.and_then(crate::api::split_key) else {
            return Err(Refused::Unauthorized);
        };
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|watched| watched == namespace) {
            return Err(Refused::Unauthorized);
        }
        let key = format!("{namespace}/{name}");
        let now = Instant::now();
        match self.cached(&key, now) {
            Some((_, None)) => return Err(Refused::Unauthorized),
            Some((read_at, Some(known))) => {
                let verdict = check(Some(&*known), &accepts);
                if verdict.is_ok() || now.duration_since(read_at) < RECHECK_AFTER {
                    return verdict;
                }
            }
            None => {}
        }
        let known = self.read(namespace, name).await.map_err(Refused::Unavailable)?;
        let verdict = check(known.as_deref(), &accepts);
        self.keep(key, now, known);
        verdict
    }

    /// What is kept of `key` and still fresh: when it was read and the connection (`None`: it
    /// names no connection).
    fn cached(&self, key: &str, now: Instant) -> Option<(Instant, Option<Arc<Known>>)> {
        let cache = self.cache.locked();
        let fresh = |read_at: &Instant| now.duration_since(*read_at) < TTL;
        if let Some(entry) = cache.known.get(key).filter(|entry| fresh(&entry.read_at)) {
            return Some((entry.read_at, Some(entry.known.clone())));
        }
        cache
            .unknown
            .get(key)
            .filter(|read_at| fresh(read_at))
            .map(|read_at| (*read_at, None))
    }

    fn keep(&self, key: String, read_at: Instant, known: Option<Arc<Known>>) {
        let mut cache = self.cache.locked();
        match known {
            Some(known) => {
                cache.unknown.remove(&key);
                cache.known.insert(key, Entry { read_at, known });
            }
            None => {
                cache.known.remove(&key);
                if cache.unknown.len() >= MAX_UNKNOWN {
                    cache.unknown.clear();
                }
                cache.unknown.insert(key, read_at);
            }
        }
    }

    async fn read(&self, namespace: &str, name: &str) -> Result<Option<Arc<Known>>, kube::Error> {
        let connections: Api<ServiceNowConnection> = Api::namespaced(self.kube.clone(), namespace);
        let Some(connection) = connections.get_opt(name).await? else {
            return Ok(None);
        };
        let secrets_api = secrets::Secrets::uncached(Api::namespaced(self.kube.clone(), namespace));
        let keys = secrets::read_webhook_keys(&secrets_api, &connection).await?;
        Ok(keys.map(|keys| {
            Arc::new(Known {
                target: Arc::new(Target {
                    key: crate::api::key(&connection),
                    instance_host: super::event::host_of(&connection.spec.instance_url),
                    instance_url: connection.spec.instance_url.clone(),
                    sink_url: connection.spec.webhook.sink_url.clone(),
                }),
                keys,
            })
        }))
    }
}

fn check(known: Option<&Known>, accepts: impl Fn(&WebhookKeys) -> bool) -> Result<Arc<Target>, Refused> {
    match known {
        Some(known) if accepts(&known.keys) => Ok(known.target.clone()),
        _ => Err(Refused::Unauthorized),
    }
}
