//! Admission rules as plain functions (no I/O): SandboxSet/SandboxTemplate defaulting and
//! validation, SandboxUpdateOps validation, and the pod delete/eviction decision. The webhook
//! server (`webhook.rs`) decodes AdmissionReviews, gathers what these need and answers.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sandbox_api::keys::E2B_PREFIX;
use sandbox_api::types::{UPGRADE_CHECKPOINT_RESTORE, ops_phase};
use sandbox_api::{SandboxSet, SandboxTemplate, SandboxUpdateOps};

use crate::pool::scaled_value;

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Pod-template checks shared by SandboxSet and SandboxTemplate: no `e2b.agents.kruise.io/`
/// metadata, every volumeClaimTemplate mounted, well-formed containers and volume references.
pub fn validate_pod_template(
    t: &PodTemplateSpec,
    vcts: &[PersistentVolumeClaim],
    errs: &mut Vec<String>,
) {
    if let Some(md) = &t.metadata {
        for k in md
            .labels
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .chain(md.annotations.iter().flatten().map(|(k, _)| k))
        {
            if k.starts_with(E2B_PREFIX) {
                errs.push(format!(
                    "template.metadata: key {k} uses the reserved prefix {E2B_PREFIX}"
                ));
            }
        }
    }
    let Some(spec) = &t.spec else {
        errs.push("template.spec: required".into());
        return;
    };
    if spec.containers.is_empty() {
        errs.push("template.spec.containers: at least one container is required".into());
    }
    let mut names = HashSet::new();
    let mut volumes: HashSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    let vct_names: Vec<String> = vcts
        .iter()
        .filter_map(|v| v.metadata.name.clone())
        .collect();
    volumes.extend(vct_names.iter().cloned());
    let mut mounted = HashSet::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        if !dns_label(&c.name) {
            errs.push(format!(
                "template.spec.containers: invalid container name {:?}",
                c.name
            ));
        }
        if !names.insert(c.name.clone()) {
            errs.push(format!(
                "template.spec.containers: duplicate container name {:?}",
                c.name
            ));
        }
        if c.image.as_deref().unwrap_or("").trim().is_empty() {
            errs.push(format!(
                "template.spec.containers[{}].image: required",
                c.name
            ));
        }
        for m in c.volume_mounts.iter().flatten() {
            if !volumes.contains(&m.name) {
                errs.push(format!(
                    "template.spec.containers[{}].volumeMounts: volume {:?} not found",
                    c.name, m.name
                ));
            }
            mounted.insert(m.name.clone());
        }
    }
    for v in vct_names {
        if !mounted.contains(&v) {
            errs.push(format!(
                "volumeClaimTemplates: {v:?} is not mounted by any container"
            ));
        }
    }
}

fn check_int_or_percent(field: &str, v: Option<&IntOrString>, errs: &mut Vec<String>) {
    if let Some(v) = v
        && let Err(e) = scaled_value(v, 100)
    {
        errs.push(format!("{field}: {e}"));
    }
    if let Some(IntOrString::Int(i)) = v
        && *i < 0
    {
        errs.push(format!("{field}: must not be negative"));
    }
}

/// `/validate-sandboxset`.
pub fn validate_sandboxset(set: &SandboxSet) -> Vec<String> {
    let mut errs = Vec::new();
    if set.spec.replicas < 0 {
        errs.push("spec.replicas: must be >= 0".into());
    }
    match (&set.spec.template, &set.spec.template_ref) {
        (Some(_), Some(_)) => {
            errs.push("spec: template and templateRef are mutually exclusive".into())
        }
        (None, None) => errs.push("spec: one of template or templateRef is required".into()),
        (Some(t), None) => validate_pod_template(t, &set.spec.volume_claim_templates, &mut errs),
        (None, Some(r)) if r.name.is_empty() => errs.push("spec.templateRef.name: required".into()),
        _ => {}
    }
    check_int_or_percent(
        "spec.scaleStrategy.maxUnavailable",
        set.spec
            .scale_strategy
            .as_ref()
            .and_then(|s| s.max_unavailable.as_ref()),
        &mut errs,
    );
    check_int_or_percent(
        "spec.updateStrategy.maxUnavailable",
        set.spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.max_unavailable.as_ref()),
        &mut errs,
    );
    errs
}

/// `/validate-sandboxtemplate`.
pub fn validate_sandboxtemplate(t: &SandboxTemplate) -> Vec<String> {
    let mut errs = Vec::new();
    match &t.spec.template {
        None => errs.push("spec.template: required".into()),
        Some(tpl) => validate_pod_template(tpl, &t.spec.volume_claim_templates, &mut errs),
    }
    errs
}

fn default_pod_template(t: &mut PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        // Sandboxes run untrusted code: never hand them the service account token by default.
        spec.automount_service_account_token = Some(false);
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            for p in c.ports.iter_mut().flatten() {
                p.protocol.get_or_insert_with(|| "TCP".into());
            }
        }
    }
}

fn default_vcts(vcts: &mut [PersistentVolumeClaim]) {
    for v in vcts {
        let spec = v.spec.get_or_insert_with(Default::default);
        if spec.access_modes.as_ref().is_none_or(Vec::is_empty) {
            spec.access_modes = Some(vec!["ReadWriteOnce".into()]);
        }
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }
}

/// `/default-sandboxset`.
pub fn default_sandboxset(set: &mut SandboxSet, creating: bool, default_persistent: &[String]) {
    if let Some(t) = set.spec.template.as_mut() {
        default_pod_template(t);
    }
    let us = set
        .spec
        .update_strategy
        .get_or_insert_with(Default::default);
    us.max_unavailable
        .get_or_insert_with(|| IntOrString::String("20%".into()));
    if creating && set.spec.persistent_contents.is_empty() {
        set.spec.persistent_contents = default_persistent.to_vec();
    }
    default_vcts(&mut set.spec.volume_claim_templates);
}

/// `/default-sandboxtemplate`.
pub fn default_sandboxtemplate(t: &mut SandboxTemplate) {
    if let Some(tpl) = t.spec.template.as_mut() {
        default_pod_template(tpl);
    }
    default_vcts(&mut t.spec.volume_claim_templates);
}

fn patch_sets_image(patch: &serde_json::Value) -> bool {
    let spec = &patch["spec"];
    ["containers", "initContainers"].iter().any(|k| {
        spec[k]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c.get("image").is_some()))
    })
}

/// `/validate-sandboxupdateops`. `others_active` = names of other ops in the namespace that are
/// neither Completed nor Failed.
pub fn validate_updateops(
    ops: &SandboxUpdateOps,
    old: Option<&SandboxUpdateOps>,
    others_active: &[String],
) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(old) = old {
        if old.spec.selector != ops.spec.selector {
            errs.push("spec.selector: immutable".into());
        }
        if old.spec.patch != ops.spec.patch {
            errs.push("spec.patch: immutable".into());
        }
        if old.spec.lifecycle != ops.spec.lifecycle {
            errs.push("spec.lifecycle: immutable".into());
        }
        return errs;
    }
    let sel = &ops.spec.selector;
    if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    {
        errs.push("spec.selector: required (matchLabels or matchExpressions)".into());
    }
    for e in sel.match_expressions.iter().flatten() {
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.as_ref().is_none_or(Vec::is_empty) => errs.push(format!(
                "spec.selector: {} {} needs values",
                e.key, e.operator
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(format!("spec.selector: unknown operator {other}")),
        }
    }
    let strategy = ops.spec.update_strategy.as_ref();
    check_int_or_percent(
        "spec.updateStrategy.maxUnavailable",
        strategy.and_then(|s| s.max_unavailable.as_ref()),
        &mut errs,
    );
    if let Some(l) = &ops.spec.lifecycle {
        for (name, a) in [
            ("preUpgrade", &l.pre_upgrade),
            ("postUpgrade", &l.post_upgrade),
        ] {
            if let Some(a) = a
                && a.exec
                    .as_ref()
                    .and_then(|e| e.command.as_ref())
                    .is_none_or(Vec::is_empty)
            {
                errs.push(format!("spec.lifecycle.{name}.exec: required"));
            }
        }
    }
    if strategy.and_then(|s| s.type_.as_deref()) == Some(UPGRADE_CHECKPOINT_RESTORE)
        && ops.spec.patch.as_ref().is_some_and(patch_sets_image)
    {
        errs.push("spec.patch: a CheckpointRestore update can't change container images".into());
    }
    if !others_active.is_empty() {
        errs.push(format!(
            "another SandboxUpdateOps is still running in this namespace: {}",
            others_active.join(", ")
        ));
    }
    errs
}

/// Whether an ops counts as finished for the one-at-a-time rule.
pub fn ops_finished(ops: &SandboxUpdateOps) -> bool {
    matches!(
        ops.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some(ops_phase::COMPLETED | ops_phase::FAILED)
    )
}

/// Facts for the pod delete/eviction decision.
#[derive(Debug, Clone, Default)]
pub struct PodDeleteFacts {
    pub requester: String,
    pub controller_user: String,
    pub pod_terminating: bool,
    pub pod_created_by_sandbox: bool,
    /// UID of the pod's Sandbox controller ownerRef.
    pub owner_uid: Option<String>,
    /// The Sandbox (if found): its UID and whether it is being deleted.
    pub sandbox: Option<(String, bool)>,
}

/// `/validate-pod-delete`: `Ok` to allow, `Err(reason)` to deny.
pub fn pod_delete_decision(f: &PodDeleteFacts) -> Result<(), String> {
    if f.requester == f.controller_user || f.pod_terminating || !f.pod_created_by_sandbox {
        return Ok(());
    }
    let Some(owner) = &f.owner_uid else {
        return Ok(());
    };
    match &f.sandbox {
        None => Ok(()),
        Some((uid, _)) if uid != owner => Ok(()),
        Some((_, true)) => Ok(()),
        Some(_) => Err("this pod belongs to a Sandbox; delete the sandbox instead".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(spec: serde_json::Value) -> SandboxSet {
        serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet", "metadata": {"name": "s"}, "spec": spec})).unwrap()
    }

    #[test]
    fn sandboxset_validation() {
        let ok = set(
            json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}),
        );
        assert!(validate_sandboxset(&ok).is_empty());
        let both = set(
            json!({"replicas": 1, "templateRef": {"name": "t"}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}),
        );
        assert!(validate_sandboxset(&both)[0].contains("mutually exclusive"));
        assert!(
            !validate_sandboxset(&set(json!({"replicas": -1, "templateRef": {"name": "t"}})))
                .is_empty()
        );
        let e2b = set(
            json!({"replicas": 1, "template": {"metadata": {"labels": {"e2b.agents.kruise.io/x": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}),
        );
        assert!(validate_sandboxset(&e2b)[0].contains("reserved prefix"));
        let unmounted = set(
            json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}}]}),
        );
        assert!(validate_sandboxset(&unmounted)[0].contains("not mounted"));
        let bad_mu = set(
            json!({"replicas": 1, "templateRef": {"name": "t"}, "updateStrategy": {"maxUnavailable": "x%"}}),
        );
        assert!(validate_sandboxset(&bad_mu)[0].contains("maxUnavailable"));
    }

    #[test]
    fn sandboxset_defaults() {
        let mut s = set(
            json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {}}]}),
        );
        default_sandboxset(&mut s, true, &["ip".to_string()]);
        let spec = s.spec.template.as_ref().unwrap().spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0]
                .protocol
                .as_deref(),
            Some("TCP")
        );
        assert_eq!(
            s.spec.update_strategy.unwrap().max_unavailable,
            Some(IntOrString::String("20%".into()))
        );
        assert_eq!(s.spec.persistent_contents, ["ip"]);
        let vspec = s.spec.volume_claim_templates[0].spec.clone().unwrap();
        assert_eq!(vspec.access_modes.unwrap(), ["ReadWriteOnce"]);
        assert_eq!(vspec.volume_mode.as_deref(), Some("Filesystem"));
    }

    fn ops(spec: serde_json::Value) -> SandboxUpdateOps {
        serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxUpdateOps", "metadata": {"name": "o"}, "spec": spec})).unwrap()
    }

    #[test]
    fn updateops_validation() {
        let ok = ops(
            json!({"selector": {"matchLabels": {"a": "b"}}, "patch": {"spec": {"containers": [{"name": "c", "image": "new"}]}}}),
        );
        assert!(validate_updateops(&ok, None, &[]).is_empty());
        assert!(!validate_updateops(&ok, None, &["other".into()]).is_empty());
        assert!(!validate_updateops(&ops(json!({"selector": {}})), None, &[]).is_empty());
        let cr = ops(
            json!({"selector": {"matchLabels": {"a": "b"}}, "updateStrategy": {"type": "CheckpointRestore"},
            "patch": {"spec": {"containers": [{"name": "c", "image": "new"}]}}}),
        );
        assert!(validate_updateops(&cr, None, &[])[0].contains("CheckpointRestore"));
        let hook = ops(
            json!({"selector": {"matchLabels": {"a": "b"}}, "lifecycle": {"preUpgrade": {"timeoutSeconds": 5}}}),
        );
        assert!(validate_updateops(&hook, None, &[])[0].contains("preUpgrade"));
        let changed = ops(json!({"selector": {"matchLabels": {"a": "c"}}}));
        assert_eq!(
            validate_updateops(&changed, Some(&ok), &[]),
            ["spec.selector: immutable", "spec.patch: immutable"]
        );
    }

    #[test]
    fn pod_delete_rules() {
        let base = PodDeleteFacts {
            requester: "alice".into(),
            controller_user: "system:serviceaccount:sandbox-system:sandbox-controller-manager"
                .into(),
            pod_created_by_sandbox: true,
            owner_uid: Some("u1".into()),
            sandbox: Some(("u1".into(), false)),
            ..Default::default()
        };
        assert!(pod_delete_decision(&base).is_err());
        assert!(
            pod_delete_decision(&PodDeleteFacts {
                requester: base.controller_user.clone(),
                ..base.clone()
            })
            .is_ok()
        );
        assert!(
            pod_delete_decision(&PodDeleteFacts {
                pod_terminating: true,
                ..base.clone()
            })
            .is_ok()
        );
        assert!(
            pod_delete_decision(&PodDeleteFacts {
                pod_created_by_sandbox: false,
                ..base.clone()
            })
            .is_ok()
        );
        assert!(
            pod_delete_decision(&PodDeleteFacts {
                owner_uid: None,
                ..base.clone()
            })
            .is_ok()
        );
        assert!(
            pod_delete_decision(&PodDeleteFacts {
                sandbox: None,
                ..base.clone()
            })
            .is_ok()
        );
        assert!(
            pod_delete_decision(&PodDeleteFacts {
                sandbox: Some(("old".into(), false)),
                ..base.clone()
            })
            .is_ok()
        );
        assert!(
            pod_delete_decision(&PodDeleteFacts {
                sandbox: Some(("u1".into(), true)),
                ..base
            })
            .is_ok()
        );
    }
}
