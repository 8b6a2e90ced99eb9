//! RDS: the routes of virtual servers (`virtual_servers`).
//!
//! A virtual server is served at `/mcp/<name>`. The filter reads each request, resolves the
//! name it calls to a backing server and names that server in
//! [`TARGET_HEADER`](meshgate_core::virtual_server::TARGET_HEADER), then makes Envoy select
//! the route again. So the path carries one route per backing server, matching the path
//! **and** that header, each exactly the server's own route (cluster, path and `Host`
//! rewrite, timeouts, credential injection, global rate-limit descriptors): Envoy's router,
//! pooling and load balancing carry every call as they do on `/mcp/<server>`. The header is
//! removed before forwarding.
//!
//! Security: the header is only ever the filter's. The filter removes every `x-meshgate-*`
//! header a client sends before it decides, and refuses (locally) whatever it does not
//! route, so no client can pick a backend by sending the header itself. Should a request
//! ever reach the router on a virtual path without the filter's header, the last route
//! answers it with a JSON-RPC error instead of forwarding it anywhere.
//!
//! A backing server's own CORS policy is not copied onto its virtual route: the CORS filter
//! runs before the filter decides, on the route a client's headers selected; the virtual
//! path keeps the listener's policy only.

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_match::PathSpecifier, DirectResponseAction,
    HeaderMatcher, Route, RouteMatch,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use meshgate_core::jsonrpc::code;
use meshgate_core::virtual_server::{VirtualServer, TARGET_HEADER};
use serde_json::json;

use super::cors::CORS_FILTER_NAME;
use super::route::make_route;
use crate::registry::Registry;

/// Every virtual server's routes, in registry order.
pub fn make_virtual_routes(registry: &Registry) -> Vec<Route> {
    registry.virtual_servers.iter().flat_map(|v| make_routes_of(registry, v)).collect()
}

/// One route per backing server (matching [`TARGET_HEADER`]), then the refusal.
fn make_routes_of(registry: &Registry, virtual_server: &VirtualServer) -> Vec<Route> {
    let path = registry.virtual_route_path(&virtual_server.name);
    let mut routes: Vec<Route> = virtual_server
        .servers()
        .iter()
        .filter_map(|name| registry.server(name))
        .map(|server| {
            let mut route = make_route(registry, server);
            route.name = format!("{}/{}", virtual_server.name, server.name);
            route.r#match = Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Path(path.clone())),
                headers: vec![HeaderMatcher {
                    name: TARGET_HEADER.to_string(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(server.name.clone())),
                        ignore_case: false,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            });
            route.request_headers_to_remove.push(TARGET_HEADER.to_string());
            route.typed_per_filter_config.remove(CORS_FILTER_NAME);
            route
        })
        .collect();
    routes.push(unrouted(&virtual_server.name, path));
    routes
}

/// The virtual path without the filter's routing decision: never forwarded.
fn unrouted(name: &str, path: String) -> Route {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": code::INTERNAL_ERROR,
            "message": format!("virtual server \"{name}\": the gateway did not route this request"),
        },
    })
    .to_string();
    Route {
        name: format!("{name}/unrouted"),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Path(path)), ..Default::default() }),
        action: Some(Action::DirectResponse(DirectResponseAction {
            status: 500,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(body)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        response_headers_to_add: vec![super::route::overwrite_header("content-type", "application/json")],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;

    use super::*;
    use crate::test_support::registry;
    use crate::translate::route::make_route_config;

    const YAML: &str = "listener: { port: 10000, cors: { allow_origins: ['https://a.example.com'] } }
servers:
  - { name: crm, url: 'http://127.0.0.1:9101/rpc', credentials: { value_env: CRM_TOKEN } }
  - { name: docs, url: 'http://127.0.0.1:9102/mcp', cors: { allow_origins: ['https://b.example.com'] } }
virtual_servers:
  - { name: work, servers: [crm], tools: ['docs/search_*'] }
";

    #[test]
    fn one_route_per_backing_server_then_the_refusal() {
        let mut env = crate::test_support::FakeEnv::default();
        env.0.insert("CRM_TOKEN".into(), "t".into());
        let registry = Registry::parse(YAML, std::path::Path::new("r.yaml"), &env).unwrap();
        let config = make_route_config(&registry);
        let routes = &config.virtual_hosts[0].routes;
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["crm", "docs", "work/crm", "work/docs", "work/unrouted"]);
        for (route, server) in routes[2..4].iter().zip(["crm", "docs"]) {
            let own = routes.iter().find(|r| r.name == server).unwrap();
            let m = route.r#match.as_ref().unwrap();
            assert_eq!(m.path_specifier, Some(PathSpecifier::Path("/mcp/work".into())));
            assert_eq!(m.headers.len(), 1);
            assert_eq!(m.headers[0].name, TARGET_HEADER);
            assert!(!m.headers[0].invert_match);
            assert_eq!(
                m.headers[0].header_match_specifier,
                Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(server.into())),
                    ignore_case: false
                }))
            );
            // Exactly the server's own route otherwise: cluster, rewrites, credentials.
            let (Some(Action::Route(virt)), Some(Action::Route(real))) = (&route.action, &own.action) else {
                panic!("route actions")
            };
            assert_eq!(virt, real);
            assert!(matches!(virt.cluster_specifier, Some(ClusterSpecifier::Cluster(_))));
            assert!(route.request_headers_to_remove.contains(&TARGET_HEADER.to_string()));
            // The server's own CORS policy stays on its own route only.
            assert!(!route.typed_per_filter_config.contains_key(CORS_FILTER_NAME));
            let mut own_filters: Vec<&String> =
                own.typed_per_filter_config.keys().filter(|k| *k != CORS_FILTER_NAME).collect();
            let mut virt_filters: Vec<&String> = route.typed_per_filter_config.keys().collect();
            own_filters.sort();
            virt_filters.sort();
            assert_eq!(own_filters, virt_filters);
        }
        let unrouted = &routes[4];
        assert!(unrouted.r#match.as_ref().unwrap().headers.is_empty());
        assert!(matches!(&unrouted.action, Some(Action::DirectResponse(d)) if d.status == 500));
    }

    #[test]
    fn no_virtual_servers_no_routes() {
        let registry =
            registry("listener: { port: 10000 }\nservers:\n  - { name: crm, url: 'http://127.0.0.1:9101/mcp' }\n");
        assert!(make_virtual_routes(&registry).is_empty());
    }
}
