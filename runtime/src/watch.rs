//! Directory watches over inotify: the `WatchDir` server stream and the polling watchers
//! (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`) the synchronous SDK uses.
//!
//! Event mapping follows fsnotify (what envd uses): create and moved-to → CREATE, modify → WRITE,
//! delete → REMOVE, moved-from → RENAME, attribute change → CHMOD. Names are relative to the
//! watched directory. Recursive watches add a watch for every subdirectory, including ones
//! created or moved in later.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Response};
use rand::Rng;
use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::connect::{self, RpcError, StreamSender};
use crate::httputil::BoxBody;
use crate::metrics::GaugeGuard;
use crate::proto::{EventType, FilesystemEvent, WatchRequest, WatcherIdRequest};
use crate::state::AppState;
use crate::users::{NameCache, User};

/// Most events a polling watcher buffers between two `GetWatcherEvents` calls; older ones are
/// dropped beyond that.
const MAX_BUFFERED: usize = 100_000;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// One raw inotify event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub wd: i32,
    pub mask: u32,
    pub name: Vec<u8>,
}

/// Parses a buffer of `struct inotify_event` records.
pub fn parse_events(buf: &[u8]) -> Vec<RawEvent> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4]));
        let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap_or([0; 4]));
        let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap_or([0; 4])) as usize;
        let end = (off + 16 + len).min(buf.len());
        let raw = &buf[off + 16..end];
        let name = raw.split(|b| *b == 0).next().unwrap_or(&[]).to_vec();
        out.push(RawEvent { wd, mask, name });
        off += 16 + len;
    }
    out
}

/// The event types of an inotify mask, in fsnotify's order.
pub fn event_types(mask: u32) -> Vec<EventType> {
    let mut v = Vec::new();
    if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
        v.push(EventType::Create);
    }
    if mask & (libc::IN_MOVED_FROM | libc::IN_MOVE_SELF) != 0 {
        v.push(EventType::Rename);
    }
    if mask & libc::IN_ATTRIB != 0 {
        v.push(EventType::Chmod);
    }
    if mask & libc::IN_MODIFY != 0 {
        v.push(EventType::Write);
    }
    if mask & (libc::IN_DELETE | libc::IN_DELETE_SELF) != 0 {
        v.push(EventType::Remove);
    }
    v
}

/// An inotify instance watching one directory (and, if recursive, its subdirectories).
#[derive(Debug)]
pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    root: PathBuf,
    recursive: bool,
    include_entry: bool,
    /// wd → directory relative to the root ("" for the root).
    wds: Mutex<HashMap<i32, PathBuf>>,
    /// Events read from the kernel and not yet delivered.
    pending: Mutex<Vec<FilesystemEvent>>,
    /// Woken when `sync` moved events into `pending`.
    wake: tokio::sync::Notify,
}

impl DirWatch {
    pub fn new(root: &Path, recursive: bool, include_entry: bool) -> io::Result<DirWatch> {
        let fd = crate::sys::inotify_init()?;
        let w = DirWatch {
            fd: crate::sys::async_fd(fd)?,
            root: root.to_path_buf(),
            recursive,
            include_entry,
            wds: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        };
        w.add(Path::new(""))?;
        if recursive {
            w.add_tree(Path::new(""));
        }
        Ok(w)
    }

    fn add(&self, rel: &Path) -> io::Result<()> {
        let abs = if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let c = crate::sys::cpath(&abs)?;
        let wd = crate::sys::inotify_add_watch(
            self.fd.get_ref().as_raw_fd(),
            &c,
            MASK | libc::IN_ONLYDIR,
        )?;
        self.wds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(wd, rel.to_path_buf());
        Ok(())
    }

    /// Adds watches for every directory below `rel` (not following symlinks).
    fn add_tree(&self, rel: &Path) {
        let abs = self.root.join(rel);
        let Ok(rd) = std::fs::read_dir(&abs) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let child = rel.join(e.file_name());
                if self.add(&child).is_ok() {
                    self.add_tree(&child);
                }
            }
        }
    }

    /// Moves every event the kernel has queued into `pending` (never blocks). Holding the
    /// `pending` lock while reading keeps events in kernel order.
    fn pull(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(self.read_kernel());
        if pending.len() > MAX_BUFFERED {
            let excess = pending.len() - MAX_BUFFERED;
            pending.drain(..excess);
            tracing::warn!(root = %self.root.display(), dropped = excess, "watcher buffer full; oldest events dropped");
        }
    }

    /// Every event not yet delivered, including those the kernel queued until now.
    pub fn drain(&self) -> Vec<FilesystemEvent> {
        self.pull();
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Processes queued kernel events now (adding watches for new subdirectories) and wakes the
    /// consumer. Called after the daemon itself created directories, so that files it writes
    /// into them next are seen by recursive watches.
    pub fn sync(&self) {
        self.pull();
        self.wake.notify_one();
    }

    fn read_kernel(&self) -> Vec<FilesystemEvent> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut names = NameCache::default();
        loop {
            let n = match crate::sys::read(self.fd.get_ref().as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            for ev in parse_events(&buf[..n]) {
                self.translate(ev, &mut names, &mut out);
            }
        }
        out
    }

    fn translate(&self, ev: RawEvent, names: &mut NameCache, out: &mut Vec<FilesystemEvent>) {
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            tracing::warn!(root = %self.root.display(), "inotify queue overflowed; events were lost");
            return;
        }
        let dir = {
            let mut wds = self.wds.lock().unwrap_or_else(|e| e.into_inner());
            if ev.mask & libc::IN_IGNORED != 0 {
                wds.remove(&ev.wd);
                return;
            }
            match wds.get(&ev.wd) {
                Some(d) => d.clone(),
                None => return,
            }
        };
        let is_self = ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0;
        if is_self && !dir.as_os_str().is_empty() {
            // A subdirectory's own deletion is already reported by its parent.
            return;
        }
        let rel = if ev.name.is_empty() {
            dir.clone()
        } else {
            dir.join(std::ffi::OsStr::from_bytes(&ev.name))
        };
        let abs = self.root.join(&rel);
        let adopted = self.recursive
            && ev.mask & libc::IN_ISDIR != 0
            && ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0
            && self.add(&rel).is_ok();
        let name = if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            rel.display().to_string()
        };
        for t in event_types(ev.mask) {
            self.push(out, name.clone(), t, &abs, names);
        }
        if adopted {
            self.adopt_contents(&rel, names, out);
        }
    }

    fn push(
        &self,
        out: &mut Vec<FilesystemEvent>,
        name: String,
        event_type: EventType,
        abs: &Path,
        names: &mut NameCache,
    ) {
        let entry = if self.include_entry {
            crate::filesystem::entry_info(abs, abs, names).ok()
        } else {
            None
        };
        out.push(FilesystemEvent {
            name,
            event_type,
            entry,
        });
    }

    /// A directory that appeared under a recursive watch may already hold entries created before
    /// its own watch existed (`mkdir -p a/b`, an upload creating its parents): watch its
    /// subdirectories and report every entry found as created, parents first. An entry created
    /// between the watch and the scan may be reported twice; none is missed.
    fn adopt_contents(&self, rel: &Path, names: &mut NameCache, out: &mut Vec<FilesystemEvent>) {
        let Ok(rd) = std::fs::read_dir(self.root.join(rel)) else {
            return;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let child = rel.join(e.file_name());
            let abs = self.root.join(&child);
            self.push(
                out,
                child.display().to_string(),
                EventType::Create,
                &abs,
                names,
            );
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && self.add(&child).is_ok() {
                self.adopt_contents(&child, names, out);
            }
        }
    }

    /// Waits until events may be available (kernel readiness or a `sync`).
    pub async fn readable(&self) -> io::Result<()> {
        tokio::select! {
            g = self.fd.readable() => {
                g?.clear_ready();
            }
            _ = self.wake.notified() => {}
        }
        Ok(())
    }
}

fn check_watch_path(
    state: &AppState,
    user: &User,
    req: &WatchRequest,
) -> Result<PathBuf, RpcError> {
    let path = crate::paths::expand_and_resolve(
        &req.path,
        &user.home,
        state.defaults().workdir.as_deref(),
    )
    .map_err(|e| RpcError::invalid_argument(e.to_string()))?;
    let md = std::fs::metadata(&path).map_err(|e| {
        let what = if e.kind() == io::ErrorKind::NotFound {
            format!("path {} not found", path.display())
        } else {
            format!("error statting path {}", path.display())
        };
        crate::oserror::rpc_error(&e, &what)
    })?;
    if !md.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "path {} not a directory",
            path.display()
        )));
    }
    let network = crate::filesystem::is_network_mount(&path)
        .map_err(|e| crate::oserror::rpc_error(&e, "error checking mount status"))?;
    if network && !req.allow_network_mounts {
        return Err(RpcError::invalid_argument(format!(
            "cannot watch path on network filesystem: {}",
            path.display()
        )));
    }
    Ok(path)
}

fn new_watch(path: &Path, req: &WatchRequest) -> Result<DirWatch, RpcError> {
    DirWatch::new(path, req.recursive, req.include_entry).map_err(|e| {
        crate::oserror::rpc_error(
            &e,
            &format!("error adding path {} to watcher", path.display()),
        )
    })
}

/// `WatchDir` (server stream): `start`, then one message per event, keepalives when idle.
pub fn watch_dir_rpc(
    state: &Arc<AppState>,
    user: Result<User, RpcError>,
    headers: &HeaderMap,
    body: &[u8],
    deadline: Option<tokio::time::Instant>,
) -> Response<BoxBody> {
    let result = (|| {
        let req = WatchRequest::parse(&connect::single_message(headers, body)?)?;
        let user = user?;
        let path = check_watch_path(state, &user, &req)?;
        state.fds.admit(1, "watch a directory")?;
        new_watch(&path, &req)
    })();
    let watch = match result {
        Ok(w) => Arc::new(w),
        Err(e) => return connect::stream_error(&e),
    };
    state.watchers.track(&watch);
    let (sender, resp) = StreamSender::new();
    let keepalive = connect::keepalive_interval(headers);
    let st = state.clone();
    tokio::spawn(async move {
        let _open = GaugeGuard::new(&st.metrics.streams_open);
        if sender.send(&json!({ "start": {} })).await.is_err() {
            return;
        }
        let mut ka = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let deadline = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = watch.readable() => {
                    if let Err(e) = r {
                        sender.finish(Some(&RpcError::internal(format!("watcher error: {e}")))).await;
                        return;
                    }
                    for ev in watch.drain() {
                        if sender.send(&json!({ "filesystem": ev })).await.is_err() {
                            return;
                        }
                    }
                    ka.reset();
                }
                _ = ka.tick() => {
                    if sender.send(&json!({ "keepalive": {} })).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => {
                    sender.finish(Some(&connect::deadline_exceeded())).await;
                    return;
                }
                _ = sender.closed() => return,
            }
        }
    });
    resp
}

/// A polling watcher: a background task moves events into a buffer; `GetWatcherEvents` first
/// drains what the kernel already queued, so events of operations that completed before the
/// call are always included.
#[derive(Debug)]
struct Polling {
    watch: Arc<DirWatch>,
    task: JoinHandle<()>,
    _gauge: GaugeGuard,
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The polling watchers by id, and every live watch (polling or streaming).
#[derive(Debug, Default)]
pub struct Registry {
    watchers: Mutex<HashMap<String, Arc<Polling>>>,
    all: Mutex<Vec<std::sync::Weak<DirWatch>>>,
}

impl Registry {
    fn track(&self, w: &Arc<DirWatch>) {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(w));
    }

    /// Makes every live watch process what the kernel queued so far (see [`DirWatch::sync`]).
    pub fn sync_all(&self) {
        let live: Vec<Arc<DirWatch>> = self
            .all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|w| w.upgrade())
            .collect();
        for w in live {
            w.sync();
        }
    }
}

fn watcher_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let id: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("w{id}")
}

/// `CreateWatcher`.
pub fn create_watcher(
    state: &Arc<AppState>,
    user: User,
    payload: &[u8],
) -> Result<Value, RpcError> {
    let req = WatchRequest::parse(payload)?;
    let path = check_watch_path(state, &user, &req)?;
    state.fds.admit(1, "watch a directory")?;
    let watch = Arc::new(new_watch(&path, &req)?);
    state.watchers.track(&watch);
    let w = watch.clone();
    let task = tokio::spawn(async move {
        loop {
            if w.readable().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            w.pull();
        }
    });
    let id = watcher_id();
    let polling = Arc::new(Polling {
        watch,
        task,
        _gauge: GaugeGuard::new(&state.metrics.watchers),
    });
    state
        .watchers
        .watchers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), polling);
    tracing::debug!(watcher = %id, path = %path.display(), recursive = req.recursive, "watcher created");
    Ok(json!({ "watcherId": id }))
}

fn find(state: &AppState, id: &str) -> Result<Arc<Polling>, RpcError> {
    state
        .watchers
        .watchers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| RpcError::not_found(format!("watcher with id {id} not found")))
}

/// `GetWatcherEvents`: the events since the previous call.
pub fn get_events(state: &Arc<AppState>, payload: &[u8]) -> Result<Value, RpcError> {
    let req: WatcherIdRequest = connect::decode(payload)?;
    let w = find(state, &req.watcher_id)?;
    let events = w.watch.drain();
    Ok(json!({ "events": events }))
}

/// `RemoveWatcher`.
pub fn remove_watcher(state: &Arc<AppState>, payload: &[u8]) -> Result<Value, RpcError> {
    let req: WatcherIdRequest = connect::decode(payload)?;
    let removed = state
        .watchers
        .watchers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&req.watcher_id);
    match removed {
        Some(_) => Ok(json!({})),
        None => Err(RpcError::not_found(format!(
            "watcher with id {} not found",
            req.watcher_id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_mapping() {
        assert_eq!(event_types(libc::IN_CREATE), vec![EventType::Create]);
        assert_eq!(event_types(libc::IN_MOVED_TO), vec![EventType::Create]);
        assert_eq!(event_types(libc::IN_MOVED_FROM), vec![EventType::Rename]);
        assert_eq!(event_types(libc::IN_ATTRIB), vec![EventType::Chmod]);
        assert_eq!(event_types(libc::IN_MODIFY), vec![EventType::Write]);
        assert_eq!(
            event_types(libc::IN_DELETE | libc::IN_ISDIR),
            vec![EventType::Remove]
        );
    }

    #[test]
    fn parses_raw_records() {
        let mut buf = Vec::new();
        for (wd, mask, name) in [
            (1i32, libc::IN_CREATE, &b"a.txt"[..]),
            (2, libc::IN_MODIFY, &b""[..]),
        ] {
            let padded = if name.is_empty() { 0 } else { 16 };
            buf.extend_from_slice(&wd.to_ne_bytes());
            buf.extend_from_slice(&mask.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(padded, 0);
            buf.extend_from_slice(&n);
        }
        let evs = parse_events(&buf);
        assert_eq!(
            evs,
            vec![
                RawEvent {
                    wd: 1,
                    mask: libc::IN_CREATE,
                    name: b"a.txt".to_vec()
                },
                RawEvent {
                    wd: 2,
                    mask: libc::IN_MODIFY,
                    name: vec![]
                }
            ]
        );
    }

    #[tokio::test]
    async fn entries_created_before_a_new_directory_is_watched_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirWatch::new(dir.path(), true, false).unwrap();
        // All of it exists before the watcher reads the parent's CREATE.
        std::fs::create_dir_all(dir.path().join("new/deeper")).unwrap();
        std::fs::write(dir.path().join("new/deeper/x.txt"), "x").unwrap();
        let evs = w.drain();
        let kinds: Vec<_> = evs
            .iter()
            .map(|e| (e.name.as_str(), e.event_type))
            .collect();
        for name in ["new", "new/deeper", "new/deeper/x.txt"] {
            assert!(kinds.contains(&(name, EventType::Create)), "{kinds:?}");
        }
        // The adopted subdirectory is watched from now on.
        std::fs::write(dir.path().join("new/deeper/y.txt"), "y").unwrap();
        let later = w.drain();
        assert!(
            later
                .iter()
                .any(|e| e.name == "new/deeper/y.txt" && e.event_type == EventType::Create),
            "{later:?}"
        );
    }

    #[tokio::test]
    async fn recursive_watch_sees_new_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirWatch::new(dir.path(), true, false).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let first = w.drain();
        assert_eq!(first[0].name, "sub");
        assert_eq!(first[0].event_type, EventType::Create);
        std::fs::write(dir.path().join("sub/f.txt"), "x").unwrap();
        let evs = w.drain();
        let kinds: Vec<_> = evs
            .iter()
            .map(|e| (e.name.as_str(), e.event_type))
            .collect();
        assert!(
            kinds.contains(&("sub/f.txt", EventType::Create)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("sub/f.txt", EventType::Write)),
            "{kinds:?}"
        );
    }
}
