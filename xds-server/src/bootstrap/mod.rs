//! Envoy bootstraps, pure (options → JSON value); the caller decides where they go.
//!
//! - [`xds_bootstrap`]: what `meshgate up` runs and `meshgate bootstrap --xds-address`
//!   prints for a fleet: a node identity, loopback admin, and one static cluster pointing
//!   at meshgate's ADS port. Everything else (listener, routes, clusters, the wasm filter
//!   and its policy, upstream credentials) arrives over ADS and changes live.
//! - [`static_bootstrap`]: the older everything-inline form (`meshgate bootstrap
//!   --registry FILE`), for running Envoy without a control plane.
//!
//! Admin listens on loopback unless the registry's `admin.address` says otherwise (an
//! explicit opt-in that `validate` and the logs warn about): it can dump the whole
//! configuration and stop Envoy. The registry's `stats` adds a separate static listener that
//! serves only `GET /stats/prometheus` and `GET /ready` by routing them to the admin (as
//! Istio's 15090 and 15021), so scrapers and probes never reach the admin itself
//! ([`stats_listener`]). With [`XdsClientTls`] the `meshgate-xds` cluster speaks TLS (mTLS
//! with a client certificate) to meshgate; the rate-limit service shares that cluster.
//! Both are written as JSON (which Envoy reads as YAML's subset) or rendered as YAML.

mod stats;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

pub(crate) mod static_resources;

use crate::control::Api;
use crate::registry::Registry;
use crate::translate::envoy_duration;
use static_resources::{make_cluster, make_listener};

/// The bootstrap cluster that reaches meshgate's ADS port.
pub const XDS_CLUSTER: &str = "meshgate-xds";
/// The node cluster every meshgate-managed Envoy reports.
pub const NODE_CLUSTER: &str = "meshgate";
/// Reconnect backoff to the control plane: short, so a restarted meshgate is found fast.
pub const XDS_RETRY_BASE: Duration = Duration::from_millis(250);
pub const XDS_RETRY_MAX: Duration = Duration::from_secs(2);

const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_PROTOCOL_OPTIONS_TYPE: &str = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Cluster the stats listener routes to: Envoy's own admin.
pub const ADMIN_CLUSTER: &str = "meshgate-envoy-admin";
/// Name of the stats/readiness listener.
pub const STATS_LISTENER: &str = "meshgate-stats";
/// The admin paths the stats listener serves (exact, GET only).
pub const STATS_PATHS: [&str; 2] = ["/stats/prometheus", "/ready"];

/// How the `meshgate-xds` cluster authenticates meshgate (and itself): files on the Envoy host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsClientTls {
    /// PEM CA bundle meshgate's certificate must chain to.
    pub ca_file: String,
    /// Client certificate and key, for an mTLS control plane.
    pub client_cert: Option<(String, String)>,
    /// Server name to send and verify (default: the xDS host when it is a name).
    pub sni: Option<String>,
}

/// Where an Envoy finds meshgate, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsBootstrap {
    /// `node.id`: names the Envoy in meshgate's `/status`. Unique per Envoy.
    pub node_id: String,
    /// Host name or IP address of meshgate's ADS port.
    pub xds_host: String,
    pub xds_port: u16,
    /// Further meshgate replicas serving the same registry (host, port): the `meshgate-xds`
    /// cluster holds all of them, health-checks them, and Envoy's ADS stream (and the
    /// rate-limit calls) go to a live one; when the replica it uses dies, Envoy reconnects
    /// to another. Replicas of one registry publish identical versions (content hashes),
    /// so failing over resends nothing that changed.
    pub replicas: Vec<(String, u16)>,
    /// Envoy's admin port (0 = any).
    pub admin_port: u16,
    /// Envoy's admin address (the registry's `admin.address`, default 127.0.0.1).
    pub admin_address: std::net::IpAddr,
    /// The stats/readiness listener (`stats`), when configured.
    pub stats: Option<std::net::SocketAddr>,
    pub api: Api,
    /// TLS to meshgate; `None` = plaintext.
    pub tls: Option<XdsClientTls>,
}

impl XdsBootstrap {
    /// Parses `host:port` (`[v6]:port` for IPv6) for [`XdsBootstrap::xds_host`]/`xds_port`.
    pub fn parse_address(address: &str) -> Result<(String, u16), String> {
        let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("{address:?} is not host:port"))?;
        let port: u16 =
            port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{address:?} has no valid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let valid = !host.is_empty()
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid {
            return Err(format!("{address:?} has no valid host"));
        }
        Ok((host.to_string(), port))
    }
}

/// A bootstrap that only points at meshgate (see the module docs).
pub fn xds_bootstrap(options: &XdsBootstrap) -> Value {
    let all_ip = xds_endpoints(options).iter().all(|(h, _)| h.parse::<std::net::IpAddr>().is_ok());
    let api_type = match options.api {
        Api::Sotw => "GRPC",
        Api::Delta => "DELTA_GRPC",
    };
    let ads = json!({ "ads": {}, "resource_api_version": "V3" });
    let mut xds_cluster = xds_cluster(options, all_ip);
    if let Some(tls) = &options.tls {
        xds_cluster["transport_socket"] = xds_transport_socket(tls, options);
    }
    let mut static_resources = json!({ "clusters": [xds_cluster] });
    if let Some(stats) = options.stats {
        static_resources["clusters"] =
            json!([static_resources["clusters"][0].take(), admin_cluster(options.admin_address, options.admin_port)]);
        static_resources["listeners"] = json!([stats_listener(stats)]);
    }
    json!({
        "node": { "id": options.node_id, "cluster": NODE_CLUSTER },
        "admin": admin(options.admin_address, options.admin_port),
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    "envoy_grpc": {
                        "cluster_name": XDS_CLUSTER,
                        "retry_policy": {
                            "retry_back_off": {
                                "base_interval": envoy_duration(XDS_RETRY_BASE),
                                "max_interval": envoy_duration(XDS_RETRY_MAX),
                            }
                        }
                    }
                }]
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": static_resources,
        "overload_manager": overload_manager(),
        "stats_config": stats::stats_config(),
        "layered_runtime": stats::layered_runtime(),
    })
}

fn admin(address: std::net::IpAddr, port: u16) -> Value {
    json!({ "address": { "socket_address": { "address": address.to_string(), "port_value": port } } })
}

/// Every meshgate address the Envoy may use: `xds_host:xds_port` first, then the replicas.
fn xds_endpoints(options: &XdsBootstrap) -> Vec<(&str, u16)> {
    std::iter::once((options.xds_host.as_str(), options.xds_port))
        .chain(options.replicas.iter().map(|(h, p)| (h.as_str(), *p)))
        .collect()
}

/// How often the replicas of an HA control plane are probed (TCP connect), and how long
/// one probe may take: a dead replica is out of rotation within about a second.
const XDS_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `meshgate-xds`: meshgate's gRPC port (ADS and the rate-limit service), HTTP/2. With
/// several replicas: STATIC (all IPs) or STRICT_DNS, round robin over the healthy ones,
/// each probed by a TCP health check.
fn xds_cluster(options: &XdsBootstrap, all_ip: bool) -> Value {
    let endpoints = xds_endpoints(options);
    let several = endpoints.len() > 1;
    let kind = match (all_ip, several) {
        (true, _) => "STATIC",
        (false, false) => "LOGICAL_DNS",
        (false, true) => "STRICT_DNS",
    };
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(host, port)| {
            json!({ "endpoint": { "address": { "socket_address": { "address": host, "port_value": port } } } })
        })
        .collect();
    let mut cluster = json!({
                "name": XDS_CLUSTER,
                "type": kind,
                "connect_timeout": "1s",
                "dns_lookup_family": "V4_PREFERRED",
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{ "lb_endpoints": lb_endpoints }]
                },
                // gRPC needs HTTP/2; without it Envoy never connects, silently.
                "typed_extension_protocol_options": {
                    HTTP_PROTOCOL_OPTIONS_KEY: {
                        "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                        "explicit_http_config": {
                            "http2_protocol_options": {
                                "connection_keepalive": { "interval": "15s", "timeout": "5s" }
                            }
                        }
                    }
                }
    });
    if several {
        let interval = envoy_duration(XDS_HEALTH_CHECK_INTERVAL);
        cluster["health_checks"] = json!([{
            "timeout": interval,
            "interval": interval,
            "no_traffic_interval": interval,
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "tcp_health_check": {},
        }]);
    }
    cluster
}

/// TLS towards meshgate: its certificate must chain to `ca_file` and name the xDS host (or
/// `sni`); with a client certificate, Envoy presents it (meshgate's `--xds-client-ca`).
///
/// With several replicas and no `sni`, a certificate naming any one of the addresses is
/// accepted (each replica's certificate names its own), and SNI is sent only when they
/// share one host name.
fn xds_transport_socket(tls: &XdsClientTls, options: &XdsBootstrap) -> Value {
    let is_ip = |host: &str| host.parse::<std::net::IpAddr>().is_ok();
    let san = |host: &str, ip: bool| json!({ "san_type": if ip { "IP_ADDRESS" } else { "DNS" }, "matcher": { "exact": host } });
    let hosts: Vec<&str> = xds_endpoints(options).into_iter().map(|(h, _)| h).collect();
    let (sans, sni): (Vec<Value>, Option<String>) = match &tls.sni {
        Some(name) => (vec![san(name, false)], Some(name.clone())),
        None => {
            let mut distinct: Vec<&str> = Vec::new();
            for host in hosts {
                if !distinct.contains(&host) {
                    distinct.push(host);
                }
            }
            let sans = distinct.iter().map(|h| san(h, is_ip(h))).collect();
            let sni = match distinct.as_slice() {
                [only] if !is_ip(only) => Some(only.to_string()),
                _ => None,
            };
            (sans, sni)
        }
    };
    let mut common = json!({
        "validation_context": {
            "trusted_ca": { "filename": tls.ca_file },
            "match_typed_subject_alt_names": sans,
        },
        // gRPC: HTTP/2 over TLS.
        "alpn_protocols": ["h2"],
    });
    if let Some((cert, key)) = &tls.client_cert {
        common["tls_certificates"] = json!([{
            "certificate_chain": { "filename": cert },
            "private_key": { "filename": key },
        }]);
    }
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    });
    if let Some(name) = sni {
        context["sni"] = json!(name);
    }
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": context })
}

/// A static cluster to Envoy's own admin (loopback when the admin listens on any address).
fn admin_cluster(address: std::net::IpAddr, port: u16) -> Value {
    let target = if address.is_unspecified() {
        match address {
            std::net::IpAddr::V4(_) => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(_) => "::1".to_string(),
        }
    } else {
        address.to_string()
    };
    json!({
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": target, "port_value": port }
            } } }] }]
        }
    })
}

/// The stats/readiness listener: `GET /stats/prometheus` and `GET /ready`, routed to the
/// admin; anything else is a 404 from this listener (the admin's other paths stay unreachable).
pub fn stats_listener(address: std::net::SocketAddr) -> Value {
    let routes: Vec<Value> = STATS_PATHS
        .iter()
        .map(|path| {
            json!({
                "match": {
                    "path": path,
                    "headers": [{ "name": ":method", "string_match": { "exact": "GET" } }],
                },
                "route": { "cluster": ADMIN_CLUSTER, "timeout": "5s" },
            })
        })
        .collect();
    json!({
        "name": STATS_LISTENER,
        "address": { "socket_address": { "address": address.ip().to_string(), "port_value": address.port() } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "meshgate_stats",
                "codec_type": "AUTO",
                "route_config": {
                    "name": STATS_LISTENER,
                    "virtual_hosts": [{ "name": STATS_LISTENER, "domains": ["*"], "routes": routes }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                }],
            }
        }] }],
    })
}

fn overload_manager() -> Value {
    // A cap on downstream connections: without one Envoy warns at every start, and a
    // gateway should not accept unbounded connections anyway.
    json!({
        "resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": DOWNSTREAM_CONNECTIONS_TYPE,
                "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
            }
        }]
    })
}

/// Envoy-wide cap on open downstream connections.
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;

const DOWNSTREAM_CONNECTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot serialize the filter configuration: {0}")]
    FilterConfig(#[from] serde_json::Error),
    #[error(
        "server {server:?} uses {} which only the control plane renders: \
         use `meshgate up` or `meshgate serve` (the static bootstrap has url and timeout only)",
        .keys.join(", ")
    )]
    NeedsControlPlane { server: String, keys: Vec<&'static str> },
    #[error(
        "listener.{key} is only rendered by the control plane: use `meshgate up` or `meshgate serve` \
         (the static bootstrap has no CORS filter)"
    )]
    ListenerNeedsControlPlane { key: &'static str },
    #[error("cannot render the bootstrap as YAML: {0}")]
    Yaml(String),
    #[error(
        "quota {rule:?} has scope: global, which needs meshgate's rate-limit service: \
         use `meshgate up` or `meshgate serve` (the static bootstrap has no control plane)"
    )]
    NeedsRateLimitService { rule: String },
}

/// The complete static bootstrap for `registry`, loading the filter from `native` or
/// `wasm` (the registry's `filter.runtime`).
pub fn static_bootstrap(registry: &Registry, wasm: &Path, native: &Path) -> Result<Value, BootstrapError> {
    if let Some(server) = registry.servers.iter().find(|s| !s.control_plane_keys.is_empty()) {
        return Err(BootstrapError::NeedsControlPlane {
            server: server.name.clone(),
            keys: server.control_plane_keys.clone(),
        });
    }
    if registry.cors.is_some() {
        return Err(BootstrapError::ListenerNeedsControlPlane { key: "cors" });
    }
    // Certificates travel by SDS (live rotation), and mTLS identity comes with them.
    if registry.edge.tls.is_some() {
        return Err(BootstrapError::ListenerNeedsControlPlane { key: "tls" });
    }
    // Global counters live in meshgate: without a control plane there is nobody to ask.
    if let Some(rule) = registry.global_rules.first() {
        return Err(BootstrapError::NeedsRateLimitService { rule: rule.name.clone() });
    }
    let mut clusters: Vec<Value> = registry.servers.iter().map(|server| make_cluster(registry, server)).collect();
    let mut listeners = vec![make_listener(registry, wasm, native)?];
    if let Some(stats) = registry.edge.stats {
        clusters.push(admin_cluster(registry.edge.admin_address, registry.admin_port));
        listeners.push(stats_listener(stats));
    }
    Ok(json!({
        "node": { "id": "meshgate", "cluster": "meshgate" },
        "admin": admin(registry.edge.admin_address, registry.admin_port),
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
        },
        "overload_manager": overload_manager(),
        "stats_config": stats::stats_config(),
        "layered_runtime": stats::layered_runtime(),
    }))
}

/// Pretty JSON, newline-terminated.
pub fn to_json(bootstrap: &Value) -> String {
    let mut text = serde_json::to_string_pretty(bootstrap).unwrap_or_else(|_| bootstrap.to_string());
    text.push('\n');
    text
}

/// YAML, for people to read.
pub fn to_yaml(bootstrap: &Value) -> Result<String, BootstrapError> {
    serde_saphyr::to_string(bootstrap).map_err(|e| BootstrapError::Yaml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::registry;
    use std::collections::BTreeSet;

    const REGISTRY: &str = "\
listener: { address: 127.0.0.1, port: 10000 }
admin: { port: 9901 }
servers:
  - name: crm
    url: http://127.0.0.1:9101/mcp
    timeout: 300s
  - name: docs
    url: http://localhost:9102/
limits: { max_request_bytes: 2000000 }
filter: { runtime: wasm }
";

    fn bootstrap() -> Value {
        let registry = registry(REGISTRY);
        static_bootstrap(&registry, Path::new("/opt/meshgate.wasm"), Path::new("/opt/libmeshgate.so"))
            .expect("bootstrap")
    }

    #[test]
    fn native_filter_carries_the_filter_config_and_names_its_module() {
        let registry = registry(&REGISTRY.replace("runtime: wasm", "runtime: native"));
        let b = static_bootstrap(&registry, Path::new("/m.wasm"), Path::new("/opt/libmeshgate.so")).expect("bootstrap");
        let filter = &hcm(&b)["http_filters"][0];
        assert_eq!(filter["name"], crate::translate::FILTER_NAME);
        let config = &filter["typed_config"];
        assert_eq!(config["dynamic_module_config"]["module"]["local"]["filename"], "/opt/libmeshgate.so");
        assert_eq!(config["dynamic_module_config"]["do_not_close"], true);
        assert_eq!(config["filter_name"], "meshgate");
        let text = config["filter_config"]["value"].as_str().expect("a string");
        let parsed: meshgate_core::config::RawFilterConfig = serde_json::from_str(text).expect("the filter's config");
        assert_eq!(parsed.servers, ["crm", "docs"]);
        assert_eq!(b["layered_runtime"]["layers"][0]["static_layer"][stats::STRIP_CUSTOM_STAT_PREFIX], true);
    }

    fn hcm(b: &Value) -> &Value {
        &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn admin_is_loopback_only() {
        let b = bootstrap();
        assert_eq!(b["admin"]["address"]["socket_address"]["address"], "127.0.0.1");
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 9901);
    }

    #[test]
    fn listener_shape() {
        let b = bootstrap();
        let listener = &b["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 10000);
        // max(2_000_000, default 8 MiB response) + 64 KiB
        assert_eq!(listener["per_connection_buffer_limit_bytes"], 8 * 1024 * 1024 + 65536);
        let hcm = hcm(&b);
        assert_eq!(hcm["codec_type"], "AUTO");
        assert_eq!(hcm["stream_idle_timeout"], "300s");
        assert_eq!(hcm["request_timeout"], "0s");
        let filters = hcm["http_filters"].as_array().map(Vec::len);
        assert_eq!(filters, Some(2));
        assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.router");
    }

    #[test]
    fn wasm_filter_carries_the_filter_config() {
        let b = bootstrap();
        let config = &hcm(&b)["http_filters"][0]["typed_config"]["config"];
        assert_eq!(config["root_id"], "meshgate");
        assert_eq!(config["allow_on_headers_stop_iteration"], true);
        // A failed VM fails its request (fail closed) and is reloaded for the next one.
        assert_eq!(config["failure_policy"], "FAIL_RELOAD");
        assert_eq!(config["reload_config"]["backoff"]["base_interval"], "0.100s");
        let mapper = &hcm(&b)["local_reply_config"]["mappers"][0];
        assert_eq!(mapper["status_code"], 503);
        let body: serde_json::Value = serde_json::from_str(
            mapper["body_format_override"]["text_format_source"]["inline_string"].as_str().expect("body"),
        )
        .expect("json");
        assert_eq!(body["error"]["code"], meshgate_core::jsonrpc::code::INTERNAL_ERROR);
        assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(config["vm_config"]["code"]["local"]["filename"], "/opt/meshgate.wasm");
        assert!(config["vm_config"].get("environment_variables").is_none());
        let text = config["configuration"]["value"].as_str().expect("a string");
        let filter: meshgate_core::config::RawFilterConfig =
            serde_json::from_str(text).expect("the filter's own config type");
        assert_eq!(filter.servers, ["crm", "docs"]);
        assert_eq!(filter.limits.max_request_bytes, Some(2_000_000));
    }

    #[test]
    fn routes_match_exact_paths_and_rewrite_to_the_upstream() {
        let b = bootstrap();
        let routes = &hcm(&b)["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["match"], json!({ "path": "/mcp/crm" }));
        assert_eq!(routes[0]["route"]["prefix_rewrite"], "/mcp");
        assert_eq!(routes[0]["route"]["host_rewrite_literal"], "127.0.0.1:9101");
        assert_eq!(routes[0]["route"]["timeout"], "300s");
        assert_eq!(routes[0]["route"]["idle_timeout"], "300s");
        assert!(routes[0]["route"].get("retry_policy").is_none());
        assert_eq!(routes[1]["match"], json!({ "path": "/mcp/docs" }));
        assert_eq!(routes[1]["route"]["prefix_rewrite"], "/");
        assert_eq!(routes[1]["route"]["host_rewrite_literal"], "localhost:9102");
        assert_eq!(routes[1]["route"]["timeout"], "0s");
    }

    #[test]
    fn clusters_follow_the_upstream_host_kind() {
        let b = bootstrap();
        let clusters = &b["static_resources"]["clusters"];
        assert_eq!(clusters[0]["name"], "mcp-crm");
        assert_eq!(clusters[0]["type"], "STATIC");
        assert_eq!(clusters[0]["connect_timeout"], "5s");
        assert_eq!(clusters[1]["type"], "LOGICAL_DNS");
        assert_eq!(
            clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({ "address": "localhost", "port_value": 9102 })
        );
    }

    #[test]
    fn every_route_points_at_a_cluster() {
        let b = bootstrap();
        let clusters: BTreeSet<&str> = b["static_resources"]["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let routes = hcm(&b)["route_config"]["virtual_hosts"][0]["routes"].as_array().cloned().unwrap_or_default();
        assert_eq!(routes.len(), 2);
        for route in routes {
            let cluster = route["route"]["cluster"].as_str().unwrap_or_default();
            assert!(clusters.contains(cluster), "{cluster}");
        }
    }

    #[test]
    fn hs256_secret_names_become_vm_environment_keys() {
        let registry = registry(
            "listener: { port: 0 }\nservers: [{ name: a, url: 'http://127.0.0.1:1/' }]\n\
             auth:\n  jwt:\n    - { issuer: x, audiences: [y], hs256_secret_env: TEST_SECRET }\n\
             filter: { runtime: wasm }\n",
        );
        let b = static_bootstrap(&registry, Path::new("/m.wasm"), Path::new("/m.so")).expect("bootstrap");
        let config = &hcm(&b)["http_filters"][0]["typed_config"]["config"];
        assert_eq!(config["vm_config"]["environment_variables"]["host_env_keys"], json!(["TEST_SECRET"]));
        let text = config["configuration"]["value"].as_str().expect("a string");
        assert!(!text.contains("s3cret"), "the secret value must never be in the config");
    }

    #[test]
    fn cors_needs_the_control_plane() {
        let listener = registry(&REGISTRY.replace(
            "listener: { address: 127.0.0.1, port: 10000 }",
            "listener: { address: 127.0.0.1, port: 10000, cors: { allow_origins: ['https://a.example.com'] } }",
        ));
        let e = static_bootstrap(&listener, Path::new("/w.wasm"), Path::new("/w.so")).expect_err("refused");
        assert!(e.to_string().contains("listener.cors"), "{e}");
        let server = registry(&REGISTRY.replace(
            "    timeout: 300s\n",
            "    timeout: 300s\n    cors: { allow_origins: ['https://a.example.com'] }\n",
        ));
        let e = static_bootstrap(&server, Path::new("/w.wasm"), Path::new("/w.so")).expect_err("refused");
        assert!(e.to_string().contains("\"crm\" uses cors"), "{e}");
        // Host and Origin checks are the filter's: they are in its configuration here too.
        let b = bootstrap();
        let config = &hcm(&b)["http_filters"][0]["typed_config"]["config"]["configuration"]["value"];
        let filter: Value = serde_json::from_str(config.as_str().expect("string")).expect("json");
        assert_eq!(filter["origin_policy"]["allowed_hosts"], json!(["localhost", "127.0.0.1", "[::1]"]));
    }

    fn fleet(tls: Option<XdsClientTls>, stats: Option<std::net::SocketAddr>) -> Value {
        xds_bootstrap(&XdsBootstrap {
            node_id: "edge-1".to_string(),
            xds_host: "meshgate.internal".to_string(),
            xds_port: 18000,
            replicas: Vec::new(),
            admin_port: 9901,
            admin_address: "127.0.0.1".parse().expect("ip"),
            stats,
            api: Api::Sotw,
            tls,
        })
    }

    #[test]
    fn xds_cluster_speaks_mtls_when_asked() {
        let plain = fleet(None, None);
        assert!(plain["static_resources"]["clusters"][0].get("transport_socket").is_none());
        let b = fleet(
            Some(XdsClientTls {
                ca_file: "/etc/meshgate/ca.pem".to_string(),
                client_cert: Some(("/etc/envoy/xds.pem".to_string(), "/etc/envoy/xds-key.pem".to_string())),
                sni: None,
            }),
            None,
        );
        let socket = &b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
        assert_eq!(socket["sni"], "meshgate.internal");
        let common = &socket["common_tls_context"];
        assert_eq!(common["validation_context"]["trusted_ca"]["filename"], "/etc/meshgate/ca.pem");
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"][0],
            json!({ "san_type": "DNS", "matcher": { "exact": "meshgate.internal" } })
        );
        assert_eq!(common["tls_certificates"][0]["certificate_chain"]["filename"], "/etc/envoy/xds.pem");
        assert_eq!(common["alpn_protocols"], json!(["h2"]));
    }

    /// Several `--xds-address`es (HA replicas): one cluster with every replica, health-checked
    /// so a dead one leaves the rotation; a single address renders as before.
    #[test]
    fn several_xds_addresses_make_one_health_checked_cluster() {
        let mut options = XdsBootstrap {
            node_id: "edge-1".to_string(),
            xds_host: "10.0.0.5".to_string(),
            xds_port: 18000,
            replicas: vec![("10.0.0.6".to_string(), 18000)],
            admin_port: 9901,
            admin_address: "127.0.0.1".parse().expect("ip"),
            stats: None,
            api: Api::Delta,
            tls: None,
        };
        let endpoints = |b: &Value| -> Vec<String> {
            b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .expect("endpoints")
                .iter()
                .map(|e| {
                    let a = &e["endpoint"]["address"]["socket_address"];
                    format!("{}:{}", a["address"].as_str().unwrap_or_default(), a["port_value"])
                })
                .collect()
        };
        let b = xds_bootstrap(&options);
        let cluster = &b["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STATIC");
        assert_eq!(endpoints(&b), ["10.0.0.5:18000", "10.0.0.6:18000"]);
        assert_eq!(cluster["health_checks"][0]["tcp_health_check"], json!({}));
        assert_eq!(cluster["health_checks"][0]["unhealthy_threshold"], 1);
        assert_eq!(b["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"], XDS_CLUSTER);

        options.replicas = vec![("meshgate-1.internal".to_string(), 18000)];
        let b = xds_bootstrap(&options);
        assert_eq!(b["static_resources"]["clusters"][0]["type"], "STRICT_DNS", "names need DNS, every one of them");

        // TLS: each replica's certificate names its own address; no single SNI fits both.
        options.replicas = vec![("10.0.0.6".to_string(), 18000)];
        options.tls = Some(XdsClientTls { ca_file: "/ca.pem".to_string(), client_cert: None, sni: None });
        let b = xds_bootstrap(&options);
        let socket = &b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
        assert!(socket.get("sni").is_none());
        assert_eq!(
            socket["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
            json!([
                { "san_type": "IP_ADDRESS", "matcher": { "exact": "10.0.0.5" } },
                { "san_type": "IP_ADDRESS", "matcher": { "exact": "10.0.0.6" } },
            ])
        );

        options.replicas.clear();
        options.tls = None;
        let single = xds_bootstrap(&options);
        assert!(single["static_resources"]["clusters"][0].get("health_checks").is_none());
        assert_eq!(endpoints(&single), ["10.0.0.5:18000"]);
    }

    #[test]
    fn stats_listener_serves_only_prometheus_and_ready_from_the_admin() {
        let b = fleet(None, Some("0.0.0.0:15090".parse().expect("addr")));
        let listener = &b["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 15090);
        let routes =
            &listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        let paths: Vec<&str> =
            routes.as_array().expect("routes").iter().filter_map(|r| r["match"]["path"].as_str()).collect();
        assert_eq!(paths, STATS_PATHS);
        assert_eq!(routes[0]["route"]["cluster"], ADMIN_CLUSTER);
        let admin = &b["static_resources"]["clusters"][1];
        assert_eq!(admin["name"], ADMIN_CLUSTER);
        assert_eq!(
            admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            9901
        );
    }

    #[test]
    fn renders_as_yaml_and_json() {
        let b = bootstrap();
        let yaml = to_yaml(&b).expect("yaml");
        let back: Value = serde_saphyr::from_str(&yaml).expect("yaml parses back");
        assert_eq!(back, b);
        let back: Value = serde_json::from_str(&to_json(&b)).expect("json parses back");
        assert_eq!(back, b);
    }
}
