//! RDS: the route configuration `meshgate`.
//!
//! - `/mcp/<server>` (exact path; Envoy's `path` match ignores the query string, so
//!   `/mcp/crmx` never reaches `crm`) → the server's cluster, the path rewritten to the
//!   upstream's path, `Host` to the upstream's `host:port` (the Python MCP SDK answers 421 to
//!   any other), the server's `timeout` (0 s = none) plus an idle timeout because streams are
//!   long. **No retry policy**: a `tools/call` is not idempotent, and Envoy retries nothing
//!   without one.
//! - A server with `credentials` gets a per-route `filter_chain` holding a
//!   `credential_injector` that reads its SDS secret and overwrites the header.
//! - With `auth.resource_metadata` set, RFC 9728 protected-resource metadata documents are
//!   answered by Envoy itself (`direct_response`): at `/.well-known/oauth-protected-resource`
//!   (the whole gateway), at `/.well-known/oauth-protected-resource/mcp/<server>` (each
//!   server, the path-inserted form MCP clients try), and at the configured URL's path.
//!   The filter lets `/.well-known/` through ungoverned.
//! - With `scope: global` quotas, every MCP route carries their `rate_limits` descriptors
//!   and removes their `x-meshgate-rl-*` headers (see [`super::ratelimit`]).
//! - With a CORS policy (`listener.cors` on the virtual host, `servers[].cors` on the
//!   server's route), Envoy's CORS filter answers preflights (see [`super::cors`]).
//! - Anything else gets Envoy's 404.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue, HeaderValueOption,
    TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, route_action::HostRewriteSpecifier, route_match::PathSpecifier,
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::http::filter_chain::v3::{FilterChain, FilterChainConfigPerRoute};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use serde_json::json;

use super::cors::{self, CORS_FILTER_NAME};
use super::{
    ads_config_source, cluster_name, credential_secret_name, pack, proto_duration, ratelimit, CREDENTIALS_FILTER_NAME,
    ROUTE_CONFIG_NAME, STREAM_IDLE_TIMEOUT,
};
use crate::registry::{Registry, Server};

/// RFC 9728 §3: where protected-resource metadata lives.
pub const PROTECTED_RESOURCE_PATH: &str = "/.well-known/oauth-protected-resource";
const CREDENTIAL_INJECTOR: &str = "envoy.filters.http.credential_injector";
const GENERIC_CREDENTIAL: &str = "envoy.http.injected_credentials.generic";

pub fn make_route_config(registry: &Registry) -> RouteConfiguration {
    let mut routes = protected_resource_routes(registry);
    routes.extend(registry.servers.iter().map(|server| make_route(registry, server)));
    routes.extend(super::virtual_route::make_virtual_routes(registry));
    // The listener's CORS policy covers every route; a server's own replaces it on its route.
    let typed_per_filter_config =
        registry.cors.iter().map(|cors| (CORS_FILTER_NAME.to_string(), cors::make_cors_policy(cors))).collect();
    RouteConfiguration {
        name: ROUTE_CONFIG_NAME.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: ROUTE_CONFIG_NAME.to_string(),
            domains: vec!["*".to_string()],
            routes,
            typed_per_filter_config,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The route of one server.
pub fn make_route(registry: &Registry, server: &Server) -> Route {
    // Several endpoints answer to their own `host:port`: let Envoy put the chosen endpoint's
    // `hostname` in `Host` instead of one literal.
    let host_rewrite = if server.more_upstreams.is_empty() {
        HostRewriteSpecifier::HostRewriteLiteral(server.upstream.authority())
    } else {
        HostRewriteSpecifier::AutoHostRewrite(BoolValue { value: true })
    };
    let mut typed_per_filter_config = HashMap::new();
    if let Some(chain) = credential_filter_chain(server) {
        typed_per_filter_config.insert(CREDENTIALS_FILTER_NAME.to_string(), chain);
    }
    if let Some(own) = &server.cors {
        typed_per_filter_config.insert(CORS_FILTER_NAME.to_string(), cors::make_cors_policy(own));
    }
    Route {
        name: server.name.clone(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Path(registry.route_path(server))),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(server))),
            // With an exact `path` match the whole path is the matched prefix; the query
            // string is kept.
            prefix_rewrite: server.upstream.path.clone(),
            host_rewrite_specifier: Some(host_rewrite),
            timeout: Some(proto_duration(server.timeout)),
            idle_timeout: Some(proto_duration(STREAM_IDLE_TIMEOUT)),
            rate_limits: ratelimit::make_route_rate_limits(registry),
            ..Default::default()
        })),
        // Read by the `ratelimit` filter, never forwarded.
        request_headers_to_remove: ratelimit::make_route_headers_to_remove(registry),
        typed_per_filter_config,
        ..Default::default()
    }
}

/// The per-route chain that injects a server's upstream credential, if it has one.
fn credential_filter_chain(server: &Server) -> Option<Any> {
    let credentials = server.credentials.as_ref()?;
    let generic = Generic {
        credential: Some(SdsSecretConfig {
            name: credential_secret_name(server),
            sds_config: Some(ads_config_source()),
        }),
        header: credentials.header.clone(),
        header_value_prefix: credentials.prefix.clone(),
    };
    let injector = CredentialInjector {
        // The client's own value of that header must never reach the upstream.
        overwrite: true,
        // Fail closed: no secret yet (or a broken one) → 401, not an unauthenticated call.
        allow_request_without_credential: false,
        credential: Some(TypedExtensionConfig {
            name: GENERIC_CREDENTIAL.to_string(),
            typed_config: Some(pack(&generic)),
        }),
    };
    Some(pack(&FilterChainConfigPerRoute {
        filter_chain: Some(FilterChain {
            filters: vec![TypedExtensionConfig {
                name: CREDENTIAL_INJECTOR.to_string(),
                typed_config: Some(pack(&injector)),
            }],
        }),
    }))
}

/// RFC 9728 metadata documents: `path → resource`, when `auth.resource_metadata` is set.
pub fn protected_resource_documents(registry: &Registry) -> BTreeMap<String, String> {
    let mut documents = BTreeMap::new();
    let Some(url) = registry.filter.auth.resource_metadata.as_deref() else {
        return documents;
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return documents;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return documents;
    };
    let origin = format!("{scheme}://{authority}");
    documents.insert(PROTECTED_RESOURCE_PATH.to_string(), origin.clone());
    for server in &registry.servers {
        let path = registry.route_path(server);
        documents.insert(format!("{PROTECTED_RESOURCE_PATH}{path}"), format!("{origin}{path}"));
    }
    for virtual_server in &registry.virtual_servers {
        let path = registry.virtual_route_path(&virtual_server.name);
        documents.insert(format!("{PROTECTED_RESOURCE_PATH}{path}"), format!("{origin}{path}"));
    }
    // The advertised URL itself, when it is elsewhere under /.well-known/ (the only prefix
    // the filter lets through without credentials).
    let path = uri.path();
    if path.starts_with("/.well-known/") && !documents.contains_key(path) {
        let suffix = path.strip_prefix(PROTECTED_RESOURCE_PATH).unwrap_or("");
        let resource = if suffix.starts_with('/') { format!("{origin}{suffix}") } else { origin };
        documents.insert(path.to_string(), resource);
    }
    documents
}

/// One metadata document (RFC 9728 §2): resource, authorization servers (the JWT issuers),
/// bearer tokens in the `Authorization` header, scopes when configured.
pub fn protected_resource_metadata(registry: &Registry, resource: &str) -> serde_json::Value {
    let mut document = json!({ "resource": resource });
    let mut issuers: Vec<&str> = Vec::new();
    for provider in &registry.filter.auth.jwt {
        if !issuers.contains(&provider.issuer.as_str()) {
            issuers.push(&provider.issuer);
        }
    }
    if !issuers.is_empty() {
        document["authorization_servers"] = json!(issuers);
    }
    document["bearer_methods_supported"] = json!(["header"]);
    if !registry.scopes.is_empty() {
        document["scopes_supported"] = json!(registry.scopes);
    }
    document
}

fn protected_resource_routes(registry: &Registry) -> Vec<Route> {
    protected_resource_documents(registry)
        .into_iter()
        .map(|(path, resource)| {
            let body = protected_resource_metadata(registry, &resource).to_string();
            Route {
                name: format!("protected-resource:{path}"),
                r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Path(path)), ..Default::default() }),
                action: Some(Action::DirectResponse(DirectResponseAction {
                    status: 200,
                    body: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineString(body)),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                response_headers_to_add: vec![
                    overwrite_header("content-type", "application/json"),
                    // Browser-based MCP clients fetch this cross-origin.
                    overwrite_header("access-control-allow-origin", "*"),
                ],
                ..Default::default()
            }
        })
        .collect()
}

/// A response header set (replacing any value).
pub(super) fn overwrite_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}
