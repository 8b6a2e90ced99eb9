use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;

use super::*;

fn sse() -> HashMap<String, String> {
    HashMap::from([("content-type".to_string(), "text/event-stream; charset=utf-8".to_string())])
}

#[test]
fn the_answer_is_the_exact_text_in_json_and_in_sse() {
    let json = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[ ]}}"#;
    assert_eq!(answer_in(json, &HashMap::new(), 2), Some(json.to_vec()));
    assert_eq!(answer_in(json, &HashMap::new(), 3), None);
    let events = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\n\
                  data: {\"jsonrpc\":\"2.0\",\"id\":2,\r\ndata: \"result\":{}}\r\n\r\n";
    assert_eq!(
        answer_in(events.as_bytes(), &sse(), 2),
        Some(b"{\"jsonrpc\":\"2.0\",\"id\":2,\n\"result\":{}}".to_vec())
    );
    assert_eq!(answer_in(events.as_bytes(), &sse(), 3), None);
    // A server request with the same id is not the answer.
    let request = "data: {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n\n";
    assert_eq!(answer_in(request.as_bytes(), &sse(), 2), None);
}

/// A 2026-07-28 server on loopback: answers `server/discover` and pages `tools/list` only
/// when the request carries the modern headers and envelope; logs what it was asked.
async fn modern_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler = move |headers: HeaderMap, body: Bytes| {
        let log = log.clone();
        async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let rpc = message["method"].as_str().unwrap_or("").to_string();
            let modern = header("mcp-protocol-version") == MODERN
                && header("mcp-method") == rpc
                && message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == MODERN;
            if let Ok(mut log) = log.lock() {
                log.push(format!("{rpc} {} {}", header("user-agent"), message["params"]["cursor"]));
            }
            if !modern {
                return (StatusCode::BAD_REQUEST, HeaderMap::new(), "not 2026-07-28".to_string()).into_response();
            }
            let id = &message["id"];
            let answer = match (rpc.as_str(), message["params"]["cursor"].as_str()) {
                ("server/discover", _) => {
                    json!({"jsonrpc":"2.0","id":id,"result":{"supportedVersions":[MODERN],"capabilities":{"tools":{}},"resultType":"complete"}})
                }
                ("tools/list", None) => {
                    json!({"jsonrpc":"2.0","id":id,"result":{"tools":[{"name":"a"}],"nextCursor":"2"}})
                }
                ("tools/list", Some(_)) => json!({"jsonrpc":"2.0","id":id,"result":{"tools":[{"name":"b"}]}}),
                _ => json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"no"}}),
            };
            let mut out = HeaderMap::new();
            out.insert("content-type", HeaderValue::from_static("application/json"));
            (StatusCode::OK, out, answer.to_string()).into_response()
        }
    };
    let app = axum::Router::new().route("/mcp", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

const LIMITS: Limits =
    Limits { user_agent: "meshgate-test/1", timeout: Duration::from_secs(5), max_body: 1 << 20, max_pages: 5 };

#[tokio::test]
async fn a_modern_server_is_asked_in_the_modern_form_without_a_session() {
    let (address, seen) = modern_server().await;
    let registry = crate::test_support::registry(&format!(
        "listener: {{ port: 0 }}\nservers:\n  - {{ name: new, url: 'http://{address}/mcp' }}\n"
    ));
    let mut client = McpClient::new(&registry.servers[0], "/nonexistent", LIMITS).unwrap_or_else(|e| panic!("{e}"));
    let capabilities = client.open().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(capabilities, Capabilities { tools: true, resources: false, prompts: false });
    let pages = client.list_all("tools/list", "tools").await.unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<Value> = pages
        .iter()
        .flat_map(|p| serde_json::from_slice::<Value>(p).map(|v| v["result"]["tools"].clone()).ok())
        .collect();
    assert_eq!(names, [json!([{"name": "a"}]), json!([{"name": "b"}])]);
    client.close().await;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        seen,
        ["server/discover meshgate-test/1 null", "tools/list meshgate-test/1 null", "tools/list meshgate-test/1 \"2\""]
    );
}

#[tokio::test]
async fn too_many_pages_and_a_silent_server_are_failures_not_hangs() {
    let (address, _) = modern_server().await;
    let registry = crate::test_support::registry(&format!(
        "listener: {{ port: 0 }}\nservers:\n  - {{ name: new, url: 'http://{address}/mcp' }}\n"
    ));
    let one_page = Limits { max_pages: 1, ..LIMITS };
    let mut client = McpClient::new(&registry.servers[0], "/nonexistent", one_page).unwrap_or_else(|e| panic!("{e}"));
    client.open().await.unwrap_or_else(|e| panic!("{e}"));
    let failed = client.list_all("tools/list", "tools").await.err();
    assert!(matches!(&failed, Some(Failure::Broken(e)) if e.contains("more than 1 pages")), "{failed:?}");

    // Accepts the connection, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = silent.local_addr().map(|a| a.port()).unwrap_or_default();
    let registry = crate::test_support::registry(&format!(
        "listener: {{ port: 0 }}\nservers:\n  - {{ name: mute, url: 'http://127.0.0.1:{port}/mcp' }}\n"
    ));
    let quick = Limits { timeout: Duration::from_millis(300), ..LIMITS };
    let mut client = McpClient::new(&registry.servers[0], "/nonexistent", quick).unwrap_or_else(|e| panic!("{e}"));
    let failed = client.open().await.err();
    assert!(matches!(&failed, Some(Failure::Broken(e)) if e.contains("no answer within 300 ms")), "{failed:?}");
    drop(silent);
}
