//! The registry reference (`docs/registry.md`) against the keys the validator accepts.
//!
//! The documented keys are read from the reference's key tables: every Markdown table whose
//! header starts with `| key |`. The first cell of a row lists keys in backticks separated
//! by ` / `; a key starting with `.` replaces the last segment of the one before it
//! (`` `servers[].tls.ca_file` / `.sni` ``). `<role>`-style placeholders stand for a map's key.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{leaf_keys, registry_keys, MAP_KEY};

const REFERENCE: &str = "docs/registry.md";

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(REFERENCE)
}

/// `<role>` → `<*>`, so the docs can name a map key by what it means.
fn normalise(key: &str) -> String {
    let mut out = String::new();
    let mut rest = key;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        match rest[start..].find('>') {
            Some(end) => {
                out.push_str(MAP_KEY);
                rest = &rest[start + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Keys of one first cell, or why the cell is not in the key syntax.
fn cell_keys(cell: &str) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = Vec::new();
    for part in cell.split(" / ") {
        let part = part.trim();
        let inner = part
            .strip_prefix('`')
            .and_then(|p| p.strip_suffix('`'))
            .filter(|p| !p.is_empty() && !p.contains('`') && !p.contains(' '))
            .ok_or_else(|| format!("`{cell}`: each key must be one `backticked.path`, separated by \" / \""))?;
        let key = match inner.strip_prefix('.') {
            Some(last) => {
                let previous = keys.last().ok_or_else(|| format!("`{cell}`: `.{last}` has no key before it"))?;
                let parent = previous.rsplit_once('.').map(|(p, _)| p).unwrap_or_default();
                format!("{parent}.{last}")
            }
            None => inner.to_string(),
        };
        keys.push(normalise(&key));
    }
    Ok(keys)
}

/// Every key documented in the reference's key tables, with its line, plus malformed rows.
fn documented(text: &str) -> (Vec<(String, usize)>, Vec<String>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let mut in_key_table = false;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if !trimmed.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let first = trimmed.trim_start_matches('|').split('|').next().unwrap_or_default().trim();
        if first == "key" {
            in_key_table = true;
            continue;
        }
        if !in_key_table || first.starts_with("---") {
            continue;
        }
        match cell_keys(first) {
            Ok(found) => keys.extend(found.into_iter().map(|k| (k, line_no))),
            Err(problem) => problems.push(format!("{REFERENCE}:{line_no}: {problem}")),
        }
    }
    (keys, problems)
}

#[test]
fn the_probe_finds_nested_keys_of_every_kind() {
    let keys = registry_keys().unwrap_or_default();
    for key in [
        "listener.port",
        "servers[].health_check.type",
        "servers[].tools[].limits.max_argument_bytes",
        "policy.roles.<*>.resources.allow",
        "auth.mtls[].spiffe_id",
        "virtual_servers[].separator",
        "observability.otel.sampling_percent",
    ] {
        assert!(keys.contains(key), "{key} missing from {keys:?}");
    }
    let leaves = leaf_keys(&keys);
    assert!(leaves.contains("listener.port") && !leaves.contains("listener") && !leaves.contains("servers[]"));
}

#[test]
fn the_cell_syntax_expands_shorthands() {
    assert_eq!(
        cell_keys("`policy.roles.<role>.allow` / `.deny`"),
        Ok(vec!["policy.roles.<*>.allow".to_string(), "policy.roles.<*>.deny".to_string()])
    );
    assert!(cell_keys("`quotas[].rate` + `burst`").is_err());
    let (keys, problems) =
        documented("| key | meaning |\n|---|---|\n| `a.b` / `.c` | x |\n\n| guardrail | x |\n| y z | x |\n");
    assert_eq!(keys, vec![("a.b".to_string(), 3), ("a.c".to_string(), 3)]);
    assert!(problems.is_empty(), "{problems:?}");
}

/// Docs and validator cannot drift: every key the registry accepts is documented, and every
/// documented key is accepted.
#[test]
fn every_registry_key_is_documented_and_every_documented_key_exists() {
    let accepted = match registry_keys() {
        Ok(keys) => keys,
        Err(e) => panic!("probing the raw registry types failed: {e}"),
    };
    let path = reference_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let (documented, mut problems) = documented(&text);
    let documented_set: BTreeSet<&str> = documented.iter().map(|(k, _)| k.as_str()).collect();
    for key in leaf_keys(&accepted) {
        if !documented_set.contains(key.as_str()) {
            let shown = key.replace(MAP_KEY, "<name>");
            problems.push(format!(
                "registry key `{shown}` is accepted by the validator (xds-server/src/registry/raw.rs and the raw \
                 types it uses) but not documented: add a row \"| `{shown}` | meaning | default |\" to the key table \
                 of its section in {REFERENCE}"
            ));
        }
    }
    for (key, line) in &documented {
        // `servers[]` names the list's entries: the list `servers` itself.
        if !accepted.contains(key.strip_suffix("[]").unwrap_or(key)) {
            problems.push(format!(
                "{REFERENCE}:{line}: documents `{key}`, which the registry does not accept (a typo, or a key that was \
                 removed or renamed in the raw types)"
            ));
        }
    }
    assert!(problems.is_empty(), "registry reference and validator disagree:\n  {}", problems.join("\n  "));
}
