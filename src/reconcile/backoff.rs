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

use crate::{
    retry::{exponential, with_equal_jitter},
    sync::LockExt as _,
};

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
            let mut map = self.failures.locked();
            let count = map.entry(key.to_owned()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        with_equal_jitter(exponential(failures), rand::random::<f64>())
    }

    /// Forgets the failures and the hold of `key` after a successful reconcile.
    pub fn reset(&self, key: &str) {
        self.failures.locked().remove(key);
        self.holds.locked().remove(key);
    }

    /// Makes `key` wait `delay` from `now` unless its inputs change from `inputs`.
    pub fn hold(&self, key: &str, inputs: u64, now: Instant, delay: Duration) {
        self.holds.locked().insert(
            key.to_owned(),
            Hold {
                until: now + delay,
                inputs,
            },
        );
    }

    /// The rest of the wait of `key` at `now`, when it is held for these same `inputs`.
    pub fn held(&self, key: &str, inputs: u64, now: Instant) -> Option<Duration> {
        let holds = self.holds.locked();
        let hold = holds.get(key).filter(|hold| hold.inputs == inputs)?;
        let rest = hold.until.saturating_duration_since(now);
        (!rest.is_zero()).then_some(rest)
    }
}

/// The resync period with up to 10% taken off at random, so connections drift apart.
pub fn jittered_resync(period: Duration) -> Duration {
    period.saturating_sub(period.mul_f64(rand::random::<f64>() * 0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
