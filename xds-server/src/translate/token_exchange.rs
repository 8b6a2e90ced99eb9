//! CDS and SDS for token exchange (`servers[].credentials.exchange`): one cluster per such
//! server that reaches its token endpoint, and the SDS secret Envoy authenticates with.
//!
//! The filter's callout (`meshgate_core::upstream_token`) goes to the cluster
//! `meshgate-token-<server>`: TLS to the endpoint (SNI, CA, name check, as a server's own
//! cluster), HTTP/1.1, and Envoy's `credential_injector` as an **upstream HTTP filter**
//! (`HttpProtocolOptions.http_filters`, before the mandatory `upstream_codec`), which sets
//! `Authorization: Basic <client_secret_basic>` from the SDS generic secret
//! `meshgate-token-client-<server>` on every request of the cluster. So the client secret
//! travels to Envoy only over SDS (redacted in `/config_dump`), never in the filter's
//! configuration, and the filter cannot leak what it never holds. A missing secret fails
//! the exchange closed (`allow_request_without_credential: false`: Envoy answers 401).

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, Http1ProtocolOptions, TypedExtensionConfig};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_filter, HttpFilter};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, GenericSecret, SdsSecretConfig, Secret};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::cluster::{make_lb_endpoint, make_tls_socket};
use super::{ads_config_source, pack, proto_duration, token_client_secret_name, token_cluster_name};
use crate::registry::{Registry, Server, UpstreamHost};

const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const CREDENTIAL_INJECTOR: &str = "envoy.filters.http.credential_injector";
const GENERIC_CREDENTIAL: &str = "envoy.http.injected_credentials.generic";
const UPSTREAM_CODEC: &str = "envoy.filters.http.upstream_codec";
/// A token answer is small; this bounds what Envoy buffers for one.
const TOKEN_BUFFER_LIMIT_BYTES: u32 = 64 * 1024;

/// The token endpoint's cluster of a server with token exchange.
pub fn make_token_cluster(registry: &Registry, server: &Server) -> Option<Cluster> {
    let exchange = server.exchange.as_ref()?;
    let name = token_cluster_name(server);
    let dns = matches!(exchange.endpoint.host, UpstreamHost::Dns(_));
    let kind = if dns { DiscoveryType::LogicalDns } else { DiscoveryType::Static };
    let injector = CredentialInjector {
        overwrite: true,
        allow_request_without_credential: false,
        credential: Some(TypedExtensionConfig {
            name: GENERIC_CREDENTIAL.to_string(),
            typed_config: Some(pack(&Generic {
                credential: Some(SdsSecretConfig {
                    name: token_client_secret_name(server),
                    sds_config: Some(ads_config_source()),
                }),
                header: "authorization".to_string(),
                header_value_prefix: "Basic ".to_string(),
            })),
        }),
    };
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())),
        })),
        http_filters: vec![
            HttpFilter {
                name: CREDENTIAL_INJECTOR.to_string(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack(&injector))),
                ..Default::default()
            },
            HttpFilter {
                name: UPSTREAM_CODEC.to_string(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack(&UpstreamCodec::default()))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    Some(Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(proto_duration(exchange.timeout)),
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: TOKEN_BUFFER_LIMIT_BYTES }),
        dns_lookup_family: if dns { DnsLookupFamily::V4Preferred as i32 } else { DnsLookupFamily::Auto as i32 },
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![make_lb_endpoint(&exchange.endpoint)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket: exchange.tls.as_ref().map(|tls| make_tls_socket(tls, &registry.envoy.system_ca_file)),
        typed_extension_protocol_options: [(HTTP_PROTOCOL_OPTIONS_KEY.to_string(), pack(&options))]
            .into_iter()
            .collect(),
        ..Default::default()
    })
}

/// The SDS secret with a server's `client_secret_basic` value (id and secret, base64).
pub fn make_token_client_secret(server: &Server) -> Option<Secret> {
    let exchange = server.exchange.as_ref()?;
    Some(Secret {
        name: token_client_secret_name(server),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(exchange.basic_credential())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    })
}
