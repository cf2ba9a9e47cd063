//! Deadlines of local sandboxes: one queue and one task. Entries are hints: when one falls due,
//! the backend re-reads the sandbox's own deadline before acting, so a deadline moved later (or
//! a sandbox killed meanwhile) needs no removal from the queue.

use std::collections::BTreeSet;
use std::sync::Mutex;

use jiff::Timestamp;
use tokio::sync::Notify;

use crate::model::SandboxId;

#[derive(Debug, Default)]
pub struct Expiry {
    queue: Mutex<BTreeSet<(Timestamp, SandboxId)>>,
    wake: Notify,
}

impl Expiry {
    pub fn schedule(&self, id: &SandboxId, at: Timestamp) {
        let first = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.insert((at, id.clone()));
            q.first().is_some_and(|(t, _)| *t == at)
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// Waits until at least one entry is due and returns every due id.
    pub async fn next_due(&self) -> Vec<SandboxId> {
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first()
                .map(|(t, _)| *t);
            let now = Timestamp::now();
            match next {
                Some(t) if t <= now => {
                    let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                    let mut due = Vec::new();
                    while let Some((t, _)) = q.first() {
                        if *t > now {
                            break;
                        }
                        if let Some((_, id)) = q.pop_first() {
                            due.push(id);
                        }
                    }
                    return due;
                }
                Some(t) => {
                    let wait = t.duration_since(now).unsigned_abs();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn due_entries_come_out_in_order_and_new_earlier_ones_wake_the_wait() {
        let e = std::sync::Arc::new(Expiry::default());
        let a = SandboxId::parse("a").unwrap();
        let b = SandboxId::parse("b").unwrap();
        e.schedule(&a, Timestamp::now() + Duration::from_secs(3600));
        let waiter = {
            let e = e.clone();
            tokio::spawn(async move { e.next_due().await })
        };
        tokio::task::yield_now().await;
        e.schedule(&b, Timestamp::now());
        let due = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(due, vec![b]);
    }
}
