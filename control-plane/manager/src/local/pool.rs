//! Warm pools: per template, sandboxes started ahead of demand (runtime healthy, setup done) and
//! handed out in-process. A refill task per template keeps the pool at its size; taking from
//! the pool wakes it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::runtime::RuntimeProcess;
use super::templates::Template;

#[derive(Debug)]
pub struct Pool {
    pub template: Template,
    ready: Mutex<VecDeque<RuntimeProcess>>,
    /// Sandboxes being started for the pool.
    pub starting: AtomicUsize,
    /// Set once the pool first reached its size (readiness).
    pub warmed: AtomicBool,
    pub wake: Notify,
    last_take: Mutex<Option<Instant>>,
}

impl Pool {
    pub fn new(template: Template) -> Pool {
        let warm = template.pool_size == 0;
        Pool {
            template,
            ready: Mutex::new(VecDeque::new()),
            starting: AtomicUsize::new(0),
            warmed: AtomicBool::new(warm),
            wake: Notify::new(),
            last_take: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RuntimeProcess>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A warm sandbox, oldest first; wakes the refill task.
    pub fn take(&self) -> Option<RuntimeProcess> {
        let p = self.lock().pop_front();
        *self.last_take.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.wake.notify_one();
        p
    }

    pub fn put(&self, p: RuntimeProcess) {
        let mut ready = self.lock();
        ready.push_back(p);
        if ready.len() >= self.template.pool_size {
            self.warmed.store(true, Ordering::Relaxed);
        }
    }

    /// Time since the last take (a long time if there was none).
    pub fn since_last_take(&self) -> Duration {
        self.last_take
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::MAX, |t| t.elapsed())
    }

    pub fn available(&self) -> usize {
        self.lock().len()
    }

    /// How many more sandboxes the refill task should start now.
    pub fn deficit(&self) -> usize {
        let have = self.available() + self.starting.load(Ordering::Relaxed);
        self.template.pool_size.saturating_sub(have)
    }

    /// Every warm sandbox (shutdown).
    pub fn drain(&self) -> Vec<RuntimeProcess> {
        self.lock().drain(..).collect()
    }
}
