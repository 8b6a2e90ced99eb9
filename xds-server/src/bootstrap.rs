//! The static Envoy bootstrap: everything inline, no control plane.
//!
//! [`static_bootstrap`] is pure (registry + wasm path → JSON value); the caller decides where
//! it goes. `meshgate up` writes it as JSON (which Envoy reads as YAML's subset),
//! `meshgate bootstrap` prints it as YAML or JSON. Admin always listens on loopback only:
//! it can dump the whole configuration and stop Envoy.

use std::path::Path;

use serde_json::{json, Value};

use crate::registry::Registry;
use crate::translate::{make_cluster, make_listener};

/// Envoy-wide cap on open downstream connections.
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;

const DOWNSTREAM_CONNECTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot serialize the filter configuration: {0}")]
    FilterConfig(#[from] serde_json::Error),
    #[error("cannot render the bootstrap as YAML: {0}")]
    Yaml(String),
}

/// The complete static bootstrap for `registry`, loading the filter from `wasm`.
pub fn static_bootstrap(registry: &Registry, wasm: &Path) -> Result<Value, BootstrapError> {
    let clusters: Vec<Value> = registry
        .servers
        .iter()
        .map(|server| make_cluster(registry, server))
        .collect();
    Ok(json!({
        "node": { "id": "meshgate", "cluster": "meshgate" },
        "admin": {
            "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": registry.admin_port }
            }
        },
        "static_resources": {
            "listeners": [make_listener(registry, wasm)?],
            "clusters": clusters,
        },
        // A cap on downstream connections: without one Envoy warns at every start, and a
        // gateway should not accept unbounded connections anyway.
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": DOWNSTREAM_CONNECTIONS_TYPE,
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                }
            }]
        }
    }))
}

/// Pretty JSON, newline-terminated.
pub fn to_json(bootstrap: &Value) -> String {
    let mut text =
        serde_json::to_string_pretty(bootstrap).unwrap_or_else(|_| bootstrap.to_string());
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
";

    fn bootstrap() -> Value {
        let registry = registry(REGISTRY);
        static_bootstrap(&registry, Path::new("/opt/meshgate.wasm")).expect("bootstrap")
    }

    fn hcm(b: &Value) -> &Value {
        &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn admin_is_loopback_only() {
        let b = bootstrap();
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 9901);
    }

    #[test]
    fn listener_shape() {
        let b = bootstrap();
        let listener = &b["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 10000);
        // max(2_000_000, default 8 MiB response) + 64 KiB
        assert_eq!(
            listener["per_connection_buffer_limit_bytes"],
            8 * 1024 * 1024 + 65536
        );
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
        assert_eq!(config["fail_open"], false);
        assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"],
            "/opt/meshgate.wasm"
        );
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
            clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"],
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
        let routes = hcm(&b)["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
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
             auth:\n  jwt:\n    - { issuer: x, audiences: [y], hs256_secret_env: TEST_SECRET }\n",
        );
        let b = static_bootstrap(&registry, Path::new("/m.wasm")).expect("bootstrap");
        let config = &hcm(&b)["http_filters"][0]["typed_config"]["config"];
        assert_eq!(
            config["vm_config"]["environment_variables"]["host_env_keys"],
            json!(["TEST_SECRET"])
        );
        let text = config["configuration"]["value"].as_str().expect("a string");
        assert!(
            !text.contains("s3cret"),
            "the secret value must never be in the config"
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
