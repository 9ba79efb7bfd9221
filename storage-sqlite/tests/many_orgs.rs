//! Thousands of orgs with a connection cache far smaller: 2,000 orgs are
//! provisioned and synced (schema, profile, a row with its token) through a
//! store that keeps at most 16 org databases open, and the process's file
//! descriptors stay bounded throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use storage_sqlite::{SqliteStagingStore, StoreOptions};
use sync_core::staging::PullPlan;
use sync_core::{ChangePage, ChangeToken, Partition, Seq, StagingStore};

const ORGS: usize = 2000;
const OPEN: usize = 16;
const CONCURRENCY: usize = 8;

/// Open file descriptors of this process (Linux), or `None` elsewhere.
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

async fn provision(store: &SqliteStagingStore, i: usize) {
    let id = format!("org{i:04}");
    store.create_org(&org_config(&id)).await.unwrap();
    let staging = store.org(&org_id(&id)).await.unwrap();
    staging.apply_schema(&account_meta()).await.unwrap();
    staging.put_profile(&sales_profile()).await.unwrap();
    let page = ChangePage {
        upserts: vec![account_row(i as u64, 0, 3)],
        deletes: vec![],
        next_token: Some(ChangeToken(format!("t{i}"))),
        more: false,
    };
    let out = staging.apply_changes(&entity("account"), page).await.unwrap();
    assert_eq!(out.upserted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_orgs_through_a_small_connection_cache() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { max_open_orgs: OPEN, readers_per_org: 1, ..StoreOptions::default() };
    let store = Arc::new(SqliteStagingStore::open_with(dir.path(), options).await.unwrap());
    let baseline = open_fds();
    let started = std::time::Instant::now();
    let mut max_fds = 0;
    for chunk in (0..ORGS).collect::<Vec<_>>().chunks(CONCURRENCY) {
        let mut tasks = tokio::task::JoinSet::new();
        for &i in chunk {
            let store = store.clone();
            tasks.spawn(async move { provision(&store, i).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        // Evicted databases close on the blocking pool; running operations
        // may hold a few more for a moment.
        assert!(store.open_orgs() <= OPEN, "{} org databases open", store.open_orgs());
        if let Some(n) = open_fds() {
            max_fds = max_fds.max(n);
        }
    }
    println!("provisioned and synced {ORGS} orgs in {:.1?}", started.elapsed());
    if let (Some(base), true) = (baseline, max_fds > 0) {
        // Per open org: a writer and a reader, each with the database,
        // -wal and -shm files; plus connections being closed or opened by
        // the concurrent operations.
        let bound = base + (OPEN + 2 * CONCURRENCY) * 2 * 3;
        assert!(max_fds <= bound, "file descriptors peaked at {max_fds}, above {bound} (baseline {base})");
        println!("file descriptors: baseline {base}, peak {max_fds}, bound {bound}");
    }

    // Every org holds its own row, token and membership, read back through
    // the same small cache (every read reopens an evicted org).
    assert_eq!(store.orgs().await.unwrap().len(), ORGS);
    let profile = sales_profile();
    let active = Partition {
        profile: profile.name.clone(),
        item: sync_core::ItemId::new("active").unwrap(),
        entity: entity("account"),
        params: Default::default(),
    }
    .key();
    for i in (0..ORGS).step_by(7) {
        let id = format!("org{i:04}");
        let staging = store.org(&org_id(&id)).await.unwrap();
        assert_eq!(
            staging.source_token(&entity("account")).await.unwrap(),
            Some(ChangeToken(format!("t{i}")))
        );
        let row = account_row(i as u64, 0, 3);
        let staged = staging.row(&entity("account"), &row.id).await.unwrap().expect("the org's row");
        assert_eq!(staged.row.values[&col("name")], row.values[&col("name")]);
        let page = staging
            .pull(&PullPlan {
                partitions: vec![(active.clone(), Seq::ZERO)],
                max_rows: 10,
                max_bytes: 1 << 20,
            })
            .await
            .unwrap();
        let active_row = row.values[&col("statecode")] == sync_core::Value::Integer(0);
        assert_eq!(page.changes.len(), usize::from(active_row), "org {id}: membership of its one row");
    }
    assert!(store.open_orgs() <= OPEN);
}
