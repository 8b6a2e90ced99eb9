//! The hot path of strict parsing: a validating scan that builds nothing, and a reader of
//! the text it validated.
//!
//! [`validate`] accepts exactly what [`super::parse_strict`] accepts (serde_json's grammar,
//! its number range, its 128-level recursion limit, paired `\u` surrogates, no duplicate key
//! in any object after unescaping), in one pass over the bytes and without allocating for
//! ordinary documents. It only answers yes or no: error messages come from re-running
//! `parse_strict` on refused input, so clients see the same codes and texts as before and
//! only the (rare) refused request pays twice.
//!
//! [`RawJson`] then reads the validated text lazily: the MCP envelope needs a handful of
//! fields near the top of the document, so tool arguments and list items are skipped (a
//! `memchr` jump over each string), never built into a tree or copied.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;

/// serde_json's default recursion limit: its counter starts at 128 and refuses the
/// container that brings it to 0, so 127 nested arrays/objects are the most it accepts.
const MAX_DEPTH: usize = 127;

/// Objects with more keys than this switch from pairwise comparison to a hash set, so a
/// hostile object with many keys costs O(n), not O(n²).
const LINEAR_KEYS: usize = 16;

/// Eight-byte words of a string examined before switching to `memchr`.
const SHORT_WORDS: usize = 4;

/// How far from `at` the first byte that ends a run of plain string text is, looking at
/// most eight bytes ahead: a quote, a backslash, and with `controls` a byte below 0x20.
/// Returns 8 when the next eight bytes are all plain, and 0 near the end of the text (the
/// caller then looks at that byte itself). SWAR: the lowest flagged byte is exact.
fn first_special(b: &[u8], at: usize, controls: bool) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let Some(chunk) = b.get(at..at + 8) else {
        return 0;
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    let w = u64::from_le_bytes(word);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut flags = zero_byte(w ^ (ONES * b'"' as u64)) | zero_byte(w ^ (ONES * b'\\' as u64));
    if controls {
        flags |= w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    }
    (flags.trailing_zeros() / 8) as usize
}

/// One object key seen so far: its raw text between the quotes, and whether it holds
/// escapes (then only its decoded form may be compared).
#[derive(Clone, Copy)]
struct Key {
    start: usize,
    end: usize,
    escaped: bool,
    /// The first (up to) eight raw bytes: most distinct keys differ there, so most
    /// comparisons end without touching the text.
    head: u64,
}

/// One open container.
struct Frame<'a> {
    object: bool,
    /// Index of this object's first key in the shared key stack.
    keys_from: usize,
    /// The decoded keys of a large object.
    set: Option<HashSet<Cow<'a, str>>>,
    /// Index of this container in the container table.
    container: usize,
}

/// Validates `text` as one strict JSON document (see the module docs) and returns it ready
/// to read, or `None`.
pub(crate) fn validate(text: &str) -> Option<StrictJson<'_>> {
    let mut scanner = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        keys: Vec::with_capacity(32),
        frames: Vec::with_capacity(8),
        containers: Vec::with_capacity(16),
    };
    scanner.document()?;
    Some(StrictJson { text, containers: scanner.containers })
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    keys: Vec<Key>,
    frames: Vec<Frame<'a>>,
    /// Every container's `(start, end)` byte range, in order of their opening brackets.
    containers: Vec<(usize, usize)>,
}

impl<'a> Scanner<'a> {
    fn document(&mut self) -> Option<()> {
        self.value()?;
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Consumes `byte` (after whitespace) or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// One value; containers are walked iteratively with an explicit stack.
    fn value(&mut self) -> Option<()> {
        'value: loop {
            self.ws();
            match self.peek()? {
                b'{' => {
                    self.open(true)?;
                    self.ws();
                    if self.peek()? == b'}' {
                        self.i += 1;
                        self.close();
                    } else {
                        self.key()?;
                        continue 'value;
                    }
                }
                b'[' => {
                    self.open(false)?;
                    self.ws();
                    if self.peek()? == b']' {
                        self.i += 1;
                        self.close();
                    } else {
                        continue 'value;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a complete value: continue or close the enclosing containers.
            loop {
                let Some(frame) = self.frames.last() else {
                    return Some(());
                };
                let object = frame.object;
                self.ws();
                match (self.peek()?, object) {
                    (b',', true) => {
                        self.i += 1;
                        self.key()?;
                        continue 'value;
                    }
                    (b',', false) => {
                        self.i += 1;
                        continue 'value;
                    }
                    (b'}', true) | (b']', false) => {
                        self.i += 1;
                        self.close();
                    }
                    _ => return None,
                }
            }
        }
    }

    fn open(&mut self, object: bool) -> Option<()> {
        if self.frames.len() >= MAX_DEPTH {
            return None;
        }
        self.frames.push(Frame { object, keys_from: self.keys.len(), set: None, container: self.containers.len() });
        self.containers.push((self.i, self.i));
        self.i += 1;
        Some(())
    }

    /// Called with `i` just past the closing bracket.
    fn close(&mut self) {
        if let Some(frame) = self.frames.pop() {
            self.keys.truncate(frame.keys_from);
            if let Some((_, end)) = self.containers.get_mut(frame.container) {
                *end = self.i;
            }
        }
    }

    /// `"key" :` inside the innermost object, refusing a key it already has.
    fn key(&mut self) -> Option<()> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let escaped = self.string()?;
        let end = self.i - 1;
        let key = Key { start, end, escaped, head: key_head(self.b, start, end) };
        self.remember(key)?;
        self.expect(b':')
    }

    fn remember(&mut self, key: Key) -> Option<()> {
        // Fast path: a small object, and no earlier key that could equal this one (same
        // head and length, or escapes that need decoding to tell).
        let frame = self.frames.last()?;
        if frame.set.is_none() {
            let seen = self.keys.get(frame.keys_from..)?;
            let suspect = |k: &Key| k.escaped || (k.head == key.head && k.end - k.start == key.end - key.start);
            if seen.len() < LINEAR_KEYS && !key.escaped && !seen.iter().any(suspect) {
                self.keys.push(key);
                return Some(());
            }
        }
        self.remember_slow(key)
    }

    #[cold]
    #[inline(never)]
    fn remember_slow(&mut self, key: Key) -> Option<()> {
        let text = self.text;
        let frame = self.frames.last_mut()?;
        if let Some(set) = &mut frame.set {
            return set.insert(decode_key(text, key)?).then_some(());
        }
        let seen = self.keys.get(frame.keys_from..)?;
        for other in seen {
            if same_key(text, *other, key)? {
                return None;
            }
        }
        if seen.len() < LINEAR_KEYS {
            self.keys.push(key);
            return Some(());
        }
        let mut set = HashSet::with_capacity(seen.len() * 2);
        for k in seen.iter().copied().chain(std::iter::once(key)) {
            set.insert(decode_key(text, k)?);
        }
        frame.set = Some(set);
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// serde_json's number grammar; numbers it could turn into an infinite `f64` (a
    /// fraction, an exponent or more than 18 digits) are checked by serde_json itself.
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits_from = self.i;
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut plain = self.i - digits_from <= 18;
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
            plain = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
            plain = false;
        }
        if plain {
            return Some(());
        }
        let text = self.text.get(start..self.i)?;
        serde_json::from_str::<serde_json::Number>(text).ok().map(drop)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let from = self.i;
        self.digits();
        (self.i > from).then_some(())
    }

    /// A string starting at the opening quote; leaves `i` after the closing quote. Returns
    /// whether it held any escape.
    fn string(&mut self) -> Option<bool> {
        self.i += 1;
        let mut escaped = false;
        // Most strings (keys, names, ids) are short: eight bytes at a time to the first
        // quote, backslash or control byte beats a SIMD call's setup.
        for _ in 0..SHORT_WORDS {
            self.i += first_special(self.b, self.i, true);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0..=0x1f => return None,
                _ => {}
            }
        }
        loop {
            // Jump to the next quote or backslash (SIMD), then check the bytes jumped over
            // for control characters (a min-reduction the compiler vectorizes).
            let rest = self.b.get(self.i..)?;
            let at = memchr::memchr2(b'"', b'\\', rest)?;
            if rest.get(..at)?.iter().copied().min().is_some_and(|m| m < 0x20) {
                return None;
            }
            self.i += at;
            if self.peek()? == b'"' {
                self.i += 1;
                return Some(escaped);
            }
            escaped = true;
            self.escape()?;
        }
    }

    /// One escape starting at the backslash.
    fn escape(&mut self) -> Option<()> {
        self.i += 1;
        match self.peek()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                self.i += 1;
                Some(())
            }
            b'u' => {
                self.i += 1;
                let n = self.hex4()?;
                match n {
                    0xDC00..=0xDFFF => None,
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed by an escaped trailing one.
                        if self.b.get(self.i..self.i + 2)? != b"\\u" {
                            return None;
                        }
                        self.i += 2;
                        (0xDC00..=0xDFFF).contains(&self.hex4()?).then_some(())
                    }
                    _ => Some(()),
                }
            }
            _ => None,
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut n = 0u16;
        for d in digits {
            n = n * 16 + (*d as char).to_digit(16)? as u16;
        }
        self.i += 4;
        Some(n)
    }
}

/// The first (up to) eight bytes of the key text `b[start..end]`, zero-padded, as a
/// little-endian word. One unaligned load when eight bytes are there (always, except near
/// the end of the document).
fn key_head(b: &[u8], start: usize, end: usize) -> u64 {
    let len = end - start;
    if let Some(chunk) = b.get(start..start + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let mask = if len >= 8 { u64::MAX } else { (1u64 << (len * 8)) - 1 };
        return u64::from_le_bytes(word) & mask;
    }
    let tail = b.get(start..end).unwrap_or_default();
    tail.iter().take(8).enumerate().fold(0, |head, (i, byte)| head | (u64::from(*byte) << (i * 8)))
}

fn raw_key(text: &str, key: Key) -> Option<&str> {
    text.get(key.start..key.end)
}

/// The decoded key. Only keys with escapes allocate.
fn decode_key(text: &str, key: Key) -> Option<Cow<'_, str>> {
    let raw = raw_key(text, key)?;
    if !key.escaped {
        return Some(Cow::Borrowed(raw));
    }
    // Quotes included: the key's full JSON string, already validated.
    let quoted = text.get(key.start - 1..key.end + 1)?;
    serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
}

fn same_key(text: &str, a: Key, b: Key) -> Option<bool> {
    if !a.escaped && !b.escaped {
        if a.head != b.head || a.end - a.start != b.end - b.start {
            return Some(false);
        }
        return Some(raw_key(text, a)? == raw_key(text, b)?);
    }
    Some(decode_key(text, a)? == decode_key(text, b)?)
}

/// What a JSON value is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

/// A document that passed strict validation, with where each of its containers ends, so
/// readers skip a nested object or array in one lookup instead of walking through it.
#[derive(Debug, Clone)]
pub struct StrictJson<'a> {
    text: &'a str,
    containers: Vec<(usize, usize)>,
}

impl<'a> StrictJson<'a> {
    /// The document's top-level value.
    pub fn root(&self) -> RawJson<'_> {
        let b = self.text.as_bytes();
        let mut start = 0;
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(start) {
            start += 1;
        }
        let mut end = b.len();
        while end > start && matches!(b.get(end - 1), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            end -= 1;
        }
        RawJson { doc: self, start, end }
    }
}

/// One value inside a [`StrictJson`] document, read in place, lazily. Every reader relies on
/// the document being valid and duplicate-free; on malformed text (impossible) they stop
/// early rather than panic.
#[derive(Debug, Clone, Copy)]
pub struct RawJson<'a> {
    doc: &'a StrictJson<'a>,
    start: usize,
    end: usize,
}

impl<'a> RawJson<'a> {
    /// The value's JSON text, exactly as it appeared.
    pub fn text(&self) -> &'a str {
        self.doc.text.get(self.start..self.end).unwrap_or_default()
    }

    pub fn kind(&self) -> JsonKind {
        match self.doc.text.as_bytes().get(self.start) {
            Some(b'{') => JsonKind::Object,
            Some(b'[') => JsonKind::Array,
            Some(b'"') => JsonKind::String,
            Some(b't' | b'f') => JsonKind::Bool,
            Some(b'n') => JsonKind::Null,
            _ => JsonKind::Number,
        }
    }

    /// The members of an object, in document order (none for other kinds).
    pub fn members(&self) -> Members<'a> {
        Members { walk: Walk::open(*self, b'{') }
    }

    /// The elements of an array, in document order (none for other kinds).
    pub fn elements(&self) -> Elements<'a> {
        Elements { walk: Walk::open(*self, b'[') }
    }

    /// The member `key` of an object (keys are unique: the document was validated).
    pub fn get(&self, key: &str) -> Option<RawJson<'a>> {
        self.members().find(|(k, _)| k.matches(key)).map(|(_, v)| v)
    }

    /// Several members of an object in one walk, in the order of `keys`.
    pub fn fields<const N: usize>(&self, keys: [&str; N]) -> [Option<RawJson<'a>>; N] {
        let mut out = [None; N];
        let mut missing = N;
        for (key, value) in self.members() {
            // A key without escapes is its own decoded form: compared as written, without
            // looking for a backslash once per wanted key.
            let found = if key.inner.contains('\\') {
                key.decoded().and_then(|decoded| keys.iter().position(|k| *k == decoded))
            } else {
                keys.iter().position(|k| *k == key.inner)
            };
            if let Some(i) = found {
                if let Some(slot @ None) = out.get_mut(i) {
                    *slot = Some(value);
                    missing -= 1;
                    if missing == 0 {
                        break;
                    }
                }
            }
        }
        out
    }

    /// The decoded string, if this is a string. Borrowed unless it holds escapes.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        if self.kind() != JsonKind::String {
            return None;
        }
        let text = self.text();
        let inner = text.get(1..text.len().checked_sub(1)?)?;
        if !inner.contains('\\') {
            return Some(Cow::Borrowed(inner));
        }
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    }

    /// Where this value lies inside `outer` (a value containing it), as a byte range of
    /// `outer.text()`.
    pub fn span_in(&self, outer: &RawJson<'a>) -> Option<std::ops::Range<usize>> {
        let contained = std::ptr::eq(self.doc, outer.doc) && outer.start <= self.start && self.end <= outer.end;
        contained.then(|| self.start - outer.start..self.end - outer.start)
    }

    /// The value as a `serde_json::Value` (for ids and other small values).
    pub fn to_value(&self) -> Value {
        if let Some(n) = self.plain_integer() {
            return n;
        }
        serde_json::from_str(self.text()).unwrap_or(Value::Null)
    }

    /// A number written as a plain integer that fits `i64`/`u64`, as serde_json reads it
    /// (the common id); `None` for anything else, including `-0`, which serde_json reads as
    /// a float. The document is valid JSON, so digits never have a leading zero.
    pub fn plain_integer(&self) -> Option<Value> {
        let text = self.text();
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if digits.len() == text.len() {
            digits.parse::<u64>().ok().map(Value::from)
        } else if digits == "0" {
            None
        } else {
            text.parse::<i64>().ok().map(Value::from)
        }
    }
}

/// An object key as written (between the quotes).
#[derive(Debug, Clone, Copy)]
pub struct RawKey<'a> {
    inner: &'a str,
}

impl<'a> RawKey<'a> {
    /// Whether the decoded key equals `key`.
    pub fn matches(&self, key: &str) -> bool {
        if self.inner == key && !key.contains('\\') {
            return true;
        }
        self.inner.contains('\\') && self.decoded().is_some_and(|k| k == key)
    }

    /// The key as written, between its quotes (escapes not decoded): a slice of the
    /// document, so its place in the text can be found.
    pub fn as_written(&self) -> &'a str {
        self.inner
    }

    pub fn decoded(&self) -> Option<Cow<'a, str>> {
        if !self.inner.contains('\\') {
            return Some(Cow::Borrowed(self.inner));
        }
        serde_json::from_str::<String>(&format!("\"{}\"", self.inner)).ok().map(Cow::Owned)
    }
}

/// Iterator over an object's members.
pub struct Members<'a> {
    walk: Walk<'a>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (RawKey<'a>, RawJson<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let w = &mut self.walk;
        w.before_item()?;
        let key_start = w.i;
        w.skip_string()?;
        let Some(inner) = w.doc.text.get(key_start + 1..w.i - 1) else {
            return w.stop();
        };
        w.ws();
        if w.peek() != Some(b':') {
            return w.stop();
        }
        w.i += 1;
        let value = w.item()?;
        Some((RawKey { inner }, value))
    }
}

/// Iterator over an array's elements.
pub struct Elements<'a> {
    walk: Walk<'a>,
}

impl<'a> Iterator for Elements<'a> {
    type Item = RawJson<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        self.walk.before_item()?;
        self.walk.item()
    }
}

/// A cursor inside one container of a validated document.
struct Walk<'a> {
    doc: &'a StrictJson<'a>,
    b: &'a [u8],
    i: usize,
    /// Offset of the container's closing bracket.
    close: usize,
    done: bool,
}

impl<'a> Walk<'a> {
    /// Positioned inside `value` if it is a container opened by `open`; else exhausted.
    fn open(value: RawJson<'a>, open: u8) -> Self {
        let b = value.doc.text.as_bytes();
        let done = b.get(value.start) != Some(&open) || value.end < value.start + 2;
        Self { doc: value.doc, b, i: value.start + 1, close: value.end.saturating_sub(1), done }
    }

    fn stop<T>(&mut self) -> Option<T> {
        self.done = true;
        None
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Moves to the start of the next item, or ends at the closing bracket.
    fn before_item(&mut self) -> Option<()> {
        if self.done {
            return None;
        }
        self.ws();
        if self.i >= self.close {
            return self.stop();
        }
        if self.peek() == Some(b',') {
            self.i += 1;
            self.ws();
        }
        Some(())
    }

    /// The value at the cursor; leaves the cursor after it.
    fn item(&mut self) -> Option<RawJson<'a>> {
        self.ws();
        let start = self.i;
        if self.skip_value().is_none() || self.i > self.close {
            return self.stop();
        }
        Some(RawJson { doc: self.doc, start, end: self.i })
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                // One lookup in the validator's container table.
                let table = &self.doc.containers;
                let at = table.binary_search_by_key(&self.i, |(start, _)| *start).ok()?;
                self.i = table.get(at)?.1;
                Some(())
            }
            _ => {
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                Some(())
            }
        }
    }

    /// A string at the cursor (which is on its opening quote).
    fn skip_string(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        for _ in 0..SHORT_WORDS {
            self.i += first_special(self.b, self.i, false);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => self.i += 2,
                _ => {}
            }
        }
        loop {
            let rest = self.b.get(self.i..)?;
            let at = memchr::memchr2(b'"', b'\\', rest)?;
            self.i += at + 1;
            if rest.get(at) == Some(&b'"') {
                return Some(());
            }
            self.i += 1; // the escaped byte (a `\uXXXX` tail is plain text)
        }
    }
}
