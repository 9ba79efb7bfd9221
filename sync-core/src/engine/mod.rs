//! The workers: provisioning and staging sync, and a runner for both.
//!
//! Both consume a [`WorkQueue`] with at-least-once
//! delivery, so both are idempotent: handling a message twice leaves the same
//! staged state as handling it once.

mod batch;
mod provisioner;
mod retention;
mod runner;
mod sources;
mod staging_sync;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use provisioner::Provisioner;
pub use retention::TombstoneJanitor;
pub use runner::{WorkerRunner, WorkerSet};
pub use sources::SourceCache;
pub use staging_sync::{RunOutcome, StagingSync};

use crate::error::Result;
use crate::queue::{Delivery, WorkQueue};

/// Knobs shared by the workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// Lease taken on a message; extended while a long run goes on.
    #[serde(with = "millis")]
    pub lease: Duration,
    /// Rows asked of the source per change page.
    pub page_size: usize,
    /// Most change data staged in one transaction, in bytes of the rows'
    /// JSON form ([`Row::approx_size`](crate::Row::approx_size)): the
    /// staging worker merges consecutive change pages (the last op of each
    /// row wins) until they reach this size, then commits them with the
    /// last page's token while it reads the next page. A commit rewrites
    /// every database page it touched, so larger transactions write far
    /// less; the price is memory (rows take several times their JSON size
    /// in memory: CRM-like rows about 1.1 KB for 185 bytes of JSON, so the
    /// default holds about 100 MB per running stager), rows becoming
    /// visible later, and that a page the
    /// store rejects fails its whole batch (nothing of the batch is
    /// staged; the run's error says why). At least one page goes in each
    /// transaction; 0 commits every page on its own.
    pub commit_bytes: usize,
    /// Longest a merged page waits for more pages before it is committed,
    /// so that rows of a slow source still become visible promptly.
    #[serde(with = "millis")]
    pub commit_interval: Duration,
    /// How long an idle worker waits before asking the queue again.
    #[serde(with = "millis")]
    pub idle_poll: Duration,
    /// First retry delay after a transient failure; doubles per delivery.
    #[serde(with = "millis")]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[serde(with = "millis")]
    pub retry_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            lease: Duration::from_secs(60),
            page_size: 1000,
            commit_bytes: 16 << 20,
            commit_interval: Duration::from_secs(2),
            idle_poll: Duration::from_millis(500),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

impl WorkerConfig {
    /// The retry delay after the `delivery_count`-th failed delivery.
    pub fn backoff(&self, delivery_count: u32) -> Duration {
        let exp = delivery_count.saturating_sub(1).min(20);
        self.retry_base.saturating_mul(1u32 << exp).min(self.retry_max)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Completes, retries or dead-letters a delivery after handling it:
/// success completes; a retryable error abandons with backoff; any other
/// error is poison and goes to the dead letters with the error as reason.
pub(crate) async fn settle(
    queue: &dyn WorkQueue,
    delivery: &Delivery,
    result: &Result<()>,
    config: &WorkerConfig,
) -> Result<()> {
    match result {
        Ok(()) => queue.complete(delivery).await,
        Err(e) if e.is_retryable() => {
            let delay = config.backoff(delivery.delivery_count);
            tracing::warn!(queue = %delivery.queue, message = %delivery.message_id,
                delivery = delivery.delivery_count, retry_in_ms = delay.as_millis() as u64, error = %e,
                "transient failure; will retry");
            queue.abandon(delivery, delay).await
        }
        Err(e) => {
            tracing::error!(queue = %delivery.queue, message = %delivery.message_id, error = %e,
                "poison message moved to dead letters");
            queue.dead_letter(delivery, &e.to_string()).await
        }
    }
}
