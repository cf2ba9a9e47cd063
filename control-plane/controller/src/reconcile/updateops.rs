//! SandboxUpdateOps reconciler: rolls a template patch over the selected (claimed, Running)
//! sandboxes, `maxUnavailable` at a time, by setting `upgradePolicy` and the patched template
//! (the Sandbox reconciler then replaces the pod and reports `Upgrading=True/Succeeded`).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sandbox_api::keys::*;
use sandbox_api::types::{SandboxPhase, UPGRADE_RECREATE, ops_phase};
use sandbox_api::{Sandbox, SandboxUpdateOps, SandboxUpdateOpsStatus};
use serde_json::json;
use std::ops::Not;

use crate::context::Context;
use crate::error::{Error, Result, is_status};
use crate::updateops::{OpsClass, classify, patched_template, plan_ops};

pub const NAME: &str = "sandboxupdateops";

pub async fn reconcile(ops: Arc<SandboxUpdateOps>, ctx: Arc<Context>) -> Result<Action> {
    super::instrumented(&ctx, NAME, reconcile_inner(ops, ctx.clone())).await
}

fn selector_string(ops: &SandboxUpdateOps) -> Result<String> {
    let sel = &ops.spec.selector;
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(Error::InvalidSpec(format!(
                    "unknown selector operator {other}"
                )));
            }
        });
    }
    if parts.is_empty() {
        return Err(Error::InvalidSpec("empty selector".into()));
    }
    Ok(parts.join(","))
}

fn active(o: &SandboxUpdateOps) -> bool {
    matches!(
        o.status.as_ref().and_then(|s| s.phase.as_deref()),
        None | Some("" | ops_phase::PENDING | ops_phase::UPDATING)
    )
}

async fn reconcile_inner(ops: Arc<SandboxUpdateOps>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ops.namespace().unwrap_or_default();
    let name = ops.name_any();
    let all_ops: Api<SandboxUpdateOps> = Api::namespaced(ctx.client.clone(), &ns);
    let sandboxes: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let siblings = all_ops.list(&ListParams::default()).await?;
    let updating_other = siblings.items.iter().any(|o| {
        o.name_any() != name
            && o.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(ops_phase::UPDATING)
    });
    if updating_other {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let labelled = sandboxes
        .list(&ListParams::default().labels(&format!("{LABEL_UPDATE_OPS}={name}")))
        .await?;

    if ops.metadata.deletion_timestamp.is_some() {
        for s in &labelled.items {
            let mut patch = json!({"metadata": {"labels": {LABEL_UPDATE_OPS: null}, "annotations": {ANNOTATION_UPGRADE_RESUME_TRIGGER: null}}});
            let done = s.status.as_ref().is_some_and(|st| {
                crate::conditions::reason(&st.conditions, sandbox_api::types::condition::UPGRADING)
                    == Some("Succeeded")
            });
            if done {
                patch["spec"] = json!({"upgradePolicy": null});
            }
            match sandboxes
                .patch(&s.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let kept: Vec<String> = ops
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER_SANDBOX_UPDATE_OPS)
            .cloned()
            .collect();
        all_ops
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": kept}})),
            )
            .await?;
        return Ok(Action::await_change());
    }
    if !ops
        .finalizers()
        .iter()
        .any(|f| f == FINALIZER_SANDBOX_UPDATE_OPS)
    {
        let mut f = ops.finalizers().to_vec();
        f.push(FINALIZER_SANDBOX_UPDATE_OPS.into());
        all_ops
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": f, "resourceVersion": ops.metadata.resource_version}})))
            .await?;
        return Ok(Action::requeue(Duration::from_millis(50)));
    }
    let phase = ops
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == ops_phase::COMPLETED || phase == ops_phase::FAILED {
        return Ok(Action::await_change());
    }

    let selected = sandboxes
        .list(&ListParams::default().labels(&selector_string(&ops)?))
        .await?;
    let mut items = selected.items;
    for s in labelled.items {
        if !items.iter().any(|x| x.metadata.uid == s.metadata.uid) {
            items.push(s);
        }
    }
    let classes: Vec<(String, OpsClass)> = items
        .iter()
        .map(|s| {
            let other = s.labels().get(LABEL_UPDATE_OPS).filter(|l| **l != name);
            let active_other = other.is_some_and(|o| {
                siblings
                    .items
                    .iter()
                    .any(|x| &x.name_any() == o && active(x))
            });
            (s.name_any(), classify(&ops, s, active_other))
        })
        .collect();
    let plan = plan_ops(&ops, &classes);
    tracing::debug!(ops = %name, ?classes, ?plan, "update ops plan");
    let oref = ops.object_ref(&());

    // Finished sandboxes: clear the policy so later template edits go in place again; mark failures.
    for (n, c) in &classes {
        let s = items
            .iter()
            .find(|s| &s.name_any() == n)
            .expect("classified sandbox");
        let patch = match c {
            OpsClass::Updated
                if s.spec.upgrade_policy.is_some()
                    || s.labels().contains_key(LABEL_UPGRADE_FAILED) =>
            {
                json!({"metadata": {"labels": {LABEL_UPGRADE_FAILED: null}}, "spec": {"upgradePolicy": null}})
            }
            OpsClass::Failed if !s.labels().contains_key(LABEL_UPGRADE_FAILED) => {
                json!({"metadata": {"labels": {LABEL_UPGRADE_FAILED: "true"}}})
            }
            _ => continue,
        };
        sandboxes
            .patch(n, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }

    // Phase 2 of paused sandboxes (unlimited): the template patch, and the trigger goes away.
    if ops.spec.paused.not() {
        for (n, c) in &classes {
            if *c != OpsClass::NeedsPhase2 {
                continue;
            }
            let s = items
                .iter()
                .find(|s| &s.name_any() == n)
                .expect("classified sandbox");
            if let Some(t) = patched_template(s, ops.spec.patch.as_ref()) {
                let patch = json!({
                    "metadata": {"resourceVersion": s.metadata.resource_version, "annotations": {ANNOTATION_UPGRADE_RESUME_TRIGGER: null}},
                    "spec": {"template": t},
                });
                match sandboxes
                    .patch(n, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 409) => {
                        return Ok(Action::requeue(Duration::from_millis(200)));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    for n in &plan.start {
        let s = items
            .iter()
            .find(|s| &s.name_any() == n)
            .expect("candidate");
        let strategy = ops
            .spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.clone())
            .unwrap_or_else(|| UPGRADE_RECREATE.into());
        let mut patch = json!({
            "metadata": {"resourceVersion": s.metadata.resource_version, "labels": {LABEL_UPDATE_OPS: name, LABEL_UPGRADE_FAILED: null}},
            "spec": {"upgradePolicy": {"type": strategy}, "lifecycle": ops.spec.lifecycle.clone()},
        });
        if s.phase() == Some(SandboxPhase::Paused) {
            patch["metadata"]["annotations"] = json!({ANNOTATION_UPGRADE_RESUME_TRIGGER: "true"});
        } else if let Some(t) = patched_template(s, ops.spec.patch.as_ref()) {
            // Replace the whole template so list elements the patch deleted really go away.
            patch["spec"]["template"] = t;
            patch["metadata"]["resourceVersion"] = json!(s.metadata.resource_version);
        }
        match sandboxes
            .patch(n, &PatchParams::default(), &Patch::Merge(patch.clone()))
            .await
        {
            Ok(_) => {
                ctx.event(
                    &oref,
                    false,
                    "SandboxUpdateStarted",
                    &format!("updating sandbox {n}"),
                )
                .await
            }
            Err(e) if is_status(&e, 409) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(e.into()),
        }
    }

    let status = SandboxUpdateOpsStatus {
        observed_generation: ops.metadata.generation,
        phase: Some(plan.phase.clone()),
        replicas: plan.total,
        updated_replicas: plan.updated,
        failed_replicas: plan.failed,
        updating_replicas: plan.updating + plan.start.len() as i32,
        conditions: ops
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    };
    if ops.status.as_ref() != Some(&status) {
        if plan.phase != phase {
            ctx.event(&oref, false, &format!("SandboxUpdateOps{}", plan.phase), "")
                .await;
        }
        all_ops
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(
        if plan.start.is_empty() { 5 } else { 1 },
    )))
}
