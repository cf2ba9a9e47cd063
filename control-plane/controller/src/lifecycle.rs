//! The Sandbox state machine over plain data: given the sandbox, its pod (if any) and the time,
//! decide what to do (timers, pod create/delete, finalizers) and what the status becomes. The kube
//! adapter (`reconcile::sandbox`) performs the plan; nothing here does I/O.
//!
//! Phases ([`SandboxPhase`]): "" → Pending → Running ⇄ Paused → Resuming → Running, Running →
//! Upgrading → Running (pod-replacement upgrade), and the terminal Succeeded/Failed. Each phase
//! is one method of `Step`; a phase this version does not know is left as it is.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sandbox_api::duration::parse_go_duration;
use sandbox_api::keys::*;
use sandbox_api::types::{SandboxPhase, condition as cond};
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
    /// The image the first container runs (its status), if reported.
    pub running_image: Option<String>,
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
        let running_image = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| {
                let first = pod.spec.as_ref()?.containers.first()?;
                cs.iter().find(|c| c.name == first.name)
            })
            .map(|c| c.image.clone())
            .filter(|i| !i.is_empty());
        PodFacts {
            running_image,
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

/// Plans one reconcile of a sandbox: deletion, timers, then the step of its phase.
pub fn plan(o: &Observed<'_>) -> Plan {
    let sbx = o.sandbox;
    let mut p = Plan {
        timer: TimerAction::None,
        pod: PodAction::None,
        add_finalizer: false,
        remove_finalizer: false,
        status: sbx.status.clone().unwrap_or_default(),
        requeue_after: None,
        events: Vec::new(),
        init_runtime: false,
        inplace_update: false,
        set_immutable_hash: None,
    };
    if sbx.metadata.deletion_timestamp.is_some() {
        plan_deletion(o, &mut p);
        return p;
    }
    let old_raw = p.status.phase.clone().unwrap_or_default();
    let old = SandboxPhase::parse(&old_raw);
    if old.is_some_and(SandboxPhase::is_terminal) {
        return p;
    }
    if annotation(sbx, ANNOTATION_HASH_IMMUTABLE_PART).is_none()
        && let Some(h) = &o.immutable_hash
    {
        p.set_immutable_hash = Some(h.clone());
    }
    let (timer, next) = check_timers(sbx, o.now);
    if timer != TimerAction::None {
        p.timer = timer;
        return p;
    }
    p.requeue_after = next;
    let mut step = Step::new(o, p);
    // "" is a sandbox never reconciled: it starts Pending. A phase this version does not know
    // is left alone.
    let next = if old_raw.is_empty() {
        Some(step.advance(SandboxPhase::Pending))
    } else {
        old.map(|ph| step.advance(ph))
    };
    step.finish(&old_raw, next)
}

/// Deletion: take the pod down, then let go of the finalizer.
fn plan_deletion(o: &Observed<'_>, p: &mut Plan) {
    let sbx = o.sandbox;
    let own_pod = o.pod.owner_uid == sbx.metadata.uid;
    if o.pod.exists && !o.pod.terminating && own_pod {
        p.pod = PodAction::Delete {
            grace_seconds: None,
        };
        p.events.push(event(
            false,
            "SandboxTerminating",
            "deleting the sandbox pod",
        ));
    }
    if (!o.pod.exists || !own_pod) && has_finalizer(sbx) {
        p.remove_finalizer = true;
    }
}

/// The pod's own end, if it ended (its phase becomes the sandbox's).
fn pod_end(pod: &PodFacts) -> Option<SandboxPhase> {
    match pod.phase.as_str() {
        "Succeeded" => Some(SandboxPhase::Succeeded),
        "Failed" => Some(SandboxPhase::Failed),
        _ => None,
    }
}

/// Where an upgrade stands, from its condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpgradeStage {
    /// A paused sandbox being resumed for a two-phase upgrade.
    Resuming,
    /// Resumed; waiting for the update ops to patch the template (phase 2).
    AwaitingPatch,
    /// Pod replacement: old pod out, new pod in, wait for Ready.
    ReplacingPod,
}

/// One phase step: what it reads (the sandbox, its pod, the time) and what it builds (the status
/// and the plan). Each phase has its method; each returns the phase the sandbox moves to.
struct Step<'a> {
    sbx: &'a Sandbox,
    /// The sandbox's pod; empty when the pod belongs to an older sandbox of the same name.
    pod: PodFacts,
    stale_pod: bool,
    now: Timestamp,
    immutable_hash: Option<&'a str>,
    status: SandboxStatus,
    plan: Plan,
    /// The revision recorded in the status (kept at the pinned one while pausing).
    revision: String,
    pinned_revision: Option<String>,
    upgrade_policy: bool,
}

impl<'a> Step<'a> {
    fn new(o: &'a Observed<'a>, mut plan: Plan) -> Step<'a> {
        let sbx = o.sandbox;
        // A pod of an older sandbox with the same name is never adopted (#756/#757).
        let stale_pod =
            o.pod.exists && o.pod.owner_uid.is_some() && o.pod.owner_uid != sbx.metadata.uid;
        if stale_pod {
            plan.events.push(event(
                true,
                "PodOwnerMismatch",
                "a pod of an older sandbox with this name is still terminating",
            ));
        }
        let status = plan.status.clone();
        Step {
            sbx,
            pod: if stale_pod {
                PodFacts::default()
            } else {
                o.pod.clone()
            },
            stale_pod,
            now: o.now,
            immutable_hash: o.immutable_hash.as_deref(),
            pinned_revision: status.update_revision.clone(),
            status,
            plan,
            revision: o.revision.clone(),
            upgrade_policy: sbx
                .spec
                .upgrade_policy
                .as_ref()
                .and_then(|u| u.type_.as_deref())
                .is_some_and(|t| !t.is_empty()),
        }
    }

    fn advance(&mut self, ph: SandboxPhase) -> SandboxPhase {
        match ph {
            SandboxPhase::Pending => self.pending(),
            SandboxPhase::Running => self.running(),
            SandboxPhase::Paused => self.paused(),
            SandboxPhase::Resuming => self.resuming(),
            SandboxPhase::Upgrading => self.upgrading(),
            SandboxPhase::Succeeded
            | SandboxPhase::Failed
            | SandboxPhase::Recycling
            | SandboxPhase::Terminating => ph,
        }
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        conditions::set(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.now,
        );
    }

    fn create_pod_if_missing(&mut self) {
        if !self.pod.exists {
            self.plan.pod = PodAction::Create;
        }
    }

    /// Ready mirrors the pod; a not-ready pod with a Waiting container reports
    /// StartContainerFailed.
    fn sync_ready(&mut self) {
        if self.pod.ready {
            self.set(cond::READY, true, cond::REASON_POD_READY, "");
        } else if let Some(w) = self.pod.waiting.clone() {
            self.set(cond::READY, false, cond::REASON_START_CONTAINER_FAILED, &w);
        } else {
            self.set(
                cond::READY,
                false,
                cond::REASON_POD_READY,
                "pod is not ready",
            );
        }
    }

    /// A claimed sandbox's runtime needs `/init` again on its new pod.
    fn reset_runtime_init(&mut self) {
        if annotation(self.sbx, ANNOTATION_INIT_RUNTIME_REQUEST).is_some() {
            self.set(cond::RUNTIME_INITIALIZED, false, cond::REASON_PENDING, "");
        }
    }

    fn pending(&mut self) -> SandboxPhase {
        if self.stale_pod {
            self.plan.requeue_after = Some(Duration::from_secs(2));
        } else if !self.pod.exists {
            self.plan.pod = PodAction::Create;
        } else if let Some(end) = pod_end(&self.pod) {
            return end;
        } else if self.pod.phase == "Running" {
            self.sync_ready();
            return SandboxPhase::Running;
        }
        SandboxPhase::Pending
    }

    fn running(&mut self) -> SandboxPhase {
        // A pause deletes the pod before the status write; if that write lost a conflict, the
        // retry sees `Running` with the pod already going away. That is the pause in progress,
        // not a lost pod, so a sandbox asked to pause never fails here.
        if (!self.pod.exists || self.pod.terminating) && !self.sbx.spec.paused {
            self.status.message = Some("Pod Not Found".into());
            return SandboxPhase::Failed;
        }
        if let Some(end) = pod_end(&self.pod) {
            return end;
        }
        if self.upgrade_policy
            && self
                .pinned_revision
                .as_deref()
                .is_some_and(|r| r != self.revision)
        {
            return self.start_upgrade();
        }
        if self.sbx.spec.paused {
            return self.start_pause();
        }
        self.keep_running();
        SandboxPhase::Running
    }

    /// Pod-replacement upgrade (`upgradePolicy` set and the template changed).
    fn start_upgrade(&mut self) -> SandboxPhase {
        self.set(cond::UPGRADING, false, cond::REASON_UPGRADE_POD, "");
        self.set(cond::READY, false, cond::REASON_UPGRADING, "");
        self.plan.pod = PodAction::Delete {
            grace_seconds: None,
        };
        SandboxPhase::Upgrading
    }

    fn start_pause(&mut self) -> SandboxPhase {
        conditions::remove(&mut self.status.conditions, cond::SANDBOX_RESUMED);
        self.set(cond::SANDBOX_PAUSED, false, cond::REASON_PENDING, "");
        self.set(
            cond::READY,
            false,
            cond::REASON_PENDING,
            "sandbox is pausing",
        );
        self.plan.add_finalizer = !has_finalizer(self.sbx);
        if self.pod.exists && !self.pod.terminating {
            self.plan.pod = PodAction::Delete {
                grace_seconds: Some(PAUSE_GRACE_SECONDS),
            };
        }
        // Keep the old revision while pausing so a template change made now is seen later.
        self.keep_pinned_revision();
        SandboxPhase::Paused
    }

    fn keep_pinned_revision(&mut self) {
        if let Some(r) = &self.pinned_revision {
            self.revision = r.clone();
        }
    }

    /// Running and staying so: readiness, in-place updates, runtime init.
    fn keep_running(&mut self) {
        self.sync_ready();
        if self.pod.template_hash.as_deref() != Some(self.revision.as_str()) && !self.upgrade_policy
        {
            self.update_in_place();
        } else {
            self.finish_in_place();
        }
        // Only a replay is ours (after a resume or an upgrade set the condition to Pending):
        // the claim that took the sandbox sent its `/init` itself (upstream: "RuntimeInitialized
        // present and not True").
        if self.pod.ready
            && annotation(self.sbx, ANNOTATION_INIT_RUNTIME_REQUEST).is_some()
            && conditions::reason(&self.status.conditions, cond::RUNTIME_INITIALIZED)
                == Some(cond::REASON_PENDING)
        {
            self.plan.init_runtime = true;
        }
    }

    /// An in-place update is finished once the pod is at the current revision, ready, and runs
    /// the image the sandbox asks for in its first container.
    fn finish_in_place(&mut self) {
        if conditions::reason(&self.status.conditions, cond::INPLACE_UPDATE)
            != Some(cond::REASON_INPLACE_UPDATING)
        {
            return;
        }
        let wanted = self
            .sbx
            .spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        let image_done = wanted.is_none() || self.pod.running_image == wanted;
        if self.pod.ready && image_done {
            self.set(cond::INPLACE_UPDATE, true, cond::REASON_SUCCEEDED, "");
        }
    }

    /// The template changed: in place when only images, resources and metadata changed.
    fn update_in_place(&mut self) {
        let allowed = match (
            annotation(self.sbx, ANNOTATION_HASH_IMMUTABLE_PART),
            self.immutable_hash,
        ) {
            (Some(stored), Some(cur)) => stored == cur,
            _ => true,
        };
        if allowed {
            self.plan.inplace_update = true;
        } else if conditions::reason(&self.status.conditions, cond::INPLACE_UPDATE)
            != Some(cond::REASON_FAILED)
        {
            self.set(
                cond::INPLACE_UPDATE,
                false,
                cond::REASON_FAILED,
                "only images, resources, labels and annotations can change in place",
            );
            self.plan.events.push(event(
                true,
                "InplaceUpdateForbidden",
                "the template changed beyond images, resources and metadata; set spec.upgradePolicy to replace the pod",
            ));
        }
    }

    fn paused(&mut self) -> SandboxPhase {
        if !conditions::is_true(&self.status.conditions, cond::SANDBOX_PAUSED) {
            self.finish_pause();
            return SandboxPhase::Paused;
        }
        if !self.sbx.spec.paused {
            self.set(cond::SANDBOX_RESUMED, false, cond::REASON_CREATE_POD, "");
            self.create_pod_if_missing();
            return SandboxPhase::Resuming;
        }
        if annotation(self.sbx, ANNOTATION_UPGRADE_RESUME_TRIGGER) == Some("true")
            && self.upgrade_policy
        {
            // Two-phase upgrade of a paused sandbox: resume it first, then wait for the update
            // ops to patch the template.
            self.set(cond::UPGRADING, false, cond::REASON_RESUMING, "");
            self.set(cond::READY, false, cond::REASON_UPGRADING, "");
            self.create_pod_if_missing();
            return SandboxPhase::Upgrading;
        }
        SandboxPhase::Paused
    }

    /// Pausing: wait for the pod to go, then record the pause as done.
    fn finish_pause(&mut self) {
        self.keep_pinned_revision();
        self.plan.add_finalizer = !has_finalizer(self.sbx);
        self.set(
            cond::READY,
            false,
            cond::REASON_PENDING,
            "sandbox is pausing",
        );
        if self.pod.exists {
            if !self.pod.terminating {
                self.plan.pod = PodAction::Delete {
                    grace_seconds: Some(PAUSE_GRACE_SECONDS),
                };
            }
            self.plan.requeue_after = Some(Duration::from_secs(1));
        } else {
            self.set(
                cond::SANDBOX_PAUSED,
                true,
                cond::REASON_STOP_PAUSE_SUCCEED,
                "",
            );
            self.status.node_name = None;
            self.status.sandbox_ip = None;
            self.status.pod_info = None;
        }
    }

    fn resuming(&mut self) -> SandboxPhase {
        if self.pod.exists && self.pod.terminating {
            self.plan.requeue_after = Some(Duration::from_secs(1));
        } else if !self.pod.exists {
            self.plan.pod = PodAction::Create;
        } else if self.pod.phase == "Running" {
            self.set(cond::SANDBOX_RESUMED, true, cond::REASON_RESUME_POD, "");
            conditions::remove(&mut self.status.conditions, cond::SANDBOX_PAUSED);
            self.reset_runtime_init();
            self.sync_ready();
            self.plan.remove_finalizer = has_finalizer(self.sbx);
            return SandboxPhase::Running;
        }
        SandboxPhase::Resuming
    }

    fn upgrade_stage(&self) -> UpgradeStage {
        match conditions::reason(&self.status.conditions, cond::UPGRADING) {
            Some(cond::REASON_RESUMING) => UpgradeStage::Resuming,
            Some(cond::REASON_RESUME_SUCCEED)
                if self.pod.template_hash.as_deref() == Some(self.revision.as_str()) =>
            {
                UpgradeStage::AwaitingPatch
            }
            _ => UpgradeStage::ReplacingPod,
        }
    }

    fn upgrading(&mut self) -> SandboxPhase {
        match self.upgrade_stage() {
            UpgradeStage::Resuming => self.resume_for_upgrade(),
            UpgradeStage::AwaitingPatch => self.await_upgrade_patch(),
            UpgradeStage::ReplacingPod => self.replace_pod(),
        }
    }

    fn resume_for_upgrade(&mut self) -> SandboxPhase {
        if !self.pod.exists {
            self.plan.pod = PodAction::Create;
        } else if self.pod.ready {
            self.set(cond::UPGRADING, false, cond::REASON_RESUME_SUCCEED, "");
        } else {
            self.plan.requeue_after = Some(Duration::from_secs(1));
        }
        SandboxPhase::Upgrading
    }

    /// Resumed; waiting for phase 2 (the template patch). If the trigger went away with no
    /// template change, the upgrade is abandoned.
    fn await_upgrade_patch(&mut self) -> SandboxPhase {
        if annotation(self.sbx, ANNOTATION_UPGRADE_RESUME_TRIGGER) != Some("true") {
            conditions::remove(&mut self.status.conditions, cond::UPGRADING);
            self.sync_ready();
            return SandboxPhase::Running;
        }
        self.plan.requeue_after = Some(Duration::from_secs(1));
        SandboxPhase::Upgrading
    }

    /// Pod-replacement upgrade (Recreate): old pod out, new pod in, wait for Ready.
    fn replace_pod(&mut self) -> SandboxPhase {
        if conditions::reason(&self.status.conditions, cond::UPGRADING)
            != Some(cond::REASON_UPGRADE_POD)
        {
            self.set(cond::UPGRADING, false, cond::REASON_UPGRADE_POD, "");
        }
        if self.pod.exists && self.pod.template_hash.as_deref() != Some(self.revision.as_str()) {
            if !self.pod.terminating {
                self.plan.pod = PodAction::Delete {
                    grace_seconds: None,
                };
            }
            self.plan.requeue_after = Some(Duration::from_secs(1));
        } else if !self.pod.exists {
            self.plan.pod = PodAction::Create;
        } else if self.pod.ready {
            self.set(cond::UPGRADING, true, cond::REASON_SUCCEEDED, "");
            self.sync_ready();
            self.reset_runtime_init();
            return SandboxPhase::Running;
        } else {
            self.status.node_name = self.pod.node.clone();
            self.status.sandbox_ip = self.pod.ip.clone();
        }
        SandboxPhase::Upgrading
    }

    /// Records the pod's placement, the phase (`None`: an unknown phase, kept) and its event.
    fn finish(mut self, old_raw: &str, next: Option<SandboxPhase>) -> Plan {
        if let Some(ph) = next {
            // A Pending sandbox records its pod's placement once the pod runs (upstream), not
            // on each step before (uid, node): one status write per new sandbox fewer.
            let with_pod = matches!(
                ph,
                SandboxPhase::Running | SandboxPhase::Resuming | SandboxPhase::Upgrading
            );
            if with_pod && self.pod.exists && !self.stale_pod {
                self.status.node_name = self.pod.node.clone();
                self.status.sandbox_ip = self.pod.ip.clone();
                self.status.pod_info = Some(sandbox_api::PodInfo {
                    node_name: self.pod.node.clone(),
                    pod_ip: self.pod.ip.clone(),
                    pod_uid: self.pod.uid.clone(),
                    ..Default::default()
                });
            }
            if ph.is_terminal() {
                self.set(cond::READY, false, "", "");
            }
            if ph.as_str() != old_raw {
                self.plan.events.push(self.phase_event(old_raw, ph));
            }
            self.status.phase = Some(ph.as_str().into());
        }
        self.status.update_revision = Some(self.revision);
        self.status.observed_generation = self.sbx.metadata.generation;
        self.plan.status = self.status;
        self.plan
    }

    fn phase_event(&self, old_raw: &str, ph: SandboxPhase) -> PlannedEvent {
        let reason = format!("Sandbox{ph}");
        if ph == SandboxPhase::Failed {
            let msg = self.status.message.as_deref().unwrap_or("pod failed");
            return event(true, &reason, msg);
        }
        let old = if old_raw.is_empty() { "\"\"" } else { old_raw };
        event(false, &reason, format!("phase {old} -> {ph}"))
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
    fn unknown_and_unhandled_phases_are_left_alone() {
        for ph in ["Recycling", "SomethingNew"] {
            let mut s = sbx(ph);
            s.metadata.generation = Some(3);
            let p = run(&s, running_pod(true));
            assert_eq!(p.status.phase.as_deref(), Some(ph));
            assert_eq!(p.pod, PodAction::None);
            assert!(p.events.is_empty(), "{:?}", p.events);
            assert_eq!(p.status.observed_generation, Some(3));
            assert_eq!(p.status.pod_info, None);
        }
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
    fn a_pending_runtime_init_is_replayed_once_ready() {
        let mut s = sbx("Running");
        s.metadata.annotations = Some(
            [(
                ANNOTATION_INIT_RUNTIME_REQUEST.to_string(),
                "{}".to_string(),
            )]
            .into(),
        );
        // Just claimed: the claim sent /init itself; nothing to replay.
        assert!(!run(&s, running_pod(true)).init_runtime);
        // After a resume or upgrade (condition Pending): replayed once the pod is ready.
        let st = s.status.as_mut().unwrap();
        conditions::set(
            &mut st.conditions,
            cond::RUNTIME_INITIALIZED,
            false,
            cond::REASON_PENDING,
            "",
            Timestamp::now(),
        );
        assert!(!run(&s, running_pod(false)).init_runtime);
        assert!(run(&s, running_pod(true)).init_runtime);
        // A failed replay is not retried in a loop.
        let st = s.status.as_mut().unwrap();
        conditions::set(
            &mut st.conditions,
            cond::RUNTIME_INITIALIZED,
            false,
            cond::REASON_FAILED,
            "boom",
            Timestamp::now(),
        );
        assert!(!run(&s, running_pod(true)).init_runtime);
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
