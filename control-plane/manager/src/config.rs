//! Flags (each with an environment fallback) of `sandbox-manager`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Sandboxes are agent-runtime processes on this machine (no Kubernetes).
    Local,
    /// Sandboxes are Sandbox CRs claimed from SandboxSets (KUBECONFIG or in-cluster config).
    Kube,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyStoreKind {
    /// `keys.json` in the data directory (one manager).
    File,
    /// Secret `e2b-key-store` in the system namespace, shared by every replica.
    Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// The E2B-compatible API of the sandbox platform.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Args {
    /// Address of the E2B API (and /health, /readyz, /metrics).
    #[arg(long, env = "SANDBOX_MANAGER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Where sandboxes run.
    #[arg(
        long,
        env = "SANDBOX_MANAGER_BACKEND",
        value_enum,
        default_value = "local"
    )]
    pub backend: BackendKind,
    /// Directory of the embedded store: API keys, sandbox records and files, snapshots.
    #[arg(
        long,
        env = "SANDBOX_MANAGER_DATA_DIR",
        default_value = "sandbox-manager-data"
    )]
    pub data_dir: PathBuf,
    /// The admin API key (e2b_ + 40 hex). Default: the one stored in the data directory, created
    /// on first start (file `admin-api-key`, mode 0600).
    #[arg(long, env = "E2B_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Where API keys and teams are kept (default: `file` with the local backend, `secret` with
    /// kube; `secret` needs --admin-api-key).
    #[arg(long, env = "SANDBOX_MANAGER_KEY_STORE", value_enum)]
    pub key_store: Option<KeyStoreKind>,
    /// Namespace of the key store Secret.
    #[arg(
        long,
        env = "SANDBOX_MANAGER_SYSTEM_NAMESPACE",
        default_value = "sandbox-system"
    )]
    pub system_namespace: String,
    /// Require X-API-Key (false: every request acts as the admin team, as upstream's
    /// e2b.enableAuth=false).
    #[arg(long, env = "E2B_ENABLE_AUTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_auth: bool,
    /// Longest sandbox timeout a client may ask for, seconds (e2b.maxTimeout).
    #[arg(long, env = "E2B_MAX_TIMEOUT", default_value_t = 2_592_000)]
    pub max_timeout: u64,
    /// Serve the MCP endpoint `/mcp` (streamable HTTP, API-key auth; docs/manager.md).
    #[arg(long, env = "SANDBOX_MANAGER_MCP", default_value_t = true, action = clap::ArgAction::Set)]
    pub mcp: bool,
    /// The domain returned to the SDK in create/connect answers (default: none, the SDK keeps
    /// its E2B_DOMAIN).
    #[arg(long, env = "E2B_DOMAIN")]
    pub domain: Option<String>,

    /// local: the agent-runtime binary (default: next to this binary, else on PATH).
    #[arg(long, env = "SANDBOX_MANAGER_RUNTIME_BIN")]
    pub runtime_bin: Option<PathBuf>,
    /// local: templates YAML (docs/manager.md); a built-in `base` is always there.
    #[arg(long, env = "SANDBOX_MANAGER_TEMPLATES")]
    pub templates: Option<PathBuf>,
    /// local: warm pool size of the built-in `base` template.
    #[arg(long, env = "SANDBOX_MANAGER_BASE_POOL_SIZE", default_value_t = 2)]
    pub base_pool_size: usize,
    /// local: loopback range sandbox addresses come from (never 127.0.0.1).
    #[arg(
        long,
        env = "SANDBOX_MANAGER_ADDRESS_RANGE",
        default_value = "127.1.0.0/16"
    )]
    pub address_range: String,
    /// local: most sandboxes (claimed and pooled) at once.
    #[arg(long, env = "SANDBOX_MANAGER_MAX_SANDBOXES", default_value_t = 1000)]
    pub max_sandboxes: usize,
    /// Bound of a claim without the claim-timeout-seconds extension, seconds.
    #[arg(long, env = "SANDBOX_MANAGER_CLAIM_TIMEOUT", default_value_t = 60)]
    pub claim_timeout: u64,
    /// Bound of a sandbox start (runtime healthy) without wait-ready-timeout-seconds, seconds.
    #[arg(long, env = "SANDBOX_MANAGER_STARTUP_TIMEOUT", default_value_t = 30)]
    pub startup_timeout: u64,

    /// kube: namespace to watch for Sandboxes and SandboxSets (default: all; a team's name is the
    /// namespace of its templates, the admin team uses every watched one).
    #[arg(long, env = "SANDBOX_MANAGER_NAMESPACE")]
    pub namespace: Option<String>,
    /// kube: gRPC address of sandbox-xds (RouteSync.WaitForRoute before a create answers).
    #[arg(
        long,
        env = "SANDBOX_MANAGER_XDS_ADDRESS",
        default_value = "http://sandbox-xds:18000"
    )]
    pub xds_address: String,
    /// kube: claims picking and taking at once (upstream maxClaimWorkers).
    #[arg(long, env = "SANDBOX_MANAGER_MAX_CLAIM_WORKERS", default_value_t = 500)]
    pub max_claim_workers: usize,
    /// kube: sandboxes created per second when a pool is empty, per replica (upstream
    /// maxCreateQPS; 0 = unlimited).
    #[arg(long, env = "SANDBOX_MANAGER_MAX_CREATE_QPS", default_value_t = 49.0)]
    pub max_create_qps: f64,
    /// kube: how long pause and resume wait for the controller, seconds.
    #[arg(long, env = "SANDBOX_MANAGER_LIFECYCLE_TIMEOUT", default_value_t = 60)]
    pub lifecycle_timeout: u64,
    /// kube: CSI drivers whose PersistentVolumes may be mounted into running sandboxes
    /// (comma-separated; upstream's DYNAMIC_STORAGE_DRIVER_LIST). Empty: no dynamic mounts.
    #[arg(
        long,
        env = "DYNAMIC_STORAGE_DRIVER_LIST",
        value_delimiter = ',',
        default_value = ""
    )]
    pub storage_drivers: Vec<String>,
    /// kube: the mount CLI inside sandboxes (run as root through envd).
    #[arg(long, env = "SANDBOX_MANAGER_STORAGE_CLI", default_value = sandbox_storage::CLI_PATH)]
    pub storage_cli: String,

    /// Embedded sandbox-xds (local backend): gRPC address the gateways (ADS) connect to.
    #[arg(
        long,
        env = "SANDBOX_MANAGER_XDS_GRPC_LISTEN",
        default_value = "127.0.0.1:18000"
    )]
    pub xds_grpc_listen: SocketAddr,
    /// Embedded sandbox-xds: /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "SANDBOX_MANAGER_XDS_HTTP_LISTEN",
        default_value = "127.0.0.1:18001"
    )]
    pub xds_http_listen: SocketAddr,
    /// Embedded sandbox-xds: the gateways' listener/cluster settings (YAML of docs/xds.md).
    /// Without it the sandbox listener binds 127.0.0.1 (a listener on 0.0.0.0 would also answer
    /// on every loopback address a local sandbox gets).
    #[arg(long, env = "SANDBOX_MANAGER_GATEWAY_CONFIG")]
    pub gateway_config: Option<PathBuf>,
    /// Gateways that must acknowledge a route before a create answers (every connected gateway
    /// always must).
    #[arg(long, env = "SANDBOX_MANAGER_MIN_GATEWAYS", default_value_t = 0)]
    pub min_gateways: u32,
    /// How long a create waits for the gateways to acknowledge its route, milliseconds.
    #[arg(long, env = "SANDBOX_MANAGER_ROUTE_WAIT_MS", default_value_t = 5000)]
    pub route_wait_ms: u64,

    /// local: kill whatever processes a previous run with this data directory left behind
    /// (after a crash), then exit. Records and files are kept.
    #[arg(long)]
    pub reap: bool,

    /// Seconds open requests get after SIGTERM/SIGINT.
    #[arg(long, env = "SANDBOX_MANAGER_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,
    #[arg(
        long,
        env = "SANDBOX_MANAGER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Args {
    /// The key store: the flag, else `secret` with the kube backend and `file` with local.
    pub fn key_store(&self) -> KeyStoreKind {
        self.key_store.unwrap_or(match self.backend {
            BackendKind::Kube => KeyStoreKind::Secret,
            BackendKind::Local => KeyStoreKind::File,
        })
    }

    /// The agent-runtime binary: the flag, else `agent-runtime` next to this executable, else
    /// the name (looked up on PATH).
    pub fn runtime_bin(&self) -> PathBuf {
        if let Some(p) = &self.runtime_bin {
            return p.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("agent-runtime")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("agent-runtime"))
    }
}
