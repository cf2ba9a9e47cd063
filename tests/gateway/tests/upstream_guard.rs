//! A route is never a way into the platform (issue 10): with the shipped filter config, a route
//! whose IP is 127.0.0.1 cannot reach Envoy's admin on its port, nor can 0.0.0.0 or the
//! IPv4-mapped spelling of 127.0.0.1, while a sandbox on another loopback address (the embedded
//! backend gives each its own) is reached as usual.

use gateway_tests::{GatewayBuilder, Response, Upstream, request, route};
use serde_json::json;

const DENIED: &str =
    "The sandbox was not found: its address is not allowed as an upstream by the gateway";

fn to_admin(gw: &gateway_tests::Gateway, id: &str) -> Response {
    let port = gw.admin.port().to_string();
    request(
        gw.addr,
        "GET",
        "/server_info",
        &[("e2b-sandbox-id", id), ("e2b-sandbox-port", &port)],
        None,
    )
}

fn assert_denied(r: &Response, id: &str) {
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"sandboxId": id, "message": DENIED, "code": 502})
    );
    // Not a word of Envoy's /server_info (version, state, command line, uptime).
    for leak in ["command_line_options", "uptime", "\"state\"", "version"] {
        assert!(!r.text().contains(leak), "{leak} in {}", r.text());
    }
}

#[test]
fn platform_addresses_are_never_upstreams() {
    let pod = Upstream::start("pod", "127.0.1.7");
    let routes = vec![
        route("admin", "127.0.0.1", "running"),
        route("mapped", "::ffff:127.0.0.1", "running"),
        route("any", "0.0.0.0", "running"),
        route("pod", "127.0.1.7", "running"),
    ];
    let gw = GatewayBuilder::shipped().routes(routes.clone()).start();

    for id in ["admin", "mapped", "any"] {
        assert_denied(&to_admin(&gw, id), id);
    }
    // The path form names the port too.
    let r = request(
        gw.addr,
        "GET",
        &format!("/kruise/admin/{}/server_info", gw.admin.port()),
        &[],
        None,
    );
    assert_denied(&r, "admin");
    assert_eq!(gw.outcome("upstream_denied"), 4);

    // A sandbox on its own loopback address is reached.
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
    assert_eq!(r.json()["path"], "/x");
    assert_eq!(gw.outcome("routed"), 1);
    drop(gw);

    // The control: without a deny list the same route does reach the admin (so the refusal
    // above is the list's doing), and 0.0.0.0 is refused all the same.
    let open = GatewayBuilder::new().routes(routes).start();
    let r = to_admin(&open, "admin");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json().get("command_line_options").is_some(),
        "{}",
        r.text()
    );
    assert_denied(&to_admin(&open, "any"), "any");
}
