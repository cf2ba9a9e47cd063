//! The Sandbox state machine over plain data: given the sandbox, its pod (if any) and the time,
//! decide what to do (timers, pod create/delete, finalizers) and what the status becomes. The kube
//! adapter (`reconcile::sandbox`) performs the plan; nothing here does I/O.
//!
//! Phases: "" → Pending → Running ⇄ Paused → Resuming → Running, Running → Upgrading → Running
//! (pod-replacement upgrade), and the terminal Succeeded/Failed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sandbox_api::duration::parse_go_duration;
use sandbox_api::keys::*;
use sandbox_api::types::{condition as cond, phase};
use sandbox_api::{Sandbox, SandboxStatus};

use crate::conditions;

/// Grace period of the pod deletion that pauses a sandbox.
pub const PAUSE_GRACE_SECONDS: i64 = 5;
/// `reserve-paused-sandbox-duration: forever` and invalid values mean 100 years.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What the reconcile should do with the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    None,
    Create,
    /// Delete with this grace period (None = pod default).
    Delete {
        grace_seconds: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Timer outcome (checked before the phase machine).
#[derive(Debug, Clone, PartialEq)]
pub enum TimerAction {
    None,
    DeleteSandbox,
    /// Set `spec.paused=true` (optimistic lock); with retention also move both timers to this.
    Pause {
        retain_until: Option<Time>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub timer: TimerAction,
    pub pod: PodAction,
    pub add_finalizer: bool,
    pub remove_finalizer: bool,
    /// The status to write (compare with the current one to skip no-op writes).
    pub status: SandboxStatus,
    pub requeue_after: Option<Duration>,
    pub events: Vec<PlannedEvent>,
    /// Pod is Ready and the runtime must receive `/init` (claimed sandbox, or after a resume).
    pub init_runtime: bool,
    /// The pod should be brought to the current template in place (metadata/images).
    pub inplace_update: bool,
    /// Write `hash-immutable-part` with this value (once).
    pub set_immutable_hash: Option<String>,
}

/// Facts about the sandbox's pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodFacts {
    pub exists: bool,
    pub terminating: bool,
    pub phase: String,
    pub ready: bool,
    pub ip: Option<String>,
    pub node: Option<String>,
    pub uid: Option<String>,
    /// Controller ownerRef UID.
    pub owner_uid: Option<String>,
    pub template_hash: Option<String>,
    /// Message of the first Waiting container, if any.
    pub waiting: Option<String>,
}

impl PodFacts {
    pub fn from_pod(pod: Option<&Pod>) -> PodFacts {
        let Some(pod) = pod else {
            return PodFacts::default();
        };
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let waiting = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| {
                cs.iter().find_map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|st| st.waiting.as_ref())
                        .map(|w| {
                            format!(
                                "{}: {}",
                                w.reason.clone().unwrap_or_default(),
                                w.message.clone().unwrap_or_default()
                            )
                        })
                })
            });
        PodFacts {
            exists: true,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            ready,
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|s| !s.is_empty()),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            uid: pod.metadata.uid.clone(),
            owner_uid: pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            template_hash: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_POD_TEMPLATE_HASH).cloned()),
            waiting,
        }
    }
}

/// Inputs of one reconcile.
pub struct Observed<'a> {
    pub sandbox: &'a Sandbox,
    pub pod: PodFacts,
    pub now: Timestamp,
    /// Current revision of `spec.template` (see `revision::sandbox_revision`).
    pub revision: String,
    /// Current immutable-part hash of the resolved template.
    pub immutable_hash: Option<String>,
}

fn annotation<'a>(sbx: &'a Sandbox, key: &str) -> Option<&'a str> {
    sbx.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn has_finalizer(sbx: &Sandbox) -> bool {
    sbx.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER_SANDBOX)
}

fn retention(sbx: &Sandbox) -> Option<Duration> {
    let raw = annotation(sbx, ANNOTATION_RESERVE_PAUSED_SANDBOX_DURATION)?;
    if raw == "forever" {
        return Some(FOREVER);
    }
    Some(match parse_go_duration(raw) {
        Ok(d) if !d.is_negative() => d.magnitude,
        _ => FOREVER,
    })
}

fn until(now: Timestamp, t: &Time) -> Duration {
    let d = t.0.duration_since(now);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// Shutdown and pause timers.
pub fn check_timers(sbx: &Sandbox, now: Timestamp) -> (TimerAction, Option<Duration>) {
    if sbx.metadata.deletion_timestamp.is_some() {
        return (TimerAction::None, None);
    }
    let paused = sbx.spec.paused;
    let pause_due = sbx.spec.pause_time.as_ref().is_some_and(|t| t.0 <= now);
    let retention = retention(sbx);
    if let Some(st) = &sbx.spec.shutdown_time
        && st.0 <= now
        && !(retention.is_some() && !paused && pause_due)
    {
        return (TimerAction::DeleteSandbox, None);
    }
    if pause_due && !paused {
        let retain_until = match (retention, &sbx.spec.shutdown_time) {
            (Some(r), Some(_)) => {
                let secs = now.as_second().saturating_add(r.as_secs() as i64);
                Some(Time(
                    Timestamp::from_second(secs.min(253_402_300_799)).unwrap_or(now),
                ))
            }
            _ => None,
        };
        return (TimerAction::Pause { retain_until }, None);
    }
    let mut next: Option<Duration> = None;
    for t in [
        &sbx.spec.shutdown_time,
        if paused { &None } else { &sbx.spec.pause_time },
    ]
    .into_iter()
    .flatten()
    {
        if t.0 > now {
            let d = until(now, t);
            next = Some(next.map_or(d, |n| n.min(d)));
        }
    }
    (TimerAction::None, next)
}

fn event(warning: bool, reason: &str, message: impl Into<String>) -> PlannedEvent {
    PlannedEvent {
        warning,
        reason: reason.into(),
        message: message.into(),
    }
}

/// Plans one reconcile of a live (not deleting) sandbox.
pub fn plan(o: &Observed<'_>) -> Plan {
    let sbx = o.sandbox;
    let now = o.now;
    let mut status = sbx.status.clone().unwrap_or_default();
    let old_phase = status.phase.clone().unwrap_or_default();
    let mut p = Plan {
        timer: TimerAction::None,
        pod: PodAction::None,
        add_finalizer: false,
        remove_finalizer: false,
        status: status.clone(),
        requeue_after: None,
        events: Vec::new(),
        init_runtime: false,
        inplace_update: false,
        set_immutable_hash: None,
    };

    // Deletion: take the pod down, then let go of the finalizer.
    if sbx.metadata.deletion_timestamp.is_some() {
        if o.pod.exists && !o.pod.terminating && o.pod.owner_uid == sbx.metadata.uid {
            p.pod = PodAction::Delete {
                grace_seconds: None,
            };
            p.events.push(event(
                false,
                "SandboxTerminating",
                "deleting the sandbox pod",
            ));
        }
        if (!o.pod.exists || o.pod.owner_uid != sbx.metadata.uid) && has_finalizer(sbx) {
            p.remove_finalizer = true;
        }
        return p;
    }
    if old_phase == phase::SUCCEEDED || old_phase == phase::FAILED {
        return p;
    }
    if annotation(sbx, ANNOTATION_HASH_IMMUTABLE_PART).is_none()
        && let Some(h) = &o.immutable_hash
    {
        p.set_immutable_hash = Some(h.clone());
    }

    let (timer, next) = check_timers(sbx, now);
    if timer != TimerAction::None {
        p.timer = timer;
        return p;
    }
    p.requeue_after = next;

    // A pod of an older sandbox with the same name is never adopted (#756/#757).
    let stale_pod =
        o.pod.exists && o.pod.owner_uid.is_some() && o.pod.owner_uid != sbx.metadata.uid;
    let pod = if stale_pod {
        PodFacts::default()
    } else {
        o.pod.clone()
    };
    if stale_pod {
        p.events.push(event(
            true,
            "PodOwnerMismatch",
            "a pod of an older sandbox with this name is still terminating",
        ));
    }

    let mut ph = if old_phase.is_empty() {
        phase::PENDING.to_string()
    } else {
        old_phase.clone()
    };
    let pinned_revision = status.update_revision.clone();
    let mut revision = o.revision.clone();
    let upgrade_policy = sbx
        .spec
        .upgrade_policy
        .as_ref()
        .and_then(|u| u.type_.clone())
        .filter(|t| !t.is_empty());

    match ph.as_str() {
        phase::PENDING => {
            if stale_pod {
                p.requeue_after = Some(Duration::from_secs(2));
            } else if !pod.exists {
                p.pod = PodAction::Create;
            } else if pod.phase == "Succeeded" || pod.phase == "Failed" {
                ph = pod.phase.clone();
            } else if pod.phase == "Running" {
                ph = phase::RUNNING.into();
                sync_running(&mut status.conditions, &pod, now);
            }
        }
        phase::RUNNING => {
            // A pause deletes the pod before the status write; if that write lost a conflict, the
            // retry sees `Running` with the pod already going away. That is the pause in
            // progress, not a lost pod, so a sandbox asked to pause never fails here.
            let pausing = sbx.spec.paused;
            if (!pod.exists || pod.terminating) && !pausing {
                ph = phase::FAILED.into();
                status.message = Some("Pod Not Found".into());
            } else if pod.phase == "Succeeded" || pod.phase == "Failed" {
                ph = pod.phase.clone();
            } else if upgrade_policy.is_some()
                && pinned_revision.as_deref().is_some_and(|r| r != revision)
            {
                ph = phase::UPGRADING.into();
                conditions::set(
                    &mut status.conditions,
                    cond::UPGRADING,
                    false,
                    cond::REASON_UPGRADE_POD,
                    "",
                    now,
                );
                conditions::set(
                    &mut status.conditions,
                    cond::READY,
                    false,
                    cond::REASON_UPGRADING,
                    "",
                    now,
                );
                p.pod = PodAction::Delete {
                    grace_seconds: None,
                };
            } else if sbx.spec.paused {
                ph = phase::PAUSED.into();
                conditions::remove(&mut status.conditions, cond::SANDBOX_RESUMED);
                conditions::set(
                    &mut status.conditions,
                    cond::SANDBOX_PAUSED,
                    false,
                    cond::REASON_PENDING,
                    "",
                    now,
                );
                conditions::set(
                    &mut status.conditions,
                    cond::READY,
                    false,
                    cond::REASON_PENDING,
                    "sandbox is pausing",
                    now,
                );
                p.add_finalizer = !has_finalizer(sbx);
                if pod.exists && !pod.terminating {
                    p.pod = PodAction::Delete {
                        grace_seconds: Some(PAUSE_GRACE_SECONDS),
                    };
                }
                // Keep the old revision while pausing so a template change made now is seen later.
                revision = pinned_revision.clone().unwrap_or(revision);
            } else {
                sync_running(&mut status.conditions, &pod, now);
                if pod.template_hash.as_deref() != Some(revision.as_str())
                    && upgrade_policy.is_none()
                {
                    let allowed = match (
                        annotation(sbx, ANNOTATION_HASH_IMMUTABLE_PART),
                        &o.immutable_hash,
                    ) {
                        (Some(stored), Some(cur)) => stored == cur,
                        _ => true,
                    };
                    if allowed {
                        p.inplace_update = true;
                    } else if conditions::reason(&status.conditions, cond::INPLACE_UPDATE)
                        != Some(cond::REASON_FAILED)
                    {
                        conditions::set(
                            &mut status.conditions,
                            cond::INPLACE_UPDATE,
                            false,
                            cond::REASON_FAILED,
                            "only images, resources, labels and annotations can change in place",
                            now,
                        );
                        p.events.push(event(true, "InplaceUpdateForbidden",
                            "the template changed beyond images, resources and metadata; set spec.upgradePolicy to replace the pod"));
                    }
                }
                if pod.ready
                    && annotation(sbx, ANNOTATION_INIT_RUNTIME_REQUEST).is_some()
                    && !conditions::is_true(&status.conditions, cond::RUNTIME_INITIALIZED)
                    && conditions::reason(&status.conditions, cond::RUNTIME_INITIALIZED)
                        != Some(cond::REASON_FAILED)
                {
                    p.init_runtime = true;
                }
            }
        }
        phase::PAUSED => {
            let paused_done = conditions::is_true(&status.conditions, cond::SANDBOX_PAUSED);
            if !paused_done {
                revision = pinned_revision.clone().unwrap_or(revision);
                p.add_finalizer = !has_finalizer(sbx);
                conditions::set(
                    &mut status.conditions,
                    cond::READY,
                    false,
                    cond::REASON_PENDING,
                    "sandbox is pausing",
                    now,
                );
                if pod.exists {
                    if !pod.terminating {
                        p.pod = PodAction::Delete {
                            grace_seconds: Some(PAUSE_GRACE_SECONDS),
                        };
                    }
                    p.requeue_after = Some(Duration::from_secs(1));
                } else {
                    conditions::set(
                        &mut status.conditions,
                        cond::SANDBOX_PAUSED,
                        true,
                        cond::REASON_STOP_PAUSE_SUCCEED,
                        "",
                        now,
                    );
                    status.node_name = None;
                    status.sandbox_ip = None;
                    status.pod_info = None;
                }
            } else if !sbx.spec.paused {
                ph = phase::RESUMING.into();
                conditions::set(
                    &mut status.conditions,
                    cond::SANDBOX_RESUMED,
                    false,
                    cond::REASON_CREATE_POD,
                    "",
                    now,
                );
                if !pod.exists {
                    p.pod = PodAction::Create;
                }
            } else if annotation(sbx, ANNOTATION_UPGRADE_RESUME_TRIGGER) == Some("true")
                && upgrade_policy.is_some()
            {
                // Two-phase upgrade of a paused sandbox: resume it first, then wait for the
                // update ops to patch the template.
                ph = phase::UPGRADING.into();
                conditions::set(
                    &mut status.conditions,
                    cond::UPGRADING,
                    false,
                    cond::REASON_RESUMING,
                    "",
                    now,
                );
                conditions::set(
                    &mut status.conditions,
                    cond::READY,
                    false,
                    cond::REASON_UPGRADING,
                    "",
                    now,
                );
                if !pod.exists {
                    p.pod = PodAction::Create;
                }
            }
        }
        phase::RESUMING => {
            if pod.exists && pod.terminating {
                p.requeue_after = Some(Duration::from_secs(1));
            } else if !pod.exists {
                p.pod = PodAction::Create;
            } else if pod.phase == "Running" {
                ph = phase::RUNNING.into();
                conditions::set(
                    &mut status.conditions,
                    cond::SANDBOX_RESUMED,
                    true,
                    cond::REASON_RESUME_POD,
                    "",
                    now,
                );
                conditions::remove(&mut status.conditions, cond::SANDBOX_PAUSED);
                if annotation(sbx, ANNOTATION_INIT_RUNTIME_REQUEST).is_some() {
                    conditions::set(
                        &mut status.conditions,
                        cond::RUNTIME_INITIALIZED,
                        false,
                        cond::REASON_PENDING,
                        "",
                        now,
                    );
                }
                sync_running(&mut status.conditions, &pod, now);
                p.remove_finalizer = has_finalizer(sbx);
            }
        }
        phase::UPGRADING
            if conditions::reason(&status.conditions, cond::UPGRADING)
                == Some(cond::REASON_RESUMING) =>
        {
            if !pod.exists {
                p.pod = PodAction::Create;
            } else if pod.ready {
                conditions::set(
                    &mut status.conditions,
                    cond::UPGRADING,
                    false,
                    cond::REASON_RESUME_SUCCEED,
                    "",
                    now,
                );
            } else {
                p.requeue_after = Some(Duration::from_secs(1));
            }
        }
        phase::UPGRADING
            if conditions::reason(&status.conditions, cond::UPGRADING)
                == Some(cond::REASON_RESUME_SUCCEED)
                && pod.template_hash.as_deref() == Some(revision.as_str()) =>
        {
            // Resumed; waiting for phase 2 (the template patch). If the trigger went away with
            // no template change, the upgrade is abandoned.
            if annotation(sbx, ANNOTATION_UPGRADE_RESUME_TRIGGER) != Some("true") {
                ph = phase::RUNNING.into();
                conditions::remove(&mut status.conditions, cond::UPGRADING);
                sync_running(&mut status.conditions, &pod, now);
            } else {
                p.requeue_after = Some(Duration::from_secs(1));
            }
        }
        phase::UPGRADING => {
            // Pod-replacement upgrade (Recreate): old pod out, new pod in, wait for Ready.
            if conditions::reason(&status.conditions, cond::UPGRADING)
                != Some(cond::REASON_UPGRADE_POD)
            {
                conditions::set(
                    &mut status.conditions,
                    cond::UPGRADING,
                    false,
                    cond::REASON_UPGRADE_POD,
                    "",
                    now,
                );
            }
            if pod.exists && pod.template_hash.as_deref() != Some(revision.as_str()) {
                if !pod.terminating {
                    p.pod = PodAction::Delete {
                        grace_seconds: None,
                    };
                }
                p.requeue_after = Some(Duration::from_secs(1));
            } else if !pod.exists {
                p.pod = PodAction::Create;
            } else if pod.ready {
                ph = phase::RUNNING.into();
                conditions::set(
                    &mut status.conditions,
                    cond::UPGRADING,
                    true,
                    cond::REASON_SUCCEEDED,
                    "",
                    now,
                );
                sync_running(&mut status.conditions, &pod, now);
                if annotation(sbx, ANNOTATION_INIT_RUNTIME_REQUEST).is_some() {
                    conditions::set(
                        &mut status.conditions,
                        cond::RUNTIME_INITIALIZED,
                        false,
                        cond::REASON_PENDING,
                        "",
                        now,
                    );
                }
            } else {
                status.node_name = pod.node.clone();
                status.sandbox_ip = pod.ip.clone();
            }
        }
        _ => {}
    }

    if (ph == phase::RUNNING
        || ph == phase::PENDING
        || ph == phase::RESUMING
        || ph == phase::UPGRADING)
        && pod.exists
        && !stale_pod
    {
        status.node_name = pod.node.clone();
        status.sandbox_ip = pod.ip.clone();
        status.pod_info = Some(sandbox_api::PodInfo {
            node_name: pod.node.clone(),
            pod_ip: pod.ip.clone(),
            pod_uid: pod.uid.clone(),
            ..Default::default()
        });
    }
    if ph == phase::FAILED || ph == phase::SUCCEEDED {
        conditions::set(&mut status.conditions, cond::READY, false, "", "", now);
    }
    if ph != old_phase {
        let (warning, msg) = match ph.as_str() {
            phase::FAILED => (
                true,
                status
                    .message
                    .clone()
                    .unwrap_or_else(|| "pod failed".into()),
            ),
            _ => (
                false,
                format!(
                    "phase {} -> {}",
                    if old_phase.is_empty() {
                        "\"\""
                    } else {
                        &old_phase
                    },
                    ph
                ),
            ),
        };
        p.events.push(event(warning, &format!("Sandbox{ph}"), msg));
    }
    status.phase = Some(ph);
    status.update_revision = Some(revision);
    status.observed_generation = sbx.metadata.generation;
    p.status = status;
    p
}

/// Ready mirrors the pod; a not-ready pod with a Waiting container reports StartContainerFailed.
fn sync_running(conds: &mut Vec<sandbox_api::Condition>, pod: &PodFacts, now: Timestamp) {
    if pod.ready {
        conditions::set(conds, cond::READY, true, cond::REASON_POD_READY, "", now);
    } else if let Some(w) = &pod.waiting {
        conditions::set(
            conds,
            cond::READY,
            false,
            cond::REASON_START_CONTAINER_FAILED,
            w,
            now,
        );
    } else {
        conditions::set(
            conds,
            cond::READY,
            false,
            cond::REASON_POD_READY,
            "pod is not ready",
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::ToSpan;
    use sandbox_api::SandboxSpec;

    fn sbx(phase_: &str) -> Sandbox {
        let mut s = Sandbox::new("s", SandboxSpec::default());
        s.metadata.uid = Some("u1".into());
        s.metadata.generation = Some(1);
        if !phase_.is_empty() {
            s.status = Some(SandboxStatus {
                phase: Some(phase_.into()),
                update_revision: Some("r1".into()),
                ..Default::default()
            });
        }
        s
    }

    fn running_pod(ready: bool) -> PodFacts {
        PodFacts {
            exists: true,
            phase: "Running".into(),
            ready,
            ip: Some("127.0.1.2".into()),
            owner_uid: Some("u1".into()),
            template_hash: Some("r1".into()),
            ..Default::default()
        }
    }

    fn run(s: &Sandbox, pod: PodFacts) -> Plan {
        plan(&Observed {
            sandbox: s,
            pod,
            now: Timestamp::now(),
            revision: "r1".into(),
            immutable_hash: None,
        })
    }

    #[test]
    fn new_sandbox_creates_its_pod_then_runs() {
        let p = run(&sbx(""), PodFacts::default());
        assert_eq!(p.pod, PodAction::Create);
        assert_eq!(p.status.phase.as_deref(), Some("Pending"));
        let p = run(&sbx("Pending"), running_pod(true));
        assert_eq!(p.status.phase.as_deref(), Some("Running"));
        assert!(conditions::is_true(&p.status.conditions, "Ready"));
        assert_eq!(p.status.sandbox_ip.as_deref(), Some("127.0.1.2"));
    }

    #[test]
    fn stale_pod_is_never_adopted() {
        let mut pod = running_pod(true);
        pod.owner_uid = Some("older".into());
        let p = run(&sbx("Pending"), pod);
        assert_eq!(p.pod, PodAction::None);
        assert_eq!(p.status.phase.as_deref(), Some("Pending"));
        assert!(p.events.iter().any(|e| e.reason == "PodOwnerMismatch"));
    }

    #[test]
    fn lost_pod_fails_running_sandbox() {
        let p = run(&sbx("Running"), PodFacts::default());
        assert_eq!(p.status.phase.as_deref(), Some("Failed"));
        assert_eq!(p.status.message.as_deref(), Some("Pod Not Found"));
    }

    #[test]
    fn pause_retried_after_a_lost_status_write_does_not_fail_the_sandbox() {
        let mut s = sbx("Running");
        s.spec.paused = true;
        let mut going = running_pod(true);
        going.terminating = true;
        for pod in [going, PodFacts::default()] {
            let p = run(&s, pod);
            assert_eq!(p.status.phase.as_deref(), Some("Paused"));
            assert_eq!(p.pod, PodAction::None);
            assert!(!conditions::is_true(&p.status.conditions, "Ready"));
        }
    }

    #[test]
    fn pause_and_resume_cycle() {
        let mut s = sbx("Running");
        s.spec.paused = true;
        let p = run(&s, running_pod(true));
        assert_eq!(p.status.phase.as_deref(), Some("Paused"));
        assert_eq!(
            p.pod,
            PodAction::Delete {
                grace_seconds: Some(5)
            }
        );
        assert!(p.add_finalizer);
        // pod gone: pause done
        s.status = Some(p.status.clone());
        s.metadata.finalizers = Some(vec![FINALIZER_SANDBOX.into()]);
        let p = run(&s, PodFacts::default());
        assert!(conditions::is_true(&p.status.conditions, "SandboxPaused"));
        // resume
        s.status = Some(p.status.clone());
        s.spec.paused = false;
        let p = run(&s, PodFacts::default());
        assert_eq!(p.status.phase.as_deref(), Some("Resuming"));
        assert_eq!(p.pod, PodAction::Create);
        s.status = Some(p.status.clone());
        let p = run(&s, running_pod(false));
        assert_eq!(p.status.phase.as_deref(), Some("Running"));
        assert!(p.remove_finalizer);
        assert!(conditions::get(&p.status.conditions, "SandboxPaused").is_none());
    }

    #[test]
    fn unpause_waits_for_pause_to_finish() {
        let mut s = sbx("Paused");
        s.spec.paused = false;
        let p = run(&s, running_pod(true));
        assert_eq!(p.status.phase.as_deref(), Some("Paused"));
        assert_eq!(
            p.pod,
            PodAction::Delete {
                grace_seconds: Some(5)
            }
        );
    }

    #[test]
    fn timers() {
        let now = Timestamp::now();
        let mut s = sbx("Running");
        s.spec.shutdown_time = Some(Time(now - 1.second()));
        assert_eq!(check_timers(&s, now).0, TimerAction::DeleteSandbox);
        s.spec.shutdown_time = Some(Time(now + 100.seconds()));
        s.spec.pause_time = Some(Time(now + 10.seconds()));
        let (a, next) = check_timers(&s, now);
        assert_eq!(a, TimerAction::None);
        assert_eq!(next, Some(Duration::from_secs(10)));
        s.spec.pause_time = Some(Time(now - 1.second()));
        assert_eq!(
            check_timers(&s, now).0,
            TimerAction::Pause { retain_until: None }
        );
        // retention: pause wins over a due shutdown and pushes both timers out
        s.spec.shutdown_time = Some(Time(now - 1.second()));
        s.metadata.annotations = Some(
            [(
                ANNOTATION_RESERVE_PAUSED_SANDBOX_DURATION.to_string(),
                "1h".to_string(),
            )]
            .into(),
        );
        match check_timers(&s, now).0 {
            TimerAction::Pause {
                retain_until: Some(t),
            } => assert_eq!(t.0.as_second(), now.as_second() + 3600),
            other => panic!("{other:?}"),
        }
        // once paused, the due shutdown deletes
        s.spec.paused = true;
        assert_eq!(check_timers(&s, now).0, TimerAction::DeleteSandbox);
    }

    #[test]
    fn template_change_goes_in_place_or_upgrades() {
        let s = sbx("Running");
        let p = plan(&Observed {
            sandbox: &s,
            pod: running_pod(true),
            now: Timestamp::now(),
            revision: "r2".into(),
            immutable_hash: None,
        });
        assert!(p.inplace_update);
        let mut s = sbx("Running");
        s.spec.upgrade_policy = Some(sandbox_api::UpgradePolicy {
            type_: Some("Recreate".into()),
        });
        let p = plan(&Observed {
            sandbox: &s,
            pod: running_pod(true),
            now: Timestamp::now(),
            revision: "r2".into(),
            immutable_hash: None,
        });
        assert_eq!(p.status.phase.as_deref(), Some("Upgrading"));
        assert_eq!(
            p.pod,
            PodAction::Delete {
                grace_seconds: None
            }
        );
    }

    #[test]
    fn paused_sandbox_upgrades_in_two_phases() {
        let mut s = sbx("Paused");
        s.spec.paused = true;
        s.spec.upgrade_policy = Some(sandbox_api::UpgradePolicy {
            type_: Some("Recreate".into()),
        });
        s.metadata.annotations = Some(
            [(
                ANNOTATION_UPGRADE_RESUME_TRIGGER.to_string(),
                "true".to_string(),
            )]
            .into(),
        );
        let mut st = s.status.clone().unwrap();
        conditions::set(
            &mut st.conditions,
            "SandboxPaused",
            true,
            "StopPauseSucceed",
            "",
            Timestamp::now(),
        );
        s.status = Some(st);
        let p = run(&s, PodFacts::default());
        assert_eq!(p.status.phase.as_deref(), Some("Upgrading"));
        assert_eq!(p.pod, PodAction::Create);
        s.status = Some(p.status);
        let p = run(&s, running_pod(true));
        assert_eq!(
            conditions::reason(&p.status.conditions, "Upgrading"),
            Some("ResumeSucceed")
        );
        s.status = Some(p.status);
        // phase 2: the template changed -> pod replaced
        let p = plan(&Observed {
            sandbox: &s,
            pod: running_pod(true),
            now: Timestamp::now(),
            revision: "r2".into(),
            immutable_hash: None,
        });
        assert_eq!(
            p.pod,
            PodAction::Delete {
                grace_seconds: None
            }
        );
        assert_eq!(
            conditions::reason(&p.status.conditions, "Upgrading"),
            Some("UpgradePod")
        );
        let mut s2 = s.clone();
        s2.status = Some(p.status);
        let mut new_pod = running_pod(true);
        new_pod.template_hash = Some("r2".into());
        let p = plan(&Observed {
            sandbox: &s2,
            pod: new_pod,
            now: Timestamp::now(),
            revision: "r2".into(),
            immutable_hash: None,
        });
        assert_eq!(p.status.phase.as_deref(), Some("Running"));
        assert!(conditions::is_true(&p.status.conditions, "Upgrading"));
        // without a template change and with the trigger gone, the upgrade is abandoned
        s.metadata.annotations = None;
        let p = run(&s, running_pod(true));
        assert_eq!(p.status.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn claimed_sandbox_gets_initialised_once_ready() {
        let mut s = sbx("Running");
        s.metadata.annotations = Some(
            [(
                ANNOTATION_INIT_RUNTIME_REQUEST.to_string(),
                "{}".to_string(),
            )]
            .into(),
        );
        assert!(!run(&s, running_pod(false)).init_runtime);
        assert!(run(&s, running_pod(true)).init_runtime);
    }

    #[test]
    fn deletion_removes_pod_then_finalizer() {
        let mut s = sbx("Paused");
        s.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        s.metadata.finalizers = Some(vec![FINALIZER_SANDBOX.into()]);
        let p = run(&s, running_pod(true));
        assert_eq!(
            p.pod,
            PodAction::Delete {
                grace_seconds: None
            }
        );
        assert!(!p.remove_finalizer);
        let p = run(&s, PodFacts::default());
        assert!(p.remove_finalizer);
    }
}
