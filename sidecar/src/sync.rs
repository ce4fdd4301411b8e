//! Ground floor: the one way we take a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also after a panic elsewhere while it was held: our mutexes guard plain data
/// (counters, caches, idle connections) that stays valid, and a relay must keep serving.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
