//! Per-connection exponential backoff with jitter (kube-runtime requeues at a fixed delay), the
//! holds that make a wait stick, and jitter for the resync period so many connections do not
//! check their instances in lockstep.
//!
//! A hold: after a transient failure the connection must wait (`Retry-After`, or its backoff
//! delay) — but kube-runtime reconciles again on any watch event, the operator's own status write
//! included. A hold remembers until when to wait and for which inputs (the connection's
//! generation, annotations and deletion); a reconcile inside the hold with the same inputs calls
//! nothing and only requeues for the rest of the wait. A change by a person lifts it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The first retry delay.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const CAP: Duration = Duration::from_secs(300);

/// Consecutive failures and holds per connection (`namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
    holds: Mutex<HashMap<String, Hold>>,
}

/// A wait imposed by a transient failure, for the inputs it was decided on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    until: Instant,
    inputs: u64,
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

    /// Forgets the failures and the hold of `key` after a successful reconcile.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
        self.holds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }

    /// Makes `key` wait `delay` from `now` unless its inputs change from `inputs`.
    pub fn hold(&self, key: &str, inputs: u64, now: Instant, delay: Duration) {
        self.holds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                key.to_owned(),
                Hold {
                    until: now + delay,
                    inputs,
                },
            );
    }

    /// The rest of the wait of `key` at `now`, when it is held for these same `inputs`.
    pub fn held(&self, key: &str, inputs: u64, now: Instant) -> Option<Duration> {
        let holds = self.holds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hold = holds.get(key).filter(|hold| hold.inputs == inputs)?;
        let rest = hold.until.saturating_duration_since(now);
        (!rest.is_zero()).then_some(rest)
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
    fn a_hold_lasts_its_delay_for_the_same_inputs_only() {
        let backoff = Backoff::default();
        let start = Instant::now();
        backoff.hold("ns/a", 7, start, Duration::from_secs(10));
        assert_eq!(
            backoff.held("ns/a", 7, start + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(backoff.held("ns/a", 8, start), None, "new inputs lift the hold");
        assert_eq!(backoff.held("ns/b", 7, start), None);
        assert_eq!(backoff.held("ns/a", 7, start + Duration::from_secs(10)), None);
        backoff.reset("ns/a");
        assert_eq!(backoff.held("ns/a", 7, start), None, "a success lifts the hold");
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
