//! The consent ticket: what makes `status.consentUrl` the only way into the consent flow. Pure: no
//! I/O, no clock, no randomness (the caller passes the random part in).
//!
//! The controller issues a ticket while a connection needs consent (no refresh token yet, or an
//! unhandled `neoagent.io/reconsent` request) and puts it in `status.consentUrl`
//! (`/oauth/servicenow/start?ticket=<ticket>`); the status also keeps its [`hash`] and expiry
//! (`status.consentTicket`). `/start` accepts a ticket only when
//!
//! 1. it carries a valid MAC under the operator's key and has not expired ([`verify`]: no read
//!    and no write for anything else — junk costs nothing but this check), and
//! 2. the connection it names holds its [`hash`] in `status.consentTicket` and has not used it yet
//!    (one read of the connection), and then records its use (the only write an anonymous caller
//!    can cause, and only with a valid, unused ticket).
//!
//! Format: `t1.<connection>.<random>.<expires>.<mac>`: `<connection>` is `<namespace>/<name>` and
//! `<random>` 32 random bytes, both base64url without padding, `<expires>` Unix seconds, `<mac>`
//! base64url HMAC-SHA256 over the rest. Only `[A-Za-z0-9._-]`, so it travels in a query string as
//! it is.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sha2::{Digest as _, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How long a ticket can be used after the controller issued it; the controller issues a new one
/// when it expires (while the connection still needs consent).
pub const LIFETIME: SignedDuration = SignedDuration::from_hours(1);
/// Bytes of randomness in a ticket.
pub const RANDOM_LEN: usize = 32;
/// Longer tickets are refused before any work.
const MAX_LEN: usize = 1024;
const VERSION: &str = "t1";
/// Domain separation from the consent state and the PKCE verifier, which use the same key.
const LABEL: &[u8] = b"servicenow-operator consent ticket v1\0";

/// A ticket the controller issued.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The ticket itself: goes into `status.consentUrl` and nowhere else.
    pub ticket: String,
    /// Its [`hash`], kept in `status.consentTicket.hash`.
    pub hash: String,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("hash", &self.hash)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Issues a ticket for `connection` (`<namespace>/<name>`) at `now` with the random part `random`
/// (the caller draws it: this module stays pure).
pub fn issue(key: &[u8], connection: &str, random: [u8; RANDOM_LEN], now: Timestamp) -> Issued {
    let expires_at = now.saturating_add(LIFETIME).unwrap_or(now);
    let signed = format!(
        "{VERSION}.{}.{}.{}",
        URL_SAFE_NO_PAD.encode(connection),
        URL_SAFE_NO_PAD.encode(random),
        expires_at.as_second()
    );
    let tag = URL_SAFE_NO_PAD.encode(mac(key, &signed).finalize().into_bytes());
    let ticket = format!("{signed}.{tag}");
    Issued {
        hash: hash(&ticket),
        ticket,
        expires_at,
    }
}

/// The hash the status keeps of `ticket`: base64url(SHA-256(ticket)), no padding. The ticket has
/// 256 random bits, so its hash gives nothing away.
pub fn hash(ticket: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(ticket.as_bytes()))
}

/// Compares two hashes in constant time (for equal lengths).
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Why [`verify`] refused a ticket. The `/start` page never tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a ticket this operator issues (missing, cut short, altered, forged, another key).
    Invalid,
    /// Issued by the operator, but past its lifetime.
    Expired,
}

/// Checks `ticket` at `now`: format, MAC (constant time), expiry. Returns the connection
/// (`<namespace>/<name>`) it names. Whether that connection still holds the ticket is the
/// caller's part.
pub fn verify(key: &[u8], ticket: &str, now: Timestamp) -> Result<String, Refused> {
    if ticket.len() > MAX_LEN {
        return Err(Refused::Invalid);
    }
    let (signed, tag) = ticket.rsplit_once('.').ok_or(Refused::Invalid)?;
    let parts: Vec<&str> = signed.split('.').collect();
    let [version, connection, random, expires] = parts[..] else {
        return Err(Refused::Invalid);
    };
    if version != VERSION {
        return Err(Refused::Invalid);
    }
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Refused::Invalid)?;
    mac(key, signed).verify_slice(&tag).map_err(|_| Refused::Invalid)?;
    if URL_SAFE_NO_PAD.decode(random).map(|r| r.len()) != Ok(RANDOM_LEN) {
        return Err(Refused::Invalid);
    }
    let expires_at = expires
        .parse::<i64>()
        .ok()
        .and_then(|seconds| Timestamp::from_second(seconds).ok())
        .ok_or(Refused::Invalid)?;
    if now >= expires_at {
        return Err(Refused::Expired);
    }
    URL_SAFE_NO_PAD
        .decode(connection)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(Refused::Invalid)
}

fn mac(key: &[u8], signed: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(LABEL);
    mac.update(signed.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn an_issued_ticket_verifies_until_it_expires_and_names_its_connection() {
        let issued = issue(KEY, "itsm/acme", [7; RANDOM_LEN], at(0));
        assert_eq!(issued.expires_at, at(3600));
        assert_eq!(verify(KEY, &issued.ticket, at(3599)), Ok("itsm/acme".to_owned()));
        assert_eq!(verify(KEY, &issued.ticket, at(3600)), Err(Refused::Expired));
        assert!(
            issued
                .ticket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        );
    }

    #[test]
    fn the_hash_is_stable_differs_per_ticket_and_does_not_contain_it() {
        let one = issue(KEY, "itsm/acme", [1; RANDOM_LEN], at(0));
        let two = issue(KEY, "itsm/acme", [2; RANDOM_LEN], at(0));
        assert_eq!(one.hash, hash(&one.ticket));
        assert_ne!(one.hash, two.hash);
        assert!(same_hash(&one.hash, &hash(&one.ticket)));
        assert!(!same_hash(&one.hash, &two.hash));
        assert!(!same_hash(&one.hash, ""));
        assert!(!one.hash.contains(&one.ticket) && !format!("{one:?}").contains(&one.ticket));
        // The debug output shows the hash instead.
        assert!(format!("{one:?}").contains(&one.hash), "{one:?}");
    }

    /// Differences that would cancel out if combined with `^` instead of `|` (`a^b` at both
    /// positions) still make two hashes differ.
    #[test]
    fn hashes_differing_in_several_places_are_not_the_same() {
        assert!(!same_hash("ab", "ba"));
        assert!(same_hash("ab", "ab"));
    }

    /// The length bound refuses only what is longer than [`MAX_LEN`]: a ticket of exactly that
    /// length (for a long connection name) verifies.
    #[test]
    fn a_ticket_of_exactly_the_maximum_length_verifies() {
        let (connection, issued) = (1..MAX_LEN)
            .map(|n| format!("itsm/{}", "a".repeat(n)))
            .map(|connection| {
                let issued = issue(KEY, &connection, [5; RANDOM_LEN], at(0));
                (connection, issued)
            })
            .find(|(_, issued)| issued.ticket.len() == MAX_LEN)
            .expect("some connection name gives a ticket of the maximum length");
        assert_eq!(verify(KEY, &issued.ticket, at(1)), Ok(connection));
    }

    #[test]
    fn forged_altered_and_malformed_tickets_are_invalid() {
        let issued = issue(KEY, "itsm/acme", [3; RANDOM_LEN], at(0));
        let parts: Vec<&str> = issued.ticket.split('.').collect();
        let other = issue(KEY, "itsm/other", [3; RANDOM_LEN], at(0));
        let spliced = [
            parts[0],
            other.ticket.split('.').nth(1).unwrap(),
            parts[2],
            parts[3],
            parts[4],
        ]
        .join(".");
        let later = [parts[0], parts[1], parts[2], "1900000000", parts[4]].join(".");
        let foreign = issue(b"another key", "itsm/acme", [3; RANDOM_LEN], at(0)).ticket;
        let long = "a".repeat(MAX_LEN + 1);
        for ticket in [
            "",
            "x",
            "itsm/acme",
            "t1.a.b.c.d",
            spliced.as_str(),
            later.as_str(),
            foreign.as_str(),
            long.as_str(),
            &issued.ticket.replacen("t1.", "t2.", 1),
            &format!("{}x", issued.ticket),
        ] {
            assert_eq!(verify(KEY, ticket, at(1)), Err(Refused::Invalid), "{ticket:?}");
        }
    }
}
