//! A small client of a sandbox's runtime (envd / agent-runtime on port 49983), for the
//! manager's MCP tools and the dynamic CSI mounts of manager and controller: run a command to
//! completion (`process.Process/Start`, a Connect server stream of 5-byte envelopes), read and
//! write a file (`/files`), list a directory (`filesystem.Filesystem/ListDir`). Every answer it keeps is bounded: command output and file
//! reads are cut at a limit (and say so), other bodies are refused beyond a limit.
//!
//! Wire format: docs/runtime.md and reference/e2b-protocol.md §4.3–4.7.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};

/// The port envd listens on in every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// Envelope flag: the payload is compressed (never asked for, so refused).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-stream message (`{}` or `{"error":…}`).
pub const FLAG_END_STREAM: u8 = 0x02;
/// Largest envelope accepted from a runtime (its data events are far smaller).
pub const MAX_ENVELOPE_BYTES: usize = 4 << 20;
/// Largest error or listing body read from a runtime.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// How long a file or listing call may take.
const FILE_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after a command's own deadline the stream may still take to end.
const STREAM_GRACE: Duration = Duration::from_secs(10);

/// Why a runtime call failed. Messages are written for the person (or model) that made the
/// call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvdError {
    #[error("the sandbox runtime at {addr} cannot be reached: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A Connect error (`code` is the Connect code, e.g. `not_found`, `invalid_argument`).
    #[error("{code}: {message}")]
    Rpc { code: String, message: String },
    /// A plain HTTP error of `/files`.
    #[error("{message} (HTTP {status})")]
    Http { status: u16, message: String },
    #[error("the sandbox runtime gave no answer within {0} s")]
    Timeout(u64),
    #[error("unexpected answer from the sandbox runtime: {0}")]
    Protocol(String),
}

impl EnvdError {
    /// Whether the runtime said the thing asked about does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            EnvdError::Rpc { code, .. } => code == "not_found",
            EnvdError::Http { status, .. } => *status == 404,
            _ => false,
        }
    }
}

/// One Connect envelope: `flags:u8 | length:u32 BE | payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub payload: Bytes,
}

/// Encodes one envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[flags]);
    // Payloads this client sends are request messages, far below 4 GiB.
    b.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    b.extend_from_slice(payload);
    b.freeze()
}

/// Splits a byte stream into envelopes, whatever the chunking.
#[derive(Debug, Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
}

impl EnvelopeDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete envelope, `None` until one has fully arrived.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, EnvdError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_ENVELOPE_BYTES {
            return Err(EnvdError::Protocol(format!(
                "envelope of {len} bytes (limit {MAX_ENVELOPE_BYTES})"
            )));
        }
        if flags & !(FLAG_COMPRESSED | FLAG_END_STREAM) != 0 {
            return Err(EnvdError::Protocol(format!("envelope flags {flags:#04x}")));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(EnvdError::Protocol(
                "compressed envelope, though none was accepted".into(),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Bytes received but not yet part of a complete envelope.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The end of a process: envd's `EndEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessEnd {
    /// -1 when a signal killed the process.
    pub exit_code: i32,
    /// Go wording: `exit status 3`, `signal: killed`.
    pub status: String,
    pub error: Option<String>,
}

/// One message of a `Start` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    Start {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    End(ProcessEnd),
    KeepAlive,
    /// Anything else (a PTY chunk, a field a later version adds): ignored.
    Other,
}

/// An integer that protojson writes as a number or a string.
fn json_int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn b64(v: &Value) -> Result<Vec<u8>, EnvdError> {
    let s = v
        .as_str()
        .ok_or_else(|| EnvdError::Protocol("output data is not a base64 string".into()))?;
    let trimmed = s.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .map_err(|e| EnvdError::Protocol(format!("output data is not base64: {e}")))
}

/// Parses a message envelope of a `Start` (or `Connect`) stream.
pub fn parse_process_event(payload: &[u8]) -> Result<ProcessEvent, EnvdError> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| EnvdError::Protocol(format!("process event is not JSON: {e}")))?;
    let Some(event) = v.get("event").and_then(Value::as_object) else {
        return Err(EnvdError::Protocol(format!(
            "process message without an event: {}",
            truncate_chars(&v.to_string(), 200)
        )));
    };
    if let Some(s) = event.get("start") {
        let pid = json_int(s.get("pid")).unwrap_or(0);
        return Ok(ProcessEvent::Start {
            pid: u32::try_from(pid).unwrap_or(0),
        });
    }
    if let Some(d) = event.get("data") {
        if let Some(out) = d.get("stdout") {
            return b64(out).map(ProcessEvent::Stdout);
        }
        if let Some(err) = d.get("stderr") {
            return b64(err).map(ProcessEvent::Stderr);
        }
        return Ok(ProcessEvent::Other);
    }
    if let Some(e) = event.get("end") {
        let code = json_int(e.get("exitCode").or_else(|| e.get("exit_code"))).unwrap_or(0);
        return Ok(ProcessEvent::End(ProcessEnd {
            exit_code: i32::try_from(code).unwrap_or(-1),
            status: e
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            error: e
                .get("error")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        }));
    }
    if event.contains_key("keepalive") {
        return Ok(ProcessEvent::KeepAlive);
    }
    Ok(ProcessEvent::Other)
}

/// Parses an end-stream envelope: `{}` is success, `{"error":{code,message}}` a Connect error.
pub fn parse_end_stream(payload: &[u8]) -> Result<(), EnvdError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| EnvdError::Protocol(format!("end-stream message is not JSON: {e}")))?;
    match v.get("error") {
        None | Some(Value::Null) => Ok(()),
        Some(err) => Err(rpc_error(err)),
    }
}

/// A Connect error object (`{"code":"not_found","message":"…"}`).
fn rpc_error(err: &Value) -> EnvdError {
    EnvdError::Rpc {
        code: err
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        message: err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)")
            .to_string(),
    }
}

/// Output kept up to a limit; what comes after is counted, not kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Every byte the stream carried.
    pub total: u64,
    limit: usize,
}

impl Captured {
    pub fn new(limit: usize) -> Captured {
        Captured {
            bytes: Vec::new(),
            total: 0,
            limit,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }

    /// The kept bytes as text (see [`text`]).
    pub fn text(&self) -> String {
        text(&self.bytes, self.truncated())
    }
}

/// Bytes as text: invalid UTF-8 becomes U+FFFD; when `cut` (the bytes are a prefix), a
/// character split by the cut is dropped instead of becoming U+FFFD.
pub fn text(bytes: &[u8], cut: bool) -> String {
    let mut end = bytes.len();
    if cut {
        // The last character start among the final 4 bytes, if its sequence is incomplete.
        let from = bytes.len().saturating_sub(4);
        if let Some(i) = (from..bytes.len()).rev().find(|&i| bytes[i] & 0xC0 != 0x80) {
            let need = match bytes[i] {
                b if b >= 0xF0 => 4,
                b if b >= 0xE0 => 3,
                b if b >= 0xC0 => 2,
                _ => 1,
            };
            if bytes.len() - i < need {
                end = i;
            }
        }
    }
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The program a command runs.
#[derive(Debug, Clone, Copy)]
pub enum Program<'a> {
    /// A bash command line (`bash -l -c`), as the SDK's `commands.run`.
    Shell(&'a str),
    /// A program and its arguments, no shell.
    Exec(&'a str, &'a [String]),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CommandSpec<'a> {
    pub program: Program<'a>,
    /// The account it runs as (`Authorization: Basic <user>:`); `None`: the runtime's default.
    pub user: Option<&'a str>,
    pub cwd: Option<&'a str>,
    pub envs: &'a BTreeMap<String, String>,
    /// envd kills the command when this passes.
    pub timeout: Duration,
    /// How much of stdout and of stderr is kept.
    pub output_limit: usize,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub pid: u32,
    pub stdout: Captured,
    pub stderr: Captured,
    /// `None` when the command was killed at its deadline before an end event arrived.
    pub end: Option<ProcessEnd>,
    /// envd killed it at the deadline.
    pub timed_out: bool,
}

/// A file read (possibly cut).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    pub bytes: Vec<u8>,
    /// More bytes followed the ones kept.
    pub truncated: bool,
    /// The file's size when the runtime said it (`Content-Length`).
    pub size: Option<u64>,
}

/// One `EntryInfo` of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, deserialize_with = "int_or_string")]
    pub size: u64,
    #[serde(default)]
    pub permissions: String,
    #[serde(default)]
    pub modified_time: Option<String>,
    #[serde(default)]
    pub symlink_target: Option<String>,
}

fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(json_int(Some(&v))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0))
}

/// Parses a `ListDir` answer.
pub fn parse_list(body: &[u8]) -> Result<Vec<EntryInfo>, EnvdError> {
    #[derive(Deserialize)]
    struct ListDirResponse {
        #[serde(default)]
        entries: Vec<EntryInfo>,
    }
    serde_json::from_slice::<ListDirResponse>(body)
        .map(|r| r.entries)
        .map_err(|e| EnvdError::Protocol(format!("ListDir answer: {e}")))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Where a sandbox's runtime answers, and its access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Target {
    pub fn new(ip: IpAddr, token: Option<String>) -> Target {
        Target {
            addr: SocketAddr::new(ip, ENVD_PORT),
            token,
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }
}

/// The HTTP client of runtimes (the same hyper-util client the local backend uses).
#[derive(Debug, Clone)]
pub struct EnvdClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for EnvdClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        EnvdClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

/// Reads a body up to `limit` bytes; the flag says whether more followed (the rest is not
/// read).
async fn read_up_to(mut body: Incoming, limit: usize) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            let room = limit - out.len();
            if data.len() > room {
                out.extend_from_slice(&data[..room]);
                return Ok((out, true));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((out, false))
}

/// An error and its sources, `: `-separated ("client error (Connect): tcp connect error:
/// Connection refused (os error 111)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The message of a runtime's JSON error body (`{"code":…,"message":…}`), else the body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| truncate_chars(String::from_utf8_lossy(body).trim(), 500))
}

impl EnvdClient {
    fn request(
        &self,
        target: &Target,
        method: http::Method,
        path_and_query: &str,
        content_type: Option<&str>,
    ) -> http::request::Builder {
        let mut b = http::Request::builder()
            .method(method)
            .uri(target.url(path_and_query));
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(t) = &target.token {
            b = b.header("x-access-token", t);
        }
        b
    }

    async fn send(
        &self,
        target: &Target,
        req: http::request::Builder,
        body: Bytes,
    ) -> Result<http::Response<Incoming>, EnvdError> {
        let req = req
            .body(Full::new(body))
            .map_err(|e| EnvdError::Protocol(format!("cannot build the request: {e}")))?;
        self.client
            .request(req)
            .await
            .map_err(|e| EnvdError::Unreachable {
                addr: target.addr.to_string(),
                reason: error_chain(&e),
            })
    }

    /// Runs the command to completion (or its deadline) and collects its output.
    pub async fn run(
        &self,
        target: &Target,
        spec: &CommandSpec<'_>,
    ) -> Result<CommandResult, EnvdError> {
        let mut process = match spec.program {
            Program::Shell(line) => json!({"cmd": "/bin/bash", "args": ["-l", "-c", line]}),
            Program::Exec(cmd, args) => json!({"cmd": cmd, "args": args}),
        };
        if !spec.envs.is_empty() {
            process["envs"] = json!(spec.envs);
        }
        if let Some(cwd) = spec.cwd {
            process["cwd"] = json!(cwd);
        }
        let msg = json!({ "process": process, "stdin": false }).to_string();
        let ms = spec.timeout.as_millis().max(1).to_string();
        let req = self
            .request(
                target,
                http::Method::POST,
                "/process.Process/Start",
                Some("application/connect+json"),
            )
            .header("connect-protocol-version", "1")
            .header("connect-accept-encoding", "identity")
            .header("connect-content-encoding", "identity")
            .header("connect-timeout-ms", ms)
            .header("keepalive-ping-interval", "30");
        let req = match spec.user {
            Some(user) => req.header(
                http::header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
                ),
            ),
            None => req,
        };
        let body = envelope(0, msg.as_bytes());
        let bound = spec.timeout + STREAM_GRACE;
        let mut result = CommandResult {
            pid: 0,
            stdout: Captured::new(spec.output_limit),
            stderr: Captured::new(spec.output_limit),
            end: None,
            timed_out: false,
        };
        let started = tokio::time::Instant::now();
        let run = async {
            let resp = self.send(target, req, body).await?;
            let status = resp.status();
            if status != http::StatusCode::OK {
                let (b, _) = read_up_to(resp.into_body(), MAX_ANSWER_BYTES)
                    .await
                    .unwrap_or_default();
                return Err(unary_error(status, &b));
            }
            let mut body = resp.into_body();
            let mut dec = EnvelopeDecoder::default();
            loop {
                while let Some(env) = dec.next_envelope()? {
                    if env.flags & FLAG_END_STREAM != 0 {
                        return match parse_end_stream(&env.payload) {
                            Err(EnvdError::Rpc { code, .. })
                                if code == "deadline_exceeded" && result.pid != 0 =>
                            {
                                result.timed_out = true;
                                Ok(())
                            }
                            other => other,
                        };
                    }
                    match parse_process_event(&env.payload)? {
                        ProcessEvent::Start { pid } => result.pid = pid,
                        ProcessEvent::Stdout(d) => result.stdout.push(&d),
                        ProcessEvent::Stderr(d) => result.stderr.push(&d),
                        ProcessEvent::End(end) => result.end = Some(end),
                        ProcessEvent::KeepAlive | ProcessEvent::Other => {}
                    }
                }
                match body.frame().await {
                    None => {
                        return Err(EnvdError::Protocol(format!(
                            "the command stream ended without an end-stream message ({} bytes pending)",
                            dec.pending()
                        )));
                    }
                    Some(Err(e)) => {
                        return Err(EnvdError::Unreachable {
                            addr: target.addr.to_string(),
                            reason: format!("the command stream broke: {e}"),
                        });
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            dec.push(&data);
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(bound, run).await {
            Err(_) => Err(EnvdError::Timeout(bound.as_secs())),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                // envd kills the command at the deadline and ends the stream with
                // deadline_exceeded, unless the end event of the kill wins the race.
                if result.end.as_ref().is_some_and(|e| e.exit_code == -1)
                    && started.elapsed() >= spec.timeout
                {
                    result.timed_out = true;
                }
                if result.end.is_none() && !result.timed_out {
                    return Err(EnvdError::Protocol(
                        "the command stream ended without an end event".into(),
                    ));
                }
                Ok(result)
            }
        }
    }

    /// Reads a file, keeping at most `limit` bytes.
    pub async fn read_file(
        &self,
        target: &Target,
        path: &str,
        limit: usize,
    ) -> Result<FileRead, EnvdError> {
        let req = self
            .request(
                target,
                http::Method::GET,
                &format!("/files?path={}", query_escape(path)),
                None,
            )
            .header(http::header::ACCEPT_ENCODING, "identity");
        let call = async {
            let resp = self.send(target, req, Bytes::new()).await?;
            let status = resp.status();
            let size = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let limit = if status.is_success() {
                limit
            } else {
                MAX_ANSWER_BYTES
            };
            let (bytes, truncated) =
                read_up_to(resp.into_body(), limit)
                    .await
                    .map_err(|e| EnvdError::Unreachable {
                        addr: target.addr.to_string(),
                        reason: format!("the download broke: {e}"),
                    })?;
            if !status.is_success() {
                return Err(EnvdError::Http {
                    status: status.as_u16(),
                    message: error_message(&bytes),
                });
            }
            Ok(FileRead {
                bytes,
                truncated,
                size,
            })
        };
        tokio::time::timeout(FILE_CALL_TIMEOUT, call)
            .await
            .map_err(|_| EnvdError::Timeout(FILE_CALL_TIMEOUT.as_secs()))?
    }

    /// Writes (creates or replaces) a file, creating its parents; returns the absolute path the
    /// runtime wrote.
    pub async fn write_file(
        &self,
        target: &Target,
        path: &str,
        data: Bytes,
    ) -> Result<String, EnvdError> {
        let req = self.request(
            target,
            http::Method::POST,
            &format!("/files?path={}", query_escape(path)),
            Some("application/octet-stream"),
        );
        let call = async {
            let resp = self.send(target, req, data).await?;
            let status = resp.status();
            let (bytes, _) = read_up_to(resp.into_body(), MAX_ANSWER_BYTES)
                .await
                .map_err(|e| EnvdError::Unreachable {
                    addr: target.addr.to_string(),
                    reason: e,
                })?;
            if !status.is_success() {
                return Err(EnvdError::Http {
                    status: status.as_u16(),
                    message: error_message(&bytes),
                });
            }
            let written = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get(0)
                        .and_then(|e| e.get("path"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| path.to_string());
            Ok(written)
        };
        tokio::time::timeout(FILE_CALL_TIMEOUT, call)
            .await
            .map_err(|_| EnvdError::Timeout(FILE_CALL_TIMEOUT.as_secs()))?
    }

    /// Lists a directory `depth` levels deep (`ListDir`).
    pub async fn list_dir(
        &self,
        target: &Target,
        path: &str,
        depth: u32,
    ) -> Result<Vec<EntryInfo>, EnvdError> {
        let req = self
            .request(
                target,
                http::Method::POST,
                "/filesystem.Filesystem/ListDir",
                Some("application/json"),
            )
            .header("connect-protocol-version", "1")
            .header(
                "connect-timeout-ms",
                FILE_CALL_TIMEOUT.as_millis().to_string(),
            );
        let body = Bytes::from(json!({ "path": path, "depth": depth }).to_string());
        let call = async {
            let resp = self.send(target, req, body).await?;
            let status = resp.status();
            let (bytes, more) = read_up_to(resp.into_body(), MAX_ANSWER_BYTES)
                .await
                .map_err(|e| EnvdError::Unreachable {
                    addr: target.addr.to_string(),
                    reason: e,
                })?;
            if status != http::StatusCode::OK {
                return Err(unary_error(status, &bytes));
            }
            if more {
                return Err(EnvdError::Protocol(format!(
                    "the listing is larger than {} MiB; list a smaller depth or a subdirectory",
                    MAX_ANSWER_BYTES >> 20
                )));
            }
            parse_list(&bytes)
        };
        tokio::time::timeout(FILE_CALL_TIMEOUT, call)
            .await
            .map_err(|_| EnvdError::Timeout(FILE_CALL_TIMEOUT.as_secs()))?
    }
}

/// A non-200 answer to a Connect call: its `{code,message}` when it is a Connect error, else
/// the HTTP status and body.
fn unary_error(status: http::StatusCode, body: &[u8]) -> EnvdError {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("code").is_some_and(Value::is_string) => rpc_error(&v),
        _ => EnvdError::Http {
            status: status.as_u16(),
            message: error_message(body),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_split_anywhere_decode_whole() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&envelope(0, br#"{"event":{"start":{"pid":7}}}"#));
        wire.extend_from_slice(&envelope(0, br#"{"event":{"data":{"stdout":"aGkK"}}}"#));
        wire.extend_from_slice(&envelope(FLAG_END_STREAM, b"{}"));
        for split in 0..wire.len() {
            let mut d = EnvelopeDecoder::default();
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                d.push(chunk);
                while let Some(e) = d.next_envelope().unwrap() {
                    got.push(e);
                }
            }
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[2].flags, FLAG_END_STREAM);
            assert_eq!(d.pending(), 0);
        }
        // One byte at a time.
        let mut d = EnvelopeDecoder::default();
        let mut n = 0;
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while d.next_envelope().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_envelope(), Err(EnvdError::Protocol(_))));
        let mut d = EnvelopeDecoder::default();
        d.push(&envelope(FLAG_COMPRESSED, b"x"));
        assert!(d.next_envelope().is_err());
        let mut d = EnvelopeDecoder::default();
        d.push(&envelope(0x80, b"x"));
        assert!(d.next_envelope().is_err());
        // A partial header or payload waits.
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0, 0]);
        assert_eq!(d.next_envelope(), Ok(None));
        d.push(&[0, 4, b'{']);
        assert_eq!(d.next_envelope(), Ok(None));
    }

    #[test]
    fn process_events_parse_like_protojson() {
        assert_eq!(
            parse_process_event(br#"{"event":{"start":{"pid":4242}}}"#),
            Ok(ProcessEvent::Start { pid: 4242 })
        );
        assert_eq!(
            parse_process_event(br#"{"event":{"data":{"stdout":"aGkK"}}}"#),
            Ok(ProcessEvent::Stdout(b"hi\n".to_vec()))
        );
        assert_eq!(
            parse_process_event(br#"{"event":{"data":{"stderr":"d2Fybgo"}}}"#),
            Ok(ProcessEvent::Stderr(b"warn\n".to_vec()))
        );
        // exitCode 0 is a default: omitted.
        assert_eq!(
            parse_process_event(br#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#),
            Ok(ProcessEvent::End(ProcessEnd {
                exit_code: 0,
                status: "exit status 0".into(),
                error: None
            }))
        );
        assert_eq!(
            parse_process_event(
                br#"{"event":{"end":{"exitCode":"-1","status":"signal: killed","error":"signal: killed"}}}"#
            ),
            Ok(ProcessEvent::End(ProcessEnd {
                exit_code: -1,
                status: "signal: killed".into(),
                error: Some("signal: killed".into())
            }))
        );
        assert_eq!(
            parse_process_event(br#"{"event":{"keepalive":{}}}"#),
            Ok(ProcessEvent::KeepAlive)
        );
        assert_eq!(
            parse_process_event(br#"{"event":{"data":{"pty":"eA=="}}}"#),
            Ok(ProcessEvent::Other)
        );
        assert!(parse_process_event(b"{}").is_err());
        assert!(parse_process_event(b"[").is_err());
        assert!(parse_process_event(br#"{"event":{"data":{"stdout":"!!"}}}"#).is_err());
    }

    #[test]
    fn end_stream_errors_are_connect_errors() {
        assert_eq!(parse_end_stream(b"{}"), Ok(()));
        assert_eq!(parse_end_stream(b""), Ok(()));
        let e = parse_end_stream(
            br#"{"error":{"code":"invalid_argument","message":"cwd '/nope' does not exist"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid_argument: cwd '/nope' does not exist"
        );
        assert!(
            !e.is_not_found()
                && unary_error(
                    http::StatusCode::NOT_FOUND,
                    br#"{"code":"not_found","message":"x"}"#
                )
                .is_not_found()
        );
        assert_eq!(
            unary_error(http::StatusCode::BAD_GATEWAY, b"upstream gone"),
            EnvdError::Http {
                status: 502,
                message: "upstream gone".into()
            }
        );
    }

    #[test]
    fn output_is_capped_and_cut_on_a_character_boundary() {
        let mut c = Captured::new(5);
        c.push(b"ab");
        c.push("cdé".as_bytes()); // é is 2 bytes: c, d, 0xC3 kept, 0xA9 dropped
        assert_eq!(c.total, 6);
        assert!(c.truncated());
        assert_eq!(c.text(), "abcd");
        let mut c = Captured::new(10);
        c.push(&[b'a', 0xff, b'b']);
        assert!(!c.truncated());
        assert_eq!(c.text(), "a\u{fffd}b");
        assert_eq!(text("€".as_bytes(), true), "€");
        assert_eq!(text(&"€".as_bytes()[..2], true), "");
        assert_eq!(text(&"€".as_bytes()[..2], false), "\u{fffd}");
    }

    #[test]
    fn listings_and_queries() {
        let entries = parse_list(
            br#"{"entries":[{"name":"a","type":"FILE_TYPE_FILE","path":"/h/a","size":"11","mode":420,
                "permissions":"-rw-r--r--","modifiedTime":"2026-01-01T00:00:00Z"},
                {"name":"d","type":"FILE_TYPE_DIRECTORY","path":"/h/d","size":4096}]}"#,
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].size, 11);
        assert_eq!(entries[1].kind, "FILE_TYPE_DIRECTORY");
        assert_eq!(entries[1].size, 4096);
        assert_eq!(parse_list(b"{}").unwrap(), vec![]);
        assert!(parse_list(b"nope").is_err());
        assert!(parse_list(br#"{"entries":{}}"#).is_err());
        assert_eq!(
            query_escape("/home/user/a b&c=d/é"),
            "%2Fhome%2Fuser%2Fa%20b%26c%3Dd%2F%C3%A9"
        );
    }
}
