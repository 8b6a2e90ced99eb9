use serde_json::Value;

use super::envoy_gateway::{self, EnvoyGatewayOptions};
use super::istio::{self, IstioOptions};
use super::*;
use crate::test_support::{registry, try_registry};
use crate::translate::RemoteWasm;

const REGISTRY: &str = "\
listener: { address: 0.0.0.0, port: 10000 }
servers:
  - name: crm
    url: http://crm:9101/mcp
    timeout: 300s
  - name: docs
    url: http://docs.tools.svc.cluster.local:9102/
auth:
  api_keys:
    - { consumer: c, sha256: '3f2a4fc5102d2e4887969eeae2f869f5e75546ba030a606da8a66efabf50ab5b', roles: [r] }
policy:
  roles:
    r: { allow: ['crm/*'] }
limits: { max_request_bytes: 2000000 }
";

fn istio_options() -> IstioOptions {
    IstioOptions {
        namespace: "istio-system".into(),
        name: "meshgate".into(),
        selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
        port: 443,
        target_port: 8443,
        hosts: vec!["*".into()],
        listener: istio::Listener::Tls { credential_name: "mcp-cert".into() },
        wasm: RemoteWasm {
            url: "http://meshgate.meshgate.svc.cluster.local:18001/wasm/meshgate.wasm".into(),
            host: "meshgate.meshgate.svc.cluster.local".into(),
            port: 18001,
            sha256: "ab".repeat(32),
            tls: None,
        },
        service_namespace: "mcp".into(),
    }
}

fn eg_options() -> EnvoyGatewayOptions {
    EnvoyGatewayOptions {
        namespace: "mcp".into(),
        name: "meshgate".into(),
        gateway_class: "eg".into(),
        port: 443,
        listener: envoy_gateway::Listener::Tls { secret: "mcp-cert".into() },
        module_image: "meshgate:dev".into(),
        envoy_image: "envoyproxy/envoy:v1.40-latest".into(),
        module_dir: "/usr/local/lib/meshgate".into(),
        service_namespace: "mcp".into(),
        secret_name: "meshgate-filter-secrets".into(),
    }
}

fn kind<'a>(resources: &'a [Value], kind: &str) -> &'a Value {
    resources.iter().find(|r| r["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn istio_envoy_filter_inserts_the_static_bootstraps_wasm_filter_before_the_router_fail_closed() {
    let registry = registry(REGISTRY);
    let resources = istio::render(&registry, &istio_options()).expect("render");
    let kinds: Vec<&str> = resources.iter().map(|r| r["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(kinds, ["Gateway", "VirtualService", "EnvoyFilter"]);
    let filter = kind(&resources, "EnvoyFilter");
    assert_eq!(filter["spec"]["workloadSelector"]["labels"]["istio"], "ingressgateway");
    let patches = filter["spec"]["configPatches"].as_array().expect("patches");
    let http = patches.iter().find(|p| p["applyTo"] == "HTTP_FILTER").expect("http filter patch");
    assert_eq!(http["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(http["match"]["listener"]["portNumber"], 8443);
    assert_eq!(http["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"], "envoy.filters.http.router");
    let config = &http["patch"]["value"]["typed_config"]["config"];
    // What WasmPlugin cannot express, and the fail-closed policy.
    assert_eq!(config["allow_on_headers_stop_iteration"], true);
    assert_eq!(config["failure_policy"], "FAIL_RELOAD");
    let remote = &config["vm_config"]["code"]["remote"];
    assert_eq!(remote["sha256"], "ab".repeat(32));
    assert_eq!(remote["http_uri"]["cluster"], crate::translate::WASM_SOURCE_CLUSTER);
    // The configuration is the registry's filter configuration, as ECDS sends it.
    let sent: Value = serde_json::from_str(config["configuration"]["value"].as_str().expect("string")).expect("json");
    assert_eq!(sent, serde_json::to_value(&registry.filter).expect("filter"));
    // Everything but the module's source is the static bootstrap's filter.
    let mut local =
        crate::bootstrap::static_resources::make_wasm_filter(&registry, std::path::Path::new("/x")).expect("filter");
    local["typed_config"]["config"]["vm_config"]["code"] = config["vm_config"]["code"].clone();
    assert_eq!(local["typed_config"], http["patch"]["value"]["typed_config"]);
    let cluster = patches.iter().find(|p| p["applyTo"] == "CLUSTER").expect("cluster patch");
    assert_eq!(
        cluster["patch"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"],
        18001
    );
    let listener = patches.iter().find(|p| p["applyTo"] == "LISTENER").expect("listener patch");
    assert!(listener["patch"]["value"]["per_connection_buffer_limit_bytes"].as_u64().expect("limit") > 2_000_000);
}

#[test]
fn istio_virtual_service_routes_exact_paths_without_retries() {
    let registry = registry(REGISTRY);
    let resources = istio::render(&registry, &istio_options()).expect("render");
    let routes = kind(&resources, "VirtualService")["spec"]["http"].as_array().expect("routes").clone();
    assert_eq!(routes[0]["match"][0]["uri"]["exact"], "/mcp/crm");
    assert_eq!(routes[0]["rewrite"]["uri"], "/mcp");
    assert_eq!(routes[0]["rewrite"]["authority"], "crm:9101");
    assert_eq!(routes[0]["route"][0]["destination"]["host"], "crm.mcp.svc.cluster.local");
    assert_eq!(routes[0]["retries"]["attempts"], 0);
    assert_eq!(routes[0]["timeout"], "300s");
    assert_eq!(routes[1]["route"][0]["destination"]["host"], "docs.tools.svc.cluster.local");
    let gateway = kind(&resources, "Gateway");
    assert_eq!(gateway["spec"]["servers"][0]["tls"]["credentialName"], "mcp-cert");
    let mut plaintext = istio_options();
    plaintext.listener = istio::Listener::Plaintext;
    assert!(istio::gateway(&plaintext)["spec"]["servers"][0].get("tls").is_none());
}

#[test]
fn keys_the_platforms_own_are_refused_not_dropped() {
    let with_credentials = registry(
        &REGISTRY.replace("    timeout: 300s\n", "    timeout: 300s\n    credentials: { value_env: TEST_SECRET }\n"),
    );
    let error = istio::render(&with_credentials, &istio_options()).expect_err("refused");
    assert!(error.to_string().contains("servers[crm] sets credentials"), "{error}");
    let error = envoy_gateway::render(&with_credentials, &eg_options()).expect_err("refused");
    assert!(error.to_string().contains("BackendTrafficPolicy"), "{error}");
    let external = registry(&REGISTRY.replace("http://crm:9101/mcp", "http://mcp.example.com:9101/mcp"));
    let error = istio::render(&external, &istio_options()).expect_err("refused");
    assert!(error.to_string().contains("\"mcp.example.com\""), "{error}");
    let ip = registry(&REGISTRY.replace("http://crm:9101/mcp", "http://10.0.0.1:9101/mcp"));
    assert!(matches!(envoy_gateway::render(&ip, &eg_options()), Err(RenderError::NotAService { .. })));
    let global = try_registry(&format!(
        "{REGISTRY}quotas:\n  - {{ name: g, quota: 5/m, scope: global }}\nrate_limit_service: {{ redis_url: 'redis://cache:6379' }}\n"
    ))
    .expect("valid");
    assert!(matches!(istio::render(&global, &istio_options()), Err(RenderError::GlobalQuota { .. })));
}

#[test]
fn envoy_gateway_allow_lists_the_module_the_policy_names_and_passes_the_filter_config() {
    let registry = registry(REGISTRY);
    let resources = envoy_gateway::render(&registry, &eg_options()).expect("render");
    let kinds: Vec<&str> = resources.iter().map(|r| r["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        kinds,
        ["EnvoyProxy", "Gateway", "HTTPRoute", "ReferenceGrant", "ClientTrafficPolicy", "EnvoyExtensionPolicy"]
    );
    let proxy = kind(&resources, "EnvoyProxy");
    let policy = kind(&resources, "EnvoyExtensionPolicy");
    let module = &policy["spec"]["dynamicModule"][0];
    assert_eq!(proxy["spec"]["dynamicModules"][0]["name"], module["name"]);
    assert_eq!(proxy["spec"]["dynamicModules"][0]["source"]["local"]["path"], "/usr/local/lib/meshgate/libmeshgate.so");
    assert_eq!(module["config"], serde_json::to_value(&registry.filter).expect("filter"));
    // Attached to the MCP route only: other routes of the Gateway are not governed by it.
    assert_eq!(policy["spec"]["targetRefs"][0]["kind"], "HTTPRoute");
    let deployment = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"];
    assert_eq!(deployment["initContainers"][0]["image"], "meshgate:dev");
    assert_eq!(deployment["container"]["volumeMounts"][0]["mountPath"], "/usr/local/lib/meshgate");
    let route = kind(&resources, "HTTPRoute");
    let rules = route["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules[0]["matches"][0]["path"], serde_json::json!({ "type": "Exact", "value": "/mcp/crm" }));
    assert_eq!(rules[0]["backendRefs"][0], serde_json::json!({ "name": "crm", "port": 9101 }));
    assert_eq!(rules[1]["backendRefs"][0]["namespace"], "tools");
    assert_eq!(rules[0]["timeouts"]["request"], "5m");
    let grant = kind(&resources, "ReferenceGrant");
    assert_eq!(grant["metadata"]["namespace"], "tools");
    assert_eq!(grant["spec"]["from"][0]["namespace"], "mcp");
}

#[test]
fn secret_env_names_reach_the_envoy_container_from_a_secret() {
    let with_hs256 = registry(&REGISTRY.replace(
        "auth:\n",
        "auth:\n  jwt:\n    - { issuer: https://idp.example, audiences: [m], hs256_secret_env: TEST_SECRET }\n",
    ));
    let proxy = envoy_gateway::envoy_proxy(&with_hs256, &eg_options());
    let env = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"][0];
    assert_eq!(env["name"], "TEST_SECRET");
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "meshgate-filter-secrets");
    // The value never appears in anything rendered.
    let all = envoy_gateway::render(&with_hs256, &eg_options()).expect("render");
    assert!(!serde_json::to_string(&all).expect("json").contains("s3cret"));
}

#[test]
fn service_names_and_yaml_documents() {
    let registry = registry(REGISTRY);
    assert_eq!(
        service_of(&registry.servers[0], "ns").expect("service"),
        ServiceRef { name: "crm".into(), namespace: "ns".into(), port: 9101 }
    );
    assert!(check_name("--name", "Bad_Name").is_err());
    assert!(check_name("--name", "meshgate").is_ok());
    let text = to_yaml_documents(&[serde_json::json!({ "a": 1 }), serde_json::json!({ "b": 2 })]).expect("yaml");
    assert_eq!(text.matches("---\n").count(), 2, "{text}");
}

#[test]
fn gateway_api_durations_have_no_decimals() {
    use std::time::Duration;
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_secs(300), "5m"),
        (Duration::from_millis(1500), "1s500ms"),
        (Duration::from_secs(3_661), "1h1m1s"),
        (Duration::from_millis(250), "250ms"),
    ];
    for (duration, text) in cases {
        assert_eq!(envoy_gateway::gateway_api_duration(duration), text);
    }
}

#[test]
fn keys_of_meshgate_s_own_listener_and_routes_are_refused_not_dropped() {
    assert!(check_renderable(&registry(REGISTRY), "istio", "h").is_ok());
    let with_virtual = registry(&format!("{REGISTRY}virtual_servers:\n  - {{ name: all, servers: [crm, docs] }}\n"));
    let err = check_renderable(&with_virtual, "istio", "h").expect_err("virtual servers need meshgate's routes");
    assert!(err.to_string().contains("virtual_servers"), "{err}");
    let with_stats = registry(&format!("{REGISTRY}admin: {{ port: 9901 }}\nstats: {{ port: 15090 }}\n"));
    let err = check_renderable(&with_stats, "envoy-gateway", "h").expect_err("stats is meshgate's listener");
    assert!(err.to_string().contains("stats"), "{err}");
}
