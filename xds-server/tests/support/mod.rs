//! Helpers shared by the CLI-level tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod redis;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Starts an in-process `meshgate serve` on free ports for `dir/registry.yaml` holding
/// `registry` (the wasm module path is never read by these tests).
pub async fn start_serve(dir: &Path, registry: &str) -> meshgate::serve::Running {
    use meshgate::serve::{StartOptions, WasmDelivery};
    write(dir, "registry.yaml", registry);
    meshgate::serve::start(&StartOptions {
        registry: dir.join("registry.yaml"),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        wasm: WasmDelivery::Local("/opt/meshgate.wasm".into()),
        native: Default::default(),
        security: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The `meshgate` binary under test.
pub fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

/// Runs `meshgate args...` to completion.
pub fn run(args: &[&str]) -> Output {
    meshgate().args(args).output().expect("run meshgate")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `text` to `dir/name` (creating folders) and returns the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, text).expect("write");
    path
}

/// The repository root (the workspace above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xds-server has a parent").to_path_buf()
}

/// Envoy as `meshgate up` would find it, or `None` with the reason printed (the test is
/// then skipped: these tests must not fail on machines without Envoy).
pub fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    match meshgate::locate::Search::current().envoy(None) {
        Ok(envoy) => Some(envoy),
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// The smallest module Envoy accepts as a proxy-wasm plugin: ABI 0.2.1, an allocator, and
/// `on_vm_start` / `on_configure` returning success. HTTP callbacks are absent, so every
/// request passes through. Lets bootstrap and launch tests run without `make build`.
pub fn minimal_proxy_wasm() -> Vec<u8> {
    fn leb128(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, items: &[Vec<u8>]) -> Vec<u8> {
        let mut body = leb128(items.len());
        for item in items {
            body.extend_from_slice(item);
        }
        let mut out = vec![id];
        out.extend(leb128(body.len()));
        out.extend(body);
        out
    }
    fn name(text: &str) -> Vec<u8> {
        let mut out = vec![u8::try_from(text.len()).expect("short name")];
        out.extend_from_slice(text.as_bytes());
        out
    }
    fn export(text: &str, kind: u8, index: u8) -> Vec<u8> {
        let mut out = name(text);
        out.extend([kind, index]);
        out
    }
    fn body(code: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(code.len() + 1).expect("small body"), 0x00];
        out.extend_from_slice(code);
        out
    }
    const I32: u8 = 0x7f;
    const END: u8 = 0x0b;
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 (i32)->i32, 1 (i32,i32)->i32, 2 (i32,i32)->(), 3 ()->().
    module.extend(section(
        1,
        &[vec![0x60, 1, I32, 1, I32], vec![0x60, 2, I32, I32, 1, I32], vec![0x60, 2, I32, I32, 0], vec![0x60, 0, 0]],
    ));
    // Functions: abi marker, allocate, context_create, return-one.
    module.extend(section(3, &[vec![3], vec![0], vec![2], vec![1]]));
    // One memory of two pages.
    module.extend(section(5, &[vec![0x00, 2]]));
    module.extend(section(
        7,
        &[
            export("memory", 2, 0),
            export("proxy_abi_version_0_2_1", 0, 0),
            export("proxy_on_memory_allocate", 0, 1),
            export("proxy_on_context_create", 0, 2),
            export("proxy_on_vm_start", 0, 3),
            export("proxy_on_configure", 0, 3),
        ],
    ));
    module.extend(section(
        10,
        &[
            body(&[END]),
            // i32.const 1024: every allocation gets the same scratch area; nothing is read.
            body(&[0x41, 0x80, 0x08, END]),
            body(&[END]),
            body(&[0x41, 0x01, END]),
        ],
    ));
    module
}
