//! The sync-core work-queue conformance suite on SQL Server, through the
//! public `work_queue_conformance!` macro. It runs when `MSSQL_TEST_URL`
//! holds an ADO.NET connection string of a server the tests may write to
//! (e.g. `server=tcp:localhost,1433;user=sa;password=…;TrustServerCertificate=true`);
//! without it, each check is a test that prints that it skipped and why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(mssql_test_server)]
mod server {
    use std::sync::Arc;

    use async_trait::async_trait;
    use storage_mssql::{SqlServerConfig, SqlServerQueue};
    use sync_core::WorkQueue;
    use sync_core::conformance::queue::{CONFORMANCE_MAX_DELIVERIES, QueueHarness};

    struct Harness {
        config: SqlServerConfig,
    }

    #[async_trait]
    impl QueueHarness for Harness {
        async fn open(&self) -> Arc<dyn WorkQueue> {
            Arc::new(SqlServerQueue::connect(&self.config).await.unwrap())
        }
        fn durable(&self) -> bool {
            true
        }
    }

    async fn harness() -> Harness {
        let url = std::env::var("MSSQL_TEST_URL").expect("MSSQL_TEST_URL was set at build time");
        let mut config = SqlServerConfig::from_ado(url);
        config.max_deliveries = CONFORMANCE_MAX_DELIVERIES;
        Harness { config }
    }

    sync_core::work_queue_conformance!(harness);
}

#[cfg(not(mssql_test_server))]
mod skipped {
    sync_core::work_queue_conformance!(
        skip = "skipped: MSSQL_TEST_URL is not set, so there is no SQL Server to run the work-queue \
                conformance suite against; set it to an ADO.NET connection string to run it"
    );
}
