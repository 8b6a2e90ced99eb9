//! The control plane's shared state: the published snapshot, what each Envoy node did with
//! it, and the last registry load error.
//!
//! The snapshot travels through a `watch` channel (every ADS stream sees the latest and
//! never an older one); everything the admin API shows sits behind one mutex. Nothing here
//! holds a secret value: the registry is kept for `/registry` and `/catalog`, whose
//! credential values are only reachable through `SecretValue::expose`, which this module
//! never calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use crate::registry::{LoadErrors, Registry};
use crate::snapshot::Snapshot;
use crate::translate::type_url;

/// Which ADS variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// State of the world (`api_type: GRPC`).
    Sotw,
    /// Incremental (`api_type: DELTA_GRPC`).
    Delta,
}

/// A rejected push, in Envoy's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// Short type name (`clusters`, `routes`, ...).
    pub resource_type: String,
    /// The version Envoy refused (what meshgate sent).
    pub rejected_version: String,
    /// Envoy's `error_detail.message`.
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// What the admin API reports about one Envoy node (by `node.id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// Open ADS streams from this node id (0 = disconnected).
    pub streams: u32,
    pub api: Option<Api>,
    /// Last version ACKed, per short type name.
    pub acked: BTreeMap<String, String>,
    pub last_nack: Option<Nack>,
    pub nacks: u64,
    /// Seconds since the Unix epoch of the last stream opening.
    pub connected_at: u64,
    /// Seconds since the Unix epoch of the last stream closing, while none is open.
    pub disconnected_at: Option<u64>,
    /// Order of that disconnection among all nodes' (what pruning goes by: many can
    /// disconnect within one second).
    #[serde(skip)]
    disconnect_order: u64,
}

/// Disconnected nodes kept in the status (the most recently disconnected): node ids come
/// and go with pods, and any client can open a stream with any id.
pub const MAX_DISCONNECTED_NODES: usize = 256;

/// The last registry edit that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadFailure {
    /// Every problem as `file:line: path: message`.
    pub errors: Vec<String>,
    pub at: u64,
}

#[derive(Debug, Default)]
struct Inner {
    registry: Option<Arc<Registry>>,
    loaded_at: u64,
    last_error: Option<LoadFailure>,
    nodes: BTreeMap<String, NodeStatus>,
    /// Disconnections so far (orders [`NodeStatus::disconnect_order`]).
    disconnections: u64,
}

/// See the module docs. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct ControlPlane {
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    inner: Mutex<Inner>,
    nacks_total: AtomicU64,
    pushes_total: AtomicU64,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane {
            snapshot: watch::Sender::new(None),
            inner: Mutex::new(Inner::default()),
            nacks_total: AtomicU64::new(0),
            pushes_total: AtomicU64::new(0),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl ControlPlane {
    pub fn new() -> Arc<ControlPlane> {
        Arc::new(ControlPlane::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave these plain maps half-updated in a
        // way that matters more than losing the admin API.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a new snapshot (and the registry it came from) to every stream; clears the
    /// last load error. Returns false when the content did not change.
    pub fn publish(&self, registry: Arc<Registry>, snapshot: Snapshot) -> bool {
        let mut inner = self.lock();
        inner.registry = Some(registry);
        inner.last_error = None;
        inner.loaded_at = unix_now();
        drop(inner);
        self.snapshot.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.version == snapshot.version) {
                return false;
            }
            *current = Some(Arc::new(snapshot));
            true
        })
    }

    /// Records a refused registry edit; the last good snapshot stays published.
    pub fn record_load_error(&self, errors: &LoadErrors) {
        self.record_error_lines(errors.0.iter().map(ToString::to_string).collect());
    }

    pub fn record_error_lines(&self, errors: Vec<String>) {
        self.lock().last_error = Some(LoadFailure { errors, at: unix_now() });
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshot.subscribe()
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    pub fn registry(&self) -> Option<Arc<Registry>> {
        self.lock().registry.clone()
    }

    pub fn last_error(&self) -> Option<LoadFailure> {
        self.lock().last_error.clone()
    }

    pub fn nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.lock().nodes.clone()
    }

    pub fn nacks_total(&self) -> u64 {
        self.nacks_total.load(Ordering::Relaxed)
    }

    pub fn pushes_total(&self) -> u64 {
        self.pushes_total.load(Ordering::Relaxed)
    }

    pub fn loaded_at(&self) -> u64 {
        self.lock().loaded_at
    }

    /// A stream from `node` opened; the returned guard marks it closed when dropped.
    pub fn stream_opened(self: &Arc<Self>, node: &str, api: Api) -> StreamGuard {
        let mut inner = self.lock();
        let status = inner.nodes.entry(node.to_string()).or_default();
        status.streams += 1;
        status.api = Some(api);
        status.connected_at = unix_now();
        status.disconnected_at = None;
        StreamGuard { control: self.clone(), node: node.to_string() }
    }

    pub fn record_ack(&self, node: &str, type_url: &str, version: &str) {
        let mut inner = self.lock();
        let status = inner.nodes.entry(node.to_string()).or_default();
        status.acked.insert(type_url::short(type_url).to_string(), version.to_string());
    }

    pub fn record_nack(&self, node: &str, type_url: &str, version: &str, message: &str) {
        self.nacks_total.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let status = inner.nodes.entry(node.to_string()).or_default();
        status.nacks += 1;
        status.last_nack = Some(Nack {
            resource_type: type_url::short(type_url).to_string(),
            rejected_version: version.to_string(),
            message: message.to_string(),
            at: unix_now(),
        });
    }

    pub fn record_push(&self) {
        self.pushes_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks a stream closed in the node's status when dropped.
#[derive(Debug)]
pub struct StreamGuard {
    control: Arc<ControlPlane>,
    node: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut guard = self.control.lock();
        let inner = &mut *guard;
        let Some(status) = inner.nodes.get_mut(&self.node) else {
            return;
        };
        status.streams = status.streams.saturating_sub(1);
        if status.streams > 0 {
            return;
        }
        inner.disconnections += 1;
        status.disconnected_at = Some(unix_now());
        status.disconnect_order = inner.disconnections;
        prune_disconnected(&mut inner.nodes, MAX_DISCONNECTED_NODES);
    }
}

/// Forgets the longest-disconnected nodes beyond `keep` disconnected ones.
fn prune_disconnected(nodes: &mut BTreeMap<String, NodeStatus>, keep: usize) {
    let mut gone: Vec<(u64, String)> = nodes
        .iter()
        .filter(|(_, s)| s.disconnected_at.is_some())
        .map(|(id, s)| (s.disconnect_order, id.clone()))
        .collect();
    if gone.len() <= keep {
        return;
    }
    gone.sort();
    let excess = gone.len() - keep;
    for (_, id) in gone.into_iter().take(excess) {
        nodes.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node ids come and go (pods, or any client naming itself): the status keeps every
    /// connected node and only the most recently disconnected ones.
    #[test]
    fn disconnected_nodes_are_bounded() {
        let control = ControlPlane::new();
        // Named to sort first: pruning goes by disconnection order, not by name.
        let connected = control.stream_opened("a-steady", Api::Sotw);
        for n in 0..MAX_DISCONNECTED_NODES + 50 {
            drop(control.stream_opened(&format!("pod-{n}"), Api::Delta));
        }
        let nodes = control.nodes();
        assert_eq!(nodes.len(), MAX_DISCONNECTED_NODES + 1);
        assert_eq!(nodes["a-steady"].streams, 1);
        assert!(nodes.values().filter(|s| s.streams == 0).all(|s| s.disconnected_at.is_some()));
        drop(connected);
        let nodes = control.nodes();
        assert_eq!(nodes.len(), MAX_DISCONNECTED_NODES);
        assert!(nodes["a-steady"].disconnected_at.is_some(), "the latest disconnection is kept");
    }
}
