//! Applying pull pages: schemas, partitions, membership, rows, checksums and
//! the cursor, in one transaction per batch of pages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};
use sync_core::partition::membership_hash;
use sync_core::protocol::{Batch, PullResponse};
use sync_core::{AttributeType, ColumnName, EntityMetadata, EntityName, PartitionKey, RowId, Seq, Value};

use super::local::refold;
use super::schema::{SchemaEffect, apply_schema};
use super::{
    HIDDEN, PartRow, RID, Store, data_table, delete_visible, held_rid, key, repair, rid_of, set_meta,
    values_from_json, values_to_json,
};
use crate::error::{ClientError, Result};
use crate::sql::{SqlValue, quote};

/// Which cursor a page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The main cursor: every batch is applied.
    Main,
    /// The repair cursor: a read from the start that applies only the
    /// batches of partitions under repair.
    Repair,
}

/// What a batch of pages did.
#[derive(Clone, Debug, Default)]
pub(crate) struct PageOutcome {
    /// Rows put (inserted or updated).
    pub puts: u64,
    /// Membership removes applied.
    pub removes: u64,
    /// Pages applied.
    pub pages: u64,
    /// The last page's `has_more`.
    pub has_more: bool,
    /// When the last page completed its stream: partitions whose checksum
    /// did not match (now marked for repair, or — for the repair stream —
    /// still wrong after the repair).
    pub mismatched: Vec<PartitionKey>,
    /// Whether a completed repair stream ended a repair.
    pub repair_finished: bool,
    /// Rows dropped by the sweep that ends a complete pull.
    pub swept: u64,
    /// Partitions dropped because the server no longer lists them.
    pub dropped_partitions: Vec<PartitionKey>,
}

/// A transaction applying one or more pages of one stream.
pub(crate) struct PageBatch<'a> {
    tx: Transaction<'a>,
    schemas: &'a mut HashMap<EntityName, Arc<EntityMetadata>>,
    stream: Stream,
    parts: HashMap<PartitionKey, PartRow>,
    /// Rows with pending edits (they have a shadow), by entity. Usually
    /// empty, which spares the per-row check on a long download.
    pending: HashMap<EntityName, HashSet<String>>,
    /// Checksum deltas not yet written: pid → (sum delta, count delta).
    deltas: HashMap<i64, (u32, i64)>,
    outcome: PageOutcome,
    partitions_seen: Option<Vec<PartitionKey>>,
}

impl Store {
    /// Starts a transaction applying pages of `stream`.
    pub(crate) fn begin_pages(&mut self, stream: Stream) -> Result<PageBatch<'_>> {
        let tx = self.conn.transaction()?;
        let parts = Store::partitions(&tx)?;
        let mut pending: HashMap<EntityName, HashSet<String>> = HashMap::new();
        {
            let mut stmt = tx.prepare_cached("SELECT entity, row_id FROM \"sync:shadow\"")?;
            for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (entity, row_id) = r?;
                let entity = EntityName::new(entity).map_err(|e| ClientError::corrupt(e.to_string()))?;
                pending.entry(entity).or_default().insert(row_id);
            }
        }
        Ok(PageBatch {
            tx,
            schemas: &mut self.schemas,
            stream,
            parts,
            pending,
            deltas: HashMap::new(),
            outcome: PageOutcome::default(),
            partitions_seen: None,
        })
    }

    /// Starts a full resync after `ResyncRequired`: the main cursor is
    /// dropped and every membership is set aside for the sweep, so rows stay
    /// visible while the new read goes on and only those it does not bring
    /// back are dropped at its end. Pending edits are kept.
    pub(crate) fn begin_full_resync(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        for meta in self.schemas.values() {
            sweep_all_rows(&tx, meta)?;
        }
        tx.execute_batch(
            "DELETE FROM \"sync:membership\";
             UPDATE \"sync:partitions\" SET sum = 0, count = 0, repair = 0;",
        )?;
        set_meta(&tx, key::CURSOR, None)?;
        set_meta(&tx, key::REPAIR_CURSOR, None)?;
        super::bump_meta_counter(&tx, key::RESYNCS)?;
        tx.commit()?;
        Ok(())
    }

    /// Starts repairing the partitions marked for repair: their memberships
    /// are set aside for the sweep, their checksums zeroed, and the repair
    /// stream starts from the beginning. Returns the partitions concerned.
    pub(crate) fn begin_repair(&mut self) -> Result<Vec<PartitionKey>> {
        let tx = self.conn.transaction()?;
        let keys: Vec<String> = tx
            .prepare("SELECT key FROM \"sync:partitions\" WHERE repair = ?1")?
            .query_map([repair::NEEDED], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // Every row of the entities concerned goes to the sweep too, so a row
        // shown without any membership (a lost membership, a row left behind)
        // is dropped unless the repair brings it back.
        let entities: Vec<String> = tx
            .prepare("SELECT DISTINCT entity FROM \"sync:partitions\" WHERE repair = ?1")?
            .query_map([repair::NEEDED], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for e in entities {
            let Some(meta) = EntityName::new(e).ok().and_then(|e| self.schemas.get(&e).cloned()) else {
                continue;
            };
            sweep_all_rows(&tx, &meta)?;
        }
        tx.execute(
            "DELETE FROM \"sync:membership\" WHERE pid IN (SELECT pid FROM \"sync:partitions\" WHERE repair = ?1)",
            [repair::NEEDED],
        )?;
        tx.execute(
            "UPDATE \"sync:partitions\" SET sum = 0, count = 0, repair = ?1 WHERE repair = ?2",
            params![repair::RUNNING, repair::NEEDED],
        )?;
        set_meta(&tx, key::REPAIR_CURSOR, Some(""))?;
        super::bump_meta_counter(&tx, key::REPAIRS)?;
        tx.commit()?;
        keys.into_iter()
            .map(|k| PartitionKey::new(k).map_err(|e| ClientError::corrupt(e.to_string())))
            .collect()
    }
}

impl PageBatch<'_> {
    /// What the batch did so far.
    pub(crate) fn outcome(&self) -> &PageOutcome {
        &self.outcome
    }

    /// Applies one page.
    pub(crate) fn apply(&mut self, mut page: PullResponse) -> Result<()> {
        if let Some(schemas) = &page.schemas {
            self.apply_schemas(schemas)?;
            set_meta(&self.tx, key::SCHEMA_VERSION, Some(&page.schema_version.to_string()))?;
        }
        self.sync_partitions(&page)?;
        for batch in std::mem::take(&mut page.batches) {
            self.apply_batch(batch)?;
        }
        self.flush_checksums()?;
        let cursor_key = match self.stream {
            Stream::Main => key::CURSOR,
            Stream::Repair => key::REPAIR_CURSOR,
        };
        set_meta(&self.tx, cursor_key, Some(&page.cursor))?;
        self.outcome.pages += 1;
        self.outcome.has_more = page.has_more;
        if !page.has_more {
            self.complete(page.checksums.as_ref())?;
        }
        Ok(())
    }

    /// Commits data and cursor together.
    pub(crate) fn commit(self) -> Result<PageOutcome> {
        self.tx.commit()?;
        Ok(self.outcome)
    }

    fn apply_schemas(&mut self, schemas: &[EntityMetadata]) -> Result<()> {
        for meta in schemas {
            let old = self.schemas.get(&meta.name).cloned();
            let effect = apply_schema(&self.tx, old.as_deref(), meta)?;
            if effect == (SchemaEffect::Altered { repair: true }) {
                self.tx.execute(
                    "UPDATE \"sync:partitions\" SET repair = ?1 WHERE entity = ?2 AND repair = ?3",
                    params![repair::NEEDED, meta.name.as_str(), repair::NONE],
                )?;
                for p in self.parts.values_mut() {
                    if p.entity == meta.name && p.repair == repair::NONE {
                        p.repair = repair::NEEDED;
                    }
                }
            }
            if effect != SchemaEffect::Unchanged {
                tracing::info!(entity = %meta.name, ?effect, "local table migrated");
                self.schemas.insert(meta.name.clone(), Arc::new(meta.clone()));
            }
        }
        Ok(())
    }

    fn sync_partitions(&mut self, page: &PullResponse) -> Result<()> {
        let listed: Vec<PartitionKey> = page.partitions.iter().map(|p| p.key.clone()).collect();
        if self.partitions_seen.as_ref() == Some(&listed) {
            return Ok(());
        }
        for info in &page.partitions {
            match self.parts.get(&info.key) {
                Some(p) if p.entity != info.entity => {
                    return Err(ClientError::protocol(format!(
                        "partition {} moved from entity '{}' to '{}'",
                        info.key, p.entity, info.entity
                    )));
                }
                Some(_) => {}
                None => {
                    self.tx.execute(
                        "INSERT INTO \"sync:partitions\" (key, entity) VALUES (?1, ?2)",
                        params![info.key.as_str(), info.entity.as_str()],
                    )?;
                    let pid = self.tx.last_insert_rowid();
                    self.parts.insert(
                        info.key.clone(),
                        PartRow { pid, entity: info.entity.clone(), repair: repair::NONE },
                    );
                }
            }
        }
        let listed_set: HashSet<&PartitionKey> = listed.iter().collect();
        let gone: Vec<PartitionKey> =
            self.parts.keys().filter(|k| !listed_set.contains(k)).cloned().collect();
        for k in gone {
            self.drop_partition(&k)?;
        }
        self.partitions_seen = Some(listed);
        Ok(())
    }

    /// Drops a partition the server no longer lists: its memberships go, and
    /// so do the rows no other partition holds.
    fn drop_partition(&mut self, k: &PartitionKey) -> Result<()> {
        let Some(part) = self.parts.remove(k) else { return Ok(()) };
        self.deltas.remove(&part.pid);
        let rids: Vec<i64> = self
            .tx
            .prepare_cached("SELECT rid FROM \"sync:membership\" WHERE pid = ?1")?
            .query_map([part.pid], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        self.tx.execute("DELETE FROM \"sync:membership\" WHERE pid = ?1", [part.pid])?;
        self.tx.execute("DELETE FROM \"sync:partitions\" WHERE pid = ?1", [part.pid])?;
        if let Some(meta) = self.schemas.get(&part.entity).cloned() {
            let sql = format!(
                "SELECT CAST({} AS TEXT) FROM {} WHERE {RID} = ?1",
                quote(meta.primary_key.as_str()),
                quote(&data_table(meta.name.as_str()))
            );
            for rid in rids {
                if held_rid(&self.tx, &part.entity, None, rid)? {
                    continue;
                }
                let id: Option<String> =
                    self.tx.prepare_cached(&sql)?.query_row([rid], |r| r.get(0)).optional()?;
                if let Some(id) = id {
                    let row_id = RowId::new(id).map_err(|e| ClientError::corrupt(e.to_string()))?;
                    self.row_left(&meta, &row_id)?;
                }
            }
        }
        tracing::info!(partition = %k, "partition no longer held; dropped");
        self.outcome.dropped_partitions.push(k.clone());
        Ok(())
    }

    /// The device no longer holds the row: drop it, or — when edits are
    /// pending on it — forget the server's copy and show the edits alone.
    fn row_left(&mut self, meta: &EntityMetadata, row_id: &RowId) -> Result<()> {
        if is_pending(&self.pending, &meta.name, row_id) {
            self.tx.execute(
                "UPDATE \"sync:shadow\" SET data = NULL WHERE entity = ?1 AND row_id = ?2",
                params![meta.name.as_str(), row_id.as_str()],
            )?;
            refold(&self.tx, meta, row_id)
        } else {
            delete_visible(&self.tx, meta, row_id)
        }
    }

    fn apply_batch(&mut self, batch: Batch) -> Result<()> {
        let part = self.parts.get(&batch.partition).cloned().ok_or_else(|| {
            ClientError::protocol(format!(
                "batch for partition {} which the page does not list",
                batch.partition
            ))
        })?;
        if part.entity != batch.entity {
            return Err(ClientError::protocol(format!(
                "batch of entity '{}' for partition {} of entity '{}'",
                batch.entity, batch.partition, part.entity
            )));
        }
        if self.stream == Stream::Repair && part.repair != repair::RUNNING {
            return Ok(());
        }
        let meta = self.schemas.get(&batch.entity).cloned().ok_or_else(|| {
            ClientError::protocol(format!("batch of entity '{}' whose schema was never sent", batch.entity))
        })?;
        if batch.columns.first() != Some(&meta.primary_key) {
            return Err(ClientError::protocol(format!(
                "batch of '{}' does not start with the primary key '{}'",
                batch.entity, meta.primary_key
            )));
        }
        let mut types: Vec<&AttributeType> = Vec::with_capacity(batch.columns.len());
        for c in &batch.columns {
            let a = meta.attribute(c.as_str()).ok_or_else(|| {
                ClientError::protocol(format!("batch of '{}' has unknown column '{c}'", batch.entity))
            })?;
            types.push(&a.ty);
        }
        if batch.versions.len() != batch.puts.len() {
            return Err(ClientError::protocol(format!(
                "batch of '{}' has {} puts but {} versions",
                batch.entity,
                batch.puts.len(),
                batch.versions.len()
            )));
        }
        // Removes first. A batch holds at most one op per row, so the order
        // does not matter — except when a server sends a row both as a put
        // and as a remove (a stale tombstone of a deleted and re-created
        // row): the puts it sends are current, so they must win.
        for r in &batch.removes {
            let row_id = meta
                .parse_row_id(r.as_str())
                .map_err(|e| ClientError::protocol(format!("removed row id of '{}': {e}", batch.entity)))?;
            self.remove(&part, &meta, &row_id)?;
        }
        if batch.puts.is_empty() {
            return Ok(());
        }
        let Batch { entity, columns, puts, versions, .. } = batch;
        // The statements of a put, prepared once per batch: a long download
        // runs them once per row.
        let (insert_sql, update_sql) = upsert_sql(&meta, &columns);
        let tx: &rusqlite::Connection = &self.tx;
        let mut insert = tx.prepare_cached(&insert_sql)?;
        let mut update = tx.prepare_cached(&update_sql)?;
        // Memberships of rows this batch inserted go in by chunks of one
        // multi-row statement; other rows' memberships one by one.
        let mut fresh: Vec<FreshMember> = Vec::with_capacity(MEMBER_CHUNK);
        let pending_rows = self.pending.get(&entity).filter(|s| !s.is_empty());
        // Key types stored as their canonical text: the key binds as the row
        // id's text, which is exactly that text.
        let key_as_text = matches!(
            types[0],
            AttributeType::Uuid
                | AttributeType::Lookup { .. }
                | AttributeType::DateTime
                | AttributeType::Decimal
        );
        let (mut sum, mut count) = (0u32, 0i64);
        for (mut values, version) in puts.into_iter().zip(versions) {
            if values.len() != columns.len() {
                return Err(ClientError::protocol(format!(
                    "a row of '{entity}' has {} values for {} columns",
                    values.len(),
                    columns.len()
                )));
            }
            for (i, (v, ty)) in values.iter_mut().zip(&types).enumerate() {
                let wire = std::mem::replace(v, Value::Null);
                *v = wire_value(wire, ty, i == 0).map_err(|e| {
                    ClientError::protocol(format!("a value of '{entity}' does not fit its column: {e}"))
                })?;
            }
            let row_id = RowId::new(values[0].canonical_text())
                .map_err(|e| ClientError::protocol(format!("row id of '{entity}': {e}")))?;
            let v = i64::try_from(version.0).map_err(|_| ClientError::protocol("version out of range"))?;
            let pending = pending_rows.is_some_and(|s| s.contains(row_id.as_str()));
            let (rid, new_row) = if pending {
                // Edits are pending on this row: only make sure it has a row
                // number; its values come from the fold below.
                (pending_rid(tx, &meta, &values[0])?, false)
            } else {
                // Insert first (a first download only inserts), update when
                // the key exists. Neither needs a statement journal, unlike
                // an upsert with RETURNING.
                bind_row(&mut insert, key_as_text, &row_id, &values)?;
                if insert.raw_execute()? == 1 {
                    (tx.last_insert_rowid(), true)
                } else {
                    bind_row(&mut update, key_as_text, &row_id, &values)?;
                    let mut rows = update.raw_query();
                    let row = rows.next()?.ok_or_else(|| {
                        ClientError::corrupt(format!(
                            "row '{row_id}' of '{entity}' neither inserted nor updated"
                        ))
                    })?;
                    (row.get(0)?, false)
                }
            };
            self.outcome.puts += 1;
            if new_row {
                fresh.push(FreshMember { rid, version, row_id });
                if fresh.len() == MEMBER_CHUNK {
                    insert_fresh(tx, part.pid, &entity, &mut fresh, &mut sum, &mut count)?;
                }
                continue;
            }
            // Memberships go in the order of the puts.
            for m in fresh.drain(..) {
                let (s, c) = put_member(tx, part.pid, &entity, m.rid, &m.row_id, m.version)?;
                sum = sum.wrapping_add(s);
                count += c;
            }
            let (s, c) = put_member(tx, part.pid, &entity, rid, &row_id, version)?;
            sum = sum.wrapping_add(s);
            count += c;
            if pending {
                pending_fold(tx, &meta, &columns, &row_id, v, values)?;
            }
        }
        for m in fresh.drain(..) {
            let (s, c) = put_member(tx, part.pid, &entity, m.rid, &m.row_id, m.version)?;
            sum = sum.wrapping_add(s);
            count += c;
        }
        let d = self.deltas.entry(part.pid).or_insert((0, 0));
        d.0 = d.0.wrapping_add(sum);
        d.1 += count;
        Ok(())
    }

    fn remove(&mut self, part: &PartRow, meta: &EntityMetadata, row_id: &RowId) -> Result<()> {
        let Some(rid) = rid_of(&self.tx, meta, row_id)? else { return Ok(()) };
        let old: Option<i64> = self
            .tx
            .prepare_cached("DELETE FROM \"sync:membership\" WHERE pid = ?1 AND rid = ?2 RETURNING version")?
            .query_row(params![part.pid, rid], |r| r.get(0))
            .optional()?;
        let Some(old) = old else { return Ok(()) };
        let d = self.deltas.entry(part.pid).or_insert((0, 0));
        d.0 = d.0.wrapping_sub(membership_hash(&meta.name, row_id, Seq(old as u64)));
        d.1 -= 1;
        self.outcome.removes += 1;
        if !held_rid(&self.tx, &meta.name, Some(part.pid), rid)? {
            self.row_left(meta, row_id)?;
        }
        Ok(())
    }

    fn flush_checksums(&mut self) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "UPDATE \"sync:partitions\" SET sum = (sum + ?2) % 4294967296, count = count + ?3 WHERE pid = ?1",
        )?;
        for (pid, (sum, count)) in self.deltas.drain() {
            stmt.execute(params![pid, i64::from(sum), count])?;
        }
        Ok(())
    }

    /// The stream is complete: verify checksums, finish a repair, sweep.
    fn complete(&mut self, checksums: Option<&BTreeMap<PartitionKey, sync_core::Checksum>>) -> Result<()> {
        let local: HashMap<String, (i64, i64, i64, i64)> = self
            .tx
            .prepare_cached("SELECT key, pid, sum, count, repair FROM \"sync:partitions\"")?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))))?
            .collect::<rusqlite::Result<_>>()?;
        let mut mismatched = Vec::new();
        for (k, cs) in checksums.into_iter().flatten() {
            let Some(&(pid, sum, count, state)) = local.get(k.as_str()) else { continue };
            let concerned = match self.stream {
                Stream::Main => state != repair::RUNNING,
                Stream::Repair => state == repair::RUNNING,
            };
            if !concerned {
                continue;
            }
            if i64::from(cs.sum) != sum || i64::try_from(cs.count).ok() != Some(count) {
                tracing::warn!(
                    partition = %k, server_count = cs.count, local_count = count,
                    "partition checksum mismatch"
                );
                mismatched.push(k.clone());
                if self.stream == Stream::Main {
                    self.tx.execute(
                        "UPDATE \"sync:partitions\" SET repair = ?2 WHERE pid = ?1",
                        params![pid, repair::NEEDED],
                    )?;
                }
            }
        }
        match self.stream {
            Stream::Repair => {
                self.tx.execute(
                    "UPDATE \"sync:partitions\" SET repair = ?1 WHERE repair = ?2",
                    params![repair::NONE, repair::RUNNING],
                )?;
                set_meta(&self.tx, key::REPAIR_CURSOR, None)?;
                self.outcome.repair_finished = true;
            }
            Stream::Main => {
                let running: bool = self.tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM \"sync:partitions\" WHERE repair = ?1)",
                    [repair::RUNNING],
                    |r| r.get(0),
                )?;
                if !running {
                    self.sweep()?;
                }
                set_meta(&self.tx, key::LAST_SYNC, Some(&super::now_text()))?;
            }
        }
        self.outcome.mismatched = mismatched;
        Ok(())
    }

    /// Drops the rows set aside (by a resync, a repair or an acknowledged
    /// upload) that no partition brought back.
    fn sweep(&mut self) -> Result<()> {
        let rows: Vec<(String, String)> = self
            .tx
            .prepare_cached("SELECT entity, row_id FROM \"sync:sweep\"")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (entity, row_id) in rows {
            let (Ok(entity), Ok(row_id)) = (EntityName::new(entity), RowId::new(row_id)) else { continue };
            let Some(meta) = self.schemas.get(&entity).cloned() else { continue };
            let Some(rid) = rid_of(&self.tx, &meta, &row_id)? else { continue };
            if held_rid(&self.tx, &entity, None, rid)? {
                continue;
            }
            self.row_left(&meta, &row_id)?;
            self.outcome.swept += 1;
        }
        self.tx.execute("DELETE FROM \"sync:sweep\"", [])?;
        Ok(())
    }
}

/// Memberships inserted by one statement (see [`insert_fresh`]).
const MEMBER_CHUNK: usize = 100;

/// The membership of a row a batch has just inserted, waiting for its chunk.
struct FreshMember {
    rid: i64,
    version: Seq,
    row_id: RowId,
}

/// Puts one membership: inserts it, or updates its version. Returns the
/// checksum delta (sum, count).
fn put_member(
    tx: &rusqlite::Connection,
    pid: i64,
    entity: &EntityName,
    rid: i64,
    row_id: &RowId,
    version: Seq,
) -> Result<(u32, i64)> {
    let v = i64::try_from(version.0).map_err(|_| ClientError::protocol("version out of range"))?;
    let inserted = tx
        .prepare_cached("INSERT OR IGNORE INTO \"sync:membership\" (pid, rid, version) VALUES (?1, ?2, ?3)")?
        .execute(params![pid, rid, v])?;
    if inserted == 1 {
        return Ok((membership_hash(entity, row_id, version), 1));
    }
    let old: i64 = tx
        .prepare_cached("SELECT version FROM \"sync:membership\" WHERE pid = ?1 AND rid = ?2")?
        .query_row(params![pid, rid], |r| r.get(0))?;
    if old == v {
        return Ok((0, 0));
    }
    tx.prepare_cached("UPDATE \"sync:membership\" SET version = ?3 WHERE pid = ?1 AND rid = ?2")?
        .execute(params![pid, rid, v])?;
    let delta = membership_hash(entity, row_id, version).wrapping_sub(membership_hash(
        entity,
        row_id,
        Seq(old as u64),
    ));
    Ok((delta, 0))
}

/// Inserts the memberships of rows just inserted, in one statement. A row
/// number new to the table has no membership, so the insert succeeds; if
/// one had (a leftover the statement refuses as a whole), they are put one
/// by one instead. Adds their checksum delta to `sum` and `count`.
fn insert_fresh(
    tx: &rusqlite::Connection,
    pid: i64,
    entity: &EntityName,
    fresh: &mut Vec<FreshMember>,
    sum: &mut u32,
    count: &mut i64,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO \"sync:membership\" (pid, rid, version) VALUES {}",
        vec!["(?, ?, ?)"; fresh.len()].join(", ")
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    for (i, m) in fresh.iter().enumerate() {
        let v = i64::try_from(m.version.0).map_err(|_| ClientError::protocol("version out of range"))?;
        stmt.raw_bind_parameter(3 * i + 1, pid)?;
        stmt.raw_bind_parameter(3 * i + 2, m.rid)?;
        stmt.raw_bind_parameter(3 * i + 3, v)?;
    }
    match stmt.raw_execute() {
        Ok(_) => {
            for m in fresh.iter() {
                *sum = sum.wrapping_add(membership_hash(entity, &m.row_id, m.version));
                *count += 1;
            }
        }
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            for m in fresh.iter() {
                let (s, c) = put_member(tx, pid, entity, m.rid, &m.row_id, m.version)?;
                *sum = sum.wrapping_add(s);
                *count += c;
            }
        }
        Err(e) => return Err(e.into()),
    }
    fresh.clear();
    Ok(())
}

/// Whether edits are pending on the row.
fn is_pending(pending: &HashMap<EntityName, HashSet<String>>, entity: &EntityName, row_id: &RowId) -> bool {
    pending.get(entity).is_some_and(|s| s.contains(row_id.as_str()))
}

/// Binds a put's values (key first) to the insert or the update of
/// [`upsert_sql`]. `key_as_text`: the key binds as the row id's text (the
/// canonical text a key of its type is stored as).
fn bind_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    key_as_text: bool,
    row_id: &RowId,
    values: &[Value],
) -> Result<()> {
    if key_as_text {
        stmt.raw_bind_parameter(1, row_id.as_str())?;
    } else if let Some(key) = values.first() {
        stmt.raw_bind_parameter(1, SqlValue(key))?;
    }
    for (i, v) in values.iter().enumerate().skip(1) {
        stmt.raw_bind_parameter(i + 1, SqlValue(v))?;
    }
    Ok(())
}

/// The row number of a row with pending edits, which a put does not
/// overwrite (its values come from [`pending_fold`]): a hidden row is made
/// when there is none.
fn pending_rid(tx: &rusqlite::Connection, meta: &EntityMetadata, key: &Value) -> Result<i64> {
    let sql = format!(
        "INSERT INTO {t} ({k}, {HIDDEN}) VALUES (?1, 1) ON CONFLICT ({k}) DO UPDATE SET {HIDDEN} = {HIDDEN} \
         RETURNING {RID}",
        t = quote(&data_table(meta.name.as_str())),
        k = quote(meta.primary_key.as_str()),
    );
    Ok(tx.prepare_cached(&sql)?.query_row([SqlValue(key)], |r| r.get(0))?)
}

/// A put of a row with pending edits: the server's row goes to the shadow
/// (unless the shadow is newer) and the edits are applied over it again.
fn pending_fold(
    tx: &rusqlite::Connection,
    meta: &EntityMetadata,
    columns: &[ColumnName],
    row_id: &RowId,
    version: i64,
    values: Vec<Value>,
) -> Result<()> {
    let (data, shadow_version): (Option<String>, Option<i64>) = tx
        .prepare_cached("SELECT data, version FROM \"sync:shadow\" WHERE entity = ?1 AND row_id = ?2")?
        .query_row(params![meta.name.as_str(), row_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if shadow_version.is_none_or(|s| s <= version) {
        let mut base: BTreeMap<ColumnName, Value> = match data {
            Some(text) => values_from_json(meta, &text)?,
            None => BTreeMap::new(),
        };
        for (c, val) in columns.iter().zip(values) {
            base.insert(c.clone(), val);
        }
        tx.prepare_cached(
            "UPDATE \"sync:shadow\" SET data = ?3, version = ?4 WHERE entity = ?1 AND row_id = ?2",
        )?
        .execute(params![meta.name.as_str(), row_id.as_str(), values_to_json(&base), version])?;
    }
    refold(tx, meta, row_id)
}

/// A value from the wire, checked against its column's type and ready to
/// bind. The key is brought to its canonical form (it names the row);
/// other text-stored values (UUIDs, datetimes, decimals) are checked and
/// kept as the server wrote them — a server writes them canonically — to
/// spare a parse-and-format round per value on a long download.
fn wire_value(v: Value, ty: &AttributeType, key: bool) -> sync_core::Result<Value> {
    if !key && let Value::String(s) = &v {
        let ok = match ty {
            AttributeType::Uuid | AttributeType::Lookup { .. } => uuid::Uuid::try_parse(s).is_ok(),
            AttributeType::DateTime => {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
            }
            AttributeType::Decimal => s.parse::<rust_decimal::Decimal>().is_ok(),
            _ => false,
        };
        if ok {
            return Ok(v);
        }
    }
    v.coerce(ty)
}

/// The insert (`INSERT OR IGNORE`) and the update by key (`?1`) of the
/// given columns (key first) of a put.
fn upsert_sql(meta: &EntityMetadata, columns: &[ColumnName]) -> (String, String) {
    let table = quote(&data_table(meta.name.as_str()));
    let cols: Vec<String> = columns.iter().map(|c| quote(c.as_str())).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let mut sets: Vec<String> =
        cols.iter().enumerate().skip(1).map(|(i, c)| format!("{c} = ?{}", i + 1)).collect();
    sets.push(format!("{HIDDEN} = 0"));
    (
        format!("INSERT OR IGNORE INTO {table} ({}) VALUES ({})", cols.join(", "), marks.join(", ")),
        format!(
            "UPDATE {table} SET {} WHERE {} = ?1 RETURNING {RID}",
            sets.join(", "),
            quote(meta.primary_key.as_str())
        ),
    )
}

/// Sets every row of an entity aside for the sweep that ends the next
/// complete pull.
fn sweep_all_rows(tx: &rusqlite::Connection, meta: &EntityMetadata) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT OR IGNORE INTO \"sync:sweep\" (entity, row_id) SELECT ?1, CAST({} AS TEXT) FROM {}",
            quote(meta.primary_key.as_str()),
            quote(&data_table(meta.name.as_str()))
        ),
        [meta.name.as_str()],
    )?;
    Ok(())
}
