//! Command-line flags (each with an environment fallback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// code-interpreter: the E2B Code Interpreter API on port 49999, backed by Jupyter kernels.
///
/// Serves what the `e2b-code-interpreter` SDK speaks: `POST /execute` (one JSON object per line:
/// stdout, stderr, results with every MIME representation, errors, execution count, end of
/// execution), `POST/GET /contexts`, `DELETE /contexts/{id}`, `POST /contexts/{id}/restart` and
/// `GET /health` (200 once the default Python kernel is up, 503 before). Code runs in real
/// Jupyter kernels (ipykernel, bash_kernel, any kernelspec of the kernels' virtualenv), spoken
/// to over ZeroMQ IPC sockets.
///
/// `/execute` checks `X-Access-Token` against the sandbox runtime (`--envd-url`), whose `GET
/// /envs` also gives the sandbox env vars every context sets in its kernel.
///
/// Logging level: `CODE_INTERPRETER_LOG` or `RUST_LOG` (default `info`). SIGTERM or SIGINT
/// kills every kernel and exits.
#[derive(Parser, Debug, Clone)]
#[command(name = "code-interpreter", version, verbatim_doc_comment)]
pub struct Config {
    /// Address to listen on (repeat the flag, or separate with commas, for several).
    #[arg(
        long,
        env = "CODE_INTERPRETER_LISTEN",
        default_value = "0.0.0.0:49999",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,

    /// The kernels' virtualenv: kernelspecs in `<venv>/share/jupyter/kernels`, its Python runs
    /// them (`scripts/setup-kernels.sh` builds one).
    #[arg(
        long,
        env = "CODE_INTERPRETER_KERNELS_VENV",
        default_value = "/opt/code-interpreter/venv"
    )]
    pub kernels_venv: PathBuf,

    /// Default working directory of contexts; default: `$HOME` (the sandbox user's home).
    #[arg(long, env = "CODE_INTERPRETER_WORKDIR")]
    pub workdir: Option<PathBuf>,

    /// The sandbox runtime (envd) that owns the access token and the sandbox env vars; `none`:
    /// no token check and no sandbox env vars.
    #[arg(
        long,
        env = "CODE_INTERPRETER_ENVD_URL",
        default_value = "http://127.0.0.1:49983"
    )]
    pub envd_url: String,

    /// Seconds a kernel may take to start (answer its first request).
    #[arg(
        long,
        env = "CODE_INTERPRETER_KERNEL_STARTUP_TIMEOUT",
        default_value_t = 60
    )]
    pub kernel_startup_timeout: u64,

    /// Seconds an interrupted cell (its client went away) may take to stop before its kernel
    /// is killed and replaced.
    #[arg(long, env = "CODE_INTERPRETER_INTERRUPT_TIMEOUT", default_value_t = 10)]
    pub interrupt_timeout: u64,

    /// Most contexts (kernels) at a time.
    #[arg(long, env = "CODE_INTERPRETER_MAX_CONTEXTS", default_value_t = 32)]
    pub max_contexts: usize,

    /// Directory for connection files and kernel sockets (must be short: socket paths are
    /// limited to 108 bytes); default: a new private directory under `$TMPDIR`, removed at exit.
    #[arg(long, env = "CODE_INTERPRETER_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "CODE_INTERPRETER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    pub fn envd_url(&self) -> Option<String> {
        let url = self.envd_url.trim();
        (!url.is_empty() && url != "none").then(|| url.to_string())
    }

    pub fn kernel_startup_timeout(&self) -> Duration {
        Duration::from_secs(self.kernel_startup_timeout.max(1))
    }

    pub fn interrupt_timeout(&self) -> Duration {
        Duration::from_secs(self.interrupt_timeout.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::parse_from(["code-interpreter"]);
        assert_eq!(c.listen, vec!["0.0.0.0:49999".parse().unwrap()]);
        assert_eq!(c.envd_url().as_deref(), Some("http://127.0.0.1:49983"));
        assert_eq!(c.kernel_startup_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn no_runtime() {
        let c = Config::parse_from([
            "code-interpreter",
            "--envd-url",
            "none",
            "--listen",
            "127.0.0.1:1,127.0.0.2:2",
        ]);
        assert_eq!(c.envd_url(), None);
        assert_eq!(c.listen.len(), 2);
    }
}
