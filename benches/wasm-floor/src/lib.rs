//! The floor configuration (f) of the load benchmark (`benches/load/run.py`, issue 7).
//!
//! What every body-inspecting proxy-wasm filter must do and nothing else: pause in the
//! request-headers callback, read the whole request body once when it is complete, and
//! continue. Loaded with exactly Meshgate's plugin settings (V8,
//! `allow_on_headers_stop_iteration: true`), it measures the fixed cost of V8 and
//! proxy-wasm — the callbacks Envoy makes into the VM for every stream, Envoy buffering
//! the body, one body copy into the VM — so Meshgate's own share of its cost is the
//! difference between (c)/(d) and this.
//!
//! Invariants: never refuses, never rewrites, never panics; it ignores its configuration.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
}}

struct FloorRoot;

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream. Stateless: Envoy buffers the body while the headers are paused.
struct Floor;

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
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
}
