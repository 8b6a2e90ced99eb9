//! The registry's `observability` section: where the audit log goes, which OpenTelemetry
//! collector receives spans (and optionally audit records), and how metrics are labelled.
//!
//! ```yaml
//! observability:
//!   access_log: { path: /var/log/meshgate/audit.log }   # default /dev/stdout; enabled: false turns it off
//!   otel: { collector: 127.0.0.1:4317, service_name: meshgate, access_log: true, sampling_percent: 100 }
//!   metrics: { consumer_label: false }
//!   audit_values: ["crm/get_*"]       # these tools' arguments appear in the audit log; default none
//! ```
//! Two-step like the rest of the registry: [`RawObservability`] (serde, unknown keys
//! rejected) → [`Observability`] (validated). Envoy resources are built from it in
//! `translate::observability`.

use std::path::Path;

use serde::Deserialize;

use super::RegistryError;

/// Default audit-log destination: Envoy's stdout (`meshgate up` streams it, prefixed `envoy: `).
pub const DEFAULT_ACCESS_LOG_PATH: &str = "/dev/stdout";
/// Default `service.name` of spans and OTel log records.
pub const DEFAULT_SERVICE_NAME: &str = "meshgate";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub otel: Option<RawOtel>,
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    /// `server/tool` globs whose `tools/call` arguments the audit log carries (default none).
    /// Checked by the filter's validator.
    #[serde(default)]
    pub audit_values: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// File Envoy appends JSON lines to; relative paths resolve against the registry's folder.
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtel {
    /// `host:port` of an OTLP/gRPC collector.
    pub collector: String,
    #[serde(default)]
    pub service_name: Option<String>,
    /// Also send every audit record as an OTel log record (default false).
    #[serde(default)]
    pub access_log: Option<bool>,
    /// Share of requests traced, 0-100 (default 100).
    #[serde(default)]
    pub sampling_percent: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Label tool-call metrics with the consumer. Only for a bounded set of consumers.
    #[serde(default)]
    pub consumer_label: bool,
}

/// Validated `observability`.
#[derive(Debug, Clone, PartialEq)]
pub struct Observability {
    /// The audit log file (absolute path), or `None` when disabled.
    pub access_log_path: Option<String>,
    pub otel: Option<Otel>,
    pub consumer_label: bool,
}

impl Default for Observability {
    fn default() -> Self {
        Self { access_log_path: Some(DEFAULT_ACCESS_LOG_PATH.to_string()), otel: None, consumer_label: false }
    }
}

/// Where spans (and optionally audit records) are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Otel {
    /// Host name or IP of the collector. Non-empty.
    pub host: String,
    /// Non-zero.
    pub port: u16,
    pub service_name: String,
    pub access_log: bool,
    /// 0.0-100.0.
    pub sampling_percent: f64,
}

/// Validates `raw`; problems come back as `(path, error)` pairs, paths relative to the root.
pub(crate) fn validate(raw: &RawObservability, base_dir: &Path) -> Result<Observability, Vec<(String, RegistryError)>> {
    let mut problems = Vec::new();
    let mut out = Observability::default();
    if let Some(log) = &raw.access_log {
        out.access_log_path = match (log.enabled.unwrap_or(true), &log.path) {
            (false, _) => None,
            (true, None) => Some(DEFAULT_ACCESS_LOG_PATH.to_string()),
            (true, Some(p)) if p.trim().is_empty() || p.contains('\0') => {
                problems.push((
                    "observability.access_log.path".to_string(),
                    RegistryError::Observability(format!("invalid access log path {p:?}")),
                ));
                None
            }
            (true, Some(p)) => Some(base_dir.join(p).to_string_lossy().into_owned()),
        };
    }
    if let Some(otel) = &raw.otel {
        match crate::bootstrap::XdsBootstrap::parse_address(&otel.collector) {
            Ok((host, port)) => {
                let sampling_percent = otel.sampling_percent.unwrap_or(100.0);
                if !(0.0..=100.0).contains(&sampling_percent) {
                    problems.push((
                        "observability.otel.sampling_percent".to_string(),
                        RegistryError::Observability(format!("{sampling_percent} is out of range (0-100)")),
                    ));
                }
                out.otel = Some(Otel {
                    host,
                    port,
                    service_name: otel.service_name.clone().unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string()),
                    access_log: otel.access_log.unwrap_or(false),
                    sampling_percent,
                });
            }
            Err(reason) => problems.push((
                "observability.otel.collector".to_string(),
                RegistryError::Observability(format!("invalid collector address: {reason}")),
            )),
        }
    }
    out.consumer_label = raw.metrics.as_ref().is_some_and(|m| m.consumer_label);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
