//! Builds the pod of a sandbox: name = sandbox name, controller ownerRef to the sandbox, template
//! metadata plus `created-by=sandbox` and `pod-template-hash`, one PVC volume per
//! volumeClaimTemplate, then runtime injection.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sandbox_api::Sandbox;
use sandbox_api::keys::*;

use crate::injection::{InjectionError, inject_runtimes};

/// Name of the PVC a sandbox gets for a volumeClaimTemplate.
pub fn pvc_name(vct: &str, sandbox: &str) -> String {
    format!("{vct}-{sandbox}")
}

pub fn owner_ref_to(sbx: &Sandbox) -> OwnerReference {
    OwnerReference {
        api_version: Sandbox::api_version(&()).into_owned(),
        kind: Sandbox::kind(&()).into_owned(),
        name: sbx.metadata.name.clone().unwrap_or_default(),
        uid: sbx.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod for `sbx`, from the resolved `template` (inline, or the referenced SandboxTemplate's).
pub fn build_pod(
    sbx: &Sandbox,
    template: &PodTemplateSpec,
    revision: &str,
    injection_data: Option<&BTreeMap<String, String>>,
) -> Result<Pod, InjectionError> {
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    labels.insert(LABEL_CREATED_BY.into(), CREATED_BY_SANDBOX.into());
    labels.insert(LABEL_POD_TEMPLATE_HASH.into(), revision.into());
    annotations.insert(ANNOTATION_CREATED_BY.into(), CREATED_BY_SANDBOX.into());
    // A sandbox cloned from a snapshot names its checkpoint; the pod carries it to the node's
    // checkpoint runtime, which starts the pod from it.
    if let Some(cp) = sbx
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RESTORE_FROM))
    {
        annotations.insert(ANNOTATION_RESTORE_FROM.into(), cp.clone());
    }
    let name = sbx.metadata.name.clone().unwrap_or_default();
    let mut meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: sbx.metadata.namespace.clone(),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![owner_ref_to(sbx)]),
        ..Default::default()
    };
    let mut spec = template.spec.clone().unwrap_or_default();
    for vct in &sbx.spec.volume_claim_templates {
        let vname = vct.metadata.name.clone().unwrap_or_default();
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != vname);
        volumes.push(Volume {
            name: vname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(&vname, &name),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    if !sbx.spec.runtimes.is_empty() {
        let declared: Vec<String> = sbx.spec.runtimes.iter().map(|r| r.name.clone()).collect();
        inject_runtimes(&mut meta, &mut spec, &declared, injection_data)?;
    }
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_api::SandboxSpec;
    use serde_json::json;

    #[test]
    fn pod_carries_owner_hash_and_pvcs() {
        let spec: SandboxSpec = serde_json::from_value(json!({
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
        }))
        .unwrap();
        let mut sbx = Sandbox::new("box", spec);
        sbx.metadata.namespace = Some("ns".into());
        sbx.metadata.uid = Some("uid-1".into());
        let pod = build_pod(&sbx, sbx.spec.template.as_ref().unwrap(), "rev1", None).unwrap();
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["app"], "x");
        assert_eq!(labels[LABEL_CREATED_BY], "sandbox");
        assert_eq!(labels[LABEL_POD_TEMPLATE_HASH], "rev1");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Sandbox", "uid-1", Some(true))
        );
        let vol = &pod.spec.unwrap().volumes.unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "www-box"
        );
        assert!(
            !pod.metadata
                .annotations
                .unwrap()
                .contains_key(ANNOTATION_RESTORE_FROM)
        );

        // A clone's pod names the checkpoint it starts from.
        sbx.metadata.annotations =
            Some([(ANNOTATION_RESTORE_FROM.to_string(), "cp123".to_string())].into());
        let pod = build_pod(&sbx, sbx.spec.template.as_ref().unwrap(), "rev1", None).unwrap();
        assert_eq!(
            pod.metadata.annotations.unwrap()[ANNOTATION_RESTORE_FROM],
            "cp123"
        );
    }
}
