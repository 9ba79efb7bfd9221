//! One entity's typed staging table: its SQL, key binding and row decoding.
//!
//! Every staging table has, besides one column per attribute:
//! * `_sync_rid INTEGER PRIMARY KEY`: a row number given by the store, never
//!   reused within the entity (membership refers to rows by it, so a
//!   tombstone can never be taken over by a later row);
//! * `_sync_version INTEGER NOT NULL`: the seq of the row's last change;
//! * `_sync_parts TEXT NOT NULL`: the row's references into the membership
//!   log (see [`crate::membership::Parts`]).
//!
//! The primary-key attribute is `NOT NULL UNIQUE`.

use std::sync::Arc;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, Statement, ToSql};
use sync_core::row::Row;
use sync_core::{AttributeType, ColumnName, EntityMetadata, PulledRow, RowId, Seq, StagedRow};

use crate::error::{R, StoreError};
use crate::membership::Parts;
use crate::sql::{Bind, column_type, decode, quote};

/// The reserved name of the version column every staging table carries.
pub(crate) const VERSION_COLUMN: &str = "_sync_version";
/// The reserved name of the row-number column every staging table carries.
pub(crate) const RID_COLUMN: &str = "_sync_rid";
/// The reserved name of the membership-references column.
pub(crate) const PARTS_COLUMN: &str = "_sync_parts";

/// A staged row as stored: its number, the row and its membership references.
pub(crate) struct Stored {
    pub(crate) rid: i64,
    pub(crate) staged: StagedRow,
    pub(crate) parts: Parts,
}
/// The prefix of the crate's own tables; entity names may not use it.
pub(crate) const RESERVED_PREFIX: &str = "_sync_";

/// SQL and codecs of one entity's staging table.
pub(crate) struct Table {
    pub(crate) meta: EntityMetadata,
    /// The quoted table name.
    pub(crate) name: String,
    key_index: usize,
    int_key: bool,
    /// Attribute indexes in column-name order.
    by_name: Vec<usize>,
    /// Attribute indexes in pull order ([`EntityMetadata::pull_columns`])
    /// after the key, which leads it.
    pull_rest: Vec<usize>,
    /// The names of a pulled row's values, shared by every row it decodes.
    pull_columns: Arc<[ColumnName]>,
    select_list: String,
    pull_join: String,
    select_by_key: String,
    rid_by_key: String,
    select_by_rid: String,
    insert: String,
    update: String,
    update_parts: String,
    delete: String,
}

impl Table {
    pub(crate) fn new(meta: EntityMetadata) -> R<Self> {
        let key_index = meta.attributes.iter().position(|a| a.name == meta.primary_key).ok_or_else(|| {
            StoreError::Corrupt(format!("entity '{}' has no primary key attribute", meta.name))
        })?;
        let int_key = meta.attributes[key_index].ty == AttributeType::Integer;
        let mut by_name: Vec<usize> = (0..meta.attributes.len()).collect();
        by_name.sort_by(|a, b| meta.attributes[*a].name.cmp(&meta.attributes[*b].name));
        let pull_columns: Arc<[ColumnName]> = meta.pull_columns().into();
        let pull_order = pull_columns
            .iter()
            .map(|c| {
                meta.attributes.iter().position(|a| a.name == *c).ok_or_else(|| {
                    StoreError::Corrupt(format!("entity '{}' has no attribute '{c}'", meta.name))
                })
            })
            .collect::<R<Vec<usize>>>()?;
        let pull_rest = pull_order.into_iter().filter(|&i| i != key_index).collect();
        let name = quote(meta.name.as_str());
        let key = quote(meta.attributes[key_index].name.as_str());
        let rid = quote(RID_COLUMN);
        let version = quote(VERSION_COLUMN);
        let parts = quote(PARTS_COLUMN);
        let attrs: Vec<String> = meta.attributes.iter().map(|a| quote(a.name.as_str())).collect();
        let select_list = format!("{rid}, {}, {version}, {parts}", attrs.join(", "));
        let n = attrs.len();
        let params: Vec<String> = (1..=n + 3).map(|i| format!("?{i}")).collect();
        let insert = format!("INSERT INTO {name} ({select_list}) VALUES ({})", params.join(", "));
        let mut sets: Vec<String> = attrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != key_index)
            .map(|(i, a)| format!("{a} = ?{}", i + 2))
            .collect();
        sets.push(format!("{version} = ?{}", n + 2));
        sets.push(format!("{parts} = ?{}", n + 3));
        let update = format!("UPDATE {name} SET {} WHERE {rid} = ?1", sets.join(", "));
        let pulled: Vec<String> =
            attrs.iter().chain(std::iter::once(&version)).map(|c| format!("t.{c}")).collect();
        let pull_join = format!(
            "SELECT m.id & {}, m.removed, m.row_id, {} FROM _sync_membership m \
             LEFT JOIN {name} t ON t.{rid} = m.rid AND m.removed = 0 \
             WHERE m.id > ?1 AND m.id <= ?2 \
             AND (t.{version} = m.version OR m.removed OR t.{rid} IS NULL) ORDER BY m.id",
            crate::membership::MAX_SEQ,
            pulled.join(", "),
        );
        Ok(Table {
            update_parts: format!("UPDATE {name} SET {parts} = ?2 WHERE {rid} = ?1"),
            select_by_key: format!("SELECT {select_list} FROM {name} WHERE {key} = ?1"),
            rid_by_key: format!("SELECT {rid} FROM {name} WHERE {key} = ?1"),
            select_by_rid: format!("SELECT {select_list} FROM {name} WHERE {rid} = ?1"),
            delete: format!("DELETE FROM {name} WHERE {rid} = ?1"),
            insert,
            update,
            meta,
            name,
            key_index,
            int_key,
            by_name,
            pull_rest,
            pull_columns,
            select_list,
            pull_join,
        })
    }

    fn key_column(&self) -> String {
        quote(self.meta.primary_key.as_str())
    }

    /// `CREATE TABLE` under the table name `name` (quoted).
    pub(crate) fn create_sql(&self, name: &str) -> String {
        let mut sql = format!("CREATE TABLE {name} ({} INTEGER PRIMARY KEY, ", quote(RID_COLUMN));
        for a in &self.meta.attributes {
            sql.push_str(&quote(a.name.as_str()));
            sql.push(' ');
            sql.push_str(column_type(&a.ty));
            if a.name == self.meta.primary_key {
                sql.push_str(" NOT NULL UNIQUE");
            }
            sql.push_str(", ");
        }
        sql.push_str(&quote(VERSION_COLUMN));
        sql.push_str(" INTEGER NOT NULL, ");
        sql.push_str(&quote(PARTS_COLUMN));
        sql.push_str(" TEXT NOT NULL DEFAULT '');");
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

    /// Selects the membership entries of one partition in an entry-id
    /// range (`?1` exclusive, `?2` inclusive), in seq order,
    /// each with its row of this table (null columns for removes, and for
    /// a put whose row is gone). A put of another version than its row's
    /// is stale and left out here; one whose row is gone is the caller's
    /// to tell (stale or corrupt).
    /// Columns: seq, removed, row_id, then the attributes and the row's
    /// version (what [`Table::decode_pulled`] reads).
    pub(crate) fn pull_join(&self) -> &str {
        &self.pull_join
    }

    /// The columns every select of this table reads, in decode order.
    pub(crate) fn select_list(&self) -> &str {
        &self.select_list
    }

    pub(crate) fn select_all_sql(&self) -> String {
        format!("SELECT {} FROM {} ORDER BY {}", self.select_list, self.name, quote(RID_COLUMN))
    }

    /// Insert into the table named `name` (the table itself, or a scratch
    /// copy during a rebuild): `?1` rid, then the attributes, then the version.
    pub(crate) fn insert_sql(&self, name: &str) -> String {
        let params: Vec<String> = (1..=self.meta.attributes.len() + 3).map(|i| format!("?{i}")).collect();
        format!("INSERT INTO {name} ({}) VALUES ({})", self.select_list, params.join(", "))
    }

    /// Insert of a new row that does nothing when the key is staged
    /// (`changes() == 0` then).
    pub(crate) fn insert_new_sql(&self) -> String {
        format!("{} ON CONFLICT DO NOTHING", self.insert)
    }

    /// Update by rid: `?1` rid, then the attributes, the version, the parts.
    pub(crate) fn update(&self) -> &str {
        &self.update
    }

    /// Writes a row's membership references.
    pub(crate) fn set_parts(&self, conn: &Connection, rid: i64, parts: &Parts) -> R<()> {
        conn.prepare_cached(&self.update_parts)?.execute(rusqlite::params![rid, parts.to_text()])?;
        Ok(())
    }

    /// Delete by rid.
    pub(crate) fn delete(&self) -> &str {
        &self.delete
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

    /// The stored key of a row id in any accepted spelling, or `None` when
    /// the id cannot be a key of this entity (then no such row can exist).
    pub(crate) fn key_value(&self, id: &RowId) -> Option<SqlValue> {
        if self.int_key {
            id.as_str().parse::<i64>().ok().map(SqlValue::Integer)
        } else {
            let canonical = self.meta.parse_row_id(id.as_str()).ok()?;
            Some(SqlValue::Text(canonical.as_str().to_owned()))
        }
    }

    /// The stored key of a row id already in canonical form (as checked
    /// rows hold it).
    pub(crate) fn canonical_key(&self, id: &RowId) -> Option<SqlValue> {
        if self.int_key {
            id.as_str().parse::<i64>().ok().map(SqlValue::Integer)
        } else {
            Some(SqlValue::Text(id.as_str().to_owned()))
        }
    }

    /// Binds rid, a checked row (every attribute present), its version and
    /// its membership references to the insert or update statement.
    pub(crate) fn bind_row(
        &self,
        stmt: &mut Statement<'_>,
        rid: i64,
        row: &Row,
        version: Seq,
        parts: &Parts,
    ) -> R<()> {
        stmt.raw_bind_parameter(1, rid)?;
        let attrs = &self.meta.attributes;
        // A checked row holds exactly the attributes, in name order: walk
        // it beside `by_name` instead of looking every column up.
        let exact = row.values.len() == attrs.len()
            && row.values.keys().zip(&self.by_name).all(|(name, &i)| *name == attrs[i].name);
        if exact {
            for (v, &i) in row.values.values().zip(&self.by_name) {
                stmt.raw_bind_parameter(i + 2, Bind(v))?;
            }
        } else {
            for (i, a) in attrs.iter().enumerate() {
                let v = row.values.get(&a.name).unwrap_or(&sync_core::Value::Null);
                stmt.raw_bind_parameter(i + 2, Bind(v))?;
            }
        }
        let n = self.meta.attributes.len();
        stmt.raw_bind_parameter(n + 2, version_param(version)?)?;
        stmt.raw_bind_parameter(n + 3, parts.to_text())?;
        Ok(())
    }

    /// Decodes a row selected with this table's select list.
    pub(crate) fn decode_row(&self, r: &rusqlite::Row<'_>) -> R<Stored> {
        let rid: i64 = r.get(0)?;
        let attrs = &self.meta.attributes;
        // Decoded straight into the map, in name order (each insert lands at
        // the end of the one leaf); names are shared, so cloning one is cheap.
        let mut values = std::collections::BTreeMap::new();
        for &i in &self.by_name {
            let a = &attrs[i];
            values.insert(a.name.clone(), decode(&a.ty, a.name.as_str(), r.get_ref(i + 1)?)?);
        }
        let id = self.row_id_of(values.get(&attrs[self.key_index].name))?;
        let n = attrs.len();
        let version: i64 = r.get(n + 1)?;
        let parts = match r.get_ref(n + 2)? {
            rusqlite::types::ValueRef::Text(t) => {
                Parts::parse(std::str::from_utf8(t).map_err(|e| StoreError::Corrupt(e.to_string()))?)?
            }
            _ => Parts::default(),
        };
        Ok(Stored { rid, staged: StagedRow { row: Row { id, values }, version: seq_of(version)? }, parts })
    }

    /// The id of a decoded row from its key value; `Corrupt` without one.
    fn row_id_of(&self, key: Option<&sync_core::Value>) -> R<RowId> {
        match key {
            // Canonical by construction: no text to validate.
            Some(sync_core::Value::Uuid(u)) => Ok(RowId::from(*u)),
            Some(v) if !v.is_null() => {
                RowId::new(canonical_key_text(v)).map_err(|e| StoreError::Corrupt(e.to_string()))
            }
            _ => Err(StoreError::Corrupt(format!("a row of '{}' has no key", self.meta.name))),
        }
    }

    /// The columns of the rows [`Table::decode_pulled`] builds.
    pub(crate) fn pull_columns(&self) -> &Arc<[ColumnName]> {
        &self.pull_columns
    }

    /// Decodes the columns of [`Table::pull_join`] from its first
    /// attribute at column `at` on into a pulled row (values in pull order,
    /// no map) and its id; `None` when the join found no row (its key, which
    /// is `NOT NULL`, reads as null).
    pub(crate) fn decode_pulled(&self, r: &rusqlite::Row<'_>, at: usize) -> R<Option<(RowId, PulledRow)>> {
        let attrs = &self.meta.attributes;
        let stored_key = r.get_ref(at + self.key_index)?;
        if stored_key == ValueRef::Null {
            return Ok(None);
        }
        let key = &attrs[self.key_index];
        let key_value = decode(&key.ty, key.name.as_str(), stored_key)?;
        let id = self.row_id_of(Some(&key_value))?;
        let mut values = Vec::with_capacity(attrs.len());
        values.push(key_value);
        // The key leads the pull order; the other attributes follow.
        for &i in &self.pull_rest {
            let a = &attrs[i];
            values.push(decode(&a.ty, a.name.as_str(), r.get_ref(at + i)?)?);
        }
        let version = seq_of(r.get(at + attrs.len())?)?;
        let row = PulledRow::new(Arc::clone(&self.pull_columns), values, version)
            .ok_or_else(|| StoreError::Corrupt(format!("a row of '{}' lost a column", self.meta.name)))?;
        Ok(Some((id, row)))
    }

    /// The staged row with `id` (any accepted spelling) and its rid, if any.
    pub(crate) fn get(&self, conn: &Connection, id: &RowId) -> R<Option<Stored>> {
        match self.key_value(id) {
            Some(key) => self.get_by_key(conn, key),
            None => Ok(None),
        }
    }

    /// The staged row with the stored key `key` and its rid, if any.
    pub(crate) fn get_by_key(&self, conn: &Connection, key: SqlValue) -> R<Option<Stored>> {
        let mut stmt = conn.prepare_cached(&self.select_by_key)?;
        self.lookup(&mut stmt, key)
    }

    /// The select of a row by its stored key (`?1`).
    pub(crate) fn select_by_key(&self) -> &str {
        &self.select_by_key
    }

    /// `SELECT` of every column of the row numbered `?1` (for [`Table::probe`]).
    pub(crate) fn select_by_rid(&self) -> &str {
        &self.select_by_rid
    }

    /// `SELECT` of the row number of the row whose stored key is `?1`.
    pub(crate) fn rid_by_key(&self) -> &str {
        &self.rid_by_key
    }

    /// Runs a statement from [`Table::select_by_key`] for `key`.
    pub(crate) fn lookup(&self, stmt: &mut Statement<'_>, key: SqlValue) -> R<Option<Stored>> {
        let mut rows = stmt.query([key])?;
        match rows.next()? {
            Some(r) => Ok(Some(self.decode_row(r)?)),
            None => Ok(None),
        }
    }

    /// What an upsert needs of the staged row with the stored key `key`
    /// (a statement from [`Table::select_by_key`]), or numbered `key` (one
    /// from [`Table::select_by_rid`]): its number, version and
    /// membership references, and whether `row` (checked) would leave it
    /// unchanged. Values are compared in their stored form, so nothing is
    /// decoded; a stored value in another form than this crate writes (an
    /// edit by hand) counts as a change.
    pub(crate) fn probe(&self, stmt: &mut Statement<'_>, key: SqlValue, row: &Row) -> R<Option<Probe>> {
        let mut rows = stmt.query([key])?;
        let Some(r) = rows.next()? else { return Ok(None) };
        let rid: i64 = r.get(0)?;
        let attrs = &self.meta.attributes;
        let mut unchanged = row.values.len() == attrs.len();
        if unchanged {
            for ((name, v), &i) in row.values.iter().zip(&self.by_name) {
                if *name != attrs[i].name || !same_stored(r.get_ref(i + 1)?, &Bind(v).to_sql()?) {
                    unchanged = false;
                    break;
                }
            }
        }
        let n = attrs.len();
        let version = seq_of(r.get(n + 1)?)?;
        let parts = match r.get_ref(n + 2)? {
            rusqlite::types::ValueRef::Text(t) => {
                Parts::parse(std::str::from_utf8(t).map_err(|e| StoreError::Corrupt(e.to_string()))?)?
            }
            _ => Parts::default(),
        };
        Ok(Some(Probe { rid, version, parts, unchanged }))
    }

    /// The staged row numbered `rid`, if any.
    pub(crate) fn get_by_rid(&self, conn: &Connection, rid: i64) -> R<Option<StagedRow>> {
        let mut stmt = conn.prepare_cached(&self.select_by_rid)?;
        let mut rows = stmt.query([rid])?;
        match rows.next()? {
            Some(r) => Ok(Some(self.decode_row(r)?.staged)),
            None => Ok(None),
        }
    }
}

/// A staged row as an upsert sees it (see [`Table::probe`]).
pub(crate) struct Probe {
    pub(crate) rid: i64,
    pub(crate) version: Seq,
    pub(crate) parts: Parts,
    pub(crate) unchanged: bool,
}

/// Whether a stored value equals a value about to be bound (same storage
/// class and content; reals compare as numbers).
fn same_stored(stored: rusqlite::types::ValueRef<'_>, new: &rusqlite::types::ToSqlOutput<'_>) -> bool {
    use rusqlite::types::{ToSqlOutput, Value as V, ValueRef as VR};
    let new = match new {
        ToSqlOutput::Borrowed(v) => *v,
        ToSqlOutput::Owned(v) => match v {
            V::Null => VR::Null,
            V::Integer(i) => VR::Integer(*i),
            V::Real(f) => VR::Real(*f),
            V::Text(t) => VR::Text(t.as_bytes()),
            V::Blob(b) => VR::Blob(b),
        },
        _ => return false,
    };
    match (stored, new) {
        (VR::Null, VR::Null) => true,
        (VR::Integer(a), VR::Integer(b)) => a == b,
        (VR::Real(a), VR::Real(b)) => a == b,
        (VR::Text(a), VR::Text(b)) | (VR::Blob(a), VR::Blob(b)) => a == b,
        _ => false,
    }
}

/// The canonical text of a key value (as [`sync_core::Value::canonical_text`],
/// without the detour through JSON for the common key types; a uuid key
/// never gets here, [`Table::row_id_of`] makes its id with `RowId::from`).
fn canonical_key_text(v: &sync_core::Value) -> String {
    match v {
        sync_core::Value::String(s) => s.clone(),
        sync_core::Value::Integer(i) => i.to_string(),
        other => other.canonical_text(),
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
