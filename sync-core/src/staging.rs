//! The staging store: the control plane and one staging database per org.
//!
//! # Guarantees every implementation gives
//!
//! * **Atomic ingestion.** [`OrgStaging::apply_changes`] commits rows,
//!   deletes, membership ops, checksums and the source token in one
//!   transaction: after a crash either all of a page is staged or none.
//! * **Seq order is commit order.** Every row change gets the next org-wide
//!   [`Seq`]; a reader that has seen seq `n` will never later see a newly
//!   committed change with a seq at or below `n`. Stores with several writer
//!   processes serialize writes per org (or bound reads by a watermark) and
//!   say which in their docs.
//! * **Membership is computed on write**, by the
//!   [`MembershipPlanner`](crate::filter::MembershipPlanner) built from the
//!   org's profiles, and compacted to one entry per (partition, row).
//! * **Checksums are incremental**: the per-partition [`Checksum`] is updated
//!   in the same transaction as membership, never recomputed per request.
//! * **Isolation.** An `OrgStaging` reads and writes its own org only;
//!   [`StagingStore::drop_org`] removes every row of the org.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::Result;
use crate::ids::{ChangeToken, EntityName, MutationId, OrgId, ProfileName, RowId, Seq};
use crate::org::{OrgConfig, OrgStatus, SyncRunReport};
use crate::partition::{Checksum, PartitionKey};
use crate::profile::Profile;
use crate::protocol::MutationOutcome;
use crate::row::{ChangePage, PulledRow, StagedRow};
use crate::schema::EntityMetadata;

/// The control plane: which orgs exist, where orgs hosted elsewhere live,
/// and access to each org's staging database.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait StagingStore: Send + Sync {
    /// Creates the org's staging database and records its configuration.
    ///
    /// Idempotent: for an existing org the configuration is replaced and the
    /// staged data kept. Afterwards [`StagingStore::org`] succeeds.
    async fn create_org(&self, config: &OrgConfig) -> Result<()>;

    /// Removes the org: its configuration, schemas, rows, membership,
    /// profiles, tokens, status and mutation journal. Idempotent: dropping an
    /// unknown org succeeds. Handles from [`StagingStore::org`] fail with
    /// `NotFound` afterwards.
    async fn drop_org(&self, org: &OrgId) -> Result<()>;

    /// Every org, ordered by id.
    async fn orgs(&self) -> Result<Vec<OrgConfig>>;

    /// The org's configuration, or `NotFound`.
    async fn org_config(&self, org: &OrgId) -> Result<OrgConfig>;

    /// A handle on the org's staging database, or `NotFound`.
    async fn org(&self, org: &OrgId) -> Result<Arc<dyn OrgStaging>>;

    /// Records in the org directory that `org` is served by the deployment
    /// at `base_url` (`None` removes the entry). Independent of
    /// [`StagingStore::create_org`]: directory orgs are hosted elsewhere.
    async fn set_org_location(&self, org: &OrgId, base_url: Option<String>) -> Result<()>;

    /// The deployment that serves `org`, if the directory names one.
    async fn org_location(&self, org: &OrgId) -> Result<Option<String>>;

    /// Succeeds when the store is reachable (for readiness checks).
    async fn ping(&self) -> Result<()>;
}

/// What [`OrgStaging::apply_schema`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaChange {
    /// The schema was already staged as given.
    Unchanged,
    /// The entity was new.
    Created,
    /// Columns were added, removed or retyped.
    Altered,
}

/// What [`OrgStaging::apply_changes`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// Rows inserted or changed.
    pub upserted: u64,
    /// Rows deleted (ids not staged are ignored and not counted).
    pub deleted: u64,
    /// Upserts identical to the staged row: no new version, no membership op.
    pub unchanged: u64,
    /// The org's head after the commit.
    pub head: Seq,
}

/// What a pull asks of the store: a position per partition and budgets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullPlan {
    /// Partitions to read, each with the seq already delivered (`Seq::ZERO`
    /// for a partition read from the start). Read in this order.
    pub partitions: Vec<(PartitionKey, Seq)>,
    /// Most membership ops to return (at least one is returned if any is due).
    pub max_rows: usize,
    /// Approximate most bytes of row data to return (at least one op is
    /// returned if any is due).
    pub max_bytes: usize,
}

/// One membership op delivered by a pull.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PulledChange {
    /// The partition.
    pub partition: PartitionKey,
    /// The row's entity.
    pub entity: EntityName,
    /// The row.
    pub row_id: RowId,
    /// The op's seq.
    pub seq: Seq,
    /// The row at its current version for a put (every attribute of the
    /// entity's current schema); `None` for a remove.
    pub row: Option<PulledRow>,
}

/// A page of membership ops read from one consistent snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullPage {
    /// Ops in order: partition by partition as planned, by seq within one.
    pub changes: Vec<PulledChange>,
    /// The new position of every planned partition, in plan order. A
    /// partition read to the end is at `head`.
    pub positions: Vec<(PartitionKey, Seq)>,
    /// Whether budgets stopped the read before every partition reached `head`.
    pub more: bool,
    /// The snapshot's head.
    pub head: Seq,
    /// When `more` is false: each planned partition's checksum at `head`.
    pub checksums: Option<BTreeMap<PartitionKey, Checksum>>,
}

/// A recorded push result, for idempotent retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutationRecord {
    /// A fingerprint of the mutation's content, to tell a retry from a
    /// different mutation that reuses the id.
    pub fingerprint: String,
    /// The result returned the first time.
    pub outcome: MutationOutcome,
    /// The write checkpoint returned the first time.
    pub checkpoint: Seq,
}

/// One org's staging database.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait OrgStaging: Send + Sync {
    /// The org this handle serves.
    fn org_id(&self) -> OrgId;

    /// An id of this creation of the org: stable across handles and
    /// restarts, different after the org is dropped and created again. A
    /// cursor carries it, so a cursor from before a re-creation (whose seqs
    /// restart) is refused instead of silently missing changes.
    fn incarnation(&self) -> String;

    /// Creates or evolves the entity's table to match `meta`: new entities
    /// get a table; added attributes become null columns; removed ones are
    /// dropped; a changed type rebuilds the column, keeping values that
    /// convert (others become null). Bumps the schema version when anything
    /// changed. Every row whose non-null values change (a dropped column
    /// that held a value, a retyped value that converts differently or to
    /// null) gets a new version and membership puts, so a client that missed
    /// an intermediate schema version still converges. Errors: `InvalidInput` for metadata that fails
    /// [`EntityMetadata::validate`]; nothing changes then.
    async fn apply_schema(&self, meta: &EntityMetadata) -> Result<SchemaChange>;

    /// Every staged entity's schema, ordered by entity name.
    async fn schemas(&self) -> Result<Vec<EntityMetadata>>;

    /// The schema version: 0 before any schema, +1 on every change.
    async fn schema_version(&self) -> Result<u64>;

    /// Saves a profile (replacing one of the same name) after compiling each
    /// item's filter against the staged schemas, and recomputes membership of
    /// the entities the old and new versions name. Errors: `InvalidInput`
    /// (unknown entity or column, bad filter, misplaced parameter); nothing
    /// changes then.
    async fn put_profile(&self, profile: &Profile) -> Result<()>;

    /// The profile named `name`, or `NotFound`.
    async fn profile(&self, name: &ProfileName) -> Result<Profile>;

    /// Every profile, ordered by name.
    async fn profiles(&self) -> Result<Vec<Profile>>;

    /// Deletes a profile; its partitions' members get removes. `NotFound`
    /// when there is no such profile.
    async fn delete_profile(&self, name: &ProfileName) -> Result<()>;

    /// Stages one page of changes in one transaction: upserts (checked and
    /// coerced against the entity's schema), then deletes (an id both upserted
    /// and deleted ends deleted), the membership ops and checksum updates they
    /// cause, and — when `page.next_token` is `Some` — the new source token.
    /// `None` leaves the stored token as it was. Each changed row gets a new
    /// seq as its version. Errors: `NotFound` for an unstaged entity;
    /// `InvalidInput` for a row that fails the schema; nothing changes then.
    ///
    /// The store consumes the page, so it can move the rows to its writer
    /// without copying them; a caller that needs anything of the page
    /// afterwards (such as `next_token`) takes it before the call.
    async fn apply_changes(&self, entity: &EntityName, page: ChangePage) -> Result<ApplyOutcome>;

    /// The committed source token of `entity` (`None` before the first page).
    async fn source_token(&self, entity: &EntityName) -> Result<Option<ChangeToken>>;

    /// The staged row, if any. `NotFound` for an unstaged entity.
    async fn row(&self, entity: &EntityName, id: &RowId) -> Result<Option<StagedRow>>;

    /// Up to `limit` staged row ids of `entity` greater than `after`, ascending.
    async fn row_ids(&self, entity: &EntityName, after: Option<RowId>, limit: usize) -> Result<Vec<RowId>>;

    /// Reads membership ops after each partition's position, from one
    /// consistent snapshot, within the plan's budgets.
    ///
    /// A position below the tombstone floor is read as asked: only the
    /// caller knows whether the client could have needed the purged removes
    /// (a client in the middle of its first read of a partition did not),
    /// so the floor check belongs to it (see `SyncService::pull`).
    ///
    /// Errors: `ResyncRequired` for a position beyond the head; `InvalidInput`
    /// for a partition planned twice.
    async fn pull(&self, plan: &PullPlan) -> Result<PullPage>;

    /// The org's latest committed seq.
    async fn head(&self) -> Result<Seq>;

    /// A receiver that sees the head change after every commit made through
    /// this store (for live pulls and cheap "no changes" answers).
    fn watch_head(&self) -> watch::Receiver<Seq>;

    /// Deletes remove-entries with a seq at or below `up_to` and raises the
    /// tombstone floor to `up_to`. Returns how many were deleted.
    async fn purge_tombstones(&self, up_to: Seq) -> Result<u64>;

    /// Removes with a seq at or below this may have been purged: a client
    /// that could hold a row they removed, and has not read past the floor,
    /// must resync.
    async fn tombstone_floor(&self) -> Result<Seq>;

    /// The recorded result of a mutation, if it was seen before.
    async fn mutation_result(&self, id: &MutationId) -> Result<Option<MutationRecord>>;

    /// Records a mutation's result. Recording the same record again
    /// succeeds; a different fingerprint for a known id is `Conflict`.
    async fn record_mutation(&self, id: &MutationId, record: &MutationRecord) -> Result<()>;

    /// Records the outcome of a staging-sync run.
    async fn record_run(&self, report: &SyncRunReport) -> Result<()>;

    /// Per-entity status: schema hash, rows, token, last run and error.
    async fn status(&self) -> Result<OrgStatus>;
}
