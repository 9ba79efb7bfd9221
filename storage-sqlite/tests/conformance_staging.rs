//! The sync-core staging conformance suite on the SQLite store: every
//! check on a fresh store in its own temporary data directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use storage_sqlite::{SqliteStagingStore, StoreOptions};
use sync_core::{OrgConfig, OrgId, OrgStaging, Result, StagingStore};

/// A store that owns its temporary data directory (removed when dropped).
struct TempStore {
    store: SqliteStagingStore,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl StagingStore for TempStore {
    async fn create_org(&self, config: &OrgConfig) -> Result<()> {
        self.store.create_org(config).await
    }
    async fn drop_org(&self, org: &OrgId) -> Result<()> {
        self.store.drop_org(org).await
    }
    async fn orgs(&self) -> Result<Vec<OrgConfig>> {
        self.store.orgs().await
    }
    async fn org_config(&self, org: &OrgId) -> Result<OrgConfig> {
        self.store.org_config(org).await
    }
    async fn org(&self, org: &OrgId) -> Result<Arc<dyn OrgStaging>> {
        self.store.org(org).await
    }
    async fn set_org_location(&self, org: &OrgId, base_url: Option<String>) -> Result<()> {
        self.store.set_org_location(org, base_url).await
    }
    async fn org_location(&self, org: &OrgId) -> Result<Option<String>> {
        self.store.org_location(org).await
    }
    async fn ping(&self) -> Result<()> {
        self.store.ping().await
    }
}

async fn fresh_store() -> Arc<dyn StagingStore> {
    let dir = tempfile::tempdir().unwrap();
    // A small connection cache, so the suite's multi-org checks also
    // exercise closing and reopening org databases.
    let options = StoreOptions { max_open_orgs: 2, ..StoreOptions::default() };
    let store = SqliteStagingStore::open_with(dir.path(), options).await.unwrap();
    Arc::new(TempStore { store, _dir: dir })
}

sync_core::staging_store_conformance!(fresh_store);
