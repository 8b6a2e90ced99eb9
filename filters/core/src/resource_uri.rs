//! Resource URIs as the policy matches them: one canonical spelling per resource, and a
//! refusal for every URI that different readers resolve to different resources.
//!
//! A rule `evil/file:///srv/public/*` must not grant `file:///srv/public/../private/x`, and a
//! deny rule on `file:///srv/private/*` must not miss `file:///srv/%70rivate/x` or
//! `FILE://localhost/srv/private/x`. Upstreams read URIs in different ways: RFC 3986
//! resolution, WHATWG URL parsing (which also treats `%2e` as a dot, `\` as `/`, and strips
//! tabs and newlines), `fileURLToPath`, or a plain string handed to a path normaliser. The
//! gateway therefore splits the differences into two kinds:
//!
//! * **Equivalent spellings are canonicalised** before matching, the way every reader that
//!   cares agrees they are equal (RFC 3986 §6.2.2): scheme and host lower-cased,
//!   percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, other escapes
//!   upper-cased (`%2a` → `%2A`), non-ASCII characters percent-encoded as UTF-8, a default
//!   port dropped (`:443` on `https`), `file://localhost/…` and `file:/…` written
//!   `file:///…` (RFC 8089).
//! * **Forms whose meaning depends on the reader are refused**: dot segments (`.`, `..`,
//!   also once decoded from `%2e`, and `..;x`) anywhere after the scheme — RFC 3986 removes
//!   `a//..` to `a/`, a path normaliser to the parent of `a`; empty path segments (`//`);
//!   percent-encoded `/`, `\`, `%` or control characters (`%2f`, `%5c`, `%25`, `%00`); raw
//!   `\`, whitespace or control characters; user information (`user@host`); malformed
//!   escapes or ports; a missing scheme.
//!
//! The original URI is forwarded unchanged: whatever an upstream makes of an accepted URI,
//! it is the resource the canonical form names, because no accepted URI can climb out of
//! the path it spells. Policy patterns for resources are canonicalised the same way (see
//! [`canonical_pattern`]). The `Mcp-Name` header is compared with the body's URI byte for
//! byte, which is stricter than canonical equality.

use std::borrow::Cow;

use thiserror::Error;

/// Why a resource URI cannot be governed. Messages name the offending part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriError {
    #[error("the URI is empty")]
    Empty,
    #[error("the URI has no scheme (it must be absolute, as scheme:...)")]
    NoScheme,
    #[error("the URI contains {0}, which readers drop or read differently")]
    Character(&'static str),
    #[error("the URI contains a malformed percent-escape")]
    BadEscape,
    #[error("the URI contains a percent-encoded {0}, which readers decode differently")]
    EncodedDelimiter(&'static str),
    #[error("the URI contains a dot segment (\".\" or \"..\"), which readers resolve differently")]
    DotSegment,
    #[error("the URI contains an empty path segment (\"//\"), which readers resolve differently")]
    EmptySegment,
    #[error("the URI carries user information (\"user@\")")]
    Userinfo,
    #[error("the URI has an invalid port")]
    Port,
    #[error("a file URI must have the form file:///path")]
    FileForm,
}

/// The canonical form of `uri` (borrowed when `uri` is already canonical), or why it is
/// refused. Idempotent: the canonical form of a canonical URI is itself.
pub fn canonical(uri: &str) -> Result<Cow<'_, str>, UriError> {
    if uri.is_empty() {
        return Err(UriError::Empty);
    }
    check_raw_characters(uri)?;
    let colon = uri.find(':').ok_or(UriError::NoScheme)?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    if !is_scheme(scheme) {
        return Err(UriError::NoScheme);
    }
    let scheme = lower(scheme);
    let is_file = scheme == "file";
    let mut changed = matches!(scheme, Cow::Owned(_));

    // `//authority` when present; the rest is path, query and fragment.
    let (authority, tail) = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            (Some(&after[..end]), &after[end..])
        }
        None => (None, rest),
    };
    let mut authority = match authority {
        Some(a) => {
            let a = canonical_authority(a, &scheme)?;
            changed |= matches!(a, Cow::Owned(_));
            Some(a)
        }
        None => None,
    };
    let tail = canonical_tail(tail)?;
    changed |= matches!(tail, Cow::Owned(_));
    check_segments(&tail)?;

    if is_file {
        // RFC 8089: `file://localhost/p` and `file:/p` are `file:///p`.
        match authority.as_deref() {
            Some("localhost") | None if tail.starts_with('/') => {
                authority = Some(Cow::Borrowed(""));
                changed = true;
            }
            None => return Err(UriError::FileForm),
            Some(_) => {}
        }
    }
    if !changed {
        return Ok(Cow::Borrowed(uri));
    }
    let mut out = String::with_capacity(uri.len() + 8);
    out.push_str(&scheme);
    out.push(':');
    if let Some(a) = authority {
        out.push_str("//");
        out.push_str(&a);
    }
    out.push_str(&tail);
    Ok(Cow::Owned(out))
}

/// A resource pattern of the policy (`name` part of `server/name`, a glob) in the form
/// URIs are matched in: [`canonical`] when the pattern parses as a URI (glob characters
/// `*` and `?` are ordinary characters there), else unchanged (`*`, `*://x`). `Err` when
/// the pattern can never match a governed URI (it has a dot segment, an empty segment or
/// an encoded delimiter): such a rule, typically a deny, would silently do nothing.
pub fn canonical_pattern(pattern: &str) -> Result<Cow<'_, str>, UriError> {
    match canonical(pattern) {
        Ok(c) => Ok(c),
        Err(e @ (UriError::DotSegment | UriError::EmptySegment | UriError::EncodedDelimiter(_))) => Err(e),
        Err(_) => Ok(Cow::Borrowed(pattern)),
    }
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Printable ASCII that RFC 3986 never allows raw (WHATWG percent-encodes it): written
/// escaped in canonical form, so `"` and `%22` are one spelling.
fn is_disallowed_raw(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}')
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Raw characters that some reader drops, folds or treats as a separator.
fn check_raw_characters(uri: &str) -> Result<(), UriError> {
    for c in uri.chars() {
        let what = match c {
            '\\' => "a backslash",
            c if c.is_whitespace() => "whitespace",
            c if c.is_control() => "a control character",
            _ => continue,
        };
        return Err(UriError::Character(what));
    }
    Ok(())
}

/// The value of a hex digit.
fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Text being canonicalised: nothing is copied until the first byte that changes.
struct Rewrite<'a> {
    src: &'a str,
    out: Option<String>,
    /// Bytes of `src` already accounted for in `out`.
    copied: usize,
}

impl<'a> Rewrite<'a> {
    fn new(src: &'a str) -> Self {
        Self { src, out: None, copied: 0 }
    }

    /// Replaces `src[at..at + len]` with what `write` appends.
    fn replace(&mut self, at: usize, len: usize, write: impl FnOnce(&mut String)) {
        let out = self.out.get_or_insert_with(|| String::with_capacity(self.src.len() + 16));
        out.push_str(self.src.get(self.copied..at).unwrap_or_default());
        write(out);
        self.copied = at + len;
    }

    fn finish(self) -> Cow<'a, str> {
        match self.out {
            None => Cow::Borrowed(self.src),
            Some(mut out) => {
                out.push_str(self.src.get(self.copied..).unwrap_or_default());
                Cow::Owned(out)
            }
        }
    }
}

/// Path, query and fragment (or a host) in canonical form: escapes of unreserved
/// characters decoded, other escapes upper-cased, non-ASCII and never-raw characters
/// percent-encoded; refused escapes are errors.
fn canonical_tail(tail: &str) -> Result<Cow<'_, str>, UriError> {
    let bytes = tail.as_bytes();
    let mut rewrite = Rewrite::new(tail);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let (h, l) = match (bytes.get(i + 1).copied(), bytes.get(i + 2).copied()) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(UriError::BadEscape),
            };
            let value = match (hex(h), hex(l)) {
                (Some(h), Some(l)) => h * 16 + l,
                _ => return Err(UriError::BadEscape),
            };
            if is_unreserved(value) {
                rewrite.replace(i, 3, |out| out.push(char::from(value)));
            } else if let Some(refused) = refused_escape(value) {
                return Err(refused);
            } else if h.is_ascii_lowercase() || l.is_ascii_lowercase() {
                rewrite.replace(i, 3, |out| push_escape(out, value));
            }
            i += 3;
        } else if is_disallowed_raw(b) {
            rewrite.replace(i, 1, |out| push_escape(out, b));
            i += 1;
        } else if b.is_ascii() {
            i += 1;
        } else {
            // A UTF-8 sequence (the input is a `str`): encode each of its bytes.
            let len = tail.get(i..).and_then(|s| s.chars().next()).map_or(1, char::len_utf8);
            let seq = bytes.get(i..i + len).unwrap_or_default();
            rewrite.replace(i, len, |out| seq.iter().for_each(|&byte| push_escape(out, byte)));
            i += len;
        }
    }
    Ok(rewrite.finish())
}

/// The error for an escape of a byte that must not be escaped, if it is one.
fn refused_escape(value: u8) -> Option<UriError> {
    let what = match value {
        b'/' => "slash (%2F)",
        b'\\' => "backslash (%5C)",
        b'%' => "percent sign (%25)",
        v if v < 0x20 || v == 0x7f => "control character",
        _ => return None,
    };
    Some(UriError::EncodedDelimiter(what))
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// The authority in canonical form: no user information, an ASCII host lower-cased with
/// its escapes canonical, a default port dropped, a port without leading zeros.
fn canonical_authority<'a>(authority: &'a str, scheme: &str) -> Result<Cow<'a, str>, UriError> {
    if authority.contains('@') {
        return Err(UriError::Userinfo);
    }
    if !authority.is_ascii() {
        // Readers differ: WHATWG converts an international host to punycode.
        return Err(UriError::Character("a non-ASCII host"));
    }
    let (host, port) = match authority.rfind(':') {
        // `[v6]` without a port has its last `:` inside the brackets.
        Some(at) if !authority[at..].contains(']') => (&authority[..at], Some(&authority[at + 1..])),
        _ => (authority, None),
    };
    let host_escapes = canonical_tail(host)?;
    if host_escapes == "." || host_escapes == ".." {
        return Err(UriError::DotSegment);
    }
    let host_lower = lower(&host_escapes);
    let port_canonical = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UriError::Port);
            }
            let number: u32 = p.parse().map_err(|_| UriError::Port)?;
            if number > u32::from(u16::MAX) {
                return Err(UriError::Port);
            }
            let implied = default_port(scheme).is_some_and(|d| u32::from(d) == number);
            (!implied).then(|| number.to_string())
        }
    };
    let unchanged = matches!(host_escapes, Cow::Borrowed(_))
        && matches!(host_lower, Cow::Borrowed(_))
        && port_canonical.as_deref() == port;
    if unchanged {
        return Ok(Cow::Borrowed(authority));
    }
    let mut out = host_lower.into_owned();
    if let Some(p) = port_canonical {
        out.push(':');
        out.push_str(&p);
    }
    Ok(Cow::Owned(out))
}

/// The port a scheme implies when none is written (WHATWG's special schemes).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "ftp" => Some(21),
        _ => None,
    }
}

/// Dot segments anywhere after the authority (path, query and fragment: a reader that
/// hands the URI to a path normaliser does not stop at `?` or `#`), and empty segments in
/// the path (a trailing `/` is fine). `tail` is already canonical, so `%2e` is a dot here.
fn check_segments(tail: &str) -> Result<(), UriError> {
    for segment in tail.split('/') {
        // `..;x` is `..` to servers that strip path parameters.
        let bare = segment.split(';').next().unwrap_or_default();
        if bare == "." || bare == ".." {
            return Err(UriError::DotSegment);
        }
    }
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let path = path.strip_prefix('/').unwrap_or(path);
    let inner = path.strip_suffix('/').unwrap_or(path);
    if !inner.is_empty() && inner.split('/').any(str::is_empty) {
        return Err(UriError::EmptySegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
