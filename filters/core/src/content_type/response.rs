//! How the gateway reads an upstream answer's `Content-Type`: the way every MCP client
//! does, or not at all.
//!
//! A governed answer (a `*/list` result to filter, a message to redact) must be read by the
//! gateway exactly as the client will read it. The official clients decide differently:
//! the TypeScript SDK parses the media type (RFC 9110) and decodes every body as UTF-8
//! whatever its `charset`; the Python SDK picks JSON or SSE when the lower-cased header
//! *starts with* `application/json` / `text/event-stream`, and decodes an event stream by
//! its declared `charset`. [`read`] only accepts what they all read alike:
//!
//! * `application/json` and `text/event-stream` (any case, any parameters) are JSON and
//!   SSE. Their `charset`, when declared, must be `utf-8` (any case, quoted or not), once;
//!   anything else (`utf-16`, `utf-7`, `charset*=`, two charsets) is refused, since the
//!   Python client would decode the stream into other text than the gateway reads.
//! * A value that a client could read as JSON or SSE although its media type is another
//!   (`application/json-seq`, `text/event-streamx`: Python's prefix test) or that joins
//!   several values (`a, b`: a repeated header) is refused as ambiguous.
//! * Anything else is [`BodyType::Other`]: no client reads it as a JSON-RPC message.
//!
//! The gateway does not rewrite the header: what it accepts, every client reads as it did.

use thiserror::Error;

/// What a response body is, for reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `application/json`: one JSON-RPC message.
    Json,
    /// `text/event-stream`: JSON-RPC messages in SSE events.
    EventStream,
    /// Anything else (an error page, a missing type): not a JSON-RPC message to any client.
    Other,
}

/// Why a `Content-Type` cannot be read as every client reads it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnreadableContentType {
    #[error("content type {0} is ambiguous: clients may read it as JSON or SSE")]
    Ambiguous(String),
    #[error("content type {0} declares a charset other than utf-8")]
    Charset(String),
}

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

/// Reads a `Content-Type` value (repeated headers joined with `", "`, as clients join them).
pub fn read(value: Option<&str>) -> Result<BodyType, UnreadableContentType> {
    let Some(value) = value else {
        return Ok(BodyType::Other);
    };
    let lower = value.trim().to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or_default().trim();
    let body = match essence {
        JSON => BodyType::Json,
        EVENT_STREAM => BodyType::EventStream,
        _ if lower.starts_with(JSON) || lower.starts_with(EVENT_STREAM) => {
            return Err(UnreadableContentType::Ambiguous(crate::reject::printable(value)))
        }
        _ => BodyType::Other,
    };
    if body == BodyType::Other {
        return Ok(body);
    }
    if lower.contains(',') {
        return Err(UnreadableContentType::Ambiguous(crate::reject::printable(value)));
    }
    let mut charsets = 0;
    for param in lower.split(';').skip(1) {
        let (name, charset) = param.split_once('=').unwrap_or((param, ""));
        let name = name.trim();
        if !name.starts_with("charset") {
            continue;
        }
        charsets += 1;
        let charset = charset.trim();
        let charset = charset.strip_prefix('"').and_then(|c| c.strip_suffix('"')).unwrap_or(charset);
        if name != "charset" || charset != "utf-8" || charsets > 1 {
            return Err(UnreadableContentType::Charset(crate::reject::printable(value)));
        }
    }
    Ok(body)
}

/// Whether a `Content-Encoding` value leaves the body as it is (absent, or `identity`).
pub fn is_identity_encoding(value: Option<&str>) -> bool {
    value.is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_and_sse_in_any_case_with_utf8() {
        for (value, want) in [
            ("application/json", BodyType::Json),
            ("Application/JSON", BodyType::Json),
            ("application/json; charset=utf-8", BodyType::Json),
            ("application/json;charset=\"UTF-8\"", BodyType::Json),
            (" text/event-stream ", BodyType::EventStream),
            ("text/event-stream; charset=utf-8; foo=bar", BodyType::EventStream),
            ("text/html", BodyType::Other),
            ("text/plain; charset=latin1", BodyType::Other),
            ("", BodyType::Other),
        ] {
            assert_eq!(read(Some(value)), Ok(want), "{value}");
        }
        assert_eq!(read(None), Ok(BodyType::Other));
    }

    #[test]
    fn refuses_other_charsets() {
        for value in [
            "text/event-stream; charset=utf-16",
            "text/event-stream; charset=\"utf-16le\"",
            "application/json; charset=utf-7",
            "application/json; CHARSET=ISO-8859-1",
            "text/event-stream; charset*=utf-16''x",
            "text/event-stream; charset=utf-8; charset=utf-16",
            "text/event-stream; charset",
            "text/event-stream; charset=utf8",
            "text/event-stream; x=\"; charset=utf-16\"",
        ] {
            assert!(matches!(read(Some(value)), Err(UnreadableContentType::Charset(_))), "{value}");
        }
    }

    #[test]
    fn refuses_what_a_client_may_read_otherwise() {
        for value in [
            "application/json-seq",
            "application/jsonp",
            "text/event-streamx",
            "application/json, text/plain",
            "text/event-stream, application/json",
            "text/event-stream; charset=utf-8, text/plain",
        ] {
            assert!(matches!(read(Some(value)), Err(UnreadableContentType::Ambiguous(_))), "{value}");
        }
        // Not JSON or SSE to any client: the media type is another, whatever follows.
        assert_eq!(read(Some("text/plain; x=application/json")), Ok(BodyType::Other));
    }

    #[test]
    fn identity_encoding() {
        assert!(is_identity_encoding(None));
        assert!(is_identity_encoding(Some(" Identity ")));
        for e in ["gzip", "identity, gzip", "", "br"] {
            assert!(!is_identity_encoding(Some(e)), "{e}");
        }
    }
}
