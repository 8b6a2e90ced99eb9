//! Client certificates as an identity source (`auth.mtls`): a verified peer certificate's
//! SPIFFE ID (URI SAN) or DNS SAN names a consumer and its roles.
//!
//! ## How the filter learns the verified peer
//! Envoy terminates TLS and verifies the client certificate against the listener's client CA.
//! The listener's HTTP connection manager runs with `forward_client_cert_details:
//! SANITIZE_SET` and `set_current_client_cert_details { uri, dns }`: before any HTTP filter
//! runs, Envoy **removes** every `x-forwarded-client-cert` (XFCC) header the client sent and,
//! on a connection whose peer presented a verified certificate, sets exactly one XFCC
//! element describing it (`Hash=…;URI=…;DNS=…`). Without a certificate the header is simply
//! gone. So the header the filter reads is Envoy's own statement about this connection,
//! never the client's.
//!
//! Why the header and not a connection attribute: both builds read request headers through
//! the one [`crate::pipeline`] host trait, so the same code (and the same in-memory tests)
//! covers wasm and native; proxy-wasm's `connection.uri_san_peer_certificate` has no DNS
//! SAN counterpart for every SAN, and the dynamic-module attribute getters are not
//! exercised in Envoy 1.40 (`DYNAMIC-MODULES.md`). The header is already in the header
//! slice the filter borrows, so reading it costs no host call; it is read only when
//! `auth.mtls` has entries (no cost otherwise).
//!
//! Fail closed: more than one XFCC element (Envoy never sets more under `SANITIZE_SET`), a
//! malformed header, or SANs that map to two different entries are refused, never guessed.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AuthError, AuthMethod, Consumer};
use crate::config::ConfigError;

/// The header Envoy writes the verified peer certificate into.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";
/// The URI scheme of a SPIFFE ID.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// One `auth.mtls` entry: exactly one of `spiffe_id` and `dns_san`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeerIdentity {
    /// `spiffe://<trust domain>/<path>`, matched exactly against the certificate's URI SANs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// A DNS name, matched exactly (case-insensitively) against the certificate's DNS SANs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_san: Option<String>,
    pub consumer: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// What a SAN is, for the lookup table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum San {
    Uri(String),
    Dns(String),
}

/// Validates one entry's `(consumer, roles, registry path)` as for API keys.
pub type ConsumerCheck<'a> = &'a dyn Fn(&str, &[String], &str) -> Result<(), ConfigError>;

/// Compiled `auth.mtls`: SAN → consumer.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentities {
    by_san: HashMap<San, Arc<Consumer>>,
}

impl PeerIdentities {
    /// Compiles the entries; `check` validates consumer and roles as for API keys.
    pub fn compile(raw: &[RawPeerIdentity], check: ConsumerCheck<'_>) -> Result<Self, ConfigError> {
        let mut by_san = HashMap::new();
        for (i, entry) in raw.iter().enumerate() {
            let path = format!("auth.mtls[{i}]");
            let san = match (&entry.spiffe_id, &entry.dns_san) {
                (Some(id), None) => San::Uri(spiffe_id(id, &path)?),
                (None, Some(name)) => San::Dns(dns_san(name, &path)?),
                _ => return Err(ConfigError::invalid(path, "exactly one of spiffe_id and dns_san is required")),
            };
            check(&entry.consumer, &entry.roles, &path)?;
            let consumer = Consumer {
                name: entry.consumer.clone(),
                roles: entry.roles.clone(),
                method: AuthMethod::ClientCertificate,
            };
            if by_san.insert(san, Arc::new(consumer)).is_some() {
                return Err(ConfigError::invalid(path, "duplicate client certificate identity"));
            }
        }
        Ok(Self { by_san })
    }

    pub fn is_empty(&self) -> bool {
        self.by_san.is_empty()
    }

    /// The consumer of the certificate Envoy described in `xfcc` (one XFCC element).
    pub fn identify(&self, xfcc: &str) -> Result<Arc<Consumer>, AuthError> {
        let element = parse_xfcc(xfcc).ok_or(AuthError::BadPeerCertificate)?;
        let mut found: Option<&Arc<Consumer>> = None;
        for san in element {
            if let Some(consumer) = self.by_san.get(&san) {
                match found {
                    Some(seen) if !Arc::ptr_eq(seen, consumer) => return Err(AuthError::AmbiguousPeer),
                    _ => found = Some(consumer),
                }
            }
        }
        found.cloned().ok_or(AuthError::UnknownPeer)
    }
}

fn spiffe_id(value: &str, path: &str) -> Result<String, ConfigError> {
    let rest = value.strip_prefix(SPIFFE_SCHEME);
    let valid = rest.is_some_and(|rest| {
        let (domain, tail) = rest.split_once('/').unwrap_or((rest, ""));
        !domain.is_empty()
            && domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            && !tail.ends_with('/')
            && !value.bytes().any(|b| b.is_ascii_whitespace() || b"?#\";,".contains(&b))
    });
    if !valid {
        return Err(ConfigError::invalid(
            format!("{path}.spiffe_id"),
            format!("\"{value}\" is not a SPIFFE ID (spiffe://<lower-case trust domain>[/path], no query or fragment)"),
        ));
    }
    Ok(value.to_string())
}

fn dns_san(value: &str, path: &str) -> Result<String, ConfigError> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(ConfigError::invalid(format!("{path}.dns_san"), format!("\"{value}\" is not a DNS name")));
    }
    Ok(value.to_ascii_lowercase())
}

/// The URI and DNS SANs of a one-element XFCC header, or `None` when it is not exactly one
/// well-formed element. Values may be double-quoted (with `\"` escapes), as Envoy quotes
/// values holding `,`, `;` or `=`.
fn parse_xfcc(value: &str) -> Option<Vec<San>> {
    let mut sans = Vec::new();
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    loop {
        let (key, after_key) = rest.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || key.bytes().any(|b| !b.is_ascii_alphabetic()) {
            return None;
        }
        let (raw_value, after_value) = take_value(after_key)?;
        if key.eq_ignore_ascii_case("uri") {
            sans.push(San::Uri(raw_value));
        } else if key.eq_ignore_ascii_case("dns") {
            sans.push(San::Dns(raw_value.to_ascii_lowercase()));
        }
        match after_value.as_bytes().first() {
            None => return Some(sans),
            Some(b';') => rest = &after_value[1..],
            // A second element: Envoy sets exactly one under SANITIZE_SET.
            Some(_) => return None,
        }
    }
}

/// One value (quoted or bare) and what follows it (starting at `;`, `,` or the end).
fn take_value(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?.1),
                '"' => return Some((out, &quoted[i + 1..])),
                c => out.push(c),
            }
        }
        None
    } else {
        let end = text.find([';', ',']).unwrap_or(text.len());
        let bare = &text[..end];
        if bare.contains('"') {
            return None;
        }
        Some((bare.to_string(), &text[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities() -> PeerIdentities {
        let raw = vec![
            RawPeerIdentity {
                spiffe_id: Some("spiffe://mesh.example/ns/agents/sa/planner".into()),
                dns_san: None,
                consumer: "planner".into(),
                roles: vec!["reader".into()],
            },
            RawPeerIdentity {
                spiffe_id: None,
                dns_san: Some("Ops.Example.com".into()),
                consumer: "ops".into(),
                roles: vec!["admin".into()],
            },
        ];
        PeerIdentities::compile(&raw, &|_, _, _| Ok(())).unwrap()
    }

    #[test]
    fn spiffe_id_maps_to_its_consumer() {
        let c = identities()
            .identify("Hash=ab12;URI=spiffe://mesh.example/ns/agents/sa/planner;DNS=x.example.com")
            .unwrap();
        assert_eq!(c.name, "planner");
        assert_eq!(c.roles, ["reader"]);
        assert_eq!(c.method, AuthMethod::ClientCertificate);
    }

    #[test]
    fn dns_san_matches_case_insensitively_and_quoted_values_parse() {
        let c = identities().identify("By=spiffe://gw;Hash=1;Subject=\"CN=a,O=b\";DNS=ops.EXAMPLE.com").unwrap();
        assert_eq!(c.name, "ops");
    }

    #[test]
    fn unmapped_ambiguous_and_malformed_are_refused() {
        let ids = identities();
        assert_eq!(ids.identify("Hash=1;URI=spiffe://mesh.example/other").unwrap_err(), AuthError::UnknownPeer);
        assert_eq!(
            ids.identify("Hash=1;URI=spiffe://mesh.example/ns/agents/sa/planner;DNS=ops.example.com").unwrap_err(),
            AuthError::AmbiguousPeer
        );
        // Two elements (a client-supplied one appended), an unterminated quote, no key.
        for bad in [
            "Hash=1;URI=spiffe://mesh.example/ns/agents/sa/planner,Hash=2;URI=spiffe://x/y",
            "Hash=1;Subject=\"CN=a",
            "",
            "URI",
            "=x",
        ] {
            assert_eq!(ids.identify(bad).unwrap_err(), AuthError::BadPeerCertificate, "{bad}");
        }
        // A prefix of a mapped ID is another ID.
        assert_eq!(ids.identify("URI=spiffe://mesh.example/ns/agents/sa/plan").unwrap_err(), AuthError::UnknownPeer);
    }

    #[test]
    fn entries_are_validated() {
        let entry = |spiffe: Option<&str>, dns: Option<&str>| RawPeerIdentity {
            spiffe_id: spiffe.map(String::from),
            dns_san: dns.map(String::from),
            consumer: "c".into(),
            roles: vec![],
        };
        let ok = |_: &str, _: &[String], _: &str| Ok(());
        for bad in [
            entry(None, None),
            entry(Some("spiffe://a/b"), Some("a.example")),
            entry(Some("https://a/b"), None),
            entry(Some("spiffe://A/b"), None),
            entry(Some("spiffe://a/b?x"), None),
            entry(None, Some("bad name")),
        ] {
            assert!(PeerIdentities::compile(std::slice::from_ref(&bad), &ok).is_err(), "{bad:?}");
        }
        let dup = [entry(Some("spiffe://a/b"), None), entry(Some("spiffe://a/b"), None)];
        let e = PeerIdentities::compile(&dup, &ok).unwrap_err();
        assert!(e.to_string().contains("auth.mtls[1]"), "{e}");
    }
}
