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

/// agent-runtime: the envd-compatible daemon inside a sandbox.
///
/// Serves the E2B data plane that the E2B SDKs talk to through the sandbox gateway: Connect RPC
/// `process.Process` and `filesystem.Filesystem` (JSON codec, HTTP/1.1 and h2c), `GET/POST /files`,
/// `GET /health` (204), `POST /init`, `GET /envs` and `GET /metrics`. Report envdVersion 0.6.13 for
/// sandboxes served by this daemon.
///
/// Users: RPCs select a Unix user with `Authorization: Basic base64("<user>:")`; without it the
/// default user is used. When the selected user is the account the daemon runs as, its home
/// directory is the daemon's `$HOME` (so a launcher can point it at a scratch directory); other
/// users need a daemon running as root.
///
/// Logging level: `AGENT_RUNTIME_LOG` or `RUST_LOG` (default `info`). SIGTERM or SIGINT stops
/// accepting connections, lets open requests finish for `--shutdown-timeout`, then kills the
/// process groups of the commands still running.
#[derive(Parser, Debug, Clone)]
#[command(name = "agent-runtime", version, verbatim_doc_comment)]
pub struct Config {
    /// Address to listen on (repeat the flag, or separate with commas, for several).
    #[arg(
        long,
        env = "AGENT_RUNTIME_LISTEN",
        default_value = "0.0.0.0:49983",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,

    /// Default Unix user for commands and file operations when a request names none. Default: the
    /// account `user` if it exists, otherwise the account the daemon runs as. `POST /init` with
    /// `defaultUser` changes it at run time.
    #[arg(long, env = "AGENT_RUNTIME_DEFAULT_USER")]
    pub default_user: Option<String>,

    /// Default working directory for commands and for relative paths of uploads; default: the
    /// selected user's home directory. `POST /init` with `defaultWorkdir` changes it.
    #[arg(long, env = "AGENT_RUNTIME_DEFAULT_WORKDIR")]
    pub default_workdir: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "AGENT_RUNTIME_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Access token required in `X-Access-Token` from the start (as if set by `POST /init`).
    /// Without it the daemon is open until `/init` sets one.
    #[arg(long, env = "AGENT_RUNTIME_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,

    /// Sandbox environment variable for every process, `KEY=VALUE` (repeatable). `/init`
    /// `envVars` add to these. `E2B_SANDBOX=true` is always set.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub envs: Vec<String>,

    /// Seconds an idle HTTP/1.1 keep-alive connection is kept open (envd: 640). Must exceed the
    /// clients' pool idle time (the Python SDK keeps connections 300 s).
    #[arg(long, env = "AGENT_RUNTIME_IDLE_TIMEOUT", default_value_t = 640)]
    pub idle_timeout: u64,

    /// Seconds to let open requests finish after SIGTERM before closing them.
    #[arg(long, env = "AGENT_RUNTIME_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Without a subcommand the daemon runs in the foreground.
    #[command(subcommand)]
    pub action: Option<Action>,
}

/// What the binary does besides serving: the two steps of runtime injection into a sandbox image
/// that does not ship the daemon (the controller chart's `agent-runtime` injection template).
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy this executable to `<DIR>/agent-runtime` (an init container fills a volume the main
    /// container mounts).
    Install {
        /// Directory to copy into (created if missing).
        dir: PathBuf,
    },
    /// Start the daemon in the background with the flags and environment given, and return
    /// once it accepts connections on its first listen address (a postStart hook: no shell
    /// needed in the image).
    Start {
        /// Where the daemon's stdout and stderr go.
        #[arg(long, default_value = "/tmp/agent-runtime.log")]
        log_file: PathBuf,
        /// Seconds to wait for the daemon to accept connections.
        #[arg(long, default_value_t = 30)]
        wait_seconds: u64,
    },
}

impl Config {
    /// Parses `--env` values into pairs; an entry without `=` is an error.
    pub fn env_pairs(&self) -> Result<Vec<(String, String)>, String> {
        self.envs
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(format!("--env {e:?}: expected KEY=VALUE")),
            })
            .collect()
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env_pairs() {
        let c = Config::parse_from(["agent-runtime", "--env", "A=1", "--env", "B=x=y"]);
        assert_eq!(c.listen, vec!["0.0.0.0:49983".parse().unwrap()]);
        assert_eq!(
            c.env_pairs().unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        let bad = Config::parse_from(["agent-runtime", "--env", "nokey"]);
        assert!(bad.env_pairs().is_err());
    }

    #[test]
    fn subcommands() {
        let c = Config::parse_from(["agent-runtime", "--listen", "127.0.0.1:9", "start"]);
        assert!(matches!(
            c.action,
            Some(Action::Start {
                wait_seconds: 30,
                ..
            })
        ));
        let c = Config::parse_from(["agent-runtime", "install", "/mnt/x"]);
        assert_eq!(
            c.action,
            Some(Action::Install {
                dir: "/mnt/x".into()
            })
        );
        assert_eq!(Config::parse_from(["agent-runtime"]).action, None);
    }

    #[test]
    fn several_listen_addresses() {
        let c = Config::parse_from(["agent-runtime", "--listen", "127.0.0.1:1,[::1]:2"]);
        assert_eq!(c.listen.len(), 2);
    }
}
