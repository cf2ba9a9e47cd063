//! The create rate limiter: a token bucket in front of create-on-no-stock, so a burst of claims
//! against an empty pool cannot flood the API server with sandbox creates.

use std::sync::Mutex;

use tokio::time::Instant;

/// Upstream's `--max-create-qps` (per replica).
pub const DEFAULT_CREATE_PER_SECOND: f64 = 49.0;
pub const DEFAULT_CREATE_BURST: u32 = 49;

/// A token bucket: `burst` creates at once, refilled at `per_second`. Non-blocking: a denied
/// create is a retriable claim failure, as upstream's `Allow()`.
#[derive(Debug)]
pub struct CreateLimiter {
    per_second: f64,
    burst: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl CreateLimiter {
    /// A full bucket.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        CreateLimiter {
            per_second: per_second.max(0.0),
            burst,
            bucket: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token if one is there.
    pub fn allow(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.per_second;
        *b = ((b.0 + refill).min(self.burst), now);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_refill_rate() {
        let l = CreateLimiter::new(10.0, 3);
        assert_eq!((0..5).filter(|_| l.allow()).count(), 3, "the burst");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.allow(), "one token per 100 ms");
        assert!(!l.allow());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..10).filter(|_| l.allow()).count(),
            3,
            "never above burst"
        );
    }
}
