//! Which `Host` and `Origin` a request may carry: the gateway's defence against DNS
//! rebinding and against cross-site requests from browsers.
//!
//! The route rewrites `Host` to the upstream's, so an upstream's own DNS-rebinding check
//! never sees what the client sent: the gateway must check it. Two checks, on every request
//! to an MCP route, before identity:
//! - **Host** (`:authority`): the names clients may address the gateway by. A DNS-rebinding
//!   page reaches the gateway under the attacker's name (`evil.example:10000` resolving to
//!   127.0.0.1), so a Host outside the list is refused. `None` accepts any Host (a listener
//!   behind an ingress that forwards many names).
//! - **Origin**: absent for non-browser clients (SDKs, the Inspector CLI), which pass. When
//!   present it must match an allowed origin: the listener's list, or the CORS policy of the
//!   server the request is for. `Origin: null` (sandboxed frames, `file:`) never matches.
//!
//! Refusals carry a JSON-RPC error without id (`-32003`, naming the value) and never reach
//! the upstream. A foreign `Origin` gets HTTP **403**, whatever else is wrong (MCP
//! transports: "if the Origin header is present and invalid, servers MUST respond with HTTP
//! 403 Forbidden"); a foreign `Host` with an acceptable (or no) `Origin` gets **421**
//! Misdirected Request, as the Python SDK's own check answers: it is what a non-browser
//! client meets when it reaches a loopback gateway under another name (a host alias, a
//! reverse proxy keeping `Host`), and MCP clients treat 403 as an authorization problem
//! (the Inspector starts OAuth), which would hide the message.
//!
//! Patterns (`listener.allowed_hosts`, `listener.allowed_origins`, `cors.allow_origins`):
//! - host: `name`, `*.suffix` (any subdomain of `suffix`, not `suffix` itself), an IPv4
//!   address or a bracketed IPv6 address, optionally `:port` or `:*`; without a port any
//!   port matches. `*` alone accepts any host.
//! - origin: `scheme://host[:port]` with the host forms above; without a port the scheme's
//!   default port (80, 443) is meant, `:*` accepts any port. `*` alone accepts any origin.
//!
//! Names compare case-insensitively; one trailing dot of a request's host name is ignored.
//! The same parser validates the registry in the control plane and the filter config in
//! Envoy, and gives the anchored regex Envoy's CORS filter matches origins with
//! ([`OriginPattern::regex`]), so both agree on what an origin is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::jsonrpc::code;
use crate::reject::{printable, Rejection};

/// Host patterns of a listener bound to loopback when the registry names none: only
/// loopback names, on any port.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Origin patterns of a listener bound to loopback when the registry names none: pages
/// served from this machine (the same site as the gateway), on any port.
pub const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// The filter configuration's `origin_policy`. Without it (the serde default) any Host is
/// accepted and any request carrying an `Origin` is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOriginPolicy {
    /// Host patterns; absent = any Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Origin patterns accepted on every server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Further origin patterns per server: those of the CORS policy covering its route.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_origins: BTreeMap<String, Vec<String>>,
}

impl RawOriginPolicy {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// A host as a pattern or a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostName {
    /// Any host (`*`).
    Any,
    /// A lower-case DNS name or IPv4 address.
    Exact(String),
    /// `*.suffix`: a name ending in `.suffix` (the suffix stored lower-case, without the dot).
    Subdomains(String),
    /// A bracketed IPv6 address, compared as an address.
    Ipv6(Ipv6Addr),
}

impl HostName {
    fn matches(&self, host: &HostName) -> bool {
        match (self, host) {
            (HostName::Any, _) => true,
            (HostName::Exact(a), HostName::Exact(b)) => a == b,
            (HostName::Subdomains(suffix), HostName::Exact(name)) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                    && name.parse::<Ipv4Addr>().is_err()
            }
            (HostName::Ipv6(a), HostName::Ipv6(b)) => a == b,
            _ => false,
        }
    }

    /// An anchored RE2 fragment matching this host as a browser writes it in `Origin`.
    fn regex(&self) -> String {
        match self {
            HostName::Any => "[^/]+".to_string(),
            HostName::Exact(name) => regex_escape(name),
            HostName::Subdomains(suffix) => format!("[a-z0-9-]+(\\.[a-z0-9-]+)*\\.{}", regex_escape(suffix)),
            HostName::Ipv6(ip) => format!("\\[{}\\]", regex_escape(&ip.to_string())),
        }
    }
}

/// A port in a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRule {
    Any,
    Exactly(u16),
}

/// One `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostName,
    port: PortRule,
}

impl HostPattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.trim() == "*" {
            return Ok(Self { host: HostName::Any, port: PortRule::Any });
        }
        let (host, port) = split_authority(pattern)?;
        let port = match port {
            None | Some("*") => PortRule::Any,
            Some(p) => PortRule::Exactly(parse_port(p)?),
        };
        Ok(Self { host: parse_host(host, true)?, port })
    }

    fn matches(&self, host: &HostName, port: Option<u16>) -> bool {
        self.host.matches(host)
            && match self.port {
                PortRule::Any => true,
                PortRule::Exactly(p) => port == Some(p),
            }
    }
}

/// One allowed origin (`allowed_origins`, `cors.allow_origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// `None` for `*` (any origin).
    scheme: Option<String>,
    host: HostName,
    port: PortRule,
}

impl OriginPattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.trim() == "*" {
            return Ok(Self { scheme: None, host: HostName::Any, port: PortRule::Any });
        }
        let origin = split_origin(pattern)?;
        let port = match origin.port {
            Some("*") => PortRule::Any,
            Some(p) => PortRule::Exactly(parse_port(p)?),
            None => match default_port(&origin.scheme) {
                Some(p) => PortRule::Exactly(p),
                None => PortRule::Any,
            },
        };
        Ok(Self { host: parse_host(origin.host, true)?, scheme: Some(origin.scheme), port })
    }

    fn matches(&self, origin: &RequestOrigin) -> bool {
        let scheme = self.scheme.as_deref().is_none_or(|s| s == origin.scheme);
        let port = match self.port {
            PortRule::Any => true,
            PortRule::Exactly(p) => origin.port == Some(p),
        };
        scheme && port && self.host.matches(&origin.host)
    }

    /// An anchored, case-insensitive RE2 regex matching exactly the `Origin` values this
    /// pattern accepts (a default port written or not), for Envoy's CORS filter.
    pub fn regex(&self) -> String {
        let Some(scheme) = &self.scheme else {
            return "^.+$".to_string();
        };
        let port = match (self.port, default_port(scheme)) {
            (PortRule::Any, _) => "(:[0-9]{1,5})?".to_string(),
            (PortRule::Exactly(p), Some(d)) if p == d => format!("(:{p})?"),
            (PortRule::Exactly(p), _) => format!(":{p}"),
        };
        format!("(?i)^{}://{}{port}$", regex_escape(scheme), self.host.regex())
    }
}

/// The compiled checks.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `None`: any Host.
    hosts: Option<Vec<HostPattern>>,
    origins: Vec<OriginPattern>,
    server_origins: HashMap<String, Vec<OriginPattern>>,
}

impl OriginPolicy {
    /// Validates `raw` (at `origin_policy.*` in the filter configuration).
    pub fn compile(raw: &RawOriginPolicy, servers: &HashSet<String>) -> Result<Self, ConfigError> {
        let hosts = match &raw.allowed_hosts {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(ConfigError::invalid(
                    "origin_policy.allowed_hosts",
                    "must not be empty (no Host would be accepted); use [\"*\"] to accept any",
                ))
            }
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, p)| {
                        HostPattern::parse(p)
                            .map_err(|e| ConfigError::invalid(format!("origin_policy.allowed_hosts[{i}]"), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let origins = compile_origins(&raw.allowed_origins, "origin_policy.allowed_origins")?;
        let mut server_origins = HashMap::new();
        for (server, list) in &raw.server_origins {
            let path = format!("origin_policy.server_origins.{server}");
            if !servers.contains(server) {
                return Err(ConfigError::invalid(path, format!("\"{server}\" is not a server of this configuration")));
            }
            server_origins.insert(server.clone(), compile_origins(list, &path)?);
        }
        Ok(Self { hosts, origins, server_origins })
    }

    /// Whether the request's Host is one clients may address the gateway by (421 if not).
    /// `authority` is the request's `:authority` (HTTP/1.1 `Host`).
    pub fn check_host(&self, authority: Option<&str>) -> Result<(), Rejection> {
        let Some(patterns) = &self.hosts else {
            return Ok(());
        };
        let Some(authority) = authority else {
            return Err(Rejection::foreign_host(code::FORBIDDEN, "the request names no host"));
        };
        let accepted =
            request_host(authority).is_some_and(|(host, port)| patterns.iter().any(|p| p.matches(&host, port)));
        if accepted {
            Ok(())
        } else {
            let message = format!("host \"{}\" is not allowed on this gateway", printable(authority));
            Err(Rejection::foreign_host(code::FORBIDDEN, message))
        }
    }

    /// Whether a request may carry these `Origin` header values (all of them: a repeated
    /// `Origin` is refused), 403 if not. `server` is the server its path names, if any (its
    /// CORS origins are accepted too). No `Origin` passes: only browsers send one.
    pub fn check_origin<'v>(
        &self,
        server: Option<&str>,
        mut values: impl Iterator<Item = &'v str>,
    ) -> Result<(), Rejection> {
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err(Rejection::foreign_origin(code::FORBIDDEN, "the Origin header is repeated"));
        }
        let own = server.and_then(|s| self.server_origins.get(s)).map(Vec::as_slice).unwrap_or_default();
        let accepted = request_origin(value).is_some_and(|o| self.origins.iter().chain(own).any(|p| p.matches(&o)));
        if accepted {
            return Ok(());
        }
        let message = match server {
            Some(server) => format!("origin \"{}\" is not allowed to call {server}", printable(value)),
            None => format!("origin \"{}\" is not allowed on this gateway", printable(value)),
        };
        Err(Rejection::foreign_origin(code::FORBIDDEN, message))
    }
}

fn compile_origins(list: &[String], path: &str) -> Result<Vec<OriginPattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| OriginPattern::parse(p).map_err(|e| ConfigError::invalid(format!("{path}[{i}]"), e)))
        .collect()
}

/// An `Origin` as a request carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestOrigin {
    scheme: String,
    host: HostName,
    /// The port, the scheme's default when none is written (`None` for other schemes).
    port: Option<u16>,
}

/// Parses a request's `Origin`; `None` when it is not `scheme://host[:port]` (e.g. `null`).
fn request_origin(value: &str) -> Option<RequestOrigin> {
    let origin = split_origin(value).ok()?;
    let port = match origin.port {
        Some(p) => Some(parse_port(p).ok()?),
        None => default_port(&origin.scheme),
    };
    Some(RequestOrigin { host: parse_host(origin.host, false).ok()?, scheme: origin.scheme, port })
}

/// Parses a request's `:authority` into host and port; `None` when it is not one.
fn request_host(authority: &str) -> Option<(HostName, Option<u16>)> {
    let (host, port) = split_authority(authority).ok()?;
    let port = match port {
        Some(p) => Some(parse_port(p).ok()?),
        None => None,
    };
    Some((parse_host(host, false).ok()?, port))
}

struct OriginParts<'a> {
    scheme: String,
    host: &'a str,
    port: Option<&'a str>,
}

fn split_origin(value: &str) -> Result<OriginParts<'_>, String> {
    let value = value.trim();
    let (scheme, rest) = value.split_once("://").ok_or_else(|| format!("\"{value}\" is not scheme://host[:port]"))?;
    let valid_scheme = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid_scheme {
        return Err(format!("\"{value}\" has an invalid scheme"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("\"{value}\" is not an origin: it may have no path, query or user"));
    }
    let (host, port) = split_authority(rest)?;
    Ok(OriginParts { scheme: scheme.to_ascii_lowercase(), host, port })
}

/// `host[:port]` → (host, port text). IPv6 hosts are bracketed. Ports are parsed by the
/// caller (a pattern's port may be `*`).
fn split_authority(value: &str) -> Result<(&str, Option<&str>), String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.starts_with('[') {
        let end = value.find(']').ok_or_else(|| format!("\"{value}\": unclosed '['"))?;
        let (host, rest) = value.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("\"{value}\": unexpected text after ']'")),
            },
        };
    }
    match value.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((value, None)),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{text}\" is not a port"));
    }
    text.parse().map_err(|_| format!("\"{text}\" is not a port"))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A host name, `*.suffix` (patterns only), IPv4 address or bracketed IPv6 address.
fn parse_host(host: &str, pattern: bool) -> Result<HostName, String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().map(HostName::Ipv6).map_err(|_| format!("\"{host}\" is not an IPv6 address"));
    }
    let lower = host.to_ascii_lowercase();
    // A request's `example.com.` is `example.com`; a pattern is written without the dot.
    let name = if pattern { lower.as_str() } else { lower.strip_suffix('.').unwrap_or(&lower) };
    if let Some(suffix) = name.strip_prefix("*.").filter(|_| pattern) {
        if !is_dns_name(suffix) || suffix.parse::<Ipv4Addr>().is_ok() {
            return Err(format!("\"{host}\": *. must be followed by a DNS name"));
        }
        return Ok(HostName::Subdomains(suffix.to_string()));
    }
    if name.parse::<Ipv4Addr>().is_ok() || is_dns_name(name) {
        return Ok(HostName::Exact(name.to_string()));
    }
    Err(format!("\"{host}\" is not a host name or IP address"))
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1–63 characters.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `text` with RE2 metacharacters escaped (host names only hold `.`, `-`, `_`, `:` besides
/// letters and digits, but escape everything that is not alphanumeric to be safe).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
