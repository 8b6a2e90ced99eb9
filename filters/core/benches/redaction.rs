//! Redaction throughput on realistic `tools/call` results, next to a naive baseline.
//!
//! Payloads: a JSON-RPC result whose `content[0].text` is multi-line prose (so the body has
//! JSON escapes, as real ones do) and whose `structuredContent` is an array of CRM-like
//! records; about half the bytes each. `sparse` has roughly one PII value per 5 KB,
//! `dense` one in most lines and records. Sizes 1 KB, 64 KB, 1 MB.
//!
//! * `meshgate` — [`RedactionPlan::redact_message`] with all ten built-in detectors, masking.
//! * `naive` — what one would write first: parse into a `serde_json::Value`, run one
//!   `regex::Regex::replace_all` per detector over every selected string, sequentially
//!   (the same ten candidate patterns, *without* validators, so it does less work per
//!   candidate), serialize.
//!
//! Run: `cargo bench -p meshgate-core --bench redaction -- --warm-up-time 1 --measurement-time 3`
//!
//! On a busy machine wall-clock throughput is noisy; count cycles or instructions of a
//! fixed amount of work instead: `REDACTION_ITERS=<density>/<engine>/<size>:<n>` (for
//! example `sparse/meshgate/1MB:200`) runs that case `n` times without criterion, under
//! `perf stat -e cycles:u` or `valgrind --tool=callgrind`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use meshgate_core::config::{RawRedactionRule, SecretSource};
use meshgate_core::redact::{Detector, Direction, RedactionCounts, RedactionPlan, Redactor};
use serde_json::{json, Value};

struct NoSecrets;
impl SecretSource for NoSecrets {
    fn secret(&self, _: &str) -> Option<String> {
        None
    }
}

fn plan() -> RedactionPlan {
    let names: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
    let rules: Vec<RawRedactionRule> = serde_json::from_value(json!([{ "detectors": names, "mode": "mask" }])).unwrap();
    let servers: HashSet<String> = ["crm".to_string()].into();
    let redactor = Redactor::compile(&rules, None, &servers, &|_| true, &NoSecrets).unwrap();
    redactor.plan("crm", Some("search_customers"), &[], Direction::Response).unwrap()
}

/// Deterministic pseudo-random numbers (xorshift), so every run benchmarks the same bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

const PROSE: &[&str] = &[
    "Customer reported that the export job finished in 12.5s (run 2024-05-01T12:30:00Z, build v10.0.1.4).",
    "Order ORD-2024-000123 shipped via UPS; total $1,299.00 incl. VAT 19%, tracking 1Z999AA10123456784.",
    "Ticket #48213 escalated to tier 2 after 3 attempts; SLA 4h remaining, owner team-billing.",
    "Updated dependency lodash@4.17.21 and serde 1.0.203 in the billing service; see CHANGELOG.md.",
    "Request id 550e8400-e29b-41d4-a716-446655440000 took 245 ms (p99 310 ms) on node api-7.",
    "Meeting moved to 14:30 CET; agenda: Q3 pipeline review, churn analysis and the pricing update.",
    "Die Müller GmbH fragt, ob die Rechnung in zwei Zahlungen aufgeteilt werden kann — bitte prüfen.",
    "Epoch 1714566600, counter 1714566600123, ratio 0.9731, region eu-west-1, shard 12 of 64.",
];

const NAMES: &[&str] = &["jane.doe", "j.smith", "maria.garcia", "li.wei", "o.brien", "k.nakamura"];
const DOMAINS: &[&str] = &["example.com", "acme.io", "mail.example.co.uk", "corp.example.de"];
const PHONES: &[&str] = &["(415) 555-0132", "+44 20 7946 0958", "+49 30 12345678", "415-555-0199", "+33 1 23 45 67 89"];
const CARDS: &[&str] = &["4111 1111 1111 1111", "5555555555554444", "3782 822463 10005"];
const IBANS: &[&str] = &["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"];

fn pii_line(rng: &mut Rng) -> String {
    let email = format!("{}@{}", rng.pick(NAMES), rng.pick(DOMAINS));
    match rng.next() % 4 {
        0 => format!("Contact {email} or call {} about the renewal.", rng.pick(PHONES)),
        1 => format!("Card on file {}, billing IBAN {}.", rng.pick(CARDS), rng.pick(IBANS)),
        2 => format!(
            "Login from 203.0.113.{} with Bearer 8f14e45fceea167a5a36dedd4bea25{:02}.",
            rng.next() % 255,
            rng.next() % 100
        ),
        _ => format!("SSN 123-45-6789 verified; rotated key AKIAIOSFODNN7EXAMPLE for {email}."),
    }
}

/// A `tools/call` result of about `size` bytes; `pii_per_mille` of lines and records carry PII.
fn payload(size: usize, pii_per_mille: u64) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut text = String::new();
    let mut records = Vec::new();
    let mut approx = 200;
    let mut i = 0u64;
    while approx < size {
        let line = if rng.chance(pii_per_mille) { pii_line(&mut rng) } else { rng.pick(PROSE).to_string() };
        approx += line.len() + 2;
        text.push_str(&line);
        text.push('\n');
        let note = if rng.chance(pii_per_mille) { pii_line(&mut rng) } else { rng.pick(PROSE).to_string() };
        let contact = if rng.chance(pii_per_mille) {
            format!("{}@{}", rng.pick(NAMES), rng.pick(DOMAINS))
        } else {
            "see account owner".to_string()
        };
        let record = json!({
            "id": format!("cus_{i:06}"), "name": "Account", "segment": rng.pick(&["smb", "enterprise", "public"]),
            "created": "2024-05-01T12:30:00Z", "balance": 1299.5, "active": true, "tags": ["renewal", "eu"],
            "contact": contact, "note": note,
        });
        approx += record.to_string().len() + 1;
        records.push(record);
        i += 1;
    }
    let body = json!({
        "jsonrpc": "2.0", "id": 42,
        "result": {
            "content": [{"type": "text", "text": text}],
            "structuredContent": {"customers": records, "nextCursor": null},
            "isError": false,
        }
    });
    serde_json::to_vec(&body).unwrap()
}

/// The naive baseline: tree, one `replace_all` per detector per string, serialize.
struct Naive(Vec<(regex::Regex, String)>);

impl Naive {
    fn new() -> Self {
        Naive(
            Detector::ALL
                .iter()
                .map(|d| (regex::Regex::new(d.pattern()).unwrap(), format!("[{}]", d.label())))
                .collect(),
        )
    }

    fn redact_str(&self, s: &mut String) {
        for (re, token) in &self.0 {
            if let std::borrow::Cow::Owned(new) = re.replace_all(s, token.as_str()) {
                *s = new;
            }
        }
    }

    fn all(&self, v: &mut Value) {
        match v {
            Value::String(s) => self.redact_str(s),
            Value::Array(a) => a.iter_mut().for_each(|x| self.all(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.all(x)),
            _ => {}
        }
    }

    fn redact(&self, body: &[u8]) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(body).unwrap();
        if let Some(content) = v.pointer_mut("/result/content").and_then(Value::as_array_mut) {
            for block in content {
                if let Some(t) = block.get_mut("text") {
                    self.all(t);
                }
            }
        }
        if let Some(s) = v.pointer_mut("/result/structuredContent") {
            self.all(s);
        }
        serde_json::to_vec(&v).unwrap()
    }
}

const DENSITIES: [(&str, u64); 2] = [("sparse", 20), ("dense", 800)];
const SIZES: [(&str, usize); 3] = [("1KB", 1024), ("64KB", 64 * 1024), ("1MB", 1024 * 1024)];

/// `REDACTION_ITERS=<density>/<engine>/<size>:<n>`: the case, `n` times, nothing else.
fn fixed_iterations(spec: &str) {
    let (case, n) = spec.split_once(':').expect("REDACTION_ITERS=<density>/<engine>/<size>:<n>");
    let n: u64 = n.parse().expect("a number of iterations");
    let parts: Vec<&str> = case.split('/').collect();
    let [density, engine, size] = parts[..] else { panic!("REDACTION_ITERS=<density>/<engine>/<size>:<n>") };
    let per_mille = DENSITIES.iter().find(|(d, _)| *d == density).expect("sparse or dense").1;
    let size = SIZES.iter().find(|(s, _)| *s == size).expect("1KB, 64KB or 1MB").1;
    let body = payload(size, per_mille);
    let (plan, naive) = (plan(), Naive::new());
    let mut bytes = 0usize;
    for _ in 0..n {
        bytes += match engine {
            "meshgate" => plan.redact_message(&body, &mut RedactionCounts::new()).unwrap().map_or(0, |o| o.len()),
            "naive" => naive.redact(&body).len(),
            _ => panic!("meshgate or naive"),
        };
    }
    eprintln!("{case}: {n} x {} bytes ({bytes} bytes written)", body.len());
}

fn bench(c: &mut Criterion) {
    let plan = plan();
    let naive = Naive::new();
    for (density, per_mille) in DENSITIES {
        let mut group = c.benchmark_group(format!("redaction/{density}"));
        for (label, size) in SIZES {
            let body = payload(size, per_mille);
            let mut counts = RedactionCounts::new();
            let out = plan.redact_message(&body, &mut counts).unwrap();
            eprintln!(
                "{density}/{label}: {} bytes, {} redactions, rewritten: {}",
                body.len(),
                counts.total(),
                out.is_some()
            );
            group.throughput(Throughput::Bytes(body.len() as u64));
            if size >= 1024 * 1024 {
                group.sample_size(10);
            }
            group.bench_with_input(BenchmarkId::new("meshgate", label), &body, |b, body| {
                b.iter(|| plan.redact_message(body, &mut RedactionCounts::new()).unwrap())
            });
            group.bench_with_input(BenchmarkId::new("naive", label), &body, |b, body| b.iter(|| naive.redact(body)));
        }
        group.finish();
    }
}

criterion_group!(benches, bench);

fn main() {
    match std::env::var("REDACTION_ITERS") {
        Ok(spec) => fixed_iterations(&spec),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
