//! The sandbox state projection (upstream `GetSandboxState`): one of `creating`, `available`,
//! `running`, `paused`, `dead`. The SandboxSet controller counts its pool with it, the claim
//! engine picks with it, and the xDS server derives route state from it.

use k8s_openapi::jiff::Timestamp;

use crate::types::{Sandbox, SandboxPhase, condition};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SandboxState {
    /// Not usable yet: Pending, or pool-owned and not Ready.
    Creating,
    /// Pool-owned, Ready, waiting to be claimed.
    Available,
    /// Claimed, Running, Ready and not paused.
    Running,
    /// Claimed and paused, or in a transition (Paused, Resuming, Upgrading, Recycling).
    Paused,
    /// Deleting, past shutdownTime, terminal, or a claimed Running sandbox that lost readiness.
    Dead,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Available => "available",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Dead => "dead",
        }
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True if the sandbox has a controller ownerRef pointing at a SandboxSet (it sits in a pool).
pub fn is_pool_owned(sbx: &Sandbox) -> bool {
    sbx.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| {
            o.controller == Some(true)
                && o.kind == "SandboxSet"
                && o.api_version.starts_with("agents.kruise.io/")
        })
}

/// `Ready` condition is True.
pub fn is_ready(sbx: &Sandbox) -> bool {
    sbx.status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == condition::READY && c.status == "True")
        })
        .unwrap_or(false)
}

/// Projects a sandbox onto its state at `now`.
///
/// An empty phase (a sandbox the controller has not reconciled yet) counts as `creating`, like
/// `Pending`, which is what the controller writes first.
pub fn sandbox_state(sbx: &Sandbox, now: Timestamp) -> SandboxState {
    if sbx.metadata.deletion_timestamp.is_some() {
        return SandboxState::Dead;
    }
    if let Some(t) = &sbx.spec.shutdown_time
        && t.0 <= now
    {
        return SandboxState::Dead;
    }
    let raw = sbx
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let ph = SandboxPhase::parse(raw);
    match ph {
        Some(SandboxPhase::Succeeded | SandboxPhase::Failed | SandboxPhase::Terminating) => {
            return SandboxState::Dead;
        }
        Some(SandboxPhase::Pending) => return SandboxState::Creating,
        None if raw.is_empty() => return SandboxState::Creating,
        _ => {}
    }
    let ready = is_ready(sbx);
    if is_pool_owned(sbx) {
        return if ready {
            SandboxState::Available
        } else {
            SandboxState::Creating
        };
    }
    if ph == Some(SandboxPhase::Running) {
        if sbx.spec.paused {
            SandboxState::Paused
        } else if ready {
            SandboxState::Running
        } else {
            SandboxState::Dead
        }
    } else {
        SandboxState::Paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Condition, SandboxStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn sbx(phase: &str, ready: bool, pool: bool) -> Sandbox {
        let mut s = Sandbox::new("s", Default::default());
        s.status = Some(SandboxStatus {
            phase: Some(phase.into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        if pool {
            s.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "agents.kruise.io/v1alpha1".into(),
                kind: "SandboxSet".into(),
                name: "pool".into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]);
        }
        s
    }

    #[test]
    fn table() {
        use SandboxState::*;
        let now = Timestamp::now();
        let cases = [
            ("Pending", false, true, Creating),
            ("Pending", true, false, Creating),
            ("", false, false, Creating),
            ("Running", true, true, Available),
            ("Running", false, true, Creating),
            ("Running", true, false, Running),
            ("Running", false, false, Dead),
            ("Paused", false, false, Paused),
            ("Resuming", false, false, Paused),
            ("Upgrading", false, false, Paused),
            ("Recycling", true, false, Paused),
            ("Succeeded", true, true, Dead),
            ("Failed", true, false, Dead),
            ("Terminating", true, false, Dead),
        ];
        for (ph, ready, pool, want) in cases {
            assert_eq!(
                sandbox_state(&sbx(ph, ready, pool), now),
                want,
                "{ph} ready={ready} pool={pool}"
            );
        }
    }

    #[test]
    fn paused_flag_and_timers() {
        let now = Timestamp::now();
        let mut s = sbx("Running", true, false);
        s.spec.paused = true;
        assert_eq!(sandbox_state(&s, now), SandboxState::Paused);
        s.spec.paused = false;
        s.spec.shutdown_time = Some(Time(now - std::time::Duration::from_secs(1)));
        assert_eq!(sandbox_state(&s, now), SandboxState::Dead);
        s.spec.shutdown_time = Some(Time(now + std::time::Duration::from_secs(60)));
        assert_eq!(sandbox_state(&s, now), SandboxState::Running);
        s.metadata.deletion_timestamp = Some(Time(now));
        assert_eq!(sandbox_state(&s, now), SandboxState::Dead);
    }

    #[test]
    fn pool_ownership_needs_controller_flag() {
        let mut s = sbx("Running", true, true);
        s.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert!(!is_pool_owned(&s));
        assert_eq!(sandbox_state(&s, Timestamp::now()), SandboxState::Running);
    }
}
