//! Routes from Sandbox CRs: a kube-rs reflector (managed fields and the embedded pod template
//! stripped before caching) whose events are projected into routes with upstream's rules and fed
//! to the [`RoutePublisher`]. The first complete listing marks the route set ready; every relist
//! is applied as a full resync (Sandboxes that vanished while the watch was down are removed).
//! A Sandbox whose `spec.shutdownTime` passes loses its route then, without waiting for the
//! controller to delete it: the manager already reports it gone, and the gateways agree.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use sandbox_api::Sandbox;
use sandbox_api::keys::{
    ANNOTATION_ENVD_ACCESS_TOKEN, ANNOTATION_RUNTIME_ACCESS_TOKEN, LABEL_SANDBOX_ID,
};
use sandbox_api::state::{SandboxState, sandbox_state};
use sandbox_xds_wire::v1::SandboxRoute;
use sandbox_xds_wire::v1::sandbox_route::State;
use sha2::{Digest, Sha256};

use crate::routes::RoutePublisher;

/// How routes are projected from Sandboxes.
#[derive(Debug, Clone, Copy)]
pub struct Projection {
    /// Require `X-Access-Token` at the gateway for sandboxes that have one (envd checks it too).
    pub enforce_access_token: bool,
}

/// The sandbox id: label `agents.kruise.io/sandbox-id`, else the legacy `<namespace>--<name>`.
pub fn sandbox_id(sbx: &Sandbox) -> String {
    match sbx.labels().get(LABEL_SANDBOX_ID).filter(|v| !v.is_empty()) {
        Some(id) => id.clone(),
        None => format!(
            "{}--{}",
            sbx.namespace().unwrap_or_default(),
            sbx.name_any()
        ),
    }
}

/// Parses a resourceVersion the way upstream validates it (a canonical positive integer).
pub fn parse_resource_version(rv: &str) -> Option<u64> {
    if rv.is_empty() || rv.starts_with('0') || !rv.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rv.parse().ok()
}

/// Upstream's `RouteFromSandbox`: `None` when the object lacks what a route needs.
pub fn route_from_sandbox(sbx: &Sandbox, now: Timestamp, p: Projection) -> Option<SandboxRoute> {
    let namespace = sbx.namespace()?;
    let name = sbx.name_any();
    let uid = sbx.uid()?;
    let resource_version = parse_resource_version(&sbx.resource_version()?)?;
    let ip = sbx
        .status
        .as_ref()
        .and_then(|s| s.pod_info.as_ref())
        .and_then(|p| p.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
        .unwrap_or_default();
    let state = if ip.is_empty() {
        State::Creating
    } else {
        match sandbox_state(sbx, now) {
            SandboxState::Creating => State::Creating,
            SandboxState::Available => State::Available,
            SandboxState::Running => State::Running,
            SandboxState::Paused => State::Paused,
            SandboxState::Dead => State::Dead,
        }
    };
    let annotations = sbx.annotations();
    let token = annotations
        .get(ANNOTATION_RUNTIME_ACCESS_TOKEN)
        .or_else(|| annotations.get(ANNOTATION_ENVD_ACCESS_TOKEN))
        .filter(|t| !t.is_empty());
    let access_token_sha256 = token
        .map(|t| Sha256::digest(t.as_bytes()).to_vec())
        .unwrap_or_default();
    Some(SandboxRoute {
        id: sandbox_id(sbx),
        namespace,
        name,
        uid,
        resource_version,
        ip,
        state: state as i32,
        require_access_token: p.enforce_access_token && !access_token_sha256.is_empty(),
        access_token_sha256,
        ..Default::default()
    })
}

/// Drops what routing never reads before the reflector caches an object.
fn strip(sbx: &mut Sandbox) {
    sbx.managed_fields_mut().clear();
    sbx.spec.template = None;
    sbx.spec.volume_claim_templates.clear();
}

/// Whether the Sandbox is past its `spec.shutdownTime` at `now`.
fn expired(sbx: &Sandbox, now: Timestamp) -> bool {
    sbx.spec.shutdown_time.as_ref().is_some_and(|t| t.0 <= now)
}

/// Routes to withdraw when their Sandbox's shutdownTime passes: (time, namespace, name, the
/// resourceVersion that set it), earliest first.
#[derive(Default)]
struct Expiries(BinaryHeap<Reverse<(Timestamp, String, String, u64)>>);

impl Expiries {
    fn schedule(&mut self, sbx: &Sandbox, rv: Option<u64>) {
        if let (Some(t), Some(rv)) = (&sbx.spec.shutdown_time, rv) {
            let ns = sbx.namespace().unwrap_or_default();
            self.0.push(Reverse((t.0, ns, sbx.name_any(), rv)));
        }
    }

    /// Sleeps until the earliest entry is due (forever without one).
    async fn next_due(&self) {
        match self.0.peek() {
            Some(Reverse((t, ..))) => {
                let wait = Timestamp::now().duration_until(*t);
                let wait = std::time::Duration::try_from(wait).unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Withdraws the routes of due entries whose Sandbox is still at the version that set them
    /// (a later version was scheduled by its own event).
    fn fire(&mut self, store: &Store<Sandbox>, publisher: &RoutePublisher) {
        let now = Timestamp::now();
        while let Some(Reverse((t, ..))) = self.0.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, ns, name, rv))) = self.0.pop() else {
                break;
            };
            let current = store.get(&ObjectRef::new(&name).within(&ns));
            let same = current.as_ref().is_some_and(|s| {
                s.resource_version()
                    .as_deref()
                    .and_then(parse_resource_version)
                    == Some(rv)
            });
            if same && current.as_ref().is_some_and(|s| expired(s, now)) {
                tracing::debug!(namespace = %ns, sandbox = %name, "shutdownTime passed; route withdrawn");
                publisher.delete(&ns, &name, Some(rv));
            }
        }
    }
}

/// Watches Sandboxes (all namespaces, or one) until the stream ends or `shutdown` fires.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    projection: Projection,
    publisher: RoutePublisher,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<Sandbox> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let writer: Writer<Sandbox> = Writer::default();
    let store = writer.as_reader();
    let mut expiries = Expiries::default();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(strip),
    );
    let mut stream = std::pin::pin!(stream);
    let mut listing: Option<Vec<SandboxRoute>> = None;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = expiries.next_due() => {
                expiries.fire(&store, &publisher);
                continue;
            }
            _ = shutdown.changed() => break,
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "Sandbox watch error (retrying with backoff)");
                continue;
            }
        };
        let now = Timestamp::now();
        match event {
            watcher::Event::Init => listing = Some(Vec::new()),
            watcher::Event::InitApply(sbx) => {
                if expired(&sbx, now) {
                    continue;
                }
                if let (Some(list), Some(r)) =
                    (listing.as_mut(), route_from_sandbox(&sbx, now, projection))
                {
                    list.push(r);
                    let rv = sbx
                        .resource_version()
                        .as_deref()
                        .and_then(parse_resource_version);
                    expiries.schedule(&sbx, rv);
                }
            }
            watcher::Event::InitDone => {
                let routes = listing.take().unwrap_or_default();
                tracing::info!(routes = routes.len(), "Sandbox listing applied");
                publisher.resync(routes);
            }
            watcher::Event::Apply(sbx) => {
                let rv = sbx
                    .resource_version()
                    .as_deref()
                    .and_then(parse_resource_version);
                if sbx.metadata.deletion_timestamp.is_some() || expired(&sbx, now) {
                    publisher.delete(&sbx.namespace().unwrap_or_default(), &sbx.name_any(), rv);
                } else if let Some(r) = route_from_sandbox(&sbx, now, projection) {
                    publisher.upsert(r);
                    expiries.schedule(&sbx, rv);
                } else {
                    tracing::warn!(sandbox = %sbx.name_any(), "Sandbox without the fields a route needs; ignored");
                }
            }
            watcher::Event::Delete(sbx) => {
                let rv = sbx
                    .resource_version()
                    .as_deref()
                    .and_then(parse_resource_version);
                publisher.delete(&sbx.namespace().unwrap_or_default(), &sbx.name_any(), rv);
            }
        }
    }
    tracing::info!("Sandbox watch stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_api::{PodInfo, SandboxSpec, SandboxStatus};

    fn sandbox(ip: Option<&str>) -> Sandbox {
        let mut s = Sandbox::new("box", SandboxSpec::default());
        s.metadata.namespace = Some("team".into());
        s.metadata.uid = Some("u-1".into());
        s.metadata.resource_version = Some("17".into());
        s.status = Some(SandboxStatus {
            phase: Some("Running".into()),
            pod_info: ip.map(|ip| PodInfo {
                pod_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        s
    }

    #[test]
    fn projection_follows_upstream() {
        let p = Projection {
            enforce_access_token: true,
        };
        let r = route_from_sandbox(&sandbox(None), Timestamp::now(), p).unwrap();
        assert_eq!(
            (r.id.as_str(), r.state()),
            ("team--box", State::Creating),
            "no pod IP → creating"
        );
        let mut s = sandbox(Some("10.1.2.3"));
        s.labels_mut()
            .insert(LABEL_SANDBOX_ID.into(), "short123".into());
        s.annotations_mut()
            .insert(ANNOTATION_ENVD_ACCESS_TOKEN.into(), "legacy".into());
        let r = route_from_sandbox(&s, Timestamp::now(), p).unwrap();
        assert_eq!(r.id, "short123");
        assert_eq!(r.ip, "10.1.2.3");
        assert_eq!(r.resource_version, 17);
        assert_eq!(r.access_token_sha256, Sha256::digest(b"legacy").to_vec());
        assert!(r.require_access_token);
        s.annotations_mut()
            .insert(ANNOTATION_RUNTIME_ACCESS_TOKEN.into(), "new".into());
        let r = route_from_sandbox(
            &s,
            Timestamp::now(),
            Projection {
                enforce_access_token: false,
            },
        )
        .unwrap();
        assert_eq!(
            r.access_token_sha256,
            Sha256::digest(b"new").to_vec(),
            "runtime token wins"
        );
        assert!(!r.require_access_token);
        s.metadata.resource_version = Some("017".into());
        assert!(
            route_from_sandbox(&s, Timestamp::now(), p).is_none(),
            "non-canonical resourceVersion"
        );
    }
}
