//! Child processes that never outlive the test process.
//!
//! Every child is started with `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel kills it when its parent
//! dies, even on `kill -9` of the test binary. The kernel ties that signal to the *thread* that
//! forked the child, not to the process: a child forked from a test thread or a tokio worker would
//! be killed as soon as that thread ends, which is wrong for a cluster shared by many tests. So all
//! children are forked by one spawner thread that lives as long as the process.
//!
//! Each child also gets a process group of its own (`setpgid(0, 0)`), so killing it kills what it
//! started too, and exits can be awaited without polling through a pidfd.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

type SpawnReply = mpsc::Sender<io::Result<Child>>;

fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("kube-harness-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop runs until the process exits.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the kube-harness spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` from the long-lived spawner thread, with the parent-death signal set and in a
/// new process group.
pub fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (prctl, getppid, setpgid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited while starting the child"));
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Sends `signal` to the process group led by `pid` (which is the child's pid).
pub fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: plain syscall; a stale group id at worst hits nothing (ESRCH).
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// A pidfd for `pid`, readable once the process exits (Linux 5.3+).
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A running child (with its process group) whose output goes to a log file. Killed with
/// SIGKILL (the whole group) and reaped on drop.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl ManagedChild {
    /// Starts `cmd` with stdin closed and stdout/stderr appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> io::Result<ManagedChild> {
        let log = File::options().create(true).append(true).open(log_path)?;
        let log2 = log.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = spawn_tied(cmd)?;
        Ok(ManagedChild {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process printed so far (lossy UTF-8).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has ended. Before reaping the leader, whatever is left of
    /// its process group is killed (while the group id cannot yet be reused).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        // SAFETY: an all-zero siginfo_t is a valid value; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own, not yet reaped child; WNOWAIT leaves it waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (or left it zeroed when nothing has exited).
        let exited = r == 0 && unsafe { info.si_pid() } != 0;
        if exited || r != 0 {
            signal_group(self.pid(), libc::SIGKILL);
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits asynchronously for the process to exit. Uses a pidfd when the kernel has them and
    /// falls back to polling.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (open, same descriptor)
        // until it is dropped.
        let registered = pidfd_open(self.pid()).ok().and_then(|fd| unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
        });
        if let Some(afd) = registered {
            loop {
                if let Some(s) = self.try_wait() {
                    return s;
                }
                match afd.readable().await {
                    Ok(mut guard) => {
                        if let Some(s) = self.try_wait() {
                            return s;
                        }
                        // Readable but not yet reapable should not happen; avoid a busy loop.
                        guard.clear_ready();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => break,
                }
            }
        }
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` to the process group (no-op after exit).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.try_wait().is_none() {
            signal_group(self.pid(), signal);
        }
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(s) => s,
            Err(_) => self.kill_now(),
        }
    }

    /// SIGKILL to the group and reap, blocking (the kill makes the wait short).
    pub fn kill_now(&mut self) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        signal_group(self.pid(), libc::SIGKILL);
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait for a killed child");
        self.exited = Some(s);
        s
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.kill_now();
        }
    }
}
