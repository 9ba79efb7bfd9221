//! Membership rows and per-partition checksums, written inside a staging
//! transaction.
//!
//! Partitions are interned: `_sync_partitions` maps each partition key to a
//! small integer `pid` and holds the partition's checksum; `_sync_membership`
//! holds one entry per (pid, entity, row) with the seq of its latest op, the
//! row version it refers to and whether it is a remove. Checksums are updated
//! from the entry being replaced, so they always equal the sum over the
//! table's live entries.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};
use sync_core::partition::membership_hash;
use sync_core::{EntityName, PartitionKey, RowId, Seq};

use crate::error::R;
use crate::table::{seq_of, version_param};

const SELECT_ENTRY: &str =
    "SELECT version, removed FROM _sync_membership WHERE pid = ?1 AND entity = ?2 AND row_id = ?3";
const INSERT_ENTRY: &str = "INSERT INTO _sync_membership (pid, entity, row_id, seq, version, removed) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const UPDATE_ENTRY: &str = "UPDATE _sync_membership SET seq = ?4, version = ?5, removed = ?6 \
     WHERE pid = ?1 AND entity = ?2 AND row_id = ?3";

/// Buffers checksum changes and partition ids for one transaction.
#[derive(Default)]
pub(crate) struct MembershipWriter {
    pids: HashMap<PartitionKey, i64>,
    deltas: HashMap<i64, (u32, i64)>,
}

impl MembershipWriter {
    /// The pid of `key`, registering the partition when it is new.
    pub(crate) fn pid(&mut self, conn: &Connection, key: &PartitionKey) -> R<i64> {
        if let Some(pid) = self.pids.get(key) {
            return Ok(*pid);
        }
        let found: Option<i64> = conn
            .prepare_cached("SELECT pid FROM _sync_partitions WHERE key = ?1")?
            .query_row([key.as_str()], |r| r.get(0))
            .optional()?;
        let pid = match found {
            Some(pid) => pid,
            None => {
                conn.prepare_cached(
                    "INSERT INTO _sync_partitions (key, checksum_sum, checksum_count) VALUES (?1, 0, 0)",
                )?
                .execute([key.as_str()])?;
                conn.last_insert_rowid()
            }
        };
        self.pids.insert(key.clone(), pid);
        Ok(pid)
    }

    fn entry(conn: &Connection, pid: i64, entity: &EntityName, row: &RowId) -> R<Option<(Seq, bool)>> {
        let found: Option<(i64, bool)> = conn
            .prepare_cached(SELECT_ENTRY)?
            .query_row(rusqlite::params![pid, entity.as_str(), row.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        found.map(|(v, removed)| Ok((seq_of(v)?, removed))).transpose()
    }

    fn write(
        conn: &Connection,
        exists: bool,
        key: (i64, &EntityName, &RowId),
        op: (Seq, Seq, bool),
    ) -> R<()> {
        let (pid, entity, row) = key;
        let (seq, version, removed) = op;
        let sql = if exists { UPDATE_ENTRY } else { INSERT_ENTRY };
        conn.prepare_cached(sql)?.execute(rusqlite::params![
            pid,
            entity.as_str(),
            row.as_str(),
            version_param(seq)?,
            version_param(version)?,
            removed
        ])?;
        Ok(())
    }

    /// Records that `row` (at `version`) is in partition `pid` as of `seq`.
    pub(crate) fn put(
        &mut self,
        conn: &Connection,
        pid: i64,
        entity: &EntityName,
        row: &RowId,
        seq: Seq,
        version: Seq,
    ) -> R<()> {
        let prev = Self::entry(conn, pid, entity, row)?;
        let d = self.deltas.entry(pid).or_default();
        if let Some((old, false)) = prev {
            d.0 = d.0.wrapping_sub(membership_hash(entity, row, old));
            d.1 -= 1;
        }
        d.0 = d.0.wrapping_add(membership_hash(entity, row, version));
        d.1 += 1;
        Self::write(conn, prev.is_some(), (pid, entity, row), (seq, version, false))
    }

    /// Records that `row` left partition `pid` at `seq`. Returns whether it
    /// was a member (a row that never was gets no tombstone).
    pub(crate) fn remove(
        &mut self,
        conn: &Connection,
        pid: i64,
        entity: &EntityName,
        row: &RowId,
        seq: Seq,
    ) -> R<bool> {
        match Self::entry(conn, pid, entity, row)? {
            Some((old, false)) => {
                let d = self.deltas.entry(pid).or_default();
                d.0 = d.0.wrapping_sub(membership_hash(entity, row, old));
                d.1 -= 1;
                Self::write(conn, true, (pid, entity, row), (seq, seq, true))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether `row` is a live member of `pid` at exactly `version`.
    pub(crate) fn is_member_at(
        conn: &Connection,
        pid: i64,
        entity: &EntityName,
        row: &RowId,
        version: Seq,
    ) -> R<bool> {
        Ok(matches!(Self::entry(conn, pid, entity, row)?, Some((v, false)) if v == version))
    }

    /// Writes the buffered checksum changes.
    pub(crate) fn flush(self, conn: &Connection) -> R<()> {
        let mut stmt = conn.prepare_cached(
            "UPDATE _sync_partitions SET checksum_sum = (checksum_sum + ?1) % 4294967296, \
             checksum_count = checksum_count + ?2 WHERE pid = ?3",
        )?;
        for (pid, (sum, count)) in self.deltas {
            if sum != 0 || count != 0 {
                stmt.execute(rusqlite::params![i64::from(sum), count, pid])?;
            }
        }
        Ok(())
    }
}
