//! `pull`: membership ops after the caller's cursor, column-wise.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::{CallerView, SyncService, bounded_wait};
use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::ids::{ColumnName, OrgId, Seq};
use crate::partition::PartitionKey;
use crate::principal::Principal;
use crate::protocol::{Batch, PullRequest, PullResponse};
use crate::row::PulledRow;
use crate::schema::EntityMetadata;
use crate::staging::{PullPage, PullPlan};
use crate::value::Value;

impl SyncService {
    /// `POST pull`: the changes of the caller's partitions after its cursor.
    ///
    /// New partitions (a changed profile, new claims) are read from the
    /// start; partitions the caller no longer holds are simply absent from
    /// `partitions`, and the client drops rows only they held. With
    /// `wait_ms`, an up-to-date caller waits for a change to one of its
    /// partitions (woken by the store's head notification, no polling).
    ///
    /// Errors: `ResyncRequired` for a cursor that is garbage, altered,
    /// another org's or user's, or older than the tombstone window;
    /// `InvalidInput`/`LimitExceeded` for a bad `limit`; `Forbidden` /
    /// `NotFound` as for [`SyncService::profile`].
    pub async fn pull(
        &self,
        principal: &Principal,
        org: &OrgId,
        request: &PullRequest,
    ) -> Result<PullResponse> {
        let config = &self.inner.config;
        let limit = match request.limit {
            None => config.max_rows_per_page,
            Some(0) => return Err(Error::invalid("limit must be at least 1")),
            Some(n) if n as usize > config.max_rows_per_page => {
                return Err(Error::limit("max_rows_per_page", config.max_rows_per_page as u64, u64::from(n)));
            }
            Some(n) => n as usize,
        };
        let view = self.caller_view(principal, org).await?;
        let cursor = match &request.cursor {
            None => Cursor::start(org.clone(), principal.user_id.clone()),
            Some(text) => {
                let c = self.inner.codec.decode(text, org, &principal.user_id)?;
                if c.incarnation != view.org.incarnation() {
                    return Err(Error::resync("the org was re-created since this cursor was issued"));
                }
                c
            }
        };
        let keys: Vec<PartitionKey> = view.partitions.iter().map(|p| p.key()).collect();
        // A partition is safe to continue while the tombstone floor has not
        // passed the head at which the client's copy of it was last whole.
        if cursor.positions.values().any(|p| *p != Seq::ZERO) {
            let floor = view.org.tombstone_floor().await?;
            for (key, position) in &cursor.positions {
                let since = cursor.since.get(key).copied().unwrap_or(*position);
                if *position != Seq::ZERO && since < floor && keys.contains(key) {
                    return Err(Error::resync(format!(
                        "partition '{key}' was last complete at {since}, older than the tombstone window \
                         (floor {floor}): removes it needs were purged"
                    )));
                }
            }
        }
        let plan = PullPlan {
            partitions: keys
                .iter()
                .map(|k| (k.clone(), cursor.positions.get(k).copied().unwrap_or(Seq::ZERO)))
                .collect(),
            max_rows: limit,
            max_bytes: config.max_bytes_per_page,
        };
        let wait = bounded_wait(request.wait_ms, config.max_wait_ms);
        let deadline = Instant::now() + wait;
        let mut head_rx = view.org.watch_head();
        let page = loop {
            head_rx.borrow_and_update();
            let page = view.org.pull(&plan).await?;
            let schema_changed = cursor.schema_version != view.schema_version;
            if !page.changes.is_empty() || page.more || schema_changed || request.cursor.is_none() {
                break page;
            }
            let now = Instant::now();
            if now >= deadline {
                break page;
            }
            // Nothing new for this caller: wait for the org's head to move,
            // then look again (a change in someone else's partition wakes us
            // but is filtered out by the next read).
            match tokio::time::timeout(deadline - now, head_rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => break page,
            }
        };
        self.respond(&view, cursor, keys, page)
    }

    fn respond(
        &self,
        view: &CallerView,
        mut cursor: Cursor,
        keys: Vec<PartitionKey>,
        page: PullPage,
    ) -> Result<PullResponse> {
        let schemas_due = cursor.schema_version != view.schema_version || cursor.positions.is_empty();
        // Columns sent per partition: the item's subset (key first) or all.
        let mut columns: HashMap<PartitionKey, (&EntityMetadata, Vec<ColumnName>)> = HashMap::new();
        for p in &view.partitions {
            let Some(meta) = view.schema(&p.entity) else { continue };
            let cols = match view.item_of(p).and_then(|i| i.columns.as_ref()) {
                // Each column once: a put's values are moved out of its row.
                Some(subset) => {
                    let mut cols = vec![meta.primary_key.clone()];
                    for c in subset {
                        if !cols.contains(c) {
                            cols.push(c.clone());
                        }
                    }
                    cols
                }
                None => meta.pull_columns(),
            };
            columns.insert(p.key(), (meta, cols));
        }
        let mut batches: Vec<Batch> = Vec::new();
        let mut picker = Picker::default();
        for change in page.changes {
            let Some((meta, cols)) = columns.get(&change.partition) else {
                return Err(Error::internal(format!(
                    "store returned unplanned partition {}",
                    change.partition
                )));
            };
            let fresh = batches.last().is_none_or(|b| b.partition != change.partition);
            if fresh {
                picker = Picker::default();
                batches.push(Batch {
                    entity: meta.name.clone(),
                    partition: change.partition.clone(),
                    columns: cols.clone(),
                    puts: Vec::new(),
                    versions: Vec::new(),
                    removes: Vec::new(),
                });
            }
            let Some(batch) = batches.last_mut() else { continue };
            match change.row {
                Some(pulled) => {
                    batch.versions.push(pulled.version());
                    batch.puts.push(picker.pick(cols, pulled));
                }
                None => batch.removes.push(change.row_id),
            }
        }
        let mut positions: BTreeMap<PartitionKey, Seq> = BTreeMap::new();
        let mut since: BTreeMap<PartitionKey, Seq> = BTreeMap::new();
        for (k, s) in page.positions {
            let caught_up = s == page.head;
            let first_read = cursor.positions.get(&k).is_none_or(|p| *p == Seq::ZERO);
            let previous = cursor.since.get(&k).copied().or_else(|| cursor.positions.get(&k).copied());
            let value = match (caught_up, first_read, previous) {
                (true, _, _) => s,
                (false, true, _) | (false, false, None) => page.head,
                (false, false, Some(p)) => p,
            };
            if s != Seq::ZERO {
                since.insert(k.clone(), value);
            }
            positions.insert(k, s);
        }
        // Partitions the caller no longer holds are dropped from the cursor.
        positions.retain(|k, _| keys.contains(k));
        since.retain(|k, _| positions.contains_key(k));
        cursor.positions = positions;
        cursor.since = since;
        cursor.schema_version = view.schema_version;
        cursor.incarnation = view.org.incarnation();
        let entities: std::collections::BTreeSet<_> = view.partitions.iter().map(|p| &p.entity).collect();
        Ok(PullResponse {
            schema_version: view.schema_version,
            schemas: schemas_due
                .then(|| view.schemas.iter().filter(|m| entities.contains(&m.name)).cloned().collect()),
            partitions: view.partition_infos(),
            batches,
            checksums: if page.more { None } else { page.checksums },
            cursor: self.inner.codec.encode(&cursor)?,
            has_more: page.more,
        })
    }
}

/// Moves pulled rows' values into a batch's column order, mapping a row's
/// column list once and reusing the mapping while rows share that list.
#[derive(Default)]
struct Picker {
    source: Option<Arc<[ColumnName]>>,
    /// Per batch column: its index in `source`.
    index: Vec<Option<usize>>,
    /// The batch's columns are `source` itself, in order.
    identity: bool,
}

impl Picker {
    /// `row`'s values for the columns `cols`; null for a column the row
    /// does not have.
    fn pick(&mut self, cols: &[ColumnName], row: PulledRow) -> Vec<Value> {
        if !self.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, row.columns())) {
            let source = row.columns();
            self.index = cols.iter().map(|c| source.iter().position(|x| x == c)).collect();
            self.identity =
                cols.len() == source.len() && self.index.iter().enumerate().all(|(i, x)| *x == Some(i));
            self.source = Some(Arc::clone(source));
        }
        let mut values = row.into_values();
        if self.identity {
            return values;
        }
        self.index
            .iter()
            .map(|i| match i.and_then(|i| values.get_mut(i)) {
                Some(v) => std::mem::replace(v, Value::Null),
                None => Value::Null,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ids::Seq;

    fn cols(names: &[&str]) -> Vec<ColumnName> {
        names.iter().map(|n| ColumnName::new(*n).unwrap()).collect()
    }

    fn row(columns: &Arc<[ColumnName]>, values: &[i64]) -> PulledRow {
        PulledRow::new(Arc::clone(columns), values.iter().map(|v| Value::Integer(*v)).collect(), Seq(1))
            .unwrap()
    }

    #[test]
    fn picker_moves_values_into_the_batch_order() {
        let source: Arc<[ColumnName]> = cols(&["id", "a", "b"]).into();
        let mut picker = Picker::default();
        let all = cols(&["id", "a", "b"]);
        assert_eq!(picker.pick(&all, row(&source, &[1, 2, 3])), row(&source, &[1, 2, 3]).into_values());
        let mut picker = Picker::default();
        let subset = cols(&["id", "b", "missing"]);
        assert_eq!(
            picker.pick(&subset, row(&source, &[1, 2, 3])),
            vec![Value::Integer(1), Value::Integer(3), Value::Null]
        );
        assert_eq!(
            picker.pick(&subset, row(&source, &[4, 5, 6])),
            vec![Value::Integer(4), Value::Integer(6), Value::Null]
        );
        // A row over another column list (a schema change mid-page) is mapped anew.
        let other: Arc<[ColumnName]> = cols(&["b", "id"]).into();
        assert_eq!(
            picker.pick(&subset, row(&other, &[7, 8])),
            vec![Value::Integer(8), Value::Integer(7), Value::Null]
        );
    }
}
