//! Global rate limits: meshgate as Envoy's rate-limit service, backed by Redis.
//!
//! ```text
//! agent ─▶ Envoy ─▶ [meshgate wasm] ─ x-meshgate-rl-<rule>: <counter key> ─▶ [ratelimit] ─▶ router
//!                                                                              │ gRPC ShouldRateLimit
//!                                     meshgate (same port as ADS) ◀────────────┘
//!                                       └─ one Lua script per request ─▶ Redis (TIME, counters)
//! ```
//!
//! - [`redis`]: a minimal RESP client and connection pool (reconnects by construction).
//! - [`store`]: the counters: token buckets and fixed windows in one atomic script, the
//!   same arithmetic as the filter's local counters, Redis time for every meshgate.
//! - [`service`]: the gRPC service: descriptors → rules of the current registry → store →
//!   `OK`/`OVER_LIMIT`, the failure mode when Redis is unavailable.
//! - [`metrics`]: counters for the admin API's `/metrics`.
//!
//! The xDS side (the `ratelimit` filter after the wasm filter, per-route descriptors) is in
//! `translate::ratelimit`.

pub mod metrics;
pub mod redis;
pub mod service;
pub mod store;

pub use metrics::{Decision, Metrics};
pub use service::{RateLimiter, RlsService};
