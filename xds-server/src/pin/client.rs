//! A small MCP client over streamable HTTP for `meshgate pin` and the drift view: the
//! official protocol as an SDK client speaks it (`initialize`, `notifications/initialized`,
//! then paginated `tools/list`, `resources/list`, `prompts/list`), answers read as JSON bodies
//! or SSE streams. It keeps every answer's exact text: definitions are hashed from what the
//! server sent, not from a re-serialization.
//!
//! Each request is its own HTTP/1.1 connection (plain or TLS with the server's registry
//! trust), with the server's registry credentials and the session id the server gave.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshgate_core::jsonrpc::{self, JsonKind};
use meshgate_core::mcp::method;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls;

use crate::registry::{Registry, Scheme, Server, Trust};

/// The protocol version `pin` asks for (the SDKs' session-based era).
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// Most pages of one list followed.
const MAX_PAGES: usize = 1000;
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why a server could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{server}: cannot connect to {url}: {reason}")]
    Connect { server: String, url: String, reason: String },
    #[error("{server}: {method} failed: {reason}")]
    Request { server: String, method: String, reason: String },
}

/// What a server offers (from its `initialize` answer).
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub tools: bool,
    pub resources: bool,
    pub prompts: bool,
}

/// One MCP session with one registry server.
pub struct McpClient {
    server: String,
    scheme: Scheme,
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    credential: Option<(String, String)>,
    session: Option<String>,
    version: Option<String>,
    next_id: u64,
    timeout: Duration,
}

impl McpClient {
    /// A client for `server` of `registry` (its first endpoint).
    pub fn new(registry: &Registry, server: &Server) -> Result<Self, ClientError> {
        let upstream = &server.upstream;
        let url = format!("{}://{}{}", upstream.scheme.as_str(), upstream.authority(), upstream.path);
        let connect_error =
            |reason: String| ClientError::Connect { server: server.name.clone(), url: url.clone(), reason };
        let tls = match &server.tls {
            None => None,
            Some(tls) => {
                let pem = match &tls.trust {
                    Trust::CaFile { pem, .. } => pem.clone(),
                    Trust::System => std::fs::read_to_string(&registry.envoy.system_ca_file)
                        .map_err(|e| connect_error(format!("cannot read {}: {e}", registry.envoy.system_ca_file)))?,
                };
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| connect_error(format!("bad CA certificate: {e}")))?;
                    roots.add(cert).map_err(|e| connect_error(format!("bad CA certificate: {e}")))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| connect_error(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = match &tls.verify {
                    crate::registry::VerifyName::Dns(name) => ServerName::try_from(name.clone())
                        .map_err(|e| connect_error(format!("bad server name: {e}")))?,
                    crate::registry::VerifyName::Ip(ip) => ServerName::IpAddress((*ip).into()),
                };
                Some((Arc::new(config), name))
            }
        };
        let credential =
            server.credentials.as_ref().map(|c| (c.header.clone(), format!("{}{}", c.prefix, c.value.expose())));
        Ok(Self {
            server: server.name.clone(),
            scheme: upstream.scheme,
            host: upstream.host.to_string(),
            port: upstream.port,
            authority: upstream.authority(),
            path: upstream.path.clone(),
            tls,
            credential,
            session: None,
            version: None,
            next_id: 1,
            timeout: if server.timeout.is_zero() {
                Duration::from_secs(30)
            } else {
                server.timeout.min(Duration::from_secs(60))
            },
        })
    }

    /// `initialize` and `notifications/initialized`; what the server offers.
    pub async fn initialize(&mut self) -> Result<Capabilities, ClientError> {
        let params = serde_json::json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "meshgate-pin", "version": env!("CARGO_PKG_VERSION")},
        });
        let answer = self.request(method::INITIALIZE, params).await?;
        let value: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| self.fail(method::INITIALIZE, e))?;
        let result = &value["result"];
        self.version = result["protocolVersion"].as_str().map(String::from);
        let capabilities = &result["capabilities"];
        let offered = |key: &str| capabilities.get(key).is_some_and(serde_json::Value::is_object);
        self.send(None, "notifications/initialized", serde_json::json!({})).await?;
        Ok(Capabilities { tools: offered("tools"), resources: offered("resources"), prompts: offered("prompts") })
    }

    /// Every item of a paginated list: each answer's exact text and the item array's key.
    pub async fn list_all(&mut self, list_method: &str, array: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => serde_json::json!({ "cursor": c }),
                None => serde_json::json!({}),
            };
            let answer = self.request(list_method, params).await?;
            let strict = jsonrpc::validate_strict(&answer).map_err(|e| self.fail(list_method, e))?;
            let result = strict.root().get("result").filter(|r| r.kind() == JsonKind::Object);
            let Some(result) = result else {
                return Err(self.fail(list_method, "answer has no result"));
            };
            if result.get(array).is_none_or(|a| a.kind() != JsonKind::Array) {
                return Err(self.fail(list_method, format!("answer has no {array} array")));
            }
            cursor = result.get("nextCursor").and_then(|c| c.as_str()).map(|c| c.into_owned());
            pages.push(answer);
            if cursor.is_none() {
                return Ok(pages);
            }
        }
        Err(self.fail(list_method, format!("more than {MAX_PAGES} pages")))
    }

    fn fail(&self, method: &str, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Request { server: self.server.clone(), method: method.to_string(), reason: reason.to_string() }
    }

    /// One request; the exact text of its JSON-RPC answer (a result: errors fail).
    async fn request(&mut self, method: &str, params: serde_json::Value) -> Result<Vec<u8>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let answer = self.send(Some(id), method, params).await?;
        let answer = answer.ok_or_else(|| self.fail(method, "no answer"))?;
        let value: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| self.fail(method, e))?;
        if let Some(error) = value.get("error") {
            return Err(self.fail(method, format!("JSON-RPC error {error}")));
        }
        Ok(answer)
    }

    /// POSTs one message; for a request, the answer with its id (JSON or SSE).
    async fn send(
        &mut self,
        id: Option<u64>,
        method: &str,
        params: serde_json::Value,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut message = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params});
        if let Some(id) = id {
            message["id"] = serde_json::json!(id);
        }
        let body = message.to_string();
        let mut builder = http::Request::post(self.path.as_str())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream");
        if let Some((name, value)) = &self.credential {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(session) = &self.session {
            builder = builder.header("mcp-session-id", session.as_str());
        }
        if let Some(version) = &self.version {
            builder = builder.header("mcp-protocol-version", version.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|e| self.fail(method, e))?;
        let exchange = self.exchange(request);
        let (status, session, content_type, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.fail(method, format!("no answer within {:?}", self.timeout)))??;
        if let Some(session) = session {
            self.session = Some(session);
        }
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes);
            return Err(self.fail(method, format!("HTTP {status}: {}", text.chars().take(200).collect::<String>())));
        }
        let Some(id) = id else { return Ok(None) };
        if content_type.starts_with("text/event-stream") {
            let text = String::from_utf8(bytes).map_err(|e| self.fail(method, e))?;
            return Ok(Some(
                answer_in_events(&text, id).ok_or_else(|| self.fail(method, "its event stream carried no answer"))?,
            ));
        }
        Ok(Some(bytes))
    }

    async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Option<String>, String, Vec<u8>), ClientError> {
        let connect = |e: &dyn std::fmt::Display| ClientError::Connect {
            server: self.server.clone(),
            url: format!("{}://{}{}", self.scheme.as_str(), self.authority, self.path),
            reason: e.to_string(),
        };
        let tcp = tokio::net::TcpStream::connect((self.host.trim_matches(['[', ']']), self.port))
            .await
            .map_err(|e| connect(&e))?;
        match &self.tls {
            None => self.over(TokioIo::new(tcp), request).await,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| connect(&e))?;
                self.over(TokioIo::new(tls), request).await
            }
        }
    }

    async fn over<T>(
        &self,
        io: T,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Option<String>, String, Vec<u8>), ClientError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let fail = |e: &dyn std::fmt::Display| self.fail("HTTP", e);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| fail(&e))?;
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
        let session = header("mcp-session-id");
        let content_type = header("content-type").unwrap_or_default().to_ascii_lowercase();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES);
        let bytes = limited.collect().await.map_err(|e| fail(&e))?.to_bytes().to_vec();
        driver.abort();
        Ok((status, session, content_type, bytes))
    }
}

/// The data of the first SSE event that is a JSON-RPC response with id `id`.
fn answer_in_events(text: &str, id: u64) -> Option<Vec<u8>> {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    for event in normalized.split("\n\n") {
        let data: Vec<&str> =
            event.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
        if data.is_empty() {
            continue;
        }
        let data = data.join("\n");
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else { continue };
        if value.get("id") == Some(&serde_json::json!(id))
            && (value.get("result").is_some() || value.get("error").is_some())
        {
            return Some(data.into_bytes());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_found_among_other_events() {
        let text = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\r\ndata: \"result\":{}}\r\n\r\n";
        assert_eq!(answer_in_events(text, 2).unwrap(), b"{\"jsonrpc\":\"2.0\",\"id\":2,\n\"result\":{}}");
        assert_eq!(answer_in_events(text, 3), None);
    }
}
