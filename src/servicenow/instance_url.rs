//! `InstanceUrl`: the address of a ServiceNow instance, checked against the same rules the CRD
//! enforces with CEL (`crate::api` carries those rules as expressions; a test runs one table of
//! cases through both and requires them to agree).

use std::fmt;

/// The two domains ServiceNow serves customer instances from.
pub const ALLOWED_DOMAINS: [&str; 2] = ["service-now.com", "servicenowservices.com"];

/// The longest host name DNS can carry (RFC 1035 §2.3.4, without the root's trailing dot).
const MAX_HOST_LEN: usize = 253;

/// The first words of every rejection, as the product's troubleshooting text names it.
pub const RULE_PREFIX: &str = "instance_url must be a service-now.com or servicenowservices.com domain";

/// One rule an instance URL must satisfy. The order is the order of checking; the first rule
/// that fails is the one reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlRule {
    /// The scheme is `https://`.
    HttpsScheme,
    /// Printable ASCII only: no whitespace, no non-ASCII characters.
    PrintableAscii,
    /// No `user@` before the host.
    NoUserInfo,
    /// No `:port` after the host.
    NoPort,
    /// Nothing after the host: no path, not even a trailing slash.
    NoPath,
    /// No `?query`.
    NoQuery,
    /// No `#fragment`.
    NoFragment,
    /// The host is at most 253 characters, the longest name DNS can carry.
    HostLength,
    /// The host is written in lower case.
    LowerCaseHost,
    /// No punycode (`xn--`) labels.
    NoPunycode,
    /// The host is a subdomain of one of [`ALLOWED_DOMAINS`].
    AllowedDomain,
}

impl UrlRule {
    /// Every rule, in checking order.
    pub const ALL: [UrlRule; 11] = [
        UrlRule::HttpsScheme,
        UrlRule::PrintableAscii,
        UrlRule::NoUserInfo,
        UrlRule::NoPort,
        UrlRule::NoPath,
        UrlRule::NoQuery,
        UrlRule::NoFragment,
        UrlRule::HostLength,
        UrlRule::LowerCaseHost,
        UrlRule::NoPunycode,
        UrlRule::AllowedDomain,
    ];

    /// What the rule demands and how to fix the value, in one clause.
    pub fn explanation(self) -> &'static str {
        match self {
            UrlRule::HttpsScheme => "the scheme must be https:// (write https://<instance>.service-now.com)",
            UrlRule::PrintableAscii => {
                "only printable ASCII is allowed: remove whitespace, newlines and non-ASCII characters"
            }
            UrlRule::NoUserInfo => "user info (anything@) is not allowed before the host",
            UrlRule::NoPort => "a port is not allowed: ServiceNow serves instances on 443 only",
            UrlRule::NoPath => "give the bare host: no path and no trailing slash (https://<instance>.service-now.com)",
            UrlRule::NoQuery => "a query string (?...) is not allowed",
            UrlRule::NoFragment => "a fragment (#...) is not allowed",
            UrlRule::HostLength => "the host is longer than 253 characters, the most a DNS name can have",
            UrlRule::LowerCaseHost => "write the host in lower case",
            UrlRule::NoPunycode => "punycode (xn--) labels are not allowed: instance names are plain ASCII",
            UrlRule::AllowedDomain => {
                "the host must be <instance>.service-now.com or <instance>.servicenowservices.com; vanity hosts, IP addresses and the bare domains are not allowed"
            }
        }
    }

    /// The full rejection message: the product's rule text plus which rule failed.
    pub fn message(self) -> String {
        format!("{RULE_PREFIX}: {}", self.explanation())
    }

    fn holds(self, url: &str) -> bool {
        let rest = url.strip_prefix("https://");
        // The host is what follows the scheme, up to the first '/', '?' or '#'.
        let host = rest.map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        match self {
            UrlRule::HttpsScheme => rest.is_some(),
            UrlRule::PrintableAscii => url.bytes().all(|b| b.is_ascii_graphic()),
            UrlRule::NoUserInfo => !url.contains('@'),
            UrlRule::NoPort => !host.is_some_and(|h| h.contains(':')),
            UrlRule::NoPath => !rest.is_some_and(|r| r.contains('/')),
            UrlRule::NoQuery => !url.contains('?'),
            UrlRule::NoFragment => !url.contains('#'),
            UrlRule::HostLength => host.is_none_or(|h| h.len() <= MAX_HOST_LEN),
            UrlRule::LowerCaseHost => !host.is_some_and(|h| h.bytes().any(|b| b.is_ascii_uppercase())),
            UrlRule::NoPunycode => !host.is_some_and(|h| h.split('.').any(|l| l.starts_with("xn--"))),
            UrlRule::AllowedDomain => rest.is_some_and(is_allowed_host),
        }
    }

    /// The CEL expression the CRD carries for this rule (`self` is the `instanceUrl` string).
    /// Kept next to [`UrlRule::holds`] so the two are read and changed together.
    pub fn cel(self) -> &'static str {
        match self {
            UrlRule::HttpsScheme => "self.startsWith('https://')",
            UrlRule::PrintableAscii => "self.matches('^[!-~]*$')",
            UrlRule::NoUserInfo => "!self.contains('@')",
            UrlRule::NoPort => "!self.matches('^https://[^/?#]*:')",
            UrlRule::NoPath => "!self.matches('^https://.*/')",
            UrlRule::NoQuery => "!self.contains('?')",
            UrlRule::NoFragment => "!self.contains('#')",
            UrlRule::HostLength => "!self.matches('^https://[^/?#]{254}')",
            UrlRule::LowerCaseHost => "!self.matches('^https://[^/?#]*[A-Z]')",
            UrlRule::NoPunycode => "!self.matches('^https://([^/?#]*\\\\.)?xn--')",
            UrlRule::AllowedDomain => {
                "self.matches('^https://([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\\\.)+(service-now|servicenowservices)\\\\.com$')"
            }
        }
    }
}

/// `true` when `host` is one or more DNS labels followed by an allowed domain.
fn is_allowed_host(host: &str) -> bool {
    ALLOWED_DOMAINS.iter().any(|domain| {
        host.strip_suffix(domain)
            .and_then(|prefix| prefix.strip_suffix('.'))
            .is_some_and(|labels| labels.split('.').all(is_dns_label))
    })
}

/// A lower-case DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// The rule an instance URL broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .rule.message())]
pub struct InvalidInstanceUrl {
    /// The first rule, in checking order, that the value breaks.
    pub rule: UrlRule,
}

/// A ServiceNow instance address that satisfies every [`UrlRule`]: `https://<host>`, nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InstanceUrl {
    url: String,
}

impl InstanceUrl {
    /// Checks `value` against every rule, in order.
    pub fn parse(value: &str) -> Result<Self, InvalidInstanceUrl> {
        match UrlRule::ALL.into_iter().find(|rule| !rule.holds(value)) {
            Some(rule) => Err(InvalidInstanceUrl { rule }),
            None => Ok(InstanceUrl { url: value.to_owned() }),
        }
    }

    /// The host name, e.g. `acme.service-now.com`.
    pub fn host(&self) -> &str {
        &self.url["https://".len()..]
    }

    /// The URL as written, e.g. `https://acme.service-now.com`.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL of `path` on this instance; `path` starts with `/`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl fmt::Display for InstanceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
pub(crate) mod cases;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_of_the_shared_table_gets_its_expected_verdict() {
        for case in cases::CASES {
            let verdict = InstanceUrl::parse(case.url).err().map(|e| e.rule);
            assert_eq!(verdict, case.rejected_by, "instance URL {:?}", case.url);
        }
    }

    #[test]
    fn the_message_names_the_product_rule_and_the_failed_rule() {
        let err = InstanceUrl::parse("http://acme.service-now.com").unwrap_err();
        assert_eq!(
            err.to_string(),
            "instance_url must be a service-now.com or servicenowservices.com domain: the scheme must be https:// (write https://<instance>.service-now.com)"
        );
    }

    #[test]
    fn the_host_is_what_follows_the_scheme() {
        let url = InstanceUrl::parse("https://acme.service-now.com").unwrap();
        assert_eq!(url.host(), "acme.service-now.com");
        assert_eq!(url.as_str(), "https://acme.service-now.com");
        assert_eq!(url.to_string(), "https://acme.service-now.com");
        assert_eq!(
            url.join("/oauth_token.do"),
            "https://acme.service-now.com/oauth_token.do"
        );
    }
}
