//! Rate limits and quotas on tool calls: which rules a call is charged to ([`QuotaRules`])
//! and the exact counter arithmetic ([`arithmetic`]) the host runs under compare-and-swap.
//!
//! A `tools/call` is charged to *every* rule that matches it (server/tool globs and caller
//! roles); it is admitted only if every one admits it. Each rule keeps one counter per
//! [`QuotaKey`] value. `scope: local` counters live in the Envoy's shared data; `scope: global`
//! counters live in meshgate's rate-limit service (Redis), reached through Envoy's
//! `ratelimit` filter with the [`QuotaRule::counter_key`] as descriptor value.

//!
//! The pure decision is [`QuotaRules::charges`]: the local counters a call takes from
//! ([`LocalCharge`], each with its shared-data key) and the global descriptors it carries
//! ([`GlobalDescriptor`], one request header per rule). The host runs [`Limit::take`] on
//! each local counter under compare-and-swap and answers a refusal with
//! [`LocalCharge::rejection`].
//!
//! Several local rules are charged in configuration order and the first refusal stops the
//! call; counters charged before it stay charged (the call was attempted). That can only
//! under-admit later calls, never over-admit: each counter is exact on its own.

pub mod arithmetic;

use std::collections::HashSet;

pub use arithmetic::{parse_rate, Limit, RateError, State, Taken};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, RawQuotaKey, RawQuotaRule, RawQuotaScope};
use crate::policy::TargetPattern;
use crate::reject::{printable, Rejection};

/// Request headers under this prefix are Meshgate's own: the filter removes any a client
/// sends (anti-spoofing) before it adds its own.
pub const RESERVED_HEADER_PREFIX: &str = "x-meshgate-";
/// Prefix of the request header carrying a global rule's descriptor value:
/// `x-meshgate-rl-<rule name>: <counter key>`. Read by Envoy's `ratelimit` filter.
pub const GLOBAL_HEADER_PREFIX: &str = "x-meshgate-rl-";
/// Response header Envoy's `ratelimit` filter sets on its 429.
pub const ENVOY_RATELIMITED_HEADER: &str = "x-envoy-ratelimited";
/// Response header the rate-limit service sets to name the rule that refused.
pub const LIMIT_RULE_RESPONSE_HEADER: &str = "x-meshgate-limit-rule";
/// Response header the rate-limit service sets when it refused because its store (Redis)
/// was unavailable and the failure mode is `deny`; value [`STORE_UNAVAILABLE`].
pub const LIMIT_ERROR_RESPONSE_HEADER: &str = "x-meshgate-limit-error";
/// The one value of [`LIMIT_ERROR_RESPONSE_HEADER`] meshgate sends.
pub const STORE_UNAVAILABLE: &str = "store-unavailable";
/// Name used in `error.data.limit` for the in-flight limit.
pub const IN_FLIGHT_LIMIT_NAME: &str = "in_flight";
/// Prefix of every shared-data key Meshgate uses.
const SHARED_PREFIX: &str = "meshgate/";
/// Longest counter key kept as it is; longer ones are hashed (see [`QuotaRule::counter_key`]).
pub const MAX_PLAIN_COUNTER_KEY: usize = 192;

/// One local counter a call takes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCharge {
    pub rule: String,
    pub limit: Limit,
    pub key: QuotaKey,
    /// proxy-wasm shared-data key: `meshgate/q/<rule>/<limit fingerprint>/<counter key>`. The
    /// fingerprint changes whenever the rule's limit or key kind does, so an edited rule
    /// starts with fresh counters instead of misreading old state.
    pub shared_key: String,
    /// Length of `shared_key`'s rule prefix (`meshgate/q/<rule>/<limit fingerprint>/`).
    prefix_len: usize,
}

impl LocalCharge {
    /// The rule's one overflow counter, `meshgate/q/<rule>/<limit fingerprint>/!overflow`:
    /// shared data cannot forget a key, so once `limits.max_local_counters` keys exist, a
    /// call whose own counter does not exist yet is charged here instead (fail closed: those
    /// callers share one budget; memory stays bounded). Built only when needed.
    pub fn overflow_key(&self) -> String {
        format!("{}!overflow", self.shared_key.get(..self.prefix_len).unwrap_or_default())
    }

    /// The answer to a call this counter refused: HTTP 429, `Retry-After`, JSON-RPC -32029.
    pub fn rejection(&self, retry_after_secs: u64, id: Option<&Value>) -> Rejection {
        let retry = retry_after_secs.max(1);
        let message = format!(
            "rate limit \"{}\" ({}) exceeded {}; retry in {retry} s",
            self.rule,
            self.limit.describe(),
            self.key.scope_phrase()
        );
        Rejection::rate_limited(&self.rule, retry, message).with_id(id)
    }
}

/// A global rule's descriptor for Envoy's `ratelimit` filter, sent as a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalDescriptor {
    pub rule: String,
    /// `x-meshgate-rl-<rule>` (rule names are `[a-z0-9_-]+`, valid header names).
    pub header: String,
    /// [`QuotaRule::counter_key`]: percent-encoded, header-safe.
    pub value: String,
}

/// What one admitted-by-policy `tools/call` is charged to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Charges {
    /// Counted by the filter, in configuration order.
    pub local: Vec<LocalCharge>,
    /// Counted by the rate-limit service; the filter only adds the headers.
    pub global: Vec<GlobalDescriptor>,
}

impl Charges {
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.global.is_empty()
    }
}

/// The shared-data key of a consumer's in-flight counter (not tied to any rule: the
/// number of open calls stays true when the limit changes).
pub fn in_flight_key(consumer: &str) -> String {
    let mut key = format!("{SHARED_PREFIX}inflight/");
    push_encoded(&mut key, consumer);
    key
}

/// The answer to a call over the consumer's in-flight limit: HTTP 429, `Retry-After: 1`.
pub fn in_flight_rejection(max: u64, id: Option<&Value>) -> Rejection {
    let message = format!(
        "in-flight limit ({max} concurrent calls per consumer) reached for this consumer; retry when a call completes"
    );
    Rejection::rate_limited(IN_FLIGHT_LIMIT_NAME, 1, message).with_id(id)
}

/// Stored bytes of an in-flight counter (8 bytes little-endian); anything else reads as 0.
pub fn decode_count(bytes: Option<&[u8]>) -> u64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// [`decode_count`]'s inverse.
pub fn encode_count(count: u64) -> [u8; 8] {
    count.to_le_bytes()
}

/// A stable 64-bit FNV-1a fingerprint (identical on every worker and every build).
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The first value of a header that parses as whole seconds.
fn parse_secs(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.trim().parse::<u64>().ok())
}

/// What one counter of a rule is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKey {
    Consumer,
    ConsumerTool,
    Tool,
}

impl QuotaKey {
    fn scope_phrase(self) -> &'static str {
        match self {
            QuotaKey::Consumer => "for this consumer",
            QuotaKey::ConsumerTool => "for this consumer and tool",
            QuotaKey::Tool => "for this tool",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            QuotaKey::Consumer => "c",
            QuotaKey::ConsumerTool => "ct",
            QuotaKey::Tool => "t",
        }
    }
}

/// Where a rule's counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    /// This Envoy's shared data, all workers.
    Local,
    /// meshgate's rate-limit service, all Envoys.
    Global,
}

/// One compiled quota rule.
#[derive(Debug, Clone)]
pub struct QuotaRule {
    /// Unique within the configuration, `[a-z0-9_-]+`.
    pub name: String,
    /// Empty: every server and tool.
    tools: Vec<TargetPattern>,
    /// Empty: every caller.
    roles: Vec<String>,
    pub limit: Limit,
    pub key: QuotaKey,
    pub scope: QuotaScope,
    /// What every shared-data key of this rule starts with ([`Self::shared_key`]), built
    /// once with the configuration instead of per call.
    shared_prefix: String,
}

impl QuotaRule {
    fn new(
        name: String,
        tools: Vec<TargetPattern>,
        roles: Vec<String>,
        limit: Limit,
        key: QuotaKey,
        scope: QuotaScope,
    ) -> Self {
        let canonical = match limit {
            Limit::Bucket { per_period, period_secs, burst } => format!("b:{per_period}:{period_secs}:{burst}"),
            Limit::Window { limit, period_secs } => format!("w:{limit}:{period_secs}"),
        };
        let print = fingerprint(&format!("{canonical}:{}", key.tag()));
        let shared_prefix = format!("{SHARED_PREFIX}q/{name}/{print:016x}/");
        Self { name, tools, roles, limit, key, scope, shared_prefix }
    }

    /// Whether a `tools/call` of `server/tool` by a caller holding `roles` counts against this rule.
    pub fn applies(&self, server: &str, tool: &str, roles: &[String]) -> bool {
        (self.roles.is_empty() || roles.iter().any(|r| self.roles.contains(r)))
            && (self.tools.is_empty() || self.tools.iter().any(|t| t.matches(server, tool)))
    }

    /// The counter this call is charged to, unique per (rule key kind, consumer, server, tool)
    /// and safe as an HTTP header value: each component is percent-encoded (everything but
    /// `[A-Za-z0-9._~-]`) and components are joined with `/`, so distinct tuples never collide.
    /// A key longer than [`MAX_PLAIN_COUNTER_KEY`] (a tool name is the caller's text) becomes
    /// `!` + 128 bits of its SHA-256: bounded, and never equal to a plain key (`!` is always
    /// encoded). The rule name is *not* part of it; callers namespace by rule.
    pub fn counter_key(&self, consumer: &str, server: &str, tool: &str) -> String {
        let mut out = String::new();
        match self.key {
            QuotaKey::Consumer => push_encoded(&mut out, consumer),
            QuotaKey::ConsumerTool => {
                push_encoded(&mut out, consumer);
                out.push('/');
                push_encoded(&mut out, server);
                out.push('/');
                push_encoded(&mut out, tool);
            }
            QuotaKey::Tool => {
                push_encoded(&mut out, server);
                out.push('/');
                push_encoded(&mut out, tool);
            }
        }
        if out.len() > MAX_PLAIN_COUNTER_KEY {
            let digest = Sha256::digest(out.as_bytes());
            return format!("!{}", hex::encode(&digest[..16]));
        }
        out
    }

    /// The shared-data key of this rule's counter for a call (see [`LocalCharge::shared_key`]).
    /// `<prefix>q/<rule>/<fingerprint of the limit and key kind>/<counter key>`: a changed
    /// limit starts fresh counters.
    pub fn shared_key(&self, counter_key: &str) -> String {
        let mut key = String::with_capacity(self.shared_prefix.len() + counter_key.len());
        key.push_str(&self.shared_prefix);
        key.push_str(counter_key);
        key
    }
}

fn push_encoded(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(text.len());
    // Runs of unreserved bytes (ASCII, so each run is whole characters) are copied at once.
    let mut run = 0;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            continue;
        }
        out.push_str(text.get(run..i).unwrap_or_default());
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
        run = i + 1;
    }
    out.push_str(text.get(run..).unwrap_or_default());
}

/// What Envoy's `ratelimit` filter and meshgate's rate-limit service said when they refused
/// a call: the response header values, as received (untrusted text).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalRefusal<'a> {
    /// [`LIMIT_RULE_RESPONSE_HEADER`].
    pub rule: Option<&'a str>,
    /// `retry-after`.
    pub retry_after: Option<&'a str>,
    /// `x-ratelimit-reset`.
    pub ratelimit_reset: Option<&'a str>,
    /// [`LIMIT_ERROR_RESPONSE_HEADER`].
    pub error: Option<&'a str>,
}

/// Whether `name` can name a quota or approval rule: `[a-z0-9_-]+`, at most 63 characters.
pub fn is_valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The compiled `quotas` section, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct QuotaRules {
    rules: Vec<QuotaRule>,
}

impl QuotaRules {
    /// Validates and compiles the `quotas` rules. `servers` are the known server names,
    /// `known_role` tells whether the policy defines a role. Error paths are `quotas[i].rate`,
    /// `quotas[i].match.tools[j]`, and so on.
    pub fn compile(
        raw: &[RawQuotaRule],
        servers: &HashSet<String>,
        known_role: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(raw.len());
        for (i, rule) in raw.iter().enumerate() {
            let path = format!("quotas[{i}]");
            let name = rule.name.clone().unwrap_or_else(|| format!("quota-{i}"));
            if !is_valid_rule_name(&name) {
                return Err(ConfigError::invalid(
                    format!("{path}.name"),
                    format!("\"{name}\" is not a valid rule name ([a-z0-9_-]+, at most 63 characters)"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(ConfigError::invalid(format!("{path}.name"), format!("duplicate rule name \"{name}\"")));
            }
            let tools = TargetPattern::compile_all(&rule.matches.tools, servers, &format!("{path}.match.tools"))?;
            crate::policy::check_known_roles(&rule.matches.roles, known_role, &format!("{path}.match.roles"))?;
            let limit = match (&rule.rate, &rule.quota) {
                (Some(rate), None) => {
                    let (per_period, period_secs) =
                        parse_rate(rate).map_err(|e| ConfigError::invalid(format!("{path}.rate"), e.to_string()))?;
                    let burst = match rule.burst {
                        Some(0) => return Err(ConfigError::invalid(format!("{path}.burst"), "must be at least 1")),
                        Some(b) => b,
                        None => per_period,
                    };
                    Limit::Bucket { per_period, period_secs, burst }
                }
                (None, Some(quota)) => {
                    if rule.burst.is_some() {
                        return Err(ConfigError::invalid(
                            format!("{path}.burst"),
                            "burst applies to `rate` (token bucket), not to `quota` (fixed window)",
                        ));
                    }
                    let (limit, period_secs) =
                        parse_rate(quota).map_err(|e| ConfigError::invalid(format!("{path}.quota"), e.to_string()))?;
                    Limit::Window { limit, period_secs }
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        path,
                        "set either `rate` (token bucket) or `quota` (fixed window), not both",
                    ))
                }
                (None, None) => {
                    return Err(ConfigError::invalid(path, "needs `rate` (token bucket) or `quota` (fixed window)"))
                }
            };
            let key = match rule.key {
                RawQuotaKey::Consumer => QuotaKey::Consumer,
                RawQuotaKey::ConsumerTool => QuotaKey::ConsumerTool,
                RawQuotaKey::Tool => QuotaKey::Tool,
            };
            let scope = match rule.scope {
                RawQuotaScope::Local => QuotaScope::Local,
                RawQuotaScope::Global => QuotaScope::Global,
            };
            rules.push(QuotaRule::new(name, tools, rule.matches.roles.clone(), limit, key, scope));
        }
        Ok(Self { rules })
    }

    /// The rules a `tools/call` of `server/tool` by a caller holding `roles` is charged to.
    pub fn matching<'a>(
        &'a self,
        server: &'a str,
        tool: &'a str,
        roles: &'a [String],
    ) -> impl Iterator<Item = &'a QuotaRule> + 'a {
        self.rules.iter().filter(move |r| r.applies(server, tool, roles))
    }

    /// Step "charge" of a `tools/call` the policy allowed: the local counters to take from
    /// and the global descriptors to send, for every matching rule, in configuration order.
    pub fn charges(&self, consumer: &str, server: &str, tool: &str, roles: &[String]) -> Charges {
        let mut charges = Charges::default();
        for rule in self.matching(server, tool, roles) {
            let counter = rule.counter_key(consumer, server, tool);
            match rule.scope {
                QuotaScope::Local => {
                    let shared_key = rule.shared_key(&counter);
                    let prefix_len = shared_key.len() - counter.len();
                    charges.local.push(LocalCharge {
                        rule: rule.name.clone(),
                        limit: rule.limit,
                        key: rule.key,
                        shared_key,
                        prefix_len,
                    })
                }
                QuotaScope::Global => charges.global.push(GlobalDescriptor {
                    rule: rule.name.clone(),
                    header: format!("{GLOBAL_HEADER_PREFIX}{}", rule.name),
                    value: counter,
                }),
            }
        }
        charges
    }

    /// The answer when Envoy's `ratelimit` filter refused a call (429 with
    /// `x-envoy-ratelimited`): JSON-RPC -32029 for the request, `Retry-After` from the
    /// response's `retry-after`, else `x-ratelimit-reset`, else 1 second. `rule` is the
    /// rate-limit service's `x-meshgate-limit-rule` header, when present.
    pub fn global_rejection(&self, refusal: &GlobalRefusal<'_>, id: Option<&Value>) -> Rejection {
        let retry = parse_secs(refusal.retry_after).or_else(|| parse_secs(refusal.ratelimit_reset)).unwrap_or(1).max(1);
        let rule = refusal.rule.map(str::trim).filter(|r| !r.is_empty());
        if refusal.error.is_some_and(|e| e.trim().eq_ignore_ascii_case(STORE_UNAVAILABLE)) {
            // Failure mode `deny`: nothing was counted, the call is refused because it could
            // not be checked. Say so, not "exceeded".
            let name = rule.map_or_else(|| "global".to_string(), printable);
            let message = format!(
                "rate limit \"{name}\" could not be checked: the fleet's limit store is unavailable \
                 and global limits fail closed; retry in {retry} s"
            );
            return Rejection::rate_limited(&name, retry, message)
                .with_header(LIMIT_ERROR_RESPONSE_HEADER, STORE_UNAVAILABLE.to_string())
                .with_id(id);
        }
        let (name, message) = match rule {
            Some(name) => match self.get(name).filter(|r| r.scope == QuotaScope::Global) {
                Some(r) => (
                    r.name.clone(),
                    format!(
                        "rate limit \"{}\" ({}) exceeded {}; retry in {retry} s",
                        r.name,
                        r.limit.describe(),
                        r.key.scope_phrase()
                    ),
                ),
                None => {
                    let name = printable(name);
                    let message = format!("rate limit \"{name}\" exceeded; retry in {retry} s");
                    (name, message)
                }
            },
            None => ("global".to_string(), format!("global rate limit exceeded; retry in {retry} s")),
        };
        Rejection::rate_limited(&name, retry, message).with_id(id)
    }

    /// The rule called `name`.
    pub fn get(&self, name: &str) -> Option<&QuotaRule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// All rules, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &QuotaRule> {
        self.rules.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawRedactionScope;

    fn servers() -> HashSet<String> {
        ["crm", "docs"].into_iter().map(String::from).collect()
    }

    fn known(role: &str) -> bool {
        role == "reader" || role == "admin"
    }

    fn rule(yaml_like: RawQuotaRule) -> Result<QuotaRules, ConfigError> {
        QuotaRules::compile(&[yaml_like], &servers(), &known)
    }

    #[test]
    fn compiles_rate_and_quota_rules() {
        let rules = QuotaRules::compile(
            &[
                RawQuotaRule {
                    matches: RawRedactionScope { tools: vec!["crm/*".into()], roles: vec!["reader".into()] },
                    rate: Some("60/m".into()),
                    burst: Some(10),
                    ..Default::default()
                },
                RawQuotaRule {
                    name: Some("daily".into()),
                    quota: Some("1000/d".into()),
                    key: RawQuotaKey::Consumer,
                    scope: RawQuotaScope::Global,
                    ..Default::default()
                },
            ],
            &servers(),
            &known,
        )
        .unwrap();
        let roles = vec!["reader".to_string()];
        let names: Vec<_> = rules.matching("crm", "search", &roles).map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["quota-0", "daily"]);
        let names: Vec<_> = rules.matching("docs", "search", &roles).map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["daily"]);
        assert!(rules.matching("crm", "search", &["admin".to_string()]).all(|r| r.name == "daily"));
        let first = rules.get("quota-0").unwrap();
        assert_eq!(first.limit, Limit::Bucket { per_period: 60, period_secs: 60, burst: 10 });
        assert_eq!((first.key, first.scope), (QuotaKey::ConsumerTool, QuotaScope::Local));
        let daily = rules.get("daily").unwrap();
        assert_eq!(daily.limit, Limit::Window { limit: 1000, period_secs: 86_400 });
        assert_eq!((daily.key, daily.scope), (QuotaKey::Consumer, QuotaScope::Global));
    }

    #[test]
    fn burst_defaults_to_the_rate_count() {
        let rules = rule(RawQuotaRule { rate: Some("5/s".into()), ..Default::default() }).unwrap();
        assert_eq!(rules.get("quota-0").unwrap().limit, Limit::Bucket { per_period: 5, period_secs: 1, burst: 5 });
    }

    #[test]
    fn refuses_bad_rules_with_their_path() {
        let cases = [
            (RawQuotaRule::default(), "quotas[0]", "needs `rate`"),
            (
                RawQuotaRule { rate: Some("1/s".into()), quota: Some("1/d".into()), ..Default::default() },
                "quotas[0]",
                "not both",
            ),
            (
                RawQuotaRule { rate: Some("60/fortnight".into()), ..Default::default() },
                "quotas[0].rate",
                "60/fortnight",
            ),
            (RawQuotaRule { quota: Some("0/d".into()), ..Default::default() }, "quotas[0].quota", "at least 1"),
            (
                RawQuotaRule { quota: Some("5/d".into()), burst: Some(3), ..Default::default() },
                "quotas[0].burst",
                "burst",
            ),
            (
                RawQuotaRule { rate: Some("5/s".into()), burst: Some(0), ..Default::default() },
                "quotas[0].burst",
                "at least 1",
            ),
            (
                RawQuotaRule { name: Some("Bad Name".into()), rate: Some("5/s".into()), ..Default::default() },
                "quotas[0].name",
                "Bad Name",
            ),
            (
                RawQuotaRule {
                    rate: Some("5/s".into()),
                    matches: RawRedactionScope { tools: vec!["billing/*".into()], roles: vec![] },
                    ..Default::default()
                },
                "quotas[0].match.tools[0]",
                "billing",
            ),
            (
                RawQuotaRule {
                    rate: Some("5/s".into()),
                    matches: RawRedactionScope { tools: vec![], roles: vec!["ghost".into()] },
                    ..Default::default()
                },
                "quotas[0].match.roles[0]",
                "ghost",
            ),
        ];
        for (raw, path, needle) in cases {
            let err = rule(raw.clone()).unwrap_err();
            assert_eq!(err.path(), Some(path), "{raw:?}");
            assert!(err.message().contains(needle), "{err} should mention {needle}");
        }
        let dup = RawQuotaRule { name: Some("a".into()), rate: Some("1/s".into()), ..Default::default() };
        let err = QuotaRules::compile(&[dup.clone(), dup], &servers(), &known).unwrap_err();
        assert_eq!(err.path(), Some("quotas[1].name"));
    }

    #[test]
    fn counter_keys_are_unambiguous_and_header_safe() {
        let rule_with = |key| {
            QuotaRule::new(
                "r".into(),
                vec![],
                vec![],
                Limit::Window { limit: 1, period_secs: 60 },
                key,
                QuotaScope::Local,
            )
        };
        let ct = rule_with(QuotaKey::ConsumerTool);
        assert_eq!(ct.counter_key("alice", "crm", "search"), "alice/crm/search");
        assert_ne!(ct.counter_key("a/b", "crm", "c"), ct.counter_key("a", "crm", "b/c"));
        assert_eq!(ct.counter_key("ä x", "crm", "t"), "%C3%A4%20x/crm/t");
        assert_eq!(ct.counter_key("aäb", "c r", "ü"), "a%C3%A4b/c%20r/%C3%BC");
        // The shared-data key: the rule, a fingerprint of its limit and key kind, the counter.
        let shared = ct.shared_key("alice/crm/search");
        assert!(
            shared.starts_with(&format!("{SHARED_PREFIX}q/r/")) && shared.ends_with("/alice/crm/search"),
            "{shared}"
        );
        assert_ne!(shared, rule_with(QuotaKey::Tool).shared_key("alice/crm/search"));
        assert_eq!(rule_with(QuotaKey::Consumer).counter_key("alice", "crm", "search"), "alice");
        assert_eq!(rule_with(QuotaKey::Tool).counter_key("alice", "crm", "search"), "crm/search");
        // A caller-chosen long tool name gives a bounded key, distinct per name and from
        // every plain key.
        let long = |n: usize| ct.counter_key("alice", "crm", &format!("get_{}", "x".repeat(n)));
        assert_eq!(long(1_000_000).len(), 33);
        assert!(long(1_000_000).starts_with('!') && long(1_000).starts_with('!'));
        assert_ne!(long(1_000_000), long(1_000_001));
        let plain = ct.counter_key("alice", "crm", &"y".repeat(MAX_PLAIN_COUNTER_KEY - 10));
        assert_eq!(plain.len(), MAX_PLAIN_COUNTER_KEY);
        assert!(!plain.starts_with('!'));
        assert!(!ct.counter_key("!", "!", "!").contains('!'), "'!' is always encoded");
        let key = ct.counter_key("\r\n\"evil\0", "crm", "t");
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key}");
    }
}
