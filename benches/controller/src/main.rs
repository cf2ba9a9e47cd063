//! Benchmark: pool refill rate (SandboxSet from 0 to N Ready sandboxes) and SandboxClaim
//! throughput, on a private real apiserver with the node simulator running every pod as a tiny
//! local listener. Baselines measured in the same run: N bare Pods created directly (no
//! controller) until Ready, and N direct resourceVersion-guarded sandbox patches.
//! Usage: `make bench-controller` or `cargo run --release -p controller-bench -- [N]` (default 500).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube_harness::{KubeCluster, NodeSimConfig, NodeSimulator};
use sandbox_api::keys::*;
use sandbox_api::{Sandbox, SandboxClaim, SandboxSet};
use serde_json::json;

const LISTENER: &str =
    "import socket,time\ns=socket.socket()\ns.bind(('{ip}',{port}))\ns.listen()\ntime.sleep(1e9)";

async fn wait(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "{what} not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let cluster = KubeCluster::start().await;
    controller_tests::install_crds(&cluster).await;
    let ns = cluster.create_namespace("bench").await;
    let _sim = NodeSimulator::start(
        &cluster,
        NodeSimConfig::default()
            .in_namespace(&ns)
            .with_command(["python3", "-c", LISTENER]),
    )
    .await;
    let client = cluster.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // Baseline: N bare pods straight to the apiserver, until the simulator reports them Ready.
    let t = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("bare-{i}"), "labels": {"bench": "bare"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}], "terminationGracePeriodSeconds": 0}}))
                .unwrap();
                pods.create(&PostParams::default(), &p).await.unwrap();
            }
        })
        .await;
    wait("bare pods ready", Duration::from_secs(600), async || {
        let l = pods
            .list(&ListParams::default().labels("bench=bare"))
            .await
            .unwrap();
        l.items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count()
            == n
    })
    .await;
    let bare = t.elapsed();
    pods.delete_collection(
        &Default::default(),
        &ListParams::default().labels("bench=bare"),
    )
    .await
    .unwrap();
    wait("bare pods gone", Duration::from_secs(300), async || {
        pods.list(&ListParams::default().labels("bench=bare"))
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;

    // Pool refill: a SandboxSet from 0 to N available.
    let _ctl = controller_tests::ControllerProcess::start(&cluster, &ns, &[]);
    let sets: Api<SandboxSet> = Api::namespaced(client.clone(), &ns);
    let set: SandboxSet = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
        "metadata": {"name": "bench"},
        "spec": {"replicas": n, "template": {"spec": {"containers": [{"name": "c", "image": "x"}], "terminationGracePeriodSeconds": 0}}}}))
    .unwrap();
    let t = Instant::now();
    sets.create(&PostParams::default(), &set).await.unwrap();
    wait("pool full", Duration::from_secs(900), async || {
        sets.get("bench")
            .await
            .unwrap()
            .status
            .map(|s| s.available_replicas as usize)
            == Some(n)
    })
    .await;
    let refill = t.elapsed();

    // Claims: N one-replica claims at once against the full pool (no creation on empty stock).
    let claims: Api<SandboxClaim> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let claims = claims.clone();
            async move {
                let c: SandboxClaim = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
                    "metadata": {"name": format!("c{i}")}, "spec": {"templateName": "bench", "createOnNoStock": false, "claimTimeout": "5m"}}))
                .unwrap();
                claims.create(&PostParams::default(), &c).await.unwrap();
            }
        })
        .await;
    wait("claims done", Duration::from_secs(900), async || {
        let l = claims.list(&Default::default()).await.unwrap();
        l.items
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| s.claimed_replicas == 1))
            .count()
            == n
    })
    .await;
    let claim_time = t.elapsed();

    // Baseline for claims: the same number of resourceVersion-guarded patches, done directly.
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let list = sandboxes
        .list(&ListParams::default().labels(&format!("{LABEL_SANDBOX_CLAIMED}=true")))
        .await
        .unwrap();
    let t = Instant::now();
    futures::stream::iter(list.items.into_iter().take(n))
        .for_each_concurrent(64, |s| {
            let sandboxes = sandboxes.clone();
            async move {
                let p = json!({"metadata": {"resourceVersion": s.metadata.resource_version, "annotations": {"bench/touched": "1"}}});
                sandboxes.patch(s.metadata.name.as_deref().unwrap(), &PatchParams::default(), &Patch::Merge(p)).await.unwrap();
            }
        })
        .await;
    let raw_patch = t.elapsed();

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "controller benchmark, N = {n} (2-core machine, debug apiserver build from scripts/kube)"
    );
    println!("| what | time | rate | baseline (same run) | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| pool refill 0 → {n} Ready | {:.1} s | {:.1} sandboxes/s | {n} bare Pods to Ready: {:.1} s ({:.1} pods/s) | {:.2} |",
        refill.as_secs_f64(),
        rate(refill),
        bare.as_secs_f64(),
        rate(bare),
        rate(refill) / rate(bare)
    );
    println!(
        "| {n} concurrent SandboxClaims (1 replica each) | {:.1} s | {:.1} claims/s | {n} direct RV-guarded patches: {:.2} s ({:.0}/s) | {:.3} |",
        claim_time.as_secs_f64(),
        rate(claim_time),
        raw_patch.as_secs_f64(),
        rate(raw_patch),
        rate(claim_time) / rate(raw_patch)
    );
}
