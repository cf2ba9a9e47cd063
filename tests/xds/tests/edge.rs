//! The listener sandbox-xds serves holds the same edge limits as `envoy/gateway.yaml` (issue 10):
//! an unfinished request head is answered 408 and closed, a connection that never starts a
//! request is closed, and the default `denied_upstream_ips` keep routes away from the gateway's
//! admin on 127.0.0.1 while a sandbox on another loopback address is reached.

use std::time::Duration;

use gateway_tests::{AdsGatewayBuilder, Upstream, read_until_closed, request};
use sandbox_xds::GatewayResources;
use sandbox_xds_wire::v1::sandbox_route::State;
use test_support::free_port;
use xds_tests::{Xds, route, test_gateway_resources};

/// Far above the 1 s configured below; only the timeouts under test close a connection sooner.
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn the_served_listener_bounds_clients_and_refuses_platform_addresses() {
    let grpc = ([127, 0, 0, 1], free_port()).into();
    let http = ([127, 0, 0, 1], free_port()).into();
    let xds = Xds::start_on(
        grpc,
        http,
        GatewayResources {
            request_headers_timeout_secs: 1,
            denied_upstream_ips: GatewayResources::default().denied_upstream_ips,
            ..test_gateway_resources(grpc)
        },
    );
    let pod = Upstream::start("pod", "127.0.1.8");
    let gw = AdsGatewayBuilder::new(xds.grpc, "gw-edge").start();
    xds.routes().resync(vec![
        route("admin", "127.0.0.1", 10, State::Running),
        route("pod", "127.0.1.8", 11, State::Running),
    ]);
    assert!(
        xds.wait_for_route("pod", 11, Duration::from_secs(10))
            .synced
    );

    // An unfinished request head: 408, then the connection is closed.
    let got = read_until_closed(gw.addr, b"GET / HTTP/1.1\r\nHost: x\r\n", BOUND)
        .expect("connection with an unfinished head closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(
        text.contains("content-type: application/json") && text.contains(r#""code":408"#),
        "Envoy's 408 carries the JSON error shape: {text:?}"
    );
    // Nothing at all: closed by the listener.
    assert!(
        read_until_closed(gw.addr, b"", BOUND).is_some(),
        "silent connection closed"
    );

    // The gateway's own admin is not a sandbox port.
    let admin_port = gw.admin.port().to_string();
    let r = request(
        gw.addr,
        "GET",
        "/server_info",
        &[
            ("e2b-sandbox-id", "admin"),
            ("e2b-sandbox-port", &admin_port),
        ],
        None,
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        "The sandbox was not found: its address is not allowed as an upstream by the gateway"
    );
    assert!(!r.text().contains("command_line_options"), "{}", r.text());
    assert_eq!(gw.outcome("upstream_denied"), 1);

    let port = pod.port().to_string();
    let r = request(
        gw.addr,
        "GET",
        "/x",
        &[("e2b-sandbox-id", "pod"), ("e2b-sandbox-port", &port)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "pod");
}
