//! `resources/read` through a virtual server ([`crate::virtual_server`]).
//!
//! Resource URIs are not renamed: a URI is what a client reads from a list, from a tool's
//! `resource_link` or from a template, and it must stay exactly what the backing server
//! understands. Instead the URI is routed: [`VirtualServer::resource_server`] names the one
//! backing server whose `resources` selection matches it (canonical form, as the policy
//! matches). A URI the canonicaliser refuses (dot segments, encoded delimiters, …), one no
//! selection matches and one the selections of two servers both match are refused with
//! -32602 and the request's id. The body is forwarded unchanged and then governed exactly
//! as the same request to `<route_prefix><server>` (RBAC on the resource, redaction, audit).

use crate::jsonrpc::code;
use crate::mcp::ReadMessage;
use crate::reject::{printable, Rejection};
use crate::virtual_server::{VirtualServer, TARGET_HEADER};

use super::{Exchange, Gateway, PendingRequest};

/// HTTP status of a refusal about what the request names: 200, as for tools and prompts.
const ANSWER_STATUS: u16 = 200;

impl Gateway {
    /// Routes a `resources/read` of `uri` on `virtual_server` to its backing server and
    /// governs it as that server's own request.
    pub(super) fn route_resource_read(
        &self,
        pending: &PendingRequest,
        virtual_server: &VirtualServer,
        uri: &str,
        body: &[u8],
        read: ReadMessage,
    ) -> Result<Exchange, Rejection> {
        let id = read.message.id().cloned();
        let server = virtual_server.resource_server(uri).map_err(|e| {
            Rejection::new(ANSWER_STATUS, code::INVALID_PARAMS, printable(&e.to_string())).with_id(id.as_ref())
        })?;
        let mut backend = pending.clone();
        backend.via_virtual = false;
        backend.server = server.to_string();
        let mut exchange = self.govern_read(&backend, body, read)?;
        exchange.request_header_rewrites.push((TARGET_HEADER.to_string(), Some(server.to_string())));
        Ok(exchange)
    }
}
