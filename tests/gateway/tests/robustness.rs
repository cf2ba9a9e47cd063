//! Hostile and malformed input never crashes the gateway or escapes the module: every request
//! gets an HTTP answer, nothing panics inside the module, and Envoy keeps serving.

use gateway_tests::{GatewayBuilder, Upstream, request, request_raw, route};

/// A small deterministic generator (no extra dependency, reproducible failures).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

#[test]
fn garbage_in_answers_out() {
    let up = Upstream::start("u", "127.0.0.1");
    let port = up.port().to_string();
    let gw = GatewayBuilder::new()
        .routes(vec![
            route("s", "127.0.0.1", "running"),
            route("p", "127.0.0.1", "paused"),
        ])
        .start();
    let long_id = "x".repeat(8_000);
    let ids = [
        "s",
        "p",
        "",
        "-",
        "..",
        "s s",
        "\u{e9}t\u{e9}",
        &long_id,
        "a--b",
        "s\t",
        "%00",
    ];
    let ports = [
        port.as_str(),
        "",
        "0",
        "65535",
        "65536",
        "99999999999999999999",
        "-5",
        "0x50",
        "49983",
        " 1",
    ];
    let hosts = [
        "",
        "1-s.x",
        "49983-s",
        "-s.x",
        "99999-s.x",
        "[::1]:1",
        "a.b.c",
        "0-s.x",
        "65536-s.x",
        ":::",
    ];
    let paths = [
        "/",
        "/kruise",
        "/kruise/",
        "/kruise/s",
        "/kruise/s/",
        "/kruise/s/0/x",
        "/kruise//1/",
        "/kruise/api",
        "/kruise/s/1/%2e%2e/x",
        "/?a=b",
    ];
    let mut rng = Lcg(42);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if rng.next().is_multiple_of(2) {
            headers.push(("e2b-sandbox-id", rng.pick(&ids)));
        }
        if rng.next().is_multiple_of(3) {
            headers.push(("e2b-sandbox-id", rng.pick(&ids)));
        }
        if rng.next().is_multiple_of(2) {
            headers.push(("e2b-sandbox-port", rng.pick(&ports)));
        }
        if rng.next().is_multiple_of(2) {
            headers.push(("host", rng.pick(&hosts)));
        }
        if rng.next().is_multiple_of(4) {
            headers.push(("x-envoy-original-dst-host", "127.0.0.1:1"));
        }
        let path = rng.pick(&paths);
        let r = request(gw.addr, "GET", path, &headers, None);
        assert!(
            matches!(r.status, 200 | 400 | 404 | 431 | 502 | 503),
            "unexpected {} for {path} {headers:?}: {}",
            r.status,
            r.text()
        );
        if r.status != 200
            && r.status != 404
            && r.status != 431
            && !r.body.is_empty()
            && r.header("content-type") == Some("application/json")
        {
            assert!(r.json()["code"].is_number());
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    // Raw protocol abuse: bytes Envoy's codec rejects before the module sees them.
    for raw in [
        &b"GET / HTTP/1.1\r\nhost: x\r\ne2b-sandbox-id: s\x01\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: x\r\ne2b-sandbox-id\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ] {
        let r = request_raw(gw.addr, raw);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
    }
    assert!(
        statuses.len() >= 3,
        "the generator should exercise several outcomes: {statuses:?}"
    );
    assert_eq!(
        gw.outcome("internal_error"),
        0,
        "a panic was contained inside the module:\n{}",
        gw.log()
    );
    assert!(!gw.log().contains("panic in"), "{}", gw.log());
    // Still serving.
    let r = request(
        gw.addr,
        "GET",
        "/",
        &[("e2b-sandbox-id", "s"), ("e2b-sandbox-port", &port)],
        None,
    );
    assert_eq!(r.status, 200);
}

#[test]
fn concurrent_clients_on_every_worker() {
    let up = Upstream::start("u", "127.0.0.1");
    let port = up.port().to_string();
    let gw = GatewayBuilder::new()
        .routes(vec![route("s", "127.0.0.1", "running")])
        .concurrency(4)
        .start();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let (addr, port) = (gw.addr, port.clone());
            std::thread::spawn(move || {
                for i in 0..100 {
                    let id = if (t + i).is_multiple_of(5) {
                        "nope"
                    } else {
                        "s"
                    };
                    let r = request(
                        addr,
                        "GET",
                        "/",
                        &[("e2b-sandbox-id", id), ("e2b-sandbox-port", &port)],
                        None,
                    );
                    assert_eq!(r.status, if id == "s" { 200 } else { 502 });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(gw.outcome("routed") + gw.outcome("not_found"), 800);
    assert_eq!(gw.outcome("not_found"), 160);
}
