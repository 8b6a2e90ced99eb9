//! The approval store against a real `redis-server` (started per test on a free port, stopped
//! by PID): two meshgate replicas (two pools) share requests and decisions, and a single-use
//! approval retried by many Envoys at once lets exactly one call through.
//!
//! Skipped (with a message) when `redis-server` is not installed (`make setup` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use meshgate::approvals::store::{self, Kv, Status};
use meshgate::ratelimit::redis::{RedisAddress, RedisPool};
use meshgate_core::approval::{
    ApprovalRule, ApprovalRules, CheckAnswer, CheckRequest, RawApprovalRule, RawApprovalService,
};
use support::redis::Redis;

/// A store client of `redis` (one per meshgate replica).
fn kv(redis: &Redis) -> Kv {
    let address = RedisAddress::parse(&redis.url()).unwrap();
    Kv::Redis(RedisPool::new(address, Duration::from_secs(2)))
}

fn rule() -> ApprovalRule {
    let raw: RawApprovalRule = serde_json::from_value(serde_json::json!({
        "name": "destructive", "match": {"tools": ["crm/delete_*"]}, "approvers": {"roles": ["ops"]}
    }))
    .unwrap();
    let service = RawApprovalService { cluster: "c".into(), authority: "a".into(), timeout_ms: None };
    let servers = ["crm".to_string()].into_iter().collect();
    ApprovalRules::compile(&[raw], Some(&service), &servers, &|_| true).unwrap().rules()[0].clone()
}

fn call() -> CheckRequest {
    CheckRequest {
        rule: "destructive".into(),
        consumer: "agent".into(),
        server: "crm".into(),
        tool: "delete_customer".into(),
        arguments_sha256: "sha256:aa".into(),
        approval_id: None,
        arguments: None,
    }
}

const URL: &str = "https://approvals.example.com/approvals";

#[tokio::test]
async fn replicas_share_decisions_and_a_single_use_approval_is_used_once() {
    let Some(redis) = Redis::start() else { return };
    let (replica_a, replica_b) = (Arc::new(kv(&redis)), Arc::new(kv(&redis)));
    let r = rule();
    let now = 1_000;
    let first = store::check(&replica_a, &call(), &r, now, URL).await.unwrap();
    let CheckAnswer::Pending { id, .. } = first.answer else { panic!("{:?}", first.answer) };
    // The other replica sees the same pending request, and takes the decision.
    let again = store::check(&replica_b, &call(), &r, now + 1, URL).await.unwrap();
    assert!(matches!(&again.answer, CheckAnswer::Pending { id: same, .. } if *same == id));
    let rules = |_: &str| Some(rule());
    let ops = ["ops".to_string()];
    let decision = store::Decision { approver: "alice", roles: &ops, approve: true, reason: "" };
    let decided = store::decide(&replica_b, &id, decision, &rules, now + 2).await.unwrap();
    assert_eq!(decided.status, Status::Approved);
    // Sixteen Envoys retry at once through both replicas: exactly one goes through.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let kv = if i % 2 == 0 { replica_a.clone() } else { replica_b.clone() };
        let r = r.clone();
        tasks.push(tokio::spawn(async move { store::check(&kv, &call(), &r, now + 3, URL).await.unwrap().answer }));
    }
    let mut approved = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), CheckAnswer::Approved { .. }) {
            approved += 1;
        }
    }
    assert_eq!(approved, 1, "a single-use approval let {approved} calls through");
    let listed = store::list(&replica_a, now + 4).await.unwrap();
    assert!(listed.iter().any(|rec| rec.id == id && rec.status == Status::Used));
}
