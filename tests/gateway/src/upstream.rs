//! Loopback upstreams standing in for sandbox ports: an HTTP server that reports what reached it
//! (streaming the body through a hash, so large uploads are not buffered) and can stream large
//! downloads, and a WebSocket echo server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// One runtime for all upstreams of a test binary.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Deterministic filler for streamed bodies: byte `i` is `(i * 31 + 7) % 251`.
pub fn pattern_byte(i: u64) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// Fills `buf` with the pattern starting at offset `start`.
pub fn fill_pattern(buf: &mut [u8], start: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(start + i as u64);
    }
}

/// An HTTP upstream. Every response is JSON describing the request:
/// `{name, port, method, path, headers{lower-case name: [values]}, body_len, body_sha256}`,
/// except `GET /download?bytes=N`, which streams N pattern bytes.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicU64>,
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    name: Arc<str>,
    port: u16,
    hits: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if let Some(n) = path
        .strip_prefix("/download?bytes=")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let chunk = 64 * 1024u64;
        let stream = futures_util::stream::iter((0..n.div_ceil(chunk)).map(move |i| {
            let start = i * chunk;
            let mut buf = vec![0u8; chunk.min(n - start) as usize];
            fill_pattern(&mut buf, start);
            Ok::<_, Infallible>(Frame::data(Bytes::from(buf)))
        }));
        let body = BodyExt::boxed(StreamBody::new(stream));
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(body)
            .expect("response"));
    }
    let method = req.method().to_string();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    len += d.len() as u64;
                    hasher.update(d);
                }
            }
            Err(_) => break,
        }
    }
    let report = serde_json::json!({
        "name": &*name,
        "port": port,
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": len,
        "body_sha256": hex::encode(hasher.finalize()),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(report.to_string())).boxed())
        .expect("response"))
}

impl Upstream {
    /// Starts an upstream on `ip` (e.g. "127.0.0.1", "::1") and a free port.
    pub fn start(name: &str, ip: &str) -> Upstream {
        Self::start_on(name, ip, 0)
    }

    /// Starts an upstream on `ip:port`.
    pub fn start_on(name: &str, ip: &str, port: u16) -> Upstream {
        let listener = runtime()
            .block_on(TcpListener::bind((ip, port)))
            .unwrap_or_else(|e| panic!("bind upstream {ip}:{port}: {e}"));
        let addr = listener.local_addr().expect("upstream addr");
        let hits = Arc::new(AtomicU64::new(0));
        let name_arc: Arc<str> = Arc::from(name);
        let h = hits.clone();
        runtime().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, hits) = (name_arc.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(name.clone(), addr.port(), hits.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            hits,
        }
    }

    /// Requests this upstream has served.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A WebSocket server that echoes every text and binary message.
#[derive(Debug)]
pub struct WsUpstream {
    pub addr: SocketAddr,
}

impl WsUpstream {
    pub fn start() -> WsUpstream {
        let listener = runtime()
            .block_on(TcpListener::bind(("127.0.0.1", 0)))
            .expect("bind ws upstream");
        let addr = listener.local_addr().expect("ws addr");
        runtime().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                break;
                            }
                        } else if msg.is_close() {
                            break;
                        }
                    }
                });
            }
        });
        WsUpstream { addr }
    }
}
