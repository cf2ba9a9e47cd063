//! The harness's control plane against the real binaries: it starts, serves, applies manifests
//! (CRDs included), runs the garbage collector, and dies with its owner.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::discovery;
use kube_harness::{KubeCluster, wait};

#[tokio::test]
async fn cluster_starts_serves_and_stops() {
    let cluster = KubeCluster::start().await;
    let client = cluster.client();
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "35"),
        "{version:?}"
    );
    assert!(version.git_version.starts_with("v1.35."), "{version:?}");
    eprintln!("cluster started in {:?}", cluster.started_in());

    // Writes land in etcd and can be read back.
    let ns = cluster.create_namespace("serves").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"}, "data": {"k": "v"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let got = cms.get("hello").await.expect("get configmap");
    assert_eq!(got.data.unwrap()["k"], "v");

    // kubectl (the project-built one) talks to it through the kubeconfig file.
    let out = cluster
        .kubectl()
        .unwrap()
        .args([
            "get",
            "configmap",
            "hello",
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.k}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v");

    // Dropping the cluster kills every component.
    let pids = cluster.component_pids();
    assert_eq!(
        pids.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["etcd", "kube-apiserver", "kube-controller-manager"]
    );
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    for (name, pid) in pids {
        assert!(
            !process_alive(pid),
            "{name} ({pid}) still running after drop"
        );
    }
    assert!(
        !dir.exists(),
        "cluster directory {} left behind",
        dir.display()
    );
}

fn process_alive(pid: u32) -> bool {
    // Zombies count as dead: they are only waiting to be reaped.
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

const CRD_AND_OBJECT: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.example.com
spec:
  group: harness.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
---
apiVersion: harness.example.com/v1
kind: Widget
metadata:
  name: first
spec:
  size: 3
"#;

#[tokio::test]
async fn applies_crds_and_their_objects_from_one_document() {
    let cluster = KubeCluster::shared().await;
    let ns = cluster.create_namespace("crd").await;
    let applied = cluster
        .apply_yaml_str_in(CRD_AND_OBJECT, &ns)
        .await
        .expect("apply");
    assert_eq!(applied.len(), 2);

    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let crd = crds.get("widgets.harness.example.com").await.unwrap();
    let conds = crd.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        "{conds:?}"
    );

    let gvk = GroupVersionKind::gvk("harness.example.com", "v1", "Widget");
    let (ar, _) = discovery::pinned_kind(&cluster.client(), &gvk)
        .await
        .unwrap();
    let widgets: Api<DynamicObject> = Api::namespaced_with(cluster.client(), &ns, &ar);
    let w = widgets.get("first").await.unwrap();
    assert_eq!(w.data["spec"]["size"], 3);

    // Applying again is idempotent (server-side apply), and schema validation is real.
    cluster
        .apply_yaml_str_in(CRD_AND_OBJECT, &ns)
        .await
        .expect("re-apply");
    let bad = "apiVersion: harness.example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0}\n";
    let err = cluster
        .apply_yaml_str_in(bad, &ns)
        .await
        .expect_err("size 0 violates minimum 1");
    assert!(err.to_string().contains("spec.size"), "{err}");
}

#[tokio::test]
async fn bad_manifests_get_clear_errors() {
    let cluster = KubeCluster::shared().await;
    let err = cluster
        .apply_yaml_str("kind: ConfigMap\nmetadata: {name: x}\n")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("document 0"), "{err}");
    let err = cluster
        .apply_yaml_str("apiVersion: nope.example.com/v1\nkind: Nothing\nmetadata: {name: x}\n")
        .await;
    assert!(err.is_err());
    let err = cluster
        .apply_yaml_file("/does/not/exist.yaml")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/does/not/exist.yaml"), "{err}");
}

#[tokio::test]
async fn garbage_collector_and_namespace_controller_run() {
    let cluster = KubeCluster::shared().await;
    let client = cluster.client();
    let ns = cluster.create_namespace("gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let child: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "child", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.unwrap()
        }]}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &child).await.unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait::wait_for(&cms, "child", Duration::from_secs(60), |c| c.is_none())
        .await
        .expect("the garbage collector deletes the dependent");

    // The namespace controller finishes namespace deletion.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    wait::wait_for(&namespaces, &ns, Duration::from_secs(60), |n| n.is_none())
        .await
        .expect("the namespace controller removes the namespace");
    let _ = cms.list(&ListParams::default()).await;
}
