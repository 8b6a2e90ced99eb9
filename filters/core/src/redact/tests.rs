//! Redactor tests: the corpus, configuration errors, scoping, modes, JSON handling, and the
//! properties the host glue relies on (valid JSON out, untouched bodies not copied, SSE
//! chunking invariance, agreement with a tree-based reference).

use std::collections::HashSet;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::config::{FilterConfig, RawFilterConfig};
use crate::sse::{EventData, Rewritten, SseRewriter};

const ALL_DETECTORS: [&str; 10] =
    ["email", "phone", "credit_card", "ssn", "iban", "ip", "jwt", "bearer_token", "aws_key", "api_key"];
const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

struct Secrets(Vec<(&'static str, &'static str)>);

impl SecretSource for Secrets {
    fn secret(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }
}

fn servers() -> HashSet<String> {
    ["crm", "docs"].into_iter().map(String::from).collect()
}

fn compile(rules: Value) -> Result<Redactor, ConfigError> {
    let rules: Vec<RawRedactionRule> = serde_json::from_value(rules).map_err(|e| ConfigError::Json(e.to_string()))?;
    Redactor::compile(
        &rules,
        Some("KEY"),
        &servers(),
        &|r| r == "support" || r == "admin",
        &Secrets(vec![("KEY", KEY)]),
    )
}

fn redactor(mode: &str) -> Redactor {
    compile(json!([{ "detectors": ALL_DETECTORS, "mode": mode, "direction": "both" }])).unwrap()
}

fn plan(mode: &str) -> RedactionPlan {
    redactor(mode).plan("crm", Some("get_customer"), &[], Direction::Response).unwrap()
}

fn tool_result(text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 7,
        "result": {"content": [{"type": "text", "text": text}], "structuredContent": {"rows": [{"note": text}]}}
    }))
    .unwrap()
}

fn redact(plan: &RedactionPlan, body: &[u8]) -> (Option<Vec<u8>>, RedactionCounts) {
    let mut counts = RedactionCounts::new();
    let out = plan.redact_message(body, &mut counts).unwrap();
    (out, counts)
}

fn corpus() -> Vec<(String, String)> {
    include_str!("corpus.tsv")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (input, expected) = l.split_once('\t').unwrap_or_else(|| panic!("no tab in corpus line {l:?}"));
            let unescape = |s: &str| s.replace("\\n", "\n").replace("\\t", "\t");
            let input = unescape(input);
            let expected = if expected == "=" { input.clone() } else { unescape(expected) };
            (input, expected)
        })
        .collect()
}

#[test]
fn corpus_in_content_structured_content_and_plain_text() {
    let plan = plan("mask");
    let mut failures = Vec::new();
    for (input, expected) in corpus() {
        let body = tool_result(&input);
        let (out, _) = redact(&plan, &body);
        let v: Value = serde_json::from_slice(out.as_deref().unwrap_or(&body)).unwrap();
        let text = v["result"]["content"][0]["text"].as_str().unwrap().to_string();
        let note = v["result"]["structuredContent"]["rows"][0]["note"].as_str().unwrap().to_string();
        let plain = plan.redact_text(&input, &mut RedactionCounts::new()).unwrap().unwrap_or_else(|| input.clone());
        if text != expected || note != expected || plain != expected {
            failures.push(format!("{input:?}\n  want {expected:?}\n  got  {text:?} / {note:?} / {plain:?}"));
        }
        // Untouched bodies are reported as such, not copied.
        assert_eq!(out.is_none(), input == expected, "{input:?}");
    }
    assert!(failures.is_empty(), "{} corpus failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn config_through_filter_config() {
    let raw = RawFilterConfig::from_json(
        json!({
            "servers": ["crm", "docs"],
            "policy": {"roles": {"support": {"allow": ["*"]}}},
            "redaction_hash_key_env": "MESHGATE_REDACTION_KEY",
            "redaction": [{
                "match": {"tools": ["crm/*"], "roles": []},
                "detectors": ALL_DETECTORS,
                "custom": [{"name": "ticket_secret", "regex": "SEC-[0-9]{6}"}],
                "mode": "mask",
                "direction": "response"
            }, {
                "match": {"roles": ["support"]},
                "detectors": ["credit_card"],
                "mode": "hash"
            }]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(raw.secret_env_names(), ["MESHGATE_REDACTION_KEY"]);
    let config = FilterConfig::compile(&raw, &Secrets(vec![("MESHGATE_REDACTION_KEY", KEY)])).unwrap();
    let support = vec!["support".to_string()];
    let p = config.redactor.plan("crm", Some("find"), &support, Direction::Response).unwrap();
    assert_eq!(p.mode_of("ticket_secret"), Some(Mode::Mask));
    assert_eq!(p.mode_of("credit_card"), Some(Mode::Hash));
    let (out, counts) = redact(&p, &tool_result("ref SEC-123456 card 4111111111111111"));
    let v: Value = serde_json::from_slice(&out.unwrap()).unwrap();
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("ref [TICKET_SECRET] card [CREDIT_CARD:"), "{text}");
    assert_eq!((counts.get("ticket_secret"), counts.get("credit_card")), (2, 2));
    // A configuration without redaction serializes as before (no new keys).
    let plain = RawFilterConfig::from_json(br#"{"servers":["crm"]}"#).unwrap();
    assert!(!serde_json::to_string(&plain).unwrap().contains("redaction"));
    assert!(FilterConfig::compile(&plain, &Secrets(vec![])).unwrap().redactor.is_empty());
}

#[test]
fn configuration_errors_name_the_path() {
    let cases = [
        (json!([{"detectors": ["emial"]}]), "redaction[0].detectors[0]", "unknown detector \"emial\""),
        (json!([{"detectors": []}]), "redaction[0]", "detects nothing"),
        (
            json!([{"detectors": ["email"]}, {"custom": [{"name": "a", "regex": "x"}, {"name": "b", "regex": "(["}]}]),
            "redaction[1].custom[1].regex",
            "invalid regex",
        ),
        (json!([{"custom": [{"name": "a", "regex": "^SEC"}]}]), "redaction[0].custom[0].regex", "anchor"),
        (json!([{"custom": [{"name": "a", "regex": "x*"}]}]), "redaction[0].custom[0].regex", "empty string"),
        (
            json!([{"custom": [{"name": "a", "regex": r"\p{Greek}+"}]}]),
            "redaction[0].custom[0].regex",
            "Unicode property",
        ),
        (
            json!([{"custom": [{"name": "a", "regex": r"[\pL0-9]+"}]}]),
            "redaction[0].custom[0].regex",
            "Unicode property",
        ),
        (json!([{"custom": [{"name": "Bad-Name", "regex": "x"}]}]), "redaction[0].custom[0].name", "not a valid"),
        (json!([{"custom": [{"name": "email", "regex": "x"}]}]), "redaction[0].custom[0].name", "built-in"),
        (
            json!([{"custom": [{"name": "a", "regex": "x"}, {"name": "a", "regex": "y"}]}]),
            "redaction[0].custom[1].name",
            "duplicate",
        ),
        (json!([{"match": {"tools": ["crm/[x]"]}, "detectors": ["ip"]}]), "redaction[0].match.tools[0]", "glob"),
        (
            json!([{"match": {"tools": ["crmx/*"]}, "detectors": ["ip"]}]),
            "redaction[0].match.tools[0]",
            "unknown server",
        ),
        (
            json!([{"match": {"tools": ["get_x"]}, "detectors": ["ip"]}]),
            "redaction[0].match.tools[0]",
            "must have the form server/name",
        ),
        (json!([{"match": {"roles": ["ghost"]}, "detectors": ["ip"]}]), "redaction[0].match.roles[0]", "not a role"),
    ];
    for (rules, path, message) in cases {
        let err = compile(rules.clone()).unwrap_err();
        assert_eq!(err.path(), Some(path), "{rules}: {err}");
        assert!(err.message().contains(message), "{rules}: {err}");
    }
    // Serde-level: unknown keys and modes are refused.
    assert!(compile(json!([{"detectors": ["ip"], "mdoe": "mask"}])).is_err());
    assert!(compile(json!([{"detectors": ["ip"], "mode": "redact"}])).is_err());
    assert!(compile(json!([{"detectors": ["ip"], "match": {"tool": []}}])).is_err());
}

#[test]
fn hash_key_errors() {
    let rules: Vec<RawRedactionRule> =
        serde_json::from_value(json!([{"detectors": ["email"], "mode": "hash"}])).unwrap();
    let known = |_: &str| true;
    let err = Redactor::compile(&rules, None, &servers(), &known, &Secrets(vec![])).unwrap_err();
    assert_eq!(err.path(), Some("redaction[0].mode"));
    let err = Redactor::compile(&rules, Some("K"), &servers(), &known, &Secrets(vec![])).unwrap_err();
    assert_eq!(
        (err.path(), err.message()),
        (Some("redaction_hash_key_env"), "environment variable K is not set or empty")
    );
    let err = Redactor::compile(&rules, Some("K"), &servers(), &known, &Secrets(vec![("K", "short")])).unwrap_err();
    assert!(err.message().contains("shorter than 32 bytes"), "{err}");
    assert!(!format!("{:?}", redactor("hash")).contains(KEY), "the key must not appear in Debug output");
}

#[test]
fn plans_follow_scope_roles_and_direction() {
    let r = compile(json!([
        {"match": {"tools": ["crm/*"]}, "detectors": ["email"]},
        {"match": {"tools": ["docs/get_*"], "roles": ["support"]}, "detectors": ["phone"], "mode": "block"},
        {"detectors": ["ssn"], "direction": "request"},
        {"match": {"tools": ["*"]}, "detectors": ["email"], "mode": "hash", "direction": "both"},
    ]))
    .unwrap();
    let support = vec!["support".to_string()];
    let modes =
        |p: Option<RedactionPlan>| p.map(|p| ["email", "phone", "ssn"].map(|d| p.mode_of(d))).unwrap_or([None; 3]);
    use Mode::*;
    // Strictest mode wins: email is masked by rule 0 and hashed by rule 3.
    assert_eq!(modes(r.plan("crm", Some("find"), &[], Direction::Response)), [Some(Hash), None, None]);
    assert_eq!(modes(r.plan("crm", None, &[], Direction::Response)), [Some(Hash), None, None]);
    assert_eq!(modes(r.plan("docs", Some("get_doc"), &support, Direction::Response)), [Some(Hash), Some(Block), None]);
    assert_eq!(modes(r.plan("docs", Some("get_doc"), &[], Direction::Response)), [Some(Hash), None, None]);
    // "docs/get_*" does not cover what is not a tool call.
    assert_eq!(modes(r.plan("docs", None, &support, Direction::Response)), [Some(Hash), None, None]);
    assert_eq!(modes(r.plan("docs", Some("put_doc"), &support, Direction::Request)), [Some(Hash), None, Some(Mask)]);

    let only_crm = compile(json!([{"match": {"tools": ["crm/*"]}, "detectors": ["email"]}])).unwrap();
    assert!(only_crm.plan("docs", Some("x"), &[], Direction::Response).is_none());
    assert!(only_crm.plan("crm", Some("x"), &[], Direction::Request).is_none());
    assert!(Redactor::default().plan("crm", None, &[], Direction::Response).is_none());
}

#[test]
fn keys_numbers_ids_and_formatting_are_untouched() {
    let body = br#"{ "jsonrpc": "2.0", "id": "jane@example.com",
  "result": { "structuredContent": { "jane@example.com": 4111111111111111, "big": 123456789012345678901234567890,
    "f": 1.50e3, "n": null, "s": "mail jane@example.com" },
    "content": [ { "type": "image", "data": "AKIAIOSFODNN7EXAMPLE", "mimeType": "image/png" } ] } }"#;
    let (out, counts) = redact(&plan("mask"), body);
    let out = String::from_utf8(out.unwrap()).unwrap();
    assert_eq!(out, String::from_utf8_lossy(body).replace("\"mail jane@example.com\"", "\"mail [EMAIL]\""));
    assert_eq!(counts.iter().collect::<Vec<_>>(), [("email", 1)]);
}

#[test]
fn untouched_bodies_are_not_copied() {
    let p = plan("mask");
    for body in [
        &br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"all good"}]}}"#[..],
        // Matches outside the rewritten fields: the walk runs, nothing changes.
        br#"{"jsonrpc":"2.0","id":"a@b.io","result":{"content":[{"type":"text","text":"line\none"}]}}"#,
        br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"image","data":"jane@example.com"}]}}"#,
    ] {
        assert_eq!(redact(&p, body), (None, RedactionCounts::new()), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn escapes_cannot_hide_matches() {
    let p = plan("mask");
    for (body, want) in [
        (r#"{"result":{"content":[{"text":"a\n415-555-0132"}]}}"#, "a\n[PHONE]"),
        (r#"{"result":{"content":[{"text":"jane\u0040example.com"}]}}"#, "[EMAIL]"),
        (r#"{"result":{"content":[{"text":"\"jane@example.com\""}]}}"#, "\"[EMAIL]\""),
        (r#"{"result":{"content":[{"text":"4111\u00201111 1111 1111"}]}}"#, "[CREDIT_CARD]"),
        (r#"{"result":{"str\u0075cturedContent":{"a":"x 10.1.2.3"}}}"#, ""),
    ] {
        let (out, _) = redact(&p, body.as_bytes());
        let v: Value = serde_json::from_slice(&out.unwrap()).unwrap();
        if want.is_empty() {
            assert_eq!(v["result"]["structuredContent"]["a"], json!("x [IP]"));
        } else {
            assert_eq!(v["result"]["content"][0]["text"], json!(want), "{body}");
        }
    }
}

#[test]
fn requests_redact_arguments_only() {
    let p = redactor("mask").plan("crm", Some("find"), &[], Direction::Request).unwrap();
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"find","arguments":{"q":"jane@example.com","filters":[{"ip":"10.0.0.1"}]},"_meta":{"by":"a@b.io"}}});
    let (out, counts) = redact(&p, body.to_string().as_bytes());
    let v: Value = serde_json::from_slice(&out.unwrap()).unwrap();
    assert_eq!(v["params"]["arguments"], json!({"q":"[EMAIL]","filters":[{"ip":"[IP]"}]}));
    assert_eq!(v["params"]["_meta"]["by"], json!("a@b.io"));
    assert_eq!(counts.total(), 2);
}

#[test]
fn server_messages_errors_and_notifications() {
    let p = plan("mask");
    for (body, pointer) in [
        (
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"no user jane@example.com"}}),
            "/error/message",
        ),
        (
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x","data":{"who":["jane@example.com"]}}}),
            "/error/data/who/0",
        ),
        (
            json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":{"m":"jane@example.com"}}}),
            "/params/data/m",
        ),
        (
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1,"message":"mailing jane@example.com"}}),
            "/params/message",
        ),
        (
            json!({"jsonrpc":"2.0","id":1,"result":{"contents":[{"uri":"crm://c/1","text":"jane@example.com"}]}}),
            "/result/contents/0/text",
        ),
        (
            json!({"jsonrpc":"2.0","id":1,"result":{"messages":[{"role":"user","content":{"type":"text","text":"jane@example.com"}}]}}),
            "/result/messages/0/content/text",
        ),
    ] {
        let (out, _) = redact(&p, body.to_string().as_bytes());
        let v: Value = serde_json::from_slice(&out.expect("rewritten")).unwrap();
        let s = v.pointer(pointer).and_then(Value::as_str).unwrap();
        assert!(s.contains("[EMAIL]") && !s.contains("jane"), "{pointer}: {s}");
    }
}

#[test]
fn hash_tokens_are_stable_keyed_and_normalized() {
    let p = plan("hash");
    let token = |text: &str| {
        let (out, _) = redact(&p, &tool_result(text));
        let v: Value = serde_json::from_slice(&out.unwrap()).unwrap();
        v["result"]["content"][0]["text"].as_str().unwrap().to_string()
    };
    let a = token("4111 1111 1111 1111");
    assert!(a.starts_with("[CREDIT_CARD:") && a.len() == "[CREDIT_CARD:]".len() + HASH_TOKEN_HEX_DIGITS, "{a}");
    assert_eq!(a, token("4111-1111-1111-1111"));
    assert_eq!(a, token("4111111111111111"));
    assert_ne!(a, token("5555555555554444"));
    assert_eq!(token("Jane@Example.com"), token("jane@example.com"));
    assert_eq!(token("(415) 555-0132"), token("+1 415 555 0132"));
    // Another key, other tokens.
    let rules: Vec<RawRedactionRule> =
        serde_json::from_value(json!([{"detectors": ["credit_card"], "mode": "hash"}])).unwrap();
    let other = Redactor::compile(
        &rules,
        Some("K"),
        &servers(),
        &|_| true,
        &Secrets(vec![("K", "another-key-another-key-another-key")]),
    )
    .unwrap()
    .plan("crm", None, &[], Direction::Response)
    .unwrap();
    let (out, _) = redact(&other, &tool_result("4111111111111111"));
    assert!(!String::from_utf8(out.unwrap()).unwrap().contains(&a));
}

#[test]
fn block_names_the_detector_never_the_value() {
    let p = plan("block");
    let mut counts = RedactionCounts::new();
    let Err(Refusal::Blocked(err)) = p.redact_message(&tool_result("ssn 123-45-6789"), &mut counts) else {
        panic!("blocked")
    };
    assert_eq!(err.detector(), "ssn");
    assert!(!err.to_string().contains("6789"), "{err}");
    assert_eq!(counts.get("ssn"), 1);
    assert_eq!(p.redact_message(&tool_result("nothing here"), &mut counts), Ok(None));
}

#[test]
fn what_is_not_json_is_refused_never_scanned_loosely() {
    let p = plan("mask");
    let mut counts = RedactionCounts::new();
    for body in [
        &b"upstream crashed for jane@example.com {"[..],
        b"\xff\xfe jane@example.com",
        // Issue #13 item 6: the Python client reads NaN and Infinity, and decodes \u0040.
        br#"{"jsonrpc":"2.0","id":1,"result":{"n":NaN,"content":[{"type":"text","text":"jane\u0040example.com"}]}}"#,
        br#"{"jsonrpc":"2.0","id":1,"result":{"n":-Infinity,"content":[{"type":"text","text":"jane\u0040example.com"}]}}"#,
        b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
        br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"\ud800 jane\u0040example.com"}]}}"#,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"jane\xff@example.com\"}]}}",
    ] {
        assert_eq!(p.redact_message(body, &mut counts), Err(Refusal::Unreadable), "{}", String::from_utf8_lossy(body));
    }
    // Free text is another matter: read as text, all of it.
    assert_eq!(
        p.redact_text("crashed for jane@example.com {", &mut counts).unwrap().as_deref(),
        Some("crashed for [EMAIL] {")
    );
}

/// Issue #13 item 6: the text of `resource_link` blocks (and of every other block field a
/// client may show) is redacted; the envelope and base64 media are not.
#[test]
fn resource_links_and_every_text_field_are_redacted() {
    let p = plan("mask");
    let body = json!({"jsonrpc":"2.0","id":"jane@example.com","result":{"content":[
        {"type":"resource_link","uri":"mailto:jane@example.com","name":"jane@example.com","title":"Jane <jane@example.com>",
         "description":"call +44 20 7946 0958","annotations":{"lastModified":"jane@example.com"},"_meta":{"by":"jane@example.com"}},
        {"type":"image","data":"amFuZUBleGFtcGxlLmNvbQ==jane@example.com","mimeType":"image/png"},
        {"type":"resource","resource":{"uri":"file:///home/jane@example.com/x","text":"jane@example.com","blob":"jane@example.com"}}
    ],"_meta":{"owner":"jane@example.com"}}});
    let (out, counts) = redact(&p, &serde_json::to_vec(&body).unwrap());
    let v: Value = serde_json::from_slice(&out.unwrap()).unwrap();
    let link = &v["result"]["content"][0];
    assert_eq!(link["uri"], json!("mailto:[EMAIL]"));
    assert_eq!((link["name"].clone(), link["title"].clone()), (json!("[EMAIL]"), json!("Jane <[EMAIL]>")));
    assert_eq!(link["description"], json!("call [PHONE]"));
    assert_eq!(
        (link["annotations"]["lastModified"].clone(), link["_meta"]["by"].clone()),
        (json!("[EMAIL]"), json!("[EMAIL]"))
    );
    assert_eq!(v["result"]["content"][1]["data"], body["result"]["content"][1]["data"]);
    let resource = &v["result"]["content"][2]["resource"];
    assert_eq!(
        (resource["uri"].clone(), resource["text"].clone()),
        (json!("file:///home/[EMAIL]/x"), json!("[EMAIL]"))
    );
    assert_eq!(resource["blob"], json!("jane@example.com"));
    assert_eq!(v["result"]["_meta"]["owner"], json!("[EMAIL]"));
    assert_eq!(v["id"], json!("jane@example.com"));
    assert_eq!(counts.get("email"), 8);
}

#[test]
fn custom_patterns_that_can_match_separators_are_scanned_decoded() {
    let r = compile(json!([{"custom": [{"name": "corp_mail", "regex": "[^ ]+@corp"}]}])).unwrap();
    let p = r.plan("crm", None, &[], Direction::Response).unwrap();
    assert!(!p.in_place);
    let body = br#"{"result":{"content":[{"text":"to:\nann@corp or \"bob@corp\""}]}}"#;
    let (out, counts) = redact(&p, body);
    let v: Value = serde_json::from_slice(&out.unwrap()).unwrap();
    // On the decoded text "[^ ]+" spans the newline and the quote, as it would for a client.
    assert_eq!(v["result"]["content"][0]["text"], json!("[CORP_MAIL] or [CORP_MAIL]\""));
    assert_eq!(counts.get("corp_mail"), 2);
    assert!(plan("mask").in_place);
}

#[test]
fn redact_text_and_event_data() {
    let p = plan("mask");
    let mut counts = RedactionCounts::new();
    assert_eq!(p.redact_text("mail jane@example.com", &mut counts).unwrap().as_deref(), Some("mail [EMAIL]"));
    assert_eq!(p.redact_text("nothing", &mut counts).unwrap(), None);
    let data = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"é jane@example.com"}]}}"#;
    let out = p.redact_message(data.as_bytes(), &mut counts).unwrap().unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), data.replace("jane@example.com", "[EMAIL]"));
    assert_eq!(counts.get("email"), 2);
}

#[test]
fn custom_detectors_win_ties_and_labels_are_upper_case() {
    let r = compile(
        json!([{"detectors": ["ssn"], "custom": [{"name": "employee_id", "regex": "[0-9]{3}-[0-9]{2}-[0-9]{4}"}]}]),
    )
    .unwrap();
    let p = r.plan("crm", None, &[], Direction::Response).unwrap();
    let (out, counts) = redact(&p, &tool_result("emp 123-45-6789"));
    assert!(String::from_utf8(out.unwrap()).unwrap().contains("emp [EMPLOYEE_ID]"));
    assert_eq!((counts.get("employee_id"), counts.get("ssn")), (2, 0));
}

// ---- properties ----------------------------------------------------------------------

/// Text fragments: PII, near misses, JSON-hostile characters and non-ASCII.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("jane.doe@example.com"),
        Just("(415) 555-0132"),
        Just("+44 20 7946 0958"),
        Just("4111 1111 1111 1111"),
        Just("123-45-6789"),
        Just("DE89370400440532013000"),
        Just("10.0.0.1"),
        Just("fe80::1"),
        Just("AKIAIOSFODNN7EXAMPLE"),
        Just("Bearer 8f14e45fceea167a5a36dedd4bea2543"),
        Just("ORD-2024-000123"),
        Just("1.2.3"),
        Just("2024-05-01T12:30:00Z"),
        Just("$1,299.00"),
        Just("\n"),
        Just("\""),
        Just("\\"),
        Just("\t"),
        Just(" "),
        Just("é"),
        Just("🚀"),
        Just("-"),
        Just("."),
        Just("@"),
        Just("415"),
        Just("x"),
        Just("\u{0}"),
        Just("\u{1f}"),
        Just("eyJ"),
    ]
    .prop_map(String::from)
}

/// Fragments glued together: detectors see them in every context.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..8).prop_map(|v| v.concat())
}

/// Fragments separated by spaces: every PII fragment stands on its own and must go.
fn spaced_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 1..8).prop_map(|v| v.join(" "))
}

/// The mask tokens (`[EMAIL]`) in `text`, in order.
fn tokens(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    text.split('[')
        .skip(1)
        .filter_map(|rest| rest.split_once(']').map(|(label, _)| label))
        .filter(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .map(String::from)
        .collect()
}

/// JSON values whose strings are PII-rich text.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from), text().prop_map(Value::String),];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(prop_oneof![Just("text".to_string()), text()], inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A server message with PII in rewritten and untouched places.
fn message() -> impl Strategy<Value = Value> {
    (text(), value(), value(), text(), text()).prop_map(|(t, structured, meta, err, id)| {
        json!({
            "jsonrpc": "2.0", "id": id,
            "result": {"content": [{"type": "text", "text": t}, {"type": "image", "data": err.clone()}],
                       "structuredContent": structured, "_meta": meta},
            "error": {"code": 1, "message": err},
        })
    })
}

/// Reference: the same selection written against a `serde_json::Value` tree.
fn reference(p: &RedactionPlan, v: &Value) -> Value {
    fn all(p: &RedactionPlan, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Some(new) = p.redact_text(s, &mut RedactionCounts::new()).unwrap() {
                    *s = new;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| all(p, x)),
            Value::Object(o) => o.values_mut().for_each(|x| all(p, x)),
            _ => {}
        }
    }
    // Every string under `result` and `error` but content blocks' media (`data`).
    let mut v = v.clone();
    if let Some(result) = v.get_mut("result").and_then(Value::as_object_mut) {
        for (key, x) in result.iter_mut() {
            if key != "content" {
                all(p, x);
                continue;
            }
            for block in x.as_array_mut().into_iter().flatten().filter_map(Value::as_object_mut) {
                block.iter_mut().filter(|(k, _)| *k != "data").for_each(|(_, y)| all(p, y));
            }
        }
    }
    if let Some(e) = v.get_mut("error") {
        all(p, e);
    }
    v
}

fn sse_run(p: &RedactionPlan, input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut r = SseRewriter::new();
    let mut rewrite = |d: EventData<'_>| match d {
        EventData::Text(t) => p.redact_message(t.as_bytes(), &mut RedactionCounts::new()).unwrap_or(None).into(),
        EventData::NotUtf8 => Rewritten::Keep,
    };
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts {
        let c = c.clamp(last, input.len());
        out.extend(r.feed(&input[last..c], &mut rewrite));
        last = c;
    }
    out.extend(r.feed(&input[last..], &mut rewrite));
    out.extend(r.finish(&mut rewrite));
    out
}

proptest! {
    /// The byte-splicing walker agrees with a tree-based reference, the output is valid
    /// JSON, and a second pass never touches the tokens of the first. (A second pass may
    /// redact more: `x.com+44 20 7946 0958` has no phone, `[EMAIL]+44 20 7946 0958` has.)
    #[test]
    fn agrees_with_tree_reference(msg in message()) {
        let p = plan("mask");
        let body = serde_json::to_vec(&msg).unwrap();
        let (out, _) = redact(&p, &body);
        let got: Value = serde_json::from_slice(out.as_deref().unwrap_or(&body)).unwrap();
        prop_assert_eq!(&got, &reference(&p, &msg));
        if let Some(out) = out {
            let again = redact(&p, &out).0.unwrap_or_else(|| out.clone());
            let (first, second) = (tokens(&out), tokens(&again));
            prop_assert!(first.iter().all(|t| second.contains(t)), "{:?} then {:?}", first, second);
        }
    }

    /// Scanning raw JSON in place (split at escapes, strings coalesced) gives the very
    /// result that decoding every string gives, escapes of every kind included.
    #[test]
    fn in_place_agrees_with_decoding(msg in message(), slash in any::<bool>()) {
        let p = plan("mask");
        let decoding = RedactionPlan { in_place: false, ..p.clone() };
        let mut body = serde_json::to_vec(&msg).unwrap();
        if slash {
            // Some encoders escape '/' and non-ASCII: those strings take the decoding path.
            body = String::from_utf8(body).unwrap().replace('/', "\\/").replace('é', "\\u00e9").into_bytes();
        }
        let (a, b) = (redact(&p, &body), redact(&decoding, &body));
        let parse = |r: &(Option<Vec<u8>>, RedactionCounts)| -> Value {
            serde_json::from_slice(r.0.as_deref().unwrap_or(&body)).unwrap()
        };
        prop_assert_eq!(parse(&a), parse(&b));
        prop_assert_eq!(&a.1, &b.1);
    }

    /// Any chunking of an SSE stream of JSON-RPC messages gives byte-identical output,
    /// equal to redacting each event on its own, with no PII left in rewritten fields.
    #[test]
    fn sse_chunking_invariant(
        texts in proptest::collection::vec(spaced_text(), 1..5),
        eol in prop_oneof![Just("\n"), Just("\r\n")],
        cuts in proptest::collection::vec(0usize..2000, 0..8),
    ) {
        let p = plan("mask");
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let data = String::from_utf8(tool_result(t)).unwrap();
            input.extend_from_slice(format!("event: message{eol}id: {i}{eol}data: {data}{eol}{eol}").as_bytes());
            let redacted = p
                .redact_message(data.as_bytes(), &mut RedactionCounts::new())
                .unwrap()
                .map_or(data, |b| String::from_utf8(b).unwrap());
            expected.extend_from_slice(format!("event: message{eol}id: {i}{eol}data: {redacted}{eol}{eol}").as_bytes());
        }
        let mut cuts = cuts;
        cuts.sort_unstable();
        let whole = sse_run(&p, &input, &[]);
        prop_assert_eq!(&sse_run(&p, &input, &cuts), &whole);
        // Rewritten events are rebuilt with "\n" line endings; untouched ones keep theirs.
        let normalize = |b: &[u8]| String::from_utf8_lossy(b).replace("\r\n", "\n");
        prop_assert_eq!(normalize(&whole), normalize(&expected));
        for secret in ["jane.doe@example.com", "4111 1111 1111 1111", "123-45-6789", "AKIAIOSFODNN7EXAMPLE"] {
            prop_assert!(!String::from_utf8_lossy(&whole).contains(secret));
        }
    }

    /// Never panics, whatever the bytes.
    #[test]
    fn total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let p = plan("mask");
        let _ = p.redact_message(&bytes, &mut RedactionCounts::new());
    }
}
