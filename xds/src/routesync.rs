//! `RouteSync.WaitForRoute`: read-after-write for the manager. `POST /v2/sandboxes` answers 201
//! only after this returns, so the SDK's first data-plane request never meets a gateway that
//! does not know the sandbox yet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox_xds_wire::SANDBOX_ROUTE_TYPE_URL;
use sandbox_xds_wire::v1::route_sync_server::RouteSync;
use sandbox_xds_wire::v1::{WaitForRouteRequest, WaitForRouteResponse};
use tonic::{Request, Response, Status};

use crate::acks::StreamRegistry;
use crate::cache::ResourceCache;
use crate::metrics::Metrics;

/// Timeout when the request gives none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// Longest wait a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RouteSyncService {
    pub cache: Arc<ResourceCache>,
    pub registry: Arc<StreamRegistry>,
    pub metrics: Metrics,
}

impl RouteSyncService {
    /// Waits until every subscribed gateway, and at least `min_gateways` of them, acknowledged
    /// the route at `min_rv` or later.
    pub async fn wait(
        &self,
        id: &str,
        min_rv: u64,
        min_gateways: u32,
        timeout: Duration,
    ) -> WaitForRouteResponse {
        self.wait_for(min_gateways, timeout, || {
            let entry = self.cache.get(SANDBOX_ROUTE_TYPE_URL, id)?;
            let rv: u64 = entry.version.parse().unwrap_or(0);
            (rv >= min_rv).then_some((entry.changed_at, rv))
        })
        .await
    }

    /// Waits until no route carries `id` and every subscribed gateway (at least
    /// `min_gateways`) acknowledged the route table at a version without it.
    pub async fn wait_absent(
        &self,
        id: &str,
        min_gateways: u32,
        timeout: Duration,
    ) -> WaitForRouteResponse {
        self.wait_for(min_gateways, timeout, || {
            // The type's current version has no route for `id`: a gateway that acknowledged it
            // (or later) routes it no more.
            self.cache
                .get(SANDBOX_ROUTE_TYPE_URL, id)
                .is_none()
                .then(|| (self.cache.stats(SANDBOX_ROUTE_TYPE_URL).0, 0))
        })
        .await
    }

    /// The wait both share: `target` names the route-table version every gateway must have
    /// acknowledged (and the resourceVersion to report), or `None` while the condition does not
    /// hold; checked again on every cache change and acknowledgement, until `timeout`.
    async fn wait_for(
        &self,
        min_gateways: u32,
        timeout: Duration,
        target: impl Fn() -> Option<(u64, u64)>,
    ) -> WaitForRouteResponse {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.cache.subscribe_changes();
        let mut progress = self.registry.subscribe_progress();
        let mut last = WaitForRouteResponse::default();
        loop {
            if let Some((version, rv)) = target() {
                let cov = self.registry.coverage(SANDBOX_ROUTE_TYPE_URL, version);
                last = WaitForRouteResponse {
                    synced: cov.behind == 0 && cov.subscribed >= min_gateways,
                    gateways: cov.subscribed,
                    pending_gateways: cov.behind,
                    resource_version: rv,
                };
                if last.synced {
                    self.metrics.wait(true, started.elapsed().as_secs_f64());
                    return last;
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = progress.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    self.metrics.wait(false, started.elapsed().as_secs_f64());
                    last.synced = false;
                    if last.gateways == 0 {
                        last.gateways = self.registry.coverage(SANDBOX_ROUTE_TYPE_URL, 0).subscribed;
                        last.pending_gateways = last.gateways;
                    }
                    return last;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl RouteSync for RouteSyncService {
    async fn wait_for_route(
        &self,
        request: Request<WaitForRouteRequest>,
    ) -> Result<Response<WaitForRouteResponse>, Status> {
        let req = request.into_inner();
        if req.sandbox_id.is_empty() {
            return Err(Status::invalid_argument("sandbox_id is required"));
        }
        let timeout = match req.timeout_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_WAIT),
        };
        let answer = if req.absent {
            self.wait_absent(&req.sandbox_id, req.min_gateways, timeout)
                .await
        } else {
            self.wait(
                &req.sandbox_id,
                req.min_resource_version,
                req.min_gateways,
                timeout,
            )
            .await
        };
        Ok(Response::new(answer))
    }
}
