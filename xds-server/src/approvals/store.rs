//! Approval requests and their decisions: one record per request, changed only by
//! compare-and-set, in process or in Redis.
//!
//! Every change is a pure function of the stored record ([`check`], [`decide`]) written back
//! with compare-and-set on its exact previous text ([`Kv::cas`]): two Envoys retrying the same
//! approved single-use call at once, or two approvers deciding at once, cannot both win. In
//! Redis the compare-and-set is one Lua script (`GET`, compare, `SET … PX`), so both meshgate
//! replicas share every decision; without `rate_limit_service` the same logic runs on a map
//! in this process.
//!
//! Keys: `meshgate:approval:req:<id>` (the record, JSON) and `meshgate:approval:bind:<hash of
//! consumer, server, tool, argument hash>` (the id of the binding's latest request). Records
//! are kept [`RETENTION_SECS`] past their expiry so the page can show them expired.

use std::collections::HashMap;
use std::sync::Mutex;

use meshgate_core::approval::{ApprovalRule, CheckAnswer, CheckRequest, RawReuse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ratelimit::redis::{RedisError, RedisPool, Reply};

/// How long a record is kept after it expired (the page lists it as expired).
pub const RETENTION_SECS: u64 = 3600;
/// Compare-and-set attempts before a contended change gives up (fails closed).
const CAS_ATTEMPTS: usize = 8;
const RECORD_PREFIX: &str = "meshgate:approval:req:";
const BINDING_PREFIX: &str = "meshgate:approval:bind:";

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    /// A single-use approval that was used.
    Used,
}

/// One request for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub rule: String,
    pub consumer: String,
    pub server: String,
    pub tool: String,
    pub arguments_sha256: String,
    /// Only for rules with `show_arguments` (redacted when shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    pub status: Status,
    /// Unix seconds.
    pub created_at: u64,
    /// Pending: when the request lapses; approved: when the approval lapses.
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Calls this approval let through.
    #[serde(default)]
    pub uses: u64,
    /// The expiry was written to the audit log (once, by whichever replica saw it first).
    #[serde(default)]
    pub expiry_logged: bool,
}

impl Record {
    /// Expired: past `expires_at` while pending or approved (used and rejected requests
    /// keep their status).
    pub fn expired(&self, now: u64) -> bool {
        matches!(self.status, Status::Pending | Status::Approved) && now >= self.expires_at
    }

    /// What the page and the audit call its state.
    pub fn state(&self, now: u64) -> &'static str {
        if self.expired(now) {
            return "expired";
        }
        match self.status {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Used => "used",
        }
    }

    fn binds(&self, check: &CheckRequest) -> bool {
        self.consumer == check.consumer
            && self.server == check.server
            && self.tool == check.tool
            && self.arguments_sha256 == check.arguments_sha256
    }
}

/// What happened, for the audit line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new request for approval.
    Requested,
    /// A retry while the request is still pending (no new line).
    StillPending,
    Used,
    Rejected,
    Refused,
}

/// Why a decision on the page was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("no approval request {0}")]
    Unknown(String),
    #[error("request {id} is {state}, not pending")]
    NotPending { id: String, state: &'static str },
    #[error("you cannot decide your own request (rule \"{0}\" does not allow self-approval)")]
    SelfApproval(String),
    #[error("you hold none of the approver roles of rule \"{0}\"")]
    NotApprover(String),
    #[error("rule \"{0}\" no longer exists")]
    UnknownRule(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("the approval store is contended; retry")]
    Contended,
    #[error("the approval store holds an unreadable record: {0}")]
    Corrupt(String),
}

/// The key-value backend: compare-and-set on whole values.
#[derive(Debug)]
pub enum Kv {
    Memory(Mutex<HashMap<String, (String, u64)>>),
    Redis(RedisPool),
}

/// `SET` only when the key holds exactly `ARGV[1]` (`ARGV[4]` = "1": only when it is absent).
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[4] == '1' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

impl Kv {
    pub fn memory() -> Kv {
        Kv::Memory(Mutex::new(HashMap::new()))
    }

    pub(super) async fn get(&self, key: &str, now: u64) -> Result<Option<String>, StoreError> {
        match self {
            Kv::Memory(map) => {
                let map = map.lock().unwrap_or_else(|p| p.into_inner());
                Ok(map.get(key).filter(|(_, until)| *until > now).map(|(v, _)| v.clone()))
            }
            Kv::Redis(pool) => match pool.call(&[b"GET", key.as_bytes()]).await? {
                Reply::Bulk(Some(bytes)) => {
                    String::from_utf8(bytes).map(Some).map_err(|_| StoreError::Corrupt(key.to_string()))
                }
                Reply::Bulk(None) => Ok(None),
                other => Err(StoreError::Corrupt(format!("GET {key}: {other:?}"))),
            },
        }
    }

    /// Writes `new` (kept until `keep_until`, Unix seconds) when `key` holds exactly
    /// `expected` (`None`: when it is absent). `false`: someone else changed it.
    pub(super) async fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        keep_until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Kv::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                let current = map.get(key).filter(|(_, until)| *until > now).map(|(v, _)| v.as_str());
                if current != expected {
                    return Ok(false);
                }
                map.insert(key.to_string(), (new.to_string(), keep_until));
                // Bounded: lapsed entries go whenever something is written.
                map.retain(|_, (_, until)| *until > now);
                Ok(true)
            }
            Kv::Redis(pool) => {
                let ttl_ms = (keep_until.saturating_sub(now).max(1) * 1000).to_string();
                let absent = if expected.is_none() { "1" } else { "0" };
                let args: [&[u8]; 8] = [
                    b"EVAL",
                    CAS_SCRIPT.as_bytes(),
                    b"1",
                    key.as_bytes(),
                    expected.unwrap_or("").as_bytes(),
                    new.as_bytes(),
                    ttl_ms.as_bytes(),
                    absent.as_bytes(),
                ];
                match pool.call(&args).await? {
                    Reply::Integer(1) => Ok(true),
                    Reply::Integer(0) => Ok(false),
                    other => Err(StoreError::Corrupt(format!("compare-and-set: {other:?}"))),
                }
            }
        }
    }

    /// Every record's text.
    async fn records(&self, now: u64) -> Result<Vec<String>, StoreError> {
        match self {
            Kv::Memory(map) => {
                let map = map.lock().unwrap_or_else(|p| p.into_inner());
                Ok(map
                    .iter()
                    .filter(|(k, (_, until))| k.starts_with(RECORD_PREFIX) && *until > now)
                    .map(|(_, (v, _))| v.clone())
                    .collect())
            }
            Kv::Redis(pool) => {
                let pattern = format!("{RECORD_PREFIX}*");
                let mut cursor = "0".to_string();
                let mut keys: Vec<Vec<u8>> = Vec::new();
                loop {
                    let reply = pool
                        .call(&[b"SCAN", cursor.as_bytes(), b"MATCH", pattern.as_bytes(), b"COUNT", b"500"])
                        .await?;
                    let Reply::Array(Some(parts)) = reply else {
                        return Err(StoreError::Corrupt("SCAN answer".into()));
                    };
                    let mut parts = parts.into_iter();
                    let (Some(Reply::Bulk(Some(next))), Some(Reply::Array(Some(found)))) = (parts.next(), parts.next())
                    else {
                        return Err(StoreError::Corrupt("SCAN answer".into()));
                    };
                    keys.extend(found.into_iter().filter_map(|k| match k {
                        Reply::Bulk(Some(k)) => Some(k),
                        _ => None,
                    }));
                    cursor = String::from_utf8_lossy(&next).into_owned();
                    if cursor == "0" || keys.len() > 10_000 {
                        break;
                    }
                }
                let mut out = Vec::new();
                for chunk in keys.chunks(200) {
                    let mut args: Vec<&[u8]> = vec![b"MGET"];
                    args.extend(chunk.iter().map(Vec::as_slice));
                    if let Reply::Array(Some(values)) = pool.call(&args).await? {
                        out.extend(values.into_iter().filter_map(|v| match v {
                            Reply::Bulk(Some(v)) => String::from_utf8(v).ok(),
                            _ => None,
                        }));
                    }
                }
                Ok(out)
            }
        }
    }
}

fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

fn binding_key(check: &CheckRequest) -> String {
    let mut h = Sha256::new();
    for part in [&check.consumer, &check.server, &check.tool, &check.arguments_sha256] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("{BINDING_PREFIX}{}", hex::encode(h.finalize()))
}

/// A new approval id: `ap_` and 128 random bits (unguessable: ids are not secrets, but a
/// guessed one must still match the caller's own binding to be of any use).
pub fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| StoreError::Corrupt(format!("no randomness: {e}")))?;
    Ok(format!("ap_{}", hex::encode(bytes)))
}

fn parse(text: &str) -> Result<Record, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn text(record: &Record) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

fn keep_until(record: &Record) -> u64 {
    record.expires_at.saturating_add(RETENTION_SECS)
}

/// The answer for a caller whose call matches `record` (already known to bind it), and the
/// record to write back (`None`: unchanged).
fn answer_for(record: &Record, rule: &ApprovalRule, url: &str) -> (CheckAnswer, Option<Record>, Event) {
    match record.status {
        Status::Pending => (
            CheckAnswer::Pending {
                id: record.id.clone(),
                url: page_url(url, &record.id),
                expires_at: record.expires_at,
            },
            None,
            Event::StillPending,
        ),
        Status::Rejected => (
            CheckAnswer::Rejected {
                id: record.id.clone(),
                approver: record.decided_by.clone().unwrap_or_default(),
                reason: record.reason.clone().unwrap_or_default(),
            },
            None,
            Event::Rejected,
        ),
        Status::Approved => {
            let mut used = record.clone();
            used.uses += 1;
            if rule.reuse == RawReuse::Single {
                used.status = Status::Used;
            }
            (CheckAnswer::Approved { id: record.id.clone() }, Some(used), Event::Used)
        }
        Status::Used => {
            (CheckAnswer::Refused { message: format!("approval {} was already used", record.id) }, None, Event::Refused)
        }
    }
}

/// The page URL of one request.
pub fn page_url(base: &str, id: &str) -> String {
    format!("{base}?id={id}")
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Checked {
    pub answer: CheckAnswer,
    pub event: Event,
    /// The record concerned, as it stands after the check.
    pub record: Option<Record>,
}

/// Decides one guarded call (see the module docs). `url` is the page's base URL.
pub async fn check(
    kv: &Kv,
    request: &CheckRequest,
    rule: &ApprovalRule,
    now: u64,
    url: &str,
) -> Result<Checked, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        // The record this call is about: the presented id, else the binding's latest request.
        let (key, stored) = match &request.approval_id {
            Some(id) => {
                let key = record_key(id);
                let stored = if id.len() <= 64 { kv.get(&key, now).await? } else { None };
                (key, stored)
            }
            None => match kv.get(&binding_key(request), now).await? {
                Some(id) => {
                    let key = record_key(&id);
                    let stored = kv.get(&key, now).await?;
                    (key, stored)
                }
                None => (String::new(), None),
            },
        };
        let record = stored.as_deref().map(parse).transpose()?;
        if request.approval_id.is_some() {
            let refused = |message: String| Checked {
                answer: CheckAnswer::Refused { message },
                event: Event::Refused,
                record: None,
            };
            let Some(record) = &record else {
                return Ok(refused("unknown approval id".to_string()));
            };
            if !record.binds(request) || record.rule != request.rule {
                return Ok(refused(format!("approval {} was given for another call", record.id)));
            }
            if record.status == Status::Used {
                return Ok(refused(format!("approval {} was already used", record.id)));
            }
            if now >= record.expires_at {
                return Ok(refused(format!("approval {} has expired", record.id)));
            }
        }
        // A used approval, or any request past its time, is not this call's any more: a retry
        // asks anew (a rejection holds for the request's own ttl).
        let live = record.filter(|r| r.binds(request) && now < r.expires_at && r.status != Status::Used);
        let Some(record) = live else {
            // A new request for approval.
            let created = Record {
                id: new_id()?,
                rule: rule.name.clone(),
                consumer: request.consumer.clone(),
                server: request.server.clone(),
                tool: request.tool.clone(),
                arguments_sha256: request.arguments_sha256.clone(),
                arguments: if rule.show_arguments { request.arguments.clone() } else { None },
                status: Status::Pending,
                created_at: now,
                expires_at: now.saturating_add(rule.ttl_secs),
                decided_by: None,
                decided_at: None,
                reason: None,
                uses: 0,
                expiry_logged: false,
            };
            let until = keep_until(&created);
            if !kv.cas(&record_key(&created.id), None, &text(&created), until, now).await? {
                continue;
            }
            let binding = binding_key(request);
            let previous = kv.get(&binding, now).await?;
            // Losing this race only means the other request is the binding's latest.
            kv.cas(&binding, previous.as_deref(), &created.id, until, now).await?;
            return Ok(Checked {
                answer: CheckAnswer::Pending {
                    id: created.id.clone(),
                    url: page_url(url, &created.id),
                    expires_at: created.expires_at,
                },
                event: Event::Requested,
                record: Some(created),
            });
        };
        let (answer, write, event) = answer_for(&record, rule, url);
        let Some(new) = write else {
            return Ok(Checked { answer, event, record: Some(record) });
        };
        if kv.cas(&key, stored.as_deref(), &text(&new), keep_until(&new), now).await? {
            return Ok(Checked { answer, event, record: Some(new) });
        }
    }
    Err(StoreError::Contended)
}

/// What an approver decided on the page.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The approver's consumer name and roles.
    pub approver: &'a str,
    pub roles: &'a [String],
    /// Approve, or reject with `reason`.
    pub approve: bool,
    pub reason: &'a str,
}

/// An approver's decision on request `id` (the rule is looked up by name in `rules`).
pub async fn decide(
    kv: &Kv,
    id: &str,
    decision: Decision<'_>,
    rules: &(dyn Fn(&str) -> Option<ApprovalRule> + Sync),
    now: u64,
) -> Result<Record, DecideError> {
    let Decision { approver, roles: approver_roles, approve, reason } = decision;
    let key = record_key(id);
    for _ in 0..CAS_ATTEMPTS {
        let Some(stored) = (if id.len() <= 64 { kv.get(&key, now).await? } else { None }) else {
            return Err(DecideError::Unknown(id.to_string()));
        };
        let record = parse(&stored)?;
        if record.status != Status::Pending || record.expired(now) {
            return Err(DecideError::NotPending { id: id.to_string(), state: record.state(now) });
        }
        let rule = rules(&record.rule).ok_or_else(|| DecideError::UnknownRule(record.rule.clone()))?;
        if !rule.approver(approver_roles) {
            return Err(DecideError::NotApprover(rule.name.clone()));
        }
        if record.consumer == approver && !rule.allow_self_approval {
            return Err(DecideError::SelfApproval(rule.name.clone()));
        }
        let mut new = record.clone();
        new.decided_by = Some(approver.to_string());
        new.decided_at = Some(now);
        if approve {
            new.status = Status::Approved;
            // The approval is valid for the rule's ttl from now.
            new.expires_at = now.saturating_add(rule.ttl_secs);
        } else {
            new.status = Status::Rejected;
            new.reason = Some(reason.to_string());
        }
        if kv.cas(&key, Some(&stored), &text(&new), keep_until(&new), now).await? {
            return Ok(new);
        }
    }
    Err(DecideError::Store(StoreError::Contended))
}

/// Every record, newest first.
pub async fn list(kv: &Kv, now: u64) -> Result<Vec<Record>, StoreError> {
    let mut records: Vec<Record> = kv.records(now).await?.iter().filter_map(|t| parse(t).ok()).collect();
    records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
    Ok(records)
}

/// Marks every request that expired and was not logged yet; returns them (each once, across
/// replicas: the mark is written with compare-and-set).
pub async fn sweep_expired(kv: &Kv, now: u64) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    for stored in kv.records(now).await? {
        let Ok(record) = parse(&stored) else { continue };
        if !record.expired(now) || record.expiry_logged {
            continue;
        }
        let mut marked = record.clone();
        marked.expiry_logged = true;
        if kv.cas(&record_key(&record.id), Some(&stored), &text(&marked), keep_until(&marked), now).await? {
            out.push(marked);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
