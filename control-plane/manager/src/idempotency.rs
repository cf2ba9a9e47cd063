//! `Idempotency-Key` on create: the SDK retries a create after a 503 or 504, and a retry must
//! not make a second sandbox. Per team and key, the first successful answer is kept for a day
//! and returned again; concurrent requests with the same key wait for the first one; a failure
//! is not kept (the retry runs again). The same key with a different body is a 409.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::api::{ApiError, ApiResult};

/// How long an answer is kept.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// At most this many keys are remembered (the oldest are forgotten first).
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
struct Entry {
    fingerprint: [u8; 32],
    created: Instant,
    answer: OnceCell<Value>,
}

#[derive(Debug, Default)]
pub struct Idempotency {
    entries: Mutex<HashMap<(String, String), Arc<Entry>>>,
}

impl Idempotency {
    fn entry(&self, team: &str, key: &str, fingerprint: [u8; 32]) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.created.elapsed() < KEEP);
            if entries.len() >= MAX_ENTRIES
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.created)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        let k = (team.to_string(), key.to_string());
        match entries.get(&k) {
            Some(e) if e.created.elapsed() < KEEP => e.clone(),
            _ => {
                let e = Arc::new(Entry {
                    fingerprint,
                    created: Instant::now(),
                    answer: OnceCell::new(),
                });
                entries.insert(k, e.clone());
                e
            }
        }
    }

    /// Runs `f` once per (team, key, body); returns its (kept) answer.
    pub async fn run<F>(&self, team: &str, key: &str, body: &[u8], f: F) -> ApiResult<Value>
    where
        F: Future<Output = ApiResult<Value>>,
    {
        let fingerprint: [u8; 32] = Sha256::digest(body).into();
        let entry = self.entry(team, key, fingerprint);
        if entry.fingerprint != fingerprint {
            return Err(ApiError::conflict(
                "Idempotency-Key was already used with a different request body",
            ));
        }
        entry.answer.get_or_try_init(|| f).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_answer_per_key_and_failures_are_not_kept() {
        let idem = Arc::new(Idempotency::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let call = |fail: bool| {
            let calls = calls.clone();
            async move {
                tokio::task::yield_now().await;
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if fail {
                    Err(ApiError::internal("boom"))
                } else {
                    Ok(serde_json::json!({ "n": n }))
                }
            }
        };
        assert!(idem.run("t", "k", b"{}", call(true)).await.is_err());
        let (a, b) = tokio::join!(
            idem.run("t", "k", b"{}", call(false)),
            idem.run("t", "k", b"{}", call(false))
        );
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one failure, one success");
        let other_team = idem.run("u", "k", b"{}", call(false)).await.unwrap();
        assert_eq!(other_team["n"], 2);
        let e = idem
            .run("t", "k", b"{\"x\":1}", call(false))
            .await
            .unwrap_err();
        assert_eq!(e.status, 409);
    }
}
