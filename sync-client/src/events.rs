//! What the client tells the app while it syncs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sync_core::{Checksum, EntityName, MutationId, PartitionKey, RowId, Seq};

use crate::store::ConflictRecord;

/// Which read of the server a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// The regular pull.
    Main,
    /// A re-read of partitions whose checksum did not match.
    Repair,
}

/// Progress of a pull, reported after every commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Which read.
    pub stream: StreamKind,
    /// Pages applied so far in this read.
    pub pages: u64,
    /// Rows put so far in this read.
    pub rows: u64,
    /// Removes applied so far in this read.
    pub removes: u64,
    /// Whether the server has more right away.
    pub has_more: bool,
}

/// An event of the sync loop. Delivered through
/// [`SyncClient::subscribe`](crate::SyncClient::subscribe) and the callback
/// set with [`SyncClientBuilder::on_event`](crate::SyncClientBuilder::on_event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SyncEvent {
    /// Pull progress.
    Progress(Progress),
    /// An offline edit was applied at the source.
    Applied {
        /// The mutation.
        mutation_id: MutationId,
        /// Its entity.
        entity: EntityName,
        /// Its row.
        row_id: RowId,
        /// The row's version after it.
        version: Seq,
    },
    /// An offline edit was not applied (conflict or rejection). It is also
    /// in the `sync:conflicts` table until dismissed.
    Refused(ConflictRecord),
    /// The server could not honour the cursor: the local copy is being read
    /// again from scratch (rows stay visible until the new read ends).
    ResyncStarted {
        /// The server's reason.
        reason: String,
    },
    /// Partitions found out of step are being read again.
    RepairStarted {
        /// The partitions.
        partitions: Vec<PartitionKey>,
    },
    /// A repair ended.
    RepairFinished {
        /// Partitions whose checksum still differs after the repair (the next
        /// sync tries again).
        still_mismatched: Vec<PartitionKey>,
    },
    /// The server no longer lists a partition: rows only it held were dropped.
    PartitionDropped {
        /// The partition.
        partition: PartitionKey,
    },
    /// A call failed with a transient error and is retried after `delay`.
    Retrying {
        /// The error.
        error: String,
        /// The wait before the retry.
        delay: Duration,
    },
    /// A sync ended.
    Completed(SyncReport),
}

/// What one [`SyncClient::sync`](crate::SyncClient::sync) did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Mutations sent (each counted once, however often retried).
    pub pushed: u64,
    /// Mutations applied at the source.
    pub applied: u64,
    /// Mutations refused as conflicts.
    pub conflicts: u64,
    /// Mutations rejected.
    pub rejected: u64,
    /// Pull pages applied.
    pub pages: u64,
    /// Rows put by pulls.
    pub rows: u64,
    /// Membership removes applied.
    pub removes: u64,
    /// Full resyncs started (after `ResyncRequired`).
    pub resyncs: u64,
    /// Partition repairs run (after a checksum mismatch).
    pub repairs: u64,
    /// Rows dropped by sweeps.
    pub swept: u64,
    /// Whether the pull reached the server's head (`has_more = false`).
    pub complete: bool,
}

/// A partition as held locally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The partition.
    pub key: PartitionKey,
    /// Its entity.
    pub entity: EntityName,
    /// The running checksum of the memberships held.
    pub checksum: Checksum,
    /// `none`, `needed` or `running`.
    pub repair: String,
}

/// Rows of one local table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityCount {
    /// The entity.
    pub entity: EntityName,
    /// Rows visible in its table.
    pub rows: u64,
}

/// The state of the local copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Whether the device has synced at least once (holds a cursor).
    pub has_cursor: bool,
    /// When the last complete pull ended (RFC 3339).
    pub last_sync: Option<String>,
    /// The server schema version last received.
    pub schema_version: Option<u64>,
    /// Offline edits not yet acknowledged.
    pub pending: u64,
    /// Refused uploads not yet dismissed.
    pub conflicts: u64,
    /// Rows per local table.
    pub entities: Vec<EntityCount>,
    /// Partitions held.
    pub partitions: Vec<PartitionStatus>,
    /// Full resyncs so far.
    pub resyncs: u64,
    /// Partition repairs so far.
    pub repairs: u64,
}
