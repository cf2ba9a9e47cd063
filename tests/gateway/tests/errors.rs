//! The E2B error contract as Envoy actually sends it: exact statuses, JSON bodies and content
//! types for unknown, dead, not-running and unsynced sandboxes, bad tokens, malformed requests and
//! closed ports.

use gateway_tests::{GatewayBuilder, Response, Upstream, request, route, sha256_hex};
use serde_json::json;

fn assert_json_reply(r: &Response, status: u16, body: serde_json::Value) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header_count("content-type"), 1, "{:?}", r.headers);
    assert_eq!(r.json(), body);
}

#[test]
fn missing_dead_and_not_running_sandboxes() {
    let gw = GatewayBuilder::new()
        .routes(vec![
            route("dead1", "127.0.0.1", "dead"),
            route("paused1", "127.0.0.1", "paused"),
            route("creating1", "", "creating"),
            route("pool1", "127.0.0.1", "available"),
        ])
        .start();
    let r = request(gw.addr, "GET", "/", &[("e2b-sandbox-id", "ghost")], None);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Byte-exact: the SDK matches on this text.
    assert_eq!(
        r.text(),
        r#"{"sandboxId":"ghost","message":"The sandbox was not found","code":502}"#
    );

    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("host", "49983-dead1.example.com")],
        None,
    );
    assert_json_reply(
        &r,
        502,
        json!({"sandboxId": "dead1", "message": "The sandbox was not found", "code": 502}),
    );

    let r = request(gw.addr, "GET", "/kruise/paused1/49983/health", &[], None);
    assert_json_reply(
        &r,
        502,
        json!({"sandboxId": "paused1", "message": "The sandbox is paused; resume it to reach it", "code": 502}),
    );
    for (id, state) in [("creating1", "creating"), ("pool1", "available")] {
        let r = request(gw.addr, "GET", "/", &[("e2b-sandbox-id", id)], None);
        assert_json_reply(
            &r,
            502,
            json!({"sandboxId": id, "message": format!("The sandbox is not running (state: {state})"), "code": 502}),
        );
    }
    assert_eq!(gw.outcome("not_found"), 2);
    assert_eq!(gw.outcome("not_running"), 3);
}

#[test]
fn unsynced_table_answers_503_but_not_for_other_routes() {
    let api = Upstream::start("api", "127.0.0.1");
    // The shipped filter config has no route source, so the table never syncs.
    let gw = GatewayBuilder::new().api_upstream(api.addr).start();
    let r = request(gw.addr, "GET", "/", &[("e2b-sandbox-id", "any")], None);
    assert_json_reply(
        &r,
        503,
        json!({"sandboxId": "any", "message": "The sandbox gateway is not ready: its route table has not been synced yet", "code": 503}),
    );
    let r = request(gw.addr, "GET", "/kruise/api/health", &[], None);
    assert_eq!(r.json()["name"], "api");
    assert_eq!(gw.outcome("not_ready"), 1);
    // The module's readiness path says the same, for a probe.
    let r = request(gw.addr, "GET", "/readyz", &[], None);
    assert_json_reply(
        &r,
        503,
        json!({"message": "The sandbox gateway is not ready: its route table has not been synced yet", "code": 503}),
    );
    assert_eq!(gw.outcome("readiness"), 1);
}

#[test]
fn readiness_path_answers_200_once_routes_are_loaded() {
    let gw = GatewayBuilder::new()
        .routes(vec![route("one", "127.0.0.1", "running")])
        .start();
    let r = request(gw.addr, "GET", "/readyz", &[], None);
    assert_json_reply(&r, 200, json!({"status": "ready", "routes": 1}));
}

#[test]
fn tokens_are_checked_in_constant_time_against_digests() {
    let envd = Upstream::start_on("envd", "127.0.31.1", 49983);
    let app = Upstream::start("app", "127.0.31.1");
    let mut guarded = route("locked", "127.0.31.1", "running");
    guarded["accessTokenSha256"] = sha256_hex(b"envd-token").into();
    guarded["requireAccessToken"] = true.into();
    guarded["trafficTokenSha256"] = sha256_hex(b"traffic-token").into();
    guarded["requireTrafficToken"] = true.into();
    let gw = GatewayBuilder::new().routes(vec![guarded]).start();
    let app_port = app.port().to_string();
    let unauthorized = json!({
        "sandboxId": "locked",
        "message": "unauthorized access, please provide a valid access token or method signing if supported",
        "code": 401,
    });

    // envd port: X-Access-Token.
    let r = request(
        gw.addr,
        "POST",
        "/process.Process/Start",
        &[("e2b-sandbox-id", "locked")],
        Some(b"{}"),
    );
    assert_json_reply(&r, 401, unauthorized.clone());
    let r = request(
        gw.addr,
        "POST",
        "/process.Process/Start",
        &[
            ("e2b-sandbox-id", "locked"),
            ("x-access-token", "envd-tokem"),
        ],
        Some(b"{}"),
    );
    assert_json_reply(&r, 401, unauthorized.clone());
    let r = request(
        gw.addr,
        "POST",
        "/process.Process/Start",
        &[
            ("e2b-sandbox-id", "locked"),
            ("x-access-token", "envd-token"),
        ],
        Some(b"{}"),
    );
    assert_eq!(r.json()["name"], "envd");
    // The token travels on to envd, which checks it too.
    assert_eq!(r.json()["headers"]["x-access-token"][0], "envd-token");
    // envd's exemptions: health and signed file URLs.
    let r = request(
        gw.addr,
        "GET",
        "/health",
        &[("e2b-sandbox-id", "locked")],
        None,
    );
    assert_eq!(r.json()["name"], "envd");
    let r = request(
        gw.addr,
        "GET",
        "/files?path=%2Fa&signature=v1_x&signature_expiration=1",
        &[("e2b-sandbox-id", "locked")],
        None,
    );
    assert_eq!(r.json()["name"], "envd");

    // Other ports: the traffic token, stripped before the sandbox sees it.
    let forbidden = json!({"sandboxId": "locked", "message": "forbidden: invalid or missing traffic access token", "code": 403});
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[
            ("e2b-sandbox-id", "locked"),
            ("e2b-sandbox-port", &app_port),
        ],
        None,
    );
    assert_json_reply(&r, 403, forbidden.clone());
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[
            ("e2b-sandbox-id", "locked"),
            ("e2b-sandbox-port", &app_port),
            ("e2b-traffic-access-token", "nope"),
        ],
        None,
    );
    assert_json_reply(&r, 403, forbidden);
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[
            ("e2b-sandbox-id", "locked"),
            ("e2b-sandbox-port", &app_port),
            ("e2b-traffic-access-token", "traffic-token"),
        ],
        None,
    );
    let j = r.json();
    assert_eq!(j["name"], "app");
    assert!(
        j["headers"].get("e2b-traffic-access-token").is_none(),
        "{j}"
    );

    assert_eq!(gw.outcome("unauthorized"), 2);
    assert_eq!(gw.outcome("forbidden"), 2);
    assert_eq!(envd.hits(), 3);
    assert_eq!(app.hits(), 1);
}

#[test]
fn malformed_identification_is_a_json_400() {
    let up = Upstream::start("u", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![route("s", "127.0.0.1", "running")])
        .start();
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("e2b-sandbox-id", "s"), ("e2b-sandbox-port", "http")],
            "/",
            "e2b-sandbox-port header",
        ),
        (
            vec![("e2b-sandbox-id", "s"), ("e2b-sandbox-port", "70000")],
            "/",
            "e2b-sandbox-port header",
        ),
        (
            vec![("e2b-sandbox-id", "s"), ("e2b-sandbox-port", "0")],
            "/",
            "e2b-sandbox-port header",
        ),
        (
            vec![("e2b-sandbox-port", "49983")],
            "/",
            "without e2b-sandbox-id",
        ),
        (
            vec![("e2b-sandbox-id", "s"), ("e2b-sandbox-id", "t")],
            "/",
            "repeated",
        ),
        (
            vec![("e2b-sandbox-id", "bad$id")],
            "/",
            "not a valid sandbox id",
        ),
        (
            vec![("host", "99999-s.example.com")],
            "/",
            "host names port",
        ),
        (vec![], "/kruise/s/notaport/x", "path names"),
    ];
    for (headers, path, expect) in cases {
        let r = request(gw.addr, "GET", path, &headers, None);
        assert_eq!(r.status, 400, "{headers:?} {path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = r.json();
        assert_eq!(j["code"], 400);
        assert!(
            j["message"].as_str().unwrap().contains(expect),
            "{headers:?}: {j}"
        );
    }
    assert_eq!(up.hits(), 0);
    assert_eq!(gw.outcome("bad_request"), 8);
}

#[test]
fn closed_port_is_the_port_not_open_contract() {
    // Reserve a port, then close it so the connection is refused.
    let closed = test_support::free_port().to_string();
    let gw = GatewayBuilder::new()
        .routes(vec![route("s", "127.0.0.1", "running")])
        .start();
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "s"), ("e2b-sandbox-port", &closed)],
        None,
    );
    assert_json_reply(
        &r,
        502,
        json!({"sandboxId": "s", "message": "The sandbox is running but port is not open", "code": 502}),
    );
}
