//! [`Host`] over proxy-wasm host calls: what the pipeline asks of Envoy, for one stream.
//!
//! Host calls that fail are read as "nothing there" (an empty map or body) or logged,
//! never unwrapped: a trap would kill the worker's VM for every later request. Header
//! values may carry any byte (obs-text such as Latin-1): they are decoded leniently
//! ([`lenient`]).

use std::cell::RefCell;
use std::fmt;
use std::rc::Weak;
use std::time::{Duration, UNIX_EPOCH};

use meshgate_core::audit::{AuditRecord, MetricOptions};
use meshgate_core::gateway::{CalloutRequest, CalloutResponse};
use meshgate_core::pipeline::{Compute, CounterError, Host, Level, Stream};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use crate::{counters, metrics};

/// The proxy-wasm host of one stream: every call goes to the effective context, which is
/// this stream's (`context_id`) while one of its callbacks runs. `stream` is what a wake-up
/// of this stream runs ([`crate::parking`]).
pub struct WasmHost {
    pub context_id: u32,
    pub stream: Weak<RefCell<Stream>>,
}

impl Host for WasmHost {
    fn with_request_headers<R>(&mut self, read: impl FnOnce(&[(&str, &str)]) -> R) -> R {
        lend(lenient(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()), read)
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        if let Err(e) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
            log::warn!("meshgate: request header {name} not set: {e:?}");
        }
    }

    fn with_request_body<R>(&mut self, size: usize, read: impl FnOnce(&[u8]) -> R) -> R {
        read(&hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten().unwrap_or_default())
    }

    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        if let Err(e) = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, body) {
            log::warn!("meshgate: request body not replaced: {e:?}");
        }
    }

    fn with_response_headers<R>(&mut self, read: impl FnOnce(&[(&str, &str)]) -> R) -> R {
        lend(lenient(hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default()), read)
    }

    /// proxy-wasm has no call for it: Envoy's wasm host clears the route cache itself
    /// whenever a filter changes a request header (checked against Envoy 1.40 by
    /// `tests/e2e/test_virtual_servers.py`).
    fn clear_route_cache(&mut self) {}

    fn park_for_token(&mut self, key: &str) -> bool {
        crate::parking::park(key, self.context_id, self.stream.clone());
        true
    }

    fn wake_token_waiters(&mut self, key: &str) {
        crate::parking::wake(key, self.context_id);
    }

    fn resume_request(&mut self) {
        if let Err(e) = hostcalls::resume_http_request() {
            log::error!("meshgate: the request could not be resumed: {e:?}");
        }
    }

    fn start_callout(&mut self, request: &CalloutRequest) -> Result<u64, String> {
        let headers: Vec<(&str, &str)> = request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        hostcalls::dispatch_http_call(
            &request.cluster,
            headers,
            Some(&request.body),
            Vec::new(),
            Duration::from_millis(request.timeout_ms),
        )
        .map(u64::from)
        .map_err(|e| format!("{e:?} (cluster {})", request.cluster))
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        if let Err(e) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value) {
            log::warn!("meshgate: response header {name} not set: {e:?}");
        }
    }

    fn response_body(&mut self, size: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten().unwrap_or_default()
    }

    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, body) {
            log::warn!("meshgate: response body not replaced: {e:?}");
        }
    }

    fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        if let Err(e) = hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body)) {
            log::error!("meshgate: local reply {status} not sent: {e:?}");
        }
    }

    fn update_counter(
        &mut self,
        key: &str,
        cap: Option<u64>,
        now_ns: u64,
        compute: &mut Compute<'_>,
    ) -> Result<(), CounterError> {
        counters::update_capped(key, cap, now_ns, &mut |bytes| (compute(bytes), ())).map_err(|e| match e {
            counters::SharedError::Full { cap } => CounterError::Full { cap },
            counters::SharedError::Contended => CounterError::Contended,
            other => CounterError::Host(other.to_string()),
        })
    }

    fn record_metrics(&mut self, record: &AuditRecord, options: MetricOptions) {
        metrics::record(record, options);
    }

    /// Filter state `wasm.<key>` (proxy-wasm prefixes it), which the access log and span
    /// tags read.
    fn set_audit_field(&mut self, key: &'static str, value: &str) {
        if let Err(e) = hostcalls::set_property(vec![key], Some(value.as_bytes())) {
            log::warn!("meshgate: audit field {key} not written: {e:?}");
        }
    }

    fn now_ns(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }

    fn log(&mut self, level: Level, message: fmt::Arguments<'_>) {
        match level {
            Level::Info => log::info!("{message}"),
            Level::Warn => log::warn!("{message}"),
            Level::Error => log::error!("{message}"),
        }
    }
}

/// Runs `read` over a header map the host copied into the VM (one host call: a call per
/// header would cost more in proxy-wasm than the copy).
fn lend<R>(map: Vec<(String, String)>, read: impl FnOnce(&[(&str, &str)]) -> R) -> R {
    let pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    read(&pairs)
}

/// A header map as the core reads it, values decoded leniently. HTTP header values may
/// carry any byte (obs-text such as Latin-1), and the SDK's `String` readers panic on one
/// that is not UTF-8, which would trap and kill the worker's VM for every later request.
/// Here such bytes become U+FFFD: the value then equals no credential, session id or
/// routing header the core compares it with (it fails closed), and Envoy still forwards
/// the original bytes. Names are tokens (Envoy's codecs refuse anything else).
fn lenient(map: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    map.into_iter()
        .map(|(name, value)| {
            let value = String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            (name, value)
        })
        .collect()
}

/// The answer of the callout whose `on_http_call_response` runs now. Envoy gives no headers
/// when the call failed (reset, timeout, no healthy upstream).
pub fn callout_response(num_headers: usize, body_size: usize) -> Result<CalloutResponse, String> {
    if num_headers == 0 {
        return Err("the callout failed (reset, timeout or no upstream)".to_string());
    }
    let headers = lenient(hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default());
    let mut response = CalloutResponse::default();
    for (k, v) in headers {
        let key = k.to_ascii_lowercase();
        if key == ":status" {
            response.status = v.trim().parse().unwrap_or(0);
        }
        response.headers.push((key, v));
    }
    response.body =
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
    Ok(response)
}
