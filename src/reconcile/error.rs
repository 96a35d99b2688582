//! The reconcile's own failures: Kubernetes API calls, the finalizer, and a cleanup on the instance
//! that could not finish. All are retried with backoff by `error_policy`, except a cleanup that a
//! person must unblock, which waits for a change of the connection.

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
    /// A Secret the reconcile was about to write or delete is not the connection's (it was
    /// swapped since `gather` read it): nothing was written; the next reconcile reports it.
    #[error("failed to {action}: {source}")]
    NotOwned {
        /// What was being done.
        action: &'static str,
        /// Which Secret, and why it is not the connection's.
        source: crate::secrets::NotOwned,
    },
    /// The API server refused the status write, conditional on the version of the connection the
    /// reconcile started from (409): the cached connection was older than the stored one — a
    /// status another reconcile or the consent page wrote meanwhile, which this write must not
    /// undo (a consent ticket replaced, say). Nothing was written; the reconcile looks again.
    #[error("failed to write the connection's status: the connection changed since it was read")]
    StaleStatus,
    /// The finalizer helper failed.
    #[error("failed to run the finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Cleanup on the instance could not finish.
    #[error("failed to clean up on the instance: {0}")]
    Cleanup(#[from] CleanupError),
}

/// Why a deleted connection's cleanup on the instance could not finish.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The credentials Secret is missing or unusable: a person must restore it, or let go.
    #[error("{0}; restore the credentials Secret, or set spec.deletionPolicy to Orphan to leave the instance as it is")]
    Credentials(#[source] crate::secrets::CredentialsError),
    /// The instance failed or refused a call.
    #[error("{0}; set spec.deletionPolicy to Orphan to stop trying")]
    Instance(#[source] crate::servicenow::Error),
}

impl CleanupError {
    /// `true` when only a person can unblock it: unusable credentials, or an instance that
    /// refuses (401: the token or the credentials; 403: the account's rights; 404). Transient
    /// failures (unreachable, 5xx, 429) are not.
    pub fn needs_a_person(&self) -> bool {
        match self {
            CleanupError::Credentials(_) => true,
            CleanupError::Instance(error) => !error.is_transient(),
        }
    }
}

impl Error {
    /// `true` for a failure that retrying soon will not fix (see [`CleanupError::needs_a_person`]).
    pub fn needs_a_person(&self) -> bool {
        let cleanup = match self {
            Error::Cleanup(cleanup) => cleanup,
            Error::Finalizer(finalizer) => match finalizer.as_ref() {
                kube::runtime::finalizer::Error::CleanupFailed(Error::Cleanup(cleanup)) => cleanup,
                _ => return false,
            },
            Error::Kube { .. } | Error::NotOwned { .. } | Error::StaleStatus => return false,
        };
        cleanup.needs_a_person()
    }

    /// `true` when the API server refused a conditional write because the cached connection was
    /// older than the stored one: the status write ([`Error::StaleStatus`]), or the finalizer
    /// patch (the removal's JSON-patch `test` failed, 422; the addition's `resourceVersion`
    /// precondition, 409). The cache catches up within moments, so there is nothing to back off
    /// from: the reconcile looks again soon.
    pub fn is_stale_cache(&self) -> bool {
        use kube::runtime::finalizer::Error as Finalizer;
        let error = match self {
            Error::Finalizer(error) => error,
            Error::StaleStatus => return true,
            _ => return false,
        };
        if let Finalizer::ApplyFailed(inner) = error.as_ref() {
            return matches!(inner, Error::StaleStatus);
        }
        matches!(
            error.as_ref(),
            Finalizer::AddFinalizer(kube::Error::Api(status)) if status.code == 409
        ) || matches!(
            error.as_ref(),
            Finalizer::RemoveFinalizer(kube::Error::Api(status)) if status.code == 422
        )
    }
}

/// Wraps a Kubernetes API failure with what was being done.
pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// Wraps a failure to write or delete one of the connection's Secrets with what was being done.
pub fn secret(action: &'static str) -> impl FnOnce(crate::secrets::SecretError) -> Error {
    move |error| match error {
        crate::secrets::SecretError::NotOwned(source) => Error::NotOwned { action, source },
        crate::secrets::SecretError::Kube(source) => Error::Kube { action, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_conditional_write_is_a_stale_cache() {
        use kube::{core::Status, runtime::finalizer::Error as Finalizer};
        let api = |code| {
            kube::Error::Api(
                Status::failure("the test operation failed", "Invalid")
                    .with_code(code)
                    .boxed(),
            )
        };
        let finalizer = |error| Error::Finalizer(Box::new(error));
        assert!(finalizer(Finalizer::AddFinalizer(api(409))).is_stale_cache());
        assert!(finalizer(Finalizer::RemoveFinalizer(api(422))).is_stale_cache());
        assert!(!finalizer(Finalizer::AddFinalizer(api(403))).is_stale_cache());
        assert!(!finalizer(Finalizer::AddFinalizer(api(422))).is_stale_cache());
        assert!(!finalizer(Finalizer::RemoveFinalizer(api(409))).is_stale_cache());
        let cleanup = || {
            Error::Cleanup(CleanupError::Credentials(
                crate::secrets::CredentialsError::SecretMissing {
                    secret: "acme-oauth".into(),
                },
            ))
        };
        assert!(!finalizer(Finalizer::ApplyFailed(cleanup())).is_stale_cache());
        assert!(
            !Error::Kube {
                action: "patch the status",
                source: api(422)
            }
            .is_stale_cache()
        );
        assert!(Error::StaleStatus.is_stale_cache());
        assert!(finalizer(Finalizer::ApplyFailed(Error::StaleStatus)).is_stale_cache());
    }

    #[test]
    fn only_a_cleanup_that_a_person_must_unblock_waits() {
        use kube::runtime::finalizer::Error as Finalizer;
        let instance = |kind| {
            Error::Cleanup(CleanupError::Instance(crate::servicenow::Error {
                action: "delete sys_script".into(),
                host: "acme.service-now.com".into(),
                kind,
            }))
        };
        let forbidden = || {
            instance(crate::servicenow::ErrorKind::Forbidden {
                table: "sys_script".into(),
                operation: "delete",
                message: "ACL Exception Delete Failed due to security constraints".into(),
            })
        };
        assert!(forbidden().needs_a_person());
        assert!(Error::Finalizer(Box::new(Finalizer::CleanupFailed(forbidden()))).needs_a_person());
        assert!(!Error::Finalizer(Box::new(Finalizer::ApplyFailed(forbidden()))).needs_a_person());
        let unreachable = instance(crate::servicenow::ErrorKind::Unreachable {
            reason: "timed out".into(),
        });
        assert!(!unreachable.needs_a_person());
        assert!(
            Error::Cleanup(CleanupError::Credentials(
                crate::secrets::CredentialsError::SecretMissing {
                    secret: "acme-oauth".into()
                }
            ))
            .needs_a_person()
        );
    }
}
