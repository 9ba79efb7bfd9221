//! [`SqliteQueue`]: durable named work queues with peek-lock semantics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use sync_core::queue::{DEFAULT_MAX_DELIVERIES, DeadLetter, QueueDepth, SendOutcome};
use sync_core::{Delivery, Error, Message, QueueName, Result, WorkQueue};

use crate::error::{R, StoreError};
use crate::sql::{ConnSettings, from_millis, millis, open};
use crate::store::{CONTROL_FILE, blocking, lock};

const QUEUE_DDL: &str = "
CREATE TABLE IF NOT EXISTS queue_messages (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT NOT NULL,
    body           BLOB NOT NULL,
    dedup_key      TEXT,
    visible_at     INTEGER NOT NULL,
    lease_token    TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    enqueued_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_messages_by_visibility ON queue_messages (queue, visible_at, id);
CREATE INDEX IF NOT EXISTS queue_messages_by_key ON queue_messages (queue, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_dead_letters (
    id             INTEGER PRIMARY KEY,
    queue          TEXT NOT NULL,
    body           BLOB NOT NULL,
    dedup_key      TEXT,
    delivery_count INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    dead_at        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_dead_letters_by_time ON queue_dead_letters (queue, dead_at, id);
";

/// Options of a [`SqliteQueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    /// Deliveries after which a message is dead-lettered instead of being
    /// delivered again. Default [`DEFAULT_MAX_DELIVERIES`].
    pub max_deliveries: u32,
    /// How long an operation waits for another writer's lock before failing
    /// with `Unavailable`. Default 5 s.
    pub busy_timeout: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions { max_deliveries: DEFAULT_MAX_DELIVERIES, busy_timeout: Duration::from_secs(5) }
    }
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    max_deliveries: u32,
}

/// Durable work queues in one SQLite database (by default the store's
/// `control.sqlite`), tables `queue_messages` and `queue_dead_letters`.
///
/// A message is *ready* when its `visible_at` has passed, *delayed* before
/// that, and *leased* while it has a lease token and its lease (until
/// `visible_at`) runs; a lease that ran out makes the message ready again
/// with its delivery count kept, so a consumer that crashed (or a process
/// that was killed) loses nothing. Ready messages are delivered by ready
/// time, then in send order. Every operation is one transaction (`BEGIN
/// IMMEDIATE`), so competing consumers — in this process or another on the
/// same file — never lease one message twice. Lease times use the wall clock.
///
/// Cloning gives another handle on the same connection.
#[derive(Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("path", &self.inner.path)
            .field("max_deliveries", &self.inner.max_deliveries)
            .finish_non_exhaustive()
    }
}

impl SqliteQueue {
    /// Opens (creating when needed) the queue tables in the database file
    /// `path`. Errors: `Internal` when the file cannot be created or read.
    pub async fn open(path: impl AsRef<Path>, options: QueueOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let settings = ConnSettings {
            busy_timeout: options.busy_timeout,
            cache_size_kib: 8 * 1024,
            mmap_size: 0,
            wal_autocheckpoint: 1000,
        };
        let conn = blocking({
            let path = path.clone();
            move || {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| StoreError::io("creating", parent, e))?;
                }
                let conn = open(&path, &settings, true, false)?;
                conn.execute_batch(QUEUE_DDL)?;
                Ok(conn)
            }
        })
        .await?;
        Ok(SqliteQueue {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
                max_deliveries: options.max_deliveries.max(1),
            }),
        })
    }

    /// Opens the queue in a data directory's `control.sqlite`, beside a
    /// [`SqliteStagingStore`](crate::SqliteStagingStore) of the same directory.
    pub async fn open_in_dir(dir: impl AsRef<Path>, options: QueueOptions) -> Result<Self> {
        Self::open(dir.as_ref().join(CONTROL_FILE), options).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, u32) -> R<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || f(&mut lock(&inner.conn), inner.max_deliveries)).await
    }
}

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

fn after(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn message_id(id: &str) -> Option<i64> {
    id.parse().ok()
}

fn lost(d: &Delivery) -> StoreError {
    Error::conflict(format!(
        "the lease on message {} of queue '{}' was lost (it ran out, or the message was completed, \
         abandoned or dead-lettered)",
        d.message_id, d.queue
    ))
    .into()
}

/// Moves message `id` to the dead letters.
fn bury(conn: &Connection, id: i64, reason: &str, now: i64) -> R<()> {
    conn.prepare_cached(
        "INSERT INTO queue_dead_letters (id, queue, body, dedup_key, delivery_count, reason, dead_at) \
         SELECT id, queue, body, dedup_key, delivery_count, ?2, ?3 FROM queue_messages WHERE id = ?1",
    )?
    .execute(rusqlite::params![id, reason, now])?;
    conn.prepare_cached("DELETE FROM queue_messages WHERE id = ?1")?.execute([id])?;
    Ok(())
}

/// A live lease's condition: the token matches and the lease has not run out.
const HELD: &str = "id = ?1 AND lease_token = ?2 AND visible_at > ?3";

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn send(&self, queue: &QueueName, message: Message) -> Result<SendOutcome> {
        let queue = queue.clone();
        self.run(move |conn, _| {
            let now = now_ms();
            let visible = message.not_before.map_or(now, millis);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(key) = &message.dedup_key {
                let pending: Option<(i64, i64)> = tx
                    .prepare_cached(
                        "SELECT id, visible_at FROM queue_messages WHERE queue = ?1 AND dedup_key = ?2 \
                         AND (lease_token IS NULL OR visible_at <= ?3) ORDER BY id LIMIT 1",
                    )?
                    .query_row(rusqlite::params![queue.as_str(), key, now], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((id, visible_at)) = pending {
                    if visible < visible_at {
                        tx.prepare_cached("UPDATE queue_messages SET visible_at = ?2 WHERE id = ?1")?
                            .execute(rusqlite::params![id, visible])?;
                    }
                    tx.commit()?;
                    return Ok(SendOutcome::Deduplicated(id.to_string()));
                }
            }
            tx.prepare_cached(
                "INSERT INTO queue_messages (queue, body, dedup_key, visible_at, enqueued_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(rusqlite::params![
                queue.as_str(),
                message.body,
                message.dedup_key,
                visible,
                now
            ])?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(SendOutcome::Enqueued(id.to_string()))
        })
        .await
    }

    async fn receive(&self, queue: &QueueName, lease: Duration) -> Result<Option<Delivery>> {
        let queue = queue.clone();
        self.run(move |conn, max_deliveries| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            loop {
                let next: Option<(i64, Vec<u8>, Option<String>, u32)> = tx
                    .prepare_cached(
                        "SELECT id, body, dedup_key, delivery_count FROM queue_messages \
                         WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT 1",
                    )?
                    .query_row(rusqlite::params![queue.as_str(), now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()?;
                let Some((id, body, dedup_key, count)) = next else {
                    tx.commit()?;
                    return Ok(None);
                };
                if count >= max_deliveries {
                    let reason = format!(
                        "delivered {count} times without being completed; the maximum is {max_deliveries}"
                    );
                    bury(&tx, id, &reason, now)?;
                    continue;
                }
                let token = uuid::Uuid::new_v4().simple().to_string();
                tx.prepare_cached(
                    "UPDATE queue_messages SET lease_token = ?2, visible_at = ?3, \
                     delivery_count = delivery_count + 1 WHERE id = ?1",
                )?
                .execute(rusqlite::params![id, token, after(now, lease)])?;
                tx.commit()?;
                return Ok(Some(Delivery {
                    queue,
                    message_id: id.to_string(),
                    lease_token: token,
                    body,
                    dedup_key,
                    delivery_count: count + 1,
                }));
            }
        })
        .await
    }

    async fn complete(&self, delivery: &Delivery) -> Result<()> {
        let d = delivery.clone();
        self.run(move |conn, _| {
            let Some(id) = message_id(&d.message_id) else { return Err(lost(&d)) };
            let n = conn
                .prepare_cached(&format!("DELETE FROM queue_messages WHERE {HELD}"))?
                .execute(rusqlite::params![id, d.lease_token, now_ms()])?;
            if n == 0 { Err(lost(&d)) } else { Ok(()) }
        })
        .await
    }

    async fn abandon(&self, delivery: &Delivery, retry_after: Duration) -> Result<()> {
        let d = delivery.clone();
        self.run(move |conn, _| {
            let Some(id) = message_id(&d.message_id) else { return Err(lost(&d)) };
            let now = now_ms();
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE queue_messages SET lease_token = NULL, visible_at = ?4 WHERE {HELD}"
                ))?
                .execute(rusqlite::params![id, d.lease_token, now, after(now, retry_after)])?;
            if n == 0 { Err(lost(&d)) } else { Ok(()) }
        })
        .await
    }

    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<()> {
        let d = delivery.clone();
        self.run(move |conn, _| {
            let Some(id) = message_id(&d.message_id) else { return Err(lost(&d)) };
            let now = now_ms();
            let n = conn
                .prepare_cached(&format!("UPDATE queue_messages SET visible_at = ?4 WHERE {HELD}"))?
                .execute(rusqlite::params![id, d.lease_token, now, after(now, lease)])?;
            if n == 0 { Err(lost(&d)) } else { Ok(()) }
        })
        .await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let d = delivery.clone();
        let reason = reason.to_owned();
        self.run(move |conn, _| {
            let Some(id) = message_id(&d.message_id) else { return Err(lost(&d)) };
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let held = tx
                .prepare_cached(&format!("SELECT 1 FROM queue_messages WHERE {HELD}"))?
                .query_row(rusqlite::params![id, d.lease_token, now], |_| Ok(()))
                .optional()?
                .is_some();
            if !held {
                return Err(lost(&d));
            }
            bury(&tx, id, &reason, now)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn cancel(&self, queue: &QueueName, dedup_key: &str) -> Result<u64> {
        let queue = queue.clone();
        let key = dedup_key.to_owned();
        self.run(move |conn, _| {
            let n = conn
                .prepare_cached(
                    "DELETE FROM queue_messages WHERE queue = ?1 AND dedup_key = ?2 \
                     AND (lease_token IS NULL OR visible_at <= ?3)",
                )?
                .execute(rusqlite::params![queue.as_str(), key, now_ms()])?;
            Ok(n as u64)
        })
        .await
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth> {
        let queue = queue.clone();
        self.run(move |conn, _| {
            let tx = conn.transaction()?;
            let now = now_ms();
            let (ready, delayed, leased): (i64, i64, i64) = tx
                .prepare_cached(
                    "SELECT \
                       coalesce(sum(visible_at <= ?2), 0), \
                       coalesce(sum(visible_at > ?2 AND lease_token IS NULL), 0), \
                       coalesce(sum(visible_at > ?2 AND lease_token IS NOT NULL), 0) \
                     FROM queue_messages WHERE queue = ?1",
                )?
                .query_row(rusqlite::params![queue.as_str(), now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            let dead: i64 = tx
                .prepare_cached("SELECT count(*) FROM queue_dead_letters WHERE queue = ?1")?
                .query_row([queue.as_str()], |r| r.get(0))?;
            tx.commit()?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(QueueDepth { ready: n(ready), delayed: n(delayed), leased: n(leased), dead: n(dead) })
        })
        .await
    }

    async fn dead_letters(&self, queue: &QueueName, limit: usize) -> Result<Vec<DeadLetter>> {
        let queue = queue.clone();
        self.run(move |conn, _| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, body, dedup_key, delivery_count, reason, dead_at FROM queue_dead_letters \
                 WHERE queue = ?1 ORDER BY dead_at DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                rusqlite::params![queue.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(DeadLetter {
                        message_id: r.get::<_, i64>(0)?.to_string(),
                        body: r.get(1)?,
                        dedup_key: r.get(2)?,
                        delivery_count: r.get(3)?,
                        reason: r.get(4)?,
                        dead_at: from_millis(r.get(5)?),
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.run(|conn, _| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }
}
