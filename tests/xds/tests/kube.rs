//! The real `sandbox-xds` binary against a real kube-apiserver: Sandbox CRs become routes at a
//! real gateway (create, status with a pod IP, delete), `/readyz` follows the first listing, and
//! SIGTERM shuts it down cleanly.

use std::process::Command;
use std::time::Duration;

use gateway_tests::{AdsGatewayBuilder, Upstream, request};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube_harness::KubeCluster;
use sandbox_api::{Condition, PodInfo, Sandbox, SandboxSpec, SandboxStatus};
use sandbox_xds_wire::v1::WaitForRouteRequest;
use sandbox_xds_wire::v1::route_sync_client::RouteSyncClient;
use test_support::{ChildGuard, artifact_from_env, free_port, repo_root};
use xds_tests::eventually;

fn ready_status(ip: &str) -> SandboxStatus {
    SandboxStatus {
        phase: Some("Running".into()),
        pod_info: Some(PodInfo {
            pod_ip: Some(ip.into()),
            ..Default::default()
        }),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("PodReady".into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn sandboxes_in_kubernetes_become_routes() {
    // Kubernetes calls run on this runtime; the gateway harness blocks on its own threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt.block_on(KubeCluster::shared());
    rt.block_on(
        cluster.apply_yaml_file(
            &repo_root().join(
                "charts/kruise-agents-sandbox-controller/crds/agents.kruise.io_sandboxes.yaml",
            ),
        ),
    )
    .expect("apply the Sandbox CRD");
    let ns = rt.block_on(cluster.create_namespace("xds"));
    // The pod on a loopback address of its own: 127.0.0.1 is where the platform listens, and
    // the served config (defaults) denies it as an upstream.
    let up = Upstream::start("pod", "127.0.42.1");

    // The real binary, watching that namespace, serving test gateway settings.
    let (grpc, http) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("xds-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gateway_config = dir.join("gateway.yaml");
    std::fs::write(
        &gateway_config,
        format!("listen_address: 127.0.0.1\nlisten_port: 0\nmetrics_port: 0\naccess_log: false\nxds_address: http://127.0.0.1:{grpc}\n"),
    )
    .unwrap();
    let mut cmd = Command::new(artifact_from_env("SANDBOX_XDS_BIN"));
    cmd.env("KUBECONFIG", cluster.kubeconfig_path())
        .args([
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .args([
            "--namespace",
            &ns,
            "--log-format",
            "text",
            "--gateway-config",
        ])
        .arg(&gateway_config);
    let mut xds = ChildGuard::spawn("sandbox-xds", cmd);
    let http_addr = ([127, 0, 0, 1], http).into();
    xds.wait_until(
        "/readyz after the first Sandbox listing",
        Duration::from_secs(30),
        || {
            gateway_tests::try_request(http_addr, "GET", "/readyz", &[], None)
                .is_ok_and(|r| r.status == 200)
        },
    );
    let gw = AdsGatewayBuilder::new(([127, 0, 0, 1], grpc).into(), "gw-kube").start();

    // A claimed sandbox (no SandboxSet owner) whose pod is Running and Ready at 127.0.42.1.
    let api: Api<Sandbox> = rt.block_on(async { Api::namespaced(cluster.client(), &ns) });
    let mut sbx = Sandbox::new("box1", SandboxSpec::default());
    sbx.metadata.annotations = Some(
        [(
            "agents.kruise.io/runtime-access-token".to_string(),
            "tok".to_string(),
        )]
        .into(),
    );
    rt.block_on(api.create(&PostParams::default(), &sbx))
        .expect("create Sandbox");
    let patched = rt
        .block_on(api.patch_status(
            "box1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": ready_status("127.0.42.1")})),
        ))
        .expect("patch status");
    let rv: u64 = patched.metadata.resource_version.unwrap().parse().unwrap();
    let id = format!("{ns}--box1");

    // Read-after-write through the real gRPC API.
    let w = rt.block_on(async {
        let mut client = RouteSyncClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        client
            .wait_for_route(WaitForRouteRequest {
                sandbox_id: id.clone(),
                min_resource_version: rv,
                timeout_ms: 15_000,
                min_gateways: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    assert!(w.synced && w.resource_version >= rv, "{w:?}");
    let port = up.port().to_string();
    let r = request(
        gw.addr,
        "GET",
        "/x",
        &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", &port)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "pod");
    // The runtime token annotation is enforced on envd's port, from its digest.
    let r = request(
        gw.addr,
        "POST",
        "/process.Process/List",
        &[("e2b-sandbox-id", &id)],
        Some(b"{}"),
    );
    assert_eq!(r.status, 401, "{}", r.text());

    // A Sandbox whose shutdownTime passes loses its route then, before anyone deletes it; a
    // WaitForRoute with `absent` returns once the gateway has dropped it.
    let wait_absent = |id: &str| {
        rt.block_on(async {
            let mut client = RouteSyncClient::connect(format!("http://127.0.0.1:{grpc}"))
                .await
                .unwrap();
            client
                .wait_for_route(WaitForRouteRequest {
                    sandbox_id: id.to_string(),
                    timeout_ms: 15_000,
                    min_gateways: 1,
                    absent: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        })
    };
    let mut expiring = Sandbox::new("box2", SandboxSpec::default());
    // Whole seconds: the apiserver keeps Sandbox times at second precision.
    let end = k8s_openapi::jiff::Timestamp::from_second(
        k8s_openapi::jiff::Timestamp::now().as_second() + 3,
    )
    .unwrap();
    expiring.spec.shutdown_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(end));
    rt.block_on(api.create(&PostParams::default(), &expiring))
        .expect("create box2");
    rt.block_on(api.patch_status(
        "box2",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": ready_status("127.0.42.1")})),
    ))
    .expect("patch box2 status");
    let id2 = format!("{ns}--box2");
    eventually("box2 routed", Duration::from_secs(15), || {
        request(
            gw.addr,
            "GET",
            "/x",
            &[("e2b-sandbox-id", &id2), ("e2b-sandbox-port", &port)],
            None,
        )
        .status
            == 200
    });
    let w = wait_absent(&id2);
    assert!(w.synced, "{w:?}");
    assert!(
        k8s_openapi::jiff::Timestamp::now() >= end,
        "withdrawn before its shutdownTime"
    );
    let r = request(
        gw.addr,
        "GET",
        "/x",
        &[("e2b-sandbox-id", &id2), ("e2b-sandbox-port", &port)],
        None,
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        rt.block_on(api.get_opt("box2")).unwrap().is_some(),
        "nobody deleted it"
    );

    // Deleting the Sandbox removes the route.
    rt.block_on(api.delete("box1", &DeleteParams::default()))
        .expect("delete");
    let w = wait_absent(&id);
    assert!(w.synced, "{w:?}");
    let r = request(gw.addr, "GET", "/", &[("e2b-sandbox-id", &id)], None);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["message"], "The sandbox was not found");

    // The metrics endpoint reports the watch and the stream.
    let m = gateway_tests::request(http_addr, "GET", "/metrics", &[], None).text();
    assert!(m.contains("sandbox_xds_route_source_synced 1"), "{m}");
    assert!(
        m.contains("sandbox_xds_route_events_total{outcome=\"applied\"}"),
        "{m}"
    );

    // SIGTERM: a clean, prompt exit.
    xds.signal("TERM");
    let status = xds
        .wait_exit(Duration::from_secs(10))
        .expect("sandbox-xds exits after SIGTERM");
    assert!(status.success(), "exit status {status}: {}", xds.log());
    assert!(xds.log().contains("shutting down"), "{}", xds.log());
    std::fs::remove_dir_all(dir).ok();
}
