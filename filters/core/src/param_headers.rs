//! 2026-07-28 `Mcp-Param-{Name}` headers: tool arguments a client mirrors into HTTP headers
//! (a tool's `inputSchema` marks a property with `x-mcp-header: Name`) so intermediaries
//! can route on them without reading the body.
//!
//! The gateway does not know the tools' schemas, so it cannot tell which argument a header
//! mirrors by name. It holds the one invariant that matters to whoever reads the header
//! after it (an upstream that validates it, a later filter that routes on it): **a header
//! never says anything the body does not**.
//!
//! * Each `Mcp-Param-*` header appears once, its value is visible ASCII, space or tab
//!   (RFC 9110; the spec requires servers to refuse anything else), and a `=?base64?…?=`
//!   value decodes canonically to UTF-8.
//! * Its decoded value equals an argument of the call reachable through object keys alone
//!   (the spec's "statically reachable" properties): a string exactly, an integer
//!   numerically (`42` and `42.0`), a boolean as `true`/`false`. Otherwise: 400, -32020.
//! * Only `tools/call` carries them (checked with the other routing headers).
//! * When request redaction rewrote the body, each header is rewritten to the value now at
//!   the argument it matched, so a masked card number is masked in its header too, and
//!   header and body still agree for an upstream that validates them.
//!
//! All of this runs only for requests that carry such headers: the arguments are read into
//! a tree then, never otherwise.

use serde_json::Value;
use thiserror::Error;

use crate::jsonrpc;
use crate::mcp::{decode_header_value, encode_header_value};

/// The lowercase prefix of the headers (Envoy presents names lowercase; compared
/// case-insensitively all the same).
pub const PREFIX: &str = "mcp-param-";

/// Why an `Mcp-Param-*` header is refused (HTTP 400, JSON-RPC `HEADER_MISMATCH`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParamHeaderError {
    #[error("header {0} is repeated")]
    Repeated(String),
    #[error("header {0} contains characters a header value must not carry (send non-ASCII values as =?base64?...?=)")]
    Invalid(String),
    #[error("header {0} is not a valid =?base64?...?= value")]
    BadEncoding(String),
    #[error("header {0} does not match any argument of the call")]
    NoArgument(String),
}

/// The `Mcp-Param-*` headers of a request: lowercase name and value as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamHeaders {
    headers: Vec<(String, String)>,
}

impl ParamHeaders {
    /// Collects and checks the `Mcp-Param-*` headers among `headers`.
    pub fn from_headers(headers: &[(&str, &str)]) -> Result<Self, ParamHeaderError> {
        let mut found: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            let is_param = name.get(..PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PREFIX));
            if !is_param {
                continue;
            }
            let name = name.to_ascii_lowercase();
            if found.iter().any(|(n, _)| *n == name) {
                return Err(ParamHeaderError::Repeated(name));
            }
            if !value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                return Err(ParamHeaderError::Invalid(name));
            }
            found.push((name, value.to_string()));
        }
        Ok(Self { headers: found })
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The name of the first header, for messages.
    pub fn first_name(&self) -> Option<&str> {
        self.headers.first().map(|(n, _)| n.as_str())
    }
}

/// A header and the argument it was found to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// Lowercase header name.
    name: String,
    /// Object keys from `params.arguments` to the argument.
    path: Vec<String>,
    /// The header's decoded value.
    value: String,
}

/// Matches every header of `params` to an argument of the `tools/call` in `body`.
pub fn match_arguments(params: &ParamHeaders, body: &[u8]) -> Result<Vec<Mirrored>, ParamHeaderError> {
    if params.is_empty() {
        return Ok(Vec::new());
    }
    let arguments = arguments_of(body);
    let mut mirrored = Vec::with_capacity(params.headers.len());
    for (name, raw) in &params.headers {
        let value = decode_header_value(raw).ok_or_else(|| ParamHeaderError::BadEncoding(name.clone()))?;
        let path = arguments
            .as_ref()
            .and_then(|a| find_leaf(a, &value))
            .ok_or_else(|| ParamHeaderError::NoArgument(name.clone()))?;
        mirrored.push(Mirrored { name: name.clone(), path, value });
    }
    Ok(mirrored)
}

/// The header rewrites that keep `mirrored` headers equal to the arguments they mirror in
/// the redacted body: a header whose argument changed gets the new value (encoded for a
/// header); one whose argument can no longer be read is removed (never sent in clear).
pub fn rewrites_after_redaction(mirrored: &[Mirrored], redacted_body: &[u8]) -> Vec<(String, Option<String>)> {
    if mirrored.is_empty() {
        return Vec::new();
    }
    let arguments = arguments_of(redacted_body);
    let mut rewrites = Vec::new();
    for m in mirrored {
        let now = arguments.as_ref().and_then(|a| value_at(a, &m.path));
        match now {
            Some(Value::String(s)) if *s == m.value => {}
            Some(Value::String(s)) => rewrites.push((m.name.clone(), Some(encode_header_value(s)))),
            // Numbers and booleans are never rewritten by redaction.
            Some(Value::Number(_) | Value::Bool(_)) => {}
            _ => rewrites.push((m.name.clone(), None)),
        }
    }
    rewrites
}

/// `params.arguments` of a JSON-RPC message, as a tree.
fn arguments_of(body: &[u8]) -> Option<Value> {
    let doc = jsonrpc::validate_strict(body).ok()?;
    let arguments = doc.root().get("params")?.get("arguments")?;
    Some(arguments.to_value())
}

fn value_at<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(root, |node, key| node.as_object()?.get(key))
}

/// The path of the first primitive under `root`, through object keys only, that a header
/// value `value` mirrors.
fn find_leaf(root: &Value, value: &str) -> Option<Vec<String>> {
    let mut stack: Vec<(Vec<String>, &Value)> = vec![(Vec::new(), root)];
    while let Some((path, node)) = stack.pop() {
        match node {
            Value::Object(members) => {
                // Reversed so the walk visits members in document order.
                for (key, child) in members.iter().rev() {
                    let mut child_path = path.clone();
                    child_path.push(key.clone());
                    stack.push((child_path, child));
                }
            }
            leaf if !path.is_empty() && mirrors(leaf, value) => return Some(path),
            _ => {}
        }
    }
    None
}

/// Whether a header value is the spec's rendering of the primitive `leaf`.
fn mirrors(leaf: &Value, value: &str) -> bool {
    match leaf {
        Value::String(s) => s == value,
        Value::Bool(b) => value == if *b { "true" } else { "false" },
        Value::Number(n) => integer_of(n).is_some_and(|i| parse_integer(value) == Some(i)),
        _ => false,
    }
}

/// An integral JSON number (`42`, `42.0`), as `i128`.
fn integer_of(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    let f = n.as_f64()?;
    // Beyond 2^53 a float no longer names one integer: no match.
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_991.0).then_some(f as i128)
}

/// A canonical decimal integer, optionally with a zero fraction (`-7`, `42.0`).
fn parse_integer(value: &str) -> Option<i128> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if value.contains('.') && (fraction.is_empty() || !fraction.bytes().all(|b| b == b'0')) {
        return None;
    }
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 30 {
        return None;
    }
    whole.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    fn call(arguments: Value) -> Vec<u8> {
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":arguments}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn collects_checks_and_refuses_repeats_and_bad_bytes() {
        let h = headers(&[("mcp-param-card", "4111"), ("x-other", "y"), ("Mcp-Param-Region", "eu")]);
        let p = ParamHeaders::from_headers(&h).unwrap();
        assert_eq!(p.first_name(), Some("mcp-param-card"));
        assert_eq!(p.headers.len(), 2);
        assert!(ParamHeaders::from_headers(&headers(&[("x", "y")])).unwrap().is_empty());
        assert_eq!(
            ParamHeaders::from_headers(&headers(&[("mcp-param-a", "1"), ("MCP-PARAM-A", "2")])),
            Err(ParamHeaderError::Repeated("mcp-param-a".into()))
        );
        for bad in ["caf\u{e9}", "a\u{fffd}", "a\u{1}b", "a\u{7f}"] {
            assert_eq!(
                ParamHeaders::from_headers(&headers(&[("mcp-param-a", bad)])),
                Err(ParamHeaderError::Invalid("mcp-param-a".into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn headers_must_mirror_an_argument() {
        let body =
            call(json!({"card":"4111 1111 1111 1111","n":42,"f":7.0,"ok":true,"deep":{"region":"eu"},"list":["x"]}));
        let matched = |pairs: &[(&str, &str)]| {
            match_arguments(&ParamHeaders::from_headers(&headers(pairs)).unwrap(), &body)
                .map(|m| m.into_iter().map(|m| m.path.join(".")).collect::<Vec<_>>())
        };
        assert_eq!(matched(&[("mcp-param-card", "4111 1111 1111 1111")]), Ok(vec!["card".into()]));
        assert_eq!(matched(&[("mcp-param-n", "42")]), Ok(vec!["n".into()]));
        assert_eq!(matched(&[("mcp-param-n", "42.0")]), Ok(vec!["n".into()]));
        assert_eq!(matched(&[("mcp-param-f", "7")]), Ok(vec!["f".into()]));
        assert_eq!(matched(&[("mcp-param-ok", "true")]), Ok(vec!["ok".into()]));
        assert_eq!(matched(&[("mcp-param-region", "eu")]), Ok(vec!["deep.region".into()]));
        assert_eq!(matched(&[("mcp-param-region", "=?base64?ZXU=?=")]), Ok(vec!["deep.region".into()]));
        assert_eq!(matched(&[]), Ok(vec![]));
        for (value, want) in [
            ("x", ParamHeaderError::NoArgument("mcp-param-x".into())),
            ("42.5", ParamHeaderError::NoArgument("mcp-param-x".into())),
            ("True", ParamHeaderError::NoArgument("mcp-param-x".into())),
            ("4111111111111111", ParamHeaderError::NoArgument("mcp-param-x".into())),
            ("=?base64?!!?=", ParamHeaderError::BadEncoding("mcp-param-x".into())),
        ] {
            assert_eq!(matched(&[("mcp-param-x", value)]), Err(want), "{value}");
        }
        // Array elements are not statically reachable: nothing mirrors them.
        assert!(matched(&[("mcp-param-x", "x")]).is_err());
        // No arguments at all: no header can mirror anything.
        let none = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay"}}"#;
        let p = ParamHeaders::from_headers(&headers(&[("mcp-param-a", "1")])).unwrap();
        assert_eq!(match_arguments(&p, none), Err(ParamHeaderError::NoArgument("mcp-param-a".into())));
    }

    #[test]
    fn redaction_rewrites_the_headers_it_rewrote_the_arguments_of() {
        let body =
            call(json!({"card":"4111 1111 1111 1111","memo":"café 4111 1111 1111 1111","n":4111111111111111u64}));
        let p = ParamHeaders::from_headers(&headers(&[
            ("mcp-param-card", "4111 1111 1111 1111"),
            ("mcp-param-memo", "=?base64?Y2Fmw6kgNDExMSAxMTExIDExMTEgMTExMQ==?="),
            ("mcp-param-n", "4111111111111111"),
        ]))
        .unwrap();
        let mirrored = match_arguments(&p, &body).unwrap();
        let redacted = call(json!({"card":"[CREDIT_CARD]","memo":"café [CREDIT_CARD]","n":4111111111111111u64}));
        assert_eq!(
            rewrites_after_redaction(&mirrored, &redacted),
            vec![
                ("mcp-param-card".to_string(), Some("[CREDIT_CARD]".to_string())),
                ("mcp-param-memo".to_string(), Some(encode_header_value("café [CREDIT_CARD]"))),
            ]
        );
        // An argument that vanished takes its header with it.
        let gone = call(json!({"memo":"x"}));
        let rewrites = rewrites_after_redaction(&mirrored, &gone);
        assert!(rewrites.contains(&("mcp-param-card".to_string(), None)), "{rewrites:?}");
        assert!(rewrites_after_redaction(&[], &redacted).is_empty());
    }

    #[test]
    fn integers_parse_canonically() {
        assert_eq!(parse_integer("42"), Some(42));
        assert_eq!(parse_integer("-7"), Some(-7));
        assert_eq!(parse_integer("42.00"), Some(42));
        for bad in ["", "-", "4e2", "42.", "+4", " 4", "0x10", "42.5"] {
            assert_eq!(parse_integer(bad), None, "{bad}");
        }
    }
}
