//! Helpers shared by the integration tests: a CRM-like entity, rows, a
//! profile with a parameterised item, and a membership recomputation to
//! compare a store's membership tables against.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use storage_sqlite::{SqliteStagingStore, StoreOptions};
use sync_core::filter::MembershipPlanner;
use sync_core::partition::membership_hash;
use sync_core::{
    Attribute, AttributeType, Checksum, ColumnName, EntityMetadata, EntityName, OrgConfig, OrgId,
    OrgSourceConfig, OrgStaging, Profile, ProfileItem, ProfileName, Row, RowId, Seq, Value,
};
use uuid::Uuid;

pub fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}

pub fn entity(s: &str) -> EntityName {
    EntityName::new(s).unwrap()
}

pub fn org_id(s: &str) -> OrgId {
    OrgId::new(s).unwrap()
}

pub fn org_config(id: &str) -> OrgConfig {
    OrgConfig::new(org_id(id), OrgSourceConfig { kind: "demo".into(), settings: Default::default() })
}

pub async fn open_store(dir: &Path, options: StoreOptions) -> SqliteStagingStore {
    SqliteStagingStore::open_with(dir, options).await.unwrap()
}

/// A Dataverse-like `account`: uuid key and eight typed columns.
pub fn account_meta() -> EntityMetadata {
    EntityMetadata::new(
        entity("account"),
        col("accountid"),
        vec![
            Attribute::new(col("accountid"), AttributeType::Uuid),
            Attribute::new(col("name"), AttributeType::String),
            Attribute::new(col("accountnumber"), AttributeType::String),
            Attribute::new(col("revenue"), AttributeType::Decimal),
            Attribute::new(col("numberofemployees"), AttributeType::Integer),
            Attribute::new(col("statecode"), AttributeType::Integer),
            Attribute::new(col("ownerid"), AttributeType::Lookup { target: entity("systemuser") }),
            Attribute::new(col("modifiedon"), AttributeType::DateTime),
            Attribute::new(col("creditonhold"), AttributeType::Boolean),
        ],
    )
    .unwrap()
}

/// A deterministic owner among `owners`.
pub fn owner(i: u64, owners: u64) -> Uuid {
    Uuid::from_u128(0x5157_0000_0000_0000_0000_0000_0000_0000 + u128::from(i % owners))
}

/// A deterministic row id.
pub fn row_uuid(i: u64) -> Uuid {
    Uuid::from_u128(
        0xacc0_0000_0000_4000_8000_0000_0000_0000 ^ (u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    )
}

/// Account number `i` at `generation`. A new generation changes name,
/// revenue, employees and modification time of every row, moves every tenth
/// row to another owner and flips 2 % of rows between active and inactive;
/// about every tenth row is inactive (statecode 1).
pub fn account_row(i: u64, generation: u64, owners: u64) -> Row {
    let id = row_uuid(i);
    Row::new(
        RowId::new(id.to_string()).unwrap(),
        [
            (col("name"), Value::from(format!("Account {i} gen {generation}"))),
            (col("accountnumber"), Value::from(format!("AC-{i:08}"))),
            (
                col("revenue"),
                Value::from(format!("{}.{:02}", 1000 + (i * 37 + generation) % 100_000, i % 100)),
            ),
            (col("numberofemployees"), Value::Integer(((i + generation) % 5000) as i64)),
            (
                col("statecode"),
                Value::Integer(i64::from(i.is_multiple_of(10) != (generation % 2 == 1 && i % 50 < 2))),
            ),
            (col("ownerid"), Value::Uuid(owner(if i % 10 == 1 { i + generation } else { i }, owners))),
            (
                col("modifiedon"),
                Value::from(format!(
                    "2024-{:02}-{:02}T10:{:02}:00Z",
                    1 + i % 12,
                    1 + i % 28,
                    generation % 60
                )),
            ),
            (col("creditonhold"), Value::Boolean(i.is_multiple_of(3))),
        ],
    )
}

/// Shuffles `v` in place, the same way for the same `seed` (xorshift).
pub fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Profile `sales`: item `active` (`statecode eq 0`) and item `mine`
/// (`ownerid eq @user.id`, one partition per owner).
pub fn sales_profile() -> Profile {
    let mut active = ProfileItem::new(entity("account"), "statecode eq 0");
    active.id = Some(sync_core::ItemId::new("active").unwrap());
    let mut mine = ProfileItem::new(entity("account"), "ownerid eq @user.id");
    mine.id = Some(sync_core::ItemId::new("mine").unwrap());
    Profile {
        name: ProfileName::new("sales").unwrap(),
        roles: ["sales".to_owned()].into(),
        items: vec![active, mine],
    }
}

/// Every staged row of `entity`, by id.
pub async fn all_rows(staging: &dyn OrgStaging, entity: &EntityName) -> BTreeMap<RowId, (Row, Seq)> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let ids = staging.row_ids(entity, after.clone(), 500).await.unwrap();
        let Some(last) = ids.last().cloned() else { break };
        for id in ids {
            let staged = staging.row(entity, &id).await.unwrap().expect("listed row exists");
            out.insert(id, (staged.row, staged.version));
        }
        after = Some(last);
    }
    out
}

/// Membership as a store holds it: live entries and checksums per partition.
pub type Membership = BTreeMap<String, (BTreeSet<(String, u64)>, Checksum)>;

/// Recomputes membership from the rows and profiles alone.
pub fn recompute(
    meta: &EntityMetadata,
    profiles: &[Profile],
    rows: &BTreeMap<RowId, (Row, Seq)>,
) -> Membership {
    let planner = MembershipPlanner::new(meta, profiles).unwrap();
    let mut out: Membership = BTreeMap::new();
    for (id, (row, version)) in rows {
        for key in planner.partitions(row) {
            let e = out.entry(key.as_str().to_owned()).or_default();
            e.0.insert((id.as_str().to_owned(), version.0));
            e.1.sum = e.1.sum.wrapping_add(membership_hash(&meta.name, id, *version));
            e.1.count += 1;
        }
    }
    out
}

/// Reads the live membership and the checksums straight from an org's file.
pub fn stored_membership(path: &Path, meta: &EntityMetadata) -> Membership {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out: Membership = BTreeMap::new();
    let sql = format!(
        "SELECT v.partition, CAST(t.\"{}\" AS TEXT), v.version FROM _sync_membership_view v \
         JOIN \"{}\" t ON t._sync_rid = v.rid WHERE v.entity = ?1 AND v.removed = 0",
        meta.primary_key, meta.name
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    let mut rows = stmt.query([meta.name.as_str()]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let key: String = r.get(0).unwrap();
        let id: String = r.get(1).unwrap();
        let v: i64 = r.get(2).unwrap();
        let set = &mut out.entry(key.clone()).or_default().0;
        assert!(!set.iter().any(|(i, _)| *i == id), "two live entries for {id} in {key}");
        set.insert((id, v as u64));
    }
    // What a pull relies on to skip stale puts: a listed (stale) entry is
    // a put whose row is gone or has another version; every other put's
    // row has the entry's version.
    let sql = format!(
        "SELECT m.id, m.version, t._sync_version, m.id IN (SELECT id FROM _sync_stale) FROM _sync_membership m \
         JOIN _sync_schemas s ON s.eid = m.eid LEFT JOIN \"{}\" t ON t._sync_rid = m.rid \
         WHERE s.entity = ?1 AND m.removed = 0",
        meta.name
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    let mut rows = stmt.query([meta.name.as_str()]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let (id, version, row_version, stale): (i64, i64, Option<i64>, bool) =
            (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap(), r.get(3).unwrap());
        if stale {
            assert_ne!(row_version, Some(version), "stale entry {id} looks live");
        } else {
            assert_eq!(row_version, Some(version), "live entry {id} is not its row's version");
        }
    }
    let stale_not_puts: i64 = conn
        .query_row(
            "SELECT count(*) FROM _sync_stale s LEFT JOIN _sync_membership m ON m.id = s.id \
             WHERE m.id IS NULL OR m.removed = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale_not_puts, 0, "every listed stale entry is a put in the log");
    let mut stmt = conn.prepare("SELECT key, checksum_sum, checksum_count FROM _sync_partitions").unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let key: String = r.get(0).unwrap();
        let sum: i64 = r.get(1).unwrap();
        let count: i64 = r.get(2).unwrap();
        if count == 0 && sum == 0 {
            continue;
        }
        let e = out.entry(key).or_default();
        e.1 = Checksum { sum: sum as u32, count: count as u64 };
    }
    out
}

/// Asserts that the store's membership of `meta` equals a recomputation
/// from its staged rows.
pub async fn assert_membership_recomputes(store: &SqliteStagingStore, org: &OrgId, meta: &EntityMetadata) {
    let staging = sync_core::StagingStore::org(store, org).await.unwrap();
    let profiles = staging.profiles().await.unwrap();
    let rows = all_rows(staging.as_ref(), &meta.name).await;
    check_membership(store, org, meta, &profiles, &rows);
}

/// Asserts that the store's membership of `meta` equals a recomputation
/// from `rows` (the staged rows, read by the caller) under `profile`.
pub fn assert_membership_matches(
    store: &SqliteStagingStore,
    org: &OrgId,
    meta: &EntityMetadata,
    profile: &Profile,
    rows: &BTreeMap<RowId, (Row, Seq)>,
) {
    check_membership(store, org, meta, std::slice::from_ref(profile), rows);
}

fn check_membership(
    store: &SqliteStagingStore,
    org: &OrgId,
    meta: &EntityMetadata,
    profiles: &[Profile],
    rows: &BTreeMap<RowId, (Row, Seq)>,
) {
    let expected = recompute(meta, profiles, rows);
    let stored = stored_membership(&store.org_path(org), meta);
    assert_eq!(stored.len(), expected.len(), "partitions differ");
    for (key, (members, checksum)) in &expected {
        let got = stored.get(key).unwrap_or_else(|| panic!("partition {key} missing"));
        assert_eq!(&got.0, members, "members of {key}");
        assert_eq!(&got.1, checksum, "checksum of {key}");
    }
}
