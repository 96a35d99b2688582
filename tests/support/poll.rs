//! [`poll_until`]: the only way to wait: a deadline, a description, and the last thing observed.

use std::{fmt, future::Future, time::Duration};

/// Interval between two attempts of [`poll_until`].
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What one attempt of [`poll_until`] saw: done (with the value to return), or not yet, with a
/// description of what it saw for the timeout message.
pub enum Observed<T> {
    Done(T),
    NotYet(String),
}

impl<T> Observed<T> {
    /// Not yet; `seen` (its `Debug` form) is what the timeout message reports.
    pub fn not_yet(seen: impl fmt::Debug) -> Self {
        Self::NotYet(format!("{seen:?}"))
    }
}

/// What [`poll_until`] accepts from an attempt: `Option<T>`, `Result<Option<T>, E>`,
/// [`Observed<T>`] or `Result<Observed<T>, E>`. `None`, an error or `NotYet` mean "again".
pub trait Attempt<T> {
    /// `Ok(value)` when done, else a description of what was observed.
    fn into_outcome(self) -> Result<T, String>;
}

impl<T> Attempt<T> for Option<T> {
    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_owned())
    }
}

impl<T> Attempt<T> for Observed<T> {
    fn into_outcome(self) -> Result<T, String> {
        match self {
            Observed::Done(value) => Ok(value),
            Observed::NotYet(seen) => Err(seen),
        }
    }
}

impl<T, E: fmt::Display> Attempt<T> for Result<Option<T>, E> {
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|error| format!("error: {error}"))?.into_outcome()
    }
}

impl<T, E: fmt::Display> Attempt<T> for Result<Observed<T>, E> {
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|error| format!("error: {error}"))?.into_outcome()
    }
}

/// Calls `attempt` every 100 ms until it is done and returns its value. Panics after `deadline`
/// with `what` and the last thing observed (an attempt still running at the deadline is abandoned).
pub async fn poll_until<T, A, F, Fut>(deadline: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = A>,
    A: Attempt<T>,
{
    let give_up_at = tokio::time::Instant::now() + deadline;
    let mut last = "nothing yet".to_owned();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(give_up_at, attempt()).await {
            Ok(outcome) => match outcome.into_outcome() {
                Ok(value) => return value,
                Err(seen) => last = seen,
            },
            Err(_) => {
                last = format!("{last} (attempt {attempts} was still running at the deadline)");
                break;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        if tokio::time::Instant::now() >= give_up_at {
            break;
        }
    }
    panic!("timed out after {deadline:?} waiting for {what} ({attempts} attempts); last observed: {last}");
}
