//! Discovery through a virtual server ([`crate::virtual_server`]): `server/discover`,
//! `tools/list`, `prompts/list`, `resources/list` and `resources/templates/list` are
//! answered by the filter itself from one HTTP callout per backing server, all started at
//! once. The code does not depend on the protocol era of the request (the list answers are
//! the same JSON-RPC results in every era).
//!
//! - Each backing server is called the way its own route calls it ([`Upstream`]: cluster,
//!   upstream path, `Host`), with the request body its own endpoint would forward (read
//!   strictly, checked against its headers, request redaction applied), bounded by
//!   [`FAN_OUT_TIMEOUT_MS`].
//! - Each answer is governed exactly as the same request's answer through
//!   `<route_prefix><server>`: the backend's [`Exchange`] is built by the same
//!   `govern_read` (RBAC of the list, response redaction), and the answer is read with the
//!   same strict readers (a JSON body, or the SSE stream's events) and list filter.
//! - Kept items are renamed to their exposed names (only the name value is replaced in the
//!   item's own text; every other field is kept byte for byte), items outside the virtual
//!   server's selection are dropped, and the lists are concatenated in backing-server order.
//! - A backend that fails (no route to it, reset, timeout, an HTTP error, a JSON-RPC error,
//!   an answer that cannot be read exactly) is omitted: the answer is still given, without
//!   it, and each omission is reported to the caller of [`FanOut::answer`] (the pipeline
//!   logs and counts it).
//! - Results carry `resultType: "complete"`, `ttlMs` = the smallest of the answering
//!   backends' (0 when one gave none, and 0 when any backend was omitted: an incomplete list
//!   must not be reused as whole) and `cacheScope: "private"` (the narrowest: the list is
//!   filtered for the caller, whatever scope each backend declared).
//! - Resources and resource templates keep their URIs (never renamed); an item is kept only
//!   when its URI routes back to the backend that listed it
//!   ([`VirtualServer::resource_server`]), so what is listed can be read.
//! - Pagination: a merged answer's `nextCursor` carries every backend's own next cursor, and
//!   a request with it asks only those backends ([`super::virtual_pagination`]).

use serde_json::Value;

use crate::jsonrpc::{self, code, JsonKind};
use crate::mcp::{self, header, method, ListShape, ReadMessage, ResourceKind};
use crate::policy::Policy;
use crate::redact::RedactionCounts;
use crate::reject::Rejection;
use crate::sse::{EventData, Rewritten, SseRewriter};
use crate::virtual_server::{Upstream, VirtualServer};

use super::virtual_cache::CacheKey;
use super::{media_type, virtual_pagination, BodyKind, Exchange, Gateway, PendingRequest};

/// Longest a discovery callout may take before its backend is omitted.
pub const FAN_OUT_TIMEOUT_MS: u64 = 5_000;

/// The `cacheScope` of every merged answer: it is filtered for the caller's roles.
const CACHE_SCOPE: &str = "private";

/// One request the filter sends itself (an HTTP callout), owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutRequest {
    pub cluster: String,
    /// Pseudo-headers (`:method`, `:path`, `:authority`) included; lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// The answer to a callout, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutResponse {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a fan-out asks each backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Discover,
    List(ListShape),
}

/// One backing server of a fan-out.
#[derive(Debug)]
pub struct Backend {
    pub server: String,
    pub request: CalloutRequest,
    /// Governs the backend's answer as the same request through its own endpoint.
    exchange: Exchange,
}

/// A backing server left out of an answer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Omission {
    pub server: String,
    pub reason: String,
}

/// A discovery request being answered from its backing servers.
#[derive(Debug)]
pub struct FanOut {
    pub virtual_server: String,
    request_id: Value,
    ask: Ask,
    /// Backends to call, in backing-server order.
    pub backends: Vec<Backend>,
    /// Backends left out before any call (no way to reach them).
    pub skipped: Vec<Omission>,
    /// The list method asked (for the merged cursor).
    method: String,
    /// The virtual server, for renaming (a copy: the answer is built after the callouts).
    selection: VirtualServer,
    /// Lists only: what the merged answer is cached under ([`super::virtual_cache`]).
    cache_key: Option<CacheKey>,
    /// The caller's consumer name (the key of answers not declared public).
    consumer: String,
}

/// A merged list answer without its request id: what is cached, and what a client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedList {
    /// `tools`, `prompts`, `resources` or `resourceTemplates`.
    pub array: &'static str,
    /// The kept items' texts, comma-separated.
    pub items: Vec<u8>,
    /// The client's next cursor ([`virtual_pagination`]).
    pub next_cursor: Option<String>,
    pub ttl_ms: u64,
    /// Every answering backend declared `cacheScope: "public"`.
    pub public: bool,
}

impl MergedList {
    /// Bytes held (for the cache's bound).
    pub fn size(&self) -> usize {
        self.items.len() + self.next_cursor.as_ref().map_or(0, String::len)
    }

    /// The JSON-RPC response to request `id`.
    pub fn body(&self, id: &Value) -> Vec<u8> {
        let id = id.to_string();
        let mut out = Vec::with_capacity(self.items.len() + 200);
        out.extend_from_slice(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"{}\":[", self.array).as_bytes(),
        );
        // The item texts are the backends' own, already validated: spliced in as they are.
        out.extend_from_slice(&self.items);
        out.push(b']');
        if let Some(cursor) = &self.next_cursor {
            // Base64url after a fixed ASCII prefix: nothing to escape.
            out.extend_from_slice(format!(",\"nextCursor\":\"{cursor}\"").as_bytes());
        }
        out.extend_from_slice(
            format!(",\"resultType\":\"complete\",\"ttlMs\":{},\"cacheScope\":\"{CACHE_SCOPE}\"}}}}", self.ttl_ms)
                .as_bytes(),
        );
        out
    }
}

/// Whether `method` is answered by a fan-out on a virtual server.
pub(super) fn is_fan_out_method(method: &str) -> bool {
    matches!(
        method,
        method::SERVER_DISCOVER
            | method::TOOLS_LIST
            | method::PROMPTS_LIST
            | method::RESOURCES_LIST
            | method::RESOURCES_TEMPLATES_LIST
    )
}

impl Gateway {
    /// Plans the fan-out of a discovery request `read` from `body` on `virtual_server`
    /// (already checked: modern era, headers agree with the body).
    pub(super) fn plan_fan_out(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        body: &[u8],
        read: ReadMessage,
    ) -> Result<FanOut, Rejection> {
        let id = read.message.id().cloned().unwrap_or(Value::Null);
        let method_name = read.message.method().unwrap_or_default().to_string();
        let ask = match ResourceKind::of_list_method(&method_name) {
            Some(shape) => Ask::List(shape),
            None => Ask::Discover,
        };
        // A later page: only the servers the cursor names, each with its own cursor.
        let mut client_cursor = None;
        let pages = match ask {
            Ask::List(shape) => {
                let doc =
                    jsonrpc::validate_strict(body).map_err(|_| invalid_params("the request is not valid JSON", &id))?;
                match virtual_pagination::cursor_param(&doc) {
                    None => None,
                    Some(Err(())) => return Err(invalid_params("params.cursor must be a string", &id)),
                    Some(Ok(cursor)) => {
                        let pages = virtual_pagination::decode(&cursor, virtual_server, &method_name, shape)
                            .map_err(|why| invalid_params(&why, &id))?;
                        client_cursor = Some(cursor);
                        Some(pages)
                    }
                }
            }
            Ask::Discover => None,
        };
        let servers: Vec<(&str, Option<&str>)> = match (ask, &pages) {
            (Ask::List(_), Some(pages)) => pages.iter().map(|(s, c)| (s.as_str(), Some(c.as_str()))).collect(),
            (Ask::List(shape), None) => virtual_server.servers_selecting(shape.kind).map(|s| (s, None)).collect(),
            (Ask::Discover, _) => virtual_server.servers().iter().map(|s| (s.as_str(), None)).collect(),
        };
        let mut backends = Vec::new();
        let mut skipped = Vec::new();
        for (server, own_cursor) in servers {
            let upstream = match self.config.upstreams.get(server) {
                Some(u) if !u.credentials => u,
                Some(_) => {
                    skipped.push(Omission {
                        server: server.to_string(),
                        reason: "its upstream credential is injected by its route and is not available to discovery callouts".to_string(),
                    });
                    continue;
                }
                None => {
                    skipped.push(Omission {
                        server: server.to_string(),
                        reason: "the configuration does not say how to reach it (upstreams)".to_string(),
                    });
                    continue;
                }
            };
            // A later page: the same request with the server's own cursor.
            let paged = match own_cursor {
                Some(cursor) => {
                    let doc = jsonrpc::validate_strict(body)
                        .map_err(|_| invalid_params("the request is not valid JSON", &id))?;
                    let rewritten = virtual_pagination::with_cursor(body, &doc, cursor)
                        .ok_or_else(|| invalid_params("params.cursor must be a string", &id))?;
                    let own_read = mcp::read_message(&rewritten)
                        .map_err(|_| invalid_params("the request is not readable", &id))?;
                    Some((rewritten, own_read))
                }
                None => None,
            };
            let (own_body, own_read) = match &paged {
                Some((b, r)) => (b.as_slice(), r.clone()),
                None => (body, read.clone()),
            };
            // Governed as the same request to the server's own endpoint.
            let mut own = pending.clone();
            own.via_virtual = false;
            own.server = server.to_string();
            let exchange = match self.govern_read(&own, own_body, own_read) {
                Ok(exchange) => exchange,
                Err(r) => {
                    skipped.push(Omission { server: server.to_string(), reason: r.message });
                    continue;
                }
            };
            // What the server's own endpoint would forward: the body after request redaction.
            let forwarded = exchange.rewritten_request.as_deref().unwrap_or(own_body);
            let request = callout_request(upstream, pending, &method_name, forwarded);
            backends.push(Backend { server: server.to_string(), request, exchange });
        }
        Ok(FanOut {
            virtual_server: virtual_server.name.clone(),
            request_id: id,
            ask,
            backends,
            skipped,
            cache_key: match ask {
                Ask::List(_) => {
                    let mut roles = pending.consumer().roles.clone();
                    roles.sort();
                    roles.dedup();
                    Some(CacheKey {
                        virtual_server: virtual_server.name.clone(),
                        method: method_name.clone(),
                        cursor: client_cursor,
                        roles,
                        consumer: None,
                    })
                }
                Ask::Discover => None,
            },
            consumer: pending.consumer().name.clone(),
            method: method_name.clone(),
            selection: virtual_server.clone(),
        })
    }
}

/// A -32602 about the request's own params, with its id.
fn invalid_params(why: &str, id: &Value) -> Rejection {
    Rejection::new(200, code::INVALID_PARAMS, crate::reject::printable(why)).with_id(Some(id))
}

/// The callout that asks `upstream` what the client asked.
fn callout_request(upstream: &Upstream, pending: &PendingRequest, method_name: &str, body: &[u8]) -> CalloutRequest {
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), upstream.path.clone()),
        (":authority".to_string(), upstream.authority.clone()),
        ("content-type".to_string(), "application/json".to_string()),
        ("accept".to_string(), "application/json, text/event-stream".to_string()),
        (header::METHOD.to_string(), method_name.to_string()),
    ];
    let version = pending.routing.version.clone().unwrap_or_else(|| mcp::MODERN_PROTOCOL_VERSIONS[0].to_string());
    headers.push((header::PROTOCOL_VERSION.to_string(), version));
    CalloutRequest { cluster: upstream.cluster.clone(), headers, body: body.to_vec(), timeout_ms: FAN_OUT_TIMEOUT_MS }
}

impl FanOut {
    /// The merged answer (a JSON-RPC response body for the client) from the backends'
    /// answers, `answers[i]` for `self.backends[i]` (`Err`: the callout failed, and why),
    /// and every backend omitted from it.
    pub fn answer(
        &self,
        answers: &[Result<CalloutResponse, String>],
        policy: &Policy,
        counts: &mut RedactionCounts,
    ) -> (Vec<u8>, Vec<Omission>) {
        let (body, omitted, _) = self.answer_cacheable(answers, policy, counts);
        (body, omitted)
    }

    /// [`Self::answer`], and for a list the merged answer itself (to cache).
    pub fn answer_cacheable(
        &self,
        answers: &[Result<CalloutResponse, String>],
        policy: &Policy,
        counts: &mut RedactionCounts,
    ) -> (Vec<u8>, Vec<Omission>, Option<MergedList>) {
        let mut omitted = self.skipped.clone();
        let mut results: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let outcome = match answers.get(i) {
                Some(Ok(response)) => backend.read(response, &self.request_id, policy, counts),
                Some(Err(why)) => Err(why.clone()),
                None => Err("no answer".to_string()),
            };
            match outcome {
                Ok(message) => results.push((i, message)),
                Err(reason) => omitted.push(Omission { server: backend.server.clone(), reason }),
            }
        }
        match self.ask {
            Ask::List(shape) => {
                let list = self.merge_lists(shape, &results, &mut omitted);
                (list.body(&self.request_id), omitted, Some(list))
            }
            Ask::Discover => (self.merge_discover(&results, &mut omitted), omitted, None),
        }
    }

    /// The cache key of a list request (`None` for discovery) and the caller's name.
    pub(super) fn cache_key(&self) -> Option<(&CacheKey, &str)> {
        self.cache_key.as_ref().map(|k| (k, self.consumer.as_str()))
    }

    /// The request's id.
    pub(super) fn request_id(&self) -> &Value {
        &self.request_id
    }

    fn respond(&self, result: Value) -> Vec<u8> {
        let response = serde_json::json!({"jsonrpc": "2.0", "id": self.request_id, "result": result});
        response.to_string().into_bytes()
    }

    /// Every backend's kept items, renamed, in backing-server order.
    fn merge_lists(&self, shape: ListShape, results: &[(usize, Vec<u8>)], omitted: &mut Vec<Omission>) -> MergedList {
        let mut items: Vec<u8> = Vec::new();
        let mut ttl: Option<u64> = None;
        let mut public = true;
        let mut pages: Vec<(String, String)> = Vec::new();
        for (i, message) in results {
            let backend = &self.backends[*i];
            match rename_items(&self.selection, shape, &backend.server, message) {
                Ok(page) => {
                    for item in page.items {
                        if !items.is_empty() {
                            items.push(b',');
                        }
                        items.extend_from_slice(&item);
                    }
                    ttl = Some(ttl.map_or(page.ttl_ms, |t| t.min(page.ttl_ms)));
                    public &= page.public;
                    if let Some(next) = page.next_cursor {
                        pages.push((backend.server.clone(), next));
                    }
                }
                Err(reason) => omitted.push(Omission { server: backend.server.clone(), reason }),
            }
        }
        MergedList {
            array: shape.array,
            items,
            next_cursor: virtual_pagination::encode(&self.virtual_server, &self.method, pages),
            ttl_ms: merged_ttl(ttl, omitted),
            public: public && ttl.is_some(),
        }
    }

    /// Capabilities: those of [`MergedCapabilities`]. Only the modern protocol versions the
    /// filter speaks.
    fn merge_discover(&self, results: &[(usize, Vec<u8>)], omitted: &mut Vec<Omission>) -> Vec<u8> {
        let mut capabilities = MergedCapabilities::default();
        let mut ttl: Option<u64> = None;
        for (i, message) in results {
            let backend = &self.backends[*i];
            let Ok(value) = serde_json::from_slice::<Value>(message) else {
                omitted.push(Omission { server: backend.server.clone(), reason: "unreadable answer".to_string() });
                continue;
            };
            let result = &value["result"];
            capabilities.add(&self.selection, &backend.server, &result["capabilities"]);
            let own = result.get("ttlMs").and_then(Value::as_u64).unwrap_or(0);
            ttl = Some(ttl.map_or(own, |t| t.min(own)));
        }
        let capabilities = capabilities.to_json();
        let mut result = serde_json::json!({
            "supportedVersions": mcp::MODERN_PROTOCOL_VERSIONS,
            "capabilities": capabilities,
            "resultType": "complete",
            "ttlMs": merged_ttl(ttl, omitted),
            "cacheScope": CACHE_SCOPE,
            "_meta": {"io.modelcontextprotocol/serverInfo": {
                "name": self.virtual_server,
                "version": env!("CARGO_PKG_VERSION"),
            }},
        });
        if let Some(description) = &self.selection.description {
            result["instructions"] = Value::String(description.clone());
        }
        self.respond(result)
    }
}

/// The capabilities a virtual server offers: each one that a backing server which answered
/// offers, for what the virtual server's selection exposes from that server. `tools`,
/// `prompts`, `resources`: that kind is selected from it; `completions` (answered by routing
/// `completion/complete` by its reference): its prompts or resources are selected. Nothing
/// else (logging, subscriptions, tasks, experimental) is offered: the filter answers or routes
/// nothing more.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct MergedCapabilities {
    tools: bool,
    prompts: bool,
    resources: bool,
    completions: bool,
}

impl MergedCapabilities {
    /// Adds what backing server `server` offers (its answer's `capabilities`).
    pub(super) fn add(&mut self, selection: &VirtualServer, server: &str, offered: &Value) {
        let offers = |name: &str| offered.get(name).is_some_and(Value::is_object);
        let selects = |kind| selection.servers_selecting(kind).any(|s| s == server);
        self.tools |= offers("tools") && selects(ResourceKind::Tool);
        self.prompts |= offers("prompts") && selects(ResourceKind::Prompt);
        self.resources |= offers("resources") && selects(ResourceKind::Resource);
        self.completions |= offers("completions") && (selects(ResourceKind::Prompt) || selects(ResourceKind::Resource));
    }

    /// The `capabilities` object the client gets (each offered one as `{}`).
    pub(super) fn to_json(self) -> serde_json::Map<String, Value> {
        let mut capabilities = serde_json::Map::new();
        for (name, offered) in [
            ("tools", self.tools),
            ("prompts", self.prompts),
            ("resources", self.resources),
            ("completions", self.completions),
        ] {
            if offered {
                capabilities.insert(name.to_string(), serde_json::json!({}));
            }
        }
        capabilities
    }
}

impl Backend {
    /// The backend's answer to the request, governed as through its own endpoint: the
    /// one JSON-RPC response (a JSON body, or the response event of an SSE stream), as the
    /// client of `<route_prefix><server>` would have read it. `Err`: why it is omitted.
    fn read(
        &self,
        response: &CalloutResponse,
        id: &Value,
        policy: &Policy,
        counts: &mut RedactionCounts,
    ) -> Result<Vec<u8>, String> {
        if !(200..300).contains(&response.status) || response.status == 202 {
            return Err(format!("HTTP {}", response.status));
        }
        let content_type = response.headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| media_type(v));
        if response.headers.iter().any(|(k, v)| k == "content-encoding" && !v.trim().eq_ignore_ascii_case("identity")) {
            return Err("an encoded answer".to_string());
        }
        let message = match content_type.as_deref() {
            Some("application/json") => {
                match self.exchange.rewrite_body(BodyKind::Json, &response.body, policy, counts) {
                    Some(governed) => governed,
                    None => response.body.clone(),
                }
            }
            Some("text/event-stream") => {
                let mut answer: Option<Vec<u8>> = None;
                let exchange = &self.exchange;
                let mut rewrite = |data: EventData<'_>| {
                    let rewritten = exchange.rewrite_event(data, policy, counts);
                    let text: Option<&[u8]> = match (&rewritten, data) {
                        (Rewritten::Keep, EventData::Text(t)) => Some(t.as_bytes()),
                        (Rewritten::Data(b) | Rewritten::Last(b), _) => Some(b),
                        (Rewritten::Keep, EventData::NotUtf8) => None,
                    };
                    if let Some(text) = text.filter(|t| is_response(t)) {
                        answer.get_or_insert_with(|| text.to_vec());
                    }
                    rewritten
                };
                let mut sse = SseRewriter::new();
                sse.feed(&response.body, &mut rewrite);
                sse.finish(&mut rewrite);
                answer.ok_or_else(|| "its event stream carried no answer".to_string())?
            }
            other => return Err(format!("an answer of type {}", other.unwrap_or("(none)"))),
        };
        let doc = jsonrpc::validate_strict(&message).map_err(|_| "an answer that is not valid JSON".to_string())?;
        let root = doc.root();
        let [own_id, result, error] = root.fields(["id", "result", "error"]);
        if own_id.map(|i| i.to_value()).as_ref() != Some(id) {
            return Err("an answer to another request".to_string());
        }
        if let Some(error) = error {
            let shown =
                crate::reject::printable(error.get("message").and_then(|m| m.as_str()).unwrap_or_default().as_ref());
            return Err(format!("JSON-RPC error: {shown}"));
        }
        if result.is_none_or(|r| r.kind() != JsonKind::Object) {
            return Err("an answer without a result".to_string());
        }
        Ok(message)
    }
}

/// Whether an SSE event's data is a JSON-RPC response (has `result` or `error`).
fn is_response(data: &[u8]) -> bool {
    jsonrpc::validate_strict(data).ok().is_some_and(|doc| {
        let root = doc.root();
        root.kind() == JsonKind::Object && (root.get("result").is_some() || root.get("error").is_some())
    })
}

/// One backend's page of a merged list.
#[derive(Debug)]
struct Page {
    /// The kept items, renamed.
    items: Vec<Vec<u8>>,
    /// The answer's `ttlMs` (0 when absent).
    ttl_ms: u64,
    /// The answer's `nextCursor`: the backend has another page.
    next_cursor: Option<String>,
    /// The answer declared `cacheScope: "public"`.
    public: bool,
}

/// The smallest `ttlMs` of the answers merged (0 when none answered), and 0 when any
/// backend was omitted: an incomplete list must not be reused as if it were whole.
fn merged_ttl(ttl: Option<u64>, omitted: &[Omission]) -> u64 {
    if omitted.is_empty() {
        ttl.unwrap_or(0)
    } else {
        0
    }
}

/// The items of `server`'s governed list answer that the selection exposes, each the item's
/// own text with its name value replaced by the exposed name (resources keep their URIs and
/// are kept only when they route back to `server`); the answer's `ttlMs` and `nextCursor`
/// (which must be a string when present).
fn rename_items(selection: &VirtualServer, shape: ListShape, server: &str, message: &[u8]) -> Result<Page, String> {
    let doc = jsonrpc::validate_strict(message).map_err(|_| "an answer that is not valid JSON".to_string())?;
    let root = doc.root();
    let result = root.get("result").ok_or_else(|| "an answer without a result".to_string())?;
    let items =
        result.get(shape.array).filter(|a| a.kind() == JsonKind::Array).ok_or_else(|| "no item array".to_string())?;
    let ttl_ms = result.get("ttlMs").and_then(|t| t.to_value().as_u64()).unwrap_or(0);
    let next_cursor = match result.get("nextCursor") {
        None => None,
        Some(c) if c.kind() == JsonKind::Null => None,
        Some(c) => match c.as_str() {
            Some(c) => Some(c.into_owned()),
            None => return Err("a nextCursor that is not a string".to_string()),
        },
    };
    let mut out = Vec::new();
    for item in items.elements() {
        let Some(name_value) = item.get(shape.field).filter(|n| n.kind() == JsonKind::String) else {
            continue;
        };
        let Some(own) = name_value.as_str() else {
            continue;
        };
        let Some(exposed) = selection.exposed_name(shape.kind, server, &own) else {
            continue;
        };
        let text = item.text();
        if exposed == *own {
            out.push(text.as_bytes().to_vec());
            continue;
        }
        let name_text = name_value.text();
        let start = (name_text.as_ptr() as usize).checked_sub(text.as_ptr() as usize);
        let Some(start) = start.filter(|s| s + name_text.len() <= text.len()) else {
            continue;
        };
        let encoded = serde_json::to_string(&exposed).map_err(|e| e.to_string())?;
        let mut renamed = Vec::with_capacity(text.len() + encoded.len());
        renamed.extend_from_slice(&text.as_bytes()[..start]);
        renamed.extend_from_slice(encoded.as_bytes());
        renamed.extend_from_slice(&text.as_bytes()[start + name_text.len()..]);
        out.push(renamed);
    }
    let public = result.get("cacheScope").and_then(|c| c.as_str()).is_some_and(|c| c == "public");
    Ok(Page { items: out, ttl_ms, next_cursor, public })
}

#[cfg(test)]
mod tests;
