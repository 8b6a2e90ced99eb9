//! Tool discovery for `/catalog`: meshgate asks every registered server which tools it has,
//! as an MCP client, straight to the server (not through Envoy, so no policy applies: the
//! catalog is the operator's view of everything that exists).
//!
//! - Protocol: `tools/list` in the 2026-07-28 form (one stateless POST with
//!   `MCP-Protocol-Version` and `Mcp-Method`); a server that refuses it gets the 2025-11-25
//!   handshake (`initialize`, `notifications/initialized`, `tools/list` in that session, then
//!   `DELETE` of the session). Answers may be JSON or SSE. Every page is followed
//!   (`nextCursor`, at most [`MAX_PAGES`]).
//! - Credentials: the server's `credentials` header (with its prefix) is sent, as the
//!   gateway's route would send it. `https` servers are verified like Envoy verifies them
//!   (`tls.ca_file`, else `envoy.system_ca_file`; SNI and the name checked as configured).
//! - Every request says `user-agent: meshgate-catalog/<version>` ([`USER_AGENT`]).
//! - Bounds: one server's discovery (every request of it) takes at most [`SERVER_TIMEOUT`];
//!   an answer larger than [`MAX_BODY`] is refused. Servers are asked concurrently.
//! - Freshness: at start, after every registry change that publishes a new snapshot, and
//!   every [`REFRESH_INTERVAL`]. A failure keeps the last good list (marked `stale`) and
//!   says why.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::control::{unix_now, ControlPlane};
use crate::registry::{Registry, Scheme, Server, Trust, UpstreamHost, VerifyName};

/// How often every server is asked again, registry changes aside.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Everything one server's discovery may take (connects, handshake, every page).
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from a server.
pub const MAX_BODY: usize = 4 << 20;
/// Pages of `tools/list` followed at most.
pub const MAX_PAGES: usize = 20;

/// Sent with every discovery request, so a server's logs can tell them from clients' requests.
pub const USER_AGENT: &str = concat!("meshgate-catalog/", env!("CARGO_PKG_VERSION"));

const MODERN: &str = "2026-07-28";
const LEGACY: &str = "2025-11-25";

/// One tool as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTool {
    pub name: String,
    pub description: Option<String>,
}

/// The latest discovery of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The last good list, if any.
    pub tools: Option<Vec<DiscoveredTool>>,
    /// Unix seconds of the last good list.
    pub listed_at: Option<u64>,
    /// Why the latest attempt failed (`None` when it succeeded).
    pub error: Option<String>,
    /// Unix seconds of the latest attempt.
    pub attempted_at: u64,
}

/// What discovery knows, by server name. Shared by the refresher and the admin API.
#[derive(Debug, Default)]
pub struct Catalog {
    servers: RwLock<HashMap<String, Discovery>>,
}

impl Catalog {
    pub fn get(&self, server: &str) -> Option<Discovery> {
        self.servers.read().ok().and_then(|servers| servers.get(server).cloned())
    }

    pub(crate) fn record(&self, server: &str, outcome: Result<Vec<DiscoveredTool>, String>, now: u64) {
        let Ok(mut servers) = self.servers.write() else { return };
        let entry = servers.entry(server.to_string()).or_insert(Discovery {
            tools: None,
            listed_at: None,
            error: None,
            attempted_at: now,
        });
        entry.attempted_at = now;
        match outcome {
            Ok(tools) => {
                entry.tools = Some(tools);
                entry.listed_at = Some(now);
                entry.error = None;
            }
            Err(error) => entry.error = Some(error),
        }
    }

    fn retain(&self, registry: &Registry) {
        if let Ok(mut servers) = self.servers.write() {
            servers.retain(|name, _| registry.servers.iter().any(|s| &s.name == name));
        }
    }
}

/// Asks every server of `registry` for its tools, concurrently, and records the outcomes.
pub async fn refresh(catalog: &Catalog, registry: &Registry) {
    catalog.retain(registry);
    let mut tasks = tokio::task::JoinSet::new();
    for server in &registry.servers {
        let server = server.clone();
        let system_ca = registry.envoy.system_ca_file.clone();
        tasks.spawn(async move {
            let outcome = match tokio::time::timeout(SERVER_TIMEOUT, list_tools(&server, &system_ca)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no complete answer within {} s", SERVER_TIMEOUT.as_secs())),
            };
            (server.name, outcome)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((name, outcome)) = joined {
            if let Err(error) = &outcome {
                tracing::warn!(server = %name, "catalog: cannot list the server's tools: {error}");
            }
            catalog.record(&name, outcome, unix_now());
        }
    }
}

/// Keeps `catalog` fresh until `shutdown` turns true: at start, on every new snapshot and
/// every [`REFRESH_INTERVAL`].
pub async fn keep_fresh(catalog: Arc<Catalog>, control: Arc<ControlPlane>, mut shutdown: watch::Receiver<bool>) {
    let mut snapshots = control.subscribe();
    loop {
        if let Some(registry) = control.registry() {
            refresh(&catalog, &registry).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Every tool of one server: the 2026-07-28 request first, the 2025-11-25 session if the
/// server refuses it.
async fn list_tools(server: &Server, system_ca: &str) -> Result<Vec<DiscoveredTool>, String> {
    let client = Client::new(server, system_ca)?;
    match list_pages(&client, None).await {
        Ok(tools) => Ok(tools),
        Err(Failure::Refused(modern)) => {
            let session = client.initialize().await.map_err(|e| format!("{modern}; {LEGACY}: {e}"))?;
            let listed = list_pages(&client, Some(&session)).await.map_err(|e| e.to_string());
            client.close(&session).await;
            listed
        }
        Err(Failure::Broken(e)) => Err(e),
    }
}

async fn list_pages(client: &Client, session: Option<&Session>) -> Result<Vec<DiscoveredTool>, Failure> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 1..=MAX_PAGES {
        let mut params = match session {
            Some(_) => json!({}),
            None => json!({ "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }}),
        };
        if let Some(cursor) = &cursor {
            params["cursor"] = json!(cursor);
        }
        let id = page as u64 + 1;
        let result = client.call(session, id, "tools/list", params).await?;
        let Some(listed) = result.get("tools").and_then(Value::as_array) else {
            return Err(Failure::Broken("tools/list result has no `tools` array".to_string()));
        };
        for tool in listed {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return Err(Failure::Broken("a tool without a `name`".to_string()));
            };
            let description = tool.get("description").and_then(Value::as_str).map(str::to_string);
            tools.push(DiscoveredTool { name: name.to_string(), description });
        }
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(next) if !next.is_empty() => cursor = Some(next.to_string()),
            _ => return Ok(tools),
        }
    }
    Err(Failure::Broken(format!("more than {MAX_PAGES} pages of tools")))
}

/// Why a request gave no result.
#[derive(Debug)]
enum Failure {
    /// The server answered, refusing the request (an HTTP 4xx or a JSON-RPC error): another
    /// protocol version may work.
    Refused(String),
    /// Nothing usable came back (unreachable, 5xx, unreadable).
    Broken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(e) | Failure::Broken(e) => f.write_str(e),
        }
    }
}

/// A 2025-11-25 session.
struct Session {
    id: Option<String>,
    version: String,
}

/// How to reach one server: address, `Host`, path, credential, TLS.
struct Client {
    connect: (String, u16),
    authority: String,
    path: String,
    credential: Option<(String, String)>,
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
}

impl Client {
    fn new(server: &Server, system_ca: &str) -> Result<Client, String> {
        let upstream = &server.upstream;
        let host = match &upstream.host {
            UpstreamHost::Ip(ip) => ip.to_string(),
            UpstreamHost::Dns(name) => name.clone(),
        };
        let credential =
            server.credentials.as_ref().map(|c| (c.header.clone(), format!("{}{}", c.prefix, c.value.expose())));
        let tls = match (upstream.scheme, &server.tls) {
            (Scheme::Https, Some(tls)) => {
                let pem = match &tls.trust {
                    Trust::CaFile { pem, .. } => pem.clone(),
                    Trust::System => std::fs::read_to_string(system_ca)
                        .map_err(|e| format!("cannot read the system CA bundle {system_ca}: {e}"))?,
                };
                let mut roots = tokio_rustls::rustls::RootCertStore::empty();
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| format!("unreadable CA certificate: {e}"))?;
                    roots.add(cert).map_err(|e| format!("unusable CA certificate: {e}"))?;
                }
                let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
                    tokio_rustls::rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                let name = match &tls.verify {
                    VerifyName::Dns(name) => rustls_pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| format!("TLS name {name}: {e}"))?,
                    VerifyName::Ip(ip) => rustls_pki_types::ServerName::IpAddress((*ip).into()),
                };
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            (Scheme::Https, None) => return Err("https server without TLS settings".to_string()),
            (Scheme::Http, _) => None,
        };
        Ok(Client {
            connect: (host, upstream.port),
            authority: upstream.authority(),
            path: upstream.path.clone(),
            credential,
            tls,
        })
    }

    /// One JSON-RPC request; its `result`.
    async fn call(&self, session: Option<&Session>, id: u64, method: &str, params: Value) -> Result<Value, Failure> {
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let mut headers = vec![("mcp-method", method.to_string())];
        match session {
            Some(session) => {
                headers.push(("mcp-protocol-version", session.version.clone()));
                if let Some(id) = &session.id {
                    headers.push(("mcp-session-id", id.clone()));
                }
            }
            None => headers.push(("mcp-protocol-version", MODERN.to_string())),
        }
        let (status, _, body) = self.send("POST", &headers, Some(&body)).await.map_err(Failure::Broken)?;
        let message = find_response(&body, id);
        if let Some(error) = message.as_ref().and_then(|m| m.get("error")) {
            let code = error.get("code").and_then(Value::as_i64).unwrap_or_default();
            let text = error.get("message").and_then(Value::as_str).unwrap_or_default();
            return Err(Failure::Refused(format!("{method}: JSON-RPC error {code}: {text}")));
        }
        if (400..500).contains(&status) {
            return Err(Failure::Refused(format!("{method}: HTTP {status}")));
        }
        if status != 200 {
            return Err(Failure::Broken(format!("{method}: HTTP {status}")));
        }
        match message.and_then(|mut m| m.get_mut("result").map(Value::take)) {
            Some(result) => Ok(result),
            None => Err(Failure::Broken(format!("{method}: no JSON-RPC response with id {id} in the answer"))),
        }
    }

    async fn initialize(&self) -> Result<Session, String> {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY,
            "capabilities": {},
            "clientInfo": { "name": "meshgate-catalog", "version": env!("CARGO_PKG_VERSION") },
        }});
        let (status, headers, answer) = self.send("POST", &[], Some(&body)).await?;
        let message = find_response(&answer, 1).ok_or_else(|| format!("initialize: HTTP {status}, no response"))?;
        if let Some(error) = message.get("error") {
            return Err(format!("initialize refused: {error}"));
        }
        let version = message.pointer("/result/protocolVersion").and_then(Value::as_str).unwrap_or(LEGACY).to_string();
        let session = Session { id: headers.get("mcp-session-id").cloned(), version };
        let mut notify = vec![("mcp-protocol-version", session.version.clone())];
        if let Some(id) = &session.id {
            notify.push(("mcp-session-id", id.clone()));
        }
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.send("POST", &notify, Some(&initialized)).await?;
        Ok(session)
    }

    async fn close(&self, session: &Session) {
        if let Some(id) = &session.id {
            let headers = [("mcp-session-id", id.clone()), ("mcp-protocol-version", session.version.clone())];
            let _ = self.send("DELETE", &headers, None).await;
        }
    }

    /// One HTTP/1.1 exchange on a fresh connection: status, headers (lower-case names), body.
    async fn send(
        &self,
        method: &str,
        extra: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(u16, HashMap<String, String>, Bytes), String> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(&self.path)
            .header("host", &self.authority)
            .header("user-agent", USER_AGENT)
            .header("accept", "application/json, text/event-stream");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in extra {
            request = request.header(*name, value);
        }
        if let Some((name, value)) = &self.credential {
            request = request.header(name.as_str(), value.as_str());
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request.body(Full::new(bytes)).map_err(|e| format!("request: {e}"))?;
        let tcp = TcpStream::connect((self.connect.0.as_str(), self.connect.1))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.authority))?;
                exchange(stream, request).await
            }
            None => exchange(tcp, request).await,
        }
    }
}

async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> Result<(u16, HashMap<String, String>, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"));
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string())))
                .collect();
            match Limited::new(response.into_body(), MAX_BODY).collect().await {
                Ok(body) => Ok((status, headers, body.to_bytes())),
                Err(e) => Err(format!("reading the answer: {e}")),
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The JSON-RPC response with `id` in a JSON body or an SSE stream, if any.
fn find_response(body: &[u8], id: u64) -> Option<Value> {
    let matches = |message: &Value| message.get("id").and_then(Value::as_u64) == Some(id);
    let text = std::str::from_utf8(body).ok()?;
    if let Ok(message) = serde_json::from_str::<Value>(text) {
        return matches(&message).then_some(message);
    }
    let mut data = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if let Ok(message) = serde_json::from_str::<Value>(&data) {
                if matches(&message) {
                    return Some(message);
                }
            }
            data.clear();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_found_in_json_and_in_sse() {
        let json = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#;
        assert!(find_response(json, 2).is_some());
        assert!(find_response(json, 3).is_none());
        let sse = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\n\
                    event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\ndata: \"result\":{}}\n\n";
        assert_eq!(find_response(sse, 2), Some(json!({"jsonrpc":"2.0","id":2,"result":{}})));
    }

    /// A 2025-11-25-only MCP server on loopback (refuses the 2026-07-28 request with 400, as
    /// servers of that era do) that requires `x-upstream-key: Key s3cret` and pages its tools.
    async fn legacy_server() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler = move |method: axum::http::Method, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let rpc = message["method"].as_str().unwrap_or("").to_string();
                assert!(header("user-agent").starts_with("meshgate-catalog/"), "{headers:?}");
                if let Ok(mut log) = log.lock() {
                    log.push(format!("{method} {rpc} {}", header("mcp-session-id")));
                }
                if header("x-upstream-key") != "Key s3cret" {
                    return (StatusCode::UNAUTHORIZED, HeaderMap::new(), String::new()).into_response();
                }
                if method == axum::http::Method::DELETE {
                    return (StatusCode::OK, HeaderMap::new(), String::new()).into_response();
                }
                let mut out = HeaderMap::new();
                let answer = match rpc.as_str() {
                    "initialize" => {
                        out.insert("mcp-session-id", axum::http::HeaderValue::from_static("s-1"));
                        json!({"jsonrpc":"2.0","id":message["id"],"result":{"protocolVersion":LEGACY,"capabilities":{},"serverInfo":{"name":"t","version":"1"}}})
                    }
                    "notifications/initialized" => return (StatusCode::ACCEPTED, out, String::new()).into_response(),
                    "tools/list" if header("mcp-session-id") != "s-1" => {
                        return (StatusCode::BAD_REQUEST, out, "no session".to_string()).into_response()
                    }
                    "tools/list" if message["params"]["cursor"].is_null() => json!({"jsonrpc":"2.0","id":message["id"],
                        "result":{"tools":[{"name":"a","description":"first"}],"nextCursor":"p2"}}),
                    "tools/list" => json!({"jsonrpc":"2.0","id":message["id"],"result":{"tools":[{"name":"b"}]}}),
                    _ => json!({"jsonrpc":"2.0","id":message["id"],"error":{"code":-32601,"message":"no"}}),
                };
                // Answered as an SSE stream, as the SDK's stateful servers do.
                out.insert("content-type", axum::http::HeaderValue::from_static("text/event-stream"));
                (StatusCode::OK, out, format!("event: message\ndata: {answer}\n\n")).into_response()
            }
        };
        let app = axum::Router::new().route("/mcp", axum::routing::any(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (address, seen)
    }

    #[tokio::test]
    async fn a_legacy_server_is_listed_in_a_session_with_its_credential_and_every_page() {
        let (address, seen) = legacy_server().await;
        let registry = crate::test_support::registry(&format!(
            "listener: {{ port: 0 }}\nservers:\n  - name: old\n    url: 'http://{address}/mcp'\n    \
             credentials: {{ header: x-upstream-key, prefix: 'Key ', value_env: TEST_SECRET }}\n"
        ));
        // The fixture's environment has TEST_SECRET; the server wants "s3cret".
        let mut server = registry.servers[0].clone();
        if let Some(credentials) = server.credentials.as_mut() {
            credentials.value = crate::registry::SecretValue::new("s3cret".to_string());
        }
        let tools = list_tools(&server, "/nonexistent").await;
        assert_eq!(
            tools,
            Ok(vec![
                DiscoveredTool { name: "a".into(), description: Some("first".into()) },
                DiscoveredTool { name: "b".into(), description: None },
            ])
        );
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            [
                "POST tools/list ",
                "POST initialize ",
                "POST notifications/initialized s-1",
                "POST tools/list s-1",
                "POST tools/list s-1",
                "DELETE  s-1"
            ]
        );

        // Without the credential the server refuses: the error says so, within the bound.
        let mut anonymous = registry.servers[0].clone();
        anonymous.credentials = None;
        let refused = list_tools(&anonymous, "/nonexistent").await.err().unwrap_or_default();
        assert!(refused.contains("HTTP 401"), "{refused}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_reported_not_waited_for() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        drop(listener);
        let registry = crate::test_support::registry(&format!(
            "listener: {{ port: 0 }}\nservers:\n  - {{ name: gone, url: 'http://127.0.0.1:{port}/mcp' }}\n"
        ));
        let catalog = Catalog::default();
        refresh(&catalog, &registry).await;
        let seen = catalog.get("gone").unwrap_or_else(|| panic!("recorded"));
        assert_eq!(seen.tools, None);
        assert!(seen.error.as_deref().unwrap_or_default().contains("cannot connect"), "{seen:?}");
    }

    #[test]
    fn a_failed_attempt_keeps_the_last_good_list() {
        let catalog = Catalog::default();
        let tool = DiscoveredTool { name: "t".into(), description: None };
        catalog.record("a", Ok(vec![tool.clone()]), 10);
        catalog.record("a", Err("down".into()), 20);
        let seen = catalog.get("a").unwrap_or_else(|| panic!("recorded"));
        assert_eq!(seen.tools, Some(vec![tool]));
        assert_eq!((seen.listed_at, seen.attempted_at, seen.error.as_deref()), (Some(10), 20, Some("down")));
    }
}
