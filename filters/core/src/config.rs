//! The filter's configuration: the JSON document Envoy hands to `on_configure`.
//!
//! Two steps, as everywhere in Meshgate: [`RawFilterConfig`] is the serde shape
//! (`deny_unknown_fields`, so a typo is an error, not a silently ignored key) and
//! [`FilterConfig`] is the validated, compiled form the request path uses. The control
//! plane (`meshgate`) builds a `RawFilterConfig` from the registry and runs the very
//! same [`FilterConfig::compile`] before it hands anything to Envoy, so Envoy never
//! receives a configuration the filter would reject.
//!
//! Secrets never travel in this document: an HS256 secret is named by an environment
//! variable that the wasm VM reads at configure time (`vm_config.environment_variables`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default cap on a request body the filter buffers and parses (1 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1024 * 1024;
/// Default cap on a JSON response body the filter buffers to filter (8 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;
/// Default `limits.max_local_counters`: at about 200 bytes each, 20 MB of shared data.
pub const DEFAULT_MAX_LOCAL_COUNTERS: u64 = 100_000;
/// Default clock skew tolerated on `exp` / `nbf`.
pub const DEFAULT_JWT_LEEWAY_SECONDS: u64 = 30;
/// Default number of verified tokens remembered per Envoy worker.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 4096;
/// Default path prefix under which servers are served (`/mcp/<server>`).
pub const DEFAULT_ROUTE_PREFIX: &str = "/mcp/";

/// The configuration as serialized between the control plane and the filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilterConfig {
    /// Path prefix of MCP routes; a server `crm` is served at `<prefix>crm`.
    #[serde(default = "default_route_prefix")]
    pub route_prefix: String,
    /// Names of the MCP servers behind this listener (`[a-z0-9-]+`).
    pub servers: Vec<String>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub limits: RawLimits,
    /// PII and secret redaction rules; when several apply, the strictest mode wins ([`crate::redact`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redaction: Vec<RawRedactionRule>,
    /// Name of the environment variable holding the HMAC key of `mode: hash` (≥ 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction_hash_key_env: Option<String>,
    /// Rate limits and quotas on `tools/call` ([`crate::quota`]); every matching rule is charged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<RawQuotaRule>,
    /// Size guardrails per server (and per tool), overriding `limits`. Keyed by server name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_limits: BTreeMap<String, RawServerLimits>,
    /// Metrics and audit options ([`crate::audit`]).
    #[serde(default, skip_serializing_if = "RawObservability::is_default")]
    pub observability: RawObservability,
    /// Which `Host` and `Origin` requests may carry ([`crate::origin`]). Absent: any Host,
    /// no `Origin`.
    #[serde(default, skip_serializing_if = "crate::origin::RawOriginPolicy::is_default")]
    pub origin_policy: crate::origin::RawOriginPolicy,
    /// Virtual servers: one endpoint over a selection of several servers' tools and prompts
    /// ([`crate::virtual_server`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_servers: Vec<crate::virtual_server::RawVirtualServer>,
    /// How the filter reaches each real server itself, for the fan-out callouts of virtual
    /// servers (rendered by the control plane from the server's route; keyed by server).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, crate::virtual_server::Upstream>,
    /// Servers that get the caller's own upstream token by OAuth token exchange
    /// ([`crate::upstream_token`]), keyed by server; rendered by the control plane from
    /// `servers[].credentials.exchange` (no secret: client authentication is Envoy's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub token_exchanges: BTreeMap<String, crate::upstream_token::RawTokenExchange>,
    /// Environment variable holding the key (≥ 32 bytes) that seals the session ids of
    /// virtual servers in the session-based MCP eras ([`crate::session_seal`]). Without it,
    /// virtual servers speak only 2026-07-28.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_session_key_env: Option<String>,
    /// Environment variable holding the previous key during a rotation: ids it sealed are
    /// still accepted; new ids are sealed with the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_session_previous_key_env: Option<String>,
    /// Pinned definitions per server ([`crate::pinning`]), from the registry's lockfile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pinning: BTreeMap<String, crate::pinning::RawServerPins>,
    /// Calls that wait for a person's approval ([`crate::approval`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<crate::approval::RawApprovalRule>,
    /// Where the filter asks meshgate about approvals (set by the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_service: Option<crate::approval::RawApprovalService>,
}

/// How the filter reports what it decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// Add a `consumer` label to tool-call metrics. Off by default: only turn it on when the
    /// set of consumers is bounded (every distinct value is a permanent Envoy stat).
    #[serde(default)]
    pub consumer_label: bool,
    /// `server/tool` globs whose `tools/call` arguments are copied into the audit record
    /// (filter state `wasm.mcp_arguments`). Empty by default: argument values never appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_values: Vec<String>,
    /// Envoy traces these requests (the control plane sets it when the registry names an
    /// OpenTelemetry collector). Span tags are read from the audit fields when the stream
    /// ends, before `on_log`, so the filter then writes them as soon as the exchange is
    /// settled, and again in `on_log` only where a value changed; without tracing it writes
    /// each field once, in `on_log`, for the access loggers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tracing: bool,
    /// Write the audit fields to filter state at all (default true). Every field is a host
    /// call and a filter-state object per exchange; the control plane turns this off when
    /// neither an audit access log nor a tracer reads them. Metrics do not depend on it.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub audit_fields: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

impl Default for RawObservability {
    fn default() -> Self {
        Self { consumer_label: false, audit_values: Vec::new(), tracing: false, audit_fields: true }
    }
}

impl RawObservability {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

fn default_route_prefix() -> String {
    DEFAULT_ROUTE_PREFIX.to_string()
}

/// How callers prove who they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub jwt: Vec<RawJwtProvider>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// When set, requests that carry no credentials at all act as this consumer.
    /// Requests with *invalid* credentials are still refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<RawAnonymous>,
    /// RFC 9728 protected-resource metadata URL, advertised in `WWW-Authenticate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_metadata: Option<String>,
    /// Verified tokens remembered per worker (RS256 verification is ~1 ms in V8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_cache_entries: Option<usize>,
    /// Client-certificate identities: SPIFFE ID or DNS SAN → consumer and roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mtls: Vec<crate::identity::RawPeerIdentity>,
}

/// One trusted JWT issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtProvider {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// A JWKS document (`{"keys": [...]}`), inlined by the control plane from `jwks_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Name of the environment variable holding the HS256 secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret_env: Option<String>,
    /// Claim naming the consumer (default `sub`).
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Claim holding the consumer's roles: an array of strings or a space-separated string
    /// (default `roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_seconds: Option<u64>,
}

fn default_consumer_claim() -> String {
    "sub".to_string()
}
fn default_roles_claim() -> String {
    "roles".to_string()
}

/// One API key, stored as the lowercase hex SHA-256 of the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub consumer: String,
    pub sha256: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The consumer unauthenticated callers act as, when anonymous access is enabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnonymous {
    #[serde(default = "default_anonymous_consumer")]
    pub consumer: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

fn default_anonymous_consumer() -> String {
    "anonymous".to_string()
}

/// Role-based access policy. Default deny: what no role allows is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub roles: BTreeMap<String, RawRole>,
}

/// What one role may do. Tool patterns are globs over `server/tool`; deny wins over allow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    /// `server/tool` globs for `tools/call` (and `tools/list` filtering).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// `server/<uri>` globs for `resources/read`.
    #[serde(default)]
    pub resources: RawRules,
    /// `server/prompt` globs for `prompts/get`.
    #[serde(default)]
    pub prompts: RawRules,
}

/// An allow list and a deny list of globs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Guardrails for every server: sizes (overridable per server and tool in
/// [`RawServerLimits`]) and the per-consumer in-flight limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Largest response body of a POST (JSON body, or one SSE event); larger ones become a
    /// JSON-RPC error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// Largest serialized `params.arguments` of a `tools/call` (no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_argument_bytes: Option<u64>,
    /// Most `tools/call` requests one consumer may have open at once, across this Envoy's
    /// workers (no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_consumer: Option<u64>,
    /// Most local quota counters (rule × key) this Envoy creates; shared data never forgets
    /// one. Past it, calls needing a new counter share their rule's overflow counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_local_counters: Option<u64>,
}

/// Size guardrails of one server or tool. Absent values inherit (tool ← server ← `limits`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSizeLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_argument_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
}

/// One server's size guardrails, with per-tool overrides keyed by tool name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_argument_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, RawSizeLimits>,
}

/// One redaction rule: what to detect, where, and what to do with it (see [`crate::redact`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedactionRule {
    /// Where the rule applies; absent = every server, tool and caller.
    #[serde(default, rename = "match")]
    pub scope: RawRedactionScope,
    /// Built-in detectors: `email`, `phone`, `credit_card`, `ssn`, `iban`, `ip`, `jwt`,
    /// `bearer_token`, `aws_key`, `api_key`.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// Named regexes, masked as `[<NAME>]`.
    #[serde(default)]
    pub custom: Vec<RawCustomDetector>,
    #[serde(default)]
    pub mode: RawRedactionMode,
    #[serde(default)]
    pub direction: RawRedactionDirection,
}

/// The traffic a redaction rule covers. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedactionScope {
    /// `server/tool` globs, as in the policy.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Roles of the caller; the rule applies when the caller holds any of them.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// One rate limit (token bucket: `rate` + `burst`) or quota (fixed window: `quota`) on
/// `tools/call`. Exactly one of `rate` and `quota`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuotaRule {
    /// `[a-z0-9_-]+`, unique; default `quota-<index>`. Named in errors, metrics and, for
    /// `scope: global`, in the rate-limit descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which calls the rule counts; absent = every tool call of every caller.
    #[serde(default, rename = "match")]
    pub matches: RawRedactionScope,
    /// Token bucket refill rate, `N/s|m|h|d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Token bucket capacity (default: the `N` of `rate`). Only with `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Fixed-window quota, `N/m|h|d` (windows aligned to the epoch, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    #[serde(default)]
    pub key: RawQuotaKey,
    #[serde(default)]
    pub scope: RawQuotaScope,
}

/// What one counter of a quota rule is kept per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawQuotaKey {
    /// One counter per consumer (all matching tools together).
    Consumer,
    /// One counter per consumer and `server/tool`.
    #[default]
    ConsumerTool,
    /// One counter per `server/tool`, shared by all callers.
    Tool,
}

/// Where a quota rule's counters live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawQuotaScope {
    /// In this Envoy, shared by its workers (proxy-wasm shared data, compare-and-swap).
    #[default]
    Local,
    /// Across the fleet: Envoy's `ratelimit` filter asks meshgate's rate-limit service (Redis).
    Global,
}

/// A named custom detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCustomDetector {
    /// `[a-z][a-z0-9_]*`; the mask label is its upper-case form.
    pub name: String,
    /// A regex (Rust `regex` syntax, no anchors).
    pub regex: String,
}

/// What a redaction rule does with a match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawRedactionMode {
    /// Replace with `[LABEL]`.
    #[default]
    Mask,
    /// Replace with `[LABEL:<keyed hash>]` (needs `redaction_hash_key_env`).
    Hash,
    /// Refuse the message.
    Block,
}

/// Which messages a redaction rule inspects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawRedactionDirection {
    /// Messages from the server.
    #[default]
    Response,
    /// Messages from the client.
    Request,
    Both,
}

/// Where the filter finds secrets named in the configuration (environment variables).
pub trait SecretSource {
    /// The value of the named secret, if set.
    fn secret(&self, name: &str) -> Option<String>;
}

/// Secrets from the process environment (in wasm: the variables Envoy passes to the VM).
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSecrets;

impl SecretSource for EnvSecrets {
    fn secret(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl RawFilterConfig {
    /// Parses the JSON document Envoy passes to the filter.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))
    }

    /// Names of the environment variables the filter reads (for `vm_config.environment_variables`).
    pub fn secret_env_names(&self) -> Vec<String> {
        let jwt = self.auth.jwt.iter().filter_map(|p| p.hs256_secret_env.clone());
        jwt.chain(self.redaction_hash_key_env.clone())
            .chain(self.virtual_session_key_env.clone())
            .chain(self.virtual_session_previous_key_env.clone())
            .collect()
    }
}

/// A configuration the filter refuses. `path` is the dotted location inside the filter
/// configuration (`policy.roles.admin.deny[0]`), which mirrors the registry's `auth`,
/// `policy` and `limits` sections so the control plane can point at the registry line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("filter configuration is not valid JSON for this version of Meshgate: {0}")]
    Json(String),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConfigError {
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { path: path.into(), message: message.into() }
    }

    /// Where in the configuration the problem is, when known.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            ConfigError::Json(_) => None,
        }
    }

    /// What is wrong, without the path.
    pub fn message(&self) -> &str {
        match self {
            ConfigError::Invalid { message, .. } => message,
            ConfigError::Json(m) => m,
        }
    }
}

/// The size guardrails that apply to one exchange, resolved tool ← server ← `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// Largest request body. Every value is > 0.
    pub max_request_bytes: u64,
    /// Largest serialized `tools/call` arguments; `None` = only `max_request_bytes` bounds them.
    pub max_argument_bytes: Option<u64>,
    /// Largest response body (JSON) or SSE event of a POST.
    pub max_response_bytes: u64,
}

impl SizeLimits {
    fn overridden(self, path: &str, o: &RawSizeLimits) -> Result<Self, ConfigError> {
        Ok(Self {
            max_request_bytes: positive(o.max_request_bytes, path, "max_request_bytes")?
                .unwrap_or(self.max_request_bytes),
            max_argument_bytes: positive(o.max_argument_bytes, path, "max_argument_bytes")?.or(self.max_argument_bytes),
            max_response_bytes: positive(o.max_response_bytes, path, "max_response_bytes")?
                .unwrap_or(self.max_response_bytes),
        })
    }
}

/// `Some(0)` is refused: a zero limit would refuse everything, which is never what was meant.
fn positive(value: Option<u64>, path: &str, key: &str) -> Result<Option<u64>, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::invalid(format!("{path}.{key}"), "must be greater than 0")),
        other => Ok(other),
    }
}

/// One server's resolved sizes and its tools' overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerSizes {
    base: SizeLimits,
    /// The largest request any of its tools accepts: what the head-time `content-length`
    /// check allows before the body names the tool.
    largest_request_bytes: u64,
    tools: std::collections::HashMap<String, SizeLimits>,
}

/// Guardrails, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The top-level `limits` (what servers without overrides get).
    pub defaults: SizeLimits,
    /// Most open `tools/call` requests per consumer; `None` = unlimited. > 0.
    pub max_in_flight_per_consumer: Option<u64>,
    /// Most local quota counters per Envoy (see [`RawLimits::max_local_counters`]). > 0.
    pub max_local_counters: u64,
    servers: std::collections::HashMap<String, ServerSizes>,
}

impl Limits {
    /// The sizes for an exchange with `server` (`tool` for a `tools/call`).
    pub fn sizes(&self, server: &str, tool: Option<&str>) -> SizeLimits {
        let Some(s) = self.servers.get(server) else {
            return self.defaults;
        };
        tool.and_then(|t| s.tools.get(t)).copied().unwrap_or(s.base)
    }

    /// Gives virtual server `name` the head-time request bound of the largest of its
    /// `backing` servers: a call through it is refused for size only where the same call to
    /// the backing server would be (that server's own limits apply once the body names it).
    fn add_virtual(&mut self, name: &str, backing: &[String]) {
        let largest =
            backing.iter().map(|s| self.head_request_bytes(s)).fold(self.defaults.max_request_bytes, u64::max);
        let sizes = ServerSizes { base: self.defaults, largest_request_bytes: largest, tools: Default::default() };
        self.servers.insert(name.to_string(), sizes);
    }

    /// The request-size bound before the body is read (the largest of the server's tools).
    pub fn head_request_bytes(&self, server: &str) -> u64 {
        self.servers.get(server).map_or(self.defaults.max_request_bytes, |s| s.largest_request_bytes)
    }

    /// The largest response size any server or tool allows (for sizing Envoy's buffers).
    pub fn largest_response_bytes(&self) -> u64 {
        let per_server = self.servers.values().flat_map(|s| std::iter::once(s.base).chain(s.tools.values().copied()));
        per_server.map(|s| s.max_response_bytes).fold(self.defaults.max_response_bytes, u64::max)
    }

    /// The largest request size any server or tool allows.
    pub fn largest_request_bytes(&self) -> u64 {
        self.servers.values().map(|s| s.largest_request_bytes).fold(self.defaults.max_request_bytes, u64::max)
    }

    fn compile(raw: &RawFilterConfig, servers: &std::collections::HashSet<String>) -> Result<Self, ConfigError> {
        let top = &raw.limits;
        let defaults = SizeLimits {
            max_request_bytes: positive(top.max_request_bytes, "limits", "max_request_bytes")?
                .unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            max_argument_bytes: positive(top.max_argument_bytes, "limits", "max_argument_bytes")?,
            max_response_bytes: positive(top.max_response_bytes, "limits", "max_response_bytes")?
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
        };
        let max_in_flight_per_consumer =
            positive(top.max_in_flight_per_consumer, "limits", "max_in_flight_per_consumer")?;
        let max_local_counters =
            positive(top.max_local_counters, "limits", "max_local_counters")?.unwrap_or(DEFAULT_MAX_LOCAL_COUNTERS);
        let mut by_server = std::collections::HashMap::new();
        for (name, limits) in &raw.server_limits {
            let path = format!("server_limits.{name}");
            if !servers.contains(name) {
                return Err(ConfigError::invalid(path, format!("\"{name}\" is not a server of this configuration")));
            }
            let own = RawSizeLimits {
                max_request_bytes: limits.max_request_bytes,
                max_argument_bytes: limits.max_argument_bytes,
                max_response_bytes: limits.max_response_bytes,
            };
            let base = defaults.overridden(&path, &own)?;
            let mut tools = std::collections::HashMap::new();
            for (tool, o) in &limits.tools {
                let tool_path = format!("{path}.tools.{tool}");
                if tool.is_empty() {
                    return Err(ConfigError::invalid(tool_path, "a tool name must not be empty"));
                }
                tools.insert(tool.clone(), base.overridden(&tool_path, o)?);
            }
            let largest_request_bytes =
                tools.values().map(|t| t.max_request_bytes).fold(base.max_request_bytes, u64::max);
            by_server.insert(name.clone(), ServerSizes { base, largest_request_bytes, tools });
        }
        Ok(Self { defaults, max_in_flight_per_consumer, max_local_counters, servers: by_server })
    }
}

/// The validated, compiled configuration the request path runs on.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub route_prefix: String,
    pub servers: std::collections::HashSet<String>,
    pub authenticator: crate::identity::Authenticator,
    pub policy: crate::policy::Policy,
    pub limits: Limits,
    /// RFC 9728 protected-resource metadata URL for `WWW-Authenticate`.
    pub resource_metadata: Option<String>,
    /// PII and secret redaction; [`crate::redact::Redactor::plan`] per exchange.
    pub redactor: crate::redact::Redactor,
    /// Rate limits and quotas on `tools/call`.
    pub quotas: crate::quota::QuotaRules,
    /// Metric naming options.
    pub metrics: crate::audit::MetricOptions,
    /// Tools (`server/tool` globs) whose arguments the audit record carries.
    pub audit_values: Vec<crate::glob::Glob>,
    /// Span tags read the audit fields: write them before the stream ends, not only in
    /// `on_log` ([`RawObservability::tracing`]).
    pub audit_before_stream_end: bool,
    /// Write the audit fields to filter state at all ([`RawObservability::audit_fields`]).
    pub audit_fields: bool,
    /// Host and Origin checks ([`crate::origin`]).
    pub origin_policy: crate::origin::OriginPolicy,
    /// Virtual servers by name ([`crate::virtual_server`]).
    pub virtual_servers: crate::virtual_server::VirtualServers,
    /// How to reach each real server with a callout ([`crate::virtual_server::Upstream`]).
    pub upstreams: std::collections::HashMap<String, crate::virtual_server::Upstream>,
    /// Token exchange per server ([`crate::upstream_token`]).
    pub token_exchanges: crate::upstream_token::TokenExchanges,
    /// The keys of virtual-server session ids (`virtual_session_key_env`); `None`: the
    /// session-based eras are refused on virtual servers.
    pub virtual_session_keys: Option<crate::session_seal::SessionKeys>,
    /// Pinned definitions ([`crate::pinning`]).
    pub pins: crate::pinning::Pins,
    /// Calls that wait for a person's approval ([`crate::approval`]).
    pub approvals: crate::approval::ApprovalRules,
}

/// Whether `name` is a valid server name: `[a-z0-9-]+`, at most 63 characters.
pub fn is_valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl FilterConfig {
    /// Validates and compiles `raw`. This is the one validator: the filter runs it in
    /// `on_configure`, the control plane before pushing.
    pub fn compile(raw: &RawFilterConfig, secrets: &dyn SecretSource) -> Result<Self, ConfigError> {
        if !raw.route_prefix.starts_with('/') || !raw.route_prefix.ends_with('/') {
            return Err(ConfigError::invalid(
                "route_prefix",
                format!("\"{}\" must start and end with '/'", raw.route_prefix),
            ));
        }
        let mut servers = std::collections::HashSet::new();
        for (i, name) in raw.servers.iter().enumerate() {
            if !is_valid_server_name(name) {
                return Err(ConfigError::invalid(
                    format!("servers[{i}].name"),
                    format!("\"{name}\" is not a valid server name ([a-z0-9-]+, at most 63 characters)"),
                ));
            }
            if !servers.insert(name.clone()) {
                return Err(ConfigError::invalid(
                    format!("servers[{i}].name"),
                    format!("duplicate server name \"{name}\""),
                ));
            }
        }
        for name in raw.policy.roles.keys() {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    format!("policy.roles.{name}"),
                    format!("role name \"{name}\" must be non-empty and contain no whitespace"),
                ));
            }
        }
        let policy = crate::policy::Policy::compile(&raw.policy, &servers)?;
        let authenticator = crate::identity::Authenticator::compile(&raw.auth, secrets, &|r| policy.has_role(r))?;
        if let Some(url) = &raw.auth.resource_metadata {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('"') {
                return Err(ConfigError::invalid("auth.resource_metadata", format!("\"{url}\" is not an http(s) URL")));
            }
        }
        let redactor = crate::redact::Redactor::compile(
            &raw.redaction,
            raw.redaction_hash_key_env.as_deref(),
            &servers,
            &|r| policy.has_role(r),
            secrets,
        )?;
        let quotas = crate::quota::QuotaRules::compile(&raw.quotas, &servers, &|r| policy.has_role(r))?;
        let mut limits = Limits::compile(raw, &servers)?;
        let origin_policy = crate::origin::OriginPolicy::compile(&raw.origin_policy, &servers)?;
        let virtual_servers = crate::virtual_server::VirtualServers::compile(&raw.virtual_servers, &servers)?;
        for virtual_server in virtual_servers.iter() {
            limits.add_virtual(&virtual_server.name, virtual_server.servers());
        }
        let upstreams = crate::virtual_server::Upstream::compile_all(&raw.upstreams, &servers)?;
        let token_exchanges = crate::upstream_token::TokenExchanges::compile(&raw.token_exchanges, &servers)?;
        let virtual_session_keys = match (&raw.virtual_session_key_env, &raw.virtual_session_previous_key_env) {
            (Some(current), previous) => {
                Some(crate::session_seal::SessionKeys::compile(current, previous.as_deref(), secrets)?)
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "virtual_session_previous_key_env",
                    "a previous key needs a current one: set virtual_session_key_env".to_string(),
                ))
            }
            (None, None) => None,
        };
        let pins = crate::pinning::Pins::compile(&raw.pinning, &servers)?;
        let approvals =
            crate::approval::ApprovalRules::compile(&raw.approvals, raw.approval_service.as_ref(), &servers, &|r| {
                policy.has_role(r)
            })?;
        let mut audit_values = Vec::new();
        for (i, pattern) in raw.observability.audit_values.iter().enumerate() {
            let glob = crate::glob::Glob::new(pattern)
                .map_err(|e| ConfigError::invalid(format!("observability.audit_values[{i}]"), e.to_string()))?;
            audit_values.push(glob);
        }
        Ok(Self {
            route_prefix: raw.route_prefix.clone(),
            servers,
            authenticator,
            policy,
            limits,
            resource_metadata: raw.auth.resource_metadata.clone(),
            redactor,
            quotas,
            metrics: crate::audit::MetricOptions { consumer_label: raw.observability.consumer_label },
            audit_values,
            audit_before_stream_end: raw.observability.tracing,
            audit_fields: raw.observability.audit_fields,
            origin_policy,
            virtual_servers,
            upstreams,
            token_exchanges,
            virtual_session_keys,
            pins,
            approvals,
        })
    }
}
