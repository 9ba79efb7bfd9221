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
//!   the pid and seq of the entry (see [`Parts`]). Replacing an op appends
//!   the new entry and retires the one the row points at, so the log keeps
//!   one live entry per (partition, row) without an index on rows, and a
//!   recomputation only needs the rows.
//! * A retired entry is deleted at once, unless it is a put whose version
//!   the row leaves behind in the same write (an upsert, a delete, a
//!   rebuild's new version): that one stays in the log as a *stale* entry,
//!   its id listed in `_sync_stale`, as a pull cannot mistake it for live —
//!   it skips a put whose version is not its row's, or whose row is gone.
//!   Stale entries are deleted together, in key order, once they pass a
//!   share of the log ([`compact`]): deleting each replaced entry at once
//!   dirtied a page of the log per updated row, scattered, in every commit.
//! * A deleted row's references (its tombstones) move to `_sync_graves`,
//!   keyed by the row's key: a row created again with that key takes them
//!   over, so its puts replace the tombstones rather than sit beside them.
//!
//! Invariant (kept by every write): a row's live puts refer to its current
//! version, except inside the transaction of a schema rebuild that gave it
//! a new one, which the recomputation that follows repairs (there a live
//! entry whose seq is below the row's version is out of date); a stale put
//! never does. Checksums change by the hash of the entry retired and of the
//! entry written, so a partition's checksum is the sum over its live
//! entries.

use std::collections::HashMap;

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
            push_decimal(&mut s, p.pid);
            s.push(':');
            if p.removed {
                s.push('~');
            }
            push_decimal(&mut s, p.seq);
        }
        s
    }

    pub(crate) fn get(&self, pid: i64) -> Option<PartRef> {
        self.0.iter().find(|p| p.pid == pid).copied()
    }
}

/// Appends `n` in decimal (what `write!` does, without the formatting
/// machinery: written for every staged row).
fn push_decimal(s: &mut String, n: i64) {
    if n < 0 {
        s.push('-');
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
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
const INSERT_STALE: &str = "INSERT INTO _sync_stale (id) VALUES (?1)";
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

/// Most keys [`MembershipWriter::pid`] recognises by address.
const SHARED_KEYS: usize = 8;
/// Entries inserted per multi-row `INSERT` when the log is flushed.
const INSERT_BATCH: usize = 64;
/// Ids per statement when entries are deleted or listed as stale.
const ID_BATCH: usize = 64;
/// Stale entries are compacted once there are more than this many…
const STALE_MIN: u64 = 4096;
/// …and more than one per this many live puts of the org.
const STALE_SHARE: u64 = 8;

/// What a write puts in a partition, and what becomes of the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A put of the row at this version, which the row has once written.
    Put(Seq),
    /// A remove; the row stays at this version (`None`: it is deleted).
    Remove(Option<Seq>),
}

impl Op {
    /// Whether a put entry of `version` is stale once the row is written:
    /// the row's version moves past it, or the row is gone.
    fn leaves_behind(self, version: Seq) -> bool {
        match self {
            Op::Put(v) | Op::Remove(Some(v)) => v != version,
            Op::Remove(None) => true,
        }
    }
}

/// An entry waiting to be inserted.
struct PendingEntry {
    id: i64,
    eid: i64,
    rid: i64,
    version: i64,
    removed: bool,
    /// The row id of a remove.
    row_id: Option<String>,
    /// Cleared when a later write of the transaction replaces the entry.
    live: bool,
}

/// The seq part of an entry id.
fn seq_of_entry(id: i64) -> i64 {
    id & MAX_SEQ
}

/// Writes membership entries and buffers checksum changes and partition
/// facts for one transaction. Log writes are buffered too: deletes of
/// entries written earlier in the transaction cancel out in memory, and the
/// replaced entries are deleted and the new ones inserted at
/// [`MembershipWriter::flush`], in key order and many per statement.
/// New entries are kept in write order, which is seq order (a transaction
/// hands out seqs in increasing order), so one of them is found by a binary
/// search on its seq and the log is sorted once, at the flush.
pub(crate) struct MembershipWriter<'c> {
    conn: &'c Connection,
    insert: CachedStatement<'c>,
    pids: HashMap<PartitionKey, i64>,
    /// Entries of earlier transactions that were replaced, deleted at
    /// flush in key order.
    doomed: Vec<i64>,
    /// Puts of earlier transactions that were replaced and stay as stale
    /// entries, listed at flush.
    stale: Vec<i64>,
    info: HashMap<i64, PartitionInfo>,
    deltas: HashMap<i64, (u32, i64)>,
    /// Keys the planner hands out as the same shared text for every row
    /// (an item without parameters), known by address before hashing.
    shared_keys: Vec<(PartitionKey, i64)>,
    /// The last membership hash computed, by entity id, row number and
    /// version: a row's entries in all its partitions share it.
    last_hash: Option<(i64, i64, Seq, u32)>,
    pending: Vec<PendingEntry>,
    /// Whether `pending` is in seq order (else it is searched linearly).
    in_seq_order: bool,
}

impl<'c> MembershipWriter<'c> {
    pub(crate) fn new(conn: &'c Connection) -> R<Self> {
        Ok(MembershipWriter {
            conn,
            insert: conn.prepare_cached(INSERT_ENTRY)?,
            pids: HashMap::new(),
            doomed: Vec::new(),
            stale: Vec::new(),
            info: HashMap::new(),
            deltas: HashMap::new(),
            shared_keys: Vec::new(),
            last_hash: None,
            pending: Vec::new(),
            in_seq_order: true,
        })
    }

    /// The pid of `key`, registering the partition when it is new.
    pub(crate) fn pid(&mut self, key: &PartitionKey) -> R<i64> {
        if let Some((_, pid)) = self.shared_keys.iter().find(|(k, _)| std::ptr::eq(k.as_str(), key.as_str()))
        {
            return Ok(*pid);
        }
        if let Some((known, &pid)) = self.pids.get_key_value(key) {
            // The same text as the first time: the planner shares this key.
            // (Held here, so its address cannot be reused by another key.)
            if std::ptr::eq(known.as_str(), key.as_str()) && self.shared_keys.len() < SHARED_KEYS {
                self.shared_keys.push((key.clone(), pid));
            }
            return Ok(pid);
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

    /// The position in `pending` of the live entry `id`, if any.
    fn find_pending(&self, id: i64) -> Option<usize> {
        let found = if self.in_seq_order {
            let seq = seq_of_entry(id);
            let from = self.pending.partition_point(|p| seq_of_entry(p.id) < seq);
            self.pending[from..]
                .iter()
                .take_while(|p| seq_of_entry(p.id) == seq)
                .position(|p| p.id == id)
                .map(|i| from + i)
        } else {
            self.pending.iter().position(|p| p.id == id)
        };
        found.filter(|&i| self.pending[i].live)
    }

    fn delta(&mut self, pid: i64, m: Member<'_>, version: Seq, add: bool) {
        let h = match self.last_hash {
            Some((eid, rid, v, h)) if (eid, rid, v) == (m.eid, m.rid, version) => h,
            _ => {
                let h = membership_hash(m.entity, m.row_id, version);
                self.last_hash = Some((m.eid, m.rid, version, h));
                h
            }
        };
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

    /// Replaces the row's entry in `pid` (`old`, with its version when it
    /// is a put) by a new entry at `seq`, as `op` says. Returns the row's
    /// new reference.
    pub(crate) fn write(
        &mut self,
        pid: i64,
        m: Member<'_>,
        old: Option<(PartRef, Seq)>,
        seq: Seq,
        op: Op,
    ) -> R<PartRef> {
        if let Some((old, old_version)) = old {
            let id = entry_id(pid, old.seq)?;
            match self.find_pending(id) {
                Some(i) => self.pending[i].live = false,
                None if !old.removed && op.leaves_behind(old_version) => self.stale.push(id),
                None => self.doomed.push(id),
            }
            if !old.removed {
                self.delta(pid, m, old_version, false);
            }
        }
        let put = match op {
            Op::Put(version) => Some(version),
            Op::Remove(_) => None,
        };
        self.note_entity(pid, m.eid);
        let seq_i = version_param(seq)?;
        let version = put.unwrap_or(seq);
        if self.pending.last().is_some_and(|p| seq_of_entry(p.id) > seq_i) {
            self.in_seq_order = false;
        }
        self.pending.push(PendingEntry {
            id: entry_id(pid, seq_i)?,
            eid: m.eid,
            rid: m.rid,
            version: version_param(version)?,
            removed: put.is_none(),
            row_id: put.is_none().then(|| m.row_id.as_str().to_owned()),
            live: true,
        });
        if put.is_some() {
            self.delta(pid, m, version, true);
        }
        Ok(PartRef { pid, seq: seq_i, removed: put.is_none() })
    }

    /// The version of the entry at (`pid`, `seq`), if it exists.
    /// Callers ask only for entries a row refers to now, never for one
    /// replaced in this transaction (still in the table until the flush).
    pub(crate) fn entry_version(&self, pid: i64, seq: i64) -> R<Option<Seq>> {
        if let Some(i) = self.find_pending(entry_id(pid, seq)?) {
            return seq_of(self.pending[i].version).map(Some);
        }
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT version FROM _sync_membership WHERE id = ?1")?
            .query_row([entry_id(pid, seq)?], |r| r.get(0))
            .optional()?;
        v.map(seq_of).transpose()
    }

    /// Lists the stale entries; compacts them when they are many.
    fn flush_stale(&mut self) -> R<()> {
        if self.stale.is_empty() {
            return Ok(());
        }
        let mut stale = std::mem::take(&mut self.stale);
        stale.sort_unstable();
        let marks = vec!["(?)"; ID_BATCH].join(", ");
        run_per_id(self.conn, &stale, &format!("INSERT INTO _sync_stale (id) VALUES {marks}"), INSERT_STALE)?;
        let (count, live): (i64, f64) = self.conn.prepare_cached(
            "SELECT (SELECT count(*) FROM _sync_stale), (SELECT total(checksum_count) FROM _sync_partitions)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (count, live) = (count.max(0) as u64, live.max(0.0) as u64);
        if count > STALE_MIN && count > live / STALE_SHARE {
            compact(self.conn)?;
        }
        Ok(())
    }

    /// Deletes the replaced entries, in key order and many per statement
    /// (neighbouring entries share pages, so the deletes walk the log once).
    fn flush_deletes(&mut self) -> R<()> {
        let mut doomed = std::mem::take(&mut self.doomed);
        doomed.sort_unstable();
        let marks = vec!["?"; ID_BATCH].join(", ");
        run_per_id(
            self.conn,
            &doomed,
            &format!("DELETE FROM _sync_membership WHERE id IN ({marks})"),
            DELETE_ENTRY,
        )
    }

    /// Inserts the buffered entries, in key order.
    fn flush_log(&mut self) -> R<()> {
        let mut entries = std::mem::take(&mut self.pending);
        entries.retain(|p| p.live);
        entries.sort_unstable_by_key(|p| p.id);
        let mut chunks = entries.chunks_exact(INSERT_BATCH);
        if entries.len() >= INSERT_BATCH {
            let tuples = vec!["(?, ?, ?, ?, ?, ?)"; INSERT_BATCH].join(", ");
            let mut batch = self.conn.prepare_cached(&format!(
                "INSERT INTO _sync_membership (id, eid, rid, version, removed, row_id) VALUES {tuples}"
            ))?;
            for chunk in chunks.by_ref() {
                for (i, p) in chunk.iter().enumerate() {
                    let at = i * 6;
                    batch.raw_bind_parameter(at + 1, p.id)?;
                    batch.raw_bind_parameter(at + 2, p.eid)?;
                    batch.raw_bind_parameter(at + 3, p.rid)?;
                    batch.raw_bind_parameter(at + 4, p.version)?;
                    batch.raw_bind_parameter(at + 5, p.removed)?;
                    batch.raw_bind_parameter(at + 6, &p.row_id)?;
                }
                batch.raw_execute()?;
            }
        }
        for p in chunks.remainder() {
            self.insert.execute(rusqlite::params![p.id, p.eid, p.rid, p.version, p.removed, p.row_id])?;
        }
        Ok(())
    }

    /// Writes the buffered entries, checksum changes and partition facts.
    pub(crate) fn flush(mut self) -> R<()> {
        self.flush_deletes()?;
        self.flush_log()?;
        self.flush_stale()?;
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

/// Runs `many`, a statement of [`ID_BATCH`] id parameters, over `ids` in
/// chunks, and `one`, of a single id, over the rest.
fn run_per_id(conn: &Connection, ids: &[i64], many: &str, one: &str) -> R<()> {
    let mut chunks = ids.chunks_exact(ID_BATCH);
    if ids.len() >= ID_BATCH {
        let mut batch = conn.prepare_cached(many)?;
        for chunk in chunks.by_ref() {
            for (i, id) in chunk.iter().enumerate() {
                batch.raw_bind_parameter(i + 1, id)?;
            }
            batch.raw_execute()?;
        }
    }
    let mut single = conn.prepare_cached(one)?;
    for id in chunks.remainder() {
        single.execute([id])?;
    }
    Ok(())
}

/// Deletes every stale entry from the log, in key order; returns how many.
pub(crate) fn compact(conn: &Connection) -> R<u64> {
    let started = std::time::Instant::now();
    // SQLite reads the ids in key order and deletes each by its key.
    let deleted = conn
        .prepare_cached("DELETE FROM _sync_membership WHERE id IN (SELECT id FROM _sync_stale)")?
        .execute([])?;
    conn.prepare_cached("DELETE FROM _sync_stale")?.execute([])?;
    tracing::debug!(
        deleted,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compacted the membership log"
    );
    Ok(deleted as u64)
}

/// Whether the entry `id` is stale (listed in `_sync_stale`).
pub(crate) fn is_stale(conn: &Connection, id: i64) -> R<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM _sync_stale WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
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
        for n in [0, 7, 10, 99, 1_099_511_627_775, i64::MAX, -1, i64::MIN] {
            let mut text = String::new();
            push_decimal(&mut text, n);
            assert_eq!(text, n.to_string());
        }
    }

    fn log(conn: &Connection) -> Vec<(i64, i64, i64, bool, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT id, rid, version, removed, row_id FROM _sync_membership ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn stale(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT id FROM _sync_stale ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    fn org_conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::org_db::ORG_DDL).unwrap();
        crate::org_db::complete_layout(&conn).unwrap();
        conn
    }

    #[test]
    fn buffered_entries_replace_each_other_and_flush_in_key_order() {
        let conn = org_conn();
        let entity = EntityName::new("account").unwrap();
        let (a, b) = (RowId::new("a").unwrap(), RowId::new("b").unwrap());
        let ma = Member { eid: 1, rid: 1, entity: &entity, row_id: &a };
        let mb = Member { eid: 1, rid: 2, entity: &entity, row_id: &b };

        // An earlier transaction: a in partitions p and q, b in p.
        let mut w = MembershipWriter::new(&conn).unwrap();
        let p = w.pid(&PartitionKey::new("p").unwrap()).unwrap();
        let q = w.pid(&PartitionKey::new("q").unwrap()).unwrap();
        let a_p = w.write(p, ma, None, Seq(1), Op::Put(Seq(1))).unwrap();
        let a_q = w.write(q, ma, None, Seq(1), Op::Put(Seq(1))).unwrap();
        let b_p = w.write(p, mb, None, Seq(2), Op::Put(Seq(2))).unwrap();
        w.flush().unwrap();
        let id = |pid: i64, seq: i64| entry_id(pid, seq).unwrap();
        assert_eq!(log(&conn).iter().map(|e| e.0).collect::<Vec<_>>(), [id(p, 1), id(p, 2), id(q, 1)]);

        // This one: a changes twice (its first new entries are replaced in
        // memory; its old puts, of a version it leaves, stay as stale
        // entries) and leaves q; b leaves p without a new version (a
        // profile change), so its put is deleted at once.
        let mut w = MembershipWriter::new(&conn).unwrap();
        assert_eq!(w.entry_version(p, 1).unwrap(), Some(Seq(1)));
        let a_p3 = w.write(p, ma, Some((a_p, Seq(1))), Seq(3), Op::Put(Seq(3))).unwrap();
        let a_q3 = w.write(q, ma, Some((a_q, Seq(1))), Seq(3), Op::Put(Seq(3))).unwrap();
        assert_eq!(w.entry_version(q, 3).unwrap(), Some(Seq(3)));
        w.write(p, ma, Some((a_p3, Seq(3))), Seq(4), Op::Put(Seq(4))).unwrap();
        w.write(q, ma, Some((a_q3, Seq(3))), Seq(4), Op::Remove(Some(Seq(4)))).unwrap();
        assert_eq!(w.entry_version(p, 3).unwrap(), None, "replaced in this transaction");
        assert_eq!(w.entry_version(p, 4).unwrap(), Some(Seq(4)));
        w.write(p, mb, Some((b_p, Seq(2))), Seq(5), Op::Remove(Some(Seq(2)))).unwrap();
        w.flush().unwrap();
        assert_eq!(
            log(&conn),
            [
                (id(p, 1), 1, 1, false, None),
                (id(p, 4), 1, 4, false, None),
                (id(p, 5), 2, 5, true, Some("b".into())),
                (id(q, 1), 1, 1, false, None),
                (id(q, 4), 1, 4, true, Some("a".into())),
            ]
        );
        assert_eq!(stale(&conn), [id(p, 1), id(q, 1)]);
        assert!(is_stale(&conn, id(q, 1)).unwrap() && !is_stale(&conn, id(q, 4)).unwrap());

        // Compaction deletes exactly the stale entries.
        assert_eq!(compact(&conn).unwrap(), 2);
        assert_eq!(log(&conn).iter().map(|e| e.0).collect::<Vec<_>>(), [id(p, 4), id(p, 5), id(q, 4)]);
        assert!(stale(&conn).is_empty());

        // Seqs written out of order (no caller does) are still found.
        let mut w = MembershipWriter::new(&conn).unwrap();
        let a_p7 = w.write(p, ma, None, Seq(7), Op::Put(Seq(7))).unwrap();
        w.write(q, mb, None, Seq(6), Op::Put(Seq(6))).unwrap();
        assert_eq!(w.entry_version(p, 7).unwrap(), Some(Seq(7)));
        w.write(p, ma, Some((a_p7, Seq(7))), Seq(8), Op::Put(Seq(8))).unwrap();
        w.flush().unwrap();
        let ids: Vec<i64> = log(&conn).iter().map(|e| e.0).collect();
        assert!(ids.contains(&id(p, 8)) && ids.contains(&id(q, 6)) && !ids.contains(&id(p, 7)));
        assert!(stale(&conn).is_empty(), "an entry of the same transaction never goes stale");
    }

    #[test]
    fn stale_entries_are_compacted_once_they_are_many() {
        let conn = org_conn();
        let entity = EntityName::new("account").unwrap();
        let ids: Vec<RowId> = (0..5000).map(|i| RowId::new(format!("r{i}")).unwrap()).collect();
        let member = |i: usize| Member { eid: 1, rid: i as i64 + 1, entity: &entity, row_id: &ids[i] };
        let key = PartitionKey::new("p").unwrap();

        // Version 1 of every row, then version 2 of `n` of them.
        let mut w = MembershipWriter::new(&conn).unwrap();
        let p = w.pid(&key).unwrap();
        let mut refs = Vec::new();
        for i in 0..ids.len() {
            refs.push(w.write(p, member(i), None, Seq(i as u64 + 1), Op::Put(Seq(1))).unwrap());
        }
        w.flush().unwrap();
        let mut next = ids.len() as u64;
        let mut update = |conn: &Connection, rows: std::ops::Range<usize>| {
            let mut w = MembershipWriter::new(conn).unwrap();
            for i in rows {
                next += 1;
                refs[i] = w.write(p, member(i), Some((refs[i], Seq(1))), Seq(next), Op::Put(Seq(2))).unwrap();
            }
            w.flush().unwrap();
        };

        // A few stale entries wait…
        update(&conn, 0..100);
        assert_eq!(stale(&conn).len(), 100);
        assert_eq!(log(&conn).len(), ids.len() + 100);
        // …past the minimum and a share of the live puts, they go at once.
        update(&conn, 100..ids.len());
        assert!(stale(&conn).is_empty());
        let log = log(&conn);
        assert_eq!(log.len(), ids.len());
        assert!(log.iter().all(|e| e.2 == 2), "only the live puts are left");
    }
}
