//! Spacing of repeated writes per key: a SandboxSet's status counts change with every claim and
//! every refilled sandbox, and during a burst of claims writing each change would add one
//! apiserver write per claim. A count-only change within [`STATUS_MIN_INTERVAL`] of the last
//! write waits for the rest of the interval (the reconcile requeues), so a burst costs a few
//! status writes and the final counts land at most one interval late.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const STATUS_MIN_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Pacer {
    last: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    /// How long a write for `key` must still wait (`None`: write now).
    pub fn wait(&self, key: &str, now: Instant) -> Option<Duration> {
        let last = self.last.lock().expect("pacer");
        let since = now.saturating_duration_since(*last.get(key)?);
        (since < STATUS_MIN_INTERVAL).then(|| STATUS_MIN_INTERVAL - since)
    }

    pub fn wrote(&self, key: &str, now: Instant) {
        let mut last = self.last.lock().expect("pacer");
        // Keys idle for a while are dropped (deleted sets), so the map stays small.
        last.retain(|_, at| now.saturating_duration_since(*at) < STATUS_MIN_INTERVAL * 240);
        last.insert(key.to_string(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_write_within_the_interval_waits_for_the_rest_of_it() {
        let p = Pacer::default();
        let t0 = Instant::now();
        assert_eq!(p.wait("a", t0), None);
        p.wrote("a", t0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            p.wait("a", t1),
            Some(STATUS_MIN_INTERVAL - Duration::from_millis(100))
        );
        assert_eq!(p.wait("b", t1), None);
        assert_eq!(p.wait("a", t0 + STATUS_MIN_INTERVAL), None);
    }
}
