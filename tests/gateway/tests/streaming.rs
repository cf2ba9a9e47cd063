//! Bodies and upgrades go through the module untouched and unbuffered: a 50 MB chunked upload and
//! a 50 MB download (the listener's buffer limit is 1 MiB, so buffering would fail), and a
//! WebSocket session.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use gateway_tests::client::read_response;
use gateway_tests::upstream::fill_pattern;
use gateway_tests::{GatewayBuilder, Upstream, WsUpstream, route};
use sha2::{Digest, Sha256};

const FIFTY_MB: u64 = 50 * 1024 * 1024;

#[test]
fn fifty_megabytes_each_way() {
    let up = Upstream::start("bulk", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![route("bulk", "127.0.0.1", "running")])
        .start();

    // Upload: chunked, generated on the fly, hashed on both sides.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /upload HTTP/1.1\r\nhost: gw\r\ne2b-sandbox-id: bulk\r\ne2b-sandbox-port: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        up.port()
    )
    .unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < FIFTY_MB {
        let n = buf.len().min((FIFTY_MB - sent) as usize);
        fill_pattern(&mut buf[..n], sent);
        hasher.update(&buf[..n]);
        write!(s, "{n:x}\r\n").unwrap();
        s.write_all(&buf[..n]).unwrap();
        s.write_all(b"\r\n").unwrap();
        sent += n as u64;
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s), |_| {}).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["body_len"], FIFTY_MB);
    assert_eq!(j["body_sha256"], hex::encode(hasher.finalize()));

    // Download: streamed by the upstream, hashed as it arrives.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /download?bytes={FIFTY_MB} HTTP/1.1\r\nhost: gw\r\ne2b-sandbox-id: bulk\r\ne2b-sandbox-port: {}\r\nconnection: close\r\n\r\n",
        up.port()
    )
    .unwrap();
    let mut got = Sha256::new();
    let mut len = 0u64;
    let r = read_response(&mut BufReader::new(s), |chunk| {
        got.update(chunk);
        len += chunk.len() as u64;
    })
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(len, FIFTY_MB);
    let mut expect = Sha256::new();
    let mut off = 0u64;
    while off < FIFTY_MB {
        let n = buf.len().min((FIFTY_MB - off) as usize);
        fill_pattern(&mut buf[..n], off);
        expect.update(&buf[..n]);
        off += n as u64;
    }
    assert_eq!(got.finalize(), expect.finalize());
}

#[test]
fn websocket_upgrade_through_the_gateway() {
    let ws = WsUpstream::start();
    let gw = GatewayBuilder::new()
        .routes(vec![route("ws", "127.0.0.1", "running")])
        .start();
    let host = format!("{}-ws.sandbox.example.com", ws.addr.port());
    let stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
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
    let (mut socket, resp) =
        tungstenite::client(req, stream).expect("websocket handshake through the gateway");
    assert_eq!(resp.status().as_u16(), 101);
    for i in 0..20 {
        let msg = format!("message {i}");
        socket
            .send(tungstenite::Message::text(msg.clone()))
            .unwrap();
        assert_eq!(socket.read().unwrap().into_text().unwrap().as_str(), msg);
    }
    socket
        .send(tungstenite::Message::binary(vec![0u8, 1, 2, 255]))
        .unwrap();
    assert_eq!(
        socket.read().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    socket.close(None).unwrap();
    assert_eq!(gw.outcome("routed"), 1);
}
