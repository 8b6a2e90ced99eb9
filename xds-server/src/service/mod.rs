//! The ADS gRPC service: state of the world and Delta on one port.
//!
//! Each stream is a task that owns a synchronous state machine ([`sotw::SotwStream`],
//! [`delta::DeltaStream`]) and feeds it two inputs: Envoy's requests and new snapshots from
//! the [`ControlPlane`]'s watch channel. The machines return responses to send and events
//! (ACK, NACK, push) that this module logs and records for the admin API. This is the only
//! place errors turn into a gRPC `Status`.
//!
//! The gRPC plumbing is tonic's (HTTP/2, request framing and decoding) except for the
//! response side: each response is encoded once into a buffer of exactly its size, handed to
//! HTTP/2 and freed once written. tonic's generated server would encode into a per-stream
//! buffer that keeps, for the stream's lifetime, the capacity of the largest batch of
//! responses it ever sent (the whole configuration at connect): tens of KiB per connected
//! Envoy, measured with `benches/fleet` (BENCHMARKS.md, issue 20).

pub mod delta;
pub mod sotw;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::{BufferSettings, Streaming};
use tonic::server::NamedService;
use tonic::Status;

use crate::control::{Api, ControlPlane, StreamGuard};
use crate::snapshot::Snapshot;
use crate::translate::type_url;

/// Responses queued per stream before the stream task waits for Envoy to read.
const STREAM_BUFFER: usize = 16;
/// Initial size of a stream's request buffer (it grows for a larger request): Envoy's
/// requests are a few hundred bytes, its first one (node, initial versions) a few KiB.
const REQUEST_BUFFER: usize = 1024;
/// The gRPC service name and its two methods.
const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// A 1,000-server snapshot is a few MB; Envoy sends small requests.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// ADS streams one meshgate serves at once. Each costs about 40 KiB (BENCHMARKS.md, fleet
/// scale), so this bounds what connected Envoys (or anything naming itself one) can make
/// meshgate hold at about 400 MB; one more stream is refused with `RESOURCE_EXHAUSTED`,
/// which Envoy retries with backoff (reaching another replica when there is one).
pub const MAX_ADS_STREAMS: usize = 10_000;

/// One open ADS stream counted against a limit; released when dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    /// A slot if fewer than `max` are taken.
    pub fn acquire(open: &Arc<AtomicUsize>, max: usize) -> Option<StreamSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Something a stream did that is worth logging or recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ack {
        type_url: String,
        version: String,
    },
    Nack {
        type_url: String,
        /// The version meshgate had sent and Envoy refused.
        version: String,
        message: String,
    },
    /// A request for a type meshgate does not serve (ignored).
    UnknownType {
        type_url: String,
    },
}

/// What a state machine wants done after one input.
#[derive(Debug)]
pub struct Outcome<R> {
    pub responses: Vec<R>,
    pub events: Vec<Event>,
}

impl<R> Default for Outcome<R> {
    fn default() -> Self {
        Outcome { responses: Vec::new(), events: Vec::new() }
    }
}

impl<R> Outcome<R> {
    fn push(&mut self, response: R) {
        self.responses.push(response);
    }
}

/// LDS and CDS subscribe to everything when they name nothing (xDS "legacy wildcard").
pub fn is_wildcard_type(type_url: &str) -> bool {
    matches!(type_url, type_url::LISTENER | type_url::CLUSTER)
}

/// The two ADS variants, as the stream runner sees them.
trait Protocol: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Send + 'static + Described;
    const API: Api;

    fn node(request: &Self::Request) -> Option<&Node>;
    fn on_request(&mut self, request: &Self::Request, snapshot: Option<&Snapshot>) -> Outcome<Self::Response>;
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Outcome<Self::Response>;
}

/// What a response is, for the push log line.
trait Described {
    fn describe(&self) -> (&str, &str, usize, usize);
}

impl Described for DiscoveryResponse {
    fn describe(&self) -> (&str, &str, usize, usize) {
        (&self.type_url, &self.version_info, self.resources.len(), 0)
    }
}

impl Described for DeltaDiscoveryResponse {
    fn describe(&self) -> (&str, &str, usize, usize) {
        (&self.type_url, &self.system_version_info, self.resources.len(), self.removed_resources.len())
    }
}

impl Protocol for sotw::SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const API: Api = Api::Sotw;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn on_request(&mut self, request: &DiscoveryRequest, snapshot: Option<&Snapshot>) -> Outcome<DiscoveryResponse> {
        sotw::SotwStream::on_request(self, request, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Outcome<DiscoveryResponse> {
        sotw::SotwStream::on_snapshot(self, snapshot)
    }
}

impl Protocol for delta::DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const API: Api = Api::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: Option<&Snapshot>,
    ) -> Outcome<DeltaDiscoveryResponse> {
        delta::DeltaStream::on_request(self, request, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Outcome<DeltaDiscoveryResponse> {
        delta::DeltaStream::on_snapshot(self, snapshot)
    }
}

/// The ADS service, ready for tonic's `Server::add_service`. Construct with
/// [`AdsService::server`].
#[derive(Debug, Clone)]
pub struct AdsService {
    control: Arc<ControlPlane>,
    /// Streams open now, and how many may be (see [`MAX_ADS_STREAMS`]).
    open: Arc<AtomicUsize>,
    max_streams: usize,
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

type GrpcResponse = http::Response<tonic::body::Body>;

impl AdsService {
    /// The service, serving at most [`MAX_ADS_STREAMS`] streams at once.
    pub fn server(control: Arc<ControlPlane>) -> AdsService {
        AdsService::server_with_limit(control, MAX_ADS_STREAMS)
    }

    /// [`AdsService::server`] serving at most `max_streams` streams at once.
    pub fn server_with_limit(control: Arc<ControlPlane>, max_streams: usize) -> AdsService {
        AdsService { control, open: Arc::new(AtomicUsize::new(0)), max_streams }
    }

    /// Starts one stream: its task, and the response whose body carries what it sends.
    fn open<P: Protocol + Default>(&self, body: tonic::body::Body) -> Result<GrpcResponse, Status> {
        let Some(slot) = StreamSlot::acquire(&self.open, self.max_streams) else {
            tracing::warn!(max = self.max_streams, "ADS stream refused: meshgate serves its maximum of streams");
            return Err(Status::resource_exhausted(format!(
                "meshgate serves at most {} ADS streams at once",
                self.max_streams
            )));
        };
        let settings = BufferSettings::new(REQUEST_BUFFER, REQUEST_BUFFER);
        let decoder = tonic_prost::ProstDecoder::<P::Request>::new(settings);
        let inbound = Streaming::new_request(decoder, body, None, Some(MAX_MESSAGE_BYTES));
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
        let control = self.control.clone();
        tokio::spawn(async move {
            run_stream::<P>(control, inbound, tx).await;
            drop(slot);
        });
        // The stream's responses, then (when the stream task ends) gRPC's OK trailer.
        let frames = ReceiverStream::new(rx)
            .map(|message| Ok::<_, Infallible>(Frame::data(message)))
            .chain(tokio_stream::once(Ok(Frame::trailers(ok_trailers()))));
        let mut response = http::Response::new(tonic::body::Body::new(StreamBody::new(frames)));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        Ok(response)
    }
}

fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

/// One gRPC message on the wire: uncompressed flag, big-endian length, the message; in one
/// buffer of exactly that size.
fn grpc_frame<M: prost::Message>(message: &M) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| Status::internal(format!("a {len}-byte response is over the {MAX_MESSAGE_BYTES}-byte limit")))?;
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    message.encode(&mut buf).map_err(|e| Status::internal(format!("cannot encode a response: {e}")))?;
    Ok(Bytes::from(buf))
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = std::future::Ready<Result<GrpcResponse, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let opened = match request.uri().path() {
            SOTW_PATH => self.open::<sotw::SotwStream>(request.into_body()),
            DELTA_PATH => self.open::<delta::DeltaStream>(request.into_body()),
            other => Err(Status::unimplemented(format!("{other} is not an ADS method"))),
        };
        std::future::ready(Ok(opened.unwrap_or_else(|status| status.into_http())))
    }
}

/// One stream until Envoy goes away (or meshgate shuts down).
async fn run_stream<P: Protocol + Default>(
    control: Arc<ControlPlane>,
    mut inbound: Streaming<P::Request>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut machine = P::default();
    let mut snapshots = control.subscribe();
    // Requests are answered from the snapshot `on_snapshot` last handled, never from a newer
    // one published meanwhile: only `on_snapshot` orders a change make-before-break
    // (clusters before the routes naming them, routes before a cluster goes). An ACK read
    // just after a publish would otherwise push, say, routes to a cluster Envoy lacks.
    let mut current = snapshots.borrow_and_update().clone();
    let mut node = String::from("unknown");
    let mut guard: Option<StreamGuard> = None;
    'stream: loop {
        let outcome = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    if guard.is_none() {
                        if let Some(id) = P::node(&request).map(|n| n.id.clone()).filter(|id| !id.is_empty()) {
                            node = id;
                        }
                        tracing::info!(node = %node, api = ?P::API, "envoy connected");
                        guard = Some(control.stream_opened(&node, P::API));
                    }
                    machine.on_request(&request, current.as_deref())
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node = %node, %status, "ads stream ended");
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                current = snapshot.clone();
                match snapshot {
                    Some(snapshot) => machine.on_snapshot(&snapshot),
                    None => Outcome::default(),
                }
            }
        };
        for event in &outcome.events {
            record(&control, &node, event);
        }
        for response in outcome.responses {
            let (type_url, version, count, removed) = response.describe();
            tracing::info!(
                node = %node,
                resource_type = type_url::short(type_url),
                version,
                count,
                removed,
                "push"
            );
            let frame = match grpc_frame(&response) {
                Ok(frame) => frame,
                Err(status) => {
                    tracing::error!(node = %node, %status, "response not sent");
                    break 'stream;
                }
            };
            control.record_push();
            if tx.send(frame).await.is_err() {
                break 'stream; // Envoy went away
            }
        }
    }
    if guard.is_some() {
        tracing::info!(node = %node, "envoy disconnected");
    }
}

fn record(control: &ControlPlane, node: &str, event: &Event) {
    match event {
        Event::Ack { type_url, version } => {
            tracing::debug!(node, resource_type = type_url::short(type_url), version, "ack");
            control.record_ack(node, type_url, version);
        }
        Event::Nack { type_url, version, message } => {
            tracing::warn!(
                node,
                resource_type = type_url::short(type_url),
                version,
                "envoy rejected the update: {message}"
            );
            control.record_nack(node, type_url, version, message);
        }
        Event::UnknownType { type_url } => {
            tracing::debug!(node, type_url, "request for a type meshgate does not serve");
        }
    }
}
