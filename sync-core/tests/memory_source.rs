//! Tests of the scriptable in-memory source and its connector.
#![cfg(feature = "memory")]
// The helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;
use sync_core::memory::{MemoryConnector, MemorySource, SourceOp};
use sync_core::{
    Attribute, AttributeType, ChangePage, ChangeToken, ColumnName, EntityMetadata, EntityName, Error,
    ErrorKind, MetadataSource, Mutation, MutationOp, OrgSourceConfig, Row, RowId, SourceConnector, Value,
};

fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}

fn ent(s: &str) -> EntityName {
    EntityName::new(s).unwrap()
}

/// `item(id integer key, name string, n integer)`.
fn item_schema(name: &str) -> EntityMetadata {
    EntityMetadata::new(
        ent(name),
        col("id"),
        vec![
            Attribute::new(col("id"), AttributeType::Integer),
            Attribute::new(col("name"), AttributeType::String),
            Attribute::new(col("n"), AttributeType::Integer),
        ],
    )
    .unwrap()
}

fn item(id: i64, n: i64) -> Row {
    Row::new(RowId::new(id.to_string()).unwrap(), [(col("n"), Value::Integer(n))])
}

fn source_with(rows: impl IntoIterator<Item = i64>) -> MemorySource {
    let src = MemorySource::with_entities([item_schema("item"), item_schema("other")]).unwrap();
    for id in rows {
        src.upsert("item", item(id, 0)).unwrap();
    }
    src
}

fn ids(rows: &[Row]) -> Vec<String> {
    rows.iter().map(|r| r.id.to_string()).collect()
}

/// What a consumer of the feed holds: rows by id.
#[derive(Default)]
struct Replica {
    token: Option<ChangeToken>,
    rows: BTreeMap<RowId, Row>,
}

impl Replica {
    /// Reads one page; a full read (no token) starts from an empty copy.
    /// Returns the page, or the error.
    async fn read(
        &mut self,
        src: &MemorySource,
        entity: &str,
        page_size: usize,
    ) -> Result<ChangePage, Error> {
        let full = self.token.is_none();
        let page = match src.changes(&ent(entity), self.token.clone(), page_size).await {
            Ok(page) => page,
            Err(e) => {
                if e.kind() == ErrorKind::ResyncRequired {
                    self.token = None;
                }
                return Err(e);
            }
        };
        if full {
            self.rows.clear();
        }
        for row in &page.upserts {
            self.rows.insert(row.id.clone(), row.clone());
        }
        for id in &page.deletes {
            self.rows.remove(id);
        }
        self.token = page.next_token.clone();
        Ok(page)
    }

    /// Reads until `more` is false, restarting on `ResyncRequired`.
    async fn drain(&mut self, src: &MemorySource, entity: &str, page_size: usize) {
        for _ in 0..10_000 {
            match self.read(src, entity, page_size).await {
                Ok(page) if !page.more => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ResyncRequired => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        panic!("the change feed never ran dry");
    }

    fn assert_matches(&self, src: &MemorySource, entity: &str) {
        let expected = src.rows(entity).unwrap();
        let held = self.rows.values().cloned().collect::<Vec<_>>();
        assert_eq!(held, expected);
    }

    /// As `assert_matches`, comparing only non-null values: a column added
    /// to the schema is null everywhere and re-sends no row.
    fn assert_matches_ignoring_nulls(&self, src: &MemorySource, entity: &str) {
        let strip = |row: &Row| {
            let mut row = row.clone();
            row.values.retain(|_, v| !v.is_null());
            row
        };
        let expected = src.rows(entity).unwrap().iter().map(strip).collect::<Vec<_>>();
        let held = self.rows.values().map(strip).collect::<Vec<_>>();
        assert_eq!(held, expected);
    }
}

#[tokio::test]
async fn full_read_pages_every_row_in_id_order() {
    let src = source_with([5, 1, 4, 2, 3]);
    let p1 = src.changes(&ent("item"), None, 2).await.unwrap();
    assert_eq!(ids(&p1.upserts), ["1", "2"]);
    assert!(p1.more && p1.deletes.is_empty());
    let p2 = src.changes(&ent("item"), p1.next_token, 2).await.unwrap();
    assert_eq!(ids(&p2.upserts), ["3", "4"]);
    assert!(p2.more);
    let p3 = src.changes(&ent("item"), p2.next_token, 2).await.unwrap();
    assert_eq!(ids(&p3.upserts), ["5"]);
    assert!(!p3.more);
    let p4 = src.changes(&ent("item"), p3.next_token, 2).await.unwrap();
    assert_eq!(p4, ChangePage { next_token: p4.next_token.clone(), ..ChangePage::default() });
    // Full rows, canonical: every column present.
    assert_eq!(p1.upserts[0].get("name"), Some(&Value::Null));
    assert_eq!(p1.upserts[0].get("id"), Some(&Value::Integer(1)));
}

#[tokio::test]
async fn full_read_of_an_empty_entity_is_one_empty_page() {
    let src = source_with([]);
    let page = src.changes(&ent("item"), None, 10).await.unwrap();
    assert!(page.upserts.is_empty() && page.deletes.is_empty() && !page.more);
    assert!(page.next_token.is_some());
}

#[tokio::test]
async fn full_read_is_consistent_under_edits() {
    let src = source_with(1..=6);
    let mut replica = Replica::default();
    let page = replica.read(&src, "item", 2).await.unwrap();
    assert_eq!(ids(&page.upserts), ["1", "2"]);
    src.upsert("item", item(1, 10)).unwrap(); // delivered already
    src.upsert("item", item(4, 40)).unwrap(); // not yet delivered
    src.delete("item", "5").unwrap(); // not yet delivered
    src.upsert("item", item(7, 70)).unwrap(); // new
    // The rest of the snapshot: no row twice, none of the edited ones.
    let page = replica.read(&src, "item", 2).await.unwrap();
    assert_eq!(ids(&page.upserts), ["3", "6"]);
    assert!(page.more, "the edits come next");
    // Then the edits, oldest first.
    let page = replica.read(&src, "item", 2).await.unwrap();
    assert_eq!(ids(&page.upserts), ["1", "4"]);
    assert!(page.deletes.is_empty() && page.more);
    let page = replica.read(&src, "item", 2).await.unwrap();
    assert_eq!(ids(&page.upserts), ["7"]);
    assert_eq!(page.deletes, [RowId::new("5").unwrap()]);
    assert!(!page.more);
    replica.assert_matches(&src, "item");
}

#[tokio::test]
async fn incremental_reads_deliver_upserts_and_deletes() {
    let src = source_with(1..=3);
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;
    src.upsert("item", item(2, 22)).unwrap();
    src.delete("item", "3").unwrap();
    src.upsert("item", item(4, 4)).unwrap();
    assert!(!src.delete("item", "99").unwrap(), "deleting a missing row changes nothing");
    let page = replica.read(&src, "item", 10).await.unwrap();
    assert_eq!(ids(&page.upserts), ["2", "4"]);
    assert_eq!(page.deletes, [RowId::new("3").unwrap()]);
    assert!(!page.more);
    replica.assert_matches(&src, "item");
    // Nothing new: an empty page that keeps the position.
    let empty = replica.read(&src, "item", 10).await.unwrap();
    assert!(empty.upserts.is_empty() && empty.deletes.is_empty() && !empty.more);
    src.upsert("item", item(1, 11)).unwrap();
    let page = replica.read(&src, "item", 10).await.unwrap();
    assert_eq!(ids(&page.upserts), ["1"]);
}

#[tokio::test]
async fn a_row_appears_once_at_its_latest_state() {
    let src = source_with([1]);
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;
    for n in 0..5 {
        src.upsert("item", item(1, n)).unwrap();
    }
    src.delete("item", "1").unwrap();
    src.upsert("item", item(1, 99)).unwrap();
    let page = replica.read(&src, "item", 10).await.unwrap();
    assert_eq!(ids(&page.upserts), ["1"]);
    assert!(page.deletes.is_empty(), "a deleted and re-created row is an upsert");
    assert_eq!(page.upserts[0].get("n"), Some(&Value::Integer(99)));
}

#[tokio::test]
async fn changes_after_a_page_appear_in_a_later_page() {
    let src = source_with(1..=4);
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;
    for id in 1..=4 {
        src.upsert("item", item(id, 1)).unwrap();
    }
    let page = replica.read(&src, "item", 2).await.unwrap();
    assert_eq!(ids(&page.upserts), ["1", "2"]);
    assert!(page.more);
    src.upsert("item", item(1, 2)).unwrap(); // already delivered: must come again
    src.delete("item", "4").unwrap(); // not yet delivered: only the delete comes
    replica.drain(&src, "item", 2).await;
    replica.assert_matches(&src, "item");
    assert_eq!(replica.rows[&RowId::new("1").unwrap()].get("n"), Some(&Value::Integer(2)));
}

#[tokio::test]
async fn pages_count_upserts_and_deletes() {
    let src = source_with(1..=4);
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;
    src.delete("item", "1").unwrap();
    src.upsert("item", item(2, 2)).unwrap();
    src.delete("item", "3").unwrap();
    let page = replica.read(&src, "item", 2).await.unwrap();
    assert_eq!(page.upserts.len() + page.deletes.len(), 2);
    assert!(page.more);
    let page = replica.read(&src, "item", 2).await.unwrap();
    assert_eq!(page.deletes, [RowId::new("3").unwrap()]);
    assert!(!page.more);
}

#[tokio::test]
async fn other_entities_do_not_show_in_the_feed() {
    let src = source_with([1]);
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;
    src.upsert("other", item(1, 1)).unwrap();
    let page = replica.read(&src, "item", 10).await.unwrap();
    assert!(page.upserts.is_empty() && !page.more);
}

#[tokio::test]
async fn expired_tokens_require_a_resync() {
    let src = source_with(1..=4);
    let mut replica = Replica::default();
    replica.read(&src, "item", 2).await.unwrap(); // mid full read
    let mid_full = replica.token.clone();
    let mut done = Replica::default();
    done.drain(&src, "item", 10).await;
    let head_token = done.token.clone();
    src.upsert("item", item(9, 9)).unwrap();
    src.expire_tokens_before(src.head() - 1);
    // The token at the last delivered version is still honoured.
    let page = src.changes(&ent("item"), head_token.clone(), 10).await.unwrap();
    assert_eq!(ids(&page.upserts), ["9"]);
    src.expire_all_tokens();
    for token in [mid_full, head_token, page.next_token] {
        let err = src.changes(&ent("item"), token, 10).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResyncRequired, "{err}");
    }
    // A full read after expiry works and converges.
    let mut fresh = Replica::default();
    fresh.drain(&src, "item", 3).await;
    fresh.assert_matches(&src, "item");
    // Expiry never moves back.
    src.expire_tokens_before(0);
    let err = src.changes(&ent("item"), done.token.clone(), 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResyncRequired);
}

#[tokio::test]
async fn foreign_and_garbage_tokens_require_a_resync() {
    let src = source_with([1]);
    let other_source = source_with([1]);
    let item_token = src.changes(&ent("item"), None, 10).await.unwrap().next_token;
    let other_token = other_source.changes(&ent("item"), None, 10).await.unwrap().next_token;
    let cases = [
        (ent("item"), Some(ChangeToken("garbage".into()))),
        (ent("item"), Some(ChangeToken("mem1.!!!".into()))),
        (ent("item"), other_token),
        (ent("other"), item_token),
    ];
    for (entity, token) in cases {
        let err = src.changes(&entity, token.clone(), 10).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResyncRequired, "{token:?} for {entity}: {err}");
    }
}

#[tokio::test]
async fn removed_entities_are_not_found_and_their_tokens_expire() {
    let src = source_with([1]);
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;
    assert!(src.remove_entity("item"));
    assert!(!src.remove_entity("item"));
    let err = src.changes(&ent("item"), replica.token.clone(), 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(src.entities().await.unwrap().len(), 1);
    src.set_schema(item_schema("item")).unwrap();
    src.upsert("item", item(2, 2)).unwrap();
    let err = src.changes(&ent("item"), replica.token.clone(), 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResyncRequired, "the old rows' deletes are not in the feed");
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let src = source_with([1]);
    let err = src.changes(&ent("nope"), None, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = src.changes(&ent("item"), None, 0).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = src.upsert("nope", item(1, 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let bad = Row::new(RowId::new("1").unwrap(), [(col("nope"), Value::Integer(1))]);
    assert_eq!(src.upsert("item", bad).unwrap_err().kind(), ErrorKind::InvalidInput);
    let bad = Row::new(RowId::new("x").unwrap(), []);
    assert_eq!(src.upsert("item", bad).unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(src.delete("item", "x").unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(src.rows("nope").unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn entities_lists_schemas_by_name() {
    let src = source_with([]);
    let names = src.entities().await.unwrap().into_iter().map(|m| m.name.to_string()).collect::<Vec<_>>();
    assert_eq!(names, ["item", "other"]);
    assert_eq!(src.schema("item"), Some(item_schema("item")));
    assert_eq!(src.schema("nope"), None);
}

fn mutation(op: MutationOp, id: &str, values: &[(&str, Value)]) -> Mutation {
    Mutation {
        op,
        row_id: RowId::new(id).unwrap(),
        values: values.iter().map(|(c, v)| (col(c), v.clone())).collect(),
    }
}

#[tokio::test]
async fn write_back_applies_and_reports_conflicts() {
    let src = source_with([1]);
    let item_e = ent("item");
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;

    let err = src.apply(&item_e, &mutation(MutationOp::Insert, "1", &[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "insert of an existing id");
    let err = src.apply(&item_e, &mutation(MutationOp::Update, "2", &[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "update of a missing row");
    let err = src.apply(&item_e, &mutation(MutationOp::Delete, "2", &[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "delete of a missing row");
    let err = src
        .apply(&item_e, &mutation(MutationOp::Update, "1", &[("nope", Value::Integer(1))]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "unknown column");
    let err = src
        .apply(&item_e, &mutation(MutationOp::Update, "1", &[("n", Value::from("many"))]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "ill-typed value");
    let err = src.apply(&ent("nope"), &mutation(MutationOp::Insert, "1", &[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let page = replica.read(&src, "item", 10).await.unwrap();
    assert!(page.upserts.is_empty() && page.deletes.is_empty(), "refused write-backs change nothing");

    let inserted = src
        .apply(&item_e, &mutation(MutationOp::Insert, "2", &[("name", Value::from("two"))]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inserted.get("n"), Some(&Value::Null), "the row as the source holds it");
    assert_eq!(inserted.get("id"), Some(&Value::Integer(2)));
    let updated = src
        .apply(&item_e, &mutation(MutationOp::Update, "2", &[("n", Value::Integer(7))]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.get("name"), Some(&Value::from("two")), "an update keeps the other columns");
    assert_eq!(updated.get("n"), Some(&Value::Integer(7)));
    assert_eq!(src.row("item", "2"), Some(updated.clone()));
    assert_eq!(src.apply(&item_e, &mutation(MutationOp::Delete, "1", &[])).await.unwrap(), None);

    let page = replica.read(&src, "item", 10).await.unwrap();
    assert_eq!(page.upserts, [updated], "write-backs are changes in the feed");
    assert_eq!(page.deletes, [RowId::new("1").unwrap()]);
    replica.assert_matches(&src, "item");
}

#[tokio::test]
async fn failures_can_be_scripted() {
    let src = source_with([1]);
    let item_e = ent("item");
    src.fail_next(SourceOp::Changes, 2, Error::unavailable("source is down"));
    for _ in 0..2 {
        let err = src.changes(&item_e, None, 10).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
    assert!(src.changes(&item_e, None, 10).await.is_ok());
    assert_eq!(src.calls(SourceOp::Changes), 3, "failed calls are counted");

    src.fail_next_for(SourceOp::Changes, &item_e, usize::MAX, Error::internal("poison"));
    assert!(src.changes(&ent("other"), None, 10).await.is_ok(), "scoped to one entity");
    for _ in 0..3 {
        assert_eq!(src.changes(&item_e, None, 10).await.unwrap_err().kind(), ErrorKind::Internal);
    }
    src.clear_failures();
    assert!(src.changes(&item_e, None, 10).await.is_ok());

    src.fail_next(SourceOp::Apply, 1, Error::forbidden("read-only entity"));
    let err = src.apply(&item_e, &mutation(MutationOp::Delete, "1", &[])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert!(src.row("item", "1").is_some(), "a failed write-back changes nothing");
    assert_eq!(src.calls(SourceOp::Apply), 1);

    src.fail_next(SourceOp::Entities, 1, Error::unavailable("down"));
    assert_eq!(src.entities().await.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(src.entities().await.unwrap().len(), 2);
    assert_eq!(src.calls(SourceOp::Entities), 2);
}

#[tokio::test]
async fn latency_delays_every_call() {
    let src = source_with([1]);
    src.set_latency(Duration::from_millis(50));
    let start = Instant::now();
    src.entities().await.unwrap();
    src.changes(&ent("item"), None, 10).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn schema_changes_rewrite_rows_only_when_values_change() {
    let src = source_with([1, 2]);
    src.upsert("item", Row::new(RowId::new("2").unwrap(), [(col("name"), Value::from("two"))])).unwrap();
    let mut replica = Replica::default();
    replica.drain(&src, "item", 10).await;

    // Adding a column: every value is kept, so nothing is re-sent.
    let mut wider = item_schema("item");
    wider.attributes.push(Attribute::new(col("extra"), AttributeType::Boolean));
    src.set_schema(wider.clone()).unwrap();
    let page = replica.read(&src, "item", 10).await.unwrap();
    assert!(page.upserts.is_empty());
    assert_eq!(src.row("item", "1").unwrap().get("extra"), Some(&Value::Null));

    // Dropping a column that holds a value rewrites that row only.
    let mut narrower = wider.clone();
    narrower.attributes.retain(|a| a.name.as_str() != "name");
    src.set_schema(narrower).unwrap();
    let page = replica.read(&src, "item", 10).await.unwrap();
    assert_eq!(ids(&page.upserts), ["2"]);
    assert_eq!(page.upserts[0].get("name"), None);

    // The key cannot change under existing rows; nothing changes.
    let mut rekeyed = item_schema("item");
    rekeyed.primary_key = col("n");
    let err = src.set_schema(rekeyed).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // A type that a value does not fit is refused; nothing changes.
    src.upsert_json("item", json!({"id": 3, "n": 5})).unwrap();
    let mut retyped = item_schema("item");
    retyped.attributes[2].ty = AttributeType::Boolean;
    assert_eq!(src.set_schema(retyped).unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(src.row("item", "3").unwrap().get("n"), Some(&Value::Integer(5)));
    replica.drain(&src, "item", 10).await;
    replica.assert_matches_ignoring_nulls(&src, "item");
}

#[tokio::test]
async fn upsert_json_takes_the_id_from_the_key_column() {
    let src = MemorySource::new();
    let account = EntityMetadata::new(
        ent("account"),
        col("accountid"),
        vec![
            Attribute::new(col("accountid"), AttributeType::Uuid),
            Attribute::new(col("revenue"), AttributeType::Decimal),
        ],
    )
    .unwrap();
    src.set_schema(account).unwrap();
    let id = uuid::Uuid::new_v4();
    let row = src
        .upsert_json("account", json!({"accountid": id.to_string().to_uppercase(), "revenue": "10.50"}))
        .unwrap();
    assert_eq!(row.id.as_str(), id.to_string(), "canonical id");
    assert_eq!(row.get("revenue").unwrap().canonical_text(), "10.5");
    assert_eq!(src.row("account", &id.to_string().to_uppercase()), Some(row));
    for bad in
        [json!({"revenue": 1}), json!({"accountid": null}), json!([1]), json!({"accountid": id, "x": 1})]
    {
        let err = src.upsert_json("account", bad.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
    }
    assert_eq!(src.rows("account").unwrap().len(), 1);
}

#[tokio::test]
async fn connector_hands_out_registered_sources() {
    let connector = MemoryConnector::new();
    let src = Arc::new(source_with([1]));
    assert!(connector.register("contoso", src.clone()).is_none());
    let config = MemoryConnector::config("contoso");
    assert_eq!(config.kind, MemoryConnector::KIND);
    let connected = connector.connect(&config).await.unwrap();
    src.upsert("item", item(2, 2)).unwrap();
    let page = connected.changes(&ent("item"), None, 10).await.unwrap();
    assert_eq!(ids(&page.upserts), ["1", "2"], "the connected source is the registered one");
    assert!(Arc::ptr_eq(&connector.source("contoso").unwrap(), &src));

    let wrong_kind = OrgSourceConfig { kind: "dataverse".into(), settings: config.settings.clone() };
    let no_name = OrgSourceConfig { kind: "memory".into(), settings: BTreeMap::new() };
    for bad in [wrong_kind, no_name, MemoryConnector::config("fabrikam")] {
        let err = connector.connect(&bad).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    connector.fail_next(1, Error::unavailable("network"));
    assert_eq!(connector.connect(&config).await.err().unwrap().kind(), ErrorKind::Unavailable);
    assert!(connector.connect(&config).await.is_ok());
    assert_eq!(connector.connects(), 6, "failed connects are counted");
    connector.fail_next(usize::MAX, Error::unavailable("network"));
    assert!(connector.connect(&config).await.is_err());
    connector.clear_failures();
    assert!(connector.unregister("contoso").is_some());
    assert_eq!(connector.connect(&config).await.err().unwrap().kind(), ErrorKind::InvalidInput);
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(i64, i64),
    Delete(i64),
    EditOther(i64),
    Read(usize),
    StartOver,
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12i64, any::<i64>()).prop_map(|(id, n)| Op::Upsert(id, n)),
        2 => (0..12i64).prop_map(Op::Delete),
        1 => (0..12i64).prop_map(Op::EditOther),
        4 => (1..5usize).prop_map(Op::Read),
        1 => Just(Op::StartOver),
        1 => Just(Op::Expire),
    ]
}

proptest! {
    /// Any interleaving of source edits and paged reads (incremental or
    /// full, with token expiry) ends, once the feed is drained, with the
    /// reader holding exactly the source's current rows.
    #[test]
    fn paged_reads_reconstruct_the_source(ops in proptest::collection::vec(op(), 0..80), last_page in 1..6usize) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let src = source_with([]);
            let mut replica = Replica::default();
            for op in ops {
                match op {
                    Op::Upsert(id, n) => { src.upsert("item", item(id, n)).unwrap(); }
                    Op::Delete(id) => { src.delete("item", &id.to_string()).unwrap(); }
                    Op::EditOther(id) => { src.upsert("other", item(id, id)).unwrap(); }
                    Op::Read(page_size) => match replica.read(&src, "item", page_size).await {
                        Ok(page) => assert!(page.upserts.len() + page.deletes.len() <= page_size),
                        Err(e) => assert_eq!(e.kind(), ErrorKind::ResyncRequired),
                    },
                    Op::StartOver => replica.token = None,
                    Op::Expire => src.expire_all_tokens(),
                }
            }
            replica.drain(&src, "item", last_page).await;
            replica.assert_matches(&src, "item");
        });
    }
}
