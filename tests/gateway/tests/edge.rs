//! Client connections at a public edge (issue 10): a connection that never finishes its request
//! head, or never starts one, is closed within the configured timeout, while established
//! streams and keep-alive connections are left alone. Timeouts are shortened to 1 s and every
//! test waits for the close with a generous bound, so a loaded machine only makes it slower.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gateway_tests::client::read_response;
use gateway_tests::{GatewayBuilder, Upstream, WsUpstream, read_until_closed, request, route};
use serde_yaml::Value as Yaml;

/// Far above the 1 s the tests configure, far below Envoy's 1 h idle default and the 600 s
/// stream idle timeout: a close before it can only come from the timeouts under test.
const BOUND: Duration = Duration::from_secs(30);

fn closed_with_408(addr: SocketAddr, raw: &[u8]) {
    let got = read_until_closed(addr, raw, BOUND)
        .unwrap_or_else(|| panic!("{addr}: connection still open after {BOUND:?}"));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(
        text.contains("content-type: application/json") && text.contains(r#""code":408"#),
        "Envoy's 408 carries the JSON error shape: {text:?}"
    );
}

#[test]
fn an_unfinished_request_head_is_answered_408_and_closed() {
    let gw = GatewayBuilder::new().request_head_timeout("1s").start();
    let partial: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\ne2b-sandbox-id: s\r\nx-slow: aaaa",
    ];
    for raw in partial {
        closed_with_408(gw.addr, raw);
        closed_with_408(gw.metrics, raw);
    }
    let stats = gw.stats();
    assert!(
        stats.contains("http.sandbox_gateway.downstream_rq_header_timeout: 2"),
        "{stats}"
    );
}

#[test]
fn a_connection_that_never_starts_a_request_is_closed() {
    let gw = GatewayBuilder::new().request_head_timeout("1s").start();
    for raw in [&b""[..], b"GE", b"GET /very/long/request/line"] {
        let got = read_until_closed(gw.addr, raw, BOUND).unwrap_or_else(|| {
            panic!(
                "{:?}: connection still open after {BOUND:?}",
                String::from_utf8_lossy(raw)
            )
        });
        // Closed by the listener before any HTTP exchange, or answered 408.
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 408 "),
            "{text:?}"
        );
    }
}

fn websocket(gw_addr: SocketAddr, ws: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let host = format!("{}-ws.sandbox.example.com", ws.port());
    let stream = TcpStream::connect(gw_addr).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let req = tungstenite::handshake::client::Request::builder()
        .uri(format!("ws://{host}/socket"))
        .header("host", &host)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (socket, resp) = tungstenite::client(req, stream).expect("websocket handshake");
    assert_eq!(resp.status().as_u16(), 101);
    socket
}

fn echo(socket: &mut tungstenite::WebSocket<TcpStream>, msg: &str) {
    socket.send(tungstenite::Message::text(msg)).unwrap();
    assert_eq!(socket.read().unwrap().into_text().unwrap().as_str(), msg);
}

fn keep_alive_request(conn: &mut BufReader<TcpStream>, port: u16) -> u16 {
    let port = port.to_string();
    let raw = format!(
        "GET /again HTTP/1.1\r\nhost: gw\r\ne2b-sandbox-id: s\r\ne2b-sandbox-port: {port}\r\n\r\n"
    );
    conn.get_mut().write_all(raw.as_bytes()).unwrap();
    read_response(conn, |_| {}).expect("response").status
}

#[test]
fn open_streams_and_idle_keep_alive_connections_outlive_the_head_timeout() {
    let ws = WsUpstream::start();
    let up = Upstream::start("u", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![
            route("s", "127.0.0.1", "running"),
            route("ws", "127.0.0.1", "running"),
        ])
        .request_head_timeout("1s")
        .start();
    let mut socket = websocket(gw.addr, ws.addr);
    echo(&mut socket, "before");
    let stream = TcpStream::connect(gw.addr).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut keep_alive = BufReader::new(stream);
    assert_eq!(keep_alive_request(&mut keep_alive, up.port()), 200);

    // The clock: another connection's unfinished head is cut after the 1 s timeout, so both
    // connections above have now been quiet for longer than that.
    closed_with_408(gw.addr, b"GET / HTTP/1.1\r\nHost: x\r\n");

    echo(&mut socket, "after the head timeout");
    socket.close(None).unwrap();
    assert_eq!(keep_alive_request(&mut keep_alive, up.port()), 200);
    assert_eq!(up.hits(), 2);
}

#[test]
fn headers_with_underscores_never_reach_the_sandbox() {
    let up = Upstream::start("u", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![route("s", "127.0.0.1", "running")])
        .start();
    let port = up.port().to_string();
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[
            ("e2b-sandbox-id", "s"),
            ("e2b-sandbox-port", &port),
            ("x_access_token", "smuggled"),
            ("e2b_traffic_access_token", "smuggled"),
            ("x-kept", "yes"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let headers = &r.json()["headers"];
    assert_eq!(headers["x-kept"][0], "yes");
    assert!(headers.get("x_access_token").is_none(), "{headers}");
    assert!(
        headers.get("e2b_traffic_access_token").is_none(),
        "{headers}"
    );
}

/// The shipped values: bounded client connections, unbounded sandbox streams.
#[test]
fn the_shipped_bootstrap_bounds_connections_not_streams() {
    let text = std::fs::read_to_string(gateway_tests::envoy::shipped_bootstrap()).unwrap();
    let root: Yaml = serde_yaml::from_str(&text).unwrap();
    let secs = |v: &Yaml| -> u64 {
        v.as_str()
            .and_then(|s| s.strip_suffix('s'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a duration in seconds: {v:?}"))
    };
    for l in root["static_resources"]["listeners"].as_sequence().unwrap() {
        let name = l["name"].as_str().unwrap();
        let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
        let head = secs(&hcm["request_headers_timeout"]);
        assert!(
            (1..=30).contains(&head),
            "{name}: request_headers_timeout {head}"
        );
        assert_eq!(secs(&l["listener_filters_timeout"]), head, "{name}");
        assert_eq!(l["continue_on_listener_filters_timeout"], Yaml::Bool(false));
        let idle = secs(&hcm["common_http_protocol_options"]["idle_timeout"]);
        assert!(idle > 300 && idle < 3600, "{name}: idle_timeout {idle}");
        assert!(hcm.get("request_timeout").is_none(), "{name}");
        assert!(
            hcm["common_http_protocol_options"]
                .get("max_stream_duration")
                .is_none(),
            "{name}"
        );
    }
    let gw = &root["static_resources"]["listeners"][0];
    assert_eq!(gw["name"], "sandbox_gateway");
    let hcm = &gw["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(secs(&hcm["stream_idle_timeout"]), 600);
    assert_eq!(hcm["upgrade_configs"][0]["upgrade_type"], "websocket");
    let sandbox_route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
    assert_eq!(sandbox_route["timeout"], "0s");
}
