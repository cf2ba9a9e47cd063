//! Several gateways (one on delta ADS, one on state-of-the-world ADS for Envoy's own resources)
//! converge on the same routes; ordering rules hold end to end; a 10,000-route initial sync.

use std::time::{Duration, Instant};

use gateway_tests::{AdsGatewayBuilder, Upstream, request};
use sandbox_xds::store::Outcome;
use sandbox_xds_wire::v1::sandbox_route::State;
use xds_tests::{Xds, eventually, route};

#[test]
fn two_gateways_converge() {
    let up = Upstream::start("u", "127.0.0.1");
    let xds = Xds::start();
    xds.routes().mark_synced();
    let a = AdsGatewayBuilder::new(xds.grpc, "gw-a").start();
    let b = AdsGatewayBuilder::new(xds.grpc, "gw-b").sotw().start();
    for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
        xds.routes()
            .upsert(route(id, "127.0.0.1", 10 + i as u64, State::Running));
    }
    let w = xds.wait_for_route_on("s3", 12, 2, Duration::from_secs(10));
    assert!(w.synced, "{w:?}");
    assert_eq!(w.gateways, 2);
    let port = up.port().to_string();
    for gw in [&a, &b] {
        for id in ["s1", "s2", "s3"] {
            let r = request(
                gw.addr,
                "GET",
                "/",
                &[("e2b-sandbox-id", id), ("e2b-sandbox-port", &port)],
                None,
            );
            assert_eq!(r.status, 200, "{id}: {}", r.text());
        }
    }
    let m = xds.metrics();
    assert!(m.contains("sandbox_xds_streams{kind=\"sotw\"} 1"), "{m}");
    assert!(m.contains("sandbox_xds_streams{kind=\"delta\"} 3"), "{m}");
}

#[test]
fn ordering_fences_and_takeover_hold_end_to_end() {
    let a = Upstream::start("a", "127.0.0.1");
    let b = Upstream::start("b", "127.0.0.2");
    let xds = Xds::start();
    xds.routes().mark_synced();
    let gw = AdsGatewayBuilder::new(xds.grpc, "gw-order").start();
    let (pa, pb) = (a.port().to_string(), b.port().to_string());
    let routes = xds.routes();

    // A stale update after a deletion never resurrects the sandbox.
    routes.upsert(route("s", "127.0.0.1", 10, State::Running));
    assert!(xds.wait_for_route("s", 10, Duration::from_secs(10)).synced);
    assert_eq!(routes.delete("sandboxes", "s", Some(12)), Outcome::Applied);
    assert_eq!(
        routes.upsert(route("s", "127.0.0.1", 11, State::Running)),
        Outcome::Stale
    );
    routes.upsert(route("marker", "127.0.0.1", 20, State::Running));
    assert!(
        xds.wait_for_route("marker", 20, Duration::from_secs(10))
            .synced
    );
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "s"), ("e2b-sandbox-port", &pa)],
        None,
    );
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (502, Some("The sandbox was not found"))
    );
    // Out-of-order versions of a live sandbox are ignored.
    routes.upsert(route("t", "127.0.0.2", 30, State::Running));
    assert_eq!(
        routes.upsert(route("t", "127.0.0.1", 29, State::Running)),
        Outcome::Stale
    );
    assert!(xds.wait_for_route("t", 30, Duration::from_secs(10)).synced);
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "t"), ("e2b-sandbox-port", &pb)],
        None,
    );
    assert_eq!(r.json()["name"], "b");

    // Id takeover: another Sandbox object claims the id; deleting the loser keeps the winner.
    let mut loser = route("x", "127.0.0.1", 40, State::Running);
    loser.name = "loser".into();
    loser.uid = "uid-loser".into();
    routes.upsert(loser);
    let mut winner = route("x", "127.0.0.2", 41, State::Running);
    winner.name = "winner".into();
    winner.uid = "uid-winner".into();
    assert_eq!(routes.upsert(winner), Outcome::IdTakeover);
    routes.delete("sandboxes", "loser", Some(42));
    routes.upsert(route("marker", "127.0.0.1", 43, State::Running));
    assert!(
        xds.wait_for_route("marker", 43, Duration::from_secs(10))
            .synced
    );
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "x"), ("e2b-sandbox-port", &pb)],
        None,
    );
    assert_eq!(r.json()["name"], "b", "{}", r.text());
}

#[test]
fn ten_thousand_route_initial_sync() {
    let up = Upstream::start("u", "127.0.0.1");
    let xds = Xds::start();
    let n = 10_000u64;
    xds.routes().resync(
        (0..n)
            .map(|i| route(&format!("sbx{i:05}"), "127.0.0.1", 100 + i, State::Running))
            .collect(),
    );
    let started = Instant::now();
    let gw = AdsGatewayBuilder::new(xds.grpc, "gw-10k").start();
    let w = xds.wait_for_route(&format!("sbx{:05}", n - 1), 0, Duration::from_secs(60));
    assert!(w.synced, "{w:?}");
    eprintln!(
        "10,000 routes: gateway started and synced in {:?}",
        started.elapsed()
    );
    eventually("route gauge", Duration::from_secs(5), || {
        gw.stat("sandbox.gateway_routes") == Some(n)
    });
    let port = up.port().to_string();
    for i in [0, 1, 4_999, 9_999] {
        let id = format!("sbx{i:05}");
        assert_eq!(
            request(
                gw.addr,
                "GET",
                "/",
                &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", &port)],
                None
            )
            .status,
            200
        );
    }
    // The split initial response: n / 5,000 parts.
    let m = xds.metrics();
    assert!(
        m.contains("sandbox_xds_resources_sent_total{type_url=\"type.googleapis.com/kruise.agents.gateway.v1.SandboxRoute\"} 10000"),
        "{m}"
    );
}
