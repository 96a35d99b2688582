//! The three Secrets of a connection — credentials (the user's, only ever read), token and
//! webhook token (the operator's, labelled as the connection's) — read and written with typed
//! values. Every value is a [`SecretString`], so none can reach a log, an event or a status by
//! accident.
//!
//! The operator creates, patches and deletes only Secrets [`ownership`] proves are the
//! connection's; every write and delete here checks first, and makes its change conditional on
//! the version it checked (a `resourceVersion` or `uid` precondition, or a create that fails
//! when the name is taken), so a Secret swapped in between is never touched.

pub mod cache;
pub mod ownership;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference, jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
};

pub use cache::SecretCache;
pub use ownership::{NotOwned, OwnedSecret, Ownership};

use crate::{api::ServiceNowConnection, servicenow::SecretString, sync::LockExt as _};

/// The Secrets of one namespace as a caller reads and writes them. A reconcile's
/// ([`Secrets::cached`]) reads a Secret from the [`SecretCache`] when it holds the version the
/// Secret watch has seen last, else from the API server, and remembers every read and write
/// there for its connection; others ([`Secrets::uncached`]: the consent callback, the webhook
/// receiver) always ask the API server.
pub struct Secrets<'a> {
    api: Api<Secret>,
    namespace: String,
    /// The cache, and the connection whose reconcile reads.
    cache: Option<(&'a Mutex<SecretCache>, String)>,
    /// A reconcile's own reads and writes, by name (`None`: there is none): it concludes from
    /// one value of each Secret, read once, so the reads [`prefetch`] started are not repeated.
    seen: Mutex<HashMap<String, Option<Secret>>>,
    /// Set when the watch brought someone else's version of a Secret while this reconcile was
    /// writing it ([`SecretCache::end_write`]).
    changed_while_writing: std::sync::atomic::AtomicBool,
}

impl<'a> Secrets<'a> {
    /// Plain API calls.
    pub fn uncached(api: Api<Secret>) -> Self {
        Secrets {
            api,
            namespace: String::new(),
            cache: None,
            seen: Mutex::default(),
            changed_while_writing: Default::default(),
        }
    }

    /// `connection`'s reconcile's Secrets, through `cache`.
    pub fn cached(client: kube::Client, cache: &'a Mutex<SecretCache>, connection: &ServiceNowConnection) -> Self {
        let namespace = connection.namespace().unwrap_or_default();
        Secrets {
            api: Api::namespaced(client, &namespace),
            namespace,
            cache: Some((cache, connection.name_any())),
            seen: Mutex::default(),
            changed_while_writing: Default::default(),
        }
    }

    /// The Secret `name` (`None`: there is none), holding only the data keys of `keep` (all
    /// when `None`) once cached.
    async fn get_opt(&self, name: &str, keep: Option<&[&str]>) -> Result<Option<Secret>, kube::Error> {
        let Some((cache, connection)) = &self.cache else {
            return self.api.get_opt(name).await;
        };
        if let Some(secret) = self.seen.locked().get(name) {
            return Ok(secret.clone());
        }
        let key = (self.namespace.clone(), name.to_owned());
        let held = {
            let mut cache = cache.locked();
            let held = cache.get(&key);
            if let Some(secret) = &held {
                cache.remember(&key, connection, Some(secret), keep);
            }
            held
        };
        let secret = match held {
            Some(secret) => Some(secret),
            None => {
                let secret = self.api.get_opt(name).await?;
                self.remember(name, secret.as_ref(), keep);
                secret
            }
        };
        self.seen.locked().insert(name.to_owned(), secret.clone());
        Ok(secret)
    }

    /// [`Self::get_opt`] of a Secret that only the operator creates (the webhook key's): `None`
    /// without asking the API server when the cache has seen nothing of it
    /// ([`SecretCache::unseen`]). Should it exist after all (created a moment ago, the watch not
    /// there yet), the create that follows is refused (409) and [`Self::forget`] lets the next
    /// read ask.
    async fn get_opt_unless_unseen(&self, name: &str) -> Result<Option<Secret>, kube::Error> {
        let unseen = self
            .cache
            .as_ref()
            .is_some_and(|(cache, _)| cache.locked().unseen(&(self.namespace.clone(), name.to_owned())));
        if unseen {
            return Ok(self.seen.locked().entry(name.to_owned()).or_insert(None).clone());
        }
        self.get_opt(name, None).await
    }

    /// Forgets what this reconcile concluded of `name`: its next read asks again.
    fn forget(&self, name: &str) {
        self.seen.locked().remove(name);
    }

    /// Records that the connection concluded from `secret` (read or written) as `name`.
    fn remember(&self, name: &str, secret: Option<&Secret>, keep: Option<&[&str]>) {
        if let Some((cache, connection)) = &self.cache {
            let key = (self.namespace.clone(), name.to_owned());
            cache.locked().remember(&key, connection, secret, keep);
            self.seen.locked().insert(name.to_owned(), secret.cloned());
        }
    }

    /// Creates `secret`.
    async fn create(&self, params: &PostParams, secret: &Secret) -> Result<Secret, kube::Error> {
        let name = secret.name_any();
        self.writing(&name, self.api.create(params, secret)).await
    }

    /// Patches the Secret `name`.
    async fn patch<P: serde::Serialize + std::fmt::Debug>(
        &self,
        name: &str,
        params: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<Secret, kube::Error> {
        self.writing(name, self.api.patch(name, params, patch)).await
    }

    /// Runs `write` of the Secret `name`, holding the watch's events for it meanwhile, and
    /// remembers what it wrote.
    async fn writing(
        &self,
        name: &str,
        write: impl Future<Output = Result<Secret, kube::Error>>,
    ) -> Result<Secret, kube::Error> {
        let Some((cache, connection)) = &self.cache else {
            return write.await;
        };
        let in_flight = WriteInFlight::begin(cache, (self.namespace.clone(), name.to_owned()), connection);
        let written = write.await;
        if in_flight.end(written.as_ref().ok()) {
            self.changed_while_writing
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(secret) = &written {
            self.seen.locked().insert(name.to_owned(), Some(secret.clone()));
        }
        written
    }

    /// `true` when someone else changed a Secret while this reconcile wrote it: the reconcile
    /// must look again, for the watch event that would have woken it was held.
    pub fn changed_while_writing(&self) -> bool {
        self.changed_while_writing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Deletes the Secret `name`.
    async fn delete(&self, name: &str, params: &DeleteParams) -> Result<(), kube::Error> {
        let deleted = self.api.delete(name, params).await;
        self.remember(name, None, None);
        deleted.map(|_| ())
    }
}

/// A reconcile's write of one Secret, in flight: ended with what it wrote, or — should the
/// reconcile be dropped before the answer — as failed.
struct WriteInFlight<'a> {
    cache: &'a Mutex<SecretCache>,
    key: cache::Key,
    connection: &'a str,
    ended: bool,
}

impl<'a> WriteInFlight<'a> {
    fn begin(cache: &'a Mutex<SecretCache>, key: cache::Key, connection: &'a str) -> Self {
        cache.locked().begin_write(&key, connection);
        WriteInFlight {
            cache,
            key,
            connection,
            ended: false,
        }
    }

    /// Ends the write, which stored `written` (`None`: it failed), and remembers it: `true` when
    /// someone else's version came meanwhile.
    fn end(mut self, written: Option<&Secret>) -> bool {
        self.ended = true;
        let mut cache = self.cache.locked();
        let version = written.and_then(|secret| secret.metadata.resource_version.as_deref());
        let changed = cache.end_write(&self.key, self.connection, version);
        if written.is_some() {
            cache.remember(&self.key, self.connection, written, None);
        }
        changed
    }
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.cache.locked().end_write(&self.key, self.connection, None);
        }
    }
}

/// Key of the OAuth client id in the credentials Secret.
pub const CLIENT_ID_KEY: &str = "clientId";
/// The longest client ID or secret accepted (the instance's are 32 characters; a longer value is
/// a pasted file or record, not a credential, and would be sent with every token request).
const MAX_CREDENTIAL_LEN: usize = 1024;
/// Key of the OAuth client secret in the credentials Secret.
pub const CLIENT_SECRET_KEY: &str = "clientSecret";
/// Key of the refresh token in the token Secret.
pub const REFRESH_TOKEN_KEY: &str = "refreshToken";
/// Key of the refresh token's expiry (RFC 3339) in the token Secret.
pub const REFRESH_TOKEN_EXPIRES_AT_KEY: &str = "refreshTokenExpiresAt";
/// Key of the per-connection webhook signing key (the key the Business Rule signs events with).
pub const WEBHOOK_TOKEN_KEY: &str = "token";
/// Key of the signing key a rotation replaced, still accepted until
/// [`WEBHOOK_PREVIOUS_UNTIL_KEY`].
pub const WEBHOOK_PREVIOUS_TOKEN_KEY: &str = "previousToken";
/// Key of the end (RFC 3339) of the previous signing key's grace period.
pub const WEBHOOK_PREVIOUS_UNTIL_KEY: &str = "previousTokenValidUntil";
/// How long a signing key replaced by a rotation is still accepted: far longer than an event
/// takes from the instance's outbound queue to the receiver, short enough that a leaked key
/// soon stops working.
pub const WEBHOOK_KEY_GRACE: k8s_openapi::jiff::SignedDuration = k8s_openapi::jiff::SignedDuration::from_mins(15);
/// Key of the `neoagent.io/rotate-webhook-key` request the current key answers, so one request
/// rotates once however often the reconcile runs.
pub const WEBHOOK_ROTATION_KEY: &str = "rotationRequest";
/// The field manager the operator writes Secrets with.
pub const FIELD_MANAGER: &str = "servicenow-operator";

pub use crate::servicenow::ClientCredentials;

/// Why the credentials could not be read. The messages name the Secret and key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The Secret does not exist.
    #[error("the credentials Secret {secret:?} does not exist in the connection's namespace")]
    SecretMissing {
        /// The Secret's name.
        secret: String,
    },
    /// The Secret lacks a key.
    #[error("the credentials Secret {secret:?} has no key {key:?}")]
    KeyMissing {
        /// The Secret's name.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// A value is unusable.
    #[error("the value of {key:?} in the credentials Secret {secret:?} {problem}")]
    Malformed {
        /// The Secret's name.
        secret: String,
        /// The key whose value is wrong.
        key: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The API server could not be asked.
    #[error("failed to read the credentials Secret {secret:?}: {source}")]
    Kube {
        /// The Secret's name.
        secret: String,
        /// What the API server said.
        source: kube::Error,
    },
}

impl CredentialsError {
    /// `true` when retrying without a change may help (the API server failed).
    pub fn is_transient(&self) -> bool {
        matches!(self, CredentialsError::Kube { .. })
    }
}

/// Reads `connection`'s three Secrets — credentials, token, webhook key — at once, for a
/// reconcile's reads of them that follow (a first provisioning's, while its finalizer is
/// added). A failure is left for those reads to meet and report.
pub async fn prefetch(secrets: &Secrets<'_>, connection: &ServiceNowConnection) {
    let (token, webhook) = (token_secret_name(connection), webhook_secret_name(connection));
    let _ = futures::join!(
        secrets.get_opt(
            &connection.spec.credentials_secret_ref.name,
            Some(&[CLIENT_ID_KEY, CLIENT_SECRET_KEY])
        ),
        secrets.get_opt(&token, None),
        secrets.get_opt_unless_unseen(&webhook),
    );
}

/// Reads and checks the credentials Secret `name`.
pub async fn read_credentials(secrets: &Secrets<'_>, name: &str) -> Result<ClientCredentials, CredentialsError> {
    let secret = secrets
        .get_opt(name, Some(&[CLIENT_ID_KEY, CLIENT_SECRET_KEY]))
        .await
        .map_err(|source| CredentialsError::Kube {
            secret: name.to_owned(),
            source,
        })?
        .ok_or_else(|| CredentialsError::SecretMissing {
            secret: name.to_owned(),
        })?;
    credentials_from(name, secret.data.as_ref())
}

/// Pure: the credentials in a Secret's `data`, checked key by key.
pub fn credentials_from(
    name: &str,
    data: Option<&BTreeMap<String, ByteString>>,
) -> Result<ClientCredentials, CredentialsError> {
    let value = |key: &'static str| -> Result<SecretString, CredentialsError> {
        let bytes = data
            .and_then(|d| d.get(key))
            .ok_or_else(|| CredentialsError::KeyMissing {
                secret: name.to_owned(),
                key,
            })?;
        let malformed = |problem| CredentialsError::Malformed {
            secret: name.to_owned(),
            key,
            problem,
        };
        let text = std::str::from_utf8(&bytes.0).map_err(|_| malformed("is not UTF-8 text"))?;
        if text.is_empty() {
            return Err(malformed("is empty"));
        }
        if text.len() > MAX_CREDENTIAL_LEN {
            return Err(malformed(
                "is longer than 1,024 bytes: copy the value itself from the Application Registry record",
            ));
        }
        if text.ends_with('\n') || text.ends_with("\r\n") {
            return Err(malformed("ends with a newline"));
        }
        if text.trim() != text {
            return Err(malformed("has leading or trailing whitespace"));
        }
        if text.chars().any(char::is_control) {
            return Err(malformed("contains control characters"));
        }
        Ok(SecretString::new(text))
    };
    Ok(ClientCredentials {
        client_id: value(CLIENT_ID_KEY)?,
        client_secret: value(CLIENT_SECRET_KEY)?,
    })
}

/// The refresh token the operator keeps, and when it expires if known.
#[derive(Clone, Debug)]
pub struct StoredToken {
    /// The refresh token.
    pub refresh_token: SecretString,
    /// When it expires, as the instance told at issue time.
    pub expires_at: Option<Timestamp>,
}

/// The name of the token Secret of `connection`.
pub fn token_secret_name(connection: &ServiceNowConnection) -> String {
    match &connection.spec.token_secret_ref {
        Some(reference) => reference.name.clone(),
        None => format!("{}-token", connection.name_any()),
    }
}

/// The name of the webhook-token Secret of `connection`.
pub fn webhook_secret_name(connection: &ServiceNowConnection) -> String {
    format!("{}-webhook", connection.name_any())
}

/// Why a Secret of the connection could not be read, written or deleted.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret is not the connection's: a person must resolve it (terminal).
    #[error(transparent)]
    NotOwned(#[from] NotOwned),
    /// The API server failed or refused (a precondition that no longer holds included):
    /// retried with backoff.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Reads the stored refresh token, whoever wrote the Secret (the consent callback's look at the
/// token it replaces: it stores nothing unless [`write_token`] proves ownership); `None` when
/// there is none (no Secret, or no key).
pub async fn read_token(secrets: &Secrets<'_>, name: &str) -> Result<Option<StoredToken>, kube::Error> {
    Ok(secrets.get_opt(name, None).await?.and_then(token_of))
}

/// Reads the refresh token `owner` stored; `None` when there is none (no Secret, or no key).
/// A Secret of an older version is labelled on the way ([`Ownership::Legacy`]); one that is
/// not the connection's is refused.
pub async fn read_owned_token(
    secrets: &Secrets<'_>,
    owner: &ServiceNowConnection,
) -> Result<Option<StoredToken>, SecretError> {
    let name = token_secret_name(owner);
    Ok(owned(secrets, &name, OwnedSecret::Token, owner)
        .await?
        .and_then(token_of))
}

fn token_of(secret: Secret) -> Option<StoredToken> {
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok());
    text(REFRESH_TOKEN_KEY)
        .filter(|t| !t.is_empty())
        .map(|token| StoredToken {
            refresh_token: SecretString::new(token),
            expires_at: text(REFRESH_TOKEN_EXPIRES_AT_KEY).and_then(|t| t.parse().ok()),
        })
}

/// Stores `token` in the token Secret `name` of `owner`: created labelled as the connection's,
/// or rewritten when it is the connection's already; refused when it is not.
pub async fn write_token(
    secrets: &Secrets<'_>,
    name: &str,
    owner: &ServiceNowConnection,
    token: &StoredToken,
) -> Result<(), SecretError> {
    let existing = owned(secrets, name, OwnedSecret::Token, owner).await?;
    let mut data = BTreeMap::from([(
        REFRESH_TOKEN_KEY.to_owned(),
        ByteString(token.refresh_token.expose().into()),
    )]);
    if let Some(expires_at) = token.expires_at {
        data.insert(
            REFRESH_TOKEN_EXPIRES_AT_KEY.to_owned(),
            ByteString(expires_at.to_string().into_bytes()),
        );
    }
    write_owned(secrets, name, owner, existing.as_ref(), data).await
}

/// Deletes the token Secret `name` of `owner` (re-consent), only when it is the connection's
/// and still the version checked. A missing Secret is fine.
pub async fn forget_token(secrets: &Secrets<'_>, name: &str, owner: &ServiceNowConnection) -> Result<(), SecretError> {
    let Some(secret) = owned(secrets, name, OwnedSecret::Token, owner).await? else {
        return Ok(());
    };
    let checked = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match secrets.delete(name, &checked).await {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// A connection's webhook signing keys, as its Secret `<name>-webhook` keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookKeys {
    /// The key the Business Rule signs with.
    pub current: SecretString,
    /// The key a rotation replaced, and until when it is still accepted.
    pub previous: Option<(SecretString, Timestamp)>,
    /// The rotation request the current key answers.
    rotation: Option<String>,
}

impl WebhookKeys {
    /// The keys a signature made at `now` may be checked against: the current one, and the
    /// previous one during its grace period.
    pub fn usable(&self, now: Timestamp) -> impl Iterator<Item = &SecretString> {
        let previous = self
            .previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(key, _)| key);
        std::iter::once(&self.current).chain(previous)
    }

    fn of(secret: Secret) -> Option<WebhookKeys> {
        let mut data = secret.data.unwrap_or_default();
        let mut text = |key: &str| {
            data.remove(key)
                .and_then(|v| String::from_utf8(v.0).ok())
                .filter(|t| !t.is_empty())
        };
        let current = SecretString::new(text(WEBHOOK_TOKEN_KEY)?);
        let previous = text(WEBHOOK_PREVIOUS_TOKEN_KEY).map(SecretString::new);
        let until = text(WEBHOOK_PREVIOUS_UNTIL_KEY).and_then(|t| t.parse::<Timestamp>().ok());
        Some(WebhookKeys {
            current,
            previous: previous.zip(until),
            rotation: text(WEBHOOK_ROTATION_KEY),
        })
    }
}

/// The webhook signing keys of `owner`; `None` when there are none (no Secret, no key, an empty
/// value — or a Secret that is not the connection's: its keys sign nothing). Only reads: an
/// older version's Secret counts, and is labelled by the reconcile.
pub async fn read_webhook_keys(
    secrets: &Secrets<'_>,
    owner: &ServiceNowConnection,
) -> Result<Option<WebhookKeys>, kube::Error> {
    let uid = owner.uid().unwrap_or_default();
    Ok(secrets
        .get_opt(&webhook_secret_name(owner), None)
        .await?
        .filter(|secret| !matches!(ownership::ownership(&secret.metadata, &uid), Ownership::Foreign(_)))
        .and_then(WebhookKeys::of))
}

/// The connection's current webhook signing key: read, or generated (32 random bytes,
/// URL-safe) and stored once. With `rotation` — the value of a `neoagent.io/rotate-webhook-key`
/// request this Secret has not answered yet — a new key replaces the current one, which stays
/// accepted for [`WEBHOOK_KEY_GRACE`] (the receiver reads both), so events signed just before the
/// rule's property changes, or still on their way, are not lost.
pub async fn ensure_webhook_key(
    secrets: &Secrets<'_>,
    owner: &ServiceNowConnection,
    rotation: Option<&str>,
) -> Result<SecretString, SecretError> {
    let name = webhook_secret_name(owner);
    match ensure_webhook_key_once(secrets, &name, owner, rotation).await {
        // Created or changed meanwhile, or taken as absent before the watch brought it
        // ([`Secrets::get_opt_unless_unseen`]): read it and decide again.
        Err(SecretError::Kube(kube::Error::Api(refused))) if refused.code == 409 => {
            secrets.forget(&name);
            ensure_webhook_key_once(secrets, &name, owner, rotation).await
        }
        done => done,
    }
}

/// [`ensure_webhook_key`] from one read of the Secret `name`.
async fn ensure_webhook_key_once(
    secrets: &Secrets<'_>,
    name: &str,
    owner: &ServiceNowConnection,
    rotation: Option<&str>,
) -> Result<SecretString, SecretError> {
    let existing = owned(secrets, name, OwnedSecret::Webhook, owner).await?;
    let kept = existing.clone().and_then(WebhookKeys::of);
    let replaced = match &kept {
        Some(keys) if rotation.is_none_or(|request| keys.rotation.as_deref() == Some(request)) => {
            return Ok(keys.current.clone());
        }
        Some(keys) => Some(&keys.current),
        None => None,
    };
    let key = new_webhook_token();
    let mut data = BTreeMap::from([(WEBHOOK_TOKEN_KEY.to_owned(), ByteString(key.expose().into()))]);
    if let Some(replaced) = replaced {
        let until = Timestamp::now()
            .checked_add(WEBHOOK_KEY_GRACE)
            .unwrap_or(Timestamp::MAX);
        data.insert(
            WEBHOOK_PREVIOUS_TOKEN_KEY.to_owned(),
            ByteString(replaced.expose().into()),
        );
        data.insert(
            WEBHOOK_PREVIOUS_UNTIL_KEY.to_owned(),
            ByteString(until.to_string().into_bytes()),
        );
    }
    if let Some(request) = rotation {
        data.insert(WEBHOOK_ROTATION_KEY.to_owned(), ByteString(request.into()));
    }
    write_owned(secrets, name, owner, existing.as_ref(), data).await?;
    Ok(key)
}

/// Key of the consent-state signing key in the operator's own Secret.
pub const STATE_KEY_KEY: &str = "stateKey";

/// The key that signs consent states, shared by every replica: read from the Secret `name`, or
/// created there (32 random bytes, labelled as the operator's) by whichever replica comes first.
/// Never patched or deleted.
pub async fn ensure_state_key(secrets: &Api<Secret>, name: &str) -> Result<SecretString, kube::Error> {
    for _ in 0..3 {
        if let Some(secret) = secrets.get_opt(name).await? {
            let existing = secret
                .data
                .and_then(|mut d| d.remove(STATE_KEY_KEY))
                .and_then(|v| String::from_utf8(v.0).ok());
            if let Some(key) = existing.filter(|k| k.len() >= 32) {
                return Ok(SecretString::new(key));
            }
        }
        let key = new_webhook_token();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    ownership::MANAGED_BY_LABEL.to_owned(),
                    ownership::MANAGER.to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                STATE_KEY_KEY.to_owned(),
                ByteString(key.expose().into()),
            )])),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        };
        match secrets.create(&Default::default(), &secret).await {
            Ok(_) => return Ok(key),
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => return Err(error),
        }
    }
    secrets.get(name).await.and_then(|secret| {
        let value = secret
            .data
            .and_then(|mut d| d.remove(STATE_KEY_KEY))
            .and_then(|v| String::from_utf8(v.0).ok());
        value.map(SecretString::new).ok_or_else(|| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure(&format!("the Secret {name} has no {STATE_KEY_KEY}"), "Invalid")
                    .with_code(422),
            ))
        })
    })
}

/// 32 random bytes as unpadded URL-safe base64.
pub fn new_webhook_token() -> SecretString {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    SecretString::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The Secret `name` when it is `owner`'s (`None`: there is none). An older version's Secret is
/// labelled first (conditional on the version read); any other is refused as `role`.
async fn owned(
    secrets: &Secrets<'_>,
    name: &str,
    role: OwnedSecret,
    owner: &ServiceNowConnection,
) -> Result<Option<Secret>, SecretError> {
    let Some(secret) = secrets.get_opt(name, None).await? else {
        return Ok(None);
    };
    let uid = owner.uid().unwrap_or_default();
    match ownership::ownership(&secret.metadata, &uid) {
        Ownership::Owned => Ok(Some(secret)),
        Ownership::Legacy => {
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": secret.metadata.resource_version,
                "labels": ownership::labels(&uid),
            }});
            let labelled = secrets
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(Some(labelled))
        }
        Ownership::Foreign(problem) => Err(NotOwned {
            role,
            secret: name.to_owned(),
            problem,
        }
        .into()),
    }
}

/// Pure: the strategic merge patch that makes `existing` — the connection `uid`'s — hold
/// exactly `data` (keys it drops are set to null, so removed), labelled and controlled as the
/// connection's, conditional on `existing`'s `resourceVersion`.
fn rewrite(
    existing: &Secret,
    uid: &str,
    owner_references: Option<Vec<OwnerReference>>,
    data: BTreeMap<String, ByteString>,
) -> serde_json::Value {
    let mut values: serde_json::Map<String, serde_json::Value> = existing
        .data
        .iter()
        .flatten()
        .map(|(key, _)| (key.clone(), serde_json::Value::Null))
        .collect();
    for (key, value) in data {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value.0);
        values.insert(key, serde_json::Value::String(encoded));
    }
    let mut patch = serde_json::json!({
        "metadata": {
            "resourceVersion": existing.metadata.resource_version,
            "labels": ownership::labels(uid),
        },
        "data": values,
    });
    // Merged by uid with the references already there; never a null, which would remove them.
    if let Some(references) = owner_references {
        patch["metadata"]["ownerReferences"] = serde_json::json!(references);
    }
    patch
}

/// Writes `data` into `owner`'s Secret `name`: creates it, labelled and controlled by the
/// connection, when `existing` is `None` (failing if the name was taken since), or replaces the
/// data of `existing` — which [`owned`] proved the connection's — conditional on its version.
async fn write_owned(
    secrets: &Secrets<'_>,
    name: &str,
    owner: &ServiceNowConnection,
    existing: Option<&Secret>,
    data: BTreeMap<String, ByteString>,
) -> Result<(), SecretError> {
    let uid = owner.uid().unwrap_or_default();
    let owner_references = owner.controller_owner_ref(&()).map(|r| vec![r]);
    let Some(existing) = existing else {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                owner_references,
                labels: Some(ownership::labels(&uid)),
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        secrets.create(&params, &secret).await?;
        return Ok(());
    };
    let patch = rewrite(existing, &uid, owner_references, data);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    secrets.patch(name, &params, &Patch::Strategic(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn good_credentials_are_read() {
        let creds = credentials_from(
            "acme-oauth",
            Some(&data(&[("clientId", "abc"), ("clientSecret", "xyz")])),
        )
        .unwrap();
        assert_eq!(creds.client_id.expose(), "abc");
        assert_eq!(creds.client_secret.expose(), "xyz");
    }

    #[test]
    fn a_trailing_newline_is_named_without_showing_the_value() {
        let error = credentials_from(
            "acme-oauth",
            Some(&data(&[("clientId", "abc"), ("clientSecret", "hunter2\n")])),
        )
        .unwrap_err();
        let message = error.to_string();
        assert_eq!(
            message,
            "the value of \"clientSecret\" in the credentials Secret \"acme-oauth\" ends with a newline"
        );
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn a_missing_key_is_named() {
        let error = credentials_from("acme-oauth", Some(&data(&[("clientId", "abc")]))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the credentials Secret \"acme-oauth\" has no key \"clientSecret\""
        );
    }

    #[test]
    fn the_fingerprint_changes_with_either_value_and_hides_both() {
        let a = ClientCredentials {
            client_id: SecretString::new("id"),
            client_secret: SecretString::new("one"),
        };
        let b = ClientCredentials {
            client_id: SecretString::new("id"),
            client_secret: SecretString::new("two"),
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32);
        assert!(!a.fingerprint().contains("one"));
    }

    #[test]
    fn the_previous_webhook_key_is_usable_only_until_its_grace_ends() {
        let secret = |data: &[(&str, &str)]| Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let keys = WebhookKeys::of(secret(&[
            (WEBHOOK_TOKEN_KEY, "new"),
            (WEBHOOK_PREVIOUS_TOKEN_KEY, "old"),
            (WEBHOOK_PREVIOUS_UNTIL_KEY, "2026-12-04T12:15:00Z"),
            (WEBHOOK_ROTATION_KEY, "r1"),
        ]))
        .expect("keys");
        let usable = |at: &str| -> Vec<String> {
            keys.usable(at.parse().unwrap())
                .map(|key| key.expose().to_owned())
                .collect()
        };
        assert_eq!(usable("2026-12-04T12:14:59Z"), ["new", "old"]);
        assert_eq!(usable("2026-12-04T12:15:00Z"), ["new"]);
        assert_eq!(keys.rotation.as_deref(), Some("r1"));
        // A previous key without a valid end is never usable; no current key, no keys.
        let without_end = WebhookKeys::of(secret(&[
            (WEBHOOK_TOKEN_KEY, "new"),
            (WEBHOOK_PREVIOUS_TOKEN_KEY, "old"),
        ]));
        assert_eq!(without_end.expect("keys").previous, None);
        assert_eq!(WebhookKeys::of(secret(&[(WEBHOOK_TOKEN_KEY, "")])), None);
        assert_eq!(WebhookKeys::of(Secret::default()), None);
    }

    #[test]
    fn a_rewrite_removes_the_keys_it_drops_and_holds_on_the_version_read() {
        let existing = Secret {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            data: Some(data(&[
                ("refreshToken", "old"),
                ("refreshTokenExpiresAt", "2026-01-01T00:00:00Z"),
            ])),
            ..Secret::default()
        };
        let patch = rewrite(&existing, "u1", None, data(&[("refreshToken", "new")]));
        assert_eq!(
            patch,
            serde_json::json!({
                "metadata": {
                    "resourceVersion": "42",
                    "labels": {ownership::MANAGED_BY_LABEL: ownership::MANAGER, ownership::CONNECTION_UID_LABEL: "u1"},
                },
                "data": {"refreshToken": "bmV3", "refreshTokenExpiresAt": null},
            })
        );
    }

    #[test]
    fn webhook_tokens_are_long_and_fresh() {
        let (a, b) = (new_webhook_token(), new_webhook_token());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 43);
    }
}
