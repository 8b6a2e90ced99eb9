//! Translation: snapshot tests of every resource (readable rendering, see [`render`]) and
//! table tests of the choices that matter.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{route::Action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors as CorsFilter, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
use envoy_types::pb::envoy::extensions::filters::http::filter_chain::v3::{
    FilterChainConfig, FilterChainConfigPerRoute,
};
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, UpstreamTlsContext};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use prost::{Message, Name};

use super::*;
use crate::test_support::{registry, FakeEnv};

/// The value `TEST_SECRET` has in [`FakeEnv`].
fn test_secret() -> String {
    FakeEnv::default().0["TEST_SECRET"].clone()
}

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";

/// A registry exercising every per-server key, loaded from a temp folder (for `ca_file`).
fn full_registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), CA_PEM).expect("ca");
    let yaml = r#"
listener: { address: 0.0.0.0, port: 10000 }
servers:
  - name: crm
    url: http://127.0.0.1:9101/mcp
    timeout: 300s
    credentials: { header: x-upstream-key, prefix: "Bearer ", value_env: TEST_SECRET }
    tools: [{ name: get_customer, description: Look a customer up }]
  - name: docs
    urls: [http://10.0.0.1:9102/mcp, http://docs-2.internal:9102/mcp]
    connect_timeout: 2s
    health_check: { type: http, interval: 3s, timeout: 1s }
    circuit_breakers: { max_requests: 100 }
  - name: remote
    url: https://mcp.example.com/v1/mcp
    tls: { ca_file: ca.pem }
    outlier_detection: { enabled: false }
    health_check: { type: none }
auth:
  jwt:
    - { issuer: https://hs.example.com, audiences: [meshgate], hs256_secret_env: TEST_SECRET }
  resource_metadata: https://gw.example.com/.well-known/oauth-protected-resource
  scopes: [mcp.tools]
policy:
  roles:
    reader: { allow: ["crm/get_*"] }
limits: { max_request_bytes: 100000 }
"#;
    let file = dir.path().join("registry.yaml");
    std::fs::write(&file, yaml).expect("registry");
    let registry = Registry::load_with(&file, &FakeEnv::default()).unwrap_or_else(|e| panic!("{e}"));
    (dir, registry)
}

const MINIMAL: &str = "listener: { port: 0 }\nservers:\n  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }\n";

fn local_wasm() -> TranslateOptions {
    TranslateOptions {
        wasm: WasmSource::Local { path: PathBuf::from("/opt/meshgate/meshgate_wasm.wasm") },
        native: NativeSource::Path(PathBuf::from("/opt/meshgate/libmeshgate.so")),
    }
}

fn remote_wasm() -> TranslateOptions {
    TranslateOptions {
        wasm: WasmSource::Remote(RemoteWasm {
            url: "http://meshgate:18001/wasm/meshgate.wasm".to_string(),
            host: "meshgate".to_string(),
            port: 18001,
            sha256: "ab".repeat(32),
            tls: None,
        }),
        native: NativeSource::SearchPath,
    }
}

// ------------------------------------------------------------------------------ rendering

/// A readable, stable text form of a resource for snapshots: prost's `Debug`, with
/// default-valued fields dropped (as proto3 drops them on the wire), every nested `Any`
/// decoded in place, the filter's JSON configuration pretty-printed, and the test secret
/// redacted.
fn render(any: &Any) -> String {
    let text = decode(any).unwrap_or_else(|| format!("<undecoded {}>", any.type_url));
    text.replace(&test_secret(), "[redacted test secret]")
}

fn debug_of<T: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Option<String> {
    T::decode(bytes).ok().map(|m| tidy(&format!("{m:#?}")))
}

fn decode(any: &Any) -> Option<String> {
    let bytes = any.value.as_slice();
    let url = any.type_url.as_str();
    if url == StringValue::type_url() {
        let value = StringValue::decode(bytes).ok()?.value;
        return Some(match serde_json::from_str::<serde_json::Value>(&value) {
            Ok(json) => format!("StringValue(json) {}", serde_json::to_string_pretty(&json).ok()?),
            Err(_) => format!("StringValue({value:?})"),
        });
    }
    macro_rules! table {
        ($($ty:ty),*) => {
            $(if url == <$ty>::type_url() { return debug_of::<$ty>(bytes); })*
        };
    }
    table!(
        Cluster,
        Listener,
        RouteConfiguration,
        TypedExtensionConfig,
        Secret,
        HttpConnectionManager,
        Router,
        Wasm,
        DynamicModuleFilter,
        FilterChainConfig,
        FilterChainConfigPerRoute,
        CredentialInjector,
        CorsFilter,
        CorsPolicy,
        ExpressionFilter,
        Generic,
        UpstreamTlsContext,
        RateLimitFilter
    );
    None
}

/// Drops default-valued lines and expands `Any { type_url, value: [bytes] }` blocks.
fn tidy(debug: &str) -> String {
    let lines: Vec<&str> = debug.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.ends_with("Any {") {
            if let Some((rendered, next)) = expand_any(&lines, i) {
                let head = trimmed.trim_end_matches("Any {");
                let mut inner = rendered.lines();
                let first = inner.next().unwrap_or_default();
                out.push(format!("{indent}{head}{first}"));
                out.extend(inner.map(|l| format!("{indent}{l}")));
                if let Some(last) = out.last_mut() {
                    // Keep the trailing comma of the replaced block.
                    if lines.get(next - 1).is_some_and(|l| l.trim() == "},") {
                        last.push(',');
                    }
                }
                i = next;
                continue;
            }
        }
        let is_default =
            ["None,", "[],", "{},", "\"\",", "false,", "0,"].iter().any(|d| trimmed.ends_with(&format!(": {d}")));
        if !is_default {
            out.push(line.to_string());
        }
        i += 1;
    }
    out.join("\n")
}

/// Parses the `Any` block starting at `lines[start]`; returns its rendering and the index
/// of the line after it.
fn expand_any(lines: &[&str], start: usize) -> Option<(String, usize)> {
    let type_url = lines.get(start + 1)?.trim().strip_prefix("type_url: \"")?.strip_suffix("\",")?;
    let mut bytes = Vec::new();
    let mut i = start + 2;
    let value = lines.get(i)?.trim();
    if value == "value: []," {
        i += 1;
    } else {
        if value != "value: [" {
            return None;
        }
        i += 1;
        while lines.get(i)?.trim() != "]," {
            bytes.push(lines[i].trim().trim_end_matches(',').parse::<u8>().ok()?);
            i += 1;
        }
        i += 1;
    }
    if !lines.get(i)?.trim().starts_with('}') {
        return None;
    }
    let any = Any { type_url: type_url.to_string(), value: bytes };
    Some((render(&any), i + 1))
}

fn render_all(resources: &Resources) -> String {
    let mut text = String::new();
    for (type_url, items) in resources.pack() {
        for item in items {
            text.push_str(&format!("# {} {}\n{}\n\n", type_url::short(type_url), item.name, render(&item.any)));
        }
    }
    text
}

// ------------------------------------------------------------------------------ snapshots

#[test]
fn snapshot_full_registry() {
    let (_dir, registry) = full_registry();
    let resources = translate(&registry, &local_wasm()).expect("translate");
    insta::assert_snapshot!("full_registry", render_all(&resources));
}

#[test]
fn snapshot_minimal_registry_with_remote_wasm() {
    let registry = registry(&format!("{MINIMAL}filter: {{ runtime: wasm }}\n"));
    let resources = translate(&registry, &remote_wasm()).expect("translate");
    insta::assert_snapshot!("minimal_remote_wasm", render_all(&resources));
}

/// Two servers, a global fixed window for everyone and a global bucket for one role, plus a
/// local rule (which must not appear in Envoy's configuration).
const GLOBAL_LIMITS: &str = r#"
listener: { port: 10000 }
servers:
  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }
  - { name: docs, url: 'http://127.0.0.1:9102/mcp' }
policy:
  roles:
    reader: { allow: ["*"] }
quotas:
  - { name: fleet-daily, quota: 1000/d, key: consumer, scope: global }
  - { name: crm-burst, match: { tools: ["crm/*"], roles: [reader] }, rate: 10/s, burst: 20, scope: global }
  - { name: local-only, rate: 5/s }
rate_limit_service:
  redis_url: redis://127.0.0.1:6379/0
  timeout: 250ms
"#;

#[test]
fn snapshot_global_limits() {
    let registry = registry(GLOBAL_LIMITS);
    let resources = translate(&registry, &local_wasm()).expect("translate");
    let mut text = String::new();
    for listener in &resources.listeners {
        text.push_str(&format!("# listeners {}\n{}\n\n", listener.name, render(&pack(listener))));
    }
    for routes in &resources.routes {
        text.push_str(&format!("# routes {}\n{}\n\n", routes.name, render(&pack(routes))));
    }
    insta::assert_snapshot!("global_limits", text);
}

const CORS: &str = r#"
listener:
  port: 10000
  allowed_origins: ["https://admin.example.com"]
  cors: { allow_origins: ["https://app.example.com", "http://localhost:*"], max_age: 1h }
servers:
  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }
  - name: docs
    url: http://127.0.0.1:9102/mcp
    cors: { allow_origins: ["https://*.docs.example.com"], allow_credentials: true, allow_private_network_access: true }
"#;

#[test]
fn snapshot_cors() {
    let resources = translate(&registry(CORS), &local_wasm()).expect("translate");
    let mut text = String::new();
    for listener in &resources.listeners {
        text.push_str(&format!("# listeners {}\n{}\n\n", listener.name, render(&pack(listener))));
    }
    for routes in &resources.routes {
        text.push_str(&format!("# routes {}\n{}\n\n", routes.name, render(&pack(routes))));
    }
    for config in &resources.extension_configs {
        text.push_str(&format!("# extension_configs {}\n{}\n\n", config.name, render(&pack(config))));
    }
    insta::assert_snapshot!("cors", text);
}

/// The HTTP filters of the one listener's connection manager, by name.
fn http_filters(r: &Resources) -> Vec<String> {
    let listener = &r.listeners[0];
    let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &listener.filter_chains[0].filters[0].config_type
    else {
        panic!("hcm")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
    hcm.http_filters.iter().map(|f| f.name.clone()).collect()
}

#[test]
fn cors_is_first_and_only_when_configured() {
    let with = translate(&registry(CORS), &local_wasm()).expect("translate");
    assert_eq!(
        http_filters(&with),
        [cors::CORS_FILTER_NAME, WASM_FILTER_NAME, CREDENTIALS_FILTER_NAME, "envoy.filters.http.router"],
        "CORS answers preflights before the Meshgate filter refuses OPTIONS"
    );
    let vhost = &with.routes[0].virtual_hosts[0];
    let listener_policy = CorsPolicy::decode(vhost.typed_per_filter_config[cors::CORS_FILTER_NAME].value.as_slice())
        .expect("listener policy");
    assert_eq!(listener_policy.allow_origin_string_match.len(), 2);
    assert_eq!(listener_policy.max_age, "3600");
    let docs = routes(&with).iter().find(|r| r.name == "docs").expect("docs route");
    let own = CorsPolicy::decode(docs.typed_per_filter_config[cors::CORS_FILTER_NAME].value.as_slice()).expect("own");
    assert_eq!(own.allow_credentials.map(|b| b.value), Some(true));
    let crm = routes(&with).iter().find(|r| r.name == "crm").expect("crm route");
    assert!(!crm.typed_per_filter_config.contains_key(cors::CORS_FILTER_NAME), "crm inherits the virtual host's");
    // The filter's Origin check accepts what the CORS policy of each route allows.
    let origins = &with_filter_config(&with)["origin_policy"];
    assert_eq!(origins["allowed_origins"], serde_json::json!(["https://admin.example.com"]));
    assert_eq!(origins["server_origins"]["crm"], serde_json::json!(["https://app.example.com", "http://localhost:*"]));
    assert_eq!(origins["server_origins"]["docs"], serde_json::json!(["https://*.docs.example.com"]));

    let without = translate(&registry(MINIMAL), &local_wasm()).expect("translate");
    assert!(!http_filters(&without).contains(&cors::CORS_FILTER_NAME.to_string()));
    assert!(without.routes[0].virtual_hosts[0].typed_per_filter_config.is_empty());
}

/// The filter configuration (JSON) inside the ECDS resource.
fn with_filter_config(r: &Resources) -> serde_json::Value {
    let any = r.extension_configs[0].typed_config.as_ref().expect("config");
    let configuration = if any.type_url == DynamicModuleFilter::type_url() {
        DynamicModuleFilter::decode(any.value.as_slice()).expect("native").filter_config.expect("filter_config")
    } else {
        Wasm::decode(any.value.as_slice()).expect("wasm").config.expect("plugin").configuration.expect("configuration")
    };
    let text = StringValue::decode(configuration.value.as_slice()).expect("string").value;
    serde_json::from_str(&text).expect("json")
}

#[test]
fn host_and_origin_defaults_follow_the_listener_address() {
    let loopback = with_filter_config(&translate(&registry(MINIMAL), &local_wasm()).expect("translate"));
    assert_eq!(
        loopback["origin_policy"]["allowed_hosts"],
        serde_json::json!(meshgate_core::origin::LOOPBACK_HOSTS),
        "a loopback listener accepts only loopback Host names"
    );
    assert_eq!(
        loopback["origin_policy"]["allowed_origins"],
        serde_json::json!(meshgate_core::origin::LOOPBACK_ORIGINS)
    );
    let open = MINIMAL.replace("listener: { port: 0 }", "listener: { address: 0.0.0.0, port: 0 }");
    let open = with_filter_config(&translate(&registry(&open), &local_wasm()).expect("translate"));
    assert!(open.get("origin_policy").is_none(), "any Host, no Origin: {open}");
    let named = MINIMAL.replace(
        "listener: { port: 0 }",
        "listener: { address: 0.0.0.0, port: 0, allowed_hosts: [mcp.example.com], allowed_origins: ['*'] }",
    );
    let named = with_filter_config(&translate(&registry(&named), &local_wasm()).expect("translate"));
    assert_eq!(named["origin_policy"]["allowed_hosts"], serde_json::json!(["mcp.example.com"]));
    assert_eq!(named["origin_policy"]["allowed_origins"], serde_json::json!(["*"]));
}

#[test]
fn a_failed_vm_is_reloaded_and_its_503_is_json_rpc() {
    let wasm_runtime = format!("{MINIMAL}filter: {{ runtime: wasm }}\n");
    let resources = translate(&registry(&wasm_runtime), &local_wasm()).expect("translate");
    let wasm = Wasm::decode(resources.extension_configs[0].typed_config.as_ref().expect("config").value.as_slice())
        .expect("wasm");
    let plugin = wasm.config.expect("plugin");
    assert_eq!(plugin.failure_policy, envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy::FailReload as i32);
    assert!(plugin.reload_config.is_some());
    let body: serde_json::Value = serde_json::from_str(&local_reply::wasm_failure_body()).expect("json");
    assert_eq!(
        (body["id"].clone(), body["error"]["code"].clone()),
        (serde_json::Value::Null, serde_json::json!(-32603))
    );
    let text = render_all(&resources);
    assert!(text.contains("response.code_details == 'wasm_fail_stream'"), "{text}");
}

#[test]
fn global_limits_are_wired_only_when_configured() {
    let with = translate(&registry(GLOBAL_LIMITS), &local_wasm()).expect("translate");
    let filters = |r: &Resources| -> Vec<String> {
        let listener = &r.listeners[0];
        let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
            &listener.filter_chains[0].filters[0].config_type
        else {
            panic!("hcm")
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
        hcm.http_filters.iter().map(|f| f.name.clone()).collect()
    };
    assert_eq!(
        filters(&with),
        [WASM_FILTER_NAME, ratelimit::RATELIMIT_FILTER_NAME, CREDENTIALS_FILTER_NAME, "envoy.filters.http.router"]
    );
    let Some(Action::Route(action)) = &routes(&with)[0].action else { panic!("route") };
    assert_eq!(action.rate_limits.len(), 2, "one per global rule, none for the local one");
    assert_eq!(routes(&with)[0].request_headers_to_remove, ["x-meshgate-rl-fleet-daily", "x-meshgate-rl-crm-burst"]);
    let without = translate(&registry(MINIMAL), &local_wasm()).expect("translate");
    assert_eq!(filters(&without).len(), 3);
    let Some(Action::Route(action)) = &routes(&without)[0].action else { panic!("route") };
    assert!(action.rate_limits.is_empty());
    assert!(routes(&without)[0].request_headers_to_remove.is_empty());
}

#[test]
fn editing_a_global_rule_keeps_the_listener() {
    let edited = GLOBAL_LIMITS.replace("1000/d", "2000/d").replace("10/s", "12/s");
    let a = translate(&registry(GLOBAL_LIMITS), &local_wasm()).expect("translate");
    let b = translate(&registry(&edited), &local_wasm()).expect("translate");
    assert_eq!(a.listeners, b.listeners);
    assert_eq!(a.routes, b.routes, "descriptors name rules, not their limits");
    assert_ne!(a.extension_configs, b.extension_configs);
}

#[test]
fn the_rls_error_body_is_json_rpc() {
    let body: serde_json::Value = serde_json::from_str(&ratelimit::rls_error_body()).expect("json");
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], serde_json::Value::Null);
    assert_eq!(body["error"]["code"], -32603);
}

// ------------------------------------------------------------------------------ properties

fn routes(resources: &Resources) -> &[envoy_types::pb::envoy::config::route::v3::Route] {
    &resources.routes[0].virtual_hosts[0].routes
}

#[test]
fn mcp_routes_never_retry_and_keep_streams_open() {
    let (_dir, registry) = full_registry();
    let resources = translate(&registry, &local_wasm()).expect("translate");
    let mut mcp_routes = 0;
    for route in routes(&resources) {
        let Some(Action::Route(action)) = &route.action else {
            continue;
        };
        mcp_routes += 1;
        assert!(action.retry_policy.is_none(), "{}", route.name);
        assert!(action.idle_timeout.is_some(), "{}", route.name);
    }
    assert_eq!(mcp_routes, 3);
}

#[test]
fn the_credential_value_is_only_in_its_secret() {
    let (_dir, registry) = full_registry();
    let resources = translate(&registry, &local_wasm()).expect("translate");
    let secret = test_secret();
    for (type_url, items) in resources.pack() {
        for item in items {
            let holds = item.any.value.windows(secret.len()).any(|w| w == secret.as_bytes());
            let expected = type_url == type_url::SECRET;
            assert_eq!(holds, expected, "{} {}", type_url::short(type_url), item.name);
        }
    }
    assert_eq!(resources.secrets.len(), 1);
    assert_eq!(resources.secrets[0].name, "meshgate-credential-crm");
    let debug = format!("{resources:?}");
    assert!(!debug.contains(&secret), "{debug}");
}

#[test]
fn protected_resource_metadata_follows_rfc_9728() {
    let (_dir, registry) = full_registry();
    let documents = route::protected_resource_documents(&registry);
    assert_eq!(
        documents.keys().collect::<Vec<_>>(),
        [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp/crm",
            "/.well-known/oauth-protected-resource/mcp/docs",
            "/.well-known/oauth-protected-resource/mcp/remote",
        ]
    );
    assert_eq!(
        route::protected_resource_metadata(&registry, &documents["/.well-known/oauth-protected-resource/mcp/crm"]),
        serde_json::json!({
            "resource": "https://gw.example.com/mcp/crm",
            "authorization_servers": ["https://hs.example.com"],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["mcp.tools"],
        })
    );
    // Without resource_metadata, no documents and no routes for them.
    let plain = registry_without_metadata();
    assert!(route::protected_resource_documents(&plain).is_empty());
    let resources = translate(&plain, &local_wasm()).expect("translate");
    assert_eq!(routes(&resources).len(), 1);
}

fn registry_without_metadata() -> Registry {
    registry(MINIMAL)
}

#[test]
fn a_custom_metadata_path_is_served_too() {
    let registry = registry(&format!(
        "{MINIMAL}auth:\n  resource_metadata: https://gw.example.com/.well-known/oauth-protected-resource/mcp/crm\n  anonymous: {{ roles: [] }}\n"
    ));
    let documents = route::protected_resource_documents(&registry);
    assert_eq!(documents.len(), 2);
    let registry = registry_with(
        "auth:\n  resource_metadata: https://gw.example.com/.well-known/meshgate\n  anonymous: { roles: [] }\n",
    );
    let documents = route::protected_resource_documents(&registry);
    assert_eq!(documents.get("/.well-known/meshgate").map(String::as_str), Some("https://gw.example.com"));
}

fn registry_with(extra: &str) -> Registry {
    registry(&format!("{MINIMAL}{extra}"))
}

#[test]
fn translation_is_deterministic() {
    let (_dir, registry) = full_registry();
    let a = translate(&registry, &local_wasm()).expect("translate").pack();
    let b = translate(&registry, &local_wasm()).expect("translate").pack();
    assert_eq!(a, b);
}

#[test]
fn a_policy_edit_changes_only_the_extension_config() {
    let a = registry_with("policy:\n  roles:\n    r: { allow: ['crm/a'] }\n");
    let b = registry_with("policy:\n  roles:\n    r: { allow: ['crm/b'] }\n");
    let a = translate(&a, &local_wasm()).expect("translate").pack();
    let b = translate(&b, &local_wasm()).expect("translate").pack();
    for ((type_url, a), (_, b)) in a.iter().zip(b.iter()) {
        let changed = a != b;
        assert_eq!(changed, *type_url == type_url::EXTENSION_CONFIG, "{}", type_url::short(type_url));
    }
}

#[test]
fn adding_a_server_keeps_the_listener() {
    let one = registry(MINIMAL);
    let two = registry(&format!(
        "{MINIMAL}  - {{ name: docs, url: 'http://127.0.0.1:9102/mcp', credentials: {{ value_env: TEST_SECRET }} }}\n"
    ));
    let one = translate(&one, &local_wasm()).expect("translate");
    let two = translate(&two, &local_wasm()).expect("translate");
    assert_eq!(one.listeners, two.listeners);
    assert_eq!(two.clusters.len(), 2);
    assert_eq!(two.secrets.len(), 1);
}

#[test]
fn hs256_secret_names_become_vm_environment_keys() {
    let registry = registry_with("auth:\n  jwt:\n    - { issuer: x, audiences: [y], hs256_secret_env: TEST_SECRET }\n");
    let config = filter::make_wasm_config(&registry, &local_wasm().wasm).expect("config");
    let text = render(&pack(&config));
    assert!(text.contains("\"TEST_SECRET\""), "{text}");
    assert!(!text.contains("[redacted test secret]"), "{text}");
}

#[test]
fn durations_render_for_envoy() {
    assert_eq!(envoy_duration(std::time::Duration::from_millis(250)), "0.250s");
    assert_eq!(envoy_duration(std::time::Duration::from_secs(300)), "300s");
    let d = proto_duration(std::time::Duration::from_millis(1500));
    assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
}

#[test]
fn a_token_exchange_gets_a_tls_cluster_whose_upstream_filter_injects_the_client_secret_from_sds() {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let registry = registry(
        r#"
listener: { port: 10000 }
servers:
  - name: crm
    url: http://127.0.0.1:9101/mcp
    credentials:
      exchange:
        token_endpoint: https://idp.example.com/oauth2/token
        client_auth: { client_id: gw, secret_env: TEST_SECRET }
        audience: crm
"#,
    );
    let resources = translate(&registry, &local_wasm()).expect("translate");
    let cluster = resources.clusters.iter().find(|c| c.name == "meshgate-token-crm").expect("token cluster");
    assert!(cluster.transport_socket.is_some(), "TLS to the token endpoint");
    let options = &cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let options = HttpProtocolOptions::decode(options.value.as_slice()).expect("options");
    let names: Vec<&str> = options.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["envoy.filters.http.credential_injector", "envoy.filters.http.upstream_codec"]);
    let Some(http_filter::ConfigType::TypedConfig(any)) = &options.http_filters[0].config_type else {
        panic!("typed config");
    };
    let injector = CredentialInjector::decode(any.value.as_slice()).expect("injector");
    assert!(injector.overwrite && !injector.allow_request_without_credential);
    let generic = injector.credential.and_then(|c| c.typed_config).expect("generic");
    let generic = Generic::decode(generic.value.as_slice()).expect("generic");
    assert_eq!(generic.credential.map(|c| c.name).as_deref(), Some("meshgate-token-client-crm"));
    assert_eq!((generic.header.as_str(), generic.header_value_prefix.as_str()), ("authorization", "Basic "));
    // The secret (base64 of id:secret) is only in its SDS secret; the filter config names the cluster.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gw:{}", test_secret()));
    for (type_url, items) in resources.pack() {
        for item in items {
            let holds = |needle: &str| item.any.value.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!holds(&test_secret()), "{} {}", type_url::short(type_url), item.name);
            assert_eq!(holds(&basic), type_url == type_url::SECRET, "{} {}", type_url::short(type_url), item.name);
        }
    }
    assert!(resources.secrets.iter().any(|s| s.name == "meshgate-token-client-crm"));
    let filter = &resources.extension_configs[0];
    let text = String::from_utf8_lossy(&filter.typed_config.as_ref().expect("config").value).to_string();
    assert!(text.contains("meshgate-token-crm") && text.contains("token_exchanges"));
}
