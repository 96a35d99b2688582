//! Pure: a task event as the Business Rule `Neo Agent — Task Webhook` posts it (see
//! `src/provision/task_webhook.js`), checked field by field, and the CloudEvents 1.0 attributes
//! of its forward to the sink.

use k8s_openapi::jiff::{Timestamp, civil::DateTime, tz::TimeZone};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Value};

/// The largest body the receiver reads, in bytes (one event is a few hundred).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `ce-type` of a forwarded event: this prefix and the operation.
pub const TYPE_PREFIX: &str = "io.neoagent.servicenow.task.";
/// The longest table name accepted (ServiceNow's own limit is 80).
const MAX_TABLE_LEN: usize = 80;
/// The longest `number` or `sys_updated_by` accepted.
const MAX_TEXT_LEN: usize = 255;
/// The format of `sys_updated_on`: the instance's internal date-time, always UTC.
const GLIDE_DATE_TIME: &str = "%Y-%m-%d %H:%M:%S";

const TABLE_RULE: &str = "a table name: 1 to 80 lower-case letters, digits and underscores, starting with a letter";
const SYS_ID_RULE: &str = "32 hexadecimal digits";
const OPERATION_RULE: &str = "one of insert, update, delete";
const UPDATED_ON_RULE: &str = "a UTC date and time as YYYY-MM-DD HH:MM:SS";
const TEXT_RULE: &str = "at most 255 characters";

/// What happened to the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// The record was created.
    Insert,
    /// The record was changed.
    Update,
    /// The record was deleted.
    Delete,
}

impl Operation {
    /// The operation as ServiceNow's `current.operation()` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Operation::Insert, Operation::Update, Operation::Delete]
            .into_iter()
            .find(|operation| operation.as_str() == text)
    }
}

/// A task event that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// The event's id (`gs.generateGUID()` in the rule), when it carries one.
    pub id: Option<String>,
    /// The URL of the instance that sent it (`glide.servlet.uri` in the rule), when it says.
    pub instance: Option<String>,
    /// The record's table (its class), e.g. `incident`.
    pub table: String,
    /// The record's `sys_id`.
    pub sys_id: String,
    /// What happened.
    pub operation: Operation,
    /// The record's number, e.g. `INC0010001`, when it has one.
    pub number: Option<String>,
    /// When the record was last updated (`sys_updated_on`), when known.
    pub updated_at: Option<Timestamp>,
    /// Who last updated it (`sys_updated_by`), when known.
    pub updated_by: Option<String>,
}

/// Why a body is not a task event. The message names the field and the rule it breaks and
/// never quotes the body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// The body does not parse as JSON.
    #[error("the body is not JSON ({0})")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("the body must be a JSON object")]
    NotAnObject,
    /// A field of the event comes twice: JSON parsers disagree on which one counts (the last, the
    /// first, or an error), so a body that says two things about one field is refused.
    #[error("{field} appears more than once")]
    Repeated {
        /// The field (one of the event's; another repeated name is reported as `a field`).
        field: &'static str,
    },
    /// A required field is absent, null or empty.
    #[error("{field} is required")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A field is not a string.
    #[error("{field} must be a string")]
    NotAString {
        /// The field.
        field: &'static str,
    },
    /// A field breaks its rule.
    #[error("{field} must be {rule}")]
    Broken {
        /// The field.
        field: &'static str,
        /// The rule.
        rule: &'static str,
    },
}

/// Checks `body`: a JSON object with the string fields `table`, `sys_id` (32 hex digits) and
/// `operation` (insert, update or delete), and optionally `id` (32 hex digits), `instance`,
/// `number`, `sys_updated_on` and `sys_updated_by` (null or empty means absent, as `current.getValue()` gives for an empty
/// field). Other fields are allowed and ignored.
pub fn parse(body: &[u8]) -> Result<TaskEvent, InvalidEvent> {
    let Body(object) = serde_json::from_slice(body).map_err(|error| {
        InvalidEvent::NotJson(format!(
            "{:?} error at line {} column {}",
            error.classify(),
            error.line(),
            error.column()
        ))
    })?;
    let Object { fields, repeated } = object.ok_or(InvalidEvent::NotAnObject)?;
    if let Some(name) = repeated {
        let field = FIELDS
            .iter()
            .find(|known| **known == name)
            .copied()
            .unwrap_or("a field");
        return Err(InvalidEvent::Repeated { field });
    }
    let table = required(&fields, "table")?;
    check(is_table_name(table), "table", TABLE_RULE)?;
    let sys_id = required(&fields, "sys_id")?;
    check(is_guid(sys_id), "sys_id", SYS_ID_RULE)?;
    let id = optional(&fields, "id")?;
    check(id.is_none_or(is_guid), "id", SYS_ID_RULE)?;
    let operation = Operation::parse(required(&fields, "operation")?).ok_or(InvalidEvent::Broken {
        field: "operation",
        rule: OPERATION_RULE,
    })?;
    let updated_at = optional(&fields, "sys_updated_on")?
        .map(|text| {
            parse_glide_time(text).ok_or(InvalidEvent::Broken {
                field: "sys_updated_on",
                rule: UPDATED_ON_RULE,
            })
        })
        .transpose()?;
    Ok(TaskEvent {
        id: id.map(str::to_owned),
        instance: optional(&fields, "instance")?.map(str::to_owned),
        table: table.to_owned(),
        sys_id: sys_id.to_owned(),
        operation,
        number: optional(&fields, "number")?.map(str::to_owned),
        updated_at,
        updated_by: optional(&fields, "sys_updated_by")?.map(str::to_owned),
    })
}

/// The fields the event reads.
pub const FIELDS: [&str; 8] = [
    "table",
    "sys_id",
    "operation",
    "id",
    "instance",
    "number",
    "sys_updated_on",
    "sys_updated_by",
];

/// A JSON body: its top-level object, or `None` for any other JSON value.
struct Body(Option<Object>);

/// A top-level JSON object and the first name that came twice in it, if any (`serde_json`'s own
/// map keeps the last of repeated names without a word).
struct Object {
    fields: Map<String, Value>,
    repeated: Option<String>,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut fields = Map::new();
        let mut repeated = None;
        while let Some((name, value)) = map.next_entry::<String, Value>()? {
            if fields.contains_key(&name) {
                repeated.get_or_insert(name);
            } else {
                fields.insert(name, value);
            }
        }
        Ok(Body(Some(Object { fields, repeated })))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Body(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Body, E> {
        Ok(Body(None))
    }

    fn visit_unit<E>(self) -> Result<Body, E> {
        Ok(Body(None))
    }
}

/// The string `field`, `None` when absent, null or empty.
fn text<'a>(fields: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, InvalidEvent> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok((!text.is_empty()).then_some(text.as_str())),
        Some(_) => Err(InvalidEvent::NotAString { field }),
    }
}

fn required<'a>(fields: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, InvalidEvent> {
    text(fields, field)?.ok_or(InvalidEvent::Missing { field })
}

fn optional<'a>(fields: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, InvalidEvent> {
    let value = text(fields, field)?;
    check(
        value.is_none_or(|v| v.chars().count() <= MAX_TEXT_LEN),
        field,
        TEXT_RULE,
    )?;
    Ok(value)
}

fn check(holds: bool, field: &'static str, rule: &'static str) -> Result<(), InvalidEvent> {
    if holds {
        Ok(())
    } else {
        Err(InvalidEvent::Broken { field, rule })
    }
}

/// 32 hexadecimal digits, as a `sys_id` or `gs.generateGUID()`.
fn is_guid(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The host of `url` as [`TaskEvent::is_from`] compares it: lower case, without a trailing dot;
/// `None` when `url` is not a URL with a host.
pub fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url).ok().and_then(|url| {
        url.host_str()
            .map(|host| host.trim_end_matches('.').to_ascii_lowercase())
    })
}

impl TaskEvent {
    /// `false` when the event names its sending instance and its host is not `instance_host`
    /// (the connection's `spec.instanceUrl`, through [`host_of`] — once per connection, not per
    /// event): a clone that kept the production instance's callback property sends it. Compared
    /// by host, case and a trailing dot aside; an event that does not say is taken.
    pub fn is_from(&self, instance_host: Option<&str>) -> bool {
        self.instance
            .as_deref()
            .is_none_or(|sent| host_of(sent).is_some_and(|sent| Some(sent.as_str()) == instance_host))
    }
}

fn is_table_name(table: &str) -> bool {
    table.len() <= MAX_TABLE_LEN
        && table.starts_with(|c: char| c.is_ascii_lowercase())
        && table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `2026-01-31 12:00:00` (UTC, the instance's internal format) as a timestamp.
fn parse_glide_time(text: &str) -> Option<Timestamp> {
    let civil = DateTime::strptime(GLIDE_DATE_TIME, text).ok()?;
    civil.to_zoned(TimeZone::UTC).ok().map(|zoned| zoned.timestamp())
}

/// The CloudEvents 1.0 attributes of a forwarded event; in HTTP binary mode each is a `ce-`
/// header and the body is the event's JSON as the instance sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvent {
    /// `ce-id`: the event's own id (a GUID the rule draws), or else a version-4 UUID minted when
    /// the event is accepted; kept across retries, so a sink can drop a delivery it already has
    /// (also one that came twice through two replicas). Not `<sys_id>-<sys_updated_on>-<operation>`:
    /// `sys_updated_on` has one-second resolution, so two updates of one record within a second
    /// — two events — would share that id and a deduplicating sink would lose the second.
    pub id: String,
    /// `ce-source`: `<instance URL>/<table>`, e.g. `https://acme.service-now.com/incident`.
    pub source: String,
    /// `ce-type`: `io.neoagent.servicenow.task.<operation>`.
    pub type_: String,
    /// `ce-subject`: `<table>/<sys_id>`.
    pub subject: String,
    /// `ce-time`: `sys_updated_on` in RFC 3339, when the event carries it.
    pub time: Option<String>,
}

impl CloudEvent {
    /// The attributes of `event` from the instance `instance_url`, with the id `id`.
    pub fn of(event: &TaskEvent, instance_url: &str, id: String) -> Self {
        CloudEvent {
            id,
            source: format!("{}/{}", instance_url.trim_end_matches('/'), event.table),
            type_: format!("{TYPE_PREFIX}{}", event.operation.as_str()),
            subject: format!("{}/{}", event.table, event.sys_id),
            time: event.updated_at.map(|at| at.to_string()),
        }
    }

    /// The HTTP headers of a binary-mode delivery, `Content-Type` included.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", self.id.as_str()),
            ("ce-source", self.source.as_str()),
            ("ce-type", self.type_.as_str()),
            ("ce-subject", self.subject.as_str()),
        ];
        if let Some(time) = &self.time {
            headers.push(("ce-time", time.as_str()));
        }
        headers.push(("content-type", "application/json"));
        headers
    }
}

/// The text form of the version-4 (random) UUID made of `random`.
pub fn uuid_v4(mut random: [u8; 16]) -> String {
    random[6] = (random[6] & 0x0f) | 0x40;
    random[8] = (random[8] & 0x3f) | 0x80;
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_ID: &str = "9d385017c611228701d22104cc95c371";

    fn event(fields: Value) -> Result<TaskEvent, InvalidEvent> {
        parse(fields.to_string().as_bytes())
    }

    fn valid() -> Value {
        serde_json::json!({
            "table": "incident", "sys_id": SYS_ID, "number": "INC0010001", "operation": "insert",
            "sys_updated_on": "2026-01-31 12:34:56", "sys_updated_by": "neo.agent",
        })
    }

    fn with(field: &str, value: Value) -> Value {
        let mut fields = valid();
        fields[field] = value;
        fields
    }

    fn without(field: &str) -> Value {
        let mut fields = valid();
        fields.as_object_mut().unwrap().remove(field);
        fields
    }

    #[test]
    fn the_rules_event_is_accepted_with_every_field() {
        let parsed = event(valid()).unwrap();
        assert_eq!(
            parsed,
            TaskEvent {
                id: None,
                instance: None,
                table: "incident".into(),
                sys_id: SYS_ID.into(),
                operation: Operation::Insert,
                number: Some("INC0010001".into()),
                updated_at: Some("2026-01-31T12:34:56Z".parse().unwrap()),
                updated_by: Some("neo.agent".into()),
            }
        );
    }

    #[test]
    fn an_event_naming_another_instance_is_not_from_the_connections() {
        let from = |instance: Value| event(with("instance", instance)).unwrap();
        let connection = host_of("https://acme.service-now.com");
        let connection = connection.as_deref();
        assert_eq!(connection, Some("acme.service-now.com"));
        for same in [
            "https://acme.service-now.com/",
            "https://ACME.service-now.com.",
            "https://acme.service-now.com/x",
        ] {
            assert!(from(same.into()).is_from(connection), "{same}");
        }
        for other in ["https://acme-dev.service-now.com/", "not a url", "https://"] {
            assert!(!from(other.into()).is_from(connection), "{other}");
        }
        assert!(
            from(Value::Null).is_from(connection),
            "an event that does not say is taken"
        );
        assert!(!from("https://acme.service-now.com/".into()).is_from(host_of("not a url").as_deref()));
    }

    #[test]
    fn the_event_id_is_a_guid_when_present() {
        let guid = "0123456789abcdefABCDEF0123456789";
        assert_eq!(event(with("id", guid.into())).unwrap().id.as_deref(), Some(guid));
        for bad in [
            "42",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(
                event(with("id", bad.into())),
                Err(InvalidEvent::Broken {
                    field: "id",
                    rule: SYS_ID_RULE
                }),
                "{bad}"
            );
        }
        assert_eq!(
            event(with("id", 7.into())),
            Err(InvalidEvent::NotAString { field: "id" })
        );
    }

    #[test]
    fn optional_fields_may_be_absent_null_or_empty_and_unknown_fields_are_ignored() {
        let mut fields = without("number");
        fields["sys_updated_on"] = Value::Null;
        fields["sys_updated_by"] = "".into();
        fields["extra"] = serde_json::json!({"any": ["thing"]});
        let parsed = event(fields).unwrap();
        assert_eq!(
            (parsed.number, parsed.updated_at, parsed.updated_by),
            (None, None, None)
        );
        for operation in ["update", "delete"] {
            assert_eq!(
                event(with("operation", operation.into())).unwrap().operation.as_str(),
                operation
            );
        }
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_refused() {
        assert!(matches!(parse(b"table=incident"), Err(InvalidEvent::NotJson(_))));
        assert!(matches!(parse(b""), Err(InvalidEvent::NotJson(_))));
        assert_eq!(parse(b"[1, 2]"), Err(InvalidEvent::NotAnObject));
        assert_eq!(parse(b"[[1], {\"a\": 2}]"), Err(InvalidEvent::NotAnObject));
        assert_eq!(parse(b"\"incident\""), Err(InvalidEvent::NotAnObject));
        for scalar in ["true", "null", "-1", "18446744073709551615", "1.5"] {
            assert_eq!(parse(scalar.as_bytes()), Err(InvalidEvent::NotAnObject), "{scalar}");
        }
        let deep = format!("{{\"table\":{}", "[".repeat(1_000));
        assert!(matches!(parse(deep.as_bytes()), Err(InvalidEvent::NotJson(_))));
    }

    #[test]
    fn a_field_that_comes_twice_is_refused_whichever_it_is() {
        let body = valid().to_string();
        let twice =
            |field: &str, value: &str| parse(body.replacen('{', &format!("{{\"{field}\":{value},"), 1).as_bytes());
        assert_eq!(
            twice("sys_id", "\"0123456789abcdef0123456789abcdef\""),
            Err(InvalidEvent::Repeated { field: "sys_id" })
        );
        assert_eq!(
            twice("operation", "\"delete\""),
            Err(InvalidEvent::Repeated { field: "operation" })
        );
        assert_eq!(
            parse(br#"{"x":1,"table":"incident","x":2}"#),
            Err(InvalidEvent::Repeated { field: "a field" })
        );
        assert_eq!(
            InvalidEvent::Repeated { field: "sys_id" }.to_string(),
            "sys_id appears more than once"
        );
        // Repeated names inside a nested value are the value's business, not the event's.
        assert!(
            parse(
                with("other", serde_json::json!([{"a": 1}, {"a": 2}]))
                    .to_string()
                    .as_bytes()
            )
            .is_ok()
        );
    }

    #[test]
    fn each_refusal_names_the_field_and_the_rule() {
        let cases = [
            (without("table"), "table is required"),
            (with("table", "".into()), "table is required"),
            (with("sys_id", Value::Null), "sys_id is required"),
            (without("operation"), "operation is required"),
            (with("table", 42.into()), "table must be a string"),
            (with("number", serde_json::json!(["INC1"])), "number must be a string"),
            (with("table", "Incident".into()), &format!("table must be {TABLE_RULE}")),
            (
                with("table", "incident; drop".into()),
                &format!("table must be {TABLE_RULE}"),
            ),
            (
                with("table", "x".repeat(81).into()),
                &format!("table must be {TABLE_RULE}"),
            ),
            (with("sys_id", "xyz".into()), "sys_id must be 32 hexadecimal digits"),
            (
                with("sys_id", format!("{SYS_ID}0").into()),
                "sys_id must be 32 hexadecimal digits",
            ),
            (
                with("sys_id", SYS_ID.replace('9', "g").into()),
                "sys_id must be 32 hexadecimal digits",
            ),
            (
                with("operation", "merge".into()),
                "operation must be one of insert, update, delete",
            ),
            (
                with("operation", "INSERT".into()),
                "operation must be one of insert, update, delete",
            ),
            (
                with("sys_updated_on", "2026-01-31T12:34:56Z".into()),
                "sys_updated_on must be a UTC date and time as YYYY-MM-DD HH:MM:SS",
            ),
            (
                with("sys_updated_on", "2026-02-30 12:00:00".into()),
                "sys_updated_on must be a UTC date and time as YYYY-MM-DD HH:MM:SS",
            ),
            (
                with("sys_updated_by", "x".repeat(256).into()),
                "sys_updated_by must be at most 255 characters",
            ),
        ];
        for (fields, message) in cases {
            assert_eq!(event(fields.clone()).unwrap_err().to_string(), message, "{fields}");
        }
    }

    #[test]
    fn a_refusal_never_quotes_the_body() {
        let secret = "s3cret-looking-value";
        for fields in [
            with("operation", secret.into()),
            with("table", secret.into()),
            with("sys_updated_on", secret.into()),
        ] {
            assert!(!event(fields).unwrap_err().to_string().contains(secret));
        }
        let broken = format!("{{\"table\": \"{secret}");
        assert!(!parse(broken.as_bytes()).unwrap_err().to_string().contains(secret));
    }

    #[test]
    fn the_cloud_event_attributes_come_from_the_instance_and_the_record() {
        let parsed = event(with("operation", "update".into())).unwrap();
        let cloud_event = CloudEvent::of(&parsed, "https://acme.service-now.com", "id-1".into());
        assert_eq!(
            cloud_event.headers(),
            [
                ("ce-specversion", "1.0"),
                ("ce-id", "id-1"),
                ("ce-source", "https://acme.service-now.com/incident"),
                ("ce-type", "io.neoagent.servicenow.task.update"),
                ("ce-subject", &*format!("incident/{SYS_ID}")),
                ("ce-time", "2026-01-31T12:34:56Z"),
                ("content-type", "application/json"),
            ]
        );
    }

    #[test]
    fn without_sys_updated_on_there_is_no_ce_time() {
        let parsed = event(without("sys_updated_on")).unwrap();
        let cloud_event = CloudEvent::of(&parsed, "https://acme.service-now.com/", "id-2".into());
        assert_eq!(cloud_event.source, "https://acme.service-now.com/incident");
        assert!(cloud_event.headers().iter().all(|(name, _)| *name != "ce-time"));
    }

    /// Task tables have digits and underscores in their names (`sc_task`, `change_request`,
    /// custom `u_` tables), up to the 80 characters of the rule; the first character is a letter.
    #[test]
    fn table_names_with_digits_and_underscores_up_to_80_characters_are_accepted() {
        let longest = format!("u_{}", "t".repeat(78));
        for table in ["sc_task", "change_request", "u_table2", longest.as_str()] {
            assert_eq!(event(with("table", table.into())).unwrap().table, table);
        }
        for table in ["2fa", "_task", "sc-task"] {
            assert_eq!(
                event(with("table", table.into())).unwrap_err().to_string(),
                format!("table must be {TABLE_RULE}"),
                "{table}"
            );
        }
    }

    /// The receiver answers 413 above 64 KiB, as the README's table of answers says.
    #[test]
    fn the_body_limit_is_64_kib() {
        assert_eq!(MAX_BODY_BYTES, 65_536);
    }

    #[test]
    fn event_ids_are_version_4_uuids() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_ne!(uuid_v4(rand::random()), uuid_v4(rand::random()));
    }
}
