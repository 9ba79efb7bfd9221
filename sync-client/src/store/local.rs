//! Local writes, the pending-mutation queue, shadows, and acknowledgements.
//!
//! A row with pending edits has a *shadow*: the server's row as this device
//! last received it (or nothing, when the device holds no server copy). What
//! the app sees is the shadow with the pending edits applied in order
//! ([`refold`]). A pull that brings a new version of such a row updates the
//! shadow and folds the edits over it again, so an offline edit is never
//! overwritten by a pull while it is pending; an acknowledgement removes the
//! edit and, once none is left, the shadow.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sync_core::protocol::{ClientMutation, MutationOutcome, MutationResult};
use sync_core::{ColumnName, EntityMetadata, EntityName, MutationId, MutationOp, Row, RowId, Seq, Value};

use super::{
    Store, delete_visible, held_rid, loose_values_from_json, now_text, read_visible, rid_of,
    values_from_json, values_to_json, write_visible,
};
use crate::error::{ClientError, Result};

/// A local write as the app asks for it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LocalOp {
    Insert(BTreeMap<ColumnName, Value>),
    Update(RowId, BTreeMap<ColumnName, Value>),
    Delete(RowId),
}

/// A pending (not yet acknowledged) upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingMutation {
    /// The mutation's id (sent with every attempt, so a retry applies once).
    pub id: MutationId,
    /// The entity.
    pub entity: EntityName,
    /// The row.
    pub row_id: RowId,
    /// Insert, update or delete.
    pub op: MutationOp,
    /// The server version the edit was based on.
    pub base_version: Option<Seq>,
    /// The changed columns.
    pub values: BTreeMap<ColumnName, Value>,
    /// Upload attempts so far (after the first, the content is frozen).
    pub attempts: u32,
    /// When the edit was made (RFC 3339).
    pub created_at: String,
}

/// How the server disposed of an upload it did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalKind {
    /// The server's row won (server-wins, a resolver, a row changed or
    /// deleted underneath).
    Conflict,
    /// Not allowed or not valid.
    Rejected,
}

impl RefusalKind {
    fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Conflict => "conflict",
            RefusalKind::Rejected => "rejected",
        }
    }
}

/// An upload the server did not apply, kept in `sync:conflicts` until the
/// app dismisses it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// The mutation's id.
    pub mutation_id: MutationId,
    /// The entity.
    pub entity: EntityName,
    /// The row.
    pub row_id: RowId,
    /// What the edit was.
    pub op: MutationOp,
    /// Conflict or rejection.
    pub kind: RefusalKind,
    /// The server's reason.
    pub reason: String,
    /// The edit's values.
    pub local_values: BTreeMap<ColumnName, Value>,
    /// The server's row, when the server sent it with a conflict.
    pub server_row: Option<Row>,
    /// When the server's answer arrived (RFC 3339).
    pub at: String,
}

impl ConflictRecord {
    /// The edit's operation as a word (`insert`, `update`, `delete`).
    pub fn op_name(&self) -> &'static str {
        op_text(self.op)
    }
}

/// What an acknowledgement did, for events.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AckOutcome {
    Applied { id: MutationId, entity: EntityName, row_id: RowId, version: Seq },
    Refused(ConflictRecord),
}

fn op_text(op: MutationOp) -> &'static str {
    match op {
        MutationOp::Insert => "insert",
        MutationOp::Update => "update",
        MutationOp::Delete => "delete",
    }
}

fn parse_op(s: &str) -> Result<MutationOp> {
    match s {
        "insert" => Ok(MutationOp::Insert),
        "update" => Ok(MutationOp::Update),
        "delete" => Ok(MutationOp::Delete),
        other => Err(ClientError::corrupt(format!("unknown pending op '{other}'"))),
    }
}

fn parse_id(s: &str) -> Result<MutationId> {
    uuid::Uuid::parse_str(s).map(MutationId).map_err(|e| ClientError::corrupt(format!("mutation id: {e}")))
}

fn to_i64(v: Seq) -> Result<i64> {
    i64::try_from(v.0).map_err(|_| ClientError::protocol("version out of range"))
}

fn seq(v: Option<i64>) -> Option<Seq> {
    v.and_then(|v| u64::try_from(v).ok()).map(Seq)
}

/// Whether any partition holds the row.
pub(crate) fn held(conn: &Connection, meta: &EntityMetadata, row_id: &RowId) -> Result<bool> {
    match rid_of(conn, meta, row_id)? {
        Some(rid) => held_rid(conn, &meta.name, None, rid),
        None => Ok(false),
    }
}

/// The server version the device knows for a row: the highest membership
/// version, or the version an acknowledgement reported.
fn known_version(conn: &Connection, meta: &EntityMetadata, row_id: &RowId) -> Result<Option<i64>> {
    let m: Option<i64> = match rid_of(conn, meta, row_id)? {
        Some(rid) => conn
            .prepare_cached(
                "SELECT max(m.version) FROM \"sync:membership\" m JOIN \"sync:partitions\" p ON p.pid = m.pid \
                 WHERE p.entity = ?1 AND m.rid = ?2",
            )?
            .query_row(params![meta.name.as_str(), rid], |r| r.get(0))?,
        None => None,
    };
    let s: Option<i64> = conn
        .prepare_cached("SELECT version FROM \"sync:sweep\" WHERE entity = ?1 AND row_id = ?2")?
        .query_row(params![meta.name.as_str(), row_id.as_str()], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(m.max(s))
}

/// Recomputes the visible row from its shadow and pending edits.
pub(crate) fn refold(conn: &Connection, meta: &EntityMetadata, row_id: &RowId) -> Result<()> {
    let shadow: Option<Option<String>> = conn
        .prepare_cached("SELECT data FROM \"sync:shadow\" WHERE entity = ?1 AND row_id = ?2")?
        .query_row(params![meta.name.as_str(), row_id.as_str()], |r| r.get(0))
        .optional()?;
    let mut state: Option<BTreeMap<ColumnName, Value>> = match shadow.flatten() {
        Some(text) => Some(values_from_json(meta, &text)?),
        None => None,
    };
    let edits: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT op, \"values\" FROM \"sync:pending\" WHERE entity = ?1 AND row_id = ?2 ORDER BY seq",
        )?
        .query_map(params![meta.name.as_str(), row_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (op, values) in edits {
        let values = values_from_json(meta, &values)?;
        match parse_op(&op)? {
            MutationOp::Insert => state.get_or_insert_with(BTreeMap::new).extend(values),
            MutationOp::Update => {
                if let Some(s) = state.as_mut() {
                    s.extend(values);
                }
            }
            MutationOp::Delete => state = None,
        }
    }
    match state {
        Some(values) => write_visible(conn, meta, row_id, &values),
        None => delete_visible(conn, meta, row_id),
    }
}

/// The result of a local write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalWrite {
    /// The row written.
    pub row_id: RowId,
    /// The pending mutation that carries the edit (a new one, or the row's
    /// unsent pending edit it was merged into). `None` when the edit
    /// cancelled an upload that had not been sent yet (a delete of a row
    /// inserted offline), so nothing is left to upload.
    pub mutation: Option<MutationId>,
    /// The unsent pending mutation this edit cancelled, if any.
    pub cancelled: Option<MutationId>,
}

impl Store {
    /// Applies a local write to the visible table and records it for upload,
    /// in one transaction.
    pub(crate) fn local_write(&mut self, entity: &EntityName, op: LocalOp) -> Result<LocalWrite> {
        let meta = self.require_schema(entity)?;
        let tx = self.conn.transaction()?;
        let (kind, row_id, values) = match op {
            LocalOp::Insert(values) => {
                let key = values.get(&meta.primary_key).filter(|v| !v.is_null()).ok_or_else(|| {
                    ClientError::invalid(format!(
                        "an insert into '{entity}' needs its key '{}'",
                        meta.primary_key
                    ))
                })?;
                let row_id = meta
                    .parse_row_id(&key.canonical_text())
                    .map_err(|e| ClientError::invalid(format!("key of '{entity}': {e}")))?;
                (MutationOp::Insert, row_id.clone(), check_values(&meta, values, &row_id, true)?)
            }
            LocalOp::Update(row_id, values) => {
                let row_id = canonical_id(&meta, &row_id)?;
                if values.is_empty() {
                    return Err(ClientError::invalid("an update needs at least one column"));
                }
                (MutationOp::Update, row_id.clone(), check_values(&meta, values, &row_id, false)?)
            }
            LocalOp::Delete(row_id) => (MutationOp::Delete, canonical_id(&meta, &row_id)?, BTreeMap::new()),
        };
        let visible = read_visible(&tx, &meta, &row_id)?.is_some();
        match (kind, visible) {
            (MutationOp::Insert, true) => {
                return Err(ClientError::invalid(format!("row '{row_id}' of '{entity}' exists already")));
            }
            (MutationOp::Update | MutationOp::Delete, false) => {
                return Err(ClientError::NotFound(format!("row '{row_id}' of '{entity}'")));
            }
            _ => {}
        }
        // The shadow: the server's row under the edits.
        let shadow: Option<(Option<String>, Option<i64>)> = tx
            .prepare_cached("SELECT data, version FROM \"sync:shadow\" WHERE entity = ?1 AND row_id = ?2")?
            .query_row(params![entity.as_str(), row_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (shadow_data, shadow_version) = match shadow {
            Some(s) => s,
            None => {
                let data = read_visible(&tx, &meta, &row_id)?.map(|r| values_to_json(&r.values));
                let version = known_version(&tx, &meta, &row_id)?;
                tx.prepare_cached(
                    "INSERT INTO \"sync:shadow\" (entity, row_id, data, version) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![entity.as_str(), row_id.as_str(), data, version])?;
                (data, version)
            }
        };
        // Coalesce with the row's last pending edit when it was never sent.
        let last: Option<(i64, String, String, String, i64)> = tx
            .prepare_cached(
                "SELECT seq, id, op, \"values\", attempts FROM \"sync:pending\" \
                 WHERE entity = ?1 AND row_id = ?2 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![entity.as_str(), row_id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let mut result_id = None;
        let mut cancelled = None;
        if let Some((lseq, lid, lop, lvalues, 0)) = &last {
            let lop = parse_op(lop)?;
            let mut merged = loose_values_from_json(Some(&meta), lvalues)?;
            let action = match (lop, kind) {
                (MutationOp::Insert | MutationOp::Update, MutationOp::Update) => {
                    merged.extend(values.clone());
                    Some(Some((lop, merged)))
                }
                (MutationOp::Insert, MutationOp::Delete) if shadow_data.is_none() => Some(None),
                (MutationOp::Insert | MutationOp::Update, MutationOp::Delete) => {
                    Some(Some((MutationOp::Delete, BTreeMap::new())))
                }
                _ => None,
            };
            match action {
                Some(Some((op, vals))) => {
                    tx.prepare_cached("UPDATE \"sync:pending\" SET op = ?2, \"values\" = ?3 WHERE seq = ?1")?
                        .execute(params![lseq, op_text(op), values_to_json(&vals)])?;
                    result_id = Some(Some(parse_id(lid)?));
                }
                Some(None) => {
                    tx.prepare_cached("DELETE FROM \"sync:pending\" WHERE seq = ?1")?.execute([lseq])?;
                    result_id = Some(None);
                    cancelled = Some(parse_id(lid)?);
                }
                None => {}
            }
        }
        let mutation = match result_id {
            Some(id) => id,
            None => {
                let id = MutationId::new_v4();
                let base = if kind == MutationOp::Insert { None } else { shadow_version };
                tx.prepare_cached(
                    "INSERT INTO \"sync:pending\" (id, entity, row_id, op, base_version, \"values\", created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    id.0.to_string(),
                    entity.as_str(),
                    row_id.as_str(),
                    op_text(kind),
                    base,
                    values_to_json(&values),
                    now_text()
                ])?;
                Some(id)
            }
        };
        let any_left: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM \"sync:pending\" WHERE entity = ?1 AND row_id = ?2)",
            )?
            .query_row(params![entity.as_str(), row_id.as_str()], |r| r.get(0))?;
        if !any_left {
            tx.prepare_cached("DELETE FROM \"sync:shadow\" WHERE entity = ?1 AND row_id = ?2")?
                .execute(params![entity.as_str(), row_id.as_str()])?;
            match shadow_data {
                Some(text) => write_visible(&tx, &meta, &row_id, &values_from_json(&meta, &text)?)?,
                None => delete_visible(&tx, &meta, &row_id)?,
            }
        } else {
            refold(&tx, &meta, &row_id)?;
        }
        tx.commit()?;
        Ok(LocalWrite { row_id, mutation, cancelled })
    }

    /// The next mutations to upload: the longest prefix of the queue (in
    /// the order the edits were made) that touches each row at most once,
    /// so a row's second edit is sent only after its first is acknowledged
    /// and can carry the version that produced.
    pub(crate) fn next_upload(&self, max: usize) -> Result<Vec<ClientMutation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, entity, row_id, op, base_version, \"values\" FROM \"sync:pending\" ORDER BY seq LIMIT ?1",
        )?;
        let rows: Vec<(String, String, String, String, Option<i64>, String)> = stmt
            .query_map([max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (id, entity, row_id, op, base, values) in rows {
            if !seen.insert((entity.clone(), row_id.clone())) {
                break;
            }
            let entity = EntityName::new(entity).map_err(|e| ClientError::corrupt(e.to_string()))?;
            let meta = self.schema(&entity);
            out.push(ClientMutation {
                id: parse_id(&id)?,
                row_id: RowId::new(row_id).map_err(|e| ClientError::corrupt(e.to_string()))?,
                op: parse_op(&op)?,
                base_version: seq(base),
                values: loose_values_from_json(meta.as_deref(), &values)?,
                entity,
            });
        }
        Ok(out)
    }

    /// Records that these mutations are about to be sent: from now on their
    /// content never changes, so a retry is recognised by the server.
    pub(crate) fn mark_sent(&mut self, ids: &[MutationId]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE \"sync:pending\" SET attempts = attempts + 1 WHERE id = ?1")?;
            for id in ids {
                stmt.execute([id.0.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Applies the server's results: acknowledged edits leave the queue,
    /// refused ones are logged in `sync:conflicts`, and the visible rows are
    /// brought back to the server's view once no edit is left on them.
    pub(crate) fn acknowledge(&mut self, results: &[MutationResult]) -> Result<Vec<AckOutcome>> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            if let Some(o) = ack_one(&tx, &self.schemas, r)? {
                out.push(o);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Every pending mutation, oldest first.
    pub(crate) fn pending(&self) -> Result<Vec<PendingMutation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, entity, row_id, op, base_version, \"values\", attempts, created_at \
             FROM \"sync:pending\" ORDER BY seq",
        )?;
        type Raw = (String, String, String, String, Option<i64>, String, i64, String);
        let rows: Vec<Raw> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, entity, row_id, op, base, values, attempts, created_at)| {
                let entity = EntityName::new(entity).map_err(|e| ClientError::corrupt(e.to_string()))?;
                let meta = self.schema(&entity);
                Ok(PendingMutation {
                    id: parse_id(&id)?,
                    row_id: RowId::new(row_id).map_err(|e| ClientError::corrupt(e.to_string()))?,
                    op: parse_op(&op)?,
                    base_version: seq(base),
                    values: loose_values_from_json(meta.as_deref(), &values)?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    created_at,
                    entity,
                })
            })
            .collect()
    }

    /// The number of pending mutations.
    pub(crate) fn pending_count(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT count(*) FROM \"sync:pending\"", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Every refused upload not yet dismissed, oldest first.
    pub(crate) fn conflicts(&self) -> Result<Vec<ConflictRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT mutation_id, entity, row_id, op, kind, reason, local_values, server_row, at \
             FROM \"sync:conflicts\" ORDER BY seq",
        )?;
        type Raw = (String, String, String, String, String, String, String, Option<String>, String);
        let rows: Vec<Raw> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, entity, row_id, op, kind, reason, local, server, at)| {
                let entity = EntityName::new(entity).map_err(|e| ClientError::corrupt(e.to_string()))?;
                let meta = self.schema(&entity);
                Ok(ConflictRecord {
                    mutation_id: parse_id(&id)?,
                    row_id: RowId::new(row_id).map_err(|e| ClientError::corrupt(e.to_string()))?,
                    op: parse_op(&op)?,
                    kind: if kind == "conflict" { RefusalKind::Conflict } else { RefusalKind::Rejected },
                    reason,
                    local_values: loose_values_from_json(meta.as_deref(), &local)?,
                    server_row: server.map(|s| serde_json::from_str(&s)).transpose()?,
                    at,
                    entity,
                })
            })
            .collect()
    }

    /// Removes a refused upload from the log once the app has dealt with it.
    pub(crate) fn dismiss_conflict(&mut self, id: &MutationId) -> Result<bool> {
        Ok(self.conn.execute("DELETE FROM \"sync:conflicts\" WHERE mutation_id = ?1", [id.0.to_string()])?
            > 0)
    }
}

fn canonical_id(meta: &EntityMetadata, row_id: &RowId) -> Result<RowId> {
    meta.parse_row_id(row_id.as_str())
        .map_err(|e| ClientError::invalid(format!("row id of '{}': {e}", meta.name)))
}

/// Checks the columns and types of a local write.
fn check_values(
    meta: &EntityMetadata,
    values: BTreeMap<ColumnName, Value>,
    row_id: &RowId,
    insert: bool,
) -> Result<BTreeMap<ColumnName, Value>> {
    let mut out = BTreeMap::new();
    for (c, v) in values {
        let a = meta
            .attribute(c.as_str())
            .ok_or_else(|| ClientError::invalid(format!("entity '{}' has no column '{c}'", meta.name)))?;
        let v = v.coerce(&a.ty).map_err(|e| ClientError::invalid(format!("column '{c}': {e}")))?;
        if c == meta.primary_key {
            if v.canonical_text() != row_id.as_str() {
                return Err(ClientError::invalid(format!(
                    "the key column '{c}' cannot be changed; delete the row and insert another"
                )));
            }
            if !insert {
                continue;
            }
        }
        out.insert(c, v);
    }
    Ok(out)
}

fn ack_one(
    tx: &Connection,
    schemas: &std::collections::HashMap<EntityName, std::sync::Arc<EntityMetadata>>,
    r: &MutationResult,
) -> Result<Option<AckOutcome>> {
    let id = r.id.0.to_string();
    let found: Option<(String, String, String, String)> = tx
        .prepare_cached("SELECT entity, row_id, op, \"values\" FROM \"sync:pending\" WHERE id = ?1")?
        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    // Unknown: acknowledged before (a retried push) — nothing to do.
    let Some((entity, row_id, op, values)) = found else { return Ok(None) };
    let entity = EntityName::new(entity).map_err(|e| ClientError::corrupt(e.to_string()))?;
    let row_id = RowId::new(row_id).map_err(|e| ClientError::corrupt(e.to_string()))?;
    let op = parse_op(&op)?;
    tx.prepare_cached("DELETE FROM \"sync:pending\" WHERE id = ?1")?.execute([&id])?;
    let next: Option<(i64, String, i64)> = tx
        .prepare_cached(
            "SELECT seq, op, attempts FROM \"sync:pending\" WHERE entity = ?1 AND row_id = ?2 ORDER BY seq LIMIT 1",
        )?
        .query_row(params![entity.as_str(), row_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let shadow: Option<(Option<String>, Option<i64>)> = tx
        .prepare_cached("SELECT data, version FROM \"sync:shadow\" WHERE entity = ?1 AND row_id = ?2")?
        .query_row(params![entity.as_str(), row_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (shadow_data, shadow_version) = shadow.unwrap_or((None, None));
    let meta = schemas.get(&entity).cloned();
    match &r.outcome {
        MutationOutcome::Applied { row, version } => {
            let v = to_i64(*version)?;
            let row_json = row.as_ref().map(|row| values_to_json(&row.values));
            match next {
                Some((nseq, nop, attempts)) => {
                    if attempts == 0 && nop != "insert" {
                        tx.prepare_cached("UPDATE \"sync:pending\" SET base_version = ?2 WHERE seq = ?1")?
                            .execute(params![nseq, v])?;
                    }
                    if shadow_version.is_none_or(|s| s < v) {
                        tx.prepare_cached(
                            "UPDATE \"sync:shadow\" SET data = ?3, version = ?4 WHERE entity = ?1 AND row_id = ?2",
                        )?
                        .execute(params![entity.as_str(), row_id.as_str(), row_json, v])?;
                    }
                    if let Some(meta) = &meta {
                        refold(tx, meta, &row_id)?;
                    }
                }
                None => {
                    forget_shadow(tx, &entity, &row_id)?;
                    if let Some(meta) = &meta {
                        // A pull may already have brought a newer version.
                        let data = if shadow_version.is_some_and(|s| s > v) { shadow_data } else { row_json };
                        match data {
                            Some(text) => write_visible(tx, meta, &row_id, &values_from_json(meta, &text)?)?,
                            None => delete_visible(tx, meta, &row_id)?,
                        }
                    }
                    tx.prepare_cached(
                        "INSERT INTO \"sync:sweep\" (entity, row_id, version) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (entity, row_id) DO UPDATE SET version = excluded.version",
                    )?
                    .execute(params![entity.as_str(), row_id.as_str(), v])?;
                }
            }
            Ok(Some(AckOutcome::Applied { id: r.id, entity, row_id, version: *version }))
        }
        MutationOutcome::Conflict { server_row, reason } => {
            let record = ConflictRecord {
                mutation_id: r.id,
                local_values: loose_values_from_json(meta.as_deref(), &values)?,
                entity,
                row_id,
                op,
                kind: RefusalKind::Conflict,
                reason: reason.clone(),
                server_row: server_row.clone(),
                at: now_text(),
            };
            // Held rows show the server's row (or the last one pulled until
            // the next pull says otherwise).
            let show = server_row.as_ref().map(|r| values_to_json(&r.values)).or(shadow_data);
            refused(tx, meta.as_deref(), &record, next.is_some(), show)?;
            Ok(Some(AckOutcome::Refused(record)))
        }
        MutationOutcome::Rejected { reason } => {
            let record = ConflictRecord {
                mutation_id: r.id,
                local_values: loose_values_from_json(meta.as_deref(), &values)?,
                entity,
                row_id,
                op,
                kind: RefusalKind::Rejected,
                reason: reason.clone(),
                server_row: None,
                at: now_text(),
            };
            refused(tx, meta.as_deref(), &record, next.is_some(), shadow_data)?;
            Ok(Some(AckOutcome::Refused(record)))
        }
    }
}

fn forget_shadow(tx: &Connection, entity: &EntityName, row_id: &RowId) -> Result<()> {
    tx.prepare_cached("DELETE FROM \"sync:shadow\" WHERE entity = ?1 AND row_id = ?2")?
        .execute(params![entity.as_str(), row_id.as_str()])?;
    Ok(())
}

/// Logs a refused upload and shows the server's view of the row again
/// (`show`) when no other edit is pending on it and a partition holds it.
fn refused(
    tx: &Connection,
    meta: Option<&EntityMetadata>,
    record: &ConflictRecord,
    more_pending: bool,
    show: Option<String>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO \"sync:conflicts\" \
         (mutation_id, entity, row_id, op, kind, reason, local_values, server_row, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        record.mutation_id.0.to_string(),
        record.entity.as_str(),
        record.row_id.as_str(),
        op_text(record.op),
        record.kind.as_str(),
        record.reason,
        values_to_json(&record.local_values),
        record.server_row.as_ref().map(serde_json::to_string).transpose()?,
        record.at,
    ])?;
    let Some(meta) = meta else { return Ok(()) };
    if more_pending {
        return refold(tx, meta, &record.row_id);
    }
    forget_shadow(tx, &record.entity, &record.row_id)?;
    let holds = held(tx, meta, &record.row_id)?;
    match show.filter(|_| holds) {
        Some(text) => write_visible(tx, meta, &record.row_id, &values_from_json(meta, &text)?)?,
        None => delete_visible(tx, meta, &record.row_id)?,
    }
    tx.prepare_cached("INSERT OR IGNORE INTO \"sync:sweep\" (entity, row_id) VALUES (?1, ?2)")?
        .execute(params![record.entity.as_str(), record.row_id.as_str()])?;
    Ok(())
}
