//! Which string values of a JSON-RPC message are rewritten, and a walker that finds them
//! without building a tree.
//!
//! The walker is a small iterative JSON scanner: it checks the structure (brackets, commas,
//! colons, literals, number grammar, string termination), tracks a [`Sel`] selector down
//! the document and reports the byte span of every selected string value to a [`Sink`].
//! The sink splices replacements into a copy of the original bytes, so everything it does
//! not rewrite — key order, whitespace, number spelling, other strings — stays
//! byte-identical (a serde round trip would reformat numbers and lose big integers).
//!
//! It does not re-validate what it does not need: raw control characters inside strings
//! are passed through as they came. Keys with escapes (`"str\u0075cturedContent"`) are
//! decoded before they are compared, as a client would read them.

use std::borrow::Cow;
use std::ops::Range;

/// A selector: which string values below a point of the document are rewritten.
#[derive(Debug)]
pub(super) enum Sel {
    /// Nothing below.
    Skip,
    /// Every string value at any depth below (never keys).
    All,
    /// Only below these keys. Arrays are transparent: each element gets the same selector,
    /// so `content` selects the text of one content block or of an array of them.
    Fields(&'static [(&'static str, Sel)]),
}

static SKIP: Sel = Sel::Skip;
static ALL: Sel = Sel::All;

/// A content block (tool result, prompt or sampling message): its `text`, or the `text` of
/// an embedded resource. Never `data`/`blob` (base64 media) nor `uri`/`mimeType`.
const CONTENT_BLOCK: Sel = Sel::Fields(&[("text", Sel::All), ("resource", Sel::Fields(&[("text", Sel::All)]))]);

/// Messages from the server: results, errors, and what a server sends on its own stream.
pub(super) static RESPONSE: Sel = Sel::Fields(&[
    (
        "result",
        Sel::Fields(&[
            ("content", CONTENT_BLOCK),                               // tools/call
            ("structuredContent", Sel::All),                          // tools/call
            ("contents", Sel::Fields(&[("text", Sel::All)])),         // resources/read
            ("messages", Sel::Fields(&[("content", CONTENT_BLOCK)])), // prompts/get
        ]),
    ),
    ("error", Sel::Fields(&[("message", Sel::All), ("data", Sel::All)])),
    (
        "params",
        Sel::Fields(&[
            ("message", Sel::All),                                    // progress, elicitation
            ("data", Sel::All),                                       // notifications/message
            ("messages", Sel::Fields(&[("content", CONTENT_BLOCK)])), // sampling/createMessage
            ("systemPrompt", Sel::All),                               // sampling/createMessage
        ]),
    ),
]);

/// Messages from the client: `tools/call` and `prompts/get` arguments.
pub(super) static REQUEST: Sel = Sel::Fields(&[("params", Sel::Fields(&[("arguments", Sel::All)]))]);

/// Why a walk stopped early.
#[derive(Debug)]
pub(super) enum Halt {
    /// The bytes are not a JSON document.
    NotJson,
    /// A block-mode detector matched.
    Blocked(super::Blocked),
}

/// Receives the selected string values.
pub(super) trait Sink {
    /// `literal` spans the string including its quotes; `escapes` are the offsets in the
    /// document of its escapes' backslashes (empty for most strings).
    fn string(&mut self, literal: Range<usize>, escapes: &[usize]) -> Result<(), Halt>;
}

struct Cursor<'a> {
    src: &'a [u8],
    pos: usize,
    /// Backslash offsets of the last string read.
    escapes: Vec<usize>,
}

impl Cursor<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    /// At an opening quote: moves past the closing quote, noting escapes in `escapes`.
    /// Returns whether it saw any.
    fn string(&mut self) -> Result<bool, Halt> {
        let mut i = self.pos + 1;
        self.escapes.clear();
        loop {
            let rest = self.src.get(i..).ok_or(Halt::NotJson)?;
            let j = i + memchr::memchr2(b'"', b'\\', rest).ok_or(Halt::NotJson)?;
            if self.src[j] == b'"' {
                self.pos = j + 1;
                return Ok(!self.escapes.is_empty());
            }
            self.escapes.push(j);
            i = j + 2; // the escaped character can be neither the end nor another escape
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), Halt> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Halt::NotJson),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Halt::NotJson);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Halt::NotJson);
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Halt> {
        if self.src.get(self.pos..).is_some_and(|rest| rest.starts_with(word)) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Halt::NotJson)
        }
    }

    /// Parses `"key" :` and returns the selector of the member's value.
    fn member(&mut self, parent: &'static Sel) -> Result<&'static Sel, Halt> {
        if self.peek() != Some(b'"') {
            return Err(Halt::NotJson);
        }
        let start = self.pos;
        let escaped = self.string()?;
        let child = match parent {
            Sel::Skip => &SKIP,
            Sel::All => &ALL,
            Sel::Fields(fields) => {
                let key: Cow<'_, str> = if escaped {
                    Cow::Owned(serde_json::from_slice::<String>(&self.src[start..self.pos]).map_err(|_| Halt::NotJson)?)
                } else {
                    // Non-UTF-8 keys simply match no field.
                    String::from_utf8_lossy(&self.src[start + 1..self.pos - 1])
                };
                fields.iter().find(|(name, _)| *name == key).map_or(&SKIP, |(_, sel)| sel)
            }
        };
        self.ws();
        if self.peek() != Some(b':') {
            return Err(Halt::NotJson);
        }
        self.pos += 1;
        Ok(child)
    }
}

/// Walks the JSON document `src`, reporting the string values `root` selects to `sink`.
/// Iterative (an explicit stack), so nesting depth costs memory, never native stack.
pub(super) fn walk(src: &[u8], root: &'static Sel, sink: &mut dyn Sink) -> Result<(), Halt> {
    let mut c = Cursor { src, pos: 0, escapes: Vec::new() };
    // Open containers: (is an object, selector of the container).
    let mut stack: Vec<(bool, &'static Sel)> = Vec::new();
    let mut sel = root;
    'value: loop {
        c.ws();
        match c.peek() {
            Some(b'{') => {
                c.pos += 1;
                c.ws();
                if c.peek() == Some(b'}') {
                    c.pos += 1;
                } else {
                    stack.push((true, sel));
                    sel = c.member(sel)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                c.pos += 1;
                c.ws();
                if c.peek() == Some(b']') {
                    c.pos += 1;
                } else {
                    stack.push((false, sel));
                    continue 'value;
                }
            }
            Some(b'"') => {
                let start = c.pos;
                c.string()?;
                if matches!(sel, Sel::All) {
                    sink.string(start..c.pos, &c.escapes)?;
                }
            }
            Some(b'-' | b'0'..=b'9') => c.number()?,
            Some(b't') => c.literal(b"true")?,
            Some(b'f') => c.literal(b"false")?,
            Some(b'n') => c.literal(b"null")?,
            _ => return Err(Halt::NotJson),
        }
        // A value is complete: next member or element, or close containers.
        loop {
            c.ws();
            let Some(&(object, parent)) = stack.last() else { break 'value };
            match (c.peek(), object) {
                (Some(b','), true) => {
                    c.pos += 1;
                    c.ws();
                    sel = c.member(parent)?;
                    continue 'value;
                }
                (Some(b','), false) => {
                    c.pos += 1;
                    sel = parent;
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    c.pos += 1;
                    stack.pop();
                }
                _ => return Err(Halt::NotJson),
            }
        }
    }
    c.ws();
    if c.pos == src.len() {
        Ok(())
    } else {
        Err(Halt::NotJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Collect<'a>(&'a [u8], Vec<String>);
    impl Sink for Collect<'_> {
        fn string(&mut self, literal: Range<usize>, _: &[usize]) -> Result<(), Halt> {
            self.1.push(serde_json::from_slice(&self.0[literal]).unwrap());
            Ok(())
        }
    }

    fn selected(root: &'static Sel, doc: &str) -> Option<Vec<String>> {
        let mut sink = Collect(doc.as_bytes(), Vec::new());
        walk(doc.as_bytes(), root, &mut sink).ok().map(|()| sink.1)
    }

    #[test]
    fn selects_the_documented_fields_only() {
        let doc = r#"{"jsonrpc":"2.0","id":"x@y.io","result":{
            "content":[{"type":"text","text":"a"},{"type":"image","data":"b","mimeType":"image/png"},
                       {"type":"resource","resource":{"uri":"u","text":"c","blob":"d"}}],
            "structuredContent":{"k":["e",{"n":"f"}],"num":1.5e3,"t":true,"z":null},
            "contents":[{"uri":"g","text":"h"}],
            "messages":[{"role":"user","content":{"type":"text","text":"i"}}],
            "_meta":{"text":"j"}}}"#;
        assert_eq!(selected(&RESPONSE, doc).unwrap(), ["a", "c", "e", "f", "h", "i"]);
        let err = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"m","data":{"x":["d"]}}}"#;
        assert_eq!(selected(&RESPONSE, err).unwrap(), ["m", "d"]);
        let req = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"n","arguments":{"q":"a","deep":[{"x":"b"}]}}}"#;
        assert_eq!(selected(&REQUEST, req).unwrap(), ["a", "b"]);
        assert_eq!(selected(&RESPONSE, req).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn escaped_keys_are_decoded() {
        let doc = r#"{"result":{"str\u0075cturedContent":{"a":"x"}}}"#;
        assert_eq!(selected(&RESPONSE, doc).unwrap(), ["x"]);
    }

    #[test]
    fn batches_are_arrays_of_messages() {
        let doc = r#"[{"result":{"content":[{"text":"a"}]}},{"error":{"message":"b"}}]"#;
        assert_eq!(selected(&RESPONSE, doc).unwrap(), ["a", "b"]);
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "tru",
            "\"abc",
            "{} x",
            "{\"a\":1}}",
            "[1 2]",
            "\"a\\",
        ] {
            assert!(selected(&RESPONSE, bad).is_none(), "{bad:?}");
        }
        for good in ["1", "-0.5E+3", "\"s\"", "[]", "{}", " [ {} , [ ] , \"\\\\\" ] ", "null"] {
            assert!(selected(&RESPONSE, good).is_some(), "{good:?}");
        }
    }

    #[test]
    fn deep_nesting_uses_no_native_stack() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(selected(&RESPONSE, &deep).is_some());
    }

    proptest! {
        /// The walker accepts exactly what serde_json accepts (on documents serde_json
        /// produces and on arbitrary short byte strings).
        #[test]
        fn agrees_with_serde_json(bytes in proptest::collection::vec(prop_oneof![
            Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'), Just(b':'), Just(b','),
            Just(b'1'), Just(b'-'), Just(b'.'), Just(b'e'), Just(b' '), Just(b'a'), Just(b'\\'), Just(b'n'),
        ], 0..24)) {
            let ours = walk(&bytes, &RESPONSE, &mut Collect(&bytes, Vec::new())).is_ok();
            let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            // serde_json refuses invalid escapes inside strings; the walker leaves string
            // contents to whoever decodes them.
            if theirs { prop_assert!(ours) }
            if ours && !theirs { prop_assert!(bytes.contains(&b'\\')) }
        }
    }
}
