//! The duration format of the API (`spec.resyncInterval`) and of the command line: whole units of
//! `h`, `m`, `s` and `ms`, such as `90s`, `10m` or `1h30m`.

use std::time::Duration;

/// Parses `90s`, `10m`, `1h`, `1h30m` (whole units of h, m, s, ms).
pub fn parse(value: &str) -> Result<Duration, String> {
    let invalid = || format!("{} is not a duration such as 90s, 10m or 1h30m", quoted(value));
    let mut total = Duration::ZERO;
    let mut rest = value;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return Err(invalid()),
        };
        total = unit
            .checked_mul(u32::try_from(number).map_err(|_| invalid())?)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `value` quoted for an error message, cut after 40 characters (the message must stay readable
/// whatever was written).
fn quoted(value: &str) -> String {
    match value.char_indices().nth(40) {
        Some((end, _)) => format!("{:?}…", &value[..end]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_beyond_what_a_duration_holds_is_refused_not_a_panic() {
        // 4294967295h is the largest term (the number must fit 32 bits); about 1.2 million of
        // them pass u64::MAX seconds.
        let huge = "4294967295h".repeat(1_200_000);
        let message = parse(&huge).unwrap_err();
        assert_eq!(
            message,
            "\"4294967295h4294967295h4294967295h4294967\"… is not a duration such as 90s, 10m or 1h30m"
        );
        assert_eq!(
            parse("1.5h").unwrap_err(),
            "\"1.5h\" is not a duration such as 90s, 10m or 1h30m"
        );
    }

    #[test]
    fn durations_parse_like_the_crd_accepts_them() {
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        for invalid in ["", "10", "m", "5d", "1.5h", "-1s", "99999999999h"] {
            assert!(parse(invalid).is_err(), "{invalid:?}");
        }
    }
}
