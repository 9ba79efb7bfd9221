//! A server world for end-to-end client tests: the in-memory source, store
//! and queue, the workers and the sync service, and real `SyncClient`s.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sync_client::{ClientConfig, SyncClient, SyncEvent};
use sync_core::engine::{Provisioner, SourceCache, StagingSync, WorkerConfig};
use sync_core::memory::{MemoryConnector, MemoryQueue, MemorySource, MemoryStagingStore};
use sync_core::protocol::*;
use sync_core::*;

pub const ORG: &str = "contoso";
pub const USERS: [&str; 3] = ["u1", "u2", "u3"];

/// SplitMix64: small, seedable, good enough for test histories.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}
pub fn ent(s: &str) -> EntityName {
    EntityName::new(s).unwrap()
}

/// The task schema, with an extra integer column when `extra` names one.
pub fn task_schema(extra: Option<&str>) -> EntityMetadata {
    let mut attrs = vec![
        Attribute::new(col("taskid"), AttributeType::String),
        Attribute::new(col("owner"), AttributeType::String),
        Attribute::new(col("team"), AttributeType::String),
        Attribute::new(col("state"), AttributeType::Integer),
        Attribute::new(col("amount"), AttributeType::Integer),
    ];
    if let Some(x) = extra {
        attrs.push(Attribute::new(col(x), AttributeType::Integer));
    }
    EntityMetadata::new(ent("task"), col("taskid"), attrs).unwrap()
}

pub fn note_schema() -> EntityMetadata {
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

/// The teams of reps, by user index, in the two alternatives a test flips between.
pub fn teams(user: usize, flipped: bool) -> serde_json::Value {
    match (user, flipped) {
        (0, false) => serde_json::json!(["red"]),
        (0, true) => serde_json::json!(["blue", "green"]),
        (_, false) => serde_json::json!(["red", "blue"]),
        (_, true) => serde_json::json!(["green"]),
    }
}

pub fn principal_with(user: &str, flipped: bool) -> Principal {
    let org = OrgId::new(ORG).unwrap();
    match user {
        "u1" => Principal::new("u1", org).with_role("rep").with_claim("teams", teams(0, flipped)),
        "u2" => Principal::new("u2", org).with_role("rep").with_claim("teams", teams(1, flipped)),
        _ => Principal::new(user, org).with_role("manager"),
    }
}

pub fn principal(user: &str) -> Principal {
    principal_with(user, false)
}

pub fn admin() -> Principal {
    Principal::new("admin", OrgId::new(ORG).unwrap()).with_role("sync-admin")
}

/// Reps hold their own tasks (uploads allowed) and their teams' open tasks
/// (download only) — two partitions of one entity that can share a row —
/// and their notes; managers hold tasks by a filter that can be edited.
pub fn profiles(policy: &ConflictPolicy, manager_filter: &str) -> Vec<Profile> {
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

/// What a transport hook may do to the server between two pulls.
pub struct Chaos {
    pub source: Arc<MemorySource>,
    pub service: SyncService,
    pub stager: Arc<StagingSync>,
    pub rng: Mutex<Rng>,
}

impl Chaos {
    async fn strike(&self) {
        let (id, owner, team, state) = {
            let mut r = self.rng.lock().unwrap();
            (r.below(10), r.below(3), r.below(3), r.below(3))
        };
        let mut values = vec![
            (col("owner"), Value::from(USERS[owner as usize])),
            (col("team"), Value::from(["red", "blue", "green"][team as usize])),
            (col("state"), Value::Integer(state as i64)),
            (col("amount"), Value::Integer(500 + id as i64)),
        ];
        if let Some(m) = self.source.schema("task")
            && m.attributes.len() > 5
        {
            values.push((m.attributes[5].name.clone(), Value::Integer(1)));
        }
        self.source.upsert("task", Row::new(RowId::new(format!("t{id}")).unwrap(), values)).unwrap();
        stage(&self.service, &self.stager).await;
    }
}

/// The in-process transport plus test controls: a push whose response is
/// lost after the server applied it, and server changes between pulls.
pub struct TestTransport {
    pub inner: Mutex<Arc<dyn SyncTransport>>,
    pub lose_next_push: AtomicBool,
    pub interleave: AtomicBool,
    pub chaos: Option<Chaos>,
    pub pushes: Arc<Mutex<Vec<PushRequest>>>,
}

#[async_trait]
impl SyncTransport for TestTransport {
    async fn profile(&self) -> Result<ProfileResponse> {
        let inner = self.inner.lock().unwrap().clone();
        inner.profile().await
    }
    async fn pull(&self, request: &PullRequest) -> Result<PullResponse> {
        if self.interleave.load(Ordering::SeqCst)
            && let Some(chaos) = &self.chaos
        {
            chaos.strike().await;
        }
        let inner = self.inner.lock().unwrap().clone();
        inner.pull(request).await
    }
    async fn push(&self, request: &PushRequest) -> Result<PushResponse> {
        self.pushes.lock().unwrap().push(request.clone());
        let inner = self.inner.lock().unwrap().clone();
        let response = inner.push(request).await?;
        if self.lose_next_push.swap(false, Ordering::SeqCst) {
            return Err(Error::unavailable("connection reset after the request was sent"));
        }
        Ok(response)
    }
}

pub struct TestClient {
    pub user: &'static str,
    /// Whether the user's team claims are flipped.
    pub flipped: bool,
    pub client: SyncClient,
    pub transport: Arc<TestTransport>,
    pub events: Arc<Mutex<Vec<SyncEvent>>>,
    pub cancelled: Arc<Mutex<BTreeSet<MutationId>>>,
    pub pushes: Arc<Mutex<Vec<PushRequest>>>,
    pub db: PathBuf,
    _dir: tempfile::TempDir,
}

/// Makes a transport acting as a principal.
pub type Connect = Arc<dyn Fn(&Principal) -> Arc<dyn SyncTransport> + Send + Sync>;

/// Which server the clients talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory store, called in-process.
    Memory,
    /// storage-sqlite in a temporary directory, served by transport-http's
    /// router on a loopback port; devices use `HttpSyncTransport`.
    Http,
}

/// The HS256 secret of test servers.
pub const SECRET: &[u8] = b"client test secret: thirty-two bytes or more";

/// A bearer token for a principal, with its roles and claims.
pub fn token_for(p: &Principal) -> String {
    let mut t = transport_http::DevToken::new(p.user_id.clone(), &p.org);
    for r in &p.roles {
        t = t.with_role(r.clone());
    }
    for (k, v) in &p.claims {
        t = t.with_claim(k.clone(), v.clone());
    }
    t.sign_hs256(SECRET).unwrap()
}

/// Serves the router of `service` on a loopback port; the server stops
/// when the returned guard is dropped.
pub async fn serve(service: &SyncService) -> (String, AbortOnDrop) {
    let auth = Arc::new(transport_http::JwtAuthenticator::hs256(SECRET.to_vec()).unwrap());
    let app = transport_http::router(service.clone(), auth, transport_http::HttpConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, AbortOnDrop(task))
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP transport acting as `p` against the server at `url`.
pub fn http_transport(url: &str, p: &Principal) -> Arc<dyn SyncTransport> {
    let config = transport_http::HttpTransportConfig::new(url.to_owned(), p.org.clone()).with_retry(
        transport_http::RetryPolicy::default()
            .with_backoff(std::time::Duration::from_millis(1), std::time::Duration::from_millis(20)),
    );
    Arc::new(transport_http::HttpSyncTransport::with_token(config, token_for(p)).unwrap())
}

pub struct World {
    pub source: Arc<MemorySource>,
    pub store: Arc<dyn StagingStore>,
    /// Makes a transport acting as a principal (in-process or HTTP).
    pub connect: Connect,
    /// Keeps the backend's files and server alive.
    pub _backend: Box<dyn std::any::Any + Send + Sync>,
    pub service: SyncService,
    pub stager: Arc<StagingSync>,
    pub clients: Vec<TestClient>,
    pub policy: ConflictPolicy,
    /// The extra task column, when there is one.
    pub extra: Option<String>,
    /// How many extra columns were added so far.
    pub extras: u32,
    pub manager_filter: &'static str,
}

pub async fn stage(service: &SyncService, stager: &StagingSync) {
    let org = OrgId::new(ORG).unwrap();
    service.sync_now(&admin(), &org, None).await.unwrap();
    let mut n = 0;
    while stager.run_once(None).await.unwrap() {
        n += 1;
        assert!(n < 200, "staging never drained");
    }
}

impl World {
    pub async fn new(policy: ConflictPolicy, seed: u64) -> World {
        Self::with_backend(policy, seed, Backend::Memory).await
    }

    pub async fn with_backend(policy: ConflictPolicy, seed: u64, backend: Backend) -> World {
        let source = Arc::new(MemorySource::with_entities([task_schema(None), note_schema()]).unwrap());
        let connector = MemoryConnector::new();
        connector.register("crm", source.clone());
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StagingStore> = match backend {
            Backend::Memory => Arc::new(MemoryStagingStore::new()),
            Backend::Http => Arc::new(storage_sqlite::SqliteStagingStore::open(dir.path()).await.unwrap()),
        };
        let queue = Arc::new(MemoryQueue::new());
        let sources = Arc::new(SourceCache::new(Arc::new(connector.clone())));
        let config = WorkerConfig { page_size: 4, ..WorkerConfig::default() };
        let service = SyncService::builder(store.clone(), queue.clone(), Arc::new(connector), "secret")
            .source_cache(sources.clone())
            .build();
        let provisioner = Provisioner::new(store.clone(), queue.clone(), sources.clone(), config.clone());
        let stager = Arc::new(StagingSync::new(store.clone(), queue.clone(), sources, config));
        let org = OrgConfig::new(OrgId::new(ORG).unwrap(), MemoryConnector::config("crm"));
        service.provision(&admin(), org).await.unwrap();
        assert!(provisioner.run_once().await.unwrap());
        let (connect, keep): (Connect, Box<dyn std::any::Any + Send + Sync>) = match backend {
            Backend::Memory => {
                let service = service.clone();
                let connect: Connect = Arc::new(move |p: &Principal| {
                    Arc::new(InProcessTransport::new(service.clone(), p.clone())) as _
                });
                (connect, Box::new(dir))
            }
            Backend::Http => {
                let (url, server) = serve(&service).await;
                let connect: Connect = Arc::new(move |p: &Principal| http_transport(&url, p));
                (connect, Box::new((server, dir)))
            }
        };
        let mut rng = Rng::new(seed ^ 0xC0FFEE);
        let mut clients = Vec::new();
        for user in USERS {
            let pushes = Arc::new(Mutex::new(Vec::new()));
            let transport = Arc::new(TestTransport {
                inner: Mutex::new(connect(&principal(user))),
                lose_next_push: AtomicBool::new(false),
                interleave: AtomicBool::new(false),
                chaos: Some(Chaos {
                    source: source.clone(),
                    service: service.clone(),
                    stager: stager.clone(),
                    rng: Mutex::new(Rng::new(rng.next())),
                }),
                pushes: pushes.clone(),
            });
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join(format!("{user}.db"));
            let mut cfg = ClientConfig {
                page_limit: Some(1 + rng.below(4) as u32),
                max_rows_per_commit: 1 + rng.below(8),
                prefetch_pages: 1 + rng.below(3) as usize,
                ..ClientConfig::default()
            };
            cfg.backoff.initial = std::time::Duration::from_millis(1);
            cfg.backoff.retries = 3;
            cfg.store.cache_kib = 1024;
            let events = Arc::new(Mutex::new(Vec::new()));
            let sink = events.clone();
            let cancelled = Arc::new(Mutex::new(BTreeSet::new()));
            let client = SyncClient::builder(&db, transport.clone() as Arc<dyn SyncTransport>)
                .config(cfg)
                .on_event(move |e| sink.lock().unwrap().push(e.clone()))
                .open()
                .unwrap();
            clients.push(TestClient {
                user,
                flipped: false,
                client,
                transport,
                events,
                cancelled,
                pushes,
                db,
                _dir: dir,
            });
        }
        let mut world = World {
            source,
            store,
            connect,
            _backend: keep,
            service,
            stager,
            clients,
            policy,
            extra: None,
            extras: 0,
            manager_filter: "state eq 1",
        };
        world.put_profiles().await;
        world.stage().await;
        world
    }

    pub async fn put_profiles(&mut self) {
        let org = OrgId::new(ORG).unwrap();
        for p in profiles(&self.policy, self.manager_filter) {
            self.service.put_profile(&admin(), &org, &p).await.unwrap();
        }
    }

    pub async fn stage(&self) {
        stage(&self.service, &self.stager).await;
    }

    pub fn source_upsert_task(&self, rng: &mut Rng) {
        let owner = rng.below(4);
        let mut values = vec![
            (col("owner"), if owner == 3 { Value::Null } else { Value::from(USERS[owner as usize]) }),
            (col("team"), Value::from(["red", "blue", "green"][rng.below(3) as usize])),
            (col("state"), Value::Integer(rng.below(3) as i64)),
            (col("amount"), Value::Integer(rng.below(100) as i64)),
        ];
        if let Some(x) = &self.extra {
            values.push((col(x), Value::Integer(rng.below(3) as i64)));
        }
        let id = format!("t{}", rng.below(10));
        self.source.upsert("task", Row::new(RowId::new(id).unwrap(), values)).unwrap();
    }

    pub fn source_upsert_note(&self, rng: &mut Rng) {
        let values = vec![
            (col("owner"), Value::from(USERS[rng.below(3) as usize])),
            (col("body"), Value::from(format!("body {}", rng.below(4)))),
        ];
        let id = format!("n{}", rng.below(6));
        self.source.upsert("note", Row::new(RowId::new(id).unwrap(), values)).unwrap();
    }

    pub fn source_delete(&self, rng: &mut Rng) {
        if rng.below(2) == 0 {
            self.source.delete("note", &format!("n{}", rng.below(6))).unwrap();
        } else {
            self.source.delete("task", &format!("t{}", rng.below(10))).unwrap();
        }
    }

    /// Adds an extra column to tasks, or removes the one there is.
    ///
    /// A removed column is never added again under the same name: the
    /// server drops a column's values without new row versions, so a client
    /// that slept through a drop and re-add of one name would keep its old
    /// values (a server-side limitation reported separately).
    pub fn toggle_schema(&mut self) {
        self.extra = match self.extra.take() {
            Some(_) => None,
            None => {
                self.extras += 1;
                Some(format!("x{}", self.extras))
            }
        };
        self.source.set_schema(task_schema(self.extra.as_deref())).unwrap();
    }

    pub async fn toggle_manager_filter(&mut self) {
        self.manager_filter = if self.manager_filter == "state eq 1" { "state ne 0" } else { "state eq 1" };
        self.put_profiles().await;
    }

    /// Gives the client a cursor the server cannot honour (as if issued by
    /// another deployment): its next pull gets `ResyncRequired`.
    ///
    /// (A tombstone purge would be the natural trigger, but a read from the
    /// start with small pages then gets `ResyncRequired` again on its second
    /// page, since its positions lie below the new floor — a server-side
    /// limitation reported separately.)
    pub async fn force_resync(&self, user: usize) {
        let c = &self.clients[user];
        let conn = rusqlite::Connection::open(&c.db).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        conn.execute("UPDATE \"sync:meta\" SET value = 'bm90IGEgY3Vyc29y' WHERE key = 'cursor'", []).unwrap();
    }

    pub fn lose_next_push(&self, user: usize) {
        self.clients[user].transport.lose_next_push.store(true, Ordering::SeqCst);
    }

    /// Flips a rep's team claims: partitions vanish and appear.
    pub fn flip_teams(&mut self, user: usize) {
        let c = &mut self.clients[user];
        c.flipped = !c.flipped;
        *c.transport.inner.lock().unwrap() = (self.connect)(&principal_with(c.user, c.flipped));
    }

    pub fn set_interleave(&self, user: usize, on: bool) {
        self.clients[user].transport.interleave.store(on, Ordering::SeqCst);
    }

    /// Damages the client's copy behind its back (a row or a membership
    /// lost), then lets it verify itself; the next sync repairs.
    pub async fn corrupt(&self, user: usize, rng: &mut Rng) {
        let c = &self.clients[user];
        let conn = rusqlite::Connection::open(&c.db).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT taskid FROM task ORDER BY taskid")
            .map(|mut s| s.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return;
        }
        let victim = &ids[rng.below(ids.len() as u64) as usize];
        if rng.below(2) == 0 {
            conn.execute("DELETE FROM \"sync:rows:task\" WHERE taskid = ?1", [victim]).unwrap();
        } else {
            conn.execute(
                "DELETE FROM \"sync:membership\" WHERE rid = \
                 (SELECT \"sync:rowid\" FROM \"sync:rows:task\" WHERE taskid = ?1)",
                [victim],
            )
            .unwrap();
        }
        drop(conn);
        c.client.verify().await.unwrap();
    }

    /// An offline update or delete of a row the client shows.
    pub async fn offline_edit(&self, user: usize, rng: &mut Rng) -> Option<MutationId> {
        let c = &self.clients[user];
        let mut rows = Vec::new();
        for e in ["task", "note"] {
            if let Ok(rs) = c.client.rows(&ent(e)).await {
                rows.extend(rs.into_iter().map(|r| (e, r.id)));
            }
        }
        if rows.is_empty() {
            return None;
        }
        let (entity, id) = rows[rng.below(rows.len() as u64) as usize].clone();
        let kind = rng.below(5);
        let value = rng.below(3);
        let w = match (entity, kind) {
            (_, 0) => c.client.delete(&ent(entity), &id).await,
            ("task", 1) => {
                c.client
                    .update(&ent(entity), &id, [(col("owner"), Value::from(USERS[value as usize]))].into())
                    .await
            }
            ("task", 2) => {
                c.client
                    .update(&ent(entity), &id, [(col("state"), Value::Integer(value as i64))].into())
                    .await
            }
            ("task", _) => {
                c.client
                    .update(&ent(entity), &id, [(col("amount"), Value::Integer(1000 + value as i64))].into())
                    .await
            }
            (_, _) => {
                c.client
                    .update(&ent(entity), &id, [(col("body"), Value::from(format!("edited {value}")))].into())
                    .await
            }
        };
        let w = w.unwrap();
        if let Some(x) = w.cancelled {
            c.cancelled.lock().unwrap().insert(x);
        }
        w.mutation
    }

    pub async fn offline_insert(&self, user: usize, rng: &mut Rng) -> Option<MutationId> {
        let c = &self.clients[user];
        let id = format!("t{}", 10 + rng.below(4));
        let values = [
            (col("taskid"), Value::from(id)),
            (col("owner"), Value::from(c.user)),
            (col("team"), Value::from("red")),
            (col("state"), Value::Integer(1)),
            (col("amount"), Value::Integer(7)),
        ]
        .into();
        match c.client.insert(&ent("task"), values).await {
            Ok(w) => w.mutation,
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound), "{e}");
                None
            }
        }
    }

    /// What the server selects for `user` now.
    pub async fn expected(
        &self,
        who: &Principal,
    ) -> BTreeMap<(String, String), BTreeMap<String, serde_json::Value>> {
        let org = self.store.org(&OrgId::new(ORG).unwrap()).await.unwrap();
        let profiles = org.profiles().await.unwrap();
        let schemas = org.schemas().await.unwrap();
        let held: BTreeSet<PartitionKey> = sync_core::filter::principal_partitions(who, &profiles, &schemas)
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
                    let values =
                        staged.row.values.iter().map(|(c, v)| (c.as_str().to_owned(), v.to_json())).collect();
                    out.insert((meta.name.as_str().to_owned(), id.as_str().to_owned()), values);
                }
            }
        }
        out
    }

    /// What the client shows.
    pub async fn actual(
        &self,
        user: usize,
    ) -> BTreeMap<(String, String), BTreeMap<String, serde_json::Value>> {
        let mut out = BTreeMap::new();
        for e in ["task", "note"] {
            let Ok(rows) = self.clients[user].client.rows(&ent(e)).await else { continue };
            for r in rows {
                let values = r.values.iter().map(|(c, v)| (c.as_str().to_owned(), v.to_json())).collect();
                out.insert((e.to_owned(), r.id.as_str().to_owned()), values);
            }
        }
        out
    }

    /// Syncs a client and checks it holds exactly the server's selection.
    pub async fn sync_and_check(&self, user: usize, ctx: &str) {
        let c = &self.clients[user];
        let report = c.client.sync().await.unwrap_or_else(|e| panic!("{ctx}: sync of {}: {e}", c.user));
        assert!(report.complete, "{ctx}: sync of {} did not complete: {report:?}", c.user);
        // Interleaved server changes happen before each pull request, so
        // the last page saw the state checked here.
        let expected = self.expected(&principal_with(c.user, c.flipped)).await;
        let actual = self.actual(user).await;
        if expected != actual {
            let missing: Vec<_> = expected.keys().filter(|k| !actual.contains_key(*k)).collect();
            let extra: Vec<_> = actual.keys().filter(|k| !expected.contains_key(*k)).collect();
            let stale: Vec<_> = expected
                .iter()
                .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
                .map(|(k, v)| (k, v, actual.get(k)))
                .collect();
            if std::env::var_os("CLIENT_CONVERGENCE_TRACE").is_some() {
                for e in c.events.lock().unwrap().iter() {
                    eprintln!("event: {e:?}");
                }
                let st = c.client.status().await.unwrap();
                eprintln!("status: {st:?}");
                let q = c.client.query("SELECT * FROM \"sync:membership\"", vec![]).await.unwrap();
                eprintln!("membership: {:?}", q.rows);
                let q = c.client.query("SELECT * FROM \"sync:partitions\"", vec![]).await.unwrap();
                eprintln!("partitions: {:?}", q.rows);
                let t = (self.connect)(&principal_with(c.user, c.flipped));
                let mut cursor = None;
                loop {
                    let p = t
                        .pull(&sync_core::protocol::PullRequest {
                            cursor: cursor.clone(),
                            limit: Some(1000),
                            wait_ms: None,
                        })
                        .await
                        .unwrap();
                    for b in &p.batches {
                        let ids: Vec<_> =
                            b.puts.iter().map(|r| r[0].canonical_text()).zip(b.versions.iter()).collect();
                        eprintln!("fresh pull: {} puts {:?} removes {:?}", b.partition, ids, b.removes);
                    }
                    cursor = Some(p.cursor.clone());
                    if !p.has_more {
                        eprintln!("fresh pull checksums: {:?}", p.checksums);
                        break;
                    }
                }
            }
            panic!(
                "{ctx}: client {} diverged: missing {missing:?}, extra {extra:?}, stale {stale:?}",
                c.user
            );
        }
        let status = c.client.status().await.unwrap();
        assert!(
            status.partitions.iter().all(|p| p.repair == "none"),
            "{ctx}: partitions left in repair: {:?}",
            status.partitions
        );
    }
}
