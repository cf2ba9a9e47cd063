//! The in-process pick lock. The version-guarded take is what makes a claim safe across
//! processes; this only spares the conflicts this process would otherwise cause itself.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a "skip until newer" expectation lives when the cache never shows the newer version
/// (the sandbox left the pool, or was deleted).
const EXPECTATION_TTL: Duration = Duration::from_secs(60);
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Keeps this process's claim workers apart: a sandbox one worker is taking is skipped by the
/// others, and one this process just took (or lost a conflict on) is skipped until a version at
/// least as new as the one the write produced or saw shows up (a lagging cache would otherwise
/// offer it again).
#[derive(Debug)]
pub struct PickLock {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    in_flight: HashSet<String>,
    /// key → (oldest version worth trying, when recorded).
    expected: HashMap<String, (u64, Instant)>,
    last_sweep: Instant,
}

/// A sandbox reserved for one worker; released when dropped.
#[derive(Debug)]
pub struct PickGuard<'a> {
    lock: &'a PickLock,
    key: String,
}

impl Drop for PickGuard<'_> {
    fn drop(&mut self) {
        self.lock.inner().in_flight.remove(&self.key);
    }
}

impl Default for PickLock {
    fn default() -> Self {
        PickLock::new()
    }
}

impl PickLock {
    pub fn new() -> Self {
        PickLock {
            inner: Mutex::new(Inner {
                in_flight: HashSet::new(),
                expected: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves the sandbox `key`, seen at `version`, for the caller: `None` when another worker
    /// has it or this process knows the version is stale.
    pub fn try_pick(&self, key: &str, version: Option<u64>) -> Option<PickGuard<'_>> {
        let mut inner = self.inner();
        if let Some(&(min, at)) = inner.expected.get(key) {
            let fresh = version.is_none_or(|v| v >= min);
            if fresh || at.elapsed() >= EXPECTATION_TTL {
                inner.expected.remove(key);
            } else {
                return None;
            }
        }
        if !inner.in_flight.insert(key.to_string()) {
            return None;
        }
        Some(PickGuard {
            lock: self,
            key: key.to_string(),
        })
    }

    /// Skips `key` until it is seen at `min_version` or newer (or the expectation expires).
    pub fn expect_at_least(&self, key: &str, min_version: u64) {
        let mut inner = self.inner();
        let now = Instant::now();
        if now.duration_since(inner.last_sweep) >= SWEEP_INTERVAL {
            inner
                .expected
                .retain(|_, (_, at)| now.duration_since(*at) < EXPECTATION_TTL);
            inner.last_sweep = now;
        }
        let e = inner
            .expected
            .entry(key.to_string())
            .or_insert((min_version, now));
        *e = (e.0.max(min_version), now);
    }

    /// Sandboxes being taken right now, and expectations held (for metrics and tests).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.in_flight.len(), inner.expected.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picked_sandbox_is_refused_until_released() {
        let lock = PickLock::new();
        let g = lock.try_pick("ns/a", Some(1)).unwrap();
        assert!(lock.try_pick("ns/a", Some(1)).is_none());
        assert!(lock.try_pick("ns/b", Some(1)).is_some());
        drop(g);
        assert!(lock.try_pick("ns/a", Some(1)).is_some());
        assert_eq!(lock.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_versions_are_skipped_until_a_newer_one_or_the_ttl() {
        let lock = PickLock::new();
        lock.expect_at_least("ns/a", 8);
        assert!(lock.try_pick("ns/a", Some(7)).is_none(), "the stale copy");
        assert!(
            lock.try_pick("ns/a", None).is_some(),
            "no version to compare"
        );
        lock.expect_at_least("ns/a", 8);
        assert!(lock.try_pick("ns/a", Some(8)).is_some(), "caught up");
        assert_eq!(lock.counts().1, 0, "a met expectation is forgotten");
        lock.expect_at_least("ns/b", 5);
        tokio::time::advance(EXPECTATION_TTL).await;
        assert!(lock.try_pick("ns/b", Some(4)).is_some(), "expired");
        // Expectations of sandboxes never seen again are swept.
        lock.expect_at_least("ns/c", 5);
        tokio::time::advance(EXPECTATION_TTL).await;
        lock.expect_at_least("ns/d", 5);
        assert_eq!(lock.counts().1, 1);
    }
}
