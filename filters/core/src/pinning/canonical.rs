//! The canonical form of a tool, resource or prompt definition, and its pin hash.
//!
//! A pin is `sha256:<64 lowercase hex>` of the definition's canonical JSON, which is
//! RFC 8785 (JCS) canonical JSON with one deliberate difference in numbers:
//!
//! - **the whole definition object is covered**, every member the server sent (`name`,
//!   `title`, `description`, `inputSchema`, `outputSchema`, `annotations`, and also `icons`,
//!   `_meta`, `execution` or anything else): the SDKs keep members they do not model
//!   (pydantic `extra="allow"`, zod `passthrough`), so a client can read any of them;
//! - objects: members sorted by their decoded keys, compared as UTF-16 code units (JCS
//!   §3.2.3); no whitespace anywhere;
//! - strings: decoded (`\u0041` is `A`), then written with the fewest escapes: `\"`, `\\`,
//!   `\b`, `\f`, `\n`, `\r`, `\t`, other control characters as `\u00xx` (lowercase hex),
//!   everything else as its UTF-8 bytes (JCS §3.2.2.2);
//! - numbers: the **exact decimal value**, not JCS's IEEE double: two numbers get the same
//!   form only when they are mathematically equal (`1`, `1.0`, `1e0`, `10E-1` → `1`;
//!   `-0` → `0`; `0.5` → `5e-1`; `1.5e3` → `1500`). Written as the integer when the value is
//!   an integer of at most 21 digits, otherwise as `<digits>e<exponent>` with the digits
//!   free of leading and trailing zeros. Doubles would give `2^53` and `2^53+1` one form,
//!   while Python's `json` reads them as different integers;
//! - `true`, `false`, `null` as such.
//!
//! What cannot be read exactly fails closed ([`CanonicalError`]), so a hostile server cannot
//! make two definitions that clients read differently share a hash: the input must have
//! passed [`crate::jsonrpc::validate_strict`] (no duplicate keys, no invalid escapes), a
//! string or key holding a lone surrogate escape (`\ud800`) is refused, and so is a number
//! whose exponent has more than [`MAX_EXPONENT_DIGITS`] digits (Python reads `1e999999999`
//! as `inf`). JSON has no `NaN` or `Infinity`; the strict parser refuses them.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::jsonrpc::{JsonKind, RawJson};

/// Prefix of every pin hash.
pub const HASH_PREFIX: &str = "sha256:";

/// Most digits of a number's exponent that are read (larger ones are refused).
pub const MAX_EXPONENT_DIGITS: usize = 6;

/// Integers with at most this many digits are written out in full.
const MAX_INTEGER_DIGITS: i64 = 21;

/// Deepest nesting the canonical form follows (the strict parser bounds it already; this
/// keeps the recursion bounded on its own).
const MAX_DEPTH: usize = 128;

/// Why a definition has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("a string or key cannot be decoded exactly (invalid escape or lone surrogate)")]
    String,
    #[error("number {0} cannot be read exactly")]
    Number(String),
    #[error("the definition is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// A pin hash: SHA-256 of a canonical form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PinHash(pub [u8; 32]);

impl PinHash {
    /// The hash of `canonical` text.
    pub fn of_canonical(canonical: &str) -> Self {
        Self(Sha256::digest(canonical.as_bytes()).into())
    }

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex_part = text.strip_prefix(HASH_PREFIX)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(Self(out))
    }
}

impl std::fmt::Display for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{HASH_PREFIX}{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The canonical JSON text of `value` (see the module docs).
pub fn canonical(value: RawJson<'_>) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(value.text().len());
    write_value(value, &mut out, 0, None)?;
    Ok(out)
}

/// The canonical form laid out for people (members on their own lines, indented by two
/// spaces per level, starting at `level`): the same tokens in the same order, so its
/// canonical form is [`canonical`]'s. The lockfile holds definitions in this form.
pub fn pretty(value: RawJson<'_>, level: usize) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(value.text().len() * 2);
    write_value(value, &mut out, 0, Some(level))?;
    Ok(out)
}

fn newline(out: &mut String, indent: Option<usize>) {
    if let Some(level) = indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str("  ");
        }
    }
}

/// The pin hash of `value`.
pub fn hash(value: RawJson<'_>) -> Result<PinHash, CanonicalError> {
    canonical(value).map(|c| PinHash::of_canonical(&c))
}

/// The canonical JSON text of a whole JSON document (strictly validated first).
pub fn canonical_document(text: &[u8]) -> Result<String, CanonicalDocumentError> {
    let strict = crate::jsonrpc::validate_strict(text).map_err(|e| CanonicalDocumentError::Invalid(e.to_string()))?;
    canonical(strict.root()).map_err(CanonicalDocumentError::Canonical)
}

/// Why a document has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalDocumentError {
    #[error("not strict JSON: {0}")]
    Invalid(String),
    #[error(transparent)]
    Canonical(CanonicalError),
}

fn write_value(
    value: RawJson<'_>,
    out: &mut String,
    depth: usize,
    indent: Option<usize>,
) -> Result<(), CanonicalError> {
    let inner = indent.map(|i| i + 1);
    if depth > MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    match value.kind() {
        JsonKind::Object => {
            let mut members = Vec::new();
            for (key, member) in value.members() {
                members.push((key.decoded().ok_or(CanonicalError::String)?, member));
            }
            members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            let empty = members.is_empty();
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, inner);
                write_string(&key, out);
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_value(member, out, depth + 1, inner)?;
            }
            if !empty {
                newline(out, indent);
            }
            out.push('}');
        }
        JsonKind::Array => {
            out.push('[');
            let mut empty = true;
            for (i, element) in value.elements().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                empty = false;
                newline(out, inner);
                write_value(element, out, depth + 1, inner)?;
            }
            if !empty {
                newline(out, indent);
            }
            out.push(']');
        }
        JsonKind::String => {
            let decoded: Cow<'_, str> = value.as_str().ok_or(CanonicalError::String)?;
            write_string(&decoded, out);
        }
        JsonKind::Number => out.push_str(&canonical_number(value.text())?),
        JsonKind::Bool | JsonKind::Null => out.push_str(value.text()),
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The exact decimal value of a JSON number literal, written canonically.
pub fn canonical_number(text: &str) -> Result<String, CanonicalError> {
    let bad = || CanonicalError::Number(crate::reject::printable(text));
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let mut exp: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > MAX_EXPONENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let magnitude: i64 = digits.parse().map_err(|_| bad())?;
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // value = digits(int_part ++ frac_part) × 10^(exp − len(frac_part))
    let mut digits: String = int_part.chars().chain(frac_part.chars()).collect();
    exp -= frac_part.len() as i64;
    let trimmed_start = digits.trim_start_matches('0').len();
    digits = digits.split_off(digits.len() - trimmed_start);
    if digits.is_empty() {
        return Ok("0".to_string());
    }
    let significant = digits.trim_end_matches('0').len();
    exp += (digits.len() - significant) as i64;
    digits.truncate(significant);
    let sign = if negative { "-" } else { "" };
    if exp >= 0 && digits.len() as i64 + exp <= MAX_INTEGER_DIGITS {
        let zeros = "0".repeat(exp as usize);
        return Ok(format!("{sign}{digits}{zeros}"));
    }
    Ok(format!("{sign}{digits}e{exp}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        canonical_document(text.as_bytes()).unwrap()
    }

    fn pin(text: &str) -> PinHash {
        PinHash::of_canonical(&canon(text))
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = r#"{"name":"get_weather","description":"Weather","inputSchema":{"type":"object","properties":{"city":{"type":"string"}}}}"#;
        let b = "{ \"inputSchema\" : {\n \"properties\": {\"city\": {\"type\": \"string\"}},\t\"type\": \"object\"},\r\n \"description\": \"Weather\", \"name\": \"get_weather\" }";
        assert_eq!(canon(a), canon(b));
        assert_eq!(pin(a), pin(b));
        assert_eq!(
            canon(a),
            r#"{"description":"Weather","inputSchema":{"properties":{"city":{"type":"string"}},"type":"object"},"name":"get_weather"}"#
        );
    }

    #[test]
    fn escapes_are_decoded_and_written_minimally() {
        assert_eq!(canon(r#""\u0041\/\u00e9""#), "\"A/é\"");
        assert_eq!(canon(r#""caf\u00E9""#), canon("\"café\""));
        assert_eq!(canon(r#""\u0001\b\n\"\\""#), r#""\u0001\b\n\"\\""#);
        assert_eq!(canon(r#"{"\u006eame":1}"#), r#"{"name":1}"#);
        // Invisible characters stay: they are part of what the model reads.
        assert_ne!(canon("\"a\u{200b}b\""), canon("\"ab\""));
        assert_ne!(canon(r#""a\u200bb""#), canon("\"ab\""));
        assert_eq!(canon(r#""a\u200bb""#), canon("\"a\u{200b}b\""));
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+FF61 sorts after U+1F600 in UTF-8 but before it in UTF-16 (surrogates are 0xD8..).
        assert_eq!(canon("{\"\u{1F600}\":1,\"\u{FF61}\":2}"), "{\"\u{1F600}\":1,\"\u{FF61}\":2}");
        assert_eq!(canon(r#"{"b":1,"a":2,"A":3,"aa":4}"#), r#"{"A":3,"a":2,"aa":4,"b":1}"#);
    }

    #[test]
    fn numbers_are_canonical_by_exact_value() {
        for (forms, want) in [
            (&["1", "1.0", "1e0", "10E-1", "0.1e1", "1.000", "1E+0"][..], "1"),
            (&["0", "-0", "0.0", "0e5", "-0.0e-3"][..], "0"),
            (&["0.5", "5e-1", "50E-2"][..], "5e-1"),
            (&["1500", "1.5e3", "15e2", "1500.00"][..], "1500"),
            (&["-12.50", "-1.25e1"][..], "-125e-1"),
            (&["1e20", "100000000000000000000"][..], "100000000000000000000"),
            (&["1e21", "1000000000000000000000"][..], "1e21"),
        ] {
            for form in forms {
                assert_eq!(canonical_number(form).unwrap(), want, "{form}");
            }
        }
        // Exact: values a double would merge stay apart.
        assert_ne!(canonical_number("9007199254740993").unwrap(), canonical_number("9007199254740992").unwrap());
        assert_ne!(canonical_number("0.1").unwrap(), canonical_number("0.10000000000000001").unwrap());
        assert_eq!(canon(r#"{"maximum":1.0,"minimum":-0}"#), r#"{"maximum":1,"minimum":0}"#);
    }

    #[test]
    fn hostile_inputs_fail_closed() {
        for bad in [
            r#"{"name":"a","name":"b"}"#,      // duplicate keys
            r#"{"name":"a","\u006eame":"b"}"#, // duplicate keys through an escape
            r#""\ud800""#,                     // lone surrogate
            r#"{"\udc00":1}"#,                 // lone surrogate key
            "NaN",
            "[Infinity]",
            "1e9999999",
            "01",
            r#""a"#,
        ] {
            assert!(canonical_document(bad.as_bytes()).is_err(), "{bad}");
        }
        // A surrogate pair is one character.
        assert_eq!(canon(r#""\ud83d\ude00""#), "\"\u{1F600}\"");
    }

    #[test]
    fn the_pretty_form_has_the_same_canonical_form() {
        let text = r#"{"b":[1,{"y":[],"x":{}}],"a":"\u00e9\n","c":1.50}"#;
        let strict = crate::jsonrpc::validate_strict(text.as_bytes()).unwrap();
        let laid_out = pretty(strict.root(), 1).unwrap();
        assert_eq!(laid_out, "{\n    \"a\": \"é\\n\",\n    \"b\": [\n      1,\n      {\n        \"x\": {},\n        \"y\": []\n      }\n    ],\n    \"c\": 15e-1\n  }");
        assert_eq!(canon(&laid_out), canon(text));
    }

    #[test]
    fn hash_format_round_trips() {
        let h = pin(r#"{"name":"x"}"#);
        let text = h.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 71);
        assert_eq!(PinHash::parse(&text), Some(h));
        assert_eq!(PinHash::parse(&text.to_uppercase()), None);
        assert_eq!(PinHash::parse("sha256:00"), None);
        assert_eq!(PinHash::parse(&text.replace("sha256:", "md5:")), None);
        // Known answer: SHA-256 of `{"name":"x"}`.
        assert_eq!(text, format!("sha256:{}", hex::encode(Sha256::digest(br#"{"name":"x"}"#))));
    }

    proptest::proptest! {
        /// Reformatting (serde_json's pretty printer, escaping every non-ASCII character)
        /// never changes the canonical form.
        #[test]
        fn reformatting_keeps_the_form(s in "\\PC{0,12}", n in proptest::num::i64::ANY, f in -1.0e6f64..1.0e6) {
            let value = serde_json::json!({"name": s, "x": n, "y": f, "z": [s.clone(), {"b": 1, "a": s}]});
            let compact = serde_json::to_string(&value).unwrap();
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let escaped: String = compact.chars().map(|c| if c.is_ascii() { c.to_string() } else {
                c.encode_utf16(&mut [0; 2]).iter().map(|u| format!("\\u{u:04X}")).collect()
            }).collect();
            let want = canon(&compact);
            proptest::prop_assert_eq!(&canon(&pretty), &want);
            proptest::prop_assert_eq!(&canon(&escaped), &want);
        }
    }
}
