//! Routes published to sandbox-xds take effect in a real gateway: 503 before the first sync,
//! then additions, changes and removals; WaitForRoute returns only once the gateway has them.

use std::time::Duration;

use gateway_tests::{AdsGatewayBuilder, Upstream, request};
use sandbox_xds_wire::v1::sandbox_route::State;
use xds_tests::{Xds, eventually, route};

#[test]
fn routes_added_changed_and_removed_take_effect() {
    let a = Upstream::start("a", "127.0.0.1");
    let b = Upstream::start("b", "127.0.0.2");
    let xds = Xds::start();
    let gw = AdsGatewayBuilder::new(xds.grpc, "gw-1").start();
    let port_a = a.port().to_string();

    // The server has not delivered a complete route set yet: the gateway says so.
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "s1"), ("e2b-sandbox-port", &port_a)],
        None,
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(request(gw.addr, "GET", "/readyz", &[], None).status, 503);

    xds.routes()
        .resync(vec![route("s1", "127.0.0.1", 10, State::Running)]);
    let w = xds.wait_for_route("s1", 10, Duration::from_secs(10));
    assert!(w.synced, "{w:?}");
    assert_eq!(
        (w.gateways, w.pending_gateways, w.resource_version),
        (1, 0, 10)
    );
    // Read-after-write: the first request after WaitForRoute succeeds.
    let r = request(
        gw.addr,
        "GET",
        "/x",
        &[("e2b-sandbox-id", "s1"), ("e2b-sandbox-port", &port_a)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "a");
    let ready = request(gw.addr, "GET", "/readyz", &[], None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["routes"], 1);

    // A new sandbox.
    xds.routes()
        .upsert(route("s2", "127.0.0.2", 11, State::Running));
    assert!(xds.wait_for_route("s2", 11, Duration::from_secs(10)).synced);
    let port_b = b.port().to_string();
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "s2"), ("e2b-sandbox-port", &port_b)],
        None,
    );
    assert_eq!(r.json()["name"], "b");

    // s1 moves to another pod IP (a resumed sandbox), then pauses, then goes away.
    xds.routes()
        .upsert(route("s1", "127.0.0.2", 12, State::Running));
    assert!(xds.wait_for_route("s1", 12, Duration::from_secs(10)).synced);
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "s1"), ("e2b-sandbox-port", &port_b)],
        None,
    );
    assert_eq!(r.json()["name"], "b");
    xds.routes()
        .upsert(route("s1", "127.0.0.2", 13, State::Paused));
    assert!(xds.wait_for_route("s1", 13, Duration::from_secs(10)).synced);
    let r = request(gw.addr, "GET", "/", &[("e2b-sandbox-id", "s1")], None);
    assert_eq!(
        (r.status, r.json()["message"].as_str()),
        (502, Some("The sandbox is paused; resume it to reach it"))
    );
    xds.routes().delete("sandboxes", "s1", Some(14));
    eventually(
        "s1 removed from the gateway",
        Duration::from_secs(10),
        || {
            let r = request(gw.addr, "GET", "/", &[("e2b-sandbox-id", "s1")], None);
            r.status == 502 && r.json()["message"] == "The sandbox was not found"
        },
    );

    // Gateway-side stats.
    eventually("gauges published", Duration::from_secs(5), || {
        gw.stat("sandbox.gateway_routes") == Some(1)
            && gw.stat("sandbox.gateway_xds_connected") == Some(1)
    });
    let age = gw
        .stat("sandbox.gateway_xds_last_update_age_seconds")
        .expect("age gauge");
    assert!(age < 60, "{age}");
    // Server-side view: one delta stream from the module, one from Envoy.
    let m = xds.metrics();
    assert!(m.contains("sandbox_xds_streams{kind=\"delta\"} 2"), "{m}");
    assert!(m.contains("sandbox_xds_route_source_synced 1"), "{m}");
}

#[test]
fn wait_for_route_can_require_connected_gateways() {
    let xds = Xds::start();
    xds.routes().mark_synced();
    xds.routes()
        .upsert(route("s", "127.0.0.1", 5, State::Running));
    // No gateway at all: vacuously synced with min_gateways 0, not with 1.
    let w = xds.wait_for_route_on("s", 5, 0, Duration::from_millis(300));
    assert!(w.synced && w.gateways == 0, "{w:?}");
    let w = xds.wait_for_route_on("s", 5, 1, Duration::from_millis(300));
    assert!(!w.synced && w.gateways == 0, "{w:?}");
    let _gw = AdsGatewayBuilder::new(xds.grpc, "gw-min").start();
    let w = xds.wait_for_route_on("s", 5, 1, Duration::from_secs(10));
    assert!(w.synced && w.gateways == 1, "{w:?}");
}

#[test]
fn wait_for_route_times_out_for_routes_the_gateways_lack() {
    let xds = Xds::start();
    xds.routes().mark_synced();
    let _gw = AdsGatewayBuilder::new(xds.grpc, "gw-wait").start();
    // Unknown to the server.
    let w = xds.wait_for_route("nobody", 0, Duration::from_millis(300));
    assert!(!w.synced);
    assert_eq!(w.gateways, 1);
    // Known, but at a lower version than asked for.
    xds.routes()
        .upsert(route("s", "127.0.0.1", 5, State::Running));
    assert!(xds.wait_for_route("s", 5, Duration::from_secs(10)).synced);
    assert!(
        !xds.wait_for_route("s", 6, Duration::from_millis(300))
            .synced
    );
    let m = xds.metrics();
    assert!(
        m.contains("sandbox_xds_wait_for_route_total{outcome=\"timeout\"} 2"),
        "{m}"
    );
}
