//! SandboxClaim reconciler: claims up to 50 sandboxes per reconcile from the named SandboxSet
//! (batches that start at 5 and double), creates sandboxes when the pool is empty and
//! `createOnNoStock` allows it, and handles claimTimeout and ttlAfterCompleted. Each take is a
//! resourceVersion-guarded patch, so a sandbox goes to exactly one claimer however many
//! controllers or workers race for it. Runtime `/init` (with `envVars`) is delivered by the
//! Sandbox reconciler once the claimed sandbox is Ready, from the request stored on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sandbox_api::keys::*;
use sandbox_api::state::{SandboxState, sandbox_state};
use sandbox_api::{Sandbox, SandboxClaim, SandboxClaimStatus, SandboxSet};
use serde_json::json;

use crate::claim::{
    ClaimIdentity, ClaimStep, InitRuntimeRequest, claim_new_sandbox, claim_patch, claim_progress,
    created_sandbox_ready, owned_by_claim, pick_candidates, set_not_found, validate_claim_metadata,
    wait_ready_timeout,
};
use crate::context::Context;
use crate::error::{Result, is_status};
use crate::pool::{do_it_slowly, new_sandbox_from_set};
use crate::revision::{EffectiveTemplate, set_revision};

pub const NAME: &str = "sandboxclaim";

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

fn new_token() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
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

enum Outcome {
    Claimed,
    Created,
    NoStock,
    /// Taken, but it never got Ready or its runtime refused `/init`; reserved or deleted, not
    /// counted.
    Failed,
}

/// Clears a sandbox that failed after the take, records why on the claim, and reports the
/// attempt as failed (not counted).
async fn fail_taken(
    ctx: &Context,
    sandboxes: &Api<Sandbox>,
    claim: &SandboxClaim,
    sbx: &Sandbox,
    reserve: bool,
    why: &str,
) -> std::result::Result<Outcome, kube::Error> {
    ctx.metrics.claim("init_failed");
    clear_failed_sandbox(ctx, sandboxes, sbx, reserve).await?;
    let what = if reserve { "reserved" } else { "deleted" };
    ctx.event(
        &claim.object_ref(&()),
        true,
        "ClaimSandboxFailed",
        &format!("sandbox {}: {why}; {what}", sbx.name_any()),
    )
    .await;
    Ok(Outcome::Failed)
}

/// Waits (at most `timeout`) until a sandbox the claim created is ready to be handed over; see
/// [`created_sandbox_ready`] for what ready and failed mean.
async fn wait_ready(
    sandboxes: &Api<Sandbox>,
    name: &str,
    timeout: Duration,
) -> std::result::Result<Sandbox, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match sandboxes.get_opt(name).await {
            Ok(Some(s)) => {
                if created_sandbox_ready(&s)? {
                    return Ok(s);
                }
            }
            Ok(None) => return Err("sandbox disappeared".into()),
            Err(e) => tracing::debug!(sandbox = name, error = %e, "waiting for a created sandbox"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not ready within waitReadyTimeout ({timeout:?})"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Upstream's `clearFailedSandbox`: a sandbox that failed after it was taken is either kept for
/// inspection (`reserveFailedSandbox`: label `reserved-failed-sandbox=true`, no longer counted by
/// the claim) or deleted. Either way the claim takes another one.
async fn clear_failed_sandbox(
    ctx: &Context,
    sandboxes: &Api<Sandbox>,
    sbx: &Sandbox,
    reserve: bool,
) -> std::result::Result<(), kube::Error> {
    let name = sbx.name_any();
    let res = if reserve {
        let patch = json!({"metadata": {"labels": {LABEL_RESERVED_FAILED_SANDBOX: "true"}}});
        sandboxes
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|updated| {
                ctx.wrote(
                    updated.metadata.uid.as_deref(),
                    updated.metadata.resource_version.as_deref(),
                );
            })
    } else {
        sandboxes
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ())
    };
    match res {
        Err(e) if is_status(&e, 404) => Ok(()),
        other => other,
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
    let sets: Api<SandboxSet> = Api::namespaced(ctx.client.clone(), &ns);
    let oref = claim.object_ref(&());
    let now = Timestamp::now();
    let uid = claim.metadata.uid.clone().unwrap_or_default();

    if claim.status.as_ref().and_then(|s| s.phase.as_deref())
        != Some(sandbox_api::types::claim_phase::COMPLETED)
    {
        let Some(set) = sets.get_opt(&claim.spec.template_name).await? else {
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
        return claim_from(&ctx, &claim, &set, &claims, &sandboxes, &uid, now).await;
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

#[allow(clippy::too_many_arguments)]
async fn claim_from(
    ctx: &Arc<Context>,
    claim: &SandboxClaim,
    set: &SandboxSet,
    claims: &Api<SandboxClaim>,
    sandboxes: &Api<Sandbox>,
    uid: &str,
    now: Timestamp,
) -> Result<Action> {
    let claim_name = claim.name_any();
    // Live sandboxes already owned by this claim (recovers a lost status write).
    // The claim's status (fresh: see `is_stale`) is authoritative; this only recovers a status
    // write lost in a crash, for which the cache (listed anew at start-up) is enough.
    let ready_store = match ctx.sandbox_store.get() {
        Some(store) => {
            let ready =
                tokio::time::timeout(Duration::from_secs(2), store.wait_until_ready()).await;
            if ready.is_err() {
                tracing::warn!(claim = %claim_name, "sandbox cache not ready after 2s; listing from the apiserver");
            }
            ready.ok().and_then(Result::ok).map(|_| store)
        }
        None => None,
    };
    let mine: Vec<Sandbox> = match ready_store {
        Some(store) => {
            let ns = claim.namespace().unwrap_or_default();
            store
                .state()
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|s| s.labels().get(LABEL_CLAIM_NAME) == Some(&claim_name))
                .map(|s| (**s).clone())
                .collect()
        }
        // Cache not synced yet: ask the apiserver (consistent, if slower).
        None => {
            sandboxes
                .list(&ListParams::default().labels(&format!("{LABEL_CLAIM_NAME}={claim_name}")))
                .await?
                .items
        }
    };
    let actual = mine
        .iter()
        .filter(|s| owned_by_claim(s, uid))
        .filter(|s| sandbox_state(s, now) != SandboxState::Dead)
        .filter(|s| !s.labels().contains_key(LABEL_RESERVED_FAILED_SANDBOX))
        .count() as i32;
    let (mut st, step) = claim_progress(claim, actual, now);
    let ClaimStep::Claim(want) = step else {
        write_status(ctx, claims, claim, &st).await?;
        return completed(claims, claim, step).await;
    };
    let want = want.min(ctx.settings.claim_max_batch);

    let set_name = set.name_any();
    let selector = format!("{LABEL_SANDBOX_POOL}={set_name},{LABEL_SANDBOX_CLAIMED}=false");
    let pool: Vec<Sandbox> = match ready_store {
        Some(store) => {
            let ns = claim.namespace().unwrap_or_default();
            store
                .state()
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|s| s.labels().get(LABEL_SANDBOX_POOL) == Some(&set_name))
                .filter(|s| {
                    s.labels().get(LABEL_SANDBOX_CLAIMED).map(String::as_str) == Some("false")
                })
                .map(|s| (**s).clone())
                .collect()
        }
        None => {
            sandboxes
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
        }
    };
    let update_revision = set.status.as_ref().and_then(|s| s.update_revision.clone());
    let start = rand::random::<u32>() as usize;
    let candidates = pick_candidates(&pool, update_revision.as_deref(), now, start);
    let next = AtomicUsize::new(0);
    let init_wanted = !claim.spec.skip_init_runtime.unwrap_or(false) && wants_init(set);
    let create_on_no_stock = claim.spec.create_on_no_stock.unwrap_or(true);
    let reserve_failed = claim.spec.reserve_failed_sandbox.unwrap_or(false);
    let wait_ready_timeout = wait_ready_timeout(claim);
    let ns = claim.namespace().unwrap_or_default();

    let attempt = |_: usize| {
        let candidates = &candidates;
        let next = &next;
        let pool = &pool;
        let ns = &ns;
        async move {
            let lock = new_token();
            let init = init_wanted.then(|| InitRuntimeRequest {
                env_vars: claim.spec.env_vars.clone(),
                access_token: new_token(),
                skip_refresh: false,
            });
            let id = ClaimIdentity {
                claim,
                lock: &lock,
                now: Timestamp::now(),
                init,
            };
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(name) = candidates.get(i) else { break };
                let key = format!("{ns}/{name}");
                if !ctx.pick(&key) {
                    continue;
                }
                let sbx = pool
                    .iter()
                    .find(|s| &s.name_any() == name)
                    .expect("candidate from pool");
                let res = sandboxes
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(claim_patch(sbx, &id)),
                    )
                    .await;
                ctx.unpick(&key);
                match res {
                    Ok(updated) => {
                        ctx.wrote(
                            updated.metadata.uid.as_deref(),
                            updated.metadata.resource_version.as_deref(),
                        );
                        // Like upstream, the runtime is initialised as part of the take, so a
                        // sandbox whose runtime refuses is never counted. (The Sandbox
                        // reconciler replays the same request once it sees the claim; the
                        // runtime accepts a repeated /init.)
                        if id.init.is_some()
                            && let Err(e) = super::sandbox::init_runtime(ctx, &updated).await
                        {
                            let why = format!("runtime init failed ({e})");
                            return fail_taken(
                                ctx,
                                sandboxes,
                                claim,
                                &updated,
                                reserve_failed,
                                &why,
                            )
                            .await;
                        }
                        ctx.metrics.claim("claimed");
                        return Ok(Outcome::Claimed);
                    }
                    Err(e) if is_status(&e, 409) || is_status(&e, 404) => {
                        ctx.metrics.claim("conflict");
                        continue;
                    }
                    Err(e) => {
                        ctx.metrics.claim("failed");
                        return Err(e);
                    }
                }
            }
            if !create_on_no_stock {
                ctx.metrics.claim("no_stock");
                return Ok(Outcome::NoStock);
            }
            let revision = set_revision(&EffectiveTemplate {
                template: set.spec.template.as_ref(),
                template_ref: set.spec.template_ref.as_ref(),
                volume_claim_templates: &set.spec.volume_claim_templates,
                persistent_contents: &set.spec.persistent_contents,
                runtimes: &set.spec.runtimes,
                pause_strategy: set.spec.pause_strategy.as_ref(),
            });
            let fresh = claim_new_sandbox(new_sandbox_from_set(set, &revision), &id);
            let created = sandboxes.create(&PostParams::default(), &fresh).await?;
            ctx.metrics.sandboxes_created.inc();
            // Like upstream, a created sandbox is waited for inline (≤ waitReadyTimeout) and
            // then initialised; a failure clears it like a failed pool sandbox.
            let result = match wait_ready(sandboxes, &created.name_any(), wait_ready_timeout).await
            {
                Ok(ready) if id.init.is_some() => super::sandbox::init_runtime(ctx, &ready)
                    .await
                    .map_err(|e| format!("runtime init failed ({e})")),
                Ok(_) => Ok(()),
                Err(why) => Err(why),
            };
            if let Err(why) = result {
                return fail_taken(ctx, sandboxes, claim, &created, reserve_failed, &why).await;
            }
            ctx.metrics.claim("created");
            Ok(Outcome::Created)
        }
    };
    let results = std::sync::Mutex::new(Vec::new());
    let (_, err) = do_it_slowly(want, ctx.settings.claim_initial_batch, |i| {
        let results = &results;
        let fut = attempt(i);
        async move {
            let r = fut.await?;
            results.lock().expect("results").push(r);
            Ok::<(), kube::Error>(())
        }
    })
    .await;
    let results = results.into_inner().expect("results");
    let got = results
        .iter()
        .filter(|r| matches!(r, Outcome::Claimed | Outcome::Created))
        .count() as i32;
    st.claimed_replicas += got;
    let oref = claim.object_ref(&());
    if got == 0 {
        ctx.event(
            &oref,
            true,
            "NoAvailableSandboxes",
            &format!("no available sandbox in SandboxSet {set_name}"),
        )
        .await;
    }
    write_status(ctx, claims, claim, &st).await?;
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(if got > 0 {
        Action::requeue(Duration::from_millis(10))
    } else {
        Action::requeue(Duration::from_secs(2))
    })
}
