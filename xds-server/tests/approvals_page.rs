//! The approval page of an in-process `meshgate serve` whose admin API needs a bearer token
//! (`--admin-token-file`): the page stays reachable and signs approvers in with their own
//! credentials, the rest of the admin API still needs the token, and the filter's check is
//! not served on the admin API at all (only on the gRPC port, next to ADS).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;

use meshgate::serve::{Security, StartOptions, WasmDelivery};
use meshgate::transport_security::AdminToken;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APPROVER_KEY: &str = "approver-key-for-the-page-test";
const READER_KEY: &str = "reader-key-for-the-page-test";

fn registry() -> String {
    let sha = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    format!(
        "\
listener: {{ port: 0 }}
servers:
  - {{ name: crm, url: 'http://127.0.0.1:9/mcp' }}
auth:
  api_keys:
    - {{ consumer: ops-lead, sha256: '{}', roles: [ops] }}
    - {{ consumer: reader, sha256: '{}', roles: [reader] }}
policy:
  roles:
    ops: {{ allow: ['crm/get_*'] }}
    reader: {{ allow: ['crm/get_*'] }}
approvals:
  - name: destructive
    match: {{ tools: ['crm/delete_*'] }}
    approvers: {{ roles: [ops] }}
approval_page: {{ url: 'https://approvals.example.com/approvals' }}
",
        sha(APPROVER_KEY),
        sha(READER_KEY)
    )
}

/// One HTTP/1.1 exchange: status, raw headers, body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_approvers_in_itself_when_the_admin_api_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    support::write(dir.path(), "registry.yaml", registry());
    let running = meshgate::serve::start(&StartOptions {
        registry: dir.path().join("registry.yaml"),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        wasm: WasmDelivery::Local("/opt/meshgate.wasm".into()),
        native: Default::default(),
        security: Security { admin_token: Some(AdminToken::new("admin-secret")), ..Default::default() },
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let admin = running.admin;

    assert_eq!(http(admin, "GET", "/status", &[], "").await.0, 401, "the rest of the admin API keeps its token");
    let (status, head, page) = http(admin, "GET", "/approvals", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"sign-in\"") && page.contains("name=\"credential\""), "{page}");
    assert!(head.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-frame-options: deny"), "{head}");

    // The filter's check is a control-plane endpoint: never on the admin API.
    let check = r#"{"rule":"destructive","consumer":"x","server":"crm","tool":"delete_customer","arguments_sha256":"sha256:00"}"#;
    let (status, _, _) =
        http(admin, "POST", "/meshgate.approvals.v1/check", &[("content-type", "application/json")], check).await;
    assert_ne!(status, 200);

    let form = [("content-type", "application/x-www-form-urlencoded")];
    // A consumer without an approver role is not signed in.
    let (status, head, _) = http(admin, "POST", "/approvals/sign-in", &form, &format!("credential={READER_KEY}")).await;
    assert_eq!(status, 303);
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    assert!(head.contains("holds%20no%20approver%20role"), "{head}");

    let (status, head, _) =
        http(admin, "POST", "/approvals/sign-in", &form, &format!("credential={APPROVER_KEY}")).await;
    assert_eq!(status, 303);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/approvals"));
    let session = cookie.split(';').next().unwrap();
    let (status, _, page) = http(admin, "GET", "/approvals", &[("cookie", session)], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("Signed in as <b id=\"who\">ops-lead</b>"), "{page}");
    // Deciding needs the session's CSRF token.
    let (status, _, _) =
        http(admin, "POST", "/approvals/decide", &[form[0], ("cookie", session)], "id=ap_1&decision=approve&csrf=nope")
            .await;
    assert_eq!(status, 403);
    running.stop().await;
}
