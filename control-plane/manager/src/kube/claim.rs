//! The claim engine's store for one create: the SandboxSet's pool in the watch cache, takes as
//! resourceVersion-guarded merge patches (the marks shared with the controller,
//! `sandbox_api::claim::Take`, plus the manager's: sandbox id, owner team, user metadata and
//! labels, timeouts), creates on no stock from the set's current revision, and the route wait.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use sandbox_api::claim::{InPlaceChange, Take, new_sandbox_from_set, take_error};
use sandbox_api::keys::*;
use sandbox_api::{Sandbox, SandboxSet};
use sandbox_core::{ClaimIdentity, Pool, SandboxStore, TakeError};
use serde_json::{Value, json};

use super::index::Index;
use super::routes::RouteWaiter;

/// How often a created sandbox is read again while the claim waits for it.
const READY_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serde(#[from] serde_json::Error),
    #[error("{0}")]
    Route(String),
    #[error("SandboxSet {0} has no current revision yet; no sandbox can be created from it")]
    NoRevision(String),
    #[error("SandboxSet {0} uses a templateRef: cpu-request and cpu-limit need an inline template")]
    NoInlineTemplate(String),
}

pub use sandbox_api::claim::is_status;

/// What the manager writes on the sandbox it takes, besides the shared marks.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: serde_json::Map<String, Value>,
    /// The `cpu-request` / `cpu-limit` keys: container 0 resized in place by the controller.
    pub in_place: InPlaceChange,
}

/// Where a create's sandbox comes from.
pub enum Source {
    /// A SandboxSet's warm pool (created from its current revision on no stock).
    Pool(Arc<SandboxSet>),
    /// A snapshot: no pool, every sandbox is a clone (`snapshots::clone_of`).
    Snapshot(Box<Sandbox>),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Pool(set) => set.name_any(),
            Source::Snapshot(s) => s
                .labels()
                .get(LABEL_SANDBOX_TEMPLATE)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// The volumes a create mounts after `/init` (`csi.rs`).
pub struct Mounts<'a> {
    pub envd: &'a crate::envd::EnvdClient,
    pub cli: &'a str,
    pub resolved: &'a [sandbox_api::csi::ResolvedMount],
}

/// The store of one create.
pub struct ManagerStore<'a> {
    pub index: &'a Index,
    pub api: Api<Sandbox>,
    pub source: Source,
    pub marks: &'a Marks,
    pub sandbox_id: &'a str,
    pub routes: &'a RouteWaiter,
    pub mounts: Mounts<'a>,
}

impl ManagerStore<'_> {
    fn take_of<'b>(&'b self, identity: &'b ClaimIdentity) -> Take<'b> {
        let mut t = Take::new(identity, &self.marks.owner);
        t.labels = self.marks.labels.clone();
        t.annotations = self.marks.annotations.clone();
        t.spec = self.marks.spec.clone();
        t
    }
}

#[async_trait]
impl SandboxStore for ManagerStore<'_> {
    type Sandbox = Arc<Sandbox>;
    type Error = StoreError;

    async fn pool(&self) -> Result<Pool<Arc<Sandbox>>, StoreError> {
        let Source::Pool(set) = &self.source else {
            return Ok(Pool {
                sandboxes: Vec::new(),
                update_revision: None,
            });
        };
        let ns = set.namespace().unwrap_or_default();
        Ok(Pool {
            sandboxes: self.index.pool(&ns, &set.name_any()),
            update_revision: set.status.as_ref().and_then(|s| s.update_revision.clone()),
        })
    }

    async fn take(
        &self,
        candidate: &Arc<Sandbox>,
        identity: &ClaimIdentity,
    ) -> Result<Arc<Sandbox>, TakeError<StoreError>> {
        let mut take = self.take_of(identity);
        if !self.marks.in_place.is_empty() {
            // The whole template goes into the patch (a merge patch replaces lists), guarded by
            // the same resourceVersion as the rest of the take.
            let mut template = candidate.spec.template.clone().ok_or_else(|| {
                TakeError::Failed(StoreError::NoInlineTemplate(self.source.name()))
            })?;
            self.marks.in_place.apply(&mut template);
            take.spec.insert(
                "template".into(),
                serde_json::to_value(template)
                    .map_err(|e| TakeError::Failed(StoreError::from(e)))?,
            );
        }
        let patch = Patch::Merge(take.patch(candidate));
        match self
            .api
            .patch(&candidate.name_any(), &PatchParams::default(), &patch)
            .await
        {
            Ok(updated) => {
                self.index.wrote(&updated);
                Ok(Arc::new(updated))
            }
            Err(e) => Err(take_error(e).map_failed(StoreError::from)),
        }
    }

    /// A sandbox from the set's current revision (the controller computed it), or a clone of
    /// the snapshot, already taken.
    async fn create(&self, identity: &ClaimIdentity) -> Result<Arc<Sandbox>, StoreError> {
        let mut fresh = match &self.source {
            Source::Pool(set) => {
                let revision = set
                    .status
                    .as_ref()
                    .and_then(|s| s.update_revision.clone())
                    .ok_or_else(|| StoreError::NoRevision(set.name_any()))?;
                new_sandbox_from_set(set, &revision)
            }
            Source::Snapshot(clone) => clone.as_ref().clone(),
        };
        if let Some(t) = fresh.spec.template.as_mut() {
            self.marks.in_place.apply(t);
        }
        let fresh = self.take_of(identity).apply_to_new(fresh)?;
        let created = self.api.create(&PostParams::default(), &fresh).await?;
        self.index.wrote(&created);
        Ok(Arc::new(created))
    }

    async fn refresh(&self, sandbox: &Arc<Sandbox>) -> Result<Option<Arc<Sandbox>>, StoreError> {
        tokio::time::sleep(READY_POLL).await;
        Ok(self.api.get_opt(&sandbox.name_any()).await?.map(Arc::new))
    }

    /// Label `reserved-failed-sandbox=true`: kept for inspection, hidden from the API.
    async fn reserve(&self, sandbox: &Arc<Sandbox>) -> Result<(), StoreError> {
        let patch = json!({"metadata": {"labels": {LABEL_RESERVED_FAILED_SANDBOX: "true"}}});
        match self
            .api
            .patch(
                &sandbox.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(updated) => {
                self.index.wrote(&updated);
                Ok(())
            }
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, sandbox: &Arc<Sandbox>) -> Result<(), StoreError> {
        match self
            .api
            .delete(&sandbox.name_any(), &DeleteParams::default())
            .await
        {
            Err(e) if !is_status(&e, 404) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The create's CSI mounts, through the sandbox's envd.
    async fn mount(&self, sandbox: &Arc<Sandbox>) -> Result<(), String> {
        sandbox_api::csi::mount_all(
            self.mounts.envd,
            self.mounts.cli,
            sandbox,
            self.mounts.resolved,
        )
        .await
    }

    /// Every gateway routes the sandbox at the version the claim left it at.
    async fn route(&self, sandbox: &Arc<Sandbox>) -> Result<(), StoreError> {
        let rv = sandbox_core::ClaimableSandbox::version(sandbox).unwrap_or(0);
        self.routes
            .wait(self.sandbox_id, rv)
            .await
            .map_err(StoreError::Route)
    }
}
