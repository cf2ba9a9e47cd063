//! SandboxClaim reconciler: claims up to 50 sandboxes per reconcile from the named SandboxSet
//! (batches that start at 5 and double), creates sandboxes when the pool is empty and
//! `createOnNoStock` allows it, and handles claimTimeout and ttlAfterCompleted. The claiming is
//! the claim engine's (`sandbox-core`, shared with the manager); this file is its Kubernetes
//! store — a take is a resourceVersion-guarded merge patch, so a sandbox goes to exactly one
//! claimer however many controllers or workers race for it — and the claim's status. A taken
//! sandbox's runtime gets `/init` from the engine; the Sandbox reconciler replays the stored
//! request after a resume or an upgrade.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use sandbox_api::claim::take_error;
use sandbox_api::csi::ResolvedMount;
use sandbox_api::keys::*;
use sandbox_api::state::{SandboxState, sandbox_state};
use sandbox_api::{Sandbox, SandboxClaim, SandboxClaimStatus, SandboxSet};
use sandbox_core::{
    Candidates, ClaimError, ClaimIdentity, ClaimOptions, ClaimReport, Origin, Pool, SandboxStore,
    TakeError,
};
use serde_json::json;

use crate::claim::{
    ClaimStep, claim_new_sandbox, claim_patch, claim_progress, owned_by_claim, set_not_found,
    validate_claim_metadata, wait_ready_timeout,
};
use crate::context::Context;
use crate::error::{Result, is_status};
use crate::pool::{do_it_slowly, new_sandbox_from_set};
use crate::revision::{EffectiveTemplate, set_revision};

pub const NAME: &str = "sandboxclaim";

/// How often a sandbox the claim created is read while it is waited for.
const READY_POLL: Duration = Duration::from_millis(200);

pub async fn reconcile(claim: Arc<SandboxClaim>, ctx: Arc<Context>) -> Result<Action> {
    super::instrumented(&ctx, NAME, reconcile_inner(claim, ctx.clone())).await
}

/// The SandboxSet asks for runtime init: it declares `agent-runtime` or has an init container
/// named `runtime`.
fn wants_init(set: &SandboxSet) -> bool {
    set.spec.runtimes.iter().any(|r| r.name == RUNTIME_AGENT)
        || set
            .spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|ics| ics.iter().any(|c| c.name == "runtime"))
}

/// What the engine is asked for on behalf of `claim`.
fn claim_options(claim: &SandboxClaim, set: &SandboxSet) -> ClaimOptions {
    let init = !claim.spec.skip_init_runtime.unwrap_or(false) && wants_init(set);
    ClaimOptions {
        init_env: init.then(|| claim.spec.env_vars.clone()),
        create_on_no_stock: claim.spec.create_on_no_stock.unwrap_or(true),
        reserve_failed: claim.spec.reserve_failed_sandbox.unwrap_or(false),
        wait_ready_timeout: wait_ready_timeout(claim),
        // A new image restarts the runtime: wait for the in-place update like upstream does
        // (until the sandbox is no longer InplaceUpdating), then `/init` the new runtime.
        wait_ready_after_take: claim
            .spec
            .inplace_update
            .as_ref()
            .and_then(|iu| iu.image.as_deref())
            .is_some_and(|i| !i.is_empty()),
    }
}

async fn write_status(
    ctx: &Context,
    api: &Api<SandboxClaim>,
    claim: &SandboxClaim,
    st: &SandboxClaimStatus,
) -> Result<()> {
    if claim.status.as_ref() == Some(st) {
        return Ok(());
    }
    match api
        .patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            // Guarded by the version the counts were computed from: a reconcile that ran on a
            // stale copy of the claim can't overwrite newer progress.
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": claim.metadata.resource_version},
                "status": st,
            })),
        )
        .await
    {
        Ok(updated) => {
            ctx.wrote(
                updated.metadata.uid.as_deref(),
                updated.metadata.resource_version.as_deref(),
            );
            Ok(())
        }
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The claim engine's store for one SandboxClaim: the Sandbox CRs of its namespace.
struct KubeClaimStore<'a> {
    ctx: &'a Context,
    sandboxes: Api<Sandbox>,
    claim: &'a SandboxClaim,
    set: &'a SandboxSet,
    /// The Sandbox controller's cache once synced; without it the apiserver is listed.
    cache: Option<&'a Store<Sandbox>>,
    /// The claim's `dynamicVolumesMount`, resolved.
    mounts: Vec<ResolvedMount>,
}

impl KubeClaimStore<'_> {
    /// Sandboxes of the claim's namespace carrying every `(label, value)`.
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<Arc<Sandbox>>, kube::Error> {
        let Some(cache) = self.cache else {
            let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let params = ListParams::default().labels(&selector.join(","));
            let listed = self.sandboxes.list(&params).await?;
            return Ok(listed.items.into_iter().map(Arc::new).collect());
        };
        let ns = self.claim.namespace();
        Ok(cache
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace == ns)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels().get(*k).map(String::as_str) == Some(*v))
            })
            .collect())
    }

    fn wrote(&self, s: &Sandbox) {
        self.ctx.wrote(
            s.metadata.uid.as_deref(),
            s.metadata.resource_version.as_deref(),
        );
    }
}

#[async_trait]
impl SandboxStore for KubeClaimStore<'_> {
    type Sandbox = Arc<Sandbox>;
    type Error = kube::Error;

    /// The set's unclaimed sandboxes, from the watch cache when it is synced (a stale candidate
    /// just loses its resourceVersion check).
    async fn pool(&self) -> Result<Pool<Arc<Sandbox>>, kube::Error> {
        let set = self.set.name_any();
        let labels = [
            (LABEL_SANDBOX_POOL, set.as_str()),
            (LABEL_SANDBOX_CLAIMED, "false"),
        ];
        Ok(Pool {
            sandboxes: self.list(&labels).await?,
            update_revision: self
                .set
                .status
                .as_ref()
                .and_then(|s| s.update_revision.clone()),
        })
    }

    async fn take(
        &self,
        candidate: &Arc<Sandbox>,
        identity: &ClaimIdentity,
    ) -> Result<Arc<Sandbox>, TakeError<kube::Error>> {
        let patch = Patch::Merge(claim_patch(candidate, self.claim, identity));
        let name = candidate.name_any();
        match self
            .sandboxes
            .patch(&name, &PatchParams::default(), &patch)
            .await
        {
            Ok(updated) => {
                self.wrote(&updated);
                Ok(Arc::new(updated))
            }
            Err(e) => Err(take_error(e)),
        }
    }

    async fn create(&self, identity: &ClaimIdentity) -> Result<Arc<Sandbox>, kube::Error> {
        let set = &self.set.spec;
        let revision = set_revision(&EffectiveTemplate {
            template: set.template.as_ref(),
            template_ref: set.template_ref.as_ref(),
            volume_claim_templates: &set.volume_claim_templates,
            persistent_contents: &set.persistent_contents,
            runtimes: &set.runtimes,
            pause_strategy: set.pause_strategy.as_ref(),
        });
        let fresh = new_sandbox_from_set(self.set, &revision);
        let fresh =
            claim_new_sandbox(fresh, self.claim, identity).map_err(kube::Error::SerdeError)?;
        let created = self
            .sandboxes
            .create(&PostParams::default(), &fresh)
            .await?;
        self.ctx.metrics.sandboxes_created.inc();
        Ok(Arc::new(created))
    }

    async fn refresh(&self, sandbox: &Arc<Sandbox>) -> Result<Option<Arc<Sandbox>>, kube::Error> {
        tokio::time::sleep(READY_POLL).await;
        Ok(self
            .sandboxes
            .get_opt(&sandbox.name_any())
            .await?
            .map(Arc::new))
    }

    /// The claim's CSI mounts, through the sandbox's envd.
    async fn mount(&self, sandbox: &Arc<Sandbox>) -> Result<(), String> {
        sandbox_api::csi::mount_all(
            &self.ctx.envd,
            &self.ctx.settings.storage.cli,
            sandbox,
            &self.mounts,
        )
        .await
    }

    /// Label `reserved-failed-sandbox=true`: it keeps its owner but is no longer counted.
    async fn reserve(&self, sandbox: &Arc<Sandbox>) -> Result<(), kube::Error> {
        let patch = json!({"metadata": {"labels": {LABEL_RESERVED_FAILED_SANDBOX: "true"}}});
        let res = self
            .sandboxes
            .patch(
                &sandbox.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await;
        match res {
            Ok(updated) => {
                self.wrote(&updated);
                Ok(())
            }
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, sandbox: &Arc<Sandbox>) -> Result<(), kube::Error> {
        match self
            .sandboxes
            .delete(&sandbox.name_any(), &DeleteParams::default())
            .await
        {
            Err(e) if !is_status(&e, 404) => Err(e),
            _ => Ok(()),
        }
    }
}

/// Counts an attempt in the metrics and on the claim's events; `Ok(true)` when it got a sandbox.
async fn record(
    ctx: &Context,
    claim: &SandboxClaim,
    report: ClaimReport<Arc<Sandbox>, kube::Error>,
) -> Result<bool, kube::Error> {
    for _ in 0..report.conflicts {
        ctx.metrics.claim("conflict");
    }
    ctx.metrics.claim_timings(&report.timings);
    let err = match report.outcome {
        Ok(claimed) => {
            ctx.metrics.claim(match claimed.origin {
                Origin::Pool => "claimed",
                Origin::Created => "created",
            });
            return Ok(true);
        }
        Err(e) => e,
    };
    ctx.metrics.claim(err.label());
    match err {
        ClaimError::Failed {
            sandbox,
            why,
            cleanup,
            ..
        } => {
            let what = cleanup?.as_str();
            let note = format!("sandbox {}: {why}; {what}", sandbox.name_any());
            ctx.event(&claim.object_ref(&()), true, "ClaimSandboxFailed", &note)
                .await;
            Ok(false)
        }
        ClaimError::Store(e) => Err(e),
        ClaimError::NoStock | ClaimError::RateLimited => Ok(false),
    }
}

async fn reconcile_inner(claim: Arc<SandboxClaim>, ctx: Arc<Context>) -> Result<Action> {
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if ctx.is_stale(
        claim.metadata.uid.as_deref(),
        claim.metadata.resource_version.as_deref(),
    ) {
        return Ok(Action::requeue(Duration::from_millis(50)));
    }
    let ns = claim.namespace().unwrap_or_default();
    let claims: Api<SandboxClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let sandboxes: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let oref = claim.object_ref(&());
    let now = Timestamp::now();

    if claim.status.as_ref().and_then(|s| s.phase.as_deref())
        != Some(sandbox_api::types::claim_phase::COMPLETED)
    {
        let Some(set) = ctx.sandbox_set(&ns, &claim.spec.template_name).await? else {
            let st = set_not_found(&claim, now);
            ctx.event(
                &oref,
                true,
                "SandboxSetNotFound",
                st.message.as_deref().unwrap_or(""),
            )
            .await;
            write_status(&ctx, &claims, &claim, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        if let Err(msg) = validate_claim_metadata(&claim) {
            let mut st = claim.status.clone().unwrap_or_default();
            st.phase = Some(sandbox_api::types::claim_phase::COMPLETED.into());
            st.message = Some(msg.clone());
            st.completion_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
            crate::conditions::set(
                &mut st.conditions,
                "Completed",
                true,
                "InvalidClaim",
                &msg,
                now,
            );
            ctx.event(&oref, true, "InvalidClaim", &msg).await;
            write_status(&ctx, &claims, &claim, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        return claim_from(&ctx, &claim, &set, &claims, &sandboxes, now).await;
    }
    let (st, step) = claim_progress(&claim, 0, now);
    write_status(&ctx, &claims, &claim, &st).await?;
    completed(&claims, &claim, step).await
}

async fn completed(
    claims: &Api<SandboxClaim>,
    claim: &SandboxClaim,
    step: ClaimStep,
) -> Result<Action> {
    match step {
        ClaimStep::Completed { delete_after: None } => Ok(Action::await_change()),
        ClaimStep::Completed {
            delete_after: Some(d),
        } if d.is_zero() => {
            match claims
                .delete(&claim.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(Action::await_change())
        }
        ClaimStep::Completed {
            delete_after: Some(d),
        } => Ok(Action::requeue(d)),
        ClaimStep::Claim(_) => Ok(Action::requeue(Duration::from_millis(100))),
    }
}

/// The claim's `dynamicVolumesMount` resolved against their PersistentVolumes (they need the
/// runtime initialised). A bad one fails the reconcile (retried with backoff, as upstream) with a
/// Warning event saying why.
async fn claim_mounts(
    ctx: &Context,
    claim: &SandboxClaim,
    opts: &ClaimOptions,
) -> Result<Vec<ResolvedMount>> {
    let wanted = &claim.spec.dynamic_volumes_mount;
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let resolved = match sandbox_api::csi::require_init(wanted, opts.init_env.is_some()) {
        Ok(()) => sandbox_api::csi::resolve(&ctx.client, &ctx.settings.storage, wanted).await,
        Err(e) => Err(e),
    };
    match resolved {
        Ok(r) => Ok(r),
        Err(why) => {
            let note =
                format!("failed to generate csi mount options config for sandbox, err: {why}");
            ctx.event(&claim.object_ref(&()), true, "InvalidCSIMount", &note)
                .await;
            Err(crate::error::Error::InvalidSpec(note))
        }
    }
}

async fn claim_from(
    ctx: &Arc<Context>,
    claim: &SandboxClaim,
    set: &SandboxSet,
    claims: &Api<SandboxClaim>,
    sandboxes: &Api<Sandbox>,
    now: Timestamp,
) -> Result<Action> {
    let claim_name = claim.name_any();
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let opts = claim_options(claim, set);
    let mounts = claim_mounts(ctx, claim, &opts).await?;
    let store = KubeClaimStore {
        ctx,
        sandboxes: sandboxes.clone(),
        claim,
        set,
        cache: ctx.synced_sandboxes().await,
        mounts,
    };
    // The claim's status (fresh: see `is_stale`) is authoritative; recounting what it owns only
    // recovers a status write lost in a crash, for which the cache (listed anew at start-up) is
    // enough.
    let mine = store
        .list(&[(LABEL_CLAIM_NAME, claim_name.as_str())])
        .await?;
    let actual = mine
        .iter()
        .filter(|s| owned_by_claim(s, &uid))
        .filter(|s| sandbox_state(s, now) != SandboxState::Dead)
        .filter(|s| !s.labels().contains_key(LABEL_RESERVED_FAILED_SANDBOX))
        .count() as i32;
    let (mut st, step) = claim_progress(claim, actual, now);
    let ClaimStep::Claim(want) = step else {
        write_status(ctx, claims, claim, &st).await?;
        return completed(claims, claim, step).await;
    };
    let want = want.min(ctx.settings.claim_max_batch);

    let pool = store.pool().await?;
    let start = rand::random::<u32>() as usize;
    let candidates = Candidates::new(
        pool.sandboxes,
        pool.update_revision.as_deref(),
        SystemTime::now(),
        start,
    );
    let got = Mutex::new(0i32);
    let (_, err) = do_it_slowly(want, ctx.settings.claim_initial_batch, |_| {
        let (store, candidates, opts, got) = (&store, &candidates, &opts, &got);
        async move {
            let report = ctx.claims.attempt(store, candidates, opts).await;
            if record(ctx, claim, report).await? {
                *got.lock().expect("count") += 1;
            }
            Ok::<(), kube::Error>(())
        }
    })
    .await;
    let got = got.into_inner().expect("count");
    st.claimed_replicas += got;
    if got == 0 {
        let note = format!("no available sandbox in SandboxSet {}", set.name_any());
        ctx.event(&claim.object_ref(&()), true, "NoAvailableSandboxes", &note)
            .await;
    }
    // The status after this batch: a claim it satisfied is Completed in this one write (not a
    // Claiming write and a Completed one on the next reconcile).
    let progressed = SandboxClaim {
        status: Some(st),
        ..claim.clone()
    };
    let (st, step) = claim_progress(&progressed, 0, Timestamp::now());
    write_status(ctx, claims, claim, &st).await?;
    if let Some(e) = err {
        return Err(e.into());
    }
    match step {
        ClaimStep::Completed { .. } => completed(claims, claim, step).await,
        ClaimStep::Claim(_) if got > 0 => Ok(Action::requeue(Duration::from_millis(10))),
        ClaimStep::Claim(_) => Ok(Action::requeue(Duration::from_secs(2))),
    }
}
