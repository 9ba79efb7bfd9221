//! Crash safety under `kill -9`.
//!
//! A child process (this test binary, re-invoked to run `crash_child`)
//! ingests large change pages into an org and, at the same time, consumes a
//! queue kept in the same `control.sqlite`. The parent kills it with SIGKILL
//! at random moments, reopens the data directory and checks:
//! * the staged rows are exactly those of the pages up to the committed
//!   source token (replayed in a model), no more, no less;
//! * membership and checksums equal a recomputation from those rows;
//! * no queue message is lost: each is either in the consumer's log of
//!   handled messages or still in the queue, and at the end every message
//!   still queued (leases of killed consumers included) is delivered.
//!
//! `CRASH_ITERATIONS` (default 20) sets the number of kills; `CRASH_SEED`
//! replays a run (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use storage_sqlite::{QueueOptions, SqliteQueue, StoreOptions};
use sync_core::{ChangePage, ChangeToken, Message, QueueName, Row, RowId, StagingStore, WorkQueue};

const UNIVERSE: u64 = 4000;
const PAGE_ROWS: u64 = 1500;
const OWNERS: u64 = 7;
const QUEUE: &str = "crash";
const DONE_LOG: &str = "consumed.log";

/// Change page `k` (k ≥ 1): 1,500 upserts over a sliding window of the
/// id universe with values of generation `k`, then 40 deletes, token `p{k}`.
fn crash_page(k: u64) -> ChangePage {
    let start = (k * 733) % UNIVERSE;
    let upserts = (0..PAGE_ROWS).map(|j| account_row((start + j) % UNIVERSE, k, OWNERS)).collect();
    let deletes = (0..40).map(|j| account_row((start * 3 + j * 97) % UNIVERSE, 0, OWNERS).id).collect();
    ChangePage { upserts, deletes, next_token: Some(ChangeToken(format!("p{k}"))), more: true }
}

fn page_of(token: Option<ChangeToken>) -> u64 {
    token.map(|t| t.0.trim_start_matches('p').parse().unwrap()).unwrap_or(0)
}

/// The rows after pages 1..=k, as the store should hold them, kept
/// incrementally (the committed token never goes back).
#[derive(Default)]
struct Model {
    page: u64,
    rows: BTreeMap<RowId, Row>,
}

impl Model {
    fn advance_to(&mut self, k: u64) {
        assert!(k >= self.page, "the committed token went back from p{} to p{k}", self.page);
        let meta = account_meta();
        while self.page < k {
            self.page += 1;
            let page = crash_page(self.page);
            for r in page.upserts {
                let r = meta.check_row(r).unwrap();
                self.rows.insert(r.id.clone(), r);
            }
            for id in page.deletes {
                self.rows.remove(&id);
            }
        }
    }
}

/// The child: ingest pages and consume the queue until killed.
#[test]
#[ignore = "the child process of sigkill_loses_and_duplicates_nothing; runs only when it sets CRASH_CHILD_DIR"]
fn crash_child() {
    let Some(dir) = std::env::var_os("CRASH_CHILD_DIR") else { return };
    let dir = std::path::PathBuf::from(dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let store = open_store(&dir, StoreOptions::default()).await;
        let staging = store.org(&org_id("crash")).await.unwrap();
        let queue =
            SqliteQueue::open_in_dir(&dir, QueueOptions { max_deliveries: 1000, ..QueueOptions::default() })
                .await
                .unwrap();
        println!("started");
        std::io::stdout().flush().unwrap();
        let ingest = tokio::spawn(async move {
            loop {
                let k = page_of(staging.source_token(&entity("account")).await.unwrap()) + 1;
                staging.apply_changes(&entity("account"), crash_page(k)).await.unwrap();
            }
        });
        let consume = tokio::spawn(async move {
            let name = QueueName::new(QUEUE).unwrap();
            let mut log =
                std::fs::OpenOptions::new().create(true).append(true).open(dir.join(DONE_LOG)).unwrap();
            loop {
                match queue.receive(&name, Duration::from_secs(2)).await.unwrap() {
                    Some(d) => {
                        // Handle (log), then complete: a kill in between
                        // redelivers the message, which is allowed (as is a
                        // lease lost on a slow machine).
                        // One write per line: a kill between two writes
                        // would glue the next line to this one and hide a
                        // handled message from the check.
                        let mut line = d.body.clone();
                        line.push(b'\n');
                        log.write_all(&line).unwrap();
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        let _ = queue.complete(&d).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        let _ = tokio::join!(ingest, consume);
    });
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The page of the committed token, read straight from the org's file
/// while the child has the store open.
fn committed_page(dir: &Path) -> u64 {
    let path = dir.join("orgs").join("crash.sqlite");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let token: Option<String> =
        conn.query_row("SELECT token FROM _sync_tokens WHERE entity = 'account'", [], |r| r.get(0)).ok();
    page_of(token.map(ChangeToken))
}

fn queued_bodies(dir: &Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(dir.join("control.sqlite")).unwrap();
    let mut stmt = conn.prepare("SELECT body FROM queue_messages WHERE queue = ?1").unwrap();
    let bodies: Vec<Vec<u8>> =
        stmt.query_map([QUEUE], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    let dead: i64 = conn
        .query_row("SELECT count(*) FROM queue_dead_letters WHERE queue = ?1", [QUEUE], |r| r.get(0))
        .unwrap();
    assert_eq!(dead, 0, "no message was dead-lettered");
    bodies.into_iter().map(|b| String::from_utf8(b).unwrap()).collect()
}

fn consumed(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join(DONE_LOG))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_and_duplicates_nothing() {
    let iterations: usize = std::env::var("CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed = std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("crash test: {iterations} kills, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path(), StoreOptions::default()).await;
        store.create_org(&org_config("crash")).await.unwrap();
        let staging = store.org(&org_id("crash")).await.unwrap();
        staging.apply_schema(&account_meta()).await.unwrap();
        staging.put_profile(&sales_profile()).await.unwrap();
    }
    let queue_name = QueueName::new(QUEUE).unwrap();
    let mut sent = BTreeSet::new();
    let mut pages_seen = BTreeSet::new();
    let mut model = Model::default();
    let exe = std::env::current_exe().unwrap();
    for iteration in 0..iterations {
        {
            let queue = SqliteQueue::open_in_dir(dir.path(), QueueOptions::default()).await.unwrap();
            for i in 0..25 {
                let body = format!("m{iteration}-{i}");
                queue
                    .send(&queue_name, Message { body: body.clone().into_bytes(), ..Message::default() })
                    .await
                    .unwrap();
                sent.insert(body);
            }
        }
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env("CRASH_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // Most kills land while pages are being written: wait for the child
        // to start, then a random while; some land during start-up.
        let early = rng.next().is_multiple_of(8);
        if !early {
            let mut line = String::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !line.contains("started") {
                line.clear();
                assert!(out.read_line(&mut line).unwrap() > 0, "the child exited before starting");
                assert!(Instant::now() < deadline, "the child did not start");
            }
        }
        if !early && iteration % 3 == 0 {
            // Guarantee progress on a slow machine: wait for a page to commit.
            let before = committed_page(dir.path());
            let deadline = Instant::now() + Duration::from_secs(120);
            while committed_page(dir.path()) == before {
                assert!(Instant::now() < deadline, "no page committed in two minutes");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(if early {
            rng.next() % 150
        } else {
            50 + rng.next() % 900
        }))
        .await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // Reopen and check.
        let store = open_store(dir.path(), StoreOptions::default()).await;
        let staging = store.org(&org_id("crash")).await.unwrap();
        let k = page_of(staging.source_token(&entity("account")).await.unwrap());
        pages_seen.insert(k);
        model.advance_to(k);
        let expected = &model.rows;
        let staged = all_rows(staging.as_ref(), &entity("account")).await;
        assert_eq!(
            staged.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "iteration {iteration}: staged ids are those of pages 1..={k}"
        );
        for (id, (row, _)) in &staged {
            assert_eq!(row, &expected[id], "iteration {iteration}: row {id} is as page {k} left it");
        }
        assert_membership_matches(&store, &org_id("crash"), &account_meta(), &sales_profile(), &staged);
        let status = staging.status().await.unwrap();
        assert_eq!(status.entities[0].rows, expected.len() as u64, "the row count matches");
        drop((staging, store));

        let handled = consumed(dir.path());
        let queued = queued_bodies(dir.path());
        let lost: Vec<&String> =
            sent.iter().filter(|b| !handled.contains(*b) && !queued.contains(*b)).collect();
        assert!(lost.is_empty(), "iteration {iteration}: messages lost: {lost:?}");
        println!(
            "kill {iteration}: token p{k}, {} rows, {} handled, {} queued",
            expected.len(),
            handled.len(),
            queued.len()
        );
    }
    assert!(pages_seen.len() > 1, "the kills landed at different points of the ingestion: {pages_seen:?}");

    // Every message still queued — leased by a killed consumer included —
    // is delivered once its lease runs out.
    let queue = SqliteQueue::open_in_dir(dir.path(), QueueOptions::default()).await.unwrap();
    let mut drained = BTreeSet::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(1) {
        match queue.receive(&queue_name, Duration::from_secs(30)).await.unwrap() {
            Some(d) => {
                drained.insert(String::from_utf8(d.body.clone()).unwrap());
                queue.complete(&d).await.unwrap();
                idle_since = Instant::now();
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let handled = consumed(dir.path());
    let missing: Vec<&String> =
        sent.iter().filter(|b| !handled.contains(*b) && !drained.contains(*b)).collect();
    assert!(missing.is_empty(), "messages never delivered: {missing:?}");
    assert_eq!(queue.depth(&queue_name).await.unwrap(), Default::default());
}
