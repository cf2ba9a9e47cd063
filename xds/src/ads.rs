//! The Aggregated Discovery Service: state-of-the-world and delta streams over one cache.
//!
//! Each stream is a task that reacts to client requests (subscriptions, ACKs, NACKs) and to
//! cache changes, and sends what its client is missing. Nonces map every response to the type
//! version it completes, so an ACK advances what the registry believes the client holds and a
//! NACK is logged and counted without advancing it.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::acks::{StreamId, StreamRegistry};
use crate::cache::{Entry, ResourceCache, Subscription};
use crate::metrics::Metrics;

/// Resources per delta response; a larger change (an initial sync of 100,000 routes) is split,
/// with `system_version_info` `"<version>+more"` on every part but the last, so a client knows
/// when it holds the complete set.
pub const CHUNK: usize = 5_000;
/// Suffix of `system_version_info` on all but the last part of a split response.
pub const MORE_SUFFIX: &str = "+more";

/// What every stream shares.
#[derive(Debug, Clone)]
pub struct AdsContext {
    pub cache: Arc<ResourceCache>,
    pub registry: Arc<StreamRegistry>,
    pub metrics: Metrics,
    /// Flips to true when the server shuts down; streams end.
    pub shutdown: watch::Receiver<bool>,
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Ads {
    ctx: AdsContext,
}

impl Ads {
    pub fn new(ctx: AdsContext) -> Self {
        Ads { ctx }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn any(type_url: &str, e: &Entry) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: e.body.to_vec(),
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let session = SotwSession::new(self.ctx.clone(), tx);
        tokio::spawn(run(session, request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let session = DeltaSession::new(self.ctx.clone(), tx);
        tokio::spawn(run(session, request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How long a response may go unanswered before the next one is sent regardless.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// A pending response: the type it was for, and the type version an ACK of it completes
/// (`None` for a non-final part of a split response).
type Pending = HashMap<String, (String, Option<u64>)>;

/// What both stream variants keep: the registry entry, the client's node id, and the nonces of
/// responses not yet ACKed or NACKed.
struct StreamCore {
    ctx: AdsContext,
    id: StreamId,
    kind: &'static str,
    node: String,
    pending: Pending,
    nonce: u64,
    /// The nonce of the newest response per type: while it is unanswered, changes accumulate
    /// and go out together in the response after its ACK (see [`StreamCore::awaiting_ack`]).
    newest: HashMap<String, (String, Instant)>,
}

impl StreamCore {
    fn new(ctx: AdsContext, kind: &'static str) -> Self {
        let id = ctx.registry.register("");
        ctx.metrics.stream_opened(kind);
        StreamCore {
            ctx,
            id,
            kind,
            node: String::new(),
            pending: HashMap::new(),
            nonce: 0,
            newest: HashMap::new(),
        }
    }

    /// Takes the node id from the first request that names one.
    fn learn_node(&mut self, node: Option<&Node>) {
        if self.node.is_empty()
            && let Some(n) = node
        {
            self.node = n.id.clone();
            self.ctx.registry.set_node(self.id, &self.node);
            tracing::info!(node = %self.node, "{} stream opened", self.kind);
        }
    }

    /// Records the ACK or NACK a request carries for an earlier response.
    fn settle(&mut self, nonce: &str, error: Option<&RpcStatus>) {
        if nonce.is_empty() {
            return;
        }
        let Some((t, version)) = self.pending.remove(nonce) else {
            return;
        };
        match error {
            Some(err) => {
                let node = self.ctx.registry.nack(self.id, &t, &err.message);
                self.ctx.metrics.nack(&t);
                tracing::warn!(node = %node, type_url = %t, nonce = %nonce, code = err.code, error = %err.message,
                    "client rejected a response (NACK); it keeps its last good version");
            }
            None => {
                self.ctx.metrics.ack(&t);
                if let Some(v) = version {
                    self.ctx.registry.ack(self.id, &t, v);
                }
            }
        }
    }

    /// A fresh nonce for a response of `type_url`; an ACK of it completes `version`.
    fn next_nonce(&mut self, type_url: &str, version: Option<u64>) -> String {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        self.pending
            .insert(nonce.clone(), (type_url.to_string(), version));
        self.newest
            .insert(type_url.to_string(), (nonce.clone(), Instant::now()));
        nonce
    }

    /// True while the client has not answered the newest response of `type_url` (for at most
    /// [`ACK_WAIT`]). Pushing only then keeps one response in flight per type: under a burst of
    /// route changes a gateway applies a few larger updates instead of one per change, and when
    /// changes are rare nothing waits (the ACK is long back).
    fn awaiting_ack(&self, type_url: &str) -> bool {
        self.newest.get(type_url).is_some_and(|(nonce, sent)| {
            self.pending.contains_key(nonce) && sent.elapsed() < ACK_WAIT
        })
    }
}

/// One ADS stream variant: how it reads requests and what it sends.
trait Session: Send + Sized + 'static {
    type Request: Send + 'static;
    fn core(&self) -> &StreamCore;
    fn on_request(&mut self, req: Self::Request);
    /// Sends whatever the client is missing; `Err` when the client is gone.
    fn push(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
}

/// The life of a stream: react to requests, cache changes and shutdown, push after each.
async fn run<S: Session>(mut session: S, mut inbound: Streaming<S::Request>) {
    let mut changes = session.core().ctx.cache.subscribe_changes();
    let mut shutdown = session.core().ctx.shutdown.clone();
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => session.on_request(req),
                Ok(None) => break,
                Err(e) => {
                    let core = session.core();
                    tracing::debug!(node = %core.node, error = %e, "{} stream ended", core.kind);
                    break;
                }
            },
            r = changes.changed() => if r.is_err() { break },
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
        if session.push().await.is_err() {
            break;
        }
    }
    let core = session.core();
    core.ctx.registry.unregister(core.id);
    core.ctx.metrics.stream_closed(core.kind);
    tracing::info!(node = %core.node, "{} stream closed", core.kind);
}

struct DeltaSession {
    core: StreamCore,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    subs: HashMap<String, Subscription>,
}

impl DeltaSession {
    fn new(ctx: AdsContext, tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>) -> Self {
        DeltaSession {
            core: StreamCore::new(ctx, "delta"),
            tx,
            subs: HashMap::new(),
        }
    }
}

impl Session for DeltaSession {
    type Request = DeltaDiscoveryRequest;

    fn core(&self) -> &StreamCore {
        &self.core
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) {
        self.core.learn_node(req.node.as_ref());
        let type_url = req.type_url;
        if type_url.is_empty() {
            return;
        }
        self.core
            .settle(&req.response_nonce, req.error_detail.as_ref());
        let first = !self.subs.contains_key(&type_url);
        let sub = self.subs.entry(type_url.clone()).or_default();
        if first {
            self.core.ctx.registry.subscribe(self.core.id, &type_url);
            // Legacy wildcard: a first request naming nothing subscribes to everything.
            sub.wildcard = req.resource_names_subscribe.is_empty();
            sub.known.extend(req.initial_resource_versions);
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
                sub.cursor = 0;
            } else {
                sub.dirty.insert(name.clone());
                sub.names.insert(name);
            }
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&name);
                sub.known.remove(&name);
            }
        }
    }

    async fn push(&mut self) -> Result<(), ()> {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        for type_url in types {
            if self.core.awaiting_ack(&type_url) {
                continue;
            }
            let Some(sub) = self.subs.get_mut(&type_url) else {
                continue;
            };
            let Some(delta) = self.core.ctx.cache.delta(&type_url, sub) else {
                continue;
            };
            let total = delta.resources.len();
            let mut parts: Vec<Vec<Resource>> = delta
                .resources
                .chunks(CHUNK)
                .map(|c| {
                    c.iter()
                        .map(|(name, e)| Resource {
                            name: name.clone(),
                            version: e.version.clone(),
                            resource: Some(any(&type_url, e)),
                            ..Default::default()
                        })
                        .collect()
                })
                .collect();
            if parts.is_empty() {
                parts.push(Vec::new());
            }
            let n = parts.len();
            let mut removed = Some(delta.removed);
            for (i, resources) in parts.into_iter().enumerate() {
                let last = i + 1 == n;
                let nonce = self
                    .core
                    .next_nonce(&type_url, last.then_some(delta.version));
                let count = resources.len();
                let resp = DeltaDiscoveryResponse {
                    system_version_info: if last {
                        delta.version.to_string()
                    } else {
                        format!("{}{MORE_SUFFIX}", delta.version)
                    },
                    resources,
                    type_url: type_url.clone(),
                    removed_resources: if last {
                        removed.take().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    nonce,
                    ..Default::default()
                };
                self.core.ctx.metrics.response(&type_url, count);
                self.tx.send(Ok(resp)).await.map_err(|_| ())?;
            }
            tracing::debug!(node = %self.core.node, type_url = %type_url, resources = total, version = delta.version, "delta sent");
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct SotwSub {
    names: HashSet<String>,
    sent: Option<u64>,
}

struct SotwSession {
    core: StreamCore,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    subs: HashMap<String, SotwSub>,
}

impl SotwSession {
    fn new(ctx: AdsContext, tx: mpsc::Sender<Result<DiscoveryResponse, Status>>) -> Self {
        SotwSession {
            core: StreamCore::new(ctx, "sotw"),
            tx,
            subs: HashMap::new(),
        }
    }
}

impl Session for SotwSession {
    type Request = DiscoveryRequest;

    fn core(&self) -> &StreamCore {
        &self.core
    }

    fn on_request(&mut self, req: DiscoveryRequest) {
        self.core.learn_node(req.node.as_ref());
        if req.type_url.is_empty() {
            return;
        }
        self.core
            .settle(&req.response_nonce, req.error_detail.as_ref());
        let first = !self.subs.contains_key(&req.type_url);
        if first {
            self.core
                .ctx
                .registry
                .subscribe(self.core.id, &req.type_url);
        }
        let sub = self.subs.entry(req.type_url).or_default();
        let names: HashSet<String> = req
            .resource_names
            .into_iter()
            .filter(|n| n != "*")
            .collect();
        if names != sub.names {
            sub.names = names;
            sub.sent = None;
        }
    }

    async fn push(&mut self) -> Result<(), ()> {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        for type_url in types {
            if self.core.awaiting_ack(&type_url) {
                continue;
            }
            let Some(sub) = self.subs.get_mut(&type_url) else {
                continue;
            };
            let Some((version, resources)) = self.core.ctx.cache.sotw(&type_url, &sub.names) else {
                continue;
            };
            if sub.sent == Some(version) {
                continue;
            }
            sub.sent = Some(version);
            let nonce = self.core.next_nonce(&type_url, Some(version));
            let count = resources.len();
            let resp = DiscoveryResponse {
                version_info: version.to_string(),
                resources: resources.iter().map(|(_, e)| any(&type_url, e)).collect(),
                type_url: type_url.clone(),
                nonce,
                ..Default::default()
            };
            self.core.ctx.metrics.response(&type_url, count);
            self.tx.send(Ok(resp)).await.map_err(|_| ())?;
        }
        Ok(())
    }
}
