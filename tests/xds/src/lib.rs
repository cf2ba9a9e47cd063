//! Harness for the sandbox-xds integration tests: the server runs in-process on a runtime of its
//! own (so tests can stop and restart it, and publish routes directly), the gateways are real
//! Envoy 1.40 processes started from `envoy/gateway-ads.yaml` with the module, and
//! `WaitForRoute` is called over gRPC like the manager will.

use std::net::SocketAddr;
use std::time::Duration;

use sandbox_xds::{GatewayResources, RoutePublisher, RunningServer, XdsServer};
use sandbox_xds_wire::v1::route_sync_client::RouteSyncClient;
use sandbox_xds_wire::v1::sandbox_route::State;
use sandbox_xds_wire::v1::{SandboxRoute, WaitForRouteRequest, WaitForRouteResponse};

/// A sandbox-xds server on loopback.
pub struct Xds {
    rt: tokio::runtime::Runtime,
    running: Option<RunningServer>,
    pub server: XdsServer,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl std::fmt::Debug for Xds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xds").field("grpc", &self.grpc).finish()
    }
}

/// Gateway settings for tests: listeners on loopback, ephemeral ports, no metrics listener, and
/// no denied upstream addresses, because the tests' upstreams listen on 127.0.0.1 (tests/edge.rs
/// checks the default list).
pub fn test_gateway_resources(xds: SocketAddr) -> GatewayResources {
    GatewayResources {
        listen_address: "127.0.0.1".into(),
        listen_port: 0,
        metrics_port: 0,
        xds_address: format!("http://{xds}"),
        access_log: false,
        denied_upstream_ips: Vec::new(),
        ..Default::default()
    }
}

impl Xds {
    /// Starts a server on free loopback ports serving test gateway settings.
    pub fn start() -> Xds {
        let grpc: SocketAddr = ([127, 0, 0, 1], test_support::free_port()).into();
        let http: SocketAddr = ([127, 0, 0, 1], test_support::free_port()).into();
        Self::start_on(grpc, http, test_gateway_resources(grpc))
    }

    /// Starts a server on the given addresses (a restart reuses the old ones).
    pub fn start_on(grpc: SocketAddr, http: SocketAddr, gateway: GatewayResources) -> Xds {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = XdsServer::new(&gateway);
        let running = rt
            .block_on(RunningServer::start(server.clone(), grpc, http))
            .expect("start sandbox-xds");
        Xds {
            grpc: running.grpc_addr,
            http: running.http_addr,
            server,
            running: Some(running),
            rt,
        }
    }

    /// The runtime the server runs on, for callers that need async clients of their own.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    pub fn routes(&self) -> RoutePublisher {
        self.server.routes.clone()
    }

    /// `RouteSync.WaitForRoute` over gRPC, for at least one gateway.
    pub fn wait_for_route(&self, id: &str, min_rv: u64, timeout: Duration) -> WaitForRouteResponse {
        self.wait_for_route_on(id, min_rv, 1, timeout)
    }

    /// `RouteSync.WaitForRoute` over gRPC, for at least `min_gateways` gateways.
    pub fn wait_for_route_on(
        &self,
        id: &str,
        min_rv: u64,
        min_gateways: u32,
        timeout: Duration,
    ) -> WaitForRouteResponse {
        let url = format!("http://{}", self.grpc);
        self.rt.block_on(async {
            let mut c = RouteSyncClient::connect(url)
                .await
                .expect("connect RouteSync");
            c.wait_for_route(WaitForRouteRequest {
                sandbox_id: id.into(),
                min_resource_version: min_rv,
                timeout_ms: timeout.as_millis() as u32,
                min_gateways,
                ..Default::default()
            })
            .await
            .expect("WaitForRoute")
            .into_inner()
        })
    }

    /// The server's Prometheus text.
    pub fn metrics(&self) -> String {
        gateway_tests::request(self.http, "GET", "/metrics", &[], None).text()
    }

    /// Stops gracefully (streams end, connections drain).
    pub fn stop(mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}

impl Drop for Xds {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}

/// A route in the wire form.
pub fn route(id: &str, ip: &str, rv: u64, state: State) -> SandboxRoute {
    SandboxRoute {
        id: id.into(),
        namespace: "sandboxes".into(),
        name: id.into(),
        uid: format!("uid-{id}"),
        resource_version: rv,
        ip: ip.into(),
        state: state as i32,
        ..Default::default()
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not reached within {timeout:?}");
}
