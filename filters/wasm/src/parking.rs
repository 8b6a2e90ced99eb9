//! Streams parked for an upstream token ([`meshgate_core::upstream_token`]): the wasm
//! build's [`meshgate_core::pipeline::Host::park_for_token`] and `wake_token_waiters`. The
//! twin of `filters/native/src/parking.rs`.
//!
//! Each Envoy worker runs its own VM, and proxy-wasm cannot call into another worker's
//! streams. So: the token cache itself is shared data (one per Envoy, see
//! `meshgate_core::upstream_token`), and the streams parked on this worker are held here.
//! The stream that settles a slot wakes the streams parked on it on its own worker at once
//! ([`wake`]); streams parked on other workers are woken by their root context's tick
//! ([`poll`], every 25 ms while a server has token exchange), and look at the shared slot
//! again. A woken stream that still sees the exchange in flight parks again. Either way one
//! exchange per identity is made by the whole Envoy; a waiter on another worker than the
//! leader's gets the token up to one tick later.
//!
//! A wake-up runs the parked stream's pipeline from another context's callback: the
//! effective context is switched to the parked stream for it (so its header and resume
//! calls reach its own request) and switched back afterwards.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Weak;

use meshgate_core::pipeline::Stream;
use proxy_wasm::hostcalls;

use crate::host::WasmHost;

/// A parked stream: its context id and its pipeline (gone once the stream ended).
type Parked = (u32, Weak<RefCell<Stream>>);

thread_local! {
    static PARKED: RefCell<HashMap<String, Vec<Parked>>> = RefCell::new(HashMap::new());
}

/// Parks the stream of `context_id` on `key`.
pub fn park(key: &str, context_id: u32, stream: Weak<RefCell<Stream>>) {
    PARKED.with(|parked| parked.borrow_mut().entry(key.to_string()).or_default().push((context_id, stream)));
}

/// Wakes the streams parked on `key` on this worker; `current` is the effective context to
/// restore afterwards.
pub fn wake(key: &str, current: u32) {
    let waiting = PARKED.with(|parked| parked.borrow_mut().remove(key));
    run(waiting.into_iter().flatten(), current);
}

/// Wakes every stream parked on this worker (the root context's tick): each looks at its
/// slot again.
pub fn poll(root: u32) {
    let waiting: Vec<Parked> = PARKED.with(|parked| parked.borrow_mut().drain().flat_map(|(_, v)| v).collect());
    if !waiting.is_empty() {
        run(waiting.into_iter(), root);
    }
}

fn run(waiting: impl Iterator<Item = Parked>, current: u32) {
    let mut switched = false;
    for (context_id, stream) in waiting {
        let Some(stream) = stream.upgrade() else {
            continue;
        };
        // A stream whose pipeline is running (it cannot be: it is parked) is skipped
        // rather than borrowed twice.
        let Ok(mut pipeline) = stream.try_borrow_mut() else {
            continue;
        };
        if hostcalls::set_effective_context(context_id).is_err() {
            continue;
        }
        switched = true;
        let mut host = WasmHost { context_id, stream: std::rc::Rc::downgrade(&stream) };
        pipeline.on_token_ready(&mut host);
    }
    if switched {
        if let Err(e) = hostcalls::set_effective_context(current) {
            log::error!("meshgate: the effective context could not be restored: {e:?}");
        }
    }
}
