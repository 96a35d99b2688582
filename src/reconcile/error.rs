//! How a reconcile stops early: an outcome for the status (condition, reason, message) and when
//! to look again. Failures of ServiceNow calls are classified here, in one place.

use std::time::Duration;

use crate::{
    api::{ConditionType, conditions::Reason},
    reconcile::status::{Progress, Truth, Verdict},
    servicenow::{self, ErrorKind},
};

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

/// The reconcile's own failures (Kubernetes API calls), retried with backoff by `error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("failed to {action}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// Why.
        source: kube::Error,
    },
    /// The finalizer helper failed.
    #[error("failed to run the finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Cleanup on the instance could not finish; retried with backoff.
    #[error("failed to clean up on the instance: {0}")]
    Cleanup(String),
}

impl Error {
    /// `true` when the API server refused the finalizer patch because the cached connection was
    /// older than its own (the patch's JSON-patch `test` failed, 422): the watch brings the newer
    /// object and wakes the reconcile, so there is nothing to back off from.
    pub fn is_stale_finalizer_patch(&self) -> bool {
        use kube::runtime::finalizer::Error as Finalizer;
        let Error::Finalizer(error) = self else {
            return false;
        };
        matches!(
            error.as_ref(),
            Finalizer::AddFinalizer(kube::Error::Api(status)) | Finalizer::RemoveFinalizer(kube::Error::Api(status))
                if status.code == 422
        )
    }
}

/// Wraps a Kubernetes API failure with what was being done.
pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
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
        ErrorKind::Unreachable { .. } | ErrorKind::Server { .. } => Stop {
            verdict: Verdict::new(condition, Truth::Unknown, Reason::Unreachable, message),
            progress: Progress::Working,
            retry: Retry::Backoff,
        },
        ErrorKind::Forbidden { table, operation, .. } => Stop::terminal(
            condition,
            Reason::InsufficientPrivileges,
            format!(
                "{error}. The service account needs {} rights on {table}: the itil role covers task tables; writing sys_script and sys_properties needs the admin role or ACLs granting create, read, write and delete on them.",
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
    fn only_a_refused_finalizer_patch_is_a_stale_cache() {
        use kube::{core::Status, runtime::finalizer::Error as Finalizer};
        let api = |code| {
            kube::Error::Api(
                Status::failure("the test operation failed", "Invalid")
                    .with_code(code)
                    .boxed(),
            )
        };
        let finalizer = |error| Error::Finalizer(Box::new(error));
        assert!(finalizer(Finalizer::AddFinalizer(api(422))).is_stale_finalizer_patch());
        assert!(finalizer(Finalizer::RemoveFinalizer(api(422))).is_stale_finalizer_patch());
        assert!(!finalizer(Finalizer::AddFinalizer(api(403))).is_stale_finalizer_patch());
        assert!(!finalizer(Finalizer::ApplyFailed(Error::Cleanup("x".into()))).is_stale_finalizer_patch());
        assert!(
            !Error::Kube {
                action: "patch the status",
                source: api(422)
            }
            .is_stale_finalizer_patch()
        );
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
