//! Pure: which connections read a Secret, by the Secret's namespace and name — kept in step with
//! the connection watch's events, so mapping a Secret event to its connections is one lookup
//! instead of a scan of every connection (a cold start with N connections and 3N Secrets was
//! O(N²)).

use std::collections::HashMap;

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::{api::ServiceNowConnection, secrets};

/// A connection or a Secret: namespace and name.
type Key = (String, String);

/// Secret → the connections that read it (credentials, token or webhook Secret).
#[derive(Debug, Default)]
pub struct SecretIndex {
    /// Each connection's Secret names.
    names: HashMap<Key, [String; 3]>,
    /// Each Secret's connections (by name, in the Secret's namespace), sorted: one or a few, so a
    /// small vector rather than a tree of its own (whose first node alone is 300 bytes).
    readers: HashMap<Key, Vec<String>>,
    /// The connections of a relist in progress: they replace `names` once it is complete.
    relist: Option<HashMap<Key, [String; 3]>>,
}

/// The Secrets `connection` reads: credentials, token, webhook.
fn secret_names(connection: &ServiceNowConnection) -> [String; 3] {
    [
        connection.spec.credentials_secret_ref.name.clone(),
        secrets::token_secret_name(connection),
        secrets::webhook_secret_name(connection),
    ]
}

fn key(connection: &ServiceNowConnection) -> Key {
    (connection.namespace().unwrap_or_default(), connection.name_any())
}

impl SecretIndex {
    /// Follows one event of the connection watch (as the reflector store does: a relist
    /// replaces everything once it is complete).
    pub fn apply(&mut self, event: &watcher::Event<ServiceNowConnection>) {
        match event {
            watcher::Event::Apply(connection) => self.insert(key(connection), secret_names(connection)),
            watcher::Event::Delete(connection) => self.remove(&key(connection)),
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(connection) => {
                self.relist
                    .get_or_insert_default()
                    .insert(key(connection), secret_names(connection));
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.names.clear();
                self.readers.clear();
                for (connection, names) in listed {
                    self.insert(connection, names);
                }
            }
        }
    }

    /// The connections that read the Secret `name` in `namespace`.
    pub fn connections_using(&self, namespace: &str, name: &str) -> Vec<ObjectRef<ServiceNowConnection>> {
        self.readers
            .get(&(namespace.to_owned(), name.to_owned()))
            .into_iter()
            .flatten()
            .map(|connection| ObjectRef::new(connection).within(namespace))
            .collect()
    }

    fn insert(&mut self, connection: Key, names: [String; 3]) {
        self.remove(&connection);
        for name in &names {
            let readers = self.readers.entry((connection.0.clone(), name.clone())).or_default();
            if let Err(at) = readers.binary_search(&connection.1) {
                readers.insert(at, connection.1.clone());
            }
        }
        self.names.insert(connection, names);
    }

    fn remove(&mut self, connection: &Key) {
        let Some(names) = self.names.remove(connection) else {
            return;
        };
        for name in names {
            let secret = (connection.0.clone(), name);
            if let Some(readers) = self.readers.get_mut(&secret) {
                readers.retain(|reader| reader != &connection.1);
                if readers.is_empty() {
                    self.readers.remove(&secret);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LocalSecretReference, ServiceNowConnectionSpec};

    fn connection(namespace: &str, name: &str, credentials: &str, token: Option<&str>) -> ServiceNowConnection {
        let spec: ServiceNowConnectionSpec = serde_json::from_value(serde_json::json!({
            "instanceUrl": "https://acme.service-now.com",
            "credentialsSecretRef": {"name": credentials},
        }))
        .expect("a spec");
        let mut connection = ServiceNowConnection::new(
            name,
            ServiceNowConnectionSpec {
                token_secret_ref: token.map(|name| LocalSecretReference { name: name.into() }),
                ..spec
            },
        );
        connection.metadata.namespace = Some(namespace.into());
        connection
    }

    fn using(index: &SecretIndex, namespace: &str, name: &str) -> Vec<String> {
        index
            .connections_using(namespace, name)
            .into_iter()
            .map(|reference| format!("{}/{}", reference.namespace.unwrap_or_default(), reference.name))
            .collect()
    }

    #[test]
    fn each_secret_maps_to_the_connections_of_its_namespace_that_read_it() {
        let mut index = SecretIndex::default();
        index.apply(&watcher::Event::Apply(connection("a", "acme", "shared", None)));
        index.apply(&watcher::Event::Apply(connection(
            "a",
            "beta",
            "shared",
            Some("beta-t"),
        )));
        index.apply(&watcher::Event::Apply(connection("b", "acme", "shared", None)));
        assert_eq!(using(&index, "a", "shared"), ["a/acme", "a/beta"]);
        assert_eq!(using(&index, "a", "acme-token"), ["a/acme"]);
        assert_eq!(using(&index, "a", "beta-t"), ["a/beta"]);
        assert_eq!(using(&index, "a", "beta-token"), Vec::<String>::new());
        assert_eq!(using(&index, "a", "beta-webhook"), ["a/beta"]);
        assert_eq!(using(&index, "b", "shared"), ["b/acme"]);
        assert_eq!(using(&index, "c", "shared"), Vec::<String>::new());
    }

    #[test]
    fn a_changed_or_deleted_connection_stops_mapping_its_old_secrets() {
        let mut index = SecretIndex::default();
        index.apply(&watcher::Event::Apply(connection("a", "acme", "old", None)));
        index.apply(&watcher::Event::Apply(connection("a", "acme", "new", Some("kept"))));
        assert_eq!(using(&index, "a", "old"), Vec::<String>::new());
        assert_eq!(using(&index, "a", "acme-token"), Vec::<String>::new());
        assert_eq!(using(&index, "a", "new"), ["a/acme"]);
        assert_eq!(using(&index, "a", "kept"), ["a/acme"]);
        index.apply(&watcher::Event::Delete(connection("a", "acme", "new", Some("kept"))));
        assert_eq!(using(&index, "a", "new"), Vec::<String>::new());
        assert!(index.readers.is_empty() && index.names.is_empty(), "{index:?}");
    }

    #[test]
    fn a_relist_replaces_everything_once_complete() {
        let mut index = SecretIndex::default();
        index.apply(&watcher::Event::Apply(connection("a", "gone", "g", None)));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(connection("a", "acme", "c", None)));
        // Until the relist completes, the old state answers.
        assert_eq!(using(&index, "a", "g"), ["a/gone"]);
        assert_eq!(using(&index, "a", "c"), Vec::<String>::new());
        index.apply(&watcher::Event::InitDone);
        assert_eq!(using(&index, "a", "g"), Vec::<String>::new());
        assert_eq!(using(&index, "a", "c"), ["a/acme"]);
    }

    #[test]
    fn every_secret_of_a_cold_start_maps_to_its_one_connection() {
        // A cold start: N connections, then their 3N Secrets' events.
        let mut index = SecretIndex::default();
        let n = 2_000;
        for i in 0..n {
            index.apply(&watcher::Event::Apply(connection(
                "a",
                &format!("c{i}"),
                &format!("c{i}-oauth"),
                None,
            )));
        }
        let mapped: usize = (0..n)
            .flat_map(|i| [format!("c{i}-oauth"), format!("c{i}-token"), format!("c{i}-webhook")])
            .map(|secret| index.connections_using("a", &secret).len())
            .sum();
        assert_eq!(mapped, 3 * n);
    }
}
