//! Initial sync of CRM-like rows into a fresh device database over
//! loopback HTTP, beside the physical pipeline on the same rows measured in
//! the same run (PERFORMANCE.md): SQLite scan → JSON → HTTP pages of 1,000 →
//! JSON parse → prepared insert in one transaction, fetch overlapped with
//! insert.
//!
//! The sync server is this process: `SyncService` over `storage-sqlite`
//! behind transport-http's router. The device is the `sync-client` binary
//! (`sync --json`) in a child process, so its peak RSS is its own; the
//! server's RSS is sampled while the device syncs.
//!
//! ```text
//! cargo bench -p sync-client --features cli --bench initial_sync            # 1,000,000 rows
//! BENCH_ROWS=200000 BENCH_ROUNDS=5 cargo bench -p sync-client --features cli --bench initial_sync
//! BENCH_COMPRESSION=1 …   # keep the router's response compression (off by default: the raw pipeline sends plain JSON)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use storage_sqlite::SqliteStagingStore;
use sync_core::memory::{MemoryConnector, MemoryQueue};
use sync_core::*;
use transport_http::{DevToken, HttpConfig, JwtAuthenticator};

const SECRET: &[u8] = b"bench secret: thirty-two bytes or more!!";
const PAGE: usize = 1000;

fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}

fn schema() -> EntityMetadata {
    let t = [
        ("accountid", AttributeType::Uuid),
        ("name", AttributeType::String),
        ("revenue", AttributeType::Decimal),
        ("employees", AttributeType::Integer),
        ("active", AttributeType::Boolean),
        ("createdon", AttributeType::DateTime),
        ("ownerid", AttributeType::Uuid),
        ("rating", AttributeType::Float),
        ("city", AttributeType::String),
    ];
    EntityMetadata::new(
        EntityName::new("account").unwrap(),
        col("accountid"),
        t.iter().map(|(n, ty)| Attribute::new(col(n), ty.clone())).collect(),
    )
    .unwrap()
}

/// Row `i`: a random-looking UUID key and eight typed columns.
fn values(i: u64) -> Vec<Value> {
    let id = uuid::Uuid::from_u64_pair(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555, i);
    vec![
        Value::Uuid(id),
        Value::String(format!("Account {i} Holdings")),
        Value::Decimal(rust_decimal::Decimal::new((i * 37 % 100_000_000) as i64, 2)),
        Value::Integer((i % 5000) as i64),
        Value::Boolean(i.is_multiple_of(3)),
        Value::from("2024-03-05T10:20:30Z").coerce(&AttributeType::DateTime).unwrap(),
        Value::Uuid(uuid::Uuid::from_u64_pair(7, i % 50)),
        Value::Float((i % 100) as f64 / 10.0),
        Value::String(["Seattle", "Paris", "Lagos", "Osaka"][(i % 4) as usize].into()),
    ]
}

fn rss_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sqlite(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "cache_size", -64 * 1024).unwrap();
    conn
}

const RAW_TABLE: &str = "CREATE TABLE account (accountid TEXT PRIMARY KEY, name TEXT, revenue TEXT, \
     employees INTEGER, active INTEGER, createdon TEXT, ownerid TEXT, rating REAL, city TEXT, version INTEGER NOT NULL);
     CREATE INDEX account_version ON account (version);";

/// The raw source: the same rows in a plain table with an indexed version.
fn raw_source(path: &Path, rows: u64) {
    let mut conn = sqlite(path);
    conn.execute_batch(RAW_TABLE).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut stmt =
            tx.prepare("INSERT INTO account VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").unwrap();
        for i in 0..rows {
            let v = values(i);
            let p: Vec<rusqlite::types::Value> = v
                .iter()
                .map(|v| match v {
                    Value::Integer(n) => rusqlite::types::Value::Integer(*n),
                    Value::Boolean(b) => rusqlite::types::Value::Integer(i64::from(*b)),
                    Value::Float(f) => rusqlite::types::Value::Real(*f),
                    other => rusqlite::types::Value::Text(other.canonical_text()),
                })
                .chain(std::iter::once(rusqlite::types::Value::Integer(i as i64 + 1)))
                .collect();
            stmt.execute(rusqlite::params_from_iter(p)).unwrap();
        }
    }
    tx.commit().unwrap();
}

#[derive(serde::Deserialize)]
struct RawQuery {
    after: i64,
}

/// A raw row: key and eight typed columns.
type RawRow = (String, String, String, i64, bool, String, String, f64, String);

#[derive(serde::Serialize, serde::Deserialize)]
struct RawPage {
    rows: Vec<RawRow>,
    last: i64,
}

/// The raw server: a keyset page of 1,000 rows by version, as JSON.
async fn raw_page(
    State(db): State<Arc<Mutex<rusqlite::Connection>>>,
    Query(q): Query<RawQuery>,
) -> axum::Json<RawPage> {
    let page = tokio::task::spawn_blocking(move || {
        let conn = db.lock().unwrap();
        let mut stmt = conn
            .prepare_cached(
                "SELECT accountid, name, revenue, employees, active, createdon, ownerid, rating, city, version \
                 FROM account WHERE version > ?1 ORDER BY version LIMIT ?2",
            )
            .unwrap();
        let mut last = q.after;
        let rows = stmt
            .query_map(rusqlite::params![q.after, PAGE as i64], |r| {
                last = r.get(9)?;
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        RawPage { rows, last }
    })
    .await
    .unwrap();
    axum::Json(page)
}

/// The raw device: fetch pages (overlapped with inserting) and insert them
/// all in one transaction.
async fn raw_device(addr: SocketAddr, path: &Path) -> u64 {
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RawPage>(16);
    let fetch = async move {
        let mut after = 0;
        loop {
            let uri: http::Uri = format!("http://{addr}/raw?after={after}").parse().unwrap();
            let body = client.get(uri).await.unwrap().into_body().collect().await.unwrap().to_bytes();
            let page: RawPage = serde_json::from_slice(&body).unwrap();
            let done = page.rows.len() < PAGE;
            after = page.last;
            tx.send(page).await.unwrap();
            if done {
                return;
            }
        }
    };
    let path = path.to_path_buf();
    let insert = tokio::task::spawn_blocking(move || {
        let mut conn = sqlite(&path);
        conn.execute_batch(RAW_TABLE).unwrap();
        let txn = conn.transaction().unwrap();
        let mut n = 0u64;
        {
            let mut stmt =
                txn.prepare("INSERT INTO account VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").unwrap();
            while let Some(page) = rx.blocking_recv() {
                for r in page.rows {
                    n += 1;
                    stmt.execute(rusqlite::params![r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, n as i64])
                        .unwrap();
                }
            }
        }
        txn.commit().unwrap();
        n
    });
    let ((), n) = tokio::join!(fetch, insert);
    n.unwrap()
}

fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(rows));
}

async fn run(rows: u64) {
    let dir = tempfile::tempdir().unwrap();
    println!("initial sync benchmark: {rows} CRM-like rows (uuid key + 8 typed columns), loopback HTTP");

    // The raw source.
    let raw_db = dir.path().join("raw-source.sqlite");
    raw_source(&raw_db, rows);
    let raw_conn = Arc::new(Mutex::new(sqlite(&raw_db)));
    let raw_app = axum::Router::new().route("/raw", get(raw_page)).with_state(raw_conn);
    let raw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(raw_listener, raw_app).await });

    // The sync server over storage-sqlite, the same rows staged.
    let store = Arc::new(SqliteStagingStore::open(dir.path().join("staging")).await.unwrap());
    let org = OrgId::new("bench").unwrap();
    store.create_org(&OrgConfig::new(org.clone(), MemoryConnector::config("none"))).await.unwrap();
    let staging = store.org(&org).await.unwrap();
    let meta = schema();
    staging.apply_schema(&meta).await.unwrap();
    staging
        .put_profile(&Profile {
            name: ProfileName::new("sales").unwrap(),
            roles: ["rep".into()].into(),
            items: vec![ProfileItem::new(meta.name.clone(), "")],
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < rows {
        let end = (i + 10_000).min(rows);
        let upserts = (i..end)
            .map(|k| {
                let v = values(k);
                Row::new(
                    RowId::new(v[0].canonical_text()).unwrap(),
                    meta.attributes.iter().map(|a| a.name.clone()).zip(v),
                )
            })
            .collect();
        staging.apply_changes(&meta.name, ChangePage { upserts, ..ChangePage::default() }).await.unwrap();
        i = end;
    }
    let ingest = started.elapsed();
    println!(
        "staged {rows} rows in {:.1} s ({:.0} rows/s), not part of the comparison",
        ingest.as_secs_f64(),
        rows as f64 / ingest.as_secs_f64()
    );
    let service = SyncService::builder(
        store.clone(),
        Arc::new(MemoryQueue::new()),
        Arc::new(MemoryConnector::new()),
        "bench cursor key",
    )
    .build();
    let auth = Arc::new(JwtAuthenticator::hs256(SECRET.to_vec()).unwrap());
    let mut app = transport_http::router(service, auth, HttpConfig::default());
    // The router compresses responses for clients that accept it (the HTTP
    // transport does). The raw pipeline sends plain JSON, so, like for like,
    // the bench strips Accept-Encoding unless BENCH_COMPRESSION is set.
    let compression = std::env::var_os("BENCH_COMPRESSION").is_some();
    if !compression {
        app = app.layer(axum::middleware::map_request(|mut req: axum::extract::Request| async move {
            req.headers_mut().remove(http::header::ACCEPT_ENCODING);
            req
        }));
    }
    println!(
        "responses {}",
        if compression { "compressed (BENCH_COMPRESSION)" } else { "uncompressed, as in the raw pipeline" }
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let token = DevToken::new("alice", &org).with_role("rep").sign_hs256(SECRET).unwrap();

    let mut raw_rates = Vec::new();
    let mut sync_rates = Vec::new();
    let me = std::process::id().to_string();
    let mut server_peak = 0;
    let mut device_peak = 0;
    let server_base = rss_kib(&me, "VmRSS:");
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // The real client, in its own process. It runs before the raw
        // pipeline's device (which lives in this process) so that in round 0
        // this process's RSS is the server's alone.
        let db = dir.path().join(format!("device-{round}.db"));
        let t = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sync-client"))
            .args(["--server", &url, "--org", "bench", "--db"])
            .arg(&db)
            .args(["sync", "--json"])
            .env("SYNC_TOKEN", &token)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut peak_during = 0;
        while child.try_wait().unwrap().is_none() {
            peak_during = peak_during.max(rss_kib(&me, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = t.elapsed();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["report"]["rows"].as_u64(), Some(rows), "{report}");
        let rate = rows as f64 / elapsed.as_secs_f64();
        sync_rates.push(rate);
        if round == 0 {
            server_peak = peak_during;
        }
        device_peak = device_peak.max(report["peak_rss_kib"].as_u64().unwrap_or(0));

        // Raw pipeline.
        let path = dir.path().join(format!("raw-device-{round}.sqlite"));
        let t = Instant::now();
        let n = raw_device(raw_addr, &path).await;
        assert_eq!(n, rows);
        let raw_rate = rows as f64 / t.elapsed().as_secs_f64();
        raw_rates.push(raw_rate);
        ratios.push(rate / raw_rate);
        // Keep the disk footprint to one round's databases.
        for f in [&db, &path] {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.display()));
            }
        }
        println!(
            "round {round}: raw pipeline {raw_rate:>9.0} rows/s | sync-client {rate:>9.0} rows/s ({:.2} s) | ratio {:.2}",
            elapsed.as_secs_f64(),
            rate / raw_rate
        );
    }
    // Where the time goes: the same pull over HTTP, nothing applied.
    let transport = transport_http::HttpSyncTransport::with_token(
        transport_http::HttpTransportConfig::new(url.clone(), org.clone()),
        token.clone(),
    )
    .unwrap();
    let t = Instant::now();
    let mut cursor = None;
    let mut fetched = 0u64;
    loop {
        let page = transport
            .pull(&sync_core::protocol::PullRequest { cursor: cursor.clone(), limit: None, wait_ms: None })
            .await
            .unwrap();
        fetched += page.batches.iter().map(|b| b.puts.len() as u64).sum::<u64>();
        cursor = Some(page.cursor);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(fetched, rows);
    println!(
        "diagnostic: the server's pull over HTTP alone (fetch and parse, nothing applied): {:.0} rows/s",
        rows as f64 / t.elapsed().as_secs_f64()
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (raw, sync, ratio) = (median(&mut raw_rates), median(&mut sync_rates), median(&mut ratios));
    println!(
        "median of {rounds} rounds: raw pipeline {raw:.0} rows/s, sync-client {sync:.0} rows/s; median ratio {ratio:.2} (goal >= 0.80, PERFORMANCE.md)"
    );
    println!(
        "peak RSS: server process {} MiB during the first device sync (baseline {} MiB before it), device {} MiB",
        server_peak / 1024,
        server_base / 1024,
        device_peak / 1024
    );
}
