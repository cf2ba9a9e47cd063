//! Routing through the real Envoy 1.40 + module: header, Host and path forms, their precedence,
//! the default port, the path rewrite, IPv6 upstreams, and the stripped spoofing header.

use gateway_tests::{GatewayBuilder, Upstream, request, route};

#[test]
fn routes_by_header_host_and_path_with_upstream_precedence() {
    let a = Upstream::start("a", "127.0.0.1");
    let b = Upstream::start("b", "127.0.0.1");
    let c = Upstream::start("c", "127.0.0.1");
    // Sandbox "sa" runs on a 127.0.0.1 "pod" whose ports are a's and b's; "sb" on c's.
    let gw = GatewayBuilder::new()
        .routes(vec![
            route("sa", "127.0.0.1", "running"),
            route("sb", "127.0.0.1", "running"),
        ])
        .start();
    let (pa, pb, pc) = (
        a.port().to_string(),
        b.port().to_string(),
        c.port().to_string(),
    );

    // Header form: id + port.
    let r = request(
        gw.addr,
        "GET",
        "/hello?x=1",
        &[("e2b-sandbox-id", "sa"), ("e2b-sandbox-port", &pa)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        (j["name"].as_str(), j["path"].as_str()),
        (Some("a"), Some("/hello?x=1"))
    );

    // Host form: <port>-<id>.<domain>, with the authority's own port ignored.
    let host = format!("{pb}-sa.sandbox.example.com:10000");
    let r = request(gw.addr, "GET", "/h", &[("host", &host)], None);
    assert_eq!(r.json()["name"], "b", "{}", r.text());

    // Path form: /kruise/<id>/<port>/<rest> is rewritten to /<rest>, query kept.
    let r = request(
        gw.addr,
        "POST",
        &format!("/kruise/sb/{pc}/api/v1/data?k=v"),
        &[],
        Some(b"payload"),
    );
    let j = r.json();
    assert_eq!(j["name"], "c", "{}", r.text());
    assert_eq!(j["path"], "/api/v1/data?k=v");
    assert_eq!(j["body_len"], 7);

    // Header beats Host.
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[
            ("host", &format!("{pc}-sb.example.com")),
            ("e2b-sandbox-id", "sa"),
            ("e2b-sandbox-port", &pa),
        ],
        None,
    );
    assert_eq!(r.json()["name"], "a");

    // The patched SDK sends the headers and the path form together: the path is still rewritten.
    let r = request(
        gw.addr,
        "GET",
        &format!("/kruise/sa/{pb}/files?path=%2Ftmp"),
        &[("e2b-sandbox-id", "sa"), ("e2b-sandbox-port", &pb)],
        None,
    );
    let j = r.json();
    assert_eq!(
        (j["name"].as_str(), j["path"].as_str()),
        (Some("b"), Some("/files?path=%2Ftmp"))
    );

    // A path naming another sandbox than the header is the application's own path.
    let r = request(
        gw.addr,
        "GET",
        "/kruise/sb/1/x",
        &[("e2b-sandbox-id", "sa"), ("e2b-sandbox-port", &pa)],
        None,
    );
    assert_eq!(r.json()["path"], "/kruise/sb/1/x");

    assert_eq!(gw.outcome("routed"), 6);
}

#[test]
fn header_without_port_uses_the_envd_default() {
    // envd's port on a loopback address of its own, so nothing else can be listening there.
    let envd = Upstream::start_on("envd", "127.0.23.1", 49983);
    let gw = GatewayBuilder::new()
        .routes(vec![route("sbx", "127.0.23.1", "running")])
        .start();
    let r = request(
        gw.addr,
        "GET",
        "/health",
        &[("e2b-sandbox-id", "sbx")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "envd");
    assert_eq!(envd.hits(), 1);
}

#[test]
fn spoofed_original_dst_header_is_stripped() {
    let good = Upstream::start("good", "127.0.0.1");
    let evil = Upstream::start("evil", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![route("s", "127.0.0.1", "running")])
        .start();
    let spoof = evil.addr.to_string();
    let port = good.port().to_string();
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[
            ("e2b-sandbox-id", "s"),
            ("e2b-sandbox-port", &port),
            ("x-envoy-original-dst-host", &spoof),
        ],
        None,
    );
    let j = r.json();
    assert_eq!(j["name"], "good");
    assert!(
        j["headers"].get("x-envoy-original-dst-host").is_none(),
        "{j}"
    );
    // Also stripped from requests the module lets through to other clusters.
    let api = Upstream::start("api", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![])
        .api_upstream(api.addr)
        .start();
    let r = request(
        gw.addr,
        "GET",
        "/kruise/api/sandboxes",
        &[("x-envoy-original-dst-host", &spoof)],
        None,
    );
    let j = r.json();
    assert_eq!(j["name"], "api");
    assert!(
        j["headers"].get("x-envoy-original-dst-host").is_none(),
        "{j}"
    );
    assert_eq!(evil.hits(), 0);
}

#[test]
fn ipv6_upstreams_are_bracketed() {
    let up = Upstream::start("six", "::1");
    let gw = GatewayBuilder::new()
        .routes(vec![route("v6", "::1", "running")])
        .start();
    let host = format!("{}-v6.example.com", up.port());
    let r = request(gw.addr, "GET", "/x", &[("host", &host)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "six");
}

#[test]
fn unidentified_requests_pass_only_to_non_sandbox_routes() {
    let api = Upstream::start("api", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![])
        .api_upstream(api.addr)
        .start();
    let r = request(
        gw.addr,
        "GET",
        "/kruise/api/v2/sandboxes",
        &[("host", "api.example.com")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/kruise/api/v2/sandboxes");
    // The same kind of request on the sandbox route would loop back into the gateway: 400.
    let r = request(
        gw.addr,
        "GET",
        "/v2/sandboxes",
        &[("host", "api.example.com")],
        None,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["code"], 400);
    assert_eq!(gw.outcome("passthrough"), 1);
    assert_eq!(gw.outcome("bad_request"), 1);
}

#[test]
fn large_tables_route_every_sandbox() {
    // 10,000 routes from a routes_file, each pointing at one of two upstreams.
    let a = Upstream::start("a", "127.0.0.1");
    let b = Upstream::start("b", "127.0.0.2");
    let routes: Vec<_> = (0..10_000)
        .map(|i| {
            route(
                &format!("sbx{i:05}"),
                if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" },
                "running",
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("gw-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("routes.json");
    std::fs::write(&file, serde_json::to_vec(&routes).unwrap()).unwrap();
    let gw = GatewayBuilder::new()
        .set("routes_file", file.to_string_lossy().into())
        .start();
    assert_eq!(gw.stat("sandbox.gateway_routes"), Some(10_000));
    for i in [0, 1, 4_999, 9_998, 9_999] {
        let id = format!("sbx{i:05}");
        let (want, port) = if i % 2 == 0 {
            ("a", a.port())
        } else {
            ("b", b.port())
        };
        let r = request(
            gw.addr,
            "GET",
            "/",
            &[
                ("e2b-sandbox-id", &id),
                ("e2b-sandbox-port", &port.to_string()),
            ],
            None,
        );
        assert_eq!(r.json()["name"], want, "{id}");
    }
    let r = request(gw.addr, "GET", "/", &[("e2b-sandbox-id", "sbx10000")], None);
    assert_eq!(r.status, 502);
    std::fs::remove_dir_all(dir).ok();
}
