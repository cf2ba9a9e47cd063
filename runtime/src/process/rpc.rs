//! The Connect methods of `process.Process`: the server streams `Start` and `Connect`, the
//! client stream `StreamInput`, and the unary calls.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Proc, ProcEvent};
use crate::connect::{self, Code, RpcError, StreamSender};
use crate::httputil::BoxBody;
use crate::metrics::GaugeGuard;
use crate::proto::{
    self, EmptyMessage, SelectorRequest, SendInputRequest, SendSignalRequest, Signal, StartRequest,
    StreamInputRequest, UpdateRequest,
};
use crate::state::AppState;
use crate::users::User;

/// Streams a process's events: start, data…, end, then the end-stream envelope.
async fn drive_stream(
    state: Arc<AppState>,
    sender: StreamSender,
    pid: u32,
    mut rx: mpsc::Receiver<ProcEvent>,
    keepalive: Duration,
    deadline: Option<Instant>,
) {
    let _open = GaugeGuard::new(&state.metrics.streams_open);
    if sender.send(&proto::start_event(pid)).await.is_err() {
        return;
    }
    let mut ka = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    let sleep = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ProcEvent::Data(kind, data)) => {
                    if sender.send(&proto::data_event(kind, &data)).await.is_err() {
                        return;
                    }
                    ka.reset();
                }
                Some(ProcEvent::End(end)) => {
                    if sender.send(&proto::end_event(&end)).await.is_ok() {
                        sender.finish(None).await;
                    }
                    return;
                }
                None => {
                    sender.finish(Some(&RpcError::new(Code::Unknown, "process output ended without an end event"))).await;
                    return;
                }
            },
            _ = ka.tick() => {
                if sender.send(&proto::keepalive_event()).await.is_err() {
                    return;
                }
            }
            _ = &mut sleep => {
                sender.finish(Some(&connect::deadline_exceeded())).await;
                return;
            }
            _ = sender.closed() => return,
        }
    }
}

/// `Start` (server stream). `deadline` is the call's `connect-timeout-ms`, counted from the
/// request's arrival: it bounds the stream and kills the process.
pub fn start_rpc(
    state: &Arc<AppState>,
    user: Result<User, RpcError>,
    headers: &HeaderMap,
    body: &[u8],
    deadline: Option<Instant>,
) -> Response<BoxBody> {
    let result = (|| {
        let req: StartRequest = connect::decode(&connect::single_message(headers, body)?)?;
        let user = user?;
        super::start(state, &user, &req, deadline)
    })();
    match result {
        Err(e) => connect::stream_error(&e),
        Ok((proc, rx)) => stream_events(state, headers, proc.pid, rx, deadline),
    }
}

/// `Connect` (server stream): reattach to a running or recently finished process.
pub fn connect_rpc(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &[u8],
    deadline: Option<Instant>,
) -> Response<BoxBody> {
    let result = (|| {
        let req: SelectorRequest = connect::decode(&connect::single_message(headers, body)?)?;
        state.processes.any(req.process.as_ref())
    })();
    match result {
        Err(e) => connect::stream_error(&e),
        Ok(proc) => stream_events(state, headers, proc.pid, proc.subscribe(), deadline),
    }
}

fn stream_events(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    pid: u32,
    rx: mpsc::Receiver<ProcEvent>,
    deadline: Option<Instant>,
) -> Response<BoxBody> {
    let (sender, resp) = StreamSender::new();
    tokio::spawn(drive_stream(
        state.clone(),
        sender,
        pid,
        rx,
        connect::keepalive_interval(headers),
        deadline,
    ));
    resp
}

async fn apply_input(proc: &Proc, input: Option<&proto::ProcessInput>) -> Result<(), RpcError> {
    match input {
        Some(proto::ProcessInput {
            pty: Some(data), ..
        }) => proc.write_pty(data).await,
        Some(proto::ProcessInput {
            stdin: Some(data), ..
        }) => proc.write_stdin(data).await,
        _ => Err(RpcError::new(
            Code::Unimplemented,
            "invalid input type: expected stdin or pty",
        )),
    }
}

/// The unary methods of `process.Process`.
pub async fn unary(state: &Arc<AppState>, method: &str, payload: &[u8]) -> Result<Value, RpcError> {
    match method {
        "List" => {
            let _: EmptyMessage = connect::decode(payload)?;
            let procs: Vec<Value> = state.processes.list().iter().map(|p| p.info()).collect();
            Ok(json!({ "processes": procs }))
        }
        "SendInput" => {
            let req: SendInputRequest = connect::decode(payload)?;
            let proc = state.processes.running(req.process.as_ref())?;
            apply_input(&proc, req.input.as_ref()).await?;
            Ok(json!({}))
        }
        "SendSignal" => {
            let req: SendSignalRequest = connect::decode(payload)?;
            let sig = match req.signal {
                Signal::Kill => libc::SIGKILL,
                Signal::Term => libc::SIGTERM,
                other => {
                    return Err(RpcError::invalid_argument(format!(
                        "invalid signal: {other:?}"
                    )));
                }
            };
            let proc = state.processes.running(req.process.as_ref())?;
            proc.signal(sig)
                .map_err(|e| RpcError::internal(format!("error sending signal: {e}")))?;
            Ok(json!({}))
        }
        "CloseStdin" => {
            let req: SelectorRequest = connect::decode(payload)?;
            let proc = state.processes.running(req.process.as_ref())?;
            proc.close_stdin().await?;
            Ok(json!({}))
        }
        "Update" => {
            let req: UpdateRequest = connect::decode(payload)?;
            let proc = state.processes.running(req.process.as_ref())?;
            if let Some(size) = req.pty.and_then(|p| p.size) {
                proc.resize(size.cols, size.rows)?;
            }
            Ok(json!({}))
        }
        _ => Err(RpcError::new(
            Code::Unimplemented,
            format!("process.Process/{method} is not implemented"),
        )),
    }
}

/// `StreamInput` (client stream): a start selector, then input chunks until the body ends. The
/// whole call, including waiting for an incomplete body, is bounded by `deadline`.
pub async fn stream_input(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Incoming,
    deadline: Option<Instant>,
) -> Response<BoxBody> {
    let result = connect::with_deadline(deadline, consume_input(state, headers, body)).await;
    match result {
        Ok(()) => connect::stream_single(&json!({})),
        Err(e) => connect::stream_error(&e),
    }
}

async fn consume_input(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    mut body: Incoming,
) -> Result<(), RpcError> {
    let gz = connect::request_encoding(headers, connect::Framing::Stream)?;
    let mut dec = connect::EnvelopeDecoder::default();
    let mut proc: Option<Arc<Proc>> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| RpcError::new(Code::Unknown, format!("error streaming input: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        dec.push(&data);
        while let Some(env) = dec.next_envelope()? {
            let msg: StreamInputRequest = connect::decode(&connect::message_payload(env, gz)?)?;
            if let Some(start) = msg.start {
                proc = Some(state.processes.running(start.process.as_ref())?);
            } else if let Some(data) = msg.data {
                let Some(p) = &proc else {
                    return Err(RpcError::invalid_argument(
                        "the start event must come before input",
                    ));
                };
                apply_input(p, data.input.as_ref()).await?;
            } else if msg.keepalive.is_none() {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    "invalid event type: expected start, data or keepalive",
                ));
            }
        }
    }
    if dec.remaining() > 0 {
        return Err(RpcError::invalid_argument(
            "protocol error: incomplete envelope at the end of the stream",
        ));
    }
    Ok(())
}
