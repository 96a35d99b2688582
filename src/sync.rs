//! Locks that outlive a panic. A thread that panicked while holding a [`Mutex`] poisons it; the
//! operator's maps (caches, queues, tallies) stay consistent between statements, so the lock is
//! taken anyway rather than spreading the panic to every later caller. A leaf: imports nothing
//! of ours.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Mutex::lock`] that ignores poisoning.
pub trait LockExt<T: ?Sized> {
    /// The guard, whether or not a holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let shared = std::sync::Arc::new(Mutex::new(1));
        let holder = shared.clone();
        let _ = std::thread::spawn(move || {
            let _guard = holder.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(shared.is_poisoned());
        *shared.locked() += 1;
        assert_eq!(*shared.locked(), 2);
    }
}
