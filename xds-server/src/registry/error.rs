//! What can be wrong with a registry, and where.
//!
//! [`RegistryError`] says *what* (naming the bad value); [`Diagnostic`] adds *where*: the
//! file, the line and the dotted path, rendered as `file:line: path: message` so editors and
//! terminals can jump to it. [`LoadErrors`] carries every problem found, not just the first.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a registry. Messages are lower-case and name the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read registry: {0}")]
    Read(String),
    #[error("registry is empty")]
    Empty,
    #[error("registry is larger than {max} bytes: split it or trim it")]
    TooLarge { max: u64 },
    #[error("pinning {value:?} is not a mode: use observe or enforce")]
    InvalidPinMode { value: String },
    #[error("{value:?} is out of range: use {min} to {max}")]
    DurationOutOfRange { value: String, min: &'static str, max: &'static str },
    #[error("{value:?} is not an absolute http(s) URL without query, fragment or credentials")]
    InvalidApprovalPageUrl { value: String },
    /// The pin lockfile cannot be read or is not valid (its own file:line inside).
    #[error("{0}")]
    Lockfile(String),
    #[error("server {server:?} has no entry in the pin lockfile {lockfile}: run `meshgate pin --registry <registry> {server}`")]
    NotPinned { server: String, lockfile: String },
    /// Syntax errors, unknown keys and wrong types, as the YAML deserializer words them.
    #[error("{0}")]
    Yaml(String),
    #[error("{value:?} is not an IP address (Envoy listens on IP addresses only)")]
    InvalidListenerAddress { value: String },
    /// Listener TLS, client address, admin address, stats listener (`super::edge`).
    #[error("{0}")]
    Edge(#[from] super::edge::EdgeError),
    #[error("{value} is not a port number (0-65535)")]
    PortOutOfRange { value: u64 },
    #[error("port {port} is also the listener port")]
    PortClash { port: u16 },
    #[error("invalid host pattern: {reason}")]
    InvalidHost { reason: String },
    #[error("invalid origin pattern: {reason}")]
    InvalidOrigin { reason: String },
    #[error("allowed_hosts must not be empty (no Host would be accepted); use [\"*\"] to accept any")]
    NoAllowedHosts,
    #[error("cors needs at least one origin in allow_origins")]
    NoCorsOrigins,
    #[error("allow_credentials cannot be combined with the origin \"*\": any site could make credentialed calls")]
    CorsCredentialsForAnyOrigin,
    #[error("at least one server is required")]
    NoServers,
    #[error("invalid server name {name:?}: use lower-case letters, digits and '-' (at most 63)")]
    InvalidServerName { name: String },
    #[error("duplicate server name {name:?} (first defined on line {first_line})")]
    DuplicateServer { name: String, first_line: usize },
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unsupported scheme {scheme:?} in {url:?}: use http:// or https://")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("set exactly one of url and urls")]
    UrlAndUrls,
    #[error("missing url (or urls)")]
    NoUrl,
    #[error("urls is empty")]
    EmptyUrls,
    #[error("{url:?} differs from the first url {first:?} in {what}: one server's urls share scheme and path")]
    MixedEndpoints { url: String, first: String, what: &'static str },
    #[error(
        "https urls of one server must share one host name ({host:?} vs {first:?}): \
         SNI and certificate checks are per server"
    )]
    HttpsHostsDiffer { host: String, first: String },
    #[error("tls is only for https:// upstreams")]
    TlsWithoutHttps,
    #[error("cannot read ca_file {file}: {error}")]
    CaRead { file: PathBuf, error: String },
    #[error("ca_file {file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    CaInvalid { file: PathBuf },
    #[error("invalid sni {value:?}: expected a DNS name")]
    InvalidSni { value: String },
    #[error("unknown health check type {value:?} (use tcp, http or none)")]
    InvalidHealthCheckType { value: String },
    #[error("{value} is out of range ({min}-{max})")]
    NumberOutOfRange { value: u64, min: u64, max: u64 },
    #[error("must be longer than 0")]
    ZeroDuration,
    #[error("set exactly one of value_env and value_file")]
    CredentialSourceCount,
    #[error("token endpoint {url:?} must be https:// (http:// only on a loopback address)")]
    ExchangeEndpointNotTls { url: String },
    #[error("{what} is not supported: {reason}")]
    ExchangeUnsupported { what: String, reason: &'static str },
    #[error("invalid value {value:?}: {reason}")]
    ExchangeInvalid { value: String, reason: &'static str },
    #[error("{key} sets a static credential, which a server with credentials.exchange uses only with api_key_consumers: static")]
    ExchangeStaticKey { key: &'static str },
    #[error("api_key_consumers: static needs the static credential (value_env or value_file) in the same credentials")]
    ExchangeStaticMissing,
    #[error("invalid header name {name:?}")]
    InvalidHeaderName { name: String },
    #[error("header {name:?} cannot carry upstream credentials (Envoy or HTTP own it)")]
    ForbiddenHeader { name: String },
    #[error("environment variable {name} is not set (meshgate reads the upstream credential from it)")]
    CredentialEnvUnset { name: String },
    #[error("cannot read credential file {file}: {error}")]
    CredentialRead { file: PathBuf, error: String },
    /// Never includes the value itself.
    #[error("the credential from {origin} is unusable: {reason}")]
    CredentialInvalid { origin: String, reason: String },
    #[error("invalid prefix: control characters are not allowed in a header value")]
    InvalidPrefix,
    #[error("tool name must not be empty")]
    EmptyToolName,
    #[error("duplicate tool {name:?}")]
    DuplicateTool { name: String },
    #[error("invalid scope {value:?}: scopes are non-empty and have no spaces or quotes")]
    InvalidScope { value: String },
    #[error("invalid system_ca_file {value:?}: expected an absolute path")]
    InvalidCaPath { value: String },
    #[error("invalid duration {value:?}: {reason}")]
    InvalidDuration { value: String, reason: &'static str },
    #[error("issuer {issuer:?} sets both jwks_file and hs256_secret_env; set exactly one")]
    BothKeySources { issuer: String },
    #[error("issuer {issuer:?} sets neither jwks_file nor hs256_secret_env; set exactly one")]
    NoKeySource { issuer: String },
    #[error("cannot read jwks file {file}: {error}")]
    JwksRead { file: PathBuf, error: String },
    #[error("jwks file {file} is not a JWKS document: {reason}")]
    JwksInvalid { file: PathBuf, reason: String },
    #[error(
        "jwks file {file} key {index} has private member {member:?}: publish public keys only \
         (for shared secrets use hs256_secret_env)"
    )]
    JwksPrivateKey { file: PathBuf, index: usize, member: String },
    #[error("invalid environment variable name {name:?}")]
    InvalidEnvName { name: String },
    #[error("environment variable {name} is not set (meshgate and Envoy read the HS256 secret from it)")]
    SecretEnvUnset { name: String },
    #[error("unknown role {role:?} (not defined under policy.roles)")]
    UnknownRole { role: String },
    #[error("concurrency {value} is out of range (1-1024 worker threads)")]
    InvalidConcurrency { value: u64 },
    #[error("unknown log level {value:?} (use trace, debug, info, warn, error, critical or off)")]
    InvalidLogLevel { value: String },
    #[error("filter runtime {value:?} is not one of native, wasm")]
    InvalidRuntime { value: String },
    #[error(
        "quota {rule:?} has scope: global, which needs a top-level rate_limit_service \
         (redis_url, failure_mode, timeout)"
    )]
    GlobalWithoutService { rule: String },
    #[error("set exactly one of redis_url and redis_url_env")]
    RedisUrlSourceCount,
    #[error("environment variable {name} is not set (meshgate reads the Redis URL from it)")]
    RedisUrlEnvUnset { name: String },
    #[error("invalid redis url: {0}")]
    InvalidRedisUrl(String),
    #[error("unknown failure_mode {value:?} (use deny or allow)")]
    InvalidFailureMode { value: String },
    /// Rejected by the filter's own validator (`meshgate_core::config::FilterConfig::compile`).
    #[error("{0}")]
    Filter(String),
    /// The `observability` section ([`super::observability`]).
    #[error("{0}")]
    Observability(String),
}

/// A [`RegistryError`] located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; `None` only when the file could not be read at all.
    pub line: Option<usize>,
    /// Dotted path of the offending value (`policy.roles.admin.deny[0]`), when known.
    pub path: Option<String>,
    pub error: RegistryError,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        match self.path.as_deref() {
            Some(path) if !path.is_empty() => write!(f, ": {path}: {}", self.error),
            _ => write!(f, ": {}", self.error),
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Every problem found in one registry file, in file order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<Diagnostic>);

impl LoadErrors {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.0
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}
