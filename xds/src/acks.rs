//! Which gateway has acknowledged what: the bookkeeping behind NACK reporting and
//! `WaitForRoute`.
//!
//! Every discovery stream registers with the node id it announced. For each type it subscribes
//! to, the registry keeps the highest type version the client ACKed (a response covers every
//! change up to its version, so an ACK of version V means the client holds all of them). A NACK
//! never advances that version: the client keeps its last good configuration, and so does our
//! view of it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// A stream's id in the registry.
pub type StreamId = u64;

#[derive(Debug, Default, Clone)]
pub struct TypeAck {
    pub subscribed: bool,
    /// Highest type version the client acknowledged (0: none yet).
    pub acked: u64,
    pub nacks: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub node: String,
    pub types: HashMap<String, TypeAck>,
}

/// All connected streams.
#[derive(Debug)]
pub struct StreamRegistry {
    inner: Mutex<(StreamId, HashMap<StreamId, StreamInfo>)>,
    progress: watch::Sender<u64>,
}

impl Default for StreamRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// How many streams subscribed to a type are behind a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub subscribed: u32,
    pub behind: u32,
}

impl StreamRegistry {
    pub fn new() -> Self {
        StreamRegistry {
            inner: Mutex::new((0, HashMap::new())),
            progress: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (StreamId, HashMap<StreamId, StreamInfo>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.progress.send_modify(|v| *v += 1);
    }

    /// Wakes waiters whenever a stream connects, leaves, subscribes or acknowledges.
    pub fn subscribe_progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    pub fn register(&self, node: &str) -> StreamId {
        let mut g = self.lock();
        g.0 += 1;
        let id = g.0;
        g.1.insert(
            id,
            StreamInfo {
                node: node.to_string(),
                types: HashMap::new(),
            },
        );
        drop(g);
        self.bump();
        id
    }

    pub fn unregister(&self, id: StreamId) {
        self.lock().1.remove(&id);
        self.bump();
    }

    /// Records the node id once the first request names it.
    pub fn set_node(&self, id: StreamId, node: &str) {
        if let Some(s) = self.lock().1.get_mut(&id) {
            s.node = node.to_string();
        }
    }

    pub fn subscribe(&self, id: StreamId, type_url: &str) {
        if let Some(s) = self.lock().1.get_mut(&id) {
            s.types.entry(type_url.to_string()).or_default().subscribed = true;
        }
        self.bump();
    }

    pub fn ack(&self, id: StreamId, type_url: &str, version: u64) {
        if let Some(s) = self.lock().1.get_mut(&id) {
            let t = s.types.entry(type_url.to_string()).or_default();
            t.acked = t.acked.max(version);
        }
        self.bump();
    }

    /// Records a NACK; returns the node id for the caller's log line.
    pub fn nack(&self, id: StreamId, type_url: &str, error: &str) -> String {
        let mut g = self.lock();
        let Some(s) = g.1.get_mut(&id) else {
            return String::new();
        };
        let t = s.types.entry(type_url.to_string()).or_default();
        t.nacks += 1;
        t.last_error = Some(error.to_string());
        s.node.clone()
    }

    /// How many streams subscribed to `type_url` have not acknowledged `version` yet.
    pub fn coverage(&self, type_url: &str, version: u64) -> Coverage {
        let g = self.lock();
        let mut c = Coverage {
            subscribed: 0,
            behind: 0,
        };
        for s in g.1.values() {
            if let Some(t) = s.types.get(type_url).filter(|t| t.subscribed) {
                c.subscribed += 1;
                if t.acked < version {
                    c.behind += 1;
                }
            }
        }
        c
    }

    /// A copy of every stream's state (for status pages and tests).
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.lock().1.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_subscribed_streams_behind_a_version() {
        let r = StreamRegistry::new();
        let a = r.register("gw-a");
        let b = r.register("gw-b");
        let _idle = r.register("gw-idle");
        r.subscribe(a, "T");
        r.subscribe(b, "T");
        assert_eq!(
            r.coverage("T", 1),
            Coverage {
                subscribed: 2,
                behind: 2
            }
        );
        r.ack(a, "T", 5);
        assert_eq!(
            r.coverage("T", 5),
            Coverage {
                subscribed: 2,
                behind: 1
            }
        );
        assert_eq!(r.nack(b, "T", "bad"), "gw-b");
        assert_eq!(
            r.coverage("T", 5).behind,
            1,
            "a NACK does not count as having the version"
        );
        r.ack(b, "T", 7);
        r.ack(b, "T", 6);
        assert_eq!(
            r.coverage("T", 7),
            Coverage {
                subscribed: 2,
                behind: 1
            }
        );
        r.unregister(a);
        assert_eq!(
            r.coverage("T", 7),
            Coverage {
                subscribed: 1,
                behind: 0
            }
        );
    }
}
