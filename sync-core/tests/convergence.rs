//! The convergence guarantee (DESIGN.md §6.1), as a randomized model test
//! end to end through `Provisioner` + `StagingSync` + `SyncService` + the
//! in-process transport: after a pull that ends with `has_more = false`, a
//! client holds exactly the rows the server selects for its principal —
//! no missing, stale or extra rows, removes included — and its checksums
//! agree. Histories mix source inserts, updates that move rows across
//! partitions, deletes, schema changes, profile edits, token expiry, partial
//! pulls and pushes under each conflict policy, for several users.
//!
//! `CONVERGENCE_CASES` sets the number of histories (default 1000).
#![cfg(feature = "memory")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use sync_core::engine::{Provisioner, SourceCache, StagingSync, WorkerConfig};
use sync_core::memory::{MemoryConnector, MemoryQueue, MemorySource, MemoryStagingStore};
use sync_core::protocol::{ClientMutation, MutationOutcome, PullRequest, PullResponse, PushRequest};
use sync_core::*;

const ORG: &str = "contoso";
const USERS: [&str; 3] = ["u1", "u2", "u3"];

fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}
fn ent(s: &str) -> EntityName {
    EntityName::new(s).unwrap()
}

fn task_schema(with_priority: bool) -> EntityMetadata {
    let mut attrs = vec![
        Attribute::new(col("taskid"), AttributeType::String),
        Attribute::new(col("owner"), AttributeType::String),
        Attribute::new(col("team"), AttributeType::String),
        Attribute::new(col("state"), AttributeType::Integer),
        Attribute::new(col("amount"), AttributeType::Integer),
    ];
    if with_priority {
        attrs.push(Attribute::new(col("priority"), AttributeType::Integer));
    }
    EntityMetadata::new(ent("task"), col("taskid"), attrs).unwrap()
}

fn note_schema() -> EntityMetadata {
    EntityMetadata::new(
        ent("note"),
        col("noteid"),
        vec![
            Attribute::new(col("noteid"), AttributeType::String),
            Attribute::new(col("owner"), AttributeType::String),
            Attribute::new(col("body"), AttributeType::String),
        ],
    )
    .unwrap()
}

fn principal(user: &str) -> Principal {
    let org = OrgId::new(ORG).unwrap();
    match user {
        "u1" => Principal::new("u1", org).with_role("rep").with_claim("teams", serde_json::json!(["red"])),
        "u2" => {
            Principal::new("u2", org).with_role("rep").with_claim("teams", serde_json::json!(["red", "blue"]))
        }
        _ => Principal::new(user, org).with_role("manager"),
    }
}

fn admin() -> Principal {
    Principal::new("admin", OrgId::new(ORG).unwrap()).with_role("sync-admin")
}

fn profiles(policy: &ConflictPolicy, manager_filter: &str) -> Vec<Profile> {
    let mut mine = ProfileItem::new(ent("task"), "owner eq @user.id");
    mine.id = Some(ItemId::new("mine").unwrap());
    mine.allow_upload = true;
    mine.conflict = policy.clone();
    let mut team = ProfileItem::new(ent("task"), "team eq @user.teams and state ne 2");
    team.id = Some(ItemId::new("team").unwrap());
    let mut notes = ProfileItem::new(ent("note"), "owner eq @user.id");
    notes.allow_upload = true;
    notes.conflict = policy.clone();
    let mut active = ProfileItem::new(ent("task"), manager_filter);
    active.allow_upload = true;
    active.conflict = policy.clone();
    vec![
        Profile {
            name: ProfileName::new("reps").unwrap(),
            roles: ["rep".into()].into(),
            items: vec![mine, team, notes],
        },
        Profile {
            name: ProfileName::new("managers").unwrap(),
            roles: ["manager".into()].into(),
            items: vec![active],
        },
    ]
}

#[derive(Clone, Debug)]
enum Op {
    SourceUpsertTask { id: u8, owner: Option<u8>, team: u8, state: u8, amount: i64 },
    SourceUpsertNote { id: u8, owner: u8, body: u8 },
    SourceDelete { note: bool, id: u8 },
    Stage,
    Pull { user: u8, limit: u8 },
    PullAll { user: u8 },
    Edit { user: u8, pick: u8, kind: u8, value: u8 },
    Insert { user: u8, id: u8 },
    Push { user: u8, retry: bool },
    ToggleSchema,
    ToggleManagerFilter,
    ExpireTokens,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..10, prop::option::of(0u8..3), 0u8..3, 0u8..3, 0i64..100)
            .prop_map(|(id, owner, team, state, amount)| Op::SourceUpsertTask { id, owner, team, state, amount }),
        2 => (0u8..6, 0u8..3, 0u8..4).prop_map(|(id, owner, body)| Op::SourceUpsertNote { id, owner, body }),
        1 => (any::<bool>(), 0u8..10).prop_map(|(note, id)| Op::SourceDelete { note, id }),
        3 => Just(Op::Stage),
        2 => (0u8..3, 1u8..4).prop_map(|(user, limit)| Op::Pull { user, limit }),
        2 => (0u8..3).prop_map(|user| Op::PullAll { user }),
        3 => (0u8..3, any::<u8>(), 0u8..5, 0u8..3).prop_map(|(user, pick, kind, value)| Op::Edit { user, pick, kind, value }),
        1 => (0u8..3, 10u8..14).prop_map(|(user, id)| Op::Insert { user, id }),
        2 => (0u8..3, any::<bool>()).prop_map(|(user, retry)| Op::Push { user, retry }),
        1 => Just(Op::ToggleSchema),
        1 => Just(Op::ToggleManagerFilter),
        1 => Just(Op::ExpireTokens),
    ]
}

fn arb_policy() -> impl Strategy<Value = ConflictPolicy> {
    prop_oneof![
        Just(ConflictPolicy::Merge),
        Just(ConflictPolicy::ClientWins),
        Just(ConflictPolicy::ServerWins)
    ]
}

type RowKey = (EntityName, RowId);

/// A client that applies pages exactly as the protocol says, keeping rows,
/// per-partition membership and pending uploads.
struct ModelClient {
    principal: Principal,
    transport: InProcessTransport,
    cursor: Option<String>,
    rows: BTreeMap<RowKey, (Seq, BTreeMap<ColumnName, serde_json::Value>)>,
    membership: BTreeMap<PartitionKey, BTreeMap<RowKey, Seq>>,
    pending: Vec<ClientMutation>,
    /// Every mutation ever pushed, with its final outcome.
    outcomes: BTreeMap<MutationId, MutationOutcome>,
    /// How many mutations were pushed.
    pushed: usize,
}

impl ModelClient {
    fn held_anywhere(&self, key: &RowKey) -> bool {
        self.membership.values().any(|m| m.contains_key(key))
    }

    fn apply(&mut self, resp: PullResponse) {
        // A schema change migrates local rows: dropped columns go, new ones are null.
        if let Some(schemas) = &resp.schemas {
            for ((entity, _), (_, values)) in self.rows.iter_mut() {
                if let Some(meta) = schemas.iter().find(|m| &m.name == entity) {
                    values.retain(|c, _| meta.attribute(c.as_str()).is_some());
                }
            }
        }
        let current: BTreeSet<PartitionKey> = resp.partitions.iter().map(|p| p.key.clone()).collect();
        let vanished: Vec<PartitionKey> =
            self.membership.keys().filter(|k| !current.contains(*k)).cloned().collect();
        for p in vanished {
            let members = self.membership.remove(&p).unwrap_or_default();
            for key in members.keys() {
                if !self.held_anywhere(key) {
                    self.rows.remove(key);
                }
            }
        }
        for batch in resp.batches {
            assert!(current.contains(&batch.partition), "batch for a partition not listed");
            assert_eq!(batch.puts.len(), batch.versions.len());
            for (values, version) in batch.puts.iter().zip(&batch.versions) {
                let id = RowId::new(values[0].canonical_text()).unwrap();
                let key = (batch.entity.clone(), id);
                let map = batch.columns.iter().cloned().zip(values.iter().map(Value::to_json)).collect();
                self.rows.insert(key.clone(), (*version, map));
                self.membership.entry(batch.partition.clone()).or_default().insert(key, *version);
            }
            for id in batch.removes {
                let key = (batch.entity.clone(), id);
                if let Some(m) = self.membership.get_mut(&batch.partition) {
                    m.remove(&key);
                }
                if !self.held_anywhere(&key) {
                    self.rows.remove(&key);
                }
            }
        }
        // A row held by several partitions carries the newest version in all of them.
        for m in self.membership.values_mut() {
            for (key, v) in m.iter_mut() {
                if let Some((rv, _)) = self.rows.get(key) {
                    *v = (*v).max(*rv);
                }
            }
        }
        self.cursor = Some(resp.cursor);
        if !resp.has_more {
            let sums = resp.checksums.expect("a complete pull carries checksums");
            for key in &current {
                let mut local = Checksum::default();
                for ((entity, id), v) in self.membership.get(key).into_iter().flatten() {
                    local.add(entity, id, *v);
                }
                assert_eq!(sums.get(key).copied().unwrap_or_default(), local, "checksum of partition {key}");
            }
        }
    }

    async fn pull(&mut self, limit: Option<u32>) -> bool {
        let req = PullRequest { cursor: self.cursor.clone(), limit, wait_ms: None };
        let resp = self.transport.pull(&req).await.expect("pull");
        let more = resp.has_more;
        self.apply(resp);
        more
    }

    async fn pull_all(&mut self) {
        let mut n = 0;
        while self.pull(Some(3)).await {
            n += 1;
            assert!(n < 10_000, "pull never completed");
        }
    }

    async fn push(&mut self, retry: bool, source: &MemorySource) {
        if self.pending.is_empty() {
            return;
        }
        let req = PushRequest { mutations: std::mem::take(&mut self.pending) };
        self.pushed += req.mutations.len();
        let resp = self.transport.push(&req).await.expect("push");
        assert_eq!(resp.results.len(), req.mutations.len(), "a result per mutation");
        for (m, r) in req.mutations.iter().zip(&resp.results) {
            assert_eq!(m.id, r.id);
            self.outcomes.insert(r.id, r.outcome.clone());
        }
        if retry {
            // The response was "lost": the retry must return the same results and apply nothing again.
            let head = source.head();
            let again = self.transport.push(&req).await.expect("retried push");
            assert_eq!(again.results, resp.results, "a retried push returns the recorded results");
            assert_eq!(source.head(), head, "a retried push applies nothing again");
        }
    }
}

struct World {
    source: Arc<MemorySource>,
    store: Arc<MemoryStagingStore>,
    service: SyncService,
    provisioner: Provisioner,
    stager: StagingSync,
    clients: Vec<ModelClient>,
    policy: ConflictPolicy,
    priority: bool,
    manager_filter: &'static str,
}

impl World {
    async fn new(policy: ConflictPolicy) -> World {
        let source = Arc::new(MemorySource::with_entities([task_schema(false), note_schema()]).unwrap());
        let connector = MemoryConnector::new();
        connector.register("crm", source.clone());
        let store = Arc::new(MemoryStagingStore::new());
        let queue = Arc::new(MemoryQueue::new());
        let sources = Arc::new(SourceCache::new(Arc::new(connector.clone())));
        let config = WorkerConfig { page_size: 4, ..WorkerConfig::default() };
        let service = SyncService::builder(store.clone(), queue.clone(), Arc::new(connector), "secret")
            .source_cache(sources.clone())
            .build();
        let provisioner = Provisioner::new(store.clone(), queue.clone(), sources.clone(), config.clone());
        let stager = StagingSync::new(store.clone(), queue.clone(), sources, config);
        let clients = USERS
            .iter()
            .map(|u| ModelClient {
                principal: principal(u),
                transport: InProcessTransport::new(service.clone(), principal(u)),
                cursor: None,
                rows: BTreeMap::new(),
                membership: BTreeMap::new(),
                pending: Vec::new(),
                outcomes: BTreeMap::new(),
                pushed: 0,
            })
            .collect();
        let mut world = World {
            source,
            store,
            service,
            provisioner,
            stager,
            clients,
            policy,
            priority: false,
            manager_filter: "state eq 1",
        };
        let org = OrgConfig::new(OrgId::new(ORG).unwrap(), MemoryConnector::config("crm"));
        world.service.provision(&admin(), org).await.unwrap();
        assert!(world.provisioner.run_once().await.unwrap());
        world.put_profiles().await;
        world.stage().await;
        world
    }

    async fn put_profiles(&mut self) {
        let org = OrgId::new(ORG).unwrap();
        for p in profiles(&self.policy, self.manager_filter) {
            self.service.put_profile(&admin(), &org, &p).await.unwrap();
        }
    }

    async fn stage(&mut self) {
        let org = OrgId::new(ORG).unwrap();
        self.service.sync_now(&admin(), &org, None).await.unwrap();
        let mut n = 0;
        while self.stager.run_once(None).await.unwrap() {
            n += 1;
            assert!(n < 100, "staging never drained");
        }
    }

    /// What the server selects for `user` now: every staged row in one of its partitions.
    async fn expected(&self, user: &str) -> BTreeMap<RowKey, BTreeMap<ColumnName, serde_json::Value>> {
        let org = self.store.org(&OrgId::new(ORG).unwrap()).await.unwrap();
        let profiles = org.profiles().await.unwrap();
        let schemas = org.schemas().await.unwrap();
        let held: BTreeSet<PartitionKey> =
            sync_core::filter::principal_partitions(&principal(user), &profiles, &schemas)
                .unwrap()
                .iter()
                .map(Partition::key)
                .collect();
        let mut out = BTreeMap::new();
        for meta in &schemas {
            let planner = MembershipPlanner::new(meta, &profiles).unwrap();
            for id in org.row_ids(&meta.name, None, 100_000).await.unwrap() {
                let staged = org.row(&meta.name, &id).await.unwrap().unwrap();
                if planner.partitions(&staged.row).iter().any(|k| held.contains(k)) {
                    let values = staged.row.values.iter().map(|(c, v)| (c.clone(), v.to_json())).collect();
                    out.insert((meta.name.clone(), id), values);
                }
            }
        }
        out
    }

    async fn check_converged(&self, i: usize) {
        let client = &self.clients[i];
        let expected = self.expected(client.principal.user_id.as_str()).await;
        let actual: BTreeMap<_, _> = client.rows.iter().map(|(k, (_, v))| (k.clone(), non_null(v))).collect();
        let expected: BTreeMap<_, _> = expected.into_iter().map(|(k, v)| (k, non_null(&v))).collect();
        let missing: Vec<_> = expected.keys().filter(|k| !actual.contains_key(*k)).collect();
        let extra: Vec<_> = actual.keys().filter(|k| !expected.contains_key(*k)).collect();
        let stale: Vec<_> = expected
            .iter()
            .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty() && stale.is_empty(),
            "client {} diverged: missing {missing:?}, extra {extra:?}, stale {:?}",
            client.principal.user_id,
            stale.iter().map(|k| (k, &expected[*k], actual.get(*k))).collect::<Vec<_>>()
        );
    }

    async fn run(&mut self, op: Op) {
        match op {
            Op::SourceUpsertTask { id, owner, team, state, amount } => {
                let mut values = vec![
                    (col("owner"), owner.map_or(Value::Null, |o| Value::from(USERS[o as usize]))),
                    (col("team"), Value::from(["red", "blue", "green"][team as usize])),
                    (col("state"), Value::Integer(i64::from(state))),
                    (col("amount"), Value::Integer(amount)),
                ];
                if self.priority {
                    values.push((col("priority"), Value::Integer(amount % 3)));
                }
                self.source.upsert("task", Row::new(RowId::new(format!("t{id}")).unwrap(), values)).unwrap();
            }
            Op::SourceUpsertNote { id, owner, body } => {
                let values = vec![
                    (col("owner"), Value::from(USERS[owner as usize])),
                    (col("body"), Value::from(format!("body {body}"))),
                ];
                self.source.upsert("note", Row::new(RowId::new(format!("n{id}")).unwrap(), values)).unwrap();
            }
            Op::SourceDelete { note, id } => {
                let (entity, rid) =
                    if note { ("note", format!("n{id}")) } else { ("task", format!("t{id}")) };
                self.source.delete(entity, &rid).unwrap();
            }
            Op::Stage => self.stage().await,
            Op::Pull { user, limit } => {
                self.clients[user as usize].pull(Some(u32::from(limit))).await;
            }
            Op::PullAll { user } => {
                self.clients[user as usize].pull_all().await;
                self.check_converged(user as usize).await;
            }
            Op::Edit { user, pick, kind, value } => {
                let client = &mut self.clients[user as usize];
                if client.rows.is_empty() {
                    return;
                }
                let idx = pick as usize % client.rows.len();
                let Some(((entity, id), (version, _))) = client.rows.iter().nth(idx) else { return };
                let (op, values) = match (entity.as_str(), kind) {
                    (_, 0) => (MutationOp::Delete, BTreeMap::new()),
                    ("task", 1) => {
                        (MutationOp::Update, [(col("owner"), Value::from(USERS[value as usize]))].into())
                    }
                    ("task", 2) => {
                        (MutationOp::Update, [(col("state"), Value::Integer(i64::from(value)))].into())
                    }
                    ("task", _) => (
                        MutationOp::Update,
                        [(col("amount"), Value::Integer(1000 + i64::from(value)))].into(),
                    ),
                    (_, _) => {
                        (MutationOp::Update, [(col("body"), Value::from(format!("edited {value}")))].into())
                    }
                };
                client.pending.push(ClientMutation {
                    id: MutationId::new_v4(),
                    entity: entity.clone(),
                    op,
                    row_id: id.clone(),
                    base_version: Some(*version),
                    values,
                });
            }
            Op::Insert { user, id } => {
                let client = &mut self.clients[user as usize];
                let values = [
                    (col("owner"), Value::from(client.principal.user_id.clone())),
                    (col("team"), Value::from("red")),
                    (col("state"), Value::Integer(1)),
                    (col("amount"), Value::Integer(7)),
                ]
                .into();
                client.pending.push(ClientMutation {
                    id: MutationId::new_v4(),
                    entity: ent("task"),
                    op: MutationOp::Insert,
                    row_id: RowId::new(format!("t{id}")).unwrap(),
                    base_version: None,
                    values,
                });
            }
            Op::Push { user, retry } => {
                let source = self.source.clone();
                self.clients[user as usize].push(retry, &source).await;
            }
            Op::ToggleSchema => {
                self.priority = !self.priority;
                self.source.set_schema(task_schema(self.priority)).unwrap();
            }
            Op::ToggleManagerFilter => {
                self.manager_filter =
                    if self.manager_filter == "state eq 1" { "state ne 0" } else { "state eq 1" };
                self.put_profiles().await;
            }
            Op::ExpireTokens => self.source.expire_all_tokens(),
        }
    }
}

/// A row's non-null values: an absent column and a null one are the same.
fn non_null(values: &BTreeMap<ColumnName, serde_json::Value>) -> BTreeMap<ColumnName, serde_json::Value> {
    values.iter().filter(|(_, v)| !v.is_null()).map(|(c, v)| (c.clone(), v.clone())).collect()
}

fn cases() -> u32 {
    std::env::var("CONVERGENCE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn clients_converge(policy in arb_policy(), ops in prop::collection::vec(arb_op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut world = World::new(policy).await;
            for op in ops {
                world.run(op).await;
            }
            // Settle: push everything, stage, and pull everyone to the end.
            for u in 0..USERS.len() {
                let source = world.source.clone();
                world.clients[u].push(false, &source).await;
            }
            world.stage().await;
            for u in 0..USERS.len() {
                world.clients[u].pull_all().await;
                world.check_converged(u).await;
            }
            // Every offline edit was answered: applied, a conflict, or rejected.
            for c in &world.clients {
                assert!(c.pending.is_empty());
                assert_eq!(c.outcomes.len(), c.pushed, "every pushed mutation has an outcome");
            }
        });
    }
}
