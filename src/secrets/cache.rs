//! Pure: the Secrets the reconciles read or wrote, each held with its `resourceVersion` and
//! trusted only while that is the latest version the Secret watch has seen — so a steady-state
//! reconcile reads no Secret from the API server, and none concludes from a value older than
//! the watch's.
//!
//! Three maps, kept in step with the metadata watch of Secrets ([`SecretCache::observe`]):
//! the latest `resourceVersion` the watch has seen of each Secret (forgotten on delete; a
//! re-list replaces them all once complete); the last value a reconcile read or wrote of each
//! (dropped as soon as the watch sees another version); and the version each connection last
//! concluded from, so that a watch event for a version a connection already used — its own
//! write, or a value it read before the event came — need not wake it ([`SecretCache::stale_readers`]).
//! While a reconcile writes a Secret, the watch may bring the write back before its answer does:
//! such events are held for that connection ([`SecretCache::begin_write`]) and compared with
//! the version written once it is known ([`SecretCache::end_write`]) — only another version
//! means someone else changed the Secret meanwhile.
//!
//! A value is held stripped to what the reconcile needs: its name, version, uid, labels and
//! owner references (so [`super::ownership`] still judges a cached Secret) and its data — for
//! the user's credentials Secret only the two credential keys. Nothing here is ever logged:
//! [`SecretCache`]'s `Debug` shows counts only.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    api::ObjectMeta,
    core::PartialObjectMeta,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::api::ServiceNowConnection;

/// A Secret: namespace and name.
pub type Key = (String, String);

/// The Secrets read or written by reconciles, and what the watch has seen of them.
#[derive(Default)]
pub struct SecretCache {
    /// The latest `resourceVersion` the watch has seen of each Secret.
    watched: HashMap<Key, String>,
    /// The versions of each re-list in progress, by the namespace its watch covers (`None`: all
    /// namespaces): they replace that namespace's part of `watched` once it is complete.
    relists: HashMap<Option<String>, HashMap<Key, String>>,
    /// The last value read or written of each Secret.
    values: HashMap<Key, Held>,
    /// The version of each Secret each connection (by name, in the Secret's namespace) last
    /// concluded from: (connection, version), by connection. A Secret has one reader or a few,
    /// so a small vector rather than a tree of its own (whose first node alone is 500 bytes).
    used: HashMap<Key, Vec<(String, String)>>,
    /// The writes in flight: for each Secret, the connections writing it and the versions the
    /// watch brought since each began (`None`: a deletion).
    writing: HashMap<Key, BTreeMap<String, Vec<Option<String>>>>,
    /// The scopes (a namespace, `None`: all) whose first list is complete: what `watched` lacks
    /// of them did not exist when the watch last looked.
    listed: BTreeSet<Option<String>>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("watched", &self.watched.len())
            .field("values", &self.values.len())
            .finish_non_exhaustive()
    }
}

fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl SecretCache {
    /// Follows one event of the Secret metadata watch of `namespace` (`None`: all namespaces).
    pub fn observe(&mut self, namespace: Option<&str>, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        match event {
            watcher::Event::Apply(secret) => {
                let key = key_of(&secret.metadata);
                let version = secret.metadata.resource_version.clone().unwrap_or_default();
                self.drop_unless(&key, &version);
                self.watched.insert(key, version);
            }
            watcher::Event::Delete(secret) => {
                let key = key_of(&secret.metadata);
                self.watched.remove(&key);
                self.values.remove(&key);
                self.used.remove(&key);
            }
            watcher::Event::Init => {
                self.relists.insert(namespace.map(str::to_owned), HashMap::new());
            }
            watcher::Event::InitApply(secret) => {
                let version = secret.metadata.resource_version.clone().unwrap_or_default();
                self.relists
                    .entry(namespace.map(str::to_owned))
                    .or_default()
                    .insert(key_of(&secret.metadata), version);
            }
            watcher::Event::InitDone => {
                self.listed.insert(namespace.map(str::to_owned));
                let listed = self.relists.remove(&namespace.map(str::to_owned)).unwrap_or_default();
                self.watched
                    .retain(|(secret_namespace, _), _| namespace.is_some_and(|scope| scope != secret_namespace));
                self.watched.extend(listed);
                let watched = &self.watched;
                self.values
                    .retain(|key, value| watched.get(key) == Some(&value.version));
                self.used.retain(|key, _| watched.contains_key(key));
            }
        }
    }

    /// Drops the value held of `key` unless it is at `version`.
    fn drop_unless(&mut self, key: &Key, version: &str) {
        if self.values.get(key).is_some_and(|value| value.version != version) {
            self.values.remove(key);
        }
    }

    /// The value of `key` when the one held is at the latest version the watch has seen.
    pub fn get(&self, key: &Key) -> Option<Secret> {
        let watched = self.watched.get(key)?;
        self.values
            .get(key)
            .filter(|value| &value.version == watched)
            .map(|value| value.secret(key))
    }

    /// Whether nothing has seen the Secret `key`: its namespace was listed, and neither the
    /// watch since, nor a read or a write of a reconcile, nor a write in flight knows of it. A
    /// Secret created a moment ago may still be on its way: only a Secret whose create would be
    /// refused (409) if it existed may be taken as absent on this alone.
    pub fn unseen(&self, key: &Key) -> bool {
        self.listed
            .iter()
            .any(|scope| scope.as_deref().is_none_or(|namespace| namespace == key.0))
            && !self.watched.contains_key(key)
            && !self.values.contains_key(key)
            && !self.writing.contains_key(key)
    }

    /// Records what `connection` read (`None`: no such Secret) or wrote of `key`: it concluded
    /// from that version, which is held (stripped to `keep`'s data keys, or all of them) to be
    /// used again once — and as long as — it is the version the watch has seen.
    pub fn remember(&mut self, key: &Key, connection: &str, secret: Option<&Secret>, keep: Option<&[&str]>) {
        let Some(secret) = secret else {
            self.values.remove(key);
            if let Some(used) = self.used.get_mut(key) {
                used.retain(|(reader, _)| reader != connection);
            }
            return;
        };
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        let used = self.used.entry(key.clone()).or_default();
        match used.iter_mut().find(|(reader, _)| reader == connection) {
            Some((_, used)) => used.clone_from(&version),
            None => used.push((connection.to_owned(), version)),
        }
        self.values.insert(key.clone(), Held::of(secret, keep));
    }

    /// Of `readers` (the connections that read the Secret `meta` names), those that have not
    /// concluded from its version `meta` carries: the ones to wake. A reader writing the Secret
    /// is not woken: the version is held for [`SecretCache::end_write`].
    pub fn stale_readers(
        &mut self,
        meta: &ObjectMeta,
        readers: Vec<ObjectRef<ServiceNowConnection>>,
    ) -> Vec<ObjectRef<ServiceNowConnection>> {
        let key = key_of(meta);
        let used = self.used.get(&key);
        let mut writing = self.writing.get_mut(&key);
        readers
            .into_iter()
            .filter(|reader| {
                if let Some(seen) = writing.as_mut().and_then(|writing| writing.get_mut(&reader.name)) {
                    seen.push(meta.resource_version.clone());
                    return false;
                }
                match &meta.resource_version {
                    Some(version) => !used.is_some_and(|used| {
                        used.iter()
                            .any(|(used_by, used)| used_by == &reader.name && used == version)
                    }),
                    None => true,
                }
            })
            .collect()
    }

    /// `connection` starts writing the Secret `key`: watch events for it are held from now until
    /// [`SecretCache::end_write`].
    pub fn begin_write(&mut self, key: &Key, connection: &str) {
        self.writing
            .entry(key.clone())
            .or_default()
            .insert(connection.to_owned(), Vec::new());
    }

    /// `connection`'s write of `key` ended, having written `written` (`None`: it failed): `true`
    /// when the watch brought another version meanwhile — a change by someone else, which the
    /// connection must look at again.
    pub fn end_write(&mut self, key: &Key, connection: &str, written: Option<&str>) -> bool {
        let Some(writers) = self.writing.get_mut(key) else {
            return false;
        };
        let seen = writers.remove(connection).unwrap_or_default();
        if writers.is_empty() {
            self.writing.remove(key);
        }
        seen.iter()
            .any(|version| version.as_deref() != written || written.is_none())
    }

    /// Forgets what the connection `name` in `namespace` used (a deleted connection).
    pub fn forget_connection(&mut self, namespace: &str, name: &str) {
        self.used.retain(|(secret_namespace, _), used| {
            if secret_namespace == namespace {
                used.retain(|(reader, _)| reader != name);
            }
            !used.is_empty()
        });
    }
}

/// A Secret as held: what a reconcile uses of it — its version, uid, labels and owner
/// references (what [`super::ownership`] judges) and its data, of the user's credentials Secret
/// only the two credential keys — without the rest of a `Secret` (its name and namespace are the
/// key): a whole `Secret` is some 500 bytes before any of its strings, held three times per
/// connection.
#[derive(Clone, Debug)]
struct Held {
    version: String,
    uid: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    data: Option<BTreeMap<String, ByteString>>,
}

impl Held {
    /// `secret` with only what a reconcile uses of it: the data keys of `keep` (all when `None`).
    fn of(secret: &Secret, keep: Option<&[&str]>) -> Held {
        let meta = &secret.metadata;
        Held {
            version: meta.resource_version.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            labels: meta.labels.clone(),
            owner_references: meta.owner_references.clone(),
            data: secret.data.as_ref().map(|data| {
                data.iter()
                    .filter(|(key, _)| keep.is_none_or(|keep| keep.contains(&key.as_str())))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            }),
        }
    }

    /// The Secret `key` as held.
    fn secret(&self, (namespace, name): &Key) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                resource_version: Some(self.version.clone()),
                uid: self.uid.clone(),
                labels: self.labels.clone(),
                owner_references: self.owner_references.clone(),
                ..ObjectMeta::default()
            },
            data: self.data.clone(),
            ..Secret::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn meta(name: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("a".into()),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
    }

    fn event(name: &str, version: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            metadata: meta(name, version),
            ..PartialObjectMeta::default()
        }
    }

    fn secret(name: &str, version: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([("big".into(), "x".repeat(1000))])),
                ..meta(name, version)
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn key(name: &str) -> Key {
        ("a".into(), name.into())
    }

    fn version(cache: &SecretCache, name: &str) -> Option<String> {
        cache.get(&key(name)).and_then(|s| s.metadata.resource_version)
    }

    #[test]
    fn a_value_is_used_only_at_the_version_the_watch_has_seen_last() {
        let mut cache = SecretCache::default();
        cache.remember(&key("s"), "acme", Some(&secret("s", "5", &[])), None);
        assert_eq!(version(&cache, "s"), None, "the watch has not seen it: read again");
        cache.observe(None, &watcher::Event::Apply(event("s", "5")));
        assert_eq!(version(&cache, "s").as_deref(), Some("5"));
        cache.observe(None, &watcher::Event::Apply(event("s", "6")));
        assert_eq!(version(&cache, "s"), None, "changed by someone else: read again");
        assert!(cache.values.is_empty(), "the older value is dropped");
        // A read that returns an older version than the watch's is never trusted later.
        cache.remember(&key("s"), "acme", Some(&secret("s", "5", &[])), None);
        assert_eq!(version(&cache, "s"), None);
        cache.remember(&key("s"), "acme", Some(&secret("s", "6", &[])), None);
        assert_eq!(version(&cache, "s").as_deref(), Some("6"));
        cache.observe(None, &watcher::Event::Delete(event("s", "6")));
        assert_eq!(version(&cache, "s"), None);
        assert!(cache.values.is_empty() && cache.used.is_empty() && cache.watched.is_empty());
    }

    #[test]
    fn a_secret_is_unseen_only_once_its_namespace_was_listed_and_while_nothing_knows_of_it() {
        let mut cache = SecretCache::default();
        assert!(
            !cache.unseen(&key("w")),
            "nothing listed yet: the watch may not have looked"
        );
        cache.observe(Some("b"), &watcher::Event::Init);
        cache.observe(Some("b"), &watcher::Event::InitDone);
        assert!(!cache.unseen(&key("w")), "another namespace was listed, not this one");
        cache.observe(Some("a"), &watcher::Event::Init);
        assert!(!cache.unseen(&key("w")), "the list is not complete");
        cache.observe(Some("a"), &watcher::Event::InitApply(event("listed", "1")));
        cache.observe(Some("a"), &watcher::Event::InitDone);
        assert!(cache.unseen(&key("w")));
        assert!(!cache.unseen(&key("listed")), "the list had it");
        // A write in flight, then its value, then the watch: each knows of it.
        cache.begin_write(&key("w"), "acme");
        assert!(!cache.unseen(&key("w")), "being written");
        cache.end_write(&key("w"), "acme", Some("4"));
        assert!(
            cache.unseen(&key("w")),
            "the write failed, or its answer is not remembered yet"
        );
        cache.remember(&key("w"), "acme", Some(&secret("w", "4", &[])), None);
        assert!(
            !cache.unseen(&key("w")),
            "written by a reconcile, the watch not there yet"
        );
        cache.observe(Some("a"), &watcher::Event::Apply(event("w", "4")));
        cache.remember(&key("w"), "acme", None, None);
        assert!(!cache.unseen(&key("w")), "the watch has it");
        cache.observe(Some("a"), &watcher::Event::Delete(event("w", "4")));
        assert!(cache.unseen(&key("w")), "deleted");
        // A watch of all namespaces covers every one.
        let mut all = SecretCache::default();
        all.observe(None, &watcher::Event::Init);
        all.observe(None, &watcher::Event::InitDone);
        assert!(all.unseen(&key("w")) && all.unseen(&("z".into(), "w".into())));
    }

    #[test]
    fn a_write_seen_back_by_the_watch_stays_usable() {
        let mut cache = SecretCache::default();
        cache.observe(None, &watcher::Event::Apply(event("t", "5")));
        cache.remember(&key("t"), "acme", Some(&secret("t", "9", &[])), None);
        assert_eq!(version(&cache, "t"), None, "until the watch sees the write");
        cache.observe(None, &watcher::Event::Apply(event("t", "9")));
        assert_eq!(version(&cache, "t").as_deref(), Some("9"));
        // Read back as absent: nothing held.
        cache.remember(&key("t"), "acme", None, None);
        assert_eq!(version(&cache, "t"), None);
    }

    #[test]
    fn a_relist_forgets_what_it_does_not_list_and_what_changed() {
        let mut cache = SecretCache::default();
        for (name, v) in [("kept", "1"), ("changed", "2"), ("gone", "3")] {
            cache.observe(None, &watcher::Event::Apply(event(name, v)));
            cache.remember(&key(name), "acme", Some(&secret(name, v, &[])), None);
        }
        cache.observe(None, &watcher::Event::Init);
        cache.observe(None, &watcher::Event::InitApply(event("kept", "1")));
        cache.observe(None, &watcher::Event::InitApply(event("changed", "7")));
        assert_eq!(
            version(&cache, "gone").as_deref(),
            Some("3"),
            "until the relist completes"
        );
        cache.observe(None, &watcher::Event::InitDone);
        assert_eq!(version(&cache, "kept").as_deref(), Some("1"));
        assert_eq!(version(&cache, "changed"), None);
        assert_eq!(version(&cache, "gone"), None);
        assert_eq!(cache.values.len(), 1);
        assert!(!cache.used.contains_key(&key("gone")));
    }

    #[test]
    fn a_relist_of_one_namespace_leaves_the_others_be() {
        let mut cache = SecretCache::default();
        let other = ("b".to_owned(), "s".to_owned());
        let mut elsewhere = event("s", "1");
        elsewhere.metadata.namespace = Some("b".into());
        cache.observe(Some("b"), &watcher::Event::Apply(elsewhere));
        cache.remember(&other, "acme", Some(&secret("s", "1", &[])), None);
        cache.observe(Some("a"), &watcher::Event::Init);
        cache.observe(Some("a"), &watcher::Event::InitApply(event("s", "2")));
        cache.observe(Some("a"), &watcher::Event::InitDone);
        assert_eq!(cache.watched.get(&other).map(String::as_str), Some("1"));
        assert_eq!(version(&cache, "s"), None, "held for b, not a");
        cache.observe(None, &watcher::Event::Init);
        cache.observe(None, &watcher::Event::InitDone);
        assert!(
            cache.watched.is_empty(),
            "a relist of all namespaces replaces everything"
        );
    }

    #[test]
    fn only_readers_that_did_not_conclude_from_a_version_are_woken_by_it() {
        let mut cache = SecretCache::default();
        let readers = || vec![ObjectRef::new("acme").within("a"), ObjectRef::new("beta").within("a")];
        let woken = |cache: &mut SecretCache, v: &str| -> Vec<String> {
            cache
                .stale_readers(&meta("shared", v), readers())
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert_eq!(woken(&mut cache, "4"), ["acme", "beta"]);
        cache.remember(&key("shared"), "acme", Some(&secret("shared", "4", &[])), None);
        assert_eq!(woken(&mut cache, "4"), ["beta"], "acme wrote or read version 4 already");
        assert_eq!(woken(&mut cache, "5"), ["acme", "beta"], "a newer version wakes both");
        let mut unversioned = meta("shared", "4");
        unversioned.resource_version = None;
        assert_eq!(cache.stale_readers(&unversioned, readers()).len(), 2);
        cache.forget_connection("a", "acme");
        assert_eq!(woken(&mut cache, "4"), ["acme", "beta"]);
        assert!(cache.used.is_empty());
        // Each reader's version is its own: a newer one replaces it, an absence forgets it.
        cache.remember(&key("shared"), "acme", Some(&secret("shared", "4", &[])), None);
        cache.remember(&key("shared"), "beta", Some(&secret("shared", "4", &[])), None);
        cache.remember(&key("shared"), "acme", Some(&secret("shared", "6", &[])), None);
        assert_eq!(woken(&mut cache, "4"), ["acme"], "acme moved on to version 6");
        assert_eq!(woken(&mut cache, "6"), ["beta"]);
        cache.remember(&key("shared"), "beta", None, None);
        assert_eq!(woken(&mut cache, "6"), ["beta"], "beta read it as absent since");
        assert_eq!(woken(&mut cache, "4"), ["acme", "beta"]);
    }

    #[test]
    fn a_write_brought_back_before_its_answer_wakes_nobody_but_another_version_does() {
        let mut cache = SecretCache::default();
        let readers = || vec![ObjectRef::new("acme").within("a"), ObjectRef::new("beta").within("a")];
        let names = |woken: Vec<ObjectRef<ServiceNowConnection>>| -> Vec<String> {
            woken.into_iter().map(|r| r.name).collect()
        };
        // acme's own create comes back on the watch before its answer: held, not woken.
        cache.begin_write(&key("w"), "acme");
        assert_eq!(names(cache.stale_readers(&meta("w", "7"), readers())), ["beta"]);
        assert!(
            !cache.end_write(&key("w"), "acme", Some("7")),
            "only its own version came"
        );
        cache.remember(&key("w"), "acme", Some(&secret("w", "7", &[])), None);
        assert_eq!(names(cache.stale_readers(&meta("w", "7"), readers())), ["beta"]);
        assert!(cache.writing.is_empty());

        // Someone else's version arrives while acme writes: acme must look again.
        cache.begin_write(&key("w"), "acme");
        assert_eq!(names(cache.stale_readers(&meta("w", "8"), readers())), ["beta"]);
        assert_eq!(names(cache.stale_readers(&meta("w", "9"), readers())), ["beta"]);
        assert!(
            cache.end_write(&key("w"), "acme", Some("9")),
            "version 8 was not acme's"
        );

        // A failed write with events meanwhile: look again; without events: nothing to see.
        cache.begin_write(&key("w"), "acme");
        assert!(!cache.end_write(&key("w"), "acme", None));
        cache.begin_write(&key("w"), "acme");
        cache.stale_readers(&meta("w", "10"), readers());
        assert!(cache.end_write(&key("w"), "acme", None));
        assert!(!cache.end_write(&key("w"), "acme", Some("10")), "no write in flight");
        assert!(cache.writing.is_empty());
    }

    #[test]
    fn only_what_the_reconcile_needs_is_held() {
        let mut cache = SecretCache::default();
        let mut full = secret("c", "1", &[("clientId", "i"), ("clientSecret", "s"), ("ca.crt", "pem")]);
        full.metadata.uid = Some("0a1b".into());
        full.metadata.labels = Some(BTreeMap::from([("app".into(), "x".into())]));
        full.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "neoagent.io/v1alpha1".into(),
            kind: "ServiceNowConnection".into(),
            name: "acme".into(),
            uid: "9f8e".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        cache.remember(&key("c"), "acme", Some(&full), Some(&["clientId", "clientSecret"]));
        cache.observe(None, &watcher::Event::Apply(event("c", "1")));
        let held = cache.get(&key("c")).expect("held");
        assert_eq!(
            held.data.unwrap_or_default().keys().collect::<Vec<_>>(),
            ["clientId", "clientSecret"]
        );
        assert_eq!(held.metadata.annotations, None);
        // What ownership and the reconcile read of it stays: name, namespace, version, uid, labels.
        assert_eq!(held.metadata.name.as_deref(), Some("c"));
        assert_eq!(held.metadata.namespace.as_deref(), Some("a"));
        assert_eq!(held.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(held.metadata.uid.as_deref(), Some("0a1b"));
        assert_eq!(held.metadata.labels, full.metadata.labels);
        assert_eq!(held.metadata.owner_references, full.metadata.owner_references);
        assert_eq!(format!("{cache:?}"), "SecretCache { watched: 1, values: 1, .. }");
    }
}
