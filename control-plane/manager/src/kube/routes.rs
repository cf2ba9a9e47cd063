//! Read-after-write with the gateways: `RouteSync.WaitForRoute` on sandbox-xds, called before a
//! create or a resume answers, so the SDK's first data-plane request finds its route.

use std::time::Duration;

use sandbox_xds_wire::v1::WaitForRouteRequest;
use sandbox_xds_wire::v1::route_sync_client::RouteSyncClient;
use tonic::transport::{Channel, Endpoint};

/// A RouteSync client (one HTTP/2 channel, connected lazily and re-dialled by tonic).
#[derive(Clone, Debug)]
pub struct RouteWaiter {
    client: RouteSyncClient<Channel>,
    min_gateways: u32,
    timeout: Duration,
}

impl RouteWaiter {
    /// `address`: sandbox-xds's gRPC address (`http://host:port`).
    pub fn new(address: &str, min_gateways: u32, timeout: Duration) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| format!("bad sandbox-xds address {address:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        Ok(RouteWaiter {
            client: RouteSyncClient::new(endpoint.connect_lazy()),
            min_gateways,
            timeout,
        })
    }

    fn timeout_ms(&self) -> u32 {
        self.timeout.as_millis().min(u128::from(u32::MAX)) as u32
    }

    /// Waits until every gateway routes sandbox `id` at resourceVersion `min_rv` or later.
    pub async fn wait(&self, id: &str, min_rv: u64) -> Result<(), String> {
        let req = WaitForRouteRequest {
            sandbox_id: id.to_string(),
            min_resource_version: min_rv,
            timeout_ms: self.timeout_ms(),
            min_gateways: self.min_gateways,
            absent: false,
        };
        self.ask(req, "route").await
    }

    /// Waits until no gateway routes sandbox `id` any more (killed or expired).
    pub async fn wait_gone(&self, id: &str) -> Result<(), String> {
        let req = WaitForRouteRequest {
            sandbox_id: id.to_string(),
            timeout_ms: self.timeout_ms(),
            absent: true,
            ..Default::default()
        };
        self.ask(req, "withdrawal of the route").await
    }

    /// One WaitForRoute call, bounded even if sandbox-xds never answers.
    async fn ask(&self, req: WaitForRouteRequest, what: &str) -> Result<(), String> {
        let id = req.sandbox_id.clone();
        let mut client = self.client.clone();
        let resp = tokio::time::timeout(
            self.timeout + Duration::from_secs(2),
            client.wait_for_route(req),
        )
        .await
        .map_err(|_| {
            format!(
                "sandbox-xds did not answer WaitForRoute within {:?}",
                self.timeout
            )
        })?
        .map_err(|e| format!("WaitForRoute: {}", e.message()))?
        .into_inner();
        if resp.synced {
            Ok(())
        } else {
            Err(format!(
                "{what} of {id} not acknowledged by the gateways within {:?} ({} of {} pending)",
                self.timeout, resp.pending_gateways, resp.gateways
            ))
        }
    }

    /// Whether sandbox-xds answers (readiness): a wait for no sandbox returns at once.
    pub async fn reachable(&self) -> Result<(), String> {
        let mut client = self.client.clone();
        let req = WaitForRouteRequest {
            sandbox_id: "readiness-probe".into(),
            min_resource_version: 0,
            timeout_ms: 1,
            min_gateways: 0,
            absent: false,
        };
        tokio::time::timeout(Duration::from_secs(3), client.wait_for_route(req))
            .await
            .map_err(|_| "sandbox-xds did not answer".to_string())?
            .map(|_| ())
            .map_err(|e| format!("sandbox-xds: {}", e.message()))
    }
}
