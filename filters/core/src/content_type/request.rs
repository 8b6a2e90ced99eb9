//! A request body's declared representation: `Content-Type` and `Content-Encoding`.
//!
//! The filter reads a POST body as UTF-8 JSON and authorises what it read. An upstream that
//! decodes the body by the declared charset reads something else: the TypeScript SDK behind
//! `express.json()` decodes `charset=utf-7` text that the filter saw as an allowed tool call
//! into a different message. So the declared representation must leave exactly one reading:
//!
//! * exactly one `Content-Type` header, strictly `type/subtype *( ";" parameter )` (RFC 9110
//!   §8.3.1), media type `application/json` (any case);
//! * a `charset` parameter, if any, appears once and says `utf-8` (any case, optionally
//!   quoted); any other charset is refused (415), never re-interpreted;
//! * at most one `Content-Encoding` header, and only `identity`.
//!
//! Whatever is accepted is forwarded as the canonical `application/json` when the client's
//! value differs from it (other parameters, case, quoting), so no upstream ever sees a
//! parameter the filter did not read. Parsing runs only when the value is not already the
//! canonical one: the usual request costs one comparison.

use thiserror::Error;

/// The one `Content-Type` the upstream receives for a request body.
pub const CANONICAL_JSON: &str = "application/json";

/// What the gateway does with an acceptable `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentTypeAction {
    /// The value is exactly [`CANONICAL_JSON`]: forward as is.
    Keep,
    /// An equivalent spelling: replace it with [`CANONICAL_JSON`] before forwarding.
    Canonicalize,
}

/// Why a request's declared representation is refused (HTTP 415). Messages name the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentTypeError {
    #[error("content type (none) is not supported; send application/json")]
    Missing,
    #[error("the Content-Type header is repeated; send it once, as application/json")]
    Repeated,
    #[error("content type \"{0}\" is not a valid media type; send application/json")]
    Malformed(String),
    #[error("content type \"{0}\" is not supported; send application/json")]
    NotJson(String),
    #[error("charset \"{0}\" is not supported; send the body as UTF-8 (charset=utf-8, or no charset)")]
    Charset(String),
    #[error("the charset parameter is repeated in \"{0}\"; send it once, as charset=utf-8")]
    RepeatedCharset(String),
    #[error("the Content-Encoding header is repeated; send the body unencoded")]
    RepeatedEncoding,
    #[error("content encoding \"{0}\" is not supported; send the body unencoded")]
    Encoding(String),
}

/// Checks the `Content-Type` values of a request (every header of that name, in order).
pub fn check_content_type<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<ContentTypeAction, ContentTypeError> {
    let mut values = values.into_iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(ContentTypeError::Missing),
        (Some(one), None) => one,
        (Some(_), Some(_)) => return Err(ContentTypeError::Repeated),
    };
    if value == CANONICAL_JSON {
        return Ok(ContentTypeAction::Keep);
    }
    let parsed = parse(value).ok_or_else(|| ContentTypeError::Malformed(shown(value)))?;
    if !parsed.media_type.eq_ignore_ascii_case(CANONICAL_JSON) {
        return Err(ContentTypeError::NotJson(shown(value)));
    }
    let mut charsets = parsed.parameters.iter().filter(|(name, _)| name.eq_ignore_ascii_case("charset"));
    if let Some((_, charset)) = charsets.next() {
        if charsets.next().is_some() {
            return Err(ContentTypeError::RepeatedCharset(shown(value)));
        }
        if !charset.eq_ignore_ascii_case("utf-8") {
            return Err(ContentTypeError::Charset(shown(charset)));
        }
    }
    Ok(ContentTypeAction::Canonicalize)
}

/// Checks the `Content-Encoding` values of a request: none, or one `identity`.
pub fn check_content_encoding<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<(), ContentTypeError> {
    let mut values = values.into_iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(()),
        (Some(one), None) if one.trim().eq_ignore_ascii_case("identity") => Ok(()),
        (Some(one), None) => Err(ContentTypeError::Encoding(shown(one))),
        (Some(_), Some(_)) => Err(ContentTypeError::RepeatedEncoding),
    }
}

/// A value safe to quote in a message.
fn shown(value: &str) -> String {
    crate::reject::printable(value)
}

/// A parsed media type: `type/subtype` as written and its parameters, values unquoted.
#[derive(Debug, PartialEq, Eq)]
struct MediaType<'a> {
    media_type: &'a str,
    parameters: Vec<(&'a str, &'a str)>,
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Strict RFC 9110 `media-type`: `token "/" token *( OWS ";" OWS [ token "=" ( token /
/// quoted-string ) ] )`. Quoted strings with backslash escapes are refused (`None`): no
/// client needs them for a charset, and each unescaping rule is one more way to disagree.
fn parse(value: &str) -> Option<MediaType<'_>> {
    fn ows(s: &str) -> &str {
        s.trim_matches([' ', '\t'])
    }
    let mut parts = value.split(';');
    let media_type = ows(parts.next()?);
    let (kind, subtype) = media_type.split_once('/')?;
    if !is_token(kind) || !is_token(subtype) {
        return None;
    }
    let mut parameters = Vec::new();
    // `;` inside a quoted value would split it: such values are refused with the quote check.
    for part in parts {
        let part = ows(part);
        if part.is_empty() {
            continue;
        }
        let (name, raw) = part.split_once('=')?;
        if !is_token(name) {
            return None;
        }
        let value = match raw.strip_prefix('"') {
            Some(quoted) => {
                let inner = quoted.strip_suffix('"')?;
                if inner.bytes().any(|b| b == b'"' || b == b'\\' || (b < 0x20 && b != b'\t') || b == 0x7f) {
                    return None;
                }
                inner
            }
            None if is_token(raw) => raw,
            None => return None,
        };
        parameters.push((name, value));
    }
    Some(MediaType { media_type, parameters })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_and_equivalent_spellings_are_accepted() {
        assert_eq!(check_content_type(["application/json"]), Ok(ContentTypeAction::Keep));
        for v in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json ;  charset=utf-8 ; ",
            "application/json;",
            "application/json; profile=x",
            "application/json; Charset=Utf-8",
        ] {
            assert_eq!(check_content_type([v]), Ok(ContentTypeAction::Canonicalize), "{v}");
        }
    }

    #[test]
    fn other_charsets_are_refused_by_name() {
        for (v, charset) in [
            ("application/json; charset=utf-7", "utf-7"),
            ("application/json; charset=\"UTF-7\"", "UTF-7"),
            ("application/json; charset=utf-16", "utf-16"),
            ("application/json; charset=utf-16le", "utf-16le"),
            ("application/json; charset=utf-32", "utf-32"),
            ("application/json; charset=iso-8859-1", "iso-8859-1"),
            ("application/json; charset=utf8", "utf8"),
            ("application/json; charset=\"\"", ""),
            ("application/json; foo=bar; CHARSET=cp1252", "cp1252"),
        ] {
            assert_eq!(check_content_type([v]), Err(ContentTypeError::Charset(charset.into())), "{v}");
        }
    }

    #[test]
    fn ambiguous_or_malformed_values_are_refused() {
        let repeated =
            ["application/json; charset=utf-8; charset=utf-7", "application/json;charset=utf-8;charset=utf-8"];
        for v in repeated {
            assert_eq!(check_content_type([v]), Err(ContentTypeError::RepeatedCharset(v.into())), "{v}");
        }
        for v in [
            "application/json; charset=\"utf-7",
            "application/json; charset=\"utf\\-8\"",
            "application/json; charset=\"utf-8;x\"",
            "application/json; charset = utf-8",
            "application/json; charset",
            "application/json, text/plain",
            "application/json charset=utf-8",
            "application/",
            "/json",
            "",
            "application/json; charset=utf-8 utf-7",
        ] {
            assert!(matches!(check_content_type([v]), Err(ContentTypeError::Malformed(_))), "{v}");
        }
        for v in ["text/plain", "application/x-www-form-urlencoded", "application/json-seq", "text/json"] {
            assert!(matches!(check_content_type([v]), Err(ContentTypeError::NotJson(_))), "{v}");
        }
        assert_eq!(check_content_type([]), Err(ContentTypeError::Missing));
        assert_eq!(
            check_content_type(["application/json", "application/json; charset=utf-7"]),
            Err(ContentTypeError::Repeated)
        );
        assert_eq!(check_content_type(["application/json", "application/json"]), Err(ContentTypeError::Repeated));
    }

    #[test]
    fn only_one_identity_encoding_is_accepted() {
        assert_eq!(check_content_encoding([]), Ok(()));
        assert_eq!(check_content_encoding(["identity"]), Ok(()));
        assert_eq!(check_content_encoding([" IDENTITY "]), Ok(()));
        for v in ["gzip", "identity, gzip", "", "br", "x-gzip"] {
            assert_eq!(check_content_encoding([v]), Err(ContentTypeError::Encoding(v.into())), "{v}");
        }
        assert_eq!(check_content_encoding(["identity", "gzip"]), Err(ContentTypeError::RepeatedEncoding));
    }

    proptest::proptest! {
        /// Whatever is accepted declares JSON and no charset but UTF-8, however it is spelled.
        #[test]
        fn accepted_values_declare_only_utf8_json(v in "[a-zA-Z/;=\" \t,\\-0-9]{0,40}") {
            if check_content_type([v.as_str()]).is_ok() {
                let lower = v.to_ascii_lowercase();
                let mut parts = lower.split(';').map(|p| p.trim_matches([' ', '\t']));
                proptest::prop_assert_eq!(parts.next(), Some("application/json"), "{}", v);
                for part in parts {
                    if let Some(charset) = part.strip_prefix("charset=") {
                        proptest::prop_assert_eq!(charset.trim_matches('"'), "utf-8", "{}", v);
                    }
                }
            }
        }
    }
}
