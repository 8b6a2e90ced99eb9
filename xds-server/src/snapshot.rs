//! A snapshot: every resource of one registry version, packed, immutable, consistency-checked.
//!
//! Built from [`Resources`] by [`Snapshot::new`], which refuses an inconsistent set (a route
//! naming a missing cluster, a listener naming a missing route configuration or extension
//! config, a route naming a missing secret) so Envoy never receives dangling references.
//! The version is a hash of the content: the same registry gives the same version, on any
//! meshgate instance, and a restarted meshgate does not make Envoys reload anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::ClusterSpecifier};
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::http::filter_chain::v3::FilterChainConfigPerRoute;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::translate::{content_hash, type_url, Packed, Resources};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsistencyError {
    #[error("route {route:?} names cluster {cluster:?}, which does not exist")]
    MissingCluster { route: String, cluster: String },
    #[error("listener {listener:?} names route configuration {name:?}, which does not exist")]
    MissingRouteConfig { listener: String, name: String },
    #[error("listener {listener:?} names extension config {name:?}, which does not exist")]
    MissingExtensionConfig { listener: String, name: String },
    #[error("route {route:?} names secret {name:?}, which does not exist")]
    MissingSecret { route: String, name: String },
    #[error("{what} of {owner:?} cannot be decoded: {error}")]
    Undecodable { owner: String, what: &'static str, error: String },
}

/// Resources of one type, by name.
pub type ByName = BTreeMap<String, Arc<Packed>>;

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Content hash of everything below.
    pub version: String,
    by_type: BTreeMap<&'static str, ByName>,
}

impl Snapshot {
    /// Checks `resources` for dangling references and packs them.
    pub fn new(resources: &Resources) -> Result<Snapshot, ConsistencyError> {
        check(resources)?;
        let mut by_type = BTreeMap::new();
        let mut fingerprint = String::new();
        for (type_url, items) in resources.pack() {
            let mut named = ByName::new();
            for item in items {
                fingerprint.push_str(type_url);
                fingerprint.push('\0');
                fingerprint.push_str(&item.name);
                fingerprint.push('\0');
                fingerprint.push_str(&item.version);
                fingerprint.push('\n');
                named.insert(item.name.clone(), Arc::new(item));
            }
            by_type.insert(type_url, named);
        }
        Ok(Snapshot { version: content_hash(fingerprint.as_bytes()), by_type })
    }

    /// The resources of `type_url` (empty for a type meshgate does not serve).
    pub fn resources(&self, type_url: &str) -> &ByName {
        static EMPTY: ByName = BTreeMap::new();
        self.by_type.get(type_url).unwrap_or(&EMPTY)
    }

    /// Number of resources of each type, for logs and the admin API.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        type_url::ALL.iter().map(|t| (type_url::short(t), self.resources(t).len())).collect()
    }
}

fn decode<T: Message + Default>(any: &Any, owner: &str, what: &'static str) -> Result<T, ConsistencyError> {
    T::decode(any.value.as_slice()).map_err(|e| ConsistencyError::Undecodable {
        owner: owner.to_string(),
        what,
        error: e.to_string(),
    })
}

fn check(resources: &Resources) -> Result<(), ConsistencyError> {
    let clusters: BTreeSet<&str> = resources.clusters.iter().map(|c| c.name.as_str()).collect();
    let secrets: BTreeSet<&str> = resources.secrets.iter().map(|s| s.name.as_str()).collect();
    let route_configs: BTreeSet<&str> = resources.routes.iter().map(|r| r.name.as_str()).collect();
    let extension_configs: BTreeSet<&str> = resources.extension_configs.iter().map(|c| c.name.as_str()).collect();

    for config in &resources.routes {
        for route in config.virtual_hosts.iter().flat_map(|v| v.routes.iter()) {
            if let Some(Action::Route(action)) = &route.action {
                if let Some(ClusterSpecifier::Cluster(cluster)) = &action.cluster_specifier {
                    if !clusters.contains(cluster.as_str()) {
                        return Err(ConsistencyError::MissingCluster {
                            route: route.name.clone(),
                            cluster: cluster.clone(),
                        });
                    }
                }
            }
            for any in route.typed_per_filter_config.values() {
                for name in referenced_secrets(any, &route.name)? {
                    if !secrets.contains(name.as_str()) {
                        return Err(ConsistencyError::MissingSecret { route: route.name.clone(), name });
                    }
                }
            }
        }
    }

    for listener in &resources.listeners {
        for filter in listener.filter_chains.iter().flat_map(|c| c.filters.iter()) {
            let Some(FilterConfigType::TypedConfig(any)) = &filter.config_type else {
                continue;
            };
            if any.type_url != <HttpConnectionManager as prost::Name>::type_url() {
                continue;
            }
            let hcm: HttpConnectionManager = decode(any, &listener.name, "http connection manager")?;
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                if !route_configs.contains(rds.route_config_name.as_str()) {
                    return Err(ConsistencyError::MissingRouteConfig {
                        listener: listener.name.clone(),
                        name: rds.route_config_name.clone(),
                    });
                }
            }
            for http_filter in &hcm.http_filters {
                if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = &http_filter.config_type {
                    if !extension_configs.contains(http_filter.name.as_str()) {
                        return Err(ConsistencyError::MissingExtensionConfig {
                            listener: listener.name.clone(),
                            name: http_filter.name.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// SDS secret names a per-route `filter_chain` of credential injectors refers to.
fn referenced_secrets(any: &Any, route: &str) -> Result<Vec<String>, ConsistencyError> {
    if any.type_url != <FilterChainConfigPerRoute as prost::Name>::type_url() {
        return Ok(Vec::new());
    }
    let per_route: FilterChainConfigPerRoute = decode(any, route, "per-route filter chain")?;
    let mut names = Vec::new();
    for filter in per_route.filter_chain.iter().flat_map(|chain| chain.filters.iter()) {
        let Some(config) = &filter.typed_config else {
            continue;
        };
        if config.type_url != <CredentialInjector as prost::Name>::type_url() {
            continue;
        }
        let injector: CredentialInjector = decode(config, route, "credential injector")?;
        let Some(generic) = injector.credential.and_then(|c| c.typed_config) else {
            continue;
        };
        if generic.type_url != <Generic as prost::Name>::type_url() {
            continue;
        }
        let generic: Generic = decode(&generic, route, "generic credential")?;
        if let Some(sds) = generic.credential {
            names.push(sds.name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::registry;
    use crate::translate::{translate, TranslateOptions, WasmSource};
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;

    fn resources(yaml: &str) -> Resources {
        let options =
            TranslateOptions { wasm: WasmSource::Local { path: "/m.wasm".into() }, native: Default::default() };
        translate(&registry(yaml), &options).expect("translate")
    }

    const TWO: &str = "listener: { port: 0 }\nservers:\n  - { name: a, url: 'http://127.0.0.1:1/', credentials: { value_env: TEST_SECRET } }\n  - { name: b, url: 'http://127.0.0.1:2/' }\n";

    #[test]
    fn versions_are_content_hashes() {
        let one = Snapshot::new(&resources(TWO)).expect("consistent");
        let again = Snapshot::new(&resources(TWO)).expect("consistent");
        assert_eq!(one.version, again.version);
        assert_eq!(one.version.len(), 16);
        let other = Snapshot::new(&resources(&TWO.replace(":2/", ":3/"))).expect("consistent");
        assert_ne!(one.version, other.version);
        assert_eq!(one.resources(type_url::CLUSTER).len(), 2);
        assert_eq!(one.resources(type_url::SECRET).len(), 1);
        assert!(one.resources("type.googleapis.com/unknown").is_empty());
        assert_eq!(one.counts()["listeners"], 1);
    }

    #[test]
    fn dangling_references_are_refused() {
        let mut r = resources(TWO);
        r.clusters.retain(|c| c.name != "mcp-b");
        assert_eq!(
            Snapshot::new(&r),
            Err(ConsistencyError::MissingCluster { route: "b".into(), cluster: "mcp-b".into() })
        );

        let mut r = resources(TWO);
        r.secrets.clear();
        assert_eq!(
            Snapshot::new(&r),
            Err(ConsistencyError::MissingSecret { route: "a".into(), name: "meshgate-credential-a".into() })
        );

        let mut r = resources(TWO);
        r.routes.clear();
        assert!(matches!(Snapshot::new(&r), Err(ConsistencyError::MissingRouteConfig { .. })));

        let mut r = resources(TWO);
        r.extension_configs.clear();
        assert!(matches!(Snapshot::new(&r), Err(ConsistencyError::MissingExtensionConfig { .. })));

        // And the message names what is missing.
        let mut r = resources(TWO);
        if let Some(Action::Route(action)) = &mut r.routes[0].virtual_hosts[0].routes[0].action {
            action.cluster_specifier = Some(ClusterSpecifier::Cluster("nope".into()));
        }
        let error = Snapshot::new(&r).expect_err("dangling").to_string();
        assert_eq!(error, "route \"a\" names cluster \"nope\", which does not exist");
    }
}
