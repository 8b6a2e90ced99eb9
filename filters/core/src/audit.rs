//! What one MCP exchange looked like, in the shapes operators already read: Envoy stats
//! (Prometheus), access-log fields (filter state) and span tags.
//!
//! The wasm filter builds one [`AuditRecord`] per governed HTTP exchange, from what the
//! gateway decided ([`AuditRecord::for_exchange`], [`AuditRecord::refused`]) and what the
//! upstream answered ([`AuditRecord::upstream_answer`], [`AuditRecord::finish`]). The record
//! then yields:
//! - [`AuditRecord::fields`]: `(key, value)` pairs the filter stores with
//!   `set_property(["<key>"])`, i.e. Envoy filter state `wasm.<key>`, which the access log's
//!   `%FILTER_STATE(wasm.<key>:PLAIN)%` and the tracer's custom tags read;
//! - [`AuditRecord::metrics`]: counters and histogram samples whose names carry their labels
//!   as `.<label>.<value>` pairs (`meshgate.tool_calls.server.crm.tool.get_customer.decision.allowed`);
//!   the bootstrap's `stats_tags` turn the pairs into Prometheus labels.
//!
//! Invariants: no argument or result value, token or API key ever enters a record (the
//! reason is the client-facing rejection message, which by [`crate::reject`]'s contract
//! names tools and kinds, never values). Every label value is sanitized to `[A-Za-z0-9_-]`
//! so a `.` in a tool name cannot break tag extraction, and bounded: methods outside the
//! MCP vocabulary become `other`, names are cut at [`MAX_LABEL_CHARS`].

use std::borrow::Cow;

use memchr::memmem;
use serde_json::Value;

use crate::gateway::{Exchange, PendingRequest};
use crate::jsonrpc::code;
use crate::mcp::{self, method, ResourceKind};
use crate::redact::RedactionCounts;
use crate::reject::{Refusal, Rejection};

pub mod batch;

/// Filter-state keys (single path segment: the host stores them as `wasm.<key>`).
/// At most this many drifts are written into one `mcp_pin_drift` value; the rest are counted.
pub const MAX_PIN_DRIFTS_AUDITED: usize = 16;

pub mod field {
    pub const METHOD: &str = "mcp_method";
    pub const SERVER: &str = "mcp_server";
    /// `tool`, `resource` or `prompt`.
    pub const TARGET_KIND: &str = "mcp_target_kind";
    /// The tool / prompt name or resource URI.
    pub const TARGET: &str = "mcp_target";
    pub const CONSUMER: &str = "mcp_consumer";
    /// Comma-separated.
    pub const ROLES: &str = "mcp_roles";
    pub const DECISION: &str = "mcp_decision";
    pub const REASON: &str = "mcp_reason";
    /// `charged:<rule>,<rule>` or `limited:<rule>`.
    pub const QUOTA: &str = "mcp_quota";
    /// `<detector>=<count>,...` over request and response.
    pub const REDACTIONS: &str = "mcp_redactions";
    pub const REDACTED_TOTAL: &str = "mcp_redacted_total";
    /// JSON-RPC error code of the answer the client got (the gateway's own or the upstream's).
    pub const ERROR_CODE: &str = "mcp_error_code";
    /// JSON-RPC error code the upstream itself answered with.
    pub const UPSTREAM_ERROR_CODE: &str = "mcp_upstream_error_code";
    /// HTTP status the upstream answered with (absent when it was never asked).
    pub const UPSTREAM_STATUS: &str = "mcp_upstream_status";
    /// Microseconds the filter spent deciding (request path).
    pub const DECISION_US: &str = "mcp_decision_us";
    /// `tools/call` arguments as compact JSON, only for tools opted in with
    /// `observability.audit_values` (after request redaction).
    pub const ARGUMENTS: &str = "mcp_arguments";
    /// Pin drift this exchange's list answer showed for the first time (once per change per
    /// Envoy; `; `-separated, at most [`super::MAX_PIN_DRIFTS_AUDITED`] then `… and N more`):
    /// server, kind, name, change, mode, pinned and seen hashes.
    pub const PIN_DRIFT: &str = "mcp_pin_drift";

    /// Every key, for the access-log format and tests.
    pub const ALL: [&str; 17] = [
        METHOD,
        SERVER,
        TARGET_KIND,
        TARGET,
        CONSUMER,
        ROLES,
        DECISION,
        REASON,
        QUOTA,
        REDACTIONS,
        REDACTED_TOTAL,
        ERROR_CODE,
        UPSTREAM_ERROR_CODE,
        UPSTREAM_STATUS,
        DECISION_US,
        ARGUMENTS,
        PIN_DRIFT,
    ];
}

/// Metric name roots (Envoy shows them with a `wasmcustom.` prefix).
pub mod metric {
    /// Counter `meshgate.requests.method.<m>.decision.<d>`.
    pub const REQUESTS: &str = "meshgate.requests";
    /// Counter `meshgate.tool_calls.server.<s>.tool.<t>.decision.<d>[.consumer.<c>]`.
    pub const TOOL_CALLS: &str = "meshgate.tool_calls";
    /// Counter `meshgate.redactions.server.<s>.tool.<t>.detector.<x>`, by matches.
    pub const REDACTIONS: &str = "meshgate.redactions";
    /// Histogram `meshgate.decision_time_us.method.<m>` (microseconds).
    pub const DECISION_TIME_US: &str = "meshgate.decision_time_us";
    /// Counter `meshgate.upstream_errors.server.<s>.code.<c>`.
    pub const UPSTREAM_ERRORS: &str = "meshgate.upstream_errors";
    /// Counter `meshgate.fan_out_omissions.server.<virtual server>.backend.<server>`: a
    /// backing server left out of a virtual server's discovery answer (down, slow, unreadable).
    pub const FAN_OUT_OMISSIONS: &str = "meshgate.fan_out_omissions";
    /// Counter `meshgate.pin_drift.server.<s>.kind.<tool|resource|prompt>.change.<c>`: a
    /// listed definition of a pinned server that drifted from its pin
    /// ([`crate::pinning::Change`]: `changed`, `unpinned`, `unreadable`, `flagged`), per
    /// list answer that showed it.
    pub const PIN_DRIFT: &str = "meshgate.pin_drift";
    /// Counter `meshgate.upstream_token.server.<s>.outcome.<o>`: how a call to a server with
    /// token exchange got the caller's upstream token ([`super::TokenOutcome`]:
    /// `exchanged`, `cache_hit`, `failed`).
    pub const UPSTREAM_TOKEN: &str = "meshgate.upstream_token";

    /// Every counter root.
    pub const COUNTERS: [&str; 7] =
        [REQUESTS, TOOL_CALLS, REDACTIONS, UPSTREAM_ERRORS, FAN_OUT_OMISSIONS, PIN_DRIFT, UPSTREAM_TOKEN];
    /// Every histogram root.
    pub const HISTOGRAMS: [&str; 1] = [DECISION_TIME_US];
}

/// Metric label names.
pub mod label {
    pub const METHOD: &str = "method";
    pub const DECISION: &str = "decision";
    pub const SERVER: &str = "server";
    pub const TOOL: &str = "tool";
    pub const CONSUMER: &str = "consumer";
    pub const DETECTOR: &str = "detector";
    pub const CODE: &str = "code";
    pub const BACKEND: &str = "backend";
    pub const KIND: &str = "kind";
    pub const CHANGE: &str = "change";
    pub const OUTCOME: &str = "outcome";
}

/// How a call to a server with token exchange got the caller's upstream token
/// (`meshgate.upstream_token`'s `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    /// This call made the exchange (one callout) and got a token.
    Exchanged,
    /// A cached token, or the token of a concurrent call's exchange: no callout.
    CacheHit,
    /// No token could be obtained: the call was refused.
    Failed,
}

impl TokenOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exchanged => "exchanged",
            Self::CacheHit => "cache_hit",
            Self::Failed => "failed",
        }
    }
}

/// Longest label value kept; longer names are cut (the metric stays, bounded).
pub const MAX_LABEL_CHARS: usize = 64;
/// The label value that replaces a tool or method outside the bounded set.
pub const OTHER: &str = "other";
/// Longest target (tool or prompt name, resource URI) written to an audit line; a longer one
/// is cut and ends with `…`. It is the caller's text, and a log line of a megabyte is one
/// that log shippers drop.
pub const MAX_AUDIT_TARGET_CHARS: usize = 1024;

/// Methods that get their own `method` label, with that label ([`sanitize`] of the
/// method, checked by a test); any other method becomes [`OTHER`].
const KNOWN_METHODS: &[(&str, &str)] = &[
    (method::INITIALIZE, "initialize"),
    (method::SERVER_DISCOVER, "server_discover"),
    (method::PING, "ping"),
    (method::TOOLS_CALL, "tools_call"),
    (method::TOOLS_LIST, "tools_list"),
    (method::RESOURCES_READ, "resources_read"),
    (method::RESOURCES_LIST, "resources_list"),
    (method::RESOURCES_TEMPLATES_LIST, "resources_templates_list"),
    (method::PROMPTS_GET, "prompts_get"),
    (method::PROMPTS_LIST, "prompts_list"),
    ("notifications/initialized", "notifications_initialized"),
    ("notifications/cancelled", "notifications_cancelled"),
    ("notifications/progress", "notifications_progress"),
    ("notifications/roots/list_changed", "notifications_roots_list_changed"),
    ("completion/complete", "completion_complete"),
    ("logging/setLevel", "logging_setLevel"),
    ("resources/subscribe", "resources_subscribe"),
    ("resources/unsubscribe", "resources_unsubscribe"),
];

/// The label value of an exchange without that part (no method, server, tool or consumer).
pub const NONE: &str = "none";

/// What the gateway made of an exchange, as the audit log and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// Let through and answered without a JSON-RPC error.
    #[default]
    Allowed,
    /// Refused by policy (RBAC), a size guardrail (413) or for a foreign Origin or Host
    /// (403, 421).
    Denied,
    /// No valid credentials (401).
    Unauthenticated,
    /// Refused by a local or global rate limit, quota or the in-flight limit (429).
    RateLimited,
    /// Let through with values redacted in the request or response.
    Redacted,
    /// A request or response refused because it carried a value of a blocking detector.
    Blocked,
    /// Malformed: not JSON-RPC, wrong content type, unknown path or HTTP method, header
    /// mismatch (400, 404, 405, 415).
    Invalid,
    /// The upstream answered with a JSON-RPC error or an HTTP 5xx, or the gateway could not
    /// check a limit (503).
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Unauthenticated => "unauthenticated",
            Decision::RateLimited => "rate_limited",
            Decision::Redacted => "redacted",
            Decision::Blocked => "blocked",
            Decision::Invalid => "invalid",
            Decision::Error => "error",
        }
    }

    /// The decision a gateway refusal stands for: by why it was refused, never by the HTTP
    /// status that carries it (a policy denial is answered with 200, see [`crate::reject`]).
    pub fn of_rejection(r: &Rejection) -> Self {
        match r.refusal {
            Refusal::Unauthenticated => Decision::Unauthenticated,
            Refusal::RateLimited => Decision::RateLimited,
            Refusal::Blocked => Decision::Blocked,
            Refusal::Denied | Refusal::ForeignOrigin => Decision::Denied,
            Refusal::Unavailable => Decision::Error,
            Refusal::Invalid => Decision::Invalid,
        }
    }
}

/// Options that change metric names (from the filter config's `observability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricOptions {
    /// Add `.consumer.<name>` to tool-call counters. Only for a bounded set of consumers.
    pub consumer_label: bool,
}

/// One metric update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricUpdate {
    /// Add `by` (≥ 1) to the counter `name`.
    Counter { name: String, by: u64 },
    /// Record one sample in the histogram `name`.
    Histogram { name: String, value: u64 },
}

impl MetricUpdate {
    pub fn name(&self) -> &str {
        match self {
            MetricUpdate::Counter { name, .. } | MetricUpdate::Histogram { name, .. } => name,
        }
    }
}

/// Everything known about one governed exchange. Never holds argument or result values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditRecord {
    /// JSON-RPC method, when the body was read.
    pub method: Option<String>,
    pub server: Option<String>,
    pub target_kind: Option<ResourceKind>,
    pub target: Option<String>,
    pub consumer: Option<String>,
    pub roles: Vec<String>,
    pub decision: Decision,
    /// Why, for anything but `allowed`.
    pub reason: Option<String>,
    pub quota: Option<String>,
    /// Whether the request body was rewritten by redaction.
    pub request_redacted: bool,
    /// Per-detector matches redacted in this exchange (request and response).
    pub redactions: RedactionCounts,
    /// JSON-RPC error code of the answer the client got.
    pub error_code: Option<i64>,
    /// JSON-RPC error code of the upstream's own answer.
    pub upstream_error_code: Option<i64>,
    pub upstream_status: Option<u16>,
    /// Time the filter spent deciding, microseconds.
    pub decision_us: u64,
    /// How the caller's upstream token was obtained (servers with token exchange only).
    pub upstream_token: Option<TokenOutcome>,
    /// `tools/call` arguments (compact JSON), only when the tool is opted in.
    pub arguments: Option<String>,
    /// A virtual server's discovery answer: the backing servers left out of it.
    pub fan_out_omissions: Vec<String>,
    /// Pin drift seen in this exchange's list answer: (kind noun, change) per drifted item.
    pub pin_drifts: Vec<(&'static str, &'static str)>,
    /// The `mcp_pin_drift` audit value: drift first seen in this exchange's answer.
    pub pin_drift: Option<String>,
}

impl AuditRecord {
    /// A request refused before its body was read (or whose body could not be read): the
    /// server is the path's, when it names one.
    pub fn for_path(route_prefix: &str, servers: &std::collections::HashSet<String>, path: &str) -> Self {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let server = path.strip_prefix(route_prefix).filter(|s| servers.contains(*s)).map(String::from);
        Self { server, ..Self::default() }
    }

    /// A POST whose body is known but was refused: method and target are read again here
    /// (a refusal is the cold path; an unreadable body leaves them empty).
    pub fn for_pending(pending: &PendingRequest, body: &[u8]) -> Self {
        let read = mcp::read_message(body).ok();
        Self::for_pending_message(pending, read.as_ref().map(|r| &r.message))
    }

    /// A POST whose body was read (`message`, when it could be) but was refused: the same
    /// record as [`Self::for_pending`] of that body, without reading it again.
    pub fn for_pending_message(pending: &PendingRequest, message: Option<&mcp::Message>) -> Self {
        let consumer = pending.consumer();
        let mut record = Self {
            server: Some(pending.server().to_string()),
            consumer: Some(consumer.name.clone()),
            roles: consumer.roles.clone(),
            ..Self::default()
        };
        if let Some(message) = message {
            record.set_message(message);
        }
        record
    }

    /// An exchange the gateway let through.
    pub fn for_exchange(exchange: &Exchange) -> Self {
        let mut record = Self {
            server: Some(exchange.server.clone()),
            consumer: Some(exchange.consumer.name.clone()),
            roles: exchange.consumer.roles.clone(),
            request_redacted: exchange.rewritten_request.is_some(),
            ..Self::default()
        };
        if let Some(message) = &exchange.message {
            record.set_message(message);
        }
        let rules: Vec<&str> = exchange
            .charges
            .local
            .iter()
            .map(|c| c.rule.as_str())
            .chain(exchange.charges.global.iter().map(|g| g.rule.as_str()))
            .collect();
        if !rules.is_empty() {
            record.quota = Some(format!("charged:{}", rules.join(",")));
        }
        record
    }

    /// Copies the `tools/call` arguments of `body` (the request as forwarded, i.e. after
    /// request redaction) when `server/tool` matches one of `opted_in`. Never otherwise.
    pub fn capture_arguments(&mut self, opted_in: &[crate::glob::Glob], body: &[u8]) {
        let (Some(ResourceKind::Tool), Some(server), Some(tool)) = (self.target_kind, &self.server, &self.target)
        else {
            return;
        };
        if opted_in.is_empty() {
            return;
        }
        let qualified = format!("{server}/{tool}");
        if !opted_in.iter().any(|g| g.matches(&qualified)) {
            return;
        }
        let arguments = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("params").and_then(|p| p.get("arguments")).cloned());
        self.arguments = arguments.map(|a| a.to_string());
    }

    fn set_message(&mut self, message: &mcp::Message) {
        self.method = message.method().map(String::from);
        if let Some(target) = message.target() {
            self.target_kind = Some(target.kind);
            self.target = Some(target.name.clone());
        }
    }

    /// The gateway refused the exchange with `r` (locally, or by rewriting the global rate
    /// limit's 429).
    pub fn refused(&mut self, r: &Rejection) {
        self.decision = Decision::of_rejection(r);
        self.reason = Some(r.message.clone());
        self.error_code = Some(r.code);
        if self.decision == Decision::RateLimited {
            let limit = r.data.as_ref().and_then(|d| d.get("limit")).and_then(Value::as_str).unwrap_or(OTHER);
            self.quota = Some(format!("limited:{limit}"));
        }
    }

    /// The upstream's answer, as far as seen: its HTTP status and, once found, the
    /// JSON-RPC error code it carried (the first one found wins).
    pub fn upstream_answer(&mut self, status: Option<u16>, error_code: Option<i64>) {
        if status.is_some() {
            self.upstream_status = status;
        }
        if self.upstream_error_code.is_none() {
            self.upstream_error_code = error_code;
        }
    }

    /// A response the gateway replaced by a blocking-redaction error.
    pub fn response_blocked(&mut self, detector_message: &str) {
        self.decision = Decision::Blocked;
        self.reason = Some(detector_message.to_string());
        self.error_code = Some(code::FORBIDDEN);
    }

    /// Settles the decision of an exchange that was let through, from what happened to its
    /// response. Refusals keep their decision.
    pub fn finish(&mut self) {
        if self.decision != Decision::Allowed {
            return;
        }
        if let Some(c) = self.upstream_error_code {
            self.decision = Decision::Error;
            self.error_code = Some(c);
            self.reason = Some(format!("upstream answered with JSON-RPC error {c}"));
        } else if self.upstream_status.is_some_and(|s| s >= 500) {
            self.decision = Decision::Error;
            self.reason = self.upstream_status.map(|s| format!("upstream answered with HTTP {s}"));
        } else if self.request_redacted || !self.redactions.is_empty() {
            self.decision = Decision::Redacted;
        }
    }

    /// `(filter-state key, value)` for every field that is known.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        self.for_each_field(self.decision_us, |k, v| out.push((k, v.to_string())));
        out
    }

    /// Calls `visit` with `(filter-state key, value)` for every field that is known, in
    /// [`field::ALL`]'s order, `decision_us` standing for [`Self::decision_us`] (the
    /// pipeline publishes before it is final). The values of [`Self::fields`], without an
    /// allocation per field: a host writes each one straight into Envoy.
    pub fn for_each_field(&self, decision_us: u64, mut visit: impl FnMut(&'static str, &str)) {
        let mut scratch = String::new();
        let mut number = Decimal::default();
        if let Some(method) = &self.method {
            visit(field::METHOD, method);
        }
        if let Some(server) = &self.server {
            visit(field::SERVER, server);
        }
        if let Some(kind) = self.target_kind {
            visit(field::TARGET_KIND, kind.noun());
        }
        if let Some(target) = &self.target {
            visit(field::TARGET, &bounded_target(target));
        }
        if let Some(consumer) = &self.consumer {
            visit(field::CONSUMER, consumer);
        }
        if !self.roles.is_empty() {
            for (i, role) in self.roles.iter().enumerate() {
                if i > 0 {
                    scratch.push(',');
                }
                scratch.push_str(role);
            }
            visit(field::ROLES, &scratch);
        }
        visit(field::DECISION, self.decision.as_str());
        if let Some(reason) = &self.reason {
            visit(field::REASON, reason);
        }
        if let Some(quota) = &self.quota {
            visit(field::QUOTA, quota);
        }
        scratch.clear();
        for (i, (detector, n)) in self.redactions.iter().enumerate() {
            if i > 0 {
                scratch.push(',');
            }
            scratch.push_str(detector);
            scratch.push('=');
            scratch.push_str(number.of(i128::from(n)));
        }
        visit(field::REDACTIONS, &scratch);
        visit(field::REDACTED_TOTAL, number.of(i128::from(self.redactions.total())));
        if let Some(c) = self.error_code {
            visit(field::ERROR_CODE, number.of(i128::from(c)));
        }
        if let Some(c) = self.upstream_error_code {
            visit(field::UPSTREAM_ERROR_CODE, number.of(i128::from(c)));
        }
        if let Some(status) = self.upstream_status {
            visit(field::UPSTREAM_STATUS, number.of(i128::from(status)));
        }
        visit(field::DECISION_US, number.of(i128::from(decision_us)));
        if let Some(arguments) = &self.arguments {
            visit(field::ARGUMENTS, arguments);
        }
        if let Some(drift) = &self.pin_drift {
            visit(field::PIN_DRIFT, drift);
        }
    }

    /// The metric updates this exchange makes. `overflow`: the host already holds its cap
    /// of distinct series, so label values a peer chooses (tool names, upstream error
    /// codes) collapse to [`OTHER`].
    pub fn metrics(&self, options: MetricOptions, overflow: bool) -> Vec<MetricUpdate> {
        self.metric_series(options, overflow).into_iter().map(MetricSeries::into_update).collect()
    }

    /// [`Self::metrics`] as labelled series, for hosts whose metrics carry labels of their
    /// own: the same series, the labels not yet folded into the name.
    pub fn metric_series(&self, options: MetricOptions, overflow: bool) -> Vec<MetricSeries> {
        let mut out = Vec::new();
        self.for_each_series(options, overflow, |kind, root, values, value| {
            let names = metric_labels(root, options);
            let labels = names.iter().zip(values).map(|(name, value)| (*name, (*value).to_string())).collect();
            out.push(MetricSeries { kind, root, labels, value });
        });
        out
    }

    /// Calls `visit(kind, root, label values, value)` for every series of
    /// [`Self::metric_series`], in its order, the values in [`metric_labels`]' order for
    /// the root, without an allocation for names that are clean already: the hot path of
    /// a host that sums or records series itself.
    pub fn for_each_series(
        &self,
        options: MetricOptions,
        overflow: bool,
        mut visit: impl FnMut(MetricKind, &'static str, &[&str], u64),
    ) {
        let method = self.method.as_deref().map_or(NONE, method_label);
        let decision = self.decision.as_str();
        let server = self.server.as_deref().map_or(Cow::Borrowed(NONE), sanitize_label);
        let tool = match (&self.target_kind, &self.target) {
            (Some(ResourceKind::Tool), Some(name)) if !overflow => sanitize_label(name),
            (Some(ResourceKind::Tool), Some(_)) => Cow::Borrowed(OTHER),
            _ => Cow::Borrowed(NONE),
        };
        visit(MetricKind::Counter, metric::REQUESTS, &[method, decision], 1);
        visit(MetricKind::Histogram, metric::DECISION_TIME_US, &[method], self.decision_us);
        if self.target_kind == Some(ResourceKind::Tool) {
            if options.consumer_label {
                let consumer = self.consumer.as_deref().map_or(Cow::Borrowed(NONE), sanitize_label);
                visit(MetricKind::Counter, metric::TOOL_CALLS, &[&server, &tool, decision, &consumer], 1);
            } else {
                visit(MetricKind::Counter, metric::TOOL_CALLS, &[&server, &tool, decision], 1);
            }
        }
        for (detector, n) in self.redactions.iter() {
            if n > 0 {
                visit(MetricKind::Counter, metric::REDACTIONS, &[&server, &tool, &sanitize_label(detector)], n);
            }
        }
        if let Some(c) = self.upstream_error_code {
            // The upstream chooses the code: past the cap it is one series like a tool name.
            let mut number = Decimal::default();
            let code = if overflow { OTHER } else { number.of(i128::from(c)) };
            visit(MetricKind::Counter, metric::UPSTREAM_ERRORS, &[&server, code], 1);
        }
        for backend in &self.fan_out_omissions {
            // Server names: configured, bounded, already clean.
            visit(MetricKind::Counter, metric::FAN_OUT_OMISSIONS, &[&server, backend], 1);
        }
        for (kind, change) in &self.pin_drifts {
            // Fixed sets of values: bounded.
            visit(MetricKind::Counter, metric::PIN_DRIFT, &[&server, kind, change], 1);
        }
        if let Some(outcome) = self.upstream_token {
            visit(MetricKind::Counter, metric::UPSTREAM_TOKEN, &[&server, outcome.as_str()], 1);
        }
    }
}

/// Whether a series counts or samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

/// One metric update as a root name (a [`metric`] constant) and its labels, in the order
/// [`MetricSeries::name`] writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSeries {
    pub kind: MetricKind,
    pub root: &'static str,
    pub labels: Vec<(&'static str, String)>,
    /// Counter increment, or histogram sample.
    pub value: u64,
}

impl MetricSeries {
    /// The name with its labels folded in: `<root>.<label>.<value>...`, the name the wasm
    /// build defines (the bootstrap's `stats_tags` turn the pairs back into labels).
    pub fn name(&self) -> String {
        let len = self.root.len() + self.labels.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
        let mut name = String::with_capacity(len);
        name.push_str(self.root);
        for (k, v) in &self.labels {
            name.push('.');
            name.push_str(k);
            name.push('.');
            name.push_str(v);
        }
        name
    }

    fn into_update(self) -> MetricUpdate {
        let name = self.name();
        match self.kind {
            MetricKind::Counter => MetricUpdate::Counter { name, by: self.value },
            MetricKind::Histogram => MetricUpdate::Histogram { name, value: self.value },
        }
    }
}

/// The label names of each metric root, in order; `consumer_label` adds `consumer` to
/// [`metric::TOOL_CALLS`]. A host that defines labelled metrics up front defines these.
pub fn metric_labels(root: &str, options: MetricOptions) -> &'static [&'static str] {
    match root {
        metric::REQUESTS => &[label::METHOD, label::DECISION],
        metric::DECISION_TIME_US => &[label::METHOD],
        metric::TOOL_CALLS if options.consumer_label => &[label::SERVER, label::TOOL, label::DECISION, label::CONSUMER],
        metric::TOOL_CALLS => &[label::SERVER, label::TOOL, label::DECISION],
        metric::REDACTIONS => &[label::SERVER, label::TOOL, label::DETECTOR],
        metric::UPSTREAM_ERRORS => &[label::SERVER, label::CODE],
        metric::FAN_OUT_OMISSIONS => &[label::SERVER, label::BACKEND],
        metric::PIN_DRIFT => &[label::SERVER, label::KIND, label::CHANGE],
        metric::UPSTREAM_TOKEN => &[label::SERVER, label::OUTCOME],
        _ => &[],
    }
}

/// `target`, cut to [`MAX_AUDIT_TARGET_CHARS`] characters (then ending with `…`).
pub fn bounded_target(target: &str) -> Cow<'_, str> {
    // Fewer bytes than the limit in characters: nothing to cut, nothing to count.
    if target.len() <= MAX_AUDIT_TARGET_CHARS {
        return Cow::Borrowed(target);
    }
    match target.char_indices().nth(MAX_AUDIT_TARGET_CHARS) {
        None => Cow::Borrowed(target),
        Some((cut, _)) => Cow::Owned(format!("{}…", &target[..cut])),
    }
}

/// A decimal integer written into a buffer of its own (audit fields are written once per
/// exchange; `to_string` would allocate each time).
struct Decimal {
    digits: [u8; 40],
}

impl Default for Decimal {
    fn default() -> Self {
        Self { digits: [0; 40] }
    }
}

impl Decimal {
    /// `n` in decimal, valid until the next call.
    fn of(&mut self, n: i128) -> &str {
        let mut at = self.digits.len();
        let mut rest = n.unsigned_abs();
        loop {
            at -= 1;
            self.digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            at -= 1;
            self.digits[at] = b'-';
        }
        std::str::from_utf8(&self.digits[at..]).unwrap_or_default()
    }
}

/// A metric label value: `[A-Za-z0-9_-]` only (anything else, `.` included, becomes `_`),
/// at most [`MAX_LABEL_CHARS`] characters, never empty.
pub fn sanitize(value: &str) -> String {
    sanitize_label(value).into_owned()
}

/// [`sanitize`], borrowing `value` when it is a clean label already (names almost always
/// are: a byte check and no copy).
pub fn sanitize_label(value: &str) -> Cow<'_, str> {
    let clean = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if !value.is_empty() && value.len() <= MAX_LABEL_CHARS && value.bytes().all(clean) {
        return Cow::Borrowed(value);
    }
    let out: String =
        value.chars().take(MAX_LABEL_CHARS).map(|c| if c.is_ascii() && clean(c as u8) { c } else { '_' }).collect();
    if out.is_empty() {
        Cow::Borrowed("_")
    } else {
        Cow::Owned(out)
    }
}

/// The `method` label: MCP's own methods sanitized (`tools/call` → `tools_call`), anything
/// else [`OTHER`], so a client cannot mint new metrics by inventing methods.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS.iter().find(|(known, _)| *known == method).map_or(OTHER, |(_, label)| label)
}

/// Every value the `method` label can take ([`method_label`]'s, and [`NONE`] for an
/// exchange without a readable method): a host can define one series per value up front.
pub fn method_labels() -> impl Iterator<Item = &'static str> {
    KNOWN_METHODS.iter().map(|(_, label)| *label).chain([OTHER, NONE])
}

/// The JSON-RPC error code in an upstream message: a JSON body, or the first SSE event
/// whose data is a JSON-RPC error. `None` for results, notifications, and anything that
/// does not parse (e.g. a partial chunk).
pub fn response_error_code(bytes: &[u8]) -> Option<i64> {
    // Only a message with an `error` member carries a code. JSON spells that key `"error"`
    // unless its letters are escaped (`\u0065rror`): bytes holding neither cannot carry one,
    // so the common answer (a result) is settled by a scan instead of a parse.
    if memmem::find(bytes, b"\"error\"").is_none() && memmem::find(bytes, b"\\u").is_none() {
        return None;
    }
    let code_of = |v: &Value| v.get("error").and_then(|e| e.get("code")).and_then(Value::as_i64);
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return code_of(&v);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find_map(|v| code_of(&v))
}

#[cfg(test)]
mod tests;
