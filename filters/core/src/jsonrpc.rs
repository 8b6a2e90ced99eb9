//! Strict JSON-RPC 2.0 parsing.
//!
//! The filter decides on what it parsed and Envoy forwards the original bytes, so the
//! filter and the upstream must never read the same bytes differently. Two classic
//! parser differentials are closed here: duplicate object keys (`{"name":"ok","name":"delete"}`
//! is "ok" to a first-wins parser and "delete" to a last-wins one) are refused anywhere in
//! the document, and bytes that are not UTF-8 are refused before parsing.
//!
//! Two entry points accept exactly the same documents: [`validate_strict`] (the request
//! path: a validating scan that builds nothing, then [`RawJson`] reads the few fields the
//! gateway needs in place) and [`parse_strict`] (a full `serde_json::Value`). Refused input
//! gets its error from `parse_strict` either way, so messages do not depend on the path.

mod scan;

pub use scan::{Elements, JsonKind, Members, RawJson, RawKey, StrictJson};

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
    /// The method does not exist or is not available (through the gateway).
    pub const METHOD_NOT_FOUND: i64 = -32601;
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
    /// Gateway: the upstream MCP server could not answer (unreachable, reset, timed out, or
    /// an error page instead of an MCP answer).
    pub const UPSTREAM_UNAVAILABLE: i64 = -32004;
    /// MCP 2025-11-25 `URLElicitationRequiredError`: the request needs the user to complete
    /// a URL-mode elicitation first (the gateway: a person's approval, [`crate::approval`]).
    pub const URL_ELICITATION_REQUIRED: i64 = -32042;
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

impl ParseError {
    /// The JSON-RPC error code a request refused for this reason gets.
    pub fn code(&self) -> i64 {
        match self {
            ParseError::DuplicateKey { .. } => code::INVALID_REQUEST,
            ParseError::NotUtf8 { .. } | ParseError::Malformed { .. } => code::PARSE_ERROR,
        }
    }
}

/// Validates `bytes` as one strict JSON document (the rules of [`parse_strict`]) without
/// building it, and returns it for reading in place. Refused input costs a second,
/// tree-building parse that produces the exact error.
pub fn validate_strict(bytes: &[u8]) -> Result<StrictJson<'_>, ParseError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Some(doc) = scan::validate(text) {
            return Ok(doc);
        }
    }
    match parse_strict(bytes) {
        Err(e) => Err(e),
        // The scan refused what the parser accepts: a bug in the scan. Refusing keeps the
        // request path fail-closed; the property tests keep the two in agreement.
        Ok(_) => Err(ParseError::Malformed { detail: "document refused by the strict scan".into() }),
    }
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
            // The key is the caller's text: shown escaped and cut short (128 chars) in the
            // error body, the audit reason and the log.
            let key = crate::reject::printable(rest.split('\u{0}').next().unwrap_or_default());
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
        let long = "k".repeat(10_000);
        let body = format!(r#"{{"{long}":1,"{long}":2}}"#);
        assert_eq!(
            parse_strict(body.as_bytes()),
            Err(ParseError::DuplicateKey { key: format!("{}…", "k".repeat(128)) })
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

    /// `validate_strict` must accept exactly what `parse_strict` accepts, with its errors.
    fn assert_agree(bytes: &[u8]) {
        let slow = parse_strict(bytes);
        let fast = validate_strict(bytes);
        match (&slow, &fast) {
            (Ok(_), Ok(doc)) => assert_eq!(Ok(doc.root().to_value()), slow, "{}", String::from_utf8_lossy(bytes)),
            (Err(a), Err(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(bytes)),
            _ => panic!("disagree on {:?}: parse {slow:?} vs validate {fast:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn validate_agrees_on_edge_cases() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        let nested_obj = |n: usize| r#"{"a":"#.repeat(n) + "1" + &"}".repeat(n);
        let many_keys = |dup: &str| {
            let mut keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
            keys.push(dup.to_string());
            format!("{{{}}}", keys.join(","))
        };
        let cases: Vec<String> = vec![
            // numbers
            "0",
            "-0",
            "1",
            "-1",
            "1.5",
            "-1.5e3",
            "1E+2",
            "1e-400",
            "1e400",
            "-1e400",
            "1e308",
            "1.8e308",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "--1",
            "1.e3",
            "0x10",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            // strings
            r#""""#,
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\u00e9\u0041""#,
            r#""\ud83d\ude00""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
            r#""\ud800\n""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\x""#,
            "\"a\tb\"",
            "\"a\u{1}b\"",
            r#""unterminated"#,
            r#""é and 😀""#,
            // literals and structure
            "true",
            "false",
            "null",
            "tru",
            "truex",
            "nul",
            "nulll",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{}",
            "{ }",
            "[ ]",
            r#"{"a":1,}"#,
            r#"{,}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{1:2}"#,
            r#"{"a":1 "b":2}"#,
            " [1] ",
            "[1] x",
            "",
            " ",
            "\u{feff}1",
            r#"{"a":1}{"a":2}"#,
            // duplicates: plain, escaped, nested, in large objects, in sibling objects (allowed)
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"\u0061":1,"\u0061":2}"#,
            r#"{"x":{"a":1,"a":2}}"#,
            r#"[{"a":1},{"a":1}]"#,
            r#"{"a":{"b":1},"b":{"a":1}}"#,
            r#"{"a":1,"a":2"#,
            &many_keys(r#""k39":0"#),
            &many_keys(r#""k\u0031":0"#),
            &many_keys(r#""fresh":0"#),
            // depth: 127 accepted, 128 refused, as serde_json does
            &nested(127),
            &nested(128),
            &nested_obj(127),
            &nested_obj(128),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        for case in cases {
            assert_agree(case.as_bytes());
        }
        for bytes in [&b"\"\xff\""[..], b"{\"a\":\"\xc3\"}", b"\xef\xbb\xbf{}"] {
            assert_agree(bytes);
        }
    }

    /// A number read in place (the integer fast path) is the number serde_json reads,
    /// integer or float alike.
    fn assert_number_agrees(text: &str) {
        let doc = validate_strict(text.as_bytes()).unwrap();
        let serde: Value = serde_json::from_str(text).unwrap();
        let read = doc.root().to_value();
        assert_eq!(read, serde, "{text}");
        assert_eq!(read.is_i64() || read.is_u64(), serde.is_i64() || serde.is_u64(), "{text}");
        assert_eq!(read.is_f64(), serde.is_f64(), "{text}");
    }

    #[test]
    fn numbers_read_in_place_are_serde_json_numbers() {
        for text in [
            "0",
            "-0",
            "1",
            "-1",
            "7",
            "999999999999999999",
            "-999999999999999999",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "1.0",
            "-0.0",
            "1e3",
            "1E-3",
            "0.5",
        ] {
            assert_number_agrees(text);
        }
    }

    proptest! {
        #[test]
        fn integers_read_in_place_are_serde_json_integers(i in any::<i64>(), u in any::<u64>()) {
            assert_number_agrees(&i.to_string());
            assert_number_agrees(&u.to_string());
        }

        /// Whatever serde_json accepts without duplicates, the strict parser accepts identically.
        #[test]
        fn agrees_with_serde_json_on_valid_documents(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap_or_default();
            prop_assert_eq!(parse_strict(text.as_bytes()), Ok(v));
        }

        /// Never panics on arbitrary bytes, and both entry points agree.
        #[test]
        fn total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            assert_agree(&bytes);
        }

        /// Objects whose keys may repeat, spelled plainly or escaped, short or long, at the
        /// end of the document or nested: duplicates are found exactly where the parser
        /// finds them.
        #[test]
        fn validate_agrees_on_repeated_keys(
            keys in proptest::collection::vec(0usize..9, 0..24),
            nest in proptest::collection::vec(proptest::bool::ANY, 0..24),
        ) {
            let spellings = ["a", "b", "\\u0061", "ab", "a\\u0062", "abcdefghij", "abcdefghik", "abcdefgh\\u0069j", "\\\\"];
            let mut text = String::from("{");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                let value = if nest.get(i).copied().unwrap_or(false) { r#"{"a":1,"b":[{"a":2}]}"# } else { "0" };
                text.push_str(&format!("\"{}\":{value}", spellings[*k]));
            }
            text.push('}');
            assert_agree(text.as_bytes());
        }

        /// Valid documents, compact or pretty, with one byte changed, removed or inserted:
        /// the scan and the parser accept and refuse the same ones.
        #[test]
        fn validate_agrees_on_mutated_documents(
            v in arb_json(),
            pretty in any::<bool>(),
            edit in 0usize..3,
            at in any::<proptest::sample::Index>(),
            byte in prop_oneof![Just(b'"'), Just(b'\\'), Just(b','), Just(b':'), Just(b'{'), Just(b'}'),
                Just(b'['), Just(b']'), Just(b'a'), Just(b'1'), Just(b'-'), Just(b'e'), Just(b'.'), Just(b' '),
                Just(b'u'), Just(0x01u8), Just(0xffu8)],
        ) {
            let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
            let mut bytes = text.unwrap_or_default().into_bytes();
            assert_agree(&bytes);
            let i = at.index(bytes.len() + 1);
            match edit {
                0 if i < bytes.len() => bytes[i] = byte,
                1 if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
            assert_agree(&bytes);
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\u{e9}\"\\\\\u{1}\n\u{1F600}]{0,6}".prop_map(Value::String),
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
