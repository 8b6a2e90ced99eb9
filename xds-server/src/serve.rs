//! The control plane as a running thing: ADS port (which also serves Envoy's rate-limit
//! API for global quotas), admin API, registry watcher.
//!
//! [`start`] loads the registry (refusing to start on an invalid one, like `validate`),
//! binds both ports (port 0 allowed), and spawns the gRPC server, the admin API and the
//! watcher on the current runtime. `meshgate serve` runs it until a signal; `meshgate up`
//! runs it in-process next to the Envoy it supervises.
//!
//! Transport security ([`Security`], see [`crate::transport_security`]): TLS or mTLS on the
//! gRPC port, TLS and a bearer token on the admin API. Plaintext on a non-loopback address
//! is refused unless `allow_plaintext` (which warns).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin_api::{self, AdminState, WasmModule, WASM_PATH};
use crate::control::ControlPlane;
use crate::ratelimit::{Metrics, RateLimiter, RlsService};
use crate::registry::Registry;
use crate::reload::{self, Loader, ReloadError};
use crate::service::AdsService;
use crate::translate::{NativeSource, RemoteWasm, RemoteWasmTls, TranslateOptions, WasmSource};
use crate::transport_security::{self, AdminToken, GrpcTls, TlsListener};

/// How long open ADS streams get to end on shutdown before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// HTTP/2 keepalive towards Envoys, so dead peers are noticed.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// How Envoys get the wasm module.
#[derive(Debug, Clone)]
pub enum WasmDelivery {
    /// Envoys read this path on their own host.
    Local(PathBuf),
    /// meshgate serves the module on its admin API; Envoys fetch it from `url`.
    Remote {
        url: String,
        module: WasmModule,
        /// PEM CA bundle Envoys verify an `https` URL with (default: their system bundle).
        ca_pem: Option<String>,
    },
}

impl WasmDelivery {
    /// Reads the module behind `--wasm-url` (so its hash is known) and checks the URL.
    pub fn remote(url: &str, module_file: &std::path::Path) -> Result<WasmDelivery, ServeError> {
        let uri: http::Uri =
            url.parse().map_err(|e| ServeError::WasmUrl { url: url.to_string(), reason: format!("{e}") })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ServeError::WasmUrl {
                url: url.to_string(),
                reason: "expected http(s)://host:port/path".to_string(),
            });
        }
        let module = WasmModule::read(module_file).map_err(|source| ServeError::Io {
            what: format!("cannot read the wasm module {}", module_file.display()),
            source,
        })?;
        Ok(WasmDelivery::Remote { url: url.to_string(), module, ca_pem: None })
    }

    /// The CA bundle Envoys verify an `https` `--wasm-url` with.
    pub fn with_ca(self, ca_file: Option<&std::path::Path>) -> Result<WasmDelivery, ServeError> {
        match (self, ca_file) {
            (WasmDelivery::Remote { url, module, .. }, Some(file)) => {
                let pem = std::fs::read_to_string(file).map_err(|source| ServeError::Io {
                    what: format!("cannot read the wasm URL's CA bundle {}", file.display()),
                    source,
                })?;
                Ok(WasmDelivery::Remote { url, module, ca_pem: Some(pem) })
            }
            (delivery, _) => Ok(delivery),
        }
    }

    fn translate_options(&self, native: &NativeSource) -> Result<TranslateOptions, ServeError> {
        let wasm = match self {
            WasmDelivery::Local(path) => WasmSource::Local { path: path.clone() },
            WasmDelivery::Remote { url, module, ca_pem } => {
                let uri: http::Uri =
                    url.parse().map_err(|e| ServeError::WasmUrl { url: url.clone(), reason: format!("{e}") })?;
                let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
                let https = uri.scheme_str() == Some("https");
                WasmSource::Remote(RemoteWasm {
                    url: url.clone(),
                    host,
                    port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
                    sha256: module.sha256.clone(),
                    tls: https.then(|| RemoteWasmTls { ca_pem: ca_pem.clone() }),
                })
            }
        };
        Ok(TranslateOptions { wasm, native: native.clone() })
    }
}

/// What `start` needs.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub registry: PathBuf,
    pub xds_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub wasm: WasmDelivery,
    /// Where Envoys load the native module from (`filter.runtime: native`).
    pub native: NativeSource,
    pub security: Security,
}

/// Transport security of meshgate's ports. The default is plaintext, allowed on loopback only.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS (mTLS with a client CA) on the gRPC port: ADS and the rate-limit service.
    pub grpc_tls: Option<GrpcTls>,
    /// TLS on the admin API.
    pub admin_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Bearer token the admin API requires (probes and the module download excepted).
    pub admin_token: Option<AdminToken>,
    /// Permit plaintext on non-loopback addresses (warns).
    pub allow_plaintext: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Load(#[from] ReloadError),
    #[error("invalid --wasm-url {url:?}: {reason}")]
    WasmUrl { url: String, reason: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Transport(#[from] transport_security::TransportError),
    #[error("cannot configure TLS on the xDS port: {0}")]
    GrpcTls(String),
}

/// A running control plane. Dropping it does not stop it; call [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    pub control: Arc<ControlPlane>,
    /// The registry as first loaded.
    pub registry: Arc<Registry>,
    pub version: String,
    /// `https` when the admin API has TLS.
    pub admin_scheme: &'static str,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The ready-file fields of the control plane.
    pub fn ready_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "xds": self.xds.to_string(),
            "meshgate_admin": format!("{}://{}", self.admin_scheme, self.admin),
        })
    }

    /// Stops the watcher, the admin API and the ADS server (streams are cut after a grace).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

async fn bind(address: SocketAddr, what: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Io { what: format!("cannot listen on {address} for {what}"), source })
}

/// Loads the registry, binds, spawns. See the module docs.
pub async fn start(options: &StartOptions) -> Result<Running, ServeError> {
    let control = ControlPlane::new();
    let loader = Loader {
        file: options.registry.clone(),
        options: options.wasm.translate_options(&options.native)?,
        control: control.clone(),
    };
    let security = &options.security;
    transport_security::check_plaintext(
        "the xDS and rate-limit port",
        options.xds_listen,
        security.grpc_tls.is_some(),
        security.allow_plaintext,
        "--xds-tls-cert and --xds-tls-key (and --xds-client-ca for mTLS)",
    )?;
    transport_security::check_plaintext(
        "the admin API",
        options.admin_listen,
        security.admin_tls.is_some(),
        security.allow_plaintext,
        "--admin-tls-cert and --admin-tls-key (and --admin-token-file)",
    )?;
    if security.admin_token.is_none() && !options.admin_listen.ip().is_loopback() {
        tracing::warn!(address = %options.admin_listen, "the admin API answers anyone who reaches it: set --admin-token-file");
    }
    // Taken before the first load: an edit made while it runs is picked up by the watcher.
    let loaded_from = reload::fingerprint(&loader.file);
    let loaded = loader.load()?;

    let xds_listener = bind(options.xds_listen, "xDS").await?;
    let admin_listener = bind(options.admin_listen, "the admin API").await?;
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|source| ServeError::Io { what: "cannot read a bound address".to_string(), source })
    };
    let xds = local(&xds_listener)?;
    let admin = local(&admin_listener)?;
    let (shutdown, _) = watch::channel(false);

    let mut tasks = Vec::new();
    // The rate-limit service shares the ADS port: every Envoy already has an HTTP/2 cluster
    // to it (the bootstrap's `meshgate-xds`).
    let metrics = Arc::new(Metrics::default());
    let limiter = RateLimiter::new(control.clone(), metrics.clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.grpc_tls {
        builder = builder.tls_config(tls.server_config()).map_err(|e| ServeError::GrpcTls(e.to_string()))?;
    }
    // Approvals: the filter's check shares the gRPC port (the same TLS and client
    // certificates as ADS); the page is on the admin API.
    let admin_scheme = if security.admin_tls.is_some() { "https" } else { "http" };
    let approvals = crate::approvals::Approvals::new(
        control.clone(),
        format!("{admin_scheme}://{admin}/approvals"),
        security.admin_tls.is_some(),
    );
    let routes = tonic::service::Routes::from(crate::approvals::check_routes(approvals.clone()))
        .add_service(AdsService::server(control.clone()))
        .add_service(RlsService::server(limiter));
    let grpc = builder.http2_keepalive_interval(Some(KEEPALIVE)).add_routes(routes);
    tasks.push(tokio::spawn(crate::approvals::sweep_forever(approvals.clone(), shutdown.subscribe())));
    let mut stop = shutdown.subscribe();
    tasks.push(tokio::spawn(async move {
        let signal = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        if let Err(e) = grpc.serve_with_incoming_shutdown(TcpListenerStream::new(xds_listener), signal).await {
            tracing::error!("xDS server failed: {e}");
        }
    }));

    let wasm = match &options.wasm {
        WasmDelivery::Remote { module, .. } => Some(Arc::new(module.clone())),
        WasmDelivery::Local(_) => None,
    };
    // /catalog: every server's tools, asked of the servers themselves and kept fresh.
    let catalog = Arc::new(crate::discovery::Catalog::default());
    tasks.push(tokio::spawn(crate::discovery::keep_fresh(catalog.clone(), control.clone(), shutdown.subscribe())));
    let app = admin_api::app(AdminState {
        control: control.clone(),
        wasm,
        metrics,
        token: security.admin_token.clone(),
        catalog,
        approvals,
    });
    let mut stop = shutdown.subscribe();
    let admin_tls = security.admin_tls.clone();
    tasks.push(tokio::spawn(async move {
        let signal = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let served = match admin_tls {
            Some(config) => match TlsListener::new(admin_listener, config) {
                Ok(listener) => axum::serve(listener, app).with_graceful_shutdown(signal).await,
                Err(e) => Err(e),
            },
            None => axum::serve(admin_listener, app).with_graceful_shutdown(signal).await,
        };
        if let Err(e) = served {
            tracing::error!("admin API failed: {e}");
        }
    }));

    tasks.push(tokio::spawn(reload::watch(loader, loaded_from, shutdown.subscribe())));

    for warning in loaded.registry.edge.warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        %xds,
        xds_tls = match &security.grpc_tls { Some(t) if t.is_mutual() => "mtls", Some(_) => "tls", None => "plaintext" },
        admin = %format!("{admin_scheme}://{admin}"),
        admin_token = security.admin_token.is_some(),
        version = %loaded.version,
        servers = loaded.registry.servers.len(),
        "control plane ready"
    );
    if let WasmDelivery::Remote { url, module, .. } = &options.wasm {
        tracing::info!(url, sha256 = %module.sha256, path = WASM_PATH, "serving the wasm module");
    }
    Ok(Running {
        xds,
        admin,
        control,
        registry: loaded.registry,
        version: loaded.version,
        admin_scheme,
        shutdown,
        tasks,
    })
}

/// Logging for the long-running commands: `MESHGATE_LOG` (an `EnvFilter` directive,
/// default `info`) to stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
