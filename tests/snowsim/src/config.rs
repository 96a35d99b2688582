//! What a server starts with: its instances, their users, OAuth applications and switches. The
//! binary reads the same structure from a JSON file (`--config`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::acl::AclRule;
use crate::faults::RateLimitRule;

/// The whole server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The instances served, chosen by the `Host` header. The first is the default one.
    pub instances: Vec<InstanceConfig>,
    /// Extra PEM certificates trusted for Business Rule outbound calls (besides the webpki roots
    /// and the simulator's own CA).
    pub outbound_extra_ca_pem: Option<String>,
}

impl Default for Config {
    /// One instance, `acme.service-now.com`, seeded as described on [`InstanceConfig::new`].
    fn default() -> Self {
        Config {
            instances: vec![InstanceConfig::new("acme.service-now.com")],
            outbound_extra_ca_pem: None,
        }
    }
}

/// One instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// Host name, e.g. `acme.service-now.com`.
    pub host: String,
    /// Users to seed (besides nothing: list the admin too).
    pub users: Vec<UserSpec>,
    /// OAuth application registry records.
    pub oauth_apps: Vec<OAuthAppSpec>,
    /// System properties set on top of the seeded ones.
    pub properties: BTreeMap<String, String>,
    /// REST API Auth Scope policies: a resource path prefix (e.g. `/api/now/ui/`) → the auth
    /// scope an OAuth token's entity needs to call it (or `useraccount`); none by default.
    pub api_auth_scopes: BTreeMap<String, String>,
    /// Rate-limit rules.
    pub rate_limits: Vec<RateLimitRule>,
    /// Access rules replacing the seeded ones for the same (table, operation).
    pub acl: Vec<AclRule>,
    /// Switches for behaviours servicenow-api.md marks UNCERTAIN.
    pub behaviour: Behaviour,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig::new("acme.service-now.com")
    }
}

/// The default OAuth application's redirect URL (the operator's callback path on localhost).
pub const DEFAULT_REDIRECT_URL: &str = "http://127.0.0.1:8080/oauth/servicenow/callback";

impl InstanceConfig {
    /// An instance with the `admin` user (password `admin`, out-of-box sys_id
    /// `6816f79cc0a8016401c5a33be04be441`), the service account `neo.agent` (password `neo.agent`,
    /// role `itil` only: what a fresh account gets; granting it what provisioning needs is the
    /// setup's job, see [`InstanceConfig::least_privilege`]) and one OAuth application, "Neo Agent",
    /// redirecting to [`DEFAULT_REDIRECT_URL`] with generated credentials.
    pub fn new(host: &str) -> Self {
        InstanceConfig {
            host: host.to_string(),
            users: vec![
                UserSpec {
                    user_name: "admin".into(),
                    password: "admin".into(),
                    first_name: "System".into(),
                    last_name: "Administrator".into(),
                    email: "admin@example.com".into(),
                    roles: vec!["admin".into()],
                    sys_id: Some(crate::seed::ADMIN_SYS_ID.into()),
                    web_service_access_only: false,
                },
                UserSpec {
                    user_name: "neo.agent".into(),
                    password: "neo.agent".into(),
                    first_name: "Neo".into(),
                    last_name: "Agent".into(),
                    email: "neo.agent@example.com".into(),
                    roles: vec!["itil".into()],
                    sys_id: None,
                    web_service_access_only: false,
                },
            ],
            oauth_apps: vec![OAuthAppSpec::new("Neo Agent", DEFAULT_REDIRECT_URL)],
            properties: BTreeMap::new(),
            api_auth_scopes: BTreeMap::new(),
            rate_limits: Vec::new(),
            acl: Vec::new(),
            behaviour: Behaviour::default(),
        }
    }
}

/// The role that writing script fields needs on Zurich and later (servicenow-api.md §7).
pub const SCRIPT_WRITER_ROLE: &str = "snc_required_script_writer_permission";

/// The custom role an instance's `security_admin` creates for the integration, which the
/// property ACLs of [`InstanceConfig::least_privilege`] name (the README's privileges table).
pub const INTEGRATION_ROLE: &str = "x_neoagent_integration";

/// The System Properties the integration's role may read and write.
pub const INTEGRATION_PROPERTIES: &str = "nameSTARTSWITHx_neoagent.";

impl InstanceConfig {
    /// The documented least-privilege setup for `user`: `itil`, `business_rule_admin` (Business
    /// Rules), `snc_required_script_writer_permission` (their script field) and
    /// [`INTEGRATION_ROLE`], which ACLs on `sys_properties` rows named `x_neoagent.*` let read,
    /// create, write and delete (no base role may write a property but `admin`,
    /// servicenow-api.md §7).
    pub fn least_privilege(mut self, user: &str) -> Self {
        use crate::acl::{AclRule, Operation};
        self.grant(
            user,
            &["itil", "business_rule_admin", SCRIPT_WRITER_ROLE, INTEGRATION_ROLE],
        );
        for operation in [Operation::Read, Operation::Create, Operation::Write, Operation::Delete] {
            self.acl
                .push(AclRule::new("sys_properties", operation, &[INTEGRATION_ROLE]).on_rows(INTEGRATION_PROPERTIES));
        }
        self
    }

    /// The administrator setup for `user`: `admin` (which contains `itil`) and
    /// `snc_required_script_writer_permission`, which `admin` lacks (servicenow-api.md §7).
    pub fn admin_account(mut self, user: &str) -> Self {
        self.grant(user, &["admin", SCRIPT_WRITER_ROLE]);
        self
    }

    fn grant(&mut self, user: &str, roles: &[&str]) {
        if let Some(spec) = self.users.iter_mut().find(|spec| spec.user_name == user) {
            for role in roles {
                if !spec.roles.iter().any(|held| held == role) {
                    spec.roles.push((*role).to_string());
                }
            }
        }
    }
}

/// A user to seed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserSpec {
    /// Login name.
    pub user_name: String,
    /// Password (Basic auth and the login form).
    pub password: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Email address.
    pub email: String,
    /// Role names to grant (created when unknown).
    pub roles: Vec<String>,
    /// A fixed sys_id; derived from the host and user name when absent.
    pub sys_id: Option<String>,
    /// "Web service access only" (`sys_user.web_service_access_only`): the user cannot log in to
    /// the UI — so cannot give OAuth consent — while Basic auth and tokens keep working for the
    /// REST API (servicenow-api.md §7 "Who can consent").
    pub web_service_access_only: bool,
}

/// An OAuth application registry record (`oauth_entity`, servicenow-api.md §1.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthAppSpec {
    /// Name.
    pub name: String,
    /// Client ID; generated (32 hex) when absent.
    pub client_id: Option<String>,
    /// Client secret; generated when absent.
    pub client_secret: Option<String>,
    /// Redirect URLs (the first is the fallback).
    pub redirect_urls: Vec<String>,
    /// Active flag.
    pub active: bool,
    /// Access token lifespan in seconds (default 1800).
    pub access_token_lifespan: u64,
    /// Refresh token lifespan in seconds (default 8,640,000).
    pub refresh_token_lifespan: u64,
    /// A public client (PKCE, no secret) instead of a confidential one.
    pub public_client: bool,
    /// For the client-credentials grant: the user the tokens act as.
    pub client_credentials_user: Option<String>,
    /// The entity's Auth Scopes (REST API Auth Scope, servicenow-api.md §7); the default
    /// `useraccount` lets its tokens call every API.
    pub auth_scopes: Vec<String>,
}

impl Default for OAuthAppSpec {
    fn default() -> Self {
        OAuthAppSpec::new("OAuth client", DEFAULT_REDIRECT_URL)
    }
}

impl OAuthAppSpec {
    /// A confidential, active client with the default lifespans and generated credentials.
    pub fn new(name: &str, redirect_url: &str) -> Self {
        OAuthAppSpec {
            name: name.to_string(),
            client_id: None,
            client_secret: None,
            redirect_urls: vec![redirect_url.to_string()],
            active: true,
            access_token_lifespan: 1800,
            refresh_token_lifespan: 8_640_000,
            public_client: false,
            client_credentials_user: None,
            auth_scopes: vec![USERACCOUNT_SCOPE.to_string()],
        }
    }
}

/// The auth scope that lets a token call every API (servicenow-api.md §7).
pub const USERACCOUNT_SCOPE: &str = "useraccount";

/// Behaviours servicenow-api.md marks UNCERTAIN, each a switch whose default is the documented or
/// observed behaviour. Behaviours the real instance governs with a system property (state
/// required, body-only token parameters, client-credentials grant, invalid queries) are system
/// properties instead; see the README.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// `oauth_auth.do` with an unregistered `redirect_uri`: fall back to the first registered URL
    /// (documented, default) or reject the request.
    pub reject_unregistered_redirect: bool,
    /// Accept client credentials in an HTTP Basic header at `oauth_token.do` (default: no).
    pub accept_basic_client_auth: bool,
    /// Token failures answer RFC 6749 error codes instead of the generic 401 (default: no).
    pub rfc_token_errors: bool,
    /// Omit `refresh_token` from a refresh response (default: no, the same token is returned).
    pub omit_refresh_token_on_refresh: bool,
    /// Non-refresh grants return the caller's still-valid access token, extended (documented,
    /// default: yes).
    pub reuse_valid_access_token: bool,
    /// Deny on the consent page shows a page instead of redirecting with
    /// `error=access_denied` (default: redirect).
    pub deny_shows_page: bool,
    /// Authorization code lifetime in seconds (default 60); codes are single use.
    pub authorization_code_ttl_secs: u64,
    /// Accept PKCE `plain` (or a challenge without a method) (default: S256 only).
    pub allow_plain_pkce: bool,
    /// Reject `oauth_auth.do` without `scope` (default: accept, scope `useraccount`).
    pub require_scope: bool,
    /// `=`, `LIKE` and friends compare case-sensitively in Table API queries (default: no).
    pub case_sensitive_queries: bool,
    /// Keep `rel="next"` in the `Link` header on the last page (default: omitted).
    pub next_link_on_last_page: bool,
    /// `sysparm_no_count=true` also drops `X-Total-Count` (default: yes).
    pub no_count_omits_total: bool,
    /// HTTP status of a successful Email API send (documented 200; some releases 201).
    pub email_send_status: u16,
    /// A Business Rule's `script` runs only when `advanced` is true (documented, default: yes).
    pub script_requires_advanced: bool,
    /// A list query on a table whose read ACLs let the caller see no row answers 403
    /// "Insufficient rights to query records" instead of an empty list (the stricter of the two
    /// answers real instances give; default: yes). Rows hidden one by one are still dropped
    /// silently.
    pub list_denied_is_403: bool,
    /// Writing a script field of `sys_script` needs the role
    /// `snc_required_script_writer_permission`, which `admin` lacks unless granted (Zurich and
    /// later, servicenow-api.md §7; default: yes — set `false` for an older release).
    pub script_writer_role: bool,
    /// The instance hibernates (an idle developer instance): every request but the management
    /// interface's answers HTTP 200 with the "instance hibernating" HTML page (servicenow-api.md
    /// §7, default: awake).
    pub hibernating: bool,
    /// The login form asks for a 6-digit MFA code after a correct password, before a session
    /// starts — so before the OAuth consent page (servicenow-api.md §7 "Who can consent"; default:
    /// no MFA step). The code comes from the management interface (`Admin::mfa_code`).
    pub require_mfa: bool,
    /// The Batch API's time limit in milliseconds: items not finished by then are unserviced
    /// (the "REST Batch API request timeout" transaction quota rule, 30 s, servicenow-api.md §7).
    pub batch_timeout_ms: u64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            reject_unregistered_redirect: false,
            accept_basic_client_auth: false,
            rfc_token_errors: false,
            omit_refresh_token_on_refresh: false,
            reuse_valid_access_token: true,
            deny_shows_page: false,
            authorization_code_ttl_secs: 60,
            allow_plain_pkce: false,
            require_scope: false,
            case_sensitive_queries: false,
            next_link_on_last_page: false,
            no_count_omits_total: true,
            email_send_status: 200,
            script_requires_advanced: true,
            script_writer_role: true,
            list_denied_is_403: true,
            hibernating: false,
            require_mfa: false,
            batch_timeout_ms: 30_000,
        }
    }
}
