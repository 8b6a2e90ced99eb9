//! `stats_config` for every bootstrap: turns the filter's `.<label>.<value>` metric name
//! pairs ([`meshgate_core::audit::metric`]) into Prometheus labels.
//!
//! Stats tags are bootstrap-only in Envoy (no xDS), so both renderers include this. The
//! regexes match the full internal name, `wasmcustom.` prefix included; the first capture
//! is removed from the name, the second is the label value. Label values are sanitized by
//! the filter to `[A-Za-z0-9_-]`, so `[^.]+` always captures one whole value.

use serde_json::{json, Value};

/// Labels the filter encodes in metric names, and where they may sit.
const TAGS: &[(&str, &str)] = &[
    ("method", r"^wasmcustom\.meshgate\.\w+(\.method\.([^.]+))"),
    ("server", r"^wasmcustom\.meshgate\.\w+(\.server\.([^.]+))"),
    ("tool", r"^wasmcustom\.meshgate\.\w+\.server\.[^.]+(\.tool\.([^.]+))"),
    ("decision", r"^wasmcustom\.meshgate\.\w+\.\S*?(\.decision\.([^.]+))"),
    ("detector", r"^wasmcustom\.meshgate\.redactions\.\S*?(\.detector\.([^.]+))$"),
    ("code", r"^wasmcustom\.meshgate\.upstream_errors\.\S*?(\.code\.([^.]+))$"),
    ("consumer", r"^wasmcustom\.meshgate\.tool_calls\.\S*?(\.consumer\.([^.]+))$"),
    ("backend", r"^wasmcustom\.meshgate\.fan_out_omissions\.\S*?(\.backend\.([^.]+))$"),
    ("kind", r"^wasmcustom\.meshgate\.pin_drift\.\S*?(\.kind\.([^.]+))"),
    ("change", r"^wasmcustom\.meshgate\.pin_drift\.\S*?(\.change\.([^.]+))$"),
    ("outcome", r"^wasmcustom\.meshgate\.upstream_token\.\S*?(\.outcome\.([^.]+))$"),
];

/// Decision time buckets, microseconds (Envoy's default buckets are milliseconds-shaped).
const DECISION_TIME_BUCKETS_US: &[f64] =
    &[10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 100000.0];

pub fn stats_config() -> Value {
    let tags: Vec<Value> = TAGS.iter().map(|(name, regex)| json!({ "tag_name": name, "regex": regex })).collect();
    json!({
        "stats_tags": tags,
        "histogram_bucket_settings": [{
            "match": { "prefix": "wasmcustom.meshgate.decision_time_us" },
            "buckets": DECISION_TIME_BUCKETS_US,
        }],
    })
}

/// Envoy's runtime flag that names the native filter's Prometheus series like the wasm
/// build's: without it a dynamic module's stats are `envoy_<namespace>_<name>`; with it the
/// namespace (`wasmcustom`, as the wasm build's) and `envoy_` are dropped, exactly as Envoy
/// does for wasm's custom stats: `meshgate_tool_calls{...}` from either build. Runtime
/// flags are bootstrap-only, so every bootstrap meshgate renders carries it.
pub const STRIP_CUSTOM_STAT_PREFIX: &str = "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";

/// The bootstrap's `layered_runtime`: the static layer with [`STRIP_CUSTOM_STAT_PREFIX`].
pub fn layered_runtime() -> Value {
    json!({
        "layers": [{ "name": "meshgate", "static_layer": { STRIP_CUSTOM_STAT_PREFIX: true } }]
    })
}
