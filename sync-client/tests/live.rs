//! The live loop: changes arrive while a pull waits on the server, a local
//! edit interrupts the wait to upload, `Unavailable` is retried with
//! backoff, and cancellation stops the loop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{World, col, ent};
use sync_client::{CancelToken, ClientConfig, LiveOptions, SyncClient, SyncEvent};
use sync_core::protocol::*;
use sync_core::{ConflictPolicy, Row, RowId, SyncTransport, Value};

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 10 s");
}

fn task(id: &str, owner: &str, amount: i64) -> Row {
    Row::new(
        RowId::new(id).unwrap(),
        [
            (col("owner"), Value::from(owner)),
            (col("team"), Value::from("red")),
            (col("state"), Value::Integer(1)),
            (col("amount"), Value::Integer(amount)),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_arrive_and_local_edits_interrupt_the_wait() {
    let world = World::new(ConflictPolicy::Merge, 1).await;
    world.source.upsert("task", task("t1", "u1", 1)).unwrap();
    world.stage().await;
    let client = world.clients[0].client.clone();
    let cancel = CancelToken::new();
    let runner = {
        let client = client.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { client.run(LiveOptions { wait: Duration::from_secs(20) }, cancel).await })
    };
    eventually("initial sync", async || {
        client.row(&ent("task"), &RowId::new("t1").unwrap()).await.is_ok_and(|r| r.is_some())
    })
    .await;
    // Let the loop settle into a long wait, then change the server.
    tokio::time::sleep(Duration::from_millis(200)).await;
    world.source.upsert("task", task("t2", "u1", 2)).unwrap();
    world.stage().await;
    let took = eventually("a server change to arrive", async || {
        client.row(&ent("task"), &RowId::new("t2").unwrap()).await.is_ok_and(|r| r.is_some())
    })
    .await;
    assert!(took < Duration::from_secs(2), "a live change took {took:?}");

    // A local edit interrupts the wait and is uploaded at once.
    client
        .update(&ent("task"), &RowId::new("t1").unwrap(), [(col("amount"), Value::Integer(99))].into())
        .await
        .unwrap();
    let took = eventually("the edit to reach the source", async || {
        world.source.row("task", "t1").is_some_and(|r| r.values[&col("amount")] == Value::Integer(99))
    })
    .await;
    assert!(took < Duration::from_secs(2), "an edit took {took:?} to upload");
    eventually("the queue to drain", async || client.pending().await.unwrap().is_empty()).await;

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("run stops when cancelled")
        .unwrap()
        .unwrap();
}

/// Fails the first `failures` pulls with `Unavailable`.
struct Flaky {
    inner: Arc<dyn SyncTransport>,
    failures: AtomicU32,
}

#[async_trait]
impl SyncTransport for Flaky {
    async fn profile(&self) -> sync_core::Result<ProfileResponse> {
        self.inner.profile().await
    }
    async fn pull(&self, request: &PullRequest) -> sync_core::Result<PullResponse> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(sync_core::Error::Unavailable {
                message: "overloaded".into(),
                retry_after: Some(Duration::from_millis(5)),
            });
        }
        self.inner.pull(request).await
    }
    async fn push(&self, request: &PushRequest) -> sync_core::Result<PushResponse> {
        self.inner.push(request).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_with_backoff_and_sync_gives_up_after_its_budget() {
    let world = World::new(ConflictPolicy::Merge, 2).await;
    world.source.upsert("task", task("t1", "u1", 1)).unwrap();
    world.stage().await;
    let flaky = Arc::new(Flaky { inner: world.clients[0].transport.clone(), failures: AtomicU32::new(8) });
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClientConfig::default();
    config.backoff.initial = Duration::from_millis(1);
    config.backoff.max = Duration::from_millis(20);
    config.backoff.retries = 3;
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let client = SyncClient::builder(dir.path().join("d.db"), flaky.clone())
        .config(config)
        .on_event(move |e| sink.lock().unwrap().push(e.clone()))
        .open()
        .unwrap();
    // sync() retries three times, then reports the error: it is retryable.
    let err = client.sync().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 4);
    // The live loop keeps retrying until it gets through.
    let cancel = CancelToken::new();
    let runner = {
        let client = client.clone();
        let cancel = cancel.clone();
        tokio::spawn(
            async move { client.run(LiveOptions { wait: Duration::from_millis(200) }, cancel).await },
        )
    };
    eventually("the live loop to get through", async || {
        client.row(&ent("task"), &RowId::new("t1").unwrap()).await.is_ok_and(|r| r.is_some())
    })
    .await;
    cancel.cancel();
    runner.await.unwrap().unwrap();
    let retries = events.lock().unwrap().iter().filter(|e| matches!(e, SyncEvent::Retrying { .. })).count();
    // Three retries inside the failed sync(), then in the loop three more
    // inside a sync plus one by the loop itself.
    assert_eq!(retries, 7, "every failure but the one sync() gave up on was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_sync_keeps_what_was_committed() {
    let world = World::new(ConflictPolicy::Merge, 3).await;
    for i in 0..10 {
        world.source.upsert("task", task(&format!("t{i}"), "u1", i)).unwrap();
    }
    world.stage().await;
    let client = world.clients[0].client.clone();
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = client.sync_with(&cancel).await.unwrap_err();
    assert!(matches!(err, sync_client::ClientError::Cancelled), "{err}");
    // A later sync completes and converges.
    world.sync_and_check(0, "after cancel").await;
}
