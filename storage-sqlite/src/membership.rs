//! Membership: an op log per partition, and each row's own references
//! into it.
//!
//! * `_sync_partitions` maps each partition key to a small integer `pid`
//!   and holds the partition's checksum (sum, count).
//! * `_sync_membership` is keyed by one integer, `id = pid << 40 | seq`
//!   ([`entry_id`]): the entries of a partition form one contiguous range
//!   in seq order, so a pull scans its range without a secondary index and
//!   fresh rows append. An entry holds the row (entity id, row number), the
//!   row version it refers to, whether it is a remove, and — for removes
//!   only, as the row may be gone — the row id.
//! * Each staging row carries `_sync_parts`, the list of its entries: for
//!   every partition it is in, or left and whose tombstone may still exist,
//!   the pid and seq of the entry (see [`Parts`]). Replacing an op deletes
//!   the entry the row points at and appends the new one, so the log keeps
//!   one entry per (partition, row) without an index on rows, and a
//!   recomputation only needs the rows.
//! * A deleted row's references (its tombstones) move to `_sync_graves`,
//!   keyed by the row's key: a row created again with that key takes them
//!   over, so its puts replace the tombstones rather than sit beside them.
//!
//! Invariant (kept by every write): a row's live entries refer to its
//! current version, except right after a schema rebuild gave it a new one,
//! which the recomputation that follows repairs (an entry whose seq is
//! below the row's version is stale). Checksums change by the hash of the
//! entry replaced and of the entry written, so a partition's checksum is the
//! sum over its live entries.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use rusqlite::{CachedStatement, Connection, OptionalExtension};
use sync_core::partition::membership_hash;
use sync_core::{EntityName, PartitionKey, RowId, Seq};

use crate::error::{R, StoreError};
use crate::table::{seq_of, version_param};

/// One entry of a row's `_sync_parts`: the row's entry in partition `pid`
/// is at `seq`; `removed` when it is a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PartRef {
    pub(crate) pid: i64,
    pub(crate) seq: i64,
    pub(crate) removed: bool,
}

/// A row's references into the membership log, stored as text:
/// `pid:seq` per live entry and `pid:~seq` per tombstone, space-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Parts(pub(crate) Vec<PartRef>);

impl Parts {
    pub(crate) fn parse(text: &str) -> R<Parts> {
        let mut out = Vec::new();
        for item in text.split_ascii_whitespace() {
            let bad = || StoreError::Corrupt(format!("malformed _sync_parts entry {item:?}"));
            let (pid, seq) = item.split_once(':').ok_or_else(bad)?;
            let (removed, seq) = match seq.strip_prefix('~') {
                Some(s) => (true, s),
                None => (false, seq),
            };
            out.push(PartRef {
                pid: pid.parse().map_err(|_| bad())?,
                seq: seq.parse().map_err(|_| bad())?,
                removed,
            });
        }
        Ok(Parts(out))
    }

    pub(crate) fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 12);
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "{}:{}{}", p.pid, if p.removed { "~" } else { "" }, p.seq);
        }
        s
    }

    pub(crate) fn get(&self, pid: i64) -> Option<PartRef> {
        self.0.iter().find(|p| p.pid == pid).copied()
    }
}

/// A row as membership refers to it.
#[derive(Clone, Copy)]
pub(crate) struct Member<'a> {
    pub(crate) eid: i64,
    pub(crate) rid: i64,
    pub(crate) entity: &'a EntityName,
    pub(crate) row_id: &'a RowId,
}

/// Bits of an entry id that hold the seq.
pub(crate) const SEQ_BITS: u32 = 40;
/// The largest seq an entry id can hold (about 10^12).
pub(crate) const MAX_SEQ: i64 = (1 << SEQ_BITS) - 1;

/// The key of the entry of partition `pid` at `seq`.
pub(crate) fn entry_id(pid: i64, seq: i64) -> R<i64> {
    if !(0..=MAX_SEQ).contains(&seq) || !(0..(1 << (63 - SEQ_BITS))).contains(&pid) {
        return Err(StoreError::Corrupt(format!("membership entry ({pid}, {seq}) is out of range")));
    }
    Ok((pid << SEQ_BITS) | seq)
}

const DELETE_ENTRY: &str = "DELETE FROM _sync_membership WHERE id = ?1";
const INSERT_ENTRY: &str = "INSERT INTO _sync_membership (id, eid, rid, version, removed, row_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// What the writer knows of a partition: the entity its entries belong to
/// (`None` before the first), whether entries of several entities were
/// ever written to it (an item whose entity changed), and whether that
/// changed in this transaction.
#[derive(Clone, Copy)]
struct PartitionInfo {
    eid: Option<i64>,
    mixed: bool,
    dirty: bool,
}

/// Entries inserted per multi-row `INSERT` when the log is flushed.
const INSERT_BATCH: usize = 64;
/// Entries deleted per `DELETE … IN (…)` when the log is flushed.
const DELETE_BATCH: usize = 64;

/// An entry waiting to be inserted: entity id, row number, version,
/// removed, and the row id of a remove.
type PendingEntry = (i64, i64, i64, bool, Option<String>);

/// Writes membership entries and buffers checksum changes and partition
/// facts for one transaction. Log writes are buffered too: deletes of
/// entries written earlier in the transaction cancel out in memory, and the
/// replaced entries are deleted and the new ones inserted at
/// [`MembershipWriter::flush`], in key order and many per statement.
pub(crate) struct MembershipWriter<'c> {
    conn: &'c Connection,
    insert: CachedStatement<'c>,
    delete: CachedStatement<'c>,
    pids: HashMap<PartitionKey, i64>,
    /// Entries of earlier transactions that were replaced, deleted at
    /// flush in key order.
    doomed: Vec<i64>,
    info: HashMap<i64, PartitionInfo>,
    deltas: HashMap<i64, (u32, i64)>,
    pending: BTreeMap<i64, PendingEntry>,
}

impl<'c> MembershipWriter<'c> {
    pub(crate) fn new(conn: &'c Connection) -> R<Self> {
        Ok(MembershipWriter {
            conn,
            insert: conn.prepare_cached(INSERT_ENTRY)?,
            delete: conn.prepare_cached(DELETE_ENTRY)?,
            pids: HashMap::new(),
            doomed: Vec::new(),
            info: HashMap::new(),
            deltas: HashMap::new(),
            pending: BTreeMap::new(),
        })
    }

    /// The pid of `key`, registering the partition when it is new.
    pub(crate) fn pid(&mut self, key: &PartitionKey) -> R<i64> {
        if let Some(pid) = self.pids.get(key) {
            return Ok(*pid);
        }
        let found: Option<(i64, Option<i64>, bool)> = self
            .conn
            .prepare_cached("SELECT pid, eid, mixed FROM _sync_partitions WHERE key = ?1")?
            .query_row([key.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let (pid, eid, mixed) = match found {
            Some(f) => f,
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO _sync_partitions (key, checksum_sum, checksum_count) VALUES (?1, 0, 0)",
                    )?
                    .execute([key.as_str()])?;
                (self.conn.last_insert_rowid(), None, false)
            }
        };
        self.pids.insert(key.clone(), pid);
        self.info.insert(pid, PartitionInfo { eid, mixed, dirty: false });
        Ok(pid)
    }

    fn delta(&mut self, pid: i64, m: Member<'_>, version: Seq, add: bool) {
        let h = membership_hash(m.entity, m.row_id, version);
        let d = self.deltas.entry(pid).or_default();
        if add {
            d.0 = d.0.wrapping_add(h);
            d.1 += 1;
        } else {
            d.0 = d.0.wrapping_sub(h);
            d.1 -= 1;
        }
    }

    fn note_entity(&mut self, pid: i64, eid: i64) {
        let info = self.info.entry(pid).or_insert(PartitionInfo { eid: None, mixed: false, dirty: false });
        match info.eid {
            None => {
                info.eid = Some(eid);
                info.dirty = true;
            }
            Some(e) if e != eid && !info.mixed => {
                info.mixed = true;
                info.dirty = true;
            }
            Some(_) => {}
        }
    }

    /// Replaces the row's entry in `pid` (`old`, whose version is
    /// `old_version` when it is live) by a new entry at `seq`: a put of
    /// `version`, or a remove. Returns the row's new reference.
    pub(crate) fn write(
        &mut self,
        pid: i64,
        m: Member<'_>,
        old: Option<PartRef>,
        old_version: Seq,
        seq: Seq,
        put: Option<Seq>,
    ) -> R<PartRef> {
        if let Some(old) = old {
            let id = entry_id(pid, old.seq)?;
            if self.pending.remove(&id).is_none() {
                self.doomed.push(id);
            }
            if !old.removed {
                self.delta(pid, m, old_version, false);
            }
        }
        self.note_entity(pid, m.eid);
        let seq_i = version_param(seq)?;
        let version = put.unwrap_or(seq);
        self.pending.insert(
            entry_id(pid, seq_i)?,
            (
                m.eid,
                m.rid,
                version_param(version)?,
                put.is_none(),
                put.is_none().then(|| m.row_id.as_str().to_owned()),
            ),
        );
        if put.is_some() {
            self.delta(pid, m, version, true);
        }
        Ok(PartRef { pid, seq: seq_i, removed: put.is_none() })
    }

    /// The version of the entry at (`pid`, `seq`), if it exists.
    /// Callers ask only for entries a row refers to now, never for one
    /// replaced in this transaction (still in the table until the flush).
    pub(crate) fn entry_version(&self, pid: i64, seq: i64) -> R<Option<Seq>> {
        if let Some(p) = self.pending.get(&entry_id(pid, seq)?) {
            return seq_of(p.2).map(Some);
        }
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT version FROM _sync_membership WHERE id = ?1")?
            .query_row([entry_id(pid, seq)?], |r| r.get(0))
            .optional()?;
        v.map(seq_of).transpose()
    }

    /// Deletes the replaced entries, in key order and many per statement
    /// (neighbouring entries share pages, so the deletes walk the log once).
    fn flush_deletes(&mut self) -> R<()> {
        let mut doomed = std::mem::take(&mut self.doomed);
        doomed.sort_unstable();
        let mut chunks = doomed.chunks_exact(DELETE_BATCH);
        if doomed.len() >= DELETE_BATCH {
            let marks = vec!["?"; DELETE_BATCH].join(", ");
            let mut batch =
                self.conn.prepare_cached(&format!("DELETE FROM _sync_membership WHERE id IN ({marks})"))?;
            for chunk in chunks.by_ref() {
                for (i, id) in chunk.iter().enumerate() {
                    batch.raw_bind_parameter(i + 1, id)?;
                }
                batch.raw_execute()?;
            }
        }
        for id in chunks.remainder() {
            self.delete.execute([id])?;
        }
        Ok(())
    }

    /// Inserts the buffered entries, in key order.
    fn flush_log(&mut self) -> R<()> {
        let pending = std::mem::take(&mut self.pending);
        let entries: Vec<(i64, PendingEntry)> = pending.into_iter().collect();
        let mut chunks = entries.chunks_exact(INSERT_BATCH);
        if entries.len() >= INSERT_BATCH {
            let tuples = vec!["(?, ?, ?, ?, ?, ?)"; INSERT_BATCH].join(", ");
            let mut batch = self.conn.prepare_cached(&format!(
                "INSERT INTO _sync_membership (id, eid, rid, version, removed, row_id) VALUES {tuples}"
            ))?;
            for chunk in chunks.by_ref() {
                for (i, (id, (eid, rid, version, removed, row_id))) in chunk.iter().enumerate() {
                    let at = i * 6;
                    batch.raw_bind_parameter(at + 1, id)?;
                    batch.raw_bind_parameter(at + 2, eid)?;
                    batch.raw_bind_parameter(at + 3, rid)?;
                    batch.raw_bind_parameter(at + 4, version)?;
                    batch.raw_bind_parameter(at + 5, removed)?;
                    batch.raw_bind_parameter(at + 6, row_id)?;
                }
                batch.raw_execute()?;
            }
        }
        for (id, (eid, rid, version, removed, row_id)) in chunks.remainder() {
            self.insert.execute(rusqlite::params![id, eid, rid, version, removed, row_id])?;
        }
        Ok(())
    }

    /// Writes the buffered entries, checksum changes and partition facts.
    pub(crate) fn flush(mut self) -> R<()> {
        self.flush_deletes()?;
        self.flush_log()?;
        let mut stmt = self.conn.prepare_cached(
            "UPDATE _sync_partitions SET checksum_sum = (checksum_sum + ?1) % 4294967296, \
             checksum_count = checksum_count + ?2 WHERE pid = ?3",
        )?;
        for (pid, (sum, count)) in &self.deltas {
            if *sum != 0 || *count != 0 {
                stmt.execute(rusqlite::params![i64::from(*sum), count, pid])?;
            }
        }
        let mut stmt =
            self.conn.prepare_cached("UPDATE _sync_partitions SET eid = ?2, mixed = ?3 WHERE pid = ?1")?;
        for (pid, info) in &self.info {
            if info.dirty {
                stmt.execute(rusqlite::params![pid, info.eid, info.mixed])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let p = Parts(vec![
            PartRef { pid: 3, seq: 1045, removed: false },
            PartRef { pid: 17, seq: 9, removed: true },
        ]);
        assert_eq!(p.to_text(), "3:1045 17:~9");
        assert_eq!(Parts::parse(&p.to_text()).unwrap(), p);
        assert_eq!(Parts::parse("").unwrap(), Parts::default());
        assert!(Parts::parse("3").is_err());
        assert!(Parts::parse("x:1").is_err());
    }
}
