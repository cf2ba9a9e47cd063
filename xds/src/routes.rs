//! The route publisher: the one place routes enter the server, from the Kubernetes reflector or
//! from an in-process feed (the embedded manager). It runs the [`RouteStore`] state machine and
//! publishes the id-level changes into the cache as `SandboxRoute` resources (name = sandbox id,
//! version = the Sandbox resourceVersion).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prost::Message;
use sandbox_xds_wire::SANDBOX_ROUTE_TYPE_URL;
use sandbox_xds_wire::v1::SandboxRoute;

use crate::cache::{Change, ResourceCache};
use crate::metrics::Metrics;
use crate::store::{IdChange, Key, Mutation, Outcome, RouteStore};

/// Publishes routes; cheap to clone.
#[derive(Debug, Clone)]
pub struct RoutePublisher {
    store: Arc<Mutex<RouteStore>>,
    cache: Arc<ResourceCache>,
    metrics: Metrics,
}

fn to_changes(m: &Mutation) -> Vec<Change> {
    m.changes
        .iter()
        .map(|c| match c {
            IdChange::Set(r) => Change::Put {
                name: r.id.clone(),
                version: r.resource_version.to_string(),
                body: Arc::from(r.encode_to_vec()),
            },
            IdChange::Removed(id) => Change::Remove { name: id.clone() },
        })
        .collect()
}

impl RoutePublisher {
    pub fn new(cache: Arc<ResourceCache>, metrics: Metrics) -> Self {
        RoutePublisher {
            store: Arc::new(Mutex::new(RouteStore::new())),
            cache,
            metrics,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, RouteStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, m: &Mutation) {
        self.metrics.route_event(m.outcome);
        // Invalid routes are logged with their reason by the store.
        if m.outcome == Outcome::IdTakeover {
            tracing::error!(changes = ?m.changes, "sandbox id taken over by another Sandbox");
        }
        if !m.changes.is_empty() {
            self.cache.apply(SANDBOX_ROUTE_TYPE_URL, to_changes(m));
        }
        let (_, n) = self.cache.stats(SANDBOX_ROUTE_TYPE_URL);
        self.metrics.set_routes(n);
    }

    /// Installs a route (ordered by resourceVersion; see `store`).
    pub fn upsert(&self, route: SandboxRoute) -> Outcome {
        // Hold the store lock while publishing so the cache sees mutations in store order.
        let mut store = self.store();
        let m = store.upsert(route);
        self.publish(&m);
        m.outcome
    }

    /// Deletes the route of a Sandbox (`None`: an untrusted tombstone).
    pub fn delete(&self, namespace: &str, name: &str, resource_version: Option<u64>) -> Outcome {
        let mut store = self.store();
        let m = store.delete(&(namespace.to_string(), name.to_string()), resource_version);
        self.publish(&m);
        m.outcome
    }

    /// Applies a complete listing: every route is upserted, and records for Sandboxes that are
    /// not in the listing are deleted as untrusted tombstones. Then the table is ready.
    pub fn resync(&self, routes: Vec<SandboxRoute>) {
        let mut store = self.store();
        let listed: HashSet<Key> = routes
            .iter()
            .map(|r| (r.namespace.clone(), r.name.clone()))
            .collect();
        let mut changes = Vec::new();
        for r in routes {
            let m = store.upsert(r);
            self.metrics.route_event(m.outcome);
            changes.extend(to_changes(&m));
        }
        let gone: Vec<Key> = store
            .keys()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            let m = store.delete(&k, None);
            self.metrics.route_event(m.outcome);
            changes.extend(to_changes(&m));
        }
        if !changes.is_empty() {
            self.cache.apply(SANDBOX_ROUTE_TYPE_URL, changes);
        }
        drop(store);
        self.mark_synced();
    }

    /// Declares the route set complete: gateways start being served.
    pub fn mark_synced(&self) {
        self.cache.set_ready(SANDBOX_ROUTE_TYPE_URL);
        let (_, n) = self.cache.stats(SANDBOX_ROUTE_TYPE_URL);
        self.metrics.set_routes(n);
        self.metrics.set_source_synced(true);
    }

    /// The active route for a sandbox id.
    pub fn get(&self, id: &str) -> Option<SandboxRoute> {
        self.store().get(id).cloned()
    }
}
