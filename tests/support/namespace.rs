//! A fresh `t-<random>` namespace per test, deleted on drop (and its contents dumped to the test
//! output when the test panicked).

use std::{collections::BTreeMap, process::Stdio};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use rand::Rng as _;

use super::control_plane::started_control_plane;

/// Label on every namespace this harness creates, to find leftovers: `kubectl get ns -l ...`.
pub const TEST_NAMESPACE_LABEL: &str = "servicenow-operator.test/harness";

/// A namespace of its own for one test: `t-<8 random characters>`, deleted when dropped.
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates the namespace; panics if the API server refuses.
    pub async fn new(client: &Client) -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let suffix: String = (0..8)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        let name = format!("t-{suffix}");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    TEST_NAMESPACE_LABEL.to_owned(),
                    "envtest".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|error| panic!("could not create test namespace {name}: {error}"));
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    /// Dumps the namespace when the test is failing, then asks for its deletion without waiting
    /// (the namespace controller takes at least 5 s; a `kubectl` child finishes the request even if
    /// this process exits first).
    fn drop(&mut self) {
        let Some(plane) = started_control_plane() else { return };
        if std::thread::panicking() {
            plane.dump_namespace(&self.name);
        }
        let deletion = plane
            .kubectl_command(&["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(error) = deletion {
            eprintln!("could not delete test namespace {}: {error}", self.name);
        }
    }
}
