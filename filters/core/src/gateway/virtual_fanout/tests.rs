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
fn a_cursor_this_gateway_did_not_issue_is_refused_with_the_id() {
    let g = gateway(false);
    for cursor in [json!("abc"), json!(5), json!("mgv1.e30")] {
        let r = plan(&g, "a", "tools/list", json!({"cursor": cursor})).unwrap_err();
        assert_eq!((r.status, r.code, r.id), (200, code::INVALID_PARAMS, Some(json!("q"))), "{cursor}");
        assert!(r.message.contains("cursor"), "{}", r.message);
    }
}

fn page(tools: &[&str], next: Option<&str>) -> Result<CalloutResponse, String> {
    let tools: Vec<Value> = tools.iter().map(|n| json!({"name": n, "inputSchema": {}})).collect();
    let mut result = json!({"tools": tools, "ttlMs": 1000});
    if let Some(next) = next {
        result["nextCursor"] = json!(next);
    }
    json_answer(result)
}

/// Cursor of the plan's request body sent to each backend.
fn sent_cursors(f: &FanOut) -> Vec<(String, Option<String>)> {
    f.backends
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_slice(&b.request.body).unwrap();
            (b.server.clone(), v["params"]["cursor"].as_str().map(str::to_string))
        })
        .collect()
}

#[test]
fn pages_of_several_backends_are_combined_in_one_cursor() {
    let g = gateway(false);
    let first = plan(&g, "a", "tools/list", json!({})).unwrap();
    assert_eq!(sent_cursors(&first), [("crm".to_string(), None), ("docs".to_string(), None)]);
    let policy = &g.config().policy;
    let (body, _) = first.answer(
        &[page(&["get_customer"], Some("crm-2")), page(&["search_docs"], Some("docs \"2\""))],
        policy,
        &mut RedactionCounts::new(),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    let cursor = v["result"]["nextCursor"].as_str().unwrap().to_string();
    // Page 2: both backends, each with its own cursor (nothing else of the body changed).
    let second = plan(&g, "a", "tools/list", json!({"cursor": cursor})).unwrap();
    assert_eq!(
        sent_cursors(&second),
        [("crm".to_string(), Some("crm-2".to_string())), ("docs".to_string(), Some("docs \"2\"".to_string()))]
    );
    let sent: Value = serde_json::from_slice(&second.backends[0].request.body).unwrap();
    assert_eq!(sent["params"]["_meta"], json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"}));
    let (body, _) = second.answer(
        &[page(&["list_customers"], None), page(&["search_more"], Some("docs-3"))],
        policy,
        &mut RedactionCounts::new(),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 2);
    // Page 3: only docs still has pages.
    let third = plan(&g, "a", "tools/list", json!({"cursor": v["result"]["nextCursor"]})).unwrap();
    assert_eq!(sent_cursors(&third), [("docs".to_string(), Some("docs-3".to_string()))]);
    let (body, _) = third.answer(&[page(&["search_last"], None)], policy, &mut RedactionCounts::new());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"]["tools"][0]["name"], "docs__search_last");
    assert!(v["result"].get("nextCursor").is_none(), "{v}");
    assert_eq!(v["result"]["ttlMs"], 1000);
    // A cursor is bound to its list: not accepted for prompts/list.
    let r = plan(&g, "a", "prompts/list", json!({"cursor": cursor})).unwrap_err();
    assert_eq!(r.code, code::INVALID_PARAMS);
}

#[test]
fn a_backend_that_fails_is_dropped_from_the_cursor_and_the_ttl_is_zero() {
    let g = gateway(false);
    let f = plan(&g, "a", "tools/list", json!({})).unwrap();
    let (body, omitted) = f.answer(
        &[page(&["get_customer"], Some("crm-2")), Err("reset".into())],
        &g.config().policy,
        &mut RedactionCounts::new(),
    );
    assert_eq!(omitted.len(), 1);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"]["ttlMs"], 0);
    let next = plan(&g, "a", "tools/list", json!({"cursor": v["result"]["nextCursor"]})).unwrap();
    assert_eq!(sent_cursors(&next), [("crm".to_string(), Some("crm-2".to_string()))]);
    // A nextCursor that is not a string makes the answer unreadable: omitted.
    let bad = json_answer(json!({"tools": [], "nextCursor": 3}));
    let (_, omitted) = f.answer(&[page(&[], None), bad], &g.config().policy, &mut RedactionCounts::new());
    assert_eq!(omitted.len(), 1, "{omitted:?}");
}

fn resource_gateway() -> Gateway {
    let key = |k: &str, role: &str| json!({"consumer": format!("{role}-bot"), "sha256": hex::encode(Sha256::digest(k.as_bytes())), "roles": [role]});
    let raw: RawFilterConfig = serde_json::from_value(json!({
        "servers": ["crm", "docs"],
        "auth": {"api_keys": [key("r", "reader"), key("a", "admin")]},
        "policy": {"roles": {
            "reader": {"allow": ["crm/get_*"], "resources": {"allow": ["docs/*"]}},
            "admin": {"allow": ["*"], "resources": {"allow": ["*"]}}
        }},
        "virtual_servers": [{"name": "work", "tools": ["crm/*"], "resources": ["crm/crm://*", "docs/docs://pages/*"]}],
        "upstreams": {
            "crm": {"cluster": "mcp-crm", "path": "/mcp", "authority": "127.0.0.1:1"},
            "docs": {"cluster": "mcp-docs", "path": "/mcp", "authority": "127.0.0.1:2"},
        }
    }))
    .unwrap();
    Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
}

#[test]
fn resources_are_merged_unrenamed_filtered_per_caller_and_by_selection() {
    let g = resource_gateway();
    let crm =
        || json_answer(json!({"resources": [{"uri": "crm://stats", "name": "stats", "mimeType": "application/json"}]}));
    let docs = || {
        json_answer(json!({"resources": [
            {"uri": "docs://pages/1", "name": "one", "_meta": {"k": 1}},
            {"uri": "docs://index", "name": "index"},
        ]}))
    };
    let uris = |key: &str| {
        let f = plan(&g, key, "resources/list", json!({})).unwrap();
        let (body, omitted) = f.answer(&[crm(), docs()], &g.config().policy, &mut RedactionCounts::new());
        assert!(omitted.is_empty());
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["result"]["resources"].as_array().unwrap().clone()
    };
    let admin = uris("a");
    assert_eq!(admin.iter().map(|r| r["uri"].as_str().unwrap()).collect::<Vec<_>>(), ["crm://stats", "docs://pages/1"]);
    assert_eq!(admin[1], json!({"uri": "docs://pages/1", "name": "one", "_meta": {"k": 1}}));
    // The reader may read docs resources only.
    assert_eq!(uris("r").iter().map(|r| r["uri"].as_str().unwrap()).collect::<Vec<_>>(), ["docs://pages/1"]);
    // Templates: matched on their uriTemplate.
    let f = plan(&g, "a", "resources/templates/list", json!({})).unwrap();
    let templates = |t: Value| json_answer(json!({"resourceTemplates": t}));
    let (body, _) = f.answer(
        &[
            templates(json!([{"uriTemplate": "crm://customers/{id}", "name": "customer"}])),
            templates(json!([{"uriTemplate": "docs://pages/{id}", "name": "page"}, {"uriTemplate": "other://{x}", "name": "x"}])),
        ],
        &g.config().policy,
        &mut RedactionCounts::new(),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    let listed: Vec<&str> = v["result"]["resourceTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uriTemplate"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["crm://customers/{id}", "docs://pages/{id}"]);
}

#[test]
fn discover_offers_resources_when_selected() {
    let g = resource_gateway();
    let f = plan(&g, "a", "server/discover", json!({})).unwrap();
    let caps = |c: Value| json_answer(json!({"supportedVersions": ["2026-07-28"], "capabilities": c, "ttlMs": 10}));
    let (body, _) = f.answer(
        &[caps(json!({"tools": {}, "resources": {"subscribe": true}})), caps(json!({"resources": {}}))],
        &g.config().policy,
        &mut RedactionCounts::new(),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"]["capabilities"], json!({"tools": {}, "resources": {}}));
    assert_eq!(v["result"]["ttlMs"], 10);
}

#[test]
fn a_read_is_routed_by_its_uri_and_governed_as_the_backing_servers() {
    let g = resource_gateway();
    let read = |key: &str, uri: &str| {
        let headers = [
            ("x-api-key", key),
            ("content-type", "application/json"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "resources/read"),
            ("mcp-name", uri),
        ];
        let body = json!({"jsonrpc": "2.0", "id": "q", "method": "resources/read", "params": {"uri": uri,
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
        .to_string();
        let head = RequestHead { method: "POST", path: "/mcp/work", headers: &headers, end_of_stream: false };
        let HeadDecision::AwaitBody(pending) = g.on_request_head(head, 0, &mut g.new_token_cache()) else { panic!() };
        g.decide_request_body(&pending, body.as_bytes()).map(|d| match d {
            BodyDecision::Forward(e) => e,
            BodyDecision::FanOut(f) => panic!("{f:?}"),
            BodyDecision::Session(op) => panic!("{op:?}"),
        })
    };
    let e = read("a", "docs://pages/7").unwrap();
    assert_eq!(e.server, "docs");
    let target = e.request_header_rewrites.iter().find(|(k, _)| k == crate::virtual_server::TARGET_HEADER);
    assert_eq!(target.and_then(|(_, v)| v.as_deref()), Some("docs"));
    assert_eq!(read("a", "crm://stats").unwrap().server, "crm");
    // RBAC of the backing server: the reader may not read crm resources.
    assert_eq!(read("r", "crm://stats").unwrap_err().code, code::FORBIDDEN);
    // Not selected, dot segments, encoded delimiters: -32602 with the id.
    for uri in ["docs://index", "docs://pages/../secret", "docs://pages/a%2Fb"] {
        let r = read("a", uri).unwrap_err();
        assert_eq!((r.code, r.id), (code::INVALID_PARAMS, Some(json!("q"))), "{uri}: {}", r.message);
    }
}
