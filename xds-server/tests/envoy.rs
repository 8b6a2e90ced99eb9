//! Against a real Envoy (skipped, with the reason printed, when none is found): generated
//! bootstraps (static and xDS) pass `envoy --mode validate`, and `meshgate up` (control
//! plane in-process, Envoy on ADS) starts, routes, reports ready, and stops as documented.
//!
//! These use a minimal proxy-wasm module (see `support::minimal_proxy_wasm`) that lets every
//! request through, so they test meshgate's Envoy plumbing, not the filter, and need no
//! `make build`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{envoy_or_skip, minimal_proxy_wasm, write};

const SECRET_ENV: &str = "MESHGATE_TEST_HS256_SECRET";
const SECRET: &str = "test-secret-test-secret-test-secret";

fn validate_with_envoy(envoy: &Path, bootstrap: &Path) {
    // The native filter compiles its configuration in validate mode too: its secrets must be set.
    let out = Command::new(envoy)
        .env(SECRET_ENV, SECRET)
        .args(["--mode", "validate", "-l", "warn", "-c"])
        .arg(bootstrap)
        .output()
        .unwrap();
    assert!(out.status.success(), "envoy rejected {}:\n{}", bootstrap.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn generated_bootstraps_pass_envoy_validate() {
    let Some(envoy) = envoy_or_skip("generated_bootstraps_pass_envoy_validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wasm = write(dir.path(), "minimal.wasm", minimal_proxy_wasm());
    let mut registries: Vec<PathBuf> = vec![write(
        dir.path(),
        "mixed.yaml",
        format!(
            "listener: {{ address: 0.0.0.0, port: 0 }}\nadmin: {{ port: 0 }}\n\
             servers:\n  - {{ name: ip, url: 'http://127.0.0.1:9101/mcp', timeout: 250ms }}\n\
             \x20 - {{ name: dns, url: 'http://localhost:9102/' }}\n\
             \x20 - {{ name: v6, url: 'http://[::1]:9103/a/b' }}\n\
             auth:\n  jwt:\n    - {{ issuer: https://hs.example.com, audiences: [m], hs256_secret_env: {SECRET_ENV} }}\n\
             limits: {{ max_request_bytes: 100, max_response_bytes: 200 }}\n\
             envoy: {{ concurrency: 1 }}\nfilter: {{ runtime: wasm }}\n"
        ),
    )];
    // The example registry runs the native build: validated with the built module, if built.
    let example = support::repo_root().join("examples/registry.yaml");
    let native = support::repo_root().join("target/release/libmeshgate.so");
    if example.exists() && native.exists() {
        registries.push(example);
    } else {
        eprintln!("skipping the example registry: {} or {} is not there", example.display(), native.display());
    }
    for registry in registries {
        for format in ["yaml", "json"] {
            let out = support::meshgate()
                .env(SECRET_ENV, SECRET)
                .args(["bootstrap", "--format", format, "-r"])
                .arg(&registry)
                .arg("--wasm")
                .arg(&wasm)
                .arg("--native-module")
                .arg(&native)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", support::stderr(&out));
            let name = format!("bootstrap-{}.{format}", registry.file_stem().unwrap().to_string_lossy());
            let bootstrap = write(dir.path(), &name, &out.stdout);
            validate_with_envoy(&envoy, &bootstrap);
        }
    }
}

#[test]
fn xds_bootstraps_pass_envoy_validate() {
    let Some(envoy) = envoy_or_skip("xds_bootstraps_pass_envoy_validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The checked-in one (docker-compose.yml runs it), and both ADS variants by IP.
    let mut files = vec![support::repo_root().join("envoy/xds-bootstrap.yaml")];
    for api in ["sotw", "delta"] {
        let out = support::meshgate()
            .args([
                "bootstrap",
                "--xds-address",
                "127.0.0.1:18000",
                "--node-id",
                "validate",
                "--xds-api",
                api,
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", support::stderr(&out));
        files.push(write(dir.path(), &format!("xds-{api}.json"), &out.stdout));
    }
    for file in files {
        validate_with_envoy(&envoy, &file);
    }
}

/// A one-request-at-a-time HTTP/1.1 upstream that answers 200 and reports each request's
/// head (request line and headers).
fn fake_upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            // Health checks connect and close without a request: not a request.
            if head.is_empty() {
                continue;
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream");
            if tx.send(head).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// `GET path` through Envoy; returns the status code and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: client.example\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

struct Up {
    child: Child,
    ready_file: PathBuf,
    stdout_file: PathBuf,
    stderr_file: PathBuf,
}

impl Up {
    fn start(envoy: &Path, dir: &Path, registry: &Path, wasm: &Path) -> Up {
        Self::start_with(envoy, dir, registry, &["--wasm".as_ref(), wasm.as_os_str()])
    }

    fn start_with(envoy: &Path, dir: &Path, registry: &Path, module: &[&std::ffi::OsStr]) -> Up {
        let ready_file = dir.join("ready.json");
        let stdout_file = dir.join("stdout.txt");
        let stderr_file = dir.join("stderr.txt");
        let child = support::meshgate()
            .args(["up", "-r"])
            .arg(registry)
            .arg("--envoy")
            .arg(envoy)
            .args(module)
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--work-dir")
            .arg(dir.join("work"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_file).unwrap())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap();
        Up { child, ready_file, stdout_file, stderr_file }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.stdout_file).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
        )
    }

    /// The ready file's content, once written.
    fn wait_ready(&mut self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.ready_file) {
                return serde_json::from_str(&text).expect("the ready file is written atomically");
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("meshgate exited ({status}) before ready:\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "not ready after 60s:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "meshgate still running:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    /// After a failed assertion: stop meshgate the polite way first, so that it stops its
    /// Envoy too (SIGKILL would orphan it).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(self.child.id());
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; it is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

fn terminate(pid: u32) {
    send(pid, nix::sys::signal::Signal::SIGTERM);
}

fn send(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
}

/// The terminal or SSH session running `up` closes (SIGHUP): meshgate stops its Envoy (which
/// ignores SIGHUP itself) instead of dying and leaving it behind on the ports.
#[test]
fn up_stops_its_envoy_on_sighup() {
    let Some((_dir, mut up)) = up_with_one_server("up_stops_its_envoy_on_sighup") else {
        return;
    };
    let ready = up.wait_ready();
    let envoy_pid = i32::try_from(ready["envoy_pid"].as_u64().unwrap()).unwrap();
    assert!(pid_alive(envoy_pid));
    send(up.child.id(), nix::sys::signal::Signal::SIGHUP);
    let status = up.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", up.output());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(envoy_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pid_alive(envoy_pid), "envoy outlived meshgate after SIGHUP");
}

#[test]
fn up_routes_reports_ready_and_stops_on_sigterm() {
    let Some(envoy) = envoy_or_skip("up_routes_reports_ready_and_stops_on_sigterm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wasm = write(dir.path(), "minimal.wasm", minimal_proxy_wasm());
    let (upstream_port, requests) = fake_upstream();
    let registry = write(
        dir.path(),
        "registry.yaml",
        format!(
            "listener: {{ port: 0 }}\nadmin: {{ port: 0 }}\n\
             servers:\n  - {{ name: crm, url: 'http://127.0.0.1:{upstream_port}/mcp' }}\n\
             envoy: {{ concurrency: 1, log_level: info }}\nfilter: {{ runtime: wasm }}\n"
        ),
    );
    let mut up = Up::start(&envoy, dir.path(), &registry, &wasm);
    let ready = up.wait_ready();

    let listener = ready["listener"].as_str().unwrap().to_string();
    assert!(listener.starts_with("127.0.0.1:") && !listener.ends_with(":0"), "{ready}");
    assert_eq!(ready["servers"]["crm"], format!("http://{listener}/mcp/crm"));
    let admin = ready["admin"].as_str().unwrap();
    assert!(admin.starts_with("http://127.0.0.1:"), "{ready}");
    // The control plane's own addresses come along.
    assert!(ready["xds"].as_str().unwrap().starts_with("127.0.0.1:"), "{ready}");
    assert!(ready["meshgate_admin"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{ready}");
    let envoy_pid = i32::try_from(ready["envoy_pid"].as_u64().unwrap()).unwrap();
    assert!(pid_alive(envoy_pid));
    let stdout = std::fs::read_to_string(&up.stdout_file).unwrap();
    assert!(stdout.contains(&format!("meshgate: envoy ready (pid {envoy_pid}), admin {admin}")), "{stdout}");
    assert!(stdout.contains(&format!("meshgate: crm -> http://{listener}/mcp/crm")), "{stdout}");
    // Envoy's own log lines come through on stderr, prefixed.
    assert!(up.output().contains("envoy: ["), "{}", up.output());

    // Exact path, rewritten to the upstream path with the query kept, Host rewritten.
    let (status, body) = get(&listener, "/mcp/crm?session=1");
    assert_eq!((status, body.as_str()), (200, "upstream"), "{}", up.output());
    // meshgate's own tool discovery (`/catalog`) calls the upstream directly: not this request.
    let head = loop {
        let head = requests.recv_timeout(Duration::from_secs(5)).unwrap();
        if !head.to_ascii_lowercase().contains("\r\nuser-agent: meshgate-catalog/") {
            break head;
        }
    };
    assert!(head.starts_with("GET /mcp?session=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("host: 127.0.0.1:{upstream_port}\r\n")), "{head}");
    // Neighbours of the route do not match it.
    for path in ["/mcp/crmx", "/mcp/crm/x", "/mcp", "/"] {
        assert_eq!(get(&listener, path).0, 404, "{path}");
    }

    terminate(up.child.id());
    let status = up.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", up.output());
    assert!(!pid_alive(envoy_pid), "envoy outlived meshgate");
    assert!(!up.ready_file.exists(), "the ready file is removed on exit");
}

/// `meshgate up` (minimal module, one server nobody listens for), or `None` without Envoy.
fn up_with_one_server(test: &str) -> Option<(tempfile::TempDir, Up)> {
    let envoy = envoy_or_skip(test)?;
    let dir = tempfile::tempdir().unwrap();
    let wasm = write(dir.path(), "minimal.wasm", minimal_proxy_wasm());
    let registry = write(
        dir.path(),
        "registry.yaml",
        "listener: { port: 0 }\nservers: [{ name: a, url: 'http://127.0.0.1:9/' }]\nenvoy: { concurrency: 1 }\n\
         filter: { runtime: wasm }\n",
    );
    let up = Up::start(&envoy, dir.path(), &registry, &wasm);
    Some((dir, up))
}

#[test]
fn up_exits_nonzero_when_envoy_quits_on_its_own() {
    let Some((_dir, mut up)) = up_with_one_server("up_exits_nonzero_when_envoy_quits_on_its_own") else {
        return;
    };
    let ready = up.wait_ready();
    let admin = ready["admin"].as_str().unwrap().trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&admin).unwrap();
    write!(stream, "POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let status = up.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", up.output());
    assert!(up.output().contains("meshgate: envoy exited unexpectedly"), "{}", up.output());
}

#[test]
fn up_fails_with_envoys_words_when_the_module_is_bad() {
    let Some(envoy) = envoy_or_skip("up_fails_with_envoys_words_when_the_module_is_bad") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wasm = write(dir.path(), "bad.wasm", "not a wasm module");
    let registry = write(
        dir.path(),
        "registry.yaml",
        "listener: { port: 0 }\nservers: [{ name: a, url: 'http://127.0.0.1:9/' }]\nenvoy: { concurrency: 1 }\n\
         filter: { runtime: wasm }\n",
    );
    let mut up = Up::start(&envoy, dir.path(), &registry, &wasm);
    let status = up.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", up.output());
    let output = up.output();
    assert!(
        output.contains(
            "meshgate: envoy rejected its configuration (extension_configs): Unable to create Wasm plugin meshgate"
        ),
        "the error quotes Envoy's NACK:\n{output}"
    );
    assert!(output.contains("Failed to parse corrupted Wasm module"), "and Envoy's own lines:\n{output}");
    assert!(!up.ready_file.exists());
}

#[test]
fn up_fails_with_envoys_words_when_the_native_module_is_bad() {
    let Some(envoy) = envoy_or_skip("up_fails_with_envoys_words_when_the_native_module_is_bad") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let module = write(dir.path(), "libbad.so", "not a shared object");
    let registry = write(
        dir.path(),
        "registry.yaml",
        "listener: { port: 0 }\nservers: [{ name: a, url: 'http://127.0.0.1:9/' }]\nenvoy: { concurrency: 1 }\n",
    );
    let mut up = Up::start_with(&envoy, dir.path(), &registry, &["--native-module".as_ref(), module.as_os_str()]);
    let status = up.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", up.output());
    let output = up.output();
    assert!(
        output.contains("meshgate: envoy rejected its configuration (extension_configs)"),
        "the error quotes Envoy's NACK:\n{output}"
    );
    assert!(output.contains("libbad.so"), "and names the module:\n{output}");
    assert!(!up.ready_file.exists());
}
