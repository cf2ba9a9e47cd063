//! Claim options end to end: templateRef pools, in-place image update of the claimed sandbox,
//! ttlAfterCompleted, claimTimeout without stock.

use std::time::Duration;

use controller_tests::Env;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use sandbox_api::keys::*;
use sandbox_api::{SandboxClaim, SandboxSet, SandboxTemplate};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_ref_pool_inplace_image_ttl_and_timeout() {
    let env = Env::new("claim-opts").await;
    let tpl: SandboxTemplate = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxTemplate",
        "metadata": {"name": "shared-tpl"},
        "spec": {"template": {"metadata": {"labels": {"from": "tpl"}}, "spec": {"containers": [{"name": "main", "image": "python:3.12"}]}}}}))
    .unwrap();
    env.api::<SandboxTemplate>()
        .create(&PostParams::default(), &tpl)
        .await
        .unwrap();
    let set: SandboxSet = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
        "metadata": {"name": "byref"}, "spec": {"replicas": 2, "templateRef": {"name": "shared-tpl"}}}))
    .unwrap();
    env.api::<SandboxSet>()
        .create(&PostParams::default(), &set)
        .await
        .unwrap();
    env.eventually(
        "templateRef pool ready",
        Duration::from_secs(60),
        || async {
            let s = env
                .api::<SandboxSet>()
                .get("byref")
                .await
                .map_err(|e| e.to_string())?;
            let st = s.status.unwrap_or_default();
            if st.available_replicas == 2 && st.current_revision.as_deref() == Some("shared-tpl") {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .await;
    for s in env.sandboxes(&format!("{LABEL_SANDBOX_POOL}=byref")).await {
        assert_eq!(s.labels()[LABEL_SANDBOX_TEMPLATE], "shared-tpl");
        assert!(s.spec.template.is_none() && s.spec.template_ref.is_some());
    }
    let pods: Api<Pod> = env.api();
    assert_eq!(
        pods.list(&Default::default()).await.unwrap().items[0].labels()["from"],
        "tpl",
        "pod built from the referenced template"
    );

    // A claim with an in-place image change and a short TTL, against an inline-template pool.
    let inline: SandboxSet = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
        "metadata": {"name": "inline"}, "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "main", "image": "python:3.12",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}}}]}}}}))
    .unwrap();
    env.api::<SandboxSet>()
        .create(&PostParams::default(), &inline)
        .await
        .unwrap();
    env.eventually("inline pool ready", Duration::from_secs(60), || async {
        let s = env
            .api::<SandboxSet>()
            .get("inline")
            .await
            .map_err(|e| e.to_string())?;
        if s.status.map(|s| s.available_replicas) == Some(1) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let pool_sbx = env
        .sandboxes(&format!("{LABEL_SANDBOX_POOL}=inline"))
        .await
        .remove(0);
    let pod_uid = pods.get(&pool_sbx.name_any()).await.unwrap().metadata.uid;
    let claims: Api<SandboxClaim> = env.api();
    let c: SandboxClaim = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
        "metadata": {"name": "upgrade-me"},
        "spec": {"templateName": "inline", "createOnNoStock": false, "ttlAfterCompleted": "3s",
            "inplaceUpdate": {"image": "python:3.13", "resources": {"requests": {"cpu": "150m"}, "limits": {"cpu": "300m"}}}}}))
    .unwrap();
    claims.create(&PostParams::default(), &c).await.unwrap();
    env.eventually(
        "pod image updated in place",
        Duration::from_secs(60),
        || async {
            let p = pods
                .get(&pool_sbx.name_any())
                .await
                .map_err(|e| e.to_string())?;
            let img = p.spec.as_ref().unwrap().containers[0].image.clone();
            if img.as_deref() == Some("python:3.13") && p.metadata.uid == pod_uid {
                Ok(())
            } else {
                let s = env
                    .api::<sandbox_api::Sandbox>()
                    .get(&pool_sbx.name_any())
                    .await
                    .map_err(|e| e.to_string())?;
                let c = claims
                    .get_opt("upgrade-me")
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|c| c.status);
                Err(format!(
                    "image {img:?}; sandbox labels {:?} status {:?}; claim {:?}",
                    s.labels(),
                    s.status,
                    c
                ))
            }
        },
    )
    .await;
    let pod = pods.get(&pool_sbx.name_any()).await.unwrap();
    assert_eq!(
        pod.labels().get(LABEL_CLAIM_NAME).map(String::as_str),
        Some("upgrade-me"),
        "claim labels reach the pod in place"
    );
    let claimed = env
        .api::<sandbox_api::Sandbox>()
        .get(&pool_sbx.name_any())
        .await
        .unwrap();
    assert_eq!(claimed.labels()[LABEL_CLAIM_NAME], "upgrade-me");
    // The update counts as finished only once the pod runs the new image and is ready again.
    env.eventually(
        "InplaceUpdate=True once the pod runs the new image",
        Duration::from_secs(60),
        || async {
            let s = env
                .api::<sandbox_api::Sandbox>()
                .get(&pool_sbx.name_any())
                .await
                .map_err(|e| e.to_string())?;
            let conditions = s.status.map(|st| st.conditions).unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "InplaceUpdate" && c.status == "True")
            {
                Ok(())
            } else {
                Err(format!("{conditions:?}"))
            }
        },
    )
    .await;
    env.eventually(
        "claim deleted after its TTL, sandbox kept",
        Duration::from_secs(60),
        || async {
            let gone = claims
                .get_opt("upgrade-me")
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            let kept = env
                .api::<sandbox_api::Sandbox>()
                .get_opt(&pool_sbx.name_any())
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if gone && kept {
                Ok(())
            } else {
                Err(format!("claim gone={gone} sandbox kept={kept}"))
            }
        },
    )
    .await;

    // No stock and no creation: the claim times out with what it got (nothing).
    let empty: SandboxSet = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
        "metadata": {"name": "empty"}, "spec": {"replicas": 0, "template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}}}))
    .unwrap();
    env.api::<SandboxSet>()
        .create(&PostParams::default(), &empty)
        .await
        .unwrap();
    let c: SandboxClaim = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
        "metadata": {"name": "starved"}, "spec": {"templateName": "empty", "createOnNoStock": false, "claimTimeout": "2s", "ttlAfterCompleted": "-1s"}}))
    .unwrap();
    claims.create(&PostParams::default(), &c).await.unwrap();
    let st = env
        .eventually("claim timed out", Duration::from_secs(30), || async {
            let c = claims.get("starved").await.map_err(|e| e.to_string())?;
            let st = c.status.unwrap_or_default();
            if st.phase.as_deref() == Some("Completed") {
                Ok(st)
            } else {
                Err(format!("{st:?}"))
            }
        })
        .await;
    assert_eq!(st.claimed_replicas, 0);
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "TimedOut" && c.status == "True")
    );
    // Missing SandboxSet: Completed with reason SandboxSetNotFound.
    let c: SandboxClaim = serde_json::from_value(
        json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
        "metadata": {"name": "orphan"}, "spec": {"templateName": "nope"}}),
    )
    .unwrap();
    claims.create(&PostParams::default(), &c).await.unwrap();
    env.eventually(
        "claim of a missing set completes",
        Duration::from_secs(30),
        || async {
            let c = claims.get("orphan").await.map_err(|e| e.to_string())?;
            let st = c.status.unwrap_or_default();
            let reason = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Completed")
                .and_then(|c| c.reason.clone());
            if reason.as_deref() == Some("SandboxSetNotFound") {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .await;
    // replicas is immutable (CEL).
    let err = claims
        .patch(
            "starved",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("replicas is immutable"), "{err}");
}
