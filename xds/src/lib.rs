//! sandbox-xds: the control plane that feeds every sandbox gateway.
//!
//! It serves Envoy's listeners and clusters and the `SandboxRoute` resources the gateway module
//! consumes, over ADS (state-of-the-world and delta), from a versioned cache ([`cache`]) with
//! per-stream ACK/NACK tracking ([`acks`]). Routes come from Sandbox CRs ([`kube_source`]) or an
//! in-process feed ([`routes::RoutePublisher`]) through upstream's ordering rules ([`store`]).
//! `RouteSync.WaitForRoute` ([`routesync`]) gives the manager read-after-write.

#![forbid(unsafe_code)]

pub mod acks;
pub mod ads;
pub mod cache;
pub mod gateway;
pub mod kube_source;
pub mod metrics;
pub mod routes;
pub mod routesync;
pub mod server;
pub mod store;

pub use gateway::GatewayResources;
pub use routes::RoutePublisher;
pub use server::{RunningServer, XdsServer};
