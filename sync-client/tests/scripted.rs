//! The client's local-database logic against hand-made server answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sync_client::{ClientConfig, RefusalKind, SyncClient, SyncEvent};
use sync_core::protocol::*;
use sync_core::{
    Attribute, AttributeType, Checksum, ColumnName, EntityMetadata, EntityName, MutationOp, PartitionKey,
    Row, RowId, Seq, SyncTransport, Value,
};

#[derive(Default)]
struct Scripted {
    pulls: Mutex<VecDeque<sync_core::Result<PullResponse>>>,
    pull_requests: Mutex<Vec<PullRequest>>,
    push_replies: Mutex<VecDeque<sync_core::Result<PushResponse>>>,
    pushes: Mutex<Vec<PushRequest>>,
}

impl Scripted {
    fn pull(&self, r: sync_core::Result<PullResponse>) {
        self.pulls.lock().unwrap().push_back(r);
    }
    fn push_reply(&self, r: sync_core::Result<PushResponse>) {
        self.push_replies.lock().unwrap().push_back(r);
    }
}

#[async_trait]
impl SyncTransport for Scripted {
    async fn profile(&self) -> sync_core::Result<ProfileResponse> {
        Err(sync_core::Error::unavailable("not scripted"))
    }
    async fn pull(&self, request: &PullRequest) -> sync_core::Result<PullResponse> {
        self.pull_requests.lock().unwrap().push(request.clone());
        self.pulls
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Err(sync_core::Error::unavailable("no more pulls")))
    }
    async fn push(&self, request: &PushRequest) -> sync_core::Result<PushResponse> {
        self.pushes.lock().unwrap().push(request.clone());
        self.push_replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Err(sync_core::Error::unavailable("no more pushes")))
    }
}

fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}
fn ent() -> EntityName {
    EntityName::new("account").unwrap()
}
fn rid(s: &str) -> RowId {
    RowId::new(s).unwrap()
}
fn pk(s: &str) -> PartitionKey {
    PartitionKey::new(s).unwrap()
}

fn schema() -> EntityMetadata {
    EntityMetadata::new(
        ent(),
        col("id"),
        vec![
            Attribute::new(col("id"), AttributeType::String),
            Attribute::new(col("name"), AttributeType::String),
            Attribute::new(col("n"), AttributeType::Integer),
        ],
    )
    .unwrap()
}

fn parts(keys: &[&str]) -> Vec<PartitionInfo> {
    keys.iter().map(|k| PartitionInfo { key: pk(k), entity: ent() }).collect()
}

/// A batch putting rows `(id, name, n, version)` and removing ids.
fn batch(partition: &str, puts: &[(&str, &str, i64, u64)], removes: &[&str]) -> Batch {
    Batch {
        entity: ent(),
        partition: pk(partition),
        columns: vec![col("id"), col("name"), col("n")],
        puts: puts
            .iter()
            .map(|(id, name, n, _)| vec![Value::from(*id), Value::from(*name), Value::Integer(*n)])
            .collect(),
        versions: puts.iter().map(|p| Seq(p.3)).collect(),
        removes: removes.iter().map(|r| rid(r)).collect(),
    }
}

fn checksum(rows: &[(&str, u64)]) -> Checksum {
    let mut c = Checksum::default();
    for (id, v) in rows {
        c.add(&ent(), &rid(id), Seq(*v));
    }
    c
}

fn page(
    cursor: &str,
    partitions: &[&str],
    batches: Vec<Batch>,
    more: bool,
    sums: &[(&str, Checksum)],
) -> PullResponse {
    PullResponse {
        schema_version: 1,
        schemas: Some(vec![schema()]),
        partitions: parts(partitions),
        batches,
        checksums: (!more).then(|| sums.iter().map(|(k, c)| (pk(k), *c)).collect()),
        cursor: cursor.into(),
        has_more: more,
    }
}

fn client(t: &Arc<Scripted>) -> (SyncClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClientConfig::default();
    config.backoff.retries = 0;
    let c = SyncClient::builder(dir.path().join("c.db"), t.clone() as Arc<dyn SyncTransport>)
        .config(config)
        .open()
        .unwrap();
    (c, dir)
}

async fn names(c: &SyncClient) -> Vec<(String, String)> {
    c.rows(&ent())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.to_string(), r.values[&col("name")].canonical_text()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_pull_over_pages_and_shared_rows() {
    let t = Arc::new(Scripted::default());
    t.pull(Ok(page(
        "c1",
        &["p/a", "p/b"],
        vec![batch("p/a", &[("r1", "one", 1, 5), ("r2", "two", 2, 6)], &[])],
        true,
        &[],
    )));
    t.pull(Ok(page(
        "c2",
        &["p/a", "p/b"],
        vec![batch("p/b", &[("r2", "two", 2, 6), ("r3", "three", 3, 7)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 5), ("r2", 6)])), ("p/b", checksum(&[("r2", 6), ("r3", 7)]))],
    )));
    let (c, _d) = client(&t);
    let report = c.sync().await.unwrap();
    assert!(report.complete);
    assert_eq!(report.pages, 2);
    assert_eq!(report.repairs, 0);
    assert_eq!(names(&c).await.len(), 3);
    assert_eq!(t.pull_requests.lock().unwrap()[1].cursor.as_deref(), Some("c1"));

    // r2 leaves p/a but p/b still holds it; r3 leaves p/b and goes.
    t.pull(Ok(page(
        "c3",
        &["p/a", "p/b"],
        vec![batch("p/a", &[], &["r2"]), batch("p/b", &[], &["r3"])],
        false,
        &[("p/a", checksum(&[("r1", 5)])), ("p/b", checksum(&[("r2", 6)]))],
    )));
    c.sync().await.unwrap();
    assert_eq!(names(&c).await, vec![("r1".into(), "one".into()), ("r2".into(), "two".into())]);
    assert_eq!(t.pull_requests.lock().unwrap()[2].cursor.as_deref(), Some("c2"));

    // p/b vanishes: r2 only it held goes; r1 stays.
    t.pull(Ok(page("c4", &["p/a"], vec![], false, &[("p/a", checksum(&[("r1", 5)]))])));
    c.sync().await.unwrap();
    assert_eq!(names(&c).await, vec![("r1".into(), "one".into())]);
    let st = c.status().await.unwrap();
    assert_eq!(st.partitions.len(), 1);
    assert_eq!(st.partitions[0].checksum, checksum(&[("r1", 5)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_repairs_only_that_partition() {
    let t = Arc::new(Scripted::default());
    // The server "forgets" to send r2 in p/a: the checksum says two rows.
    t.pull(Ok(page(
        "c1",
        &["p/a", "p/b"],
        vec![
            batch("p/a", &[("r1", "one", 1, 5), ("r9", "stale", 9, 3)], &[]),
            batch("p/b", &[("r3", "three", 3, 7)], &[]),
        ],
        false,
        &[("p/a", checksum(&[("r1", 5), ("r2", 6)])), ("p/b", checksum(&[("r3", 7)]))],
    )));
    // The repair stream reads from the start; its p/b batch is ignored.
    t.pull(Ok(page(
        "r1",
        &["p/a", "p/b"],
        vec![
            batch("p/a", &[("r1", "one", 1, 5), ("r2", "two", 2, 6)], &[]),
            batch("p/b", &[("r3", "WRONG", 3, 7)], &[]),
        ],
        false,
        &[("p/a", checksum(&[("r1", 5), ("r2", 6)])), ("p/b", checksum(&[("r3", 7)]))],
    )));
    // Then the main cursor resumes.
    t.pull(Ok(page(
        "c2",
        &["p/a", "p/b"],
        vec![],
        false,
        &[("p/a", checksum(&[("r1", 5), ("r2", 6)])), ("p/b", checksum(&[("r3", 7)]))],
    )));
    let (c, _d) = client(&t);
    let mut events = c.subscribe();
    let report = c.sync().await.unwrap();
    assert_eq!(report.repairs, 1);
    assert!(report.complete);
    let reqs = t.pull_requests.lock().unwrap().clone();
    assert_eq!(reqs[1].cursor, None, "repair reads from the start");
    assert_eq!(reqs[2].cursor.as_deref(), Some("c1"), "main cursor resumes");
    assert_eq!(
        names(&c).await,
        vec![("r1".into(), "one".into()), ("r2".into(), "two".into()), ("r3".into(), "three".into())]
    );
    let mut saw = (false, false);
    while let Ok(e) = events.try_recv() {
        match e {
            SyncEvent::RepairStarted { partitions } => {
                assert_eq!(partitions, vec![pk("p/a")]);
                saw.0 = true;
            }
            SyncEvent::RepairFinished { still_mismatched } => {
                assert!(still_mismatched.is_empty());
                saw.1 = true;
            }
            _ => {}
        }
    }
    assert_eq!(saw, (true, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_required_rereads_and_sweeps() {
    let t = Arc::new(Scripted::default());
    t.pull(Ok(page(
        "c1",
        &["p/a"],
        vec![batch("p/a", &[("r1", "one", 1, 5), ("r2", "two", 2, 6)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 5), ("r2", 6)]))],
    )));
    let (c, _d) = client(&t);
    c.sync().await.unwrap();
    t.pull(Err(sync_core::Error::resync("cursor older than the tombstone window")));
    t.pull(Ok(page("n1", &["p/a"], vec![batch("p/a", &[("r1", "uno", 1, 8)], &[])], true, &[])));
    t.pull(Ok(page(
        "n2",
        &["p/a"],
        vec![batch("p/a", &[("r4", "four", 4, 9)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 8), ("r4", 9)]))],
    )));
    let report = c.sync().await.unwrap();
    assert_eq!(report.resyncs, 1);
    assert_eq!(names(&c).await, vec![("r1".into(), "uno".into()), ("r4".into(), "four".into())]);
    assert_eq!(t.pull_requests.lock().unwrap()[2].cursor, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_edits_survive_pulls_and_retry_with_the_same_ids() {
    let t = Arc::new(Scripted::default());
    t.pull(Ok(page(
        "c1",
        &["p/a"],
        vec![batch("p/a", &[("r1", "one", 1, 5), ("r2", "two", 2, 6)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 5), ("r2", 6)]))],
    )));
    let (c, _d) = client(&t);
    c.sync().await.unwrap();

    // Offline: edit r1's name, insert r5, delete r2.
    let w = c.update(&ent(), &rid("r1"), [(col("name"), Value::from("mine"))].into()).await.unwrap();
    let m1 = w.mutation.unwrap();
    // A second edit of the same row before upload merges into the first.
    let w2 = c.update(&ent(), &rid("r1"), [(col("n"), Value::Integer(10))].into()).await.unwrap();
    assert_eq!(w2.mutation, Some(m1));
    c.insert(&ent(), [(col("id"), Value::from("r5")), (col("name"), Value::from("five"))].into())
        .await
        .unwrap();
    c.delete(&ent(), &rid("r2")).await.unwrap();
    let pending = c.pending().await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[0].base_version, Some(Seq(5)));
    assert_eq!(pending[0].values.len(), 2);

    // The first push's response is lost.
    t.push_reply(Err(sync_core::Error::unavailable("connection reset")));
    assert!(c.sync().await.unwrap_err().is_retryable());
    // A pull brings a newer r1 from someone else: the pending edit stays on top.
    t.pull(Ok(page(
        "c2",
        &["p/a"],
        vec![batch("p/a", &[("r1", "theirs", 7, 9)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 9), ("r2", 6)]))],
    )));
    // The retried push is answered this time.
    let ids: Vec<_> = pending.iter().map(|p| p.id).collect();
    t.push_reply(Ok(PushResponse {
        results: vec![
            MutationResult {
                id: ids[0],
                outcome: MutationOutcome::Applied {
                    row: Some(Row::new(
                        rid("r1"),
                        [
                            (col("id"), Value::from("r1")),
                            (col("name"), Value::from("mine")),
                            (col("n"), Value::Integer(10)),
                        ],
                    )),
                    version: Seq(8),
                },
            },
            MutationResult {
                id: ids[1],
                outcome: MutationOutcome::Rejected { reason: "uploads not allowed".into() },
            },
            MutationResult {
                id: ids[2],
                outcome: MutationOutcome::Conflict { server_row: None, reason: "server-wins".into() },
            },
        ],
        write_checkpoint: Seq(10),
    }));
    let report = c.sync().await.unwrap();
    assert_eq!((report.applied, report.rejected, report.conflicts), (1, 1, 1));
    let pushes = t.pushes.lock().unwrap().clone();
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[0], pushes[1], "a retry sends the same mutations with the same ids");
    assert_eq!(pushes[0].mutations[0].op, MutationOp::Update);
    assert!(c.pending().await.unwrap().is_empty());
    let conflicts = c.conflicts().await.unwrap();
    assert_eq!(conflicts.len(), 2);
    assert_eq!(conflicts[0].kind, RefusalKind::Rejected);
    assert_eq!(conflicts[1].kind, RefusalKind::Conflict);
    // After the pull (version 9 > 8), r1 shows the server's newest row;
    // r5 was rejected and is gone; r2's delete lost (server-wins): r2 is back.
    assert_eq!(names(&c).await, vec![("r1".into(), "theirs".into()), ("r2".into(), "two".into())]);
    assert!(c.dismiss_conflict(conflicts[0].mutation_id).await.unwrap());
    assert_eq!(c.conflicts().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_under_pending_edit_keeps_the_edit() {
    let t = Arc::new(Scripted::default());
    t.pull(Ok(page(
        "c1",
        &["p/a"],
        vec![batch("p/a", &[("r1", "one", 1, 5)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 5)]))],
    )));
    let (c, _d) = client(&t);
    c.sync().await.unwrap();
    c.update(&ent(), &rid("r1"), [(col("name"), Value::from("mine"))].into()).await.unwrap();
    // Push fails as unauthenticated: the pull does not run, edit stays.
    t.push_reply(Err(sync_core::Error::unauthenticated("expired")));
    assert!(c.sync().await.is_err());
    let row = c.row(&ent(), &rid("r1")).await.unwrap().unwrap();
    assert_eq!(row.values[&col("name")], Value::from("mine"));
    // Now the server changes n and the row leaves the partition: the edit
    // stays pending but the row is no longer shown.
    t.push_reply(Err(sync_core::Error::unavailable("down")));
    assert!(c.sync().await.is_err());
    assert_eq!(c.pending().await.unwrap().len(), 1);
    assert_eq!(c.pending().await.unwrap()[0].attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_is_read_only_and_identifiers_are_quoted() {
    let t = Arc::new(Scripted::default());
    t.pull(Ok(page(
        "c1",
        &["p/a"],
        vec![batch("p/a", &[("r1", "o'ne", 1, 5)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 5)]))],
    )));
    let (c, _d) = client(&t);
    c.sync().await.unwrap();
    let q = c.query("SELECT name FROM account WHERE n = ?1", vec![Value::Integer(1)]).await.unwrap();
    assert_eq!(q.rows, vec![vec![serde_json::json!("o'ne")]]);
    let err = c.query("DELETE FROM account", vec![]).await.unwrap_err();
    assert_eq!(err.kind(), sync_core::ErrorKind::InvalidInput);
    let m = c.query("SELECT count(*) FROM \"sync:membership\"", vec![]).await.unwrap();
    assert_eq!(m.rows[0][0], serde_json::json!(1));
    // Local writes are checked against the schema.
    assert!(
        c.insert(&ent(), [(col("id"), Value::from("x")), (col("bogus"), Value::Null)].into()).await.is_err()
    );
    assert!(c.update(&ent(), &rid("nope"), [(col("n"), Value::Integer(1))].into()).await.is_err());
    assert!(c.update(&ent(), &rid("r1"), [(col("n"), Value::from("many"))].into()).await.is_err());
    assert!(c.insert(&ent(), [(col("id"), Value::from("r1"))].into()).await.is_err());
    let _ = BTreeMap::<u8, u8>::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_delete_hides_a_held_row_until_the_server_answers() {
    let t = Arc::new(Scripted::default());
    t.pull(Ok(page(
        "c1",
        &["p/a"],
        vec![batch("p/a", &[("r1", "one", 1, 5), ("r2", "two", 2, 6)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 5), ("r2", 6)]))],
    )));
    let (c, _d) = client(&t);
    c.sync().await.unwrap();
    let del = c.delete(&ent(), &rid("r1")).await.unwrap().mutation.unwrap();
    assert!(c.row(&ent(), &rid("r1")).await.unwrap().is_none());
    // The row stays held (its membership refers to it) but hidden.
    let q = c
        .query("SELECT count(*) FROM \"sync:rows:account\" WHERE \"sync:hidden\" = 1", vec![])
        .await
        .unwrap();
    assert_eq!(q.rows[0][0], serde_json::json!(1));
    // A pull brings a newer r1: still hidden, the delete is pending.
    t.push_reply(Err(sync_core::Error::unavailable("down")));
    assert!(c.sync().await.is_err());
    t.push_reply(Ok(PushResponse {
        results: vec![MutationResult {
            id: del,
            outcome: MutationOutcome::Conflict {
                server_row: Some(Row::new(
                    rid("r1"),
                    [
                        (col("id"), Value::from("r1")),
                        (col("name"), Value::from("kept")),
                        (col("n"), Value::Integer(3)),
                    ],
                )),
                reason: "server-wins".into(),
            },
        }],
        write_checkpoint: Seq(9),
    }));
    t.pull(Ok(page(
        "c2",
        &["p/a"],
        vec![batch("p/a", &[("r1", "kept", 3, 9)], &[])],
        false,
        &[("p/a", checksum(&[("r1", 9), ("r2", 6)]))],
    )));
    let report = c.sync().await.unwrap();
    assert_eq!(report.conflicts, 1);
    // The server kept the row: it shows again, with the server's values.
    assert_eq!(names(&c).await, vec![("r1".into(), "kept".into()), ("r2".into(), "two".into())]);
    assert!(c.verify().await.unwrap().is_empty());

    // A delete of r2, and the server drops r2 from the partition before the
    // upload: the row goes, the delete is still uploaded.
    let del2 = c.delete(&ent(), &rid("r2")).await.unwrap().mutation.unwrap();
    t.push_reply(Err(sync_core::Error::unavailable("down")));
    assert!(c.sync().await.is_err());
    t.push_reply(Ok(PushResponse {
        results: vec![MutationResult {
            id: del2,
            outcome: MutationOutcome::Applied { row: None, version: Seq(11) },
        }],
        write_checkpoint: Seq(11),
    }));
    t.pull(Ok(page(
        "c3",
        &["p/a"],
        vec![batch("p/a", &[], &["r2"])],
        false,
        &[("p/a", checksum(&[("r1", 9)]))],
    )));
    c.sync().await.unwrap();
    assert_eq!(names(&c).await, vec![("r1".into(), "kept".into())]);
    let q = c.query("SELECT count(*) FROM \"sync:rows:account\"", vec![]).await.unwrap();
    assert_eq!(q.rows[0][0], serde_json::json!(1), "no hidden row left behind");
    assert!(c.pending().await.unwrap().is_empty());
    assert!(c.verify().await.unwrap().is_empty());
}

/// Rows `(id, name, n, version)` named `r000`… for `range`.
fn many(range: std::ops::Range<u64>, version: u64) -> Vec<(String, String, i64, u64)> {
    range.map(|i| (format!("r{i:03}"), format!("name {i}"), i as i64, version + i)).collect()
}

fn batch_of(partition: &str, rows: &[(String, String, i64, u64)], removes: &[&str]) -> Batch {
    let puts: Vec<(&str, &str, i64, u64)> =
        rows.iter().map(|(id, name, n, v)| (id.as_str(), name.as_str(), *n, *v)).collect();
    batch(partition, &puts, removes)
}

fn checksum_of(rows: &[(String, String, i64, u64)]) -> Checksum {
    let ids: Vec<(&str, u64)> = rows.iter().map(|(id, _, _, v)| (id.as_str(), *v)).collect();
    checksum(&ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_keep_memberships_and_checksums() {
    // Batches of hundreds of rows: new rows' memberships go in by chunks,
    // rows another partition holds already and updated rows one by one.
    let t = Arc::new(Scripted::default());
    let a1 = many(0..250, 1000);
    let b1 = many(100..250, 1000);
    t.pull(Ok(page(
        "c1",
        &["p/a", "p/b"],
        vec![batch_of("p/a", &a1, &[]), batch_of("p/b", &b1, &[])],
        true,
        &[],
    )));
    let a2 = many(0..120, 5000);
    let mut a_final: Vec<_> = a2.iter().cloned().chain(a1[120..249].iter().cloned()).collect();
    a_final.sort();
    t.pull(Ok(page(
        "c2",
        &["p/a", "p/b"],
        vec![batch_of("p/a", &a2, &["r249"])],
        false,
        &[("p/a", checksum_of(&a_final)), ("p/b", checksum_of(&b1))],
    )));
    let (c, _d) = client(&t);
    let report = c.sync().await.unwrap();
    assert!(report.complete);
    assert_eq!(report.repairs, 0);
    assert_eq!(report.rows, 250 + 150 + 120);
    assert_eq!(names(&c).await.len(), 250);
    let st = c.status().await.unwrap();
    assert_eq!(st.partitions[0].checksum, checksum_of(&a_final));
    assert_eq!(st.partitions[1].checksum, checksum_of(&b1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_membership_under_a_new_row_number_is_repaired() {
    let t = Arc::new(Scripted::default());
    let first = many(0..1, 100);
    t.pull(Ok(page(
        "c1",
        &["p/a"],
        vec![batch_of("p/a", &first, &[])],
        false,
        &[("p/a", checksum_of(&first))],
    )));
    let (c, d) = client(&t);
    c.sync().await.unwrap();
    // A membership left behind under the row number the next new row gets.
    {
        let db = rusqlite::Connection::open(d.path().join("c.db")).unwrap();
        db.execute(
            "INSERT INTO \"sync:membership\" (pid, rid, version) \
             SELECT pid, (SELECT max(\"sync:rowid\") + 1 FROM \"sync:rows:account\"), 1 FROM \"sync:partitions\"",
            [],
        )
        .unwrap();
    }
    let all = many(0..151, 100);
    let more = many(1..151, 100);
    t.pull(Ok(page("c2", &["p/a"], vec![batch_of("p/a", &more, &[])], false, &[("p/a", checksum_of(&all))])));
    // The local checksum does not match: the repair reads p/a again.
    t.pull(Ok(page("r1", &["p/a"], vec![batch_of("p/a", &all, &[])], false, &[("p/a", checksum_of(&all))])));
    t.pull(Ok(page("c3", &["p/a"], vec![], false, &[("p/a", checksum_of(&all))])));
    let report = c.sync().await.unwrap();
    assert!(report.complete);
    assert_eq!(report.repairs, 1);
    assert_eq!(names(&c).await.len(), 151);
    let st = c.status().await.unwrap();
    assert_eq!(st.partitions[0].checksum, checksum_of(&all));
    assert_eq!(st.partitions[0].repair, "none");
}
