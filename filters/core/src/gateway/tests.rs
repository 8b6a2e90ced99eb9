use super::*;
use crate::config::{EnvSecrets, RawApiKey, RawAuth, RawFilterConfig, RawPolicy, RawRole};
use crate::reject::{Refusal, DENIED_STATUS};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const NOW: u64 = 1_800_000_000;

/// SSE event data as the rewriter hands it over.
fn text(data: &str) -> EventData<'_> {
    EventData::Text(data)
}

/// The bytes a rewritten event carries, if any.
fn sent(r: Rewritten) -> Option<Vec<u8>> {
    match r {
        Rewritten::Keep => None,
        Rewritten::Data(b) | Rewritten::Last(b) => Some(b),
    }
}

fn gateway(max_request_bytes: Option<u64>) -> Gateway {
    let mut roles = RawPolicy::default();
    roles.roles.insert(
        "reader".into(),
        RawRole { allow: vec!["crm/get_*".into(), "crm/list_*".into()], ..Default::default() },
    );
    roles.roles.insert(
        "admin".into(),
        RawRole { allow: vec!["*".into()], deny: vec!["crm/delete_*".into()], ..Default::default() },
    );
    let key = |k: &str, role: &str| RawApiKey {
        consumer: format!("{role}-bot"),
        sha256: hex::encode(Sha256::digest(k.as_bytes())),
        roles: vec![role.into()],
    };
    let raw = RawFilterConfig {
        route_prefix: "/mcp/".into(),
        servers: vec!["crm".into(), "docs".into()],
        auth: RawAuth {
            api_keys: vec![key("r", "reader"), key("a", "admin")],
            resource_metadata: Some("https://gw.example.com/.well-known/oauth-protected-resource".into()),
            ..Default::default()
        },
        policy: roles,
        limits: crate::config::RawLimits { max_request_bytes, ..Default::default() },
        redaction: serde_json::from_value(json!([
            {"match": {"tools": ["crm/*"]}, "detectors": ["email"], "mode": "mask"},
            {"match": {"tools": ["crm/update_*"]}, "detectors": ["credit_card"], "mode": "block", "direction": "request"},
            {"match": {"tools": ["crm/get_secret"]}, "detectors": ["ssn"], "mode": "block"}
        ]))
        .unwrap(),
        ..Default::default()
    };
    Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
}

fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    pairs.to_vec()
}

fn head_of(g: &Gateway, method: &str, path: &str, h: &[(&str, &str)]) -> HeadDecision {
    let h = headers(h);
    g.on_request_head(
        RequestHead { method, path, headers: &h, end_of_stream: method != "POST" },
        NOW,
        &mut g.new_token_cache(),
    )
}

fn pending(g: &Gateway, key: &str, extra: &[(&str, &str)]) -> PendingRequest {
    let mut h = vec![("x-api-key", key), ("content-type", "application/json")];
    h.extend_from_slice(extra);
    match head_of(g, "POST", "/mcp/crm", &h) {
        HeadDecision::AwaitBody(p) => p,
        other => panic!("{other:?}"),
    }
}

fn rejected(d: HeadDecision) -> Rejection {
    match d {
        HeadDecision::Reject(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn call(id: i64, tool: &str) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{}}})
        .to_string()
        .into_bytes()
}

#[test]
fn head_routes_and_authenticates() {
    let g = gateway(None);
    assert!(matches!(head_of(&g, "GET", "/.well-known/oauth-protected-resource", &[]), HeadDecision::PassThrough));
    assert_eq!(rejected(head_of(&g, "POST", "/mcp/nope", &[("x-api-key", "r")])).status, 404);
    assert_eq!(rejected(head_of(&g, "POST", "/other", &[("x-api-key", "r")])).status, 404);
    assert_eq!(rejected(head_of(&g, "POST", "/mcp/crm/extra", &[("x-api-key", "r")])).status, 404);
    let r = rejected(head_of(&g, "POST", "/mcp/crm", &[("content-type", "application/json")]));
    assert_eq!((r.status, r.code), (401, code::UNAUTHENTICATED));
    assert_eq!(
        r.headers,
        vec![(
            "www-authenticate",
            "Bearer realm=\"meshgate\", resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource\"".to_string()
        )]
    );
    let r = rejected(head_of(&g, "POST", "/mcp/crm", &[("authorization", "Bearer junk")]));
    assert_eq!(r.status, 401);
    assert!(r.headers[0].1.contains("error=\"invalid_token\""), "{:?}", r.headers);
    assert!(!r.message.contains("junk"), "credential leaked into {}", r.message);
    assert!(matches!(head_of(&g, "GET", "/mcp/crm?x=1", &[("x-api-key", "r")]), HeadDecision::Forward(_)));
    assert!(matches!(head_of(&g, "DELETE", "/mcp/crm", &[("x-api-key", "r")]), HeadDecision::Forward(_)));
    assert_eq!(rejected(head_of(&g, "PUT", "/mcp/crm", &[("x-api-key", "r")])).status, 405);
}

#[test]
fn head_refuses_unreadable_bodies() {
    let g = gateway(Some(100));
    let post = |h: &[(&str, &str)]| {
        let mut all = vec![("x-api-key", "r")];
        all.extend_from_slice(h);
        rejected(head_of(&g, "POST", "/mcp/crm", &all))
    };
    assert_eq!(post(&[("content-type", "text/plain")]).status, 415);
    assert_eq!(post(&[]).status, 415);
    assert_eq!(post(&[("content-type", "application/json"), ("content-encoding", "gzip")]).status, 415);
    let r = post(&[("content-type", "application/json"), ("content-length", "101")]);
    assert_eq!((r.status, r.message.as_str()), (413, "request body exceeds the 100-byte limit"));
    let r = post(&[("content-type", "application/json"), ("mcp-method", "a"), ("mcp-method", "b")]);
    assert_eq!((r.status, r.code), (400, code::HEADER_MISMATCH));
    assert!(matches!(
        head_of(&g, "POST", "/mcp/crm", &[("x-api-key", "r"), ("content-type", "application/json; charset=utf-8")]),
        HeadDecision::AwaitBody(_)
    ));
}

#[test]
fn body_enforces_rbac() {
    let g = gateway(None);
    let reader = pending(&g, "r", &[]);
    let ok = g.on_request_body(&reader, &call(1, "get_customer")).unwrap();
    assert_eq!(ok.server, "crm");
    assert_eq!(ok.consumer.name, "reader-bot");
    let denied = g.on_request_body(&reader, &call(7, "delete_customer")).unwrap_err();
    assert_eq!((denied.status, denied.code, denied.id.clone()), (DENIED_STATUS, code::FORBIDDEN, Some(json!(7))));
    assert_eq!(denied.refusal, Refusal::Denied);
    assert_eq!(denied.message, "tool \"crm/delete_customer\" is not allowed: not granted to this caller");
    let admin = pending(&g, "a", &[]);
    assert!(g.on_request_body(&admin, &call(1, "update_customer")).is_ok());
    let denied = g.on_request_body(&admin, &call(2, "delete_customer")).unwrap_err();
    assert_eq!(denied.message, "tool \"crm/delete_customer\" is not allowed: denied for this caller");
    // Protocol plumbing passes for any authenticated consumer.
    for body in [
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
        json!({"jsonrpc":"2.0","id":3,"result":{}}),
    ] {
        let ex = g.on_request_body(&reader, body.to_string().as_bytes()).unwrap();
        assert!(ex.list_filter.is_none());
    }
    let list = g.on_request_body(&reader, br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#).unwrap();
    let filter = list.list_filter.clone().unwrap();
    assert_eq!((filter.request_id, filter.shape.array), (json!(9), "tools"));
}

#[test]
fn body_refuses_hostile_input() {
    let g = gateway(Some(200));
    let p = pending(&g, "a", &[]);
    let cases: Vec<(Vec<u8>, u16, i64)> = vec![
        (b"{not json".to_vec(), 400, code::PARSE_ERROR),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffing\"}".to_vec(), 400, code::PARSE_ERROR),
        (
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","name":"delete_customer"}}"#.to_vec(),
            400,
            code::INVALID_REQUEST,
        ),
        (br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.to_vec(), 400, code::INVALID_REQUEST),
        (br#"{"jsonrpc":"2.0","id":1}"#.to_vec(), 400, code::INVALID_REQUEST),
        (br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{}}"#.to_vec(), 400, code::INVALID_PARAMS),
        (vec![b' '; 201], 413, code::INVALID_REQUEST),
    ];
    for (body, status, want) in cases {
        let r = g.on_request_body(&p, &body).unwrap_err();
        assert_eq!((r.status, r.code), (status, want), "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(v["error"]["code"], json!(want));
    }
    // The id is echoed when it could be read.
    let r = g.on_request_body(&p, br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{}}"#).unwrap_err();
    assert_eq!(r.id, Some(json!(4)));
}

#[test]
fn modern_routing_headers_must_match_the_body() {
    let g = gateway(None);
    let modern = |extra: &[(&str, &str)]| {
        let mut h = vec![("mcp-protocol-version", "2026-07-28")];
        h.extend_from_slice(extra);
        pending(&g, "a", &h)
    };
    let ok = modern(&[("mcp-method", "tools/call"), ("mcp-name", "get_customer")]);
    assert!(g.on_request_body(&ok, &call(1, "get_customer")).is_ok());
    let encoded = modern(&[("mcp-method", "tools/call"), ("mcp-name", "=?base64?Z2V0X2N1c3RvbWVy?=")]);
    assert!(g.on_request_body(&encoded, &call(1, "get_customer")).is_ok());
    for (extra, body) in [
        (vec![("mcp-method", "tools/call"), ("mcp-name", "get_customer")], call(1, "update_customer")),
        (vec![("mcp-method", "tools/list"), ("mcp-name", "get_customer")], call(1, "get_customer")),
        (vec![("mcp-name", "get_customer")], call(1, "get_customer")),
        (vec![("mcp-method", "tools/call")], call(1, "get_customer")),
    ] {
        let r = g.on_request_body(&modern(&extra), &body).unwrap_err();
        assert_eq!((r.status, r.code, r.id.clone()), (400, code::HEADER_MISMATCH, Some(json!(1))), "{extra:?}");
    }
    // The version header must agree with the per-request envelope.
    let enveloped = |id: i64, tool: &str| {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}})
        .to_string()
        .into_bytes()
    };
    assert!(g.on_request_body(&ok, &enveloped(1, "get_customer")).is_ok());
    let older = pending(
        &g,
        "a",
        &[("mcp-protocol-version", "2025-11-25"), ("mcp-method", "tools/call"), ("mcp-name", "get_customer")],
    );
    assert_eq!(g.on_request_body(&older, &enveloped(1, "get_customer")).unwrap_err().code, code::HEADER_MISMATCH);
    let headerless = pending(&g, "a", &[]);
    assert_eq!(g.on_request_body(&headerless, &enveloped(1, "get_customer")).unwrap_err().code, code::HEADER_MISMATCH);
    // Legacy clients send no routing headers; present ones are still checked.
    let legacy = pending(&g, "a", &[("mcp-protocol-version", "2025-11-25")]);
    assert!(g.on_request_body(&legacy, &call(1, "get_customer")).is_ok());
    let lying = pending(&g, "a", &[("mcp-name", "get_customer")]);
    assert_eq!(g.on_request_body(&lying, &call(1, "update_customer")).unwrap_err().code, code::HEADER_MISMATCH);
}

#[test]
fn response_plans() {
    let g = gateway(None);
    // docs has no redaction rule: only list answers are governed there.
    let h = headers(&[("x-api-key", "r"), ("content-type", "application/json")]);
    let docs = match g.on_request_head(
        RequestHead { method: "POST", path: "/mcp/docs", headers: &h, end_of_stream: false },
        NOW,
        &mut g.new_token_cache(),
    ) {
        HeadDecision::AwaitBody(p) => p,
        other => panic!("{other:?}"),
    };
    let list = g.on_request_body(&docs, br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#).unwrap();
    let plan = |status, ct, enc| {
        list.response_plan(ResponseHead { status, content_type: ct, content_encoding: enc, content_length: None })
    };
    assert_eq!(plan(200, Some("application/json"), None), ResponsePlan::Buffer(BodyKind::Json));
    assert_eq!(plan(200, Some("text/event-stream; charset=utf-8"), None), ResponsePlan::Stream);
    // Not MCP at all (an error page): a JSON-RPC error for the request naming the server.
    let ResponsePlan::Fail(failed) = plan(500, Some("text/html"), None) else { panic!("an error page is replaced") };
    assert_eq!((failed.status, failed.code, failed.id.clone()), (200, code::UPSTREAM_UNAVAILABLE, Some(json!(9))));
    assert!(failed.message.contains("\"docs\""), "{}", failed.message);
    // A JSON 5xx is the upstream's own answer: a list answer to filter, not a failure.
    assert_eq!(plan(500, Some("application/json"), None), ResponsePlan::Buffer(BodyKind::Json));
    assert!(matches!(plan(200, Some("application/json"), Some("gzip")), ResponsePlan::Replace(_)));
    assert!(matches!(plan(200, Some("text/html"), None), ResponsePlan::Replace(_)));
    let admin = pending(&g, "a", &[]);
    let h = headers(&[("x-api-key", "a"), ("content-type", "application/json")]);
    let docs_admin = match g.on_request_head(
        RequestHead { method: "POST", path: "/mcp/docs", headers: &h, end_of_stream: false },
        NOW,
        &mut g.new_token_cache(),
    ) {
        HeadDecision::AwaitBody(p) => p,
        other => panic!("{other:?}"),
    };
    let sse = ResponseHead {
        status: 200,
        content_type: Some("text/event-stream"),
        content_encoding: None,
        content_length: None,
    };
    let plain_call = g.on_request_body(&docs_admin, &call(1, "get_doc")).unwrap();
    // Nothing to rewrite, but the size limit reads an SSE answer event by event ...
    assert_eq!(plain_call.response_plan(sse), ResponsePlan::Stream);
    // ... and a declared length within the limit passes untouched.
    let sized = ResponseHead { content_length: Some(10), content_type: Some("application/json"), ..sse };
    assert_eq!(plain_call.response_plan(sized), ResponsePlan::PassThrough);
    // crm/* responses are redacted, so even a tool call's stream is governed, errors too.
    let crm_call = g.on_request_body(&admin, &call(1, "get_customer")).unwrap();
    assert_eq!(crm_call.response_plan(sse), ResponsePlan::Stream);
    let html =
        ResponseHead { status: 502, content_type: Some("text/html"), content_encoding: None, content_length: None };
    assert!(matches!(crm_call.response_plan(html), ResponsePlan::Fail(_)));
    let gz = ResponseHead {
        status: 200,
        content_type: Some("text/event-stream"),
        content_encoding: Some("gzip"),
        content_length: None,
    };
    assert!(matches!(crm_call.response_plan(gz), ResponsePlan::Replace(_)));
}

#[test]
fn lazy_response_plans_read_only_the_headers_they_need_and_agree_with_the_full_head() {
    let g = gateway(None);
    let limited = limited_gateway();
    let body_of = |g: &Gateway, key: &str, path: &str, body: &[u8]| {
        let h = headers(&[("x-api-key", key), ("content-type", "application/json")]);
        match g.on_request_head(
            RequestHead { method: "POST", path, headers: &h, end_of_stream: false },
            NOW,
            &mut g.new_token_cache(),
        ) {
            HeadDecision::AwaitBody(p) => g.on_request_body(&p, body).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let h = headers(&[("x-api-key", "a")]);
    let HeadDecision::Forward(get) = g.on_request_head(
        RequestHead { method: "GET", path: "/mcp/docs", headers: &h, end_of_stream: true },
        NOW,
        &mut g.new_token_cache(),
    ) else {
        panic!("GET is forwarded")
    };
    let exchanges = [
        ("list", body_of(&g, "r", "/mcp/docs", br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#)),
        ("plain call", body_of(&g, "a", "/mcp/docs", &call(1, "get_doc"))),
        ("redacted call", body_of(&g, "a", "/mcp/crm", &call(1, "get_customer"))),
        ("limited call", limited.on_request_body(&pending_on(&limited, "docs", "a"), &call(4, "search")).unwrap()),
        ("notification", body_of(&g, "a", "/mcp/docs", br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)),
        ("GET stream", get),
    ];
    let types = [None, Some("application/json"), Some("text/event-stream; charset=utf-8"), Some("text/html")];
    let encodings = [None, Some("gzip"), Some("identity")];
    let lengths = [None, Some("10"), Some("51"), Some("x")];
    for (name, ex) in &exchanges {
        for status in [200, 202, 404, 500] {
            for ct in types {
                for enc in encodings {
                    for len in lengths {
                        let full = ResponseHead {
                            status,
                            content_type: ct,
                            content_encoding: enc,
                            content_length: len.and_then(|v| v.parse().ok()),
                        };
                        let mut asked = Vec::new();
                        let lazy = ex.response_plan_from(status, &mut |h| {
                            asked.push(h.to_string());
                            match h {
                                "content-type" => ct,
                                "content-encoding" => enc,
                                "content-length" => len,
                                _ => None,
                            }
                            .map(String::from)
                        });
                        assert_eq!(lazy, ex.response_plan(full), "{name} {status} {ct:?} {enc:?} {len:?}");
                        let unique: std::collections::HashSet<_> = asked.iter().collect();
                        assert_eq!(unique.len(), asked.len(), "{name}: a header read twice: {asked:?}");
                    }
                }
            }
        }
    }
    // A call without response rewriting and with a declared length needs that length only;
    // the GET stream (no request to answer, no rewriting) its type and encoding: events are
    // checked for replayed responses.
    let count = |ex: &Exchange, len: Option<&str>| {
        let mut n = 0;
        ex.response_plan_from(200, &mut |h| {
            n += 1;
            (h == "content-length").then(|| len.map(String::from)).flatten()
        });
        n
    };
    assert_eq!(count(&exchanges[1].1, Some("10")), 1);
    assert_eq!(count(&exchanges[1].1, None), 2);
    assert_eq!(count(&exchanges[2].1, Some("10")), 3);
    assert_eq!(count(&exchanges[5].1, None), 2);
}

#[test]
fn redaction_rewrites_responses_and_blocks_requests() {
    let g = gateway(None);
    let admin = pending(&g, "a", &[]);
    let ex = g.on_request_body(&admin, &call(5, "get_customer")).unwrap();
    let mut counts = crate::redact::RedactionCounts::new();
    let result =
        json!({"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"mail ada@example.com now"}]}});
    let out = ex.rewrite_message(result.to_string().as_bytes(), &g.config().policy, &mut counts).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["result"]["content"][0]["text"], json!("mail [EMAIL] now"));
    assert_eq!(counts.get("email"), 1);
    // Nothing to redact: unchanged, no copy.
    let clean = json!({"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"order ORD-2024-000123"}]}});
    assert_eq!(ex.rewrite_message(clean.to_string().as_bytes(), &g.config().policy, &mut counts), None);

    // A blocked argument never leaves the gateway.
    let card = json!({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"update_customer",
        "arguments":{"card":"4111 1111 1111 1111"}}});
    let r = g.on_request_body(&admin, card.to_string().as_bytes()).unwrap_err();
    assert_eq!(
        (r.status, r.code, r.id.clone(), r.refusal),
        (DENIED_STATUS, code::FORBIDDEN, Some(json!(6)), Refusal::Blocked)
    );
    assert!(r.message.contains("credit_card") && !r.message.contains("4111"), "{}", r.message);

    // A blocked response becomes a JSON-RPC error for the request.
    let ex = g.on_request_body(&admin, &call(8, "get_secret")).unwrap();
    let leak = json!({"jsonrpc":"2.0","id":8,"result":{"content":[{"type":"text","text":"ssn 123-45-6789"}]}});
    let out = ex.rewrite_message(leak.to_string().as_bytes(), &g.config().policy, &mut counts).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((v["id"].clone(), v["error"]["code"].clone()), (json!(8), json!(code::FORBIDDEN)));
    assert!(!String::from_utf8_lossy(&out).contains("6789"));
}

// ---- quotas and guardrails ----

fn limited_gateway() -> Gateway {
    let key = |k: &str, consumer: &str, role: &str| json!({"consumer": consumer, "sha256": hex::encode(Sha256::digest(k.as_bytes())), "roles": [role]});
    let raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm", "docs"],
        "auth": {"api_keys": [key("r", "reader-bot", "reader"), key("a", "admin-bot", "admin")]},
        "policy": {"roles": {"reader": {"allow": ["*"]}, "admin": {"allow": ["*"]}}},
        "limits": {"max_argument_bytes": 100, "max_in_flight_per_consumer": 4, "max_response_bytes": 1000},
        "server_limits": {"docs": {"max_response_bytes": 50, "max_argument_bytes": 20,
                                   "tools": {"bulk_import": {"max_argument_bytes": 5000, "max_request_bytes": 2000000}}}},
        "quotas": [
            {"match": {"roles": ["reader"], "tools": ["crm/*"]}, "rate": "60/m", "burst": 10},
            {"name": "daily", "quota": "1000/d", "key": "consumer"},
            {"name": "fleet", "quota": "100/m", "key": "tool", "scope": "global"}
        ]
    }))
    .unwrap();
    Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
}

fn pending_on(g: &Gateway, server: &str, key: &str) -> PendingRequest {
    let h = headers(&[("x-api-key", key), ("content-type", "application/json")]);
    match g.on_request_head(
        RequestHead { method: "POST", path: &format!("/mcp/{server}"), headers: &h, end_of_stream: false },
        NOW,
        &mut g.new_token_cache(),
    ) {
        HeadDecision::AwaitBody(p) => p,
        other => panic!("{other:?}"),
    }
}

fn call_with(id: i64, tool: &str, arguments: Value) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
        .to_string()
        .into_bytes()
}

#[test]
fn charges_list_local_counters_and_global_descriptors() {
    let g = limited_gateway();
    let ex = g.on_request_body(&pending_on(&g, "crm", "r"), &call(1, "search")).unwrap();
    let local: Vec<_> = ex.charges.local.iter().map(|c| c.rule.as_str()).collect();
    assert_eq!(local, ["quota-0", "daily"]);
    assert!(ex.charges.local[0].shared_key.starts_with("meshgate/q/quota-0/"));
    assert!(ex.charges.local[0].shared_key.ends_with("/reader-bot/crm/search"), "{}", ex.charges.local[0].shared_key);
    assert!(ex.charges.local[1].shared_key.ends_with("/reader-bot"));
    let overflow = ex.charges.local[0].overflow_key();
    assert!(overflow.starts_with("meshgate/q/quota-0/") && overflow.ends_with("/!overflow"), "{overflow}");
    assert_eq!(overflow.matches('/').count(), 4, "{overflow}");
    assert_eq!(ex.charges.global.len(), 1);
    assert_eq!(ex.charges.global[0].header, "x-meshgate-rl-fleet");
    assert_eq!(ex.charges.global[0].value, "crm/search");
    assert!(ex.counts_in_flight);
    // The admin is not a reader: only the role-less rules apply.
    let ex = g.on_request_body(&pending_on(&g, "crm", "a"), &call(2, "search")).unwrap();
    assert_eq!(ex.charges.local.iter().map(|c| c.rule.as_str()).collect::<Vec<_>>(), ["daily"]);
    // Only tools/call is charged.
    let list =
        g.on_request_body(&pending_on(&g, "crm", "r"), br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#).unwrap();
    assert!(list.charges.is_empty() && !list.counts_in_flight);
}

#[test]
fn a_changed_limit_gets_a_fresh_shared_key() {
    let compile = |rate: &str| {
        let raw: Vec<crate::config::RawQuotaRule> = serde_json::from_value(json!([{"rate": rate}])).unwrap();
        crate::quota::QuotaRules::compile(&raw, &["crm".to_string()].into_iter().collect(), &|_| true).unwrap()
    };
    let key = |rules: &crate::quota::QuotaRules| rules.charges("c", "crm", "t", &[]).local[0].shared_key.clone();
    assert_eq!(key(&compile("5/s")), key(&compile("5/s")));
    assert_ne!(key(&compile("5/s")), key(&compile("6/s")));
}

#[test]
fn local_refusal_is_a_429_naming_the_limit() {
    let g = limited_gateway();
    let ex = g.on_request_body(&pending_on(&g, "crm", "r"), &call(7, "search")).unwrap();
    let r = ex.charges.local[0].rejection(7, ex.request_id());
    assert_eq!((r.status, r.code), (429, code::RATE_LIMITED));
    assert_eq!(r.message, "rate limit \"quota-0\" (60/m (burst 10)) exceeded for this consumer and tool; retry in 7 s");
    assert!(r.headers.contains(&("retry-after", "7".to_string())));
    let body: Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(body["id"], json!(7));
    assert_eq!(body["error"]["data"], json!({"limit": "quota-0", "retry_after_secs": 7}));
    let r = crate::quota::in_flight_rejection(4, Some(&json!("x")));
    assert_eq!((r.status, r.code, r.id.clone()), (429, code::RATE_LIMITED, Some(json!("x"))));
    assert!(r.message.contains("4 concurrent calls"), "{}", r.message);
}

#[test]
fn global_refusal_from_envoy_becomes_the_same_error() {
    let g = limited_gateway();
    let ex = g.on_request_body(&pending_on(&g, "crm", "r"), &call(3, "search")).unwrap();
    let refusal =
        |rule, retry_after, ratelimit_reset| quota::GlobalRefusal { rule, retry_after, ratelimit_reset, error: None };
    let r = g.global_rejection(&ex, &refusal(Some("fleet"), Some("12"), Some("30")));
    assert_eq!((r.status, r.code, r.id.clone()), (429, code::RATE_LIMITED, Some(json!(3))));
    assert!(r.headers.contains(&("retry-after", "12".to_string())));
    assert_eq!(r.message, "rate limit \"fleet\" (100/m quota) exceeded for this tool; retry in 12 s");
    let r = g.global_rejection(&ex, &refusal(None, None, Some("30")));
    assert!(r.headers.contains(&("retry-after", "30".to_string())));
    assert!(r.message.starts_with("global rate limit exceeded"), "{}", r.message);
    let r = g.global_rejection(&ex, &refusal(Some("other\r\n"), Some("Wed, 21 Oct 2026 07:28:00 GMT"), None));
    assert!(r.headers.contains(&("retry-after", "1".to_string())));
    assert!(!r.message.contains('\r'), "{}", r.message);
}

#[test]
fn global_refusal_for_an_unavailable_store_says_so() {
    let g = limited_gateway();
    let ex = g.on_request_body(&pending_on(&g, "crm", "r"), &call(4, "search")).unwrap();
    let refusal = quota::GlobalRefusal {
        rule: Some("fleet"),
        retry_after: Some("1"),
        ratelimit_reset: None,
        error: Some("store-unavailable"),
    };
    let r = g.global_rejection(&ex, &refusal);
    assert_eq!((r.status, r.code, r.id.clone()), (429, code::RATE_LIMITED, Some(json!(4))));
    assert!(r.message.contains("could not be checked") && !r.message.contains("exceeded"), "{}", r.message);
    assert!(r.headers.contains(&("x-meshgate-limit-error", "store-unavailable".to_string())));
    // Any other value is not ours to interpret: an ordinary refusal.
    let other = quota::GlobalRefusal { error: Some("weird"), ..refusal };
    assert!(g.global_rejection(&ex, &other).message.contains("exceeded"));
}

#[test]
fn client_sent_meshgate_headers_are_stripped() {
    let h = headers(&[("X-Meshgate-RL-fleet", "someone-else"), ("x-meshgate-consumer", "admin"), ("x-other", "1")]);
    let names = headers_to_strip(&h);
    assert!(names.contains(&"x-meshgate-rl-fleet".to_string()) && names.contains(&"x-meshgate-consumer".to_string()));
    assert!(!names.contains(&"x-other".to_string()));
    // Only what is there: no host call for an absent header.
    assert!(!names.contains(&"authorization".to_string()), "{names:?}");
    let h =
        headers(&[("Authorization", "Bearer t"), ("x-api-key", "k"), ("Accept-Encoding", "gzip"), ("accept", "*/*")]);
    assert_eq!(headers_to_strip(&h), ["authorization", "x-api-key", "accept-encoding"]);
    // Any case, each name once; names shorter than the prefix are not ours.
    let h = headers(&[("X-MESHGATE-Z", "1"), ("x-mesh", "2"), ("Authorization", "a"), ("authorization", "b")]);
    assert_eq!(headers_to_strip(&h), ["x-meshgate-z", "authorization"]);
}

#[test]
fn argument_and_request_sizes_resolve_tool_then_server_then_defaults() {
    let g = limited_gateway();
    let big = json!({"text": "x".repeat(200)});
    // Top-level: 100 bytes of arguments.
    let r = g.on_request_body(&pending_on(&g, "crm", "a"), &call_with(1, "search", big.clone())).unwrap_err();
    assert_eq!((r.status, r.code, r.id.clone()), (413, code::INVALID_PARAMS, Some(json!(1))));
    assert!(r.message.contains("crm/search") && r.message.contains("100-byte"), "{}", r.message);
    assert!(g.on_request_body(&pending_on(&g, "crm", "a"), &call_with(1, "search", json!({"q": "ok"}))).is_ok());
    // docs: 20 bytes, but its bulk_import tool takes 5000.
    assert!(g
        .on_request_body(&pending_on(&g, "docs", "a"), &call_with(1, "search", json!({"q": "a longer query text"})))
        .is_err());
    assert!(g.on_request_body(&pending_on(&g, "docs", "a"), &call_with(1, "bulk_import", big)).is_ok());
    // The head check allows what the largest tool allows; the body check is per tool.
    let docs = pending_on(&g, "docs", "a");
    assert!(g.request_too_large(&docs, 1_500_000).is_none());
    assert!(g.request_too_large(&pending_on(&g, "crm", "a"), 1_500_000).is_some());
    let padded = call_with(1, "search", json!({"pad": "x".repeat(1_100_000)}));
    assert_eq!(g.on_request_body(&docs, &padded).unwrap_err().status, 413);
    let c = &g.config().limits;
    assert_eq!(c.sizes("docs", Some("bulk_import")).max_response_bytes, 50);
    assert_eq!(c.sizes("crm", Some("x")).max_response_bytes, 1000);
    assert_eq!(c.largest_request_bytes(), 2_000_000);
}

#[test]
fn oversized_responses_become_a_jsonrpc_error() {
    let g = limited_gateway();
    let ex = g.on_request_body(&pending_on(&g, "docs", "a"), &call(4, "search")).unwrap();
    assert_eq!(ex.response_limit, Some(50));
    let head = ResponseHead {
        status: 200,
        content_type: Some("application/json"),
        content_encoding: None,
        content_length: Some(51),
    };
    let ResponsePlan::Replace(body) = ex.response_plan(head) else { panic!("declared oversize must be replaced") };
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["id"].clone(), v["error"]["code"].clone()), (json!(4), json!(code::INTERNAL_ERROR)));
    let json_unknown = ResponseHead { content_length: None, ..head };
    assert_eq!(ex.response_plan(json_unknown), ResponsePlan::Buffer(BodyKind::Json));
    let policy = &g.config().policy;
    let mut counts = RedactionCounts::new();
    let long = json!({"jsonrpc":"2.0","id":4,"result":{"content":[{"type":"text","text":"y".repeat(60)}]}}).to_string();
    let out = ex.rewrite_message(long.as_bytes(), policy, &mut counts).unwrap();
    assert_eq!(out, ex.oversized_response(50));
    assert_eq!(ex.rewrite_message(b"{}", policy, &mut counts), None);
    let event = String::from_utf8(ex.oversized_sse_event(50)).unwrap();
    assert!(event.starts_with("event: message\ndata: {") && event.ends_with("}\n\n"), "{event}");
    // The GET stream has no request to answer: no size limit.
    let h = headers(&[("x-api-key", "a")]);
    let HeadDecision::Forward(get) = g.on_request_head(
        RequestHead { method: "GET", path: "/mcp/docs", headers: &h, end_of_stream: true },
        NOW,
        &mut g.new_token_cache(),
    ) else {
        panic!("GET is forwarded")
    };
    assert_eq!(get.response_limit, None);
    // A response on the GET stream (a resumed stream's replay) answers a request the gateway
    // cannot see: governed by what it is. Events are read; other GET bodies pass.
    assert!(get.server_stream);
    let head = |content_type, content_encoding| ResponseHead {
        status: 200,
        content_type,
        content_encoding,
        content_length: None,
    };
    let reader_get = |g: &Gateway| {
        let h = headers(&[("x-api-key", "r")]);
        match g.on_request_head(
            RequestHead { method: "GET", path: "/mcp/crm", headers: &h, end_of_stream: true },
            NOW,
            &mut g.new_token_cache(),
        ) {
            HeadDecision::Forward(ex) => ex,
            other => panic!("{other:?}"),
        }
    };
    let plain = gateway(None);
    let replay = reader_get(&plain);
    assert_eq!(replay.response_plan(head(Some("text/event-stream"), None)), ResponsePlan::Stream);
    assert!(matches!(replay.response_plan(head(Some("text/event-stream"), Some("gzip"))), ResponsePlan::Replace(_)));
    // The TypeScript client reads any successful GET body as SSE, whatever its type.
    assert_eq!(get.response_plan(head(Some("application/json"), None)), ResponsePlan::Stream);
    assert_eq!(get.response_plan(head(None, None)), ResponsePlan::Stream);
    assert!(matches!(
        get.response_plan(head(Some("text/event-stream; charset=utf-16"), None)),
        ResponsePlan::Replace(_)
    ));
    let refused = ResponseHead { status: 405, ..head(Some("application/json"), None) };
    assert_eq!(get.response_plan(refused), ResponsePlan::PassThrough);
    let policy = &plain.config().policy;
    // A replayed tools/list is filtered for the caller by its result's shape.
    let listed =
        json!({"jsonrpc":"2.0","id":"r-7","result":{"tools":[{"name":"get_customer"},{"name":"delete_customer"}]}});
    let out = sent(replay.rewrite_event(text(&listed.to_string()), policy, &mut counts)).expect("filtered");
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["id"], json!("r-7"));
    assert_eq!(out["result"]["tools"], json!([{"name":"get_customer"}]), "{out}");
    // A replayed result gets every rule of any crm tool: here get_secret's SSN block.
    let secret = json!({"jsonrpc":"2.0","id":8,"result":{"content":[{"type":"text","text":"ssn 123-45-6789"}]}});
    let out = sent(replay.rewrite_event(text(&secret.to_string()), policy, &mut counts)).expect("blocked");
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((out["id"].clone(), out["error"]["code"].clone()), (json!(8), json!(code::FORBIDDEN)), "{out}");
    // Server requests and notifications pass; what is not one message does not.
    for passing in [
        json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}),
        json!({"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}}),
    ] {
        assert_eq!(sent(replay.rewrite_event(text(&passing.to_string()), policy, &mut counts)), None, "{passing}");
    }
    let garbage = sent(replay.rewrite_event(EventData::Text("[1,2]"), policy, &mut counts)).expect("refused");
    assert!(String::from_utf8_lossy(&garbage).contains("not one JSON-RPC message"));
    // POST exchanges answer their own request as before.
    assert!(!ex.server_stream);
    assert_eq!(sent(ex.rewrite_event(EventData::Text("{}"), policy, &mut counts)), None);
}

#[test]
fn guardrail_config_errors_name_their_path() {
    let compile = |extra: Value| {
        let mut raw = json!({"servers": ["crm"], "policy": {"roles": {"r": {"allow": ["*"]}}}});
        raw.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let raw: RawFilterConfig = serde_json::from_value(raw).unwrap();
        FilterConfig::compile(&raw, &EnvSecrets).unwrap_err()
    };
    let e = compile(json!({"limits": {"max_in_flight_per_consumer": 0}}));
    assert_eq!(e.path(), Some("limits.max_in_flight_per_consumer"));
    let e = compile(json!({"server_limits": {"billing": {}}}));
    assert_eq!(e.path(), Some("server_limits.billing"));
    let e = compile(json!({"server_limits": {"crm": {"tools": {"t": {"max_argument_bytes": 0}}}}}));
    assert_eq!(e.path(), Some("server_limits.crm.tools.t.max_argument_bytes"));
    let e = compile(json!({"server_limits": {"crm": {"max_response_bytes": 0}}}));
    assert_eq!(e.path(), Some("server_limits.crm.max_response_bytes"));
}

/// Readers: `crm/get_*`, resources under `file:///srv/public/`, prompts `public_*`. Admins:
/// every tool and resource of crm but `file:///srv/private/*`. Card numbers in `crm/pay*`
/// arguments are masked.
fn governed_gateway() -> Gateway {
    let key = |k: &str, consumer: &str, role: &str| json!({"consumer": consumer, "sha256": hex::encode(Sha256::digest(k.as_bytes())), "roles": [role]});
    let raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm", "docs"],
        "auth": {"api_keys": [key("r", "reader-bot", "reader"), key("a", "admin-bot", "admin")]},
        "policy": {"roles": {
            "reader": {"allow": ["crm/get_*", "crm/pay*"], "resources": {"allow": ["crm/file:///srv/public/*"]},
                       "prompts": {"allow": ["crm/public_*"]}},
            "admin": {"allow": ["*"], "resources": {"allow": ["crm/*"], "deny": ["crm/FILE://localhost/srv/private/*"]},
                      "prompts": {"allow": ["crm/*"]}}
        }},
        "redaction": [{"match": {"tools": ["crm/pay*"]}, "detectors": ["credit_card"], "mode": "mask", "direction": "request"}]
    }))
    .unwrap();
    Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
}

fn request(id: i64, method: &str, params: Value) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string().into_bytes()
}

#[test]
fn request_charsets_other_than_utf8_are_refused_and_equivalents_canonicalised() {
    let g = gateway(None);
    let head = |ct: &[&str]| {
        let mut h = vec![("x-api-key", "r")];
        h.extend(ct.iter().map(|v| ("content-type", *v)));
        head_of(&g, "POST", "/mcp/crm", &h)
    };
    for ct in [
        &["application/json; charset=utf-7"][..],
        &["application/json; charset=\"UTF-16\""],
        &["application/json;charset=utf-8;charset=utf-7"],
        &["application/json", "application/json"],
        &["application/json; charset=\"utf-8"],
    ] {
        let r = rejected(head(ct));
        assert_eq!((r.status, r.code), (415, code::INVALID_REQUEST), "{ct:?}");
    }
    assert!(rejected(head(&["application/json; charset=utf-7"])).message.contains("charset \"utf-7\""));
    // The exact canonical value is forwarded as is; an equivalent is replaced by it.
    let HeadDecision::AwaitBody(plain) = head(&["application/json"]) else { panic!() };
    assert!(g.on_request_body(&plain, &call(1, "get_customer")).unwrap().request_header_rewrites.is_empty());
    let HeadDecision::AwaitBody(spelled) = head(&["Application/JSON; Charset=\"UTF-8\"; x=y"]) else { panic!() };
    assert_eq!(
        g.on_request_body(&spelled, &call(1, "get_customer")).unwrap().request_header_rewrites,
        vec![("content-type".to_string(), Some("application/json".to_string()))]
    );
    let r = rejected(head_of(
        &g,
        "POST",
        "/mcp/crm",
        &[
            ("x-api-key", "r"),
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
            ("content-encoding", "gzip"),
        ],
    ));
    assert_eq!(r.status, 415);
}

#[test]
fn get_and_delete_must_not_carry_a_body() {
    let g = gateway(None);
    let h = headers(&[("x-api-key", "r")]);
    for method in ["GET", "DELETE"] {
        let with_body = g.on_request_head(
            RequestHead { method, path: "/mcp/crm", headers: &h, end_of_stream: false },
            NOW,
            &mut g.new_token_cache(),
        );
        let r = rejected(with_body);
        assert_eq!((r.status, r.code), (400, code::INVALID_REQUEST), "{method}");
        assert!(
            r.message.starts_with(&format!("{method} requests to MCP endpoints must not carry a body")),
            "{}",
            r.message
        );
        let without = g.on_request_head(
            RequestHead { method, path: "/mcp/crm", headers: &h, end_of_stream: true },
            NOW,
            &mut g.new_token_cache(),
        );
        assert!(matches!(without, HeadDecision::Forward(_)), "{method}");
    }
}

#[test]
fn every_method_that_names_a_target_is_governed() {
    let g = governed_gateway();
    let reader = pending(&g, "r", &[]);
    let allowed = [
        request(
            1,
            "completion/complete",
            json!({"ref":{"type":"ref/prompt","name":"public_summary"},"argument":{"name":"a","value":""}}),
        ),
        request(
            1,
            "completion/complete",
            json!({"ref":{"type":"ref/resource","uri":"file:///srv/public/{name}"},"argument":{"name":"name","value":""}}),
        ),
        request(1, "resources/subscribe", json!({"uri":"file:///srv/public/a.txt"})),
        request(1, "resources/unsubscribe", json!({"uri":"file:///srv/public/a.txt"})),
        request(
            1,
            "subscriptions/listen",
            json!({"notifications":{"toolsListChanged":true,"resourceSubscriptions":["file:///srv/public/a"]}}),
        ),
        request(1, "subscriptions/listen", json!({"notifications":{"toolsListChanged":true}})),
    ];
    for body in allowed {
        assert!(g.on_request_body(&reader, &body).is_ok(), "{}", String::from_utf8_lossy(&body));
    }
    let denied = [
        (
            request(
                2,
                "completion/complete",
                json!({"ref":{"type":"ref/prompt","name":"secret_plan"},"argument":{"name":"a","value":""}}),
            ),
            "prompt \"crm/secret_plan\"",
        ),
        (
            request(
                2,
                "completion/complete",
                json!({"ref":{"type":"ref/resource","uri":"file:///srv/private/{name}"},"argument":{"name":"name","value":""}}),
            ),
            "resource \"crm/file:///srv/private/{name}\"",
        ),
        (
            request(2, "resources/subscribe", json!({"uri":"file:///srv/private/x"})),
            "resource \"crm/file:///srv/private/x\"",
        ),
        (
            request(2, "resources/unsubscribe", json!({"uri":"file:///srv/private/x"})),
            "resource \"crm/file:///srv/private/x\"",
        ),
        (
            request(
                2,
                "subscriptions/listen",
                json!({"notifications":{"resourceSubscriptions":["file:///srv/public/a","file:///srv/private/b"]}}),
            ),
            "resource \"crm/file:///srv/private/b\"",
        ),
    ];
    for (body, named) in denied {
        let r = g.on_request_body(&reader, &body).unwrap_err();
        assert_eq!(
            (r.status, r.code, r.id.clone()),
            (crate::reject::DENIED_STATUS, code::FORBIDDEN, Some(json!(2))),
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(r.message.starts_with(named), "{}", r.message);
    }
    let malformed = [
        request(
            3,
            "completion/complete",
            json!({"ref":{"type":"ref/tool","name":"get_x"},"argument":{"name":"a","value":""}}),
        ),
        request(3, "completion/complete", json!({"ref":{"type":"ref/prompt"},"argument":{"name":"a","value":""}})),
        request(3, "completion/complete", json!({"argument":{"name":"a","value":""}})),
        request(3, "resources/subscribe", json!({})),
        request(3, "subscriptions/listen", json!({"notifications":{"resourceSubscriptions":"file:///srv/private/x"}})),
        request(3, "subscriptions/listen", json!({"notifications":{"resourceSubscriptions":[7]}})),
    ];
    for body in malformed {
        let r = g.on_request_body(&reader, &body).unwrap_err();
        assert_eq!((r.status, r.code), (400, code::INVALID_PARAMS), "{}", String::from_utf8_lossy(&body));
    }
    // Without an id, a method that names a target could be neither authorized nor answered.
    let note = json!({"jsonrpc":"2.0","method":"resources/subscribe","params":{"uri":"file:///srv/private/x"}});
    assert_eq!(g.on_request_body(&reader, note.to_string().as_bytes()).unwrap_err().code, code::INVALID_REQUEST);
}

#[test]
fn tasks_are_refused_because_their_results_cannot_be_bound_to_a_caller() {
    let g = governed_gateway();
    let admin = pending(&g, "a", &[]);
    for body in [
        request(4, "tasks/get", json!({"taskId":"t-1"})),
        request(4, "tasks/result", json!({"taskId":"t-1"})),
        request(4, "tasks/list", json!({})),
        request(4, "tasks/cancel", json!({"taskId":"t-1"})),
        request(4, "tasks/update", json!({"taskId":"t-1","inputResponses":{}})),
        request(4, "tools/call", json!({"name":"get_customer","arguments":{},"task":{"ttl":60000}})),
        request(4, "subscriptions/listen", json!({"notifications":{"taskIds":["t-1"]}})),
    ] {
        let r = g.on_request_body(&admin, &body).unwrap_err();
        assert_eq!(
            (r.status, r.code, r.id.clone()),
            (400, code::METHOD_NOT_FOUND, Some(json!(4))),
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(r.message.contains("not supported through the gateway"), "{}", r.message);
    }
}

#[test]
fn resource_uris_are_matched_canonically_and_ambiguous_ones_refused() {
    let g = governed_gateway();
    let reader = pending(&g, "r", &[]);
    let admin = pending(&g, "a", &[]);
    let read = |uri: &str| request(5, "resources/read", json!({"uri": uri}));
    assert!(g.on_request_body(&reader, &read("file:///srv/public/a.txt")).is_ok());
    assert!(g.on_request_body(&reader, &read("FILE://localhost/srv/%70ublic/a.txt")).is_ok());
    for uri in [
        "file:///srv/public/../private/x",
        "file:///srv/public/%2e%2e/private/x",
        "file:///srv/public/..%2fprivate/x",
        "file:///srv/public/..%5Cprivate/x",
        "file:///srv/public//../private/x",
        "file:///srv/public/./a.txt",
        "file:///srv/public/..\\private\\x",
    ] {
        for who in [&reader, &admin] {
            let r = g.on_request_body(who, &read(uri)).unwrap_err();
            assert_eq!((r.status, r.code, r.id.clone()), (400, code::INVALID_PARAMS, Some(json!(5))), "{uri}");
            assert!(r.message.starts_with("resource URI \""), "{}", r.message);
        }
    }
    // The admin's deny rule (written with another spelling) holds against every spelling.
    for uri in [
        "file:///srv/private/x",
        "FILE:///srv/private/x",
        "file://localhost/srv/private/x",
        "file:/srv/private/x",
        "file:///srv/%70rivate/x",
    ] {
        let r = g.on_request_body(&admin, &read(uri)).unwrap_err();
        assert_eq!((r.status, r.code), (crate::reject::DENIED_STATUS, code::FORBIDDEN), "{uri}");
    }
    assert!(g.on_request_body(&admin, &read("file:///srv/other/x")).is_ok());
    // List filtering matches the same way: an item spelled around a rule is not shown.
    let list = g.on_request_body(&reader, &request(6, "resources/list", json!({}))).unwrap();
    let answer = json!({"jsonrpc":"2.0","id":6,"result":{"resources":[
        {"uri":"file:///srv/public/a"},{"uri":"file:///srv/public/../private/b"},{"uri":"FILE:///srv/%70ublic/c"}
    ]}});
    let mut counts = RedactionCounts::new();
    let out = list.rewrite_message(answer.to_string().as_bytes(), &g.config().policy, &mut counts).unwrap();
    let kept: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(kept["result"]["resources"], json!([{"uri":"file:///srv/public/a"},{"uri":"FILE:///srv/%70ublic/c"}]));
}

#[test]
fn routing_headers_that_name_what_the_body_does_not_are_mismatches() {
    let g = governed_gateway();
    let p = |extra: &[(&str, &str)]| pending(&g, "a", extra);
    let response = br#"{"jsonrpc":"2.0","id":3,"result":{}}"#;
    for extra in [&[("mcp-method", "tools/call")][..], &[("mcp-name", "get_customer")], &[("mcp-param-card", "1")]] {
        let r = g.on_request_body(&p(extra), response).unwrap_err();
        assert_eq!((r.status, r.code, r.id.clone()), (400, code::HEADER_MISMATCH, Some(json!(3))), "{extra:?}");
    }
    assert!(g.on_request_body(&p(&[]), response).is_ok());
    let list = request(4, "tools/list", json!({}));
    for extra in [&[("mcp-name", "delete_customer")][..], &[("mcp-method", "tools/list"), ("mcp-param-x", "1")]] {
        assert_eq!(g.on_request_body(&p(extra), &list).unwrap_err().code, code::HEADER_MISMATCH, "{extra:?}");
    }
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    assert_eq!(g.on_request_body(&p(&[("mcp-name", "x")]), note.as_bytes()).unwrap_err().code, code::HEADER_MISMATCH);
    assert!(g.on_request_body(&p(&[("mcp-method", "tools/list")]), &list).is_ok());
}

#[test]
fn param_headers_mirror_the_arguments_and_follow_their_redaction() {
    let g = governed_gateway();
    let pay = |arguments: Value| request(7, "tools/call", json!({"name":"pay_invoice","arguments":arguments}));
    let card = "4111 1111 1111 1111";
    let p = pending(&g, "r", &[("mcp-param-card", card), ("mcp-param-amount", "25")]);
    let ex = g.on_request_body(&p, &pay(json!({"card": card, "amount": 25, "memo": "x"}))).unwrap();
    let body: Value = serde_json::from_slice(ex.rewritten_request.as_deref().unwrap()).unwrap();
    assert_eq!(body["params"]["arguments"]["card"], json!("[CREDIT_CARD]"));
    assert_eq!(ex.request_header_rewrites, vec![("mcp-param-card".to_string(), Some("[CREDIT_CARD]".to_string()))]);
    // Nothing redacted: nothing rewritten.
    let p = pending(&g, "r", &[("mcp-param-memo", "hello")]);
    assert!(g.on_request_body(&p, &pay(json!({"memo": "hello"}))).unwrap().request_header_rewrites.is_empty());
    // A header that says what no argument says, or is malformed or repeated, is refused.
    for extra in [&[("mcp-param-card", card)][..], &[("mcp-param-card", "=?base64?%%?=")]] {
        let r = g.on_request_body(&pending(&g, "r", extra), &pay(json!({"card": "4242"}))).unwrap_err();
        assert_eq!((r.status, r.code, r.id.clone()), (400, code::HEADER_MISMATCH, Some(json!(7))), "{extra:?}");
    }
    for extra in [&[("mcp-param-a", "1"), ("Mcp-Param-A", "1")][..], &[("mcp-param-card", "caf\u{e9}")]] {
        let mut h = vec![("x-api-key", "r"), ("content-type", "application/json")];
        h.extend_from_slice(extra);
        let r = rejected(head_of(&g, "POST", "/mcp/crm", &h));
        assert_eq!((r.status, r.code), (400, code::HEADER_MISMATCH), "{extra:?}");
    }
}

/// A gateway as the control plane configures one on a loopback listener, with a CORS
/// policy (extra origins) on `docs`.
fn loopback_gateway() -> Gateway {
    let mut raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm", "docs"],
        "auth": {"anonymous": {"consumer": "anon", "roles": []}},
        "origin_policy": {
            "allowed_hosts": crate::origin::LOOPBACK_HOSTS,
            "allowed_origins": crate::origin::LOOPBACK_ORIGINS,
            "server_origins": {"docs": ["https://docs-ui.example.com"]},
        },
    }))
    .unwrap();
    raw.route_prefix = "/mcp/".into();
    Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
}

#[test]
fn dns_rebinding_and_cross_site_requests_are_refused_first() {
    let g = loopback_gateway();
    let head = |method: &str, path: &str, h: &[(&str, &str)]| head_of(&g, method, path, h);
    // The conformance suite's DNS-rebinding request: foreign Host and Origin, no credentials.
    let rebinding = [
        (":authority", "evil.example.com"),
        ("origin", "http://evil.example.com"),
        ("content-type", "application/json"),
    ];
    let r = rejected(head("POST", "/mcp/crm", &rebinding));
    assert_eq!((r.status, r.code, r.id.clone(), r.refusal), (403, code::FORBIDDEN, None, Refusal::ForeignOrigin));
    // The same with an unknown path: still 403 (MCP's answer to an invalid Origin comes first).
    assert_eq!(rejected(head("POST", "/mcp/nope", &rebinding)).status, 403);
    // A foreign Host alone (a same-origin page sends no Origin on GET; a host alias): 421,
    // before routing, so an unknown path answers nothing else either.
    let r = rejected(head("POST", "/mcp/nope", &[(":authority", "evil.example.com:80")]));
    assert_eq!((r.status, r.refusal), (421, Refusal::ForeignOrigin));
    assert_eq!(
        rejected(head(
            "GET",
            "/mcp/crm",
            &[(":authority", "alias.example.com:10000"), ("origin", "http://localhost:1")]
        ))
        .status,
        421
    );
    assert_eq!(rejected(head("POST", "/mcp/nope", &[(":authority", "127.0.0.1:10000")])).status, 404);
    // A loopback Host with a foreign Origin (a cross-site page): refused.
    let cross = [
        (":authority", "127.0.0.1:10000"),
        ("origin", "https://evil.example.com"),
        ("content-type", "application/json"),
    ];
    assert_eq!(rejected(head("POST", "/mcp/crm", &cross)).refusal, Refusal::ForeignOrigin);
    // The same request from a loopback page, or without Origin (SDKs): allowed.
    let local =
        [(":authority", "localhost:10000"), ("origin", "http://localhost:6274"), ("content-type", "application/json")];
    assert!(matches!(head("POST", "/mcp/crm", &local), HeadDecision::AwaitBody(_)));
    assert!(matches!(
        head("POST", "/mcp/crm", &local[..1].iter().chain(&local[2..]).copied().collect::<Vec<_>>()),
        HeadDecision::AwaitBody(_)
    ));
    // A server's CORS origins pass on that server only.
    let ui = [
        (":authority", "127.0.0.1:10000"),
        ("origin", "https://docs-ui.example.com"),
        ("content-type", "application/json"),
    ];
    assert!(matches!(head("POST", "/mcp/docs", &ui), HeadDecision::AwaitBody(_)));
    assert_eq!(rejected(head("POST", "/mcp/crm", &ui)).status, 403);
    // A preflight without a CORS policy reaches the filter: refused (405 for an allowed origin).
    let preflight =
        [(":authority", "127.0.0.1:1"), ("origin", "http://localhost:3000"), ("access-control-request-method", "POST")];
    assert_eq!(rejected(head("OPTIONS", "/mcp/crm", &preflight)).status, 405);
    // Discovery documents are public (and answered by Envoy itself).
    assert!(matches!(head("GET", "/.well-known/oauth-protected-resource", &rebinding), HeadDecision::PassThrough));
    // Without a host list (the serde default) any Host passes, and any Origin is refused.
    let open = gateway(None);
    let h = [(":authority", "gw.example.com"), ("x-api-key", "r"), ("content-type", "application/json")];
    assert!(matches!(head_of(&open, "POST", "/mcp/crm", &h), HeadDecision::AwaitBody(_)));
    let with_origin = [h[0], h[1], h[2], ("origin", "http://localhost:3000")];
    assert_eq!(rejected(head_of(&open, "POST", "/mcp/crm", &with_origin)).refusal, Refusal::ForeignOrigin);
}

#[test]
fn upstream_failures_become_json_rpc_errors_naming_the_server() {
    let g = gateway(None);
    let call_ex = g.on_request_body(&pending(&g, "a", &[]), &call(42, "get_customer")).unwrap();
    let head = |status, ct| ResponseHead { status, content_type: ct, content_encoding: None, content_length: None };
    let cases = [
        (503, Some("text/plain"), "is unavailable (HTTP 503)"),
        (502, Some("text/html; charset=utf-8"), "is unavailable (HTTP 502)"),
        (504, Some("text/plain"), "did not answer in time (HTTP 504)"),
        (500, None, "failed (HTTP 500)"),
    ];
    for (status, ct, words) in cases {
        let ResponsePlan::Fail(r) = call_ex.response_plan(head(status, ct)) else { panic!("{status} {ct:?}") };
        // Answered with the request's id at HTTP 200: every client shows it as the call's error.
        assert_eq!(
            (r.status, r.code, r.id.clone(), r.refusal),
            (200, code::UPSTREAM_UNAVAILABLE, Some(json!(42)), Refusal::Unavailable)
        );
        assert_eq!(r.message, format!("the MCP server \"crm\" {words}; retry later"));
        let body: Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(body["error"]["code"], json!(code::UPSTREAM_UNAVAILABLE));
    }
    // The upstream's own readable answers pass to the usual plan: JSON or SSE at 5xx, and any
    // 4xx (404 ends a session, 405 refuses the GET stream, 421 a foreign Host).
    for (status, ct) in
        [(500, Some("application/json")), (503, Some("text/event-stream")), (404, Some("text/plain")), (421, None)]
    {
        assert!(!matches!(call_ex.response_plan(head(status, ct)), ResponsePlan::Fail(_)), "{status} {ct:?}");
    }
    // Without a request to answer (a notification), the status stays: no id to correlate.
    let note = g
        .on_request_body(&pending(&g, "a", &[]), br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .unwrap();
    let ResponsePlan::Fail(r) = note.response_plan(head(503, Some("text/plain"))) else { panic!("replaced") };
    assert_eq!((r.status, r.id.clone()), (503, None));
    let h = headers(&[("x-api-key", "a")]);
    let HeadDecision::Forward(get) = g.on_request_head(
        RequestHead { method: "GET", path: "/mcp/crm", headers: &h, end_of_stream: true },
        NOW,
        &mut g.new_token_cache(),
    ) else {
        panic!("GET is forwarded")
    };
    let ResponsePlan::Fail(r) =
        get.response_plan_from(504, &mut |h| (h == "content-type").then(|| "text/plain".to_string()))
    else {
        panic!("replaced")
    };
    assert_eq!((r.status, r.id.clone()), (504, None));
}

// ---- hostile upstream answers (issue #13 items 3 and 6) ----

fn error_of(out: &[u8]) -> (Value, Value, String) {
    let v: Value = serde_json::from_slice(out).unwrap();
    (v["id"].clone(), v["error"]["code"].clone(), v["error"]["message"].as_str().unwrap_or_default().to_string())
}

/// A list request on crm by a reader, and a tool call on crm by an admin (redacted: crm/*).
fn list_and_call(g: &Gateway) -> (Exchange, Exchange) {
    let list = g.on_request_body(&pending(g, "r", &[]), br#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#).unwrap();
    let call = g.on_request_body(&pending(g, "a", &[]), &call(5, "get_customer")).unwrap();
    (list, call)
}

#[test]
fn a_response_with_another_id_is_refused_on_governed_streams() {
    let g = gateway(None);
    let policy = &g.config().policy;
    let mut counts = RedactionCounts::new();
    let (list, call) = list_and_call(&g);
    for id in ["6", "\"5\"", "5.0", "null"] {
        let denied = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{{"name":"delete_customer"}}]}}}}"#);
        for ex in [&list, &call] {
            let out = ex.rewrite_message(denied.as_bytes(), policy, &mut counts).expect("refused");
            let (rid, c, message) = error_of(&out);
            assert_eq!((rid, c), (json!(5), json!(code::INTERNAL_ERROR)), "{denied}: {message}");
            let out = sent(ex.rewrite_event(EventData::Text(&denied), policy, &mut counts)).expect("refused");
            assert_eq!(error_of(&out).0, json!(5));
        }
    }
    // A batch, or a response that is also a request, is not one answer either.
    for odd in [
        r#"[{"jsonrpc":"2.0","id":5,"result":{"content":[]}}]"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"x","result":{"content":[]}}"#,
        r#"{"jsonrpc":"2.0","id":5,"id":5,"result":{"content":[]}}"#,
    ] {
        assert!(call.rewrite_message(odd.as_bytes(), policy, &mut counts).is_some(), "{odd}");
    }
    // On a POST stream a refusal answers the request and ends the stream; on the GET
    // stream (no request to answer) it replaces the event and the stream goes on.
    let denied = r#"{"jsonrpc":"2.0","id":6,"result":{"tools":[]}}"#;
    assert!(matches!(call.rewrite_event(EventData::Text(denied), policy, &mut counts), Rewritten::Last(_)));
    let HeadDecision::Forward(get) = head_of(&g, "GET", "/mcp/crm", &[("x-api-key", "r")]) else { panic!() };
    assert!(matches!(get.rewrite_event(EventData::Text("[1]"), policy, &mut counts), Rewritten::Data(_)));
    assert!(matches!(get.rewrite_event(EventData::NotUtf8, policy, &mut counts), Rewritten::Data(_)));
    // The request's own id, and what the server sends unprompted, pass.
    let own = r#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"ok"}]}}"#;
    assert_eq!(call.rewrite_message(own.as_bytes(), policy, &mut counts), None);
    let note = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
    assert_eq!(sent(call.rewrite_event(EventData::Text(note), policy, &mut counts)), None);
}

#[test]
fn governed_bodies_are_read_as_clients_read_them() {
    let g = gateway(None);
    let policy = &g.config().policy;
    let mut counts = RedactionCounts::new();
    let (list, call) = list_and_call(&g);
    // A BOM (the TypeScript client strips one) is removed, and what follows governed.
    let listed = br#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"get_customer"},{"name":"delete_customer"}]}}"#;
    let out = list.rewrite_message(&[BOM, &listed[..]].concat(), policy, &mut counts).expect("filtered");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["result"]["tools"], json!([{"name":"get_customer"}]));
    let clean = br#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"ok"}]}}"#;
    assert_eq!(call.rewrite_message(&[BOM, &clean[..]].concat(), policy, &mut counts), Some(clean.to_vec()));
    // Two BOMs, NaN, or bytes that are not UTF-8: refused, whoever reads them how.
    for body in [
        [BOM, BOM, &clean[..]].concat(),
        br#"{"jsonrpc":"2.0","id":5,"result":{"n":NaN,"content":[{"type":"text","text":"a\u0040example.com"}]}}"#
            .to_vec(),
        b"{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"\xff\"}]}}".to_vec(),
    ] {
        for ex in [&list, &call] {
            let out = ex.rewrite_message(&body, policy, &mut counts).expect("refused");
            assert_eq!(error_of(&out).0, json!(5), "{}", String::from_utf8_lossy(&body));
        }
    }
    // An SSE event that is not UTF-8 is refused on a governed stream.
    let out = sent(call.rewrite_event(EventData::NotUtf8, policy, &mut counts)).expect("refused");
    assert!(error_of(&out).2.contains("UTF-8"));
    // Other text (an error page) is redacted as text.
    let page = call.rewrite_body(BodyKind::Text, b"<p>ada@example.com</p>", policy, &mut counts).unwrap();
    assert_eq!(page, b"<p>[EMAIL]</p>".to_vec());
}

#[test]
fn response_plans_refuse_what_clients_read_otherwise() {
    let g = gateway(None);
    let (list, call) = list_and_call(&g);
    let head = |content_type| ResponseHead { status: 200, content_type, content_encoding: None, content_length: None };
    for ex in [&list, &call] {
        for ct in [
            "text/event-stream; charset=utf-16",
            "application/json; charset=utf-7",
            "application/json-seq",
            "text/event-stream, application/json",
        ] {
            let ResponsePlan::Replace(body) = ex.response_plan(head(Some(ct))) else { panic!("{ct}") };
            let (id, c, message) = error_of(&body);
            assert_eq!((id, c), (json!(5), json!(code::INTERNAL_ERROR)), "{ct}");
            assert!(message.contains("crm") && message.contains("content type"), "{message}");
        }
        assert_eq!(ex.response_plan(head(Some("Text/Event-Stream; charset=\"UTF-8\""))), ResponsePlan::Stream);
        let encoded = ResponseHead { content_encoding: Some("identity, gzip"), ..head(Some("application/json")) };
        assert!(matches!(ex.response_plan(encoded), ResponsePlan::Replace(_)));
    }
    // Repeated headers are read joined, as clients read them.
    let h = headers(&[("content-type", "text/event-stream"), ("Content-Type", "application/json")]);
    assert_eq!(header_values(&h, "content-type").as_deref(), Some("text/event-stream, application/json"));
    assert_eq!(header_values(&h, "x"), None);
}

/// Issue #13 item 3: a replayed result on the GET stream with several list arrays had only
/// the first filtered; a client reads the one its request asked for.
#[test]
fn every_list_array_of_a_replayed_result_is_filtered() {
    let g = gateway(None);
    let policy = &g.config().policy;
    let HeadDecision::Forward(get) = head_of(&g, "GET", "/mcp/crm", &[("x-api-key", "r")]) else { panic!() };
    let replay = json!({"jsonrpc":"2.0","id":3,"result":{
        "tools":[{"name":"get_customer"},{"name":"delete_customer"}],
        "prompts":[{"name":"summarize"}],
        "resources":[{"uri":"crm://x","name":"x"}]}});
    let out =
        sent(get.rewrite_event(text(&replay.to_string()), policy, &mut RedactionCounts::new())).expect("filtered");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["result"]["tools"], json!([{"name":"get_customer"}]));
    assert_eq!((v["result"]["prompts"].clone(), v["result"]["resources"].clone()), (json!([]), json!([])));
    // Not UTF-8 on the GET stream: refused too.
    assert!(sent(get.rewrite_event(EventData::NotUtf8, policy, &mut RedactionCounts::new())).is_some());
}

#[test]
fn client_certificate_header_identifies_only_with_auth_mtls_and_only_once() {
    let mut policy = RawPolicy::default();
    policy.roles.insert("reader".into(), RawRole { allow: vec!["crm/get_*".into()], ..Default::default() });
    let peer = |mtls: Vec<crate::identity::RawPeerIdentity>| {
        let raw = RawFilterConfig {
            route_prefix: "/mcp/".into(),
            servers: vec!["crm".into()],
            auth: RawAuth { mtls, ..Default::default() },
            policy: policy.clone(),
            ..Default::default()
        };
        Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
    };
    let planner = crate::identity::RawPeerIdentity {
        spiffe_id: Some("spiffe://mesh.example/planner".into()),
        dns_san: None,
        consumer: "planner".into(),
        roles: vec!["reader".into()],
    };
    let xfcc = ("x-forwarded-client-cert", "Hash=00;URI=spiffe://mesh.example/planner");
    let ct = ("content-type", "application/json");
    let with_mtls = peer(vec![planner]);
    match head_of(&with_mtls, "POST", "/mcp/crm", &[xfcc, ct]) {
        HeadDecision::AwaitBody(p) => assert_eq!(p.consumer.name, "planner"),
        other => panic!("{other:?}"),
    }
    // Envoy sets one header; two are refused, never guessed between.
    let second = ("x-forwarded-client-cert", "Hash=01;URI=spiffe://mesh.example/other");
    assert_eq!(rejected(head_of(&with_mtls, "POST", "/mcp/crm", &[xfcc, second, ct])).status, 401);
    assert_eq!(rejected(head_of(&with_mtls, "POST", "/mcp/crm", &[ct])).status, 401);
    // Without auth.mtls the header means nothing.
    assert_eq!(rejected(head_of(&peer(vec![]), "POST", "/mcp/crm", &[xfcc, ct])).status, 401);
}

#[test]
fn the_tasks_capability_is_withheld_from_initialize_and_discover_answers() {
    let g = gateway(None);
    let reader = pending(&g, "r", &[]);
    let policy = &g.config.policy;
    let init = g.on_request_body(&reader, br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#).unwrap();
    let json_head = ResponseHead { status: 200, content_type: Some("application/json"), ..Default::default() };
    assert_eq!(init.response_plan(json_head), ResponsePlan::Buffer(BodyKind::Json));
    let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{},"tasks":{"list":{}}},"serverInfo":{"name":"crm","version":"1"}}}"#;
    let out = init.rewrite_message(answer, policy, &mut Default::default()).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"crm","version":"1"}}}"#
    );
    // Nothing to withhold: unchanged; an error answer is not rewritten.
    let plain = br#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{}}}}"#;
    assert_eq!(init.rewrite_message(plain, policy, &mut Default::default()), None);
    let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"capabilities.tasks"}}"#;
    assert_eq!(init.rewrite_message(error, policy, &mut Default::default()), None);
    // In an SSE answer too, event by event.
    let sse_head = ResponseHead { status: 200, content_type: Some("text/event-stream"), ..Default::default() };
    assert_eq!(init.response_plan(sse_head), ResponsePlan::Stream);
    let event = r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tasks":{},"tools":{}}}}"#;
    match init.rewrite_event(EventData::Text(event), policy, &mut Default::default()) {
        Rewritten::Data(bytes) => {
            assert_eq!(bytes, br#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{}}}}"#.to_vec())
        }
        other => panic!("{other:?}"),
    }
    // Other requests' answers are not touched (a tool result may say "tasks").
    let call = g.on_request_body(&reader, &call(2, "get_customer")).unwrap();
    assert!(!call.withholds_capabilities);
}
