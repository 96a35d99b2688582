//! How long the controller's watches wait before they retry after an error, e.g. while the API
//! server is away, or after it answers 410 Expired once it is back.
//!
//! kube-runtime's default (client-go's: 0.8 s doubling to 30 s) has grown to 30 s by the end of
//! an outage of a few seconds, so a change made right after the API server serves again waited up
//! to a minute to be reconciled (measured 56–67 s, `tests/control_plane_faults.rs`). Only the
//! leader watches, with two watches per controller, so a short bound costs the API server little.

use std::time::Duration;

use kube::runtime::watcher::ExponentialBackoff;

/// The first retry delay.
const FIRST: Duration = Duration::from_millis(500);
/// The longest retry delay before jitter; with jitter a delay is up to twice it.
const LONGEST: Duration = Duration::from_secs(2);

/// A watch's backoff: exponential from [`FIRST`] to [`LONGEST`], each delay plus a random share
/// of itself (so the watches of several controllers do not retry in step), retried without end
/// and reset by the next event the watch delivers.
pub fn watch_backoff() -> ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(FIRST)
        .with_max_delay(LONGEST)
        .with_jitter()
        .without_max_times()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_bounded_and_never_end() {
        let delays: Vec<_> = watch_backoff().take(50).collect();
        assert_eq!(delays.len(), 50, "the watch must retry without end");
        assert!(delays[0] >= FIRST && delays[0] < FIRST * 2, "{:?}", delays[0]);
        assert!(delays.iter().all(|delay| *delay <= LONGEST * 2), "{delays:?}");
        assert!(delays[10..].iter().all(|delay| *delay >= LONGEST), "{delays:?}");
    }
}
