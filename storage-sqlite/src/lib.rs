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
//! `INTEGER` for integers and booleans (0/1); `REAL` for floats — the
//! primary-key attribute `NOT NULL UNIQUE`, and three columns of the store's:
//! `_sync_rid` (the row's number, never reused), `_sync_version` (the seq of
//! the row's last change) and `_sync_parts` (the row's entries in the
//! membership log, `pid:seq`, `~` marking a tombstone). Beside them, the
//! `_sync_` tables:
//!
//! | table | holds |
//! | --- | --- |
//! | `_sync_meta` | `head` (latest seq), `schema_version`, `tombstone_floor`, layout `format` |
//! | `_sync_info` | `incarnation`: a UUID of this creation of the org |
//! | `_sync_schemas` | per entity: its id `eid`, metadata (JSON), schema hash, row count, next row number |
//! | `_sync_profiles` | profiles (JSON) |
//! | `_sync_partitions` | partition key → small id `pid`, its checksum (sum, count), and its entity |
//! | `_sync_membership` | the membership log, keyed by `id = pid << 40 \| seq`: entity, row number, version, removed, and the row id of a remove; one live entry per (partition, row) |
//! | `_sync_stale` | ids of the log's stale entries: puts replaced by a newer version of their row (or its delete), deleted together once they are many |
//! | `_sync_membership_view` | the live log (stale entries left out) with partition keys, entity names and seqs spelled out |
//! | `_sync_graves` | per deleted row (entity id, key): its tombstones in the log, so a row created again with that key replaces them; dropped with the tombstones |
//! | `_sync_tokens` | each entity's committed source change token |
//! | `_sync_runs` | last run, last success, last error, rows of the last run |
//! | `_sync_mutations` | the push journal: mutation id → fingerprint, outcome, checkpoint |
//!
//! Membership is an op log per partition: a partition's entries form one
//! contiguous key range in seq order, so a pull scans its range (joined with
//! the rows) and fresh rows append. When a row changes, the entry its
//! `_sync_parts` points at in each partition is replaced by the new op, so
//! the log keeps only the latest op per (partition, row) live without an
//! index on rows, and recomputing membership after a profile or schema
//! change needs only the rows. A replaced put whose row moved to a newer
//! version stays in the log as a stale entry until many have gathered
//! (an eighth of the live puts): a pull skips it, as its version is not its
//! row's, and deleting them together, in key order, writes each page of the
//! log once instead of once per commit that touched it. Entity names starting with `_sync_` or `sqlite_`,
//! attributes named like the store's columns, and two entities whose names
//! differ only in case are refused with `InvalidInput` (SQLite names are
//! case-insensitive).
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
//! * **Checkpoints beside the writer**: an org's WAL is copied back into
//!   its database by a background task once it holds
//!   [`StoreOptions::wal_autocheckpoint`] pages, on a connection of its own
//!   (`PASSIVE`: it waits for nobody), so a commit never pays for it; the
//!   writer checkpoints itself only at four times that, which bounds the
//!   `-wal` file. [`SqliteStagingStore::checkpoint`] copies an org's whole
//!   WAL back on request and empties it (before a file-level backup or a
//!   shutdown).
//! * **Shared reads**: org databases are memory-mapped
//!   ([`StoreOptions::mmap_size`]), so readers read pages in place from the
//!   operating system's cache instead of each filling a cache of its own.
//! * **Rows prepared beside the writer**: a page of a few thousand rows or
//!   more is checked against its schema and planned into partitions, in
//!   chunks, by a scoped helper thread while the writer stages the rows
//!   already prepared; when the helper has not begun the writer's next
//!   chunk (a checkpoint holds the other CPU), the writer prepares it
//!   itself rather than wait. A bad row anywhere still rolls the whole
//!   page back.
//! * **Bounded resources**: at most [`StoreOptions::max_open_orgs`] org
//!   databases stay open (least recently used ones are closed), so thousands
//!   of orgs fit within a file-descriptor limit.
//! * **Crash safety**: tested by killing a process with SIGKILL at random
//!   points of ingestion and queue consumption (`tests/crash.rs`).
//! * **Watch**: [`watch_head`](sync_core::OrgStaging::watch_head) follows
//!   commits made through this store; a store sharing the directory with
//!   another process (which the `LOCK` prevents) would not see its commits.
//! * **"No changes" without SQLite**: profiles, schemas, the schema version,
//!   the tombstone floor and the checksums of complete pulls are remembered
//!   per org and used only while no write transaction of the org has ended
//!   since they were read (every write passes through this store, which owns
//!   the directory). An up-to-date device's poll is then answered from
//!   memory, with the same head and checksums a read would give.
//! * **Safe SQL**: identifiers come from validated `sync-core` names and are
//!   double-quoted; every value is a bound parameter.
//!
//! ## Performance
//!
//! `cargo bench -p storage-sqlite --bench ingest_pull` stages 1,000,000
//! CRM-like rows under a two-item profile (one item per owner) and pulls
//! them back, beside raw rusqlite on the same rows in the same run, and
//! prints the ratios (`SQLITE_BENCH_ROWS` makes it smaller; the file's header
//! lists the other knobs). Both sides' ingest ends with the WAL copied back
//! into the database file. Where the time goes: a change page is one
//! transaction, so random keys make each commit write (to the WAL, then
//! again at checkpoints) most of the pages they touch, the key index's for
//! new rows and the table's for updates, which a single raw transaction
//! writes once. Checkpoints run beside the writer, so that copy is off the
//! commit path, but the WAL writes are not: for 1,000,000 updates in random
//! order, raw rusqlite committing every 5,000 rows took 30 s, the store 23 s,
//! and raw's single transaction 9–11 s. Each row costs a
//! membership entry per partition, and an update replaces those entries,
//! whose deletion (deferred, see above) still rewrites the log's pages in
//! each compaction; and a pulled row
//! is decoded into typed values, in a [`PulledRow`](sync_core::PulledRow)
//! whose column list is shared by every row of the page. Measured on
//! 1,000,000 rows: stepping the pull's join of a partition's entries with
//! their rows and reading every column costs about 1.5 times raw's ordered
//! scan of one table (the join finds each row by its number, and SQLite
//! steps there cheaply only when it is the previous row's number plus one:
//! a row outside the partition in between costs a descent from the root);
//! decoding into typed values, ids and changes costs
//! about as much again; each page has a fixed cost of about 20 µs (its
//! snapshot and one lookup per partition: the entities' tables, with their
//! SQL and decoders, are kept per schema version); and the caller frees the
//! page's values on another thread than the one that allocated them.
//! glibc's malloc makes those cross-thread frees cost about a tenth of a
//! pull (it consolidates the freed chunks into the reader's arena when the
//! page's large buffer goes),
//! so the bench and the embedded server allocate with mimalloc; a host
//! service that links this store should consider the same.
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
//! let outcome = staging.apply_changes(&account, page).await.unwrap();
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
mod membership;
mod org_db;
mod queue;
mod sql;
mod store;
mod table;

pub use queue::{QueueOptions, SqliteQueue};
pub use store::{CONTROL_FILE, ORGS_DIR, SqliteOrgStaging, SqliteStagingStore, StoreOptions};
