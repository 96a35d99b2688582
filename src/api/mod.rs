//! The Kubernetes API of the operator: the `ServiceNowConnection` custom resource
//! (`neoagent.io/v1alpha1`). No I/O here, and nothing else of the crate is imported: the doc
//! comments below are what `kubectl explain` prints.

pub mod conditions;
pub mod duration;
mod key;
pub mod paths;
pub mod request;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use conditions::{ConditionType, SyncState};
pub use key::{key, split_key};

/// The API group of the operator's resources.
pub const GROUP: &str = "neoagent.io";
/// Annotation: any new value asks for a reconcile now; echoed in `status.lastHandledReconcileAt`.
pub const RECONCILE_REQUESTED_AT: &str = "neoagent.io/reconcile-requested-at";
/// Annotation: any new value re-provisions from scratch; echoed in `status.lastHandledReconnectAt`.
pub const RECONNECT: &str = "neoagent.io/reconnect";
/// Annotation: any new value forgets the refresh token and asks for consent again; echoed in
/// `status.lastHandledReconsentAt`.
pub const RECONSENT: &str = "neoagent.io/reconsent";
/// Annotation: any new value replaces the webhook signing key; the replaced key is still accepted
/// for 15 minutes. The value answered is kept in the webhook Secret (`rotationRequest`).
pub const ROTATE_WEBHOOK_KEY: &str = "neoagent.io/rotate-webhook-key";
/// Annotation written by the consent callback: `denied` when the person clicked Deny (removed
/// once consent succeeds).
pub const CONSENT_RESULT: &str = "neoagent.io/consent-result";
/// Annotation of older versions (the nonces of used consent states); the consent endpoints remove
/// it when they write.
pub const CONSENT_NONCES: &str = "neoagent.io/consent-nonces";
/// Annotation written by the consent endpoints, only for a request that holds a valid, unused
/// consent ticket (or the state minted from one): the consent under way ([`ConsentSession`], JSON).
/// It makes a ticket single-use and a state single-use, across replicas.
pub const CONSENT_SESSION: &str = "neoagent.io/consent-session";

/// The consent under way, in the annotation [`CONSENT_SESSION`]: which ticket started it and the
/// nonce of the state it minted. Hashes and nonces only, never the ticket itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsentSession {
    /// The hash of the ticket `/start` accepted (the ticket is used from then on).
    pub ticket: String,
    /// The nonce of the state `/start` minted (the callback accepts only that state).
    pub state: String,
    /// The callback accepted that state (it is used from then on).
    #[serde(default)]
    pub done: bool,
}

impl ConsentSession {
    /// The session recorded on an object with `annotations`, if any (an unreadable one is none).
    pub fn of(annotations: &std::collections::BTreeMap<String, String>) -> Option<ConsentSession> {
        annotations
            .get(CONSENT_SESSION)
            .and_then(|json| serde_json::from_str(json).ok())
    }
}

/// A connection from this cluster to one ServiceNow instance: the OAuth application to use, the
/// service account whose consent it runs under, and the webhook Business Rule the operator keeps
/// on the instance. The operator runs the consent, keeps the tokens fresh, provisions the webhook
/// and reports the connection's health in `status`.
// kube's derive takes one `printcolumn` / `validation` attribute per column / rule.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "neoagent.io",
    version = "v1alpha1",
    kind = "ServiceNowConnection",
    plural = "servicenowconnections",
    shortname = "snc",
    category = "neoagent",
    namespaced,
    status = "ServiceNowConnectionStatus",
    derive = "PartialEq",
    doc = "A connection to one ServiceNow instance, kept healthy by the servicenow-operator.",
    printcolumn(
        name = "Instance",
        type_ = "string",
        json_path = ".spec.instanceUrl",
        description = "The ServiceNow instance"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.syncState",
        description = "Where the connection is in its life cycle"
    ),
    printcolumn(
        name = "Identity",
        type_ = "string",
        json_path = ".status.identity.userName",
        description = "The service account the connection acts as"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the connection is ready"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNowConnectionSpec {
    /// The instance's address: `https://<instance>.service-now.com` or
    /// `https://<instance>.servicenowservices.com`, the bare host only — no path, trailing slash,
    /// query, fragment, port or user info, lower case, no vanity or IP hosts.
    #[x_kube(validation = url_rule(UrlRule::HttpsScheme))]
    #[x_kube(validation = url_rule(UrlRule::PrintableAscii))]
    #[x_kube(validation = url_rule(UrlRule::NoUserInfo))]
    #[x_kube(validation = url_rule(UrlRule::NoPort))]
    #[x_kube(validation = url_rule(UrlRule::NoPath))]
    #[x_kube(validation = url_rule(UrlRule::NoQuery))]
    #[x_kube(validation = url_rule(UrlRule::NoFragment))]
    #[x_kube(validation = url_rule(UrlRule::HostLength))]
    #[x_kube(validation = url_rule(UrlRule::LowerCaseHost))]
    #[x_kube(validation = url_rule(UrlRule::NoPunycode))]
    #[x_kube(validation = url_rule(UrlRule::AllowedDomain))]
    #[schemars(length(max = 300))]
    pub instance_url: String,

    /// The Secret, in the connection's own namespace, holding the OAuth application's
    /// credentials from the instance's Application Registry under the keys `clientId` and
    /// `clientSecret`.
    pub credentials_secret_ref: LocalSecretReference,

    /// The Secret, in the connection's own namespace, where the operator keeps the refresh token
    /// obtained through consent. Defaults to `<connection name>-token`, created and owned by the
    /// connection. Name a Secret that does not exist yet: the operator writes only Secrets it
    /// labelled as this connection's, and reports an existing one without those labels as
    /// `SecretNotOwned`, leaving it untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<LocalSecretReference>,

    /// The webhook: the Business Rule on the instance POSTs every task event to the operator's
    /// callback URL, and the operator forwards it.
    #[serde(default)]
    pub webhook: WebhookSpec,

    /// The user name of the service account consent must be given as (for example `neo.agent`).
    /// When set, the operator refuses any other identity and provisions nothing under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub expected_user_name: Option<String>,

    /// Optional features that need extra roles on the instance.
    #[serde(default)]
    pub notifications: NotificationsSpec,

    /// What happens on the instance when this connection is deleted. `Delete` (default) removes
    /// the Business Rule and the callback property and revokes the refresh token; `Orphan` leaves
    /// them in place.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `true` stops every call to ServiceNow for this connection; the status says `SUSPENDED`.
    #[serde(default)]
    pub suspend: bool,

    /// How often the operator checks the Business Rule and the property for drift, as a duration
    /// such as `10m`, `1h` or `90s` (at least 30s). Default `10m`.
    #[serde(default = "default_resync_interval")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('30s')").message("resyncInterval must be a duration of at least 30s such as 90s, 10m or 1h"))]
    #[schemars(length(max = 20))]
    pub resync_interval: String,
}

use crate::servicenow::instance_url::UrlRule;
use kube::core::Rule;

fn url_rule(rule: UrlRule) -> Rule {
    Rule::new(rule.cel()).message(kube::core::Message::Message(rule.message()))
}

fn default_resync_interval() -> String {
    "10m".to_owned()
}

/// A reference to a Secret in the connection's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct LocalSecretReference {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Settings of the webhook that carries task events from the instance to the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Where the operator forwards accepted events, as CloudEvents in HTTP binary mode. Without
    /// it events are counted in `status.webhook` and not forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("webhook.sinkUrl must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    pub sink_url: Option<String>,

    /// `true` lets this connection take over the instance's callback property when another
    /// connection (in this cluster or another) already owns it. Leave `false` unless the other
    /// owner is gone for good.
    #[serde(default)]
    pub take_over: bool,

    /// The task classes (tables under `task`) whose inserts and updates are posted. The rule runs
    /// on `task`, which fires for every class an instance has (approvals, interactions, chat queue
    /// entries, planned tasks…); this list becomes its filter condition
    /// (`sys_class_name=incident^ORsys_class_name=problem…`). Changing it updates the rule in
    /// place; no new consent is needed. Default: incident, problem, change_request, sc_request,
    /// sc_req_item, sc_task.
    #[serde(default = "default_task_types")]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^[a-z][a-z0-9_]*$'))").message("webhook.taskTypes must be table names: lower-case letters, digits and underscores, starting with a letter (e.g. incident, sc_task)"))]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 80)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub task_types: Vec<String>,
}

impl Default for WebhookSpec {
    fn default() -> Self {
        WebhookSpec {
            sink_url: None,
            take_over: false,
            task_types: default_task_types(),
        }
    }
}

/// The ticket types the agent works on.
pub const DEFAULT_TASK_TYPES: [&str; 6] = [
    "incident",
    "problem",
    "change_request",
    "sc_request",
    "sc_req_item",
    "sc_task",
];

fn default_task_types() -> Vec<String> {
    DEFAULT_TASK_TYPES.map(str::to_owned).to_vec()
}

/// Optional features that need extra roles on the instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsSpec {
    /// `true` requires the service account to hold the `email_api_send` role, so the agent can
    /// send email through the instance's Email API.
    #[serde(default)]
    pub email_via_psa: bool,
}

/// What happens on the instance when the connection is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove the Business Rule and the callback property, and revoke the refresh token.
    #[default]
    Delete,
    /// Leave the Business Rule, the property and the token in place.
    Orphan,
}

/// The observed state of a connection. Follows kstatus: `observedGeneration`, a `Ready`
/// summary condition, and `Reconciling` / `Stalled` only while true.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNowConnectionStatus {
    /// Where the connection is in its life cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<SyncState>,

    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The connection's conditions: `Ready` (the summary), `Authorized`, `IdentityResolved`,
    /// `WebhookProvisioned`, `EmailViaPsa`, and `Reconciling` / `Stalled` while true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// While the connection waits for consent: the page to open, signed in to the instance as
    /// the service account, to grant the operator access. It carries a single-use ticket that
    /// expires after an hour (a new one then appears here): only who can read this status can
    /// start a consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_url: Option<String>,

    /// The ticket in `consentUrl`, as the operator checks it: its SHA-256 and its expiry (the
    /// ticket itself is only in `consentUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_ticket: Option<ConsentTicket>,

    /// The ServiceNow user the connection acts as: the one who gave consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,

    /// Lifetimes of the tokens the operator holds (never the tokens themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenStatus>,

    /// A hash of the client id and secret last verified against the instance, so a rotation in
    /// the credentials Secret is noticed and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_hash: Option<String>,

    /// The webhook as provisioned on the instance, and the events received through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,

    /// What the service account may do beyond the basics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,

    /// The value of the `neoagent.io/reconcile-requested-at` annotation last acted on (as in the
    /// other `lastHandled*At`: a value over 253 bytes is recorded as `sha256:` + its base64url
    /// digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// The value of the `neoagent.io/reconnect` annotation last acted on (a reconnect drops the
    /// cached access token and re-checks identity, rule and property from scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconnect_at: Option<String>,

    /// The value of the `neoagent.io/reconsent` annotation last acted on (a re-consent forgets
    /// the refresh token and waits for consent again, e.g. to change the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconsent_at: Option<String>,
}

/// The consent ticket in `status.consentUrl`, as the operator checks it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentTicket {
    /// base64url(SHA-256(ticket)).
    pub hash: String,
    /// When the ticket stops being accepted.
    pub expires_at: Time,
}

/// The ServiceNow user a connection acts as.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The user's `sys_id`; notes, comments, state changes and `assigned_to` point at it.
    pub sys_id: String,
    /// The user's `user_name`, e.g. `neo.agent`.
    pub user_name: String,
    /// The user's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// Token lifetimes (the tokens themselves stay in Secrets and memory).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// When the current access token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<Time>,
    /// When the refresh token expires; consent must be renewed before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<Time>,
    /// When the operator last obtained an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
}

/// The webhook as provisioned on the instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// `sys_id` of the Business Rule `Neo Agent — Task Webhook` on `task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_rule_sys_id: Option<String>,
    /// `sys_id` of the System Property `x_neoagent.callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_property_sys_id: Option<String>,
    /// When the last event arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<Time>,
    /// How many events the operator has accepted for this connection.
    #[serde(default)]
    pub events_received: i64,
}

/// What the service account may do beyond the basics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Whether the account holds `email_api_send` (checked when `notifications.emailViaPsa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_via_psa: Option<bool>,
}
