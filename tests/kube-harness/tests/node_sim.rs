//! The node simulator against the real apiserver: pods become real local processes that answer
//! on their pod IP, and what happens to the process shows up in the pod status.
//!
//! The process is `python3 -m http.server` here (a real server that needs nothing built); the
//! agent-runtime is what the simulator runs by default.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube_harness::wait::{self, pod_ip, pod_ready};
use kube_harness::{KubeCluster, NodeSimConfig, NodeSimulator};

const TIMEOUT: Duration = Duration::from_secs(60);

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "sim-test"}},
        "spec": {"containers": [{"name": "main", "image": image}]}
    }))
    .unwrap()
}

fn with_command(mut p: Pod, cmd: &[&str]) -> Pod {
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            kube_harness::COMMAND_ANNOTATION.into(),
            serde_json::to_string(cmd).unwrap(),
        );
    p
}

/// A plain HTTP/1.0 GET; returns the status line.
fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.lines().next().unwrap_or_default().to_string())
}

fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn setup(prefix: &str) -> (&'static KubeCluster, String, NodeSimulator, Api<Pod>) {
    let cluster = KubeCluster::shared().await;
    let ns = cluster.create_namespace(prefix).await;
    let sim = NodeSimulator::start(
        cluster,
        NodeSimConfig::default()
            .in_namespace(&ns)
            .python_http_server(),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
    (cluster, ns, sim, pods)
}

#[tokio::test]
async fn pod_becomes_running_and_ready_with_a_process_answering_on_its_ip() {
    let (cluster, ns, sim, pods) = setup("ready").await;
    pods.create(&PostParams::default(), &pod("web", "example.com/app:1"))
        .await
        .unwrap();
    let p = wait::pod_is_ready(&pods, "web", TIMEOUT).await.unwrap();

    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(sim.node_name()),
        "bound to the simulated node"
    );
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert!(status.start_time.is_some());
    let ip = pod_ip(&p).expect("pod IP");
    assert!(
        sim.ip_range().contains(ip),
        "{ip} not in {}",
        sim.ip_range()
    );
    assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, ip.to_string());
    let conds = status.conditions.as_ref().unwrap();
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            conds.iter().any(|c| c.type_ == t && c.status == "True"),
            "{t} not True: {conds:?}"
        );
    }
    let cs = &status.container_statuses.as_ref().unwrap()[0];
    assert!(
        cs.ready && cs.started == Some(true) && cs.restart_count == 0,
        "{cs:?}"
    );
    assert_eq!(cs.image, "example.com/app:1");
    assert!(cs.state.as_ref().unwrap().running.is_some());

    // The process is real and reachable at the pod IP.
    let line = http_get(ip, kube_harness::AGENT_RUNTIME_PORT, "/").expect("HTTP to the pod IP");
    assert!(line.contains("200"), "{line}");
    let sp = sim.pod(&ns, "web").expect("simulator knows the pod");
    assert!(process_alive(sp.pid.unwrap()));
    // POD_* variables reach the process; the work directory is the server's root.
    std::fs::write(sp.workdir.join("marker.txt"), "hi").unwrap();
    assert!(
        http_get(ip, kube_harness::AGENT_RUNTIME_PORT, "/marker.txt")
            .unwrap()
            .contains("200")
    );
    let environ = std::fs::read(format!("/proc/{}/environ", sp.pid.unwrap())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains(&format!("POD_IP={ip}"))
            && environ.contains(&format!("POD_NAMESPACE={ns}"))
    );

    // The Node exists and is Ready.
    let node = Api::<Node>::all(cluster.client())
        .get(sim.node_name())
        .await
        .unwrap();
    let ready = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
}

#[tokio::test]
async fn deleting_the_pod_kills_its_process_and_finalizes_the_pod() {
    let (_cluster, ns, sim, pods) = setup("delete").await;
    pods.create(&PostParams::default(), &pod("doomed", "img:1"))
        .await
        .unwrap();
    let p = wait::pod_is_ready(&pods, "doomed", TIMEOUT).await.unwrap();
    let ip = pod_ip(&p).unwrap();
    let pid = sim.pod(&ns, "doomed").unwrap().pid.unwrap();
    assert!(process_alive(pid));

    // A normal delete (30 s grace): the simulator terminates the process and removes the pod.
    let started = Instant::now();
    pods.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    wait::wait_for(&pods, "doomed", TIMEOUT, |p| p.is_none())
        .await
        .expect("pod removed");
    eprintln!("pod gone {:?} after delete", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process_alive(pid), "process {pid} survived its pod");
    assert!(
        TcpStream::connect_timeout(
            &(ip, kube_harness::AGENT_RUNTIME_PORT).into(),
            Duration::from_secs(1)
        )
        .is_err()
    );
    assert!(sim.pod(&ns, "doomed").is_none());
}

#[tokio::test]
async fn a_crashing_process_is_restarted_and_reported() {
    let (_cluster, ns, sim, pods) = setup("crash").await;
    let crashing = with_command(
        pod("crashy", "img:1"),
        &["sh", "-c", "echo going down; exit 3"],
    );
    pods.create(&PostParams::default(), &crashing)
        .await
        .unwrap();
    let p = wait::wait_for(&pods, "crashy", TIMEOUT, |p| {
        p.and_then(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()
                .map(|c| c.restart_count >= 2)
        })
        .unwrap_or(false)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!pod_ready(&p));
    let status = p.status.unwrap();
    assert_eq!(
        status.phase.as_deref(),
        Some("Running"),
        "restartPolicy Always keeps the pod Running"
    );
    let cs = &status.container_statuses.unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(
        last.message
            .as_deref()
            .unwrap_or_default()
            .contains("going down"),
        "{last:?}"
    );
    assert!(sim.pod_log(&ns, "crashy").contains("going down"));

    // restartPolicy Never: the pod fails for good.
    let mut once = with_command(pod("once", "img:1"), &["sh", "-c", "exit 7"]);
    once.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    pods.create(&PostParams::default(), &once).await.unwrap();
    let p = wait::wait_for(&pods, "once", TIMEOUT, |p| {
        p.and_then(|p| p.status.as_ref()?.phase.clone()).as_deref() == Some("Failed")
    })
    .await
    .unwrap()
    .unwrap();
    let cs = &p.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        7
    );
    assert_eq!(cs.restart_count, 0);

    // A process killed from outside is restarted like a crash.
    pods.create(&PostParams::default(), &pod("victim", "img:1"))
        .await
        .unwrap();
    wait::pod_is_ready(&pods, "victim", TIMEOUT).await.unwrap();
    let pid = sim.pod(&ns, "victim").unwrap().pid.unwrap();
    unsafe_kill(pid);
    let p = wait::wait_for(&pods, "victim", TIMEOUT, |p| {
        p.is_some_and(|p| {
            pod_ready(p)
                && p.status
                    .as_ref()
                    .unwrap()
                    .container_statuses
                    .as_ref()
                    .unwrap()[0]
                    .restart_count
                    == 1
        })
    })
    .await
    .unwrap()
    .unwrap();
    let cs = &p.status.unwrap().container_statuses.unwrap()[0];
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.signal), (137, Some(9)));
    assert_ne!(sim.pod(&ns, "victim").unwrap().pid, Some(pid));
}

fn unsafe_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn an_image_change_restarts_the_process() {
    let (_cluster, ns, sim, pods) = setup("image").await;
    pods.create(&PostParams::default(), &pod("app", "img:1"))
        .await
        .unwrap();
    wait::pod_is_ready(&pods, "app", TIMEOUT).await.unwrap();
    let pid = sim.pod(&ns, "app").unwrap().pid.unwrap();
    let patch = serde_json::json!({"spec": {"containers": [{"name": "main", "image": "img:2"}]}});
    pods.patch("app", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let p = wait::wait_for(&pods, "app", TIMEOUT, |p| {
        p.is_some_and(|p| {
            let cs = &p
                .status
                .as_ref()
                .unwrap()
                .container_statuses
                .as_ref()
                .unwrap()[0];
            pod_ready(p) && cs.image == "img:2" && cs.restart_count == 1
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!process_alive(pid), "old process {pid} still running");
    let new_pid = sim.pod(&ns, "app").unwrap().pid.unwrap();
    assert_ne!(new_pid, pid);
    // Same pod, same IP.
    assert_eq!(pod_ip(&p), sim.pod(&ns, "app").unwrap().ip);
}

#[tokio::test]
async fn an_in_place_resize_is_reported_without_a_restart() {
    let (_cluster, ns, sim, pods) = setup("resize").await;
    let mut p = pod("sized", "img:1");
    p.spec.as_mut().unwrap().containers[0].resources = Some(
        serde_json::from_value(serde_json::json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}))
            .unwrap(),
    );
    pods.create(&PostParams::default(), &p).await.unwrap();
    wait::pod_is_ready(&pods, "sized", TIMEOUT).await.unwrap();
    let pid = sim.pod(&ns, "sized").unwrap().pid.unwrap();
    let patch = serde_json::json!({"spec": {"containers": [{"name": "main", "resources": {"requests": {"cpu": "200m"}}}]}});
    pods.patch_subresource(
        "resize",
        "sized",
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .expect("resize");
    let p = wait::wait_for(&pods, "sized", TIMEOUT, |p| {
        p.and_then(|p| {
            let st = p.status.as_ref()?;
            let cs = st.container_statuses.as_ref()?.first()?;
            let cpu = cs
                .resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("cpu")?
                .0
                .clone();
            Some(cpu == "200m" && st.observed_generation == p.metadata.generation)
        })
        .unwrap_or(false)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(pod_ready(&p));
    let cs = &p.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(cs.restart_count, 0);
    assert_eq!(
        sim.pod(&ns, "sized").unwrap().pid,
        Some(pid),
        "resized in place"
    );
}

#[tokio::test]
async fn readiness_gates_are_honoured() {
    let (_cluster, _ns, _sim, pods) = setup("gates").await;
    let mut p = pod("gated", "img:1");
    p.spec.as_mut().unwrap().readiness_gates = Some(vec![
        serde_json::from_value(serde_json::json!({"conditionType": "example.com/warm"})).unwrap(),
    ]);
    pods.create(&PostParams::default(), &p).await.unwrap();
    let p = wait::wait_for(&pods, "gated", TIMEOUT, |p| {
        p.and_then(|p| p.status.as_ref()?.conditions.clone())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "ContainersReady" && c.status == "True")
            })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!pod_ready(&p), "Ready must wait for the gate");
    // A controller sets the gate condition; the simulator keeps it and turns the pod Ready.
    let patch = serde_json::json!({"status": {"conditions": [{"type": "example.com/warm", "status": "True"}]}});
    pods.patch_status("gated", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let p = wait::pod_is_ready(&pods, "gated", TIMEOUT).await.unwrap();
    let conds = p.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "example.com/warm" && c.status == "True")
    );
}

#[tokio::test]
async fn pods_bound_to_other_nodes_are_left_alone_and_prebound_pods_run() {
    let cluster = KubeCluster::shared().await;
    let ns = cluster.create_namespace("binding").await;
    let cfg = NodeSimConfig {
        schedule: false,
        ..NodeSimConfig::default()
            .in_namespace(&ns)
            .python_http_server()
    };
    let sim = NodeSimulator::start(cluster, cfg).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
    let mut mine = pod("mine", "img");
    mine.spec.as_mut().unwrap().node_name = Some(sim.node_name().to_string());
    let mut other = pod("other", "img");
    other.spec.as_mut().unwrap().node_name = Some("some-other-node".into());
    let unscheduled = pod("unscheduled", "img");
    for p in [&mine, &other, &unscheduled] {
        pods.create(&PostParams::default(), p).await.unwrap();
    }
    wait::pod_is_ready(&pods, "mine", TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in ["other", "unscheduled"] {
        let p = pods.get(name).await.unwrap();
        assert!(
            p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_none(),
            "{name} was run: {:?}",
            p.status
        );
        assert!(sim.pod(&ns, name).is_none());
    }
    assert!(
        pods.get("unscheduled")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .is_none(),
        "schedule=false must not bind"
    );
}

#[tokio::test]
async fn fifty_pods_come_up_with_distinct_addresses() {
    let cluster = KubeCluster::shared().await;
    let ns = cluster.create_namespace("fifty").await;
    // sim-pod starts in a millisecond, so this measures the simulator and the apiserver; its
    // readiness is the agent-runtime's: GET /health answering 2xx.
    let cfg = NodeSimConfig {
        ready_http_path: Some("/health".into()),
        ..NodeSimConfig::default().in_namespace(&ns).with_command([
            env!("CARGO_BIN_EXE_sim-pod"),
            "--listen",
            "{ip}:{port}",
        ])
    };
    let sim = NodeSimulator::start(cluster, cfg).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
    // KUBE_HARNESS_PODS=500 measures bigger batches; the test suite uses 50.
    let n_pods: usize = std::env::var("KUBE_HARNESS_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let (n_pods, timeout) = (n_pods, Duration::from_secs(60 + n_pods as u64));
    let started = Instant::now();
    // 32 creations in flight at a time, like a controller's worker pool.
    let creates = futures::stream::iter(0..n_pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(&format!("p{i}"), "img:1"))
                    .await
            }
        })
        .buffer_unordered(32);
    for r in creates.collect::<Vec<_>>().await {
        r.expect("create pod");
    }
    let created = started.elapsed();
    let lp = kube::api::ListParams::default().labels("app=sim-test");
    let ready = wait::wait_for_list(&pods, &lp, timeout, |items| {
        items.len() == n_pods && items.iter().all(pod_ready)
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    eprintln!("node-sim: {n_pods} pods created in {created:?}, all Ready after {elapsed:?}");

    let mut ips: Vec<Ipv4Addr> = ready.iter().map(|p| pod_ip(p).unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), n_pods, "pod IPs are distinct");
    for ip in &ips {
        let line = http_get(*ip, kube_harness::AGENT_RUNTIME_PORT, "/health").unwrap();
        assert!(line.contains("204"), "{ip}: {line}");
    }
    assert_eq!(sim.pods().len(), n_pods);
}

#[tokio::test]
async fn stopping_the_simulator_kills_every_process() {
    let (_cluster, ns, sim, pods) = setup("stop").await;
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("s{i}"), "img"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        wait::pod_is_ready(&pods, &format!("s{i}"), TIMEOUT)
            .await
            .unwrap();
    }
    let pids: Vec<u32> = (0..3)
        .map(|i| sim.pod(&ns, &format!("s{i}")).unwrap().pid.unwrap())
        .collect();
    let root = sim.work_root().to_path_buf();
    drop(sim);
    for pid in pids {
        assert!(!process_alive(pid), "{pid} survived the simulator");
    }
    assert!(!root.exists());
}
