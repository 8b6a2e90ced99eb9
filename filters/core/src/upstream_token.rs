//! The caller's own identity upstream: OAuth 2.0 Token Exchange (RFC 8693) per consumer and
//! server, and the cache that makes it cheap.
//!
//! A server with `credentials.exchange` in the registry gets, for each call the policy
//! allowed, a token of its own for the calling user: the filter sends the caller's validated
//! JWT as the `subject_token` to the token endpoint (a host callout to a cluster the control
//! plane renders with TLS), and sets the `access_token` it answers on the upstream request's
//! `Authorization` header. The caller's own token never reaches the upstream (it is stripped
//! with the other client credentials; MCP forbids token passthrough).
//!
//! **The client secret is never here.** The token endpoint's cluster carries Envoy's
//! `credential_injector` as an upstream HTTP filter, reading the `client_secret_basic`
//! `Authorization` value from an SDS secret: the filter configuration (ECDS, `/config_dump`)
//! holds no secret, and the callout is authenticated by Envoy itself.
//!
//! **Cache.** Entries live in the host's shared counters ([`crate::pipeline::Host::update_counter`]:
//! proxy-wasm shared data, one store per Envoy; process memory in the native build), so
//! every worker of an Envoy sees one token per (consumer, server, scope). The store is
//! bounded: an identity hashes (deterministically, so every worker agrees) into one of
//! `cache_entries` slots per server, and each value names its identity, so a collision is a
//! miss (the newer identity takes the slot), never another user's token. A slot holds one
//! [`Slot`]: a token until shortly before it expires, an exchange in flight (a lease with a
//! deadline), or the failure of the last exchange.
//!
//! **Single flight.** The first miss takes the lease and makes the one exchange; concurrent
//! misses for the same identity park ([`crate::pipeline::Host::park_for_token`]) until it
//! settles, then read the slot again: a token (a hit), or the failure they share (they
//! waited for that exchange, so they fail with it; the next request tries anew). A lease
//! whose holder vanished (its stream reset, its worker gone) expires at its deadline, so no
//! one waits forever.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::gateway::CalloutRequest;

/// `grant_type` of RFC 8693 §2.1.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type URIs of RFC 8693 §3 the subject token may be sent as.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Subject token types accepted in the configuration.
pub const SUBJECT_TOKEN_TYPES: [&str; 3] = [TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN];
/// Largest token endpoint timeout accepted (a paused call waits for it).
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// Largest access token kept (bytes); a longer answer is refused as unusable.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest lifetime a token is cached for, whatever `expires_in` says (seconds).
pub const MAX_CACHE_SECS: u64 = 24 * 3600;
/// Lifetime assumed when the endpoint omits `expires_in` (RFC 6749 makes it optional): short.
pub const DEFAULT_LIFETIME_SECS: u64 = 60;
/// How long past the callout timeout a lease holds before another request may take over.
const LEASE_GRACE_NS: u64 = 1_000_000_000;

/// What a consumer that presented no token (API key, client certificate, anonymous) gets on
/// a server with token exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoSubjectToken {
    /// Refused with a JSON-RPC error naming why (fail closed).
    #[default]
    Refuse,
    /// Forwarded without a user token: Envoy injects the server's static credential
    /// (`credentials.value_env`/`value_file`) instead.
    Static,
}

/// One server's token exchange, as the control plane renders it into the filter
/// configuration (no secret: client authentication is Envoy's, on the cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenExchange {
    /// The token endpoint's Envoy cluster.
    pub cluster: String,
    /// The token endpoint's path.
    pub path: String,
    /// The token endpoint's `Host` (`host[:port]`).
    pub authority: String,
    /// RFC 8693 `audience`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// RFC 8707 `resource` values (absolute URIs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Space-separated scopes to request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The subject token's type URI.
    pub subject_token_type: String,
    /// Token endpoint timeout, milliseconds (1..=[`MAX_TIMEOUT_MS`]).
    pub timeout_ms: u64,
    /// A token is used until this many seconds before it expires.
    pub refresh_skew_secs: u64,
    /// Cache slots for this server (≥ 1).
    pub cache_entries: u64,
    #[serde(default)]
    pub no_subject_token: NoSubjectToken,
}

/// A validated token exchange of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchange {
    pub server: String,
    raw: RawTokenExchange,
    /// The form body without the subject token (`&subject_token=` is appended per call).
    form_prefix: String,
    /// What follows the consumer in a cache identity: the server, the scope, and a hash of
    /// everything else the token was asked for (endpoint, audience, resources, token types),
    /// so a configuration that asks for something else never reuses a cached token.
    identity_suffix: String,
}

/// The token exchanges of every server that has one.
#[derive(Debug, Clone, Default)]
pub struct TokenExchanges {
    by_server: HashMap<String, TokenExchange>,
}

impl TokenExchanges {
    /// Validates every entry against the real `servers`.
    pub fn compile(raw: &BTreeMap<String, RawTokenExchange>, servers: &HashSet<String>) -> Result<Self, ConfigError> {
        let mut by_server = HashMap::new();
        for (server, exchange) in raw {
            let at = format!("token_exchanges.{server}");
            if !servers.contains(server) {
                return Err(ConfigError::invalid(at, format!("no such server \"{server}\"")));
            }
            by_server.insert(server.clone(), TokenExchange::compile(server, exchange, &at)?);
        }
        Ok(Self { by_server })
    }

    /// The token exchange of `server`, if it has one.
    pub fn get(&self, server: &str) -> Option<&TokenExchange> {
        self.by_server.get(server)
    }

    pub fn is_empty(&self) -> bool {
        self.by_server.is_empty()
    }
}

impl TokenExchange {
    fn compile(server: &str, raw: &RawTokenExchange, at: &str) -> Result<Self, ConfigError> {
        let invalid = |key: &str, why: String| ConfigError::invalid(format!("{at}.{key}"), why);
        if raw.cluster.is_empty() || raw.authority.is_empty() {
            return Err(invalid("cluster", "cluster and authority must not be empty".to_string()));
        }
        if !raw.path.starts_with('/') {
            return Err(invalid("path", format!("\"{}\" does not start with /", raw.path)));
        }
        if !SUBJECT_TOKEN_TYPES.contains(&raw.subject_token_type.as_str()) {
            return Err(invalid(
                "subject_token_type",
                format!("\"{}\" is not one of {}", raw.subject_token_type, SUBJECT_TOKEN_TYPES.join(", ")),
            ));
        }
        if raw.timeout_ms == 0 || raw.timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid("timeout_ms", format!("{} is not in 1..={MAX_TIMEOUT_MS}", raw.timeout_ms)));
        }
        if raw.cache_entries == 0 {
            return Err(invalid("cache_entries", "must be at least 1".to_string()));
        }
        let mut form = format!("grant_type={}", form_encode(GRANT_TYPE));
        form.push_str("&subject_token_type=");
        form.push_str(&form_encode(&raw.subject_token_type));
        form.push_str("&requested_token_type=");
        form.push_str(&form_encode(TOKEN_TYPE_ACCESS_TOKEN));
        if let Some(audience) = &raw.audience {
            form.push_str("&audience=");
            form.push_str(&form_encode(audience));
        }
        for resource in &raw.resources {
            form.push_str("&resource=");
            form.push_str(&form_encode(resource));
        }
        if let Some(scope) = &raw.scope {
            form.push_str("&scope=");
            form.push_str(&form_encode(scope));
        }
        let asked = format!("{}\u{0}{}\u{0}{}\u{0}{form}", raw.cluster, raw.authority, raw.path);
        let identity_suffix =
            format!("\u{0}{server}\u{0}{}\u{0}{:016x}", raw.scope.as_deref().unwrap_or(""), fnv1a(asked.as_bytes()));
        Ok(Self { server: server.to_string(), raw: raw.clone(), form_prefix: form, identity_suffix })
    }

    /// What a consumer without a subject token gets.
    pub fn no_subject_token(&self) -> NoSubjectToken {
        self.raw.no_subject_token
    }

    /// The callout's timeout, milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        self.raw.timeout_ms
    }

    /// The cache identity of `consumer`'s token for this server: consumer, server, the
    /// requested scope and what else the token was asked for ([`Self::identity_suffix`]).
    pub fn identity(&self, consumer: &str) -> String {
        let mut identity = String::with_capacity(consumer.len() + self.identity_suffix.len());
        identity.push_str(consumer);
        identity.push_str(&self.identity_suffix);
        identity
    }

    /// The shared-store key of `identity`'s slot (deterministic: every worker agrees).
    pub fn slot_key(&self, identity: &str) -> String {
        let slot = fnv1a(identity.as_bytes()) % self.raw.cache_entries;
        format!("meshgate/upstream-token/{}/{slot}", self.server)
    }

    /// The RFC 8693 request for `subject_token`. Client authentication is added by Envoy on
    /// the cluster (see the module docs), never by the filter.
    pub fn request(&self, subject_token: &str) -> CalloutRequest {
        let mut body = String::with_capacity(self.form_prefix.len() + subject_token.len() + 16);
        body.push_str(&self.form_prefix);
        body.push_str("&subject_token=");
        body.push_str(&form_encode(subject_token));
        CalloutRequest {
            cluster: self.raw.cluster.clone(),
            headers: vec![
                (":method".to_string(), "POST".to_string()),
                (":path".to_string(), self.raw.path.clone()),
                (":authority".to_string(), self.raw.authority.clone()),
                ("content-type".to_string(), "application/x-www-form-urlencoded".to_string()),
                ("accept".to_string(), "application/json".to_string()),
            ],
            body: body.into_bytes(),
            timeout_ms: self.raw.timeout_ms,
        }
    }

    /// Reads the token endpoint's answer: the access token and when to stop using it
    /// (Unix ns), or why there is none (words safe to show: never the token, never the
    /// endpoint's free text beyond the RFC 6749 error code).
    pub fn read_answer(&self, status: u16, body: &[u8], now_ns: u64) -> Result<(String, u64), String> {
        let json: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            // Envoy's own answers when the callout failed (its async client answers a timeout
            // with 504 and a refused or reset connection with 503, in both builds).
            Err(_) if status == 504 => return Err("the token endpoint did not answer in time (HTTP 504)".to_string()),
            Err(_) if status == 503 => {
                return Err("the token endpoint is unreachable or unavailable (HTTP 503)".to_string())
            }
            Err(_) if status != 200 => return Err(format!("the token endpoint answered HTTP {status}")),
            Err(_) => return Err("the token endpoint's answer is not JSON".to_string()),
        };
        if status != 200 {
            // RFC 6749 §5.2: `error` is one ASCII code such as invalid_grant or invalid_scope.
            let code = json.get("error").and_then(|e| e.as_str()).filter(|c| is_error_code(c));
            return Err(match code {
                Some(code) => format!("the token endpoint refused the exchange ({code})"),
                None => format!("the token endpoint answered HTTP {status}"),
            });
        }
        let token = json.get("access_token").and_then(|t| t.as_str()).unwrap_or("");
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            return Err("the token endpoint's answer has no usable access_token".to_string());
        }
        let token_type = json.get("token_type").and_then(|t| t.as_str()).unwrap_or("");
        if !token_type.eq_ignore_ascii_case("bearer") {
            return Err("the token endpoint's answer is not a bearer token".to_string());
        }
        let lifetime = match json.get("expires_in") {
            None => DEFAULT_LIFETIME_SECS,
            Some(v) => v.as_u64().ok_or("the token endpoint's expires_in is not a whole number of seconds")?,
        };
        // Used until `skew` before it expires; a lifetime shorter than the skew is used for
        // half of it (never past its expiry).
        let lifetime = lifetime.min(MAX_CACHE_SECS);
        let skew = self.raw.refresh_skew_secs;
        let usable = if lifetime > skew { lifetime - skew } else { lifetime / 2 };
        Ok((token.to_string(), now_ns.saturating_add(usable.saturating_mul(1_000_000_000))))
    }

    /// The lease deadline of an exchange started at `now_ns`.
    pub fn lease_deadline(&self, now_ns: u64) -> u64 {
        now_ns.saturating_add(self.raw.timeout_ms.saturating_mul(1_000_000)).saturating_add(LEASE_GRACE_NS)
    }
}

/// RFC 6749 `error` codes are `%x20-21 / %x23-5B / %x5D-7E`; only short plain codes are echoed.
fn is_error_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// 64-bit FNV-1a: a deterministic hash, the same on every worker and in both builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// `application/x-www-form-urlencoded` (WHATWG): unreserved bytes as they are, space as `+`.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What a cache slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot<'a> {
    /// Nothing usable (never written, or released).
    Vacant,
    /// `identity`'s token, used until `until_ns`.
    Token { identity: &'a str, until_ns: u64, token: &'a str },
    /// `identity`'s exchange is in flight until `deadline_ns` at the latest.
    Lease { identity: &'a str, deadline_ns: u64 },
    /// `identity`'s last exchange failed at `at_ns`.
    Failed { identity: &'a str, at_ns: u64 },
}

const TAG_TOKEN: u8 = b'T';
const TAG_LEASE: u8 = b'L';
const TAG_FAILED: u8 = b'F';

impl<'a> Slot<'a> {
    /// Reads stored bytes; anything unreadable is [`Slot::Vacant`].
    pub fn decode(bytes: Option<&'a [u8]>) -> Self {
        let Some(bytes) = bytes else {
            return Self::Vacant;
        };
        let (Some(&tag), Some(time), Some(len)) = (bytes.first(), bytes.get(1..9), bytes.get(9..13)) else {
            return Self::Vacant;
        };
        let time = u64::from_le_bytes(time.try_into().unwrap_or([0; 8]));
        let len = u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize;
        let Some(identity) = bytes.get(13..13 + len).and_then(|b| std::str::from_utf8(b).ok()) else {
            return Self::Vacant;
        };
        let rest = bytes.get(13 + len..).unwrap_or_default();
        match tag {
            TAG_TOKEN => match std::str::from_utf8(rest) {
                Ok(token) => Self::Token { identity, until_ns: time, token },
                Err(_) => Self::Vacant,
            },
            TAG_LEASE => Self::Lease { identity, deadline_ns: time },
            TAG_FAILED => Self::Failed { identity, at_ns: time },
            _ => Self::Vacant,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (tag, identity, time, rest) = match self {
            Self::Vacant => return vec![0],
            Self::Token { identity, until_ns, token } => (TAG_TOKEN, *identity, *until_ns, token.as_bytes()),
            Self::Lease { identity, deadline_ns } => (TAG_LEASE, *identity, *deadline_ns, &[][..]),
            Self::Failed { identity, at_ns } => (TAG_FAILED, *identity, *at_ns, &[][..]),
        };
        let mut out = Vec::with_capacity(13 + identity.len() + rest.len());
        out.push(tag);
        out.extend_from_slice(&time.to_le_bytes());
        out.extend_from_slice(&u32::try_from(identity.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(identity.as_bytes());
        out.extend_from_slice(rest);
        out
    }
}

/// What a request does after looking at its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh token: use it, no exchange.
    Hit(String),
    /// This request holds the lease: make the exchange.
    Lead,
    /// Another request's exchange for this identity is in flight: park.
    Wait,
    /// The exchange this request waited for failed.
    Failed,
}

/// Looks at `identity`'s slot at `now_ns`: the decision, and the bytes to write (`Some`
/// only when this request takes the lease). `waiting_since_ns`: when this request parked
/// (`None` on its first look), so that it shares the failure of the exchange it waited for.
pub fn look(
    stored: Option<&[u8]>,
    identity: &str,
    now_ns: u64,
    lease_deadline_ns: u64,
    waiting_since_ns: Option<u64>,
) -> (Lookup, Option<Vec<u8>>) {
    let lead = || (Lookup::Lead, Some(Slot::Lease { identity, deadline_ns: lease_deadline_ns }.encode()));
    match Slot::decode(stored) {
        Slot::Token { identity: own, until_ns, token } if own == identity && now_ns < until_ns => {
            (Lookup::Hit(token.to_string()), None)
        }
        Slot::Lease { identity: own, deadline_ns } if own == identity && now_ns < deadline_ns => (Lookup::Wait, None),
        Slot::Failed { identity: own, at_ns }
            if own == identity && waiting_since_ns.is_some_and(|since| since <= at_ns) =>
        {
            (Lookup::Failed, None)
        }
        _ => lead(),
    }
}

/// The bytes that settle `identity`'s exchange: its token (`Ok`), or its failure. Written
/// only while the slot still holds this identity's lease (a slot taken over by another
/// identity, or by a later lease after this one expired, is left alone).
pub fn settle(
    stored: Option<&[u8]>,
    identity: &str,
    lease_deadline_ns: u64,
    outcome: Result<(&str, u64), ()>,
    now_ns: u64,
) -> Option<Vec<u8>> {
    match Slot::decode(stored) {
        Slot::Lease { identity: own, deadline_ns } if own == identity && deadline_ns == lease_deadline_ns => {}
        _ => return None,
    }
    Some(match outcome {
        Ok((token, until_ns)) => Slot::Token { identity, until_ns, token }.encode(),
        Err(()) => Slot::Failed { identity, at_ns: now_ns }.encode(),
    })
}

/// The bytes that release `identity`'s lease when its holder went away before the
/// exchange settled: the slot is vacant again (the waiters then lead anew).
pub fn release(stored: Option<&[u8]>, identity: &str, lease_deadline_ns: u64) -> Option<Vec<u8>> {
    match Slot::decode(stored) {
        Slot::Lease { identity: own, deadline_ns } if own == identity && deadline_ns == lease_deadline_ns => {
            Some(Slot::Vacant.encode())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
