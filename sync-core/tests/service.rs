//! SyncService edge cases: cursors, limits, authorization and push validation.
#![cfg(all(feature = "memory", feature = "mock"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use sync_core::engine::{Provisioner, SourceCache, StagingSync, WorkerConfig};
use sync_core::memory::{MemoryConnector, MemoryQueue, MemorySource, MemoryStagingStore};
use sync_core::protocol::{ClientMutation, MutationOutcome, PullRequest, PushRequest};
use sync_core::*;

fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}

fn org() -> OrgId {
    OrgId::new("contoso").unwrap()
}

fn admin() -> Principal {
    Principal::new("admin", org()).with_role("sync-admin")
}

fn rep(user: &str) -> Principal {
    Principal::new(user, org()).with_role("rep")
}

struct Rig {
    service: SyncService,
    source: Arc<MemorySource>,
    provisioner: Provisioner,
    stager: StagingSync,
}

async fn rig() -> Rig {
    let meta = EntityMetadata::new(
        EntityName::new("task").unwrap(),
        col("id"),
        vec![
            Attribute::new(col("id"), AttributeType::String),
            Attribute::new(col("owner"), AttributeType::String),
            Attribute::new(col("n"), AttributeType::Integer),
        ],
    )
    .unwrap();
    let source = Arc::new(MemorySource::with_entities([meta]).unwrap());
    for (id, owner) in [("a", "u1"), ("b", "u1"), ("c", "u2")] {
        source
            .upsert("task", Row::new(RowId::new(id).unwrap(), [(col("owner"), Value::from(owner))]))
            .unwrap();
    }
    let connector = MemoryConnector::new();
    connector.register("crm", source.clone());
    let store = Arc::new(MemoryStagingStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let sources = Arc::new(SourceCache::new(Arc::new(connector.clone())));
    let service = SyncService::builder(store.clone(), queue.clone(), Arc::new(connector), "secret")
        .source_cache(sources.clone())
        .config(SyncConfig { max_rows_per_page: 10, max_mutations_per_push: 5, ..SyncConfig::default() })
        .build();
    let rig = Rig {
        provisioner: Provisioner::new(store.clone(), queue.clone(), sources.clone(), WorkerConfig::default()),
        stager: StagingSync::new(store, queue, sources, WorkerConfig::default()),
        service,
        source,
    };
    rig.provision().await;
    rig
}

impl Rig {
    async fn provision(&self) {
        self.service
            .provision(&admin(), OrgConfig::new(org(), MemoryConnector::config("crm")))
            .await
            .unwrap();
        assert!(self.provisioner.run_once().await.unwrap());
        let mut item = ProfileItem::new(EntityName::new("task").unwrap(), "owner eq @user.id");
        item.allow_upload = true;
        let profile = Profile {
            name: ProfileName::new("reps").unwrap(),
            roles: ["rep".into()].into(),
            items: vec![item],
        };
        self.service.put_profile(&admin(), &org(), &profile).await.unwrap();
        while self.stager.run_once(None).await.unwrap() {}
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

#[tokio::test]
async fn pull_reads_only_the_callers_rows_and_ends_with_checksums() {
    let rig = rig().await;
    let r = rig.service.pull(&rep("u1"), &org(), &PullRequest::default()).await.unwrap();
    assert!(!r.has_more);
    assert_eq!(r.batches.len(), 1);
    assert_eq!(r.batches[0].puts.len(), 2);
    assert!(r.schemas.is_some(), "a first pull carries the schemas");
    assert_eq!(r.checksums.as_ref().unwrap().values().next().unwrap().count, 2);
    // Up to date: nothing, and no schemas again.
    let again = PullRequest { cursor: Some(r.cursor.clone()), ..PullRequest::default() };
    let r2 = rig.service.pull(&rep("u1"), &org(), &again).await.unwrap();
    assert!(r2.batches.is_empty() && r2.schemas.is_none());
}

#[tokio::test]
async fn bad_cursors_and_limits_are_refused() {
    let rig = rig().await;
    let r = rig.service.pull(&rep("u1"), &org(), &PullRequest::default()).await.unwrap();
    let with = |cursor: &str| PullRequest { cursor: Some(cursor.into()), ..PullRequest::default() };
    assert_eq!(kind(rig.service.pull(&rep("u1"), &org(), &with("garbage")).await), ErrorKind::ResyncRequired);
    assert_eq!(kind(rig.service.pull(&rep("u2"), &org(), &with(&r.cursor)).await), ErrorKind::ResyncRequired);
    let zero = PullRequest { limit: Some(0), ..PullRequest::default() };
    assert_eq!(kind(rig.service.pull(&rep("u1"), &org(), &zero).await), ErrorKind::InvalidInput);
    let huge = PullRequest { limit: Some(1_000_000), ..PullRequest::default() };
    match rig.service.pull(&rep("u1"), &org(), &huge).await {
        Err(Error::LimitExceeded { limit, max, requested }) => {
            assert_eq!((limit.as_str(), max, requested), ("max_rows_per_page", 10, 1_000_000));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_cursor_from_before_a_recreation_is_refused() {
    let rig = rig().await;
    let r = rig.service.pull(&rep("u1"), &org(), &PullRequest::default()).await.unwrap();
    rig.service.deprovision(&admin(), &org()).await.unwrap();
    assert!(rig.provisioner.run_once().await.unwrap());
    rig.provision().await;
    let again = PullRequest { cursor: Some(r.cursor), ..PullRequest::default() };
    assert_eq!(kind(rig.service.pull(&rep("u1"), &org(), &again).await), ErrorKind::ResyncRequired);
}

#[tokio::test]
async fn other_orgs_and_unprofiled_roles_are_forbidden() {
    let rig = rig().await;
    let foreign = Principal::new("u1", OrgId::new("fabrikam").unwrap()).with_role("rep");
    assert_eq!(kind(rig.service.pull(&foreign, &org(), &PullRequest::default()).await), ErrorKind::Forbidden);
    let nobody = Principal::new("u1", org()).with_role("intern");
    assert_eq!(kind(rig.service.pull(&nobody, &org(), &PullRequest::default()).await), ErrorKind::Forbidden);
    assert_eq!(kind(rig.service.org_status(&rep("u1"), &org()).await), ErrorKind::Forbidden);
    let other = Principal::new("x", OrgId::new("missing").unwrap()).with_role("rep");
    assert_eq!(
        kind(rig.service.pull(&other, &OrgId::new("missing").unwrap(), &PullRequest::default()).await),
        ErrorKind::NotFound
    );
}

fn mutation(id: MutationId, row: &str, op: MutationOp, n: i64) -> ClientMutation {
    ClientMutation {
        id,
        entity: EntityName::new("task").unwrap(),
        op,
        row_id: RowId::new(row).unwrap(),
        base_version: None,
        values: [(col("n"), Value::Integer(n))].into(),
    }
}

#[tokio::test]
async fn invalid_pushes_change_nothing() {
    let rig = rig().await;
    let head = rig.source.head();
    let id = MutationId::new_v4();
    let good = mutation(id, "a", MutationOp::Update, 1);
    let mut unknown_col = mutation(MutationId::new_v4(), "a", MutationOp::Update, 1);
    unknown_col.values.insert(col("nope"), Value::Integer(1));
    let mut wrong_type = mutation(MutationId::new_v4(), "a", MutationOp::Update, 1);
    wrong_type.values.insert(col("n"), Value::from("seven"));
    for bad in [
        vec![good.clone(), good.clone()],
        vec![good.clone(), unknown_col],
        vec![good.clone(), wrong_type],
        (0..6).map(|i| mutation(MutationId::new_v4(), "a", MutationOp::Update, i)).collect(),
    ] {
        let r = rig.service.push(&rep("u1"), &org(), &PushRequest { mutations: bad }).await;
        assert!(matches!(kind(r), ErrorKind::InvalidInput | ErrorKind::LimitExceeded));
        assert_eq!(rig.source.head(), head, "nothing applied");
    }
    // Applied once; a retry returns the same result; a reuse with other content is a conflict.
    let first =
        rig.service.push(&rep("u1"), &org(), &PushRequest { mutations: vec![good.clone()] }).await.unwrap();
    assert!(matches!(first.results[0].outcome, MutationOutcome::Applied { .. }));
    let head = rig.source.head();
    let retry = rig.service.push(&rep("u1"), &org(), &PushRequest { mutations: vec![good] }).await.unwrap();
    assert_eq!(retry.results, first.results);
    assert_eq!(rig.source.head(), head);
    let reuse = mutation(id, "a", MutationOp::Update, 2);
    let r = rig.service.push(&rep("u1"), &org(), &PushRequest { mutations: vec![reuse] }).await;
    assert_eq!(kind(r), ErrorKind::Conflict);
}

#[tokio::test]
async fn uploads_are_limited_to_held_rows() {
    let rig = rig().await;
    // u1 may not change u2's row.
    let m = mutation(MutationId::new_v4(), "c", MutationOp::Update, 5);
    let r = rig.service.push(&rep("u1"), &org(), &PushRequest { mutations: vec![m] }).await.unwrap();
    assert!(matches!(r.results[0].outcome, MutationOutcome::Rejected { .. }), "{:?}", r.results[0]);
    assert!(rig.source.row("task", "c").unwrap().get("n").unwrap().is_null());
}

#[tokio::test]
async fn a_custom_conflict_resolver_decides() {
    use sync_core::conflict::MockConflictResolver;
    let meta = EntityMetadata::new(
        EntityName::new("task").unwrap(),
        col("id"),
        vec![
            Attribute::new(col("id"), AttributeType::String),
            Attribute::new(col("owner"), AttributeType::String),
            Attribute::new(col("n"), AttributeType::Integer),
        ],
    )
    .unwrap();
    let source = Arc::new(MemorySource::with_entities([meta]).unwrap());
    source.upsert("task", Row::new(RowId::new("a").unwrap(), [(col("owner"), Value::from("u1"))])).unwrap();
    let connector = MemoryConnector::new();
    connector.register("crm", source.clone());
    let store = Arc::new(MemoryStagingStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let sources = Arc::new(SourceCache::new(Arc::new(connector.clone())));
    // The resolver doubles the client's value, and is asked once.
    let mut resolver = MockConflictResolver::new();
    resolver.expect_resolve().times(1).returning(|ctx| {
        let n = match ctx.mutation.values.get("n") {
            Some(Value::Integer(n)) => *n,
            _ => 0,
        };
        Ok(Resolution::Apply([(ColumnName::new("n").unwrap(), Value::Integer(n * 2))].into()))
    });
    let service = SyncService::builder(store.clone(), queue.clone(), Arc::new(connector), "secret")
        .source_cache(sources.clone())
        .resolver("doubler", Arc::new(resolver))
        .build();
    let provisioner =
        Provisioner::new(store.clone(), queue.clone(), sources.clone(), WorkerConfig::default());
    let stager = StagingSync::new(store, queue, sources, WorkerConfig::default());
    service.provision(&admin(), OrgConfig::new(org(), MemoryConnector::config("crm"))).await.unwrap();
    assert!(provisioner.run_once().await.unwrap());
    let mut item = ProfileItem::new(EntityName::new("task").unwrap(), "owner eq @user.id");
    item.allow_upload = true;
    item.conflict = ConflictPolicy::Custom { resolver: "doubler".into() };
    let profile = Profile {
        name: ProfileName::new("reps").unwrap(),
        roles: ["rep".into()].into(),
        items: vec![item.clone()],
    };
    service.put_profile(&admin(), &org(), &profile).await.unwrap();
    while stager.run_once(None).await.unwrap() {}
    // An unregistered resolver is refused when the profile is saved.
    let mut bad = profile.clone();
    bad.items[0].conflict = ConflictPolicy::Custom { resolver: "nobody".into() };
    assert_eq!(kind(service.put_profile(&admin(), &org(), &bad).await), ErrorKind::InvalidInput);
    // A stale base version is a conflict: the resolver's merge is written.
    let mut m = mutation(MutationId::new_v4(), "a", MutationOp::Update, 21);
    m.base_version = Some(Seq(0));
    let r = service.push(&rep("u1"), &org(), &PushRequest { mutations: vec![m] }).await.unwrap();
    assert!(matches!(r.results[0].outcome, MutationOutcome::Applied { .. }), "{:?}", r.results[0]);
    assert_eq!(source.row("task", "a").unwrap().get("n"), Some(&Value::Integer(42)));
}

#[tokio::test]
async fn a_first_read_survives_a_purge_but_a_stale_copy_resyncs() {
    let rig = rig().await;
    let staging = rig.service.store().org(&org()).await.unwrap();
    // u1 reads everything: its copy is whole at the current head.
    let whole = rig.service.pull(&rep("u1"), &org(), &PullRequest::default()).await.unwrap();
    // A row u1 holds leaves, and its remove is purged.
    rig.source.delete("task", "a").unwrap();
    while rig.stager.run_once(None).await.unwrap() {}
    rig.service.sync_now(&admin(), &org(), None).await.unwrap();
    while rig.stager.run_once(None).await.unwrap() {}
    let head = staging.head().await.unwrap();
    staging.purge_tombstones(head).await.unwrap();
    let stale = PullRequest { cursor: Some(whole.cursor), ..PullRequest::default() };
    assert_eq!(
        kind(rig.service.pull(&rep("u1"), &org(), &stale).await),
        ErrorKind::ResyncRequired,
        "u1's copy predates the floor and could miss the purged remove"
    );
    // A device starting now reads page by page across the old seqs.
    let mut cursor = None;
    let mut rows = 0;
    loop {
        let r = rig
            .service
            .pull(&rep("u1"), &org(), &PullRequest { cursor: cursor.clone(), limit: Some(1), wait_ms: None })
            .await
            .expect("a first read is never refused for the floor");
        rows += r.batches.iter().map(|b| b.puts.len()).sum::<usize>();
        cursor = Some(r.cursor);
        if !r.has_more {
            break;
        }
    }
    assert_eq!(rows, 1, "only b is left for u1");
}

/// An item that sends a subset of columns sends each once, key first, with
/// the row's values — even when the profile names a column twice or names
/// the key.
#[tokio::test]
async fn column_subsets_send_each_column_once() {
    let rig = rig().await;
    rig.source
        .upsert(
            "task",
            Row::new(
                RowId::new("a").unwrap(),
                [(col("owner"), Value::from("u1")), (col("n"), Value::Integer(5))],
            ),
        )
        .unwrap();
    let mut item = ProfileItem::new(EntityName::new("task").unwrap(), "owner eq @user.id");
    item.columns = Some(vec![col("n"), col("id"), col("n")]);
    let profile =
        Profile { name: ProfileName::new("reps").unwrap(), roles: ["rep".into()].into(), items: vec![item] };
    rig.service.put_profile(&admin(), &org(), &profile).await.unwrap();
    rig.service.sync_now(&admin(), &org(), None).await.unwrap();
    while rig.stager.run_once(None).await.unwrap() {}
    let r = rig.service.pull(&rep("u1"), &org(), &PullRequest::default()).await.unwrap();
    assert_eq!(r.batches.len(), 1);
    let batch = &r.batches[0];
    assert_eq!(batch.columns, vec![col("id"), col("n")]);
    let mut puts = batch.puts.clone();
    puts.sort_by_key(|p| p[0].canonical_text());
    assert_eq!(puts, vec![vec![Value::from("a"), Value::Integer(5)], vec![Value::from("b"), Value::Null]]);
}
