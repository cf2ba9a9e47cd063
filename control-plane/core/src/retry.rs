//! How often and how long a claim is retried.

use std::time::Duration;

/// The retry budget of one claim: attempts (the first at once), the backoff between them, and
/// an overall timeout within which a new attempt may start.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Up to this fraction of each delay is added at random, so retries spread out.
    pub jitter: f64,
    /// No attempt starts after this much time; `None` leaves only `attempts`.
    pub timeout: Option<Duration>,
}

impl RetryPolicy {
    /// A single attempt (the controller's reconcile requeue is its retry).
    pub fn once() -> Self {
        RetryPolicy {
            attempts: 1,
            first_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            jitter: 0.0,
            timeout: None,
        }
    }

    /// Upstream's claim backoff (`wait.ExponentialBackoff`): 10 attempts, 1 s doubling with
    /// 30 % jitter, at most 16 s apart, within the claim timeout.
    pub fn upstream(timeout: Option<Duration>) -> Self {
        RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(16),
            jitter: 0.3,
            timeout,
        }
    }

    /// The pause before retry `n` (1 = the second attempt); `unit` in [0, 1) draws the jitter.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        let base = self
            .first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        base.mul_f64(1.0 + self.jitter * unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_backoff_doubles_to_the_cap_with_bounded_jitter() {
        let p = RetryPolicy::upstream(None);
        let secs: Vec<u64> = (1..10).map(|n| p.delay(n, 0.0).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 16, 16, 16, 16]);
        assert_eq!(p.delay(2, 0.999).as_millis(), 2599);
        assert_eq!(p.delay(40, 0.0), Duration::from_secs(16));
        assert_eq!(RetryPolicy::once().attempts, 1);
    }
}
