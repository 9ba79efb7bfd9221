//! Behaviour of the SQLite staging store beyond the shared conformance
//! suite: the on-disk layout, schema evolution on real tables, durability
//! across reopen, the connection cache, and SQLite-specific refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use std::collections::BTreeMap;
use storage_sqlite::{SqliteStagingStore, StoreOptions};
use sync_core::staging::{MutationRecord, PullPlan, SchemaChange};

use sync_core::{
    Attribute, AttributeType, ChangePage, ChangeToken, EntityMetadata, ErrorKind, MutationId, OrgStaging,
    Partition, PartitionKey, Principal, Profile, ProfileItem, ProfileName, Row, RowId, Seq, StagingStore,
    Value,
};

fn page(rows: Vec<Row>, deletes: Vec<RowId>, token: &str) -> ChangePage {
    ChangePage { upserts: rows, deletes, next_token: Some(ChangeToken(token.into())), more: false }
}

async fn setup(dir: &std::path::Path) -> (SqliteStagingStore, Arc<dyn OrgStaging>) {
    let store = open_store(dir, StoreOptions::default()).await;
    store.create_org(&org_config("contoso")).await.unwrap();
    let staging = store.org(&org_id("contoso")).await.unwrap();
    assert_eq!(staging.apply_schema(&account_meta()).await.unwrap(), SchemaChange::Created);
    (store, staging)
}

fn key_of(profile: &Profile, item: &str, params: &[(&str, String)]) -> PartitionKey {
    Partition {
        profile: profile.name.clone(),
        item: sync_core::ItemId::new(item).unwrap(),
        entity: entity("account"),
        params: params.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
    }
    .key()
}

async fn pull_all(
    staging: &dyn OrgStaging,
    keys: &[PartitionKey],
    max_rows: usize,
) -> sync_core::staging::PullPage {
    let plan = PullPlan {
        partitions: keys.iter().map(|k| (k.clone(), Seq::ZERO)).collect(),
        max_rows,
        max_bytes: 1 << 30,
    };
    staging.pull(&plan).await.unwrap()
}

#[tokio::test]
async fn control_plane_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), StoreOptions::default()).await;
    store.ping().await.unwrap();
    store.create_org(&org_config("b_org")).await.unwrap();
    store.create_org(&org_config("a_org")).await.unwrap();
    let ids: Vec<String> = store.orgs().await.unwrap().into_iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, ["a_org", "b_org"]);
    assert!(dir.path().join("control.sqlite").exists());
    assert!(dir.path().join("orgs").join("a_org.sqlite").exists());
    assert_eq!(store.org_config(&org_id("zzz")).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(store.org(&org_id("zzz")).await.err().unwrap().kind(), ErrorKind::NotFound);

    store.set_org_location(&org_id("elsewhere"), Some("https://eu.example.invalid".into())).await.unwrap();
    assert_eq!(
        store.org_location(&org_id("elsewhere")).await.unwrap().as_deref(),
        Some("https://eu.example.invalid")
    );
    assert_eq!(
        store.set_org_location(&org_id("elsewhere"), Some("  ".into())).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    store.set_org_location(&org_id("elsewhere"), None).await.unwrap();
    assert_eq!(store.org_location(&org_id("elsewhere")).await.unwrap(), None);

    // A second process (here: a second store) cannot open the directory.
    let err = SqliteStagingStore::open(dir.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn tables_are_typed_and_readable_with_plain_sql() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    let rows: Vec<Row> = (0..5).map(|i| account_row(i, 0, 3)).collect();
    staging.apply_changes(&entity("account"), page(rows.clone(), vec![], "t1")).await.unwrap();

    let conn = rusqlite::Connection::open(store.org_path(&org_id("contoso"))).unwrap();
    let types: Vec<(String, String)> = conn
        .prepare("SELECT name, type FROM pragma_table_info('account') ORDER BY cid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expect = [
        ("_sync_rid", "INTEGER"),
        ("accountid", "TEXT"),
        ("name", "TEXT"),
        ("accountnumber", "TEXT"),
        ("revenue", "TEXT"),
        ("numberofemployees", "INTEGER"),
        ("statecode", "INTEGER"),
        ("ownerid", "TEXT"),
        ("modifiedon", "TEXT"),
        ("creditonhold", "INTEGER"),
        ("_sync_version", "INTEGER"),
        ("_sync_parts", "TEXT"),
    ];
    let got: Vec<(&str, &str)> = types.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(got, expect);
    let (name, employees, revenue): (String, i64, String) = conn
        .query_row(
            "SELECT name, numberofemployees, revenue FROM account WHERE accountid = ?1",
            [rows[1].id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(Value::String(name), rows[1].values[&col("name")]);
    assert_eq!(Value::Integer(employees), rows[1].values[&col("numberofemployees")]);
    assert_eq!(
        Value::from(revenue).coerce(&AttributeType::Decimal).unwrap(),
        rows[1].values[&col("revenue")].clone().coerce(&AttributeType::Decimal).unwrap()
    );
    let token: String =
        conn.query_row("SELECT token FROM _sync_tokens WHERE entity = 'account'", [], |r| r.get(0)).unwrap();
    assert_eq!(token, "t1");
}

#[tokio::test]
async fn schema_evolution_keeps_converting_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), StoreOptions::default()).await;
    store.create_org(&org_config("contoso")).await.unwrap();
    let staging = store.org(&org_id("contoso")).await.unwrap();
    let e = entity("thing");
    let v1 = EntityMetadata::new(
        e.clone(),
        col("id"),
        vec![
            Attribute::new(col("id"), AttributeType::Integer),
            Attribute::new(col("code"), AttributeType::String),
            Attribute::new(col("qty"), AttributeType::Integer),
            Attribute::new(col("gone"), AttributeType::String),
        ],
    )
    .unwrap();
    assert_eq!(staging.apply_schema(&v1).await.unwrap(), SchemaChange::Created);
    assert_eq!(staging.apply_schema(&v1).await.unwrap(), SchemaChange::Unchanged);
    assert_eq!(staging.schema_version().await.unwrap(), 1);
    let everything = Profile {
        name: ProfileName::new("all").unwrap(),
        roles: ["r".to_owned()].into(),
        items: vec![ProfileItem::new(e.clone(), "")],
    };
    staging.put_profile(&everything).await.unwrap();
    let rows = vec![
        Row::new(
            RowId::new("1").unwrap(),
            [(col("code"), Value::from("42")), (col("qty"), Value::Integer(5))],
        ),
        Row::new(
            RowId::new("2").unwrap(),
            [(col("code"), Value::from("x1")), (col("qty"), Value::Integer(7))],
        ),
        Row::new(RowId::new("10").unwrap(), [(col("code"), Value::Null), (col("gone"), Value::from("bye"))]),
    ];
    staging.apply_changes(&e, page(rows, vec![], "t")).await.unwrap();
    let before = staging.row(&e, &RowId::new("2").unwrap()).await.unwrap().unwrap().version;
    // Pulls read each schema as it stands (the store keeps tables between
    // pulls: a pull after a change must not read with the old one).
    let all = Partition {
        profile: everything.name.clone(),
        item: everything.items[0].item_id(),
        entity: e.clone(),
        params: Default::default(),
    }
    .key();
    let pulled = async |id: &str| {
        let page = pull_all(staging.as_ref(), std::slice::from_ref(&all), 100).await;
        let row = page.changes.into_iter().find(|c| c.row_id.as_str() == id).and_then(|c| c.row).unwrap();
        let columns: Vec<&str> = row.columns().iter().map(|c| c.as_str()).collect();
        (columns.join(","), row.get("qty").cloned())
    };
    assert_eq!(pulled("2").await, ("id,code,qty,gone".to_owned(), Some(Value::Integer(7))));

    // Add a column and drop one: ALTER TABLE, values kept, versions kept.
    let mut v2 = v1.clone();
    v2.attributes.retain(|a| a.name.as_str() != "gone");
    v2.attributes.push(Attribute::new(col("note"), AttributeType::Json));
    assert_eq!(staging.apply_schema(&v2).await.unwrap(), SchemaChange::Altered);
    let r2 = staging.row(&e, &RowId::new("2").unwrap()).await.unwrap().unwrap();
    assert_eq!(r2.version, before);
    assert_eq!(r2.row.values[&col("note")], Value::Null);
    assert!(!r2.row.values.contains_key(&col("gone")));
    assert_eq!(pulled("2").await, ("id,code,qty,note".to_owned(), Some(Value::Integer(7))));

    // Retype qty integer → decimal (converts) and code string → integer
    // (text does not coerce to integers: nulls). The table is rebuilt.
    let mut v3 = v2.clone();
    v3.attributes[1].ty = AttributeType::Integer;
    v3.attributes[2].ty = AttributeType::Decimal;
    assert_eq!(staging.apply_schema(&v3).await.unwrap(), SchemaChange::Altered);
    assert_eq!(staging.schema_version().await.unwrap(), 3);
    assert_eq!(staging.schemas().await.unwrap(), vec![v3.clone()]);
    let r1 = staging.row(&e, &RowId::new("1").unwrap()).await.unwrap().unwrap();
    let r2 = staging.row(&e, &RowId::new("2").unwrap()).await.unwrap().unwrap();
    let r10 = staging.row(&e, &RowId::new("10").unwrap()).await.unwrap().unwrap();
    assert_eq!(r1.row.values[&col("qty")], Value::Decimal(5.into()));
    assert_eq!(r1.row.values[&col("code")], Value::Null);
    assert_eq!(r2.row.values[&col("qty")], Value::Decimal(7.into()));
    assert_eq!(pulled("2").await, ("id,code,qty,note".to_owned(), Some(Value::Decimal(7.into()))));
    assert!(r1.version > before && r2.version > before, "rows whose values changed get a new version");
    assert_eq!(
        (r10.row.values[&col("code")].clone(), r10.row.values[&col("qty")].clone()),
        (Value::Null, Value::Null)
    );
    assert!(r10.version < r1.version, "a row whose values did not change keeps its version");
    let conn = rusqlite::Connection::open(store.org_path(&org_id("contoso"))).unwrap();
    let qty: String = conn.query_row("SELECT qty FROM thing WHERE id = 2", [], |r| r.get(0)).unwrap();
    assert_eq!(qty, "7", "decimals are stored as exact text");
    // Integer keys list in text order, like RowId.
    let ids: Vec<String> =
        staging.row_ids(&e, None, 10).await.unwrap().into_iter().map(String::from).collect();
    assert_eq!(ids, ["1", "10", "2"]);
    let ids: Vec<String> = staging
        .row_ids(&e, Some(RowId::new("1").unwrap()), 1)
        .await
        .unwrap()
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(ids, ["10"]);
    assert_membership_recomputes(&store, &org_id("contoso"), &v3).await;

    // A key change is refused while rows are staged, and changes nothing.
    let mut v4 = v3.clone();
    v4.primary_key = col("code");
    assert_eq!(staging.apply_schema(&v4).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(staging.schema_version().await.unwrap(), 3);
    // A profile that would no longer compile blocks the change.
    let qty = Profile {
        name: ProfileName::new("qty").unwrap(),
        roles: ["r".to_owned()].into(),
        items: vec![ProfileItem::new(e.clone(), "qty gt 3")],
    };
    staging.put_profile(&qty).await.unwrap();
    let mut v5 = v3.clone();
    v5.attributes.retain(|a| a.name.as_str() != "qty");
    assert_eq!(staging.apply_schema(&v5).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(staging.schemas().await.unwrap(), vec![v3]);
}

#[tokio::test]
async fn reserved_and_clashing_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, staging) = setup(dir.path()).await;
    let attrs = || vec![Attribute::new(col("id"), AttributeType::String)];
    for name in ["_sync_meta", "_SYNC_x", "sqlite_master", "Account"] {
        let meta = EntityMetadata::new(entity(name), col("id"), attrs()).unwrap();
        let err = staging.apply_schema(&meta).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}: {err}");
    }
    let meta = EntityMetadata::new(
        entity("other"),
        col("id"),
        vec![
            Attribute::new(col("id"), AttributeType::String),
            Attribute::new(col("_Sync_Version"), AttributeType::Integer),
        ],
    )
    .unwrap();
    assert_eq!(staging.apply_schema(&meta).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    // Keywords and odd but valid names are quoted.
    let meta = EntityMetadata::new(
        entity("select"),
        col("from"),
        vec![
            Attribute::new(col("from"), AttributeType::String),
            Attribute::new(col("where"), AttributeType::Integer),
        ],
    )
    .unwrap();
    staging.apply_schema(&meta).await.unwrap();
    let row = Row::new(RowId::new("a'b\"c; drop table x").unwrap(), [(col("where"), Value::Integer(1))]);
    staging.apply_changes(&entity("select"), page(vec![row.clone()], vec![], "t")).await.unwrap();
    assert_eq!(
        staging.row(&entity("select"), &row.id).await.unwrap().unwrap().row.values[&col("where")],
        Value::Integer(1)
    );
}

#[tokio::test]
async fn ingestion_membership_and_pull() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    let profile = sales_profile();
    staging.put_profile(&profile).await.unwrap();
    let account = entity("account");
    let rows: Vec<Row> = (0..200).map(|i| account_row(i, 0, 4)).collect();
    let out = staging.apply_changes(&account, page(rows.clone(), vec![], "t1")).await.unwrap();
    assert_eq!((out.upserted, out.deleted, out.unchanged), (200, 0, 0));
    assert_eq!(out.head, Seq(200));
    assert_eq!(*staging.watch_head().borrow(), Seq(200));
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;

    // Identical upserts: no new seq.
    let out = staging.apply_changes(&account, page(rows[..10].to_vec(), vec![], "t2")).await.unwrap();
    assert_eq!((out.upserted, out.unchanged, out.head), (0, 10, Seq(200)));
    assert_eq!(staging.source_token(&account).await.unwrap(), Some(ChangeToken("t2".into())));

    // Moves across owners and states, and deletes.
    let moved: Vec<Row> = (0..50).map(|i| account_row(i, 1, 4)).collect();
    let deleted: Vec<RowId> = (150..160).map(|i| account_row(i, 0, 4).id).collect();
    let unknown = RowId::new(row_uuid(9999).to_string()).unwrap();
    let out = staging
        .apply_changes(&account, page(moved, [deleted.clone(), vec![unknown]].concat(), "t3"))
        .await
        .unwrap();
    assert_eq!((out.upserted, out.deleted), (50, 10));
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;

    // One user's view: the active partition plus their own.
    let user = owner(1, 4).to_string();
    let principal = Principal::new(user.clone(), org_id("contoso")).with_role("sales");
    let parts = sync_core::filter::principal_partitions(
        &principal,
        std::slice::from_ref(&profile),
        &[account_meta()],
    )
    .unwrap();
    let keys: Vec<PartitionKey> = parts.iter().map(Partition::key).collect();
    assert_eq!(
        keys,
        vec![key_of(&profile, "active", &[]), key_of(&profile, "mine", &[("user.id", user.clone())])]
    );
    let full = pull_all(staging.as_ref(), &keys, 100_000).await;
    assert!(!full.more);
    assert_eq!(full.head, Seq(260));
    let checksums = full.checksums.clone().unwrap();
    // Paged pulls reach the same state and checksums.
    let mut positions: Vec<(PartitionKey, Seq)> = keys.iter().map(|k| (k.clone(), Seq::ZERO)).collect();
    let mut held: std::collections::BTreeMap<PartitionKey, BTreeSet<(RowId, Seq)>> = Default::default();
    let mut pages = 0;
    loop {
        let p = staging
            .pull(&PullPlan { partitions: positions.clone(), max_rows: 17, max_bytes: 4000 })
            .await
            .unwrap();
        assert!(p.changes.len() <= 17 && !p.changes.is_empty() || !p.more);
        pages += 1;
        for c in &p.changes {
            let set = held.entry(c.partition.clone()).or_default();
            set.retain(|(id, _)| id != &c.row_id);
            if let Some(r) = &c.row {
                assert_eq!(r.get("accountid").map(Value::canonical_text).as_deref(), Some(c.row_id.as_str()));
                set.insert((c.row_id.clone(), r.version()));
            }
        }
        positions = p.positions.clone();
        if !p.more {
            assert_eq!(p.checksums.unwrap(), checksums);
            break;
        }
        assert!(p.checksums.is_none());
    }
    assert!(pages > 5, "the byte and row budgets paged the pull ({pages} pages)");
    let rows = all_rows(staging.as_ref(), &account).await;
    let expected = recompute(&account_meta(), std::slice::from_ref(&profile), &rows);
    for k in &keys {
        let got: BTreeSet<(String, u64)> = held
            .get(k)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, v)| (id.to_string(), v.0))
            .collect();
        assert_eq!(got, expected.get(k.as_str()).map(|e| e.0.clone()).unwrap_or_default(), "{k}");
        assert_eq!(checksums[k], expected.get(k.as_str()).map(|e| e.1).unwrap_or_default());
    }
    // Up to date: nothing more, positions at the head.
    let p =
        staging.pull(&PullPlan { partitions: positions.clone(), max_rows: 10, max_bytes: 10 }).await.unwrap();
    assert!(p.changes.is_empty() && !p.more);
    assert!(p.positions.iter().all(|(_, s)| *s == Seq(260)));

    // Bad positions.
    let beyond = vec![(keys[0].clone(), Seq(261))];
    let err = staging.pull(&PullPlan { partitions: beyond, max_rows: 10, max_bytes: 100 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResyncRequired);
    let twice = vec![(keys[0].clone(), Seq(0)), (keys[0].clone(), Seq(0))];
    let err = staging.pull(&PullPlan { partitions: twice, max_rows: 10, max_bytes: 100 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // Tombstones: purge raises the floor and drops the removes at or below
    // it; an old position is read as asked (the service decides whether the
    // client could have needed what was purged).
    let purged = staging.purge_tombstones(Seq(255)).await.unwrap();
    assert!(purged > 0);
    assert_eq!(staging.tombstone_floor().await.unwrap(), Seq(255));
    let old = vec![(keys[0].clone(), Seq(100))];
    let page =
        staging.pull(&PullPlan { partitions: old, max_rows: 1000, max_bytes: usize::MAX }).await.unwrap();
    assert!(
        page.changes.iter().all(|c| c.row.is_some() || c.seq > Seq(255)),
        "no purged remove is delivered"
    );
    staging.purge_tombstones(Seq(10_000)).await.unwrap();
    assert_eq!(staging.tombstone_floor().await.unwrap(), Seq(260), "the floor never passes the head");
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;

    // Status.
    let status = staging.status().await.unwrap();
    assert_eq!(status.head, Seq(260));
    assert_eq!(status.entities.len(), 1);
    assert_eq!(status.entities[0].rows, 190);
    assert_eq!(status.entities[0].token, Some(ChangeToken("t3".into())));
}

#[tokio::test]
async fn invalid_pages_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    staging.put_profile(&sales_profile()).await.unwrap();
    let account = entity("account");
    staging
        .apply_changes(&account, page((0..5).map(|i| account_row(i, 0, 2)).collect(), vec![], "t1"))
        .await
        .unwrap();
    let mut bad = account_row(7, 0, 2);
    bad.values.insert(col("numberofemployees"), Value::from("many"));
    let rows = vec![account_row(5, 0, 2), bad];
    let err = staging.apply_changes(&account, page(rows, vec![], "t2")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err =
        staging.apply_changes(&account, page(vec![], vec![RowId::new("not-a-uuid").unwrap()], "t2")).await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(staging.head().await.unwrap(), Seq(5));
    assert_eq!(staging.source_token(&account).await.unwrap(), Some(ChangeToken("t1".into())));
    assert!(staging.row(&account, &account_row(5, 0, 2).id).await.unwrap().is_none());
    let err = staging.apply_changes(&entity("contact"), page(vec![], vec![], "t")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(staging.source_token(&entity("contact")).await.unwrap(), None);
    // A profile that does not compile changes nothing either.
    let mut broken = sales_profile();
    broken.items[0].filter = "nosuchcolumn eq 1".into();
    assert_eq!(staging.put_profile(&broken).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(staging.profiles().await.unwrap(), vec![sales_profile()]);
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;
}

/// Large pages are checked and planned on a thread beside the writer;
/// what they stage must not differ from the same rows in small pages, and
/// a bad row anywhere in one must still change nothing.
#[tokio::test]
async fn a_page_of_changes_is_staged_in_row_order_and_its_last_upsert_of_a_row_wins() {
    let account = entity("account");
    let staged_first: Vec<Row> = (0..2_000).map(|i| account_row(i, 0, 7)).collect();
    // Changes in scattered order, new rows among them, and row 7 twice
    // (spelled in capitals first); then row 11 deleted.
    let changed: BTreeSet<u64> = (0..1_500).map(|i| (i * 613) % 2_000).collect();
    let mut changes: Vec<Row> = changed.iter().map(|&i| account_row(i, 1, 7)).collect();
    shuffle(&mut changes, 0x2545_f491_4f6c_dd1d);
    changes.extend((5_000..5_100).map(|i| account_row(i, 0, 7)));
    let mut shouted = account_row(7, 2, 7);
    shouted.id = RowId::new(row_uuid(7).to_string().to_uppercase()).unwrap();
    changes.insert(40, shouted);
    changes.push(account_row(7, 3, 7));
    let deleted = vec![account_row(11, 0, 7).id];
    let mut results = Vec::new();
    for per_page in [changes.len(), 1] {
        let dir = tempfile::tempdir().unwrap();
        let (store, staging) = setup(dir.path()).await;
        staging.put_profile(&sales_profile()).await.unwrap();
        staging.apply_changes(&account, page(staged_first.clone(), vec![], "t0")).await.unwrap();
        for chunk in changes.chunks(per_page) {
            staging.apply_changes(&account, page(chunk.to_vec(), vec![], "t1")).await.unwrap();
        }
        staging.apply_changes(&account, page(vec![], deleted.clone(), "t2")).await.unwrap();
        assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;
        let rows = all_rows(staging.as_ref(), &account).await;
        if per_page > 1 {
            // One page: the changed rows took their versions in the order
            // they were first staged (0, 1, 2, ...), not in page order.
            let versions: Vec<Seq> = (0..2_000u64)
                .filter(|&i| i != 11)
                .filter_map(|i| rows.get(&account_row(i, 0, 7).id).map(|r| r.1))
                .filter(|&v| v > Seq(2_000))
                .collect();
            let rewritten: BTreeSet<u64> = changed.iter().copied().chain([7]).filter(|&i| i != 11).collect();
            assert_eq!(versions.len(), rewritten.len());
            assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions follow row order");
        }
        let keys: Vec<PartitionKey> = (0..7)
            .map(|o| key_of(&sales_profile(), "mine", &[("user.id", owner(o, 7).to_string())]))
            .chain([key_of(&sales_profile(), "active", &[])])
            .collect();
        let pulled: std::collections::BTreeSet<String> = pull_all(staging.as_ref(), &keys, 100_000)
            .await
            .changes
            .iter()
            .map(|c| {
                format!("{:?} {} {:?}", c.partition, c.row_id, c.row.as_ref().map(|r| r.values().to_vec()))
            })
            .collect();
        let values: BTreeMap<RowId, Row> = rows.into_iter().map(|(id, (row, _))| (id, row)).collect();
        results.push((values, pulled));
    }
    let (one_page, row_by_row) = (&results[0], &results[1]);
    assert_eq!(one_page.0.len(), 2_099);
    assert_eq!(
        one_page.0[&account_row(7, 0, 7).id],
        account_meta().check_row(account_row(7, 3, 7)).unwrap(),
        "the last upsert of row 7 wins"
    );
    assert_eq!(one_page, row_by_row);
}

#[tokio::test]
async fn large_pages_stage_what_small_pages_do() {
    let account = entity("account");
    // New rows, then rows of this page again: changed (an update inside
    // the page) and unchanged (no new version).
    let mut rows: Vec<Row> = (0..5_000).map(|i| account_row(i, 0, 7)).collect();
    rows.extend((0..1_000).map(|i| account_row(i * 3, 1, 7)));
    rows.extend((0..500).map(|i| account_row(3_000 + i * 3, 0, 7)));
    let mut staged = Vec::new();
    for page_rows in [rows.len(), 100] {
        let dir = tempfile::tempdir().unwrap();
        let (store, staging) = setup(dir.path()).await;
        staging.put_profile(&sales_profile()).await.unwrap();
        for (n, chunk) in rows.chunks(page_rows).enumerate() {
            staging.apply_changes(&account, page(chunk.to_vec(), vec![], &format!("t{n}"))).await.unwrap();
        }
        assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;
        let keys: Vec<PartitionKey> =
            [("active", vec![]), ("mine", vec![("user.id", owner(3, 7).to_string())])]
                .into_iter()
                .map(|(item, params)| key_of(&sales_profile(), item, &params))
                .collect();
        let pulled = pull_all(staging.as_ref(), &keys, 100_000).await;
        staged.push((
            staging.head().await.unwrap(),
            all_rows(staging.as_ref(), &account).await,
            pulled.changes,
        ));

        // A bad row, early or last, in a large page: nothing changes.
        for at in [300, 4_999] {
            let head = staging.head().await.unwrap();
            let token = staging.source_token(&account).await.unwrap();
            let mut bad: Vec<Row> = (10_000..15_000).map(|i| account_row(i, 0, 7)).collect();
            bad[at].values.insert(col("revenue"), Value::from("plenty"));
            let err = staging.apply_changes(&account, page(bad, vec![], "bad")).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.to_string().contains(&row_uuid(10_000 + at as u64).to_string()), "{err}");
            assert_eq!(staging.head().await.unwrap(), head);
            assert_eq!(staging.source_token(&account).await.unwrap(), token);
            assert!(staging.row(&account, &account_row(10_000, 0, 7).id).await.unwrap().is_none());
        }
        assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;
    }
    let (large, small) = (&staged[0], &staged[1]);
    assert_eq!(large.0, Seq(6_000), "500 unchanged rows take no seq");
    assert_eq!(large.1.len(), 5_000);
    assert_eq!(large.1[&account_row(3, 0, 7).id].0, account_meta().check_row(account_row(3, 1, 7)).unwrap());
    assert_eq!(large, small);
}

#[tokio::test]
async fn profile_changes_recompute_membership() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    let account = entity("account");
    staging
        .apply_changes(&account, page((0..100).map(|i| account_row(i, 0, 3)).collect(), vec![], "t"))
        .await
        .unwrap();
    let head = staging.head().await.unwrap();
    let mut profile = sales_profile();
    staging.put_profile(&profile).await.unwrap();
    assert!(staging.head().await.unwrap() > head);
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;
    // Saving the same profile again changes nothing.
    let head = staging.head().await.unwrap();
    staging.put_profile(&profile).await.unwrap();
    assert_eq!(staging.head().await.unwrap(), head);
    // A narrower filter moves rows out (removes with new seqs).
    profile.items[0].filter = "statecode eq 0 and creditonhold eq false".into();
    staging.put_profile(&profile).await.unwrap();
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;
    let key = key_of(&profile, "active", &[]);
    let p = staging
        .pull(&PullPlan { partitions: vec![(key.clone(), head)], max_rows: 1000, max_bytes: 1 << 20 })
        .await
        .unwrap();
    assert!(
        !p.changes.is_empty() && p.changes.iter().all(|c| c.row.is_none()),
        "only removes after the change"
    );
    assert_eq!(staging.profile(&profile.name).await.unwrap(), profile);
    // Deleting the profile empties its partitions.
    staging.delete_profile(&profile.name).await.unwrap();
    assert_eq!(staging.profile(&profile.name).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(staging.delete_profile(&profile.name).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;
    let p = pull_all(staging.as_ref(), std::slice::from_ref(&key), 1000).await;
    assert!(p.changes.iter().all(|c| c.row.is_none()));
    assert_eq!(p.checksums.unwrap()[&key], sync_core::Checksum::default());
}

#[tokio::test]
async fn mutation_journal_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, staging) = setup(dir.path()).await;
    let id = MutationId::new_v4();
    assert_eq!(staging.mutation_result(&id).await.unwrap(), None);
    let record = MutationRecord {
        fingerprint: "abc".into(),
        outcome: sync_core::protocol::MutationOutcome::Rejected { reason: "no".into() },
        checkpoint: Seq(3),
    };
    staging.record_mutation(&id, &record).await.unwrap();
    staging.record_mutation(&id, &record).await.unwrap();
    let other = MutationRecord { fingerprint: "def".into(), ..record.clone() };
    assert_eq!(staging.record_mutation(&id, &other).await.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(staging.mutation_result(&id).await.unwrap(), Some(record));

    let at = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let run = |error: Option<&str>| sync_core::SyncRunReport {
        entity: entity("account"),
        at,
        rows_applied: 7,
        error: error.map(str::to_owned),
    };
    staging.record_run(&run(None)).await.unwrap();
    staging.record_run(&run(Some("source down"))).await.unwrap();
    let s = staging.status().await.unwrap();
    let e = &s.entities[0];
    assert_eq!(
        (e.last_run, e.last_success, e.last_error.as_deref(), e.last_rows),
        (Some(at), Some(at), Some("source down"), 7)
    );
    assert_eq!(e.schema_hash, account_meta().schema_hash());
}

#[tokio::test]
async fn data_survives_reopen_and_drop_removes_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_store, staging) = setup(dir.path()).await;
        staging.put_profile(&sales_profile()).await.unwrap();
        staging
            .apply_changes(
                &entity("account"),
                page((0..20).map(|i| account_row(i, 0, 2)).collect(), vec![], "t"),
            )
            .await
            .unwrap();
    }
    let store = open_store(dir.path(), StoreOptions::default()).await;
    let staging = store.org(&org_id("contoso")).await.unwrap();
    assert_eq!(staging.head().await.unwrap(), Seq(20));
    assert_eq!(*staging.watch_head().borrow(), Seq(20), "the watch starts at the stored head");
    assert_eq!(staging.source_token(&entity("account")).await.unwrap(), Some(ChangeToken("t".into())));
    assert_membership_recomputes(&store, &org_id("contoso"), &account_meta()).await;

    // Drop: files gone (with -wal/-shm), handles NotFound, recreate is empty.
    let path = store.org_path(&org_id("contoso"));
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    assert!(wal.exists());
    store.drop_org(&org_id("contoso")).await.unwrap();
    assert!(!path.exists() && !wal.exists());
    assert!(!std::path::PathBuf::from(format!("{}-shm", path.display())).exists());
    assert_eq!(staging.head().await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(staging.apply_schema(&account_meta()).await.unwrap_err().kind(), ErrorKind::NotFound);
    store.drop_org(&org_id("contoso")).await.unwrap();
    store.create_org(&org_config("contoso")).await.unwrap();
    let fresh = store.org(&org_id("contoso")).await.unwrap();
    assert_eq!(fresh.head().await.unwrap(), Seq::ZERO);
    assert!(fresh.schemas().await.unwrap().is_empty());
    assert_eq!(staging.head().await.unwrap_err().kind(), ErrorKind::NotFound, "old handles stay dropped");

    // An org file no org owns (a crash between file and row) is removed on open.
    drop((staging, fresh, store));
    std::fs::write(dir.path().join("orgs").join("orphan.sqlite"), b"").unwrap();
    let store = open_store(dir.path(), StoreOptions::default()).await;
    assert!(!dir.path().join("orgs").join("orphan.sqlite").exists());
    assert_eq!(store.orgs().await.unwrap().len(), 1);
}

#[tokio::test]
async fn unchanged_rows_are_recognised_in_stored_form_for_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), StoreOptions::default()).await;
    store.create_org(&org_config("contoso")).await.unwrap();
    let staging = store.org(&org_id("contoso")).await.unwrap();
    let meta = EntityMetadata::new(
        entity("gadget"),
        col("gadgetid"),
        vec![
            Attribute::new(col("gadgetid"), AttributeType::Integer),
            Attribute::new(col("label"), AttributeType::String),
            Attribute::new(col("price"), AttributeType::Decimal),
            Attribute::new(col("weight"), AttributeType::Float),
            Attribute::new(col("active"), AttributeType::Boolean),
            Attribute::new(col("seen"), AttributeType::DateTime),
            Attribute::new(col("tag"), AttributeType::Uuid),
            Attribute::new(col("extra"), AttributeType::Json),
        ],
    )
    .unwrap();
    staging.apply_schema(&meta).await.unwrap();
    let tag = uuid::Uuid::new_v4();
    let row = |price: &str, weight: Value, seen: &str, tag: String, extra: serde_json::Value| {
        Row::new(
            RowId::new("7").unwrap(),
            [
                (col("label"), Value::from("x")),
                (col("price"), Value::from(price)),
                (col("weight"), weight),
                (col("active"), Value::Boolean(true)),
                (col("seen"), Value::from(seen)),
                (col("tag"), Value::from(tag)),
                (col("extra"), Value::Json(extra)),
            ],
        )
    };
    let first = row(
        "1.50",
        Value::Float(3.0),
        "2024-05-01T12:00:00.5Z",
        tag.to_string(),
        serde_json::json!({"a": [1, 2], "b": null}),
    );
    let out = staging.apply_changes(&entity("gadget"), page(vec![first], vec![], "t1")).await.unwrap();
    assert_eq!(out.upserted, 1);
    // The same values spelled differently: unchanged.
    let same = row(
        "1.5",
        Value::Integer(3),
        "2024-05-01T14:00:00.500+02:00",
        tag.to_string().to_uppercase(),
        serde_json::json!({"b": null, "a": [1, 2]}),
    );
    let out = staging.apply_changes(&entity("gadget"), page(vec![same], vec![], "t2")).await.unwrap();
    assert_eq!((out.upserted, out.unchanged), (0, 1), "equal values in other spellings are unchanged");
    // Any one value changed: a new version.
    let changes = [
        row(
            "1.51",
            Value::Float(3.0),
            "2024-05-01T12:00:00.5Z",
            tag.to_string(),
            serde_json::json!({"a": [1, 2], "b": null}),
        ),
        row(
            "1.5",
            Value::Float(3.5),
            "2024-05-01T12:00:00.5Z",
            tag.to_string(),
            serde_json::json!({"a": [1, 2], "b": null}),
        ),
        row(
            "1.5",
            Value::Float(3.5),
            "2024-05-01T12:00:00.6Z",
            tag.to_string(),
            serde_json::json!({"a": [1, 2], "b": null}),
        ),
        row(
            "1.5",
            Value::Float(3.5),
            "2024-05-01T12:00:00.6Z",
            uuid::Uuid::new_v4().to_string(),
            serde_json::json!({"a": [1, 2], "b": null}),
        ),
        row(
            "1.5",
            Value::Float(3.5),
            "2024-05-01T12:00:00.6Z",
            tag.to_string(),
            serde_json::json!({"a": [2, 1]}),
        ),
    ];
    for (i, changed) in changes.into_iter().enumerate() {
        let out = staging.apply_changes(&entity("gadget"), page(vec![changed], vec![], "t3")).await.unwrap();
        assert_eq!((out.upserted, out.unchanged), (1, 0), "change {i} is a change");
    }
    let mut nulled = row(
        "1.5",
        Value::Float(3.5),
        "2024-05-01T12:00:00.6Z",
        tag.to_string(),
        serde_json::json!({"a": [2, 1]}),
    );
    nulled.values.insert(col("label"), Value::Null);
    let out =
        staging.apply_changes(&entity("gadget"), page(vec![nulled.clone()], vec![], "t4")).await.unwrap();
    assert_eq!((out.upserted, out.unchanged), (1, 0), "a value becoming null is a change");
    let out = staging.apply_changes(&entity("gadget"), page(vec![nulled], vec![], "t5")).await.unwrap();
    assert_eq!((out.upserted, out.unchanged), (0, 1));
}

/// Entries of the membership log per (partition, row id), removes
/// included, read straight from the org's file.
fn log_entries(path: &std::path::Path) -> std::collections::BTreeMap<(String, String), Vec<bool>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT v.partition, coalesce(v.row_id, t.accountid), v.removed FROM _sync_membership_view v \
             LEFT JOIN account t ON t._sync_rid = v.rid AND v.removed = 0",
        )
        .unwrap();
    let mut out: std::collections::BTreeMap<(String, String), Vec<bool>> = Default::default();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        out.entry((r.get(0).unwrap(), r.get(1).unwrap())).or_default().push(r.get(2).unwrap());
    }
    out
}

#[tokio::test]
async fn a_row_created_again_replaces_its_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let org = org_id("contoso");
    let path;
    {
        let (store, staging) = setup(dir.path()).await;
        path = store.org_path(&org);
        staging.put_profile(&sales_profile()).await.unwrap();
        let rows: Vec<Row> = (0..20).map(|i| account_row(i, 0, 2)).collect();
        let ids: Vec<RowId> = rows.iter().map(|r| r.id.clone()).collect();
        staging.apply_changes(&entity("account"), page(rows, vec![], "t1")).await.unwrap();
        staging.apply_changes(&entity("account"), page(vec![], ids[..10].to_vec(), "t2")).await.unwrap();
        assert!(log_entries(&path).values().any(|e| e == &[true]), "deletes leave tombstones");
        // Created again, some in other partitions than before (generation 1
        // moves owners and states).
        let again: Vec<Row> = (0..10).map(|i| account_row(i, i % 2, 2)).collect();
        staging.apply_changes(&entity("account"), page(again, vec![], "t3")).await.unwrap();
        for ((partition, id), ops) in log_entries(&path) {
            assert_eq!(ops.len(), 1, "{id} has {} entries in {partition}: {ops:?}", ops.len());
        }
        assert_membership_recomputes(&store, &org, &account_meta()).await;
    }
    // An org database written before graves and stale entries existed
    // (no `_sync_graves`, no `_sync_stale`, a view that reads every entry)
    // gets the tables and the view on open and keeps working (its deleted
    // rows simply have no grave).
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE _sync_graves;
             DELETE FROM _sync_membership WHERE id IN (SELECT id FROM _sync_stale);
             DROP TABLE _sync_stale;
             DROP VIEW _sync_membership_view;
             CREATE VIEW _sync_membership_view AS
                 SELECT p.key AS partition, s.entity, m.rid, m.row_id, m.id & 1099511627775 AS seq, m.version,
                     m.removed
                 FROM _sync_membership m
                 JOIN _sync_partitions p ON p.pid = m.id >> 40
                 JOIN _sync_schemas s ON s.eid = m.eid;",
        )
        .unwrap();
    }
    let store = open_store(dir.path(), StoreOptions::default()).await;
    let staging = store.org(&org).await.unwrap();
    let ids: Vec<RowId> = (0..20).map(|i| account_row(i, 0, 2).id).collect();
    staging.apply_changes(&entity("account"), page(vec![], ids[5..15].to_vec(), "t4")).await.unwrap();
    staging
        .apply_changes(
            &entity("account"),
            page((5..15).map(|i| account_row(i, 2, 2)).collect(), vec![], "t5"),
        )
        .await
        .unwrap();
    for ((partition, id), ops) in log_entries(&path) {
        assert_eq!(ops.len(), 1, "{id} has {} entries in {partition}: {ops:?}", ops.len());
    }
    assert_membership_recomputes(&store, &org, &account_meta()).await;
    // Purged tombstones take their graves along.
    staging.apply_changes(&entity("account"), page(vec![], ids.clone(), "t6")).await.unwrap();
    staging.purge_tombstones(staging.head().await.unwrap()).await.unwrap();
    let graves: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM _sync_graves", [], |r| r.get(0))
        .unwrap();
    assert_eq!(graves, 0, "no grave outlives its tombstones");
    staging
        .apply_changes(
            &entity("account"),
            page((0..20).map(|i| account_row(i, 3, 2)).collect(), vec![], "t7"),
        )
        .await
        .unwrap();
    for ((partition, id), ops) in log_entries(&path) {
        assert_eq!(ops, vec![false], "{id} in {partition}");
    }
    assert_membership_recomputes(&store, &org, &account_meta()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_skip_a_commit() {
    // Writers on several tasks; a reader pulls continuously from its
    // positions. Whatever it has seen at the end must equal the final state:
    // a commit that landed "behind" its cursor would be missed.
    let dir = tempfile::tempdir().unwrap();
    let (_store, staging) = setup(dir.path()).await;
    let everything = Profile {
        name: ProfileName::new("all").unwrap(),
        roles: ["r".to_owned()].into(),
        items: vec![ProfileItem::new(entity("account"), "")],
    };
    staging.put_profile(&everything).await.unwrap();
    let key = key_of(&everything, "account", &[]);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let staging = staging.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..15u64 {
                let rows: Vec<Row> =
                    (0..20).map(|i| account_row(w * 1000 + (i + round * 7) % 60, round, 5)).collect();
                let deletes =
                    if round % 4 == 3 { vec![account_row(w * 1000 + round, 0, 5).id] } else { vec![] };
                staging.apply_changes(&entity("account"), page(rows, deletes, "t")).await.unwrap();
            }
        }));
    }
    let reader = {
        let staging = staging.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut pos = Seq::ZERO;
            let mut held: std::collections::BTreeMap<RowId, Seq> = Default::default();
            let mut seqs = Vec::new();
            for _ in 0..400 {
                let p = staging
                    .pull(&PullPlan {
                        partitions: vec![(key.clone(), pos)],
                        max_rows: 25,
                        max_bytes: 1 << 20,
                    })
                    .await
                    .unwrap();
                for c in p.changes {
                    seqs.push(c.seq);
                    match c.row {
                        Some(r) => held.insert(c.row_id, r.version()),
                        None => held.remove(&c.row_id),
                    };
                }
                pos = p.positions[0].1;
                tokio::task::yield_now().await;
            }
            (pos, held, seqs)
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    let (mut pos, mut held, seqs) = reader.await.unwrap();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs arrive in increasing order");
    loop {
        let p = staging
            .pull(&PullPlan { partitions: vec![(key.clone(), pos)], max_rows: 500, max_bytes: 1 << 30 })
            .await
            .unwrap();
        for c in p.changes {
            match c.row {
                Some(r) => held.insert(c.row_id, r.version()),
                None => held.remove(&c.row_id),
            };
        }
        pos = p.positions[0].1;
        if !p.more {
            break;
        }
    }
    let rows = all_rows(staging.as_ref(), &entity("account")).await;
    let expected: std::collections::BTreeMap<RowId, Seq> =
        rows.into_iter().map(|(id, (_, v))| (id, v)).collect();
    assert_eq!(held, expected);
}

#[tokio::test]
async fn connection_cache_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { max_open_orgs: 3, ..StoreOptions::default() };
    let store = open_store(dir.path(), options).await;
    let mut handles = Vec::new();
    for i in 0..10 {
        let id = format!("org{i}");
        store.create_org(&org_config(&id)).await.unwrap();
        let staging = store.org(&org_id(&id)).await.unwrap();
        staging.apply_schema(&account_meta()).await.unwrap();
        handles.push(staging);
        assert!(store.open_orgs() <= 3);
    }
    for (i, h) in handles.iter().enumerate() {
        let rows = vec![account_row(i as u64, 0, 1)];
        h.apply_changes(&entity("account"), page(rows, vec![], "t")).await.unwrap();
        assert!(store.open_orgs() <= 3);
    }
    for h in &handles {
        assert_eq!(h.status().await.unwrap().entities[0].rows, 1);
    }
}

/// Positions of `keys` all at `at`.
fn plan_at(keys: &[PartitionKey], at: Seq) -> PullPlan {
    PullPlan {
        partitions: keys.iter().map(|k| (k.clone(), at)).collect(),
        max_rows: 100_000,
        max_bytes: 1 << 30,
    }
}

/// Reads answered from memory (profiles, schemas, floor, "no changes"
/// pulls) are never stale: a write through any handle of the org is seen by
/// the next read through every other handle, and a dropped org answers
/// `NotFound` even where the memory held an answer.
#[tokio::test]
async fn remembered_reads_follow_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a) = setup(dir.path()).await;
    let b = store.org(&org_id("contoso")).await.unwrap();
    let account = entity("account");
    let profile = sales_profile();
    a.put_profile(&profile).await.unwrap();
    a.apply_changes(&account, page((0..100).map(|i| account_row(i, 0, 4)).collect(), vec![], "t1"))
        .await
        .unwrap();
    let keys = vec![
        key_of(&profile, "active", &[]),
        key_of(&profile, "mine", &[("user.id", owner(1, 4).to_string())]),
    ];

    // Up to date: the same empty answer and checksums, however often asked.
    let full = a.pull(&plan_at(&keys, Seq::ZERO)).await.unwrap();
    assert!(!full.more);
    for _ in 0..3 {
        let again = a.pull(&plan_at(&keys, full.head)).await.unwrap();
        assert!(again.changes.is_empty() && !again.more);
        assert_eq!((again.head, &again.checksums), (full.head, &full.checksums));
        assert_eq!(again.positions, plan_at(&keys, full.head).partitions);
    }

    // A change written through the other handle reaches this one's next pull.
    b.apply_changes(&account, page((0..10).map(|i| account_row(i, 1, 4)).collect(), vec![], "t2"))
        .await
        .unwrap();
    let next = a.pull(&plan_at(&keys, full.head)).await.unwrap();
    assert!(!next.changes.is_empty());
    assert!(next.head > full.head);
    assert_ne!(next.checksums, full.checksums);
    assert_eq!(next.checksums, a.pull(&plan_at(&keys, Seq::ZERO)).await.unwrap().checksums);
    let up_to_date = a.pull(&plan_at(&keys, next.head)).await.unwrap();
    assert_eq!((up_to_date.head, &up_to_date.checksums), (next.head, &next.checksums));

    // Profiles, schemas and the floor follow writes made elsewhere.
    assert_eq!(a.profiles().await.unwrap(), vec![profile.clone()]);
    let mut narrower = profile.clone();
    narrower.items[0].filter = "statecode eq 0 and creditonhold eq false".into();
    b.put_profile(&narrower).await.unwrap();
    assert_eq!(a.profiles().await.unwrap(), vec![narrower]);
    let moved = a.pull(&plan_at(&keys, next.head)).await.unwrap();
    assert!(moved.changes.iter().any(|c| c.row.is_none()), "rows left the narrower partition");

    let version = a.schema_version().await.unwrap();
    assert_eq!(a.schemas().await.unwrap(), vec![account_meta()]);
    let mut wider = account_meta();
    wider.attributes.push(Attribute::new(col("website"), AttributeType::String));
    b.apply_schema(&wider).await.unwrap();
    assert!(a.schema_version().await.unwrap() > version);
    assert_eq!(a.schemas().await.unwrap(), vec![wider]);

    assert_eq!(a.tombstone_floor().await.unwrap(), Seq::ZERO);
    let head = b.head().await.unwrap();
    b.purge_tombstones(head).await.unwrap();
    assert_eq!(a.tombstone_floor().await.unwrap(), head);

    // Dropped: nothing is answered from memory any more.
    let latest = a.pull(&plan_at(&keys, Seq::ZERO)).await.unwrap();
    a.pull(&plan_at(&keys, latest.head)).await.unwrap();
    store.drop_org(&org_id("contoso")).await.unwrap();
    assert_eq!(a.pull(&plan_at(&keys, latest.head)).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(a.profiles().await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(a.schemas().await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(a.tombstone_floor().await.unwrap_err().kind(), ErrorKind::NotFound);
}

/// Pollers that are up to date while a writer keeps committing never see a
/// head or checksums the database does not hold at that moment or later:
/// once the writer stops, the remembered answer equals a full read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_to_date_pollers_converge_while_a_writer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    let profile = sales_profile();
    staging.put_profile(&profile).await.unwrap();
    let keys = vec![key_of(&profile, "active", &[])];
    let account = entity("account");
    let writer = {
        let w = store.org(&org_id("contoso")).await.unwrap();
        let account = account.clone();
        tokio::spawn(async move {
            for round in 0..40u64 {
                let rows = (0..20).map(|i| account_row(i + round, round, 4)).collect();
                w.apply_changes(&account, page(rows, vec![], &format!("t{round}"))).await.unwrap();
            }
        })
    };
    let mut at = Seq::ZERO;
    let mut last_head = Seq::ZERO;
    while !writer.is_finished() {
        let p = staging.pull(&plan_at(&keys, at)).await.unwrap();
        assert!(p.head >= last_head, "the head never goes back");
        last_head = p.head;
        if !p.more {
            at = p.head;
        }
    }
    writer.await.unwrap();
    // The poller's next pull from where it stood reaches the final state...
    let caught_up = staging.pull(&plan_at(&keys, at)).await.unwrap();
    assert!(!caught_up.more);
    // ...which a full read confirms.
    let fresh = staging.pull(&plan_at(&keys, Seq::ZERO)).await.unwrap();
    assert_eq!((caught_up.head, &caught_up.checksums), (fresh.head, &fresh.checksums));
    assert_eq!(fresh.head, staging.head().await.unwrap());
}

/// Frames in a WAL file of 4 KiB pages (its size is its high-water mark:
/// SQLite rewrites a WAL from the start after a complete checkpoint).
fn wal_frames(db: &std::path::Path) -> u64 {
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    std::fs::metadata(wal).map(|m| m.len().saturating_sub(32) / (4096 + 24)).unwrap_or(0)
}

/// Rows of `account` in the main database file alone (a copy without its
/// WAL), or `None` while a checkpoint is midway through writing it.
fn rows_in_main_file(db: &std::path::Path, scratch: &std::path::Path) -> Option<i64> {
    std::fs::copy(db, scratch).ok()?;
    let conn = rusqlite::Connection::open(scratch).ok()?;
    conn.query_row("SELECT count(*) FROM account", [], |r| r.get(0)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_beside_the_writer_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let threshold = 64;
    let options = StoreOptions { wal_autocheckpoint: threshold, ..StoreOptions::default() };
    let store = open_store(dir.path(), options).await;
    store.create_org(&org_config("contoso")).await.unwrap();
    let staging = store.org(&org_id("contoso")).await.unwrap();
    staging.apply_schema(&account_meta()).await.unwrap();
    let db = store.org_path(&org_id("contoso"));
    let scratch = dir.path().join("copy.sqlite");
    let _ = rows_in_main_file(&db, &scratch); // the copy's layout exists from here on

    // Pages until the WAL crosses the threshold: the writer hands the
    // checkpoint to the background and goes on, so until then (and below the
    // writer's own limit of four times the threshold) the main file holds
    // no row, and afterwards it fills without another write.
    let mut written = 0u64;
    while wal_frames(&db) < u64::from(threshold) {
        let rows = (written..written + 50).map(|i| account_row(i, 0, 4)).collect();
        written += 50;
        staging.apply_changes(&entity("account"), page(rows, vec![], "a")).await.unwrap();
        assert!(written <= 5_000, "the WAL never reached {threshold} frames");
    }
    let frames = wal_frames(&db);
    assert!(
        frames < 4 * u64::from(threshold),
        "one page wrote {frames} frames: the test needs smaller pages"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if rows_in_main_file(&db, &scratch).is_some_and(|n| n > 0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no background checkpoint reached the main file");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Written back to back, pages never let the WAL outgrow the writer's
    // limit by more than one page's frames.
    let mut largest_page = 0;
    for round in 0..80u64 {
        let before = wal_frames(&db);
        let rows = (round * 50..round * 50 + 50).map(|i| account_row(i, round + 1, 4)).collect();
        staging.apply_changes(&entity("account"), page(rows, vec![], "b")).await.unwrap();
        largest_page = largest_page.max(wal_frames(&db).saturating_sub(before));
    }
    let bound = 4 * u64::from(threshold) + largest_page.max(frames);
    assert!(wal_frames(&db) <= bound, "the WAL grew to {} frames (bound {bound})", wal_frames(&db));
    assert_eq!(all_rows(staging.as_ref(), &entity("account")).await.len() as u64, written.max(4_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_on_request_leaves_every_commit_in_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    // No background checkpoints: the WAL keeps every commit until asked.
    let options = StoreOptions {
        wal_autocheckpoint: 0,
        busy_timeout: std::time::Duration::from_millis(200),
        ..StoreOptions::default()
    };
    let store = open_store(dir.path(), options).await;
    assert_eq!(store.checkpoint(&org_id("nobody")).await.unwrap_err().kind(), ErrorKind::NotFound);
    store.create_org(&org_config("contoso")).await.unwrap();
    let staging = store.org(&org_id("contoso")).await.unwrap();
    staging.apply_schema(&account_meta()).await.unwrap();
    let db = store.org_path(&org_id("contoso"));
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    let scratch = dir.path().join("copy.sqlite");
    let rows = |from: u64, to: u64| (from..to).map(|i| account_row(i, 0, 4)).collect::<Vec<_>>();
    staging.apply_changes(&entity("account"), page(rows(0, 300), vec![], "a")).await.unwrap();
    assert_eq!(rows_in_main_file(&db, &scratch), None, "the main file has no table before a checkpoint");

    // A reader on an older snapshot keeps the log in use: the request fails
    // after the busy timeout and changes nothing.
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader.query_row("SELECT count(*) FROM account", [], |r| r.get(0)).unwrap();
    assert_eq!(seen, 300);
    staging.apply_changes(&entity("account"), page(rows(300, 350), vec![], "b")).await.unwrap();
    let err = store.checkpoint(&org_id("contoso")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(all_rows(staging.as_ref(), &entity("account")).await.len(), 350);

    // Once it is gone, the log is copied back and emptied: the main file
    // alone holds every commit, and writing goes on.
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    store.checkpoint(&org_id("contoso")).await.unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    assert_eq!(rows_in_main_file(&db, &scratch), Some(350));
    staging.apply_changes(&entity("account"), page(rows(350, 360), vec![], "c")).await.unwrap();
    assert_eq!(all_rows(staging.as_ref(), &entity("account")).await.len(), 360);

    // With background checkpoints under way, a request waits for them and
    // still leaves everything in the main file.
    let options = StoreOptions { wal_autocheckpoint: 16, ..StoreOptions::default() };
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), options).await;
    store.create_org(&org_config("fabrikam")).await.unwrap();
    let staging = store.org(&org_id("fabrikam")).await.unwrap();
    staging.apply_schema(&account_meta()).await.unwrap();
    for p in 0..20u64 {
        staging
            .apply_changes(&entity("account"), page(rows(p * 100, p * 100 + 100), vec![], "d"))
            .await
            .unwrap();
    }
    store.checkpoint(&org_id("fabrikam")).await.unwrap();
    let db = store.org_path(&org_id("fabrikam"));
    assert_eq!(rows_in_main_file(&db, &dir.path().join("copy.sqlite")), Some(2_000));
}

#[tokio::test]
async fn pulls_read_hand_edited_keys_canonically_and_refuse_missing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    let profile = sales_profile();
    staging.put_profile(&profile).await.unwrap();
    let rows: Vec<Row> = (0..40).map(|i| account_row(i, 0, 4)).collect();
    staging.apply_changes(&entity("account"), page(rows, vec![], "t1")).await.unwrap();
    let active = key_of(&profile, "active", &[]);
    let before = pull_all(staging.as_ref(), std::slice::from_ref(&active), 1_000).await;
    assert!(!before.changes.is_empty());

    // A key written in upper case with the sqlite3 shell still pulls as its
    // canonical id, with the same row.
    let db = store.org_path(&org_id("contoso"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("UPDATE account SET accountid = upper(accountid)").unwrap();
    let after = pull_all(staging.as_ref(), std::slice::from_ref(&active), 1_000).await;
    assert_eq!(after.changes, before.changes);
    assert!(after.changes.iter().all(|c| c.row_id.as_str() == c.row_id.as_str().to_lowercase()));

    // A staged row deleted by hand under its membership is an internal
    // error naming the partition, not a row of nulls.
    let first = before.changes[0].row_id.as_str().to_uppercase();
    assert_eq!(conn.execute("DELETE FROM account WHERE accountid = ?1", [&first]).unwrap(), 1);
    let plan =
        PullPlan { partitions: vec![(active.clone(), Seq::ZERO)], max_rows: 1_000, max_bytes: 1 << 30 };
    let err = staging.pull(&plan).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("not staged"), "{err}");
}

#[tokio::test]
async fn stale_puts_of_deleted_rows_are_skipped_and_rows_deleted_by_hand_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    let org = org_id("contoso");
    let account = entity("account");
    let sales = sales_profile();
    staging.put_profile(&sales).await.unwrap();
    let ids: Vec<RowId> = (0..30).map(|i| account_row(i, 0, 3).id).collect();
    staging
        .apply_changes(&account, page((0..30).map(|i| account_row(i, 0, 3)).collect(), vec![], "t1"))
        .await
        .unwrap();
    // Changed and deleted in one page: the change's puts are replaced in
    // memory, the puts it replaced stay as stale entries of gone rows.
    staging
        .apply_changes(
            &account,
            page((0..5).map(|i| account_row(i, 1, 3)).collect(), ids[..5].to_vec(), "t2"),
        )
        .await
        .unwrap();
    // Changed (some leave `active`, leaving a tombstone there and a stale
    // put), then deleted in a later page.
    staging
        .apply_changes(&account, page((5..15).map(|i| account_row(i, 1, 3)).collect(), vec![], "t3"))
        .await
        .unwrap();
    staging.apply_changes(&account, page(vec![], ids[5..15].to_vec(), "t4")).await.unwrap();

    let rows = all_rows(staging.as_ref(), &account).await;
    assert_eq!(rows.len(), 15);
    let expected = recompute(&account_meta(), std::slice::from_ref(&sales), &rows);
    let mut keys = vec![key_of(&sales, "active", &[])];
    keys.extend((0..3).map(|o| key_of(&sales, "mine", &[("user.id", owner(o, 3).to_string())])));
    assert_pulls_hold(staging.as_ref(), &keys, &expected, &[1, 4, 1_000]).await;
    assert_membership_recomputes(&store, &org, &account_meta()).await;

    // A row deleted by hand under its membership is not taken for one the
    // store deleted.
    let conn = rusqlite::Connection::open(store.org_path(&org)).unwrap();
    assert_eq!(conn.execute("DELETE FROM account WHERE accountid = ?1", [ids[20].as_str()]).unwrap(), 1);
    let mut errors = Vec::new();
    for key in &keys {
        let plan =
            PullPlan { partitions: vec![(key.clone(), Seq::ZERO)], max_rows: 1_000, max_bytes: 1 << 30 };
        errors.extend(staging.pull(&plan).await.err());
    }
    assert!(!errors.is_empty(), "a pull of the row's partitions fails");
    for err in errors {
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(err.to_string().contains("not staged"), "{err}");
    }
}

/// Pulls every change of `key` from the start, `max_rows` at a time; returns
/// the rows it holds at the end (id and version) and whether any row came
/// twice (a from-scratch pull of a partition meets each row at most once).
async fn held_after_pull(
    staging: &dyn OrgStaging,
    key: &PartitionKey,
    max_rows: usize,
) -> BTreeSet<(String, u64)> {
    let mut position = Seq::ZERO;
    let mut seen = BTreeSet::new();
    let mut held = std::collections::BTreeMap::new();
    loop {
        let p = staging
            .pull(&PullPlan { partitions: vec![(key.clone(), position)], max_rows, max_bytes: 1 << 30 })
            .await
            .unwrap();
        for c in &p.changes {
            assert!(seen.insert(c.row_id.clone()), "{} came twice from {key}", c.row_id);
            match &c.row {
                Some(r) => held.insert(c.row_id.to_string(), r.version().0),
                None => held.remove(c.row_id.as_str()),
            };
        }
        position = p.positions[0].1;
        if !p.more {
            return held.into_iter().collect();
        }
    }
}

/// Asserts that a pull of each of `keys` from the start, in pages of each
/// of `page_sizes`, ends holding what `expected` (a recomputation) puts in
/// that partition, and that no partition is empty.
async fn assert_pulls_hold(
    staging: &dyn OrgStaging,
    keys: &[PartitionKey],
    expected: &Membership,
    page_sizes: &[usize],
) {
    for key in keys {
        let want = expected.get(key.as_str()).map(|e| e.0.clone()).unwrap_or_default();
        assert!(!want.is_empty(), "{key} has members");
        for &max_rows in page_sizes {
            assert_eq!(held_after_pull(staging, key, max_rows).await, want, "{key}, pages of {max_rows}");
        }
    }
}

#[tokio::test]
async fn pulls_skip_stale_puts_in_single_and_mixed_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let (store, staging) = setup(dir.path()).await;
    let org = org_id("contoso");
    let path = store.org_path(&org);
    let account = entity("account");
    let sales = sales_profile();
    staging.put_profile(&sales).await.unwrap();

    // Item `field/open` first selects contacts, then accounts: its
    // partition holds entries of both entities, read row by row.
    let contact = EntityMetadata::new(
        entity("contact"),
        col("contactid"),
        vec![
            Attribute::new(col("contactid"), AttributeType::Integer),
            Attribute::new(col("statecode"), AttributeType::Integer),
        ],
    )
    .unwrap();
    staging.apply_schema(&contact).await.unwrap();
    let field = |on: &str| {
        let mut open = ProfileItem::new(entity(on), "statecode eq 0");
        open.id = Some(sync_core::ItemId::new("open").unwrap());
        Profile {
            name: ProfileName::new("field").unwrap(),
            roles: ["field".to_owned()].into(),
            items: vec![open],
        }
    };
    staging.put_profile(&field("contact")).await.unwrap();
    let contacts: Vec<Row> = (0..5)
        .map(|i| Row::new(RowId::new(i.to_string()).unwrap(), [(col("statecode"), Value::Integer(0))]))
        .collect();
    staging.apply_changes(&entity("contact"), page(contacts, vec![], "c1")).await.unwrap();
    staging.put_profile(&field("account")).await.unwrap();

    // Rows, then new versions of some (moving owners and states) and
    // deletes: their replaced puts stay in the log as stale entries.
    let rows: Vec<Row> = (0..60).map(|i| account_row(i, 0, 3)).collect();
    staging.apply_changes(&account, page(rows, vec![], "t1")).await.unwrap();
    let moved: Vec<Row> = (0..30).map(|i| account_row(i, 1, 3)).collect();
    let deleted: Vec<RowId> = (40..50).map(|i| account_row(i, 0, 3).id).collect();
    staging.apply_changes(&account, page(moved, deleted, "t2")).await.unwrap();
    let again: Vec<Row> = (0..10).map(|i| account_row(i, 2, 3)).collect();
    staging.apply_changes(&account, page(again, vec![], "t3")).await.unwrap();

    let open_key = Partition {
        profile: ProfileName::new("field").unwrap(),
        item: sync_core::ItemId::new("open").unwrap(),
        entity: account.clone(),
        params: Default::default(),
    }
    .key();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let stale: i64 = conn.query_row("SELECT count(*) FROM _sync_stale", [], |r| r.get(0)).unwrap();
        assert!(stale > 30, "updates and deletes leave stale puts ({stale})");
        let mixed: bool = conn
            .query_row("SELECT mixed FROM _sync_partitions WHERE key = ?1", [open_key.as_str()], |r| r.get(0))
            .unwrap();
        assert!(mixed, "{open_key} holds entries of two entities");
    }

    let rows = all_rows(staging.as_ref(), &account).await;
    let profiles = [sales.clone(), field("account")];
    let expected = recompute(&account_meta(), &profiles, &rows);
    let mut keys = vec![open_key, key_of(&sales, "active", &[])];
    keys.extend((0..3).map(|o| key_of(&sales, "mine", &[("user.id", owner(o, 3).to_string())])));
    assert_pulls_hold(staging.as_ref(), &keys, &expected, &[1, 7, 1_000]).await;
    // (The checksums of the org's partitions are all of accounts now.)
    assert_membership_recomputes(&store, &org, &account_meta()).await;

    // Maintenance compacts them: the same pulls, nothing stale left.
    staging.purge_tombstones(Seq::ZERO).await.unwrap();
    let stale: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM _sync_stale", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stale, 0);
    assert_pulls_hold(staging.as_ref(), &keys, &expected, &[7]).await;
    assert_membership_recomputes(&store, &org, &account_meta()).await;
}
