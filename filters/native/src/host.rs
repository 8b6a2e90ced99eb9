//! [`Host`] over Envoy's dynamic-module callbacks: what the pipeline asks of Envoy, for one
//! stream. The twin of `filters/wasm/src/host.rs`.
//!
//! Audit fields go to filter state under the same keys the wasm build's `set_property`
//! creates (`wasm.mcp_<field>`), so one access-log format and one set of span tags read
//! both builds, field for field.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use meshgate_core::audit::{AuditRecord, MetricOptions};
use meshgate_core::gateway::CalloutRequest;
use meshgate_core::pipeline::{Compute, CounterError, Host, Level};

use crate::ffi::{self, Body, EnvoyFilter, HeaderMap, LogLevel};
use crate::{counters, metrics};

/// Head-room above a body the pipeline holds, as the control plane leaves on the listener.
const BUFFER_HEADROOM_BYTES: u64 = 64 * 1024;
/// Prefix of the filter-state keys of audit fields (what proxy-wasm's `set_property` adds).
const AUDIT_KEY_PREFIX: &str = "wasm.";

/// The host of one hook call of one stream.
pub struct NativeHost<'a> {
    envoy: &'a mut EnvoyFilter,
    metrics: &'a metrics::Metrics,
}

impl<'a> NativeHost<'a> {
    pub fn new(envoy: &'a mut EnvoyFilter, metrics: &'a metrics::Metrics) -> Self {
        Self { envoy, metrics }
    }

    fn set_header(&mut self, map: HeaderMap, name: &str, value: Option<&str>) {
        // Removing an absent header is not a failure worth a line.
        if !self.envoy.set_header(map, name, value) && value.is_some() {
            ffi::log(LogLevel::Warn, &|| format!("meshgate: header {name} not set"));
        }
    }

    fn replace_body(&mut self, body: Body, new: &[u8]) {
        if !self.envoy.replace_body(body, new) {
            ffi::log(LogLevel::Warn, &|| format!("meshgate: {body:?} body not replaced"));
        }
    }
}

impl Host for NativeHost<'_> {
    fn with_request_headers<R>(&mut self, read: impl FnOnce(&[(&str, &str)]) -> R) -> R {
        self.envoy.with_headers(HeaderMap::Request, read)
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        self.set_header(HeaderMap::Request, name, value);
    }

    fn with_request_body<R>(&mut self, _size: usize, read: impl FnOnce(&[u8]) -> R) -> R {
        self.envoy.with_body(Body::Request, read)
    }

    fn set_request_body(&mut self, _size: usize, body: &[u8]) {
        self.replace_body(Body::Request, body);
    }

    fn with_response_headers<R>(&mut self, read: impl FnOnce(&[(&str, &str)]) -> R) -> R {
        self.envoy.with_headers(HeaderMap::Response, read)
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        self.set_header(HeaderMap::Response, name, value);
    }

    fn response_body(&mut self, _size: usize) -> Vec<u8> {
        self.envoy.body(Body::Response)
    }

    fn with_response_body<R>(&mut self, _size: usize, read: impl FnOnce(&[u8]) -> R) -> R {
        self.envoy.with_body(Body::Response, read)
    }

    fn set_response_body(&mut self, _size: usize, body: &[u8]) {
        self.replace_body(Body::Response, body);
    }

    fn clear_route_cache(&mut self) {
        self.envoy.clear_route_cache();
    }

    fn start_callout(&mut self, request: &CalloutRequest) -> Result<u64, String> {
        self.envoy.http_callout(&request.cluster, &request.headers, &request.body, request.timeout_ms).map_err(|code| {
            match code {
                1 => "missing required headers".to_string(),
                2 => format!("cluster {} not found", request.cluster),
                3 => "duplicate callout id".to_string(),
                other => format!("the request could not be created (result {other})"),
            }
        })
    }

    fn park_for_token(&mut self, key: &str) -> bool {
        match self.envoy.scheduler() {
            Some(scheduler) => {
                crate::parking::park(key, scheduler);
                true
            }
            None => {
                ffi::log(LogLevel::Error, &|| "meshgate: Envoy gave no scheduler for a parked stream".to_string());
                false
            }
        }
    }

    fn wake_token_waiters(&mut self, key: &str) {
        crate::parking::wake(key);
    }

    fn resume_request(&mut self) {
        self.envoy.continue_decoding();
    }

    /// `%RESPONSE_CODE_DETAILS%` is empty, as for the wasm build's local replies.
    fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.envoy.send_response(status, headers, body, "");
    }

    /// Envoy answers 413/500 itself past a stream's buffer limit (the listener's by
    /// default): raise it where the gateway's own limit is larger, so the gateway answers.
    fn hold_body(&mut self, bytes: u64) {
        self.envoy.raise_buffer_limit(bytes.saturating_add(BUFFER_HEADROOM_BYTES));
    }

    fn update_counter(
        &mut self,
        key: &str,
        cap: Option<u64>,
        _now_ns: u64,
        compute: &mut Compute<'_>,
    ) -> Result<(), CounterError> {
        counters::update(key, cap, compute)
    }

    fn record_metrics(&mut self, record: &AuditRecord, options: MetricOptions) {
        self.metrics.record(self.envoy, record, options);
    }

    fn set_audit_field(&mut self, key: &'static str, value: &str) {
        // `wasm.<key>` assembled on the stack: a field is written per exchange.
        let mut state_key = [0u8; 64];
        let length = AUDIT_KEY_PREFIX.len() + key.len();
        let Some(slot) = state_key.get_mut(..length) else {
            ffi::log(LogLevel::Warn, &|| format!("meshgate: audit field {key} not written (key too long)"));
            return;
        };
        slot[..AUDIT_KEY_PREFIX.len()].copy_from_slice(AUDIT_KEY_PREFIX.as_bytes());
        slot[AUDIT_KEY_PREFIX.len()..].copy_from_slice(key.as_bytes());
        if !self.envoy.set_filter_state(slot, value) {
            ffi::log(LogLevel::Warn, &|| format!("meshgate: audit field {key} not written"));
        }
    }

    fn now_ns(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }

    fn log(&mut self, level: Level, message: fmt::Arguments<'_>) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        ffi::log(level, &|| message.to_string());
    }
}
