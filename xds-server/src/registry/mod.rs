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
//! - every upstream is a plain `http://host[:port][/path]` URL without query or userinfo;
//! - [`Registry::filter`] passed `FilterConfig::compile` with the secrets meshgate sees,
//!   has JWKS documents inlined (public keys only) and holds no secret values;
//! - the admin port never equals a non-zero listener port.
//!
//! Every error names the file and line (see [`error::Diagnostic`]); all problems are reported
//! at once.

pub mod error;
mod filter;
pub mod lines;
pub mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_core::config::{EnvSecrets, RawFilterConfig, SecretSource};

pub use error::{Diagnostic, LoadErrors, RegistryError};
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
    pub envoy: EnvoySettings,
}

/// One upstream MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `[a-z0-9-]+`, unique in the registry. Served at `<route_prefix><name>`.
    pub name: String,
    pub upstream: Upstream,
    /// Route timeout for a whole request/stream; zero means none (idle timeouts still apply).
    pub timeout: Duration,
}

/// A streamable-HTTP endpoint, `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: UpstreamHost,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    Ip(IpAddr),
    /// A lower-case DNS name.
    Dns(String),
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
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// Envoy worker threads when the registry does not say.
pub const DEFAULT_CONCURRENCY: u32 = 2;
/// More workers than this is a typo, not a plan.
pub const MAX_CONCURRENCY: u32 = 1024;

/// How meshgate runs Envoy (command-line flags, not bootstrap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvoySettings {
    /// `--concurrency`: 1..=[`MAX_CONCURRENCY`].
    pub concurrency: u32,
    pub log_level: LogLevel,
}

impl Default for EnvoySettings {
    fn default() -> Self {
        EnvoySettings {
            concurrency: DEFAULT_CONCURRENCY,
            log_level: LogLevel::default(),
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

impl Registry {
    /// Loads and validates `file`; HS256 secrets are looked up in meshgate's environment.
    pub fn load(file: &Path) -> Result<Registry, LoadErrors> {
        Registry::load_with(file, &EnvSecrets)
    }

    /// [`Registry::load`] with an explicit secret source.
    pub fn load_with<S: SecretSource>(file: &Path, secrets: &S) -> Result<Registry, LoadErrors> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            LoadErrors(vec![Diagnostic {
                file: file.to_path_buf(),
                line: None,
                path: None,
                error: RegistryError::Read(e.to_string()),
            }])
        })?;
        Registry::parse(&text, file, secrets)
    }

    /// Validates registry `text` as if read from `file`: messages name `file`, and relative
    /// paths (`jwks_file`) resolve against its folder.
    pub fn parse<S: SecretSource>(
        text: &str,
        file: &Path,
        secrets: &S,
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
            return Err(LoadErrors(vec![diagnostic(
                Some(1),
                None,
                RegistryError::Empty,
            )]));
        }
        let raw: raw::RawRegistry = match serde_saphyr::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let (line, path, message) = describe_yaml_error(&e, &index);
                return Err(LoadErrors(vec![diagnostic(
                    line,
                    path,
                    RegistryError::Yaml(message),
                )]));
            }
        };
        let base_dir = file.parent().unwrap_or(Path::new("."));
        let unvalidated = validate::Unvalidated {
            raw,
            file,
            base_dir,
            secrets,
            index: &index,
        };
        Registry::try_from(unvalidated).map_err(|problems| {
            let mut diagnostics: Vec<Diagnostic> = problems
                .into_iter()
                .map(|p| diagnostic(index.line_of(&p.path), Some(p.path), p.error))
                .collect();
            // Stable: problems on the same line keep the order they were found in.
            diagnostics.sort_by_key(|d| d.line);
            LoadErrors(diagnostics)
        })
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

    /// One line for `meshgate validate`.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        let auth = &self.filter.auth;
        format!(
            "{}: ok: {} ({}), {}, {}, {}{}, listener {}",
            self.source.display(),
            plural(self.servers.len(), "server"),
            names.join(", "),
            plural(auth.jwt.len(), "jwt issuer"),
            plural(auth.api_keys.len(), "api key"),
            plural(self.filter.policy.roles.len(), "role"),
            if auth.anonymous.is_some() {
                ", anonymous access on"
            } else {
                ""
            },
            self.listener,
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
fn describe_yaml_error(
    error: &serde_saphyr::Error,
    index: &LineIndex,
) -> (Option<usize>, Option<String>, String) {
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
