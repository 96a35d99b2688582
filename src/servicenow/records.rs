//! The records the operator reads and writes, as plain structs (the Table API sends every value
//! as a string; booleans arrive as `"true"` / `"false"`).

use std::time::Duration;

use super::SecretString;

/// A Business Rule (`sys_script`) as read from the instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusinessRule {
    /// The record's `sys_id`.
    pub sys_id: String,
    /// `sys_created_on`, `YYYY-MM-DD HH:MM:SS` UTC (to keep the oldest of duplicates).
    pub sys_created_on: String,
    /// The rule's content.
    pub fields: BusinessRuleFields,
}

/// The fields of a Business Rule the operator manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusinessRuleFields {
    /// `name`.
    pub name: String,
    /// `collection`: the table the rule runs on.
    pub collection: String,
    /// `when`: `before`, `after`, `async` or `display`.
    pub when: String,
    /// `order`.
    pub order: String,
    /// `active`.
    pub active: bool,
    /// `advanced`.
    pub advanced: bool,
    /// `action_insert`.
    pub action_insert: bool,
    /// `action_update`.
    pub action_update: bool,
    /// `action_delete`.
    pub action_delete: bool,
    /// `action_query`.
    pub action_query: bool,
    /// `filter_condition` (an encoded query; empty: always).
    pub filter_condition: String,
    /// `description`.
    pub description: String,
    /// `script`.
    pub script: String,
}

/// A System Property (`sys_properties`) as read from the instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemProperty {
    /// The record's `sys_id`.
    pub sys_id: String,
    /// `sys_created_on`.
    pub sys_created_on: String,
    /// The property's content.
    pub fields: SystemPropertyFields,
}

/// The fields of a System Property the operator manages. `Debug` hides the value of any
/// `token` query parameter in `value` (the callback URL carries the webhook token).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SystemPropertyFields {
    /// `name`, e.g. `x_neoagent.callback_url`.
    pub name: String,
    /// `value`.
    pub value: String,
    /// `type`, e.g. `string`.
    pub property_type: String,
    /// `description`.
    pub description: String,
    /// `is_private`: kept out of update sets (and so out of what moves between instances that
    /// way).
    pub is_private: bool,
}

impl std::fmt::Debug for SystemPropertyFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemPropertyFields")
            .field("name", &self.name)
            .field("value", &redact_token(&self.value))
            .field("property_type", &self.property_type)
            .field("description", &self.description)
            .field("is_private", &self.is_private)
            .finish()
    }
}

/// `value` with its fragment (the signing key after `#`) and the value of every `token=` query
/// parameter (the form older versions wrote) replaced by `[redacted]`.
pub fn redact_token(value: &str) -> String {
    if let Some((url, _)) = value.split_once('#') {
        return format!("{}#[redacted]", redact_token(url));
    }
    let Some((head, query)) = value.split_once('?') else {
        return value.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("token", _)) => "token=[redacted]".to_owned(),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

/// A user (`sys_user`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// `sys_id`.
    pub sys_id: String,
    /// `user_name`, e.g. `neo.agent`.
    pub user_name: String,
    /// `user_display_name`: the display name (empty when the instance sends none).
    pub display_name: String,
}

/// What one instance holds of the connection's webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceRecords {
    /// The Business Rules named like the current or the legacy rule, oldest first.
    pub rules: Vec<BusinessRule>,
    /// The callback properties, oldest first.
    pub properties: Vec<SystemProperty>,
}

/// The reads of a drift check: which of `roles` the user `user_sys_id` holds, and the Business
/// Rules named any of `rule_names` and the System Properties named `property_name`.
#[derive(Clone, Copy, Debug)]
pub struct Lookup<'a> {
    /// The user whose roles are checked.
    pub user_sys_id: &'a str,
    /// The role names asked for.
    pub roles: &'a [&'a str],
    /// The Business Rule names looked up.
    pub rule_names: &'a [&'a str],
    /// The System Property name looked up.
    pub property_name: &'a str,
}

/// What a [`Lookup`] found: each part as its own read would have answered.
#[derive(Debug)]
pub struct Found {
    /// The roles held (sorted, without duplicates), or why they could not be read.
    pub roles: Result<Vec<String>, super::Error>,
    /// The webhook records; `None` when they were not read (the roles' read failed first).
    pub records: Option<Result<InstanceRecords, super::Error>>,
}

/// What the token endpoint granted.
#[derive(Clone, Debug)]
pub struct TokenGrant {
    /// The access token.
    pub access_token: SecretString,
    /// The refresh token, when the answer carried one.
    pub refresh_token: Option<SecretString>,
    /// `expires_in`: how long the access token lives from now.
    pub expires_in: Duration,
}

/// An OAuth application's client credentials.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    /// The Application Registry's Client ID.
    pub client_id: SecretString,
    /// The Application Registry's Client Secret.
    pub client_secret: SecretString,
}

impl ClientCredentials {
    /// A one-way hash of both values, kept in status to notice a rotation. Reveals nothing of
    /// the values: SHA-256 over a domain-separated encoding, first 16 bytes in hex.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(b"servicenow-operator/credentials/v1\0");
        hash.update(self.client_id.expose().as_bytes());
        hash.update(b"\0");
        hash.update(self.client_secret.expose().as_bytes());
        hash.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_token_in_a_property_value_is_not_shown_by_debug() {
        let fields = SystemPropertyFields {
            name: "x_neoagent.callback_url".into(),
            value: "https://neo.example.com/callback/servicenow?connection=itsm/acme&token=s3cret#x".into(),
            property_type: "string".into(),
            description: String::new(),
            is_private: true,
        };
        let shown = format!("{fields:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("connection=itsm/acme&token=[redacted]#[redacted]"),
            "{shown}"
        );
        let signed = SystemPropertyFields {
            value: "https://neo.example.com/callback/servicenow?connection=itsm%2Facme#key=czNjcmV0".into(),
            ..fields
        };
        let shown = format!("{signed:?}");
        assert!(!shown.contains("czNjcmV0"), "{shown}");
        assert!(shown.contains("connection=itsm%2Facme#[redacted]"), "{shown}");
    }

    #[test]
    fn credentials_and_grants_show_no_secret_in_debug() {
        let credentials = ClientCredentials {
            client_id: SecretString::new("cid"),
            client_secret: SecretString::new("cs"),
        };
        let grant = TokenGrant {
            access_token: SecretString::new("access-value"),
            refresh_token: Some(SecretString::new("refresh-value")),
            expires_in: Duration::from_secs(1),
        };
        let shown = format!("{credentials:?} {grant:?}");
        for secret in ["cid", "\"cs\"", "access-value", "refresh-value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
