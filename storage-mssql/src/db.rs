//! Running statements on one connection: parameterized requests, plain
//! batches, and the pool access shared by the staging store.

use tiberius::{Row, ToSql};

use crate::error::{MssqlError, R};
use crate::pool::{Conn, Pool};
use crate::values::Param;

/// Runs a parameterized request; every row of every result set, in order.
pub(crate) async fn query(c: &mut Conn, sql: &str, params: &[Param]) -> R<Vec<Row>> {
    let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
    let sets = c.query(sql, &refs).await?.into_results().await?;
    Ok(sets.into_iter().flatten().collect())
}

/// Runs a parameterized request; the rows it affected.
pub(crate) async fn execute(c: &mut Conn, sql: &str, params: &[Param]) -> R<u64> {
    let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
    Ok(c.execute(sql, &refs).await?.total())
}

/// Runs a plain batch (no parameters, not wrapped in `sp_executesql`), for
/// `SET` options and transaction control that must outlive the request.
pub(crate) async fn batch(c: &mut Conn, sql: &str) -> R<()> {
    c.simple_query(sql).await?.into_results().await?;
    Ok(())
}

/// Checks out a connection and runs `f` on it; a transport failure or a
/// cancellation mid-command discards the connection.
pub(crate) async fn with_conn<T, F>(pool: &Pool, f: F) -> R<T>
where
    F: AsyncFnOnce(&mut Conn) -> R<T>,
{
    let mut conn = pool.get().await?;
    conn.run(f).await
}

/// Splits `items` into requests of at most `per` items.
pub(crate) fn chunks<T>(items: &[T], per: usize) -> std::slice::Chunks<'_, T> {
    items.chunks(per.max(1))
}

/// The first row of a result, or a decode error naming `what`.
pub(crate) fn first<'a>(rows: &'a [Row], what: &str) -> R<&'a Row> {
    rows.first().ok_or_else(|| MssqlError::Decode(format!("{what} returned no row")))
}
