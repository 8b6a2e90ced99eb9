//! Filtering of `tools/list`, `resources/list`, `resources/templates/list` and `prompts/list`
//! results so a caller sees only what the policy lets it use.
//!
//! The rewrite is applied to the JSON-RPC response that answers the caller's list request
//! (matched by id), whether it arrives as a JSON body or as one event of an SSE stream.
//! Everything else in the message is kept as it was (key order included).

use serde_json::Value;

use crate::jsonrpc::code;
use crate::mcp::ListShape;
use crate::policy::{Policy, Verdict};

/// What a list response must be filtered against.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub shape: ListShape,
    /// The id of the list request whose answer is filtered.
    pub request_id: Value,
    pub server: String,
    pub roles: Vec<String>,
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
        let mut value: Value = match serde_json::from_slice(message) {
            Ok(v) => v,
            Err(_) => return self.unreadable("upstream sent a list response that is not valid JSON"),
        };
        let Some(obj) = value.as_object_mut() else {
            return self.unreadable("upstream sent a list response that is not a JSON-RPC message");
        };
        if obj.get("id") != Some(&self.request_id) || obj.contains_key("method") {
            // A notification or request from the server, or another response: not ours.
            return ListOutcome::Unchanged;
        }
        let Some(result) = obj.get_mut("result") else {
            return ListOutcome::Unchanged; // a JSON-RPC error: nothing to filter
        };
        let Some(items) = result.get_mut(self.shape.array).and_then(Value::as_array_mut) else {
            return self.unreadable("upstream list response has no item array");
        };
        let before = items.len();
        items.retain(|item| {
            item.get(self.shape.field)
                .and_then(Value::as_str)
                .is_some_and(|name| policy.decide(&self.roles, self.shape.kind, &self.server, name) == Verdict::Allow)
        });
        if items.len() == before {
            return ListOutcome::Unchanged;
        }
        match serde_json::to_vec(&value) {
            Ok(bytes) => ListOutcome::Rewritten(bytes),
            Err(_) => self.unreadable("list response could not be re-encoded"),
        }
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
        let ListOutcome::Rewritten(bytes) = filter("resources/list").apply(empty.to_string().as_bytes(), &policy()) else {
            panic!()
        };
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()["result"]["resources"], json!([]));
    }

    #[test]
    fn other_messages_pass() {
        let f = filter("tools/list");
        let p = policy();
        for other in [
            json!({"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"delete_customer"}]}}),
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}),
            json!({"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}}),
        ] {
            assert_eq!(f.apply(other.to_string().as_bytes(), &p), ListOutcome::Unchanged, "{other}");
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
