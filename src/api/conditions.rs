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

/// Declares [`Reason`] with its list [`Reason::ALL`] and its string, the variant's name: one list,
/// so nothing can be left out of either.
macro_rules! reasons {
    ($(#[$enum_doc:meta])* pub enum Reason { $( $(#[$doc:meta])* $name:ident, )* }) => {
        $(#[$enum_doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[$doc])* $name, )*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name),*];

            /// The `reason` string of a condition (also the Event reason): the variant's name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    /// Why a condition is what it is: the closed vocabulary of reasons. Each reason's
    /// [`Reason::remedy`] tells the person on call what to do, in the words of the connect guide.
    pub enum Reason {
        /// Everything is in place.
        ReadyToSync,
        /// The connection is suspended by `spec.suspend`.
        Suspended,
        /// The operator is still working towards the desired state.
        Progressing,
        /// The spec breaks a rule the API server could not check.
        InvalidSpec,
        /// The credentials Secret or one of its keys is missing.
        CredentialsMissing,
        /// A credentials value is empty or has stray whitespace or a newline.
        CredentialsMalformed,
        /// The token or webhook Secret the connection would write exists but is not labelled as
        /// the connection's: the operator leaves it untouched.
        SecretNotOwned,
        /// No refresh token yet: consent has not been given.
        ConsentRequired,
        /// The person asked to consent clicked Deny.
        ConsentDenied,
        /// The instance refused the client id/secret or the refresh token.
        TokenRejected,
        /// The credentials changed since the last good refresh and the instance refuses them.
        CredentialsChanged,
        /// The refresh token is past its lifespan.
        RefreshTokenExpired,
        /// The refresh token expires soon: consent must be renewed.
        RefreshTokenExpiring,
        /// The token is good.
        TokenValid,
        /// The instance could not be reached (DNS, TCP, TLS, timeout, 5xx).
        Unreachable,
        /// The instance is a hibernating developer instance.
        InstanceHibernating,
        /// The instance answered 429.
        RateLimited,
        /// The identity is known and has the roles it needs.
        IdentityResolved,
        /// The OAuth user lacks a role or a right the operator needs.
        InsufficientPrivileges,
        /// The OAuth user lacks the roles that writing the Business Rule or the callback property
        /// needs; found before any write.
        MissingProvisioningPrivileges,
        /// The OAuth application's tokens are restricted (REST API Auth Scope) to APIs that do not
        /// include one the operator calls.
        TokenScopeRestricted,
        /// Consent was given by another user than `spec.expectedUserName`.
        IdentityMismatch,
        /// The rule and the property are as desired.
        Provisioned,
        /// Drift on the instance was found and repaired.
        DriftRepaired,
        /// The legacy incident rule was removed.
        LegacyRuleRemoved,
        /// The callback property belongs to another live connection.
        InstanceClaimedElsewhere,
        /// Provisioning failed for a reason other than rights.
        ProvisioningFailed,
        /// The account holds `email_api_send`.
        EmailApiSendGranted,
        /// `notifications.emailViaPsa` is set but the account lacks `email_api_send`.
        MissingEmailApiSendRole,
    }
}

impl Reason {
    /// What to do about it, appended to the condition's message. Empty for reasons that need
    /// nothing from a person.
    pub fn remedy(self) -> &'static str {
        match self {
            Reason::ReadyToSync
            | Reason::Progressing
            | Reason::TokenValid
            | Reason::IdentityResolved
            | Reason::Provisioned
            | Reason::DriftRepaired
            | Reason::LegacyRuleRemoved
            | Reason::EmailApiSendGranted => "",
            Reason::Suspended => "Set spec.suspend to false to resume.",
            Reason::InvalidSpec => "Correct the field named above and apply the connection again.",
            Reason::CredentialsMissing => {
                "Create the Secret named in spec.credentialsSecretRef in the connection's namespace with the keys clientId and clientSecret from the instance's Application Registry (System OAuth > Application Registry)."
            }
            Reason::CredentialsMalformed => {
                "Write the value again without surrounding whitespace or a trailing newline (use `kubectl create secret generic --from-literal`, or `echo -n` when encoding)."
            }
            Reason::SecretNotOwned => {
                "The operator writes and deletes only Secrets it labelled as this connection's, and left the one named above untouched. If something else uses it, point spec.tokenSecretRef at a free name (for the token Secret) or move that Secret away (the webhook Secret's name, <connection>-webhook, is fixed); if nothing does, delete it and the operator writes its own. If it truly holds this connection's token, label it app.kubernetes.io/managed-by=servicenow-operator and neoagent.io/connection-uid=<the connection's metadata.uid>."
            }
            Reason::ConsentRequired => {
                "Open status.consentUrl in a browser, sign in to the instance as the integration's service account (not as yourself) and click Allow."
            }
            Reason::ConsentDenied => {
                "Consent was denied. Open status.consentUrl again, sign in as the service account and click Allow."
            }
            Reason::TokenRejected => {
                "The instance rejected the client id/secret or the refresh token. Check that clientId and clientSecret match the Application Registry entry and that it is active; if they do, the refresh token was revoked or expired: annotate the connection with neoagent.io/reconsent=true and consent again."
            }
            Reason::CredentialsChanged => {
                "The credentials Secret changed since the last good refresh and the instance rejects the new values. Copy clientId and clientSecret again from the Application Registry entry; if the application was recreated, consent again (annotate with neoagent.io/reconsent=true)."
            }
            Reason::RefreshTokenExpired => {
                "The refresh token is past its lifespan. Annotate the connection with neoagent.io/reconsent=true and consent again; raise the Refresh Token Lifespan of the Application Registry entry to avoid this."
            }
            Reason::RefreshTokenExpiring => {
                "Renew consent before then: annotate the connection with neoagent.io/reconsent=true and open status.consentUrl."
            }
            Reason::Unreachable => {
                "Check that spec.instanceUrl is right, that the instance is awake (developer instances hibernate) and that this cluster can reach it (egress, proxy, CA bundle). The operator keeps retrying."
            }
            Reason::InstanceHibernating => {
                "The instance is hibernating: developer instances sleep when idle. Sign in to the developer site (developer.servicenow.com) and wake it; the operator looks again every few minutes and carries on by itself."
            }
            Reason::RateLimited => {
                "The instance's inbound REST rate limit was hit; the operator waits for Retry-After. Raise the rate limit rule for the service account if this persists."
            }
            Reason::InsufficientPrivileges => {
                "Grant the missing role or rights to the service account on the instance (User Administration > Users > the account > Roles), then annotate the connection with neoagent.io/reconcile-requested-at=<now> or wait for the next resync."
            }
            Reason::MissingProvisioningPrivileges => {
                "Grant the service account what provisioning needs (README, Service account privileges): least privilege is business_rule_admin, snc_required_script_writer_permission (group Conditional Script Writer, Zurich and later) and x_neoagent_integration with ACLs opening sys_properties named x_neoagent.* to it (examples/servicenow-privileges.md); or admin plus snc_required_script_writer_permission. Then annotate the connection with neoagent.io/reconcile-requested-at=<now> or wait for the next resync."
            }
            Reason::TokenScopeRestricted => {
                "The OAuth application's Auth Scopes do not cover an API the operator calls (the Table API and /api/now/ui/user/current_user). In System OAuth > Application Registry, open the entry and add the auth scope useraccount (or the scopes those APIs require) to it; scopes are read when a token is used, so no new consent is needed: annotate the connection with neoagent.io/reconcile-requested-at=<now>."
            }
            Reason::IdentityMismatch => {
                "Consent must be given signed in as the service account named in spec.expectedUserName. Sign out of the instance, annotate the connection with neoagent.io/reconsent=true and consent again as that account."
            }
            Reason::InstanceClaimedElsewhere => {
                "Another connection owns this instance's webhook. Delete that connection, or set spec.webhook.takeOver to true if it is gone for good."
            }
            Reason::ProvisioningFailed => "See the message; the operator retries with backoff.",
            Reason::MissingEmailApiSendRole => {
                "Grant the email_api_send role to the service account, or set spec.notifications.emailViaPsa to false."
            }
        }
    }
}
