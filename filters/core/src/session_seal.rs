//! Sealed session ids of virtual servers in the session-based MCP eras (2025-11-25 and
//! earlier).
//!
//! A client of a virtual server holds ONE `Mcp-Session-Id`; the gateway needs, on every
//! request, the session id each backing server issued, and must know the id was issued to
//! this caller. Nothing is stored anywhere: the backend session ids, the consumer, the
//! virtual server, the protocol version each backend negotiated and the issue time are
//! sealed into the id itself with an AEAD (XChaCha20-Poly1305) under a key the control
//! plane distributes (an environment variable named in the registry, passed to Envoy like
//! every other filter secret). Any Envoy holding the key can unseal it, across restarts.
//!
//! Invariants:
//! - A sealed id reveals nothing of what it carries (encrypted) and cannot be altered or
//!   forged without the key (authenticated): any change fails to unseal.
//! - The nonce is derived from the sealed content with a keyed hash (a synthetic IV), so no
//!   randomness source is needed in either build; two ids are equal only when everything
//!   they carry, issue time in nanoseconds included, is equal.
//! - Rotation: ids are sealed with the current key and unsealed with the current or the
//!   previous one, so ids issued before a rotation keep working until the previous key is
//!   dropped.
//! - The key never appears in `Debug` output, logs or errors.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, SecretSource};

/// Shortest secret accepted in the key variables.
pub const MIN_KEY_BYTES: usize = 32;

/// Prefix of every sealed id (format version 1): `mgs1.` + base64url(nonce ‖ ciphertext).
const PREFIX: &str = "mgs1.";

/// Bound into every seal as associated data, so a ciphertext made for anything else under
/// the same key never unseals as a session.
const ASSOCIATED_DATA: &[u8] = b"meshgate virtual session v1";

/// Longest sealed id read (a client header; unsealing costs time proportional to length).
pub const MAX_SEALED_LEN: usize = 8 * 1024;

/// How long a sealed id is accepted after it was issued. Past it the client gets 404 and
/// initializes again (as after any session expiry).
pub const MAX_AGE_SECS: u64 = 24 * 60 * 60;

const NONCE_LEN: usize = 24;

/// One key: the AEAD key and the key of the nonce derivation, both derived from the
/// operator's secret.
#[derive(Clone)]
struct Key {
    aead: XChaCha20Poly1305,
    nonce_mac: [u8; 32],
}

impl Key {
    fn from_secret(secret: &[u8]) -> Result<Self, String> {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(label);
            h.update(secret);
            h.finalize().into()
        };
        let aead = XChaCha20Poly1305::new_from_slice(&derive(b"meshgate virtual session aead key\0"))
            .map_err(|_| "invalid key length".to_string())?;
        Ok(Self { aead, nonce_mac: derive(b"meshgate virtual session nonce key\0") })
    }
}

/// The keys sessions are sealed and unsealed with.
#[derive(Clone)]
pub struct SessionKeys {
    current: Key,
    previous: Option<Key>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys").field("previous", &self.previous.is_some()).finish_non_exhaustive()
    }
}

impl PartialEq for SessionKeys {
    /// Keys are never compared: two configurations differ in their keys only by their
    /// variable names, which the raw configuration compares.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl SessionKeys {
    /// The keys named by `virtual_session_key_env` (required) and
    /// `virtual_session_previous_key_env` (optional), read from `secrets`.
    pub fn compile(
        current_env: &str,
        previous_env: Option<&str>,
        secrets: &dyn SecretSource,
    ) -> Result<Self, ConfigError> {
        let read = |at: &str, var: &str| -> Result<Key, ConfigError> {
            let secret = secrets
                .secret(var)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ConfigError::invalid(at, format!("environment variable {var} is not set or empty")))?;
            if secret.len() < MIN_KEY_BYTES {
                return Err(ConfigError::invalid(
                    at,
                    format!("the key in {var} is shorter than {MIN_KEY_BYTES} bytes"),
                ));
            }
            Key::from_secret(secret.as_bytes()).map_err(|e| ConfigError::invalid(at, e))
        };
        let current = read("virtual_session_key_env", current_env)?;
        let previous = match previous_env {
            Some(var) => Some(read("virtual_session_previous_key_env", var)?),
            None => None,
        };
        Ok(Self { current, previous })
    }

    /// `session` sealed with the current key.
    pub fn seal(&self, session: &Session) -> String {
        // Serializing owned strings and numbers cannot fail.
        let plaintext = serde_json::to_vec(session).unwrap_or_default();
        let key = &self.current;
        let tag: [u8; 32] = match <Hmac<Sha256> as Mac>::new_from_slice(&key.nonce_mac) {
            Ok(mut mac) => {
                mac.update(&plaintext);
                mac.finalize().into_bytes().into()
            }
            // HMAC takes keys of any length: not reached.
            Err(_) => Sha256::new().chain_update(key.nonce_mac).chain_update(&plaintext).finalize().into(),
        };
        let mut nonce = XNonce::default();
        nonce.copy_from_slice(&tag[..NONCE_LEN]);
        let nonce = &nonce;
        let sealed = key.aead.encrypt(nonce, Payload { msg: &plaintext, aad: ASSOCIATED_DATA }).unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(nonce);
        raw.extend_from_slice(&sealed);
        format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
    }

    /// The session sealed in `id` by the current or the previous key. Says nothing about
    /// who may use it or for how long: see [`Session::check`].
    pub fn unseal(&self, id: &str) -> Result<Session, UnsealError> {
        let id = id.trim();
        if id.len() > MAX_SEALED_LEN {
            return Err(UnsealError::Malformed);
        }
        let encoded = id.strip_prefix(PREFIX).ok_or(UnsealError::Malformed)?;
        let raw =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).map_err(|_| UnsealError::Malformed)?;
        if raw.len() <= NONCE_LEN {
            return Err(UnsealError::Malformed);
        }
        let (nonce_bytes, sealed) = raw.split_at(NONCE_LEN);
        let mut nonce = XNonce::default();
        nonce.copy_from_slice(nonce_bytes);
        let nonce = &nonce;
        let payload = || Payload { msg: sealed, aad: ASSOCIATED_DATA };
        let plaintext = self
            .current
            .aead
            .decrypt(nonce, payload())
            .or_else(|e| match &self.previous {
                Some(previous) => previous.aead.decrypt(nonce, payload()),
                None => Err(e),
            })
            .map_err(|_| UnsealError::NotAuthentic)?;
        serde_json::from_slice(&plaintext).map_err(|_| UnsealError::NotAuthentic)
    }
}

/// Why a session id does not unseal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    #[error("it is not a session id of this gateway")]
    Malformed,
    #[error("it was not issued by this gateway or was altered")]
    NotAuthentic,
}

/// One backing server's session, as the backend negotiated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSession {
    /// The backing server.
    #[serde(rename = "n")]
    pub server: String,
    /// The `Mcp-Session-Id` it issued; `None`: it runs without sessions (stateless).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The protocol version it answered `initialize` with (sent as `MCP-Protocol-Version`).
    #[serde(rename = "p")]
    pub protocol_version: String,
}

/// What a sealed session id carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The virtual server it was issued on.
    #[serde(rename = "v")]
    pub virtual_server: String,
    /// The consumer it was issued to.
    #[serde(rename = "c")]
    pub consumer: String,
    /// Issue time, Unix nanoseconds (also makes every id unique).
    #[serde(rename = "t")]
    pub issued_ns: u64,
    /// The protocol version the client was answered with.
    #[serde(rename = "p")]
    pub protocol_version: String,
    /// Every backing server that initialized, in backing-server order.
    #[serde(rename = "b")]
    pub backends: Vec<BackendSession>,
}

/// Why an authentic session may not be used by this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misuse {
    /// Issued on another virtual server (unknown here: 404).
    OtherVirtualServer,
    /// Older than [`MAX_AGE_SECS`] (404: the client initializes again).
    Expired,
    /// Issued to another consumer (403: a replayed id).
    OtherConsumer,
}

impl Session {
    /// Whether `consumer` may use this session on `virtual_server` at `now_ns`.
    pub fn check(&self, virtual_server: &str, consumer: &str, now_ns: u64) -> Result<(), Misuse> {
        if self.virtual_server != virtual_server {
            return Err(Misuse::OtherVirtualServer);
        }
        if now_ns.saturating_sub(self.issued_ns) / 1_000_000_000 > MAX_AGE_SECS {
            return Err(Misuse::Expired);
        }
        if self.consumer != consumer {
            return Err(Misuse::OtherConsumer);
        }
        Ok(())
    }

    /// This session's backend `server`, if it initialized.
    pub fn backend(&self, server: &str) -> Option<&BackendSession> {
        self.backends.iter().find(|b| b.server == server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vars(Vec<(&'static str, &'static str)>);
    impl SecretSource for Vars {
        fn secret(&self, name: &str) -> Option<String> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        }
    }

    const A: &str = "a-secret-of-at-least-thirty-two-bytes!!";
    const B: &str = "another-secret-of-thirty-two-bytes-or-more";

    fn keys(current: &'static str, previous: Option<&'static str>) -> SessionKeys {
        let vars = Vars(vec![("CUR", current), ("PREV", previous.unwrap_or(""))]);
        SessionKeys::compile("CUR", previous.map(|_| "PREV"), &vars).unwrap()
    }

    fn session() -> Session {
        Session {
            virtual_server: "work".into(),
            consumer: "alice".into(),
            issued_ns: 1_700_000_000_000_000_000,
            protocol_version: "2025-11-25".into(),
            backends: vec![
                BackendSession {
                    server: "crm".into(),
                    session_id: Some("abc123".into()),
                    protocol_version: "2025-11-25".into(),
                },
                BackendSession { server: "docs".into(), session_id: None, protocol_version: "2025-06-18".into() },
            ],
        }
    }

    #[test]
    fn a_sealed_session_unseals_to_what_was_sealed_and_shows_nothing() {
        let k = keys(A, None);
        let id = k.seal(&session());
        assert!(id.starts_with("mgs1."));
        assert!(!id.contains("abc123") && !id.contains("alice") && !id.contains("crm"), "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_graphic()), "{id}");
        assert_eq!(k.unseal(&id).unwrap(), session());
    }

    #[test]
    fn any_change_to_the_id_is_refused() {
        let k = keys(A, None);
        let id = k.seal(&session());
        for i in PREFIX.len()..id.len() {
            let mut bytes = id.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(k.unseal(&tampered).is_err(), "byte {i} changed and still unsealed");
        }
        assert_eq!(k.unseal(&id[..id.len() - 4]).unwrap_err(), UnsealError::NotAuthentic);
        assert_eq!(k.unseal("mgs1.").unwrap_err(), UnsealError::Malformed);
        assert_eq!(k.unseal("0d3f2a").unwrap_err(), UnsealError::Malformed);
    }

    #[test]
    fn another_key_cannot_unseal_and_the_previous_key_still_does() {
        let old = keys(A, None);
        let id = old.seal(&session());
        assert_eq!(keys(B, None).unseal(&id).unwrap_err(), UnsealError::NotAuthentic);
        let rotated = keys(B, Some(A));
        assert_eq!(rotated.unseal(&id).unwrap(), session());
        // New ids are sealed with the new key only.
        let new = rotated.seal(&session());
        assert!(old.unseal(&new).is_err());
        assert!(keys(B, None).unseal(&new).is_ok());
    }

    #[test]
    fn keys_are_validated_and_never_shown() {
        let short = Vars(vec![("K", "short")]);
        let e = SessionKeys::compile("K", None, &short).unwrap_err().to_string();
        assert!(e.contains("shorter than 32"), "{e}");
        assert!(!e.contains("short\""), "{e}");
        let e = SessionKeys::compile("MISSING", None, &short).unwrap_err().to_string();
        assert!(e.contains("MISSING"), "{e}");
        let shown = format!("{:?}", keys(A, Some(B)));
        assert!(!shown.contains(A) && !shown.contains(B), "{shown}");
    }

    #[test]
    fn use_is_bound_to_the_consumer_the_virtual_server_and_an_age() {
        let s = session();
        let now = s.issued_ns + 1_000_000_000;
        assert_eq!(s.check("work", "alice", now), Ok(()));
        assert_eq!(s.check("work", "mallory", now), Err(Misuse::OtherConsumer));
        assert_eq!(s.check("other", "alice", now), Err(Misuse::OtherVirtualServer));
        let late = s.issued_ns + (MAX_AGE_SECS + 1) * 1_000_000_000;
        assert_eq!(s.check("work", "alice", late), Err(Misuse::Expired));
    }

    #[test]
    fn equal_content_gives_equal_ids_and_any_difference_other_ids() {
        let k = keys(A, None);
        let mut later = session();
        later.issued_ns += 1;
        assert_eq!(k.seal(&session()), k.seal(&session()));
        assert_ne!(k.seal(&session()), k.seal(&later));
    }
}
