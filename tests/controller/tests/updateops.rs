//! SandboxUpdateOps rolls a template patch over claimed sandboxes, maxUnavailable at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use controller_tests::Env;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use sandbox_api::keys::*;
use sandbox_api::{Sandbox, SandboxUpdateOps};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_ops_replaces_pods_one_at_a_time_and_completes() {
    let env = Env::new("suo").await;
    let api: Api<Sandbox> = env.api();
    let pods: Api<Pod> = env.api();
    for i in 0..4 {
        let s: Sandbox = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "Sandbox",
            "metadata": {"name": format!("u{i}"), "labels": {"app": "agent"}},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "main", "image": "python:3", "env": [{"name": "V", "value": "1"}]}]}}}}))
        .unwrap();
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    let before: HashMap<String, String> = env
        .eventually("4 running", Duration::from_secs(60), || async {
            let l = env.sandboxes("app=agent").await;
            let ready = l.iter().filter(|s| sandbox_api::state::is_ready(s)).count();
            if ready != 4 {
                return Err(format!("{ready} ready"));
            }
            let mut m = HashMap::new();
            for s in &l {
                let p = pods.get(&s.name_any()).await.map_err(|e| e.to_string())?;
                m.insert(s.name_any(), p.metadata.uid.unwrap());
            }
            Ok(m)
        })
        .await;

    let ops: SandboxUpdateOps = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxUpdateOps",
        "metadata": {"name": "bump"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "updateStrategy": {"maxUnavailable": 1},
            "patch": {"metadata": {"annotations": {"bumped": "yes"}}, "spec": {"containers": [{"name": "main", "env": [{"name": "V", "value": "2"}]}]}}}}))
    .unwrap();
    env.api::<SandboxUpdateOps>()
        .create(&PostParams::default(), &ops)
        .await
        .unwrap();
    let max_upgrading = AtomicI32::new(0);
    env.eventually("ops completed", Duration::from_secs(120), || async {
        let l = env.sandboxes("app=agent").await;
        let upgrading = l
            .iter()
            .filter(|s| s.status.as_ref().and_then(|x| x.phase.as_deref()) == Some("Upgrading"))
            .count() as i32;
        max_upgrading.fetch_max(upgrading, Ordering::SeqCst);
        let o = env
            .api::<SandboxUpdateOps>()
            .get("bump")
            .await
            .map_err(|e| e.to_string())?;
        let st = o.status.unwrap_or_default();
        if st.phase.as_deref() == Some("Completed") {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    assert!(
        max_upgrading.load(Ordering::SeqCst) <= 1,
        "maxUnavailable=1 held"
    );
    let o = env.api::<SandboxUpdateOps>().get("bump").await.unwrap();
    let st = o.status.clone().unwrap();
    assert_eq!(
        (st.replicas, st.updated_replicas, st.failed_replicas),
        (4, 4, 0)
    );
    assert!(
        o.finalizers()
            .iter()
            .any(|f| f == FINALIZER_SANDBOX_UPDATE_OPS)
    );
    for s in env.sandboxes("app=agent").await {
        let t = s.spec.template.clone().unwrap();
        let env_v = t.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        assert_eq!(
            env_v[0].value.as_deref(),
            Some("2"),
            "{} patched",
            s.name_any()
        );
        assert_eq!(t.metadata.unwrap().annotations.unwrap()["bumped"], "yes");
        assert!(
            s.spec.upgrade_policy.is_none(),
            "upgradePolicy cleared after success"
        );
        assert_eq!(
            s.labels().get(LABEL_UPDATE_OPS).map(String::as_str),
            Some("bump")
        );
        let pod = pods.get(&s.name_any()).await.unwrap();
        assert_ne!(
            Some(&pod.metadata.uid.clone().unwrap()),
            before.get(&s.name_any()),
            "pod of {} replaced",
            s.name_any()
        );
        assert_eq!(
            pod.spec.unwrap().containers[0].env.clone().unwrap()[0]
                .value
                .as_deref(),
            Some("2")
        );
        assert!(sandbox_api::state::is_ready(&s));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_sandboxes_update_in_two_phases_and_pause_again() {
    let env = Env::new("suo-paused").await;
    let api: Api<Sandbox> = env.api();
    let s: Sandbox = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": "sleeper", "labels": {"app": "sleepy"}},
        "spec": {"paused": true, "template": {"spec": {"containers": [{"name": "main", "image": "python:3", "env": [{"name": "V", "value": "1"}]}]}}}}))
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
    let paused = |s: &Sandbox| {
        s.status.as_ref().is_some_and(|st| {
            st.phase.as_deref() == Some("Paused")
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "SandboxPaused" && c.status == "True")
        })
    };
    env.eventually("paused", Duration::from_secs(60), || async {
        let s = api.get("sleeper").await.map_err(|e| e.to_string())?;
        if paused(&s) {
            Ok(())
        } else {
            Err(format!("{:?}", s.status))
        }
    })
    .await;
    let ops: SandboxUpdateOps = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxUpdateOps",
        "metadata": {"name": "wake"},
        "spec": {"selector": {"matchLabels": {"app": "sleepy"}}, "stateFilter": {"states": ["Paused"]},
            "patch": {"spec": {"containers": [{"name": "main", "env": [{"name": "V", "value": "2"}]}]}}}}))
    .unwrap();
    env.api::<SandboxUpdateOps>()
        .create(&PostParams::default(), &ops)
        .await
        .unwrap();
    env.eventually(
        "ops completed and sandbox paused again",
        Duration::from_secs(120),
        || async {
            let o = env
                .api::<SandboxUpdateOps>()
                .get("wake")
                .await
                .map_err(|e| e.to_string())?;
            let s = api.get("sleeper").await.map_err(|e| e.to_string())?;
            let done = o.status.as_ref().and_then(|x| x.phase.as_deref()) == Some("Completed");
            if done && paused(&s) {
                Ok(())
            } else {
                Err(format!(
                    "ops={:?} gen={:?} labels={:?} sandbox={:?}",
                    o.status,
                    s.metadata.generation,
                    s.metadata.labels,
                    s.status.map(|x| (x.phase, x.observed_generation))
                ))
            }
        },
    )
    .await;
    let s = api.get("sleeper").await.unwrap();
    let v = s.spec.template.clone().unwrap().spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap()[0]
        .value
        .clone();
    assert_eq!(v.as_deref(), Some("2"));
    assert!(
        !s.annotations()
            .contains_key(ANNOTATION_UPGRADE_RESUME_TRIGGER),
        "trigger removed in phase 2"
    );
    assert!(
        env.api::<Pod>().get_opt("sleeper").await.unwrap().is_none(),
        "paused again: no pod"
    );
}
