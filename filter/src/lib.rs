//! `libsandbox_gateway.so`: an Envoy 1.40 dynamic-module HTTP filter that routes every request
//! to its sandbox.
//!
//! Layers, from Envoy inwards:
//! - [`abi`] and [`ffi`], with `hooks`: the only code with `unsafe` — the raw ABI, safe wrappers,
//!   and the exported hooks (every one contains panics);
//! - [`gateway`]: the per-request decision over a [`gateway::RequestView`];
//! - [`identify`]: which sandbox and port a request names;
//! - [`table`]: the lock-free route table shared by all workers;
//! - [`xds_client`]: the background delta-xDS subscription that feeds the table;
//! - [`deny`]: upstream addresses never connected to (where the platform itself listens);
//! - [`route`] and [`config`]: the data model and the validated filter configuration.

pub mod abi;
#[forbid(unsafe_code)]
pub mod config;
#[forbid(unsafe_code)]
pub mod deny;
pub mod ffi;
#[forbid(unsafe_code)]
pub mod gateway;
pub mod hooks;
#[forbid(unsafe_code)]
pub mod identify;
#[forbid(unsafe_code)]
pub mod route;
#[forbid(unsafe_code)]
pub mod table;
#[forbid(unsafe_code)]
pub mod xds_client;

/// envd's port inside every sandbox; the default for header-routed requests.
pub const ENVD_PORT: u16 = 49983;
