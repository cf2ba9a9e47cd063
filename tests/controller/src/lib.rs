//! Helpers for the sandbox-controller integration tests: a per-test environment (namespace,
//! node simulator, the real `sandbox-controller` binary scoped to that namespace) on the shared
//! real apiserver, and polling helpers that fail with a description of what was last seen.

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, ListParams};
use kube_harness::process::ManagedChild;
use kube_harness::{KubeCluster, NodeSimConfig, NodeSimulator};
use sandbox_api::Sandbox;

/// The chart's CRD directory.
pub fn crd_dir() -> PathBuf {
    test_support::repo_root().join("charts/kruise-agents-sandbox-controller/crds")
}

/// Installs the CRDs (idempotent server-side apply).
pub async fn install_crds(cluster: &KubeCluster) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(crd_dir())
        .expect("crd dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for f in files {
        cluster
            .apply_yaml_file(&f)
            .await
            .unwrap_or_else(|e| panic!("apply {}: {e}", f.display()));
    }
}

/// A running `sandbox-controller` process.
pub struct ControllerProcess {
    pub child: ManagedChild,
    pub metrics_port: u16,
    pub webhook_port: u16,
}

impl ControllerProcess {
    /// Starts the real binary (`SANDBOX_CONTROLLER_BIN`) against `cluster`, watching `namespace`
    /// (which also holds its injection ConfigMap and lease).
    pub fn start(cluster: &KubeCluster, namespace: &str, extra: &[&str]) -> ControllerProcess {
        let bin = test_support::artifact_from_env("SANDBOX_CONTROLLER_BIN");
        let port = test_support::free_port();
        let health = test_support::free_port();
        let webhook = test_support::free_port();
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", cluster.kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn,sandbox_controller=debug")
            .arg("--namespace")
            .arg(namespace)
            .arg("--system-namespace")
            .arg(namespace)
            .arg("--leader-elect-namespace")
            .arg(namespace)
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--health-probe-bind-address")
            .arg(format!("127.0.0.1:{health}"))
            .arg("--webhook-bind-address")
            .arg(format!("127.0.0.1:{webhook}"))
            .arg("--webhook-service-name")
            .arg("localhost")
            .args(extra);
        let log = cluster
            .dir()
            .join(format!("sandbox-controller-{namespace}-{port}.log"));
        let child =
            ManagedChild::spawn("sandbox-controller", cmd, &log).expect("start sandbox-controller");
        ControllerProcess {
            child,
            metrics_port: port,
            webhook_port: webhook,
        }
    }

    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// One test's world: its namespace, node simulator and controller.
pub struct Env {
    pub cluster: &'static KubeCluster,
    pub ns: String,
    pub sim: NodeSimulator,
    pub controller: Option<ControllerProcess>,
}

impl Env {
    /// Pods run as a small Python HTTP server (enough for readiness and TCP checks).
    pub async fn new(prefix: &str) -> Env {
        Self::with_sim(prefix, |c| c.python_http_server()).await
    }

    /// Pods run as the real agent-runtime (`AGENT_RUNTIME_BIN`) on their own loopback IP.
    pub async fn with_agent_runtime(prefix: &str) -> Env {
        Self::with_sim(prefix, |c| c).await
    }

    async fn with_sim(prefix: &str, sim_cfg: impl FnOnce(NodeSimConfig) -> NodeSimConfig) -> Env {
        let cluster = KubeCluster::shared().await;
        install_crds(cluster).await;
        let ns = cluster.create_namespace(prefix).await;
        let sim =
            NodeSimulator::start(cluster, sim_cfg(NodeSimConfig::default().in_namespace(&ns)))
                .await;
        let controller = Some(ControllerProcess::start(cluster, &ns, &[]));
        Env {
            cluster,
            ns,
            sim,
            controller,
        }
    }

    pub fn client(&self) -> Client {
        self.cluster.client()
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client(), &self.ns)
    }

    pub fn controller_log(&self) -> String {
        self.controller
            .as_ref()
            .map(|c| c.log())
            .unwrap_or_default()
    }

    /// Polls `check` until it returns `Ok`; on timeout panics with the last `Err` and the
    /// controller log tail.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match check().await {
                Ok(v) => return v,
                Err(last) => {
                    if Instant::now() > deadline {
                        let log = self.controller_log();
                        let tail: Vec<&str> = log.lines().rev().take(40).collect();
                        panic!(
                            "{what}: not reached within {timeout:?}; last: {last}\n--- controller log tail ---\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn sandboxes(&self, selector: &str) -> Vec<Sandbox> {
        self.api::<Sandbox>()
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list sandboxes")
            .items
    }
}
