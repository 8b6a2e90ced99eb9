//! PII and secret redaction of MCP traffic: pure, streaming-safe, one scan per string.
//!
//! # Shape
//! * [`Redactor`] — compiled from the `redaction` rules of the filter configuration
//!   ([`crate::config::RawRedactionRule`]); one per filter configuration.
//! * [`Redactor::plan`] — per exchange: which rules apply to this server, tool, caller and
//!   direction. `None` when none does, so unaffected traffic costs one loop over the rules.
//! * [`RedactionPlan::redact_message`] — one JSON-RPC message (a JSON body, or the data of
//!   one SSE event fed by [`crate::sse::SseRewriter`]) → `Ok(None)` (unchanged: send the
//!   original bytes, nothing was copied), `Ok(Some(bytes))` (rewritten), or `Err(Blocked)`.
//!   [`RedactionCounts`] records per-detector counts for audit and metrics — never values.
//!
//! # Configuration
//! ```yaml
//! redaction_hash_key_env: MESHGATE_REDACTION_KEY   # only needed by `mode: hash`
//! redaction:
//!   - match: { tools: ["crm/*"], roles: [] }
//!     detectors: [email, phone, credit_card, ssn, iban, ip, jwt, bearer_token, aws_key, api_key]
//!     custom: [{ name: ticket_secret, regex: "SEC-[0-9]{6}" }]
//!     mode: mask          # mask | hash | block
//!     direction: response # response | request | both
//! ```
//! * `match.tools` — `server/tool` globs as in the RBAC policy (`*` = everything; a literal
//!   server must exist). Empty = every server. A pattern whose tool part is only `*`s
//!   (`crm/*`) also covers the server's traffic that is not a tool call (resources,
//!   prompts, notifications on the GET stream); `crm/get_*` covers only those tool calls.
//! * `match.roles` — the rule applies when the caller holds one of them; empty = everyone.
//! * `detectors` — built-in [`Detector`] names; `custom` — named regexes (`[a-z][a-z0-9_]*`,
//!   not a built-in name). Custom regexes may not contain anchors (`^`, `$`, `\A`, `\z`):
//!   they match anywhere inside a string value; nor Unicode property classes (`\p{Greek}`),
//!   whose tables the filter does not carry (`\w`, `\d`, `\s` and `(?i)` are fine). Prefer
//!   ASCII classes and `(?-u:\b)`: a Unicode `\b` makes the lazy DFA give up on non-ASCII
//!   text and fall back to a slower engine; a pattern that can match `"`, `\` or a control
//!   character (`[^ ]+`, `\s`) makes escaped strings take the slower decoding path.
//! * `mode` — `mask` replaces a match with `[EMAIL]` (`[TICKET_SECRET]` for custom ones);
//!   `hash` with `[EMAIL:3f9a1c2b]`, the first 8 hex digits of HMAC-SHA256(key,
//!   detector name ‖ 0 ‖ normalized value) — the same value always gives the same token
//!   (e-mails lower-cased, card/SSN/phone digits only, IBAN without spaces) so tokens can
//!   be joined across messages without revealing values (32 bits: collisions become
//!   likely past ~65 000 distinct values, so a token is a correlation hint, not a unique
//!   key); `block` refuses the whole
//!   message with [`Blocked`], which names the detector and never the value.
//!   When several applicable rules enable the same detector, the strictest mode wins
//!   (block > hash > mask).
//! * `direction` — `response` (default): messages from the server; `request`: messages
//!   from the client; `both`.
//! * `redaction_hash_key_env` — the environment variable holding the HMAC key (at least
//!   32 bytes), read at configure time through [`crate::config::SecretSource`] like the
//!   HS256 secret. Required when a rule hashes; when set it must resolve.
//!
//! # What is rewritten
//! Only string values, never keys, numbers or structure; the output is valid JSON whenever
//! the input is. Responses: every string a client may show — everything under `result`
//! (content blocks of every type: `text`, and the `name`, `title`, `description`, `uri`,
//! `annotations` and `_meta` of `resource_link` and other blocks; embedded and read
//! resources' `text` and `uri`; `structuredContent`; `_meta`; list results), under `error`
//! (`message`, `data`), and under the `params` of what servers send unprompted (logging,
//! progress, elicitation, sampling). Left alone: the JSON-RPC envelope (`jsonrpc`, `id`,
//! `method`) and base64 media (`data` of image and audio blocks, `blob` of resources).
//! Requests: `params.arguments` at any depth (`tools/call`, `prompts/get`).
//!
//! A message the redactor cannot read exactly as clients read it — not UTF-8, not strict
//! JSON (`NaN`, `Infinity`, which the Python client accepts, a BOM, a lone surrogate in an
//! escape) — is refused ([`Refusal::Unreadable`]), never scanned loosely: a loose scan
//! would not decode `\u0040` and the like. Bodies that are not JSON at all (error pages)
//! are redacted as text by [`RedactionPlan::redact_text`].
//!
//! # How it stays fast
//! All enabled detectors are one multi-pattern lazy DFA (`engine.rs`): each selected byte
//! is scanned once whatever the number of detectors, and validators (Luhn, mod-97, SSN
//! ranges, octets, country codes, JWT header) run only on candidates. The message itself
//! is never turned into a tree: `json.rs` walks the bytes (at memchr speed over strings it
//! does not select, such as base64 media) and reports the selected strings; the scan runs
//! on the raw JSON text *in place*. That is exact because no built-in pattern can match
//! `"`, `\` or a control character (`engine::SEPARATORS`): a match never straddles a
//! string boundary, and the escapes `\n \t \r \b \f \" \\` (which decode to such
//! characters) are treated as the boundaries they are — `\n415-555-0132` is split at the
//! escape, so the escape's `n` cannot hide the word boundary before `415`. Strings with
//! `\u` or `\/` escapes — which could hide an `@` or split a token — are decoded, scanned
//! and re-encoded, as is every escaped string when a custom pattern could match a
//! separator.
//!
//! The selected text is first *screened*: a forward lazy DFA of the same patterns only
//! answers "does anything match in this string?" (a table lookup per byte), four walks
//! interleaved, because one walk waits on its lookups' latency rather than doing work.
//! Neighbouring strings (a `structuredContent` record) are screened as one text. Only the
//! strings the screen flags — in real tool results, a few percent — are searched for
//! their matches (forward and reverse DFA, validators). The screen is exact, not a
//! heuristic: the DFA reaches a match state exactly when some pattern matches. Nothing is
//! allocated or copied until the first replacement: an unaffected message costs one walk,
//! one screen of its selected text and no search, and returns `Ok(None)`.
//! (There is deliberately no separate raw pre-scan of the whole body: it would run the
//! DFA over bytes that are never rewritten and still miss matches hidden by escapes.)
//!
//! # False positives, decided
//! * Order ids (`ORD-2024-000123`), ISBNs, UUIDs, hex digests: no detector matches digits
//!   glued to letters or other digit groups by `-`/`.`.
//! * Unix epochs: 10 digits match nothing; 13-digit millisecond epochs start with `1`,
//!   which is no card issuer. Cards need Luhn *and* a known issuer prefix/length, and
//!   separators only as cards are printed (4-4-4-4, 4-6-5).
//! * Phone numbers need a `+` (country code checked against the ITU list, NANP rules for
//!   `+1`, 8–15 digits) or a US form with `(…)`, `-` or `.` separators. Bare digit runs
//!   and space-only national forms (`415 555 0132`) are not phones; national UK/DE/FR
//!   forms are not recognised (their international forms are).
//! * Times (`12:30:00`) and MAC addresses are not IPv6: a candidate needs `::` or eight
//!   groups and must pass the standard parser; `a::b`-like code and `::1` are not reported
//!   (an address needs two groups and a decimal digit).
//! * Versions: `1.2.3` is not an IP (three parts); `v10.0.1.4` is not either (the `v` is
//!   glued to it), nor is a quad inside a longer dotted run (`1.2.3.4.5`). A bare
//!   four-part version (`10.0.1.4`) *is* a valid IPv4 address and is redacted: the
//!   detector cannot tell, and missing an address is the worse mistake.
//! * Prices and amounts (`$1,299.00`) match nothing. `icon@2x.png` is not an e-mail.
//! * `Bearer authentication` / `Bearer YOUR_TOKEN` are prose: a bearer credential needs 12+
//!   characters with a digit, or 32+. `sk-` keys need a digit (`sk-learn-…` is a word).
//!
//! # Limits
//! Numbers are never rewritten (a card number sent as a JSON number passes). SSNs are
//! recognised dashed only; IBANs upper-case only. The scan's extra work inside refused
//! candidates is bounded (`engine::Budget`); past that bound, only hostile input could
//! be affected, and only by skipping matches that start inside a refused candidate.

mod detector;
mod engine;
mod json;
mod validate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{ConfigError, RawRedactionDirection, RawRedactionMode, RawRedactionRule, SecretSource};
use crate::policy::TargetPattern;

pub use detector::Detector;
use engine::{Budget, Engine, Found, Kind, Pattern, Unit};
pub use json::Envelope;
use json::{Halt, Sel, Sink};

/// Minimum length of the HMAC key, as for HS256 secrets.
pub const MIN_HASH_KEY_BYTES: usize = 32;
/// Hex digits of the keyed hash kept in a `hash` token.
pub const HASH_TOKEN_HEX_DIGITS: usize = 8;

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server (`tools/call` arguments).
    Request,
    /// From the server to the client (results, errors, server notifications and requests).
    Response,
}

/// What a rule does with a match. Ordered by strictness: when rules overlap, the greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Replace with `[LABEL]`.
    Mask,
    /// Replace with `[LABEL:<8 hex digits of HMAC-SHA256>]`.
    Hash,
    /// Refuse the whole message.
    Block,
}

/// A message refused by a `block` rule. Names the detector, never the matched value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message refused by the redaction policy: it contains {detector}")]
pub struct Blocked {
    detector: Arc<str>,
}

impl Blocked {
    /// The detector that matched (`credit_card`, or a custom name).
    pub fn detector(&self) -> &str {
        &self.detector
    }
}

/// Why a message was not redacted: a `block` rule matched, or the redactor cannot read it
/// exactly as clients will (not UTF-8, not strict JSON). Either way it is not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error("the message is not JSON the redactor can read exactly")]
    Unreadable,
}

/// A redacted message and its JSON-RPC envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The message to send instead, or `None` when nothing changed.
    pub bytes: Option<Vec<u8>>,
    /// What the message is, as read during the same walk.
    pub envelope: Envelope,
}

/// Per-detector counts of redacted (or blocking) matches. Never holds values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactionCounts {
    entries: Vec<(Arc<str>, u64)>,
}

impl RedactionCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Matches of `detector` so far.
    pub fn get(&self, detector: &str) -> u64 {
        self.entries.iter().find(|(name, _)| &**name == detector).map_or(0, |(_, n)| *n)
    }

    /// `(detector, count)` pairs, in order of first occurrence.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(|(name, n)| (&**name, *n))
    }

    pub fn total(&self) -> u64 {
        self.entries.iter().map(|(_, n)| n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn add(&mut self, name: &Arc<str>, n: u64) {
        match self.entries.iter_mut().find(|(e, _)| Arc::ptr_eq(e, name) || e == name) {
            Some((_, count)) => *count += n,
            None => self.entries.push((name.clone(), n)),
        }
    }

    fn merge(&mut self, other: RedactionCounts) {
        for (name, n) in &other.entries {
            self.add(name, *n);
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The keyed HMAC state, prepared once. Its `Debug` never shows the key.
#[derive(Clone)]
struct HashKey(HmacSha256);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<secret>)")
    }
}

/// What every plan of one configuration shares.
#[derive(Debug)]
struct Shared {
    engine: Engine,
    hash_key: Option<HashKey>,
}

/// One compiled `server/tool` scope pattern (the policy's pattern syntax). A pattern whose
/// tool part is all `*` also covers the server's messages that name no tool.
#[derive(Debug, Clone)]
struct Scope(TargetPattern);

impl Scope {
    fn compile(pattern: &str, servers: &HashSet<String>) -> Result<Self, String> {
        TargetPattern::compile(pattern, servers).map(Scope)
    }

    fn matches(&self, server: &str, tool: Option<&str>) -> bool {
        match tool {
            Some(tool) => self.0.matches(server, tool),
            None => self.0.covers_server(server),
        }
    }

    fn touches(&self, server: &str) -> bool {
        self.0.touches_server(server)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    /// Empty: every server and tool.
    scopes: Vec<Scope>,
    /// Empty: every caller.
    roles: Vec<String>,
    /// Pattern ids of the shared engine this rule enables.
    patterns: Vec<usize>,
    mode: Mode,
    request: bool,
    response: bool,
}

impl Rule {
    fn applies(&self, server: &str, tool: Option<&str>, roles: &[String], direction: Direction) -> bool {
        self.applies_where(roles, direction, |s| s.matches(server, tool))
    }

    /// [`Self::applies`] for some tool of `server`.
    fn applies_to_any_tool(&self, server: &str, roles: &[String], direction: Direction) -> bool {
        self.applies_where(roles, direction, |s| s.touches(server))
    }

    /// The rule's direction and roles admit the exchange, and `scope` accepts one of its
    /// scopes (a rule without scopes covers everything).
    fn applies_where(&self, roles: &[String], direction: Direction, scope: impl Fn(&Scope) -> bool) -> bool {
        let direction_ok = match direction {
            Direction::Request => self.request,
            Direction::Response => self.response,
        };
        direction_ok
            && (self.roles.is_empty() || roles.iter().any(|r| self.roles.contains(r)))
            && (self.scopes.is_empty() || self.scopes.iter().any(scope))
    }
}

/// The compiled redaction rules of one filter configuration. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Redactor {
    shared: Arc<Shared>,
    rules: Vec<Rule>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor { shared: Arc::new(Shared { engine: Engine::empty(), hash_key: None }), rules: Vec::new() }
    }
}

/// Whether `name` can name a custom detector: `[a-z][a-z0-9_]*`, at most 64 characters.
fn is_valid_custom_name(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Redactor {
    /// Validates and compiles the `redaction` rules. `servers` are the known server names
    /// (a literal server in a scope must be one), `known_role` tells whether the policy
    /// defines a role, `secrets` resolves `hash_key_env`. Error paths are
    /// `redaction[i].match.tools[j]`, `redaction[i].custom[j].regex`, and so on.
    pub fn compile(
        rules: &[RawRedactionRule],
        hash_key_env: Option<&str>,
        servers: &HashSet<String>,
        known_role: &dyn Fn(&str) -> bool,
        secrets: &dyn SecretSource,
    ) -> Result<Self, ConfigError> {
        let hash_key = match hash_key_env {
            None => None,
            Some(var) => {
                let key = secrets.secret(var).filter(|s| !s.is_empty()).ok_or_else(|| {
                    ConfigError::invalid(
                        "redaction_hash_key_env",
                        format!("environment variable {var} is not set or empty"),
                    )
                })?;
                if key.len() < MIN_HASH_KEY_BYTES {
                    return Err(ConfigError::invalid(
                        "redaction_hash_key_env",
                        format!("the key in {var} is shorter than {MIN_HASH_KEY_BYTES} bytes"),
                    ));
                }
                let mac = HmacSha256::new_from_slice(key.as_bytes())
                    .map_err(|e| ConfigError::invalid("redaction_hash_key_env", e.to_string()))?;
                Some(HashKey(mac))
            }
        };

        // Custom patterns first (a user's specific pattern wins a tie), then the built-ins
        // some rule uses, in their fixed priority order.
        let mut patterns: Vec<(Pattern, String)> = Vec::new();
        let mut custom_ids: Vec<Vec<usize>> = Vec::with_capacity(rules.len());
        let mut used = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("redaction[{i}]");
            if rule.detectors.is_empty() && rule.custom.is_empty() {
                return Err(ConfigError::invalid(path, "the rule detects nothing: list detectors or custom patterns"));
            }
            for (j, name) in rule.detectors.iter().enumerate() {
                let detector = Detector::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
                    ConfigError::invalid(
                        format!("{path}.detectors[{j}]"),
                        format!("unknown detector \"{name}\" (known: {})", known.join(", ")),
                    )
                })?;
                used.push(detector);
            }
            let mut ids = Vec::with_capacity(rule.custom.len());
            for (j, custom) in rule.custom.iter().enumerate() {
                let cpath = format!("{path}.custom[{j}]");
                if !is_valid_custom_name(&custom.name) {
                    return Err(ConfigError::invalid(
                        format!("{cpath}.name"),
                        format!(
                            "\"{}\" is not a valid detector name ([a-z][a-z0-9_]*, at most 64 characters)",
                            custom.name
                        ),
                    ));
                }
                if Detector::from_name(&custom.name).is_some() {
                    return Err(ConfigError::invalid(
                        format!("{cpath}.name"),
                        format!("\"{}\" is a built-in detector: list it under detectors", custom.name),
                    ));
                }
                if rule.custom[..j].iter().any(|c| c.name == custom.name) {
                    return Err(ConfigError::invalid(
                        format!("{cpath}.name"),
                        format!("duplicate custom detector \"{}\" in this rule", custom.name),
                    ));
                }
                check_custom_regex(&custom.regex).map_err(|m| ConfigError::invalid(format!("{cpath}.regex"), m))?;
                ids.push(patterns.len());
                patterns.push((
                    Pattern {
                        kind: Kind::Custom,
                        name: custom.name.as_str().into(),
                        label: custom.name.to_ascii_uppercase().into(),
                        separator_safe: false,
                    },
                    custom.regex.clone(),
                ));
            }
            custom_ids.push(ids);
        }
        let mut builtin_ids = Vec::new();
        for detector in Detector::ALL {
            if used.contains(&detector) {
                builtin_ids.push((detector, patterns.len()));
                patterns.push((
                    Pattern {
                        kind: Kind::Builtin(detector),
                        name: detector.name().into(),
                        label: detector.label().into(),
                        separator_safe: false,
                    },
                    detector.pattern().to_string(),
                ));
            }
        }

        let mut compiled = Vec::with_capacity(rules.len());
        for ((i, rule), customs) in rules.iter().enumerate().zip(custom_ids) {
            let path = format!("redaction[{i}]");
            let mut scopes = Vec::with_capacity(rule.scope.tools.len());
            for (j, pattern) in rule.scope.tools.iter().enumerate() {
                scopes.push(
                    Scope::compile(pattern, servers)
                        .map_err(|m| ConfigError::invalid(format!("{path}.match.tools[{j}]"), m))?,
                );
            }
            for (j, role) in rule.scope.roles.iter().enumerate() {
                if role.is_empty() || role.chars().any(char::is_whitespace) || !known_role(role) {
                    return Err(ConfigError::invalid(
                        format!("{path}.match.roles[{j}]"),
                        format!("\"{role}\" is not a role of the policy"),
                    ));
                }
            }
            let mode = match rule.mode {
                RawRedactionMode::Mask => Mode::Mask,
                RawRedactionMode::Hash => Mode::Hash,
                RawRedactionMode::Block => Mode::Block,
            };
            if mode == Mode::Hash && hash_key.is_none() {
                return Err(ConfigError::invalid(
                    format!("{path}.mode"),
                    "mode hash needs a key: set redaction_hash_key_env",
                ));
            }
            let mut ids = customs;
            for name in &rule.detectors {
                if let Some(&(_, id)) = builtin_ids.iter().find(|(d, _)| d.name() == name) {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            let (request, response) = match rule.direction {
                RawRedactionDirection::Request => (true, false),
                RawRedactionDirection::Response => (false, true),
                RawRedactionDirection::Both => (true, true),
            };
            compiled.push(Rule { scopes, roles: rule.scope.roles.clone(), patterns: ids, mode, request, response });
        }

        let engine = Engine::build(patterns).map_err(|m| ConfigError::invalid("redaction", m))?;
        Ok(Redactor { shared: Arc::new(Shared { engine, hash_key }), rules: compiled })
    }

    /// True when there are no rules (every [`Self::plan`] is `None`).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The redaction that applies to one exchange with `server`: `tool` is the tool name of
    /// a `tools/call`, `None` for anything else; `roles` are the caller's. `None` when no
    /// rule applies.
    pub fn plan(
        &self,
        server: &str,
        tool: Option<&str>,
        roles: &[String],
        direction: Direction,
    ) -> Option<RedactionPlan> {
        self.plan_of(self.rules.iter().filter(|r| r.applies(server, tool, roles, direction)), direction)
    }

    /// Every rule for some tool of `server` (and the caller's `roles`), each detector in its
    /// strictest mode: for messages whose tool is unknown, such as a response replayed on
    /// the GET stream. At least as strict as [`Self::plan`] for any one tool.
    pub fn plan_any_tool(&self, server: &str, roles: &[String], direction: Direction) -> Option<RedactionPlan> {
        self.plan_of(self.rules.iter().filter(|r| r.applies_to_any_tool(server, roles, direction)), direction)
    }

    fn plan_of<'a>(&self, rules: impl Iterator<Item = &'a Rule>, direction: Direction) -> Option<RedactionPlan> {
        let mut actions: Option<Vec<Option<Mode>>> = None;
        for rule in rules {
            let actions = actions.get_or_insert_with(|| vec![None; self.shared.engine.patterns().len()]);
            for &id in &rule.patterns {
                if let Some(slot) = actions.get_mut(id) {
                    *slot = (*slot).max(Some(rule.mode));
                }
            }
        }
        let actions: Box<[Option<Mode>]> = actions?.into();
        let patterns = self.shared.engine.patterns();
        let in_place = patterns.iter().zip(actions.iter()).all(|(p, mode)| mode.is_none() || p.separator_safe);
        Some(RedactionPlan { shared: self.shared.clone(), actions, direction, in_place })
    }
}

/// Refuses Unicode property classes (`\p{Greek}`): the filter is built without those
/// tables, while a control plane linking other regex users may have them, and both must
/// accept the same configurations.
struct NoUnicodeProperties;

impl regex_syntax::ast::Visitor for NoUnicodeProperties {
    type Output = ();
    type Err = ();

    fn finish(self) -> Result<(), ()> {
        Ok(())
    }

    fn visit_pre(&mut self, ast: &regex_syntax::ast::Ast) -> Result<(), ()> {
        match ast {
            regex_syntax::ast::Ast::ClassUnicode(_) => Err(()),
            _ => Ok(()),
        }
    }

    fn visit_class_set_item_pre(&mut self, item: &regex_syntax::ast::ClassSetItem) -> Result<(), ()> {
        match item {
            regex_syntax::ast::ClassSetItem::Unicode(_) => Err(()),
            _ => Ok(()),
        }
    }
}

/// A custom regex must compile, match something non-empty, and use no anchors nor
/// Unicode property classes.
fn check_custom_regex(regex: &str) -> Result<(), String> {
    let ast = regex_syntax::ast::parse::Parser::new().parse(regex).map_err(|e| format!("invalid regex: {e}"))?;
    regex_syntax::ast::visit(&ast, NoUnicodeProperties)
        .map_err(|()| format!("regex \"{regex}\" uses a Unicode property class (\\p{{..}}), which is not supported"))?;
    let hir = engine::parse(regex).map_err(|e| format!("invalid regex: {e}"))?;
    let props = hir.properties();
    if props.look_set().contains_anchor() {
        return Err(format!(
            "regex \"{regex}\" uses an anchor (^, $, \\A, \\z): patterns match anywhere inside a string value"
        ));
    }
    if props.minimum_len().unwrap_or(0) == 0 {
        return Err(format!("regex \"{regex}\" can match the empty string"));
    }
    Engine::build(vec![(
        Pattern { kind: Kind::Custom, name: Arc::from(""), label: Arc::from(""), separator_safe: false },
        regex.to_string(),
    )])
    .map(|_| ())
    .map_err(|e| format!("invalid regex: {e}"))
}

/// The redaction of one exchange in one direction: which detectors are on, in which mode.
#[derive(Debug, Clone)]
pub struct RedactionPlan {
    shared: Arc<Shared>,
    /// Per engine pattern: its mode in this plan, or `None` when off.
    actions: Box<[Option<Mode>]>,
    direction: Direction,
    /// Every enabled pattern is separator-safe: raw JSON text is scanned in place.
    in_place: bool,
}

impl RedactionPlan {
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Whether `detector` (a built-in or custom name) is enabled, and how.
    pub fn mode_of(&self, detector: &str) -> Option<Mode> {
        self.shared
            .engine
            .patterns()
            .iter()
            .zip(self.actions.iter())
            .filter(|(p, _)| &*p.name == detector)
            .filter_map(|(_, m)| *m)
            .max()
    }

    fn selector(&self) -> &'static Sel {
        match self.direction {
            Direction::Request => &json::REQUEST,
            Direction::Response => &json::RESPONSE,
        }
    }

    fn enabled(&self) -> impl Fn(usize) -> bool + '_ {
        |id| self.actions.get(id).is_some_and(Option::is_some)
    }

    /// Redacts one JSON-RPC message (a body, or one SSE event's data) and reads its
    /// envelope. `bytes: None`: nothing to change, forward the original bytes. Counts are
    /// added to `counts`.
    ///
    /// The message must be UTF-8 JSON (RFC 8259) that the redactor reads exactly as
    /// clients do, or it is [`Refusal::Unreadable`]: never scanned loosely. (Non-standard
    /// numbers such as `NaN`, which the Python client accepts, once made the redactor fall
    /// back to a raw scan that did not decode `\u0040`.)
    pub fn redact_json(&self, message: &[u8], counts: &mut RedactionCounts) -> Result<Redacted, Refusal> {
        if std::str::from_utf8(message).is_err() {
            return Err(Refusal::Unreadable);
        }
        let mut rewriter = Rewriter::new(self, message);
        let walked = json::walk(message, self.selector(), &mut rewriter);
        let envelope = match &walked {
            Ok(envelope) => envelope.clone(),
            Err(_) => Envelope::default(),
        };
        let bytes = rewriter.conclude(walked.map(drop), counts)?;
        Ok(Redacted { bytes, envelope })
    }

    /// [`Self::redact_json`] without the envelope.
    pub fn redact_message(&self, message: &[u8], counts: &mut RedactionCounts) -> Result<Option<Vec<u8>>, Refusal> {
        self.redact_json(message, counts).map(|r| r.bytes)
    }

    /// Redacts free text (not JSON): every match anywhere in `text`.
    pub fn redact_text(&self, text: &str, counts: &mut RedactionCounts) -> Result<Option<String>, Blocked> {
        let mut rewriter = Rewriter::new(self, text.as_bytes());
        let result = rewriter.span(0, text.len());
        match rewriter.conclude(result, counts) {
            Ok(out) => Ok(out.map(into_string)),
            Err(Refusal::Blocked(blocked)) => Err(blocked),
            // Only a JSON walk is unreadable: free text is all read.
            Err(Refusal::Unreadable) => Ok(None),
        }
    }

    /// Appends the replacement for `value` (matched by `pattern`) to `out`.
    fn token(&self, out: &mut Vec<u8>, pattern: usize, value: &[u8]) -> Result<(), Halt> {
        let Some(p) = self.shared.engine.patterns().get(pattern) else { return Ok(()) };
        let mode = self.actions.get(pattern).copied().flatten().unwrap_or(Mode::Mask);
        if mode == Mode::Block {
            return Err(Halt::Blocked(Blocked { detector: p.name.clone() }));
        }
        out.push(b'[');
        out.extend_from_slice(p.label.as_bytes());
        // Hash without a key masks (compile refuses that configuration).
        if let (Mode::Hash, Some(HashKey(mac))) = (mode, &self.shared.hash_key) {
            let mut mac = mac.clone();
            mac.update(p.name.as_bytes());
            mac.update(&[0]);
            mac.update(&normalize(p.kind, value));
            let digest = mac.finalize().into_bytes();
            out.push(b':');
            out.extend_from_slice(hex::encode(&digest[..HASH_TOKEN_HEX_DIGITS / 2]).as_bytes());
        }
        out.push(b']');
        Ok(())
    }
}

/// Output of a rewrite of valid UTF-8: replacements are ASCII and matches end on character
/// boundaries, so the lossy branch is never taken.
fn into_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The form of a value that is hashed, so that spellings of one value share a token.
fn normalize(kind: Kind, value: &[u8]) -> Cow<'_, [u8]> {
    let digits = || value.iter().copied().filter(u8::is_ascii_digit).collect::<Vec<u8>>();
    match kind {
        Kind::Builtin(Detector::Email) => Cow::Owned(value.to_ascii_lowercase()),
        Kind::Builtin(Detector::CreditCard | Detector::Ssn) => Cow::Owned(digits()),
        Kind::Builtin(Detector::Phone) => {
            let mut d = digits();
            if value.first() != Some(&b'+') && d.len() == 10 {
                d.insert(0, b'1'); // US national form: the same number as +1…
            }
            Cow::Owned(d)
        }
        Kind::Builtin(Detector::Iban) => Cow::Owned(value.iter().copied().filter(|b| *b != b' ').collect()),
        Kind::Builtin(Detector::Ip) if value.contains(&b':') => {
            match std::str::from_utf8(value).ok().and_then(|s| Ipv6Addr::from_str(s).ok()) {
                Some(addr) => Cow::Owned(addr.to_string().into_bytes()),
                None => Cow::Borrowed(value),
            }
        }
        _ => Cow::Borrowed(value),
    }
}

/// Lazily built output: the original bytes with spans replaced, or nothing when no
/// replacement happened.
struct Splice {
    out: Option<Vec<u8>>,
    /// Bytes of the source already copied (or replaced) into `out`.
    copied: usize,
}

impl Splice {
    /// The output with `src[..start]` copied; the caller appends the replacement and then
    /// calls [`Self::skip_to`] with the end of the replaced span.
    fn at<'a>(&'a mut self, src: &[u8], start: usize) -> &'a mut Vec<u8> {
        let out = self.out.get_or_insert_with(|| Vec::with_capacity(src.len() + 64));
        // Replacements come in order, so `copied <= start`; `get` keeps a bug from panicking.
        out.extend_from_slice(src.get(self.copied..start).unwrap_or_default());
        out
    }

    fn skip_to(&mut self, end: usize) {
        self.copied = end;
    }

    fn finish(self, src: &[u8]) -> Option<Vec<u8>> {
        self.out.map(|mut out| {
            out.extend_from_slice(src.get(self.copied..).unwrap_or_default());
            out
        })
    }
}

/// Largest run of non-selected JSON (keys, numbers, punctuation) between two selected
/// strings that the prescreen walks over rather than starting a new walk: a start costs
/// about as much as walking this many bytes.
const MAX_UNIT_GAP: usize = 64;

/// A unit of spans is closed once it is this long, so the screen's lanes get work of
/// similar sizes.
const MAX_UNIT_BYTES: usize = 2048;

/// Selected text gathered before it is screened and searched: enough for the screen's
/// lanes to run side by side, small enough to stay in cache.
const BATCH_BYTES: usize = 32 * 1024;

/// The walker's sink: finds matches in the selected strings and splices replacements into
/// a copy.
///
/// In place (the usual case, see [`engine::SEPARATORS`]): no match can contain `"`, `\`
/// or a control character, so the raw bytes of a string are searched without decoding it,
/// a string is split at its escapes (`\n`, `\"`, …, which decode to characters no match
/// contains and that bound words), and each piece is a *span*. Spans are gathered in
/// batches; [`engine::Engine::screen`] marks the few that may hold a match (neighbouring
/// spans, such as a `structuredContent` record's strings, are screened as one *unit*,
/// over the keys between them: no match straddles a quote), and only those are searched,
/// in document order. Replacements are ASCII without quotes or backslashes, so they are
/// spliced into the raw JSON as they are. Strings with `\u` or `\/` escapes, and every
/// escaped string when a custom pattern could match a separator, are decoded, searched
/// and re-encoded instead.
struct Rewriter<'p, 'a> {
    plan: &'p RedactionPlan,
    src: &'a [u8],
    out: Splice,
    budget: Budget,
    counts: RedactionCounts,
    /// The batch: selected spans (ranges of `src`, in order), the closed units over them,
    /// the unit still growing, and the bytes gathered.
    spans: Vec<(usize, usize)>,
    units: Vec<Unit>,
    open: Option<Unit>,
    batch_bytes: usize,
    /// Scratch for the screen's answer, one flag per span.
    flags: Vec<bool>,
}

impl<'p, 'a> Rewriter<'p, 'a> {
    fn new(plan: &'p RedactionPlan, src: &'a [u8]) -> Self {
        Rewriter {
            plan,
            src,
            out: Splice { out: None, copied: 0 },
            budget: Budget::for_message(src.len()),
            counts: RedactionCounts::new(),
            spans: Vec::new(),
            units: Vec::new(),
            open: None,
            batch_bytes: 0,
            flags: Vec::new(),
        }
    }

    /// The outcome of a rewrite; counts are kept unless the input turned out not to be JSON
    /// (nothing of it is sent then).
    fn conclude(mut self, result: Result<(), Halt>, counts: &mut RedactionCounts) -> Result<Option<Vec<u8>>, Refusal> {
        match result.and_then(|()| self.flush()) {
            Ok(()) => {
                counts.merge(self.counts);
                Ok(self.out.finish(self.src))
            }
            Err(Halt::Blocked(blocked)) => {
                counts.merge(self.counts);
                Err(Refusal::Blocked(blocked))
            }
            Err(Halt::NotJson) => Err(Refusal::Unreadable),
        }
    }

    /// Redacts `src[start..end]` in place, all of it (free text).
    fn span(&mut self, start: usize, end: usize) -> Result<(), Halt> {
        self.flush()?;
        self.add(start, end, false)?;
        self.flush()
    }

    /// Adds a selected span of raw text to the batch. `joinable`: the bytes since the
    /// previous span are JSON structure (not an escape), so the open unit may extend over
    /// them.
    fn add(&mut self, start: usize, end: usize, joinable: bool) -> Result<(), Halt> {
        if start == end {
            return Ok(());
        }
        let index = self.spans.len();
        self.spans.push((start, end));
        self.batch_bytes += end - start;
        if let Some(open) = &mut self.open {
            let gap = self.src.get(open.end..start).unwrap_or_default();
            let fits = end - open.start <= MAX_UNIT_BYTES;
            if joinable && fits && gap.len() <= MAX_UNIT_GAP && memchr::memchr(b'\\', gap).is_none() {
                open.end = end;
                open.last = index + 1;
                return Ok(());
            }
            self.units.push(*open);
        }
        self.open = Some(Unit { start, end, first: index, last: index + 1 });
        if self.batch_bytes >= BATCH_BYTES {
            return self.flush();
        }
        Ok(())
    }

    /// Screens the batch and searches the spans that may hold a match, in order,
    /// splicing replacements into the output.
    fn flush(&mut self) -> Result<(), Halt> {
        if let Some(open) = self.open.take() {
            self.units.push(open);
        }
        let mut flags = std::mem::take(&mut self.flags);
        flags.clear();
        flags.resize(self.spans.len(), false);
        self.plan.shared.engine.screen(self.src, &self.units, &self.spans, &mut flags);
        let spans = std::mem::take(&mut self.spans);
        let mut result = Ok(());
        for (&(start, end), _) in spans.iter().zip(&flags).filter(|(_, &flagged)| flagged) {
            result = self.scan_span(start, end);
            if result.is_err() {
                break;
            }
        }
        self.spans = spans;
        self.spans.clear();
        self.units.clear();
        self.batch_bytes = 0;
        self.flags = flags;
        result
    }

    /// Searches `src[start..end]` (one selected span) and splices replacements.
    fn scan_span(&mut self, start: usize, end: usize) -> Result<(), Halt> {
        let (plan, src) = (self.plan, self.src);
        let (out, budget, counts) = (&mut self.out, &mut self.budget, &mut self.counts);
        let hay = &src[start..end];
        let patterns = plan.shared.engine.patterns();
        plan.shared.engine.scan(hay, &plan.enabled(), budget, &mut |f: Found| {
            if let Some(p) = patterns.get(f.pattern) {
                counts.add(&p.name, 1);
            }
            let buf = out.at(src, start + f.start);
            plan.token(buf, f.pattern, &hay[f.start..f.end])?;
            out.skip_to(start + f.end);
            Ok(())
        })
    }

    /// A selected string with escapes (`escapes`: backslash offsets), in place: its text
    /// between escapes, each piece on its own. `None` when an escape needs decoding (`\u`,
    /// `\/`); nothing has been scanned then.
    fn escaped_in_place(&mut self, content: std::ops::Range<usize>, escapes: &[usize]) -> Option<Result<(), Halt>> {
        let safe = |&i: &usize| matches!(self.src.get(i + 1), Some(b'n' | b't' | b'r' | b'b' | b'f' | b'"' | b'\\'));
        if !escapes.iter().all(safe) {
            return None;
        }
        let mut piece_start = content.start;
        let mut joinable = true;
        for &i in escapes {
            if let Err(e) = self.add(piece_start, i, joinable) {
                return Some(Err(e));
            }
            piece_start = i + 2;
            joinable = false;
        }
        Some(self.add(piece_start, content.end, joinable))
    }

    /// Redacts a string literal by decoding it: scan the text, re-encode when changed.
    fn decoded(&mut self, literal: std::ops::Range<usize>) -> Result<(), Halt> {
        self.flush()?;
        let decoded: String = serde_json::from_slice(&self.src[literal.clone()]).map_err(|_| Halt::NotJson)?;
        let hay = decoded.as_bytes();
        let mut flagged = [false];
        let unit = Unit { start: 0, end: hay.len(), first: 0, last: 1 };
        self.plan.shared.engine.screen(hay, &[unit], &[(0, hay.len())], &mut flagged);
        if flagged == [false] {
            return Ok(());
        }
        let mut redacted = Splice { out: None, copied: 0 };
        let plan = self.plan;
        let (budget, counts) = (&mut self.budget, &mut self.counts);
        let patterns = plan.shared.engine.patterns();
        plan.shared.engine.scan(hay, &plan.enabled(), budget, &mut |f: Found| {
            if let Some(p) = patterns.get(f.pattern) {
                counts.add(&p.name, 1);
            }
            let buf = redacted.at(hay, f.start);
            plan.token(buf, f.pattern, &hay[f.start..f.end])?;
            redacted.skip_to(f.end);
            Ok(())
        })?;
        let Some(bytes) = redacted.finish(hay) else { return Ok(()) };
        let text = String::from_utf8(bytes).map_err(|_| Halt::NotJson)?;
        let encoded = serde_json::to_vec(&text).map_err(|_| Halt::NotJson)?;
        self.out.at(self.src, literal.start).extend_from_slice(&encoded);
        self.out.skip_to(literal.end);
        Ok(())
    }
}

impl Sink for Rewriter<'_, '_> {
    fn string(&mut self, literal: std::ops::Range<usize>, escapes: &[usize]) -> Result<(), Halt> {
        let content = literal.start + 1..literal.end - 1;
        if escapes.is_empty() {
            if self.plan.in_place {
                return self.add(content.start, content.end, true);
            }
            return self.span(content.start, content.end);
        }
        if self.plan.in_place {
            if let Some(result) = self.escaped_in_place(content, escapes) {
                return result;
            }
        }
        self.decoded(literal)
    }
}
