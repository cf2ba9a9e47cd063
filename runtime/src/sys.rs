//! The daemon's system calls that need `unsafe`, each behind a safe function: pseudo-terminals
//! (close-on-exec from the start, so concurrently spawned commands never inherit another
//! command's terminal) and window sizes, pipes, raw reads and writes, signals, the child's
//! set-up between fork and exec, the open-file limit, extended attributes, file-system
//! statistics, inotify, and the user and group databases. No other module has `unsafe`.

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

/// A path as a C string (a path with a NUL byte is an invalid input).
pub fn cpath(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `listxattr`: the names of a file's extended attributes into `buf` (NUL-separated).
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes; path is NUL-terminated.
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `getxattr`: the value of one extended attribute into `buf`.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes; both strings are NUL-terminated.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `setxattr` (create or replace).
pub fn setxattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: value pointer/length describe a live slice; both strings are NUL-terminated.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(rc).map(drop)
}

/// `removexattr`.
pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// Space of the file system holding `path`: (used, total) bytes.
pub fn disk_usage(path: &CStr) -> io::Result<(u64, u64)> {
    // SAFETY: statvfs is plain old data; zeroed is a valid bit pattern.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `s` is valid for writes.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut s) })?;
    let frsize = s.f_frsize as u64;
    let total = s.f_blocks as u64 * frsize;
    let used = (s.f_blocks as u64).saturating_sub(s.f_bfree as u64) * frsize;
    Ok((used, total))
}

/// The file-system type magic (`statfs.f_type`) of the file system holding `path`.
pub fn fs_magic(path: &CStr) -> io::Result<u64> {
    // SAFETY: statfs is plain old data; zeroed is a valid bit pattern.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `s` is valid for writes.
    check(unsafe { libc::statfs(path.as_ptr(), &mut s) })?;
    #[allow(clippy::unnecessary_cast)]
    Ok(s.f_type as i64 as u32 as u64)
}

/// A new non-blocking, close-on-exec inotify instance.
pub fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 has no memory-safety preconditions.
    let raw = check(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Adds a watch on `path` to an inotify instance; returns the watch descriptor.
pub fn inotify_add_watch(fd: RawFd, path: &CStr, mask: u32) -> io::Result<i32> {
    // SAFETY: the path is NUL-terminated; the caller keeps `fd` open for the call.
    check(unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) })
}

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective gid of this process.
pub fn getegid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
}

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

/// A passwd entry by name (`Ok`) or uid (`Err`).
pub fn getpw(by: Result<&CStr, u32>) -> Option<PasswdEntry> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `passwd` is plain old data; zeroed is a valid bit pattern.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live, correctly sized storage for the call's duration.
        let rc = unsafe {
            match by {
                Ok(name) => libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
                Err(uid) => libc::getpwuid_r(
                    uid,
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
            }
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success the strings point into `buf`, which is alive here.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
                std::path::PathBuf::from(CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned()),
            )
        };
        return Some(PasswdEntry {
            name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        });
    }
}

/// The groups of a user (its primary `gid` first if the database omits it).
pub fn group_list(name: &CStr, gid: u32) -> Vec<u32> {
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries; getgrouplist updates `count`.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            if !groups.contains(&gid) {
                groups.insert(0, gid);
            }
            return groups;
        }
        if count <= n || n > 65_536 {
            return vec![gid];
        }
        n = count;
    }
}

/// The name of a group, if the database has it.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `group` is plain old data; zeroed is a valid bit pattern.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: pointers refer to live storage of the given sizes.
        let rc = unsafe {
            libc::getgrgid_r(
                gid,
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success gr_name points into `buf`, which is alive here.
        return Some(
            unsafe { CStr::from_ptr(grp.gr_name) }
                .to_string_lossy()
                .into_owned(),
        );
    }
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
