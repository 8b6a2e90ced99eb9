//! Capabilities a server advertises that the gateway refuses to carry, withheld from its
//! `initialize` / `server/discover` answer.
//!
//! The gateway refuses every task request (`tasks/*`, a task-augmented call, a subscription
//! to task notifications: see `docs/security.md`), because a task's result is fetched by task
//! id alone and cannot be bound to the caller and tool that created it. A server that
//! advertises `capabilities.tasks` would still tell its clients that tasks work, and a
//! client that relies on the advertisement gets only refusals. So the member is removed
//! from the answer the client reads: what the client is told is what the gateway carries.
//!
//! The removal is made in place, every other byte as the server sent it (ids, numbers and
//! the rest of the result are never re-serialised). A message the reader cannot read is
//! left to the caller (the response path refuses unreadable answers on its own).

use crate::jsonrpc::{self, JsonKind, RawJson};

/// Members of `result.capabilities` the gateway withholds.
pub const WITHHELD: &[&str] = &["tasks"];

/// `message` (one JSON-RPC message) with every [`WITHHELD`] member of
/// `result.capabilities` removed, every other byte as sent. `None` when there is nothing to
/// remove, or the message is not strict JSON with an object there.
pub fn withhold(message: &[u8]) -> Option<Vec<u8>> {
    let doc = jsonrpc::validate_strict(message).ok()?;
    let capabilities = doc.root().get("result")?.get("capabilities")?;
    if capabilities.kind() != JsonKind::Object {
        return None;
    }
    let cuts = cuts(message, &capabilities);
    if cuts.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut at = 0;
    for cut in cuts {
        out.extend_from_slice(message.get(at..cut.start)?);
        at = cut.end;
    }
    out.extend_from_slice(message.get(at..)?);
    Some(out)
}

/// The byte ranges of `message` to remove: each withheld member with the comma that joins
/// it to a neighbour (the one before it, or for the first member the one after it), so
/// the object stays valid JSON. In document order, disjoint.
fn cuts(message: &[u8], capabilities: &RawJson<'_>) -> Vec<std::ops::Range<usize>> {
    let offset = |text: &str| (text.as_ptr() as usize).checked_sub(message.as_ptr() as usize);
    // (key start, value end, withheld) of every member, in order.
    let mut members = Vec::new();
    for (key, value) in capabilities.members() {
        let withheld = WITHHELD.iter().any(|name| key.matches(name));
        // The key as written starts one byte (its quote) before its inner text.
        let (Some(key_start), Some(value_start)) = (offset(key.as_written()), offset(value.text())) else {
            return Vec::new();
        };
        members.push((key_start.saturating_sub(1), value_start + value.text().len(), withheld));
    }
    let mut cuts: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, &(start, end, withheld)) in members.iter().enumerate() {
        if !withheld {
            continue;
        }
        let cut = match (i.checked_sub(1).and_then(|p| members.get(p)), members.get(i + 1)) {
            // After a member: from the end of the previous value (its comma goes).
            (Some(&(_, previous_end, _)), _) => previous_end..end,
            // The first of several: up to the next key (the comma after it goes).
            (None, Some(&(next_start, _, _))) => start..next_start,
            // The only member.
            (None, None) => start..end,
        };
        // A cut overlapping the previous one (two withheld neighbours) is merged into it.
        match cuts.last_mut() {
            Some(last) if cut.start < last.end => last.end = last.end.max(cut.end),
            _ => cuts.push(cut),
        }
    }
    cuts
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn read(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn tasks_are_withheld_wherever_they_stand_and_the_rest_is_byte_for_byte() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{},"tasks":{"list":{}},"prompts":{}},"n":1.50}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{},"prompts":{}},"n":1.50}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{ "tasks" : {} , "tools":{}}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{ "tools":{}}}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{},"tasks":{}}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{}}}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tasks":{"requests":{"tools":{"call":{}}}}}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{}}}"#,
            ),
            // An escaped key is the same key to every reader.
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"t\u0061sks":{},"tools":{}}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{}}}}"#,
            ),
        ];
        for (sent, expected) in cases {
            let out = withhold(sent.as_bytes()).unwrap_or_else(|| panic!("nothing withheld from {sent}"));
            assert_eq!(std::str::from_utf8(&out).unwrap(), *expected);
            assert!(read(&out)["result"]["capabilities"].get("tasks").is_none());
        }
    }

    #[test]
    fn nothing_to_withhold_is_none() {
        for sent in [
            json!({"jsonrpc": "2.0", "id": 1, "result": {"capabilities": {"tools": {}}}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tasks": {}}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"capabilities": {"experimental": {"tasks": {}}}}}),
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "tasks"}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"capabilities": ["tasks"]}}),
        ] {
            assert_eq!(withhold(sent.to_string().as_bytes()), None, "{sent}");
        }
        assert_eq!(withhold(br#"{"result":{"capabilities":{"tasks":{}},"x":NaN}}"#), None);
    }
}
