//! Pagination of a virtual server's merged lists: one client cursor carrying the cursor of
//! every backing server that still has pages.
//!
//! - A merged list answer carries `nextCursor` when at least one backend's answer did:
//!   `mgv1.` followed by the unpadded base64url of `{"v":<virtual server>,"m":<method>,
//!   "p":[[<server>,<its own cursor>],…]}` (backing-server order). Opaque to the client.
//! - A list request carrying such a cursor is fanned out only to the servers it names, each
//!   asked with its own cursor in `params.cursor` (only that value's bytes are replaced; the
//!   rest of the body is forwarded as sent, then governed as that server's own request).
//! - The cursor is validated, not sealed: it must decode exactly, name this virtual server
//!   and this method, and name only backing servers that the virtual server selects this
//!   kind of item from, each once, with a string cursor. Anything else is refused with
//!   -32602 and the request's id. Forging a backend's own cursor gains nothing: the same
//!   value could be sent to `<route_prefix><server>` directly, and the page it fetches is
//!   governed and filtered exactly as there.
//! - A backend that fails on a later page is omitted from that page and from the cursor
//!   (never retried forever by a client that pages to the end).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::jsonrpc::{self, StrictJson};
use crate::mcp::ListShape;
use crate::virtual_server::VirtualServer;

/// Marks (and versions) a virtual server's cursor.
const CURSOR_PREFIX: &str = "mgv1.";

/// Longest client cursor accepted (a bound on decoding work; a request body is bounded too).
const MAX_CURSOR_LEN: usize = 16 * 1024;

/// What a virtual server's cursor carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorBody {
    /// The virtual server.
    v: String,
    /// The list method.
    m: String,
    /// `(server, its own cursor)`, each server once.
    p: Vec<(String, String)>,
}

/// The client cursor for the backends' own next cursors `pages` (`None` when no backend has
/// another page).
pub(super) fn encode(virtual_server: &str, method: &str, pages: Vec<(String, String)>) -> Option<String> {
    if pages.is_empty() {
        return None;
    }
    let body = CursorBody { v: virtual_server.to_string(), m: method.to_string(), p: pages };
    let json = serde_json::to_vec(&body).ok()?;
    Some(format!("{CURSOR_PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
}

/// The `(server, own cursor)` pages a client `cursor` of `virtual_server`'s `method` list
/// (items of `shape`) asks for, or why the cursor is refused (for a -32602 message).
pub(super) fn decode(
    cursor: &str,
    virtual_server: &VirtualServer,
    method: &str,
    shape: ListShape,
) -> Result<Vec<(String, String)>, String> {
    let bad = |why: &str| format!("invalid cursor for virtual server \"{}\": {why}", virtual_server.name);
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(bad("too long"));
    }
    let encoded = cursor.strip_prefix(CURSOR_PREFIX).ok_or_else(|| bad("not a cursor this gateway issued"))?;
    let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| bad("not a cursor this gateway issued"))?;
    // Strict JSON first (no duplicate keys), then the exact shape.
    jsonrpc::validate_strict(&json).map_err(|_| bad("not a cursor this gateway issued"))?;
    let body: CursorBody = serde_json::from_slice(&json).map_err(|_| bad("not a cursor this gateway issued"))?;
    if body.v != virtual_server.name || body.m != method {
        return Err(bad("issued for another list"));
    }
    if body.p.is_empty() {
        return Err(bad("it names no server"));
    }
    let selecting: Vec<&str> = virtual_server.servers_selecting(shape.kind).collect();
    for (i, (server, _)) in body.p.iter().enumerate() {
        if !selecting.contains(&server.as_str()) {
            return Err(bad(&format!("\"{}\" is not a server of this list", crate::reject::printable(server))));
        }
        if body.p[..i].iter().any(|(s, _)| s == server) {
            return Err(bad("a server is named twice"));
        }
    }
    Ok(body.p)
}

/// `params.cursor` of a list request read as `doc`: `None` when absent, `Err` when it is
/// not a string.
pub(super) fn cursor_param(doc: &StrictJson<'_>) -> Option<Result<String, ()>> {
    let value = doc.root().get("params")?.get("cursor")?;
    Some(value.as_str().map(|c| c.into_owned()).ok_or(()))
}

/// `body` (read as `doc`) with the value of `params.cursor` replaced by `own` as a JSON
/// string, every other byte as sent; `None` when there is no string cursor.
pub(super) fn with_cursor(body: &[u8], doc: &StrictJson<'_>, own: &str) -> Option<Vec<u8>> {
    super::virtual_call::replace_param_string(body, doc, "cursor", own)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::mcp::ResourceKind;
    use crate::virtual_server::{RawVirtualServer, VirtualServers};

    fn work() -> VirtualServer {
        let raw: Vec<RawVirtualServer> = serde_json::from_value(serde_json::json!([
            {"name": "work", "servers": ["crm"], "tools": ["docs/*"], "resources": ["docs/docs://*"]}
        ]))
        .unwrap();
        let servers: HashSet<String> = ["crm", "docs", "billing"].iter().map(|s| s.to_string()).collect();
        VirtualServers::compile(&raw, &servers).unwrap().get("work").unwrap().clone()
    }

    fn tools() -> ListShape {
        ResourceKind::of_list_method("tools/list").unwrap()
    }

    #[test]
    fn a_cursor_round_trips_and_is_opaque() {
        let pages = vec![("crm".to_string(), "2".to_string()), ("docs".to_string(), "a\"b/é".to_string())];
        let cursor = encode("work", "tools/list", pages.clone()).unwrap();
        assert!(cursor.starts_with("mgv1.") && !cursor.contains("crm"), "{cursor}");
        assert_eq!(decode(&cursor, &work(), "tools/list", tools()), Ok(pages));
        assert_eq!(encode("work", "tools/list", Vec::new()), None);
    }

    #[test]
    fn bad_cursors_are_refused_naming_the_reason() {
        let w = work();
        let resources = ResourceKind::of_list_method("resources/list").unwrap();
        let crm = |server: &str| vec![(server.to_string(), "x".to_string())];
        let cases = [
            ("abc".to_string(), "issued"),
            ("mgv1.!!".to_string(), "issued"),
            (format!("mgv1.{}", URL_SAFE_NO_PAD.encode(br#"{"v":"work","m":"tools/list","p":[],"x":1}"#)), "issued"),
            (
                format!(
                    "mgv1.{}",
                    URL_SAFE_NO_PAD.encode(br#"{"v":"work","v":"work","m":"tools/list","p":[["crm","1"]]}"#)
                ),
                "issued",
            ),
            (encode("other", "tools/list", crm("crm")).unwrap(), "another list"),
            (encode("work", "prompts/list", crm("crm")).unwrap(), "another list"),
            (format!("mgv1.{}", URL_SAFE_NO_PAD.encode(br#"{"v":"work","m":"tools/list","p":[]}"#)), "no server"),
            (encode("work", "tools/list", crm("billing")).unwrap(), "not a server of this list"),
            (encode("work", "tools/list", [crm("crm"), crm("crm")].concat()).unwrap(), "twice"),
            ("mgv1.".to_string() + &"A".repeat(MAX_CURSOR_LEN), "too long"),
        ];
        for (cursor, why) in cases {
            let e = decode(&cursor, &w, "tools/list", tools()).unwrap_err();
            assert!(e.contains(why), "{cursor}: {e}");
        }
        // crm has tools but no selected resources.
        let e = decode(&encode("work", "resources/list", crm("crm")).unwrap(), &w, "resources/list", resources);
        assert!(e.unwrap_err().contains("not a server of this list"));
    }

    #[test]
    fn only_the_cursor_value_is_replaced() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"cursor":"c"},"cursor":"c"}}"#;
        let doc = jsonrpc::validate_strict(body).unwrap();
        assert_eq!(cursor_param(&doc), Some(Ok("c".to_string())));
        let out = with_cursor(body, &doc, "own \"1\"").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"cursor":"c"},"cursor":"own \"1\""}}"#
        );
        let number = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":5}}"#;
        assert_eq!(cursor_param(&jsonrpc::validate_strict(number).unwrap()), Some(Err(())));
        let none = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(cursor_param(&jsonrpc::validate_strict(none).unwrap()), None);
    }
}
