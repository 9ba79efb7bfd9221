//! [`MemorySource`] and [`MemoryConnector`]: a scriptable in-memory system of
//! record with a real change feed, token expiry and failure injection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{ChangeToken, ColumnName, EntityName, RowId};
use crate::org::OrgSourceConfig;
use crate::row::{ChangePage, Mutation, MutationOp, Row};
use crate::schema::EntityMetadata;
use crate::source::{MetadataSource, SourceConnector};
use crate::value::Value;

/// An operation of [`MetadataSource`], for failure injection and call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceOp {
    /// [`MetadataSource::entities`].
    Entities,
    /// [`MetadataSource::changes`].
    Changes,
    /// [`MetadataSource::apply`].
    Apply,
}

impl SourceOp {
    fn index(self) -> usize {
        match self {
            SourceOp::Entities => 0,
            SourceOp::Changes => 1,
            SourceOp::Apply => 2,
        }
    }
}

/// A scriptable in-memory [`MetadataSource`]: entities and rows that test
/// code edits directly, served through a real change feed.
///
/// # Change feed
/// Every change (an upsert, a delete, a write-back through
/// [`MetadataSource::apply`], a row rewritten by a schema change) gets the
/// next source-wide version number ([`MemorySource::head`] is the latest).
/// A row is kept with the version of its last change and a deleted row
/// leaves a tombstone with the version of its deletion, so a row is in the
/// feed once, at its latest state.
///
/// * A `None` token starts a **full read**: the rows as of the version at
///   which it started (its snapshot), in id order, paged; the token carries
///   the snapshot version and the last id delivered, so edits during the read
///   neither duplicate nor skip rows. Rows changed after the snapshot, and
///   deletes, come from the incremental read that follows it.
/// * An **incremental** token carries the last version delivered; the next
///   page holds the rows and tombstones with later versions, oldest first.
/// * `more` is `true` exactly when reading again with `next_token` right away
///   would return something.
/// * Tokens are bound to this source and entity: anything else is
///   `ResyncRequired`, as is a token older than [`MemorySource::expire_tokens_before`]
///   allows or older than the entity's (re)creation.
///
/// Rows are validated and canonicalised with [`EntityMetadata::check_row`].
/// The editing methods bypass failure injection and latency; the trait
/// methods honour both and are counted by [`MemorySource::calls`].
///
/// Clones share their state.
#[derive(Clone, Debug)]
pub struct MemorySource {
    inner: Arc<Mutex<SourceState>>,
}

#[derive(Debug)]
struct SourceState {
    /// Identifies this source in its tokens.
    epoch: String,
    /// The version of the latest change.
    head: u64,
    /// Tokens with a version below this are no longer honoured.
    horizon: u64,
    entities: BTreeMap<EntityName, EntityData>,
    faults: Vec<Fault>,
    calls: [u64; 3],
    latency: Duration,
}

#[derive(Debug)]
struct EntityData {
    meta: EntityMetadata,
    /// Tokens older than the entity's creation are not honoured.
    since: u64,
    rows: BTreeMap<RowId, (Row, u64)>,
    tombstones: BTreeMap<RowId, u64>,
}

#[derive(Debug)]
struct Fault {
    op: SourceOp,
    entity: Option<EntityName>,
    remaining: usize,
    error: Error,
}

/// The decoded form of a [`ChangeToken`] of a [`MemorySource`].
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    /// The source's epoch.
    s: String,
    /// The entity.
    e: String,
    /// Incremental: the last version delivered. Full read: the snapshot version.
    v: u64,
    /// Present during a full read: the position in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    f: Option<FullPos>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FullPos {
    /// The last row id delivered, `None` before the first page.
    after: Option<RowId>,
}

const TOKEN_PREFIX: &str = "mem1.";

impl Token {
    fn encode(&self) -> Result<ChangeToken> {
        let json = serde_json::to_vec(self).map_err(|e| Error::internal(format!("token encoding: {e}")))?;
        Ok(ChangeToken(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))))
    }

    fn decode(token: &ChangeToken) -> Result<Token> {
        let garbage = || Error::resync("the change token was not issued by this in-memory source");
        let body = token.0.strip_prefix(TOKEN_PREFIX).ok_or_else(garbage)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| garbage())?;
        serde_json::from_slice(&json).map_err(|_| garbage())
    }
}

impl Default for MemorySource {
    fn default() -> Self {
        MemorySource::new()
    }
}

impl SourceState {
    fn entity(&self, entity: &str) -> Result<&EntityData> {
        self.entities.get(entity).ok_or_else(|| Error::not_found(format!("entity '{entity}'")))
    }

    fn entity_mut(&mut self, entity: &str) -> Result<&mut EntityData> {
        self.entities.get_mut(entity).ok_or_else(|| Error::not_found(format!("entity '{entity}'")))
    }

    /// Counts a trait call and returns the scripted failure it meets, if any.
    fn enter(&mut self, op: SourceOp, entity: Option<&EntityName>) -> Result<()> {
        self.calls[op.index()] += 1;
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.op == op && f.remaining > 0 && f.entity.as_ref().is_none_or(|e| Some(e) == entity));
        if let Some(f) = fault {
            f.remaining -= 1;
            let error = f.error.clone();
            self.faults.retain(|f| f.remaining > 0);
            return Err(error);
        }
        Ok(())
    }

    /// Stores a canonical row as a new change.
    fn put(&mut self, entity: &str, row: Row) -> Result<Row> {
        let version = self.head + 1;
        let data = self.entity_mut(entity)?;
        data.tombstones.remove(&row.id);
        data.rows.insert(row.id.clone(), (row.clone(), version));
        self.head = version;
        Ok(row)
    }

    /// Deletes a row as a new change; whether it existed.
    fn remove(&mut self, entity: &str, id: &RowId) -> Result<bool> {
        let version = self.head + 1;
        let data = self.entity_mut(entity)?;
        if data.rows.remove(id).is_none() {
            return Ok(false);
        }
        data.tombstones.insert(id.clone(), version);
        self.head = version;
        Ok(true)
    }
}

/// The non-null values of a row: what a schema change must preserve for the
/// row to count as unchanged.
fn non_null(row: &Row) -> BTreeMap<&ColumnName, &Value> {
    row.values.iter().filter(|(_, v)| !v.is_null()).collect()
}

impl MemorySource {
    /// An empty source: no entities.
    pub fn new() -> Self {
        MemorySource {
            inner: Arc::new(Mutex::new(SourceState {
                epoch: uuid::Uuid::new_v4().simple().to_string(),
                head: 0,
                horizon: 0,
                entities: BTreeMap::new(),
                faults: Vec::new(),
                calls: [0; 3],
                latency: Duration::ZERO,
            })),
        }
    }

    /// A source offering `entities`, with no rows. Errors as [`MemorySource::set_schema`].
    pub fn with_entities(entities: impl IntoIterator<Item = EntityMetadata>) -> Result<Self> {
        let source = MemorySource::new();
        for meta in entities {
            source.set_schema(meta)?;
        }
        Ok(source)
    }

    fn state(&self) -> MutexGuard<'_, SourceState> {
        // No code panics while holding the lock, so a poisoned state is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an entity, or replaces its schema.
    ///
    /// On replacement every row is re-canonicalised against the new schema:
    /// columns it no longer has are dropped, values are coerced to their new
    /// types, and each row whose non-null values changed becomes a new change
    /// in the feed. Errors: `InvalidInput` when `meta` is invalid, when it
    /// changes the primary key (name or type) of an entity that has rows, or
    /// when a row's value does not fit its new type; nothing changes then.
    pub fn set_schema(&self, meta: EntityMetadata) -> Result<()> {
        meta.validate()?;
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(data) = state.entities.get_mut(&meta.name) else {
            // A tick of the version clock, so tokens of an earlier entity of
            // this name are older than this one.
            state.head += 1;
            let name = meta.name.clone();
            let data =
                EntityData { meta, since: state.head, rows: BTreeMap::new(), tombstones: BTreeMap::new() };
            state.entities.insert(name, data);
            return Ok(());
        };
        if !data.rows.is_empty()
            && (data.meta.primary_key != meta.primary_key || data.meta.key_type()? != meta.key_type()?)
        {
            return Err(Error::invalid(format!(
                "entity '{}' has rows: its primary key cannot change (remove the entity first)",
                meta.name
            )));
        }
        let mut rewritten = Vec::with_capacity(data.rows.len());
        for (row, _) in data.rows.values() {
            let mut candidate = row.clone();
            candidate.values.retain(|c, _| meta.attribute(c.as_str()).is_some());
            let candidate = meta.check_row(candidate)?;
            let changed = non_null(&candidate) != non_null(row);
            rewritten.push((candidate, changed));
        }
        data.meta = meta;
        for (row, changed) in rewritten {
            if let Some(slot) = data.rows.get_mut(&row.id) {
                if changed {
                    state.head += 1;
                    *slot = (row, state.head);
                } else {
                    slot.0 = row;
                }
            }
        }
        Ok(())
    }

    /// Removes an entity and its rows; whether it existed. Tokens issued for
    /// it are not honoured should it be added again.
    pub fn remove_entity(&self, entity: impl AsRef<str>) -> bool {
        self.state().entities.remove(entity.as_ref()).is_some()
    }

    /// The schema of `entity`, if the source has it.
    pub fn schema(&self, entity: impl AsRef<str>) -> Option<EntityMetadata> {
        self.state().entities.get(entity.as_ref()).map(|d| d.meta.clone())
    }

    /// Creates or replaces a row (every column: missing ones become null) as
    /// a new change, and returns it in canonical form.
    ///
    /// Errors: `NotFound` for an unknown entity; `InvalidInput` when the row
    /// does not fit the schema.
    pub fn upsert(&self, entity: impl AsRef<str>, row: Row) -> Result<Row> {
        let mut state = self.state();
        let row = state.entity(entity.as_ref())?.meta.check_row(row)?;
        state.put(entity.as_ref(), row)
    }

    /// [`MemorySource::upsert`] from a JSON object of column values; the row
    /// id is the value of the primary key column. Values are coerced to the
    /// attribute types, so wire forms (`"12.5"` for a decimal, UUID text…)
    /// are accepted.
    ///
    /// Errors: `NotFound` for an unknown entity; `InvalidInput` when `json`
    /// is not an object, lacks the primary key, names an unknown column or
    /// holds an ill-typed value.
    pub fn upsert_json(&self, entity: impl AsRef<str>, json: serde_json::Value) -> Result<Row> {
        let entity = entity.as_ref();
        let serde_json::Value::Object(map) = json else {
            return Err(Error::invalid(format!("a row of '{entity}' must be a JSON object")));
        };
        let mut state = self.state();
        let meta = &state.entity(entity)?.meta;
        let key = match map.get(meta.primary_key.as_str()) {
            Some(serde_json::Value::Null) | None => {
                return Err(Error::invalid(format!(
                    "the row of '{entity}' has no value for its primary key '{}'",
                    meta.primary_key
                )));
            }
            Some(v) => Value::from_json(v.clone()).coerce(meta.key_type()?)?,
        };
        let mut values = BTreeMap::new();
        for (column, value) in map {
            values.insert(ColumnName::new(column)?, Value::from_json(value));
        }
        let row = meta.check_row(Row { id: RowId::new(key.canonical_text())?, values })?;
        state.put(entity, row)
    }

    /// Deletes a row as a new change; `false` (and no change) when it did not
    /// exist. `id` is canonicalised like the entity's keys.
    ///
    /// Errors: `NotFound` for an unknown entity; `InvalidInput` for an id
    /// that is not a valid key.
    pub fn delete(&self, entity: impl AsRef<str>, id: &str) -> Result<bool> {
        let mut state = self.state();
        let id = state.entity(entity.as_ref())?.meta.parse_row_id(id)?;
        state.remove(entity.as_ref(), &id)
    }

    /// The row `id` of `entity` as the source holds it, if any.
    pub fn row(&self, entity: impl AsRef<str>, id: &str) -> Option<Row> {
        let state = self.state();
        let data = state.entities.get(entity.as_ref())?;
        let id = data.meta.parse_row_id(id).ok()?;
        data.rows.get(&id).map(|(row, _)| row.clone())
    }

    /// Every row of `entity`, in id order. `NotFound` for an unknown entity.
    pub fn rows(&self, entity: impl AsRef<str>) -> Result<Vec<Row>> {
        let state = self.state();
        Ok(state.entity(entity.as_ref())?.rows.values().map(|(row, _)| row.clone()).collect())
    }

    /// The source's version clock: the version of the latest change (0 for
    /// a new source; adding an entity and expiring every token also tick it).
    pub fn head(&self) -> u64 {
        self.state().head
    }

    /// Stops honouring tokens whose position is before `version` (they get
    /// `ResyncRequired`) and forgets the tombstones only they needed, like a
    /// source whose change-tracking retention ran out. Never moves back.
    pub fn expire_tokens_before(&self, version: u64) {
        let mut state = self.state();
        let horizon = state.horizon.max(version);
        state.horizon = horizon;
        for data in state.entities.values_mut() {
            data.tombstones.retain(|_, v| *v > horizon);
        }
    }

    /// Stops honouring every token issued so far. (The version clock ticks
    /// once, so tokens issued afterwards are honoured.)
    pub fn expire_all_tokens(&self) {
        let next = {
            let mut state = self.state();
            state.head += 1;
            state.head
        };
        self.expire_tokens_before(next);
    }

    /// Makes the next `times` calls of `op` fail with `error` (after being
    /// counted). Scripted failures are consumed in the order they were added;
    /// `usize::MAX` means "until [`MemorySource::clear_failures`]".
    pub fn fail_next(&self, op: SourceOp, times: usize, error: Error) {
        if times > 0 {
            self.state().faults.push(Fault { op, entity: None, remaining: times, error });
        }
    }

    /// As [`MemorySource::fail_next`], but only for calls of `op` about
    /// `entity` ([`SourceOp::Changes`] and [`SourceOp::Apply`]).
    pub fn fail_next_for(&self, op: SourceOp, entity: &EntityName, times: usize, error: Error) {
        if times > 0 {
            self.state().faults.push(Fault { op, entity: Some(entity.clone()), remaining: times, error });
        }
    }

    /// Drops every scripted failure.
    pub fn clear_failures(&self) {
        self.state().faults.clear();
    }

    /// How many times `op` was called through the trait, failed calls included.
    pub fn calls(&self, op: SourceOp) -> u64 {
        self.state().calls[op.index()]
    }

    /// Makes every trait call wait `latency` first (zero by default), like a
    /// remote source.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    async fn delay(&self) {
        let latency = self.state().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

impl EntityData {
    /// A page of the full read of snapshot `snapshot` after `after`.
    fn full_page(
        &self,
        epoch: &str,
        snapshot: u64,
        after: Option<RowId>,
        page_size: usize,
    ) -> Result<ChangePage> {
        let start = match &after {
            Some(id) => std::ops::Bound::Excluded(id),
            None => std::ops::Bound::Unbounded,
        };
        let mut rows = self
            .rows
            .range((start, std::ops::Bound::Unbounded))
            .filter(|(_, (_, v))| *v <= snapshot)
            .map(|(_, (row, _))| row.clone())
            .take(page_size + 1)
            .collect::<Vec<_>>();
        let entity = self.meta.name.to_string();
        if rows.len() > page_size {
            rows.truncate(page_size);
            let after = rows.last().map(|r| r.id.clone());
            let token = Token { s: epoch.to_owned(), e: entity, v: snapshot, f: Some(FullPos { after }) };
            return Ok(ChangePage {
                upserts: rows,
                deletes: Vec::new(),
                next_token: Some(token.encode()?),
                more: true,
            });
        }
        let token = Token { s: epoch.to_owned(), e: entity, v: snapshot, f: None };
        Ok(ChangePage {
            upserts: rows,
            deletes: Vec::new(),
            next_token: Some(token.encode()?),
            more: self.has_changes_after(snapshot),
        })
    }

    /// A page of the changes after version `since`.
    fn incremental_page(&self, epoch: &str, head: u64, since: u64, page_size: usize) -> Result<ChangePage> {
        let mut changes = self
            .rows
            .iter()
            .filter(|(_, (_, v))| *v > since)
            .map(|(id, (row, v))| (*v, id, Some(row)))
            .chain(self.tombstones.iter().filter(|(_, v)| **v > since).map(|(id, v)| (*v, id, None)))
            .collect::<Vec<_>>();
        changes.sort_unstable_by_key(|(v, _, _)| *v);
        let more = changes.len() > page_size;
        changes.truncate(page_size);
        let last = if more { changes.last().map_or(since, |(v, _, _)| *v) } else { head };
        let mut page = ChangePage::default();
        for (_, id, row) in changes {
            match row {
                Some(row) => page.upserts.push(row.clone()),
                None => page.deletes.push(id.clone()),
            }
        }
        let token = Token { s: epoch.to_owned(), e: self.meta.name.to_string(), v: last, f: None };
        page.next_token = Some(token.encode()?);
        page.more = more;
        Ok(page)
    }

    fn has_changes_after(&self, version: u64) -> bool {
        self.rows.values().any(|(_, v)| *v > version) || self.tombstones.values().any(|v| *v > version)
    }
}

#[async_trait]
impl MetadataSource for MemorySource {
    async fn entities(&self) -> Result<Vec<EntityMetadata>> {
        self.delay().await;
        let mut state = self.state();
        state.enter(SourceOp::Entities, None)?;
        Ok(state.entities.values().map(|d| d.meta.clone()).collect())
    }

    async fn changes(
        &self,
        entity: &EntityName,
        token: Option<ChangeToken>,
        page_size: usize,
    ) -> Result<ChangePage> {
        self.delay().await;
        let mut state = self.state();
        state.enter(SourceOp::Changes, Some(entity))?;
        if page_size == 0 {
            return Err(Error::invalid("page_size must be at least 1"));
        }
        let data = state.entity(entity.as_str())?;
        let Some(token) = token else {
            return data.full_page(&state.epoch, state.head, None, page_size);
        };
        let token = Token::decode(&token)?;
        if token.s != state.epoch || token.e != entity.as_str() || token.v > state.head {
            return Err(Error::resync(format!(
                "the change token was not issued by this source for entity '{entity}'"
            )));
        }
        if token.v < state.horizon || token.v < data.since {
            return Err(Error::resync(format!(
                "the change token of entity '{entity}' has expired; read it in full again"
            )));
        }
        match token.f {
            Some(pos) => data.full_page(&state.epoch, token.v, pos.after, page_size),
            None => data.incremental_page(&state.epoch, state.head, token.v, page_size),
        }
    }

    async fn apply(&self, entity: &EntityName, mutation: &Mutation) -> Result<Option<Row>> {
        self.delay().await;
        let mut state = self.state();
        state.enter(SourceOp::Apply, Some(entity))?;
        let data = state.entity(entity.as_str())?;
        let id = data.meta.parse_row_id(mutation.row_id.as_str())?;
        let existing = data.rows.get(&id).map(|(row, _)| row);
        match (mutation.op, existing) {
            (MutationOp::Insert, Some(_)) => {
                Err(Error::conflict(format!("row '{id}' of '{entity}' already exists")))
            }
            (MutationOp::Insert, None) => {
                let row = data.meta.check_row(Row { id, values: mutation.values.clone() })?;
                state.put(entity.as_str(), row).map(Some)
            }
            (MutationOp::Update | MutationOp::Delete, None) => {
                Err(Error::conflict(format!("row '{id}' of '{entity}' does not exist")))
            }
            (MutationOp::Update, Some(current)) => {
                let mut values = current.values.clone();
                values.extend(mutation.values.iter().map(|(c, v)| (c.clone(), v.clone())));
                let row = data.meta.check_row(Row { id, values })?;
                state.put(entity.as_str(), row).map(Some)
            }
            (MutationOp::Delete, Some(_)) => {
                state.remove(entity.as_str(), &id)?;
                Ok(None)
            }
        }
    }
}

/// A [`SourceConnector`] for [`MemorySource`]s: a registry of named sources.
///
/// It accepts configurations of kind [`MemoryConnector::KIND`] whose
/// setting `name` names a registered source (see [`MemoryConnector::config`]),
/// and hands out that source itself, so test code keeps editing what the
/// engine reads. Clones share the registry.
#[derive(Clone, Debug, Default)]
pub struct MemoryConnector {
    inner: Arc<Mutex<ConnectorState>>,
}

#[derive(Debug, Default)]
struct ConnectorState {
    sources: BTreeMap<String, Arc<MemorySource>>,
    /// Scripted failures: how many calls remain, and the error.
    failures: Vec<(usize, Error)>,
    connects: u64,
}

impl MemoryConnector {
    /// The `kind` of the configurations this connector accepts.
    pub const KIND: &'static str = "memory";
    /// The setting that names the source.
    pub const NAME_SETTING: &'static str = "name";

    /// An empty registry.
    pub fn new() -> Self {
        MemoryConnector::default()
    }

    fn state(&self) -> MutexGuard<'_, ConnectorState> {
        // No code panics while holding the lock, so a poisoned state is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `source` under `name`; returns the source it replaces.
    pub fn register(&self, name: impl Into<String>, source: Arc<MemorySource>) -> Option<Arc<MemorySource>> {
        self.state().sources.insert(name.into(), source)
    }

    /// Removes the source registered under `name`; later connects to it fail.
    pub fn unregister(&self, name: &str) -> Option<Arc<MemorySource>> {
        self.state().sources.remove(name)
    }

    /// The source registered under `name`.
    pub fn source(&self, name: &str) -> Option<Arc<MemorySource>> {
        self.state().sources.get(name).cloned()
    }

    /// The source configuration that names the source `name`.
    pub fn config(name: impl Into<String>) -> OrgSourceConfig {
        OrgSourceConfig {
            kind: MemoryConnector::KIND.to_owned(),
            settings: BTreeMap::from([(MemoryConnector::NAME_SETTING.to_owned(), name.into())]),
        }
    }

    /// Makes the next `times` connects fail with `error` (after being
    /// counted); `usize::MAX` means "until [`MemoryConnector::clear_failures`]".
    pub fn fail_next(&self, times: usize, error: Error) {
        if times > 0 {
            self.state().failures.push((times, error));
        }
    }

    /// Drops every scripted connect failure.
    pub fn clear_failures(&self) {
        self.state().failures.clear();
    }

    /// How many times [`SourceConnector::connect`] was called, failed calls included.
    pub fn connects(&self) -> u64 {
        self.state().connects
    }
}

#[async_trait]
impl SourceConnector for MemoryConnector {
    async fn connect(&self, config: &OrgSourceConfig) -> Result<Arc<dyn MetadataSource>> {
        let mut state = self.state();
        state.connects += 1;
        if let Some((remaining, error)) = state.failures.first_mut() {
            *remaining -= 1;
            let error = error.clone();
            state.failures.retain(|(remaining, _)| *remaining > 0);
            return Err(error);
        }
        if config.kind != MemoryConnector::KIND {
            return Err(Error::invalid(format!(
                "source kind '{}' is not '{}'",
                config.kind,
                MemoryConnector::KIND
            )));
        }
        let Some(name) = config.settings.get(MemoryConnector::NAME_SETTING) else {
            return Err(Error::invalid(format!(
                "a '{}' source needs the setting '{}'",
                MemoryConnector::KIND,
                MemoryConnector::NAME_SETTING
            )));
        };
        let source = state
            .sources
            .get(name)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no in-memory source is registered as '{name}'")))?;
        Ok(source)
    }
}
