//! Strict JSON-RPC 2.0 parsing.
//!
//! The filter decides on what it parsed and Envoy forwards the original bytes, so the
//! filter and the upstream must never read the same bytes differently. Two classic
//! parser differentials are closed here: duplicate object keys (`{"name":"ok","name":"delete"}`
//! is "ok" to a first-wins parser and "delete" to a last-wins one) are refused anywhere in
//! the document, and bytes that are not UTF-8 are refused before parsing.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use thiserror::Error;

/// JSON-RPC / MCP error codes the gateway emits. Never write these as literals in logic.
pub mod code {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Invalid method parameter(s).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error (used when an upstream answer cannot be governed).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// MCP 2026-07-28: routing headers disagree with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// Gateway: the caller is not authenticated.
    pub const UNAUTHENTICATED: i64 = -32001;
    /// Gateway: the caller may not perform this call.
    pub const FORBIDDEN: i64 = -32003;
    /// Gateway: a rate limit, quota or in-flight limit refused the call (HTTP 429).
    pub const RATE_LIMITED: i64 = -32029;
}

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("request body is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("duplicate key \"{key}\" in JSON object")]
    DuplicateKey { key: String },
    #[error("malformed JSON: {detail}")]
    Malformed { detail: String },
}

/// Parses `bytes` as one JSON document, refusing non-UTF-8 input, duplicate keys at any
/// depth, and trailing garbage. Nesting is bounded by serde_json's recursion limit (128).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 { offset: e.valid_up_to() })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(value)
}

const DUPLICATE_MARKER: &str = "\u{0}meshgate-duplicate-key:";

fn classify(e: serde_json::Error) -> ParseError {
    let msg = e.to_string();
    match msg.find(DUPLICATE_MARKER) {
        Some(start) => {
            let rest = &msg[start + DUPLICATE_MARKER.len()..];
            let key = rest.split('\u{0}').next().unwrap_or_default().to_string();
            ParseError::DuplicateKey { key }
        }
        None => ParseError::Malformed { detail: msg },
    }
}

/// Builds a `serde_json::Value`, failing on the first duplicate key.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUPLICATE_MARKER}{key}\u{0}")));
            }
            let value = map.next_value_seed(StrictValue)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A JSON-RPC error object with the id it answers, rendered as a complete response body.
pub fn error_body(id: Option<&Value>, code: i64, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": { "code": code, "message": message },
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_plain_json() {
        let v = parse_strict(br#"{"a":[1,2,{"b":null}],"c":"x"}"#);
        assert_eq!(v, Ok(serde_json::json!({"a":[1,2,{"b":null}],"c":"x"})));
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        for body in [
            &br#"{"name":"ok","name":"delete"}"#[..],
            br#"{"params":{"name":"ok","name":"delete"}}"#,
            br#"{"a":[{"x":1,"y":2,"x":3}]}"#,
            br#"{"a":1,"\u0061":2}"#,
        ] {
            match parse_strict(body) {
                Err(ParseError::DuplicateKey { .. }) => {}
                other => panic!("{} gave {other:?}", String::from_utf8_lossy(body)),
            }
        }
        assert_eq!(
            parse_strict(br#"{"params":{"name":"ok","name":"delete"}}"#),
            Err(ParseError::DuplicateKey { key: "name".into() })
        );
    }

    #[test]
    fn refuses_non_utf8_and_garbage() {
        assert_eq!(parse_strict(b"{\"a\":\"\xff\"}"), Err(ParseError::NotUtf8 { offset: 6 }));
        assert!(matches!(parse_strict(b"{\"a\":1} x"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_strict(b"{\"a\":"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_strict(b""), Err(ParseError::Malformed { .. })));
    }

    #[test]
    fn refuses_unbounded_nesting() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(matches!(parse_strict(deep.as_bytes()), Err(ParseError::Malformed { .. })));
    }

    #[test]
    fn error_body_is_a_jsonrpc_error() {
        let body = error_body(Some(&serde_json::json!(7)), code::FORBIDDEN, "no");
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v, serde_json::json!({"jsonrpc":"2.0","id":7,"error":{"code":-32003,"message":"no"}}));
    }

    proptest! {
        /// Whatever serde_json accepts without duplicates, the strict parser accepts identically.
        #[test]
        fn agrees_with_serde_json_on_valid_documents(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap_or_default();
            prop_assert_eq!(parse_strict(text.as_bytes()), Ok(v));
        }

        /// Never panics on arbitrary bytes.
        #[test]
        fn total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_strict(&bytes);
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\u{e9}\"\\\\]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
