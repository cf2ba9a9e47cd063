//! Process wiring: starts the reconcilers (after winning the lease when leader election is on),
//! and stops them gracefully on SIGTERM/SIGINT or when the lease is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use sandbox_api::keys::{LABEL_CREATED_BY, LABEL_SANDBOX_POOL, LABEL_UPDATE_OPS};
use sandbox_api::{Sandbox, SandboxClaim, SandboxSet, SandboxUpdateOps};
use tokio::sync::watch;

use crate::context::Context;
use crate::reconcile::{self, claim, sandbox, sandboxset, updateops};

#[derive(Debug, Clone)]
pub struct Workers {
    pub sandbox: u16,
    pub sandboxset: u16,
    pub sandboxclaim: u16,
    pub updateops: u16,
}

/// Runs the three controllers until `stop` flips to true.
pub async fn run_controllers(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    workers: Workers,
    stop: watch::Receiver<bool>,
) {
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = |c: &Client| match &namespace {
        Some(ns) => (
            Api::namespaced(c.clone(), ns),
            Api::namespaced(c.clone(), ns),
            Api::namespaced(c.clone(), ns),
            Api::namespaced(c.clone(), ns),
        ),
        None => (
            Api::all(c.clone()),
            Api::all(c.clone()),
            Api::all(c.clone()),
            Api::all(c.clone()),
        ),
    };
    let (sandboxes, pods, sets, claims): (
        Api<Sandbox>,
        Api<Pod>,
        Api<SandboxSet>,
        Api<SandboxClaim>,
    ) = api(&client);
    let sandboxes_for_ops = sandboxes.clone();
    let pod_cfg = watcher::Config::default().labels(&format!("{LABEL_CREATED_BY}=sandbox"));

    // The sandbox pods through one reflected watch: its store answers the Sandbox reconciles'
    // pod reads, and its events trigger them (a pod event is in the store before the reconcile
    // it triggers runs).
    let (pod_reader, pod_writer) = reflector::store();
    let pod_events = watcher(pods, pod_cfg)
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();
    let _ = ctx.pod_store.set(pod_reader);
    // The Sandbox controller's store is the cache the SandboxSet reconciles and the claims'
    // candidate picks read. (One watch shared with the SandboxSet controller through
    // `reflect_shared` was tried: both controllers stopped reconciling for good in the kube
    // end-to-end suite, so each keeps its own watch.)
    let sandbox_ctl = Controller::new(sandboxes.clone(), watcher::Config::default());
    let _ = ctx.sandbox_store.set(sandbox_ctl.store());
    let sandbox_ctl = sandbox_ctl
        .owns_stream(pod_events)
        .with_config(kube::runtime::controller::Config::default().concurrency(workers.sandbox))
        .graceful_shutdown_on(shutdown(stop.clone()))
        .run(
            sandbox::reconcile,
            |_, e, _| reconcile::error_policy(sandbox::NAME, e),
            ctx.clone(),
        )
        .for_each(|_| async {});

    // A sandbox keeps its `sandbox-pool` label after it is claimed (and loses its ownerRef), so
    // map by label: the pool hears about every claim and refills.
    let set_ctl = Controller::new(sets, watcher::Config::default());
    let _ = ctx.set_store.set(set_ctl.store());
    let set_ctl = set_ctl
        .watches(sandboxes, watcher::Config::default(), |s: Sandbox| {
            let ns = s.namespace()?;
            let pool = s.labels().get(LABEL_SANDBOX_POOL)?.clone();
            Some(ObjectRef::<SandboxSet>::new(&pool).within(&ns))
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(workers.sandboxset))
        .graceful_shutdown_on(shutdown(stop.clone()))
        .run(
            sandboxset::reconcile,
            |_, e, _| reconcile::error_policy(sandboxset::NAME, e),
            ctx.clone(),
        )
        .for_each(|_| async {});

    let claim_ctl = Controller::new(claims, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(workers.sandboxclaim))
        .graceful_shutdown_on(shutdown(stop.clone()))
        .run(
            claim::reconcile,
            |_, e, _| reconcile::error_policy(claim::NAME, e),
            ctx.clone(),
        )
        .for_each(|_| async {});

    let ops_api: Api<SandboxUpdateOps> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let ops_ctl = Controller::new(ops_api, watcher::Config::default())
        .watches(
            sandboxes_for_ops,
            watcher::Config::default().labels(LABEL_UPDATE_OPS),
            |s: Sandbox| {
                let ns = s.namespace()?;
                let ops = s.labels().get(LABEL_UPDATE_OPS)?.clone();
                Some(ObjectRef::<SandboxUpdateOps>::new(&ops).within(&ns))
            },
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(workers.updateops))
        .graceful_shutdown_on(shutdown(stop.clone()))
        .run(
            updateops::reconcile,
            |_, e, _| reconcile::error_policy(updateops::NAME, e),
            ctx.clone(),
        )
        .for_each(|_| async {});

    tracing::info!("controllers started");
    tokio::join!(sandbox_ctl, set_ctl, claim_ctl, ops_ctl);
    tracing::info!("controllers stopped");
}

/// Flags readiness once the controllers are running.
pub fn mark_ready(health: &crate::server::Health) {
    health.ready.store(true, Ordering::Relaxed);
}
