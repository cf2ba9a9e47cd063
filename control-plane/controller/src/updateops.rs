//! SandboxUpdateOps planning over plain data: classify the selected sandboxes, decide the ops
//! phase, and pick which sandboxes start updating now (`maxUnavailable`, default 1, rounded up,
//! minus those updating or failed; candidates sorted by name). The adapter in
//! `reconcile::updateops` lists, calls [`plan_ops`] and patches.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sandbox_api::keys::*;
use sandbox_api::state::is_pool_owned;
use sandbox_api::types::{SandboxPhase, condition as cond, ops_phase};
use sandbox_api::{Sandbox, SandboxUpdateOps};
use serde_json::Value;

use crate::conditions;
use crate::pool::scaled_value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsClass {
    Skip,
    Candidate,
    Updating,
    /// Resumed by the first phase of a paused sandbox's update; its template patch is due.
    NeedsPhase2,
    Updated,
    Failed,
}

/// The sandbox's template after applying the ops patch (None if the sandbox has no template).
pub fn patched_template(sbx: &Sandbox, patch: Option<&Value>) -> Option<Value> {
    let t = serde_json::to_value(sbx.spec.template.as_ref()?).ok()?;
    let mut out = t;
    if let Some(p) = patch {
        let mut p = p.clone();
        crate::smp::sanitize(&mut p);
        crate::smp::apply(&mut out, &p);
    }
    Some(out)
}

fn template_matches(sbx: &Sandbox, patch: Option<&Value>) -> bool {
    let cur = sbx
        .spec
        .template
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok());
    // Round-trip through the typed template so defaults/ordering compare equal.
    let want = patched_template(sbx, patch)
        .and_then(|v| serde_json::from_value::<k8s_openapi::api::core::v1::PodTemplateSpec>(v).ok())
        .and_then(|t| serde_json::to_value(t).ok());
    cur == want
}

/// Classifies one selected sandbox for `ops`. `active_other` tells whether the ops named by the
/// sandbox's `update-ops` label (if it is another one) is still Pending/Updating.
pub fn classify(ops: &SandboxUpdateOps, sbx: &Sandbox, active_other: bool) -> OpsClass {
    let ops_name = ops.metadata.name.as_deref().unwrap_or_default();
    let raw = sbx
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let ph = SandboxPhase::parse(raw);
    if sbx.metadata.deletion_timestamp.is_some()
        || ph.is_some_and(SandboxPhase::is_terminal)
        || is_pool_owned(sbx)
    {
        return OpsClass::Skip;
    }
    let label = sbx
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_UPDATE_OPS))
        .map(String::as_str);
    let mine = label == Some(ops_name);
    if !mine {
        if label.is_some() && active_other {
            return OpsClass::Skip;
        }
        let states: Vec<String> = ops
            .spec
            .state_filter
            .as_ref()
            .map(|f| f.states.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec![SandboxPhase::Running.as_str().to_string()]);
        if ph != Some(SandboxPhase::Upgrading) && !states.iter().any(|s| s == raw) {
            return OpsClass::Skip;
        }
    }
    let conds = sbx
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let observed =
        sbx.status.as_ref().and_then(|s| s.observed_generation) == sbx.metadata.generation;
    if !mine {
        if template_matches(sbx, ops.spec.patch.as_ref())
            && ph != Some(SandboxPhase::Upgrading)
            && observed
        {
            return OpsClass::Skip;
        }
        if ph == Some(SandboxPhase::Paused)
            && !(conditions::is_true(conds, cond::SANDBOX_PAUSED) && sbx.spec.paused)
        {
            return OpsClass::Skip;
        }
        return OpsClass::Candidate;
    }
    if !observed {
        return OpsClass::Updating;
    }
    match conditions::reason(conds, cond::UPGRADING) {
        Some(cond::REASON_SUCCEEDED) if conditions::is_true(conds, cond::UPGRADING) => {
            OpsClass::Updated
        }
        Some(
            cond::REASON_PRE_UPGRADE_FAILED
            | cond::REASON_POST_UPGRADE_FAILED
            | cond::REASON_UPGRADE_POD_FAILED
            | cond::REASON_CHECKPOINT_FAILED,
        ) => OpsClass::Failed,
        Some(cond::REASON_RESUME_SUCCEED) => OpsClass::NeedsPhase2,
        None if template_matches(sbx, ops.spec.patch.as_ref())
            && ph == Some(SandboxPhase::Running) =>
        {
            OpsClass::Updated
        }
        // Labelled, never upgraded and Running again: it was un-paused before phase 2.
        None if ph == Some(SandboxPhase::Running) => OpsClass::NeedsPhase2,
        _ => OpsClass::Updating,
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpsPlan {
    pub phase: String,
    /// Sandboxes to start now, by name.
    pub start: Vec<String>,
    pub total: i32,
    pub updated: i32,
    pub updating: i32,
    pub failed: i32,
}

/// Phase and the sandboxes to start, from the classification of every selected sandbox.
pub fn plan_ops(ops: &SandboxUpdateOps, classes: &[(String, OpsClass)]) -> OpsPlan {
    let count = |c: OpsClass| classes.iter().filter(|(_, x)| *x == c).count() as i32;
    let (cand, updating, updated, failed) = (
        count(OpsClass::Candidate),
        count(OpsClass::Updating) + count(OpsClass::NeedsPhase2),
        count(OpsClass::Updated),
        count(OpsClass::Failed),
    );
    let total = cand + updating + updated + failed;
    let current = ops
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let mut plan = OpsPlan {
        phase: current.clone(),
        total,
        updated,
        updating,
        failed,
        start: Vec::new(),
    };
    if current.is_empty() || current == ops_phase::PENDING {
        plan.phase = ops_phase::UPDATING.into();
    }
    if plan.phase == ops_phase::COMPLETED || plan.phase == ops_phase::FAILED {
        return plan;
    }
    if cand == 0 && updating == 0 {
        plan.phase = if failed > 0 {
            ops_phase::FAILED.into()
        } else {
            ops_phase::COMPLETED.into()
        };
        return plan;
    }
    if ops.spec.paused {
        return plan;
    }
    let mu = ops
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let budget = (scaled_value(&mu, total).unwrap_or(1) - updating - failed).max(0) as usize;
    let mut names: Vec<String> = classes
        .iter()
        .filter(|(_, c)| *c == OpsClass::Candidate)
        .map(|(n, _)| n.clone())
        .collect();
    names.sort();
    plan.start = names.into_iter().take(budget).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_api::{Condition, SandboxStatus};
    use serde_json::json;

    fn ops(extra: Value) -> SandboxUpdateOps {
        let mut v = json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxUpdateOps", "metadata": {"name": "o1"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "patch": {"spec": {"containers": [{"name": "c", "image": "new"}]}}}});
        for (k, x) in extra.as_object().cloned().unwrap_or_default() {
            v["spec"][k] = x;
        }
        serde_json::from_value(v).unwrap()
    }

    fn sbx(
        name: &str,
        ph: &str,
        image: &str,
        label: Option<&str>,
        upgrading: Option<(&str, bool)>,
    ) -> Sandbox {
        let mut s: Sandbox = serde_json::from_value(
            json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "Sandbox",
            "metadata": {"name": name, "generation": 2},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}),
        )
        .unwrap();
        if let Some(l) = label {
            s.metadata.labels = Some([(LABEL_UPDATE_OPS.to_string(), l.to_string())].into());
        }
        let mut conditions = Vec::new();
        if let Some((r, ok)) = upgrading {
            conditions.push(Condition {
                type_: "Upgrading".into(),
                status: if ok { "True" } else { "False" }.into(),
                reason: Some(r.into()),
                ..Default::default()
            });
        }
        s.status = Some(SandboxStatus {
            phase: Some(ph.into()),
            observed_generation: Some(2),
            conditions,
            ..Default::default()
        });
        s
    }

    #[test]
    fn classification() {
        let o = ops(json!({}));
        assert_eq!(
            classify(&o, &sbx("a", "Running", "old", None, None), false),
            OpsClass::Candidate
        );
        assert_eq!(
            classify(&o, &sbx("a", "Running", "new", None, None), false),
            OpsClass::Skip,
            "already patched"
        );
        assert_eq!(
            classify(&o, &sbx("a", "Paused", "old", None, None), false),
            OpsClass::Skip,
            "state filter"
        );
        assert_eq!(
            classify(&o, &sbx("a", "Running", "old", Some("other"), None), true),
            OpsClass::Skip
        );
        assert_eq!(
            classify(
                &o,
                &sbx(
                    "a",
                    "Upgrading",
                    "new",
                    Some("o1"),
                    Some(("UpgradePod", false))
                ),
                false
            ),
            OpsClass::Updating
        );
        assert_eq!(
            classify(
                &o,
                &sbx("a", "Running", "new", Some("o1"), Some(("Succeeded", true))),
                false
            ),
            OpsClass::Updated
        );
        assert_eq!(
            classify(
                &o,
                &sbx(
                    "a",
                    "Running",
                    "new",
                    Some("o1"),
                    Some(("UpgradePodFailed", false))
                ),
                false
            ),
            OpsClass::Failed
        );
        assert_eq!(
            classify(
                &o,
                &sbx(
                    "a",
                    "Upgrading",
                    "old",
                    Some("o1"),
                    Some(("ResumeSucceed", false))
                ),
                false
            ),
            OpsClass::NeedsPhase2
        );
        let paused_ok = ops(json!({"stateFilter": {"states": ["Paused"]}}));
        assert_eq!(
            classify(&paused_ok, &sbx("a", "Paused", "old", None, None), false),
            OpsClass::Skip,
            "not fully paused"
        );
    }

    #[test]
    fn budget_and_phases() {
        let o = ops(json!({"updateStrategy": {"maxUnavailable": 2}}));
        let classes: Vec<(String, OpsClass)> = ["d", "c", "b", "a"]
            .iter()
            .map(|n| (n.to_string(), OpsClass::Candidate))
            .collect();
        let p = plan_ops(&o, &classes);
        assert_eq!(p.phase, "Updating");
        assert_eq!(p.start, ["a", "b"]);
        let mut classes = classes;
        classes[3].1 = OpsClass::Updating;
        classes[2].1 = OpsClass::Failed;
        assert!(
            plan_ops(&o, &classes).start.is_empty(),
            "failures count against the budget"
        );
        let done: Vec<(String, OpsClass)> = vec![
            ("a".into(), OpsClass::Updated),
            ("b".into(), OpsClass::Failed),
        ];
        assert_eq!(plan_ops(&o, &done).phase, "Failed");
        let done: Vec<(String, OpsClass)> = vec![("a".into(), OpsClass::Updated)];
        assert_eq!(plan_ops(&o, &done).phase, "Completed");
        let paused = ops(json!({"paused": true}));
        assert!(
            plan_ops(&paused, &[("a".into(), OpsClass::Candidate)])
                .start
                .is_empty()
        );
        // default maxUnavailable is 1
        assert_eq!(
            plan_ops(
                &ops(json!({})),
                &[
                    ("a".into(), OpsClass::Candidate),
                    ("b".into(), OpsClass::Candidate)
                ]
            )
            .start,
            ["a"]
        );
    }
}
