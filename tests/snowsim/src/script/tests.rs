use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

const CALLBACK: &str = "https://hooks.example.test/servicenow/acme";
/// The signing key the callback property carries after `#key=`: Base64 of `key-bytes`.
const SIGNING_KEY: &str = "a2V5LWJ5dGVz";
/// The instance's own URL (`glide.servlet.uri`).
const SERVLET_URI: &str = "https://acme.service-now.com/";

/// The webhook rule the operator provisions, from the operator's source (one copy: a rule that
/// changes there is tested here as it is).
const WEBHOOK_RULE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../src/provision/task_webhook.js"
));

fn record(fields: &[(&str, &str)]) -> BTreeMap<String, String> {
    fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn incident() -> BTreeMap<String, String> {
    record(&[
        ("sys_id", "9d385017c611228701d22104cc95c371"),
        ("sys_class_name", "incident"),
        ("number", "INC0010001"),
        ("short_description", "Printer on fire"),
        ("priority", "1"),
        ("state", "2"),
        ("assigned_to", ""),
        ("sys_updated_on", "2025-01-02 03:04:05"),
        ("sys_updated_by", "neo.agent"),
    ])
}

fn callback_property(name: &str) -> Option<String> {
    match name {
        "x_neoagent.callback_url" => Some(format!("{CALLBACK}#key={SIGNING_KEY}")),
        "glide.servlet.uri" => Some(SERVLET_URI.to_string()),
        _ => None,
    }
}

fn no_property(_: &str) -> Option<String> {
    None
}

/// Runs `script` on `current` on `task`, with `previous`, no network.
fn run_with(
    script: &str,
    operation: &str,
    current: &BTreeMap<String, String>,
    previous: Option<&BTreeMap<String, String>>,
    property: &dyn Fn(&str) -> Option<String>,
) -> Result<ScriptOutcome, (ScriptError, Vec<LogLine>)> {
    run_on("task", script, operation, current, previous, property)
}

/// Runs `script` on `current` as a record of `table`, with `previous`, no network.
fn run_on(
    table: &str,
    script: &str,
    operation: &str,
    current: &BTreeMap<String, String>,
    previous: Option<&BTreeMap<String, String>>,
    property: &dyn Fn(&str) -> Option<String>,
) -> Result<ScriptOutcome, (ScriptError, Vec<LogLine>)> {
    let input = ScriptInput {
        script,
        table,
        operation,
        current,
        previous,
        user_id: "6816f79cc0a8016401c5a33be04be441",
        user_name: "admin",
        now: "2025-01-02 03:04:05",
        property,
    };
    run(&input, &mut |request| {
        panic!("unexpected synchronous request {request:?}")
    })
}

/// Runs the operator's webhook rule on the incident, as the simulator runs a rule on `task` for
/// it: the table the script sees is the record's class (`rules::Event`), no network.
fn run_webhook_rule(operation: &str, property: &dyn Fn(&str) -> Option<String>) -> ScriptOutcome {
    match run_on("incident", WEBHOOK_RULE, operation, &incident(), None, property) {
        Ok(outcome) => outcome,
        Err((error, log)) => panic!("the webhook rule failed: {error}; log: {log:?}"),
    }
}

/// Runs `script` on an updated incident, no properties, answering its synchronous requests
/// (`execute()`) with `send`.
fn run_sending(script: &str, send: &mut dyn FnMut(&OutboundRequest) -> OutboundResponse) -> ScriptOutcome {
    let current = incident();
    let input = ScriptInput {
        script,
        table: "incident",
        operation: "update",
        current: &current,
        previous: None,
        user_id: "u",
        user_name: "n",
        now: "2025-01-02 03:04:05",
        property: &no_property,
    };
    run(&input, send).expect("runs")
}

/// Runs `script` on an updated incident and returns the logged messages.
fn messages(script: &str) -> Vec<String> {
    let current = incident();
    match run_with(script, "update", &current, None, &callback_property) {
        Ok(outcome) => outcome.log.into_iter().map(|l| l.message).collect(),
        Err((error, _)) => panic!("script failed: {error}"),
    }
}

fn info(message: &str) -> LogLine {
    LogLine {
        level: LogLevel::Info,
        message: message.to_string(),
    }
}

#[test]
fn the_standard_webhook_rule_queues_exactly_one_signed_json_post_to_the_callback_property() {
    use base64::Engine as _;
    use hmac::Mac as _;
    let outcome = run_webhook_rule("update", &callback_property);
    assert_eq!(outcome.asynchronous.len(), 1, "{outcome:?}");
    let request = &outcome.asynchronous[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.endpoint, CALLBACK, "the key after '#' is never sent");
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no header {name} in {:?}", request.headers))
    };
    assert_eq!(request.headers.len(), 3, "{:?}", request.headers);
    assert_eq!(header("Content-Type"), "application/json");
    // `now` of the run, 2025-01-02 03:04:05 UTC, in milliseconds.
    assert_eq!(header("X-Neoagent-Timestamp"), "1735787045000");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"key-bytes").unwrap();
    mac.update(format!("1735787045000.{}", request.body).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(header("X-Neoagent-Signature"), format!("v1={expected}"));
    assert_eq!(request.timeout_ms, None);
    let mut body: serde_json::Value = serde_json::from_str(&request.body).expect("the body is JSON");
    let id = body["id"].take();
    assert!(
        id.as_str()
            .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "the event id is a GUID: {id}"
    );
    assert_eq!(
        body,
        serde_json::json!({
            "id": null,
            "instance": SERVLET_URI,
            "table": "incident",
            "sys_id": "9d385017c611228701d22104cc95c371",
            "number": "INC0010001",
            "operation": "update",
            "sys_updated_on": "2025-01-02 03:04:05",
            "sys_updated_by": "neo.agent",
        })
    );
    assert!(outcome.log.is_empty(), "{:?}", outcome.log);
}

#[test]
fn the_webhook_rule_sends_nothing_without_a_signing_key() {
    let unsigned = |name: &str| (name == "x_neoagent.callback_url").then(|| CALLBACK.to_string());
    let outcome = run_webhook_rule("insert", &unsigned);
    assert!(outcome.asynchronous.is_empty());
    assert_eq!(outcome.log.len(), 1, "{:?}", outcome.log);
    assert_eq!(outcome.log[0].level, LogLevel::Warn);
}

#[test]
fn generate_mac_is_hmac_under_the_base64_key_in_base64() {
    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    let script = r#"
        var mac = new GlideCertificateEncryption();
        gs.info(mac.generateMac('SmVmZQ==', 'HmacSHA256', 'what do ya want for nothing?'));
        gs.info(new CertificateEncryption().generateMac('SmVmZQ==', 'HmacSHA512', 'what do ya want for nothing?'));
        try { mac.generateMac('not base64!', 'HmacSHA256', 'x'); } catch (e) { gs.info('key: ' + e.message); }
        try { mac.generateMac('SmVmZQ==', 'HmacMD7', 'x'); } catch (e) { gs.info('algorithm: ' + e.message); }
        gs.info(new GlideDateTime('1970-01-01 00:00:01').getNumericValue());
        gs.info(gs.generateGUID().length + ' ' + (gs.generateGUID() != gs.generateGUID()));
    "#;
    assert_eq!(
        messages(script),
        vec![
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=",
            "Fkt6e/z4GeLjlfvnO1bgo4e9ZCIugx/WECcM1+olBVSXWL91wFqZSm0DT2X48Ob9yuqxo01Ka0tjbgcKOLznNw==",
            "key: generateMac: the key is not Base64",
            "algorithm: generateMac: HmacMD7 Mac not available",
            "1000",
            "32 true",
        ]
    );
}

#[test]
fn the_webhook_rule_sends_nothing_and_warns_when_the_property_is_absent() {
    let outcome = run_webhook_rule("insert", &no_property);
    assert!(outcome.asynchronous.is_empty());
    assert_eq!(outcome.log.len(), 1, "{:?}", outcome.log);
    assert_eq!(outcome.log[0].level, LogLevel::Warn);
    assert!(
        outcome.log[0].message.contains("x_neoagent.callback_url"),
        "the warning names the property: {:?}",
        outcome.log[0]
    );
}

#[test]
fn execute_calls_send_and_the_script_sees_the_status_and_body() {
    let script = r#"
        var r = new sn_ws.RESTMessageV2('Neo Agent', 'post');
        r.setEndpoint('https://hooks.example.test/sync');
        r.setHttpMethod('PUT');
        r.setRequestBody('{"a":1}');
        r.setHttpTimeout(2500);
        var response = r.execute();
        gs.info('status {0} body {1} error {2}', response.getStatusCode(), response.getBody(),
            response.haveError());
    "#;
    let mut sent = Vec::new();
    let outcome = run_sending(script, &mut |request| {
        sent.push(request.clone());
        OutboundResponse {
            status: 202,
            body: "accepted".to_string(),
            error: None,
        }
    });
    assert_eq!(
        sent,
        vec![OutboundRequest {
            method: "PUT".to_string(),
            endpoint: "https://hooks.example.test/sync".to_string(),
            headers: Vec::new(),
            body: r#"{"a":1}"#.to_string(),
            timeout_ms: Some(2500),
        }]
    );
    assert!(outcome.asynchronous.is_empty());
    assert_eq!(outcome.log, vec![info("status 202 body accepted error false")]);
}

#[test]
fn execute_reports_http_and_transport_failures_through_have_error() {
    let script = r#"
        var r = new sn_ws.RESTMessageV2();
        r.setEndpoint('https://hooks.example.test/a/b?x=1');
        r.setHttpMethod('post');
        var first = r.execute();
        gs.info('{0} {1} {2} {3}', first.getStatusCode(), first.haveError(),
            first.getErrorCode(), first.getErrorMessage());
        var second = r.execute();
        gs.info('{0} {1} {2} {3}', second.getStatusCode(), second.haveError(),
            second.getErrorCode(), second.getErrorMessage());
    "#;
    let mut answers = vec![
        OutboundResponse {
            status: 0,
            body: String::new(),
            error: Some("connection refused".to_string()),
        },
        OutboundResponse {
            status: 404,
            body: "{}".to_string(),
            error: None,
        },
    ];
    let outcome = run_sending(script, &mut |request| {
        assert_eq!(request.method, "POST");
        answers.pop().expect("two calls")
    });
    assert_eq!(
        outcome.log,
        vec![
            info("404 true 404 Method failed: (/a/b) with code: 404"),
            info("0 true 1 connection refused"),
        ]
    );
}

#[test]
fn execute_async_answers_status_zero_and_accepts_wait_for_response() {
    let script = r#"
        var r = new RESTMessageV2();
        r.setEndpoint('https://hooks.example.test/q');
        r.setQueryParameter('table', 'incident');
        r.setQueryParameter('q', 'a b&c');
        r.setBasicAuth('neo.agent', 'pässword');
        r.setRequestHeader('x-trace', '1');
        r.setRequestHeader('X-Trace', '2');
        r.setHttpTimeout('x');
        var response = r.executeAsync();
        response.waitForResponse(60);
        gs.info('{0}|{1}|{2}|{3}|{4}', response.getStatusCode(), response.getBody(),
            response.haveError(), response.getHeader('Content-Type'), r.getEndpoint());
    "#;
    let current = incident();
    let outcome = run_with(script, "update", &current, None, &no_property).expect("runs");
    assert_eq!(
        outcome.asynchronous,
        vec![OutboundRequest {
            method: "GET".to_string(),
            endpoint: "https://hooks.example.test/q?table=incident&q=a%20b%26c".to_string(),
            headers: vec![
                (
                    "Authorization".to_string(),
                    "Basic bmVvLmFnZW50OnDDpHNzd29yZA==".to_string()
                ),
                ("x-trace".to_string(), "2".to_string()),
            ],
            body: String::new(),
            timeout_ms: None,
        }]
    );
    assert_eq!(
        outcome.log,
        vec![info(
            "0||false||https://hooks.example.test/q?table=incident&q=a%20b%26c"
        )]
    );
}

#[test]
fn plain_top_level_code_runs_like_the_wrapped_form() {
    let script = "var n = current.getValue('number'); gs.info('top level ' + n + ' by ' + gs.getUserName());";
    assert_eq!(messages(script), vec!["top level INC0010001 by admin"]);
}

#[test]
fn the_wrapped_form_receives_current_and_a_null_previous() {
    let script = r#"(function executeRule(current, previous) {
        gs.info('{0} {1}', current.number, previous === null);
    })(current, previous);"#;
    assert_eq!(messages(script), vec!["INC0010001 true"]);
}

#[test]
fn a_condition_wrapped_around_the_script_compares_fields_loosely() {
    let script = "if (current.priority == 1 && current.state != 3) {\ngs.info('urgent');\n}";
    assert_eq!(messages(script), vec!["urgent"]);
}

#[test]
fn a_syntax_error_is_a_parse_error() {
    let current = incident();
    let error =
        run_with("var x = ;\ngs.info('never');", "update", &current, None, &no_property).expect_err("does not parse");
    assert!(matches!(error.0, ScriptError::Parse(_)), "{error:?}");
    assert!(error.1.is_empty());
}

#[test]
fn an_uncaught_throw_is_reported_with_its_message_and_the_logs_before_it() {
    let current = incident();
    let (error, log) = run_with(
        "gs.info('before'); throw new Error('callback misconfigured'); gs.info('after');",
        "update",
        &current,
        None,
        &no_property,
    )
    .expect_err("throws");
    assert_eq!(error, ScriptError::Thrown("Error: callback misconfigured".to_string()));
    assert_eq!(log, vec![info("before")]);
}

#[test]
fn a_thrown_string_and_a_type_error_are_reported_as_thrown() {
    let current = incident();
    let thrown = |script: &str| match run_with(script, "update", &current, None, &no_property) {
        Err((ScriptError::Thrown(message), _)) => message,
        other => panic!("expected a throw, got {other:?}"),
    };
    assert_eq!(thrown("throw 'plain string';"), "plain string");
    assert!(thrown("current.setValue('state', 3);").starts_with("TypeError"));
    assert!(thrown("new GlideRecord('incident');").starts_with("ReferenceError"));
}

#[test]
fn an_infinite_loop_ends_with_the_limit_error_in_bounded_time() {
    let current = incident();
    for script in [
        "gs.info('spinning'); while (true) {}",
        "for (;;) { try { while (true) {} } catch (e) {} }",
        "(function executeRule() { do {} while (true); })();",
    ] {
        let started = Instant::now();
        let (error, log) = run_with(script, "update", &current, None, &no_property).expect_err("the loop is cut short");
        assert_eq!(error, ScriptError::Limit, "{script}");
        assert!(started.elapsed() < Duration::from_secs(60), "{script}");
        if script.starts_with("gs.info") {
            assert_eq!(log, vec![info("spinning")]);
        }
    }
}

#[test]
fn unbounded_recursion_ends_with_the_limit_error_even_through_builtins() {
    let current = incident();
    for script in [
        "function f() { return f(); } f();",
        "function g() { try { return g(); } catch (e) { return g(); } } g();",
        "function h() { return [1].map(h); } h();",
        "function s() { return [3, 1, 2].sort(s); } s();",
        "var o = { get x() { return o.x; } }; o.x;",
    ] {
        let result = run_with(script, "update", &current, None, &no_property);
        assert!(matches!(result, Err((ScriptError::Limit, _))), "{script}: {result:?}");
    }
}

#[test]
fn deeply_nested_source_is_refused_as_a_parse_error_instead_of_overflowing_the_stack() {
    let current = incident();
    let deep = [
        format!("var x = {}1{};", "(".repeat(20_000), ")".repeat(20_000)),
        format!("var x = {}1{};", "{a:".repeat(5_000), "}".repeat(5_000)),
        format!("var x = {}1;", "!".repeat(100_000)),
        format!("var x = {}1;", "a ? 1 : ".repeat(50_000)),
    ];
    for script in &deep {
        let result = run_with(script, "update", &current, None, &no_property);
        assert!(
            matches!(&result, Err((ScriptError::Parse(m), _)) if m.contains("nests too deeply")),
            "{}…: {result:?}",
            &script[..20]
        );
    }
    let moderate = format!(
        "var s = '{}'; gs.info('{{0}}', {}1{} + s.length);",
        "(".repeat(50_000),
        "(".repeat(500),
        ")".repeat(500)
    );
    let outcome = run_with(&moderate, "update", &current, None, &no_property).expect("runs");
    assert_eq!(outcome.log, vec![info("50001")]);
}

#[test]
fn an_absent_property_yields_the_default_or_undefined() {
    let script = r#"
        gs.info('{0}', gs.getProperty('x_neoagent.missing', 'fallback'));
        gs.info('{0}', gs.getProperty('x_neoagent.missing') === undefined);
        gs.info('{0}', gs.getProperty('x_neoagent.callback_url', 'fallback'));
    "#;
    assert_eq!(
        messages(script),
        vec![
            "fallback".to_string(),
            "true".to_string(),
            format!("{CALLBACK}#key={SIGNING_KEY}")
        ]
    );
}

#[test]
fn changes_and_changes_to_compare_with_previous() {
    let current = incident();
    let mut before = incident();
    before.insert("state".to_string(), "1".to_string());
    let script = r#"
        gs.info('{0} {1} {2} {3} {4} {5} {6}', current.changes(), current.state.changes(),
            current.state.changesTo(2), current.state.changesTo('3'), current.state.changesFrom(1),
            current.priority.changes(), previous.state);
    "#;
    let outcome = run_with(script, "update", &current, Some(&before), &no_property).expect("runs");
    assert_eq!(outcome.log, vec![info("true true true false true false 1")]);
}

#[test]
fn without_previous_nothing_changes_except_on_insert() {
    let current = incident();
    let script = "gs.info('{0} {1} {2} {3}', current.changes(), current.number.changes(), \
                  current.assigned_to.changes(), current.isNewRecord());";
    let update = run_with(script, "update", &current, None, &no_property).expect("runs");
    assert_eq!(update.log, vec![info("false false false false")]);
    let insert = run_with(script, "insert", &current, None, &no_property).expect("runs");
    assert_eq!(insert.log, vec![info("true true false true")]);
}

#[test]
fn gs_info_substitutes_numbered_arguments_and_levels_are_kept() {
    let current = incident();
    let script = r#"
        gs.info('{1} before {0}, {0} again, {2} missing', 'a', current.number);
        gs.debug('d {0}', 1);
        gs.warn('w');
        gs.error('e {0}', null);
        gs.log('logged {0}', 'source');
        gs.print('printed');
    "#;
    let outcome = run_with(script, "update", &current, None, &no_property).expect("runs");
    let line = |level, message: &str| LogLine {
        level,
        message: message.to_string(),
    };
    assert_eq!(
        outcome.log,
        vec![
            line(LogLevel::Info, "INC0010001 before a, a again, {2} missing"),
            line(LogLevel::Debug, "d 1"),
            line(LogLevel::Warn, "w"),
            line(LogLevel::Error, "e null"),
            line(LogLevel::Info, "logged {0}"),
            line(LogLevel::Info, "printed"),
        ]
    );
}

#[test]
fn fields_coerce_to_their_values_as_strings() {
    let script = r#"
        gs.info('' + current.number);
        gs.info(String(current.sys_id));
        gs.info(current.short_description + '!');
        gs.info(current.number.toString() + ' ' + current.number.getValue() + ' ' +
            current.number.getDisplayValue() + ' ' + current.number.getName());
        gs.info(typeof ('' + current.priority) + ' ' + (current.priority + 1));
        gs.info(JSON.stringify({ n: '' + current.number, raw: current.number }));
    "#;
    assert_eq!(
        messages(script),
        vec![
            "INC0010001",
            "9d385017c611228701d22104cc95c371",
            "Printer on fire!",
            "INC0010001 INC0010001 INC0010001 number",
            "string 11",
            r#"{"n":"INC0010001","raw":{}}"#,
        ]
    );
}

#[test]
fn empty_fields_are_null_through_get_value_and_nil_as_elements() {
    let script = r#"
        gs.info('{0} {1} {2} {3} {4}', current.getValue('assigned_to') === null,
            current.assigned_to.nil(), gs.nil(current.assigned_to), JSUtil.notNil(current.number),
            current.getValue('no_such_field') === null);
        gs.info('{0} {1}', current.no_such_field === undefined, current.isValidField('number'));
    "#;
    assert_eq!(messages(script), vec!["true true true true true", "true true"]);
}

#[test]
fn record_methods_answer_table_class_identity_and_display_value() {
    let script = r#"
        gs.info([current.getTableName(), current.getRecordClassName(), current.getUniqueValue(),
            current.getDisplayValue(), current.getDisplayValue('short_description'),
            current.operation(), current.isValidRecord(), current.getElement('state')].join('|'));
        var fields = [];
        for (var name in current) { fields.push(name); }
        gs.info(fields.join(','));
        gs.info(gs.getUserID() + ' ' + gs.nowDateTime() + ' ' + new GlideDateTime().getValue());
        gs.eventQueue('x_neoagent.event', current, '1', '2');
    "#;
    assert_eq!(
        messages(script),
        vec![
            "task|incident|9d385017c611228701d22104cc95c371|INC0010001|Printer on fire|update|true|2",
            "assigned_to,number,priority,short_description,state,sys_class_name,sys_id,\
             sys_updated_by,sys_updated_on",
            "6816f79cc0a8016401c5a33be04be441 2025-01-02 03:04:05 2025-01-02 03:04:05",
        ]
    );
}

#[test]
fn fields_named_like_methods_do_not_hide_the_methods() {
    let current = record(&[("sys_id", "abc"), ("operation", "x"), ("__proto__", "y")]);
    let outcome = run_with(
        "gs.info(current.operation() + ' ' + current.getValue('operation') + ' ' + current.getValue('__proto__'));",
        "delete",
        &current,
        None,
        &no_property,
    )
    .expect("runs");
    assert_eq!(outcome.log, vec![info("delete x y")]);
}

#[test]
fn promise_jobs_never_run_and_loops_in_async_functions_and_generators_hit_the_limit() {
    let current = incident();
    let outcome = |script: &str| run_with(script, "update", &current, None, &no_property);
    for script in [
        "Promise.resolve().then(function () { gs.info('job ran'); while (true) {} });",
        "(async function () { await null; gs.info('resumed'); while (true) {} })();",
    ] {
        assert_eq!(outcome(script), Ok(ScriptOutcome::default()), "{script}");
    }
    for script in [
        "(async function () { while (true) {} })();",
        "function* g() { while (true) {} } g().next();",
    ] {
        assert!(matches!(outcome(script), Err((ScriptError::Limit, _))), "{script}");
    }
}
