//! Load on meshgate's `envoy.service.ratelimit.v3` service: C simulated Envoys (each its own
//! HTTP/2 connection, one request in flight each, as Envoy's ratelimit filter sends one
//! `ShouldRateLimit` per request) against a real `meshgate serve` and a real `redis-server`.
//!
//! Reported per concurrency: decisions per second, latency p50/p99, and CPU seconds meshgate
//! and Redis spent, so throughput per core of meshgate is decisions / meshgate CPU seconds.
//! Every answer is checked: a decision that is not `OK` (the limit is set far above what
//! the run can reach) or a gRPC error counts as a failure.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{rate_limit_descriptor::Entry, RateLimitDescriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use serde_json::{json, Value};
use tonic::transport::Endpoint;

use crate::meshgate::{cpu_seconds, Meshgate};

/// The global rule every request is charged against.
pub const RULE: &str = "fleet-rl";

/// A `redis-server` we started (no persistence); killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start(workdir: &Path) -> Result<Redis, String> {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(workdir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server (`make setup` installs it): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not listen within 10 s".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis { child, port })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry whose only purpose is the global rule: a limit no run reaches.
pub fn registry_yaml(redis_port: u16) -> String {
    format!(
        "listener: {{ address: 127.0.0.1, port: 0 }}
servers:
  - name: tools
    url: http://127.0.0.1:20000/mcp
auth:
  api_keys:
    - {{ consumer: ci, sha256: \"3f2a4fc5102d2e4887969eeae2f869f5e75546ba030a606da8a66efabf50ab5b\", roles: [user] }}
policy:
  roles:
    user: {{ allow: [\"*\"] }}
quotas:
  - name: {RULE}
    match: {{ tools: [\"tools/*\"] }}
    quota: 1000000000/h
    key: consumer_tool
    scope: global
rate_limit_service:
  redis_url: redis://127.0.0.1:{redis_port}/0
  failure_mode: deny
  timeout: 1s
"
    )
}

fn request(client: usize, n: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: "meshgate".to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry { key: "rule".to_string(), value: RULE.to_string() },
                // A few hundred counters, as many consumers × tools would give.
                Entry { key: "key".to_string(), value: format!("consumer-{client}/tools/t{}", n % 8) },
            ],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

/// One concurrency level for `duration`.
pub async fn level(meshgate: &Meshgate, redis: &Redis, clients: usize, duration: Duration) -> Result<Value, String> {
    let endpoint = format!("http://{}", meshgate.xds);
    let mut connected = Vec::new();
    for _ in 0..clients {
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        connected.push(RateLimitServiceClient::new(channel));
    }
    // Warm-up: every connection (and meshgate's Redis pool) used once.
    for (i, client) in connected.iter_mut().enumerate() {
        client.should_rate_limit(request(i, 0)).await.map_err(|e| e.to_string())?;
    }
    let cpu_meshgate = meshgate.cpu_seconds();
    let cpu_redis = cpu_seconds(redis.pid());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (i, mut client) in connected.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let mut n = 1;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client.should_rate_limit(request(i, n)).await {
                    Ok(r) if r.get_ref().overall_code == Code::Ok as i32 => {}
                    _ => failures += 1,
                }
                latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                n += 1;
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let meshgate_cpu = meshgate.cpu_seconds() - cpu_meshgate;
    let redis_cpu = cpu_seconds(redis.pid()) - cpu_redis;
    latencies.sort_by(f64::total_cmp);
    let count = latencies.len() as f64;
    let result = json!({
        "clients": clients,
        "decisions": latencies.len(),
        "failures": failures,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "latency_us": {
            "p50": crate::percentile(&latencies, 0.5),
            "p99": crate::percentile(&latencies, 0.99),
            "max": crate::percentile(&latencies, 1.0),
        },
        "meshgate_cpu_s": meshgate_cpu,
        "redis_cpu_s": redis_cpu,
        "per_meshgate_core_second": if meshgate_cpu > 0.0 { count / meshgate_cpu } else { f64::NAN },
    });
    eprintln!(
        "{clients:>3} client(s): {:.0} decisions/s, p50 {:.0} µs, p99 {:.0} µs; meshgate CPU {:.2} s ({:.0} decisions per core-second), redis CPU {:.2} s; {failures} failure(s)",
        count / elapsed,
        crate::percentile(&latencies, 0.5),
        crate::percentile(&latencies, 0.99),
        meshgate_cpu,
        count / meshgate_cpu.max(f64::MIN_POSITIVE),
        redis_cpu
    );
    Ok(result)
}
