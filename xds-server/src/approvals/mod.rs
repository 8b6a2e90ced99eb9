//! Human approval for dangerous tools, meshgate's side: the check Envoy's filter asks on
//! meshgate's gRPC port, the store of requests and decisions, the approval page on the
//! admin API, the audit lines and the metrics.
//!
//! ```text
//! agent ─▶ Envoy [filter: an approvals[] rule matches] ── POST /meshgate.approvals.v1/check ─▶ meshgate
//!                                                          (gRPC port: same TLS/mTLS as ADS)    │
//!   approver ─▶ meshgate admin API /approvals (signs in with a consumer's JWT or API key) ──────┤
//!                                                                          store (Redis or in process)
//! ```
//!
//! - The check is a control-plane endpoint: it is served only on the gRPC port, which every
//!   Envoy reaches through the bootstrap's `meshgate-xds` cluster (TLS and client
//!   certificates when meshgate has them), never on a route agents can reach. Agents talk to
//!   Envoy's listener, whose routes lead to MCP servers only.
//! - The page authenticates approvers itself, exactly as the filter authenticates callers
//!   (the registry's consumers and JWT providers, compiled by the filter's own code), so it
//!   stays usable when the rest of the admin API needs `--admin-token-file`.
//! - State lives in Redis when `rate_limit_service` is configured (every meshgate replica
//!   and every Envoy see the same decisions), in this process otherwise ([`store`]).
//! - Audit: one line per request for approval, approval, rejection, expiry and use (target
//!   `meshgate::audit`), naming the caller and the approver, never argument values.

pub mod page;
pub mod store;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use meshgate_core::approval::{ApprovalRule, ApprovalRules, CheckAnswer, CheckRequest, CHECK_PATH};
use meshgate_core::config::{EnvSecrets, FilterConfig};

use crate::control::ControlPlane;
use crate::ratelimit::redis::{RedisAddress, RedisPool};
use crate::registry::Registry;
use store::{Event, Kv, Record};

/// How long one Redis call of the approval store may take.
const STORE_TIMEOUT: Duration = Duration::from_millis(800);
/// How often expired requests are looked for (each is logged once).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What one registry compiles to, for the check and the page.
pub struct Compiled {
    pub rules: ApprovalRules,
    /// The filter configuration, compiled by the filter's own code: the authenticator the
    /// page signs approvers in with, and the redactor of shown arguments.
    pub filter: FilterConfig,
    /// The page's public URL (`approval_page.url`, else the admin API's own address).
    pub page_url: String,
}

/// Counters per rule and event, rendered on `/metrics`.
#[derive(Debug, Default)]
pub struct ApprovalMetrics {
    events: Mutex<BTreeMap<(String, &'static str), u64>>,
    check_errors: Mutex<u64>,
}

impl ApprovalMetrics {
    pub fn record(&self, rule: &str, event: &'static str) {
        let mut map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((rule.to_string(), event)).or_default() += 1;
    }

    pub fn record_check_error(&self) {
        *self.check_errors.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    pub fn count(&self, rule: &str, event: &'static str) -> u64 {
        let map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(rule.to_string(), event)).copied().unwrap_or(0)
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP meshgate_approval_events_total Approval requests, decisions, uses and refusals per rule."
        );
        let _ = writeln!(out, "# TYPE meshgate_approval_events_total counter");
        let map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for ((rule, event), n) in map.iter() {
            let _ = writeln!(out, "meshgate_approval_events_total{{rule=\"{}\",event=\"{event}\"}} {n}", label(rule));
        }
        let _ = writeln!(
            out,
            "# HELP meshgate_approval_check_errors_total Approval checks answered 503 (store unreachable)."
        );
        let _ = writeln!(out, "# TYPE meshgate_approval_check_errors_total counter");
        let errors = *self.check_errors.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "meshgate_approval_check_errors_total {errors}");
    }
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The approvals service, shared by the check endpoint, the page and the sweeper.
pub struct Approvals {
    control: Arc<ControlPlane>,
    memory: Arc<Kv>,
    redis: Mutex<Option<(RedisAddress, Arc<Kv>)>>,
    compiled: Mutex<Option<(Arc<Registry>, Arc<Compiled>)>>,
    pub metrics: ApprovalMetrics,
    /// The page URL when the registry sets none (the admin API's own).
    default_page_url: String,
    /// The admin API has TLS: session cookies are `Secure`.
    pub secure_cookies: bool,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").field("default_page_url", &self.default_page_url).finish_non_exhaustive()
    }
}

impl Approvals {
    pub fn new(control: Arc<ControlPlane>, default_page_url: String, secure_cookies: bool) -> Arc<Approvals> {
        Arc::new(Approvals {
            control,
            memory: Arc::new(Kv::memory()),
            redis: Mutex::new(None),
            compiled: Mutex::new(None),
            metrics: ApprovalMetrics::default(),
            default_page_url,
            secure_cookies,
        })
    }

    /// The store: the registry's Redis (`rate_limit_service`), else this process's map.
    pub fn kv(&self) -> Arc<Kv> {
        let Some(settings) = self.control.registry().and_then(|r| r.rate_limit_service.clone()) else {
            return self.memory.clone();
        };
        let mut current = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((address, kv)) = current.as_ref() {
            if *address == settings.redis {
                return kv.clone();
            }
        }
        let kv = Arc::new(Kv::Redis(RedisPool::new(settings.redis.clone(), STORE_TIMEOUT)));
        *current = Some((settings.redis.clone(), kv.clone()));
        kv
    }

    /// The current registry's rules, authenticator and page URL (compiled once per registry).
    pub fn compiled(&self) -> Option<Arc<Compiled>> {
        let registry = self.control.registry()?;
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, compiled)) = cache.as_ref() {
            if Arc::ptr_eq(known, &registry) {
                return Some(compiled.clone());
            }
        }
        let filter = match FilterConfig::compile(&registry.filter, &EnvSecrets) {
            Ok(filter) => filter,
            Err(e) => {
                tracing::error!("approvals: the registry's filter configuration does not compile here: {e}");
                return None;
            }
        };
        let compiled = Arc::new(Compiled {
            rules: filter.approvals.clone(),
            page_url: registry.approval_page_url.clone().unwrap_or_else(|| self.default_page_url.clone()),
            filter,
        });
        *cache = Some((registry, compiled.clone()));
        Some(compiled)
    }

    /// One check from a filter (see the module docs). `Err`: the store could not be used
    /// (answered 503: the filter refuses the call).
    pub async fn check(&self, request: &CheckRequest) -> Result<CheckAnswer, String> {
        let Some(compiled) = self.compiled() else {
            return Err("no registry loaded".to_string());
        };
        let Some(rule) = compiled.rules.get(&request.rule) else {
            self.metrics.record(&request.rule, "refused");
            return Ok(CheckAnswer::Refused {
                message: format!("approval rule \"{}\" is not in meshgate's registry", request.rule),
            });
        };
        let checked =
            store::check(&self.kv(), request, rule, now(), &compiled.page_url).await.map_err(|e| e.to_string())?;
        let event = match checked.event {
            Event::Requested => "requested",
            Event::StillPending => "still_pending",
            Event::Used => "used",
            Event::Rejected => "rejected_returned",
            Event::Refused => "refused",
        };
        self.metrics.record(&rule.name, event);
        match (&checked.event, &checked.record) {
            (Event::Requested | Event::Used, Some(record)) => audit(event, record, None, None),
            (Event::Refused, _) => tracing::info!(
                target: "meshgate::audit",
                event = "approval_refused",
                rule = %rule.name,
                caller = %request.consumer,
                tool = %format!("{}/{}", request.server, request.tool),
                presented_id = %request.approval_id.as_deref().unwrap_or("-"),
                "approval refused"
            ),
            _ => {}
        }
        Ok(checked.answer)
    }

    /// Logs every request that expired since the last sweep (once each, across replicas).
    pub async fn sweep(&self) {
        match store::sweep_expired(&self.kv(), now()).await {
            Ok(expired) => {
                for record in expired {
                    self.metrics.record(&record.rule, "expired");
                    audit("expired", &record, None, None);
                }
            }
            Err(e) => tracing::warn!("approvals: expired requests not swept: {e}"),
        }
    }

    /// The rule `name` of the current registry.
    pub fn rule(&self, name: &str) -> Option<ApprovalRule> {
        self.compiled().and_then(|c| c.rules.get(name).cloned())
    }
}

/// One audit line (target `meshgate::audit`): the event, the request, the caller and (for
/// decisions) the approver; never argument values (only their hash).
pub fn audit(event: &str, record: &Record, approver: Option<&str>, reason: Option<&str>) {
    tracing::info!(
        target: "meshgate::audit",
        event = %format!("approval_{event}"),
        id = %record.id,
        rule = %record.rule,
        caller = %record.consumer,
        tool = %format!("{}/{}", record.server, record.tool),
        arguments_sha256 = %record.arguments_sha256,
        approver = %approver.or(record.decided_by.as_deref()).unwrap_or("-"),
        reason = %reason.unwrap_or("-"),
        expires_at = record.expires_at,
        "approval {event}"
    );
}

/// Keeps looking for expired requests until `stop` flips.
pub async fn sweep_forever(approvals: Arc<Approvals>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => approvals.sweep().await,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// The check endpoint, for the gRPC port's router (see the module docs).
pub fn check_routes(approvals: Arc<Approvals>) -> Router {
    Router::new().route(CHECK_PATH, post(check_handler)).with_state(approvals)
}

async fn check_handler(State(approvals): State<Arc<Approvals>>, body: axum::body::Bytes) -> Response {
    let request: CheckRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not an approval check: {e}\n")).into_response(),
    };
    match approvals.check(&request).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => {
            approvals.metrics.record_check_error();
            tracing::error!(rule = %request.rule, "approval check failed (the call is refused): {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "the approval store is unavailable\n").into_response()
        }
    }
}
