//! The node simulator: plays scheduler and kubelet for pods, with a real local process per pod.
//!
//! It watches Pods (all, or one namespace / label selector), binds unscheduled ones to its node
//! through the `pods/binding` subresource (as kube-scheduler does), and for each pod on its node:
//! allocates a loopback address, runs the pod's process (by default
//! `agent-runtime --listen <podIP>:49983 --default-workdir <dir>`), and writes the status a kubelet
//! would (phase, podIP/podIPs, Ready/ContainersReady, containerStatuses with restartCount...).
//! Image changes restart the process; exits are restarted per the pod's restartPolicy with a
//! back-off; deletion terminates the process (SIGTERM, then SIGKILL after the grace period) and
//! finalizes the pod with grace period 0.
//!
//! It runs on its own thread and tokio runtime, so it is independent of the test's runtime and
//! can outlive single tests. Dropping it kills every process it started.

pub mod checkpoints;
mod container;
pub mod csi;
mod ippool;
mod services;
pub mod status;
mod worker;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{oneshot, watch};

pub use container::{ImageRule, image_repository};
pub use ippool::IpRange;

use crate::error::{Error, Result};

/// Port the agent-runtime listens on inside a sandbox (upstream default).
pub const AGENT_RUNTIME_PORT: u16 = 49983;
/// Pod annotation with a JSON array of strings: a command template for this pod only, instead of
/// the simulator's (same placeholders).
pub const COMMAND_ANNOTATION: &str = "kube-harness.io/command";

/// How the simulator runs pods.
#[derive(Clone, Debug)]
pub struct NodeSimConfig {
    /// The Node this simulator plays; created (Ready) if missing. Default: a unique name.
    pub node_name: String,
    /// Watch only this namespace (default: all namespaces).
    pub namespace: Option<String>,
    /// Watch only pods matching this label selector.
    pub label_selector: Option<String>,
    /// Bind pods that have no `spec.nodeName` to this node (default true). Pods already bound to
    /// another node are never touched.
    pub schedule: bool,
    /// Pod addresses (a loopback range). Default: [`IpRange::process_default`].
    pub ip_range: Option<IpRange>,
    /// Command template of each pod's process. Placeholders: `{ip}`, `{port}`, `{workdir}`,
    /// `{namespace}`, `{name}`, `{uid}`, `{node}`. Empty: the agent-runtime from
    /// `AGENT_RUNTIME_BIN` with `--listen {ip}:{port} --default-workdir {workdir}`.
    pub command: Vec<String>,
    /// The port the process listens on (`{port}`); the pod is Ready once `{ip}:{port}` accepts
    /// TCP connections (or answers `ready_http_path` with 2xx).
    pub port: u16,
    /// If set, readiness is an HTTP GET of this path answering 2xx instead of a TCP connect.
    pub ready_http_path: Option<String>,
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
    /// First restart delay after a crash; doubles up to `max_restart_backoff`.
    pub restart_backoff: Duration,
    pub max_restart_backoff: Duration,
    /// Upper bound on the SIGTERM grace period when a pod is deleted.
    pub max_termination_grace: Duration,
    /// Where pod work directories and logs go (default: a temporary directory removed on drop).
    pub work_root: Option<PathBuf>,
    /// Pods whose first container's image has a rule run that rule's program as a container
    /// would (arguments, environment, volumes, service account, readinessProbe; see
    /// `container.rs`) instead of `command`.
    pub images: Vec<ImageRule>,
    /// Act as the checkpoint controller (`checkpoints.rs`): fulfil Checkpoint CRs of the pods
    /// this node runs, and start pods annotated `agents.kruise.io/restore-from` from them.
    pub checkpoints: bool,
    /// CSI drivers this node serves with its directory plugin (`csi.rs`): dynamic mounts of
    /// PersistentVolumes of these drivers work in its pods.
    pub csi_drivers: Vec<String>,
}

impl Default for NodeSimConfig {
    fn default() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        NodeSimConfig {
            node_name: format!(
                "sim-node-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            namespace: None,
            label_selector: None,
            schedule: true,
            ip_range: None,
            command: Vec::new(),
            port: AGENT_RUNTIME_PORT,
            ready_http_path: None,
            env: Vec::new(),
            restart_backoff: Duration::from_millis(200),
            max_restart_backoff: Duration::from_secs(5),
            max_termination_grace: Duration::from_secs(5),
            work_root: None,
            images: Vec::new(),
            checkpoints: false,
            csi_drivers: Vec::new(),
        }
    }
}

impl NodeSimConfig {
    /// Only pods of `namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// Runs `template` for each pod instead of the agent-runtime.
    pub fn with_command<S: Into<String>>(mut self, template: impl IntoIterator<Item = S>) -> Self {
        self.command = template.into_iter().map(Into::into).collect();
        self
    }

    /// The `sim-pod` server (`SIM_POD_BIN`, built by `make kube-harness-bins`): starts in a
    /// millisecond and answers `GET /health` with 204 like the agent-runtime.
    pub fn sim_pod(self) -> Result<Self> {
        let bin = crate::bins::from_env(crate::bins::SIM_POD_BIN)?;
        Ok(self.with_command([
            bin.display().to_string(),
            "--listen".into(),
            "{ip}:{port}".into(),
        ]))
    }

    /// `python3 -m http.server --bind {ip} {port}` with the pod's work directory as its root: a
    /// real server that needs nothing built, for tests that only need something listening.
    pub fn python_http_server(self) -> Self {
        let python = python3_executable();
        self.with_command([
            python.as_str(),
            "-m",
            "http.server",
            "--bind",
            "{ip}",
            "--directory",
            "{workdir}",
            "{port}",
        ])
    }
}

/// The real interpreter behind `python3` (resolved once): version-manager shims such as pyenv's
/// are shell scripts that cost more to start than the server itself.
fn python3_executable() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".to_string())
        })
        .clone()
}

/// What the simulator knows about one of its pods (for test assertions and debugging).
#[derive(Clone, Debug)]
pub struct SimPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Option<Ipv4Addr>,
    /// Pid of the running process (None between runs or after the end).
    pub pid: Option<u32>,
    pub restart_count: i32,
    pub workdir: PathBuf,
    pub log_path: PathBuf,
}

type Registry = Arc<Mutex<HashMap<String, SimPod>>>;

/// Everything the per-pod workers share.
pub(crate) struct Shared {
    pub client: kube::Client,
    /// How the simulator reaches the apiserver (pods of known images get a kubeconfig like it).
    pub kube_config: kube::Config,
    pub services: services::ServiceProxies,
    pub cfg: NodeSimConfig,
    pub command: Vec<String>,
    pub ip_range: IpRange,
    pub root: PathBuf,
    pub registry: Registry,
}

/// A running node simulator; stops (killing every pod process) on drop.
pub struct NodeSimulator {
    node_name: String,
    ip_range: IpRange,
    registry: Registry,
    root: PathBuf,
    _root_guard: Option<RootGuard>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NodeSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSimulator")
            .field("node", &self.node_name)
            .field("ip_range", &self.ip_range)
            .finish()
    }
}

impl NodeSimulator {
    /// Starts a simulator against `cluster`; panics if it cannot (broken setup).
    pub async fn start(cluster: &crate::KubeCluster, cfg: NodeSimConfig) -> NodeSimulator {
        match NodeSimulator::try_start(cluster.kube_config(), cfg).await {
            Ok(s) => s,
            Err(e) => panic!("could not start the node simulator: {e}"),
        }
    }

    /// Starts a simulator for the cluster behind `config`; returns once its Node exists and the
    /// first list of pods has been handled.
    pub async fn try_start(config: kube::Config, cfg: NodeSimConfig) -> Result<NodeSimulator> {
        let command = if cfg.command.is_empty() {
            let bin = crate::bins::from_env(crate::bins::AGENT_RUNTIME_BIN)?;
            vec![
                bin.display().to_string(),
                "--listen".into(),
                "{ip}:{port}".into(),
                "--default-workdir".into(),
                "{workdir}".into(),
            ]
        } else {
            cfg.command.clone()
        };
        let ip_range = cfg.ip_range.unwrap_or_else(IpRange::process_default);
        let (root, root_guard) = match &cfg.work_root {
            Some(p) => {
                std::fs::create_dir_all(p)
                    .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
                (p.clone(), None)
            }
            None => {
                let d = crate::cluster::new_scratch_dir("node")?;
                (d.clone(), Some(RootGuard(d)))
            }
        };
        let registry: Registry = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let node_name = cfg.node_name.clone();
        let thread = {
            let registry = registry.clone();
            let root = root.clone();
            std::thread::Builder::new()
                .name(format!("node-sim-{node_name}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .thread_name("node-sim")
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx
                                .send(Err(Error::io("start the node simulator runtime", e)));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let kube_config = config.clone();
                        let client = match kube::Client::try_from(config) {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e.into()));
                                return;
                            }
                        };
                        let services = services::ServiceProxies::new(client.clone(), ip_range);
                        let shared = Arc::new(Shared {
                            client,
                            kube_config,
                            services,
                            cfg,
                            command,
                            ip_range,
                            root,
                            registry,
                        });
                        if shared.cfg.checkpoints {
                            tokio::spawn(checkpoints::run(shared.clone()));
                        }
                        for driver in &shared.cfg.csi_drivers {
                            tokio::spawn(csi::serve(shared.root.clone(), driver.clone()));
                        }
                        run(shared, ready_tx, shutdown_rx).await;
                    });
                    rt.shutdown_timeout(Duration::from_secs(5));
                })
                .map_err(|e| Error::io("start the node simulator thread", e))?
        };
        let mut sim = NodeSimulator {
            node_name,
            ip_range,
            registry,
            root,
            _root_guard: root_guard,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(sim),
            Ok(Err(e)) => {
                sim.stop_now();
                Err(e)
            }
            Err(_) => {
                sim.stop_now();
                Err(Error::Config(
                    "the node simulator stopped while starting".into(),
                ))
            }
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn ip_range(&self) -> IpRange {
        self.ip_range
    }

    /// Where pod work directories and logs are.
    pub fn work_root(&self) -> &Path {
        &self.root
    }

    /// The simulator's view of pod `namespace/name`, if it runs it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<SimPod> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.values()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }

    /// All pods the simulator currently runs.
    pub fn pods(&self) -> Vec<SimPod> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.values().cloned().collect()
    }

    /// What the process of pod `namespace/name` printed (all runs).
    pub fn pod_log(&self, namespace: &str, name: &str) -> String {
        self.pod(namespace, name)
            .and_then(|p| std::fs::read(&p.log_path).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops the simulator: kills every pod process (the pods stay in the API as they are).
    pub fn stop(mut self) {
        self.stop_now();
    }
}

/// Removes the simulator's own work directory (after its processes are gone).
struct RootGuard(PathBuf);

impl Drop for RootGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Makes sure the Node object exists and reports Ready.
async fn ensure_node(shared: &Shared) -> Result<()> {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let name = &shared.cfg.node_name;
    if nodes.get_opt(name).await?.is_none() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        ("kubernetes.io/hostname".to_string(), name.clone()),
                        ("kubernetes.io/os".to_string(), "linux".to_string()),
                        ("kube-harness.io/simulated".to_string(), "true".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let status = serde_json::json!({
        "status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kube-harness node simulator is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "10000", "ephemeral-storage": "1Ti"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "10000", "ephemeral-storage": "1Ti"},
            "nodeInfo": {
                "kubeletVersion": "v1.35.0-kube-harness", "kubeProxyVersion": "", "containerRuntimeVersion": "kube-harness://local-process",
                "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "kube-harness",
            },
        }
    });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Binds `pod` to our node, as the scheduler would. A pod bound meanwhile (409) is fine.
async fn bind(shared: Arc<Shared>, namespace: String, name: String) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": shared.cfg.node_name},
    });
    match api
        .create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => tracing::debug!(%namespace, %name, node = %shared.cfg.node_name, "bound pod"),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
        Err(e) => tracing::warn!(%namespace, %name, error = %e, "binding failed"),
    }
}

fn wants_binding(shared: &Shared, pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    shared.cfg.schedule
        && spec.node_name.is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && matches!(
            spec.scheduler_name.as_deref(),
            None | Some("default-scheduler")
        )
}

/// The watch loop: hands every pod of our node to its worker, binds unscheduled ones.
async fn run(
    shared: Arc<Shared>,
    ready_tx: oneshot::Sender<Result<()>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    if let Err(e) = ensure_node(&shared).await {
        let _ = ready_tx.send(Err(e));
        return;
    }
    let api: Api<Pod> = match &shared.cfg.namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    let mut wc = watcher::Config::default();
    if let Some(sel) = &shared.cfg.label_selector {
        wc = wc.labels(sel);
    }
    if !shared.cfg.schedule {
        wc = wc.fields(&format!("spec.nodeName={}", shared.cfg.node_name));
    }
    let mut events = watcher::watcher(api, wc).default_backoff().boxed();

    let mut workers: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut binding: HashSet<String> = HashSet::new();
    let mut seen_in_relist: Option<HashSet<String>> = None;
    let mut ready_tx = Some(ready_tx);

    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done && e.is_panic() {
                    tracing::error!("a pod worker panicked: {e}");
                }
                continue;
            }
            ev = events.next() => match ev {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                    continue;
                }
                None => break,
            },
        };
        let mut handle = |pod: Pod,
                          workers: &mut HashMap<String, watch::Sender<Pod>>,
                          tasks: &mut tokio::task::JoinSet<()>| {
            let Some(uid) = pod.metadata.uid.clone() else {
                return;
            };
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if node == Some(shared.cfg.node_name.as_str()) {
                binding.remove(&uid);
                if let Some(tx) = workers.get(&uid) {
                    let _ = tx.send(pod);
                } else {
                    let (tx, rx) = watch::channel(pod);
                    workers.insert(uid, tx);
                    tasks.spawn(worker::run(shared.clone(), rx));
                }
            } else if wants_binding(&shared, &pod) && binding.insert(uid) {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                tasks.spawn(bind(shared.clone(), ns, name));
            }
        };
        match event {
            Event::Init => seen_in_relist = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (seen_in_relist.as_mut(), pod.metadata.uid.clone())
                {
                    seen.insert(uid);
                }
                handle(pod, &mut workers, &mut tasks);
            }
            Event::InitDone => {
                // Pods that disappeared while the watch was down.
                if let Some(seen) = seen_in_relist.take() {
                    workers.retain(|uid, _| seen.contains(uid));
                    binding.retain(|uid| seen.contains(uid));
                }
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::Apply(pod) => handle(pod, &mut workers, &mut tasks),
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_ref() {
                    // Dropping the sender tells the worker the pod is gone.
                    workers.remove(uid);
                    binding.remove(uid);
                }
            }
        }
        // Workers whose pod is gone have finished; forget their senders.
        workers.retain(|_, tx| !tx.is_closed());
    }
    drop(workers);
    // Aborting drops each worker's process handle, which kills the process group.
    tasks.shutdown().await;
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        nodes.delete(&shared.cfg.node_name, &DeleteParams::default()),
    )
    .await;
}
