//! `process.Process`: starting commands (pipes or a PTY) as a chosen user, fanning their output
//! out to any number of streams, stdin, signals, PTY resize, and keeping finished processes for a
//! while so that a late `Connect` still gets the end event.
//!
//! A process lives independently of the HTTP stream that started it: a client that disconnects
//! never kills it. Each non-PTY command runs in its own process group and signals go to that
//! group, so `kill` also reaches the children a shell started; a PTY command leads its own session.
//!
//! Layout: this file holds a process ([`Proc`]) and the table of processes ([`Registry`]);
//! `spawn` starts a command and pumps its output; `rpc` serves the Connect methods.
//!
//! Descriptors: a finished process keeps none. Its stdin pipe and PTY master are closed the
//! moment it ends (only its end event stays for late `Connect` calls), and the finished table
//! is bounded in size and age.

mod rpc;
mod spawn;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connect::{Code, RpcError};
use crate::proto::{EndEvent, OutputKind, ProcessConfig, ProcessSelector};

pub use rpc::{connect_rpc, start_rpc, stream_input, unary};
pub use spawn::{build_env, end_event_from, signal_name, start};

/// Finished processes are kept this long for late `Connect` calls.
const FINISHED_KEEP: Duration = Duration::from_secs(600);
/// At most this many finished processes are kept.
const FINISHED_MAX: usize = 1024;
/// Events buffered per subscriber before the producer waits (back-pressure).
const SUBSCRIBER_BUFFER: usize = 64;

/// An event of a process, as delivered to subscribers.
#[derive(Debug, Clone)]
pub enum ProcEvent {
    Data(OutputKind, Bytes),
    End(EndEvent),
}

#[derive(Debug, Default)]
struct Subscribers {
    list: Vec<mpsc::Sender<ProcEvent>>,
    end: Option<EndEvent>,
}

/// How a process is attached: plain pipes or a pseudo-terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    Pipes,
    Pty,
}

/// The write end of a process's stdin. Closing never waits for a write in progress: a write
/// blocked on a process that does not read is abandoned when stdin is closed or the process ends.
#[derive(Debug)]
struct Stdin {
    writer: tokio::sync::Mutex<Option<pipe::Sender>>,
    closed: CancellationToken,
}

impl Stdin {
    fn new(writer: Option<pipe::Sender>) -> Stdin {
        let closed = CancellationToken::new();
        if writer.is_none() {
            closed.cancel();
        }
        Stdin {
            writer: tokio::sync::Mutex::new(writer),
            closed,
        }
    }

    fn closed_error() -> RpcError {
        RpcError::new(
            Code::FailedPrecondition,
            "error writing to stdin: stdin not enabled or closed",
        )
    }

    async fn write(&self, pid: u32, data: &[u8]) -> Result<(), RpcError> {
        let mut guard = tokio::select! {
            g = self.writer.lock() => g,
            _ = self.closed.cancelled() => return Err(Self::closed_error()),
        };
        let Some(w) = guard.as_mut().filter(|_| !self.closed.is_cancelled()) else {
            return Err(Self::closed_error());
        };
        let result = tokio::select! {
            r = w.write_all(data) => r.map_err(|e| crate::oserror::rpc_error(
                &e,
                &format!("error writing to stdin of process '{pid}'"),
            )),
            _ = self.closed.cancelled() => Err(RpcError::new(
                Code::FailedPrecondition,
                "error writing to stdin: stdin was closed while the write was waiting for the process to read",
            )),
        };
        if self.closed.is_cancelled() {
            guard.take();
        }
        result
    }

    /// Closes the pipe (the process reads EOF); returns at once even if a write is blocked.
    async fn close(&self) {
        self.closed.cancel();
        self.writer.lock().await.take();
    }
}

/// One started process.
#[derive(Debug)]
pub struct Proc {
    pub pid: u32,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    terminal: Terminal,
    /// The PTY master while the process runs.
    pty: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
    stdin: Stdin,
    subs: Mutex<Subscribers>,
}

impl Proc {
    pub fn is_pty(&self) -> bool {
        self.terminal == Terminal::Pty
    }

    pub fn is_finished(&self) -> bool {
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .end
            .is_some()
    }

    /// A receiver of the process's future events (or of its end event, if it already ended).
    pub fn subscribe(&self) -> mpsc::Receiver<ProcEvent> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        match &subs.end {
            Some(end) => {
                let _ = tx.try_send(ProcEvent::End(end.clone()));
            }
            None => subs.list.push(tx),
        }
        rx
    }

    async fn emit(&self, kind: OutputKind, data: Bytes) {
        let list = self
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone();
        let mut gone = false;
        for s in &list {
            gone |= s.send(ProcEvent::Data(kind, data.clone())).await.is_err();
        }
        if gone {
            self.subs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .list
                .retain(|s| !s.is_closed());
        }
    }

    /// Records the end, releases every descriptor the process held, and tells the subscribers.
    async fn finish(&self, end: EndEvent) {
        self.stdin.close().await;
        self.pty.lock().unwrap_or_else(|e| e.into_inner()).take();
        let list = {
            let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
            subs.end = Some(end.clone());
            std::mem::take(&mut subs.list)
        };
        for s in list {
            let _ = s.send(ProcEvent::End(end.clone())).await;
        }
    }

    /// Sends a signal: to the process group for pipe commands, to the process for PTY sessions.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        let pid = self.pid as libc::pid_t;
        if !self.is_pty() && crate::sys::kill(-pid, sig).is_ok() {
            return Ok(());
        }
        crate::sys::kill(pid, sig)
    }

    async fn write_stdin(&self, data: &[u8]) -> Result<(), RpcError> {
        if self.is_pty() {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                "error writing to stdin: tty assigned to process, input should be written to the pty, not the stdin",
            ));
        }
        self.stdin.write(self.pid, data).await
    }

    fn pty_fd(&self) -> Option<Arc<AsyncFd<OwnedFd>>> {
        self.pty.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn write_pty(&self, mut data: &[u8]) -> Result<(), RpcError> {
        if !self.is_pty() {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                "error writing to tty: tty not assigned to process, input should be written to the stdin, not the tty",
            ));
        }
        let Some(fd) = self.pty_fd() else {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                "error writing to tty: the process has ended",
            ));
        };
        while !data.is_empty() {
            let mut guard = fd
                .writable()
                .await
                .map_err(|e| RpcError::internal(format!("error writing to tty: {e}")))?;
            match guard.try_io(|inner| crate::sys::write(inner.as_raw_fd(), data)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => {
                    return Err(crate::oserror::rpc_error(
                        &e,
                        &format!("error writing to tty of process '{}'", self.pid),
                    ));
                }
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    async fn close_stdin(&self) -> Result<(), RpcError> {
        if self.is_pty() {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                "error closing stdin: cannot close stdin for PTY process, send Ctrl+D (0x04) instead",
            ));
        }
        self.stdin.close().await;
        Ok(())
    }

    fn resize(&self, cols: u32, rows: u32) -> Result<(), RpcError> {
        if !self.is_pty() {
            return Err(RpcError::invalid_argument(
                "error resizing tty: tty not assigned to process",
            ));
        }
        let Some(fd) = self.pty_fd() else {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                "error resizing tty: the process has ended",
            ));
        };
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        crate::sys::resize(fd.get_ref().as_raw_fd(), clamp(cols), clamp(rows))
            .map_err(|e| RpcError::internal(format!("error resizing tty: {e}")))
    }

    fn info(&self) -> Value {
        let mut v = json!({ "config": self.config.to_json(), "pid": self.pid });
        if let Some(t) = &self.tag {
            v["tag"] = json!(t);
        }
        v
    }
}

/// Running and recently finished processes.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    running: HashMap<u32, Arc<Proc>>,
    finished: VecDeque<(Instant, Arc<Proc>)>,
}

impl RegistryInner {
    fn prune(&mut self) {
        while self.finished.len() > FINISHED_MAX
            || self
                .finished
                .front()
                .is_some_and(|(t, _)| t.elapsed() > FINISHED_KEEP)
        {
            self.finished.pop_front();
        }
    }
}

fn selector_error(sel: &ProcessSelector) -> RpcError {
    match (&sel.pid, &sel.tag) {
        (Some(pid), _) => RpcError::not_found(format!("process with pid {pid} not found")),
        (None, Some(tag)) => RpcError::not_found(format!("process with tag {tag} not found")),
        _ => RpcError::invalid_argument("invalid process selector: a pid or a tag is required"),
    }
}

fn matches(p: &Proc, sel: &ProcessSelector) -> bool {
    match (&sel.pid, &sel.tag) {
        (Some(pid), _) => p.pid == *pid,
        (None, Some(tag)) => p.tag.as_deref() == Some(tag.as_str()),
        _ => false,
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, p: Arc<Proc>) {
        let mut g = self.lock();
        g.finished.retain(|(_, f)| f.pid != p.pid);
        g.prune();
        g.running.insert(p.pid, p);
    }

    fn mark_finished(&self, pid: u32) {
        let mut g = self.lock();
        if let Some(p) = g.running.remove(&pid) {
            g.finished.push_back((Instant::now(), p));
        }
        g.prune();
    }

    /// A running process.
    pub fn running(&self, sel: Option<&ProcessSelector>) -> Result<Arc<Proc>, RpcError> {
        let sel = sel.cloned().unwrap_or_default();
        let g = self.lock();
        let found = match sel.pid {
            Some(pid) => g.running.get(&pid).cloned(),
            None => g.running.values().find(|p| matches(p, &sel)).cloned(),
        };
        found.ok_or_else(|| selector_error(&sel))
    }

    /// A running or recently finished process.
    pub fn any(&self, sel: Option<&ProcessSelector>) -> Result<Arc<Proc>, RpcError> {
        if let Ok(p) = self.running(sel) {
            return Ok(p);
        }
        let sel = sel.cloned().unwrap_or_default();
        let g = self.lock();
        g.finished
            .iter()
            .rev()
            .find(|(_, p)| matches(p, &sel))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| selector_error(&sel))
    }

    /// Running processes, oldest pid first.
    pub fn list(&self) -> Vec<Arc<Proc>> {
        let mut v: Vec<_> = self.lock().running.values().cloned().collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// Number of finished processes kept for late `Connect` calls.
    pub fn finished_len(&self) -> usize {
        self.lock().finished.len()
    }

    /// Kills every running process (shutdown).
    pub fn kill_all(&self) -> usize {
        let list = self.list();
        for p in &list {
            let _ = p.signal(libc::SIGKILL);
        }
        list.len()
    }
}
