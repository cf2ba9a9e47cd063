//! `filesystem.Filesystem` unary methods and the `EntryInfo` mapping.
//!
//! Operations run with the daemon's privileges, as envd's do; the selected user decides how
//! relative paths resolve and who owns what is created.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::connect::{self, Code, RpcError};
use crate::oserror::Failed;
use crate::proto::{EntryInfo, FileType, ListDirRequest, MoveRequest, PathRequest};
use crate::state::AppState;
use crate::timefmt;
use crate::users::{NameCache, User};

/// Go's `os.FileMode.String()` for a raw `st_mode`.
pub fn mode_string(st_mode: u32) -> String {
    let fmt = st_mode & libc::S_IFMT;
    let mut s = String::with_capacity(11);
    let is = |t: u32| fmt == t;
    if is(libc::S_IFDIR) {
        s.push('d');
    }
    if is(libc::S_IFLNK) {
        s.push('L');
    }
    if is(libc::S_IFBLK) || is(libc::S_IFCHR) {
        s.push('D');
    }
    if is(libc::S_IFIFO) {
        s.push('p');
    }
    if is(libc::S_IFSOCK) {
        s.push('S');
    }
    if st_mode & libc::S_ISUID != 0 {
        s.push('u');
    }
    if st_mode & libc::S_ISGID != 0 {
        s.push('g');
    }
    if is(libc::S_IFCHR) {
        s.push('c');
    }
    if st_mode & libc::S_ISVTX != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    const RWX: &[u8; 9] = b"rwxrwxrwx";
    for (i, c) in RWX.iter().enumerate() {
        s.push(if st_mode & (1 << (8 - i)) != 0 {
            *c as char
        } else {
            '-'
        });
    }
    s
}

fn file_type_of(md: &std::fs::Metadata) -> FileType {
    let ft = md.file_type();
    if ft.is_file() {
        FileType::File
    } else if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Unspecified
    }
}

/// Builds the `EntryInfo` of `path`, reported under `display` (the path the caller used).
pub fn entry_info(path: &Path, display: &Path, names: &mut NameCache) -> io::Result<EntryInfo> {
    let md = std::fs::symlink_metadata(path)?;
    let is_symlink = md.file_type().is_symlink();
    let (file_type, mode, symlink_target) = if is_symlink {
        match std::fs::canonicalize(path) {
            Ok(target) => match std::fs::metadata(&target) {
                Ok(t) => (
                    file_type_of(&t),
                    t.permissions().mode() & 0o777,
                    Some(target.display().to_string()),
                ),
                Err(_) => (FileType::Unspecified, 0, Some(target.display().to_string())),
            },
            Err(_) => (FileType::Unspecified, 0, Some(path.display().to_string())),
        }
    } else {
        (file_type_of(&md), md.permissions().mode() & 0o777, None)
    };
    let name = display
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string());
    Ok(EntryInfo {
        name,
        file_type,
        path: display.display().to_string(),
        size: md.size() as i64,
        mode,
        permissions: mode_string(md.mode()),
        owner: names.user(md.uid()),
        group: names.group(md.gid()),
        modified_time: Some(timefmt::rfc3339(
            md.mtime(),
            md.mtime_nsec().clamp(0, 999_999_999) as u32,
        )),
        symlink_target,
        metadata: crate::xattr::read(path),
        is_symlink,
    })
}

fn io_to_rpc(e: &io::Error, what: &str) -> RpcError {
    crate::oserror::rpc_error(e, what)
}

/// A path a destructive operation acts on: it must be given. An absent or empty field never
/// falls back to the default directory, as it does for reads.
fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, RpcError> {
    if value.is_empty() {
        Err(RpcError::invalid_argument(format!(
            "{field} is required for this operation"
        )))
    } else {
        Ok(value)
    }
}

/// Creates the missing directories of `path` (mode 0755, owned by uid/gid).
pub fn ensure_dirs(path: &Path, uid: u32, gid: u32) -> Result<(), Failed> {
    let mut cur = PathBuf::from("/");
    for c in path.components().skip(1) {
        cur.push(c);
        match std::fs::metadata(&cur) {
            Ok(md) if md.is_dir() => continue,
            Ok(_) => {
                return Err(Failed::new(
                    format!("path is a file: {}", cur.display()),
                    io::Error::from(io::ErrorKind::NotADirectory),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match std::fs::create_dir(&cur) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => {
                        return Err(Failed::new(
                            format!("failed to create directory {}", cur.display()),
                            e,
                        ));
                    }
                }
                std::os::unix::fs::chown(&cur, Some(uid), Some(gid)).map_err(|e| {
                    Failed::new(format!("failed to chown directory {}", cur.display()), e)
                })?;
            }
            Err(e) => {
                return Err(Failed::new(
                    format!("failed to stat directory {}", cur.display()),
                    e,
                ));
            }
        }
    }
    Ok(())
}

fn resolve(state: &AppState, user: &User, path: &str) -> Result<PathBuf, RpcError> {
    crate::paths::expand_and_resolve(path, &user.home, state.defaults().workdir.as_deref())
        .map_err(|e| RpcError::invalid_argument(e.to_string()))
}

fn stat(state: &AppState, user: &User, req: PathRequest) -> Result<Value, RpcError> {
    let path = resolve(state, user, &req.path)?;
    let entry = entry_info(&path, &path, &mut NameCache::default())
        .map_err(|e| io_to_rpc(&e, "error getting file info"))?;
    Ok(json!({ "entry": entry }))
}

fn make_dir(state: &AppState, user: &User, req: PathRequest) -> Result<Value, RpcError> {
    let path = resolve(state, user, &req.path)?;
    match std::fs::metadata(&path) {
        Ok(md) if md.is_dir() => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("directory already exists: {}", path.display()),
            ));
        }
        Ok(_) => {
            return Err(RpcError::invalid_argument(format!(
                "path already exists but it is not a directory: {}",
                path.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_to_rpc(&e, "error getting file info")),
    }
    ensure_dirs(&path, user.uid, user.gid).map_err(|f| f.to_rpc())?;
    state.watchers.sync_all();
    let entry = entry_info(&path, &path, &mut NameCache::default())
        .map_err(|e| io_to_rpc(&e, "error getting file info"))?;
    Ok(json!({ "entry": entry }))
}

fn move_entry(state: &AppState, user: &User, req: MoveRequest) -> Result<Value, RpcError> {
    let source = resolve(state, user, required("source", &req.source)?)?;
    let destination = resolve(state, user, required("destination", &req.destination)?)?;
    if let Err(e) = std::fs::symlink_metadata(&source) {
        return Err(io_to_rpc(
            &e,
            &format!("source file not found: {}", source.display()),
        ));
    }
    if let Some(parent) = destination.parent() {
        ensure_dirs(parent, user.uid, user.gid).map_err(|f| f.to_rpc())?;
    }
    std::fs::rename(&source, &destination).map_err(|e| io_to_rpc(&e, "error renaming"))?;
    state.watchers.sync_all();
    let entry = entry_info(&destination, &destination, &mut NameCache::default())
        .map_err(|e| io_to_rpc(&e, "error getting file info"))?;
    Ok(json!({ "entry": entry }))
}

fn remove(state: &AppState, user: &User, req: PathRequest) -> Result<Value, RpcError> {
    let path = resolve(state, user, required("path", &req.path)?)?;
    let result = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(&path),
        Ok(_) => std::fs::remove_file(&path),
    };
    match result {
        Ok(()) => Ok(json!({})),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(io_to_rpc(&e, "error removing file or directory")),
    }
}

fn walk(
    real: &Path,
    display: &Path,
    depth: u32,
    names: &mut NameCache,
    out: &mut Vec<EntryInfo>,
) -> io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(real)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    children.sort();
    for name in children {
        let child_real = real.join(&name);
        let child_display = display.join(&name);
        let Ok(entry) = entry_info(&child_real, &child_display, names) else {
            continue;
        };
        let is_real_dir = std::fs::symlink_metadata(&child_real)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        out.push(entry);
        if is_real_dir && depth > 1 {
            // An unreadable subdirectory is listed but not descended into.
            let _ = walk(&child_real, &child_display, depth - 1, names, out);
        }
    }
    Ok(())
}

fn list_dir(state: &AppState, user: &User, req: ListDirRequest) -> Result<Value, RpcError> {
    let depth = req.depth.max(1);
    let requested = resolve(state, user, &req.path)?;
    let real = std::fs::canonicalize(&requested).map_err(|e| io_to_rpc(&e, "path not found"))?;
    let md = std::fs::metadata(&real).map_err(|e| io_to_rpc(&e, "directory not found"))?;
    if !md.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "path is not a directory: {}",
            requested.display()
        )));
    }
    let mut entries = Vec::new();
    walk(
        &real,
        &requested,
        depth,
        &mut NameCache::default(),
        &mut entries,
    )
    .map_err(|e| io_to_rpc(&e, &format!("error reading directory {}", real.display())))?;
    Ok(json!({ "entries": entries }))
}

/// Whether `path` is on NFS, CIFS/SMB or FUSE.
pub fn is_network_mount(path: &Path) -> io::Result<bool> {
    let magic = crate::sys::fs_magic(&crate::sys::cpath(path)?)?;
    Ok(matches!(
        magic,
        0x6969 | 0xFF53_4D42 | 0x517B | 0xFE53_4D42 | 0x6573_5546
    ))
}

/// The unary methods of `filesystem.Filesystem`.
pub async fn unary(
    state: &Arc<AppState>,
    user: Result<User, RpcError>,
    method: &str,
    payload: &[u8],
) -> Result<Value, RpcError> {
    match method {
        "CreateWatcher" => return crate::watch::create_watcher(state, user?, payload),
        "GetWatcherEvents" => return crate::watch::get_events(state, payload),
        "RemoveWatcher" => return crate::watch::remove_watcher(state, payload),
        "Stat" | "MakeDir" | "Move" | "ListDir" | "Remove" => {}
        _ => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem/{method} is not implemented"),
            ));
        }
    }
    let user = user?;
    let state = state.clone();
    let method = method.to_string();
    let payload = payload.to_vec();
    tokio::task::spawn_blocking(move || match method.as_str() {
        "Stat" => stat(&state, &user, connect::decode(&payload)?),
        "MakeDir" => make_dir(&state, &user, connect::decode(&payload)?),
        "Move" => move_entry(&state, &user, connect::decode(&payload)?),
        "ListDir" => list_dir(&state, &user, connect::decode(&payload)?),
        _ => remove(&state, &user, connect::decode(&payload)?),
    })
    .await
    .map_err(|e| RpcError::internal(format!("filesystem task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_like_go() {
        assert_eq!(mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
        assert_eq!(
            mode_string(libc::S_IFDIR | libc::S_ISVTX | 0o777),
            "dtrwxrwxrwx"
        );
        assert_eq!(mode_string(libc::S_IFCHR | 0o666), "Dcrw-rw-rw-");
        assert_eq!(
            mode_string(libc::S_IFREG | libc::S_ISUID | 0o755),
            "urwxr-xr-x"
        );
    }

    #[test]
    fn entry_info_of_files_dirs_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "hello").unwrap();
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let mut names = NameCache::default();
        let e = entry_info(&f, &f, &mut names).unwrap();
        assert_eq!(e.name, "a.txt");
        assert_eq!(e.file_type, FileType::File);
        assert_eq!(e.size, 5);
        assert!(e.symlink_target.is_none() && !e.is_symlink);
        let e = entry_info(&l, &l, &mut names).unwrap();
        assert_eq!(e.file_type, FileType::File);
        assert!(e.is_symlink);
        assert_eq!(
            e.symlink_target.unwrap(),
            std::fs::canonicalize(&f).unwrap().display().to_string()
        );
        assert!(e.permissions.starts_with('L'));
        let d = entry_info(dir.path(), dir.path(), &mut names).unwrap();
        assert_eq!(d.file_type, FileType::Directory);
    }

    #[test]
    fn ensure_dirs_creates_and_refuses_files() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        ensure_dirs(&deep, crate::users::euid(), crate::users::egid()).unwrap();
        assert!(deep.is_dir());
        std::fs::write(dir.path().join("f"), "").unwrap();
        assert!(
            ensure_dirs(&dir.path().join("f/x"), 0, 0)
                .unwrap_err()
                .to_string()
                .contains("path is a file")
        );
    }
}
