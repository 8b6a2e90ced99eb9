//! LDS: the listener `meshgate`, one HTTP connection manager.
//!
//! Filters, in order: Envoy's CORS filter when the registry opts into CORS (it answers
//! preflights before the Meshgate filter refuses `OPTIONS`, see [`super::cors`]), the
//! Meshgate filter (native or wasm) **by ECDS** (its configuration is the policy; without it the
//! listener stays warming: fail closed), the `filter_chain` filter that runs per-route
//! credential injectors, then the router. Routes come by RDS. So the listener only changes
//! when the registry's `listener` or `limits` do — or when CORS or global quotas are turned
//! on or off or `rate_limit_service` changes: then Envoy's `ratelimit` filter sits right
//! after the Meshgate filter (see [`super::ratelimit`]). Envoy's own answers that no filter can
//! turn into JSON-RPC are mapped by [`super::local_reply`].

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, ExtensionConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
use envoy_types::pb::envoy::extensions::filters::http::filter_chain::v3::FilterChainConfig;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use prost::Name;

use super::{
    ads_config_source, buffer_limit_u32, pack, proto_duration, ratelimit, CREDENTIALS_FILTER_NAME, LISTENER_NAME,
    ROUTE_CONFIG_NAME, STREAM_IDLE_TIMEOUT, WASM_FILTER_NAME,
};
use crate::registry::Registry;

const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_FILTER: &str = "envoy.filters.http.router";

pub fn make_listener(registry: &Registry) -> Listener {
    let mut hcm = HttpConnectionManager {
        stat_prefix: LISTENER_NAME.to_string(),
        codec_type: CodecType::Auto as i32,
        stream_idle_timeout: Some(proto_duration(STREAM_IDLE_TIMEOUT)),
        request_timeout: Some(proto_duration(std::time::Duration::ZERO)),
        // The filter authorizes by path: make sure it sees the path the router matches, not
        // `/mcp//crm` or `/mcp/./crm`.
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: ROUTE_CONFIG_NAME.to_string(),
        })),
        // A failed filter VM (and, with global quotas, a rate-limit-service failure) becomes a
        // JSON-RPC error body.
        local_reply_config: Some(super::local_reply::make_local_reply_config(registry)),
        // CORS first: it answers preflights the Meshgate filter would refuse.
        http_filters: super::cors::make_cors_filter(registry)
            .into_iter()
            .chain([HttpFilter {
                name: WASM_FILTER_NAME.to_string(),
                config_type: Some(http_filter::ConfigType::ConfigDiscovery(ExtensionConfigSource {
                    config_source: Some(ads_config_source()),
                    // No default: until the policy arrives the listener is not ready.
                    apply_default_config_without_warming: false,
                    // Both builds, so `filter.runtime` switches live.
                    type_urls: vec![DynamicModuleFilter::type_url(), Wasm::type_url()],
                    ..Default::default()
                })),
                ..Default::default()
            }])
            // Global quotas: right after the wasm filter, which sets the descriptor headers.
            .chain(ratelimit::make_ratelimit_filter(registry))
            .chain([
                HttpFilter {
                    name: CREDENTIALS_FILTER_NAME.to_string(),
                    // Empty by default; routes of servers with credentials add their injector.
                    config_type: Some(http_filter::ConfigType::TypedConfig(pack(&FilterChainConfig::default()))),
                    ..Default::default()
                },
                HttpFilter {
                    name: ROUTER_FILTER.to_string(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(pack(&Router::default()))),
                    ..Default::default()
                },
            ])
            .collect(),
        ..Default::default()
    };
    super::observability::apply(registry, &mut hcm);
    super::edge::apply(registry, &mut hcm);
    Listener {
        name: LISTENER_NAME.to_string(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: registry.listener.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(registry.listener.port()))),
                ..Default::default()
            })),
        }),
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: buffer_limit_u32(registry) }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
            }],
            // `listener.tls`: certificates by SDS (see [`super::edge`]).
            transport_socket: super::edge::transport_socket(registry),
            ..Default::default()
        }],
        ..Default::default()
    }
}
