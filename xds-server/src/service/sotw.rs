//! State-of-the-world ADS, one stream: a synchronous state machine.
//!
//! Per resource type: the subscription (wildcard or names), the nonce of the last response,
//! and what that response held. The rules (`REFERENCE.md`):
//! - a request whose nonce is not the last one sent for its type is stale: ignored;
//! - an ACK (nonce, no `error_detail`) is recorded, a NACK is recorded and logged — neither
//!   makes meshgate send anything;
//! - meshgate sends a type when it is first requested, when its subscription changes, and
//!   when a new snapshot changes what the subscription covers.
//!
//! Make before break on a new snapshot: types go out in [`type_url::ALL`] order (secrets,
//! clusters, extension configs, listeners, routes); when clusters disappear, the cluster
//! set first goes out as *old ∪ new* and the final set only after the routes, so no route
//! ever names a cluster Envoy has already dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::{is_wildcard_type, Event, Outcome};
use crate::snapshot::{ByName, Snapshot};
use crate::translate::{type_url, Packed};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    Wildcard,
    Names(BTreeSet<String>),
}

impl Subscription {
    fn from_request(type_url: &str, names: &[String]) -> Subscription {
        if names.iter().any(|n| n == "*") || (names.is_empty() && is_wildcard_type(type_url)) {
            Subscription::Wildcard
        } else {
            Subscription::Names(names.iter().cloned().collect())
        }
    }

    fn covers(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(names) => names.contains(name),
        }
    }
}

#[derive(Debug)]
struct TypeState {
    subscription: Subscription,
    last_nonce: String,
    /// What the last response for this type held.
    sent: ByName,
    sent_version: String,
}

/// One SotW stream. See the module docs.
#[derive(Debug, Default)]
pub struct SotwStream {
    types: BTreeMap<String, TypeState>,
    nonce: u64,
}

fn same_content(a: &ByName, b: &ByName) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|((na, pa), (nb, pb))| na == nb && pa.version == pb.version)
}

impl SotwStream {
    /// Handles one request from Envoy, given the snapshot currently published (if any).
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: Option<&Snapshot>,
    ) -> Outcome<DiscoveryResponse> {
        let mut outcome = Outcome::default();
        let type_url = request.type_url.as_str();
        if !type_url::ALL.contains(&type_url) {
            outcome.events.push(Event::UnknownType { type_url: type_url.to_string() });
            return outcome;
        }
        let nonce = request.response_nonce.as_str();
        let previous = self.types.get(type_url);
        if let Some(state) = previous {
            if !nonce.is_empty() && nonce != state.last_nonce {
                return outcome; // stale: answers a response that has been superseded
            }
        }
        if let (Some(state), false) = (previous, nonce.is_empty()) {
            match &request.error_detail {
                Some(error) => outcome.events.push(Event::Nack {
                    type_url: type_url.to_string(),
                    version: state.sent_version.clone(),
                    message: error.message.clone(),
                }),
                None => outcome
                    .events
                    .push(Event::Ack { type_url: type_url.to_string(), version: request.version_info.clone() }),
            }
        }
        let subscription = Subscription::from_request(type_url, &request.resource_names);
        let changed = match self.types.get_mut(type_url) {
            Some(state) if state.subscription == subscription => false,
            Some(state) => {
                state.subscription = subscription;
                true
            }
            None => {
                self.types.insert(
                    type_url.to_string(),
                    TypeState {
                        subscription,
                        last_nonce: String::new(),
                        sent: ByName::new(),
                        sent_version: String::new(),
                    },
                );
                true
            }
        };
        if let (true, Some(snapshot)) = (changed, snapshot) {
            let desired = self.desired(type_url, snapshot);
            outcome.push(self.respond(type_url, &snapshot.version, desired));
        }
        outcome
    }

    /// Brings every requested type up to `snapshot`, in make-before-break order.
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Outcome<DiscoveryResponse> {
        let mut outcome = Outcome::default();
        let mut finish_later: Vec<(&'static str, ByName)> = Vec::new();
        for type_url in type_url::ALL {
            let Some(state) = self.types.get(type_url) else {
                continue;
            };
            let desired = self.desired(type_url, snapshot);
            let leaving: Vec<(String, Arc<Packed>)> = state
                .sent
                .iter()
                .filter(|(name, _)| !desired.contains_key(*name))
                .map(|(name, packed)| (name.clone(), packed.clone()))
                .collect();
            if type_url == type_url::CLUSTER && !leaving.is_empty() {
                let mut union = desired.clone();
                union.extend(leaving);
                if !same_content(&union, &state.sent) {
                    let version = format!("{}-transition", snapshot.version);
                    outcome.push(self.respond(type_url, &version, union));
                }
                finish_later.push((type_url, desired));
            } else if !same_content(&desired, &state.sent) {
                outcome.push(self.respond(type_url, &snapshot.version, desired));
            }
        }
        for (type_url, desired) in finish_later {
            outcome.push(self.respond(type_url, &snapshot.version, desired));
        }
        outcome
    }

    fn desired(&self, type_url: &str, snapshot: &Snapshot) -> ByName {
        let Some(state) = self.types.get(type_url) else {
            return ByName::new();
        };
        snapshot
            .resources(type_url)
            .iter()
            .filter(|(name, _)| state.subscription.covers(name))
            .map(|(name, packed)| (name.clone(), packed.clone()))
            .collect()
    }

    fn respond(&mut self, type_url: &str, version: &str, resources: ByName) -> DiscoveryResponse {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let response = DiscoveryResponse {
            version_info: version.to_string(),
            resources: resources.values().map(|p| p.any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        if let Some(state) = self.types.get_mut(type_url) {
            state.last_nonce = nonce;
            state.sent = resources;
            state.sent_version = version.to_string();
        }
        response
    }
}
