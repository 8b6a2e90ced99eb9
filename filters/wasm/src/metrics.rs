//! Envoy stats for audit records: the only code that defines and bumps proxy-wasm metrics.
//!
//! Envoy allocates a new metric id on every `define_metric` call, so ids are cached by name
//! per worker VM. Every distinct name is a permanent stat: past [`MAX_NAMES`] names per
//! worker, tool labels collapse to `other` (the core builds the names, bounded otherwise).
//!
//! Counter increments are summed per worker ([`CounterBatch`]) and added to Envoy by
//! [`flush`], which the root context runs every [`FLUSH_PERIOD`] and when the plugin stops:
//! one host call per counter and flush instead of one per exchange, at the price of a
//! counter lagging its exchanges by at most a period (Envoy's own stats flush every 5 s).
//! Histogram samples are recorded at once: each is its own observation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use meshgate_core::audit::batch::CounterBatch;
use meshgate_core::audit::{AuditRecord, MetricOptions, MetricUpdate};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Distinct metric names one worker defines before tool labels collapse to `other`.
const MAX_NAMES: usize = 2000;

/// How often a worker adds its summed counter increments to Envoy.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

thread_local! {
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    static PENDING: RefCell<CounterBatch> = RefCell::new(CounterBatch::new());
}

/// Records the histogram samples of one finished exchange and adds its counter increments
/// to the worker's batch. A host error is logged, never fatal: metrics must not change
/// what the gateway answers.
pub fn record(record: &AuditRecord, options: MetricOptions) {
    let overflow = IDS.with(|ids| ids.borrow().len() >= MAX_NAMES);
    for update in record.metrics(options, overflow) {
        let result = match &update {
            MetricUpdate::Counter { name, by } => {
                id(MetricType::Counter, name).map(|id| PENDING.with(|pending| pending.borrow_mut().add(id, *by)))
            }
            MetricUpdate::Histogram { name, value } => {
                id(MetricType::Histogram, name).and_then(|id| hostcalls::record_metric(id, *value))
            }
        };
        if let Err(e) = result {
            log::warn!("meshgate: metric {} not recorded: {e:?}", update.name());
        }
    }
}

/// Adds every summed counter increment to Envoy and empties the batch.
pub fn flush() {
    PENDING.with(|pending| {
        for (id, by) in pending.borrow_mut().drain() {
            if let Err(e) = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) {
                log::warn!("meshgate: counter {id} not incremented by {by}: {e:?}");
            }
        }
    });
}

fn id(kind: MetricType, name: &str) -> Result<u32, proxy_wasm::types::Status> {
    if let Some(id) = IDS.with(|ids| ids.borrow().get(name).copied()) {
        return Ok(id);
    }
    let id = hostcalls::define_metric(kind, name)?;
    IDS.with(|ids| ids.borrow_mut().insert(name.to_string(), id));
    Ok(id)
}
