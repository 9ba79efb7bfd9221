//! [`SqlServerOrgStaging`]: one org's staging data on SQL Server.
//!
//! Every write runs in one transaction that first takes the org's
//! application lock (`sp_getapplock`, owned by the transaction), then reads
//! the org's state (incarnation, head, schema version) and allocates seqs
//! from the head while holding the lock: writers of one org, in any number
//! of processes, are serialized, so seq order is commit order. Pulls read
//! from one `SNAPSHOT` transaction. The membership bookkeeping mirrors the
//! in-memory store's exactly (one latest op per partition and row,
//! incremental checksums with [`membership_hash`]), computed in Rust inside
//! the transaction and written in multi-row statements.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sync_core::filter::{MembershipPlanner, validate_profile};
use sync_core::org::EntityStatus;
use sync_core::partition::{Checksum, MembershipAction, membership_hash};
use sync_core::staging::{ApplyOutcome, MutationRecord, PullPage, PullPlan, PulledChange, SchemaChange};
use sync_core::{
    Attribute, ChangePage, ChangeToken, ColumnName, EntityMetadata, EntityName, Error, MutationId, OrgId,
    OrgStaging, OrgStatus, PartitionKey, Profile, ProfileName, PulledRow, Result, Row, RowId, Seq, StagedRow,
    SyncRunReport, Value,
};
use tokio::sync::watch;

use crate::db::{batch, chunks, execute, first, query, with_conn};
use crate::error::{MssqlError, R, codes};
use crate::pool::{Conn, Pool};
use crate::sql;
use crate::values::{self, Param, get_i64, get_str, seq_from_i64};

/// Rows read per round trip when a schema or profile change passes over a
/// whole entity.
const RESTAGE_CHUNK: i64 = 500;

/// Most membership ops read per round trip of a pull.
const PULL_CHUNK: usize = 500;

/// Approximate bytes a remove op counts against a pull's byte budget, on top
/// of its row id (as the in-memory store counts it).
const REMOVE_OVERHEAD: usize = 8;

/// Where an org's tables are: the pool that reaches its database and the
/// schema that holds them.
#[derive(Clone)]
pub(crate) struct Place {
    pub(crate) pool: Pool,
    pub(crate) schema: String,
    /// Whether `pool` reaches the org's own database (database-per-org)
    /// rather than the shared control database.
    pub(crate) own_database: bool,
}

/// The control database, for checking whether an org still exists.
#[derive(Clone)]
pub(crate) struct ControlRef {
    pub(crate) pool: Pool,
    pub(crate) schema: String,
}

/// The org's bookkeeping row.
#[derive(Clone, Debug)]
pub(crate) struct OrgState {
    pub(crate) incarnation: String,
    pub(crate) head: Seq,
    pub(crate) schema_version: u64,
    pub(crate) floor: Seq,
}

/// Reads the org's state, `None` when its bookkeeping rows are missing.
pub(crate) async fn read_state(c: &mut Conn, schema: &str) -> R<Option<OrgState>> {
    let rows = query(c, &sql::org_state(schema)?, &[]).await?;
    let Some(r) = rows.first() else { return Ok(None) };
    let version = get_i64(r, 2, "schema_version")?;
    Ok(Some(OrgState {
        incarnation: get_str(r, 0, "incarnation")?.to_owned(),
        head: seq_from_i64(get_i64(r, 1, "head")?)?,
        schema_version: u64::try_from(version)
            .map_err(|_| MssqlError::Decode(format!("negative schema version {version}")))?,
        floor: seq_from_i64(get_i64(r, 3, "tombstone_floor")?)?,
    }))
}

/// A write transaction in progress: the org's state as the lock found it,
/// and the head and schema version the write moves.
pub(crate) struct Tx {
    schema: String,
    state: OrgState,
    head: Seq,
    schema_version: u64,
}

impl Tx {
    fn next_seq(&mut self) -> Seq {
        self.head = self.head.next();
        self.head
    }
}

fn decode_err(what: &str) -> impl Fn(Error) -> MssqlError + '_ {
    move |e| MssqlError::Decode(format!("{what}: {e}"))
}

/// One staged row from the columns of [`sql::select_rows`].
fn decode_row(meta: &EntityMetadata, r: &tiberius::Row) -> R<StagedRow> {
    let id = RowId::new(get_str(r, 0, "row id")?).map_err(decode_err("stored row id"))?;
    let mut values = BTreeMap::new();
    for (i, a) in meta.attributes.iter().enumerate() {
        values.insert(a.name.clone(), values::column_value(r, i + 1, &a.ty)?);
    }
    let version = seq_from_i64(get_i64(r, meta.attributes.len() + 1, "version")?)?;
    Ok(StagedRow { row: Row { id, values }, version })
}

async fn load_schema(c: &mut Conn, schema: &str, entity: &EntityName) -> R<Option<EntityMetadata>> {
    let rows = query(c, &sql::select_schema(schema)?, &[Param::text(entity.as_str())]).await?;
    match rows.first() {
        Some(r) => Ok(Some(parse_json(get_str(r, 0, "metadata")?, "stored schema")?)),
        None => Ok(None),
    }
}

async fn require_schema(c: &mut Conn, schema: &str, entity: &EntityName) -> R<EntityMetadata> {
    load_schema(c, schema, entity)
        .await?
        .ok_or_else(|| Error::not_found(format!("entity '{entity}' is not staged")).into())
}

async fn load_schemas(c: &mut Conn, schema: &str) -> R<Vec<EntityMetadata>> {
    let rows = query(c, &sql::select_schemas(schema)?, &[]).await?;
    rows.iter().map(|r| parse_json(get_str(r, 1, "metadata")?, "stored schema")).collect()
}

async fn load_profiles(c: &mut Conn, schema: &str) -> R<Vec<Profile>> {
    let rows = query(c, &sql::select_profiles(schema)?, &[]).await?;
    rows.iter().map(|r| parse_json(get_str(r, 0, "profile")?, "stored profile")).collect()
}

async fn load_profile(c: &mut Conn, schema: &str, name: &ProfileName) -> R<Option<Profile>> {
    let rows = query(c, &sql::select_profile(schema)?, &[Param::text(name.as_str())]).await?;
    match rows.first() {
        Some(r) => Ok(Some(parse_json(get_str(r, 0, "profile")?, "stored profile")?)),
        None => Ok(None),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> R<T> {
    serde_json::from_str(text).map_err(|e| MssqlError::Decode(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> R<String> {
    serde_json::to_string(value).map_err(|e| MssqlError::Decode(format!("encoding {what}: {e}")))
}

/// The staged rows of `ids` (absent ids are left out).
async fn fetch_rows(
    c: &mut Conn,
    schema: &str,
    meta: &EntityMetadata,
    ids: &[RowId],
) -> R<HashMap<RowId, StagedRow>> {
    let mut out = HashMap::with_capacity(ids.len());
    for part in chunks(ids, sql::MAX_PARAMS) {
        let params: Vec<Param> = part.iter().map(|id| Param::text(id.as_str())).collect();
        for r in query(c, &sql::select_rows(schema, meta, part.len())?, &params).await? {
            let staged = decode_row(meta, &r)?;
            out.insert(staged.row.id.clone(), staged);
        }
    }
    Ok(out)
}

/// SQL Server compares text ignoring trailing spaces, so two ids differing
/// only in them would be one row: such ids are refused.
fn check_row_id(entity: &EntityName, id: &RowId) -> R<()> {
    if id.as_str().ends_with(' ') {
        return Err(Error::invalid(format!(
            "entity '{entity}', row '{id}': row ids ending in a space are not supported by the SQL Server store \
             (SQL Server compares text ignoring trailing spaces)"
        ))
        .into());
    }
    Ok(())
}

/// The membership effects of one write on one entity, computed like the
/// in-memory store's and written by [`Membership::flush`].
struct Membership {
    entity: EntityName,
    /// Live (non-removed) partitions of the touched rows, with the version
    /// each entry refers to.
    live: HashMap<RowId, BTreeMap<PartitionKey, Seq>>,
    /// The latest op per (partition, row): seq, version, removed.
    ops: BTreeMap<(PartitionKey, RowId), (Seq, Seq, bool)>,
    /// Checksum deltas per partition: the sum delta modulo 2³², the count delta.
    sums: BTreeMap<PartitionKey, (u32, i64)>,
}

impl Membership {
    fn new(entity: EntityName) -> Self {
        Membership { entity, live: HashMap::new(), ops: BTreeMap::new(), sums: BTreeMap::new() }
    }

    /// Reads the live memberships of `ids`.
    async fn load_live(&mut self, c: &mut Conn, schema: &str, ids: &[RowId]) -> R<()> {
        for part in chunks(ids, sql::MAX_PARAMS - 1) {
            let mut params = Vec::with_capacity(part.len() + 1);
            params.push(Param::text(self.entity.as_str()));
            params.extend(part.iter().map(|id| Param::text(id.as_str())));
            for r in query(c, &sql::select_live_memberships(schema, part.len())?, &params).await? {
                let id = RowId::new(get_str(&r, 0, "row id")?).map_err(decode_err("membership row id"))?;
                let key = PartitionKey::new(get_str(&r, 1, "partition key")?)
                    .map_err(decode_err("stored partition key"))?;
                let version = seq_from_i64(get_i64(&r, 2, "version")?)?;
                self.live.entry(id).or_default().insert(key, version);
            }
        }
        Ok(())
    }

    /// The partitions the row is a live member of.
    fn parts(&self, id: &RowId) -> BTreeSet<PartitionKey> {
        self.live.get(id).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    fn delta(&mut self, key: &PartitionKey, id: &RowId, version: Seq, add: bool) {
        let h = membership_hash(&self.entity, id, version);
        let d = self.sums.entry(key.clone()).or_insert((0, 0));
        if add {
            d.0 = d.0.wrapping_add(h);
            d.1 += 1;
        } else {
            d.0 = d.0.wrapping_sub(h);
            d.1 -= 1;
        }
    }

    /// The row is in `key` at `version`, as of `seq`.
    fn put(&mut self, key: &PartitionKey, id: &RowId, seq: Seq, version: Seq) {
        if let Some(old) = self.live.get(id).and_then(|m| m.get(key)).copied() {
            self.delta(key, id, old, false);
        }
        self.delta(key, id, version, true);
        self.live.entry(id.clone()).or_default().insert(key.clone(), version);
        self.ops.insert((key.clone(), id.clone()), (seq, version, false));
    }

    /// The row left `key` as of `seq` (a tombstone whose version is `seq`);
    /// a row that is not a live member is left alone.
    fn remove(&mut self, key: &PartitionKey, id: &RowId, seq: Seq) {
        let Some(old) = self.live.get_mut(id).and_then(|m| m.remove(key)) else { return };
        self.delta(key, id, old, false);
        self.ops.insert((key.clone(), id.clone()), (seq, seq, true));
    }

    /// Writes the ops and checksum deltas, registering new partitions, and
    /// starts over.
    async fn flush(&mut self, c: &mut Conn, schema: &str) -> R<()> {
        let keys: BTreeSet<&PartitionKey> = self.ops.keys().map(|(k, _)| k).chain(self.sums.keys()).collect();
        if keys.is_empty() {
            self.live.clear();
            return Ok(());
        }
        let keys: Vec<&PartitionKey> = keys.into_iter().collect();
        let mut pids: HashMap<String, i64> = HashMap::with_capacity(keys.len());
        for part in chunks(&keys, sql::MAX_PARAMS) {
            let params: Vec<Param> = part.iter().map(|k| Param::text(k.as_str())).collect();
            for r in query(c, &sql::select_partitions(schema, part.len())?, &params).await? {
                pids.insert(get_str(&r, 1, "partition key")?.to_owned(), get_i64(&r, 0, "pid")?);
            }
        }
        let missing: Vec<&PartitionKey> =
            keys.iter().copied().filter(|k| !pids.contains_key(k.as_str())).collect();
        for part in chunks(&missing, 1000) {
            let params: Vec<Param> = part.iter().map(|k| Param::text(k.as_str())).collect();
            for r in query(c, &sql::insert_partitions(schema, part.len())?, &params).await? {
                pids.insert(get_str(&r, 1, "partition key")?.to_owned(), get_i64(&r, 0, "pid")?);
            }
        }
        let pid = |k: &PartitionKey| {
            pids.get(k.as_str())
                .copied()
                .ok_or_else(|| MssqlError::Decode(format!("partition '{k}' was not registered")))
        };
        let ops: Vec<_> = self.ops.iter().collect();
        for part in chunks(&ops, sql::rows_per_request(sql::MEMBERSHIP_WIDTH)) {
            let mut params = Vec::with_capacity(part.len() * sql::MEMBERSHIP_WIDTH);
            for ((key, id), (seq, version, removed)) in part {
                params.push(Param::I64(Some(pid(key)?)));
                params.push(Param::text(self.entity.as_str()));
                params.push(Param::text(id.as_str()));
                params.push(Param::seq(*seq)?);
                params.push(Param::seq(*version)?);
                params.push(Param::Bit(Some(*removed)));
            }
            execute(c, &sql::merge_membership(schema, part.len())?, &params).await?;
        }
        let sums: Vec<_> = self.sums.iter().filter(|(_, d)| **d != (0, 0)).collect();
        for part in chunks(&sums, sql::rows_per_request(3)) {
            let mut params = Vec::with_capacity(part.len() * 3);
            for (key, (sum, count)) in part {
                params.push(Param::I64(Some(pid(key)?)));
                params.push(Param::I64(Some(i64::from(*sum))));
                params.push(Param::I64(Some(*count)));
            }
            execute(c, &sql::add_checksums(schema, part.len())?, &params).await?;
        }
        self.ops.clear();
        self.sums.clear();
        self.live.clear();
        Ok(())
    }
}

/// Writes staged rows (`MERGE` upserts) in requests within the parameter limit.
async fn upsert_rows(c: &mut Conn, schema: &str, meta: &EntityMetadata, rows: &[&StagedRow]) -> R<()> {
    let width = sql::upsert_width(meta);
    if width > sql::MAX_PARAMS {
        return Err(Error::invalid(format!(
            "entity '{}' has {} attributes; one row must bind at most {} values on SQL Server",
            meta.name,
            meta.attributes.len(),
            sql::MAX_PARAMS - 2
        ))
        .into());
    }
    for part in chunks(rows, sql::rows_per_request(width)) {
        let mut params = Vec::with_capacity(part.len() * width);
        for staged in part {
            params.push(Param::text(staged.row.id.as_str()));
            params.extend(values::encode_row(meta, &staged.row)?);
            params.push(Param::seq(staged.version)?);
        }
        execute(c, &sql::upsert_rows(schema, meta, part.len())?, &params).await?;
    }
    Ok(())
}

/// Stages one change page (see [`OrgStaging::apply_changes`]).
async fn stage_page(c: &mut Conn, tx: &mut Tx, entity: &EntityName, page: ChangePage) -> R<ApplyOutcome> {
    let schema = tx.schema.clone();
    let meta = require_schema(c, &schema, entity).await?;
    let checker = meta.row_checker()?;
    let mut rows = Vec::with_capacity(page.upserts.len());
    for row in page.upserts {
        let id = row.id.clone();
        let context = |e: Error| Error::invalid(format!("entity '{entity}', row '{id}': {e}"));
        let checked = checker.check(row).map_err(context)?;
        let checked = values::normalize_row(checked).map_err(context)?;
        check_row_id(entity, &checked.id)?;
        rows.push(checked);
    }
    let mut deletes = Vec::with_capacity(page.deletes.len());
    for id in &page.deletes {
        let id = meta
            .parse_row_id(id.as_str())
            .map_err(|e| Error::invalid(format!("entity '{entity}', deleted id '{id}': {e}")))?;
        deletes.push(id);
    }
    let profiles = load_profiles(c, &schema).await?;
    let planner = MembershipPlanner::new(&meta, &profiles)?;
    let ids: Vec<RowId> = rows
        .iter()
        .map(|r| r.id.clone())
        .chain(deletes.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let before = fetch_rows(c, &schema, &meta, &ids).await?;
    let mut membership = Membership::new(entity.clone());
    membership.load_live(c, &schema, &ids).await?;

    let mut current: BTreeMap<RowId, Option<StagedRow>> = BTreeMap::new();
    let mut outcome = ApplyOutcome::default();
    for row in rows {
        let slot = current.entry(row.id.clone()).or_insert_with(|| before.get(&row.id).cloned());
        let previous = slot.as_ref().map(|s| &s.row);
        if previous == Some(&row) {
            outcome.unchanged += 1;
            continue;
        }
        let seq = tx.next_seq();
        let new_parts: BTreeSet<PartitionKey> = planner
            .plan(previous, Some(&row))
            .into_iter()
            .filter(|op| op.action == MembershipAction::Put)
            .map(|op| op.partition)
            .collect();
        let old_parts = membership.parts(&row.id);
        for left in old_parts.difference(&new_parts) {
            membership.remove(left, &row.id, seq);
        }
        for part in &new_parts {
            membership.put(part, &row.id, seq, seq);
        }
        *slot = Some(StagedRow { row, version: seq });
        outcome.upserted += 1;
    }
    for id in deletes {
        let slot = current.entry(id.clone()).or_insert_with(|| before.get(&id).cloned());
        if slot.is_none() {
            continue;
        }
        let seq = tx.next_seq();
        for part in membership.parts(&id) {
            membership.remove(&part, &id, seq);
        }
        *slot = None;
        outcome.deleted += 1;
    }

    let mut upserts = Vec::new();
    let mut gone = Vec::new();
    for (id, state) in &current {
        match state {
            Some(staged) if before.get(id) != Some(staged) => upserts.push(staged),
            Some(_) => {}
            None if before.contains_key(id) => gone.push(id.clone()),
            None => {}
        }
    }
    upsert_rows(c, &schema, &meta, &upserts).await?;
    for part in chunks(&gone, sql::MAX_PARAMS) {
        let params: Vec<Param> = part.iter().map(|id| Param::text(id.as_str())).collect();
        execute(c, &sql::delete_rows(&schema, entity.as_str(), part.len())?, &params).await?;
    }
    membership.flush(c, &schema).await?;
    if let Some(token) = page.next_token {
        execute(c, &sql::put_token(&schema)?, &[Param::text(entity.as_str()), Param::text(token.0)]).await?;
    }
    outcome.head = tx.head;
    Ok(outcome)
}

/// Passes over every row of an entity after its schema changed from `old`
/// to `new` (or, with `old == new`, after its profiles changed): converts
/// retyped values with [`Value::coerce`] (values that do not convert become
/// null), gives rows whose non-null values changed a new version, and brings
/// membership in line with `planner` — exactly the in-memory store's rules.
/// Retyped columns are rebuilt through a scratch column; removed columns
/// are dropped and added ones added last.
async fn restage_entity(
    c: &mut Conn,
    tx: &mut Tx,
    old: &EntityMetadata,
    new: &EntityMetadata,
    planner: &MembershipPlanner,
) -> R<()> {
    let schema = tx.schema.clone();
    let entity = new.name.as_str();
    let retyped: Vec<(usize, &Attribute)> = new
        .attributes
        .iter()
        .enumerate()
        .filter(|(_, a)| old.attribute(a.name.as_str()).is_some_and(|o| o.ty != a.ty))
        .collect();
    let dropped: Vec<&Attribute> =
        old.attributes.iter().filter(|a| new.attribute(a.name.as_str()).is_none()).collect();
    let added: Vec<&Attribute> =
        new.attributes.iter().filter(|a| old.attribute(a.name.as_str()).is_none()).collect();
    for (i, a) in &retyped {
        execute(c, &sql::add_retype_column(&schema, entity, *i, a)?, &[]).await?;
    }
    let scratch: Vec<String> = retyped.iter().map(|(i, _)| sql::retype_scratch_column(*i)).collect();
    let select = sql::select_rows_after(&schema, old)?;
    let mut after = String::new();
    loop {
        let rows = query(c, &select, &[Param::text(after.clone()), Param::I64(Some(RESTAGE_CHUNK))]).await?;
        let staged = rows.iter().map(|r| decode_row(old, r)).collect::<R<Vec<_>>>()?;
        let Some(last) = staged.last() else { break };
        after = last.row.id.as_str().to_owned();
        let ids: Vec<RowId> = staged.iter().map(|s| s.row.id.clone()).collect();
        let mut membership = Membership::new(new.name.clone());
        membership.load_live(c, &schema, &ids).await?;
        let mut updates: Vec<(RowId, Vec<Param>, Seq)> = Vec::new();
        for s in &staged {
            let mut values = BTreeMap::new();
            let mut bump = false;
            for a in &new.attributes {
                let old_value = s.row.values.get(&a.name).cloned().unwrap_or(Value::Null);
                let value = match old.attribute(a.name.as_str()) {
                    Some(prev) if prev.ty == a.ty => old_value,
                    Some(_) => {
                        let converted = old_value
                            .clone()
                            .coerce(&a.ty)
                            .and_then(values::normalize)
                            .unwrap_or(Value::Null);
                        bump |= converted != old_value;
                        converted
                    }
                    None => Value::Null,
                };
                values.insert(a.name.clone(), value);
            }
            // A dropped column that held a value changes the row too.
            bump |= s.row.values.iter().any(|(c, v)| !v.is_null() && new.attribute(c.as_str()).is_none());
            let row = Row { id: s.row.id.clone(), values };
            let new_parts: BTreeSet<PartitionKey> = planner.partitions(&row).into_iter().collect();
            let current = membership.parts(&row.id);
            let mut version = s.version;
            if bump || current != new_parts {
                let seq = tx.next_seq();
                if bump {
                    version = seq;
                }
                for left in current.difference(&new_parts) {
                    membership.remove(left, &row.id, seq);
                }
                for part in &new_parts {
                    if bump || !current.contains(part) {
                        membership.put(part, &row.id, seq, version);
                    }
                }
            }
            if !retyped.is_empty() || version != s.version {
                let mut params = Vec::with_capacity(retyped.len());
                for (_, a) in &retyped {
                    params.push(values::encode(row.values.get(&a.name).unwrap_or(&Value::Null), &a.ty)?);
                }
                updates.push((row.id.clone(), params, version));
            }
        }
        let width = scratch.len() + 2;
        for part in chunks(&updates, sql::rows_per_request(width)) {
            let mut params = Vec::with_capacity(part.len() * width);
            for (id, vals, version) in part {
                params.push(Param::text(id.as_str()));
                params.extend(vals.iter().cloned());
                params.push(Param::seq(*version)?);
            }
            execute(c, &sql::update_rows(&schema, entity, &scratch, part.len())?, &params).await?;
        }
        membership.flush(c, &schema).await?;
        if (staged.len() as i64) < RESTAGE_CHUNK {
            break;
        }
    }
    for a in dropped {
        execute(c, &sql::drop_column(&schema, entity, a.name.as_str())?, &[]).await?;
    }
    for ((_, a), tmp) in retyped.iter().zip(&scratch) {
        execute(c, &sql::drop_column(&schema, entity, a.name.as_str())?, &[]).await?;
        let (from, to) = sql::rename_column_params(&schema, entity, tmp, a.name.as_str())?;
        execute(c, sql::RENAME_COLUMN, &[Param::text(from), Param::text(to)]).await?;
    }
    for a in added {
        execute(c, &sql::add_column(&schema, entity, a)?, &[]).await?;
    }
    Ok(())
}

/// The table of `meta` must fit SQL Server's column limit, with the
/// store's two columns and, while a schema change runs, one scratch column
/// per retyped attribute beside the old ones.
fn check_columns(old: Option<&EntityMetadata>, new: &EntityMetadata) -> Result<()> {
    let retyped = old.map_or(0, |o| {
        new.attributes.iter().filter(|a| o.attribute(a.name.as_str()).is_some_and(|p| p.ty != a.ty)).count()
    });
    let peak = (old.map_or(0, |o| o.attributes.len()) + retyped).max(new.attributes.len()) + 2;
    if peak > sql::MAX_TABLE_COLUMNS {
        return Err(Error::invalid(format!(
            "entity '{}' needs {peak} columns on SQL Server (its attributes, 2 of the store's{}), \
             more than the {} a table may have",
            new.name,
            if retyped > 0 { ", one per retyped attribute while it changes" } else { "" },
            sql::MAX_TABLE_COLUMNS
        )));
    }
    Ok(())
}

/// Names this store keeps for itself.
fn check_reserved(meta: &EntityMetadata) -> Result<()> {
    let reserved = |name: &str| name.to_ascii_lowercase().starts_with(sql::RESERVED_PREFIX);
    if reserved(meta.name.as_str()) {
        return Err(Error::invalid(format!(
            "entity name '{}' uses the prefix '{}' reserved by the SQL Server store",
            meta.name,
            sql::RESERVED_PREFIX
        )));
    }
    if let Some(a) = meta.attributes.iter().find(|a| reserved(a.name.as_str())) {
        return Err(Error::invalid(format!(
            "entity '{}': attribute name '{}' uses the prefix '{}' reserved by the SQL Server store",
            meta.name,
            a.name,
            sql::RESERVED_PREFIX
        )));
    }
    Ok(())
}

/// Creates or evolves an entity's table (see [`OrgStaging::apply_schema`]).
async fn evolve_schema(c: &mut Conn, tx: &mut Tx, meta: &EntityMetadata) -> R<SchemaChange> {
    let schema = tx.schema.clone();
    let old = load_schema(c, &schema, &meta.name).await?;
    check_columns(old.as_ref(), meta)?;
    let change = match old {
        None => {
            let clash =
                query(c, &sql::schema_case_clash(&schema)?, &[Param::text(meta.name.as_str())]).await?;
            if let Some(r) = clash.first() {
                return Err(Error::invalid(format!(
                    "entity '{}' differs from the staged entity '{}' only in case; SQL Server table names \
                     are case-insensitive",
                    meta.name,
                    get_str(r, 0, "entity")?
                ))
                .into());
            }
            execute(c, &sql::create_entity_table(&schema, meta)?, &[]).await?;
            SchemaChange::Created
        }
        Some(old) if old == *meta => return Ok(SchemaChange::Unchanged),
        Some(old) => {
            let key_changed = old.primary_key != meta.primary_key || old.key_type()? != meta.key_type()?;
            if key_changed {
                let rows = query(c, &sql::count_rows(&schema, meta.name.as_str())?, &[]).await?;
                if get_i64(first(&rows, "count")?, 0, "count")? > 0 {
                    return Err(Error::invalid(format!(
                        "entity '{}': the primary key cannot change from {} ({}) to {} ({}) while rows are staged",
                        meta.name,
                        old.primary_key,
                        old.key_type()?.name(),
                        meta.primary_key,
                        meta.key_type()?.name()
                    ))
                    .into());
                }
            }
            // Every profile naming the entity must still compile.
            let mut schemas = load_schemas(c, &schema).await?;
            if let Some(slot) = schemas.iter_mut().find(|m| m.name == meta.name) {
                *slot = meta.clone();
            }
            let profiles = load_profiles(c, &schema).await?;
            for profile in &profiles {
                if profile.items.iter().any(|i| i.entity == meta.name) {
                    validate_profile(profile, &schemas).map_err(|e| {
                        Error::invalid(format!(
                            "the new schema of '{}' breaks profile '{}' ({e}); change the profile first",
                            meta.name, profile.name
                        ))
                    })?;
                }
            }
            if key_changed {
                execute(c, &sql::drop_entity_table(&schema, meta.name.as_str())?, &[]).await?;
                execute(c, &sql::create_entity_table(&schema, meta)?, &[]).await?;
            } else {
                let planner = MembershipPlanner::new(meta, &profiles)?;
                restage_entity(c, tx, &old, meta, &planner).await?;
            }
            SchemaChange::Altered
        }
    };
    execute(
        c,
        &sql::put_schema(&schema)?,
        &[
            Param::text(meta.name.as_str()),
            Param::text(to_json(meta, "schema")?),
            Param::text(meta.schema_hash()),
        ],
    )
    .await?;
    tx.schema_version += 1;
    Ok(change)
}

/// Recomputes the membership of `entities` under the stored profiles.
async fn recompute(c: &mut Conn, tx: &mut Tx, entities: &BTreeSet<EntityName>) -> R<()> {
    let schema = tx.schema.clone();
    let profiles = load_profiles(c, &schema).await?;
    for name in entities {
        let Some(meta) = load_schema(c, &schema, name).await? else { continue };
        let planner = MembershipPlanner::new(&meta, &profiles)?;
        restage_entity(c, tx, &meta, &meta, &planner).await?;
    }
    Ok(())
}

/// One membership op read by a pull.
struct PulledOp {
    entity: EntityName,
    row_id: RowId,
    seq: Seq,
    removed: bool,
}

/// Reads a pull page inside a snapshot transaction (see [`OrgStaging::pull`]).
async fn pull_page(c: &mut Conn, schema: &str, head: Seq, plan: &PullPlan) -> R<PullPage> {
    let mut seen = BTreeSet::new();
    for (key, position) in &plan.partitions {
        if !seen.insert(key) {
            return Err(Error::invalid(format!("partition '{key}' is planned twice")).into());
        }
        if *position > head {
            return Err(Error::resync(format!(
                "position {position} of partition '{key}' is beyond the head {head}"
            ))
            .into());
        }
    }
    let max_rows = plan.max_rows.max(1);
    let mut metas: HashMap<EntityName, EntityMetadata> = HashMap::new();
    let mut columns: HashMap<EntityName, Arc<[ColumnName]>> = HashMap::new();
    let mut changes: Vec<PulledChange> = Vec::new();
    let mut positions = Vec::with_capacity(plan.partitions.len());
    let mut bytes = 0usize;
    let mut more = false;
    let select_pid = sql::select_partitions(schema, 1)?;
    let select_ops = sql::pull_ops(schema)?;
    for (key, position) in &plan.partitions {
        if more {
            positions.push((key.clone(), *position));
            continue;
        }
        let found = query(c, &select_pid, &[Param::text(key.as_str())]).await?;
        let Some(pid) = found.first().map(|r| get_i64(r, 0, "pid")).transpose()? else {
            positions.push((key.clone(), head));
            continue;
        };
        let mut reached = head;
        let mut last = *position;
        'partition: loop {
            let want = max_rows.saturating_sub(changes.len()).saturating_add(1).min(PULL_CHUNK);
            let rows = query(
                c,
                &select_ops,
                &[
                    Param::I64(Some(pid)),
                    Param::seq(last)?,
                    Param::seq(head)?,
                    Param::I64(Some(i64::try_from(want).unwrap_or(i64::MAX))),
                ],
            )
            .await?;
            let mut ops = Vec::with_capacity(rows.len());
            for r in &rows {
                ops.push(PulledOp {
                    entity: EntityName::new(get_str(r, 0, "entity")?)
                        .map_err(decode_err("membership entity"))?,
                    row_id: RowId::new(get_str(r, 1, "row id")?).map_err(decode_err("membership row id"))?,
                    seq: seq_from_i64(get_i64(r, 2, "seq")?)?,
                    removed: r.try_get::<bool, _>(3)?.unwrap_or(false),
                });
            }
            let fetched = ops.len();
            let mut staged: HashMap<(EntityName, RowId), StagedRow> = HashMap::new();
            let mut wanted: BTreeMap<EntityName, Vec<RowId>> = BTreeMap::new();
            for op in ops.iter().filter(|o| !o.removed) {
                wanted.entry(op.entity.clone()).or_default().push(op.row_id.clone());
            }
            for (entity, ids) in wanted {
                if !metas.contains_key(&entity) {
                    let meta = load_schema(c, schema, &entity).await?.ok_or_else(|| {
                        MssqlError::Decode(format!(
                            "partition '{key}': entity '{entity}' has members but no schema"
                        ))
                    })?;
                    metas.insert(entity.clone(), meta);
                }
                let meta = metas
                    .get(&entity)
                    .ok_or_else(|| MssqlError::Decode(format!("schema of '{entity}' vanished")))?;
                for (id, row) in fetch_rows(c, schema, meta, &ids).await? {
                    staged.insert((entity.clone(), id), row);
                }
            }
            for op in ops {
                let row = if op.removed {
                    None
                } else {
                    let found = staged.remove(&(op.entity.clone(), op.row_id.clone()));
                    let cols = metas.get(&op.entity).map(|m| {
                        columns.entry(op.entity.clone()).or_insert_with(|| m.pull_columns().into()).clone()
                    });
                    let (Some(found), Some(cols)) = (found, cols) else {
                        return Err(MssqlError::Decode(format!(
                            "partition '{key}': member {}/{} is not staged",
                            op.entity, op.row_id
                        )));
                    };
                    Some(PulledRow::from_staged(&cols, found))
                };
                let size = match &row {
                    Some(s) => s.approx_size(&op.row_id),
                    None => op.row_id.as_str().len() + REMOVE_OVERHEAD,
                };
                if !changes.is_empty()
                    && (changes.len() >= max_rows || bytes.saturating_add(size) > plan.max_bytes)
                {
                    more = true;
                    reached = last;
                    break 'partition;
                }
                bytes = bytes.saturating_add(size);
                last = op.seq;
                changes.push(PulledChange {
                    partition: key.clone(),
                    entity: op.entity,
                    row_id: op.row_id,
                    seq: op.seq,
                    row,
                });
            }
            if fetched < want {
                break;
            }
        }
        positions.push((key.clone(), reached));
    }
    let checksums = if more {
        None
    } else {
        let keys: Vec<&PartitionKey> = plan.partitions.iter().map(|(k, _)| k).collect();
        let mut found: HashMap<String, Checksum> = HashMap::new();
        for part in chunks(&keys, sql::MAX_PARAMS) {
            let params: Vec<Param> = part.iter().map(|k| Param::text(k.as_str())).collect();
            for r in query(c, &sql::select_checksums(schema, part.len())?, &params).await? {
                let sum = get_i64(&r, 1, "checksum_sum")?;
                let count = get_i64(&r, 2, "member_count")?;
                found.insert(
                    get_str(&r, 0, "partition key")?.to_owned(),
                    Checksum {
                        sum: u32::try_from(sum)
                            .map_err(|_| MssqlError::Decode(format!("checksum {sum} out of range")))?,
                        count: u64::try_from(count)
                            .map_err(|_| MssqlError::Decode(format!("member count {count} out of range")))?,
                    },
                );
            }
        }
        Some(
            keys.iter().map(|k| ((*k).clone(), found.get(k.as_str()).copied().unwrap_or_default())).collect(),
        )
    };
    Ok(PullPage { changes, positions, more, head, checksums })
}

/// Whether an idempotent statement that failed as a deadlock victim (two
/// `MERGE … WITH (HOLDLOCK)` inserting into one key range can deadlock)
/// should run again: up to three attempts, after a short pause.
async fn retry_deadlock<T>(result: &Result<T>, attempt: u64) -> bool {
    match result {
        Err(Error::Unavailable { message, .. }) if attempt < 3 && message.contains("deadlock") => {
            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            true
        }
        _ => false,
    }
}

/// A handle on one org's staging data on SQL Server (see [`OrgStaging`]),
/// made by [`SqlServerStagingStore::org`](crate::SqlServerStagingStore).
///
/// Bound to the org's incarnation: once the org is dropped (by any process)
/// every call fails with `NotFound`, even after an org of the same id is
/// created again. Every call checks the incarnation in the org's
/// bookkeeping, so a handle never reads or writes a newer incarnation.
pub struct SqlServerOrgStaging {
    id: OrgId,
    incarnation: String,
    place: Place,
    control: ControlRef,
    lock_resource: String,
    lock_timeout_ms: i32,
    poll_interval: Duration,
    dropped: AtomicBool,
    polling: AtomicBool,
    head_tx: watch::Sender<Seq>,
    this: Weak<SqlServerOrgStaging>,
}

impl std::fmt::Debug for SqlServerOrgStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerOrgStaging")
            .field("org", &self.id)
            .field("schema", &self.place.schema)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

/// What a new handle needs.
pub(crate) struct HandleParts {
    pub(crate) id: OrgId,
    pub(crate) state: OrgState,
    pub(crate) place: Place,
    pub(crate) control: ControlRef,
    pub(crate) lock_timeout: Duration,
    pub(crate) poll_interval: Duration,
}

impl SqlServerOrgStaging {
    pub(crate) fn new(parts: HandleParts) -> Arc<Self> {
        let HandleParts { id, state, place, control, lock_timeout, poll_interval } = parts;
        let (head_tx, _) = watch::channel(state.head);
        Arc::new_cyclic(|this| SqlServerOrgStaging {
            lock_resource: sql::org_lock_resource(&id),
            id,
            incarnation: state.incarnation,
            place,
            control,
            lock_timeout_ms: i32::try_from(lock_timeout.as_millis()).unwrap_or(i32::MAX),
            poll_interval,
            dropped: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            head_tx,
            this: this.clone(),
        })
    }

    /// The incarnation this handle serves.
    pub(crate) fn incarnation_str(&self) -> &str {
        &self.incarnation
    }

    /// Marks the handle as serving a dropped org: every later call is
    /// `NotFound`. The idle sessions of an org database's pool are closed:
    /// left open they keep the database in use, and one that reconnected
    /// while another process was dropping the database (after its `SET
    /// SINGLE_USER`, before its `DROP DATABASE`) would hold the one session
    /// the database then admits and make the drop fail (error 3702).
    pub(crate) fn retire(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        if self.place.own_database {
            self.place.pool.close_idle();
        }
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }

    fn gone(&self) -> Error {
        Error::not_found(format!("org '{}'", self.id))
    }

    fn live(&self) -> Result<()> {
        if self.is_retired() { Err(self.gone()) } else { Ok(()) }
    }

    /// Reads the org's state and checks it is still this incarnation.
    async fn state_in(&self, c: &mut Conn) -> R<OrgState> {
        match read_state(c, &self.place.schema).await? {
            Some(state) if state.incarnation == self.incarnation => Ok(state),
            _ => {
                self.retire();
                Err(self.gone().into())
            }
        }
    }

    /// Maps a failure: an org dropped meanwhile (its tables or database are
    /// gone, or its incarnation changed) is `NotFound`.
    async fn fail(&self, e: MssqlError) -> Error {
        if self.is_retired() {
            return self.gone();
        }
        // A missing table or database, or a connection that died (another
        // process's drop_org kills the sessions on an org database), may
        // mean the org is gone: ask the control plane.
        let missing_object = matches!(
            &e,
            MssqlError::Tds(tiberius::error::Error::Server(t))
                if matches!(
                    t.code(),
                    codes::INVALID_OBJECT
                        | codes::CANNOT_OPEN_DATABASE
                        | codes::DATABASE_MISSING
                        | codes::SINGLE_USER_IN_USE
                )
        ) || matches!(&e, MssqlError::Tds(tiberius::error::Error::Io { .. }));
        if missing_object {
            let schema = self.control.schema.clone();
            let id = self.id.as_str().to_owned();
            let current = with_conn(&self.control.pool, async |c| {
                let rows = query(c, &sql::control::select_org(&schema)?, &[Param::text(id.clone())]).await?;
                rows.first().map(|r| get_str(r, 1, "incarnation").map(str::to_owned)).transpose()
            })
            .await;
            if let Ok(current) = current
                && current.as_deref() != Some(self.incarnation.as_str())
            {
                self.retire();
                return self.gone();
            }
        }
        e.into()
    }

    /// Publishes a head read or committed by this process.
    fn publish(&self, head: Seq) {
        self.head_tx.send_if_modified(|h| {
            if head > *h {
                *h = head;
                true
            } else {
                false
            }
        });
    }

    /// Runs `f` in a write transaction under the org's lock; writes the
    /// moved head and schema version, commits, and publishes the head.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut Conn, &mut Tx) -> R<T>,
    {
        self.live()?;
        let lock = [Param::text(self.lock_resource.clone()), Param::I32(Some(self.lock_timeout_ms))];
        let result = with_conn(&self.place.pool, async |c| {
            batch(c, sql::BEGIN_WRITE).await?;
            let body = async {
                query(c, sql::TAKE_ORG_LOCK, &lock).await?;
                let state = self.state_in(c).await?;
                let mut tx = Tx {
                    schema: self.place.schema.clone(),
                    head: state.head,
                    schema_version: state.schema_version,
                    state,
                };
                let out = f(c, &mut tx).await?;
                let set = sql::set_meta(&tx.schema)?;
                if tx.head != tx.state.head {
                    execute(c, &set, &[Param::text("head"), Param::seq(tx.head)?]).await?;
                }
                if tx.schema_version != tx.state.schema_version {
                    let v = i64::try_from(tx.schema_version)
                        .map_err(|_| MssqlError::Decode("schema version exceeds bigint".into()))?;
                    execute(c, &set, &[Param::text("schema_version"), Param::I64(Some(v))]).await?;
                }
                Ok::<_, MssqlError>((out, tx.head))
            }
            .await;
            match body {
                Ok(v) => {
                    batch(c, sql::COMMIT).await?;
                    Ok(v)
                }
                Err(e) => {
                    // Should this rollback fail (or the commit above), the
                    // pool rolls back again and discards the connection when
                    // that fails too (`Pooled::run`).
                    let _ = batch(c, sql::ROLLBACK).await;
                    Err(e)
                }
            }
        })
        .await;
        match result {
            Ok((out, head)) => {
                self.publish(head);
                Ok(out)
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// Runs `f` after checking the org's incarnation; with `snapshot`, both
    /// in one `SNAPSHOT` transaction.
    async fn read<T, F>(&self, snapshot: bool, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut Conn, &OrgState) -> R<T>,
    {
        self.live()?;
        let result = with_conn(&self.place.pool, async |c| {
            if !snapshot {
                let state = self.state_in(c).await?;
                return f(c, &state).await;
            }
            batch(c, sql::BEGIN_SNAPSHOT).await?;
            let body = async {
                let state = self.state_in(c).await?;
                f(c, &state).await
            }
            .await;
            match body {
                Ok(v) => {
                    batch(c, sql::COMMIT).await?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = batch(c, sql::ROLLBACK).await;
                    Err(e)
                }
            }
        })
        .await;
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// Starts the head poller when none runs: while some receiver is alive
    /// it reads the head every `poll_interval`, so commits of other
    /// processes reach this process's watchers.
    fn ensure_poller(&self) {
        if self.polling.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.polling.store(false, Ordering::SeqCst);
            return;
        };
        let weak = self.this.clone();
        let interval = self.poll_interval;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(org) = weak.upgrade() else { return };
                if org.is_retired() || org.head_tx.receiver_count() == 0 {
                    org.polling.store(false, Ordering::SeqCst);
                    // A receiver that arrived meanwhile found the flag set:
                    // keep polling for it.
                    if org.is_retired()
                        || org.head_tx.receiver_count() == 0
                        || org.polling.swap(true, Ordering::SeqCst)
                    {
                        return;
                    }
                }
                if let Ok(head) = org.head().await {
                    org.publish(head);
                }
            }
        });
    }
}

#[async_trait]
impl OrgStaging for SqlServerOrgStaging {
    fn org_id(&self) -> OrgId {
        self.id.clone()
    }

    fn incarnation(&self) -> String {
        self.incarnation.clone()
    }

    async fn apply_schema(&self, meta: &EntityMetadata) -> Result<SchemaChange> {
        meta.validate()?;
        check_reserved(meta)?;
        self.write(async |c, tx| evolve_schema(c, tx, meta).await).await
    }

    async fn schemas(&self) -> Result<Vec<EntityMetadata>> {
        self.read(false, async |c, _| load_schemas(c, &self.place.schema).await).await
    }

    async fn schema_version(&self) -> Result<u64> {
        self.read(false, async |_, s| Ok(s.schema_version)).await
    }

    async fn put_profile(&self, profile: &Profile) -> Result<()> {
        let json = to_json(profile, "profile")?;
        self.write(async |c, tx| {
            let schema = tx.schema.clone();
            let schemas = load_schemas(c, &schema).await?;
            validate_profile(profile, &schemas)?;
            let mut affected: BTreeSet<EntityName> = profile.items.iter().map(|i| i.entity.clone()).collect();
            if let Some(old) = load_profile(c, &schema, &profile.name).await? {
                affected.extend(old.items.iter().map(|i| i.entity.clone()));
            }
            execute(
                c,
                &sql::put_profile(&schema)?,
                &[Param::text(profile.name.as_str()), Param::text(json.clone())],
            )
            .await?;
            recompute(c, tx, &affected).await
        })
        .await
    }

    async fn profile(&self, name: &ProfileName) -> Result<Profile> {
        self.read(false, async |c, _| load_profile(c, &self.place.schema, name).await)
            .await?
            .ok_or_else(|| Error::not_found(format!("profile '{name}'")))
    }

    async fn profiles(&self) -> Result<Vec<Profile>> {
        self.read(false, async |c, _| load_profiles(c, &self.place.schema).await).await
    }

    async fn delete_profile(&self, name: &ProfileName) -> Result<()> {
        self.write(async |c, tx| {
            let schema = tx.schema.clone();
            let Some(old) = load_profile(c, &schema, name).await? else {
                return Err(Error::not_found(format!("profile '{name}'")).into());
            };
            execute(c, &sql::delete_profile(&schema)?, &[Param::text(name.as_str())]).await?;
            let affected: BTreeSet<EntityName> = old.items.iter().map(|i| i.entity.clone()).collect();
            recompute(c, tx, &affected).await
        })
        .await
    }

    async fn apply_changes(&self, entity: &EntityName, page: ChangePage) -> Result<ApplyOutcome> {
        self.write(async |c, tx| stage_page(c, tx, entity, page).await).await
    }

    async fn source_token(&self, entity: &EntityName) -> Result<Option<ChangeToken>> {
        self.read(false, async |c, _| {
            let rows =
                query(c, &sql::select_token(&self.place.schema)?, &[Param::text(entity.as_str())]).await?;
            rows.first().map(|r| get_str(r, 0, "token").map(|t| ChangeToken(t.to_owned()))).transpose()
        })
        .await
    }

    async fn row(&self, entity: &EntityName, id: &RowId) -> Result<Option<StagedRow>> {
        self.read(false, async |c, _| {
            let schema = &self.place.schema;
            let meta = require_schema(c, schema, entity).await?;
            // Accept any spelling of the key that canonicalises (e.g. upper-case UUIDs).
            let id = meta.parse_row_id(id.as_str()).unwrap_or_else(|_| id.clone());
            Ok(fetch_rows(c, schema, &meta, std::slice::from_ref(&id)).await?.remove(&id))
        })
        .await
    }

    async fn row_ids(&self, entity: &EntityName, after: Option<RowId>, limit: usize) -> Result<Vec<RowId>> {
        self.read(false, async |c, _| {
            let schema = &self.place.schema;
            require_schema(c, schema, entity).await?;
            if limit == 0 {
                return Ok(Vec::new());
            }
            let after = after.as_ref().map(|a| a.as_str().to_owned()).unwrap_or_default();
            let rows = query(
                c,
                &sql::row_ids_after(schema, entity.as_str())?,
                &[Param::text(after), Param::I64(Some(i64::try_from(limit).unwrap_or(i64::MAX)))],
            )
            .await?;
            rows.iter()
                .map(|r| RowId::new(get_str(r, 0, "row id")?).map_err(decode_err("stored row id")))
                .collect()
        })
        .await
    }

    async fn pull(&self, plan: &PullPlan) -> Result<PullPage> {
        let page = self.read(true, async |c, s| pull_page(c, &self.place.schema, s.head, plan).await).await?;
        self.publish(page.head);
        Ok(page)
    }

    async fn head(&self) -> Result<Seq> {
        let head = self.read(false, async |_, s| Ok(s.head)).await?;
        self.publish(head);
        Ok(head)
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        let rx = self.head_tx.subscribe();
        self.ensure_poller();
        rx
    }

    async fn purge_tombstones(&self, up_to: Seq) -> Result<u64> {
        self.write(async |c, tx| {
            // A floor above the head would refuse clients that are fully up to date.
            let up_to = up_to.min(tx.state.head);
            let purged = execute(c, &sql::purge_tombstones(&tx.schema)?, &[Param::seq(up_to)?]).await?;
            execute(c, &sql::raise_floor(&tx.schema)?, &[Param::seq(up_to)?]).await?;
            Ok(purged)
        })
        .await
    }

    async fn tombstone_floor(&self) -> Result<Seq> {
        self.read(false, async |_, s| Ok(s.floor)).await
    }

    async fn mutation_result(&self, id: &MutationId) -> Result<Option<MutationRecord>> {
        self.read(false, async |c, _| {
            let rows =
                query(c, &sql::select_mutation(&self.place.schema)?, &[Param::Guid(Some(id.0))]).await?;
            let Some(r) = rows.first() else { return Ok(None) };
            Ok(Some(MutationRecord {
                fingerprint: get_str(r, 0, "fingerprint")?.to_owned(),
                outcome: sync_core::journal::decode_outcome(get_str(r, 1, "outcome")?)?,
                checkpoint: seq_from_i64(get_i64(r, 2, "checkpoint")?)?,
            }))
        })
        .await
    }

    async fn record_mutation(&self, id: &MutationId, record: &MutationRecord) -> Result<()> {
        let outcome = sync_core::journal::encode_outcome(&record.outcome)?;
        let checkpoint = Param::seq(record.checkpoint)?;
        let mut attempt = 0;
        let recorded = loop {
            attempt += 1;
            let result = self
                .read(false, async |c, _| {
                    let rows = query(
                        c,
                        &sql::record_mutation(&self.place.schema)?,
                        &[
                            Param::Guid(Some(id.0)),
                            Param::text(record.fingerprint.clone()),
                            Param::text(outcome.clone()),
                            checkpoint.clone(),
                        ],
                    )
                    .await?;
                    Ok(get_str(first(&rows, "record_mutation")?, 0, "fingerprint")?.to_owned())
                })
                .await;
            if !retry_deadlock(&result, attempt).await {
                break result?;
            }
        };
        if recorded == record.fingerprint {
            Ok(())
        } else {
            Err(Error::conflict(format!(
                "mutation {id} was recorded before with different content; a new mutation needs a new id"
            )))
        }
    }

    async fn record_run(&self, report: &SyncRunReport) -> Result<()> {
        let rows = i64::try_from(report.rows_applied).unwrap_or(i64::MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .read(false, async |c, _| {
                    execute(
                        c,
                        &sql::record_run(&self.place.schema)?,
                        &[
                            Param::text(report.entity.as_str()),
                            Param::Dto(Some(values::fit_datetime(report.at)?)),
                            Param::I64(Some(rows)),
                            Param::Str(report.error.clone()),
                        ],
                    )
                    .await?;
                    Ok(())
                })
                .await;
            if !retry_deadlock(&result, attempt).await {
                return result;
            }
        }
    }

    async fn status(&self) -> Result<OrgStatus> {
        self.read(true, async |c, state| {
            let schema = &self.place.schema;
            let schemas = load_schemas(c, schema).await?;
            let mut tokens: HashMap<String, String> = HashMap::new();
            for r in query(c, &sql::select_tokens(schema)?, &[]).await? {
                tokens.insert(get_str(&r, 0, "entity")?.to_owned(), get_str(&r, 1, "token")?.to_owned());
            }
            let mut entities: BTreeMap<EntityName, EntityStatus> = BTreeMap::new();
            for meta in &schemas {
                let rows = query(c, &sql::count_rows(schema, meta.name.as_str())?, &[]).await?;
                let count = get_i64(first(&rows, "count")?, 0, "count")?;
                entities.insert(
                    meta.name.clone(),
                    EntityStatus {
                        entity: meta.name.clone(),
                        schema_hash: meta.schema_hash(),
                        rows: u64::try_from(count).unwrap_or(0),
                        token: tokens.get(meta.name.as_str()).map(|t| ChangeToken(t.clone())),
                        last_run: None,
                        last_success: None,
                        last_error: None,
                        last_rows: 0,
                    },
                );
            }
            for r in query(c, &sql::select_runs(schema)?, &[]).await? {
                let name = EntityName::new(get_str(&r, 0, "entity")?).map_err(decode_err("run entity"))?;
                let status = entities.entry(name.clone()).or_insert_with(|| EntityStatus {
                    entity: name,
                    schema_hash: String::new(),
                    rows: 0,
                    token: None,
                    last_run: None,
                    last_success: None,
                    last_error: None,
                    last_rows: 0,
                });
                status.last_run = r.try_get::<time::OffsetDateTime, _>(1)?;
                status.last_success = r.try_get::<time::OffsetDateTime, _>(2)?;
                status.last_error = r.try_get::<&str, _>(3)?.map(str::to_owned);
                status.last_rows = u64::try_from(get_i64(&r, 4, "last_rows")?).unwrap_or(0);
            }
            Ok(OrgStatus {
                org: self.id.clone(),
                schema_version: state.schema_version,
                head: state.head,
                entities: entities.into_values().collect(),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::{AttributeType, ColumnName};

    fn key(s: &str) -> PartitionKey {
        PartitionKey::new(s).unwrap()
    }

    fn id(s: &str) -> RowId {
        RowId::new(s).unwrap()
    }

    fn meta(n: usize) -> EntityMetadata {
        let mut attrs = vec![Attribute::new(ColumnName::new("id").unwrap(), AttributeType::Integer)];
        attrs.extend(
            (1..n).map(|i| Attribute::new(ColumnName::new(format!("c{i}")).unwrap(), AttributeType::String)),
        );
        EntityMetadata::new(EntityName::new("task").unwrap(), ColumnName::new("id").unwrap(), attrs).unwrap()
    }

    /// The checksum deltas a write leaves equal the in-memory rules: a put
    /// replaces the member's previous version, a remove takes a live member
    /// out, a remove of a non-member does nothing.
    #[test]
    fn membership_deltas_follow_the_core_checksum() {
        let entity = EntityName::new("task").unwrap();
        let mut m = Membership::new(entity.clone());
        m.live.entry(id("r1")).or_default().insert(key("p/a"), Seq(3));
        // r1 moves from p/a to p/b at seq 10; r2 enters p/a at seq 11; r3
        // (not a member) is removed from p/a: nothing.
        m.remove(&key("p/a"), &id("r1"), Seq(10));
        m.put(&key("p/b"), &id("r1"), Seq(10), Seq(10));
        m.put(&key("p/a"), &id("r2"), Seq(11), Seq(11));
        m.remove(&key("p/a"), &id("r3"), Seq(12));
        // r2 changes again in the same write: one op, the latest.
        m.put(&key("p/a"), &id("r2"), Seq(13), Seq(13));

        let mut a = Checksum::default();
        a.add(&entity, &id("r1"), Seq(3));
        let before_a = a;
        a.remove(&entity, &id("r1"), Seq(3));
        a.add(&entity, &id("r2"), Seq(13));
        let (sum, count) = m.sums[&key("p/a")];
        assert_eq!(before_a.sum.wrapping_add(sum), a.sum);
        assert_eq!(before_a.count as i64 + count, a.count as i64);
        let mut b = Checksum::default();
        b.add(&entity, &id("r1"), Seq(10));
        assert_eq!(m.sums[&key("p/b")], (b.sum, 1));

        assert_eq!(m.ops.len(), 3, "one op per (partition, row)");
        assert_eq!(
            m.ops[&(key("p/a"), id("r1"))],
            (Seq(10), Seq(10), true),
            "a remove is a tombstone at its seq"
        );
        assert_eq!(m.ops[&(key("p/a"), id("r2"))], (Seq(13), Seq(13), false));
        assert!(!m.ops.contains_key(&(key("p/a"), id("r3"))), "a non-member's remove writes nothing");
        assert_eq!(m.parts(&id("r1")), BTreeSet::from([key("p/b")]));
        assert_eq!(m.parts(&id("r3")), BTreeSet::new());
    }

    #[test]
    fn a_put_then_remove_in_one_write_nets_out() {
        let mut m = Membership::new(EntityName::new("task").unwrap());
        m.put(&key("p/a"), &id("r5"), Seq(1), Seq(1));
        m.remove(&key("p/a"), &id("r5"), Seq(2));
        assert_eq!(m.sums[&key("p/a")], (0, 0));
        assert_eq!(m.ops[&(key("p/a"), id("r5"))], (Seq(2), Seq(2), true));
    }

    #[test]
    fn reserved_names_and_column_limits_are_invalid_input() {
        let mut m = meta(3);
        check_reserved(&m).unwrap();
        m.attributes.push(Attribute::new(ColumnName::new("_SYNC_version").unwrap(), AttributeType::Integer));
        assert_eq!(check_reserved(&m).unwrap_err().kind(), sync_core::ErrorKind::InvalidInput);
        let mut m = meta(3);
        m.name = EntityName::new("_sync_meta").unwrap();
        assert!(check_reserved(&m).is_err());

        check_columns(None, &meta(1022)).unwrap();
        assert!(check_columns(None, &meta(1023)).is_err(), "1023 attributes + 2 store columns > 1024");
        // Retyping 10 attributes of a 1020-attribute entity needs 10 scratch columns at once.
        let old = meta(1020);
        let mut new = old.clone();
        for a in new.attributes.iter_mut().skip(1).take(10) {
            a.ty = AttributeType::Integer;
        }
        assert!(check_columns(Some(&old), &new).is_err());
        check_columns(Some(&meta(1000)), &meta(1000)).unwrap();
    }

    #[test]
    fn row_ids_with_trailing_spaces_are_refused() {
        let e = EntityName::new("task").unwrap();
        check_row_id(&e, &id("a b")).unwrap();
        assert!(check_row_id(&e, &id("a ")).is_err());
    }
}
