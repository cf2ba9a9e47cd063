//! The local backend: sandboxes as `agent-runtime` processes on this machine, no Kubernetes.
//! It is what `make run` starts. Each sandbox has its own loopback address (from
//! `--address-range`, never 127.0.0.1 where the platform listens), its own home directory under
//! the data directory, its own process group and cgroup. Warm pools per template are claimed
//! in-process; routes go to the gateways through the in-process sandbox-xds, and every change
//! waits until the connected gateways acknowledged it.
//!
//! State on disk (`<data>/sandboxes/<id>/sandbox.json`, `<data>/snapshots/<id>/`) survives a
//! restart: a sandbox that was running comes back paused with its files (its processes are
//! gone), a paused one stays paused, pool sandboxes are discarded, and any process a previous
//! run left behind is killed first. Local sandboxes are processes of the manager's user: they
//! are not a security boundary.

mod contain;
mod expiry;
mod pool;
pub(crate) mod runtime;
mod snapshot;
pub mod templates;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use sandbox_xds::XdsServer;
use sandbox_xds_wire::v1::SandboxRoute;
use sandbox_xds_wire::v1::sandbox_route::State as RouteState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use self::contain::Containment;
use self::expiry::Expiry;
use self::pool::Pool;
use self::runtime::{AddressPool, Launcher, RuntimeHttp, RuntimeProcess, StartOptions};
use self::templates::Template;
use crate::backend::{Backend, Capabilities};
use crate::metrics::Metrics;
use crate::model::{
    BackendError, BackendResult, Caller, Connected, CreateSpec, Deadline, LogLine, MetricSample,
    OnTimeout, Paused, SandboxId, SandboxRecord, SandboxState, SnapshotRecord, TemplateRecord,
    random_alnum,
};

/// The envd version local sandboxes report (the agent-runtime implements every gate up to it).
pub const ENVD_VERSION: &str = "0.6.13";
/// The route namespace of local sandboxes.
const ROUTE_NAMESPACE: &str = "local";

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub data_dir: PathBuf,
    pub runtime_bin: PathBuf,
    pub templates: Vec<Template>,
    /// Loopback range sandbox addresses come from.
    pub address_range: String,
    /// Gateways that must acknowledge a route before a create answers (besides every connected
    /// one).
    pub min_gateways: u32,
    /// How long a create waits for the gateways.
    pub route_wait: Duration,
    /// Bound of a claim without `claim-timeout-seconds`.
    pub claim_timeout: Duration,
    /// Bound of a sandbox start without `wait-ready-timeout-seconds`.
    pub startup_timeout: Duration,
    /// Most sandboxes (claimed and pooled) at once.
    pub max_sandboxes: usize,
}

/// What is kept on disk of a claimed sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    record: SandboxRecord,
    env_vars: BTreeMap<String, String>,
    start_env: BTreeMap<String, String>,
    workdir: String,
    #[serde(default)]
    services: Vec<templates::Service>,
    /// A paused sandbox is killed at this time (`reserve-paused-sandbox-duration`).
    paused_until: Option<Timestamp>,
    reserve_paused_for: Option<Duration>,
    /// Stopped by the manager (a stop or a crash) while running: shown as paused, but its
    /// deadline still applies as if it ran (a kill-on-timeout sandbox is killed at `end_at`).
    #[serde(default)]
    suspended: bool,
}

/// A claimed sandbox: its state behind a lock that serialises its lifecycle operations.
type Sbx = tokio::sync::Mutex<SbxState>;

#[derive(Debug)]
struct SbxState {
    p: Persisted,
    /// The runtime; `None` after a restart until the sandbox is resumed.
    process: Option<RuntimeProcess>,
    uid: String,
    /// Killed: the entry is on its way out of the map.
    gone: bool,
}

impl SbxState {
    fn ip(&self) -> Option<Ipv4Addr> {
        match self.p.record.ip {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        }
    }
}

/// The local backend. Cheap to clone.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: LocalConfig,
    launcher: Launcher,
    addrs: AddressPool,
    http: RuntimeHttp,
    xds: XdsServer,
    metrics: Arc<Metrics>,
    pools: HashMap<String, Arc<Pool>>,
    sandboxes: Mutex<HashMap<SandboxId, Arc<Sbx>>>,
    snapshots: Mutex<HashMap<String, SnapshotRecord>>,
    /// Route resource versions: microseconds since the epoch at start, then +1 per change, so
    /// versions keep growing across restarts (gateways keep the table they had).
    rv: AtomicU64,
    expiry: Expiry,
    shutdown: CancellationToken,
}

fn sandbox_dir(data: &Path, id: &SandboxId) -> PathBuf {
    data.join("sandboxes").join(id.as_str())
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(e.to_string())
}

impl LocalBackend {
    /// Opens the data directory (restoring claimed sandboxes as paused and killing whatever a
    /// previous run left), publishes their routes, and starts the pools and the expiry task.
    pub async fn open(
        cfg: LocalConfig,
        xds: XdsServer,
        metrics: Arc<Metrics>,
    ) -> Result<LocalBackend, String> {
        std::fs::create_dir_all(cfg.data_dir.join("sandboxes"))
            .map_err(|e| format!("{}: {e}", cfg.data_dir.display()))?;
        let data = cfg
            .data_dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", cfg.data_dir.display()))?;
        let (instance, containment) = instance_of(&data);
        tracing::info!(containment = %containment.describe(), "local sandboxes containment");
        let launcher = Launcher {
            runtime_bin: cfg.runtime_bin.clone(),
            user: crate::sys::current_user_name(),
            containment: containment.clone(),
            instance,
            startup_timeout: cfg.startup_timeout,
        };
        let addrs = AddressPool::parse(&cfg.address_range)?;
        let pools = cfg
            .templates
            .iter()
            .map(|t| (t.id.clone(), Arc::new(Pool::new(t.clone()))))
            .collect();
        let start_rv = Timestamp::now().as_microsecond().max(1) as u64;
        let backend = LocalBackend {
            inner: Arc::new(Inner {
                launcher,
                addrs,
                http: RuntimeHttp::default(),
                xds,
                metrics,
                pools,
                sandboxes: Mutex::new(HashMap::new()),
                snapshots: Mutex::new(HashMap::new()),
                rv: AtomicU64::new(start_rv),
                expiry: Expiry::default(),
                shutdown: CancellationToken::new(),
                cfg,
            }),
        };
        backend.inner.recover(&containment).await;
        backend.inner.xds.routes.mark_synced();
        let weak = Arc::downgrade(&backend.inner);
        tokio::spawn(expiry_loop(weak.clone()));
        for pool in backend.inner.pools.values() {
            tokio::spawn(refill_loop(weak.clone(), pool.clone()));
        }
        backend.inner.update_gauges();
        Ok(backend)
    }
}

/// The id of the manager instance that owns `data` (canonical) and its containment.
fn instance_of(data: &Path) -> (String, Containment) {
    let instance = hex::encode(&Sha256::digest(data.as_os_str().as_encoded_bytes())[..6]);
    let containment = Containment::detect(&format!("kruise-sandboxes-{instance}"));
    (instance, containment)
}

/// Kills every sandbox process a run of the manager with this data directory left behind (a
/// crashed manager: its runtimes die with it, but commands they started may not). Records and
/// files stay; the next start restores the sandboxes as paused. Returns how many sandboxes had
/// leftovers to kill.
pub async fn reap(data_dir: &Path) -> Result<usize, String> {
    let data = data_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let (_, containment) = instance_of(&data);
    let mut n = 0;
    let entries = std::fs::read_dir(data.join("sandboxes"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for path in entries {
        if let Ok(Some(note)) =
            crate::store::read_json::<runtime::ProcessNote>(&path.join("runtime.json"))
        {
            runtime::kill_leftover(&note).await;
            n += 1;
        }
    }
    if let Containment::Cgroup(base) = &containment {
        if let Ok(rd) = std::fs::read_dir(base) {
            for e in rd.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
                contain::kill(Some(&e.path()), 0, "").await;
            }
        }
        let _ = std::fs::remove_dir(base);
    }
    Ok(n)
}

impl Inner {
    fn next_rv(&self) -> u64 {
        self.rv.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Every claimed sandbox (unlocked handles).
    fn all(&self) -> Vec<Arc<Sbx>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn lookup(&self, id: &SandboxId) -> Option<Arc<Sbx>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The sandbox, locked, if the caller sees it.
    async fn locked(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> BackendResult<(Arc<Sbx>, tokio::sync::OwnedMutexGuard<SbxState>)>
    where
        Self: Sized,
    {
        let _ = caller;
        let sbx = self
            .lookup(id)
            .ok_or_else(|| BackendError::sandbox_not_found(id))?;
        let guard = sbx_lock(&sbx).await;
        if guard.gone || !caller.sees(&guard.p.record.team_id) {
            return Err(BackendError::sandbox_not_found(id));
        }
        Ok((sbx, guard))
    }

    fn persist(&self, st: &SbxState) -> BackendResult<()> {
        let path = sandbox_dir(&self.cfg.data_dir, &st.p.record.id).join("sandbox.json");
        crate::store::write_json(&path, &st.p).map_err(internal)
    }

    fn route(&self, st: &SbxState, state: RouteState) -> SandboxRoute {
        let token = st.p.record.envd_access_token.as_deref();
        SandboxRoute {
            id: st.p.record.id.to_string(),
            namespace: ROUTE_NAMESPACE.into(),
            name: st.p.record.id.to_string(),
            uid: st.uid.clone(),
            resource_version: self.next_rv(),
            ip: st.ip().map(|i| i.to_string()).unwrap_or_default(),
            state: state as i32,
            access_token_sha256: token
                .map(|t| Sha256::digest(t.as_bytes()).to_vec())
                .unwrap_or_default(),
            traffic_token_sha256: Vec::new(),
            require_access_token: token.is_some(),
            require_traffic_token: false,
        }
    }

    /// Publishes a route and waits until every connected gateway (and at least
    /// `min_gateways`) acknowledged it.
    async fn publish(&self, route: SandboxRoute) -> BackendResult<()> {
        let started = Instant::now();
        let (id, rv) = (route.id.clone(), route.resource_version);
        self.xds.routes.upsert(route);
        let r = self
            .xds
            .route_sync()
            .wait(&id, rv, self.cfg.min_gateways, self.cfg.route_wait)
            .await;
        self.metrics.observe_stage("route", started.elapsed());
        if r.synced {
            Ok(())
        } else {
            Err(BackendError::Unavailable {
                message: format!(
                    "the gateways did not acknowledge the route of sandbox {id} within {:?} ({} connected, {} behind, {} required)",
                    self.cfg.route_wait, r.gateways, r.pending_gateways, self.cfg.min_gateways
                ),
                retry_after: Duration::from_secs(1),
            })
        }
    }

    /// Withdraws a sandbox's route: a `dead` route first (acknowledged, so the gateways answer
    /// "not found" from now on), then the deletion.
    async fn withdraw(&self, st: &SbxState) {
        let dead = self.route(st, RouteState::Dead);
        let rv = dead.resource_version;
        if let Err(e) = self.publish(dead).await {
            tracing::warn!(sandbox = %st.p.record.id, error = %e, "route withdrawal not acknowledged");
        }
        self.xds
            .routes
            .delete(ROUTE_NAMESPACE, st.p.record.id.as_str(), Some(rv + 1));
    }

    fn update_gauges(&self) {
        for (t, p) in &self.pools {
            self.metrics.set_pool_available(t, p.available());
        }
        let (mut running, mut paused) = (0, 0);
        for s in self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if let Ok(st) = s.try_lock() {
                match st.p.record.state {
                    SandboxState::Running => running += 1,
                    SandboxState::Paused => paused += 1,
                }
            }
        }
        self.metrics.set_sandboxes("running", running);
        self.metrics.set_sandboxes("paused", paused);
    }

    fn count(&self) -> usize {
        let claimed = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let pooled: usize = self
            .pools
            .values()
            .map(|p| p.available() + p.starting.load(Ordering::Relaxed))
            .sum();
        claimed + pooled
    }

    /// Starts a new sandbox process with a fresh id and address; its home is empty or a copy
    /// of `seed`.
    async fn start_new(
        &self,
        opts: &StartOptions,
        seed: Option<&Path>,
        timeout: Duration,
    ) -> Result<RuntimeProcess, String> {
        let id = SandboxId::random();
        let dir = sandbox_dir(&self.cfg.data_dir, &id);
        let home = runtime::home_of(&dir);
        match seed {
            Some(src) => {
                let (src, dst) = (src.to_path_buf(), home.clone());
                tokio::task::spawn_blocking(move || snapshot::copy_tree(&src, &dst))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot copy the snapshot: {e}"))?;
            }
            None => {
                std::fs::create_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?
            }
        }
        let ip = self
            .addrs
            .take()
            .ok_or_else(|| format!("no free address left in {}", self.cfg.address_range))?;
        let started = Instant::now();
        let launcher = Launcher {
            startup_timeout: timeout,
            ..self.launcher.clone()
        };
        let r = launcher.start(&id, &dir, ip, opts, &self.http).await;
        self.metrics.observe_stage("start", started.elapsed());
        if r.is_err() {
            self.addrs.release(ip);
            let _ = std::fs::remove_dir_all(&dir);
        }
        r
    }

    /// Kills a process that never became (or stopped being) a claimed sandbox.
    async fn discard(&self, mut p: RuntimeProcess) {
        p.kill().await;
        self.addrs.release(p.ip);
        let _ = tokio::fs::remove_dir_all(&p.dir).await;
    }

    fn template(&self, name: &str) -> Option<&Template> {
        self.cfg.templates.iter().find(|t| t.answers_to(name))
    }

    fn find_snapshot(&self, caller: &Caller, name: &str) -> Option<SnapshotRecord> {
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|s| {
                caller.sees(&s.team_id) && (s.id == name || s.names.iter().any(|n| n == name))
            })
            .cloned()
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("snapshots").join(id)
    }

    /// A process for a create: from the pool, or started now when the spec allows it.
    async fn acquire(
        &self,
        spec: &CreateSpec,
        deadline: tokio::time::Instant,
    ) -> BackendResult<(RuntimeProcess, String, StartOptions)> {
        let ready_timeout = spec
            .extensions
            .wait_ready_timeout
            .unwrap_or(self.cfg.startup_timeout)
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let limit = || {
            if self.count() >= self.cfg.max_sandboxes {
                Err(BackendError::Unavailable {
                    message: format!(
                        "the local backend runs at most {} sandboxes (--max-sandboxes)",
                        self.cfg.max_sandboxes
                    ),
                    retry_after: Duration::from_secs(5),
                })
            } else {
                Ok(())
            }
        };
        if let Some(t) = self.template(&spec.template_id) {
            let opts = StartOptions {
                env: t.env.clone(),
                workdir: t.workdir.clone(),
                setup: t.setup.clone(),
                services: t.services.clone(),
            };
            let started = Instant::now();
            if let Some(p) = self.pools.get(&t.id).and_then(|p| p.take()) {
                self.metrics.observe_stage("pick", started.elapsed());
                return Ok((p, t.id.clone(), opts));
            }
            if !spec.extensions.create_on_no_stock {
                return Err(BackendError::Unavailable {
                    message: format!(
                        "no warm sandbox of template {} is available and create-on-no-stock is false",
                        t.id
                    ),
                    retry_after: Duration::from_secs(1),
                });
            }
            limit()?;
            let p = self
                .start_new(&opts, None, ready_timeout)
                .await
                .map_err(|e| BackendError::Unavailable {
                    message: format!("cannot start a sandbox of template {}: {e}", t.id),
                    retry_after: Duration::from_secs(1),
                })?;
            return Ok((p, t.id.clone(), opts));
        }
        let Some(snap) = self.find_snapshot(&spec.caller, &spec.template_id) else {
            return Err(BackendError::NotFound(format!(
                "template '{}' not found",
                spec.template_id
            )));
        };
        limit()?;
        let t = self.template(&snap.template_id);
        let opts = StartOptions {
            env: t.map(|t| t.env.clone()).unwrap_or_default(),
            workdir: t.map(|t| t.workdir.clone()).unwrap_or_default(),
            setup: None,
            services: t.map(|t| t.services.clone()).unwrap_or_default(),
        };
        let home = runtime::home_of(&self.snapshot_dir(&snap.id));
        let p = self
            .start_new(&opts, Some(&home), ready_timeout)
            .await
            .map_err(|e| BackendError::Unavailable {
                message: format!("cannot start a sandbox from snapshot {}: {e}", snap.id),
                retry_after: Duration::from_secs(1),
            })?;
        Ok((p, snap.id.clone(), opts))
    }

    /// Create: acquire, `/init`, record, route. A process that fails `/init` is discarded and
    /// another one taken, until the claim's deadline.
    async fn create(self: &Arc<Self>, spec: CreateSpec) -> BackendResult<SandboxRecord> {
        let claim_timeout = spec
            .extensions
            .claim_timeout
            .unwrap_or(self.cfg.claim_timeout);
        let deadline = tokio::time::Instant::now() + claim_timeout;
        let token = spec.secure.then(|| crate::model::random_hex(16));
        let mut last_error = None;
        let (process, template_id, opts) = loop {
            let attempt = tokio::time::timeout_at(deadline, async {
                let (p, t, o) = self.acquire(&spec, deadline).await?;
                if !spec.extensions.skip_init_runtime {
                    let started = Instant::now();
                    if let Err(e) = self.http.init(p.ip, &spec.env_vars, token.as_deref()).await {
                        self.discard(p).await;
                        return Err(e);
                    }
                    self.metrics.observe_stage("init", started.elapsed());
                }
                Ok((p, t, o))
            })
            .await;
            match attempt {
                Ok(Ok(x)) => break x,
                Ok(Err(e @ BackendError::Internal(_))) => {
                    tracing::warn!(error = %e, "sandbox failed to initialise; trying another");
                    last_error = Some(e);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(BackendError::Unavailable {
                        message: format!(
                            "no sandbox could be claimed within {claim_timeout:?}{}",
                            last_error.map(|e| format!(": {e}")).unwrap_or_default()
                        ),
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        };
        let now = Timestamp::now();
        let t = self.template(&template_id);
        let record = SandboxRecord {
            id: process.id.clone(),
            team_id: spec.caller.team.id.clone(),
            owner_key_id: spec.caller.key_id.clone(),
            template_id: spec.template_id.clone(),
            alias: t.filter(|t| t.id != spec.template_id).map(|t| t.id.clone()),
            metadata: spec.metadata.clone(),
            labels: spec.labels.clone(),
            envd_access_token: token,
            started_at: now,
            end_at: (!spec.extensions.never_timeout).then(|| now + spec.timeout),
            state: SandboxState::Running,
            lifecycle: spec.lifecycle,
            cpu_count: t.map(|t| t.cpu_count).unwrap_or(2),
            memory_mb: t.map(|t| t.memory_mb).unwrap_or(512),
            disk_size_mb: t.map(|t| t.disk_size_mb).unwrap_or(1024),
            allow_internet_access: Some(true),
            ip: Some(IpAddr::V4(process.ip)),
            return_ip: spec.extensions.return_sandbox_ip,
            envd_version: ENVD_VERSION.into(),
        };
        let st = SbxState {
            p: Persisted {
                record: record.clone(),
                env_vars: spec.env_vars.clone(),
                start_env: opts.env,
                workdir: opts.workdir,
                services: opts.services,
                paused_until: None,
                reserve_paused_for: spec.extensions.reserve_paused_for,
                suspended: false,
            },
            process: Some(process),
            uid: random_alnum(16),
            gone: false,
        };
        if let Err(e) = self.persist(&st) {
            self.abandon(st).await;
            return Err(e);
        }
        let route = self.route(&st, RouteState::Running);
        if let Err(e) = self.publish(route).await {
            self.abandon(st).await;
            return Err(e);
        }
        if let Some(end) = record.end_at {
            self.expiry.schedule(&record.id, end);
        }
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), Arc::new(tokio::sync::Mutex::new(st)));
        self.update_gauges();
        tracing::info!(sandbox = %record.id, template = %record.template_id, team = %record.team_id, ip = ?record.ip, "sandbox created");
        Ok(record)
    }

    /// Undoes a create that failed after its process was taken.
    async fn abandon(&self, mut st: SbxState) {
        self.xds.routes.delete(
            ROUTE_NAMESPACE,
            st.p.record.id.as_str(),
            Some(self.next_rv()),
        );
        if let Some(p) = st.process.take() {
            self.discard(p).await;
        }
    }

    /// Kills a locked sandbox: route withdrawn, processes killed, files removed.
    async fn destroy(&self, st: &mut SbxState) {
        st.gone = true;
        self.withdraw(st).await;
        if let Some(mut p) = st.process.take() {
            p.kill().await;
        }
        if let Some(ip) = st.ip() {
            self.addrs.release(ip);
        }
        let dir = sandbox_dir(&self.cfg.data_dir, &st.p.record.id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the sandbox's files");
        }
        self.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&st.p.record.id);
        tracing::info!(sandbox = %st.p.record.id, "sandbox killed");
    }

    /// Freezes a running sandbox (memory kept) and marks it paused.
    async fn pause_locked(&self, st: &mut SbxState) -> BackendResult<()> {
        if let Some(p) = &st.process {
            p.freeze()
                .await
                .map_err(|e| internal(format!("cannot freeze the sandbox: {e}")))?;
        }
        st.p.record.state = SandboxState::Paused;
        st.p.paused_until = st.p.reserve_paused_for.map(|d| Timestamp::now() + d);
        self.persist(st)?;
        let route = self.route(st, RouteState::Paused);
        if let Err(e) = self.publish(route).await {
            tracing::warn!(sandbox = %st.p.record.id, error = %e, "paused route not acknowledged");
        }
        if let Some(t) = st.p.paused_until {
            self.expiry.schedule(&st.p.record.id, t);
        }
        tracing::info!(sandbox = %st.p.record.id, "sandbox paused");
        Ok(())
    }

    /// Thaws a paused sandbox, or starts a new runtime on its files when its processes are
    /// gone (after a restart), and re-initialises it.
    async fn resume_locked(&self, st: &mut SbxState, timeout: Duration) -> BackendResult<()> {
        let alive = st.process.as_mut().is_some_and(|p| p.alive());
        if alive {
            if let Some(p) = &st.process {
                p.thaw()
                    .await
                    .map_err(|e| internal(format!("cannot thaw the sandbox: {e}")))?;
            }
        } else {
            st.process = None;
            let ip = match st.ip() {
                Some(ip) if self.addrs.claim(ip) => ip,
                _ => self.addrs.take().ok_or_else(|| {
                    internal(format!(
                        "no free address left in {}",
                        self.cfg.address_range
                    ))
                })?,
            };
            let opts = StartOptions {
                env: st.p.start_env.clone(),
                workdir: st.p.workdir.clone(),
                setup: None,
                services: st.p.services.clone(),
            };
            let dir = sandbox_dir(&self.cfg.data_dir, &st.p.record.id);
            let p = self
                .launcher
                .start(&st.p.record.id, &dir, ip, &opts, &self.http)
                .await
                .map_err(|e| {
                    self.addrs.release(ip);
                    BackendError::Unavailable {
                        message: format!("cannot restart the sandbox's runtime: {e}"),
                        retry_after: Duration::from_secs(1),
                    }
                })?;
            if st.p.record.envd_access_token.is_some() || !st.p.env_vars.is_empty() {
                self.http
                    .init(ip, &st.p.env_vars, st.p.record.envd_access_token.as_deref())
                    .await?;
            }
            st.p.record.ip = Some(IpAddr::V4(ip));
            st.process = Some(p);
        }
        st.p.record.state = SandboxState::Running;
        st.p.paused_until = None;
        st.p.suspended = false;
        let now = Timestamp::now();
        if st.p.record.end_at.is_some() {
            let end = now + timeout;
            st.p.record.end_at = Some(end);
            self.expiry.schedule(&st.p.record.id, end);
        }
        self.persist(st)?;
        let route = self.route(st, RouteState::Running);
        self.publish(route).await?;
        tracing::info!(sandbox = %st.p.record.id, "sandbox resumed");
        Ok(())
    }

    /// A deadline fell due: the sandbox's own deadline decides what happens.
    async fn expire(&self, id: SandboxId) {
        let Some(sbx) = self.lookup(&id) else { return };
        let mut st = sbx_lock(&sbx).await;
        if st.gone {
            return;
        }
        let now = Timestamp::now();
        match st.p.record.state {
            SandboxState::Running => {
                let Some(end) = st.p.record.end_at else {
                    return;
                };
                if end > now {
                    return;
                }
                match st.p.record.lifecycle.on_timeout {
                    OnTimeout::Pause => {
                        if let Err(e) = self.pause_locked(&mut st).await {
                            tracing::error!(sandbox = %id, error = %e, "auto-pause failed; killing");
                            self.destroy(&mut st).await;
                        }
                    }
                    OnTimeout::Kill => {
                        tracing::info!(sandbox = %id, "sandbox reached its timeout");
                        self.destroy(&mut st).await;
                    }
                }
            }
            SandboxState::Paused if st.p.suspended => {
                if st.p.record.end_at.is_none_or(|e| e > now) {
                    return;
                }
                match st.p.record.lifecycle.on_timeout {
                    OnTimeout::Kill => {
                        tracing::info!(sandbox = %id, "stopped sandbox reached its timeout");
                        self.destroy(&mut st).await;
                    }
                    OnTimeout::Pause => self.settle_suspended(&mut st, now),
                }
            }
            SandboxState::Paused => {
                if st.p.paused_until.is_some_and(|t| t <= now) {
                    tracing::info!(sandbox = %id, "paused sandbox reached its retention");
                    self.destroy(&mut st).await;
                }
            }
        }
        drop(st);
        self.update_gauges();
    }

    /// A stopped (suspended) auto-pause sandbox whose deadline passed is now simply paused.
    fn settle_suspended(&self, st: &mut SbxState, now: Timestamp) {
        st.p.suspended = false;
        st.p.paused_until = st.p.reserve_paused_for.map(|d| now + d);
        if let Err(e) = self.persist(st) {
            tracing::error!(error = %e, "cannot record a paused sandbox");
        }
        if let Some(t) = st.p.paused_until {
            self.expiry.schedule(&st.p.record.id, t);
        }
    }

    /// Restores claimed sandboxes from disk as paused, discards pool leftovers, kills every
    /// process a previous run left.
    async fn recover(&self, containment: &Containment) {
        let dir = self.cfg.data_dir.join("sandboxes");
        let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        for path in entries {
            if let Ok(Some(note)) =
                crate::store::read_json::<runtime::ProcessNote>(&path.join("runtime.json"))
            {
                runtime::kill_leftover(&note).await;
            }
            let persisted: Option<Persisted> = crate::store::read_json(&path.join("sandbox.json"))
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "unreadable sandbox record; discarding the sandbox");
                    None
                });
            let Some(mut p) = persisted else {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            };
            let now = Timestamp::now();
            if p.record.state == SandboxState::Running {
                // The previous run crashed: like a stop.
                p.record.state = SandboxState::Paused;
                p.suspended = true;
            }
            let deadline_passed = p.record.end_at.is_some_and(|e| e <= now);
            let killed = (p.suspended
                && deadline_passed
                && p.record.lifecycle.on_timeout == OnTimeout::Kill)
                || (!p.suspended && p.paused_until.is_some_and(|t| t <= now));
            if killed {
                tracing::info!(sandbox = %p.record.id, "sandbox expired while the manager was down");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if p.suspended {
                tracing::info!(sandbox = %p.record.id, "sandbox restored as paused (its processes ended with the previous run; its files are kept)");
            }
            if let Some(IpAddr::V4(ip)) = p.record.ip {
                self.addrs.claim(ip);
            }
            let st = SbxState {
                p,
                process: None,
                uid: random_alnum(16),
                gone: false,
            };
            if let Err(e) = self.persist(&st) {
                tracing::error!(error = %e, "cannot rewrite a restored sandbox record");
            }
            self.xds.routes.upsert(self.route(&st, RouteState::Paused));
            let mut st = st;
            if st.p.suspended && deadline_passed {
                self.settle_suspended(&mut st, now);
            } else if st.p.suspended {
                if let Some(end) = st.p.record.end_at {
                    self.expiry.schedule(&st.p.record.id, end);
                }
            } else if let Some(t) = st.p.paused_until {
                self.expiry.schedule(&st.p.record.id, t);
            }
            self.sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    st.p.record.id.clone(),
                    Arc::new(tokio::sync::Mutex::new(st)),
                );
        }
        if let Containment::Cgroup(base) = containment
            && let Ok(rd) = std::fs::read_dir(base)
        {
            for e in rd.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
                contain::kill(Some(&e.path()), 0, "").await;
            }
        }
        for s in snapshot::load_all(&self.cfg.data_dir.join("snapshots")) {
            self.snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(s.id.clone(), s);
        }
    }
}

async fn sbx_lock(sbx: &Arc<Sbx>) -> tokio::sync::OwnedMutexGuard<SbxState> {
    sbx.clone().lock_owned().await
}

async fn expiry_loop(inner: Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        let shutdown = i.shutdown.clone();
        let due = tokio::select! {
            d = i.expiry.next_due() => d,
            _ = shutdown.cancelled() => return,
        };
        for id in due {
            let i = i.clone();
            tokio::spawn(async move { i.expire(id).await });
        }
    }
}

/// How long takes must pause before a pool that is more than half full is refilled.
const REFILL_SETTLE: Duration = Duration::from_millis(50);

async fn refill_loop(inner: Weak<Inner>, pool: Arc<Pool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.shutdown.is_cancelled() {
            return;
        }
        let need = pool.deficit();
        if need == 0 || i.count() >= i.cfg.max_sandboxes {
            let wake = pool.wake.notified();
            let shutdown = i.shutdown.clone();
            drop(i);
            tokio::select! {
                _ = wake => {}
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        }
        // While more than half the pool is still there, let a burst of creates finish before
        // spending CPU on starting processes: refill once takes have paused for a moment.
        if pool.available() * 2 > pool.template.pool_size {
            let since = pool.since_last_take();
            if since < REFILL_SETTLE {
                let shutdown = i.shutdown.clone();
                drop(i);
                tokio::select! {
                    _ = tokio::time::sleep(REFILL_SETTLE - since) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
        }
        // Start up to two at a time (a 2-core machine runs the tests too).
        let batch = need.min(2);
        pool.starting.fetch_add(batch, Ordering::Relaxed);
        let opts = StartOptions {
            env: pool.template.env.clone(),
            workdir: pool.template.workdir.clone(),
            setup: pool.template.setup.clone(),
            services: pool.template.services.clone(),
        };
        let starts = (0..batch).map(|_| i.start_new(&opts, None, i.cfg.startup_timeout));
        let results = futures::future::join_all(starts).await;
        let mut failed = false;
        for r in results {
            pool.starting.fetch_sub(1, Ordering::Relaxed);
            match r {
                Ok(p) if i.shutdown.is_cancelled() => i.discard(p).await,
                Ok(p) => pool.put(p),
                Err(e) => {
                    failed = true;
                    tracing::error!(template = %pool.template.id, error = %e, "cannot start a pool sandbox");
                }
            }
        }
        i.update_gauges();
        if failed {
            let shutdown = i.shutdown.clone();
            drop(i);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}

fn record_of(st: &SbxState) -> SandboxRecord {
    st.p.record.clone()
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kubernetes: false,
            egress_rules: false,
            auto_resume: false,
        }
    }

    async fn create(&self, spec: CreateSpec) -> BackendResult<SandboxRecord> {
        self.inner.create(spec).await
    }

    async fn get(&self, caller: &Caller, id: &SandboxId) -> BackendResult<SandboxRecord> {
        let (_, st) = self.inner.locked(caller, id).await?;
        Ok(record_of(&st))
    }

    async fn list(&self, caller: &Caller) -> BackendResult<Vec<SandboxRecord>> {
        let all = self.inner.all();
        let mut out = Vec::with_capacity(all.len());
        for s in all {
            let st = sbx_lock(&s).await;
            if !st.gone && caller.sees(&st.p.record.team_id) {
                out.push(record_of(&st));
            }
        }
        Ok(out)
    }

    async fn kill(&self, caller: &Caller, id: &SandboxId) -> BackendResult<()> {
        let (_, mut st) = self.inner.locked(caller, id).await?;
        self.inner.destroy(&mut st).await;
        drop(st);
        self.inner.update_gauges();
        Ok(())
    }

    async fn set_deadline(
        &self,
        caller: &Caller,
        id: &SandboxId,
        deadline: Deadline,
    ) -> BackendResult<SandboxRecord> {
        let (_, mut st) = self.inner.locked(caller, id).await?;
        if st.p.record.state == SandboxState::Paused {
            return Err(BackendError::Conflict(format!(
                "sandbox {id} is paused; connect resumes it"
            )));
        }
        let Some(current) = st.p.record.end_at else {
            return Ok(record_of(&st));
        };
        let end = match deadline {
            Deadline::Set(t) => t,
            Deadline::AtLeast(t) => t.max(current),
        };
        if end != current {
            st.p.record.end_at = Some(end);
            self.inner.persist(&st)?;
            self.inner.expiry.schedule(id, end);
        }
        Ok(record_of(&st))
    }

    async fn pause(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Paused> {
        let (_, mut st) = self.inner.locked(caller, id).await?;
        if st.p.record.state == SandboxState::Paused {
            return Ok(Paused::Already);
        }
        self.inner.pause_locked(&mut st).await?;
        drop(st);
        self.inner.update_gauges();
        Ok(Paused::Now)
    }

    async fn connect(
        &self,
        caller: &Caller,
        id: &SandboxId,
        timeout: Duration,
    ) -> BackendResult<(SandboxRecord, Connected)> {
        let (_, mut st) = self.inner.locked(caller, id).await?;
        match st.p.record.state {
            SandboxState::Running => {
                if let Some(current) = st.p.record.end_at {
                    let end = (Timestamp::now() + timeout).max(current);
                    if end != current {
                        st.p.record.end_at = Some(end);
                        self.inner.persist(&st)?;
                        self.inner.expiry.schedule(id, end);
                    }
                }
                Ok((record_of(&st), Connected::Running))
            }
            SandboxState::Paused => {
                self.inner.resume_locked(&mut st, timeout).await?;
                let r = record_of(&st);
                drop(st);
                self.inner.update_gauges();
                Ok((r, Connected::Resumed))
            }
        }
    }

    async fn metrics(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Vec<MetricSample>> {
        let (ip, token, running) = {
            let (_, st) = self.inner.locked(caller, id).await?;
            (
                st.ip(),
                st.p.record.envd_access_token.clone(),
                st.p.record.state == SandboxState::Running && st.process.is_some(),
            )
        };
        match (ip, running) {
            (Some(ip), true) => Ok(vec![self.inner.http.metrics(ip, token.as_deref()).await?]),
            _ => Ok(Vec::new()),
        }
    }

    async fn logs(
        &self,
        caller: &Caller,
        id: &SandboxId,
        limit: usize,
    ) -> BackendResult<Vec<LogLine>> {
        let _ = self.inner.locked(caller, id).await?;
        let path = sandbox_dir(&self.inner.cfg.data_dir, id).join("runtime.log");
        Ok(snapshot::read_logs(&path, limit))
    }

    async fn snapshot(
        &self,
        caller: &Caller,
        id: &SandboxId,
        name: Option<String>,
    ) -> BackendResult<SnapshotRecord> {
        let (_, st) = self.inner.locked(caller, id).await?;
        let snap_id = random_alnum(20);
        let dst = runtime::home_of(&self.inner.snapshot_dir(&snap_id));
        let src = runtime::home_of(&sandbox_dir(&self.inner.cfg.data_dir, id));
        // Freeze a running sandbox for the copy, so the snapshot is consistent.
        let frozen = match (&st.process, st.p.record.state) {
            (Some(p), SandboxState::Running) => p.freeze().await.is_ok(),
            _ => false,
        };
        let copied = tokio::task::spawn_blocking(move || snapshot::copy_tree(&src, &dst))
            .await
            .map_err(internal)
            .and_then(|r| r.map_err(internal));
        if frozen && let Some(p) = &st.process {
            let _ = p.thaw().await;
        }
        if let Err(e) = copied {
            let _ = std::fs::remove_dir_all(self.inner.snapshot_dir(&snap_id));
            return Err(e);
        }
        let template_id =
            st.p.record
                .alias
                .clone()
                .unwrap_or_else(|| st.p.record.template_id.clone());
        let record = SnapshotRecord {
            id: snap_id.clone(),
            names: name.into_iter().collect(),
            team_id: st.p.record.team_id.clone(),
            owner_key_id: caller.key_id.clone(),
            sandbox_id: id.clone(),
            template_id: self
                .inner
                .find_snapshot(caller, &template_id)
                .map(|s| s.template_id)
                .unwrap_or(template_id),
            created_at: Timestamp::now(),
        };
        crate::store::write_json(
            &self.inner.snapshot_dir(&snap_id).join("snapshot.json"),
            &record,
        )
        .map_err(internal)?;
        self.inner
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(snap_id, record.clone());
        Ok(record)
    }

    async fn list_snapshots(&self, caller: &Caller) -> BackendResult<Vec<SnapshotRecord>> {
        Ok(self
            .inner
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| caller.sees(&s.team_id))
            .cloned()
            .collect())
    }

    async fn delete_snapshot(&self, caller: &Caller, id: &str) -> BackendResult<bool> {
        let Some(s) = self.inner.find_snapshot(caller, id) else {
            return Ok(false);
        };
        self.inner
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s.id);
        let dir = self.inner.snapshot_dir(&s.id);
        tokio::fs::remove_dir_all(&dir).await.map_err(internal)?;
        Ok(true)
    }

    async fn templates(&self, caller: &Caller) -> BackendResult<Vec<TemplateRecord>> {
        let created = Timestamp::UNIX_EPOCH;
        let mut out: Vec<TemplateRecord> = self
            .inner
            .cfg
            .templates
            .iter()
            .map(|t| TemplateRecord {
                id: t.id.clone(),
                aliases: std::iter::once(t.id.clone())
                    .chain(t.aliases.iter().cloned())
                    .collect(),
                cpu_count: t.cpu_count,
                memory_mb: t.memory_mb,
                disk_size_mb: t.disk_size_mb,
                envd_version: ENVD_VERSION.into(),
                created_at: created,
                public: true,
            })
            .collect();
        for s in self.list_snapshots(caller).await? {
            let base = self.inner.template(&s.template_id);
            out.push(TemplateRecord {
                id: s.id.clone(),
                aliases: s.names.clone(),
                cpu_count: base.map(|t| t.cpu_count).unwrap_or(2),
                memory_mb: base.map(|t| t.memory_mb).unwrap_or(512),
                disk_size_mb: base.map(|t| t.disk_size_mb).unwrap_or(1024),
                envd_version: ENVD_VERSION.into(),
                created_at: s.created_at,
                public: false,
            });
        }
        Ok(out)
    }

    async fn ready(&self) -> Result<(), String> {
        for p in self.inner.pools.values() {
            if !p.warmed.load(Ordering::Relaxed) {
                return Err(format!(
                    "warming the pool of template {}: {}/{} ready",
                    p.template.id,
                    p.available(),
                    p.template.pool_size
                ));
            }
        }
        let gateways = self
            .inner
            .xds
            .registry
            .coverage(sandbox_xds_wire::SANDBOX_ROUTE_TYPE_URL, 0)
            .subscribed;
        if gateways < self.inner.cfg.min_gateways {
            return Err(format!(
                "{gateways} gateway(s) connected, {} required",
                self.inner.cfg.min_gateways
            ));
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let i = &self.inner;
        i.shutdown.cancel();
        for pool in i.pools.values() {
            for p in pool.drain() {
                i.discard(p).await;
            }
        }
        let all = i.all();
        for s in all {
            let mut st = sbx_lock(&s).await;
            if let Some(mut p) = st.process.take() {
                p.kill().await;
            }
            if st.p.record.state == SandboxState::Running {
                st.p.record.state = SandboxState::Paused;
                st.p.suspended = true;
                if let Err(e) = i.persist(&st) {
                    tracing::error!(error = %e, "cannot record a sandbox stopped by shutdown");
                }
            }
        }
        if let Containment::Cgroup(base) = &i.launcher.containment {
            let _ = std::fs::remove_dir(base);
        }
        tracing::info!("local sandboxes stopped (claimed ones are kept on disk as paused)");
    }
}
