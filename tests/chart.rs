//! The Helm chart: it lints, renders, applies to a real API server, and its RBAC is enough for
//! the operator — the operator runs with the chart's ServiceAccount token, takes a connection
//! to READY_TO_SYNC and counts a webhook event (and is refused what the chart does not grant).

mod support;

use std::{fs, process::Output};

use servicenow_operator::api::SyncState;
use support::{
    ControlPlane, TestNamespace, control_plane, install_crd,
    operator::{Operator, free_port},
    scene::Scene,
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
async fn the_chart_lints_strictly_and_refuses_to_render_without_a_public_url() {
    let plane = control_plane().await;
    let lint = plane
        .command("helm")
        .args([
            "lint",
            "--strict",
            &chart(),
            "--set",
            "publicUrl=https://neo.example.com",
        ])
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

/// `helm template t <chart> ARGS...`: what it printed, or its error.
fn template(plane: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let rendered = plane
        .command("helm")
        .args(["template", "t", &chart(), "--set", "publicUrl=https://neo.example.com"])
        .args(args)
        .output()
        .expect("run helm");
    if rendered.status.success() {
        Ok(String::from_utf8_lossy(&rendered.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&rendered.stderr).into_owned())
    }
}

fn documents(text: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).expect("a YAML document"))
        .filter(|document: &serde_yaml_ng::Value| !document.is_null())
        .collect()
}

#[tokio::test]
async fn a_mistyped_value_fails_rendering_with_the_schemas_message() {
    let plane = control_plane().await;
    for (typo, message) in [
        ("replicaCont=2", "additional properties 'replicaCont' not allowed"),
        ("image.tagg=1.0.0", "additional properties 'tagg' not allowed"),
        (
            "podDisruptionBudget.enable=true",
            "additional properties 'enable' not allowed",
        ),
        ("logFormat=yaml", "logFormat"),
        ("replicaCount=0", "replicaCount"),
        ("publicUrl=neo.example.com", "publicUrl"),
        (
            "publicListener.consentRateLimitPerIp=30 a minute",
            "consentRateLimitPerIp",
        ),
        ("publicListener.headerReadTimeout=10", "headerReadTimeout"),
    ] {
        let error = template(plane, &["--set", typo]).expect_err(&format!("--set {typo} must not render"));
        assert!(
            error.contains("values don't meet the specifications of the schema") && error.contains(message),
            "--set {typo}: {error}"
        );
    }
    // Every default value is in the schema (an unknown one would fail here).
    template(plane, &[]).expect("the defaults render");
}

#[tokio::test]
async fn the_disruption_budget_and_the_topology_spread_render_for_two_replicas() {
    let plane = control_plane().await;
    let plain = documents(&template(plane, &[]).expect("render"));
    assert!(!plain.iter().any(|d| d["kind"].as_str() == Some("PodDisruptionBudget")));
    let pod = &of_kind(&plain, "Deployment")["spec"]["template"]["spec"];
    assert!(pod["topologySpreadConstraints"].is_null(), "{pod:?}");

    let two = documents(
        &template(
            plane,
            &[
                "--set",
                "replicaCount=2",
                "--set",
                "podDisruptionBudget.enabled=true",
                "--set",
                "topologySpread.enabled=true",
            ],
        )
        .expect("render with two replicas"),
    );
    let deployment = of_kind(&two, "Deployment");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let pdb = of_kind(&two, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    assert_eq!(
        &pdb["spec"]["selector"]["matchLabels"], selector,
        "the PDB selects the operator's pods"
    );
    let constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_sequence()
        .expect("topologySpreadConstraints");
    let keys: Vec<_> = constraints
        .iter()
        .map(|c| c["topologyKey"].as_str().expect("a key"))
        .collect();
    assert_eq!(keys, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]);
    for constraint in constraints {
        assert_eq!(&constraint["labelSelector"]["matchLabels"], selector);
        assert_eq!(constraint["whenUnsatisfiable"].as_str(), Some("ScheduleAnyway"));
    }
    // The rendered objects are valid for the API server.
    let file = std::env::temp_dir().join(format!("chart-two-replicas-{}.yaml", std::process::id()));
    fs::write(
        &file,
        template(
            plane,
            &[
                "--set",
                "replicaCount=2",
                "--set",
                "podDisruptionBudget.enabled=true",
                "--set",
                "topologySpread.enabled=true",
                "--set",
                "crds.enabled=false",
            ],
        )
        .expect("render"),
    )
    .unwrap();
    let applied = plane.kubectl(&[
        "apply",
        "--dry-run=server",
        "-n",
        "default",
        "-f",
        file.to_str().unwrap(),
    ]);
    let _ = fs::remove_file(&file);
    succeeded("kubectl apply --dry-run=server (two replicas)", &applied);

    // A budget for one replica would block every node drain: refused.
    let error = template(plane, &["--set", "podDisruptionBudget.enabled=true"]).expect_err("one replica");
    assert!(error.contains("needs replicaCount >= 2"), "{error}");
}

#[tokio::test]
async fn helm_install_refuses_a_typo_and_installs_the_published_image_with_notes_on_consent() {
    let client = install_crd().await;
    let plane = control_plane().await;
    let ns = TestNamespace::new(&client).await;
    let release = ns.name().to_owned();
    let install = |extra: &[&str]| {
        plane
            .command("helm")
            .args(["install", &release, &chart(), "--namespace", ns.name()])
            .args([
                "--set",
                "publicUrl=https://neo.example.com",
                "--set",
                "crds.enabled=false",
            ])
            .args(extra)
            .output()
            .expect("run helm install")
    };
    let typo = install(&["--set", "watchNamespaces=itsm"]);
    assert!(!typo.status.success(), "helm install with a typo succeeded");
    let error = String::from_utf8_lossy(&typo.stderr);
    assert!(
        error.contains("additional properties 'watchNamespaces' not allowed"),
        "helm install with a typo: {error}"
    );

    let installed = succeeded("helm install", &install(&[]));
    let result = std::panic::catch_unwind(|| {
        // NOTES.txt: the next step is consent, and the command that prints its URL.
        assert!(installed.contains("NOTES:"), "{installed}");
        assert!(
            installed.contains("get snc acme -o jsonpath='{.status.consentUrl}"),
            "the notes do not say how to get the consent URL:\n{installed}"
        );
        assert!(
            installed.contains("https://neo.example.com/oauth/servicenow/callback"),
            "the notes do not give the Redirect URL:\n{installed}"
        );
        let image = succeeded(
            "kubectl get deployment",
            &plane.kubectl(&[
                "get",
                "deployment",
                &format!("{release}-servicenow-operator"),
                "-n",
                ns.name(),
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ]),
        );
        assert_eq!(
            image,
            format!("ghcr.io/neoagent/servicenow-operator:{}", env!("CARGO_PKG_VERSION")),
            "the chart's default image is where releases are published, tagged with the version"
        );
    });
    succeeded(
        "helm uninstall",
        &plane
            .command("helm")
            .args(["uninstall", &release, "--namespace", ns.name()])
            .output()
            .expect("run helm uninstall"),
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The chart rendered as release `t`, with the ServiceMonitor and the PrometheusRule, as YAML
/// documents.
fn rendered_in_full(plane: &ControlPlane) -> Vec<serde_yaml_ng::Value> {
    let rendered = plane
        .command("helm")
        .args(["template", "t", &chart(), "--set", "publicUrl=https://neo.example.com"])
        .args(["--set", "metrics.serviceMonitor.enabled=true"])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .output()
        .expect("run helm");
    let text = succeeded("helm template in full", &rendered);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("a YAML document"))
        .filter(|document: &serde_yaml_ng::Value| !document.is_null())
        .collect()
}

/// The document of `kind` among `documents`.
fn of_kind<'a>(documents: &'a [serde_yaml_ng::Value], kind: &str) -> &'a serde_yaml_ng::Value {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[tokio::test]
async fn the_operator_keeps_its_lease_and_key_in_its_own_namespace_with_a_lease_per_release() {
    let documents = rendered_in_full(control_plane().await);
    let deployment = of_kind(&documents, "Deployment");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .expect("env");
    let var = |name: &str| {
        env.iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {env:?}"))
    };
    assert_eq!(
        var("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.namespace")
    );
    assert_eq!(
        var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name")
    );
    assert_eq!(var("LEASE_NAME")["value"].as_str(), Some("t-servicenow-operator"));
}

/// The environment of the operator's container in `rendered` (`helm template`'s output), by name.
fn container_env(rendered: &str) -> std::collections::BTreeMap<String, String> {
    let documents = documents(rendered);
    let deployment = of_kind(&documents, "Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|var| Some((var["name"].as_str()?.to_owned(), var["value"].as_str()?.to_owned())))
        .collect()
}

#[tokio::test]
async fn the_public_listeners_limits_render_as_the_binarys_defaults_and_the_client_ip_header_only_when_set() {
    use clap::CommandFactory as _;
    let plane = control_plane().await;
    let env = container_env(&template(plane, &[]).expect("the defaults render"));
    let cli = servicenow_operator::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("the run subcommand");
    let limits = [
        "CONSENT_RATE_LIMIT_PER_IP",
        "CONSENT_RATE_LIMIT",
        "WEBHOOK_RATE_LIMIT_PER_IP",
        "WEBHOOK_RATE_LIMIT",
        "PUBLIC_HEADER_READ_TIMEOUT",
        "PUBLIC_REQUEST_TIMEOUT",
        "PUBLIC_MAX_CONNECTIONS",
    ];
    for name in limits {
        let flag = run
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == name))
            .unwrap_or_else(|| panic!("no flag of `run` reads {name}"));
        let default = flag.get_default_values().first().and_then(|value| value.to_str());
        assert_eq!(
            env.get(name).map(String::as_str),
            default,
            "{name}: the chart and the binary disagree"
        );
    }
    assert!(
        !env.contains_key("CLIENT_IP_HEADER"),
        "the forwarded header is off by default"
    );
    let set = template(plane, &["--set", "publicListener.clientIpHeader=X-Forwarded-For"]).expect("render");
    assert_eq!(
        container_env(&set).get("CLIENT_IP_HEADER").map(String::as_str),
        Some("X-Forwarded-For")
    );
}

/// The operator metrics the rendered PrometheusRule's expressions name.
fn metrics_in_rules(documents: &[serde_yaml_ng::Value]) -> Vec<String> {
    let rule = of_kind(documents, "PrometheusRule");
    let rules = rule["spec"]["groups"][0]["rules"].as_sequence().expect("rules");
    rules
        .iter()
        .flat_map(|rule| {
            let expr = rule["expr"].as_str().expect("an expr").to_owned();
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("servicenow_operator_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn the_service_monitor_scrapes_the_admin_port_of_the_charts_service_and_the_rules_alert() {
    let documents = rendered_in_full(control_plane().await);
    let service = of_kind(&documents, "Service");
    let monitor = of_kind(&documents, "ServiceMonitor");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    for (key, value) in selector {
        assert_eq!(&service["metadata"]["labels"][key], value, "the Service lacks {key:?}");
    }
    let port = monitor["spec"]["endpoints"][0]["port"].as_str().expect("a port name");
    let ports = service["spec"]["ports"].as_sequence().expect("ports");
    assert!(
        ports.iter().any(|p| p["name"].as_str() == Some(port)),
        "the Service has no port {port:?}"
    );
    assert_eq!(port, "admin", "metrics are on the admin listener");
    let alerts: Vec<_> = of_kind(&documents, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|rule| rule["alert"].as_str().expect("an alert").to_owned())
        .collect();
    assert_eq!(
        alerts,
        ["ServiceNowConnectionNotReady", "ServiceNowRefreshTokenExpiresSoon"]
    );
    assert_eq!(
        metrics_in_rules(&documents),
        [
            "servicenow_operator_connection_ready_status",
            "servicenow_operator_refresh_token_expiration_timestamp_seconds"
        ]
    );
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
    // As consent leaves it: the refresh token with its expiry (100 days).
    scene
        .put_token_expiring_at(
            k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(2400),
        )
        .await;
    let operator = Operator::start_as(scene.ns.name(), &scene.simulator, free_port(), &[], &[], &kubeconfig).await;
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
    // The alert rules name series the operator exposes.
    let page = operator.metrics_page().await;
    for metric in metrics_in_rules(&rendered_in_full(plane)) {
        assert!(
            page.contains(&format!("{metric}{{namespace=\"{}\",name=\"acme\"", scene.ns.name())),
            "the operator does not expose {metric} for the connection:\n{page}"
        );
    }
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
