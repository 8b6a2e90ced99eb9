//! The control plane over real gRPC, without Envoy: a tonic ADS client (state of the world
//! and Delta) against `meshgate::serve::start`, registry edits on disk, and the admin API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshgate::envoy_admin;
use meshgate::serve::{self, Running, StartOptions, WasmDelivery};
use meshgate::translate::type_url;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const REGISTRY: &str = "\
listener: { port: 0 }
servers:
  - name: crm
    url: http://127.0.0.1:9101/mcp
    credentials: { value_env: MESHGATE_ADS_TEST_TOKEN, prefix: 'Bearer ' }
    tools: [{ name: get_customer, description: Look a customer up }]
";
const TOKEN: &str = "ads-test-token-value";
/// A push must arrive within this after a registry edit.
const PUSH_WITHIN: Duration = Duration::from_secs(3);
/// ...and nothing may arrive within this after an ACK or a NACK.
const QUIET_FOR: Duration = Duration::from_millis(700);

async fn start(dir: &Path) -> Running {
    set_env();
    support::start_serve(dir, REGISTRY).await
}

/// The registry reads the credential from meshgate's environment.
fn set_env() {
    // `set_var` is safe on edition 2021; every test sets the same value.
    std::env::set_var("MESHGATE_ADS_TEST_TOKEN", TOKEN);
}

fn node(id: &str) -> Option<Node> {
    Some(Node { id: id.to_string(), cluster: "test".to_string(), ..Default::default() })
}

fn edit(dir: &Path, text: &str) {
    // Replace the file the way editors do: write aside, rename over.
    let tmp = dir.join(".registry.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("registry.yaml")).unwrap();
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn connect(running: &Running) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", running.xds)).await.unwrap();
        let (tx, requests) = mpsc::channel(16);
        let rx = client.stream_aggregated_resources(ReceiverStream::new(requests)).await.unwrap().into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self, within: Duration) -> Option<DiscoveryResponse> {
        tokio::time::timeout(within, self.rx.message()).await.ok().map(|m| m.unwrap().expect("stream open"))
    }
}

async fn next(rx: &mut Streaming<DeltaDiscoveryResponse>, within: Duration) -> Option<DeltaDiscoveryResponse> {
    tokio::time::timeout(within, rx.message()).await.ok().map(|m| m.unwrap().expect("open"))
}

async fn get(running: &Running, path: &str) -> (u16, String) {
    let response = envoy_admin::get(running.admin, path).await.unwrap();
    (response.status, String::from_utf8_lossy(&response.body).into_owned())
}

async fn status(running: &Running) -> serde_json::Value {
    serde_json::from_str(&get(running, "/status").await.1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_push_ack_nack_and_live_edits() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let mut envoy = Sotw::connect(&running).await;

    envoy
        .send(DiscoveryRequest { node: node("sotw-1"), type_url: type_url::CLUSTER.to_string(), ..Default::default() })
        .await;
    let first = envoy.next(PUSH_WITHIN).await.expect("clusters");
    assert_eq!(first.resources.len(), 1);
    assert_eq!(first.version_info, running.version);

    // ACK: recorded, not answered.
    envoy
        .send(DiscoveryRequest {
            version_info: first.version_info.clone(),
            type_url: type_url::CLUSTER.to_string(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await;
    assert!(envoy.next(QUIET_FOR).await.is_none(), "an ACK is not answered");
    let s = status(&running).await;
    assert_eq!(s["nodes"]["sotw-1"]["acked"]["clusters"], running.version);
    assert_eq!(s["nodes"]["sotw-1"]["streams"], 1);
    assert_eq!(s["nodes"]["sotw-1"]["api"], "sotw");

    // A second server appears: pushed without asking.
    let two = format!("{REGISTRY}  - {{ name: docs, url: 'http://127.0.0.1:9102/mcp' }}\n");
    edit(dir.path(), &two);
    let pushed = envoy.next(PUSH_WITHIN).await.expect("a push after the edit");
    assert_eq!(pushed.type_url, type_url::CLUSTER);
    assert_eq!(pushed.resources.len(), 2);
    assert_ne!(pushed.version_info, running.version);

    // NACK it: recorded with Envoy's words, counted, never resent.
    envoy
        .send(DiscoveryRequest {
            version_info: first.version_info.clone(),
            type_url: type_url::CLUSTER.to_string(),
            response_nonce: pushed.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "cluster mcp-docs: no healthy upstream, or so".to_string(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    assert!(envoy.next(QUIET_FOR).await.is_none(), "a NACK is not answered");
    let s = status(&running).await;
    assert_eq!(s["nacks_total"], 1);
    assert_eq!(s["nodes"]["sotw-1"]["nacks"], 1);
    assert_eq!(s["nodes"]["sotw-1"]["last_nack"]["message"], "cluster mcp-docs: no healthy upstream, or so");
    assert_eq!(s["nodes"]["sotw-1"]["last_nack"]["rejected_version"], pushed.version_info);

    // An invalid edit: refused with file and line, nothing pushed, old snapshot kept.
    edit(dir.path(), &format!("{two}polcy: {{}}\n"));
    assert!(envoy.next(Duration::from_millis(1500)).await.is_none());
    let s = status(&running).await;
    let errors = s["last_error"]["errors"].as_array().expect("an error");
    let line = errors[0].as_str().unwrap();
    assert!(
        line.ends_with("registry.yaml:8: polcy: unknown field `polcy`, expected one of listener, admin, servers, auth, policy, limits, envoy")
            || line.contains("registry.yaml:8: polcy: unknown field"),
        "{line}"
    );
    assert_eq!(s["version"], pushed.version_info);

    drop(envoy);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_differences_only() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", running.xds)).await.unwrap();
    let (tx, requests) = mpsc::channel(16);
    let mut rx = client.delta_aggregated_resources(ReceiverStream::new(requests)).await.unwrap().into_inner();

    tx.send(DeltaDiscoveryRequest {
        node: node("delta-1"),
        type_url: type_url::CLUSTER.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut rx, PUSH_WITHIN).await.expect("clusters");
    assert_eq!(first.resources.len(), 1);
    assert_eq!(first.resources[0].name, "mcp-crm");
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.to_string(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(next(&mut rx, QUIET_FOR).await.is_none());

    // The secret, by name; its value travels only here.
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::SECRET.to_string(),
        resource_names_subscribe: vec!["meshgate-credential-crm".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let secret = next(&mut rx, PUSH_WITHIN).await.expect("secret");
    let bytes = &secret.resources[0].resource.as_ref().unwrap().value;
    assert!(bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));

    edit(dir.path(), &format!("{REGISTRY}  - {{ name: docs, url: 'http://127.0.0.1:9102/mcp' }}\n"));
    let added = next(&mut rx, PUSH_WITHIN).await.expect("push");
    assert_eq!(added.type_url, type_url::CLUSTER);
    let names: Vec<&str> = added.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["mcp-docs"], "only what changed");

    edit(dir.path(), REGISTRY);
    let removed = next(&mut rx, PUSH_WITHIN).await.expect("push");
    assert_eq!(removed.removed_resources, ["mcp-docs"]);

    // Nothing of the secret in the admin API.
    for path in ["/status", "/registry", "/catalog"] {
        let (code, body) = get(&running, path).await;
        assert_eq!(code, 200, "{path}");
        assert!(!body.contains(TOKEN), "{path}: {body}");
    }
    let s = status(&running).await;
    assert_eq!(s["nodes"]["delta-1"]["api"], "delta");
    drop(tx);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    assert_eq!(get(&running, "/healthz").await, (200, "ok\n".to_string()));
    let (code, body) = get(&running, "/readyz").await;
    assert_eq!(code, 200);
    assert!(body.contains(&running.version), "{body}");
    let catalog: serde_json::Value = serde_json::from_str(&get(&running, "/catalog").await.1).unwrap();
    // The declared tool, whatever discovery finds at 127.0.0.1:9101 (usually nothing; the
    // port is shared with a demo that may run on this machine): its declaration wins.
    let server = &catalog["servers"][0];
    assert_eq!((&server["name"], &server["path"]), (&"crm".into(), &"/mcp/crm".into()), "{catalog}");
    let declared = server["tools"].as_array().unwrap().iter().find(|t| t["name"] == "get_customer").unwrap();
    assert_eq!(declared["description"], "Look a customer up", "{catalog}");
    assert!(declared["source"].as_str().unwrap().contains("registry"), "{catalog}");
    assert!(server["discovery"]["status"].is_string(), "{catalog}");
    let registry: serde_json::Value = serde_json::from_str(&get(&running, "/registry").await.1).unwrap();
    assert_eq!(
        registry["servers"][0]["credentials"],
        serde_json::json!({ "header": "authorization", "prefix": "Bearer ", "source": { "value_env": "MESHGATE_ADS_TEST_TOKEN" }, "value": "[redacted]" })
    );
    // The module is only served with --wasm-url.
    assert_eq!(get(&running, "/wasm/meshgate.wasm").await.0, 404);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_is_served_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    set_env();
    let module = support::write(dir.path(), "m.wasm", support::minimal_proxy_wasm());
    support::write(dir.path(), "registry.yaml", REGISTRY);
    let running = serve::start(&StartOptions {
        registry: dir.path().join("registry.yaml"),
        xds_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        wasm: WasmDelivery::remote("http://meshgate:18001/wasm/meshgate.wasm", &module).unwrap(),
        native: Default::default(),
        security: Default::default(),
    })
    .await
    .unwrap();
    let response = envoy_admin::get(running.admin, "/wasm/meshgate.wasm").await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, support::minimal_proxy_wasm());
    let status = status(&running).await;
    assert_eq!(status["resources"]["clusters"], 2, "plus the fetch cluster");
    running.stop().await;
}

/// The stream bound over real gRPC: with room for one stream, another is refused with
/// `RESOURCE_EXHAUSTED` (which Envoy retries with backoff, reaching another replica when
/// there is one), and the slot is free again once the first stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_bound_are_refused_with_resource_exhausted() {
    let control = meshgate::control::ControlPlane::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(meshgate::service::AdsService::server_with_limit(control, 1))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{address}")).await.unwrap();
    let open = |client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>, id: &str| {
        let (tx, rx) = mpsc::channel(4);
        let request =
            DiscoveryRequest { node: node(id), type_url: type_url::CLUSTER.to_string(), ..Default::default() };
        tx.try_send(request).unwrap();
        let mut client = client.clone();
        async move { (tx, client.stream_aggregated_resources(ReceiverStream::new(rx)).await) }
    };
    let (first_tx, first) = open(&mut client, "first").await;
    let first = first.expect("the first stream is served");
    let (_tx, refused) = open(&mut client, "second").await;
    let refused = refused.expect_err("a second stream is over the bound");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("at most 1 ADS streams"), "{refused:?}");
    drop((first_tx, first));
    let mut reopened = None;
    for _ in 0..100 {
        let (tx, again) = open(&mut client, "third").await;
        if let Ok(stream) = again {
            reopened = Some((tx, stream));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "the first stream's slot is freed once it ends");
    server.abort();
}
