//! What `gather` found, as `decide` takes it: each layer read only when the one before it
//! succeeded, a failure kept as it is.

use std::time::Duration;

use crate::{
    secrets::{CredentialsError, NotOwned, StoredToken},
    servicenow::{self, ClientCredentials, SecretString, User},
};

pub use crate::servicenow::InstanceRecords;

/// A credentials Secret that cannot be used, for a reason a person must fix.
pub type CredentialsProblem = CredentialsError;

/// An access token, and whether this reconcile obtained it.
#[derive(Clone, Debug)]
pub struct Access {
    /// The token.
    pub token: SecretString,
    /// How long it still lives.
    pub lifetime: Duration,
    /// The refresh token the grant carried when this reconcile refreshed (`None`: the token came
    /// from memory).
    pub refreshed: Option<Refreshed>,
}

/// A refresh made by this reconcile.
#[derive(Clone, Debug)]
pub struct Refreshed {
    /// The refresh token in the grant (the instance's, or the stored one when it left it out).
    pub refresh_token: SecretString,
}

/// Everything gathered. Each layer is `None` when it was not read (an earlier layer failed or
/// made it pointless).
#[derive(Debug, Default)]
pub struct Gathered {
    /// The credentials Secret, checked.
    pub credentials: Option<Result<ClientCredentials, CredentialsProblem>>,
    /// The stored refresh token (`Some(None)`: none stored yet).
    pub stored: Option<Option<StoredToken>>,
    /// The access token.
    pub access: Option<Result<Access, servicenow::Error>>,
    /// The OAuth user.
    pub user: Option<Result<User, servicenow::Error>>,
    /// The user's active role names.
    pub roles: Option<Result<Vec<String>, servicenow::Error>>,
    /// The token or webhook Secret that turned out not to be the connection's (nothing was read
    /// past it).
    pub not_owned: Option<NotOwned>,
    /// The connection's webhook token.
    pub webhook_token: Option<SecretString>,
    /// The webhook records on the instance.
    pub records: Option<Result<InstanceRecords, servicenow::Error>>,
    /// A fresh consent ticket (drawn while consent may be needed); `decide` puts it in the status
    /// only when the status holds no usable one.
    pub consent_ticket: Option<crate::ticket::Issued>,
}
