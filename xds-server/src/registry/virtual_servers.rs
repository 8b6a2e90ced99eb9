//! `virtual_servers`: the registry side of virtual MCP servers.
//!
//! The section is the filter's own raw type (`meshgate_core::virtual_server`), validated by
//! the filter's own compiler like `policy`, with the same paths in both documents. What only
//! the registry adds: a collision names the *other* selection by file and line, not only by
//! path, and the compiled servers are kept in registry order for the routes.

use std::path::Path;

use meshgate_core::virtual_server::{VirtualServer, VirtualServers};

use super::lines::LineIndex;
use super::raw::RawRegistry;

/// `message` with every parenthesised `(virtual_servers[…])` path it cites replaced by
/// `(<file>:<line>)` (validation errors cite the other selection of a collision that way).
pub(crate) fn cite_lines(message: &str, file: &Path, index: &LineIndex) -> String {
    const OPEN: &str = "(virtual_servers[";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(OPEN) {
        let Some(close) = rest[at..].find(')') else { break };
        let path = &rest[at + 1..at + close];
        out.push_str(&rest[..at]);
        match index.line_of(path) {
            Some(line) => out.push_str(&format!("({}:{line}, {path})", file.display())),
            None => out.push_str(&rest[at..=at + close]),
        }
        rest = &rest[at + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The compiled virtual servers in the order the registry lists them.
pub(crate) fn in_registry_order(raw: &RawRegistry, compiled: &VirtualServers) -> Vec<VirtualServer> {
    raw.virtual_servers.iter().filter_map(|v| compiled.get(&v.name).cloned()).collect()
}

#[cfg(test)]
mod tests;
