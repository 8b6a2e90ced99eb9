//! Local quota counters and in-flight slots in process memory: the native build's
//! [`meshgate_core::pipeline::Host::update_counter`]. The twin of `filters/wasm/src/counters.rs`.
//!
//! One module per Envoy process, so these statics are shared by every worker. A counter is
//! a byte value in one of [`SHARDS`] maps, each behind its own lock: an update runs the
//! pipeline's pure function under its shard's lock, so it is exact across workers (no lost
//! update, no over-admission) without retries, and workers touching different keys rarely
//! wait for each other. Counters survive configuration updates, like proxy-wasm shared data.
//!
//! Bounded like the wasm build's: keys are never deleted, and creating a capped key (a quota
//! counter) first reserves one of `limits.max_local_counters` places; past the cap,
//! `Err(Full)` and nothing is written (the pipeline then charges the rule's overflow
//! counter). In-flight keys (one per consumer) are not capped, as in the wasm build.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use meshgate_core::pipeline::{Compute, CounterError};

/// Independent locks; a power of two.
const SHARDS: usize = 16;

struct Counters {
    hasher: RandomState,
    shards: [Mutex<HashMap<String, Vec<u8>>>; SHARDS],
    /// Capped keys created so far.
    capped: AtomicU64,
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| Counters {
    hasher: RandomState::new(),
    shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
    capped: AtomicU64::new(0),
});

/// Updates the counter at `key` with `compute` (see the module docs for `cap`).
pub fn update(key: &str, cap: Option<u64>, compute: &mut Compute<'_>) -> Result<(), CounterError> {
    let counters = &*COUNTERS;
    let shard = (counters.hasher.hash_one(key) as usize) & (SHARDS - 1);
    // A panic inside `compute` leaves the map as it was (the write comes after it).
    let mut map = counters.shards[shard].lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(value) = map.get_mut(key) {
        if let Some(new) = compute(Some(value)) {
            *value = new;
        }
        return Ok(());
    }
    if let Some(cap) = cap {
        let reserved =
            counters.capped.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1));
        if reserved.is_err() {
            return Err(CounterError::Full { cap });
        }
    }
    match compute(None) {
        Some(new) => {
            map.insert(key.to_string(), new);
        }
        // Nothing written: the reserved place goes back.
        None if cap.is_some() => {
            counters.capped.fetch_sub(1, Ordering::AcqRel);
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(key: &str, cap: Option<u64>) -> Result<(), CounterError> {
        update(key, cap, &mut |bytes| {
            let n = bytes.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_le_bytes);
            Some((n + 1).to_le_bytes().to_vec())
        })
    }

    fn read(key: &str) -> u64 {
        let mut seen = 0;
        update(key, None, &mut |bytes| {
            seen = bytes.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_le_bytes);
            None
        })
        .unwrap();
        seen
    }

    #[test]
    fn updates_from_many_threads_are_exact() {
        let threads: Vec<_> =
            (0..8).map(|_| std::thread::spawn(|| (0..1000).for_each(|_| add("test/exact", None).unwrap()))).collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(read("test/exact"), 8000);
    }

    #[test]
    fn a_capped_key_is_created_only_below_the_cap_and_a_refusal_writes_nothing() {
        let before = COUNTERS.capped.load(Ordering::Acquire);
        // A compute that writes nothing reserves no place.
        update("test/cap/none", Some(before + 1), &mut |_| None).unwrap();
        assert_eq!(COUNTERS.capped.load(Ordering::Acquire), before);
        add("test/cap/a", Some(before + 1)).unwrap();
        assert_eq!(add("test/cap/b", Some(before + 1)), Err(CounterError::Full { cap: before + 1 }));
        // Existing keys update whatever the count.
        add("test/cap/a", Some(before + 1)).unwrap();
        assert_eq!(read("test/cap/a"), 2);
    }
}
