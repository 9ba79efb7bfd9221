//! One org's staging database: its layout and every operation on it, as
//! blocking functions over a [`Connection`]. `store.rs` runs them off the
//! async runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use sync_core::filter::{MembershipPlanner, validate_profile};
use sync_core::org::EntityStatus;
use sync_core::staging::{ApplyOutcome, MutationRecord, PullPage, PullPlan, PulledChange, SchemaChange};
use sync_core::{
    ChangePage, ChangeToken, Checksum, EntityMetadata, EntityName, Error, MutationId, OrgId, OrgStatus,
    PartitionKey, Profile, ProfileName, PulledRow, Row, RowChecker, RowId, Seq, SyncRunReport,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{R, StoreError};
use crate::membership::MembershipWriter;
use crate::membership::{MAX_SEQ, Member, Op, PartRef, Parts, entry_id, is_stale};
use crate::sql::{ConnSettings, open, quote};
use crate::table::{
    PARTS_COLUMN, RESERVED_PREFIX, RID_COLUMN, Stored, Table, VERSION_COLUMN, seq_of, version_param,
};

/// Approximate bytes a remove op counts against a pull's byte budget, on top
/// of its row id (as the in-memory store counts it).
const REMOVE_OVERHEAD: usize = 8;

/// The layout version written to `_sync_meta.format`.
const FORMAT_VERSION: i64 = 1;

/// Tables of an org database besides the entity tables. Every statement is
/// idempotent, so creating an existing org keeps its data.
pub(crate) const ORG_DDL: &str = "
CREATE TABLE IF NOT EXISTS _sync_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO _sync_meta (key, value) VALUES
    ('format', 1), ('head', 0), ('schema_version', 0), ('tombstone_floor', 0);
CREATE TABLE IF NOT EXISTS _sync_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _sync_schemas (
    eid         INTEGER PRIMARY KEY,
    entity      TEXT NOT NULL UNIQUE,
    metadata    TEXT NOT NULL,
    schema_hash TEXT NOT NULL,
    row_count   INTEGER NOT NULL DEFAULT 0,
    next_rid    INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS _sync_profiles (
    name    TEXT PRIMARY KEY,
    profile TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _sync_partitions (
    pid            INTEGER PRIMARY KEY,
    key            TEXT NOT NULL UNIQUE,
    checksum_sum   INTEGER NOT NULL,
    checksum_count INTEGER NOT NULL,
    eid            INTEGER,
    mixed          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS _sync_membership (
    id      INTEGER PRIMARY KEY,
    eid     INTEGER NOT NULL,
    rid     INTEGER NOT NULL,
    version INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    row_id  TEXT
);
CREATE TABLE IF NOT EXISTS _sync_tokens (
    entity TEXT PRIMARY KEY,
    token  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _sync_runs (
    entity       TEXT PRIMARY KEY,
    last_run     TEXT,
    last_success TEXT,
    last_error   TEXT,
    last_rows    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS _sync_mutations (
    id          TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    checkpoint  INTEGER NOT NULL
);
";

/// Tables added to the layout after databases of [`FORMAT_VERSION`] were
/// first written; created with a new database and when an older one is
/// opened. `_sync_graves` keeps, per deleted row (entity id, stored key),
/// the row's membership references (its tombstones) and the newest of
/// their seqs, so a row created again with that key replaces its
/// tombstones instead of sitting beside them. `_sync_stale` lists the
/// stale entries of the membership log (see [`crate::membership`]).
const LATER_DDL: &str = "
CREATE TABLE IF NOT EXISTS _sync_graves (
    eid   INTEGER NOT NULL,
    key   NOT NULL,
    parts TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (eid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _sync_stale (
    id INTEGER PRIMARY KEY
);
";

/// The live membership log, with partition keys, entity names and seqs
/// spelled out: what a person reading the file wants to see.
const MEMBERSHIP_VIEW: &str = "
CREATE VIEW _sync_membership_view AS
    SELECT p.key AS partition, s.entity, m.rid, m.row_id, m.id & 1099511627775 AS seq, m.version, m.removed
    FROM _sync_membership m
    JOIN _sync_partitions p ON p.pid = m.id >> 40
    JOIN _sync_schemas s ON s.eid = m.eid
    WHERE m.id NOT IN (SELECT id FROM _sync_stale);
";

/// Completes the layout of an existing org database (see [`LATER_DDL`]);
/// replaces a membership view written before stale entries existed.
pub(crate) fn complete_layout(conn: &Connection) -> R<()> {
    conn.execute_batch(LATER_DDL)?;
    let view: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'view' AND name = '_sync_membership_view'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if !view.is_some_and(|sql| sql.contains("_sync_stale")) {
        conn.execute_batch(&format!("DROP VIEW IF EXISTS _sync_membership_view; {MEMBERSHIP_VIEW}"))?;
    }
    Ok(())
}

/// Creates (or opens and completes) an org's database file; returns the
/// connection (to keep as the org's writer), its incarnation and head.
pub(crate) fn create_file(path: &Path, settings: &ConnSettings) -> R<(Connection, String, Seq)> {
    let mut conn = open(path, settings, true, false)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(ORG_DDL)?;
    complete_layout(&tx)?;
    // This creation of the org: a new file gets a new id, an existing one keeps its own.
    tx.execute(
        "INSERT OR IGNORE INTO _sync_info (key, value) VALUES ('incarnation', ?1)",
        [uuid::Uuid::new_v4().simple().to_string()],
    )?;
    let format = meta_get(&tx, "format")?;
    if format != FORMAT_VERSION {
        return Err(StoreError::Corrupt(format!(
            "'{}' has layout version {format}; this build reads version {FORMAT_VERSION}",
            path.display()
        )));
    }
    tx.commit()?;
    let facts = (incarnation(&conn)?, head(&conn)?);
    Ok((conn, facts.0, facts.1))
}

fn meta_get(conn: &Connection, key: &str) -> R<i64> {
    conn.prepare_cached("SELECT value FROM _sync_meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("_sync_meta has no '{key}'")))
}

fn meta_set(conn: &Connection, key: &str, value: i64) -> R<()> {
    conn.prepare_cached("UPDATE _sync_meta SET value = ?2 WHERE key = ?1")?
        .execute(rusqlite::params![key, value])?;
    Ok(())
}

/// The id of this creation of the org (see [`sync_core::OrgStaging::incarnation`]).
pub(crate) fn incarnation(conn: &Connection) -> R<String> {
    conn.query_row("SELECT value FROM _sync_info WHERE key = 'incarnation'", [], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt("the org database has no incarnation".into()))
}

/// The org's head seq.
pub(crate) fn head(conn: &Connection) -> R<Seq> {
    seq_of(meta_get(conn, "head")?)
}

pub(crate) fn schema_version(conn: &Connection) -> R<u64> {
    Ok(seq_of(meta_get(conn, "schema_version")?)?.0)
}

pub(crate) fn tombstone_floor(conn: &Connection) -> R<Seq> {
    seq_of(meta_get(conn, "tombstone_floor")?)
}

fn corrupt_json(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A staged entity: its id in this database and its schema.
pub(crate) struct Staged {
    pub(crate) eid: i64,
    pub(crate) meta: EntityMetadata,
}

fn parse_schema(text: &str) -> R<EntityMetadata> {
    serde_json::from_str(text).map_err(|e| corrupt_json("stored schema", e))
}

/// The staged schema of `entity`, if any.
pub(crate) fn load_schema(conn: &Connection, entity: &str) -> R<Option<Staged>> {
    let found: Option<(i64, String)> = conn
        .prepare_cached("SELECT eid, metadata FROM _sync_schemas WHERE entity = ?1")?
        .query_row([entity], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    found.map(|(eid, text)| Ok(Staged { eid, meta: parse_schema(&text)? })).transpose()
}

/// The staged schema with id `eid`.
fn load_schema_by_id(conn: &Connection, eid: i64) -> R<Staged> {
    let text: String = conn
        .prepare_cached("SELECT metadata FROM _sync_schemas WHERE eid = ?1")?
        .query_row([eid], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("membership names the unknown entity id {eid}")))?;
    Ok(Staged { eid, meta: parse_schema(&text)? })
}

fn require_schema(conn: &Connection, entity: &EntityName) -> R<Staged> {
    load_schema(conn, entity.as_str())?
        .ok_or_else(|| Error::not_found(format!("entity '{entity}' is not staged")).into())
}

/// Every staged schema, ordered by entity name.
pub(crate) fn load_schemas(conn: &Connection) -> R<Vec<EntityMetadata>> {
    let mut stmt = conn.prepare_cached("SELECT metadata FROM _sync_schemas ORDER BY entity")?;
    let texts = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    texts.iter().map(|t| parse_schema(t)).collect()
}

/// Every profile, ordered by name.
pub(crate) fn load_profiles(conn: &Connection) -> R<Vec<Profile>> {
    let mut stmt = conn.prepare_cached("SELECT profile FROM _sync_profiles ORDER BY name")?;
    let texts = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    texts.iter().map(|t| serde_json::from_str(t).map_err(|e| corrupt_json("stored profile", e))).collect()
}

pub(crate) fn load_profile(conn: &Connection, name: &ProfileName) -> R<Option<Profile>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT profile FROM _sync_profiles WHERE name = ?1")?
        .query_row([name.as_str()], |r| r.get(0))
        .optional()?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt_json("stored profile", e))).transpose()
}

/// Names this store cannot give to tables or columns.
fn check_reserved(meta: &EntityMetadata) -> R<()> {
    let lower = meta.name.as_str().to_ascii_lowercase();
    if lower.starts_with(RESERVED_PREFIX) || lower.starts_with("sqlite_") {
        return Err(Error::invalid(format!(
            "entity name '{}' uses a prefix reserved by the SQLite store ('{RESERVED_PREFIX}' or 'sqlite_')",
            meta.name
        ))
        .into());
    }
    if let Some(a) = meta.attributes.iter().find(|a| {
        [VERSION_COLUMN, RID_COLUMN, PARTS_COLUMN].iter().any(|r| a.name.as_str().eq_ignore_ascii_case(r))
    }) {
        return Err(Error::invalid(format!(
            "entity '{}': attribute name '{}' is reserved by the SQLite store",
            meta.name, a.name
        ))
        .into());
    }
    Ok(())
}

/// Creates or evolves an entity's table; returns what changed and the head.
pub(crate) fn apply_schema(conn: &mut Connection, meta: &EntityMetadata) -> R<(SchemaChange, Seq)> {
    meta.validate()?;
    check_reserved(meta)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let old = load_schema(&tx, meta.name.as_str())?;
    let mut head = head(&tx)?;
    let change = match old {
        None => {
            let clash: Option<String> = tx
                .prepare_cached("SELECT entity FROM _sync_schemas WHERE lower(entity) = lower(?1)")?
                .query_row([meta.name.as_str()], |r| r.get(0))
                .optional()?;
            if let Some(other) = clash {
                return Err(Error::invalid(format!(
                    "entity '{}' differs from the staged entity '{other}' only in case; SQLite table names \
                     are case-insensitive",
                    meta.name
                ))
                .into());
            }
            let table = Table::new(meta.clone())?;
            tx.execute_batch(&table.create_sql(&table.name))?;
            if let Some(index) = table.index_sql() {
                tx.execute_batch(&index)?;
            }
            tx.prepare_cached(
                "INSERT INTO _sync_schemas (entity, metadata, schema_hash) VALUES (?1, ?2, ?3)",
            )?
            .execute(rusqlite::params![
                meta.name.as_str(),
                serde_json::to_string(meta).map_err(|e| corrupt_json("schema", e))?,
                meta.schema_hash()
            ])?;
            SchemaChange::Created
        }
        Some(old) if old.meta == *meta => SchemaChange::Unchanged,
        Some(old) => {
            check_profiles_still_compile(&tx, meta)?;
            evolve_table(&tx, &old.meta, meta, &mut head)?;
            tx.prepare_cached("UPDATE _sync_schemas SET metadata = ?2, schema_hash = ?3 WHERE eid = ?1")?
                .execute(rusqlite::params![
                    old.eid,
                    serde_json::to_string(meta).map_err(|e| corrupt_json("schema", e))?,
                    meta.schema_hash()
                ])?;
            // Types and columns changed: filters may now select other rows.
            let profiles = load_profiles(&tx)?;
            let planner = MembershipPlanner::new(meta, &profiles)?;
            let mut writer = MembershipWriter::new(&tx)?;
            let staged = Staged { eid: old.eid, meta: meta.clone() };
            recompute_entity(&tx, &staged, &planner, &mut writer, &mut head)?;
            writer.flush()?;
            SchemaChange::Altered
        }
    };
    if change != SchemaChange::Unchanged {
        meta_set(&tx, "schema_version", meta_get(&tx, "schema_version")? + 1)?;
        meta_set(&tx, "head", version_param(head)?)?;
    }
    tx.commit()?;
    Ok((change, head))
}

/// Every profile naming `meta.name` must still compile against the new
/// schema; otherwise the schema change is refused and nothing changes.
fn check_profiles_still_compile(tx: &Transaction<'_>, meta: &EntityMetadata) -> R<()> {
    let mut schemas = load_schemas(tx)?;
    if let Some(slot) = schemas.iter_mut().find(|m| m.name == meta.name) {
        *slot = meta.clone();
    }
    for profile in load_profiles(tx)? {
        if profile.items.iter().any(|i| i.entity == meta.name) {
            validate_profile(&profile, &schemas).map_err(|e| {
                Error::invalid(format!(
                    "the new schema of '{}' breaks profile '{}' ({e}); change the profile first",
                    meta.name, profile.name
                ))
            })?;
        }
    }
    Ok(())
}

/// Brings the table of `old` to `new`: a changed primary key (name or type)
/// re-creates the table, which is refused (`InvalidInput`) while rows are
/// staged; a changed type rebuilds it, converting values with
/// [`sync_core::Value::coerce`] (values that do not convert become null, and
/// rows whose values changed get a new version so devices fetch them
/// again); added and removed attributes become `ALTER TABLE … ADD / DROP
/// COLUMN`. Row numbers are kept, so membership stays attached.
fn evolve_table(tx: &Transaction<'_>, old: &EntityMetadata, new: &EntityMetadata, head: &mut Seq) -> R<()> {
    let old_table = Table::new(old.clone())?;
    let new_table = Table::new(new.clone())?;
    let key_changed = old.primary_key != new.primary_key || old.key_type()? != new.key_type()?;
    if key_changed {
        let staged: bool =
            tx.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {})", old_table.name), [], |r| r.get(0))?;
        if staged {
            return Err(Error::invalid(format!(
                "entity '{}': the primary key cannot change from {} ({}) to {} ({}) while rows are staged",
                new.name,
                old.primary_key,
                old.key_type()?.name(),
                new.primary_key,
                new.key_type()?.name()
            ))
            .into());
        }
        tx.execute_batch(&format!("DROP TABLE {};", old_table.name))?;
        tx.execute_batch(&new_table.create_sql(&new_table.name))?;
        if let Some(index) = new_table.index_sql() {
            tx.execute_batch(&index)?;
        }
        return Ok(());
    }
    let retyped = new.attributes.iter().any(|a| old.attribute(a.name.as_str()).is_some_and(|o| o.ty != a.ty));
    // Rows that lose a value to a dropped column change: new versions (the
    // recomputation that follows re-puts them in their partitions).
    let dropped: Vec<String> = old
        .attributes
        .iter()
        .filter(|a| new.attribute(a.name.as_str()).is_none())
        .map(|a| format!("{} IS NOT NULL", quote(a.name.as_str())))
        .collect();
    if !retyped && !dropped.is_empty() {
        let rids: Vec<i64> = {
            let sql = format!(
                "SELECT {rid} FROM {} WHERE {} ORDER BY {rid}",
                old_table.name,
                dropped.join(" OR "),
                rid = quote(RID_COLUMN)
            );
            let mut stmt = tx.prepare(&sql)?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        let mut bump = tx.prepare(&format!(
            "UPDATE {} SET {} = ?2 WHERE {} = ?1",
            old_table.name,
            quote(VERSION_COLUMN),
            quote(RID_COLUMN)
        ))?;
        for rid in rids {
            *head = head.next();
            bump.execute([rid, version_param(*head)?])?;
        }
    }
    if !retyped {
        for a in &old.attributes {
            if new.attribute(a.name.as_str()).is_none() {
                tx.execute_batch(&format!(
                    "ALTER TABLE {} DROP COLUMN {};",
                    old_table.name,
                    quote(a.name.as_str())
                ))?;
            }
        }
        for a in &new.attributes {
            if old.attribute(a.name.as_str()).is_none() {
                tx.execute_batch(&format!(
                    "ALTER TABLE {} ADD COLUMN {} {};",
                    old_table.name,
                    quote(a.name.as_str()),
                    crate::sql::column_type(&a.ty)
                ))?;
            }
        }
        return Ok(());
    }
    // Rebuild: copy every row into a table of the new shape, then swap.
    let scratch = quote(&format!("{RESERVED_PREFIX}rebuild"));
    tx.execute_batch(&format!("DROP TABLE IF EXISTS {scratch};"))?;
    tx.execute_batch(&new_table.create_sql(&scratch))?;
    {
        let mut read = tx.prepare(&old_table.select_all_sql())?;
        let mut insert = tx.prepare(&new_table.insert_sql(&scratch))?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let Stored { rid, staged, parts } = old_table.decode_row(r)?;
            let mut values = BTreeMap::new();
            let mut changed = false;
            for a in &new.attributes {
                let v = staged.row.values.get(&a.name).cloned().unwrap_or(sync_core::Value::Null);
                let converted = match old.attribute(a.name.as_str()) {
                    Some(o) if o.ty != a.ty => {
                        let c = v.clone().coerce(&a.ty).unwrap_or(sync_core::Value::Null);
                        changed |= c != v;
                        c
                    }
                    Some(_) => v,
                    None => sync_core::Value::Null,
                };
                values.insert(a.name.clone(), converted);
            }
            let version = if changed {
                *head = head.next();
                *head
            } else {
                staged.version
            };
            let row = sync_core::Row { id: staged.row.id, values };
            new_table.bind_row(&mut insert, rid, &row, version, &parts)?;
            insert.raw_execute()?;
        }
    }
    tx.execute_batch(&format!(
        "DROP TABLE {}; ALTER TABLE {scratch} RENAME TO {};",
        old_table.name, new_table.name
    ))?;
    if let Some(index) = new_table.index_sql() {
        tx.execute_batch(&index)?;
    }
    Ok(())
}

/// Makes the membership of one entity equal `planner` applied to every
/// staged row, comparing each row's references with the partitions the
/// planner puts it in: entered partitions and stale entries get puts,
/// left partitions get removes; a row that gets any op gets one new seq.
fn recompute_entity(
    tx: &Transaction<'_>,
    staged: &Staged,
    planner: &MembershipPlanner,
    writer: &mut MembershipWriter<'_>,
    head: &mut Seq,
) -> R<()> {
    const CHUNK: i64 = 1000;
    let table = Table::new(staged.meta.clone())?;
    let entity = &staged.meta.name;
    let select = format!(
        "SELECT {} FROM {} WHERE {} > ?1 ORDER BY {} LIMIT {CHUNK}",
        table.select_list(),
        table.name,
        quote(RID_COLUMN),
        quote(RID_COLUMN)
    );
    let mut after = 0i64;
    loop {
        let chunk: Vec<Stored> = {
            let mut stmt = tx.prepare_cached(&select)?;
            let mut rows = stmt.query([after])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(table.decode_row(r)?);
            }
            out
        };
        let Some(last) = chunk.last() else { break };
        after = last.rid;
        for stored in &chunk {
            let version = stored.staged.version;
            let m = Member { eid: staged.eid, rid: stored.rid, entity, row_id: &stored.staged.row.id };
            let mut desired = Vec::new();
            for key in planner.partitions(&stored.staged.row) {
                desired.push(writer.pid(&key)?);
            }
            let mut seq = None;
            let mut next = |head: &mut Seq| {
                *seq.get_or_insert_with(|| {
                    *head = head.next();
                    *head
                })
            };
            let mut parts = Vec::with_capacity(desired.len());
            let mut changed = false;
            for r in &stored.parts.0 {
                let wanted = desired.contains(&r.pid);
                let current = !r.removed && r.seq >= version_param(version)?;
                // A live entry older than the row's version (after a
                // rebuild) refers to another version: read it.
                let live_version = if r.removed {
                    Seq::ZERO
                } else if current {
                    version
                } else {
                    writer.entry_version(r.pid, r.seq)?.unwrap_or(version)
                };
                if wanted && current {
                    parts.push(*r);
                } else if wanted {
                    let s = next(head);
                    parts.push(writer.write(r.pid, m, Some((*r, live_version)), s, Op::Put(version))?);
                    changed = true;
                } else if !r.removed {
                    let s = next(head);
                    parts.push(writer.write(
                        r.pid,
                        m,
                        Some((*r, live_version)),
                        s,
                        Op::Remove(Some(version)),
                    )?);
                    changed = true;
                } else {
                    parts.push(*r);
                }
            }
            for pid in desired {
                if stored.parts.get(pid).is_none() {
                    let s = next(head);
                    parts.push(writer.write(pid, m, None, s, Op::Put(version))?);
                    changed = true;
                }
            }
            if changed {
                table.set_parts(tx, stored.rid, &Parts(parts))?;
            }
        }
        if (chunk.len() as i64) < CHUNK {
            break;
        }
    }
    Ok(())
}

/// A row of a page checked against its schema, with the partitions it
/// belongs to.
type Prepared = (Row, Vec<PartitionKey>);

/// Pages of at least this many rows are checked and planned by a helper
/// thread while the writer stages them: at a million-row ingest that is a
/// fifth of the writer's work taken off it. Smaller pages are prepared in
/// place; a thread would cost more than it saves.
const PIPELINE_ROWS: usize = 2048;
/// Rows per chunk a large page is prepared in.
const PIPELINE_CHUNK: usize = 256;
/// Chunks the helper prepares ahead of the writer at most: prepared rows
/// are staged while still in the CPU's caches.
const PIPELINE_AHEAD: usize = 4;

/// Checks `rows` and plans their membership, in order.
fn prepare(
    checker: &RowChecker<'_>,
    planner: &MembershipPlanner,
    table: &Table,
    rows: impl Iterator<Item = Row>,
) -> R<Vec<Prepared>> {
    rows.map(|row| {
        let id = row.id.clone();
        let row = checker
            .check(row)
            .map_err(|e| Error::invalid(format!("entity '{}', row '{id}': {e}", table.meta.name)))?;
        let keys = planner.partitions(&row);
        Ok((row, keys))
    })
    .collect()
}

/// What the checking and planning of a page needs.
#[derive(Clone, Copy)]
struct Preparer<'e> {
    checker: &'e RowChecker<'e>,
    planner: &'e MembershipPlanner,
    table: &'e Table,
}

impl Preparer<'_> {
    fn prepare(&self, rows: Vec<Row>) -> R<Vec<Prepared>> {
        prepare(self.checker, self.planner, self.table, rows.into_iter())
    }
}

/// One chunk of a large page.
enum Slot {
    /// Not begun.
    Rows(Vec<Row>),
    /// Being prepared by the helper.
    Preparing,
    /// Prepared by the helper, waiting for the writer.
    Ready(R<Vec<Prepared>>),
    /// Taken by the writer.
    Taken,
}

/// The chunks of a large page, shared by the writer and its helper.
struct Chunks {
    state: Mutex<ChunkState>,
    /// Notified when a chunk is prepared, finished with, or no longer wanted.
    changed: Condvar,
}

struct ChunkState {
    slots: Vec<Slot>,
    /// Chunks the writer has taken; the next it takes is this one.
    taken: usize,
    /// Chunks the writer is done with, for the helper to drop.
    finished: Vec<Vec<Prepared>>,
    /// The writer wants no more chunks (it is through the page, or failed).
    done: bool,
}

impl Chunks {
    /// `rows` in chunks of [`PIPELINE_CHUNK`], none begun.
    fn new(rows: Vec<Row>) -> Self {
        let mut rows = rows.into_iter();
        let mut slots = Vec::with_capacity(rows.len().div_ceil(PIPELINE_CHUNK));
        while rows.len() > 0 {
            slots.push(Slot::Rows(rows.by_ref().take(PIPELINE_CHUNK).collect()));
        }
        Chunks {
            state: Mutex::new(ChunkState { slots, taken: 0, finished: Vec::new(), done: false }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChunkState> {
        crate::store::lock(&self.state)
    }

    /// The helper: prepares chunks in page order with `prepare`, ahead of
    /// the writer, then drops the chunks the writer hands back, until the
    /// writer is done.
    fn help(&self, prepare: impl Fn(Vec<Row>) -> R<Vec<Prepared>>) {
        let mut state = self.lock();
        let mut at = 0;
        loop {
            while at < state.slots.len() && !matches!(state.slots[at], Slot::Rows(_)) {
                at += 1;
            }
            if !state.done && at < state.slots.len() && at < state.taken + PIPELINE_AHEAD {
                let rows = match std::mem::replace(&mut state.slots[at], Slot::Preparing) {
                    Slot::Rows(rows) => rows,
                    other => {
                        state.slots[at] = other;
                        continue;
                    }
                };
                drop(state);
                // A panic here must not leave the writer waiting for this
                // chunk: it gets an error instead, and the page rolls back.
                let chunk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepare(rows)))
                    .unwrap_or_else(|_| Err(Error::internal("checking and planning rows panicked").into()));
                state = self.lock();
                state.slots[at] = Slot::Ready(chunk);
                self.changed.notify_all();
            } else if !state.finished.is_empty() {
                let finished = std::mem::take(&mut state.finished);
                drop(state);
                drop(finished);
                state = self.lock();
            } else if state.done {
                return;
            } else {
                state = self.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }
}

/// The rows of a page as the writer stages them: chunks of prepared rows,
/// in page order; the writer stops at the first that failed to prepare.
enum PreparedRows<'e> {
    /// Prepared in place, in one chunk.
    Ready(Option<R<Vec<Prepared>>>),
    /// Prepared by a helper thread ahead of the writer, and by the writer
    /// itself when its next chunk is not begun (the helper starts late, or
    /// is kept off a busy CPU): the writer never waits for work it could
    /// do. The helper also drops the chunks the writer is done with.
    Shared { chunks: Arc<Chunks>, preparer: Preparer<'e> },
}

impl<'e> PreparedRows<'e> {
    /// Starts preparing `rows`: with a helper thread of `scope` for a large
    /// page (by the writer alone when the thread cannot be started), in
    /// place otherwise.
    fn start<'s>(scope: &'s std::thread::Scope<'s, 'e>, rows: Vec<Row>, preparer: Preparer<'e>) -> Self {
        if rows.len() < PIPELINE_ROWS {
            return PreparedRows::Ready(Some(preparer.prepare(rows)));
        }
        let chunks = Arc::new(Chunks::new(rows));
        let helper = Arc::clone(&chunks);
        let started = std::thread::Builder::new()
            .name("sqlite-prepare".into())
            .spawn_scoped(scope, move || helper.help(|rows| preparer.prepare(rows)));
        if let Err(e) = started {
            tracing::warn!(error = %e, "could not start a thread to prepare rows; the writer prepares them");
        }
        PreparedRows::Shared { chunks, preparer }
    }

    /// The next chunk, `None` after the last.
    fn next(&mut self) -> Option<R<Vec<Prepared>>> {
        match self {
            PreparedRows::Ready(chunk) => chunk.take(),
            PreparedRows::Shared { chunks, preparer } => {
                let mut state = chunks.lock();
                let at = state.taken;
                if at >= state.slots.len() {
                    return None;
                }
                state.taken += 1;
                chunks.changed.notify_all();
                loop {
                    match std::mem::replace(&mut state.slots[at], Slot::Taken) {
                        Slot::Ready(chunk) => return Some(chunk),
                        Slot::Rows(rows) => {
                            drop(state);
                            return Some(preparer.prepare(rows));
                        }
                        Slot::Preparing => {
                            state.slots[at] = Slot::Preparing;
                            state =
                                chunks.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        Slot::Taken => {
                            return Some(Err(Error::internal(format!(
                                "chunk {at} of a page was taken twice"
                            ))
                            .into()));
                        }
                    }
                }
            }
        }
    }

    /// Hands back a chunk the writer is done with.
    fn finished(&self, chunk: Vec<Prepared>) {
        if let PreparedRows::Shared { chunks, .. } = self {
            chunks.lock().finished.push(chunk);
            chunks.changed.notify_all();
        }
    }
}

impl Drop for PreparedRows<'_> {
    /// Tells the helper that no more chunks are wanted.
    fn drop(&mut self) {
        if let PreparedRows::Shared { chunks, .. } = self {
            chunks.lock().done = true;
            chunks.changed.notify_all();
        }
    }
}

/// Stages one change page in one transaction (see [`sync_core::OrgStaging::apply_changes`]).
pub(crate) fn apply_changes(conn: &mut Connection, entity: &EntityName, page: ChangePage) -> R<ApplyOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Staged { eid, meta } = require_schema(&tx, entity)?;
    let ChangePage { upserts, deletes, next_token, .. } = page;
    let deletes = deletes
        .iter()
        .map(|id| {
            meta.parse_row_id(id.as_str())
                .map_err(|e| Error::invalid(format!("entity '{entity}', deleted id '{id}': {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let profiles = load_profiles(&tx)?;
    let planner = MembershipPlanner::new(&meta, &profiles)?;
    let table = Table::new(meta)?;
    let checker = table.meta.row_checker()?;
    let mut next_rid: i64 = tx
        .prepare_cached("SELECT next_rid FROM _sync_schemas WHERE eid = ?1")?
        .query_row([eid], |r| r.get(0))?;
    let mut head = head(&tx)?;
    let floor = version_param(tombstone_floor(&tx)?)?;
    let mut outcome = ApplyOutcome::default();
    let mut writer = MembershipWriter::new(&tx)?;
    let mut row_delta: i64 = 0;
    // Deleted rows leave graves (see `LATER_DDL`); most pages meet none.
    let graves: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM _sync_graves WHERE eid = ?1)")?
        .query_row([eid], |r| r.get(0))?;
    let (upserts, staged_rids) = in_storage_order(&tx, &table, upserts)?;
    std::thread::scope(|scope| -> R<()> {
        let mut rows = PreparedRows::start(
            scope,
            upserts,
            Preparer { checker: &checker, planner: &planner, table: &table },
        );
        let mut update = tx.prepare_cached(table.update())?;
        let mut delete = tx.prepare_cached(table.delete())?;
        let mut lookup = tx.prepare_cached(table.select_by_key())?;
        let mut lookup_rid = tx.prepare_cached(table.select_by_rid())?;
        let mut try_insert = tx.prepare_cached(&table.insert_new_sql())?;
        let mut take_grave =
            tx.prepare_cached("DELETE FROM _sync_graves WHERE eid = ?1 AND key = ?2 RETURNING parts")?;
        let mut put_grave = tx.prepare_cached(
            "INSERT INTO _sync_graves (eid, key, parts, seq) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (eid, key) DO UPDATE SET parts = excluded.parts, seq = excluded.seq",
        )?;
        let mut pids = Vec::new();
        let mut updating = false;
        // The staged row numbers `in_storage_order` found, row by row.
        let mut staged_rids = staged_rids.into_iter();
        while let Some(chunk) = rows.next() {
            let chunk = chunk?;
            for (row, keys) in &chunk {
                let staged_rid = staged_rids.next().flatten();
                pids.clear();
                for key in keys {
                    pids.push(writer.pid(key)?);
                }
                let seq = head.next();
                let seq_i = version_param(seq)?;
                // A key with a grave is not staged (a row and its grave never
                // coexist): the row is new and takes over its tombstones.
                let grave = match graves.then(|| table.canonical_key(&row.id)).flatten() {
                    Some(key) => take_grave
                        .query_row(rusqlite::params![eid, key], |r| r.get::<_, String>(0))
                        .optional()?
                        .map(|text| Parts::parse(&text))
                        .transpose()?,
                    None => None,
                };
                if let Some(tombstones) = grave {
                    let m = Member { eid, rid: next_rid, entity, row_id: &row.id };
                    let parts =
                        restage(&mut writer, m, Some((&tombstones, Seq::ZERO)), Some(&pids), seq, floor)?;
                    table.bind_row(&mut try_insert, next_rid, row, seq, &parts)?;
                    if try_insert.raw_execute()? != 1 {
                        return Err(StoreError::Corrupt(format!(
                            "row '{}' of '{entity}' has a grave but is staged",
                            row.id
                        )));
                    }
                    head = seq;
                    next_rid += 1;
                    row_delta += 1;
                    outcome.upserted += 1;
                    continue;
                }
                // A page is usually all new rows (an initial read) or mostly
                // staged ones (changes): start with the insert while rows turn
                // out new, with the lookup while they turn out staged.
                let mut found = match staged_rid {
                    Some(rid) => table.probe(&mut lookup_rid, SqlValue::Integer(rid), row)?,
                    None => None,
                };
                if found.is_none()
                    && updating
                    && let Some(key) = table.canonical_key(&row.id)
                {
                    found = table.probe(&mut lookup, key, row)?;
                }
                if found.is_none() {
                    let parts =
                        Parts(pids.iter().map(|&pid| PartRef { pid, seq: seq_i, removed: false }).collect());
                    table.bind_row(&mut try_insert, next_rid, row, seq, &parts)?;
                    if try_insert.raw_execute()? == 1 {
                        let m = Member { eid, rid: next_rid, entity, row_id: &row.id };
                        for &pid in &pids {
                            writer.write(pid, m, None, seq, Op::Put(seq))?;
                        }
                        head = seq;
                        next_rid += 1;
                        row_delta += 1;
                        outcome.upserted += 1;
                        updating = false;
                        continue;
                    }
                    if !updating && let Some(key) = table.canonical_key(&row.id) {
                        found = table.probe(&mut lookup, key, row)?;
                    }
                }
                let Some(prev) = found else {
                    return Err(StoreError::Corrupt(format!(
                        "row '{}' of '{entity}' is neither new nor staged",
                        row.id
                    )));
                };
                updating = true;
                if prev.unchanged {
                    outcome.unchanged += 1;
                    continue;
                }
                head = seq;
                let m = Member { eid, rid: prev.rid, entity, row_id: &row.id };
                let parts =
                    restage(&mut writer, m, Some((&prev.parts, prev.version)), Some(&pids), head, floor)?;
                table.bind_row(&mut update, prev.rid, row, head, &parts)?;
                update.raw_execute()?;
                outcome.upserted += 1;
            }
            rows.finished(chunk);
        }
        for id in &deletes {
            let Some(key) = table.canonical_key(id) else { continue };
            let Some(prev) = table.lookup(&mut lookup, key.clone())? else { continue };
            head = head.next();
            let m = Member { eid, rid: prev.rid, entity, row_id: &prev.staged.row.id };
            let tombstones =
                restage(&mut writer, m, Some((&prev.parts, prev.staged.version)), None, head, floor)?;
            delete.execute([prev.rid])?;
            if let Some(newest) = tombstones.0.iter().map(|p| p.seq).max() {
                // Deletes come after the page's upserts: no row of this
                // page can meet this grave.
                put_grave.execute(rusqlite::params![eid, key, tombstones.to_text(), newest])?;
            }
            row_delta -= 1;
            outcome.deleted += 1;
        }
        Ok(())
    })?;
    writer.flush()?;
    tx.prepare_cached("UPDATE _sync_schemas SET row_count = row_count + ?2, next_rid = ?3 WHERE eid = ?1")?
        .execute(rusqlite::params![eid, row_delta, next_rid])?;
    if let Some(token) = &next_token {
        tx.prepare_cached(
            "INSERT INTO _sync_tokens (entity, token) VALUES (?1, ?2) \
             ON CONFLICT (entity) DO UPDATE SET token = excluded.token",
        )?
        .execute(rusqlite::params![entity.as_str(), token.0])?;
    }
    meta_set(&tx, "head", version_param(head)?)?;
    tx.commit()?;
    outcome.head = head;
    Ok(outcome)
}

/// How many upserts of a page [`in_storage_order`] looks up before it
/// decides whether the page is mostly staged rows.
const ORDER_SAMPLE: usize = 64;

/// A page's upserts in the order of the staged rows' numbers, rows not
/// staged last and in page order, each with its number where it is
/// staged, when the first rows sampled are mostly staged (changes rather
/// than an initial read); otherwise as they came, with no numbers.
///
/// Rows are numbered as they are first staged, so a change feed in random
/// key order updates table pages, and the version index entries it
/// replaces, scattered: a large page in row order visits each database
/// page once, in storage order, instead of again and again. The order
/// keeps the relative order of upserts of one row, so the last still
/// wins. A number stays right for the whole page: upserts neither delete
/// rows nor renumber them (a row staged in the page takes a new number,
/// and has none here).
fn in_storage_order(tx: &Connection, table: &Table, upserts: Vec<Row>) -> R<(Vec<Row>, Vec<Option<i64>>)> {
    if upserts.len() < 2 {
        return Ok((upserts, Vec::new()));
    }
    let mut stmt = tx.prepare_cached(table.rid_by_key())?;
    let mut rids = Vec::with_capacity(upserts.len());
    let mut staged = 0;
    for (i, row) in upserts.iter().enumerate() {
        // The canonical key, so that two spellings of one row sort alike.
        let rid = match table.meta.parse_row_id(row.id.as_str()).ok().and_then(|id| table.canonical_key(&id))
        {
            Some(key) => stmt.query_row([key], |r| r.get::<_, i64>(0)).optional()?,
            None => None,
        };
        staged += usize::from(rid.is_some());
        rids.push(rid);
        let sampled = i + 1;
        if (sampled == ORDER_SAMPLE || sampled == upserts.len()) && staged * 2 < sampled {
            return Ok((upserts, Vec::new()));
        }
    }
    let mut order: Vec<usize> = (0..upserts.len()).collect();
    order.sort_by_key(|&i| rids[i].unwrap_or(i64::MAX));
    let mut slots: Vec<Option<Row>> = upserts.into_iter().map(Some).collect();
    let rows = order.iter().filter_map(|&i| slots[i].take()).collect();
    Ok((rows, order.into_iter().map(|i| rids[i]).collect()))
}

/// Writes the membership ops of one row changing at `seq` from `previous`
/// (its references and version; for a row created again, the tombstones
/// its grave kept) to a row at version `seq` in the partitions `pids`
/// (what [`MembershipPlanner::plan`] gives; `None` when the row is
/// deleted): a remove for every partition the row was in and is not any
/// more, a put for every partition it is in — each replacing the row's
/// previous entry in that partition. Returns the row's new references
/// (tombstones purged below `floor` are forgotten).
fn restage(
    writer: &mut MembershipWriter<'_>,
    m: Member<'_>,
    previous: Option<(&Parts, Seq)>,
    pids: Option<&[i64]>,
    seq: Seq,
    floor: i64,
) -> R<Parts> {
    let row_version = pids.map(|_| seq);
    let pids = pids.unwrap_or_default();
    let mut parts: Vec<PartRef> = Vec::with_capacity(pids.len());
    if let Some((prev, prev_version)) = previous {
        for r in &prev.0 {
            if pids.contains(&r.pid) {
                parts.push(writer.write(r.pid, m, Some((*r, prev_version)), seq, Op::Put(seq))?);
            } else if !r.removed {
                parts.push(writer.write(r.pid, m, Some((*r, prev_version)), seq, Op::Remove(row_version))?);
            } else if r.seq > floor {
                parts.push(*r);
            }
        }
    }
    for &pid in pids {
        if previous.and_then(|(p, _)| p.get(pid)).is_none() {
            parts.push(writer.write(pid, m, None, seq, Op::Put(seq))?);
        }
    }
    Ok(Parts(parts))
}

/// Saves a profile and recomputes membership of the entities it names.
pub(crate) fn put_profile(conn: &mut Connection, profile: &Profile) -> R<Seq> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let schemas = load_schemas(&tx)?;
    validate_profile(profile, &schemas)?;
    let old = load_profile(&tx, &profile.name)?;
    tx.prepare_cached(
        "INSERT INTO _sync_profiles (name, profile) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET profile = excluded.profile",
    )?
    .execute(rusqlite::params![
        profile.name.as_str(),
        serde_json::to_string(profile).map_err(|e| corrupt_json("profile", e))?
    ])?;
    let mut entities: BTreeSet<EntityName> = profile.items.iter().map(|i| i.entity.clone()).collect();
    if let Some(old) = &old {
        entities.extend(old.items.iter().map(|i| i.entity.clone()));
    }
    let head = recompute(&tx, &entities)?;
    tx.commit()?;
    Ok(head)
}

/// Deletes a profile and removes its partitions' members.
pub(crate) fn delete_profile(conn: &mut Connection, name: &ProfileName) -> R<Seq> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(old) = load_profile(&tx, name)? else {
        return Err(Error::not_found(format!("profile '{name}'")).into());
    };
    tx.prepare_cached("DELETE FROM _sync_profiles WHERE name = ?1")?.execute([name.as_str()])?;
    let entities: BTreeSet<EntityName> = old.items.iter().map(|i| i.entity.clone()).collect();
    let head = recompute(&tx, &entities)?;
    tx.commit()?;
    Ok(head)
}

fn recompute(tx: &Transaction<'_>, entities: &BTreeSet<EntityName>) -> R<Seq> {
    let profiles = load_profiles(tx)?;
    let mut head = head(tx)?;
    let mut writer = MembershipWriter::new(tx)?;
    for name in entities {
        let Some(staged) = load_schema(tx, name.as_str())? else { continue };
        let planner = MembershipPlanner::new(&staged.meta, &profiles)?;
        recompute_entity(tx, &staged, &planner, &mut writer, &mut head)?;
    }
    writer.flush()?;
    meta_set(tx, "head", version_param(head)?)?;
    Ok(head)
}

/// Adds a pulled op to the page unless its `size` would break the byte
/// budget; the first op of a page always fits. Returns whether it was added.
fn take(
    changes: &mut Vec<PulledChange>,
    bytes: &mut usize,
    max_bytes: usize,
    size: usize,
    change: PulledChange,
) -> bool {
    if !changes.is_empty() && bytes.saturating_add(size) > max_bytes {
        return false;
    }
    *bytes = bytes.saturating_add(size);
    changes.push(change);
    true
}

/// The [`Table`]s of one org, built from its stored schemas and kept while
/// its `schema_version` stands, so a pull page does not parse its schemas
/// and build their SQL again (with a second query per partition, that was
/// about 5 % of a pull in pages of 1,000 rows and 10 % in pages of 100).
///
/// Keyed by the version a reader's snapshot shows: every schema change
/// bumps it in the same transaction, so a table cached at the version a
/// snapshot shows is that snapshot's table. A reader on an older snapshot
/// builds its own and leaves the cache to the newer version.
#[derive(Default)]
pub(crate) struct TableCache {
    version: u64,
    tables: HashMap<i64, Arc<Table>>,
}

impl TableCache {
    /// The table of entity `eid` in `conn`'s snapshot, whose schema version
    /// is `version`.
    fn get(cache: &Mutex<TableCache>, conn: &Connection, version: u64, eid: i64) -> R<Arc<Table>> {
        {
            let cached = crate::store::lock(cache);
            if cached.version == version
                && let Some(table) = cached.tables.get(&eid)
            {
                return Ok(Arc::clone(table));
            }
        }
        // Built without the lock: other readers go on meanwhile.
        let table = Arc::new(Table::new(load_schema_by_id(conn, eid)?.meta)?);
        let mut cached = crate::store::lock(cache);
        if version > cached.version {
            *cached = TableCache { version, tables: HashMap::new() };
        }
        if version == cached.version {
            cached.tables.insert(eid, Arc::clone(&table));
        }
        Ok(table)
    }
}

/// Reads a pull page from one snapshot; `cache` keeps the org's tables
/// across pulls.
pub(crate) fn pull(conn: &mut Connection, plan: &PullPlan, cache: &Mutex<TableCache>) -> R<PullPage> {
    let tx = conn.transaction()?;
    let head = head(&tx)?;
    let mut seen = BTreeSet::new();
    for (key, pos) in &plan.partitions {
        if !seen.insert(key) {
            return Err(Error::invalid(format!("partition '{key}' is planned twice")).into());
        }
        if *pos > head {
            return Err(Error::resync(format!(
                "position {pos} of partition '{key}' is beyond the head {head}"
            ))
            .into());
        }
    }
    let max_rows = plan.max_rows.max(1);
    let version = schema_version(&tx)?;
    let mut tables: HashMap<i64, Arc<Table>> = HashMap::new();
    // A page is usually full: room for it up front (bounded, as the plan
    // comes from a request).
    let mut changes: Vec<PulledChange> = Vec::with_capacity(max_rows.min(4096));
    let mut positions = Vec::with_capacity(plan.partitions.len());
    let mut bytes = 0usize;
    let mut more = false;
    for (key, pos) in &plan.partitions {
        if more {
            positions.push((key.clone(), *pos));
            continue;
        }
        let found: Option<(i64, Option<i64>, bool)> = tx
            .prepare_cached("SELECT pid, eid, mixed FROM _sync_partitions WHERE key = ?1")?
            .query_row([key.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((pid, single, mixed)) = found else {
            positions.push((key.clone(), head));
            continue;
        };
        let mut last = *pos;
        // No LIMIT in the queries: SQLite re-prepares a statement whose
        // bound LIMIT changes, on every call; the scans stream in key order
        // and stop when the page is full.
        let from = entry_id(pid, version_param(*pos)?)?;
        let to = entry_id(pid, MAX_SEQ)?;
        // The common case: every entry of the partition belongs to one
        // entity, read with its rows in one join. Otherwise each put's row
        // is looked up by entity and number.
        let joined = match single {
            Some(eid) if !mixed => Some(eid),
            _ => None,
        };
        if let Some(eid) = joined {
            if let std::collections::hash_map::Entry::Vacant(slot) = tables.entry(eid) {
                slot.insert(TableCache::get(cache, &tx, version, eid)?);
            }
            let table = tables.get(&eid).ok_or_else(|| StoreError::Corrupt(format!("entity id {eid}")))?;
            let mut stmt = tx.prepare_cached(table.pull_join())?;
            let mut rows = stmt.query(rusqlite::params![from, to])?;
            while let Some(r) = rows.next()? {
                if changes.len() >= max_rows {
                    more = true;
                    break;
                }
                let seq_i: i64 = r.get(0)?;
                let seq = seq_of(seq_i)?;
                let removed: bool = r.get(1)?;
                let (row_id, row, size) = if removed {
                    let row_id =
                        RowId::new(r.get::<_, String>(2)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let size = row_id.as_str().len() + REMOVE_OVERHEAD;
                    (row_id, None, size)
                } else {
                    // (The query leaves out puts of another version than
                    // their row's.) A put whose row is gone is stale, or
                    // the file is corrupt.
                    let Some((row_id, pulled)) = table.decode_pulled(r, 3)? else {
                        if is_stale(&tx, entry_id(pid, seq_i)?)? {
                            last = seq;
                            continue;
                        }
                        return Err(StoreError::Corrupt(format!(
                            "partition '{key}' holds a row of '{}' at seq {seq} that is not staged",
                            table.meta.name
                        )));
                    };
                    let size = pulled.approx_size(&row_id);
                    (row_id, Some(pulled), size)
                };
                let change = PulledChange {
                    partition: key.clone(),
                    entity: table.meta.name.clone(),
                    row_id,
                    seq,
                    row,
                };
                if !take(&mut changes, &mut bytes, plan.max_bytes, size, change) {
                    more = true;
                    break;
                }
                last = seq;
            }
            positions.push((key.clone(), if more { last } else { head }));
            continue;
        }
        let mut stmt = tx.prepare_cached(
            "SELECT id & 1099511627775, eid, rid, removed, row_id, version FROM _sync_membership \
             WHERE id > ?1 AND id <= ?2 ORDER BY id",
        )?;
        let mut rows = stmt.query(rusqlite::params![from, to])?;
        while let Some(r) = rows.next()? {
            if changes.len() >= max_rows {
                more = true;
                break;
            }
            let seq_i: i64 = r.get(0)?;
            let seq = seq_of(seq_i)?;
            let eid: i64 = r.get(1)?;
            let rid: i64 = r.get(2)?;
            let removed: bool = r.get(3)?;
            if let std::collections::hash_map::Entry::Vacant(slot) = tables.entry(eid) {
                slot.insert(TableCache::get(cache, &tx, version, eid)?);
            }
            let table = tables.get(&eid).ok_or_else(|| StoreError::Corrupt(format!("entity id {eid}")))?;
            let (row_id, row, size) = if removed {
                let row_id =
                    RowId::new(r.get::<_, String>(4)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let size = row_id.as_str().len() + REMOVE_OVERHEAD;
                (row_id, None, size)
            } else {
                // Stale puts are skipped, as in the joined read above.
                let staged = match table.get_by_rid(&tx, rid)? {
                    Some(staged) if version_param(staged.version)? == r.get::<_, i64>(5)? => staged,
                    Some(_) => {
                        last = seq;
                        continue;
                    }
                    None if is_stale(&tx, entry_id(pid, seq_i)?)? => {
                        last = seq;
                        continue;
                    }
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "partition '{key}' holds row {rid} of '{}', which is not staged",
                            table.meta.name
                        )));
                    }
                };
                let size = staged.row.approx_size();
                let row_id = staged.row.id.clone();
                (row_id, Some(PulledRow::from_staged(table.pull_columns(), staged)), size)
            };
            let change =
                PulledChange { partition: key.clone(), entity: table.meta.name.clone(), row_id, seq, row };
            if !take(&mut changes, &mut bytes, plan.max_bytes, size, change) {
                more = true;
                break;
            }
            last = seq;
        }
        positions.push((key.clone(), if more { last } else { head }));
    }
    let checksums = if more {
        None
    } else {
        let mut map = BTreeMap::new();
        for (key, _) in &plan.partitions {
            map.insert(key.clone(), checksum(&tx, key)?);
        }
        Some(map)
    };
    tx.commit()?;
    Ok(PullPage { changes, positions, more, head, checksums })
}

fn checksum(conn: &Connection, key: &PartitionKey) -> R<Checksum> {
    let found: Option<(i64, i64)> = conn
        .prepare_cached("SELECT checksum_sum, checksum_count FROM _sync_partitions WHERE key = ?1")?
        .query_row([key.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match found {
        Some((sum, count)) => Checksum {
            sum: u32::try_from(sum).map_err(|_| StoreError::Corrupt(format!("checksum {sum} of '{key}'")))?,
            count: u64::try_from(count)
                .map_err(|_| StoreError::Corrupt(format!("count {count} of '{key}'")))?,
        },
        None => Checksum::default(),
    })
}

/// The committed source token of `entity`.
pub(crate) fn source_token(conn: &Connection, entity: &EntityName) -> R<Option<ChangeToken>> {
    Ok(conn
        .prepare_cached("SELECT token FROM _sync_tokens WHERE entity = ?1")?
        .query_row([entity.as_str()], |r| r.get::<_, String>(0))
        .optional()?
        .map(ChangeToken))
}

/// The staged row `id` of `entity`.
pub(crate) fn row(conn: &Connection, entity: &EntityName, id: &RowId) -> R<Option<sync_core::StagedRow>> {
    let staged = require_schema(conn, entity)?;
    Ok(Table::new(staged.meta)?.get(conn, id)?.map(|s| s.staged))
}

/// Staged ids of `entity` after `after`, ascending.
pub(crate) fn row_ids(
    conn: &Connection,
    entity: &EntityName,
    after: Option<&RowId>,
    limit: usize,
) -> R<Vec<RowId>> {
    let table = Table::new(require_schema(conn, entity)?.meta)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&table.ids_after_sql(after.is_some()))?;
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<String> {
        Ok(match r.get_ref(0)? {
            rusqlite::types::ValueRef::Integer(i) => i.to_string(),
            _ => r.get(0)?,
        })
    };
    let ids: Vec<String> = match after {
        Some(a) => stmt.query_map(rusqlite::params![a.as_str(), limit], read)?.collect::<Result<_, _>>()?,
        None => stmt.query_map([limit], read)?.collect::<Result<_, _>>()?,
    };
    ids.into_iter().map(|s| RowId::new(s).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
}

/// Deletes remove-entries at or below `up_to` and raises the floor; also
/// compacts the stale entries of the log (see [`crate::membership`]).
pub(crate) fn purge_tombstones(conn: &mut Connection, up_to: Seq) -> R<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let head = head(&tx)?;
    let up_to = up_to.min(head);
    let pids: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT pid FROM _sync_partitions")?;
        stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    let mut deleted = 0u64;
    {
        let mut stmt =
            tx.prepare_cached("DELETE FROM _sync_membership WHERE id > ?1 AND id <= ?2 AND removed = 1")?;
        for pid in pids {
            deleted += stmt.execute([entry_id(pid, 0)?, entry_id(pid, version_param(up_to)?)?])? as u64;
        }
    }
    // Graves whose tombstones are all purged have nothing left to replace.
    tx.prepare_cached("DELETE FROM _sync_graves WHERE seq <= ?1")?.execute([version_param(up_to)?])?;
    // Maintenance also drops the stale entries, however few.
    crate::membership::compact(&tx)?;
    if up_to > tombstone_floor(&tx)? {
        meta_set(&tx, "tombstone_floor", version_param(up_to)?)?;
    }
    tx.commit()?;
    Ok(deleted)
}

pub(crate) fn mutation_result(conn: &Connection, id: &MutationId) -> R<Option<MutationRecord>> {
    let found: Option<(String, String, i64)> = conn
        .prepare_cached("SELECT fingerprint, outcome, checkpoint FROM _sync_mutations WHERE id = ?1")?
        .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    found
        .map(|(fingerprint, outcome, checkpoint)| {
            Ok(MutationRecord {
                fingerprint,
                outcome: sync_core::journal::decode_outcome(&outcome)?,
                checkpoint: seq_of(checkpoint)?,
            })
        })
        .transpose()
}

pub(crate) fn record_mutation(conn: &mut Connection, id: &MutationId, record: &MutationRecord) -> R<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing: Option<String> = tx
        .prepare_cached("SELECT fingerprint FROM _sync_mutations WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()?;
    match existing {
        Some(fp) if fp == record.fingerprint => {}
        Some(_) => {
            return Err(
                Error::conflict(format!("mutation {id} was recorded before with different content")).into()
            );
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO _sync_mutations (id, fingerprint, outcome, checkpoint) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(rusqlite::params![
                id.to_string(),
                record.fingerprint,
                sync_core::journal::encode_outcome(&record.outcome)?,
                version_param(record.checkpoint)?
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> R<String> {
    t.format(&Rfc3339).map_err(|e| StoreError::Corrupt(format!("datetime {t}: {e}")))
}

fn parse_time(s: Option<String>) -> R<Option<OffsetDateTime>> {
    s.map(|s| {
        OffsetDateTime::parse(&s, &Rfc3339)
            .map_err(|e| StoreError::Corrupt(format!("stored time {s:?}: {e}")))
    })
    .transpose()
}

pub(crate) fn record_run(conn: &mut Connection, report: &SyncRunReport) -> R<()> {
    let at = rfc3339(report.at)?;
    let success = report.error.is_none().then(|| at.clone());
    conn.prepare_cached(
        "INSERT INTO _sync_runs (entity, last_run, last_success, last_error, last_rows) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (entity) DO UPDATE SET last_run = excluded.last_run, \
         last_success = coalesce(excluded.last_success, last_success), \
         last_error = excluded.last_error, last_rows = excluded.last_rows",
    )?
    .execute(rusqlite::params![
        report.entity.as_str(),
        at,
        success,
        report.error,
        i64::try_from(report.rows_applied).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

type RunRow = (Option<String>, Option<String>, Option<String>, i64);

pub(crate) fn status(conn: &mut Connection, org: &OrgId) -> R<OrgStatus> {
    let tx = conn.transaction()?;
    let head = head(&tx)?;
    let schema_version = schema_version(&tx)?;
    let mut hashes: BTreeMap<String, (String, i64)> = BTreeMap::new();
    {
        let mut stmt = tx.prepare("SELECT entity, schema_hash, row_count FROM _sync_schemas")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            hashes.insert(r.get(0)?, (r.get(1)?, r.get(2)?));
        }
    }
    let mut runs: BTreeMap<String, RunRow> = BTreeMap::new();
    {
        let mut stmt =
            tx.prepare("SELECT entity, last_run, last_success, last_error, last_rows FROM _sync_runs")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            runs.insert(r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
        }
    }
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    {
        let mut stmt = tx.prepare("SELECT entity, token FROM _sync_tokens")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            tokens.insert(r.get(0)?, r.get(1)?);
        }
    }
    let names: BTreeSet<String> = hashes.keys().chain(runs.keys()).cloned().collect();
    let mut entities = Vec::with_capacity(names.len());
    for name in names {
        let (schema_hash, rows) = hashes.get(&name).cloned().unwrap_or_default();
        let (last_run, last_success, last_error, last_rows) =
            runs.remove(&name).unwrap_or((None, None, None, 0));
        entities.push(EntityStatus {
            entity: EntityName::new(name.as_str()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            schema_hash,
            rows: u64::try_from(rows).unwrap_or(0),
            token: tokens.remove(&name).map(ChangeToken),
            last_run: parse_time(last_run)?,
            last_success: parse_time(last_success)?,
            last_error,
            last_rows: u64::try_from(last_rows).unwrap_or(0),
        });
    }
    tx.commit()?;
    Ok(OrgStatus { org: org.clone(), schema_version, head, entities })
}

#[cfg(test)]
mod tests {
    use sync_core::{Attribute, AttributeType, ColumnName, ItemId, ProfileItem, Value};

    use super::*;

    fn meta() -> EntityMetadata {
        let col = |s: &str| ColumnName::new(s).unwrap();
        EntityMetadata::new(
            EntityName::new("task").unwrap(),
            col("id"),
            vec![
                Attribute::new(col("id"), AttributeType::Integer),
                Attribute::new(col("owner"), AttributeType::String),
                Attribute::new(col("amount"), AttributeType::Decimal),
            ],
        )
        .unwrap()
    }

    fn rows(n: usize, bad: Option<usize>) -> Vec<Row> {
        (0..n)
            .map(|i| {
                let amount =
                    if Some(i) == bad { Value::from("plenty") } else { Value::from(format!("{i}.50")) };
                Row::new(
                    RowId::new(i.to_string()).unwrap(),
                    [
                        (ColumnName::new("id").unwrap(), Value::Integer(i as i64)),
                        (ColumnName::new("owner").unwrap(), Value::from(format!("u{}", i % 3))),
                        (ColumnName::new("amount").unwrap(), amount),
                    ],
                )
            })
            .collect()
    }

    /// Drains `rows` as the writer does, slowly when `slow` (so the helper
    /// runs ahead) or at once (so the writer takes chunks the helper has
    /// not begun): the ids staged, and the error that ended the page.
    fn drain(mut rows: PreparedRows<'_>, slow: bool) -> (Vec<String>, Option<StoreError>) {
        let mut ids = Vec::new();
        while let Some(chunk) = rows.next() {
            match chunk {
                Ok(chunk) => {
                    ids.extend(chunk.iter().map(|(row, keys)| {
                        assert_eq!(keys.len(), 1, "each row is in its owner's partition");
                        row.id.as_str().to_owned()
                    }));
                    if slow {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    rows.finished(chunk);
                }
                Err(e) => return (ids, Some(e)),
            }
        }
        (ids, None)
    }

    #[test]
    fn large_pages_come_out_in_order_whoever_prepares_them() {
        let meta = meta();
        let mut item = ProfileItem::new(meta.name.clone(), "owner eq @user.id");
        item.id = Some(ItemId::new("mine").unwrap());
        let profile = Profile {
            name: ProfileName::new("p").unwrap(),
            roles: ["r".to_owned()].into(),
            items: vec![item],
        };
        let planner = MembershipPlanner::new(&meta, &[profile]).unwrap();
        let table = Table::new(meta).unwrap();
        let checker = table.meta.row_checker().unwrap();
        let preparer = Preparer { checker: &checker, planner: &planner, table: &table };
        let n = PIPELINE_ROWS + PIPELINE_CHUNK * 3 + 17;
        let all: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        for slow in [false, true] {
            // With a helper thread.
            let got =
                std::thread::scope(|scope| drain(PreparedRows::start(scope, rows(n, None), preparer), slow));
            assert_eq!(got.0, all, "slow {slow}");
            assert!(got.1.is_none());
            // The writer alone, as when the helper cannot be started.
            let alone = std::thread::scope(|scope| {
                let mut shared = PreparedRows::start(scope, rows(n, None), preparer);
                if let PreparedRows::Shared { chunks, .. } = &mut shared {
                    chunks.lock().done = true;
                }
                drain(shared, slow)
            });
            assert_eq!(alone.0, all);
            // A bad row ends the page at its chunk, with the row named.
            let bad = PIPELINE_CHUNK * 2 + 5;
            let failed = std::thread::scope(|scope| {
                drain(PreparedRows::start(scope, rows(n, Some(bad)), preparer), slow)
            });
            assert_eq!(failed.0, all[..PIPELINE_CHUNK * 2]);
            let err = failed.1.expect("the bad row fails its chunk").to_string();
            assert!(err.contains(&format!("row '{bad}'")), "{err}");
        }

        // A helper that panics fails the chunk it was preparing; the writer
        // does not wait for it forever.
        let chunks = Arc::new(Chunks::new(rows(n, None)));
        let failed = std::thread::scope(|scope| {
            let helper = Arc::clone(&chunks);
            scope.spawn(move || helper.help(|_| panic!("a bug while preparing")));
            while matches!(chunks.lock().slots[0], Slot::Rows(_) | Slot::Preparing) {
                std::thread::yield_now();
            }
            drain(PreparedRows::Shared { chunks: Arc::clone(&chunks), preparer }, false)
        });
        assert!(failed.0.is_empty());
        let err = failed.1.expect("the first chunk fails").to_string();
        assert!(err.contains("panicked"), "{err}");
    }

    #[test]
    fn changes_are_ordered_by_row_number_and_initial_reads_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ConnSettings {
            busy_timeout: std::time::Duration::from_secs(1),
            cache_size_kib: 1024,
            mmap_size: 0,
            wal_autocheckpoint: 1000,
        };
        let (mut conn, _, _) = create_file(&dir.path().join("org.sqlite"), &settings).unwrap();
        let meta = meta();
        apply_schema(&mut conn, &meta).unwrap();
        // Rows numbered in the order 5, 3, 8, 1, 9, 0.
        let staged: Vec<Row> = [5, 3, 8, 1, 9, 0].iter().map(|&i| rows(10, None).swap_remove(i)).collect();
        let page = ChangePage { upserts: staged, ..ChangePage::default() };
        apply_changes(&mut conn, &meta.name, page).unwrap();
        let table = Table::new(meta).unwrap();
        let with_id = |id: &str, n: usize| {
            let mut r = rows(10, None).swap_remove(n);
            r.id = RowId::new(id).unwrap();
            r
        };
        let ids = |rows: &[Row]| rows.iter().map(|r| r.id.as_str().to_owned()).collect::<Vec<_>>();
        // Changes: staged rows by number, "03" being row 3, and two upserts
        // of row 8 in their page order; new rows (12, 11) last, as they came.
        let page = vec![
            with_id("0", 0),
            with_id("12", 2),
            with_id("8", 8),
            with_id("03", 3),
            with_id("11", 1),
            with_id("5", 5),
            with_id("8", 4),
            with_id("9", 9),
        ];
        let (ordered, rids) = in_storage_order(&conn, &table, page).unwrap();
        assert_eq!(ids(&ordered), ["5", "03", "8", "8", "9", "0", "12", "11"]);
        assert_eq!(rids, [Some(1), Some(2), Some(3), Some(3), Some(5), Some(6), None, None]);
        assert_eq!(ordered[2].get("owner"), Some(&Value::from("u2")), "row 8's first upsert stays first");
        assert_eq!(ordered[3].get("owner"), Some(&Value::from("u1")));
        // Mostly new rows (an initial read): the page as it came.
        let page =
            vec![with_id("20", 0), with_id("8", 8), with_id("21", 1), with_id("3", 3), with_id("22", 2)];
        let as_came = ids(&page);
        let (left, rids) = in_storage_order(&conn, &table, page).unwrap();
        assert_eq!(ids(&left), as_came);
        assert!(rids.is_empty());
    }
}
