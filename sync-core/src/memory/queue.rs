//! [`MemoryQueue`]: the in-memory [`WorkQueue`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::ids::QueueName;
use crate::queue::{
    DEFAULT_MAX_DELIVERIES, DeadLetter, Delivery, Message, QueueDepth, SendOutcome, WorkQueue,
};

/// An in-memory [`WorkQueue`]: named queues created on first use, kept for
/// the life of the value (clones share them).
///
/// Semantics, exactly those of the trait:
/// * Deliverable messages are leased in FIFO order of (ready time, enqueue
///   order). A message's ready time is when it was sent, or its
///   `not_before` when that is later; [`WorkQueue::abandon`] makes it
///   `now + retry_after`. A message whose lease expired keeps its ready time,
///   so it is redelivered ahead of younger messages.
/// * A lease ends at `lease` after the receive (or after the last
///   [`WorkQueue::extend`]), measured on a monotonic clock. Once it has
///   ended, operations with its token fail with `Conflict`, whether or not
///   the message was delivered again; every delivery gets a fresh token.
/// * A receive that would make a message's delivery count exceed
///   `max_deliveries` moves it to the dead letters instead, and the receive
///   goes on with the next message.
/// * Not durable: everything is lost when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct MemoryQueue {
    inner: Arc<Mutex<State>>,
    max_deliveries: u32,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<QueueName, Queue>,
    next_order: u64,
}

#[derive(Debug, Default)]
struct Queue {
    messages: HashMap<String, Stored>,
    /// Oldest first; read newest first.
    dead: Vec<DeadLetter>,
}

#[derive(Debug)]
struct Stored {
    body: Vec<u8>,
    dedup_key: Option<String>,
    ready_at: SystemTime,
    order: u64,
    delivery_count: u32,
    lease: Option<Lease>,
}

#[derive(Debug)]
struct Lease {
    token: String,
    until: Instant,
}

impl Stored {
    /// Whether a live lease hides the message at `now`.
    fn is_leased(&self, now: Instant) -> bool {
        self.lease.as_ref().is_some_and(|l| l.until > now)
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::new()
    }
}

impl MemoryQueue {
    /// An empty queue set dead-lettering after [`DEFAULT_MAX_DELIVERIES`].
    pub fn new() -> Self {
        MemoryQueue::with_max_deliveries(DEFAULT_MAX_DELIVERIES)
    }

    /// An empty queue set dead-lettering a message on the receive that would
    /// be its delivery number `max_deliveries + 1`. Values below 1 count as 1.
    pub fn with_max_deliveries(max_deliveries: u32) -> Self {
        MemoryQueue { inner: Arc::new(Mutex::new(State::default())), max_deliveries: max_deliveries.max(1) }
    }

    /// The configured maximum number of deliveries of a message.
    pub fn max_deliveries(&self) -> u32 {
        self.max_deliveries
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, so a poisoned state is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The message a live lease of `delivery` holds, or `Conflict`.
fn leased<'a>(state: &'a mut State, delivery: &Delivery, now: Instant) -> Result<&'a mut Stored> {
    let lost = || {
        Error::conflict(format!(
            "the lease on message '{}' of queue '{}' was lost (expired, or the message was settled)",
            delivery.message_id, delivery.queue
        ))
    };
    let msg = state
        .queues
        .get_mut(&delivery.queue)
        .and_then(|q| q.messages.get_mut(&delivery.message_id))
        .ok_or_else(lost)?;
    match &msg.lease {
        Some(l) if l.token == delivery.lease_token && l.until > now => Ok(msg),
        _ => Err(lost()),
    }
}

fn dead_letter_of(id: String, msg: Stored, reason: String) -> DeadLetter {
    DeadLetter {
        message_id: id,
        body: msg.body,
        dedup_key: msg.dedup_key,
        delivery_count: msg.delivery_count,
        reason,
        dead_at: SystemTime::now(),
    }
}

/// What "forever" means for a lease or delay too long to represent.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn lease_deadline(now: Instant, lease: Duration) -> Instant {
    now.checked_add(lease).or_else(|| now.checked_add(FOREVER)).unwrap_or(now)
}

fn ready_after(now: SystemTime, delay: Duration) -> SystemTime {
    now.checked_add(delay).or_else(|| now.checked_add(FOREVER)).unwrap_or(now)
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    async fn send(&self, queue: &QueueName, message: Message) -> Result<SendOutcome> {
        let now = SystemTime::now();
        let now_i = Instant::now();
        let ready_at = message.not_before.map_or(now, |t| t.max(now));
        let mut state = self.state();
        let order = state.next_order;
        let q = state.queues.entry(queue.clone()).or_default();
        if let Some(key) = &message.dedup_key {
            let pending = q
                .messages
                .iter_mut()
                .filter(|(_, m)| m.dedup_key.as_ref() == Some(key) && !m.is_leased(now_i))
                .min_by_key(|(_, m)| m.order);
            if let Some((id, m)) = pending {
                m.ready_at = m.ready_at.min(ready_at);
                return Ok(SendOutcome::Deduplicated(id.clone()));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        q.messages.insert(
            id.clone(),
            Stored {
                body: message.body,
                dedup_key: message.dedup_key,
                ready_at,
                order,
                delivery_count: 0,
                lease: None,
            },
        );
        state.next_order += 1;
        Ok(SendOutcome::Enqueued(id))
    }

    async fn receive(&self, queue: &QueueName, lease: Duration) -> Result<Option<Delivery>> {
        let max = self.max_deliveries;
        let mut state = self.state();
        let Some(q) = state.queues.get_mut(queue) else {
            return Ok(None);
        };
        loop {
            let now = SystemTime::now();
            let now_i = Instant::now();
            let next = q
                .messages
                .iter()
                .filter(|(_, m)| !m.is_leased(now_i) && m.ready_at <= now)
                .min_by_key(|(_, m)| (m.ready_at, m.order))
                .map(|(id, _)| id.clone());
            let Some(id) = next else {
                return Ok(None);
            };
            let Some(msg) = q.messages.get_mut(&id) else {
                return Err(Error::internal("queue message vanished while the queue was locked"));
            };
            if msg.delivery_count >= max {
                if let Some(msg) = q.messages.remove(&id) {
                    let reason = format!("delivered {} times, the maximum", msg.delivery_count);
                    tracing::warn!(queue = %queue, message_id = %id, %reason, "message dead-lettered");
                    q.dead.push(dead_letter_of(id, msg, reason));
                }
                continue;
            }
            msg.delivery_count += 1;
            let token = uuid::Uuid::new_v4().to_string();
            msg.lease = Some(Lease { token: token.clone(), until: lease_deadline(now_i, lease) });
            return Ok(Some(Delivery {
                queue: queue.clone(),
                message_id: id,
                lease_token: token,
                body: msg.body.clone(),
                dedup_key: msg.dedup_key.clone(),
                delivery_count: msg.delivery_count,
            }));
        }
    }

    async fn complete(&self, delivery: &Delivery) -> Result<()> {
        let mut state = self.state();
        leased(&mut state, delivery, Instant::now())?;
        if let Some(q) = state.queues.get_mut(&delivery.queue) {
            q.messages.remove(&delivery.message_id);
        }
        Ok(())
    }

    async fn abandon(&self, delivery: &Delivery, retry_after: Duration) -> Result<()> {
        let mut state = self.state();
        let msg = leased(&mut state, delivery, Instant::now())?;
        msg.lease = None;
        msg.ready_at = ready_after(SystemTime::now(), retry_after);
        Ok(())
    }

    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<()> {
        let mut state = self.state();
        let now = Instant::now();
        let msg = leased(&mut state, delivery, now)?;
        if let Some(l) = msg.lease.as_mut() {
            l.until = lease_deadline(now, lease);
        }
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let mut state = self.state();
        leased(&mut state, delivery, Instant::now())?;
        if let Some(q) = state.queues.get_mut(&delivery.queue)
            && let Some(msg) = q.messages.remove(&delivery.message_id)
        {
            q.dead.push(dead_letter_of(delivery.message_id.clone(), msg, reason.to_owned()));
        }
        Ok(())
    }

    async fn cancel(&self, queue: &QueueName, dedup_key: &str) -> Result<u64> {
        let now = Instant::now();
        let mut state = self.state();
        let Some(q) = state.queues.get_mut(queue) else {
            return Ok(0);
        };
        let before = q.messages.len();
        q.messages.retain(|_, m| m.dedup_key.as_deref() != Some(dedup_key) || m.is_leased(now));
        Ok((before - q.messages.len()) as u64)
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth> {
        let now = SystemTime::now();
        let now_i = Instant::now();
        let state = self.state();
        let mut depth = QueueDepth::default();
        if let Some(q) = state.queues.get(queue) {
            for m in q.messages.values() {
                if m.is_leased(now_i) {
                    depth.leased += 1;
                } else if m.ready_at <= now {
                    depth.ready += 1;
                } else {
                    depth.delayed += 1;
                }
            }
            depth.dead = q.dead.len() as u64;
        }
        Ok(depth)
    }

    async fn dead_letters(&self, queue: &QueueName, limit: usize) -> Result<Vec<DeadLetter>> {
        let state = self.state();
        Ok(state
            .queues
            .get(queue)
            .map(|q| q.dead.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    #[tokio::test]
    async fn max_deliveries_is_at_least_one() {
        let queue = MemoryQueue::with_max_deliveries(0);
        assert_eq!(queue.max_deliveries(), 1);
        queue.send(&q("a"), Message::default()).await.unwrap();
        let d = queue.receive(&q("a"), Duration::from_secs(5)).await.unwrap().unwrap();
        queue.abandon(&d, Duration::ZERO).await.unwrap();
        assert!(queue.receive(&q("a"), Duration::from_secs(5)).await.unwrap().is_none());
        assert_eq!(queue.depth(&q("a")).await.unwrap().dead, 1);
    }

    #[tokio::test]
    async fn expired_lease_keeps_its_place() {
        let queue = MemoryQueue::new();
        queue.send(&q("a"), Message { body: b"1".to_vec(), ..Message::default() }).await.unwrap();
        let first = queue.receive(&q("a"), Duration::from_millis(50)).await.unwrap().unwrap();
        queue.send(&q("a"), Message { body: b"2".to_vec(), ..Message::default() }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let again = queue.receive(&q("a"), Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(again.message_id, first.message_id);
        assert_eq!(again.delivery_count, 2);
    }

    #[tokio::test]
    async fn huge_durations_do_not_overflow() {
        let queue = MemoryQueue::new();
        queue.send(&q("a"), Message::default()).await.unwrap();
        let d = queue.receive(&q("a"), Duration::MAX).await.unwrap().unwrap();
        queue.extend(&d, Duration::MAX).await.unwrap();
        queue.abandon(&d, Duration::MAX).await.unwrap();
        assert_eq!(queue.depth(&q("a")).await.unwrap().delayed, 1);
    }
}
