//! Counters of the rate-limit service, rendered as Prometheus text by the admin API's
//! `/metrics`. Plain atomics and one small map: no metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What the service answered for one rule of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    /// Counted and admitted.
    Ok,
    /// Counted and refused (429).
    OverLimit,
    /// Redis unreachable, `failure_mode: deny`: refused uncounted.
    FailedClosed,
    /// Redis unreachable, `failure_mode: allow`: admitted uncounted.
    FailedOpen,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Ok => "ok",
            Decision::OverLimit => "over_limit",
            Decision::FailedClosed => "failed_closed",
            Decision::FailedOpen => "failed_open",
        }
    }
}

/// See the module docs. Shared by the gRPC service and the admin API.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, Decision), u64>>,
    store_errors: AtomicU64,
    unknown_rules: AtomicU64,
}

impl Metrics {
    pub fn record(&self, rule: &str, decision: Decision) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((rule.to_string(), decision)).or_default() += 1;
    }

    /// One failed attempt to reach the counters (one per request, whatever its rule count).
    pub fn record_store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A descriptor naming no global rule of the current registry (answered OK).
    pub fn record_unknown_rule(&self) {
        self.unknown_rules.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self, rule: &str, decision: Decision) -> u64 {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(rule.to_string(), decision)).copied().unwrap_or(0)
    }

    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    pub fn unknown_rules(&self) -> u64 {
        self.unknown_rules.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP meshgate_ratelimit_requests_total Global rate-limit decisions, per rule.");
        let _ = writeln!(out, "# TYPE meshgate_ratelimit_requests_total counter");
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((rule, decision), n) in map {
            let _ = writeln!(
                out,
                "meshgate_ratelimit_requests_total{{rule=\"{}\",decision=\"{}\"}} {n}",
                escape_label(&rule),
                decision.as_str()
            );
        }
        for (name, help, value) in [
            (
                "meshgate_ratelimit_store_errors_total",
                "Requests whose global counters could not be reached (Redis down or slow).",
                self.store_errors(),
            ),
            (
                "meshgate_ratelimit_unknown_rule_total",
                "Descriptors naming no global rule of the current registry (answered OK).",
                self.unknown_rules(),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// Escapes a Prometheus label value (`\`, `"`, newline).
pub fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.record("fleet", Decision::Ok);
        m.record("fleet", Decision::Ok);
        m.record("fleet", Decision::OverLimit);
        m.record_store_error();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("meshgate_ratelimit_requests_total{rule=\"fleet\",decision=\"ok\"} 2\n"), "{out}");
        assert!(out.contains("meshgate_ratelimit_requests_total{rule=\"fleet\",decision=\"over_limit\"} 1\n"));
        assert!(out.contains("meshgate_ratelimit_store_errors_total 1\n"));
        assert!(out.contains("# TYPE meshgate_ratelimit_store_errors_total counter\n"));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
