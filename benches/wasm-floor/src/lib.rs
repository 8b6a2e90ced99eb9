//! The floor configuration (f) of the load benchmark (`benches/load/run.py`, issue 7), and
//! the probe behind the per-operation cost table in BENCHMARKS.md.
//!
//! What every body-inspecting proxy-wasm filter must do and nothing else: pause in the
//! request-headers callback, read the whole request body once when it is complete, and
//! continue. Loaded with exactly Meshgate's plugin settings (V8,
//! `allow_on_headers_stop_iteration: true`), it measures the fixed cost of V8 and
//! proxy-wasm — the callbacks Envoy makes into the VM for every stream, Envoy buffering
//! the body, one body copy into the VM — so Meshgate's own share of its cost is the
//! difference between (c)/(d) and this.
//!
//! As a probe (`benches/load/instructions.py --probe`), a plugin configuration of the form
//! `floor-probe:<op>=<n>,…` adds `n` of one host operation per stream on top of the floor,
//! so the difference to the plain floor is that operation's cost: `props` (filter-state
//! writes in `on_log`, on the keys the audit access log reads), `counters` and
//! `histograms` (metric updates in `on_log`), `header` (single request-header reads),
//! `headers` (whole request-header-map reads) and `clock` (clock reads), all in the
//! callback where Meshgate makes them. Any other configuration (the load benchmark passes
//! Meshgate's own) is ignored.
//!
//! Invariants: never refuses, never rewrites, never panics.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot::default()) });
}}

/// The configuration prefix that turns the floor into a probe.
const PROBE_PREFIX: &str = "floor-probe:";

/// Filter-state keys the probe writes: the audit access log's own, so Envoy formats them.
const AUDIT_KEYS: [&str; 16] = [
    "mcp_method",
    "mcp_server",
    "mcp_target_kind",
    "mcp_target",
    "mcp_consumer",
    "mcp_roles",
    "mcp_decision",
    "mcp_redacted_total",
    "mcp_upstream_status",
    "mcp_decision_us",
    "mcp_reason",
    "mcp_quota",
    "mcp_redactions",
    "mcp_error_code",
    "mcp_upstream_error_code",
    "mcp_arguments",
];

/// Host operations added per stream (all zero: the plain floor).
#[derive(Debug, Default, Clone)]
struct Probe {
    props: usize,
    counters: usize,
    histograms: usize,
    header: usize,
    headers: usize,
    clock: usize,
    counter_id: u32,
    histogram_id: u32,
}

impl Probe {
    /// `floor-probe:props=10,header=2`; `None` for any other configuration.
    fn parse(config: &str) -> Option<Probe> {
        let ops = config.strip_prefix(PROBE_PREFIX)?;
        let mut probe = Probe::default();
        for op in ops.split(',').filter(|op| !op.is_empty()) {
            let (name, n) = op.split_once('=')?;
            let n: usize = n.trim().parse().ok()?;
            let slot = match name.trim() {
                "props" => &mut probe.props,
                "counters" => &mut probe.counters,
                "histograms" => &mut probe.histograms,
                "header" => &mut probe.header,
                "headers" => &mut probe.headers,
                "clock" => &mut probe.clock,
                _ => return None,
            };
            *slot = n;
        }
        Some(probe)
    }
}

#[derive(Default)]
struct FloorRoot {
    probe: Rc<Probe>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let Some(mut probe) = std::str::from_utf8(&config).ok().and_then(Probe::parse) else {
            return true; // the plain floor
        };
        probe.counter_id = hostcalls::define_metric(MetricType::Counter, "meshgate_floor_probe.counter").unwrap_or(0);
        probe.histogram_id =
            hostcalls::define_metric(MetricType::Histogram, "meshgate_floor_probe.histogram").unwrap_or(0);
        self.probe = Rc::new(probe);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor { probe: self.probe.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream. Envoy buffers the body while the headers are paused.
struct Floor {
    probe: Rc<Probe>,
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        for _ in 0..self.probe.headers {
            std::hint::black_box(self.get_http_request_headers());
        }
        for _ in 0..self.probe.header {
            std::hint::black_box(self.get_http_request_header(":path"));
        }
        for _ in 0..self.probe.clock {
            std::hint::black_box(self.get_current_time());
        }
        // A request without a body has nothing to inspect.
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        // The one body copy into the VM that any inspection needs; its bytes are not used.
        let body = self.get_http_request_body(0, body_size);
        std::hint::black_box(body);
        Action::Continue
    }

    fn on_log(&mut self) {
        for key in AUDIT_KEYS.iter().cycle().take(self.probe.props) {
            self.set_property(vec![key], Some(b"probe-value"));
        }
        for _ in 0..self.probe.counters {
            std::hint::black_box(hostcalls::increment_metric(self.probe.counter_id, 1).is_ok());
        }
        for _ in 0..self.probe.histograms {
            std::hint::black_box(hostcalls::record_metric(self.probe.histogram_id, 12).is_ok());
        }
    }
}
