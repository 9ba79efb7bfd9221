//! The sync protocol (v1): request and response bodies shared by server and
//! client. JSON over any transport; see DESIGN.md §5.
//!
//! Requests reject unknown fields, so a typo is an error rather than a
//! silently ignored option.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ColumnName, EntityName, MutationId, OrgId, ProfileName, RowId, Seq};
use crate::partition::{Checksum, PartitionKey};
use crate::row::{MutationOp, Row};
use crate::schema::EntityMetadata;
use crate::value::Value;

/// `GET profile`: the caller's profiles and the schemas of their entities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileResponse {
    /// The caller's org.
    pub org: OrgId,
    /// The caller's user id.
    pub user_id: String,
    /// The profiles that apply to the caller.
    pub profiles: Vec<ProfileName>,
    /// The caller's partitions.
    pub partitions: Vec<PartitionInfo>,
    /// The org's schema version.
    pub schema_version: u64,
    /// Schemas of the entities the caller's profiles name.
    pub schemas: Vec<EntityMetadata>,
}

/// `POST pull`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The cursor of the previous response; absent on a first pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Most rows in this page (capped by the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Live mode: when nothing is new, wait up to this long for a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// A partition the caller holds, and its entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// The partition.
    pub key: PartitionKey,
    /// Its entity.
    pub entity: EntityName,
}

/// Changes of one partition of one entity, rows column-wise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The entity.
    pub entity: EntityName,
    /// The partition these ops belong to.
    pub partition: PartitionKey,
    /// Column names of `puts`; the primary key is always first.
    pub columns: Vec<ColumnName>,
    /// Rows put into (or updated in) the partition, values in `columns` order.
    pub puts: Vec<Vec<Value>>,
    /// The staged version of each row in `puts`, in the same order.
    pub versions: Vec<Seq>,
    /// Ids of rows that left the partition.
    pub removes: Vec<RowId>,
}

/// `POST pull` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    /// The org's schema version.
    pub schema_version: u64,
    /// Present when the schema changed since the cursor (or on a first pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemas: Option<Vec<EntityMetadata>>,
    /// The caller's current partitions; rows held only by partitions absent
    /// here must be dropped by the client.
    pub partitions: Vec<PartitionInfo>,
    /// The changes.
    pub batches: Vec<Batch>,
    /// When `has_more` is false: per partition, the checksum of the
    /// membership the client now holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums: Option<BTreeMap<PartitionKey, Checksum>>,
    /// The cursor to send next.
    pub cursor: String,
    /// Whether more changes are ready right away.
    pub has_more: bool,
}

/// One offline change uploaded by a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientMutation {
    /// Client-made UUID: retrying with the same id applies the change once.
    pub id: MutationId,
    /// The entity.
    pub entity: EntityName,
    /// Insert, update or delete.
    pub op: MutationOp,
    /// The row.
    pub row_id: RowId,
    /// The row version the client's edit was based on (updates and deletes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Seq>,
    /// Only the columns the client changed.
    #[serde(default)]
    pub values: BTreeMap<ColumnName, Value>,
}

/// `POST push`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The mutations, applied in order.
    pub mutations: Vec<ClientMutation>,
}

/// What became of one mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum MutationOutcome {
    /// Written to the system of record and staged.
    Applied {
        /// The row as the system of record now holds it (`None` after a delete).
        row: Option<Row>,
        /// Its staged version.
        version: Seq,
    },
    /// Not applied: the server's row wins (or the row changed underneath).
    Conflict {
        /// The server's current row (`None` when it no longer exists).
        server_row: Option<Row>,
        /// Why.
        reason: String,
    },
    /// Not applied: not allowed or not valid.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// The result of one mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutationResult {
    /// The mutation's id.
    pub id: MutationId,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: MutationOutcome,
}

/// `POST push` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    /// One result per mutation, in request order.
    pub results: Vec<MutationResult>,
    /// A pull whose cursor has reached this seq reflects these writes.
    pub write_checkpoint: Seq,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reject_unknown_fields() {
        assert!(serde_json::from_str::<PullRequest>(r#"{"cursor":"x","limt":5}"#).is_err());
        assert!(serde_json::from_str::<PullRequest>(r#"{"limit":5}"#).is_ok());
        assert!(serde_json::from_str::<PushRequest>(r#"{"mutations":[],"x":1}"#).is_err());
    }

    #[test]
    fn outcome_is_tagged() {
        let r = MutationResult {
            id: MutationId(uuid::Uuid::nil()),
            outcome: MutationOutcome::Rejected { reason: "no".into() },
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["status"], "rejected");
        assert_eq!(serde_json::from_value::<MutationResult>(j).unwrap(), r);
    }
}
