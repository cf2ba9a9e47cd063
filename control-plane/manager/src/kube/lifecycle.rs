//! Timeouts, pause and resume of a claimed Sandbox CR: first-writer-wins patches guarded by the
//! resourceVersion just read, then a wait for the controller to carry them out.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use sandbox_api::types::condition;
use sandbox_api::{Sandbox, SandboxPhase};
use sandbox_core::{ClaimableSandbox, Readiness};
use serde_json::{Value, json};

use super::claim::is_status;
use super::record;
use super::{KubeBackend, deadline_spec, internal, retention_of};
use crate::model::{
    BackendError, BackendResult, Caller, Connected, Deadline, Paused, SandboxId, SandboxRecord,
    SandboxState,
};

/// Attempts of a read-modify-write that keeps losing to other writers.
const WRITE_ATTEMPTS: usize = 5;
/// How often a lifecycle wait reads the sandbox again.
const POLL: Duration = Duration::from_millis(100);

fn phase(s: &Sandbox) -> Option<SandboxPhase> {
    s.status.as_ref().and_then(|st| st.known_phase())
}

fn condition_false(s: &Sandbox, kind: &str) -> bool {
    s.status
        .as_ref()
        .into_iter()
        .flat_map(|st| &st.conditions)
        .any(|c| c.type_ == kind && c.status == "False")
}

/// The patch `spec` guarded by `s`'s resourceVersion; `None` when another writer got there
/// first (409).
async fn guarded_patch(
    b: &KubeBackend,
    s: &Sandbox,
    spec: Value,
) -> BackendResult<Option<Sandbox>> {
    let patch = json!({"metadata": {"resourceVersion": s.resource_version()}, "spec": spec});
    let api = b.api(&s.namespace().unwrap_or_default());
    match api
        .patch(&s.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(updated) => {
            b.index.wrote(&updated);
            Ok(Some(updated))
        }
        Err(e) if is_status(&e, 409) => Ok(None),
        Err(e) if is_status(&e, 404) => Err(BackendError::NotFound(format!(
            "sandbox {} not found",
            s.name_any()
        ))),
        Err(e) => Err(internal(e)),
    }
}

/// Reads the sandbox until `done` says so, at most `wait`.
async fn wait_for(
    b: &KubeBackend,
    caller: &Caller,
    id: &SandboxId,
    wait: Duration,
    what: &str,
    done: impl Fn(&Sandbox) -> Result<bool, String>,
) -> BackendResult<Sandbox> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let s = b.fetch(caller, id).await?;
        match done(&s) {
            Ok(true) => return Ok(s),
            Ok(false) => {}
            Err(why) => return Err(BackendError::Conflict(format!("sandbox {id}: {why}"))),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BackendError::Unavailable {
                message: format!("sandbox {id} did not {what} within {wait:?}"),
                retry_after: Duration::from_secs(1),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn set_deadline(
    b: &KubeBackend,
    caller: &Caller,
    id: &SandboxId,
    deadline: Deadline,
) -> BackendResult<SandboxRecord> {
    for _ in 0..WRITE_ATTEMPTS {
        let s = b.fetch(caller, id).await?;
        let r = b.record(&s, id)?;
        if r.state == SandboxState::Paused {
            return Err(BackendError::Conflict(format!(
                "sandbox {id} is paused; connect resumes it"
            )));
        }
        let Some(current) = r.end_at else {
            return Ok(r);
        };
        let end = match deadline {
            Deadline::Set(t) => t,
            Deadline::AtLeast(t) => t.max(current),
        };
        if end == current {
            return Ok(r);
        }
        let spec = deadline_spec(end, r.lifecycle.on_timeout, retention_of(&s));
        if let Some(updated) = guarded_patch(b, &s, spec).await? {
            // As written: a deadline set to now (or the past) answers with it, then expires.
            return record::record_as_written(&updated)
                .ok_or_else(|| BackendError::sandbox_not_found(id));
        }
    }
    Err(conflicted(id))
}

fn conflicted(id: &SandboxId) -> BackendError {
    BackendError::Conflict(format!(
        "sandbox {id} kept changing under {WRITE_ATTEMPTS} attempts; try again"
    ))
}

/// `spec.paused=true` (with the paused retention as the new shutdown time), then the wait for
/// phase Paused.
pub async fn pause(b: &KubeBackend, caller: &Caller, id: &SandboxId) -> BackendResult<Paused> {
    let mut outcome = None;
    for _ in 0..WRITE_ATTEMPTS {
        let s = b.fetch(caller, id).await?;
        if s.spec.paused {
            outcome = Some(if phase(&s) == Some(SandboxPhase::Paused) {
                Paused::Already
            } else {
                Paused::Now
            });
            break;
        }
        let ready = sandbox_api::state::is_ready(&s);
        if phase(&s) != Some(SandboxPhase::Running) || !ready {
            return Err(BackendError::Conflict(format!(
                "sandbox {id} is not pausable, reason: phase {} ready {ready}",
                phase(&s).map(|p| p.as_str()).unwrap_or("unknown")
            )));
        }
        let mut spec = json!({"paused": true});
        if s.spec.shutdown_time.is_some() {
            let end = Timestamp::now()
                .checked_add(retention_of(&s))
                .unwrap_or(Timestamp::MAX);
            let t = super::k8s_time(end);
            spec["shutdownTime"] = t.clone();
            if s.spec.pause_time.is_some() {
                spec["pauseTime"] = t;
            }
        }
        if guarded_patch(b, &s, spec).await?.is_some() {
            outcome = Some(Paused::Now);
            break;
        }
    }
    let outcome = outcome.ok_or_else(|| conflicted(id))?;
    if outcome == Paused::Now {
        wait_for(b, caller, id, b.cfg.lifecycle_wait, "pause", |s| {
            Ok(phase(s) == Some(SandboxPhase::Paused))
        })
        .await?;
    }
    Ok(outcome)
}

/// Running: the deadline moves to at least now + `timeout`. Paused: `spec.paused=false` with
/// that deadline, the wait for a Ready pod whose runtime the controller initialised again, and
/// the wait for every gateway to route to the new pod.
pub async fn connect(
    b: &KubeBackend,
    caller: &Caller,
    id: &SandboxId,
    timeout: Duration,
) -> BackendResult<(SandboxRecord, Connected)> {
    let at_least = Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(timeout).unwrap_or(super::FOREVER))
        .unwrap_or(Timestamp::MAX);
    let mut resumed = false;
    for _ in 0..WRITE_ATTEMPTS {
        let s = b.fetch(caller, id).await?;
        let r = b.record(&s, id)?;
        if !s.spec.paused {
            // Running, or resuming already (another caller's connect won): the latter is
            // waited for below.
            resumed =
                !(phase(&s) == Some(SandboxPhase::Running) && sandbox_api::state::is_ready(&s));
            break;
        }
        if phase(&s) != Some(SandboxPhase::Paused) {
            // Pausing (an auto-pause or another caller): let it finish, then resume.
            wait_for(b, caller, id, b.cfg.lifecycle_wait, "finish pausing", |s| {
                Ok(!s.spec.paused || phase(s) == Some(SandboxPhase::Paused))
            })
            .await?;
            continue;
        }
        let mut spec = match r.end_at {
            None => json!({}),
            Some(_) => deadline_spec(at_least, r.lifecycle.on_timeout, retention_of(&s)),
        };
        spec["paused"] = json!(false);
        if guarded_patch(b, &s, spec).await?.is_some() {
            resumed = true;
            break;
        }
    }
    if !resumed {
        let r = set_deadline(b, caller, id, Deadline::AtLeast(at_least)).await?;
        return Ok((r, Connected::Running));
    }
    let s = wait_for(b, caller, id, b.cfg.lifecycle_wait, "resume", |s| {
        match s.readiness().verdict() {
            Readiness::Never(why) => Err(why),
            Readiness::NotYet => Ok(false),
            Readiness::Ready => Ok(!condition_false(s, condition::RUNTIME_INITIALIZED)),
        }
    })
    .await?;
    b.routes
        .wait(id.as_str(), s.version().unwrap_or(0))
        .await
        .map_err(|e| BackendError::Unavailable {
            message: e,
            retry_after: Duration::from_secs(1),
        })?;
    Ok((b.record(&s, id)?, Connected::Resumed))
}
