//! Streams parked for an upstream token ([`meshgate_core::upstream_token`]): the native
//! build's [`meshgate_core::pipeline::Host::park_for_token`] and `wake_token_waiters`. The
//! twin of `filters/wasm/src/parking.rs`.
//!
//! One module per Envoy process, so this map is shared by every worker: a parked stream
//! leaves its scheduler under the cache slot's key; the stream that settles the slot (on
//! any worker) takes them all and commits [`TOKEN_READY`] to each, and Envoy calls
//! `http_filter_scheduled` on each stream's own worker, which looks at the slot again.
//! Envoy's scheduler holds its filter weakly, so waking a stream that ended is a no-op, and
//! dropping the scheduler deletes it.
//!
//! Bounded: one entry per parked stream, removed when its key is woken. A key is woken when
//! its exchange settles or its leader goes away; a lease whose leader's process vanished
//! cannot happen here (one process), so no entry outlives its exchange.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use crate::ffi::FilterScheduler;

/// The scheduler event of a settled token exchange.
pub const TOKEN_READY: u64 = 1;

static PARKED: LazyLock<Mutex<HashMap<String, Vec<FilterScheduler>>>> = LazyLock::new(Default::default);

/// Parks a stream on `key`: `scheduler` gets [`TOKEN_READY`] when the key is woken.
pub fn park(key: &str, scheduler: FilterScheduler) {
    let mut parked = PARKED.lock().unwrap_or_else(PoisonError::into_inner);
    parked.entry(key.to_string()).or_default().push(scheduler);
}

/// Wakes every stream parked on `key`, on its own worker.
pub fn wake(key: &str) {
    let waiting = PARKED.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    // Committed (and dropped, which deletes them) outside the lock.
    for scheduler in waiting.into_iter().flatten() {
        scheduler.commit(TOKEN_READY);
    }
}
