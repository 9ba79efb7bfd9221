//! Cancellation and retry backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// A cancellation signal shared by a caller and the sync loop. Cloning gives
/// another handle on the same signal.
#[derive(Clone, Debug, Default)]
pub struct CancelToken {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: running syncs stop at the next safe point (everything
    /// committed stays committed) and return [`crate::ClientError::Cancelled`].
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Completes when the token is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Exponential backoff with jitter for retrying `Unavailable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How many retries one call gets inside [`crate::SyncClient::sync`]
    /// before the error is returned (the live loop retries without end).
    pub retries: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { initial: Duration::from_millis(200), max: Duration::from_secs(30), retries: 5 }
    }
}

/// The state of one backoff sequence.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    seed: AtomicU64,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        Backoff { config, attempt: 0, seed: AtomicU64::new(seed) }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay: `initial · 2^attempt`, capped, with ±25 % jitter, or
    /// the server's `retry_after` when it gave one (capped too).
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let exp = self.config.initial.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let base = retry_after.unwrap_or(exp).min(self.config.max);
        // xorshift for jitter: no need for a real RNG here.
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        let jitter = (x % 501) as f64 / 1000.0 + 0.75; // 0.75 ..= 1.25
        base.mul_f64(jitter).min(self.config.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            retries: 3,
        });
        let d1 = b.next_delay(None);
        assert!(d1 >= Duration::from_millis(75) && d1 <= Duration::from_millis(125));
        let _ = b.next_delay(None);
        for _ in 0..10 {
            assert!(b.next_delay(None) <= Duration::from_secs(1));
        }
        assert!(b.next_delay(Some(Duration::from_millis(10))) <= Duration::from_millis(13));
        b.reset();
        assert_eq!(b.attempts(), 0);
    }

    #[tokio::test]
    async fn cancel_wakes_waiters() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let h = tokio::spawn(async move { t2.cancelled().await });
        tokio::task::yield_now().await;
        t.cancel();
        h.await.unwrap();
        assert!(t.is_cancelled());
        t.cancelled().await;
    }
}
