//! Meshgate's Envoy filter as a proxy-wasm module: the only code that talks to the
//! proxy-wasm host. Its twin, `filters/native`, is the same filter as an Envoy dynamic
//! module; both only implement [`meshgate_core::pipeline::Host`] and hand every callback
//! to the core's [`pipeline::Stream`], which holds all stream logic.
//!
//! Each Envoy worker runs its own VM: the [`Root`] of a worker holds the compiled
//! [`Gateway`] and that worker's cache of verified tokens; every HTTP stream gets a
//! [`StreamContext`]. Files: [`host`] (the trait, over proxy-wasm host calls), [`counters`]
//! (local quota counters and in-flight slots in shared data, compare-and-swap), [`metrics`]
//! (Envoy stats, counters flushed in per-worker batches on the root context's tick).
//!
//! Body handling follows the proxy-wasm rules verified on Envoy 1.40: a POST pauses in the
//! headers callback (the plugin needs `allow_on_headers_stop_iteration: true`) until the
//! whole body is buffered; `Pause` from a body callback keeps the body buffered.

mod counters;
mod host;
mod metrics;
mod parking;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use meshgate_core::config::{EnvSecrets, FilterConfig, RawFilterConfig};
use meshgate_core::gateway::Gateway;
use meshgate_core::identity::TokenCache;
use meshgate_core::pipeline::{self, Flow};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use host::WasmHost;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, ..Root::default() })
    });
}}

/// Per-worker state: the compiled configuration and the token cache.
#[derive(Default)]
struct Root {
    context_id: u32,
    gateway: Option<Arc<Gateway>>,
    tokens: Rc<RefCell<TokenCache>>,
    /// Ticks since the last metrics flush (the tick is faster than the flush while a
    /// server has token exchange: parked streams are polled on it).
    ticks: u32,
}

/// The tick of a configuration with token exchange: how often streams parked for a token
/// exchange made on another worker look at the shared cache again.
const PARKED_POLL_PERIOD: std::time::Duration = std::time::Duration::from_millis(25);

impl Context for Root {
    fn on_done(&mut self) -> bool {
        metrics::flush();
        true
    }
}

impl RootContext for Root {
    fn on_tick(&mut self) {
        let polling = self.gateway.as_ref().is_some_and(|g| !g.config().token_exchanges.is_empty());
        if polling {
            parking::poll(self.context_id);
            self.ticks += 1;
            let per_flush = (metrics::FLUSH_PERIOD.as_millis() / PARKED_POLL_PERIOD.as_millis()).max(1);
            if u128::from(self.ticks) < per_flush {
                return;
            }
            self.ticks = 0;
        }
        metrics::flush();
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let compiled = RawFilterConfig::from_json(&bytes).and_then(|raw| FilterConfig::compile(&raw, &EnvSecrets));
        match compiled {
            Ok(config) => {
                if let Err(e) = counters::ensure_lock() {
                    log::error!("meshgate: shared data unavailable: {e}");
                    return false;
                }
                let gateway = Gateway::new(config);
                self.tokens = Rc::new(RefCell::new(gateway.new_token_cache()));
                let polling = !gateway.config().token_exchanges.is_empty();
                self.gateway = Some(Arc::new(gateway));
                self.set_tick_period(if polling { PARKED_POLL_PERIOD } else { metrics::FLUSH_PERIOD });
                true
            }
            Err(e) => {
                log::error!("meshgate: configuration rejected: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gateway = self.gateway.clone()?;
        Some(Box::new(StreamContext {
            context_id,
            stream: Rc::new(RefCell::new(pipeline::Stream::new(gateway))),
            tokens: self.tokens.clone(),
            #[cfg(feature = "test-crash-trigger")]
            crash_at: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream: the core's pipeline, driven by proxy-wasm callbacks.
struct StreamContext {
    context_id: u32,
    /// Shared with [`parking`], which runs a parked stream's wake-up from another
    /// context's callback (always on this worker's thread).
    stream: Rc<RefCell<pipeline::Stream>>,
    tokens: Rc<RefCell<TokenCache>>,
    /// Test builds only: the callback this request asked the VM to crash in.
    #[cfg(feature = "test-crash-trigger")]
    crash_at: Option<String>,
}

impl Context for StreamContext {
    /// A fan-out callout ended (`dispatch_http_call`): its answer, or (no headers: reset,
    /// timeout, no upstream) its failure.
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let answer = host::callout_response(num_headers, body_size);
        let mut host = self.host();
        self.stream.borrow_mut().on_callout_done(&mut host, u64::from(token_id), answer);
    }
}

impl StreamContext {
    fn host(&self) -> WasmHost {
        WasmHost { context_id: self.context_id, stream: Rc::downgrade(&self.stream) }
    }
}

/// proxy-wasm has one `Pause` for "hold the data" and "answered locally".
fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause | Flow::Answered => Action::Pause,
    }
}

impl HttpContext for StreamContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-crash-trigger")]
        {
            self.crash_at = self.get_http_request_header(test_crash::HEADER);
            test_crash::maybe(&self.crash_at, "request-headers");
        }
        let mut tokens = self.tokens.borrow_mut();
        let mut host = self.host();
        action(self.stream.borrow_mut().on_request_headers(&mut host, &mut tokens, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.stream.borrow_mut().on_request_body(&mut self.host(), body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.stream.borrow_mut().on_request_trailers(&mut self.host()))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-crash-trigger")]
        test_crash::maybe(&self.crash_at, "response-headers");
        action(self.stream.borrow_mut().on_response_headers(&mut self.host(), end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-crash-trigger")]
        test_crash::maybe(&self.crash_at, "response-body");
        action(self.stream.borrow_mut().on_response_body(&mut self.host(), body_size, end_of_stream))
    }

    /// Envoy calls this once for every stream, however it ended (client resets included),
    /// before the access loggers run.
    fn on_log(&mut self) {
        self.stream.borrow_mut().on_log(&mut self.host());
    }
}

/// Test builds only (feature `test-crash-trigger`): a deliberate VM crash, so the e2e suite
/// can prove that a crashed VM fails one request and is reloaded for the next.
#[cfg(feature = "test-crash-trigger")]
mod test_crash {
    /// The request header naming the callback to crash in.
    pub const HEADER: &str = "x-meshgate-test-crash";

    /// Aborts the VM (a wasm trap: Envoy's `RuntimeError` fail state) when `asked` names
    /// `callback`.
    pub fn maybe(asked: &Option<String>, callback: &str) {
        if asked.as_deref().is_some_and(|v| v.trim() == callback) {
            log::error!("meshgate: test crash in {callback}");
            std::process::abort();
        }
    }
}
