//! `meshgate up`: the control plane in-process, plus one Envoy that only knows where it is.
//!
//! meshgate starts its ADS server and admin API on loopback (ports picked by the OS), writes
//! an xDS bootstrap pointing at them, and runs Envoy; listener, routes, clusters, the wasm
//! filter and its policy all arrive over ADS, and registry edits reach Envoy live.
//!
//! Envoy is a child process; meshgate owns its lifetime:
//! - its stdout/stderr are streamed through line by line, prefixed `envoy: `, and the last
//!   lines are kept for error messages;
//! - "ready" means Envoy's admin API reports `/ready` = 200, the MCP listener accepts a TCP
//!   connection (V8 compiles the module for 1–2 s first; with port 0 the real port is read
//!   from `/listeners`), *and* Envoy has ACKed every resource type; before that nothing is
//!   printed as ready. If Envoy NACKs the first configuration (a broken module, say), `up`
//!   fails at once with Envoy's words;
//! - SIGINT/SIGTERM are forwarded as SIGTERM, with SIGKILL after [`STOP_GRACE`]; meshgate
//!   then exits 0. If Envoy exits on its own, meshgate exits non-zero with its status.
//!
//! Envoy stays in meshgate's process group, so a terminal's Ctrl-C reaches both; signals
//! are polled before the child's exit so that case still counts as a requested stop.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;

use crate::bootstrap::{self, BootstrapError, XdsBootstrap};
use crate::control::{Api, ControlPlane};
use crate::locate::{LocateError, Search};
use crate::registry::{LoadErrors, Registry, Runtime};
use crate::reload::ReloadError;
use crate::serve::{self, ServeError, StartOptions, WasmDelivery};
use crate::translate::NativeSource;
use crate::{envoy_admin as admin, translate};
use meshgate_core::native_abi;

/// `node.id` of the Envoy `up` runs.
pub const UP_NODE_ID: &str = "meshgate-up";

/// How long Envoy gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Envoy gets to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of Envoy output kept for error messages.
const TAIL_LINES: usize = 15;
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What `meshgate up` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    pub registry: PathBuf,
    pub envoy: Option<PathBuf>,
    pub wasm: Option<PathBuf>,
    /// The native module (`libmeshgate.so`).
    pub native_module: Option<PathBuf>,
    pub ready_file: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    /// ADS variant Envoy uses.
    pub api: Option<Api>,
    /// Where the control plane listens (default: loopback, any port).
    pub xds_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// Permit the control plane's ports on a non-loopback address without TLS (warns).
    pub allow_plaintext: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Registry(#[from] LoadErrors),
    #[error("{0}")]
    Locate(#[from] LocateError),
    #[error("{0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("{0}")]
    ControlPlane(ServeError),
    #[error("envoy rejected its configuration ({resource_type}): {message}{}", format_tail(.tail))]
    Rejected { resource_type: String, message: String, tail: Vec<String> },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(
        "{envoy} is Envoy {found}, but the native filter ({module}) is built for Envoy {expected}'s \
         dynamic-module ABI {abi}: run Envoy {expected} (`make setup` installs it in .venv), or set \
         `filter: {{ runtime: wasm }}` in the registry (the wasm build runs on any Envoy)",
        envoy = .envoy.display(), module = .module.display(), expected = native_abi::ENVOY_VERSION,
        abi = native_abi::VERSION
    )]
    EnvoyVersion { envoy: PathBuf, found: String, module: PathBuf },
    #[error("envoy exited before it was ready ({status}){}", format_tail(.tail))]
    ExitedEarly { status: ExitStatus, tail: Vec<String> },
    #[error("envoy was not ready after {}s ({last}){}", .timeout.as_secs(), format_tail(.tail))]
    NotReady { timeout: Duration, last: String, tail: Vec<String> },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
    let what = what.into();
    move |source| UpError::Io { what, source }
}

fn format_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut text = String::from("; last lines of its output:");
    for line in tail {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text
}

/// How a supervised Envoy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped because meshgate was asked to stop.
    Stopped,
    /// Exited on its own.
    Exited(ExitStatus),
}

/// Where a ready Envoy can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub pid: u32,
    pub admin: SocketAddr,
    /// Connectable listener address (loopback when Envoy listens on all addresses).
    pub listener: SocketAddr,
}

impl Ready {
    /// `server name -> URL` in registry order.
    pub fn server_urls(&self, registry: &Registry) -> Vec<(String, String)> {
        registry
            .servers
            .iter()
            .map(|s| {
                let scheme = if registry.edge.tls.is_some() { "https" } else { "http" };
                let url = format!("{scheme}://{}{}", self.listener, registry.route_path(s));
                (s.name.clone(), url)
            })
            .collect()
    }

    /// The `--ready-file` document; `extra` (an object) adds keys.
    pub fn to_json(&self, registry: &Registry, extra: &serde_json::Value) -> serde_json::Value {
        let servers: BTreeMap<String, String> = self.server_urls(registry).into_iter().collect();
        let mut document = serde_json::json!({
            "listener": self.listener.to_string(),
            "admin": format!("http://{}", self.admin),
            "envoy_pid": self.pid,
            "servers": servers,
        });
        if let (Some(document), Some(extra)) = (document.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                document.insert(key.clone(), value.clone());
            }
        }
        document
    }
}

/// Runs `meshgate up` until Envoy stops.
pub async fn up(options: &UpOptions) -> Result<Ended, UpError> {
    // Validate first: an invalid registry must fail before anything starts.
    let registry = Registry::load(&options.registry)?;
    let search = Search::current();
    let envoy = search.envoy(options.envoy.as_deref())?;
    // The build the registry asks for must be there; the other one only for a live switch.
    let (wasm, native) = match registry.runtime {
        Runtime::Native => {
            let native = search.native(options.native_module.as_deref())?;
            check_envoy_version(&envoy, &native).await?;
            (module_or_candidate(search.wasm(options.wasm.as_deref()), &search, false), native)
        }
        Runtime::Wasm => {
            let wasm = search.wasm(options.wasm.as_deref())?;
            (wasm, module_or_candidate(search.native(options.native_module.as_deref()), &search, true))
        }
    };

    // The temp dir (if any) lives until `up` returns and is removed then.
    let (work_dir, _temp_dir) = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io_error(format!("cannot create work dir {}", dir.display())))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("meshgate-")
                .tempdir()
                .map_err(io_error("cannot create a temporary work dir"))?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let admin_file = work_dir.join("admin-address");
    match std::fs::remove_file(&admin_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(format!("cannot remove {}", admin_file.display()))(e))
        }
        _ => {}
    }

    // Installed before anything starts so a signal can never be missed (or kill meshgate
    // with the default action while Envoy keeps running).
    let mut signals = Signals::new().map_err(io_error("cannot install signal handlers"))?;

    let loopback_any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let control_plane = serve::start(&StartOptions {
        registry: options.registry.clone(),
        xds_listen: options.xds_listen.unwrap_or(loopback_any),
        admin_listen: options.admin_listen.unwrap_or(loopback_any),
        wasm: WasmDelivery::Local(wasm),
        native: NativeSource::Path(native),
        security: serve::Security { allow_plaintext: options.allow_plaintext, ..Default::default() },
    })
    .await
    .map_err(|e| match e {
        ServeError::Load(ReloadError::Registry(errors)) => UpError::Registry(errors),
        other => UpError::ControlPlane(other),
    })?;
    let result = supervise(options, &envoy, &work_dir, &admin_file, &registry, &control_plane, &mut signals).await;
    control_plane.stop().await;
    result
}

/// The other build's module: found, or where it would be (a switch to it is then NACKed
/// by Envoy, and meshgate reports it), with a note.
fn module_or_candidate(found: Result<PathBuf, LocateError>, search: &Search, native: bool) -> PathBuf {
    match found {
        Ok(path) => path,
        Err(e) => {
            eprintln!("meshgate: note: {e}; switching filter.runtime to it will fail");
            let candidate = if native { search.native_candidate(None) } else { search.wasm_candidate(None) };
            candidate.map(|(path, _)| path).unwrap_or_default()
        }
    }
}

/// Refuses to start an Envoy the native module was not built for: its ABI is Envoy
/// 1.40's ([`native_abi`]), and another version fails to load it.
async fn check_envoy_version(envoy: &Path, module: &Path) -> Result<(), UpError> {
    let output = Command::new(envoy)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_error(format!("cannot run {} --version", envoy.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let found = envoy_version(&text);
    match &found {
        Some(version) if release_of(version) == Some(native_abi::ENVOY_VERSION) => Ok(()),
        _ => Err(UpError::EnvoyVersion {
            envoy: envoy.to_path_buf(),
            found: found.unwrap_or_else(|| format!("of unknown version ({:?})", text.trim())),
            module: module.to_path_buf(),
        }),
    }
}

/// The `x.y.z` in `envoy --version`'s `version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
pub fn envoy_version(text: &str) -> Option<String> {
    let is_version = |t: &&str| {
        let parts: Vec<&str> = t.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    text.split(['/', ' ', '\n', '\t']).find(is_version).map(str::to_string)
}

/// `1.40` of `1.40.2`.
fn release_of(version: &str) -> Option<&str> {
    version.rsplit_once('.').map(|(release, _)| release)
}

/// Writes the bootstrap, runs Envoy until it stops or a signal comes.
async fn supervise(
    options: &UpOptions,
    envoy: &Path,
    work_dir: &Path,
    admin_file: &Path,
    registry: &Registry,
    control_plane: &serve::Running,
    signals: &mut Signals,
) -> Result<Ended, UpError> {
    let bootstrap_file = work_dir.join("envoy-bootstrap.json");
    let bootstrap = bootstrap::xds_bootstrap(&XdsBootstrap {
        node_id: UP_NODE_ID.to_string(),
        xds_host: control_plane.xds.ip().to_string(),
        xds_port: control_plane.xds.port(),
        replicas: Vec::new(),
        admin_port: registry.admin_port,
        admin_address: registry.edge.admin_address,
        stats: registry.edge.stats,
        api: options.api.unwrap_or(Api::Sotw),
        tls: None,
    });
    std::fs::write(&bootstrap_file, bootstrap::to_json(&bootstrap))
        .map_err(io_error(format!("cannot write {}", bootstrap_file.display())))?;

    let mut command = Command::new(envoy);
    command
        .arg("--disable-hot-restart")
        .arg("-c")
        .arg(&bootstrap_file)
        .arg("-l")
        .arg(registry.envoy.log_level.as_str())
        .arg("--admin-address-path")
        .arg(admin_file)
        .arg("--concurrency")
        .arg(registry.envoy.concurrency.to_string());
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().map_err(io_error(format!("cannot start {}", envoy.display())))?;
    let pid = child.id().unwrap_or_default();
    let output = Output::capture(&mut child);

    enum Startup {
        Ready(Result<Ready, String>),
        Rejected(crate::control::Nack),
        Signalled,
        Exited(std::io::Result<ExitStatus>),
    }
    let startup = tokio::select! {
        biased;
        _ = signals.next() => Startup::Signalled,
        status = child.wait() => Startup::Exited(status),
        nack = first_nack(&control_plane.control, UP_NODE_ID) => Startup::Rejected(nack),
        ready = async {
            let ready = wait_ready(pid, admin_file, registry, READY_TIMEOUT).await?;
            wait_synced(&control_plane.control, UP_NODE_ID).await;
            Ok(ready)
        } => Startup::Ready(ready),
    };
    let ready = match startup {
        Startup::Ready(Ok(ready)) => ready,
        Startup::Ready(Err(last)) => {
            stop(&mut child).await;
            return Err(UpError::NotReady { timeout: READY_TIMEOUT, last, tail: output.finish().await });
        }
        Startup::Rejected(nack) => {
            stop(&mut child).await;
            return Err(UpError::Rejected {
                resource_type: nack.resource_type,
                message: nack.message,
                tail: output.finish().await,
            });
        }
        Startup::Signalled => {
            stop(&mut child).await;
            output.finish().await;
            return Ok(Ended::Stopped);
        }
        Startup::Exited(status) => {
            let status = status.map_err(io_error("cannot wait for envoy"))?;
            return Err(UpError::ExitedEarly { status, tail: output.finish().await });
        }
    };

    // Edits made while Envoy started are already live: print what is served now.
    let current = control_plane.control.registry().unwrap_or_else(|| control_plane.registry.clone());
    println!("meshgate: envoy ready (pid {}), admin http://{}", ready.pid, ready.admin);
    println!(
        "meshgate: control plane xds {}, admin http://{} (watching {})",
        control_plane.xds,
        control_plane.admin,
        options.registry.display()
    );
    for (name, url) in ready.server_urls(&current) {
        println!("meshgate: {name} -> {url}");
    }
    if let Some(file) = &options.ready_file {
        let document = ready.to_json(&current, &control_plane.ready_fields());
        if let Err(e) = write_atomically(file, &document.to_string()) {
            // Whoever waits for the file would wait forever: better not to run at all.
            stop(&mut child).await;
            output.finish().await;
            return Err(io_error(format!("cannot write ready file {}", file.display()))(e));
        }
    }

    let ended = tokio::select! {
        biased;
        _ = signals.next() => None,
        status = child.wait() => Some(status),
    };
    if let Some(file) = &options.ready_file {
        // Stale ready files mislead whoever waits on them next time.
        let _ = std::fs::remove_file(file);
    }
    match ended {
        None => {
            stop(&mut child).await;
            output.finish().await;
            Ok(Ended::Stopped)
        }
        Some(status) => {
            output.finish().await;
            Ok(Ended::Exited(status.map_err(io_error("cannot wait for envoy"))?))
        }
    }
}

/// Resolves once `node` has ACKed every resource type of the current snapshot and NACKed
/// nothing: Envoy's `/ready` alone does not say that (a listener whose filter config was
/// rejected still goes live, refusing every request).
async fn wait_synced(control: &ControlPlane, node: &str) {
    loop {
        let synced = control.snapshot().is_some_and(|snapshot| {
            let nodes = control.nodes();
            let Some(status) = nodes.get(node) else {
                return false;
            };
            status.last_nack.is_none()
                && snapshot.counts().iter().all(|(kind, count)| *count == 0 || status.acked.contains_key(*kind))
        });
        if synced {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Resolves with the first NACK `node` sends (polling the control plane's status).
async fn first_nack(control: &ControlPlane, node: &str) -> crate::control::Nack {
    loop {
        if let Some(nack) = control.nodes().get(node).and_then(|n| n.last_nack.clone()) {
            return nack;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// SIGINT, SIGTERM or SIGHUP, whichever comes first: each stops meshgate cleanly (and its
/// Envoy with it). SIGHUP is the terminal or SSH session closing; left to its default action
/// it would kill meshgate without cleanup, and Envoy, which ignores SIGHUP, would stay
/// behind holding the ports.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

/// Polls until Envoy is ready, or `timeout` passes: then the last reason it was not.
async fn wait_ready(pid: u32, admin_file: &Path, registry: &Registry, timeout: Duration) -> Result<Ready, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let reason = match probe(pid, admin_file, registry).await {
            Ok(ready) => return Ok(ready),
            Err(reason) => reason,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(reason);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn probe(pid: u32, admin_file: &Path, registry: &Registry) -> Result<Ready, String> {
    let text = std::fs::read_to_string(admin_file).map_err(|_| "admin API not up yet".to_string())?;
    let admin: SocketAddr = text.trim().parse().map_err(|_| format!("unexpected admin address {:?}", text.trim()))?;
    let ready = admin::get(admin, "/ready").await.map_err(|e| e.to_string())?;
    if ready.status != 200 {
        return Err(format!("admin /ready says {} {}", ready.status, String::from_utf8_lossy(&ready.body).trim()));
    }
    let listeners = admin::get(admin, "/listeners?format=json").await.map_err(|e| e.to_string())?;
    let bound = admin::listener_address(&listeners.body, translate::LISTENER_NAME)
        .ok_or_else(|| "listener not bound yet".to_string())?;
    let listener = registry.connect_address(bound.port());
    tokio::net::TcpStream::connect(listener)
        .await
        .map_err(|e| format!("listener {listener} does not accept connections: {e}"))?;
    Ok(Ready { pid, admin, listener })
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]. Never fails: the child is gone afterwards
/// or was already.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        eprintln!("meshgate: envoy did not stop within {}s; killing it", STOP_GRACE.as_secs());
        let _ = child.kill().await;
    }
}

/// Envoy's output, streamed through and remembered.
struct Output {
    tail: Arc<Mutex<VecDeque<String>>>,
    pumps: Vec<JoinHandle<()>>,
}

impl Output {
    fn capture(child: &mut Child) -> Output {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut pumps = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(stdout, tail.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(stderr, tail.clone())));
        }
        Output { tail, pumps }
    }

    /// Waits (briefly) for the last lines, then returns the tail.
    async fn finish(self) -> Vec<String> {
        for pump in self.pumps {
            let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
        }
        let tail = self.tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tail.iter().cloned().collect()
    }
}

async fn pump(stream: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("envoy: {line}");
        let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Writes `contents` to `file` so that readers see either nothing or all of it.
pub fn write_atomically(file: &Path, contents: &str) -> std::io::Result<()> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ready".to_string());
    let temp = file.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temp, contents)?;
    std::fs::rename(&temp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

/// The exit code meshgate reports for an Envoy that exited on its own: its code, or
/// 128 + signal; never 0 (an unrequested exit is a failure).
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) if code != 0 => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::registry;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn ready_file_document() {
        let registry = registry(
            "listener: { address: 0.0.0.0, port: 0 }\n\
             servers:\n  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }\n  - { name: docs, url: 'http://127.0.0.1:9102/mcp' }\n",
        );
        let ready = Ready {
            pid: 1234,
            admin: "127.0.0.1:9901".parse().expect("addr"),
            listener: registry.connect_address(10000),
        };
        let extra = serde_json::json!({ "xds": "127.0.0.1:18000" });
        assert_eq!(
            ready.to_json(&registry, &extra),
            serde_json::json!({
                "listener": "127.0.0.1:10000",
                "admin": "http://127.0.0.1:9901",
                "envoy_pid": 1234,
                "servers": {
                    "crm": "http://127.0.0.1:10000/mcp/crm",
                    "docs": "http://127.0.0.1:10000/mcp/docs",
                },
                "xds": "127.0.0.1:18000",
            })
        );
    }

    #[test]
    fn reads_the_envoy_version() {
        let text = "\nenvoy  version: 9e55809a4d7f1e7e4b1c/1.40.0/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(envoy_version(text).as_deref(), Some("1.40.0"));
        assert_eq!(envoy_version(text).as_deref().and_then(release_of), Some("1.40"));
        assert_eq!(envoy_version("envoy version: abc/1.39.2/Clean").as_deref().and_then(release_of), Some("1.39"));
        assert_eq!(envoy_version("no version here 1.40"), None);
    }

    #[test]
    fn exit_codes_are_never_zero() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 1);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ready.json");
        write_atomically(&file, "one").expect("write");
        write_atomically(&file, "two").expect("write");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "two");
        let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 1);
    }
}
