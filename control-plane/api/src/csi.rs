//! Dynamic CSI mounts (upstream's dynamic-csi-mount), for the manager's creates and the
//! controller's SandboxClaims and re-mounts after a resume: every mount config (`pvName`,
//! `mountPath`, `subPath`, `readOnly`) is resolved against its PersistentVolume (its CSI driver
//! must be an allowed one; its node-publish secret must live in the system namespace) into a CSI
//! `NodePublishVolumeRequest` ([`resolve`]); [`mount_all`] runs
//! `sandbox-runtime-storage mount --driver <d> --config <request>` in the sandbox through envd as
//! root (3 at a time, 30 s each). The configs live on the Sandbox in annotation
//! `e2b.agents.kruise.io/csi-volume-config` ([`recorded`]).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::Sandbox;
use crate::keys::ANNOTATION_RUNTIME_ACCESS_TOKEN;
use crate::types::CsiMountConfig;
use k8s_openapi::api::core::v1::{PersistentVolume, Secret, SecretReference};
use kube::{Api, Client};
use sandbox_storage::{
    MOUNT_CONCURRENCY, MOUNT_TIMEOUT, MountTarget, NodePublishVolumeRequest, VolumeSource,
    encode_request, publish_request,
};

use sandbox_core::envd::{CommandSpec, EnvdClient, Program, Target};

use crate::claim::{annotation, is_status, pod_ip};
use crate::keys::ANNOTATION_CSI_VOLUME_CONFIG;

/// Most mounts one sandbox may ask for (each costs a PersistentVolume read and a command in the
/// sandbox).
pub const MAX_MOUNTS: usize = 32;

/// `volumeAttributes.authType` value whose secret is not read (an identity provider's).
const AUTH_TYPE_AGENT_IDENTITY: &str = "agent-identity";

/// What the backend needs for dynamic mounts.
#[derive(Debug, Clone, Default)]
pub struct StorageConfig {
    /// Allowed CSI drivers (empty: none).
    pub drivers: Vec<String>,
    /// The mount CLI's path inside sandboxes.
    pub cli: String,
    /// Where node-publish secrets must be.
    pub system_namespace: String,
}

impl StorageConfig {
    pub fn new(drivers: &[String], cli: &str, system_namespace: &str) -> StorageConfig {
        let mut seen: Vec<String> = Vec::new();
        for d in drivers.iter().map(|d| d.trim()).filter(|d| !d.is_empty()) {
            if !seen.iter().any(|s| s.eq_ignore_ascii_case(d)) {
                seen.push(d.to_string());
            }
        }
        StorageConfig {
            drivers: seen,
            cli: cli.to_string(),
            system_namespace: system_namespace.to_string(),
        }
    }
}

/// One resolved mount: the driver and the request the CLI gets.
#[derive(Debug, Clone)]
pub struct ResolvedMount {
    pub driver: String,
    pub request: NodePublishVolumeRequest,
}

/// Why mounts could not be resolved (upstream's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsiError {
    /// The request is wrong (no such volume, a driver not allowed, …): a 400.
    #[error("{0}")]
    Invalid(String),
    /// The apiserver failed.
    #[error("{0}")]
    Api(String),
}

fn bad(msg: String) -> CsiError {
    CsiError::Invalid(msg)
}

/// Mounts are made after `/init` with the runtime's token: a claim that skips init cannot have
/// any (upstream's rule and wording).
pub fn require_init(mounts: &[CsiMountConfig], initialised: bool) -> Result<(), CsiError> {
    if mounts.is_empty() || initialised {
        Ok(())
    } else {
        Err(bad(
            "init runtime is required when csi mount is specified".into()
        ))
    }
}

/// The value of annotation `e2b.agents.kruise.io/csi-volume-config` a take records for `mounts`
/// ([`recorded`] reads it back).
pub fn annotation_value(mounts: &[CsiMountConfig]) -> String {
    serde_json::to_string(mounts).expect("mount configs serialise")
}

/// The mounts recorded on a sandbox (`None`: none, or the annotation does not parse).
pub fn recorded(sandbox: &Sandbox) -> Option<Vec<CsiMountConfig>> {
    let raw = annotation(sandbox, ANNOTATION_CSI_VOLUME_CONFIG)?;
    serde_json::from_str::<Vec<CsiMountConfig>>(raw)
        .ok()
        .filter(|m| !m.is_empty())
}

/// Resolves every mount against its PersistentVolume (and secret).
pub async fn resolve(
    client: &Client,
    cfg: &StorageConfig,
    mounts: &[CsiMountConfig],
) -> Result<Vec<ResolvedMount>, CsiError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(bad(format!(
            "at most {MAX_MOUNTS} volume mounts per sandbox, {} asked for",
            mounts.len()
        )));
    }
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        out.push(resolve_one(client, cfg, m).await?);
    }
    Ok(out)
}

/// One mount: its PersistentVolume (CSI, an allowed driver), secret and request.
async fn resolve_one(
    client: &Client,
    cfg: &StorageConfig,
    m: &CsiMountConfig,
) -> Result<ResolvedMount, CsiError> {
    if !crate::names::dns_subdomain(&m.pv_name) {
        return Err(bad(format!(
            "{:?} is not a PersistentVolume name (a DNS-1123 subdomain)",
            m.pv_name
        )));
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = match pvs.get_opt(&m.pv_name).await {
        Ok(Some(pv)) => pv,
        Ok(None) => {
            return Err(bad(format!(
                "failed to get persistent volume object by name: {}, err: not found",
                m.pv_name
            )));
        }
        Err(e) => {
            return Err(CsiError::Api(format!(
                "failed to get persistent volume object by name: {}, err: {e}",
                m.pv_name
            )));
        }
    };
    let spec = pv.spec.unwrap_or_default();
    let Some(csi) = spec.csi else {
        return Err(bad(format!(
            "no found csi object in persistent volume by name: {}",
            m.pv_name
        )));
    };
    if !cfg
        .drivers
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&csi.driver))
    {
        return Err(bad(format!(
            "driver {} is not supported in current environment",
            csi.driver
        )));
    }
    let attributes: HashMap<String, String> = csi
        .volume_attributes
        .unwrap_or_default()
        .into_iter()
        .collect();
    let secrets = match &csi.node_publish_secret_ref {
        Some(r)
            if attributes.get("authType").map(String::as_str) != Some(AUTH_TYPE_AGENT_IDENTITY) =>
        {
            node_publish_secrets(client, cfg, r).await?
        }
        _ => HashMap::new(),
    };
    let modes = spec.access_modes.unwrap_or_default();
    let read_only_only = modes.iter().any(|a| a == "ReadOnlyMany")
        && !modes.iter().any(|a| {
            matches!(
                a.as_str(),
                "ReadWriteOnce" | "ReadWriteMany" | "ReadWriteOncePod"
            )
        });
    let volume = VolumeSource {
        pv_name: m.pv_name.clone(),
        driver: csi.driver.clone(),
        fs_type: csi.fs_type.unwrap_or_default(),
        mount_options: spec.mount_options.unwrap_or_default(),
        read_only_only,
        volume_attributes: attributes,
        secrets,
    };
    let target = MountTarget {
        mount_path: m.mount_path.clone(),
        sub_path: m.sub_path.clone(),
        read_only: m.read_only.unwrap_or(false),
    };
    let request = publish_request(&volume, &target).map_err(bad)?;
    Ok(ResolvedMount {
        driver: csi.driver,
        request,
    })
}

/// The data of a PV's node-publish secret, which must be in the system namespace.
async fn node_publish_secrets(
    client: &Client,
    cfg: &StorageConfig,
    r: &SecretReference,
) -> Result<HashMap<String, String>, CsiError> {
    let ns = r.namespace.as_deref().filter(|n| !n.is_empty());
    let ns = ns.unwrap_or(&cfg.system_namespace);
    if ns != cfg.system_namespace {
        return Err(bad(format!(
            "invalid node publish secret ref namespace: {ns}, expected: {}",
            cfg.system_namespace
        )));
    }
    let name = r.name.as_deref().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get(name).await.map_err(|e| {
        let msg = format!("failed to get secret object: {ns}/{name}, err: {e}");
        if is_status(&e, 404) {
            bad(msg)
        } else {
            CsiError::Api(msg)
        }
    })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// Runs the mounts in `sandbox` (through envd, as root); every mount runs, the errors are
/// joined. No mounts: nothing to do.
pub async fn mount_all(
    envd: &EnvdClient,
    cli: &str,
    sandbox: &Sandbox,
    mounts: &[ResolvedMount],
) -> Result<(), String> {
    if mounts.is_empty() {
        return Ok(());
    }
    let ip: IpAddr = pod_ip(sandbox)
        .and_then(|ip| ip.parse().ok())
        .ok_or("the sandbox has no pod IP")?;
    let pod_uid = sandbox
        .status
        .as_ref()
        .and_then(|s| s.pod_info.as_ref())
        .and_then(|p| p.pod_uid.clone())
        .unwrap_or_default();
    let token = annotation(sandbox, ANNOTATION_RUNTIME_ACCESS_TOKEN).map(str::to_string);
    let target = Target::new(ip, token);
    let envs = std::collections::BTreeMap::from([("POD_UID".to_string(), pod_uid)]);
    let slots = tokio::sync::Semaphore::new(MOUNT_CONCURRENCY);
    let runs = mounts
        .iter()
        .map(|m| mount_one(envd, cli, &target, &envs, m, &slots));
    let errors: Vec<String> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// One mount; `Some(why)` when it failed.
async fn mount_one(
    envd: &EnvdClient,
    cli: &str,
    target: &Target,
    envs: &std::collections::BTreeMap<String, String>,
    m: &ResolvedMount,
    slots: &tokio::sync::Semaphore,
) -> Option<String> {
    let _slot = slots.acquire().await.ok()?;
    let args = vec![
        "mount".to_string(),
        "--driver".into(),
        m.driver.clone(),
        "--config".into(),
        encode_request(&m.request),
    ];
    let spec = CommandSpec {
        program: Program::Exec(cli, &args),
        user: Some("root"),
        cwd: None,
        envs,
        timeout: MOUNT_TIMEOUT,
        output_limit: 16 << 10,
    };
    let path = &m.request.target_path;
    match envd.run(target, &spec).await {
        Err(e) => Some(format!("{path}: {e}")),
        Ok(r) if r.timed_out => Some(format!("{path}: timed out after {MOUNT_TIMEOUT:?}")),
        Ok(r) => match r.end.as_ref().map(|e| e.exit_code) {
            Some(0) => None,
            code => Some(format!(
                "{path}: command failed: [{}] {}",
                code.map_or("?".to_string(), |c| c.to_string()),
                r.stderr.text().trim()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_trimmed_and_deduplicated() {
        let c = StorageConfig::new(
            &["a.csi".into(), " A.csi ".into(), "".into(), "b.csi".into()],
            "/x",
            "sys",
        );
        assert_eq!(c.drivers, ["a.csi", "b.csi"]);
    }

    #[test]
    fn recorded_mounts_come_from_the_annotation() {
        let mut s = Sandbox::default();
        assert_eq!(recorded(&s), None);
        for (raw, want) in [
            ("[]", None),
            ("not json", None),
            (
                r#"[{"pvName":"pv","mountPath":"/d","subPath":"x"}]"#,
                Some(vec![CsiMountConfig {
                    pv_name: "pv".into(),
                    mount_path: "/d".into(),
                    sub_path: Some("x".into()),
                    ..Default::default()
                }]),
            ),
        ] {
            s.metadata.annotations =
                Some([(ANNOTATION_CSI_VOLUME_CONFIG.to_string(), raw.to_string())].into());
            assert_eq!(recorded(&s), want, "{raw}");
        }
    }
}
