//! Time and memory per input byte of the parsers that read untrusted bytes (issue #13
//! item 2): the SSE framer (with the gateway's real per-event governance), the strict JSON
//! scanner, the list filter and the redactor. See the crate docs for the method.
//!
//! `cargo test -p meshgate-fuzz` runs a few cases of modest size; `make fuzz` runs many,
//! larger, in release mode, with the CPU-time growth checks (skipped in debug builds).
//! `MESHGATE_FUZZ_CASES` and `MESHGATE_FUZZ_SCALE` set the number of cases and the size
//! factor. Seeds of failures are kept in `proptest-regressions/`, and the inputs that
//! found bugs are pinned as regression cases below.

use std::sync::OnceLock;

use meshgate_core::config::{EnvSecrets, FilterConfig, RawFilterConfig};
use meshgate_core::gateway::{Exchange, Gateway, HeadDecision, RequestHead};
use meshgate_core::jsonrpc;
use meshgate_core::redact::{Direction, RedactionCounts, RedactionPlan};
use meshgate_core::sse::{EventData, SseRewriter};
use meshgate_fuzz::{grows_linearly, measure, within, CountingAlloc, PerByte, Usage};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cases() -> u32 {
    env_usize("MESHGATE_FUZZ_CASES", 6) as u32
}

/// Target input size of generated cases, in bytes.
fn target_bytes() -> usize {
    env_usize("MESHGATE_FUZZ_SCALE", 1) * 48 * 1024
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 64,
        // Integration tests have no lib.rs beside them for proptest's default: name the file.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/bounds.txt"
        )))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------- the gateway

const ALL_DETECTORS: [&str; 10] =
    ["email", "phone", "credit_card", "ssn", "iban", "ip", "jwt", "bearer_token", "aws_key", "api_key"];

/// A gateway with one server `s`: role `reader` may use `s/get_*` and prompts `s/public_*`;
/// every response is masked for every built-in detector.
fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let raw = serde_json::json!({
            "servers": ["s"],
            "auth": {"api_keys": [{"consumer": "c", "roles": ["reader"],
                "sha256": "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a"}]},
            "policy": {"roles": {"reader": {"allow": ["s/get_*"], "prompts": {"allow": ["s/public_*"]}}}},
            "limits": {"max_response_bytes": 64 * 1024 * 1024},
            "redaction": [{"match": {"tools": ["s/*"]}, "detectors": ALL_DETECTORS, "mode": "mask"}]
        });
        let raw = RawFilterConfig::from_json(raw.to_string().as_bytes()).expect("config");
        Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).expect("config compiles"))
    })
}

/// The exchange of a reader's `tools/list` (id 7): its answer is list-filtered and redacted.
fn list_exchange() -> Exchange {
    let g = gateway();
    let headers = [("x-api-key", "k"), ("content-type", "application/json")];
    let head = RequestHead { method: "POST", path: "/mcp/s", headers: &headers, end_of_stream: false };
    let HeadDecision::AwaitBody(pending) = g.on_request_head(head, 0, &mut g.new_token_cache()) else {
        panic!("the list request is awaited")
    };
    g.on_request_body(&pending, br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).expect("list request")
}

/// The exchange of a reader's GET stream: replayed answers are filtered by shape, every
/// event redacted, and refused events replaced one by one (the stream goes on).
fn get_exchange() -> Exchange {
    let g = gateway();
    let headers = [("x-api-key", "k")];
    let head = RequestHead { method: "GET", path: "/mcp/s", headers: &headers, end_of_stream: true };
    let HeadDecision::Forward(exchange) = g.on_request_head(head, 0, &mut g.new_token_cache()) else {
        panic!("the GET stream is forwarded")
    };
    exchange
}

fn response_plan() -> RedactionPlan {
    gateway().config().redactor.plan("s", Some("get_x"), &["reader".to_string()], Direction::Response).expect("a plan")
}

// ---------------------------------------------------------------------------- inputs

/// Repeats pieces chosen by `pick` (cycled) until `target` bytes.
fn assemble(pieces: &[Vec<u8>], target: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(target + 1024);
    if pieces.is_empty() {
        return out;
    }
    let mut i = 0;
    while out.len() < target {
        out.extend_from_slice(&pieces[i % pieces.len()]);
        i += 1;
    }
    out
}

fn tools_answer(names: &[&str]) -> String {
    let tools: Vec<_> =
        names.iter().map(|n| serde_json::json!({"name": n, "inputSchema": {"type": "object"}})).collect();
    serde_json::json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": tools}}).to_string()
}

/// One piece of an SSE stream: an event or stray bytes, with assorted line endings.
fn sse_piece() -> impl Strategy<Value = Vec<u8>> {
    let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
    prop_oneof![
        4 => Just(b"data: {}\n\n".to_vec()),
        2 => eol.clone().prop_map(|e| format!("data: {{}}{e}{e}").into_bytes()),
        1 => Just(b"data:\n\n".to_vec()),
        1 => Just(b": keep-alive\n\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => (1usize..200).prop_map(|n| format!("{}\n", "data: x\n".repeat(n)).into_bytes()),
        1 => eol.clone().prop_map(|e| format!("id: 1{e}event: message{e}data: {}{e}{e}", tools_answer(&["get_a", "delete_b"])).into_bytes()),
        1 => eol.prop_map(|e| format!(r#"data: {{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":"jane@example.com \u0040 +1 415 555 0132"}}}}{e}{e}"#).into_bytes()),
        1 => Just(b"data: {\"a\":\"\xff\"}\n\n".to_vec()),
        1 => Just(b"\xEF\xBB\xBF".to_vec()),
        1 => (0usize..64).prop_map(|n| format!("data: {}{}\n\n", "[".repeat(n), "]".repeat(n)).into_bytes()),
    ]
}

/// Chunk sizes the network might deliver, or the whole input at once (where a framer that
/// copies per event is at its worst).
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![usize::MAX]),
        3 => proptest::collection::vec(prop_oneof![1usize..4, 4usize..512, 512usize..65536], 1..16),
    ]
}

/// Feeds `input` to a rewriter in chunks of `sizes` (cycled), governing each event as the
/// gateway does; returns the output length (outputs are dropped as they come, as Envoy
/// sends them on).
fn run_sse(input: &[u8], sizes: &[usize], exchange: &Exchange) -> usize {
    let policy = &gateway().config().policy;
    let mut counts = RedactionCounts::new();
    let mut rewriter = SseRewriter::new();
    let mut rewrite = |d: EventData<'_>| exchange.rewrite_event(d, policy, &mut counts);
    let mut sent = 0;
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(4096).max(1);
        let end = at.saturating_add(size).min(input.len());
        sent += rewriter.feed(&input[at..end], &mut rewrite).len();
        at = end;
        i += 1;
    }
    sent + rewriter.finish(&mut rewrite).len()
}

// ---------------------------------------------------------------------------- bounds

/// Bounds per input byte, about twice the worst seen (`MESHGATE_FUZZ_REPORT=1` prints each
/// case's figures). Peaks: what one chunk, one event and its governance hold at once; on
/// the GET stream every refused event is replaced by an error of about 140 bytes (the
/// stream goes on), so a chunk of 17-byte refused events comes out about 8 times larger
/// (on a POST stream the first refusal ends the stream); the strict scanner keeps a
/// 16-byte table entry per container (`[]` is two bytes); the redactor a decoded copy and
/// a re-encoded copy of an escaped string. Totals: every allocation of the call; a tiny
/// SSE event costs about 2 KB of fixed scanner and filter setup, hence the larger factor
/// there (the quadratic framer allocated over 2 000 bytes per byte at 48 KiB, 12 800 at
/// 256 KiB).
const SSE_PEAK: PerByte = PerByte { k: 32, c: 256 * 1024 };
const SSE_TOTAL: PerByte = PerByte { k: 384, c: 256 * 1024 };
const JSON_PEAK: PerByte = PerByte { k: 32, c: 64 * 1024 };
const JSON_TOTAL: PerByte = PerByte { k: 64, c: 64 * 1024 };
const LIST_PEAK: PerByte = PerByte { k: 8, c: 64 * 1024 };
const LIST_TOTAL: PerByte = PerByte { k: 16, c: 64 * 1024 };
const REDACT_PEAK: PerByte = PerByte { k: 24, c: 256 * 1024 };
const REDACT_TOTAL: PerByte = PerByte { k: 48, c: 256 * 1024 };

fn check(what: &str, n: usize, usage: &Usage, peak: PerByte, total: PerByte) -> Result<(), TestCaseError> {
    if std::env::var("MESHGATE_FUZZ_REPORT").is_ok() {
        eprintln!(
            "{what}: n={n} peak/byte={:.2} total/byte={:.2} allocs={}",
            usage.peak_bytes as f64 / n as f64,
            usage.total_bytes as f64 / n as f64,
            usage.allocations
        );
    }
    within(what, n, usage, peak, total).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config())]

    /// SSE framing and per-event governance, on a list request's stream and on the GET
    /// stream: linear memory for any mix of events and chunking.
    #[test]
    fn sse_stream_memory_is_linear(
        pieces in proptest::collection::vec(sse_piece(), 1..24),
        sizes in chunking(),
        scale in 1usize..4,
        get in any::<bool>(),
    ) {
        let input = assemble(&pieces, target_bytes() * scale);
        let exchange = if get { get_exchange() } else { list_exchange() };
        let (_, usage) = measure(|| run_sse(&input, &sizes, &exchange));
        check("sse", input.len(), &usage, SSE_PEAK, SSE_TOTAL)?;
    }

    /// The strict JSON scanner and its in-place reader on large documents of every shape.
    #[test]
    fn json_scan_memory_is_linear(doc in json_document()) {
        let (_, usage) = measure(|| {
            if let Ok(strict) = jsonrpc::validate_strict(&doc) {
                let root = strict.root();
                let mut n = 0;
                for (_, v) in root.members() { n += v.elements().count() + v.members().count(); }
                for v in root.elements() { n += v.elements().count(); }
                n
            } else { 0 }
        });
        check("json scan", doc.len(), &usage, JSON_PEAK, JSON_TOTAL)?;
    }

    /// The list filter on large list answers.
    #[test]
    fn list_filter_memory_is_linear(answer in list_answer()) {
        let exchange = list_exchange();
        let filter = exchange.list_filter.clone().expect("a list filter");
        let policy = &gateway().config().policy;
        let (_, usage) = measure(|| filter.apply(&answer, policy));
        check("list filter", answer.len(), &usage, LIST_PEAK, LIST_TOTAL)?;
    }

    /// The redactor on large messages full of candidates, escapes and tiny strings.
    #[test]
    fn redaction_memory_is_linear(message in redaction_message()) {
        let plan = response_plan();
        let (_, usage) = measure(|| plan.redact_message(&message, &mut RedactionCounts::new()));
        check("redaction", message.len(), &usage, REDACT_PEAK, REDACT_TOTAL)?;
    }
}

/// JSON documents: deep nesting (to the limit and past it), huge arrays, tiny strings,
/// objects with many keys (escaped too), long escape runs, long numbers.
fn json_document() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        (1usize..=130).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
        (1usize..=130).prop_map(|d| format!("{}1{}", r#"{"a":"#.repeat(d), "}".repeat(d))),
        Just(r#""x""#.to_string()),
        Just("0".to_string()),
        Just(format!("\"{}\"", "\\n\\\"\\u0041".repeat(64))),
        Just("123456789012345678901234567890e-3".to_string()),
        (0usize..2000)
            .prop_map(|k| format!("{{{}}}", (0..k).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(","))),
        (0usize..200).prop_map(|k| format!(
            "{{{}}}",
            (0..k).map(|i| format!("\"\\u006b{i}\":{i}")).collect::<Vec<_>>().join(",")
        )),
    ];
    (proptest::collection::vec(piece, 1..12), any::<bool>(), 1usize..4).prop_map(|(pieces, object, scale)| {
        let mut body = Vec::new();
        let target = target_bytes() * scale;
        let mut i = 0;
        body.push(if object { b'{' } else { b'[' });
        while body.len() < target {
            if i > 0 {
                body.push(b',');
            }
            if object {
                body.extend_from_slice(format!("\"m{i}\":").as_bytes());
            }
            body.extend_from_slice(pieces[i % pieces.len()].as_bytes());
            i += 1;
        }
        body.push(if object { b'}' } else { b']' });
        body
    })
}

/// `tools/list` answers with many items: allowed and denied names, escaped names, items
/// without names, big schemas.
fn list_answer() -> impl Strategy<Value = Vec<u8>> {
    let item = prop_oneof![
        Just(r#"{"name":"get_a","inputSchema":{"type":"object"}}"#.to_string()),
        Just(r#"{"name":"delete_b","inputSchema":{"type":"object"}}"#.to_string()),
        Just(r#"{"name":"get\u005fc","inputSchema":{}}"#.to_string()),
        Just(r#"{"title":"no name"}"#.to_string()),
        (0usize..500).prop_map(|n| format!(
            r#"{{"name":"get_big","inputSchema":{{"properties":{{{}}}}}}}"#,
            (0..n).map(|i| format!("\"p{i}\":{{\"type\":\"string\"}}")).collect::<Vec<_>>().join(",")
        )),
    ];
    (proptest::collection::vec(item, 1..8), 1usize..4).prop_map(|(items, scale)| {
        let mut list = String::new();
        let mut i = 0;
        while list.len() < target_bytes() * scale {
            if i > 0 {
                list.push(',');
            }
            list.push_str(&items[i % items.len()]);
            i += 1;
        }
        format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"tools":[{list}],"nextCursor":"c"}}}}"#).into_bytes()
    })
}

/// Server messages for the redactor: text with PII and near misses, escapes of every kind,
/// hostile candidate runs, many tiny strings, deep structured content.
fn redaction_message() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        Just("jane.doe@example.com "),
        Just("jane\\u0040example.com "),
        Just("(415) 555-0132 "),
        Just("+44 20 7946 0958 "),
        Just("4111 1111 1111 1111 "),
        Just("123-45-6789 "),
        Just("DE89370400440532013000 "),
        Just("10.0.0.1 fe80::1 "),
        Just("AKIAIOSFODNN7EXAMPLE "),
        Just("eyJ-eyJ-eyJ-eyJ-"),
        Just("a@a@a@a@"),
        Just("1 1 1 1 1 1 "),
        Just("\\n\\t\\\"\\\\"),
        Just("\\u00e9\\/"),
        Just("plain words "),
    ];
    let text = proptest::collection::vec(fragment, 1..32).prop_map(|v| v.concat());
    (text, 0usize..3, 1usize..4).prop_map(|(text, shape, scale)| {
        let target = target_bytes() * scale;
        let repeated = text.repeat(target / text.len().max(1) + 1);
        let body = match shape {
            0 => {
                format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{repeated}"}}]}}}}"#)
            }
            1 => {
                let strings = format!("\"{text}\",").repeat(target / (text.len() + 3) + 1);
                format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"structuredContent":{{"rows":[{}"x"]}}}}}}"#, strings)
            }
            _ => {
                let tiny = "\"a\",".repeat(target / 4);
                format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"structuredContent":[{tiny}"{text}"]}}}}"#)
            }
        };
        body.into_bytes()
    })
}

// ---------------------------------------------------------------------------- regressions

/// The input that found issue #13 item 2: 256 KiB of `data: {}` events. The quadratic
/// framer allocated 3.2 GiB (12 800 bytes per input byte) and took 4.4 s natively.
#[test]
fn regression_tiny_event_flood() {
    let input = b"data: {}\n\n".repeat(256 * 1024 / 10);
    let exchange = list_exchange();
    for sizes in [&[input.len()][..], &[65536], &[1, 7, 300]] {
        let (_, usage) = measure(|| run_sse(&input, sizes, &exchange));
        within("tiny event flood", input.len(), &usage, SSE_PEAK, SSE_TOTAL).unwrap();
    }
}

/// CR-only events (`data: {}\r\r`), which the framer once held back at chunk ends.
#[test]
fn regression_cr_only_flood() {
    let input = b"data: {}\r\r".repeat(64 * 1024 / 10);
    let exchange = list_exchange();
    let (_, usage) = measure(|| run_sse(&input, &[1, 2, 3, 4096], &exchange));
    within("cr-only flood", input.len(), &usage, SSE_PEAK, SSE_TOTAL).unwrap();
}

// ---------------------------------------------------------------------------- time

/// Pathological inputs of `n` bytes for the CPU-time growth checks.
fn flood(n: usize) -> Vec<u8> {
    b"data: {}\n\n".repeat(n / 10)
}

fn one_event_many_lines(n: usize) -> Vec<u8> {
    let mut e = b"data: x\n".repeat(n / 8);
    e.push(b'\n');
    e
}

fn deep_arrays(n: usize) -> Vec<u8> {
    let unit = format!("{}{}", "[".repeat(127), "]".repeat(127));
    format!("[{}0]", format!("{unit},").repeat(n / 255)).into_bytes()
}

fn many_keys(n: usize) -> Vec<u8> {
    let keys: Vec<String> = (0..n / 12).map(|i| format!("\"k{i:08}\":0")).collect();
    format!("{{{}}}", keys.join(",")).into_bytes()
}

fn tiny_strings(n: usize) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"structuredContent":[{}"a"]}}}}"#, "\"a\",".repeat(n / 4))
        .into_bytes()
}

fn escape_run(n: usize) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
        "\\n\\u0041".repeat(n / 8)
    )
    .into_bytes()
}

fn hostile_candidates(n: usize) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{}.eyJhYmMi.x"}}]}}}}"#,
        "eyJ-".repeat(n / 4)
    )
    .into_bytes()
}

fn many_items(n: usize) -> Vec<u8> {
    let items = [r#"{"name":"get_a"}"#, r#"{"name":"delete_b"}"#].join(",");
    format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"tools":[{}{{"name":"x"}}]}}}}"#, format!("{items},").repeat(n / 36))
        .into_bytes()
}

const TIME_BYTES: usize = 64 * 1024;
const RUNS: usize = 5;

#[test]
#[cfg_attr(debug_assertions, ignore = "CPU-time growth is checked in release builds: make fuzz")]
fn sse_time_grows_linearly() {
    let exchange = list_exchange();
    for (name, input) in [("flood", flood as fn(usize) -> Vec<u8>), ("many data lines", one_event_many_lines)] {
        // One chunk (the whole input: the old framer was quadratic within a chunk) and
        // tiny ones.
        for sizes in [&[usize::MAX][..], &[1, 2, 3]] {
            grows_linearly(name, TIME_BYTES, RUNS, input, |i| {
                run_sse(i, sizes, &exchange);
            })
            .unwrap();
        }
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "CPU-time growth is checked in release builds: make fuzz")]
fn json_scan_time_grows_linearly() {
    for (name, input) in [
        ("deep arrays", deep_arrays as fn(usize) -> Vec<u8>),
        ("many keys", many_keys),
        ("tiny strings", tiny_strings),
        ("escape run", escape_run),
    ] {
        grows_linearly(name, TIME_BYTES, RUNS, input, |i| {
            let _ = jsonrpc::validate_strict(i);
        })
        .unwrap();
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "CPU-time growth is checked in release builds: make fuzz")]
fn list_filter_time_grows_linearly() {
    let exchange = list_exchange();
    let filter = exchange.list_filter.clone().expect("a list filter");
    let policy = &gateway().config().policy;
    grows_linearly("many items", TIME_BYTES, RUNS, many_items, |i| {
        let _ = filter.apply(i, policy);
    })
    .unwrap();
}

#[test]
#[cfg_attr(debug_assertions, ignore = "CPU-time growth is checked in release builds: make fuzz")]
fn redaction_time_grows_linearly() {
    let plan = response_plan();
    for (name, input) in [
        ("tiny strings", tiny_strings as fn(usize) -> Vec<u8>),
        ("escape run", escape_run),
        ("hostile candidates", hostile_candidates),
        ("deep arrays", deep_arrays),
    ] {
        grows_linearly(name, TIME_BYTES, RUNS, input, |i| {
            let _ = plan.redact_message(i, &mut RedactionCounts::new());
        })
        .unwrap();
    }
}
