//! The webhook receiver end to end, against a real API server, snowsim and the operator binary:
//! records written on the instance reach a sink as CloudEvents and are counted in
//! `status.webhook` (a reconcile keeps the count, and the count costs no call to the instance);
//! unsigned, wrongly signed, late and replayed requests are refused and neither counted nor
//! forwarded; a rotated key works at once and the replaced one during its grace period;
//! deliveries are retried until the sink is back; a sink that hangs, fails or cannot be reached
//! holds one queue of events and the rest are dropped and counted, and delays no other
//! connection's events; two replicas count every event once; no secret leaks anywhere.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};
use servicenow_operator::{
    api::{ROTATE_WEBHOOK_KEY, ServiceNowConnection, SyncState},
    provision,
    servicenow::SecretString,
    webhook::{counter::FIELD_MANAGER, forward::QUEUE_CAPACITY, signature},
};
use support::{
    Observed,
    instance::{AGENT, APP, HOST},
    operator::{Operator, free_port},
    poll_until,
    scene::{CONNECTION, RULE_QUERY, Ready, Scene, create_connection, put_owned_secret, put_secret, wait_for_status},
};
use tokio::net::TcpListener;

const RECEIVED: &str = "servicenow_operator_webhook_events_received_total";
const FORWARDED: &str = "servicenow_operator_webhook_events_forwarded_total";
const RETRIES: &str = "servicenow_operator_webhook_forward_retries_total";
const FORWARD_FAILED: &str = "servicenow_operator_webhook_events_forward_failed_total";

/// One request the sink received.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("no header {name} in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What the sink saw, and how many requests it still refuses.
#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    refuse: Mutex<usize>,
}

/// A CloudEvents sink on 127.0.0.1: answers 503 to its first `refuse` requests, then 202, and
/// keeps everything it receives. Stops when dropped.
struct Sink {
    state: Arc<SinkState>,
    server: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start(port: u16, refuse: usize) -> Sink {
        let state = Arc::new(SinkState {
            refuse: Mutex::new(refuse),
            ..SinkState::default()
        });
        let router = Router::new()
            .route(
                "/events",
                post(
                    |State(state): State<Arc<SinkState>>, headers: HeaderMap, body: Bytes| async move {
                        let mut refuse = state.refuse.lock().unwrap();
                        if *refuse > 0 {
                            *refuse -= 1;
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        state.received.lock().unwrap().push(Received { headers, body });
                        StatusCode::ACCEPTED
                    },
                ),
            )
            .with_state(state.clone());
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the sink");
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve the sink");
        });
        Sink { state, server }
    }

    fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}/events")
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until the sink holds `count` events and returns them.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        poll_until(
            Duration::from_secs(60),
            &format!("{count} events at the sink"),
            || async {
                let received = self.received();
                if received.len() >= count {
                    Observed::Done(received)
                } else {
                    Observed::not_yet(received.len())
                }
            },
        )
        .await
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A ready connection whose sink is `http://127.0.0.1:<sink_port>/events`.
async fn ready_with_sink(sink_port: u16) -> Ready {
    Scene::new(json!({"webhook": {"sinkUrl": Sink::url(sink_port)}}))
        .await
        .ready(&[])
        .await
}

/// Writes `fields` into `table` through the Table API as the service account, as a person or a
/// flow on the instance would (the Business Rule runs); `sys_id` updates that record, else a new
/// one is inserted. Returns the record as the instance answered it.
async fn write_as_agent(scene: &Scene, table: &str, sys_id: Option<&str>, fields: Value) -> Value {
    let client = scene
        .simulator
        .client_builder()
        .build()
        .expect("a client of the instance");
    let base = format!("{}/api/now/table/{table}", scene.simulator.base_url(HOST));
    let request = match sys_id {
        Some(sys_id) => client.patch(format!("{base}/{sys_id}")),
        None => client.post(base),
    };
    let answer: Value = request
        .basic_auth(AGENT, Some(AGENT))
        .json(&fields)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|error| panic!("write {table} as {AGENT}: {error}"))
        .json()
        .await
        .expect("the Table API's answer");
    answer["result"].clone()
}

/// Asserts that `received` holds the CloudEvent of `operation` on `record` of `table`, as the
/// instance sent it.
fn assert_delivered(received: &[Received], table: &str, operation: &str, record: &Value) {
    let sys_id = record["sys_id"].as_str().expect("sys_id");
    let updated_on = record["sys_updated_on"].as_str().expect("sys_updated_on");
    let (subject, type_) = (
        format!("{table}/{sys_id}"),
        format!("io.neoagent.servicenow.task.{operation}"),
    );
    let event = received
        .iter()
        .find(|event| event.header("ce-subject") == subject && event.header("ce-type") == type_)
        .unwrap_or_else(|| panic!("no {type_} event of {subject} in {received:#?}"));
    assert_eq!(event.header("ce-specversion"), "1.0");
    assert_eq!(event.header("ce-source"), format!("https://{HOST}/{table}"));
    assert_eq!(event.header("ce-time"), format!("{}Z", updated_on.replace(' ', "T")));
    assert_eq!(event.header("content-type"), "application/json");
    let mut body = event.json();
    let id = body["id"].take();
    assert_eq!(
        id.as_str(),
        Some(event.header("ce-id")),
        "the event's own id is its ce-id"
    );
    assert_eq!(
        body,
        json!({
            "id": null, "instance": format!("https://{HOST}/"),
            "table": table, "sys_id": sys_id, "number": record["number"], "operation": operation,
            "sys_updated_on": updated_on, "sys_updated_by": AGENT,
        })
    );
}

/// The value of `key` in the connection's webhook Secret, when there is one.
async fn webhook_secret_value(scene: &Scene, key: &str) -> Option<String> {
    connection_webhook_secret_value(scene, CONNECTION, key).await
}

/// The value of `key` in the webhook Secret of the connection `connection`.
async fn connection_webhook_secret_value(scene: &Scene, connection: &str, key: &str) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(scene.client.clone(), scene.ns.name());
    let secret = secrets
        .get(&format!("{connection}-webhook"))
        .await
        .expect("the webhook Secret");
    let value = secret.data.and_then(|mut data| data.remove(key))?;
    Some(String::from_utf8(value.0).expect("a UTF-8 value"))
}

/// The connection's current webhook signing key, from its Secret.
async fn webhook_token(scene: &Scene) -> String {
    webhook_secret_value(scene, "token").await.expect("a signing key")
}

/// The callback URL of `operator` for `connection`.
fn callback(operator: &Operator, connection: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("connection", connection)
        .finish();
    format!("{}/callback/servicenow?{query}", operator.public_url)
}

/// Now, in milliseconds since the epoch, as the rule sends it.
fn now_millis() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// POSTs `body` as `content_type` to `url`, unsigned; returns the status and the answer's text.
async fn post_to(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let answer = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the operator answers");
    (answer.status().as_u16(), answer.text().await.unwrap_or_default())
}

/// A request as the Business Rule sends it: `body` as `content_type` to `url`, signed with `key`
/// at `millis`.
struct Post<'a> {
    url: &'a str,
    key: &'a str,
    millis: i64,
    content_type: &'a str,
}

impl<'a> Post<'a> {
    /// A JSON post to `url` signed with `key` now.
    fn signed(url: &'a str, key: &'a str) -> Self {
        Post {
            url,
            key,
            millis: now_millis(),
            content_type: "application/json",
        }
    }

    /// Sends `body`; returns the status and the answer's text.
    async fn send(&self, body: impl Into<Vec<u8>>) -> (u16, String) {
        let body = body.into();
        let timestamp = self.millis.to_string();
        let signature = signature::sign(&SecretString::new(self.key), &timestamp, &body);
        let answer = reqwest::Client::new()
            .post(self.url)
            .header("content-type", self.content_type)
            .header(signature::TIMESTAMP_HEADER, timestamp)
            .header(signature::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .expect("the operator answers");
        (answer.status().as_u16(), answer.text().await.unwrap_or_default())
    }
}

/// An event as the Business Rule sends it, for a record `n` that the instance need not hold.
fn synthetic_event(n: u32) -> Value {
    json!({
        "table": "incident", "sys_id": format!("{n:032x}"), "number": format!("INC{n:07}"),
        "operation": "update", "sys_updated_on": "2026-01-31 12:00:00", "sys_updated_by": AGENT,
    })
}

/// The fields of `status.webhook` that `manager` owns on `connection` (`f:<name>`).
fn webhook_fields_of(connection: &ServiceNowConnection, manager: &str) -> Vec<String> {
    let managed = connection.metadata.managed_fields.iter().flatten();
    managed
        .filter(|entry| entry.manager.as_deref() == Some(manager))
        .filter_map(|entry| entry.fields_v1.as_ref()?.0.pointer("/f:status/f:webhook")?.as_object())
        .flat_map(|fields| fields.keys().cloned())
        .collect()
}

/// How often the instance's `sys_properties` was read since its request log was cleared: once
/// per reconcile that reaches the webhook step.
fn property_reads(scene: &Scene) -> usize {
    scene
        .simulator
        .admin()
        .request_log()
        .iter()
        .filter(|call| call.method == "GET" && call.path.ends_with("/sys_properties"))
        .count()
}

#[tokio::test]
async fn records_written_on_the_instance_reach_the_sink_as_cloud_events_and_are_counted() {
    let sink_port = free_port();
    let sink = Sink::start(sink_port, 0).await;
    let ready = ready_with_sink(sink_port).await;

    let mut inserted = Vec::new();
    for table in ["incident", "sc_task", "change_request"] {
        let fields = json!({"short_description": format!("webhook test: a new {table}")});
        inserted.push((table, write_as_agent(&ready, table, None, fields).await));
    }
    let received = sink.wait_for(3).await;
    assert_eq!(received.len(), 3, "{received:#?}");
    for (table, record) in &inserted {
        assert_delivered(&received, table, "insert", record);
    }
    let mut ids: Vec<&str> = received.iter().map(|event| event.header("ce-id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each event has an id of its own");

    let status = ready
        .wait_for("3 events counted", |s| {
            s.webhook.as_ref().is_some_and(|w| w.events_received == 3)
        })
        .await;
    assert!(status.webhook.unwrap().last_event_time.is_some());
    // The reconcile applies the status with force: it must leave the receiver's fields alone.
    let after_reconcile = ready.reconcile_now("after-3-events").await;
    let webhook = after_reconcile.webhook.expect("webhook status");
    assert_eq!(webhook.events_received, 3, "a reconcile changed the count");
    assert!(webhook.business_rule_sys_id.is_some() && webhook.last_event_time.is_some());
    // And it never takes them over: they belong to the receiver's field manager alone.
    let connection = ready.api().get(CONNECTION).await.expect("the connection");
    let counted = ["f:eventsReceived", "f:lastEventTime"];
    let receiver_fields = webhook_fields_of(&connection, FIELD_MANAGER);
    let reconciler_fields = webhook_fields_of(&connection, "servicenow-operator");
    assert!(
        counted.iter().all(|f| receiver_fields.contains(&f.to_string()))
            && reconciler_fields.contains(&"f:businessRuleSysId".to_owned())
            && !reconciler_fields.iter().any(|f| counted.contains(&f.as_str())),
        "receiver: {receiver_fields:?}, reconcile: {reconciler_fields:?}"
    );

    // Two updates: counted on top, and the status writes that count them wake no reconcile (only
    // the requested one reads the instance).
    ready.simulator.admin().clear_request_log();
    for (n, (table, record)) in inserted[..2].iter().enumerate() {
        let sys_id = record["sys_id"].as_str().expect("sys_id");
        let updated = write_as_agent(&ready, table, Some(sys_id), json!({"state": "2"})).await;
        assert_delivered(&sink.wait_for(4 + n).await, table, "update", &updated);
    }
    ready
        .wait_for("5 events counted", |s| {
            s.webhook.as_ref().is_some_and(|w| w.events_received == 5)
        })
        .await;
    let after_reconcile = ready.reconcile_now("after-5-events").await;
    assert_eq!(after_reconcile.webhook.expect("webhook status").events_received, 5);
    assert_eq!(
        property_reads(&ready),
        1,
        "a status write woke a reconcile: {:#?}",
        ready.simulator.admin().request_log()
    );
    assert_eq!(ready.operator.metric(RECEIVED).await, 5.0);
    assert_eq!(ready.operator.metric(FORWARDED).await, 5.0);
    assert_eq!(sink.received().len(), 5);

    let token = webhook_token(&ready).await;
    for event in sink.received() {
        assert!(!format!("{event:?}").contains(&token), "the token reached the sink");
    }
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_neither_counted_nor_forwarded() {
    let sink_port = free_port();
    let sink = Sink::start(sink_port, 0).await;
    let ready = ready_with_sink(sink_port).await;
    let token = webhook_token(&ready).await;
    let operator = &ready.operator;
    let connection = format!("{}/{CONNECTION}", ready.ns.name());
    let url = callback(operator, &connection);
    let event = synthetic_event(1).to_string();
    let wrong = "wrong-token-0123456789abcdefghijklmnopqrstu";

    // Unsigned: no headers, or headers of another form.
    let (status, text) = post_to(&url, "application/json", event.clone()).await;
    assert_eq!(
        (status, text.trim()),
        (
            401,
            "the request is not signed (headers X-Neoagent-Timestamp and X-Neoagent-Signature: v1=…)"
        )
    );
    let legacy = format!("{url}&token={token}");
    let (status, _) = post_to(&legacy, "application/json", event.clone()).await;
    assert_eq!(status, 401, "the token in the URL is no longer a credential");
    // Signed, but not by this connection's key, or for a connection that is not this one.
    let unauthorized = [
        (url.clone(), wrong),
        (url.clone(), ""),
        (
            callback(operator, &format!("{}/other", ready.ns.name())),
            token.as_str(),
        ),
        (callback(operator, &format!("default/{CONNECTION}")), &token),
        (callback(operator, CONNECTION), &token),
        (format!("{}/callback/servicenow", operator.public_url), &token),
    ];
    for (url, key) in &unauthorized {
        let (status, text) = Post::signed(url, key).send(event.clone()).await;
        assert_eq!(status, 401, "{text}");
        assert_eq!(text.trim(), "unknown connection or wrong signature");
    }
    // Signed with the right key, but more than 5 minutes ago (or ahead).
    for skew in [-301_000, 301_000] {
        let late = Post {
            millis: now_millis() + skew,
            ..Post::signed(&url, &token)
        };
        let (status, text) = late.send(event.clone()).await;
        assert_eq!(
            (status, text.trim()),
            (
                401,
                "the signature's timestamp is more than 5 minutes from the receiver's clock"
            )
        );
    }
    let plain = Post {
        content_type: "text/plain",
        ..Post::signed(&url, &token)
    };
    let (status, text) = plain.send(event.clone()).await;
    assert_eq!(
        (status, text.trim()),
        (415, "the body must be JSON (Content-Type: application/json)")
    );
    let oversized = json!({"padding": "x".repeat(64 * 1024)}).to_string();
    let (status, text) = Post::signed(&url, &token).send(oversized).await;
    assert_eq!((status, text.trim()), (413, "the body must be at most 65536 bytes"));
    let malformed = [
        ("{\"table\": ", "the body is not JSON"),
        ("[]", "the body must be a JSON object"),
        (
            &*json!({"table": "incident", "operation": "insert"}).to_string(),
            "sys_id is required",
        ),
        (
            &*json!({"table": "incident", "sys_id": "42", "operation": "insert"}).to_string(),
            "sys_id must be 32 hexadecimal digits",
        ),
        (
            &*json!({"table": "incident", "sys_id": "0".repeat(32), "operation": "merge"}).to_string(),
            "operation must be one of insert, update, delete",
        ),
    ];
    for (body, message) in malformed {
        let (status, text) = Post::signed(&url, &token).send(body.to_owned()).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.starts_with(message), "{body}: {text}");
    }
    let method = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .expect("the operator answers");
    assert_eq!(method.status().as_u16(), 405);

    // Then one good event: the only one counted and forwarded (the sink's queue is in order).
    let good = Post {
        content_type: "application/json; charset=utf-8",
        ..Post::signed(&url, &token)
    };
    let (status, _) = good.send(event.clone()).await;
    assert_eq!(status, 202);
    // The same request again — a replay — is refused, on its own and with a fresh connection.
    let (status, text) = good.send(event.clone()).await;
    assert_eq!((status, text.trim()), (409, "this signed request was received before"));
    for (reason, count) in [
        ("unsigned", 2.0),
        ("unauthorized", 6.0),
        ("stale", 2.0),
        ("unsupported_media_type", 1.0),
        ("too_large", 1.0),
        ("malformed", 5.0),
        ("replayed", 1.0),
    ] {
        let series = format!("servicenow_operator_webhook_requests_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(operator.metric(&series).await, count, "{series}");
    }
    assert_eq!(operator.metric(RECEIVED).await, 1.0);
    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json(), synthetic_event(1));
    assert_eq!(received[0].header("ce-subject"), format!("incident/{:032x}", 1));
    let status = ready
        .wait_for("1 event counted", |s| {
            s.webhook.as_ref().is_some_and(|w| w.events_received >= 1)
        })
        .await;
    assert_eq!(status.webhook.unwrap().events_received, 1);

    // A key written into the Secret by hand works at once; the old one no longer does.
    let rotated = "rotated-token-abcdefghijklmnopqrstuvwxyz0123";
    put_secret(&ready.client, ready.ns.name(), "acme-webhook", &[("token", rotated)]).await;
    poll_until(Duration::from_secs(10), "the rotated key to be accepted", || async {
        let (status, text) = Post::signed(&url, rotated).send(synthetic_event(2).to_string()).await;
        if status == 202 {
            Observed::Done(())
        } else {
            Observed::not_yet((status, text))
        }
    })
    .await;
    let (status, _) = Post::signed(&url, &token).send(synthetic_event(3).to_string()).await;
    assert_eq!(status, 401, "the old key still works");
    sink.wait_for(2).await;
    assert_eq!(sink.received().len(), 2, "only accepted events are forwarded");

    for text in [operator.logs(), format!("{:?}", sink.received())] {
        assert!(!text.contains(&token) && !text.contains(rotated) && !text.contains(wrong));
    }
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn a_rotated_key_replaces_the_property_and_the_old_key_works_during_its_grace_period() {
    let sink_port = free_port();
    let sink = Sink::start(sink_port, 0).await;
    let ready = ready_with_sink(sink_port).await;
    let old = webhook_token(&ready).await;
    let on_instance = |key: &str| {
        provision::signed_callback(
            &format!(
                "{}/callback/servicenow?connection={}%2F{CONNECTION}",
                ready.operator.public_url,
                ready.ns.name()
            ),
            &SecretString::new(key),
        )
    };
    assert_eq!(
        ready.simulator.admin().property(provision::PROPERTY_NAME),
        Some(on_instance(&old)),
        "the property carries the key the Secret holds"
    );

    ready.annotate(ROTATE_WEBHOOK_KEY, "2026-12-04T14:00:00Z").await;
    let new = poll_until(Duration::from_secs(30), "a new signing key", || async {
        let current = webhook_token(&ready).await;
        if current != old {
            Observed::Done(current)
        } else {
            Observed::not_yet("the same key")
        }
    })
    .await;
    assert_eq!(webhook_secret_value(&ready, "previousToken").await, Some(old.clone()));
    assert_eq!(
        webhook_secret_value(&ready, "rotationRequest").await.as_deref(),
        Some("2026-12-04T14:00:00Z")
    );
    let until: k8s_openapi::jiff::Timestamp = webhook_secret_value(&ready, "previousTokenValidUntil")
        .await
        .expect("the end of the grace period")
        .parse()
        .expect("an RFC 3339 time");
    let grace = until.duration_since(k8s_openapi::jiff::Timestamp::now());
    assert!(
        grace > k8s_openapi::jiff::SignedDuration::from_mins(14)
            && grace <= k8s_openapi::jiff::SignedDuration::from_mins(15),
        "{grace:?}"
    );
    poll_until(Duration::from_secs(30), "the property to carry the new key", || async {
        let value = ready.simulator.admin().property(provision::PROPERTY_NAME);
        if value == Some(on_instance(&new)) {
            Observed::Done(())
        } else {
            Observed::not_yet("the old value")
        }
    })
    .await;

    // An event the rule signed with the old key just before the property changed still counts;
    // so do events signed with the new one — by hand and by the rule on the instance.
    let connection = format!("{}/{CONNECTION}", ready.ns.name());
    let url = callback(&ready.operator, &connection);
    let (status, text) = Post::signed(&url, &old).send(synthetic_event(1).to_string()).await;
    assert_eq!(status, 202, "{text}");
    let (status, text) = Post::signed(&url, &new).send(synthetic_event(2).to_string()).await;
    assert_eq!(status, 202, "{text}");
    let incident = write_as_agent(&ready, "incident", None, json!({"short_description": "after rotation"})).await;
    let received = sink.wait_for(3).await;
    assert_delivered(&received, "incident", "insert", &incident);
    // The same request does not rotate again.
    let status = ready.reconcile_now("after-rotation").await;
    assert_eq!(webhook_token(&ready).await, new, "{status:?}");
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn only_the_task_types_of_the_spec_fire_and_changing_them_updates_the_rule_in_place() {
    let sink_port = free_port();
    let sink = Sink::start(sink_port, 0).await;
    let ready = ready_with_sink(sink_port).await;
    let admin = ready.simulator.admin();
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules.len(), 1);
    let rule_id = rules[0]["sys_id"].clone();
    assert_eq!(
        rules[0]["filter_condition"],
        "sys_class_name=incident^ORsys_class_name=problem^ORsys_class_name=change_request\
         ^ORsys_class_name=sc_request^ORsys_class_name=sc_req_item^ORsys_class_name=sc_task"
    );

    // An approval is a task too, and not one of the default types: the rule does not fire for it.
    // (Were it to fire, its event would be queued before the incident's written after it.)
    write_as_agent(
        &ready,
        "sysapproval_group",
        None,
        json!({"short_description": "approve"}),
    )
    .await;
    let incident = write_as_agent(&ready, "incident", None, json!({"short_description": "typed"})).await;
    let received = sink.wait_for(1).await;
    assert_delivered(&received, "incident", "insert", &incident);
    assert_eq!(received.len(), 1, "{received:#?}");

    // Approvals too, now: the same rule is updated in place, without consent.
    ready
        .patch_spec(
            json!({"webhook": {"sinkUrl": Sink::url(sink_port), "taskTypes": ["incident", "sysapproval_group"]}}),
        )
        .await;
    poll_until(Duration::from_secs(30), "the rule's filter to change", || async {
        let rules = admin.records("sys_script", RULE_QUERY);
        match rules.as_slice() {
            [rule] if rule["filter_condition"] == "sys_class_name=incident^ORsys_class_name=sysapproval_group" => {
                Observed::Done(())
            }
            other => Observed::not_yet(format!("{other:?}")),
        }
    })
    .await;
    let rules = admin.records("sys_script", RULE_QUERY);
    assert_eq!(rules[0]["sys_id"], rule_id, "the rule was replaced, not updated");
    let approval = write_as_agent(&ready, "sysapproval_group", None, json!({"short_description": "again"})).await;
    let received = sink.wait_for(2).await;
    assert_eq!(received.len(), 2, "{received:#?}");
    let event = &received[1];
    assert_eq!(
        event.header("ce-subject"),
        format!("sysapproval_group/{}", approval["sys_id"].as_str().expect("sys_id")),
        "the event names the record's class, not the rule's table"
    );
    // A change request is no longer posted.
    write_as_agent(&ready, "change_request", None, json!({"short_description": "untyped"})).await;
    let incident = write_as_agent(&ready, "incident", None, json!({"short_description": "typed again"})).await;
    let received = sink.wait_for(3).await;
    assert_delivered(&received, "incident", "insert", &incident);
    assert_eq!(received.len(), 3, "{received:#?}");
}

#[tokio::test]
async fn events_of_a_clone_that_kept_the_callback_property_are_refused() {
    let sink_port = free_port();
    let sink = Sink::start(sink_port, 0).await;
    let ready = ready_with_sink(sink_port).await;
    let admin = ready.simulator.admin();
    // A clone copies sys_properties and sys_script, the callback property and its key included;
    // when it keeps its own glide.servlet.uri (servicenow-api.md §3.6), its events say so.
    admin.set_property("glide.servlet.uri", "https://acme-dev.service-now.com/");
    write_as_agent(&ready, "incident", None, json!({"short_description": "on the clone"})).await;
    let series = "servicenow_operator_webhook_requests_rejected_total{reason=\"instance_mismatch\"}";
    poll_until(Duration::from_secs(30), "the clone's event to be refused", || async {
        let refused = ready.operator.metric(series).await;
        if refused >= 1.0 {
            Observed::Done(())
        } else {
            Observed::not_yet(refused)
        }
    })
    .await;
    assert_eq!(ready.operator.metric(RECEIVED).await, 0.0);
    // When the clone's glide.servlet.uri is the production one, its events cannot be told apart:
    // they are taken, as this one is.
    admin.set_property("glide.servlet.uri", &format!("https://{HOST}/"));
    let incident = write_as_agent(&ready, "incident", None, json!({"short_description": "on production"})).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1, "the clone's event was forwarded: {received:#?}");
    assert_delivered(&received, "incident", "insert", &incident);
    assert_eq!(ready.operator.metric(series).await, 1.0);
}

/// A ready connection whose sink (on `sink_port`) is down, and an incident written on the instance
/// whose delivery failed once and waits for its retry.
async fn incident_while_the_sink_is_down(sink_port: u16) -> (Ready, Value) {
    let ready = ready_with_sink(sink_port).await;
    let incident = write_as_agent(&ready, "incident", None, json!({"short_description": "Sink down"})).await;
    poll_until(Duration::from_secs(30), "a failed delivery to be retried", || async {
        let retries = ready.operator.metric(RETRIES).await;
        if retries >= 1.0 {
            Observed::Done(())
        } else {
            Observed::not_yet(retries)
        }
    })
    .await;
    (ready, incident)
}

#[tokio::test]
async fn deliveries_are_retried_until_the_sink_is_back() {
    let sink_port = free_port();
    let (ready, incident) = incident_while_the_sink_is_down(sink_port).await;
    // Back, but answering 503 once more before it takes events.
    let sink = Sink::start(sink_port, 1).await;
    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1);
    assert_delivered(&received, "incident", "insert", &incident);
    assert_eq!(*sink.state.refuse.lock().unwrap(), 0, "the 503 was retried");
    assert_eq!(ready.operator.metric(FORWARDED).await, 1.0);
    assert!(ready.operator.metric(RETRIES).await >= 2.0);
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn events_queued_when_the_operator_stops_still_reach_the_sink_and_are_counted() {
    let sink_port = free_port();
    let (mut ready, incident) = incident_while_the_sink_is_down(sink_port).await;
    // Asked to stop while the event waits for its next attempt; the sink comes back meanwhile.
    ready.operator.terminate();
    let sink = Sink::start(sink_port, 0).await;
    let exit = ready.operator.wait_for_exit(Duration::from_secs(30)).await;
    assert!(exit.success(), "the operator ended with {exit}");
    let received = sink.received();
    assert_eq!(
        received.len(),
        1,
        "the queued event was not forwarded before the operator exited"
    );
    assert_delivered(&received, "incident", "insert", &incident);
    let connection = ready.api().get(CONNECTION).await.expect("the connection");
    let webhook = connection.status.and_then(|s| s.webhook).expect("webhook status");
    assert_eq!(webhook.events_received, 1, "{webhook:?}");
    ready.assert_no_secret_leaked().await;
}

#[tokio::test]
async fn two_replicas_count_every_event_once() {
    let ready = Scene::new(json!({})).await.ready(&[]).await;
    let standby = Operator::start(ready.ns.name(), &ready.simulator).await;
    let token = webhook_token(&ready).await;
    let connection = format!("{}/{CONNECTION}", ready.ns.name());
    let replicas = [&ready.operator, &standby];
    const EVENTS: u32 = 20;
    let posts = (0..EVENTS).map(|n| {
        let url = callback(replicas[n as usize % 2], &connection);
        let token = token.clone();
        async move { Post::signed(&url, &token).send(synthetic_event(n).to_string()).await }
    });
    for (status, text) in futures::future::join_all(posts).await {
        assert_eq!(status, 202, "{text}");
    }
    let status = ready
        .wait_for(&format!("{EVENTS} events counted"), |s| {
            s.webhook
                .as_ref()
                .is_some_and(|w| w.events_received >= i64::from(EVENTS))
        })
        .await;
    assert_eq!(status.webhook.unwrap().events_received, i64::from(EVENTS));
    for replica in replicas {
        assert_eq!(replica.metric(RECEIVED).await, f64::from(EVENTS / 2));
    }
    ready.assert_no_secret_leaked().await;
}

/// A sink that never takes an event.
#[derive(Clone, Copy, Debug)]
enum BadSink {
    /// Accepts connections and never answers (the sockets are kept open).
    Hanging,
    /// Answers 500 to everything.
    Failing,
    /// Nobody listens.
    Unreachable,
}

impl BadSink {
    /// Starts the sink; returns its port, the connections it accepted, and its task (to abort).
    async fn start(self) -> (u16, Arc<Mutex<usize>>, Option<tokio::task::JoinHandle<()>>) {
        let accepted = Arc::new(Mutex::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the sink");
        let port = listener.local_addr().expect("the sink's address").port();
        let task = match self {
            BadSink::Hanging => {
                let accepted = accepted.clone();
                Some(tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Ok((socket, _)) = listener.accept().await {
                        held.push(socket);
                        *accepted.lock().unwrap() += 1;
                    }
                }))
            }
            BadSink::Failing => {
                let router = Router::new().route("/events", post(|| async { StatusCode::INTERNAL_SERVER_ERROR }));
                Some(tokio::spawn(async move {
                    axum::serve(listener, router).await.expect("serve the sink");
                }))
            }
            BadSink::Unreachable => None,
        };
        (port, accepted, task)
    }
}

/// Posts events to the connection of `ready`, whose sink is `kind`, until its queue is full and
/// [`MORE`] beyond: the first is taken by the connection's worker and held by the sink (waiting
/// for an answer, or for its next attempt), a queue's worth more is kept, the rest dropped; every
/// one is answered 202 at once.
async fn fill_the_queue(ready: &Ready, kind: BadSink, accepted: &Mutex<usize>) {
    let token = webhook_token(ready).await;
    let url = callback(&ready.operator, &format!("{}/{CONNECTION}", ready.ns.name()));
    let post = |n: u32| {
        let (url, token) = (&url, &token);
        async move {
            let (status, text) = Post::signed(url, token).send(synthetic_event(n).to_string()).await;
            assert_eq!(status, 202, "{kind:?}: event {n}: {text}");
        }
    };
    post(0).await;
    poll_until(Duration::from_secs(30), "the worker to be held by the sink", || async {
        let busy = match kind {
            BadSink::Hanging => *accepted.lock().unwrap() > 0,
            BadSink::Failing | BadSink::Unreachable => ready.operator.metric(RETRIES).await >= 1.0,
        };
        busy.then_some(())
    })
    .await;
    let capacity = u32::try_from(QUEUE_CAPACITY).expect("a small capacity");
    for n in 1..=capacity + MORE {
        post(n).await;
    }
}

/// Events posted beyond a full queue.
const MORE: u32 = 4;

#[tokio::test]
async fn a_sink_that_hangs_fails_or_is_unreachable_holds_one_queue_of_events_and_the_rest_are_dropped_and_counted() {
    for kind in [BadSink::Hanging, BadSink::Failing, BadSink::Unreachable] {
        let (sink_port, accepted, task) = kind.start().await;
        let ready = ready_with_sink(sink_port).await;
        fill_the_queue(&ready, kind, &accepted).await;
        let dropped = format!("{FORWARD_FAILED}{{reason=\"queue_full\"}}");
        assert_eq!(ready.operator.metric(&dropped).await, f64::from(MORE), "{kind:?}");
        assert_eq!(ready.operator.metric(FORWARDED).await, 0.0, "{kind:?}");
        ready.assert_no_secret_leaked().await;
        if let Some(task) = task {
            task.abort();
        }
    }
}

#[tokio::test]
async fn a_hanging_sink_with_a_full_queue_does_not_delay_another_connections_events() {
    let (hanging_port, accepted, task) = BadSink::Hanging.start().await;
    let scene = Scene::new(json!({"webhook": {"sinkUrl": Sink::url(hanging_port)}})).await;
    // A second instance on the simulator, and a connection `beta` to it with a healthy sink.
    let beta_host = "beta.service-now.com";
    let beta = scene
        .simulator
        .add_instance(&snowsim::InstanceConfig::new(beta_host).least_privilege(AGENT));
    let app = beta.oauth_app(APP).expect("the seeded OAuth app");
    let grant = snowsim::drive::password_grant(&scene.simulator, beta_host, &app, AGENT).await;
    let refresh_token = grant["refresh_token"].as_str().expect("a refresh token");
    let (client, ns) = (scene.client.clone(), scene.ns.name().to_owned());
    let (client, ns) = (&client, ns.as_str());
    put_secret(
        client,
        ns,
        "beta-oauth",
        &[("clientId", &app.client_id), ("clientSecret", &app.client_secret)],
    )
    .await;
    let healthy_port = free_port();
    let sink = Sink::start(healthy_port, 0).await;
    let spec = json!({
        "instanceUrl": format!("https://{beta_host}"),
        "credentialsSecretRef": {"name": "beta-oauth"},
        "expectedUserName": AGENT,
        "webhook": {"sinkUrl": Sink::url(healthy_port)},
    });
    create_connection(client, ns, "beta", spec).await;
    put_owned_secret(client, ns, "beta", "beta-token", &[("refreshToken", refresh_token)]).await;
    let resolve = format!("{beta_host}={}", scene.simulator.addr());
    let ready = scene.ready(&["--resolve", &resolve]).await;
    wait_for_status(&ready.client, ns, "beta", "beta READY_TO_SYNC", |s| {
        s.sync_state == Some(SyncState::ReadyToSync)
    })
    .await;

    fill_the_queue(&ready, BadSink::Hanging, &accepted).await;
    let token = connection_webhook_secret_value(&ready, "beta", "token")
        .await
        .expect("beta's signing key");
    let url = callback(&ready.operator, &format!("{ns}/beta"));
    let (status, text) = Post::signed(&url, &token)
        .send(synthetic_event(1_000).to_string())
        .await;
    assert_eq!(status, 202, "{text}");
    // Promptly: the healthy sink gets it within seconds, not after the hanging one's timeouts.
    poll_until(Duration::from_secs(3), "beta's event at its sink", || async {
        (!sink.received().is_empty()).then_some(())
    })
    .await;
    let dropped = format!("{FORWARD_FAILED}{{reason=\"queue_full\"}}");
    assert_eq!(ready.operator.metric(&dropped).await, f64::from(MORE));
    assert_eq!(ready.operator.metric(FORWARDED).await, 1.0);
    ready.assert_no_secret_leaked().await;
    if let Some(task) = task {
        task.abort();
    }
}
