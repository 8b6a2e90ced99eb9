//! Meshgate's control plane: from a registry file to a fleet of governed Envoys, live.
//!
//! ```text
//! registry.yaml ──registry──▶ Registry ──translate──▶ Resources ──snapshot──▶ Snapshot
//!   (watched by reload)   (same validator      (pure, typed      (consistent,
//!                          as the filter)       envoy-types)      content-hashed)
//!                                                                    │ control (watch)
//!                                   Envoys ◀── ADS: service (SotW / Delta) ◀┘
//! ```
//!
//! - [`registry`]: load and validate the registry (the public contract). Every error names
//!   file, line and path; the derived filter configuration goes through the filter's own
//!   `FilterConfig::compile`, so Envoy never receives configuration the filter would reject.
//! - [`translate`]: pure builders for Envoy resources; [`snapshot`]: packing, versioning,
//!   consistency; [`control`]: the published snapshot and per-node status;
//!   [`service`]: the ADS gRPC service; [`reload`]: load-on-edit; [`admin_api`]: the HTTP
//!   admin API; [`ratelimit`]: Envoy's rate-limit service for `scope: global` quotas
//!   (Redis-backed, on the ADS port); [`serve`]: all of it running.
//! - [`bootstrap`]: xDS and static Envoy bootstraps; [`locate`], [`envoy_admin`],
//!   [`launch`]: finding Envoy and the module, talking to Envoy's admin API, and
//!   supervising Envoy (`meshgate up`).
//! - [`cli`]: the command line; `main.rs` only calls [`cli::main`].
//!
//! Invariants: secrets never appear in logs, errors, generated files or the admin API (HS256
//! keys travel by environment variable name; upstream credentials only as SDS secrets);
//! Envoy's admin API only ever binds loopback; nothing here panics on bad input.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin_api;
pub mod approvals;
pub mod bootstrap;
pub mod cli;
pub mod control;
pub mod discovery;
pub mod envoy_admin;
pub mod launch;
pub mod locate;
pub mod mcp_client;
pub mod pin;
pub mod ratelimit;
pub mod registry;
pub mod reload;
pub mod render;
pub mod serve;
pub mod service;
pub mod snapshot;
pub mod translate;
pub mod transport_security;

#[cfg(test)]
mod test_support;
