//! Filtering of `tools/list`, `resources/list`, `resources/templates/list` and `prompts/list`
//! results so a caller sees only what the policy lets it use.
//!
//! The rewrite is applied to the JSON-RPC response that answers the caller's list request
//! (matched by id), whether it arrives as a JSON body or as one event of an SSE stream.
//!
//! The message is validated strictly (like requests: duplicate keys anywhere make it
//! unreadable, so the filter and the client can never read an item's name differently) and
//! then read in place: only each item's name is decoded. A rewritten message is the original
//! bytes with the item array replaced by the kept items' original text, so everything else
//! (key order, formatting, escapes, numbers) is exactly what the upstream sent.
//!
//! For a pinned server ([`crate::pinning`]) the same pass checks each item's definition
//! against its pin: under `enforce` a drifted item is removed as a denied one is, and every
//! drift is reported to the caller of [`ListFilter::apply_pinned`].

use serde_json::Value;

use crate::jsonrpc::{self, code, JsonKind};
use crate::mcp::ListShape;
use crate::pinning::{PinMode, PinReport, ServerPins};
use crate::policy::{Policy, Verdict};

/// What a list response must be filtered against.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub shape: ListShape,
    /// The id of the list request whose answer is filtered.
    pub request_id: Value,
    pub server: String,
    pub roles: Vec<String>,
    /// The server's pins, when this kind of item is pinned there.
    pub pins: Option<std::sync::Arc<ServerPins>>,
}

/// Result of looking at one JSON-RPC message from upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum ListOutcome {
    /// Not the awaited answer, or nothing was removed: pass the original bytes.
    Unchanged,
    /// Items were removed: send this instead.
    Rewritten(Vec<u8>),
    /// The awaited answer could not be read: fail closed with this JSON-RPC error body.
    Unreadable(Vec<u8>),
}

impl ListFilter {
    /// Filters one upstream message (a JSON body or one SSE event's data).
    pub fn apply(&self, message: &[u8], policy: &Policy) -> ListOutcome {
        self.apply_pinned(message, policy, &mut PinReport::default())
    }

    /// [`Self::apply`], reporting what a pinned server's items showed to `report`.
    pub fn apply_pinned(&self, message: &[u8], policy: &Policy, report: &mut PinReport) -> ListOutcome {
        let Ok(strict) = jsonrpc::validate_strict(message) else {
            return self.unreadable("upstream sent a list response that is not valid JSON");
        };
        let doc = strict.root();
        if doc.kind() != JsonKind::Object {
            return self.unreadable("upstream sent a list response that is not a JSON-RPC message");
        }
        let [id, method, result, error] = doc.fields(["id", "method", "result", "error"]);
        if result.is_none() && error.is_none() {
            // A notification or request from the server: not an answer.
            return ListOutcome::Unchanged;
        }
        // An answer on this request's stream: clients match responses loosely (the
        // TypeScript client by `Number(id)`, the Python client takes any response on the
        // stream as the answer), so one that is not exactly ours (same JSON type and value)
        // is refused, never passed on unfiltered.
        if method.is_some() {
            return self.unreadable("upstream sent a list response that is also a request");
        }
        if id.map(|id| id.to_value()).as_ref() != Some(&self.request_id) {
            let shown = id.map_or_else(|| "(none)".to_string(), |id| crate::reject::printable(id.text()));
            return self.unreadable(&format!(
                "upstream answered the list request {} with a response for id {shown}",
                self.request_id
            ));
        }
        let Some(result) = result else {
            return ListOutcome::Unchanged; // a JSON-RPC error: nothing to filter
        };
        let Some(items) = result.get(self.shape.array).filter(|a| a.kind() == JsonKind::Array) else {
            return self.unreadable("upstream list response has no item array");
        };
        let mut kept = Vec::new();
        let mut removed = false;
        for item in items.elements() {
            let name = item.get(self.shape.field).and_then(|n| n.as_str());
            let mut allowed = name
                .as_ref()
                .is_some_and(|name| policy.decide(&self.roles, self.shape.kind, &self.server, name) == Verdict::Allow);
            if let (Some(pins), Some(name)) = (&self.pins, &name) {
                if pins.check_item(self.shape.kind, name, item, report) {
                    allowed &= pins.mode == PinMode::Observe;
                }
            }
            if allowed {
                kept.push(item.text());
            } else {
                removed = true;
            }
        }
        if !removed {
            return ListOutcome::Unchanged;
        }
        // The original bytes around the array, the kept items' own text inside it.
        let whole = doc.text().as_bytes();
        let Some((before, after)) =
            items.span_in(&doc).and_then(|span| Some((whole.get(..span.start)?, whole.get(span.end..)?)))
        else {
            return self.unreadable("list response could not be re-encoded");
        };
        let mut out = Vec::with_capacity(whole.len());
        out.extend_from_slice(before);
        out.push(b'[');
        for (i, item) in kept.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item.as_bytes());
        }
        out.push(b']');
        out.extend_from_slice(after);
        ListOutcome::Rewritten(out)
    }

    fn unreadable(&self, message: &str) -> ListOutcome {
        ListOutcome::Unreadable(crate::jsonrpc::error_body(Some(&self.request_id), code::INTERNAL_ERROR, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawPolicy, RawRole, RawRules};
    use crate::mcp::ResourceKind;
    use serde_json::json;

    fn policy() -> Policy {
        let mut raw = RawPolicy::default();
        raw.roles.insert(
            "reader".into(),
            RawRole {
                allow: vec!["crm/get_*".into(), "crm/list_*".into()],
                prompts: RawRules { allow: vec!["crm/summarize_*".into()], deny: vec![] },
                ..Default::default()
            },
        );
        Policy::compile(&raw, &["crm".to_string()].into_iter().collect()).unwrap()
    }

    fn filter(method: &str) -> ListFilter {
        ListFilter {
            shape: ResourceKind::of_list_method(method).unwrap(),
            request_id: json!(3),
            server: "crm".into(),
            roles: vec!["reader".into()],
            pins: None,
        }
    }

    #[test]
    fn removes_tools_the_caller_may_not_call() {
        let body = json!({"jsonrpc":"2.0","id":3,"result":{"tools":[
            {"name":"get_customer","inputSchema":{}},
            {"name":"delete_customer","inputSchema":{}},
            {"name":"list_customers","inputSchema":{}}
        ],"nextCursor":"c"}});
        let out = filter("tools/list").apply(body.to_string().as_bytes(), &policy());
        let ListOutcome::Rewritten(bytes) = out else { panic!("{out:?}") };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let names: Vec<_> = v["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].clone()).collect();
        assert_eq!(names, vec![json!("get_customer"), json!("list_customers")]);
        assert_eq!(v["result"]["nextCursor"], json!("c"));
        // Key order is preserved.
        assert!(String::from_utf8(bytes).unwrap().starts_with(r#"{"jsonrpc":"2.0","id":3,"result""#));
    }

    #[test]
    fn filters_prompts_and_keeps_unchanged_bodies() {
        let body = json!({"jsonrpc":"2.0","id":3,"result":{"prompts":[{"name":"summarize_customer"}]}});
        assert_eq!(filter("prompts/list").apply(body.to_string().as_bytes(), &policy()), ListOutcome::Unchanged);
        let empty = json!({"jsonrpc":"2.0","id":3,"result":{"resources":[{"uri":"crm://stats"}]}});
        let ListOutcome::Rewritten(bytes) = filter("resources/list").apply(empty.to_string().as_bytes(), &policy())
        else {
            panic!()
        };
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()["result"]["resources"], json!([]));
    }

    #[test]
    fn other_messages_pass() {
        let f = filter("tools/list");
        let p = policy();
        for other in [
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}),
            json!({"jsonrpc":"2.0","id":9,"method":"sampling/createMessage","params":{}}),
            json!({"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}),
            json!({}),
        ] {
            assert_eq!(f.apply(other.to_string().as_bytes(), &p), ListOutcome::Unchanged, "{other}");
        }
    }

    /// Issue #13 item 3: an answer whose id is not exactly the request's (another number,
    /// the same number as a string or as `3.0`, none, null) passed unfiltered, and clients
    /// took it as the answer. Any answer on the stream is filtered or refused.
    #[test]
    fn answers_with_another_id_are_refused() {
        let f = filter("tools/list");
        let p = policy();
        for id in ["4", "\"3\"", "3.0", "null", "-3", "30"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{{"name":"delete_customer"}}]}}}}"#);
            let ListOutcome::Unreadable(error) = f.apply(body.as_bytes(), &p) else { panic!("{body}") };
            let v: Value = serde_json::from_slice(&error).unwrap();
            assert_eq!(v["id"], json!(3), "{body}");
            assert!(v["error"]["message"].as_str().unwrap().contains(&crate::reject::printable(id)), "{v}");
        }
        for body in [
            r#"{"jsonrpc":"2.0","result":{"tools":[{"name":"delete_customer"}]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"x","result":{"tools":[{"name":"delete_customer"}]}}"#,
            r#"{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"m"}}"#,
        ] {
            assert!(matches!(f.apply(body.as_bytes(), &p), ListOutcome::Unreadable(_)), "{body}");
        }
        // A string id is matched as a string.
        let named = ListFilter { request_id: json!("3"), ..f };
        let body = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#;
        assert!(matches!(named.apply(body.as_bytes(), &p), ListOutcome::Unreadable(_)));
        let body = r#"{"jsonrpc":"2.0","id":"3","result":{"tools":[]}}"#;
        assert_eq!(named.apply(body.as_bytes(), &p), ListOutcome::Unchanged);
    }

    #[test]
    fn rewrites_keep_the_upstream_text() {
        let body = "{\"jsonrpc\": \"2.0\",\n \"id\": 3, \"result\": {\"tools\": [\n  {\"name\": \"get\\u005fcustomer\", \"x\": 1.50},\n  {\"name\": \"delete_customer\"} ,\n  {\"name\": \"list_all\", \"d\": \"caf\\u00e9 \\/\"}\n ], \"nextCursor\": \"c\"}}\n";
        let ListOutcome::Rewritten(bytes) = filter("tools/list").apply(body.as_bytes(), &policy()) else { panic!() };
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\"jsonrpc\": \"2.0\",\n \"id\": 3, \"result\": {\"tools\": [{\"name\": \"get\\u005fcustomer\", \"x\": 1.50},{\"name\": \"list_all\", \"d\": \"caf\\u00e9 \\/\"}], \"nextCursor\": \"c\"}}"
        );
    }

    #[test]
    fn duplicate_keys_make_a_list_unreadable() {
        for body in [
            r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"get_x","name":"delete_x"}]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"id":4,"result":{"tools":[]}}"#,
        ] {
            assert!(
                matches!(filter("tools/list").apply(body.as_bytes(), &policy()), ListOutcome::Unreadable(_)),
                "{body}"
            );
        }
    }

    /// The filter before it read in place: build the tree, retain, re-serialize.
    fn reference(f: &ListFilter, message: &[u8], policy: &Policy) -> Option<Option<Value>> {
        let mut value: Value = serde_json::from_slice(message).ok()?;
        let obj = value.as_object_mut()?;
        if !obj.contains_key("result") && !obj.contains_key("error") {
            return Some(None);
        }
        if obj.get("id") != Some(&f.request_id) || obj.contains_key("method") {
            return None;
        }
        let Some(result) = obj.get_mut("result") else {
            return Some(None);
        };
        let items = result.get_mut(f.shape.array).and_then(Value::as_array_mut)?;
        let before = items.len();
        items.retain(|item| {
            item.get(f.shape.field)
                .and_then(Value::as_str)
                .is_some_and(|name| policy.decide(&f.roles, f.shape.kind, &f.server, name) == Verdict::Allow)
        });
        Some((items.len() != before).then_some(value))
    }

    proptest::proptest! {
        /// Same decisions and, when rewritten, the same JSON as the tree-building filter.
        #[test]
        fn agrees_with_the_tree_filter(
            items in proptest::collection::vec((0usize..6, proptest::bool::ANY), 0..8),
            id in 2i64..5,
            extra in 0usize..4,
        ) {
            let names = ["get_a", "delete_b", "list_c", "get\\u005fd", "", "x"];
            let items: Vec<String> = items
                .iter()
                .map(|(n, with_name)| if *with_name { format!(r#"{{"name":"{}","inputSchema":{{"name":"zz"}}}}"#, names[*n]) } else { r#"{"title":"t"}"#.into() })
                .collect();
            let tail = [r#""#, r#","nextCursor":"c""#, r#","tools":"#, r#","method":"m""#][extra];
            let body = if extra == 2 {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"other":[{}]}}}}"#, items.join(","))
            } else {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{}]{tail}}}}}"#, items.join(","))
            };
            let body = if extra == 3 { body.replacen(r#","method":"m""#, "", 1).replacen(r#""id""#, r#""method":"m","id""#, 1) } else { body };
            let f = filter("tools/list");
            let p = policy();
            let got = f.apply(body.as_bytes(), &p);
            match (reference(&f, body.as_bytes(), &p), got) {
                (Some(None), ListOutcome::Unchanged) => {}
                (Some(Some(want)), ListOutcome::Rewritten(bytes)) => {
                    proptest::prop_assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), want);
                }
                (None, ListOutcome::Unreadable(_)) => {}
                (want, got) => proptest::prop_assert!(false, "{body}: reference {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn unreadable_answers_fail_closed() {
        let f = filter("tools/list");
        for bad in [&b"not json"[..], br#"{"jsonrpc":"2.0","id":3,"result":{}}"#, b"[1]"] {
            let ListOutcome::Unreadable(body) = f.apply(bad, &policy()) else { panic!() };
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["id"], json!(3));
            assert_eq!(v["error"]["code"], json!(code::INTERNAL_ERROR));
        }
    }
}
