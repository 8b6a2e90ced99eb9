//! The `meshgate` command line. Parsing and printing only; the work is in the library.
//!
//! Exit codes: 0 success (including `up`/`serve` stopped by SIGINT/SIGTERM); 1 invalid
//! registry or any other error; for `up`, Envoy's own code (or 128 + signal) when it exits
//! by itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::bootstrap::{self, XdsBootstrap};
use crate::control::Api;
use crate::launch::{self, Ended, Signals, UpError, UpOptions};
use crate::locate::Search;
use crate::registry::{Registry, Runtime};
use crate::reload::ReloadError;
use crate::serve::{self, ServeError, StartOptions, WasmDelivery};
use crate::translate::NativeSource;

mod render_command;

/// Default ADS port of `meshgate serve`.
pub const DEFAULT_XDS_LISTEN: &str = "127.0.0.1:18000";
/// Default admin API port of `meshgate serve`.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:18001";

#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about = "MCP governance for Envoy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a registry file; print a summary, or every error as file:line: message.
    Validate {
        /// The registry YAML file.
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
    },
    /// Start the control plane in-process and an Envoy that only points at it; serve the
    /// registry to it live (edits apply without a restart) until SIGINT/SIGTERM.
    Up {
        /// The registry YAML file (watched for changes).
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
        /// Envoy binary [default: $MESHGATE_ENVOY, envoy on $PATH, ./.venv/bin/envoy,
        /// <repo>/.venv/bin/envoy].
        #[arg(long, value_name = "PATH")]
        envoy: Option<PathBuf>,
        /// Meshgate wasm module [default: $MESHGATE_WASM,
        /// <repo>/target/wasm32-wasip1/release/meshgate_wasm.wasm].
        #[arg(long, value_name = "PATH")]
        wasm: Option<PathBuf>,
        /// Meshgate native module, for `filter.runtime: native` (the default) [default:
        /// $MESHGATE_NATIVE, <repo>/target/release/libmeshgate.so]. Built for Envoy 1.40:
        /// `up` refuses another Envoy version.
        #[arg(long, value_name = "PATH")]
        native_module: Option<PathBuf>,
        /// Once ready, write {"listener", "admin", "envoy_pid", "servers", "xds",
        /// "meshgate_admin"} as JSON here (atomically; removed again on exit).
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
        /// Keep the bootstrap and admin address file here instead of a temporary folder.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// ADS variant Envoy speaks.
        #[arg(long, value_enum, default_value_t = XdsApi::Sotw)]
        xds_api: XdsApi,
        /// Where the control plane's ADS port listens [default: 127.0.0.1, any port].
        #[arg(long, value_name = "ADDR:PORT")]
        xds_listen: Option<SocketAddr>,
        /// Where meshgate's admin API listens [default: 127.0.0.1, any port].
        #[arg(long, value_name = "ADDR:PORT")]
        admin_listen: Option<SocketAddr>,
        /// Allow --xds-listen/--admin-listen on a non-loopback address (plaintext; warns).
        #[arg(long)]
        allow_plaintext: bool,
    },
    /// Run the control plane: serve the registry over ADS (state of the world and Delta) to
    /// any number of Envoys, reload it on every edit, answer the admin API.
    Serve {
        /// The registry YAML file (watched for changes).
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
        /// Where the ADS (gRPC) port listens. Port 0 lets the OS pick.
        #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_XDS_LISTEN)]
        xds_listen: SocketAddr,
        /// Where the admin API listens. Port 0 lets the OS pick.
        #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// The wasm module. Without --wasm-url, Envoys load this path on their own host
        /// [default: as for `up`].
        #[arg(long, value_name = "PATH")]
        wasm: Option<PathBuf>,
        /// Serve the module on the admin API and have Envoys fetch it from this URL
        /// (checked against its SHA-256), e.g. http://meshgate:18001/wasm/meshgate.wasm.
        #[arg(long, value_name = "URL")]
        wasm_url: Option<String>,
        /// Where Envoys load the native module (`filter.runtime: native`) from: a path on
        /// each Envoy's host. Without it, Envoys load `libmeshgate.so` by name from
        /// $ENVOY_DYNAMIC_MODULES_SEARCH_PATH (set it in Envoy's environment), then the
        /// system's library paths. The module must be built for Envoy 1.40 and for the
        /// glibc of the Envoy image.
        #[arg(long, value_name = "PATH")]
        native_module: Option<PathBuf>,
        /// Once listening, write {"xds", "meshgate_admin", "version"} as JSON here.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
        #[command(flatten)]
        security: SecurityArgs,
        /// PEM CA bundle Envoys verify an https --wasm-url with [default: the Envoy host's
        /// system bundle, the registry's envoy.system_ca_file].
        #[arg(long, value_name = "FILE", requires = "wasm_url")]
        wasm_url_ca: Option<PathBuf>,
    },
    /// Print an Envoy bootstrap: with --xds-address, one that points at a control plane
    /// (for Envoys anywhere); otherwise the static one for --registry.
    Bootstrap {
        /// The registry YAML file (static bootstrap; with --xds-address only its admin port
        /// is used).
        #[arg(short, long, value_name = "FILE")]
        registry: Option<PathBuf>,
        /// Meshgate wasm module path to put in a static bootstrap (need not exist yet)
        /// [default: as for `up`].
        #[arg(long, value_name = "PATH")]
        wasm: Option<PathBuf>,
        /// Meshgate native module path to put in a static bootstrap, for
        /// `filter.runtime: native` (need not exist yet) [default: as for `up`]. A fleet
        /// bootstrap (--xds-address) names no module: meshgate sends its place by ECDS
        /// (see `serve --native-module`).
        #[arg(long, value_name = "PATH")]
        native_module: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
        /// The static, everything-inline bootstrap (the default without --xds-address).
        #[arg(long = "static", conflicts_with_all = ["xds_address", "node_id"])]
        static_: bool,
        /// meshgate's ADS address as the Envoy reaches it (host:port). Repeat it for each
        /// replica of a highly available control plane (replicas serving the same registry):
        /// Envoy health-checks them, uses a live one, and fails over when it dies.
        #[arg(long, value_name = "HOST:PORT")]
        xds_address: Vec<String>,
        /// The Envoy's node id (unique per Envoy; shown in meshgate's /status).
        #[arg(long, value_name = "ID", requires = "xds_address")]
        node_id: Option<String>,
        /// Envoy's admin port on 127.0.0.1 [default: the registry's admin.port, else 9901].
        #[arg(long, value_name = "PORT")]
        admin_port: Option<u16>,
        /// ADS variant.
        #[arg(long, value_enum, default_value_t = XdsApi::Sotw)]
        xds_api: XdsApi,
        /// Speak TLS to meshgate, verifying its certificate against this PEM CA bundle
        /// (a path on the Envoy host).
        #[arg(long, value_name = "FILE", requires = "xds_address")]
        xds_ca: Option<String>,
        /// Client certificate Envoy presents to meshgate (mTLS; a path on the Envoy host).
        #[arg(long, value_name = "FILE", requires_all = ["xds_ca", "xds_client_key"])]
        xds_client_cert: Option<String>,
        /// Key of --xds-client-cert (a path on the Envoy host).
        #[arg(long, value_name = "FILE", requires = "xds_client_cert")]
        xds_client_key: Option<String>,
        /// Name meshgate's certificate must carry (and SNI) [default: the --xds-address host].
        #[arg(long, value_name = "NAME", requires = "xds_ca")]
        xds_server_name: Option<String>,
    },
    /// Pin tool, resource and prompt definitions: connect to each server (or those named)
    /// with the MCP protocol and write their definitions and hashes into the registry's
    /// lockfile (`pinning.lockfile`, default `<registry stem>.lock.json` beside it). With
    /// --update, accept only the named changes.
    Pin {
        /// The registry YAML file.
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
        /// Accept the current definition of SERVER/NAME (a tool, else a prompt, else a
        /// resource URI), or drop it when the server no longer lists it. Repeatable.
        #[arg(long, value_name = "SERVER/NAME")]
        update: Vec<String>,
        /// Servers to pin whole [default: every server with `pinning`, else every server].
        #[arg(value_name = "SERVER", conflicts_with = "update")]
        servers: Vec<String>,
    },
    /// Print what another control plane needs to run the filter with the registry's policy
    /// (multi-document YAML for `kubectl apply -f -`).
    Render {
        #[command(subcommand)]
        platform: RenderPlatform,
    },
}

/// `meshgate render <platform>`.
#[derive(Debug, Subcommand)]
pub enum RenderPlatform {
    /// An Istio ingress gateway: Gateway, VirtualService and an EnvoyFilter inserting the
    /// wasm filter (fail closed) before the router.
    Istio {
        /// The registry YAML file.
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
        /// Where the gateway's Envoys fetch the wasm module, e.g.
        /// http://meshgate.meshgate.svc.cluster.local:18001/wasm/meshgate.wasm (`meshgate
        /// serve --wasm-url` serves it there).
        #[arg(long, value_name = "URL")]
        wasm_url: String,
        /// SHA-256 (hex) of the module at --wasm-url [default: that of --wasm].
        #[arg(long, value_name = "HEX")]
        wasm_sha256: Option<String>,
        /// The wasm module whose SHA-256 Envoy checks [default: as for `up`].
        #[arg(long, value_name = "PATH", conflicts_with = "wasm_sha256")]
        wasm: Option<PathBuf>,
        /// Namespace of the ingress gateway (and of the rendered resources).
        #[arg(long, value_name = "NS", default_value = "istio-system")]
        namespace: String,
        /// Name of the rendered resources.
        #[arg(long, value_name = "NAME", default_value = "meshgate")]
        name: String,
        /// A label of the ingress gateway's pods (repeat for several).
        #[arg(long, value_name = "KEY=VALUE", default_value = "istio=ingressgateway")]
        selector: Vec<String>,
        /// The Gateway's port for MCP (the gateway Service's port) [default: 443, with
        /// --plaintext 80]. Dedicate it to MCP: the filter answers 404 to paths that are not
        /// /mcp/<server>.
        #[arg(long, value_name = "PORT")]
        port: Option<u16>,
        /// The port the gateway's Envoy listens on for it (the Service's targetPort)
        /// [default: 8443, with --plaintext 8080, as istio-ingressgateway maps them].
        #[arg(long, value_name = "PORT")]
        target_port: Option<u16>,
        /// Host names the Gateway and VirtualService answer (repeat for several).
        #[arg(long, value_name = "HOST", default_value = "*")]
        hosts: Vec<String>,
        /// TLS secret (credentialName) of the Gateway's HTTPS server.
        #[arg(long, value_name = "SECRET", required_unless_present = "plaintext")]
        tls_credential: Option<String>,
        /// Serve MCP over plain HTTP on the gateway (credentials then cross the network in
        /// clear text).
        #[arg(long, conflicts_with = "tls_credential")]
        plaintext: bool,
        /// Namespace of servers whose URL names a Service without one.
        #[arg(long, value_name = "NS", default_value = "default")]
        service_namespace: String,
    },
    /// Envoy Gateway: EnvoyProxy (module allow-listed), Gateway, HTTPRoute and an
    /// EnvoyExtensionPolicy with the native module.
    EnvoyGateway {
        /// The registry YAML file.
        #[arg(short, long, value_name = "FILE")]
        registry: PathBuf,
        /// Namespace of the Gateway (and of the rendered resources).
        #[arg(long, value_name = "NS", default_value = "default")]
        namespace: String,
        /// Name of the rendered resources.
        #[arg(long, value_name = "NAME", default_value = "meshgate")]
        name: String,
        /// The GatewayClass of Envoy Gateway.
        #[arg(long, value_name = "NAME", default_value = "eg")]
        gateway_class: String,
        /// The Gateway listener's port [default: 443, with --plaintext 80].
        #[arg(long, value_name = "PORT")]
        port: Option<u16>,
        /// TLS secret of the Gateway's HTTPS listener.
        #[arg(long, value_name = "SECRET", required_unless_present = "plaintext")]
        tls_secret: Option<String>,
        /// Serve MCP over plain HTTP (credentials then cross the network in clear text).
        #[arg(long, conflicts_with = "tls_secret")]
        plaintext: bool,
        /// The image holding libmeshgate.so (the meshgate image, deploy/docker/Dockerfile).
        #[arg(long, value_name = "IMAGE", default_value = "meshgate:dev")]
        module_image: String,
        /// The Envoy image: the Envoy version the module is built for.
        #[arg(long, value_name = "IMAGE", default_value = "envoyproxy/envoy:v1.40-latest")]
        envoy_image: String,
        /// Folder the module is mounted at in the Envoy container.
        #[arg(long, value_name = "DIR", default_value = "/usr/local/lib/meshgate")]
        module_dir: String,
        /// Namespace of servers whose URL names a Service without one.
        #[arg(long, value_name = "NS", default_value = "default")]
        service_namespace: String,
        /// Secret with the filter's secret environment variables (one key per name).
        #[arg(long, value_name = "SECRET", default_value = "meshgate-filter-secrets")]
        secret_name: String,
    },
}

/// Transport security of `serve`'s ports (see `transport_security`).
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Serve ADS and the rate-limit service over TLS with this PEM certificate chain.
    #[arg(long, value_name = "FILE", requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,
    /// Key of --xds-tls-cert.
    #[arg(long, value_name = "FILE", requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// mTLS: Envoys must present a certificate chaining to this PEM CA bundle.
    #[arg(long, value_name = "FILE", requires = "xds_tls_cert")]
    pub xds_client_ca: Option<PathBuf>,
    /// Serve the admin API over HTTPS with this PEM certificate chain.
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// Key of --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on the admin API (all but /healthz, /readyz
    /// and the module); the file holds the token.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Allow plaintext ADS or admin API on a non-loopback address (warns).
    #[arg(long)]
    pub allow_plaintext: bool,
}

impl SecurityArgs {
    /// Reads and checks every file named.
    pub fn load(&self) -> Result<serve::Security, crate::transport_security::TransportError> {
        use crate::transport_security::{admin_tls, AdminToken, GrpcTls, TlsFiles};
        let grpc_tls = match (&self.xds_tls_cert, &self.xds_tls_key) {
            (Some(cert), Some(key)) => Some(GrpcTls::load(&TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.xds_client_ca.clone(),
            })?),
            _ => None,
        };
        let admin_tls = match (&self.admin_tls_cert, &self.admin_tls_key) {
            (Some(cert), Some(key)) => Some(admin_tls(cert, key)?),
            _ => None,
        };
        let admin_token = self.admin_token_file.as_deref().map(AdminToken::read).transpose()?;
        Ok(serve::Security { grpc_tls, admin_tls, admin_token, allow_plaintext: self.allow_plaintext })
    }
}

/// `--xds-api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdsApi {
    /// State of the world (`api_type: GRPC`).
    Sotw,
    /// Incremental (`api_type: DELTA_GRPC`).
    Delta,
}

impl From<XdsApi> for Api {
    fn from(api: XdsApi) -> Api {
        match api {
            XdsApi::Sotw => Api::Sotw,
            XdsApi::Delta => Api::Delta,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    run(Cli::parse())
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { registry } => validate(registry),
        Command::Pin { registry, update, servers } => {
            pin(crate::pin::PinRequest { registry, servers, updates: update })
        }
        Command::Bootstrap {
            registry,
            wasm,
            native_module,
            format,
            static_,
            xds_address,
            node_id,
            admin_port,
            xds_api,
            xds_ca,
            xds_client_cert,
            xds_client_key,
            xds_server_name,
        } => match (static_, xds_address.is_empty()) {
            (false, false) => print_xds_bootstrap(
                registry,
                &xds_address,
                node_id.unwrap_or_else(|| "envoy".to_string()),
                admin_port,
                xds_api.into(),
                format,
                xds_ca.map(|ca_file| bootstrap::XdsClientTls {
                    ca_file,
                    client_cert: xds_client_cert.zip(xds_client_key),
                    sni: xds_server_name,
                }),
            ),
            (_, _) => match registry {
                Some(registry) => print_bootstrap(registry, wasm, native_module, format),
                None => {
                    eprintln!(
                        "meshgate: bootstrap needs --xds-address HOST:PORT (xDS) or \
                         --registry FILE (static)"
                    );
                    ExitCode::FAILURE
                }
            },
        },
        Command::Up {
            registry,
            envoy,
            wasm,
            native_module,
            ready_file,
            work_dir,
            xds_api,
            xds_listen,
            admin_listen,
            allow_plaintext,
        } => up(UpOptions {
            registry,
            envoy,
            wasm,
            native_module,
            ready_file,
            work_dir,
            api: Some(xds_api.into()),
            xds_listen,
            admin_listen,
            allow_plaintext,
        }),
        Command::Render { platform } => render_command::run(platform),
        Command::Serve {
            registry,
            xds_listen,
            admin_listen,
            wasm,
            wasm_url,
            native_module,
            ready_file,
            security,
            wasm_url_ca,
        } => {
            let native = native_module.map_or(NativeSource::SearchPath, |path| {
                NativeSource::Path(std::path::absolute(&path).unwrap_or(path))
            });
            let security = match security.load() {
                Ok(security) => security,
                Err(e) => {
                    eprintln!("meshgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            serve_command(
                ServeArgs { registry, xds_listen, admin_listen, wasm, wasm_url, wasm_url_ca, native, ready_file },
                security,
            )
        }
    }
}

fn pin(request: crate::pin::PinRequest) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(crate::pin::run(&request)) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate pin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(file: PathBuf) -> ExitCode {
    match Registry::load(&file) {
        Ok(registry) => {
            for warning in registry.edge.warnings() {
                eprintln!("{}: warning: {warning}", file.display());
            }
            println!("{}", registry.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn print_bootstrap(file: PathBuf, wasm: Option<PathBuf>, native: Option<PathBuf>, format: Format) -> ExitCode {
    let registry = match Registry::load(&file) {
        Ok(registry) => registry,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let search = Search::current();
    let modules =
        bootstrap_module(search.wasm_candidate(wasm.as_deref()), registry.runtime == Runtime::Wasm).and_then(|wasm| {
            let native =
                bootstrap_module(search.native_candidate(native.as_deref()), registry.runtime == Runtime::Native)?;
            Ok((wasm, native))
        });
    let (wasm, native) = match modules {
        Ok(modules) => modules,
        Err(e) => {
            eprintln!("meshgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_rendered(bootstrap::static_bootstrap(&registry, &wasm, &native), format)
}

/// A module path for a static bootstrap: it need not exist yet, but the one the registry's
/// runtime loads gets a warning when it does not.
fn bootstrap_module(
    candidate: Result<(PathBuf, String), crate::locate::LocateError>,
    used: bool,
) -> Result<PathBuf, crate::locate::LocateError> {
    let (path, _) = candidate?;
    if used && !path.is_file() {
        eprintln!("meshgate: warning: {} does not exist yet (run `make build`)", path.display());
    }
    Ok(path)
}

/// Prints a rendered bootstrap in `format`, or the error that prevented it.
fn print_rendered(bootstrap: Result<serde_json::Value, bootstrap::BootstrapError>, format: Format) -> ExitCode {
    let text = bootstrap.and_then(|b| match format {
        Format::Json => Ok(bootstrap::to_json(&b)),
        Format::Yaml => bootstrap::to_yaml(&b),
    });
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_xds_bootstrap(
    registry: Option<PathBuf>,
    addresses: &[String],
    node_id: String,
    admin_port: Option<u16>,
    api: Api,
    format: Format,
    tls: Option<bootstrap::XdsClientTls>,
) -> ExitCode {
    let mut parsed = Vec::new();
    for address in addresses {
        match XdsBootstrap::parse_address(address) {
            Ok(endpoint) if parsed.contains(&endpoint) => {
                eprintln!("meshgate: --xds-address: {address:?} is given twice");
                return ExitCode::FAILURE;
            }
            Ok(endpoint) => parsed.push(endpoint),
            Err(e) => {
                eprintln!("meshgate: --xds-address: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut parsed = parsed.into_iter();
    let Some((xds_host, xds_port)) = parsed.next() else {
        eprintln!("meshgate: bootstrap needs --xds-address HOST:PORT");
        return ExitCode::FAILURE;
    };
    let replicas: Vec<(String, u16)> = parsed.collect();
    let registry = match &registry {
        None => None,
        Some(file) => match Registry::load(file) {
            Ok(registry) => Some(registry),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::FAILURE;
            }
        },
    };
    let edge = registry.as_ref().map(|r| r.edge.clone()).unwrap_or_default();
    for warning in edge.warnings() {
        eprintln!("meshgate: warning: {warning}");
    }
    let bootstrap = bootstrap::xds_bootstrap(&XdsBootstrap {
        node_id,
        xds_host,
        xds_port,
        replicas,
        admin_port: admin_port.or(registry.as_ref().map(|r| r.admin_port)).unwrap_or(DEFAULT_ENVOY_ADMIN_PORT),
        admin_address: edge.admin_address,
        stats: edge.stats,
        api,
        tls,
    });
    print_rendered(Ok(bootstrap), format)
}

/// Envoy's conventional admin port, for fleet bootstraps without a registry.
const DEFAULT_ENVOY_ADMIN_PORT: u16 = 9901;

/// The runtime of the long-running commands: two workers (ADS streams, admin API, watcher
/// and Envoy supervision are all light).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
        eprintln!("meshgate: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `serve`'s arguments, parsed.
struct ServeArgs {
    registry: PathBuf,
    xds_listen: SocketAddr,
    admin_listen: SocketAddr,
    wasm: Option<PathBuf>,
    wasm_url: Option<String>,
    wasm_url_ca: Option<PathBuf>,
    native: NativeSource,
    ready_file: Option<PathBuf>,
}

fn serve_command(args: ServeArgs, security: serve::Security) -> ExitCode {
    let ServeArgs { registry, xds_listen, admin_listen, wasm, wasm_url, wasm_url_ca, native, ready_file } = args;
    serve::init_logging();
    let search = Search::current();
    let delivery = match &wasm_url {
        Some(url) => search.wasm(wasm.as_deref()).map_err(|e| e.to_string()).and_then(|path| {
            WasmDelivery::remote(url, &path).and_then(|d| d.with_ca(wasm_url_ca.as_deref())).map_err(|e| e.to_string())
        }),
        None => search
            .wasm_candidate(wasm.as_deref())
            .map(|(path, _)| {
                let path = std::path::absolute(&path).unwrap_or(path);
                if !path.is_file() {
                    eprintln!(
                        "meshgate: note: {} is not on this host; Envoys must have it at that path",
                        path.display()
                    );
                }
                WasmDelivery::Local(path)
            })
            .map_err(|e| e.to_string()),
    };
    let delivery = match delivery {
        Ok(delivery) => delivery,
        Err(e) => {
            eprintln!("meshgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let options = StartOptions { registry, xds_listen, admin_listen, wasm: delivery, native, security };
    runtime.block_on(async move {
        let mut signals = match Signals::new() {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("meshgate: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let running = match serve::start(&options).await {
            Ok(running) => running,
            Err(ServeError::Load(ReloadError::Registry(errors))) => {
                eprintln!("{errors}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("meshgate: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("meshgate: xds listening on {}", running.xds);
        println!("meshgate: admin {}://{}", running.admin_scheme, running.admin);
        if let Some(file) = &ready_file {
            let mut document = running.ready_fields();
            document["version"] = serde_json::json!(running.version);
            if let Err(e) = launch::write_atomically(file, &document.to_string()) {
                eprintln!("meshgate: cannot write ready file {}: {e}", file.display());
                running.stop().await;
                return ExitCode::FAILURE;
            }
        }
        signals.next().await;
        if let Some(file) = &ready_file {
            let _ = std::fs::remove_file(file);
        }
        running.stop().await;
        eprintln!("meshgate: stopped");
        ExitCode::SUCCESS
    })
}

fn up(options: UpOptions) -> ExitCode {
    serve::init_logging();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(launch::up(&options)) {
        Ok(Ended::Stopped) => {
            eprintln!("meshgate: envoy stopped");
            ExitCode::SUCCESS
        }
        Ok(Ended::Exited(status)) => {
            eprintln!("meshgate: envoy exited unexpectedly ({status})");
            ExitCode::from(launch::exit_code(status))
        }
        Err(UpError::Registry(errors)) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("meshgate: {e}");
            ExitCode::FAILURE
        }
    }
}
