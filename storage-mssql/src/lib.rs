//! # storage-mssql
//!
//! The scale-out [`WorkQueue`](sync_core::WorkQueue) of offline-sync on SQL
//! Server / Azure SQL ([`SqlServerQueue`]), its configuration
//! ([`SqlServerConfig`]), and the T-SQL of the staging store ([`sql`]).
//!
//! Built on tiberius 0.13 (TDS 7.3+, rustls with aws-lc-rs, TLS required by
//! default) with a small built-in connection pool: connect (TCP, TLS, login)
//! and every command round trip are bounded by the configured timeouts, and
//! a connection whose command failed at the transport level, timed out, or
//! was cancelled mid-command is discarded rather than reused.
//!
//! ## Serializing per-org writes (DESIGN.md §6.2)
//!
//! Many server processes write one org's staging data. SQL Server hands out
//! a counter value (the org's `seq`) when a transaction asks for it, but
//! transactions commit in whatever order they finish: writer A takes seq 10,
//! writer B takes seq 11 and commits first, a reader pulls up to 11, then A
//! commits 10 — and the reader's cursor has passed it for good. The staging
//! store (not yet part of this crate; its statements are in [`sql`]) therefore takes an application lock per org, `sp_getapplock` with
//! `@LockMode = 'Exclusive', @LockOwner = 'Transaction'`
//! ([`sql::TAKE_ORG_LOCK`] on [`sql::org_lock_resource`]), as the first
//! statement of every staging write transaction, and allocates seqs only
//! while holding it; the lock is released by the commit. Writes of one org
//! are thus serialized across processes, so seq order is commit order, while
//! different orgs write in parallel. A visibility watermark (read only below
//! the oldest in-flight seq) would let one org's writers overlap, but needs a
//! shared in-flight table and makes every reader wait for the slowest writer;
//! staging writes of one org come from one queue item at a time anyway
//! (`datasync` dedups per org and entity), so the lock costs little.
//!
//! ## Safe SQL
//!
//! Every identifier is a validated `sync-core` name and is bracket-quoted
//! with `]` doubled; every value is a bound parameter (`@P1…`).
//!
//! ## Example
//!
//! Generating the staging table of an entity needs no server:
//!
//! ```
//! use storage_mssql::sql;
//! use sync_core::{Attribute, AttributeType, ColumnName, EntityMetadata, EntityName};
//!
//! let col = |s: &str| ColumnName::new(s).unwrap();
//! let meta = EntityMetadata::new(
//!     EntityName::new("account").unwrap(),
//!     col("accountid"),
//!     vec![
//!         Attribute::new(col("accountid"), AttributeType::Uuid),
//!         Attribute::new(col("name"), AttributeType::String),
//!         Attribute::new(col("revenue"), AttributeType::Decimal),
//!     ],
//! )
//! .unwrap();
//! let ddl = sql::create_entity_table("sync_org_contoso", &meta).unwrap();
//! assert_eq!(
//!     ddl,
//!     "CREATE TABLE [sync_org_contoso].[account] ([accountid] uniqueidentifier NOT NULL, \
//!      [name] nvarchar(max) NULL, [revenue] decimal(38,10) NULL, [_sync_version] bigint NOT NULL, \
//!      CONSTRAINT [PK_account] PRIMARY KEY CLUSTERED ([accountid]))"
//! );
//!
//! // Connecting is one call; this configuration is only validated here.
//! let config = storage_mssql::SqlServerConfig::from_ado(
//!     "server=tcp:db.example.net,1433;database=offline_sync;user=sync;password=secret",
//! );
//! config.validate().unwrap();
//! // let queue = storage_mssql::SqlServerQueue::connect(&config).await?;
//! ```

mod config;
mod db;
mod error;
mod journal;
mod org;
mod pool;
mod queue;
pub mod sql;
mod store;
mod values;

pub use config::{ConnectionTarget, OrgLayout, SqlServerConfig};
pub use org::SqlServerOrgStaging;
pub use queue::SqlServerQueue;
pub use store::SqlServerStagingStore;
