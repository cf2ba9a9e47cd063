//! `process.Process`: starting commands (pipes or a PTY) as a chosen user, fanning their output
//! out to any number of streams, stdin, signals, PTY resize, and keeping finished processes for a
//! while so that a late `Connect` still gets the end event.
//!
//! A process lives independently of the HTTP stream that started it: a client that disconnects
//! never kills it. Each non-PTY command runs in its own process group and signals go to that
//! group, so `kill` also reaches the children a shell started; a PTY command leads its own session.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connect::{self, Code, RpcError, StreamSender};
use crate::httputil::BoxBody;
use crate::metrics::GaugeGuard;
use crate::proto::{
    self, EndEvent, OutputKind, ProcessConfig, ProcessSelector, SelectorRequest, SendInputRequest,
    SendSignalRequest, Signal, StartRequest, StreamInputRequest, UpdateRequest,
};
use crate::state::AppState;
use crate::users::{self, User};

/// Finished processes are kept this long for late `Connect` calls.
const FINISHED_KEEP: Duration = Duration::from_secs(600);
/// At most this many finished processes are kept.
const FINISHED_MAX: usize = 1024;
/// Output chunk size (envd uses 32 KiB for pipes and 16 KiB for PTYs).
const CHUNK: usize = 32 << 10;
/// Events buffered per subscriber before the producer waits (back-pressure).
const SUBSCRIBER_BUFFER: usize = 64;

/// Fallback `PATH` when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// One started process.
#[derive(Debug)]
pub struct Proc {
    pub pid: u32,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    pty: Option<Arc<AsyncFd<OwnedFd>>>,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    subs: Mutex<Subscribers>,
}

impl Proc {
    pub fn is_pty(&self) -> bool {
        self.pty.is_some()
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

    async fn finish(&self, end: EndEvent) {
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
        if !self.is_pty() {
            // SAFETY: kill has no memory-safety preconditions.
            if unsafe { libc::kill(-pid, sig) } == 0 {
                return Ok(());
            }
        }
        // SAFETY: as above.
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    async fn write_stdin(&self, data: &[u8]) -> Result<(), RpcError> {
        if self.is_pty() {
            return Err(RpcError::internal(
                "error writing to stdin: tty assigned to process, input should be written to the pty, not the stdin",
            ));
        }
        let mut guard = self.stdin.lock().await;
        let Some(w) = guard.as_mut() else {
            return Err(RpcError::internal(
                "error writing to stdin: stdin not enabled or closed",
            ));
        };
        w.write_all(data).await.map_err(|e| {
            RpcError::internal(format!(
                "error writing to stdin of process '{}': {e}",
                self.pid
            ))
        })
    }

    async fn write_pty(&self, mut data: &[u8]) -> Result<(), RpcError> {
        let Some(fd) = &self.pty else {
            return Err(RpcError::internal(
                "error writing to tty: tty not assigned to process, input should be written to the stdin, not the tty",
            ));
        };
        while !data.is_empty() {
            let mut guard = fd
                .writable()
                .await
                .map_err(|e| RpcError::internal(format!("error writing to tty: {e}")))?;
            match guard.try_io(|inner| {
                // SAFETY: data is a live slice; the fd is open while `inner` is borrowed.
                let n = unsafe { libc::write(inner.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => {
                    return Err(RpcError::internal(format!(
                        "error writing to tty of process '{}': {e}",
                        self.pid
                    )));
                }
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    async fn close_stdin(&self) -> Result<(), RpcError> {
        if self.is_pty() {
            return Err(RpcError::new(
                Code::Unknown,
                "error closing stdin: cannot close stdin for PTY process, send Ctrl+D (0x04) instead",
            ));
        }
        self.stdin.lock().await.take();
        Ok(())
    }

    fn resize(&self, cols: u32, rows: u32) -> Result<(), RpcError> {
        let Some(fd) = &self.pty else {
            return Err(RpcError::invalid_argument(
                "error resizing tty: tty not assigned to process",
            ));
        };
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        crate::pty::resize(fd.get_ref().as_raw_fd(), clamp(cols), clamp(rows))
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
        g.running.insert(p.pid, p);
    }

    fn mark_finished(&self, pid: u32) {
        let mut g = self.lock();
        if let Some(p) = g.running.remove(&pid) {
            g.finished.push_back((Instant::now(), p));
        }
        while g.finished.len() > FINISHED_MAX
            || g.finished
                .front()
                .is_some_and(|(t, _)| t.elapsed() > FINISHED_KEEP)
        {
            g.finished.pop_front();
        }
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

    /// Kills every running process (shutdown).
    pub fn kill_all(&self) -> usize {
        let list = self.list();
        for p in &list {
            let _ = p.signal(libc::SIGKILL);
        }
        list.len()
    }
}

/// Go's `ProcessState.String()` wording of a signal.
pub fn signal_name(sig: i32) -> String {
    let s = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        other => return format!("signal {other}"),
    };
    s.to_string()
}

/// The end event of a wait status, worded like envd (Go's `os.ProcessState`).
pub fn end_event_from(status: io::Result<std::process::ExitStatus>) -> EndEvent {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => {
            if let Some(code) = s.code() {
                let status = format!("exit status {code}");
                EndEvent {
                    exit_code: code,
                    exited: true,
                    error: (code != 0).then(|| status.clone()),
                    status,
                }
            } else if let Some(sig) = s.signal() {
                let mut status = format!("signal: {}", signal_name(sig));
                if s.core_dumped() {
                    status.push_str(" (core dumped)");
                }
                EndEvent {
                    exit_code: -1,
                    exited: false,
                    error: Some(status.clone()),
                    status,
                }
            } else {
                EndEvent {
                    exit_code: -1,
                    exited: false,
                    status: format!("{s}"),
                    error: Some(format!("{s}")),
                }
            }
        }
        Err(e) => EndEvent {
            exit_code: -1,
            exited: false,
            status: String::new(),
            error: Some(format!("error waiting for process: {e}")),
        },
    }
}

/// Builds the environment of a process: PATH, the user's HOME/USER/LOGNAME, the sandbox
/// environment, then the per-call variables (later entries win).
pub fn build_env(
    path: Option<&str>,
    user: &User,
    sandbox: &std::collections::BTreeMap<String, String>,
    call: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            path.filter(|p| !p.is_empty())
                .unwrap_or(DEFAULT_PATH)
                .to_string(),
        ),
        ("HOME".into(), user.home.display().to_string()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
    ];
    for (k, v) in sandbox.iter().chain(call.iter()) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

async fn pump_pipe(
    rx: pipe::Receiver,
    kind: OutputKind,
    proc: Arc<Proc>,
    exited: CancellationToken,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            biased;
            r = rx.readable() => {
                if r.is_err() { return; }
                match rx.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => proc.emit(kind, Bytes::copy_from_slice(&buf[..n])).await,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
            }
            _ = exited.cancelled() => break,
        }
    }
    // The process is gone: everything it wrote is in the pipe; take that, but do not wait for
    // children that may still hold the write end. Read the descriptor itself: `try_read` answers
    // WouldBlock from tokio's cached readiness, which may not have seen the last write yet.
    loop {
        match read_raw(rx.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => proc.emit(kind, Bytes::copy_from_slice(&buf[..n])).await,
            _ => return,
        }
    }
}

fn read_raw(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live, writable slice; the descriptor is open for the caller's lifetime.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    read_raw(fd.as_raw_fd(), buf)
}

async fn pump_pty(fd: Arc<AsyncFd<OwnedFd>>, proc: Arc<Proc>, exited: CancellationToken) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            biased;
            g = fd.readable() => {
                let Ok(mut guard) = g else { return };
                match guard.try_io(|inner| read_fd(inner.get_ref(), &mut buf)) {
                    Ok(Ok(0)) => return,
                    Ok(Ok(n)) => proc.emit(OutputKind::Pty, Bytes::copy_from_slice(&buf[..n])).await,
                    // EIO: every slave descriptor is closed.
                    Ok(Err(_)) => return,
                    Err(_would_block) => continue,
                }
            }
            _ = exited.cancelled() => break,
        }
    }
    loop {
        match read_fd(fd.get_ref(), &mut buf) {
            Ok(n) if n > 0 => {
                proc.emit(OutputKind::Pty, Bytes::copy_from_slice(&buf[..n]))
                    .await
            }
            _ => return,
        }
    }
}

/// Starts a process; the returned receiver is subscribed before the process can write anything.
pub fn start(
    state: &Arc<AppState>,
    user: &User,
    req: &StartRequest,
    timeout: Option<Duration>,
) -> Result<(Arc<Proc>, mpsc::Receiver<ProcEvent>), RpcError> {
    let Some(cfg) = req.process.clone() else {
        return Err(RpcError::invalid_argument("process config is required"));
    };
    if cfg.cmd.is_empty() {
        return Err(RpcError::invalid_argument("process cmd is required"));
    }
    let defaults = state.defaults();
    let cwd = crate::paths::expand_and_resolve(
        cfg.cwd.as_deref().unwrap_or(""),
        &user.home,
        defaults.workdir.as_deref(),
    )
    .map_err(|e| RpcError::invalid_argument(e.to_string()))?;
    if std::fs::metadata(&cwd).is_err() {
        return Err(RpcError::invalid_argument(format!(
            "cwd '{}' does not exist",
            cwd.display()
        )));
    }
    let switch = if user.uid != users::euid() {
        if users::euid() != 0 {
            return Err(RpcError::new(
                Code::PermissionDenied,
                format!(
                    "cannot run as user '{}': the daemon runs as uid {} and can only run commands as itself",
                    user.name,
                    users::euid()
                ),
            ));
        }
        Some((
            user.uid,
            user.gid,
            user.groups
                .iter()
                .map(|g| *g as libc::gid_t)
                .collect::<Vec<_>>(),
        ))
    } else {
        None
    };

    let path_env = std::env::var("PATH").ok();
    let env = build_env(path_env.as_deref(), user, &defaults.envs, &cfg.envs);
    let mut cmd = tokio::process::Command::new(&cfg.cmd);
    cmd.args(&cfg.args).env_clear().envs(env).current_dir(&cwd);

    let pty_size = req.pty.map(|p| p.size.unwrap_or_default());
    let internal = |what: &str, e: io::Error| {
        RpcError::internal(format!(
            "error creating {what} for command '{}': {e}",
            cfg.cmd
        ))
    };
    let mut pty_master = None;
    let mut pipes = None;
    let mut stdin_writer = None;
    if let Some(size) = pty_size {
        let clamp = |v: u32| {
            if v == 0 {
                None
            } else {
                Some(v.min(u16::MAX as u32) as u16)
            }
        };
        let pair = crate::pty::open(
            clamp(size.cols).unwrap_or(80),
            clamp(size.rows).unwrap_or(24),
        )
        .map_err(|e| internal("pty", e))?;
        let s = |fd: &OwnedFd| {
            fd.try_clone()
                .map(Stdio::from)
                .map_err(|e| internal("pty", e))
        };
        cmd.stdin(s(&pair.slave)?)
            .stdout(s(&pair.slave)?)
            .stderr(s(&pair.slave)?);
        pty_master = Some(pair.master);
    } else {
        let (out_r, out_w) = crate::pty::pipe().map_err(|e| internal("stdout pipe", e))?;
        let (err_r, err_w) = crate::pty::pipe().map_err(|e| internal("stderr pipe", e))?;
        cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        if req.stdin.unwrap_or(true) {
            let (in_r, in_w) = crate::pty::pipe().map_err(|e| internal("stdin pipe", e))?;
            cmd.stdin(Stdio::from(in_r));
            stdin_writer = Some(in_w);
        } else {
            cmd.stdin(Stdio::null());
        }
        pipes = Some((out_r, err_r));
    }
    let is_pty = pty_master.is_some();
    // SAFETY: the closure only makes async-signal-safe system calls and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if is_pty {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::setpgid(0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &switch
                && (libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(cmd); // closes the child's ends of the pipes / the PTY slave in this process
    let mut child = child.map_err(|e| {
        let cmdline = std::iter::once(cfg.cmd.as_str())
            .chain(cfg.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        RpcError::invalid_argument(format!("error starting process '{cmdline}': {e}"))
    })?;
    let pid = child.id().unwrap_or(0);

    let stdin = match stdin_writer {
        Some(w) => Some(pipe::Sender::from_owned_fd(w).map_err(|e| internal("stdin pipe", e))?),
        None => None,
    };
    let pty = match pty_master {
        Some(m) => Some(Arc::new(
            crate::pty::async_fd(m).map_err(|e| internal("pty", e))?,
        )),
        None => None,
    };
    let mut config = cfg.clone();
    config.cwd = Some(cwd.display().to_string());
    let proc = Arc::new(Proc {
        pid,
        config,
        tag: req.tag.clone(),
        pty: pty.clone(),
        stdin: tokio::sync::Mutex::new(stdin),
        subs: Mutex::new(Subscribers::default()),
    });
    let rx = proc.subscribe();
    state.processes.insert(proc.clone());
    state.metrics.processes_started.inc();
    state.metrics.processes_running.inc();
    tracing::info!(pid, user = %user.name, cmd = %cfg.cmd, pty = is_pty, cwd = %cwd.display(), "process started");

    let exited = CancellationToken::new();
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    if let Some((out_r, err_r)) = pipes {
        for (fd, kind) in [(out_r, OutputKind::Stdout), (err_r, OutputKind::Stderr)] {
            match pipe::Receiver::from_owned_fd(fd) {
                Ok(r) => readers.push(tokio::spawn(pump_pipe(
                    r,
                    kind,
                    proc.clone(),
                    exited.clone(),
                ))),
                Err(e) => tracing::error!(pid, error = %e, "cannot read process output"),
            }
        }
    }
    if let Some(fd) = pty {
        readers.push(tokio::spawn(pump_pty(fd, proc.clone(), exited.clone())));
    }

    if let Some(t) = timeout {
        let p = proc.clone();
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            if !p.is_finished() {
                tracing::info!(
                    pid = p.pid,
                    timeout_ms = t.as_millis() as u64,
                    "process reached its timeout; killing it"
                );
                let _ = p.signal(libc::SIGKILL);
            }
        });
    }

    let st = state.clone();
    let p = proc.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        exited.cancel();
        for r in readers {
            let _ = r.await;
        }
        let end = end_event_from(status);
        tracing::info!(pid = p.pid, status = %end.status, "process ended");
        p.finish(end).await;
        st.processes.mark_finished(p.pid);
        st.metrics.processes_running.dec();
    });
    Ok((proc, rx))
}

/// Streams a process's events: start, data…, end, then the end-stream envelope.
async fn drive_stream(
    state: Arc<AppState>,
    sender: StreamSender,
    pid: u32,
    mut rx: mpsc::Receiver<ProcEvent>,
    keepalive: Duration,
    deadline: Option<tokio::time::Instant>,
) {
    let _open = GaugeGuard::new(&state.metrics.streams_open);
    if sender.send(&proto::start_event(pid)).await.is_err() {
        return;
    }
    let mut ka = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
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
                sender.finish(Some(&RpcError::new(Code::DeadlineExceeded, "the operation timed out (connect-timeout-ms)"))).await;
                return;
            }
            _ = sender.closed() => return,
        }
    }
}

/// The first message of a server-stream request body.
fn first_message(headers: &HeaderMap, body: &[u8]) -> Result<Bytes, RpcError> {
    let gz = connect::request_encoding(headers, connect::Framing::Stream)?;
    let mut dec = connect::EnvelopeDecoder::default();
    dec.push(body);
    let env = dec.next_envelope()?.ok_or_else(|| {
        RpcError::invalid_argument("protocol error: request body holds no message")
    })?;
    if env.flags & connect::FLAG_COMPRESSED != 0 {
        if !gz {
            return Err(RpcError::invalid_argument(
                "protocol error: compressed message without connect-content-encoding",
            ));
        }
        return connect::gunzip(&env.payload);
    }
    Ok(env.payload)
}

/// `Start` (server stream).
pub fn start_rpc(
    state: &Arc<AppState>,
    user: Result<User, RpcError>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<BoxBody> {
    let result = (|| {
        let timeout = connect::parse_timeout(headers)?;
        let req: StartRequest = connect::decode(&first_message(headers, body)?)?;
        let user = user?;
        let (proc, rx) = start(state, &user, &req, timeout)?;
        Ok::<_, RpcError>((proc, rx, timeout))
    })();
    match result {
        Err(e) => connect::stream_error(&e),
        Ok((proc, rx, timeout)) => {
            let (sender, resp) = StreamSender::new();
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            tokio::spawn(drive_stream(
                state.clone(),
                sender,
                proc.pid,
                rx,
                connect::keepalive_interval(headers),
                deadline,
            ));
            resp
        }
    }
}

/// `Connect` (server stream): reattach to a running or recently finished process.
pub fn connect_rpc(state: &Arc<AppState>, headers: &HeaderMap, body: &[u8]) -> Response<BoxBody> {
    let result = (|| {
        let timeout = connect::parse_timeout(headers)?;
        let req: SelectorRequest = connect::decode(&first_message(headers, body)?)?;
        let proc = state.processes.any(req.process.as_ref())?;
        Ok::<_, RpcError>((proc, timeout))
    })();
    match result {
        Err(e) => connect::stream_error(&e),
        Ok((proc, timeout)) => {
            let rx = proc.subscribe();
            let (sender, resp) = StreamSender::new();
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            tokio::spawn(drive_stream(
                state.clone(),
                sender,
                proc.pid,
                rx,
                connect::keepalive_interval(headers),
                deadline,
            ));
            resp
        }
    }
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

/// `StreamInput` (client stream): a start selector, then input chunks until the body ends.
pub async fn stream_input(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    mut body: Incoming,
) -> Response<BoxBody> {
    let result: Result<(), RpcError> = async {
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
                if env.flags & connect::FLAG_END_STREAM != 0 {
                    continue;
                }
                let payload = if env.flags & connect::FLAG_COMPRESSED != 0 && gz {
                    connect::gunzip(&env.payload)?
                } else {
                    env.payload
                };
                let msg: StreamInputRequest = connect::decode(&payload)?;
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
                    return Err(RpcError::new(Code::Unimplemented, "invalid event type"));
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
    .await;
    match result {
        Ok(()) => connect::stream_single(&json!({})),
        Err(e) => connect::stream_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn end_events_like_go() {
        use std::os::unix::process::ExitStatusExt;
        let ok = end_event_from(Ok(std::process::ExitStatus::from_raw(0)));
        assert_eq!(
            ok,
            EndEvent {
                exit_code: 0,
                exited: true,
                status: "exit status 0".into(),
                error: None
            }
        );
        let one = end_event_from(Ok(std::process::ExitStatus::from_raw(1 << 8)));
        assert_eq!(one.exit_code, 1);
        assert_eq!(one.error.as_deref(), Some("exit status 1"));
        let killed = end_event_from(Ok(std::process::ExitStatus::from_raw(9)));
        assert_eq!(
            killed,
            EndEvent {
                exit_code: -1,
                exited: false,
                status: "signal: killed".into(),
                error: Some("signal: killed".into())
            }
        );
        let core = end_event_from(Ok(std::process::ExitStatus::from_raw(11 | 0x80)));
        assert_eq!(core.status, "signal: segmentation fault (core dumped)");
        assert_eq!(signal_name(15), "terminated");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn env_precedence() {
        let user = User {
            name: "u".into(),
            uid: 1,
            gid: 1,
            home: "/home/u".into(),
            groups: vec![1],
        };
        let mut sandbox = BTreeMap::new();
        sandbox.insert("E2B_SANDBOX".to_string(), "true".to_string());
        sandbox.insert("HOME".to_string(), "/override".to_string());
        sandbox.insert("A".to_string(), "sandbox".to_string());
        let mut call = BTreeMap::new();
        call.insert("A".to_string(), "call".to_string());
        let env: HashMap<_, _> = build_env(Some("/bin"), &user, &sandbox, &call)
            .into_iter()
            .collect();
        assert_eq!(env["PATH"], "/bin");
        assert_eq!(env["USER"], "u");
        assert_eq!(env["LOGNAME"], "u");
        assert_eq!(env["HOME"], "/override");
        assert_eq!(env["A"], "call");
        assert_eq!(env["E2B_SANDBOX"], "true");
        let env: HashMap<_, _> = build_env(None, &user, &BTreeMap::new(), &BTreeMap::new())
            .into_iter()
            .collect();
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["HOME"], "/home/u");
    }
}
