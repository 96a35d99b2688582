//! Per-connection exponential backoff with jitter (kube-runtime requeues at a fixed delay), and
//! jitter for the resync period so many connections do not check their instances in lockstep.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// The first retry delay.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const CAP: Duration = Duration::from_secs(300);

/// Consecutive failures per connection (`namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before the next try:
    /// `BASE * 2^(failures-1)`, capped at `CAP`, with "equal jitter" (half fixed, half random).
    pub fn next_delay(&self, key: &str) -> Duration {
        let failures = {
            let mut map = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = map.entry(key.to_owned()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        with_equal_jitter(exponential(failures), rand::random::<f64>())
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

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

/// The resync period with up to 10% taken off at random, so connections drift apart.
pub fn jittered_resync(period: Duration) -> Duration {
    period.saturating_sub(period.mul_f64(rand::random::<f64>() * 0.1))
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

    #[test]
    fn a_success_resets_the_count() {
        let backoff = Backoff::default();
        for _ in 0..5 {
            backoff.next_delay("ns/a");
        }
        assert!(backoff.next_delay("ns/a") >= Duration::from_secs(16));
        backoff.reset("ns/a");
        assert!(backoff.next_delay("ns/a") <= Duration::from_secs(1));
    }
}
