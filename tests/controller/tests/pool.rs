//! SandboxSet warm pools and SandboxClaims against a real apiserver, with the node simulator
//! running every pod as a local process.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use controller_tests::Env;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sandbox_api::keys::*;
use sandbox_api::state::{SandboxState, sandbox_state};
use sandbox_api::{SandboxClaim, SandboxSet};
use serde_json::json;

fn pool_yaml(name: &str, replicas: i32, extra_spec: serde_json::Value) -> SandboxSet {
    let mut v = json!({
        "apiVersion": "agents.kruise.io/v1alpha1",
        "kind": "SandboxSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "main", "image": "python:3", "env": [{"name": "V", "value": "1"}]}]}}
        }
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra_spec.as_object()) {
        for (k, x) in extra {
            spec.insert(k.clone(), x.clone());
        }
    }
    serde_json::from_value(v).unwrap()
}

async fn available(env: &Env, set: &str) -> Result<i32, String> {
    let s = env
        .api::<SandboxSet>()
        .get(set)
        .await
        .map_err(|e| e.to_string())?;
    Ok(s.status.map(|s| s.available_replicas).unwrap_or(0))
}

async fn wait_pool(env: &Env, set: &str, n: i32, timeout: Duration) {
    env.eventually(
        &format!("pool {set} has {n} available"),
        timeout,
        || async {
            let a = available(env, set).await?;
            let unused = env
                .sandboxes(&format!(
                    "{LABEL_SANDBOX_POOL}={set},{LABEL_SANDBOX_CLAIMED}=false"
                ))
                .await;
            let ready = unused
                .iter()
                .filter(|s| {
                    sandbox_state(s, k8s_openapi::jiff::Timestamp::now()) == SandboxState::Available
                })
                .count() as i32;
            if a == n && ready == n && unused.len() as i32 == n {
                Ok(())
            } else {
                Err(format!(
                    "status available={a}, ready={ready}, unused={}",
                    unused.len()
                ))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_fills_to_n_ready_and_pods_really_run() {
    let env = Env::new("pool-fill").await;
    env.api::<SandboxSet>()
        .create(&PostParams::default(), &pool_yaml("fill", 8, json!({})))
        .await
        .unwrap();
    wait_pool(&env, "fill", 8, Duration::from_secs(90)).await;
    let set = env.api::<SandboxSet>().get("fill").await.unwrap();
    let st = set.status.unwrap();
    assert_eq!(st.replicas, 8);
    assert_eq!(st.updated_replicas, 8);
    assert_eq!(st.updated_available_replicas, 8);
    assert_eq!(
        st.selector.as_deref(),
        Some("agents.kruise.io/sandbox-claimed=false,agents.kruise.io/sandbox-pool=fill")
    );
    // The revision's template was materialised as a SandboxTemplate owned by the set.
    let tpl: Api<sandbox_api::SandboxTemplate> = env.api();
    let cur = st.current_revision.unwrap();
    assert!(tpl.get(&cur).await.is_ok(), "SandboxTemplate {cur} missing");
    // Every sandbox has a pod that the simulator runs as a real process.
    for s in env.sandboxes(&format!("{LABEL_SANDBOX_POOL}=fill")).await {
        let ip = s
            .status
            .as_ref()
            .and_then(|s| s.sandbox_ip.clone())
            .expect("sandbox ip");
        let sim = env
            .sim
            .pod(&env.ns, &s.name_any())
            .expect("pod known to the simulator");
        assert_eq!(sim.ip.map(|i| i.to_string()), Some(ip.clone()));
        std::net::TcpStream::connect((ip.as_str(), kube_harness::AGENT_RUNTIME_PORT))
            .expect("pod process answers");
        assert_eq!(s.labels()[LABEL_SANDBOX_CLAIMED], "false");
        assert_eq!(
            s.labels()[LABEL_TEMPLATE_HASH],
            st.update_revision.clone().unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_claims_never_share_a_sandbox() {
    let env = Env::new("claims").await;
    env.api::<SandboxSet>()
        .create(&PostParams::default(), &pool_yaml("hot", 50, json!({})))
        .await
        .unwrap();
    wait_pool(&env, "hot", 50, Duration::from_secs(180)).await;

    let claims: Api<SandboxClaim> = env.api();
    let futs = (0..200).map(|i| {
        let claims = claims.clone();
        async move {
            let c: SandboxClaim = serde_json::from_value(json!({
                "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
                "metadata": {"name": format!("c{i:03}")},
                "spec": {"templateName": "hot", "createOnNoStock": false, "claimTimeout": "60s", "labels": {"claimer": format!("c{i:03}")}}
            }))
            .unwrap();
            claims.create(&PostParams::default(), &c).await.unwrap()
        }
    });
    let created = futures::future::join_all(futs).await;
    let uid_of: HashMap<String, String> = created
        .iter()
        .map(|c| (c.metadata.uid.clone().unwrap(), c.name_any()))
        .collect();

    // Every claim completes (claimed, or timed out if the pool could not keep up).
    let all = env
        .eventually(
            "all 200 claims completed",
            Duration::from_secs(150),
            || async {
                let list = claims
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let done = list
                    .items
                    .iter()
                    .filter(|c| {
                        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Completed")
                    })
                    .count();
                if done == 200 {
                    Ok(list.items)
                } else {
                    Err(format!("{done}/200 completed"))
                }
            },
        )
        .await;

    let sandboxes = env
        .sandboxes(&format!(
            "{LABEL_SANDBOX_POOL}=hot,{LABEL_SANDBOX_CLAIMED}=true"
        ))
        .await;
    let mut owned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &sandboxes {
        let owner = s
            .annotations()
            .get(ANNOTATION_OWNER)
            .cloned()
            .expect("claimed sandbox has an owner");
        let claim = uid_of
            .get(&owner)
            .unwrap_or_else(|| panic!("owner {owner} is no claim"))
            .clone();
        assert_eq!(
            s.labels().get("claimer"),
            Some(&claim),
            "labels of {} come from its claim",
            s.name_any()
        );
        assert_eq!(s.labels().get(LABEL_CLAIM_NAME), Some(&claim));
        assert!(
            s.owner_references().is_empty(),
            "claimed sandbox keeps no ownerRef"
        );
        owned.entry(claim).or_default().push(s.name_any());
    }
    let mut total = 0;
    for c in &all {
        let st = c.status.clone().unwrap();
        let mine = owned.get(&c.name_any()).map(Vec::len).unwrap_or(0) as i32;
        assert!(
            st.claimed_replicas <= 1,
            "{} claimed {}",
            c.name_any(),
            st.claimed_replicas
        );
        assert_eq!(
            st.claimed_replicas,
            mine,
            "{}: status says {} but owns {mine}",
            c.name_any(),
            st.claimed_replicas
        );
        total += mine;
    }
    assert_eq!(
        total as usize,
        sandboxes.len(),
        "each claimed sandbox belongs to exactly one claim"
    );
    assert!(
        total >= 50,
        "at least the initial pool was handed out (got {total})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_never_deletes_claimed_or_locked_sandboxes() {
    let env = Env::new("scale-down").await;
    let sets: Api<SandboxSet> = env.api();
    sets.create(&PostParams::default(), &pool_yaml("sd", 6, json!({})))
        .await
        .unwrap();
    wait_pool(&env, "sd", 6, Duration::from_secs(90)).await;

    let claim: SandboxClaim = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": "keep"},
        "spec": {"templateName": "sd", "replicas": 2, "createOnNoStock": false}
    }))
    .unwrap();
    env.api::<SandboxClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    let claimed = env
        .eventually("2 claimed", Duration::from_secs(30), || async {
            let s = env
                .sandboxes(&format!(
                    "{LABEL_SANDBOX_POOL}=sd,{LABEL_SANDBOX_CLAIMED}=true"
                ))
                .await;
            if s.len() == 2 {
                Ok(s)
            } else {
                Err(format!("{} claimed", s.len()))
            }
        })
        .await;
    // Someone (a claimer in another process) holds a lock on one pool sandbox.
    let unused = env
        .sandboxes(&format!(
            "{LABEL_SANDBOX_POOL}=sd,{LABEL_SANDBOX_CLAIMED}=false"
        ))
        .await;
    let locked = unused[0].name_any();
    env.api::<sandbox_api::Sandbox>()
        .patch(
            &locked,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_LOCK: "someone-else"}}})),
        )
        .await
        .unwrap();

    sets.patch(
        "sd",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    env.eventually(
        "pool scaled down to the locked sandbox",
        Duration::from_secs(60),
        || async {
            let left = env
                .sandboxes(&format!(
                    "{LABEL_SANDBOX_POOL}=sd,{LABEL_SANDBOX_CLAIMED}=false"
                ))
                .await;
            let live: Vec<String> = left
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none())
                .map(|s| s.name_any())
                .collect();
            if live == vec![locked.clone()] {
                Ok(())
            } else {
                Err(format!("unused left: {live:?}"))
            }
        },
    )
    .await;
    // Claimed sandboxes survive scale-down.
    for s in claimed {
        let now = env
            .api::<sandbox_api::Sandbox>()
            .get(&s.name_any())
            .await
            .expect("claimed sandbox still exists");
        assert!(now.metadata.deletion_timestamp.is_none());
        assert_eq!(now.metadata.uid, s.metadata.uid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_respects_max_unavailable() {
    let env = Env::new("rolling").await;
    let sets: Api<SandboxSet> = env.api();
    sets.create(
        &PostParams::default(),
        &pool_yaml("roll", 6, json!({"updateStrategy": {"maxUnavailable": 1}})),
    )
    .await
    .unwrap();
    wait_pool(&env, "roll", 6, Duration::from_secs(90)).await;
    let old_rev = sets
        .get("roll")
        .await
        .unwrap()
        .status
        .unwrap()
        .update_revision
        .unwrap();

    sets.patch(
        "roll",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "python:3", "env": [{"name": "V", "value": "2"}]}]}}}})),
    )
    .await
    .unwrap();
    let min_available = std::sync::atomic::AtomicI32::new(i32::MAX);
    env.eventually(
        "all sandboxes on the new revision",
        Duration::from_secs(120),
        || {
            let env = &env;
            let min_available = &min_available;
            let old_rev = old_rev.clone();
            async move {
                let unused = env
                    .sandboxes(&format!(
                        "{LABEL_SANDBOX_POOL}=roll,{LABEL_SANDBOX_CLAIMED}=false"
                    ))
                    .await;
                let now = k8s_openapi::jiff::Timestamp::now();
                let live: Vec<_> = unused
                    .iter()
                    .filter(|s| s.metadata.deletion_timestamp.is_none())
                    .collect();
                let avail = live
                    .iter()
                    .filter(|s| sandbox_state(s, now) == SandboxState::Available)
                    .count() as i32;
                min_available.fetch_min(avail, std::sync::atomic::Ordering::SeqCst);
                let old = live
                    .iter()
                    .filter(|s| s.labels().get(LABEL_TEMPLATE_HASH) == Some(&old_rev))
                    .count();
                if old == 0 && avail == 6 {
                    Ok(())
                } else {
                    Err(format!("old={old} available={avail}"))
                }
            }
        },
    )
    .await;
    let min_available = min_available.into_inner();
    assert!(
        min_available >= 5,
        "at most 1 unavailable during the rollout; saw {min_available} available"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_strategy_max_unavailable_limits_scale_up() {
    let env = Env::new("scale-mu").await;
    let sets: Api<SandboxSet> = env.api();
    sets.create(
        &PostParams::default(),
        &pool_yaml("slow", 8, json!({"scaleStrategy": {"maxUnavailable": 2}})),
    )
    .await
    .unwrap();
    let max_creating = std::sync::atomic::AtomicUsize::new(0);
    env.eventually(
        "pool filled 2 at a time",
        Duration::from_secs(90),
        || async {
            let unused = env
                .sandboxes(&format!(
                    "{LABEL_SANDBOX_POOL}=slow,{LABEL_SANDBOX_CLAIMED}=false"
                ))
                .await;
            let now = k8s_openapi::jiff::Timestamp::now();
            let avail = unused
                .iter()
                .filter(|s| sandbox_state(s, now) == SandboxState::Available)
                .count();
            max_creating.fetch_max(unused.len() - avail, std::sync::atomic::Ordering::SeqCst);
            if avail == 8 && unused.len() == 8 {
                Ok(())
            } else {
                Err(format!("{avail}/{} available", unused.len()))
            }
        },
    )
    .await;
    let seen = max_creating.into_inner();
    assert!(
        seen <= 2,
        "at most 2 sandboxes were not ready at once, saw {seen}"
    );
}
