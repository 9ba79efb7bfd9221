//! The staging conformance suite on the in-memory staging store.

#![cfg(feature = "conformance")]

use std::sync::Arc;

use sync_core::StagingStore;
use sync_core::memory::MemoryStagingStore;

sync_core::staging_store_conformance!(|| async {
    Arc::new(MemoryStagingStore::new()) as Arc<dyn StagingStore>
});
