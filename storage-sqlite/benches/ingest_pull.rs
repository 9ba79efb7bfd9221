//! Ingest and pull throughput of the SQLite staging store beside raw
//! rusqlite on the same rows, measured in the same run.
//!
//! ```sh
//! cargo bench -p storage-sqlite --bench ingest_pull
//! SQLITE_BENCH_ROWS=200000 cargo bench -p storage-sqlite --bench ingest_pull
//! ```
//!
//! Environment: `SQLITE_BENCH_ROWS` (default 1,000,000), `SQLITE_BENCH_PAGE`
//! (rows per change page, default 5,000), `SQLITE_BENCH_PULL_PAGE` (ops per
//! pull, default 1,000), `SQLITE_BENCH_CACHE_MIB` (page cache of every
//! connection, raw and store alike, default 64), `SQLITE_BENCH_MMAP`
//! (`mmap_size` in bytes of every connection, raw and store alike; default
//! the store's), `SQLITE_BENCH_OWNERS` (distinct owners, default 100),
//! `SQLITE_BENCH_DIR` (where the databases go; default a temporary
//! directory), `SQLITE_BENCH_REPEAT` (times each pull and each raw scan is
//! run, the fastest reported; default 3), and a store option to try:
//! `SQLITE_BENCH_WAL_PAGES` (`wal_autocheckpoint`, default the store's),
//! and a worker option: `SQLITE_BENCH_COMMIT_BYTES` (`commit_bytes`).
//!
//! The process allocates with mimalloc, as the embedded server does: a pull
//! page is built on a blocking reader thread and freed on the caller's, and
//! glibc's malloc makes those cross-thread frees cost about a tenth of a
//! pull. Raw rusqlite runs on the same allocator.
//!
//! Scenario: CRM-like `account` rows (uuid key + 8 typed columns); profile
//! `sales` with item `active` (`statecode eq 0`, 90 % of rows) and item
//! `mine` (`ownerid eq @user.id`, one partition per owner).
//! * ingest (the first lines): the rows reach staging as they do in a
//!   deployment, through the staging worker: `StagingSync::sync_entity`
//!   reads them from a source that hands out pages made before timing, of
//!   the worker's default page size (1,000 rows), merges pages into
//!   transactions of up to `commit_bytes` (its default, or
//!   `SQLITE_BENCH_COMMIT_BYTES`) and reads the next page while a batch
//!   commits (rows + membership of both items + checksums + token per
//!   transaction); then the store copies its WAL back into the database
//!   file (`SqliteStagingStore::checkpoint`). Raw rusqlite upserts the same
//!   rows with one prepared statement in one transaction into a table with
//!   an indexed version column, and its commit copies its WAL back
//!   (SQLite's autocheckpoint, and a last passive checkpoint). Both timings
//!   end with every row in the database file, and no pull overlaps a copy
//!   still running. New rows first, then every row again with changed
//!   values (owners and states move), in random order.
//! * apply_changes: the store alone, in another org, handed the same rows
//!   in pages of `SQLITE_BENCH_PAGE` rows, each its own transaction;
//!   beside the same raw single transaction, and beside raw rusqlite
//!   committing every `SQLITE_BENCH_PAGE` rows (in a database of its own),
//!   which shows what a commit per page costs.
//! * pull: one user pulls `active` and `mine` from the start in pages, rows
//!   decoded into typed values; raw rusqlite scans the table ordered by the
//!   indexed version column, reading every column into owned values. Reads
//!   change nothing, so each is repeated and the fastest run counts, on both
//!   sides alike: this machine's noise is ±10–15 % from one run to the next.
//!
//! Each write phase also reports the bytes the process handed to `write`
//! calls (WAL frames and checkpoint copies alike): unlike its time, that
//! does not drift with the machine, and it shows what per-page commits of
//! random updates cost.
//!
//! Each phase runs on raw rusqlite and then at once on the store, and the
//! reads of one state take turns (raw, store, raw, store, ...): the speed
//! of the machines these runs share drifts over minutes, and a ratio of two
//! timings taken minutes apart measures that drift as much as the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::*;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use storage_sqlite::StoreOptions;
use sync_core::engine::{RunOutcome, SourceCache, StagingSync, WorkerConfig};
use sync_core::staging::PullPlan;
use sync_core::{
    ChangePage, ChangeToken, EntityMetadata, EntityName, MetadataSource, Mutation, OrgSourceConfig,
    PartitionKey, Principal, Row, Seq, SourceConnector, StagingStore, SyncWorkItem, Value,
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// The same value conversion a hand-written rusqlite program would do.
fn raw_bind(v: &Value) -> ToSqlOutput<'_> {
    match v {
        Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
        Value::String(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        Value::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
        Value::Boolean(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        Value::Float(f) => ToSqlOutput::Owned(SqlValue::Real(*f)),
        other => ToSqlOutput::Owned(SqlValue::Text(other.canonical_text())),
    }
}

const COLUMNS: [&str; 8] = [
    "name",
    "accountnumber",
    "revenue",
    "numberofemployees",
    "statecode",
    "ownerid",
    "modifiedon",
    "creditonhold",
];

/// A new raw database at `path` with the `raw` table.
fn raw_create(path: &std::path::Path, options: &StoreOptions) -> rusqlite::Connection {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let conn = raw_open(path, options);
    conn.execute_batch(
        "CREATE TABLE raw (accountid TEXT PRIMARY KEY, name TEXT, accountnumber TEXT, revenue TEXT, \
         numberofemployees INTEGER, statecode INTEGER, ownerid TEXT, modifiedon TEXT, creditonhold INTEGER, \
         version INTEGER NOT NULL); CREATE INDEX raw_version ON raw (version);",
    )
    .unwrap();
    conn
}

fn raw_open(path: &std::path::Path, options: &StoreOptions) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{}; PRAGMA mmap_size = {};",
        options.cache_size_kib, options.mmap_size
    ))
    .unwrap();
    conn
}

/// Upserts `rows` with one prepared statement, committing every
/// `commit_every` rows (all in one transaction when that is `rows.len()`
/// or more), and ends with every row in the database file.
fn raw_upsert(conn: &mut rusqlite::Connection, rows: &[Row], first_version: i64, commit_every: usize) {
    let every = commit_every.max(1);
    for (chunk, first) in rows.chunks(every).zip((first_version..).step_by(every)) {
        raw_upsert_one_transaction(conn, chunk, first);
    }
    // The commit checkpoints as the WAL passes `wal_autocheckpoint` pages;
    // what is left is copied here, as the store's side does.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
}

fn raw_upsert_one_transaction(conn: &mut rusqlite::Connection, rows: &[Row], first_version: i64) {
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO raw (accountid, name, accountnumber, revenue, numberofemployees, statecode, ownerid, \
                 modifiedon, creditonhold, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (accountid) DO UPDATE SET name = excluded.name, accountnumber = excluded.accountnumber, \
                 revenue = excluded.revenue, numberofemployees = excluded.numberofemployees, \
                 statecode = excluded.statecode, ownerid = excluded.ownerid, modifiedon = excluded.modifiedon, \
                 creditonhold = excluded.creditonhold, version = excluded.version",
            )
            .unwrap();
        for (n, row) in rows.iter().enumerate() {
            stmt.raw_bind_parameter(1, row.id.as_str()).unwrap();
            for (i, c) in COLUMNS.iter().enumerate() {
                stmt.raw_bind_parameter(i + 2, raw_bind(&row.values[*c])).unwrap();
            }
            stmt.raw_bind_parameter(10, first_version + n as i64).unwrap();
            stmt.raw_execute().unwrap();
        }
    }
    tx.commit().unwrap();
}

/// One raw row read back: owned values, as a hand-written reader keeps them.
#[allow(dead_code)]
struct RawRow {
    id: String,
    text: [Option<String>; 5],
    ints: [Option<i64>; 3],
    version: i64,
}

fn raw_scan(conn: &rusqlite::Connection) -> (usize, Duration) {
    let start = Instant::now();
    let mut stmt = conn
        .prepare(
            "SELECT accountid, name, accountnumber, revenue, ownerid, modifiedon, numberofemployees, statecode, \
             creditonhold, version FROM raw ORDER BY version",
        )
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut n = 0;
    let mut keep = 0usize;
    while let Some(r) = rows.next().unwrap() {
        let row = RawRow {
            id: r.get(0).unwrap(),
            text: [
                r.get(1).unwrap(),
                r.get(2).unwrap(),
                r.get(3).unwrap(),
                r.get(4).unwrap(),
                r.get(5).unwrap(),
            ],
            ints: [r.get(6).unwrap(), r.get(7).unwrap(), r.get(8).unwrap()],
            version: r.get(9).unwrap(),
        };
        keep = keep.wrapping_add(row.id.len() + row.version as usize);
        n += 1;
    }
    std::hint::black_box(keep);
    (n, start.elapsed())
}

/// The rows as change pages of `page` rows, made before the clock starts:
/// the store is timed on staging pages it is handed, as raw rusqlite is
/// timed on rows it is handed (copying the rows into pages is the caller's
/// work, not the store's).
fn pages(rows: Vec<Row>, page: usize, tag: &str) -> Vec<ChangePage> {
    let mut out = Vec::with_capacity(rows.len().div_ceil(page));
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let i = out.len();
        out.push(ChangePage {
            upserts: rows.by_ref().take(page).collect(),
            deletes: vec![],
            next_token: Some(ChangeToken(format!("{tag}-{i}"))),
            more: true,
        });
    }
    out
}

/// A source that hands out change pages made beforehand, in order, each
/// only for the token the previous one gave: the staging worker is timed
/// on staging pages, not on reading a system of record.
#[derive(Default)]
struct PageSource {
    pages: Mutex<VecDeque<ChangePage>>,
    last: Mutex<Option<ChangeToken>>,
}

impl PageSource {
    /// Makes the rows the changes that follow, as pages of `page` rows; the
    /// last says no more follow.
    fn load(&self, rows: Vec<Row>, page: usize, tag: &str) {
        let mut pages = pages(rows, page, tag);
        if let Some(last) = pages.last_mut() {
            last.more = false;
        }
        *self.pages.lock().unwrap() = pages.into();
    }
}

#[async_trait::async_trait]
impl MetadataSource for PageSource {
    async fn entities(&self) -> sync_core::Result<Vec<EntityMetadata>> {
        Ok(vec![account_meta()])
    }

    async fn changes(
        &self,
        _entity: &EntityName,
        token: Option<ChangeToken>,
        _page_size: usize,
    ) -> sync_core::Result<ChangePage> {
        let mut last = self.last.lock().unwrap();
        assert_eq!(token, *last, "pages are read in order");
        let page = self.pages.lock().unwrap().pop_front().unwrap_or_default();
        last.clone_from(&page.next_token);
        Ok(page)
    }

    async fn apply(&self, _entity: &EntityName, _mutation: &Mutation) -> sync_core::Result<Option<Row>> {
        Err(sync_core::Error::invalid("the bench source takes no writes"))
    }
}

/// Connects every org to the one source.
struct Connector(Arc<PageSource>);

#[async_trait::async_trait]
impl SourceConnector for Connector {
    async fn connect(&self, _config: &OrgSourceConfig) -> sync_core::Result<Arc<dyn MetadataSource>> {
        Ok(self.0.clone())
    }
}

async fn ingest(staging: &dyn sync_core::OrgStaging, pages: Vec<ChangePage>) -> Duration {
    let start = Instant::now();
    for p in pages {
        staging.apply_changes(&entity("account"), p).await.unwrap();
    }
    start.elapsed()
}

async fn pull_everything(
    staging: &dyn sync_core::OrgStaging,
    keys: &[PartitionKey],
    page: usize,
) -> (usize, Duration) {
    let start = Instant::now();
    let mut positions: Vec<(PartitionKey, Seq)> = keys.iter().map(|k| (k.clone(), Seq::ZERO)).collect();
    let mut n = 0;
    loop {
        let p = staging
            .pull(&PullPlan { partitions: positions.clone(), max_rows: page, max_bytes: 16 << 20 })
            .await
            .unwrap();
        n += p.changes.iter().filter(|c| c.row.is_some()).count();
        positions = p.positions;
        if !p.more {
            break;
        }
    }
    (n, start.elapsed())
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`;
/// zero where that is unavailable. Reported beside wall time because the
/// machines these runs share are noisy.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Duration::ZERO };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return Duration::ZERO };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of the file (utime, stime) are 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Bytes this process has handed to `write` calls so far (`wchar` of
/// `/proc/self/io`, every thread counted); zero where that is unavailable.
/// Unlike a time it does not drift with the machine, so it shows a
/// phase's write amplification even on a noisy run.
fn bytes_written() -> u64 {
    let Ok(io) = std::fs::read_to_string("/proc/self/io") else { return 0 };
    io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (w, c) = (Instant::now(), cpu_time());
    let out = f();
    (out, w.elapsed(), cpu_time() - c)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// One measured phase: rows handled, wall time, CPU time, bytes written.
#[derive(Debug)]
struct Phase {
    rows: usize,
    wall: Duration,
    cpu: Duration,
    written: u64,
}

/// Runs and measures a phase that writes `rows` rows.
fn phase(rows: usize, f: impl FnOnce()) -> Phase {
    let before = bytes_written();
    let ((), wall, cpu) = timed(f);
    Phase { rows, wall, cpu, written: bytes_written().saturating_sub(before) }
}

/// Runs the reads in turns, `repeat` rounds of one run each, and keeps the
/// fastest run of each read (each returns the rows it read). Taking turns
/// puts the store's reads and raw rusqlite's in the same stretch of time:
/// this machine's speed drifts by 10–20 % over minutes, and reads timed
/// minutes apart would compare two machines.
fn best_in_turns(repeat: usize, reads: &mut [&mut dyn FnMut() -> usize]) -> Vec<Phase> {
    let mut best: Vec<Option<Phase>> = reads.iter().map(|_| None).collect();
    for _ in 0..repeat.max(1) {
        for (read, best) in reads.iter_mut().zip(&mut best) {
            let (rows, wall, cpu) = timed(&mut **read);
            if best.as_ref().is_none_or(|b| wall < b.wall) {
                *best = Some(Phase { rows, wall, cpu, written: 0 });
            }
        }
    }
    best.into_iter().map(|b| b.expect("at least one run")).collect()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let n = env("SQLITE_BENCH_ROWS", 1_000_000);
    let page = env("SQLITE_BENCH_PAGE", 5_000);
    let pull_page = env("SQLITE_BENCH_PULL_PAGE", 1_000);
    let cache_mib = env("SQLITE_BENCH_CACHE_MIB", 64);
    let owners = env("SQLITE_BENCH_OWNERS", 100) as u64;
    let repeat = env("SQLITE_BENCH_REPEAT", 3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("SQLITE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().into());
    std::fs::create_dir_all(&dir).unwrap();

    let fresh: Vec<Row> = (0..n as u64).map(|i| account_row(i, 0, owners)).collect();
    let mut updated: Vec<Row> = (0..n as u64).map(|i| account_row(i, 1, owners)).collect();
    shuffle(&mut updated, 0x9e37_79b9_7f4a_7c15);

    let mut options = StoreOptions { cache_size_kib: (cache_mib * 1024) as u32, ..StoreOptions::default() };
    if let Ok(bytes) = std::env::var("SQLITE_BENCH_MMAP") {
        options.mmap_size = bytes.parse().unwrap();
    }
    if let Ok(pages) = std::env::var("SQLITE_BENCH_WAL_PAGES") {
        options.wal_autocheckpoint = pages.parse().unwrap();
    }
    println!(
        "rows {n}, change pages of {page}, pull pages of {pull_page}, page cache {cache_mib} MiB and mmap {} MiB \
         per connection, {owners} owners, reads best of {repeat}, in {}",
        options.mmap_size >> 20,
        dir.display()
    );

    // Both sides set up; then each phase runs on raw rusqlite and right
    // after on the store, so both meet the machine in the same state.
    let mut raw = raw_create(&dir.join("raw.sqlite"), &options);
    let mut raw_paged = raw_create(&dir.join("raw-paged.sqlite"), &options);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store_dir = dir.join("store");
    let _ = std::fs::remove_dir_all(&store_dir);
    let profile = sales_profile();
    let (store, staging) = rt.block_on(async {
        let store = Arc::new(open_store(&store_dir, options).await);
        store.create_org(&org_config("bench")).await.unwrap();
        let staging = store.org(&org_id("bench")).await.unwrap();
        staging.apply_schema(&account_meta()).await.unwrap();
        staging.put_profile(&profile).await.unwrap();
        // The worker's org: the same schema (the worker finds it unchanged) and profile.
        store.create_org(&org_config("engine")).await.unwrap();
        let engine = store.org(&org_id("engine")).await.unwrap();
        engine.apply_schema(&account_meta()).await.unwrap();
        engine.put_profile(&profile).await.unwrap();
        (store, staging)
    });
    let mut worker = WorkerConfig::default();
    if let Ok(bytes) = std::env::var("SQLITE_BENCH_COMMIT_BYTES") {
        worker.commit_bytes = bytes.replace('_', "").parse().unwrap();
    }
    let worker_page = worker.page_size;
    let source = Arc::new(PageSource::default());
    let stager = StagingSync::new(
        store.clone(),
        Arc::new(sync_core::memory::MemoryQueue::new()),
        Arc::new(SourceCache::new(Arc::new(Connector(source.clone())))),
        worker.clone(),
    );
    let item = SyncWorkItem {
        org: org_id("engine"),
        entity: entity("account"),
        source: org_config("engine").source,
    };
    let through_worker = |rows: Vec<Row>, tag: &str| {
        source.load(rows, worker_page, tag);
        let mut commits = 0;
        let measured = phase(n, || {
            rt.block_on(async {
                match stager.sync_entity(&item, None, None).await.unwrap() {
                    RunOutcome::Synced { rows, commits: c, .. } => {
                        assert_eq!(rows, n as u64);
                        commits = c;
                    }
                    other => panic!("{other:?}"),
                }
                store.checkpoint(&org_id("engine")).await.unwrap();
            })
        });
        (measured, commits)
    };
    let principal = Principal::new(owner(0, owners).to_string(), org_id("bench")).with_role("sales");
    let keys: Vec<PartitionKey> =
        sync_core::filter::principal_partitions(&principal, &[profile], &[account_meta()])
            .unwrap()
            .iter()
            .map(sync_core::Partition::key)
            .collect();
    let s = staging.as_ref();
    let ingest_into_store = |pages: Vec<ChangePage>| {
        phase(n, || {
            rt.block_on(async {
                ingest(s, pages).await;
                store.checkpoint(&org_id("bench")).await.unwrap();
            })
        })
    };

    // New rows.
    let raw_ingest = phase(n, || {
        raw_upsert(&mut raw, &fresh, 1, n);
    });
    let raw_paged_ingest = phase(n, || {
        raw_upsert(&mut raw_paged, &fresh, 1, page);
    });
    let ours_ingest = ingest_into_store(pages(fresh.clone(), page, "a"));
    let (worker_ingest, worker_ingest_commits) = through_worker(fresh, "e");
    let [raw_scan_fresh, pull_fresh, pull_active]: [Phase; 3] = best_in_turns(
        repeat,
        &mut [
            &mut || raw_scan(&raw).0,
            &mut || rt.block_on(pull_everything(s, &keys, pull_page)).0,
            &mut || rt.block_on(pull_everything(s, &keys[..1], pull_page)).0,
        ],
    )
    .try_into()
    .unwrap();
    assert_eq!(raw_scan_fresh.rows, n);

    // Every row again, changed, in random order.
    let raw_update = phase(n, || {
        raw_upsert(&mut raw, &updated, n as i64 + 1, n);
    });
    let raw_paged_update = phase(n, || {
        raw_upsert(&mut raw_paged, &updated, n as i64 + 1, page);
    });
    let ours_update = ingest_into_store(pages(updated.clone(), page, "b"));
    let (worker_update, worker_update_commits) = through_worker(updated, "f");
    let [raw_scan_updated, pull_updated]: [Phase; 2] = best_in_turns(
        repeat,
        &mut [&mut || raw_scan(&raw).0, &mut || rt.block_on(pull_everything(s, &keys, pull_page)).0],
    )
    .try_into()
    .unwrap();
    assert_eq!(raw_scan_updated.rows, n);
    drop((raw, raw_paged, staging, stager, store));

    println!(
        "\ningest through the staging worker: source pages of {worker_page} rows, transactions of up to {} MiB \
         ({worker_ingest_commits} and {worker_update_commits} of them); apply_changes: the store alone, handed \
         pages of {page} rows, each its own transaction",
        worker.commit_bytes >> 20
    );
    println!(
        "{:<40} {:>11} {:>11} {:>6}   {:>11} {:>11} {:>6}",
        "", "store", "raw", "ratio", "store/cpu", "raw/cpu", "ratio"
    );
    let line = |what: &str, ours: &Phase, raw: &Phase| {
        let (ow, rw) = (rate(ours.rows, ours.wall), rate(raw.rows, raw.wall));
        let (oc, rc) = (rate(ours.rows, ours.cpu), rate(raw.rows, raw.cpu));
        println!(
            "{what:<40} {ow:>11.0} {rw:>11.0} {:>6.2}   {oc:>11.0} {rc:>11.0} {:>6.2}",
            ow / rw,
            oc / rc
        );
    };
    line("ingest, new rows (rows/s)", &worker_ingest, &raw_ingest);
    line("ingest, updates in random order", &worker_update, &raw_update);
    line("apply_changes, new rows", &ours_ingest, &raw_ingest);
    line("apply_changes, updates in random order", &ours_update, &raw_update);
    line(&format!("pull, active + mine ({} rows)", pull_fresh.rows), &pull_fresh, &raw_scan_fresh);
    line(&format!("pull, active only ({} rows)", pull_active.rows), &pull_active, &raw_scan_fresh);
    line(&format!("pull after updates ({} rows)", pull_updated.rows), &pull_updated, &raw_scan_updated);
    println!("\napply_changes beside raw rusqlite committing every {page} rows, as the store then commits:");
    line("apply_changes, new rows", &ours_ingest, &raw_paged_ingest);
    line("apply_changes, updates in random order", &ours_update, &raw_paged_update);
    println!(
        "\nwall: raw insert {:.2?}, update {:.2?}, scan {:.2?} / {:.2?}; worker new {:.2?}, update {:.2?}; \
         apply_changes new {:.2?}, update {:.2?}, pull {:.2?} / {:.2?} / {:.2?}; raw committing every {page} rows: \
         insert {:.2?}, update {:.2?}",
        raw_ingest.wall,
        raw_update.wall,
        raw_scan_fresh.wall,
        raw_scan_updated.wall,
        worker_ingest.wall,
        worker_update.wall,
        ours_ingest.wall,
        ours_update.wall,
        pull_fresh.wall,
        pull_active.wall,
        pull_updated.wall,
        raw_paged_ingest.wall,
        raw_paged_update.wall
    );
    let mib = |p: &Phase| p.written as f64 / f64::from(1 << 20);
    println!(
        "written (MiB, WAL and checkpoints): raw insert {:.0}, update {:.0}; apply_changes new {:.0}, update {:.0}; \
         raw committing every {page} rows: insert {:.0}, update {:.0}; through the worker: insert {:.0}, \
         update {:.0}",
        mib(&raw_ingest),
        mib(&raw_update),
        mib(&ours_ingest),
        mib(&ours_update),
        mib(&raw_paged_ingest),
        mib(&raw_paged_update),
        mib(&worker_ingest),
        mib(&worker_update)
    );
}
