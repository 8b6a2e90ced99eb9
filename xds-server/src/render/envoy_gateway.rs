//! `meshgate render envoy-gateway`: the native Meshgate filter on Envoy Gateway.
//!
//! Rendered, in `kubectl apply` order:
//! - an `EnvoyProxy` (the gateway's infrastructure parameters): the Envoy 1.40 image the
//!   module is built for, the module allow-listed in `spec.dynamicModules` (a local path),
//!   an init container copying `libmeshgate.so` from the meshgate image into an `emptyDir`
//!   that Envoy mounts read-only, and the filter's secret environment variables, if any;
//! - a `Gateway` using it (HTTPS with `--tls-secret`, plaintext only with `--plaintext`);
//! - an `HTTPRoute`: `/mcp/<server>` (exact path) → the server's Service, path and host
//!   rewritten to the upstream's, the server's timeout (Envoy Gateway adds no retries);
//! - a `ReferenceGrant` per Service namespace other than the route's;
//! - a `ClientTrafficPolicy` raising the connection buffer above the filter's body limits
//!   (so the filter, not Envoy, refuses an oversized body with a JSON-RPC error);
//! - an `EnvoyExtensionPolicy` attaching the module to that `HTTPRoute` only, with the
//!   registry's filter configuration as `config`. Envoy Gateway hands `config` to the module
//!   as the JSON text of a `StringValue`, which is what `meshgate serve` sends by ECDS.
//!
//! Envoy Gateway puts every dynamic module filter on the listener disabled and enables it
//! per route, so routes of other `HTTPRoute`s on the same Gateway are not governed (nor
//! refused) by Meshgate. A module that cannot be loaded makes Envoy reject the
//! configuration: the listener is not updated with a route that skips the filter.
//!
//! Policy edits reach the gateway by re-rendering and applying: Envoy Gateway sends the
//! changed filter configuration with the listener update.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{check_renderable, metadata, service_of, RenderError};
use crate::registry::Registry;
use crate::translate::{buffer_limit_bytes, NATIVE_MODULE_NAME};

pub const EG_V1ALPHA1: &str = "gateway.envoyproxy.io/v1alpha1";
pub const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
pub const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";
const MODULE_VOLUME: &str = "meshgate-module";
/// Where the meshgate image keeps the module (`deploy/docker/Dockerfile`).
pub const IMAGE_MODULE_PATH: &str = "/usr/local/lib/meshgate/libmeshgate.so";
const INIT_MOUNT: &str = "/module";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// HTTPS terminating with this Kubernetes TLS secret (in the Gateway's namespace).
    Tls { secret: String },
    /// Plain HTTP: only by explicit `--plaintext`.
    Plaintext,
}

/// What `render envoy-gateway` needs besides the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyGatewayOptions {
    /// Namespace of the Gateway and every rendered resource but `ReferenceGrant`s.
    pub namespace: String,
    /// Name of the `Gateway`, `EnvoyProxy`, `HTTPRoute` and policies.
    pub name: String,
    pub gateway_class: String,
    pub port: u16,
    pub listener: Listener,
    /// The image holding `libmeshgate.so` at [`IMAGE_MODULE_PATH`] (the meshgate image).
    pub module_image: String,
    /// The Envoy image: the Envoy version the module is built for (1.40).
    pub envoy_image: String,
    /// Where the module is mounted in the Envoy container (a folder).
    pub module_dir: String,
    /// Namespace of servers whose URL names a Service without one.
    pub service_namespace: String,
    /// The Kubernetes Secret holding the filter's secret environment variables (HS256 keys,
    /// the redaction hash key), one key per variable name.
    pub secret_name: String,
}

const HINT: &str = "configure them in a BackendTrafficPolicy or BackendTLSPolicy (or the \
                    route's filters), and remove them from the registry";

/// Every resource, in apply order.
pub fn render(registry: &Registry, options: &EnvoyGatewayOptions) -> Result<Vec<Value>, RenderError> {
    check_renderable(registry, "envoy-gateway", HINT)?;
    let mut resources = vec![envoy_proxy(registry, options), gateway(options)];
    let (route, grants) = http_route(registry, options)?;
    resources.push(route);
    resources.extend(grants);
    resources.push(client_traffic_policy(registry, options));
    resources.push(extension_policy(registry, options)?);
    Ok(resources)
}

/// The module's path inside the Envoy container.
pub fn module_path(options: &EnvoyGatewayOptions) -> String {
    format!("{}/libmeshgate.so", options.module_dir.trim_end_matches('/'))
}

pub fn envoy_proxy(registry: &Registry, options: &EnvoyGatewayOptions) -> Value {
    let mut container = json!({
        "image": options.envoy_image,
        "volumeMounts": [{ "name": MODULE_VOLUME, "mountPath": options.module_dir, "readOnly": true }],
    });
    let env: Vec<Value> = registry
        .filter
        .secret_env_names()
        .into_iter()
        .map(|name| json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": options.secret_name, "key": name } } }))
        .collect();
    if !env.is_empty() {
        container["env"] = json!(env);
    }
    let init = json!({
        "name": MODULE_VOLUME,
        "image": options.module_image,
        "command": ["cp", IMAGE_MODULE_PATH, format!("{INIT_MOUNT}/libmeshgate.so")],
        "volumeMounts": [{ "name": MODULE_VOLUME, "mountPath": INIT_MOUNT }],
        "securityContext": {
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    json!({
        "apiVersion": EG_V1ALPHA1,
        "kind": "EnvoyProxy",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": {
            "dynamicModules": [{
                "name": NATIVE_MODULE_NAME,
                "source": { "type": "Local", "local": { "path": module_path(options) } },
                // Local counters live in module statics: keep them across configuration updates.
                "doNotClose": true,
            }],
            "provider": {
                "type": "Kubernetes",
                "kubernetes": {
                    "envoyDeployment": {
                        "container": container,
                        "initContainers": [init],
                        "pod": { "volumes": [{ "name": MODULE_VOLUME, "emptyDir": {} }] },
                    }
                }
            }
        }
    })
}

pub fn gateway(options: &EnvoyGatewayOptions) -> Value {
    let listener = match &options.listener {
        Listener::Tls { secret } => json!({
            "name": "mcp",
            "protocol": "HTTPS",
            "port": options.port,
            "tls": { "mode": "Terminate", "certificateRefs": [{ "kind": "Secret", "name": secret }] },
            "allowedRoutes": { "namespaces": { "from": "Same" } },
        }),
        Listener::Plaintext => json!({
            "name": "mcp",
            "protocol": "HTTP",
            "port": options.port,
            "allowedRoutes": { "namespaces": { "from": "Same" } },
        }),
    };
    json!({
        "apiVersion": GATEWAY_V1,
        "kind": "Gateway",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": {
            "gatewayClassName": options.gateway_class,
            "infrastructure": {
                "parametersRef": { "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": options.name }
            },
            "listeners": [listener],
        }
    })
}

/// The `HTTPRoute`, and a `ReferenceGrant` for each other namespace it sends to.
pub fn http_route(registry: &Registry, options: &EnvoyGatewayOptions) -> Result<(Value, Vec<Value>), RenderError> {
    let mut rules = Vec::new();
    let mut foreign = BTreeSet::new();
    for server in &registry.servers {
        let service = service_of(server, &options.service_namespace)?;
        let mut backend = json!({ "name": service.name, "port": service.port });
        if service.namespace != options.namespace {
            backend["namespace"] = json!(service.namespace);
            foreign.insert(service.namespace.clone());
        }
        rules.push(json!({
            "matches": [{ "path": { "type": "Exact", "value": registry.route_path(server) } }],
            "filters": [{
                "type": "URLRewrite",
                "urlRewrite": {
                    "hostname": server.upstream.host.to_string(),
                    "path": { "type": "ReplaceFullPath", "replaceFullPath": server.upstream.path },
                }
            }],
            "backendRefs": [backend],
            // 0s: no timeout (a long tool call or the GET stream).
            "timeouts": { "request": gateway_api_duration(server.timeout) },
        }));
    }
    let route = json!({
        "apiVersion": GATEWAY_V1,
        "kind": "HTTPRoute",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": { "parentRefs": [{ "name": options.name }], "rules": rules },
    });
    let grants = foreign
        .into_iter()
        .map(|namespace| {
            json!({
                "apiVersion": GATEWAY_V1BETA1,
                "kind": "ReferenceGrant",
                "metadata": metadata(&format!("{}-from-{}", options.name, options.namespace), &namespace),
                "spec": {
                    "from": [{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": options.namespace }],
                    "to": [{ "group": "", "kind": "Service" }],
                }
            })
        })
        .collect();
    Ok((route, grants))
}

pub fn client_traffic_policy(registry: &Registry, options: &EnvoyGatewayOptions) -> Value {
    json!({
        "apiVersion": EG_V1ALPHA1,
        "kind": "ClientTrafficPolicy",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": {
            "targetRefs": [{ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": options.name }],
            "connection": { "bufferLimit": buffer_limit_bytes(registry).to_string() },
        }
    })
}

pub fn extension_policy(registry: &Registry, options: &EnvoyGatewayOptions) -> Result<Value, RenderError> {
    Ok(json!({
        "apiVersion": EG_V1ALPHA1,
        "kind": "EnvoyExtensionPolicy",
        "metadata": metadata(&options.name, &options.namespace),
        "spec": {
            "targetRefs": [{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": options.name }],
            "dynamicModule": [{
                "name": NATIVE_MODULE_NAME,
                "filterName": NATIVE_MODULE_NAME,
                "config": serde_json::to_value(&registry.filter)?,
            }],
        }
    }))
}

/// A Gateway API `Duration` (GEP-2257): integer parts of `h`, `m`, `s`, `ms`, no decimals
/// (`1.5s` is invalid there; `1s500ms` is not). Zero is `0s`, which disables the timeout.
pub fn gateway_api_duration(duration: std::time::Duration) -> String {
    let mut millis = duration.as_millis();
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let count = millis / size;
        millis %= size;
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}
