//! The registry's `observability` section as Envoy configuration: the HCM's audit access
//! log (JSON lines from the filter's `wasm.mcp_*` filter state), OpenTelemetry tracing with
//! MCP span tags, an optional OTel access log, and the collector's cluster.
//!
//! The filter writes its audit fields with `set_property(["mcp_<field>"])`, which Envoy
//! stores as filter state `wasm.mcp_<field>` ([`meshgate_core::audit::field`]); here they are
//! read back with `%FILTER_STATE(wasm.mcp_<field>:PLAIN)%`. Missing fields are `null`.
//!
//! Determinism: a `json_format` is a `google.protobuf.Struct`, whose prost type is a
//! `HashMap` (random encoding order). Resource versions are content hashes, so the format is
//! encoded here by hand, keys sorted: the same registry always yields the same bytes.

use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, grpc_service, socket_address, Address, GrpcService, Http2ProtocolOptions, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::trace::v3::{tracing::http, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::Tracing, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::opentelemetry::proto::common::v1::{any_value, AnyValue, KeyValue, KeyValueList};
use meshgate_core::audit::field;
use prost::{Message, Name};

use super::{pack, proto_duration};
use crate::registry::observability::Otel;
use crate::registry::Registry;

/// Cluster of the OTLP/gRPC collector.
pub const COLLECTOR_CLUSTER: &str = "meshgate-otel-collector";
const FILE_ACCESS_LOGGER: &str = "envoy.access_loggers.file";
const OTEL_ACCESS_LOGGER: &str = "envoy.access_loggers.open_telemetry";
const OTEL_TRACER: &str = "envoy.tracers.opentelemetry";
const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// One audit-log value: a format string, or a nested object.
enum Entry {
    Text(String),
    Object(Vec<(&'static str, Entry)>),
}

fn state(key: &str) -> Entry {
    Entry::Text(format!("%FILTER_STATE(wasm.{key}:PLAIN)%"))
}

fn text(s: &str) -> Entry {
    Entry::Text(s.to_string())
}

/// The audit line: one JSON object per HTTP exchange (one MCP message). Documented in the
/// docs/operations.md ("Audit log"); argument and result values are never part of it.
fn audit_format() -> Vec<(&'static str, Entry)> {
    vec![
        ("start_time", text("%START_TIME%")),
        ("request_id", text("%REQ(X-REQUEST-ID)%")),
        ("trace_id", text("%TRACE_ID%")),
        ("duration_ms", text("%DURATION%")),
        ("bytes_received", text("%BYTES_RECEIVED%")),
        ("bytes_sent", text("%BYTES_SENT%")),
        ("response_code", text("%RESPONSE_CODE%")),
        ("response_code_details", text("%RESPONSE_CODE_DETAILS%")),
        ("upstream_status", state(field::UPSTREAM_STATUS)),
        ("consumer", state(field::CONSUMER)),
        ("roles", state(field::ROLES)),
        (
            "mcp",
            Entry::Object(vec![
                ("method", state(field::METHOD)),
                ("server", state(field::SERVER)),
                ("kind", state(field::TARGET_KIND)),
                ("target", state(field::TARGET)),
            ]),
        ),
        ("decision", state(field::DECISION)),
        ("reason", state(field::REASON)),
        ("quota", state(field::QUOTA)),
        ("redactions", state(field::REDACTIONS)),
        ("redacted_total", state(field::REDACTED_TOTAL)),
        ("jsonrpc_error_code", state(field::ERROR_CODE)),
        ("upstream_jsonrpc_error_code", state(field::UPSTREAM_ERROR_CODE)),
        ("decision_us", state(field::DECISION_US)),
        ("arguments", state(field::ARGUMENTS)),
        ("pin_drift", state(field::PIN_DRIFT)),
    ]
}

/// The file audit log as bootstrap JSON, for the static bootstrap (empty when disabled).
/// The static bootstrap has no tracing: it needs the collector cluster, which only the
/// control plane renders.
pub fn access_log_json(registry: &Registry) -> serde_json::Value {
    fn to_json(entries: Vec<(&'static str, Entry)>) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = entries
            .into_iter()
            .map(|(k, e)| {
                let v = match e {
                    Entry::Text(t) => serde_json::Value::String(t),
                    Entry::Object(inner) => to_json(inner),
                };
                (k.to_string(), v)
            })
            .collect();
        serde_json::Value::Object(map)
    }
    let logs: Vec<serde_json::Value> = registry
        .observability
        .access_log_path
        .iter()
        .map(|path| {
            serde_json::json!({
                "name": FILE_ACCESS_LOGGER,
                "typed_config": {
                    "@type": FileAccessLog::type_url(),
                    "path": path,
                    "log_format": { "json_format": to_json(audit_format()) },
                }
            })
        })
        .collect();
    serde_json::Value::Array(logs)
}

/// Sets the HCM's access logs and tracing from the registry (nothing when all is off).
pub fn apply(registry: &Registry, hcm: &mut HttpConnectionManager) {
    let obs = &registry.observability;
    if let Some(path) = &obs.access_log_path {
        hcm.access_log.push(AccessLog {
            name: FILE_ACCESS_LOGGER.to_string(),
            config_type: Some(access_log::ConfigType::TypedConfig(file_access_log(path))),
            ..Default::default()
        });
    }
    let Some(otel) = &obs.otel else {
        return;
    };
    if otel.access_log {
        hcm.access_log.push(AccessLog {
            name: OTEL_ACCESS_LOGGER.to_string(),
            config_type: Some(access_log::ConfigType::TypedConfig(pack(&otel_access_log(otel)))),
            ..Default::default()
        });
    }
    hcm.tracing = Some(tracing(otel));
}

fn collector_service() -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
            cluster_name: COLLECTOR_CLUSTER.to_string(),
            ..Default::default()
        })),
        timeout: Some(proto_duration(Duration::from_secs(1))),
        ..Default::default()
    }
}

/// Span tags read from the same filter state as the access log. The filter writes them by
/// the end of the response at the latest (values written in `on_log` come too late for a span).
fn tracing(otel: &Otel) -> Tracing {
    let tag = |name: &str, key: &str| CustomTag {
        tag: name.to_string(),
        r#type: Some(custom_tag::Type::Value(format!("%FILTER_STATE(wasm.{key}:PLAIN)%"))),
    };
    Tracing {
        random_sampling: Some(Percent { value: otel.sampling_percent }),
        custom_tags: vec![
            tag("mcp.method", field::METHOD),
            tag("mcp.server", field::SERVER),
            tag("mcp.tool", field::TARGET),
            tag("mcp.target_kind", field::TARGET_KIND),
            tag("meshgate.consumer", field::CONSUMER),
            tag("meshgate.decision", field::DECISION),
            tag("meshgate.jsonrpc_error_code", field::ERROR_CODE),
        ],
        provider: Some(envoy_types::pb::envoy::config::trace::v3::tracing::Http {
            name: OTEL_TRACER.to_string(),
            config_type: Some(http::ConfigType::TypedConfig(pack(&OpenTelemetryConfig {
                grpc_service: Some(collector_service()),
                service_name: otel.service_name.clone(),
                ..Default::default()
            }))),
        }),
        ..Default::default()
    }
}

fn otel_access_log(otel: &Otel) -> OpenTelemetryAccessLogConfig {
    let string = |s: String| AnyValue { value: Some(any_value::Value::StringValue(s)) };
    let mut attributes = Vec::new();
    flatten("", audit_format(), &mut |key, value| {
        attributes.push(KeyValue { key, value: Some(string(value)), ..Default::default() });
    });
    OpenTelemetryAccessLogConfig {
        grpc_service: Some(collector_service()),
        resource_attributes: Some(KeyValueList {
            values: vec![KeyValue {
                key: "service.name".to_string(),
                value: Some(string(otel.service_name.clone())),
                ..Default::default()
            }],
        }),
        body: Some(string("mcp audit".to_string())),
        attributes: Some(KeyValueList { values: attributes }),
        stat_prefix: "meshgate_audit".to_string(),
        ..Default::default()
    }
}

/// Nested audit entries as dotted keys (`mcp.method`), for OTel attributes.
fn flatten(prefix: &str, entries: Vec<(&'static str, Entry)>, out: &mut dyn FnMut(String, String)) {
    for (key, entry) in entries {
        let key = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        match entry {
            Entry::Text(t) => out(key, t),
            Entry::Object(inner) => flatten(&key, inner, out),
        }
    }
}

/// The OTLP/gRPC collector's cluster (HTTP/2), when the registry names one.
pub fn collector_cluster(registry: &Registry) -> Option<Cluster> {
    let otel = registry.observability.otel.as_ref()?;
    let kind =
        if otel.host.parse::<std::net::IpAddr>().is_ok() { DiscoveryType::Static } else { DiscoveryType::StrictDns };
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())),
        })),
        ..Default::default()
    };
    Some(Cluster {
        name: COLLECTOR_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(proto_duration(Duration::from_secs(1))),
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        typed_extension_protocol_options: [(HTTP_PROTOCOL_OPTIONS_KEY.to_string(), pack(&options))]
            .into_iter()
            .collect(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: COLLECTOR_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: otel.host.clone(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(otel.port))),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `FileAccessLog { path, log_format: { json_format: <audit line> } }`, the format encoded
/// by hand with sorted keys (see the module docs).
fn file_access_log(path: &str) -> Any {
    let mut bytes = FileAccessLog { path: path.to_string(), ..Default::default() }.encode_to_vec();
    // SubstitutionFormatString.json_format = 2; FileAccessLog.log_format = 5.
    let mut format = Vec::new();
    len_field(2, &encode_struct(audit_format()), &mut format);
    len_field(5, &format, &mut bytes);
    Any { type_url: FileAccessLog::type_url(), value: bytes }
}

/// `google.protobuf.Struct`: repeated `fields = 1` map entries `{key = 1, value = 2}`, sorted.
fn encode_struct(mut entries: Vec<(&'static str, Entry)>) -> Vec<u8> {
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (key, entry) in entries {
        // google.protobuf.Value: string_value = 3, struct_value = 5.
        let mut value = Vec::new();
        match entry {
            Entry::Text(t) => len_field(3, t.as_bytes(), &mut value),
            Entry::Object(inner) => len_field(5, &encode_struct(inner), &mut value),
        }
        let mut map_entry = Vec::new();
        len_field(1, key.as_bytes(), &mut map_entry);
        len_field(2, &value, &mut map_entry);
        len_field(1, &map_entry, &mut out);
    }
    out
}

fn len_field(number: u64, data: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_key(number as u32, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{registry, try_registry};
    use envoy_types::pb::google::protobuf::{value, Struct};

    const MINIMAL: &str = "listener: { port: 0 }\nservers:\n  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }\n";

    fn hcm(registry: &Registry) -> HttpConnectionManager {
        let mut hcm = HttpConnectionManager::default();
        apply(registry, &mut hcm);
        hcm
    }

    #[test]
    fn defaults_to_a_file_audit_log_on_stdout_and_no_tracing() {
        let r = registry(MINIMAL);
        let hcm = hcm(&r);
        assert_eq!(hcm.access_log.len(), 1);
        assert_eq!(hcm.access_log[0].name, FILE_ACCESS_LOGGER);
        assert!(hcm.tracing.is_none());
        assert!(collector_cluster(&r).is_none());
        assert!(!r.filter.observability.consumer_label);
        let off = registry(&format!("{MINIMAL}observability:\n  access_log: {{ enabled: false }}\n"));
        assert!(self::hcm(&off).access_log.is_empty());
        assert_eq!(access_log_json(&off), serde_json::json!([]));
    }

    #[test]
    fn a_collector_adds_tracing_an_otel_log_and_its_cluster() {
        let r = registry(&format!(
            "{MINIMAL}observability:\n  access_log: {{ path: /var/log/meshgate/audit.log }}\n  \
             otel: {{ collector: 'otel.internal:4317', service_name: gw, access_log: true, sampling_percent: 10 }}\n  \
             metrics: {{ consumer_label: true }}\n"
        ));
        assert!(r.filter.observability.consumer_label);
        let hcm = hcm(&r);
        let names: Vec<&str> = hcm.access_log.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec![FILE_ACCESS_LOGGER, OTEL_ACCESS_LOGGER]);
        insta::assert_debug_snapshot!("observability_tracing", hcm.tracing);
        insta::assert_debug_snapshot!("observability_collector_cluster", collector_cluster(&r));
        let json = access_log_json(&r);
        assert_eq!(json[0]["typed_config"]["path"], "/var/log/meshgate/audit.log");
        assert_eq!(
            json[0]["typed_config"]["log_format"]["json_format"]["mcp"]["method"],
            "%FILTER_STATE(wasm.mcp_method:PLAIN)%"
        );
    }

    #[test]
    fn bad_settings_are_reported_with_their_line() {
        let e = try_registry(&format!("{MINIMAL}observability:\n  otel: {{ collector: 'no-port' }}\n")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("registry.yaml:5") && text.contains("observability.otel.collector"), "{text}");
        let e = try_registry(&format!("{MINIMAL}observability:\n  tracing: {{}}\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = try_registry(&format!(
            "{MINIMAL}observability:\n  otel: {{ collector: '127.0.0.1:4317', sampling_percent: 150 }}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("150 is out of range"), "{e}");
    }

    #[test]
    fn hand_encoded_format_decodes_as_a_struct_with_every_field() {
        let any = file_access_log("/tmp/audit.log");
        let decoded = FileAccessLog::decode(any.value.as_slice()).unwrap();
        assert_eq!(decoded.path, "/tmp/audit.log");
        let Some(
            envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat::LogFormat(
                f,
            ),
        ) = decoded.access_log_format
        else {
            panic!("no log_format");
        };
        let Some(envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format::JsonFormat(s)) =
            f.format
        else {
            panic!("no json_format");
        };
        let text = |s: &Struct, k: &str| match s.fields.get(k).and_then(|v| v.kind.clone()) {
            Some(value::Kind::StringValue(t)) => t,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text(&s, "decision"), "%FILTER_STATE(wasm.mcp_decision:PLAIN)%");
        assert_eq!(text(&s, "trace_id"), "%TRACE_ID%");
        let Some(value::Kind::StructValue(mcp)) = s.fields.get("mcp").and_then(|v| v.kind.clone()) else {
            panic!("no mcp object");
        };
        assert_eq!(text(&mcp, "target"), "%FILTER_STATE(wasm.mcp_target:PLAIN)%");
        // Deterministic bytes.
        assert_eq!(file_access_log("/tmp/audit.log"), any);
    }
}
