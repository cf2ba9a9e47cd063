//! Wire types shared by sandbox-xds and the gateway module.
//!
//! - [`v1`]: `SandboxRoute` (the custom xDS resource) and the `RouteSync` service
//!   (`WaitForRoute`), generated from `proto/sandbox_route.proto`;
//! - [`discovery`]: the few Envoy delta-xDS messages a client needs, declared by hand with the
//!   field numbers of `envoy/service/discovery/v3/discovery.proto`, so the module does not compile
//!   all of Envoy's API. The server speaks them through `envoy-types`; the integration tests
//!   check that both agree on the wire;
//! - [`net`]: IP prefixes of the module's `denied_upstream_ips`, parsed alike by both sides;
//! - [`route`]: what makes a `SandboxRoute` valid, checked alike by the store and the module.

#![forbid(unsafe_code)]

/// Generated from `proto/sandbox_route.proto`.
#[allow(clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("kruise.agents.gateway.v1");
}

pub mod discovery;
pub mod net;
pub mod route;

/// Type URL of [`v1::SandboxRoute`] resources.
pub const SANDBOX_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/kruise.agents.gateway.v1.SandboxRoute";

/// gRPC method of the delta (incremental) aggregated discovery stream.
pub const DELTA_ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
