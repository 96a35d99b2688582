//! The Helm chart: it lints, renders, applies to a real API server, and its RBAC is enough for
//! the operator — the operator runs with the chart's ServiceAccount token, takes a connection
//! to READY_TO_SYNC and counts a webhook event (and is refused what the chart does not grant).

mod support;

use std::{fs, process::Output};

use servicenow_operator::api::SyncState;
use support::{
    TestNamespace, control_plane,
    operator::{Operator, Scene, free_port, install_crd},
};

/// The chart's directory.
fn chart() -> String {
    support::repo_path("charts/servicenow-operator").display().to_string()
}

fn succeeded(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_chart_lints_and_refuses_to_render_without_a_public_url() {
    let plane = control_plane().await;
    let lint = plane
        .command("helm")
        .args(["lint", &chart(), "--set", "publicUrl=https://neo.example.com"])
        .output()
        .unwrap();
    succeeded("helm lint", &lint);
    let missing = plane
        .command("helm")
        .args(["template", "t", &chart()])
        .output()
        .unwrap();
    assert!(!missing.status.success(), "rendering without publicUrl must fail");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("publicUrl is required"));
}

#[tokio::test]
async fn the_operator_reaches_ready_to_sync_with_only_the_charts_rbac() {
    let client = install_crd().await;
    let plane = control_plane().await;
    let ns = TestNamespace::new(&client).await;
    let release = ns.name().to_owned();

    // Render without the CRD (installed already, cluster-wide) and apply to the real API server.
    let rendered = plane
        .command("helm")
        .args(["template", &release, &chart(), "--namespace", ns.name()])
        .args([
            "--set",
            "publicUrl=https://neo.example.com",
            "--set",
            "crds.enabled=false",
        ])
        .output()
        .unwrap();
    let manifests = succeeded("helm template", &rendered);
    let file = std::env::temp_dir().join(format!("{release}-chart.yaml"));
    fs::write(&file, &manifests).unwrap();
    let file = file.to_str().unwrap();
    succeeded(
        "kubectl apply --dry-run=server",
        &plane.kubectl(&["apply", "--dry-run=server", "-f", file]),
    );
    succeeded("kubectl apply", &plane.kubectl(&["apply", "-f", file]));

    // A kubeconfig for the chart's ServiceAccount: same server and CA, its token.
    let account = format!("{release}-servicenow-operator");
    let token = succeeded(
        "kubectl create token",
        &plane.kubectl(&["create", "token", &account, "-n", ns.name()]),
    );
    let cluster = |field: &str| {
        succeeded(
            "kubectl config view",
            &plane.kubectl(&[
                "config",
                "view",
                "--raw",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{field}}}"),
            ]),
        )
    };
    let server = cluster("server");
    let ca = cluster("certificate-authority-data");
    let kubeconfig = std::env::temp_dir().join(format!("{release}-sa.kubeconfig"));
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}\n\
             users:\n- name: sa\n  user: {{token: \"{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .unwrap();
    let as_operator = |verb: &str, resource: &str| {
        let output = plane
            .kubectl_command(&["auth", "can-i", verb, resource, "-n", ns.name()])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    assert!(as_operator("patch", "servicenowconnections.neoagent.io/status"));
    assert!(
        !as_operator("delete", "servicenowconnections.neoagent.io"),
        "the chart grants more than needed"
    );
    assert!(!as_operator("create", "pods"), "the chart grants more than needed");

    let scene = Scene::in_namespace(client, ns, serde_json::json!({})).await;
    let operator = Operator::start_as(scene.ns.name(), &scene.simulator, free_port(), &[], &kubeconfig).await;
    scene
        .wait_for("READY_TO_SYNC under the chart's RBAC", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    // The webhook receiver works under the same RBAC: it reads the connection and its token
    // Secret, and counts the event into the status.
    scene
        .simulator
        .admin()
        .insert("incident", [("short_description", "Under the chart's RBAC")])
        .await
        .expect("insert an incident");
    scene
        .wait_for("the webhook event counted under the chart's RBAC", |s| {
            s.webhook.as_ref().is_some_and(|w| w.events_received == 1)
        })
        .await;
    let logs = operator.logs();
    assert!(
        !logs.contains("forbidden"),
        "the operator was refused something under the chart's RBAC:\n{logs}"
    );
    scene.assert_no_secret_leaked().await;
    // Cluster-scoped objects of this release are not in the namespace: remove them.
    plane.kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        &account,
        "--ignore-not-found",
    ]);
}
