//! The static bootstrap's resources, as JSON in Envoy's v3 proto-JSON shape.
//!
//! This is the pre-control-plane, single-node form (`meshgate bootstrap --static`): it
//! renders each server's `url` and `timeout` only. Registries using keys that need the
//! control plane (several `urls`, `https`, health checks, outlier detection, circuit
//! breakers, `connect_timeout`, `credentials`) are refused by [`super::static_bootstrap`]
//! rather than rendered without them. The xDS resources ([`crate::translate`]) are the
//! reference; keep the shared choices below in step with them.
//!
//! Choices that matter for MCP (see `REFERENCE.md`):
//! - routes match the *exact* path `/mcp/<name>` (Envoy's `path` match ignores the query
//!   string), so `/mcp/crmx` never reaches `crm`; anything else gets Envoy's 404;
//! - route `timeout` is the server's timeout (0s = none) with an `idle_timeout`, because the
//!   15 s default cuts long tool calls and the GET SSE stream;
//! - `Host` is rewritten to the upstream's `host:port` (the Python MCP SDK answers 421 to
//!   any other Host);
//! - the connection buffer limit sits above the filter's body limits so the filter, not
//!   Envoy, refuses oversized bodies, with a JSON-RPC error;
//! - the wasm filter runs before the router with `allow_on_headers_stop_iteration`, or it
//!   would never see request bodies;
//! - a wasm VM that fails is reloaded for the next request (`FAIL_RELOAD`), and the request
//!   it failed gets a JSON-RPC 503 ([`crate::translate::local_reply`]).
//!
//! CORS (`listener.cors`, `servers[].cors`) needs the control plane: such registries are
//! refused too. The Host and Origin checks are the filter's and work here as everywhere.

use std::path::Path;

use meshgate_core::virtual_server::{VirtualServer, TARGET_HEADER};
use serde_json::{json, Value};

use crate::registry::{Registry, Runtime, Server, UpstreamHost};
use crate::translate::filter::{NATIVE_METRICS_NAMESPACE, VM_RELOAD_BACKOFF, VM_RELOAD_MAX_BACKOFF};
use crate::translate::local_reply::{wasm_failure_body, WASM_FAILURE_DETAILS, WASM_FAILURE_STATUS};
use crate::translate::{
    buffer_limit_bytes, cluster_name, envoy_duration, FILTER_NAME, LISTENER_NAME, NATIVE_MODULE_NAME,
    STREAM_IDLE_TIMEOUT, WASM_PLUGIN_NAME,
};

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const DYNAMIC_MODULE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const CEL_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter";

/// One upstream cluster per server: STATIC for an IP, LOGICAL_DNS for a name, HTTP/1.1.
pub fn make_cluster(registry: &Registry, server: &Server) -> Value {
    let name = cluster_name(server);
    let upstream = &server.upstream;
    let (kind, address) = match &upstream.host {
        UpstreamHost::Ip(ip) => ("STATIC", ip.to_string()),
        UpstreamHost::Dns(host) => ("LOGICAL_DNS", host.clone()),
    };
    let mut cluster = json!({
        "name": name,
        "type": kind,
        "connect_timeout": envoy_duration(server.connect_timeout),
        "per_connection_buffer_limit_bytes": buffer_limit_bytes(registry),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": {
                        "address": {
                            "socket_address": { "address": address, "port_value": upstream.port }
                        }
                    }
                }]
            }]
        }
    });
    if matches!(upstream.host, UpstreamHost::Dns(_)) {
        // `localhost` often resolves to ::1 first while local MCP servers bind 127.0.0.1.
        cluster["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    cluster
}

/// The route of one server: exact path, rewritten to the upstream path and Host.
pub fn make_route(registry: &Registry, server: &Server) -> Value {
    json!({
        "name": server.name,
        "match": { "path": registry.route_path(server) },
        "route": {
            "cluster": cluster_name(server),
            // With an exact `path` match the whole path is the matched prefix; the query
            // string is kept.
            "prefix_rewrite": server.upstream.path,
            "host_rewrite_literal": server.upstream.authority(),
            "timeout": envoy_duration(server.timeout),
            "idle_timeout": envoy_duration(STREAM_IDLE_TIMEOUT),
        }
    })
}

/// A virtual server's routes (see `translate::virtual_route`): per backing server, its own
/// route on the virtual path matching the filter's [`TARGET_HEADER`], which is removed
/// before forwarding; then a JSON-RPC refusal for anything the filter did not route.
pub fn make_virtual_routes(registry: &Registry, virtual_server: &VirtualServer) -> Vec<Value> {
    let path = registry.virtual_route_path(&virtual_server.name);
    let mut routes: Vec<Value> = virtual_server
        .servers()
        .iter()
        .filter_map(|name| registry.server(name))
        .map(|server| {
            let mut route = make_route(registry, server);
            route["name"] = json!(format!("{}/{}", virtual_server.name, server.name));
            route["match"] = json!({
                "path": path,
                "headers": [{ "name": TARGET_HEADER, "string_match": { "exact": server.name } }],
            });
            route["request_headers_to_remove"] = json!([TARGET_HEADER]);
            route
        })
        .collect();
    let refusal = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": meshgate_core::jsonrpc::code::INTERNAL_ERROR,
            "message": format!("virtual server \"{}\": the gateway did not route this request", virtual_server.name),
        },
    });
    routes.push(json!({
        "name": format!("{}/unrouted", virtual_server.name),
        "match": { "path": path },
        "direct_response": { "status": 500, "body": { "inline_string": refusal.to_string() } },
        "response_headers_to_add": [{
            "header": { "key": "content-type", "value": "application/json" },
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }],
    }));
    routes
}

pub fn make_route_config(registry: &Registry) -> Value {
    let mut routes: Vec<Value> = registry.servers.iter().map(|server| make_route(registry, server)).collect();
    routes.extend(registry.virtual_servers.iter().flat_map(|v| make_virtual_routes(registry, v)));
    json!({
        "name": LISTENER_NAME,
        "virtual_hosts": [{
            "name": LISTENER_NAME,
            "domains": ["*"],
            "routes": routes,
        }]
    })
}

/// The Meshgate filter. Its configuration is the registry's filter config as JSON; secrets
/// stay out of it and reach the VM as environment variables instead.
pub fn make_wasm_filter(registry: &Registry, wasm: &Path) -> Result<Value, serde_json::Error> {
    let configuration = serde_json::to_string(&registry.filter)?;
    let mut vm_config = json!({
        "vm_id": WASM_PLUGIN_NAME,
        "runtime": "envoy.wasm.runtime.v8",
        "code": { "local": { "filename": wasm.display().to_string() } },
    });
    let env_keys = registry.filter.secret_env_names();
    if !env_keys.is_empty() {
        vm_config["environment_variables"] = json!({ "host_env_keys": env_keys });
    }
    Ok(json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": WASM_FILTER_TYPE,
            "config": {
                "name": WASM_PLUGIN_NAME,
                "root_id": WASM_PLUGIN_NAME,
                "allow_on_headers_stop_iteration": true,
                "failure_policy": "FAIL_RELOAD",
                "reload_config": {
                    "backoff": {
                        "base_interval": envoy_duration(VM_RELOAD_BACKOFF),
                        "max_interval": envoy_duration(VM_RELOAD_MAX_BACKOFF),
                    }
                },
                "configuration": { "@type": STRING_VALUE_TYPE, "value": configuration },
                "vm_config": vm_config,
            }
        }
    }))
}

/// A failed wasm VM's 503 as a JSON-RPC error (as [`crate::translate::local_reply`]).
fn local_reply_config() -> Value {
    json!({
        "mappers": [{
            "filter": {
                "extension_filter": {
                    "name": "envoy.access_loggers.extension_filters.cel",
                    "typed_config": {
                        "@type": CEL_FILTER_TYPE,
                        "expression": format!("response.code_details == '{WASM_FAILURE_DETAILS}'"),
                    }
                }
            },
            "status_code": WASM_FAILURE_STATUS,
            "body_format_override": {
                "text_format_source": { "inline_string": wasm_failure_body() },
                "content_type": "application/json",
            },
            "headers_to_add": [{
                "header": { "key": "retry-after", "value": "1" },
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }],
        }]
    })
}

/// The Meshgate filter as a dynamic module (`filter.runtime: native`), as
/// [`crate::translate::filter::make_native_config`] renders it for ECDS. Secrets are read
/// from Envoy's own environment.
pub fn make_native_filter(registry: &Registry, module: &Path) -> Result<Value, serde_json::Error> {
    let configuration = serde_json::to_string(&registry.filter)?;
    Ok(json!({
        "name": FILTER_NAME,
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER_TYPE,
            "dynamic_module_config": {
                "name": NATIVE_MODULE_NAME,
                "module": { "local": { "filename": module.display().to_string() } },
                "do_not_close": true,
                "metrics_namespace": NATIVE_METRICS_NAMESPACE,
            },
            "filter_name": NATIVE_MODULE_NAME,
            "filter_config": { "@type": STRING_VALUE_TYPE, "value": configuration },
        }
    }))
}

/// The MCP listener: one HCM with the Meshgate filter (the registry's `filter.runtime`),
/// then the router.
pub fn make_listener(registry: &Registry, wasm: &Path, native: &Path) -> Result<Value, serde_json::Error> {
    let filter = match registry.runtime {
        Runtime::Native => make_native_filter(registry, native)?,
        Runtime::Wasm => make_wasm_filter(registry, wasm)?,
    };
    let mut listener = make_listener_json(registry, filter);
    // The original client address (`listener.use_remote_address`, trusted hops), when set.
    let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    if registry.edge.use_remote_address {
        hcm["use_remote_address"] = json!(true);
    }
    if registry.edge.xff_num_trusted_hops != 0 {
        hcm["xff_num_trusted_hops"] = json!(registry.edge.xff_num_trusted_hops);
    }
    Ok(listener)
}

fn make_listener_json(registry: &Registry, filter: Value) -> Value {
    json!({
        "name": LISTENER_NAME,
        "address": {
            "socket_address": {
                "address": registry.listener.ip().to_string(),
                "port_value": registry.listener.port(),
            }
        },
        "per_connection_buffer_limit_bytes": buffer_limit_bytes(registry),
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": LISTENER_NAME,
                    "codec_type": "AUTO",
                    "stream_idle_timeout": envoy_duration(STREAM_IDLE_TIMEOUT),
                    "request_timeout": "0s",
                    // The filter authorizes by path: make sure it sees the path the router
                    // matches, not `/mcp//crm` or `/mcp/./crm`.
                    "normalize_path": true,
                    "merge_slashes": true,
                    "route_config": make_route_config(registry),
                    "local_reply_config": local_reply_config(),
                    "access_log": crate::translate::observability::access_log_json(registry),
                    "http_filters": [
                        filter,
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": { "@type": ROUTER_TYPE }
                        }
                    ]
                }
            }]
        }]
    })
}
