//! Envoy stats for audit records: the only code that defines and bumps the native build's
//! metrics. The twin of `filters/wasm/src/metrics.rs`.
//!
//! Dynamic modules define metrics only in `config_new`, with label names; a request then
//! gives label values. Every root of [`meshgate_core::audit::metric`] is defined with the
//! labels [`meshgate_core::audit::metric_labels`] names, so `/stats` shows
//! `<namespace>.meshgate.tool_calls.server.<s>.tool.<t>.decision.<d>` and Prometheus
//! `meshgate_tool_calls{server=..,tool=..,decision=..}` with the control plane's namespace
//! settings: the same series as the wasm build for the same traffic.
//!
//! Labelled and unlabelled metrics have separate id spaces in Envoy, chosen by the number
//! of label values; ids here are typed ([`LabelledCounter`], [`Histogram`]) so an id never
//! lands in the other space.
//!
//! Histograms are unlabelled: their only label, `method`, takes a fixed set of values
//! ([`audit::method_labels`]), so `config_new` defines one histogram per value under the
//! folded name `meshgate.decision_time_us.method.<m>`, which the bootstrap's `stats_tags`
//! turn into the same labelled series as the wasm build's. A labelled sample would make
//! Envoy build the tagged stat name on every exchange (about 3,000 instructions).
//!
//! Every distinct series is a permanent stat: past [`MAX_SERIES`] distinct counter series
//! of a configuration, the label values a peer chooses (tool names, upstream error codes)
//! collapse to `other`, as the wasm build does per worker (its VM).
//!
//! Counters are summed in module memory and added to Envoy in one flush per
//! [`FLUSH_PERIOD`], as the wasm build does: a labelled update makes Envoy build the
//! series' tagged stat name (about 4,000 instructions a counter), so one update per series
//! and second replaces one per series and exchange. A scrape lags the traffic by at most a
//! period (plus the main thread's turn). Dynamic modules have no timer: a thread of this
//! module wakes every period and, for each configuration with new increments, commits an
//! event of that configuration's scheduler; Envoy then calls `config_scheduled` on its main
//! thread, where [`flush`] adds the sums through the configuration's own handle (its metric
//! ids belong to it). The thread runs while a configuration exists and is joined when the
//! last one goes, so it never outlives a module Envoy may unload. Histogram samples are
//! recorded at once: each is its own observation, and Envoy has no call that records
//! several.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use meshgate_core::audit::{self, AuditRecord, MetricKind, MetricOptions};

use crate::ffi::{self, ConfigScheduler, EnvoyConfig, EnvoyFilter, LogLevel};

/// Distinct series one worker creates before tool labels collapse to `other`.
const MAX_SERIES: usize = 2000;

/// How often summed counter increments reach Envoy (the wasm build's period too).
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Separates a series' root and label values in its key (label values are sanitized to
/// `[A-Za-z0-9_-]`, so it never occurs in one).
const KEY_SEPARATOR: char = '\u{1f}';

/// A counter defined with label names (the labelled id space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelledCounter(pub(crate) usize);

/// A histogram defined without label names (the unlabelled id space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram(pub(crate) usize);

/// Metrics Envoy would not set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("envoy refused to define metric {0}")]
    Define(&'static str),
    #[error("envoy gave no scheduler for the metrics flush")]
    Scheduler,
    #[error("the metrics flush thread could not start: {0}")]
    Thread(std::io::Error),
}

/// The metrics of one configuration.
pub struct Metrics {
    counters: Vec<(&'static str, LabelledCounter)>,
    /// `(root, method label)` → its histogram.
    histograms: Vec<(&'static str, &'static str, Histogram)>,
    sums: Arc<Sums>,
}

/// Counter increments of one configuration, summed until the next flush.
struct Sums {
    /// The scheduler event that flushes these sums (unique in the process).
    event: u64,
    scheduler: Mutex<ConfigScheduler>,
    /// Series key → its sum since the last flush. Keys stay (at 0) once seen, so a series'
    /// next increment allocates nothing; their number is what [`MAX_SERIES`] caps.
    pending: Mutex<Pending>,
    /// Something was added since the flush thread last looked.
    dirty: AtomicBool,
}

/// Counter series key → its sum.
type Pending = HashMap<Box<str>, Series>;

struct Series {
    counter: LabelledCounter,
    labels: Vec<String>,
    sum: u64,
}

/// Every configuration's sums, and the flush thread.
struct Registry {
    sums: Vec<Weak<Sums>>,
    next_event: u64,
    /// Bumped to stop the running thread (a thread runs while its generation is current).
    generation: u64,
    thread: Option<JoinHandle<()>>,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { sums: Vec::new(), next_event: 1, generation: 0, thread: None });
/// Wakes the flush thread early (to stop it).
static WAKE: Condvar = Condvar::new();

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The key of the series being added (reused: no allocation per exchange).
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Metrics {
    /// Defines every metric (only possible inside `config_new`) and registers the
    /// configuration's counter sums with the flush thread.
    pub fn define(envoy: &EnvoyConfig, options: MetricOptions) -> Result<Self, MetricsError> {
        let mut counters = Vec::new();
        for root in audit::metric::COUNTERS {
            let id =
                envoy.define_counter(root, audit::metric_labels(root, options)).ok_or(MetricsError::Define(root))?;
            counters.push((root, id));
        }
        let mut histograms = Vec::new();
        for root in audit::metric::HISTOGRAMS {
            // Only `method` labels a histogram (see the module docs); a root labelled
            // otherwise could not be defined up front.
            if audit::metric_labels(root, options) != [audit::label::METHOD] {
                return Err(MetricsError::Define(root));
            }
            for method in audit::method_labels() {
                let name = format!("{root}.{}.{method}", audit::label::METHOD);
                let id = envoy.define_histogram(&name).ok_or(MetricsError::Define(root))?;
                histograms.push((root, method, id));
            }
        }
        let scheduler = envoy.scheduler().ok_or(MetricsError::Scheduler)?;
        let sums = register(scheduler)?;
        Ok(Self { counters, histograms, sums })
    }

    /// Records the metrics of one finished exchange: histogram samples now, counter
    /// increments into the sums. A refused update is logged, never fatal: metrics must not
    /// change what the gateway answers.
    pub fn record(&self, envoy: &EnvoyFilter, record: &AuditRecord, options: MetricOptions) {
        let mut pending = lock(&self.sums.pending);
        let overflow = pending.len() >= MAX_SERIES;
        let mut added = false;
        record.for_each_series(options, overflow, |kind, root, values, value| {
            let recorded = match kind {
                MetricKind::Counter => self.counters.iter().find(|(r, _)| *r == root).map(|(_, id)| {
                    add(&mut pending, *id, root, values, value);
                    added = true;
                    true
                }),
                MetricKind::Histogram => self
                    .histograms
                    .iter()
                    .find(|(r, method, _)| *r == root && values.first() == Some(method))
                    .map(|(_, _, id)| envoy.record_histogram(*id, value)),
            };
            if recorded != Some(true) {
                ffi::log(LogLevel::Warn, &|| format!("meshgate: metric {root} {values:?} not recorded"));
            }
        });
        drop(pending);
        if added {
            self.sums.dirty.store(true, Ordering::Release);
        }
    }
}

/// Adds a counter series' increment to `pending` (the sum saturates).
fn add(pending: &mut Pending, counter: LabelledCounter, root: &str, values: &[&str], value: u64) {
    KEY.with(|key| {
        let mut key = key.borrow_mut();
        key.clear();
        key.push_str(root);
        for v in values {
            key.push(KEY_SEPARATOR);
            key.push_str(v);
        }
        match pending.get_mut(key.as_str()) {
            Some(p) => p.sum = p.sum.saturating_add(value),
            None => {
                let labels = values.iter().map(|v| (*v).to_string()).collect();
                pending.insert(key.as_str().into(), Series { counter, labels, sum: value });
            }
        }
    });
}

impl Drop for Metrics {
    /// The configuration is gone: its sums leave the registry, and with the last one the
    /// flush thread stops and is joined here (Envoy may unload the module next). What was
    /// not flushed yet is dropped with the configuration's own series.
    fn drop(&mut self) {
        let mut registry = lock(&REGISTRY);
        let mine = Arc::downgrade(&self.sums);
        registry.sums.retain(|w| w.strong_count() > 0 && !w.ptr_eq(&mine));
        if !registry.sums.is_empty() {
            return;
        }
        registry.generation += 1;
        let thread = registry.thread.take();
        drop(registry);
        WAKE.notify_all();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Sums {
    /// Takes every non-zero sum, leaving it at 0.
    fn take(&self) -> Vec<(LabelledCounter, Vec<String>, u64)> {
        let mut pending = lock(&self.pending);
        pending
            .values_mut()
            .filter(|p| p.sum > 0)
            .map(|p| (p.counter, p.labels.clone(), std::mem::take(&mut p.sum)))
            .collect()
    }
}

/// Registers a configuration's sums and makes sure the flush thread runs.
fn register(scheduler: ConfigScheduler) -> Result<Arc<Sums>, MetricsError> {
    let mut registry = lock(&REGISTRY);
    let event = registry.next_event;
    registry.next_event += 1;
    let sums = Arc::new(Sums {
        event,
        scheduler: Mutex::new(scheduler),
        pending: Mutex::new(HashMap::new()),
        dirty: AtomicBool::new(false),
    });
    registry.sums.push(Arc::downgrade(&sums));
    if registry.thread.is_none() {
        let generation = registry.generation;
        let thread = std::thread::Builder::new()
            .name("meshgate-metrics".into())
            .spawn(move || flush_thread(generation))
            .map_err(MetricsError::Thread)?;
        registry.thread = Some(thread);
    }
    Ok(sums)
}

/// Every period, asks the main thread to flush each configuration with new increments,
/// until its generation is no longer current.
fn flush_thread(generation: u64) {
    let mut registry = lock(&REGISTRY);
    loop {
        registry = WAKE.wait_timeout(registry, FLUSH_PERIOD).unwrap_or_else(PoisonError::into_inner).0;
        if registry.generation != generation {
            return;
        }
        registry.sums.retain(|w| w.strong_count() > 0);
        for sums in registry.sums.iter().filter_map(Weak::upgrade) {
            if sums.dirty.swap(false, Ordering::AcqRel) {
                lock(&sums.scheduler).commit(sums.event);
            }
        }
    }
}

/// The main thread's flush of the sums behind scheduler event `event`, through `envoy`, the
/// configuration they belong to.
pub fn flush(envoy: &EnvoyConfig, event: u64) {
    let sums = lock(&REGISTRY).sums.iter().filter_map(Weak::upgrade).find(|s| s.event == event);
    let Some(sums) = sums else {
        return;
    };
    for (counter, labels, sum) in sums.take() {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        if !envoy.increment_counter(counter, &labels, sum) {
            ffi::log(LogLevel::Warn, &|| format!("meshgate: counter {} not incremented by {sum}", counter.0));
        }
    }
}
