//! The sync-core staging-store conformance suite on SQL Server, through the
//! public `staging_store_conformance!` macro, once per org layout (a
//! database per org, a schema per org). It runs when `MSSQL_TEST_URL` holds
//! an ADO.NET connection string of a server the tests may write to (e.g.
//! `server=tcp:localhost,1433;database=offline_sync_test;user=sa;password=…;TrustServerCertificate=true`;
//! the database-per-org run needs `CREATE ANY DATABASE`); without it, each
//! check is reported as ignored with the reason.
//!
//! Every check gets a store of its own: a unique control schema and a
//! unique database (or schema) prefix, so checks run in parallel against
//! one server without seeing each other, and everything a check created is
//! dropped (`uninstall`) when its store is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(mssql_test_server)]
mod server {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use async_trait::async_trait;
    use storage_mssql::{OrgLayout, SqlServerConfig, SqlServerStagingStore};
    use sync_core::{OrgConfig, OrgId, OrgStaging, Result, StagingStore};

    /// A store that uninstalls itself (its orgs, its control tables) when
    /// the check drops it.
    struct Scratch(SqlServerStagingStore);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let config = self.0.config().clone();
            // Dropped inside the check's runtime, which this thread blocks:
            // clean up on a thread with a runtime and connections of its own
            // (the store's pooled connections belong to the blocked runtime).
            let cleanup = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async { SqlServerStagingStore::connect(&config).await?.uninstall().await })
            });
            if let Ok(Err(e)) = cleanup.join() {
                eprintln!("cleaning up a conformance store failed: {e}");
            }
        }
    }

    #[async_trait]
    impl StagingStore for Scratch {
        async fn create_org(&self, config: &OrgConfig) -> Result<()> {
            self.0.create_org(config).await
        }
        async fn drop_org(&self, org: &OrgId) -> Result<()> {
            self.0.drop_org(org).await
        }
        async fn orgs(&self) -> Result<Vec<OrgConfig>> {
            self.0.orgs().await
        }
        async fn org_config(&self, org: &OrgId) -> Result<OrgConfig> {
            self.0.org_config(org).await
        }
        async fn org(&self, org: &OrgId) -> Result<Arc<dyn OrgStaging>> {
            self.0.org(org).await
        }
        async fn set_org_location(&self, org: &OrgId, base_url: Option<String>) -> Result<()> {
            self.0.set_org_location(org, base_url).await
        }
        async fn org_location(&self, org: &OrgId) -> Result<Option<String>> {
            self.0.org_location(org).await
        }
        async fn ping(&self) -> Result<()> {
            self.0.ping().await
        }
    }

    /// A name no other check (of this or another test process) uses.
    fn unique() -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        format!("{:x}{:x}{}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::SeqCst))
    }

    async fn store(layout: OrgLayout) -> Arc<dyn StagingStore> {
        let url = std::env::var("MSSQL_TEST_URL").expect("MSSQL_TEST_URL was set at build time");
        let mut config = SqlServerConfig::from_ado(url);
        let id = unique();
        config.layout = layout;
        config.control_schema = format!("ost_{id}");
        config.database_prefix = format!("ost_{id}_");
        config.poll_interval = Duration::from_millis(100);
        Arc::new(Scratch(SqlServerStagingStore::connect(&config).await.expect("connect to MSSQL_TEST_URL")))
    }

    mod database_per_org {
        sync_core::staging_store_conformance!(|| super::store(storage_mssql::OrgLayout::DatabasePerOrg));
    }

    mod schema_per_org {
        sync_core::staging_store_conformance!(|| super::store(storage_mssql::OrgLayout::SchemaPerOrg));
    }
}

#[cfg(not(mssql_test_server))]
mod skipped {
    mod database_per_org {
        sync_core::staging_store_conformance!(
            skip = "skipped: MSSQL_TEST_URL is not set, so there is no SQL Server to run the staging-store \
                    conformance suite (database per org) against; set it to an ADO.NET connection string to run it"
        );
    }

    mod schema_per_org {
        sync_core::staging_store_conformance!(
            skip = "skipped: MSSQL_TEST_URL is not set, so there is no SQL Server to run the staging-store \
                    conformance suite (schema per org) against; set it to an ADO.NET connection string to run it"
        );
    }
}
