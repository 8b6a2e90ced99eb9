use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn parsed(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn tool_calls_carry_the_marker_and_one_email() {
    let r = reply(
        br#"{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"get_item","arguments":{"x":"y"}}}"#,
    );
    assert_eq!(r.status, 200);
    let v = parsed(&r);
    assert_eq!(v["id"], json!("a-1"));
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("{MARKER}: get_item done.")), "{text}");
    assert_eq!(text.matches(EMAIL).count(), 1);
}

#[test]
fn lifecycle_methods() {
    let init = reply(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#);
    assert_eq!(init.session_id, Some(SESSION_ID));
    assert_eq!(parsed(&init)["result"]["protocolVersion"], json!(PROTOCOL_VERSION));
    assert_eq!(reply(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).status, 202);
    assert_eq!(reply(br#"{"jsonrpc":"2.0","id":9,"result":{}}"#).status, 202);
    assert_eq!(parsed(&reply(br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#))["result"], json!({}));
    let list = parsed(&reply(br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#));
    let names: Vec<_> = list["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].clone()).collect();
    assert_eq!(names, TOOLS.iter().map(|t| json!(t)).collect::<Vec<_>>());
}

#[test]
fn errors() {
    assert_eq!(
        parsed(&reply(br#"{"jsonrpc":"2.0","id":4,"method":"nope"}"#))["error"]["code"],
        json!(METHOD_NOT_FOUND)
    );
    for bad in [&b"not json"[..], b"[1]"] {
        let r = reply(bad);
        assert_eq!(r.status, 400);
        assert_eq!(parsed(&r)["error"]["code"], json!(PARSE_ERROR));
    }
}

/// Over a real socket, two requests on one keep-alive connection.
#[tokio::test]
async fn serves_http_with_keep_alive() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_item"}}"#;
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..2 {
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the whole JSON answer is in (it ends the response: content-length framed).
        while !(String::from_utf8_lossy(&seen).contains(MARKER) && seen.ends_with(b"}")) {
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "connection closed");
            seen.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.to_ascii_lowercase().contains("content-type: application/json"), "{text}");
        assert!(text.contains(MARKER) && text.contains(r#""id":7"#), "{text}");
    }
    server.abort();
}
