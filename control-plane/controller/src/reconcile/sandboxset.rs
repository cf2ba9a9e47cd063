//! SandboxSet reconciler: keeps the warm pool at `spec.replicas`, replaces old revisions within
//! `updateStrategy.maxUnavailable`, deletes dead members, and writes the pool status. Every
//! deletion is lock-then-delete: a resourceVersion-guarded patch sets `lock`, then a delete
//! preconditioned on the locked resourceVersion, so a sandbox a claimer just took is never deleted.
//! Pool membership is read from the Sandbox controller's watch cache (no list per reconcile);
//! scale expectations (`crate::expectations`) count this controller's own creates and deletes
//! the cache has not shown yet, so a lagging cache never refills a pool twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sandbox_api::keys::*;
use sandbox_api::state::{SandboxState, is_pool_owned, sandbox_state};
use sandbox_api::types::SandboxPhase;
use sandbox_api::{Sandbox, SandboxSet, SandboxSetStatus, SandboxTemplate, SandboxTemplateSpec};
use serde_json::json;

use crate::context::Context;
use crate::error::{Error, Result, is_status};
use crate::expectations::Seen;
use crate::metrics::PoolLabel;
use crate::pool::{
    MemberState, PoolMember, PoolSpec, do_it_slowly, new_sandbox_from_set, plan_pool,
};
use crate::revision::{EffectiveTemplate, immutable_part_hash, set_revision};

pub const NAME: &str = "sandboxset";

pub async fn reconcile(set: Arc<SandboxSet>, ctx: Arc<Context>) -> Result<Action> {
    super::instrumented(&ctx, NAME, reconcile_inner(set, ctx.clone())).await
}

fn member_of(set: &SandboxSet, s: &Sandbox, revision: &str, now: Timestamp) -> PoolMember {
    let owned = is_pool_owned(s)
        && s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == set.metadata.uid.as_ref());
    let st = sandbox_state(s, now);
    let state = match (owned, st) {
        (_, SandboxState::Dead) if owned => MemberState::Dead,
        (true, SandboxState::Available) => MemberState::Available,
        (true, _) => MemberState::Creating,
        (false, _) => MemberState::Used,
    };
    let status = s.status.as_ref();
    let raw = status.and_then(|x| x.phase.as_deref()).unwrap_or("");
    let ph = SandboxPhase::parse(raw);
    PoolMember {
        name: s.name_any(),
        state,
        updated: s.labels().get(LABEL_TEMPLATE_HASH).map(String::as_str) == Some(revision),
        pending: raw.is_empty() || ph == Some(SandboxPhase::Pending),
        running_not_ready: ph == Some(SandboxPhase::Running) && st != SandboxState::Available,
        recycled_count: status.and_then(|x| x.recycled_count).unwrap_or(0),
        created: s
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now),
        locked: s.annotations().contains_key(ANNOTATION_LOCK),
        deleting: s.metadata.deletion_timestamp.is_some(),
    }
}

/// A new pool sandbox for `set`; with an inline template it carries its immutable-part hash
/// from the start, which spares the Sandbox controller a metadata write per sandbox.
fn pool_sandbox(set: &SandboxSet, revision: &str) -> Sandbox {
    let mut s = new_sandbox_from_set(set, revision);
    if let Some(t) = &set.spec.template {
        s.annotations_mut().insert(
            ANNOTATION_HASH_IMMUTABLE_PART.into(),
            immutable_part_hash(t),
        );
    }
    s
}

/// Lock (resourceVersion-guarded) then delete (preconditioned on the locked version).
/// Returns false if someone else got there first.
pub async fn lock_then_delete(api: &Api<Sandbox>, s: &Sandbox) -> Result<bool> {
    let lock = format!("{:032x}", rand::random::<u128>());
    let patch = json!({"metadata": {
        "resourceVersion": s.metadata.resource_version,
        "annotations": { ANNOTATION_LOCK: lock, ANNOTATION_OWNER: OWNER_SCALE_DOWN },
    }});
    let locked = match api
        .patch(&s.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(l) => l,
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: locked.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    match api.delete(&s.name_any(), &dp).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Creates the SandboxTemplate `<set>-<revision>` for an inline template (owned by the set,
/// `blockOwnerDeletion=false`). Returns its name.
async fn materialise_template(ctx: &Context, set: &SandboxSet, revision: &str) -> Result<String> {
    let ns = set.namespace().unwrap_or_default();
    let name = format!("{}-{revision}", set.name_any());
    // Keyed by the set's uid too: a set deleted and made again gets its template made again.
    let known = format!(
        "{ns}/{name}/{}",
        set.metadata.uid.as_deref().unwrap_or_default()
    );
    if ctx
        .materialised
        .lock()
        .expect("materialised")
        .contains(&known)
    {
        return Ok(name);
    }
    let api: Api<SandboxTemplate> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(existing) = api.get_opt(&name).await? {
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == set.metadata.uid.as_ref());
        if !ours {
            return Err(Error::InvalidSpec(format!(
                "SandboxTemplate {ns}/{name} exists and is not owned by this SandboxSet"
            )));
        }
        ctx.materialised.lock().expect("materialised").insert(known);
        return Ok(name);
    }
    let mut oref = set.controller_owner_ref(&()).expect("set has uid");
    oref.block_owner_deletion = Some(false);
    let tpl = SandboxTemplate {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            owner_references: Some(vec![oref]),
            labels: Some([(LABEL_SANDBOX_POOL.to_string(), set.name_any())].into()),
            ..Default::default()
        },
        spec: SandboxTemplateSpec {
            template: set.spec.template.clone(),
            volume_claim_templates: set.spec.volume_claim_templates.clone(),
            persistent_contents: set.spec.persistent_contents.clone(),
            runtimes: set.spec.runtimes.clone(),
            pause_strategy: set.spec.pause_strategy.clone(),
        },
    };
    match api.create(&PostParams::default(), &tpl).await {
        Ok(_) => {
            ctx.materialised.lock().expect("materialised").insert(known);
        }
        Err(e) if is_status(&e, 409) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(name)
}

async fn reconcile_inner(set: Arc<SandboxSet>, ctx: Arc<Context>) -> Result<Action> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    if set.metadata.deletion_timestamp.is_some() {
        ctx.scale.forget(&format!("{ns}/{name}"));
        return Ok(Action::await_change());
    }
    let sandboxes: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let sets: Api<SandboxSet> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();

    let effective = EffectiveTemplate {
        template: set.spec.template.as_ref(),
        template_ref: set.spec.template_ref.as_ref(),
        volume_claim_templates: &set.spec.volume_claim_templates,
        persistent_contents: &set.spec.persistent_contents,
        runtimes: &set.spec.runtimes,
        pause_strategy: set.spec.pause_strategy.as_ref(),
    };
    let revision = set_revision(&effective);
    let current_revision = match (&set.spec.template, &set.spec.template_ref) {
        (Some(_), _) => materialise_template(&ctx, &set, &revision).await?,
        (None, Some(r)) => r.name.clone(),
        (None, None) => {
            return Err(Error::InvalidSpec(
                "SandboxSet needs template or templateRef".into(),
            ));
        }
    };

    let Some(cache) = ctx.synced_sandboxes().await else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let key = format!("{ns}/{name}");
    let cached = cache.state_filter(|s| {
        s.metadata.namespace.as_deref() == Some(ns.as_str())
            && s.labels().get(LABEL_SANDBOX_POOL) == Some(&name)
    });
    let outstanding = ctx.scale.observe(
        &key,
        |n| match cached
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(n))
        {
            None => Seen::Absent,
            Some(s) if s.metadata.deletion_timestamp.is_some() => Seen::Deleting,
            Some(_) => Seen::Present,
        },
        Instant::now(),
    );
    let members: Vec<PoolMember> = cached
        .iter()
        .map(|s| s.as_ref())
        .chain(outstanding.unseen_creates.iter())
        .map(|s| member_of(&set, s, &revision, now))
        .collect();
    let spec = PoolSpec {
        replicas: set.spec.replicas.max(0),
        scale_max_unavailable: set
            .spec
            .scale_strategy
            .as_ref()
            .and_then(|s| s.max_unavailable.clone()),
        update_max_unavailable: set
            .spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.max_unavailable.clone()),
    };
    let mut plan = plan_pool(&spec, &members).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    if !outstanding.satisfied() {
        // Upstream's rule: scale down and replace only once our own creates and deletes are
        // in the cache, so a lagging cache never makes us delete a sandbox we still need.
        plan.scale_down.clear();
        plan.rolling.clear();
    }
    let by_name = |n: &str| cached.iter().find(|s| s.name_any() == n);

    let mut failures = Vec::new();
    for n in &plan.delete_dead {
        match sandboxes.delete(n, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.metrics.sandboxes_deleted.inc();
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    let mut deleted = 0i32;
    for n in plan.scale_down.iter().chain(plan.rolling.iter()) {
        if let Some(s) = by_name(n) {
            match lock_then_delete(&sandboxes, s).await {
                Ok(true) => {
                    ctx.scale.expect_delete(&key, n, Instant::now());
                    deleted += 1;
                    ctx.metrics.sandboxes_deleted.inc();
                }
                Ok(false) => {}
                Err(e) => failures.push(e.to_string()),
            }
        }
    }

    // Members change through watch events; the periodic requeue catches expired shutdown timers.
    let mut next = Duration::from_secs(60);
    let held = hold_refill(&ctx, &key, &plan, &spec, &cached, now);
    if let Some(wait) = held {
        next = wait;
    }
    let mut created = 0usize;
    if plan.create > 0 && held.is_none() {
        let template = pool_sandbox(&set, &revision);
        let (ok, err) = do_it_slowly(plan.create, ctx.settings.sandboxset_initial_batch, |_| {
            let sandboxes = sandboxes.clone();
            let template = template.clone();
            let (ctx, key) = (ctx.clone(), key.clone());
            async move {
                let created = sandboxes.create(&PostParams::default(), &template).await?;
                ctx.scale.expect_create(&key, created, Instant::now());
                Ok::<_, kube::Error>(())
            }
        })
        .await;
        created = ok;
        for _ in 0..ok {
            ctx.metrics.sandboxes_created.inc();
        }
        if let Some(e) = err {
            ctx.event(&set.object_ref(&()), true, "FailedCreate", &e.to_string())
                .await;
            failures.push(e.to_string());
        }
    }

    let counts = plan.status;
    let mut status = set.status.clone().unwrap_or_default();
    status.observed_generation = set.metadata.generation;
    // Creates made now are counted right away (the cache above did not see them).
    status.replicas = counts.replicas + created as i32 - deleted;
    status.available_replicas = counts.available;
    status.update_revision = Some(revision);
    status.current_revision = Some(current_revision);
    status.updated_replicas = counts.updated;
    status.updated_available_replicas = counts.updated_available;
    if status.selector.is_none() {
        status.selector = Some(format!(
            "{LABEL_SANDBOX_CLAIMED}=false,{LABEL_SANDBOX_POOL}={name}"
        ));
    }
    let pool = PoolLabel {
        namespace: ns.clone(),
        sandboxset: name.clone(),
    };
    ctx.metrics
        .pool_replicas
        .get_or_create(&pool)
        .set(status.replicas as i64);
    ctx.metrics
        .pool_available
        .get_or_create(&pool)
        .set(status.available_replicas as i64);
    if set.status.as_ref() != Some(&status) {
        let counts_only = set.status.as_ref().is_some_and(|old| {
            SandboxSetStatus {
                replicas: old.replicas,
                available_replicas: old.available_replicas,
                updated_replicas: old.updated_replicas,
                updated_available_replicas: old.updated_available_replicas,
                ..status.clone()
            } == *old
        });
        match ctx.status_pace.wait(&key, Instant::now()) {
            // The counts are written when this requeue comes round (crate::pace).
            Some(wait) if counts_only => next = wait,
            _ => {
                write_status(&sets, &name, &status).await?;
                ctx.status_pace.wrote(&key, Instant::now());
            }
        }
    }
    if !failures.is_empty() {
        return Err(Error::Batch(failures.len(), failures.swap_remove(0)));
    }
    Ok(Action::requeue(next))
}

/// `Some(wait)`: the refill gives way to a burst of claims for now (`pool::refill_hold`; the
/// newest claim of the set from its sandboxes' `claim-timestamp`).
fn hold_refill(
    ctx: &Context,
    key: &str,
    plan: &crate::pool::PoolPlan,
    spec: &PoolSpec,
    cached: &[Arc<Sandbox>],
    now: Timestamp,
) -> Option<Duration> {
    let mut held = ctx.refill_held.lock().expect("refill holds");
    if plan.create == 0 {
        held.remove(key);
        return None;
    }
    let newest_claim = cached
        .iter()
        .filter(|s| s.labels().get(LABEL_SANDBOX_CLAIMED).map(String::as_str) == Some("true"))
        .filter_map(|s| sandbox_api::claim::claimed_at(s))
        .max();
    let since_claim =
        newest_claim.map(|t| Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO));
    let since = *held.entry(key.to_string()).or_insert_with(Instant::now);
    let wait = crate::pool::refill_hold(
        plan.create,
        spec.replicas,
        plan.status.available,
        since_claim,
        since.elapsed(),
        &ctx.settings.refill_hold,
    );
    if wait.is_none() {
        held.remove(key);
    }
    wait
}

async fn write_status(api: &Api<SandboxSet>, name: &str, status: &SandboxSetStatus) -> Result<()> {
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
