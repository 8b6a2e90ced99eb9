//! The connection manager's own answers as JSON-RPC errors (`local_reply_config`).
//!
//! Most of Envoy's local replies pass through the Meshgate filter's response path, which
//! turns them into a JSON-RPC error for the request (an unreachable, reset or timed-out
//! upstream: see `Exchange::response_plan` in the core). Two cannot:
//! - **a failed wasm VM** (a trap in the filter): Envoy fails the stream itself with 503 and
//!   response code details [`WASM_FAILURE_DETAILS`]; the filter is gone, so nobody else can
//!   give the client a JSON-RPC body. With `failure_policy: FAIL_RELOAD` (see
//!   [`super::filter`]) the next request gets a fresh VM: the failure is one request's,
//!   never the worker's;
//! - **a rate-limit service failure** with global quotas ([`super::ratelimit`]).
//!
//! Envoy knows no JSON-RPC id: the bodies carry `id: null`, with a non-2xx status so
//! clients correlate the error with the request they sent (the Python SDK does; the
//! TypeScript SDK and the Inspector show the body in their HTTP error).

use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType as ExtensionFilterConfig;
use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log_filter::FilterSpecifier, AccessLogFilter, ExtensionFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, substitution_format_string, DataSource, HeaderValue,
    HeaderValueOption, SubstitutionFormatString,
};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    LocalReplyConfig, ResponseMapper,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use meshgate_core::jsonrpc::code;

use super::{pack, ratelimit};
use crate::registry::Registry;

/// Envoy's response code details when a wasm filter fails a stream (its VM failed).
pub const WASM_FAILURE_DETAILS: &str = "wasm_fail_stream";
/// The status of that answer (Envoy's, kept: the body carries no id to answer by).
pub const WASM_FAILURE_STATUS: u32 = 503;
/// Envoy's CEL access-log filter, which can read the response code details.
const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";

/// Every mapper this registry needs: the wasm failure always, the rate-limit service's
/// failure with global quotas.
pub fn make_local_reply_config(registry: &Registry) -> LocalReplyConfig {
    let mut mappers = vec![wasm_failure_mapper()];
    mappers.extend(ratelimit::make_local_reply_mapper(registry));
    LocalReplyConfig { mappers, ..Default::default() }
}

/// A failed filter VM: a JSON-RPC error (503, `Retry-After: 1`) instead of Envoy's empty
/// body. The request was never forwarded.
fn wasm_failure_mapper() -> ResponseMapper {
    let expression = format!("response.code_details == '{WASM_FAILURE_DETAILS}'");
    ResponseMapper {
        filter: Some(AccessLogFilter {
            filter_specifier: Some(FilterSpecifier::ExtensionFilter(ExtensionFilter {
                name: CEL_FILTER.to_string(),
                config_type: Some(ExtensionFilterConfig::TypedConfig(pack(&ExpressionFilter {
                    expression,
                    ..Default::default()
                }))),
            })),
        }),
        status_code: Some(UInt32Value { value: WASM_FAILURE_STATUS }),
        body_format_override: Some(json_body(wasm_failure_body())),
        headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue { key: "retry-after".to_string(), value: "1".to_string(), ..Default::default() }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The JSON-RPC error of a request whose filter VM failed.
pub fn wasm_failure_body() -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": code::INTERNAL_ERROR,
            "message": "the gateway's filter failed on this request, which was not forwarded; retry",
        },
    })
    .to_string()
}

/// `body` as a fixed `application/json` local-reply body.
pub fn json_body(body: String) -> SubstitutionFormatString {
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(body)),
            ..Default::default()
        })),
        content_type: "application/json".to_string(),
        ..Default::default()
    }
}
