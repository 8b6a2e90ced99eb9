//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, served next to ADS.
//!
//! Envoy's `ratelimit` filter sends, per request, one descriptor per global rule the Meshgate
//! filter tagged (`x-meshgate-rl-<rule>: <counter key>` → entries `rule=<rule>`,
//! `key=<counter key>`). The rules are looked up in the registry published *now* (live
//! reloads apply to the next request), charged in Redis all or nothing ([`super::store`]),
//! and answered:
//!
//! | situation | answer |
//! |---|---|
//! | every rule admits | `OK` |
//! | a rule refuses | `OVER_LIMIT`, `retry-after` and `x-meshgate-limit-rule` on the 429 |
//! | descriptor names no global rule (or another domain) | `OK`, counted in `meshgate_ratelimit_unknown_rule_total` |
//! | Redis unreachable or slow, `failure_mode: deny` | `OVER_LIMIT` + `x-meshgate-limit-error: store-unavailable` (a retryable 429) |
//! | Redis unreachable or slow, `failure_mode: allow` | `OK`, uncounted |
//!
//! Store failures never become gRPC errors: a gRPC error would leave the decision to Envoy's
//! `failure_mode_deny`, which only reports a bare 503. That path remains for meshgate itself
//! being unreachable (Envoy answers 503 with a JSON-RPC body, see `translate::listener`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit as CurrentLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use meshgate_core::quota::Limit;
use tonic::{Request, Response, Status};

use super::metrics::{Decision, Metrics};
use super::redis::RedisPool;
use super::store::{Charge, Store};
use crate::control::ControlPlane;
use crate::registry::{FailureMode, RateLimitService as ServiceSettings};
use crate::translate::proto_duration;

/// The descriptor domain Envoy's filter is configured with.
pub const DOMAIN: &str = "meshgate";
/// Descriptor entry naming the rule (a `generic_key`).
pub const RULE_ENTRY: &str = "rule";
/// Descriptor entry carrying the counter key (from the rule's request header).
pub const KEY_ENTRY: &str = "key";
/// Response header naming the rule that refused.
/// (The filter reads it to name the rule in its JSON-RPC error: one constant for both.)
pub const LIMIT_RULE_HEADER: &str = meshgate_core::quota::LIMIT_RULE_RESPONSE_HEADER;
/// Response header set when the counters could not be reached.
pub const LIMIT_ERROR_HEADER: &str = "x-meshgate-limit-error";
pub const STORE_UNAVAILABLE: &str = "store-unavailable";
pub const RETRY_AFTER: &str = "retry-after";
/// Shortest time meshgate gives Redis for one decision.
const MIN_STORE_TIMEOUT: Duration = Duration::from_millis(5);

/// The request header the Meshgate filter sets for a global rule.
pub fn rule_header(rule: &str) -> String {
    format!("{}{rule}", meshgate_core::quota::GLOBAL_HEADER_PREFIX)
}

/// Decides requests against the current registry. Cheap to share.
#[derive(Debug)]
pub struct RateLimiter {
    control: Arc<ControlPlane>,
    metrics: Arc<Metrics>,
    /// The store for the registry's current Redis (replaced when the URL or timeout changes).
    store: Mutex<Option<(ServiceSettings, Arc<Store>)>>,
    /// Whether the last store call failed (log on changes, not on every request).
    failing: AtomicBool,
}

impl RateLimiter {
    pub fn new(control: Arc<ControlPlane>, metrics: Arc<Metrics>) -> Arc<RateLimiter> {
        Arc::new(RateLimiter { control, metrics, store: Mutex::new(None), failing: AtomicBool::new(false) })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn store_for(&self, settings: &ServiceSettings) -> Arc<Store> {
        let mut current = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, store)) = current.as_ref() {
            if known.redis == settings.redis && known.timeout == settings.timeout {
                return store.clone();
            }
        }
        let timeout = (settings.timeout / 2).max(MIN_STORE_TIMEOUT);
        let store = Arc::new(Store::new(RedisPool::new(settings.redis.clone(), timeout)));
        tracing::info!(redis = %settings.redis, timeout_ms = timeout.as_millis() as u64, "rate-limit store");
        *current = Some((settings.clone(), store.clone()));
        store
    }

    /// One `ShouldRateLimit` decision. See the module docs.
    pub async fn decide(&self, request: &RateLimitRequest) -> RateLimitResponse {
        let ok = |n: usize| RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![status(Code::Ok, None, 0, 0); n],
            ..Default::default()
        };
        let n = request.descriptors.len();
        if request.domain != DOMAIN {
            self.metrics.record_unknown_rule();
            tracing::warn!(domain = %request.domain, "rate-limit request for another domain: allowed");
            return ok(n);
        }
        let Some(registry) = self.control.registry() else {
            return ok(n);
        };
        // Descriptor index → charge index.
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(n);
        let mut charges = Vec::new();
        for descriptor in &request.descriptors {
            let entry = |name: &str| descriptor.entries.iter().find(|e| e.key == name).map(|e| e.value.as_str());
            let rule = entry(RULE_ENTRY).and_then(|name| registry.global_rule(name));
            match (rule, entry(KEY_ENTRY)) {
                (Some(rule), Some(key)) if !key.is_empty() => {
                    let hits = descriptor
                        .hits_addend
                        .as_ref()
                        .map(|h| h.value)
                        .filter(|h| *h > 0)
                        .unwrap_or(u64::from(request.hits_addend))
                        .max(1);
                    slots.push(Some(charges.len()));
                    charges.push(Charge { rule: rule.name.clone(), limit: rule.limit, key: key.to_string(), hits });
                }
                _ => {
                    self.metrics.record_unknown_rule();
                    tracing::warn!(
                        rule = entry(RULE_ENTRY).unwrap_or("<none>"),
                        "rate-limit descriptor names no global rule of the current registry: allowed"
                    );
                    slots.push(None);
                }
            }
        }
        let Some(settings) = registry.rate_limit_service.as_ref().filter(|_| !charges.is_empty()) else {
            return ok(n);
        };
        let store = self.store_for(settings);
        match store.charge(&charges).await {
            Ok(outcome) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %settings.redis, "rate-limit store reachable again");
                }
                let mut statuses = Vec::with_capacity(n);
                for slot in &slots {
                    statuses.push(match slot.and_then(|i| Some((charges.get(i)?, outcome.verdicts.get(i)?))) {
                        None => status(Code::Ok, None, 0, 0),
                        Some((charge, verdict)) => {
                            let code = if verdict.admitted { Code::Ok } else { Code::OverLimit };
                            status(code, Some(charge), verdict.remaining, verdict.reset_secs)
                        }
                    });
                }
                for (charge, verdict) in charges.iter().zip(&outcome.verdicts) {
                    match (verdict.admitted, outcome.admitted) {
                        (true, true) => self.metrics.record(&charge.rule, Decision::Ok),
                        (false, _) => self.metrics.record(&charge.rule, Decision::OverLimit),
                        // Admitted by this rule, refused by another: not charged, not counted.
                        (true, false) => {}
                    }
                }
                if outcome.admitted {
                    return RateLimitResponse { overall_code: Code::Ok as i32, statuses, ..Default::default() };
                }
                let refused = charges.iter().zip(&outcome.verdicts).filter(|(_, v)| !v.admitted);
                let rule = refused.clone().map(|(c, _)| c.rule.as_str()).next().unwrap_or_default();
                let retry = refused.map(|(_, v)| v.reset_secs).max().unwrap_or(1);
                RateLimitResponse {
                    overall_code: Code::OverLimit as i32,
                    statuses,
                    response_headers_to_add: vec![
                        header(RETRY_AFTER, &retry.to_string()),
                        header(LIMIT_RULE_HEADER, rule),
                    ],
                    ..Default::default()
                }
            }
            Err(e) => {
                self.metrics.record_store_error();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        failure_mode = settings.failure_mode.as_str(),
                        "rate-limit store unavailable"
                    );
                }
                match settings.failure_mode {
                    FailureMode::Allow => {
                        for charge in &charges {
                            self.metrics.record(&charge.rule, Decision::FailedOpen);
                        }
                        ok(n)
                    }
                    FailureMode::Deny => {
                        for charge in &charges {
                            self.metrics.record(&charge.rule, Decision::FailedClosed);
                        }
                        let first = charges.first().map(|c| c.rule.as_str()).unwrap_or_default();
                        let statuses = slots
                            .iter()
                            .map(|slot| match slot {
                                Some(_) => status(Code::OverLimit, None, 0, 1),
                                None => status(Code::Ok, None, 0, 0),
                            })
                            .collect();
                        RateLimitResponse {
                            overall_code: Code::OverLimit as i32,
                            statuses,
                            response_headers_to_add: vec![
                                header(RETRY_AFTER, "1"),
                                header(LIMIT_RULE_HEADER, first),
                                header(LIMIT_ERROR_HEADER, STORE_UNAVAILABLE),
                            ],
                            ..Default::default()
                        }
                    }
                }
            }
        }
    }
}

fn status(code: Code, charge: Option<&Charge>, remaining: u64, reset_secs: u64) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: charge.map(|c| current_limit(&c.rule, c.limit)),
        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        duration_until_reset: (reset_secs > 0).then(|| proto_duration(Duration::from_secs(reset_secs))),
        ..Default::default()
    }
}

/// The limit as Envoy reports it (`x-ratelimit-limit`): the window's count, or a bucket's
/// refill rate, per its period.
fn current_limit(rule: &str, limit: Limit) -> CurrentLimit {
    let (count, period) = match limit {
        Limit::Window { limit, period_secs } => (limit, period_secs),
        Limit::Bucket { per_period, period_secs, .. } => (per_period, period_secs),
    };
    let unit = match period {
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    };
    CurrentLimit {
        name: rule.to_string(),
        requests_per_unit: u32::try_from(count).unwrap_or(u32::MAX),
        unit: unit as i32,
    }
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }
}

/// The tonic service wrapping a [`RateLimiter`].
#[derive(Debug, Clone)]
pub struct RlsService {
    limiter: Arc<RateLimiter>,
}

impl RlsService {
    pub fn server(limiter: Arc<RateLimiter>) -> RateLimitServiceServer<RlsService> {
        RateLimitServiceServer::new(RlsService { limiter })
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    #[tracing::instrument(level = "debug", skip_all, fields(descriptors = request.get_ref().descriptors.len()))]
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(self.limiter.decide(request.get_ref()).await))
    }
}
