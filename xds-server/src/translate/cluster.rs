//! CDS: one cluster per server, plus the wasm fetch cluster when the module is remote.
//!
//! - Endpoints are inline (`load_assignment`), so no EDS: STATIC when every endpoint is an IP
//!   address, LOGICAL_DNS for one DNS name (one connection target, re-resolved), STRICT_DNS
//!   for several endpoints with names (every resolved address is an endpoint).
//! - Each endpoint carries its `host:port` as `hostname` (for `auto_host_rewrite` when a
//!   server has several endpoints, and as the `Host` of HTTP health checks).
//! - `https` upstreams get an `UpstreamTlsContext`: SNI, the CA bundle (system file on the
//!   Envoy host, or the registry's `ca_file` inline) and a subject-alt-name check — Envoy
//!   does not check the certificate's name unless told to.
//! - Health checks, outlier detection and circuit breakers come from the registry (with the
//!   defaults in [`crate::registry::defaults`]).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers as ProtoCircuitBreakers, Cluster, OutlierDetection as ProtoOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::health_check::{HealthChecker, HttpHealthCheck, TcpHealthCheck};
use envoy_types::pb::envoy::config::core::v3::{
    address, data_source, socket_address, transport_socket, Address, DataSource, HealthCheck as ProtoHealthCheck,
    RoutingPriority, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    endpoint, lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType, CertificateValidationContext,
    CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{buffer_limit_u32, cluster_name, pack, proto_duration, RemoteWasm};
use crate::registry::{
    CircuitBreakers, HealthCheck, HealthTiming, OutlierDetection, Registry, Server, Trust, Upstream, UpstreamHost,
    UpstreamTls, VerifyName,
};

/// HTTP health checks count any answer below this as healthy: an MCP endpoint answers a
/// bare `GET` with 400/405/406 (no session, no `Accept: text/event-stream`), which still
/// proves the server is up; 5xx and no answer do not.
pub const HEALTHY_STATUS_BELOW: i64 = 500;
/// How long a remote wasm fetch may take.
pub const WASM_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

fn u32_value(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// The cluster of one server.
pub fn make_cluster(registry: &Registry, server: &Server) -> Cluster {
    let name = cluster_name(server);
    let any_dns = server.upstreams().any(|u| matches!(u.host, UpstreamHost::Dns(_)));
    let kind = match (any_dns, server.more_upstreams.is_empty()) {
        (false, _) => DiscoveryType::Static,
        (true, true) => DiscoveryType::LogicalDns,
        (true, false) => DiscoveryType::StrictDns,
    };
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(proto_duration(server.connect_timeout)),
        per_connection_buffer_limit_bytes: u32_value(buffer_limit_u32(registry)),
        // `localhost` often resolves to ::1 first while local MCP servers bind 127.0.0.1.
        dns_lookup_family: if any_dns { DnsLookupFamily::V4Preferred as i32 } else { DnsLookupFamily::Auto as i32 },
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: server.upstreams().map(make_lb_endpoint).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        health_checks: make_health_checks(server),
        outlier_detection: server.outlier_detection.as_ref().map(make_outlier_detection),
        circuit_breakers: Some(make_circuit_breakers(&server.circuit_breakers)),
        transport_socket: server.tls.as_ref().map(|tls| make_tls_socket(tls, &registry.envoy.system_ca_file)),
        ..Default::default()
    }
}

fn socket_address(host: String, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host,
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub(super) fn make_lb_endpoint(upstream: &Upstream) -> LbEndpoint {
    let authority = upstream.authority();
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(upstream.host.to_string(), upstream.port)),
            hostname: authority.clone(),
            health_check_config: Some(endpoint::HealthCheckConfig { hostname: authority, ..Default::default() }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn make_health_checks(server: &Server) -> Vec<ProtoHealthCheck> {
    let (timing, checker) = match server.health_check {
        HealthCheck::None => return Vec::new(),
        HealthCheck::Tcp(timing) => (
            timing,
            // No payload: a successful connect is a pass.
            HealthChecker::TcpHealthCheck(TcpHealthCheck::default()),
        ),
        HealthCheck::Http(timing) => (
            timing,
            HealthChecker::HttpHealthCheck(HttpHealthCheck {
                // The endpoint's `health_check_config.hostname` supplies the Host.
                path: server.upstream.path.clone(),
                expected_statuses: vec![Int64Range { start: 100, end: HEALTHY_STATUS_BELOW }],
                ..Default::default()
            }),
        ),
    };
    let HealthTiming { interval, timeout, healthy_threshold, unhealthy_threshold } = timing;
    vec![ProtoHealthCheck {
        timeout: Some(proto_duration(timeout)),
        interval: Some(proto_duration(interval)),
        healthy_threshold: u32_value(healthy_threshold),
        unhealthy_threshold: u32_value(unhealthy_threshold),
        health_checker: Some(checker),
        ..Default::default()
    }]
}

fn make_outlier_detection(detection: &OutlierDetection) -> ProtoOutlierDetection {
    ProtoOutlierDetection {
        consecutive_5xx: u32_value(detection.consecutive_5xx),
        consecutive_gateway_failure: u32_value(detection.consecutive_gateway_failure),
        // Envoy counts gateway failures (502/503/504, resets) but enforces 0 % by default.
        enforcing_consecutive_gateway_failure: u32_value(100),
        interval: Some(proto_duration(detection.interval)),
        base_ejection_time: Some(proto_duration(detection.base_ejection_time)),
        max_ejection_percent: u32_value(detection.max_ejection_percent),
        ..Default::default()
    }
}

fn make_circuit_breakers(limits: &CircuitBreakers) -> ProtoCircuitBreakers {
    ProtoCircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: u32_value(limits.max_connections),
            max_pending_requests: u32_value(limits.max_pending_requests),
            max_requests: u32_value(limits.max_requests),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn make_tls_socket(tls: &UpstreamTls, system_ca_file: &str) -> TransportSocket {
    let trusted_ca = match &tls.trust {
        Trust::System => data_source::Specifier::Filename(system_ca_file.to_string()),
        Trust::CaFile { pem, .. } => data_source::Specifier::InlineString(pem.clone()),
    };
    let (san_type, expected) = match &tls.verify {
        VerifyName::Dns(name) => (SanType::Dns, name.clone()),
        VerifyName::Ip(ip) => (SanType::IpAddress, ip.to_string()),
    };
    let context = UpstreamTlsContext {
        sni: tls.sni.clone().unwrap_or_default(),
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(DataSource { specifier: Some(trusted_ca), ..Default::default() }),
                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                    san_type: san_type as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(expected)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            // HTTP/1.1 upstreams: no ALPN needed.
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// The cluster Envoy fetches a remote wasm module through (meshgate's admin API, usually).
/// An `https` URL gets TLS verifying meshgate's certificate for the URL's host (its CA
/// bundle, else `system_ca_file`); the module is checked against its SHA-256 either way.
pub fn make_wasm_source_cluster(remote: &RemoteWasm, system_ca_file: &str) -> Cluster {
    let is_ip = remote.host.parse::<std::net::IpAddr>().is_ok();
    let transport_socket = remote.tls.as_ref().map(|tls| {
        let verify = match remote.host.parse::<std::net::IpAddr>() {
            Ok(ip) => VerifyName::Ip(ip),
            Err(_) => VerifyName::Dns(remote.host.clone()),
        };
        let trust = match &tls.ca_pem {
            Some(pem) => Trust::CaFile { file: std::path::PathBuf::new(), pem: pem.clone() },
            None => Trust::System,
        };
        let sni = (!is_ip).then(|| remote.host.clone());
        make_tls_socket(&UpstreamTls { sni, verify, trust }, system_ca_file)
    });
    let kind = if is_ip { DiscoveryType::Static } else { DiscoveryType::LogicalDns };
    Cluster {
        name: super::WASM_SOURCE_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(proto_duration(Duration::from_secs(5))),
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: super::WASM_SOURCE_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(remote.host.clone(), remote.port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        // A module is a few MB; the default 1 MiB buffer would cut it.
        per_connection_buffer_limit_bytes: u32_value(64 * 1024 * 1024),
        transport_socket,
        ..Default::default()
    }
}
