//! Errors of calls to ServiceNow, classified so the reconciler can map them to condition reasons
//! and retries. No message ever carries a secret value.

use std::time::Duration;

/// A failed call to an instance: what was being done, and how it failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} on {host}: {kind}")]
pub struct Error {
    /// What the call did, e.g. `refresh the access token`, `create a record in sys_script`.
    pub action: String,
    /// The instance host.
    pub host: String,
    /// How it failed.
    pub kind: ErrorKind,
}

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// HTTP 401: the token endpoint's generic `access_denied`, or a Table API call without a
    /// valid token.
    #[error("the instance answered 401 Unauthorized ({detail})")]
    Unauthorized {
        /// What the instance said (never a token).
        detail: String,
    },
    /// HTTP 403: an ACL refused the operation on `table`.
    #[error("the instance refused {operation} on table {table} (403: {message})")]
    Forbidden {
        /// The table.
        table: String,
        /// `read`, `create`, `update` or `delete`.
        operation: &'static str,
        /// The instance's message, e.g. `ACL Exception Insert Failed due to security constraints`.
        message: String,
    },
    /// HTTP 404 on a single record or an unknown path.
    #[error("not found (404: {message})")]
    NotFound {
        /// The instance's message.
        message: String,
    },
    /// HTTP 429.
    #[error("rate limited (429{})", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// No answer: DNS, connect, TLS or timeout.
    #[error("the instance could not be reached: {reason}")]
    Unreachable {
        /// Why (the transport's text).
        reason: String,
    },
    /// HTTP 5xx.
    #[error("the instance failed with HTTP {status}")]
    Server {
        /// The status code.
        status: u16,
    },
    /// Another status or a body the client does not understand.
    #[error("unexpected answer: {reason}")]
    Protocol {
        /// What was unexpected.
        reason: String,
    },
}

impl Error {
    /// `true` when trying again later, unchanged, may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::RateLimited { .. } | ErrorKind::Unreachable { .. } | ErrorKind::Server { .. })
    }

    /// How long the instance asked to wait, for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }
}
