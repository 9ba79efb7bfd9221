//! Durable work queues with peek-lock semantics.
//!
//! At-least-once delivery: a received message is hidden for its lease, and
//! reappears unless completed. Every consumer must therefore be idempotent.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::QueueName;

/// The default number of deliveries before a message is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 10;

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message {
    /// The payload.
    pub body: Vec<u8>,
    /// At most one *pending* (ready or delayed, not leased) message per key
    /// and queue; see [`WorkQueue::send`].
    pub dedup_key: Option<String>,
    /// Not delivered before this time.
    pub not_before: Option<SystemTime>,
}

impl Message {
    /// A message with a JSON body.
    pub fn json<T: Serialize>(body: &T) -> Result<Self> {
        Ok(Message {
            body: serde_json::to_vec(body).map_err(|e| crate::Error::internal(e.to_string()))?,
            ..Message::default()
        })
    }
    /// Sets the dedup key (builder style).
    pub fn with_dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }
    /// Sets `not_before` (builder style).
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }
}

/// What [`WorkQueue::send`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "outcome", content = "message_id")]
pub enum SendOutcome {
    /// A new message was enqueued.
    Enqueued(String),
    /// A pending message with the same dedup key exists; nothing new was enqueued.
    Deduplicated(String),
}

/// A leased message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The queue it came from.
    pub queue: QueueName,
    /// The message's id (stable across redeliveries).
    pub message_id: String,
    /// Identifies this lease; operations with a lost lease fail.
    pub lease_token: String,
    /// The payload.
    pub body: Vec<u8>,
    /// The dedup key it was sent with.
    pub dedup_key: Option<String>,
    /// How many times it has been delivered, this delivery included (1 first).
    pub delivery_count: u32,
}

/// Message counts of a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Deliverable now.
    pub ready: u64,
    /// Waiting for their `not_before` or retry delay.
    pub delayed: u64,
    /// Leased to a consumer.
    pub leased: u64,
    /// Dead-lettered.
    pub dead: u64,
}

/// A dead-lettered message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The message's id.
    pub message_id: String,
    /// The payload.
    pub body: Vec<u8>,
    /// Its dedup key.
    pub dedup_key: Option<String>,
    /// Deliveries made.
    pub delivery_count: u32,
    /// Why it was dead-lettered (the last error, or exhausted deliveries).
    pub reason: String,
    /// When.
    pub dead_at: SystemTime,
}

/// Named durable queues with peek-lock semantics.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Enqueues a message. When a pending (ready or delayed, not leased)
    /// message with the same dedup key exists in the queue, nothing is
    /// enqueued: the existing message keeps its body, its `not_before`
    /// becomes the earlier of the two, and `Deduplicated` is returned. A
    /// leased message does not block a send with its key, so a consumer can
    /// schedule the next run before completing the current one.
    async fn send(&self, queue: &QueueName, message: Message) -> Result<SendOutcome>;

    /// Leases the oldest deliverable message for `lease`, or returns `None`.
    /// A message whose deliveries would exceed the queue's maximum is moved
    /// to the dead letters instead of being delivered.
    async fn receive(&self, queue: &QueueName, lease: Duration) -> Result<Option<Delivery>>;

    /// Removes a leased message for good. `Conflict` when the lease was lost
    /// (it expired and the message may be with another consumer).
    async fn complete(&self, delivery: &Delivery) -> Result<()>;

    /// Returns a leased message to the queue, deliverable after
    /// `retry_after`. `Conflict` when the lease was lost.
    async fn abandon(&self, delivery: &Delivery, retry_after: Duration) -> Result<()>;

    /// Extends a lease to `lease` from now. `Conflict` when it was lost.
    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<()>;

    /// Moves a leased message to the dead letters with `reason`. `Conflict`
    /// when the lease was lost.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()>;

    /// Removes pending (not leased) messages with `dedup_key`; returns how
    /// many. Used to stop a recurring schedule.
    async fn cancel(&self, queue: &QueueName, dedup_key: &str) -> Result<u64>;

    /// Message counts of `queue`.
    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth>;

    /// Up to `limit` dead letters of `queue`, newest first.
    async fn dead_letters(&self, queue: &QueueName, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Succeeds when the queue is reachable (for readiness checks).
    async fn ping(&self) -> Result<()>;
}
