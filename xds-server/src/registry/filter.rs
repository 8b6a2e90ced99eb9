//! Registry ↔ filter configuration: the forward mapping, and mapping the filter
//! validator's error paths back to registry paths.
//!
//! The filter config mirrors the registry's `auth`/`policy`/`limits` sections 1:1, so most
//! paths are the same in both documents. The exceptions are listed in [`registry_path`].

use std::collections::BTreeMap;

use meshgate_core::config::{
    ConfigError, RawAuth, RawFilterConfig, RawJwtProvider, RawServerLimits, DEFAULT_ROUTE_PREFIX,
};
use meshgate_core::origin::{RawOriginPolicy, LOOPBACK_HOSTS, LOOPBACK_ORIGINS};

use super::observability::Observability;
use super::raw::{RawJwtIssuer, RawRegistry};

/// `:authority` of the filter's approval checks (meshgate's gRPC port answers any).
const APPROVAL_AUTHORITY: &str = "meshgate";

/// Claim defaults, the same as the filter's serde defaults.
const DEFAULT_CONSUMER_CLAIM: &str = "sub";
const DEFAULT_ROLES_CLAIM: &str = "roles";

/// Builds the filter configuration. `jwt` holds the issuers with their JWKS already read;
/// `observability` is the validated section (which decides what reads the audit fields);
/// `loopback` says whether the listener binds a loopback address (the Host/Origin defaults).
pub(crate) fn make_filter_config(
    raw: &RawRegistry,
    jwt: Vec<RawJwtProvider>,
    observability: &Observability,
    loopback: bool,
) -> RawFilterConfig {
    RawFilterConfig {
        // The registry does not expose the prefix: servers are always at `/mcp/<name>`.
        route_prefix: DEFAULT_ROUTE_PREFIX.to_string(),
        servers: raw.servers.iter().map(|s| s.name.clone()).collect(),
        auth: RawAuth {
            jwt,
            api_keys: raw.auth.api_keys.clone(),
            anonymous: raw.auth.anonymous.clone(),
            resource_metadata: raw.auth.resource_metadata.clone(),
            token_cache_entries: raw.auth.token_cache_entries,
            mtls: raw.auth.mtls.clone(),
        },
        policy: raw.policy.clone(),
        limits: raw.limits.clone(),
        redaction: raw.redaction.clone(),
        redaction_hash_key_env: raw.redaction_hash_key_env.clone(),
        quotas: raw.quotas.clone(),
        server_limits: server_limits(raw),
        observability: meshgate_core::config::RawObservability {
            consumer_label: raw.observability.metrics.as_ref().is_some_and(|m| m.consumer_label),
            audit_values: raw.observability.audit_values.clone(),
            // Envoy's tracer (translate::observability) reads span tags from the audit fields.
            tracing: observability.otel.is_some(),
            // Read by the audit access log and by the tracer and OTel access log: with
            // neither, writing them would only cost host calls.
            audit_fields: observability.access_log_path.is_some() || observability.otel.is_some(),
        },
        origin_policy: origin_policy(raw, loopback),
        // Same shape and paths in both documents.
        virtual_servers: raw.virtual_servers.clone(),
        // Filled from the validated servers when there are virtual servers (validate.rs).
        upstreams: BTreeMap::new(),
        // Filled from the validated servers with `credentials.exchange` (validate.rs).
        token_exchanges: BTreeMap::new(),
        virtual_session_key_env: raw.virtual_session_key_env.clone(),
        virtual_session_previous_key_env: raw.virtual_session_previous_key_env.clone(),
        // Filled from the lockfile when a server is pinned (validate.rs).
        pinning: BTreeMap::new(),
        // Same shape and paths in both documents.
        approvals: raw.approvals.clone(),
        // The check goes to meshgate's gRPC port, the cluster every Envoy has for ADS.
        approval_service: (!raw.approvals.is_empty()).then(|| meshgate_core::approval::RawApprovalService {
            cluster: crate::bootstrap::XDS_CLUSTER.to_string(),
            authority: APPROVAL_AUTHORITY.to_string(),
            timeout_ms: None,
        }),
    }
}

/// `listener.allowed_hosts` / `.allowed_origins` with their defaults, and each server's
/// CORS origins (its own policy, else the listener's).
///
/// Defaults: a loopback listener accepts only loopback Host names and loopback origins (the
/// same site as the gateway: a DNS-rebinding page names neither). Any other listener accepts
/// any Host (behind an ingress the names clients use are not known here; authentication
/// guards it) and no Origin at all: non-browser clients send none, and a browser page
/// needs an explicit `allowed_origins` or `cors`.
fn origin_policy(raw: &RawRegistry, loopback: bool) -> RawOriginPolicy {
    let listener = &raw.listener;
    let defaults = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let allowed_hosts = match &listener.allowed_hosts {
        Some(hosts) => Some(hosts.clone()),
        None if loopback => Some(defaults(&LOOPBACK_HOSTS)),
        None => None,
    };
    let allowed_origins = match &listener.allowed_origins {
        Some(origins) => origins.clone(),
        None if loopback => defaults(&LOOPBACK_ORIGINS),
        None => Vec::new(),
    };
    let server_origins = raw
        .servers
        .iter()
        .filter_map(|s| s.cors.as_ref().or(listener.cors.as_ref()).map(|c| (s.name.clone(), c.allow_origins.clone())))
        .collect();
    RawOriginPolicy { allowed_hosts, allowed_origins, server_origins }
}

/// `servers[].limits` and `servers[].tools[].limits` as the filter's `server_limits` map
/// (only servers that set any).
fn server_limits(raw: &RawRegistry) -> BTreeMap<String, RawServerLimits> {
    let mut out = BTreeMap::new();
    for server in &raw.servers {
        let tools: BTreeMap<_, _> =
            server.tools.iter().filter_map(|t| t.limits.clone().map(|l| (t.name.clone(), l))).collect();
        if server.limits.is_none() && tools.is_empty() {
            continue;
        }
        let own = server.limits.clone().unwrap_or_default();
        out.insert(
            server.name.clone(),
            RawServerLimits {
                max_request_bytes: own.max_request_bytes,
                max_argument_bytes: own.max_argument_bytes,
                max_response_bytes: own.max_response_bytes,
                tools,
            },
        );
    }
    out
}

pub(crate) fn make_jwt_provider(issuer: &RawJwtIssuer, jwks: Option<serde_json::Value>) -> RawJwtProvider {
    RawJwtProvider {
        issuer: issuer.issuer.clone(),
        audiences: issuer.audiences.clone(),
        jwks,
        hs256_secret_env: issuer.hs256_secret_env.clone(),
        consumer_claim: issuer.consumer_claim.clone().unwrap_or_else(|| DEFAULT_CONSUMER_CLAIM.to_string()),
        roles_claim: issuer.roles_claim.clone().unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_string()),
        leeway_seconds: issuer.leeway_seconds,
    }
}

/// A filter validation error restated for the registry.
pub(crate) struct FilterPath {
    /// Registry path (empty when the error has none: it then points at the top of the file).
    pub path: String,
    /// The error's message without its path.
    pub message: String,
}

pub(crate) fn locate(error: &ConfigError, raw: &RawRegistry) -> FilterPath {
    match error.path() {
        Some(path) => FilterPath {
            path: server_limits_path(path, raw)
                .or_else(|| origin_policy_path(path, raw))
                .unwrap_or_else(|| registry_path(path)),
            message: error.message().to_string(),
        },
        None => FilterPath { path: String::new(), message: error.to_string() },
    }
}

/// `server_limits.<server>[.<key>]` → `servers[i].limits[.<key>]`, and
/// `server_limits.<server>.tools.<tool>[.<key>]` → `servers[i].tools[j].limits[.<key>]`.
fn server_limits_path(filter_path: &str, raw: &RawRegistry) -> Option<String> {
    const KEYS: [&str; 3] = ["max_request_bytes", "max_argument_bytes", "max_response_bytes"];
    let rest = filter_path.strip_prefix("server_limits.")?;
    let (server, rest) = rest.split_once('.').unwrap_or((rest, ""));
    let i = raw.servers.iter().position(|s| s.name == server)?;
    let Some(tool_path) = rest.strip_prefix("tools.") else {
        let tail = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        return Some(format!("servers[{i}].limits{tail}"));
    };
    let (tool, key) = match tool_path.rsplit_once('.') {
        Some((tool, key)) if KEYS.contains(&key) => (tool, Some(key)),
        _ => (tool_path, None),
    };
    let j = raw.servers[i].tools.iter().position(|t| t.name == tool)?;
    Some(match key {
        Some(key) => format!("servers[{i}].tools[{j}].limits.{key}"),
        None => format!("servers[{i}].tools[{j}].limits"),
    })
}

/// `origin_policy.allowed_hosts[i]` → `listener.allowed_hosts[i]` (and origins alike), and
/// `origin_policy.server_origins.<server>[i]` → the `allow_origins[i]` of the CORS policy
/// that covers the server (its own, else the listener's).
fn origin_policy_path(filter_path: &str, raw: &RawRegistry) -> Option<String> {
    let rest = filter_path.strip_prefix("origin_policy.")?;
    if rest.starts_with("allowed_hosts") || rest.starts_with("allowed_origins") {
        return Some(format!("listener.{rest}"));
    }
    let rest = rest.strip_prefix("server_origins.")?;
    let (server, index) = rest.split_once('[').map_or((rest, None), |(s, i)| (s, Some(i)));
    let (i, entry) = raw.servers.iter().enumerate().find(|(_, s)| s.name == server)?;
    let at = if entry.cors.is_some() { format!("servers[{i}].cors") } else { "listener.cors".to_string() };
    Some(match index {
        Some(index) => format!("{at}.allow_origins[{index}"),
        None => format!("{at}.allow_origins"),
    })
}

/// Filter config path → registry path. The core already names registry keys where the
/// documents differ (`servers[i].name`, `auth.jwt[i].jwks_file`); this also accepts the
/// filter-document spellings (`servers[i]`, `auth.jwt[i].jwks`) and `route_prefix`, which
/// the registry does not have.
pub(crate) fn registry_path(filter_path: &str) -> String {
    if filter_path.starts_with("servers[") && filter_path.ends_with(']') && !filter_path.contains('.') {
        return format!("{filter_path}.name");
    }
    if filter_path == "route_prefix" {
        return String::new();
    }
    if let Some(rest) = filter_path.strip_prefix("auth.jwt[") {
        if let Some((index, tail)) = rest.split_once("].") {
            if tail == "jwks" || tail.starts_with("jwks.") || tail.starts_with("jwks[") {
                return format!("auth.jwt[{index}].jwks_file");
            }
        }
    }
    filter_path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_paths_map_to_registry_paths() {
        let cases = [
            ("policy.roles.admin.deny[0]", "policy.roles.admin.deny[0]"),
            ("servers[1]", "servers[1].name"),
            ("servers", "servers"),
            ("auth.jwt[0].jwks", "auth.jwt[0].jwks_file"),
            ("auth.jwt[0].jwks.keys[2].n", "auth.jwt[0].jwks_file"),
            ("auth.jwt[0].issuer", "auth.jwt[0].issuer"),
            ("auth.api_keys[3].sha256", "auth.api_keys[3].sha256"),
            ("limits.max_request_bytes", "limits.max_request_bytes"),
            ("route_prefix", ""),
        ];
        for (filter, registry) in cases {
            assert_eq!(registry_path(filter), registry, "{filter}");
        }
    }

    #[test]
    fn origin_policy_paths_map_to_the_listener_and_cors_policies() {
        let raw: RawRegistry = serde_saphyr::from_str(
            "listener: { port: 1, cors: { allow_origins: ['https://a.example.com'] } }\nservers:\n  - { name: crm, url: 'http://x/' }\n  - { name: docs, url: 'http://x/', cors: { allow_origins: ['https://b.example.com'] } }\n",
        )
        .expect("yaml");
        let cases = [
            ("origin_policy.allowed_hosts[2]", "listener.allowed_hosts[2]"),
            ("origin_policy.allowed_origins[0]", "listener.allowed_origins[0]"),
            ("origin_policy.server_origins.crm[0]", "listener.cors.allow_origins[0]"),
            ("origin_policy.server_origins.docs[0]", "servers[1].cors.allow_origins[0]"),
            ("origin_policy.server_origins.docs", "servers[1].cors.allow_origins"),
        ];
        for (filter, registry) in cases {
            let located = locate(&ConfigError::invalid(filter, "x"), &raw);
            assert_eq!(located.path, registry, "{filter}");
        }
    }
}
