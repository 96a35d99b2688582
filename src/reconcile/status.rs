//! Pure: what was observed and decided → the connection's status. The status is written only
//! when it differs from the one stored (ignoring nothing but the clock: a condition keeps its
//! `lastTransitionTime` unless its status flips).

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::api::{ConditionType, ServiceNowConnectionStatus, SyncState, conditions::Reason};

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`: not checked yet, or could not be checked.
    Unknown,
}

impl Truth {
    fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }
}

/// One condition as the reconcile decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Which condition.
    pub condition: ConditionType,
    /// Its status.
    pub truth: Truth,
    /// Why.
    pub reason: Reason,
    /// What happened, without the remedy (the remedy is appended from the reason).
    pub message: String,
}

impl Verdict {
    /// A verdict on `condition`.
    pub fn new(condition: ConditionType, truth: Truth, reason: Reason, message: impl Into<String>) -> Self {
        Verdict {
            condition,
            truth,
            reason,
            message: message.into(),
        }
    }

    fn full_message(&self) -> String {
        match self.reason.remedy() {
            "" => self.message.clone(),
            remedy if self.message.is_empty() => remedy.to_owned(),
            remedy => format!("{} {remedy}", self.message.trim_end()),
        }
    }
}

/// Sets `verdict` into `conditions`, keeping `lastTransitionTime` when the status is unchanged.
pub fn set_condition(conditions: &mut Vec<Condition>, verdict: &Verdict, generation: Option<i64>, now: Timestamp) {
    let type_ = verdict.condition.as_str();
    let status = verdict.truth.as_str();
    let existing = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match existing.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.as_str().to_owned(),
        message: verdict.full_message(),
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(index) => conditions[index] = condition,
        None => conditions.push(condition),
    }
}

/// Removes `condition` (kstatus wants `Reconciling` / `Stalled` only while true).
pub fn remove_condition(conditions: &mut Vec<Condition>, condition: ConditionType) {
    conditions.retain(|c| c.type_ != condition.as_str());
}

/// How a reconcile ended, as far as the summary is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Everything is in place.
    Ready,
    /// Work remains that the operator will do by itself (or a transient failure it retries).
    Working,
    /// Waiting for consent.
    AwaitingConsent,
    /// Nothing more happens without a change by a person.
    Stalled,
    /// Suspended by the spec.
    Suspended,
}

/// Computes the summary: `syncState`, `Ready`, and `Reconciling` / `Stalled` while true. `first_failure`
/// is the first verdict that is not true, whose reason and message the summary repeats.
pub fn summarise(
    status: &mut ServiceNowConnectionStatus,
    progress: Progress,
    first_failure: Option<&Verdict>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (state, ready) = match progress {
        Progress::Ready => (
            SyncState::ReadyToSync,
            Verdict::new(
                ConditionType::Ready,
                Truth::True,
                Reason::ReadyToSync,
                "The connection is ready to sync.",
            ),
        ),
        Progress::Suspended => (
            SyncState::Suspended,
            Verdict::new(
                ConditionType::Ready,
                Truth::False,
                Reason::Suspended,
                "The connection is suspended.",
            ),
        ),
        Progress::AwaitingConsent => (
            SyncState::AwaitingConsent,
            summary_of(first_failure, Reason::ConsentRequired),
        ),
        Progress::Working => (SyncState::Provisioning, summary_of(first_failure, Reason::Progressing)),
        Progress::Stalled => (SyncState::Error, summary_of(first_failure, Reason::ProvisioningFailed)),
    };
    status.sync_state = Some(state);
    status.observed_generation = generation;
    set_condition(&mut status.conditions, &ready, generation, now);
    match progress {
        Progress::Working | Progress::AwaitingConsent => {
            let reconciling = Verdict {
                condition: ConditionType::Reconciling,
                truth: Truth::True,
                ..ready.clone()
            };
            set_condition(&mut status.conditions, &reconciling, generation, now);
        }
        _ => remove_condition(&mut status.conditions, ConditionType::Reconciling),
    }
    match progress {
        Progress::Stalled => {
            let stalled = Verdict {
                condition: ConditionType::Stalled,
                truth: Truth::True,
                ..ready
            };
            set_condition(&mut status.conditions, &stalled, generation, now);
        }
        _ => remove_condition(&mut status.conditions, ConditionType::Stalled),
    }
}

fn summary_of(first_failure: Option<&Verdict>, fallback: Reason) -> Verdict {
    match first_failure {
        Some(failure) => Verdict {
            condition: ConditionType::Ready,
            truth: Truth::False,
            ..failure.clone()
        },
        None => Verdict::new(ConditionType::Ready, Truth::False, fallback, ""),
    }
}

/// `true` when `new` differs from `old` in anything a person or a tool reads.
pub fn changed(old: Option<&ServiceNowConnectionStatus>, new: &ServiceNowConnectionStatus) -> bool {
    old != Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let mut conditions = Vec::new();
        let authorized = Verdict::new(ConditionType::Authorized, Truth::True, Reason::TokenValid, "ok");
        set_condition(&mut conditions, &authorized, Some(1), at(0));
        let later = Verdict {
            message: "still ok".into(),
            ..authorized.clone()
        };
        set_condition(&mut conditions, &later, Some(2), at(60));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(at(0)));
        assert_eq!(conditions[0].message, "still ok");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn a_flip_stamps_a_new_transition_time_and_appends_the_remedy() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            &Verdict::new(ConditionType::Authorized, Truth::True, Reason::TokenValid, "ok"),
            Some(1),
            at(0),
        );
        let rejected = Verdict::new(
            ConditionType::Authorized,
            Truth::False,
            Reason::TokenRejected,
            "refused.",
        );
        set_condition(&mut conditions, &rejected, Some(1), at(30));
        assert_eq!(conditions[0].last_transition_time, Time(at(30)));
        assert_eq!(conditions[0].reason, "TokenRejected");
        assert!(
            conditions[0]
                .message
                .starts_with("refused. The instance rejected the client id/secret")
        );
    }

    #[test]
    fn a_ready_summary_drops_reconciling_and_stalled() {
        let mut status = ServiceNowConnectionStatus::default();
        let failure = Verdict::new(
            ConditionType::Authorized,
            Truth::False,
            Reason::TokenRejected,
            "refused.",
        );
        summarise(&mut status, Progress::Stalled, Some(&failure), Some(3), at(0));
        assert_eq!(status.sync_state, Some(SyncState::Error));
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.reason == "TokenRejected")
        );
        summarise(&mut status, Progress::Ready, None, Some(3), at(5));
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready"]);
        assert_eq!(status.sync_state, Some(SyncState::ReadyToSync));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let mut status = ServiceNowConnectionStatus::default();
        summarise(&mut status, Progress::Ready, None, Some(1), at(0));
        let mut again = status.clone();
        summarise(&mut again, Progress::Ready, None, Some(1), at(600));
        assert!(!changed(Some(&status), &again));
    }
}
