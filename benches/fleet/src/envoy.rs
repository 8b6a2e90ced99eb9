//! One simulated Envoy: a real ADS gRPC client (its own HTTP/2 connection, its own node id)
//! that subscribes, ACKs and NACKs the way Envoy does.
//!
//! - It opens with CDS and LDS as (legacy) wildcards; every other type is subscribed by
//!   name, as Envoy derives the names from what it holds: RDS and ECDS names from each
//!   listener's HTTP connection manager, SDS names from clusters' upstream TLS contexts and
//!   from routes' per-route credential injectors.
//! - Each resource is decoded into its proto type; a response with an undecodable resource,
//!   the wrong type, or (SotW) a duplicate name is NACKed (`error_detail`, the previous
//!   version) and not applied, like Envoy. Otherwise it is applied and ACKed; then new or
//!   dropped dependent names go out as a subscription change, after the ACK.
//! - On a lost stream it reconnects with Envoy's jittered exponential backoff (500 ms base,
//!   30 s cap) and re-sends every subscription: SotW with the last accepted version per
//!   type, Delta with `initial_resource_versions` of everything it holds.
//!
//! Every response is recorded ([`Arrival`]) with the time it arrived, the time the
//! ACK/NACK was queued, its version and its size on the wire, for the harness to measure.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{transport_socket, Node, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::{filter::ConfigType as FilterConfigType, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::http::filter_chain::v3::FilterChainConfigPerRoute;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::{Message, Name};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Every type a meshgate-fed Envoy uses. The order is the subscription order on a reconnect.
pub const TYPES: [&str; 5] = [CLUSTER, LISTENER, ROUTE, EXTENSION_CONFIG, SECRET];

/// gRPC framing around each message on the wire (compression flag + length).
const GRPC_FRAME: usize = 5;
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Which ADS variant a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Sotw,
    Delta,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Sotw => "sotw",
            Api::Delta => "delta",
        }
    }
}

/// One response as the node saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub received: Instant,
    /// When the ACK (or NACK) was queued on the stream.
    pub answered: Instant,
    pub type_url: &'static str,
    /// SotW `version_info` / Delta `system_version_info`.
    pub version: String,
    /// Encoded size plus gRPC framing.
    pub bytes: usize,
    pub nack: Option<String>,
}

/// What the harness reads about a node.
#[derive(Debug, Default)]
pub struct Record {
    pub arrivals: Vec<Arrival>,
    /// Streams opened so far.
    pub connects: u32,
    pub connected: bool,
    /// Hash of every resource held (type, name, content): equal digests = same config.
    pub digest: u64,
    /// Last accepted version per type.
    pub versions: BTreeMap<&'static str, String>,
    pub last_error: Option<String>,
}

/// A node's shared record.
#[derive(Debug)]
pub struct Shared {
    pub id: String,
    pub api: Api,
    record: Mutex<Record>,
}

impl Shared {
    pub fn new(id: String, api: Api) -> Arc<Shared> {
        Arc::new(Shared { id, api, record: Mutex::new(Record::default()) })
    }

    pub fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A resource as held: its content hash and (Delta) its version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    hash: u64,
    version: String,
}

/// Everything the node holds, kept across reconnects like Envoy's config.
#[derive(Debug, Default)]
struct Config {
    /// type → name → resource.
    held: BTreeMap<&'static str, BTreeMap<String, Held>>,
    /// Names subscribed to, for the non-wildcard types.
    names: BTreeMap<&'static str, BTreeSet<String>>,
    /// SotW: last accepted version and last nonce per type.
    version: BTreeMap<&'static str, String>,
    nonce: BTreeMap<&'static str, String>,
    /// Decoded resources the dependent names come from.
    listeners: BTreeMap<String, Listener>,
    clusters: BTreeMap<String, Cluster>,
    routes: BTreeMap<String, RouteConfiguration>,
}

fn static_type(type_url: &str) -> Option<&'static str> {
    TYPES.into_iter().find(|t| *t == type_url)
}

fn is_wildcard(type_url: &str) -> bool {
    matches!(type_url, CLUSTER | LISTENER)
}

fn content_hash(any: &Any) -> u64 {
    let mut hasher = DefaultHasher::new();
    any.type_url.hash(&mut hasher);
    any.value.hash(&mut hasher);
    hasher.finish()
}

/// A decoded resource, kept for the dependent names.
enum Decoded {
    Cluster(Box<Cluster>),
    Listener(Box<Listener>),
    Route(Box<RouteConfiguration>),
    Other,
}

/// Decodes `any` as `type_url` requires, like Envoy's config ingestion; the resource name.
fn decode(type_url: &str, any: &Any) -> Result<(String, Decoded), String> {
    if any.type_url != type_url {
        return Err(format!("resource of type {} in a {type_url} response", any.type_url));
    }
    let bytes = any.value.as_slice();
    let error = |e: prost::DecodeError| format!("cannot decode {type_url}: {e}");
    Ok(match type_url {
        CLUSTER => {
            let c = Cluster::decode(bytes).map_err(error)?;
            (c.name.clone(), Decoded::Cluster(Box::new(c)))
        }
        LISTENER => {
            let l = Listener::decode(bytes).map_err(error)?;
            (l.name.clone(), Decoded::Listener(Box::new(l)))
        }
        ROUTE => {
            let r = RouteConfiguration::decode(bytes).map_err(error)?;
            (r.name.clone(), Decoded::Route(Box::new(r)))
        }
        EXTENSION_CONFIG => (TypedExtensionConfig::decode(bytes).map_err(error)?.name, Decoded::Other),
        SECRET => (Secret::decode(bytes).map_err(error)?.name, Decoded::Other),
        other => return Err(format!("unexpected type {other}")),
    })
}

impl Config {
    fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for (type_url, items) in &self.held {
            for (name, held) in items {
                (type_url, name, held.hash).hash(&mut hasher);
            }
        }
        hasher.finish()
    }

    fn keep_decoded(&mut self, name: &str, decoded: Decoded) {
        match decoded {
            Decoded::Cluster(c) => {
                self.clusters.insert(name.to_string(), *c);
            }
            Decoded::Listener(l) => {
                self.listeners.insert(name.to_string(), *l);
            }
            Decoded::Route(r) => {
                self.routes.insert(name.to_string(), *r);
            }
            Decoded::Other => {}
        }
    }

    fn forget(&mut self, type_url: &str, name: &str) {
        match type_url {
            CLUSTER => drop(self.clusters.remove(name)),
            LISTENER => drop(self.listeners.remove(name)),
            ROUTE => drop(self.routes.remove(name)),
            _ => {}
        }
    }

    /// The names Envoy would subscribe to for the non-wildcard types, from what it holds.
    fn wanted(&self) -> BTreeMap<&'static str, BTreeSet<String>> {
        let mut wanted: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        for listener in self.listeners.values() {
            let chains = listener.filter_chains.iter().chain(listener.default_filter_chain.iter());
            for filter in chains.flat_map(|c| c.filters.iter()) {
                let Some(FilterConfigType::TypedConfig(any)) = &filter.config_type else { continue };
                if any.type_url != HttpConnectionManager::type_url() {
                    continue;
                }
                let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else { continue };
                if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                    wanted.entry(ROUTE).or_default().insert(rds.route_config_name.clone());
                }
                for http_filter in &hcm.http_filters {
                    if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = &http_filter.config_type {
                        wanted.entry(EXTENSION_CONFIG).or_default().insert(http_filter.name.clone());
                    }
                }
            }
        }
        for cluster in self.clusters.values() {
            let Some(socket) = &cluster.transport_socket else { continue };
            let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { continue };
            if any.type_url != UpstreamTlsContext::type_url() {
                continue;
            }
            let Ok(tls) = UpstreamTlsContext::decode(any.value.as_slice()) else { continue };
            let Some(common) = tls.common_tls_context else { continue };
            for sds in &common.tls_certificate_sds_secret_configs {
                wanted.entry(SECRET).or_default().insert(sds.name.clone());
            }
            if let Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) = &common.validation_context_type
            {
                wanted.entry(SECRET).or_default().insert(sds.name.clone());
            }
        }
        for config in self.routes.values() {
            let per_route = config.virtual_hosts.iter().flat_map(|v| v.routes.iter());
            for any in per_route.flat_map(|r| r.typed_per_filter_config.values()) {
                for name in credential_secrets(any) {
                    wanted.entry(SECRET).or_default().insert(name);
                }
            }
        }
        wanted
    }
}

/// SDS names a per-route filter chain of credential injectors refers to.
fn credential_secrets(any: &Any) -> Vec<String> {
    if any.type_url != FilterChainConfigPerRoute::type_url() {
        return Vec::new();
    }
    let Ok(per_route) = FilterChainConfigPerRoute::decode(any.value.as_slice()) else { return Vec::new() };
    let mut names = Vec::new();
    for filter in per_route.filter_chain.iter().flat_map(|chain| chain.filters.iter()) {
        let Some(config) = &filter.typed_config else { continue };
        if config.type_url != CredentialInjector::type_url() {
            continue;
        }
        let Ok(injector) = CredentialInjector::decode(config.value.as_slice()) else { continue };
        let Some(generic) = injector.credential.and_then(|c| c.typed_config) else { continue };
        if generic.type_url != Generic::type_url() {
            continue;
        }
        if let Some(sds) = Generic::decode(generic.value.as_slice()).ok().and_then(|g| g.credential) {
            names.push(sds.name);
        }
    }
    names
}

/// Envoy's `JitteredExponentialBackOffStrategy` for the ADS stream: base 500 ms, cap 30 s.
struct Backoff {
    retry: u32,
    state: u64,
}

impl Backoff {
    const BASE_MS: u64 = 500;
    const MAX_MS: u64 = 30_000;

    fn new(seed: u64) -> Backoff {
        Backoff { retry: 1, state: seed | 1 }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter only, no security role.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn next(&mut self) -> Duration {
        let multiplier = (1u64 << self.retry.min(20)) - 1;
        let base = multiplier * Self::BASE_MS;
        if base <= Self::MAX_MS {
            self.retry += 1;
        }
        Duration::from_millis((self.random() % base).min(Self::MAX_MS))
    }

    fn reset(&mut self) {
        self.retry = 1;
    }
}

/// Runs one node until `stop` turns true (or, with `once`, until its first full config is
/// ACKed). Returns whether it ever got one.
pub async fn run(
    shared: Arc<Shared>,
    endpoint: String,
    seed: u64,
    mut stop: watch::Receiver<bool>,
    once: bool,
) -> bool {
    let mut config = Config::default();
    let mut backoff = Backoff::new(seed);
    let node = Node {
        id: shared.id.clone(),
        cluster: "meshgate-fleet".to_string(),
        user_agent_name: "envoy".to_string(),
        ..Default::default()
    };
    loop {
        if *stop.borrow() {
            return false;
        }
        let session = async {
            let channel = Endpoint::from_shared(endpoint.clone())
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let client = AggregatedDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            match shared.api {
                Api::Sotw => sotw(client, &node, &mut config, &shared, &mut backoff, once).await,
                Api::Delta => delta(client, &node, &mut config, &shared, &mut backoff, once).await,
            }
        };
        let ended = tokio::select! {
            ended = session => ended,
            _ = stop.wait_for(|s| *s) => return false,
        };
        {
            let mut record = shared.lock();
            record.connected = false;
            match ended {
                Ok(true) => return true,
                Ok(false) => record.last_error = Some("stream closed by meshgate".to_string()),
                Err(e) => record.last_error = Some(e),
            }
        }
        let wait = backoff.next();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

/// True once every subscribed type has been answered and nothing is pending.
fn complete(config: &Config) -> bool {
    let wanted = config.wanted();
    config.version.contains_key(CLUSTER)
        && config.version.contains_key(LISTENER)
        && wanted.keys().all(|t| config.version.contains_key(t))
}

fn record_arrival(shared: &Shared, config: &Config, arrival: Arrival, accepted: bool) {
    let mut record = shared.lock();
    if accepted {
        record.versions.insert(arrival.type_url, arrival.version.clone());
        record.digest = config.digest();
    }
    record.arrivals.push(arrival);
}

fn opened(shared: &Shared) {
    let mut record = shared.lock();
    record.connects += 1;
    record.connected = true;
}

async fn sotw(
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    node: &Node,
    config: &mut Config,
    shared: &Shared,
    backoff: &mut Backoff,
    once: bool,
) -> Result<bool, String> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let send = |request: DiscoveryRequest| {
        let tx = tx.clone();
        async move { tx.send(request).await.map_err(|_| "request stream closed".to_string()) }
    };
    let mut first = Some(node.clone());
    for type_url in TYPES {
        let names: Vec<String> = config.names.get(type_url).map(|n| n.iter().cloned().collect()).unwrap_or_default();
        if !is_wildcard(type_url) && names.is_empty() {
            continue;
        }
        send(DiscoveryRequest {
            node: first.take(),
            type_url: type_url.to_string(),
            version_info: config.version.get(type_url).cloned().unwrap_or_default(),
            resource_names: names,
            ..Default::default()
        })
        .await?;
    }
    let mut inbound =
        client.stream_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|e| e.to_string())?.into_inner();
    opened(shared);
    backoff.reset();
    while let Some(response) = inbound.message().await.map_err(|e| e.to_string())? {
        let received = Instant::now();
        let bytes = response.encoded_len() + GRPC_FRAME;
        let Some(type_url) = static_type(&response.type_url) else {
            continue;
        };
        let (accepted, ack) = apply_sotw(config, type_url, &response);
        let nack = ack.error_detail.as_ref().map(|e| e.message.clone());
        send(ack).await?;
        let answered = Instant::now();
        if accepted {
            for (dependent, names) in resubscriptions(config) {
                send(DiscoveryRequest {
                    type_url: dependent.to_string(),
                    version_info: config.version.get(dependent).cloned().unwrap_or_default(),
                    response_nonce: config.nonce.get(dependent).cloned().unwrap_or_default(),
                    resource_names: names.into_iter().collect(),
                    ..Default::default()
                })
                .await?;
            }
        }
        let version = response.version_info.clone();
        record_arrival(shared, config, Arrival { received, answered, type_url, version, bytes, nack }, accepted);
        if once && complete(config) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies a SotW response (the whole set of its type, or of the subscribed names) or
/// refuses it; the ACK or NACK to send.
fn apply_sotw(config: &mut Config, type_url: &'static str, response: &DiscoveryResponse) -> (bool, DiscoveryRequest) {
    let names: Vec<String> = config.names.get(type_url).map(|n| n.iter().cloned().collect()).unwrap_or_default();
    let mut decoded = Vec::new();
    let mut error = None;
    let mut seen = BTreeSet::new();
    for any in &response.resources {
        match decode(type_url, any) {
            Ok((name, _)) if !seen.insert(name.clone()) => {
                error = Some(format!("duplicate resource {name:?}"));
                break;
            }
            Ok((name, resource)) => decoded.push((name, content_hash(any), resource)),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    config.nonce.insert(type_url, response.nonce.clone());
    if let Some(message) = error {
        let request = DiscoveryRequest {
            type_url: type_url.to_string(),
            version_info: config.version.get(type_url).cloned().unwrap_or_default(),
            response_nonce: response.nonce.clone(),
            resource_names: names,
            error_detail: Some(RpcStatus { code: tonic::Code::InvalidArgument as i32, message, details: Vec::new() }),
            ..Default::default()
        };
        return (false, request);
    }
    let subscribed = config.names.get(type_url).cloned();
    let held = config.held.entry(type_url).or_default();
    let before: Vec<String> = held.keys().cloned().collect();
    held.clear();
    let mut kept = Vec::new();
    for (name, hash, resource) in decoded {
        // Envoy ignores resources it did not ask for.
        if subscribed.as_ref().is_some_and(|s| !s.contains(&name)) && !is_wildcard(type_url) {
            continue;
        }
        held.insert(name.clone(), Held { hash, version: String::new() });
        kept.push((name, resource));
    }
    for name in before {
        config.forget(type_url, &name);
    }
    for (name, resource) in kept {
        config.keep_decoded(&name, resource);
    }
    config.version.insert(type_url, response.version_info.clone());
    let request = DiscoveryRequest {
        type_url: type_url.to_string(),
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        resource_names: names,
        ..Default::default()
    };
    (true, request)
}

/// Dependent types whose wanted names changed: the new name sets, now subscribed (what is
/// no longer wanted is dropped, as Envoy does when nothing references it).
fn resubscriptions(config: &mut Config) -> Vec<(&'static str, BTreeSet<String>)> {
    let wanted = config.wanted();
    let mut changes = Vec::new();
    for type_url in [ROUTE, EXTENSION_CONFIG, SECRET] {
        let now = wanted.get(type_url).cloned().unwrap_or_default();
        let before = config.names.get(type_url).cloned().unwrap_or_default();
        if now == before {
            continue;
        }
        if let Some(held) = config.held.get_mut(type_url) {
            held.retain(|name, _| now.contains(name));
        }
        config.names.insert(type_url, now.clone());
        changes.push((type_url, now));
    }
    changes
}

async fn delta(
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    node: &Node,
    config: &mut Config,
    shared: &Shared,
    backoff: &mut Backoff,
    once: bool,
) -> Result<bool, String> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let send = |request: DeltaDiscoveryRequest| {
        let tx = tx.clone();
        async move { tx.send(request).await.map_err(|_| "request stream closed".to_string()) }
    };
    let mut first = Some(node.clone());
    for type_url in TYPES {
        let names: Vec<String> = config.names.get(type_url).map(|n| n.iter().cloned().collect()).unwrap_or_default();
        if !is_wildcard(type_url) && names.is_empty() {
            continue;
        }
        let initial = config
            .held
            .get(type_url)
            .map(|held| held.iter().map(|(n, h)| (n.clone(), h.version.clone())).collect())
            .unwrap_or_default();
        send(DeltaDiscoveryRequest {
            node: first.take(),
            type_url: type_url.to_string(),
            resource_names_subscribe: names,
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await?;
    }
    let mut inbound =
        client.delta_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|e| e.to_string())?.into_inner();
    opened(shared);
    backoff.reset();
    while let Some(response) = inbound.message().await.map_err(|e| e.to_string())? {
        let received = Instant::now();
        let bytes = response.encoded_len() + GRPC_FRAME;
        let Some(type_url) = static_type(&response.type_url) else {
            continue;
        };
        let error = apply_delta(config, type_url, &response).err();
        let accepted = error.is_none();
        send(DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: response.nonce.clone(),
            error_detail: error.clone().map(|message| RpcStatus {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await?;
        let answered = Instant::now();
        if accepted {
            config.version.insert(type_url, response.system_version_info.clone());
            let before = config.names.clone();
            for (dependent, names) in resubscriptions(config) {
                let old = before.get(dependent).cloned().unwrap_or_default();
                send(DeltaDiscoveryRequest {
                    type_url: dependent.to_string(),
                    resource_names_subscribe: names.difference(&old).cloned().collect(),
                    resource_names_unsubscribe: old.difference(&names).cloned().collect(),
                    ..Default::default()
                })
                .await?;
            }
        }
        let version = response.system_version_info.clone();
        let arrival = Arrival { received, answered, type_url, version, bytes, nack: error };
        record_arrival(shared, config, arrival, accepted);
        if once && complete(config) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies a Delta response (upserts and removals) or refuses it whole.
fn apply_delta(config: &mut Config, type_url: &'static str, response: &DeltaDiscoveryResponse) -> Result<(), String> {
    let mut decoded = Vec::new();
    for resource in &response.resources {
        let any = resource.resource.as_ref().ok_or_else(|| format!("resource {:?} without a body", resource.name))?;
        let (name, body) = decode(type_url, any)?;
        if name != resource.name {
            return Err(format!("resource named {:?} carries {name:?}", resource.name));
        }
        decoded.push((name, Held { hash: content_hash(any), version: resource.version.clone() }, body));
    }
    for (name, held, body) in decoded {
        config.held.entry(type_url).or_default().insert(name.clone(), held);
        config.keep_decoded(&name, body);
    }
    for name in &response.removed_resources {
        if let Some(held) = config.held.get_mut(type_url) {
            held.remove(name);
        }
        config.forget(type_url, name);
    }
    Ok(())
}
