//! Real Envoys alongside the simulated fleet: each bootstrapped by `meshgate bootstrap
//! --xds-address` (as operators do), its convergence read from meshgate's `/status` (what
//! it ACKed, per type), polled every [`POLL`] while a phase runs — so their times have that
//! resolution.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::envoy::{Api, CLUSTER, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};

pub const POLL: Duration = Duration::from_millis(100);

/// One real Envoy we started; killed on drop.
pub struct RealEnvoy {
    pub id: String,
    pub api: Api,
    child: Child,
}

impl Drop for RealEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `meshgate bootstrap` for `id`, then Envoy on it (one worker, native module by name from
/// `module_dir`).
pub fn start(
    envoy: &Path,
    meshgate: &Path,
    xds: SocketAddr,
    id: &str,
    api: Api,
    workdir: &Path,
    module_dir: &Path,
) -> Result<RealEnvoy, String> {
    let out = Command::new(meshgate)
        .args(["bootstrap", "--xds-address", &xds.to_string(), "--node-id", id, "--xds-api", api.name()])
        .args(["--admin-port", "0", "--format", "json"])
        .output()
        .map_err(|e| format!("meshgate bootstrap: {e}"))?;
    if !out.status.success() {
        return Err(format!("meshgate bootstrap: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let bootstrap: PathBuf = workdir.join(format!("{id}.json"));
    std::fs::write(&bootstrap, &out.stdout).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(workdir.join(format!("{id}.log"))).map_err(|e| e.to_string())?;
    let child = Command::new(envoy)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn", "-c"])
        .arg(&bootstrap)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", envoy.display()))?;
    Ok(RealEnvoy { id: id.to_string(), api, child })
}

/// `/status` node acks: node id → short type name → version.
pub type Acks = BTreeMap<String, BTreeMap<String, String>>;

async fn get_status(admin: SocketAddr) -> Result<Value, String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /status HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&text);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).map_err(|e| e.to_string())
}

/// The acks (and NACK counts) of `ids` in meshgate's `/status` now.
pub async fn acks(admin: SocketAddr, ids: &[String]) -> Result<(Acks, u64), String> {
    let status = get_status(admin).await?;
    let mut acks = Acks::new();
    let mut nacks = 0;
    for id in ids {
        let node = &status["nodes"][id];
        nacks += node["nacks"].as_u64().unwrap_or(0);
        let acked = node["acked"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect());
        acks.insert(id.clone(), acked.unwrap_or_default());
    }
    Ok((acks, nacks))
}

/// Samples `/status` every [`POLL`] until `stop`.
pub async fn poll(admin: SocketAddr, ids: Vec<String>, mut stop: watch::Receiver<bool>) -> Vec<(Instant, Acks)> {
    let mut samples = Vec::new();
    loop {
        if let Ok((acks, _)) = acks(admin, &ids).await {
            samples.push((Instant::now(), acks));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return samples,
        }
    }
}

pub fn short(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER => "clusters",
        LISTENER => "listeners",
        ROUTE => "routes",
        EXTENSION_CONFIG => "extension_configs",
        SECRET => "secrets",
        _ => "other",
    }
}

/// When `id` first ACKed exactly `reference` (short type → version) in `samples`.
pub fn converged_at(samples: &[(Instant, Acks)], id: &str, reference: &BTreeMap<String, String>) -> Option<Instant> {
    samples
        .iter()
        .find(|(_, acks)| acks.get(id).is_some_and(|a| reference.iter().all(|(t, v)| a.get(t) == Some(v))))
        .map(|(at, _)| *at)
}
