use super::*;

fn servers() -> HashSet<String> {
    ["crm", "payments"].into_iter().map(String::from).collect()
}

fn service() -> RawApprovalService {
    RawApprovalService { cluster: "meshgate-xds".into(), authority: "meshgate".into(), timeout_ms: None }
}

fn known(role: &str) -> bool {
    ["agent", "ops", "reader"].contains(&role)
}

fn rule(yaml: serde_json::Value) -> RawApprovalRule {
    serde_json::from_value(yaml).unwrap()
}

#[test]
fn ttl_syntax_and_range() {
    assert_eq!(parse_ttl("10m"), Ok(600));
    assert_eq!(parse_ttl("45s"), Ok(45));
    assert_eq!(parse_ttl("24h"), Ok(86_400));
    for bad in ["", "m", "10", "10d", "1.5m", "-1m", "10 m"] {
        assert!(matches!(parse_ttl(bad), Err(TtlError::Syntax(_))), "{bad}");
    }
    for out in ["0s", "25h", "99999999999999999999h"] {
        assert!(parse_ttl(out).is_err(), "{out}");
    }
}

#[test]
fn rules_match_in_policy_syntax_and_default_to_single_use() {
    let raw = vec![rule(json!({
        "name": "destructive",
        "match": {"tools": ["crm/delete_*", "payments/refund"], "roles": ["agent"]},
        "approvers": {"roles": ["ops"]}
    }))];
    let rules = ApprovalRules::compile(&raw, Some(&service()), &servers(), &known).unwrap();
    let agent = vec!["agent".to_string()];
    let r = rules.rule_for("crm", "delete_customer", &agent).unwrap();
    assert_eq!((r.ttl_secs, r.reuse, r.show_arguments, r.allow_self_approval), (600, RawReuse::Single, false, false));
    assert!(rules.rule_for("payments", "refund", &agent).is_some());
    assert!(rules.rule_for("crm", "get_customer", &agent).is_none());
    assert!(rules.rule_for("crm", "delete_customer", &["reader".to_string()]).is_none());
    assert!(r.approver(&["ops".to_string()]) && !r.approver(&agent));
}

#[test]
fn invalid_rules_name_the_path() {
    let cases = [
        (json!({"name": "Bad Name", "approvers": {"roles": ["ops"]}}), "approvals[0].name"),
        (json!({"name": "a", "approvers": {"roles": []}}), "approvals[0].approvers.roles"),
        (json!({"name": "a", "approvers": {"roles": ["ops"]}, "ttl": "1d"}), "approvals[0].ttl"),
        (
            json!({"name": "a", "match": {"tools": ["nosuch/x"]}, "approvers": {"roles": ["ops"]}}),
            "approvals[0].match.tools[0]",
        ),
    ];
    for (raw, path) in cases {
        let err = ApprovalRules::compile(&[rule(raw.clone())], Some(&service()), &servers(), &known).unwrap_err();
        assert_eq!(err.path(), Some(path), "{raw}");
    }
    let twice = [
        rule(json!({"name": "a", "approvers": {"roles": ["ops"]}})),
        rule(json!({"name": "a", "approvers": {"roles": ["ops"]}})),
    ];
    assert_eq!(
        ApprovalRules::compile(&twice, Some(&service()), &servers(), &known).unwrap_err().path(),
        Some("approvals[1].name")
    );
    let one = [rule(json!({"name": "a", "approvers": {"roles": ["ops"]}}))];
    assert_eq!(ApprovalRules::compile(&one, None, &servers(), &known).unwrap_err().path(), Some("approval_service"));
    assert!(serde_json::from_value::<RawApprovalRule>(json!({"name": "a", "aprovers": {}})).is_err());
}

#[test]
fn the_hash_binds_the_arguments_canonically() {
    let call = |args: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#)
    };
    let (a, _) = arguments_hash(call(r#"{"id": 1, "why": "x"}"#).as_bytes()).unwrap();
    let (b, _) = arguments_hash(call(r#"{"why":"x","id":1.0}"#).as_bytes()).unwrap();
    let (c, _) = arguments_hash(call(r#"{"why":"x","id":2}"#).as_bytes()).unwrap();
    assert_eq!(a, b, "key order, spacing and number spelling do not matter");
    assert_ne!(a, c, "other values need another approval");
    let (none, value) =
        arguments_hash(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#).unwrap();
    assert_eq!(none, arguments_hash(call("{}").as_bytes()).unwrap().0);
    assert_eq!(value, json!({}));
    assert_eq!(arguments_hash(call("[1]").as_bytes()), Err(HashError::NotObject));
    assert!(matches!(arguments_hash(call(r#"{"a":1,"a":2}"#).as_bytes()), Err(HashError::Invalid(_))));
}

#[test]
fn answers_become_json_rpc_errors_or_nothing() {
    let id = json!(7);
    assert!(rejection(&CheckAnswer::Approved { id: "x".into() }, "r", "crm/delete", Some(&id)).is_none());
    let pending = CheckAnswer::Pending { id: "ap_1".into(), url: "http://h/approvals?id=ap_1".into(), expires_at: 9 };
    let r = rejection(&pending, "r", "crm/delete", Some(&id)).unwrap();
    assert_eq!((r.status, r.code), (200, code::URL_ELICITATION_REQUIRED));
    let body: Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["data"]["approval"]["id"], "ap_1");
    assert_eq!(body["error"]["data"]["elicitations"][0]["mode"], "url");
    assert_eq!(body["error"]["data"]["elicitations"][0]["url"], "http://h/approvals?id=ap_1");
    let rejected = CheckAnswer::Rejected { id: "ap_1".into(), approver: "ops".into(), reason: "not today".into() };
    let r = rejection(&rejected, "r", "crm/delete", Some(&id)).unwrap();
    assert_eq!(r.code, code::FORBIDDEN);
    assert!(r.message.contains("not today") && r.message.contains("ops"), "{}", r.message);
    assert_eq!(unavailable("crm/delete", Some(&id)).status, 503);
}

#[test]
fn only_exact_answers_are_read() {
    assert_eq!(
        CheckAnswer::read(200, br#"{"decision":"approved","id":"a"}"#),
        Ok(CheckAnswer::Approved { id: "a".into() })
    );
    assert!(CheckAnswer::read(500, br#"{"decision":"approved","id":"a"}"#).is_err());
    assert!(CheckAnswer::read(200, br#"{"decision":"approved"}"#).is_err());
    assert!(CheckAnswer::read(200, br#"{"decision":"maybe","id":"a"}"#).is_err());
    assert!(CheckAnswer::read(200, br#"{"decision":"approved","id":"a","extra":1}"#).is_err());
    assert!(CheckAnswer::read(200, b"<html>").is_err());
}
