//! # storage-sqlite
//!
//! The embedded default [`StagingStore`](sync_core::StagingStore) and
//! [`WorkQueue`](sync_core::WorkQueue) of offline-sync, on SQLite
//! (rusqlite, bundled): [`SqliteStagingStore`] and [`SqliteQueue`].
//!
//! ## On disk
//!
//! A data directory holds plain SQLite files a person can open with the
//! `sqlite3` shell:
//!
//! ```text
//! <data dir>/
//!   control.sqlite        orgs (id, config JSON), org_directory (id, base_url),
//!                         queue_messages, queue_dead_letters
//!   orgs/<org>.sqlite     one per org (removed with its -wal/-shm on drop_org)
//!   LOCK                  held by the process that has the store open
//! ```
//!
//! An org database has one table per staged entity, named after the entity,
//! with one column per attribute — `TEXT` for strings, decimals (exact,
//! canonical text), datetimes (RFC 3339, UTC), UUIDs, lookups and JSON;
//! `INTEGER` for integers and booleans (0/1); `REAL` for floats — the primary
//! key as the table's key, and `_sync_version` (the seq of the row's last
//! change). Beside them, the `_sync_` tables:
//!
//! | table | holds |
//! | --- | --- |
//! | `_sync_meta` | `head` (latest seq), `schema_version`, `tombstone_floor`, layout `format` |
//! | `_sync_schemas` | each entity's metadata (JSON), schema hash, row count |
//! | `_sync_profiles` | profiles (JSON) |
//! | `_sync_partitions` | partition key → small id `pid`, with the partition's checksum (sum, count) |
//! | `_sync_membership` | `(pid, entity, row_id)` → `seq`, `version`, `removed`: the latest op per partition and row; indexed by `(pid, seq)` |
//! | `_sync_membership_view` | the same with the partition key spelled out |
//! | `_sync_tokens` | each entity's committed source change token |
//! | `_sync_runs` | last run, last success, last error, rows of the last run |
//! | `_sync_mutations` | the push journal: mutation id → fingerprint, outcome, checkpoint |
//!
//! Entity names starting with `_sync_` or `sqlite_`, an attribute named
//! `_sync_version`, and two entities whose names differ only in case are
//! refused with `InvalidInput` (SQLite names are case-insensitive).
//!
//! ## Guarantees and how they are kept
//!
//! * **Atomic ingestion**: `apply_changes` writes rows, deletes, membership,
//!   checksums, the head and the source token in one `BEGIN IMMEDIATE`
//!   transaction; WAL with `synchronous = NORMAL` makes a commit durable
//!   against a process crash (a power loss may lose the last commits, never
//!   half of one).
//! * **No skipped commit**: each org has one writer connection and every
//!   write transaction takes SQLite's write lock, so writes are serialized
//!   per org and seq order is commit order; a pull reads in one snapshot.
//! * **Never blocks the runtime**: every SQLite call runs on tokio's
//!   blocking pool.
//! * **Bounded resources**: at most [`StoreOptions::max_open_orgs`] org
//!   databases stay open (least recently used ones are closed), so thousands
//!   of orgs fit within a file-descriptor limit.
//! * **Safe SQL**: identifiers come from validated `sync-core` names and are
//!   double-quoted; every value is a bound parameter.
//!
//! ## Example
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use storage_sqlite::{QueueOptions, SqliteQueue, SqliteStagingStore};
//! use sync_core::staging::PullPlan;
//! use sync_core::{
//!     Attribute, AttributeType, ChangePage, ChangeToken, ColumnName, EntityMetadata, EntityName, Message,
//!     OrgConfig, OrgId, OrgSourceConfig, Profile, ProfileItem, ProfileName, QueueName, Row, RowId,
//!     StagingStore, Value, WorkQueue,
//! };
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStagingStore::open(dir.path()).await.unwrap();
//! let org = OrgId::new("contoso").unwrap();
//! let source = OrgSourceConfig { kind: "demo".into(), settings: Default::default() };
//! store.create_org(&OrgConfig::new(org.clone(), source)).await.unwrap();
//! let staging = store.org(&org).await.unwrap();
//!
//! // A typed table per entity.
//! let col = |s: &str| ColumnName::new(s).unwrap();
//! let account = EntityName::new("account").unwrap();
//! let meta = EntityMetadata::new(
//!     account.clone(),
//!     col("accountid"),
//!     vec![
//!         Attribute::new(col("accountid"), AttributeType::Integer),
//!         Attribute::new(col("name"), AttributeType::String),
//!     ],
//! )
//! .unwrap();
//! staging.apply_schema(&meta).await.unwrap();
//!
//! // A profile: every account goes offline.
//! let profile = Profile {
//!     name: ProfileName::new("sales").unwrap(),
//!     roles: ["salesperson".to_owned()].into(),
//!     items: vec![ProfileItem::new(account.clone(), "")],
//! };
//! staging.put_profile(&profile).await.unwrap();
//!
//! // Rows, membership and the source token commit together.
//! let page = ChangePage {
//!     upserts: vec![Row::new(RowId::new("1").unwrap(), [(col("name"), Value::from("Fabrikam"))])],
//!     next_token: Some(ChangeToken("t1".into())),
//!     ..ChangePage::default()
//! };
//! let outcome = staging.apply_changes(&account, &page).await.unwrap();
//! assert_eq!(outcome.upserted, 1);
//! assert_eq!(staging.source_token(&account).await.unwrap(), Some(ChangeToken("t1".into())));
//!
//! // A device pulls its partition from the start.
//! let partition = staging.pull(&PullPlan { partitions: vec![], max_rows: 10, max_bytes: 1 << 20 }).await.unwrap();
//! assert!(partition.changes.is_empty());
//! let key = sync_core::Partition {
//!     profile: profile.name.clone(),
//!     item: profile.items[0].item_id(),
//!     entity: account.clone(),
//!     params: Default::default(),
//! }
//! .key();
//! let plan = PullPlan { partitions: vec![(key, sync_core::Seq::ZERO)], max_rows: 100, max_bytes: 1 << 20 };
//! let page = staging.pull(&plan).await.unwrap();
//! assert_eq!(page.changes.len(), 1);
//! assert!(!page.more);
//!
//! // The queue lives in the same directory's control.sqlite.
//! let queue = SqliteQueue::open_in_dir(dir.path(), QueueOptions::default()).await.unwrap();
//! let datasync = QueueName::new("datasync").unwrap();
//! queue.send(&datasync, Message::json(&"sync contoso/account").unwrap().with_dedup_key("contoso/account"))
//!     .await
//!     .unwrap();
//! let delivery = queue.receive(&datasync, Duration::from_secs(30)).await.unwrap().unwrap();
//! queue.complete(&delivery).await.unwrap();
//! # });
//! ```

mod error;
mod journal;
mod membership;
mod org_db;
mod queue;
mod sql;
mod store;
mod table;

pub use queue::{QueueOptions, SqliteQueue};
pub use store::{CONTROL_FILE, ORGS_DIR, SqliteOrgStaging, SqliteStagingStore, StoreOptions};
