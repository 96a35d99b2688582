//! Requests the API server received, counted from its audit log (`DIR/audit.log`, written by
//! `tests/envtest/up`), for one test's namespace: how a test proves "no status patch" or "no
//! Secret write". A `resourceVersion` cannot: an identical server-side apply or update leaves it
//! as it was. Nor can the API server's `/metrics`: every test shares that server and its counters.
//!
//! A window is opened with [`AuditLog::mark`] and closed with [`AuditLog::since`]. Each makes a
//! request of its own (a GET of a ConfigMap that does not exist, `audit-mark-<random>`, in the
//! namespace) and polls the log, with a deadline, until that request's event is there; the window
//! holds the requests the API server *received* between the two. The harness's own requests
//! ([`HARNESS_USER_AGENT`]) are left out; everyone else's (the operator's, `kubectl`'s) are in.
//! The policy (`tests/envtest/up`) logs connections (and their status), Secrets, ConfigMaps,
//! Events and Leases; watches are not logged.

use std::{
    collections::BTreeMap,
    fmt,
    io::{Read as _, Seek as _, SeekFrom},
    path::PathBuf,
    time::Duration,
};

use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{Api, Client};
use rand::Rng as _;
use serde::Deserialize;

use super::{Observed, control_plane, control_plane::HARNESS_USER_AGENT, poll_until};

/// How long a marker request may take to show in the audit log.
const MARKER_DEADLINE: Duration = Duration::from_secs(10);
/// The verbs that change something.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// One request as the audit log has it (the `ResponseComplete` stage).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub verb: String,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub object_ref: ObjectRef,
    #[serde(default)]
    pub response_status: ResponseStatus,
    /// When the API server received it (RFC 3339, microseconds).
    pub request_received_timestamp: String,
    pub stage: String,
}

/// The object a request was about.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

/// The answer's status code.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
}

impl Request {
    /// When the API server received it.
    pub fn received(&self) -> Timestamp {
        self.request_received_timestamp
            .parse()
            .unwrap_or_else(|error| panic!("an audit timestamp {:?}: {error}", self.request_received_timestamp))
    }

    /// `true` for create, update, patch, delete and deletecollection.
    pub fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
    }

    /// `resource` or `resource/subresource`.
    pub fn resource(&self) -> String {
        match self.object_ref.subresource.as_str() {
            "" => self.object_ref.resource.clone(),
            sub => format!("{}/{sub}", self.object_ref.resource),
        }
    }

    /// Who asked: the user agent's product (`kubectl/v1.35.2 (...)` → `kubectl`), or
    /// `operator` for a request without one (the operator's kube client sends none).
    pub fn client(&self) -> String {
        match self.user_agent.split('/').next() {
            None | Some("") => "operator".to_owned(),
            Some(product) => product.to_owned(),
        }
    }
}

/// The start of a window: the marker request's arrival, and where the log was before it.
pub struct Mark {
    offset: u64,
    received: Timestamp,
}

/// The audit log, seen from one test's namespace.
pub struct AuditLog {
    path: PathBuf,
    configmaps: Api<ConfigMap>,
    namespace: String,
}

impl AuditLog {
    /// The audit log of the control plane, for the requests in `namespace`.
    pub async fn of(client: &Client, namespace: &str) -> Self {
        let path = control_plane().await.audit_log_path().to_owned();
        Self {
            path,
            configmaps: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_owned(),
        }
    }

    /// Opens a window: the requests received from now on.
    pub async fn mark(&self) -> Mark {
        self.marker().await
    }

    /// Closes the window opened at `mark`: the requests in the test's namespace received after
    /// `mark` and before now, the harness's own left out.
    pub async fn since(&self, mark: &Mark) -> Requests {
        let end = self.marker().await;
        let text = self.read_from(mark.offset);
        let needle = format!("\"namespace\":\"{}\"", self.namespace);
        let requests = text
            .lines()
            .filter(|line| line.contains(&needle))
            .filter_map(|line| serde_json::from_str::<Request>(line).ok())
            .filter(|r| r.stage == "ResponseComplete" && r.object_ref.namespace == self.namespace)
            .filter(|r| (mark.received..end.received).contains(&r.received()) && r.received() != mark.received)
            .filter(|r| r.user_agent != HARNESS_USER_AGENT)
            .collect();
        Requests(requests)
    }

    /// Makes a marker request and waits until the log has it; returns where the log was before
    /// the request and when the API server received it.
    async fn marker(&self) -> Mark {
        let offset = self.len();
        let name = format!("audit-mark-{:016x}", rand::rng().random::<u64>());
        // A ConfigMap nobody made: the answer is a 404, the request is logged all the same.
        let answer = self.configmaps.get_opt(&name).await;
        assert!(matches!(answer, Ok(None)), "the marker request {name} got {answer:?}");
        let needle = format!("\"name\":\"{name}\"");
        poll_until(
            MARKER_DEADLINE,
            &format!("the marker request {name} in the audit log {}", self.path.display()),
            || async {
                let text = self.read_from(offset);
                let found = text
                    .lines()
                    .filter(|line| line.contains(&needle))
                    .filter_map(|line| serde_json::from_str::<Request>(line).ok())
                    .find(|r| r.stage == "ResponseComplete");
                match found {
                    Some(request) => Observed::Done(Mark {
                        offset,
                        received: request.received(),
                    }),
                    None => Observed::not_yet(format!("{} bytes after offset {offset}", text.len())),
                }
            },
        )
        .await
    }

    fn len(&self) -> u64 {
        std::fs::metadata(&self.path)
            .unwrap_or_else(|error| panic!("the audit log {}: {error}", self.path.display()))
            .len()
    }

    /// The whole lines of the log from `offset` on.
    fn read_from(&self, offset: u64) -> String {
        let mut file = std::fs::File::open(&self.path)
            .unwrap_or_else(|error| panic!("open the audit log {}: {error}", self.path.display()));
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        assert!(
            len >= offset,
            "the audit log {} shrank under the test (rotated? see --audit-log-maxsize in tests/envtest/up)",
            self.path.display()
        );
        file.seek(SeekFrom::Start(offset)).expect("seek in the audit log");
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read the audit log");
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
        String::from_utf8_lossy(&bytes[..whole]).into_owned()
    }
}

/// The requests of a window.
pub struct Requests(pub Vec<Request>);

impl Requests {
    /// The requests `keep` accepts.
    pub fn matching(&self, keep: impl Fn(&Request) -> bool) -> Vec<&Request> {
        self.0.iter().filter(|r| keep(r)).collect()
    }

    /// The writes to `resource` (`secrets`, or `servicenowconnections/status`; `None` as
    /// subresource matches any).
    pub fn writes_to(&self, resource: &str, subresource: Option<&str>) -> Vec<&Request> {
        self.matching(|r| {
            r.is_write()
                && r.object_ref.resource == resource
                && subresource.is_none_or(|sub| r.object_ref.subresource == sub)
        })
    }

    /// The reads (get, list).
    pub fn reads(&self) -> Vec<&Request> {
        self.matching(|r| !r.is_write())
    }
}

impl fmt::Display for Requests {
    /// One line per (client, verb, resource, name) with its count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counts: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
        for r in &self.0 {
            *counts
                .entry((r.client(), r.verb.clone(), r.resource(), r.object_ref.name.clone()))
                .or_default() += 1;
        }
        if counts.is_empty() {
            return write!(f, "  (no request)");
        }
        for ((client, verb, resource, name), count) in counts {
            writeln!(f, "  {count:>3} × {client} {verb} {resource} {name}")?;
        }
        Ok(())
    }
}
