//! The pin lockfile: the reviewed definition of every tool, resource and prompt of the pinned
//! servers, with its pin hash ([`meshgate_core::pinning::canonical`]).
//!
//! ```json
//! {
//!   "version": 1,
//!   "servers": {
//!     "crm": {
//!       "tools": {
//!         "get_customer": {
//!           "hash": "sha256:…",
//!           "definition": { "description": "…", "inputSchema": { … }, "name": "get_customer" }
//!         }
//!       },
//!       "prompts": {}
//!     }
//!   }
//! }
//! ```
//!
//! `meshgate pin` writes it (definitions in canonical key order, laid out for review);
//! people review it in code review. Loading it checks every entry: the file is strict JSON
//! (no duplicate keys), unknown keys are errors, and each `hash` must be the hash of its own
//! `definition`, so what a reviewer reads is exactly what is enforced. A section (`tools`,
//! `resources`, `prompts`) that is absent leaves that kind unpinned; a present, empty one
//! pins "nothing": under `enforce` every item of that kind is then refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshgate_core::jsonrpc::{self, JsonKind, RawJson};
use meshgate_core::pinning::{canonical, PinHash, RawServerPins};
use serde::Deserialize;

/// The lockfile format version this meshgate reads and writes.
pub const VERSION: u64 = 1;

/// The kinds of definitions, by their section key in a server's entry.
pub const SECTIONS: [&str; 3] = ["tools", "resources", "prompts"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockfile {
    version: u64,
    #[serde(default)]
    servers: BTreeMap<String, RawServerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerEntry {
    #[serde(default)]
    tools: Option<BTreeMap<String, RawPin>>,
    #[serde(default)]
    resources: Option<BTreeMap<String, RawPin>>,
    #[serde(default)]
    prompts: Option<BTreeMap<String, RawPin>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    hash: String,
    #[allow(dead_code)] // Read through the strict document (exact text), not this value.
    definition: serde_json::Value,
}

/// A lockfile problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct LockfileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// One pinned definition: its hash and its canonical definition laid out for review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub hash: PinHash,
    /// The definition's canonical JSON, pretty ([`canonical::pretty`], level 0).
    pub definition: String,
}

/// One server's entry: section key → name → pin.
pub type ServerEntry = BTreeMap<&'static str, BTreeMap<String, Pin>>;

/// A loaded (or freshly built) lockfile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lockfile {
    pub servers: BTreeMap<String, ServerEntry>,
}

impl Lockfile {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Self, LockfileError> {
        let text = std::fs::read_to_string(file).map_err(|e| LockfileError {
            file: file.to_path_buf(),
            line: None,
            message: format!("cannot read the pin lockfile: {e} (create it with `meshgate pin --registry <registry>`)"),
        })?;
        Self::parse(&text, file)
    }

    /// Checks lockfile `text` as if read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Self, LockfileError> {
        let error = |line: Option<usize>, message: String| LockfileError { file: file.to_path_buf(), line, message };
        let raw: RawLockfile =
            serde_json::from_str(text).map_err(|e| error(Some(e.line()), format!("not a pin lockfile: {e}")))?;
        if raw.version != VERSION {
            return Err(error(
                None,
                format!("lockfile version {} is not supported (this meshgate reads {VERSION})", raw.version),
            ));
        }
        let strict = jsonrpc::validate_strict(text.as_bytes())
            .map_err(|e| error(None, format!("not strict JSON (duplicate keys are refused): {e}")))?;
        let root = strict.root();
        let servers_json = root.get("servers");
        let mut out = Lockfile::default();
        for (server, entry) in &raw.servers {
            if !meshgate_core::config::is_valid_server_name(server) {
                return Err(error(None, format!("\"{server}\" is not a valid server name")));
            }
            let entry_json = servers_json.and_then(|s| s.get(server));
            let mut sections = ServerEntry::new();
            for (key, pins) in [("tools", &entry.tools), ("resources", &entry.resources), ("prompts", &entry.prompts)] {
                let Some(pins) = pins else { continue };
                let section_json = entry_json.and_then(|e| e.get(key));
                let mut section = BTreeMap::new();
                for (name, pin) in pins {
                    let definition = section_json.and_then(|s| s.get(name)).and_then(|p| p.get("definition"));
                    let line = definition.map(|d| line_of(text, d));
                    let at = format!("servers.{server}.{key}.{name}");
                    let Some(definition) = definition.filter(|d| d.kind() == JsonKind::Object) else {
                        return Err(error(line, format!("{at}.definition: must be an object")));
                    };
                    let hash = PinHash::parse(&pin.hash).ok_or_else(|| {
                        error(line, format!("{at}.hash: \"{}\" is not sha256:<64 lowercase hex digits>", pin.hash))
                    })?;
                    let pretty =
                        canonical::pretty(definition, 0).map_err(|e| error(line, format!("{at}.definition: {e}")))?;
                    let actual = PinHash::of_canonical(
                        &canonical::canonical(definition).map_err(|e| error(line, e.to_string()))?,
                    );
                    if actual != hash {
                        return Err(error(
                            line,
                            format!("{at}: hash {hash} is not the hash of its definition ({actual}); re-pin with `meshgate pin --update {server}/{name}`"),
                        ));
                    }
                    let own_name = definition.get(name_key(key)).and_then(|n| n.as_str());
                    if own_name.as_deref() != Some(name.as_str()) {
                        return Err(error(line, format!("{at}.definition: its {} is not \"{name}\"", name_key(key))));
                    }
                    section.insert(name.clone(), Pin { hash, definition: pretty });
                }
                sections.insert(section_key(key), section);
            }
            out.servers.insert(server.clone(), sections);
        }
        Ok(out)
    }

    /// The filter configuration's pins for `server` in `mode`.
    pub fn filter_pins(
        &self,
        server: &str,
        mode: meshgate_core::pinning::PinMode,
        scan: bool,
    ) -> Option<RawServerPins> {
        let entry = self.servers.get(server)?;
        let section = |key: &str| {
            entry.get(key).map(|pins| pins.iter().map(|(name, pin)| (name.clone(), pin.hash.to_string())).collect())
        };
        Some(RawServerPins {
            mode,
            scan,
            tools: section("tools"),
            resources: section("resources"),
            prompts: section("prompts"),
        })
    }

    /// The lockfile as JSON text: sorted servers, sections and names; each definition in its
    /// canonical form laid out for review.
    pub fn render(&self) -> String {
        let mut out = format!("{{\n  \"version\": {VERSION},\n  \"servers\": {{");
        for (i, (server, sections)) in self.servers.iter().enumerate() {
            out.push_str(if i > 0 { ",\n" } else { "\n" });
            out.push_str(&format!("    {}: {{", json_string(server)));
            for (j, (key, pins)) in sections.iter().enumerate() {
                out.push_str(if j > 0 { ",\n" } else { "\n" });
                out.push_str(&format!("      {}: {{", json_string(key)));
                for (k, (name, pin)) in pins.iter().enumerate() {
                    out.push_str(if k > 0 { ",\n" } else { "\n" });
                    out.push_str(&format!("        {}: {{\n", json_string(name)));
                    out.push_str(&format!("          \"hash\": \"{}\",\n", pin.hash));
                    out.push_str(&format!("          \"definition\": {}\n", indent(&pin.definition, 5)));
                    out.push_str("        }");
                }
                out.push_str(if pins.is_empty() { "}" } else { "\n      }" });
            }
            out.push_str(if sections.is_empty() { "}" } else { "\n    }" });
        }
        out.push_str(if self.servers.is_empty() { "}\n}\n" } else { "\n  }\n}\n" });
        out
    }
}

/// The key naming an item of a section (`uri` for resources).
pub fn name_key(section: &str) -> &'static str {
    if section == "resources" {
        "uri"
    } else {
        "name"
    }
}

fn section_key(key: &str) -> &'static str {
    SECTIONS.into_iter().find(|s| *s == key).unwrap_or("tools")
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `text` (a pretty canonical form at level 0) with every line after the first indented by
/// `level` two-space steps.
fn indent(text: &str, level: usize) -> String {
    text.replace('\n', &format!("\n{}", "  ".repeat(level)))
}

/// The 1-based line of `value` in `text`.
fn line_of(text: &str, value: RawJson<'_>) -> usize {
    let offset = (value.text().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    text.get(..offset).map_or(1, |before| before.matches('\n').count() + 1)
}

/// A pin of one definition (strict JSON text of the definition object).
pub fn pin_of(definition: RawJson<'_>) -> Result<Pin, canonical::CanonicalError> {
    Ok(Pin {
        hash: PinHash::of_canonical(&canonical::canonical(definition)?),
        definition: canonical::pretty(definition, 0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(text: &str) -> Pin {
        let strict = jsonrpc::validate_strict(text.as_bytes()).unwrap();
        pin_of(strict.root()).unwrap()
    }

    fn sample() -> Lockfile {
        let mut lock = Lockfile::default();
        let mut crm = ServerEntry::new();
        crm.insert(
            "tools",
            [("get_customer".to_string(), pin(r#"{"name":"get_customer","inputSchema":{"type":"object","properties":{}},"description":"Reads \"one\"."}"#))]
                .into_iter()
                .collect(),
        );
        crm.insert("prompts", BTreeMap::new());
        lock.servers.insert("crm".to_string(), crm);
        lock
    }

    #[test]
    fn render_and_load_round_trip() {
        let lock = sample();
        let text = lock.render();
        let back = Lockfile::parse(&text, Path::new("pins.lock.json")).unwrap();
        assert_eq!(back, lock);
        assert!(text.contains("\"description\": \"Reads \\\"one\\\".\""), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["servers"]["crm"]["prompts"], serde_json::json!({}));
        assert_eq!(Lockfile::default().render(), "{\n  \"version\": 1,\n  \"servers\": {}\n}\n");
    }

    #[test]
    fn an_edited_definition_without_its_hash_is_refused_with_its_line() {
        let text = sample().render().replace("Reads", "Deletes");
        let e = Lockfile::parse(&text, Path::new("pins.lock.json")).unwrap_err();
        assert!(e.message.contains("is not the hash of its definition"), "{e}");
        let line = text.lines().position(|l| l.contains("\"definition\"")).unwrap() + 1;
        assert_eq!(e.line, Some(line));
        assert!(e.to_string().starts_with(&format!("pins.lock.json:{line}: ")), "{e}");
    }

    #[test]
    fn malformed_lockfiles_are_refused() {
        let good = sample().render();
        for (bad, want) in [
            (good.replace("\"version\": 1", "\"version\": 2"), "version 2"),
            (good.replace("\"hash\"", "\"hashes\""), "unknown field"),
            (good.replace("\"prompts\": {}", "\"prompts\": {}, \"prompts\": {}"), "duplicate"),
            (good.replace("\"get_customer\": {", "\"get_other\": {"), "its name is not \"get_other\""),
            ("{".to_string(), "not a pin lockfile"),
        ] {
            let e = Lockfile::parse(&bad, Path::new("l.json")).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }
}
