//! The in-memory staging store: every contract of [`StagingStore`] and
//! [`OrgStaging`] over plain maps behind one mutex per org.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::filter::{MembershipPlanner, validate_profile};
use crate::ids::{ChangeToken, ColumnName, EntityName, MutationId, OrgId, ProfileName, RowId, Seq};
use crate::org::{EntityStatus, OrgConfig, OrgStatus, SyncRunReport};
use crate::partition::{Checksum, MembershipAction, MembershipEntry, PartitionKey};
use crate::profile::Profile;
use crate::row::{ChangePage, PulledRow, Row, StagedRow};
use crate::schema::EntityMetadata;
use crate::staging::{
    ApplyOutcome, MutationRecord, OrgStaging, PullPage, PullPlan, PulledChange, SchemaChange, StagingStore,
};
use crate::value::Value;

/// Approximate bytes a remove op counts against a pull's byte budget, on top
/// of its row id.
const REMOVE_OVERHEAD: usize = 8;

/// An in-memory [`StagingStore`].
///
/// Not a mock: it keeps every contract of the traits and passes the staging
/// conformance suite. Each org's state sits behind its own mutex; every write
/// takes it for the whole operation, so writes to one org are serialized and
/// seq order is commit order, and every read (a pull included) sees one
/// consistent snapshot. Writes validate everything before they change
/// anything, so a failed call leaves no trace. Nothing is persisted: the data
/// lives as long as the store.
///
/// Cloning gives another handle on the same store.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use sync_core::memory::MemoryStagingStore;
/// use sync_core::{OrgConfig, OrgId, OrgSourceConfig, StagingStore};
///
/// let store = MemoryStagingStore::new();
/// let org = OrgId::new("contoso").unwrap();
/// let source = OrgSourceConfig { kind: "demo".into(), settings: Default::default() };
/// store.create_org(&OrgConfig::new(org.clone(), source)).await.unwrap();
/// let staging = store.org(&org).await.unwrap();
/// assert_eq!(staging.schema_version().await.unwrap(), 0);
/// # });
/// ```
#[derive(Clone, Default)]
pub struct MemoryStagingStore {
    control: Arc<Mutex<Control>>,
}

impl std::fmt::Debug for MemoryStagingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStagingStore").finish_non_exhaustive()
    }
}

/// The control plane: orgs and the org directory.
#[derive(Default)]
struct Control {
    orgs: BTreeMap<OrgId, HostedOrg>,
    directory: BTreeMap<OrgId, String>,
}

struct HostedOrg {
    config: OrgConfig,
    staging: Arc<MemoryOrg>,
}

impl MemoryStagingStore {
    /// An empty store: no orgs, an empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn control(&self) -> Result<MutexGuard<'_, Control>> {
        self.control
            .lock()
            .map_err(|_| Error::internal("in-memory staging control plane poisoned by a panic"))
    }
}

#[async_trait]
impl StagingStore for MemoryStagingStore {
    async fn create_org(&self, config: &OrgConfig) -> Result<()> {
        let mut control = self.control()?;
        match control.orgs.get_mut(&config.id) {
            Some(hosted) => hosted.config = config.clone(),
            None => {
                let staging = Arc::new(MemoryOrg::new(config.id.clone()));
                control.orgs.insert(config.id.clone(), HostedOrg { config: config.clone(), staging });
            }
        }
        Ok(())
    }

    async fn drop_org(&self, org: &OrgId) -> Result<()> {
        // Never hold the control lock while taking an org's lock.
        let removed = self.control()?.orgs.remove(org);
        if let Some(hosted) = removed {
            hosted.staging.retire()?;
        }
        Ok(())
    }

    async fn orgs(&self) -> Result<Vec<OrgConfig>> {
        Ok(self.control()?.orgs.values().map(|h| h.config.clone()).collect())
    }

    async fn org_config(&self, org: &OrgId) -> Result<OrgConfig> {
        self.control()?
            .orgs
            .get(org)
            .map(|h| h.config.clone())
            .ok_or_else(|| Error::not_found(format!("org '{org}'")))
    }

    async fn org(&self, org: &OrgId) -> Result<Arc<dyn OrgStaging>> {
        let control = self.control()?;
        let hosted = control.orgs.get(org).ok_or_else(|| Error::not_found(format!("org '{org}'")))?;
        Ok(hosted.staging.clone() as Arc<dyn OrgStaging>)
    }

    async fn set_org_location(&self, org: &OrgId, base_url: Option<String>) -> Result<()> {
        let mut control = self.control()?;
        match base_url {
            Some(url) => {
                if url.trim().is_empty() {
                    return Err(Error::invalid(format!(
                        "org '{org}': the directory needs a non-empty base URL"
                    )));
                }
                control.directory.insert(org.clone(), url);
            }
            None => {
                control.directory.remove(org);
            }
        }
        Ok(())
    }

    async fn org_location(&self, org: &OrgId) -> Result<Option<String>> {
        Ok(self.control()?.directory.get(org).cloned())
    }

    async fn ping(&self) -> Result<()> {
        self.control().map(drop)
    }
}

/// One org's staging database.
struct MemoryOrg {
    id: OrgId,
    incarnation: String,
    state: Mutex<OrgState>,
    head_tx: watch::Sender<Seq>,
}

/// Everything staged for one org.
#[derive(Default)]
struct OrgState {
    /// Set by `drop_org`: the handle then answers `NotFound`.
    dropped: bool,
    schema_version: u64,
    /// The latest seq given out.
    head: Seq,
    tombstone_floor: Seq,
    entities: BTreeMap<EntityName, EntityState>,
    profiles: BTreeMap<ProfileName, Profile>,
    membership: Membership,
    mutations: BTreeMap<MutationId, MutationRecord>,
    runs: BTreeMap<EntityName, RunStatus>,
}

struct EntityState {
    meta: EntityMetadata,
    rows: BTreeMap<RowId, RowState>,
    token: Option<ChangeToken>,
}

struct RowState {
    staged: StagedRow,
    /// The partitions the row is a live (non-removed) member of.
    partitions: BTreeSet<PartitionKey>,
}

#[derive(Default)]
struct RunStatus {
    last_run: Option<OffsetDateTime>,
    last_success: Option<OffsetDateTime>,
    last_error: Option<String>,
    last_rows: u64,
}

/// Membership entries, one per (partition, row), indexed by seq per partition.
#[derive(Default)]
struct Membership {
    partitions: BTreeMap<PartitionKey, PartitionState>,
}

#[derive(Default)]
struct PartitionState {
    members: BTreeMap<(EntityName, RowId), MembershipEntry>,
    /// Seq of each entry → its member key; seqs are unique within a partition
    /// because one seq belongs to one row change.
    log: BTreeMap<Seq, (EntityName, RowId)>,
    checksum: Checksum,
}

impl Membership {
    /// Records that the row is in `partition` at `version`, as of `seq`.
    fn put(&mut self, partition: &PartitionKey, entity: &EntityName, row_id: &RowId, seq: Seq, version: Seq) {
        let part = self.partitions.entry(partition.clone()).or_default();
        let key = (entity.clone(), row_id.clone());
        if let Some(old) = part.members.get(&key) {
            part.log.remove(&old.seq);
            if !old.removed {
                part.checksum.remove(entity, row_id, old.version);
            }
        }
        part.checksum.add(entity, row_id, version);
        part.log.insert(seq, key.clone());
        part.members.insert(
            key,
            MembershipEntry {
                partition: partition.clone(),
                entity: entity.clone(),
                row_id: row_id.clone(),
                seq,
                version,
                removed: false,
            },
        );
    }

    /// Records that the row left `partition` as of `seq` (a tombstone whose
    /// version is `seq`). A row that is not a live member is left alone.
    fn remove(&mut self, partition: &PartitionKey, entity: &EntityName, row_id: &RowId, seq: Seq) {
        let Some(part) = self.partitions.get_mut(partition) else {
            return;
        };
        let key = (entity.clone(), row_id.clone());
        let Some(old) = part.members.get_mut(&key) else {
            return;
        };
        if old.removed {
            return;
        }
        part.checksum.remove(entity, row_id, old.version);
        part.log.remove(&old.seq);
        part.log.insert(seq, key);
        old.seq = seq;
        old.version = seq;
        old.removed = true;
    }

    /// Deletes tombstones with a seq at or below `up_to`; returns how many.
    fn purge(&mut self, up_to: Seq) -> u64 {
        let mut purged = 0;
        for part in self.partitions.values_mut() {
            let doomed: Vec<Seq> = part
                .log
                .range(..=up_to)
                .filter(|(_, key)| part.members.get(*key).is_some_and(|e| e.removed))
                .map(|(seq, _)| *seq)
                .collect();
            for seq in doomed {
                if let Some(key) = part.log.remove(&seq) {
                    part.members.remove(&key);
                    purged += 1;
                }
            }
        }
        self.partitions.retain(|_, p| !p.members.is_empty());
        purged
    }
}

/// Gives `head` the next seq and returns it.
fn next_seq(head: &mut Seq) -> Seq {
    *head = head.next();
    *head
}

/// Brings one row's membership in line with `new_parts`. With `bump` the
/// row's data changed: it gets a new version and a put in every partition it
/// is in. Without, only partitions left (removes) and entered (puts at the
/// unchanged version) get ops. A row that gets any op gets one new seq.
fn restage_row(
    membership: &mut Membership,
    head: &mut Seq,
    entity: &EntityName,
    row: &mut RowState,
    new_parts: BTreeSet<PartitionKey>,
    bump: bool,
) {
    if !bump && row.partitions == new_parts {
        return;
    }
    let seq = next_seq(head);
    if bump {
        row.staged.version = seq;
    }
    let id = row.staged.row.id.clone();
    for left in row.partitions.difference(&new_parts) {
        membership.remove(left, entity, &id, seq);
    }
    for part in &new_parts {
        if bump || !row.partitions.contains(part) {
            membership.put(part, entity, &id, seq, row.staged.version);
        }
    }
    row.partitions = new_parts;
}

/// The partitions `planner` puts `row` in.
fn partitions_of(planner: &MembershipPlanner, row: &Row) -> BTreeSet<PartitionKey> {
    planner.partitions(row).into_iter().collect()
}

impl OrgState {
    fn entity(&self, entity: &EntityName) -> Result<&EntityState> {
        self.entities.get(entity).ok_or_else(|| Error::not_found(format!("entity '{entity}' is not staged")))
    }

    fn schemas(&self) -> Vec<EntityMetadata> {
        self.entities.values().map(|e| e.meta.clone()).collect()
    }

    fn profile_list(&self) -> Vec<Profile> {
        self.profiles.values().cloned().collect()
    }

    /// Planners for `entities` under `profiles`, built before anything
    /// changes so that a compile error leaves the state as it was.
    fn planners(
        &self,
        entities: &BTreeSet<EntityName>,
        profiles: &[Profile],
    ) -> Result<Vec<(EntityName, MembershipPlanner)>> {
        let mut out = Vec::new();
        for name in entities {
            if let Some(ent) = self.entities.get(name) {
                out.push((name.clone(), MembershipPlanner::new(&ent.meta, profiles)?));
            }
        }
        Ok(out)
    }

    /// Recomputes the membership of every row of the planned entities.
    fn recompute(&mut self, planners: &[(EntityName, MembershipPlanner)]) {
        let OrgState { entities, membership, head, .. } = self;
        for (name, planner) in planners {
            let Some(ent) = entities.get_mut(name) else {
                continue;
            };
            for row in ent.rows.values_mut() {
                let parts = partitions_of(planner, &row.staged.row);
                restage_row(membership, head, name, row, parts, false);
            }
        }
    }

    fn apply_schema(&mut self, meta: &EntityMetadata) -> Result<SchemaChange> {
        meta.validate()?;
        let Some(current) = self.entities.get(&meta.name) else {
            self.entities.insert(
                meta.name.clone(),
                EntityState { meta: meta.clone(), rows: BTreeMap::new(), token: None },
            );
            self.schema_version += 1;
            return Ok(SchemaChange::Created);
        };
        if current.meta == *meta {
            return Ok(SchemaChange::Unchanged);
        }
        let old = &current.meta;
        if !current.rows.is_empty()
            && (old.primary_key != meta.primary_key || old.key_type()? != meta.key_type()?)
        {
            return Err(Error::invalid(format!(
                "entity '{}': the primary key cannot change from {} ({}) to {} ({}) while rows are staged",
                meta.name,
                old.primary_key,
                old.key_type()?.name(),
                meta.primary_key,
                meta.key_type()?.name()
            )));
        }
        // Every profile naming the entity must still compile.
        let mut schemas = self.schemas();
        if let Some(slot) = schemas.iter_mut().find(|m| m.name == meta.name) {
            *slot = meta.clone();
        }
        for profile in self.profiles.values() {
            if profile.items.iter().any(|i| i.entity == meta.name) {
                validate_profile(profile, &schemas).map_err(|e| {
                    Error::invalid(format!(
                        "the new schema of '{}' breaks profile '{}' ({e}); change the profile first",
                        meta.name, profile.name
                    ))
                })?;
            }
        }
        let planner = MembershipPlanner::new(meta, &self.profile_list())?;
        // Convert every row first; `bump` marks rows whose non-null values changed.
        let mut converted: Vec<(RowId, BTreeMap<_, _>, bool)> = Vec::with_capacity(current.rows.len());
        for (id, row) in &current.rows {
            let mut values = BTreeMap::new();
            let mut bump = false;
            for attr in &meta.attributes {
                let old_value = row.staged.row.values.get(&attr.name).cloned().unwrap_or(Value::Null);
                let value = match old.attribute(attr.name.as_str()) {
                    Some(prev) if prev.ty == attr.ty => old_value,
                    Some(_) => {
                        let new_value = old_value.clone().coerce(&attr.ty).unwrap_or(Value::Null);
                        bump |= new_value != old_value;
                        new_value
                    }
                    None => Value::Null,
                };
                values.insert(attr.name.clone(), value);
            }
            // A dropped column that held a value changes the row too: a client
            // that misses this schema version (the column dropped, then added
            // again) must still be sent the row without the old value.
            bump |= row
                .staged
                .row
                .values
                .iter()
                .any(|(c, v)| !v.is_null() && meta.attribute(c.as_str()).is_none());
            converted.push((id.clone(), values, bump));
        }
        // Nothing below fails.
        let OrgState { entities, membership, head, schema_version, .. } = self;
        let Some(ent) = entities.get_mut(&meta.name) else {
            return Err(Error::internal("entity vanished while its schema was applied"));
        };
        ent.meta = meta.clone();
        *schema_version += 1;
        for (id, values, bump) in converted {
            if let Some(row) = ent.rows.get_mut(&id) {
                row.staged.row.values = values;
                let parts = partitions_of(&planner, &row.staged.row);
                restage_row(membership, head, &meta.name, row, parts, bump);
            }
        }
        Ok(SchemaChange::Altered)
    }

    fn put_profile(&mut self, profile: &Profile) -> Result<()> {
        validate_profile(profile, &self.schemas())?;
        let mut affected: BTreeSet<EntityName> = profile.items.iter().map(|i| i.entity.clone()).collect();
        if let Some(old) = self.profiles.get(&profile.name) {
            affected.extend(old.items.iter().map(|i| i.entity.clone()));
        }
        let mut profiles = self.profiles.clone();
        profiles.insert(profile.name.clone(), profile.clone());
        let list: Vec<Profile> = profiles.values().cloned().collect();
        let planners = self.planners(&affected, &list)?;
        self.profiles = profiles;
        self.recompute(&planners);
        Ok(())
    }

    fn delete_profile(&mut self, name: &ProfileName) -> Result<()> {
        let Some(old) = self.profiles.get(name) else {
            return Err(Error::not_found(format!("profile '{name}'")));
        };
        let affected: BTreeSet<EntityName> = old.items.iter().map(|i| i.entity.clone()).collect();
        let mut profiles = self.profiles.clone();
        profiles.remove(name);
        let list: Vec<Profile> = profiles.values().cloned().collect();
        let planners = self.planners(&affected, &list)?;
        self.profiles = profiles;
        self.recompute(&planners);
        Ok(())
    }

    fn apply_changes(&mut self, entity: &EntityName, page: ChangePage) -> Result<ApplyOutcome> {
        let meta = self.entity(entity)?.meta.clone();
        let ChangePage { upserts, deletes, next_token, .. } = page;
        let checker = meta.row_checker()?;
        let upserts = upserts
            .into_iter()
            .map(|row| {
                let id = row.id.clone();
                checker.check(row).map_err(|e| Error::invalid(format!("entity '{entity}', row '{id}': {e}")))
            })
            .collect::<Result<Vec<Row>>>()?;
        let deletes = deletes
            .iter()
            .map(|id| {
                meta.parse_row_id(id.as_str())
                    .map_err(|e| Error::invalid(format!("entity '{entity}', deleted id '{id}': {e}")))
            })
            .collect::<Result<Vec<RowId>>>()?;
        let planner = MembershipPlanner::new(&meta, &self.profile_list())?;

        // Nothing below fails.
        let OrgState { entities, membership, head, .. } = self;
        let Some(ent) = entities.get_mut(entity) else {
            return Err(Error::internal("entity vanished while changes were applied"));
        };
        let mut outcome = ApplyOutcome::default();
        for row in upserts {
            let previous = ent.rows.get(&row.id);
            if previous.is_some_and(|p| p.staged.row == row) {
                outcome.unchanged += 1;
                continue;
            }
            let seq = next_seq(head);
            let new_parts: BTreeSet<PartitionKey> = planner
                .plan(previous.map(|p| &p.staged.row), Some(&row))
                .into_iter()
                .filter(|op| op.action == MembershipAction::Put)
                .map(|op| op.partition)
                .collect();
            let old_parts = previous.map(|p| p.partitions.clone()).unwrap_or_default();
            for left in old_parts.difference(&new_parts) {
                membership.remove(left, entity, &row.id, seq);
            }
            for part in &new_parts {
                membership.put(part, entity, &row.id, seq, seq);
            }
            ent.rows.insert(
                row.id.clone(),
                RowState { staged: StagedRow { row, version: seq }, partitions: new_parts },
            );
            outcome.upserted += 1;
        }
        for id in deletes {
            // A delete leaves every partition the row is in.
            let Some(previous) = ent.rows.remove(&id) else {
                continue;
            };
            let seq = next_seq(head);
            for part in &previous.partitions {
                membership.remove(part, entity, &id, seq);
            }
            outcome.deleted += 1;
        }
        if let Some(token) = next_token {
            ent.token = Some(token);
        }
        outcome.head = *head;
        Ok(outcome)
    }

    fn pull(&self, plan: &PullPlan) -> Result<PullPage> {
        let head = self.head;
        let mut seen = BTreeSet::new();
        for (key, position) in &plan.partitions {
            if !seen.insert(key) {
                return Err(Error::invalid(format!("partition '{key}' is planned twice")));
            }
            if *position > head {
                return Err(Error::resync(format!(
                    "position {position} of partition '{key}' is beyond the head {head}"
                )));
            }
        }
        let max_rows = plan.max_rows.max(1);
        let mut changes: Vec<PulledChange> = Vec::new();
        let mut columns: HashMap<EntityName, Arc<[ColumnName]>> = HashMap::new();
        let mut positions = Vec::with_capacity(plan.partitions.len());
        let mut bytes = 0usize;
        let mut more = false;
        for (key, position) in &plan.partitions {
            if more {
                positions.push((key.clone(), *position));
                continue;
            }
            let Some(part) = self.membership.partitions.get(key) else {
                positions.push((key.clone(), head));
                continue;
            };
            let mut reached = head;
            let mut last = *position;
            for (seq, member) in part.log.range((Bound::Excluded(*position), Bound::Unbounded)) {
                let entry = part.members.get(member).ok_or_else(|| {
                    Error::internal(format!("partition '{key}': log entry {seq} has no member"))
                })?;
                let row = if entry.removed {
                    None
                } else {
                    let state = self.entities.get(&entry.entity);
                    let staged = state.and_then(|e| e.rows.get(&entry.row_id)).map(|r| &r.staged);
                    let (Some(state), Some(staged)) = (state, staged) else {
                        return Err(Error::internal(format!(
                            "partition '{key}': member {}/{} is not staged",
                            entry.entity, entry.row_id
                        )));
                    };
                    let cols = columns
                        .entry(entry.entity.clone())
                        .or_insert_with(|| state.meta.pull_columns().into());
                    Some(PulledRow::copied(cols, staged))
                };
                let size = match &row {
                    Some(pulled) => pulled.approx_size(&entry.row_id),
                    None => entry.row_id.as_str().len() + REMOVE_OVERHEAD,
                };
                if !changes.is_empty()
                    && (changes.len() >= max_rows || bytes.saturating_add(size) > plan.max_bytes)
                {
                    more = true;
                    reached = last;
                    break;
                }
                bytes = bytes.saturating_add(size);
                last = *seq;
                changes.push(PulledChange {
                    partition: key.clone(),
                    entity: entry.entity.clone(),
                    row_id: entry.row_id.clone(),
                    seq: *seq,
                    row,
                });
            }
            positions.push((key.clone(), reached));
        }
        let checksums = (!more).then(|| {
            plan.partitions
                .iter()
                .map(|(key, _)| {
                    let sum = self.membership.partitions.get(key).map(|p| p.checksum).unwrap_or_default();
                    (key.clone(), sum)
                })
                .collect()
        });
        Ok(PullPage { changes, positions, more, head, checksums })
    }

    fn status(&self, org: &OrgId) -> OrgStatus {
        let names: BTreeSet<&EntityName> = self.entities.keys().chain(self.runs.keys()).collect();
        let entities = names
            .into_iter()
            .map(|name| {
                let ent = self.entities.get(name);
                let run = self.runs.get(name);
                EntityStatus {
                    entity: name.clone(),
                    schema_hash: ent.map(|e| e.meta.schema_hash()).unwrap_or_default(),
                    rows: ent.map_or(0, |e| e.rows.len() as u64),
                    token: ent.and_then(|e| e.token.clone()),
                    last_run: run.and_then(|r| r.last_run),
                    last_success: run.and_then(|r| r.last_success),
                    last_error: run.and_then(|r| r.last_error.clone()),
                    last_rows: run.map_or(0, |r| r.last_rows),
                }
            })
            .collect();
        OrgStatus { org: org.clone(), schema_version: self.schema_version, head: self.head, entities }
    }
}

impl MemoryOrg {
    fn new(id: OrgId) -> Self {
        let (head_tx, _) = watch::channel(Seq::ZERO);
        let incarnation = uuid::Uuid::new_v4().simple().to_string();
        MemoryOrg { id, incarnation, state: Mutex::new(OrgState::default()), head_tx }
    }

    /// Locks the state of a live org; `NotFound` once it was dropped.
    fn state(&self) -> Result<MutexGuard<'_, OrgState>> {
        let guard = self.state.lock().map_err(|_| {
            Error::internal(format!("in-memory staging of org '{}' poisoned by a panic", self.id))
        })?;
        if guard.dropped {
            return Err(Error::not_found(format!("org '{}'", self.id)));
        }
        Ok(guard)
    }

    /// Runs a write and publishes the new head when it moved. The
    /// notification is sent under the lock, so watchers never see it go back.
    fn write<T>(&self, f: impl FnOnce(&mut OrgState) -> Result<T>) -> Result<T> {
        let mut state = self.state()?;
        let before = state.head;
        let out = f(&mut state)?;
        let head = state.head;
        if head != before {
            self.head_tx.send_replace(head);
        }
        Ok(out)
    }

    /// Forgets everything and fails every later call with `NotFound`.
    fn retire(&self) -> Result<()> {
        let mut state = self.state.lock().map_err(|_| {
            Error::internal(format!("in-memory staging of org '{}' poisoned by a panic", self.id))
        })?;
        *state = OrgState { dropped: true, ..OrgState::default() };
        Ok(())
    }
}

#[async_trait]
impl OrgStaging for MemoryOrg {
    fn org_id(&self) -> OrgId {
        self.id.clone()
    }

    fn incarnation(&self) -> String {
        self.incarnation.clone()
    }

    async fn apply_schema(&self, meta: &EntityMetadata) -> Result<SchemaChange> {
        self.write(|s| s.apply_schema(meta))
    }

    async fn schemas(&self) -> Result<Vec<EntityMetadata>> {
        Ok(self.state()?.schemas())
    }

    async fn schema_version(&self) -> Result<u64> {
        Ok(self.state()?.schema_version)
    }

    async fn put_profile(&self, profile: &Profile) -> Result<()> {
        self.write(|s| s.put_profile(profile))
    }

    async fn profile(&self, name: &ProfileName) -> Result<Profile> {
        self.state()?.profiles.get(name).cloned().ok_or_else(|| Error::not_found(format!("profile '{name}'")))
    }

    async fn profiles(&self) -> Result<Vec<Profile>> {
        Ok(self.state()?.profile_list())
    }

    async fn delete_profile(&self, name: &ProfileName) -> Result<()> {
        self.write(|s| s.delete_profile(name))
    }

    async fn apply_changes(&self, entity: &EntityName, page: ChangePage) -> Result<ApplyOutcome> {
        self.write(|s| s.apply_changes(entity, page))
    }

    async fn source_token(&self, entity: &EntityName) -> Result<Option<ChangeToken>> {
        Ok(self.state()?.entities.get(entity).and_then(|e| e.token.clone()))
    }

    async fn row(&self, entity: &EntityName, id: &RowId) -> Result<Option<StagedRow>> {
        let state = self.state()?;
        let ent = state.entity(entity)?;
        // Accept any spelling of the key that canonicalises (e.g. upper-case UUIDs).
        let id = ent.meta.parse_row_id(id.as_str()).unwrap_or_else(|_| id.clone());
        Ok(ent.rows.get(&id).map(|r| r.staged.clone()))
    }

    async fn row_ids(&self, entity: &EntityName, after: Option<RowId>, limit: usize) -> Result<Vec<RowId>> {
        let state = self.state()?;
        let ent = state.entity(entity)?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(ent.rows.range((lower, Bound::Unbounded)).take(limit).map(|(id, _)| id.clone()).collect())
    }

    async fn pull(&self, plan: &PullPlan) -> Result<PullPage> {
        self.state()?.pull(plan)
    }

    async fn head(&self) -> Result<Seq> {
        Ok(self.state()?.head)
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        self.head_tx.subscribe()
    }

    async fn purge_tombstones(&self, up_to: Seq) -> Result<u64> {
        let mut state = self.state()?;
        // A floor above the head would refuse clients that are fully up to date.
        let up_to = up_to.min(state.head);
        let purged = state.membership.purge(up_to);
        state.tombstone_floor = state.tombstone_floor.max(up_to);
        Ok(purged)
    }

    async fn tombstone_floor(&self) -> Result<Seq> {
        Ok(self.state()?.tombstone_floor)
    }

    async fn mutation_result(&self, id: &MutationId) -> Result<Option<MutationRecord>> {
        Ok(self.state()?.mutations.get(id).cloned())
    }

    async fn record_mutation(&self, id: &MutationId, record: &MutationRecord) -> Result<()> {
        let mut state = self.state()?;
        match state.mutations.get(id) {
            Some(known) if known.fingerprint == record.fingerprint => Ok(()),
            Some(_) => Err(Error::conflict(format!(
                "mutation {id} was recorded before with different content; a new mutation needs a new id"
            ))),
            None => {
                state.mutations.insert(*id, record.clone());
                Ok(())
            }
        }
    }

    async fn record_run(&self, report: &SyncRunReport) -> Result<()> {
        let mut state = self.state()?;
        let run = state.runs.entry(report.entity.clone()).or_default();
        run.last_run = Some(report.at);
        run.last_rows = report.rows_applied;
        match &report.error {
            None => {
                run.last_success = Some(report.at);
                run.last_error = None;
            }
            Some(error) => run.last_error = Some(error.clone()),
        }
        Ok(())
    }

    async fn status(&self) -> Result<OrgStatus> {
        Ok(self.state()?.status(&self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ColumnName, ItemId};
    use crate::org::OrgSourceConfig;
    use crate::partition::Partition;
    use crate::profile::ProfileItem;
    use crate::schema::{Attribute, AttributeType};

    fn col(s: &str) -> ColumnName {
        ColumnName::new(s).unwrap()
    }

    fn ent(s: &str) -> EntityName {
        EntityName::new(s).unwrap()
    }

    fn meta() -> EntityMetadata {
        EntityMetadata::new(
            ent("task"),
            col("taskid"),
            vec![
                Attribute::new(col("taskid"), AttributeType::Uuid),
                Attribute::new(col("subject"), AttributeType::String),
                Attribute::new(col("priority"), AttributeType::Integer),
            ],
        )
        .unwrap()
    }

    fn id(n: u128) -> RowId {
        RowId::new(uuid::Uuid::from_u128(n).to_string()).unwrap()
    }

    fn task(n: u128, priority: i64) -> Row {
        Row::new(id(n), [(col("subject"), Value::from("s")), (col("priority"), Value::Integer(priority))])
    }

    fn key(profile: &str, item: &str) -> PartitionKey {
        Partition {
            profile: ProfileName::new(profile).unwrap(),
            item: ItemId::new(item).unwrap(),
            entity: ent("task"),
            params: BTreeMap::new(),
        }
        .key()
    }

    fn profile(filter: &str) -> Profile {
        let mut item = ProfileItem::new(ent("task"), filter);
        item.id = Some(ItemId::new("tasks").unwrap());
        Profile { name: ProfileName::new("p").unwrap(), roles: ["r".to_owned()].into(), items: vec![item] }
    }

    async fn org() -> (MemoryStagingStore, Arc<dyn OrgStaging>) {
        let store = MemoryStagingStore::new();
        let id = OrgId::new("o").unwrap();
        let source = OrgSourceConfig { kind: "demo".into(), settings: BTreeMap::new() };
        store.create_org(&OrgConfig::new(id.clone(), source)).await.unwrap();
        let staging = store.org(&id).await.unwrap();
        staging.apply_schema(&meta()).await.unwrap();
        (store, staging)
    }

    fn page(rows: Vec<Row>) -> ChangePage {
        ChangePage { upserts: rows, ..ChangePage::default() }
    }

    #[tokio::test]
    async fn retype_gives_changed_rows_new_versions_and_puts() {
        let (_store, staging) = org().await;
        staging.put_profile(&profile("")).await.unwrap();
        let mut null_priority = task(2, 0);
        null_priority.values.insert(col("priority"), Value::Null);
        staging.apply_changes(&ent("task"), page(vec![task(1, 5), null_priority])).await.unwrap();
        let before = staging.head().await.unwrap();
        let v2 = staging.row(&ent("task"), &id(2)).await.unwrap().unwrap().version;

        // Adding a column changes no version.
        let mut added = meta();
        added.attributes.push(Attribute::new(col("due"), AttributeType::DateTime));
        staging.apply_schema(&added).await.unwrap();
        assert_eq!(staging.head().await.unwrap(), before);

        // Retyping: row 1's value changes form (a new version), row 2's null does not.
        let mut retyped = added.clone();
        retyped.attributes[2].ty = AttributeType::Decimal;
        assert_eq!(staging.apply_schema(&retyped).await.unwrap(), SchemaChange::Altered);
        let r1 = staging.row(&ent("task"), &id(1)).await.unwrap().unwrap();
        assert!(r1.version > before);
        assert_eq!(r1.row.get("priority"), Some(&Value::Decimal(5.into())));
        assert_eq!(staging.row(&ent("task"), &id(2)).await.unwrap().unwrap().version, v2);
        let plan =
            PullPlan { partitions: vec![(key("p", "tasks"), before)], max_rows: 10, max_bytes: usize::MAX };
        let pulled = staging.pull(&plan).await.unwrap();
        let got: Vec<RowId> = pulled.changes.iter().map(|c| c.row_id.clone()).collect();
        assert_eq!(got, vec![id(1)], "clients re-read exactly the rows whose data changed");
    }

    #[tokio::test]
    async fn schema_changes_that_break_a_profile_or_the_key_are_refused() {
        let (_store, staging) = org().await;
        staging.put_profile(&profile("priority gt 1")).await.unwrap();
        staging.apply_changes(&ent("task"), page(vec![task(1, 5)])).await.unwrap();
        let version = staging.schema_version().await.unwrap();

        let mut without = meta();
        without.attributes.retain(|a| a.name.as_str() != "priority");
        let err = staging.apply_schema(&without).await.unwrap_err();
        assert!(err.to_string().contains("profile 'p'"), "{err}");

        let mut rekeyed = meta();
        rekeyed.attributes.push(Attribute::new(col("code"), AttributeType::String));
        rekeyed.primary_key = col("code");
        assert_eq!(staging.apply_schema(&rekeyed).await.unwrap_err().kind(), crate::ErrorKind::InvalidInput);
        assert_eq!(staging.schema_version().await.unwrap(), version);
        assert_eq!(staging.schemas().await.unwrap(), vec![meta()]);
    }

    #[tokio::test]
    async fn purge_floor_is_capped_at_head() {
        let (_store, staging) = org().await;
        staging.apply_changes(&ent("task"), page(vec![task(1, 1)])).await.unwrap();
        let head = staging.head().await.unwrap();
        staging.purge_tombstones(Seq(1000)).await.unwrap();
        assert_eq!(staging.tombstone_floor().await.unwrap(), head);
        let plan = PullPlan { partitions: vec![(key("p", "tasks"), head)], max_rows: 1, max_bytes: 1 };
        assert!(staging.pull(&plan).await.is_ok(), "a client at the head stays valid");
    }

    #[tokio::test]
    async fn pull_budget_stops_mid_partition_and_keeps_later_positions() {
        let (_store, staging) = org().await;
        staging.put_profile(&profile("")).await.unwrap();
        let mut other = profile("priority gt 2");
        other.name = ProfileName::new("q").unwrap();
        staging.put_profile(&other).await.unwrap();
        staging
            .apply_changes(&ent("task"), page((1..=5).map(|n| task(n, n as i64)).collect()))
            .await
            .unwrap();
        let plan = PullPlan {
            partitions: vec![(key("p", "tasks"), Seq::ZERO), (key("q", "tasks"), Seq::ZERO)],
            max_rows: 2,
            max_bytes: usize::MAX,
        };
        let page = staging.pull(&plan).await.unwrap();
        assert!(page.more);
        assert_eq!(page.changes.len(), 2);
        assert_eq!(page.positions[0].1, page.changes[1].seq);
        assert_eq!(page.positions[1].1, Seq::ZERO);
        assert!(page.checksums.is_none());

        let dup = PullPlan {
            partitions: vec![(key("p", "tasks"), Seq::ZERO), (key("p", "tasks"), Seq::ZERO)],
            max_rows: 2,
            max_bytes: 2,
        };
        assert_eq!(staging.pull(&dup).await.unwrap_err().kind(), crate::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn ids_are_canonicalised_and_bad_delete_ids_refused() {
        let (_store, staging) = org().await;
        staging.apply_changes(&ent("task"), page(vec![task(1, 1)])).await.unwrap();
        let upper = RowId::new(id(1).as_str().to_uppercase()).unwrap();
        assert!(staging.row(&ent("task"), &upper).await.unwrap().is_some());
        let deletes = ChangePage { deletes: vec![upper], ..ChangePage::default() };
        assert_eq!(staging.apply_changes(&ent("task"), deletes).await.unwrap().deleted, 1);
        let bad = ChangePage {
            deletes: vec![RowId::new("nope").unwrap()],
            next_token: Some(ChangeToken("t".into())),
            ..ChangePage::default()
        };
        assert_eq!(
            staging.apply_changes(&ent("task"), bad).await.unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
        assert_eq!(staging.source_token(&ent("task")).await.unwrap(), None);
        assert_eq!(staging.source_token(&ent("unstaged")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn runs_of_unstaged_entities_show_in_status() {
        let (_store, staging) = org().await;
        let at = OffsetDateTime::UNIX_EPOCH;
        let report = SyncRunReport { entity: ent("later"), at, rows_applied: 0, error: Some("down".into()) };
        staging.record_run(&report).await.unwrap();
        let status = staging.status().await.unwrap();
        let later = status.entities.iter().find(|e| e.entity == ent("later")).unwrap();
        assert_eq!(later.schema_hash, "");
        assert_eq!(later.last_error.as_deref(), Some("down"));
    }

    #[tokio::test]
    async fn directory_refuses_blank_urls() {
        let store = MemoryStagingStore::new();
        let org = OrgId::new("o").unwrap();
        assert!(store.set_org_location(&org, Some("  ".into())).await.is_err());
        assert_eq!(store.org_location(&org).await.unwrap(), None);
    }
}
