//! Phase 2, decide: pure. From the connection and what `gather` found, the writes to make (the
//! [`Plan`]) and the status they lead to; after `act`, [`conclude`] turns the writes' outcome into
//! the final status, its Events and when to look again. No I/O and no `async`: every condition
//! reason the operator reports is decided here (see ARCHITECTURE.md for which function decides
//! which), and `tests.rs` covers each one without an instance or an API server.

mod gathered;
mod stop;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;

pub use gathered::{Access, CredentialsProblem, Gathered, InstanceRecords, Refreshed};
pub use stop::{Retry, Stop, classify};

use super::{
    events::{self, Transition},
    status::{self, Progress, Truth, Verdict, remove_condition},
    tokens::REFRESH_AHEAD,
};
use crate::{
    api::{
        CONSENT_RESULT, Capabilities, ConditionType, ConsentSession, ConsentTicket, Identity, RECONCILE_REQUESTED_AT,
        RECONNECT, RECONSENT, ServiceNowConnection, ServiceNowConnectionSpec, ServiceNowConnectionStatus, TokenStatus,
        WebhookStatus, conditions::Reason, duration, paths, request::recorded,
    },
    provision::{self, Desired, Step},
    secrets::{CredentialsError, OwnedSecret, StoredToken},
    servicenow::{self, ErrorKind, InstanceUrl, User},
};

/// How long before the refresh token's expiry the connection warns (`RefreshTokenExpiring`).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// The role every agent identity needs.
pub const ITIL: &str = "itil";
/// The role the Email API needs.
pub const EMAIL_API_SEND: &str = "email_api_send";
/// The role that may write everything (and contains `business_rule_admin`).
pub const ADMIN: &str = "admin";
/// The granular role that may write Business Rules (`sys_script`).
pub const BUSINESS_RULE_ADMIN: &str = "business_rule_admin";
/// The custom role the least-privilege setup opens the `x_neoagent.*` System Properties to (no
/// base role but `admin` may write a property, servicenow-api.md §7).
pub const INTEGRATION_ROLE: &str = "x_neoagent_integration";
/// Every role the identity check asks the instance about (by name, in one query).
pub const CHECKED_ROLES: [&str; 5] = [ITIL, EMAIL_API_SEND, ADMIN, BUSINESS_RULE_ADMIN, INTEGRATION_ROLE];
/// The resync period when `spec.resyncInterval` cannot be read (the reconcile stops on it anyway).
const DEFAULT_RESYNC: Duration = Duration::from_secs(600);

/// One write a reconcile makes, in the order of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Forget the access token held in memory (re-consent, or a token the instance refused).
    ForgetAccessToken,
    /// Revoke the stored refresh token at the instance (re-consent replaces it), best effort.
    RevokeStoredToken(SecretToken),
    /// Delete the token Secret (re-consent).
    ForgetStoredToken,
    /// Store the refresh token the instance renewed.
    StoreRefreshToken(SecretToken),
    /// Write the instance's webhook records (`desired` of the [`Plan`]).
    Instance(Step),
}

/// A refresh token to store, compared by its fingerprint in tests (never printed).
#[derive(Clone, Debug)]
pub struct SecretToken(pub StoredToken);

impl PartialEq for SecretToken {
    fn eq(&self, other: &Self) -> bool {
        self.0.refresh_token == other.0.refresh_token && self.0.expires_at == other.0.expires_at
    }
}

impl Eq for SecretToken {}

/// The writes of one reconcile and what they lead to.
#[derive(Debug)]
pub struct Plan {
    /// The writes, in order (empty at steady state).
    pub acts: Vec<Act>,
    /// The desired webhook records, when the instance is written.
    pub desired: Option<Desired>,
    /// The status should every write succeed (conditions not yet summarised).
    pub status: ServiceNowConnectionStatus,
    /// The conditions that hold, in order.
    pub verdicts: Vec<Verdict>,
    /// How the reconcile ends should every write succeed: ready, or stopped with a reason.
    pub end: Result<(), Stop>,
    /// How soon something is due (a token refresh, an expiry warning), if sooner than the resync.
    pub due: Option<Duration>,
    /// Events beyond condition transitions (an identity change).
    pub notes: Vec<Transition>,
}

impl Plan {
    fn holds(&mut self, verdict: Verdict) {
        self.verdicts.push(verdict);
    }

    fn due_in(&mut self, delay: Duration) {
        self.due = Some(self.due.map_or(delay, |due| due.min(delay)));
    }
}

/// What `act` reports: the sys_ids of the records it created, and the instance's refusal that
/// stopped the writes, if one did (the writes before it were done, those after it not tried).
#[derive(Debug, Default)]
pub struct Outcome {
    /// The rule created, if one was.
    pub created_rule: Option<String>,
    /// The property created, if one was.
    pub created_property: Option<String>,
    /// The write the instance refused or failed.
    pub failed: Option<servicenow::Error>,
}

/// The end of a reconcile: the status to write (when it differs from the stored one), the Events
/// and when to look again.
#[derive(Debug)]
pub struct Conclusion {
    /// The new status.
    pub status: ServiceNowConnectionStatus,
    /// The Events: condition transitions and notes.
    pub events: Vec<Transition>,
    /// When to look again.
    pub next: Next,
}

/// When to look again, before jitter and backoff (which belong to the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Ready: at the resync period, or sooner when something is due.
    Resync {
        /// The resync period.
        every: Duration,
        /// Something due sooner.
        due: Option<Duration>,
    },
    /// Stopped: as the stop says.
    Stopped {
        /// When.
        retry: Retry,
        /// The resync period (for [`Retry::Resync`]).
        every: Duration,
    },
}

/// Whether the stored status says the OAuth user and its roles passed: the next drift check
/// may read the roles and the webhook records together (one Batch API call). Until they pass, the
/// roles are read alone first, so an account without the rights to provision never reads the
/// records it may not write.
pub fn identity_resolved(status: &ServiceNowConnectionStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::IdentityResolved.as_str() && c.status == "True")
}

/// The `neoagent.io/reconnect` request not handled yet, if any.
pub fn reconnect_request<'a>(
    connection: &'a ServiceNowConnection,
    status: &ServiceNowConnectionStatus,
) -> Option<&'a String> {
    connection
        .annotations()
        .get(RECONNECT)
        .filter(|request| status.last_handled_reconnect_at.as_deref() != Some(recorded(request).as_str()))
}

/// The `neoagent.io/reconsent` request not handled yet, if any.
pub fn reconsent_request<'a>(
    connection: &'a ServiceNowConnection,
    status: &ServiceNowConnectionStatus,
) -> Option<&'a String> {
    connection
        .annotations()
        .get(RECONSENT)
        .filter(|request| status.last_handled_reconsent_at.as_deref() != Some(recorded(request).as_str()))
}

/// The spec checks the API server could not make: the instance URL (parsed, for `gather`) and the
/// resync interval. A suspended connection stops here too: nothing is read.
pub fn validate(spec: &ServiceNowConnectionSpec) -> Result<InstanceUrl, Stop> {
    if spec.suspend {
        return Err(Stop {
            verdict: Verdict::new(
                ConditionType::Ready,
                Truth::False,
                Reason::Suspended,
                "spec.suspend is true: no calls to ServiceNow.",
            ),
            progress: Progress::Suspended,
            retry: Retry::OnChange,
        });
    }
    let instance = InstanceUrl::parse(&spec.instance_url).map_err(|error| {
        Stop::terminal(
            ConditionType::Ready,
            Reason::InvalidSpec,
            format!("spec.instanceUrl: {error}."),
        )
    })?;
    duration::parse(&spec.resync_interval).map_err(|error| {
        Stop::terminal(
            ConditionType::Ready,
            Reason::InvalidSpec,
            format!("spec.resyncInterval: {error}."),
        )
    })?;
    Ok(instance)
}

/// The identity checks that stop provisioning: `expectedUserName`, the `itil` role, and
/// `email_api_send` when `notifications.emailViaPsa` asks for it. `gather` reads the webhook
/// records only when they pass.
pub fn identity(spec: &ServiceNowConnectionSpec, user: &User, roles: &[String]) -> Result<(), Stop> {
    identity_problem(spec, user, roles).map_or(Ok(()), Err)?;
    email_problem(spec, user, roles).map_or(Ok(()), Err)
}

fn identity_problem(spec: &ServiceNowConnectionSpec, user: &User, roles: &[String]) -> Option<Stop> {
    if let Some(expected) = spec
        .expected_user_name
        .as_deref()
        .filter(|expected| *expected != user.user_name)
    {
        return Some(Stop::terminal(
            ConditionType::IdentityResolved,
            Reason::IdentityMismatch,
            format!(
                "Consent was given as {:?}, but spec.expectedUserName is {expected:?}; nothing is provisioned under the wrong identity.",
                user.user_name
            ),
        ));
    }
    let holds = |role: &str| roles.iter().any(|held| held == role);
    if !holds(ITIL) {
        return Some(Stop::terminal(
            ConditionType::IdentityResolved,
            Reason::InsufficientPrivileges,
            format!(
                "The service account {:?} lacks the itil role, which the agent needs to work on tasks.",
                user.user_name
            ),
        ));
    }
    let missing: Vec<&str> = [
        (BUSINESS_RULE_ADMIN, "business_rule_admin (or admin), to write the Business Rule"),
        (
            INTEGRATION_ROLE,
            "x_neoagent_integration with ACLs on the x_neoagent.* System Properties (or admin), to write the callback property",
        ),
    ]
    .into_iter()
    .filter(|(role, _)| !holds(ADMIN) && !holds(role))
    .map(|(_, what)| what)
    .collect();
    (!missing.is_empty()).then(|| {
        Stop::terminal(
            ConditionType::IdentityResolved,
            Reason::MissingProvisioningPrivileges,
            format!(
                "The service account {:?} lacks {}; nothing was written to the instance.",
                user.user_name,
                missing.join(" and ")
            ),
        )
    })
}

fn email_problem(spec: &ServiceNowConnectionSpec, user: &User, roles: &[String]) -> Option<Stop> {
    (spec.notifications.email_via_psa && !roles.iter().any(|role| role == EMAIL_API_SEND)).then(|| {
        Stop::terminal(
            ConditionType::EmailViaPsa,
            Reason::MissingEmailApiSendRole,
            format!(
                "spec.notifications.emailViaPsa is true but {:?} lacks the email_api_send role.",
                user.user_name
            ),
        )
    })
}

/// Decides the writes and the status for `connection`, from what was `gathered` at `now`.
/// `public_url` is the operator's (consent and callback URLs).
pub fn decide(connection: &ServiceNowConnection, gathered: &Gathered, public_url: &url::Url, now: Timestamp) -> Plan {
    let mut plan = Plan {
        acts: Vec::new(),
        desired: None,
        status: connection.status.clone().unwrap_or_default(),
        verdicts: Vec::new(),
        end: Ok(()),
        due: None,
        notes: Vec::new(),
    };
    plan.end = steps(connection, gathered, public_url, now, &mut plan);
    plan
}

/// A layer `gather` did not read although the one before it allowed it: never expected, reported
/// rather than trusted.
fn not_gathered(what: &str) -> Stop {
    Stop {
        verdict: Verdict::new(
            ConditionType::Ready,
            Truth::Unknown,
            Reason::Progressing,
            format!("The {what} was not read yet."),
        ),
        progress: Progress::Working,
        retry: Retry::Backoff,
    }
}

fn layer<'a, T>(layer: &'a Option<T>, what: &str) -> Result<&'a T, Stop> {
    layer.as_ref().ok_or_else(|| not_gathered(what))
}

fn steps(
    connection: &ServiceNowConnection,
    gathered: &Gathered,
    public_url: &url::Url,
    now: Timestamp,
    plan: &mut Plan,
) -> Result<(), Stop> {
    let spec = &connection.spec;
    validate(spec)?;
    let credentials = layer(&gathered.credentials, "credentials Secret")?
        .as_ref()
        .map_err(credentials_stop)?;
    let fingerprint = credentials.fingerprint();
    not_owned(gathered, OwnedSecret::Token, plan)?;

    let namespace = connection.namespace().unwrap_or_default();
    let name = connection.name_any();
    let reconsent = reconsent_request(connection, &plan.status).cloned();
    let stored = match reconsent {
        Some(request) => {
            if let Some(Some(replaced)) = &gathered.stored {
                plan.acts.push(Act::RevokeStoredToken(SecretToken(replaced.clone())));
            }
            plan.acts.push(Act::ForgetStoredToken);
            plan.acts.push(Act::ForgetAccessToken);
            plan.status.last_handled_reconsent_at = Some(recorded(&request));
            None
        }
        None => layer(&gathered.stored, "token Secret")?.as_ref(),
    };
    let Some(stored) = stored else {
        let expires_at = consent_ticket(connection, gathered, public_url, now, plan);
        plan.status.token = None;
        let denied = connection
            .annotations()
            .get(CONSENT_RESULT)
            .is_some_and(|result| result == "denied");
        let (reason, message) = if denied {
            (Reason::ConsentDenied, "Consent was denied on the instance.".to_owned())
        } else {
            (
                Reason::ConsentRequired,
                format!(
                    "No refresh token in Secret {:?} yet.",
                    crate::secrets::token_secret_name(connection)
                ),
            )
        };
        let retry = match expires_at {
            // A new ticket once this one expires.
            Some(at) => Retry::ChangeOrAfter(Duration::try_from(at.duration_since(now)).unwrap_or_default()),
            None => Retry::OnChange,
        };
        return Err(Stop {
            verdict: Verdict::new(ConditionType::Authorized, Truth::False, reason, message),
            progress: Progress::AwaitingConsent,
            retry,
        });
    };
    plan.status.consent_url = None;
    plan.status.consent_ticket = None;

    let access = layer(&gathered.access, "access token")?
        .as_ref()
        .map_err(|error| token_failure(&plan.status, &fingerprint, stored, now, error))?;
    authorized(plan, &fingerprint, stored, access, now);

    let user = layer(&gathered.user, "OAuth user")?
        .as_ref()
        .map_err(|error| failure(plan, ConditionType::IdentityResolved, error))?;
    let roles = layer(&gathered.roles, "user's roles")?
        .as_ref()
        .map_err(|error| failure(plan, ConditionType::IdentityResolved, error))?;
    identified(plan, spec, user, roles)?;

    not_owned(gathered, OwnedSecret::Webhook, plan)?;
    let token = layer(&gathered.webhook_token, "webhook token")?;
    let records = layer(&gathered.records, "webhook records")?
        .as_ref()
        .map_err(|error| failure(plan, ConditionType::WebhookProvisioned, error))?;
    let callback = paths::callback_url(public_url, &namespace, &name);
    let owner = provision::Owner {
        public_url: public_url.to_string(),
        connection: format!("{namespace}/{name}"),
    };
    if let Some(other) = provision::claimed_by_other(&records.properties, &owner, Some(token))
        && !spec.webhook.take_over
    {
        return Err(Stop::terminal(
            ConditionType::WebhookProvisioned,
            Reason::InstanceClaimedElsewhere,
            format!(
                "The callback property {} on this instance belongs to {other}.",
                provision::PROPERTY_NAME
            ),
        ));
    }
    provisioned(
        plan,
        records,
        provision::desired(&callback, token, &spec.webhook.task_types, &owner),
    );
    Ok(())
}

/// Stops on `gathered`'s Secret of `role` that is not the connection's: terminal (a person must
/// move or label it), before anything is written, reported on the condition the Secret serves.
/// A token Secret that is not the connection's takes the consent URL away: consent could not be
/// stored.
fn not_owned(gathered: &Gathered, role: OwnedSecret, plan: &mut Plan) -> Result<(), Stop> {
    let Some(problem) = gathered.not_owned.as_ref().filter(|problem| problem.role == role) else {
        return Ok(());
    };
    let (condition, which) = match role {
        OwnedSecret::Token => {
            plan.status.consent_url = None;
            plan.status.consent_ticket = None;
            (ConditionType::Authorized, "spec.tokenSecretRef")
        }
        OwnedSecret::Webhook => (ConditionType::WebhookProvisioned, "webhook signing key"),
    };
    Err(Stop::terminal(
        condition,
        Reason::SecretNotOwned,
        format!("{which}: {problem}."),
    ))
}

/// The consent ticket in the status while consent is needed: the stored one while it is usable
/// (unexpired, unused, under this public URL) — so the status does not change from one reconcile
/// to the next — or else the fresh one `gather` drew. Returns when the ticket in the status
/// expires (`None`: no ticket, none was drawn).
fn consent_ticket(
    connection: &ServiceNowConnection,
    gathered: &Gathered,
    public_url: &url::Url,
    now: Timestamp,
    plan: &mut Plan,
) -> Option<Timestamp> {
    let used = ConsentSession::of(connection.annotations()).map(|session| session.ticket);
    let usable = match (&plan.status.consent_ticket, &plan.status.consent_url) {
        (Some(ticket), Some(url)) => {
            ticket.expires_at.0 > now
                && paths::is_consent_url(public_url, url)
                && !used
                    .as_deref()
                    .is_some_and(|used| crate::ticket::same_hash(used, &ticket.hash))
        }
        _ => false,
    };
    if usable {
        return plan.status.consent_ticket.as_ref().map(|ticket| ticket.expires_at.0);
    }
    match &gathered.consent_ticket {
        Some(fresh) => {
            plan.status.consent_url = Some(paths::consent_url(public_url, &fresh.ticket));
            plan.status.consent_ticket = Some(ConsentTicket {
                hash: fresh.hash.clone(),
                expires_at: Time(fresh.expires_at),
            });
            Some(fresh.expires_at)
        }
        None => {
            plan.status.consent_url = None;
            plan.status.consent_ticket = None;
            None
        }
    }
}

fn credentials_stop(problem: &CredentialsProblem) -> Stop {
    let reason = match problem {
        CredentialsError::Malformed { .. } => Reason::CredentialsMalformed,
        CredentialsError::SecretMissing { .. }
        | CredentialsError::KeyMissing { .. }
        | CredentialsError::Kube { .. } => Reason::CredentialsMissing,
    };
    Stop {
        verdict: Verdict::new(
            ConditionType::Authorized,
            Truth::False,
            reason,
            format!("spec.credentialsSecretRef: {problem}."),
        ),
        progress: Progress::Stalled,
        retry: Retry::OnChange,
    }
}

/// `Authorized=True`: the token status, the refresh token to store if the instance renewed it,
/// and when the next refresh and the expiry warning are due.
fn authorized(plan: &mut Plan, fingerprint: &str, stored: &StoredToken, access: &Access, now: Timestamp) {
    if let Some(refreshed) = &access.refreshed {
        if refreshed.refresh_token != stored.refresh_token {
            plan.acts.push(Act::StoreRefreshToken(SecretToken(StoredToken {
                refresh_token: refreshed.refresh_token.clone(),
                expires_at: stored.expires_at,
            })));
        }
        let token = plan.status.token.get_or_insert_with(TokenStatus::default);
        token.access_token_expires_at = Some(Time(
            now + SignedDuration::try_from(access.lifetime).unwrap_or_default(),
        ));
        token.last_refresh_time = Some(Time(now));
    }
    plan.status.credentials_hash = Some(fingerprint.to_owned());
    plan.status
        .token
        .get_or_insert_with(TokenStatus::default)
        .refresh_token_expires_at = stored.expires_at.map(Time);
    plan.due_in(access.lifetime.saturating_sub(REFRESH_AHEAD));
    plan.holds(expiry_verdict(stored, now));
    if let Some(warn_at) = stored.expires_at.and_then(|at| at.checked_sub(EXPIRY_WARNING).ok())
        && let Ok(until) = Duration::try_from(warn_at.duration_since(now))
    {
        plan.due_in(until);
    }
}

/// `Authorized=True`, warning while the refresh token nears its end — and once past it, while the
/// access token obtained before still works (the next refresh fails as `RefreshTokenExpired`).
fn expiry_verdict(stored: &StoredToken, now: Timestamp) -> Verdict {
    let warn_within = SignedDuration::try_from(EXPIRY_WARNING).unwrap_or(SignedDuration::MAX);
    match stored.expires_at {
        Some(at) if at <= now => Verdict::new(
            ConditionType::Authorized,
            Truth::True,
            Reason::RefreshTokenExpiring,
            format!("The refresh token expired at {at}; the access token obtained before still works."),
        ),
        Some(at) if at.duration_since(now) < warn_within => Verdict::new(
            ConditionType::Authorized,
            Truth::True,
            Reason::RefreshTokenExpiring,
            format!("The refresh token expires at {at}."),
        ),
        _ => Verdict::new(
            ConditionType::Authorized,
            Truth::True,
            Reason::TokenValid,
            "The instance accepts the refresh token.",
        ),
    }
}

/// Tells apart the causes of a refused refresh, which ServiceNow all answers with the same 401:
/// credentials changed since the last good refresh, a refresh token past its lifespan, or else
/// the client id/secret or the refresh token rejected.
fn token_failure(
    status: &ServiceNowConnectionStatus,
    fingerprint: &str,
    stored: &StoredToken,
    now: Timestamp,
    error: &servicenow::Error,
) -> Stop {
    if !matches!(error.kind, ErrorKind::Unauthorized { .. }) {
        return classify(ConditionType::Authorized, Reason::TokenRejected, error);
    }
    let known = status.credentials_hash.as_deref();
    let (reason, message) = if known.is_some_and(|known| known != fingerprint) {
        (
            Reason::CredentialsChanged,
            "The instance refused the token refresh with the credentials now in the Secret (they changed since the last good refresh).".to_owned(),
        )
    } else if let Some(at) = stored.expires_at.filter(|at| *at <= now) {
        (
            Reason::RefreshTokenExpired,
            format!("The refresh token expired at {at}."),
        )
    } else {
        (
            Reason::TokenRejected,
            "The instance refused the token refresh (401 access_denied).".to_owned(),
        )
    };
    Stop::terminal(ConditionType::Authorized, reason, message)
}

/// A failed Table API call while checking `condition`: a 401 means the access token died early
/// (revoked), so it is forgotten and the next try refreshes; anything else is classified as usual.
fn failure(plan: &mut Plan, condition: ConditionType, error: &servicenow::Error) -> Stop {
    if matches!(error.kind, ErrorKind::Unauthorized { .. }) {
        plan.acts.push(Act::ForgetAccessToken);
        return classify(ConditionType::Authorized, Reason::TokenRejected, error);
    }
    let fallback = match condition {
        ConditionType::WebhookProvisioned => Reason::ProvisioningFailed,
        _ => Reason::InsufficientPrivileges,
    };
    classify(condition, fallback, error)
}

/// The identity into the status (an Event when it changed), then its checks.
fn identified(plan: &mut Plan, spec: &ServiceNowConnectionSpec, user: &User, roles: &[String]) -> Result<(), Stop> {
    if let Some(previous) = plan
        .status
        .identity
        .as_ref()
        .filter(|previous| previous.sys_id != user.sys_id)
    {
        plan.notes.push(Transition {
            warning: false,
            reason: "IdentityChanged".to_owned(),
            action: ConditionType::IdentityResolved.as_str().to_owned(),
            note: format!(
                "The connection now acts as {:?} ({}) instead of {:?} ({}).",
                user.user_name, user.sys_id, previous.user_name, previous.sys_id
            ),
        });
    }
    plan.status.identity = Some(Identity {
        sys_id: user.sys_id.clone(),
        user_name: user.user_name.clone(),
        display_name: (!user.display_name.is_empty()).then(|| user.display_name.clone()),
    });
    if let Some(stop) = identity_problem(spec, user, roles) {
        return Err(stop);
    }
    plan.holds(Verdict::new(
        ConditionType::IdentityResolved,
        Truth::True,
        Reason::IdentityResolved,
        format!("Acting as {:?} ({}).", user.user_name, user.sys_id),
    ));
    let email = roles.iter().any(|role| role == EMAIL_API_SEND);
    plan.status.capabilities = Some(Capabilities {
        email_via_psa: Some(email),
    });
    if !spec.notifications.email_via_psa {
        remove_condition(&mut plan.status.conditions, ConditionType::EmailViaPsa);
        return Ok(());
    }
    if let Some(stop) = email_problem(spec, user, roles) {
        return Err(stop);
    }
    plan.holds(Verdict::new(
        ConditionType::EmailViaPsa,
        Truth::True,
        Reason::EmailApiSendGranted,
        "The service account may send email through the Email API.",
    ));
    Ok(())
}

/// The writes that make the instance's records `desired`, the kept records into the status, and
/// the `WebhookProvisioned` verdict should the writes succeed.
fn provisioned(plan: &mut Plan, records: &InstanceRecords, desired: Desired) {
    let steps = provision::plan(&records.rules, &records.properties, &desired);
    plan.acts.extend(steps.iter().cloned().map(Act::Instance));
    plan.desired = Some(desired);
    let webhook = plan.status.webhook.get_or_insert_with(WebhookStatus::default);
    let first_time = webhook.business_rule_sys_id.is_none();
    webhook.business_rule_sys_id = provision::kept_rule(&records.rules).map(|rule| rule.sys_id.clone());
    webhook.callback_property_sys_id = provision::kept_property(&records.properties).map(|p| p.sys_id.clone());
    let already_true = plan
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::WebhookProvisioned.as_str() && c.status == "True");
    if steps.is_empty() && already_true {
        // Steady state: nothing written, and the condition (a past repair included) stays as it is.
        return;
    }
    let (reason, message) = if steps.iter().any(|step| matches!(step, Step::DeleteLegacyRule { .. })) {
        (
            Reason::LegacyRuleRemoved,
            format!(
                "Provisioned; removed the legacy rule {:?}.",
                provision::LEGACY_RULE_NAME
            ),
        )
    } else if !steps.is_empty() && !first_time {
        (
            Reason::DriftRepaired,
            format!("Repaired on the instance: {}.", provision::describe(&steps)),
        )
    } else {
        (
            Reason::Provisioned,
            format!(
                "Business Rule {:?} on task and property {} are in place.",
                provision::RULE_NAME,
                provision::PROPERTY_NAME
            ),
        )
    };
    plan.holds(Verdict::new(
        ConditionType::WebhookProvisioned,
        Truth::True,
        reason,
        message,
    ));
}

/// The final status, Events and next look of a reconcile whose `plan` met `outcome` at `now`.
pub fn conclude(connection: &ServiceNowConnection, plan: Plan, outcome: Outcome, now: Timestamp) -> Conclusion {
    let Plan {
        mut status,
        mut verdicts,
        mut end,
        due,
        notes,
        ..
    } = plan;
    if outcome.created_rule.is_some() || outcome.created_property.is_some() {
        let webhook = status.webhook.get_or_insert_with(WebhookStatus::default);
        if outcome.created_rule.is_some() {
            webhook.business_rule_sys_id = outcome.created_rule;
        }
        if outcome.created_property.is_some() {
            webhook.callback_property_sys_id = outcome.created_property;
        }
    }
    if let Some(error) = outcome.failed {
        verdicts.retain(|v| v.condition != ConditionType::WebhookProvisioned);
        end = Err(if matches!(error.kind, ErrorKind::Unauthorized { .. }) {
            classify(ConditionType::Authorized, Reason::TokenRejected, &error)
        } else {
            classify(ConditionType::WebhookProvisioned, Reason::ProvisioningFailed, &error)
        });
    }
    let generation = connection.metadata.generation;
    for verdict in &verdicts {
        status::set_condition(&mut status.conditions, verdict, generation, now);
    }
    let annotations = connection.annotations();
    let old = connection.status.clone().unwrap_or_default();
    status.last_handled_reconcile_at = annotations
        .get(RECONCILE_REQUESTED_AT)
        .map(|value| recorded(value))
        .or(old.last_handled_reconcile_at.clone());
    let every = duration::parse(&connection.spec.resync_interval).unwrap_or(DEFAULT_RESYNC);
    let next = match end {
        Ok(()) => {
            status.last_handled_reconnect_at = annotations.get(RECONNECT).map(|value| recorded(value));
            status::summarise(&mut status, Progress::Ready, None, generation, now);
            Next::Resync { every, due }
        }
        Err(stop) => {
            status::set_condition(&mut status.conditions, &stop.verdict, generation, now);
            status::summarise(&mut status, stop.progress, Some(&stop.verdict), generation, now);
            Next::Stopped {
                retry: stop.retry,
                every,
            }
        }
    };
    let mut events = events::transitions(&old.conditions, &status.conditions);
    events.extend(notes);
    Conclusion { status, events, next }
}
