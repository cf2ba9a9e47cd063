//! `agent-runtime install DIR` and `agent-runtime start`: how the daemon gets into a sandbox
//! image that does not ship it. An init container runs `install` to copy the binary into a
//! shared volume; the main container's postStart hook runs `start`, which launches the daemon
//! detached (own process group, output to a log file) and returns once it accepts connections,
//! so the container counts as started only with a working daemon.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The dynamic-mount CLI, installed beside the daemon when the image has it next to it
/// (`/mnt/envd/sandbox-runtime-storage`, which the control plane runs for CSI mounts).
pub const STORAGE_CLI: &str = "sandbox-runtime-storage";

/// Copies the running executable to `dir/agent-runtime` (mode 0755), and the storage CLI beside
/// it when there is one, each through a temporary name so a concurrent reader never sees half a
/// binary.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let dest = dir.join("agent-runtime");
    copy_executable(&exe, &dest)?;
    if let Some(cli) = exe
        .parent()
        .map(|d| d.join(STORAGE_CLI))
        .filter(|p| p.is_file())
    {
        copy_executable(&cli, &dir.join(STORAGE_CLI))?;
    }
    Ok(dest)
}

fn copy_executable(from: &Path, to: &Path) -> io::Result<()> {
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("binary");
    let tmp = to.with_file_name(format!(".{name}.tmp"));
    fs::copy(from, &tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, to)
}

/// Starts this executable again as the daemon with `args` (the flags given before `start`),
/// detached, and waits until `probe` accepts a TCP connection. Fails if the daemon exits first
/// or does not listen within `wait`.
pub fn start(
    args: &[String],
    probe: SocketAddr,
    log_file: &Path,
    wait: Duration,
) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let probe = loopback_for(probe);
    // Whatever answers there now is not the daemon about to start.
    if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("something already listens on {probe}"),
        ));
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the daemon exited with {status} before it listened (log: {})",
                log_file.display()
            )));
        }
        if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the daemon did not listen on {probe} within {wait:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A wildcard listen address is probed on loopback.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// The command line without the `start` subcommand and its own flags: what the daemon runs with.
pub fn daemon_args(argv: &[String]) -> Vec<String> {
    match argv.iter().position(|a| a == "start") {
        Some(i) => argv[1..i].to_vec(),
        None => argv.iter().skip(1).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_args_drop_the_subcommand() {
        let argv: Vec<String> = [
            "agent-runtime",
            "--listen",
            "127.0.0.1:1",
            "start",
            "--log-file",
            "x",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(daemon_args(&argv), vec!["--listen", "127.0.0.1:1"]);
    }

    #[test]
    fn wildcard_is_probed_on_loopback() {
        assert_eq!(
            loopback_for("0.0.0.0:49983".parse().unwrap()),
            "127.0.0.1:49983".parse().unwrap()
        );
        assert_eq!(
            loopback_for("[::]:1".parse().unwrap()),
            "[::1]:1".parse().unwrap()
        );
    }

    #[test]
    fn install_copies_an_executable() {
        let dir = tempfile::tempdir().unwrap();
        let dest = install(&dir.path().join("bin")).unwrap();
        let mode = fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::metadata(&dest).unwrap().len(),
            fs::metadata(std::env::current_exe().unwrap())
                .unwrap()
                .len()
        );
    }
}
