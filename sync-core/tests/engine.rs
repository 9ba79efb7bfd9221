//! Unit tests of the workers with mockall mocks of the source: failures and
//! retries, poison items, redelivered events, deprovision during a sync,
//! idempotency of every message, and change pages staged in batches.
#![cfg(all(feature = "memory", feature = "mock"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_core::engine::{Provisioner, RunOutcome, SourceCache, StagingSync, WorkerConfig};
use sync_core::memory::{MemoryConnector, MemoryQueue, MemorySource, MemoryStagingStore};
use sync_core::org::{DATASYNC_QUEUE, PROVISIONING_QUEUE};
use sync_core::queue::WorkQueue;
use sync_core::source::{MockMetadataSource, MockSourceConnector};
use sync_core::*;

fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}

fn account() -> EntityMetadata {
    EntityMetadata::new(
        EntityName::new("account").unwrap(),
        col("accountid"),
        vec![
            Attribute::new(col("accountid"), AttributeType::String),
            Attribute::new(col("name"), AttributeType::String),
        ],
    )
    .unwrap()
}

fn org() -> OrgId {
    OrgId::new("contoso").unwrap()
}

fn config() -> WorkerConfig {
    WorkerConfig {
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(40),
        page_size: 2,
        ..WorkerConfig::default()
    }
}

fn row(id: &str, name: &str) -> Row {
    Row::new(RowId::new(id).unwrap(), [(col("name"), Value::from(name))])
}

struct Rig {
    store: Arc<MemoryStagingStore>,
    queue: Arc<MemoryQueue>,
    provisioner: Provisioner,
    stager: StagingSync,
}

fn rig(connector: Arc<dyn SourceConnector>) -> Rig {
    let store = Arc::new(MemoryStagingStore::new());
    let queue = Arc::new(MemoryQueue::with_max_deliveries(3));
    let sources = Arc::new(SourceCache::new(connector));
    Rig {
        provisioner: Provisioner::new(store.clone(), queue.clone(), sources.clone(), config()),
        stager: StagingSync::new(store.clone(), queue.clone(), sources, config()),
        store,
        queue,
    }
}

/// A connector whose source is the given mock.
fn mock_connector(source: MockMetadataSource) -> Arc<dyn SourceConnector> {
    connector_of(Arc::new(source))
}

/// A connector that connects every org to `source`.
fn connector_of(source: Arc<dyn MetadataSource>) -> Arc<dyn SourceConnector> {
    let mut connector = MockSourceConnector::new();
    connector.expect_connect().returning(move |_| Ok(source.clone()));
    Arc::new(connector)
}

fn provision_event() -> ProvisioningEvent {
    ProvisioningEvent::Provision {
        org: OrgConfig::new(org(), OrgSourceConfig { kind: "mock".into(), settings: Default::default() }),
    }
}

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

#[tokio::test]
async fn transient_source_failure_is_retried_with_backoff() {
    let mut source = MockMetadataSource::new();
    source.expect_entities().returning(|| Ok(vec![account()]));
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    source.expect_changes().returning(move |_, _, _| {
        let mut n = c.lock().unwrap();
        *n += 1;
        if *n == 1 {
            Err(Error::unavailable("source is restarting"))
        } else {
            Ok(ChangePage {
                upserts: vec![row("a", "A")],
                next_token: Some(ChangeToken("t1".into())),
                ..ChangePage::default()
            })
        }
    });
    let rig = rig(mock_connector(source));
    rig.provisioner.handle(&provision_event()).await.unwrap();
    assert!(rig.stager.run_once(None).await.unwrap());
    // The item went back with a delay, and the status shows the failure.
    let depth = rig.queue.depth(&q(DATASYNC_QUEUE)).await.unwrap();
    assert_eq!((depth.ready, depth.delayed, depth.dead), (0, 1, 0), "{depth:?}");
    let status = rig.store.org(&org()).await.unwrap().status().await.unwrap();
    assert!(status.entities[0].last_error.as_deref().unwrap_or("").contains("restarting"));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(rig.stager.run_once(None).await.unwrap());
    let handle = rig.store.org(&org()).await.unwrap();
    assert!(handle.row(&account().name, &RowId::new("a").unwrap()).await.unwrap().is_some());
    assert_eq!(handle.source_token(&account().name).await.unwrap(), Some(ChangeToken("t1".into())));
    let status = handle.status().await.unwrap();
    assert_eq!(status.entities[0].last_error, None, "a success clears the error");
    // The next run is scheduled at the org's interval, not now.
    let depth = rig.queue.depth(&q(DATASYNC_QUEUE)).await.unwrap();
    assert_eq!((depth.ready, depth.delayed), (0, 1));
}

#[tokio::test]
async fn poison_item_reaches_dead_letters_and_status() {
    let mut source = MockMetadataSource::new();
    source.expect_entities().returning(|| Ok(vec![account()]));
    source.expect_changes().returning(|_, _, _| Err(Error::internal("the source returned garbage")));
    let rig = rig(mock_connector(source));
    rig.provisioner.handle(&provision_event()).await.unwrap();
    assert!(rig.stager.run_once(None).await.unwrap());
    let dead = rig.queue.dead_letters(&q(DATASYNC_QUEUE), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("garbage"), "{}", dead[0].reason);
    let status = rig.store.org(&org()).await.unwrap().status().await.unwrap();
    assert!(status.entities[0].last_error.as_deref().unwrap_or("").contains("garbage"));
    // Nothing is left to run: a poison item stops the schedule until an operator acts.
    assert!(!rig.stager.run_once(None).await.unwrap());
}

#[tokio::test]
async fn repeated_transient_failures_end_in_dead_letters() {
    let mut source = MockMetadataSource::new();
    source.expect_entities().returning(|| Ok(vec![account()]));
    source.expect_changes().returning(|_, _, _| Err(Error::unavailable("down")));
    let rig = rig(mock_connector(source));
    rig.provisioner.handle(&provision_event()).await.unwrap();
    for _ in 0..10 {
        rig.stager.run_once(None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(45)).await;
    }
    let depth = rig.queue.depth(&q(DATASYNC_QUEUE)).await.unwrap();
    assert_eq!(depth.dead, 1, "{depth:?}");
}

#[tokio::test]
async fn redelivered_provision_event_is_idempotent() {
    let mut source = MockMetadataSource::new();
    source.expect_entities().returning(|| Ok(vec![account()]));
    let rig = rig(mock_connector(source));
    rig.provisioner.handle(&provision_event()).await.unwrap();
    let handle = rig.store.org(&org()).await.unwrap();
    let version = handle.schema_version().await.unwrap();
    rig.provisioner.handle(&provision_event()).await.unwrap();
    assert_eq!(handle.schema_version().await.unwrap(), version, "no schema churn");
    let depth = rig.queue.depth(&q(DATASYNC_QUEUE)).await.unwrap();
    assert_eq!(depth.ready + depth.delayed, 1, "one pending item per (org, entity): {depth:?}");
}

#[tokio::test]
async fn malformed_events_are_dead_lettered() {
    let rig = rig(Arc::new(MockSourceConnector::new()));
    rig.queue
        .send(&q(PROVISIONING_QUEUE), Message { body: b"{not json".to_vec(), ..Message::default() })
        .await
        .unwrap();
    assert!(rig.provisioner.run_once().await.unwrap());
    let dead = rig.queue.dead_letters(&q(PROVISIONING_QUEUE), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("malformed"));
}

#[tokio::test]
async fn deprovision_during_a_running_sync_ends_cleanly() {
    let source = Arc::new(MemorySource::with_entities([account()]).unwrap());
    for i in 0..6 {
        source.upsert("account", row(&format!("r{i}"), "x")).unwrap();
    }
    source.set_latency(Duration::from_millis(30));
    let connector = MemoryConnector::new();
    connector.register("crm", source.clone());
    let rig = Arc::new(rig(Arc::new(connector)));
    let event = ProvisioningEvent::Provision { org: OrgConfig::new(org(), MemoryConnector::config("crm")) };
    rig.provisioner.handle(&event).await.unwrap();
    let r = rig.clone();
    let running = tokio::spawn(async move { r.stager.run_once(None).await });
    tokio::time::sleep(Duration::from_millis(45)).await;
    rig.provisioner.handle(&ProvisioningEvent::Deprovision { org: org() }).await.unwrap();
    running.await.unwrap().unwrap();
    // Nothing of the org is left: no staging, no pending item, no dead letter.
    assert_eq!(rig.store.org(&org()).await.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    let depth = rig.queue.depth(&q(DATASYNC_QUEUE)).await.unwrap();
    assert_eq!(depth, Default::default(), "{depth:?}");
    // A redelivered deprovision is harmless.
    rig.provisioner.handle(&ProvisioningEvent::Deprovision { org: org() }).await.unwrap();
}

#[tokio::test]
async fn every_message_handled_twice_gives_the_same_state() {
    let source = Arc::new(MemorySource::with_entities([account()]).unwrap());
    for i in 0..5 {
        source.upsert("account", row(&format!("r{i}"), "x")).unwrap();
    }
    let connector = MemoryConnector::new();
    connector.register("crm", source.clone());
    let rig = rig(Arc::new(connector));
    let event = ProvisioningEvent::Provision { org: OrgConfig::new(org(), MemoryConnector::config("crm")) };
    rig.provisioner.handle(&event).await.unwrap();
    rig.provisioner.handle(&event).await.unwrap();
    let item = SyncWorkItem { org: org(), entity: account().name, source: MemoryConnector::config("crm") };
    let first = rig.stager.sync_entity(&item, None, None).await.unwrap();
    assert!(matches!(first, RunOutcome::Synced { rows: 5, .. }), "{first:?}");
    let handle = rig.store.org(&org()).await.unwrap();
    let head = handle.head().await.unwrap();
    let second = rig.stager.sync_entity(&item, None, None).await.unwrap();
    assert!(matches!(second, RunOutcome::Synced { rows: 0, .. }), "{second:?}");
    assert_eq!(handle.head().await.unwrap(), head, "a repeated item stages nothing new");
    // A full re-read after token expiry removes rows the source no longer has.
    source.delete("account", "r1").unwrap();
    source.expire_all_tokens();
    rig.stager.sync_entity(&item, None, None).await.unwrap();
    let ids = handle.row_ids(&account().name, None, 100).await.unwrap();
    assert_eq!(ids.len(), 4);
    assert!(!ids.contains(&RowId::new("r1").unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_stages_in_the_background_and_stops_without_leaving_leases() {
    use sync_core::engine::{WorkerRunner, WorkerSet};
    let source = Arc::new(MemorySource::with_entities([account()]).unwrap());
    for i in 0..30 {
        source.upsert("account", row(&format!("r{i}"), "x")).unwrap();
    }
    // Slow pages so a run is in flight when the stop comes.
    source.set_latency(Duration::from_millis(20));
    let connector = MemoryConnector::new();
    connector.register("crm", source.clone());
    let store = Arc::new(MemoryStagingStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let sources = Arc::new(SourceCache::new(Arc::new(connector)));
    // Every page in its own commit, so that rows show up mid-run.
    let config = WorkerConfig {
        idle_poll: Duration::from_millis(10),
        page_size: 2,
        commit_bytes: 0,
        ..WorkerConfig::default()
    };
    let runner = WorkerRunner::start(
        store.clone(),
        queue.clone(),
        sources,
        config,
        WorkerSet { provisioners: 1, stagers: 2 },
    );
    let event = ProvisioningEvent::Provision { org: OrgConfig::new(org(), MemoryConnector::config("crm")) };
    queue.send(&q(PROVISIONING_QUEUE), Message::json(&event).unwrap()).await.unwrap();
    // Wait until staging has started, then stop mid-run.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(h) = store.org(&org()).await
            && !h.row_ids(&account().name, None, 1).await.unwrap_or_default().is_empty()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the workers never staged anything");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runner.shutdown().await;
    for name in [PROVISIONING_QUEUE, DATASYNC_QUEUE] {
        let depth = queue.depth(&q(name)).await.unwrap();
        assert_eq!(depth.leased, 0, "no lease left on {name}: {depth:?}");
        assert_eq!(depth.dead, 0, "{depth:?}");
    }
    // The interrupted item is ready again; a new runner finishes the entity.
    let runner = WorkerRunner::start(
        store.clone(),
        queue.clone(),
        Arc::new(SourceCache::new(Arc::new({
            let c = MemoryConnector::new();
            c.register("crm", source.clone());
            c
        }))),
        WorkerConfig { idle_poll: Duration::from_millis(10), page_size: 2, ..WorkerConfig::default() },
        WorkerSet::default(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let handle = store.org(&org()).await.unwrap();
    while handle.row_ids(&account().name, None, 100).await.unwrap().len() < 30 {
        assert!(std::time::Instant::now() < deadline, "the restarted workers did not finish the entity");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runner.shutdown().await;
}

/// A source of 20 account rows `r00`..`r19`, and a work item for it.
fn twenty_rows() -> (Arc<MemorySource>, SyncWorkItem) {
    let source = Arc::new(MemorySource::with_entities([account()]).unwrap());
    for i in 0..20 {
        source.upsert("account", row(&format!("r{i:02}"), "x")).unwrap();
    }
    let item = SyncWorkItem { org: org(), entity: account().name, source: MemoryConnector::config("crm") };
    (source, item)
}

/// A store with `org()` provisioned, and a stager over it and `source`
/// with `config`.
async fn stager_with(
    source: Arc<dyn MetadataSource>,
    config: WorkerConfig,
) -> (Arc<MemoryStagingStore>, StagingSync) {
    let rig = rig(connector_of(source.clone()));
    let event = ProvisioningEvent::Provision { org: OrgConfig::new(org(), MemoryConnector::config("crm")) };
    rig.provisioner.handle(&event).await.unwrap();
    let sources = Arc::new(SourceCache::new(connector_of(source)));
    (rig.store.clone(), StagingSync::new(rig.store, rig.queue, sources, config))
}

async fn staged(store: &MemoryStagingStore) -> Vec<Row> {
    let handle = store.org(&org()).await.unwrap();
    let mut out = Vec::new();
    for id in handle.row_ids(&account().name, None, 1000).await.unwrap() {
        out.push(handle.row(&account().name, &id).await.unwrap().unwrap().row);
    }
    out
}

#[tokio::test]
async fn pages_are_staged_in_batches_up_to_the_budget() {
    let (source, item) = twenty_rows();
    let per_row = source.rows("account").unwrap()[0].approx_size();
    let mut expected = None;
    for (budget, commits) in [(0, 10..=10), (5 * per_row, 4..=4), (usize::MAX, 1..=1)] {
        let config = WorkerConfig { commit_bytes: budget, ..config() };
        let (store, stager) = stager_with(source.clone(), config).await;
        let outcome = stager.sync_entity(&item, None, None).await.unwrap();
        let RunOutcome::Synced { rows: 20, pages: 10, commits: c } = outcome else { panic!("{outcome:?}") };
        // Pages of two rows; a batch commits once it holds at least the budget.
        assert!(commits.contains(&c), "budget {budget}: {c} commits");
        let rows = staged(&store).await;
        assert_eq!(rows.len(), 20);
        assert_eq!(expected.get_or_insert_with(|| rows.clone()), &rows, "budget {budget}");
        // The token of the last page committed: nothing is read again.
        let again = stager.sync_entity(&item, None, None).await.unwrap();
        assert!(matches!(again, RunOutcome::Synced { rows: 0, pages: 1, .. }), "{again:?}");
        // Changes after it, an upsert and a delete of the same row among them, merge.
        source.upsert("account", row("r01", "changed")).unwrap();
        source.upsert("account", row("r30", "new")).unwrap();
        source.delete("account", "r30").unwrap();
        source.delete("account", "r02").unwrap();
        stager.sync_entity(&item, None, None).await.unwrap();
        let rows = staged(&store).await;
        assert_eq!(rows.len(), 19);
        assert_eq!(rows[1].get("name"), Some(&Value::from("changed")));
        assert!(rows.iter().all(|r| r.id.as_str() != "r02" && r.id.as_str() != "r30"));
        source.upsert("account", row("r01", "x")).unwrap();
        source.upsert("account", row("r02", "x")).unwrap();
    }
}

/// A source that notes, for each read, the token asked with and the token
/// the store held at that moment; and can request a stop at a given read.
struct Watching {
    inner: Arc<MemorySource>,
    store: Mutex<Option<Arc<MemoryStagingStore>>>,
    reads: Mutex<Vec<(Option<ChangeToken>, Option<ChangeToken>)>>,
    stop_at: Option<(usize, tokio::sync::watch::Sender<bool>)>,
}

#[async_trait::async_trait]
impl MetadataSource for Watching {
    async fn entities(&self) -> Result<Vec<EntityMetadata>> {
        self.inner.entities().await
    }

    async fn changes(
        &self,
        entity: &EntityName,
        token: Option<ChangeToken>,
        page_size: usize,
    ) -> Result<ChangePage> {
        let store = self.store.lock().unwrap().clone().unwrap();
        let held = store.org(&org()).await?.source_token(entity).await?;
        let n = {
            let mut reads = self.reads.lock().unwrap();
            reads.push((token.clone(), held));
            reads.len()
        };
        if let Some((at, stop)) = &self.stop_at
            && n == *at
        {
            stop.send_replace(true);
        }
        self.inner.changes(entity, token, page_size).await
    }

    async fn apply(&self, entity: &EntityName, mutation: &Mutation) -> Result<Option<Row>> {
        self.inner.apply(entity, mutation).await
    }
}

#[tokio::test]
async fn the_next_page_is_read_while_a_batch_commits() {
    let (inner, item) = twenty_rows();
    let watching =
        Arc::new(Watching { inner, store: Mutex::default(), reads: Mutex::default(), stop_at: None });
    let (store, stager) = stager_with(watching.clone(), WorkerConfig { commit_bytes: 0, ..config() }).await;
    *watching.store.lock().unwrap() = Some(store);
    stager.sync_entity(&item, None, None).await.unwrap();
    let reads = watching.reads.lock().unwrap().clone();
    assert_eq!(reads.len(), 10);
    assert_eq!(reads[0], (None, None));
    for (i, pair) in reads.windows(2).enumerate() {
        let [(before, _), (asked, held)] = pair else { unreachable!() };
        assert!(asked.is_some(), "read {}", i + 1);
        // Page i+1 was read before page i (whose token it asks with) committed.
        assert_eq!(held, before, "read {}: the store already held the token asked with", i + 1);
    }
}

#[tokio::test]
async fn a_stop_commits_the_pages_already_read() {
    let (inner, item) = twenty_rows();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watching = Arc::new(Watching {
        inner,
        store: Mutex::default(),
        reads: Mutex::default(),
        stop_at: Some((3, stop_tx)),
    });
    let (store, stager) =
        stager_with(watching.clone(), WorkerConfig { commit_bytes: usize::MAX, ..config() }).await;
    *watching.store.lock().unwrap() = Some(store.clone());
    let outcome = stager.sync_entity(&item, None, Some(&stop_rx)).await.unwrap();
    assert_eq!(outcome, RunOutcome::Interrupted);
    // The three pages read were staged with the third page's token.
    let rows = staged(&store).await;
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r00", "r01", "r02", "r03", "r04", "r05"]);
    let handle = store.org(&org()).await.unwrap();
    let token = handle.source_token(&account().name).await.unwrap();
    let page = watching.inner.changes(&account().name, token, 2).await.unwrap();
    assert_eq!(page.upserts[0].id.as_str(), "r06", "the stored token resumes after the pages staged");
    // A run without the stop finishes the entity.
    let outcome = stager.sync_entity(&item, None, None).await.unwrap();
    assert!(matches!(outcome, RunOutcome::Synced { rows: 14, pages: 7, commits: 1 }), "{outcome:?}");
    assert_eq!(staged(&store).await.len(), 20);
}

#[tokio::test]
async fn a_slow_source_still_commits_every_commit_interval() {
    let (source, item) = twenty_rows();
    // Ten pages, each taking at least 20 ms to read.
    source.set_latency(Duration::from_millis(20));
    for (interval, at_least, at_most) in
        [(Duration::from_millis(50), 2, 10), (Duration::from_secs(3600), 1, 1)]
    {
        let config = WorkerConfig { commit_bytes: usize::MAX, commit_interval: interval, ..config() };
        let (store, stager) = stager_with(source.clone(), config).await;
        let outcome = stager.sync_entity(&item, None, None).await.unwrap();
        let RunOutcome::Synced { rows: 20, pages: 10, commits } = outcome else { panic!("{outcome:?}") };
        assert!((at_least..=at_most).contains(&commits), "interval {interval:?}: {commits} commits");
        assert_eq!(staged(&store).await.len(), 20);
    }
}
