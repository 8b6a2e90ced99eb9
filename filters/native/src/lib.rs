//! Meshgate's Envoy filter as a dynamic module (`libmeshgate.so`, Envoy 1.40, ABI `v0.2.0`):
//! the twin of `filters/wasm`. Both only implement [`meshgate_core::pipeline::Host`] and hand
//! every callback to the core's [`pipeline::Stream`], which holds all stream logic.
//!
//! Files: [`ffi`] (the C ABI: every `unsafe`, the exported hooks, panics caught), [`host`]
//! (the trait, over Envoy's callbacks), [`counters`] (local quota counters and in-flight
//! slots in process memory) and [`metrics`] (labelled Envoy stats, defined per
//! configuration).
//!
//! What native gives, and this build uses: one module per Envoy process, so module statics
//! are shared by every worker. Local quota counters and in-flight slots are exact across
//! workers without a host call ([`counters`]), and one verified-token cache serves every
//! worker of a configuration ([`Config`]).
//!
//! Bodies follow Envoy's buffering: a POST holds its headers (StopIteration) and buffers its
//! body (StopIterationAndBuffer) until the end, and what a body hook sees is what Envoy
//! holds followed by the current chunk (HTTP/1 ends with an extra, empty end-of-stream
//! chunk). A rewritten body replaces both; its `content-length` is set or removed by the
//! pipeline.
//!
//! Failure: a bad configuration is refused in `config_new` with the reason in Envoy's log
//! (Envoy NACKs it and the last good one keeps serving). A panic in a hook is caught in
//! [`ffi`] and fails the request closed: HTTP 500 with a JSON-RPC error, logged through
//! Envoy's log by the panic hook ([`program_init`]).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod counters;
mod ffi;
mod host;
mod metrics;
mod parking;

use std::sync::{Arc, Mutex, PoisonError};

use meshgate_core::config::{EnvSecrets, FilterConfig, RawFilterConfig};
use meshgate_core::gateway::Gateway;
use meshgate_core::identity::TokenCache;
use meshgate_core::jsonrpc::{code, error_body};
use meshgate_core::pipeline::{self, Flow};

use ffi::{EnvoyConfig, EnvoyFilter, LogLevel};
use host::NativeHost;

pub use meshgate_core::native_abi;
/// `%RESPONSE_CODE_DETAILS%` of a request failed closed after a panic.
const PANIC_DETAILS: &str = "meshgate_internal_error";

/// Runs once per Envoy process: Envoy's log gets the panics instead of stderr.
fn program_init() {
    std::panic::set_hook(Box::new(|info| {
        ffi::log(LogLevel::Error, &|| format!("meshgate: panic, the request fails closed: {info}"));
    }));
}

/// One compiled configuration: shared by every worker, dropped on whichever ends its last
/// stream.
pub struct Config {
    gateway: Arc<Gateway>,
    /// Verified tokens, for every worker of this Envoy (a new configuration starts empty:
    /// its issuers, keys or claims may differ).
    tokens: Mutex<TokenCache>,
    metrics: metrics::Metrics,
}

impl Config {
    /// Compiles the filter JSON; `None` (reason logged) refuses it.
    fn new(bytes: &[u8], envoy: &EnvoyConfig) -> Option<Self> {
        let compiled = RawFilterConfig::from_json(bytes).and_then(|raw| FilterConfig::compile(&raw, &EnvSecrets));
        let config = match compiled {
            Ok(config) => config,
            Err(e) => {
                ffi::log(LogLevel::Error, &|| format!("meshgate: configuration rejected: {e}"));
                return None;
            }
        };
        let metrics = match metrics::Metrics::define(envoy, config.metrics) {
            Ok(metrics) => metrics,
            Err(e) => {
                ffi::log(LogLevel::Error, &|| format!("meshgate: configuration rejected: {e}"));
                return None;
            }
        };
        let gateway = Gateway::new(config);
        let tokens = Mutex::new(gateway.new_token_cache());
        Some(Self { gateway: Arc::new(gateway), tokens, metrics })
    }
}

/// Which hook was running (for the log when one fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    StreamComplete,
    /// A fan-out callout ended.
    CalloutDone,
    /// The token exchange a parked stream waits for settled.
    TokenReady,
}

/// One HTTP stream.
pub struct Filter {
    config: Arc<Config>,
    stream: pipeline::Stream,
    /// A hook panicked: the request was failed closed and the pipeline is not run again.
    failed: bool,
    /// `stream_complete` ran (it gives the in-flight slot back).
    completed: bool,
    /// Test builds: the hook this stream's request asked to panic in.
    #[cfg(feature = "fault-injection")]
    fault: Option<Hook>,
}

impl Filter {
    fn new(config: Arc<Config>) -> Self {
        let stream = pipeline::Stream::new(config.gateway.clone());
        Self {
            config,
            stream,
            failed: false,
            completed: false,
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }
}

/// Header hooks: hold the headers while the pipeline waits or answered.
fn headers_status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => 0,
        Flow::Pause | Flow::Answered => 1,
    }
}

/// Body hooks: buffer while the pipeline waits; drop what comes after a local answer.
fn body_status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => 0,
        Flow::Pause => 1,
        Flow::Answered => 3,
    }
}

fn request_headers(filter: &mut Filter, envoy: &mut EnvoyFilter, end_of_stream: bool) -> u32 {
    if filter.failed {
        return 0;
    }
    #[cfg(feature = "fault-injection")]
    {
        filter.fault = fault::requested(envoy);
        fault::check(filter.fault, Hook::RequestHeaders);
    }
    let config = filter.config.clone();
    let mut host = NativeHost::new(envoy, &config.metrics);
    let mut tokens = config.tokens.lock().unwrap_or_else(PoisonError::into_inner);
    headers_status(filter.stream.on_request_headers(&mut host, &mut tokens, end_of_stream))
}

fn request_body(filter: &mut Filter, envoy: &mut EnvoyFilter, end_of_stream: bool) -> u32 {
    if filter.failed {
        return 0;
    }
    #[cfg(feature = "fault-injection")]
    fault::check(filter.fault, Hook::RequestBody);
    let config = filter.config.clone();
    let size = envoy.body_size(ffi::Body::Request);
    let mut host = NativeHost::new(envoy, &config.metrics);
    body_status(filter.stream.on_request_body(&mut host, size, end_of_stream))
}

fn request_trailers(filter: &mut Filter, envoy: &mut EnvoyFilter) -> u32 {
    if filter.failed {
        return 0;
    }
    let config = filter.config.clone();
    let mut host = NativeHost::new(envoy, &config.metrics);
    headers_status(filter.stream.on_request_trailers(&mut host))
}

fn response_headers(filter: &mut Filter, envoy: &mut EnvoyFilter, end_of_stream: bool) -> u32 {
    if filter.failed {
        return 0;
    }
    #[cfg(feature = "fault-injection")]
    fault::check(filter.fault, Hook::ResponseHeaders);
    let config = filter.config.clone();
    let mut host = NativeHost::new(envoy, &config.metrics);
    headers_status(filter.stream.on_response_headers(&mut host, end_of_stream))
}

fn response_body(filter: &mut Filter, envoy: &mut EnvoyFilter, end_of_stream: bool) -> u32 {
    if filter.failed {
        return 0;
    }
    #[cfg(feature = "fault-injection")]
    fault::check(filter.fault, Hook::ResponseBody);
    let config = filter.config.clone();
    let size = envoy.body_size(ffi::Body::Response);
    let mut host = NativeHost::new(envoy, &config.metrics);
    body_status(filter.stream.on_response_body(&mut host, size, end_of_stream))
}

/// A callout of this stream ended (a virtual server's discovery fan-out).
fn callout_done(
    filter: &mut Filter,
    envoy: &mut EnvoyFilter,
    id: u64,
    answer: Result<meshgate_core::gateway::CalloutResponse, String>,
) {
    if filter.failed || filter.completed {
        return;
    }
    let config = filter.config.clone();
    let mut host = NativeHost::new(envoy, &config.metrics);
    filter.stream.on_callout_done(&mut host, id, answer);
}

/// The token exchange this stream parked on settled (its scheduler's event).
fn token_ready(filter: &mut Filter, envoy: &mut EnvoyFilter, event: u64) {
    if filter.failed || filter.completed || event != parking::TOKEN_READY {
        return;
    }
    let config = filter.config.clone();
    let mut host = NativeHost::new(envoy, &config.metrics);
    filter.stream.on_token_ready(&mut host);
}

fn stream_complete(filter: &mut Filter, envoy: &mut EnvoyFilter) {
    if filter.completed {
        return;
    }
    filter.completed = true;
    let config = filter.config.clone();
    let mut host = NativeHost::new(envoy, &config.metrics);
    if filter.failed {
        // The pipeline's state is whatever the panic left: only give the slot back.
        filter.stream.release_in_flight(&mut host);
        return;
    }
    #[cfg(feature = "fault-injection")]
    fault::check(filter.fault, Hook::StreamComplete);
    filter.stream.on_log(&mut host);
}

/// A stream whose filter could not be created: refused at its first hook that can still
/// answer (fail closed), once.
fn refuse_ungoverned(envoy: &mut EnvoyFilter, hook: Hook) {
    if hook == Hook::RequestHeaders {
        ffi::log(LogLevel::Error, &|| "meshgate: no filter for this stream; the request is refused (HTTP 500)".into());
        let body =
            error_body(None, code::INTERNAL_ERROR, "internal error in the gateway; the request was not forwarded");
        envoy.send_response(500, &[("content-type", "application/json")], &body, PANIC_DETAILS);
    }
}

/// After a caught panic: answer the request with a JSON-RPC error (HTTP 500) if it can
/// still be answered, and never run the pipeline for this stream again. Fail closed: the
/// request is not forwarded by this filter.
fn fail_closed(filter: &mut Filter, envoy: &mut EnvoyFilter, hook: Hook) {
    let first = !filter.failed;
    filter.failed = true;
    if hook == Hook::StreamComplete {
        let config = filter.config.clone();
        filter.stream.release_in_flight(&mut NativeHost::new(envoy, &config.metrics));
        return;
    }
    if first {
        ffi::log(LogLevel::Error, &|| format!("meshgate: {hook:?} failed; the request is refused (HTTP 500)"));
        let body =
            error_body(None, code::INTERNAL_ERROR, "internal error in the gateway; the request was not forwarded");
        envoy.send_response(500, &[("content-type", "application/json")], &body, PANIC_DETAILS);
    }
}

#[cfg(feature = "fault-injection")]
mod fault {
    //! Test builds only (`--features fault-injection`, never `make build`): the request
    //! header `x-meshgate-fault: panic-in-<hook>` makes that hook of this stream panic, so
    //! the e2e suite can prove that a panic fails the request closed while Envoy keeps
    //! serving.

    use super::{ffi, EnvoyFilter, Hook};

    /// The header naming the hook to panic in (the pipeline strips it, as every
    /// `x-meshgate-*` header a client sends, so it is read before the pipeline runs).
    const HEADER: &str = "x-meshgate-fault";

    /// The hook the request asks to fail in, if any.
    pub fn requested(envoy: &EnvoyFilter) -> Option<Hook> {
        envoy.with_headers(ffi::HeaderMap::Request, |headers| {
            let value = headers.iter().find(|(k, _)| *k == HEADER).map(|(_, v)| *v)?;
            match value {
                "panic-in-request-headers" => Some(Hook::RequestHeaders),
                "panic-in-request-body" => Some(Hook::RequestBody),
                "panic-in-response-headers" => Some(Hook::ResponseHeaders),
                "panic-in-response-body" => Some(Hook::ResponseBody),
                "panic-in-stream-complete" => Some(Hook::StreamComplete),
                _ => None,
            }
        })
    }

    /// Panics when `hook` is the one asked for.
    #[allow(clippy::panic)]
    pub fn check(asked: Option<Hook>, hook: Hook) {
        if asked == Some(hook) {
            panic!("fault injected in {hook:?} ({HEADER})");
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every worker reads the configuration at once and any of them may drop it last.
    #[test]
    fn the_configuration_is_send_and_sync() {
        fn shared_by_workers<T: Send + Sync>() {}
        shared_by_workers::<super::Config>();
    }

    #[test]
    fn program_init_answers_the_abi_meshgate_checks_against() {
        assert_eq!(super::ffi::ABI_VERSION.to_str().ok(), Some(super::native_abi::VERSION));
    }
}
