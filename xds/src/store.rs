//! The route store: upstream's state machine (`pkg/sandboxroute/store.go`) over plain data.
//!
//! Records are keyed by `(namespace, name)`; an index maps each sandbox id to the key that owns
//! it. Every mutation reports which *ids* changed, which is what the xDS cache serves (resource
//! name = sandbox id).
//!
//! - An upsert applies only if its resourceVersion is strictly greater than the record's and than
//!   any live deletion fence for that key; equal replays are stale.
//! - A record whose id changed deactivates its old id (only if the old id still points at it).
//! - An id already active for another key is taken over by the newer record (`id_takeover`,
//!   logged at error level upstream).
//! - A delete with a resourceVersion older than the record's is ignored; equal or newer removes
//!   the record and fences the key at that version for [`FENCE_RETENTION`], advancing an existing
//!   fence without extending its deadline. A delete without a version (an untrusted tombstone)
//!   removes the record and fences at the record's own version.
//! - Fences are swept at most once a minute, and only during mutations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandbox_xds_wire::route::validate;
use sandbox_xds_wire::v1::SandboxRoute;

/// How long a deletion fence lives (upstream `deletionFenceRetention`).
pub const FENCE_RETENTION: Duration = Duration::from_secs(600);
const FENCE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// `(namespace, name)` of a Sandbox.
pub type Key = (String, String);

/// What a mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Applied, and the id was taken over from another record.
    IdTakeover,
    Stale,
    Invalid,
    /// A delete for a key without a record (a fence may still have been set).
    Absent,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::IdTakeover => "id_takeover",
            Outcome::Stale => "stale",
            Outcome::Invalid => "invalid",
            Outcome::Absent => "absent",
        }
    }
}

/// A change to the id-keyed view.
#[derive(Debug, Clone, PartialEq)]
pub enum IdChange {
    Set(SandboxRoute),
    Removed(String),
}

/// Result of a mutation: its outcome and the id-level changes to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub outcome: Outcome,
    pub changes: Vec<IdChange>,
}

impl Mutation {
    fn none(outcome: Outcome) -> Self {
        Mutation {
            outcome,
            changes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Fence {
    resource_version: u64,
    at: Instant,
}

/// The store. Not thread-safe by itself; the cache serialises access.
#[derive(Debug)]
pub struct RouteStore {
    records: HashMap<Key, SandboxRoute>,
    active_key_by_id: HashMap<String, Key>,
    fences: HashMap<Key, Fence>,
    last_sweep: Instant,
}

impl Default for RouteStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteStore {
    pub fn new() -> Self {
        RouteStore {
            records: HashMap::new(),
            active_key_by_id: HashMap::new(),
            fences: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    pub fn len(&self) -> usize {
        self.active_key_by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active_key_by_id.is_empty()
    }

    /// The active route for a sandbox id.
    pub fn get(&self, id: &str) -> Option<&SandboxRoute> {
        let key = self.active_key_by_id.get(id)?;
        self.records.get(key).filter(|r| r.id == id)
    }

    /// Every key with a record (for resyncs against a full listing).
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.records.keys()
    }

    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) >= FENCE_SWEEP_INTERVAL {
            self.fences
                .retain(|_, f| now.duration_since(f.at) < FENCE_RETENTION);
            self.last_sweep = now;
        }
    }

    fn live_fence(&self, key: &Key, now: Instant) -> Option<u64> {
        self.fences
            .get(key)
            .filter(|f| now.duration_since(f.at) < FENCE_RETENTION)
            .map(|f| f.resource_version)
    }

    /// Installs or replaces the record for the route's key.
    pub fn upsert(&mut self, route: SandboxRoute) -> Mutation {
        self.upsert_at(route, Instant::now())
    }

    fn upsert_at(&mut self, route: SandboxRoute, now: Instant) -> Mutation {
        // The gateway module checks routes with the same function, so the store never
        // publishes one every gateway would NACK.
        if let Err(e) = validate(&route) {
            tracing::warn!(id = %route.id, error = %e, "route refused");
            return Mutation::none(Outcome::Invalid);
        }
        self.sweep(now);
        let key: Key = (route.namespace.clone(), route.name.clone());
        let current = self
            .records
            .get(&key)
            .map(|r| r.resource_version)
            .unwrap_or(0);
        let fence = self.live_fence(&key, now).unwrap_or(0);
        if route.resource_version <= current.max(fence) {
            return Mutation::none(Outcome::Stale);
        }
        self.fences.remove(&key);
        let mut changes = Vec::new();
        if let Some(old) = self.records.get(&key)
            && old.id != route.id
            && self.active_key_by_id.get(&old.id) == Some(&key)
        {
            self.active_key_by_id.remove(&old.id);
            changes.push(IdChange::Removed(old.id.clone()));
        }
        let mut outcome = Outcome::Applied;
        if let Some(other) = self.active_key_by_id.get(&route.id)
            && *other != key
        {
            outcome = Outcome::IdTakeover;
        }
        self.active_key_by_id.insert(route.id.clone(), key.clone());
        changes.push(IdChange::Set(route.clone()));
        self.records.insert(key, route);
        Mutation { outcome, changes }
    }

    /// Deletes the record for `key`; see the module docs for the version rules.
    pub fn delete(&mut self, key: &Key, resource_version: Option<u64>) -> Mutation {
        self.delete_at(key, resource_version, Instant::now())
    }

    fn delete_at(&mut self, key: &Key, resource_version: Option<u64>, now: Instant) -> Mutation {
        self.sweep(now);
        let current = self.records.get(key).map(|r| r.resource_version);
        let fence_rv = match (resource_version, current) {
            (Some(rv), Some(cur)) if rv < cur => return Mutation::none(Outcome::Stale),
            (Some(rv), _) => rv,
            (None, Some(cur)) => cur,
            (None, None) => return Mutation::none(Outcome::Absent),
        };
        match self.fences.get_mut(key) {
            Some(f) if now.duration_since(f.at) < FENCE_RETENTION => {
                f.resource_version = f.resource_version.max(fence_rv);
            }
            _ => {
                self.fences.insert(
                    key.clone(),
                    Fence {
                        resource_version: fence_rv,
                        at: now,
                    },
                );
            }
        }
        let Some(old) = self.records.remove(key) else {
            return Mutation::none(Outcome::Absent);
        };
        let mut changes = Vec::new();
        if self.active_key_by_id.get(&old.id) == Some(key) {
            self.active_key_by_id.remove(&old.id);
            changes.push(IdChange::Removed(old.id));
        }
        Mutation {
            outcome: Outcome::Applied,
            changes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_xds_wire::v1::sandbox_route::State;

    fn route(ns: &str, name: &str, id: &str, rv: u64) -> SandboxRoute {
        SandboxRoute {
            id: id.into(),
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: rv,
            ip: "10.0.0.1".into(),
            state: State::Running as i32,
            ..Default::default()
        }
    }

    fn key(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    #[test]
    fn ordering_replays_and_validation() {
        let mut s = RouteStore::new();
        assert_eq!(s.upsert(route("ns", "a", "a", 5)).outcome, Outcome::Applied);
        assert_eq!(s.upsert(route("ns", "a", "a", 5)).outcome, Outcome::Stale);
        assert_eq!(s.upsert(route("ns", "a", "a", 4)).outcome, Outcome::Stale);
        assert_eq!(s.upsert(route("ns", "a", "a", 6)).outcome, Outcome::Applied);
        assert_eq!(s.get("a").unwrap().resource_version, 6);
        let mut bad = route("ns", "b", "b", 1);
        bad.uid.clear();
        assert_eq!(s.upsert(bad).outcome, Outcome::Invalid);
        let mut bad = route("ns", "b", "b", 1);
        bad.ip.clear();
        assert_eq!(
            s.upsert(bad).outcome,
            Outcome::Invalid,
            "running without ip"
        );
        let mut bad = route("ns", "b", "b", 1);
        bad.access_token_sha256 = vec![1; 31];
        assert_eq!(s.upsert(bad).outcome, Outcome::Invalid);
        assert_eq!(s.upsert(route("ns", "b", "b", 0)).outcome, Outcome::Invalid);
        // The module's stricter rules hold here too (sandbox_xds_wire::route).
        let mut bad = route("ns", "b", "b/x", 1);
        assert_eq!(
            s.upsert(bad.clone()).outcome,
            Outcome::Invalid,
            "id alphabet"
        );
        bad.id = "b".into();
        bad.state = 0;
        assert_eq!(s.upsert(bad.clone()).outcome, Outcome::Invalid, "no state");
        bad.state = State::Running as i32;
        bad.require_access_token = true;
        assert_eq!(
            s.upsert(bad).outcome,
            Outcome::Invalid,
            "token without digest"
        );
        assert!(s.get("b").is_none());
    }

    #[test]
    fn delete_matrix_and_fences() {
        let mut s = RouteStore::new();
        let k = key("ns", "a");
        assert_eq!(s.delete(&k, None).outcome, Outcome::Absent);
        s.upsert(route("ns", "a", "a", 5));
        assert_eq!(s.delete(&k, Some(4)).outcome, Outcome::Stale);
        assert!(s.get("a").is_some());
        let m = s.delete(&k, Some(5));
        assert_eq!(m.outcome, Outcome::Applied);
        assert_eq!(m.changes, vec![IdChange::Removed("a".into())]);
        assert_eq!(
            s.upsert(route("ns", "a", "a", 5)).outcome,
            Outcome::Stale,
            "fenced"
        );
        assert_eq!(
            s.upsert(route("ns", "a", "a", 6)).outcome,
            Outcome::Applied,
            "newer crosses the fence"
        );
        // Untrusted tombstone fences at the record's own version.
        assert_eq!(s.delete(&k, None).outcome, Outcome::Applied);
        assert_eq!(s.upsert(route("ns", "a", "a", 6)).outcome, Outcome::Stale);
        // A fence without a record advances but is not extended.
        let k2 = key("ns", "x");
        let t0 = Instant::now();
        s.delete_at(&k2, Some(3), t0);
        s.delete_at(&k2, Some(9), t0 + Duration::from_secs(500));
        assert_eq!(
            s.upsert_at(route("ns", "x", "x", 8), t0 + Duration::from_secs(550))
                .outcome,
            Outcome::Stale
        );
        assert_eq!(
            s.upsert_at(
                route("ns", "x", "x", 8),
                t0 + FENCE_RETENTION + Duration::from_secs(1)
            )
            .outcome,
            Outcome::Applied,
            "the fence expired 10 minutes after it was first set"
        );
    }

    #[test]
    fn id_change_and_takeover() {
        let mut s = RouteStore::new();
        s.upsert(route("ns", "a", "old-id", 1));
        // The same object gets a new (short) id: the old id goes away.
        let m = s.upsert(route("ns", "a", "new-id", 2));
        assert_eq!(m.outcome, Outcome::Applied);
        assert!(m.changes.contains(&IdChange::Removed("old-id".into())));
        assert!(s.get("old-id").is_none());
        assert_eq!(s.get("new-id").unwrap().name, "a");
        // Another object claims the same id: it takes it over.
        let m = s.upsert(route("ns", "b", "new-id", 3));
        assert_eq!(m.outcome, Outcome::IdTakeover);
        assert_eq!(s.get("new-id").unwrap().name, "b");
        // Deleting the loser does not remove the winner's id.
        let m = s.delete(&key("ns", "a"), Some(4));
        assert!(m.changes.is_empty(), "{m:?}");
        assert_eq!(s.get("new-id").unwrap().name, "b");
        // And a stale update of the loser does not steal it back.
        assert_eq!(
            s.upsert(route("ns", "a", "new-id", 4)).outcome,
            Outcome::Stale
        );
        assert_eq!(s.get("new-id").unwrap().name, "b");
    }
}
