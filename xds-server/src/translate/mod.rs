//! Registry → Envoy xDS resources: pure, typed (`envoy-types` protos), no I/O.
//!
//! Small builders, one per resource kind, feeding one [`translate`]:
//!
//! | builder | resource | xDS type |
//! |---|---|---|
//! | [`cluster::make_cluster`] | one `Cluster` per server (`mcp-<name>`) | CDS |
//! | [`route::make_route_config`] | the `RouteConfiguration` `meshgate` (MCP routes + RFC 9728 answers) | RDS |
//! | [`listener::make_listener`] | the `Listener` `meshgate` (HCM → wasm via ECDS → credentials → router) | LDS |
//! | [`filter::make_filter_config`] | the `TypedExtensionConfig` `meshgate.wasm`: the wasm or the native filter (policy = filter config) | ECDS |
//! | [`filter::make_credential_secret`] | a generic `Secret` per server with `credentials` | SDS |
//! | [`token_exchange`] | per server with `credentials.exchange`: its token endpoint's cluster (Envoy injects the client authentication) and that secret | CDS, SDS |
//! | [`ratelimit`] | the `ratelimit` filter and per-route descriptors for `scope: global` quotas | LDS, RDS |
//! | [`cors`] | the CORS filter and per-route CORS policies, when the registry opts in | LDS, RDS |
//! | [`edge`] | listener TLS/mTLS (certificates as SDS secrets), client-certificate forwarding, client address | LDS, SDS |
//! | [`local_reply`] | Envoy's own answers (failed filter VM, rate-limit service down) as JSON-RPC errors | LDS |
//!
//! Why this split: a policy edit changes only the ECDS resource; adding or removing a server
//! changes CDS, RDS and ECDS (the filter's server list) but never the listener, so Envoy
//! keeps its listening socket and open connections. Upstream credentials travel only as SDS
//! secrets (Envoy redacts them in `/config_dump`); routes reference them by name through a
//! per-route `filter_chain` holding a `credential_injector`.
//!
//! Choices that matter for MCP (see `REFERENCE.md`): exact-path routes, the server's
//! timeout (0 s = none) plus an idle timeout, no retry policy (a `tools/call` is not
//! idempotent), `Host` rewritten to the upstream's (the filter checks the client's Host and
//! Origin first, see `meshgate_core::origin`), buffer limits above the filter's, a wasm VM
//! that fails is reloaded for the next request (`FAIL_RELOAD`).

pub mod cluster;
pub mod cors;
pub mod edge;
pub mod filter;
pub mod listener;
pub mod local_reply;
pub mod observability;
pub mod ratelimit;
pub mod route;
pub mod token_exchange;
pub mod virtual_route;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration};
use meshgate_core::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES};
use prost::{Message, Name};

use crate::registry::{Registry, Server};

/// Name of the one listener (the readiness check looks it up by this name).
pub const LISTENER_NAME: &str = "meshgate";
/// Name of the one route configuration (RDS).
pub const ROUTE_CONFIG_NAME: &str = "meshgate";
/// `root_id` / `vm_id` / plugin name of the Meshgate wasm filter.
pub const WASM_PLUGIN_NAME: &str = "meshgate";
/// The Meshgate `HttpFilter` and its ECDS resource (they must share the name). It keeps its
/// first name whichever build runs ([`FILTER_NAME`]): a switch between builds is then one
/// ECDS update, and an upgrade does not re-create the listener.
pub const WASM_FILTER_NAME: &str = "meshgate.wasm";
/// [`WASM_FILTER_NAME`], by what it names: the filter, wasm or native.
pub const FILTER_NAME: &str = WASM_FILTER_NAME;
/// The name Envoy loads the native module by (`libmeshgate.so`), and its `filter_name`.
pub const NATIVE_MODULE_NAME: &str = "meshgate";
/// The `filter_chain` `HttpFilter` whose per-route chains inject upstream credentials.
pub const CREDENTIALS_FILTER_NAME: &str = "meshgate.credentials";
/// Cluster Envoy fetches a remote wasm module through.
pub const WASM_SOURCE_CLUSTER: &str = "meshgate-wasm-source";
/// Idle timeout of an MCP stream (no bytes either way), per route and per HCM stream.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Head-room above the filter's largest body limit (headers, framing).
pub const BUFFER_HEADROOM_BYTES: u64 = 64 * 1024;

/// xDS type URLs meshgate serves, in the order a new snapshot is pushed (make before break:
/// what a resource references is sent before it).
pub mod type_url {
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

    /// Every type, in push order.
    pub const ALL: [&str; 5] = [SECRET, CLUSTER, EXTENSION_CONFIG, LISTENER, ROUTE];

    /// Short name for logs and the admin API.
    pub fn short(type_url: &str) -> &str {
        match type_url {
            SECRET => "secrets",
            CLUSTER => "clusters",
            EXTENSION_CONFIG => "extension_configs",
            LISTENER => "listeners",
            ROUTE => "routes",
            other => other.rsplit('.').next().unwrap_or(other),
        }
    }
}

/// Where Envoy gets the wasm module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmSource {
    /// A file on the Envoy host (same machine, or a shared volume).
    Local { path: PathBuf },
    /// Fetched over HTTP (typically meshgate's own admin API) and checked against `sha256`.
    Remote(RemoteWasm),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWasm {
    /// `http://host:port/path`.
    pub url: String,
    /// `host` and `port` of `url`, for the fetch cluster.
    pub host: String,
    pub port: u16,
    /// Lower-case hex SHA-256 of the module.
    pub sha256: String,
    /// `Some` for an `https` URL: Envoy verifies meshgate's certificate for `host`.
    pub tls: Option<RemoteWasmTls>,
}

/// How Envoy verifies an `https` module URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWasmTls {
    /// PEM CA bundle; `None`: the Envoy host's system bundle (`envoy.system_ca_file`).
    pub ca_pem: Option<String>,
}

/// Where Envoy gets the native module (`filter.runtime: native`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NativeSource {
    /// This file on the Envoy host (`module.local.filename`).
    Path(PathBuf),
    /// By name: `libmeshgate.so` in `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (default: Envoy's
    /// working folder), then the system's library paths.
    #[default]
    SearchPath,
}

/// What translation needs besides the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    pub wasm: WasmSource,
    pub native: NativeSource,
}

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("cannot serialize the filter configuration: {0}")]
    FilterConfig(#[from] serde_json::Error),
}

/// Every resource of one registry, typed. Its `Debug` names resources but never prints
/// their content (secrets are among them).
#[derive(Clone, Default, PartialEq)]
pub struct Resources {
    pub secrets: Vec<Secret>,
    pub clusters: Vec<Cluster>,
    pub extension_configs: Vec<TypedExtensionConfig>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |v: Vec<&str>| v.join(", ");
        f.debug_struct("Resources")
            .field("secrets", &names(self.secrets.iter().map(|s| s.name.as_str()).collect()))
            .field("clusters", &names(self.clusters.iter().map(|c| c.name.as_str()).collect()))
            .field("extension_configs", &names(self.extension_configs.iter().map(|c| c.name.as_str()).collect()))
            .field("listeners", &names(self.listeners.iter().map(|l| l.name.as_str()).collect()))
            .field("routes", &names(self.routes.iter().map(|r| r.name.as_str()).collect()))
            .finish()
    }
}

/// A resource ready to send: name, content hash and the packed message.
#[derive(Clone, PartialEq)]
pub struct Packed {
    pub name: String,
    /// Lower-case hex SHA-256 of `any.value`, truncated: the per-resource version (Delta xDS).
    pub version: String,
    pub any: Any,
}

impl fmt::Debug for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packed")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("type_url", &self.any.type_url)
            .finish()
    }
}

impl Resources {
    /// Packs every resource as `(type_url, resources in name order)`, in push order.
    pub fn pack(&self) -> Vec<(&'static str, Vec<Packed>)> {
        fn packed<T: Message + Name>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<Packed> {
            let mut out: Vec<Packed> = items
                .iter()
                .map(|item| {
                    let any = pack(item);
                    Packed { name: name(item).to_string(), version: content_hash(&any.value), any }
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out
        }
        vec![
            (type_url::SECRET, packed(&self.secrets, |s| &s.name)),
            (type_url::CLUSTER, packed(&self.clusters, |c| &c.name)),
            (type_url::EXTENSION_CONFIG, packed(&self.extension_configs, |c| &c.name)),
            (type_url::LISTENER, packed(&self.listeners, |l| &l.name)),
            (type_url::ROUTE, packed(&self.routes, |r| &r.name)),
        ]
    }
}

/// The whole registry as xDS resources.
pub fn translate(registry: &Registry, options: &TranslateOptions) -> Result<Resources, TranslateError> {
    let mut clusters: Vec<Cluster> =
        registry.servers.iter().map(|server| cluster::make_cluster(registry, server)).collect();
    if let WasmSource::Remote(remote) = &options.wasm {
        clusters.push(cluster::make_wasm_source_cluster(remote, &registry.envoy.system_ca_file));
    }
    clusters.extend(observability::collector_cluster(registry));
    clusters.extend(registry.servers.iter().filter_map(|server| token_exchange::make_token_cluster(registry, server)));
    let secrets = registry
        .servers
        .iter()
        .filter_map(filter::make_credential_secret)
        .chain(registry.servers.iter().filter_map(token_exchange::make_token_client_secret))
        .chain(edge::listener_secrets(registry))
        .collect();
    Ok(Resources {
        secrets,
        clusters,
        extension_configs: vec![filter::make_filter_config(registry, options)?],
        listeners: vec![listener::make_listener(registry)],
        routes: vec![route::make_route_config(registry)],
    })
}

/// Packs `message` into an `Any` with its canonical type URL.
pub fn pack<T: Message + Name>(message: &T) -> Any {
    Any { type_url: T::type_url(), value: message.encode_to_vec() }
}

/// Hex SHA-256 of `bytes`, first 16 characters: versions are opaque to Envoy and only need
/// to change when the content does.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let mut text = hex::encode(digest);
    text.truncate(16);
    text
}

/// A `google.protobuf.Duration`.
pub fn proto_duration(d: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Envoy's JSON form of a `google.protobuf.Duration` (`"300s"`, `"0.250s"`).
pub fn envoy_duration(d: Duration) -> String {
    let millis = d.subsec_millis();
    if millis == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{millis:03}s", d.as_secs())
    }
}

/// "Over the ADS stream this Envoy already has", for every xDS reference.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Name of the cluster of a server.
pub fn cluster_name(server: &Server) -> String {
    format!("mcp-{}", server.name)
}

/// Name of the SDS secret holding a server's upstream credential.
pub fn credential_secret_name(server: &Server) -> String {
    format!("meshgate-credential-{}", server.name)
}

/// Name of the cluster of a server's token endpoint (`credentials.exchange`).
pub fn token_cluster_name(server: &Server) -> String {
    format!("meshgate-token-{}", server.name)
}

/// Name of the SDS secret holding a server's token-exchange client authentication.
pub fn token_client_secret_name(server: &Server) -> String {
    format!("meshgate-token-client-{}", server.name)
}

/// `per_connection_buffer_limit_bytes` for the listener and clusters.
pub fn buffer_limit_bytes(registry: &Registry) -> u64 {
    let limits = &registry.filter.limits;
    let request = limits.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
    let response = limits.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
    // Per-server and per-tool overrides may raise either limit: the buffer must hold the largest.
    let overrides = registry.filter.server_limits.values().flat_map(|s| {
        let own = [s.max_request_bytes, s.max_response_bytes];
        let tools = s.tools.values().flat_map(|t| [t.max_request_bytes, t.max_response_bytes]);
        own.into_iter().chain(tools).flatten()
    });
    overrides.fold(request.max(response), u64::max).saturating_add(BUFFER_HEADROOM_BYTES)
}

/// [`buffer_limit_bytes`] as the `UInt32Value` Envoy wants (saturating).
fn buffer_limit_u32(registry: &Registry) -> u32 {
    u32::try_from(buffer_limit_bytes(registry)).unwrap_or(u32::MAX)
}
