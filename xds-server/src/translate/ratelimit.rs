//! Global quotas in Envoy: the `ratelimit` HTTP filter calling meshgate, and per-route
//! descriptors. Only rendered when the registry has `scope: global` quotas.
//!
//! - The filter sits right after the Meshgate wasm filter (which sets
//!   `x-meshgate-rl-<rule>: <counter key>` for every global rule a `tools/call` matches and
//!   strips client-sent `x-meshgate-*`) and before per-route filters and the router. Domain
//!   `meshgate`; the service is meshgate's own gRPC port, through the bootstrap's
//!   `meshgate-xds` cluster (already HTTP/2). `failure_mode_deny` follows the registry's
//!   `failure_mode` (default deny): if meshgate itself cannot be reached, Envoy answers 503
//!   (`status_on_error`) and the connection manager's local-reply mapper turns it into a
//!   JSON-RPC error body ([`make_local_reply_mapper`]).
//! - Each MCP route carries one `rate_limits` entry per global rule:
//!   `[generic_key rule=<name>, request_headers x-meshgate-rl-<name> → key]`, with
//!   `skip_if_absent: false`: when the header is absent (the rule does not match this call)
//!   Envoy drops the whole descriptor, and a request with no descriptor is never sent to
//!   meshgate. (`true` would only drop the `key` entry and still send `rule=<name>`.)
//! - The route removes those headers (`request_headers_to_remove`, applied by the router
//!   after the `ratelimit` filter has read them), so they never reach an upstream.
//!
//! Turning global quotas on or off, or changing `rate_limit_service`, changes the listener
//! (Envoy updates its filter chain in place and drains connections of the old one); rule
//! edits change only routes (RDS) and the filter's configuration (ECDS).

use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log_filter::FilterSpecifier, AccessLogFilter, ResponseFlagFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    grpc_service, header_value_option::HeaderAppendAction, ApiVersion, GrpcService, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
use envoy_types::pb::envoy::config::route::v3::rate_limit::{action, Action};
use envoy_types::pb::envoy::config::route::v3::RateLimit as RouteRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter, ResponseMapper,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::UInt32Value;
use meshgate_core::jsonrpc::code;

use super::{pack, proto_duration};
use crate::bootstrap::XDS_CLUSTER;
use crate::ratelimit::service::{rule_header, DOMAIN, KEY_ENTRY, RULE_ENTRY};
use crate::registry::{FailureMode, Registry};

/// Name of the `ratelimit` `HttpFilter` in the connection manager.
pub const RATELIMIT_FILTER_NAME: &str = "envoy.filters.http.ratelimit";
/// Envoy's response flag for "the rate-limit service failed" (`failure_mode_deny`).
const RLS_ERROR_FLAG: &str = "RLSE";
/// Envoy's answer when meshgate cannot be reached and the failure mode is deny.
const RLS_ERROR_STATUS: StatusCode = StatusCode::ServiceUnavailable;

/// The `ratelimit` filter, when the registry has global rules.
pub fn make_ratelimit_filter(registry: &Registry) -> Option<HttpFilter> {
    let service = registry.rate_limit_service.as_ref()?;
    if registry.global_rules.is_empty() {
        return None;
    }
    let config = RateLimitFilter {
        domain: DOMAIN.to_string(),
        timeout: Some(proto_duration(service.timeout)),
        failure_mode_deny: service.failure_mode == FailureMode::Deny,
        rate_limit_service: Some(RateLimitServiceConfig {
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                    cluster_name: XDS_CLUSTER.to_string(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            transport_api_version: ApiVersion::V3 as i32,
        }),
        status_on_error: Some(HttpStatus { code: RLS_ERROR_STATUS as i32 }),
        stat_prefix: DOMAIN.to_string(),
        ..Default::default()
    };
    Some(HttpFilter {
        name: RATELIMIT_FILTER_NAME.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&config))),
        ..Default::default()
    })
}

/// The `rate_limits` of every MCP route: one per global rule, in registry order.
pub fn make_route_rate_limits(registry: &Registry) -> Vec<RouteRateLimit> {
    if registry.rate_limit_service.is_none() {
        return Vec::new();
    }
    registry
        .global_rules
        .iter()
        .map(|rule| RouteRateLimit {
            actions: vec![
                Action {
                    action_specifier: Some(action::ActionSpecifier::GenericKey(action::GenericKey {
                        descriptor_key: RULE_ENTRY.to_string(),
                        descriptor_value: rule.name.clone(),
                        ..Default::default()
                    })),
                },
                Action {
                    action_specifier: Some(action::ActionSpecifier::RequestHeaders(action::RequestHeaders {
                        header_name: rule_header(&rule.name),
                        descriptor_key: KEY_ENTRY.to_string(),
                        // Envoy: `true` drops only this *entry* (the descriptor would
                        // still go out as `rule=<name>` alone); `false` drops the whole
                        // descriptor when the header is absent, which is what we want.
                        skip_if_absent: false,
                    })),
                },
            ],
            ..Default::default()
        })
        .collect()
}

/// Headers every MCP route removes before the upstream: the global rules' descriptor headers.
pub fn make_route_headers_to_remove(registry: &Registry) -> Vec<String> {
    registry.global_rules.iter().map(|rule| rule_header(&rule.name)).collect()
}

/// The JSON-RPC error Envoy sends when meshgate (the rate-limit service) is unreachable.
/// Envoy does not know the request's id: `null`, as JSON-RPC prescribes when it cannot be
/// determined.
pub fn rls_error_body() -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": code::INTERNAL_ERROR,
            "message": "rate limit service unavailable; retry later",
        },
    })
    .to_string()
}

/// The connection manager's local-reply mapper for rate-limit service errors, when the
/// registry has global rules (see [`super::local_reply`]).
pub fn make_local_reply_mapper(registry: &Registry) -> Option<ResponseMapper> {
    make_ratelimit_filter(registry)?;
    Some(ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
                flags: vec![RLS_ERROR_FLAG.to_string()],
            })),
        }),
        status_code: Some(UInt32Value { value: RLS_ERROR_STATUS as u32 }),
        body_format_override: Some(super::local_reply::json_body(rls_error_body())),
        headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue { key: "retry-after".to_string(), value: "1".to_string(), ..Default::default() }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }],
        ..Default::default()
    })
}
