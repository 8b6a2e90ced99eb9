//! Incremental (Delta) ADS, one stream: a synchronous state machine.
//!
//! Per resource type: wildcard or not, the subscribed names, and `known` — the version of
//! every resource Envoy has, per what it said at connect (`initial_resource_versions`) and
//! what meshgate sent since. A response carries only what changed (`resources`) and what
//! went away (`removed_resources`), so after an ACK or a NACK there is nothing to send: a
//! NACKed version is not resent, it is replaced by the next snapshot.
//!
//! Make before break: on a new snapshot, additions and updates go out in
//! [`type_url::ALL`] order; removals of clusters and secrets go out last, after the routes
//! that used them are gone.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use super::{is_wildcard_type, Event, Outcome};
use crate::snapshot::Snapshot;
use crate::translate::type_url;

/// How many unanswered nonces are remembered (to name the version an ACK/NACK refers to).
const PENDING_NONCES: usize = 64;

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name → version Envoy has.
    known: BTreeMap<String, String>,
}

impl TypeState {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One Delta stream. See the module docs.
#[derive(Debug, Default)]
pub struct DeltaStream {
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    /// nonce → (type, snapshot version) of responses not yet ACKed/NACKed.
    pending: BTreeMap<u64, (String, String)>,
}

/// What one type needs: resources to add or update, names to remove.
struct Diff {
    upserts: Vec<Resource>,
    removals: Vec<String>,
}

impl DeltaStream {
    pub fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: Option<&Snapshot>,
    ) -> Outcome<DeltaDiscoveryResponse> {
        let mut outcome = Outcome::default();
        let type_url = request.type_url.as_str();
        if !type_url::ALL.contains(&type_url) {
            outcome.events.push(Event::UnknownType { type_url: type_url.to_string() });
            return outcome;
        }
        if !request.response_nonce.is_empty() {
            let sent = request.response_nonce.parse::<u64>().ok().and_then(|n| self.pending.remove(&n));
            let version = sent.map(|(_, version)| version).unwrap_or_default();
            outcome.events.push(match &request.error_detail {
                Some(error) => Event::Nack { type_url: type_url.to_string(), version, message: error.message.clone() },
                None => Event::Ack { type_url: type_url.to_string(), version },
            });
        }
        let first = !self.types.contains_key(type_url);
        let state = self.types.entry(type_url.to_string()).or_default();
        if first {
            // Legacy wildcard: a first request for LDS/CDS without names means "everything".
            state.wildcard = request.resource_names_subscribe.is_empty() && is_wildcard_type(type_url);
            state.known = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| (name.clone(), version.clone()))
                .collect();
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.known.remove(name);
            }
        }
        if let Some(snapshot) = snapshot {
            let diff = self.diff(type_url, snapshot);
            if !diff.upserts.is_empty() || !diff.removals.is_empty() {
                outcome.push(self.respond(type_url, snapshot, diff));
            }
        }
        outcome
    }

    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Outcome<DeltaDiscoveryResponse> {
        let mut outcome = Outcome::default();
        let mut removals_later: Vec<(&'static str, Vec<String>)> = Vec::new();
        for type_url in type_url::ALL {
            if !self.types.contains_key(type_url) {
                continue;
            }
            let mut diff = self.diff(type_url, snapshot);
            if matches!(type_url, type_url::CLUSTER | type_url::SECRET) && !diff.removals.is_empty() {
                removals_later.push((type_url, std::mem::take(&mut diff.removals)));
            }
            if !diff.upserts.is_empty() || !diff.removals.is_empty() {
                outcome.push(self.respond(type_url, snapshot, diff));
            }
        }
        for (type_url, removals) in removals_later {
            let diff = Diff { upserts: Vec::new(), removals };
            outcome.push(self.respond(type_url, snapshot, diff));
        }
        outcome
    }

    fn diff(&self, type_url: &str, snapshot: &Snapshot) -> Diff {
        let Some(state) = self.types.get(type_url) else {
            return Diff { upserts: Vec::new(), removals: Vec::new() };
        };
        let available = snapshot.resources(type_url);
        let upserts = available
            .iter()
            .filter(|(name, packed)| state.covers(name) && state.known.get(*name) != Some(&packed.version))
            .map(|(name, packed)| Resource {
                name: name.clone(),
                version: packed.version.clone(),
                resource: Some(packed.any.clone()),
                ..Default::default()
            })
            .collect();
        let removals = state.known.keys().filter(|name| !available.contains_key(*name)).cloned().collect();
        Diff { upserts, removals }
    }

    fn respond(&mut self, type_url: &str, snapshot: &Snapshot, diff: Diff) -> DeltaDiscoveryResponse {
        self.nonce += 1;
        self.pending.insert(self.nonce, (type_url.to_string(), snapshot.version.clone()));
        while self.pending.len() > PENDING_NONCES {
            self.pending.pop_first();
        }
        if let Some(state) = self.types.get_mut(type_url) {
            for resource in &diff.upserts {
                state.known.insert(resource.name.clone(), resource.version.clone());
            }
            for name in &diff.removals {
                state.known.remove(name);
            }
        }
        DeltaDiscoveryResponse {
            system_version_info: snapshot.version.clone(),
            resources: diff.upserts,
            type_url: type_url.to_string(),
            removed_resources: diff.removals,
            nonce: self.nonce.to_string(),
            ..Default::default()
        }
    }
}
