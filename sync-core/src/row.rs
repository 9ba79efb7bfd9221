//! Rows, change pages and mutations.

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// A staged row as a pull delivers it: its values in the order of
/// `columns`, one shared column list per entity schema, so building and
/// sending a pulled row needs no map.
///
/// Invariant (checked by [`PulledRow::new`]): `values` has one value per
/// column. The column order is the store's; a consumer looks columns up by
/// name or maps the list once per distinct `columns` (compare with
/// [`Arc::ptr_eq`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PulledRowForm")]
pub struct PulledRow {
    columns: Arc<[ColumnName]>,
    values: Vec<Value>,
    version: Seq,
}

/// The serialized form of a [`PulledRow`], checked when read.
#[derive(Deserialize)]
struct PulledRowForm {
    columns: Arc<[ColumnName]>,
    values: Vec<Value>,
    version: Seq,
}

impl TryFrom<PulledRowForm> for PulledRow {
    type Error = String;

    fn try_from(f: PulledRowForm) -> Result<Self, Self::Error> {
        let (columns, values) = (f.columns.len(), f.values.len());
        PulledRow::new(f.columns, f.values, f.version)
            .ok_or_else(|| format!("a pulled row has {columns} columns but {values} values"))
    }
}

impl PulledRow {
    /// A pulled row; `None` unless `values` has exactly one value per column.
    pub fn new(columns: Arc<[ColumnName]>, values: Vec<Value>, version: Seq) -> Option<Self> {
        (columns.len() == values.len()).then_some(PulledRow { columns, values, version })
    }

    /// `staged` as a pulled row over `columns`: a column the row does not
    /// hold is null, a value of a column not listed is dropped.
    pub fn from_staged(columns: &Arc<[ColumnName]>, staged: StagedRow) -> Self {
        let mut map = staged.row.values;
        let values = columns.iter().map(|c| map.remove(c).unwrap_or(Value::Null)).collect();
        PulledRow { columns: Arc::clone(columns), values, version: staged.version }
    }

    /// A copy of `staged` as a pulled row over `columns` (as
    /// [`PulledRow::from_staged`], cloning only the listed values).
    pub fn copied(columns: &Arc<[ColumnName]>, staged: &StagedRow) -> Self {
        let values =
            columns.iter().map(|c| staged.row.values.get(c).cloned().unwrap_or(Value::Null)).collect();
        PulledRow { columns: Arc::clone(columns), values, version: staged.version }
    }

    /// The column names, in value order.
    pub fn columns(&self) -> &Arc<[ColumnName]> {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The values, in column order, by move.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// The [`Seq`] of the change that last wrote the row.
    pub fn version(&self) -> Seq {
        self.version
    }

    /// The value of `column`, or `None` when the row does not have it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns.iter().position(|c| c.as_str() == column).and_then(|i| self.values.get(i))
    }

    /// The row as a [`StagedRow`] with id `id` (the id the pull named it by).
    pub fn into_staged(self, id: RowId) -> StagedRow {
        let values = self.columns.iter().cloned().zip(self.values).collect();
        StagedRow { row: Row { id, values }, version: self.version }
    }

    /// Approximate size of the row's JSON form in bytes, `id` being the
    /// row's id (as [`Row::approx_size`] counts it).
    pub fn approx_size(&self, id: &RowId) -> usize {
        id.as_str().len() + self.values.iter().map(|v| v.approx_size() + 1).sum::<usize>() + 8
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn col(n: &str) -> ColumnName {
        ColumnName::new(n).unwrap()
    }

    fn staged() -> StagedRow {
        StagedRow {
            row: Row::new(
                RowId::new("7").unwrap(),
                [(col("id"), Value::Integer(7)), (col("name"), Value::from("x"))],
            ),
            version: Seq(3),
        }
    }

    #[test]
    fn a_pulled_row_has_one_value_per_column() {
        let cols: Arc<[ColumnName]> = vec![col("id"), col("name")].into();
        assert!(PulledRow::new(Arc::clone(&cols), vec![Value::Null], Seq(1)).is_none());
        let ok = PulledRow::new(Arc::clone(&cols), vec![Value::Integer(1), Value::Null], Seq(1)).unwrap();
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<PulledRow>(&text).unwrap(), ok);
        let bad = text.replace("[1,null]", "[1]");
        assert!(serde_json::from_str::<PulledRow>(&bad).is_err(), "a short row is refused when read: {bad}");
    }

    #[test]
    fn staged_rows_convert_over_a_column_list() {
        let cols: Arc<[ColumnName]> = vec![col("name"), col("id"), col("added")].into();
        let pulled = PulledRow::from_staged(&cols, staged());
        assert_eq!(pulled.values(), &[Value::from("x"), Value::Integer(7), Value::Null]);
        assert_eq!(pulled, PulledRow::copied(&cols, &staged()));
        assert_eq!(pulled.get("id"), Some(&Value::Integer(7)));
        assert_eq!(pulled.get("gone"), None);
        assert_eq!(pulled.version(), Seq(3));
        let id = RowId::new("7").unwrap();
        assert_eq!(pulled.approx_size(&id), id.as_str().len() + 3 + 1 + 12 + 1 + 4 + 1 + 8);
        let back = pulled.into_staged(id);
        assert_eq!(back.version, Seq(3));
        assert_eq!(back.row.get("name"), Some(&Value::from("x")));
        assert_eq!(back.row.get("added"), Some(&Value::Null));
    }
}
