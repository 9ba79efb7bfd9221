//! Host-defined conflict resolution.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::error::Result;
use crate::ids::ColumnName;
use crate::principal::Principal;
use crate::protocol::ClientMutation;
use crate::row::StagedRow;
use crate::schema::EntityMetadata;
use crate::value::Value;

/// What a resolver is shown: an upload whose base version differs from the
/// server's current row.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictContext {
    /// The entity's schema.
    pub entity: EntityMetadata,
    /// The server's current row (`None` when deleted on the server).
    pub server: Option<StagedRow>,
    /// The client's upload.
    pub mutation: ClientMutation,
    /// Who uploaded it.
    pub principal: Principal,
}

/// A resolver's decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Write these column values (the resolver's merge) to the source.
    Apply(BTreeMap<ColumnName, Value>),
    /// Keep the server's row; the upload is reported as a conflict.
    KeepServer,
    /// Refuse the upload with a reason.
    Reject(String),
}

/// A host's own conflict policy, referenced by name from a profile item.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ConflictResolver: Send + Sync {
    /// Decides what to do with a conflicting upload.
    async fn resolve(&self, context: ConflictContext) -> Result<Resolution>;
}
