//! `node-sim`: the node simulator as a process, for `make run`-style setups against a real
//! apiserver. It plays scheduler and kubelet for pods: each pod becomes a local process on its own
//! loopback address. See docs/testing-kubernetes.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube_harness::{IpRange, NodeSimConfig, NodeSimulator};

#[derive(Parser, Debug)]
#[command(
    name = "node-sim",
    about = "Plays the kubelet: runs each pod of a node as a local process on a loopback address"
)]
struct Args {
    /// kubeconfig of the cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Node to play (created if missing).
    #[arg(long, env = "NODE_SIM_NODE_NAME", default_value = "sim-node")]
    node_name: String,
    /// Only pods of this namespace (default: all).
    #[arg(long, env = "NODE_SIM_NAMESPACE")]
    namespace: Option<String>,
    /// Only pods matching this label selector.
    #[arg(long, env = "NODE_SIM_SELECTOR")]
    selector: Option<String>,
    /// Do not bind unscheduled pods to this node; only run pods already bound to it.
    #[arg(long)]
    no_schedule: bool,
    /// Loopback range for pod IPs.
    #[arg(long, env = "NODE_SIM_IP_RANGE", default_value = "127.1.0.0/16")]
    ip_range: IpRange,
    /// Port each process listens on (`{port}`); readiness waits for it.
    #[arg(long, env = "NODE_SIM_PORT", default_value_t = kube_harness::AGENT_RUNTIME_PORT)]
    port: u16,
    /// Readiness: HTTP GET of this path must answer 2xx (default: a TCP connect is enough).
    #[arg(long, env = "NODE_SIM_READY_PATH")]
    ready_http_path: Option<String>,
    /// Pod work directories and logs (default: a temporary directory).
    #[arg(long, env = "NODE_SIM_WORK_ROOT")]
    work_root: Option<PathBuf>,
    /// Longest SIGTERM grace before SIGKILL when a pod is deleted, in seconds.
    #[arg(long, default_value_t = 5)]
    max_grace_seconds: u64,
    /// Command template for each pod, whitespace-separated, with placeholders {ip} {port}
    /// {workdir} {namespace} {name} {uid} {node}. Default: $AGENT_RUNTIME_BIN --listen
    /// {ip}:{port} --default-workdir {workdir}. Arguments after `--` take precedence.
    #[arg(long, env = "NODE_SIM_COMMAND")]
    command: Option<String>,
    /// A container image the simulator runs as a local program, `REPOSITORY=PROGRAM [ARGS...]`
    /// (repeatable): pods whose first container has that image (any tag) run PROGRAM with the
    /// container's arguments, environment, mounted ConfigMaps/Secrets, service account and
    /// readinessProbe, as a kubelet would start the container.
    #[arg(long = "image")]
    images: Vec<kube_harness::ImageRule>,
    /// Command template as separate arguments (after `--`).
    #[arg(last = true)]
    command_args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("read kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let command = if !args.command_args.is_empty() {
        args.command_args.clone()
    } else {
        args.command
            .as_deref()
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let cfg = NodeSimConfig {
        node_name: args.node_name.clone(),
        namespace: args.namespace.clone(),
        label_selector: args.selector.clone(),
        schedule: !args.no_schedule,
        ip_range: Some(args.ip_range),
        command,
        port: args.port,
        ready_http_path: args.ready_http_path.clone(),
        max_termination_grace: Duration::from_secs(args.max_grace_seconds),
        work_root: args.work_root.clone(),
        images: args.images.clone(),
        ..Default::default()
    };
    let sim = NodeSimulator::try_start(config, cfg).await?;
    tracing::info!(node = %sim.node_name(), ip_range = %sim.ip_range(), work_root = %sim.work_root().display(), "node simulator running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: killing pod processes");
    tokio::task::spawn_blocking(move || sim.stop()).await?;
    Ok(())
}
