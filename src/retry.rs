//! Retry delays shared by the reconcile's per-connection backoff and the webhook forwarder:
//! exponential growth with a cap, and "equal jitter" (half fixed, half random). Pure.

use std::time::Duration;

/// The first retry delay.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const CAP: Duration = Duration::from_secs(300);

/// `BASE * 2^(failures-1)`, capped at `CAP`.
pub fn exponential(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BASE.saturating_mul(1 << exponent).min(CAP)
}

/// Half of `delay`, plus a share `random` (in [0,1)) of the other half.
pub fn with_equal_jitter(delay: Duration, random: f64) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        assert_eq!(exponential(1), Duration::from_secs(1));
        assert_eq!(exponential(2), Duration::from_secs(2));
        assert_eq!(exponential(5), Duration::from_secs(16));
        assert_eq!(exponential(30), CAP);
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_delay() {
        let delay = Duration::from_secs(10);
        assert_eq!(with_equal_jitter(delay, 0.0), Duration::from_secs(5));
        assert!(with_equal_jitter(delay, 0.999) <= delay);
    }
}
