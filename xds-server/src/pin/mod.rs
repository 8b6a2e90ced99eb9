//! `meshgate pin` and the drift view: what pinned servers serve now, against the lockfile.
//!
//! Both ask the servers themselves, with the official protocol ([`crate::mcp_client`], both
//! eras, `user-agent: meshgate-pin/<version>`):
//! `pin` writes what it finds into the lockfile (every server, those named, or single
//! accepted changes with `--update SERVER/NAME`); the admin API's `GET /pins/drift` compares
//! it with the lockfile the running configuration enforces and shows a line diff of each
//! drifted definition. The control plane queries on demand (each `GET`), with the server's
//! registry endpoint, trust and credentials, exactly as `pin` does: the filter in Envoy
//! counts and logs drift as clients see it, while this view tells the operator what
//! reviewing and accepting a change would mean.

pub mod diff;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshgate_core::jsonrpc::{self, JsonKind};
use meshgate_core::mcp::method;
use serde_json::{json, Value};

use crate::mcp_client::{self, Limits, McpClient};
use crate::registry::lockfile::{self, Lockfile, Pin, ServerEntry};
use crate::registry::{Registry, Server};

/// Sent with every request of `pin` and the drift view.
pub const USER_AGENT: &str = concat!("meshgate-pin/", env!("CARGO_PKG_VERSION"));
/// Most pages of one list followed.
const MAX_PAGES: usize = 1000;
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why `meshgate pin` failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    Lockfile(#[from] lockfile::LockfileError),
    #[error("{server}: {failure}")]
    Client { server: String, failure: mcp_client::Failure },
    #[error("{server}: {kind} {name:?} is listed twice")]
    Duplicate { server: String, kind: &'static str, name: String },
    #[error("{server}: a {kind} definition cannot be pinned: {reason}")]
    Unpinnable { server: String, kind: &'static str, reason: String },
    #[error("no server {0:?} in the registry")]
    UnknownServer(String),
    #[error("{0:?} is not SERVER/NAME")]
    BadUpdate(String),
    #[error("{server}: serves no tool, resource or prompt {name:?} and the lockfile has none to remove")]
    NothingToUpdate { server: String, name: String },
    #[error("cannot write {}: {reason}", file.display())]
    Write { file: PathBuf, reason: String },
}

/// The list method and result array of each lockfile section.
const LISTS: [(&str, &str, &str); 3] = [
    ("tools", method::TOOLS_LIST, "tools"),
    ("resources", method::RESOURCES_LIST, "resources"),
    ("prompts", method::PROMPTS_LIST, "prompts"),
];

/// What `server` serves now, as a lockfile entry (only the kinds it offers).
pub async fn fetch(registry: &Registry, server: &Server) -> Result<ServerEntry, PinError> {
    let failed = |failure| PinError::Client { server: server.name.clone(), failure };
    // Each answer waits at most the server's own timeout (as through Envoy), within 1–60 s.
    let timeout = if server.timeout.is_zero() {
        std::time::Duration::from_secs(30)
    } else {
        server.timeout.clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60))
    };
    let limits = Limits { user_agent: USER_AGENT, timeout, max_body: MAX_ANSWER_BYTES, max_pages: MAX_PAGES };
    let mut client = McpClient::new(server, &registry.envoy.system_ca_file, limits).map_err(failed)?;
    let capabilities = client.open().await.map_err(failed)?;
    let entry = fetch_lists(server, &mut client, capabilities).await;
    client.close().await;
    entry
}

/// Every list `capabilities` offers, as a lockfile entry.
async fn fetch_lists(
    server: &Server,
    client: &mut McpClient,
    capabilities: mcp_client::Capabilities,
) -> Result<ServerEntry, PinError> {
    let failed = |failure| PinError::Client { server: server.name.clone(), failure };
    let mut entry = ServerEntry::new();
    for (section, list_method, array) in LISTS {
        let offered = match section {
            "tools" => capabilities.tools,
            "resources" => capabilities.resources,
            _ => capabilities.prompts,
        };
        if !offered {
            continue;
        }
        let mut pins = BTreeMap::new();
        for page in client.list_all(list_method, array).await.map_err(failed)? {
            let unpinnable =
                |reason: String| PinError::Unpinnable { server: server.name.clone(), kind: section, reason };
            let strict = jsonrpc::validate_strict(&page).map_err(|e| unpinnable(e.to_string()))?;
            let items = strict.root().get("result").and_then(|r| r.get(array));
            for item in items.iter().flat_map(|a| a.elements()) {
                if item.kind() != JsonKind::Object {
                    return Err(unpinnable("an item is not an object".to_string()));
                }
                let key = lockfile::name_key(section);
                let Some(name) = item.get(key).and_then(|n| n.as_str()) else {
                    return Err(unpinnable(format!("an item has no {key}")));
                };
                let pin = lockfile::pin_of(item).map_err(|e| unpinnable(format!("{name}: {e}")))?;
                if pins.insert(name.to_string(), pin).is_some() {
                    return Err(PinError::Duplicate {
                        server: server.name.clone(),
                        kind: section,
                        name: name.to_string(),
                    });
                }
            }
        }
        let key = lockfile::SECTIONS.into_iter().find(|k| *k == section).unwrap_or("tools");
        entry.insert(key, pins);
    }
    Ok(entry)
}

/// What `meshgate pin` was asked to do.
#[derive(Debug, Clone)]
pub struct PinRequest {
    pub registry: PathBuf,
    /// Servers to pin whole (empty: every server with `pinning`, else every server).
    pub servers: Vec<String>,
    /// `SERVER/NAME` changes to accept (then `servers` is ignored).
    pub updates: Vec<String>,
}

/// Runs `meshgate pin`; returns the lines to print.
pub async fn run(request: &PinRequest) -> Result<Vec<String>, PinError> {
    let registry = Registry::load_without_pins(&request.registry).map_err(|e| PinError::Registry(e.to_string()))?;
    let file = registry
        .pinning
        .as_ref()
        .map_or_else(|| crate::registry::lockfile_path(&request.registry, None), |p| p.lockfile.clone());
    let mut lock = if file.exists() { Lockfile::load(&file)? } else { Lockfile::default() };
    let mut lines = Vec::new();
    if request.updates.is_empty() {
        let named: Vec<&Server> = if request.servers.is_empty() {
            let pinned: Vec<&Server> = registry
                .servers
                .iter()
                .filter(|s| registry.pinning.as_ref().is_some_and(|p| p.modes.iter().any(|(n, _)| *n == s.name)))
                .collect();
            if pinned.is_empty() {
                registry.servers.iter().collect()
            } else {
                pinned
            }
        } else {
            request
                .servers
                .iter()
                .map(|n| registry.server(n).ok_or_else(|| PinError::UnknownServer(n.clone())))
                .collect::<Result<_, _>>()?
        };
        for server in named {
            let entry = fetch(&registry, server).await?;
            let counts: Vec<String> = entry.iter().map(|(k, v)| format!("{} {k}", v.len())).collect();
            lines.push(format!(
                "{}: pinned {}",
                server.name,
                if counts.is_empty() { "nothing".into() } else { counts.join(", ") }
            ));
            lock.servers.insert(server.name.clone(), entry);
        }
    } else {
        let mut fetched: BTreeMap<String, ServerEntry> = BTreeMap::new();
        for update in &request.updates {
            let (server_name, name) = update.split_once('/').ok_or_else(|| PinError::BadUpdate(update.clone()))?;
            let server =
                registry.server(server_name).ok_or_else(|| PinError::UnknownServer(server_name.to_string()))?;
            if !fetched.contains_key(server_name) {
                fetched.insert(server_name.to_string(), fetch(&registry, server).await?);
            }
            let current = fetched.get(server_name).cloned().unwrap_or_default();
            let entry = lock.servers.entry(server_name.to_string()).or_default();
            lines.push(accept(server_name, name, &current, entry)?);
        }
    }
    write_atomically(&file, lock.render().as_bytes())?;
    lines.push(format!("wrote {}", file.display()));
    Ok(lines)
}

/// Accepts the server's current definition of `name` (first the tool, then the prompt,
/// then the resource of that name) into `entry`, or removes it when the server no longer
/// lists it.
fn accept(server: &str, name: &str, current: &ServerEntry, entry: &mut ServerEntry) -> Result<String, PinError> {
    for (section, pins) in current {
        if let Some(pin) = pins.get(name) {
            let old = entry.get(section).and_then(|s| s.get(name)).map(|p| p.hash.to_string());
            entry.entry(section).or_default().insert(name.to_string(), pin.clone());
            return Ok(format!(
                "{server}/{name}: accepted {} {} (was {})",
                section.trim_end_matches('s'),
                pin.hash,
                old.unwrap_or_else(|| "unpinned".to_string())
            ));
        }
    }
    for (section, pins) in entry.iter_mut() {
        if let Some(old) = pins.remove(name) {
            return Ok(format!(
                "{server}/{name}: removed {} {} (no longer listed)",
                section.trim_end_matches('s'),
                old.hash
            ));
        }
    }
    Err(PinError::NothingToUpdate { server: server.to_string(), name: name.to_string() })
}

fn write_atomically(file: &Path, bytes: &[u8]) -> Result<(), PinError> {
    let fail = |e: &dyn std::fmt::Display| PinError::Write { file: file.to_path_buf(), reason: e.to_string() };
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(&e))?;
    std::io::Write::write_all(&mut temp, bytes).map_err(|e| fail(&e))?;
    temp.persist(file).map_err(|e| fail(&e))?;
    Ok(())
}

/// The drift of every pinned server of `registry`, as the admin API shows it.
pub async fn drift_view(registry: &Registry) -> Value {
    let Some(pinning) = &registry.pinning else {
        return json!({"servers": {}, "note": "no server is pinned"});
    };
    let mut servers = serde_json::Map::new();
    for (name, mode) in &pinning.modes {
        let Some(server) = registry.server(name) else { continue };
        let pinned = pinning.pins.servers.get(name).cloned().unwrap_or_default();
        let view = match fetch(registry, server).await {
            Ok(current) => json!({"mode": mode.as_str(), "drift": compare(&pinned, &current)}),
            Err(e) => json!({"mode": mode.as_str(), "error": e.to_string()}),
        };
        servers.insert(name.clone(), view);
    }
    json!({"lockfile": pinning.lockfile.display().to_string(), "servers": servers})
}

/// Every difference between the pinned and the current entry: changed, unpinned (new or
/// renamed) and removed definitions, each with a line diff of old and new.
pub fn compare(pinned: &ServerEntry, current: &ServerEntry) -> Vec<Value> {
    let mut out = Vec::new();
    let empty = BTreeMap::new();
    for section in lockfile::SECTIONS {
        let (Some(old), new) = (pinned.get(section), current.get(section).unwrap_or(&empty)) else { continue };
        let kind = section.trim_end_matches('s');
        for (name, pin) in new {
            match old.get(name) {
                Some(p) if p.hash == pin.hash => {}
                Some(p) => out.push(item(kind, name, "changed", Some(p), Some(pin))),
                None => out.push(item(kind, name, "unpinned", None, Some(pin))),
            }
        }
        for (name, pin) in old {
            if !new.contains_key(name) {
                out.push(item(kind, name, "removed", Some(pin), None));
            }
        }
    }
    out
}

fn item(kind: &str, name: &str, change: &str, old: Option<&Pin>, new: Option<&Pin>) -> Value {
    let text = |p: Option<&Pin>| p.map(|p| p.definition.clone()).unwrap_or_default();
    json!({
        "kind": kind,
        "name": name,
        "change": change,
        "pinned": old.map(|p| p.hash.to_string()),
        "current": new.map(|p| p.hash.to_string()),
        "diff": diff::unified(&text(old), &text(new)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(text: &str) -> Pin {
        let strict = jsonrpc::validate_strict(text.as_bytes()).unwrap();
        lockfile::pin_of(strict.root()).unwrap()
    }

    fn entry(tools: &[(&str, &str)]) -> ServerEntry {
        let mut e = ServerEntry::new();
        e.insert("tools", tools.iter().map(|(n, d)| (n.to_string(), pin(d))).collect());
        e
    }

    #[test]
    fn compare_names_changed_unpinned_and_removed_with_a_diff() {
        let pinned = entry(&[
            ("a", r#"{"name":"a","description":"Old."}"#),
            ("b", r#"{"name":"b"}"#),
            ("gone", r#"{"name":"gone"}"#),
        ]);
        let current = entry(&[
            ("a", r#"{"name":"a","description":"New."}"#),
            ("b", r#"{ "name" : "b" }"#),
            ("c", r#"{"name":"c"}"#),
        ]);
        let drift = compare(&pinned, &current);
        let changes: Vec<_> =
            drift.iter().map(|d| (d["name"].as_str().unwrap(), d["change"].as_str().unwrap())).collect();
        assert_eq!(changes, [("a", "changed"), ("c", "unpinned"), ("gone", "removed")]);
        let diff = drift[0]["diff"].as_str().unwrap();
        assert!(
            diff.contains("-  \"description\": \"Old.\",") && diff.contains("+  \"description\": \"New.\","),
            "{diff}"
        );
    }

    #[test]
    fn accept_adds_replaces_and_removes() {
        let current = entry(&[("a", r#"{"name":"a","description":"New."}"#), ("c", r#"{"name":"c"}"#)]);
        let mut lock = entry(&[("a", r#"{"name":"a","description":"Old."}"#), ("gone", r#"{"name":"gone"}"#)]);
        assert!(accept("crm", "a", &current, &mut lock).unwrap().contains("accepted tool"));
        assert_eq!(lock["tools"]["a"], current["tools"]["a"]);
        assert!(accept("crm", "c", &current, &mut lock).unwrap().contains("was unpinned"));
        assert!(accept("crm", "gone", &current, &mut lock).unwrap().contains("removed"));
        assert!(!lock["tools"].contains_key("gone"));
        assert!(accept("crm", "nope", &current, &mut lock).is_err());
    }
}
