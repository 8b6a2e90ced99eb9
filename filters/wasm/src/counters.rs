//! Counters in proxy-wasm shared data, updated with compare-and-swap: the wasm build's
//! [`meshgate_core::pipeline::Host::update_counter`].
//!
//! Every Envoy worker runs its own VM; shared data is the one memory they share. A counter
//! update reads `(bytes, cas)`, computes the new value with a pure core function and writes
//! it back with that `cas`; a `CasMismatch` means another worker wrote in between, so it
//! re-reads and recomputes (bounded). Because the computation is a pure function of the
//! stored value and the time, a retried update is exact: no lost updates, no over-admission.
//!
//! Creating a key is the one step CAS cannot guard: the host writes a missing key
//! unconditionally, so two workers that both saw "missing" would overwrite each other's
//! first update. Creation therefore happens under a small lock kept in shared data itself
//! ([`LOCK_KEY`], taken by CAS, held for one read and one write, and considered abandoned
//! after [`LOCK_STALE_NS`]). Keys are never deleted, so this path runs once per counter.

use proxy_wasm::hostcalls::{get_shared_data, set_shared_data};
use proxy_wasm::types::Status;

/// The creation lock: 8 bytes, little-endian nanosecond timestamp of the holder's
/// acquisition, or 0 when free.
const LOCK_KEY: &str = "meshgate/lock/create";
/// A lock held longer than this is abandoned (the holder never keeps it across callbacks).
const LOCK_STALE_NS: u64 = 1_000_000_000;
/// How many capped keys ([`update_capped`]) exist: 8 bytes, little-endian, written only
/// under the creation lock.
const COUNT_KEY: &str = "meshgate/count/capped-keys";
/// CAS attempts before giving up on a contended counter.
const MAX_ATTEMPTS: usize = 256;
/// Reads of a held creation lock before giving up.
const MAX_LOCK_SPINS: usize = 20_000;

/// Why a counter could not be read or updated. Callers fail closed.
#[derive(Debug)]
pub enum SharedError {
    /// The host refused a shared-data call.
    Host(Status),
    /// Still contended after the bounded number of attempts.
    Contended,
    /// The key does not exist and `cap` capped keys already do.
    Full { cap: u64 },
}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SharedError::Host(s) => write!(f, "shared data host call failed: {s:?}"),
            SharedError::Contended => write!(f, "shared data still contended after bounded retries"),
            SharedError::Full { cap } => write!(f, "{cap} counters exist (limits.max_local_counters)"),
        }
    }
}

/// A counter update: stored bytes (`None`: no key yet) → (bytes to store, result).
pub type Compute<'a, T> = dyn FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T) + 'a;

/// Creates the creation lock if it does not exist yet. Called from `on_configure`, so the
/// lock exists before the first request. (Creating it is itself unguarded: two workers
/// creating it at the same moment both write "free", which is harmless while no request
/// runs. The one residual race is a request taking the lock on one worker while another
/// worker configures for the very first time, at Envoy start.)
pub fn ensure_lock() -> Result<(), SharedError> {
    let (_, cas) = get_shared_data(LOCK_KEY).map_err(SharedError::Host)?;
    if cas.is_none() {
        set_shared_data(LOCK_KEY, Some(&0u64.to_le_bytes()), None).map_err(SharedError::Host)?;
    }
    Ok(())
}

/// Updates the value at `key`. `compute` gets the stored bytes (`None`: the key does not
/// exist yet) and returns the bytes to store (`None`: leave it as it is) and the result.
/// `compute` may run several times (once per attempt); only the last run's write counts.
/// With `cap`, creating `key` counts against `cap` keys created this way (shared data
/// never forgets a key): past it, `Err(Full)` and nothing is written. Existing keys are
/// updated whatever the count.
pub fn update_capped<T>(
    key: &str,
    cap: Option<u64>,
    now_ns: u64,
    compute: &mut Compute<'_, T>,
) -> Result<T, SharedError> {
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = get_shared_data(key).map_err(SharedError::Host)?;
        let Some(cas) = cas else {
            if let Some(result) = create(key, cap, now_ns, compute)? {
                return Ok(result);
            }
            continue;
        };
        let (new, result) = compute(Some(bytes.as_deref().unwrap_or_default()));
        let Some(new) = new else {
            return Ok(result);
        };
        match set_shared_data(key, Some(&new), Some(cas)) {
            Ok(()) => return Ok(result),
            Err(Status::CasMismatch) => continue,
            Err(other) => return Err(SharedError::Host(other)),
        }
    }
    Err(SharedError::Contended)
}

/// Creates `key` under the creation lock. `Ok(None)`: another worker created it meanwhile
/// (the caller goes back to the CAS path).
fn create<T>(key: &str, cap: Option<u64>, now_ns: u64, compute: &mut Compute<'_, T>) -> Result<Option<T>, SharedError> {
    acquire_lock(now_ns)?;
    let outcome = (|| {
        let (_, cas) = get_shared_data(key).map_err(SharedError::Host)?;
        if cas.is_some() {
            return Ok(None);
        }
        let count = match cap {
            None => None,
            Some(cap) => {
                let (bytes, _) = get_shared_data(COUNT_KEY).map_err(SharedError::Host)?;
                let count = le_u64(bytes.as_deref());
                if count >= cap {
                    return Err(SharedError::Full { cap });
                }
                Some(count)
            }
        };
        let (new, result) = compute(None);
        if let Some(new) = new {
            set_shared_data(key, Some(&new), None).map_err(SharedError::Host)?;
            if let Some(count) = count {
                set_shared_data(COUNT_KEY, Some(&(count + 1).to_le_bytes()), None).map_err(SharedError::Host)?;
            }
        }
        Ok(Some(result))
    })();
    // Released unconditionally: only the holder writes a non-zero value.
    if let Err(e) = set_shared_data(LOCK_KEY, Some(&0u64.to_le_bytes()), None) {
        log::error!("meshgate: could not release the shared-data creation lock: {e:?}");
    }
    outcome
}

fn acquire_lock(now_ns: u64) -> Result<(), SharedError> {
    let held = now_ns.max(1).to_le_bytes();
    for _ in 0..MAX_LOCK_SPINS {
        let (bytes, cas) = get_shared_data(LOCK_KEY).map_err(SharedError::Host)?;
        let Some(cas) = cas else {
            // Normally created by `ensure_lock` at configure time, before traffic.
            ensure_lock()?;
            continue;
        };
        let holder = le_u64(bytes.as_deref());
        if holder != 0 && now_ns.saturating_sub(holder) <= LOCK_STALE_NS {
            continue;
        }
        match set_shared_data(LOCK_KEY, Some(&held), Some(cas)) {
            Ok(()) => return Ok(()),
            Err(Status::CasMismatch) => continue,
            Err(other) => return Err(SharedError::Host(other)),
        }
    }
    Err(SharedError::Contended)
}

/// An 8-byte little-endian value as the lock and the key count store it; 0 when absent or
/// not 8 bytes.
fn le_u64(bytes: Option<&[u8]>) -> u64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_le_bytes)
}
