//! A minimal blocking HTTP/1.1 client over `TcpStream`, so tests control every byte sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response from `r` (content-length, chunked, or until close).
pub fn read_response(
    r: &mut impl BufRead,
    mut body_sink: impl FnMut(&[u8]),
) -> std::io::Result<Response> {
    let status_line = read_line(r)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let mut collect = |chunk: &[u8], resp: &mut Response| {
        body_sink(chunk);
        if resp.body.len() < (1 << 20) {
            resp.body.extend_from_slice(chunk);
        }
    };
    const BUF: usize = 64 * 1024;
    let mut buf = vec![0u8; BUF];
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let size_line = read_line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                while !read_line(r)?.is_empty() {}
                break;
            }
            let mut left = size;
            while left > 0 {
                let n = r.read(&mut buf[..left.min(BUF)])?;
                if n == 0 {
                    return Err(std::io::Error::other("eof inside a chunk"));
                }
                collect(&buf[..n], &mut resp);
                left -= n;
            }
            read_line(r)?;
        }
    } else if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut left = len;
        while left > 0 {
            let n = r.read(&mut buf[..left.min(BUF)])?;
            if n == 0 {
                return Err(std::io::Error::other("eof inside the body"));
            }
            collect(&buf[..n], &mut resp);
            left -= n;
        }
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            collect(&buf[..n], &mut resp);
        }
    }
    Ok(resp)
}

/// Sends `raw` on a fresh connection and reads until the gateway closes it (EOF or reset).
/// Returns what arrived, or `None` if the connection is still open after `bound`: a test of a
/// timeout gives a generous bound and waits for the close, never for a fixed time.
pub fn read_until_closed(addr: SocketAddr, raw: &[u8], bound: Duration) -> Option<Vec<u8>> {
    let deadline = std::time::Instant::now() + bound;
    let mut s = TcpStream::connect(addr).expect("connect to the gateway");
    s.write_all(raw).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // A reset is a close too (Envoy resets when it closes with unread input).
            Err(_) => return Some(got),
        }
    }
}

/// Sends raw request bytes on a fresh connection and reads one response.
pub fn request_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    try_request_raw(addr, raw).expect("request to the gateway")
}

/// Like [`request_raw`], reporting connection and protocol failures instead of panicking.
pub fn try_request_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(raw)?;
    let mut r = BufReader::new(s);
    read_response(&mut r, |_| {})
}

/// Sends a request with the given headers (a `host` header is added unless given) and an
/// optional body, on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    try_request(addr, method, path, headers, body).expect("request to the gateway")
}

/// Like [`request`], reporting connection and protocol failures instead of panicking.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    raw.push_str("connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    try_request_raw(addr, &bytes)
}
