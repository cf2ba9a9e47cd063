//! `kube-cluster`: starts a throw-away cluster (etcd + kube-apiserver + kube-controller-manager on
//! loopback, as the tests do) and optionally a node simulator, prints how to reach it, and keeps
//! it running until interrupted. `scripts/kube/start-cluster.sh` wraps it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kube_harness::{ClusterConfig, IpRange, KubeCluster, NodeSimConfig, NodeSimulator};

#[derive(Parser, Debug)]
#[command(
    name = "kube-cluster",
    about = "Start a throw-away Kubernetes control plane on loopback (and a node simulator)"
)]
struct Args {
    /// Also start a node simulator that runs every pod as a local process.
    #[arg(long)]
    node_sim: bool,
    /// Node name of the simulator.
    #[arg(long, default_value = "sim-node")]
    node_name: String,
    /// Pod IP range of the simulator.
    #[arg(long, default_value = "127.1.0.0/16")]
    ip_range: IpRange,
    /// Command template for the simulator's pods (whitespace-separated; see `node-sim --help`).
    /// Default: $AGENT_RUNTIME_BIN --listen {ip}:{port} --default-workdir {workdir}.
    #[arg(long, env = "NODE_SIM_COMMAND")]
    command: Option<String>,
    /// A container image the simulator runs as a local program, `REPOSITORY=PROGRAM [ARGS...]`
    /// (repeatable): pods whose first container has that image (any tag) run PROGRAM with the
    /// container's arguments, environment, mounted ConfigMaps/Secrets, service account and
    /// readinessProbe, as a kubelet would start the container.
    #[arg(long = "image")]
    images: Vec<kube_harness::ImageRule>,
    /// The simulator also plays the checkpoint controller: it fulfils Checkpoint CRs of its
    /// pods by copying their work directories, and starts pods annotated
    /// `agents.kruise.io/restore-from` from such a copy.
    #[arg(long)]
    checkpoints: bool,
    /// A CSI driver name the simulated node serves (repeatable): PersistentVolumes of it
    /// (`spec.csi.volumeAttributes.path` = a directory of this machine) can be mounted into
    /// running sandboxes (`sandbox-runtime-storage`).
    #[arg(long = "csi-driver")]
    csi_drivers: Vec<String>,
    /// Do not start kube-controller-manager (no garbage collection, namespaces never finish
    /// deleting).
    #[arg(long)]
    no_controller_manager: bool,
    /// More kube-controller-manager controllers besides the default ones (garbage collector,
    /// namespaces, service accounts), e.g. `deployment-controller,replicaset-controller` to run
    /// Deployments.
    #[arg(long, value_delimiter = ',')]
    controllers: Vec<String>,
    /// Write the `KEY=value` lines that are printed to this file too (for scripts).
    #[arg(long)]
    env_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = ClusterConfig {
        controller_manager: !args.no_controller_manager,
        ..Default::default()
    };
    cfg.controllers.extend(args.controllers.iter().cloned());
    let cluster = KubeCluster::start_with(cfg)
        .await
        .context("start the cluster")?;
    let sim = if args.node_sim {
        let command = args
            .command
            .as_deref()
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let cfg = NodeSimConfig {
            node_name: args.node_name.clone(),
            ip_range: Some(args.ip_range),
            command,
            images: args.images.clone(),
            checkpoints: args.checkpoints,
            csi_drivers: args.csi_drivers.clone(),
            ..Default::default()
        };
        Some(
            NodeSimulator::try_start(cluster.kube_config(), cfg)
                .await
                .context("start the node simulator")?,
        )
    } else {
        None
    };

    let pids: Vec<String> = cluster
        .component_pids()
        .iter()
        .map(|(n, p)| format!("{n}:{p}"))
        .collect();
    let mut env = format!(
        "KUBECONFIG={}\nKUBE_APISERVER_URL={}\nKUBE_CLUSTER_DIR={}\nKUBE_CLUSTER_PIDS={}\n",
        cluster.kubeconfig_path().display(),
        cluster.apiserver_url(),
        cluster.dir().display(),
        pids.join(","),
    );
    if let Some(sim) = &sim {
        env.push_str(&format!(
            "NODE_SIM_NODE={}\nNODE_SIM_IP_RANGE={}\n",
            sim.node_name(),
            sim.ip_range()
        ));
        if !args.csi_drivers.is_empty() {
            let (sockets, mount_root) = kube_harness::nodesim::csi::dirs(sim.work_root());
            env.push_str(&format!(
                "NODE_SIM_CSI_SOCKET_DIR={}\nNODE_SIM_CSI_MOUNT_ROOT={}\n",
                sockets.display(),
                mount_root.display()
            ));
        }
    }
    if let Some(path) = &args.env_file {
        std::fs::write(path, &env).with_context(|| format!("write {}", path.display()))?;
    }
    print!("{env}");
    std::io::stdout().flush()?;
    eprintln!(
        "cluster ready in {:?}; press Ctrl-C to stop it",
        cluster.started_in()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping");
    tokio::task::spawn_blocking(move || {
        drop(sim);
        drop(cluster);
    })
    .await?;
    Ok(())
}
