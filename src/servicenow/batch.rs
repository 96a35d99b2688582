//! Table API reads sent together in one Batch API request (servicenow-api.md §7 "Batch API",
//! ServiceNow's `api-reference/rest-apis/batch-api.md`): `POST /api/now/v1/batch` carries each
//! read's relative URL; the instance runs every item as the batch's caller under the item's own
//! ACLs and Auth Scope, and answers one `200` listing each item's status, headers and Base64 body
//! (`serviced_requests`) and the ids a size or time limit left undone (`unserviced_requests`).
//!
//! Each item's answer goes through the same checks as the read sent alone (status, error envelope,
//! JSON), so a sub-answer's 401, 403, 429 or 5xx is the same [`Error`] as the standalone call's.
//! An instance that will not run the batch itself (400 "Requested URI does not represent any
//! resource", a 403 from an ACL or the REST API Auth Scope, a 404) is [`Outcome::Refused`]: the
//! caller sends the reads apart, and [`Refusals`] keeps it from asking that instance again for
//! [`REFUSAL_MEMORY`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{
    StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use serde_json::{Value, json};

use super::{
    Error, ErrorKind,
    http::{Answer, Call},
    table::{Read, ReadAnswer, TableApi},
};
use crate::sync::LockExt as _;

/// The Batch API's path (the versioned one: `/api/now/batch` is not a resource).
pub(crate) const PATH: &str = "/api/now/v1/batch";
/// How long an instance that refused a batch is read apart before a batch is tried again (its
/// administrators may enable the API or widen the OAuth application's scopes meanwhile).
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(3600);

/// How a batch ended.
pub(crate) enum Outcome<'r, const N: usize> {
    /// The instance ran it: each read's answer or error, in the order sent.
    Answered([Result<ReadAnswer<'r>, Error>; N]),
    /// The instance will not run batches for this caller: send the reads apart.
    Refused(Error),
    /// The batch failed as a whole (no answer, 401, 429, 5xx, hibernation, an answer that is not
    /// a batch answer): the error of every read in it.
    Failed(Error),
}

/// Sends `reads` in one batch through `api`'s transport and token.
pub(crate) async fn send<'r, const N: usize>(api: &TableApi<'_>, reads: &'r [Read<'r>; N]) -> Outcome<'r, N> {
    let call = Call {
        instance: api.instance,
        metric: "batch",
        action: format!("send {} reads in one batch", reads.len()),
        resource: PATH,
        operation: "call",
    };
    let request = api
        .transport
        .client()
        .post(api.instance.join(PATH))
        .bearer_auth(api.access_token.expose())
        .header(reqwest::header::ACCEPT, "application/json")
        .json(&request_body(reads));
    let answer = match api.transport.send(&call, request).await {
        Ok(answer) => answer,
        Err(error) => return Outcome::Failed(error),
    };
    match answer.status.as_u16() {
        200 => {}
        401 | 429 => return Outcome::Failed(answer.error(&call)),
        400..=499 => return Outcome::Refused(answer.error(&call)),
        _ => return Outcome::Failed(answer.error(&call)),
    }
    let mut items = match split(&answer.body, N) {
        Ok(items) => items.into_iter(),
        Err(reason) => return Outcome::Failed(call.error(ErrorKind::Protocol { reason })),
    };
    Outcome::Answered(reads.each_ref().map(|read| {
        let item = items.next().unwrap_or(Err(ItemProblem::Missing));
        let answer = item.map_err(|problem| read.call.error(problem.kind()))?;
        api.transport
            .note_rate_limit(&read.call, answer.status, &answer.headers);
        if answer.status == StatusCode::OK {
            Ok(ReadAnswer { read, answer })
        } else {
            Err(answer.error(&read.call))
        }
    }))
}

/// The batch's body: item `i + 1` is `reads[i]`, a GET asking for JSON, its response headers
/// kept (a 429's `Retry-After` is read from them).
pub(crate) fn request_body(reads: &[Read<'_>]) -> Value {
    let items: Vec<Value> = reads
        .iter()
        .enumerate()
        .map(|(index, read)| {
            json!({
                "id": item_id(index),
                "method": "GET",
                "url": read.relative_url(),
                "headers": [{"name": "Accept", "value": "application/json"}],
                "exclude_response_headers": false,
            })
        })
        .collect();
    json!({"batch_request_id": "1", "rest_requests": items})
}

fn item_id(index: usize) -> String {
    (index + 1).to_string()
}

/// Why an item of a batch answer cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ItemProblem {
    /// Listed in `unserviced_requests`: a limit stopped the batch before it.
    Unserviced,
    /// In neither list.
    Missing,
    /// Its entry is not what the Batch API sends: says which part.
    Malformed(&'static str),
}

impl ItemProblem {
    /// The error the item's read fails with.
    fn kind(&self) -> ErrorKind {
        match self {
            ItemProblem::Unserviced => ErrorKind::Unserviced,
            ItemProblem::Missing => ErrorKind::Protocol {
                reason: "unexpected answer: the batch answer lists neither an answer for this call nor the call as \
                         unserviced"
                    .to_owned(),
            },
            ItemProblem::Malformed(part) => ErrorKind::Protocol {
                reason: format!("unexpected answer: the batch answer's item for this call has {part}"),
            },
        }
    }
}

/// A batch's `200` body split into the answers of items `1..=count`, in order. `Err` (a reason)
/// when the body is not a batch answer at all; never quotes the body.
pub(crate) fn split(body: &[u8], count: usize) -> Result<Vec<Result<Answer, ItemProblem>>, String> {
    #[derive(serde::Deserialize)]
    struct BatchAnswer {
        #[serde(default)]
        serviced_requests: Vec<Value>,
        #[serde(default)]
        unserviced_requests: Vec<Value>,
    }
    let answer: BatchAnswer = serde_json::from_slice(body).map_err(|error| {
        format!(
            "unexpected answer: HTTP 200 with a body that is not a batch answer ({:?} error at line {} column {})",
            error.classify(),
            error.line(),
            error.column()
        )
    })?;
    let mut serviced: HashMap<String, Value> = HashMap::new();
    for item in answer.serviced_requests {
        if let Some(id) = item.get("id").and_then(Value::as_str) {
            serviced.entry(id.to_owned()).or_insert(item);
        }
    }
    let unserviced: Vec<&str> = answer.unserviced_requests.iter().filter_map(Value::as_str).collect();
    Ok((0..count)
        .map(|index| {
            let id = item_id(index);
            match serviced.remove(&id) {
                Some(item) => item_answer(&item),
                None if unserviced.contains(&id.as_str()) => Err(ItemProblem::Unserviced),
                None => Err(ItemProblem::Missing),
            }
        })
        .collect())
}

/// One `serviced_requests` entry as the answer its call would have had alone.
fn item_answer(item: &Value) -> Result<Answer, ItemProblem> {
    let status = item
        .get("status_code")
        .and_then(Value::as_u64)
        .and_then(|code| u16::try_from(code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ItemProblem::Malformed("no valid status_code"))?;
    let encoded: String = match item.get("body") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(body)) => body.split_whitespace().collect(),
        Some(_) => return Err(ItemProblem::Malformed("a body that is not a string")),
    };
    let body = STANDARD
        .decode(encoded)
        .map_err(|_| ItemProblem::Malformed("a body that is not Base64"))?;
    let mut headers = HeaderMap::new();
    for header in item.get("headers").and_then(Value::as_array).into_iter().flatten() {
        let name = header.get("name").and_then(Value::as_str).unwrap_or_default();
        let value = header.get("value").and_then(Value::as_str).unwrap_or_default();
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
    Ok(Answer { status, headers, body })
}

/// The instances that refused a batch, and when: they are read apart for [`REFUSAL_MEMORY`].
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    since: Mutex<HashMap<String, Instant>>,
}

impl Refusals {
    /// Notes that `host` refused a batch at `now`.
    pub fn note(&self, host: &str, now: Instant) {
        self.since.locked().insert(host.to_owned(), now);
    }

    /// Whether `host` is still to be read apart at `now`.
    pub fn apart(&self, host: &str, now: Instant) -> bool {
        let mut since = self.since.locked();
        match since.get(host) {
            Some(at) if now.saturating_duration_since(*at) < REFUSAL_MEMORY => true,
            Some(_) => {
                since.remove(host);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servicenow::{InstanceUrl, SecretString, http::Transport};

    fn encoded(text: &str) -> String {
        STANDARD.encode(text)
    }

    #[test]
    fn the_body_names_each_read_by_its_relative_url_in_order() {
        let transport = Transport::new(crate::servicenow::ClientConfig {
            ca_bundle: None,
            resolve: Vec::new(),
            request_timeout: Duration::from_secs(1),
            observer: std::sync::Arc::new(crate::servicenow::NoObserver),
        })
        .unwrap();
        let instance = InstanceUrl::parse("https://acme.service-now.com").unwrap();
        let token = SecretString::new("t");
        let api = TableApi {
            transport: &transport,
            instance: &instance,
            access_token: &token,
        };
        let query = crate::servicenow::query::EncodedQuery::new()
            .equals("name", "a b")
            .unwrap();
        let reads = [
            api.list_read(super::super::table::SYS_SCRIPT, &query, &["sys_id", "name"], 5)
                .unwrap(),
            api.list_read(super::super::table::SYS_PROPERTIES, &query, &["sys_id"], 5)
                .unwrap(),
        ];
        let body = request_body(&reads);
        assert_eq!(body["batch_request_id"], "1");
        let items = body["rest_requests"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["id"], "1");
        assert_eq!(items[0]["method"], "GET");
        assert_eq!(
            items[0]["url"],
            "/api/now/v2/table/sys_script?sysparm_query=name%3Da+b&sysparm_fields=sys_id%2Cname&sysparm_limit=5\
             &sysparm_exclude_reference_link=true&sysparm_no_count=true"
        );
        assert_eq!(items[1]["id"], "2");
        assert!(
            items[1]["url"]
                .as_str()
                .unwrap()
                .starts_with("/api/now/v2/table/sys_properties?")
        );
        assert_eq!(items[1]["exclude_response_headers"], false);
        assert!(
            !body.to_string().contains("Bearer"),
            "the token is the batch's, not the items'"
        );
    }

    #[test]
    fn each_item_is_answered_by_id_whatever_the_order() {
        let body = json!({
            "batch_request_id": "1",
            "serviced_requests": [
                {"id": "2", "status_code": 403, "status_text": "Forbidden", "headers": [],
                 "body": encoded(r#"{"error":{"message":"Operation Failed"},"status":"failure"}"#)},
                {"id": "1", "status_code": 429, "status_text": "Too Many Requests",
                 "headers": [{"name": "Retry-After", "value": "7"}, {"name": "bad name", "value": "x"}],
                 "body": encoded("{}")},
            ],
            "unserviced_requests": ["3"],
        });
        let items = split(body.to_string().as_bytes(), 4).unwrap();
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(first.headers.get("retry-after").unwrap(), "7");
        assert_eq!(first.body, b"{}");
        let second = items[1].as_ref().unwrap();
        assert_eq!(second.status, StatusCode::FORBIDDEN);
        assert_eq!(items[2].as_ref().err(), Some(&ItemProblem::Unserviced));
        assert_eq!(items[3].as_ref().err(), Some(&ItemProblem::Missing));
    }

    #[test]
    fn a_body_with_line_breaks_is_base64_and_one_that_is_not_is_malformed() {
        let item = |body: Value| json!({"serviced_requests": [{"id": "1", "status_code": 200, "body": body}]});
        let wrapped = format!("{}\n", encoded(r#"{"result":[]}"#));
        let items = split(item(json!(wrapped)).to_string().as_bytes(), 1).unwrap();
        assert_eq!(items[0].as_ref().unwrap().body, br#"{"result":[]}"#);
        for (body, part) in [
            (json!("not base64!"), "a body that is not Base64"),
            (json!(5), "a body that is not a string"),
        ] {
            let items = split(item(body).to_string().as_bytes(), 1).unwrap();
            assert_eq!(items[0].as_ref().err(), Some(&ItemProblem::Malformed(part)));
        }
        let no_status = json!({"serviced_requests": [{"id": "1", "body": ""}]});
        let items = split(no_status.to_string().as_bytes(), 1).unwrap();
        assert_eq!(
            items[0].as_ref().err(),
            Some(&ItemProblem::Malformed("no valid status_code"))
        );
    }

    #[test]
    fn an_answer_that_is_not_a_batch_answer_is_refused_without_quoting_it() {
        for body in ["<html>secret</html>", "null", r#"{"serviced_requests":"secret"}"#] {
            let reason = split(body.as_bytes(), 1).err().unwrap();
            assert!(reason.starts_with("unexpected answer: HTTP 200"), "{reason}");
            assert!(!reason.contains("secret"), "{reason}");
        }
    }

    #[test]
    fn problems_read_as_clear_errors_and_unserviced_is_transient() {
        assert!(matches!(ItemProblem::Unserviced.kind(), ErrorKind::Unserviced));
        let missing = ItemProblem::Missing.kind().to_string();
        assert!(missing.contains("neither an answer for this call nor"), "{missing}");
        let malformed = ItemProblem::Malformed("a body that is not Base64").kind().to_string();
        assert!(malformed.ends_with("has a body that is not Base64"), "{malformed}");
    }

    #[test]
    fn a_refusing_instance_is_read_apart_for_an_hour() {
        let refusals = Refusals::default();
        let now = Instant::now();
        assert!(!refusals.apart("acme.service-now.com", now));
        refusals.note("acme.service-now.com", now);
        assert!(refusals.apart("acme.service-now.com", now + Duration::from_secs(60)));
        assert!(!refusals.apart("other.service-now.com", now));
        assert!(!refusals.apart("acme.service-now.com", now + REFUSAL_MEMORY));
        assert!(!refusals.apart("acme.service-now.com", now + Duration::from_secs(1)));
    }
}
