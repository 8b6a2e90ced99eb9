//! `meshgate render istio`: the Meshgate filter on an Istio ingress gateway.
//!
//! Rendered, in `kubectl apply` order:
//! - a `Gateway` (the MCP port; HTTPS with `--tls-credential`, plaintext only with
//!   `--plaintext`);
//! - a `VirtualService`: `/mcp/<server>` (exact path) → the server's Service, path and
//!   authority rewritten to the upstream's, the server's timeout, **no retries** (Istio
//!   retries twice by default; a `tools/call` is not idempotent);
//! - an `EnvoyFilter` with four patches on that gateway's listener port:
//!   1. `CLUSTER` ADD `meshgate-wasm-source`: the cluster Envoy fetches the module through;
//!   2. `LISTENER` MERGE the connection buffer limit above the filter's body limits (so the
//!      filter, not Envoy, refuses an oversized body with a JSON-RPC error);
//!   3. `NETWORK_FILTER` MERGE on the HTTP connection manager: `normalize_path` and
//!      `merge_slashes` (the filter authorizes by path; it must see the path the router
//!      matches) and the stream idle timeout MCP's long streams need;
//!   4. `HTTP_FILTER` INSERT_BEFORE the router: the wasm filter itself, exactly as
//!      `meshgate bootstrap --static` renders it, with its module fetched over HTTP and
//!      pinned by SHA-256.
//!
//! Why an `EnvoyFilter` and not a `WasmPlugin`: the filter pauses in `on_request_headers` to
//! read the body first, which Envoy only allows with the plugin's
//! `allow_on_headers_stop_iteration: true`; `WasmPlugin` has no such field, and without it
//! Envoy continues the request past a filter that has not decided yet.
//!
//! Fail closed: a module that cannot be fetched (or does not match its SHA-256) leaves no VM;
//! with `failure_policy: FAIL_RELOAD` (never `FAIL_OPEN`) Envoy then answers every request on
//! that listener 503 instead of passing it ungoverned, and a VM that traps fails only the
//! request it served. A `WasmPlugin` with `failStrategy: FAIL_OPEN`, or an agent-side
//! download that fails open, would pass traffic with no policy at all.
//!
//! The filter runs after Istio's own HTTP filters (its JWT `RequestAuthentication`,
//! `AuthorizationPolicy`, stats), immediately before the router.
//!
//! Policy edits reach the mesh by re-rendering and applying: the filter configuration is
//! inline in the `EnvoyFilter`, so istiod pushes the changed listener and Envoy drains the old
//! filter chain (open streams end within the gateway's drain period).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{check_renderable, metadata, service_of, RenderError};
use crate::bootstrap::static_resources::make_wasm_filter;
use crate::registry::Registry;
use crate::translate::cluster::WASM_FETCH_TIMEOUT;
use crate::translate::filter::WASM_FETCH_RETRIES;
use crate::translate::{
    buffer_limit_bytes, envoy_duration, RemoteWasm, FILTER_NAME, STREAM_IDLE_TIMEOUT, WASM_SOURCE_CLUSTER,
};

/// Istio's API group versions the rendered resources use.
pub const NETWORKING_V1: &str = "networking.istio.io/v1";
pub const NETWORKING_V1ALPHA3: &str = "networking.istio.io/v1alpha3";
const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_NAME: &str = "envoy.filters.http.router";
/// Module bytes per fetch connection (a module is a few MB; Envoy's 1 MiB default cuts it).
const MODULE_BUFFER_BYTES: u64 = 64 * 1024 * 1024;

/// How the gateway's listener is exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// HTTPS with this Kubernetes TLS secret (in the gateway's namespace).
    Tls { credential_name: String },
    /// Plain HTTP: only by explicit `--plaintext`.
    Plaintext,
}

/// What `render istio` needs besides the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioOptions {
    /// Namespace of the ingress gateway's pods (and of the rendered resources).
    pub namespace: String,
    /// Name of the rendered `Gateway`, `VirtualService` and `EnvoyFilter`.
    pub name: String,
    /// Labels of the ingress gateway's pods.
    pub selector: BTreeMap<String, String>,
    /// The `Gateway` server port (the gateway Service's port).
    pub port: u16,
    /// The port Envoy listens on for it (the Service's `targetPort`): the `EnvoyFilter`
    /// matches the listener by it.
    pub target_port: u16,
    pub hosts: Vec<String>,
    pub listener: Listener,
    /// Where the gateway's Envoys fetch the module, and its SHA-256.
    pub wasm: RemoteWasm,
    /// Namespace of servers whose URL names a Service without one.
    pub service_namespace: String,
}

/// Where Istio configures what the registry's connection keys would.
const HINT: &str = "configure them in a DestinationRule (TLS, outlier detection, connection pool) \
                    or on the VirtualService, and remove them from the registry";

/// Every resource, in apply order.
pub fn render(registry: &Registry, options: &IstioOptions) -> Result<Vec<Value>, RenderError> {
    check_renderable(registry, "istio", HINT)?;
    Ok(vec![gateway(options), virtual_service(registry, options)?, envoy_filter(registry, options)?])
}

pub fn gateway(options: &IstioOptions) -> Value {
    let server = match &options.listener {
        Listener::Tls { credential_name } => json!({
            "port": { "number": options.port, "name": "https-meshgate", "protocol": "HTTPS" },
            "hosts": options.hosts,
            "tls": { "mode": "SIMPLE", "credentialName": credential_name },
        }),
        Listener::Plaintext => json!({
            "port": { "number": options.port, "name": "http-meshgate", "protocol": "HTTP" },
            "hosts": options.hosts,
        }),
    };
    json!({
        "apiVersion": NETWORKING_V1,
        "kind": "Gateway",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": { "selector": options.selector, "servers": [server] },
    })
}

pub fn virtual_service(registry: &Registry, options: &IstioOptions) -> Result<Value, RenderError> {
    let mut routes = Vec::new();
    for server in &registry.servers {
        let service = service_of(server, &options.service_namespace)?;
        routes.push(json!({
            "name": server.name,
            "match": [{ "uri": { "exact": registry.route_path(server) } }],
            "rewrite": { "uri": server.upstream.path, "authority": server.upstream.authority() },
            "route": [{ "destination": { "host": service.fqdn(), "port": { "number": service.port } } }],
            // 0s: no timeout (a long tool call or the GET stream); idle streams still end.
            "timeout": envoy_duration(server.timeout),
            // A tools/call is not idempotent: never retried.
            "retries": { "attempts": 0 },
        }));
    }
    Ok(json!({
        "apiVersion": NETWORKING_V1,
        "kind": "VirtualService",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": { "hosts": options.hosts, "gateways": [options.name], "http": routes },
    }))
}

pub fn envoy_filter(registry: &Registry, options: &IstioOptions) -> Result<Value, RenderError> {
    let listener = json!({ "portNumber": options.target_port });
    let on_hcm = json!({ "portNumber": options.target_port, "filterChain": { "filter": { "name": HCM_NAME } } });
    let before_router = json!({
        "portNumber": options.target_port,
        "filterChain": { "filter": { "name": HCM_NAME, "subFilter": { "name": ROUTER_NAME } } },
    });
    let patches = vec![
        json!({
            "applyTo": "CLUSTER",
            "match": { "context": "GATEWAY" },
            "patch": { "operation": "ADD", "value": wasm_source_cluster(&options.wasm) },
        }),
        json!({
            "applyTo": "LISTENER",
            "match": { "context": "GATEWAY", "listener": listener },
            "patch": { "operation": "MERGE", "value": { "per_connection_buffer_limit_bytes": buffer_limit_bytes(registry) } },
        }),
        json!({
            "applyTo": "NETWORK_FILTER",
            "match": { "context": "GATEWAY", "listener": on_hcm },
            "patch": { "operation": "MERGE", "value": { "typed_config": {
                "@type": HCM_TYPE,
                "normalize_path": true,
                "merge_slashes": true,
                "stream_idle_timeout": envoy_duration(STREAM_IDLE_TIMEOUT),
            } } },
        }),
        json!({
            "applyTo": "HTTP_FILTER",
            "match": { "context": "GATEWAY", "listener": before_router },
            "patch": { "operation": "INSERT_BEFORE", "value": wasm_filter(registry, &options.wasm)? },
        }),
    ];
    Ok(json!({
        "apiVersion": NETWORKING_V1ALPHA3,
        "kind": "EnvoyFilter",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": { "workloadSelector": { "labels": options.selector }, "configPatches": patches },
    }))
}

/// The wasm filter of `meshgate bootstrap --static`, its module fetched from `wasm`.
pub fn wasm_filter(registry: &Registry, wasm: &RemoteWasm) -> Result<Value, RenderError> {
    // The path is replaced below; the rest is the static bootstrap's filter, field for field.
    let mut filter = make_wasm_filter(registry, std::path::Path::new("/unused"))?;
    filter["name"] = json!(FILTER_NAME);
    filter["typed_config"]["config"]["vm_config"]["code"] = json!({
        "remote": {
            "http_uri": {
                "uri": wasm.url,
                "cluster": WASM_SOURCE_CLUSTER,
                "timeout": envoy_duration(WASM_FETCH_TIMEOUT),
            },
            "sha256": wasm.sha256,
            "retry_policy": {
                "num_retries": WASM_FETCH_RETRIES,
                "retry_back_off": { "base_interval": "0.500s" },
            },
        }
    });
    Ok(filter)
}

/// The cluster the module is fetched through (as `translate::cluster::make_wasm_source_cluster`).
pub fn wasm_source_cluster(wasm: &RemoteWasm) -> Value {
    let is_ip = wasm.host.parse::<std::net::IpAddr>().is_ok();
    json!({
        "name": WASM_SOURCE_CLUSTER,
        "type": if is_ip { "STATIC" } else { "LOGICAL_DNS" },
        "connect_timeout": "5s",
        "dns_lookup_family": "V4_PREFERRED",
        "per_connection_buffer_limit_bytes": MODULE_BUFFER_BYTES,
        "load_assignment": {
            "cluster_name": WASM_SOURCE_CLUSTER,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": wasm.host, "port_value": wasm.port }
            } } }] }],
        },
    })
}
