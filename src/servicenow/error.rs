//! Errors of calls to ServiceNow, classified so the reconciler can map them to condition reasons
//! and retries. No message ever carries a secret value.

use std::time::Duration;

/// A failed call to an instance: what was being done, and how it failed.
///
/// Displays as `failed to <action> on <host>: <kind>`; without a host (setting the client up,
/// before any instance is involved) as `failed to <action>: <kind>`.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action}{}: {kind}", on_host(host))]
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
    /// HTTP 403 "Missing required api access scope": the OAuth application's Auth Scopes do not
    /// cover this API (REST API Auth Scope, servicenow-api.md §7). The token itself is good.
    #[error(
        "the instance refused the token for {api}: its OAuth application lacks the API's auth scope (403: {message})"
    )]
    ScopeRestricted {
        /// The API path called.
        api: String,
        /// The instance's message.
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
    /// The instance answered with its "instance hibernating" page (an idle developer instance;
    /// any status, an HTML body): nothing else it said can be trusted.
    #[error("the instance is hibernating (it answered with its 'instance hibernating' page)")]
    Hibernating,
    /// A call sent in a Batch API request that the instance left undone: the batch reached a
    /// size or time limit (30 s) first (`unserviced_requests`, servicenow-api.md §7).
    #[error("the instance left the call undone: its batch reached a size or time limit (unserviced)")]
    Unserviced,
    /// HTTP 5xx.
    #[error("the instance failed with HTTP {status}")]
    Server {
        /// The status code.
        status: u16,
    },
    /// Another status or a body the client does not understand (or, from `Client::new`, a
    /// setting it cannot use, such as a CA bundle without certificates). Not transient.
    #[error("{reason}")]
    Protocol {
        /// What was unexpected, as a whole clause (e.g. `unexpected answer HTTP 400: Invalid
        /// table x`). Never a body that may hold a secret.
        reason: String,
    },
}

fn on_host(host: &str) -> String {
    if host.is_empty() {
        String::new()
    } else {
        format!(" on {host}")
    }
}

impl Error {
    /// `true` when trying again later, unchanged, may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited { .. }
                | ErrorKind::Unreachable { .. }
                | ErrorKind::Server { .. }
                | ErrorKind::Unserviced
                | ErrorKind::Hibernating
        )
    }

    /// How long the instance asked to wait, for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind) -> Error {
        Error {
            action: "create a record in sys_script".into(),
            host: "acme.service-now.com".into(),
            kind,
        }
    }

    #[test]
    fn the_message_says_what_failed_where_and_how() {
        let forbidden = error(ErrorKind::Forbidden {
            table: "sys_script".into(),
            operation: "create",
            message: "Operation Failed: ACL Exception Insert Failed due to security constraints".into(),
        });
        assert_eq!(
            forbidden.to_string(),
            "failed to create a record in sys_script on acme.service-now.com: the instance refused create on table \
             sys_script (403: Operation Failed: ACL Exception Insert Failed due to security constraints)"
        );
        let setup = Error {
            action: "read the CA bundle /ca.pem".into(),
            host: String::new(),
            kind: protocol("no PEM"),
        };
        assert_eq!(setup.to_string(), "failed to read the CA bundle /ca.pem: no PEM");
    }

    fn protocol(reason: &str) -> ErrorKind {
        ErrorKind::Protocol { reason: reason.into() }
    }

    #[test]
    fn rate_limits_server_failures_and_silence_are_transient_the_rest_is_not() {
        let rate_limited = error(ErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        });
        assert!(rate_limited.is_transient());
        assert_eq!(rate_limited.retry_after(), Some(Duration::from_secs(7)));
        assert!(error(ErrorKind::Server { status: 503 }).is_transient());
        assert!(error(ErrorKind::Unserviced).is_transient());
        assert!(
            error(ErrorKind::Unreachable {
                reason: "connection refused".into()
            })
            .is_transient()
        );
        for kind in [
            ErrorKind::Unauthorized {
                detail: "server_error: access_denied".into(),
            },
            ErrorKind::Forbidden {
                table: "sys_script".into(),
                operation: "create",
                message: String::new(),
            },
            ErrorKind::NotFound {
                message: "No Record found".into(),
            },
            protocol("unexpected answer: HTTP 400: Invalid table x"),
        ] {
            let failure = error(kind);
            assert!(!failure.is_transient(), "{failure}");
            assert_eq!(failure.retry_after(), None);
        }
    }
}
