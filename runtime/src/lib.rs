//! agent-runtime: an envd-compatible daemon that runs inside each sandbox and serves the E2B data
//! plane on port 49983: the Connect RPC services `process.Process` and `filesystem.Filesystem`,
//! and the plain HTTP endpoints `/files`, `/health`, `/init`, `/envs` and `/metrics`.
//!
//! The crate is a library so that its pure parts (Connect framing, path resolution, the proto JSON
//! mapping, Range and Accept-Encoding parsing, signing) are unit tested without I/O; `main.rs` is
//! the thin binary edge.

pub mod config;
pub mod connect;
pub mod files;
pub mod filesystem;
pub mod httputil;
pub mod launch;
pub mod metrics;
pub mod oserror;
pub mod paths;
pub mod process;
pub mod proto;
pub mod server;
pub mod signing;
pub mod state;
pub mod sys;
pub mod sysmetrics;
pub mod timefmt;
pub mod users;
pub mod watch;
pub mod xattr;

/// The envd version the platform reports for sandboxes served by this daemon (`envdVersion` in
/// the E2B create/connect responses). Every SDK feature gate up to this version is implemented:
/// recursive watch (0.1.4), stdin control (0.3.0), default user (0.4.0), CloseStdin (0.5.2),
/// octet-stream and gzip uploads (0.5.7), file metadata (0.6.2), watch entry info (0.6.3) and
/// network-mount watch checks (0.6.4).
pub const ENVD_VERSION: &str = "0.6.13";

/// Version of this daemon.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
