//! The controller chart renders and passes a server-side dry-run apply on the real apiserver.

use std::io::Write;
use std::process::Stdio;

use kube_harness::KubeCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_renders_and_passes_server_side_dry_run() {
    let cluster = KubeCluster::shared().await;
    let chart = test_support::repo_root().join("charts/kruise-agents-sandbox-controller");
    let ns = cluster.create_namespace("chart").await;
    let injection =
        r#"{"agent-runtime": {"csiSidecar": [{"name": "runtime", "image": "agent-runtime:1"}]}}"#;
    let out = cluster
        .helm()
        .expect("helm")
        .args(["template", "sandbox-controller"])
        .arg(&chart)
        .args([
            "--namespace",
            &ns,
            "--set",
            &format!("namespace.name={ns}"),
            "--include-crds",
        ])
        .args(["--set-json", &format!("injection.config={injection}")])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "ServiceAccount",
        "ConfigMap",
        "Service",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}")),
            "chart renders a {kind}"
        );
    }
    // CRDs must exist before namespaced custom objects can be dry-run; install them for real
    // (idempotent), then dry-run the whole rendering server-side.
    controller_tests::install_crds(cluster).await;
    let mut child = cluster
        .kubectl()
        .expect("kubectl")
        .args([
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=chart-test",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rendered.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dry-run apply failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("deployment.apps/sandbox-controller serverside-applied (server dry run)"),
        "{stdout}"
    );
    assert!(stdout.contains("sandboxes.agents.kruise.io"), "{stdout}");
}
