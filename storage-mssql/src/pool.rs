//! A small connection pool for tiberius 0.13 (no published pool supports it
//! yet): at most `size` connections, idle ones reused, a connection whose
//! command failed at the transport level or timed out discarded, and one
//! whose command failed otherwise rolled back before it is reused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tiberius::Client;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::error::{MssqlError, R};
use crate::sql;

/// A TDS client over a tokio TCP stream.
pub(crate) type Conn = Client<Compat<TcpStream>>;

/// Opens one connection: TCP connect and the TDS handshake (pre-login, TLS,
/// login), both bounded by `timeout`.
pub(crate) async fn connect(config: &tiberius::Config, timeout: Duration) -> R<Conn> {
    let addr = config.get_addr();
    let open = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| MssqlError::Connect { addr: addr.clone(), source })?;
        tcp.set_nodelay(true).map_err(|source| MssqlError::Connect { addr: addr.clone(), source })?;
        Ok::<_, MssqlError>(Client::connect(config.clone(), tcp.compat_write()).await?)
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(MssqlError::ConnectTimeout { addr, after: timeout }),
    }
}

struct Shared {
    config: tiberius::Config,
    idle: Mutex<Vec<Conn>>,
    /// Bumped by [`Pool::close_idle`]: a connection checked out before is
    /// closed when returned instead of going back to `idle`.
    generation: AtomicU64,
    permits: Arc<Semaphore>,
    connect_timeout: Duration,
}

/// The pool. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

/// A connection checked out of the pool; returned on drop unless
/// [`Pooled::discard`]ed.
pub(crate) struct Pooled {
    conn: Option<Conn>,
    /// Set while a command runs: a connection dropped mid-command (its
    /// future cancelled) is out of step with the server and is discarded.
    busy: bool,
    /// The pool's generation when the connection was checked out.
    generation: u64,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub(crate) fn new(config: tiberius::Config, size: usize, connect_timeout: Duration) -> Self {
        Pool {
            shared: Arc::new(Shared {
                config,
                idle: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
                permits: Arc::new(Semaphore::new(size.max(1))),
                connect_timeout,
            }),
        }
    }

    /// A connection: an idle one, or a new one when none is idle. Waits at
    /// most the connect timeout for a free slot.
    pub(crate) async fn get(&self) -> R<Pooled> {
        let wait = self.shared.connect_timeout;
        let permit = tokio::time::timeout(wait, self.shared.permits.clone().acquire_owned())
            .await
            .map_err(|_| MssqlError::PoolTimeout(wait))?
            .map_err(|_| MssqlError::PoolTimeout(wait))?;
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let idle = self.shared.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let conn = match idle {
            Some(c) => c,
            None => connect(&self.shared.config, self.shared.connect_timeout).await?,
        };
        Ok(Pooled { conn: Some(conn), busy: false, generation, shared: self.shared.clone(), _permit: permit })
    }

    /// Closes every idle connection, and every checked-out one when it is
    /// returned. An
    /// org database's pool does this when its org is found dropped: an idle
    /// session left in the database would keep it in use, and, once the
    /// dropping process has set it `SINGLE_USER`, could hold its one slot.
    pub(crate) fn close_idle(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        let idle = self.shared.idle.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        drop(idle);
    }
}

impl Pooled {
    /// The client.
    pub(crate) fn client(&mut self) -> R<&mut Conn> {
        self.conn.as_mut().ok_or_else(|| MssqlError::Decode("the pooled connection was discarded".into()))
    }

    /// Runs `f` on the connection; a transport failure (I/O, timeout,
    /// protocol) discards the connection, since it may be mid-response.
    ///
    /// Any other failure may have left a transaction open on the session:
    /// `f`'s own rollback failed or never ran, a `COMMIT` failed, or a
    /// statement that opens and commits a transaction itself was stopped by
    /// an error `XACT_ABORT` does not roll back (a compile-time error such
    /// as a missing table). Such a connection would run its next user's
    /// statements inside that transaction and hold its locks (an org's
    /// write lock among them), so it is rolled back here ([`sql::ROLLBACK`],
    /// harmless when nothing is open) and discarded when even that fails.
    pub(crate) async fn run<T, F>(&mut self, f: F) -> R<T>
    where
        F: AsyncFnOnce(&mut Conn) -> R<T>,
    {
        self.busy = true;
        let result = f(self.client()?).await;
        if let Err(e) = &result {
            if is_transport(e) {
                self.discard();
            } else if let Some(c) = self.conn.as_mut() {
                let rolled_back = async { c.simple_query(sql::ROLLBACK).await?.into_results().await }.await;
                if rolled_back.is_err() {
                    self.discard();
                }
            }
        }
        self.busy = false;
        result
    }

    /// Drops the connection instead of returning it to the pool.
    pub(crate) fn discard(&mut self) {
        self.conn = None;
    }
}

/// A failure of the connection itself rather than of a statement.
fn is_transport(e: &MssqlError) -> bool {
    matches!(e, MssqlError::Tds(e) if !matches!(e, tiberius::error::Error::Server(_)))
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !self.busy
            && self.generation == self.shared.generation.load(Ordering::SeqCst)
            && let Ok(mut idle) = self.shared.idle.lock()
        {
            idle.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use mssql_mock_tds::MockTdsServer;

    /// Closing a pool's idle connections also closes, when returned, the
    /// ones checked out at the time (a retired org's in-flight request),
    /// while connections checked out afterwards are pooled again.
    #[tokio::test]
    async fn close_idle_also_closes_connections_checked_out_before() {
        let server = MockTdsServer::new("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().port();
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_with_shutdown(rx));
        let config = crate::SqlServerConfig::from_ado(format!(
            "server=tcp:127.0.0.1,{port};database=x;user=u;password=p;encrypt=DANGER_PLAINTEXT"
        ))
        .tds_config()
        .unwrap();
        let pool = Pool::new(config, 4, Duration::from_secs(5));
        let idle = |p: &Pool| p.shared.idle.lock().unwrap().len();

        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        drop(a);
        assert_eq!(idle(&pool), 1, "a returned connection is pooled");
        pool.close_idle();
        assert_eq!(idle(&pool), 0, "idle connections are closed");
        drop(b);
        assert_eq!(idle(&pool), 0, "a connection checked out before the close is closed when returned");
        let c = pool.get().await.unwrap();
        drop(c);
        assert_eq!(idle(&pool), 1, "connections checked out after the close are pooled again");
    }
}
