//! Envoy bootstraps, pure (options → JSON value); the caller decides where they go.
//!
//! - [`xds_bootstrap`]: what `meshgate up` runs and `meshgate bootstrap --xds-address`
//!   prints for a fleet: a node identity, loopback admin, and one static cluster pointing
//!   at meshgate's ADS port. Everything else (listener, routes, clusters, the wasm filter
//!   and its policy, upstream credentials) arrives over ADS and changes live.
//! - [`static_bootstrap`]: the older everything-inline form (`meshgate bootstrap
//!   --registry FILE`), for running Envoy without a control plane.
//!
//! Admin always listens on loopback only: it can dump the whole configuration and stop
//! Envoy. Both are written as JSON (which Envoy reads as YAML's subset) or rendered as YAML.

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

/// Where an Envoy finds meshgate, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsBootstrap {
    /// `node.id`: names the Envoy in meshgate's `/status`. Unique per Envoy.
    pub node_id: String,
    /// Host name or IP address of meshgate's ADS port.
    pub xds_host: String,
    pub xds_port: u16,
    /// Envoy's admin port on 127.0.0.1 (0 = any).
    pub admin_port: u16,
    pub api: Api,
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
    let is_ip = options.xds_host.parse::<std::net::IpAddr>().is_ok();
    let api_type = match options.api {
        Api::Sotw => "GRPC",
        Api::Delta => "DELTA_GRPC",
    };
    let ads = json!({ "ads": {}, "resource_api_version": "V3" });
    json!({
        "node": { "id": options.node_id, "cluster": NODE_CLUSTER },
        "admin": {
            "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": options.admin_port }
            }
        },
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
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": if is_ip { "STATIC" } else { "LOGICAL_DNS" },
                "connect_timeout": "1s",
                "dns_lookup_family": "V4_PREFERRED",
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{
                        "lb_endpoints": [{
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": options.xds_host,
                                        "port_value": options.xds_port,
                                    }
                                }
                            }
                        }]
                    }]
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
            }]
        },
        "overload_manager": overload_manager(),
        "stats_config": stats::stats_config(),
        "layered_runtime": stats::layered_runtime(),
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
    // Global counters live in meshgate: without a control plane there is nobody to ask.
    if let Some(rule) = registry.global_rules.first() {
        return Err(BootstrapError::NeedsRateLimitService { rule: rule.name.clone() });
    }
    let clusters: Vec<Value> = registry.servers.iter().map(|server| make_cluster(registry, server)).collect();
    Ok(json!({
        "node": { "id": "meshgate", "cluster": "meshgate" },
        "admin": {
            "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": registry.admin_port }
            }
        },
        "static_resources": {
            "listeners": [make_listener(registry, wasm, native)?],
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
