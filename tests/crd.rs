//! The ServiceNowConnection API against a real kube-apiserver: the CRD installs, CEL validation
//! agrees with `InstanceUrl::parse` on the shared table, status is a subresource, and kubectl
//! shows the printer columns and the doc comments.

mod support;

use std::time::Duration;

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use servicenow_operator::{
    api::{LocalSecretReference, ServiceNowConnection, ServiceNowConnectionSpec},
    servicenow::{InstanceUrl, UrlRule},
};
use support::{TestNamespace, control_plane, install_crd, poll_until};

fn connection(name: &str, instance_url: &str) -> ServiceNowConnection {
    ServiceNowConnection::new(
        name,
        ServiceNowConnectionSpec {
            instance_url: instance_url.to_owned(),
            credentials_secret_ref: LocalSecretReference {
                name: "acme-oauth".to_owned(),
            },
            token_secret_ref: None,
            webhook: Default::default(),
            expected_user_name: None,
            notifications: Default::default(),
            deletion_policy: Default::default(),
            suspend: false,
            resync_interval: "10m".to_owned(),
        },
    )
}

#[tokio::test]
async fn the_crd_installs_and_a_valid_connection_is_accepted_with_defaults() {
    let client = install_crd().await;
    let ns = TestNamespace::new(&client).await;
    let api: Api<ServiceNowConnection> = Api::namespaced(client, ns.name());
    let yaml = r#"{"apiVersion":"neoagent.io/v1alpha1","kind":"ServiceNowConnection","metadata":{"name":"acme"},
                   "spec":{"instanceUrl":"https://acme.service-now.com","credentialsSecretRef":{"name":"acme-oauth"}}}"#;
    let created: ServiceNowConnection = api
        .create(&PostParams::default(), &serde_json::from_str(yaml).unwrap())
        .await
        .expect("a valid connection is accepted");
    assert_eq!(
        created.spec.resync_interval, "10m",
        "the API server applies the default resyncInterval"
    );
    assert_eq!(
        created.spec.deletion_policy,
        servicenow_operator::api::DeletionPolicy::Delete
    );
    assert!(!created.spec.suspend);
}

#[tokio::test]
async fn the_api_server_and_instance_url_parse_agree_on_every_url_of_the_table() {
    struct Case {
        url: &'static str,
        rejected_by: Option<UrlRule>,
    }
    const CASES: &[Case] = include!("data/instance_url_cases.rs");
    assert!(CASES.len() >= 30, "the table must keep at least 30 cases");

    let client = install_crd().await;
    let ns = TestNamespace::new(&client).await;
    let api: Api<ServiceNowConnection> = Api::namespaced(client, ns.name());
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut disagreements = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        let local = InstanceUrl::parse(case.url).err().map(|e| e.rule);
        assert_eq!(local, case.rejected_by, "InstanceUrl::parse on {:?}", case.url);
        let server = api
            .create(&dry_run, &connection(&format!("case-{index}"), case.url))
            .await;
        match (server, case.rejected_by) {
            (Ok(_), None) => {}
            (Err(kube::Error::Api(status)), Some(rule)) if status.code == 422 => {
                if !status.message.contains(&rule.message()) {
                    disagreements.push(format!(
                        "{:?}: expected {:?} in {:?}",
                        case.url,
                        rule.message(),
                        status.message
                    ));
                }
            }
            (outcome, expected) => disagreements.push(format!(
                "{:?}: expected {expected:?}, the API server said {outcome:?}",
                case.url
            )),
        }
    }
    assert!(
        disagreements.is_empty(),
        "CEL and InstanceUrl::parse disagree:\n{}",
        disagreements.join("\n")
    );
}

#[tokio::test]
async fn a_status_patch_does_not_bump_the_generation() {
    let client = install_crd().await;
    let ns = TestNamespace::new(&client).await;
    let api: Api<ServiceNowConnection> = Api::namespaced(client, ns.name());
    let created = api
        .create(
            &PostParams::default(),
            &connection("acme", "https://acme.service-now.com"),
        )
        .await
        .unwrap();
    let generation = created.metadata.generation;
    let status = serde_json::json!({
        "apiVersion": "neoagent.io/v1alpha1", "kind": "ServiceNowConnection",
        "status": {"syncState": "AWAITING_CONSENT", "observedGeneration": generation}
    });
    let patched = api
        .patch_status("acme", &PatchParams::apply("crd-test").force(), &Patch::Apply(&status))
        .await
        .expect("status patch");
    assert_eq!(
        patched.metadata.generation, generation,
        "a status patch must not bump metadata.generation"
    );
    assert_eq!(
        patched.status.and_then(|s| s.sync_state),
        Some(servicenow_operator::api::SyncState::AwaitingConsent)
    );
    let spec = serde_json::json!({"spec": {"suspend": true}});
    let changed = api
        .patch("acme", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    assert_eq!(
        changed.metadata.generation,
        generation.map(|g| g + 1),
        "a spec change bumps the generation"
    );
}

#[tokio::test]
async fn kubectl_get_snc_shows_the_printer_columns() {
    let client = install_crd().await;
    let ns = TestNamespace::new(&client).await;
    let api: Api<ServiceNowConnection> = Api::namespaced(client, ns.name());
    api.create(
        &PostParams::default(),
        &connection("acme", "https://acme.service-now.com"),
    )
    .await
    .unwrap();
    let status = serde_json::json!({
        "apiVersion": "neoagent.io/v1alpha1", "kind": "ServiceNowConnection",
        "status": {"syncState": "READY_TO_SYNC", "identity": {"sysId": "abc", "userName": "neo.agent"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "ready",
                                   "lastTransitionTime": "2026-11-24T10:00:00Z"}]}
    });
    api.patch_status("acme", &PatchParams::apply("crd-test").force(), &Patch::Apply(&status))
        .await
        .unwrap();
    let plane = control_plane().await;
    let stdout = poll_until(
        Duration::from_secs(30),
        "kubectl get snc to list the connection",
        || async {
            let output = plane.kubectl(&["get", "snc", "-n", ns.name()]);
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        },
    )
    .await;
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "INSTANCE", "STATE", "IDENTITY", "READY", "AGE"],
        "kubectl get snc:\n{stdout}"
    );
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [
            "acme",
            "https://acme.service-now.com",
            "READY_TO_SYNC",
            "neo.agent",
            "True"
        ],
        "kubectl get snc:\n{stdout}"
    );
}

#[tokio::test]
async fn kubectl_explain_prints_the_doc_comments() {
    install_crd().await;
    let plane = control_plane().await;
    // The API server publishes a new CRD's OpenAPI a moment after it is Established.
    let stdout = poll_until(Duration::from_secs(30), "kubectl explain to know the CRD", || async {
        let output = plane.kubectl(&["explain", "servicenowconnection.spec.instanceUrl"]);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    })
    .await;
    assert!(
        stdout.contains("The instance's address") && stdout.contains("servicenowservices.com"),
        "kubectl explain did not print the doc comment:\n{stdout}"
    );
}
