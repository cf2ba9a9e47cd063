//! What `sandbox-runtime-storage mount` does inside the sandbox: check the requested path,
//! publish the volume under the sandbox's mount root through the driver's node plugin, and link
//! the requested path to it.

use std::path::{Component, Path, PathBuf};

use sha2::Digest;

use crate::{
    DEFAULT_SOCKET_DIR, ENV_MOUNT_ROOT, ENV_SOCKET_DIR, MOUNT_ROOT_NAME, MOUNT_TIMEOUT,
    POD_UID_KEY, client, decode_request, link,
};

/// Exit code of a refused (unsafe) mount path; any other failure exits 1.
pub const UNSAFE_PATH_EXIT_CODE: i32 = 64;

/// Why a mount failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("unsafe mount path: {0}")]
    UnsafePath(String),
    #[error("{0}")]
    Failed(String),
}

impl MountError {
    pub fn exit_code(&self) -> i32 {
        match self {
            MountError::UnsafePath(_) => UNSAFE_PATH_EXIT_CODE,
            MountError::Failed(_) => 1,
        }
    }
}

/// What the CLI takes from its environment.
#[derive(Debug, Clone, Default)]
pub struct MountEnv {
    pub socket_dir: PathBuf,
    /// `None`: found in `/proc/mounts`.
    pub mount_root: Option<PathBuf>,
    pub pod_uid: Option<String>,
    /// `$PATH`: its directories are protected like `/usr/bin`.
    pub path_var: Option<String>,
}

impl MountEnv {
    pub fn from_env() -> MountEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        MountEnv {
            socket_dir: var(ENV_SOCKET_DIR)
                .unwrap_or_else(|| DEFAULT_SOCKET_DIR.into())
                .into(),
            mount_root: var(ENV_MOUNT_ROOT).map(PathBuf::from),
            pod_uid: var("POD_UID"),
            path_var: var("PATH"),
        }
    }
}

/// Directories a mount may never cover or sit in.
const PROTECTED: [&str; 6] = [
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

fn within(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The deepest existing ancestor of `p`, resolved (symlinks followed), with the rest appended.
fn resolve_parent(p: &Path) -> PathBuf {
    let mut existing = p.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut rest = vec![p.file_name().map(|n| n.to_owned()).unwrap_or_default()];
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Upstream's in-sandbox path policy: absolute, no NUL, no `..`, not `/`, not under `/proc`
/// (also through symlinks in its parents), not overlapping a directory of executables
/// (`/usr/bin`, …, and every `$PATH` entry).
pub fn validate_in_sandbox(p: &str, path_var: Option<&str>) -> Result<(), MountError> {
    let bad = |why: &str| Err(MountError::UnsafePath(format!("{p:?}: {why}")));
    if p.is_empty() {
        return bad("path must not be empty");
    }
    if p.contains('\0') {
        return bad("path must not contain NUL");
    }
    let path = Path::new(p);
    if path.components().any(|c| c == Component::ParentDir) {
        return bad("path must not contain '..' segments");
    }
    if !path.is_absolute() {
        return bad("path must be absolute");
    }
    if path.components().count() == 1 {
        return bad("filesystem root cannot be used as a mount path");
    }
    if path.starts_with("/proc") {
        return bad("path is under /proc");
    }
    let resolved = resolve_parent(path);
    if resolved.starts_with("/proc") {
        return bad("path resolves through /proc");
    }
    let mut dirs: Vec<PathBuf> = PROTECTED.iter().map(PathBuf::from).collect();
    dirs.extend(
        path_var
            .unwrap_or_default()
            .split(':')
            .filter(|d| d.starts_with('/') && *d != "/")
            .map(PathBuf::from),
    );
    for d in dirs {
        let real = d.canonicalize().unwrap_or_else(|_| d.clone());
        if within(path, &d) || within(&resolved, &real) {
            return Err(MountError::UnsafePath(format!(
                "{p:?}: path overlaps executable directory {:?}",
                d.display().to_string()
            )));
        }
    }
    Ok(())
}

/// The mount root: the first mount in `/proc/mounts` whose path contains [`MOUNT_ROOT_NAME`].
pub fn find_mount_root() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| e.to_string())?;
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .find(|p| p.contains(MOUNT_ROOT_NAME))
        .map(PathBuf::from)
        .ok_or_else(|| format!("mount point containing '{MOUNT_ROOT_NAME}' not found"))
}

/// A driver name is one path component of a DNS-like name (it names a socket directory).
fn driver_ok(driver: &str) -> bool {
    !driver.is_empty()
        && driver != "."
        && driver != ".."
        && driver
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Mounts the volume `config` (see [`crate::encode_request`]) describes with `driver`; returns
/// where it was published (the requested path links there).
pub async fn mount(driver: &str, config: &str, env: &MountEnv) -> Result<PathBuf, MountError> {
    let mut req = decode_request(config).map_err(MountError::Failed)?;
    if req
        .volume_context
        .get(POD_UID_KEY)
        .is_none_or(|v| v.is_empty())
    {
        match env
            .pod_uid
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            Some(uid) => {
                req.volume_context.insert(POD_UID_KEY.into(), uid.into());
            }
            None => {
                return Err(MountError::Failed(
                    "Pod UID is required. Use csi.storage.k8s.io/pod.uid setting".into(),
                ));
            }
        }
    }
    let origin = req.target_path.clone();
    validate_in_sandbox(&origin, env.path_var.as_deref())?;
    if !driver_ok(driver) {
        return Err(MountError::Failed(format!(
            "unsupported storage driver: {driver}"
        )));
    }
    let socket = client::socket_path(&env.socket_dir, driver);
    if !socket.exists() {
        return Err(MountError::Failed(format!(
            "unsupported storage driver: {driver} (no node plugin socket at {})",
            socket.display()
        )));
    }
    let root = match &env.mount_root {
        Some(r) => r.clone(),
        None => find_mount_root().map_err(MountError::Failed)?,
    };
    if !root.is_dir() {
        return Err(MountError::Failed(format!(
            "mount path {} is not accessible",
            root.display()
        )));
    }
    let hash = hex(&sha2::Sha256::digest(origin.as_bytes())[..16]);
    let real = root.join(driver).join(hash);
    std::fs::create_dir_all(root.join(driver)).map_err(|e| MountError::Failed(e.to_string()))?;
    req.target_path = real.display().to_string();
    client::publish(&socket, req, MOUNT_TIMEOUT)
        .await
        .map_err(|e| MountError::Failed(format!("mount failed for driver {driver}: {e}")))?;
    link::create_symlink(&real, Path::new(&origin)).map_err(MountError::Failed)?;
    Ok(real)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_refuses_paths_that_would_hide_or_reach_the_system() {
        let ok = |p: &str| validate_in_sandbox(p, Some("/opt/tools/bin:relative")).is_ok();
        assert!(ok("/data"));
        assert!(ok("/home/user/work/data"));
        for p in [
            "",
            "data",
            "/",
            "/a/../b",
            "/proc/self",
            "/usr/bin",
            "/usr",
            "/usr/local/bin/x",
            "/opt/tools",
            "/opt/tools/bin/x",
            "/a\0b",
        ] {
            let e = validate_in_sandbox(p, Some("/opt/tools/bin:relative")).unwrap_err();
            assert_eq!(e.exit_code(), UNSAFE_PATH_EXIT_CODE, "{p}: {e}");
        }
    }

    #[test]
    fn driver_names_are_one_path_component() {
        assert!(driver_ok("nas.csi.example.com"));
        for d in ["", ".", "..", "a/b", "a b"] {
            assert!(!driver_ok(d), "{d:?}");
        }
    }
}
