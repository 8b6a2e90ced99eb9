use super::*;
use proptest::prelude::*;

/// Runs `input` through a rewriter cut at `cuts`; returns the output and the data the
/// rewrite function was shown, in order (`None` for an event that was not UTF-8).
fn run(
    input: &[u8],
    cuts: &[usize],
    rewrite: &mut dyn FnMut(&str) -> Option<String>,
) -> (Vec<u8>, Vec<Option<String>>) {
    let mut seen = Vec::new();
    let mut r = SseRewriter::new();
    let mut f = |data: EventData<'_>| match data {
        EventData::Text(t) => {
            seen.push(Some(t.to_string()));
            rewrite(t).map(String::into_bytes).into()
        }
        EventData::NotUtf8 => {
            seen.push(None);
            Rewritten::Data(b"{\"refused\":true}".to_vec())
        }
    };
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts {
        let c = c.clamp(last, input.len());
        out.extend(r.feed(&input[last..c], &mut f));
        last = c;
    }
    out.extend(r.feed(&input[last..], &mut f));
    out.extend(r.finish(&mut f));
    (out, seen)
}

fn keep(_: &str) -> Option<String> {
    None
}

/// What an MCP client reads from a complete stream, per the SSE grammar: one leading BOM
/// stripped, lines ended by CRLF, LF or CR, the data of each dispatched event (MCP clients
/// skip events whose data is empty; an unterminated last event is discarded).
fn client_reads(stream: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    let mut rest = text;
    while let Some(at) = rest.find(['\r', '\n']) {
        let line = &rest[..at];
        let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + skip..];
        if line.is_empty() {
            if let Some(d) = data.take().filter(|d| !d.is_empty()) {
                events.push(d);
            }
            continue;
        }
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
    events
}

#[test]
fn frames_events_with_any_line_ending() {
    let input = b"event: message\ndata: {\"a\":1}\n\ndata: x\r\n\r\ndata: y\r\rdata: partial";
    let (out, seen) = run(input, &[], &mut keep);
    assert_eq!(seen, vec![Some("{\"a\":1}".into()), Some("x".into()), Some("y".into()), Some("partial".into())]);
    assert_eq!(out, input.to_vec());
}

#[test]
fn crlf_split_across_chunks_is_one_line_ending() {
    let input = b"data: x\r\n\r\ndata: y\r\n\r\n";
    for cut in 0..input.len() {
        let (out, seen) = run(input, &[cut], &mut keep);
        assert_eq!(seen, vec![Some("x".into()), Some("y".into())], "cut at {cut}");
        assert_eq!(out, input.to_vec(), "cut at {cut}");
    }
}

/// Issue #13 item 9a: an event ended by `\r\r` is complete at its last `\r`; it is
/// delivered at once, not held back waiting for a byte that may be an `\n`.
#[test]
fn a_cr_ending_at_the_end_of_a_chunk_completes_the_event_at_once() {
    let mut r = SseRewriter::new();
    let mut same = |_: EventData<'_>| Rewritten::Keep;
    assert_eq!(r.feed(b"data: {\"id\":1}\r\r", &mut same), b"data: {\"id\":1}\r\r".to_vec());
    assert_eq!(r.pending_len(), 0);
    // The `\n` that follows belongs to the `\r` before it: forwarded after the event, not
    // read as a blank line of its own.
    assert_eq!(r.feed(b"\ndata: 2\r\n\r\n", &mut same), b"\ndata: 2\r\n\r\n".to_vec());
}

/// Issue #13 item 9a: a rewritten event that ended with CR-only line endings keeps its
/// blank line, whether the stream goes on or ends there.
#[test]
fn a_rewritten_cr_only_event_keeps_its_blank_line() {
    let mut redact = |d: &str| Some(d.replace("secret", "[X]"));
    for input in [&b"event: message\rdata: secret\r\r"[..], b"data: secret\r\rdata: more\r\r"] {
        for cut in 0..=input.len() {
            let (out, _) = run(input, &[cut], &mut redact);
            let reads = client_reads(&out);
            assert_eq!(reads.first().map(String::as_str), Some("[X]"), "{out:?} (cut at {cut})");
            assert_eq!(reads.len(), client_reads(input).len(), "{out:?} (cut at {cut})");
        }
    }
}

#[test]
fn a_lone_cr_then_lf_in_the_next_chunk_is_swallowed_once_only() {
    // "\r" | "\n\n": the "\n" ends the CR's line, the next "\n" is the blank line.
    let (out, seen) = run(b"data: a\r\n\ndata: b\n\n", &[8], &mut keep);
    assert_eq!(seen, vec![Some("a".into()), Some("b".into())]);
    assert_eq!(out, b"data: a\r\n\ndata: b\n\n".to_vec());
    // After a rebuilt event the swallowed "\n" is dropped (the rebuilt event has its own).
    let mut rewrite = |d: &str| (d == "a").then(|| "A".to_string());
    let (whole, _) = run(b"data: a\r\r\ndata: b\n\n", &[], &mut rewrite);
    let (cut, _) = run(b"data: a\r\r\ndata: b\n\n", &[9], &mut rewrite);
    assert_eq!(whole, b"data: A\n\ndata: b\n\n".to_vec());
    assert_eq!(cut, whole);
}

/// Issue #13 items 3 and 6: a BOM before the first field hid the data from the gateway
/// while the TypeScript client (whose UTF-8 decoder strips it) read it. Leading BOMs are
/// stripped, even when they arrive a byte at a time.
#[test]
fn leading_byte_order_marks_are_stripped() {
    let input = b"\xEF\xBB\xBFdata: secret\n\n";
    let mut redact = |d: &str| Some(d.replace("secret", "[X]"));
    for cut in 0..=input.len() {
        let (out, seen) = run(input, &[cut.min(1), cut], &mut redact);
        assert_eq!(seen, vec![Some("secret".into())], "cut at {cut}");
        assert_eq!(out, b"data: [X]\n\n".to_vec(), "cut at {cut}");
    }
    // Two BOMs: the TypeScript client strips one and, fed a stream that still starts with
    // one, a second: none may reach it.
    let (out, seen) = run(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n", &[4], &mut keep);
    assert_eq!((out, seen), (b"data: x\n\n".to_vec(), vec![Some("x".into())]));
    // Only at the start of the stream.
    let (out, _) = run(b"data: x\n\n\xEF\xBB\xBFdata: y\n\n", &[], &mut keep);
    assert_eq!(out, b"data: x\n\n\xEF\xBB\xBFdata: y\n\n".to_vec());
    // A stream that is only part of a BOM is not UTF-8.
    let (out, seen) = run(b"\xEF\xBB", &[1], &mut keep);
    assert_eq!((out, seen), (b"data: {\"refused\":true}\n".to_vec(), vec![None]));
}

/// Issue #13 item 3: non-UTF-8 bytes were decoded leniently and the event passed as it
/// came; now the rewrite is told, and its answer replaces the event.
#[test]
fn events_that_are_not_utf8_are_handed_over_as_such() {
    let input = b"data: ok\n\nid: 7\ndata: {\"a\":\"\xff\"}\n\ndata: after\n\n";
    let (out, seen) = run(input, &[20], &mut keep);
    assert_eq!(seen, vec![Some("ok".into()), None, Some("after".into())]);
    assert_eq!(out, b"data: ok\n\ndata: {\"refused\":true}\n\ndata: after\n\n".to_vec());
    // A comment-only event that is not UTF-8 is not readable either.
    let (_, seen) = run(b": \xff\n\n", &[], &mut keep);
    assert_eq!(seen, vec![None]);
}

#[test]
fn read_event_joins_lines_and_skips_empty_data() {
    assert_eq!(read_event(b"id: 1\ndata: a\ndata:b\n\n").unwrap().as_deref(), Some("a\nb"));
    assert_eq!(read_event(b"id: 1\rdata: a\r\ndata:b\r\r").unwrap().as_deref(), Some("a\nb"));
    assert_eq!(read_event(b": comment\n\n"), Ok(None));
    // A resumption priming event carries an id and empty data: not a message.
    assert_eq!(read_event(b"id: ev-1\r\ndata: \r\n\r\n"), Ok(None));
    assert_eq!(read_event(b"data:\n\n"), Ok(None));
    assert_eq!(read_event(b"data: \xc3\n\n"), Err(NotUtf8));
    // One data field: borrowed, not copied.
    assert!(matches!(read_event(b"data: x\n\n"), Ok(Some(Cow::Borrowed("x")))));
}

#[test]
fn replace_data_keeps_other_fields() {
    let out = replace_data(b"event: message\nid: 7\ndata: {\"old\":1}\n\n", b"{\"new\":2}");
    assert_eq!(out, b"event: message\nid: 7\ndata: {\"new\":2}\n\n".to_vec());
    let out = replace_data(b"event: message\rid: 7\rdata: {\"old\":1}\r\r", b"a\nb");
    assert_eq!(out, b"event: message\nid: 7\ndata: a\ndata: b\n\n".to_vec());
}

#[test]
fn rewriter_passes_untouched_events_byte_for_byte() {
    let mut r = SseRewriter::new();
    let mut rewrite = |d: EventData<'_>| (d == EventData::Text("secret")).then(|| b"[X]".to_vec()).into();
    let out = r.feed(b"event: a\r\ndata: keep\r\n\r\ndata: secret\n\n", &mut rewrite);
    assert_eq!(out, b"event: a\r\ndata: keep\r\n\r\ndata: [X]\n\n".to_vec());
    assert!(r.finish(&mut rewrite).is_empty());
}

#[test]
fn rewriter_emits_complete_events_immediately() {
    let mut r = SseRewriter::new();
    let mut same = |_: EventData<'_>| Rewritten::Keep;
    assert_eq!(r.feed(b"data: 1\n\ndata: 2", &mut same), b"data: 1\n\n".to_vec());
    assert_eq!(r.pending_len(), 7);
    assert_eq!(r.feed(b"\n\n", &mut same), b"data: 2\n\n".to_vec());
}

#[test]
fn an_unterminated_last_event_is_rewritten_without_a_blank_line() {
    let mut redact = |d: &str| Some(d.replace("secret", "[X]"));
    let (out, _) = run(b"data: ok\n\ndata: secret", &[3], &mut redact);
    assert_eq!(out, b"data: ok\n\ndata: [X]\n".to_vec());
    let (out, seen) = run(b"data: ok\n\ndata: ok\r", &[], &mut keep);
    assert_eq!((out.as_slice(), seen.len()), (&b"data: ok\n\ndata: ok\r"[..], 2));
}

/// Tiny events in one chunk: the buffer is moved once per chunk, not once per event.
#[test]
fn many_tiny_events_keep_nothing_behind() {
    let input = b"data: {}\n\n".repeat(10_000);
    let mut r = SseRewriter::new();
    let mut n = 0;
    let mut count = |_: EventData<'_>| {
        n += 1;
        Rewritten::Keep
    };
    let out = r.feed(&input, &mut count);
    assert_eq!((out.len(), r.pending_len()), (input.len(), 0));
    assert_eq!(n, 10_000);
}

/// A line: a field (or comment) with a value from a small alphabet.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ab {}\"]{0,6}".prop_map(|v| format!("data: {v}")),
        1 => Just("data:".to_string()),
        1 => "[0-9]{0,3}".prop_map(|v| format!("id: {v}")),
        1 => Just("event: message".to_string()),
        1 => Just(": keep-alive".to_string()),
        1 => Just("retry: 10".to_string()),
    ]
}

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

/// A stream: events of lines with mixed line endings, maybe a leading BOM, maybe a tail.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        proptest::collection::vec((proptest::collection::vec((line(), eol()), 0..4), eol()), 0..6),
        "[a-z:]{0,5}",
    )
        .prop_map(|(bom, events, tail)| {
            let mut s = Vec::new();
            if bom {
                s.extend_from_slice(BOM);
            }
            for (lines, end) in events {
                for (l, e) in lines {
                    s.extend_from_slice(l.as_bytes());
                    s.extend_from_slice(e.as_bytes());
                }
                s.extend_from_slice(end.as_bytes());
            }
            s.extend_from_slice(tail.as_bytes());
            s
        })
}

proptest! {
    /// Any chunking of a stream gives byte-identical rewritten output.
    #[test]
    fn chunking_invariant(input in stream(), cuts in proptest::collection::vec(0usize..120, 0..8)) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut rewrite = |d: &str| d.contains('a').then(|| d.replace('a', "[A]"));
        prop_assert_eq!(run(&input, &cuts, &mut rewrite), run(&input, &[], &mut rewrite));
    }

    /// What a client reads of the output is exactly what the rewrite function was shown
    /// (rewritten where it said so): the gateway never governs one thing while the client
    /// reads another. Complete events only: an unterminated one is discarded by clients.
    #[test]
    fn clients_read_what_was_governed(input in stream(), cuts in proptest::collection::vec(0usize..120, 0..8)) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut rewrite = |d: &str| d.contains('a').then(|| d.replace('a', "[A]"));
        let (out, seen) = run(&input, &cuts, &mut rewrite);
        let governed: Vec<String> = seen.into_iter().flatten().map(|d| d.replace('a', "[A]")).collect();
        let reads = client_reads(&out);
        prop_assert_eq!(&reads[..], &governed[..reads.len()]);
        prop_assert_eq!(client_reads(&input).len(), reads.len());
    }
}

/// Issue #13 item 2: once an event answers the request with an error, nothing more is read
/// or sent, so a flood of refused events costs one error.
#[test]
fn nothing_follows_a_last_event() {
    let mut r = SseRewriter::new();
    let mut calls = 0;
    let mut refuse = |_: EventData<'_>| {
        calls += 1;
        Rewritten::Last(b"{\"error\":1}".to_vec())
    };
    let out = r.feed(b"data: []\n\ndata: []\n\ndata: [", &mut refuse);
    assert_eq!(out, b"data: {\"error\":1}\n\n".to_vec());
    assert_eq!(r.pending_len(), 0);
    assert!(r.feed(&b"]\n\ndata: []\n\n".repeat(1000), &mut refuse).is_empty());
    assert!(r.finish(&mut refuse).is_empty());
    assert_eq!(calls, 1);
}
