//! Registry ↔ filter configuration: the forward mapping, and mapping the filter
//! validator's error paths back to registry paths.
//!
//! The filter config mirrors the registry's `auth`/`policy`/`limits` sections 1:1, so most
//! paths are the same in both documents. The exceptions are listed in [`registry_path`].

use meshgate_core::config::{
    ConfigError, RawAuth, RawFilterConfig, RawJwtProvider, DEFAULT_ROUTE_PREFIX,
};

use super::raw::{RawJwtIssuer, RawRegistry};

/// Claim defaults, the same as the filter's serde defaults.
const DEFAULT_CONSUMER_CLAIM: &str = "sub";
const DEFAULT_ROLES_CLAIM: &str = "roles";

/// Builds the filter configuration. `jwt` holds the issuers with their JWKS already read.
pub(crate) fn make_filter_config(raw: &RawRegistry, jwt: Vec<RawJwtProvider>) -> RawFilterConfig {
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
        },
        policy: raw.policy.clone(),
        limits: raw.limits.clone(),
        redaction: raw.redaction.clone(),
        redaction_hash_key_env: raw.redaction_hash_key_env.clone(),
        quotas: raw.quotas.clone(),
    }
}

pub(crate) fn make_jwt_provider(
    issuer: &RawJwtIssuer,
    jwks: Option<serde_json::Value>,
) -> RawJwtProvider {
    RawJwtProvider {
        issuer: issuer.issuer.clone(),
        audiences: issuer.audiences.clone(),
        jwks,
        hs256_secret_env: issuer.hs256_secret_env.clone(),
        consumer_claim: issuer
            .consumer_claim
            .clone()
            .unwrap_or_else(|| DEFAULT_CONSUMER_CLAIM.to_string()),
        roles_claim: issuer
            .roles_claim
            .clone()
            .unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_string()),
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

pub(crate) fn locate(error: &ConfigError) -> FilterPath {
    match error.path() {
        Some(path) => FilterPath {
            path: registry_path(path),
            message: error.message().to_string(),
        },
        None => FilterPath {
            path: String::new(),
            message: error.to_string(),
        },
    }
}

/// Filter config path → registry path. The core already names registry keys where the
/// documents differ (`servers[i].name`, `auth.jwt[i].jwks_file`); this also accepts the
/// filter-document spellings (`servers[i]`, `auth.jwt[i].jwks`) and `route_prefix`, which
/// the registry does not have.
pub(crate) fn registry_path(filter_path: &str) -> String {
    if filter_path.starts_with("servers[")
        && filter_path.ends_with(']')
        && !filter_path.contains('.')
    {
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
}
