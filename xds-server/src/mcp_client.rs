//! meshgate's own MCP client, for the servers of the registry: the catalog's tool discovery
//! ([`crate::discovery`]), `meshgate pin` and the drift view ([`crate::pin`]).
//!
//! - **Both protocol eras.** [`McpClient::open`] asks `server/discover` in the 2026-07-28
//!   form (one stateless POST with `MCP-Protocol-Version` and `Mcp-Method`, the envelope in
//!   `params._meta`); a server that refuses it (an HTTP 4xx or a JSON-RPC error) gets the
//!   2025-11-25 handshake (`initialize`, `notifications/initialized`; every later request in
//!   that session), which [`McpClient::close`] ends with `DELETE`.
//! - **Exact answers.** Answers may be JSON bodies or SSE streams; the answer to a request
//!   is the exact text the server sent for it (the JSON body, or the data of the event
//!   carrying the response with its id), never a re-serialisation: `pin` hashes
//!   definitions from it.
//! - **Transport.** Each request is its own HTTP/1.1 connection, plain or TLS verified as
//!   Envoy verifies the server (`tls.ca_file`, else `envoy.system_ca_file`; the name checked
//!   as configured), to the server's first endpoint, with its `Host`, path and registry
//!   `credentials` header, as the gateway's route sends them, and the caller's
//!   `user-agent`, so a server's logs tell these requests apart from clients'.
//! - **Bounds.** Every request is bounded in time and answer size ([`Limits`]); lists
//!   follow at most `max_pages` pages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use meshgate_core::jsonrpc::{self, JsonKind};
use meshgate_core::mcp::method;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::registry::{Scheme, Server, Trust, UpstreamHost, VerifyName};

/// The 2026-07-28 protocol version, asked first.
pub const MODERN: &str = "2026-07-28";
/// The session-based version asked of a server that refuses the modern one.
pub const LEGACY: &str = "2025-11-25";

/// Who is asking, and how much it may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `user-agent` of every request, and the `clientInfo` name.
    pub user_agent: &'static str,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Largest answer read.
    pub max_body: usize,
    /// Pages of one list followed at most.
    pub max_pages: usize,
}

/// Why a request gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The server answered, refusing the request (an HTTP 4xx or a JSON-RPC error): another
    /// protocol version may work.
    #[error("{0}")]
    Refused(String),
    /// Nothing usable came back (unreachable, timed out, 5xx, unreadable).
    #[error("{0}")]
    Broken(String),
}

/// What a server offers (its `server/discover` or `initialize` answer's `capabilities`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub tools: bool,
    pub resources: bool,
    pub prompts: bool,
}

/// The protocol the client speaks with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Era {
    /// Not opened yet.
    Closed,
    /// 2026-07-28: stateless, the version on every request.
    Modern,
    /// A 2025-11-25 (or older) session: its id (if the server gave one) and version.
    Session { id: Option<String>, version: String },
}

/// One MCP conversation with one registry server.
pub struct McpClient {
    connect: (String, u16),
    authority: String,
    path: String,
    credential: Option<(String, String)>,
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    limits: Limits,
    era: Era,
    next_id: u64,
}

impl McpClient {
    /// A client for `server` (its first endpoint); `system_ca` is `envoy.system_ca_file`.
    pub fn new(server: &Server, system_ca: &str, limits: Limits) -> Result<McpClient, Failure> {
        let broken = |reason: String| Failure::Broken(reason);
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
                        .map_err(|e| broken(format!("cannot read the system CA bundle {system_ca}: {e}")))?,
                };
                let mut roots = tokio_rustls::rustls::RootCertStore::empty();
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| broken(format!("unreadable CA certificate: {e}")))?;
                    roots.add(cert).map_err(|e| broken(format!("unusable CA certificate: {e}")))?;
                }
                let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
                    tokio_rustls::rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| broken(format!("TLS: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = match &tls.verify {
                    VerifyName::Dns(name) => rustls_pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| broken(format!("TLS name {name}: {e}")))?,
                    VerifyName::Ip(ip) => rustls_pki_types::ServerName::IpAddress((*ip).into()),
                };
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            (Scheme::Https, None) => return Err(broken("https server without TLS settings".to_string())),
            (Scheme::Http, _) => None,
        };
        Ok(McpClient {
            connect: (host, upstream.port),
            authority: upstream.authority(),
            path: upstream.path.clone(),
            credential,
            tls,
            limits,
            era: Era::Closed,
            next_id: 1,
        })
    }

    /// Opens the conversation (2026-07-28, else a 2025-11-25 session); what the server offers.
    pub async fn open(&mut self) -> Result<Capabilities, Failure> {
        self.era = Era::Modern;
        let modern = match self.request(method::SERVER_DISCOVER, json!({})).await {
            Ok(answer) => return capabilities_of(&answer, method::SERVER_DISCOVER),
            Err(Failure::Refused(modern)) => modern,
            Err(broken) => return Err(broken),
        };
        self.era = Era::Session { id: None, version: LEGACY.to_string() };
        let params = json!({
            "protocolVersion": LEGACY,
            "capabilities": {},
            "clientInfo": {"name": self.limits.user_agent.split('/').next().unwrap_or("meshgate"), "version": env!("CARGO_PKG_VERSION")},
        });
        let id = self.take_id();
        let (headers, answer) = self.post(Some(id), method::INITIALIZE, params).await.map_err(|e| {
            let (Failure::Refused(legacy) | Failure::Broken(legacy)) = e;
            Failure::Broken(format!("{modern}; {LEGACY}: {legacy}"))
        })?;
        let answer = answer.ok_or_else(|| Failure::Broken(format!("{}: no answer", method::INITIALIZE)))?;
        refused_by_error(&answer, method::INITIALIZE)?;
        let value: Value = serde_json::from_slice(&answer)
            .map_err(|e| Failure::Broken(format!("{}: unreadable answer: {e}", method::INITIALIZE)))?;
        let version = value.pointer("/result/protocolVersion").and_then(Value::as_str).unwrap_or(LEGACY).to_string();
        self.era = Era::Session { id: headers.get("mcp-session-id").cloned(), version };
        self.post(None, "notifications/initialized", json!({})).await?;
        capabilities_of(&answer, method::INITIALIZE)
    }

    /// Ends a 2025-11-25 session (`DELETE`); nothing to do otherwise. Best effort.
    pub async fn close(&mut self) {
        if let Era::Session { id: Some(id), version } = &self.era {
            let headers = vec![("mcp-session-id", id.clone()), ("mcp-protocol-version", version.clone())];
            let _ = self.send("DELETE", &headers, None).await;
        }
        self.era = Era::Closed;
    }

    /// Every page of a paginated list (`list_method`, items under `array`): each answer's
    /// exact text, checked to carry a `result` with that array.
    pub async fn list_all(&mut self, list_method: &str, array: &str) -> Result<Vec<Vec<u8>>, Failure> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..self.limits.max_pages {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let answer = self.request(list_method, params).await?;
            let broken = |reason: String| Failure::Broken(format!("{list_method}: {reason}"));
            let strict = jsonrpc::validate_strict(&answer).map_err(|e| broken(e.to_string()))?;
            let Some(result) = strict.root().get("result").filter(|r| r.kind() == JsonKind::Object) else {
                return Err(broken("the answer has no result".to_string()));
            };
            if result.get(array).is_none_or(|a| a.kind() != JsonKind::Array) {
                return Err(broken(format!("the result has no `{array}` array")));
            }
            cursor =
                result.get("nextCursor").and_then(|c| c.as_str()).map(|c| c.into_owned()).filter(|c| !c.is_empty());
            pages.push(answer);
            if cursor.is_none() {
                return Ok(pages);
            }
        }
        Err(Failure::Broken(format!("{list_method}: more than {} pages", self.limits.max_pages)))
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// One request in the open era; the exact text of its answer, a result (a JSON-RPC
    /// error is [`Failure::Refused`]).
    async fn request(&mut self, rpc_method: &str, mut params: Value) -> Result<Vec<u8>, Failure> {
        if self.era == Era::Modern {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
        }
        let id = self.take_id();
        let (_, answer) = self.post(Some(id), rpc_method, params).await?;
        let answer = answer.ok_or_else(|| Failure::Broken(format!("{rpc_method}: no answer")))?;
        refused_by_error(&answer, rpc_method)?;
        Ok(answer)
    }

    /// POSTs one message (a request when `id` is set, else a notification) with the open
    /// era's headers: the response headers and, for a request, the exact text of the answer
    /// carrying its id.
    async fn post(
        &mut self,
        id: Option<u64>,
        rpc_method: &str,
        params: Value,
    ) -> Result<(HashMap<String, String>, Option<Vec<u8>>), Failure> {
        let mut message = json!({"jsonrpc": "2.0", "method": rpc_method, "params": params});
        if let Some(id) = id {
            message["id"] = json!(id);
        }
        let mut headers = Vec::new();
        match &self.era {
            Era::Modern => {
                headers.push(("mcp-protocol-version", MODERN.to_string()));
                headers.push(("mcp-method", rpc_method.to_string()));
            }
            Era::Session { id, version } if rpc_method != method::INITIALIZE => {
                headers.push(("mcp-protocol-version", version.clone()));
                if let Some(id) = id {
                    headers.push(("mcp-session-id", id.clone()));
                }
            }
            Era::Session { .. } | Era::Closed => {}
        }
        let (status, response_headers, body) = self.send("POST", &headers, Some(&message)).await?;
        if (400..500).contains(&status) {
            // A JSON-RPC error in a 4xx answer says more than the status.
            let error = id.and_then(|id| answer_in(&body, &response_headers, id)).and_then(|a| error_text(&a));
            return Err(Failure::Refused(format!(
                "{rpc_method}: HTTP {status}{}",
                error.map_or(String::new(), |e| format!(": {e}"))
            )));
        }
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            return Err(Failure::Broken(format!(
                "{rpc_method}: HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        let Some(id) = id else { return Ok((response_headers, None)) };
        match answer_in(&body, &response_headers, id) {
            Some(answer) => Ok((response_headers, Some(answer))),
            None => Err(Failure::Broken(format!("{rpc_method}: no JSON-RPC response with id {id} in the answer"))),
        }
    }

    /// One HTTP/1.1 exchange on a fresh connection, bounded by the timeout: status, headers
    /// (lower-case names), body.
    async fn send(
        &self,
        http_method: &str,
        extra: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(u16, HashMap<String, String>, Bytes), Failure> {
        let timeout = self.limits.timeout;
        match tokio::time::timeout(timeout, self.send_unbounded(http_method, extra, body)).await {
            Ok(answer) => answer.map_err(Failure::Broken),
            Err(_) => Err(Failure::Broken(format!("no answer within {} ms", timeout.as_millis()))),
        }
    }

    async fn send_unbounded(
        &self,
        http_method: &str,
        extra: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(u16, HashMap<String, String>, Bytes), String> {
        let mut request = http::Request::builder()
            .method(http_method)
            .uri(&self.path)
            .header("host", &self.authority)
            .header("user-agent", self.limits.user_agent)
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
        let tcp = TcpStream::connect((self.connect.0.trim_matches(['[', ']']), self.connect.1))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.authority))?;
                exchange(stream, request, self.limits.max_body).await
            }
            None => exchange(tcp, request, self.limits.max_body).await,
        }
    }
}

async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
    max_body: usize,
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
            match Limited::new(response.into_body(), max_body).collect().await {
                Ok(body) => Ok((status, headers, body.to_bytes())),
                Err(e) => Err(format!("reading the answer: {e}")),
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The exact text of the JSON-RPC response with `id` in an answer: the body of a JSON
/// answer, or the data of the SSE event carrying it (`content-type: text/event-stream`).
fn answer_in(body: &[u8], headers: &HashMap<String, String>, id: u64) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let answers = |message: &Value| {
        message.get("id").and_then(Value::as_u64) == Some(id)
            && (message.get("result").is_some() || message.get("error").is_some())
    };
    let sse = headers.get("content-type").is_some_and(|t| t.to_ascii_lowercase().starts_with("text/event-stream"));
    if !sse {
        let message: Value = serde_json::from_str(text).ok()?;
        return answers(&message).then(|| body.to_vec());
    }
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    for event in normalized.split("\n\n") {
        let data: Vec<&str> =
            event.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
        if data.is_empty() {
            continue;
        }
        let data = data.join("\n");
        if serde_json::from_str::<Value>(&data).is_ok_and(|m| answers(&m)) {
            return Some(data.into_bytes());
        }
    }
    None
}

/// `code: message` of a JSON-RPC error answer.
fn error_text(answer: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(answer).ok()?;
    let error = value.get("error")?;
    let code = error.get("code").and_then(Value::as_i64).unwrap_or_default();
    let text = error.get("message").and_then(Value::as_str).unwrap_or_default();
    Some(format!("JSON-RPC error {code}: {text}"))
}

/// A JSON-RPC error answer as [`Failure::Refused`].
fn refused_by_error(answer: &[u8], rpc_method: &str) -> Result<(), Failure> {
    match error_text(answer) {
        Some(error) => Err(Failure::Refused(format!("{rpc_method}: {error}"))),
        None => Ok(()),
    }
}

/// The capabilities of a `server/discover` or `initialize` answer.
fn capabilities_of(answer: &[u8], rpc_method: &str) -> Result<Capabilities, Failure> {
    let value: Value =
        serde_json::from_slice(answer).map_err(|e| Failure::Broken(format!("{rpc_method}: unreadable answer: {e}")))?;
    let capabilities = value.pointer("/result/capabilities").unwrap_or(&Value::Null);
    let offered = |key: &str| capabilities.get(key).is_some_and(Value::is_object);
    Ok(Capabilities { tools: offered("tools"), resources: offered("resources"), prompts: offered("prompts") })
}

#[cfg(test)]
mod tests;
