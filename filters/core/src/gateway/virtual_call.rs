//! Calls through a virtual server ([`crate::virtual_server`]): the body's exposed name is
//! resolved to a backing server and its own name, the request is rewritten to what that
//! server expects, and then governed exactly as if it had been sent to the server's own
//! endpoint ([`Gateway::on_request_body`] on the rewritten request).
//!
//! What this answers today (the 2026-07-28 era, stateless):
//! - `tools/call` and `prompts/get`: routed by the exposed name. Only the `params.name`
//!   value is replaced, re-serialised as a JSON string at its exact place in the body; the
//!   rest of the bytes are forwarded as sent. `Mcp-Name` is checked against the exposed
//!   name, then rewritten to the own name. The backing server is named in
//!   [`TARGET_HEADER`] for the route to match (the client's own value was removed with every
//!   `x-meshgate-*` header).
//!
//! - `resources/read`: routed by its URI, which is not renamed ([`super::virtual_resources`]).
//!
//! Discovery and the list methods are answered by fan-out ([`super::virtual_fanout`]);
//! messages of the session-based eras (2025-11-25 and earlier) go to
//! [`super::virtual_session`], which routes calls through [`Gateway::route_virtual_call`]
//! too. Everything else is refused with a JSON-RPC error carrying the request's id
//! (2026-07-28 notifications and responses: no backing server to route them to).

use crate::jsonrpc::{self, code, StrictJson};
use crate::mcp::{self, header, Message, ReadError, ResourceKind};
use crate::reject::{printable, Rejection};
use crate::virtual_server::{VirtualServer, TARGET_HEADER};

use super::virtual_fanout::is_fan_out_method;
use super::virtual_session::SessionOp;
use super::{check_routing_headers, unreadable, BodyDecision, Exchange, Gateway, PendingRequest};

/// HTTP status of a JSON-RPC error about what the request names or asks for (an unknown
/// prefix, a member not exposed, a method not answered here): 200, as an MCP server answers
/// an unknown tool or method, so every client reads the JSON-RPC error itself.
const ANSWER_STATUS: u16 = 200;

/// GET (the session-era server stream) and DELETE (session end) have no meaning on a
/// virtual server yet: 405 with a JSON-RPC error.
pub(super) fn method_not_allowed(method: &str) -> Rejection {
    Rejection::new(
        405,
        code::INVALID_REQUEST,
        format!(
            "method {} is not supported on virtual servers: they speak MCP 2026-07-28 (one POST per request, no session)",
            printable(method)
        ),
    )
    .with_header("allow", "POST".to_string())
}

impl Gateway {
    /// Step 2 for a virtual server's request: resolve, rewrite, then govern as the backing
    /// server's own request.
    pub(super) fn on_virtual_request_body(
        &self,
        pending: &PendingRequest,
        body: &[u8],
    ) -> Result<BodyDecision, Rejection> {
        let Some(virtual_server) = self.config.virtual_servers.get(&pending.server) else {
            // The configuration that accepted the path is the one deciding the body.
            return Err(Rejection::new(500, code::INTERNAL_ERROR, "virtual server configuration changed"));
        };
        if let Some(r) = self.request_too_large(pending, body.len() as u64) {
            return Err(r);
        }
        // One read of the body: the message, and where its name lies.
        let doc = jsonrpc::validate_strict(body).map_err(|e| unreadable(ReadError::Json(e)))?;
        let read = mcp::read_message_in(&doc).map_err(unreadable)?;
        // The client's headers must agree with what it sent (exposed names), as anywhere.
        check_routing_headers(&pending.routing, &read.message, read.envelope_version())?;
        let message = &read.message;
        let id = message.id();
        let modern = pending.routing.modern
            || read.envelope_version().flatten().is_some_and(|v| mcp::MODERN_PROTOCOL_VERSIONS.contains(&v));
        if !modern {
            // The session-based eras: one sealed client session over the backends' own.
            return self.on_session_era_body(pending, virtual_server, body, &doc, &read);
        }
        let Message::Request { method, .. } = message else {
            return Err(unsupported(virtual_server, "a notification or response", id));
        };
        if method == mcp::method::PING {
            // Answered here: the virtual server itself is what the client pings.
            let result = serde_json::json!({"resultType": "complete"});
            return Ok(BodyDecision::Session(SessionOp::answered(virtual_server, id, result)));
        }
        if is_fan_out_method(method) {
            let read = read.clone();
            return self.plan_fan_out(pending, virtual_server, body, read).map(BodyDecision::FanOut);
        }
        self.route_virtual_call(pending, virtual_server, body, &doc, &read).map(BodyDecision::Forward)
    }

    /// A `tools/call` or `prompts/get` through `virtual_server`: resolved by its exposed
    /// name, renamed, and governed as the backing server's own request; a `resources/read`:
    /// routed by its URI; a `completion/complete`: routed by its reference, a prompt's
    /// exposed name renamed as for `prompts/get` (both eras).
    pub(super) fn route_virtual_call(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        body: &[u8],
        doc: &StrictJson<'_>,
        read: &mcp::ReadMessage,
    ) -> Result<Exchange, Rejection> {
        let message = &read.message;
        let id = message.id();
        let method = message.method().unwrap_or_default();
        if method == mcp::method::COMPLETION_COMPLETE {
            return self.route_virtual_completion(pending, virtual_server, body, doc, read);
        }
        let kind = match ResourceKind::of_method(method) {
            Some(kind) => kind,
            None => return Err(unsupported(virtual_server, &format!("method {}", printable(method)), id)),
        };
        let Some(target) = message.target() else {
            return Err(Rejection::bad_request(code::INVALID_PARAMS, "the request names nothing").with_id(id));
        };
        self.route_by_name(pending, virtual_server, (body, doc, read), kind, &target.name, NamePlace::Target)
    }

    /// `completion/complete` through `virtual_server`: a `ref/resource` is routed by its URI
    /// (not renamed, as for `resources/read`); a `ref/prompt` by its exposed name, with
    /// `params.ref.name` renamed to the backing server's own. Governed as that server's own
    /// request (the policy decides on the referenced prompt or resource).
    fn route_virtual_completion(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        body: &[u8],
        doc: &StrictJson<'_>,
        read: &mcp::ReadMessage,
    ) -> Result<Exchange, Rejection> {
        // The reader refuses a completion without a readable reference: exactly one here.
        let Some(reference) = read.message.named().next() else {
            let id = read.message.id();
            return Err(Rejection::bad_request(code::INVALID_PARAMS, "the completion names no reference").with_id(id));
        };
        self.route_by_name(
            pending,
            virtual_server,
            (body, doc, read),
            reference.kind,
            &reference.name,
            NamePlace::Reference,
        )
    }

    /// Routes a request naming `kind` member `name` (at `place` in the body): a resource by
    /// its URI, unchanged; a tool or prompt by its exposed name, renamed there (and only
    /// there) to the backing server's own, then governed as that server's own request.
    fn route_by_name(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        (body, doc, read): (&[u8], &StrictJson<'_>, &mcp::ReadMessage),
        kind: ResourceKind,
        name: &str,
        place: NamePlace,
    ) -> Result<Exchange, Rejection> {
        if kind == ResourceKind::Resource {
            return self.route_resource_read(pending, virtual_server, name, body, read.clone());
        }
        let id = read.message.id();
        let member = virtual_server
            .resolve(kind, name)
            .map_err(|e| Rejection::new(ANSWER_STATUS, code::INVALID_PARAMS, printable(&e.to_string())).with_id(id))?;
        let (rewritten, backend_read) = match place {
            NamePlace::Target => {
                (replace_name(body, doc, kind, member.name), read.clone().with_target_name(member.name))
            }
            NamePlace::Reference => (
                replace_string_at(body, doc, &["params", "ref", "name"], member.name),
                read.clone().with_reference_name(member.name),
            ),
        };
        let rewritten = rewritten.ok_or_else(|| {
            Rejection::bad_request(code::INVALID_PARAMS, "the request's name is not readable").with_id(id)
        })?;
        self.govern_on_backend(pending, member.server, member.name, rewritten, backend_read)
    }

    /// Governs `rewritten` (read as `backend_read`) as the same request to backing server
    /// `server`'s own endpoint, which the exchange is then routed to. `Mcp-Name`, when the
    /// client sent one (checked against the body before), becomes `own_name`.
    fn govern_on_backend(
        &self,
        pending: &PendingRequest,
        server: &str,
        own_name: &str,
        rewritten: Vec<u8>,
        backend_read: mcp::ReadMessage,
    ) -> Result<Exchange, Rejection> {
        let mut backend = pending.clone();
        backend.via_virtual = false;
        backend.server = server.to_string();
        let own_name_header = backend.routing.name.is_some().then(|| mcp::encode_header_value(own_name));
        if let Some(own) = &own_name_header {
            backend.routing.name = Some(own.clone());
        }
        let mut exchange = self.govern_read(&backend, &rewritten, backend_read)?;
        if exchange.rewritten_request.is_none() {
            exchange.rewritten_request = Some(rewritten);
        }
        if let Some(own) = own_name_header {
            exchange.request_header_rewrites.push((header::NAME.to_string(), Some(own)));
        }
        exchange.request_header_rewrites.push((TARGET_HEADER.to_string(), Some(server.to_string())));
        Ok(exchange)
    }
}

/// Where a routed request names its tool, prompt or resource.
#[derive(Debug, Clone, Copy)]
enum NamePlace {
    /// `params.name` / `params.uri` (`tools/call`, `prompts/get`, `resources/read`).
    Target,
    /// `params.ref` (`completion/complete`).
    Reference,
}

/// A JSON-RPC error for what a virtual server does not answer (yet).
fn unsupported(virtual_server: &VirtualServer, what: &str, id: Option<&serde_json::Value>) -> Rejection {
    Rejection::new(
        ANSWER_STATUS,
        code::METHOD_NOT_FOUND,
        format!(
            "{what} is not supported on virtual server \"{}\" yet; it answers server/discover, ping, the list methods, tools/call, prompts/get (names prefixed {}), resources/read and completion/complete; use /mcp/<server> for the rest",
            virtual_server.name,
            virtual_server.prefixes().join(", ")
        ),
    )
    .with_id(id)
}

/// `body` (read as `doc`) with the value of `params.<name key>` replaced by `own` as a JSON
/// string, every other byte as sent. `None` when the body has no such string (not reached:
/// the message was classified from the same field).
pub(crate) fn replace_name(body: &[u8], doc: &StrictJson<'_>, kind: ResourceKind, own: &str) -> Option<Vec<u8>> {
    replace_param_string(body, doc, kind.param_key(), own)
}

/// `body` (read as `doc`) with the string value of `params.<key>` replaced by `own`,
/// re-serialised as a JSON string at its exact place; every other byte as sent. `None` when
/// `params.<key>` is not a string.
pub(super) fn replace_param_string(body: &[u8], doc: &StrictJson<'_>, key: &str, own: &str) -> Option<Vec<u8>> {
    replace_string_at(body, doc, &["params", key], own)
}

/// `body` (read as `doc`) with the string value at member `path` (from the root) replaced
/// by `own`, re-serialised as a JSON string at its exact place; every other byte as sent.
/// `None` when there is no string there. (Strict JSON has no duplicate keys: the member a
/// path names is the one every peer reads.)
pub(super) fn replace_string_at(body: &[u8], doc: &StrictJson<'_>, path: &[&str], own: &str) -> Option<Vec<u8>> {
    let mut value = doc.root();
    for key in path {
        value = value.get(key)?;
    }
    if value.kind() != jsonrpc::JsonKind::String {
        return None;
    }
    let text = value.text();
    // Both are slices of `body`: the offset is the distance between their starts.
    let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(text.len())?;
    if end > body.len() {
        return None;
    }
    let encoded = serde_json::to_string(own).ok()?;
    let mut out = Vec::with_capacity(body.len() - text.len() + encoded.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::config::{EnvSecrets, FilterConfig, RawFilterConfig};
    use crate::gateway::{Exchange, HeadDecision, RequestHead};

    fn gateway() -> Gateway {
        let key = |k: &str, role: &str| json!({"consumer": format!("{role}-bot"), "sha256": hex::encode(Sha256::digest(k.as_bytes())), "roles": [role]});
        let raw: RawFilterConfig = serde_json::from_value(json!({
            "servers": ["crm", "docs"],
            "auth": {"api_keys": [key("r", "reader"), key("a", "admin")]},
            "policy": {"roles": {
                "reader": {"allow": ["crm/get_*", "docs/*"]},
                "admin": {"allow": ["*"], "deny": ["crm/delete_*"], "prompts": {"allow": ["crm/*"]}}
            }},
            "quotas": [{"name": "q", "match": {"tools": ["crm/get_*"]}, "rate": "5/m"}],
            "virtual_servers": [{"name": "work", "servers": ["crm"], "tools": ["docs/search_*"]}]
        }))
        .unwrap();
        Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap())
    }

    fn head(g: &Gateway, method: &str, path: &str, extra: &[(&str, &str)]) -> HeadDecision {
        let mut h = vec![("x-api-key", "r"), ("content-type", "application/json")];
        h.extend_from_slice(extra);
        g.on_request_head(
            RequestHead { method, path, headers: &h, end_of_stream: method != "POST" },
            0,
            &mut g.new_token_cache(),
        )
    }

    fn modern(method: &str, name: Option<&str>) -> Vec<(&'static str, String)> {
        let mut h = vec![("mcp-protocol-version", "2026-07-28".to_string()), ("mcp-method", method.to_string())];
        if let Some(n) = name {
            h.push(("mcp-name", n.to_string()));
        }
        h
    }

    fn body(method: &str, params: Value) -> Vec<u8> {
        let mut params = params;
        params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
        json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}).to_string().into_bytes()
    }

    /// The decision on a POST to `path` with `key`, headers and body.
    fn decide(
        g: &Gateway,
        key: &str,
        path: &str,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<Exchange, Rejection> {
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("x-api-key", key));
        h.push(("content-type", "application/json"));
        match g.on_request_head(
            RequestHead { method: "POST", path, headers: &h, end_of_stream: false },
            0,
            &mut g.new_token_cache(),
        ) {
            HeadDecision::AwaitBody(p) => g.on_request_body(&p, body),
            HeadDecision::Reject(r) => Err(r),
            other => panic!("{other:?}"),
        }
    }

    fn rewrite<'e>(e: &'e Exchange, name: &str) -> Option<&'e str> {
        e.request_header_rewrites.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }

    #[test]
    fn a_call_is_routed_by_prefix_and_governed_as_the_backing_servers() {
        let g = gateway();
        let sent = body("tools/call", json!({"name": "crm__get_customer", "arguments": {"id": "crm__get_customer"}}));
        let e = decide(&g, "r", "/mcp/work", &modern("tools/call", Some("crm__get_customer")), &sent).unwrap();
        assert_eq!(e.server, "crm");
        assert_eq!(rewrite(&e, TARGET_HEADER), Some("crm"));
        assert_eq!(rewrite(&e, header::NAME), Some("get_customer"));
        let forwarded: Value = serde_json::from_slice(e.rewritten_request.as_deref().unwrap()).unwrap();
        assert_eq!(forwarded["params"]["name"], "get_customer");
        assert_eq!(forwarded["params"]["arguments"]["id"], "crm__get_customer");
        // Charged to the backing server's quota, as via /mcp/crm.
        let direct = decide(
            &g,
            "r",
            "/mcp/crm",
            &modern("tools/call", Some("get_customer")),
            &body("tools/call", json!({"name": "get_customer", "arguments": {}})),
        )
        .unwrap();
        assert_eq!(format!("{:?}", e.charges), format!("{:?}", direct.charges));
        assert!(!e.charges.local.is_empty());
    }

    #[test]
    fn a_virtual_server_never_widens_the_policy() {
        let g = gateway();
        // Selected by the virtual server, denied by the reader's policy.
        let sent = body("tools/call", json!({"name": "crm__delete_customer", "arguments": {}}));
        let r = decide(&g, "r", "/mcp/work", &modern("tools/call", Some("crm__delete_customer")), &sent).unwrap_err();
        assert_eq!(r.code, code::FORBIDDEN);
        assert!(r.message.contains("\"crm/delete_customer\""), "{}", r.message);
        assert_eq!(r.id, Some(json!(9)));
        // Allowed by the policy, not selected by the virtual server.
        let sent = body("tools/call", json!({"name": "docs__get_doc", "arguments": {}}));
        let r = decide(&g, "r", "/mcp/work", &modern("tools/call", Some("docs__get_doc")), &sent).unwrap_err();
        assert_eq!(r.code, code::INVALID_PARAMS);
        assert!(r.message.contains("not exposed"), "{}", r.message);
    }

    #[test]
    fn unknown_prefixes_list_the_valid_ones() {
        let g = gateway();
        let sent = body("tools/call", json!({"name": "billing__charge", "arguments": {}}));
        let r = decide(&g, "r", "/mcp/work", &modern("tools/call", Some("billing__charge")), &sent).unwrap_err();
        assert_eq!((r.status, r.code, r.id.clone()), (200, code::INVALID_PARAMS, Some(json!(9))));
        assert!(r.message.contains("crm__, docs__"), "{}", r.message);
    }

    #[test]
    fn headers_are_checked_against_the_exposed_name() {
        let g = gateway();
        let sent = body("tools/call", json!({"name": "crm__get_customer", "arguments": {}}));
        // Mcp-Name naming the backend's own name (or another tool) does not match the body.
        for name in ["get_customer", "crm__list_customers"] {
            let r = decide(&g, "r", "/mcp/work", &modern("tools/call", Some(name)), &sent).unwrap_err();
            assert_eq!(r.code, code::HEADER_MISMATCH, "{name}");
        }
    }

    #[test]
    fn prompts_are_routed_too() {
        let g = gateway();
        let sent = body("prompts/get", json!({"name": "crm__summarize_customer", "arguments": {"id": "1"}}));
        let e = decide(&g, "a", "/mcp/work", &modern("prompts/get", Some("crm__summarize_customer")), &sent).unwrap();
        assert_eq!((e.server.as_str(), rewrite(&e, header::NAME)), ("crm", Some("summarize_customer")));
    }

    #[test]
    fn a_prompt_completion_is_routed_by_its_reference_and_renamed_there_only() {
        let g = gateway();
        let params = json!({"ref": {"type": "ref/prompt", "name": "crm__summarize_customer"},
                            "argument": {"name": "id", "value": "crm__summarize_customer"}});
        let sent = body("completion/complete", params);
        let e = decide(&g, "a", "/mcp/work", &modern("completion/complete", None), &sent).unwrap();
        assert_eq!((e.server.as_str(), rewrite(&e, TARGET_HEADER)), ("crm", Some("crm")));
        assert_eq!(rewrite(&e, header::NAME), None, "completion/complete carries no Mcp-Name");
        let forwarded: Value = serde_json::from_slice(e.rewritten_request.as_deref().unwrap()).unwrap();
        assert_eq!(forwarded["params"]["ref"]["name"], "summarize_customer");
        assert_eq!(forwarded["params"]["argument"]["value"], "crm__summarize_customer");
        // Governed as on /mcp/crm: the reader holds no prompt grant there.
        let r = decide(&g, "r", "/mcp/work", &modern("completion/complete", None), &sent).unwrap_err();
        let direct = body(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "summarize_customer"}, "argument": {"name": "id", "value": ""}}),
        );
        let d = decide(&g, "r", "/mcp/crm", &modern("completion/complete", None), &direct).unwrap_err();
        assert_eq!((r.status, r.code), (d.status, d.code), "{} / {}", r.message, d.message);
        // An unknown prefix is refused with the valid ones, and the id.
        let sent = body(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "hr__x"}, "argument": {"name": "a", "value": ""}}),
        );
        let r = decide(&g, "a", "/mcp/work", &modern("completion/complete", None), &sent).unwrap_err();
        assert_eq!((r.code, r.id.clone()), (code::INVALID_PARAMS, Some(json!(9))), "{}", r.message);
    }

    #[test]
    fn ping_is_answered_by_the_virtual_server_itself() {
        let g = gateway();
        let mut h: Vec<(&str, &str)> = vec![("x-api-key", "r"), ("content-type", "application/json")];
        let headers = modern("ping", None);
        h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
        let HeadDecision::AwaitBody(p) = g.on_request_head(
            RequestHead { method: "POST", path: "/mcp/work", headers: &h, end_of_stream: false },
            0,
            &mut g.new_token_cache(),
        ) else {
            panic!("head")
        };
        let Ok(BodyDecision::Session(op)) = g.on_virtual_request_body(&p, &body("ping", json!({}))) else {
            panic!("not answered here")
        };
        let answer = op.answer(&[], None, &g.config.policy, &mut Default::default());
        let read: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(read, json!({"jsonrpc": "2.0", "id": 9, "result": {"resultType": "complete"}}));
    }

    #[test]
    fn what_is_not_supported_yet_is_refused_with_the_id() {
        let g = gateway();
        for method in ["logging/setLevel", "resources/subscribe"] {
            let sent = body(method, json!({"uri": "file:///x"}));
            let r = decide(&g, "r", "/mcp/work", &modern(method, None), &sent).unwrap_err();
            assert_eq!((r.code, r.id.clone()), (code::METHOD_NOT_FOUND, Some(json!(9))), "{method}: {}", r.message);
        }
        // work selects no resources: a read is not routed anywhere.
        let sent = body("resources/read", json!({"uri": "file:///x"}));
        let r = decide(&g, "r", "/mcp/work", &modern("resources/read", Some("file:///x")), &sent).unwrap_err();
        assert_eq!((r.code, r.id.clone()), (code::INVALID_PARAMS, Some(json!(9))), "{}", r.message);
        assert!(r.message.contains("not exposed"), "{}", r.message);
        // The session-based era.
        let legacy =
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "crm__get_customer"}});
        let r = decide(&g, "r", "/mcp/work", &[], legacy.to_string().as_bytes()).unwrap_err();
        assert_eq!((r.code, r.id.clone()), (code::INVALID_REQUEST, Some(json!(3))));
        for method in ["GET", "DELETE"] {
            let HeadDecision::Reject(r) = head(&g, method, "/mcp/work", &[]) else { panic!("{method}") };
            assert_eq!(r.status, 405);
        }
    }

    #[test]
    fn the_body_limit_is_the_largest_backing_servers() {
        let raw: RawFilterConfig = serde_json::from_value(json!({
            "servers": ["crm", "docs"],
            "auth": {"api_keys": [{"consumer": "bot", "sha256": hex::encode(Sha256::digest(b"k")), "roles": ["any"]}]},
            "policy": {"roles": {"any": {"allow": ["*"]}}},
            "limits": {"max_request_bytes": 1000},
            "server_limits": {"docs": {"max_request_bytes": 5000}},
            "virtual_servers": [{"name": "both", "servers": ["crm", "docs"]}, {"name": "one", "servers": ["crm"]}]
        }))
        .unwrap();
        let g = Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap());
        assert_eq!(g.config().limits.head_request_bytes("both"), 5000);
        assert_eq!(g.config().limits.head_request_bytes("one"), 1000);
        // Once the body names the server, its own limit applies.
        let padding = "x".repeat(2000);
        let sent = body("tools/call", json!({"name": "crm__get_customer", "arguments": {"pad": padding}}));
        let r = decide(&g, "k", "/mcp/both", &modern("tools/call", Some("crm__get_customer")), &sent).unwrap_err();
        assert_eq!(r.status, 413);
        let sent = body("tools/call", json!({"name": "docs__search_docs", "arguments": {"pad": padding}}));
        assert!(decide(&g, "k", "/mcp/both", &modern("tools/call", Some("docs__search_docs")), &sent).is_ok());
    }

    #[test]
    fn unknown_virtual_paths_are_not_found() {
        let g = gateway();
        let HeadDecision::Reject(r) = head(&g, "POST", "/mcp/worker", &[]) else { panic!() };
        assert_eq!(r.status, 404);
    }

    #[test]
    fn only_the_name_value_is_replaced() {
        // The exposed name appears elsewhere too (arguments, _meta): only params.name changes.
        let body = br#"{ "jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{"q":"crm__x","name":"crm__x"},"name":"crm__x","_meta":{"k":"crm__x"}}}"#;
        let out = replace_name(body, &jsonrpc::validate_strict(body).unwrap(), ResourceKind::Tool, "x").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{ "jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{"q":"crm__x","name":"crm__x"},"name":"x","_meta":{"k":"crm__x"}}}"#
        );
    }

    #[test]
    fn escaped_names_are_replaced_whole_and_re_encoded() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"n\u0061me":"crm__\u0073ummary"}}"#;
        let out =
            replace_name(body, &jsonrpc::validate_strict(body).unwrap(), ResourceKind::Prompt, "say \"hi\"").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"n\u0061me":"say \"hi\""}}"#
        );
    }

    #[test]
    fn the_renamed_read_is_what_reading_the_rewritten_body_gives() {
        let bodies: [&[u8]; 3] = [
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"crm__x","arguments":{"k":[1,2,{"name":"crm__x"}]},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            br#"{"params":{"arguments":{},"name":"crm__\u0078"},"method":"tools/call","id":3,"jsonrpc":"2.0"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"crm__p","arguments":{"a":"b"}}}"#,
        ];
        for body in bodies {
            let doc = jsonrpc::validate_strict(body).unwrap();
            let read = mcp::read_message_in(&doc).unwrap();
            let kind = read.message.target().unwrap().kind;
            let rewritten = replace_name(body, &doc, kind, "own \"name\"").unwrap();
            assert_eq!(mcp::read_message(&rewritten).unwrap(), read.with_target_name("own \"name\""));
        }
    }

    #[test]
    fn nothing_to_replace_is_none() {
        for body in [
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#.as_slice(),
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#.as_slice(),
        ] {
            assert!(replace_name(body, &jsonrpc::validate_strict(body).unwrap(), ResourceKind::Tool, "x").is_none());
        }
    }

    /// A guarded tool called through a virtual server needs the same approval as on its own
    /// server: the rule and the check see the backing server and the tool's own name.
    #[test]
    fn approval_rules_see_the_backing_server_and_tool() {
        let key = |k: &str, role: &str| json!({"consumer": format!("{role}-bot"), "sha256": hex::encode(Sha256::digest(k.as_bytes())), "roles": [role]});
        let raw: RawFilterConfig = serde_json::from_value(json!({
            "servers": ["crm", "docs"],
            "auth": {"api_keys": [key("a", "admin")]},
            "policy": {"roles": {"admin": {"allow": ["*"]}, "ops": {}}},
            "virtual_servers": [{"name": "work", "servers": ["crm"]}],
            "approvals": [{"name": "updates", "match": {"tools": ["crm/update_*"]}, "approvers": {"roles": ["ops"]}}],
            "approval_service": {"cluster": "meshgate-xds", "authority": "meshgate"}
        }))
        .unwrap();
        let g = Gateway::new(FilterConfig::compile(&raw, &EnvSecrets).unwrap());
        let modern = modern("tools/call", Some("crm__update_customer"));
        let mut h: Vec<(&str, &str)> = modern.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.extend([("x-api-key", "a"), ("content-type", "application/json")]);
        let HeadDecision::AwaitBody(pending) = g.on_request_head(
            RequestHead { method: "POST", path: "/mcp/work", headers: &h, end_of_stream: false },
            0,
            &mut g.new_token_cache(),
        ) else {
            panic!("not awaiting the body")
        };
        let sent = body("tools/call", json!({"name": "crm__update_customer", "arguments": {"id": "c-1"}}));
        let exchange = g.on_request_body(&pending, &sent).unwrap();
        let forwarded = exchange.rewritten_request.clone().unwrap();
        let check = g.approval_check(&pending, &exchange, &forwarded).expect("the rule applies").unwrap();
        assert_eq!((check.server.as_str(), check.tool.as_str()), ("crm", "update_customer"));
        let own = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "update_customer", "arguments": {"id": "c-1"}}});
        let (hash, _) = crate::approval::arguments_hash(own.to_string().as_bytes()).unwrap();
        assert_eq!(check.arguments_sha256, hash, "the same approval as a direct call");
    }
}
