//! The registry file exactly as written: serde shapes, no meaning attached yet.
//!
//! Every struct denies unknown keys, so a typo is an error with a line number rather than a
//! silently ignored setting. `policy`, `limits`, `auth.api_keys` and `auth.anonymous` *are*
//! the filter's own raw types: the registry cannot drift from what the filter accepts.
//! Only what the registry says differently from the filter config has its own shape here
//! (servers with URLs, JWT issuers with `jwks_file`, listener/admin/envoy).

use meshgate_core::config::{RawAnonymous, RawApiKey, RawLimits, RawPolicy};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub listener: RawListener,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    pub servers: Vec<RawServer>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub envoy: RawEnvoy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    #[serde(default)]
    pub address: Option<String>,
    /// Wider than `u16` so an out-of-range port gets our message, not "invalid u16".
    pub port: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub port: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub jwt: Vec<RawJwtIssuer>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    #[serde(default)]
    pub anonymous: Option<RawAnonymous>,
    #[serde(default)]
    pub resource_metadata: Option<String>,
    #[serde(default)]
    pub token_cache_entries: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    #[serde(default)]
    pub consumer_claim: Option<String>,
    #[serde(default)]
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub leeway_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvoy {
    #[serde(default)]
    pub concurrency: Option<u64>,
    #[serde(default)]
    pub log_level: Option<String>,
}
