//! The registry: which MCP servers sit behind the gateway and who may use what.
//!
//! Loading is two-step, as everywhere in Meshgate: the YAML is deserialized into
//! [`raw::RawRegistry`] (unknown keys rejected), then converted into a [`Registry`] whose
//! fields can be trusted. The conversion runs the filter's own validator
//! ([`meshgate_core::config::FilterConfig::compile`]) on the filter configuration it
//! derives, so anything that loads here is accepted by the filter in Envoy.
//!
//! Invariants of a [`Registry`]:
//! - at least one server; names match `[a-z0-9-]+` and are unique;
//! - every upstream is an `http(s)://host[:port][/path]` URL without query or userinfo; the
//!   endpoints of one server share scheme and path; `https` ones carry [`UpstreamTls`];
//! - credential values are non-empty, single-line, and only reachable through
//!   [`SecretValue::expose`];
//! - [`Registry::filter`] passed `FilterConfig::compile` with the secrets meshgate sees,
//!   has JWKS documents inlined (public keys only) and holds no secret values;
//! - the admin port never equals a non-zero listener port;
//! - the production-edge keys (`listener.tls`, `auth.mtls`, client address, `admin.address`,
//!   `stats`) hold [`edge`]'s invariants (e.g. `auth.mtls` only with a client CA).
//!
//! Every error names the file and line (see [`error::Diagnostic`]); all problems are reported
//! at once.

pub mod edge;
pub mod error;
mod filter;
pub mod lines;
pub mod lockfile;
pub mod observability;
pub mod raw;
pub mod schema;
mod validate;
mod virtual_servers;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_core::config::{EnvSecrets, RawFilterConfig, SecretSource};

pub use error::{Diagnostic, LoadErrors, RegistryError};

/// Why a file the registry names could not be read. A relative path resolves against the
/// registry's folder, so a registry copied elsewhere without its files fails here: the
/// message then names the folder it resolved against and what to do.
pub(crate) fn file_read_error(written: &str, base_dir: &Path, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::NotFound || !Path::new(written).is_relative() {
        return error.to_string();
    }
    let dir = if base_dir.as_os_str().is_empty() { Path::new(".") } else { base_dir };
    let shown = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!(
        "{error} (\"{written}\" is relative to the registry's folder {}: copy it along with the registry, \
         or give an absolute path)",
        shown.display()
    )
}
use lines::{LineIndex, Position};

/// A validated registry. See the module docs for its invariants.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// The file it was loaded from (as given, for messages).
    pub source: PathBuf,
    /// Where MCP clients connect. Port 0 lets the OS pick.
    pub listener: SocketAddr,
    /// Envoy's admin port on 127.0.0.1. Port 0 lets the OS pick.
    pub admin_port: u16,
    /// In registry order. Never empty.
    pub servers: Vec<Server>,
    /// The filter's configuration, already accepted by the filter's validator.
    pub filter: RawFilterConfig,
    /// `auth.scopes`: advertised in the protected-resource metadata.
    pub scopes: Vec<String>,
    pub envoy: EnvoySettings,
    /// `rate_limit_service`, when set. Always set when [`Registry::global_rules`] is not empty.
    pub rate_limit_service: Option<RateLimitService>,
    /// The `scope: global` quotas, in registry order (compiled by the filter's validator).
    /// Names are unique. Enforced by Envoy's `ratelimit` filter calling meshgate.
    pub global_rules: Vec<GlobalRule>,
    /// Audit log, tracing and metric labels.
    pub observability: observability::Observability,
    /// `listener.cors`: the CORS policy of every server route without its own.
    pub cors: Option<Cors>,
    /// `filter.runtime`: which build of the filter Envoy runs.
    pub runtime: Runtime,
    /// Listener TLS/mTLS, client address, Envoy admin address and the stats listener.
    pub edge: edge::Edge,
    /// `virtual_servers`, in registry order, compiled by the filter's own validator: names
    /// are unique, clash with no server, and every backing server exists.
    pub virtual_servers: Vec<meshgate_core::virtual_server::VirtualServer>,
    /// Pinned definitions, when a server sets `pinning` (its lockfile was read and checked).
    pub pinning: Option<Pinning>,
    /// `catalog`: tool discovery for the admin API's `/catalog`.
    pub catalog: CatalogSettings,
    /// `approval_page.url`: the approval page as approvers reach it (`None`: meshgate's
    /// admin API address).
    pub approval_page_url: Option<String>,
}

/// `catalog`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogSettings {
    /// meshgate asks every server for its tools (`false`: `/catalog` shows declared tools only).
    pub discover: bool,
    /// How often every server is asked again, registry changes aside. Within
    /// [`CatalogSettings::MIN_INTERVAL`]..=[`CatalogSettings::MAX_INTERVAL`].
    pub interval: std::time::Duration,
}

impl CatalogSettings {
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
    pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
    pub const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings { discover: true, interval: Self::DEFAULT_INTERVAL }
    }
}

/// `pinning` and the servers' modes, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Pinning {
    /// The lockfile (resolved against the registry's folder).
    pub lockfile: PathBuf,
    pub scan: bool,
    /// Pinned servers and their modes, in registry order.
    pub modes: Vec<(String, meshgate_core::pinning::PinMode)>,
    /// The lockfile as loaded (empty when `meshgate pin` loaded the registry without it).
    pub pins: lockfile::Lockfile,
}

/// Whether loading a registry reads its pin lockfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockfileUse {
    /// Read and check it; a pinned server must have an entry.
    Read,
    /// Leave it alone (`meshgate pin`, which writes it).
    Skip,
}

/// The lockfile path of a registry: `pinning.lockfile` against the registry's folder, else
/// `<registry stem>.lock.json` beside it.
pub fn lockfile_path(file: &Path, configured: Option<&str>) -> PathBuf {
    let base_dir = file.parent().unwrap_or(Path::new("."));
    match configured {
        Some(name) => base_dir.join(name),
        None => {
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("registry");
            base_dir.join(format!("{stem}.lock.json"))
        }
    }
}

/// Which build of the Meshgate filter Envoy runs (`filter.runtime`). Both run the same
/// core on the same configuration; they differ in how Envoy loads them and in the scope of
/// local counters and the token cache (see docs/architecture.md, "Native or wasm").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    /// The dynamic module `libmeshgate.so`, built for Envoy 1.40 (default).
    #[default]
    Native,
    /// The proxy-wasm module on V8, for any Envoy.
    Wasm,
}

impl Runtime {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "native" => Some(Runtime::Native),
            "wasm" => Some(Runtime::Wasm),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Native => "native",
            Runtime::Wasm => "wasm",
        }
    }
}

/// An opt-in CORS policy (`listener.cors`, `servers[].cors`), rendered for Envoy's CORS
/// filter. Its origins also pass the filter's Origin check on the routes it covers (the
/// filter configuration's `origin_policy.server_origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// The patterns as written, each valid (`meshgate_core::origin::OriginPattern`). Not empty.
    pub allow_origins: Vec<String>,
    /// Anchored regexes matching exactly the origins the patterns accept, one per pattern.
    pub origin_regexes: Vec<String>,
    pub allow_credentials: bool,
    /// Whole seconds.
    pub max_age: Duration,
    pub allow_private_network_access: bool,
}

/// meshgate's rate-limit service: where global counters live and how failures are treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    /// Parsed from `redis_url` or `redis_url_env`; its password is a [`SecretValue`].
    pub redis: crate::ratelimit::redis::RedisAddress,
    /// Where the URL came from (`redis_url` or the variable's name), for `/registry`.
    pub redis_source: String,
    pub failure_mode: FailureMode,
    /// How long Envoy waits for meshgate's answer; meshgate gives Redis half of it, so a
    /// slow Redis is answered per [`FailureMode`] before Envoy gives up.
    pub timeout: Duration,
}

/// What a global limit does when its counters cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Fail closed: the call is refused (HTTP 429 with `x-meshgate-limit-error:
    /// store-unavailable` when Redis is down; Envoy's 503 when meshgate is unreachable).
    #[default]
    Deny,
    /// Fail open: the call goes through uncounted.
    Allow,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Deny => "deny",
            FailureMode::Allow => "allow",
        }
    }
}

/// One `scope: global` quota as the rate-limit service applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalRule {
    /// `[a-z0-9_-]+`, unique: the descriptor's `rule` entry and the header suffix.
    pub name: String,
    pub limit: meshgate_core::quota::Limit,
}

impl Registry {
    /// The CORS policy of `server`'s route: its own, else the listener's.
    pub fn cors_of<'a>(&'a self, server: &'a Server) -> Option<&'a Cors> {
        server.cors.as_ref().or(self.cors.as_ref())
    }

    /// Whether any route has a CORS policy (Envoy's CORS filter is then in the chain).
    pub fn has_cors(&self) -> bool {
        self.cors.is_some() || self.servers.iter().any(|s| s.cors.is_some())
    }

    /// The global rule called `name`.
    pub fn global_rule(&self, name: &str) -> Option<&GlobalRule> {
        self.global_rules.iter().find(|r| r.name == name)
    }
}

/// One upstream MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `[a-z0-9-]+`, unique in the registry. Served at `<route_prefix><name>`.
    pub name: String,
    /// The first (or only) endpoint. Its scheme and path are every endpoint's; its authority
    /// is the `Host` the upstream sees.
    pub upstream: Upstream,
    /// Further endpoints (`urls`), same scheme and path as [`Server::upstream`].
    pub more_upstreams: Vec<Upstream>,
    /// Route timeout for a whole request/stream; zero means none (idle timeouts still apply).
    pub timeout: Duration,
    /// TCP (and TLS) connection establishment to one endpoint.
    pub connect_timeout: Duration,
    /// `Some` exactly when the scheme is `https`.
    pub tls: Option<UpstreamTls>,
    pub health_check: HealthCheck,
    /// `None` when disabled.
    pub outlier_detection: Option<OutlierDetection>,
    pub circuit_breakers: CircuitBreakers,
    /// The secret the gateway adds upstream, if any (with [`Server::exchange`]: only for
    /// consumers without a bearer token, `api_key_consumers: static`).
    pub credentials: Option<Credentials>,
    /// `credentials.exchange`: the caller's own upstream token by token exchange.
    pub exchange: Option<TokenExchange>,
    /// Declared tools (discovery only). Names are unique and non-empty.
    pub tools: Vec<Tool>,
    /// Registry keys set on this server that only the xDS control plane renders (the static
    /// bootstrap refuses them rather than silently dropping them).
    pub control_plane_keys: Vec<&'static str>,
    /// `servers[].cors`: this server's own CORS policy, replacing [`Registry::cors`].
    pub cors: Option<Cors>,
}

impl Server {
    /// Every endpoint, the first one first.
    pub fn upstreams(&self) -> impl Iterator<Item = &Upstream> {
        std::iter::once(&self.upstream).chain(self.more_upstreams.iter())
    }
}

/// A streamable-HTTP endpoint, `http(s)://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub host: UpstreamHost,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    Ip(IpAddr),
    /// A lower-case DNS name.
    Dns(String),
}

impl fmt::Display for UpstreamHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamHost::Ip(ip) => write!(f, "{ip}"),
            UpstreamHost::Dns(name) => f.write_str(name),
        }
    }
}

impl Upstream {
    /// `host:port` as the upstream expects it in `Host` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        match &self.host {
            UpstreamHost::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            UpstreamHost::Ip(ip) => format!("{ip}:{}", self.port),
            UpstreamHost::Dns(name) => format!("{name}:{}", self.port),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme.as_str(), self.authority(), self.path)
    }
}

/// How Envoy verifies an `https://` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Sent as SNI: `tls.sni`, else the URL's host name (none for an IP address).
    pub sni: Option<String>,
    /// What the certificate's subject alternative names must contain.
    pub verify: VerifyName,
    pub trust: Trust,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyName {
    Dns(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The CA bundle of the Envoy host ([`EnvoySettings::system_ca_file`]).
    System,
    /// `tls.ca_file`, read by meshgate and sent inline (CA certificates are public).
    CaFile { file: PathBuf, pem: String },
}

/// Defaults of every per-server knob, in one place (documented in docs/registry.md).
pub mod defaults {
    use std::time::Duration;

    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(10);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTHY_THRESHOLD: u32 = 1;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const CONSECUTIVE_5XX: u32 = 5;
    pub const CONSECUTIVE_GATEWAY_FAILURE: u32 = 5;
    pub const OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
    pub const BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    pub const MAX_EJECTION_PERCENT: u32 = 50;
    /// MCP clients hold long SSE streams: request slots, not pending requests, run out first.
    pub const MAX_CONNECTIONS: u32 = 4096;
    pub const MAX_PENDING_REQUESTS: u32 = 1024;
    pub const MAX_REQUESTS: u32 = 4096;
    /// How long browsers may cache a CORS preflight answer (`cors.max_age`).
    pub const CORS_MAX_AGE: Duration = Duration::from_secs(600);
    /// Debian/Ubuntu (and the official Envoy image) keep the system CA bundle here.
    pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
    pub const CREDENTIAL_HEADER: &str = "authorization";
    /// `servers[].credentials.exchange.timeout`.
    pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
    /// `servers[].credentials.exchange.refresh_skew`.
    pub const EXCHANGE_REFRESH_SKEW: Duration = Duration::from_secs(30);
    /// `servers[].credentials.exchange.cache_entries`.
    pub const EXCHANGE_CACHE_ENTRIES: u64 = 4096;
    /// Envoy's wait for the rate-limit service (`rate_limit_service.timeout`).
    pub const RATE_LIMIT_TIMEOUT: Duration = Duration::from_millis(100);
}

/// Active health checking of every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    None,
    /// Connect and close: works against any server and leaves nothing in its request log.
    Tcp(HealthTiming),
    /// `GET <path>` with the upstream's `Host`; any status below 500 is healthy (an MCP
    /// endpoint answers a bare GET with 400/405/406, which still proves it is up).
    Http(HealthTiming),
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::Tcp(HealthTiming::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTiming {
    pub interval: Duration,
    pub timeout: Duration,
    /// Checks that must pass before an unhealthy endpoint is used again (≥ 1).
    pub healthy_threshold: u32,
    /// Checks that must fail before an endpoint is taken out (≥ 1).
    pub unhealthy_threshold: u32,
}

impl Default for HealthTiming {
    fn default() -> Self {
        HealthTiming {
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            healthy_threshold: defaults::HEALTHY_THRESHOLD,
            unhealthy_threshold: defaults::UNHEALTHY_THRESHOLD,
        }
    }
}

/// Passive health: endpoints that keep failing are ejected for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// 0..=100.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: defaults::CONSECUTIVE_5XX,
            consecutive_gateway_failure: defaults::CONSECUTIVE_GATEWAY_FAILURE,
            interval: defaults::OUTLIER_INTERVAL,
            base_ejection_time: defaults::BASE_EJECTION_TIME,
            max_ejection_percent: defaults::MAX_EJECTION_PERCENT,
        }
    }
}

/// Envoy's per-cluster circuit-breaker thresholds (default priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: defaults::MAX_CONNECTIONS,
            max_pending_requests: defaults::MAX_PENDING_REQUESTS,
            max_requests: defaults::MAX_REQUESTS,
        }
    }
}

/// The upstream credential the gateway injects for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Lower-case header name.
    pub header: String,
    /// Prepended to the value (`"Bearer "`); may be empty.
    pub prefix: String,
    /// Where the value came from (safe to show).
    pub source: CredentialSource,
    pub value: SecretValue,
}

/// `servers[].credentials.exchange`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchange {
    /// The token endpoint (scheme, host, port, path).
    pub endpoint: Upstream,
    /// `Some` exactly when the endpoint is `https`.
    pub tls: Option<UpstreamTls>,
    pub client_id: String,
    /// Where the client secret came from (safe to show).
    pub secret_source: CredentialSource,
    pub client_secret: SecretValue,
    pub audience: Option<String>,
    pub resources: Vec<String>,
    pub scope: Option<String>,
    /// The RFC 8693 token type URI of the subject token.
    pub subject_token_type: String,
    pub timeout: Duration,
    pub refresh_skew: Duration,
    pub cache_entries: u64,
    pub no_subject_token: meshgate_core::upstream_token::NoSubjectToken,
}

impl TokenExchange {
    /// The `client_secret_basic` `Authorization` value (RFC 6749 §2.3.1: id and secret
    /// form-encoded, joined by `:`, base64), without the `Basic ` prefix.
    pub fn basic_credential(&self) -> String {
        use base64::Engine;
        let pair = format!(
            "{}:{}",
            meshgate_core::upstream_token::form_encode(&self.client_id),
            meshgate_core::upstream_token::form_encode(self.client_secret.expose())
        );
        base64::engine::general_purpose::STANDARD.encode(pair)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Env(name) => write!(f, "environment variable {name}"),
            CredentialSource::File(file) => write!(f, "file {}", file.display()),
        }
    }
}

/// A secret value. Its `Debug` is redacted and it has no `Display` or `Serialize`, so it
/// cannot end up in a log line, an error or the admin API by accident; only
/// [`SecretValue::expose`] reads it (the one caller builds the SDS secret).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> Self {
        SecretValue(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

/// A tool a server declares, for discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
}

/// Envoy worker threads when the registry does not say.
pub const DEFAULT_CONCURRENCY: u32 = 2;
/// More workers than this is a typo, not a plan.
pub const MAX_CONCURRENCY: u32 = 1024;

/// How meshgate runs Envoy (command-line flags) and what it assumes about Envoy's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoySettings {
    /// `--concurrency`: 1..=[`MAX_CONCURRENCY`].
    pub concurrency: u32,
    pub log_level: LogLevel,
    /// Path of the system CA bundle on the Envoy hosts.
    pub system_ca_file: String,
}

impl Default for EnvoySettings {
    fn default() -> Self {
        EnvoySettings {
            concurrency: DEFAULT_CONCURRENCY,
            log_level: LogLevel::default(),
            system_ca_file: defaults::SYSTEM_CA_FILE.to_string(),
        }
    }
}

/// Envoy's `-l` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    #[default]
    Warn,
    Error,
    Critical,
    Off,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Off => "off",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            "off" => LogLevel::Off,
            _ => return None,
        })
    }
}

/// The registry file's text; a read error is the file's one diagnostic.
/// The largest registry file meshgate reads (a 10,000-server registry is about 1.5 MB): the
/// whole file, its parse tree and its translation are held in memory at every reload.
pub const MAX_REGISTRY_BYTES: u64 = 16 * 1024 * 1024;

/// At most `max` + 1 bytes of `file` (one more than allowed tells "too large" apart).
pub fn read_bounded(file: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)?.take(max + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_registry(file: &Path) -> Result<String, LoadErrors> {
    let error = |error| LoadErrors(vec![Diagnostic { file: file.to_path_buf(), line: None, path: None, error }]);
    let bytes = read_bounded(file, MAX_REGISTRY_BYTES).map_err(|e| error(RegistryError::Read(e.to_string())))?;
    if bytes.len() as u64 > MAX_REGISTRY_BYTES {
        return Err(error(RegistryError::TooLarge { max: MAX_REGISTRY_BYTES }));
    }
    String::from_utf8(bytes).map_err(|e| error(RegistryError::Read(format!("not UTF-8: {e}"))))
}

impl Registry {
    /// Loads and validates `file`; HS256 secrets are looked up in meshgate's environment.
    pub fn load(file: &Path) -> Result<Registry, LoadErrors> {
        Registry::load_with(file, &EnvSecrets)
    }

    /// [`Registry::load`] with an explicit secret source.
    pub fn load_with<S: SecretSource>(file: &Path, secrets: &S) -> Result<Registry, LoadErrors> {
        Registry::parse(&read_registry(file)?, file, secrets)
    }

    /// Validates registry `text` as if read from `file`: messages name `file`, and relative
    /// paths (`jwks_file`) resolve against its folder.
    pub fn parse<S: SecretSource>(text: &str, file: &Path, secrets: &S) -> Result<Registry, LoadErrors> {
        Registry::parse_with(text, file, secrets, LockfileUse::Read)
    }

    /// [`Registry::load`] without reading the pin lockfile (for `meshgate pin`, which writes it).
    pub fn load_without_pins(file: &Path) -> Result<Registry, LoadErrors> {
        Registry::parse_with(&read_registry(file)?, file, &EnvSecrets, LockfileUse::Skip)
    }

    /// [`Registry::parse`], reading the lockfile or not.
    pub fn parse_with<S: SecretSource>(
        text: &str,
        file: &Path,
        secrets: &S,
        lockfile: LockfileUse,
    ) -> Result<Registry, LoadErrors> {
        let index = LineIndex::build(text);
        let diagnostic = |line: Option<usize>, path: Option<String>, error| Diagnostic {
            file: file.to_path_buf(),
            line,
            path,
            error,
        };
        let blank = text.lines().all(|line| {
            let line = line.trim();
            line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
        });
        if blank {
            return Err(LoadErrors(vec![diagnostic(Some(1), None, RegistryError::Empty)]));
        }
        let raw: raw::RawRegistry = match serde_saphyr::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let (line, path, message) = describe_yaml_error(&e, &index);
                return Err(LoadErrors(vec![diagnostic(line, path, RegistryError::Yaml(message))]));
            }
        };
        let base_dir = file.parent().unwrap_or(Path::new("."));
        let unvalidated = validate::Unvalidated { raw, file, base_dir, secrets, index: &index, lockfile };
        Registry::try_from(unvalidated).map_err(|problems| {
            let mut diagnostics: Vec<Diagnostic> =
                problems.into_iter().map(|p| diagnostic(index.line_of(&p.path), Some(p.path), p.error)).collect();
            // Stable: problems on the same line keep the order they were found in.
            diagnostics.sort_by_key(|d| d.line);
            LoadErrors(diagnostics)
        })
    }

    /// Files a registry text refers to (JWKS, CA bundles, credential files), resolved like
    /// [`Registry::parse`] resolves them. Best effort: empty when the text does not parse.
    /// The watcher fingerprints them with the registry, so editing one reloads.
    pub fn referenced_files(text: &str, file: &Path) -> Vec<PathBuf> {
        let Ok(raw) = serde_saphyr::from_str::<raw::RawRegistry>(text) else {
            return Vec::new();
        };
        let base_dir = file.parent().unwrap_or(Path::new("."));
        let jwks = raw.auth.jwt.iter().filter_map(|j| j.jwks_file.as_deref());
        let per_server = raw.servers.iter().flat_map(|s| {
            let ca = s.tls.as_ref().and_then(|t| t.ca_file.as_deref());
            let credential = s.credentials.as_ref().and_then(|c| c.value_file.as_deref());
            // Token exchange: the client secret file and the token endpoint's CA bundle.
            let exchange = s.credentials.as_ref().and_then(|c| c.exchange.as_ref());
            let client_secret = exchange.and_then(|x| x.client_auth.secret_file.as_deref());
            let exchange_ca = exchange.and_then(|x| x.tls.as_ref()).and_then(|t| t.ca_file.as_deref());
            ca.into_iter().chain(credential).chain(client_secret).chain(exchange_ca)
        });
        // The listener's certificate, key and client CA, when meshgate reads them: editing
        // one pushes the new secret (live rotation).
        let listener_tls = raw.listener.tls.iter().filter(|t| t.source.as_deref() != Some("envoy")).flat_map(|t| {
            [t.cert_file.as_deref(), t.key_file.as_deref(), t.client_ca_file.as_deref()].into_iter().flatten()
        });
        let mut files: Vec<PathBuf> = jwks.chain(per_server).chain(listener_tls).map(|f| base_dir.join(f)).collect();
        // The pin lockfile: `meshgate pin --update` then reaches Envoy with the next reload.
        if raw.pinning.is_some() || raw.servers.iter().any(|s| s.pinning.is_some()) {
            files.push(lockfile_path(file, raw.pinning.as_ref().and_then(|p| p.lockfile.as_deref())));
        }
        files
    }

    /// The address clients should dial: an unspecified listener address means loopback.
    pub fn connect_address(&self, port: u16) -> SocketAddr {
        let ip = match self.listener.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, port)
    }

    /// The path a server is served at, e.g. `/mcp/crm`.
    pub fn route_path(&self, server: &Server) -> String {
        format!("{}{}", self.filter.route_prefix, server.name)
    }

    /// The path a virtual server is served at, e.g. `/mcp/work`.
    pub fn virtual_route_path(&self, name: &str) -> String {
        format!("{}{}", self.filter.route_prefix, name)
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// One line for `meshgate validate`.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        let auth = &self.filter.auth;
        format!(
            "{}: ok: {} ({}), {}, {}, {}{}, listener {}{}",
            self.source.display(),
            plural(self.servers.len(), "server"),
            names.join(", "),
            plural(auth.jwt.len(), "jwt issuer"),
            plural(auth.api_keys.len(), "api key"),
            plural(self.filter.policy.roles.len(), "role"),
            if auth.anonymous.is_some() { ", anonymous access on" } else { "" },
            self.listener,
            match &self.edge.tls {
                Some(tls) if tls.client_ca.is_some() => " (mTLS)",
                Some(_) => " (TLS)",
                None => "",
            },
        )
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Line, path and message (without serde-saphyr's trailing " at line X, column Y").
fn describe_yaml_error(error: &serde_saphyr::Error, index: &LineIndex) -> (Option<usize>, Option<String>, String) {
    let mut message = error.without_snippet().to_string();
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    // serde-saphyr names the Rust type ("invalid u64"); say what the file should hold.
    // (All numbers in the registry are unsigned.)
    if message
        .strip_prefix("invalid u")
        .is_some_and(|bits| !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()))
        || message == "invalid usize"
    {
        message = "expected a non-negative whole number".to_string();
    }
    // Hints for programmers using the library, not for people editing the file.
    for hint in [", set DuplicateKeyPolicy", "; use from_str_multiple"] {
        if let Some(i) = message.find(hint) {
            message.truncate(i);
        }
    }
    // Parser vocabulary → registry vocabulary.
    for (parser, human) in [
        ("expected sequence start", "expected a list"),
        ("expected mapping start", "expected a mapping (key: value)"),
        ("expected string scalar", "expected a string"),
    ] {
        if let Some(rest) = message.strip_prefix(parser) {
            message = format!("{human}{rest}");
        }
    }
    let Some(location) = error.location() else {
        return (Some(1), None, message);
    };
    let at = Position {
        line: usize::try_from(location.line()).unwrap_or(usize::MAX),
        column: usize::try_from(location.column()).unwrap_or(usize::MAX),
    };
    // "missing field" is reported where the incomplete mapping starts, which is also where
    // its first key is: name the mapping, not that key.
    let outer = message.starts_with("missing field");
    let path = index.path_at(at, outer).map(str::to_string);
    (Some(at.line), path, message)
}
