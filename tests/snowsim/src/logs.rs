//! What an instance records about itself: the request log tests count calls with, the system log
//! (`syslog`: business rule output and errors, token-flow failure causes) and the outbound calls
//! Business Rules made. Each keeps the most recent [`LOG_CAPACITY`] entries.

use std::collections::VecDeque;

use serde::Serialize;

/// How many entries each log keeps.
pub const LOG_CAPACITY: usize = 100_000;

/// One request as the instance saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestLogEntry {
    /// HTTP method (after `X-HTTP-Method-Override`).
    pub method: String,
    /// Path, e.g. `/api/now/table/sys_script`.
    pub path: String,
    /// Raw query string (`""` when none).
    pub query: String,
    /// The authenticated user's name, when the request authenticated.
    pub user: Option<String>,
    /// Status code answered (0 for a dropped connection).
    pub status: u16,
    /// When (`YYYY-MM-DD HH:MM:SS` UTC, simulated clock).
    pub time: String,
    /// The request was an item of a Batch API request (logged as a request of its own, as its
    /// batch's `POST /api/now/v1/batch` is): it came over no connection of its own.
    pub batch_item: bool,
}

impl RequestLogEntry {
    /// Whether the request may have changed the instance: a REST API call other than a GET —
    /// but for the Batch API's own POST, which changes only what its items (logged each) do.
    pub fn is_write(&self) -> bool {
        self.path.starts_with("/api/") && self.method != "GET" && self.path != crate::batch::PATH
    }
}

/// Severity of a system log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Debug.
    Debug,
    /// Information.
    Info,
    /// Warning.
    Warning,
    /// Error.
    Error,
}

/// One system log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SystemLogEntry {
    /// Severity.
    pub level: Level,
    /// Where it comes from (a rule name, `oauth`, ...).
    pub source: String,
    /// The message.
    pub message: String,
    /// When.
    pub time: String,
}

/// One outbound HTTP call made for a Business Rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboundLogEntry {
    /// The rule's name.
    pub rule: String,
    /// HTTP method.
    pub method: String,
    /// Target URL.
    pub endpoint: String,
    /// Request body.
    pub body: String,
    /// Status answered, when an answer came.
    pub status: Option<u16>,
    /// Transport error, when no answer came.
    pub error: Option<String>,
    /// `execute()` (true) or `executeAsync()` (false).
    pub synchronous: bool,
}

/// A bounded log.
#[derive(Debug)]
pub struct Log<T> {
    entries: VecDeque<T>,
}

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log {
            entries: VecDeque::new(),
        }
    }
}

impl<T: Clone> Log<T> {
    /// Appends an entry, dropping the oldest past [`LOG_CAPACITY`].
    pub fn push(&mut self, entry: T) {
        if self.entries.len() == LOG_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// A copy of every entry, oldest first.
    pub fn snapshot(&self) -> Vec<T> {
        self.entries.iter().cloned().collect()
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The three logs of an instance.
#[derive(Debug, Default)]
pub struct Logs {
    /// Requests.
    pub requests: Log<RequestLogEntry>,
    /// System log.
    pub system: Log<SystemLogEntry>,
    /// Outbound calls.
    pub outbound: Log<OutboundLogEntry>,
}
