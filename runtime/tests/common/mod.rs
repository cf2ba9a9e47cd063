//! Helpers shared by the wire-level tests of the real `agent-runtime` binary: a daemon on a
//! free port with a scratch home, HTTP/1.1 and h2c clients, Connect envelopes and streams.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Request;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use test_support::{ChildGuard, free_port};
use tokio::sync::mpsc;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub struct Daemon {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub home: std::path::PathBuf,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Self::spawn(None, extra)
    }

    /// A daemon whose open-file limit (soft and hard) is `nofile`, as `ulimit -n` sets it.
    pub fn start_with_nofile(nofile: u32, extra: &[&str]) -> Daemon {
        Self::spawn(Some(nofile), extra)
    }

    fn spawn(nofile: Option<u32>, extra: &[&str]) -> Daemon {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let home = tempfile::Builder::new()
            .prefix("rt-proto-home-")
            .tempdir()
            .unwrap()
            .keep();
        let me = agent_runtime::users::current_user().name;
        let bin = env!("CARGO_BIN_EXE_agent-runtime");
        let mut cmd = match nofile {
            // `exec` keeps the pid: the guard's pid is the daemon's.
            Some(n) => {
                let mut c = Command::new("/bin/sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.args([
            "--listen",
            &addr.to_string(),
            "--default-user",
            &me,
            "--default-workdir",
        ])
        .arg(&home)
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("AGENT_RUNTIME_LOG", "debug");
        let mut guard = ChildGuard::spawn("agent-runtime", cmd);
        guard.wait_for_tcp(addr, Duration::from_secs(10));
        Daemon { guard, addr, home }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

pub fn h1() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// A request body fed chunk by chunk (sent with `Transfer-Encoding: chunked` over HTTP/1.1).
pub fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

pub fn envelope(flags: u8, msg: &Value) -> Bytes {
    let payload = serde_json::to_vec(msg).unwrap();
    let mut b = BytesMut::new();
    b.extend_from_slice(&[flags]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(&payload);
    b.freeze()
}

pub fn unary(url: &str, msg: &Value) -> Request<Body> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(full(serde_json::to_vec(msg).unwrap()))
        .unwrap()
}

pub fn stream_req(url: &str) -> http::request::Builder {
    Request::post(url)
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
}

/// Reads envelopes from a streaming response until the end-stream envelope.
pub struct Envelopes {
    body: Incoming,
    buf: BytesMut,
}

impl Envelopes {
    pub fn new(body: Incoming) -> Self {
        Envelopes {
            body,
            buf: BytesMut::new(),
        }
    }

    pub async fn next(&mut self) -> Option<(u8, Value)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    self.buf.advance(5);
                    let payload = self.buf.split_to(len);
                    return Some((
                        flags,
                        serde_json::from_slice(&payload).expect("envelope payload is JSON"),
                    ));
                }
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                _ => return None,
            }
        }
    }

    pub async fn all(mut self) -> Vec<(u8, Value)> {
        let mut v = Vec::new();
        while let Some(e) = self.next().await {
            let end = e.0 & 2 != 0;
            v.push(e);
            if end {
                break;
            }
        }
        v
    }
}

pub fn start_body(cmd: &str) -> Value {
    json!({"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}, "stdin": false})
}

pub async fn body_json(resp: http::Response<Incoming>) -> Value {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&b)))
}

pub fn stdout_of(events: &[(u8, Value)]) -> String {
    let mut out = Vec::new();
    for (_, e) in events {
        if let Some(s) = e["event"]["data"]["stdout"].as_str() {
            out.extend(agent_runtime::proto::decode_b64(s).unwrap());
        }
    }
    String::from_utf8(out).unwrap()
}
