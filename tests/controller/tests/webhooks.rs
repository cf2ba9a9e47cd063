//! Admission webhooks served by the real controller over TLS, registered with the real
//! apiserver (URL form on loopback; the controller patches its self-managed CA into them).

use std::time::Duration;

use controller_tests::{ControllerProcess, Env};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use sandbox_api::{Sandbox, SandboxSet, SandboxUpdateOps};
use serde_json::json;

fn rule(resource: &str, ops: &[&str], group: &str) -> serde_json::Value {
    json!({"apiGroups": [group], "apiVersions": ["*"], "resources": [resource], "operations": ops})
}

fn hook(
    name: &str,
    port: u16,
    path: &str,
    ns: &str,
    rules: Vec<serde_json::Value>,
    policy: &str,
) -> serde_json::Value {
    json!({
        "name": name,
        "clientConfig": {"url": format!("https://127.0.0.1:{port}{path}")},
        "rules": rules,
        "failurePolicy": policy,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
    })
}

fn denied(err: kube::Error) -> String {
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            s.message
        }
        other => panic!("expected a denial, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_default_validate_and_protect_pods() {
    let mut env = Env::new("webhooks").await;
    let port = env.controller.as_ref().unwrap().webhook_port;
    let ns = env.ns.clone();
    let m: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "sandbox-controller-mutating-webhook-configuration"},
        "webhooks": [
            hook("msandboxset.kb.io", port, "/default-sandboxset", &ns, vec![rule("sandboxsets", &["CREATE", "UPDATE"], "agents.kruise.io")], "Fail"),
            hook("msandboxtemplate.kb.io", port, "/default-sandboxtemplate", &ns, vec![rule("sandboxtemplates", &["CREATE"], "agents.kruise.io")], "Fail"),
        ]
    })).unwrap();
    let mut pod_hook = hook(
        "vpod.kb.io",
        port,
        "/validate-pod-delete",
        &ns,
        vec![
            rule("pods", &["DELETE"], ""),
            rule("pods/eviction", &["CREATE"], ""),
        ],
        "Ignore",
    );
    pod_hook["objectSelector"] = json!({"matchExpressions": [{"key": "agents.kruise.io/created-by", "operator": "In", "values": ["sandbox"]}]});
    let v: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "sandbox-controller-validating-webhook-configuration"},
        "webhooks": [
            hook("vsandboxset.kb.io", port, "/validate-sandboxset", &ns, vec![rule("sandboxsets", &["CREATE", "UPDATE"], "agents.kruise.io")], "Fail"),
            hook("vsandboxtemplate.kb.io", port, "/validate-sandboxtemplate", &ns, vec![rule("sandboxtemplates", &["CREATE"], "agents.kruise.io")], "Ignore"),
            hook("vsandboxupdateops.kb.io", port, "/validate-sandboxupdateops", &ns, vec![rule("sandboxupdateops", &["CREATE", "UPDATE"], "agents.kruise.io")], "Fail"),
            pod_hook,
        ]
    })).unwrap();
    let mapi: Api<MutatingWebhookConfiguration> = Api::all(env.client());
    let vapi: Api<ValidatingWebhookConfiguration> = Api::all(env.client());
    mapi.create(&PostParams::default(), &m).await.unwrap();
    vapi.create(&PostParams::default(), &v).await.unwrap();
    // Restart so the controller patches its CA into the configurations at start-up.
    env.controller.as_mut().unwrap().child.kill_now();
    env.controller = Some(ControllerProcess::start(env.cluster, &ns, &[]));
    let port = env.controller.as_ref().unwrap().webhook_port;
    let mut m = mapi
        .get("sandbox-controller-mutating-webhook-configuration")
        .await
        .unwrap();
    let mut v = vapi
        .get("sandbox-controller-validating-webhook-configuration")
        .await
        .unwrap();
    for w in m.webhooks.iter_mut().flatten() {
        let url = w.client_config.url.clone().unwrap();
        w.client_config.url = Some(url.replace(
            &url[8..url[8..].find('/').unwrap() + 8],
            &format!("127.0.0.1:{port}"),
        ));
    }
    for w in v.webhooks.iter_mut().flatten() {
        let url = w.client_config.url.clone().unwrap();
        w.client_config.url = Some(url.replace(
            &url[8..url[8..].find('/').unwrap() + 8],
            &format!("127.0.0.1:{port}"),
        ));
    }
    mapi.replace(&m.name_any(), &PostParams::default(), &m)
        .await
        .unwrap();
    vapi.replace(&v.name_any(), &PostParams::default(), &v)
        .await
        .unwrap();
    env.eventually("caBundle patched", Duration::from_secs(30), || async {
        let v = vapi
            .get("sandbox-controller-validating-webhook-configuration")
            .await
            .map_err(|e| e.to_string())?;
        let ok = v
            .webhooks
            .unwrap_or_default()
            .iter()
            .all(|w| w.client_config.ca_bundle.is_some());
        if ok {
            Ok(())
        } else {
            Err("no caBundle yet".into())
        }
    })
    .await;

    let sets: Api<SandboxSet> = env.api();
    let set = |spec: serde_json::Value| -> SandboxSet {
        serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet", "metadata": {"name": "w"}, "spec": spec})).unwrap()
    };
    // Validation (retry while the apiserver picks up the new caBundle).
    let both = set(
        json!({"replicas": 1, "templateRef": {"name": "t"}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}),
    );
    let msg = env
        .eventually(
            "validating webhook answers",
            Duration::from_secs(30),
            || async {
                match sets.create(&PostParams::default(), &both).await {
                    Err(kube::Error::Api(s)) if s.code == 403 => Ok(s.message),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    assert!(msg.contains("mutually exclusive"), "{msg}");
    // Negative replicas: the apiserver's scale-subresource check (422) or the webhook (403).
    match sets
        .create(
            &PostParams::default(),
            &set(json!({"replicas": -1, "templateRef": {"name": "t"}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(s.code == 422 || s.code == 403, "{s:?}"),
        other => panic!("negative replicas accepted: {other:?}"),
    }
    let e2b = set(
        json!({"replicas": 0, "template": {"metadata": {"labels": {"e2b.agents.kruise.io/x": "y"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}),
    );
    assert!(
        denied(sets.create(&PostParams::default(), &e2b).await.unwrap_err())
            .contains("reserved prefix")
    );
    let unmounted = set(
        json!({"replicas": 0, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}, "volumeClaimTemplates": [{"metadata": {"name": "www"}}]}),
    );
    assert!(
        denied(
            sets.create(&PostParams::default(), &unmounted)
                .await
                .unwrap_err()
        )
        .contains("not mounted")
    );

    // Defaulting.
    let ok = set(
        json!({"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080}]}]}}}),
    );
    let created = sets.create(&PostParams::default(), &ok).await.unwrap();
    assert_eq!(
        created.spec.update_strategy.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("20%".into()))
    );
    let pod_spec = created.spec.template.unwrap().spec.unwrap();
    assert_eq!(pod_spec.automount_service_account_token, Some(false));
    assert_eq!(
        pod_spec.containers[0].ports.as_ref().unwrap()[0]
            .protocol
            .as_deref(),
        Some("TCP")
    );

    // One update ops at a time per namespace.
    let ops: Api<SandboxUpdateOps> = env.api();
    let o = |name: &str| -> SandboxUpdateOps {
        serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxUpdateOps", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": "none"}}, "paused": true}})).unwrap()
    };
    ops.create(&PostParams::default(), &o("first"))
        .await
        .unwrap();
    assert!(
        denied(
            ops.create(&PostParams::default(), &o("second"))
                .await
                .unwrap_err()
        )
        .contains("another SandboxUpdateOps")
    );
    let no_sel: SandboxUpdateOps = serde_json::from_value(
        json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxUpdateOps",
        "metadata": {"name": "nosel"}, "spec": {"selector": {}}}),
    )
    .unwrap();
    assert!(
        denied(
            ops.create(&PostParams::default(), &no_sel)
                .await
                .unwrap_err()
        )
        .contains("selector")
    );

    // A sandbox's pod can't be deleted directly; deleting the sandbox takes it away.
    let sbx: Sandbox = serde_json::from_value(json!({"apiVersion": "agents.kruise.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "guarded"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}})).unwrap();
    env.api::<Sandbox>()
        .create(&PostParams::default(), &sbx)
        .await
        .unwrap();
    let pods: Api<Pod> = env.api();
    env.eventually("pod exists", Duration::from_secs(30), || async {
        pods.get_opt("guarded")
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "no pod".to_string())
    })
    .await;
    let msg = denied(
        pods.delete("guarded", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("delete the sandbox instead"), "{msg}");
    env.api::<Sandbox>()
        .delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    env.eventually(
        "pod garbage-collected with its sandbox",
        Duration::from_secs(60),
        || async {
            match pods.get_opt("guarded").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(p) => Err(format!(
                    "pod still there (deleting: {})",
                    p.metadata.deletion_timestamp.is_some()
                )),
            }
        },
    )
    .await;

    mapi.delete(
        "sandbox-controller-mutating-webhook-configuration",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    vapi.delete(
        "sandbox-controller-validating-webhook-configuration",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
}
