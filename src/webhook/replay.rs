//! Pure: the signatures this replica accepted while a replay of them could still pass the time
//! check, so a request sent again is refused.
//!
//! Only requests whose signature checked are recorded, so anonymous traffic cannot fill or flush
//! this memory. A signature is kept until its signing time is more than
//! [`signature::WINDOW`](super::signature::WINDOW) in the past (after that the time check refuses
//! a replay anyway). Past [`CAPACITY`] signatures kept, the oldest one is forgotten early: a
//! replay of it would then pass, which takes more than `CAPACITY` events in 10 minutes.

use std::collections::{HashSet, VecDeque};

use super::signature::WINDOW;

/// Most signatures kept (32 bytes each, about 10 MiB with the set's overhead): 100,000 events
/// in ten minutes is over 160 a second, sustained.
pub const CAPACITY: usize = 100_000;

/// A signature's identity ([`super::signature::Signed::replay_id`]).
pub type ReplayId = [u8; 32];

/// The signatures accepted lately, oldest first.
pub struct Replays {
    seen: HashSet<ReplayId>,
    order: VecDeque<(i64, ReplayId)>,
    capacity: usize,
}

impl Default for Replays {
    fn default() -> Self {
        Replays::with_capacity(CAPACITY)
    }
}

impl Replays {
    /// An empty memory of at most `capacity` signatures.
    pub fn with_capacity(capacity: usize) -> Self {
        Replays {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`, signed at `signed_millis`; `false` when it was already recorded (a replay).
    /// First forgets what signed more than the window before `now_millis`.
    pub fn first_time(&mut self, id: ReplayId, signed_millis: i64, now_millis: i64) -> bool {
        let window = i64::try_from(WINDOW.as_millis()).unwrap_or(i64::MAX);
        while self
            .order
            .front()
            .is_some_and(|&(signed, _)| signed.saturating_add(window) < now_millis)
        {
            self.forget_oldest();
        }
        if self.seen.contains(&id) {
            return false;
        }
        if self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        self.seen.insert(id);
        self.order.push_back((signed_millis, id));
        true
    }

    fn forget_oldest(&mut self) {
        if let Some((_, oldest)) = self.order.pop_front() {
            self.seen.remove(&oldest);
        }
    }

    /// How many signatures are kept.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// `true` when none is kept.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_849_600_000;
    const WINDOW_MS: i64 = 5 * 60 * 1000;

    fn id(n: u8) -> ReplayId {
        [n; 32]
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let mut replays = Replays::default();
        assert!(replays.is_empty());
        assert!(replays.first_time(id(1), NOW, NOW));
        assert!(!replays.first_time(id(1), NOW, NOW + 1));
        assert!(replays.first_time(id(2), NOW, NOW + 1));
        assert_eq!(replays.len(), 2);
        assert!(!replays.is_empty());
    }

    #[test]
    fn a_signature_is_kept_while_its_time_is_inside_the_window() {
        let mut replays = Replays::default();
        assert!(replays.first_time(id(1), NOW, NOW));
        assert!(!replays.first_time(id(1), NOW, NOW + WINDOW_MS), "forgotten too early");
        // Once its time is outside the window it is forgotten (the time check refuses it now).
        assert!(replays.first_time(id(2), NOW + WINDOW_MS + 1, NOW + WINDOW_MS + 1));
        assert_eq!(replays.len(), 1);
        assert!(replays.first_time(id(1), NOW, NOW + WINDOW_MS + 1));
    }

    #[test]
    fn past_capacity_the_oldest_is_forgotten() {
        let mut replays = Replays::with_capacity(2);
        assert!(replays.first_time(id(1), NOW, NOW));
        assert!(replays.first_time(id(2), NOW, NOW));
        assert!(replays.first_time(id(3), NOW, NOW));
        assert_eq!(replays.len(), 2);
        assert!(!replays.first_time(id(3), NOW, NOW));
        assert!(!replays.first_time(id(2), NOW, NOW));
        assert!(replays.first_time(id(1), NOW, NOW), "the oldest was kept");
        assert_eq!(Replays::with_capacity(0).capacity, 1);
    }
}
