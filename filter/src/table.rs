//! The route table: one per name, shared by every Envoy worker thread of the process.
//!
//! Reads (one per request) are lock-free: a concurrent hash map with epoch-based reclamation, so
//! a worker never waits for a writer and never sees a half-applied update.
//!
//! Writes come from a static config ([`RouteTable::replace_all`]) or from sandbox-xds
//! ([`RouteTable::set`], [`RouteTable::unset`]). The ordering rules (resourceVersion ordering,
//! deletion fences, id takeover) are applied where the truth is assembled, in the server's route
//! store; the table mirrors what the server decided, with one guard against a lagging server: an
//! older version of the *same* Sandbox (same UID) never replaces a newer one. Writers are rare
//! and serialised by a mutex; readers never take it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::route::Route;

type Hasher = foldhash::fast::RandomState;

/// What a mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Inserted,
    Updated,
    Removed,
    /// Ignored: not newer than what the table holds for the same Sandbox.
    Stale,
    /// Ignored: nothing to remove.
    Absent,
}

impl Applied {
    pub fn changed(self) -> bool {
        matches!(
            self,
            Applied::Inserted | Applied::Updated | Applied::Removed
        )
    }
}

/// Routes by sandbox id.
#[derive(Debug)]
pub struct RouteTable {
    routes: papaya::HashMap<Box<str>, Route, Hasher>,
    /// Serialises writers so that check-then-write sequences are atomic with respect to each
    /// other. Readers never take it.
    writer: Mutex<()>,
    synced: AtomicBool,
    generation: AtomicU64,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    pub fn new() -> Self {
        RouteTable {
            // Blocking resizes: a resize completes inside the (rare) write that triggers it, so
            // readers never probe two tables and no half-migrated table lingers in memory.
            routes: papaya::HashMap::builder()
                .hasher(Hasher::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            writer: Mutex::new(()),
            synced: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// The process-wide table called `name`, created on first use. Tables live as long as some
    /// filter config holds them, so a listener update that recreates the filter config keeps the
    /// routes it already has.
    pub fn named(name: &str) -> Arc<RouteTable> {
        static TABLES: OnceLock<Mutex<HashMap<String, Weak<RouteTable>>>> = OnceLock::new();
        let mut tables = TABLES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get(name).and_then(Weak::upgrade) {
            return t;
        }
        tables.retain(|_, w| w.strong_count() > 0);
        let t = Arc::new(RouteTable::new());
        tables.insert(name.to_string(), Arc::downgrade(&t));
        t
    }

    /// Runs `f` on the route for `id` (lock-free). The reference cannot escape `f`.
    #[inline]
    pub fn with_route<R>(&self, id: &str, f: impl FnOnce(Option<&Route>) -> R) -> R {
        let guard = self.routes.guard();
        f(self.routes.get(id, &guard))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// True once the table has received one complete view of the routes from its source.
    #[inline]
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Bumped on every change; lets the metrics code publish the size only when it moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Installs `route` for `id`, unless the table holds a version at least as new of the same
    /// Sandbox (same UID). A different UID always wins: the server decided (a recreated Sandbox,
    /// or an id taken over by another one).
    pub fn set(&self, id: &str, route: Route) -> Applied {
        let _w = self.lock_writer();
        let guard = self.routes.guard();
        let applied = match self.routes.get(id, &guard) {
            Some(cur)
                if cur.sandbox.uid() == route.sandbox.uid()
                    && cur.resource_version >= route.resource_version =>
            {
                Applied::Stale
            }
            Some(_) => Applied::Updated,
            None => Applied::Inserted,
        };
        if applied.changed() {
            self.routes.insert(id.into(), route, &guard);
            self.bump();
        }
        applied
    }

    /// Removes the route for `id`.
    pub fn unset(&self, id: &str) -> Applied {
        let _w = self.lock_writer();
        let guard = self.routes.guard();
        if self.routes.remove(id, &guard).is_some() {
            self.bump();
            Applied::Removed
        } else {
            Applied::Absent
        }
    }

    /// `(id, resourceVersion)` of every route, for resuming an xDS subscription.
    pub fn versions(&self) -> Vec<(String, u64)> {
        let guard = self.routes.guard();
        self.routes
            .iter(&guard)
            .map(|(k, v)| (k.to_string(), v.resource_version))
            .collect()
    }

    /// Replaces the whole content (a state-of-the-world update): routes not in `routes` are
    /// removed, the others installed as given, and the table is marked synced.
    pub fn replace_all(&self, routes: Vec<(String, Route)>) {
        let _w = self.lock_writer();
        let guard = self.routes.guard();
        let keep: std::collections::HashSet<&str> =
            routes.iter().map(|(id, _)| id.as_str()).collect();
        self.routes.retain(|k, _| keep.contains(&**k), &guard);
        drop(keep);
        self.routes
            .reserve(routes.len().saturating_sub(self.routes.len()), &guard);
        for (id, route) in routes {
            self.routes.insert(id.into_boxed_str(), route, &guard);
        }
        self.bump();
        self.mark_synced();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RouteFlags, RouteState, SandboxRef};

    fn route(rv: u64) -> Route {
        Route {
            sandbox: SandboxRef::new("ns", "name", "uid"),
            resource_version: rv,
            ip: Some("10.0.0.1".parse().unwrap()),
            state: RouteState::Running,
            flags: RouteFlags::empty(),
            access_token: None,
            traffic_token: None,
        }
    }

    fn rv_of(t: &RouteTable, id: &str) -> Option<u64> {
        t.with_route(id, |r| r.map(|r| r.resource_version))
    }

    fn route_of(uid: &str, rv: u64) -> Route {
        Route {
            sandbox: SandboxRef::new("ns", "name", uid),
            ..route(rv)
        }
    }

    #[test]
    fn set_ignores_older_versions_of_the_same_sandbox_only() {
        let t = RouteTable::new();
        assert_eq!(t.set("a", route(5)), Applied::Inserted);
        assert_eq!(t.set("a", route(5)), Applied::Stale, "equal replay");
        assert_eq!(t.set("a", route(4)), Applied::Stale, "a lagging server");
        assert_eq!(rv_of(&t, "a"), Some(5));
        assert_eq!(t.set("a", route(6)), Applied::Updated);
        // Another Sandbox now owns the id (recreated, or taken over): the server decided.
        assert_eq!(t.set("a", route_of("other-uid", 3)), Applied::Updated);
        assert_eq!(rv_of(&t, "a"), Some(3));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unset_and_versions() {
        let t = RouteTable::new();
        t.set("a", route(5));
        t.set("b", route(7));
        let mut v = t.versions();
        v.sort();
        assert_eq!(v, vec![("a".to_string(), 5), ("b".to_string(), 7)]);
        assert_eq!(t.unset("a"), Applied::Removed);
        assert_eq!(t.unset("a"), Applied::Absent);
        assert_eq!(rv_of(&t, "a"), None);
    }

    #[test]
    fn replace_all_is_authoritative_and_syncs() {
        let t = RouteTable::new();
        assert!(!t.is_synced());
        t.set("old", route(1));
        t.replace_all(vec![
            ("a".to_string(), route(1)),
            ("b".to_string(), route(2)),
        ]);
        assert!(t.is_synced());
        assert_eq!(t.len(), 2);
        assert_eq!(rv_of(&t, "old"), None);
    }

    #[test]
    fn generation_moves_only_on_change() {
        let t = RouteTable::new();
        let g0 = t.generation();
        t.set("a", route(1));
        let g1 = t.generation();
        assert!(g1 > g0);
        t.set("a", route(1));
        assert_eq!(t.generation(), g1);
    }

    #[test]
    fn named_tables_are_shared_while_alive() {
        let a = RouteTable::named("t-shared");
        let b = RouteTable::named("t-shared");
        assert!(Arc::ptr_eq(&a, &b));
        let c = RouteTable::named("t-other");
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn concurrent_readers_see_whole_routes() {
        let t = Arc::new(RouteTable::new());
        t.set("a", route(1));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let rv = rv_of(&t, "a").expect("route never disappears");
                        assert!(rv >= 1);
                    }
                })
            })
            .collect();
        for rv in 2..2_000 {
            t.set("a", route(rv));
        }
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(rv_of(&t, "a"), Some(1_999));
    }
}
