//! Tool discovery for `/catalog`: meshgate asks every registered server which tools it has,
//! as an MCP client, straight to the server (not through Envoy, so no policy applies: the
//! catalog is the operator's view of everything that exists).
//!
//! - Protocol, transport, credentials and trust: [`crate::mcp_client`] (2026-07-28
//!   `server/discover`, else the 2025-11-25 session, ended with `DELETE`); `tools/list` when
//!   the server offers tools, every page followed (`nextCursor`, at most [`MAX_PAGES`]).
//! - Every request says `user-agent: meshgate-catalog/<version>` ([`USER_AGENT`]).
//! - Bounds: one server's discovery (every request of it) takes at most [`SERVER_TIMEOUT`];
//!   an answer larger than [`MAX_BODY`] is refused. Servers are asked concurrently.
//! - Freshness: at start, after every registry change that publishes a new snapshot, and
//!   every [`REFRESH_INTERVAL`]. A failure keeps the last good list (marked `stale`) and
//!   says why.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meshgate_core::mcp::method;
use serde_json::Value;
use tokio::sync::watch;

use crate::control::{unix_now, ControlPlane};
use crate::mcp_client::{Limits, McpClient};
use crate::registry::{Registry, Server};

/// How often every server is asked again, registry changes aside, unless `catalog.interval` says otherwise.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Everything one server's discovery may take (connects, handshake, every page).
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from a server.
pub const MAX_BODY: usize = 4 << 20;
/// Pages of `tools/list` followed at most.
pub const MAX_PAGES: usize = 20;

/// Sent with every discovery request, so a server's logs can tell them from clients' requests.
pub const USER_AGENT: &str = concat!("meshgate-catalog/", env!("CARGO_PKG_VERSION"));

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

    /// Forgets every discovery (discovery was turned off).
    fn forget(&self) {
        if let Ok(mut servers) = self.servers.write() {
            servers.clear();
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
/// every `catalog.interval` of the registry ([`REFRESH_INTERVAL`] by default). With
/// `catalog.discover: false` nothing is asked and what was discovered is forgotten.
pub async fn keep_fresh(catalog: Arc<Catalog>, control: Arc<ControlPlane>, mut shutdown: watch::Receiver<bool>) {
    let mut snapshots = control.subscribe();
    loop {
        let mut interval = REFRESH_INTERVAL;
        if let Some(registry) = control.registry() {
            interval = registry.catalog.interval;
            if registry.catalog.discover {
                refresh(&catalog, &registry).await;
            } else {
                catalog.forget();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Every tool of one server ([`McpClient`]: 2026-07-28, else a 2025-11-25 session, closed
/// afterwards). A server that offers no tools has none.
async fn list_tools(server: &Server, system_ca: &str) -> Result<Vec<DiscoveredTool>, String> {
    let limits = Limits { user_agent: USER_AGENT, timeout: SERVER_TIMEOUT, max_body: MAX_BODY, max_pages: MAX_PAGES };
    let mut client = McpClient::new(server, system_ca, limits).map_err(|e| e.to_string())?;
    let capabilities = client.open().await.map_err(|e| e.to_string())?;
    let listed = if capabilities.tools { client.list_all(method::TOOLS_LIST, "tools").await } else { Ok(Vec::new()) };
    client.close().await;
    let mut tools = Vec::new();
    for page in listed.map_err(|e| e.to_string())? {
        let value: Value = serde_json::from_slice(&page).map_err(|e| format!("tools/list: {e}"))?;
        for tool in value.pointer("/result/tools").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return Err("a tool without a `name`".to_string());
            };
            let description = tool.get("description").and_then(Value::as_str).map(str::to_string);
            tools.push(DiscoveredTool { name: name.to_string(), description });
        }
    }
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use serde_json::json;

    use super::*;

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
                        json!({"jsonrpc":"2.0","id":message["id"],"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"t","version":"1"}}})
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
                "POST server/discover ",
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
