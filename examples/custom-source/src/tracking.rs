//! Change tracking in the host's database: a global version counter, a
//! `version` column on every tracked table, a `deleted` table, and the
//! triggers that keep them — installed once, then maintained by SQLite on
//! every write, whoever makes it.
//!
//! ```sql
//! sync_clock (id = 1, version, purged_through, epoch)  -- the global counter
//! deleted    (entity, id, version)                      -- one entry per deleted row
//! <table>    (..., version INTEGER NOT NULL DEFAULT 0)  -- the version of the row's last write
//! ```
//!
//! **Invariants** the feed relies on:
//! - every write of a row (insert, update, delete) takes the next value of
//!   the counter, so no two changes share a version and paging by version
//!   neither skips nor repeats;
//! - a row is in the feed once, at its latest version: inserting an id
//!   removes its `deleted` entry, deleting it adds (or moves) one;
//! - `purged_through` only grows: deletes up to it are forgotten, so a
//!   token older than it can no longer see every delete and must resync.
//!
//! The host's code never writes `version` itself.

use rusqlite::{Connection, OptionalExtension, params};
use sync_core::{EntityName, Error, Result};

use crate::metadata::{VERSION_COLUMN, key_column, table_info};
use crate::sqlite_error::map;

/// The state of the counter, read in the same transaction as a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Clock {
    /// The version of the latest write.
    pub version: i64,
    /// Deletes up to this version are forgotten.
    pub purged_through: i64,
    /// Identifies this database in tokens: a restored or recreated database
    /// gets a new epoch, so tokens of the old one resync.
    pub epoch: String,
}

pub(crate) fn read_clock(conn: &Connection) -> Result<Clock> {
    let missing = || Error::invalid("the host database has no change tracking: call install_change_tracking");
    let installed: Option<i64> = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sync_clock'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(map("looking for the change-tracking clock"))?;
    if installed.is_none() {
        return Err(missing());
    }
    conn.query_row("SELECT version, purged_through, epoch FROM sync_clock WHERE id = 1", [], |r| {
        Ok(Clock { version: r.get(0)?, purged_through: r.get(1)?, epoch: r.get(2)? })
    })
    .optional()
    .map_err(map("reading the change-tracking clock"))?
    .ok_or_else(missing)
}

/// Installs change tracking on `tables` (idempotent): creates the counter
/// and the `deleted` table, adds the `version` column where missing, gives
/// every existing row its own version (so a first full read pages
/// correctly), and creates the triggers. All in one transaction.
///
/// Errors: `NotFound` for a missing table; `InvalidInput` for a table
/// without a single-column primary key; `Unavailable` when the database is
/// busy.
pub fn install_change_tracking(conn: &mut Connection, tables: &[EntityName]) -> Result<()> {
    let what = "installing change tracking";
    let tx = conn.transaction().map_err(map(what))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS sync_clock (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL,
             purged_through INTEGER NOT NULL DEFAULT 0,
             epoch TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS deleted (
             entity TEXT NOT NULL,
             id TEXT NOT NULL,
             version INTEGER NOT NULL,
             PRIMARY KEY (entity, id));
         CREATE INDEX IF NOT EXISTS deleted_by_version ON deleted (entity, version);",
    )
    .map_err(map(what))?;
    tx.execute(
        "INSERT OR IGNORE INTO sync_clock (id, version, purged_through, epoch) VALUES (1, 0, 0, ?1)",
        params![uuid::Uuid::new_v4().simple().to_string()],
    )
    .map_err(map(what))?;
    for table in tables {
        install_on_table(&tx, table)?;
    }
    tx.commit().map_err(map(what))
}

fn install_on_table(tx: &Connection, table: &EntityName) -> Result<()> {
    let what = format!("installing change tracking on '{table}'");
    let columns = table_info(tx, table)?;
    let key = key_column(table, &columns)?;
    // Column names come from the database; quote them, refusing any that
    // could break out of the quotes.
    if key.contains('"') {
        return Err(Error::invalid(format!("the key column of '{table}' has a quote in its name")));
    }
    if !columns.iter().any(|c| c.name == VERSION_COLUMN) {
        tx.execute_batch(&format!(
            "ALTER TABLE \"{table}\" ADD COLUMN {VERSION_COLUMN} INTEGER NOT NULL DEFAULT 0"
        ))
        .map_err(map(&what))?;
    }
    // Rows written before tracking existed: one version each, in key order.
    let mut stmt = tx
        .prepare(&format!("SELECT \"{key}\" FROM \"{table}\" WHERE {VERSION_COLUMN} = 0 ORDER BY \"{key}\""))
        .map_err(map(&what))?;
    let keys = stmt
        .query_map([], |r| r.get::<_, rusqlite::types::Value>(0))
        .map_err(map(&what))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map(&what))?;
    for k in keys {
        tx.execute("UPDATE sync_clock SET version = version + 1 WHERE id = 1", []).map_err(map(&what))?;
        tx.execute(
            &format!(
                "UPDATE \"{table}\" SET {VERSION_COLUMN} = (SELECT version FROM sync_clock WHERE id = 1)
                 WHERE \"{key}\" = ?1"
            ),
            params![k],
        )
        .map_err(map(&what))?;
    }
    let clock = "(SELECT version FROM sync_clock WHERE id = 1)";
    let bump = "UPDATE sync_clock SET version = version + 1 WHERE id = 1";
    // `WHEN NEW.version IS OLD.version` keeps the trigger's own UPDATE from
    // firing it again, whatever `recursive_triggers` says.
    tx.execute_batch(&format!(
        "CREATE TRIGGER IF NOT EXISTS \"{table}_sync_insert\" AFTER INSERT ON \"{table}\" BEGIN
             {bump};
             UPDATE \"{table}\" SET {VERSION_COLUMN} = {clock} WHERE \"{key}\" = NEW.\"{key}\";
             DELETE FROM deleted WHERE entity = '{table}' AND id = CAST(NEW.\"{key}\" AS TEXT);
         END;
         CREATE TRIGGER IF NOT EXISTS \"{table}_sync_update\" AFTER UPDATE ON \"{table}\"
         WHEN NEW.{VERSION_COLUMN} IS OLD.{VERSION_COLUMN} BEGIN
             UPDATE sync_clock SET version = version + 1 WHERE id = 1 AND OLD.\"{key}\" IS NOT NEW.\"{key}\";
             INSERT OR REPLACE INTO deleted (entity, id, version)
                 SELECT '{table}', CAST(OLD.\"{key}\" AS TEXT), version FROM sync_clock
                 WHERE id = 1 AND OLD.\"{key}\" IS NOT NEW.\"{key}\";
             {bump};
             UPDATE \"{table}\" SET {VERSION_COLUMN} = {clock} WHERE \"{key}\" = NEW.\"{key}\";
             DELETE FROM deleted WHERE entity = '{table}' AND id = CAST(NEW.\"{key}\" AS TEXT);
         END;
         CREATE TRIGGER IF NOT EXISTS \"{table}_sync_delete\" AFTER DELETE ON \"{table}\" BEGIN
             {bump};
             INSERT OR REPLACE INTO deleted (entity, id, version)
                 SELECT '{table}', CAST(OLD.\"{key}\" AS TEXT), version FROM sync_clock WHERE id = 1;
         END;
         CREATE INDEX IF NOT EXISTS \"{table}_by_version\" ON \"{table}\" ({VERSION_COLUMN});"
    ))
    .map_err(map(&what))
}

/// Forgets the deletes with versions up to `version` (the host's retention
/// job). Tokens older than `version` are `ResyncRequired` from then on.
/// Returns how many entries were removed. Never moves the horizon back.
///
/// Errors: `InvalidInput` without change tracking; `Unavailable` when the
/// database is busy.
pub fn purge_deletes_through(conn: &mut Connection, version: i64) -> Result<usize> {
    let what = "purging deletes";
    let tx = conn.transaction().map_err(map(what))?;
    read_clock(&tx)?;
    let removed =
        tx.execute("DELETE FROM deleted WHERE version <= ?1", params![version]).map_err(map(what))?;
    tx.execute(
        "UPDATE sync_clock SET purged_through = max(purged_through, ?1) WHERE id = 1",
        params![version],
    )
    .map_err(map(what))?;
    tx.commit().map_err(map(what))?;
    Ok(removed)
}

/// The version of the latest write in the host database.
///
/// Errors: `InvalidInput` without change tracking.
pub fn current_version(conn: &Connection) -> Result<i64> {
    Ok(read_clock(conn)?.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(conn: &Connection) -> Vec<(String, i64)> {
        let mut stmt = conn.prepare("SELECT id, version FROM t ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    }

    fn deleted(conn: &Connection) -> Vec<(String, i64)> {
        let mut stmt = conn.prepare("SELECT id, version FROM deleted ORDER BY version").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn every_write_takes_the_next_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT); INSERT INTO t VALUES ('b', 1), ('a', 2);",
        )
        .unwrap();
        let t = EntityName::new("t").unwrap();
        install_change_tracking(&mut conn, std::slice::from_ref(&t)).unwrap();
        // Existing rows: one version each, in key order; installing again changes nothing.
        assert_eq!(versions(&conn), [("a".into(), 1), ("b".into(), 2)]);
        install_change_tracking(&mut conn, &[t]).unwrap();
        assert_eq!(current_version(&conn).unwrap(), 2);

        // One statement touching two rows gives each its own version.
        conn.execute("UPDATE t SET v = 'x'", []).unwrap();
        let after: Vec<i64> = versions(&conn).into_iter().map(|(_, v)| v).collect();
        assert_eq!(after.iter().copied().collect::<std::collections::BTreeSet<_>>(), [3, 4].into());
        conn.execute("DELETE FROM t WHERE id = 'a'", []).unwrap();
        assert_eq!(deleted(&conn), [("a".into(), 5)]);
        // Re-inserting the id takes it out of the deletes.
        conn.execute("INSERT INTO t (id, v) VALUES ('a', 'again')", []).unwrap();
        assert!(deleted(&conn).is_empty());
        assert_eq!(versions(&conn)[0], ("a".into(), 6));
        // Changing a key deletes the old id and writes the new one.
        conn.execute("UPDATE t SET id = 'c' WHERE id = 'b'", []).unwrap();
        assert_eq!(deleted(&conn), [("b".into(), 7)]);
        assert_eq!(versions(&conn)[1], ("c".into(), 8));
        assert_eq!(current_version(&conn).unwrap(), 8);
    }

    #[test]
    fn purging_moves_the_horizon_forward_only() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT);").unwrap();
        install_change_tracking(&mut conn, &[EntityName::new("t").unwrap()]).unwrap();
        conn.execute_batch("INSERT INTO t VALUES ('a', 1, 0), ('b', 2, 0); DELETE FROM t;").unwrap();
        assert_eq!(deleted(&conn).len(), 2);
        assert_eq!(purge_deletes_through(&mut conn, 3).unwrap(), 1);
        assert_eq!(purge_deletes_through(&mut conn, 1).unwrap(), 0);
        assert_eq!(read_clock(&conn).unwrap().purged_through, 3);
    }
}
