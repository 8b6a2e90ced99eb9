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
//!   lookup in the pins and, for a pinned item, one read of the server's drift state (shared
//!   by the workers of an Envoy: proxy-wasm shared data, or process memory in the native
//!   build; see [`merge_state`]), written only when a list answer changes it.
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
//! pinning guarantees that what the model reads is what was reviewed. Before any listing
//! showed drift (e.g. right after Envoy starts), a pinned tool is callable: the pin is what
//! was reviewed, and a client can only have read that definition through the gateway, since
//! drifted definitions never reach a client under `enforce`.

pub mod canonical;
pub mod scan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

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
    /// What identifies this change for the once-per-change log line: 8 bytes of the SHA-256
    /// of kind, name, change, pinned and seen hash, and marker.
    pub fn digest(&self) -> [u8; 8] {
        use sha2::{Digest as _, Sha256};
        let show = |h: Option<PinHash>| h.map_or_else(|| "none".to_string(), |h| h.to_string());
        let text = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.kind.noun(),
            self.name,
            self.change.as_str(),
            show(self.pinned),
            show(self.seen),
            self.marker.unwrap_or("")
        );
        let hash = Sha256::digest(text.as_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&hash[..8]);
        out
    }

    /// The log line for this drift (one per change): `meshgate pin drift: ` and
    /// [`Self::audit_value`].
    pub fn audit_line(&self, mode: PinMode) -> String {
        format!("meshgate pin drift: {}", self.audit_value(mode))
    }

    /// This drift as the audit record's `mcp_pin_drift` value: server, kind, name, change,
    /// mode, and the pinned and seen hashes.
    pub fn audit_value(&self, mode: PinMode) -> String {
        let show = |h: Option<PinHash>| h.map_or_else(|| "none".to_string(), |h| h.to_string());
        format!(
            "server={} kind={} name=\"{}\" change={} mode={} pinned={} seen={}{}",
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

/// What list answers of one server showed, for the shared drift state: pinned items seen
/// drifted, and pinned items seen as pinned (which clears an earlier drift).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinReport {
    pub drifts: Vec<Drift>,
    /// Pinned items listed with their pinned definition.
    pub clean: Vec<(ResourceKind, String)>,
}

impl PinReport {
    pub fn is_empty(&self) -> bool {
        self.drifts.is_empty() && self.clean.is_empty()
    }
}

/// Most changes one server's log-dedupe set remembers ([`note_logged`]); past it the set
/// starts over (a change may then be logged again: bounded memory whatever a server lists).
pub const MAX_LOGGED_CHANGES: usize = 4096;

/// The drifts of `drifts` not yet logged for their server, given the server's dedupe set
/// `stored` (8-byte digests, [`Drift::digest`]); and the set to store (`None`: unchanged).
/// One shared key per server, whatever a hostile server lists.
pub fn note_logged(stored: Option<&[u8]>, drifts: &[Drift]) -> (Vec<usize>, Option<Vec<u8>>) {
    let mut set: Vec<u8> = stored.unwrap_or_default().to_vec();
    let mut fresh = Vec::new();
    for (i, drift) in drifts.iter().enumerate() {
        let digest = drift.digest();
        if set.chunks_exact(8).any(|d| d == digest) {
            continue;
        }
        if set.len() / 8 >= MAX_LOGGED_CHANGES {
            set.clear();
        }
        set.extend_from_slice(&digest);
        fresh.push(i);
    }
    let write = (!fresh.is_empty()).then_some(set);
    (fresh, write)
}

/// The shared-data key of a server's log-dedupe set ([`note_logged`]).
pub fn logged_key(server: &str) -> String {
    format!("meshgate.pin_logged.{server}")
}

/// One pinned item whose last listing drifted, as the shared drift state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDrift {
    pub kind: String,
    pub name: String,
    pub change: String,
    /// The pin it drifted from: state about another pin (before `meshgate pin --update`
    /// reached this Envoy) is stale and ignored.
    pub pinned: String,
    pub seen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

/// The drift state of one server, shared by the workers of an Envoy ([`crate::pipeline::Host::update_counter`]
/// under [`ServerPins::state_key`]): the pinned items whose last listing drifted. Written only
/// when a list answer changes it; read once per call to a pinned server under `enforce`.
pub fn merge_state(stored: Option<&[u8]>, report: &PinReport) -> Option<Vec<u8>> {
    let before: Vec<StoredDrift> = stored.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
    let mut after = before.clone();
    for (kind, name) in &report.clean {
        after.retain(|d| !(d.kind == kind.noun() && &d.name == name));
    }
    for drift in &report.drifts {
        let Some(pinned) = drift.pinned else { continue };
        after.retain(|d| !(d.kind == drift.kind.noun() && d.name == drift.name));
        after.push(StoredDrift {
            kind: drift.kind.noun().to_string(),
            name: drift.name.clone(),
            change: drift.change.as_str().to_string(),
            pinned: pinned.to_string(),
            seen: drift.seen.map(|h| h.to_string()),
            marker: drift.marker.map(String::from),
        });
    }
    if after == before && stored.is_some() {
        return None;
    }
    serde_json::to_vec(&after).ok()
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
    /// The exact JSON text of each pinned item last found clean (its hash equal to its pin,
    /// no scan marker), per (kind, name): an item listed again with the same bytes is clean
    /// without canonicalising and hashing it again (same bytes, same canonical form, same
    /// hash, same scan result). Holds pinned names only, each at most
    /// [`MAX_REMEMBERED_ITEM_BYTES`]: bounded by the lockfile.
    clean_texts: std::sync::Mutex<HashMap<(ResourceKind, String), Box<str>>>,
}

/// Items longer than this are checked in full every time rather than remembered.
const MAX_REMEMBERED_ITEM_BYTES: usize = 64 * 1024;

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
            clean_texts: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Whether `item` is byte for byte the text last found clean for (`kind`, `name`).
    fn known_clean(&self, kind: ResourceKind, name: &str, item: &str) -> bool {
        // A poisoned lock only loses the shortcut: the item is checked in full.
        self.clean_texts
            .lock()
            .is_ok_and(|texts| texts.get(&(kind, name.to_string())).is_some_and(|known| &**known == item))
    }

    /// Remembers `item` as the clean text of (`kind`, `name`).
    fn remember_clean(&self, kind: ResourceKind, name: &str, item: &str) {
        if item.len() > MAX_REMEMBERED_ITEM_BYTES {
            return;
        }
        if let Ok(mut texts) = self.clean_texts.lock() {
            texts.insert((kind, name.to_string()), item.into());
        }
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

    /// Checks one listed item (its strict JSON `item`, its `name`): its drift goes to
    /// `report.drifts`; a pinned item listed as pinned to `report.clean`. Whether it drifted.
    pub fn check_item(&self, kind: ResourceKind, name: &str, item: RawJson<'_>, report: &mut PinReport) -> bool {
        let Some(section) = self.section(kind) else {
            return false;
        };
        let pinned = section.get(name).copied();
        if pinned.is_some() && self.known_clean(kind, name, item.text()) {
            report.clean.push((kind, name.to_string()));
            return false;
        }
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
        match drift {
            Some(drift) => {
                report.drifts.push(drift);
                true
            }
            None => {
                self.remember_clean(kind, name, item.text());
                report.clean.push((kind, name.to_string()));
                false
            }
        }
    }

    /// The shared-data key of this server's drift state ([`merge_state`]).
    pub fn state_key(&self) -> String {
        format!("meshgate.pin_state.{}", self.server)
    }

    /// Whether a call naming the pinned `name` must be refused under `enforce` because its
    /// last listing drifted (`stored`: the server's drift state).
    pub fn refuse_drifted(&self, kind: ResourceKind, name: &str, stored: Option<&[u8]>) -> Option<String> {
        if self.mode != PinMode::Enforce {
            return None;
        }
        let pinned = self.section(kind)?.get(name)?;
        let state: Vec<StoredDrift> = serde_json::from_slice(stored?).ok()?;
        let current = pinned.to_string();
        let drift = state.into_iter().find(|d| d.kind == kind.noun() && d.name == name && d.pinned == current)?;
        Some(format!(
            "{} \"{}/{}\" is refused: its listed definition drifted from its pin (pin drift: {}; pinned {pinned}, listed {}{})",
            kind.noun(),
            self.server,
            crate::reject::printable(name),
            drift.change,
            drift.seen.as_deref().unwrap_or("unreadable"),
            drift.marker.map(|m| format!(", marker \"{m}\"")).unwrap_or_default()
        ))
    }

    /// Whether calls naming `name` need the drift state (enforce, and a pinned item).
    pub fn watches(&self, kind: ResourceKind, name: &str) -> bool {
        self.mode == PinMode::Enforce && self.section(kind).is_some_and(|s| s.contains_key(name))
    }

    /// Why a call naming `name` must be refused under `enforce` for having no pin (`None`: it
    /// is pinned, or the mode is `observe`, or `kind` is not pinned here). Calls of pinned
    /// items are checked against the drift state by the pipeline ([`Self::refuse_drifted`]).
    pub fn refuse_call(&self, kind: ResourceKind, name: &str) -> Option<String> {
        if self.mode != PinMode::Enforce {
            return None;
        }
        let section = self.section(kind)?;
        let noun = kind.noun();
        let shown = crate::reject::printable(name);
        if section.contains_key(name) {
            return None;
        }
        Some(format!(
            "{noun} \"{}/{shown}\" is refused: it has no pinned definition (pin drift: unpinned)",
            self.server
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
