//! Pinned tool, resource and prompt definitions: "rug pull" and tool-poisoning protection.
//!
//! The control plane pushes, per server, a mode ([`PinMode`]) and the pin hash of every
//! reviewed definition ([`canonical`]). The filter then checks each `tools/list`,
//! `resources/list` and `prompts/list` answer of a pinned server in the same single pass
//! that filters the list for the caller ([`crate::listing`]): every item's canonical hash is
//! compared with its pin, and, with `scan` on, its descriptions are searched for prompt
//! injection markers ([`scan`]). An item is *drifted* when it has no pin (a new or renamed
//! tool), its hash differs from its pin, it cannot be read exactly, or the scan flags it.
//!
//! - `enforce`: a drifted item is removed from the caller's list; a `tools/call`
//!   (`prompts/get`, `resources/read`) naming an unpinned item, or a pinned item whose last
//!   listing by this server showed a drifted definition, is refused with a JSON-RPC error
//!   naming the drift, before the upstream sees it. On the call path this is one hash-map
//!   lookup in the pins and one in [`PinMemory`].
//! - `observe`: everything passes.
//! - both: every drifted item is counted (`meshgate.pin_drift{server,kind,change}`) and
//!   written once per change as a log line with the pinned and new hashes (deduplicated per
//!   server, kind, name and new hash across the workers of an Envoy).
//!
//! A kind is governed only when the lockfile has a section for it on that server (a server
//! pinned without `resources` in its lockfile entry has its resources left alone).
//! Resource templates (`resources/templates/list`) are not pinned.
//!
//! Limits, by design: the gateway sees definitions, never behaviour. A server that lists the
//! pinned definition and then does something else when called cannot be told apart here;
//! pinning guarantees that what the model reads is what was reviewed. [`PinMemory`] is per
//! configuration and (in the wasm build) per worker: after a reload or on a worker that has
//! not yet seen the drifted listing, a pinned tool stays callable; the client can only have
//! read its pinned definition through the gateway, since drifted definitions never reach a
//! client under `enforce`.

pub mod canonical;
pub mod scan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::jsonrpc::RawJson;
use crate::mcp::ResourceKind;
pub use canonical::PinHash;

/// What a pinned server's drift does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    /// Count and log drift; change nothing.
    #[default]
    Observe,
    /// Also remove drifted items from lists and refuse calls to them.
    Enforce,
}

impl PinMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PinMode::Observe => "observe",
            PinMode::Enforce => "enforce",
        }
    }
}

/// One server's pins as the filter configuration carries them (`pinning.<server>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerPins {
    pub mode: PinMode,
    /// Scan descriptions for prompt-injection markers ([`scan`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scan: bool,
    /// Tool name → `sha256:<hex>`. Absent: tools are not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<BTreeMap<String, String>>,
    /// Resource URI → hash. Absent: resources are not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, String>>,
    /// Prompt name → hash. Absent: prompts are not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<BTreeMap<String, String>>,
}

/// How an item differs from what was reviewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// Listed without a pin: a new tool, or a renamed one.
    Unpinned,
    /// Its canonical hash is not its pin.
    Changed,
    /// It has no canonical form ([`canonical::CanonicalError`]).
    Unreadable,
    /// Its hash matches (or it is new) but the scan found a marker.
    Flagged,
}

impl Change {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Unpinned => "unpinned",
            Change::Changed => "changed",
            Change::Unreadable => "unreadable",
            Change::Flagged => "flagged",
        }
    }
}

/// One drifted item seen in a list answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub server: String,
    pub kind: ResourceKind,
    pub name: String,
    pub change: Change,
    pub pinned: Option<PinHash>,
    /// `None` when the definition could not be read.
    pub seen: Option<PinHash>,
    /// The scan marker found, if any.
    pub marker: Option<&'static str>,
}

impl Drift {
    /// The shared-data key that deduplicates this drift's log line across workers.
    pub fn dedupe_key(&self) -> String {
        format!("meshgate.pin.{}.{}.{}", self.server, self.kind.noun(), crate::reject::printable(&self.name))
    }

    /// What the dedupe key holds once this drift was logged.
    pub fn dedupe_value(&self) -> Vec<u8> {
        let show = |h: Option<PinHash>| h.map_or_else(|| "none".to_string(), |h| h.to_string());
        format!("{}|{}|{}|{}", self.change.as_str(), show(self.pinned), show(self.seen), self.marker.unwrap_or(""))
            .into_bytes()
    }

    /// The audit line for this drift (one per change).
    pub fn audit_line(&self, mode: PinMode) -> String {
        let show = |h: Option<PinHash>| h.map_or_else(|| "none".to_string(), |h| h.to_string());
        format!(
            "meshgate pin drift: server={} kind={} name=\"{}\" change={} mode={} pinned={} seen={}{}",
            self.server,
            self.kind.noun(),
            crate::reject::printable(&self.name),
            self.change.as_str(),
            mode.as_str(),
            show(self.pinned),
            if self.seen.is_some() { show(self.seen) } else { "unreadable".to_string() },
            self.marker.map(|m| format!(" marker=\"{m}\"")).unwrap_or_default(),
        )
    }
}

/// What the filter last saw listed for pinned items that drifted, per configuration.
/// Keyed by (kind, name); holds the drift. A listing that shows the pinned definition again
/// clears it.
#[derive(Debug, Default)]
pub struct PinMemory {
    drifted: Mutex<HashMap<(ResourceKind, String), Drift>>,
}

impl PinMemory {
    fn note(&self, kind: ResourceKind, name: &str, drift: Option<&Drift>) {
        let mut map = self.drifted.lock().unwrap_or_else(PoisonError::into_inner);
        match drift {
            Some(d) => {
                map.insert((kind, name.to_string()), d.clone());
            }
            None => {
                if !map.is_empty() {
                    map.remove(&(kind, name.to_string()));
                }
            }
        }
    }

    fn get(&self, kind: ResourceKind, name: &str) -> Option<Drift> {
        let map = self.drifted.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return None;
        }
        map.get(&(kind, name.to_string())).cloned()
    }
}

/// One server's compiled pins.
#[derive(Debug)]
pub struct ServerPins {
    pub server: String,
    pub mode: PinMode,
    pub scan: bool,
    tools: Option<HashMap<String, PinHash>>,
    resources: Option<HashMap<String, PinHash>>,
    prompts: Option<HashMap<String, PinHash>>,
    memory: PinMemory,
}

impl ServerPins {
    fn compile(server: &str, raw: &RawServerPins) -> Result<Self, ConfigError> {
        let section = |key: &str, map: &Option<BTreeMap<String, String>>| -> Result<_, ConfigError> {
            let Some(map) = map else { return Ok(None) };
            let mut out = HashMap::with_capacity(map.len());
            for (name, hash) in map {
                let parsed = PinHash::parse(hash).ok_or_else(|| {
                    ConfigError::invalid(
                        format!("pinning.{server}.{key}.{name}"),
                        format!("\"{hash}\" is not a pin hash (sha256:<64 lowercase hex digits>)"),
                    )
                })?;
                out.insert(name.clone(), parsed);
            }
            Ok(Some(out))
        };
        Ok(Self {
            server: server.to_string(),
            mode: raw.mode,
            scan: raw.scan,
            tools: section("tools", &raw.tools)?,
            resources: section("resources", &raw.resources)?,
            prompts: section("prompts", &raw.prompts)?,
            memory: PinMemory::default(),
        })
    }

    fn section(&self, kind: ResourceKind) -> Option<&HashMap<String, PinHash>> {
        match kind {
            ResourceKind::Tool => self.tools.as_ref(),
            ResourceKind::Resource => self.resources.as_ref(),
            ResourceKind::Prompt => self.prompts.as_ref(),
        }
    }

    /// Whether items of `kind` are pinned on this server.
    pub fn governs(&self, kind: ResourceKind) -> bool {
        self.section(kind).is_some()
    }

    /// Checks one listed item (its strict JSON `item`, its `name`), remembers the result
    /// for calls, and returns the drift, if any.
    pub fn check_item(&self, kind: ResourceKind, name: &str, item: RawJson<'_>) -> Option<Drift> {
        let section = self.section(kind)?;
        let pinned = section.get(name).copied();
        let seen = canonical::hash(item).ok();
        let marker = if self.scan { scan::scan_definition(item) } else { None };
        let change = match (pinned, seen) {
            (_, None) => Some(Change::Unreadable),
            (None, Some(_)) => Some(Change::Unpinned),
            (Some(p), Some(s)) if p != s => Some(Change::Changed),
            _ if marker.is_some() => Some(Change::Flagged),
            _ => None,
        };
        let drift = change.map(|change| Drift {
            server: self.server.clone(),
            kind,
            name: name.to_string(),
            change,
            pinned,
            seen,
            marker,
        });
        if pinned.is_some() {
            self.memory.note(kind, name, drift.as_ref());
        }
        drift
    }

    /// Why a call naming `name` must be refused under `enforce` (`None`: it may go on, or
    /// the mode is `observe`, or `kind` is not pinned here). The message names the drift.
    pub fn refuse_call(&self, kind: ResourceKind, name: &str) -> Option<String> {
        if self.mode != PinMode::Enforce {
            return None;
        }
        let section = self.section(kind)?;
        let noun = kind.noun();
        let shown = crate::reject::printable(name);
        let Some(pinned) = section.get(name) else {
            return Some(format!(
                "{noun} \"{}/{shown}\" is refused: it has no pinned definition (pin drift: unpinned)",
                self.server
            ));
        };
        let drift = self.memory.get(kind, name)?;
        let seen = drift.seen.map_or_else(|| "unreadable".to_string(), |h| h.to_string());
        Some(format!(
            "{noun} \"{}/{shown}\" is refused: its listed definition drifted from its pin (pin drift: {}; pinned {pinned}, listed {seen}{})",
            self.server,
            drift.change.as_str(),
            drift.marker.map(|m| format!(", marker \"{m}\"")).unwrap_or_default()
        ))
    }
}

/// Every pinned server's pins, compiled.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    servers: HashMap<String, Arc<ServerPins>>,
}

impl Pins {
    pub fn compile(raw: &BTreeMap<String, RawServerPins>, servers: &HashSet<String>) -> Result<Self, ConfigError> {
        let mut out = HashMap::new();
        for (server, pins) in raw {
            if !servers.contains(server) {
                return Err(ConfigError::invalid(
                    format!("pinning.{server}"),
                    format!("\"{server}\" is not a server of this configuration"),
                ));
            }
            out.insert(server.clone(), Arc::new(ServerPins::compile(server, pins)?));
        }
        Ok(Self { servers: out })
    }

    /// The pins of `server`, when it is pinned.
    pub fn server(&self, server: &str) -> Option<&Arc<ServerPins>> {
        if self.servers.is_empty() {
            return None;
        }
        self.servers.get(server)
    }
}

#[cfg(test)]
mod tests;
