//! Who owns an instance's webhook: the callback property's value names its connection and the
//! operator it belongs to (`<public url>/callback/servicenow?connection=<ns>/<name>#key=…`, the
//! part after `#` being the signing key the rule uses and never sends).

use std::fmt;

use url::Url;

use crate::{
    api::paths::WEBHOOK as CALLBACK_PATH,
    servicenow::{SecretString, records::SystemProperty},
};

/// A connection, as the owner of an instance's webhook: the operator's public URL and the
/// connection's `<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The operator's public URL (a trailing `/` is not significant).
    pub public_url: String,
    /// `<namespace>/<name>` of the connection.
    pub connection: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection {} of the operator at {}",
            self.connection,
            self.public_url.trim_end_matches('/')
        )
    }
}

impl Owner {
    /// The owner a callback URL names, when it is one the operator makes.
    pub fn of_callback(value: &str) -> Option<Owner> {
        let url = Url::parse(value).ok()?;
        let base = url.path().strip_suffix(CALLBACK_PATH)?;
        let connection = url.query_pairs().find(|(key, _)| key == "connection")?.1.into_owned();
        Some(Owner {
            public_url: format!("{}{base}", url.origin().ascii_serialization()),
            connection,
        })
    }

    /// `true` when `value` is a callback URL of this owner.
    pub fn owns(&self, value: &str) -> bool {
        Owner::of_callback(value).is_some_and(|other| other.same_as(self))
    }

    fn same_as(&self, other: &Owner) -> bool {
        self.connection == other.connection && normalized(&self.public_url) == normalized(&other.public_url)
    }
}

/// A public URL compared by origin and path, without a trailing `/`.
fn normalized(public_url: &str) -> String {
    match Url::parse(public_url) {
        Ok(url) => format!(
            "{}{}",
            url.origin().ascii_serialization(),
            url.path().trim_end_matches('/')
        ),
        Err(_) => public_url.trim_end_matches('/').to_owned(),
    }
}

/// What separates the callback URL from the signing key in the property's value.
const KEY_MARK: &str = "#key=";

/// The property value of a callback URL and the connection's signing key: the URL, `#key=`, and
/// the key's bytes in standard Base64 (what `GlideCertificateEncryption.generateMac` takes,
/// servicenow-api.md §3.6). The rule sends only the part before `#`.
pub fn signed_callback(callback_url: &str, key: &SecretString) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(key.expose());
    format!("{callback_url}{KEY_MARK}{key}")
}

/// The signing key a callback property's value carries (after `#key=`), or the webhook token of
/// the form older versions wrote (`&token=` in the query).
fn key_of(value: &str) -> Option<String> {
    use base64::Engine as _;
    if let Some((_, key)) = value.split_once(KEY_MARK) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
        return String::from_utf8(bytes).ok();
    }
    let url = Url::parse(value).ok()?;
    url.query_pairs()
        .find(|(key, _)| key == "token")
        .map(|(_, token)| token.into_owned())
}

/// Another owner named by any of the callback `properties`, if one is. A value that is empty or
/// not a callback URL of this operator's shape names nobody (it is simply repaired). A value that
/// carries `token`, the connection's own signing key, is the connection's whatever public URL it
/// names: only this connection knows its key, so its operator moved (`--public-url` changed)
/// and the value is simply updated.
pub fn claimed_by_other(properties: &[SystemProperty], owner: &Owner, token: Option<&SecretString>) -> Option<Owner> {
    properties
        .iter()
        .map(|property| property.fields.value.as_str())
        .filter(|value| token.is_none_or(|token| key_of(value).as_deref() != Some(token.expose())))
        .filter_map(Owner::of_callback)
        .find(|other| !other.same_as(owner))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::servicenow::records::SystemPropertyFields;

    /// The owner the tests of this module and its neighbours use: `itsm/acme` behind
    /// `https://neo.example.com/`.
    pub(in crate::provision) fn owner() -> Owner {
        Owner {
            public_url: "https://neo.example.com/".into(),
            connection: "itsm/acme".into(),
        }
    }

    fn property(value: &str) -> SystemProperty {
        SystemProperty {
            sys_id: "p1".into(),
            sys_created_on: String::new(),
            fields: SystemPropertyFields {
                value: value.into(),
                ..SystemPropertyFields::default()
            },
        }
    }

    #[test]
    fn a_callback_url_names_its_operator_and_connection() {
        let value = "https://neo.example.com/callback/servicenow?connection=itsm%2Facme&token=t";
        assert_eq!(
            Owner::of_callback(value),
            Some(Owner {
                public_url: "https://neo.example.com".into(),
                connection: "itsm/acme".into()
            })
        );
        assert!(owner().owns(value));
        assert!(owner().owns("https://neo.example.com/callback/servicenow?connection=itsm/acme&token=other"));
    }

    #[test]
    fn a_public_url_with_a_path_keeps_it() {
        let value = "https://example.com/neo/callback/servicenow?token=t&connection=itsm%2Facme";
        let base = Owner {
            public_url: "https://example.com/neo/".into(),
            connection: "itsm/acme".into(),
        };
        assert!(base.owns(value));
        assert!(!owner().owns(value));
    }

    #[test]
    fn another_connection_or_another_operator_is_another_owner() {
        assert!(!owner().owns("https://neo.example.com/callback/servicenow?connection=itsm%2Fother&token=t"));
        assert!(!owner().owns("https://other.example.com/callback/servicenow?connection=itsm%2Facme&token=t"));
    }

    #[test]
    fn the_property_is_claimed_only_by_a_recognisable_other_owner() {
        assert_eq!(claimed_by_other(&[], &owner(), None), None);
        assert_eq!(claimed_by_other(&[property("")], &owner(), None), None);
        assert_eq!(
            claimed_by_other(&[property("https://hand.example.com/hook")], &owner(), None),
            None
        );
        let mine = property("https://neo.example.com/callback/servicenow?connection=itsm%2Facme&token=t");
        assert_eq!(claimed_by_other(std::slice::from_ref(&mine), &owner(), None), None);
        let theirs = property("https://other.example.com/callback/servicenow?connection=ops%2Fsn&token=t");
        let other = claimed_by_other(&[mine, theirs], &owner(), None).unwrap();
        assert_eq!(
            other.to_string(),
            "connection ops/sn of the operator at https://other.example.com"
        );
    }

    #[test]
    fn the_signed_value_carries_the_key_in_base64_after_the_url() {
        let key = SecretString::new("s3cret-token");
        let value = signed_callback(
            "https://neo.example.com/callback/servicenow?connection=itsm%2Facme",
            &key,
        );
        assert_eq!(
            value,
            "https://neo.example.com/callback/servicenow?connection=itsm%2Facme#key=czNjcmV0LXRva2Vu"
        );
        assert_eq!(key_of(&value).as_deref(), Some("s3cret-token"));
        assert!(owner().owns(&value));
        assert_eq!(
            key_of("https://neo.example.com/callback/servicenow#key=not base64"),
            None
        );
        assert_eq!(
            key_of("https://neo.example.com/callback/servicenow?connection=a%2Fb"),
            None
        );
    }

    #[test]
    fn a_value_with_the_connections_own_key_is_its_own_after_the_operator_moved() {
        let token = SecretString::new("s3cret-token");
        let old = "https://old.example.com/callback/servicenow?connection=itsm%2Facme";
        for moved in [
            property(&signed_callback(old, &token)),
            property(&format!("{old}&token=s3cret-token")),
        ] {
            assert_eq!(
                claimed_by_other(std::slice::from_ref(&moved), &owner(), Some(&token)),
                None
            );
        }
        let moved = property(&signed_callback(old, &token));
        let other_token = SecretString::new("another-token");
        let claimed = claimed_by_other(std::slice::from_ref(&moved), &owner(), Some(&other_token)).unwrap();
        assert_eq!(claimed.public_url, "https://old.example.com");
        assert_eq!(claimed_by_other(&[moved], &owner(), None).unwrap(), claimed);
    }
}
