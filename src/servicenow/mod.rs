//! The ServiceNow client library. No Kubernetes types here, nothing else of the crate imported.
//!
//! The [`ServiceNow`] trait is what the reconciler and the consent endpoints need from an
//! instance; [`Client`] implements it over HTTPS (tests may substitute a fake). Every method
//! takes the instance explicitly; table methods take an access token obtained through
//! [`ServiceNow::refresh_token`] (the caller caches the access token).
//!
//! Layout: `http` (the one HTTP client: TLS, resolve, proxy, timeouts, per-instance limit, call
//! counting, error answers), `oauth` (authorize URL, PKCE, token grants, revocation), `table`
//! (Table API calls) with `query` (encoded queries), `batch` (Table API reads in one Batch API
//! request), `client` (the [`Client`]), `records` (plain structs), `error`, `secret`.

mod batch;
mod client;
pub mod error;
pub mod http;
pub mod instance_url;
pub mod oauth;
pub mod query;
pub mod records;
pub mod secret;
mod table;

pub use batch::REFUSAL_MEMORY;
pub use client::Client;
pub use error::{Error, ErrorKind};
pub use http::{CallObserver, ClientConfig, NoObserver};
pub use instance_url::{InstanceUrl, InvalidInstanceUrl, UrlRule};
pub use records::{
    BusinessRule, BusinessRuleFields, ClientCredentials, Found, InstanceRecords, Lookup, SystemProperty,
    SystemPropertyFields, TokenGrant, User,
};
pub use secret::SecretString;

/// What the operator needs from a ServiceNow instance.
pub trait ServiceNow: Send + Sync + 'static {
    /// The `refresh_token` grant at `/oauth_token.do` (client credentials as form fields). The
    /// grant always carries a refresh token: the instance's, or `refresh_token` when the
    /// instance left it out. A refused grant is [`ErrorKind::Unauthorized`].
    fn refresh_token(
        &self,
        instance: &InstanceUrl,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> impl Future<Output = Result<TokenGrant, Error>> + Send;

    /// The `authorization_code` grant at `/oauth_token.do`, with the PKCE verifier.
    fn exchange_code(
        &self,
        instance: &InstanceUrl,
        credentials: &ClientCredentials,
        code: &SecretString,
        redirect_uri: &str,
        pkce_verifier: &SecretString,
    ) -> impl Future<Output = Result<TokenGrant, Error>> + Send;

    /// Revokes `token` (access or refresh) at `/oauth_revoke_token.do`. ServiceNow's revocation
    /// is unauthenticated: `credentials` are not sent (kept for implementations that need them).
    fn revoke(
        &self,
        instance: &InstanceUrl,
        credentials: &ClientCredentials,
        token: &SecretString,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The OAuth user, from `/api/now/ui/user/current_user` (`user_sys_id`, `user_name`, `user_display_name`: the endpoint's real members, servicenow-api.md §7).
    fn current_user(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
    ) -> impl Future<Output = Result<User, Error>> + Send;

    /// Which of the roles `names` `user_sys_id` holds, active, inherited grants included: one
    /// read of `sys_user_has_role` filtered by role name (`user=<id>^state=active^role.name=a^ORrole.name=b`,
    /// dot-walked `role.name`), never the user's whole role list — an admin holds thousands of
    /// rows, and a page of them may miss the one asked for (servicenow-api.md §7). Sorted, without
    /// duplicates.
    fn user_roles(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        user_sys_id: &str,
        names: &[&str],
    ) -> impl Future<Output = Result<Vec<String>, Error>> + Send;

    /// The Business Rules named any of `names`, in one read, oldest first.
    fn business_rules(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        names: &[&str],
    ) -> impl Future<Output = Result<Vec<BusinessRule>, Error>> + Send;

    /// The reads of a drift check — [`ServiceNow::user_roles`], [`ServiceNow::business_rules`]
    /// and [`ServiceNow::properties`] — in one Batch API request (`POST /api/now/v1/batch`;
    /// each read runs under its own ACLs and Auth Scope, and its answer is checked as if sent
    /// alone). An instance that refuses the batch (a 4xx other than 401 and 429: the API
    /// disabled, or outside the OAuth application's auth scopes) is read apart, roles first, and
    /// is not sent a batch again for [`REFUSAL_MEMORY`]. A batch that fails as a whole fails
    /// the roles, with the webhook records unread.
    fn lookup(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        lookup: &Lookup<'_>,
    ) -> impl Future<Output = Found> + Send;

    /// Creates a Business Rule.
    fn create_business_rule(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        fields: &BusinessRuleFields,
    ) -> impl Future<Output = Result<BusinessRule, Error>> + Send;

    /// Overwrites the managed fields of the Business Rule `sys_id`.
    fn update_business_rule(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
        fields: &BusinessRuleFields,
    ) -> impl Future<Output = Result<BusinessRule, Error>> + Send;

    /// Deletes the Business Rule `sys_id` (a missing one is fine).
    fn delete_business_rule(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The System Properties named `name`, oldest first.
    fn properties(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        name: &str,
    ) -> impl Future<Output = Result<Vec<SystemProperty>, Error>> + Send;

    /// Creates a System Property.
    fn create_property(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        fields: &SystemPropertyFields,
    ) -> impl Future<Output = Result<SystemProperty, Error>> + Send;

    /// Overwrites the managed fields of the System Property `sys_id`.
    fn update_property(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
        fields: &SystemPropertyFields,
    ) -> impl Future<Output = Result<SystemProperty, Error>> + Send;

    /// Deletes the System Property `sys_id` (a missing one is fine).
    fn delete_property(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}
