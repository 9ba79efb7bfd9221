//! # sync-client
//!
//! The device side of offline-sync: a local SQLite database kept in step
//! with a sync server through any [`SyncTransport`], with offline edits
//! queued and uploaded on the next sync.
//!
//! * **Local tables** are created and migrated from the server's schemas:
//!   one typed table per entity (`sync:rows:<entity>`), read through a view
//!   with the entity's own name and exactly its columns, so an app reads
//!   them with plain SQL ([`SyncClient::query`]: `SELECT name FROM account`).
//!   Identifiers are validated by sync-core and always double-quoted; every
//!   value is bound.
//! * **Pulls** are applied page by page with the cursor in the same
//!   transaction (several pages per transaction on a long initial sync), so
//!   a kill at any point resumes where the last commit left off, with no row
//!   lost or duplicated.
//! * **Membership**: the client keeps which partition holds which row; a row
//!   leaves the device only when the last partition holding it removes it or
//!   is no longer listed.
//! * **Integrity**: when a pull completes, each partition's checksum is
//!   compared with the server's; a partition that differs is read again from
//!   the start (see *Repairs* below).
//! * **Offline edits** ([`SyncClient::insert`], [`SyncClient::update`],
//!   [`SyncClient::delete`]) show at once, are queued with client-made UUID
//!   ids and the version they were based on, are pushed on sync (retried with
//!   the same ids, so the server applies each once) and leave the queue when
//!   acknowledged. A pull never overwrites a pending edit: the server's row
//!   goes to a *shadow* and the edits are applied over it again. Conflicts
//!   and rejections are never dropped: they arrive as [`SyncEvent::Refused`]
//!   and stay in the `sync:conflicts` table ([`SyncClient::conflicts`]) until
//!   dismissed.
//! * **Resync**: a cursor the server refuses (`ResyncRequired`) starts a read
//!   from scratch. Rows stay visible meanwhile; those the new read does not
//!   bring back are dropped when it completes. Pending edits survive.
//!
//! ## Repairs
//!
//! The cursor is opaque, so the client cannot rewind a single partition in
//! it. A partition whose checksum does not match is repaired with a second,
//! temporary cursor: its memberships are set aside, a read from the start
//! applies only the batches of the partitions under repair (others are
//! skipped), and when that read completes the main cursor resumes — it
//! re-delivers anything that changed meanwhile, which is harmless because
//! every op carries the row's current state. Rows set aside and not brought
//! back are dropped at the end. The cost is one full read of the caller's
//! data over the network, but only the affected partitions are rewritten
//! locally, the rest of the copy stays untouched and visible, and pending
//! edits are kept. A column whose type changes on the server triggers the
//! same repair for its entity's partitions.
//!
//! ## Example
//!
//! ```
//! # use std::sync::Arc;
//! # use sync_client::SyncClient;
//! # use sync_core::protocol::*;
//! # struct Offline;
//! # #[async_trait::async_trait]
//! # impl sync_core::SyncTransport for Offline {
//! #     async fn profile(&self) -> sync_core::Result<ProfileResponse> { Err(sync_core::Error::unavailable("offline")) }
//! #     async fn pull(&self, _: &PullRequest) -> sync_core::Result<PullResponse> { Err(sync_core::Error::unavailable("offline")) }
//! #     async fn push(&self, _: &PushRequest) -> sync_core::Result<PushResponse> { Err(sync_core::Error::unavailable("offline")) }
//! # }
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // Any SyncTransport: transport-http's HttpSyncTransport in an app, the
//! // in-process transport in tests. This one is always offline.
//! let transport: Arc<dyn sync_core::SyncTransport> = Arc::new(Offline);
//! let dir = tempfile::tempdir().unwrap();
//! let mut config = sync_client::ClientConfig::default();
//! config.backoff.retries = 0;
//! let client = SyncClient::builder(dir.path().join("device.db"), transport).config(config).open().unwrap();
//!
//! // Offline: the sync fails with a retryable error and nothing is lost.
//! let err = client.sync().await.unwrap_err();
//! assert!(err.is_retryable());
//! let status = client.status().await.unwrap();
//! assert_eq!(status.pending, 0);
//! assert!(!status.has_cursor);
//! # });
//! ```

mod client;
mod control;
mod error;
mod events;
mod sql;
mod store;

pub use client::{ClientConfig, EventCallback, LiveOptions, SyncClient, SyncClientBuilder};
pub use control::{BackoffConfig, CancelToken};
pub use error::{ClientError, Result};
pub use events::{EntityCount, PartitionStatus, Progress, Status, StreamKind, SyncEvent, SyncReport};
pub use store::{ConflictRecord, LocalWrite, PendingMutation, QueryResult, RefusalKind, StoreOptions};
pub use sync_core::SyncTransport;
