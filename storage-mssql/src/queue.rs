//! [`SqlServerQueue`]: durable named work queues with peek-lock semantics on
//! SQL Server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sync_core::queue::{DeadLetter, QueueDepth, SendOutcome};
use sync_core::{AttributeType, Delivery, Error, Message, QueueName, Result, Value, WorkQueue};
use tiberius::Row;

use crate::config::SqlServerConfig;
use crate::decode::column_value;
use crate::error::{MssqlError, R};
use crate::pool::Pool;
use crate::sql;

/// Durable work queues in the control database, tables
/// `sync_queue_messages` and `sync_queue_dead_letters` of the control schema.
///
/// Any number of processes may share the queue: a receive leases with
/// `READPAST, UPDLOCK, ROWLOCK`, so competing consumers skip rows another
/// consumer is leasing and never lease one message twice. Lease times use the
/// server's clock. A lease that ran out makes the message due again with its
/// delivery count kept; the receive that would exceed `max_deliveries` moves
/// it to the dead letters instead.
#[derive(Clone)]
pub struct SqlServerQueue {
    pool: Pool,
    schema: String,
    max_deliveries: u32,
}

impl std::fmt::Debug for SqlServerQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerQueue")
            .field("schema", &self.schema)
            .field("max_deliveries", &self.max_deliveries)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(ms).unwrap_or(0)
}

fn from_epoch_ms(v: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

fn decode<'a, T: tiberius::FromSql<'a>>(row: &'a Row, idx: usize, what: &str) -> R<T> {
    row.try_get::<T, _>(idx)?.ok_or_else(|| MssqlError::Decode(format!("{what} is null")))
}

/// A `NOT NULL` integer column of any width (`tinyint` … `bigint`), so a
/// count or id the server returns as `int` rather than `bigint` still reads.
fn integer(row: &Row, idx: usize, what: &str) -> R<i64> {
    match column_value(row, idx, &AttributeType::Integer)? {
        Value::Integer(i) => Ok(i),
        _ => Err(MssqlError::Decode(format!("{what} is null"))),
    }
}

/// A nullable text column.
fn text(row: &Row, idx: usize) -> R<Option<String>> {
    match column_value(row, idx, &AttributeType::String)? {
        Value::String(s) => Ok(Some(s)),
        _ => Ok(None),
    }
}

fn lost(d: &Delivery) -> MssqlError {
    Error::conflict(format!(
        "the lease on message {} of queue '{}' was lost (it ran out, or the message was completed, \
         abandoned or dead-lettered)",
        d.message_id, d.queue
    ))
    .into()
}

impl SqlServerQueue {
    /// Connects and creates the queue tables when missing. Errors:
    /// `InvalidInput` for a bad configuration, `Unavailable` when the
    /// server cannot be reached, `Internal` when the login is refused.
    pub async fn connect(config: &SqlServerConfig) -> Result<Self> {
        config.validate()?;
        let pool = Pool::new(config.tds_config()?, config.pool_size, config.connect_timeout);
        let queue = SqlServerQueue {
            pool,
            schema: config.control_schema.clone(),
            max_deliveries: config.max_deliveries,
        };
        let ddl = sql::queue::create_tables(&queue.schema)?;
        queue.rows(&ddl, Vec::new()).await?;
        Ok(queue)
    }

    /// Runs `statement` with `params`, returning every row of every result set.
    async fn rows(
        &self,
        statement: &str,
        params: Vec<Box<dyn tiberius::ToSql + Send + Sync>>,
    ) -> R<Vec<Row>> {
        let mut conn = self.pool.get().await?;
        conn.run(async |c| {
            let refs: Vec<&dyn tiberius::ToSql> =
                params.iter().map(|p| p.as_ref() as &dyn tiberius::ToSql).collect();
            let sets = c.query(statement, &refs).await?.into_results().await?;
            Ok(sets.into_iter().flatten().collect())
        })
        .await
    }

    /// Runs `statement` with `params`, returning the rows it affected.
    async fn affected(&self, statement: &str, params: Vec<Box<dyn tiberius::ToSql + Send + Sync>>) -> R<u64> {
        let mut conn = self.pool.get().await?;
        conn.run(async |c| {
            let refs: Vec<&dyn tiberius::ToSql> =
                params.iter().map(|p| p.as_ref() as &dyn tiberius::ToSql).collect();
            Ok(c.execute(statement, &refs).await?.total())
        })
        .await
    }

    async fn held(
        &self,
        statement: R<String>,
        d: &Delivery,
        extra: Option<Box<dyn tiberius::ToSql + Send + Sync>>,
    ) -> Result<()> {
        let Ok(id) = d.message_id.parse::<i64>() else { return Err(lost(d).into()) };
        let mut params: Vec<Box<dyn tiberius::ToSql + Send + Sync>> =
            vec![Box::new(id), Box::new(d.lease_token.clone())];
        params.extend(extra);
        let n = self.affected(&statement?, params).await?;
        if n == 0 { Err(lost(d).into()) } else { Ok(()) }
    }
}

#[async_trait]
impl WorkQueue for SqlServerQueue {
    async fn send(&self, queue: &QueueName, message: Message) -> Result<SendOutcome> {
        if let Some(key) = &message.dedup_key
            && key.encode_utf16().count() > sql::queue::MAX_DEDUP_KEY
        {
            // The server would refuse it as a truncation (error 2628), an
            // `Internal` error that says nothing of the key.
            return Err(Error::invalid(format!(
                "queue '{queue}': a dedup key may have at most {} characters, this one has {}",
                sql::queue::MAX_DEDUP_KEY,
                key.encode_utf16().count()
            )));
        }
        let rows = self
            .rows(
                &sql::queue::send(&self.schema)?,
                vec![
                    Box::new(queue.as_str().to_owned()),
                    Box::new(message.body),
                    Box::new(message.dedup_key),
                    Box::new(message.not_before.map(epoch_ms)),
                ],
            )
            .await?;
        let row = rows.first().ok_or_else(|| MssqlError::Decode("send returned no row".into()))?;
        let id = integer(row, 0, "id")?;
        let dedup: bool = decode(row, 1, "deduplicated")?;
        Ok(if dedup {
            SendOutcome::Deduplicated(id.to_string())
        } else {
            SendOutcome::Enqueued(id.to_string())
        })
    }

    async fn receive(&self, queue: &QueueName, lease: Duration) -> Result<Option<Delivery>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let rows = self
            .rows(
                &sql::queue::receive(&self.schema)?,
                vec![
                    Box::new(queue.as_str().to_owned()),
                    Box::new(i32::try_from(self.max_deliveries).unwrap_or(i32::MAX)),
                    Box::new(token.clone()),
                    Box::new(ms(lease)),
                ],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let id = integer(row, 0, "id")?;
        let body: &[u8] = decode(row, 1, "body")?;
        let dedup_key = text(row, 2)?;
        let count = integer(row, 3, "delivery_count")?;
        Ok(Some(Delivery {
            queue: queue.clone(),
            message_id: id.to_string(),
            lease_token: token,
            body: body.to_vec(),
            dedup_key,
            delivery_count: u32::try_from(count).unwrap_or(0),
        }))
    }

    async fn complete(&self, delivery: &Delivery) -> Result<()> {
        self.held(sql::queue::complete(&self.schema).map_err(Into::into), delivery, None).await
    }

    async fn abandon(&self, delivery: &Delivery, retry_after: Duration) -> Result<()> {
        self.held(
            sql::queue::abandon(&self.schema).map_err(Into::into),
            delivery,
            Some(Box::new(ms(retry_after))),
        )
        .await
    }

    async fn extend(&self, delivery: &Delivery, lease: Duration) -> Result<()> {
        self.held(sql::queue::extend(&self.schema).map_err(Into::into), delivery, Some(Box::new(ms(lease))))
            .await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        self.held(
            sql::queue::dead_letter(&self.schema).map_err(Into::into),
            delivery,
            Some(Box::new(reason.to_owned())),
        )
        .await
    }

    async fn cancel(&self, queue: &QueueName, dedup_key: &str) -> Result<u64> {
        Ok(self
            .affected(
                &sql::queue::cancel(&self.schema)?,
                vec![Box::new(queue.as_str().to_owned()), Box::new(dedup_key.to_owned())],
            )
            .await?)
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth> {
        let rows =
            self.rows(&sql::queue::depth(&self.schema)?, vec![Box::new(queue.as_str().to_owned())]).await?;
        let row = rows.first().ok_or_else(|| MssqlError::Decode("depth returned no row".into()))?;
        let n = |i: usize| -> R<u64> { Ok(u64::try_from(integer(row, i, "count")?).unwrap_or(0)) };
        Ok(QueueDepth { ready: n(0)?, delayed: n(1)?, leased: n(2)?, dead: n(3)? })
    }

    async fn dead_letters(&self, queue: &QueueName, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = self
            .rows(
                &sql::queue::dead_letters(&self.schema)?,
                vec![Box::new(queue.as_str().to_owned()), Box::new(i64::try_from(limit).unwrap_or(i64::MAX))],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = integer(row, 0, "id")?;
            let body: &[u8] = decode(row, 1, "body")?;
            let dedup_key = text(row, 2)?;
            let count = integer(row, 3, "delivery_count")?;
            let reason = text(row, 4)?.ok_or_else(|| MssqlError::Decode("reason is null".into()))?;
            let dead_at = integer(row, 5, "dead_at")?;
            out.push(DeadLetter {
                message_id: id.to_string(),
                body: body.to_vec(),
                dedup_key,
                delivery_count: u32::try_from(count).unwrap_or(0),
                reason,
                dead_at: from_epoch_ms(dead_at),
            });
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<()> {
        self.rows("SELECT 1", Vec::new()).await?;
        Ok(())
    }
}
