//! Wiring: the cache, the registry, the route publisher, the gRPC services (ADS + RouteSync) and
//! the HTTP endpoints (`/metrics`, `/healthz`, `/readyz`), with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use sandbox_xds_wire::SANDBOX_ROUTE_TYPE_URL;
use sandbox_xds_wire::v1::route_sync_server::RouteSyncServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::acks::StreamRegistry;
use crate::ads::{Ads, AdsContext};
use crate::cache::ResourceCache;
use crate::gateway::{CLUSTER_TYPE_URL, GatewayResources, LISTENER_TYPE_URL};
use crate::metrics::Metrics;
use crate::routes::RoutePublisher;
use crate::routesync::RouteSyncService;

/// Largest discovery message either side accepts (a split initial sync stays far below it).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The server's shared state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct XdsServer {
    pub cache: Arc<ResourceCache>,
    pub registry: Arc<StreamRegistry>,
    pub metrics: Metrics,
    pub routes: RoutePublisher,
    shutdown: watch::Sender<bool>,
}

impl XdsServer {
    /// A server serving `gateway`'s listeners and clusters, with an empty, not-yet-ready route set.
    pub fn new(gateway: &GatewayResources) -> Self {
        let cache = Arc::new(ResourceCache::new());
        let metrics = Metrics::new();
        let server = XdsServer {
            routes: RoutePublisher::new(cache.clone(), metrics.clone()),
            cache,
            registry: Arc::new(StreamRegistry::new()),
            metrics,
            shutdown: watch::channel(false).0,
        };
        server.set_gateway_resources(gateway);
        server
    }

    /// Replaces the listeners and clusters every gateway runs (unchanged ones are not resent).
    pub fn set_gateway_resources(&self, gateway: &GatewayResources) {
        self.cache.replace(LISTENER_TYPE_URL, gateway.listeners());
        self.cache.replace(CLUSTER_TYPE_URL, gateway.clusters());
        self.cache.set_ready(LISTENER_TYPE_URL);
        self.cache.set_ready(CLUSTER_TYPE_URL);
    }

    /// Asks every stream and server loop to finish.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The RouteSync service (also usable in-process by an embedded manager).
    pub fn route_sync(&self) -> RouteSyncService {
        RouteSyncService {
            cache: self.cache.clone(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Serves ADS and RouteSync on `listener` until shutdown; streams end, then connections drain.
    pub async fn serve_grpc(&self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        let ads = Ads::new(AdsContext {
            cache: self.cache.clone(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.subscribe(),
        });
        let mut stop = self.shutdown.subscribe();
        // Accepted sockets get TCP_NODELAY here: the builder's `tcp_nodelay` only applies to
        // listeners tonic binds itself, and with Nagle a response written in several small
        // pieces waits for the peer's delayed ACK (~40 ms).
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(
                AggregatedDiscoveryServiceServer::new(ads)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(RouteSyncServer::new(self.route_sync()))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    }

    /// Serves `/metrics`, `/healthz` (live) and `/readyz` (the route source delivered a complete
    /// view) until shutdown.
    pub async fn serve_http(&self, listener: TcpListener) -> std::io::Result<()> {
        use axum::http::StatusCode;
        use axum::routing::get;
        let metrics = self.metrics.clone();
        let cache = self.cache.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let m = metrics.clone();
                    async move {
                        (
                            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                            m.encode(),
                        )
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = cache.is_ready(SANDBOX_ROUTE_TYPE_URL);
                    async move {
                        if ready {
                            (StatusCode::OK, "ready")
                        } else {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                "route source not synced yet",
                            )
                        }
                    }
                }),
            );
        let mut stop = self.shutdown.subscribe();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    }
}

/// A server started on loopback ports, for embedding and tests.
#[derive(Debug)]
pub struct RunningServer {
    pub server: XdsServer,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Binds and starts both servers on the current tokio runtime.
    pub async fn start(
        server: XdsServer,
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> std::io::Result<RunningServer> {
        let grpc_listener = TcpListener::bind(grpc).await?;
        let http_listener = TcpListener::bind(http).await?;
        let (grpc_addr, http_addr) = (grpc_listener.local_addr()?, http_listener.local_addr()?);
        let s1 = server.clone();
        let s2 = server.clone();
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = s1.serve_grpc(grpc_listener).await {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = s2.serve_http(http_listener).await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }),
        ];
        Ok(RunningServer {
            server,
            grpc_addr,
            http_addr,
            tasks,
        })
    }

    /// Shuts down gracefully and waits for both servers.
    pub async fn stop(self) {
        self.server.shutdown();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
