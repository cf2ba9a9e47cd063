//! The manager's system calls that need `unsafe`, each behind a safe function: signals, the
//! parent-death signal of sandbox processes, and the name of the user the manager runs as.

use std::ffi::CStr;
use std::io;

/// Sends `sig` to a process (`pid > 0`) or a process group (`pid < 0`).
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the child receive SIGKILL when the manager's thread that spawned it exits, so a
/// crashed manager leaves no sandbox process behind. Spawns happen on tokio worker threads,
/// which live as long as the manager.
pub fn kill_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl and getppid are async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
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
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(io::Error::other(
                    "the manager exited while starting a sandbox",
                ));
            }
            Ok(())
        });
    }
}

/// The name of the user the manager runs as (from the passwd database, else `$USER`).
pub fn current_user_name() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: passwd is plain old data, filled by getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pwd's strings.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: getpwuid_r set pw_name to a NUL-terminated string inside buf.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        if let Ok(s) = name.to_str() {
            return s.to_string();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_name_and_signals() {
        assert!(!current_user_name().is_empty());
        assert!(kill(std::process::id() as i32, 0).is_ok());
        assert!(kill(i32::MAX, 0).is_err());
    }
}
