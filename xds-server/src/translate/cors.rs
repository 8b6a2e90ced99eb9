//! Opt-in CORS, answered by Envoy's own CORS filter (`envoy.filters.http.cors`).
//!
//! Only registries with a CORS policy (`listener.cors`, `servers[].cors`) get the filter:
//! it sits first in the connection manager, so a browser's preflight (`OPTIONS` with
//! `Origin` and `Access-Control-Request-Method`) from an allowed origin is answered before
//! the Meshgate filter, which refuses `OPTIONS` (405), or a foreign origin (403), sees it.
//! Preflights that match no policy are forwarded to the Meshgate filter and refused there.
//! On actual requests the filter adds `Access-Control-Allow-Origin` (and the exposed
//! headers) to every answer, the Meshgate filter's own errors included, so a browser
//! client can read a 401 challenge or a JSON-RPC error.
//!
//! The policy is per route (`typed_per_filter_config`): the listener's on the virtual host,
//! a server's own on its route (replacing the listener's). Origins are matched with the
//! anchored regexes of the core's origin patterns, the same parser the filter's Origin
//! check uses.

use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors as CorsFilter, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_filter, HttpFilter};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue};

use super::pack;
use crate::registry::{Cors, Registry};

/// The CORS `HttpFilter` and the key of its per-route policies.
pub const CORS_FILTER_NAME: &str = "envoy.filters.http.cors";

/// Methods of the MCP streamable-HTTP transport.
const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
/// Request headers MCP clients send: credentials, the transport's headers, resumption.
/// `*` covers the 2026-07-28 `Mcp-Param-*` headers for requests without credentials
/// (browsers never let `*` cover `authorization`, hence its own entry).
const ALLOW_HEADERS: &str = "authorization, x-api-key, content-type, accept, last-event-id, mcp-session-id, \
                             mcp-protocol-version, mcp-method, mcp-name, *";
/// Response headers a browser client must read: the session id, the negotiated version,
/// the 401 challenge, and when to retry after a 429 or 503.
const EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version, www-authenticate, retry-after";

/// The CORS filter, when any route has a policy.
pub fn make_cors_filter(registry: &Registry) -> Option<HttpFilter> {
    registry.has_cors().then(|| HttpFilter {
        name: CORS_FILTER_NAME.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&CorsFilter::default()))),
        ..Default::default()
    })
}

/// One policy as a per-route filter config.
pub fn make_cors_policy(cors: &Cors) -> Any {
    pack(&CorsPolicy {
        allow_origin_string_match: cors
            .origin_regexes
            .iter()
            .map(|regex| StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                    regex: regex.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect(),
        allow_methods: ALLOW_METHODS.to_string(),
        allow_headers: ALLOW_HEADERS.to_string(),
        expose_headers: EXPOSE_HEADERS.to_string(),
        max_age: cors.max_age.as_secs().to_string(),
        allow_credentials: Some(BoolValue { value: cors.allow_credentials }),
        allow_private_network_access: Some(BoolValue { value: cors.allow_private_network_access }),
        ..Default::default()
    })
}
