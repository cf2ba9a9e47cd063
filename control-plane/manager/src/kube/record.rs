//! What the API reports of a Sandbox CR: the claimed sandbox as a [`SandboxRecord`], a
//! SandboxSet as a [`TemplateRecord`]. Pure functions of the objects.

use std::collections::BTreeMap;
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use sandbox_api::keys::*;
use sandbox_api::state::{SandboxState as CrState, sandbox_state};
use sandbox_api::{Sandbox, SandboxPhase, SandboxSet};

use crate::model::{Lifecycle, OnTimeout, SandboxId, SandboxRecord, SandboxState, TemplateRecord};

/// Annotation holding the id of the team whose key claimed the sandbox (ours; a team's name is
/// the sandbox's namespace, upstream's rule, and its id is what the API reports).
pub const ANNOTATION_TEAM_ID: &str = "e2b.agents.kruise.io/team-id";
/// Annotation holding the create's user metadata as a JSON object (ours: E2B metadata keys need
/// not be valid annotation names).
pub const ANNOTATION_METADATA: &str = "e2b.agents.kruise.io/metadata";
/// Annotation: the create asked for the sandbox's IP in responses (`return-sandbox-ip`).
pub const ANNOTATION_RETURN_IP: &str = "e2b.agents.kruise.io/return-sandbox-ip";
/// envd version reported for Kubernetes sandboxes (the agent-runtime speaks this protocol).
pub const ENVD_VERSION: &str = crate::local::ENVD_VERSION;

fn ann<'a>(s: &'a Sandbox, k: &str) -> Option<&'a str> {
    s.metadata.annotations.as_ref()?.get(k).map(String::as_str)
}

fn label<'a>(s: &'a Sandbox, k: &str) -> Option<&'a str> {
    s.metadata.labels.as_ref()?.get(k).map(String::as_str)
}

/// The sandbox id a claim gave it, if it is a claimed, visible sandbox (not a pool member, not
/// a reserved failure).
pub fn claimed_id(s: &Sandbox) -> Option<SandboxId> {
    if label(s, LABEL_SANDBOX_CLAIMED) != Some("true")
        || label(s, LABEL_RESERVED_FAILED_SANDBOX) == Some("true")
    {
        return None;
    }
    SandboxId::parse(label(s, LABEL_SANDBOX_ID)?)
}

/// The team the sandbox's claimer belongs to (empty when unknown).
pub fn team_of(s: &Sandbox) -> String {
    ann(s, ANNOTATION_TEAM_ID).unwrap_or_default().to_string()
}

/// Which user metadata and labels the claim wrote (annotation `updated-metadata-in-claim`).
fn claimed_keys(s: &Sandbox) -> (Vec<String>, Vec<String>) {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Keys {
        labels: Vec<String>,
        annotations: Vec<String>,
    }
    let k: Keys = ann(s, ANNOTATION_UPDATED_METADATA_IN_CLAIM)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    (k.labels, k.annotations)
}

fn pick(m: Option<&BTreeMap<String, String>>, keys: &[String]) -> BTreeMap<String, String> {
    let Some(m) = m else { return BTreeMap::new() };
    keys.iter()
        .filter_map(|k| m.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

fn to_jiff(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    // k8s-openapi's jiff is this crate's jiff.
    t.0
}

/// CPU count and memory (MiB) of the first container's limits (else requests).
pub fn resources(t: Option<&PodTemplateSpec>) -> (u32, u64) {
    let c = t
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first());
    let r = c.and_then(|c| c.resources.as_ref());
    let get = |k: &str| {
        r.and_then(|r| {
            r.limits
                .as_ref()
                .and_then(|l| l.get(k))
                .or_else(|| r.requests.as_ref().and_then(|l| l.get(k)))
        })
        .map(|q| q.0.clone())
    };
    let cpu = get("cpu").and_then(|q| parse_cpu(&q)).unwrap_or(2);
    let mem = get("memory").and_then(|q| parse_mem_mib(&q)).unwrap_or(512);
    (cpu, mem)
}

/// Whole CPUs of a quantity (`500m` → 1, `2` → 2), at least 1.
fn parse_cpu(q: &str) -> Option<u32> {
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<u64>().ok()?,
        None => (q.parse::<f64>().ok()? * 1000.0) as u64,
    };
    Some(millis.div_ceil(1000).max(1) as u32)
}

/// MiB of a memory quantity (`512Mi`, `1Gi`, `1G`, bytes).
fn parse_mem_mib(q: &str) -> Option<u64> {
    const UNITS: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (num, mult) = UNITS
        .iter()
        .find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let bytes = num.parse::<f64>().ok()? * mult;
    Some((bytes / 1048576.0).ceil() as u64)
}

/// The record of a claimed sandbox; `None` when it is not one, or it is dead at `now`.
pub fn record_of(s: &Sandbox, now: Timestamp) -> Option<SandboxRecord> {
    let id = claimed_id(s)?;
    let cr_state = sandbox_state(s, now);
    if s.metadata.deletion_timestamp.is_some() || cr_state == CrState::Dead {
        return None;
    }
    let phase = s.status.as_ref().and_then(|st| st.known_phase());
    let paused = s.spec.paused || phase == Some(SandboxPhase::Paused);
    let (label_keys, ann_keys) = claimed_keys(s);
    let started_at = sandbox_api::claim::claimed_at(s)
        .or_else(|| s.metadata.creation_timestamp.as_ref().map(to_jiff))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let pause_time = s.spec.pause_time.as_ref().map(to_jiff);
    let end_at = pause_time.or_else(|| s.spec.shutdown_time.as_ref().map(to_jiff));
    let ip = s
        .status
        .as_ref()
        .and_then(|st| st.pod_info.as_ref())
        .and_then(|p| p.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let (cpu_count, memory_mb) = resources(s.spec.template.as_ref());
    Some(SandboxRecord {
        id,
        team_id: ann(s, ANNOTATION_TEAM_ID).unwrap_or_default().to_string(),
        owner_key_id: ann(s, ANNOTATION_OWNER).unwrap_or_default().to_string(),
        template_id: label(s, LABEL_SANDBOX_POOL)
            .or_else(|| label(s, LABEL_SANDBOX_TEMPLATE))
            .unwrap_or_default()
            .to_string(),
        alias: None,
        metadata: ann(s, ANNOTATION_METADATA)
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_else(|| pick(s.metadata.annotations.as_ref(), &ann_keys)),
        labels: pick(s.metadata.labels.as_ref(), &label_keys),
        envd_access_token: ann(s, ANNOTATION_RUNTIME_ACCESS_TOKEN).map(str::to_string),
        started_at,
        end_at,
        state: if paused {
            SandboxState::Paused
        } else {
            SandboxState::Running
        },
        lifecycle: Lifecycle {
            on_timeout: if pause_time.is_some() {
                OnTimeout::Pause
            } else {
                OnTimeout::Kill
            },
            auto_resume: false,
        },
        cpu_count,
        memory_mb,
        disk_size_mb: 1024,
        allow_internet_access: Some(true),
        ip,
        return_ip: ann(s, ANNOTATION_RETURN_IP) == Some("true"),
        envd_version: ENVD_VERSION.into(),
    })
}

/// The record of a claimed sandbox regardless of its deadline (what a write just set, even if
/// that deadline has passed already).
pub fn record_as_written(s: &Sandbox) -> Option<SandboxRecord> {
    record_of(s, Timestamp::UNIX_EPOCH)
}

/// A SandboxSet as a template: its name is the template id.
pub fn template_of(set: &SandboxSet) -> TemplateRecord {
    let name = set.metadata.name.clone().unwrap_or_default();
    let (cpu_count, memory_mb) = resources(set.spec.template.as_ref());
    TemplateRecord {
        id: name.clone(),
        aliases: vec![name],
        cpu_count,
        memory_mb,
        disk_size_mb: 1024,
        envd_version: ENVD_VERSION.into(),
        created_at: set
            .metadata
            .creation_timestamp
            .as_ref()
            .map(to_jiff)
            .unwrap_or(Timestamp::UNIX_EPOCH),
        public: true,
    }
}

/// What a snapshot whose source template is gone reports as its resources.
pub fn snapshot_template_defaults() -> TemplateRecord {
    TemplateRecord {
        id: String::new(),
        aliases: Vec::new(),
        cpu_count: 2,
        memory_mb: 512,
        disk_size_mb: 1024,
        envd_version: ENVD_VERSION.into(),
        created_at: Timestamp::UNIX_EPOCH,
        public: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("500m"), Some(1));
        assert_eq!(parse_cpu("2"), Some(2));
        assert_eq!(parse_cpu("2500m"), Some(3));
        assert_eq!(parse_mem_mib("512Mi"), Some(512));
        assert_eq!(parse_mem_mib("1Gi"), Some(1024));
        assert_eq!(parse_mem_mib("1048576"), Some(1));
        assert_eq!(parse_mem_mib("x"), None);
    }

    fn claimed() -> Sandbox {
        let mut s = Sandbox::new("n", Default::default());
        s.metadata.namespace = Some("team-a".into());
        s.metadata.labels = Some(
            [
                (LABEL_SANDBOX_CLAIMED, "true"),
                (LABEL_SANDBOX_ID, "abc123"),
                (LABEL_SANDBOX_POOL, "base"),
                ("user", "l"),
                ("other", "x"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        s.metadata.annotations = Some(
            [
                (ANNOTATION_OWNER, "key"),
                (ANNOTATION_TEAM_ID, "team"),
                (ANNOTATION_CLAIM_TIMESTAMP, "2026-12-05T10:00:00Z"),
                (ANNOTATION_RUNTIME_ACCESS_TOKEN, "tok"),
                (
                    ANNOTATION_UPDATED_METADATA_IN_CLAIM,
                    r#"{"labels":["user"],"annotations":["m"]}"#,
                ),
                ("m", "v"),
                ("template-note", "not user metadata"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        s
    }

    #[test]
    fn claimed_sandbox_projection() {
        let now = Timestamp::now();
        let r = record_of(&claimed(), now).expect("record");
        assert_eq!(r.id.as_str(), "abc123");
        assert_eq!(r.owner_key_id, "key");
        assert_eq!(r.team_id, "team");
        assert_eq!(r.template_id, "base");
        assert_eq!(r.metadata, [("m".to_string(), "v".to_string())].into());
        assert_eq!(r.labels, [("user".to_string(), "l".to_string())].into());
        assert_eq!(r.envd_access_token.as_deref(), Some("tok"));
        assert_eq!(r.started_at.to_string(), "2026-12-05T10:00:00Z");
        assert_eq!(r.end_at, None);
        assert_eq!(r.state, SandboxState::Running);
        let mut paused = claimed();
        paused.spec.paused = true;
        assert_eq!(record_of(&paused, now).unwrap().state, SandboxState::Paused);
        // Pool members, reserved failures, ids that are not ours and deleting objects are none.
        let mut pool = claimed();
        pool.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SANDBOX_CLAIMED.into(), "false".into());
        assert!(record_of(&pool, now).is_none());
        let mut reserved = claimed();
        reserved
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_RESERVED_FAILED_SANDBOX.into(), "true".into());
        assert!(record_of(&reserved, now).is_none());
        let mut legacy = claimed();
        legacy
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SANDBOX_ID.into(), "ns--name".into());
        assert!(record_of(&legacy, now).is_none());
    }
}
