//! Fuzzing of the parsers that read what strangers write: the instance URL (`spec.instanceUrl`),
//! the encoded-query builder (values that reach `sysparm_query`), the webhook body and its
//! signature headers, and the consent state and ticket (query strings of the public listener).
//!
//! Engine: [`arbtest`] over the `arbitrary` crate, on the stable toolchain (cargo-fuzz needs
//! nightly and a libFuzzer build; these targets are plain properties, so a coverage-guided engine
//! can drive the same functions later). Each target runs a fixed number of iterations, each from a
//! seed derived from `FUZZ_SEED` and the iteration number, so a run is reproducible: `make test`
//! runs 2,000 iterations per target from the fixed seed; `make fuzz` runs `FUZZ_ITERATIONS`
//! (default 200,000) from a seed it prints. A failure prints the arbtest seed of the failing input
//! (`ARBTEST_SEED=<seed> cargo test --test fuzz <target>` replays it).
//!
//! Every property checks more than "does not panic": what a parser accepts must satisfy the rules
//! it stands for, and what a signer makes must check exactly under its own key.

use arbtest::arbitrary::{self, Unstructured};
use k8s_openapi::jiff::Timestamp;
use servicenow_operator::{
    http::consent_state::{self, StateError},
    servicenow::{InstanceUrl, SecretString, query::EncodedQuery},
    ticket,
    webhook::{
        event,
        signature::{self, Signed},
    },
};

/// Runs `property` for `FUZZ_ITERATIONS` seeds (default 2,000) derived from `FUZZ_SEED`.
fn fuzz(mut property: impl FnMut(&mut Unstructured<'_>) -> arbitrary::Result<()>) {
    let iterations: u64 = env_number("FUZZ_ITERATIONS").unwrap_or(2_000);
    let base = env_number("FUZZ_SEED").unwrap_or(0x5e71_ce0f_5eed);
    for iteration in 0..iterations {
        let mixed = splitmix64(base ^ iteration);
        // arbtest's seed: the high half seeds its generator (never 0), the low half is how many
        // random bytes the input gets — from a few to 16 KiB, small ones more often.
        let random = (mixed >> 32).max(1);
        let size = (8 + mixed as u32 % 16_384) >> (iteration % 4 * 2);
        arbtest::arbtest(&mut property)
            .seed(random << 32 | u64::from(size))
            .run();
    }
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A string that is often nearly an instance URL: pieces of valid and invalid ones, put together.
fn url_like(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    if u.ratio(1, 4)? {
        return u.arbitrary();
    }
    let scheme = *u.choose(&[
        "https://",
        "https://",
        "http://",
        "HTTPS://",
        "",
        "https:/",
        " https://",
    ])?;
    let mut url = String::from(scheme);
    if u.ratio(1, 6)? {
        // Long names of valid labels, around the 253 characters DNS allows.
        let label = "d".repeat(u.int_in_range(40..=63)?);
        url.push_str(&vec![label; u.int_in_range(3..=5)?].join("."));
        url.push('.');
    }
    for index in 0..u.int_in_range(1..=4)? {
        if index > 0 {
            url.push('.');
        }
        let label = *u.choose(&[
            "acme",
            "dev12345",
            "a",
            "xn--acm-bma",
            "-x",
            "x-",
            "ACME",
            "é",
            "[::1]",
            "eu",
        ])?;
        let repeat = if u.ratio(1, 8)? { u.int_in_range(1..=70)? } else { 1 };
        url.push_str(&label.repeat(repeat));
    }
    url.push_str(u.choose(&[
        ".service-now.com",
        ".servicenowservices.com",
        ".service-now.com.",
        ".SERVICE-NOW.com",
        ".service-now.com.evil.example",
        ".evil.example",
        "service-now.com",
        "",
    ])?);
    url.push_str(u.choose(&[
        "",
        "",
        "",
        "/",
        ":443",
        "?x=1",
        "#f",
        "@evil.example",
        " ",
        "\n",
        "/now",
    ])?);
    Ok(url)
}

/// What an accepted instance URL must be, checked independently of the parser's own rules.
fn is_plain_instance_url(url: &str) -> bool {
    let Some(host) = url.strip_prefix("https://") else {
        return false;
    };
    let domain_ok = [".service-now.com", ".servicenowservices.com"]
        .iter()
        .any(|domain| host.strip_suffix(domain).is_some_and(|labels| !labels.is_empty()));
    let labels_ok = host.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && !label.starts_with("xn--")
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    domain_ok && labels_ok && host.len() <= 253
}

#[test]
fn instance_url_accepts_only_plain_instance_hosts_and_names_a_rule_otherwise() {
    fuzz(|u| {
        let text = url_like(u)?;
        match InstanceUrl::parse(&text) {
            Ok(url) => {
                assert!(is_plain_instance_url(&text), "accepted {text:?}");
                assert_eq!(url.as_str(), text);
                assert_eq!(format!("https://{}", url.host()), text);
            }
            Err(error) => {
                assert!(!is_plain_instance_url(&text), "refused {text:?}: {error}");
                assert_eq!(error.to_string(), error.rule.message());
            }
        }
        Ok(())
    });
}

#[test]
fn a_duration_parses_only_from_whole_units_and_never_overflows() {
    fuzz(|u| {
        // Long well-formed sums (src/api/duration.rs's unit tests hold the one long enough to
        // overflow, 13 MB), or pieces put together at random.
        let mut text = "4294967295h".repeat(if u.ratio(1, 3)? { u.int_in_range(1..=2_000)? } else { 0 });
        for _ in 0..u.int_in_range(0..=40)? {
            text.push_str(u.choose(&["4294967295", "1", "0", "90", "h", "m", "s", "ms", "d", " ", "-", "."])?);
        }
        let parsed = servicenow_operator::api::duration::parse(&text);
        let well_formed = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit() || b"hms".contains(&b))
            && text.as_bytes()[0].is_ascii_digit()
            && !text.as_bytes()[text.len() - 1].is_ascii_digit();
        if parsed.is_ok() {
            assert!(well_formed, "accepted {text:?}");
        }
        if let Err(message) = parsed {
            assert!(
                message.ends_with("is not a duration such as 90s, 10m or 1h30m"),
                "{message}"
            );
        }
        Ok(())
    });
}

/// A field name or value that is often close to what an encoded query treats specially.
fn query_part(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let mut part = String::new();
    for _ in 0..u.int_in_range(0..=4)? {
        part.push_str(u.choose(&[
            "name",
            "x_neoagent",
            ".",
            "_",
            "^",
            "^OR",
            "^NQ",
            "=",
            "javascript:",
            " JavaScript:",
            "ORDERBY",
            "a b",
            ",",
            "é",
            "\u{0}",
        ])?);
    }
    if u.ratio(1, 4)? {
        part.push_str(&u.arbitrary::<String>()?);
    }
    Ok(part)
}

#[test]
fn an_encoded_query_holds_exactly_the_conditions_it_was_given() {
    fuzz(|u| {
        let mut query = EncodedQuery::new();
        let mut conditions = 0;
        for _ in 0..u.int_in_range(1..=3)? {
            let field = query_part(u)?;
            let values: Vec<String> = (0..u.int_in_range(0..=3)?)
                .map(|_| query_part(u))
                .collect::<Result<_, _>>()?;
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let plain_field = field.split('.').all(|p| !p.is_empty())
                && field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            let safe_values = !values.is_empty()
                && values.iter().all(|value| {
                    !value.contains('^') && !value.trim_start().to_ascii_lowercase().starts_with("javascript:")
                });
            match query.clone().any_of(&field, &values) {
                Ok(longer) => {
                    assert!(plain_field && safe_values, "accepted {field:?} = {values:?}");
                    conditions += values.len();
                    query = longer;
                }
                Err(error) => assert!(!(plain_field && safe_values), "refused {field:?} = {values:?}: {error}"),
            }
        }
        // Each condition is one `^`-separated part: no value added or removed one.
        let parts = if query.as_str().is_empty() {
            0
        } else {
            query.as_str().split('^').count()
        };
        assert_eq!(parts, conditions, "query {:?}", query.as_str());
        Ok(())
    });
}

/// A body that is often nearly a webhook event: JSON objects with the event's fields, of the
/// right and wrong types, nested, duplicated, cut short, or raw bytes.
fn body_like(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    if u.ratio(1, 5)? {
        return u.arbitrary();
    }
    let mut body = String::from("{");
    for index in 0..u.int_in_range(0..=8)? {
        if index > 0 {
            body.push(',');
        }
        let field = if u.ratio(1, 9)? {
            "other"
        } else {
            *u.choose(&event::FIELDS)?
        };
        let value = match u.int_in_range(0..=9)? {
            0 => "\"incident\"".to_owned(),
            1 => "\"0123456789abcdef0123456789abcdef\"".to_owned(),
            2 => format!("\"{}\"", u.choose(&["insert", "update", "delete", "INSERT", ""])?),
            3 => "\"2026-12-04 17:00:00\"".to_owned(),
            4 => "null".to_owned(),
            5 => u.arbitrary::<i64>()?.to_string(),
            6 => "[".repeat(u.int_in_range(1..=1_000)?),
            7 => serde_json::to_string(&u.arbitrary::<String>()?).unwrap_or_default(),
            8 => "{\"a\":{\"b\":[]}}".to_owned(),
            _ => "\"\\ud800\"".to_owned(),
        };
        body.push_str(&format!("\"{field}\":{value}"));
    }
    if !u.ratio(1, 10)? {
        body.push('}');
    }
    Ok(body.into_bytes())
}

#[test]
fn a_webhook_body_parses_only_into_an_event_that_keeps_the_rules() {
    fuzz(|u| {
        let body = body_like(u)?;
        match event::parse(&body) {
            Ok(parsed) => {
                let hex32 = |text: &str| text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
                assert!(hex32(&parsed.sys_id));
                assert!(parsed.id.as_deref().is_none_or(hex32));
                assert!(!parsed.table.is_empty());
                assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
            }
            Err(error) => {
                let message = error.to_string();
                assert!(!message.is_empty());
                // The reason names a field or the JSON position, never the body's text.
                assert!(message.len() < 300, "{message}");
            }
        }
        Ok(())
    });
}

#[test]
fn a_signature_checks_under_its_own_key_over_its_own_body_only() {
    fuzz(|u| {
        let key = SecretString::new(u.arbitrary::<String>()?);
        let other = SecretString::new(format!("{}x", key.expose()));
        let millis = u.int_in_range(0..=i64::MAX / 2)?;
        let timestamp = millis.to_string();
        let body: Vec<u8> = u.arbitrary()?;
        let header = signature::sign(&key, &timestamp, &body);
        let signed = Signed::parse(Some(&timestamp), Some(&header)).expect("the signer's own headers parse");
        assert!(signed.made_by_one_of([&key].into_iter(), &body));
        assert!(!signed.made_by_one_of([&other].into_iter(), &body));
        assert!(signed.made_by_one_of([&other, &key].into_iter(), &body));
        assert_eq!(signed.check_time(millis), Ok(()));
        assert!(signed.check_time(millis.saturating_add(5 * 60 * 1000 + 1)).is_err());
        if !body.is_empty() {
            let mut changed = body.clone();
            let at = u.choose_index(changed.len())?;
            changed[at] ^= 1 << u.int_in_range(0..=7)?;
            assert!(!signed.made_by_one_of([&key].into_iter(), &changed));
        }
        // Headers from anyone else: parse or refuse, never panic; a parsed junk tag never checks.
        let junk_timestamp: String = u.arbitrary()?;
        let junk_signature = format!("{}{}", u.choose(&["v1=", "", "v2="])?, u.arbitrary::<String>()?);
        if let Ok(junk) = Signed::parse(Some(&junk_timestamp), Some(&junk_signature))
            && junk_signature != signature::sign(&key, &junk_timestamp, &body)
        {
            assert!(!junk.made_by_one_of([&key].into_iter(), &body));
        }
        Ok(())
    });
}

/// `text` with one character replaced, inserted or removed.
fn mutated(u: &mut Unstructured<'_>, text: &str) -> arbitrary::Result<String> {
    let mut chars: Vec<char> = text.chars().collect();
    let at = u.choose_index(chars.len())?;
    match u.int_in_range(0..=2)? {
        0 => chars[at] = if chars[at] == 'A' { 'B' } else { 'A' },
        1 => chars.insert(at, *u.choose(&['.', 'A', '-', '_', '%'])?),
        _ => {
            chars.remove(at);
        }
    }
    Ok(chars.into_iter().collect())
}

fn instant(u: &mut Unstructured<'_>) -> arbitrary::Result<Timestamp> {
    Ok(Timestamp::from_second(u.int_in_range(0..=4_000_000_000)?).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[test]
fn a_consent_state_verifies_only_as_minted_under_its_key_and_in_time() {
    fuzz(|u| {
        let key: [u8; 32] = u.arbitrary()?;
        let now = instant(u)?;
        let connection = format!("{}/{}", u.arbitrary::<String>()?, u.arbitrary::<String>()?);
        let uid: String = u.arbitrary()?;
        let minted = consent_state::mint(&key, &connection, &uid, now);
        let verified = consent_state::verify(&key, &minted.state, now).expect("a fresh state verifies");
        assert_eq!(
            (verified.connection.as_str(), verified.uid.as_str()),
            (connection.as_str(), uid.as_str())
        );
        assert_eq!(verified.nonce, minted.nonce);
        assert!(matches!(
            consent_state::verify(&key, &minted.state, minted.expires_at),
            Err(StateError::Expired { .. })
        ));
        let mut other_key = key;
        other_key[0] ^= 1;
        assert!(consent_state::verify(&other_key, &minted.state, now).is_err());
        let changed = mutated(u, &minted.state)?;
        assert!(consent_state::verify(&key, &changed, now).is_err(), "{changed:?}");
        let junk: String = u.arbitrary()?;
        assert!(consent_state::verify(&key, &junk, now).is_err());
        Ok(())
    });
}

#[test]
fn a_consent_ticket_verifies_only_as_issued_under_its_key_and_in_time() {
    fuzz(|u| {
        let key: [u8; 32] = u.arbitrary()?;
        let now = instant(u)?;
        let connection = format!("{}/{}", u.arbitrary::<String>()?, u.arbitrary::<String>()?);
        let issued = ticket::issue(&key, &connection, u.arbitrary()?, now);
        assert_eq!(ticket::verify(&key, &issued.ticket, now), Ok(connection));
        assert_eq!(ticket::hash(&issued.ticket), issued.hash);
        assert_eq!(
            ticket::verify(&key, &issued.ticket, issued.expires_at),
            Err(ticket::Refused::Expired)
        );
        let changed = mutated(u, &issued.ticket)?;
        assert!(ticket::verify(&key, &changed, now).is_err(), "{changed:?}");
        let junk: String = u.arbitrary()?;
        assert_eq!(ticket::verify(&key, &junk, now), Err(ticket::Refused::Invalid));
        Ok(())
    });
}
