//! The sandboxes one claim may try, best first, shared by that claim's concurrent attempts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use crate::sandbox::ClaimableSandbox;

/// An ordered snapshot of offerable pool sandboxes. Each candidate goes to one attempt only:
/// attempts of the same claim walk one shared cursor instead of fighting over the first entry.
#[derive(Debug)]
pub struct Candidates<S> {
    order: Vec<(String, S)>,
    next: AtomicUsize,
}

impl<S: ClaimableSandbox> Candidates<S> {
    /// The offerable sandboxes of `pool` at `now`: those running `update_revision` first (all
    /// count as current when it is `None`), then older ones; each group sorted by key and
    /// rotated to begin at `start`, so concurrent claimers spread over the pool.
    pub fn new(
        pool: impl IntoIterator<Item = S>,
        update_revision: Option<&str>,
        now: SystemTime,
        start: usize,
    ) -> Self {
        let mut fresh = Vec::new();
        let mut old = Vec::new();
        for s in pool {
            let facts = s.pick_facts(now);
            if !facts.offerable() {
                continue;
            }
            let current = update_revision.is_none() || facts.revision == update_revision;
            let entry = (s.key(), s);
            if current {
                fresh.push(entry);
            } else {
                old.push(entry);
            }
        }
        let mut order = rotated(fresh, start);
        order.extend(rotated(old, start));
        Candidates {
            order,
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Keys in the order they are handed out.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|(k, _)| k.as_str())
    }

    /// The next candidate no attempt has had yet.
    pub(crate) fn next(&self) -> Option<(&str, &S)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.order.get(i).map(|(k, s)| (k.as_str(), s))
    }
}

fn rotated<S>(mut group: Vec<(String, S)>, start: usize) -> Vec<(String, S)> {
    group.sort_by(|a, b| a.0.cmp(&b.0));
    if !group.is_empty() {
        let k = start % group.len();
        group.rotate_left(k);
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{PickFacts, ReadinessFacts};

    struct S {
        name: &'static str,
        revision: &'static str,
        available: bool,
        locked: bool,
    }

    impl ClaimableSandbox for S {
        fn key(&self) -> String {
            format!("ns/{}", self.name)
        }
        fn version(&self) -> Option<u64> {
            None
        }
        fn pick_facts(&self, _: SystemTime) -> PickFacts<'_> {
            PickFacts {
                available: self.available,
                locked: self.locked,
                created: true,
                has_address: true,
                revision: Some(self.revision),
            }
        }
        fn readiness(&self) -> ReadinessFacts {
            ReadinessFacts::default()
        }
        fn runtime_url(&self) -> Option<String> {
            None
        }
    }

    fn s(name: &'static str, revision: &'static str, available: bool, locked: bool) -> S {
        S {
            name,
            revision,
            available,
            locked,
        }
    }

    fn pool() -> Vec<S> {
        vec![
            s("a", "old", true, false),
            s("b", "new", true, false),
            s("c", "new", true, true),
            s("d", "new", false, false),
            s("e", "new", true, false),
            s("f", "old", true, false),
        ]
    }

    fn keys(c: &Candidates<S>) -> Vec<&str> {
        c.keys().collect()
    }

    #[test]
    fn current_revision_first_then_old_each_rotated() {
        let now = SystemTime::now();
        let c = Candidates::new(pool(), Some("new"), now, 0);
        assert_eq!(keys(&c), ["ns/b", "ns/e", "ns/a", "ns/f"]);
        let c = Candidates::new(pool(), Some("new"), now, 1);
        assert_eq!(keys(&c), ["ns/e", "ns/b", "ns/f", "ns/a"]);
        // Without a revision to prefer, every offerable sandbox is current.
        let c = Candidates::new(pool(), None, now, 1);
        assert_eq!(keys(&c), ["ns/b", "ns/e", "ns/f", "ns/a"]);
    }

    #[test]
    fn the_cursor_hands_each_candidate_out_once() {
        let c = Candidates::new(pool(), Some("new"), SystemTime::now(), 0);
        let mut seen = Vec::new();
        while let Some((k, _)) = c.next() {
            seen.push(k.to_string());
        }
        assert_eq!(seen, ["ns/b", "ns/e", "ns/a", "ns/f"]);
        assert!(c.next().is_none());
        let empty = Candidates::new(Vec::<S>::new(), None, SystemTime::now(), 7);
        assert!(empty.is_empty() && empty.next().is_none());
    }
}
