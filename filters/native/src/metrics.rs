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
//! of label values; ids here are typed ([`LabelledCounter`], [`LabelledHistogram`]) and every
//! one is defined with labels, so an id never lands in the other space.
//!
//! Every distinct series is a permanent stat: past [`MAX_SERIES`] distinct series on a
//! worker, tool labels collapse to `other`, as the wasm build does per worker (its VM).

use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use meshgate_core::audit::{self, AuditRecord, MetricKind, MetricOptions};

use crate::ffi::{self, EnvoyConfig, EnvoyFilter, LogLevel};

/// Distinct series one worker creates before tool labels collapse to `other`.
const MAX_SERIES: usize = 2000;

/// A counter defined with label names (the labelled id space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelledCounter(pub(crate) usize);

/// A histogram defined with label names (the labelled id space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelledHistogram(pub(crate) usize);

/// A metric Envoy would not define.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("envoy refused to define metric {0}")]
    Define(&'static str),
}

/// The metrics of one configuration.
pub struct Metrics {
    counters: Vec<(&'static str, LabelledCounter)>,
    histograms: Vec<(&'static str, LabelledHistogram)>,
}

thread_local! {
    /// Fingerprints of the series this worker recorded so far (no lock on the hot path).
    static SEEN: RefCell<(RandomState, HashSet<u64>)> = RefCell::new((RandomState::new(), HashSet::new()));
}

impl Metrics {
    /// Defines every metric (only possible inside `config_new`).
    pub fn define(envoy: &EnvoyConfig, options: MetricOptions) -> Result<Self, MetricsError> {
        let mut counters = Vec::new();
        for root in audit::metric::COUNTERS {
            let id =
                envoy.define_counter(root, audit::metric_labels(root, options)).ok_or(MetricsError::Define(root))?;
            counters.push((root, id));
        }
        let mut histograms = Vec::new();
        for root in audit::metric::HISTOGRAMS {
            let labels = audit::metric_labels(root, options);
            let id = envoy.define_histogram(root, labels).ok_or(MetricsError::Define(root))?;
            histograms.push((root, id));
        }
        Ok(Self { counters, histograms })
    }

    /// Records the metrics of one finished exchange. A refused update is logged, never
    /// fatal: metrics must not change what the gateway answers.
    pub fn record(&self, envoy: &EnvoyFilter, record: &AuditRecord, options: MetricOptions) {
        let overflow = SEEN.with(|seen| seen.borrow().1.len() >= MAX_SERIES);
        for series in record.metric_series(options, overflow) {
            let labels: Vec<&str> = series.labels.iter().map(|(_, v)| v.as_str()).collect();
            if !overflow {
                SEEN.with(|seen| {
                    let (hasher, seen) = &mut *seen.borrow_mut();
                    seen.insert(hasher.hash_one((series.root, &labels)));
                });
            }
            let recorded = match series.kind {
                MetricKind::Counter => self
                    .counters
                    .iter()
                    .find(|(root, _)| *root == series.root)
                    .is_some_and(|(_, id)| envoy.increment_counter(*id, &labels, series.value)),
                MetricKind::Histogram => self
                    .histograms
                    .iter()
                    .find(|(root, _)| *root == series.root)
                    .is_some_and(|(_, id)| envoy.record_histogram(*id, &labels, series.value)),
            };
            if !recorded {
                ffi::log(LogLevel::Warn, &|| format!("meshgate: metric {} not recorded", series.name()));
            }
        }
    }
}
