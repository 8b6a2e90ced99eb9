//! `meshgate render`: the registry as the resources another control plane applies.
//!
//! Where Istio or Envoy Gateway already program the Envoys, meshgate does not serve xDS to
//! them; it renders what those control planes need to run the Meshgate filter with the
//! registry's policy, in the order it must run, on the routes it governs:
//!
//! | platform | module | filter inserted by | routes |
//! |---|---|---|---|
//! | [`istio`] | wasm (proxy-wasm is stable across Istio's Envoy versions), fetched by Envoy over HTTP, SHA-256 pinned | an `EnvoyFilter` (Istio's `WasmPlugin` cannot set `allow_on_headers_stop_iteration`) | a `VirtualService` on a `Gateway` |
//! | [`envoy_gateway`] | native (`libmeshgate.so`, built for Envoy 1.40), copied by an init container | an `EnvoyExtensionPolicy` `dynamicModule`, allow-listed in the `EnvoyProxy` | an `HTTPRoute` |
//!
//! The filter configuration is the one `meshgate serve` sends by ECDS (`Registry::filter`,
//! already accepted by the filter's own validator). Registry keys that meshgate's own xDS
//! renders outside the filter (upstream credentials, several endpoints, upstream TLS,
//! health checks, outlier detection, circuit breakers, CORS, global quotas) belong to the
//! platform's own resources there: a registry using them is refused, never rendered
//! without them ([`check_renderable`]).
//!
//! Output is multi-document YAML for `kubectl apply -f -`; the rendering is pure.

pub mod envoy_gateway;
pub mod istio;

use serde_json::Value;

use crate::registry::{Registry, Server, UpstreamHost};

/// Label every rendered resource carries, so `kubectl get -l` finds them and a re-render
/// can prune what it no longer renders.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshgate");

/// Kubernetes' cluster domain for fully qualified Service names.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "servers[{server}] sets {keys}, which `meshgate render {platform}` does not translate \
         (meshgate's own xDS renders them outside the filter): {hint}"
    )]
    ServerKeys { platform: &'static str, server: String, keys: String, hint: &'static str },
    #[error(
        "listener.cors is not translated by `meshgate render {platform}`: configure CORS on the \
         platform's route ({hint}) and remove it from the registry"
    )]
    ListenerCors { platform: &'static str, hint: &'static str },
    #[error(
        "quota {rule:?} has scope: global, which needs meshgate's rate-limit service; \
         `meshgate render {platform}` does not wire it: use the platform's global rate limit \
         or scope: local"
    )]
    GlobalQuota { platform: &'static str, rule: String },
    #[error(
        "{key} is not translated by `meshgate render {platform}`: {why}; remove it from the \
         registry for this platform"
    )]
    ListenerKeys { platform: &'static str, key: &'static str, why: &'static str },
    #[error(
        "servers[{server}].url host {host:?} is not a Kubernetes Service name \
         (expected <service>, <service>.<namespace> or <service>.<namespace>.svc[.<domain>])"
    )]
    NotAService { server: String, host: String },
    #[error("{flag} {value:?}: {reason}")]
    Option { flag: &'static str, value: String, reason: String },
    #[error("cannot serialize the filter configuration: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write YAML: {0}")]
    Yaml(String),
}

/// Refuses registries whose keys the platform would silently drop. `hint` says where the
/// platform configures a server's connection keys.
pub fn check_renderable(registry: &Registry, platform: &'static str, hint: &'static str) -> Result<(), RenderError> {
    if let Some(server) = registry.servers.iter().find(|s| !s.control_plane_keys.is_empty()) {
        return Err(RenderError::ServerKeys {
            platform,
            server: server.name.clone(),
            keys: server.control_plane_keys.join(", "),
            hint,
        });
    }
    if registry.cors.is_some() {
        return Err(RenderError::ListenerCors { platform, hint });
    }
    if let Some(rule) = registry.global_rules.first() {
        return Err(RenderError::GlobalQuota { platform, rule: rule.name.clone() });
    }
    // Keys meshgate's own listener and routes carry: the platform's gateway owns those, so
    // rendering them would drop them silently (TLS, or callers' identities) or leave a
    // virtual endpoint without its routes.
    let listener_keys: [(bool, &'static str, &'static str); 3] = [
        (
            registry.edge.tls.is_some(),
            "listener.tls (and with it auth.mtls)",
            "the platform's gateway terminates TLS (--tls-credential / --tls-secret)",
        ),
        (registry.edge.stats.is_some(), "stats", "the platform exposes Envoy's metrics and readiness itself"),
        (
            !registry.virtual_servers.is_empty(),
            "virtual_servers",
            "their per-call routes are rendered by meshgate's own xDS only",
        ),
    ];
    if let Some((_, key, why)) = listener_keys.into_iter().find(|(set, _, _)| *set) {
        return Err(RenderError::ListenerKeys { platform, key, why });
    }
    Ok(())
}

/// The Kubernetes Service behind a server's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
    pub port: u16,
}

impl ServiceRef {
    /// `<name>.<namespace>.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }
}

/// The Service a server's URL names: `crm` (in `default_namespace`), `crm.tools`, or
/// `crm.tools.svc[.cluster.local]`. IP addresses and other names are refused: neither
/// platform routes to them without resources this command does not write.
pub fn service_of(server: &Server, default_namespace: &str) -> Result<ServiceRef, RenderError> {
    let not_a_service =
        || RenderError::NotAService { server: server.name.clone(), host: server.upstream.host.to_string() };
    let UpstreamHost::Dns(host) = &server.upstream.host else {
        return Err(not_a_service());
    };
    let labels: Vec<&str> = host.split('.').collect();
    let (name, namespace) = match labels.as_slice() {
        [name] => (*name, default_namespace),
        [name, namespace] => (*name, *namespace),
        [name, namespace, "svc", ..] => (*name, *namespace),
        _ => return Err(not_a_service()),
    };
    if !is_dns_label(name) || !is_dns_label(namespace) {
        return Err(not_a_service());
    }
    Ok(ServiceRef { name: name.to_string(), namespace: namespace.to_string(), port: server.upstream.port })
}

/// An RFC 1123 label, as Kubernetes names Services and namespaces.
pub fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// Checks a Kubernetes name given on the command line.
pub fn check_name(flag: &'static str, value: &str) -> Result<(), RenderError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(RenderError::Option {
            flag,
            value: value.to_string(),
            reason: "must be a lower-case RFC 1123 label ([a-z0-9-], at most 63)".to_string(),
        })
    }
}

/// `metadata` with the managed-by label.
pub fn metadata(name: &str, namespace: &str) -> Value {
    serde_json::json!({
        "name": name,
        "namespace": namespace,
        "labels": { MANAGED_BY.0: MANAGED_BY.1 },
    })
}

/// Multi-document YAML, one document per resource.
pub fn to_yaml_documents(resources: &[Value]) -> Result<String, RenderError> {
    let mut out = String::new();
    for resource in resources {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(resource).map_err(|e| RenderError::Yaml(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
