//! The ADS state machines, driven directly: the protocol rules without gRPC or Envoy.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::delta::DeltaStream;
use super::sotw::SotwStream;
use super::Event;
use crate::snapshot::Snapshot;
use crate::test_support::registry;
use crate::translate::{translate, type_url, TranslateOptions, WasmSource};

fn snapshot(servers: &[&str], allow: &str) -> Snapshot {
    let mut yaml = String::from("listener: { port: 0 }\nservers:\n");
    for (i, name) in servers.iter().enumerate() {
        yaml.push_str(&format!("  - {{ name: {name}, url: 'http://127.0.0.1:{}/mcp' }}\n", 9000 + i));
    }
    yaml.push_str(&format!("policy:\n  roles:\n    r: {{ allow: ['{allow}'] }}\n"));
    let options = TranslateOptions { wasm: WasmSource::Local { path: "/m.wasm".into() }, native: Default::default() };
    Snapshot::new(&translate(&registry(&yaml), &options).expect("translate")).expect("snapshot")
}

fn sotw_request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn nack(mut request: DiscoveryRequest, message: &str) -> DiscoveryRequest {
    request.error_detail = Some(RpcStatus { code: 3, message: message.to_string(), details: Vec::new() });
    request
}

fn names_of(response: &DiscoveryResponse) -> Vec<String> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    response
        .resources
        .iter()
        .map(|any| {
            if response.type_url == type_url::CLUSTER {
                Cluster::decode(any.value.as_slice()).map(|c| c.name).unwrap_or_default()
            } else {
                any.type_url.clone()
            }
        })
        .collect()
}

/// Subscribes a SotW stream to every type the way Envoy does; returns it with no pending
/// responses (all ACKed).
fn subscribed_sotw(snap: &Snapshot) -> SotwStream {
    let mut stream = SotwStream::default();
    for (type_url, names) in [
        (type_url::CLUSTER, vec![]),
        (type_url::LISTENER, vec![]),
        (type_url::ROUTE, vec!["meshgate"]),
        (type_url::EXTENSION_CONFIG, vec!["meshgate.wasm"]),
    ] {
        let out = stream.on_request(&sotw_request(type_url, &names, "", ""), Some(snap));
        assert_eq!(out.responses.len(), 1, "{type_url}");
        let response = &out.responses[0];
        let ack = sotw_request(type_url, &names, &response.version_info, &response.nonce);
        let out = stream.on_request(&ack, Some(snap));
        assert!(out.responses.is_empty(), "an ACK is never answered");
    }
    stream
}

#[test]
fn sotw_first_request_ack_nack_and_stale_nonces() {
    let snap = snapshot(&["a", "b"], "a/x");
    let mut stream = SotwStream::default();

    let out = stream.on_request(&sotw_request(type_url::CLUSTER, &[], "", ""), Some(&snap));
    assert_eq!(out.responses.len(), 1);
    let first = &out.responses[0];
    assert_eq!(first.version_info, snap.version);
    assert_eq!(names_of(first), ["mcp-a", "mcp-b"]);
    assert!(out.events.is_empty());

    let ack = sotw_request(type_url::CLUSTER, &[], &snap.version, &first.nonce);
    let out = stream.on_request(&ack, Some(&snap));
    assert!(out.responses.is_empty());
    assert_eq!(out.events, [Event::Ack { type_url: type_url::CLUSTER.into(), version: snap.version.clone() }]);

    // The same ACK again, or any old nonce: stale, ignored.
    let stale = sotw_request(type_url::CLUSTER, &[], &snap.version, "999");
    let out = stream.on_request(&stale, Some(&snap));
    assert!(out.responses.is_empty() && out.events.is_empty());

    // A NACK is recorded and not answered.
    let out = stream.on_request(&nack(ack, "bad cluster"), Some(&snap));
    assert!(out.responses.is_empty());
    assert_eq!(
        out.events,
        [Event::Nack {
            type_url: type_url::CLUSTER.into(),
            version: snap.version.clone(),
            message: "bad cluster".into()
        }]
    );
}

#[test]
fn sotw_sends_only_when_names_or_content_change() {
    let snap = snapshot(&["a"], "a/x");
    let mut stream = subscribed_sotw(&snap);
    // The same snapshot again: nothing.
    assert!(stream.on_snapshot(&snap).responses.is_empty());
    // A policy edit: only the extension config changes.
    let policy = snapshot(&["a"], "a/y");
    let out = stream.on_snapshot(&policy);
    let types: Vec<&str> = out.responses.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, [type_url::EXTENSION_CONFIG]);
    // Unsubscribing the route config (names change) is answered, with nothing.
    let out = stream.on_request(&sotw_request(type_url::ROUTE, &[], "", &last_nonce(&out.responses)), Some(&policy));
    // (the nonce above belongs to ECDS, so for RDS it is stale)
    assert!(out.responses.is_empty());
}

fn last_nonce(responses: &[DiscoveryResponse]) -> String {
    responses.last().map(|r| r.nonce.clone()).unwrap_or_default()
}

#[test]
fn sotw_requests_before_the_first_snapshot_are_answered_when_it_comes() {
    let mut stream = SotwStream::default();
    let out = stream.on_request(&sotw_request(type_url::CLUSTER, &[], "", ""), None);
    assert!(out.responses.is_empty());
    let snap = snapshot(&["a"], "a/x");
    let out = stream.on_snapshot(&snap);
    assert_eq!(out.responses.len(), 1);
    assert_eq!(out.responses[0].type_url, type_url::CLUSTER);
}

#[test]
fn sotw_adds_clusters_first_and_removes_them_last() {
    let one = snapshot(&["a"], "a/x");
    let two = snapshot(&["a", "b"], "a/x");
    let mut stream = subscribed_sotw(&one);

    let out = stream.on_snapshot(&two);
    let types: Vec<&str> = out.responses.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, [type_url::CLUSTER, type_url::EXTENSION_CONFIG, type_url::ROUTE]);
    assert_eq!(names_of(&out.responses[0]), ["mcp-a", "mcp-b"]);
    ack_all(&mut stream, &out.responses, &two);

    // Removing b: Envoy already has a and b, so the routes go first, then the clusters.
    let out = stream.on_snapshot(&one);
    let types: Vec<&str> = out.responses.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, [type_url::EXTENSION_CONFIG, type_url::ROUTE, type_url::CLUSTER]);
    assert_eq!(names_of(&out.responses[2]), ["mcp-a"]);
    assert_eq!(out.responses[2].version_info, one.version);
    ack_all(&mut stream, &out.responses, &one);

    // Replacing a by c: first the union (c added, a kept), the removal only after the routes.
    let c = snapshot(&["c"], "c/x");
    let out = stream.on_snapshot(&c);
    let types: Vec<&str> = out.responses.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, [type_url::CLUSTER, type_url::EXTENSION_CONFIG, type_url::ROUTE, type_url::CLUSTER]);
    assert_eq!(names_of(&out.responses[0]), ["mcp-a", "mcp-c"]);
    assert_eq!(out.responses[0].version_info, format!("{}-transition", c.version));
    assert_eq!(names_of(&out.responses[3]), ["mcp-c"]);
    assert_eq!(out.responses[3].version_info, c.version);
}

fn ack_all(stream: &mut SotwStream, responses: &[DiscoveryResponse], snap: &Snapshot) {
    for response in responses {
        let names: Vec<&str> = match response.type_url.as_str() {
            type_url::ROUTE => vec!["meshgate"],
            type_url::EXTENSION_CONFIG => vec!["meshgate.wasm"],
            _ => vec![],
        };
        let ack = sotw_request(&response.type_url, &names, &response.version_info, &response.nonce);
        let out = stream.on_request(&ack, Some(snap));
        assert!(out.responses.is_empty());
    }
}

fn delta_request(type_url: &str, subscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn upserted(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn delta_wildcard_ack_nack_and_diffs() {
    let one = snapshot(&["a"], "a/x");
    let two = snapshot(&["a", "b"], "a/x");
    let mut stream = DeltaStream::default();

    let out = stream.on_request(&delta_request(type_url::CLUSTER, &[], ""), Some(&one));
    assert_eq!(out.responses.len(), 1);
    assert_eq!(upserted(&out.responses[0]), ["mcp-a"]);
    let nonce = out.responses[0].nonce.clone();

    let out = stream.on_request(&delta_request(type_url::CLUSTER, &[], &nonce), Some(&one));
    assert!(out.responses.is_empty());
    assert_eq!(out.events, [Event::Ack { type_url: type_url::CLUSTER.into(), version: one.version.clone() }]);

    // Only the new cluster goes out.
    let out = stream.on_snapshot(&two);
    assert_eq!(out.responses.len(), 1);
    assert_eq!(upserted(&out.responses[0]), ["mcp-b"]);
    assert!(out.responses[0].removed_resources.is_empty());

    // A NACK is recorded, nothing is resent.
    let mut refused = delta_request(type_url::CLUSTER, &[], &out.responses[0].nonce);
    refused.error_detail = Some(RpcStatus { code: 3, message: "no".into(), details: Vec::new() });
    let out = stream.on_request(&refused, Some(&two));
    assert!(out.responses.is_empty());
    assert!(matches!(&out.events[..], [Event::Nack { message, .. }] if message == "no"));

    // Removal.
    let out = stream.on_snapshot(&one);
    assert_eq!(out.responses.len(), 1);
    assert!(out.responses[0].resources.is_empty());
    assert_eq!(out.responses[0].removed_resources, ["mcp-b"]);
}

#[test]
fn delta_removes_clusters_after_routes() {
    let one = snapshot(&["a"], "a/x");
    let two = snapshot(&["a", "b"], "a/x");
    let mut stream = DeltaStream::default();
    for (type_url, names) in [
        (type_url::CLUSTER, vec![]),
        (type_url::LISTENER, vec![]),
        (type_url::ROUTE, vec!["meshgate"]),
        (type_url::EXTENSION_CONFIG, vec!["meshgate.wasm"]),
    ] {
        let out = stream.on_request(&delta_request(type_url, &names, ""), Some(&two));
        assert_eq!(out.responses.len(), 1);
    }
    let out = stream.on_snapshot(&one);
    let order: Vec<(&str, usize, usize)> = out
        .responses
        .iter()
        .map(|r| (type_url::short(&r.type_url), r.resources.len(), r.removed_resources.len()))
        .collect();
    assert_eq!(order, [("extension_configs", 1, 0), ("routes", 1, 0), ("clusters", 0, 1)]);
}

#[test]
fn delta_reconnect_with_current_versions_sends_nothing() {
    let snap = snapshot(&["a", "b"], "a/x");
    let initial: HashMap<String, String> =
        snap.resources(type_url::CLUSTER).iter().map(|(name, packed)| (name.clone(), packed.version.clone())).collect();
    let mut stream = DeltaStream::default();
    let mut request = delta_request(type_url::CLUSTER, &[], "");
    request.initial_resource_versions = initial;
    let out = stream.on_request(&request, Some(&snap));
    assert!(out.responses.is_empty());

    // One stale version and one resource meshgate no longer has.
    let mut request = delta_request(type_url::CLUSTER, &[], "");
    request.initial_resource_versions =
        HashMap::from([("mcp-a".to_string(), "old".to_string()), ("mcp-gone".to_string(), "v".to_string())]);
    let mut stream = DeltaStream::default();
    let out = stream.on_request(&request, Some(&snap));
    assert_eq!(upserted(&out.responses[0]), ["mcp-a", "mcp-b"]);
    assert_eq!(out.responses[0].removed_resources, ["mcp-gone"]);
}

#[test]
fn delta_subscribe_and_unsubscribe_names() {
    let snap = snapshot(&["a"], "a/x");
    let mut stream = DeltaStream::default();
    let out = stream.on_request(&delta_request(type_url::ROUTE, &["meshgate"], ""), Some(&snap));
    assert_eq!(upserted(&out.responses[0]), ["meshgate"]);
    let mut unsubscribe = delta_request(type_url::ROUTE, &[], "");
    unsubscribe.resource_names_unsubscribe = vec!["meshgate".to_string()];
    let out = stream.on_request(&unsubscribe, Some(&snap));
    assert!(out.responses.is_empty());
    // A policy edit does not resurrect an unsubscribed route config.
    assert!(stream.on_snapshot(&snapshot(&["a"], "a/y")).responses.is_empty());
}

/// The stream bound: slots up to the limit, the next refused, a closed stream's slot reused.
#[test]
fn ads_streams_are_bounded() {
    use super::StreamSlot;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let open = Arc::new(AtomicUsize::new(0));
    let slots: Vec<StreamSlot> = (0..3).map(|_| StreamSlot::acquire(&open, 3).expect("below the limit")).collect();
    assert!(StreamSlot::acquire(&open, 3).is_none(), "a fourth stream is refused");
    assert_eq!(open.load(Ordering::Acquire), 3);
    drop(slots);
    assert_eq!(open.load(Ordering::Acquire), 0);
    let again = StreamSlot::acquire(&open, 3);
    assert!(again.is_some(), "closed streams free their slots");
}
