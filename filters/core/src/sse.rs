//! Server-sent events framing for streamed MCP responses (`text/event-stream`).
//!
//! The filter must see whole events, never network chunks: a JSON message split across two
//! chunks would otherwise slip past (or be corrupted by) a rewrite. [`SseRewriter`]
//! reassembles events as bytes arrive, hands each complete event's data to a rewrite
//! function, and emits either the original bytes (nothing changed) or the event rebuilt
//! around the new data. Complete events are emitted as soon as their terminating blank line
//! arrives, so progress notifications stay live.
//!
//! # Reading events as every client does
//! The framing follows the SSE grammar (WHATWG HTML, "event stream interpretation"):
//! * A line ends at `\r\n`, `\n` or `\r`. A `\r` is a complete line ending the moment it
//!   arrives (an answer ending in `\r\r` is delivered at once, never held back for a byte
//!   that may not come); an `\n` that follows it, even in the next chunk, is part of the
//!   same line ending and is swallowed.
//! * A UTF-8 byte order mark at the start of the stream is not part of the first field
//!   name: the TypeScript client strips one, the Python client strips none. The rewriter
//!   strips every leading BOM, so what it reads and what any client reads of its output
//!   are the same.
//! * An event whose bytes are not UTF-8 is not read at all ([`EventData::NotUtf8`]): clients
//!   decode leniently, so the gateway could not know what they see. The caller refuses it.
//!
//! # Cost
//! Linear in time and memory: each byte is scanned once, complete events are handed out as
//! slices of one buffer (no copy per event), and only the incomplete event at the end of a
//! chunk is kept (moved once). The caller bounds that incomplete event
//! ([`SseRewriter::pending_len`]).
//!
//! Invariant (property-tested): for any split of the same input into chunks, the
//! concatenated output is byte-identical.

use std::borrow::Cow;

/// A UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The data of one complete event, as the rewrite function sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventData<'a> {
    /// Every `data` field's value joined with `\n` (never empty: events without data are
    /// not handed out).
    Text(&'a str),
    /// The event is not valid UTF-8: it cannot be read exactly (clients decode leniently,
    /// each in its own way). A governed stream must replace it.
    NotUtf8,
}

/// What the rewrite function makes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewritten {
    /// Send the event as it came.
    Keep,
    /// Send the event rebuilt around this data (UTF-8 expected; an event that was not
    /// UTF-8 keeps none of its other fields).
    Data(Vec<u8>),
    /// Send the event rebuilt around this data, and nothing after it: the data ends the
    /// exchange for the client (an error answering its request). The rest of the upstream
    /// stream is dropped unread, so a flood of refused events costs one error, not one each.
    Last(Vec<u8>),
}

impl From<Option<Vec<u8>>> for Rewritten {
    fn from(data: Option<Vec<u8>>) -> Self {
        data.map_or(Rewritten::Keep, Rewritten::Data)
    }
}

/// The rewrite function, asked about each event that carries data (and each that is not
/// UTF-8).
pub type Rewrite<'r> = dyn FnMut(EventData<'_>) -> Rewritten + 'r;

/// What becomes of an `\n` that arrives right after a `\r` which ended an event: it belongs
/// to that event's line ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailingLf {
    /// The event went out as it came: the `\n` follows it.
    Forward,
    /// The event was rebuilt (with its own line endings): the `\n` is dropped.
    Drop,
}

/// Reassembles events from network chunks and rewrites each event's data.
#[derive(Debug, Default)]
pub struct SseRewriter {
    /// The incomplete event: bytes after the last complete one.
    pending: Vec<u8>,
    /// Bytes of `pending` already scanned.
    scanned: usize,
    /// Offset in `pending` where the current line starts.
    line_start: usize,
    /// The last byte scanned was a `\r` ending a line inside `pending`: an `\n` next is
    /// part of that line ending.
    after_cr: bool,
    /// A `\r` ended the last emitted event at the very end of a chunk.
    trailing_lf: Option<TrailingLf>,
    /// Leading byte order marks have been dealt with.
    started: bool,
    /// A [`Rewritten::Last`] event went out: everything after it is dropped.
    ended: bool,
}

impl SseRewriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one network chunk; returns the bytes to send downstream now (complete events,
    /// rewritten where `rewrite` returned new data). Incomplete events are held back.
    pub fn feed(&mut self, chunk: &[u8], rewrite: &mut Rewrite<'_>) -> Vec<u8> {
        if self.ended {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(chunk.len());
        let mut chunk = chunk;
        if let Some(fate) = self.trailing_lf {
            match chunk.first() {
                None => return out,
                Some(b'\n') => {
                    if fate == TrailingLf::Forward {
                        out.push(b'\n');
                    }
                    chunk = chunk.get(1..).unwrap_or_default();
                }
                Some(_) => {}
            }
            self.trailing_lf = None;
        }
        self.pending.extend_from_slice(chunk);
        if !self.started && !self.strip_boms() {
            return out;
        }
        let mut event_start = 0;
        let mut i = self.scanned;
        let len = self.pending.len();
        while i < len {
            // Jump to the next line ending.
            let Some(at) = self.pending.get(i..).and_then(|rest| memchr::memchr2(b'\n', b'\r', rest)) else {
                i = len;
                break;
            };
            let at = i + at;
            let byte = self.pending.get(at).copied().unwrap_or_default();
            if self.after_cr && byte == b'\n' && at == i && at == self.line_start {
                // The `\n` of a `\r\n` split across chunks: already counted.
                self.after_cr = false;
                i = at + 1;
                self.line_start = i;
                continue;
            }
            self.after_cr = false;
            let end = match (byte, self.pending.get(at + 1)) {
                (b'\r', Some(b'\n')) => at + 2,
                (b'\r', None) => {
                    self.after_cr = true;
                    at + 1
                }
                _ => at + 1,
            };
            let blank = at == self.line_start;
            i = end;
            self.line_start = end;
            if blank {
                let raw = self.pending.get(event_start..end).unwrap_or_default();
                let rebuilt = match emit(raw, rewrite, &mut out) {
                    Emitted::Last => {
                        self.end();
                        return out;
                    }
                    Emitted::Rebuilt => true,
                    Emitted::AsItCame => false,
                };
                event_start = end;
                if self.after_cr {
                    // The event ended on a `\r` at the end of the chunk.
                    self.after_cr = false;
                    self.trailing_lf = Some(if rebuilt { TrailingLf::Drop } else { TrailingLf::Forward });
                }
            }
        }
        // Keep only the incomplete event (bytes of this chunk), moved once.
        self.pending.drain(..event_start);
        self.scanned = i - event_start;
        self.line_start -= event_start;
        out
    }

    /// The stream ended: an unterminated trailing event is rewritten too (a client would
    /// discard it, but nothing ungoverned leaves the gateway) and returned without the
    /// blank line it never had.
    pub fn finish(&mut self, rewrite: &mut Rewrite<'_>) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        let ended = self.ended;
        self.end();
        if rest.is_empty() || ended {
            return Vec::new();
        }
        let rewritten = match read_event(&rest) {
            Ok(None) => Rewritten::Keep,
            Ok(Some(data)) => rewrite(EventData::Text(&data)),
            Err(NotUtf8) => rewrite(EventData::NotUtf8),
        };
        match rewritten {
            Rewritten::Keep => rest,
            Rewritten::Data(new_data) | Rewritten::Last(new_data) => without_blank_line(replace_data(&rest, &new_data)),
        }
    }

    /// Nothing more is read or sent.
    fn end(&mut self) {
        *self = Self { started: true, ended: true, ..Self::default() };
    }

    /// Bytes held back waiting for the end of an event.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Drops byte order marks at the start of the stream. `false` while what has arrived
    /// may still be the start of one.
    fn strip_boms(&mut self) -> bool {
        let mut skip = 0;
        loop {
            let rest = self.pending.get(skip..).unwrap_or_default();
            if rest.starts_with(BOM) {
                skip += BOM.len();
            } else if BOM.starts_with(rest) {
                self.pending.drain(..skip);
                return false;
            } else {
                break;
            }
        }
        self.pending.drain(..skip);
        self.started = true;
        true
    }
}

/// How an event went out.
enum Emitted {
    AsItCame,
    Rebuilt,
    /// Rebuilt, and the stream ends with it.
    Last,
}

/// Writes one complete event to `out`, rewritten if need be.
fn emit(raw: &[u8], rewrite: &mut Rewrite<'_>, out: &mut Vec<u8>) -> Emitted {
    let rewritten = match read_event(raw) {
        Ok(None) => Rewritten::Keep,
        Ok(Some(data)) => rewrite(EventData::Text(&data)),
        Err(NotUtf8) => rewrite(EventData::NotUtf8),
    };
    match rewritten {
        Rewritten::Keep => {
            out.extend_from_slice(raw);
            Emitted::AsItCame
        }
        Rewritten::Data(new_data) => {
            out.extend_from_slice(&replace_data(raw, &new_data));
            Emitted::Rebuilt
        }
        Rewritten::Last(new_data) => {
            out.extend_from_slice(&replace_data(raw, &new_data));
            Emitted::Last
        }
    }
}

fn without_blank_line(mut event: Vec<u8>) -> Vec<u8> {
    event.pop();
    event
}

/// The event is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8;

/// The data of one raw event: every `data` field's value joined with `\n`, or `None` when
/// the event carries no data, no field or only empty ones. An event with empty data is not
/// a message: browsers do not dispatch it, and MCP servers send one (`id: …` + `data: `) to
/// prime a stream for resumption. It passes through untouched. Borrowed when the event has
/// one data field (the usual case).
pub fn read_event(raw: &[u8]) -> Result<Option<Cow<'_, str>>, NotUtf8> {
    let text = std::str::from_utf8(raw).map_err(|_| NotUtf8)?;
    let mut data: Option<Cow<'_, str>> = None;
    for line in lines(text) {
        let (field, value) = split_field(line);
        if field == "data" {
            match &mut data {
                Some(d) => {
                    let joined = d.to_mut();
                    joined.push('\n');
                    joined.push_str(value);
                }
                None => data = Some(Cow::Borrowed(value)),
            }
        }
    }
    Ok(data.filter(|d| !d.is_empty()))
}

/// Rebuilds `raw` with its data fields replaced by `new_data` (one `data:` line per line),
/// keeping every other field (event, id, retry, comments) in place. The result always ends
/// with a blank line, so it is a complete event. A `raw` that is not UTF-8 keeps none of its
/// fields.
pub fn replace_data(raw: &[u8], new_data: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(raw).unwrap_or_default();
    let mut out = Vec::with_capacity(new_data.len() + 64);
    let mut wrote_data = false;
    let write_data = |out: &mut Vec<u8>| {
        for d in new_data.split(|b| *b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(d);
            out.push(b'\n');
        }
    };
    for line in lines(text) {
        if line.is_empty() {
            continue;
        }
        let (field, _) = split_field(line);
        if field == "data" {
            if !wrote_data {
                write_data(&mut out);
                wrote_data = true;
            }
        } else {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    if !wrote_data {
        write_data(&mut out);
    }
    out.push(b'\n');
    out
}

/// The lines of `text` per the SSE grammar (`\r\n`, `\n` or `\r` end a line). A last line
/// without an ending is included.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\n', '\r']) {
            None => {
                rest = None;
                (!current.is_empty()).then_some(current)
            }
            Some(at) => {
                let bytes = current.as_bytes();
                let skip = if bytes.get(at) == Some(&b'\r') && bytes.get(at + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = current.get(at + skip..);
                current.get(..at)
            }
        }
    })
}

fn split_field(line: &str) -> (&str, &str) {
    match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    }
}

#[cfg(test)]
mod tests;
