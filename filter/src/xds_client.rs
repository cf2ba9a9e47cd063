//! The module's sandbox-xds client: a delta-xDS subscription to `SandboxRoute` resources, run on
//! a background thread of its own (a single-threaded tokio runtime) inside Envoy, feeding the
//! shared route table.
//!
//! - One client per (server address, table), shared by every filter config that names them.
//! - Subscribes to the wildcard and resumes with the versions the table holds, so a reconnect
//!   transfers only what changed.
//! - ACKs each response; a response with an invalid route is NACKed whole (nothing of it is
//!   applied) with the reason, and the table keeps its last good state.
//! - The table is marked synced after the first complete response (a split response ends with
//!   the part whose `system_version_info` has no `+more` suffix); until then requests get 503.
//! - While disconnected the table keeps serving what it has; reconnects back off exponentially
//!   (100 ms … 10 s) with jitter.
//! - Watchers (the filter configs' stat publishers) are notified after every applied response and
//!   once a second, so connected / route count / last-update-age gauges stay current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use sandbox_xds_wire::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use sandbox_xds_wire::v1::SandboxRoute;
use sandbox_xds_wire::{DELTA_ADS_PATH, SANDBOX_ROUTE_TYPE_URL};

use crate::route::from_wire;
use crate::table::RouteTable;

/// Suffix the server puts on `system_version_info` of every part of a split response but the
/// last.
pub const MORE_SUFFIX: &str = "+more";
/// Largest response accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where and as whom to subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSource {
    /// `http://host:port` of sandbox-xds.
    pub address: String,
    /// Node id announced to the server (default: `<hostname>/<pid>`).
    pub node_id: String,
    pub cluster: String,
}

/// Something to tell when the client's state changed (a filter config's stat publisher).
pub trait Watcher: Send + Sync {
    fn notify(&self);
}

/// What the stats report about a client.
#[derive(Debug, Default)]
pub struct ClientStatus {
    connected: AtomicBool,
    /// Unix milliseconds of the last applied response; 0 before the first one.
    last_update_ms: AtomicU64,
    connects: AtomicU64,
    nacks: AtomicU64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClientStatus {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    /// Seconds since the last applied response (`None` before the first).
    pub fn last_update_age_secs(&self) -> Option<u64> {
        match self.last_update_ms.load(Ordering::Acquire) {
            0 => None,
            t => Some(unix_ms().saturating_sub(t) / 1000),
        }
    }
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }
}

/// One running client.
pub struct XdsClient {
    pub source: XdsSource,
    pub table: Arc<RouteTable>,
    pub status: ClientStatus,
    watchers: Mutex<Vec<(u64, Box<dyn Watcher>)>>,
    next_watcher: AtomicU64,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("source", &self.source)
            .field("status", &self.status)
            .finish()
    }
}

impl XdsClient {
    /// Registers a watcher; keep the token to remove it.
    pub fn add_watcher(&self, w: Box<dyn Watcher>) -> u64 {
        let token = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((token, w));
        token
    }

    /// Removes a watcher; once this returns, the watcher is never notified again.
    pub fn remove_watcher(&self, token: u64) -> Option<Box<dyn Watcher>> {
        let mut ws = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let i = ws.iter().position(|(t, _)| *t == token)?;
        Some(ws.remove(i).1)
    }

    fn notify(&self) {
        for (_, w) in self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            w.notify();
        }
    }
}

/// The default node id: `<hostname>/<pid>`.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(
        "{}/{}",
        if host.is_empty() { "gateway" } else { &host },
        std::process::id()
    )
}

/// The client for `source` feeding `table_name`, started on first use.
pub fn client_for(source: &XdsSource, table_name: &str, table: Arc<RouteTable>) -> Arc<XdsClient> {
    type Clients = HashMap<(String, String), Arc<XdsClient>>;
    static CLIENTS: OnceLock<Mutex<Clients>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (source.address.clone(), table_name.to_string());
    if let Some(c) = clients.get(&key) {
        return c.clone();
    }
    let client = Arc::new(XdsClient {
        source: source.clone(),
        table,
        status: ClientStatus::default(),
        watchers: Mutex::new(Vec::new()),
        next_watcher: AtomicU64::new(0),
    });
    clients.insert(key, client.clone());
    let c = client.clone();
    let spawned = std::thread::Builder::new()
        .name("sandbox-gw-xds".into())
        .spawn(move || run_forever(&c));
    if let Err(e) = spawned {
        crate::ffi::log(
            crate::ffi::Level::Error,
            &format!("cannot start the xDS client thread: {e}"),
        );
    }
    client
}

fn run_forever(client: &XdsClient) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::ffi::log(
                crate::ffi::Level::Error,
                &format!("cannot start the xDS client runtime: {e}"),
            );
            return;
        }
    };
    loop {
        // A panic here would only end this thread, never unwind into Envoy; contain it and retry.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(reconnect_loop(client))
        }));
        if r.is_err() {
            crate::ffi::log(
                crate::ffi::Level::Error,
                "xDS client panicked; restarting it",
            );
            std::thread::sleep(BACKOFF_MAX);
        }
    }
}

/// Small xorshift for jitter (no dependency, no shared state).
fn jitter(d: Duration, seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let frac = (*seed % 400) as f64 / 1000.0 + 0.8; // 0.8 ..= 1.2
    d.mul_f64(frac)
}

async fn reconnect_loop(client: &XdsClient) {
    let mut backoff = BACKOFF_MIN;
    let mut seed = unix_ms() ^ u64::from(std::process::id()) << 32 | 1;
    let ticker = async {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        loop {
            t.tick().await;
            client.notify();
        }
    };
    tokio::pin!(ticker);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session(client) => r,
            _ = &mut ticker => unreachable!("the ticker never ends"),
        };
        client.status.connected.store(false, Ordering::Release);
        client.notify();
        match result {
            Ok(()) => crate::ffi::log(
                crate::ffi::Level::Info,
                &format!("xDS stream to {} ended", client.source.address),
            ),
            Err(e) => crate::ffi::log(
                crate::ffi::Level::Warn,
                &format!("xDS stream to {}: {e}", client.source.address),
            ),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        let wait = jitter(backoff, &mut seed);
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = &mut ticker => {}
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("invalid server address: {0}")]
    Address(String),
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("request channel closed")]
    Closed,
}

async fn session(client: &XdsClient) -> Result<(), SessionError> {
    use tokio_stream::wrappers::ReceiverStream;
    let endpoint = tonic::transport::Endpoint::from_shared(client.source.address.clone())
        .map_err(|e| SessionError::Address(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready().await.map_err(SessionError::Connect)?;

    let (tx, rx) = tokio::sync::mpsc::channel::<DeltaDiscoveryRequest>(8);
    let held = client.table.versions();
    let resumed = held.len();
    let initial = DeltaDiscoveryRequest {
        node: Some(Node {
            id: client.source.node_id.clone(),
            cluster: client.source.cluster.clone(),
            user_agent_name: "sandbox-gateway-module".into(),
        }),
        type_url: SANDBOX_ROUTE_TYPE_URL.into(),
        resource_names_subscribe: vec!["*".into()],
        initial_resource_versions: held
            .into_iter()
            .map(|(id, rv)| (id, rv.to_string()))
            .collect(),
        ..Default::default()
    };
    tx.send(initial).await.map_err(|_| SessionError::Closed)?;
    let codec = tonic_prost::ProstCodec::<DeltaDiscoveryRequest, DeltaDiscoveryResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(DELTA_ADS_PATH);
    let mut stream = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await?
        .into_inner();
    client.status.connected.store(true, Ordering::Release);
    client.status.connects.fetch_add(1, Ordering::Relaxed);
    client.notify();
    crate::ffi::log(
        crate::ffi::Level::Info,
        &format!(
            "xDS stream to {} open (resuming with {resumed} routes)",
            client.source.address
        ),
    );
    while let Some(resp) = stream.message().await? {
        let applied = apply(&client.table, &resp);
        // Everything the ACK vouches for must be visible to requests before the ACK leaves:
        // WaitForRoute returns on it, and the next request must not meet a 503 or a stale route.
        let error_detail = match &applied {
            Ok(_) => {
                if !resp.system_version_info.ends_with(MORE_SUFFIX) && !client.table.is_synced() {
                    client.table.mark_synced();
                    crate::ffi::log(
                        crate::ffi::Level::Info,
                        &format!(
                            "route table synced from {} ({} routes)",
                            client.source.address,
                            client.table.len()
                        ),
                    );
                }
                client
                    .status
                    .last_update_ms
                    .store(unix_ms(), Ordering::Release);
                None
            }
            Err(reason) => {
                client.status.nacks.fetch_add(1, Ordering::Relaxed);
                crate::ffi::log(
                    crate::ffi::Level::Warn,
                    &format!("rejecting xDS response {} (NACK): {reason}", resp.nonce),
                );
                Some(Status {
                    code: 3,
                    message: reason.clone(),
                })
            }
        };
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| SessionError::Closed)?;
        client.notify();
    }
    Ok(())
}

/// Applies one response: all of it, or (when any route is invalid) none of it.
pub fn apply(table: &RouteTable, resp: &DeltaDiscoveryResponse) -> Result<usize, String> {
    if resp.type_url != SANDBOX_ROUTE_TYPE_URL {
        return Err(format!("unexpected type {}", resp.type_url));
    }
    let mut routes = Vec::with_capacity(resp.resources.len());
    let mut errors = Vec::new();
    for r in &resp.resources {
        let decoded = match &r.resource {
            Some(any) if any.type_url == SANDBOX_ROUTE_TYPE_URL => {
                SandboxRoute::decode(any.value.as_slice()).map_err(|e| e.to_string())
            }
            Some(any) => Err(format!("resource type {}", any.type_url)),
            None => Err("no resource body".into()),
        };
        match decoded.and_then(|w| from_wire(&w).map_err(|e| e.to_string())) {
            Ok((id, _)) if id != r.name => errors.push(format!("{}: named {id:?} inside", r.name)),
            Ok(route) => routes.push(route),
            Err(e) => errors.push(format!("{}: {e}", r.name)),
        }
    }
    if !errors.is_empty() {
        let n = errors.len();
        errors.truncate(3);
        return Err(format!("{n} invalid route(s): {}", errors.join("; ")));
    }
    let n = routes.len() + resp.removed_resources.len();
    for (id, route) in routes {
        table.set(&id, route);
    }
    for id in &resp.removed_resources {
        table.unset(id);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_xds_wire::discovery::Resource;
    use sandbox_xds_wire::v1::sandbox_route::State;

    fn resource(id: &str, rv: u64, ip: &str) -> Resource {
        let r = SandboxRoute {
            id: id.into(),
            namespace: "ns".into(),
            name: id.into(),
            uid: format!("u-{id}"),
            resource_version: rv,
            ip: ip.into(),
            state: State::Running as i32,
            ..Default::default()
        };
        Resource {
            name: id.into(),
            version: rv.to_string(),
            resource: Some(prost_types::Any {
                type_url: SANDBOX_ROUTE_TYPE_URL.into(),
                value: r.encode_to_vec(),
            }),
        }
    }

    fn response(resources: Vec<Resource>, removed: Vec<&str>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: SANDBOX_ROUTE_TYPE_URL.into(),
            resources,
            removed_resources: removed.into_iter().map(String::from).collect(),
            nonce: "1".into(),
            system_version_info: "1".into(),
        }
    }

    #[test]
    fn applies_sets_and_removals() {
        let t = RouteTable::new();
        assert_eq!(
            apply(
                &t,
                &response(
                    vec![resource("a", 1, "10.0.0.1"), resource("b", 1, "10.0.0.2")],
                    vec![]
                )
            ),
            Ok(2)
        );
        assert_eq!(t.len(), 2);
        assert_eq!(
            apply(&t, &response(vec![resource("a", 2, "10.0.0.9")], vec!["b"])),
            Ok(2)
        );
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.with_route("a", |r| r.map(|r| r.resource_version)),
            Some(2)
        );
    }

    #[test]
    fn an_invalid_route_rejects_the_whole_response() {
        let t = RouteTable::new();
        let err = apply(
            &t,
            &response(
                vec![resource("a", 1, "10.0.0.1"), resource("bad", 1, "")],
                vec![],
            ),
        )
        .unwrap_err();
        assert!(
            err.contains("bad: state is running but the route has no ip"),
            "{err}"
        );
        assert!(t.is_empty(), "nothing applied");
        let mut mislabeled = resource("x", 1, "10.0.0.1");
        mislabeled.name = "y".into();
        assert!(
            apply(&t, &response(vec![mislabeled], vec![]))
                .unwrap_err()
                .contains("named \"x\"")
        );
        let mut wrong_type = response(vec![], vec![]);
        wrong_type.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        assert!(apply(&t, &wrong_type).is_err());
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut seed = 12345;
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000), &mut seed);
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
        }
    }
}
