//! Virtual MCP servers: one endpoint (`<route_prefix><name>`) exposing a curated selection of
//! the tools, prompts and resources of several real servers.
//!
//! This module owns the virtual-server configuration (raw and compiled) and the name map
//! between what a client sees and what a backing server calls the same thing:
//!
//! - **prefixed** (the default): exposed name = `<server><separator><own name>`, e.g.
//!   `crm__get_customer`. Server names are `[a-z0-9-]+` and the separator is made only of
//!   `_` and `.`, so the first occurrence of the separator always ends the server name:
//!   two members can never be exposed under the same name, and the split is unambiguous.
//! - **unprefixed** (`prefix: false`): exposed name = own name. Only allowed when every
//!   selection names one tool or prompt literally (no glob, no whole server), so that
//!   collisions are known when the configuration is compiled; a collision is refused and
//!   names both selections.
//!
//! - **resources** are never renamed (a URI is what clients read from lists, templates and
//!   tool results): a URI is routed to the one backing server whose `resources` selection
//!   matches its canonical form ([`VirtualServer::resource_server`]). A URI selected from two
//!   servers is refused (a literal one when the configuration is compiled, one matched by
//!   two globs when it is routed).
//!
//! A virtual server never widens what a caller may do: a call resolved here is then
//! governed exactly as the same call sent to `<route_prefix><server>` (RBAC, quotas,
//! redaction, limits, audit all see the backing server and its own name). The selection only
//! narrows: a member outside it is "not exposed" even when the policy would allow it.
//!
//! Routing: the filter names the chosen backing server in [`TARGET_HEADER`]; the control
//! plane renders one route per backing server on the virtual path matching that header.
//! Every `x-meshgate-*` header a client sends is removed before the decision (see
//! `gateway::headers_to_strip`), so a client can never choose the backend itself.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::{is_valid_server_name, ConfigError};
use crate::glob::Glob;
use crate::mcp::ResourceKind;

/// The internal request header naming the backing server a virtual-server request is routed
/// to. Set only by the filter (any client value is removed first); matched by the virtual
/// server's routes and removed by them before forwarding.
pub const TARGET_HEADER: &str = "x-meshgate-target";

/// Separator between server and own name when the configuration does not say.
pub const DEFAULT_SEPARATOR: &str = "__";

/// Longest separator accepted.
const MAX_SEPARATOR_LEN: usize = 4;

/// One `virtual_servers[]` entry as written (registry and filter configuration alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualServer {
    /// Served at `<route_prefix><name>`; the server-name rules, no clash with a server.
    pub name: String,
    /// Free text for operators and catalogs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whole servers: every tool and prompt of each (`crm` ≡ `tools: [crm/*]`,
    /// `prompts: [crm/*]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// `server/glob` selections of tools (policy syntax; the server part is literal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// `server/<URI glob>` selections of resources and resource templates (policy syntax;
    /// the URI part is canonicalised as policy resource patterns are). URIs are never
    /// renamed: a URI is routed to the one backing server whose selection matches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// `server/glob` selections of prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Between server and own name in exposed names (default `__`; only `_` and `.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// `false` drops the `<server><separator>` prefix (literal selections only, no
    /// collisions). Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<bool>,
}

/// How the filter itself reaches one real server (the fan-out callouts of discovery): what
/// the server's route applies, rendered by the control plane. A callout bypasses the route,
/// so the same cluster, upstream path and `Host` are used here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The Envoy cluster of the server.
    pub cluster: String,
    /// The upstream request path (the route's path rewrite).
    pub path: String,
    /// The `Host` the route sends (`host:port`).
    pub authority: String,
    /// The route injects an upstream credential from an SDS secret. The filter never holds
    /// that secret, so a callout cannot carry it: such a server is left out of discovery
    /// (logged and counted), never called without its credential.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub credentials: bool,
}

impl Upstream {
    /// Validates every entry of `upstreams` against the real `servers`.
    pub fn compile_all(
        raw: &std::collections::BTreeMap<String, Upstream>,
        servers: &HashSet<String>,
    ) -> Result<HashMap<String, Upstream>, ConfigError> {
        let mut out = HashMap::new();
        for (server, upstream) in raw {
            let at = format!("upstreams.{server}");
            if !servers.contains(server) {
                return Err(ConfigError::invalid(at, format!("no such server \"{server}\"")));
            }
            if upstream.cluster.is_empty() || upstream.authority.is_empty() {
                return Err(ConfigError::invalid(at, "cluster and authority must not be empty".to_string()));
            }
            if !upstream.path.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("{at}.path"),
                    format!("\"{}\" must start with '/'", upstream.path),
                ));
            }
            out.insert(server.clone(), upstream.clone());
        }
        Ok(out)
    }
}

/// One selection: a kind, a backing server, a glob over that server's own names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selection {
    kind: ResourceKind,
    server: String,
    name: Glob,
}

/// A compiled virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    pub name: String,
    pub description: Option<String>,
    separator: String,
    prefixed: bool,
    /// Backing servers, first mention first, each once. Never empty.
    servers: Vec<String>,
    selections: Vec<Selection>,
    /// Unprefixed only: (kind, exposed name) → backing server.
    literal: HashMap<(ResourceKind, String), String>,
}

/// Why a resource URI routes to no backing server (JSON-RPC -32602).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceRouteError {
    #[error("resource \"{uri}\" cannot be routed: {why}")]
    Unreadable { uri: String, why: crate::resource_uri::UriError },
    #[error("resource \"{uri}\" is not exposed by virtual server \"{virtual_server}\"")]
    NotExposed { uri: String, virtual_server: String },
    #[error("resource \"{uri}\" is selected from several servers of virtual server \"{virtual_server}\" ({servers}): refused rather than guessed; use /mcp/<server>")]
    Ambiguous { uri: String, virtual_server: String, servers: String },
}

/// A member a virtual-server name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'s, 'n> {
    /// The backing server.
    pub server: &'s str,
    /// The member's own name on that server.
    pub name: &'n str,
}

/// Why an exposed name resolves to nothing (both become JSON-RPC -32602).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{noun} \"{name}\" has no known server prefix; valid prefixes of virtual server \"{virtual_server}\" are: {prefixes}")]
    UnknownPrefix { noun: &'static str, name: String, virtual_server: String, prefixes: String },
    #[error("{noun} \"{name}\" is not exposed by virtual server \"{virtual_server}\"")]
    NotExposed { noun: &'static str, name: String, virtual_server: String },
}

impl VirtualServer {
    /// The backing servers, first mention first.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Whether exposed names carry the `<server><separator>` prefix.
    pub fn prefixed(&self) -> bool {
        self.prefixed
    }

    pub fn separator(&self) -> &str {
        &self.separator
    }

    /// The backing server and own name behind `exposed`, if this virtual server exposes it.
    pub fn resolve<'s, 'n>(&'s self, kind: ResourceKind, exposed: &'n str) -> Result<Member<'s, 'n>, ResolveError> {
        let not_exposed = || ResolveError::NotExposed {
            noun: kind.noun(),
            name: exposed.to_string(),
            virtual_server: self.name.clone(),
        };
        if !self.prefixed {
            let server = self.literal.get(&(kind, exposed.to_string())).ok_or_else(not_exposed)?;
            return Ok(Member { server, name: exposed });
        }
        let known = exposed
            .split_once(self.separator.as_str())
            .and_then(|(prefix, own)| self.servers.iter().find(|s| s.as_str() == prefix).map(|server| (server, own)));
        let Some((server, own)) = known else {
            return Err(ResolveError::UnknownPrefix {
                noun: kind.noun(),
                name: exposed.to_string(),
                virtual_server: self.name.clone(),
                prefixes: self.prefixes().join(", "),
            });
        };
        if self.selects(kind, server, own) {
            Ok(Member { server, name: own })
        } else {
            Err(not_exposed())
        }
    }

    /// The one backing server whose resource selection matches `uri` (a resource URI or a
    /// template's `uriTemplate`), matched in its canonical form ([`crate::resource_uri`]) as
    /// the policy matches it. Fails closed: a URI the canonicaliser refuses, one no
    /// selection matches, and one the selections of two servers both match route nowhere.
    pub fn resource_server(&self, uri: &str) -> Result<&str, ResourceRouteError> {
        let canonical = crate::resource_uri::canonical(uri)
            .map_err(|why| ResourceRouteError::Unreadable { uri: uri.to_string(), why })?;
        let mut owner: Option<&str> = None;
        for selection in &self.selections {
            if selection.kind != ResourceKind::Resource || !selection.name.matches(&canonical) {
                continue;
            }
            match owner {
                None => owner = Some(&selection.server),
                Some(first) if first == selection.server => {}
                Some(first) => {
                    return Err(ResourceRouteError::Ambiguous {
                        uri: uri.to_string(),
                        virtual_server: self.name.clone(),
                        servers: format!("{first}, {}", selection.server),
                    })
                }
            }
        }
        owner.ok_or_else(|| ResourceRouteError::NotExposed { uri: uri.to_string(), virtual_server: self.name.clone() })
    }

    /// The backing servers with at least one selection of `kind`, first mention first.
    pub fn servers_selecting(&self, kind: ResourceKind) -> impl Iterator<Item = &str> {
        self.servers
            .iter()
            .filter(move |server| self.selections.iter().any(|s| s.kind == kind && s.server == **server))
            .map(String::as_str)
    }

    /// Whether the selection includes `server`'s `kind` member called `own`.
    pub fn selects(&self, kind: ResourceKind, server: &str, own: &str) -> bool {
        self.selections.iter().any(|s| s.kind == kind && s.server == server && s.name.matches(own))
    }

    /// The name a client sees for `server`'s member `own`, if selected. A resource (its URI
    /// or template) keeps its own name, and is exposed only when it routes back to `server`
    /// ([`Self::resource_server`]): what is listed can be read.
    pub fn exposed_name(&self, kind: ResourceKind, server: &str, own: &str) -> Option<String> {
        if kind == ResourceKind::Resource {
            return (self.resource_server(own).ok()? == server).then(|| own.to_string());
        }
        if !self.selects(kind, server, own) {
            return None;
        }
        Some(if self.prefixed { format!("{server}{}{own}", self.separator) } else { own.to_string() })
    }

    /// Every valid prefix (`<server><separator>`), for messages.
    pub fn prefixes(&self) -> Vec<String> {
        self.servers.iter().map(|s| format!("{s}{}", self.separator)).collect()
    }
}

/// Every virtual server of a configuration, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualServers {
    by_name: HashMap<String, VirtualServer>,
}

impl VirtualServers {
    pub fn get(&self, name: &str) -> Option<&VirtualServer> {
        self.by_name.get(name)
    }

    /// Every virtual server, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &VirtualServer> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Validates `raw` (at `virtual_servers`) against the real `servers`.
    pub fn compile(raw: &[RawVirtualServer], servers: &HashSet<String>) -> Result<Self, ConfigError> {
        let mut by_name = HashMap::new();
        for (i, entry) in raw.iter().enumerate() {
            let at = format!("virtual_servers[{i}]");
            let compiled = compile_one(&at, entry, servers)?;
            if by_name.insert(compiled.name.clone(), compiled).is_some() {
                return Err(ConfigError::invalid(
                    format!("{at}.name"),
                    format!("duplicate virtual server name \"{}\"", entry.name),
                ));
            }
        }
        Ok(VirtualServers { by_name })
    }
}

/// Whether `separator` is acceptable: 1..=4 characters, only `_` and `.` (never a character
/// of a server name, so the first occurrence ends the prefix; the exposed name stays a valid
/// MCP tool name).
pub fn is_valid_separator(separator: &str) -> bool {
    (1..=MAX_SEPARATOR_LEN).contains(&separator.len()) && separator.bytes().all(|b| b == b'_' || b == b'.')
}

/// A selection string split into its literal server and its name glob.
fn parse_selection(at: &str, value: &str, servers: &HashSet<String>) -> Result<(String, Glob), ConfigError> {
    let Some((server, name)) = value.split_once('/') else {
        return Err(ConfigError::invalid(at, format!("\"{value}\" must be <server>/<name glob>, e.g. crm/get_*")));
    };
    if !servers.contains(server) {
        let why = if server.contains(['*', '?']) {
            "the server part must be a server name, not a glob"
        } else {
            "no such server"
        };
        return Err(ConfigError::invalid(at, format!("\"{value}\": {why} (\"{server}\")")));
    }
    let glob = Glob::new(name).map_err(|e| ConfigError::invalid(at, format!("\"{value}\": {e}")))?;
    Ok((server.to_string(), glob))
}

/// A resource selection `server/<URI glob>`: the URI part canonicalised as a policy
/// resource pattern is ([`crate::resource_uri::canonical_pattern`]).
fn parse_resource_selection(at: &str, value: &str, servers: &HashSet<String>) -> Result<(String, Glob), ConfigError> {
    let (server, _) = parse_selection(at, value, servers)?;
    let uri = value.split_once('/').map_or("", |(_, uri)| uri);
    let canonical = crate::resource_uri::canonical_pattern(uri)
        .map_err(|e| ConfigError::invalid(at, format!("\"{value}\" can never match a resource: {e}")))?;
    let glob = Glob::new(&canonical).map_err(|e| ConfigError::invalid(at, format!("\"{value}\": {e}")))?;
    Ok((server, glob))
}

fn compile_one(at: &str, raw: &RawVirtualServer, servers: &HashSet<String>) -> Result<VirtualServer, ConfigError> {
    if !is_valid_server_name(&raw.name) {
        return Err(ConfigError::invalid(
            format!("{at}.name"),
            format!("\"{}\" is not a valid server name ([a-z0-9-]+, at most 63 characters)", raw.name),
        ));
    }
    if servers.contains(&raw.name) {
        return Err(ConfigError::invalid(
            format!("{at}.name"),
            format!("virtual server \"{}\" has the name of a server: both would be served at the same path", raw.name),
        ));
    }
    let separator = raw.separator.clone().unwrap_or_else(|| DEFAULT_SEPARATOR.to_string());
    if !is_valid_separator(&separator) {
        return Err(ConfigError::invalid(
            format!("{at}.separator"),
            format!("\"{separator}\" is not a valid separator (1 to {MAX_SEPARATOR_LEN} characters, only '_' and '.')"),
        ));
    }
    let prefixed = raw.prefix.unwrap_or(true);
    let mut selections = Vec::new();
    let mut backing: Vec<String> = Vec::new();
    let mut add_backing = |server: &str| {
        if !backing.iter().any(|s| s == server) {
            backing.push(server.to_string());
        }
    };
    for (j, server) in raw.servers.iter().enumerate() {
        let path = format!("{at}.servers[{j}]");
        if !servers.contains(server) {
            return Err(ConfigError::invalid(path, format!("no such server \"{server}\"")));
        }
        if !prefixed {
            return Err(ConfigError::invalid(
                path,
                format!("whole server \"{server}\" with prefix: false: its names are not known in advance and could collide; select tools and prompts by their exact names"),
            ));
        }
        add_backing(server);
        for kind in [ResourceKind::Tool, ResourceKind::Prompt] {
            let name = Glob::new("*").map_err(|e| ConfigError::invalid(&path, e.to_string()))?;
            selections.push(Selection { kind, server: server.clone(), name });
        }
    }
    let mut literal: HashMap<(ResourceKind, String), (String, String)> = HashMap::new();
    for (key, kind, list) in
        [("tools", ResourceKind::Tool, &raw.tools), ("prompts", ResourceKind::Prompt, &raw.prompts)]
    {
        for (j, value) in list.iter().enumerate() {
            let path = format!("{at}.{key}[{j}]");
            let (server, name) = parse_selection(&path, value, servers)?;
            if !prefixed {
                if !name.is_literal() {
                    return Err(ConfigError::invalid(
                        path,
                        format!(
                            "\"{value}\" is a glob and prefix is false: its names could collide; name each {} exactly",
                            kind.noun()
                        ),
                    ));
                }
                let exposed = name.as_str().to_string();
                if let Some((other_path, other)) = literal.get(&(kind, exposed.clone())) {
                    if *other != server {
                        return Err(ConfigError::invalid(
                            path,
                            format!("\"{value}\" collides with \"{other}/{exposed}\" ({other_path}): both would be exposed as \"{exposed}\"; keep the prefixes or select one"),
                        ));
                    }
                }
                literal.insert((kind, exposed), (path.clone(), server.clone()));
            }
            add_backing(&server);
            selections.push(Selection { kind, server, name });
        }
    }
    for (j, value) in raw.resources.iter().enumerate() {
        let path = format!("{at}.resources[{j}]");
        let (server, name) = parse_resource_selection(&path, value, servers)?;
        // A literal URI two servers select could never be read: refused here (overlapping
        // globs are refused per URI when routed, see `resource_server`).
        let other = selections.iter().find(|s: &&Selection| {
            s.kind == ResourceKind::Resource
                && s.server != server
                && ((name.is_literal() && s.name.matches(name.as_str()))
                    || (s.name.is_literal() && name.matches(s.name.as_str())))
        });
        if let Some(other) = other {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "\"{value}\" is also selected from server \"{}\" (\"{}/{}\"): a URI must route to one server",
                    other.server,
                    other.server,
                    other.name.as_str()
                ),
            ));
        }
        add_backing(&server);
        selections.push(Selection { kind: ResourceKind::Resource, server, name });
    }
    if selections.is_empty() {
        return Err(ConfigError::invalid(
            at,
            format!("virtual server \"{}\" selects nothing: list servers, tools, resources or prompts", raw.name),
        ));
    }
    Ok(VirtualServer {
        name: raw.name.clone(),
        description: raw.description.clone(),
        separator,
        prefixed,
        servers: backing,
        selections,
        literal: literal.into_iter().map(|(k, (_, server))| (k, server)).collect(),
    })
}

#[cfg(test)]
mod tests;
