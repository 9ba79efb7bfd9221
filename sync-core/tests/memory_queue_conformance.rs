//! The work-queue conformance suite on the in-memory queue.
#![cfg(feature = "conformance")]

use sync_core::conformance::queue::MemoryQueueHarness;

sync_core::work_queue_conformance!(|| async { MemoryQueueHarness::new() });
