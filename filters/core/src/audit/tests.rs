use super::*;
use crate::config::{EnvSecrets, FilterConfig, RawFilterConfig};
use crate::gateway::{Gateway, HeadDecision, RequestHead};
use serde_json::json;
use sha2::{Digest, Sha256};

const NOW: u64 = 1_800_000_000;

fn gateway() -> Gateway {
    let raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm"],
        "auth": {"api_keys": [{"consumer": "bot", "sha256": hex::encode(Sha256::digest(b"k")), "roles": ["reader"]}]},
        "policy": {"roles": {"reader": {"allow": ["crm/get_*", "crm/get.customer"]}}},
        "redaction": [
            {"match": {"tools": ["crm/*"]}, "detectors": ["email"], "mode": "mask"},
            {"match": {"tools": ["crm/get_secret"]}, "detectors": ["ssn"], "mode": "block", "direction": "request"}
        ],
        "observability": {"consumer_label": true}
    }))
    .unwrap();
    Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
}

fn pending(g: &Gateway) -> crate::gateway::PendingRequest {
    let h = [("x-api-key", "k"), ("content-type", "application/json")];
    match g.on_request_head(
        RequestHead { method: "POST", path: "/mcp/crm", headers: &h, end_of_stream: false },
        NOW,
        &mut g.new_token_cache(),
    ) {
        HeadDecision::AwaitBody(p) => p,
        other => panic!("{other:?}"),
    }
}

fn call(tool: &str, arguments: serde_json::Value) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
        .to_string()
        .into_bytes()
}

fn field<'a>(fields: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
}

fn names(updates: &[MetricUpdate]) -> Vec<&str> {
    updates.iter().map(MetricUpdate::name).collect()
}

#[test]
fn allowed_call_names_server_tool_and_decision() {
    let g = gateway();
    let p = pending(&g);
    let ex = g.on_request_body(&p, &call("get_customer", json!({"id": 7}))).unwrap();
    let mut r = AuditRecord::for_exchange(&ex);
    r.upstream_answer(Some(200), None);
    r.finish();
    assert_eq!(r.decision, Decision::Allowed);
    let f = r.fields();
    assert_eq!(field(&f, field::METHOD), Some("tools/call"));
    assert_eq!(field(&f, field::TARGET), Some("get_customer"));
    assert_eq!(field(&f, field::TARGET_KIND), Some("tool"));
    assert_eq!(field(&f, field::CONSUMER), Some("bot"));
    assert_eq!(field(&f, field::ROLES), Some("reader"));
    assert_eq!(field(&f, field::DECISION), Some("allowed"));
    assert_eq!(field(&f, field::UPSTREAM_STATUS), Some("200"));
    assert_eq!(field(&f, field::REASON), None);
    let m = r.metrics(MetricOptions::default(), false);
    assert_eq!(
        names(&m),
        vec![
            "meshgate.requests.method.tools_call.decision.allowed",
            "meshgate.decision_time_us.method.tools_call",
            "meshgate.tool_calls.server.crm.tool.get_customer.decision.allowed",
        ]
    );
    let m = r.metrics(MetricOptions { consumer_label: true }, false);
    assert!(names(&m).contains(&"meshgate.tool_calls.server.crm.tool.get_customer.decision.allowed.consumer.bot"));
    let m = r.metrics(MetricOptions::default(), true);
    assert!(names(&m).contains(&"meshgate.tool_calls.server.crm.tool.other.decision.allowed"));
}

#[test]
fn refusals_map_to_decisions() {
    let g = gateway();
    let p = pending(&g);
    let body = call("delete_customer", json!({}));
    let rej = g.on_request_body(&p, &body).unwrap_err();
    let mut r = AuditRecord::for_pending(&p, &body);
    r.refused(&rej);
    r.finish();
    assert_eq!(r.decision, Decision::Denied);
    assert_eq!(r.target.as_deref(), Some("delete_customer"));
    assert_eq!(r.error_code, Some(code::FORBIDDEN));
    assert!(r.reason.as_deref().unwrap().contains("not allowed"));

    let body = call("get_secret", json!({"ssn": "123-45-6789"}));
    let rej = g.on_request_body(&p, &body).unwrap_err();
    let mut r = AuditRecord::for_pending(&p, &body);
    r.refused(&rej);
    assert_eq!(r.decision, Decision::Blocked);
    let line = format!("{:?}", r.fields());
    assert!(!line.contains("6789"), "{line}");

    let unreadable = b"{not json";
    let rej = g.on_request_body(&p, unreadable).unwrap_err();
    let mut r = AuditRecord::for_pending(&p, unreadable);
    r.refused(&rej);
    assert_eq!((r.decision, r.method.clone()), (Decision::Invalid, None));
    assert_eq!(names(&r.metrics(MetricOptions::default(), false))[0], "meshgate.requests.method.none.decision.invalid");

    let unauth = Rejection::unauthenticated("missing credentials", "Bearer".to_string());
    assert_eq!(Decision::of_rejection(&unauth), Decision::Unauthenticated);
    // Classified by why, not by the HTTP status that carries it.
    let denied = Rejection::forbidden("tool \"crm/x\" is not allowed");
    assert_eq!((denied.status, Decision::of_rejection(&denied)), (200, Decision::Denied));
    let blocked = Rejection::blocked("the request to crm was blocked");
    assert_eq!((blocked.status, Decision::of_rejection(&blocked)), (200, Decision::Blocked));
    let foreign = Rejection::foreign_origin(code::FORBIDDEN, "origin \"http://evil\" is not allowed");
    assert_eq!((foreign.status, Decision::of_rejection(&foreign)), (403, Decision::Denied));
    let down = Rejection::upstream_failed(503, Some(&json!(1)), "the MCP server \"crm\" is unavailable");
    assert_eq!((down.status, Decision::of_rejection(&down)), (200, Decision::Error));
    assert_eq!(Decision::of_rejection(&Rejection::new(403, code::FORBIDDEN, "x")), Decision::Invalid);
    let limited = Rejection::rate_limited("per-minute", 3, "slow down");
    let mut r = AuditRecord::for_path("/mcp/", &g.config().servers, "/mcp/crm?x=1");
    r.refused(&limited);
    assert_eq!(
        (r.decision, r.quota.as_deref(), r.server.as_deref()),
        (Decision::RateLimited, Some("limited:per-minute"), Some("crm"))
    );
    assert_eq!(AuditRecord::for_path("/mcp/", &g.config().servers, "/mcp/nope").server, None);
    assert_eq!(Decision::of_rejection(&Rejection::limiter_unavailable("x")), Decision::Error);
}

#[test]
fn response_outcomes_settle_the_decision() {
    let g = gateway();
    let p = pending(&g);
    let ex = g.on_request_body(&p, &call("get_customer", json!({}))).unwrap();
    let mut counts = RedactionCounts::new();
    let result = json!({"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ada@example.com"}]}});
    ex.rewrite_message(result.to_string().as_bytes(), &g.config().policy, &mut counts).unwrap();
    let mut r = AuditRecord::for_exchange(&ex);
    r.redactions = counts;
    r.finish();
    assert_eq!(r.decision, Decision::Redacted);
    let f = r.fields();
    assert_eq!((field(&f, field::REDACTIONS), field(&f, field::REDACTED_TOTAL)), (Some("email=1"), Some("1")));
    assert!(!format!("{f:?}").contains("ada@"));
    let m = r.metrics(MetricOptions::default(), false);
    assert!(m.contains(&MetricUpdate::Counter {
        name: "meshgate.redactions.server.crm.tool.get_customer.detector.email".into(),
        by: 1
    }));

    let mut r = AuditRecord::for_exchange(&ex);
    let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no such tool"}}"#;
    r.upstream_answer(Some(200), response_error_code(err));
    r.finish();
    assert_eq!((r.decision, r.error_code), (Decision::Error, Some(-32601)));
    assert!(
        names(&r.metrics(MetricOptions::default(), false)).contains(&"meshgate.upstream_errors.server.crm.code.-32601")
    );

    let mut r = AuditRecord::for_exchange(&ex);
    r.upstream_answer(Some(502), None);
    r.finish();
    assert_eq!(r.decision, Decision::Error);
}

#[test]
fn labels_are_sanitized_and_bounded() {
    assert_eq!(sanitize("get.customer"), "get_customer");
    assert_eq!(sanitize("a b/c:d-e"), "a_b_c_d-e");
    assert_eq!(sanitize(""), "_");
    assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_LABEL_CHARS);
    assert_eq!(method_label("tools/call"), "tools_call");
    assert_eq!(method_label("made/up.method"), OTHER);
    // A dotted tool name stays one label value.
    let g = gateway();
    let p = pending(&g);
    let ex = g.on_request_body(&p, &call("get.customer", json!({}))).unwrap();
    let r = AuditRecord::for_exchange(&ex);
    assert!(names(&r.metrics(MetricOptions::default(), false))
        .contains(&"meshgate.tool_calls.server.crm.tool.get_customer.decision.allowed"));
}

#[test]
fn method_labels_are_the_sanitized_methods() {
    for (method, label) in KNOWN_METHODS {
        assert_eq!(sanitize(method), *label, "{method}");
        assert_eq!(method_label(method), *label);
    }
    let all: Vec<_> = method_labels().collect();
    assert!(all.contains(&OTHER) && all.contains(&NONE) && all.contains(&"tools_call"));
}

#[test]
fn clean_labels_are_borrowed() {
    assert!(matches!(sanitize_label("get_customer"), Cow::Borrowed("get_customer")));
    assert_eq!(sanitize_label("get.customer"), "get_customer");
}

#[test]
fn upstream_error_codes_collapse_past_the_series_cap() {
    // An upstream chooses its error codes: each new code is a new series, so past the cap
    // the code is `other` like a caller's tool name.
    let g = gateway();
    let p = pending(&g);
    let ex = g.on_request_body(&p, &call("get_customer", json!({}))).unwrap();
    let mut r = AuditRecord::for_exchange(&ex);
    r.upstream_answer(Some(200), Some(-31999));
    r.finish();
    let under = r.metrics(MetricOptions::default(), false);
    let under = names(&under);
    assert!(under.contains(&"meshgate.upstream_errors.server.crm.code.-31999"), "{under:?}");
    let over = r.metrics(MetricOptions::default(), true);
    let over = names(&over);
    assert!(over.contains(&"meshgate.upstream_errors.server.crm.code.other"), "{over:?}");
    assert!(!over.iter().any(|n| n.contains("31999")), "{over:?}");
}

#[test]
fn visited_series_are_the_listed_series() {
    let g = gateway();
    let p = pending(&g);
    let ex = g.on_request_body(&p, &call("get.customer", json!({}))).unwrap();
    let mut r = AuditRecord::for_exchange(&ex);
    r.upstream_answer(Some(200), Some(-32601));
    r.finish();
    for options in [MetricOptions::default(), MetricOptions { consumer_label: true }] {
        let mut visited = Vec::new();
        r.for_each_series(options, false, |kind, root, values, value| {
            assert_eq!(values.len(), metric_labels(root, options).len(), "{root}");
            visited.push((kind, root, values.iter().map(|v| v.to_string()).collect::<Vec<_>>(), value));
        });
        let listed: Vec<_> = r
            .metric_series(options, false)
            .into_iter()
            .map(|s| (s.kind, s.root, s.labels.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), s.value))
            .collect();
        assert_eq!(visited, listed);
        assert!(visited.len() >= 4);
    }
}

#[test]
fn error_codes_are_found_in_json_and_sse() {
    assert_eq!(response_error_code(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), None);
    assert_eq!(response_error_code(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}"#), Some(-32000));
    let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32602,\"message\":\"bad\"}}\n\n";
    assert_eq!(response_error_code(sse), Some(-32602));
    assert_eq!(response_error_code(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"err"), None);
    // The scan that skips the parse must not miss an escaped key, nor whitespace around it.
    assert_eq!(
        response_error_code(br#"{"jsonrpc":"2.0","id":1,"\u0065rror":{"code":-32001,"message":"x"}}"#),
        Some(-32001)
    );
    assert_eq!(response_error_code(br#"{"jsonrpc":"2.0","id":1,"e\u0072ror":{"code":-32002}}"#), Some(-32002));
    assert_eq!(response_error_code(b"{ \"error\" : {\"code\": -32003}, \"id\": 1}"), Some(-32003));
    // A result that merely mentions an error is still a result.
    assert_eq!(response_error_code(br#"{"jsonrpc":"2.0","id":1,"result":{"text":"no \"error\" here"}}"#), None);
}

#[test]
fn arguments_only_for_opted_in_tools() {
    let raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm"],
        "auth": {"api_keys": [{"consumer": "bot", "sha256": hex::encode(Sha256::digest(b"k")), "roles": ["reader"]}]},
        "policy": {"roles": {"reader": {"allow": ["crm/*"]}}},
        "observability": {"audit_values": ["crm/get_*"]}
    }))
    .unwrap();
    let g = Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap());
    let p = pending(&g);
    let body = call("get_customer", json!({"id": "c-7"}));
    let mut r = AuditRecord::for_exchange(&g.on_request_body(&p, &body).unwrap());
    r.capture_arguments(&g.config().audit_values, &body);
    assert_eq!(field(&r.fields(), field::ARGUMENTS), Some(r#"{"id":"c-7"}"#));
    let body = call("update_customer", json!({"id": "c-7"}));
    let mut r = AuditRecord::for_exchange(&g.on_request_body(&p, &body).unwrap());
    r.capture_arguments(&g.config().audit_values, &body);
    assert_eq!(field(&r.fields(), field::ARGUMENTS), None);
    // Off by default.
    assert!(gateway().config().audit_values.is_empty());
    let bad: RawFilterConfig =
        serde_json::from_value(json!({"servers": ["crm"], "observability": {"audit_values": ["crm/[x]"]}})).unwrap();
    let e = FilterConfig::compile(&bad, &EnvSecrets).unwrap_err();
    assert_eq!(e.path(), Some("observability.audit_values[0]"));
}

#[test]
fn audit_fields_are_written_unless_the_configuration_says_nothing_reads_them() {
    let compiled = |observability: serde_json::Value| {
        let raw: RawFilterConfig =
            serde_json::from_value(json!({"servers": ["crm"], "observability": observability})).unwrap();
        (FilterConfig::compile(&raw, &EnvSecrets).unwrap().audit_fields, serde_json::to_value(&raw).unwrap())
    };
    let (on, raw) = compiled(json!({}));
    assert!(on, "absent means written: a hand-written filter config keeps its audit fields");
    assert!(raw.get("observability").is_none(), "the default is not serialized: {raw}");
    let (off, raw) = compiled(json!({"audit_fields": false}));
    assert!(!off);
    assert_eq!(raw["observability"]["audit_fields"], json!(false));
    assert!(compiled(json!({"audit_fields": true})).0);
}

proptest::proptest! {
    /// The clean-name fast path answers exactly what the per-character rule does.
    #[test]
    fn sanitize_is_the_per_character_rule(value in "[a-z0-9_-]{0,80}|(\\PC|[a-z_.-]){0,80}") {
        let rule: String = value
            .chars()
            .take(MAX_LABEL_CHARS)
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .collect();
        let expected = if rule.is_empty() { "_".to_string() } else { rule };
        proptest::prop_assert_eq!(sanitize(&value), expected);
    }
}

#[test]
fn audit_targets_are_bounded() {
    assert_eq!(bounded_target("crm/get_customer"), "crm/get_customer");
    let exact = "é".repeat(MAX_AUDIT_TARGET_CHARS);
    assert_eq!(bounded_target(&exact), exact);
    let long = format!("{exact}tail");
    let cut = bounded_target(&long);
    assert_eq!(cut.chars().count(), MAX_AUDIT_TARGET_CHARS + 1);
    assert!(cut.starts_with(&exact) && cut.ends_with('…'));
}

#[test]
fn audit_numbers_read_as_to_string_writes_them() {
    let mut d = Decimal::default();
    for n in [0, 7, 10, -1, -32003, 200, i128::from(i64::MIN), i128::from(u64::MAX)] {
        assert_eq!(d.of(n), n.to_string());
    }
}
