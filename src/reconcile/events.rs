//! Pure: which Kubernetes Events a status change deserves. Events mark transitions only — a
//! condition whose status or reason changed — never a steady state.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::conditions::Reason;

/// Reasons that ask for action while their condition is still True: Warning Events too.
const WARNING_WHILE_TRUE: &[Reason] = &[Reason::RefreshTokenExpiring];

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// `true` for a Warning (a condition False, or Unknown because the instance failed or
    /// rate-limited, or a warning reason while True), `false` for a Normal event.
    pub warning: bool,
    /// The condition's reason (the Event reason).
    pub reason: String,
    /// The condition type, as the Event action.
    pub action: String,
    /// The condition's message.
    pub note: String,
}

/// The transitions from `old` to `new` conditions, skipping the kstatus bookkeeping types.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Transition> {
    new.iter()
        .filter(|c| c.type_ != "Reconciling" && c.type_ != "Stalled" && c.type_ != "Ready")
        .filter(|c| {
            !old.iter()
                .any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)
        })
        .map(|c| Transition {
            warning: c.status != "True" || WARNING_WHILE_TRUE.iter().any(|r| r.as_str() == c.reason),
            reason: c.reason.clone(),
            action: c.type_.clone(),
            note: c.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} is {reason}"),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_steady_state_publishes_nothing() {
        let conditions = [condition("Authorized", "True", "TokenValid")];
        assert!(transitions(&conditions, &conditions).is_empty());
    }

    #[test]
    fn a_new_reason_is_an_event_and_a_false_status_a_warning() {
        let old = [condition("Authorized", "True", "TokenValid")];
        let new = [
            condition("Authorized", "False", "TokenRejected"),
            condition("Ready", "False", "TokenRejected"),
        ];
        let events = transitions(&old, &new);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
        assert_eq!(events[0].reason, "TokenRejected");
        assert_eq!(events[0].action, "Authorized");
    }

    #[test]
    fn an_unknown_condition_is_a_warning_and_a_recovery_is_normal() {
        let healthy = [condition("IdentityResolved", "True", "IdentityResolved")];
        let failing = [condition("IdentityResolved", "Unknown", "Unreachable")];
        let events = transitions(&healthy, &failing);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
        let events = transitions(&failing, &healthy);
        assert_eq!(events.len(), 1);
        assert!(!events[0].warning);
    }

    #[test]
    fn a_refresh_token_nearing_its_end_is_a_warning_though_authorized() {
        let old = [condition("Authorized", "True", "TokenValid")];
        let new = [condition("Authorized", "True", "RefreshTokenExpiring")];
        let events = transitions(&old, &new);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
    }
}
