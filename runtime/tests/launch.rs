//! `agent-runtime install DIR` and `agent-runtime start`: the two steps of the controller chart's
//! default agent-runtime injection (an init container installs the binary into a shared volume;
//! the main container's postStart hook starts it), run as the real binary.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The daemon's pid, from the process table (it runs detached from `start`).
fn daemon_pid(addr: SocketAddr) -> Option<i32> {
    let needle = format!("--listen {addr}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains(&needle) && !cmd.contains(" start")).then_some(pid)
    })
}

#[test]
fn install_then_start_serves_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("mnt");
    let out = Command::new(env!("CARGO_BIN_EXE_agent-runtime"))
        .arg("install")
        .arg(&bin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = bin_dir.join("agent-runtime");
    assert!(installed.exists());

    let addr = free_addr();
    let log = dir.path().join("runtime.log");
    let out = Command::new(&installed)
        .args(["--listen", &addr.to_string(), "--default-workdir"])
        .arg(dir.path())
        .args(["start", "--log-file"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `start` returned, so the daemon listens now (no waiting here).
    let pid = daemon_pid(addr).expect("the daemon runs on after start returned");
    let reachable = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok();
    let _ = Command::new("kill").arg(pid.to_string()).status();
    assert!(reachable, "the daemon accepts connections");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("agent-runtime serving")
    );
}

#[test]
fn start_fails_when_the_daemon_cannot_listen() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent-runtime"))
        .args([
            "--listen",
            &addr.to_string(),
            "start",
            "--wait-seconds",
            "10",
            "--log-file",
        ])
        .arg(dir.path().join("log"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already listens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
