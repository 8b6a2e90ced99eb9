//! Translating a 1,000-server registry: `cargo bench -p meshgate --bench translate`.
//!
//! - `translate/1000`: registry → typed resources (what every reload does after validation);
//! - `snapshot/1000`: the same plus packing, hashing and the consistency check, i.e. the
//!   whole path from a validated registry to a publishable snapshot (target: < 50 ms);
//! - `load/1000`: parsing and validating the YAML (including the filter's own validator).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use meshgate::registry::Registry;
use meshgate::snapshot::Snapshot;
use meshgate::translate::{translate, TranslateOptions, WasmSource};
use meshgate_core::config::SecretSource;

const SERVERS: usize = 1000;

struct BenchSecrets;

impl SecretSource for BenchSecrets {
    fn secret(&self, name: &str) -> Option<String> {
        (name == "BENCH_TOKEN").then(|| "bench-upstream-token".to_string())
    }
}

/// 1,000 servers: a mix of single and multi-endpoint, a tenth with credentials, every
/// fifth with HTTP health checks; one role per ten servers.
fn registry_yaml() -> String {
    let mut yaml = String::from("listener: { address: 0.0.0.0, port: 10000 }\nservers:\n");
    for i in 0..SERVERS {
        yaml.push_str(&format!("  - name: server-{i}\n"));
        if i % 3 == 0 {
            yaml.push_str(&format!(
                "    urls: [http://10.0.{}.{}:8080/mcp, http://mcp-{i}.internal:8080/mcp]\n",
                i / 250,
                i % 250 + 1
            ));
        } else {
            yaml.push_str(&format!("    url: http://mcp-{i}.internal:8080/mcp\n"));
        }
        yaml.push_str("    timeout: 300s\n");
        if i % 10 == 0 {
            yaml.push_str("    credentials: { value_env: BENCH_TOKEN, prefix: 'Bearer ' }\n");
        }
        if i % 5 == 0 {
            yaml.push_str("    health_check: { type: http }\n");
        }
        yaml.push_str(&format!("    tools: [{{ name: search, description: search server {i} }}]\n"));
    }
    yaml.push_str(
        "auth:\n  resource_metadata: https://gw.example.com/.well-known/oauth-protected-resource\n  api_keys:\n",
    );
    yaml.push_str("    - { consumer: ci, sha256: \"3f2a4fc5102d2e4887969eeae2f869f5e75546ba030a606da8a66efabf50ab5b\", roles: [role-0] }\n");
    yaml.push_str("policy:\n  roles:\n");
    for r in 0..SERVERS / 10 {
        yaml.push_str(&format!(
            "    role-{r}: {{ allow: [\"server-{}/get_*\", \"server-{}/*\"], deny: [\"*/delete_*\"] }}\n",
            r * 10,
            r * 10 + 1
        ));
    }
    yaml
}

fn bench(c: &mut Criterion) {
    let yaml = registry_yaml();
    let file = Path::new("bench-registry.yaml");
    let registry = Registry::parse(&yaml, file, &BenchSecrets).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(registry.servers.len(), SERVERS);
    let options = TranslateOptions {
        wasm: WasmSource::Local { path: "/opt/meshgate/meshgate_wasm.wasm".into() },
        native: Default::default(),
    };
    let resources = translate(&registry, &options).unwrap();
    let snapshot = Snapshot::new(&resources).unwrap();
    eprintln!("snapshot {}: {:?}", snapshot.version, snapshot.counts());

    c.bench_function("translate/1000", |b| b.iter(|| translate(black_box(&registry), &options).unwrap()));
    c.bench_function("snapshot/1000", |b| {
        b.iter(|| {
            let resources = translate(black_box(&registry), &options).unwrap();
            Snapshot::new(&resources).unwrap()
        })
    });
    c.bench_function("load/1000", |b| b.iter(|| Registry::parse(black_box(&yaml), file, &BenchSecrets).unwrap()));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
