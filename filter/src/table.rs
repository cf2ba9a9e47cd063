//! The route table: one per name, shared by every Envoy worker thread of the process.
//!
//! Reads (one per request) are lock-free: a concurrent hash map with epoch-based reclamation, so
//! a worker never waits for a writer and never sees a half-applied update. Writes (from the
//! filter config today, from the xDS feed later) are ordered by resourceVersion per sandbox id,
//! and deletions leave a time-limited fence so that a late, stale upsert cannot resurrect a
//! deleted sandbox. Writers are rare and may take a mutex; readers never do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::route::Route;

/// How long a deletion fence is kept (upstream `deletionFenceRetention`).
pub const FENCE_RETENTION: Duration = Duration::from_secs(600);
/// Fences are swept at most this often, and only while applying a mutation.
const FENCE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

type Hasher = foldhash::fast::RandomState;

/// What a mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Inserted,
    Updated,
    Removed,
    /// Ignored: not newer than what the table holds (or than a deletion fence).
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

#[derive(Debug)]
struct Fences {
    by_id: HashMap<Box<str>, (u64, Instant)>,
    last_sweep: Instant,
}

/// Routes by sandbox id.
#[derive(Debug)]
pub struct RouteTable {
    routes: papaya::HashMap<Box<str>, Route, Hasher>,
    /// Serialises writers so that check-then-write sequences (ordering, fences) are atomic with
    /// respect to each other. Readers never take it.
    writer: Mutex<Fences>,
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
            writer: Mutex::new(Fences {
                by_id: HashMap::new(),
                last_sweep: Instant::now(),
            }),
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

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Fences> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(w.last_sweep) >= FENCE_SWEEP_INTERVAL {
            w.by_id
                .retain(|_, (_, at)| now.duration_since(*at) < FENCE_RETENTION);
            w.last_sweep = now;
        }
        w
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Installs `route` for `id` if it is newer (strictly greater resourceVersion) than both the
    /// current route and any live deletion fence for that id.
    pub fn upsert(&self, id: &str, route: Route) -> Applied {
        let mut w = self.lock_writer();
        if let Some((fence_rv, at)) = w.by_id.get(id)
            && at.elapsed() < FENCE_RETENTION
            && route.resource_version <= *fence_rv
        {
            return Applied::Stale;
        }
        let guard = self.routes.guard();
        let applied = match self.routes.get(id, &guard) {
            Some(cur) if cur.resource_version >= route.resource_version => Applied::Stale,
            Some(_) => Applied::Updated,
            None => Applied::Inserted,
        };
        if applied.changed() {
            w.by_id.remove(id);
            self.routes.insert(id.into(), route, &guard);
            self.bump();
        }
        applied
    }

    /// Removes the route for `id`.
    ///
    /// With a resourceVersion (a trusted deletion), an older version than the current route is
    /// ignored; otherwise the route goes and a fence at that version is kept for
    /// [`FENCE_RETENTION`] (an existing fence is advanced without extending its deadline).
    /// Without one (an untrusted tombstone), the current route goes and is fenced at its own
    /// version.
    pub fn remove(&self, id: &str, resource_version: Option<u64>) -> Applied {
        let mut w = self.lock_writer();
        let guard = self.routes.guard();
        let current = self.routes.get(id, &guard).map(|r| r.resource_version);
        let fence_rv = match (resource_version, current) {
            (Some(rv), Some(cur)) if rv < cur => return Applied::Stale,
            (Some(rv), _) => rv,
            (None, Some(cur)) => cur,
            (None, None) => return Applied::Absent,
        };
        let now = Instant::now();
        w.by_id
            .entry(id.into())
            .and_modify(|(rv, _)| *rv = (*rv).max(fence_rv))
            .or_insert((fence_rv, now));
        if current.is_some() {
            self.routes.remove(id, &guard);
            self.bump();
            Applied::Removed
        } else {
            Applied::Absent
        }
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

    #[test]
    fn upserts_are_ordered_by_resource_version() {
        let t = RouteTable::new();
        assert_eq!(t.upsert("a", route(5)), Applied::Inserted);
        assert_eq!(
            t.upsert("a", route(5)),
            Applied::Stale,
            "equal replay is stale"
        );
        assert_eq!(t.upsert("a", route(4)), Applied::Stale);
        assert_eq!(rv_of(&t, "a"), Some(5));
        assert_eq!(t.upsert("a", route(6)), Applied::Updated);
        assert_eq!(rv_of(&t, "a"), Some(6));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn deletion_fences_stop_stale_resurrection() {
        let t = RouteTable::new();
        t.upsert("a", route(5));
        assert_eq!(t.remove("a", Some(7)), Applied::Removed);
        assert_eq!(
            t.upsert("a", route(6)),
            Applied::Stale,
            "older than the fence"
        );
        assert_eq!(
            t.upsert("a", route(7)),
            Applied::Stale,
            "equal to the fence"
        );
        assert_eq!(rv_of(&t, "a"), None);
        assert_eq!(
            t.upsert("a", route(8)),
            Applied::Inserted,
            "newer crosses the fence"
        );
        assert_eq!(rv_of(&t, "a"), Some(8));
    }

    #[test]
    fn delete_matrix() {
        let t = RouteTable::new();
        assert_eq!(t.remove("a", None), Applied::Absent);
        t.upsert("a", route(5));
        assert_eq!(
            t.remove("a", Some(4)),
            Applied::Stale,
            "older delete ignored"
        );
        assert_eq!(rv_of(&t, "a"), Some(5));
        assert_eq!(
            t.remove("a", Some(5)),
            Applied::Removed,
            "equal delete accepted"
        );
        assert_eq!(t.remove("a", Some(5)), Applied::Absent, "idempotent");
        t.upsert("b", route(9));
        assert_eq!(
            t.remove("b", None),
            Applied::Removed,
            "tombstone without rv"
        );
        assert_eq!(
            t.upsert("b", route(9)),
            Applied::Stale,
            "fenced at the record's rv"
        );
        // A fence without a record is created by a trusted delete and advanced by a later one.
        assert_eq!(t.remove("c", Some(3)), Applied::Absent);
        assert_eq!(t.remove("c", Some(10)), Applied::Absent);
        assert_eq!(t.upsert("c", route(9)), Applied::Stale);
        assert_eq!(t.upsert("c", route(11)), Applied::Inserted);
    }

    #[test]
    fn replace_all_is_authoritative_and_syncs() {
        let t = RouteTable::new();
        assert!(!t.is_synced());
        t.upsert("old", route(1));
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
        t.upsert("a", route(1));
        let g1 = t.generation();
        assert!(g1 > g0);
        t.upsert("a", route(1));
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
        t.upsert("a", route(1));
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
            t.upsert("a", route(rv));
        }
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(rv_of(&t, "a"), Some(1_999));
    }
}
