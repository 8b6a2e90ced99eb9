//! Human approval for dangerous tools: which `tools/call`s wait for a person's approval,
//! what an approval binds to, the check the filter asks meshgate, and the answers the
//! caller gets.
//!
//! ```text
//! agent ─▶ Envoy [meshgate filter: RBAC, limits, then an approval rule matches]
//!              │ POST /meshgate.approvals.v1/check (callout to the `meshgate-xds` cluster:
//!              │ the same port and trust as ADS and the rate-limit service)
//!              ▼
//!           meshgate: a usable approval for (consumer, server/tool, argument hash)?
//!              approved  → consumed (single use) and the call is forwarded
//!              pending   → JSON-RPC -32042 (URL elicitation required) with the page URL
//!              rejected  → JSON-RPC -32003 with the approver's reason
//! ```
//!
//! Invariants:
//! - an approval binds the consumer, `server/tool` and the SHA-256 of the arguments'
//!   canonical JSON ([`crate::pinning::canonical`], the pin lockfile's canonical form):
//!   other arguments, another tool or another caller need their own approval;
//! - a call an approval rule matches is forwarded only after meshgate answered
//!   `approved`; any other answer, no answer, or an answer that is not exactly one of
//!   [`CheckAnswer`]'s shapes refuses it (fail closed);
//! - calls no rule matches cost one lookup in the (usually empty) rule list: no callout.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{ConfigError, RawRedactionScope};
use crate::jsonrpc::{code, JsonKind};
use crate::policy::TargetPattern;
use crate::reject::{printable, Rejection};

/// Path of meshgate's approval check (on its gRPC port, next to ADS).
pub const CHECK_PATH: &str = "/meshgate.approvals.v1/check";
/// Request header a caller may send with the approval id it was given; the retry is then
/// checked against exactly that approval (a forged, foreign, expired or used id is refused).
/// Like every `x-meshgate-*` header it is never forwarded.
pub const APPROVAL_ID_HEADER: &str = "x-meshgate-approval";
/// How long an approval stays valid when a rule sets no `ttl`.
pub const DEFAULT_TTL_SECS: u64 = 600;
/// The longest `ttl` a rule may set (a day).
pub const MAX_TTL_SECS: u64 = 86_400;
/// How long the filter waits for meshgate's answer when the control plane sets no timeout.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 2_000;

/// One `approvals[]` entry, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovalRule {
    /// `[a-z0-9_-]+`, unique. Named in errors, audit lines, metrics and on the page.
    pub name: String,
    /// Which calls need an approval (policy syntax); absent lists mean every tool or caller.
    #[serde(default, rename = "match")]
    pub matches: RawRedactionScope,
    /// Who may approve.
    #[serde(default)]
    pub approvers: RawApprovers,
    /// How long a request and an approval stay valid, `N(s|m|h)` (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// `single` (default: one call per approval) or `ttl` (any number within the ttl).
    #[serde(default)]
    pub reuse: RawReuse,
    /// Show the approver the argument values (after the redaction rules). Default false.
    #[serde(default)]
    pub show_arguments: bool,
    /// Let an approver approve their own request. Default false.
    #[serde(default)]
    pub allow_self_approval: bool,
}

/// `approvals[].approvers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovers {
    /// A consumer holding any of these roles may approve or reject. Not empty.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// How often an approval may be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawReuse {
    /// Exactly one call.
    #[default]
    Single,
    /// Any number of identical calls until the approval expires.
    Ttl,
}

/// Where the filter asks meshgate (filled in by the control plane, not a registry key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovalService {
    /// Envoy cluster of meshgate's gRPC port (HTTP/2).
    pub cluster: String,
    /// `:authority` of the check.
    pub authority: String,
    /// How long to wait for the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Why an approval rule is invalid (also reported with the registry path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("\"{0}\" is not a duration of the form N(s|m|h)")]
    Syntax(String),
    #[error("\"{0}\" is outside 1s..24h")]
    Range(String),
}

/// Parses a rule's `ttl`: `N` followed by `s`, `m` or `h`, between 1 s and 24 h.
pub fn parse_ttl(text: &str) -> Result<u64, TtlError> {
    let syntax = || TtlError::Syntax(text.to_string());
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let n: u64 = digits.parse().map_err(|_| syntax())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => return Err(syntax()),
    };
    match secs {
        Some(s) if (1..=MAX_TTL_SECS).contains(&s) => Ok(s),
        _ => Err(TtlError::Range(text.to_string())),
    }
}

/// One compiled approval rule.
#[derive(Debug, Clone)]
pub struct ApprovalRule {
    pub name: String,
    /// Empty: every server and tool.
    tools: Vec<TargetPattern>,
    /// Empty: every caller.
    roles: Vec<String>,
    pub approver_roles: Vec<String>,
    pub ttl_secs: u64,
    pub reuse: RawReuse,
    pub show_arguments: bool,
    pub allow_self_approval: bool,
}

impl ApprovalRule {
    /// Whether a `tools/call` of `server/tool` by a caller holding `roles` needs this rule's approval.
    pub fn applies(&self, server: &str, tool: &str, roles: &[String]) -> bool {
        (self.roles.is_empty() || roles.iter().any(|r| self.roles.contains(r)))
            && (self.tools.is_empty() || self.tools.iter().any(|t| t.matches(server, tool)))
    }

    /// Whether a consumer holding `roles` may decide this rule's requests.
    pub fn approver(&self, roles: &[String]) -> bool {
        roles.iter().any(|r| self.approver_roles.contains(r))
    }
}

/// Approval rules are named as quota rules are: `[a-z0-9_-]+`, at most 63 characters.
pub use crate::quota::is_valid_rule_name;

/// Every approval rule, in order (the first that applies decides), and where to ask.
#[derive(Debug, Clone, Default)]
pub struct ApprovalRules {
    rules: Vec<ApprovalRule>,
    service: Option<RawApprovalService>,
}

impl ApprovalRules {
    /// Compiles `approvals[]`. `servers` are the known server names (a literal server in a
    /// pattern must be one of them); `known_role` tells whether the policy defines a role
    /// (every role a rule names must be one: a typo would leave a rule nobody can approve).
    /// Rules need `service` (the control plane sets it).
    pub fn compile(
        raw: &[RawApprovalRule],
        service: Option<&RawApprovalService>,
        servers: &HashSet<String>,
        known_role: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let mut rules: Vec<ApprovalRule> = Vec::with_capacity(raw.len());
        for (i, rule) in raw.iter().enumerate() {
            let path = format!("approvals[{i}]");
            if !is_valid_rule_name(&rule.name) {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    format!("\"{}\" is not a valid rule name ([a-z0-9_-]+, at most 63 characters)", rule.name),
                ));
            }
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    format!("approval rule \"{}\" is defined twice", rule.name),
                ));
            }
            let tools = TargetPattern::compile_all(&rule.matches.tools, servers, &format!("{path}.match.tools"))?;
            if rule.approvers.roles.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{path}.approvers.roles"),
                    "name at least one role whose consumers may approve",
                ));
            }
            for (key, roles) in [("match.roles", &rule.matches.roles), ("approvers.roles", &rule.approvers.roles)] {
                crate::policy::check_known_roles(roles, known_role, &format!("{path}.{key}"))?;
            }
            let ttl_secs = match &rule.ttl {
                Some(ttl) => parse_ttl(ttl).map_err(|e| ConfigError::invalid(format!("{path}.ttl"), e.to_string()))?,
                None => DEFAULT_TTL_SECS,
            };
            rules.push(ApprovalRule {
                name: rule.name.clone(),
                tools,
                roles: rule.matches.roles.clone(),
                approver_roles: rule.approvers.roles.clone(),
                ttl_secs,
                reuse: rule.reuse,
                show_arguments: rule.show_arguments,
                allow_self_approval: rule.allow_self_approval,
            });
        }
        if !rules.is_empty() && service.is_none() {
            return Err(ConfigError::invalid(
                "approval_service",
                "approval rules need meshgate's approval service (the control plane sets it)",
            ));
        }
        Ok(Self { rules, service: service.cloned() })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[ApprovalRule] {
        &self.rules
    }

    pub fn get(&self, name: &str) -> Option<&ApprovalRule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The rule a `tools/call` of `server/tool` by a caller holding `roles` needs, if any.
    pub fn rule_for(&self, server: &str, tool: &str, roles: &[String]) -> Option<&ApprovalRule> {
        self.rules.iter().find(|r| r.applies(server, tool, roles))
    }

    /// The callout asking meshgate about `check`.
    pub fn callout(&self, check: &CheckRequest) -> Option<crate::gateway::CalloutRequest> {
        let service = self.service.as_ref()?;
        let body = serde_json::to_vec(check).ok()?;
        Some(crate::gateway::CalloutRequest {
            cluster: service.cluster.clone(),
            headers: vec![
                (":method".to_string(), "POST".to_string()),
                (":path".to_string(), CHECK_PATH.to_string()),
                (":authority".to_string(), service.authority.clone()),
                ("content-type".to_string(), "application/json".to_string()),
            ],
            body,
            timeout_ms: service.timeout_ms.unwrap_or(DEFAULT_CHECK_TIMEOUT_MS),
        })
    }
}

/// What the filter asks meshgate for one guarded call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub rule: String,
    pub consumer: String,
    pub server: String,
    pub tool: String,
    /// `sha256:<hex>` of the arguments' canonical JSON ([`arguments_hash`]).
    pub arguments_sha256: String,
    /// The id the caller presented ([`APPROVAL_ID_HEADER`]), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The arguments as forwarded, only for rules with `show_arguments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
}

/// meshgate's answer to a [`CheckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckAnswer {
    /// A usable approval was found (and, for single use, consumed): forward the call.
    Approved { id: String },
    /// A person has to decide first: the request is recorded under `id`.
    Pending { id: String, url: String, expires_at: u64 },
    /// An approver rejected this call.
    Rejected { id: String, approver: String, reason: String },
    /// The presented approval id cannot be used for this call (forged, foreign, expired, used).
    Refused { message: String },
}

impl CheckAnswer {
    /// Reads meshgate's answer: HTTP 200 and exactly one of the shapes, else `Err` (the
    /// call is then refused as unavailable).
    pub fn read(status: u16, body: &[u8]) -> Result<Self, String> {
        if status != 200 {
            return Err(format!("meshgate answered HTTP {status}"));
        }
        serde_json::from_slice(body).map_err(|e| format!("meshgate's answer is not an approval decision: {e}"))
    }
}

/// Why a call's arguments have no approval hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("the request is not strict JSON: {0}")]
    Invalid(String),
    #[error("the arguments are not an object")]
    NotObject,
    #[error(transparent)]
    Canonical(#[from] crate::pinning::canonical::CanonicalError),
}

/// `sha256:<hex>` of the canonical JSON of `params.arguments` in a `tools/call` body (absent
/// arguments are `{}`: every SDK server reads them so), and the arguments' value.
pub fn arguments_hash(body: &[u8]) -> Result<(String, Value), HashError> {
    let strict = crate::jsonrpc::validate_strict(body).map_err(|e| HashError::Invalid(e.to_string()))?;
    let arguments = strict.root().get("params").and_then(|p| p.get("arguments"));
    let Some(arguments) = arguments else {
        return Ok((crate::pinning::canonical::PinHash::of_canonical("{}").to_string(), json!({})));
    };
    if arguments.kind() != JsonKind::Object {
        return Err(HashError::NotObject);
    }
    let hash = crate::pinning::canonical::hash(arguments)?;
    Ok((hash.to_string(), arguments.to_value()))
}

/// JSON-RPC code of "this call needs a person's approval first": MCP's
/// `URLElicitationRequiredError` (2025-11-25), so clients with URL-mode elicitation offer
/// the approval page to their user; every other client shows the message and `data`.
pub const APPROVAL_REQUIRED: i64 = code::URL_ELICITATION_REQUIRED;

/// The answer to a guarded call that has no usable approval (or cannot be checked).
pub fn rejection(answer: &CheckAnswer, rule: &str, target: &str, id: Option<&Value>) -> Option<Rejection> {
    let target = printable(target);
    let r = match answer {
        CheckAnswer::Approved { .. } => return None,
        CheckAnswer::Pending { id: approval, url, expires_at } => {
            let message = format!(
                "tool \"{target}\" needs a person's approval (rule \"{rule}\"): ask an approver to approve request \
                 {approval} at {url}, then retry the same call"
            );
            Rejection::approval_required(message.clone()).with_data(json!({
                "elicitations": [{
                    "mode": "url",
                    "elicitationId": approval,
                    "url": url,
                    "message": message,
                }],
                "approval": { "id": approval, "status": "pending", "rule": rule, "url": url, "expires_at": expires_at },
            }))
        }
        CheckAnswer::Rejected { id: approval, approver, reason } => Rejection::forbidden(format!(
            "tool \"{target}\" was rejected by {} (request {approval}): {}",
            printable(approver),
            printable(reason)
        ))
        .with_data(json!({
            "approval": { "id": approval, "status": "rejected", "rule": rule, "approver": approver, "reason": reason },
        })),
        CheckAnswer::Refused { message } => {
            Rejection::forbidden(format!("tool \"{target}\" is refused: {}", printable(message)))
                .with_data(json!({ "approval": { "status": "refused", "rule": rule } }))
        }
    };
    Some(r.with_id(id))
}

/// The answer to a guarded call when meshgate could not be asked or answered nonsense.
pub fn unavailable(target: &str, id: Option<&Value>) -> Rejection {
    Rejection::limiter_unavailable(&format!("the approval of tool \"{}\"", printable(target))).with_id(id)
}

/// JSON-RPC code of a rejected call, or of a presented approval id that cannot be used.
pub const REJECTED: i64 = code::FORBIDDEN;

#[cfg(test)]
mod tests;
