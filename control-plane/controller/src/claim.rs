//! The claim engine over plain data: which pool sandboxes a claim may take (and in what order),
//! the merge patch that takes one (optimistic concurrency through `metadata.resourceVersion`, so
//! two claimers can never both win), and the claim's phase arithmetic.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sandbox_api::duration::parse_go_duration;
use sandbox_api::keys::*;
use sandbox_api::state::{SandboxState, sandbox_state};
use sandbox_api::types::{SandboxPhase, claim_phase, condition};
use sandbox_api::{Sandbox, SandboxClaim, SandboxClaimStatus};
use serde_json::{Value, json};

use crate::conditions;

fn annotations(s: &Sandbox) -> Option<&BTreeMap<String, String>> {
    s.metadata.annotations.as_ref()
}

/// Pool sandboxes a claimer may try, best first: Available, unlocked, with a pod IP; those at the
/// set's current revision before older ones; each group rotated to start at `start` so
/// concurrent claimers spread out instead of all fighting over the first sandbox.
pub fn pick_candidates(
    pool: &[Sandbox],
    update_revision: Option<&str>,
    now: Timestamp,
    start: usize,
) -> Vec<String> {
    let mut fresh = Vec::new();
    let mut old = Vec::new();
    for s in pool {
        if sandbox_state(s, now) != SandboxState::Available {
            continue;
        }
        if annotations(s).is_some_and(|a| a.contains_key(ANNOTATION_LOCK)) {
            continue;
        }
        if s.metadata.creation_timestamp.is_none() {
            continue;
        }
        let ip = s
            .status
            .as_ref()
            .and_then(|st| st.pod_info.as_ref())
            .and_then(|p| p.pod_ip.as_deref());
        if ip.is_none_or(str::is_empty) {
            continue;
        }
        let name = s.metadata.name.clone().unwrap_or_default();
        let hash = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_TEMPLATE_HASH))
            .map(String::as_str);
        if update_revision.is_none() || hash == update_revision {
            fresh.push(name);
        } else {
            old.push(name);
        }
    }
    fresh.sort();
    old.sort();
    let rotate = |mut v: Vec<String>| {
        if !v.is_empty() {
            let k = start % v.len();
            v.rotate_left(k);
        }
        v
    };
    let mut out = rotate(fresh);
    out.extend(rotate(old));
    out
}

/// The `/init` request stored on a claimed sandbox and replayed by the controller.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InitRuntimeRequest {
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    pub access_token: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_refresh: bool,
}

/// Everything one claim attempt writes besides the lock itself.
#[derive(Debug, Clone)]
pub struct ClaimIdentity<'a> {
    pub claim: &'a SandboxClaim,
    pub lock: &'a str,
    pub now: Timestamp,
    /// `Some` when the runtime must be initialised (with the generated access token).
    pub init: Option<InitRuntimeRequest>,
}

fn strip_internal(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| !k.starts_with(AGENTS_PREFIX) && !k.starts_with(E2B_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Claim labels and annotations must not forge the sandbox id.
pub fn validate_claim_metadata(claim: &SandboxClaim) -> Result<(), String> {
    if claim.spec.labels.contains_key(LABEL_SANDBOX_ID)
        || claim.spec.annotations.contains_key(ANNOTATION_SANDBOX_ID)
    {
        return Err(format!(
            "{LABEL_SANDBOX_ID} is reserved and can't be set by a claim"
        ));
    }
    Ok(())
}

/// Applies the claim's template changes (owner label, claim labels/annotations, in-place image and
/// CPU) to a copy of the pod template.
pub fn claimed_template(template: &PodTemplateSpec, claim: &SandboxClaim) -> PodTemplateSpec {
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let mut t = template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(ANNOTATION_OWNER.into(), uid);
    labels.insert(
        LABEL_CLAIM_NAME.into(),
        claim.metadata.name.clone().unwrap_or_default(),
    );
    labels.extend(claim.spec.labels.clone());
    let extra = strip_internal(&claim.spec.annotations);
    if !extra.is_empty() {
        meta.annotations
            .get_or_insert_with(Default::default)
            .extend(extra);
    }
    if let (Some(iu), Some(spec)) = (&claim.spec.inplace_update, t.spec.as_mut())
        && let Some(c) = spec.containers.first_mut()
    {
        if let Some(image) = iu.image.as_ref().filter(|i| !i.is_empty()) {
            c.image = Some(image.clone());
        }
        if let Some(res) = &iu.resources {
            let r = c.resources.get_or_insert_with(Default::default);
            let apply = |target: &mut Option<BTreeMap<String, Quantity>>,
                         src: &BTreeMap<String, Quantity>| {
                if let (Some(cpu), Some(t)) = (src.get("cpu"), target.as_mut())
                    && t.get("cpu").is_some_and(|q| !q.0.is_empty() && q.0 != "0")
                {
                    t.insert("cpu".into(), cpu.clone());
                }
            };
            apply(&mut r.requests, &res.requests);
            apply(&mut r.limits, &res.limits);
        }
    }
    t
}

/// JSON merge patch that claims `sbx` for the claim, guarded by the sandbox's resourceVersion.
pub fn claim_patch(sbx: &Sandbox, id: &ClaimIdentity<'_>) -> Value {
    let claim = id.claim;
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let mut labels = serde_json::Map::new();
    labels.insert(LABEL_SANDBOX_CLAIMED.into(), json!("true"));
    labels.insert(
        LABEL_CLAIM_NAME.into(),
        json!(claim.metadata.name.clone().unwrap_or_default()),
    );
    for (k, v) in &claim.spec.labels {
        labels.insert(k.clone(), json!(v));
    }
    let mut ann = serde_json::Map::new();
    ann.insert(ANNOTATION_LOCK.into(), json!(id.lock));
    ann.insert(ANNOTATION_OWNER.into(), json!(uid));
    ann.insert(
        ANNOTATION_CLAIM_TIMESTAMP.into(),
        json!(id.now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
    );
    for (k, v) in &claim.spec.annotations {
        ann.insert(k.clone(), json!(v));
    }
    if let Some(init) = &id.init {
        ann.insert(
            ANNOTATION_INIT_RUNTIME_REQUEST.into(),
            json!(serde_json::to_string(init).expect("json")),
        );
        ann.insert(
            ANNOTATION_RUNTIME_ACCESS_TOKEN.into(),
            json!(init.access_token),
        );
    }
    if !claim.spec.dynamic_volumes_mount.is_empty() {
        ann.insert(
            ANNOTATION_CSI_VOLUME_CONFIG.into(),
            json!(serde_json::to_string(&claim.spec.dynamic_volumes_mount).expect("json")),
        );
    }
    let updated = json!({
        "labels": claim.spec.labels.keys().collect::<Vec<_>>(),
        "annotations": claim.spec.annotations.keys().collect::<Vec<_>>(),
    });
    ann.insert(
        ANNOTATION_UPDATED_METADATA_IN_CLAIM.into(),
        json!(updated.to_string()),
    );

    let mut spec = serde_json::Map::new();
    if let Some(t) = &claim.spec.shutdown_time {
        spec.insert("shutdownTime".into(), json!(t));
        spec.insert("pauseTime".into(), Value::Null);
    }
    if let Some(t) = &sbx.spec.template {
        spec.insert(
            "template".into(),
            serde_json::to_value(claimed_template(t, claim)).expect("json"),
        );
    }
    json!({
        "metadata": {
            "resourceVersion": sbx.metadata.resource_version,
            "ownerReferences": Value::Null,
            "labels": labels,
            "annotations": ann,
        },
        "spec": spec,
    })
}

/// Applies the same changes to a sandbox about to be created for the claim (no stock).
pub fn claim_new_sandbox(mut sbx: Sandbox, id: &ClaimIdentity<'_>) -> Sandbox {
    let patch = claim_patch(&sbx, id);
    sbx.metadata.owner_references = None;
    let md = &patch["metadata"];
    let labels = sbx.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in md["labels"].as_object().into_iter().flatten() {
        labels.insert(k.clone(), v.as_str().unwrap_or_default().into());
    }
    let ann = sbx
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    for (k, v) in md["annotations"].as_object().into_iter().flatten() {
        ann.insert(k.clone(), v.as_str().unwrap_or_default().into());
    }
    ann.insert(ANNOTATION_SANDBOX_PRIORITY.into(), "100".into());
    if let Some(t) = &id.claim.spec.shutdown_time {
        sbx.spec.shutdown_time = Some(t.clone());
        sbx.spec.pause_time = None;
    }
    if let Some(t) = &sbx.spec.template {
        sbx.spec.template = Some(claimed_template(t, id.claim));
    }
    sbx
}

/// Sandbox is owned by this claim (annotation `owner` = claim UID).
pub fn owned_by_claim(s: &Sandbox, claim_uid: &str) -> bool {
    annotations(s)
        .and_then(|a| a.get(ANNOTATION_OWNER))
        .is_some_and(|o| o == claim_uid)
}

/// What the claim reconcile should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimStep {
    /// Claim up to this many more sandboxes.
    Claim(usize),
    /// Completed: delete the claim object after this long (None = keep forever).
    Completed { delete_after: Option<Duration> },
}

fn parse_or(raw: Option<&str>, default: Duration) -> (bool, Duration) {
    match raw.map(parse_go_duration) {
        Some(Ok(d)) => (d.is_negative(), d.magnitude),
        _ => (false, default),
    }
}

/// Claim phase arithmetic (upstream `CalculateClaimStatus` + TTL): returns the new status and
/// the next step. `actual` counts live sandboxes owned by the claim (recovers a lost status write).
pub fn claim_progress(
    claim: &SandboxClaim,
    actual: i32,
    now: Timestamp,
) -> (SandboxClaimStatus, ClaimStep) {
    let mut st = claim.status.clone().unwrap_or_default();
    let desired = claim.spec.replicas.unwrap_or(1).max(1);
    st.observed_generation = claim.metadata.generation;
    st.claimed_replicas = st.claimed_replicas.max(actual);
    let ttl = |st: &SandboxClaimStatus| {
        let (neg, ttl) = parse_or(
            claim.spec.ttl_after_completed.as_deref(),
            Duration::from_secs(3600),
        );
        if neg {
            return None;
        }
        let done = st.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
        let elapsed = Duration::try_from(now.duration_since(done)).unwrap_or(Duration::ZERO);
        Some(ttl.saturating_sub(elapsed))
    };
    if st.phase.as_deref() == Some(claim_phase::COMPLETED) {
        let d = ttl(&st);
        return (st, ClaimStep::Completed { delete_after: d });
    }
    if st.phase.is_none() || st.phase.as_deref() == Some("") {
        st.phase = Some(claim_phase::CLAIMING.into());
        st.claim_start_time = Some(Time(now));
    }
    let start = st.claim_start_time.as_ref().map(|t| t.0).unwrap_or(now);
    let (_, timeout) = parse_or(claim.spec.claim_timeout.as_deref(), Duration::from_secs(60));
    let elapsed = Duration::try_from(now.duration_since(start)).unwrap_or(Duration::ZERO);
    if st.claimed_replicas >= desired {
        st.phase = Some(claim_phase::COMPLETED.into());
        st.completion_time = Some(Time(now));
        st.message = Some("all replicas claimed".into());
        conditions::set(
            &mut st.conditions,
            "Completed",
            true,
            "AllReplicasClaimed",
            "",
            now,
        );
        let d = ttl(&st);
        return (st, ClaimStep::Completed { delete_after: d });
    }
    if elapsed >= timeout {
        st.phase = Some(claim_phase::COMPLETED.into());
        st.completion_time = Some(Time(now));
        st.message = Some(format!(
            "claim timed out with {} of {desired} replicas claimed",
            st.claimed_replicas
        ));
        conditions::set(
            &mut st.conditions,
            "TimedOut",
            true,
            "ClaimTimeoutReached",
            "",
            now,
        );
        conditions::set(
            &mut st.conditions,
            "Completed",
            true,
            "TimeoutReached",
            "",
            now,
        );
        let d = ttl(&st);
        return (st, ClaimStep::Completed { delete_after: d });
    }
    let remaining = (desired - st.claimed_replicas) as usize;
    (st, ClaimStep::Claim(remaining.min(50)))
}

/// How long a claim waits for a sandbox it created (`waitReadyTimeout`, default 30 s).
pub fn wait_ready_timeout(claim: &SandboxClaim) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(30);
    match parse_or(claim.spec.wait_ready_timeout.as_deref(), DEFAULT) {
        (true, _) => DEFAULT,
        (false, d) => d,
    }
}

/// Where a sandbox the claim created stands: `Ok(true)` observed at its generation, Running and
/// Ready with a pod IP; `Ok(false)` not yet; `Err` it will not get there (deleted, terminal phase,
/// or `Ready=False/StartContainerFailed`).
pub fn created_sandbox_ready(s: &Sandbox) -> Result<bool, String> {
    if s.metadata.deletion_timestamp.is_some() {
        return Err("sandbox is being deleted".into());
    }
    let Some(st) = s.status.as_ref() else {
        return Ok(false);
    };
    let phase = st.known_phase();
    if let Some(p) = phase.filter(|p| p.is_terminal()) {
        return Err(format!("sandbox ended {p}"));
    }
    if let Some(c) = st.conditions.iter().find(|c| {
        c.type_ == condition::READY
            && c.status == "False"
            && c.reason.as_deref() == Some(condition::REASON_START_CONTAINER_FAILED)
    }) {
        return Err(format!(
            "a container cannot start: {}",
            c.message.as_deref().unwrap_or_default()
        ));
    }
    let has_ip = st
        .pod_info
        .as_ref()
        .and_then(|p| p.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty());
    Ok(st.observed_generation == s.metadata.generation
        && phase == Some(SandboxPhase::Running)
        && conditions::is_true(&st.conditions, condition::READY)
        && has_ip)
}

/// Completed status for a claim whose SandboxSet does not exist.
pub fn set_not_found(claim: &SandboxClaim, now: Timestamp) -> SandboxClaimStatus {
    let mut st = claim.status.clone().unwrap_or_default();
    st.phase = Some(claim_phase::COMPLETED.into());
    st.completion_time.get_or_insert(Time(now));
    st.claim_start_time.get_or_insert(Time(now));
    st.message = Some(format!("SandboxSet {} not found", claim.spec.template_name));
    conditions::set(
        &mut st.conditions,
        "Completed",
        true,
        "SandboxSetNotFound",
        st.message.as_deref().unwrap_or(""),
        now,
    );
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use k8s_openapi::jiff::ToSpan;
    use sandbox_api::{Condition, SandboxClaimSpec, SandboxStatus};

    fn pool_sbx(name: &str, hash: &str, ready: bool, locked: bool) -> Sandbox {
        let mut s = Sandbox::new(name, Default::default());
        s.metadata.creation_timestamp = Some(Time(Timestamp::now()));
        s.metadata.resource_version = Some("7".into());
        s.metadata.labels = Some([(LABEL_TEMPLATE_HASH.to_string(), hash.to_string())].into());
        if locked {
            s.metadata.annotations = Some([(ANNOTATION_LOCK.to_string(), "x".to_string())].into());
        }
        s.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "agents.kruise.io/v1alpha1".into(),
            kind: "SandboxSet".into(),
            name: "p".into(),
            uid: "set".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        s.status = Some(SandboxStatus {
            phase: Some("Running".into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            pod_info: Some(sandbox_api::PodInfo {
                pod_ip: Some("127.0.1.9".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        s
    }

    #[test]
    fn created_sandbox_readiness_verdicts() {
        let mut s = pool_sbx("n", "h", true, false);
        s.metadata.generation = Some(2);
        s.status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(created_sandbox_ready(&s), Ok(true));
        // Not yet: an older generation observed, not Ready, no IP, still Pending.
        let mut stale = s.clone();
        stale.status.as_mut().unwrap().observed_generation = Some(1);
        assert_eq!(created_sandbox_ready(&stale), Ok(false));
        let mut unready = pool_sbx("n", "h", false, false);
        unready.status.as_mut().unwrap().observed_generation = None;
        assert_eq!(created_sandbox_ready(&unready), Ok(false));
        let mut no_ip = s.clone();
        no_ip.status.as_mut().unwrap().pod_info = None;
        assert_eq!(created_sandbox_ready(&no_ip), Ok(false));
        let mut pending = s.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(created_sandbox_ready(&pending), Ok(false));
        // Never: terminal, deleting, or a container that cannot start.
        let mut failed = s.clone();
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(created_sandbox_ready(&failed).is_err());
        let mut deleting = s.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(created_sandbox_ready(&deleting).is_err());
        let mut crashing = unready.clone();
        let c = &mut crashing.status.as_mut().unwrap().conditions[0];
        c.reason = Some("StartContainerFailed".into());
        c.message = Some("back-off".into());
        assert_eq!(
            created_sandbox_ready(&crashing),
            Err("a container cannot start: back-off".into())
        );
    }

    #[test]
    fn wait_ready_timeout_defaults_to_30s() {
        let mut c = claim(1);
        assert_eq!(wait_ready_timeout(&c), Duration::from_secs(30));
        c.spec.wait_ready_timeout = Some("1m30s".into());
        assert_eq!(wait_ready_timeout(&c), Duration::from_secs(90));
        c.spec.wait_ready_timeout = Some("-5s".into());
        assert_eq!(wait_ready_timeout(&c), Duration::from_secs(30));
    }

    fn claim(replicas: i32) -> SandboxClaim {
        let mut c = SandboxClaim::new(
            "c",
            SandboxClaimSpec {
                template_name: "p".into(),
                replicas: Some(replicas),
                ..Default::default()
            },
        );
        c.metadata.uid = Some("claim-uid".into());
        c.spec.claim_timeout = Some("1m".into());
        c.spec.ttl_after_completed = Some("60m".into());
        c
    }

    #[test]
    fn candidates_skip_locked_and_unready_and_prefer_current_revision() {
        let pool = vec![
            pool_sbx("a", "old", true, false),
            pool_sbx("b", "new", true, false),
            pool_sbx("c", "new", true, true),
            pool_sbx("d", "new", false, false),
            pool_sbx("e", "new", true, false),
        ];
        let now = Timestamp::now();
        assert_eq!(pick_candidates(&pool, Some("new"), now, 0), ["b", "e", "a"]);
        assert_eq!(pick_candidates(&pool, Some("new"), now, 1), ["e", "b", "a"]);
    }

    #[test]
    fn claim_patch_locks_with_resource_version_and_drops_owner() {
        let mut c = claim(1);
        c.spec.labels = [("team".to_string(), "a".to_string())].into();
        c.spec.shutdown_time = Some(Time(Timestamp::now() + 1.hour()));
        let s = pool_sbx("a", "new", true, false);
        let id = ClaimIdentity {
            claim: &c,
            lock: "L",
            now: Timestamp::now(),
            init: Some(InitRuntimeRequest {
                env_vars: Default::default(),
                access_token: "tok".into(),
                skip_refresh: false,
            }),
        };
        let p = claim_patch(&s, &id);
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        assert!(p["metadata"]["ownerReferences"].is_null());
        assert_eq!(p["metadata"]["labels"][LABEL_SANDBOX_CLAIMED], "true");
        assert_eq!(p["metadata"]["labels"]["team"], "a");
        assert_eq!(p["metadata"]["annotations"][ANNOTATION_OWNER], "claim-uid");
        assert_eq!(p["metadata"]["annotations"][ANNOTATION_LOCK], "L");
        assert_eq!(
            p["metadata"]["annotations"][ANNOTATION_RUNTIME_ACCESS_TOKEN],
            "tok"
        );
        assert!(p["spec"]["pauseTime"].is_null());
        assert!(p["spec"]["shutdownTime"].is_string());
    }

    #[test]
    fn claim_phases() {
        let now = Timestamp::now();
        let c = claim(3);
        let (st, step) = claim_progress(&c, 0, now);
        assert_eq!(st.phase.as_deref(), Some("Claiming"));
        assert_eq!(step, ClaimStep::Claim(3));
        let mut c2 = c.clone();
        c2.status = Some(st.clone());
        let (st2, step) = claim_progress(&c2, 3, now);
        assert_eq!(st2.phase.as_deref(), Some("Completed"));
        assert_eq!(st2.claimed_replicas, 3);
        assert!(matches!(
            step,
            ClaimStep::Completed {
                delete_after: Some(_)
            }
        ));
        // timeout keeps the partial count
        let mut c3 = c.clone();
        c3.status = Some(SandboxClaimStatus {
            phase: Some("Claiming".into()),
            claimed_replicas: 1,
            claim_start_time: Some(Time(now - 2.minutes())),
            ..Default::default()
        });
        let (st3, _) = claim_progress(&c3, 1, now);
        assert_eq!(st3.phase.as_deref(), Some("Completed"));
        assert!(conditions::is_true(&st3.conditions, "TimedOut"));
        assert_eq!(st3.claimed_replicas, 1);
        // negative TTL: never delete
        let mut c4 = c2.clone();
        c4.status = Some(st2);
        c4.spec.ttl_after_completed = Some("-1s".into());
        assert_eq!(
            claim_progress(&c4, 3, now).1,
            ClaimStep::Completed { delete_after: None }
        );
        // batches are capped at 50
        assert_eq!(claim_progress(&claim(200), 0, now).1, ClaimStep::Claim(50));
    }

    #[test]
    fn reserved_sandbox_id_is_rejected() {
        let mut c = claim(1);
        c.spec.labels.insert(LABEL_SANDBOX_ID.into(), "x".into());
        assert!(validate_claim_metadata(&c).is_err());
    }
}
