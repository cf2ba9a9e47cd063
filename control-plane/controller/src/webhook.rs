//! Admission webhook server (HTTPS) with self-managed certificates, as upstream: the CA and
//! serving certificate live in Secret `sandbox-controller-webhook-certs` (created once, shared
//! by all replicas), and the CA is patched into the `caBundle` of
//! `sandbox-controller-{mutating,validating}-webhook-configuration` when those exist.
//! Every replica serves webhooks (not only the leader). Rules are in `admission.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use sandbox_api::keys::*;
use sandbox_api::{Sandbox, SandboxSet, SandboxTemplate, SandboxUpdateOps};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::admission;

pub const CERT_SECRET: &str = "sandbox-controller-webhook-certs";
pub const MUTATING_CONFIG: &str = "sandbox-controller-mutating-webhook-configuration";
pub const VALIDATING_CONFIG: &str = "sandbox-controller-validating-webhook-configuration";

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub bind: SocketAddr,
    pub namespace: String,
    /// Service name used in the certificate SANs (`<svc>.<ns>.svc`).
    pub service: String,
    /// Identity allowed to delete sandbox pods (`SANDBOX_CONTROLLER_USERNAME`).
    pub controller_user: String,
    /// `--default-persistent-contents`.
    pub default_persistent_contents: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub struct CertBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn generate(sans: Vec<String>) -> Result<CertBundle, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "sandbox-controller-webhook-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(sans)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "sandbox-controller-webhook");
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(CertBundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn text(s: &Secret, k: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(k)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Loads or creates the certificate Secret (first writer wins; everyone then uses its content).
pub async fn ensure_certs(
    client: &kube::Client,
    cfg: &WebhookConfig,
) -> Result<CertBundle, WebhookError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    for _ in 0..3 {
        if let Some(s) = api.get_opt(CERT_SECRET).await?
            && let (Some(ca), Some(cert), Some(key)) =
                (text(&s, "ca.crt"), text(&s, "tls.crt"), text(&s, "tls.key"))
        {
            return Ok(CertBundle {
                ca_pem: ca,
                cert_pem: cert,
                key_pem: key,
            });
        }
        let svc = &cfg.service;
        let ns = &cfg.namespace;
        let sans = vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        let b = generate(sans).map_err(|e| WebhookError::Cert(e.to_string()))?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(CERT_SECRET.into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    (
                        "ca.crt".to_string(),
                        ByteString(b.ca_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.crt".to_string(),
                        ByteString(b.cert_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.key".to_string(),
                        ByteString(b.key_pem.clone().into_bytes()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(b),
            Err(e) if crate::error::is_status(&e, 409) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(WebhookError::Cert(
        "could not settle the certificate Secret".into(),
    ))
}

/// Writes the CA into every webhook of the two configurations (those that exist).
pub async fn patch_ca_bundles(client: &kube::Client, ca_pem: &str) -> Result<(), WebhookError> {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut c) = m.get_opt(MUTATING_CONFIG).await? {
        for w in c.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(bundle.clone());
        }
        m.replace(MUTATING_CONFIG, &PostParams::default(), &c)
            .await?;
    }
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut c) = v.get_opt(VALIDATING_CONFIG).await? {
        for w in c.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(bundle.clone());
        }
        v.replace(VALIDATING_CONFIG, &PostParams::default(), &c)
            .await?;
    }
    Ok(())
}

struct Hooks {
    client: kube::Client,
    cfg: WebhookConfig,
}

type Review = Json<AdmissionReview<DynamicObject>>;

fn decode<T: serde::de::DeserializeOwned>(o: &Option<DynamicObject>) -> Option<T> {
    o.as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| serde_json::from_value(v).ok())
}

fn respond(resp: AdmissionResponse) -> Review {
    Json(resp.into_review())
}

fn request(
    review: AdmissionReview<DynamicObject>,
) -> Result<AdmissionRequest<DynamicObject>, Box<Review>> {
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| {
            Box::new(respond(AdmissionResponse::invalid(e.to_string())))
        })
}

/// A denial answered as 403 Forbidden (what controller-runtime webhooks answer upstream).
fn forbid(resp: AdmissionResponse, msg: impl ToString) -> AdmissionResponse {
    let mut r = resp.deny(msg);
    r.result.code = 403;
    r.result.reason = "Forbidden".into();
    r
}

fn verdict(req: &AdmissionRequest<DynamicObject>, errs: Vec<String>) -> Review {
    let resp = AdmissionResponse::from(req);
    respond(if errs.is_empty() {
        resp
    } else {
        forbid(resp, errs.join("; "))
    })
}

/// A JSON patch from `before` to `after` (both serialised).
fn mutate<T: serde::Serialize>(
    req: &AdmissionRequest<DynamicObject>,
    before: &DynamicObject,
    after: &T,
) -> Review {
    let resp = AdmissionResponse::from(req);
    let before = serde_json::to_value(before).unwrap_or_default();
    let mut after = serde_json::to_value(after).unwrap_or_default();
    // Only spec is defaulted; keep everything else byte-identical.
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object_mut()) {
        for (k, v) in b {
            if k != "spec" {
                a.insert(k.clone(), v.clone());
            }
        }
    }
    let patch = json_patch::diff(&before, &after);
    if patch.0.is_empty() {
        return respond(resp);
    }
    match resp.clone().with_patch(patch) {
        Ok(r) => respond(r),
        Err(e) => respond(resp.deny(e.to_string())),
    }
}

async fn default_sandboxset(State(h): State<Arc<Hooks>>, Json(review): Review) -> Review {
    let req = match request(review) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let (Some(obj), Some(mut set)) = (req.object.clone(), decode::<SandboxSet>(&req.object)) else {
        return respond(AdmissionResponse::from(&req));
    };
    admission::default_sandboxset(
        &mut set,
        req.operation == Operation::Create,
        &h.cfg.default_persistent_contents,
    );
    mutate(&req, &obj, &set)
}

async fn validate_sandboxset(Json(review): Review) -> Review {
    let req = match request(review) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match decode::<SandboxSet>(&req.object) {
        Some(set) => verdict(&req, admission::validate_sandboxset(&set)),
        None => verdict(&req, vec!["object is not a valid SandboxSet".into()]),
    }
}

async fn default_sandboxtemplate(Json(review): Review) -> Review {
    let req = match request(review) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let (Some(obj), Some(mut t)) = (req.object.clone(), decode::<SandboxTemplate>(&req.object))
    else {
        return respond(AdmissionResponse::from(&req));
    };
    admission::default_sandboxtemplate(&mut t);
    mutate(&req, &obj, &t)
}

async fn validate_sandboxtemplate(Json(review): Review) -> Review {
    let req = match request(review) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match decode::<SandboxTemplate>(&req.object) {
        Some(t) => verdict(&req, admission::validate_sandboxtemplate(&t)),
        None => verdict(&req, vec!["object is not a valid SandboxTemplate".into()]),
    }
}

async fn validate_sandboxupdateops(State(h): State<Arc<Hooks>>, Json(review): Review) -> Review {
    let req = match request(review) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(ops) = decode::<SandboxUpdateOps>(&req.object) else {
        return verdict(&req, vec!["object is not a valid SandboxUpdateOps".into()]);
    };
    let old = decode::<SandboxUpdateOps>(&req.old_object);
    let mut others = Vec::new();
    if req.operation == Operation::Create {
        let ns = req.namespace.clone().unwrap_or_default();
        let api: Api<SandboxUpdateOps> = Api::namespaced(h.client.clone(), &ns);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                others = list
                    .items
                    .iter()
                    .filter(|o| o.name_any() != req.name && !admission::ops_finished(o))
                    .map(|o| o.name_any())
                    .collect()
            }
            Err(e) => return verdict(&req, vec![format!("listing SandboxUpdateOps: {e}")]),
        }
    }
    verdict(
        &req,
        admission::validate_updateops(&ops, old.as_ref(), &others),
    )
}

async fn validate_pod_delete(State(h): State<Arc<Hooks>>, Json(review): Review) -> Review {
    let req = match request(review) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let ns = req.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &ns);
    // DELETE carries the pod as oldObject; an eviction (pods/eviction CREATE) names it.
    let pod: Option<Pod> = match decode::<Pod>(&req.old_object) {
        Some(p) if req.sub_resource.is_none() => Some(p),
        _ => pods.get_opt(&req.name).await.unwrap_or_default(),
    };
    let Some(pod) = pod else {
        return respond(AdmissionResponse::from(&req));
    };
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Sandbox")
        .map(|o| (o.name.clone(), o.uid.clone()));
    let sandbox = match &owner {
        Some((name, _)) => {
            let api: Api<Sandbox> = Api::namespaced(h.client.clone(), &ns);
            api.get_opt(name).await.ok().flatten().map(|s| {
                (
                    s.metadata.uid.clone().unwrap_or_default(),
                    s.metadata.deletion_timestamp.is_some(),
                )
            })
        }
        None => None,
    };
    let facts = admission::PodDeleteFacts {
        requester: req.user_info.username.clone().unwrap_or_default(),
        controller_user: h.cfg.controller_user.clone(),
        pod_terminating: pod.metadata.deletion_timestamp.is_some(),
        pod_created_by_sandbox: pod.labels().get(LABEL_CREATED_BY).map(String::as_str)
            == Some(CREATED_BY_SANDBOX),
        owner_uid: owner.map(|o| o.1),
        sandbox,
    };
    match admission::pod_delete_decision(&facts) {
        Ok(()) => respond(AdmissionResponse::from(&req)),
        Err(msg) => respond(forbid(AdmissionResponse::from(&req), msg)),
    }
}

pub fn router(client: kube::Client, cfg: WebhookConfig) -> Router {
    let hooks = Arc::new(Hooks { client, cfg });
    Router::new()
        .route("/default-sandboxset", post(default_sandboxset))
        .route("/validate-sandboxset", post(validate_sandboxset))
        .route("/default-sandboxtemplate", post(default_sandboxtemplate))
        .route("/validate-sandboxtemplate", post(validate_sandboxtemplate))
        .route(
            "/validate-sandboxupdateops",
            post(validate_sandboxupdateops),
        )
        .route("/validate-pod-delete", post(validate_pod_delete))
        .with_state(hooks)
}

/// Sets up certificates and serves the webhooks over TLS until `shutdown` resolves.
pub async fn serve(
    client: kube::Client,
    cfg: WebhookConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    let certs = ensure_certs(&client, &cfg).await?;
    if let Err(e) = patch_ca_bundles(&client, &certs.ca_pem).await {
        tracing::warn!(error = %e, "could not patch webhook caBundle (configurations missing or forbidden)");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| WebhookError::Cert(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| WebhookError::Cert(e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| WebhookError::Cert(e.to_string()))?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(cfg.bind).await?;
    tracing::info!(addr = %cfg.bind, "serving admission webhooks");
    let app = router(client, cfg);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = TowerToHyperService::new(app);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
