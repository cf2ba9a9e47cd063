//! The E2B Code Interpreter API (port 49999) in front of real Jupyter kernels.
//!
//! * `protocol` — request bodies, the NDJSON output lines, Jupyter messages → lines (pure);
//! * `kernelspec` — the kernels of the kernels' virtualenv and which serves a language;
//! * `kernel` — one kernel process and its ZeroMQ channels (`jupyter-zmq-client`);
//! * `contexts` — contexts, their kernels, and how a cell runs (env vars, interrupt, restart);
//! * `envd` — the sandbox runtime: access token check and sandbox env vars;
//! * `server` — the HTTP routes; `config` — flags.

pub mod config;
pub mod contexts;
pub mod envd;
pub mod error;
pub mod kernel;
pub mod kernelspec;
pub mod protocol;
pub mod server;
