use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::*;
use crate::config::{FilterConfig, RawFilterConfig, SecretSource};
use crate::gateway::{Exchange, HeadDecision, RequestHead, ResponseHead, ResponsePlan};

struct Key;
impl SecretSource for Key {
    fn secret(&self, name: &str) -> Option<String> {
        (name == "VS_KEY").then(|| "0123456789abcdef0123456789abcdef-test".to_string())
    }
}

const NOW: u64 = 1_800_000_000;

fn gateway() -> Gateway {
    let key = |k: &str, role: &str| json!({"consumer": format!("{role}-bot"), "sha256": hex::encode(Sha256::digest(k.as_bytes())), "roles": [role]});
    let upstream = |c: &str| json!({"cluster": c, "path": "/mcp", "authority": "127.0.0.1:1"});
    let raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm", "docs"],
        "auth": {"api_keys": [key("r", "reader"), key("a", "admin")]},
        "policy": {"roles": {
            "reader": {"allow": ["crm/get_*", "docs/*"]},
            "admin": {"allow": ["*"]}
        }},
        "virtual_servers": [{"name": "work", "servers": ["crm"], "tools": ["docs/search_*"]}],
        "upstreams": {"crm": upstream("crm_cluster"), "docs": upstream("docs_cluster")},
        "virtual_session_key_env": "VS_KEY"
    }))
    .unwrap();
    Gateway::new(FilterConfig::compile(&raw, &Key).unwrap())
}

fn legacy(method: &str, params: Value, id: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string().into_bytes()
}

fn decide(g: &Gateway, key: &str, session: Option<&str>, body: &[u8]) -> Result<BodyDecision, Rejection> {
    let mut h = vec![("x-api-key", key), ("content-type", "application/json")];
    if let Some(s) = session {
        h.push(("mcp-session-id", s));
    }
    match g.on_request_head(
        RequestHead { method: "POST", path: "/mcp/work", headers: &h, end_of_stream: false },
        NOW,
        &mut g.new_token_cache(),
    ) {
        HeadDecision::AwaitBody(p) => g.decide_request_body(&p, body),
        HeadDecision::Reject(r) => Err(r),
        other => panic!("{other:?}"),
    }
}

fn sse(message: Value) -> CalloutResponse {
    CalloutResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: format!("event: message\ndata: {message}\n\n").into_bytes(),
    }
}

fn init_answer(version: &str, session: Option<&str>, json_body: bool) -> CalloutResponse {
    let message = json!({"jsonrpc": "2.0", "id": "i", "result": {
        "protocolVersion": version, "capabilities": {"tools": {"listChanged": true}, "prompts": {}},
        "serverInfo": {"name": "x", "version": "1"}, "instructions": "backend text"}});
    let mut r = if json_body {
        CalloutResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: message.to_string().into_bytes(),
        }
    } else {
        sse(message)
    };
    if let Some(s) = session {
        r.headers.push(("mcp-session-id".into(), s.into()));
    }
    r
}

/// A session for the admin: crm stateful (`crm-session`), docs stateless.
fn open(g: &Gateway, key: &str, versions: [&str; 2], requested: &str) -> (String, Value) {
    let body = legacy(
        "initialize",
        json!({"protocolVersion": requested, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}),
        json!("i"),
    );
    let BodyDecision::Session(op) = decide(g, key, None, &body).unwrap() else { panic!() };
    let servers: Vec<&str> = op.callouts.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(servers, ["crm", "docs"]);
    for (_, request) in &op.callouts {
        assert!(!request.headers.iter().any(|(k, _)| k == "mcp-session-id"));
        assert_eq!(request.body, body);
    }
    let answers = [Ok(init_answer(versions[0], Some("crm-session"), false)), Ok(init_answer(versions[1], None, true))];
    let answer =
        op.answer(&answers, g.config().virtual_session_keys.as_ref(), &g.config().policy, &mut RedactionCounts::new());
    assert_eq!(answer.status, 200);
    let session = answer.headers.iter().find(|(k, _)| *k == "mcp-session-id").unwrap().1.clone();
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    (session, body)
}

fn rewrite<'e>(e: &'e Exchange, name: &str) -> Option<Option<&'e str>> {
    e.request_header_rewrites.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_deref())
}

#[test]
fn initialize_merges_and_seals_every_backend_session() {
    let g = gateway();
    let (session, body) = open(&g, "a", ["2025-11-25", "2025-11-25"], "2025-11-25");
    assert!(session.starts_with("mgs1.") && !session.contains("crm-session"));
    let result = &body["result"];
    assert_eq!(body["id"], "i");
    assert_eq!(result["protocolVersion"], "2025-11-25");
    assert_eq!(result["capabilities"], json!({"tools": {}, "prompts": {}}));
    assert_eq!(result["serverInfo"]["name"], "work");
    assert!(!body.to_string().contains("backend text"));
    let sealed = g.config().virtual_session_keys.as_ref().unwrap().unseal(&session).unwrap();
    assert_eq!(sealed.consumer, "admin-bot");
    assert_eq!(sealed.backend("crm").unwrap().session_id.as_deref(), Some("crm-session"));
    assert_eq!(sealed.backend("docs").unwrap().session_id, None);
}

#[test]
fn the_version_is_the_requested_one_only_when_every_backend_agrees() {
    let g = gateway();
    let (_, body) = open(&g, "a", ["2025-11-25", "2025-06-18"], "2025-11-25");
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
    let (session, body) = open(&g, "a", ["2025-06-18", "2025-06-18"], "2025-06-18");
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
    // Each backend keeps its own version on forwarded requests.
    let (session2, _) = open(&g, "a", ["2025-11-25", "2025-06-18"], "2025-11-25");
    let call = legacy("tools/call", json!({"name": "crm__get_customer", "arguments": {}}), json!(3));
    let BodyDecision::Forward(e) = decide(&g, "a", Some(&session2), &call).unwrap() else { panic!() };
    assert_eq!(rewrite(&e, "mcp-protocol-version"), Some(Some("2025-11-25")));
    assert!(!session.is_empty());
}

#[test]
fn calls_carry_the_backends_own_session() {
    let g = gateway();
    let (session, _) = open(&g, "a", ["2025-11-25", "2025-11-25"], "2025-11-25");
    let call = legacy("tools/call", json!({"name": "crm__get_customer", "arguments": {"id": "1"}}), json!(3));
    let BodyDecision::Forward(e) = decide(&g, "a", Some(&session), &call).unwrap() else { panic!() };
    assert_eq!((e.server.as_str(), e.session_backend.as_deref()), ("crm", Some("crm")));
    assert_eq!(rewrite(&e, "mcp-session-id"), Some(Some("crm-session")));
    assert_eq!(rewrite(&e, TARGET_HEADER), Some(Some("crm")));
    let forwarded: Value = serde_json::from_slice(e.rewritten_request.as_deref().unwrap()).unwrap();
    assert_eq!(forwarded["params"]["name"], "get_customer");
    // A stateless backend: the client's id is removed, none is set.
    let call = legacy("tools/call", json!({"name": "docs__search_docs", "arguments": {}}), json!(4));
    let BodyDecision::Forward(e) = decide(&g, "a", Some(&session), &call).unwrap() else { panic!() };
    assert_eq!(rewrite(&e, "mcp-session-id"), Some(None));
    // RBAC still applies to the backing server's tool.
    let call = legacy("tools/call", json!({"name": "crm__delete_customer", "arguments": {}}), json!(5));
    let (reader_session, _) = open(&g, "r", ["2025-11-25", "2025-11-25"], "2025-11-25");
    let r = decide(&g, "r", Some(&reader_session), &call).unwrap_err();
    assert_eq!((r.code, r.id), (code::FORBIDDEN, Some(json!(5))));
}

#[test]
fn a_session_is_refused_to_anyone_else_and_when_altered_or_missing() {
    let g = gateway();
    let (session, _) = open(&g, "a", ["2025-11-25", "2025-11-25"], "2025-11-25");
    let list = legacy("tools/list", json!({}), json!("l"));
    let r = decide(&g, "r", Some(&session), &list).unwrap_err();
    assert_eq!((r.status, r.code, r.id.clone()), (403, code::FORBIDDEN, Some(json!("l"))));
    let mut altered = session.clone().into_bytes();
    let last = altered.len() - 2;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let r = decide(&g, "a", Some(std::str::from_utf8(&altered).unwrap()), &list).unwrap_err();
    assert_eq!((r.status, r.id.clone()), (404, Some(json!("l"))));
    let r = decide(&g, "a", None, &list).unwrap_err();
    assert_eq!((r.status, r.id), (400, Some(json!("l"))));
}

#[test]
fn lists_fan_out_with_each_backends_session_and_a_404_ends_the_session() {
    let g = gateway();
    let (session, _) = open(&g, "a", ["2025-11-25", "2025-11-25"], "2025-11-25");
    let BodyDecision::Session(op) =
        decide(&g, "a", Some(&session), &legacy("tools/list", json!({}), json!(8))).unwrap()
    else {
        panic!()
    };
    let crm = &op.callouts[0].1;
    assert!(crm.headers.contains(&("mcp-session-id".to_string(), "crm-session".to_string())));
    assert!(!op.callouts[1].1.headers.iter().any(|(k, _)| k == "mcp-session-id"));
    let gone = CalloutResponse { status: 404, headers: Vec::new(), body: Vec::new() };
    let listed = sse(json!({"jsonrpc": "2.0", "id": 8, "result": {"tools": []}}));
    let keys = g.config().virtual_session_keys.as_ref();
    let answer = op.answer(&[Ok(gone), Ok(listed)], keys, &g.config().policy, &mut RedactionCounts::new());
    assert_eq!(answer.status, 404);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["id"], 8);
    assert!(body["error"]["message"].as_str().unwrap().contains("\"crm\""));
}

#[test]
fn a_backends_404_on_a_call_is_answered_404() {
    let g = gateway();
    let (session, _) = open(&g, "a", ["2025-11-25", "2025-11-25"], "2025-11-25");
    let call = legacy("tools/call", json!({"name": "crm__get_customer", "arguments": {}}), json!(3));
    let BodyDecision::Forward(e) = decide(&g, "a", Some(&session), &call).unwrap() else { panic!() };
    let plan =
        e.response_plan(ResponseHead { status: 404, content_type: Some("application/json"), ..Default::default() });
    let ResponsePlan::Fail(r) = plan else { panic!("{plan:?}") };
    assert_eq!((r.status, r.id), (404, Some(json!(3))));
}

#[test]
fn server_request_ids_name_the_backend_and_answers_restore_them_exactly() {
    for (original, tagged) in [("7", "\"mg1.crm.n.7\""), ("\"a.b\\\"c\"", "\"mg1.crm.s.a.b\\\"c\"")] {
        let event =
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{original},\"method\":\"elicitation/create\",\"params\":{{}}}}");
        let out = tag_server_request(event.as_bytes(), "crm").unwrap().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), event.replace(original, tagged));
        let answer = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{tagged},\"result\":{{\"action\":\"decline\",\"x\":\"mg1.crm.n.7\"}}}}"
        );
        let doc = jsonrpc::validate_strict(answer.as_bytes()).unwrap();
        let (server, restored) = untag_answer(answer.as_bytes(), &doc).unwrap();
        assert_eq!(server, "crm");
        assert_eq!(String::from_utf8(restored).unwrap(), answer.replacen(tagged, original, 1));
    }
    // Notifications and responses pass; unreadable events are refused.
    assert_eq!(tag_server_request(br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#, "crm"), Ok(None));
    assert!(tag_server_request(b"{not json", "crm").is_err());
    for id in ["\"mg1.crm.n.1.5\"", "\"mg1.crm.n.01\"", "\"mg1.crm.x.1\"", "\"plain\"", "12"] {
        let answer = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{}}}}");
        let doc = jsonrpc::validate_strict(answer.as_bytes()).unwrap();
        assert!(untag_answer(answer.as_bytes(), &doc).is_none(), "{id}");
    }
}

#[test]
fn a_client_answer_is_routed_to_the_backend_its_id_names() {
    let g = gateway();
    let (session, _) = open(&g, "a", ["2025-11-25", "2025-11-25"], "2025-11-25");
    let answer = br#"{"jsonrpc":"2.0","id":"mg1.crm.n.0","result":{"action":"accept","content":{"confirm":true}}}"#;
    let BodyDecision::Forward(e) = decide(&g, "a", Some(&session), answer).unwrap() else { panic!() };
    assert_eq!(rewrite(&e, TARGET_HEADER), Some(Some("crm")));
    assert_eq!(rewrite(&e, "mcp-session-id"), Some(Some("crm-session")));
    let forwarded = String::from_utf8(e.rewritten_request.clone().unwrap()).unwrap();
    assert_eq!(forwarded, String::from_utf8_lossy(answer).replace("\"mg1.crm.n.0\"", "0"));
    let elsewhere = br#"{"jsonrpc":"2.0","id":"mg1.billing.n.0","result":{}}"#;
    let r = decide(&g, "a", Some(&session), elsewhere).unwrap_err();
    assert_eq!((r.status, r.code), (400, code::INVALID_REQUEST));
}

#[test]
fn delete_ends_every_stateful_backend_session() {
    let g = gateway();
    let (session, _) = open(&g, "a", ["2025-11-25", "2025-11-25"], "2025-11-25");
    let h = [("x-api-key", "a"), ("mcp-session-id", session.as_str())];
    let HeadDecision::Session(op) = g.on_request_head(
        RequestHead { method: "DELETE", path: "/mcp/work", headers: &h, end_of_stream: true },
        NOW,
        &mut g.new_token_cache(),
    ) else {
        panic!()
    };
    assert_eq!(op.callouts.len(), 1);
    let (server, request) = &op.callouts[0];
    assert_eq!(server, "crm");
    assert!(request.headers.contains(&(":method".to_string(), "DELETE".to_string())));
    assert!(request.headers.contains(&("mcp-session-id".to_string(), "crm-session".to_string())));
    let h = [("x-api-key", "r"), ("mcp-session-id", session.as_str())];
    let HeadDecision::Reject(r) = g.on_request_head(
        RequestHead { method: "DELETE", path: "/mcp/work", headers: &h, end_of_stream: true },
        NOW,
        &mut g.new_token_cache(),
    ) else {
        panic!()
    };
    assert_eq!(r.status, 403);
}
