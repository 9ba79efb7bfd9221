//! The sync-core work-queue conformance suite on the SQLite queue, durable:
//! every `open` is a new connection to the same database file, as a
//! restarted process would make.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use storage_sqlite::{QueueOptions, SqliteQueue};
use sync_core::WorkQueue;
use sync_core::conformance::queue::{CONFORMANCE_MAX_DELIVERIES, QueueHarness};

struct Harness {
    dir: tempfile::TempDir,
}

#[async_trait]
impl QueueHarness for Harness {
    async fn open(&self) -> Arc<dyn WorkQueue> {
        let options = QueueOptions { max_deliveries: CONFORMANCE_MAX_DELIVERIES, ..QueueOptions::default() };
        Arc::new(SqliteQueue::open_in_dir(self.dir.path(), options).await.unwrap())
    }
    fn durable(&self) -> bool {
        true
    }
}

sync_core::work_queue_conformance!(|| async { Harness { dir: tempfile::tempdir().unwrap() } });
