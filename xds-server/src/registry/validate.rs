//! [`RawRegistry`] → [`Registry`]: every check, every problem collected.
//!
//! Checks that belong to the filter (glob syntax, key hashes, claim names, limits...) are
//! not repeated here: the derived filter configuration goes through the filter's own
//! `FilterConfig::compile`. What is checked here is what only the registry knows (servers,
//! URLs, timeouts, files, the environment meshgate runs in) plus cross-references that give
//! clearer messages with a registry path (roles used by API keys and anonymous access).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use meshgate_core::config::{is_valid_server_name, FilterConfig, RawJwtProvider, SecretSource};

use super::error::RegistryError;
use super::filter::{self, FilterPath};
use super::lines::LineIndex;
use super::raw::{RawEnvoy, RawJwtIssuer, RawRegistry, RawServer};
use super::{
    EnvoySettings, LogLevel, Registry, Server, Upstream, UpstreamHost, DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
};

/// Where JWKS members that only private keys carry live (RFC 7518 §6).
const PRIVATE_JWK_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The default listener address when `listener.address` is omitted.
const DEFAULT_LISTENER_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A registry on its way to validation, with what validation needs to look at.
pub(crate) struct Unvalidated<'a, S> {
    pub raw: RawRegistry,
    /// The registry file, for [`Registry::source`].
    pub file: &'a Path,
    /// Relative `jwks_file` paths resolve against this folder.
    pub base_dir: &'a Path,
    pub secrets: &'a S,
    pub index: &'a LineIndex,
}

/// One problem at a registry path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub path: String,
    pub error: RegistryError,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, error: RegistryError) {
        self.0.push(Problem {
            path: path.into(),
            error,
        });
    }

    /// True when `path` overlaps (equals, contains or is inside) an already reported path.
    fn overlaps(&self, path: &str) -> bool {
        self.0
            .iter()
            .any(|p| is_within(&p.path, path) || is_within(path, &p.path))
    }
}

fn is_within(inner: &str, outer: &str) -> bool {
    inner == outer
        || outer.is_empty()
        || (inner.starts_with(outer)
            && matches!(inner.as_bytes().get(outer.len()), Some(b'.' | b'[')))
}

impl<S: SecretSource> TryFrom<Unvalidated<'_, S>> for Registry {
    type Error = Vec<Problem>;

    fn try_from(input: Unvalidated<'_, S>) -> Result<Self, Self::Error> {
        let Unvalidated {
            raw,
            file,
            base_dir,
            secrets,
            index,
        } = input;
        let mut problems = Problems::default();

        let listener_ip = match raw.listener.address.as_deref() {
            None => DEFAULT_LISTENER_ADDRESS,
            Some(value) => value.parse().unwrap_or_else(|_| {
                problems.push(
                    "listener.address",
                    RegistryError::InvalidListenerAddress {
                        value: value.to_string(),
                    },
                );
                DEFAULT_LISTENER_ADDRESS
            }),
        };
        let listener_port = port(&mut problems, "listener.port", raw.listener.port);
        let admin_port = match &raw.admin {
            Some(admin) => port(&mut problems, "admin.port", admin.port),
            None => 0,
        };
        if admin_port != 0 && admin_port == listener_port {
            problems.push("admin.port", RegistryError::PortClash { port: admin_port });
        }

        let servers = servers(&mut problems, &raw.servers, index);
        let jwt = jwt_providers(&mut problems, &raw.auth.jwt, base_dir, secrets);
        check_role_references(&mut problems, &raw);
        let envoy = envoy_settings(&mut problems, &raw.envoy);

        let filter = filter::make_filter_config(&raw, jwt);
        // The filter's own validator, exactly as the filter runs it in Envoy. When it points
        // at something already reported, the registry's message is the clearer one.
        if let Err(e) = FilterConfig::compile(&filter, secrets) {
            let FilterPath { path, message } = filter::locate(&e);
            if !problems.overlaps(&path) {
                problems.push(path, RegistryError::Filter(message));
            }
        }

        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        Ok(Registry {
            source: file.to_path_buf(),
            listener: SocketAddr::new(listener_ip, listener_port),
            admin_port,
            servers,
            filter,
            envoy,
        })
    }
}

fn port(problems: &mut Problems, path: &str, value: u64) -> u16 {
    u16::try_from(value).unwrap_or_else(|_| {
        problems.push(path, RegistryError::PortOutOfRange { value });
        0
    })
}

fn servers(problems: &mut Problems, raw: &[RawServer], index: &LineIndex) -> Vec<Server> {
    if raw.is_empty() {
        problems.push("servers", RegistryError::NoServers);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut servers = Vec::with_capacity(raw.len());
    for (i, server) in raw.iter().enumerate() {
        let at = format!("servers[{i}]");
        let name_path = format!("{at}.name");
        let mut ok = true;
        if !is_valid_server_name(&server.name) {
            problems.push(
                &name_path,
                RegistryError::InvalidServerName {
                    name: server.name.clone(),
                },
            );
            ok = false;
        } else if let Some(first) = seen.get(server.name.as_str()) {
            let first_line = index
                .line_of(&format!("servers[{first}].name"))
                .unwrap_or(0);
            problems.push(
                &name_path,
                RegistryError::DuplicateServer {
                    name: server.name.clone(),
                    first_line,
                },
            );
            ok = false;
        } else {
            seen.insert(&server.name, i);
        }
        let upstream =
            parse_upstream(&server.url).map_err(|e| problems.push(format!("{at}.url"), e));
        let timeout = match &server.timeout {
            None => Ok(Duration::ZERO),
            Some(value) => {
                parse_duration(value).map_err(|e| problems.push(format!("{at}.timeout"), e))
            }
        };
        if let (true, Ok(upstream), Ok(timeout)) = (ok, upstream, timeout) {
            servers.push(Server {
                name: server.name.clone(),
                upstream,
                timeout,
            });
        }
    }
    servers
}

/// Parses an upstream MCP endpoint. Only `http://` for now: TLS upstreams need trust
/// configuration that the registry does not have yet.
pub(crate) fn parse_upstream(url: &str) -> Result<Upstream, RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| invalid("missing scheme (expected http://host:port/path)"))?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(RegistryError::UnsupportedScheme {
            url: url.to_string(),
            scheme: scheme.to_string(),
        });
    }
    let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("credentials in the URL are not supported"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(invalid("query strings and fragments are not supported"));
    }
    let host = authority.host();
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        UpstreamHost::Ip(IpAddr::V6(
            v6.parse().map_err(|_| invalid("bad IPv6 address"))?,
        ))
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        UpstreamHost::Ip(ip)
    } else if host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.is_empty()
    {
        UpstreamHost::Dns(host.to_ascii_lowercase())
    } else {
        return Err(invalid("bad host name"));
    };
    let port = match authority.port_u16() {
        Some(0) => return Err(invalid("port 0")),
        Some(port) => port,
        None if authority.as_str().ends_with(':') => return Err(invalid("empty port")),
        None => 80,
    };
    let path = match uri.path() {
        "" => "/".to_string(),
        path => path.to_string(),
    };
    Ok(Upstream { host, port, path })
}

/// `<digits><unit>` with unit `ms`, `s`, `m` or `h`: `300s`, `5m`, `0s`.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, RegistryError> {
    let invalid = |reason| RegistryError::InvalidDuration {
        value: value.to_string(),
        reason,
    };
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid(
            "expected a number followed by ms, s, m or h (e.g. 300s, 5m)",
        ));
    }
    let n: u64 = digits.parse().map_err(|_| invalid("number too large"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(invalid("missing unit: use ms, s, m or h (e.g. 300s)")),
        _ => return Err(invalid("unknown unit: use ms, s, m or h (e.g. 300s)")),
    };
    // Envoy caps durations near 10,000 years; a year is plenty for a route timeout.
    const MAX_MILLIS: u64 = 366 * 24 * 3_600_000;
    match n.checked_mul(millis_per_unit) {
        Some(ms) if ms <= MAX_MILLIS => Ok(Duration::from_millis(ms)),
        _ => Err(invalid("longer than a year")),
    }
}

fn jwt_providers<S: SecretSource>(
    problems: &mut Problems,
    raw: &[RawJwtIssuer],
    base_dir: &Path,
    secrets: &S,
) -> Vec<RawJwtProvider> {
    raw.iter()
        .enumerate()
        .map(|(i, issuer)| {
            let at = format!("auth.jwt[{i}]");
            let mut jwks = None;
            match (&issuer.jwks_file, &issuer.hs256_secret_env) {
                (Some(_), Some(_)) => problems.push(
                    &at,
                    RegistryError::BothKeySources {
                        issuer: issuer.issuer.clone(),
                    },
                ),
                (None, None) => problems.push(
                    &at,
                    RegistryError::NoKeySource {
                        issuer: issuer.issuer.clone(),
                    },
                ),
                (Some(file), None) => {
                    jwks = read_jwks(&base_dir.join(file))
                        .map_err(|e| problems.push(format!("{at}.jwks_file"), e))
                        .ok();
                }
                (None, Some(name)) => {
                    let path = format!("{at}.hs256_secret_env");
                    if !is_env_name(name) {
                        problems.push(path, RegistryError::InvalidEnvName { name: name.clone() });
                    } else if secrets.secret(name).is_none_or(|v| v.is_empty()) {
                        problems.push(path, RegistryError::SecretEnvUnset { name: name.clone() });
                    }
                }
            }
            filter::make_jwt_provider(issuer, jwks)
        })
        .collect()
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reads a JWKS document and makes sure it carries public keys only: it ends up in the
/// filter configuration, which Envoy shows to anyone with admin access (`/config_dump`).
fn read_jwks(file: &Path) -> Result<serde_json::Value, RegistryError> {
    let text = std::fs::read_to_string(file).map_err(|e| RegistryError::JwksRead {
        file: file.to_path_buf(),
        error: e.to_string(),
    })?;
    let invalid = |reason: String| RegistryError::JwksInvalid {
        file: file.to_path_buf(),
        reason,
    };
    let jwks: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("bad JSON: {e}")))?;
    let keys = jwks
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| invalid("expected an object with a \"keys\" array".to_string()))?;
    if keys.is_empty() {
        return Err(invalid("\"keys\" is empty".to_string()));
    }
    for (index, key) in keys.iter().enumerate() {
        let key = key
            .as_object()
            .ok_or_else(|| invalid(format!("key {index} is not an object")))?;
        if let Some(member) = PRIVATE_JWK_MEMBERS.iter().find(|m| key.contains_key(**m)) {
            return Err(RegistryError::JwksPrivateKey {
                file: file.to_path_buf(),
                index,
                member: (*member).to_string(),
            });
        }
    }
    Ok(jwks)
}

/// API keys and anonymous access name roles statically; a typo there would silently grant
/// nothing, so it is an error. (JWT roles come from tokens and cannot be checked here.)
fn check_role_references(problems: &mut Problems, raw: &RawRegistry) {
    let defined: BTreeSet<&str> = raw.policy.roles.keys().map(String::as_str).collect();
    let mut check = |path: String, role: &str| {
        if !defined.contains(role) {
            problems.push(
                path,
                RegistryError::UnknownRole {
                    role: role.to_string(),
                },
            );
        }
    };
    for (i, key) in raw.auth.api_keys.iter().enumerate() {
        for (j, role) in key.roles.iter().enumerate() {
            check(format!("auth.api_keys[{i}].roles[{j}]"), role);
        }
    }
    if let Some(anonymous) = &raw.auth.anonymous {
        for (j, role) in anonymous.roles.iter().enumerate() {
            check(format!("auth.anonymous.roles[{j}]"), role);
        }
    }
}

fn envoy_settings(problems: &mut Problems, raw: &RawEnvoy) -> EnvoySettings {
    let concurrency = match raw.concurrency {
        None => DEFAULT_CONCURRENCY,
        Some(value) => u32::try_from(value)
            .ok()
            .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
            .unwrap_or_else(|| {
                problems.push(
                    "envoy.concurrency",
                    RegistryError::InvalidConcurrency { value },
                );
                DEFAULT_CONCURRENCY
            }),
    };
    let log_level = match raw.log_level.as_deref() {
        None => LogLevel::default(),
        Some(value) => LogLevel::parse(value).unwrap_or_else(|| {
            problems.push(
                "envoy.log_level",
                RegistryError::InvalidLogLevel {
                    value: value.to_string(),
                },
            );
            LogLevel::default()
        }),
    };
    EnvoySettings {
        concurrency,
        log_level,
    }
}
