//! Meshgate's pure core: everything the Envoy filter decides, with no proxy-wasm in sight.
//!
//! The two builds of the filter (`filters/native`, a dynamic module, and `filters/wasm`,
//! proxy-wasm) implement [`pipeline::Host`] and hand every Envoy callback to
//! [`pipeline::Stream`], the per-stream state machine; the control plane calls
//! [`config::FilterConfig::compile`] to validate what it will push. Nothing here panics on
//! input: every failure is a value ([`reject::Rejection`] on the request path,
//! [`config::ConfigError`] at configure time).
//!
//! Request path, one parse per message:
//! 1. [`gateway::Gateway::on_request_head`] — Host and Origin ([`origin`]), route, HTTP
//!    method, content type/encoding, declared size, identity (JWT / API key / anonymous).
//! 2. [`gateway::Gateway::on_request_body`] — strict JSON-RPC parse ([`jsonrpc`]), MCP
//!    classification ([`mcp`]), 2026-07-28 header/body agreement, RBAC ([`policy`]).
//! 3. [`listing`] / [`sse`] — `*/list` responses filtered to what the caller may use, for
//!    JSON bodies and SSE streams event by event.
//! 4. [`redact`] — PII and secrets masked, hashed or blocked in string values of messages,
//!    for JSON bodies and SSE streams event by event.
#![forbid(unsafe_code)]
// Rejections are the cold path and carry what the client is told; boxing them buys nothing.
#![allow(clippy::result_large_err)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod approval;
pub mod audit;
pub mod capabilities;
pub mod config;
pub mod content_type;
pub mod gateway;
pub mod glob;
pub mod identity;
pub mod jsonrpc;
pub mod listing;
pub mod mcp;
pub mod origin;
pub mod param_headers;
pub mod pinning;
pub mod pipeline;
pub mod policy;
pub mod quota;
pub mod redact;
pub mod reject;
pub mod resource_uri;
pub mod session_seal;
pub mod sse;
pub mod upstream_token;
pub mod virtual_server;

/// The Envoy dynamic-module ABI the native build (`filters/native`, `libmeshgate.so`) is
/// built for. meshgate checks the Envoy it starts against it: the module declares Envoy
/// 1.40's callbacks and another Envoy refuses to load it (or, worse, mismatches a signature).
pub mod native_abi {
    /// Envoy `major.minor` whose ABI the module implements.
    pub const ENVOY_VERSION: &str = "1.40";
    /// What the module's `program_init` returns (Envoy 1.40 expects exactly this).
    pub const VERSION: &str = "v0.2.0";
}
