//! The `kube-cluster` and `node-sim` binaries, and the guarantee that nothing they start outlives
//! them, even when they are killed with SIGKILL.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube_harness::process::ManagedChild;
use kube_harness::wait::{self, pod_ip};
use kube_harness::{IpRange, KubeCluster};

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

fn wait_dead(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "{what} ({pid}) still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of processes whose command line contains `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && process_alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn kube_cluster_binary_components_die_with_it_even_on_sigkill() {
    let env_dir = tempfile::tempdir().unwrap();
    let env_file = env_dir.path().join("cluster.env");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-cluster"));
    cmd.arg("--env-file").arg(&env_file);
    let log = env_dir.path().join("kube-cluster.log");
    let mut child = ManagedChild::spawn("kube-cluster", cmd, &log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !env_file.exists() {
        assert!(
            child.try_wait().is_none(),
            "kube-cluster exited:\n{}",
            child.log()
        );
        assert!(
            Instant::now() < deadline,
            "kube-cluster not ready:\n{}",
            child.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    let get = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in {env}"))
            .to_string()
    };
    let kubeconfig = get("KUBECONFIG");
    assert!(std::path::Path::new(&kubeconfig).exists());
    assert!(get("KUBE_APISERVER_URL").starts_with("https://127.0.0.1:"));
    let pids: Vec<(String, u32)> = get("KUBE_CLUSTER_PIDS")
        .split(',')
        .map(|s| {
            let (n, p) = s.split_once(':').unwrap();
            (n.to_string(), p.parse().unwrap())
        })
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");

    // kubectl works against the printed kubeconfig.
    let out = Command::new(kube_harness::bins::kubectl().unwrap())
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "namespace", "default", "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/default",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    child.signal(libc::SIGKILL);
    for (name, pid) in pids {
        wait_dead(pid, &name);
    }
}

#[tokio::test]
async fn node_sim_binary_runs_pods_and_takes_them_down_when_stopped_or_killed() {
    let cluster = KubeCluster::shared().await;
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let ns = cluster.create_namespace("node-sim-bin").await;
        // A range of our own that no simulator in this process uses.
        let range: IpRange = format!("127.{}.0.0/24", 100 + signal).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-sim"));
        cmd.arg("--kubeconfig")
            .arg(cluster.kubeconfig_path())
            .args([
                "--node-name",
                &format!("bin-node-{signal}"),
                "--namespace",
                &ns,
            ])
            .args(["--ip-range", &range.to_string(), "--port", "18080"]);
        if signal == libc::SIGTERM {
            // The default command: the agent-runtime contract (`--listen {ip}:{port}
            // --default-workdir {workdir}`), played by sim-pod; readiness is its GET /health.
            cmd.env("AGENT_RUNTIME_BIN", env!("CARGO_BIN_EXE_sim-pod"))
                .args(["--ready-http-path", "/health"]);
        } else {
            cmd.args([
                "--",
                "python3",
                "-m",
                "http.server",
                "--bind",
                "{ip}",
                "{port}",
            ]);
        }
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut sim = ManagedChild::spawn("node-sim", cmd, log.path()).unwrap();

        let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "main", "image": "img"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let p = match wait::pod_is_ready(&pods, "web", Duration::from_secs(60)).await {
            Ok(p) => p,
            Err(e) => panic!("{e}; node-sim log:\n{}", sim.log()),
        };
        let ip: Ipv4Addr = pod_ip(&p).unwrap();
        assert!(range.contains(ip));
        let needle = if signal == libc::SIGTERM {
            format!("--listen {ip}:18080 --default-workdir ")
        } else {
            format!("--bind {ip} 18080")
        };
        let workers = pids_with_cmdline(&needle);
        assert_eq!(
            workers.len(),
            1,
            "one python process for the pod: {workers:?}"
        );

        sim.signal(signal);
        let status = tokio::time::timeout(Duration::from_secs(20), sim.wait())
            .await
            .expect("node-sim exits");
        if signal == libc::SIGTERM {
            assert!(
                status.success(),
                "graceful stop: {status}; log:\n{}",
                sim.log()
            );
        }
        wait_dead(workers[0], "pod process");
    }
}
