//! The local database: typed entity tables plus the client's bookkeeping.
//!
//! Each entity's rows live in a table `sync:rows:<entity>`, read by the app
//! through a view named after the entity with exactly the entity's columns
//! (plain SQL: `SELECT name FROM account`). The table adds a stable row
//! number (`sync:rowid`, which memberships refer to) and a `sync:hidden`
//! flag (a row a partition holds but a pending edit deletes). Every client
//! table has a name with a colon, which no entity name can have (entity
//! names match `[A-Za-z_][A-Za-z0-9_]*`), so they never collide:
//!
//! | table | holds |
//! | --- | --- |
//! | `sync:rows:<entity>` | the entity's rows (the view `<entity>` shows the visible ones) |
//! | `sync:meta` | format version, cursors, schema version, last sync |
//! | `sync:schemas` | each entity's schema as last received |
//! | `sync:partitions` | the partitions held, their running checksums, repair state |
//! | `sync:membership` | `(partition, row number, version)`: which partition holds which row |
//! | `sync:pending` | offline edits not yet acknowledged by the server |
//! | `sync:shadow` | for rows with pending edits: the server's row they apply over |
//! | `sync:sweep` | rows to drop at the end of the next complete pull unless a partition holds them |
//! | `sync:conflicts` | uploads the server refused or resolved against the device (the app reads this) |

mod apply;
mod local;
mod schema;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use sync_core::{EntityMetadata, EntityName, PartitionKey, RowId, Value};

pub(crate) use apply::{PageOutcome, Stream};
pub(crate) use local::{AckOutcome, LocalOp};
pub use local::{ConflictRecord, LocalWrite, PendingMutation, RefusalKind};

use crate::error::{ClientError, Result};
use crate::sql::{SqlValue, quote, read_value};
pub(crate) use schema::{HIDDEN, RID, data_table};

/// The on-disk format this code reads and writes.
const FORMAT: &str = "1";

/// Meta keys.
pub(crate) mod key {
    pub const FORMAT: &str = "format";
    pub const CURSOR: &str = "cursor";
    pub const REPAIR_CURSOR: &str = "repair_cursor";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const LAST_SYNC: &str = "last_sync";
    pub const RESYNCS: &str = "resyncs";
    pub const REPAIRS: &str = "repairs";
}

/// Repair state of a partition (column `repair` of `sync:partitions`).
pub(crate) mod repair {
    /// In step (as far as the last checksum says).
    pub const NONE: i64 = 0;
    /// Found out of step (checksum mismatch, retyped columns): to be re-read.
    pub const NEEDED: i64 = 1;
    /// Being re-read by the repair stream.
    pub const RUNNING: i64 = 2;
}

const INIT: &str = r#"
CREATE TABLE IF NOT EXISTS "sync:meta" (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS "sync:schemas" (
    entity TEXT PRIMARY KEY NOT NULL, hash TEXT NOT NULL, schema TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS "sync:partitions" (
    pid INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, entity TEXT NOT NULL,
    sum INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0, repair INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS "sync:membership" (
    pid INTEGER NOT NULL, rid INTEGER NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (pid, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS "sync:pending" (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, entity TEXT NOT NULL,
    row_id TEXT NOT NULL, op TEXT NOT NULL, base_version INTEGER, "values" TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS "sync:pending_row" ON "sync:pending" (entity, row_id, seq);
CREATE TABLE IF NOT EXISTS "sync:shadow" (
    entity TEXT NOT NULL, row_id TEXT NOT NULL, data TEXT, version INTEGER,
    PRIMARY KEY (entity, row_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS "sync:sweep" (
    entity TEXT NOT NULL, row_id TEXT NOT NULL, version INTEGER,
    PRIMARY KEY (entity, row_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS "sync:conflicts" (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, mutation_id TEXT NOT NULL UNIQUE, entity TEXT NOT NULL,
    row_id TEXT NOT NULL, op TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    local_values TEXT NOT NULL, server_row TEXT, at TEXT NOT NULL);
"#;

/// Tuning of the local database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// SQLite page cache in KiB. A large cache roughly doubles the write
    /// rate of a long initial sync (see PERFORMANCE.md).
    pub cache_kib: u32,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout_ms: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_kib: 64 * 1024, busy_timeout_ms: 5_000 }
    }
}

/// A partition as kept locally.
#[derive(Clone, Debug)]
pub(crate) struct PartRow {
    pub pid: i64,
    pub entity: EntityName,
    pub repair: i64,
}

/// The local database. Not shared between threads: the client keeps it
/// behind a mutex and runs every call on a blocking thread.
pub(crate) struct Store {
    pub(crate) conn: Connection,
    /// Schemas by entity, as stored in `sync:schemas`.
    schemas: HashMap<EntityName, Arc<EntityMetadata>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store> {
        let conn = Connection::open(path)?;
        Self::init(conn, options)
    }

    /// An in-memory database (tests, throwaway clients).
    pub fn open_in_memory(options: &StoreOptions) -> Result<Store> {
        Self::init(Connection::open_in_memory()?, options)
    }

    fn init(conn: Connection, options: &StoreOptions) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_millis(u64::from(options.busy_timeout_ms)))?;
        // WAL + NORMAL: a commit survives a process kill (the WAL is written
        // before commit returns); only an OS crash may lose the last commits,
        // and then data and cursor roll back together.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib))?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(128);
        conn.execute_batch(INIT)?;
        let format: Option<String> = conn
            .query_row("SELECT value FROM \"sync:meta\" WHERE key = ?1", [key::FORMAT], |r| r.get(0))
            .optional()?;
        match format.as_deref() {
            None => {
                conn.execute(
                    "INSERT INTO \"sync:meta\" (key, value) VALUES (?1, ?2)",
                    [key::FORMAT, FORMAT],
                )?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(ClientError::corrupt(format!(
                    "the database has format {other}; this client reads format {FORMAT}"
                )));
            }
        }
        let mut store = Store { conn, schemas: HashMap::new() };
        store.load_schemas()?;
        Ok(store)
    }

    fn load_schemas(&mut self) -> Result<()> {
        let mut stmt = self.conn.prepare("SELECT schema FROM \"sync:schemas\"")?;
        let mut map = HashMap::new();
        for text in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let meta: EntityMetadata = serde_json::from_str(&text?)?;
            map.insert(meta.name.clone(), Arc::new(meta));
        }
        drop(stmt);
        self.schemas = map;
        Ok(())
    }

    /// The schema of `entity`, if the server sent one.
    pub fn schema(&self, entity: &EntityName) -> Option<Arc<EntityMetadata>> {
        self.schemas.get(entity).cloned()
    }

    /// Every schema, by entity name.
    pub fn schemas(&self) -> Vec<Arc<EntityMetadata>> {
        let mut v: Vec<_> = self.schemas.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The schema of `entity`, or `NotFound`.
    pub fn require_schema(&self, entity: &EntityName) -> Result<Arc<EntityMetadata>> {
        self.schema(entity)
            .ok_or_else(|| ClientError::NotFound(format!("entity '{entity}' is not synced here")))
    }

    /// A meta value.
    pub fn meta(&self, k: &str) -> Result<Option<String>> {
        get_meta(&self.conn, k)
    }

    /// The main cursor.
    pub fn cursor(&self) -> Result<Option<String>> {
        self.meta(key::CURSOR)
    }

    /// The repair stream's cursor (`Some("")` is "from the start").
    pub fn repair_cursor(&self) -> Result<Option<String>> {
        self.meta(key::REPAIR_CURSOR)
    }

    /// Partitions by key.
    pub(crate) fn partitions(conn: &Connection) -> Result<HashMap<PartitionKey, PartRow>> {
        let mut stmt = conn.prepare_cached("SELECT pid, key, entity, repair FROM \"sync:partitions\"")?;
        let mut out = HashMap::new();
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
        })?;
        for row in rows {
            let (pid, k, entity, repair) = row?;
            let k = PartitionKey::new(k).map_err(|e| ClientError::corrupt(e.to_string()))?;
            let entity = EntityName::new(entity).map_err(|e| ClientError::corrupt(e.to_string()))?;
            out.insert(k, PartRow { pid, entity, repair });
        }
        Ok(out)
    }

    /// Whether any partition is being repaired or waits for a repair.
    pub fn repair_state(&self) -> Result<(bool, bool)> {
        let running: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM \"sync:partitions\" WHERE repair = ?1)",
            [repair::RUNNING],
            |r| r.get(0),
        )?;
        let needed: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM \"sync:partitions\" WHERE repair = ?1)",
            [repair::NEEDED],
            |r| r.get(0),
        )?;
        Ok((running, needed))
    }

    /// The typed row `row_id` of `entity` as the app sees it.
    pub fn visible_row(&self, meta: &EntityMetadata, row_id: &RowId) -> Result<Option<sync_core::Row>> {
        read_visible(&self.conn, meta, row_id)
    }

    /// Runs a read-only statement and returns column names and rows as JSON.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<QueryResult> {
        // The statement is the caller's: a statement SQLite refuses is bad input.
        let mut stmt = self.conn.prepare(sql).map_err(|e| ClientError::invalid(format!("query: {e}")))?;
        if !stmt.readonly() {
            return Err(ClientError::invalid(
                "query runs read-only statements; change rows with insert, update and delete so the \
                 edits are uploaded",
            ));
        }
        let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let bound: Vec<SqlValue<'_>> = params.iter().map(SqlValue).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(bound.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut vals = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                vals.push(crate::sql::value_ref_to_json(row.get_ref(i)?));
            }
            out.push(vals);
        }
        Ok(QueryResult { columns, rows: out })
    }
}

/// The result of [`crate::SyncClient::query`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, values as JSON.
    pub rows: Vec<Vec<serde_json::Value>>,
}

pub(crate) fn get_meta(conn: &Connection, k: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM \"sync:meta\" WHERE key = ?1")?
        .query_row([k], |r| r.get(0))
        .optional()?)
}

pub(crate) fn set_meta(conn: &Connection, k: &str, v: Option<&str>) -> Result<()> {
    match v {
        Some(v) => conn
            .prepare_cached("INSERT INTO \"sync:meta\" (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
            .execute(params![k, v])?,
        None => conn.prepare_cached("DELETE FROM \"sync:meta\" WHERE key = ?1")?.execute([k])?,
    };
    Ok(())
}

pub(crate) fn bump_meta_counter(conn: &Connection, k: &str) -> Result<()> {
    let n: u64 = get_meta(conn, k)?.and_then(|s| s.parse().ok()).unwrap_or(0);
    set_meta(conn, k, Some(&(n + 1).to_string()))
}

/// The typed key value of `row_id` for binding.
pub(crate) fn key_value(meta: &EntityMetadata, row_id: &RowId) -> Result<Value> {
    meta.key_value(row_id.as_str()).map_err(|e| ClientError::corrupt(format!("row id '{row_id}': {e}")))
}

/// Reads the visible row.
pub(crate) fn read_visible(
    conn: &Connection,
    meta: &EntityMetadata,
    row_id: &RowId,
) -> Result<Option<sync_core::Row>> {
    let cols: Vec<String> = meta.attributes.iter().map(|a| quote(a.name.as_str())).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1 AND {HIDDEN} = 0",
        cols.join(", "),
        quote(&data_table(meta.name.as_str())),
        quote(meta.primary_key.as_str())
    );
    let key = key_value(meta, row_id)?;
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([SqlValue(&key)])?;
    let Some(r) = rows.next()? else { return Ok(None) };
    let mut values = std::collections::BTreeMap::new();
    for (i, a) in meta.attributes.iter().enumerate() {
        values.insert(a.name.clone(), read_value(r.get_ref(i)?, &a.ty)?);
    }
    Ok(Some(sync_core::Row { id: row_id.clone(), values }))
}

/// Writes the visible row (every column; columns absent from `values` are
/// null), keeping its row number.
pub(crate) fn write_visible(
    conn: &Connection,
    meta: &EntityMetadata,
    row_id: &RowId,
    values: &std::collections::BTreeMap<sync_core::ColumnName, Value>,
) -> Result<()> {
    let cols: Vec<String> = meta.attributes.iter().map(|a| quote(a.name.as_str())).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let sets: Vec<String> = cols.iter().map(|c| format!("{c} = excluded.{c}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}, {HIDDEN}) VALUES ({}, 0) ON CONFLICT ({}) DO UPDATE SET {}, {HIDDEN} = 0",
        quote(&data_table(meta.name.as_str())),
        cols.join(", "),
        marks.join(", "),
        quote(meta.primary_key.as_str()),
        sets.join(", ")
    );
    let key = key_value(meta, row_id)?;
    let mut bound: Vec<Value> = Vec::with_capacity(cols.len());
    for a in &meta.attributes {
        if a.name == meta.primary_key {
            bound.push(key.clone());
        } else {
            let v = values.get(&a.name).cloned().unwrap_or(Value::Null);
            bound.push(v.coerce(&a.ty).unwrap_or(Value::Null));
        }
    }
    conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(bound.iter().map(SqlValue)))?;
    Ok(())
}

/// The row number of a row, whether shown or hidden.
pub(crate) fn rid_of(conn: &Connection, meta: &EntityMetadata, row_id: &RowId) -> Result<Option<i64>> {
    let sql = format!(
        "SELECT {RID} FROM {} WHERE {} = ?1",
        quote(&data_table(meta.name.as_str())),
        quote(meta.primary_key.as_str())
    );
    let key = key_value(meta, row_id)?;
    Ok(conn.prepare_cached(&sql)?.query_row([SqlValue(&key)], |r| r.get(0)).optional()?)
}

/// Whether a partition of `entity` other than `except` holds row number `rid`.
pub(crate) fn held_rid(
    conn: &Connection,
    entity: &EntityName,
    except: Option<i64>,
    rid: i64,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM \"sync:partitions\" p JOIN \"sync:membership\" m ON m.pid = p.pid \
             WHERE p.entity = ?1 AND m.rid = ?2 AND p.pid IS NOT ?3 LIMIT 1",
        )?
        .query_row(params![entity.as_str(), rid, except], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Takes the row out of the app's view: hidden while a partition still
/// holds it (its membership refers to it), deleted otherwise.
pub(crate) fn delete_visible(conn: &Connection, meta: &EntityMetadata, row_id: &RowId) -> Result<()> {
    let Some(rid) = rid_of(conn, meta, row_id)? else { return Ok(()) };
    let table = quote(&data_table(meta.name.as_str()));
    if held_rid(conn, &meta.name, None, rid)? {
        conn.prepare_cached(&format!("UPDATE {table} SET {HIDDEN} = 1 WHERE {RID} = ?1"))?.execute([rid])?;
    } else {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE {RID} = ?1"))?.execute([rid])?;
    }
    Ok(())
}

/// Row values as a JSON object (wire form), for shadows and the conflict log.
pub(crate) fn values_to_json(values: &std::collections::BTreeMap<sync_core::ColumnName, Value>) -> String {
    let obj: serde_json::Map<String, serde_json::Value> =
        values.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_json())).collect();
    serde_json::Value::Object(obj).to_string()
}

/// Row values from their JSON object form, coerced to `meta`'s types.
/// Columns the schema no longer has are dropped; values that no longer fit
/// their column's type become null.
pub(crate) fn values_from_json(
    meta: &EntityMetadata,
    text: &str,
) -> Result<std::collections::BTreeMap<sync_core::ColumnName, Value>> {
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in obj {
        if let Some(a) = meta.attribute(&k) {
            out.insert(a.name.clone(), Value::from_json(v).coerce(&a.ty).unwrap_or(Value::Null));
        }
    }
    Ok(out)
}

/// Like [`values_from_json`] but keeps every column, typed where the schema
/// knows it (for the pending-mutation list, which must show what was edited
/// even when the schema has since dropped a column).
pub(crate) fn loose_values_from_json(
    meta: Option<&EntityMetadata>,
    text: &str,
) -> Result<std::collections::BTreeMap<sync_core::ColumnName, Value>> {
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in obj {
        let name = sync_core::ColumnName::new(k).map_err(|e| ClientError::corrupt(e.to_string()))?;
        let v = Value::from_json(v);
        let v = match meta.and_then(|m| m.attribute(name.as_str())) {
            Some(a) => v.clone().coerce(&a.ty).unwrap_or(v),
            None => v,
        };
        out.insert(name, v);
    }
    Ok(out)
}

pub(crate) fn now_text() -> String {
    sync_core::value::format_datetime(time::OffsetDateTime::now_utc())
}

impl Store {
    /// Every visible row of `entity`, ordered by key.
    pub fn all_rows(&self, entity: &EntityName) -> Result<Vec<sync_core::Row>> {
        let meta = self.require_schema(entity)?;
        let cols: Vec<String> = meta.attributes.iter().map(|a| quote(a.name.as_str())).collect();
        let pk = meta
            .attributes
            .iter()
            .position(|a| a.name == meta.primary_key)
            .ok_or_else(|| ClientError::corrupt(format!("schema of '{entity}' lacks its key")))?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {HIDDEN} = 0 ORDER BY {}",
            cols.join(", "),
            quote(&data_table(meta.name.as_str())),
            quote(meta.primary_key.as_str())
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = std::collections::BTreeMap::new();
            for (i, a) in meta.attributes.iter().enumerate() {
                values.insert(a.name.clone(), read_value(r.get_ref(i)?, &a.ty)?);
            }
            let id = values.get(&meta.attributes[pk].name).map(Value::canonical_text).unwrap_or_default();
            let id = RowId::new(id).map_err(|e| ClientError::corrupt(e.to_string()))?;
            out.push(sync_core::Row { id, values });
        }
        Ok(out)
    }

    /// Restarts a repair whose stream the server refused: the partitions
    /// under repair are set aside again and read from the start.
    pub(crate) fn restart_repair(&mut self) -> Result<()> {
        self.conn.execute(
            "UPDATE \"sync:partitions\" SET repair = ?1 WHERE repair = ?2",
            params![repair::NEEDED, repair::RUNNING],
        )?;
        self.begin_repair().map(drop)
    }

    /// The state of the local copy.
    pub fn status(&self) -> Result<crate::events::Status> {
        let count = |k: &str| -> Result<u64> { Ok(self.meta(k)?.and_then(|s| s.parse().ok()).unwrap_or(0)) };
        let mut entities = Vec::new();
        for meta in self.schemas() {
            let rows: i64 = self.conn.query_row(
                &format!("SELECT count(*) FROM {}", quote(meta.name.as_str())),
                [],
                |r| r.get(0),
            )?;
            entities.push(crate::events::EntityCount { entity: meta.name.clone(), rows: rows as u64 });
        }
        let mut partitions = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT key, entity, sum, count, repair FROM \"sync:partitions\" ORDER BY key")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (k, entity, sum, count, state) = row?;
                partitions.push(crate::events::PartitionStatus {
                    key: PartitionKey::new(k).map_err(|e| ClientError::corrupt(e.to_string()))?,
                    entity: EntityName::new(entity).map_err(|e| ClientError::corrupt(e.to_string()))?,
                    checksum: sync_core::Checksum { sum: sum as u32, count: count as u64 },
                    repair: match state {
                        repair::NONE => "none",
                        repair::NEEDED => "needed",
                        _ => "running",
                    }
                    .to_owned(),
                });
            }
        }
        let conflicts: i64 =
            self.conn.query_row("SELECT count(*) FROM \"sync:conflicts\"", [], |r| r.get(0))?;
        Ok(crate::events::Status {
            has_cursor: self.cursor()?.is_some(),
            last_sync: self.meta(key::LAST_SYNC)?,
            schema_version: self.meta(key::SCHEMA_VERSION)?.and_then(|s| s.parse().ok()),
            pending: self.pending_count()?,
            conflicts: conflicts as u64,
            entities,
            partitions,
            resyncs: count(key::RESYNCS)?,
            repairs: count(key::REPAIRS)?,
        })
    }
}

impl Store {
    /// Checks the local copy against itself: each partition's checksum is
    /// recomputed from its memberships and compared with the running one,
    /// and every held row must be present in its table (or have pending
    /// edits). Partitions that fail are marked for repair, which the next
    /// sync runs. Returns them.
    pub fn verify(&mut self) -> Result<Vec<PartitionKey>> {
        let parts = Store::partitions(&self.conn)?;
        let mut bad = Vec::new();
        for (k, p) in &parts {
            if p.repair != repair::NONE {
                continue;
            }
            let (sum, count): (i64, i64) = self.conn.query_row(
                "SELECT sum, count FROM \"sync:partitions\" WHERE pid = ?1",
                [p.pid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut computed = sync_core::Checksum::default();
            let mut missing = false;
            if let Some(meta) = self.schema(&p.entity) {
                let sql = format!(
                    "SELECT CAST(d.{k} AS TEXT), m.version, d.{HIDDEN}, \
                       EXISTS (SELECT 1 FROM \"sync:shadow\" s WHERE s.entity = ?2 AND s.row_id = CAST(d.{k} AS TEXT)) \
                     FROM \"sync:membership\" m LEFT JOIN {t} d ON d.{RID} = m.rid WHERE m.pid = ?1",
                    k = quote(meta.primary_key.as_str()),
                    t = quote(&data_table(meta.name.as_str())),
                );
                let mut stmt = self.conn.prepare(&sql)?;
                let mut rows = stmt.query(params![p.pid, p.entity.as_str()])?;
                while let Some(r) = rows.next()? {
                    let version = sync_core::Seq(r.get::<_, i64>(1)? as u64);
                    let Some(id) = r.get::<_, Option<String>>(0)? else {
                        // A membership of a row that is gone.
                        missing = true;
                        continue;
                    };
                    let row_id = RowId::new(id).map_err(|e| ClientError::corrupt(e.to_string()))?;
                    computed.add(&p.entity, &row_id, version);
                    let hidden: i64 = r.get(2)?;
                    let pending: bool = r.get(3)?;
                    if hidden != 0 && !pending {
                        missing = true;
                    }
                }
            } else {
                missing = true;
            }
            if missing || i64::from(computed.sum) != sum || computed.count as i64 != count {
                tracing::warn!(partition = %k, missing, "local copy of partition failed verification");
                self.conn.execute(
                    "UPDATE \"sync:partitions\" SET repair = ?2 WHERE pid = ?1",
                    params![p.pid, repair::NEEDED],
                )?;
                bad.push(k.clone());
            }
        }
        // Rows shown although no partition holds them, no edit is pending on
        // them and no sweep is due: their entity's partitions are repaired
        // (the repair sweeps every row of the entity).
        for meta in self.schemas() {
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {t} e WHERE NOT EXISTS (SELECT 1 FROM \"sync:membership\" m \
                   JOIN \"sync:partitions\" p ON p.pid = m.pid WHERE p.entity = ?1 AND m.rid = e.{RID}) \
                 AND NOT EXISTS (SELECT 1 FROM \"sync:shadow\" s WHERE s.entity = ?1 AND s.row_id = CAST(e.{k} AS TEXT)) \
                 AND NOT EXISTS (SELECT 1 FROM \"sync:sweep\" w WHERE w.entity = ?1 AND w.row_id = CAST(e.{k} AS TEXT)))",
                t = quote(&data_table(meta.name.as_str())),
                k = quote(meta.primary_key.as_str()),
            );
            let orphans: bool = self.conn.query_row(&sql, [meta.name.as_str()], |r| r.get(0))?;
            if orphans {
                tracing::warn!(entity = %meta.name, "rows shown that no partition holds");
                for (k, p) in &parts {
                    if p.entity == meta.name && p.repair == repair::NONE && !bad.contains(k) {
                        self.conn.execute(
                            "UPDATE \"sync:partitions\" SET repair = ?2 WHERE pid = ?1",
                            params![p.pid, repair::NEEDED],
                        )?;
                        bad.push(k.clone());
                    }
                }
            }
        }
        bad.sort();
        Ok(bad)
    }
}
