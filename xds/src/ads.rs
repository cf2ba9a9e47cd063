//! The Aggregated Discovery Service: state-of-the-world and delta streams over one cache.
//!
//! Each stream is a task that reacts to client requests (subscriptions, ACKs, NACKs) and to
//! cache changes, and sends what its client is missing. Nonces map every response to the type
//! version it completes, so an ACK advances what the registry believes the client holds and a
//! NACK is logged and counted without advancing it.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
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
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let session = DeltaSession::new(self.ctx.clone(), tx);
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A pending response: the type it was for, and the type version an ACK of it completes
/// (`None` for a non-final part of a split response).
type Pending = HashMap<String, (String, Option<u64>)>;

struct DeltaSession {
    ctx: AdsContext,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    id: StreamId,
    node: String,
    subs: HashMap<String, Subscription>,
    pending: Pending,
    nonce: u64,
}

impl DeltaSession {
    fn new(ctx: AdsContext, tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>) -> Self {
        let id = ctx.registry.register("");
        ctx.metrics.stream_opened("delta");
        DeltaSession {
            ctx,
            tx,
            id,
            node: String::new(),
            subs: HashMap::new(),
            pending: HashMap::new(),
            nonce: 0,
        }
    }

    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let mut changes = self.ctx.cache.subscribe_changes();
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.on_request(req),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(node = %self.node, error = %e, "delta stream ended");
                        break;
                    }
                },
                r = changes.changed() => if r.is_err() { break },
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
            if self.push().await.is_err() {
                break;
            }
        }
        self.ctx.registry.unregister(self.id);
        self.ctx.metrics.stream_closed("delta");
        tracing::info!(node = %self.node, "delta stream closed");
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) {
        if self.node.is_empty()
            && let Some(n) = &req.node
        {
            self.node = n.id.clone();
            self.ctx.registry.set_node(self.id, &self.node);
            tracing::info!(node = %self.node, "delta stream opened");
        }
        let type_url = req.type_url;
        if type_url.is_empty() {
            return;
        }
        if !req.response_nonce.is_empty()
            && let Some((t, version)) = self.pending.remove(&req.response_nonce)
        {
            match &req.error_detail {
                Some(err) => {
                    let node = self.ctx.registry.nack(self.id, &t, &err.message);
                    self.ctx.metrics.nack(&t);
                    tracing::warn!(node = %node, type_url = %t, nonce = %req.response_nonce, code = err.code, error = %err.message,
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
        let first = !self.subs.contains_key(&type_url);
        let sub = self.subs.entry(type_url.clone()).or_default();
        if first {
            self.ctx.registry.subscribe(self.id, &type_url);
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
            let Some(sub) = self.subs.get_mut(&type_url) else {
                continue;
            };
            let Some(delta) = self.ctx.cache.delta(&type_url, sub) else {
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
                self.nonce += 1;
                let nonce = self.nonce.to_string();
                self.pending.insert(
                    nonce.clone(),
                    (type_url.clone(), last.then_some(delta.version)),
                );
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
                self.ctx.metrics.response(&type_url, count);
                self.tx.send(Ok(resp)).await.map_err(|_| ())?;
            }
            tracing::debug!(node = %self.node, type_url = %type_url, resources = total, version = delta.version, "delta sent");
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
    ctx: AdsContext,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    id: StreamId,
    node: String,
    subs: HashMap<String, SotwSub>,
    pending: Pending,
    nonce: u64,
}

impl SotwSession {
    fn new(ctx: AdsContext, tx: mpsc::Sender<Result<DiscoveryResponse, Status>>) -> Self {
        let id = ctx.registry.register("");
        ctx.metrics.stream_opened("sotw");
        SotwSession {
            ctx,
            tx,
            id,
            node: String::new(),
            subs: HashMap::new(),
            pending: HashMap::new(),
            nonce: 0,
        }
    }

    async fn run(mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut changes = self.ctx.cache.subscribe_changes();
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.on_request(req),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(node = %self.node, error = %e, "sotw stream ended");
                        break;
                    }
                },
                r = changes.changed() => if r.is_err() { break },
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
            }
            if self.push().await.is_err() {
                break;
            }
        }
        self.ctx.registry.unregister(self.id);
        self.ctx.metrics.stream_closed("sotw");
        tracing::info!(node = %self.node, "sotw stream closed");
    }

    fn on_request(&mut self, req: DiscoveryRequest) {
        if self.node.is_empty()
            && let Some(n) = &req.node
        {
            self.node = n.id.clone();
            self.ctx.registry.set_node(self.id, &self.node);
            tracing::info!(node = %self.node, "sotw stream opened");
        }
        if req.type_url.is_empty() {
            return;
        }
        if !req.response_nonce.is_empty()
            && let Some((t, version)) = self.pending.remove(&req.response_nonce)
        {
            match &req.error_detail {
                Some(err) => {
                    let node = self.ctx.registry.nack(self.id, &t, &err.message);
                    self.ctx.metrics.nack(&t);
                    tracing::warn!(node = %node, type_url = %t, nonce = %req.response_nonce, error = %err.message,
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
        let first = !self.subs.contains_key(&req.type_url);
        if first {
            self.ctx.registry.subscribe(self.id, &req.type_url);
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
            let Some(sub) = self.subs.get_mut(&type_url) else {
                continue;
            };
            let Some((version, resources)) = self.ctx.cache.sotw(&type_url, &sub.names) else {
                continue;
            };
            if sub.sent == Some(version) {
                continue;
            }
            sub.sent = Some(version);
            self.nonce += 1;
            let nonce = self.nonce.to_string();
            self.pending
                .insert(nonce.clone(), (type_url.clone(), Some(version)));
            let count = resources.len();
            let resp = DiscoveryResponse {
                version_info: version.to_string(),
                resources: resources.iter().map(|(_, e)| any(&type_url, e)).collect(),
                type_url: type_url.clone(),
                nonce,
                ..Default::default()
            };
            self.ctx.metrics.response(&type_url, count);
            self.tx.send(Ok(resp)).await.map_err(|_| ())?;
        }
        Ok(())
    }
}
