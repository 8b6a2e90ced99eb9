#![allow(clippy::panic)] // a bench with a broken fixture must stop loudly
//! Hot-path micro benchmarks of the pure core: what every governed request pays.
//!
//! `cargo bench -p meshgate-core --bench decision`
//! - head: route + API-key identity; body: the one strict parse + classification + RBAC of a
//!   1 KB `tools/call`; list: filtering a 100-tool `tools/list` result;
//! - jwt: verification cold (cache disabled) vs cached, for HS256, RS256 and ES256;
//! - quota: one token-bucket decision; the full local decision of a `tools/call` (matching,
//!   counter keys, decode/take/encode of every local counter).
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use meshgate_core::config::{
    FilterConfig, RawApiKey, RawAuth, RawFilterConfig, RawJwtProvider, RawPolicy, RawRole, SecretSource,
};
use meshgate_core::gateway::{Gateway, HeadDecision, RequestHead};
use meshgate_core::identity::TokenCache;
use meshgate_core::listing::ListFilter;
use meshgate_core::mcp::ResourceKind;
use meshgate_core::quota::{Limit, State};
use serde_json::json;
use sha2::{Digest, Sha256};

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "bench-secret-bench-secret-bench-secret!!";

struct Secrets;
impl SecretSource for Secrets {
    fn secret(&self, _: &str) -> Option<String> {
        Some(SECRET.to_string())
    }
}

fn gateway() -> Gateway {
    let mut policy = RawPolicy::default();
    policy.roles.insert(
        "reader".into(),
        RawRole {
            allow: vec!["crm/get_*".into(), "crm/list_*".into(), "docs/search_*".into()],
            deny: vec!["crm/get_secret*".into()],
            ..Default::default()
        },
    );
    let jwks: serde_json::Value = serde_json::from_str(include_str!("../testdata/jwks.json")).unwrap_or_default();
    let provider = |issuer: &str, jwks: Option<serde_json::Value>, env: Option<&str>| RawJwtProvider {
        issuer: issuer.into(),
        audiences: vec!["meshgate".into()],
        jwks,
        hs256_secret_env: env.map(String::from),
        consumer_claim: "sub".into(),
        roles_claim: "roles".into(),
        leeway_seconds: None,
    };
    let raw = RawFilterConfig {
        route_prefix: "/mcp/".into(),
        servers: vec!["crm".into(), "docs".into()],
        auth: RawAuth {
            jwt: vec![provider("https://idp", Some(jwks), None), provider("hs", None, Some("S"))],
            api_keys: vec![RawApiKey {
                consumer: "bot".into(),
                sha256: hex::encode(Sha256::digest(b"bench-key")),
                roles: vec!["reader".into()],
            }],
            ..Default::default()
        },
        policy,
        ..Default::default()
    };
    match FilterConfig::compile(&raw, &Secrets) {
        Ok(c) => Gateway::new(c),
        Err(e) => panic!("bench config: {e}"),
    }
}

fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    pairs.to_vec()
}

fn token(alg: Algorithm, issuer: &str) -> String {
    let claims = json!({"iss": issuer, "aud": "meshgate", "sub": "alice", "exp": NOW + 3600, "roles": ["reader"]});
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa_private.pem")),
        Algorithm::ES256 => EncodingKey::from_ec_pem(include_bytes!("../testdata/ec_private.pem")),
        _ => Ok(EncodingKey::from_secret(SECRET.as_bytes())),
    };
    let mut header = Header::new(alg);
    if alg == Algorithm::RS256 {
        header.kid = Some("rsa-1".into());
    }
    key.and_then(|k| encode(&header, &claims, &k)).unwrap_or_default()
}

fn tools_call_1kb() -> Vec<u8> {
    let note = "x".repeat(880);
    json!({"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"get_customer",
        "arguments":{"id":"c-001","fields":["name","email","tier"],"note":note}}})
    .to_string()
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let g = gateway();
    let mut cache = g.new_token_cache();
    let api = headers(&[(":method", "POST"), ("x-api-key", "bench-key"), ("content-type", "application/json")]);
    let head = RequestHead { method: "POST", path: "/mcp/crm", headers: &api, end_of_stream: false };

    c.bench_function("head/route+api_key", |b| {
        b.iter(|| black_box(matches!(g.on_request_head(black_box(head), NOW, &mut cache), HeadDecision::AwaitBody(_))))
    });

    let HeadDecision::AwaitBody(pending) = g.on_request_head(head, NOW, &mut cache) else {
        panic!("bench head was not admitted")
    };
    let body = tools_call_1kb();
    let mut group = c.benchmark_group("body");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("tools_call_1kb/parse+rbac", |b| {
        b.iter(|| black_box(g.on_request_body(&pending, black_box(&body)).is_ok()))
    });
    group.finish();

    let tools: Vec<_> = (0..100)
        .map(|i| {
            let name = if i % 2 == 0 { format!("get_item_{i}") } else { format!("delete_item_{i}") };
            json!({"name": name, "description": "Does a thing with an item.", "inputSchema": {"type":"object","properties":{"id":{"type":"string"}}}})
        })
        .collect();
    let list = json!({"jsonrpc":"2.0","id":7,"result":{"tools":tools}}).to_string().into_bytes();
    let filter = ListFilter {
        shape: ResourceKind::of_list_method("tools/list").unwrap_or_else(|| panic!("shape")),
        request_id: json!(7),
        server: "crm".into(),
        roles: vec!["reader".into()],
        pins: None,
    };
    // The same list checked against pins of every tool (enforce: half of them drifted).
    let mut raw_pins = meshgate_core::pinning::RawServerPins {
        mode: meshgate_core::pinning::PinMode::Enforce,
        tools: Some(Default::default()),
        ..Default::default()
    };
    for (i, tool) in tools.iter().enumerate() {
        let text = if i % 4 == 0 { tool.to_string().replace("a thing", "another thing") } else { tool.to_string() };
        let canonical =
            meshgate_core::pinning::canonical::canonical_document(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let hash = meshgate_core::pinning::PinHash::of_canonical(&canonical).to_string();
        if let (Some(map), Some(name)) = (raw_pins.tools.as_mut(), tool["name"].as_str()) {
            map.insert(name.to_string(), hash);
        }
    }
    let pins = meshgate_core::pinning::Pins::compile(
        &[("crm".to_string(), raw_pins)].into_iter().collect(),
        &["crm".to_string()].into_iter().collect(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pinned = ListFilter { pins: pins.server("crm").cloned(), ..filter.clone() };
    let mut group = c.benchmark_group("list");
    group.throughput(Throughput::Bytes(list.len() as u64));
    group.bench_function("tools_list_100/filter", |b| {
        b.iter(|| black_box(filter.apply(black_box(&list), &g.config().policy)))
    });
    group.bench_function("tools_list_100/filter_pinned", |b| {
        b.iter(|| {
            let mut report = meshgate_core::pinning::PinReport::default();
            black_box(pinned.apply_pinned(black_box(&list), &g.config().policy, &mut report))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("jwt");
    for (name, alg, issuer) in [
        ("hs256", Algorithm::HS256, "hs"),
        ("rs256", Algorithm::RS256, "https://idp"),
        ("es256", Algorithm::ES256, "https://idp"),
    ] {
        let authz = format!("Bearer {}", token(alg, issuer));
        let h = headers(&[("authorization", &authz), ("content-type", "application/json")]);
        let head = RequestHead { method: "POST", path: "/mcp/crm", headers: &h, end_of_stream: false };
        let mut cold = TokenCache::new(0);
        group.bench_function(format!("{name}/cold"), |b| {
            b.iter(|| black_box(matches!(g.on_request_head(head, NOW, &mut cold), HeadDecision::AwaitBody(_))))
        });
        let mut warm = g.new_token_cache();
        group.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| black_box(matches!(g.on_request_head(head, NOW, &mut warm), HeadDecision::AwaitBody(_))))
        });
    }
    group.finish();

    let limit = Limit::Bucket { per_period: 1_000_000, period_secs: 1, burst: 100 };
    let mut state = Some(State::default());
    let mut t = 1_000_000_000u64;
    c.bench_function("quota/bucket_take", |b| {
        b.iter(|| {
            t += 1_000;
            let taken = limit.take(state, black_box(t));
            state = Some(taken.state);
            black_box(taken.admitted)
        })
    });
    bench_local_quota_decision(c);
}

/// The whole local limiter decision of one `tools/call`, as the filter runs it: matching
/// rules (role + glob), counter keys, then decode → take → encode of each local counter.
/// The shared-data host calls (get + CAS set per counter) are outside this native bench.
fn bench_local_quota_decision(c: &mut Criterion) {
    let rules: Vec<meshgate_core::config::RawQuotaRule> = match serde_json::from_value(json!([
        {"match": {"roles": ["reader"], "tools": ["crm/*"]}, "rate": "60/m", "burst": 10},
        {"name": "daily", "quota": "100000/d", "key": "consumer"},
        {"name": "docs", "match": {"tools": ["docs/*"]}, "rate": "5/s"},
        {"name": "fleet", "quota": "1000/m", "key": "tool", "scope": "global"}
    ])) {
        Ok(r) => r,
        Err(e) => panic!("bench rules: {e}"),
    };
    let servers = ["crm".to_string(), "docs".to_string()].into_iter().collect();
    let rules = match meshgate_core::quota::QuotaRules::compile(&rules, &servers, &|_| true) {
        Ok(r) => r,
        Err(e) => panic!("bench rules: {e}"),
    };
    let roles = vec!["reader".to_string()];
    let mut store: std::collections::HashMap<String, [u8; 16]> = std::collections::HashMap::new();
    let mut t = 1_800_000_000_000_000_000u64;
    c.bench_function("quota/local_decision", |b| {
        b.iter(|| {
            t += 1_000_000_000; // one call per second per key: always admitted, always written
            let charges = rules.charges(black_box("alice"), "crm", black_box("get_customer"), &roles);
            let mut admitted = true;
            for charge in &charges.local {
                let state = store.get(&charge.shared_key).and_then(|b| State::decode(b));
                let taken = charge.limit.take(state, t);
                admitted &= taken.admitted;
                store.insert(charge.shared_key.clone(), taken.state.encode());
            }
            black_box((admitted, charges.global.len()))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
