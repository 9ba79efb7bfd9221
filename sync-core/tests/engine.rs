//! Unit tests of the workers with mockall mocks of the source: failures and
//! retries, poison items, redelivered events, deprovision during a sync, and
//! idempotency of every message.
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
    let source: Arc<dyn MetadataSource> = Arc::new(source);
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
    let config =
        WorkerConfig { idle_poll: Duration::from_millis(10), page_size: 2, ..WorkerConfig::default() };
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
