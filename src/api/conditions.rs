//! Condition types and the sync state of a connection.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a connection is in its life cycle (`status.syncState`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    /// No refresh token yet: someone must open `status.consentUrl` and allow access.
    AwaitingConsent,
    /// Tokens are good; the identity, rule and property are being checked or written.
    Provisioning,
    /// Everything is in place: events flow.
    ReadyToSync,
    /// Something needs a person: the conditions say what and how to fix it.
    Error,
    /// `spec.suspend` is true: no calls to ServiceNow.
    Suspended,
}

/// The condition types a connection reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The summary: true when the connection is ready to sync (kstatus).
    Ready,
    /// The operator holds a refresh token the instance accepts.
    Authorized,
    /// The OAuth user is known and has the roles the agent needs.
    IdentityResolved,
    /// The Business Rule and the callback property are in place.
    WebhookProvisioned,
    /// The account may send email through the Email API (only with `notifications.emailViaPsa`).
    EmailViaPsa,
    /// kstatus: the operator is working towards the desired state (present only while true).
    Reconciling,
    /// kstatus: the operator cannot make progress without a change (present only while true).
    Stalled,
}

impl ConditionType {
    /// The `type` string of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Authorized => "Authorized",
            ConditionType::IdentityResolved => "IdentityResolved",
            ConditionType::WebhookProvisioned => "WebhookProvisioned",
            ConditionType::EmailViaPsa => "EmailViaPsa",
            ConditionType::Reconciling => "Reconciling",
            ConditionType::Stalled => "Stalled",
        }
    }
}
