//! The production edge: TLS and client certificates on the listener (`listener.tls`), the
//! original client address (`listener.use_remote_address`, `listener.xff_num_trusted_hops`),
//! where Envoy's admin listens (`admin.address`) and the stats/readiness listener (`stats`).
//!
//! Raw shapes and their validation live here, apart from the rest of the registry, so they
//! evolve on their own. Invariants of the validated types:
//! - [`ListenerTls`] always has a certificate and its key; with `source: meshgate` their PEM
//!   was read and parsed by meshgate (the key is a [`SecretValue`]), with `source: envoy`
//!   the paths are absolute (they name files on the Envoy hosts);
//! - `auth.mtls` entries exist only when client certificates are verified
//!   (`listener.tls.client_ca_file`): without verification there is nothing to map;
//! - [`Stats`] has a port of its own (not the listener's or the admin's) and needs a fixed
//!   `admin.port` (it routes to Envoy's admin);
//! - [`Edge::warnings`] names every non-loopback admin or stats address (an explicit
//!   opt-in: Envoy's admin can dump the configuration and stop Envoy).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SecretValue;

/// `listener.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// PEM certificate chain the listener presents.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// `meshgate` (default): meshgate reads the files and serves them to Envoy by SDS, and
    /// pushes every change. `envoy`: the paths are on the Envoy hosts; Envoy reads and
    /// watches them itself (the SDS secret names the files).
    #[serde(default)]
    pub source: Option<String>,
    /// PEM bundle of the CAs client certificates must chain to: turns on mTLS.
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// With `client_ca_file`: refuse connections without a client certificate (default
    /// true). False makes the certificate optional (callers without one authenticate
    /// otherwise).
    #[serde(default)]
    pub require_client_certificate: Option<bool>,
}

/// `stats`: a listener serving Envoy's `/stats/prometheus` and `/ready`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStats {
    /// Default 127.0.0.1.
    #[serde(default)]
    pub address: Option<String>,
    pub port: u64,
}

/// Where the listener's certificate (and client CA) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsSource {
    /// meshgate reads the files and sends their content by SDS.
    #[default]
    Meshgate,
    /// Envoy reads the files on its own host (SDS carries the paths; Envoy watches them).
    Envoy,
}

/// A PEM file: its path, and its content when meshgate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: PathBuf,
    /// `Some` with [`TlsSource::Meshgate`].
    pub pem: Option<String>,
}

/// `listener.tls`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub source: TlsSource,
    pub cert: PemFile,
    pub key_path: PathBuf,
    /// The key's PEM, with [`TlsSource::Meshgate`].
    pub key_pem: Option<SecretValue>,
    /// mTLS: the CAs client certificates must chain to.
    pub client_ca: Option<PemFile>,
    pub require_client_certificate: bool,
}

/// The production-edge settings of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub tls: Option<ListenerTls>,
    /// HCM `use_remote_address`: the connection's peer is the client (an edge proxy).
    pub use_remote_address: bool,
    /// HCM `xff_num_trusted_hops`: proxies in front whose `X-Forwarded-For` entries count.
    pub xff_num_trusted_hops: u32,
    /// Envoy's admin address (default 127.0.0.1).
    pub admin_address: IpAddr,
    /// The stats/readiness listener, when configured.
    pub stats: Option<SocketAddr>,
}

impl Default for Edge {
    fn default() -> Self {
        Edge {
            tls: None,
            use_remote_address: false,
            xff_num_trusted_hops: 0,
            admin_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stats: None,
        }
    }
}

impl Edge {
    /// Non-loopback admin or stats addresses: allowed, but said out loud.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.admin_address.is_loopback() {
            out.push(format!(
                "admin.address {} is not loopback: Envoy's admin can dump the configuration and stop Envoy; \
                 expose it only on a private network",
                self.admin_address
            ));
        }
        if let Some(stats) = self.stats.filter(|s| !s.ip().is_loopback()) {
            out.push(format!(
                "stats.address {} is not loopback: /stats/prometheus and /ready are reachable from that network",
                stats.ip()
            ));
        }
        out
    }
}

/// What can be wrong with the edge settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error("{key} is required")]
    Missing { key: &'static str },
    #[error("invalid source {value:?}: use meshgate or envoy")]
    InvalidSource { value: String },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} holds no PEM {what}")]
    NotPem { path: String, what: &'static str },
    #[error("{path:?} must be an absolute path with source: envoy (it names a file on the Envoy hosts)")]
    NotAbsolute { path: String },
    #[error("require_client_certificate needs client_ca_file (there is nothing to verify certificates against)")]
    RequireWithoutCa,
    #[error(
        "auth.mtls needs listener.tls.client_ca_file: without verified client certificates there is nothing to map"
    )]
    MtlsWithoutClientCa,
    #[error("{value:?} is not an IP address")]
    InvalidAddress { value: String },
    #[error("{value} is not a port number (1-65535)")]
    InvalidPort { value: u64 },
    #[error("stats port {port} is also the {other} port")]
    StatsPortClash { port: u16, other: &'static str },
    #[error("stats needs admin.port set (it routes /stats/prometheus and /ready to Envoy's admin)")]
    StatsWithoutAdminPort,
    #[error("xff_num_trusted_hops {value} is out of range (0-16)")]
    TooManyHops { value: u64 },
}

/// More trusted hops than this is a typo, not a topology.
pub const MAX_TRUSTED_HOPS: u64 = 16;

/// The raw edge keys, gathered from their places in the registry.
pub(crate) struct RawEdge<'a> {
    pub tls: Option<&'a RawListenerTls>,
    pub use_remote_address: Option<bool>,
    pub xff_num_trusted_hops: Option<u64>,
    pub admin_address: Option<&'a str>,
    pub admin_port: u16,
    pub listener_port: u16,
    pub stats: Option<&'a RawStats>,
    pub has_mtls_identities: bool,
}

/// Validates the edge keys; problems are `(registry path, error)`.
pub(crate) fn validate(raw: &RawEdge<'_>, base_dir: &Path) -> Result<Edge, Vec<(String, EdgeError)>> {
    let mut problems = Vec::new();
    let tls = raw.tls.and_then(|tls| match listener_tls(tls, base_dir) {
        Ok(tls) => Some(tls),
        Err(found) => {
            problems.extend(found);
            None
        }
    });
    let verifies_clients = raw.tls.is_some_and(|t| t.client_ca_file.is_some());
    if raw.has_mtls_identities && !verifies_clients {
        problems.push(("auth.mtls".to_string(), EdgeError::MtlsWithoutClientCa));
    }
    let xff_num_trusted_hops = match raw.xff_num_trusted_hops {
        None => 0,
        Some(value) if value <= MAX_TRUSTED_HOPS => u32::try_from(value).unwrap_or(0),
        Some(value) => {
            problems.push(("listener.xff_num_trusted_hops".to_string(), EdgeError::TooManyHops { value }));
            0
        }
    };
    let admin_address = address(&mut problems, "admin.address", raw.admin_address);
    let stats = raw.stats.and_then(|stats| {
        let ip = address(&mut problems, "stats.address", stats.address.as_deref());
        let port = match u16::try_from(stats.port).ok().filter(|p| *p != 0) {
            Some(port) => port,
            None => {
                problems.push(("stats.port".to_string(), EdgeError::InvalidPort { value: stats.port }));
                return None;
            }
        };
        for (other, clash) in [("listener", raw.listener_port), ("admin", raw.admin_port)] {
            if clash == port {
                problems.push(("stats.port".to_string(), EdgeError::StatsPortClash { port, other }));
            }
        }
        if raw.admin_port == 0 {
            problems.push(("stats".to_string(), EdgeError::StatsWithoutAdminPort));
        }
        Some(SocketAddr::new(ip, port))
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Edge {
        tls,
        use_remote_address: raw.use_remote_address.unwrap_or(false),
        xff_num_trusted_hops,
        admin_address,
        stats,
    })
}

/// An IP address (default loopback).
fn address(problems: &mut Vec<(String, EdgeError)>, path: &str, value: Option<&str>) -> IpAddr {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    match value {
        None => loopback,
        Some(text) => text.parse().unwrap_or_else(|_| {
            problems.push((path.to_string(), EdgeError::InvalidAddress { value: text.to_string() }));
            loopback
        }),
    }
}

fn listener_tls(raw: &RawListenerTls, base_dir: &Path) -> Result<ListenerTls, Vec<(String, EdgeError)>> {
    let mut problems = Vec::new();
    let at = |key: &str| format!("listener.tls.{key}");
    let source = match raw.source.as_deref() {
        None | Some("meshgate") => TlsSource::Meshgate,
        Some("envoy") => TlsSource::Envoy,
        Some(other) => {
            problems.push((at("source"), EdgeError::InvalidSource { value: other.to_string() }));
            TlsSource::Meshgate
        }
    };
    let mut pem = |key: &'static str, value: Option<&str>, what: &'static str| -> Option<PemFile> {
        let Some(value) = value else {
            problems.push((at(key), EdgeError::Missing { key }));
            return None;
        };
        match source {
            TlsSource::Envoy => {
                if Path::new(value).is_absolute() {
                    Some(PemFile { path: PathBuf::from(value), pem: None })
                } else {
                    problems.push((at(key), EdgeError::NotAbsolute { path: value.to_string() }));
                    None
                }
            }
            TlsSource::Meshgate => {
                let path = base_dir.join(value);
                match read_pem(&path, what).map_err(|e| match e {
                    // A relative path: say which folder it resolved against.
                    EdgeError::Unreadable { path, reason } if !std::path::Path::new(value).is_absolute() => {
                        let reason = match std::fs::read(base_dir.join(value)) {
                            Err(io) => super::file_read_error(value, base_dir, &io),
                            Ok(_) => reason,
                        };
                        EdgeError::Unreadable { path, reason }
                    }
                    other => other,
                }) {
                    Ok(pem) => Some(PemFile { path, pem: Some(pem) }),
                    Err(e) => {
                        problems.push((at(key), e));
                        None
                    }
                }
            }
        }
    };
    let cert = pem("cert_file", raw.cert_file.as_deref(), "certificate");
    let key = pem("key_file", raw.key_file.as_deref(), "private key");
    let client_ca = match raw.client_ca_file.as_deref() {
        None => None,
        Some(value) => pem("client_ca_file", Some(value), "certificate"),
    };
    if raw.client_ca_file.is_none() && raw.require_client_certificate == Some(true) {
        problems.push((at("require_client_certificate"), EdgeError::RequireWithoutCa));
    }
    match (cert, key) {
        (Some(cert), Some(key)) if problems.is_empty() => Ok(ListenerTls {
            source,
            cert,
            key_path: key.path,
            key_pem: key.pem.map(SecretValue::new),
            require_client_certificate: client_ca.is_some() && raw.require_client_certificate.unwrap_or(true),
            client_ca,
        }),
        _ => Err(problems),
    }
}

/// Reads `path` and checks it holds at least one PEM block of `what`.
fn read_pem(path: &Path, what: &'static str) -> Result<String, EdgeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let text = std::fs::read_to_string(path)
        .map_err(|e| EdgeError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
    let ok = if what == "private key" {
        PrivateKeyDer::from_pem_slice(text.as_bytes()).is_ok()
    } else {
        CertificateDer::pem_slice_iter(text.as_bytes()).next().is_some_and(|c| c.is_ok())
    };
    if !ok {
        return Err(EdgeError::NotPem { path: path.display().to_string(), what });
    }
    Ok(text)
}
