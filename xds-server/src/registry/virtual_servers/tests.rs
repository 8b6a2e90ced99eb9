//! `virtual_servers` in the registry: loading, and errors with file:line.

use std::path::Path;

use crate::registry::Registry;
use crate::test_support::FakeEnv;

const BASE: &str = "listener: { port: 10000 }
servers:
  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }
  - { name: docs, url: 'http://127.0.0.1:9102/mcp' }
";

fn load(extra: &str) -> Result<Registry, Vec<String>> {
    let text = format!("{BASE}{extra}");
    Registry::parse(&text, Path::new("reg.yaml"), &FakeEnv::default())
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

#[track_caller]
fn assert_error(extra: &str, starts: &str, needle: &str) {
    let errors = load(extra).err().unwrap_or_default();
    assert!(
        errors.iter().any(|e| e.starts_with(starts) && e.contains(needle)),
        "expected {starts:?} … {needle:?}, got {errors:#?}"
    );
}

#[test]
fn loads_virtual_servers_in_order() {
    let registry = load(
        "virtual_servers:
  - name: work
    description: both
    servers: [crm]
    tools: ['docs/search_*']
  - name: flat
    prefix: false
    tools: [docs/get_doc]
",
    )
    .unwrap();
    let names: Vec<&str> = registry.virtual_servers.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["work", "flat"]);
    assert_eq!(registry.virtual_servers[0].servers(), ["crm".to_string(), "docs".to_string()]);
    assert_eq!(registry.virtual_route_path("work"), "/mcp/work");
    assert_eq!(registry.filter.virtual_servers.len(), 2);
}

#[test]
fn collisions_name_both_selections_with_file_and_line() {
    assert_error(
        "virtual_servers:
  - name: flat
    prefix: false
    tools:
      - crm/search
      - docs/search
",
        "reg.yaml:10: virtual_servers[0].tools[1]: ",
        "collides with \"crm/search\" (reg.yaml:9, virtual_servers[0].tools[0])",
    );
}

#[test]
fn names_clash_and_references_are_checked_with_lines() {
    assert_error(
        "virtual_servers:\n  - name: crm\n    servers: [docs]\n",
        "reg.yaml:6: virtual_servers[0].name: ",
        "name of a server",
    );
    assert_error(
        "virtual_servers:\n  - name: Work\n    servers: [docs]\n",
        "reg.yaml:6: virtual_servers[0].name: ",
        "not a valid server name",
    );
    assert_error(
        "virtual_servers:\n  - name: work\n    servers: [nope]\n",
        "reg.yaml:7: virtual_servers[0].servers[0]: ",
        "no such server",
    );
    assert_error(
        "virtual_servers:\n  - name: work\n    tools: ['*/x']\n",
        "reg.yaml:7: virtual_servers[0].tools[0]: ",
        "not a glob",
    );
    assert_error(
        "virtual_servers:\n  - name: work\n    separator: '-'\n    servers: [crm]\n",
        "reg.yaml:7: virtual_servers[0].separator: ",
        "not a valid separator",
    );
    assert_error("virtual_servers:\n  - name: work\n    servers: [crm]\n    color: red\n", "reg.yaml:", "color");
}

#[test]
fn the_static_bootstrap_renders_virtual_routes() {
    let registry = load("virtual_servers:\n  - { name: work, servers: [crm] }\n").unwrap();
    let config = crate::bootstrap::static_resources::make_route_config(&registry);
    let routes = config["virtual_hosts"][0]["routes"].as_array().unwrap();
    let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["crm", "docs", "work/crm", "work/unrouted"]);
    assert_eq!(routes[2]["match"]["headers"][0]["string_match"]["exact"], "crm");
    assert_eq!(routes[2]["route"], routes[0]["route"]);
    assert_eq!(routes[3]["direct_response"]["status"], 500);
}

#[test]
fn resource_selections_load_route_and_are_checked_with_lines() {
    // A resource-only backing server gets its route on the virtual path.
    let registry =
        load("virtual_servers:\n  - name: work\n    tools: [crm/get_x]\n    resources: ['docs/docs://*']\n").unwrap();
    assert_eq!(registry.virtual_servers[0].servers(), ["crm".to_string(), "docs".to_string()]);
    assert_eq!(registry.virtual_servers[0].resource_server("docs://pages/1"), Ok("docs"));
    let config = crate::bootstrap::static_resources::make_route_config(&registry);
    let routes = config["virtual_hosts"][0]["routes"].as_array().unwrap();
    let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["crm", "docs", "work/crm", "work/docs", "work/unrouted"]);
    assert_error(
        "virtual_servers:\n  - name: work\n    resources:\n      - crm/shared://x\n      - docs/shared://*\n",
        "reg.yaml:9: virtual_servers[0].resources[1]: ",
        "also selected from server \"crm\"",
    );
    assert_error(
        "virtual_servers:\n  - name: work\n    resources: ['crm/crm://a/../*']\n",
        "reg.yaml:7: virtual_servers[0].resources[0]: ",
        "can never match a resource",
    );
}

#[test]
fn the_session_key_is_named_by_an_environment_variable_and_never_enters_the_config() {
    // TEST_SECRET holds 34 bytes.
    let registry =
        load("virtual_servers:\n  - { name: work, servers: [crm] }\nvirtual_session_key_env: TEST_SECRET\n").unwrap();
    assert_eq!(registry.filter.virtual_session_key_env.as_deref(), Some("TEST_SECRET"));
    assert!(registry.filter.secret_env_names().contains(&"TEST_SECRET".to_string()));
    let json = serde_json::to_string(&registry.filter).unwrap();
    assert!(!json.contains("s3cret"), "the key's value never enters the filter config");
    assert_error(
        "virtual_servers:\n  - { name: work, servers: [crm] }\nvirtual_session_key_env: NOPE\n",
        "reg.yaml:7: virtual_session_key_env: ",
        "NOPE is not set",
    );
    assert_error(
        "virtual_session_previous_key_env: TEST_SECRET\n",
        "reg.yaml:5: virtual_session_previous_key_env: ",
        "needs a current one",
    );
}
