//! The registry file exactly as written: serde shapes, no meaning attached yet.
//!
//! Every struct denies unknown keys, so a typo is an error with a line number rather than a
//! silently ignored setting. `policy`, `limits`, `auth.api_keys` and `auth.anonymous` *are*
//! the filter's own raw types: the registry cannot drift from what the filter accepts.
//! Only what the registry says differently from the filter config has its own shape here
//! (servers with URLs, JWT issuers with `jwks_file`, listener/admin/envoy).
//!
//! Numbers are read wider than their final type (`u64`) so that an out-of-range value gets
//! a message naming the range instead of the deserializer's "invalid u32".

use meshgate_core::config::{
    RawAnonymous, RawApiKey, RawLimits, RawPolicy, RawQuotaRule, RawRedactionRule, RawSizeLimits,
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub listener: RawListener,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    pub servers: Vec<RawServer>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub limits: RawLimits,
    /// PII/secret redaction rules, passed to the filter as they are.
    #[serde(default)]
    pub redaction: Vec<RawRedactionRule>,
    /// Environment variable holding the HMAC key for `mode: hash` redaction.
    #[serde(default)]
    pub redaction_hash_key_env: Option<String>,
    /// Rate limits and quotas on tool calls, passed to the filter as they are.
    #[serde(default)]
    pub quotas: Vec<RawQuotaRule>,
    #[serde(default)]
    pub envoy: RawEnvoy,
    /// meshgate's rate-limit service for `scope: global` quotas (Redis-backed).
    #[serde(default)]
    pub rate_limit_service: Option<RawRateLimitService>,
    /// Audit log, tracing and metric labels (`super::observability`).
    #[serde(default)]
    pub observability: super::observability::RawObservability,
    /// Which build of the filter Envoy runs.
    #[serde(default)]
    pub filter: RawFilterSection,
    /// A stats/readiness listener (`/stats/prometheus`, `/ready`), `super::edge`.
    #[serde(default)]
    pub stats: Option<super::edge::RawStats>,
    /// Virtual MCP servers: one endpoint over a selection of several servers' tools and
    /// prompts; the filter's own raw type (`meshgate_core::virtual_server`).
    #[serde(default)]
    pub virtual_servers: Vec<meshgate_core::virtual_server::RawVirtualServer>,
    /// Environment variable holding the key (≥ 32 bytes) sealing virtual-server session ids
    /// (session-based MCP eras); passed to Envoy like every filter secret.
    #[serde(default)]
    pub virtual_session_key_env: Option<String>,
    /// Environment variable holding the previous key during a rotation (still unseals).
    #[serde(default)]
    pub virtual_session_previous_key_env: Option<String>,
    /// Pinned definitions: the lockfile and the description scan (`servers[].pinning` sets
    /// each server's mode).
    #[serde(default)]
    pub pinning: Option<RawPinning>,
    /// The admin API's `/catalog`: whether meshgate asks the servers for their tools, and
    /// how often.
    #[serde(default)]
    pub catalog: Option<RawCatalog>,
    /// Calls that wait for a person's approval; the filter's own raw type
    /// (`meshgate_core::approval`).
    #[serde(default)]
    pub approvals: Vec<meshgate_core::approval::RawApprovalRule>,
    /// Where approvers reach the approval page.
    #[serde(default)]
    pub approval_page: Option<RawApprovalPage>,
}

/// `catalog`: tool discovery for the admin API's `/catalog`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// Ask every server for its tools (default true); `false`: declared tools only.
    #[serde(default)]
    pub discover: Option<bool>,
    /// How often every server is asked again, registry changes aside (default 60s).
    #[serde(default)]
    pub interval: Option<String>,
}

/// `approval_page`: the approval page's public address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovalPage {
    /// The page's URL as approvers reach it (default: meshgate's admin API address +
    /// `/approvals`), put in every pending call's error.
    #[serde(default)]
    pub url: Option<String>,
}

/// `pinning`: where the pin lockfile is and whether descriptions are scanned.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPinning {
    /// The lockfile, relative to the registry's folder (default `<registry stem>.lock.json`).
    #[serde(default)]
    pub lockfile: Option<String>,
    /// Scan the descriptions of pinned servers' definitions for prompt-injection markers.
    #[serde(default)]
    pub scan: Option<bool>,
}

/// `filter`: how Envoy runs the Meshgate filter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilterSection {
    /// `native` (default: the dynamic module `libmeshgate.so`) or `wasm` (proxy-wasm on V8).
    #[serde(default)]
    pub runtime: Option<String>,
}

/// `rate_limit_service`: where global quota counters live and what happens when they cannot
/// be reached. Required as soon as one quota has `scope: global`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimitService {
    /// `redis://[[user]:password@]host[:port][/db]`. Exactly one of the two.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Environment variable of meshgate holding the Redis URL (it may carry a password).
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// `deny` (default: a call is refused when the counters are unreachable) or `allow`.
    #[serde(default)]
    pub failure_mode: Option<String>,
    /// How long Envoy waits for meshgate's answer (default `100ms`).
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    #[serde(default)]
    pub address: Option<String>,
    /// Wider than `u16` so an out-of-range port gets our message, not "invalid u16".
    pub port: u64,
    /// `Host` patterns clients may address the gateway by (`meshgate_core::origin`).
    /// Default: loopback names on a loopback listener, any Host otherwise.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// `Origin` patterns whose pages may call every server. Default: loopback origins on a
    /// loopback listener, none otherwise.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// CORS for every server's route (a server's own `cors` replaces it). Off by default.
    #[serde(default)]
    pub cors: Option<RawCors>,
    /// TLS (and mTLS) on the listener (`super::edge`).
    #[serde(default)]
    pub tls: Option<super::edge::RawListenerTls>,
    /// Trust the connection's peer as the client address (an edge proxy). Default false.
    #[serde(default)]
    pub use_remote_address: Option<bool>,
    /// Proxies in front whose `X-Forwarded-For` entries are trusted. Default 0.
    #[serde(default)]
    pub xff_num_trusted_hops: Option<u64>,
}

/// An opt-in CORS policy, answered by Envoy's CORS filter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origin patterns (the `allowed_origins` syntax) whose pages may call; they also pass
    /// the Origin check on the routes this policy covers. Required, not empty.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// `Access-Control-Allow-Credentials: true` (cookies, TLS client certificates). Default false.
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// How long a browser may cache a preflight answer (default `10m`).
    #[serde(default)]
    pub max_age: Option<String>,
    /// Answer Chrome's private-network-access preflights (a public page calling a gateway
    /// on a private or loopback address). Default false.
    #[serde(default)]
    pub allow_private_network_access: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub port: u64,
    /// Envoy admin's IP address (default 127.0.0.1; anything else warns).
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: String,
    /// One upstream endpoint. Exactly one of `url` and `urls`.
    #[serde(default)]
    pub url: Option<String>,
    /// Several endpoints of the same server (same scheme and path), load-balanced by Envoy.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub outlier_detection: Option<RawOutlierDetection>,
    #[serde(default)]
    pub circuit_breakers: Option<RawCircuitBreakers>,
    #[serde(default)]
    pub credentials: Option<RawCredentials>,
    /// Declared tools, for discovery (`/catalog`) and per-tool size limits; policy does not
    /// depend on them.
    #[serde(default)]
    pub tools: Vec<RawTool>,
    /// Size guardrails for this server, overriding the top-level `limits`.
    #[serde(default)]
    pub limits: Option<RawSizeLimits>,
    /// CORS for this server's route, replacing `listener.cors`.
    #[serde(default)]
    pub cors: Option<RawCors>,
    /// `observe` or `enforce`: pin this server's definitions (the lockfile's entry).
    #[serde(default)]
    pub pinning: Option<String>,
}

/// Trust for `https://` upstreams.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM bundle of the CAs to trust instead of the system ones.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Server name to send and to verify, when not the URL's host.
    #[serde(default)]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// `tcp`, `http` or `none`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub healthy_threshold: Option<u64>,
    #[serde(default)]
    pub unhealthy_threshold: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub consecutive_5xx: Option<u64>,
    #[serde(default)]
    pub consecutive_gateway_failure: Option<u64>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreakers {
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub max_pending_requests: Option<u64>,
    #[serde(default)]
    pub max_requests: Option<u64>,
}

/// A secret the gateway adds to every request it forwards to this server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    /// Header to set (default `authorization`).
    #[serde(default)]
    pub header: Option<String>,
    /// Prepended to the value, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Environment variable of meshgate holding the value. Exactly one of the two.
    #[serde(default)]
    pub value_env: Option<String>,
    /// File holding the value (trailing newline ignored).
    #[serde(default)]
    pub value_file: Option<String>,
    /// The caller's own upstream token by OAuth 2.0 Token Exchange (RFC 8693) instead of
    /// (or, for consumers without a bearer token, besides) the static value.
    #[serde(default)]
    pub exchange: Option<RawTokenExchange>,
}

/// `servers[].credentials.exchange`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenExchange {
    /// The token endpoint: `https://` (`http://` only on a loopback address).
    pub token_endpoint: String,
    /// Trust for an `https` token endpoint (as `servers[].tls`).
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// How meshgate authenticates to the token endpoint.
    pub client_auth: RawClientAuth,
    /// RFC 8693 `audience`.
    #[serde(default)]
    pub audience: Option<String>,
    /// RFC 8707 `resource` values: absolute URIs.
    #[serde(default)]
    pub resource: Vec<String>,
    /// Scopes to request (space-separated).
    #[serde(default)]
    pub scope: Option<String>,
    /// `access_token` (default), `jwt` or `id_token`, or the full RFC 8693 URI.
    #[serde(default)]
    pub subject_token_type: Option<String>,
    /// Not supported yet: refused with the reason.
    #[serde(default)]
    pub actor_token: Option<String>,
    /// Token endpoint timeout (default 2s, at most 30s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// A token is used until this long before it expires (default 30s).
    #[serde(default)]
    pub refresh_skew: Option<String>,
    /// Cache slots for this server's tokens (default 4096).
    #[serde(default)]
    pub cache_entries: Option<u64>,
    /// `refuse` (default) or `static`: what consumers without a bearer token get.
    #[serde(default)]
    pub api_key_consumers: Option<String>,
}

/// `servers[].credentials.exchange.client_auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// `client_secret_basic` (the only method supported yet).
    #[serde(default)]
    pub method: Option<String>,
    pub client_id: String,
    /// Environment variable of meshgate holding the client secret. Exactly one of the two.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the client secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Size guardrails for calls of this tool, overriding the server's.
    #[serde(default)]
    pub limits: Option<RawSizeLimits>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub jwt: Vec<RawJwtIssuer>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    #[serde(default)]
    pub anonymous: Option<RawAnonymous>,
    #[serde(default)]
    pub resource_metadata: Option<String>,
    #[serde(default)]
    pub token_cache_entries: Option<usize>,
    /// OAuth scopes advertised in the protected-resource metadata (`scopes_supported`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Client-certificate identities (the filter's own raw type).
    #[serde(default)]
    pub mtls: Vec<meshgate_core::identity::RawPeerIdentity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    #[serde(default)]
    pub consumer_claim: Option<String>,
    #[serde(default)]
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub leeway_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvoy {
    #[serde(default)]
    pub concurrency: Option<u64>,
    #[serde(default)]
    pub log_level: Option<String>,
    /// CA bundle on the Envoy hosts used to verify `https://` upstreams without `tls.ca_file`.
    #[serde(default)]
    pub system_ca_file: Option<String>,
}
