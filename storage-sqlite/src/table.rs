//! One entity's typed staging table: its SQL, key binding and row decoding.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Statement};
use sync_core::row::Row;
use sync_core::{AttributeType, EntityMetadata, RowId, Seq, StagedRow};

use crate::error::{R, StoreError};
use crate::sql::{Bind, column_type, decode, quote};

/// The reserved name of the version column every staging table carries.
pub(crate) const VERSION_COLUMN: &str = "_sync_version";
/// The prefix of the crate's own tables; entity names may not use it.
pub(crate) const RESERVED_PREFIX: &str = "_sync_";

/// SQL and codecs of one entity's staging table.
pub(crate) struct Table {
    pub(crate) meta: EntityMetadata,
    /// The quoted table name.
    pub(crate) name: String,
    key_index: usize,
    int_key: bool,
    select_list: String,
    select_by_key: String,
}

impl Table {
    pub(crate) fn new(meta: EntityMetadata) -> R<Self> {
        let key_index = meta.attributes.iter().position(|a| a.name == meta.primary_key).ok_or_else(|| {
            StoreError::Corrupt(format!("entity '{}' has no primary key attribute", meta.name))
        })?;
        let int_key = meta.attributes[key_index].ty == AttributeType::Integer;
        let mut select_list = String::new();
        for a in &meta.attributes {
            select_list.push_str(&quote(a.name.as_str()));
            select_list.push_str(", ");
        }
        select_list.push_str(&quote(VERSION_COLUMN));
        let name = quote(meta.name.as_str());
        let select_by_key = format!(
            "SELECT {select_list} FROM {name} WHERE {} = ?1",
            quote(meta.attributes[key_index].name.as_str())
        );
        Ok(Table { meta, name, key_index, int_key, select_list, select_by_key })
    }

    fn key_column(&self) -> String {
        quote(self.meta.primary_key.as_str())
    }

    /// `CREATE TABLE` (and, for integer keys, the index that lists ids in
    /// text order) under the table name `name` (quoted).
    pub(crate) fn create_sql(&self, name: &str) -> String {
        let mut sql = format!("CREATE TABLE {name} (");
        for a in &self.meta.attributes {
            sql.push_str(&quote(a.name.as_str()));
            sql.push(' ');
            sql.push_str(column_type(&a.ty));
            if a.name == self.meta.primary_key {
                sql.push_str(" NOT NULL PRIMARY KEY");
            }
            sql.push_str(", ");
        }
        sql.push_str(&quote(VERSION_COLUMN));
        sql.push_str(" INTEGER NOT NULL)");
        if !self.int_key {
            // Text keys cluster the rows by key: one B-tree, no rowid.
            sql.push_str(" WITHOUT ROWID");
        }
        sql.push(';');
        sql
    }

    /// For integer keys: an index on the key's text form, so ids list in
    /// [`RowId`] order. Created after the table has its final name.
    pub(crate) fn index_sql(&self) -> Option<String> {
        self.int_key.then(|| {
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} (CAST({} AS TEXT));",
                quote(&format!("{RESERVED_PREFIX}text_key_{}", self.meta.name)),
                self.name,
                self.key_column()
            )
        })
    }

    pub(crate) fn select_all_sql(&self) -> String {
        format!("SELECT {} FROM {} ORDER BY {}", self.select_list, self.name, self.key_column())
    }

    pub(crate) fn insert_sql(&self, name: &str) -> String {
        let params: Vec<String> = (1..=self.meta.attributes.len() + 1).map(|i| format!("?{i}")).collect();
        format!("INSERT INTO {name} ({}) VALUES ({})", self.select_list, params.join(", "))
    }

    pub(crate) fn update_sql(&self) -> String {
        let mut sets: Vec<String> = self
            .meta
            .attributes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.key_index)
            .map(|(i, a)| format!("{} = ?{}", quote(a.name.as_str()), i + 1))
            .collect();
        let n = self.meta.attributes.len();
        sets.push(format!("{} = ?{}", quote(VERSION_COLUMN), n + 1));
        format!(
            "UPDATE {} SET {} WHERE {} = ?{}",
            self.name,
            sets.join(", "),
            self.key_column(),
            self.key_index + 1
        )
    }

    pub(crate) fn delete_sql(&self) -> String {
        format!("DELETE FROM {} WHERE {} = ?1", self.name, self.key_column())
    }

    /// Ids after `after` in [`RowId`] order (text order, also for integer keys).
    pub(crate) fn ids_after_sql(&self, with_after: bool) -> String {
        let key =
            if self.int_key { format!("CAST({} AS TEXT)", self.key_column()) } else { self.key_column() };
        if with_after {
            format!("SELECT {key} FROM {} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2", self.name)
        } else {
            format!("SELECT {key} FROM {} ORDER BY {key} LIMIT ?1", self.name)
        }
    }

    /// The stored key of a row id, or `None` when the id cannot be a key of
    /// this entity (then no such row can exist).
    pub(crate) fn key_value(&self, id: &RowId) -> Option<SqlValue> {
        if self.int_key {
            id.as_str().parse::<i64>().ok().map(SqlValue::Integer)
        } else {
            let canonical = self.meta.parse_row_id(id.as_str()).ok()?;
            Some(SqlValue::Text(canonical.as_str().to_owned()))
        }
    }

    /// Binds a checked row (every attribute present) and its version to an
    /// insert or update statement built by this table.
    pub(crate) fn bind_row(&self, stmt: &mut Statement<'_>, row: &Row, version: Seq) -> R<()> {
        for (i, a) in self.meta.attributes.iter().enumerate() {
            let v = row.values.get(&a.name).unwrap_or(&sync_core::Value::Null);
            stmt.raw_bind_parameter(i + 1, Bind(v))?;
        }
        stmt.raw_bind_parameter(self.meta.attributes.len() + 1, version_param(version)?)?;
        Ok(())
    }

    /// Decodes a row selected with this table's select list.
    pub(crate) fn decode_row(&self, r: &rusqlite::Row<'_>) -> R<StagedRow> {
        let mut values = std::collections::BTreeMap::new();
        let mut id = None;
        for (i, a) in self.meta.attributes.iter().enumerate() {
            let v = decode(&a.ty, a.name.as_str(), r.get_ref(i)?)?;
            if i == self.key_index {
                id = Some(RowId::new(v.canonical_text()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
            values.insert(a.name.clone(), v);
        }
        let version: i64 = r.get(self.meta.attributes.len())?;
        let id =
            id.ok_or_else(|| StoreError::Corrupt(format!("a row of '{}' has no key", self.meta.name)))?;
        Ok(StagedRow { row: Row { id, values }, version: seq_of(version)? })
    }

    /// The stored key of a row id already in canonical form (as staged
    /// rows and membership entries hold it).
    pub(crate) fn canonical_key(&self, id: &RowId) -> Option<SqlValue> {
        if self.int_key {
            id.as_str().parse::<i64>().ok().map(SqlValue::Integer)
        } else {
            Some(SqlValue::Text(id.as_str().to_owned()))
        }
    }

    /// The staged row with `id` (any accepted spelling), if any.
    pub(crate) fn get(&self, conn: &Connection, id: &RowId) -> R<Option<StagedRow>> {
        match self.key_value(id) {
            Some(key) => self.get_by_key(conn, key),
            None => Ok(None),
        }
    }

    /// The staged row with the stored key `key`, if any.
    pub(crate) fn get_by_key(&self, conn: &Connection, key: SqlValue) -> R<Option<StagedRow>> {
        let mut stmt = conn.prepare_cached(&self.select_by_key)?;
        let mut rows = stmt.query([key])?;
        match rows.next()? {
            Some(r) => Ok(Some(self.decode_row(r)?)),
            None => Ok(None),
        }
    }
}

/// A seq as an SQL integer.
pub(crate) fn version_param(s: Seq) -> R<i64> {
    i64::try_from(s.0).map_err(|_| StoreError::Corrupt(format!("seq {s} exceeds the SQLite integer range")))
}

/// An SQL integer as a seq.
pub(crate) fn seq_of(v: i64) -> R<Seq> {
    u64::try_from(v).map(Seq).map_err(|_| StoreError::Corrupt(format!("negative seq {v}")))
}
