//! The [`WorkQueue`] conformance suite.
//!
//! Each `check_*` function proves one part of the trait's contract against a
//! queue opened through a [`QueueHarness`], and panics with a message naming
//! the broken rule. [`work_queue_conformance!`](crate::work_queue_conformance)
//! expands to one `#[test]` per check, named after it:
//!
//! ```ignore
//! // tests/queue_conformance.rs of an adapter crate
//! sync_core::work_queue_conformance!(|| async { my_adapter::TestHarness::new().await });
//! ```
//!
//! Requirements on the queue a harness opens:
//! * it dead-letters a message on the receive that would be its delivery
//!   number four, i.e. `max_deliveries` is [`CONFORMANCE_MAX_DELIVERIES`] (3);
//! * every call of [`QueueHarness::open`] opens the same storage, which other
//!   checks may share: the checks use fresh, randomly named queues, so one
//!   database can serve the whole suite.
//!
//! The checks use real time with leases of a few hundred milliseconds; the
//! whole suite takes a few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::ErrorKind;
use crate::ids::QueueName;
use crate::memory::MemoryQueue;
use crate::queue::{Delivery, Message, QueueDepth, SendOutcome, WorkQueue};

/// The `max_deliveries` the queue under test must be configured with.
pub const CONFORMANCE_MAX_DELIVERIES: u32 = 3;

/// Opens the [`WorkQueue`] under test.
#[async_trait]
pub trait QueueHarness: Send + Sync {
    /// Opens the queue. Every call opens the same underlying storage, with
    /// `max_deliveries` = [`CONFORMANCE_MAX_DELIVERIES`]; for a durable
    /// adapter, a new connection (as a restarted process would make).
    /// Panics when the queue cannot be opened.
    async fn open(&self) -> Arc<dyn WorkQueue>;

    /// Whether messages, leases and dead letters survive dropping every
    /// queue from [`QueueHarness::open`] and opening again.
    fn durable(&self) -> bool;
}

/// The harness of [`MemoryQueue`]: one queue set, not durable.
#[derive(Clone, Debug)]
pub struct MemoryQueueHarness {
    queue: MemoryQueue,
}

impl MemoryQueueHarness {
    /// A harness over a fresh [`MemoryQueue`] with the conformance `max_deliveries`.
    pub fn new() -> Self {
        MemoryQueueHarness { queue: MemoryQueue::with_max_deliveries(CONFORMANCE_MAX_DELIVERIES) }
    }
}

impl Default for MemoryQueueHarness {
    fn default() -> Self {
        MemoryQueueHarness::new()
    }
}

#[async_trait]
impl QueueHarness for MemoryQueueHarness {
    async fn open(&self) -> Arc<dyn WorkQueue> {
        Arc::new(self.queue.clone())
    }
    fn durable(&self) -> bool {
        false
    }
}

/// Runs one check on a fresh current-thread runtime with time and I/O
/// enabled; used by [`work_queue_conformance!`](crate::work_queue_conformance).
#[doc(hidden)]
pub fn run_check(check: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the test runtime")
        .block_on(check);
}

/// A lease long enough that it never ends during a check.
const HIDDEN: Duration = Duration::from_secs(60);
/// A lease meant to run out.
const SHORT_LEASE: Duration = Duration::from_millis(250);
/// Sleeping this long lets a [`SHORT_LEASE`] run out, with room to spare.
const PAST_SHORT_LEASE: Duration = Duration::from_millis(700);
/// A lease meant to run out, but only after a few more operations, however
/// slow the adapter.
const MEDIUM_LEASE: Duration = Duration::from_millis(1000);
/// Sleeping this long lets a [`MEDIUM_LEASE`] run out, with room to spare.
const PAST_MEDIUM_LEASE: Duration = Duration::from_millis(1500);

fn fresh_queue(tag: &str) -> QueueName {
    QueueName::new(format!("conf_{tag}_{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn msg(body: &str) -> Message {
    Message { body: body.as_bytes().to_vec(), ..Message::default() }
}

fn text(d: &Delivery) -> &str {
    std::str::from_utf8(&d.body).expect("bodies of the conformance suite are UTF-8")
}

fn enqueued(outcome: SendOutcome) -> String {
    match outcome {
        SendOutcome::Enqueued(id) => id,
        other => panic!("expected a new message to be enqueued, got {other:?}"),
    }
}

async fn send(q: &dyn WorkQueue, name: &QueueName, message: Message) -> String {
    enqueued(q.send(name, message).await.unwrap())
}

async fn recv(q: &dyn WorkQueue, name: &QueueName, lease: Duration) -> Delivery {
    q.receive(name, lease)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("expected a deliverable message in '{name}'"))
}

async fn assert_empty(q: &dyn WorkQueue, name: &QueueName, why: &str) {
    if let Some(d) = q.receive(name, HIDDEN).await.unwrap() {
        panic!("expected nothing deliverable in '{name}' ({why}), got {:?}", text(&d));
    }
}

async fn assert_lost(q: &dyn WorkQueue, d: &Delivery, why: &str) {
    let ops = [
        ("complete", q.complete(d).await),
        ("abandon", q.abandon(d, Duration::ZERO).await),
        ("extend", q.extend(d, HIDDEN).await),
        ("dead_letter", q.dead_letter(d, "conformance").await),
    ];
    for (op, result) in ops {
        match result {
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            other => panic!("{op} with a lost lease ({why}) must be Conflict, got {other:?}"),
        }
    }
}

fn depth(ready: u64, delayed: u64, leased: u64, dead: u64) -> QueueDepth {
    QueueDepth { ready, delayed, leased, dead }
}

/// Sent messages are delivered once each, oldest first, with their bodies,
/// ids and a delivery count of 1; a leased message is hidden; a completed
/// message is gone, and completing it again is `Conflict`. `ping` succeeds.
pub async fn check_send_receive_complete<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    q.ping().await.unwrap();
    let name = fresh_queue("fifo");
    let mut ids = Vec::new();
    for body in ["a", "b", "c"] {
        ids.push(send(q, &name, msg(body)).await);
    }
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3, "message ids must be unique");
    let mut deliveries = Vec::new();
    for (body, id) in ["a", "b", "c"].iter().zip(&ids) {
        let d = recv(q, &name, HIDDEN).await;
        assert_eq!(text(&d), *body, "messages are delivered oldest first");
        assert_eq!(&d.message_id, id, "the delivery carries the id send returned");
        assert_eq!(d.queue, name);
        assert_eq!(d.delivery_count, 1);
        assert_eq!(d.dedup_key, None);
        deliveries.push(d);
    }
    let tokens = deliveries.iter().map(|d| d.lease_token.clone()).collect::<BTreeSet<_>>();
    assert_eq!(tokens.len(), 3, "lease tokens must be unique");
    assert_empty(q, &name, "every message is leased").await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 3, 0));
    for d in &deliveries {
        q.complete(d).await.unwrap();
    }
    assert_empty(q, &name, "every message was completed").await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 0, 0));
    assert_lost(q, &deliveries[0], "the message was completed").await;
}

/// A message whose lease ran out is delivered again with a higher delivery
/// count and a new lease token; the old token is then `Conflict` for every
/// operation, both before and after the redelivery.
pub async fn check_redelivery_after_lease_expiry<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("expiry");
    let id = send(q, &name, msg("work")).await;
    let first = recv(q, &name, SHORT_LEASE).await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    match q.complete(&first).await {
        Err(e) if e.kind() == ErrorKind::Conflict => {}
        other => panic!("complete after the lease ran out must be Conflict, got {other:?}"),
    }
    let second = recv(q, &name, HIDDEN).await;
    assert_eq!(second.message_id, id, "the same message is delivered again");
    assert_eq!(text(&second), "work");
    assert_eq!(second.delivery_count, 2);
    assert_ne!(second.lease_token, first.lease_token, "every delivery gets a new lease token");
    assert_lost(q, &first, "the message was delivered again").await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 1, 0), "the stale operations changed nothing");
    q.complete(&second).await.unwrap();
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 0, 0));
}

/// `extend` moves the end of a lease: the message stays hidden past its
/// first lease and can still be completed; after completion `extend` is
/// `Conflict`.
pub async fn check_extend_keeps_message_hidden<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("extend");
    send(q, &name, msg("long job")).await;
    let d = recv(q, &name, MEDIUM_LEASE).await;
    q.extend(&d, HIDDEN).await.unwrap();
    tokio::time::sleep(PAST_MEDIUM_LEASE).await;
    assert_empty(q, &name, "the lease was extended").await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 1, 0));
    q.extend(&d, HIDDEN).await.unwrap();
    q.complete(&d).await.unwrap();
    match q.extend(&d, HIDDEN).await {
        Err(e) if e.kind() == ErrorKind::Conflict => {}
        other => panic!("extend after complete must be Conflict, got {other:?}"),
    }
}

/// `abandon(retry_after)` returns a message to the queue, deliverable only
/// after the delay (counted as delayed meanwhile) and with its delivery count
/// kept; `abandon` with no delay makes it deliverable at once; the abandoned
/// lease is lost.
pub async fn check_abandon_with_delay<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("abandon");
    let id = send(q, &name, msg("retry me")).await;
    let d1 = recv(q, &name, HIDDEN).await;
    q.abandon(&d1, Duration::from_millis(1000)).await.unwrap();
    assert_empty(q, &name, "the message was abandoned with a delay").await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 1, 0, 0));
    assert_lost(q, &d1, "the lease was abandoned").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(1, 0, 0, 0), "the retry delay is over");
    let d2 = recv(q, &name, HIDDEN).await;
    assert_eq!(d2.message_id, id);
    assert_eq!(d2.delivery_count, 2);
    q.abandon(&d2, Duration::ZERO).await.unwrap();
    let d3 = recv(q, &name, HIDDEN).await;
    assert_eq!(d3.message_id, id, "abandon without delay makes the message deliverable at once");
    assert_eq!(d3.delivery_count, 3);
    q.complete(&d3).await.unwrap();
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 0, 0));
}

/// Dedup keys: a send whose key matches a pending (ready or delayed) message
/// enqueues nothing and reports that message; the first body wins; keys are
/// per key (and absent keys never dedup); a leased message does not block a
/// send with its key; a dedup send moves `not_before` earlier, never later.
pub async fn check_dedup<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("dedup");
    let first = send(q, &name, msg("first").with_dedup_key("k")).await;
    assert_eq!(
        q.send(&name, msg("second").with_dedup_key("k")).await.unwrap(),
        SendOutcome::Deduplicated(first.clone()),
        "a pending message with the key exists"
    );
    let other = send(q, &name, msg("other key").with_dedup_key("k2")).await;
    assert_ne!(other, first);
    let plain1 = send(q, &name, msg("no key")).await;
    let plain2 = send(q, &name, msg("no key")).await;
    assert_ne!(plain1, plain2, "messages without a key are never deduplicated");
    assert_eq!(q.depth(&name).await.unwrap(), depth(4, 0, 0, 0));

    let d = recv(q, &name, HIDDEN).await;
    assert_eq!(d.message_id, first);
    assert_eq!(text(&d), "first", "the first body is kept");
    assert_eq!(d.dedup_key.as_deref(), Some("k"));
    let next = send(q, &name, msg("next run").with_dedup_key("k")).await;
    assert_ne!(next, first, "a leased message does not block a send with its key");
    assert_eq!(
        q.send(&name, msg("next run again").with_dedup_key("k")).await.unwrap(),
        SendOutcome::Deduplicated(next.clone())
    );
    q.complete(&d).await.unwrap();

    let name = fresh_queue("dedup_delay");
    let hour = SystemTime::now() + Duration::from_secs(3600);
    let delayed = send(q, &name, msg("delayed").with_dedup_key("j").not_before(hour)).await;
    let later = SystemTime::now() + Duration::from_secs(7200);
    assert_eq!(
        q.send(&name, msg("even later").with_dedup_key("j").not_before(later)).await.unwrap(),
        SendOutcome::Deduplicated(delayed.clone())
    );
    assert_eq!(
        q.depth(&name).await.unwrap(),
        depth(0, 1, 0, 0),
        "a later not_before leaves the message as it was"
    );
    assert_empty(q, &name, "the message is delayed").await;
    assert_eq!(
        q.send(&name, msg("now").with_dedup_key("j")).await.unwrap(),
        SendOutcome::Deduplicated(delayed.clone())
    );
    assert_eq!(q.depth(&name).await.unwrap(), depth(1, 0, 0, 0), "dedup moved not_before earlier");
    let d = recv(q, &name, HIDDEN).await;
    assert_eq!(d.message_id, delayed);
    assert_eq!(text(&d), "delayed", "the first body is kept");
    q.complete(&d).await.unwrap();
}

/// A message is dead-lettered instead of being delivered more than
/// `max_deliveries` (3) times, whether its leases were abandoned or ran out;
/// its dead letter keeps id, body, key and count and gives a reason; a dead
/// letter does not block a send with its key.
pub async fn check_dead_letter_after_max_deliveries<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("maxdel");
    let id = send(q, &name, msg("poison").with_dedup_key("dk")).await;
    for n in 1..=CONFORMANCE_MAX_DELIVERIES {
        let d = recv(q, &name, HIDDEN).await;
        assert_eq!(d.delivery_count, n);
        q.abandon(&d, Duration::ZERO).await.unwrap();
    }
    assert_empty(q, &name, "the message exhausted its deliveries").await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 0, 1));
    let dead = q.dead_letters(&name, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, id);
    assert_eq!(dead[0].body, b"poison");
    assert_eq!(dead[0].dedup_key.as_deref(), Some("dk"));
    assert_eq!(dead[0].delivery_count, CONFORMANCE_MAX_DELIVERIES);
    assert!(!dead[0].reason.is_empty(), "a dead letter says why");
    let age = SystemTime::now().duration_since(dead[0].dead_at).unwrap_or_default();
    assert!(age < Duration::from_secs(60), "dead_at is when it was dead-lettered");
    send(q, &name, msg("fresh").with_dedup_key("dk")).await;

    // A consumer that crashes every time: the leases run out.
    let name = fresh_queue("maxdel_crash");
    let id = send(q, &name, msg("crasher")).await;
    for n in 1..=CONFORMANCE_MAX_DELIVERIES {
        let d = recv(q, &name, SHORT_LEASE).await;
        assert_eq!(d.delivery_count, n);
        tokio::time::sleep(PAST_SHORT_LEASE).await;
    }
    assert_empty(q, &name, "the message exhausted its deliveries").await;
    let dead = q.dead_letters(&name, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, id);
    assert_eq!(dead[0].delivery_count, CONFORMANCE_MAX_DELIVERIES);
}

/// `dead_letter(reason)` moves a leased message to the dead letters with that
/// reason; dead letters list newest first, up to `limit`; the lease is lost.
pub async fn check_explicit_dead_letter<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("deadletter");
    let a = send(q, &name, msg("a")).await;
    let b = send(q, &name, msg("b")).await;
    let da = recv(q, &name, HIDDEN).await;
    let db = recv(q, &name, HIDDEN).await;
    q.dead_letter(&da, "first failure").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.dead_letter(&db, "poison: body is not JSON").await.unwrap();
    let dead = q.dead_letters(&name, 10).await.unwrap();
    let ids = dead.iter().map(|d| d.message_id.as_str()).collect::<Vec<_>>();
    assert_eq!(ids, [b.as_str(), a.as_str()], "dead letters are listed newest first");
    assert_eq!(dead[0].reason, "poison: body is not JSON");
    assert_eq!(dead[0].body, b"b");
    assert_eq!(dead[0].delivery_count, 1);
    assert_eq!(dead[1].reason, "first failure");
    let limited = q.dead_letters(&name, 1).await.unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].message_id, b);
    assert_lost(q, &da, "the message was dead-lettered").await;
    assert_empty(q, &name, "both messages are dead").await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 0, 2));
}

/// A message with a future `not_before` is delayed until then (and counted
/// as delayed); one with a past `not_before` is deliverable at once.
pub async fn check_not_before<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("notbefore");
    let at = SystemTime::now() + Duration::from_millis(1500);
    let later = send(q, &name, msg("later").not_before(at)).await;
    send(q, &name, msg("now")).await;
    send(q, &name, msg("past").not_before(SystemTime::now() - Duration::from_secs(3600))).await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(2, 1, 0, 0));
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let d = recv(q, &name, HIDDEN).await;
        got.insert(text(&d).to_owned());
        q.complete(&d).await.unwrap();
    }
    assert_eq!(got, BTreeSet::from(["now".to_owned(), "past".to_owned()]));
    assert_empty(q, &name, "the remaining message is not due").await;
    let wait = at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(300);
    tokio::time::sleep(wait).await;
    let d = recv(q, &name, HIDDEN).await;
    assert_eq!(d.message_id, later, "the delayed message is deliverable after not_before");
    q.complete(&d).await.unwrap();
}

/// `cancel(key)` removes the pending (ready or delayed) messages with the
/// key and returns how many; leased messages and other keys are untouched.
pub async fn check_cancel<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("cancel");
    send(q, &name, msg("running").with_dedup_key("k")).await;
    let running = recv(q, &name, HIDDEN).await;
    send(q, &name, msg("next").with_dedup_key("k")).await;
    send(q, &name, msg("other").with_dedup_key("k2")).await;
    send(q, &name, msg("plain")).await;
    assert_eq!(q.cancel(&name, "k").await.unwrap(), 1, "only the pending message is cancelled");
    assert_eq!(q.depth(&name).await.unwrap(), depth(2, 0, 1, 0));
    q.complete(&running).await.unwrap();
    assert_eq!(q.cancel(&name, "k").await.unwrap(), 0);
    let hour = SystemTime::now() + Duration::from_secs(3600);
    send(q, &name, msg("scheduled").with_dedup_key("k").not_before(hour)).await;
    assert_eq!(q.cancel(&name, "k").await.unwrap(), 1, "delayed messages are cancelled too");
    assert_eq!(q.cancel(&name, "no_such_key").await.unwrap(), 0);
    assert_eq!(q.depth(&name).await.unwrap(), depth(2, 0, 0, 0));
    let mut left = BTreeSet::new();
    while let Some(d) = q.receive(&name, HIDDEN).await.unwrap() {
        left.insert(text(&d).to_owned());
        q.complete(&d).await.unwrap();
    }
    assert_eq!(left, BTreeSet::from(["other".to_owned(), "plain".to_owned()]));
}

/// `depth` counts ready, delayed, leased and dead messages; a message whose
/// lease ran out counts as ready again.
pub async fn check_depth_counts<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let name = fresh_queue("depth");
    assert_eq!(q.depth(&name).await.unwrap(), QueueDepth::default(), "an unused queue is empty");
    for body in ["leased", "dead", "ready"] {
        send(q, &name, msg(body)).await;
    }
    send(q, &name, msg("delayed").not_before(SystemTime::now() + Duration::from_secs(3600))).await;
    let leased = recv(q, &name, MEDIUM_LEASE).await;
    assert_eq!(text(&leased), "leased");
    let dead = recv(q, &name, HIDDEN).await;
    q.dead_letter(&dead, "conformance").await.unwrap();
    assert_eq!(q.depth(&name).await.unwrap(), depth(1, 1, 1, 1));
    tokio::time::sleep(PAST_MEDIUM_LEASE).await;
    assert_eq!(q.depth(&name).await.unwrap(), depth(2, 1, 0, 1), "an expired lease is ready again");
}

/// Queues are independent: messages, dedup keys, cancels and dead letters
/// of one never affect another; an unused queue is empty.
pub async fn check_queues_are_independent<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let q = q.as_ref();
    let (qa, qb, unused) = (fresh_queue("indep_a"), fresh_queue("indep_b"), fresh_queue("indep_unused"));
    send(q, &qa, msg("a").with_dedup_key("k")).await;
    send(q, &qb, msg("b").with_dedup_key("k")).await;
    assert_eq!(q.cancel(&qa, "k").await.unwrap(), 1);
    assert_eq!(q.depth(&qa).await.unwrap(), depth(0, 0, 0, 0));
    assert_eq!(q.depth(&qb).await.unwrap(), depth(1, 0, 0, 0));
    assert_empty(q, &qa, "its only message was cancelled").await;
    let d = recv(q, &qb, HIDDEN).await;
    assert_eq!(text(&d), "b");
    q.dead_letter(&d, "conformance").await.unwrap();
    assert!(q.dead_letters(&qa, 10).await.unwrap().is_empty());
    assert_eq!(q.dead_letters(&qb, 10).await.unwrap().len(), 1);
    assert_empty(q, &unused, "nothing was sent to it").await;
    assert_eq!(q.depth(&unused).await.unwrap(), QueueDepth::default());
    assert!(q.dead_letters(&unused, 10).await.unwrap().is_empty());
    assert_eq!(q.cancel(&unused, "k").await.unwrap(), 0);
}

/// Competing consumers each lease different messages: every message is
/// delivered exactly once while no lease runs out.
pub async fn check_concurrent_consumers_get_each_message_once<H: QueueHarness + ?Sized>(harness: &H) {
    let q = harness.open().await;
    let name = fresh_queue("compete");
    let mut sent = BTreeSet::new();
    for i in 0..24 {
        sent.insert(send(q.as_ref(), &name, msg(&format!("m{i}"))).await);
    }
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let (q, name) = (q.clone(), name.clone());
        consumers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(d) = q.receive(&name, HIDDEN).await.unwrap() {
                tokio::task::yield_now().await;
                q.complete(&d).await.unwrap();
                got.push(d.message_id);
            }
            got
        }));
    }
    let mut received = Vec::new();
    for c in consumers {
        received.extend(c.await.unwrap());
    }
    assert_eq!(received.len(), sent.len(), "no message is delivered twice");
    assert_eq!(received.into_iter().collect::<BTreeSet<_>>(), sent);
    assert_eq!(q.depth(&name).await.unwrap(), QueueDepth::default());
}

/// For durable adapters: ready, delayed and leased messages, dedup keys,
/// leases and dead letters survive dropping the queue and opening it again.
/// For a harness that is not durable, verifies nothing and says so.
pub async fn check_survives_reopen<H: QueueHarness + ?Sized>(harness: &H) {
    if !harness.durable() {
        eprintln!("check_survives_reopen: the harness is not durable; nothing to verify");
        return;
    }
    let name = fresh_queue("reopen");
    let q = harness.open().await;
    let leased_id = send(q.as_ref(), &name, msg("leased")).await;
    let leased = recv(q.as_ref(), &name, HIDDEN).await;
    assert_eq!(leased.message_id, leased_id);
    send(q.as_ref(), &name, msg("dead")).await;
    let dead = recv(q.as_ref(), &name, HIDDEN).await;
    q.dead_letter(&dead, "kept across restarts").await.unwrap();
    let ready = send(q.as_ref(), &name, msg("ready").with_dedup_key("rk")).await;
    let hour = SystemTime::now() + Duration::from_secs(3600);
    send(q.as_ref(), &name, msg("delayed").with_dedup_key("dk").not_before(hour)).await;
    drop(q);

    let q = harness.open().await;
    let q = q.as_ref();
    assert_eq!(q.depth(&name).await.unwrap(), depth(1, 1, 1, 1), "every message survived");
    let dead_letters = q.dead_letters(&name, 10).await.unwrap();
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(dead_letters[0].message_id, dead.message_id);
    assert_eq!(dead_letters[0].reason, "kept across restarts");
    assert_eq!(
        q.send(&name, msg("again").with_dedup_key("rk")).await.unwrap(),
        SendOutcome::Deduplicated(ready.clone()),
        "dedup keys survived"
    );
    let d = recv(q, &name, HIDDEN).await;
    assert_eq!(d.message_id, ready);
    assert_eq!(text(&d), "ready");
    q.complete(&d).await.unwrap();
    q.complete(&leased).await.unwrap();
    assert_empty(q, &name, "the delayed message is not due").await;
    assert_eq!(q.cancel(&name, "dk").await.unwrap(), 1);
    assert_eq!(q.depth(&name).await.unwrap(), depth(0, 0, 0, 1));
}

/// Runs every check in turn, for callers that do not use the macro.
pub async fn check_all<H: QueueHarness + ?Sized>(harness: &H) {
    check_send_receive_complete(harness).await;
    check_redelivery_after_lease_expiry(harness).await;
    check_extend_keeps_message_hidden(harness).await;
    check_abandon_with_delay(harness).await;
    check_dedup(harness).await;
    check_dead_letter_after_max_deliveries(harness).await;
    check_explicit_dead_letter(harness).await;
    check_not_before(harness).await;
    check_cancel(harness).await;
    check_depth_counts(harness).await;
    check_queues_are_independent(harness).await;
    check_concurrent_consumers_get_each_message_once(harness).await;
    check_survives_reopen(harness).await;
}

/// Expands to one `#[test]` per [`WorkQueue`](crate::WorkQueue) conformance
/// check, each named after its check in
/// [`conformance::queue`](crate::conformance::queue).
///
/// The argument is an expression callable with no arguments that returns a
/// future of a [`QueueHarness`](crate::conformance::queue::QueueHarness),
/// e.g. a closure `|| async { … }` or the path of an `async fn`. It is
/// called once per test. Each test runs on its own current-thread tokio
/// runtime; the invoking crate needs no tokio dependency of its own.
///
/// ```ignore
/// use sync_core::conformance::queue::MemoryQueueHarness;
/// sync_core::work_queue_conformance!(|| async { MemoryQueueHarness::new() });
/// ```
///
/// An adapter whose server is not reachable (e.g. no environment variable
/// names one) writes `work_queue_conformance!(skip = "why")` instead: the
/// same tests, each reported by `cargo test` as ignored with the reason, so
/// a skipped check never counts as a pass.
#[macro_export]
macro_rules! work_queue_conformance {
    (skip = $reason:literal $(,)?) => {
        $crate::__work_queue_conformance_tests!(
            @skip $reason;
            check_send_receive_complete,
            check_redelivery_after_lease_expiry,
            check_extend_keeps_message_hidden,
            check_abandon_with_delay,
            check_dedup,
            check_dead_letter_after_max_deliveries,
            check_explicit_dead_letter,
            check_not_before,
            check_cancel,
            check_depth_counts,
            check_queues_are_independent,
            check_concurrent_consumers_get_each_message_once,
            check_survives_reopen,
        );
    };
    ($open:expr $(,)?) => {
        $crate::__work_queue_conformance_tests!(
            ($open);
            check_send_receive_complete,
            check_redelivery_after_lease_expiry,
            check_extend_keeps_message_hidden,
            check_abandon_with_delay,
            check_dedup,
            check_dead_letter_after_max_deliveries,
            check_explicit_dead_letter,
            check_not_before,
            check_cancel,
            check_depth_counts,
            check_queues_are_independent,
            check_concurrent_consumers_get_each_message_once,
            check_survives_reopen,
        );
    };
}

/// Implementation detail of [`work_queue_conformance!`](crate::work_queue_conformance).
#[doc(hidden)]
#[macro_export]
macro_rules! __work_queue_conformance_tests {
    (@skip $reason:literal; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            #[ignore = $reason]
            fn $check() {}
        )+
    };
    (($open:expr); $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::conformance::queue::run_check(async {
                    let harness = ($open)().await;
                    $crate::conformance::queue::$check(&harness).await;
                });
            }
        )+
    };
}
