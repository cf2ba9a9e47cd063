//! Sandbox reconciler: pods, PVCs, timers, pause/resume, upgrade, in-place update, runtime init.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use sandbox_api::keys::*;
use sandbox_api::types::condition as cond;
use sandbox_api::{Sandbox, SandboxPhase, SandboxTemplate};
use sandbox_core::ClaimableSandbox;
use serde_json::json;

use crate::conditions;
use crate::context::Context;
use crate::error::{Error, Result, is_status};
use crate::lifecycle::{self, Observed, PodAction, PodFacts, TimerAction};
use crate::podgen::{self, build_pod};
use crate::revision::{immutable_part_hash, sandbox_revision};

pub const NAME: &str = "sandbox";

pub async fn reconcile(sbx: Arc<Sandbox>, ctx: Arc<Context>) -> Result<Action> {
    super::instrumented(&ctx, NAME, reconcile_inner(sbx, ctx.clone())).await
}

/// The pod template of a sandbox: inline, or the referenced SandboxTemplate's.
async fn resolve_template(ctx: &Context, sbx: &Sandbox) -> Result<Option<PodTemplateSpec>> {
    if let Some(t) = &sbx.spec.template {
        return Ok(Some(t.clone()));
    }
    let Some(r) = &sbx.spec.template_ref else {
        return Ok(None);
    };
    let ns = sbx.namespace().unwrap_or_default();
    let api: Api<SandboxTemplate> = Api::namespaced(ctx.client.clone(), &ns);
    match api.get_opt(&r.name).await? {
        Some(t) => Ok(t.spec.template),
        None => Err(Error::TemplateNotFound(format!("{ns}/{}", r.name))),
    }
}

async fn ensure_pvcs(ctx: &Context, sbx: &Sandbox) -> Result<()> {
    if sbx.spec.volume_claim_templates.is_empty() {
        return Ok(());
    }
    let ns = sbx.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for vct in &sbx.spec.volume_claim_templates {
        let name = podgen::pvc_name(
            vct.metadata.name.as_deref().unwrap_or_default(),
            &sbx.name_any(),
        );
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut pvc = vct.clone();
        pvc.metadata.name = Some(name);
        pvc.metadata.namespace = Some(ns.clone());
        pvc.metadata.owner_references = Some(vec![podgen::owner_ref_to(sbx)]);
        pvc.status = None;
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn injection_data(
    ctx: &Context,
) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.system_namespace);
    match api.get_opt(INJECTION_CONFIGMAP).await? {
        Some(cm) => Ok(Some(cm.data.unwrap_or_default())),
        None => {
            tracing::debug!("injection ConfigMap missing; skip injection");
            Ok(None)
        }
    }
}

/// POSTs the stored `/init` request to the sandbox's runtime (the claim engine's client and
/// retries; 401 counts as already initialised), then mounts the CSI volumes the sandbox
/// records again (upstream's initializer: the new pod has none of them).
async fn init_runtime(ctx: &Context, sbx: &Sandbox) -> Result<()> {
    post_init(ctx, sbx).await?;
    let Some(mounts) = sandbox_api::csi::recorded(sbx) else {
        return Ok(());
    };
    let again =
        |e: String| Error::RuntimeInit(format!("failed to perform ReCSIMount after resume: {e}"));
    let resolved = sandbox_api::csi::resolve(&ctx.client, &ctx.settings.storage, &mounts)
        .await
        .map_err(|e| again(e.to_string()))?;
    sandbox_api::csi::mount_all(&ctx.envd, &ctx.settings.storage.cli, sbx, &resolved)
        .await
        .map_err(again)
}

async fn post_init(ctx: &Context, sbx: &Sandbox) -> Result<()> {
    let ann = sbx.annotations();
    let body = ann
        .get(ANNOTATION_INIT_RUNTIME_REQUEST)
        .cloned()
        .unwrap_or_else(|| "{}".into());
    let base = sbx
        .runtime_url()
        .ok_or_else(|| Error::RuntimeInit("sandbox has no pod IP".into()))?;
    let token = ann
        .get(ANNOTATION_RUNTIME_ACCESS_TOKEN)
        .map(String::as_str)
        .unwrap_or_default();
    ctx.runtime
        .post_init(&base, token, body.into())
        .await
        .map_err(|e| Error::RuntimeInit(e.to_string()))
}

/// Brings the pod's metadata, images and resources to the current template (in-place
/// update). `Ok(true)` when an image or resources changed (the update then has to finish on the
/// node); a metadata-only change is done with the patch (upstream: "patched directly without
/// touching conditions").
async fn inplace_update(
    pods: &Api<Pod>,
    pod: &Pod,
    template: &PodTemplateSpec,
    revision: &str,
) -> Result<bool> {
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = serde_json::Map::new();
    for (k, v) in tmeta.labels.unwrap_or_default() {
        labels.insert(k, json!(v));
    }
    labels.insert(LABEL_POD_TEMPLATE_HASH.into(), json!(revision));
    let mut annotations = serde_json::Map::new();
    for (k, v) in tmeta.annotations.unwrap_or_default() {
        annotations.insert(k, json!(v));
    }
    let current: std::collections::HashMap<String, Option<String>> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| (c.name.clone(), c.image.clone()))
        .collect();
    let containers: Vec<serde_json::Value> = template
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| current.get(&c.name).is_some_and(|img| img != &c.image))
        .map(|c| json!({"name": c.name, "image": c.image}))
        .collect();
    // CPU/memory changes go through the `resize` subresource first (in-place pod resize).
    let current_res: std::collections::HashMap<String, serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            (
                c.name.clone(),
                serde_json::to_value(&c.resources).unwrap_or_default(),
            )
        })
        .collect();
    let resized: Vec<serde_json::Value> = template
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.resources.is_some())
        .filter(|c| {
            current_res
                .get(&c.name)
                .is_some_and(|r| *r != serde_json::to_value(&c.resources).unwrap_or_default())
        })
        .map(|c| json!({"name": c.name, "resources": c.resources}))
        .collect();
    if !resized.is_empty() {
        let body = json!({"spec": {"containers": resized}});
        match pods
            .patch_subresource(
                "resize",
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(body),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {
                tracing::warn!(pod = %pod.name_any(), "pods/resize not supported by this cluster; resources not changed in place")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let spec_changed = !containers.is_empty() || !resized.is_empty();
    let mut patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
    if !containers.is_empty() {
        patch["spec"] = json!({"containers": containers});
    }
    pods.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(patch),
    )
    .await?;
    Ok(spec_changed)
}

/// The sandbox's pod: from the pod watch's store when it has it (no request), else read from the
/// apiserver — a pod this controller just created, or one the store has not listed yet, is never
/// taken for missing (which would create it twice). A cached pod may be a moment old; its newer
/// version triggers another reconcile when the watch delivers it.
async fn sandbox_pod(
    ctx: &Context,
    pods: &Api<Pod>,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<Pod>>> {
    let cached = ctx
        .pod_store
        .get()
        .and_then(|store| store.get(&ObjectRef::<Pod>::new(name).within(ns)));
    match cached {
        Some(pod) => Ok(Some(pod)),
        None => Ok(pods.get_opt(name).await?.map(Arc::new)),
    }
}

async fn reconcile_inner(sbx: Arc<Sandbox>, ctx: Arc<Context>) -> Result<Action> {
    let ns = sbx.namespace().unwrap_or_default();
    let name = sbx.name_any();
    let sandboxes: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let oref = sbx.object_ref(&());
    if ctx.is_stale(
        sbx.metadata.uid.as_deref(),
        sbx.metadata.resource_version.as_deref(),
    ) {
        // Our own newer write is on its way through the watch; act on that, not on this.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let pod = sandbox_pod(&ctx, &pods, &ns, &name).await?;
    let deleting = sbx.metadata.deletion_timestamp.is_some();
    let terminal = sbx.phase().is_some_and(SandboxPhase::is_terminal);

    let template = if deleting || terminal {
        None
    } else {
        resolve_template(&ctx, &sbx).await?
    };
    if !deleting && !terminal && template.is_none() {
        return Ok(Action::await_change());
    }
    if !deleting && !terminal {
        ensure_pvcs(&ctx, &sbx).await?;
    }
    let now = Timestamp::now();
    let revision = sandbox_revision(&sbx.spec);
    let plan = lifecycle::plan(&Observed {
        sandbox: &sbx,
        pod: PodFacts::from_pod(pod.as_deref()),
        now,
        revision: revision.clone(),
        immutable_hash: template.as_ref().map(immutable_part_hash),
    });

    for e in &plan.events {
        ctx.event(&oref, e.warning, &e.reason, &e.message).await;
    }

    match &plan.timer {
        TimerAction::None => {}
        TimerAction::DeleteSandbox => {
            tracing::info!(%ns, %name, "shutdownTime reached; deleting sandbox");
            ctx.event(&oref, false, "SandboxShutdown", "shutdownTime reached")
                .await;
            match sandboxes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::await_change());
        }
        TimerAction::Pause { retain_until } => {
            let mut spec = json!({"paused": true});
            if let Some(t) = retain_until {
                spec["shutdownTime"] = json!(t);
                spec["pauseTime"] = json!(t);
            }
            let patch = json!({"metadata": {"resourceVersion": sbx.metadata.resource_version}, "spec": spec});
            match sandboxes
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    ctx.event(
                        &oref,
                        false,
                        "SandboxPauseTime",
                        "pauseTime reached; pausing",
                    )
                    .await
                }
                Err(e) if is_status(&e, 409) => {
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::await_change());
        }
    }

    // Metadata first: finalizer before the pod goes away, immutable hash once.
    let mut finalizers: Vec<String> = sbx.finalizers().to_vec();
    let mut meta_patch = serde_json::Map::new();
    if plan.add_finalizer && !finalizers.iter().any(|f| f == FINALIZER_SANDBOX) {
        finalizers.push(FINALIZER_SANDBOX.into());
        meta_patch.insert("finalizers".into(), json!(finalizers));
    }
    if let Some(h) = &plan.set_immutable_hash {
        meta_patch.insert(
            "annotations".into(),
            json!({ ANNOTATION_HASH_IMMUTABLE_PART: h }),
        );
    }
    // Status writes are guarded by the version this plan was made from, so a plan made from a
    // stale cache entry (say, from before a pause) never lands; the newer event replans.
    let mut rv = sbx.metadata.resource_version.clone();
    if !meta_patch.is_empty() {
        meta_patch.insert("resourceVersion".into(), json!(rv));
        let updated = sandboxes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": meta_patch })),
            )
            .await?;
        ctx.wrote(
            updated.metadata.uid.as_deref(),
            updated.metadata.resource_version.as_deref(),
        );
        rv = updated.metadata.resource_version;
    }

    let mut status = plan.status.clone();
    match &plan.pod {
        PodAction::None => {}
        PodAction::Create => {
            let tpl = template
                .as_ref()
                .expect("template resolved for live sandboxes");
            let data = if sbx.spec.runtimes.is_empty() {
                None
            } else {
                injection_data(&ctx).await?
            };
            let rev = status.update_revision.clone().unwrap_or(revision.clone());
            let new_pod = match build_pod(&sbx, tpl, &rev, data.as_ref()) {
                Ok(p) => p,
                Err(e) => {
                    // Surface why there is no pod (the sandbox stays Pending and is retried).
                    let msg = e.to_string();
                    ctx.event(&oref, true, cond::REASON_POD_CREATE_FAILED, &msg)
                        .await;
                    conditions::set(
                        &mut status.conditions,
                        cond::READY,
                        false,
                        cond::REASON_POD_CREATE_FAILED,
                        &msg,
                        now,
                    );
                    write_status(&ctx, &sandboxes, &sbx, rv.as_deref(), &status).await?;
                    return Err(e.into());
                }
            };
            match pods.create(&PostParams::default(), &new_pod).await {
                Ok(_) => {
                    ctx.metrics.pods_created.inc();
                }
                Err(e) if is_status(&e, 409) => {}
                Err(e) => {
                    let msg = e.to_string();
                    ctx.event(&oref, true, cond::REASON_POD_CREATE_FAILED, &msg)
                        .await;
                    conditions::set(
                        &mut status.conditions,
                        cond::READY,
                        false,
                        cond::REASON_POD_CREATE_FAILED,
                        &msg,
                        now,
                    );
                    write_status(&ctx, &sandboxes, &sbx, rv.as_deref(), &status).await?;
                    return Err(e.into());
                }
            }
        }
        PodAction::Delete { grace_seconds } => {
            if let Some(p) = &pod {
                let dp = DeleteParams {
                    grace_period_seconds: grace_seconds.map(|g| g as u32),
                    preconditions: Some(Preconditions {
                        uid: p.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match pods.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    if plan.inplace_update
        && let (Some(p), Some(t)) = (&pod, &template)
    {
        // An image or resource change finishes once the pod runs the new image and is ready
        // again (the planner's `finish_in_place`): a claim that changed the image waits for
        // that. A metadata-only change (a SandboxClaim's owner labels) is done.
        if inplace_update(&pods, p, t, &revision).await? {
            conditions::set(
                &mut status.conditions,
                cond::INPLACE_UPDATE,
                false,
                cond::REASON_INPLACE_UPDATING,
                "",
                now,
            );
        }
    }

    if plan.init_runtime {
        match init_runtime(&ctx, &sbx).await {
            Ok(()) => {
                conditions::set(
                    &mut status.conditions,
                    cond::RUNTIME_INITIALIZED,
                    true,
                    cond::REASON_SUCCEEDED,
                    "",
                    now,
                );
            }
            Err(e) => {
                let msg = e.to_string();
                conditions::set(
                    &mut status.conditions,
                    cond::RUNTIME_INITIALIZED,
                    false,
                    cond::REASON_FAILED,
                    &msg,
                    now,
                );
                ctx.event(&oref, true, "RuntimeInitFailed", &msg).await;
            }
        }
    }

    if plan.remove_finalizer {
        let kept: Vec<String> = sbx
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER_SANDBOX)
            .cloned()
            .collect();
        let patch = json!({"metadata": {"finalizers": kept}});
        match sandboxes
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(updated) => {
                ctx.wrote(
                    updated.metadata.uid.as_deref(),
                    updated.metadata.resource_version.as_deref(),
                );
                rv = updated.metadata.resource_version;
            }
            Err(e) if is_status(&e, 404) => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    let mut requeue = plan.requeue_after;
    if !deleting {
        match hold_observed_write(&ctx, &sbx, &status) {
            Some(wait) => requeue = Some(requeue.map_or(wait, |d| d.min(wait))),
            None => write_status(&ctx, &sandboxes, &sbx, rv.as_deref(), &status).await?,
        }
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d.max(Duration::from_millis(100))),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// `Some(wait)`: this status write only moves the `observedGeneration` of a just-claimed sandbox
/// while claims are still coming; it is made when the reconcile comes round again
/// (`pool::observed_write_hold`).
fn hold_observed_write(
    ctx: &Context,
    sbx: &Sandbox,
    status: &sandbox_api::SandboxStatus,
) -> Option<Duration> {
    let claimed = sandbox_api::claim::claimed_at(sbx)?;
    let newest = {
        let mut newest = ctx.newest_claim.lock().expect("newest claim");
        let n = newest.map_or(claimed, |n| n.max(claimed));
        *newest = Some(n);
        n
    };
    let old = sbx.status.as_ref()?;
    let observed_only = old.observed_generation != status.observed_generation
        && sandbox_api::SandboxStatus {
            observed_generation: old.observed_generation,
            ..status.clone()
        } == *old;
    if !observed_only {
        return None;
    }
    let now = Timestamp::now();
    let since = |t: Timestamp| Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO);
    crate::pool::observed_write_hold(since(claimed), since(newest), &ctx.settings.refill_hold)
}

async fn write_status(
    ctx: &Context,
    api: &Api<Sandbox>,
    sbx: &Sandbox,
    rv: Option<&str>,
    status: &sandbox_api::SandboxStatus,
) -> Result<()> {
    if sbx.status.as_ref() == Some(status) {
        return Ok(());
    }
    let patch = json!({
        "metadata": { "resourceVersion": rv },
        "status": super::merge_patch_replacing(sbx.status.as_ref(), status),
    });
    match api
        .patch_status(
            &sbx.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
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
