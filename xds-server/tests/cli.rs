//! The `meshgate` command line without Envoy: `validate`, `bootstrap`, and `up` failing
//! before it starts anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use support::{repo_root, run, stderr, stdout, write};

const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","e":"AQAB","n":"sWiYMKMkpoWmlI_vk_WDIzMtM1ONxXlpgBZQvpYLZIorc7G40AieEqkU0_U3xjSMmjtXKidsz3g-rfXA9-mL6iiSZtSfLloVODqIiyCShcqnfqSeJ6aORt9FBWEYWWctaxxgalz0HsblTLgVuH0Ipg-OoWmZ3p2g4k1FDhNp3HaCcjPV-YNP5ZU5CL3cntwVQOTDyWh2-kveGB-JAcXvRxG8MvxBITALKsidrzwfULCUAn8HFll-R2qAO8kwuhgu45LJmSlJjFMUa6FecOggak8HHGNtPwSvuXcePW_RvV5pgioAgX8rBM-hJoPfF79f5y9JQZq2ZJfGCayqtIQ1nQ"}]}"#;

const GOOD: &str = "\
listener: { address: 127.0.0.1, port: 10000 }
servers:
  - name: crm
    url: http://127.0.0.1:9101/mcp
    timeout: 300s
auth:
  jwt:
    - { issuer: https://idp.example.com, audiences: [meshgate], jwks_file: keys/jwks.json }
policy:
  roles:
    reader: { allow: [\"crm/get_*\"] }
";

fn good_registry(dir: &Path) -> String {
    write(dir, "keys/jwks.json", JWKS);
    write(dir, "registry.yaml", GOOD).display().to_string()
}

#[test]
fn validate_prints_a_summary_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let registry = good_registry(dir.path());
    let out = run(&["validate", "--registry", &registry]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&format!("{registry}: ok: 1 server (crm)")), "{text}");
}

#[test]
fn validate_prints_every_error_with_file_and_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(
        dir.path(),
        "registry.yaml",
        "\
listener: { port: 10000 }
servers:
  - { name: crm, url: 'ftp://127.0.0.1/' }
  - { name: crm, url: 'http://127.0.0.1:1/' }
policy:
  roles:
    admin: { allow: ['crm/[x]'] }
",
    );
    let out = run(&["validate", "-r", &registry.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let text = stderr(&out);
    let lines: Vec<&str> = text.lines().collect();
    let file = registry.display().to_string();
    assert_eq!(
        lines,
        [
            format!(
                "{file}:3: servers[0].url: unsupported scheme \"ftp\" in \"ftp://127.0.0.1/\": use http:// or https://"
            ),
            format!("{file}:4: servers[1].name: duplicate server name \"crm\" (first defined on line 3)"),
        ],
        "the glob error is the filter validator's: it reports once the rest is fixed"
    );
    // Fix those two: the filter's own validator speaks next, still with a line.
    std::fs::write(
        &registry,
        "listener: { port: 10000 }\nservers:\n  - { name: crm, url: 'http://127.0.0.1:1/' }\npolicy:\n  roles:\n    admin: { allow: ['crm/[x]'] }\n",
    )
    .unwrap();
    let out = run(&["validate", "-r", &file]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.starts_with(&format!("{file}:6: policy.roles.admin.allow[0]: "))
            && text.contains("unsupported glob syntax '['"),
        "{text}"
    );
}

#[test]
fn validate_unknown_keys_and_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(dir.path(), "r.yaml", "listener: { port: 1 }\nservers: []\nlimits:\n  max_body: 5\n");
    let out = run(&["validate", "-r", &registry.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.starts_with(&format!("{}:4: limits.max_body: unknown field `max_body`", registry.display())),
        "{text}"
    );

    let registry = write(dir.path(), "s.yaml", "listener: { port: 1 }\nservers: [\n");
    let out = run(&["validate", "-r", &registry.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with(&format!("{}:", registry.display())), "{}", stderr(&out));
}

#[test]
fn validate_a_missing_file() {
    let out = run(&["validate", "--registry", "/nonexistent/registry.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("/nonexistent/registry.yaml: cannot read registry: "), "{}", stderr(&out));
}

#[test]
fn validate_the_shipped_example() {
    let example = repo_root().join("examples/registry.yaml");
    if !example.exists() {
        eprintln!("skipping: {} is not there", example.display());
        return;
    }
    let out = run(&["validate", "-r", &example.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn bootstrap_prints_yaml_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let native = good_registry(dir.path());
    let registry = format!("{native}.wasm.yaml");
    std::fs::write(&registry, std::fs::read_to_string(&native).unwrap() + "filter: { runtime: wasm }\n").unwrap();
    let out = run(&["bootstrap", "-r", &registry, "--wasm", "filters/meshgate.wasm"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml: serde_json::Value = serde_saphyr::from_str(&stdout(&out)).expect("yaml");
    let out = run(&["bootstrap", "-r", &registry, "--wasm", "filters/meshgate.wasm", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(yaml, json);
    let listener = &json["static_resources"]["listeners"][0];
    let wasm = &listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
        ["vm_config"]["code"]["local"]["filename"];
    assert_eq!(wasm, "filters/meshgate.wasm", "a given path is kept as given");
    // The module does not exist: a warning, not an error (the bootstrap is still useful).
    assert!(stderr(&out).contains("does not exist yet"), "{}", stderr(&out));

    // The default build, native: the module by the path given.
    let out = run(&["bootstrap", "-r", &native, "--native-module", "lib/libmeshgate.so", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let filter = &json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0]["typed_config"];
    assert_eq!(filter["dynamic_module_config"]["module"]["local"]["filename"], "lib/libmeshgate.so");
    assert!(stderr(&out).contains("does not exist yet"), "{}", stderr(&out));
}

#[test]
fn bootstrap_refuses_an_invalid_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(dir.path(), "r.yaml", "listener: { port: 1 }\nservers: []\n");
    let out = run(&["bootstrap", "-r", &registry.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains(":2: servers: at least one server is required"), "{}", stderr(&out));
}

#[test]
fn up_refuses_an_invalid_registry_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(dir.path(), "r.yaml", "listener: { port: 1 }\nservers: []\npolcy: {}\n");
    let ready = dir.path().join("ready.json");
    let out = run(&[
        "up",
        "-r",
        &registry.display().to_string(),
        "--envoy",
        "/nonexistent/envoy",
        "--ready-file",
        &ready.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(":3: polcy: unknown field `polcy`"), "{}", stderr(&out));
    assert!(!ready.exists());
}

#[test]
fn up_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = good_registry(dir.path());
    let out = run(&["up", "-r", &registry, "--envoy", "/nonexistent/envoy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("envoy not found at /nonexistent/envoy (given by --envoy)"), "{}", stderr(&out));

    // A stand-in "envoy" so the module checks are reached; it is never started.
    let fake_envoy = write(dir.path(), "bin/envoy", "#!/bin/sh\necho 'envoy  version: abc/1.39.1/Clean/RELEASE'\n");
    std::fs::set_permissions(&fake_envoy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fake_envoy = fake_envoy.display().to_string();
    let up = |registry: &str, module_flag: &str, module: &str| {
        run(&["up", "-r", registry, "--envoy", &fake_envoy, module_flag, module])
    };
    let out = up(&registry, "--native-module", "/nonexistent/libmeshgate.so");
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("/nonexistent/libmeshgate.so") && text.contains("make build"), "{text}");

    // The native module is there, but this Envoy is not the one it was built for.
    let module = write(dir.path(), "libmeshgate.so", "\x7fELF");
    let out = up(&registry, "--native-module", &module.display().to_string());
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("is Envoy 1.39.1") && text.contains("built for Envoy 1.40"), "{text}");
    assert!(text.contains("runtime: wasm"), "says what to do: {text}");

    let wasm_registry = format!("{registry}.wasm.yaml");
    std::fs::write(&wasm_registry, std::fs::read_to_string(&registry).unwrap() + "filter: { runtime: wasm }\n")
        .unwrap();
    let out = up(&wasm_registry, "--wasm", "/nonexistent/meshgate.wasm");
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("/nonexistent/meshgate.wasm") && text.contains("make build"), "{text}");
}

/// `envoy/static-example.yaml` is `meshgate bootstrap` of `examples/registry.yaml`; keep it
/// current with `MESHGATE_BLESS=1 cargo test -p meshgate --test cli`.
#[test]
fn the_checked_in_static_example_is_current() {
    let root = repo_root();
    let example = root.join("examples/registry.yaml");
    if !example.exists() {
        eprintln!("skipping: {} is not there", example.display());
        return;
    }
    let out = support::meshgate()
        .current_dir(&root)
        .args([
            "bootstrap",
            "-r",
            "examples/registry.yaml",
            "--wasm",
            "target/wasm32-wasip1/release/meshgate_wasm.wasm",
            "--native-module",
            "target/release/libmeshgate.so",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let generated = format!(
        "# Generated by `meshgate bootstrap -r examples/registry.yaml --wasm target/wasm32-wasip1/release/meshgate_wasm.wasm \
         --native-module target/release/libmeshgate.so`\n\
         # from the repository root (run Envoy from there too: the module paths are relative).\n\
         # Do not edit: regenerate with `MESHGATE_BLESS=1 cargo test -p meshgate --test cli`.\n{}",
        stdout(&out)
    );
    let checked_in = root.join("envoy/static-example.yaml");
    if std::env::var_os("MESHGATE_BLESS").is_some() {
        std::fs::write(&checked_in, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == generated,
        "{} is out of date: regenerate it with `MESHGATE_BLESS=1 cargo test -p meshgate --test cli`",
        checked_in.display()
    );
}

const XDS_EXAMPLE_ARGS: [&str; 7] =
    ["bootstrap", "--xds-address", "meshgate:18000", "--node-id", "envoy-1", "--admin-port", "9901"];

/// `envoy/xds-bootstrap.yaml` (used by docker-compose.yml) is what `meshgate bootstrap
/// --xds-address meshgate:18000 --node-id envoy-1 --admin-port 9901` prints; keep it current
/// with `MESHGATE_BLESS=1 cargo test -p meshgate --test cli`.
#[test]
fn the_checked_in_xds_bootstrap_is_current() {
    let out = run(&XDS_EXAMPLE_ARGS);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let generated = format!(
        "# Generated by `meshgate {}`.\n\
         # An Envoy with this bootstrap gets everything else from meshgate over ADS.\n\
         # Do not edit: regenerate with `MESHGATE_BLESS=1 cargo test -p meshgate --test cli`.\n{}",
        XDS_EXAMPLE_ARGS.join(" "),
        stdout(&out)
    );
    let checked_in = repo_root().join("envoy/xds-bootstrap.yaml");
    if std::env::var_os("MESHGATE_BLESS").is_some() {
        std::fs::write(&checked_in, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == generated,
        "{} is out of date: regenerate it with `MESHGATE_BLESS=1 cargo test -p meshgate --test cli`",
        checked_in.display()
    );
}

#[test]
fn xds_bootstrap_points_at_the_control_plane_only() {
    let out = run(&[
        "bootstrap",
        "--xds-address",
        "127.0.0.1:18000",
        "--node-id",
        "edge-7",
        "--xds-api",
        "delta",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let b: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(b["node"]["id"], "edge-7");
    assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
    assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 9901);
    let clusters = b["static_resources"]["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1, "only the xDS cluster is static");
    assert_eq!(clusters[0]["type"], "STATIC");
    assert!(b["static_resources"].get("listeners").is_none());

    // The registry's admin port is the default when a registry is given.
    let dir = tempfile::tempdir().unwrap();
    let registry = good_registry(dir.path());
    std::fs::write(&registry, format!("{GOOD}admin: {{ port: 9555 }}\n")).unwrap();
    let out = run(&["bootstrap", "-r", &registry, "--xds-address", "cp.internal:18000", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let b: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 9555);
    assert_eq!(b["static_resources"]["clusters"][0]["type"], "LOGICAL_DNS");

    for bad in ["nohost", "h:0", "h:x", ":18000", "bad_host:1"] {
        let out = run(&["bootstrap", "--xds-address", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(stderr(&out).contains("--xds-address"), "{bad}: {}", stderr(&out));
    }
    let out = run(&["bootstrap"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--xds-address"), "{}", stderr(&out));
}

/// `meshgate bootstrap --static` on `registry` exits 1 with `message` on stderr.
fn assert_static_bootstrap_refuses(registry: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(dir.path(), "r.yaml", registry);
    let out = run(&["bootstrap", "--static", "-r", &registry.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
}

#[test]
fn static_bootstrap_refuses_keys_only_the_control_plane_renders() {
    assert_static_bootstrap_refuses(
        "listener: { port: 1 }\nservers:\n  - name: crm\n    urls: [http://127.0.0.1:1/, http://127.0.0.1:2/]\n",
        "server \"crm\" uses urls which only the control plane renders",
    );
}

#[test]
fn static_bootstrap_refuses_global_quotas() {
    assert_static_bootstrap_refuses(
        "listener: { port: 1 }\nservers:\n  - { name: crm, url: 'http://127.0.0.1:1/' }\n\
         quotas:\n  - { name: fleet, quota: 10/m, scope: global }\n\
         rate_limit_service: { redis_url: 'redis://127.0.0.1:6379' }\n",
        "quota \"fleet\" has scope: global, which needs meshgate's rate-limit service",
    );
}

#[test]
fn serve_refuses_an_invalid_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = write(dir.path(), "r.yaml", "listener: { port: 1 }\nservers: []\n");
    let out = run(&[
        "serve",
        "-r",
        &registry.display().to_string(),
        "--xds-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--wasm",
        "/opt/m.wasm",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(":2: servers: at least one server is required"), "{}", stderr(&out));
}

#[test]
fn the_compose_registry_is_valid() {
    // The folder docker-compose.yml mounts at /etc/meshgate holds everything the registry
    // reads (keys/jwks.json): it validates in place. tests/e2e/test_deploy.py checks it again
    // laid out from the compose file's own mounts.
    let registry = repo_root().join("envoy/compose/registry.yaml");
    let out = support::meshgate()
        .env("DEMO_DOCS_UPSTREAM_TOKEN", "demo-docs-upstream-token")
        .args(["validate", "-r"])
        .arg(&registry)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok: 2 servers (crm, docs)"), "{}", stdout(&out));
}

#[test]
fn a_non_loopback_envoy_admin_is_an_opt_in_that_warns() {
    let dir = tempfile::tempdir().unwrap();
    let registry = good_registry(dir.path());
    let out = run(&["validate", "-r", &registry]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    std::fs::write(&registry, format!("{GOOD}admin: {{ port: 9901, address: 0.0.0.0 }}\nstats: {{ port: 15090 }}\n"))
        .unwrap();
    let out = run(&["validate", "-r", &registry]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: admin.address 0.0.0.0 is not loopback"), "{}", stderr(&out));
    let out = run(&["bootstrap", "-r", &registry, "--xds-address", "cp.internal:18000", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: admin.address"), "{}", stderr(&out));
    let b: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(b["admin"]["address"]["socket_address"]["address"], "0.0.0.0");
    assert_eq!(b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"], 15090);
}

#[test]
fn serve_refuses_plaintext_off_loopback_without_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let registry = good_registry(dir.path());
    let out = run(&["serve", "-r", &registry, "--wasm", "/nonexistent.wasm", "--xds-listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--allow-plaintext"), "{}", stderr(&out));
    // Half a TLS configuration is a usage error.
    let out = run(&["serve", "-r", &registry, "--xds-tls-cert", "/c.pem"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
