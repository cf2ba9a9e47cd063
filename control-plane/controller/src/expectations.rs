//! Scale expectations (upstream `pkg/utils/expectations/scale_expectations.go`): the sandboxes a
//! SandboxSet reconcile created or deleted that the watch cache has not shown yet. The pool is
//! read from the cache, not listed from the apiserver on every reconcile; these fill the gap a
//! lagging cache leaves, so a pool is never refilled twice for one claim.
//!
//! A create counts as a member until the cache has it; a delete is pending until the cache shows
//! the sandbox gone or being deleted. Scale-down and rolling replacement wait until nothing is
//! pending (upstream's rule); scale-up counts the pending creates and goes on. An expectation the
//! cache never confirms is dropped after [`EXPECTATION_TIMEOUT`] (upstream: 1 minute).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sandbox_api::Sandbox;

pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the cache shows of one sandbox name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Present,
    Deleting,
}

#[derive(Default)]
struct Pending {
    creates: HashMap<String, (Instant, Sandbox)>,
    deletes: HashMap<String, Instant>,
}

/// The state of one set's expectations after comparing them with the cache.
#[derive(Debug, Default)]
pub struct Outstanding {
    /// Created by us, not in the cache yet: count them as members.
    pub unseen_creates: Vec<Sandbox>,
    /// Deleted by us, still live in the cache.
    pub pending_deletes: usize,
}

impl Outstanding {
    /// Upstream's "expectations satisfied": nothing of ours is still on its way.
    pub fn satisfied(&self) -> bool {
        self.unseen_creates.is_empty() && self.pending_deletes == 0
    }
}

/// Per-SandboxSet expectations, keyed by `namespace/name`.
#[derive(Default)]
pub struct ScaleExpectations {
    sets: Mutex<HashMap<String, Pending>>,
}

impl ScaleExpectations {
    pub fn expect_create(&self, set: &str, created: Sandbox, now: Instant) {
        let name = created.metadata.name.clone().unwrap_or_default();
        let mut sets = self.sets.lock().expect("expectations");
        sets.entry(set.to_string())
            .or_default()
            .creates
            .insert(name, (now, created));
    }

    pub fn expect_delete(&self, set: &str, name: &str, now: Instant) {
        let mut sets = self.sets.lock().expect("expectations");
        sets.entry(set.to_string())
            .or_default()
            .deletes
            .insert(name.to_string(), now);
    }

    /// Drops what the cache (`seen`) confirms or what has expired; returns what is left.
    pub fn observe(&self, set: &str, seen: impl Fn(&str) -> Seen, now: Instant) -> Outstanding {
        let mut sets = self.sets.lock().expect("expectations");
        let Some(p) = sets.get_mut(set) else {
            return Outstanding::default();
        };
        let live = |at: &Instant| now.saturating_duration_since(*at) < EXPECTATION_TIMEOUT;
        p.creates
            .retain(|name, (at, _)| live(at) && seen(name) == Seen::Absent);
        p.deletes
            .retain(|name, at| live(at) && seen(name) == Seen::Present);
        let out = Outstanding {
            unseen_creates: p.creates.values().map(|(_, s)| s.clone()).collect(),
            pending_deletes: p.deletes.len(),
        };
        if p.creates.is_empty() && p.deletes.is_empty() {
            sets.remove(set);
        }
        out
    }

    /// Forgets a set (deleted).
    pub fn forget(&self, set: &str) {
        self.sets.lock().expect("expectations").remove(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_api::SandboxSpec;

    fn sbx(name: &str) -> Sandbox {
        Sandbox::new(name, SandboxSpec::default())
    }

    #[test]
    fn a_create_counts_until_the_cache_has_it() {
        let e = ScaleExpectations::default();
        let t0 = Instant::now();
        e.expect_create("ns/set", sbx("a"), t0);
        let out = e.observe("ns/set", |_| Seen::Absent, t0);
        assert_eq!(out.unseen_creates.len(), 1);
        assert!(!out.satisfied());
        // seen (even already being deleted): no longer ours to count
        let out = e.observe("ns/set", |_| Seen::Deleting, t0);
        assert!(out.satisfied());
        assert!(e.sets.lock().unwrap().is_empty());
    }

    #[test]
    fn a_delete_is_pending_while_the_cache_shows_it_live() {
        let e = ScaleExpectations::default();
        let t0 = Instant::now();
        e.expect_delete("ns/set", "a", t0);
        assert_eq!(
            e.observe("ns/set", |_| Seen::Present, t0).pending_deletes,
            1
        );
        assert!(e.observe("ns/set", |_| Seen::Deleting, t0).satisfied());
        e.expect_delete("ns/set", "b", t0);
        assert!(e.observe("ns/set", |_| Seen::Absent, t0).satisfied());
    }

    #[test]
    fn expectations_expire() {
        let e = ScaleExpectations::default();
        let t0 = Instant::now();
        e.expect_create("ns/set", sbx("a"), t0);
        e.expect_delete("ns/set", "b", t0);
        let later = t0 + EXPECTATION_TIMEOUT;
        let seen = |n: &str| {
            if n == "b" {
                Seen::Present
            } else {
                Seen::Absent
            }
        };
        assert!(!e.observe("ns/set", seen, t0).satisfied());
        assert!(e.observe("ns/set", seen, later).satisfied());
    }

    #[test]
    fn sets_are_kept_apart() {
        let e = ScaleExpectations::default();
        let t0 = Instant::now();
        e.expect_create("ns/one", sbx("a"), t0);
        assert!(e.observe("ns/two", |_| Seen::Absent, t0).satisfied());
        assert!(!e.observe("ns/one", |_| Seen::Absent, t0).satisfied());
        e.forget("ns/one");
        assert!(e.observe("ns/one", |_| Seen::Absent, t0).satisfied());
    }
}
