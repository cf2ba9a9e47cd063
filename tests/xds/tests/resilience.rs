//! The gateway keeps serving through a sandbox-xds restart (zero failed requests under load) and
//! resyncs afterwards; rejected updates (NACKs, from Envoy or from the module) leave the last good
//! configuration serving and are reported with the node id.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gateway_tests::{AdsGatewayBuilder, Upstream, request, try_request};
use prost::Message;
use sandbox_xds::cache::Change;
use sandbox_xds::gateway::CLUSTER_TYPE_URL;
use sandbox_xds_wire::SANDBOX_ROUTE_TYPE_URL;
use sandbox_xds_wire::v1::sandbox_route::State;
use xds_tests::{Xds, eventually, route, test_gateway_resources};

#[test]
fn restart_under_load_loses_no_request_and_resyncs() {
    let up = Upstream::start("u", "127.0.0.1");
    let xds = Xds::start();
    let (grpc, http) = (xds.grpc, xds.http);
    xds.routes()
        .resync(vec![route("s1", "127.0.0.1", 10, State::Running)]);
    let gw = AdsGatewayBuilder::new(grpc, "gw-restart").start();
    assert!(xds.wait_for_route("s1", 10, Duration::from_secs(10)).synced);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failed, addr, port) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                gw.addr,
                up.port().to_string(),
            );
            let failures = failures.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match try_request(
                        addr,
                        "GET",
                        "/",
                        &[("e2b-sandbox-id", "s1"), ("e2b-sandbox-port", &port)],
                        None,
                    ) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut f = failures.lock().unwrap();
                            if f.len() < 5 {
                                f.push(match other {
                                    Ok(r) => format!("{} {}", r.status, r.text()),
                                    Err(e) => format!("io: {e}"),
                                });
                            }
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    xds.stop();
    eventually(
        "the module notices the server is gone",
        Duration::from_secs(10),
        || gw.stat("sandbox.gateway_xds_connected") == Some(0),
    );
    std::thread::sleep(Duration::from_secs(1));
    // A new server on the same address, with the same state plus a new sandbox.
    let xds = Xds::start_on(grpc, http, test_gateway_resources(grpc));
    xds.routes().resync(vec![
        route("s1", "127.0.0.1", 10, State::Running),
        route("s2", "127.0.0.1", 11, State::Running),
    ]);
    // min_gateways 1 (the harness default) also waits for the module's backoff to run out.
    let w = xds.wait_for_route("s2", 11, Duration::from_secs(30));
    assert!(w.synced && w.gateways == 1, "{w:?}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("requests during the restart: {ok} ok, {failed} failed");
    assert!(ok > 100, "the load generator ran ({ok})");
    assert_eq!(
        failed,
        0,
        "existing routes keep working while sandbox-xds is down: {:?}\n{}",
        failures.lock().unwrap(),
        gw.log()
    );
    let port = up.port().to_string();
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "s2"), ("e2b-sandbox-port", &port)],
        None,
    );
    assert_eq!(r.status, 200, "the route added after the restart arrived");
    assert_eq!(gw.stat("sandbox.gateway_xds_connected"), Some(1));
}

#[test]
fn envoy_nack_of_a_bad_cluster_keeps_the_old_one_serving() {
    let up = Upstream::start("u", "127.0.0.1");
    let xds = Xds::start();
    xds.routes()
        .resync(vec![route("s1", "127.0.0.1", 10, State::Running)]);
    let gw = AdsGatewayBuilder::new(xds.grpc, "gw-nack").start();
    assert!(xds.wait_for_route("s1", 10, Duration::from_secs(10)).synced);
    let port = up.port().to_string();
    let headers = [
        ("e2b-sandbox-id", "s1"),
        ("e2b-sandbox-port", port.as_str()),
    ];

    // connect_timeout 0 violates Envoy's validation rules: Envoy must reject the cluster.
    let mut bad = test_gateway_resources(xds.grpc);
    bad.connect_timeout_ms = 0;
    xds.server.cache.replace(CLUSTER_TYPE_URL, bad.clusters());
    eventually("Envoy NACKs the cluster", Duration::from_secs(10), || {
        xds.server.registry.streams().iter().any(|s| {
            s.node == "gw-nack" && s.types.get(CLUSTER_TYPE_URL).is_some_and(|t| t.nacks > 0)
        })
    });
    let nack = xds
        .server
        .registry
        .streams()
        .into_iter()
        .find(|s| s.node == "gw-nack")
        .unwrap();
    let err = nack.types[CLUSTER_TYPE_URL]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        err.contains("connect_timeout") || err.contains("ConnectTimeout"),
        "{err}"
    );
    assert!(xds.metrics().contains("sandbox_xds_nacks_total{type_url=\"type.googleapis.com/envoy.config.cluster.v3.Cluster\"} 1"));
    // The old cluster still carries traffic.
    for _ in 0..20 {
        assert_eq!(request(gw.addr, "GET", "/", &headers, None).status, 200);
    }
    // A good update is accepted again.
    let mut good = test_gateway_resources(xds.grpc);
    good.connect_timeout_ms = 2000;
    xds.server.cache.replace(CLUSTER_TYPE_URL, good.clusters());
    eventually(
        "Envoy accepts the fixed cluster",
        Duration::from_secs(10),
        || gw.stats().contains("cluster_manager.cds.update_success: 2"),
    );
    assert_eq!(request(gw.addr, "GET", "/", &headers, None).status, 200);
}

#[test]
fn module_nack_of_an_invalid_route_keeps_the_table() {
    let up = Upstream::start("u", "127.0.0.1");
    let xds = Xds::start();
    xds.routes()
        .resync(vec![route("s1", "127.0.0.1", 10, State::Running)]);
    let gw = AdsGatewayBuilder::new(xds.grpc, "gw-module-nack").start();
    assert!(xds.wait_for_route("s1", 10, Duration::from_secs(10)).synced);
    // Bypass the store's validation, as a buggy server would: running without an IP.
    let mut bad = route("s2", "", 11, State::Running);
    bad.ip.clear();
    xds.server.cache.apply(
        SANDBOX_ROUTE_TYPE_URL,
        [Change::Put {
            name: "s2".into(),
            version: "11".into(),
            body: Arc::from(bad.encode_to_vec()),
        }],
    );
    eventually(
        "the module NACKs the route",
        Duration::from_secs(10),
        || {
            xds.server.registry.streams().iter().any(|s| {
                s.types
                    .get(SANDBOX_ROUTE_TYPE_URL)
                    .is_some_and(|t| t.nacks > 0)
            })
        },
    );
    let stream = xds
        .server
        .registry
        .streams()
        .into_iter()
        .find(|s| s.types.contains_key(SANDBOX_ROUTE_TYPE_URL))
        .unwrap();
    let err = stream.types[SANDBOX_ROUTE_TYPE_URL]
        .last_error
        .clone()
        .unwrap();
    assert!(
        err.contains("s2: state is running but the route has no ip"),
        "{err}"
    );
    assert!(
        stream.node.ends_with(&format!("/{}", gw.child.pid())),
        "module node id is <host>/<envoy pid>: {}",
        stream.node
    );
    let port = up.port().to_string();
    assert_eq!(
        request(
            gw.addr,
            "GET",
            "/",
            &[("e2b-sandbox-id", "s1"), ("e2b-sandbox-port", &port)],
            None
        )
        .status,
        200
    );
    assert_eq!(
        request(gw.addr, "GET", "/", &[("e2b-sandbox-id", "s2")], None).status,
        502
    );
}
