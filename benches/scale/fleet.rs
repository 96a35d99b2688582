//! The fleet: one snowsim instance per connection (`c00001.service-now.com` …, all on one
//! listener), each with the least-privilege service account and a refresh token minted as a
//! consent leaves one, and the Kubernetes objects of each connection, created concurrently.

use std::collections::BTreeMap;

use futures::{StreamExt as _, stream};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use servicenow_operator::{api::ServiceNowConnection, secrets::ownership};

use crate::support::{
    instance::{AGENT, APP},
    operator::{Operator, free_port},
};

/// Kubernetes creates in flight at once.
const CREATES_IN_FLIGHT: usize = 64;

/// The name of connection `index` (1-based), also its instance's first label.
pub fn name(index: usize) -> String {
    format!("c{index:05}")
}

/// The instance host of connection `index`.
pub fn host(index: usize) -> String {
    format!("{}.service-now.com", name(index))
}

/// What a platform team holds for one connection after consent.
pub struct Member {
    pub name: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub admin: snowsim::Admin,
}

/// A simulator serving `count` instances, and the credentials of each.
pub async fn instances(count: usize) -> (snowsim::Server, Vec<Member>) {
    let config = |index| snowsim::InstanceConfig::new(&host(index)).least_privilege(AGENT);
    let server = snowsim::Server::start(
        snowsim::Config {
            instances: vec![config(1)],
            ..snowsim::Config::default()
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("start snowsim");
    let members = (1..=count)
        .map(|index| {
            let admin = if index == 1 {
                server.admin()
            } else {
                server.add_instance(&config(index))
            };
            let app = admin.oauth_app(APP).expect("the seeded OAuth application");
            let refresh_token = admin.mint_refresh_token(APP, AGENT).expect("mint a refresh token");
            Member {
                name: name(index),
                client_id: app.client_id,
                client_secret: app.client_secret,
                refresh_token,
                admin,
            }
        })
        .collect();
    (server, members)
}

/// The operator watching `namespace`, every instance host under `*.service-now.com` resolved to
/// `simulator`, logging at `info` (as deployed: at `debug` it writes lines per call and per
/// event) or at `SCALE_LOG_FILTER` (`info,servicenow_operator::reconcile=debug` logs each
/// reconcile with what woke it), with the flags `extra` on top.
pub async fn operator(namespace: &str, simulator: &snowsim::Server, extra: &[&str]) -> Operator {
    let wildcard = format!("*.service-now.com={}", simulator.addr());
    let filter = std::env::var("SCALE_LOG_FILTER").unwrap_or_else(|_| "info".to_owned());
    let flags = [&["--resolve", &wildcard, "--log-filter", &filter], extra].concat();
    Operator::start_with(namespace, simulator, free_port(), &flags).await
}

/// An Opaque Secret `name` holding `data`.
pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

/// The token Secret consent leaves for `member` (the operator's naming, `<connection>-token`),
/// labelled as the connection with `uid` owns it, as the operator writes it.
pub fn token_secret(member: &Member, uid: &str) -> Secret {
    let mut token = secret(
        &format!("{}-token", member.name),
        &[("refreshToken", &member.refresh_token)],
    );
    token.metadata.labels = Some(ownership::labels(uid));
    token
}

/// The connection object of `member`: its instance, its credentials Secret, resynced hourly (no
/// resync inside the provisioning figures; [`resync_often`] shortens it for the steady state).
pub fn connection(member: &Member) -> ServiceNowConnection {
    let object = serde_json::json!({
        "apiVersion": "neoagent.io/v1alpha1", "kind": "ServiceNowConnection",
        "metadata": {"name": member.name},
        "spec": {
            "instanceUrl": format!("https://{}.service-now.com", member.name),
            "credentialsSecretRef": {"name": format!("{}-oauth", member.name)},
            "expectedUserName": AGENT,
            "resyncInterval": "1h",
        },
    });
    serde_json::from_value(object).expect("a connection")
}

/// Creates, `CREATES_IN_FLIGHT` at a time, each member's credentials Secret, token Secret and
/// connection in `namespace` (the connection alone with `connections_only`).
pub async fn create(client: &Client, namespace: &str, members: &[Member], connections_only: bool) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let connections: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    stream::iter(members)
        .for_each_concurrent(CREATES_IN_FLIGHT, |member| {
            let (secrets, connections) = (secrets.clone(), connections.clone());
            async move {
                let post = PostParams::default();
                if !connections_only {
                    let credentials = secret(
                        &format!("{}-oauth", member.name),
                        &[("clientId", &member.client_id), ("clientSecret", &member.client_secret)],
                    );
                    secrets
                        .create(&post, &credentials)
                        .await
                        .expect("create a credentials Secret");
                }
                let created = connections
                    .create(&post, &connection(member))
                    .await
                    .expect("create a connection");
                if !connections_only {
                    // After the connection: the token Secret carries its UID (created before the
                    // operator starts, so no reconcile sees the connection without it).
                    let uid = created.metadata.uid.expect("a UID");
                    secrets
                        .create(&post, &token_secret(member, &uid))
                        .await
                        .expect("create a token Secret");
                }
            }
        })
        .await;
}

/// Sets every member's `resyncInterval` to 30 s, the shortest the API allows, so that a steady-state
/// pass comes in reasonable time (a spec change: one reconcile each, not steady).
pub async fn resync_often(client: &Client, namespace: &str, members: &[Member]) {
    patch_specs(
        client,
        namespace,
        members,
        &serde_json::json!({"spec": {"resyncInterval": "30s"}}),
    )
    .await;
}

/// Merges `patch` into every member's connection, `CREATES_IN_FLIGHT` at a time.
pub async fn patch_specs(client: &Client, namespace: &str, members: &[Member], patch: &serde_json::Value) {
    let connections: Api<ServiceNowConnection> = Api::namespaced(client.clone(), namespace);
    stream::iter(members)
        .for_each_concurrent(CREATES_IN_FLIGHT, |member| {
            let connections = connections.clone();
            async move {
                connections
                    .patch(&member.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .expect("patch a connection");
            }
        })
        .await;
}
