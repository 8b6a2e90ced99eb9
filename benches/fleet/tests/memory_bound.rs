//! The memory bound, measured on the real binaries: 10,000 connect/disconnect cycles (each a
//! new node id that takes the whole configuration, ACKs it and goes) leave `meshgate
//! serve`'s RSS where it was after the first 1,000, within a tolerance, and its `/status`
//! keeps at most 256 disconnected nodes. An RSS comparison, not a timed test.
//!
//! Runs `meshgate-fleet churn` against the `meshgate` binary of the same build profile
//! (`cargo test --workspace` builds it; alone: `cargo build -p meshgate` first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn meshgate_binary() -> PathBuf {
    let fleet = PathBuf::from(env!("CARGO_BIN_EXE_meshgate-fleet"));
    fleet.with_file_name(format!("meshgate{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn ten_thousand_connect_cycles_keep_rss_flat() {
    let meshgate = meshgate_binary();
    assert!(
        meshgate.exists(),
        "{} is missing: build it with `cargo build -p meshgate` (same profile as this test)",
        meshgate.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate-fleet"))
        .args(["churn", "--cycles", "10000", "--warmup", "1000", "--tolerance-kib", "4096", "--servers", "10"])
        .arg("--meshgate")
        .arg(&meshgate)
        .output()
        .unwrap_or_else(|e| panic!("cannot run meshgate-fleet: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "churn failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("churn report is not JSON ({e}):\n{stdout}"));
    assert_eq!(report["failed_cycles"], 0, "{report}");
    assert_eq!(report["status_nodes"], 256, "{report}");
    let growth = report["growth_kib"].as_i64().unwrap_or(i64::MAX);
    assert!(growth <= 4096, "RSS grew by {growth} KiB: {report}");
    println!("{report}");
}
