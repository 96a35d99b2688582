//! The bad-input corpus: every input a user, a stranger or a broken instance can hand the operator,
//! each with the clear error it must get — the field, the rule, and what to do — and never a
//! panic. Three tables:
//!
//! * [`PURE`]: instance URLs, credentials Secrets, durations, webhook bodies, encoded-query parts,
//!   consent tickets and states, checked by the functions the operator runs on them;
//! * `the_api_server_refuses_each_bad_spec_with_its_rule`: connection documents the API server
//!   refuses through the CRD's schema and CEL rules (dry run, server-side apply, strict fields);
//! * `each_broken_answer_of_an_instance_is_a_clear_error`: answers no Table API should give
//!   (HTML, empty, truncated JSON, wrong shapes, 10 MiB), served by snowsim over HTTPS to the
//!   operator's own client; `each_broken_batch_answer_is_the_error_of_the_read_sent_alone`: the
//!   same for the Batch API request that carries a drift check's reads (missing or unserviced
//!   items, bodies that are not Base64, sub-answers 401/403/429/5xx, a whole answer that is not a
//!   batch answer).
//!
//! The webhook receiver's HTTP-level refusals (65 KiB bodies, wrong media type, unsigned, replayed)
//! are in `tests/webhook.rs`; the consent endpoints' in `tests/consent.rs` and
//! `tests/public_burst.rs`.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, jiff::Timestamp};
use kube::api::{Api, Patch, PatchParams, ValidationDirective};
use servicenow_operator::{
    api::{RECONCILE_REQUESTED_AT, RECONNECT, ServiceNowConnection, SyncState, duration, request},
    http::consent_state,
    secrets,
    servicenow::{
        Client, ClientConfig, ClientCredentials, InstanceUrl, Lookup, NoObserver, SecretString, ServiceNow,
        query::EncodedQuery,
    },
    ticket,
    webhook::event,
};
use snowsim::{Fault, FaultAction, drive};
use support::{
    TestNamespace, install_crd,
    instance::{AGENT, APP, HOST},
    scene::Scene,
};

/// One input and the words its error must contain.
struct Case {
    input: Input,
    error: &'static str,
}

enum Input {
    /// `spec.instanceUrl`.
    Url(String),
    /// The credentials Secret's `data`: key and value pairs (`None`: no data at all).
    Credentials(Option<Vec<(&'static str, Vec<u8>)>>),
    /// `spec.resyncInterval` or a duration flag.
    Duration(String),
    /// A webhook body.
    Event(Vec<u8>),
    /// A field and values for an encoded query.
    Query(&'static str, Vec<String>),
    /// `?ticket=` of `/oauth/servicenow/start`.
    Ticket(String),
    /// `?state=` of the consent callback.
    State(String),
}

fn url(text: impl Into<String>) -> Input {
    Input::Url(text.into())
}

fn credentials(pairs: &[(&'static str, &[u8])]) -> Input {
    Input::Credentials(Some(pairs.iter().map(|(k, v)| (*k, v.to_vec())).collect()))
}

fn body(text: impl Into<Vec<u8>>) -> Input {
    Input::Event(text.into())
}

/// A webhook body: the rule's valid event with `field` set to the JSON `value`.
fn event_with(field: &str, value: &str) -> Input {
    let mut fields = vec![
        ("table", "\"incident\"".to_owned()),
        ("sys_id", "\"9d385017c611228701d22104cc95c371\"".to_owned()),
        ("operation", "\"update\"".to_owned()),
    ];
    fields.retain(|(name, _)| *name != field);
    if !value.is_empty() {
        fields.push((leak(field), value.to_owned()));
    }
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    body(format!("{{{}}}", members.join(",")))
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

fn query(field: &'static str, values: &[&str]) -> Input {
    Input::Query(field, values.iter().map(|v| (*v).to_owned()).collect())
}

const KEY: [u8; 32] = [7; 32];
const OK_ID: &[u8] = b"3f1c0c5e2a4b4d0c9e8f7a6b5c4d3e2f";
const NOW: i64 = 1_796_400_000;

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

/// The corpus of inputs checked by pure functions (the table is built at run time for the large
/// and binary values).
fn pure_cases() -> Vec<Case> {
    let long_label = "a".repeat(63);
    let issued = ticket::issue(&KEY, "itsm/acme", [1; ticket::RANDOM_LEN], now());
    let minted = consent_state::mint(&KEY, "itsm/acme", "uid-1", now());
    let case = |input, error| Case { input, error };
    vec![
        // Instance URLs beyond the shared table of tests/data/instance_url_cases.rs.
        case(url("https://acmé.service-now.com"), "only printable ASCII"),
        case(
            url("https://xn--acm-bma.service-now.com"),
            "punycode (xn--) labels are not allowed",
        ),
        case(url("https://ACME.service-now.com"), "write the host in lower case"),
        case(url("https://acme.Service-Now.com"), "write the host in lower case"),
        case(
            url("https://acme.service-now.com."),
            "the host must be <instance>.service-now.com",
        ),
        case(
            url("https://acme.service-now.com.."),
            "the host must be <instance>.service-now.com",
        ),
        case(url("https://[2001:db8::1]"), "a port is not allowed"),
        case(url("https://[::ffff:10.0.0.1]"), "a port is not allowed"),
        case(
            url("https://10.0.0.1"),
            "vanity hosts, IP addresses and the bare domains are not allowed",
        ),
        case(url("https://service-now.com"), "the bare domains are not allowed"),
        case(
            url("https://acme..service-now.com"),
            "the host must be <instance>.service-now.com",
        ),
        case(
            url("https://-acme.service-now.com"),
            "the host must be <instance>.service-now.com",
        ),
        case(
            url(format!("https://{}.service-now.com", "a".repeat(2_000))),
            "longer than 253 characters",
        ),
        case(
            url(format!(
                "https://{}.service-now.com",
                [long_label.as_str(); 4].join(".")
            )),
            "longer than 253 characters",
        ),
        case(
            url(format!("https://{}.service-now.com", "a".repeat(64))),
            "the host must be <instance>.service-now.com",
        ),
        case(url("https://acme.service-now.com\u{0}"), "only printable ASCII"),
        case(
            url("https://acme.service-now.com\r\nHost: evil"),
            "only printable ASCII",
        ),
        case(
            url("https://acme.service-now.com%2f"),
            "the host must be <instance>.service-now.com",
        ),
        // Credentials Secrets.
        case(Input::Credentials(None), "has no key \"clientId\""),
        case(credentials(&[("clientSecret", b"s3cret")]), "has no key \"clientId\""),
        case(credentials(&[("clientId", OK_ID)]), "has no key \"clientSecret\""),
        case(
            credentials(&[("client_id", OK_ID), ("client_secret", b"s")]),
            "has no key \"clientId\"",
        ),
        case(
            credentials(&[("clientId", b""), ("clientSecret", b"s")]),
            "\"clientId\" in the credentials Secret \"acme-oauth\" is empty",
        ),
        case(
            credentials(&[("clientId", OK_ID), ("clientSecret", b"s\n")]),
            "ends with a newline",
        ),
        case(
            credentials(&[("clientId", OK_ID), ("clientSecret", b"s\r\n")]),
            "ends with a newline",
        ),
        case(
            credentials(&[("clientId", b" id"), ("clientSecret", b"s")]),
            "leading or trailing whitespace",
        ),
        case(
            credentials(&[("clientId", b"   "), ("clientSecret", b"s")]),
            "leading or trailing whitespace",
        ),
        case(
            credentials(&[("clientId", b"a\tb"), ("clientSecret", b"s")]),
            "contains control characters",
        ),
        case(
            credentials(&[("clientId", b"a\0b"), ("clientSecret", b"s")]),
            "contains control characters",
        ),
        case(
            credentials(&[("clientId", &[0xff, 0xfe, 0x00]), ("clientSecret", b"s")]),
            "is not UTF-8 text",
        ),
        case(
            credentials(&[("clientId", OK_ID), ("clientSecret", &[0xc3, 0x28])]),
            "is not UTF-8 text",
        ),
        case(
            credentials(&[("clientId", OK_ID), ("clientSecret", &vec![b'x'; 1 << 20])]),
            "is longer than 1,024 bytes",
        ),
        // Durations (the CRD's pattern refuses these too; the flags of the binary meet this parser).
        case(
            Input::Duration(String::new()),
            "\"\" is not a duration such as 90s, 10m or 1h30m",
        ),
        case(Input::Duration("10 minutes".into()), "is not a duration"),
        case(Input::Duration("1.5h".into()), "is not a duration"),
        case(Input::Duration("-1m".into()), "is not a duration"),
        case(Input::Duration("100y".into()), "is not a duration"),
        case(Input::Duration("1h30".into()), "is not a duration"),
        case(Input::Duration("99999999999h".into()), "is not a duration"),
        case(Input::Duration("4294967295h".repeat(1_200_000)), "is not a duration"),
        // Webhook bodies.
        case(body("table=incident&sys_id=1"), "the body is not JSON"),
        case(body(""), "the body is not JSON"),
        case(body("{\"table\":\"incident\""), "the body is not JSON"),
        case(body(b"{\"table\":\"inc\xffident\"}".to_vec()), "the body is not JSON"),
        case(
            body(format!("{{\"table\":{}", "[".repeat(1_000))),
            "the body is not JSON",
        ),
        case(
            body(format!("{}{}", "[".repeat(1_000), "]".repeat(1_000))),
            "the body must be a JSON object",
        ),
        case(body("\"incident\""), "the body must be a JSON object"),
        case(body("null"), "the body must be a JSON object"),
        case(
            body(
                r#"{"table":"incident","sys_id":"9d385017c611228701d22104cc95c371","operation":"update","sys_id":"0123456789abcdef0123456789abcdef"}"#,
            ),
            "sys_id appears more than once",
        ),
        case(event_with("sys_id", "12345"), "sys_id must be a string"),
        case(event_with("table", "[\"incident\"]"), "table must be a string"),
        case(
            event_with("operation", "{\"insert\":true}"),
            "operation must be a string",
        ),
        case(event_with("table", ""), "table is required"),
        case(
            event_with("sys_id", "\"9d385017c611228701d22104cc95c37\""),
            "sys_id must be 32 hexadecimal digits",
        ),
        case(event_with("table", "\"Incident\""), "table must be a table name"),
        case(
            event_with("operation", "\"INSERT\""),
            "operation must be one of insert, update, delete",
        ),
        case(
            event_with("sys_updated_on", "\"04/12/2026 17:00\""),
            "sys_updated_on must be a UTC date and time",
        ),
        case(
            event_with("number", &format!("\"{}\"", "9".repeat(256))),
            "number must be at most 255 characters",
        ),
        case(event_with("id", "\"not-a-guid\""), "id must be 32 hexadecimal digits"),
        // Encoded-query parts.
        case(query("name", &["a^ORsys_id=b"]), "the value for name contains '^'"),
        case(query("name", &["  JavaScript:gs.log(1)"]), "would run as script"),
        case(query("name^ORx", &["a"]), "is not a plain (dot-walked) column name"),
        case(query("role..name", &["a"]), "is not a plain (dot-walked) column name"),
        case(query("", &["a"]), "is not a plain (dot-walked) column name"),
        case(query("name", &[]), "no values given for name"),
        // Consent query strings.
        case(Input::Ticket(String::new()), "Invalid"),
        case(Input::Ticket(format!("{}x", issued.ticket)), "Invalid"),
        case(Input::Ticket(issued.ticket.replacen("t1.", "t2.", 1)), "Invalid"),
        case(Input::Ticket("t1.".repeat(400)), "Invalid"),
        case(Input::State("v1.a.b.c.d.e.f".into()), "the consent state is malformed"),
        case(
            Input::State(minted.state.to_uppercase()),
            "the consent state is malformed",
        ),
        case(
            Input::State(format!("{}%00", minted.state)),
            "the consent state is malformed",
        ),
        case(
            Input::State(format!("{}A", minted.state)),
            "open the connection's consentUrl again",
        ),
    ]
}

/// The error `input` gets, or `None` when it is accepted.
fn error_of(input: &Input) -> Option<String> {
    match input {
        Input::Url(text) => InstanceUrl::parse(text).err().map(|e| e.to_string()),
        Input::Credentials(pairs) => {
            let data: Option<BTreeMap<String, ByteString>> = pairs.as_ref().map(|pairs| {
                pairs
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), ByteString(value.clone())))
                    .collect()
            });
            secrets::credentials_from("acme-oauth", data.as_ref())
                .err()
                .map(|e| e.to_string())
        }
        Input::Duration(text) => duration::parse(text).err(),
        Input::Event(bytes) => event::parse(bytes).err().map(|e| e.to_string()),
        Input::Query(field, values) => {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            EncodedQuery::new().any_of(field, &values).err().map(|e| e.to_string())
        }
        Input::Ticket(text) => ticket::verify(&KEY, text, now()).err().map(|e| format!("{e:?}")),
        Input::State(text) => consent_state::verify(&KEY, text, now()).err().map(|e| e.to_string()),
    }
}

#[test]
fn each_bad_input_of_the_corpus_gets_its_clear_error() {
    let cases = pure_cases();
    let mut wrong = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        match error_of(&case.input) {
            Some(message) if message.contains(case.error) => {
                // The message never quotes a credential, and stays short enough to read.
                assert!(
                    !message.contains("s3cret") && message.len() < 400,
                    "case {index}: {message}"
                );
            }
            outcome => wrong.push(format!("case {index}: expected {:?}, got {outcome:?}", case.error)),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        cases.len() >= 70,
        "the pure corpus keeps at least 70 cases, has {}",
        cases.len()
    );
}

/// A connection document with `spec` fields replaced by `overrides` (JSON members).
fn document(overrides: &str) -> serde_json::Value {
    let text = format!(
        r#"{{"apiVersion":"neoagent.io/v1alpha1","kind":"ServiceNowConnection","metadata":{{"name":"bad"}},
            "spec":{{"instanceUrl":"https://acme.service-now.com","credentialsSecretRef":{{"name":"acme-oauth"}}{overrides}}}}}"#
    );
    serde_json::from_str(&text).expect("the test's document is JSON")
}

#[tokio::test]
async fn the_api_server_refuses_each_bad_spec_with_its_rule() {
    let client = install_crd().await;
    let ns = TestNamespace::new(&client).await;
    let api: Api<ServiceNowConnection> = Api::namespaced(client, ns.name());
    let long = format!(",\"instanceUrl\":\"https://{}.service-now.com\"", "a".repeat(2_000));
    let cases: [(&str, &str); 12] = [
        (
            ",\"resyncInterval\":\"0s\"",
            "resyncInterval must be a duration of at least 30s",
        ),
        (
            ",\"resyncInterval\":\"29s\"",
            "resyncInterval must be a duration of at least 30s",
        ),
        (
            ",\"resyncInterval\":\"100y\"",
            "resyncInterval must be a duration of at least 30s",
        ),
        (
            ",\"resyncInterval\":\"1h30\"",
            "resyncInterval must be a duration of at least 30s",
        ),
        (
            ",\"resyncInterval\":\"\"",
            "resyncInterval must be a duration of at least 30s",
        ),
        (",\"resyncInterval\":600", ".spec.resyncInterval: expected string"),
        (&long, "spec.instanceUrl: Too long"),
        (
            ",\"instanceUrl\":\"https://ACME.service-now.com\"",
            "write the host in lower case",
        ),
        (",\"suspend\":\"yes\"", ".spec.suspend: expected boolean"),
        (
            ",\"resyncIntervall\":\"10m\"",
            ".spec.resyncIntervall: field not declared in schema",
        ),
        (
            ",\"credentialsSecretRef\":{\"name\":\"acme-oauth\",\"namespace\":\"other\"}",
            ".spec.credentialsSecretRef.namespace: field not declared in schema",
        ),
        (
            ",\"webhook\":{\"taskTypes\":\"incident\"}",
            ".spec.webhook.taskTypes: expected list",
        ),
    ];
    let params = PatchParams {
        dry_run: true,
        field_manager: Some("bad-inputs".into()),
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::default()
    };
    let mut wrong = Vec::new();
    for (overrides, expected) in cases {
        let outcome = api.patch("bad", &params, &Patch::Apply(document(overrides))).await;
        match outcome {
            Err(kube::Error::Api(status)) if status.message.contains(expected) => {}
            outcome => wrong.push(format!("{overrides:.80}: expected {expected:?}, got {outcome:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The same document without the bad field is accepted: the refusals are the fields' own.
    api.patch("bad", &params, &Patch::Apply(document(""))).await.unwrap();
}

/// snowsim and the operator's client, and a token of `neo.agent`.
async fn instance() -> (snowsim::Server, Client, InstanceUrl, SecretString) {
    let server = support::instance::simulator().await;
    let client = Client::new(ClientConfig {
        ca_bundle: Some(server.ca_path().unwrap()),
        resolve: vec![(HOST.to_owned(), server.addr())],
        request_timeout: Duration::from_secs(10),
        observer: std::sync::Arc::new(NoObserver),
    })
    .unwrap();
    let app = server.admin().oauth_app(APP).expect("the default OAuth application");
    let grant = drive::password_grant(&server, HOST, &app, AGENT).await;
    let token = SecretString::new(grant["access_token"].as_str().expect("an access token"));
    (
        server,
        client,
        InstanceUrl::parse(&format!("https://{HOST}")).unwrap(),
        token,
    )
}

fn page(code: u16, content_type: &str, body: impl Into<String>) -> FaultAction {
    FaultAction::Page {
        code,
        content_type: content_type.to_owned(),
        body: body.into(),
    }
}

#[tokio::test]
async fn each_broken_answer_of_an_instance_is_a_clear_error() {
    let (server, client, instance, token) = instance().await;
    let app = server.admin().oauth_app(APP).unwrap();
    let credentials = ClientCredentials {
        client_id: SecretString::new(app.client_id.clone()),
        client_secret: SecretString::new(app.client_secret.clone()),
    };
    let html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    let table_cases: Vec<(FaultAction, &str)> = vec![
        (page(200, "text/html", html), "unexpected answer: HTTP 200"),
        (page(200, "application/json", ""), "unexpected answer: HTTP 200"),
        (page(200, "application/json", "null"), "unexpected answer: HTTP 200"),
        (
            page(200, "application/json", "{\"result\":\"none\"}"),
            "unexpected answer: HTTP 200",
        ),
        (
            page(200, "application/json", "{\"result\":[{\"sys_id\":5}"),
            "unexpected answer: HTTP 200",
        ),
        (
            page(200, "application/json", "{\"result\":[{\"user_name\":[]}]}"),
            "unexpected answer: HTTP 200",
        ),
        (
            page(200, "text/html", "x".repeat(10 << 20)),
            "unexpected answer: HTTP 200",
        ),
        (
            page(200, "application/json", "x".repeat(17 << 20)),
            "with a body over 16777216 bytes",
        ),
        (page(502, "text/html", html), "the instance failed with HTTP 502"),
        (page(500, "application/json", ""), "the instance failed with HTTP 500"),
        (page(401, "text/html", html), "401 Unauthorized"),
        (page(403, "text/plain", "Forbidden"), "403"),
    ];
    let mut wrong = Vec::new();
    for (action, expected) in table_cases {
        server.admin().clear_faults();
        server.admin().inject_fault(Fault::new("/api/now", action.clone()));
        match client.current_user(&instance, &token).await {
            Err(error) if error.to_string().contains(expected) => {
                assert!(!error.to_string().contains(token.expose()));
                assert!(error.to_string().len() < 600, "{error}");
            }
            outcome => wrong.push(format!(
                "{:.120}: expected {expected:?}, got {outcome:?}",
                format!("{action:?}")
            )),
        }
    }
    let refresh = drive::password_grant(&server, HOST, &app, AGENT).await["refresh_token"]
        .as_str()
        .map(SecretString::new)
        .expect("a refresh token");
    let token_cases: Vec<(FaultAction, &str)> = vec![
        (
            page(200, "text/html", html),
            "the token response is not a JSON object of the expected shape",
        ),
        (
            page(200, "application/json", "{}"),
            "the token response has no access_token",
        ),
        (
            page(200, "application/json", "{\"access_token\":7}"),
            "the token response is not a JSON object of the expected shape",
        ),
        (page(400, "text/html", html), "HTTP 400"),
        (page(503, "text/plain", ""), "the instance failed with HTTP 503"),
    ];
    for (action, expected) in token_cases {
        server.admin().clear_faults();
        server
            .admin()
            .inject_fault(Fault::new("/oauth_token.do", action.clone()));
        match client.refresh_token(&instance, &credentials, &refresh).await {
            Err(error) if error.to_string().contains(expected) => {
                for secret in [refresh.expose(), credentials.client_secret.expose()] {
                    assert!(!error.to_string().contains(secret), "{error}");
                }
            }
            outcome => wrong.push(format!(
                "{:.120}: expected {expected:?}, got {outcome:?}",
                format!("{action:?}")
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Without the faults the same calls succeed: the errors were the answers'.
    server.admin().clear_faults();
    client.current_user(&instance, &token).await.unwrap();
    client.refresh_token(&instance, &credentials, &refresh).await.unwrap();
}

/// Request annotations as large as the API server takes: the status records their digest, not the
/// values (`api::request`), and each request is handled.
#[tokio::test]
async fn huge_request_annotations_are_recorded_in_the_status_as_digests() {
    let scene = Scene::new(serde_json::json!({})).await;
    let operator = scene.start_operator(&[]).await;
    scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    let reconcile = "r".repeat(100 * 1024);
    let reconnect = "c".repeat(100 * 1024);
    let (reconcile_recorded, reconnect_recorded) = (request::recorded(&reconcile), request::recorded(&reconnect));
    assert!(
        reconcile_recorded.starts_with(request::DIGEST_PREFIX),
        "{reconcile_recorded}"
    );
    scene.annotate(RECONCILE_REQUESTED_AT, &reconcile).await;
    scene.annotate(RECONNECT, &reconnect).await;
    let status = scene
        .wait_for("both requests recorded as digests", |s| {
            s.last_handled_reconcile_at.as_deref() == Some(reconcile_recorded.as_str())
                && s.last_handled_reconnect_at.as_deref() == Some(reconnect_recorded.as_str())
        })
        .await;
    let written = serde_json::to_string(&status).expect("the status as JSON");
    assert!(written.len() < 16 * 1024, "a status of {} bytes", written.len());
    assert_eq!(status.sync_state, Some(SyncState::ReadyToSync));
    drop(operator);
}

/// The reads of a drift check, as the operator asks for them.
fn drift_check(user_sys_id: &str) -> Lookup<'_> {
    Lookup {
        user_sys_id,
        roles: &["itil", "admin"],
        rule_names: &[servicenow_operator::provision::RULE_NAME],
        property_name: servicenow_operator::provision::PROPERTY_NAME,
    }
}

/// A batch answer: the roles' item (id 1) as `first`, the two others served empty.
fn batch_answer(first: serde_json::Value) -> String {
    use base64::Engine as _;
    let empty = base64::engine::general_purpose::STANDARD.encode(r#"{"result":[]}"#);
    let fine =
        |id: &str| serde_json::json!({"id": id, "status_code": 200, "status_text": "OK", "headers": [], "body": empty});
    serde_json::json!({
        "batch_request_id": "1",
        "serviced_requests": [first, fine("2"), fine("3")],
        "unserviced_requests": [],
    })
    .to_string()
}

#[tokio::test]
async fn each_broken_batch_answer_is_the_error_of_the_read_sent_alone() {
    use base64::Engine as _;
    let (server, client, instance, token) = instance().await;
    let user = client.current_user(&instance, &token).await.unwrap();
    let lookup = drift_check(&user.sys_id);
    let roles_path = "/api/now/v2/table/sys_user_has_role";
    let envelope = |message: &str| format!(r#"{{"error":{{"message":"{message}","detail":null}},"status":"failure"}}"#);
    // Sub-answers: each gives the error the read gets when the instance answers it so alone.
    let sub_answers: Vec<(u16, &str, String)> = vec![
        (401, "application/json", envelope("User Not Authenticated")),
        (403, "application/json", envelope("Operation Failed")),
        (403, "application/json", envelope("Missing required api access scope")),
        (429, "application/json", envelope("Rate limit exceeded")),
        (500, "application/json", String::new()),
        (503, "text/html", "<html>down</html>".to_owned()),
        (200, "application/json", "{\"result\":\"none\"}".to_owned()),
        (400, "application/json", envelope("Invalid query")),
    ];
    let mut wrong = Vec::new();
    for (status, content_type, body) in sub_answers {
        server.admin().clear_faults();
        server
            .admin()
            .inject_fault(Fault::new(roles_path, page(status, content_type, body.clone())));
        let alone = client
            .user_roles(&instance, &token, &user.sys_id, lookup.roles)
            .await
            .err()
            .map(|error| error.to_string());
        server.admin().clear_faults();
        let item = serde_json::json!({
            "id": "1", "status_code": status, "status_text": "",
            "headers": [{"name": "Content-Type", "value": content_type}],
            "body": base64::engine::general_purpose::STANDARD.encode(&body),
        });
        server.admin().inject_fault(Fault::new(
            snowsim::batch::PATH,
            page(200, "application/json", batch_answer(item)),
        ));
        let found = client.lookup(&instance, &token, &lookup).await;
        let batched = found.roles.as_ref().err().map(ToString::to_string);
        if alone.is_none() || alone != batched {
            wrong.push(format!(
                "HTTP {status} {body:.40}: alone {alone:?}, batched {batched:?}"
            ));
        }
        if !matches!(found.records, Some(Ok(_))) {
            wrong.push(format!(
                "HTTP {status}: the records' items were fine: {:?}",
                found.records
            ));
        }
    }
    // Answers only a batch can give.
    let only_batch: Vec<(String, &str)> = vec![
        (
            serde_json::json!({"serviced_requests": [], "unserviced_requests": ["1", "2", "3"]}).to_string(),
            "its batch reached a size or time limit (unserviced)",
        ),
        (
            serde_json::json!({"serviced_requests": [], "unserviced_requests": []}).to_string(),
            "lists neither an answer for this call nor the call as unserviced",
        ),
        (
            batch_answer(serde_json::json!({"id": "1", "status_code": 200, "body": "not base64!"})),
            "has a body that is not Base64",
        ),
        (
            batch_answer(serde_json::json!({"id": "1", "body": ""})),
            "has no valid status_code",
        ),
        (
            "<html><body>gateway</body></html>".to_owned(),
            "HTTP 200 with a body that is not a batch answer",
        ),
    ];
    for (answer, expected) in only_batch {
        server.admin().clear_faults();
        server.admin().inject_fault(Fault::new(
            snowsim::batch::PATH,
            page(200, "application/json", answer.clone()),
        ));
        match client.lookup(&instance, &token, &lookup).await.roles {
            Err(error) if error.to_string().contains(expected) => {
                assert!(
                    error.to_string().contains("list sys_user_has_role") || expected.contains("batch answer"),
                    "{error}"
                );
                assert!(!error.to_string().contains(token.expose()), "{error}");
            }
            outcome => wrong.push(format!("{answer:.60}: expected {expected:?}, got {outcome:?}")),
        }
    }
    // The batch itself refused: a failed batch fails the roles, the records unread.
    for (status, expected) in [(401, "401 Unauthorized"), (500, "the instance failed with HTTP 500")] {
        server.admin().clear_faults();
        server.admin().inject_fault(Fault::new(
            snowsim::batch::PATH,
            page(status, "application/json", envelope("x")),
        ));
        let found = client.lookup(&instance, &token, &lookup).await;
        match (&found.roles, &found.records) {
            (Err(error), None) if error.to_string().contains(expected) => {}
            outcome => wrong.push(format!("batch HTTP {status}: expected {expected:?}, got {outcome:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Without the faults the same lookup succeeds: the errors were the answers'.
    server.admin().clear_faults();
    let found = client.lookup(&instance, &token, &lookup).await;
    assert!(found.roles.unwrap().contains(&"itil".to_owned()));
    assert!(matches!(found.records, Some(Ok(_))), "{:?}", found.records);
}

#[tokio::test]
async fn an_instance_that_refuses_batches_is_read_apart_and_not_sent_one_again() {
    let (server, client, instance, token) = instance().await;
    let user = client.current_user(&instance, &token).await.unwrap();
    let lookup = drift_check(&user.sys_id);
    let expected = client.lookup(&instance, &token, &lookup).await;
    let expected = (expected.roles.unwrap(), expected.records.map(Result::unwrap));
    // The Batch API unknown to the instance (as `/api/now/batch` is): 400 "Requested URI does not
    // represent any resource".
    let unknown =
        r#"{"error":{"message":"Requested URI does not represent any resource","detail":null},"status":"failure"}"#;
    server
        .admin()
        .inject_fault(Fault::new(snowsim::batch::PATH, page(400, "application/json", unknown)));
    server.admin().clear_request_log();
    for round in ["refused", "remembered"] {
        let found = client.lookup(&instance, &token, &lookup).await;
        let found = (found.roles.unwrap(), found.records.map(Result::unwrap));
        assert_eq!(found, expected, "{round}: the same answers apart");
    }
    let log = server.admin().request_log();
    let batches = log.iter().filter(|c| c.path == snowsim::batch::PATH).count();
    assert_eq!(batches, 1, "a batch sent again: {log:#?}");
    let apart = |table: &str| {
        log.iter()
            .filter(|c| !c.batch_item && c.method == "GET" && c.path.ends_with(table))
            .count()
    };
    for table in ["/sys_user_has_role", "/sys_script", "/sys_properties"] {
        assert_eq!(apart(table), 2, "{table} not read apart each time: {log:#?}");
    }
}
