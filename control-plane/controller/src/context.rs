//! Shared state handed to every reconcile: the client, settings, metrics, the event recorder,
//! the agent-runtime `/init` client, and the claim engine (`sandbox-core`) whose pick lock keeps
//! concurrent claim workers of this process off the same sandbox.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use sandbox_api::csi::StorageConfig;
use sandbox_api::{Sandbox, SandboxSet};
use sandbox_core::envd::EnvdClient;
use sandbox_core::{ClaimEngine, EngineConfig, HttpRuntimeInit};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::expectations::ScaleExpectations;
use crate::metrics::Metrics;
use crate::pace::Pacer;
use crate::pool::RefillHold;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the injection ConfigMap and the leader lease.
    pub system_namespace: String,
    pub sandboxset_initial_batch: usize,
    pub claim_initial_batch: usize,
    pub claim_max_batch: usize,
    /// Claim picks and takes running at once in this process.
    pub claim_workers: usize,
    /// `/init` timeout per attempt.
    pub init_timeout: Duration,
    /// Dynamic CSI mounts: allowed drivers, the in-sandbox CLI, the secrets' namespace.
    pub storage: StorageConfig,
    /// How a pool's refill gives way to a burst of claims.
    pub refill_hold: RefillHold,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            system_namespace: sandbox_api::keys::DEFAULT_SYSTEM_NAMESPACE.into(),
            sandboxset_initial_batch: 16,
            claim_initial_batch: 5,
            claim_max_batch: 50,
            claim_workers: 500,
            init_timeout: Duration::from_secs(1),
            storage: StorageConfig::new(
                &[],
                sandbox_storage::CLI_PATH,
                sandbox_api::keys::DEFAULT_SYSTEM_NAMESPACE,
            ),
            refill_hold: RefillHold {
                quiet: Duration::from_millis(500),
                max: Duration::from_secs(3),
            },
        }
    }
}

/// Our writes the cache has not shown after this long are forgotten (upstream's resourceVersion
/// expectations time out after a minute too).
const WRITTEN_MAX_AGE: Duration = Duration::from_secs(60);

/// Events queued for publishing before new ones are dropped.
const EVENT_QUEUE: usize = 4096;

/// Publishes queued events until every sender is gone; failures are logged, never fatal.
async fn publish_events(recorder: Recorder, mut queue: mpsc::Receiver<(Event, ObjectReference)>) {
    while let Some((ev, obj)) = queue.recv().await {
        if let Err(e) = recorder.publish(&ev, &obj).await {
            tracing::debug!(error = %e, reason = %ev.reason, "failed to publish event");
        }
    }
}

/// uid → (resourceVersion of our last write, when).
type Written = HashMap<String, (u64, Instant)>;

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Events on their way to the publisher task (see [`Context::event`]).
    events: mpsc::Sender<(Event, ObjectReference)>,
    event_publisher: Mutex<Option<JoinHandle<()>>>,
    /// The agent-runtime `/init` client (claims, and the replay after a resume or upgrade).
    pub runtime: Arc<HttpRuntimeInit>,
    /// The claim engine; its create limiter is off, as upstream's controller has none.
    pub claims: ClaimEngine,
    /// envd client for the CSI mount CLI (claims and re-mounts after a resume).
    pub envd: EnvdClient,
    /// The Sandbox controller's cache, used by claims to find candidates without listing the
    /// pool from the apiserver on every reconcile (a stale candidate just loses its
    /// resourceVersion check).
    pub sandbox_store: OnceLock<Store<Sandbox>>,
    /// The sandbox pods as the Sandbox controller's pod watch last saw them.
    pub pod_store: OnceLock<Store<Pod>>,
    /// The SandboxSet controller's cache: what claims read their set from.
    pub set_store: OnceLock<Store<SandboxSet>>,
    /// What SandboxSet reconciles created or deleted that the cache has not shown yet.
    pub scale: ScaleExpectations,
    /// Spacing of SandboxSet status writes (`ns/name`).
    pub status_pace: Pacer,
    /// The newest `claim-timestamp` the Sandbox reconciler has seen (any sandbox).
    pub newest_claim: Mutex<Option<k8s_openapi::jiff::Timestamp>>,
    /// Since when a SandboxSet's refill is held for a burst of claims (`ns/name`).
    pub refill_held: Mutex<HashMap<String, Instant>>,
    /// SandboxTemplates a SandboxSet reconcile made or found (`ns/name/set-uid`): not read again.
    pub materialised: Mutex<HashSet<String>>,
    /// resourceVersion of our last write per sandbox UID: a reconcile that sees an older
    /// version in the cache waits for the watch to catch up instead of acting on stale data.
    /// (uid → (version, when written), last prune).
    written: Mutex<(Written, Instant)>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Arc<Context> {
        let reporter = Reporter {
            controller: "sandbox-controller".into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        };
        let runtime = Arc::new(HttpRuntimeInit::new(settings.init_timeout));
        let claims = ClaimEngine::new(
            EngineConfig {
                workers: settings.claim_workers,
                create_limit: None,
            },
            runtime.clone(),
        );
        let (events, queue) = mpsc::channel(EVENT_QUEUE);
        let publisher = tokio::spawn(publish_events(
            Recorder::new(client.clone(), reporter),
            queue,
        ));
        Arc::new(Context {
            events,
            event_publisher: Mutex::new(Some(publisher)),
            client,
            settings,
            metrics,
            runtime,
            claims,
            envd: EnvdClient::default(),
            sandbox_store: OnceLock::new(),
            pod_store: OnceLock::new(),
            set_store: OnceLock::new(),
            scale: ScaleExpectations::default(),
            materialised: Mutex::new(HashSet::new()),
            refill_held: Mutex::new(HashMap::new()),
            newest_claim: Mutex::new(None),
            status_pace: Pacer::default(),
            written: Mutex::new((HashMap::new(), Instant::now())),
        })
    }

    /// The Sandbox controller's cache once it has synced; `None` if it is not there after 2 s
    /// (the caller lists from the apiserver or retries).
    pub async fn synced_sandboxes(&self) -> Option<&Store<Sandbox>> {
        let store = self.sandbox_store.get()?;
        match tokio::time::timeout(Duration::from_secs(2), store.wait_until_ready()).await {
            Ok(Ok(())) => Some(store),
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::warn!("sandbox cache not ready after 2s");
                None
            }
        }
    }

    /// The SandboxSet `ns/name`: from the SandboxSet controller's cache when it has it, else
    /// from the apiserver (a set created a moment before the claim that names it may not be
    /// in the cache yet, and is never taken for missing).
    pub async fn sandbox_set(&self, ns: &str, name: &str) -> kube::Result<Option<Arc<SandboxSet>>> {
        if let Some(set) = self
            .set_store
            .get()
            .and_then(|s| s.get(&ObjectRef::new(name).within(ns)))
        {
            return Ok(Some(set));
        }
        let sets: Api<SandboxSet> = Api::namespaced(self.client.clone(), ns);
        Ok(sets.get_opt(name).await?.map(Arc::new))
    }

    /// Queues an event for the publisher task: a reconcile never waits for an event, and a
    /// burst of them goes out one at a time behind the reconciles instead of competing with
    /// claims for the apiserver. A full queue drops the event (counted in
    /// `sandbox_controller_events_dropped`), as client-go's broadcaster does.
    pub async fn event(&self, obj: &ObjectReference, warning: bool, reason: &str, note: &str) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: (!note.is_empty()).then(|| note.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        if self.events.try_send((ev, obj.clone())).is_err() {
            self.metrics.events_dropped.inc();
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }

    /// The publisher task, for the caller to wait on at shutdown (it ends, having sent what
    /// was queued, once the last `Context` is gone).
    pub fn take_event_publisher(&self) -> Option<JoinHandle<()>> {
        self.event_publisher.lock().expect("publisher").take()
    }

    /// Records the resourceVersion a write of ours produced.
    pub fn wrote(&self, uid: Option<&str>, rv: Option<&str>) {
        if let (Some(uid), Some(rv)) = (uid, rv.and_then(|r| r.parse::<u64>().ok())) {
            let now = Instant::now();
            let mut guard = self.written.lock().expect("written");
            let (w, pruned) = &mut *guard;
            // Entries the cache never caught up with (the object was deleted right after our
            // write) go once they are too old to matter, so the map does not grow forever.
            if now.duration_since(*pruned) >= WRITTEN_MAX_AGE {
                w.retain(|_, (_, at)| now.duration_since(*at) < WRITTEN_MAX_AGE);
                *pruned = now;
            }
            let e = w.entry(uid.to_string()).or_insert((0, now));
            *e = (e.0.max(rv), now);
        }
    }

    /// True if the cached object predates our last write to it.
    pub fn is_stale(&self, uid: Option<&str>, rv: Option<&str>) -> bool {
        let (Some(uid), Some(rv)) = (uid, rv.and_then(|r| r.parse::<u64>().ok())) else {
            return false;
        };
        let w = &mut self.written.lock().expect("written").0;
        match w.get(uid) {
            Some(&(mine, at)) if rv < mine && at.elapsed() < WRITTEN_MAX_AGE => true,
            Some(_) => {
                w.remove(uid);
                false
            }
            None => false,
        }
    }
}
