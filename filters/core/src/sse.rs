//! Server-sent events framing for streamed MCP responses (`text/event-stream`).
//!
//! The filter must see whole events, never network chunks: a JSON message split across two
//! chunks would otherwise slip past (or be corrupted by) a rewrite. [`SseRewriter`]
//! reassembles events as bytes arrive, hands each complete event's `data` to a rewrite
//! function, and emits either the original bytes (nothing changed — no copy of the event's
//! data) or the event rebuilt around the new data. Complete events are emitted as soon as
//! their terminating blank line arrives, so progress notifications stay live.
//!
//! Invariant (property-tested): for any split of the same input into chunks, the
//! concatenated output is byte-identical.

/// Splits a byte stream into complete SSE events (each including its terminating blank
/// line). Line endings may be `\n`, `\r\n` or `\r`, as the SSE grammar allows.
#[derive(Debug, Default)]
pub struct SseFramer {
    pending: Vec<u8>,
    /// Bytes of `pending` already scanned.
    scanned: usize,
    /// Offset in `pending` where the current line starts.
    line_start: usize,
}

impl SseFramer {
    /// Appends `chunk` and moves every event it completes into `events`.
    pub fn push(&mut self, chunk: &[u8], events: &mut Vec<Vec<u8>>) {
        self.pending.extend_from_slice(chunk);
        let mut i = self.scanned;
        while i < self.pending.len() {
            let b = self.pending[i];
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            // A lone '\r' at the end may be the first half of "\r\n": wait for the next byte.
            let end = if b == b'\r' {
                match self.pending.get(i + 1) {
                    None => break,
                    Some(b'\n') => i + 2,
                    Some(_) => i + 1,
                }
            } else {
                i + 1
            };
            let empty_line = i == self.line_start;
            if empty_line {
                let rest = self.pending.split_off(end);
                events.push(std::mem::replace(&mut self.pending, rest));
                i = 0;
                self.line_start = 0;
            } else {
                i = end;
                self.line_start = end;
            }
        }
        self.scanned = i;
    }

    /// Takes whatever follows the last complete event (the stream ended mid-event).
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.line_start = 0;
        std::mem::take(&mut self.pending)
    }

    /// Bytes held back waiting for the end of an event.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// The `data` of one raw event: every `data` field's value joined with `\n`, or `None` when
/// the event carries no data, no field or only empty ones. An event with empty data is not
/// a message: browsers do not dispatch it, and MCP servers send one (`id: …` + `data: `) to
/// prime a stream for resumption. It passes through untouched.
pub fn event_data(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut data: Option<String> = None;
    for line in lines(&text) {
        let (field, value) = split_field(line);
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
    }
    data.filter(|d| !d.is_empty())
}

/// Rebuilds `raw` with its data fields replaced by `new_data` (one `data:` line per line),
/// keeping every other field (event, id, retry, comments) in place. The result always ends
/// with a blank line, so it is a complete event.
pub fn replace_data(raw: &[u8], new_data: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(new_data.len() + 64);
    let mut wrote_data = false;
    for line in lines(&text) {
        if line.is_empty() {
            continue;
        }
        let (field, _) = split_field(line);
        if field == "data" {
            if !wrote_data {
                for d in new_data.split('\n') {
                    out.push_str("data: ");
                    out.push_str(d);
                    out.push('\n');
                }
                wrote_data = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.into_bytes()
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|l| l.split('\r'))
}

fn split_field(line: &str) -> (&str, &str) {
    match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    }
}

/// Reassembles events from network chunks and rewrites each event's data.
#[derive(Debug, Default)]
pub struct SseRewriter {
    framer: SseFramer,
    events: Vec<Vec<u8>>,
}

impl SseRewriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one network chunk; returns the bytes to send downstream now (complete events,
    /// rewritten where `rewrite` returned new data). Incomplete events are held back.
    pub fn feed(&mut self, chunk: &[u8], rewrite: &mut dyn FnMut(&str) -> Option<String>) -> Vec<u8> {
        self.events.clear();
        self.framer.push(chunk, &mut self.events);
        let mut out = Vec::new();
        for raw in self.events.drain(..) {
            out.extend_from_slice(&rewrite_event(raw, rewrite));
        }
        out
    }

    /// The stream ended: an unterminated trailing event is rewritten too (a client would
    /// discard it, but nothing ungoverned leaves the gateway) and returned without the
    /// blank line it never had.
    pub fn finish(&mut self, rewrite: &mut dyn FnMut(&str) -> Option<String>) -> Vec<u8> {
        let rest = self.framer.take_rest();
        if rest.is_empty() {
            return rest;
        }
        match event_data(&rest).and_then(|d| rewrite(&d)) {
            None => rest,
            Some(new_data) => {
                let mut rebuilt = replace_data(&rest, &new_data);
                rebuilt.pop();
                rebuilt
            }
        }
    }

    /// Bytes held back waiting for the end of an event.
    pub fn pending_len(&self) -> usize {
        self.framer.pending_len()
    }
}

fn rewrite_event(raw: Vec<u8>, rewrite: &mut dyn FnMut(&str) -> Option<String>) -> Vec<u8> {
    match event_data(&raw).and_then(|d| rewrite(&d)) {
        None => raw,
        Some(new_data) => replace_data(&raw, &new_data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_all(input: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut f = SseFramer::default();
        let mut events = Vec::new();
        let mut last = 0;
        for &c in cuts {
            let c = c.min(input.len()).max(last);
            f.push(&input[last..c], &mut events);
            last = c;
        }
        f.push(&input[last..], &mut events);
        (events, f.take_rest())
    }

    #[test]
    fn frames_events_with_any_line_ending() {
        let input = b"event: message\ndata: {\"a\":1}\n\ndata: x\r\n\r\ndata: y\r\rdata: partial";
        let (events, rest) = frame_all(input, &[]);
        assert_eq!(
            events,
            vec![b"event: message\ndata: {\"a\":1}\n\n".to_vec(), b"data: x\r\n\r\n".to_vec(), b"data: y\r\r".to_vec()]
        );
        assert_eq!(rest, b"data: partial".to_vec());
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let input = b"data: x\r\n\r\ndata: y\r\n\r\n";
        for cut in 0..input.len() {
            let (events, rest) = frame_all(input, &[cut]);
            assert_eq!(events, vec![b"data: x\r\n\r\n".to_vec(), b"data: y\r\n\r\n".to_vec()], "cut at {cut}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn event_data_joins_lines() {
        assert_eq!(event_data(b"id: 1\ndata: a\ndata:b\n\n").as_deref(), Some("a\nb"));
        assert_eq!(event_data(b": comment\n\n"), None);
        // A resumption priming event carries an id and empty data: not a message.
        assert_eq!(event_data(b"id: ev-1\r\ndata: \r\n\r\n"), None);
        assert_eq!(event_data(b"data:\n\n"), None);
    }

    #[test]
    fn replace_data_keeps_other_fields() {
        let out = replace_data(b"event: message\nid: 7\ndata: {\"old\":1}\n\n", "{\"new\":2}");
        assert_eq!(out, b"event: message\nid: 7\ndata: {\"new\":2}\n\n".to_vec());
    }

    #[test]
    fn rewriter_passes_untouched_events_byte_for_byte() {
        let mut r = SseRewriter::new();
        let mut rewrite = |d: &str| (d == "secret").then(|| "[X]".to_string());
        let out = r.feed(b"event: a\r\ndata: keep\r\n\r\ndata: secret\n\n", &mut rewrite);
        assert_eq!(out, b"event: a\r\ndata: keep\r\n\r\ndata: [X]\n\n".to_vec());
        assert!(r.finish(&mut rewrite).is_empty());
    }

    #[test]
    fn rewriter_emits_complete_events_immediately() {
        let mut r = SseRewriter::new();
        let mut same = |_: &str| None;
        assert_eq!(r.feed(b"data: 1\n\ndata: 2", &mut same), b"data: 1\n\n".to_vec());
        assert_eq!(r.pending_len(), 7);
        assert_eq!(r.feed(b"\n\n", &mut same), b"data: 2\n\n".to_vec());
    }

    proptest! {
        /// Any chunking of a stream gives byte-identical rewritten output.
        #[test]
        fn chunking_invariant(
            events in proptest::collection::vec(("[a-z ]{0,6}", prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]), 0..6),
            tail in "[a-z:]{0,5}",
            cuts in proptest::collection::vec(0usize..80, 0..6),
        ) {
            let mut input = Vec::new();
            for (data, eol) in &events {
                input.extend_from_slice(format!("event: m{eol}data: {data}{eol}{eol}").as_bytes());
            }
            input.extend_from_slice(tail.as_bytes());
            let mut cuts = cuts;
            cuts.sort_unstable();
            let run = |cuts: &[usize]| {
                let mut r = SseRewriter::new();
                let mut rewrite = |d: &str| d.contains('a').then(|| d.replace('a', "[A]"));
                let mut out = Vec::new();
                let mut last = 0;
                for &c in cuts {
                    let c = c.min(input.len()).max(last);
                    out.extend(r.feed(&input[last..c], &mut rewrite));
                    last = c;
                }
                out.extend(r.feed(&input[last..], &mut rewrite));
                out.extend(r.finish(&mut rewrite));
                out
            };
            prop_assert_eq!(run(&cuts), run(&[]));
        }
    }
}
