//! A real `redis-server` for the tests that need one (the global rate-limit store, the
//! approval store): started on a free port in its own folder, stopped by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on a free port, killed (by PID) when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub fn redis_server_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("redis-server")).find(|p| p.is_file()))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    /// Starts one, or returns `None` (after saying why) when `redis-server` is missing.
    pub fn start() -> Option<Redis> {
        let Some(binary) = redis_server_binary() else {
            eprintln!("SKIPPED: redis-server is not installed (make setup installs it)");
            return None;
        };
        Some(Redis::start_on(&binary, free_port()))
    }

    pub fn start_on(binary: &Path, port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it (by PID) and waits until it has exited.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let binary = redis_server_binary().unwrap();
        let fresh = Redis::start_on(&binary, self.port);
        *self = fresh;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
