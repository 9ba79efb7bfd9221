//! How fast the client applies pull pages, without a server: synthetic
//! CRM-like pages (uuid key + 8 typed columns) served from memory, beside a
//! raw prepared insert of the same rows into a bare table in one
//! transaction. Isolates the client's own cost (membership, checksums,
//! typed binding) from the network and the server.
//!
//! `cargo run --release -p sync-client --example apply_rate -- 200000`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use sync_client::{ClientConfig, SyncClient};
use sync_core::protocol::*;
use sync_core::*;

static PAGE: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| std::env::var("PAGE").ok().and_then(|s| s.parse().ok()).unwrap_or(1000));

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

fn row(i: u64) -> Vec<Value> {
    let id = uuid::Uuid::from_u64_pair(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i);
    vec![
        Value::String(id.to_string()),
        Value::String(format!("Account {i} Holdings")),
        Value::String(format!("{}.{:02}", i * 37 % 1_000_000, i % 100)),
        Value::Integer((i % 5000) as i64),
        Value::Boolean(i.is_multiple_of(3)),
        Value::String("2024-03-05T10:20:30Z".into()),
        Value::String(uuid::Uuid::from_u64_pair(7, i % 50).to_string()),
        Value::Float((i % 100) as f64 / 10.0),
        Value::String(["Seattle", "Paris", "Lagos", "Osaka"][(i % 4) as usize].into()),
    ]
}

struct Synthetic {
    total: u64,
    served: AtomicU64,
}

#[async_trait]
impl SyncTransport for Synthetic {
    async fn profile(&self) -> Result<ProfileResponse> {
        Err(Error::unavailable("n/a"))
    }
    async fn pull(&self, _: &PullRequest) -> Result<PullResponse> {
        let start = self.served.fetch_add(*PAGE, Ordering::SeqCst);
        let end = (start + *PAGE).min(self.total);
        let key = PartitionKey::new("all/account").unwrap();
        let meta = schema();
        let batch = Batch {
            entity: meta.name.clone(),
            partition: key.clone(),
            columns: meta.attributes.iter().map(|a| a.name.clone()).collect(),
            puts: (start..end).map(row).collect(),
            versions: (start..end).map(|i| Seq(i + 1)).collect(),
            removes: vec![],
        };
        let more = end < self.total;
        Ok(PullResponse {
            schema_version: 1,
            schemas: (start == 0).then(|| vec![meta.clone()]),
            partitions: vec![PartitionInfo { key, entity: meta.name }],
            batches: vec![batch],
            checksums: None,
            cursor: format!("c{end}"),
            has_more: more,
        })
    }
    async fn push(&self, _: &PushRequest) -> Result<PushResponse> {
        Err(Error::unavailable("n/a"))
    }
}

fn raw(total: u64, path: &std::path::Path, cache_kib: u32) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib)).unwrap();
    conn.execute_batch(
        "CREATE TABLE account (accountid TEXT PRIMARY KEY, name TEXT, revenue TEXT, employees INTEGER, \
         active INTEGER, createdon TEXT, ownerid TEXT, rating REAL, city TEXT, version INTEGER);
         CREATE INDEX account_version ON account (version);",
    )
    .unwrap();
    let start = Instant::now();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut stmt =
            tx.prepare("INSERT INTO account VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").unwrap();
        for i in 0..total {
            let r = row(i);
            let s = |k: usize| match &r[k] {
                Value::String(s) => s.clone(),
                _ => unreachable!(),
            };
            stmt.execute(rusqlite::params![
                s(0),
                s(1),
                s(2),
                (i % 5000) as i64,
                i64::from(i % 3 == 0),
                s(5),
                s(6),
                (i % 100) as f64 / 10.0,
                s(8),
                i as i64 + 1
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let total: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let cache_kib = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let raw_rate = raw(total, &dir.path().join("raw.db"), cache_kib);
    let transport = Arc::new(Synthetic { total, served: AtomicU64::new(0) });
    let mut config = ClientConfig::default();
    config.store.cache_kib = cache_kib;
    let client = SyncClient::builder(dir.path().join("client.db"), transport).config(config).open().unwrap();
    let start = Instant::now();
    let report = rt.block_on(client.sync()).unwrap();
    let rate = report.rows as f64 / start.elapsed().as_secs_f64();
    println!(
        "rows {total}: raw insert {raw_rate:.0} rows/s, client apply {rate:.0} rows/s, ratio {:.2}",
        rate / raw_rate
    );
}
