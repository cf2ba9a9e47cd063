//! sandbox-manager: the E2B-compatible REST API of the platform (native paths and
//! `/kruise/api`), API keys and teams, and the backends that run sandboxes behind it: `local`
//! (embedded: agent-runtime processes on loopback addresses, sandbox-xds in process, what
//! `make run` starts) and `kube` (Sandbox CRs; see docs/manager.md).
//!
//! Layout: `api` is the HTTP layer (routes, auth, validation, paging, rendering, errors);
//! `backend` the trait every backend implements; `model` and `extensions` the plain domain
//! types both share; `keys` the key store; `local` the embedded backend; `kube` the
//! Kubernetes backend (claims through `sandbox-core`, shared with the controller); `store` the
//! embedded document store; `sys` the only `unsafe` code.

pub mod api;
pub mod backend;
pub mod config;
pub use sandbox_core::envd;
pub mod extensions;
pub mod idempotency;
pub mod keys;
pub mod kube;
pub mod local;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod mounts;
pub mod store;
pub mod sys;
