//! The manager's view of the cluster: watch caches (reflectors) of Sandboxes and SandboxSets in
//! the watched namespace (or all), plus the objects this replica wrote last, so that a read
//! right after a write never sees the older object a lagging watch still holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use sandbox_api::keys::*;
use sandbox_api::{Sandbox, SandboxSet};
use sandbox_core::ClaimableSandbox;
use tokio_util::sync::CancellationToken;

use crate::model::SandboxId;

use super::record::claimed_id;

/// Watch caches and this replica's own writes.
#[derive(Clone)]
pub struct Index {
    sandboxes: Store<Sandbox>,
    sets: Store<SandboxSet>,
    /// `namespace/name` → the newest object this replica wrote and when (dropped once the cache
    /// has it, or after [`WRITTEN_TTL`]).
    written: Arc<DashMap<String, (Instant, Arc<Sandbox>)>>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Drops what the manager never reads before the cache keeps an object.
fn strip_sandbox(s: &mut Sandbox) {
    s.managed_fields_mut().clear();
    s.spec.volume_claim_templates.clear();
}

fn spawn_reflector<K>(api: Api<K>, shutdown: CancellationToken, modify: fn(&mut K)) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(modify),
    );
    let kind = K::kind(&()).into_owned();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = stream.next() => match ev {
                    None => break,
                    Some(Err(e)) => tracing::warn!(kind, error = %e, "watch error (retrying with backoff)"),
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    reader
}

/// How long an own write is preferred over a cache that has not caught up (a watch that lags
/// longer than this is broken, and reads fall back to what it holds).
const WRITTEN_TTL: Duration = Duration::from_secs(30);

fn rv(s: &Sandbox) -> u64 {
    s.version().unwrap_or(0)
}

impl Index {
    /// Starts the watches; [`Index::wait_synced`] tells when they have listed.
    pub fn start(client: &Client, namespace: Option<&str>, shutdown: CancellationToken) -> Index {
        Index {
            sandboxes: spawn_reflector(api(client, namespace), shutdown.clone(), strip_sandbox),
            sets: spawn_reflector(api(client, namespace), shutdown, |s: &mut SandboxSet| {
                s.managed_fields_mut().clear()
            }),
            written: Arc::new(DashMap::new()),
        }
    }

    /// Whether both watches have listed once (waits at most `timeout`).
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            self.sandboxes.wait_until_ready().await.is_ok()
                && self.sets.wait_until_ready().await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Records an object this replica wrote (the answer of a patch, create or delete).
    pub fn wrote(&self, s: &Sandbox) {
        let key = s.key();
        let s = Arc::new(s.clone());
        match self.written.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if rv(&e.get().1) < rv(&s) {
                    e.insert((Instant::now(), s));
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert((Instant::now(), s));
            }
        }
    }

    /// The newer of the cached object and this replica's write of it.
    fn freshest(&self, cached: Arc<Sandbox>) -> Arc<Sandbox> {
        let key = cached.key();
        let Some(w) = self.written.get(&key).map(|w| w.1.clone()) else {
            return cached;
        };
        if rv(&cached) >= rv(&w) {
            self.written.remove_if(&key, |_, v| rv(&v.1) <= rv(&cached));
            cached
        } else {
            w
        }
    }

    /// Every claimed sandbox (the freshest copy of each), including ones only this replica's
    /// writes know of yet.
    pub fn claimed(&self) -> Vec<Arc<Sandbox>> {
        let mut out: Vec<Arc<Sandbox>> = self
            .sandboxes
            .state()
            .into_iter()
            .map(|s| self.freshest(s))
            .filter(|s| claimed_id(s).is_some())
            .collect();
        let cached: std::collections::HashSet<String> = out.iter().map(|s| s.key()).collect();
        self.written.retain(|_, (at, _)| at.elapsed() < WRITTEN_TTL);
        out.extend(
            self.written
                .iter()
                .filter(|e| !cached.contains(e.key()) && claimed_id(&e.value().1).is_some())
                .map(|e| e.value().1.clone()),
        );
        out
    }

    /// The claimed sandbox of that id (a newer object wins if two carry it). Only objects
    /// labelled with the id, in the cache or among this replica's writes, are looked at.
    pub fn by_id(&self, id: &SandboxId) -> Option<Arc<Sandbox>> {
        let labelled =
            |s: &Sandbox| s.labels().get(LABEL_SANDBOX_ID).map(String::as_str) == Some(id.as_str());
        let cached = self
            .sandboxes
            .state()
            .into_iter()
            .filter(|s| labelled(s))
            .map(|s| self.freshest(s));
        let written: Vec<Arc<Sandbox>> = self
            .written
            .iter()
            .filter(|e| e.value().0.elapsed() < WRITTEN_TTL && labelled(&e.value().1))
            .map(|e| e.value().1.clone())
            .collect();
        cached
            .chain(written)
            .filter(|s| claimed_id(s).as_ref() == Some(id))
            .max_by_key(|s| rv(s))
    }

    /// The unclaimed members of a SandboxSet's pool.
    pub fn pool(&self, namespace: &str, set: &str) -> Vec<Arc<Sandbox>> {
        self.sandboxes
            .state()
            .into_iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .filter(|s| {
                let l = s.labels();
                l.get(LABEL_SANDBOX_POOL).map(String::as_str) == Some(set)
                    && l.get(LABEL_SANDBOX_CLAIMED).map(String::as_str) != Some("true")
            })
            .map(|s| self.freshest(s))
            .collect()
    }

    /// SandboxSets named `name`, in `namespace` or (None) any, oldest first; one being deleted
    /// is no template any more.
    pub fn sets_named(&self, namespace: Option<&str>, name: &str) -> Vec<Arc<SandboxSet>> {
        let mut v: Vec<_> = self
            .sets(namespace)
            .into_iter()
            .filter(|s| s.metadata.name.as_deref() == Some(name))
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        v.sort_by_key(|s| s.metadata.creation_timestamp.as_ref().map(|t| t.0));
        v
    }

    /// SandboxSets in `namespace` or (None) all.
    pub fn sets(&self, namespace: Option<&str>) -> Vec<Arc<SandboxSet>> {
        self.sets
            .state()
            .into_iter()
            .filter(|s| namespace.is_none() || s.metadata.namespace.as_deref() == namespace)
            .collect()
    }
}
