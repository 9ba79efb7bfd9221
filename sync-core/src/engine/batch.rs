//! Consecutive change pages merged into one, so that a transaction of the
//! staging store spans many source pages.
//!
//! A commit rewrites every database page it dirtied; with rows changing
//! in random key order that is about one page per row, so committing each
//! source page of 1,000 rows writes many times what one large commit of
//! the same rows writes (see `PERFORMANCE.md`). Merging pages keeps the
//! guarantee that rows and the source token commit together: the merged
//! page carries the token of the last page it holds.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Instant;

use crate::error::Result;
use crate::ids::{ChangeToken, RowId};
use crate::row::{ChangePage, Row};
use crate::schema::EntityMetadata;

/// Where a row's last op sits in the batch.
#[derive(Clone, Copy)]
enum Slot {
    Upsert(usize),
    Delete(usize),
}

/// Change pages read from a source and not yet applied, merged so that
/// applying [`PageBatch::into_page`] once leaves the same rows as applying
/// the pages one after another: per row (by canonical id) the last op wins,
/// and within one page deletes come after upserts, as in
/// [`OrgStaging::apply_changes`](crate::OrgStaging::apply_changes).
#[derive(Default)]
pub(crate) struct PageBatch {
    upserts: Vec<Option<Row>>,
    deletes: Vec<Option<RowId>>,
    last: HashMap<RowId, Slot>,
    token: Option<ChangeToken>,
    more: bool,
    pages: u64,
    bytes: usize,
    since: Option<Instant>,
}

impl PageBatch {
    /// Merges `page`, the page read after every page already in the batch.
    /// Its token, when it has one, becomes the batch's. Fails with
    /// `InvalidInput` (and leaves the batch as it was) when an id is not a
    /// valid key of `meta`.
    pub(crate) fn push(&mut self, meta: &EntityMetadata, page: ChangePage) -> Result<()> {
        let ChangePage { upserts, deletes, next_token, more } = page;
        let upsert_keys =
            upserts.iter().map(|r| meta.parse_row_id(r.id.as_str())).collect::<Result<Vec<_>>>()?;
        let delete_keys =
            deletes.iter().map(|id| meta.parse_row_id(id.as_str())).collect::<Result<Vec<_>>>()?;
        for (key, row) in upsert_keys.into_iter().zip(upserts) {
            self.bytes += row.approx_size();
            match self.last.entry(key) {
                Entry::Occupied(mut e) => match *e.get() {
                    Slot::Upsert(i) => self.upserts[i] = Some(row),
                    Slot::Delete(i) => {
                        self.deletes[i] = None;
                        e.insert(Slot::Upsert(self.upserts.len()));
                        self.upserts.push(Some(row));
                    }
                },
                Entry::Vacant(e) => {
                    e.insert(Slot::Upsert(self.upserts.len()));
                    self.upserts.push(Some(row));
                }
            }
        }
        for (key, id) in delete_keys.into_iter().zip(deletes) {
            self.bytes += id.as_str().len() + 8;
            match self.last.entry(key) {
                Entry::Occupied(mut e) => match *e.get() {
                    Slot::Upsert(i) => {
                        self.upserts[i] = None;
                        e.insert(Slot::Delete(self.deletes.len()));
                        self.deletes.push(Some(id));
                    }
                    Slot::Delete(_) => {}
                },
                Entry::Vacant(e) => {
                    e.insert(Slot::Delete(self.deletes.len()));
                    self.deletes.push(Some(id));
                }
            }
        }
        if next_token.is_some() {
            self.token = next_token;
        }
        self.more = more;
        self.pages += 1;
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Whether no page was merged since the batch was made.
    pub(crate) fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Approximate size in bytes of every row and id merged (ops a later
    /// page replaced included).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the first page was merged.
    pub(crate) fn since(&self) -> Option<Instant> {
        self.since
    }

    /// The merged page: the last op of each row, the last token given, and
    /// `more` as the last page said.
    pub(crate) fn into_page(self) -> ChangePage {
        ChangePage {
            upserts: self.upserts.into_iter().flatten().collect(),
            deletes: self.deletes.into_iter().flatten().collect(),
            next_token: self.token,
            more: self.more,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::ids::ColumnName;
    use crate::schema::{Attribute, AttributeType};
    use crate::value::Value;

    fn meta(key: AttributeType) -> EntityMetadata {
        let col = |n: &str| ColumnName::new(n).unwrap();
        EntityMetadata::new(
            crate::ids::EntityName::new("item").unwrap(),
            col("id"),
            vec![Attribute::new(col("id"), key), Attribute::new(col("v"), AttributeType::Integer)],
        )
        .unwrap()
    }

    fn row(id: &str, v: i64) -> Row {
        Row::new(RowId::new(id).unwrap(), [(ColumnName::new("v").unwrap(), Value::Integer(v))])
    }

    /// What applying `page` does to `rows` (keyed by canonical id): its
    /// upserts, then its deletes.
    fn apply(meta: &EntityMetadata, rows: &mut BTreeMap<RowId, Row>, page: &ChangePage) {
        for r in &page.upserts {
            rows.insert(meta.parse_row_id(r.id.as_str()).unwrap(), r.clone());
        }
        for id in &page.deletes {
            rows.remove(&meta.parse_row_id(id.as_str()).unwrap());
        }
    }

    #[test]
    fn the_last_op_of_each_row_wins_across_pages() {
        let meta = meta(AttributeType::Integer);
        let mut batch = PageBatch::default();
        let page = |upserts: Vec<Row>, deletes: &[&str], token: Option<&str>, more: bool| ChangePage {
            upserts,
            deletes: deletes.iter().map(|d| RowId::new(*d).unwrap()).collect(),
            next_token: token.map(|t| ChangeToken(t.into())),
            more,
        };
        batch.push(&meta, page(vec![row("1", 1), row("2", 2)], &["3"], Some("a"), true)).unwrap();
        // "02" is "2" in canonical form: the delete replaces the upsert.
        batch.push(&meta, page(vec![row("3", 3)], &["02"], Some("b"), true)).unwrap();
        batch.push(&meta, page(vec![row("1", 10)], &[], None, false)).unwrap();
        assert!(!batch.is_empty());
        let merged = batch.into_page();
        assert_eq!(merged.upserts, vec![row("1", 10), row("3", 3)]);
        assert_eq!(merged.deletes, vec![RowId::new("02").unwrap()]);
        // The last page gave no token: the last one given stands.
        assert_eq!(merged.next_token, Some(ChangeToken("b".into())));
        assert!(!merged.more);
    }

    #[test]
    fn a_bad_id_fails_and_leaves_the_batch_as_it_was() {
        let meta = meta(AttributeType::Integer);
        let mut batch = PageBatch::default();
        let good = ChangePage { upserts: vec![row("1", 1)], more: true, ..ChangePage::default() };
        batch.push(&meta, good).unwrap();
        let bad = ChangePage {
            upserts: vec![row("2", 2), row("x", 3)],
            next_token: Some(ChangeToken("t".into())),
            ..ChangePage::default()
        };
        let err = batch.push(&meta, bad).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        let merged = batch.into_page();
        assert_eq!(merged.upserts, vec![row("1", 1)]);
        assert_eq!(merged.next_token, None);
        assert!(merged.more);
    }

    fn arb_page() -> impl Strategy<Value = ChangePage> {
        // Ids 0..8 written with up to two leading zeros, so that one row
        // turns up under several spellings.
        let id = (0u8..8, 0usize..3).prop_map(|(n, zeros)| format!("{}{n}", "0".repeat(zeros)));
        (
            prop::collection::vec((id.clone(), any::<i8>()), 0..6),
            prop::collection::vec(id, 0..4),
            prop::option::of("[a-c]"),
            any::<bool>(),
        )
            .prop_map(|(upserts, deletes, token, more)| ChangePage {
                upserts: upserts.into_iter().map(|(id, v)| row(&id, i64::from(v))).collect(),
                deletes: deletes.into_iter().map(|d| RowId::new(d).unwrap()).collect(),
                next_token: token.map(ChangeToken),
                more,
            })
    }

    proptest! {
        /// Applying the merged page equals applying the pages in turn, for
        /// the rows and for the token the store keeps.
        #[test]
        fn merging_equals_applying_in_turn(
            start in prop::collection::btree_map(0u8..8, any::<i8>(), 0..8),
            pages in prop::collection::vec(arb_page(), 1..6),
        ) {
            let meta = meta(AttributeType::Integer);
            let start: BTreeMap<RowId, Row> = start
                .into_iter()
                .map(|(n, v)| (RowId::new(n.to_string()).unwrap(), row(&n.to_string(), i64::from(v))))
                .collect();
            let mut in_turn = start.clone();
            let mut token = None;
            let mut batch = PageBatch::default();
            for page in &pages {
                apply(&meta, &mut in_turn, page);
                if page.next_token.is_some() {
                    token.clone_from(&page.next_token);
                }
                batch.push(&meta, page.clone()).unwrap();
            }
            let merged = batch.into_page();
            let mut at_once = start;
            apply(&meta, &mut at_once, &merged);
            prop_assert_eq!(in_turn, at_once);
            prop_assert_eq!(merged.next_token, token);
            prop_assert_eq!(merged.more, pages.last().unwrap().more);
            // Each row appears once in the merged page.
            let mut keys: Vec<RowId> = merged.upserts.iter().map(|r| r.id.clone())
                .chain(merged.deletes.iter().cloned())
                .map(|id| meta.parse_row_id(id.as_str()).unwrap())
                .collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), n);
        }
    }
}
