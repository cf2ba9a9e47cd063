//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and (by default) a
//! kube-controller-manager running only the controllers a kubelet-less cluster still needs
//! (garbage collector, namespace and service-account controllers). No scheduler and no kubelet:
//! the [`crate::NodeSimulator`] plays both for the pods a test cares about.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::apply::{self, ApplyOptions};
use crate::bins;
use crate::error::{Error, Result};
use crate::pki::{CertAuthority, CertPair, Usage};
use crate::process::ManagedChild;

/// The user of the admin credential; member of `system:masters`, so RBAC lets it do anything.
pub const ADMIN_USER: &str = "kube-harness-admin";
/// Service CIDR handed to the apiserver. Nothing ever routes to it: webhooks and aggregated
/// APIs are reached through endpoint addresses (`--enable-aggregator-routing`).
pub const SERVICE_CIDR: &str = "10.0.0.0/24";

/// Controllers of kube-controller-manager started by default.
pub const DEFAULT_CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
];

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Start kube-controller-manager (needs `KUBE_CONTROLLER_MANAGER_BIN`). Without it, owner
    /// references are never garbage-collected and deleted namespaces stay Terminating.
    pub controller_manager: bool,
    /// The kube-controller-manager controllers to run (`--controllers`).
    pub controllers: Vec<String>,
    /// Extra `--flag=value` arguments for kube-apiserver (e.g. feature gates).
    pub extra_apiserver_args: Vec<String>,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            controller_manager: true,
            controllers: DEFAULT_CONTROLLERS.iter().map(|s| s.to_string()).collect(),
            extra_apiserver_args: Vec::new(),
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// A running etcd + kube-apiserver (+ kube-controller-manager) in a temporary directory. All
/// processes are killed when this is dropped, or when the test process dies.
pub struct KubeCluster {
    dir: PathBuf,
    ca: CertAuthority,
    apiserver_url: String,
    etcd_url: String,
    kubeconfig_path: PathBuf,
    config: kube::Config,
    /// In start order; stopped in reverse.
    procs: Mutex<Vec<ManagedChild>>,
    started_in: Duration,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("dir", &self.dir)
            .field("apiserver_url", &self.apiserver_url)
            .finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// Starts a fresh cluster with the default configuration; panics with the components' logs if
    /// it cannot (a broken setup, never a reason to skip a test).
    pub async fn start() -> KubeCluster {
        match KubeCluster::start_with(ClusterConfig::default()).await {
            Ok(c) => c,
            Err(e) => panic!("could not start the test Kubernetes cluster: {e}"),
        }
    }

    /// One cluster for every test of this test binary, started on first use. Processes die with
    /// the test process; its directory is removed at exit. Give each test its own namespace
    /// ([`KubeCluster::create_namespace`]) and, if it runs pods, its own node simulator.
    pub async fn shared() -> &'static KubeCluster {
        static SHARED: tokio::sync::OnceCell<KubeCluster> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                let cluster = KubeCluster::start().await;
                extern "C" fn cleanup_shared() {
                    let _ = std::panic::catch_unwind(|| {
                        if let Some(c) = SHARED.get() {
                            c.shutdown();
                        }
                    });
                }
                // SAFETY: registers a plain extern "C" function that catches its own panics.
                unsafe {
                    libc::atexit(cleanup_shared);
                }
                cluster
            })
            .await
    }

    /// Starts a cluster. Retries with new ports if one was taken in the meantime.
    pub async fn start_with(cfg: ClusterConfig) -> Result<KubeCluster> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&cfg).await {
                Err(Error::NotReady { log, .. })
                    if attempt < 3 && log.contains("address already in use") =>
                {
                    tracing::warn!("a port was taken while starting the cluster; retrying");
                }
                other => return other,
            }
        }
    }

    async fn start_once(cfg: &ClusterConfig) -> Result<KubeCluster> {
        let started = Instant::now();
        let etcd_bin = bins::etcd()?;
        let apiserver_bin = bins::kube_apiserver()?;
        let kcm_bin = if cfg.controller_manager {
            Some(bins::kube_controller_manager()?)
        } else {
            None
        };

        let dir = new_scratch_dir("cluster")?;
        let guard = DirGuard(Some(dir.clone()));
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(|e| Error::io("create pki dir", e))?;

        let ca = CertAuthority::new("kube-harness-ca")?;
        let mut sans: Vec<String> = [
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sans.extend([
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ]);
        let serving = ca.issue("kube-apiserver", &[], &sans, Usage::Server)?;
        let admin = ca.issue(ADMIN_USER, &["system:masters"], &[], Usage::Client)?;
        let (sa_key, sa_pub) = crate::pki::new_key_pair_pem()?;
        let write = |name: &str, content: &str| -> Result<PathBuf> {
            let p = pki_dir.join(name);
            std::fs::write(&p, content)
                .map_err(|e| Error::io(format!("write {}", p.display()), e))?;
            Ok(p)
        };
        let ca_file = write("ca.crt", ca.cert_pem())?;
        let serving_cert = write("apiserver.crt", &serving.cert_pem)?;
        let serving_key = write("apiserver.key", &serving.key_pem)?;
        let sa_key_file = write("service-account.key", &sa_key)?;
        let sa_pub_file = write("service-account.pub", &sa_pub)?;

        let etcd_port = test_support::free_port();
        let etcd_peer_port = test_support::free_port();
        let api_port = test_support::free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let apiserver_url = format!("https://127.0.0.1:{api_port}");

        let mut procs = Vec::new();

        let mut etcd = Command::new(&etcd_bin);
        etcd.arg("--name=default")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"
            ))
            // Test data only: durability is not worth the fsync latency.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        procs.push(spawn(&dir, "etcd", etcd)?);

        let mut api = Command::new(&apiserver_bin);
        api.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", serving_key.display()))
            .arg(format!("--client-ca-file={}", ca_file.display()))
            .arg(format!(
                "--service-account-key-file={}",
                sa_pub_file.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key_file.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--authorization-mode=RBAC")
            // No controller creates the `default` ServiceAccount before the first pod of a fresh
            // namespace, and no kubelet would mount its token anyway.
            .arg("--disable-admission-plugins=ServiceAccount")
            // Webhooks and aggregated APIs behind a Service are dialled at their endpoint
            // addresses (loopback in tests), never at a cluster IP that nothing routes.
            .arg("--enable-aggregator-routing=true")
            .arg("--allow-privileged=true")
            // The `kubernetes` Service would point at 127.0.0.1, which Endpoints reject.
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            .args(&cfg.extra_apiserver_args);
        procs.push(spawn(&dir, "kube-apiserver", api)?);

        let kubeconfig_path = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig_path, &apiserver_url, ca.cert_pem(), &admin)?;
        let kubeconfig = Kubeconfig::read_from(&kubeconfig_path)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;

        wait_ready(&config, &mut procs, cfg.ready_timeout, started).await?;

        if let Some(kcm_bin) = kcm_bin {
            let kcm_port = test_support::free_port();
            let mut kcm = Command::new(kcm_bin);
            kcm.arg(format!("--kubeconfig={}", kubeconfig_path.display()))
                .arg(format!("--controllers={}", cfg.controllers.join(",")))
                .arg("--leader-elect=false")
                .arg("--use-service-account-credentials=false")
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={kcm_port}"))
                .arg(format!("--cert-dir={}", dir.join("kcm-certs").display()))
                // Garbage collection as fast as a real cluster's, and no 10 s resync waits.
                .arg("--concurrent-gc-syncs=20")
                .arg("--namespace-sync-period=10s");
            procs.push(spawn(&dir, "kube-controller-manager", kcm)?);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], kcm_port));
            wait_listening(addr, &mut procs, Duration::from_secs(60), started).await?;
        }

        let mut dir_guard = guard;
        dir_guard.0 = None;
        let cluster = KubeCluster {
            dir,
            ca,
            apiserver_url,
            etcd_url,
            kubeconfig_path,
            config,
            procs: Mutex::new(procs),
            started_in: started.elapsed(),
        };
        tracing::info!(url = %cluster.apiserver_url, dir = %cluster.dir.display(), took = ?cluster.started_in, "test cluster ready");
        Ok(cluster)
    }

    /// A new client for the admin user, bound to the calling tokio runtime (so create one per
    /// test; they are cheap).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone())
            .expect("build a kube client from the harness config")
    }

    /// The client configuration (admin credential, cluster CA).
    pub fn kube_config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A kubeconfig file for the admin user (for processes: controllers, kubectl, helm).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// `https://127.0.0.1:<port>`.
    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    /// `http://127.0.0.1:<port>` of etcd (for tests that look at raw storage).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The scratch directory (certificates, etcd data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the start took (processes spawned to `/readyz` OK and controllers listening).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The cluster CA certificate (PEM): what the apiserver's certificate is signed with, and what
    /// certificates from [`KubeCluster::issue_serving_cert`] chain to.
    pub fn ca_cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A serving certificate for `sans` (IPs or DNS names) signed by the cluster CA, e.g. for an
    /// admission webhook server; put [`KubeCluster::ca_cert_pem`] into its `caBundle`.
    pub fn issue_serving_cert(&self, sans: &[&str]) -> Result<CertPair> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        self.ca.issue(
            sans.first().map(String::as_str).unwrap_or("server"),
            &[],
            &sans,
            Usage::Server,
        )
    }

    /// A client certificate for `user` in `groups` (for RBAC tests); build a kubeconfig or a
    /// `kube::Config` from it.
    pub fn issue_client_cert(&self, user: &str, groups: &[&str]) -> Result<CertPair> {
        self.ca.issue(user, groups, &[], Usage::Client)
    }

    /// A kube config that authenticates as `user` in `groups` (not `system:masters` unless
    /// asked): what RBAC makes of it is up to the roles the test creates.
    pub async fn kube_config_as(&self, user: &str, groups: &[&str]) -> Result<kube::Config> {
        let cert = self.issue_client_cert(user, groups)?;
        let path = self.dir.join(format!("kubeconfig-{}", sanitize(user, 40)));
        write_kubeconfig(&path, &self.apiserver_url, self.ca.cert_pem(), &cert)?;
        let kubeconfig = Kubeconfig::read_from(&path)?;
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// The output of a component so far (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn component_log(&self, component: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default()
    }

    /// Creates a namespace named `<prefix>-<n>-<random>` (valid DNS label) and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}-{:04x}", sanitize(prefix, 40), rand::random::<u16>());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("kube-harness/test".to_string(), sanitize(prefix, 63))].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        name
    }

    /// Server-side applies every document of a multi-document YAML file (CRDs are waited for
    /// until Established before the next document). Namespaced objects without a namespace go to
    /// `default`.
    pub async fn apply_yaml_file(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<Vec<kube::api::DynamicObject>> {
        apply::apply_file(&self.client(), path.as_ref(), &ApplyOptions::default()).await
    }

    /// Like [`KubeCluster::apply_yaml_file`], for YAML text.
    pub async fn apply_yaml_str(&self, yaml: &str) -> Result<Vec<kube::api::DynamicObject>> {
        apply::apply_str(&self.client(), yaml, &ApplyOptions::default()).await
    }

    /// Applies YAML text with namespaced objects that name no namespace placed in `namespace`.
    pub async fn apply_yaml_str_in(
        &self,
        yaml: &str,
        namespace: &str,
    ) -> Result<Vec<kube::api::DynamicObject>> {
        let opts = ApplyOptions {
            default_namespace: namespace.to_string(),
            ..Default::default()
        };
        apply::apply_str(&self.client(), yaml, &opts).await
    }

    /// A `kubectl` command (the project-built one) pointed at this cluster.
    pub fn kubectl(&self) -> Result<Command> {
        let mut cmd = Command::new(bins::kubectl()?);
        cmd.env("KUBECONFIG", &self.kubeconfig_path);
        Ok(cmd)
    }

    /// A `helm` command (the project-built one) pointed at this cluster, with its caches in the
    /// cluster's directory.
    pub fn helm(&self) -> Result<Command> {
        let mut cmd = Command::new(bins::helm()?);
        cmd.env("KUBECONFIG", &self.kubeconfig_path)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        Ok(cmd)
    }

    /// Pids of the running components (name, pid), for tests of the harness itself.
    pub fn component_pids(&self) -> Vec<(String, u32)> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// Kills every component (reverse start order) and removes the directory.
    fn shutdown(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = procs.pop() {
            p.kill_now();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            for p in procs.iter() {
                eprintln!(
                    "---- {} (last 40 lines of {}) ----\n{}",
                    p.name(),
                    p.log_path().display(),
                    p.log_tail(40)
                );
            }
        }
        self.shutdown();
    }
}

/// Removes a half-started cluster's directory.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn spawn(dir: &Path, name: &str, cmd: Command) -> Result<ManagedChild> {
    ManagedChild::spawn(name, cmd, &dir.join(format!("{name}.log")))
        .map_err(|e| Error::io(format!("start {name}"), e))
}

/// `$TMPDIR/kube-harness/<kind>-<pid>-<random>`; directories of test processes that no longer
/// exist (killed before they could clean up) are removed on the way.
pub(crate) fn new_scratch_dir(kind: &str) -> Result<PathBuf> {
    let root = std::env::temp_dir().join("kube-harness");
    std::fs::create_dir_all(&root)
        .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{kind}-{}-", std::process::id()))
        .tempdir_in(&root)
        .map_err(|e| Error::io(format!("create a {kind} directory"), e))?;
    Ok(dir.keep())
}

fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, user: &CertPair) -> Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-harness
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: kube-harness-user
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: kube-harness
  context:
    cluster: kube-harness
    user: kube-harness-user
    namespace: default
current-context: kube-harness
",
        ca = b64(ca_pem),
        cert = b64(&user.cert_pem),
        key = b64(&user.key_pem),
    );
    std::fs::write(path, yaml).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Fails with the log of a component that exited.
fn check_alive(procs: &mut [ManagedChild], started: Instant) -> Result<()> {
    for p in procs.iter_mut() {
        if let Some(status) = p.try_wait() {
            return Err(Error::NotReady {
                component: p.name().to_string(),
                detail: format!("exited with {status}"),
                elapsed: started.elapsed(),
                log: p.log_tail(40),
            });
        }
    }
    Ok(())
}

async fn wait_ready(
    config: &kube::Config,
    procs: &mut [ManagedChild],
    timeout: Duration,
    started: Instant,
) -> Result<()> {
    let mut probe_cfg = config.clone();
    probe_cfg.default_retry = false;
    probe_cfg.connect_timeout = Some(Duration::from_secs(1));
    probe_cfg.read_timeout = Some(Duration::from_secs(5));
    let client = kube::Client::try_from(probe_cfg)?;
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        check_alive(procs, started)?;
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("readyz request");
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => break,
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            let api = procs.iter().find(|p| p.name() == "kube-apiserver");
            return Err(Error::NotReady {
                component: "kube-apiserver".into(),
                detail: format!("not ready within {timeout:?}: {last}"),
                elapsed: started.elapsed(),
                log: api.map(|p| p.log_tail(40)).unwrap_or_default(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The `default` namespace is created by a post-start hook that /readyz does not wait for.
    let namespaces: Api<Namespace> = Api::all(client);
    loop {
        check_alive(procs, started)?;
        if namespaces.get_opt("default").await?.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: "namespace default".into(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_listening(
    addr: std::net::SocketAddr,
    procs: &mut [ManagedChild],
    timeout: Duration,
    started: Instant,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_alive(procs, started)?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let last = procs
                .last()
                .map(|p| (p.name().to_string(), p.log_tail(40)))
                .unwrap_or_default();
            return Err(Error::NotReady {
                component: last.0,
                detail: format!("did not listen on {addr} within {timeout:?}"),
                elapsed: started.elapsed(),
                log: last.1,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lower-case alphanumerics and dashes, at most `max` characters, never empty or dash-edged.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while out.ends_with('-') {
        out.pop();
    }
    let out = out.trim_start_matches('-').to_string();
    if out.is_empty() { "x".to_string() } else { out }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn sanitize_makes_dns_labels() {
        assert_eq!(sanitize("My_Test::case", 40), "my-test--case");
        assert_eq!(sanitize("--", 40), "x");
        assert_eq!(sanitize("abcdef", 3), "abc");
        assert_eq!(sanitize("ab-cdef", 3), "ab");
    }
}
