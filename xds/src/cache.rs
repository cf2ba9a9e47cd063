//! The versioned resource cache every discovery stream reads.
//!
//! One [`TypeState`] per resource type: the current resources by name, a per-type version that
//! grows with every change batch, and a bounded log of `(version, name)` changes. A stream keeps a
//! cursor (the type version it has reconciled to) and the versions its client holds; reconciling
//! reads only the names logged after its cursor, so the cost of a delta does not grow with the
//! size of the table. A stream whose cursor fell off the log, or that just (re)connected, does one
//! full diff instead.
//!
//! A type becomes *ready* when its source has delivered one complete view (the route source's
//! first list); until then no stream is served for it, so a gateway never mistakes a partial
//! table for a complete one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

/// Changes kept for incremental reconciliation; older cursors fall back to a full diff.
pub const LOG_CAPACITY: usize = 262_144;

/// One resource as served.
#[derive(Debug, Clone)]
pub struct Entry {
    /// xDS resource version (for routes: the Sandbox resourceVersion).
    pub version: String,
    /// The encoded resource (the `Any.value`).
    pub body: Arc<[u8]>,
    /// Type version at which this entry last changed.
    pub changed_at: u64,
}

/// A change to apply to one type.
#[derive(Debug, Clone)]
pub enum Change {
    Put {
        name: String,
        version: String,
        body: Arc<[u8]>,
    },
    Remove {
        name: String,
    },
}

#[derive(Debug, Default)]
struct TypeState {
    version: u64,
    entries: HashMap<String, Entry>,
    log: VecDeque<(u64, String)>,
    /// Every change with a version above `floor` is in the log.
    floor: u64,
    ready: bool,
}

impl TypeState {
    fn record(&mut self, name: String) {
        if self.log.len() == LOG_CAPACITY
            && let Some((v, _)) = self.log.pop_front()
        {
            self.floor = v;
        }
        self.log.push_back((self.version, name));
    }
}

/// What a stream's client holds of one type, and what it asked for.
#[derive(Debug, Default)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: HashSet<String>,
    /// name → version the client has (from `initial_resource_versions` and what we sent).
    pub known: HashMap<String, String>,
    /// Names to check regardless of the log (newly subscribed).
    pub dirty: HashSet<String>,
    /// Type version reconciled to; 0 before the first reconciliation.
    pub cursor: u64,
    /// Whether the first response (possibly empty) has been sent.
    pub initial_sent: bool,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// The resources a stream must send: changed ones and removed names.
#[derive(Debug, Default)]
pub struct Delta {
    pub version: u64,
    pub resources: Vec<(String, Entry)>,
    pub removed: Vec<String>,
}

/// The cache shared by the sources and all streams.
#[derive(Debug)]
pub struct ResourceCache {
    types: RwLock<HashMap<String, Arc<RwLock<TypeState>>>>,
    changed: watch::Sender<u64>,
}

impl Default for ResourceCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceCache {
    pub fn new() -> Self {
        ResourceCache {
            types: RwLock::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }

    fn type_state(&self, type_url: &str) -> Arc<RwLock<TypeState>> {
        if let Some(t) = self
            .types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(type_url)
        {
            return t.clone();
        }
        self.types
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(type_url.to_string())
            .or_default()
            .clone()
    }

    /// Wakes every stream after a change (the value is a change counter).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Applies a batch of changes as one new type version. Returns that version (unchanged if
    /// nothing in the batch changed anything).
    pub fn apply(&self, type_url: &str, changes: impl IntoIterator<Item = Change>) -> u64 {
        let ts = self.type_state(type_url);
        let mut t = ts.write().unwrap_or_else(|e| e.into_inner());
        let next = t.version + 1;
        let mut touched = false;
        for change in changes {
            match change {
                Change::Put {
                    name,
                    version,
                    body,
                } => {
                    if t.entries
                        .get(&name)
                        .is_some_and(|e| e.version == version && e.body == body)
                    {
                        continue;
                    }
                    t.version = next;
                    t.entries.insert(
                        name.clone(),
                        Entry {
                            version,
                            body,
                            changed_at: next,
                        },
                    );
                    t.record(name);
                    touched = true;
                }
                Change::Remove { name } => {
                    if t.entries.remove(&name).is_some() {
                        t.version = next;
                        t.record(name);
                        touched = true;
                    }
                }
            }
        }
        let v = t.version;
        drop(t);
        if touched {
            self.notify();
        }
        v
    }

    /// Replaces the whole set of a type (listeners, clusters): a diff against what is there.
    pub fn replace(&self, type_url: &str, resources: Vec<(String, String, Arc<[u8]>)>) -> u64 {
        let keep: HashSet<&str> = resources.iter().map(|(n, _, _)| n.as_str()).collect();
        let removed: Vec<String> = {
            let ts = self.type_state(type_url);
            let t = ts.read().unwrap_or_else(|e| e.into_inner());
            t.entries
                .keys()
                .filter(|n| !keep.contains(n.as_str()))
                .cloned()
                .collect()
        };
        let changes = removed
            .into_iter()
            .map(|name| Change::Remove { name })
            .chain(
                resources
                    .into_iter()
                    .map(|(name, version, body)| Change::Put {
                        name,
                        version,
                        body,
                    }),
            );
        self.apply(type_url, changes.collect::<Vec<_>>())
    }

    /// Marks a type as complete (its source delivered a full view); streams start being served.
    pub fn set_ready(&self, type_url: &str) {
        let ts = self.type_state(type_url);
        let was = std::mem::replace(
            &mut ts.write().unwrap_or_else(|e| e.into_inner()).ready,
            true,
        );
        if !was {
            self.notify();
        }
    }

    pub fn is_ready(&self, type_url: &str) -> bool {
        self.type_state(type_url)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ready
    }

    /// Current version and size of a type.
    pub fn stats(&self, type_url: &str) -> (u64, usize) {
        let ts = self.type_state(type_url);
        let t = ts.read().unwrap_or_else(|e| e.into_inner());
        (t.version, t.entries.len())
    }

    /// One resource, if present.
    pub fn get(&self, type_url: &str, name: &str) -> Option<Entry> {
        let ts = self.type_state(type_url);
        let t = ts.read().unwrap_or_else(|e| e.into_inner());
        t.entries.get(name).cloned()
    }

    /// What `sub` must receive now. `None` when the type is not ready, or when there is nothing
    /// to send and the initial response was already sent.
    pub fn delta(&self, type_url: &str, sub: &mut Subscription) -> Option<Delta> {
        let ts = self.type_state(type_url);
        let t = ts.read().unwrap_or_else(|e| e.into_inner());
        if !t.ready || (sub.cursor == t.version && sub.dirty.is_empty() && sub.initial_sent) {
            return None;
        }
        let mut delta = Delta {
            version: t.version,
            ..Default::default()
        };
        let check = |name: &str, sub: &mut Subscription, delta: &mut Delta| {
            if !sub.wants(name) {
                return;
            }
            match (t.entries.get(name), sub.known.get(name)) {
                (Some(e), known) if known != Some(&e.version) => {
                    sub.known.insert(name.to_string(), e.version.clone());
                    delta.resources.push((name.to_string(), e.clone()));
                }
                (None, Some(_)) => {
                    sub.known.remove(name);
                    delta.removed.push(name.to_string());
                }
                _ => {}
            }
        };
        if sub.cursor == 0 || sub.cursor < t.floor {
            // Full diff: everything the client might want, and everything it holds.
            let names: Vec<String> = if sub.wildcard {
                t.entries.keys().cloned().collect()
            } else {
                sub.names.iter().cloned().collect()
            };
            for name in names {
                check(&name, sub, &mut delta);
            }
            let held: Vec<String> = sub
                .known
                .keys()
                .filter(|n| !t.entries.contains_key(*n))
                .cloned()
                .collect();
            for name in held {
                check(&name, sub, &mut delta);
            }
        } else {
            // Only what changed since the cursor (the log is ordered by version).
            let start = t.log.partition_point(|(v, _)| *v <= sub.cursor);
            let names: Vec<String> = t.log.range(start..).map(|(_, n)| n.clone()).collect();
            for name in names {
                check(&name, sub, &mut delta);
            }
        }
        for name in std::mem::take(&mut sub.dirty) {
            check(&name, sub, &mut delta);
        }
        sub.cursor = t.version;
        if delta.resources.is_empty() && delta.removed.is_empty() && sub.initial_sent {
            return None;
        }
        sub.initial_sent = true;
        Some(delta)
    }

    /// State-of-the-world view of a type: its version and the resources `names` selects (all of
    /// them when `names` is empty). `None` while the type is not ready.
    pub fn sotw(
        &self,
        type_url: &str,
        names: &HashSet<String>,
    ) -> Option<(u64, Vec<(String, Entry)>)> {
        let ts = self.type_state(type_url);
        let t = ts.read().unwrap_or_else(|e| e.into_inner());
        if !t.ready {
            return None;
        }
        let resources = t
            .entries
            .iter()
            .filter(|(n, _)| names.is_empty() || names.contains(*n))
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        Some((t.version, resources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "type.test/Thing";

    fn put(name: &str, version: &str) -> Change {
        Change::Put {
            name: name.into(),
            version: version.into(),
            body: Arc::from(name.as_bytes()),
        }
    }

    fn names(d: &Delta) -> Vec<String> {
        let mut v: Vec<String> = d.resources.iter().map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn not_ready_types_are_not_served() {
        let c = ResourceCache::new();
        c.apply(T, [put("a", "1")]);
        let mut sub = Subscription {
            wildcard: true,
            ..Default::default()
        };
        assert!(c.delta(T, &mut sub).is_none());
        c.set_ready(T);
        assert_eq!(names(&c.delta(T, &mut sub).unwrap()), vec!["a"]);
    }

    #[test]
    fn empty_ready_type_still_answers_once() {
        let c = ResourceCache::new();
        c.set_ready(T);
        let mut sub = Subscription {
            wildcard: true,
            ..Default::default()
        };
        let d = c.delta(T, &mut sub).expect("an empty initial response");
        assert!(d.resources.is_empty() && d.removed.is_empty());
        assert!(c.delta(T, &mut sub).is_none());
    }

    #[test]
    fn incremental_deltas_and_removals() {
        let c = ResourceCache::new();
        c.set_ready(T);
        c.apply(T, [put("a", "1"), put("b", "1")]);
        let mut sub = Subscription {
            wildcard: true,
            ..Default::default()
        };
        assert_eq!(names(&c.delta(T, &mut sub).unwrap()), vec!["a", "b"]);
        assert!(c.delta(T, &mut sub).is_none());
        c.apply(T, [put("b", "2"), Change::Remove { name: "a".into() }]);
        let d = c.delta(T, &mut sub).unwrap();
        assert_eq!(names(&d), vec!["b"]);
        assert_eq!(d.removed, vec!["a"]);
        // Re-putting an identical entry is not a change.
        let v = c.stats(T).0;
        assert_eq!(c.apply(T, [put("b", "2")]), v);
        assert!(c.delta(T, &mut sub).is_none());
    }

    #[test]
    fn resume_sends_only_what_differs_from_initial_versions() {
        let c = ResourceCache::new();
        c.set_ready(T);
        c.apply(T, [put("a", "1"), put("b", "2"), put("c", "3")]);
        let mut sub = Subscription {
            wildcard: true,
            ..Default::default()
        };
        sub.known.insert("a".into(), "1".into());
        sub.known.insert("b".into(), "1".into());
        sub.known.insert("gone".into(), "9".into());
        let d = c.delta(T, &mut sub).unwrap();
        assert_eq!(names(&d), vec!["b", "c"]);
        assert_eq!(d.removed, vec!["gone"]);
    }

    #[test]
    fn named_subscriptions_get_only_their_names() {
        let c = ResourceCache::new();
        c.set_ready(T);
        c.apply(T, [put("a", "1"), put("b", "1")]);
        let mut sub = Subscription::default();
        sub.names.insert("b".into());
        assert_eq!(names(&c.delta(T, &mut sub).unwrap()), vec!["b"]);
        c.apply(T, [put("a", "2")]);
        assert!(c.delta(T, &mut sub).is_none());
        sub.names.insert("a".into());
        sub.dirty.insert("a".into());
        assert_eq!(names(&c.delta(T, &mut sub).unwrap()), vec!["a"]);
    }

    #[test]
    fn cursors_that_fell_off_the_log_do_a_full_diff() {
        let c = ResourceCache::new();
        c.set_ready(T);
        c.apply(T, [put("a", "1")]);
        let mut sub = Subscription {
            wildcard: true,
            ..Default::default()
        };
        c.delta(T, &mut sub).unwrap();
        for i in 0..(LOG_CAPACITY + 10) {
            c.apply(T, [put(&format!("n{}", i % 3), &i.to_string())]);
        }
        c.apply(T, [Change::Remove { name: "a".into() }]);
        let d = c.delta(T, &mut sub).unwrap();
        assert_eq!(names(&d), vec!["n0", "n1", "n2"]);
        assert_eq!(d.removed, vec!["a"]);
    }

    #[test]
    fn replace_diffs_the_whole_set() {
        let c = ResourceCache::new();
        c.set_ready(T);
        c.replace(
            T,
            vec![
                ("l1".into(), "x".into(), Arc::from(&b"1"[..])),
                ("l2".into(), "x".into(), Arc::from(&b"2"[..])),
            ],
        );
        let mut sub = Subscription {
            wildcard: true,
            ..Default::default()
        };
        assert_eq!(names(&c.delta(T, &mut sub).unwrap()), vec!["l1", "l2"]);
        c.replace(T, vec![("l2".into(), "y".into(), Arc::from(&b"3"[..]))]);
        let d = c.delta(T, &mut sub).unwrap();
        assert_eq!(names(&d), vec!["l2"]);
        assert_eq!(d.removed, vec!["l1"]);
        let (v, all) = c.sotw(T, &HashSet::new()).unwrap();
        assert_eq!((v, all.len()), (c.stats(T).0, 1));
    }
}
