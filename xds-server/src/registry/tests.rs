//! Registry loading: the documented example, and every error class with its line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::test_support::FakeEnv;

/// A real RSA-2048 public key (the private half was thrown away).
pub(crate) const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","e":"AQAB","n":"sWiYMKMkpoWmlI_vk_WDIzMtM1ONxXlpgBZQvpYLZIorc7G40AieEqkU0_U3xjSMmjtXKidsz3g-rfXA9-mL6iiSZtSfLloVODqIiyCShcqnfqSeJ6aORt9FBWEYWWctaxxgalz0HsblTLgVuH0Ipg-OoWmZ3p2g4k1FDhNp3HaCcjPV-YNP5ZU5CL3cntwVQOTDyWh2-kveGB-JAcXvRxG8MvxBITALKsidrzwfULCUAn8HFll-R2qAO8kwuhgu45LJmSlJjFMUa6FecOggak8HHGNtPwSvuXcePW_RvV5pgioAgX8rBM-hJoPfF79f5y9JQZq2ZJfGCayqtIQ1nQ"}]}"#;

/// SHA-256 of "ci-bot-key".
const KEY_SHA256: &str = "3f2a4fc5102d2e4887969eeae2f869f5e75546ba030a606da8a66efabf50ab5b";

const EXAMPLE: &str = r#"
listener: { address: 127.0.0.1, port: 10000 }
admin: { port: 9901 }
servers:
  - name: crm
    url: http://127.0.0.1:9101/mcp
    timeout: 300s
  - name: docs
    url: http://Docs.Internal:9102/mcp
auth:
  jwt:
    - issuer: https://idp.example.com
      audiences: [meshgate]
      jwks_file: keys/jwks.json
      leeway_seconds: 30
    - issuer: https://hs.example.com
      audiences: [meshgate]
      hs256_secret_env: TEST_SECRET
      consumer_claim: email
      roles_claim: groups
  api_keys:
    - { consumer: ci-bot, sha256: "3f2a4fc5102d2e4887969eeae2f869f5e75546ba030a606da8a66efabf50ab5b", roles: [reader] }
  anonymous: { consumer: anonymous, roles: [] }
  resource_metadata: https://gw.example.com/.well-known/oauth-protected-resource
  token_cache_entries: 4096
policy:
  roles:
    reader: { allow: ["crm/get_*", "crm/list_*"] }
    admin:  { allow: ["*"], deny: ["crm/delete_*"], resources: { allow: ["crm/*"] }, prompts: { allow: ["*"] } }
limits:
  max_request_bytes: 1048576
  max_response_bytes: 8388608
envoy:
  concurrency: 2
  log_level: warn
"#;

/// Writes `registry.yaml` (and `keys/jwks.json`) into a fresh folder and loads it.
struct Fixture {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl Fixture {
    fn new(yaml: &str) -> Fixture {
        Fixture::with_files(yaml, &[("keys/jwks.json", JWKS)])
    }

    fn with_files(yaml: &str, files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("registry.yaml");
        std::fs::write(&file, yaml).expect("write registry");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write file");
        }
        Fixture { _dir: dir, file }
    }

    fn load(&self) -> Result<Registry, LoadErrors> {
        Registry::load_with(&self.file, &FakeEnv::default())
    }

    fn errors(&self) -> Vec<String> {
        match self.load() {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Asserts that loading `yaml` fails with an error on the line marked `# <-`, at `path`,
/// mentioning `needle`.
#[track_caller]
fn assert_error(yaml: &str, path: &str, needle: &str) {
    let line = yaml.lines().position(|l| l.contains("# <-")).map(|i| i + 1).expect("mark the expected line with # <-");
    let fixture = Fixture::new(yaml);
    let errors = fixture.errors();
    let prefix = if path.is_empty() {
        format!("{}:{line}: ", fixture.file.display())
    } else {
        format!("{}:{line}: {path}: ", fixture.file.display())
    };
    assert!(
        errors.iter().any(|e| e.starts_with(&prefix) && e.contains(needle)),
        "expected an error starting with {prefix:?} containing {needle:?}, got:\n{}",
        errors.join("\n")
    );
}

const MINIMAL: &str = "listener: { port: 10000 }\nservers:\n  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }\n";

#[test]
fn loads_the_documented_example() {
    let fixture = Fixture::new(EXAMPLE);
    let registry = fixture.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(registry.listener, "127.0.0.1:10000".parse().expect("addr"));
    assert_eq!(registry.admin_port, 9901);
    assert_eq!(registry.source, fixture.file);

    let crm = &registry.servers[0];
    assert_eq!(crm.name, "crm");
    assert_eq!(crm.upstream.host, UpstreamHost::Ip("127.0.0.1".parse().expect("ip")));
    assert_eq!(crm.upstream.port, 9101);
    assert_eq!(crm.upstream.path, "/mcp");
    assert_eq!(crm.timeout, Duration::from_secs(300));
    let docs = &registry.servers[1];
    assert_eq!(docs.upstream.host, UpstreamHost::Dns("docs.internal".to_string()));
    assert_eq!(docs.upstream.authority(), "docs.internal:9102");
    assert_eq!(docs.timeout, Duration::ZERO);
    assert_eq!(registry.route_path(docs), "/mcp/docs");

    let filter = &registry.filter;
    assert_eq!(filter.servers, ["crm", "docs"]);
    assert_eq!(filter.route_prefix, "/mcp/");
    let jwks: serde_json::Value = serde_json::from_str(JWKS).expect("jwks");
    assert_eq!(filter.auth.jwt[0].jwks.as_ref(), Some(&jwks), "jwks inlined");
    assert_eq!(filter.auth.jwt[0].consumer_claim, "sub");
    assert_eq!(filter.auth.jwt[0].roles_claim, "roles");
    assert_eq!(filter.auth.jwt[0].leeway_seconds, Some(30));
    assert_eq!(filter.auth.jwt[1].hs256_secret_env.as_deref(), Some("TEST_SECRET"));
    assert_eq!(filter.auth.jwt[1].consumer_claim, "email");
    assert_eq!(filter.auth.jwt[1].roles_claim, "groups");
    assert_eq!(filter.auth.api_keys[0].sha256, KEY_SHA256);
    assert_eq!(filter.auth.token_cache_entries, Some(4096));
    assert_eq!(filter.policy.roles["admin"].deny, ["crm/delete_*"]);
    assert_eq!(filter.limits.max_response_bytes, Some(8_388_608));
    assert_eq!(filter.secret_env_names(), ["TEST_SECRET"]);
    let json = serde_json::to_string(filter).expect("json");
    assert!(!json.contains("s3cret"), "secret values never enter the filter config");

    assert_eq!(
        registry.envoy,
        EnvoySettings {
            concurrency: 2,
            log_level: LogLevel::Warn,
            system_ca_file: "/etc/ssl/certs/ca-certificates.crt".to_string(),
        }
    );
    let summary = registry.summary();
    assert!(
        summary.contains("ok: 2 servers (crm, docs), 2 jwt issuers, 1 api key, 2 roles, anonymous access on"),
        "{summary}"
    );
}

#[test]
fn defaults() {
    let registry = crate::test_support::registry(MINIMAL);
    assert_eq!(registry.listener, "127.0.0.1:10000".parse().expect("addr"));
    assert_eq!(registry.admin_port, 0);
    assert_eq!(registry.envoy, EnvoySettings::default());
    assert_eq!(registry.envoy.concurrency, 2);
    assert_eq!(registry.envoy.log_level.as_str(), "warn");
    assert!(registry.filter.auth.jwt.is_empty());
}

#[test]
fn yaml_errors_carry_the_parser_line() {
    assert_error("listener: { port: 10000 }\nservers:\n  - name: crm\n    url: [http://x # <-\n", "", "");
    assert_error("listener:\n  port: 10000\n  prot: 1 # <-\nservers: []\n", "listener.prot", "unknown field `prot`");
    assert_error(&format!("{MINIMAL}serverz: [] # <-\n"), "serverz", "unknown field `serverz`");
    assert_error(
        &format!("{MINIMAL}policy:\n  roles:\n    a: {{ alow: [x] }} # <-\n"),
        "policy.roles.a.alow",
        "unknown field `alow`",
    );
    assert_error("listener: { port: ten } # <-\nservers: []\n", "listener.port", "");
    assert_error("listener: { port: 1 }\nservers:\n  - name: crm # <-\n", "servers[0]", "missing url (or urls)");
    assert_error("listener: { port: 1 }\nservers: []\nservers: [] # <-\n", "", "duplicate mapping key: servers");
}

#[test]
fn empty_and_unreadable_files() {
    for text in ["  \n", "# nothing yet\n---\n"] {
        let fixture = Fixture::new(text);
        assert_eq!(fixture.errors(), [format!("{}:1: registry is empty", fixture.file.display())]);
    }
    assert_error(&format!("{MINIMAL}---\nlistener: {{ port: 2 }} # <-\n"), "", "multiple YAML documents detected");
    let missing = Path::new("/nonexistent/registry.yaml");
    let err = Registry::load_with(missing, &FakeEnv::default()).expect_err("missing");
    assert!(err.to_string().starts_with("/nonexistent/registry.yaml: cannot read registry:"), "{err}");
}

#[test]
fn listener_and_admin_errors() {
    let servers = "servers: [{ name: crm, url: 'http://127.0.0.1:1/' }]\n";
    assert_error(
        &format!("listener: {{ address: localhost, port: 1 }} # <-\n{servers}"),
        "listener.address",
        "\"localhost\" is not an IP address",
    );
    assert_error(&format!("listener:\n  port: 70000 # <-\n{servers}"), "listener.port", "70000 is not a port number");
    assert_error(
        &format!("listener: {{ port: 9901 }}\nadmin: {{ port: 9901 }} # <-\n{servers}"),
        "admin.port",
        "port 9901 is also the listener port",
    );
    // Port 0 twice is fine: the OS picks two different ports.
    let ok = format!("listener: {{ port: 0 }}\nadmin: {{ port: 0 }}\n{servers}");
    assert!(Fixture::new(&ok).errors().is_empty());
}

#[test]
fn server_errors() {
    assert_error("listener: { port: 1 }\nservers: [] # <-\n", "servers", "at least one server");
    assert_error(
        "listener: { port: 1 }\nservers:\n  - name: CRM # <-\n    url: http://127.0.0.1:1/\n",
        "servers[0].name",
        "invalid server name \"CRM\"",
    );
    assert_error(
        "listener: { port: 1 }\nservers:\n  - { name: crm, url: 'http://127.0.0.1:1/' }\n  - name: crm # <-\n    url: http://127.0.0.1:2/\n",
        "servers[1].name",
        "duplicate server name \"crm\" (first defined on line 3)",
    );
    let bad_urls = [
        ("ftp://example.com/mcp", "unsupported scheme \"ftp\""),
        ("127.0.0.1:9101/mcp", "invalid url"),
        ("http://127.0.0.1:9101/mcp?x=1", "query strings"),
        ("http://user:pw@127.0.0.1:9101/mcp", "credentials"),
        ("http://127.0.0.1:0/mcp", "port 0"),
        ("http://exa_mple.com/mcp", "bad host name"),
    ];
    for (url, needle) in bad_urls {
        assert_error(
            &format!("listener: {{ port: 1 }}\nservers:\n  - name: crm\n    url: '{url}' # <-\n"),
            "servers[0].url",
            needle,
        );
    }
    for (timeout, needle) in [
        ("300", "missing unit"),
        ("5x", "unknown unit"),
        ("s", "expected a number"),
        ("9999999h", "longer than a year"),
    ] {
        assert_error(
            &format!("listener: {{ port: 1 }}\nservers:\n  - name: crm\n    url: http://127.0.0.1:1/\n    timeout: '{timeout}' # <-\n"),
            "servers[0].timeout",
            needle,
        );
    }
}

#[test]
fn upstream_urls() {
    let ok = |url: &str| validate::parse_upstream(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let u = ok("http://[::1]:8080");
    assert_eq!(u.host, UpstreamHost::Ip("::1".parse().expect("ip")));
    assert_eq!(u.authority(), "[::1]:8080");
    assert_eq!(u.path, "/");
    let u = ok("HTTP://localhost/a/b");
    assert_eq!((u.port, u.path.as_str()), (80, "/a/b"));
    assert_eq!(u.to_string(), "http://localhost:80/a/b");
    let u = ok("https://MCP.example.com/mcp");
    assert_eq!(u.scheme, Scheme::Https);
    assert_eq!(u.to_string(), "https://mcp.example.com:443/mcp");
}

/// A CA certificate is public; its content does not matter to meshgate beyond the PEM marker.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn per_server_defaults() {
    let registry = crate::test_support::registry(MINIMAL);
    let crm = &registry.servers[0];
    assert!(crm.more_upstreams.is_empty());
    assert_eq!(crm.connect_timeout, Duration::from_secs(5));
    assert_eq!(crm.tls, None);
    assert_eq!(crm.health_check, HealthCheck::Tcp(HealthTiming::default()));
    assert_eq!(crm.outlier_detection, Some(OutlierDetection::default()));
    assert_eq!(crm.circuit_breakers, CircuitBreakers::default());
    assert_eq!(crm.credentials, None);
    assert!(crm.tools.is_empty());
    assert!(crm.control_plane_keys.is_empty());
}

#[test]
fn loads_every_per_server_key() {
    let yaml = r#"
listener: { port: 0 }
servers:
  - name: crm
    urls: [http://10.0.0.1:9101/mcp, http://crm-2.internal:9101/mcp]
    timeout: 300s
    connect_timeout: 2s
    health_check: { type: http, interval: 3s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 4 }
    outlier_detection: { consecutive_5xx: 7, consecutive_gateway_failure: 3, interval: 5s, base_ejection_time: 1m, max_ejection_percent: 100 }
    circuit_breakers: { max_connections: 10, max_pending_requests: 20, max_requests: 30 }
    credentials: { header: X-Upstream-Key, prefix: "Bearer ", value_env: TEST_SECRET }
    tools:
      - { name: get_customer, description: Look a customer up }
      - { name: list_customers }
  - name: docs
    url: https://Docs.Example.com/mcp
    tls: { ca_file: ca.pem }
    outlier_detection: { enabled: false }
    health_check: { type: none }
    credentials: { value_file: docs.token }
  - name: ip
    url: https://10.1.1.1:8443/
    tls: { sni: mcp.example.com }
auth:
  scopes: [mcp.tools, offline_access]
envoy: { system_ca_file: /etc/pki/tls/certs/ca-bundle.crt }
"#;
    let fixture = Fixture::with_files(yaml, &[("ca.pem", CA_PEM), ("docs.token", "docs-token-value\n")]);
    let registry = fixture.load().unwrap_or_else(|e| panic!("{e}"));
    let crm = &registry.servers[0];
    assert_eq!(crm.upstream.authority(), "10.0.0.1:9101");
    assert_eq!(crm.more_upstreams.len(), 1);
    assert_eq!(crm.more_upstreams[0].authority(), "crm-2.internal:9101");
    assert_eq!(crm.connect_timeout, Duration::from_secs(2));
    assert_eq!(
        crm.health_check,
        HealthCheck::Http(HealthTiming {
            interval: Duration::from_secs(3),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 4,
        })
    );
    assert_eq!(
        crm.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: 7,
            consecutive_gateway_failure: 3,
            interval: Duration::from_secs(5),
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 100,
        })
    );
    assert_eq!(
        crm.circuit_breakers,
        CircuitBreakers { max_connections: 10, max_pending_requests: 20, max_requests: 30 }
    );
    let credentials = crm.credentials.as_ref().expect("credentials");
    assert_eq!(credentials.header, "x-upstream-key");
    assert_eq!(credentials.prefix, "Bearer ");
    assert_eq!(credentials.source, CredentialSource::Env("TEST_SECRET".to_string()));
    assert_eq!(credentials.value.expose(), "s3cret-s3cret-s3cret-s3cret-s3cret");
    assert_eq!(crm.tools.len(), 2);
    assert_eq!(crm.tools[0].description.as_deref(), Some("Look a customer up"));
    assert_eq!(
        crm.control_plane_keys,
        ["urls", "connect_timeout", "health_check", "outlier_detection", "circuit_breakers", "credentials"]
    );

    let docs = &registry.servers[1];
    let tls = docs.tls.as_ref().expect("https has tls");
    assert_eq!(tls.sni.as_deref(), Some("docs.example.com"));
    assert_eq!(tls.verify, VerifyName::Dns("docs.example.com".to_string()));
    assert!(matches!(&tls.trust, Trust::CaFile { pem, .. } if pem == CA_PEM));
    assert_eq!(docs.outlier_detection, None);
    assert_eq!(docs.health_check, HealthCheck::None);
    let credentials = docs.credentials.as_ref().expect("credentials");
    assert_eq!(credentials.header, "authorization");
    assert_eq!(credentials.value.expose(), "docs-token-value", "newline dropped");

    let ip = &registry.servers[2];
    let tls = ip.tls.as_ref().expect("https has tls");
    assert_eq!(tls.sni.as_deref(), Some("mcp.example.com"));
    assert_eq!(tls.trust, Trust::System);

    assert_eq!(registry.scopes, ["mcp.tools", "offline_access"]);
    assert_eq!(registry.envoy.system_ca_file, "/etc/pki/tls/certs/ca-bundle.crt");
}

#[test]
fn secret_values_never_show_in_debug_output() {
    let fixture = Fixture::new(
        "listener: { port: 0 }\nservers:\n  - name: a\n    url: http://127.0.0.1:1/\n    credentials: { value_env: TEST_SECRET }\n",
    );
    let registry = fixture.load().unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{registry:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
}

#[test]
fn per_server_key_errors() {
    // A case without its own `# <-` mark is expected on the server's first line.
    let server = |extra: &str| {
        let mark = if extra.contains("# <-") { "" } else { " # <-" };
        format!("listener: {{ port: 1 }}\nservers:\n  - name: crm{mark}\n{extra}")
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "    url: http://127.0.0.1:1/\n    urls: [http://127.0.0.1:2/] # <-\n",
            "servers[0].urls",
            "exactly one of url and urls",
        ),
        ("    timeout: 1s\n", "servers[0]", "missing url"),
        ("    urls: [] # <-\n", "servers[0].urls", "urls is empty"),
        (
            "    urls:\n      - http://127.0.0.1:1/mcp\n      - http://127.0.0.1:2/other # <-\n",
            "servers[0].urls[1]",
            "in path",
        ),
        (
            "    urls:\n      - http://127.0.0.1:1/mcp\n      - https://127.0.0.1:2/mcp # <-\n",
            "servers[0].urls[1]",
            "in scheme",
        ),
        (
            "    urls:\n      - https://a.example.com/mcp\n      - https://b.example.com/mcp # <-\n",
            "servers[0].urls[1]",
            "share one host name",
        ),
        (
            "    url: http://127.0.0.1:1/\n    tls: { sni: x.example.com } # <-\n",
            "servers[0].tls",
            "only for https",
        ),
        (
            "    url: https://a.example.com/\n    tls:\n      ca_file: missing.pem # <-\n",
            "servers[0].tls.ca_file",
            "cannot read ca_file",
        ),
        (
            "    url: https://a.example.com/\n    tls:\n      sni: 'not a name' # <-\n",
            "servers[0].tls.sni",
            "invalid sni",
        ),
        (
            "    url: http://127.0.0.1:1/\n    connect_timeout: 0s # <-\n",
            "servers[0].connect_timeout",
            "longer than 0",
        ),
        (
            "    url: http://127.0.0.1:1/\n    health_check:\n      type: grpc # <-\n",
            "servers[0].health_check.type",
            "unknown health check type \"grpc\"",
        ),
        (
            "    url: http://127.0.0.1:1/\n    health_check:\n      unhealthy_threshold: 0 # <-\n",
            "servers[0].health_check.unhealthy_threshold",
            "0 is out of range (1-1000)",
        ),
        (
            "    url: http://127.0.0.1:1/\n    outlier_detection:\n      max_ejection_percent: 101 # <-\n",
            "servers[0].outlier_detection.max_ejection_percent",
            "101 is out of range (0-100)",
        ),
        (
            "    url: http://127.0.0.1:1/\n    circuit_breakers:\n      max_requests: 0 # <-\n",
            "servers[0].circuit_breakers.max_requests",
            "out of range",
        ),
        (
            "    url: http://127.0.0.1:1/\n    credentials: { value_env: NOPE_UNSET } # <-\n",
            "servers[0].credentials.value_env",
            "NOPE_UNSET is not set",
        ),
        (
            "    url: http://127.0.0.1:1/\n    credentials: { header: x-key } # <-\n",
            "servers[0].credentials",
            "exactly one of value_env and value_file",
        ),
        (
            "    url: http://127.0.0.1:1/\n    credentials:\n      value_file: missing.token # <-\n",
            "servers[0].credentials.value_file",
            "cannot read credential file",
        ),
        (
            "    url: http://127.0.0.1:1/\n    credentials:\n      header: 'x key' # <-\n      value_env: TEST_SECRET\n",
            "servers[0].credentials.header",
            "invalid header name",
        ),
        (
            "    url: http://127.0.0.1:1/\n    credentials:\n      header: Host # <-\n      value_env: TEST_SECRET\n",
            "servers[0].credentials.header",
            "cannot carry upstream credentials",
        ),
        (
            "    url: http://127.0.0.1:1/\n    tools:\n      - { name: a }\n      - { name: a } # <-\n",
            "servers[0].tools[1].name",
            "duplicate tool \"a\"",
        ),
        (
            "    url: http://127.0.0.1:1/\n    tools:\n      - { name: '' } # <-\n",
            "servers[0].tools[0].name",
            "must not be empty",
        ),
    ];
    for (extra, path, needle) in cases {
        assert_error(&server(extra), path, needle);
    }
    assert_error(
        "listener: { port: 1 }\nservers: [{ name: a, url: 'http://127.0.0.1:1/' }]\nauth:\n  scopes: ['a b'] # <-\n",
        "auth.scopes[0]",
        "invalid scope",
    );
    assert_error(
        "listener: { port: 1 }\nservers: [{ name: a, url: 'http://127.0.0.1:1/' }]\nenvoy:\n  system_ca_file: certs.pem # <-\n",
        "envoy.system_ca_file",
        "absolute path",
    );
}

#[test]
fn unusable_credential_values_are_refused_without_showing_them() {
    let fixture = Fixture::with_files(
        "listener: { port: 1 }\nservers:\n  - name: a\n    url: http://127.0.0.1:1/\n    credentials: { value_file: token }\n",
        &[("token", "line-one-SECRET\nline-two-SECRET\n")],
    );
    let errors = fixture.errors().join("\n");
    assert!(errors.contains("control characters"), "{errors}");
    assert!(!errors.contains("SECRET"), "{errors}");
    let fixture = Fixture::with_files(
        "listener: { port: 1 }\nservers:\n  - name: a\n    url: http://127.0.0.1:1/\n    credentials: { value_file: token }\n",
        &[("token", "\n")],
    );
    assert!(fixture.errors().join("\n").contains("it is empty"));
}

#[test]
fn durations() {
    let ok = |v: &str| validate::parse_duration(v).unwrap_or_else(|e| panic!("{v}: {e}"));
    assert_eq!(ok("0s"), Duration::ZERO);
    assert_eq!(ok("250ms"), Duration::from_millis(250));
    assert_eq!(ok("300s"), Duration::from_secs(300));
    assert_eq!(ok("5m"), Duration::from_secs(300));
    assert_eq!(ok("2h"), Duration::from_secs(7200));
}

fn with_auth(auth: &str) -> String {
    format!("{MINIMAL}policy:\n  roles:\n    reader: {{ allow: ['crm/get_*'] }}\nauth:\n{auth}")
}

#[test]
fn jwt_issuer_errors() {
    assert_error(
        &with_auth("  jwt:\n    - issuer: a # <-\n      audiences: [m]\n      jwks_file: keys/jwks.json\n      hs256_secret_env: TEST_SECRET\n"),
        "auth.jwt[0]",
        "sets both jwks_file and hs256_secret_env",
    );
    assert_error(&with_auth("  jwt:\n    - issuer: a # <-\n      audiences: [m]\n"), "auth.jwt[0]", "sets neither");
    assert_error(
        &with_auth("  jwt:\n    - issuer: a\n      audiences: [m]\n      jwks_file: keys/nope.json # <-\n"),
        "auth.jwt[0].jwks_file",
        "cannot read jwks file",
    );
    assert_error(
        &with_auth("  jwt:\n    - issuer: a\n      audiences: [m]\n      hs256_secret_env: NOT_SET_ANYWHERE # <-\n"),
        "auth.jwt[0].hs256_secret_env",
        "environment variable NOT_SET_ANYWHERE is not set",
    );
    assert_error(
        &with_auth("  jwt:\n    - issuer: a\n      audiences: [m]\n      hs256_secret_env: 'BAD-NAME' # <-\n"),
        "auth.jwt[0].hs256_secret_env",
        "invalid environment variable name",
    );
}

#[test]
fn jwks_files_must_hold_public_keys() {
    let yaml = with_auth("  jwt:\n    - issuer: a\n      audiences: [m]\n      jwks_file: keys/jwks.json # <-\n");
    let cases = [
        (r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB","d":"secret"}]}"#, "private member \"d\""),
        (r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, "private member \"k\""),
        ("{not json", "bad JSON"),
        (r#"{"keys":[]}"#, "\"keys\" is empty"),
        (r#"[1, 2]"#, "\"keys\" array"),
    ];
    let line = yaml.lines().position(|l| l.contains("# <-")).map(|i| i + 1).unwrap_or_default();
    for (jwks, needle) in cases {
        let fixture = Fixture::with_files(&yaml, &[("keys/jwks.json", jwks)]);
        let errors = fixture.errors();
        let prefix = format!("{}:{line}: auth.jwt[0].jwks_file: ", fixture.file.display());
        assert!(
            errors.iter().any(|e| e.starts_with(&prefix) && e.contains(needle)),
            "{jwks}: expected {prefix:?} + {needle:?}, got {errors:?}"
        );
    }
}

#[test]
fn jwks_file_resolves_against_the_registry_folder() {
    let fixture =
        Fixture::new(&with_auth("  jwt:\n    - issuer: a\n      audiences: [m]\n      jwks_file: keys/jwks.json\n"));
    // The test process's working directory has no keys/ folder: only the registry's does.
    let registry = fixture.load().unwrap_or_else(|e| panic!("{e}"));
    assert!(registry.filter.auth.jwt[0].jwks.is_some());
}

#[test]
fn roles_must_exist() {
    assert_error(
        &with_auth(&format!(
            "  api_keys:\n    - consumer: ci\n      sha256: '{KEY_SHA256}'\n      roles: [reader, writer] # <-\n"
        )),
        "auth.api_keys[0].roles[1]",
        "unknown role \"writer\"",
    );
    assert_error(
        &with_auth("  anonymous:\n    roles:\n      - ghost # <-\n"),
        "auth.anonymous.roles[0]",
        "unknown role \"ghost\"",
    );
}

#[test]
fn envoy_settings_errors() {
    assert_error(
        &format!("{MINIMAL}envoy:\n  concurrency: 0 # <-\n"),
        "envoy.concurrency",
        "concurrency 0 is out of range",
    );
    assert_error(
        &format!("{MINIMAL}envoy:\n  log_level: loud # <-\n"),
        "envoy.log_level",
        "unknown log level \"loud\"",
    );
}

#[test]
fn filter_validator_errors_point_at_the_registry_line() {
    assert_error(
        &format!(
            "{MINIMAL}policy:\n  roles:\n    admin:\n      allow: ['*']\n      deny:\n        - crm/delete_*\n        - 'crm/[a]' # <-\n"
        ),
        "policy.roles.admin.deny[1]",
        "unsupported glob syntax '['",
    );
}

#[test]
fn guardrails_reach_the_filter_and_their_errors_point_at_the_registry_line() {
    let yaml = "\
listener: { port: 10000 }
limits: { max_argument_bytes: 4096, max_in_flight_per_consumer: 8 }
servers:
  - name: crm
    url: 'http://127.0.0.1:9101/mcp'
    limits: { max_response_bytes: 65536 }
    tools:
      - { name: search, limits: { max_argument_bytes: 100 } }
      - { name: other }
  - { name: docs, url: 'http://127.0.0.1:9102/mcp' }
";
    let registry = Fixture::new(yaml).load().expect("valid");
    let limits = &registry.filter.server_limits;
    assert_eq!(limits.len(), 1, "only servers with limits: {limits:?}");
    assert_eq!(limits["crm"].max_response_bytes, Some(65_536));
    assert_eq!(limits["crm"].tools["search"].max_argument_bytes, Some(100));
    assert!(!limits["crm"].tools.contains_key("other"));
    assert_eq!(registry.filter.limits.max_in_flight_per_consumer, Some(8));

    const BLOCK: &str = "listener: { port: 10000 }\nservers:\n  - name: crm\n    url: 'http://127.0.0.1:9101/mcp'\n";

    assert_error(
        &format!("{BLOCK}    limits:\n      max_response_bytes: 0 # <-\n"),
        "servers[0].limits.max_response_bytes",
        "greater than 0",
    );
    assert_error(
        &format!("{BLOCK}    tools:\n      - name: search\n        limits:\n          max_argument_bytes: 0 # <-\n"),
        "servers[0].tools[0].limits.max_argument_bytes",
        "greater than 0",
    );
    assert_error(
        &format!("{MINIMAL}limits:\n  max_in_flight_per_consumer: 0 # <-\n"),
        "limits.max_in_flight_per_consumer",
        "greater than 0",
    );
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let yaml = "\
listener: { address: nowhere, port: 1 }
servers:
  - { name: Bad, url: 'http://127.0.0.1:1/' }
  - { name: ok, url: 'ftp://x/' }
envoy: { log_level: loud }
";
    let fixture = Fixture::new(yaml);
    let lines: Vec<String> = fixture
        .errors()
        .iter()
        .map(|e| e.trim_start_matches(&fixture.file.display().to_string()).to_string())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[0].starts_with(":1: listener.address: "), "{lines:#?}");
    assert!(lines[1].starts_with(":3: servers[0].name: "), "{lines:#?}");
    assert!(lines[2].starts_with(":4: servers[1].url: "), "{lines:#?}");
    assert!(lines[3].starts_with(":5: envoy.log_level: "), "{lines:#?}");
}

// ------------------------------------------------------------------ global rate limits

#[test]
fn global_quotas_load_with_their_rate_limit_service() {
    let yaml = format!(
        "{MINIMAL}quotas:\n  - {{ name: fleet, quota: 100/m, key: consumer, scope: global }}\n  - {{ name: mine, rate: 5/s }}\n\
         rate_limit_service:\n  redis_url: 'redis://:pw@127.0.0.1:6380/3'\n  failure_mode: allow\n  timeout: 250ms\n"
    );
    let registry = Fixture::new(&yaml).load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        registry.global_rules,
        [GlobalRule {
            name: "fleet".into(),
            limit: meshgate_core::quota::Limit::Window { limit: 100, period_secs: 60 }
        }]
    );
    let service = registry.rate_limit_service.expect("service");
    assert_eq!(service.redis.to_string(), "redis://127.0.0.1:6380/3");
    assert_eq!(service.failure_mode, FailureMode::Allow);
    assert_eq!(service.timeout, Duration::from_millis(250));
    assert!(!format!("{service:?}").contains("pw"));

    // Defaults: deny, 100 ms; the URL from meshgate's environment.
    let yaml = format!(
        "{MINIMAL}quotas:\n  - {{ quota: 1/d, scope: global }}\nrate_limit_service: {{ redis_url_env: REDIS_URL }}\n"
    );
    let fixture = Fixture::new(&yaml);
    let env = FakeEnv(std::collections::HashMap::from([("REDIS_URL".to_string(), "redis://cache:6379".to_string())]));
    let registry = Registry::load_with(&fixture.file, &env).unwrap_or_else(|e| panic!("{e}"));
    let service = registry.rate_limit_service.expect("service");
    assert_eq!((service.failure_mode, service.timeout), (FailureMode::Deny, defaults::RATE_LIMIT_TIMEOUT));
    assert_eq!(service.redis_source, "redis_url_env REDIS_URL");
    assert_eq!(registry.global_rules[0].name, "quota-0");

    // Local quotas need no service.
    let yaml = format!("{MINIMAL}quotas:\n  - {{ rate: 5/s }}\n");
    assert!(Fixture::new(&yaml).load().expect("local only").global_rules.is_empty());
}

#[test]
fn global_quota_errors() {
    assert_error(
        &format!("{MINIMAL}quotas:\n  - name: fleet\n    quota: 10/m\n    scope: global # <-\n"),
        "quotas[0].scope",
        "quota \"fleet\" has scope: global, which needs a top-level rate_limit_service",
    );
    let with_service = |service: &str| {
        format!("{MINIMAL}quotas:\n  - {{ quota: 10/m, scope: global }}\nrate_limit_service:\n{service}")
    };
    assert_error(
        &with_service("  redis_url: http://x:1 # <-\n"),
        "rate_limit_service.redis_url",
        "does not start with redis://",
    );
    assert_error(
        &with_service("  redis_url: redis://h:1\n  failure_mode: open # <-\n"),
        "rate_limit_service.failure_mode",
        "unknown failure_mode \"open\"",
    );
    assert_error(
        &with_service("  redis_url: redis://h:1\n  timeout: 0ms # <-\n"),
        "rate_limit_service.timeout",
        "longer than 0",
    );
    assert_error(
        &format!(
            "{MINIMAL}quotas:\n  - {{ quota: 10/m, scope: global }}\nrate_limit_service: # <-\n  failure_mode: deny\n"
        ),
        "rate_limit_service",
        "exactly one of redis_url and redis_url_env",
    );
    assert_error(
        &with_service("  redis_url_env: NOPE_NOT_SET # <-\n"),
        "rate_limit_service.redis_url_env",
        "NOPE_NOT_SET is not set",
    );
    assert_error(
        &with_service("  redis_url: redis://h:1\n  pool: 3 # <-\n"),
        "rate_limit_service.pool",
        "unknown field",
    );
}

#[test]
fn the_filter_writes_audit_fields_early_only_when_spans_read_them() {
    let plain = Fixture::new(MINIMAL).load().expect("valid");
    assert!(!plain.filter.observability.tracing, "no collector, no span tags to feed");
    let traced = Fixture::new(&format!("{MINIMAL}observability:\n  otel: {{ collector: '127.0.0.1:4317' }}\n"))
        .load()
        .expect("valid");
    assert!(traced.filter.observability.tracing, "span tags read the audit fields before on_log");
}

#[test]
fn the_filter_skips_audit_fields_only_when_no_log_or_tracer_reads_them() {
    let with = |observability: &str| {
        Fixture::new(&format!("{MINIMAL}observability:\n{observability}")).load().expect("valid").filter.observability
    };
    assert!(Fixture::new(MINIMAL).load().expect("valid").filter.observability.audit_fields, "default audit log");
    assert!(!with("  access_log: { enabled: false }\n").audit_fields, "nothing reads them");
    assert!(with("  access_log: { enabled: false }\n  otel: { collector: '127.0.0.1:4317' }\n").audit_fields);
    assert!(with("  access_log: { path: audit.log }\n").audit_fields);
}

#[test]
fn browser_keys_load_and_reach_the_filter() {
    let yaml = r#"
listener:
  address: 0.0.0.0
  port: 10000
  allowed_hosts: ["mcp.example.com", "*.mcp.internal:8443"]
  allowed_origins: ["https://admin.example.com"]
  cors: { allow_origins: ["https://app.example.com"], max_age: 1h }
servers:
  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }
  - name: docs
    url: http://127.0.0.1:9102/mcp
    cors: { allow_origins: ["http://localhost:*"], allow_credentials: true }
"#;
    let registry = Fixture::new(yaml).load().expect("loads");
    let listener = registry.cors.as_ref().expect("listener cors");
    assert_eq!(listener.max_age, Duration::from_secs(3600));
    assert_eq!(listener.origin_regexes, ["(?i)^https://app\\.example\\.com(:443)?$"]);
    assert!(!listener.allow_credentials);
    let docs = &registry.servers[1];
    assert!(docs.cors.as_ref().is_some_and(|c| c.allow_credentials));
    assert_eq!(docs.control_plane_keys, ["cors"]);
    assert_eq!(registry.cors_of(&registry.servers[0]), registry.cors.as_ref());
    assert_eq!(registry.cors_of(docs), docs.cors.as_ref());
    let origins = &registry.filter.origin_policy;
    assert_eq!(
        origins.allowed_hosts.as_deref(),
        Some(&["mcp.example.com".to_string(), "*.mcp.internal:8443".to_string()][..])
    );
    assert_eq!(origins.allowed_origins, ["https://admin.example.com"]);
    assert_eq!(origins.server_origins["crm"], ["https://app.example.com"]);
    assert_eq!(origins.server_origins["docs"], ["http://localhost:*"]);
}

#[test]
fn browser_key_errors_point_at_the_registry_line() {
    let servers = "servers: [{ name: crm, url: 'http://127.0.0.1:1/' }]\n";
    assert_error(
        &format!("listener:\n  port: 1\n  allowed_hosts: [ok.example.com, 'bad host'] # <-\n{servers}"),
        "listener.allowed_hosts[1]",
        "invalid host pattern: \"bad host\" is not a host name or IP address",
    );
    assert_error(
        &format!("listener:\n  port: 1\n  allowed_hosts: [] # <-\n{servers}"),
        "listener.allowed_hosts",
        "must not be empty",
    );
    assert_error(
        &format!("listener:\n  port: 1\n  allowed_origins: ['app.example.com'] # <-\n{servers}"),
        "listener.allowed_origins[0]",
        "is not scheme://host[:port]",
    );
    assert_error(
        &format!("listener:\n  port: 1\n  cors: {{ allow_origins: [] }} # <-\n{servers}"),
        "listener.cors.allow_origins",
        "at least one origin",
    );
    assert_error(
        &format!("listener:\n  port: 1\n  cors: {{ allow_origins: ['*'], allow_credentials: true }} # <-\n{servers}"),
        "listener.cors.allow_credentials",
        "any site could make credentialed calls",
    );
    assert_error(
        "listener: { port: 1 }\nservers:\n  - name: crm\n    url: 'http://127.0.0.1:1/'\n    cors: { allow_origins: ['https://ok.example.com', 'https://x.example.com/path'] } # <-\n",
        "servers[0].cors.allow_origins[1]",
        "may have no path",
    );
    assert_error(
        &format!(
            "listener:\n  port: 1\n  cors: {{ allow_origins: ['https://a.example.com'], max_age: 0s }} # <-\n{servers}"
        ),
        "listener.cors.max_age",
        "longer than 0",
    );
    assert_error(
        &format!("listener:\n  port: 1\n  cors: {{ allow_origin: ['https://a.example.com'] }} # <-\n{servers}"),
        "",
        "unknown field `allow_origin`",
    );
}

/// A registry copied away from the files it names: the error says which folder the relative
/// path resolved against, and what to do; the registry's own folder is what counts.
#[test]
fn a_moved_registry_names_the_folder_its_relative_paths_resolve_against() {
    let dir = tempfile::tempdir().expect("tempdir");
    let moved = dir.path().join("elsewhere");
    std::fs::create_dir_all(&moved).expect("mkdir");
    let text = format!("{MINIMAL}auth:\n  jwt:\n    - {{ issuer: a, audiences: [m], jwks_file: keys/jwks.json }}\n");
    std::fs::write(moved.join("registry.yaml"), &text).expect("write");
    let errors = Registry::load_with(&moved.join("registry.yaml"), &FakeEnv::default()).expect_err("keys/ not copied");
    let shown = errors.to_string();
    let folder = std::fs::canonicalize(&moved).expect("canonical");
    assert!(
        shown.contains(&format!("\"keys/jwks.json\" is relative to the registry's folder {}", folder.display())),
        "{shown}"
    );
    assert!(shown.contains("copy it along with the registry, or give an absolute path"), "{shown}");

    std::fs::create_dir_all(moved.join("keys")).expect("mkdir");
    std::fs::write(moved.join("keys/jwks.json"), JWKS).expect("write");
    Registry::load_with(&moved.join("registry.yaml"), &FakeEnv::default()).expect("resolved next to the registry");
}

/// Issue #19: `servers[].pinning` and `pinning.{lockfile,scan}`.
const PINNED: &str = "listener: { port: 10000 }\npinning: { lockfile: pins/lock.json, scan: true }\nservers:\n  - name: crm\n    url: 'http://127.0.0.1:9101/mcp'\n    pinning: enforce\n  - { name: docs, url: 'http://127.0.0.1:9102/mcp' }\n";

fn a_lockfile() -> String {
    let definition = r#"{"name":"get_customer","inputSchema":{"type":"object"}}"#;
    let strict = meshgate_core::jsonrpc::validate_strict(definition.as_bytes()).expect("json");
    let mut lock = lockfile::Lockfile::default();
    let pin = lockfile::pin_of(strict.root()).expect("pin");
    let mut entry = lockfile::ServerEntry::new();
    entry.insert("tools", [("get_customer".to_string(), pin)].into_iter().collect());
    lock.servers.insert("crm".to_string(), entry);
    lock.render()
}

#[test]
fn pinned_servers_get_their_lockfile_pins_in_the_filter_config() {
    let lock = a_lockfile();
    let fixture = Fixture::with_files(PINNED, &[("pins/lock.json", &lock)]);
    let registry = fixture.load().unwrap_or_else(|e| panic!("{e}"));
    let pins = &registry.filter.pinning["crm"];
    assert_eq!(pins.mode, meshgate_core::pinning::PinMode::Enforce);
    assert!(pins.scan);
    assert_eq!(pins.tools.as_ref().map(|t| t.len()), Some(1));
    assert!(pins.resources.is_none() && !registry.filter.pinning.contains_key("docs"));
    let pinning = registry.pinning.expect("pinning");
    assert_eq!(pinning.lockfile, fixture.file.parent().expect("dir").join("pins/lock.json"));
    // The lockfile is watched with the registry.
    let watched = Registry::referenced_files(PINNED, &fixture.file);
    assert!(watched.contains(&pinning.lockfile), "{watched:?}");
}

#[test]
fn pinning_errors_name_the_line() {
    let missing = Fixture::with_files(PINNED, &[]);
    let errors = missing.errors();
    assert!(errors.iter().any(|e| e.contains(":2: pinning.lockfile: ") && e.contains("meshgate pin")), "{errors:?}");
    let other = a_lockfile().replace("\"crm\"", "\"docs\"");
    let errors = Fixture::with_files(PINNED, &[("pins/lock.json", &other)]).errors();
    assert!(errors.iter().any(|e| e.contains(":6: servers[0].pinning: ") && e.contains("no entry")), "{errors:?}");
    let edited = a_lockfile().replace("\"object\"", "\"array\"");
    let errors = Fixture::with_files(PINNED, &[("pins/lock.json", &edited)]).errors();
    assert!(
        errors.iter().any(|e| e.contains("lock.json:") && e.contains("not the hash of its definition")),
        "{errors:?}"
    );
    assert_error(
        "listener: { port: 10000 }\nservers:\n  - name: crm\n    url: 'http://127.0.0.1:9101/mcp'\n    pinning: block # <-\n",
        "servers[0].pinning",
        "observe or enforce",
    );
    assert_error(
        "listener: { port: 10000 }\npinning: { lockfile: a, mode: x } # <-\nservers: []\n",
        "",
        "unknown field",
    );
}

#[test]
fn catalog_discovery_is_on_every_minute_unless_configured() {
    let registry = Fixture::new(MINIMAL).load().expect("loads");
    assert_eq!(registry.catalog, super::CatalogSettings { discover: true, interval: Duration::from_secs(60) });
    let yaml = format!("{MINIMAL}catalog: {{ discover: false, interval: 10m }}\n");
    let registry = Fixture::new(&yaml).load().expect("loads");
    assert_eq!(registry.catalog, super::CatalogSettings { discover: false, interval: Duration::from_secs(600) });
    assert_error(&format!("{MINIMAL}catalog:\n  interval: 1s # <-\n"), "catalog.interval", "use 5s to 24h");
    assert_error(&format!("{MINIMAL}catalog:\n  interval: 25h # <-\n"), "catalog.interval", "out of range");
    assert_error(
        &format!("{MINIMAL}catalog:\n  discovery: false # <-\n"),
        "catalog.discovery",
        "expected one of discover, interval",
    );
}

/// The registry file is bounded: one over the limit is refused before it is parsed.
#[test]
fn an_oversized_registry_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("registry.yaml");
    let mut text = String::from("listener: { port: 0 }\nservers:\n  - { name: a, url: 'http://127.0.0.1:1/' }\n");
    let padding = "# padding\n".repeat((crate::registry::MAX_REGISTRY_BYTES as usize / 10) + 1);
    std::fs::write(&file, &text).expect("write");
    assert!(Registry::load(&file).is_ok());
    text.push_str(&padding);
    std::fs::write(&file, &text).expect("write");
    let errors = Registry::load(&file).expect_err("too large").to_string();
    assert!(errors.contains("registry is larger than 16777216 bytes"), "{errors}");
}

/// Issue #17: `approvals[]` and `approval_page`.
#[test]
fn approvals_load_and_render_into_the_filter_config() {
    let yaml = format!(
        "{MINIMAL}policy: {{ roles: {{ ops: {{}} }} }}\napprovals:\n  - name: destructive\n    match: {{ tools: ['crm/delete_*'] }}\n    approvers: {{ roles: [ops] }}\n    reuse: ttl\napproval_page: {{ url: 'https://approvals.example.com/approvals' }}\n"
    );
    let registry = Fixture::new(&yaml).load().unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(registry.approval_page_url.as_deref(), Some("https://approvals.example.com/approvals"));
    assert_eq!(registry.filter.approvals.len(), 1);
    let service = registry.filter.approval_service.as_ref().expect("the check's cluster is set");
    assert_eq!(service.cluster, crate::bootstrap::XDS_CLUSTER);
    // Without rules the filter gets no service (no callout can ever start).
    assert!(Fixture::new(MINIMAL).load().unwrap().filter.approval_service.is_none());
}

#[test]
fn approval_errors_carry_file_and_line() {
    let rule = |body: &str| {
        format!("{MINIMAL}policy: {{ roles: {{ ops: {{}} }} }}\napprovals:\n  - name: destructive\n{body}")
    };
    assert_error(&rule("    approvers: { roles: [ops] }\n    ttl: 2d # <-\n"), "approvals[0].ttl", "N(s|m|h)");
    assert_error(
        &rule("    match: { tools: ['nope/delete_*'] } # <-\n    approvers: { roles: [ops] }\n"),
        "approvals[0].match.tools[0]",
        "unknown server \"nope\"",
    );
    assert_error(&rule("    approvers: { roles: [] } # <-\n"), "approvals[0].approvers.roles", "at least one role");
    assert_error(&rule("    approvers: { roles: [ops] }\n    reuse: twice # <-\n"), "", "twice");
    assert_error(
        &rule("    approvers:\n      roles: [ops, opps] # <-\n"),
        "approvals[0].approvers.roles[1]",
        "not a role of the policy",
    );
    assert_error(
        &format!("{MINIMAL}approval_page: {{ url: 'ftp://x/approvals' }} # <-\n"),
        "approval_page.url",
        "not an absolute http(s) URL",
    );
}

const EXCHANGE: &str = r#"
listener: { port: 10000 }
servers:
  - name: crm
    url: https://crm.internal:8443/mcp
    credentials:
      exchange:
        token_endpoint: https://idp.example.com/oauth2/token
        client_auth: { client_id: "meshgate gw", secret_env: TEST_SECRET }
        audience: crm
        resource: ["https://crm.internal:8443/mcp"]
        scope: crm.read crm.write
        subject_token_type: jwt
        timeout: 1500ms
        cache_entries: 64
"#;

#[test]
fn a_token_exchange_loads_with_its_defaults_and_the_filter_gets_no_secret() {
    let registry = try_registry_file(EXCHANGE);
    let crm = &registry.servers[0];
    assert_eq!(crm.credentials, None);
    let x = crm.exchange.as_ref().expect("exchange");
    assert_eq!(x.endpoint.authority(), "idp.example.com:443");
    assert_eq!(x.endpoint.path, "/oauth2/token");
    assert!(x.tls.is_some(), "https: TLS to the token endpoint");
    assert_eq!(x.subject_token_type, meshgate_core::upstream_token::TOKEN_TYPE_JWT);
    assert_eq!(x.timeout, Duration::from_millis(1500));
    assert_eq!(x.refresh_skew, defaults::EXCHANGE_REFRESH_SKEW);
    assert_eq!(x.no_subject_token, meshgate_core::upstream_token::NoSubjectToken::Refuse);
    // RFC 6749 §2.3.1: id and secret form-encoded, then base64.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.decode(x.basic_credential()).expect("base64");
    assert_eq!(String::from_utf8(basic).expect("utf-8"), "meshgate+gw:s3cret-s3cret-s3cret-s3cret-s3cret");
    let filter = serde_json::to_string(&registry.filter).expect("json");
    assert!(filter.contains("\"token_exchanges\"") && filter.contains("meshgate-token-crm"));
    assert!(!filter.contains("s3cret"), "the client secret never enters the filter configuration");
    assert!(crm.control_plane_keys.contains(&"credentials"), "the static bootstrap refuses it");
}

fn try_registry_file(yaml: &str) -> Registry {
    Fixture::new(yaml)
        .load()
        .unwrap_or_else(|e| panic!("{}", e.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
}

#[test]
fn token_exchange_mistakes_are_refused_at_their_line() {
    let base = "listener: { port: 1 }\nservers:\n  - name: a\n    url: http://127.0.0.1:1/\n    credentials:\n";
    let client = "        client_auth: { client_id: gw, secret_env: TEST_SECRET }\n";
    let endpoint = "        token_endpoint: https://idp.example.com/token\n";
    let cases = [
        (
            format!("      exchange:\n        token_endpoint: http://idp.example.com/token # <-\n{client}"),
            "servers[0].credentials.exchange.token_endpoint",
            "must be https://",
        ),
        (
            format!("      exchange:\n{endpoint}        client_auth: {{ method: private_key_jwt, client_id: gw, secret_env: TEST_SECRET }} # <-\n"),
            "servers[0].credentials.exchange.client_auth.method",
            "private_key_jwt is not supported",
        ),
        (
            format!("      exchange:\n{endpoint}        client_auth: {{ method: client_secret_post, client_id: gw, secret_env: TEST_SECRET }} # <-\n"),
            "servers[0].credentials.exchange.client_auth.method",
            "client_secret_post is not supported",
        ),
        (
            format!("      exchange:\n{endpoint}        client_auth: {{ client_id: gw, secret_env: NOPE_UNSET }} # <-\n"),
            "servers[0].credentials.exchange.client_auth.secret_env",
            "NOPE_UNSET is not set",
        ),
        (
            format!("      exchange:\n{endpoint}{client}        actor_token: x # <-\n"),
            "servers[0].credentials.exchange.actor_token",
            "actor_token is not supported",
        ),
        (
            format!("      exchange:\n{endpoint}{client}        timeout: 31s # <-\n"),
            "servers[0].credentials.exchange.timeout",
            "at most 30s",
        ),
        (
            format!("      exchange:\n{endpoint}{client}        resource: [relative/path] # <-\n"),
            "servers[0].credentials.exchange.resource",
            "absolute URI",
        ),
        (
            format!("      exchange:\n{endpoint}{client}        scope: 'a  b' # <-\n"),
            "servers[0].credentials.exchange.scope",
            "scope tokens",
        ),
        (
            format!("      exchange:\n{endpoint}{client}        subject_token_type: saml # <-\n"),
            "servers[0].credentials.exchange.subject_token_type",
            "use access_token, jwt or id_token",
        ),
        (
            format!("      exchange:\n{endpoint}{client}        api_key_consumers: static # <-\n"),
            "servers[0].credentials.exchange.api_key_consumers",
            "needs the static credential",
        ),
        (
            format!("      value_env: TEST_SECRET # <-\n      exchange:\n{endpoint}{client}"),
            "servers[0].credentials.value_env",
            "only with api_key_consumers: static",
        ),
    ];
    for (extra, path, needle) in cases {
        assert_error(&format!("{base}{extra}"), path, needle);
    }
    // http:// is fine on loopback (tests, a local IdP).
    let local = format!("{base}      exchange:\n        token_endpoint: http://127.0.0.1:9/token\n{client}");
    assert!(Fixture::new(&local).load().is_ok());
}

#[test]
fn token_exchange_files_are_watched() {
    let yaml = "listener: { port: 1 }\nservers:\n  - name: a\n    url: http://127.0.0.1:1/\n    credentials:\n      exchange:\n        token_endpoint: https://idp.example.com/token\n        tls: { ca_file: idp-ca.pem }\n        client_auth: { client_id: gw, secret_file: idp.secret }\n";
    let watched = Registry::referenced_files(yaml, Path::new("/etc/meshgate/registry.yaml"));
    assert!(watched.contains(&PathBuf::from("/etc/meshgate/idp.secret")), "{watched:?}");
    assert!(watched.contains(&PathBuf::from("/etc/meshgate/idp-ca.pem")), "{watched:?}");
}
