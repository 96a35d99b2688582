//! A connection's key in the operator's per-connection maps, URLs and metrics labels:
//! `namespace/name`.

use kube::ResourceExt;

use super::ServiceNowConnection;

/// The key of a connection in the per-connection maps: `namespace/name`.
pub fn key(connection: &ServiceNowConnection) -> String {
    format!(
        "{}/{}",
        connection.namespace().unwrap_or_default(),
        connection.name_any()
    )
}

/// A connection's `namespace/name` split in two, when both are names the API server could hold
/// (DNS-1123: lower-case letters, digits, `-` and `.`, starting and ending with a letter or
/// digit, at most 253); anything else names no connection and is never sent to the API server.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    let is_name = |part: &str| {
        part.len() <= 253
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    key.split_once('/')
        .filter(|(namespace, name)| is_name(namespace) && is_name(name))
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn a_key_splits_into_a_namespace_and_a_name_the_api_server_could_hold() {
        assert_eq!(split_key("itsm/acme"), Some(("itsm", "acme")));
        assert_eq!(split_key("t-1/acme.prod-2"), Some(("t-1", "acme.prod-2")));
        for refused in [
            "",
            "acme",
            "/acme",
            "itsm/",
            "itsm/acme/x",
            "itsm/Acme",
            "itsm/a b",
            "../acme",
            "itsm/-a",
            "itsm/a?b",
        ] {
            assert_eq!(split_key(refused), None, "{refused:?}");
        }
        assert_eq!(split_key(&format!("itsm/{}", "a".repeat(254))), None);
    }
}
