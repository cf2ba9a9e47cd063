//! The daemon's system calls that need `unsafe`, each behind a safe function: pseudo-terminals
//! (close-on-exec from the start, so concurrently spawned commands never inherit another
//! command's terminal) and window sizes, pipes, raw reads and writes, signals, the child's
//! set-up between fork and exec, and the open-file limit.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Master and slave ends of a new pseudo-terminal.
#[derive(Debug)]
pub struct PtyPair {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pseudo-terminal of the given size; the master is non-blocking.
pub fn open(cols: u16, rows: u16) -> io::Result<PtyPair> {
    // SAFETY: plain libc calls on descriptors this function owns.
    unsafe {
        let m = check(libc::posix_openpt(
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        let master = OwnedFd::from_raw_fd(m);
        check(libc::grantpt(m))?;
        check(libc::unlockpt(m))?;
        let mut name = [0 as libc::c_char; 128];
        let rc = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let s = check(libc::open(
            CStr::from_ptr(name.as_ptr()).as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        let slave = OwnedFd::from_raw_fd(s);
        resize(master.as_raw_fd(), cols, rows)?;
        set_nonblocking(m)?;
        Ok(PtyPair { master, slave })
    }
}

/// Sets the window size (the kernel sends SIGWINCH to the foreground process group).
pub fn resize(fd: RawFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` lives for the duration of the ioctl.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// Reads the window size (cols, rows).
pub fn size(fd: RawFd) -> io::Result<(u16, u16)> {
    // SAFETY: winsize is plain old data, filled by the ioctl.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: `ws` is valid for writes.
    check(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) })?;
    Ok((ws.ws_col, ws.ws_row))
}

/// Puts a descriptor into non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor owned by the caller.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Registers an owned descriptor with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` stays open and keeps returning the same descriptor until it is dropped,
    // which only happens when the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Creates a pipe whose both ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads from a raw descriptor (no readiness cache in between).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live, writable slice; the caller keeps the descriptor open for the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes to a raw descriptor.
pub fn write(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is a live slice; the caller keeps the descriptor open for the call.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends a signal to a process (`pid > 0`) or a process group (`pid < 0`).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sets the file mode creation mask of the daemon.
pub fn set_umask(mask: libc::mode_t) {
    // SAFETY: umask has no memory-safety preconditions.
    unsafe { libc::umask(mask) };
}

/// How a child is set up between fork and exec.
#[derive(Debug, Clone)]
pub struct ChildSetup {
    /// Lead a new session with the PTY slave (stdin) as the controlling terminal; otherwise
    /// lead a new process group, so that signals reach every process the command starts.
    pub pty: bool,
    /// Switch to this uid, gid and supplementary groups.
    pub identity: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// The open-file limit the daemon started with, restored for the child (the daemon raises
    /// its own soft limit, as Go programs like envd do, and children get the original back).
    pub nofile: Option<libc::rlimit>,
}

/// Installs `setup` to run in the child between fork and exec.
pub fn pre_exec(cmd: &mut tokio::process::Command, setup: ChildSetup) {
    // SAFETY: the closure only makes async-signal-safe system calls (setsid, ioctl, setpgid,
    // setrlimit, setgroups, setgid, setuid) on data captured before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if setup.pty {
                check(libc::setsid())?;
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            } else {
                check(libc::setpgid(0, 0))?;
            }
            if let Some(lim) = &setup.nofile {
                check(libc::setrlimit(libc::RLIMIT_NOFILE, lim))?;
            }
            if let Some((uid, gid, groups)) = &setup.identity {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setgid(*gid))?;
                check(libc::setuid(*uid))?;
            }
            Ok(())
        });
    }
}

/// The current open-file limit (soft, hard).
pub fn nofile_limit() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is valid for writes.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok(lim)
}

/// Raises the soft open-file limit to the hard one and returns the limit as it was before.
pub fn raise_nofile_limit() -> io::Result<libc::rlimit> {
    let before = nofile_limit()?;
    if before.rlim_cur < before.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: before.rlim_max,
            rlim_max: before.rlim_max,
        };
        // SAFETY: raised is a valid rlimit for the call.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
    }
    Ok(before)
}

/// The number of descriptors this process has open.
pub fn open_fd_count() -> io::Result<usize> {
    // `/proc/self/fd` lists one entry per descriptor (the directory handle itself is one more).
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_resize() {
        let p = open(80, 24).unwrap();
        assert_eq!(size(p.master.as_raw_fd()).unwrap(), (80, 24));
        resize(p.master.as_raw_fd(), 120, 50).unwrap();
        assert_eq!(size(p.slave.as_raw_fd()).unwrap(), (120, 50));
    }
}
