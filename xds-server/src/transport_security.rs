//! Transport security of meshgate's own ports: TLS or mTLS on the gRPC port (ADS and the
//! rate-limit service share it), TLS and a bearer token on the admin API, and the rule that
//! plaintext is only for loopback unless the operator opts in.
//!
//! - gRPC: tonic's rustls server ([`GrpcTls::server_config`]). With a client CA every
//!   Envoy must present a certificate chaining to it, or the handshake fails and the Envoy
//!   never receives configuration (nor can it ask for rate-limit decisions).
//! - Admin API: rustls via [`TlsListener`], an `axum::serve::Listener` whose handshakes run
//!   in their own tasks (a slow client cannot hold up others) with a deadline.
//! - [`AdminToken`]: `Authorization: Bearer <token>` on everything but `/healthz`,
//!   `/readyz` (probes) and the filter module (public bytes, pinned by SHA-256 in the
//!   configuration Envoy gets over the authenticated xDS stream; Envoy's remote fetch cannot
//!   send a header). Compared as SHA-256 digests, so timing says nothing about the token.
//!
//! Certificates are read once at start; rotate them by restarting meshgate (Envoys
//! reconnect within [`crate::bootstrap::XDS_RETRY_MAX`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long an admin client gets to finish its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Handshaken admin connections waiting for axum.
const ACCEPT_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM {what}")]
    NotPem { path: PathBuf, what: &'static str },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error(
        "{what} on {address} would be plaintext on a non-loopback address: give {flags}, \
         or --allow-plaintext to accept that"
    )]
    PlaintextRefused { what: &'static str, address: SocketAddr, flags: &'static str },
    #[error("the admin token in {path} is empty")]
    EmptyToken { path: PathBuf },
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| TransportError::Read { path: path.to_path_buf(), reason: e.to_string() })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TransportError::NotPem { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| TransportError::NotPem { path: path.to_path_buf(), what: "private key" })
}

/// A server certificate, its key and (for mTLS) the CAs clients must chain to, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// TLS (or mTLS) of the gRPC port, read and checked at start.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl GrpcTls {
    pub fn load(files: &TlsFiles) -> Result<GrpcTls, TransportError> {
        // Parsed here so a bad file is refused at start with its name, not at the first handshake.
        certificates(&files.cert)?;
        private_key(&files.key)?;
        if let Some(ca) = &files.client_ca {
            certificates(ca)?;
        }
        Ok(GrpcTls {
            cert_pem: read(&files.cert)?,
            key_pem: read(&files.key)?,
            client_ca_pem: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            // Required, not optional: an Envoy without a certificate is refused.
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(false),
            None => config,
        }
    }
}

/// The admin API's rustls configuration (HTTP/1.1).
pub fn admin_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Refuses plaintext on a non-loopback address unless `allow_plaintext`; warns when it is
/// allowed. `flags` names what would make the port secure.
pub fn check_plaintext(
    what: &'static str,
    address: SocketAddr,
    secured: bool,
    allow_plaintext: bool,
    flags: &'static str,
) -> Result<(), TransportError> {
    if secured || address.ip().is_loopback() {
        return Ok(());
    }
    if !allow_plaintext {
        return Err(TransportError::PlaintextRefused { what, address, flags });
    }
    tracing::warn!(%address, "{what} is plaintext on a non-loopback address (--allow-plaintext)");
    eprintln!("meshgate: warning: {what} on {address} is plaintext and unauthenticated (--allow-plaintext)");
    Ok(())
}

/// An axum listener that terminates TLS. Handshakes run in their own tasks.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; the acceptor stops when the returned listener is dropped.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, connections) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "admin TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { connections, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The acceptor only ends with the listener itself.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The admin API's bearer token, kept as its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

impl AdminToken {
    /// Reads the token from `path` (surrounding whitespace ignored; must not be empty).
    pub fn read(path: &Path) -> Result<AdminToken, TransportError> {
        let text = read(path)?;
        let token = String::from_utf8_lossy(&text);
        let token = token.trim();
        if token.is_empty() {
            return Err(TransportError::EmptyToken { path: path.to_path_buf() });
        }
        Ok(AdminToken::new(token))
    }

    pub fn new(token: &str) -> AdminToken {
        AdminToken { digest: Sha256::digest(token.as_bytes()).into() }
    }

    /// Whether an `Authorization` header value carries this token as a bearer token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some((scheme, token)) = authorization.and_then(|v| v.trim().split_once(' ')) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        scheme.eq_ignore_ascii_case("bearer") && digest == self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_admits_only_its_bearer_token() {
        let token = AdminToken::new("s3cret-token");
        assert!(token.admits(Some("Bearer s3cret-token")));
        assert!(token.admits(Some("bearer  s3cret-token ")));
        for bad in
            [None, Some(""), Some("Bearer"), Some("Bearer other"), Some("Basic s3cret-token"), Some("s3cret-token")]
        {
            assert!(!token.admits(bad), "{bad:?}");
        }
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn plaintext_is_for_loopback_or_explicit_opt_in() {
        let public: SocketAddr = "0.0.0.0:18000".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:18000".parse().unwrap();
        assert!(check_plaintext("ADS", loopback, false, false, "--x").is_ok());
        assert!(check_plaintext("ADS", public, true, false, "--x").is_ok());
        let e = check_plaintext("ADS", public, false, false, "--xds-tls-cert").unwrap_err();
        assert!(e.to_string().contains("0.0.0.0:18000") && e.to_string().contains("--xds-tls-cert"), "{e}");
        assert!(check_plaintext("ADS", public, false, true, "--x").is_ok());
    }
}
