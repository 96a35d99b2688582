//! A scene: a namespace, a snowsim instance and a consented connection `acme` in it, before any
//! operator runs; [`Ready`] adds a running operator and a READY_TO_SYNC connection. Also the
//! Kubernetes writes the tests make (Secrets, connections) and the leak check.

use base64::Engine as _;
use std::{collections::BTreeMap, net::SocketAddr, sync::Mutex, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::{Event, Secret},
};
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use servicenow_operator::{
    api::{RECONCILE_REQUESTED_AT, ServiceNowConnection, ServiceNowConnectionStatus, SyncState, conditions::Reason},
    secrets::ownership,
    sync::LockExt as _,
};

use super::{
    Observed, TestNamespace,
    conditions::has_condition,
    control_plane, install_crd,
    instance::{AGENT, APP, Seed, seed, simulator},
    operator::{Operator, all_operator_logs, free_port},
    poll_until,
};

/// Creates an Opaque Secret, or replaces the data of an existing one in place (one update, as
/// `kubectl apply` makes: the Secret never disappears in between).
pub async fn put_secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    write_secret(client, namespace, name, ObjectMeta::default(), data).await;
}

/// Writes the Secret `name` of the connection `connection` the way the operator does: labelled as
/// the connection's and controlled by it (created, or its data replaced in place).
pub async fn put_owned_secret(client: &Client, namespace: &str, connection: &str, name: &str, data: &[(&str, &str)]) {
    let api: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    let owner = api.get(connection).await.expect("read the connection");
    let uid = owner.uid().expect("a stored connection has a uid");
    let meta = ObjectMeta {
        labels: Some(ownership::labels(&uid)),
        owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    };
    write_secret(client, namespace, name, meta, data).await;
}

/// Creates the Secret `name` with `meta`'s labels and owners, or replaces the data (and, when
/// `meta` has them, the labels and owners) of an existing one.
async fn write_secret(client: &Client, namespace: &str, name: &str, meta: ObjectMeta, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let data: BTreeMap<_, _> = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    poll_until(Duration::from_secs(10), "the Secret to be written", || {
        let secrets = secrets.clone();
        let data = data.clone();
        let meta = meta.clone();
        async move {
            let written = match secrets.get_opt(name).await.ok()? {
                Some(mut existing) => {
                    if meta.labels.is_some() {
                        existing.metadata.labels = meta.labels;
                        existing.metadata.owner_references = meta.owner_references;
                    }
                    existing.data = Some(data);
                    existing.string_data = None;
                    secrets.replace(name, &PostParams::default(), &existing).await
                }
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(name.to_owned()),
                            ..meta
                        },
                        data: Some(data),
                        ..Default::default()
                    };
                    secrets.create(&PostParams::default(), &secret).await
                }
            };
            written.ok().map(|_| ())
        }
    })
    .await;
}

/// Creates the connection `name` from YAML-ish JSON `spec`.
pub async fn create_connection(client: &Client, namespace: &str, name: &str, spec: serde_json::Value) {
    let api: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    let object = serde_json::json!({
        "apiVersion": "neoagent.io/v1alpha1", "kind": "ServiceNowConnection",
        "metadata": {"name": name}, "spec": spec,
    });
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).expect("connection"),
    )
    .await
    .expect("create the connection");
}

/// Polls the connection's status until `done` accepts it.
pub async fn wait_for_status(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    done: impl Fn(&ServiceNowConnectionStatus) -> bool,
) -> ServiceNowConnectionStatus {
    let api: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    poll_until(Duration::from_secs(30), what, || {
        let api = api.clone();
        let done = &done;
        async move {
            let connection = api.get(name).await.map_err(|e| e.to_string())?;
            let status = connection.status.unwrap_or_default();
            Ok::<_, String>(if done(&status) {
                Observed::Done(status)
            } else {
                Observed::not_yet(serde_json::to_string(&status).unwrap_or_default())
            })
        }
    })
    .await
}

/// The name of the connection every scene creates.
pub const CONNECTION: &str = "acme";
/// The connection's token Secret (the operator's naming: `<connection>-token`).
pub const TOKEN_SECRET: &str = "acme-token";
/// The connection's credentials Secret.
pub const CREDENTIALS_SECRET: &str = "acme-oauth";
/// The operator's Business Rule on the instance (`sys_script`).
pub const RULE_QUERY: &str = "name=Neo Agent — Task Webhook^collection=task";
/// The legacy rule older connections left (`sys_script`).
pub const LEGACY_QUERY: &str = "name=Neo Agent — Incident Webhook";
/// The callback property (`sys_properties`).
pub const PROPERTY_QUERY: &str = "name=x_neoagent.callback_url";

/// A namespace, a simulator, and a consented connection `acme` in it — the credentials Secret
/// `acme-oauth`, the token Secret `acme-token` and the object — before any operator runs.
pub struct Scene {
    /// A client of the test's own.
    pub client: Client,
    /// The test's namespace.
    pub ns: TestNamespace,
    /// The instance.
    pub simulator: snowsim::Server,
    /// The credentials and refresh token of the connection.
    pub seed: Seed,
    /// Secret values the test wrote beyond the seed's (a wrong client secret, say).
    written: Mutex<Vec<String>>,
}

impl Scene {
    /// Sets the scene in a new namespace; `extra_spec` is merged into the connection's spec.
    pub async fn new(extra_spec: serde_json::Value) -> Scene {
        let client = install_crd().await;
        let ns = TestNamespace::new(&client).await;
        Self::in_namespace(client, ns, extra_spec).await
    }

    /// Sets the scene in `ns`, which the test prepared (the chart's RBAC in it, say).
    pub async fn in_namespace(client: Client, ns: TestNamespace, extra_spec: serde_json::Value) -> Scene {
        Self::build(client, ns, extra_spec, true).await
    }

    /// Sets the scene in `ns`, which the test prepared, without the token Secret: the connection
    /// waits for consent.
    pub async fn awaiting_consent_in(client: Client, ns: TestNamespace, extra_spec: serde_json::Value) -> Scene {
        Self::build(client, ns, extra_spec, false).await
    }

    /// Sets the scene like [`Self::new`] but without the token Secret: nobody consented yet, so
    /// the connection waits for consent.
    pub async fn awaiting_consent(extra_spec: serde_json::Value) -> Scene {
        let client = install_crd().await;
        let ns = TestNamespace::new(&client).await;
        Self::build(client, ns, extra_spec, false).await
    }

    /// Sets the scene like [`Self::new`] against `simulator`, which the test started (on an
    /// address of its choosing, say).
    pub async fn with_simulator(simulator: snowsim::Server, extra_spec: serde_json::Value) -> Scene {
        let client = install_crd().await;
        let ns = TestNamespace::new(&client).await;
        Self::build_with(client, ns, simulator, extra_spec, true).await
    }

    async fn build(client: Client, ns: TestNamespace, extra_spec: serde_json::Value, consented: bool) -> Scene {
        Self::build_with(client, ns, simulator().await, extra_spec, consented).await
    }

    async fn build_with(
        client: Client,
        ns: TestNamespace,
        simulator: snowsim::Server,
        extra_spec: serde_json::Value,
        consented: bool,
    ) -> Scene {
        let seed = seed(&simulator, AGENT).await;
        put_secret(
            &client,
            ns.name(),
            CREDENTIALS_SECRET,
            &[("clientId", &seed.client_id), ("clientSecret", &seed.client_secret)],
        )
        .await;
        let mut spec = serde_json::json!({
            "instanceUrl": "https://acme.service-now.com",
            "credentialsSecretRef": {"name": CREDENTIALS_SECRET},
            "expectedUserName": AGENT,
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        create_connection(&client, ns.name(), CONNECTION, spec).await;
        if consented {
            // As consent leaves it: the operator's, for this connection (hence after it).
            put_owned_secret(
                &client,
                ns.name(),
                CONNECTION,
                TOKEN_SECRET,
                &[("refreshToken", &seed.refresh_token)],
            )
            .await;
        }
        Scene {
            client,
            ns,
            simulator,
            seed,
            written: Mutex::default(),
        }
    }

    /// The connections of the test's namespace.
    pub fn api(&self) -> Api<ServiceNowConnection> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    /// Starts an operator against the simulator, watching the test's namespace.
    pub async fn start_operator(&self, extra: &[&str]) -> Operator {
        Operator::start_with(self.ns.name(), &self.simulator, free_port(), extra).await
    }

    /// Starts an operator that reaches no instance: the instance's host resolves to a port
    /// nobody listens on, so every connection is refused.
    pub async fn start_operator_without_instance(&self) -> Operator {
        self.start_operator_resolving_nowhere(&[]).await
    }

    /// Starts an operator that reaches the instance only through the HTTP proxy at `proxy_url`
    /// (`HTTPS_PROXY`): the host name itself resolves to a port nobody listens on.
    pub async fn start_operator_via_proxy(&self, proxy_url: &str) -> Operator {
        self.start_operator_resolving_nowhere(&[("HTTPS_PROXY", proxy_url), ("NO_PROXY", "127.0.0.1,localhost")])
            .await
    }

    /// Starts an operator with `env` whose instance host resolves to a port nobody listens on.
    async fn start_operator_resolving_nowhere(&self, env: &[(&str, &str)]) -> Operator {
        let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
        self.start_operator_reaching(closed, env).await
    }

    /// Starts an operator with `env` that trusts the simulator's CA but whose instance host
    /// resolves to `instance` (a forwarder, an impostor, a closed port).
    pub async fn start_operator_reaching(&self, instance: SocketAddr, env: &[(&str, &str)]) -> Operator {
        let plane = control_plane().await;
        let port = free_port();
        Operator::spawn(
            self.ns.name(),
            &self.simulator,
            instance,
            port,
            &format!("http://127.0.0.1:{port}"),
            &[],
            env,
            plane.kubeconfig_path(),
        )
        .await
    }

    /// Puts the legacy rule `Neo Agent — Incident Webhook` on `incident` on the instance, as an
    /// older connection left it.
    pub async fn insert_legacy_rule(&self) {
        self.simulator
            .admin()
            .insert(
                "sys_script",
                [
                    ("name", "Neo Agent — Incident Webhook"),
                    ("collection", "incident"),
                    ("active", "true"),
                ],
            )
            .await
            .expect("insert the legacy rule");
    }

    /// Makes `url` the only Redirect URL of the instance's OAuth application.
    pub fn register_redirect_url(&self, url: &str) {
        self.simulator
            .admin()
            .edit_oauth_app(APP, |app| app.redirect_urls = vec![url.to_owned()])
            .expect("the seeded OAuth application");
    }

    /// The connection's token Secret, if any.
    pub async fn token_secret(&self) -> Option<Secret> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), self.ns.name());
        secrets.get_opt(TOKEN_SECRET).await.expect("read the token Secret")
    }

    /// Sets an annotation on the connection.
    pub async fn annotate(&self, key: &str, value: &str) {
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        self.api()
            .patch(CONNECTION, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate the connection");
    }

    /// Merges `spec` into the connection's spec.
    pub async fn patch_spec(&self, spec: serde_json::Value) {
        let patch = serde_json::json!({ "spec": spec });
        self.api()
            .patch(CONNECTION, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch the connection's spec");
    }

    /// Writes the token Secret as consent leaves it: the seed's refresh token, expiring at
    /// `expires_at`.
    pub async fn put_token_expiring_at(&self, expires_at: k8s_openapi::jiff::Timestamp) {
        put_owned_secret(
            &self.client,
            self.ns.name(),
            CONNECTION,
            TOKEN_SECRET,
            &[
                ("refreshToken", &self.seed.refresh_token),
                ("refreshTokenExpiresAt", &expires_at.to_string()),
            ],
        )
        .await;
    }

    /// Writes the credentials Secret in place (the values are remembered for the leak check).
    pub async fn put_credentials(&self, client_id: &str, client_secret: &str) {
        self.written.locked().push(client_secret.to_owned());
        put_secret(
            &self.client,
            self.ns.name(),
            CREDENTIALS_SECRET,
            &[("clientId", client_id), ("clientSecret", client_secret)],
        )
        .await;
    }

    /// Polls the connection's status until `done` accepts it.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&ServiceNowConnectionStatus) -> bool,
    ) -> ServiceNowConnectionStatus {
        wait_for_status(&self.client, self.ns.name(), CONNECTION, what, done).await
    }

    /// Starts the operator `killed` was again (same public URL: the property names it as its
    /// owner) and waits for READY_TO_SYNC.
    pub async fn restarted_ready(&self, killed: &Operator) -> (Operator, ServiceNowConnectionStatus) {
        let public_port = killed.public_url.rsplit(':').next().and_then(|port| port.parse().ok());
        let operator = Operator::start_with(self.ns.name(), &self.simulator, public_port.expect("a port"), &[]).await;
        let status = self
            .wait_for("READY_TO_SYNC after the restart", |s| {
                s.sync_state == Some(SyncState::ReadyToSync)
            })
            .await;
        (operator, status)
    }

    /// Polls the connection's status until condition `type_` is `truth` for `reason`.
    pub async fn wait_for_condition(&self, type_: &str, truth: &str, reason: Reason) -> ServiceNowConnectionStatus {
        self.wait_for(&format!("{type_}={truth} {}", reason.as_str()), |s| {
            has_condition(s, type_, truth, reason)
        })
        .await
    }

    /// Starts the operator with `extra` flags and waits until the connection is READY_TO_SYNC.
    pub async fn ready(self, extra: &[&str]) -> Ready {
        let operator = self.start_operator(extra).await;
        self.wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
            .await;
        Ready { operator, scene: self }
    }

    /// Asks for a reconcile through `neoagent.io/reconcile-requested-at` and waits until a
    /// reconcile echoed it in `status.lastHandledReconcileAt`; returns that status.
    pub async fn reconcile_now(&self, token: &str) -> ServiceNowConnectionStatus {
        self.annotate(RECONCILE_REQUESTED_AT, token).await;
        self.wait_for(&format!("the reconcile requested as {token:?}"), |s| {
            s.last_handled_reconcile_at.as_deref() == Some(token)
        })
        .await
    }

    /// The Events about the connection.
    pub async fn events(&self) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), self.ns.name());
        let list = events.list(&ListParams::default()).await.expect("list Events");
        list.items
            .into_iter()
            .filter(|event| event.involved_object.name.as_deref() == Some(CONNECTION))
            .collect()
    }

    /// Waits for an Event about the connection with `reason` and returns it.
    pub async fn wait_for_event(&self, reason: &str) -> Event {
        poll_until(Duration::from_secs(20), &format!("an Event {reason}"), || async {
            let events = self.events().await;
            match events.iter().find(|event| event.reason.as_deref() == Some(reason)) {
                Some(event) => Observed::Done(event.clone()),
                None => Observed::not_yet(
                    events
                        .iter()
                        .map(|event| event.reason.clone().unwrap_or_default())
                        .collect::<Vec<_>>(),
                ),
            }
        })
        .await
    }

    /// Every secret value this test knows of: the seed's, every OAuth client secret and token the
    /// instance issued, what the test wrote, the webhook token and the consent state key.
    async fn secret_values(&self) -> Vec<String> {
        let admin = self.simulator.admin();
        let mut values = vec![self.seed.client_secret.clone(), self.seed.refresh_token.clone()];
        values.extend(admin.tokens().into_iter().map(|t| t.token));
        values.extend(admin.oauth_apps().into_iter().map(|app| app.client_secret));
        values.extend(self.written.locked().iter().cloned());
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), self.ns.name());
        for (secret, key) in [
            ("acme-webhook", "token"),
            ("acme-webhook", "previousToken"),
            (
                "servicenow-operator-consent-key",
                servicenow_operator::secrets::STATE_KEY_KEY,
            ),
        ] {
            let found = secrets.get_opt(secret).await.expect("read the operator's Secret");
            if let Some(value) = found.and_then(|s| s.data).and_then(|mut data| data.remove(key)) {
                // The signing key also travels in Base64 (in the instance's callback property).
                values.push(base64::engine::general_purpose::STANDARD.encode(&value.0));
                values.push(String::from_utf8(value.0).expect("a UTF-8 Secret value"));
            }
        }
        values
    }

    /// Fails when a secret value appears in the logs of any operator of this test, the connection
    /// (status included, when it still exists) or its Events.
    pub async fn assert_no_secret_leaked(&self) {
        let connection = self.api().get_opt(CONNECTION).await.expect("read the connection");
        let connection = serde_json::to_string(&connection).expect("connection as JSON");
        let events = serde_json::to_string(&self.events().await).expect("Events as JSON");
        let logs = all_operator_logs(self.ns.name());
        assert!(!logs.is_empty(), "no operator log to check");
        for value in self.secret_values().await.iter().filter(|v| v.len() >= 8) {
            assert!(
                !logs.contains(value.as_str()),
                "a secret value appears in the operator's logs"
            );
            assert!(
                !connection.contains(value.as_str()),
                "a secret value appears in the connection"
            );
            assert!(!events.contains(value.as_str()), "a secret value appears in an Event");
        }
    }
}

/// The invariants after a fault: exactly one rule and one property on the instance (the legacy
/// rule gone), each created by exactly one request — beyond the `faulted` creates of the rule the
/// instance refused to carry out — and `status` naming them. `after` says which fault, for the
/// messages.
pub fn assert_one_rule_and_one_property(
    scene: &Scene,
    status: ServiceNowConnectionStatus,
    faulted: usize,
    after: &str,
) {
    let admin = scene.simulator.admin();
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1, "{after}: exactly one rule: {rules:#?}");
    let properties = admin.records("sys_properties", PROPERTY_QUERY);
    assert_eq!(properties.len(), 1, "{after}: exactly one property: {properties:#?}");
    assert!(
        admin.records("sys_script", LEGACY_QUERY).is_empty(),
        "{after}: the legacy rule is left"
    );
    let log = admin.request_log();
    for (table, faulted) in [("sys_script", faulted), ("sys_properties", 0)] {
        let creates = log
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with(&format!("/table/{table}")))
            .count();
        assert_eq!(
            creates,
            1 + faulted,
            "{after}: {table} created {creates} times, {faulted} faulted"
        );
    }
    let webhook = status.webhook.expect("webhook status");
    assert_eq!(
        webhook.business_rule_sys_id.as_deref(),
        Some(rules[0]["sys_id"].as_str())
    );
    assert_eq!(
        webhook.callback_property_sys_id.as_deref(),
        Some(properties[0]["sys_id"].as_str())
    );
}

/// A [`Scene`] with an operator running and the connection READY_TO_SYNC.
pub struct Ready {
    /// The operator (declared first: it stops before the namespace goes).
    pub operator: Operator,
    /// The scene.
    pub scene: Scene,
}

impl std::ops::Deref for Ready {
    type Target = Scene;

    fn deref(&self) -> &Scene {
        &self.scene
    }
}

/// Sets a [`Scene`] (`extra_spec` merged into the spec), starts the operator and returns once the
/// connection is READY_TO_SYNC.
pub async fn ready_connection(extra_spec: serde_json::Value) -> Ready {
    Scene::new(extra_spec).await.ready(&[]).await
}
