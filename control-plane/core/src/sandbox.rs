//! What the claim engine reads from a sandbox, as plain facts. The adapters' sandbox types
//! implement [`ClaimableSandbox`] (the Sandbox CR's projection lives beside the CRD types in
//! `sandbox-api`); the verdicts on those facts are made here.

use std::sync::Arc;
use std::time::SystemTime;

/// A sandbox the engine can pick, take, wait for and initialise.
pub trait ClaimableSandbox: Send + Sync {
    /// Names the sandbox within this process (`namespace/name`): the key of the pick lock.
    fn key(&self) -> String;
    /// The version a take is guarded by (Kubernetes: resourceVersion), when it is a number.
    fn version(&self) -> Option<u64>;
    /// What decides whether a claimer may try it at `now`, and the revision it runs.
    fn pick_facts(&self, now: SystemTime) -> PickFacts<'_>;
    /// What decides whether a sandbox the claim created is ready to be handed over.
    fn readiness(&self) -> ReadinessFacts;
    /// Base URL of its runtime (`http://<address>:49983` unless the sandbox says otherwise).
    fn runtime_url(&self) -> Option<String>;
}

impl<T: ClaimableSandbox + ?Sized> ClaimableSandbox for Arc<T> {
    fn key(&self) -> String {
        (**self).key()
    }
    fn version(&self) -> Option<u64> {
        (**self).version()
    }
    fn pick_facts(&self, now: SystemTime) -> PickFacts<'_> {
        (**self).pick_facts(now)
    }
    fn readiness(&self) -> ReadinessFacts {
        (**self).readiness()
    }
    fn runtime_url(&self) -> Option<String> {
        (**self).runtime_url()
    }
}

/// Facts about a pool sandbox that decide whether it may be offered to a claimer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickFacts<'a> {
    /// Ready and unclaimed in its pool (state `available`).
    pub available: bool,
    /// Someone holds its lock (another claimer, or a scale-down about to delete it).
    pub locked: bool,
    /// The store has created it (Kubernetes: it has a creationTimestamp).
    pub created: bool,
    /// It has an address to reach its runtime at.
    pub has_address: bool,
    /// The template revision it runs.
    pub revision: Option<&'a str>,
}

impl PickFacts<'_> {
    /// Available, unlocked, created and reachable.
    pub fn offerable(&self) -> bool {
        self.available && !self.locked && self.created && self.has_address
    }
}

/// Facts about a sandbox a claim created, for the wait until it can be handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadinessFacts {
    pub deleting: bool,
    /// It ended for good (Kubernetes: phase Succeeded or Failed); the phase's name.
    pub ended: Option<String>,
    /// A container cannot start (Kubernetes: `Ready=False/StartContainerFailed`); why.
    pub cannot_start: Option<String>,
    /// Its status describes its current spec (observedGeneration = generation).
    pub observed: bool,
    pub running: bool,
    pub ready: bool,
    pub has_address: bool,
    /// An in-place change it was given (a new image) has not finished yet (Kubernetes:
    /// `InplaceUpdate=False/InProgress`).
    pub updating: bool,
}

/// Where a created sandbox stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Observed at its generation, running and ready, with an address.
    Ready,
    NotYet,
    /// It will not get there: deleted, ended, or a container that cannot start.
    Never(String),
}

impl ReadinessFacts {
    pub fn verdict(&self) -> Readiness {
        if self.deleting {
            return Readiness::Never("sandbox is being deleted".into());
        }
        if let Some(phase) = &self.ended {
            return Readiness::Never(format!("sandbox ended {phase}"));
        }
        if let Some(why) = &self.cannot_start {
            return Readiness::Never(format!("a container cannot start: {why}"));
        }
        if self.observed && self.running && self.ready && self.has_address && !self.updating {
            Readiness::Ready
        } else {
            Readiness::NotYet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> ReadinessFacts {
        ReadinessFacts {
            observed: true,
            running: true,
            ready: true,
            has_address: true,
            ..Default::default()
        }
    }

    #[test]
    fn readiness_verdicts() {
        assert_eq!(ready().verdict(), Readiness::Ready);
        for not_yet in [
            ReadinessFacts {
                observed: false,
                ..ready()
            },
            ReadinessFacts {
                running: false,
                ..ready()
            },
            ReadinessFacts {
                ready: false,
                ..ready()
            },
            ReadinessFacts {
                has_address: false,
                ..ready()
            },
            ReadinessFacts::default(),
        ] {
            assert_eq!(not_yet.verdict(), Readiness::NotYet, "{not_yet:?}");
        }
        // Never wins over everything else, deletion first.
        let never = ReadinessFacts {
            deleting: true,
            ended: Some("Failed".into()),
            ..ready()
        };
        assert_eq!(
            never.verdict(),
            Readiness::Never("sandbox is being deleted".into())
        );
        let ended = ReadinessFacts {
            ended: Some("Succeeded".into()),
            ..ready()
        };
        assert_eq!(
            ended.verdict(),
            Readiness::Never("sandbox ended Succeeded".into())
        );
        let crashing = ReadinessFacts {
            cannot_start: Some("back-off".into()),
            ..Default::default()
        };
        assert_eq!(
            crashing.verdict(),
            Readiness::Never("a container cannot start: back-off".into())
        );
    }

    #[test]
    fn only_available_unlocked_created_reachable_sandboxes_are_offered() {
        let ok = PickFacts {
            available: true,
            created: true,
            has_address: true,
            ..Default::default()
        };
        assert!(ok.offerable());
        for bad in [
            PickFacts {
                available: false,
                ..ok
            },
            PickFacts { locked: true, ..ok },
            PickFacts {
                created: false,
                ..ok
            },
            PickFacts {
                has_address: false,
                ..ok
            },
        ] {
            assert!(!bad.offerable(), "{bad:?}");
        }
    }
}
