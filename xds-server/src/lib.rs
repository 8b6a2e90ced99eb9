//! Meshgate's control plane: from a registry file to a running, governed Envoy.
//!
//! ```text
//! registry.yaml ──registry──▶ Registry ──translate/bootstrap──▶ Envoy bootstrap ──launch──▶ envoy
//!                  (validate: same                (pure JSON builders)             (supervised child)
//!                   validator as the filter)
//! ```
//!
//! - [`registry`]: load and validate the registry (the public contract). Every error names
//!   file, line and path; the derived filter configuration goes through the filter's own
//!   `FilterConfig::compile`, so Envoy never receives configuration the filter would reject.
//! - [`translate`]: pure builders for Envoy resources (listener, routes, clusters, the wasm
//!   filter), shared by the static bootstrap and, later, the xDS snapshot.
//! - [`bootstrap`]: the static bootstrap (`meshgate bootstrap`, `meshgate up`).
//! - [`locate`], [`admin`], [`launch`]: finding Envoy and the wasm module, talking to
//!   Envoy's admin API, and supervising Envoy (`meshgate up`).
//! - [`cli`]: the command line; `main.rs` only calls [`cli::main`].
//!
//! Invariants: secrets (HS256 keys) never appear in any generated file — they are passed to
//! the wasm VM by environment variable name; Envoy's admin API only ever binds loopback;
//! nothing here panics on bad input.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod bootstrap;
pub mod cli;
pub mod launch;
pub mod locate;
pub mod registry;
pub mod translate;

#[cfg(test)]
mod test_support;
