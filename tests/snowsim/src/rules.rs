//! Business Rules (servicenow-api.md §3.2, §3.5, §6 items 10–11): on insert, update or delete of
//! a record whose class is, or extends, a rule's `collection`, every active rule with the matching
//! `action_*` flag, a passing `filter_condition` and `role_conditions` runs its `script` in the
//! embedded JavaScript engine (`script`). `before` rules run before the write, `after` rules after
//! it and before the answer, `async` rules in the background after the answer. A script that does
//! not parse or throws is written to the system log and never breaks the write. Requests made with
//! `executeAsync()` are sent after the script, as real HTTP requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Caller;
use crate::instance::{Instance, State};
use crate::logs::{Level, OutboundLogEntry};
use crate::query::Query;
use crate::schema::Schema;
use crate::script::{self, LogLevel, OutboundRequest, OutboundResponse, ScriptInput};
use crate::store::Record;

/// The write that triggers rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `action_insert`.
    Insert,
    /// `action_update`.
    Update,
    /// `action_delete`.
    Delete,
}

impl Trigger {
    fn operation(self) -> &'static str {
        match self {
            Trigger::Insert => "insert",
            Trigger::Update => "update",
            Trigger::Delete => "delete",
        }
    }

    fn action_field(self) -> &'static str {
        match self {
            Trigger::Insert => "action_insert",
            Trigger::Update => "action_update",
            Trigger::Delete => "action_delete",
        }
    }
}

/// When a rule runs relative to the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Before,
    After,
    Async,
}

/// A rule selected to run.
#[derive(Clone, Debug)]
pub struct RuleRun {
    name: String,
    when: When,
    script: String,
    /// The rule's table (`collection`): what `current.getTableName()` answers, e.g. `task` for an
    /// incident written under a rule on `task` (servicenow-api.md §3.5; the record's own class is
    /// `current.getRecordClassName()`).
    table: String,
}

/// What the scripts of one write see.
#[derive(Debug)]
pub struct Event {
    operation: &'static str,
    current: BTreeMap<String, String>,
    previous: Option<BTreeMap<String, String>>,
    user_id: String,
    user_name: String,
    now: String,
}

impl Event {
    /// The event of one write.
    pub fn new(
        current: &Record,
        previous: Option<&Record>,
        trigger: Trigger,
        caller: &Caller,
        now: &str,
    ) -> Arc<Event> {
        Arc::new(Event {
            operation: trigger.operation(),
            current: current.values.clone(),
            previous: previous.map(|p| p.values.clone()),
            user_id: caller.sys_id.clone(),
            user_name: caller.user_name.clone(),
            now: now.to_string(),
        })
    }
}

/// The rules a write of `record` triggers, in `order`.
pub fn matching(state: &State, record: &Record, trigger: Trigger, caller: &Caller) -> Vec<RuleRun> {
    let schema = Schema::get();
    let Some(rules_table) = schema.table("sys_script") else {
        return Vec::new();
    };
    let requires_advanced = state.behaviour.script_requires_advanced;
    let mut selected: Vec<(f64, RuleRun)> = state
        .db
        .rows(rules_table)
        .filter(|rule| {
            rule.get("active") == "true"
                && rule.get(trigger.action_field()) == "true"
                && schema.extends(record.class, rule.get("collection"))
                && !rule.get("script").trim().is_empty()
                && (!requires_advanced || rule.get("advanced") == "true")
                && roles_allow(rule.get("role_conditions"), caller, state)
                && filter_allows(state, rule.get("filter_condition"), record)
        })
        .filter_map(|rule| {
            let when = match rule.get("when") {
                "before" => When::Before,
                "after" => When::After,
                "async" | "async_always" => When::Async,
                _ => return None,
            };
            let condition = rule.get("condition").trim();
            let script = if condition.is_empty() {
                rule.get("script").to_string()
            } else {
                format!("if ({condition}) {{\n{}\n}}", rule.get("script"))
            };
            let order = rule.get("order").parse().unwrap_or(100.0);
            Some((
                order,
                RuleRun {
                    name: rule.get("name").to_string(),
                    when,
                    script,
                    table: rule.get("collection").to_string(),
                },
            ))
        })
        .collect();
    selected.sort_by(|a, b| a.0.total_cmp(&b.0));
    selected.into_iter().map(|(_, rule)| rule).collect()
}

fn roles_allow(role_conditions: &str, caller: &Caller, state: &State) -> bool {
    let required: Vec<&str> = role_conditions
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    let role_table = Schema::get().table("sys_user_role");
    required.is_empty()
        || caller.roles.contains("admin")
        || required.iter().any(|role| {
            caller.roles.contains(*role)
                || role_table
                    .and_then(|t| state.db.get(t, role))
                    .is_some_and(|r| caller.roles.contains(r.get("name")))
        })
}

/// Condition-builder filters compare case-sensitively (servicenow-api.md §2.5).
fn filter_allows(state: &State, filter: &str, record: &Record) -> bool {
    let query = Query::parse(filter);
    let lookup = |field: &str| state.db.lookup(record, field);
    query.matches(&lookup, true)
}

/// Runs the `before` rules, in order, before the write is stored.
pub async fn run_before(instance: &Arc<Instance>, rules: &[RuleRun], event: &Arc<Event>) {
    for rule in rules.iter().filter(|r| r.when == When::Before) {
        run_one(instance.clone(), rule.clone(), event.clone(), true).await;
    }
}

/// Runs the `after` rules now and the `async` rules in the background.
pub async fn run_after(instance: &Arc<Instance>, rules: Vec<RuleRun>, event: Arc<Event>) {
    let (after, background): (Vec<RuleRun>, Vec<RuleRun>) = rules
        .into_iter()
        .filter(|r| r.when != When::Before)
        .partition(|r| r.when == When::After);
    for rule in after {
        run_one(instance.clone(), rule, event.clone(), true).await;
    }
    if !background.is_empty() {
        let instance = instance.clone();
        tokio::spawn(async move {
            for rule in background {
                run_one(instance.clone(), rule, event.clone(), false).await;
            }
        });
    }
}

async fn run_one(instance: Arc<Instance>, rule: RuleRun, event: Arc<Event>, with_previous: bool) {
    let handle = tokio::runtime::Handle::current();
    let runner = instance.clone();
    let name = rule.name.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let property = |name: &str| runner.state.lock().property(name);
        let input = ScriptInput {
            script: &rule.script,
            table: &rule.table,
            operation: event.operation,
            current: &event.current,
            previous: if with_previous { event.previous.as_ref() } else { None },
            user_id: &event.user_id,
            user_name: &event.user_name,
            now: &event.now,
            property: &property,
        };
        let mut send = |request: &OutboundRequest| handle.block_on(send(&runner, &rule.name, request, true));
        script::run(&input, &mut send)
    })
    .await;
    let time = instance.clock.glide_now();
    let (log, error, asynchronous) = match outcome {
        Ok(Ok(outcome)) => (outcome.log, None, outcome.asynchronous),
        Ok(Err((error, log))) => (log, Some(error.to_string()), Vec::new()),
        Err(join) => (Vec::new(), Some(format!("script runner failed: {join}")), Vec::new()),
    };
    {
        let mut state = instance.state.lock();
        for line in log {
            let level = match line.level {
                LogLevel::Debug => Level::Debug,
                LogLevel::Info => Level::Info,
                LogLevel::Warn => Level::Warning,
                LogLevel::Error => Level::Error,
            };
            state.syslog(level, &name, &line.message, &time);
        }
        if let Some(error) = error {
            state.syslog(
                Level::Error,
                &name,
                &format!("Business Rule '{name}' failed: {error}"),
                &time,
            );
        }
    }
    for request in asynchronous {
        let instance = instance.clone();
        let name = name.clone();
        tokio::spawn(async move {
            send(&instance, &name, &request, false).await;
        });
    }
}

/// Sends one outbound request for `rule` and records it in the outbound log.
async fn send(instance: &Instance, rule: &str, request: &OutboundRequest, synchronous: bool) -> OutboundResponse {
    let result = async {
        let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|e| format!("invalid HTTP method '{}': {e}", request.method))?;
        let mut builder = instance
            .outbound
            .request(method, &request.endpoint)
            .body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(ms) = request.timeout_ms {
            builder = builder.timeout(Duration::from_millis(ms));
        }
        let response = builder.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Ok::<_, String>((status, body))
    }
    .await;
    let (status, body, error) = match result {
        Ok((status, body)) => (status, body, None),
        Err(error) => (0, String::new(), Some(error)),
    };
    let time = instance.clock.glide_now();
    let mut state = instance.state.lock();
    state.logs.outbound.push(OutboundLogEntry {
        rule: rule.to_string(),
        method: request.method.to_ascii_uppercase(),
        endpoint: request.endpoint.clone(),
        body: request.body.clone(),
        status: (status != 0).then_some(status),
        error: error.clone(),
        synchronous,
    });
    if let Some(error) = &error {
        state.syslog(
            Level::Warning,
            rule,
            &format!("RESTMessageV2 to {} failed: {error}", request.endpoint),
            &time,
        );
    }
    OutboundResponse { status, body, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceConfig;
    use crate::store::Actor;

    fn state_with_rules(rules: &[&[(&str, &str)]]) -> State {
        let mut state = State::default();
        crate::seed::seed(
            &mut state,
            &InstanceConfig::new("acme.service-now.com"),
            "2026-01-01 00:00:00",
        );
        for fields in rules {
            let mut pairs = vec![
                ("script", "gs.info('x');"),
                ("advanced", "true"),
                ("action_insert", "true"),
            ];
            pairs.extend_from_slice(fields);
            crate::seed::put(&mut state.db, "sys_script", &pairs, "2026-01-01 00:00:00");
        }
        state
    }

    fn record(state: &mut State, table: &str, pairs: &[(&str, &str)]) -> Record {
        let table = Schema::get().table(table).unwrap();
        let input = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let actor = Actor {
            sys_id: "u".into(),
            user_name: "u".into(),
        };
        state
            .db
            .prepare_insert(table, &input, &actor, "2026-01-01 00:00:00")
            .unwrap()
            .record
    }

    fn names(rules: &[RuleRun]) -> Vec<&str> {
        rules.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn rules_on_a_parent_table_match_children_by_action_active_filter_and_order() {
        let mut state = state_with_rules(&[
            &[
                ("name", "late"),
                ("collection", "task"),
                ("when", "async"),
                ("order", "200"),
            ],
            &[
                ("name", "early"),
                ("collection", "task"),
                ("when", "after"),
                ("order", "50"),
            ],
            &[("name", "inactive"), ("collection", "task"), ("active", "false")],
            &[
                ("name", "update only"),
                ("collection", "task"),
                ("action_insert", "false"),
                ("action_update", "true"),
            ],
            &[("name", "problems"), ("collection", "problem")],
            &[
                ("name", "filtered"),
                ("collection", "incident"),
                ("filter_condition", "priority=1^EQ"),
            ],
            &[("name", "not advanced"), ("collection", "task"), ("advanced", "false")],
            &[("name", "display"), ("collection", "task"), ("when", "display")],
        ]);
        let caller = Caller {
            sys_id: "u".into(),
            user_name: "u".into(),
            roles: Default::default(),
        };
        let incident = record(&mut state, "incident", &[("priority", "1")]);
        assert_eq!(
            names(&matching(&state, &incident, Trigger::Insert, &caller)),
            vec!["early", "filtered", "late"]
        );
        assert_eq!(
            names(&matching(&state, &incident, Trigger::Update, &caller)),
            vec!["update only"]
        );
        let low = record(&mut state, "incident", &[("priority", "4")]);
        assert_eq!(
            names(&matching(&state, &low, Trigger::Insert, &caller)),
            vec!["early", "late"]
        );
        let sc_task = record(&mut state, "sc_task", &[]);
        assert_eq!(
            names(&matching(&state, &sc_task, Trigger::Insert, &caller)),
            vec!["early", "late"]
        );
        state.behaviour.script_requires_advanced = false;
        assert_eq!(
            names(&matching(&state, &sc_task, Trigger::Insert, &caller)),
            vec!["early", "not advanced", "late"]
        );
    }

    #[test]
    fn a_condition_wraps_the_script() {
        let mut state = state_with_rules(&[&[
            ("name", "c"),
            ("collection", "task"),
            ("when", "after"),
            ("condition", "current.priority == 1"),
        ]]);
        let caller = Caller {
            sys_id: "u".into(),
            user_name: "u".into(),
            roles: Default::default(),
        };
        let incident = record(&mut state, "incident", &[]);
        let rules = matching(&state, &incident, Trigger::Insert, &caller);
        assert_eq!(rules[0].script, "if (current.priority == 1) {\ngs.info('x');\n}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outbound_requests_are_real_http_calls_and_are_logged() {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(|body: String| async move { format!("got {body}") }),
        );
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(socket, app).await });
        let instance = Instance::new(
            &InstanceConfig::new("acme.service-now.com"),
            crate::clock::Clock::default(),
            reqwest::Client::new(),
        );
        let request = OutboundRequest {
            method: "post".into(),
            endpoint: format!("http://{addr}/hook"),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: "{}".into(),
            timeout_ms: Some(5000),
        };
        let response = send(&instance, "rule", &request, true).await;
        assert_eq!((response.status, response.body.as_str()), (200, "got {}"));
        let unreachable = OutboundRequest {
            endpoint: "http://127.0.0.1:1/nothing".into(),
            ..request
        };
        let failed = send(&instance, "rule", &unreachable, false).await;
        assert_eq!(failed.status, 0);
        assert!(failed.error.is_some());
        let log = instance.state.lock().logs.outbound.snapshot();
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].status, log[0].synchronous), (Some(200), true));
        assert_eq!((log[1].status, log[1].synchronous), (None, false));
    }
}
