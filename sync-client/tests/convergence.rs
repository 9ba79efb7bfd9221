//! End-to-end convergence of real `SyncClient`s against a real server
//! (`Provisioner` + `StagingSync` + `SyncService` over the in-memory
//! adapters): randomized histories of source changes (rows moving in and out
//! of partitions, deletes, schema changes, profile edits, token expiry),
//! offline edits under each conflict policy, lost push responses, forced
//! resyncs (tombstone purges), local corruption repaired by partition repair,
//! and server changes interleaved with a client's multi-page pulls.
//!
//! After every complete sync the client holds exactly what the server selects
//! for its principal (DESIGN.md §6.1); at the end every offline edit was
//! applied at the source or reported as a conflict or rejection.
//!
//! Runs twice: in-process against the in-memory store, and over real
//! loopback HTTP (transport-http's router and `HttpSyncTransport`) against
//! the SQLite store. `CLIENT_CONVERGENCE_SEEDS` / `CLIENT_HTTP_CONVERGENCE_SEEDS`
//! set the number of seeds (default 200 each); `CLIENT_CONVERGENCE_SEED`
//! runs one seed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{Backend, Rng, World, col, ent};
use sync_client::SyncEvent;
use sync_core::{ConflictPolicy, MutationId, RowId, Value};

const STEPS: usize = 40;

/// How often the interesting paths ran, over all seeds.
#[derive(Debug, Default)]
struct Coverage {
    applied: u64,
    conflicts: u64,
    rejected: u64,
    resyncs: u64,
    repairs: u64,
    dropped_partitions: u64,
}

async fn run_seed(seed: u64, backend: Backend, cov: &mut Coverage) {
    let mut rng = Rng::new(seed);
    let policy = match rng.below(3) {
        0 => ConflictPolicy::Merge,
        1 => ConflictPolicy::ClientWins,
        _ => ConflictPolicy::ServerWins,
    };
    let mut world = World::with_backend(policy.clone(), seed, backend).await;
    // Every offline edit made, and every answer the server gave.
    let mut made: Vec<BTreeSet<MutationId>> = vec![BTreeSet::new(); world.clients.len()];
    for step in 0..STEPS {
        let user = rng.below(world.clients.len() as u64) as usize;
        let choice = rng.below(20);
        if std::env::var_os("CLIENT_CONVERGENCE_TRACE").is_some() {
            eprintln!("step {step}: user {user} op {choice} extra={:?}", world.extra);
        }
        match choice {
            0..=3 => world.source_upsert_task(&mut rng),
            4 => world.source_upsert_note(&mut rng),
            5 => world.source_delete(&mut rng),
            6 | 7 => world.stage().await,
            8..=10 => {
                world.sync_and_check(user, &format!("seed {seed} step {step}")).await;
            }
            11..=13 => {
                if let Some(id) = world.offline_edit(user, &mut rng).await {
                    made[user].insert(id);
                }
            }
            14 => {
                if let Some(id) = world.offline_insert(user, &mut rng).await {
                    made[user].insert(id);
                }
            }
            15 => world.lose_next_push(user),
            16 => world.toggle_schema(),
            17 => world.toggle_manager_filter().await,
            18 => match rng.below(3) {
                0 => world.source.expire_all_tokens(),
                1 => world.force_resync(user).await,
                _ => world.corrupt(user, &mut rng).await,
            },
            _ => {
                if rng.below(2) == 0 {
                    world.set_interleave(user, rng.below(2) == 0);
                } else {
                    world.flip_teams(user);
                }
            }
        }
    }
    // Settle: stop interleaving, push everything, stage, sync everyone.
    for u in 0..world.clients.len() {
        world.set_interleave(u, false);
    }
    for u in 0..world.clients.len() {
        world.clients[u].client.sync().await.unwrap_or_else(|e| panic!("seed {seed}: settle sync: {e}"));
    }
    world.stage().await;
    for (u, made) in made.iter().enumerate() {
        world.sync_and_check(u, &format!("seed {seed} final")).await;
        let c = &world.clients[u];
        assert!(c.client.pending().await.unwrap().is_empty(), "seed {seed}: edits left pending");
        // Every edit still alive has an answer: applied, or in the conflict log.
        let answered: BTreeSet<MutationId> = c
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Applied { mutation_id, .. } => Some(*mutation_id),
                SyncEvent::Refused(r) => Some(r.mutation_id),
                _ => None,
            })
            .collect();
        let logged: BTreeSet<MutationId> =
            c.client.conflicts().await.unwrap().iter().map(|r| r.mutation_id).collect();
        for id in made {
            if c.cancelled.lock().unwrap().contains(id) {
                continue;
            }
            assert!(answered.contains(id), "seed {seed}: edit {id} of user {u} never answered");
        }
        let refused: BTreeSet<MutationId> = c
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Refused(r) => Some(r.mutation_id),
                _ => None,
            })
            .collect();
        assert_eq!(refused, logged, "seed {seed}: every refusal is in the conflict log");
    }
    for c in &world.clients {
        for e in c.events.lock().unwrap().iter() {
            match e {
                SyncEvent::Applied { .. } => cov.applied += 1,
                SyncEvent::Refused(r) if r.kind == sync_client::RefusalKind::Conflict => cov.conflicts += 1,
                SyncEvent::Refused(_) => cov.rejected += 1,
                SyncEvent::ResyncStarted { .. } => cov.resyncs += 1,
                SyncEvent::RepairStarted { .. } => cov.repairs += 1,
                SyncEvent::PartitionDropped { .. } => cov.dropped_partitions += 1,
                _ => {}
            }
        }
    }
}

fn seeds(var: &str) -> Vec<u64> {
    if let Some(s) = std::env::var("CLIENT_CONVERGENCE_SEED").ok().and_then(|v| v.parse().ok()) {
        return vec![s];
    }
    let n: u64 = std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    (1..=n).collect()
}

fn converge(backend: Backend, var: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seeds = seeds(var);
    let mut cov = Coverage::default();
    let keep_going = std::env::var_os("CLIENT_CONVERGENCE_KEEP_GOING").is_some();
    let mut failed = Vec::new();
    for &seed in &seeds {
        if keep_going {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(run_seed(seed, backend, &mut cov));
            }));
            if r.is_err() {
                failed.push(seed);
            }
        } else {
            rt.block_on(run_seed(seed, backend, &mut cov));
        }
    }
    assert!(failed.is_empty(), "{backend:?}: seeds {failed:?} failed");
    eprintln!("{backend:?}: {} seeds: {cov:?}", seeds.len());
    if seeds.len() >= 50 {
        assert!(
            cov.applied > 0
                && cov.conflicts > 0
                && cov.rejected > 0
                && cov.resyncs > 0
                && cov.repairs > 0
                && cov.dropped_partitions > 0,
            "some paths never ran: {cov:?}"
        );
    }
}

/// In-process against the in-memory store (`CLIENT_CONVERGENCE_SEEDS`, default 200).
#[test]
fn clients_converge_over_random_histories() {
    converge(Backend::Memory, "CLIENT_CONVERGENCE_SEEDS");
}

/// Over real loopback HTTP against the SQLite store
/// (`CLIENT_HTTP_CONVERGENCE_SEEDS`, default 200).
#[test]
fn clients_converge_over_http_on_the_sqlite_store() {
    converge(Backend::Http, "CLIENT_HTTP_CONVERGENCE_SEEDS");
}

/// A push whose response is lost is retried with the same ids and applied
/// once at the source.
#[test]
fn lost_push_response_is_applied_once() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let world = World::new(ConflictPolicy::Merge, 7).await;
        let mut rng = Rng::new(7);
        for _ in 0..6 {
            world.source_upsert_task(&mut rng);
        }
        world.stage().await;
        world.sync_and_check(0, "initial").await;
        let id = RowId::new("t90").unwrap();
        let w = world.clients[0]
            .client
            .insert(
                &ent("task"),
                [
                    (col("taskid"), Value::from("t90")),
                    (col("owner"), Value::from("u1")),
                    (col("team"), Value::from("red")),
                    (col("state"), Value::Integer(1)),
                    (col("amount"), Value::Integer(5)),
                ]
                .into(),
            )
            .await
            .unwrap();
        assert_eq!(w.row_id, id);
        world.lose_next_push(0);
        let applies = world.source.calls(sync_core::memory::SourceOp::Apply);
        world.sync_and_check(0, "after lost push").await;
        assert_eq!(world.source.calls(sync_core::memory::SourceOp::Apply), applies + 1, "applied once");
        let pushes = world.clients[0].pushes.lock().unwrap().clone();
        assert_eq!(pushes.len(), 2, "sent, lost, sent again");
        assert_eq!(pushes[0], pushes[1], "the retry carries the same ids and content");
        assert!(world.clients[0].client.pending().await.unwrap().is_empty());
        assert!(world.source.row("task", "t90").is_some());
    });
}
