//! A device process killed with SIGKILL mid-pull and mid-push resumes
//! without lost or duplicated rows or uploads: the `sync-client` binary
//! syncs over real loopback HTTP with a server in this process (the sync
//! service over the in-memory adapters, behind transport-http's router) and
//! is killed at many points; a last run completes, and the local copy and
//! the source are checked.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Rng, col, ent, principal};
use sync_client::SyncClient;
use sync_core::engine::{Provisioner, SourceCache, StagingSync, WorkerConfig};
use sync_core::memory::{MemoryConnector, MemoryQueue, MemorySource, MemoryStagingStore, SourceOp};
use sync_core::*;

struct Server {
    url: String,
    _server: common::AbortOnDrop,
    source: Arc<MemorySource>,
    service: SyncService,
    stager: Arc<StagingSync>,
    store: Arc<MemoryStagingStore>,
}

async fn server() -> Server {
    let source =
        Arc::new(MemorySource::with_entities([common::task_schema(None), common::note_schema()]).unwrap());
    let connector = MemoryConnector::new();
    connector.register("crm", source.clone());
    let store = Arc::new(MemoryStagingStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let sources = Arc::new(SourceCache::new(Arc::new(connector.clone())));
    let config = WorkerConfig { page_size: 500, ..WorkerConfig::default() };
    let service = SyncService::builder(store.clone(), queue.clone(), Arc::new(connector), "secret")
        .source_cache(sources.clone())
        .build();
    let provisioner = Provisioner::new(store.clone(), queue.clone(), sources.clone(), config.clone());
    let stager = Arc::new(StagingSync::new(store.clone(), queue.clone(), sources, config));
    let org = OrgConfig::new(OrgId::new(common::ORG).unwrap(), MemoryConnector::config("crm"));
    service.provision(&common::admin(), org).await.unwrap();
    assert!(provisioner.run_once().await.unwrap());
    for p in common::profiles(&ConflictPolicy::Merge, "state eq 1") {
        service.put_profile(&common::admin(), &OrgId::new(common::ORG).unwrap(), &p).await.unwrap();
    }
    let (url, server) = common::serve(&service).await;
    Server { url, _server: server, source, service, stager, store }
}

impl Server {
    async fn stage(&self) {
        common::stage(&self.service, &self.stager).await;
    }

    fn token(&self, user: &str) -> String {
        common::token_for(&principal(user))
    }

    fn task(&self, id: &str, owner: &str, amount: i64) {
        let row = Row::new(
            RowId::new(id).unwrap(),
            [
                (col("owner"), Value::from(owner)),
                (col("team"), Value::from("red")),
                (col("state"), Value::Integer(1)),
                (col("amount"), Value::Integer(amount)),
            ],
        );
        self.source.upsert("task", row).unwrap();
    }

    fn device(&self, db: &Path, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_sync-client"))
            .args(["--server", &self.url, "--org", common::ORG, "--db"])
            .arg(db)
            .args(args)
            .env("SYNC_TOKEN", self.token("u1"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    async fn library_client(&self, db: &Path) -> SyncClient {
        SyncClient::open(db, common::http_transport(&self.url, &principal("u1"))).unwrap()
    }
}

/// Rows (by id) of `entity` a device shows, read straight from its file.
fn device_rows(db: &Path, entity: &str) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let key = if entity == "task" { "taskid" } else { "noteid" };
    let amount = if entity == "task" { "amount" } else { "0" };
    let mut stmt = match conn.prepare(&format!("SELECT {key}, {amount} FROM {entity} ORDER BY {key}")) {
        Ok(s) => s,
        Err(_) => return Vec::new(),
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

fn memberships(db: &Path) -> i64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, flags) else { return 0 };
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT count(*) FROM \"sync:membership\"", [], |r| r.get(0)).unwrap_or(0)
}

/// Kills the child with SIGKILL once `ready` says so (or when it exits by
/// itself); returns whether it was killed before finishing.
async fn kill_when(child: &mut Child, rng: &mut Rng, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(status.success(), "device failed: {err}");
            return false;
        }
        if ready() {
            // A random point shortly after the threshold. Microseconds, not
            // milliseconds: a fast server finishes several pushes within a
            // few milliseconds, and a kill that lands after the child is done
            // tests nothing.
            tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return true;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "device stuck");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn expected_tasks(s: &Server) -> Vec<(String, i64)> {
    let who = principal("u1");
    let org = s.store.org(&OrgId::new(common::ORG).unwrap()).await.unwrap();
    let profiles = org.profiles().await.unwrap();
    let schemas = org.schemas().await.unwrap();
    let held: std::collections::BTreeSet<PartitionKey> =
        sync_core::filter::principal_partitions(&who, &profiles, &schemas)
            .unwrap()
            .iter()
            .map(Partition::key)
            .collect();
    let meta = schemas.iter().find(|m| m.name.as_str() == "task").unwrap();
    let planner = MembershipPlanner::new(meta, &profiles).unwrap();
    let mut out = Vec::new();
    for id in org.row_ids(&meta.name, None, 1_000_000).await.unwrap() {
        let staged = org.row(&meta.name, &id).await.unwrap().unwrap();
        if planner.partitions(&staged.row).iter().any(|k| held.contains(k)) {
            let amount = match staged.row.values[&col("amount")] {
                Value::Integer(a) => a,
                _ => 0,
            };
            out.push((id.as_str().to_owned(), amount));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_pull_resumes_without_lost_or_duplicated_rows() {
    let s = server().await;
    for i in 0..3000 {
        s.task(&format!("t{i:05}"), if i % 3 == 0 { "u2" } else { "u1" }, i);
    }
    s.stage().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let mut rng = Rng::new(42);
    let mut kills = 0;
    for round in 0..40 {
        if kills >= 12 {
            break;
        }
        // Server-side changes between runs: updates, moves out of the
        // partition, deletes.
        for _ in 0..20 {
            let i = rng.below(3000);
            match rng.below(3) {
                0 => s.task(&format!("t{i:05}"), "u1", 100_000 + round),
                1 => s.task(&format!("t{i:05}"), "u3", 7),
                _ => {
                    s.source.delete("task", &format!("t{i:05}")).unwrap();
                }
            }
        }
        s.stage().await;
        let before = memberships(&db);
        let mut child = s.device(&db, &["--page-limit", "40", "--commit-rows", "40", "sync"]);
        let threshold = 40 * (1 + rng.below(4) as i64);
        if kill_when(&mut child, &mut rng, || (memberships(&db) - before).abs() >= threshold).await {
            kills += 1;
        }
    }
    eprintln!("{kills} kills mid-pull");
    assert!(kills >= 10, "only {kills} kills landed mid-pull");
    let mut child = s.device(&db, &["sync"]);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        device_rows(&db, "task"),
        expected_tasks(&s).await,
        "the device holds exactly the server's selection"
    );
    let client = s.library_client(&db).await;
    let report = client.sync().await.unwrap();
    assert!(report.complete);
    let status = client.status().await.unwrap();
    assert_eq!(status.repairs, 0, "no checksum ever disagreed");
    assert!(client.verify().await.unwrap().is_empty(), "the local copy is consistent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_push_uploads_every_edit_exactly_once() {
    let s = server().await;
    for i in 0..300 {
        s.task(&format!("t{i:05}"), "u1", i);
    }
    s.stage().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db");
    let mut child = s.device(&db, &["sync"]);
    assert!(child.wait().unwrap().success());
    // 60 offline edits: 50 updates, 10 inserts.
    {
        let client = s.library_client(&db).await;
        for i in 0..50 {
            let id = RowId::new(format!("t{:05}", i * 5)).unwrap();
            client
                .update(&ent("task"), &id, [(col("amount"), Value::Integer(1_000_000 + i))].into())
                .await
                .unwrap();
        }
        for i in 0..10 {
            client
                .insert(
                    &ent("task"),
                    [
                        (col("taskid"), Value::from(format!("new{i:02}"))),
                        (col("owner"), Value::from("u1")),
                        (col("team"), Value::from("red")),
                        (col("state"), Value::Integer(1)),
                        (col("amount"), Value::Integer(2_000_000 + i)),
                    ]
                    .into(),
                )
                .await
                .unwrap();
        }
        assert_eq!(client.pending().await.unwrap().len(), 60);
    }
    let applies_before = s.source.calls(SourceOp::Apply);
    let mut rng = Rng::new(7);
    let mut kills = 0;
    for _ in 0..40 {
        let seen = s.source.calls(SourceOp::Apply);
        let step = 1 + rng.below(4);
        let mut child = s.device(&db, &["--push-batch", "1", "sync"]);
        if kill_when(&mut child, &mut rng, || s.source.calls(SourceOp::Apply) >= seen + step).await {
            kills += 1;
        }
        if s.source.calls(SourceOp::Apply) - applies_before >= 60 {
            break;
        }
    }
    eprintln!("{kills} kills mid-push");
    assert!(kills >= 10, "only {kills} kills landed mid-push");
    let mut child = s.device(&db, &["sync"]);
    assert!(child.wait().unwrap().success());
    assert_eq!(s.source.calls(SourceOp::Apply) - applies_before, 60, "every edit applied exactly once");
    for i in 0..50 {
        let row = s.source.row("task", &format!("t{:05}", i * 5)).unwrap();
        assert_eq!(row.values[&col("amount")], Value::Integer(1_000_000 + i));
    }
    for i in 0..10 {
        assert!(s.source.row("task", &format!("new{i:02}")).is_some());
    }
    let client = s.library_client(&db).await;
    assert!(client.pending().await.unwrap().is_empty(), "nothing left pending");
    assert!(client.conflicts().await.unwrap().is_empty(), "no edit refused");
    client.sync().await.unwrap();
    assert_eq!(device_rows(&db, "task"), expected_tasks(&s).await);
}
