//! How a reconcile ends before `READY_TO_SYNC`: an outcome for the status (condition, reason,
//! message) and when to look again. Failures of ServiceNow calls are classified here, in one place
//! (429 and `Retry-After` included).

use std::time::Duration;

use crate::{
    api::{ConditionType, conditions::Reason},
    reconcile::status::{Progress, Truth, Verdict},
    servicenow::{self, ErrorKind},
};

/// How soon a hibernating instance is looked at again: waking one takes minutes, and a tight
/// backoff would only hammer its wake-up page.
pub const HIBERNATION_RETRY: Duration = Duration::from_secs(300);

/// When to reconcile a connection again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// After this long (a 429's `Retry-After`, a token refresh, the resync period).
    After(Duration),
    /// After the connection's next exponential-backoff delay (transient failures).
    Backoff,
    /// At the resync period: nothing will change without a person, but the instance side may be
    /// fixed without any change in Kubernetes (a role granted, an application re-activated).
    Resync,
    /// Only when the connection or one of its Secrets changes.
    OnChange,
    /// When the connection or one of its Secrets changes, and after this long at the latest
    /// (the consent ticket's expiry); unlike [`Retry::After`] a change is acted on at once.
    ChangeOrAfter(Duration),
}

/// A reconcile that ended before `READY_TO_SYNC`.
#[derive(Debug)]
pub struct Stop {
    /// The condition that explains it.
    pub verdict: Verdict,
    /// How the summary reads.
    pub progress: Progress,
    /// When to look again.
    pub retry: Retry,
}

impl Stop {
    /// A stop that needs a person: `Stalled`, retried at the resync period.
    pub fn terminal(condition: ConditionType, reason: Reason, message: impl Into<String>) -> Self {
        Stop {
            verdict: Verdict::new(condition, Truth::False, reason, message),
            progress: Progress::Stalled,
            retry: Retry::Resync,
        }
    }
}

/// Classifies a failed ServiceNow call that is not a token failure: transient failures keep the
/// condition `Unknown` and retry; an ACL refusal is `InsufficientPrivileges`; anything else is
/// `failure` on `condition`.
pub fn classify(condition: ConditionType, failure: Reason, error: &servicenow::Error) -> Stop {
    let message = format!("{error}.");
    match &error.kind {
        ErrorKind::RateLimited { retry_after } => Stop {
            verdict: Verdict::new(condition, Truth::Unknown, Reason::RateLimited, message),
            progress: Progress::Working,
            retry: retry_after.map(Retry::After).unwrap_or(Retry::Backoff),
        },
        ErrorKind::Hibernating => Stop {
            verdict: Verdict::new(condition, Truth::Unknown, Reason::InstanceHibernating, message),
            progress: Progress::Working,
            retry: Retry::After(HIBERNATION_RETRY),
        },
        ErrorKind::Unreachable { .. } | ErrorKind::Server { .. } | ErrorKind::Unserviced => Stop {
            verdict: Verdict::new(condition, Truth::Unknown, Reason::Unreachable, message),
            progress: Progress::Working,
            retry: Retry::Backoff,
        },
        ErrorKind::ScopeRestricted { .. } => Stop::terminal(condition, Reason::TokenScopeRestricted, message),
        ErrorKind::Forbidden { table, operation, .. } => Stop::terminal(
            condition,
            Reason::InsufficientPrivileges,
            format!(
                "{error}. The service account needs {} rights on {table}: the itil role covers task tables; writing sys_script needs business_rule_admin (or admin) and, on Zurich and later, snc_required_script_writer_permission (group Conditional Script Writer), which admin lacks by default; writing sys_properties needs admin or ACLs for x_neoagent_integration on x_neoagent.* properties.",
                operation
            ),
        ),
        ErrorKind::Unauthorized { .. } | ErrorKind::NotFound { .. } | ErrorKind::Protocol { .. } => Stop {
            verdict: Verdict::new(condition, Truth::False, failure, message),
            progress: Progress::Working,
            retry: Retry::Backoff,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind) -> servicenow::Error {
        servicenow::Error {
            action: "list sys_script".into(),
            host: "acme.service-now.com".into(),
            kind,
        }
    }

    #[test]
    fn a_429_waits_for_retry_after() {
        let stop = classify(
            ConditionType::WebhookProvisioned,
            Reason::ProvisioningFailed,
            &error(ErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            }),
        );
        assert_eq!(stop.retry, Retry::After(Duration::from_secs(7)));
        assert_eq!(stop.verdict.reason, Reason::RateLimited);
    }

    #[test]
    fn a_403_names_the_table_and_the_rights() {
        let stop = classify(
            ConditionType::WebhookProvisioned,
            Reason::ProvisioningFailed,
            &error(ErrorKind::Forbidden {
                table: "sys_script".into(),
                operation: "create",
                message: "ACL Exception Insert Failed due to security constraints".into(),
            }),
        );
        assert_eq!(stop.verdict.reason, Reason::InsufficientPrivileges);
        assert!(stop.verdict.message.contains("sys_script"));
        assert_eq!(stop.progress, Progress::Stalled);
    }

    #[test]
    fn a_429_waits_for_retry_after_or_backs_off_without_it() {
        // Semaphore 429s may come without Retry-After (servicenow-api.md §2.7).
        let stop = |retry_after| {
            classify(
                ConditionType::WebhookProvisioned,
                Reason::ProvisioningFailed,
                &error(ErrorKind::RateLimited { retry_after }),
            )
        };
        let with = stop(Some(Duration::from_secs(7)));
        assert_eq!(
            (with.retry, with.verdict.reason),
            (Retry::After(Duration::from_secs(7)), Reason::RateLimited)
        );
        let without = stop(None);
        assert_eq!((without.retry, without.verdict.truth), (Retry::Backoff, Truth::Unknown));
        assert_eq!(without.progress, Progress::Working);
    }

    #[test]
    fn a_timeout_is_transient() {
        let stop = classify(
            ConditionType::Authorized,
            Reason::TokenRejected,
            &error(ErrorKind::Unreachable {
                reason: "timed out".into(),
            }),
        );
        assert_eq!((stop.retry, stop.verdict.truth), (Retry::Backoff, Truth::Unknown));
    }
}
