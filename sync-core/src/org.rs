//! Org configuration, status and the messages of the work queues.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ChangeToken, EntityName, OrgId, Seq};

/// How to reach an org's system of record: the connector kind and its
/// settings (a URL, credentials reference, …), as carried in work items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgSourceConfig {
    /// Which [`SourceConnector`](crate::source::SourceConnector) handles it (e.g. `demo`, `dataverse`).
    pub kind: String,
    /// Connector-specific settings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// The default interval between two staging syncs of one entity.
pub const DEFAULT_SYNC_INTERVAL_SECS: u64 = 60;

fn default_interval() -> u64 {
    DEFAULT_SYNC_INTERVAL_SECS
}

/// An org's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgConfig {
    /// The org.
    pub id: OrgId,
    /// Its system of record.
    pub source: OrgSourceConfig,
    /// Seconds between two staging syncs of an entity.
    #[serde(default = "default_interval")]
    pub sync_interval_secs: u64,
    /// Per-entity overrides of `sync_interval_secs`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entity_intervals: BTreeMap<EntityName, u64>,
}

impl OrgConfig {
    /// An org with the default interval.
    pub fn new(id: OrgId, source: OrgSourceConfig) -> Self {
        OrgConfig {
            id,
            source,
            sync_interval_secs: DEFAULT_SYNC_INTERVAL_SECS,
            entity_intervals: BTreeMap::new(),
        }
    }

    /// Seconds between syncs of `entity`.
    pub fn interval_for(&self, entity: &EntityName) -> u64 {
        self.entity_intervals.get(entity).copied().unwrap_or(self.sync_interval_secs)
    }
}

/// The outcome of one staging-sync run of one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRunReport {
    /// The entity.
    pub entity: EntityName,
    /// When the run ended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Rows upserted or deleted in staging.
    pub rows_applied: u64,
    /// The error that ended the run, if it failed.
    pub error: Option<String>,
}

/// Status of one staged entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityStatus {
    /// The entity.
    pub entity: EntityName,
    /// Its schema hash.
    pub schema_hash: String,
    /// Rows staged.
    pub rows: u64,
    /// The committed source token.
    pub token: Option<ChangeToken>,
    /// When the last run ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_run: Option<OffsetDateTime>,
    /// When the last successful run ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    /// The last run's error, if it failed.
    pub last_error: Option<String>,
    /// Rows applied by the last run.
    pub last_rows: u64,
}

/// Status of an org's staging database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgStatus {
    /// The org.
    pub org: OrgId,
    /// Its schema version.
    pub schema_version: u64,
    /// Its latest seq.
    pub head: Seq,
    /// Per-entity status.
    pub entities: Vec<EntityStatus>,
}

/// The queue of provision / deprovision events.
pub const PROVISIONING_QUEUE: &str = "provisioning";
/// The queue of recurring staging-sync work items.
pub const DATASYNC_QUEUE: &str = "datasync";

/// A message on the `provisioning` queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ProvisioningEvent {
    /// Create (or update) the org's staging database and schedule its sync.
    Provision {
        /// The org's configuration.
        org: OrgConfig,
    },
    /// Stop the org's schedule and remove every trace of it.
    Deprovision {
        /// The org.
        org: OrgId,
    },
}

/// A message on the `datasync` queue: sync one entity of one org.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncWorkItem {
    /// The org.
    pub org: OrgId,
    /// The entity.
    pub entity: EntityName,
    /// The org's source connection.
    pub source: OrgSourceConfig,
}

impl SyncWorkItem {
    /// The dedup key that keeps one pending item per (org, entity).
    pub fn dedup_key(&self) -> String {
        format!("{}/{}", self.org, self.entity)
    }
}
