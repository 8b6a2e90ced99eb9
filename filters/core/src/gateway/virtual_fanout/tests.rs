use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::*;
use crate::config::{EnvSecrets, FilterConfig, RawFilterConfig};
use crate::gateway::{BodyDecision, HeadDecision, RequestHead};

fn gateway(credentials: bool) -> Gateway {
    let key = |k: &str, role: &str| json!({"consumer": format!("{role}-bot"), "sha256": hex::encode(Sha256::digest(k.as_bytes())), "roles": [role]});
    let raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm", "docs"],
        "auth": {"api_keys": [key("r", "reader"), key("a", "admin")]},
        "policy": {"roles": {
            "reader": {"allow": ["crm/get_*"]},
            "admin": {"allow": ["*"], "prompts": {"allow": ["crm/*"]}}
        }},
        "virtual_servers": [{"name": "work", "description": "Work tools", "tools": ["crm/*", "docs/search_*"], "prompts": ["crm/*"]}],
        "upstreams": {
            "crm": {"cluster": "mcp-crm", "path": "/mcp", "authority": "127.0.0.1:1"},
            "docs": {"cluster": "mcp-docs", "path": "/mcp", "authority": "127.0.0.1:2", "credentials": credentials},
        }
    }))
    .unwrap();
    Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
}

fn plan(g: &Gateway, key: &str, method: &str, params: Value) -> Result<FanOut, Rejection> {
    let headers = [
        ("x-api-key", key),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    let mut params = params;
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    let body = json!({"jsonrpc": "2.0", "id": "q", "method": method, "params": params}).to_string();
    let head = RequestHead { method: "POST", path: "/mcp/work", headers: &headers, end_of_stream: false };
    let HeadDecision::AwaitBody(pending) = g.on_request_head(head, 0, &mut g.new_token_cache()) else { panic!() };
    match g.decide_request_body(&pending, body.as_bytes())? {
        BodyDecision::FanOut(f) => Ok(f),
        BodyDecision::Forward(e) => panic!("{e:?}"),
        BodyDecision::Session(op) => panic!("{op:?}"),
    }
}

fn json_answer(result: Value) -> Result<CalloutResponse, String> {
    Ok(CalloutResponse {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: json!({"jsonrpc": "2.0", "id": "q", "result": result}).to_string().into_bytes(),
    })
}

#[test]
fn items_keep_every_field_and_only_selected_allowed_ones_are_kept() {
    let g = gateway(false);
    let f = plan(&g, "a", "tools/list", json!({})).unwrap();
    assert_eq!(f.backends.iter().map(|b| b.server.as_str()).collect::<Vec<_>>(), ["crm", "docs"]);
    let crm = json_answer(json!({"tools": [
        {"name": "get_customer", "title": "Get", "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"},
         "annotations": {"readOnlyHint": true}, "_meta": {"k": "get_customer"}},
    ], "ttlMs": 5000}));
    let docs = json_answer(
        json!({"tools": [{"name": "search_docs", "inputSchema": {}}, {"name": "delete_doc", "inputSchema": {}}], "ttlMs": 100}),
    );
    let (body, omitted) = f.answer(&[crm, docs], &g.config().policy, &mut RedactionCounts::new());
    assert!(omitted.is_empty(), "{omitted:?}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], "q");
    let tools = v["result"]["tools"].as_array().unwrap();
    assert_eq!(
        tools.iter().map(|t| t["name"].as_str().unwrap()).collect::<Vec<_>>(),
        ["crm__get_customer", "docs__search_docs"]
    );
    assert_eq!(tools[0]["title"], "Get");
    assert_eq!(tools[0]["annotations"], json!({"readOnlyHint": true}));
    assert_eq!(tools[0]["_meta"], json!({"k": "get_customer"}));
    assert_eq!(tools[0]["outputSchema"], json!({"type": "object"}));
    assert_eq!(v["result"]["ttlMs"], 100);
    assert_eq!(v["result"]["cacheScope"], "private");
    assert_eq!(v["result"]["resultType"], "complete");
}

#[test]
fn failed_backends_are_omitted_and_named() {
    let g = gateway(false);
    let f = plan(&g, "r", "tools/list", json!({})).unwrap();
    let crm = json_answer(
        json!({"tools": [{"name": "get_customer", "inputSchema": {}}, {"name": "delete_customer", "inputSchema": {}}]}),
    );
    let (body, omitted) = f.answer(&[crm, Err("reset".into())], &g.config().policy, &mut RedactionCounts::new());
    let v: Value = serde_json::from_slice(&body).unwrap();
    // The reader's policy allows only crm/get_*.
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
    assert_eq!(v["result"]["tools"][0]["name"], "crm__get_customer");
    assert_eq!(omitted, [Omission { server: "docs".into(), reason: "reset".into() }]);
    // An HTTP error, a JSON-RPC error, another id: omitted too.
    let errors = [
        Ok(CalloutResponse { status: 503, headers: vec![], body: b"no healthy upstream".to_vec() }),
        Ok(CalloutResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"jsonrpc":"2.0","id":"other","result":{"tools":[]}}"#.to_vec(),
        }),
    ];
    let (_, omitted) = f.answer(&errors, &g.config().policy, &mut RedactionCounts::new());
    assert_eq!(omitted.len(), 2, "{omitted:?}");
}

#[test]
fn a_server_whose_credential_the_route_injects_is_never_called() {
    let g = gateway(true);
    let f = plan(&g, "a", "tools/list", json!({})).unwrap();
    assert_eq!(f.backends.len(), 1);
    assert_eq!(f.skipped[0].server, "docs");
}

#[test]
fn discover_merges_what_the_selection_offers() {
    let g = gateway(false);
    let f = plan(&g, "r", "server/discover", json!({})).unwrap();
    let caps = |c: Value| {
        json_answer(
            json!({"supportedVersions": ["2026-07-28"], "capabilities": c, "ttlMs": 0, "cacheScope": "public", "resultType": "complete"}),
        )
    };
    let (body, _) = f.answer(
        &[caps(json!({"tools": {"listChanged": true}})), caps(json!({"tools": {}, "resources": {}}))],
        &g.config().policy,
        &mut RedactionCounts::new(),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"]["capabilities"], json!({"tools": {}}));
    assert_eq!(v["result"]["supportedVersions"], json!(["2026-07-28"]));
    assert_eq!(v["result"]["instructions"], "Work tools");
    assert_eq!(v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "work");
    // prompts/list asks only the servers with prompts selected.
    assert_eq!(plan(&g, "a", "prompts/list", json!({})).unwrap().backends.len(), 1);
}

#[test]
fn a_cursor_is_refused() {
    let g = gateway(false);
    let r = plan(&g, "a", "tools/list", json!({"cursor": "abc"})).unwrap_err();
    assert_eq!((r.code, r.id), (code::INVALID_PARAMS, Some(json!("q"))));
}
