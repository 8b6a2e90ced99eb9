//! Time and memory bounds per input byte for Meshgate's parsers of untrusted bytes: the SSE
//! framer, the strict JSON scanner, the list filter and the redactor (issue #13 item 2).
//!
//! Property tests (`tests/bounds.rs`) feed them large generated inputs — floods of tiny SSE
//! events, deep nesting, huge arrays, many tiny strings, long escape runs, hostile
//! redaction candidates — and assert, besides the absence of panics:
//! * **memory**: the peak of live heap bytes and the total of bytes allocated during the
//!   call stay under `k × input bytes + c` ([`measure`], counted by [`CountingAlloc`] per
//!   thread, so parallel tests do not disturb each other);
//! * **time**: for fixed pathological shapes, the thread CPU time at 8× the input size is
//!   under 40× the time at 1× (linear gives 8×, a little more where caches are outgrown;
//!   quadratic 64× and more); each side is the minimum of several runs of at least 5 ms,
//!   and CPU time (not wall time) ignores preemption, so a loaded machine does not make it
//!   flaky.
//!
//! Deterministic counts (bytes) carry the strict bounds; the time ratio is the backstop for
//! work that allocates nothing. Run with `make fuzz` (more cases, larger inputs) or as part
//! of `cargo test --workspace` (fewer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

/// Heap use of the current thread, counted by [`CountingAlloc`].
struct Counters {
    live: Cell<isize>,
    peak: Cell<isize>,
    total: Cell<usize>,
    allocations: Cell<usize>,
}

thread_local! {
    static COUNTERS: Counters = const {
        Counters { live: Cell::new(0), peak: Cell::new(0), total: Cell::new(0), allocations: Cell::new(0) }
    };
}

fn on_alloc(size: usize) {
    let _ = COUNTERS.try_with(|c| {
        let live = c.live.get() + size as isize;
        c.live.set(live);
        if live > c.peak.get() {
            c.peak.set(live);
        }
        c.total.set(c.total.get() + size);
        c.allocations.set(c.allocations.get() + 1);
    });
}

fn on_free(size: usize) {
    let _ = COUNTERS.try_with(|c| c.live.set(c.live.get() - size as isize));
}

/// The system allocator, counting what each thread allocates. Install it as the
/// `#[global_allocator]` of a test binary.
pub struct CountingAlloc;

#[allow(unsafe_code)]
mod counting {
    use super::*;

    // SAFETY: every call is forwarded unchanged to `System`, which upholds the contract;
    // the counters are const-initialised thread locals without destructors (no allocation,
    // no reentrancy), accessed with `try_with` so thread teardown cannot panic.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            on_alloc(layout.size());
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            on_alloc(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            on_free(layout.size());
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            on_free(layout.size());
            on_alloc(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// CPU time of the current thread.
    pub fn thread_cpu_time() -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return Duration::ZERO;
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

pub use counting::thread_cpu_time;

/// What one call cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Most heap bytes live at once during the call, above what was live before it.
    pub peak_bytes: usize,
    /// Every byte allocated during the call (reallocations count their new size).
    pub total_bytes: usize,
    /// Number of allocations.
    pub allocations: usize,
    pub cpu: Duration,
}

/// Runs `f` and reports its heap use on this thread and its CPU time. Memory freed by `f`
/// that was allocated before it does not lower the peak below the starting level.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    let (live0, total0, count0) = COUNTERS.with(|c| {
        c.peak.set(c.live.get());
        (c.live.get(), c.total.get(), c.allocations.get())
    });
    let cpu0 = thread_cpu_time();
    let out = f();
    let cpu = thread_cpu_time().saturating_sub(cpu0);
    let usage = COUNTERS.with(|c| Usage {
        peak_bytes: (c.peak.get() - live0).max(0) as usize,
        total_bytes: c.total.get() - total0,
        allocations: c.allocations.get() - count0,
        cpu,
    });
    (out, usage)
}

/// A bound `k × n + c` on a cost of an input of `n` bytes.
#[derive(Debug, Clone, Copy)]
pub struct PerByte {
    pub k: usize,
    pub c: usize,
}

impl PerByte {
    pub fn allows(&self, n: usize, cost: usize) -> bool {
        cost <= self.k.saturating_mul(n).saturating_add(self.c)
    }
}

/// Checks a usage against bounds on peak and total bytes; `Err` says which and by how much.
pub fn within(what: &str, n: usize, usage: &Usage, peak: PerByte, total: PerByte) -> Result<(), String> {
    if !peak.allows(n, usage.peak_bytes) {
        return Err(format!(
            "{what}: peak heap {} bytes for {n} input bytes ({:.1}/byte), over {}·n+{}",
            usage.peak_bytes,
            usage.peak_bytes as f64 / n.max(1) as f64,
            peak.k,
            peak.c
        ));
    }
    if !total.allows(n, usage.total_bytes) {
        return Err(format!(
            "{what}: allocated {} bytes for {n} input bytes ({:.1}/byte), over {}·n+{}",
            usage.total_bytes,
            usage.total_bytes as f64 / n.max(1) as f64,
            total.k,
            total.c
        ));
    }
    Ok(())
}

/// Size factor of the growth-ratio check, and the ratio allowed: linear work gives `GROWTH`
/// (up to about 4× that once a hash table outgrows the caches: 8 MiB of distinct object
/// keys cost 4.7× more per byte than 128 KiB, measured here), quadratic work `GROWTH²`.
pub const GROWTH: u32 = 8;
pub const MAX_RATIO: f64 = 5.0 * GROWTH as f64;

/// Smallest CPU time the growth-ratio check compares: shorter runs are too noisy, so the
/// input is doubled until its run takes this long (up to [`MAX_START_BYTES`]).
pub const MIN_CPU: Duration = Duration::from_millis(5);
pub const MAX_START_BYTES: usize = 4 * 1024 * 1024;

/// The growth-ratio check: `run` on an input of `n` bytes (doubled until it takes
/// [`MIN_CPU`]) and on one [`GROWTH`] times larger, each built by `input` outside the
/// measurement and timed as the minimum of `runs` runs. `Err` when the larger takes more
/// than [`MAX_RATIO`] times as long. Returns the ratio.
pub fn grows_linearly<I>(
    what: &str,
    n: usize,
    runs: usize,
    input: impl Fn(usize) -> I,
    run: impl Fn(&I),
) -> Result<f64, String> {
    let best = |data: &I| {
        (0..runs.max(1)).map(|_| measure(|| run(data)).1.cpu).min().unwrap_or_default().max(Duration::from_nanos(1))
    };
    let mut n = n.max(1);
    let mut small = best(&input(n));
    while small < MIN_CPU && n < MAX_START_BYTES {
        n *= 2;
        small = best(&input(n));
    }
    let large = best(&input(n * GROWTH as usize));
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    if ratio > MAX_RATIO {
        return Err(format!(
            "{what}: {n} bytes took {small:?}, {} bytes took {large:?} ({ratio:.1}×, over {MAX_RATIO}×)",
            n * GROWTH as usize
        ));
    }
    Ok(ratio)
}
