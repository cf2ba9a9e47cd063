//! Keeping a local sandbox's processes together so they can be frozen, thawed and killed as one:
//! a cgroup v2 per sandbox where the cgroup tree is writable (freeze with `cgroup.freeze`, kill
//! with `cgroup.kill`), else the process tree (the runtime, its descendants, and every process
//! carrying the sandbox's marker variable) stopped with SIGSTOP, resumed with SIGCONT, killed
//! with SIGKILL, repeated until no new process appears.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable every process of a local sandbox carries (its value is the
/// sandbox's marker), so processes that left the runtime's tree are still found.
pub const MARKER_VAR: &str = "KRUISE_LOCAL_SANDBOX";

/// How the sandboxes of this manager are contained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Containment {
    /// A cgroup v2 directory under which each sandbox gets its own cgroup.
    Cgroup(PathBuf),
    ProcessTree,
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

impl Containment {
    /// A cgroup named `name` under this process's own cgroup when that can be created and
    /// supports freezing, else the process tree.
    pub fn detect(name: &str) -> Containment {
        let Some(mount) = cgroup2_mount() else {
            return Containment::ProcessTree;
        };
        let own = own_cgroup().unwrap_or_else(|| "/".into());
        let base = mount.join(own.trim_start_matches('/')).join(name);
        match std::fs::create_dir_all(&base) {
            Ok(()) if base.join("cgroup.freeze").exists() || has_freeze_in_children(&base) => {
                Containment::Cgroup(base)
            }
            Ok(()) => Containment::ProcessTree,
            Err(e) => {
                tracing::info!(path = %base.display(), error = %e, "cgroup v2 not writable; sandboxes are contained by process tree (SIGSTOP/SIGCONT)");
                Containment::ProcessTree
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup(p) => format!("cgroup v2 at {}", p.display()),
            Containment::ProcessTree => "process tree (SIGSTOP/SIGCONT)".into(),
        }
    }

    /// The cgroup of one sandbox, created.
    pub fn enter(&self, sandbox: &str, pid: u32) -> std::io::Result<Option<PathBuf>> {
        let Containment::Cgroup(base) = self else {
            return Ok(None);
        };
        let cg = base.join(sandbox);
        std::fs::create_dir_all(&cg)?;
        std::fs::write(cg.join("cgroup.procs"), pid.to_string())?;
        Ok(Some(cg))
    }
}

/// A child cgroup of `base` has `cgroup.freeze` (the base itself may be the root, which has
/// none).
fn has_freeze_in_children(base: &Path) -> bool {
    let probe = base.join(".probe");
    let ok = std::fs::create_dir(&probe).is_ok() && probe.join("cgroup.freeze").exists();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// One process as `/proc` shows it.
#[derive(Clone, Debug)]
struct ProcInfo {
    ppid: u32,
    session: u32,
}

fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(ProcInfo {
        ppid: f.get(1)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
    })
}

fn has_marker(pid: u32, marker: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{MARKER_VAR}={marker}");
    env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes of a sandbox whose runtime is `root` (0 if it is gone): its descendants, the
/// members of its session, and every process with the sandbox's marker.
pub fn members(root: u32, marker: &str) -> HashSet<u32> {
    let me = std::process::id();
    let infos: HashMap<u32, ProcInfo> = all_pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter_map(|p| proc_info(p).map(|i| (p, i)))
        .collect();
    let mut out: HashSet<u32> = HashSet::new();
    if root != 0 && infos.contains_key(&root) {
        out.insert(root);
    }
    for (pid, info) in &infos {
        if (root != 0 && info.session == root) || has_marker(*pid, marker) {
            out.insert(*pid);
        }
    }
    // Close over descendants.
    loop {
        let before = out.len();
        for (pid, info) in &infos {
            if out.contains(&info.ppid) {
                out.insert(*pid);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Signals every member until a scan finds no new one (processes forking meanwhile are caught
/// by the next round).
fn signal_members(root: u32, marker: &str, sig: libc::c_int) -> usize {
    let mut done: HashSet<u32> = HashSet::new();
    for _ in 0..20 {
        let now = members(root, marker);
        let fresh: Vec<u32> = now.difference(&done).copied().collect();
        if fresh.is_empty() {
            break;
        }
        for p in fresh {
            let _ = crate::sys::kill(p as i32, sig);
            done.insert(p);
        }
    }
    done.len()
}

/// Freezes a sandbox.
pub async fn freeze(cgroup: Option<&Path>, root: u32, marker: &str) -> std::io::Result<()> {
    match cgroup {
        Some(cg) => {
            std::fs::write(cg.join("cgroup.freeze"), "1")?;
            wait_event(cg, "frozen 1").await;
            Ok(())
        }
        None => {
            signal_members(root, marker, libc::SIGSTOP);
            // A signal is delivered asynchronously: wait until every member has stopped.
            settle(root, marker, |state| state == 'T' || state == 't').await;
            Ok(())
        }
    }
}

/// The scheduler state letter of a process (`/proc/<pid>/stat`), `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Waits (up to 2 s) until every member's state satisfies `done` (or it is gone or a zombie).
async fn settle(root: u32, marker: &str, done: impl Fn(char) -> bool) {
    for _ in 0..400 {
        let pending = members(root, marker)
            .into_iter()
            .filter(|p| proc_state(*p).is_some_and(|s| s != 'Z' && !done(s)))
            .count();
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!(
        marker,
        "sandbox processes did not all reach the expected state in 2 s"
    );
}

/// Thaws a frozen sandbox.
pub async fn thaw(cgroup: Option<&Path>, root: u32, marker: &str) -> std::io::Result<()> {
    match cgroup {
        Some(cg) => {
            std::fs::write(cg.join("cgroup.freeze"), "0")?;
            wait_event(cg, "frozen 0").await;
            Ok(())
        }
        None => {
            signal_members(root, marker, libc::SIGCONT);
            settle(root, marker, |state| state != 'T').await;
            Ok(())
        }
    }
}

/// Kills every process of a sandbox and removes its cgroup.
pub async fn kill(cgroup: Option<&Path>, root: u32, marker: &str) {
    if let Some(cg) = cgroup.filter(|cg| cg.exists()) {
        if std::fs::write(cg.join("cgroup.kill"), "1").is_err() {
            // Kernels before 5.14: signal each member; thaw so the kill is delivered.
            let _ = std::fs::write(cg.join("cgroup.freeze"), "0");
            if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                for p in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    let _ = crate::sys::kill(p, libc::SIGKILL);
                }
            }
        }
        wait_event(cg, "populated 0").await;
        let _ = std::fs::remove_dir(cg);
    }
    // Processes that left the cgroup (none can, without privileges) or a process-tree sandbox.
    signal_members(root, marker, libc::SIGCONT);
    signal_members(root, marker, libc::SIGKILL);
}

/// Waits (up to 2 s) until `cgroup.events` holds `line`.
async fn wait_event(cg: &Path, line: &str) {
    for _ in 0..400 {
        match std::fs::read_to_string(cg.join("cgroup.events")) {
            Ok(s) if s.lines().any(|l| l == line) => return,
            Err(_) => return,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    tracing::warn!(cgroup = %cg.display(), want = line, "cgroup did not reach the expected state in 2 s");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kills what a test started, even when an assertion failed first.
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in members(0, &self.0) {
                let _ = crate::sys::kill(p as i32, libc::SIGCONT);
                let _ = crate::sys::kill(p as i32, libc::SIGKILL);
            }
        }
    }

    fn state(p: u32) -> char {
        proc_state(p).unwrap_or('?')
    }

    #[tokio::test]
    async fn process_tree_members_freeze_thaw_and_kill() {
        let marker = format!("test-{}", crate::model::random_alnum(8));
        let _cleanup = Cleanup(marker.clone());
        // A shell in its own session with two children.
        let mut child = std::process::Command::new("setsid")
            .args(["sh", "-c", "sleep 60 & sleep 60"])
            .env(MARKER_VAR, &marker)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let root = child.id();
        // Wait until both sleeps run (the shell's forks have exec'd).
        let sleeping = |m: &HashSet<u32>| {
            m.iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
                .count()
        };
        let mut m = HashSet::new();
        for _ in 0..500 {
            m = members(root, &marker);
            if sleeping(&m) == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sleeping(&m), 2, "{m:?}");
        assert!(m.contains(&root), "{m:?}");
        freeze(None, root, &marker).await.unwrap();
        let frozen = members(root, &marker);
        assert!(
            frozen.iter().all(|p| state(*p) == 'T'),
            "all stopped: {frozen:?}"
        );
        thaw(None, root, &marker).await.unwrap();
        assert!(frozen.iter().all(|p| state(*p) != 'T'), "all running again");
        kill(None, root, &marker).await;
        let _ = child.wait();
        for _ in 0..500 {
            if members(0, &marker).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("processes survived the kill: {:?}", members(0, &marker));
    }
}
