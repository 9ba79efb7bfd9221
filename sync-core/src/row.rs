//! Rows, change pages and mutations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ChangeToken, ColumnName, RowId, Seq};
use crate::value::Value;

/// One row of an entity: its id and its attribute values.
///
/// After [`EntityMetadata::check_row`](crate::schema::EntityMetadata::check_row)
/// `values` holds every attribute (the primary key included, equal to `id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The primary key in canonical text form.
    pub id: RowId,
    /// Attribute values by column.
    pub values: BTreeMap<ColumnName, Value>,
}

impl Row {
    /// A row from an id and values.
    pub fn new(id: RowId, values: impl IntoIterator<Item = (ColumnName, Value)>) -> Self {
        Row { id, values: values.into_iter().collect() }
    }

    /// The value of `column`, or `None` when the row does not have it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.values.get(column)
    }

    /// Approximate size of the row's JSON form in bytes.
    pub fn approx_size(&self) -> usize {
        self.id.as_str().len() + self.values.values().map(|v| v.approx_size() + 1).sum::<usize>() + 8
    }
}

/// A row as staged: its data plus the version the staging store gave it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedRow {
    /// The row data.
    pub row: Row,
    /// The [`Seq`] of the change that last wrote this row. Versions of one
    /// row strictly increase with every write.
    pub version: Seq,
}

/// One page of a source's change feed for one entity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangePage {
    /// Rows created or updated since the token that produced this page.
    pub upserts: Vec<Row>,
    /// Ids of rows deleted since that token.
    pub deletes: Vec<RowId>,
    /// The token to ask with next. Committed with this page's rows.
    pub next_token: Option<ChangeToken>,
    /// Whether more pages follow right away (read again with `next_token`).
    pub more: bool,
}

/// What a mutation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MutationOp {
    /// Create a row (fails with `Conflict` where it exists).
    Insert,
    /// Change some columns of an existing row.
    Update,
    /// Delete a row.
    Delete,
}

/// A write sent back to the system of record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mutation {
    /// What to do.
    pub op: MutationOp,
    /// The row it applies to.
    pub row_id: RowId,
    /// The columns to set (inserts and updates; empty for deletes). Only the
    /// columns the client changed; the rest keep the source's values.
    pub values: BTreeMap<ColumnName, Value>,
}
