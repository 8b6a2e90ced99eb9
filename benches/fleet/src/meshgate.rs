//! The `meshgate serve` under test: a real child process, started from a registry file,
//! measured through `/proc/<pid>` (RSS, CPU time), killed and restarted on the same port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry's credential env var (see [`crate::registry`]).
pub const TOKEN_ENV: &str = "FLEET_UPSTREAM_TOKEN";

#[derive(Debug)]
pub struct Meshgate {
    child: Child,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    pub version: String,
}

/// How to start it.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub registry: PathBuf,
    pub workdir: PathBuf,
    /// Extra `serve` arguments (e.g. `--wasm`).
    pub args: Vec<String>,
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

impl Meshgate {
    /// Starts `meshgate serve` with ADS on `xds` (port 0: any) and waits for its ready file.
    pub fn start(launch: &Launch, xds: SocketAddr) -> Result<Meshgate, String> {
        let ready = launch.workdir.join("meshgate.ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(launch.workdir.join("meshgate.log"))
            .map_err(|e| format!("cannot open the meshgate log: {e}"))?;
        let mut child = Command::new(&launch.binary)
            .arg("serve")
            .arg("--registry")
            .arg(&launch.registry)
            .arg("--xds-listen")
            .arg(xds.to_string())
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--ready-file")
            .arg(&ready)
            .args(&launch.args)
            .env(TOKEN_ENV, "fleet-upstream-token")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(json) = read_json(&ready) {
                let field = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
                let xds = field("xds").parse().map_err(|e| format!("ready file xds: {e}"))?;
                let admin = field("meshgate_admin")
                    .trim_start_matches("http://")
                    .parse()
                    .map_err(|e| format!("ready file admin: {e}"))?;
                return Ok(Meshgate { child, xds, admin, version: field("version") });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "meshgate exited ({status}); see {}",
                    launch.workdir.join("meshgate.log").display()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("meshgate did not become ready in 60 s".to_string());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// User + system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Crashes it (SIGKILL), as a dead node or an OOM kill would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (SIGTERM), as an orchestrator would.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET path` on the admin API (plain HTTP/1.0), as JSON.
    pub fn admin_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let mut stream = TcpStream::connect(self.admin).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.admin).map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).map_err(|e| format!("{path}: {e}"))
    }
}

impl Drop for Meshgate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // rest[0] is field 3, so field n is rest[n - 3].
    let total = ticks(14 - 3) + ticks(15 - 3);
    let hz = nix_clock_ticks();
    total as f64 / hz
}

fn nix_clock_ticks() -> f64 {
    // _SC_CLK_TCK is 100 on every Linux this runs on (x86_64, aarch64).
    100.0
}
