//! Starting a command: its environment, pipes or PTY, identity, process group, and the tasks
//! that pump its output to subscribers and record its end.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Proc, ProcEvent, Stdin, Subscribers, Terminal};
use crate::connect::{Code, RpcError};
use crate::proto::{EndEvent, OutputKind, StartRequest};
use crate::state::AppState;
use crate::users::{self, User};

/// Output chunk size (envd uses 32 KiB for pipes and 16 KiB for PTYs).
const CHUNK: usize = 32 << 10;

/// Fallback `PATH` when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
        match crate::sys::read(rx.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => proc.emit(kind, Bytes::copy_from_slice(&buf[..n])).await,
            _ => return,
        }
    }
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    crate::sys::read(fd.as_raw_fd(), buf)
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

/// Descriptors a started process keeps open in the daemon (stdout, stderr, stdin) at most.
const FDS_PER_PROCESS: u64 = 3;

/// Starts a process; the returned receiver is subscribed before the process can write anything.
/// The process is killed at `deadline` (the call's `connect-timeout-ms`) if it still runs.
pub fn start(
    state: &Arc<AppState>,
    user: &User,
    req: &StartRequest,
    deadline: Option<tokio::time::Instant>,
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
    state.fds.admit(FDS_PER_PROCESS, "start a process")?;
    let identity = if user.uid != users::euid() {
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
        let pair = crate::sys::open(
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
        let (out_r, out_w) = crate::sys::pipe().map_err(|e| internal("stdout pipe", e))?;
        let (err_r, err_w) = crate::sys::pipe().map_err(|e| internal("stderr pipe", e))?;
        cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        if req.stdin.unwrap_or(true) {
            let (in_r, in_w) = crate::sys::pipe().map_err(|e| internal("stdin pipe", e))?;
            cmd.stdin(Stdio::from(in_r));
            stdin_writer = Some(in_w);
        } else {
            cmd.stdin(Stdio::null());
        }
        pipes = Some((out_r, err_r));
    }
    crate::sys::pre_exec(
        &mut cmd,
        crate::sys::ChildSetup {
            pty: pty_master.is_some(),
            identity,
            nofile: state.fds.child_limit,
        },
    );
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
            crate::sys::async_fd(m).map_err(|e| internal("pty", e))?,
        )),
        None => None,
    };
    let mut config = cfg.clone();
    config.cwd = Some(cwd.display().to_string());
    let is_pty = pty.is_some();
    let proc = Arc::new(Proc {
        pid,
        config,
        tag: req.tag.clone(),
        terminal: if is_pty {
            Terminal::Pty
        } else {
            Terminal::Pipes
        },
        pty: Mutex::new(pty.clone()),
        stdin: Stdin::new(stdin),
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

    if let Some(deadline) = deadline {
        let (p, exited) = (proc.clone(), exited.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = exited.cancelled() => return,
            }
            if !p.is_finished() {
                tracing::info!(pid = p.pid, "process reached its timeout; killing it");
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

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
