//! The Helm chart: it lints, renders (NetworkPolicies, namespaced Roles), applies to a real API
//! server, and its RBAC is enough for the two components and no more — in both modes (all
//! namespaces, watched namespaces) the controller and the public component run with their own
//! ServiceAccounts' tokens through consent in a browser, READY_TO_SYNC, a webhook event and
//! deletion; each ServiceAccount's `kubectl auth can-i --list` matches `tests/data/rbac/`.

mod support;

use std::{fs, process::Output};

use servicenow_operator::api::SyncState;
use support::{
    ControlPlane, TestNamespace, control_plane, install_crd,
    operator::{Operator, free_port},
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
    let typo = install(&["--set", "watchNamespacez={itsm}"]);
    assert!(!typo.status.success(), "helm install with a typo succeeded");
    let error = String::from_utf8_lossy(&typo.stderr);
    assert!(
        error.contains("additional properties 'watchNamespacez' not allowed"),
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

/// The document of `kind` named `name` among `documents`.
fn named<'a>(documents: &'a [serde_yaml_ng::Value], kind: &str, name: &str) -> &'a serde_yaml_ng::Value {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[tokio::test]
async fn the_network_policies_render_by_default_and_admit_only_the_public_port_the_public_pods_and_the_scrapers() {
    let plane = control_plane().await;
    let rendered =
        documents(&template(plane, &["--set", "networkPolicy.metricsNamespace=prometheus"]).expect("render"));
    let selector = |name: &str| named(&rendered, "Deployment", name)["spec"]["selector"]["matchLabels"].clone();
    let scrapers = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(
        "[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prometheus}}}]",
    )
    .unwrap();
    let port = |rule: &serde_yaml_ng::Value| {
        let ports = rule["ports"].as_sequence().expect("ports");
        assert_eq!(ports.len(), 1, "{rule:?}");
        ports[0]["port"].as_u64().expect("a port number")
    };

    let public = named(&rendered, "NetworkPolicy", "t-servicenow-operator-public");
    assert_eq!(
        public["spec"]["podSelector"]["matchLabels"],
        selector("t-servicenow-operator-public")
    );
    assert_eq!(public["spec"]["policyTypes"].as_sequence().unwrap().len(), 1);
    let rules = public["spec"]["ingress"].as_sequence().expect("ingress rules");
    assert_eq!(rules.len(), 2);
    assert!(rules[0]["from"].is_null(), "the public port is open to all");
    assert_eq!(port(&rules[0]), 8080);
    assert_eq!(rules[1]["from"], scrapers);
    assert_eq!(port(&rules[1]), 8081);

    let controller = named(&rendered, "NetworkPolicy", "t-servicenow-operator");
    assert_eq!(
        controller["spec"]["podSelector"]["matchLabels"],
        selector("t-servicenow-operator")
    );
    let rules = controller["spec"]["ingress"].as_sequence().expect("ingress rules");
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0]["from"][0]["podSelector"]["matchLabels"],
        selector("t-servicenow-operator-public"),
        "the hand-off port only from the public pods"
    );
    assert_eq!(rules[0]["from"].as_sequence().unwrap().len(), 1);
    assert_eq!(port(&rules[0]), 8082);
    assert_eq!(rules[1]["from"], scrapers);
    assert_eq!(port(&rules[1]), 8081);
    // The ports are the containers' ports.
    let container_ports = |name: &str| -> Vec<u64> {
        named(&rendered, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(container_ports("t-servicenow-operator-public"), [8080, 8081]);
    assert_eq!(container_ports("t-servicenow-operator"), [8082, 8081]);

    let off = documents(&template(plane, &["--set", "networkPolicy.enabled=false"]).expect("render"));
    assert!(!off.iter().any(|d| d["kind"].as_str() == Some("NetworkPolicy")));
}

#[tokio::test]
async fn both_components_mount_one_generated_hand_off_key_or_the_existing_secret_named() {
    let plane = control_plane().await;
    let secret_names = |rendered: &[serde_yaml_ng::Value]| -> Vec<String> {
        ["t-servicenow-operator", "t-servicenow-operator-public"]
            .iter()
            .map(|name| {
                let volumes = &named(rendered, "Deployment", name)["spec"]["template"]["spec"]["volumes"];
                let handoff = volumes
                    .as_sequence()
                    .expect("volumes")
                    .iter()
                    .find(|v| v["name"].as_str() == Some("handoff"))
                    .expect("the hand-off volume");
                handoff["secret"]["secretName"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let generated = documents(&template(plane, &[]).expect("render"));
    assert_eq!(secret_names(&generated), ["t-servicenow-operator-handoff"; 2]);
    let key = &named(&generated, "Secret", "t-servicenow-operator-handoff")["data"]["key"];
    let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.as_str().unwrap()).unwrap();
    assert!(key.len() >= 32, "a hand-off key of {} bytes", key.len());

    let existing = documents(&template(plane, &["--set", "handoff.existingSecret=mine"]).expect("render"));
    assert_eq!(secret_names(&existing), ["mine"; 2]);
    assert!(
        !existing.iter().any(|d| d["kind"].as_str() == Some("Secret")),
        "no key rendered"
    );
}

#[tokio::test]
async fn watched_namespaces_render_roles_there_only_and_the_older_single_value_still_counts() {
    let plane = control_plane().await;
    let rendered = documents(
        &template(
            plane,
            &["--set", "watchNamespaces={itsm,hr}", "--set", "watchNamespace=ops"],
        )
        .expect("render"),
    );
    let kinds = |kind: &str| -> Vec<(String, String)> {
        rendered
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .map(|d| {
                (
                    d["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                    d["metadata"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let roles = kinds("Role");
    let expected: Vec<(String, String)> = [
        ("itsm", "t-servicenow-operator"),
        ("hr", "t-servicenow-operator"),
        ("ops", "t-servicenow-operator"),
        ("default", "t-servicenow-operator-self"),
    ]
    .iter()
    .map(|(ns, name)| ((*ns).to_owned(), (*name).to_owned()))
    .collect();
    assert_eq!(roles, expected);
    assert_eq!(kinds("RoleBinding"), expected);
    assert!(kinds("ClusterRole").is_empty() && kinds("ClusterRoleBinding").is_empty());
    let controller = named(&rendered, "Deployment", "t-servicenow-operator");
    let env = controller["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap();
    let watch = env
        .iter()
        .find(|v| v["name"].as_str() == Some("WATCH_NAMESPACE"))
        .expect("WATCH_NAMESPACE");
    assert_eq!(watch["value"].as_str(), Some("itsm,hr,ops"));
    // The Lease is written only in the release's namespace.
    for document in rendered.iter().filter(|d| d["kind"].as_str() == Some("Role")) {
        let leases = document["rules"].as_sequence().unwrap().iter().any(|rule| {
            rule["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|r| r.as_str() == Some("leases"))
        });
        assert_eq!(
            leases,
            document["metadata"]["namespace"].as_str() == Some("default"),
            "{document:?}"
        );
    }

    let all = documents(&template(plane, &[]).expect("render"));
    assert!(all.iter().any(|d| d["kind"].as_str() == Some("ClusterRole")));
    let error = template(plane, &["--set", "watchNamespaces={Not_A_Namespace}"]).expect_err("an invalid name");
    assert!(error.contains("watchNamespaces"), "{error}");
}

/// The environment of the public component's container in `rendered` (`helm template`'s
/// output), by name.
fn container_env(rendered: &str) -> std::collections::BTreeMap<String, String> {
    let documents = documents(rendered);
    let deployment = named(&documents, "Deployment", "t-servicenow-operator-public");
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

/// How the chart is installed: watching every namespace, or only the connections' namespace.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    ClusterWide,
    Namespaced,
}

impl Mode {
    /// The name of its expected RBAC lists (`tests/data/rbac/<name>-<component>-<where>.txt`).
    fn name(self) -> &'static str {
        match self {
            Mode::ClusterWide => "cluster-wide",
            Mode::Namespaced => "namespaced",
        }
    }
}

/// A kubeconfig for the ServiceAccount `account` of `namespace`: the test server and CA, a token
/// of that account.
fn service_account_kubeconfig(plane: &ControlPlane, namespace: &str, account: &str) -> std::path::PathBuf {
    let token = succeeded(
        "kubectl create token",
        &plane.kubectl(&["create", "token", account, "-n", namespace]),
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
    let (server, ca) = (cluster("server"), cluster("certificate-authority-data"));
    let kubeconfig = std::env::temp_dir().join(format!("{namespace}-{account}.kubeconfig"));
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}\n\
             users:\n- name: sa\n  user: {{token: \"{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .unwrap();
    kubeconfig
}

/// `kubectl auth can-i --list` for `kubeconfig`'s identity in `namespace`: one rule a line, its
/// columns separated by one space, the lines sorted (the command's order follows the bindings'),
/// the header dropped.
fn can_i_list(plane: &ControlPlane, kubeconfig: &std::path::Path, namespace: &str) -> String {
    let output = plane
        .kubectl_command(&["auth", "can-i", "--list", "-n", namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kubectl auth can-i --list");
    let list = succeeded("kubectl auth can-i --list", &output);
    assert!(list.starts_with("Resources "), "{list}");
    let mut rules: Vec<String> = list
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    rules.sort();
    rules.join("\n") + "\n"
}

/// `None` when `actual` is the checked-in `tests/data/rbac/<file>` (a missing file counts as
/// empty); else both, with the actual list written to the temp directory as `rbac-actual-<file>`.
fn rbac_difference(file: &str, actual: &str) -> Option<String> {
    let path = support::repo_path("tests/data/rbac").join(file);
    let expected = fs::read_to_string(&path).unwrap_or_default();
    (expected != actual).then(|| {
        let written = std::env::temp_dir().join(format!("rbac-actual-{file}"));
        fs::write(&written, actual).unwrap();
        format!(
            "{} (actual list written to {}):\n--- expected\n{expected}--- actual\n{actual}",
            path.display(),
            written.display()
        )
    })
}

/// Whether `kubeconfig`'s identity may `verb` `resource` in `namespace`.
fn can_i(plane: &ControlPlane, kubeconfig: &std::path::Path, verb: &str, resource: &str, namespace: &str) -> bool {
    let output = plane
        .kubectl_command(&["auth", "can-i", verb, resource, "-n", namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

/// The chart's two components, each under its own ServiceAccount's token, take a connection
/// through the whole flow: consent in a browser, READY_TO_SYNC, a webhook event counted,
/// deletion. Then each ServiceAccount's rights are compared with the checked-in lists, and the
/// public one cannot read a Secret anywhere.
async fn the_components_run_the_whole_flow_under_the_charts_service_accounts(mode: Mode) {
    use servicenow_operator::api::ServiceNowConnection;
    use support::{
        consent::{browser, consent_as, consent_url},
        instance::AGENT,
        scene::{CONNECTION, RULE_QUERY, Scene},
    };

    let client = install_crd().await;
    let plane = control_plane().await;
    // The release lives in a namespace of its own; the connection in another one.
    let release_ns = TestNamespace::new(&client).await;
    let release = release_ns.name().to_owned();
    let watched = TestNamespace::new(&client).await;
    let public_port = free_port();
    let public_url = format!("http://127.0.0.1:{public_port}");

    let mut args = vec![
        "template".to_owned(),
        release.clone(),
        chart(),
        "--namespace".to_owned(),
        release.clone(),
        "--set".to_owned(),
        format!("publicUrl={public_url}"),
        "--set".to_owned(),
        "crds.enabled=false".to_owned(),
    ];
    if mode == Mode::Namespaced {
        args.extend(["--set".to_owned(), format!("watchNamespaces={{{}}}", watched.name())]);
    }
    let manifests = succeeded("helm template", &plane.command("helm").args(&args).output().unwrap());
    let documents = documents(&manifests);
    let cluster_scoped = documents.iter().any(|d| d["kind"].as_str() == Some("ClusterRole"));
    assert_eq!(
        cluster_scoped,
        mode == Mode::ClusterWide,
        "a ClusterRole is rendered in the cluster-wide mode only"
    );
    let file = std::env::temp_dir().join(format!("{release}-chart.yaml"));
    fs::write(&file, &manifests).unwrap();
    succeeded(
        "kubectl apply",
        &plane.kubectl(&["apply", "-f", file.to_str().unwrap()]),
    );
    let controller_account = format!("{release}-servicenow-operator");
    let public_account = format!("{release}-servicenow-operator-public");
    let controller_kubeconfig = service_account_kubeconfig(plane, &release, &controller_account);
    let public_kubeconfig = service_account_kubeconfig(plane, &release, &public_account);
    // The hand-off key, as the kubelet would mount it into both pods.
    let key = succeeded(
        "kubectl get the hand-off key",
        &plane.kubectl(&[
            "get",
            "secret",
            &format!("{release}-servicenow-operator-handoff"),
            "-n",
            &release,
            "-o",
            "jsonpath={.data.key}",
        ]),
    );
    let key = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.trim()).expect("base64"),
    )
    .expect("a text key");
    let key_file = std::env::temp_dir().join(format!("{release}-handoff-key"));
    fs::write(&key_file, &key).unwrap();

    let scene = Scene::awaiting_consent_in(client.clone(), watched, serde_json::json!({})).await;
    scene.register_redirect_url(&format!("{public_url}/oauth/servicenow/callback"));
    let (controller, public) = Operator::start_split(
        scene.ns.name(),
        &scene.simulator,
        public_port,
        &[("POD_NAMESPACE", &release)],
        &controller_kubeconfig,
        &public_kubeconfig,
        &key_file,
    )
    .await;

    // Consent in a browser, through the public component.
    let url = consent_url(&scene).await;
    assert!(
        url.starts_with(&format!("{public_url}/oauth/servicenow/start?ticket=")),
        "{url}"
    );
    let browser = browser(&scene).await;
    let title = consent_as(
        &browser,
        &url,
        AGENT,
        AGENT,
        "#allow",
        &format!("chart-{}", mode.name()),
    )
    .await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    browser.close().await;
    scene
        .wait_for("READY_TO_SYNC under the chart's ServiceAccounts", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    // A webhook event: posted by the instance to the public component, counted by the controller.
    scene
        .simulator
        .admin()
        .insert("incident", [("short_description", "Through the public component")])
        .await
        .expect("insert an incident");
    scene
        .wait_for("the webhook event counted", |s| {
            s.webhook.as_ref().is_some_and(|w| w.events_received == 1)
        })
        .await;
    // Anonymous requests through the public component cost no write through the API server
    // and no call to the instance; each gets the answer the controller gives.
    scene.reconcile_now("before-the-anonymous-requests").await;
    let audit = support::audit::AuditLog::of(&scene.client, scene.ns.name()).await;
    let mark = audit.mark().await;
    let instance_calls = scene.simulator.admin().request_log().len();
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let connection = format!("{}/{CONNECTION}", scene.ns.name());
    // Ten rounds: twenty consent requests, inside the per-IP limit (30 a minute) with the
    // browser's two.
    for _ in 0..10 {
        for (page, status) in [
            ("start?ticket=t1.forged", reqwest::StatusCode::NOT_FOUND),
            ("callback?code=c&state=forged", reqwest::StatusCode::BAD_REQUEST),
        ] {
            let answer = anonymous
                .get(format!("{public_url}/oauth/servicenow/{page}"))
                .send()
                .await
                .expect("GET a consent page");
            assert_eq!(answer.status(), status, "{page}");
            assert_eq!(answer.headers()["x-frame-options"], "DENY", "the security headers");
        }
        let webhook = anonymous
            .post(format!("{public_url}/callback/servicenow"))
            .query(&[("connection", connection.as_str())])
            .header("content-type", "application/json")
            .header(
                "x-neoagent-timestamp",
                k8s_openapi::jiff::Timestamp::now().as_millisecond().to_string(),
            )
            // Well formed and fresh, so the controller looks the connection up: a wrong key.
            .header("x-neoagent-signature", format!("v1={}", "A".repeat(43) + "="))
            .body("{}")
            .send()
            .await
            .expect("POST the webhook");
        assert_eq!(webhook.status(), reqwest::StatusCode::UNAUTHORIZED);
        // Unsigned: refused by the public component itself, never handed off.
        let unsigned = anonymous
            .post(format!("{public_url}/callback/servicenow"))
            .query(&[("connection", connection.as_str())])
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("POST the webhook unsigned");
        assert_eq!(unsigned.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
    let unsigned = r#"servicenow_operator_webhook_requests_rejected_total{reason="unsigned"}"#;
    assert_eq!(public.metric(unsigned).await, 10.0, "refused by the public component");
    assert_eq!(
        controller.metric(unsigned).await,
        0.0,
        "unsigned requests reached the controller"
    );
    let unauthorized = r#"servicenow_operator_webhook_requests_rejected_total{reason="unauthorized"}"#;
    assert_eq!(controller.metric(unauthorized).await, 10.0, "refused by the controller");
    let requests = audit.since(&mark).await;
    let writes = requests.matching(|r| r.is_write() && r.object_ref.resource != "leases");
    assert!(
        writes.is_empty(),
        "anonymous requests wrote through the API server:\n{requests}"
    );
    assert_eq!(
        scene.simulator.admin().request_log().len(),
        instance_calls,
        "anonymous requests called the instance"
    );
    // The alert rules name series the controller exposes.
    let page = controller.metrics_page().await;
    for metric in metrics_in_rules(&rendered_in_full(plane)) {
        assert!(
            page.contains(&format!("{metric}{{namespace=\"{}\",name=\"acme\"", scene.ns.name())),
            "the controller does not expose {metric} for the connection:\n{page}"
        );
    }
    // Deletion: the controller removes what it provisioned, then the finalizer.
    scene
        .api()
        .delete(CONNECTION, &Default::default())
        .await
        .expect("delete the connection");
    let api: kube::Api<ServiceNowConnection> = scene.api();
    support::poll_until(std::time::Duration::from_secs(60), "the connection deleted", || {
        let api = api.clone();
        async move {
            match api.get_opt(CONNECTION).await {
                Ok(None) => support::Observed::Done(()),
                other => support::Observed::not_yet(format!("{:?}", other.map(|c| c.map(|c| c.metadata.finalizers)))),
            }
        }
    })
    .await;
    assert!(
        scene.simulator.admin().records("sys_script", RULE_QUERY).is_empty(),
        "the rule is removed from the instance on deletion"
    );

    // What each ServiceAccount may do, where it runs and where the connections are.
    let mut differences = Vec::new();
    for (component, kubeconfig) in [("controller", &controller_kubeconfig), ("public", &public_kubeconfig)] {
        for (place, namespace) in [
            ("release", release.as_str()),
            ("watched", scene.ns.name()),
            ("other", "default"),
        ] {
            differences.extend(rbac_difference(
                &format!("{}-{component}-{place}.txt", mode.name()),
                &can_i_list(plane, kubeconfig, namespace),
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "the rights differ from the checked-in lists:\n{}",
        differences.join("\n")
    );
    // The public ServiceAccount reads no Secret, neither in the connections' namespace nor
    // anywhere else — asked, and tried.
    for namespace in [scene.ns.name(), "default", release.as_str()] {
        assert!(
            !can_i(plane, &public_kubeconfig, "get", "secrets", namespace),
            "{namespace}"
        );
    }
    let tried = plane
        .kubectl_command(&["get", "secret", "acme-oauth", "-n", scene.ns.name()])
        .env("KUBECONFIG", &public_kubeconfig)
        .output()
        .unwrap();
    assert!(!tried.status.success(), "the public ServiceAccount read a Secret");
    assert!(
        String::from_utf8_lossy(&tried.stderr).contains("Forbidden"),
        "{tried:?}"
    );
    // Namespaced: no Secret rights outside the watched namespace; the Lease only at home.
    assert_eq!(
        can_i(plane, &controller_kubeconfig, "get", "secrets", "default"),
        mode == Mode::ClusterWide
    );
    assert!(can_i(plane, &controller_kubeconfig, "update", "leases", &release));
    assert!(!can_i(
        plane,
        &controller_kubeconfig,
        "update",
        "leases",
        scene.ns.name()
    ));

    for operator in [&controller, &public] {
        let logs = operator.logs();
        assert!(
            !logs.contains("forbidden"),
            "refused something under the chart's RBAC:\n{logs}"
        );
        assert!(!logs.contains(&key), "the hand-off key is in a log");
    }
    scene.assert_no_secret_leaked().await;
    drop((controller, public));
    let _ = fs::remove_file(&key_file);
    if mode == Mode::ClusterWide {
        // Cluster-scoped objects of this release are not in the namespace: remove them.
        plane.kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            &controller_account,
            "--ignore-not-found",
        ]);
    }
}

#[tokio::test]
async fn cluster_wide_the_components_run_the_whole_flow_under_the_charts_service_accounts() {
    the_components_run_the_whole_flow_under_the_charts_service_accounts(Mode::ClusterWide).await;
}

#[tokio::test]
async fn namespaced_the_components_run_the_whole_flow_under_the_charts_service_accounts() {
    the_components_run_the_whole_flow_under_the_charts_service_accounts(Mode::Namespaced).await;
}
