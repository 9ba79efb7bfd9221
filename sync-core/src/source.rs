//! The system of record: metadata, change feed and write-back.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::ids::{ChangeToken, EntityName};
use crate::org::OrgSourceConfig;
use crate::row::{ChangePage, Mutation, Row};
use crate::schema::EntityMetadata;

/// The system of record of one org (a Dataverse org, the host's database…).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait MetadataSource: Send + Sync {
    /// The entities offered for offline use, with their schemas.
    ///
    /// Errors: `Unavailable` when the source cannot be reached.
    async fn entities(&self) -> Result<Vec<EntityMetadata>>;

    /// One page of changes to `entity` after `token`, at most `page_size`
    /// rows plus deletes. `None` reads everything from the start (a full
    /// read: every current row as an upsert, no deletes).
    ///
    /// Contract: reading again with the returned `next_token` continues after
    /// this page; a change made after a page was produced appears in a later
    /// page. Errors: `ResyncRequired` when the source no longer honours
    /// `token` (the caller then does a full read); `NotFound` for an unknown
    /// entity; `Unavailable` for transient failures.
    async fn changes(
        &self,
        entity: &EntityName,
        token: Option<ChangeToken>,
        page_size: usize,
    ) -> Result<ChangePage>;

    /// Writes a client's change back to the system of record and returns the
    /// row as the source now holds it (`None` after a delete).
    ///
    /// Errors: `Conflict` when the source refuses the change because of its
    /// state (e.g. insert of an existing id, update of a deleted row);
    /// `Forbidden` when the source does not allow it; `InvalidInput` for
    /// values it rejects; `Unavailable` for transient failures.
    async fn apply(&self, entity: &EntityName, mutation: &Mutation) -> Result<Option<Row>>;
}

/// Makes a [`MetadataSource`] from an org's source configuration.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SourceConnector: Send + Sync {
    /// Connects to the source `config` names.
    ///
    /// Errors: `InvalidInput` when the configuration is not for this
    /// connector or is malformed; `Unavailable` when the source cannot be
    /// reached.
    async fn connect(&self, config: &OrgSourceConfig) -> Result<Arc<dyn MetadataSource>>;
}
