//! Conformance-style checks of a [`MetadataSource`]: the contract of the
//! trait as async check functions, and [`source_checks!`](crate::source_checks)
//! to turn them into one named test each.
//!
//! The checks know nothing of SQLite: they drive the source under test
//! through the trait and change the system of record through a
//! [`SourceFixture`], so an adopter copies this file next to their own
//! adapter, implements the fixture, and runs the same checks.
//!
//! Like `assert!`, a check reports a broken contract by panicking with a
//! message that says what was expected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use sync_core::{
    AttributeType, ChangeToken, ColumnName, EntityName, ErrorKind, MetadataSource, Mutation, MutationOp,
    Result, Row, RowId, Value,
};

/// What the checks need besides the source: a test entity, and a way to
/// change the system of record behind the source's back, as the host's own
/// code would.
///
/// The entity has a string primary key and at least the attributes
/// `title` (string) and `score` (integer); it starts empty.
#[async_trait]
pub trait SourceFixture: Send + Sync {
    /// The source under test.
    fn source(&self) -> Arc<dyn MetadataSource>;
    /// The test entity.
    fn entity(&self) -> EntityName;
    /// Creates or replaces the row `id` directly in the system of record.
    async fn put(&self, id: &str, title: &str, score: i64) -> Result<()>;
    /// Deletes the row `id` directly in the system of record.
    async fn remove(&self, id: &str) -> Result<()>;
    /// Forgets the change history up to now (the retention job of the
    /// system of record): tokens issued before the latest change are no
    /// longer honoured.
    async fn forget_history(&self) -> Result<()>;
}

/// Expands to one `#[test]` per check, each on a fresh fixture.
///
/// The argument is an expression callable with no arguments that returns a
/// future of `Box<dyn SourceFixture>` (a fresh, empty test entity each
/// time). Each test runs on its own current-thread tokio runtime and is
/// named after its check.
#[macro_export]
macro_rules! source_checks {
    ($factory:expr $(,)?) => {
        $crate::source_checks!(@checks $factory;
            check_entities_describe_the_entity,
            check_full_read_pages_every_row_once,
            check_incremental_read_sees_upserts_and_deletes,
            check_changes_during_a_full_read_are_not_lost,
            check_expired_token_is_resync_required,
            check_foreign_token_is_resync_required,
            check_unknown_entity_is_not_found,
            check_write_back_and_conflicts,
            check_write_back_appears_in_the_feed,
        );
    };
    (@checks $factory:expr; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            #[allow(clippy::expect_used)]
            fn $check() {
                let runtime = $crate::__private::tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the source check");
                runtime.block_on(async {
                    let factory = $factory;
                    let fixture: ::std::boxed::Box<dyn $crate::checks::SourceFixture> = factory().await;
                    $crate::checks::$check(fixture.as_ref()).await;
                });
            }
        )+
    };
}

/// The most pages a drain reads before it calls the feed endless.
const MAX_PAGES: usize = 10_000;

/// What a reader of the feed holds: rows by id.
type Model = BTreeMap<RowId, Row>;

/// Reads pages from `token` until `more` is false, applying them to
/// `model`; returns the last token and how many pages it took.
async fn drain(
    fixture: &dyn SourceFixture,
    token: Option<ChangeToken>,
    page_size: usize,
    model: &mut Model,
) -> (Option<ChangeToken>, usize) {
    let source = fixture.source();
    let entity = fixture.entity();
    let mut token = token;
    for pages in 1..=MAX_PAGES {
        let page = source.changes(&entity, token.clone(), page_size).await.expect("changes()");
        assert!(
            page.upserts.len() + page.deletes.len() <= page_size,
            "a page holds at most page_size changes"
        );
        for row in page.upserts {
            model.insert(row.id.clone(), row);
        }
        for id in page.deletes {
            model.remove(&id);
        }
        assert!(page.next_token.is_some(), "every page carries a token to continue with");
        token = page.next_token;
        if !page.more {
            return (token, pages);
        }
    }
    panic!("the feed of '{entity}' did not end within {MAX_PAGES} pages");
}

/// The entity as a fresh full read sees it.
async fn snapshot(fixture: &dyn SourceFixture) -> Model {
    let mut model = Model::new();
    drain(fixture, None, 1000, &mut model).await;
    model
}

fn id(text: &str) -> RowId {
    RowId::new(text).unwrap()
}

fn col(name: &str) -> ColumnName {
    ColumnName::new(name).unwrap()
}

fn title(row: &Row) -> &Value {
    row.get("title").unwrap_or(&Value::Null)
}

fn expect_kind<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: expected {kind:?}, got {e}"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

/// `entities()` describes the test entity: a key and the typed attributes.
pub async fn check_entities_describe_the_entity(fixture: &dyn SourceFixture) {
    let entities = fixture.source().entities().await.expect("entities()");
    let meta = entities.iter().find(|m| m.name == fixture.entity()).expect("the test entity is offered");
    meta.validate().expect("the metadata is valid");
    assert_eq!(meta.attribute("title").map(|a| &a.ty), Some(&AttributeType::String));
    assert_eq!(meta.attribute("score").map(|a| &a.ty), Some(&AttributeType::Integer));
    let names: BTreeSet<&str> = meta.attributes.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names.len(), meta.attributes.len(), "attribute names are unique");
}

/// A full read (`None`) pages through every row exactly once, with no
/// deletes, and its last token reads nothing more.
pub async fn check_full_read_pages_every_row_once(fixture: &dyn SourceFixture) {
    for n in 1..=7 {
        fixture.put(&format!("r{n:02}"), &format!("row {n}"), n).await.unwrap();
    }
    fixture.remove("r07").await.unwrap();
    let source = fixture.source();
    let entity = fixture.entity();
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = source.changes(&entity, token, 3).await.expect("changes()");
        pages += 1;
        assert!(page.deletes.is_empty(), "a full read has no deletes");
        assert!(page.upserts.len() <= 3);
        seen.extend(page.upserts.iter().map(|r| r.id.clone()));
        token = page.next_token;
        if !page.more {
            break;
        }
        assert!(pages < 10, "the full read did not end");
    }
    assert_eq!(pages, 2, "six rows in pages of three");
    let unique: BTreeSet<&RowId> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice: {seen:?}");
    let expected: BTreeSet<RowId> = (1..=6).map(|n| id(&format!("r{n:02}"))).collect();
    assert_eq!(unique.into_iter().cloned().collect::<BTreeSet<_>>(), expected);
    let after = source.changes(&entity, token, 3).await.expect("changes() after the full read");
    assert!(after.upserts.is_empty() && after.deletes.is_empty() && !after.more, "{after:?}");
}

/// With a token, the feed holds exactly what changed since: updated and new
/// rows at their latest values, and deleted ids.
pub async fn check_incremental_read_sees_upserts_and_deletes(fixture: &dyn SourceFixture) {
    for n in ["a", "b", "c"] {
        fixture.put(n, n, 1).await.unwrap();
    }
    let mut model = Model::new();
    let (token, _) = drain(fixture, None, 10, &mut model).await;
    fixture.put("b", "b changed", 2).await.unwrap();
    fixture.put("b", "b changed twice", 3).await.unwrap();
    fixture.remove("c").await.unwrap();
    fixture.put("d", "d", 4).await.unwrap();

    let page = fixture.source().changes(&fixture.entity(), token, 100).await.expect("changes()");
    let upserts: BTreeMap<&str, &Value> = page.upserts.iter().map(|r| (r.id.as_str(), title(r))).collect();
    assert_eq!(
        upserts,
        BTreeMap::from([("b", &Value::from("b changed twice")), ("d", &Value::from("d"))]),
        "a row is in the feed once, at its latest state"
    );
    assert_eq!(page.deletes, vec![id("c")]);
    assert!(!page.more);
    let again = fixture.source().changes(&fixture.entity(), page.next_token, 100).await.unwrap();
    assert!(again.upserts.is_empty() && again.deletes.is_empty() && !again.more, "{again:?}");
}

/// Writes made while a full read is under way are neither lost nor left
/// stale: draining the feed ends with exactly the source's rows.
pub async fn check_changes_during_a_full_read_are_not_lost(fixture: &dyn SourceFixture) {
    for n in 1..=6 {
        fixture.put(&format!("r{n}"), "original", n).await.unwrap();
    }
    let source = fixture.source();
    let mut model = Model::new();
    let first = source.changes(&fixture.entity(), None, 2).await.expect("first page");
    assert!(first.more);
    let delivered: Vec<String> = first.upserts.iter().map(|r| r.id.as_str().to_owned()).collect();
    for row in first.upserts {
        model.insert(row.id.clone(), row);
    }
    let pending: Vec<String> = (1..=6).map(|n| format!("r{n}")).filter(|r| !delivered.contains(r)).collect();
    // Change a delivered row, a pending one, delete another pending one, add one.
    fixture.put(&delivered[0], "changed after delivery", 10).await.unwrap();
    fixture.put(&pending[0], "changed before delivery", 11).await.unwrap();
    fixture.remove(&pending[1]).await.unwrap();
    fixture.put("r7", "new during the read", 12).await.unwrap();
    drain(fixture, first.next_token, 2, &mut model).await;
    assert_eq!(model, snapshot(fixture).await, "the reader ends with the source's rows");
    assert_eq!(title(&model[&id(&delivered[0])]), &Value::from("changed after delivery"));
}

/// A token older than the retained history is `ResyncRequired`; a full
/// read still works and reflects the forgotten delete.
pub async fn check_expired_token_is_resync_required(fixture: &dyn SourceFixture) {
    fixture.put("a", "a", 1).await.unwrap();
    fixture.put("b", "b", 2).await.unwrap();
    let mut model = Model::new();
    let (token, _) = drain(fixture, None, 10, &mut model).await;
    fixture.remove("a").await.unwrap();
    fixture.forget_history().await.unwrap();
    expect_kind(
        fixture.source().changes(&fixture.entity(), token, 10).await,
        ErrorKind::ResyncRequired,
        "changes() with a token older than the retained deletes",
    );
    let fresh = snapshot(fixture).await;
    assert_eq!(fresh.keys().cloned().collect::<Vec<_>>(), vec![id("b")]);
}

/// A token the source never issued is `ResyncRequired`, not a crash or a
/// silent full read.
pub async fn check_foreign_token_is_resync_required(fixture: &dyn SourceFixture) {
    fixture.put("a", "a", 1).await.unwrap();
    for garbage in ["", "garbage", "hostdb1:not-this-database:1", "mem1.eyJ2IjoxfQ"] {
        expect_kind(
            fixture.source().changes(&fixture.entity(), Some(ChangeToken(garbage.into())), 10).await,
            ErrorKind::ResyncRequired,
            &format!("changes() with the token {garbage:?}"),
        );
    }
}

/// An entity the source does not offer is `NotFound` for reads and writes.
pub async fn check_unknown_entity_is_not_found(fixture: &dyn SourceFixture) {
    let unknown = EntityName::new("no_such_entity").unwrap();
    let source = fixture.source();
    expect_kind(
        source.changes(&unknown, None, 10).await,
        ErrorKind::NotFound,
        "changes() of an unknown entity",
    );
    let mutation = Mutation { op: MutationOp::Delete, row_id: id("x"), values: BTreeMap::new() };
    expect_kind(source.apply(&unknown, &mutation).await, ErrorKind::NotFound, "apply() to an unknown entity");
}

/// Write-back: insert, update (only the given columns change), delete, and
/// a `Conflict` for each change the row's state refuses.
pub async fn check_write_back_and_conflicts(fixture: &dyn SourceFixture) {
    let source = fixture.source();
    let entity = fixture.entity();
    let mutation = |op, values: Vec<(&str, Value)>| Mutation {
        op,
        row_id: id("x"),
        values: values.into_iter().map(|(c, v)| (col(c), v)).collect(),
    };
    let inserted = source
        .apply(&entity, &mutation(MutationOp::Insert, vec![("title", "new".into()), ("score", 1i64.into())]))
        .await
        .expect("insert")
        .expect("an insert returns the row");
    assert_eq!(inserted.id, id("x"));
    assert_eq!((title(&inserted), inserted.get("score")), (&Value::from("new"), Some(&Value::from(1i64))));
    expect_kind(
        source.apply(&entity, &mutation(MutationOp::Insert, vec![("title", "again".into())])).await,
        ErrorKind::Conflict,
        "insert of an existing row",
    );
    let updated = source
        .apply(&entity, &mutation(MutationOp::Update, vec![("score", 5i64.into())]))
        .await
        .expect("update")
        .expect("an update returns the row");
    assert_eq!(updated.get("score"), Some(&Value::from(5i64)));
    assert_eq!(title(&updated), &Value::from("new"), "columns not given keep their values");
    expect_kind(
        source.apply(&entity, &mutation(MutationOp::Update, vec![("nonexistent", 1i64.into())])).await,
        ErrorKind::InvalidInput,
        "update of an unknown column",
    );
    assert_eq!(source.apply(&entity, &mutation(MutationOp::Delete, vec![])).await.expect("delete"), None);
    expect_kind(
        source.apply(&entity, &mutation(MutationOp::Delete, vec![])).await,
        ErrorKind::Conflict,
        "delete of a deleted row",
    );
    expect_kind(
        source.apply(&entity, &mutation(MutationOp::Update, vec![("score", 6i64.into())])).await,
        ErrorKind::Conflict,
        "update of a deleted row",
    );
    assert!(snapshot(fixture).await.is_empty());
}

/// A write-back is a change like any other: it reaches the feed.
pub async fn check_write_back_appears_in_the_feed(fixture: &dyn SourceFixture) {
    fixture.put("keep", "keep", 1).await.unwrap();
    let mut model = Model::new();
    let (token, _) = drain(fixture, None, 10, &mut model).await;
    let source = fixture.source();
    let entity = fixture.entity();
    let insert = Mutation {
        op: MutationOp::Insert,
        row_id: id("y"),
        values: [(col("title"), Value::from("from a device"))].into(),
    };
    source.apply(&entity, &insert).await.expect("insert");
    let (token, _) = drain(fixture, token, 10, &mut model).await;
    assert_eq!(model.get(&id("y")).map(title), Some(&Value::from("from a device")));
    let delete = Mutation { op: MutationOp::Delete, row_id: id("keep"), values: BTreeMap::new() };
    source.apply(&entity, &delete).await.expect("delete");
    drain(fixture, token, 10, &mut model).await;
    assert_eq!(model.keys().cloned().collect::<Vec<_>>(), vec![id("y")]);
}
