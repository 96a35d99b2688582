//! The connection's conditions: read, test and assert them (with the reason's remedy).

use servicenow_operator::api::{ServiceNowConnectionStatus, conditions::Reason};

/// The condition `type_` of `status` as (status, reason).
pub fn condition(status: &ServiceNowConnectionStatus, type_: &str) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// `true` when condition `type_` of `status` is `truth` for `reason`.
pub fn has_condition(status: &ServiceNowConnectionStatus, type_: &str, truth: &str, reason: Reason) -> bool {
    condition(status, type_) == Some((truth.to_owned(), reason.as_str().to_owned()))
}

/// Asserts that condition `type_` of `status` is `truth` for `reason`, with the reason's remedy
/// in its message; returns the message.
pub fn assert_condition(status: &ServiceNowConnectionStatus, type_: &str, truth: &str, reason: Reason) -> String {
    let found = status.conditions.iter().find(|c| c.type_ == type_);
    let Some(found) = found else {
        panic!("no condition {type_} in {status:#?}");
    };
    assert_eq!(
        (found.status.as_str(), found.reason.as_str()),
        (truth, reason.as_str()),
        "condition {type_}: {found:#?}"
    );
    assert!(
        found.message.contains(reason.remedy()),
        "the message of {type_} lacks the remedy of {}: {:?}",
        reason.as_str(),
        found.message
    );
    found.message.clone()
}
