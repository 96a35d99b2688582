//! The test harness itself against the real control plane: a client and kubectl reach the same API
//! server, and the controllers the tests rely on run (garbage collector, namespace deletion,
//! service accounts and their tokens).

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use support::{Observed, TestNamespace, control_plane, poll_until};

fn config_map(name: &str, owner_references: Option<Vec<OwnerReference>>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            owner_references,
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("key".to_owned(), "value".to_owned())])),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn the_garbage_collector_deletes_a_dependant_once_its_owner_is_gone() {
    let client = control_plane().await.client();
    let ns = TestNamespace::new(&client).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, ns.name());
    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .unwrap();
    let reference = OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ConfigMap".to_owned(),
        name: owner.name_any(),
        uid: owner.uid().expect("the API server sets a uid"),
        ..OwnerReference::default()
    };
    config_maps
        .create(&PostParams::default(), &config_map("dependant", Some(vec![reference])))
        .await
        .unwrap();

    config_maps.delete("owner", &DeleteParams::background()).await.unwrap();

    poll_until(
        Duration::from_secs(30),
        "the garbage collector to delete configmap dependant",
        || async {
            match config_maps.get_opt("dependant").await? {
                None => Ok::<_, kube::Error>(Observed::Done(())),
                Some(dependant) => Ok(Observed::not_yet(dependant.metadata.owner_references)),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn kubectl_and_the_client_talk_to_the_same_api_server() {
    let plane = control_plane().await;
    let version = plane
        .client()
        .apiserver_version()
        .await
        .expect("the client reaches the API server");
    assert_eq!(version.git_version, plane.server_version());
    assert!(
        version.git_version.starts_with("v1."),
        "a real version, not a placeholder: {version:?}"
    );

    let output = plane.kubectl(&["version", "--output=json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reported: serde_json::Value = serde_json::from_str(&stdout).expect("kubectl version prints JSON");
    assert_eq!(
        reported["serverVersion"]["gitVersion"], version.git_version,
        "kubectl version talks to another server:\n{stdout}"
    );
}

#[tokio::test]
async fn a_new_namespace_gets_a_default_service_account_with_a_working_token_controller() {
    let client = control_plane().await.client();
    let ns = TestNamespace::new(&client).await;
    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns.name());
    poll_until(Duration::from_secs(30), "the default ServiceAccount", || {
        service_accounts.get_opt("default")
    })
    .await;

    let secrets: Api<Secret> = Api::namespaced(client, ns.name());
    let token_request = Secret {
        metadata: ObjectMeta {
            name: Some("default-token".to_owned()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/service-account.name".to_owned(),
                "default".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/service-account-token".to_owned()),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &token_request).await.unwrap();
    poll_until(
        Duration::from_secs(30),
        "the token controller to fill in the token Secret",
        || async {
            let secret = secrets.get("default-token").await?;
            let keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
            Ok::<_, kube::Error>(
                if keys.iter().any(|k| k == "token") && keys.iter().any(|k| k == "ca.crt") {
                    Observed::Done(())
                } else {
                    Observed::not_yet(keys)
                },
            )
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_namespace_and_its_contents_disappear() {
    let client = control_plane().await.client();
    let ns = TestNamespace::new(&client).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    config_maps
        .create(&PostParams::default(), &config_map("content", None))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client);

    namespaces.delete(ns.name(), &DeleteParams::default()).await.unwrap();

    // The namespace controller waits a fixed 5 s grace period before it starts (Kubernetes 1.35).
    poll_until(
        Duration::from_secs(60),
        "the namespace controller to remove the namespace",
        || async {
            match namespaces.get_opt(ns.name()).await? {
                None => Ok::<_, kube::Error>(Observed::Done(())),
                Some(namespace) => Ok(Observed::not_yet(namespace.status)),
            }
        },
    )
    .await;
}
