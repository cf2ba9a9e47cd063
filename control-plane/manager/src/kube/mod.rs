//! The Kubernetes backend: sandboxes are Sandbox CRs claimed from SandboxSets (template id =
//! SandboxSet name; a team's name is the namespace its templates live in, the admin team sees
//! every namespace). Claims go through the claim engine shared with the controller
//! (`sandbox-core`): pick from the watch cache, take with one resourceVersion-guarded patch,
//! create on no stock, `/init`, and `WaitForRoute` on sandbox-xds before the 201. Pause and
//! resume set `spec.paused` and wait for the controller; timeouts are `spec.shutdownTime` /
//! `spec.pauseTime`, enforced by the controller. Replicas share nothing but the apiserver: the
//! guarded take hands a sandbox to one of them only.

mod claim;
mod index;
pub mod keys;
mod lifecycle;
pub mod record;
mod routes;
mod snapshots;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use sandbox_api::Sandbox;
use sandbox_api::claim::{InPlaceChange, parse_cpu, parse_image};
use sandbox_api::keys::*;
use sandbox_api::names;
use sandbox_core::{
    ClaimEngine, ClaimError, ClaimOptions, EngineConfig, HttpRuntimeInit, RetryPolicy,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Capabilities};
use crate::local::runtime::RuntimeHttp;
use crate::metrics::Metrics;
use crate::model::{
    BackendError, BackendResult, Caller, Connected, CreateSpec, Deadline, LogLine, MetricSample,
    OnTimeout, Paused, SandboxId, SandboxRecord, SandboxState, SnapshotRecord, TemplateRecord,
};

use claim::{ManagerStore, Marks, Source, is_status};
use index::Index;
use record::{ANNOTATION_RETURN_IP, ANNOTATION_TEAM_ID, record_of, template_of};
use routes::RouteWaiter;
use snapshots::Snapshots;

/// How long "forever" is on a Sandbox spec (upstream: 100 years).
const FOREVER: SignedDuration = SignedDuration::from_hours(24 * 365 * 100);

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Namespace to watch; `None`: every namespace.
    pub namespace: Option<String>,
    /// sandbox-xds's gRPC address (`http://host:port`), for `WaitForRoute`.
    pub xds_address: String,
    pub min_gateways: u32,
    pub route_wait: Duration,
    /// Bound of a claim without the `claim-timeout-seconds` extension.
    pub claim_timeout: Duration,
    /// Bound of a created sandbox's start without `wait-ready-timeout-seconds`.
    pub wait_ready_timeout: Duration,
    /// Picks and takes at once (upstream `maxClaimWorkers`).
    pub workers: usize,
    /// Creates on no stock per second and replica (upstream `maxCreateQPS`); 0: unlimited.
    pub create_qps: f64,
    /// How long pause and resume wait for the controller.
    pub lifecycle_wait: Duration,
    /// Dynamic CSI mounts: allowed drivers, the in-sandbox CLI, the secrets' namespace.
    pub storage: sandbox_api::csi::StorageConfig,
}

/// Sandboxes as Sandbox CRs.
pub struct KubeBackend {
    client: Client,
    index: Index,
    engine: ClaimEngine,
    routes: RouteWaiter,
    cfg: KubeConfig,
    metrics: Arc<Metrics>,
    http: RuntimeHttp,
    /// envd client for the mount CLI.
    envd: crate::envd::EnvdClient,
    snapshots: Snapshots,
    shutdown: CancellationToken,
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(e.to_string())
}

/// RFC 3339 at second precision, as upstream writes spec times.
fn k8s_time(t: Timestamp) -> Value {
    json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn retention_of(s: &Sandbox) -> SignedDuration {
    s.annotations()
        .get(ANNOTATION_RESERVE_PAUSED_SANDBOX_DURATION)
        .and_then(|v| crate::extensions::parse_retention(v).ok())
        .flatten()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .unwrap_or(FOREVER)
}

/// Spec fields for a deadline `end`: auto-pause sandboxes pause at it and are deleted a
/// retention later; others are deleted at it.
fn deadline_spec(end: Timestamp, on_timeout: OnTimeout, retention: SignedDuration) -> Value {
    match on_timeout {
        OnTimeout::Kill => json!({"shutdownTime": k8s_time(end), "pauseTime": null}),
        OnTimeout::Pause => json!({
            "pauseTime": k8s_time(end),
            "shutdownTime": k8s_time(end.checked_add(retention).unwrap_or(end)),
        }),
    }
}

impl KubeBackend {
    /// Starts the watches and waits (at most 30 s) until they have listed.
    pub async fn open(
        client: Client,
        cfg: KubeConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        let shutdown = CancellationToken::new();
        let index = Index::start(&client, cfg.namespace.as_deref(), shutdown.clone());
        if !index.wait_synced(Duration::from_secs(30)).await {
            return Err("the Sandbox and SandboxSet watches did not list within 30 s (CRDs installed? RBAC?)".into());
        }
        let routes = RouteWaiter::new(&cfg.xds_address, cfg.min_gateways, cfg.route_wait)?;
        let engine = ClaimEngine::new(
            EngineConfig {
                workers: cfg.workers,
                create_limit: (cfg.create_qps > 0.0)
                    .then(|| (cfg.create_qps, cfg.create_qps.ceil().max(1.0) as u32)),
            },
            Arc::new(HttpRuntimeInit::new(Duration::from_secs(1))),
        );
        let snapshots = Snapshots::new(client.clone(), cfg.namespace.clone());
        let backend = Arc::new(KubeBackend {
            snapshots,
            client,
            index,
            engine,
            routes,
            cfg,
            metrics,
            http: RuntimeHttp::default(),
            envd: crate::envd::EnvdClient::default(),
            shutdown,
        });
        backend.clone().spawn_gauges();
        Ok(backend)
    }

    /// Pool and sandbox gauges, every 5 s.
    fn spawn_gauges(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                let Some(b) = weak.upgrade() else { break };
                let now = Timestamp::now();
                for set in b.index.sets(None) {
                    let ns = set.namespace().unwrap_or_default();
                    let n = b
                        .index
                        .pool(&ns, &set.name_any())
                        .iter()
                        .filter(|s| {
                            sandbox_api::state::sandbox_state(s, now)
                                == sandbox_api::state::SandboxState::Available
                        })
                        .count();
                    b.metrics.set_pool_available(&set.name_any(), n);
                }
                let records: Vec<_> = b
                    .index
                    .claimed()
                    .iter()
                    .filter_map(|s| record_of(s, now))
                    .collect();
                let paused = records
                    .iter()
                    .filter(|r| r.state == SandboxState::Paused)
                    .count();
                b.metrics.set_sandboxes("running", records.len() - paused);
                b.metrics.set_sandboxes("paused", paused);
            }
        });
    }

    fn api(&self, namespace: &str) -> Api<Sandbox> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Where the caller's templates live: its team's namespace, or (admin) any watched one.
    fn template_namespace<'a>(&'a self, caller: &'a Caller) -> Option<&'a str> {
        if caller.admin {
            self.cfg.namespace.as_deref()
        } else {
            Some(caller.team.name.as_str())
        }
    }

    /// The caller's claimed sandbox `id` as cached, dead or alive (`None` for another team's).
    fn lookup(&self, caller: &Caller, id: &SandboxId) -> Option<Arc<Sandbox>> {
        self.index
            .by_id(id)
            .filter(|s| caller.sees(&record::team_of(s)))
    }

    /// The caller's live claimed sandbox `id`, as cached (404 for another team's).
    fn find(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Arc<Sandbox>> {
        self.lookup(caller, id)
            .filter(|s| record_of(s, Timestamp::now()).is_some())
            .ok_or_else(|| BackendError::sandbox_not_found(id))
    }

    /// [`Self::find`] for reads: a sandbox that just died (killed, expired) is reported gone
    /// only once no gateway routes it any more, so a 404 here means the data plane agrees.
    async fn find_live(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Arc<Sandbox>> {
        match self.lookup(caller, id) {
            Some(s) if record_of(&s, Timestamp::now()).is_some() => Ok(s),
            Some(_) => {
                if let Err(e) = self.routes.wait_gone(id.as_str()).await {
                    tracing::warn!(sandbox = %id, error = %e, "dead sandbox still routed");
                }
                Err(BackendError::sandbox_not_found(id))
            }
            None => Err(BackendError::sandbox_not_found(id)),
        }
    }

    /// The caller's sandbox read from the apiserver (for read-modify-write).
    async fn fetch(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Sandbox> {
        let cached = self.find(caller, id)?;
        let api = self.api(&cached.namespace().unwrap_or_default());
        match api.get_opt(&cached.name_any()).await.map_err(internal)? {
            Some(s)
                if record::claimed_id(&s).as_ref() == Some(id)
                    && record_of(&s, Timestamp::now()).is_some() =>
            {
                self.index.wrote(&s);
                Ok(s)
            }
            _ => Err(BackendError::sandbox_not_found(id)),
        }
    }

    fn record(&self, s: &Sandbox, id: &SandboxId) -> BackendResult<SandboxRecord> {
        record_of(s, Timestamp::now()).ok_or_else(|| BackendError::sandbox_not_found(id))
    }

    /// What the manager writes on the sandbox it takes for `spec`.
    fn marks(&self, spec: &CreateSpec, id: &SandboxId) -> Marks {
        let mut m = Marks {
            owner: spec.caller.key_id.clone(),
            ..Default::default()
        };
        m.labels.insert(LABEL_SANDBOX_ID.into(), id.to_string());
        m.labels.extend(spec.labels.clone());
        // Every metadata entry in one annotation (E2B allows any key); the ones that are valid
        // annotation names also on their own, for kubectl and selectors.
        m.annotations.extend(
            spec.metadata
                .iter()
                .filter(|(k, _)| names::qualified_name(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        m.annotations.insert(
            record::ANNOTATION_METADATA.into(),
            serde_json::to_string(&spec.metadata).unwrap_or_default(),
        );
        m.annotations
            .insert(ANNOTATION_TEAM_ID.into(), spec.caller.team.id.clone());
        if spec.extensions.return_sandbox_ip {
            m.annotations
                .insert(ANNOTATION_RETURN_IP.into(), "true".into());
        }
        let retention = spec.extensions.reserve_paused_for;
        m.annotations.insert(
            ANNOTATION_RESERVE_PAUSED_SANDBOX_DURATION.into(),
            retention
                .map(|d| format!("{}s", d.as_secs()))
                .unwrap_or_else(|| "forever".into()),
        );
        m.annotations.insert(
            ANNOTATION_UPDATED_METADATA_IN_CLAIM.into(),
            json!({
                "labels": spec.labels.keys().collect::<Vec<_>>(),
                "annotations": spec.metadata.keys().filter(|k| names::qualified_name(k)).collect::<Vec<_>>(),
            })
            .to_string(),
        );
        let spec_fields = if spec.extensions.never_timeout {
            // A provisional deadline until the create answers (`create` then removes it): a
            // replica that dies between the take and its answer leaves a sandbox the controller
            // deletes at this time, not one claimed forever.
            let end = Timestamp::now()
                .checked_add(SignedDuration::try_from(self.claim_bound(spec)).unwrap_or(FOREVER))
                .unwrap_or(Timestamp::MAX);
            json!({"shutdownTime": k8s_time(end), "pauseTime": null})
        } else {
            let end = Timestamp::now()
                .checked_add(SignedDuration::try_from(spec.timeout).unwrap_or(FOREVER))
                .unwrap_or(Timestamp::MAX);
            let retention = retention
                .and_then(|d| SignedDuration::try_from(d).ok())
                .unwrap_or(FOREVER);
            deadline_spec(end, spec.lifecycle.on_timeout, retention)
        };
        if let Value::Object(o) = spec_fields {
            m.spec = o;
        }
        m
    }

    /// The longest a create can take from its take to its answer: the claim bound, a created
    /// sandbox's start, the route wait, and a minute of slack.
    fn claim_bound(&self, spec: &CreateSpec) -> Duration {
        spec.extensions
            .claim_timeout
            .unwrap_or(self.cfg.claim_timeout)
            + spec
                .extensions
                .wait_ready_timeout
                .unwrap_or(self.cfg.wait_ready_timeout)
            + self.cfg.route_wait
            + Duration::from_secs(60)
    }

    /// A never-timeout sandbox loses its provisional deadline once its create succeeded. If that
    /// write fails, the sandbox is deleted (it would die at the provisional time) and the create
    /// fails.
    async fn drop_provisional_deadline(&self, s: &Sandbox) -> BackendResult<Sandbox> {
        let api = self.api(&s.namespace().unwrap_or_default());
        let patch = json!({"spec": {"shutdownTime": null}});
        match api
            .patch(&s.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(updated) => {
                self.index.wrote(&updated);
                Ok(updated)
            }
            Err(e) => {
                let _ = api.delete(&s.name_any(), &DeleteParams::default()).await;
                Err(internal(format!(
                    "claimed {} but could not make it never time out: {e}",
                    s.name_any()
                )))
            }
        }
    }

    /// Refuses labels Kubernetes would, and the extension keys this backend does not carry out
    /// yet, naming them; returns the in-place changes the keys ask for, validated.
    fn check_extensions(spec: &CreateSpec) -> BackendResult<InPlaceChange> {
        for (k, v) in &spec.labels {
            if !names::qualified_name(k) || !names::label_value(v) {
                return Err(BackendError::BadRequest(format!(
                    "Bad extension param: label:{k}={v:?} is not a valid Kubernetes label"
                )));
            }
        }
        /// What this backend carries out of the Kubernetes-only keys.
        const SUPPORTED: [&str; 11] = [
            "csi-volume-name",
            "csi-mount-point",
            "csi-subpath",
            "csi-volume-config",
            "reserve-failed-sandbox",
            "reserve-failed-sandbox-for",
            "image",
            "cpu-request",
            "cpu-limit",
            "sandbox-name",
            "sandbox-generate-name",
        ];
        Self::check_clone_name(spec)?;
        let in_place = Self::in_place_of(spec)?;
        match spec
            .extensions
            .kube
            .given()
            .find(|k| !SUPPORTED.contains(k))
        {
            Some(key) => Err(BackendError::BadRequest(format!(
                "Bad extension param: {}{key} is not supported by this sandbox-manager yet",
                crate::extensions::PREFIX
            ))),
            None => Ok(in_place),
        }
    }

    /// The create's volume mounts resolved against their PersistentVolumes (before anything is
    /// taken: a bad mount is a 400). Mounting needs the runtime initialised.
    async fn resolve_mounts(
        &self,
        spec: &CreateSpec,
    ) -> BackendResult<Vec<sandbox_api::csi::ResolvedMount>> {
        if spec.mounts.is_empty() {
            return Ok(Vec::new());
        }
        let resolved = match sandbox_api::csi::require_init(
            &spec.mounts,
            !spec.extensions.skip_init_runtime,
        ) {
            Ok(()) => {
                sandbox_api::csi::resolve(&self.client, &self.cfg.storage, &spec.mounts).await
            }
            Err(e) => Err(e),
        };
        resolved.map_err(|e| match e {
            sandbox_api::csi::CsiError::Invalid(m) => BackendError::BadRequest(m),
            sandbox_api::csi::CsiError::Api(m) => BackendError::Internal(m),
        })
    }

    /// The clone-only keys `sandbox-name` (a DNS-1123 label) and `sandbox-generate-name` (a
    /// prefix of one), mutually exclusive (upstream).
    fn check_clone_name(spec: &CreateSpec) -> BackendResult<()> {
        let k = &spec.extensions.kube;
        let bad = |why: String| {
            BackendError::BadRequest(format!(
                "Bad extension param: {}{why}",
                crate::extensions::PREFIX
            ))
        };
        match (&k.sandbox_name, &k.sandbox_generate_name) {
            (Some(_), Some(_)) => Err(bad(
                "sandbox-name and sandbox-generate-name are mutually exclusive".into(),
            )),
            (Some(n), None) if !names::dns_label(n) => {
                Err(bad(format!("sandbox-name: {n:?} is not a DNS-1123 label")))
            }
            (None, Some(g)) if !names::generate_name_prefix(g) => Err(bad(format!(
                "sandbox-generate-name: {g:?} is not a DNS-1123 label prefix of at most 58 characters"
            ))),
            _ => Ok(()),
        }
    }

    /// The `image`, `cpu-request` and `cpu-limit` keys, validated (an image reference; a
    /// positive CPU quantity each).
    fn in_place_of(spec: &CreateSpec) -> BackendResult<InPlaceChange> {
        let cpu = |key: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| {
                    parse_cpu(v).map_err(|why| {
                        BackendError::BadRequest(format!(
                            "Bad extension param: {}{key}: {why}",
                            crate::extensions::PREFIX
                        ))
                    })
                })
                .transpose()
        };
        let k = &spec.extensions.kube;
        let image = k
            .image
            .as_deref()
            .map(|v| {
                parse_image(v).map_err(|why| {
                    BackendError::BadRequest(format!(
                        "Bad extension param: {}image: {why}",
                        crate::extensions::PREFIX
                    ))
                })
            })
            .transpose()?;
        Ok(InPlaceChange {
            image,
            cpu_request: cpu("cpu-request", &k.cpu_request)?,
            cpu_limit: cpu("cpu-limit", &k.cpu_limit)?,
        })
    }

    /// What a create takes from: the template's SandboxSet, else the caller's snapshot of that
    /// id or name (a clone).
    async fn source(&self, spec: &CreateSpec) -> BackendResult<Source> {
        let ns = self.template_namespace(&spec.caller);
        let k = &spec.extensions.kube;
        if let Some(set) = self
            .index
            .sets_named(ns, &spec.template_id)
            .into_iter()
            .next()
        {
            if k.sandbox_name.is_some() || k.sandbox_generate_name.is_some() {
                return Err(BackendError::BadRequest(format!(
                    "Bad extension param: {}sandbox-name and sandbox-generate-name are only allowed when creating from a snapshot",
                    crate::extensions::PREFIX
                )));
            }
            return Ok(Source::Pool(set));
        }
        let Some((cp, rec)) = self.snapshots.find(&spec.caller, &spec.template_id).await? else {
            return Err(BackendError::NotFound(format!(
                "template {} not found",
                spec.template_id
            )));
        };
        if k.image.is_some() {
            return Err(BackendError::BadRequest(format!(
                "Bad extension param: {}image: not allowed when creating from a snapshot",
                crate::extensions::PREFIX
            )));
        }
        let tpl = self.snapshots.template(&cp).await?;
        let mut clone = snapshots::clone_of(&cp, &tpl, &rec.id);
        if let Some(name) = &k.sandbox_name {
            let taken = self
                .api(&cp.namespace().unwrap_or_default())
                .get_opt(name)
                .await
                .map_err(internal)?;
            if taken.is_some() {
                return Err(BackendError::Conflict(format!(
                    "a sandbox named {name} already exists"
                )));
            }
            clone.metadata.name = Some(name.clone());
            clone.metadata.generate_name = None;
        } else if let Some(prefix) = &k.sandbox_generate_name {
            clone.metadata.generate_name = Some(prefix.clone());
        }
        Ok(Source::Snapshot(Box::new(clone)))
    }

    /// What sandbox `s` was made from, for a snapshot's template: its inline template, or the
    /// SandboxTemplate it references.
    async fn template_spec(&self, s: &Sandbox) -> BackendResult<sandbox_api::SandboxTemplateSpec> {
        let mut spec = sandbox_api::SandboxTemplateSpec {
            template: s.spec.template.clone(),
            volume_claim_templates: s.spec.volume_claim_templates.clone(),
            persistent_contents: s.spec.persistent_contents.clone(),
            runtimes: s.spec.runtimes.clone(),
            pause_strategy: s.spec.pause_strategy.clone(),
        };
        if spec.template.is_none()
            && let Some(r) = &s.spec.template_ref
        {
            let api: Api<sandbox_api::SandboxTemplate> =
                Api::namespaced(self.client.clone(), &s.namespace().unwrap_or_default());
            let referenced = api.get(&r.name).await.map_err(internal)?;
            spec.template = referenced.spec.template;
            if spec.volume_claim_templates.is_empty() {
                spec.volume_claim_templates = referenced.spec.volume_claim_templates;
            }
        }
        Ok(spec)
    }

    fn claim_options(&self, spec: &CreateSpec) -> ClaimOptions {
        let k = &spec.extensions.kube;
        let reserve = match k.reserve_failed_sandbox_for.as_deref() {
            Some("never") => false,
            Some(_) => true,
            None => k.reserve_failed_sandbox.as_deref() == Some("true"),
        };
        ClaimOptions {
            init_env: (!spec.extensions.skip_init_runtime).then(|| spec.env_vars.clone()),
            create_on_no_stock: spec.extensions.create_on_no_stock,
            reserve_failed: reserve,
            wait_ready_timeout: spec
                .extensions
                .wait_ready_timeout
                .unwrap_or(self.cfg.wait_ready_timeout),
            wait_ready_after_take: k.image.is_some(),
        }
    }
}

#[async_trait]
impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kube"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kubernetes: true,
            egress_rules: false,
            auto_resume: false,
        }
    }

    async fn create(&self, spec: CreateSpec) -> BackendResult<SandboxRecord> {
        let in_place = Self::check_extensions(&spec)?;
        let mounts = self.resolve_mounts(&spec).await?;
        let source = self.source(&spec).await?;
        let namespace = match &source {
            Source::Pool(set) => set.namespace(),
            Source::Snapshot(clone) => clone.namespace(),
        };
        let id = SandboxId::random();
        let mut marks = self.marks(&spec, &id);
        marks.in_place = in_place;
        if !spec.mounts.is_empty() {
            marks.annotations.insert(
                ANNOTATION_CSI_VOLUME_CONFIG.into(),
                sandbox_api::csi::annotation_value(&spec.mounts),
            );
        }
        let mut options = self.claim_options(&spec);
        // A clone is always made (and waited for); there is no pool of them.
        options.create_on_no_stock |= matches!(source, Source::Snapshot(_));
        let store = ManagerStore {
            index: &self.index,
            api: self.api(&namespace.unwrap_or_default()),
            source,
            marks: &marks,
            sandbox_id: id.as_str(),
            routes: &self.routes,
            mounts: claim::Mounts {
                envd: &self.envd,
                cli: &self.cfg.storage.cli,
                resolved: &mounts,
            },
        };
        let timeout = spec
            .extensions
            .claim_timeout
            .unwrap_or(self.cfg.claim_timeout);
        let report = self
            .engine
            .claim(&store, &options, &RetryPolicy::upstream(Some(timeout)))
            .await;
        for (stage, d) in report.timings.stages() {
            self.metrics.observe_stage(stage, d);
        }
        self.metrics.count_conflicts(report.conflicts);
        match report.outcome {
            Ok(claimed) if spec.extensions.never_timeout => {
                let s = self.drop_provisional_deadline(&claimed.sandbox).await?;
                self.record(&s, &id)
            }
            Ok(claimed) => self.record(&claimed.sandbox, &id),
            Err(e @ (ClaimError::NoStock | ClaimError::RateLimited)) => {
                Err(BackendError::Unavailable {
                    message: format!(
                        "template {}: {e} (after {} attempts within {timeout:?})",
                        spec.template_id, report.attempts
                    ),
                    retry_after: Duration::from_secs(1),
                })
            }
            Err(e) => Err(BackendError::Internal(format!(
                "claim from template {}: {e}",
                spec.template_id
            ))),
        }
    }

    async fn get(&self, caller: &Caller, id: &SandboxId) -> BackendResult<SandboxRecord> {
        let s = self.find_live(caller, id).await?;
        self.record(&s, id)
    }

    async fn list(&self, caller: &Caller) -> BackendResult<Vec<SandboxRecord>> {
        let now = Timestamp::now();
        Ok(self
            .index
            .claimed()
            .iter()
            .filter_map(|s| record_of(s, now))
            .filter(|r| caller.sees(&r.team_id))
            .collect())
    }

    async fn kill(&self, caller: &Caller, id: &SandboxId) -> BackendResult<()> {
        let s = self.find(caller, id)?;
        let api = self.api(&s.namespace().unwrap_or_default());
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(either) => {
                if let Some(deleting) = either.left() {
                    self.index.wrote(&deleting);
                } else {
                    // Gone at once (no finalizer): mark it so reads stop showing it.
                    let mut gone = (*s).clone();
                    gone.metadata.deletion_timestamp = Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
                    );
                    gone.metadata.resource_version = Some(u64::MAX.to_string());
                    self.index.wrote(&gone);
                }
                // Answer once no gateway routes it (the controller deletes the pod meanwhile).
                if let Err(e) = self.routes.wait_gone(id.as_str()).await {
                    tracing::warn!(sandbox = %id, error = %e, "killed sandbox still routed");
                }
                Ok(())
            }
            Err(e) if is_status(&e, 404) => Err(BackendError::sandbox_not_found(id)),
            Err(e) => Err(internal(e)),
        }
    }

    async fn set_deadline(
        &self,
        caller: &Caller,
        id: &SandboxId,
        deadline: Deadline,
    ) -> BackendResult<SandboxRecord> {
        lifecycle::set_deadline(self, caller, id, deadline).await
    }

    async fn pause(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Paused> {
        lifecycle::pause(self, caller, id).await
    }

    async fn connect(
        &self,
        caller: &Caller,
        id: &SandboxId,
        timeout: Duration,
    ) -> BackendResult<(SandboxRecord, Connected)> {
        lifecycle::connect(self, caller, id, timeout).await
    }

    async fn metrics(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Vec<MetricSample>> {
        let r = self.get(caller, id).await?;
        match (r.ip, r.state) {
            (Some(IpAddr::V4(ip)), SandboxState::Running) => Ok(vec![
                self.http
                    .metrics(ip, r.envd_access_token.as_deref())
                    .await?,
            ]),
            _ => Ok(Vec::new()),
        }
    }

    /// Sandbox logs are not collected on Kubernetes yet (the pod's log is the place to look).
    async fn logs(
        &self,
        caller: &Caller,
        id: &SandboxId,
        _limit: usize,
    ) -> BackendResult<Vec<LogLine>> {
        self.find(caller, id)?;
        Ok(Vec::new())
    }

    async fn snapshot(
        &self,
        caller: &Caller,
        id: &SandboxId,
        name: Option<String>,
    ) -> BackendResult<SnapshotRecord> {
        let s = self.find(caller, id)?;
        let rec =
            record_of(&s, Timestamp::now()).ok_or_else(|| BackendError::sandbox_not_found(id))?;
        if rec.state == SandboxState::Paused {
            // A paused sandbox on Kubernetes has no pod whose files could be checkpointed.
            return Err(BackendError::Conflict(format!(
                "sandbox {id} is paused: resume it before taking a snapshot"
            )));
        }
        let template = self.template_spec(&s).await?;
        self.snapshots.take(caller, &s, &rec, template, name).await
    }

    async fn list_snapshots(&self, caller: &Caller) -> BackendResult<Vec<SnapshotRecord>> {
        Ok(self
            .snapshots
            .list(caller)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    async fn delete_snapshot(&self, caller: &Caller, id: &str) -> BackendResult<bool> {
        self.snapshots.delete(caller, id).await
    }

    /// The SandboxSets, then the caller's snapshots (private templates named by their names).
    async fn templates(&self, caller: &Caller) -> BackendResult<Vec<TemplateRecord>> {
        let mut out: Vec<TemplateRecord> = self
            .index
            .sets(self.template_namespace(caller))
            .iter()
            .map(|s| template_of(s))
            .collect();
        for snap in self.list_snapshots(caller).await? {
            let base = out.iter().find(|t| t.id == snap.template_id).cloned();
            out.push(TemplateRecord {
                id: snap.id.clone(),
                aliases: snap.names.clone(),
                created_at: snap.created_at,
                public: false,
                ..base.unwrap_or_else(record::snapshot_template_defaults)
            });
        }
        Ok(out)
    }

    async fn ready(&self) -> Result<(), String> {
        if !self.index.wait_synced(Duration::from_millis(10)).await {
            return Err("watches not synced".into());
        }
        self.routes.reachable().await
    }

    async fn shutdown(&self) {
        self.shutdown.cancel();
    }
}
