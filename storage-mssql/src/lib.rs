//! # storage-mssql
//!
//! The scale-out [`StagingStore`](sync_core::StagingStore)
//! ([`SqlServerStagingStore`], its per-org handle [`SqlServerOrgStaging`])
//! and [`WorkQueue`](sync_core::WorkQueue) ([`SqlServerQueue`]) of
//! offline-sync on SQL Server 2019+ / Azure SQL, their configuration
//! ([`SqlServerConfig`], [`OrgLayout`]), and the T-SQL they run ([`sql`]).
//!
//! Built on tiberius 0.13 (TDS 7.3+, rustls with aws-lc-rs, TLS required by
//! default) with a small built-in connection pool: connect (TCP, TLS, login)
//! and every command round trip are bounded by the configured timeouts, and
//! a connection whose command failed at the transport level, timed out, or
//! was cancelled mid-command is discarded rather than reused; one whose
//! command failed otherwise is rolled back before it is reused, so no
//! transaction left open by a failure reaches the next user.
//!
//! ## Layout on the server
//!
//! ```text
//! control database (the connection string's)
//!   <control_schema>.sync_orgs             id, configuration (JSON), incarnation
//!   <control_schema>.sync_org_directory    id, base URL of the deployment serving it
//!   <control_schema>.sync_queue_messages   the work queues (SqlServerQueue)
//!   <control_schema>.sync_queue_dead_letters
//! per org: database <database_prefix><org>, schema dbo      (OrgLayout::DatabasePerOrg)
//!      or: schema <database_prefix><org> in the control db  (OrgLayout::SchemaPerOrg)
//!   <entity>             one typed table per entity: _sync_rowid (the row id's text,
//!                        clustered key), one column per attribute, _sync_version
//!   _sync_info, _sync_meta, _sync_schemas, _sync_profiles, _sync_partitions,
//!   _sync_membership, _sync_tokens, _sync_runs, _sync_mutations
//! ```
//!
//! Attribute types map to `nvarchar(max)` (strings, JSON), `bigint`,
//! `decimal(38,10)`, `float`, `bit`, `datetimeoffset(7)` and
//! `uniqueidentifier` (UUIDs, lookups); see [`sql::column_type`]. Decimals
//! keep 28 integer and 10 fractional digits (more are rounded once, on
//! ingestion; larger values are `InvalidInput`), datetimes 100 ns and
//! whole-minute offsets. In the database-per-org layout each org database is
//! reached through a pool of its own (never `USE`, which Azure SQL refuses).
//!
//! ## Serializing per-org writes (DESIGN.md §6.2)
//!
//! Many server processes write one org's staging data. SQL Server hands out
//! a counter value (the org's `seq`) when a transaction asks for it, but
//! transactions commit in whatever order they finish: writer A takes seq 10,
//! writer B takes seq 11 and commits first, a reader pulls up to 11, then A
//! commits 10 — and the reader's cursor has passed it for good. The staging
//! store therefore takes an application lock per org, `sp_getapplock` with
//! `@LockMode = 'Exclusive', @LockOwner = 'Transaction'`
//! ([`sql::TAKE_ORG_LOCK`] on [`sql::org_lock_resource`]), as the first
//! statement of every staging write transaction (`apply_schema`,
//! `apply_changes`, `put_profile`, `delete_profile`, `purge_tombstones`),
//! reads the org's head only then, and allocates seqs only while holding it;
//! the lock is released by the commit. Writes of one org are thus
//! serialized across processes, so seq order is commit order, while
//! different orgs write in parallel. A pull reads in one `SNAPSHOT`
//! transaction, which sees a prefix of the commits, so it sees a prefix of
//! the seqs. A visibility watermark (read only below the oldest in-flight
//! seq) would let one org's writers overlap, but needs a shared in-flight
//! table and makes every reader wait for the slowest writer; staging writes
//! of one org come from one queue item at a time anyway (`datasync` dedups
//! per org and entity), so the lock costs little. A lock not granted within
//! `lock_timeout` is `Unavailable` (retryable).
//!
//! Commits made through a store notify its [`watch_head`] receivers at once;
//! commits of other processes are seen by polling the org's head every
//! [`SqlServerConfig::poll_interval`] while a receiver is alive.
//!
//! [`watch_head`]: sync_core::OrgStaging::watch_head
//!
//! ## Safe SQL
//!
//! Every identifier is a validated `sync-core` name and is bracket-quoted
//! with `]` doubled; every value is a bound parameter (`@P1…`), and no
//! request binds more than [`sql::MAX_PARAMS`] of them (SQL Server allows
//! 2,100): multi-row statements are split.
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
//!     "CREATE TABLE [sync_org_contoso].[account] ([_sync_rowid] nvarchar(256) COLLATE Latin1_General_100_BIN2 \
//!      NOT NULL PRIMARY KEY CLUSTERED, [accountid] uniqueidentifier NOT NULL, [name] nvarchar(max) NULL, \
//!      [revenue] decimal(38,10) NULL, [_sync_version] bigint NOT NULL)"
//! );
//! ```
//!
//! Opening the store and the queue is one call each; here the configuration
//! is only validated, since no server is at hand:
//!
//! ```
//! use std::time::Duration;
//! use storage_mssql::{OrgLayout, SqlServerConfig};
//! use sync_core::OrgId;
//!
//! let mut config = SqlServerConfig::from_ado(
//!     "server=tcp:db.example.net,1433;database=offline_sync;user=sync;password=secret",
//! );
//! config.layout = OrgLayout::SchemaPerOrg; // Azure SQL: no CREATE DATABASE
//! config.poll_interval = Duration::from_millis(250);
//! config.validate().unwrap();
//! let contoso = OrgId::new("contoso").unwrap();
//! assert_eq!(config.org_container(&contoso).unwrap(), "sync_org_contoso");
//! // let store = storage_mssql::SqlServerStagingStore::connect(&config).await?;
//! // let queue = storage_mssql::SqlServerQueue::connect(&config).await?;
//! // SyncService::builder(Arc::new(store), Arc::new(queue), connector, secret) and
//! // WorkerRunner::start(…) in every process: see the README's scale-out section.
//! ```

mod config;
mod db;
mod decode;
mod error;
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
