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
    /// Below these keys with their own selectors, and below every other key with `rest`.
    /// Arrays are transparent: each element gets the same selector, so `content` selects
    /// the text of one content block or of an array of them.
    Fields(&'static [(&'static str, &'static Sel)], &'static Sel),
}

static SKIP: Sel = Sel::Skip;
static ALL: Sel = Sel::All;

/// A content block (`text`, `image`, `audio`, `resource_link`, `resource`, and the
/// `tool_use`/`tool_result` blocks of sampling), or an array of them: every string a client
/// may show (`text`, `name`, `title`, `description`, `uri`, `annotations`, `_meta`, …)
/// except the base64 media payloads `data` and `blob`. A `tool_result` nests content blocks
/// and structured content.
static CONTENT: Sel = Sel::Fields(
    &[("data", &SKIP), ("blob", &SKIP), ("resource", &RESOURCE), ("content", &CONTENT), ("structuredContent", &ALL)],
    &ALL,
);

/// Resource contents (`resources/read`, an embedded resource): `uri`, `text`, `_meta`, …,
/// never the base64 `blob`.
static RESOURCE: Sel = Sel::Fields(&[("blob", &SKIP)], &ALL);

/// Prompt or sampling messages: their content blocks, and everything else they carry.
static MESSAGES: Sel = Sel::Fields(&[("content", &CONTENT)], &ALL);

/// A result: every string, content blocks read as such.
static RESULT: Sel = Sel::Fields(
    &[("content", &CONTENT), ("contents", &RESOURCE), ("messages", &MESSAGES), ("structuredContent", &ALL)],
    &ALL,
);

/// The params of what a server sends unprompted (logging, progress, elicitation,
/// sampling): every string, sampling messages read as such. `data` here is a log payload.
static PARAMS: Sel = Sel::Fields(&[("messages", &MESSAGES)], &ALL);

/// Messages from the server: results, errors, and what a server sends on its own stream.
/// Everything but the envelope (`jsonrpc`, `id`, `method`) and media payloads.
pub(super) static RESPONSE: Sel = Sel::Fields(&[("result", &RESULT), ("error", &ALL), ("params", &PARAMS)], &SKIP);

static ARGUMENTS: Sel = Sel::Fields(&[("arguments", &ALL)], &SKIP);

/// Messages from the client: `tools/call` and `prompts/get` arguments.
pub(super) static REQUEST: Sel = Sel::Fields(&[("params", &ARGUMENTS)], &SKIP);

/// The JSON-RPC envelope of a walked document, as a client reads it: whether it is one
/// object, and its top-level `id`, `method`, `result` and `error` members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The document is one JSON object (not a batch, not a scalar).
    pub object: bool,
    /// How many top-level `id` members it has (keys compared after unescaping).
    pub ids: usize,
    /// The text span of the last top-level `id` value; `None` when there is none or it is
    /// an object or array.
    pub id: Option<Range<usize>>,
    /// It has a top-level `method`.
    pub method: bool,
    /// It has a top-level `result` or `error`: it is (or claims to be) a response.
    pub answer: bool,
}

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

    /// Parses `"key" :` and returns the selector of the member's value. At the top level
    /// of the document (`top`), also notes envelope members in `envelope`; returns whether
    /// the member is the `id`.
    fn member(&mut self, parent: &'static Sel, top: Option<&mut Envelope>) -> Result<(&'static Sel, bool), Halt> {
        if self.peek() != Some(b'"') {
            return Err(Halt::NotJson);
        }
        let start = self.pos;
        let escaped = self.string()?;
        let mut is_id = false;
        let child = match parent {
            Sel::Skip => &SKIP,
            Sel::All => &ALL,
            Sel::Fields(fields, rest) => {
                let key: Cow<'_, str> = if escaped {
                    Cow::Owned(serde_json::from_slice::<String>(&self.src[start..self.pos]).map_err(|_| Halt::NotJson)?)
                } else {
                    // Non-UTF-8 keys simply match no field.
                    String::from_utf8_lossy(&self.src[start + 1..self.pos - 1])
                };
                if let Some(envelope) = top {
                    match &*key {
                        "id" => {
                            envelope.ids += 1;
                            is_id = true;
                        }
                        "method" => envelope.method = true,
                        "result" | "error" => envelope.answer = true,
                        _ => {}
                    }
                }
                fields.iter().find(|(name, _)| *name == key).map_or(*rest, |(_, sel)| *sel)
            }
        };
        self.ws();
        if self.peek() != Some(b':') {
            return Err(Halt::NotJson);
        }
        self.pos += 1;
        Ok((child, is_id))
    }
}

/// Walks the JSON document `src`, reporting the string values `root` selects to `sink`, and
/// returns its envelope. Iterative (an explicit stack), so nesting depth costs memory,
/// never native stack. `root` must be a [`Sel::Fields`] for the envelope to be read.
pub(super) fn walk(src: &[u8], root: &'static Sel, sink: &mut dyn Sink) -> Result<Envelope, Halt> {
    let mut c = Cursor { src, pos: 0, escapes: Vec::new() };
    // Open containers: (is an object, selector of the container).
    let mut stack: Vec<(bool, &'static Sel)> = Vec::new();
    let mut sel = root;
    let mut envelope = Envelope::default();
    // The value about to be read is the top-level `id`; then where it starts.
    let mut reading_id = false;
    let mut id_start = 0;
    'value: loop {
        c.ws();
        if reading_id {
            id_start = c.pos;
        }
        match c.peek() {
            Some(b'{') => {
                if stack.is_empty() {
                    envelope.object = true;
                }
                if reading_id {
                    reading_id = false;
                    envelope.id = None;
                }
                c.pos += 1;
                c.ws();
                if c.peek() == Some(b'}') {
                    c.pos += 1;
                } else {
                    let top = stack.is_empty().then_some(&mut envelope);
                    stack.push((true, sel));
                    (sel, reading_id) = c.member(sel, top)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                if reading_id {
                    reading_id = false;
                    envelope.id = None;
                }
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
        if reading_id {
            reading_id = false;
            envelope.id = Some(id_start..c.pos);
        }
        // A value is complete: next member or element, or close containers.
        loop {
            c.ws();
            let Some(&(object, parent)) = stack.last() else { break 'value };
            match (c.peek(), object) {
                (Some(b','), true) => {
                    c.pos += 1;
                    c.ws();
                    let top = (stack.len() == 1).then_some(&mut envelope);
                    (sel, reading_id) = c.member(parent, top)?;
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
        Ok(envelope)
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
        walk(doc.as_bytes(), root, &mut sink).ok().map(|_| sink.1)
    }

    #[test]
    fn selects_the_documented_fields_only() {
        let doc = r#"{"jsonrpc":"2.0","id":"x@y.io","result":{
            "content":[{"type":"text","text":"a"},{"type":"image","data":"b","mimeType":"image/png"},
                       {"type":"resource","resource":{"uri":"u","text":"c","blob":"d"}}],
            "structuredContent":{"k":["e",{"n":"f"}],"num":1.5e3,"t":true,"z":null,"data":"g"},
            "contents":[{"uri":"h","text":"i","blob":"j"}],
            "messages":[{"role":"user","content":{"type":"text","text":"k"}}],
            "_meta":{"text":"l"}}}"#;
        assert_eq!(
            selected(&RESPONSE, doc).unwrap(),
            [
                "text",
                "a",
                "image",
                "image/png",
                "resource",
                "u",
                "c",
                "e",
                "f",
                "g",
                "h",
                "i",
                "user",
                "text",
                "k",
                "l"
            ]
        );
        let err = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"m","data":{"x":["d"]}}}"#;
        assert_eq!(selected(&RESPONSE, err).unwrap(), ["m", "d"]);
        let req = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"n","arguments":{"q":"a","deep":[{"x":"b"}]}}}"#;
        assert_eq!(selected(&REQUEST, req).unwrap(), ["a", "b"]);
        // A server's request: every param but the envelope.
        assert_eq!(selected(&RESPONSE, req).unwrap(), ["n", "a", "b"]);
        let log = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":{"m":"x"}}}"#;
        assert_eq!(selected(&RESPONSE, log).unwrap(), ["info", "x"]);
    }

    /// Issue #13 item 6: `resource_link` blocks (and every other text a client may show)
    /// were not redacted; base64 media still is not scanned.
    #[test]
    fn every_content_block_field_but_media_is_selected() {
        let doc = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[
            {"type":"resource_link","uri":"mailto:u","name":"n","title":"t","description":"d","mimeType":"m",
             "annotations":{"audience":["user"],"lastModified":"lm"},"icons":[{"src":"s"}],"_meta":{"k":"v"}},
            {"type":"audio","data":"AAAA","mimeType":"audio/wav","annotations":{"audience":["assistant"]}},
            {"type":"tool_result","toolUseId":"i","content":[{"type":"text","text":"x"},{"type":"image","data":"BBBB"}],
             "structuredContent":{"data":"sd"}}]}}"#;
        assert_eq!(
            selected(&RESPONSE, doc).unwrap(),
            [
                "resource_link",
                "mailto:u",
                "n",
                "t",
                "d",
                "m",
                "user",
                "lm",
                "s",
                "v",
                "audio",
                "audio/wav",
                "assistant",
                "tool_result",
                "i",
                "text",
                "x",
                "image",
                "sd"
            ]
        );
        // Sampling messages from the server: their blocks' media is not scanned either.
        let sampling = r#"{"jsonrpc":"2.0","id":2,"method":"sampling/createMessage","params":{
            "messages":[{"role":"user","content":[{"type":"image","data":"CCCC"},{"type":"text","text":"y"}]}],
            "systemPrompt":"z"}}"#;
        assert_eq!(selected(&RESPONSE, sampling).unwrap(), ["user", "image", "text", "y", "z"]);
    }

    #[test]
    fn reads_the_envelope() {
        let envelope = |doc: &str| walk(doc.as_bytes(), &RESPONSE, &mut Collect(doc.as_bytes(), Vec::new())).ok();
        let doc = r#" {"jsonrpc":"2.0", "id" : 7 ,"result":{"id":8}}"#;
        let e = envelope(doc).unwrap();
        assert!(e.object && e.answer && !e.method);
        assert_eq!((e.ids, e.id.clone().map(|r| &doc[r])), (1, Some("7")));
        let doc = r#"{"\u0069d":"a","id":"b","method":"m","error":{}}"#;
        let e = envelope(doc).unwrap();
        assert_eq!((e.ids, e.id.clone().map(|r| &doc[r]), e.method, e.answer), (2, Some(r#""b""#), true, true));
        let e = envelope(r#"{"id":{"n":1},"result":{}}"#).unwrap();
        assert_eq!((e.ids, e.id), (1, None));
        let e = envelope(r#"[{"id":1,"result":{}}]"#).unwrap();
        assert_eq!(e, Envelope::default());
        assert_eq!(envelope(r#"{"method":"x","params":{}}"#).unwrap().ids, 0);
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

    /// Issue #13 item 6: non-standard numbers are not JSON: the message is refused.
    #[test]
    fn non_standard_numbers_are_not_json() {
        for bad in ["NaN", "Infinity", "-Infinity", "+1", "[1,NaN]", r#"{"result":{"v":NaN}}"#] {
            assert!(selected(&RESPONSE, bad).is_none(), "{bad}");
        }
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
