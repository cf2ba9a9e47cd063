//! The cluster is set up so that RBAC is enforced and admission webhooks on loopback are called:
//! what the controller's RBAC rules and webhooks need to be tested for real.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube_harness::KubeCluster;
use tokio_rustls::rustls;

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .unwrap()
}

#[tokio::test]
async fn rbac_is_enforced_for_non_admin_users() {
    let cluster = KubeCluster::shared().await;
    let ns = cluster.create_namespace("rbac").await;
    let alice =
        kube::Client::try_from(cluster.kube_config_as("alice", &["testers"]).await.unwrap())
            .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(alice.clone(), &ns);
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("alice must be forbidden before any binding: {other:?}"),
    }
    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: cm-reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: testers-read, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}}
subjects:
- {{kind: Group, apiGroup: rbac.authorization.k8s.io, name: testers}}
"#
    );
    cluster.apply_yaml_str(&rbac).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cms.list(&Default::default()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the binding must allow listing: {e}"),
        }
    }
    // Reading is granted, writing is not.
    match cms.create(&PostParams::default(), &configmap("nope")).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("create must stay forbidden: {other:?}"),
    }
}

/// A validating webhook that denies objects whose name starts with "forbidden-".
async fn review(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let uid = review["request"]["uid"].clone();
    let name = review["request"]["name"].as_str().unwrap_or_default();
    let allowed = !name.starts_with("forbidden-");
    let answer = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": allowed,
            "status": {"code": if allowed { 200 } else { 403 }, "message": "denied by the kube-harness test webhook"},
        }
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap())
}

#[tokio::test]
async fn admission_webhooks_on_loopback_are_called() {
    let cluster = KubeCluster::shared().await;
    let ns = cluster.create_namespace("webhook").await;

    // An HTTPS server with a certificate from the cluster CA.
    let cert = cluster.issue_serving_cert(&["127.0.0.1"]).unwrap();
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = {
        let calls = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        review(req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        })
    };

    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cluster.ca_cert_pem());
    let name = format!("{ns}-deny");
    let webhook = format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {name}}}
webhooks:
- name: deny.kube-harness.example.com
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 5
  clientConfig:
    url: https://127.0.0.1:{port}/validate
    caBundle: {ca_bundle}
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {ns}}}
  rules:
  - apiGroups: [""]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [configmaps]
"#
    );
    cluster.apply_yaml_str(&webhook).await.unwrap();

    // The apiserver picks the configuration up within moments; until it does, creates pass.
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    let denial = loop {
        match cms
            .create(&PostParams::default(), &configmap("forbidden-1"))
            .await
        {
            Err(kube::Error::Api(e)) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the webhook was never called");
                cms.delete("forbidden-1", &DeleteParams::default())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    assert!(
        denial
            .message
            .contains("denied by the kube-harness test webhook"),
        "{denial:?}"
    );
    cms.create(&PostParams::default(), &configmap("allowed-1"))
        .await
        .expect("allowed by the webhook");
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);

    let vwc: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(cluster.client());
    vwc.delete(&name, &DeleteParams::default()).await.unwrap();
    server.abort();
}
