use meshgate_core::approval::{ApprovalRules, RawApprovalRule, RawApprovalService};
use serde_json::json;

use super::*;

const URL: &str = "http://127.0.0.1:9/approvals";

fn rule(extra: serde_json::Value) -> ApprovalRule {
    let mut raw = json!({"name": "destructive", "match": {"tools": ["crm/delete_*"]}, "approvers": {"roles": ["ops"]}});
    if let (Some(base), Some(extra)) = (raw.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    let raw: RawApprovalRule = serde_json::from_value(raw).unwrap();
    let service = RawApprovalService { cluster: "c".into(), authority: "a".into(), timeout_ms: None };
    let servers = ["crm".to_string()].into_iter().collect();
    ApprovalRules::compile(&[raw], Some(&service), &servers, &|_| true).unwrap().rules()[0].clone()
}

fn call(consumer: &str, hash: &str) -> CheckRequest {
    CheckRequest {
        rule: "destructive".into(),
        consumer: consumer.into(),
        server: "crm".into(),
        tool: "delete_customer".into(),
        arguments_sha256: hash.into(),
        approval_id: None,
        arguments: Some(json!({"id": 7})),
    }
}

fn pending_id(answer: &CheckAnswer) -> String {
    match answer {
        CheckAnswer::Pending { id, url, .. } => {
            assert_eq!(url, &page_url(URL, id));
            id.clone()
        }
        other => panic!("not pending: {other:?}"),
    }
}

async fn approve(kv: &Kv, id: &str, by: &str, r: &ApprovalRule, now: u64) -> Result<Record, DecideError> {
    let rules = |_: &str| Some(r.clone());
    let roles = ["ops".to_string()];
    decide(kv, id, Decision { approver: by, roles: &roles, approve: true, reason: "" }, &rules, now).await
}

#[tokio::test]
async fn a_single_use_approval_lets_exactly_one_identical_call_through() {
    let (kv, r) = (Kv::memory(), rule(json!({})));
    let first = check(&kv, &call("agent", "sha256:aa"), &r, 100, URL).await.unwrap();
    assert_eq!(first.event, Event::Requested);
    let id = pending_id(&first.answer);
    assert!(first.record.unwrap().arguments.is_none(), "arguments are kept only with show_arguments");
    // A retry before the decision: the same pending request, not a new one.
    let again = check(&kv, &call("agent", "sha256:aa"), &r, 101, URL).await.unwrap();
    assert_eq!((pending_id(&again.answer), again.event), (id.clone(), Event::StillPending));
    approve(&kv, &id, "alice", &r, 102).await.unwrap();
    // Other arguments and other callers are other calls.
    assert_eq!(check(&kv, &call("agent", "sha256:bb"), &r, 103, URL).await.unwrap().event, Event::Requested);
    assert_eq!(check(&kv, &call("other", "sha256:aa"), &r, 103, URL).await.unwrap().event, Event::Requested);
    let used = check(&kv, &call("agent", "sha256:aa"), &r, 104, URL).await.unwrap();
    assert_eq!(used.answer, CheckAnswer::Approved { id: id.clone() });
    // The next identical call needs a new approval.
    let next = check(&kv, &call("agent", "sha256:aa"), &r, 105, URL).await.unwrap();
    assert_eq!(next.event, Event::Requested);
    assert_ne!(pending_id(&next.answer), id);
    // Presenting the used id is refused.
    let replay = CheckRequest { approval_id: Some(id.clone()), ..call("agent", "sha256:aa") };
    assert!(matches!(check(&kv, &replay, &r, 106, URL).await.unwrap().answer, CheckAnswer::Refused { .. }));
}

#[tokio::test]
async fn reusable_approvals_last_their_ttl_and_then_expire() {
    let (kv, r) = (Kv::memory(), rule(json!({"reuse": "ttl", "ttl": "60s"})));
    let id = pending_id(&check(&kv, &call("agent", "sha256:aa"), &r, 100, URL).await.unwrap().answer);
    approve(&kv, &id, "alice", &r, 110).await.unwrap();
    for now in [111, 150, 169] {
        assert_eq!(
            check(&kv, &call("agent", "sha256:aa"), &r, now, URL).await.unwrap().answer,
            CheckAnswer::Approved { id: id.clone() }
        );
    }
    // 60 s after the approval it is gone: a new request.
    assert_eq!(check(&kv, &call("agent", "sha256:aa"), &r, 170, URL).await.unwrap().event, Event::Requested);
    let presented = CheckRequest { approval_id: Some(id.clone()), ..call("agent", "sha256:aa") };
    let CheckAnswer::Refused { message } = check(&kv, &presented, &r, 171, URL).await.unwrap().answer else { panic!() };
    assert!(message.contains("expired"), "{message}");
    let expired = sweep_expired(&kv, 171).await.unwrap();
    assert!(expired.iter().any(|e| e.id == id));
    assert!(sweep_expired(&kv, 172).await.unwrap().iter().all(|e| e.id != id), "each expiry is logged once");
}

#[tokio::test]
async fn forged_and_foreign_ids_are_refused() {
    let (kv, r) = (Kv::memory(), rule(json!({})));
    let id = pending_id(&check(&kv, &call("agent", "sha256:aa"), &r, 100, URL).await.unwrap().answer);
    approve(&kv, &id, "alice", &r, 101).await.unwrap();
    let forged = CheckRequest { approval_id: Some("ap_0000".into()), ..call("agent", "sha256:aa") };
    assert!(matches!(check(&kv, &forged, &r, 102, URL).await.unwrap().answer, CheckAnswer::Refused { .. }));
    let foreign = CheckRequest { approval_id: Some(id.clone()), ..call("mallory", "sha256:aa") };
    let CheckAnswer::Refused { message } = check(&kv, &foreign, &r, 102, URL).await.unwrap().answer else { panic!() };
    assert!(message.contains("another call"), "{message}");
    let other_args = CheckRequest { approval_id: Some(id.clone()), ..call("agent", "sha256:bb") };
    assert!(matches!(check(&kv, &other_args, &r, 102, URL).await.unwrap().answer, CheckAnswer::Refused { .. }));
    // None of that used the approval.
    let own = CheckRequest { approval_id: Some(id.clone()), ..call("agent", "sha256:aa") };
    assert_eq!(check(&kv, &own, &r, 103, URL).await.unwrap().answer, CheckAnswer::Approved { id });
}

#[tokio::test]
async fn decisions_need_an_approver_other_than_the_caller_and_a_pending_request() {
    let (kv, r) = (Kv::memory(), rule(json!({})));
    let id = pending_id(&check(&kv, &call("alice", "sha256:aa"), &r, 100, URL).await.unwrap().answer);
    assert!(matches!(approve(&kv, &id, "alice", &r, 101).await, Err(DecideError::SelfApproval(_))));
    let rules = |_: &str| Some(r.clone());
    let reader = ["reader".to_string()];
    let not_ops =
        decide(&kv, &id, Decision { approver: "bob", roles: &reader, approve: true, reason: "" }, &rules, 101).await;
    assert!(matches!(not_ops, Err(DecideError::NotApprover(_))));
    assert!(matches!(approve(&kv, "ap_nope", "bob", &r, 101).await, Err(DecideError::Unknown(_))));
    let ops = ["ops".to_string()];
    let rejection = Decision { approver: "bob", roles: &ops, approve: false, reason: "not on a Friday" };
    let rejected = decide(&kv, &id, rejection, &rules, 102).await.unwrap();
    assert_eq!(rejected.status, Status::Rejected);
    assert!(matches!(approve(&kv, &id, "carol", &r, 103).await, Err(DecideError::NotPending { .. })));
    let answer = check(&kv, &call("alice", "sha256:aa"), &r, 104, URL).await.unwrap().answer;
    assert_eq!(
        answer,
        CheckAnswer::Rejected { id: id.clone(), approver: "bob".into(), reason: "not on a Friday".into() }
    );
    // Self-approval when the rule allows it.
    let own = rule(json!({"allow_self_approval": true}));
    let id = pending_id(&check(&kv, &call("alice", "sha256:cc"), &own, 200, URL).await.unwrap().answer);
    assert!(approve(&kv, &id, "alice", &own, 201).await.is_ok());
    // A request nobody decided lapses after the ttl (10 minutes by default).
    let lapsing = pending_id(&check(&kv, &call("dave", "sha256:aa"), &r, 300, URL).await.unwrap().answer);
    assert!(matches!(
        approve(&kv, &lapsing, "bob", &r, 300 + 600).await,
        Err(DecideError::NotPending { state: "expired", .. })
    ));
}

#[tokio::test]
async fn show_arguments_keeps_them_for_the_page() {
    let (kv, r) = (Kv::memory(), rule(json!({"show_arguments": true})));
    let checked = check(&kv, &call("agent", "sha256:aa"), &r, 100, URL).await.unwrap();
    assert_eq!(checked.record.unwrap().arguments, Some(json!({"id": 7})));
    assert_eq!(list(&kv, 100).await.unwrap().len(), 1);
}
