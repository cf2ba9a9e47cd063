//! SandboxClaim logic over plain data, the Kubernetes side of claiming: the merge patch that
//! takes a sandbox for a claim (optimistic concurrency through `metadata.resourceVersion`, so two
//! claimers can never both win), the claimed template, and the claim's phase arithmetic. Picking,
//! the take loop, `/init`, reserve-or-delete and readiness are the claim engine's
//! (`sandbox-core`), shared with the manager.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sandbox_api::claim::{InPlaceChange, Take};
use sandbox_api::duration::parse_go_duration;
use sandbox_api::keys::*;
use sandbox_api::types::claim_phase;
use sandbox_api::{Sandbox, SandboxClaim, SandboxClaimStatus};
use sandbox_core::ClaimIdentity;
use serde_json::{Value, json};

use crate::conditions;

fn annotations(s: &Sandbox) -> Option<&BTreeMap<String, String>> {
    s.metadata.annotations.as_ref()
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
    if let Some(iu) = &claim.spec.inplace_update {
        let res = iu.resources.as_ref();
        InPlaceChange {
            image: iu.image.clone(),
            cpu_request: res.and_then(|r| r.requests.get("cpu").cloned()),
            cpu_limit: res.and_then(|r| r.limits.get("cpu").cloned()),
        }
        .apply(&mut t);
    }
    t
}

/// What a take writes for `claim` (the shared marks of [`Take`], plus the claim's name label,
/// its labels and annotations, CSI mounts, timeouts and the claimed template).
fn claim_take<'a>(sbx: &Sandbox, claim: &'a SandboxClaim, id: &'a ClaimIdentity) -> Take<'a> {
    let owner = claim.metadata.uid.as_deref().unwrap_or_default();
    let mut take = Take::new(id, owner);
    take.labels.insert(
        LABEL_CLAIM_NAME.into(),
        claim.metadata.name.clone().unwrap_or_default(),
    );
    take.labels.extend(claim.spec.labels.clone());
    take.annotations.extend(claim.spec.annotations.clone());
    if !claim.spec.dynamic_volumes_mount.is_empty() {
        take.annotations.insert(
            ANNOTATION_CSI_VOLUME_CONFIG.into(),
            sandbox_api::csi::annotation_value(&claim.spec.dynamic_volumes_mount),
        );
    }
    let updated = json!({
        "labels": claim.spec.labels.keys().collect::<Vec<_>>(),
        "annotations": claim.spec.annotations.keys().collect::<Vec<_>>(),
    });
    take.annotations.insert(
        ANNOTATION_UPDATED_METADATA_IN_CLAIM.into(),
        updated.to_string(),
    );
    if let Some(t) = &claim.spec.shutdown_time {
        take.spec.insert("shutdownTime".into(), json!(t));
        take.spec.insert("pauseTime".into(), Value::Null);
    }
    if let Some(t) = &sbx.spec.template {
        take.spec.insert(
            "template".into(),
            serde_json::to_value(claimed_template(t, claim)).expect("json"),
        );
    }
    take
}

/// JSON merge patch that claims `sbx` for `claim` with one engine attempt's lock and `/init`
/// request, guarded by the sandbox's resourceVersion.
pub fn claim_patch(sbx: &Sandbox, claim: &SandboxClaim, id: &ClaimIdentity) -> Value {
    claim_take(sbx, claim, id).patch(sbx)
}

/// Applies the same changes to a sandbox about to be created for the claim (no stock).
pub fn claim_new_sandbox(
    sbx: Sandbox,
    claim: &SandboxClaim,
    id: &ClaimIdentity,
) -> Result<Sandbox, serde_json::Error> {
    claim_take(&sbx, claim, id).apply_to_new(sbx)
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
    const DEFAULT: Duration = sandbox_core::DEFAULT_WAIT_READY_TIMEOUT;
    match parse_or(claim.spec.wait_ready_timeout.as_deref(), DEFAULT) {
        (true, _) => DEFAULT,
        (false, d) => d,
    }
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
    use sandbox_core::InitRuntimeRequest;

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
    fn claim_patch_locks_with_resource_version_and_drops_owner() {
        let mut c = claim(1);
        c.spec.labels = [("team".to_string(), "a".to_string())].into();
        c.spec.shutdown_time = Some(Time(Timestamp::now() + 1.hour()));
        let s = pool_sbx("a", "new", true, false);
        let id = ClaimIdentity {
            lock: "L".into(),
            claimed_at: std::time::SystemTime::now(),
            init: Some(InitRuntimeRequest {
                env_vars: Default::default(),
                access_token: "tok".into(),
                skip_refresh: false,
            }),
        };
        let p = claim_patch(&s, &c, &id);
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
