//! The staging store conformance suite.
//!
//! Each `check_*` function takes a fresh, empty [`StagingStore`] and asserts
//! one area of the contracts of [`StagingStore`] and [`OrgStaging`],
//! panicking with a message that says what was expected. Run them all with
//! [`staging_store_conformance!`](crate::staging_store_conformance), which
//! expands to one test per check.
//!
//! The checks use only the traits and the core's own types (the filter
//! language, [`MembershipPlanner`], [`Checksum`]), so they hold any adapter
//! to exactly the behaviour the traits document.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ErrorKind, Result};
use crate::filter::{MembershipPlanner, principal_partitions};
use crate::ids::{ChangeToken, ColumnName, EntityName, MutationId, OrgId, ProfileName, RowId, Seq};
use crate::org::{OrgConfig, OrgSourceConfig, SyncRunReport};
use crate::partition::{Checksum, PartitionKey, membership_hash};
use crate::principal::Principal;
use crate::profile::{Profile, ProfileItem};
use crate::protocol::MutationOutcome;
use crate::row::{ChangePage, Row, StagedRow};
use crate::schema::{Attribute, AttributeType, EntityMetadata, MAX_ATTRIBUTES};
use crate::staging::{
    MutationRecord, OrgStaging, PullPage, PullPlan, PulledChange, SchemaChange, StagingStore,
};
use crate::value::Value;

/// Expands to one test per staging conformance check, each run on a fresh
/// store made by the factory.
///
/// The argument is an expression callable with no arguments that returns a
/// future of `Arc<dyn StagingStore>`: a fresh, empty store each time. The
/// tests run on a current-thread tokio runtime of this crate's own, so the
/// calling crate needs no tokio dependency. Each test is named after its
/// check in [`conformance::staging`](crate::conformance::staging).
///
/// ```
/// use std::sync::Arc;
/// use sync_core::StagingStore;
/// use sync_core::memory::MemoryStagingStore;
///
/// sync_core::staging_store_conformance!(|| async {
///     Arc::new(MemoryStagingStore::new()) as Arc<dyn StagingStore>
/// });
/// # fn main() {}
/// ```
///
/// An adapter whose server is not reachable (e.g. no environment variable
/// names one) writes `staging_store_conformance!(skip = "why")` instead: the
/// same tests, each reported by `cargo test` as ignored with the reason, so
/// a skipped check never counts as a pass.
///
/// ```
/// sync_core::staging_store_conformance!(skip = "no server configured");
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! staging_store_conformance {
    (skip = $reason:literal $(,)?) => {
        $crate::staging_store_conformance!(@list (@skip $reason));
    };
    (@checks @skip $reason:literal; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            #[ignore = $reason]
            fn $check() {}
        )+
    };
    ($factory:expr $(,)?) => {
        $crate::staging_store_conformance!(@list ($factory));
    };
    (@list ($($mode:tt)+)) => {
        $crate::staging_store_conformance!(@checks $($mode)+;
            check_org_lifecycle,
            check_org_directory,
            check_schema_evolution,
            check_dropped_values_reversion_rows,
            check_invalid_schema_rejected,
            check_row_access,
            check_apply_is_atomic,
            check_source_token_commits_with_rows,
            check_unchanged_upserts_take_no_seq,
            check_deletes_produce_removes,
            check_recreated_rows_replace_their_tombstones,
            check_move_outs,
            check_profiles_crud,
            check_profile_change_recomputes_membership,
            check_pull_paging_by_rows,
            check_pull_paging_by_bytes,
            check_checksums_after_churn,
            check_concurrent_writes_are_not_skipped,
            check_tombstone_retention,
            check_mutation_journal,
            check_status_and_runs,
            check_org_isolation,
            check_drop_removes_everything,
            check_watch_head_notifies,
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
                    .expect("a tokio runtime for the conformance check");
                runtime.block_on(async {
                    let factory = $factory;
                    let store: ::std::sync::Arc<dyn $crate::StagingStore> = factory().await;
                    $crate::conformance::staging::$check(store).await;
                });
            }
        )+
    };
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn org_id(name: &str) -> OrgId {
    OrgId::new(name).unwrap()
}

fn org_config(name: &str) -> OrgConfig {
    OrgConfig::new(org_id(name), OrgSourceConfig { kind: "demo".into(), settings: BTreeMap::new() })
}

fn ent(name: &str) -> EntityName {
    EntityName::new(name).unwrap()
}

fn col(name: &str) -> ColumnName {
    ColumnName::new(name).unwrap()
}

fn attr(name: &str, ty: AttributeType) -> Attribute {
    Attribute::new(col(name), ty)
}

fn uuid(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// The id of account number `n` (a UUID key, canonical form).
fn rid(n: u128) -> RowId {
    RowId::new(uuid(n).to_string()).unwrap()
}

/// The user id of user number `n` (a UUID, as Dataverse's systemuserid).
fn user(n: u128) -> uuid::Uuid {
    uuid(0x5500_0000_0000 + n)
}

fn account_meta() -> EntityMetadata {
    EntityMetadata::new(
        ent("account"),
        col("accountid"),
        vec![
            attr("accountid", AttributeType::Uuid),
            attr("name", AttributeType::String),
            attr("statecode", AttributeType::Integer),
            attr("ownerid", AttributeType::Lookup { target: ent("systemuser") }),
            attr("revenue", AttributeType::Decimal),
            attr("description", AttributeType::String),
        ],
    )
    .unwrap()
}

fn contact_meta() -> EntityMetadata {
    EntityMetadata::new(
        ent("contact"),
        col("contactid"),
        vec![attr("contactid", AttributeType::Integer), attr("fullname", AttributeType::String)],
    )
    .unwrap()
}

/// An account row: `statecode`, owner (user number) and name.
fn account(n: u128, name: &str, statecode: i64, owner: Option<u128>) -> Row {
    Row::new(
        rid(n),
        [
            (col("name"), Value::from(name)),
            (col("statecode"), Value::Integer(statecode)),
            (col("ownerid"), owner.map_or(Value::Null, |u| Value::Uuid(user(u)))),
        ],
    )
}

fn upserts(rows: Vec<Row>) -> ChangePage {
    ChangePage { upserts: rows, ..ChangePage::default() }
}

fn deletes(ids: Vec<RowId>) -> ChangePage {
    ChangePage { deletes: ids, ..ChangePage::default() }
}

fn token(t: &str) -> ChangeToken {
    ChangeToken(t.to_owned())
}

fn item(id: &str, entity: &str, filter: &str) -> ProfileItem {
    let mut item = ProfileItem::new(ent(entity), filter);
    item.id = Some(crate::ids::ItemId::new(id).unwrap());
    item
}

fn profile(name: &str, role: &str, items: Vec<ProfileItem>) -> Profile {
    Profile { name: ProfileName::new(name).unwrap(), roles: [role.to_owned()].into(), items }
}

fn principal(org: &str, user_n: u128, role: &str) -> Principal {
    Principal::new(user(user_n).to_string(), org_id(org)).with_role(role)
}

/// Creates org `name` with the account schema applied.
async fn setup(store: &Arc<dyn StagingStore>, name: &str) -> Arc<dyn OrgStaging> {
    store.create_org(&org_config(name)).await.expect("create_org");
    let staging = store.org(&org_id(name)).await.expect("org handle after create_org");
    assert_eq!(staging.apply_schema(&account_meta()).await.expect("apply_schema"), SchemaChange::Created);
    staging
}

/// The partition keys `who` holds in the org, as the core computes them.
async fn keys_of(staging: &Arc<dyn OrgStaging>, who: &Principal) -> Vec<PartitionKey> {
    let profiles = staging.profiles().await.unwrap();
    let schemas = staging.schemas().await.unwrap();
    principal_partitions(who, &profiles, &schemas).unwrap().iter().map(|p| p.key()).collect()
}

/// The key of a parameter-free profile item.
fn plain_key(profile: &str, item: &str, entity: &str) -> PartitionKey {
    crate::partition::Partition {
        profile: ProfileName::new(profile).unwrap(),
        item: crate::ids::ItemId::new(item).unwrap(),
        entity: ent(entity),
        params: BTreeMap::new(),
    }
    .key()
}

fn expect_kind<T: Debug>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Err(e) if e.kind() == kind => {}
        Err(e) => panic!("{what}: expected a {kind:?} error, got {e:?}"),
        Ok(v) => panic!("{what}: expected a {kind:?} error, got Ok({v:?})"),
    }
}

fn plan(
    positions: &BTreeMap<PartitionKey, Seq>,
    keys: &[PartitionKey],
    max_rows: usize,
    max_bytes: usize,
) -> PullPlan {
    PullPlan {
        partitions: keys
            .iter()
            .map(|k| (k.clone(), positions.get(k).copied().unwrap_or(Seq::ZERO)))
            .collect(),
        max_rows,
        max_bytes,
    }
}

/// Checks the shape every pull page must have against the plan it answered.
fn assert_page_shape(page: &PullPage, plan: &PullPlan) {
    let planned: Vec<&PartitionKey> = plan.partitions.iter().map(|(k, _)| k).collect();
    let returned: Vec<&PartitionKey> = page.positions.iter().map(|(k, _)| k).collect();
    assert_eq!(returned, planned, "positions must list every planned partition in plan order");
    let mut last: Option<(usize, Seq)> = None;
    for change in &page.changes {
        let idx = planned
            .iter()
            .position(|k| **k == change.partition)
            .unwrap_or_else(|| panic!("pull returned an op of unplanned partition {:?}", change.partition));
        let from = plan.partitions[idx].1;
        let to = page.positions[idx].1;
        assert!(
            change.seq > from && change.seq <= to,
            "op seq {} of {:?} must lie after the planned position {from} and at or below the new position {to}",
            change.seq,
            change.partition
        );
        assert!(change.seq <= page.head, "op seq {} beyond the page head {}", change.seq, page.head);
        if let Some((prev_idx, prev_seq)) = last {
            assert!(
                idx > prev_idx || (idx == prev_idx && change.seq > prev_seq),
                "ops must come partition by partition in plan order, by ascending seq within one"
            );
        }
        last = Some((idx, change.seq));
        if let Some(pulled) = &change.row {
            assert!(
                pulled.values().iter().any(|v| !v.is_null() && v.canonical_text() == change.row_id.as_str()),
                "a put's row must be the row it names: no value of {pulled:?} is the id {}",
                change.row_id
            );
        }
    }
    for ((key, from), (_, to)) in plan.partitions.iter().zip(&page.positions) {
        assert!(to >= from, "position of {key:?} went backwards from {from} to {to}");
        assert!(*to <= page.head, "position of {key:?} beyond the head");
    }
    if page.more {
        assert!(page.checksums.is_none(), "checksums must be absent while more is true");
        assert!(!page.changes.is_empty(), "a page with more = true must return at least one op");
    } else {
        for (key, pos) in &page.positions {
            assert_eq!(*pos, page.head, "with more = false every partition ({key:?}) must be at the head");
        }
        let sums = page.checksums.as_ref().expect("checksums must be present when more is false");
        for key in planned {
            assert!(sums.contains_key(key), "checksums must cover planned partition {key:?}");
        }
    }
    assert!(
        page.changes.len() <= plan.max_rows.max(1),
        "a page returned {} ops for max_rows {}",
        page.changes.len(),
        plan.max_rows
    );
}

/// The rows a client holds per partition, built by applying pulled ops.
#[derive(Clone, Debug, Default, PartialEq)]
struct ClientModel {
    partitions: BTreeMap<PartitionKey, BTreeMap<(EntityName, RowId), StagedRow>>,
    positions: BTreeMap<PartitionKey, Seq>,
}

impl ClientModel {
    fn apply(&mut self, changes: &[PulledChange]) {
        for change in changes {
            let members = self.partitions.entry(change.partition.clone()).or_default();
            let key = (change.entity.clone(), change.row_id.clone());
            match &change.row {
                Some(pulled) => {
                    members.insert(key, pulled.clone().into_staged(change.row_id.clone()));
                }
                None => {
                    members.remove(&key);
                }
            }
        }
    }

    fn checksum(&self, key: &PartitionKey) -> Checksum {
        let mut sum = Checksum::default();
        for ((entity, id), staged) in self.partitions.get(key).into_iter().flatten() {
            sum.add(entity, id, staged.version);
        }
        sum
    }

    fn members(&self, key: &PartitionKey) -> BTreeMap<(EntityName, RowId), StagedRow> {
        self.partitions.get(key).cloned().unwrap_or_default()
    }

    /// Pulls one page with the model's positions; returns the page.
    async fn pull_page(
        &mut self,
        staging: &Arc<dyn OrgStaging>,
        keys: &[PartitionKey],
        max_rows: usize,
        max_bytes: usize,
    ) -> PullPage {
        let plan = plan(&self.positions, keys, max_rows, max_bytes);
        let page = staging.pull(&plan).await.expect("pull");
        assert_page_shape(&page, &plan);
        self.apply(&page.changes);
        for (key, pos) in &page.positions {
            self.positions.insert(key.clone(), *pos);
        }
        if let Some(sums) = &page.checksums {
            for (key, sum) in sums {
                assert_eq!(
                    self.checksum(key),
                    *sum,
                    "the checksum of {key:?} must equal the membership the client now holds"
                );
            }
        }
        page
    }

    /// Pulls until `more` is false; returns every op read and the final page.
    async fn pull_to_end(
        &mut self,
        staging: &Arc<dyn OrgStaging>,
        keys: &[PartitionKey],
        max_rows: usize,
        max_bytes: usize,
    ) -> (Vec<PulledChange>, PullPage) {
        let mut all = Vec::new();
        for _ in 0..100_000 {
            let page = self.pull_page(staging, keys, max_rows, max_bytes).await;
            all.extend(page.changes.iter().cloned());
            if !page.more {
                return (all, page);
            }
        }
        panic!("pull never reached more = false");
    }
}

/// A fresh client's full read of `keys`.
async fn full_read(
    staging: &Arc<dyn OrgStaging>,
    keys: &[PartitionKey],
) -> (ClientModel, Vec<PulledChange>, PullPage) {
    let mut client = ClientModel::default();
    let (ops, last) = client.pull_to_end(staging, keys, usize::MAX, usize::MAX).await;
    (client, ops, last)
}

/// Ids of the rows put into `key` by `ops`.
fn ids_in(ops: &[PulledChange], key: &PartitionKey, puts: bool) -> BTreeSet<RowId> {
    ops.iter().filter(|c| c.partition == *key && c.row.is_some() == puts).map(|c| c.row_id.clone()).collect()
}

fn ids(ns: &[u128]) -> BTreeSet<RowId> {
    ns.iter().map(|n| rid(*n)).collect()
}

/// A small deterministic generator (xorshift64*), so checks need no RNG crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Orgs: creation is idempotent and replaces the configuration while keeping
/// data; `orgs` lists by id; dropping is idempotent; unknown orgs are
/// `NotFound`; a dropped org's handle fails with `NotFound`.
pub async fn check_org_lifecycle(store: Arc<dyn StagingStore>) {
    store.ping().await.expect("ping on a fresh store");
    assert!(store.orgs().await.unwrap().is_empty(), "a fresh store has no orgs");
    expect_kind(
        store.org(&org_id("contoso")).await.map(|_| ()),
        ErrorKind::NotFound,
        "org() of an unknown org",
    );
    expect_kind(
        store.org_config(&org_id("contoso")).await,
        ErrorKind::NotFound,
        "org_config of an unknown org",
    );

    let staging = setup(&store, "contoso").await;
    assert_eq!(staging.org_id(), org_id("contoso"));
    staging.apply_changes(&ent("account"), upserts(vec![account(1, "A", 0, None)])).await.unwrap();

    // Creating again replaces the configuration and keeps the data.
    let mut changed = org_config("contoso");
    changed.sync_interval_secs = 5;
    changed.source.settings.insert("url".into(), "https://crm.example.invalid".into());
    store.create_org(&changed).await.expect("create_org of an existing org is idempotent");
    assert_eq!(
        store.org_config(&org_id("contoso")).await.unwrap(),
        changed,
        "configuration must be replaced"
    );
    let again = store.org(&org_id("contoso")).await.unwrap();
    assert!(
        again.row(&ent("account"), &rid(1)).await.unwrap().is_some(),
        "re-creating must keep staged rows"
    );
    assert_eq!(again.schemas().await.unwrap(), vec![account_meta()], "re-creating must keep schemas");

    // Listing is ordered by id.
    store.create_org(&org_config("adatum")).await.unwrap();
    store.create_org(&org_config("fabrikam")).await.unwrap();
    let listed: Vec<OrgId> = store.orgs().await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(listed, vec![org_id("adatum"), org_id("contoso"), org_id("fabrikam")], "orgs() ordered by id");

    // Dropping.
    store.drop_org(&org_id("contoso")).await.expect("drop_org");
    store.drop_org(&org_id("contoso")).await.expect("dropping a dropped org succeeds");
    store.drop_org(&org_id("never_created")).await.expect("dropping an unknown org succeeds");
    expect_kind(store.org(&org_id("contoso")).await.map(|_| ()), ErrorKind::NotFound, "org() after drop");
    expect_kind(store.org_config(&org_id("contoso")).await, ErrorKind::NotFound, "org_config after drop");
    expect_kind(staging.schemas().await, ErrorKind::NotFound, "an old handle's schemas() after drop");
    expect_kind(
        staging.row(&ent("account"), &rid(1)).await,
        ErrorKind::NotFound,
        "an old handle's row() after drop",
    );
    expect_kind(
        staging.apply_changes(&ent("account"), upserts(vec![account(2, "B", 0, None)])).await,
        ErrorKind::NotFound,
        "an old handle's apply_changes() after drop",
    );
    let listed: Vec<OrgId> = store.orgs().await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(listed, vec![org_id("adatum"), org_id("fabrikam")], "a dropped org is no longer listed");
    store.ping().await.expect("ping");
}

/// The org directory: set, read, replace and remove locations, independent
/// of hosted orgs.
pub async fn check_org_directory(store: Arc<dyn StagingStore>) {
    let remote = org_id("remote_org");
    assert_eq!(store.org_location(&remote).await.unwrap(), None, "no location before one is set");
    store.set_org_location(&remote, Some("https://eu.sync.example.invalid".into())).await.unwrap();
    assert_eq!(
        store.org_location(&remote).await.unwrap().as_deref(),
        Some("https://eu.sync.example.invalid")
    );
    assert!(store.orgs().await.unwrap().is_empty(), "a directory entry does not host an org");
    expect_kind(store.org(&remote).await.map(|_| ()), ErrorKind::NotFound, "org() of a directory-only org");

    store.set_org_location(&remote, Some("https://us.sync.example.invalid".into())).await.unwrap();
    assert_eq!(
        store.org_location(&remote).await.unwrap().as_deref(),
        Some("https://us.sync.example.invalid"),
        "setting again replaces the location"
    );
    let other = org_id("other_org");
    store.set_org_location(&other, Some("https://ap.sync.example.invalid".into())).await.unwrap();
    store.set_org_location(&remote, None).await.unwrap();
    assert_eq!(store.org_location(&remote).await.unwrap(), None, "None removes the entry");
    assert_eq!(
        store.org_location(&other).await.unwrap().as_deref(),
        Some("https://ap.sync.example.invalid"),
        "removing one entry keeps the others"
    );
    store.set_org_location(&remote, None).await.expect("removing an absent entry succeeds");

    // Hosting an org does not touch the directory, nor does dropping one.
    store.create_org(&org_config("other_org")).await.unwrap();
    store.drop_org(&other).await.unwrap();
    assert_eq!(store.org_location(&other).await.unwrap().as_deref(), Some("https://ap.sync.example.invalid"));
}

/// Schemas: create, unchanged, add, remove and retype columns; values that
/// convert are kept, others become null; removed columns leave the rows;
/// the schema version counts changes; `schemas` is ordered by name.
pub async fn check_schema_evolution(store: Arc<dyn StagingStore>) {
    store.create_org(&org_config("contoso")).await.unwrap();
    let staging = store.org(&org_id("contoso")).await.unwrap();
    assert_eq!(staging.schema_version().await.unwrap(), 0, "schema version 0 before any schema");
    assert!(staging.schemas().await.unwrap().is_empty());

    let v1 = EntityMetadata::new(
        ent("product"),
        col("productid"),
        vec![
            attr("productid", AttributeType::String),
            attr("name", AttributeType::String),
            attr("price", AttributeType::String),
            attr("stock", AttributeType::Integer),
            attr("notes", AttributeType::String),
        ],
    )
    .unwrap();
    assert_eq!(staging.apply_schema(&contact_meta()).await.unwrap(), SchemaChange::Created);
    assert_eq!(staging.apply_schema(&v1).await.unwrap(), SchemaChange::Created);
    assert_eq!(staging.schema_version().await.unwrap(), 2, "each created entity bumps the version");
    assert_eq!(staging.apply_schema(&v1).await.unwrap(), SchemaChange::Unchanged);
    assert_eq!(staging.schema_version().await.unwrap(), 2, "an unchanged schema keeps the version");
    let names: Vec<EntityName> = staging.schemas().await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec![ent("contact"), ent("product")], "schemas() ordered by entity name");

    let row = |id: &str, price: &str, stock: i64| {
        Row::new(
            RowId::new(id).unwrap(),
            [
                (col("name"), Value::from(format!("product {id}"))),
                (col("price"), Value::from(price)),
                (col("stock"), Value::Integer(stock)),
                (col("notes"), Value::from("fragile")),
            ],
        )
    };
    staging
        .apply_changes(&ent("product"), upserts(vec![row("p1", "12.50", 7), row("p2", "call us", -3)]))
        .await
        .unwrap();

    // Add a column, remove one, retype two.
    let mut v2 = v1.clone();
    v2.attributes.retain(|a| a.name.as_str() != "notes");
    for a in &mut v2.attributes {
        match a.name.as_str() {
            "price" => a.ty = AttributeType::Decimal,
            "stock" => a.ty = AttributeType::Float,
            _ => {}
        }
    }
    v2.attributes.push(attr("barcode", AttributeType::String));
    assert_eq!(staging.apply_schema(&v2).await.unwrap(), SchemaChange::Altered);
    assert_eq!(staging.schema_version().await.unwrap(), 3, "an altered schema bumps the version");
    assert_eq!(staging.apply_schema(&v2).await.unwrap(), SchemaChange::Unchanged);
    assert_eq!(staging.schema_version().await.unwrap(), 3);
    let product = staging.schemas().await.unwrap().into_iter().find(|m| m.name == ent("product")).unwrap();
    assert_eq!(product, v2, "schemas() returns the applied metadata");

    let p1 = staging.row(&ent("product"), &RowId::new("p1").unwrap()).await.unwrap().expect("p1 kept");
    let p2 = staging.row(&ent("product"), &RowId::new("p2").unwrap()).await.unwrap().expect("p2 kept");
    assert_eq!(
        p1.row.get("price"),
        Some(&Value::Decimal("12.5".parse().unwrap())),
        "'12.50' converts to decimal"
    );
    assert_eq!(p2.row.get("price"), Some(&Value::Null), "'call us' does not convert to decimal: null");
    assert_eq!(p1.row.get("stock"), Some(&Value::Float(7.0)), "integer 7 converts to float");
    assert_eq!(p2.row.get("stock"), Some(&Value::Float(-3.0)));
    assert_eq!(p1.row.get("name"), Some(&Value::from("product p1")), "untouched columns keep their values");
    assert_eq!(p1.row.get("barcode"), Some(&Value::Null), "an added column is null");
    assert_eq!(p1.row.get("notes"), None, "a removed column leaves the rows");
    assert_eq!(p1.row.values.len(), v2.attributes.len(), "a row holds exactly the schema's columns");
    assert_eq!(p1.row.get("productid"), Some(&Value::from("p1")), "the key column is kept");

    // Rows written after the change follow the new schema.
    let mut r3 = Row::new(RowId::new("p3").unwrap(), [(col("price"), Value::from("3.25"))]);
    r3.values.insert(col("barcode"), Value::from("4006381333931"));
    staging.apply_changes(&ent("product"), upserts(vec![r3])).await.unwrap();
    let old_column = Row::new(RowId::new("p4").unwrap(), [(col("notes"), Value::from("x"))]);
    expect_kind(
        staging.apply_changes(&ent("product"), upserts(vec![old_column])).await,
        ErrorKind::InvalidInput,
        "a row with a removed column",
    );
    let p3 = staging.row(&ent("product"), &RowId::new("p3").unwrap()).await.unwrap().unwrap();
    assert_eq!(p3.row.get("price"), Some(&Value::Decimal("3.25".parse().unwrap())));
}

/// A schema change that drops a column re-versions exactly the rows that
/// held a value in it, with puts to their partitions, so a client that
/// misses the schema version (the column dropped, then added again) is
/// still sent the row without the old value.
pub async fn check_dropped_values_reversion_rows(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.put_profile(&profile("all", "rep", vec![item("acc", "account", "")])).await.unwrap();
    let mut with_note = account(1, "a", 0, None);
    with_note.values.insert(col("description"), Value::from("keep me?"));
    let plain = account(2, "b", 0, None);
    staging.apply_changes(&ent("account"), upserts(vec![with_note, plain])).await.unwrap();
    let v1 = staging.row(&ent("account"), &rid(1)).await.unwrap().unwrap().version;
    let v2 = staging.row(&ent("account"), &rid(2)).await.unwrap().unwrap().version;
    let head = staging.head().await.unwrap();

    let mut dropped = account_meta();
    dropped.attributes.retain(|a| a.name.as_str() != "description");
    staging.apply_schema(&dropped).await.unwrap();
    let r1 = staging.row(&ent("account"), &rid(1)).await.unwrap().unwrap();
    let r2 = staging.row(&ent("account"), &rid(2)).await.unwrap().unwrap();
    assert!(r1.version > v1, "a row that lost a value in the dropped column gets a new version");
    assert_eq!(r2.version, v2, "a row whose dropped column was null keeps its version");
    assert!(r1.row.get("description").is_none_or(Value::is_null));
    let key = plain_key("all", "acc", "account");
    let page = staging
        .pull(&PullPlan { partitions: vec![(key.clone(), head)], max_rows: 100, max_bytes: 1 << 20 })
        .await
        .unwrap();
    let puts = ids_in(&page.changes, &key, true);
    assert_eq!(puts, BTreeSet::from([rid(1)]), "the re-versioned row is put again, the other is not");

    // Added back: values stay null, nothing is re-versioned.
    staging.apply_schema(&account_meta()).await.unwrap();
    let again = staging.row(&ent("account"), &rid(1)).await.unwrap().unwrap();
    assert_eq!(again.version, r1.version);
    assert!(again.row.get("description").is_none_or(Value::is_null), "a re-added column starts null");
}

/// Invalid metadata (duplicate columns, a missing or ill-typed key, too many
/// columns) is refused and changes nothing; hostile identifiers cannot even
/// be expressed; unknown entities are `NotFound`.
pub async fn check_invalid_schema_rejected(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.apply_changes(&ent("account"), upserts(vec![account(1, "A", 0, Some(1))])).await.unwrap();
    let version = staging.schema_version().await.unwrap();
    let head = staging.head().await.unwrap();
    let before_row = staging.row(&ent("account"), &rid(1)).await.unwrap();

    let base = account_meta();
    let mut duplicate = base.clone();
    duplicate.attributes.push(attr("NAME", AttributeType::Integer));
    let mut missing_key = base.clone();
    missing_key.primary_key = col("nosuchcolumn");
    let mut bad_key_type = base.clone();
    bad_key_type.primary_key = col("revenue");
    let mut too_many = base.clone();
    too_many.attributes.extend((0..MAX_ATTRIBUTES).map(|i| attr(&format!("c{i}"), AttributeType::String)));
    let mut new_and_bad = contact_meta();
    new_and_bad.primary_key = col("fullname_missing");

    for (what, meta) in [
        ("a duplicate column differing only in case", duplicate),
        ("a primary key that is not an attribute", missing_key),
        ("a decimal primary key", bad_key_type),
        ("more than MAX_ATTRIBUTES columns", too_many),
        ("a new entity with a missing key", new_and_bad),
    ] {
        let result = staging.apply_schema(&meta).await;
        match result {
            Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::LimitExceeded) => {}
            other => panic!("apply_schema with {what}: expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(staging.schema_version().await.unwrap(), version, "rejected schemas keep the schema version");
    assert_eq!(staging.schemas().await.unwrap(), vec![account_meta()], "rejected schemas change no schema");
    assert_eq!(staging.head().await.unwrap(), head, "rejected schemas take no seq");
    assert_eq!(
        staging.row(&ent("account"), &rid(1)).await.unwrap(),
        before_row,
        "rejected schemas keep rows"
    );

    // Hostile identifiers never reach a store: they do not deserialize.
    for hostile in ["account; drop table x", "a\"b", "a]b", "x--", "", "1abc"] {
        let json = serde_json::json!({
            "name": hostile,
            "primary_key": "id",
            "attributes": [{"name": "id", "type": "string"}],
        });
        assert!(
            serde_json::from_value::<EntityMetadata>(json).is_err(),
            "entity name {hostile:?} must not parse"
        );
        let json = serde_json::json!({
            "name": "ok",
            "primary_key": "id",
            "attributes": [{"name": "id", "type": "string"}, {"name": hostile, "type": "string"}],
        });
        assert!(
            serde_json::from_value::<EntityMetadata>(json).is_err(),
            "column name {hostile:?} must not parse"
        );
    }

    // Unknown entities.
    expect_kind(
        staging.apply_changes(&ent("nosuchentity"), upserts(vec![])).await,
        ErrorKind::NotFound,
        "apply_changes to an unstaged entity",
    );
    expect_kind(
        staging.row(&ent("nosuchentity"), &rid(1)).await,
        ErrorKind::NotFound,
        "row() of an unstaged entity",
    );
    expect_kind(
        staging.row_ids(&ent("nosuchentity"), None, 10).await,
        ErrorKind::NotFound,
        "row_ids() of an unstaged entity",
    );
}

/// Rows: `row` returns the canonical row with its version; `row_ids` pages
/// through ids in ascending order.
pub async fn check_row_access(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    assert_eq!(staging.head().await.unwrap(), Seq::ZERO, "a fresh org's head is zero");
    let out =
        staging.apply_changes(&ent("account"), upserts(vec![account(7, "Seven", 0, Some(1))])).await.unwrap();
    assert_eq!(out.upserted, 1);
    assert!(out.head > Seq::ZERO, "a change advances the head");
    assert_eq!(staging.head().await.unwrap(), out.head, "head() equals the outcome's head");
    let staged = staging.row(&ent("account"), &rid(7)).await.unwrap().expect("row staged");
    assert_eq!(staged.version, out.head, "a row written alone gets the head as its version");
    assert_eq!(
        staged.row,
        account_meta().check_row(account(7, "Seven", 0, Some(1))).unwrap(),
        "canonical row"
    );
    assert_eq!(staged.row.get("accountid"), Some(&Value::Uuid(uuid(7))), "the key column holds the id");
    assert_eq!(staged.row.get("revenue"), Some(&Value::Null), "missing columns are null");
    assert!(staging.row(&ent("account"), &rid(8)).await.unwrap().is_none(), "an absent row is None");

    let rows: Vec<Row> = (100..125).map(|n| account(n, "bulk", 1, None)).collect();
    staging.apply_changes(&ent("account"), upserts(rows)).await.unwrap();
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = staging.row_ids(&ent("account"), after.clone(), 10).await.unwrap();
        assert!(page.len() <= 10, "row_ids honours its limit");
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        all.extend(page);
    }
    let mut expected: Vec<RowId> = (100..125).map(rid).collect();
    expected.push(rid(7));
    expected.sort();
    assert_eq!(all, expected, "row_ids pages through every id in ascending order, each once");
    assert!(staging.row_ids(&ent("account"), None, 0).await.unwrap().is_empty(), "limit 0 gives nothing");
}

/// A page with one bad row changes nothing: no row, no delete, no seq, no
/// token.
pub async fn check_apply_is_atomic(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.put_profile(&profile("all", "sales", vec![item("all", "account", "")])).await.unwrap();
    let first = ChangePage {
        upserts: (1..=3).map(|n| account(n, "orig", 0, None)).collect(),
        next_token: Some(token("t1")),
        ..ChangePage::default()
    };
    let out = staging.apply_changes(&ent("account"), first).await.unwrap();
    let key = plain_key("all", "all", "account");
    let (before, _, _) = full_read(&staging, std::slice::from_ref(&key)).await;

    let mut bad_type = account(5, "bad", 0, None);
    bad_type.values.insert(col("statecode"), Value::from("not a number"));
    let mut unknown_column = account(6, "bad", 0, None);
    unknown_column.values.insert(col("nosuchcolumn"), Value::Integer(1));
    let bad_id = Row::new(RowId::new("not-a-uuid").unwrap(), [(col("name"), Value::from("bad"))]);
    for (what, bad) in
        [("an ill-typed value", bad_type), ("an unknown column", unknown_column), ("a bad key", bad_id)]
    {
        let page = ChangePage {
            upserts: vec![account(1, "changed", 1, None), account(4, "new", 0, None), bad],
            deletes: vec![rid(2)],
            next_token: Some(token("t2")),
            more: false,
        };
        expect_kind(staging.apply_changes(&ent("account"), page).await, ErrorKind::InvalidInput, what);
        assert_eq!(staging.head().await.unwrap(), out.head, "{what}: a failed page takes no seq");
        assert_eq!(
            staging.source_token(&ent("account")).await.unwrap(),
            Some(token("t1")),
            "{what}: a failed page keeps the token"
        );
        let r1 = staging.row(&ent("account"), &rid(1)).await.unwrap().unwrap();
        assert_eq!(r1.row.get("name"), Some(&Value::from("orig")), "{what}: a failed page changes no row");
        assert!(
            staging.row(&ent("account"), &rid(2)).await.unwrap().is_some(),
            "{what}: a failed page deletes nothing"
        );
        assert!(
            staging.row(&ent("account"), &rid(4)).await.unwrap().is_none(),
            "{what}: a failed page inserts nothing"
        );
        let (after, _, _) = full_read(&staging, std::slice::from_ref(&key)).await;
        assert_eq!(after.partitions, before.partitions, "{what}: a failed page changes no membership");
    }
    let status = staging.status().await.unwrap();
    let account_status = status.entities.iter().find(|e| e.entity == ent("account")).unwrap();
    assert_eq!(account_status.rows, 3, "a failed page changes no row count");
}

/// The token commits with its page; a page without one keeps the stored
/// token; a token-only page commits the token.
pub async fn check_source_token_commits_with_rows(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.apply_schema(&contact_meta()).await.unwrap();
    assert_eq!(staging.source_token(&ent("account")).await.unwrap(), None, "no token before the first page");

    let page = ChangePage {
        upserts: vec![account(1, "A", 0, None)],
        next_token: Some(token("t1")),
        more: true,
        ..Default::default()
    };
    staging.apply_changes(&ent("account"), page).await.unwrap();
    assert_eq!(staging.source_token(&ent("account")).await.unwrap(), Some(token("t1")));
    assert!(staging.row(&ent("account"), &rid(1)).await.unwrap().is_some(), "rows commit with the token");

    let page = ChangePage { upserts: vec![account(2, "B", 0, None)], next_token: None, ..Default::default() };
    staging.apply_changes(&ent("account"), page).await.unwrap();
    assert_eq!(
        staging.source_token(&ent("account")).await.unwrap(),
        Some(token("t1")),
        "None keeps the token"
    );
    assert!(staging.row(&ent("account"), &rid(2)).await.unwrap().is_some());

    let page = ChangePage { next_token: Some(token("t2")), ..Default::default() };
    let head = staging.head().await.unwrap();
    staging.apply_changes(&ent("account"), page).await.unwrap();
    assert_eq!(staging.source_token(&ent("account")).await.unwrap(), Some(token("t2")), "a token-only page");
    assert_eq!(staging.head().await.unwrap(), head, "a token-only page takes no seq");

    // Tokens are per entity.
    assert_eq!(
        staging.source_token(&ent("contact")).await.unwrap(),
        None,
        "another entity's token is untouched"
    );
    let page = ChangePage { next_token: Some(token("c1")), ..Default::default() };
    staging.apply_changes(&ent("contact"), page).await.unwrap();
    assert_eq!(staging.source_token(&ent("contact")).await.unwrap(), Some(token("c1")));
    assert_eq!(staging.source_token(&ent("account")).await.unwrap(), Some(token("t2")));

    let status = staging.status().await.unwrap();
    let tokens: BTreeMap<EntityName, Option<ChangeToken>> =
        status.entities.into_iter().map(|e| (e.entity, e.token)).collect();
    assert_eq!(tokens.get(&ent("account")), Some(&Some(token("t2"))), "status reports the token");
    assert_eq!(tokens.get(&ent("contact")), Some(&Some(token("c1"))));
}

/// Upserting a row identical to the staged one (in any spelling that
/// canonicalises equal) is `unchanged`: no seq, no version, no op.
pub async fn check_unchanged_upserts_take_no_seq(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.put_profile(&profile("all", "sales", vec![item("all", "account", "")])).await.unwrap();
    let rows: Vec<Row> = (1..=5).map(|n| account(n, "same", 0, Some(1))).collect();
    let first = staging.apply_changes(&ent("account"), upserts(rows.clone())).await.unwrap();
    assert_eq!((first.upserted, first.unchanged), (5, 0));
    let v1 = staging.row(&ent("account"), &rid(1)).await.unwrap().unwrap().version;

    let again = staging.apply_changes(&ent("account"), upserts(rows)).await.unwrap();
    assert_eq!(
        (again.upserted, again.unchanged, again.deleted),
        (0, 5, 0),
        "identical upserts are unchanged"
    );
    assert_eq!(again.head, first.head, "unchanged upserts take no seq");
    assert_eq!(staging.head().await.unwrap(), first.head);

    // Other spellings of the same row: upper-case key, explicit nulls, a
    // decimal written differently.
    let mut spelled = Row::new(
        RowId::new(uuid(1).to_string().to_uppercase()).unwrap(),
        [
            (col("name"), Value::from("same")),
            (col("statecode"), Value::Integer(0)),
            (col("ownerid"), Value::from(user(1).to_string().to_uppercase())),
            (col("revenue"), Value::Null),
        ],
    );
    spelled.values.insert(col("description"), Value::Null);
    let out = staging.apply_changes(&ent("account"), upserts(vec![spelled])).await.unwrap();
    assert_eq!((out.upserted, out.unchanged), (0, 1), "a canonically equal row is unchanged");
    assert_eq!(staging.row(&ent("account"), &rid(1)).await.unwrap().unwrap().version, v1, "version kept");

    let mut revenue = account(2, "same", 0, Some(1));
    revenue.values.insert(col("revenue"), Value::from("10.50"));
    let changed = staging.apply_changes(&ent("account"), upserts(vec![revenue])).await.unwrap();
    assert_eq!((changed.upserted, changed.unchanged), (1, 0));
    assert!(changed.head > first.head);
    let mut revenue = account(2, "same", 0, Some(1));
    revenue.values.insert(col("revenue"), Value::from("10.5"));
    let same = staging.apply_changes(&ent("account"), upserts(vec![revenue])).await.unwrap();
    assert_eq!((same.upserted, same.unchanged), (0, 1), "10.50 and 10.5 are the same decimal");

    // Only the changed row produced an op.
    let key = plain_key("all", "all", "account");
    let mut positions = BTreeMap::new();
    positions.insert(key.clone(), first.head);
    let page = staging.pull(&plan(&positions, std::slice::from_ref(&key), 100, usize::MAX)).await.unwrap();
    let pulled: Vec<RowId> = page.changes.iter().map(|c| c.row_id.clone()).collect();
    assert_eq!(pulled, vec![rid(2)], "only the changed row has a new op");
}

/// Deletes remove rows and leave a remove op in every partition that held
/// them; unknown ids are ignored; an id upserted and deleted in one page
/// ends deleted; a full read holds one op per row.
pub async fn check_deletes_produce_removes(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging
        .put_profile(&profile(
            "sales",
            "sales",
            vec![item("all", "account", ""), item("open", "account", "statecode eq 0")],
        ))
        .await
        .unwrap();
    let all = plain_key("sales", "all", "account");
    let open = plain_key("sales", "open", "account");
    let keys = vec![all.clone(), open.clone()];
    let rows = vec![
        account(1, "a", 0, None),
        account(2, "b", 1, None),
        account(3, "c", 0, None),
        account(4, "d", 1, None),
    ];
    staging.apply_changes(&ent("account"), upserts(rows)).await.unwrap();
    let mut client = ClientModel::default();
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert_eq!(client.members(&all).len(), 4);
    assert_eq!(client.members(&open).len(), 2);

    let out = staging.apply_changes(&ent("account"), deletes(vec![rid(1), rid(2), rid(99)])).await.unwrap();
    assert_eq!(out.deleted, 2, "only staged ids count as deleted");
    assert!(staging.row(&ent("account"), &rid(1)).await.unwrap().is_none(), "a deleted row is gone");
    let (ops, _) = client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &all, false), ids(&[1, 2]), "removes in 'all' for both deleted rows");
    assert_eq!(ids_in(&ops, &open, false), ids(&[1]), "a remove in 'open' only for the row it held");
    assert!(ids_in(&ops, &all, true).is_empty() && ids_in(&ops, &open, true).is_empty(), "no puts");
    assert!(ops.iter().all(|c| c.row.is_none()), "removes carry no row");

    // Upserted and deleted in one page: ends deleted.
    let page = ChangePage {
        upserts: vec![account(5, "e", 0, None), account(3, "c2", 0, None)],
        deletes: vec![rid(5), rid(3)],
        ..Default::default()
    };
    staging.apply_changes(&ent("account"), page).await.unwrap();
    assert!(
        staging.row(&ent("account"), &rid(5)).await.unwrap().is_none(),
        "upsert then delete ends deleted"
    );
    assert!(
        staging.row(&ent("account"), &rid(3)).await.unwrap().is_none(),
        "upsert then delete ends deleted"
    );
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert_eq!(client.members(&all).keys().map(|(_, id)| id.clone()).collect::<BTreeSet<_>>(), ids(&[4]));
    assert!(client.members(&open).is_empty());

    // A full read compacts: one op per (partition, row), the latest.
    let (_, full_ops, _) = full_read(&staging, &keys).await;
    for key in &keys {
        let mut seen = BTreeSet::new();
        for op in full_ops.iter().filter(|c| c.partition == *key) {
            assert!(
                seen.insert(op.row_id.clone()),
                "row {} appears twice in {key:?} in a full read",
                op.row_id
            );
        }
    }
    assert_eq!(ids_in(&full_ops, &all, true), ids(&[4]));
}

/// Asserts that `ops` (a full read) hold at most one op per (partition,
/// row), as the store keeps only the latest.
fn assert_one_op_per_row(ops: &[PulledChange], what: &str) {
    let mut seen = BTreeSet::new();
    for op in ops {
        assert!(
            seen.insert((op.partition.clone(), op.entity.clone(), op.row_id.clone())),
            "{what}: row {} appears twice in {:?} in a full read",
            op.row_id,
            op.partition
        );
    }
}

/// A row deleted and then created again with the same id keeps one entry per
/// (partition, row): the new put replaces the tombstone in every partition
/// it enters; a tombstone in a partition it does not enter stays (one
/// entry) and is replaced when the row enters it later. Clients that pulled
/// the delete and fresh clients converge, checksums included.
pub async fn check_recreated_rows_replace_their_tombstones(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging
        .put_profile(&profile(
            "sales",
            "sales",
            vec![item("all", "account", ""), item("open", "account", "statecode eq 0")],
        ))
        .await
        .unwrap();
    let all = plain_key("sales", "all", "account");
    let open = plain_key("sales", "open", "account");
    let keys = vec![all.clone(), open.clone()];
    let member_ids = |m: &ClientModel, k: &PartitionKey| {
        m.members(k).into_keys().map(|(_, id)| id).collect::<BTreeSet<_>>()
    };
    staging
        .apply_changes(
            &ent("account"),
            upserts(vec![account(1, "a", 0, None), account(2, "b", 0, None), account(3, "c", 1, None)]),
        )
        .await
        .unwrap();
    let mut client = ClientModel::default();
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    staging.apply_changes(&ent("account"), deletes(vec![rid(1), rid(2), rid(3)])).await.unwrap();
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert!(member_ids(&client, &all).is_empty(), "every row is deleted");

    // Created again: 1 as it was, 2 closed (not in 'open'), 3 open (in
    // 'open' for the first time).
    staging
        .apply_changes(
            &ent("account"),
            upserts(vec![account(1, "a2", 0, None), account(2, "b2", 1, None), account(3, "c2", 0, None)]),
        )
        .await
        .unwrap();
    let (ops, _) = client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &all, true), ids(&[1, 2, 3]), "the created rows are put into 'all'");
    assert_eq!(ids_in(&ops, &open, true), ids(&[1, 3]), "the open ones are put into 'open'");
    let (fresh, full_ops, _) = full_read(&staging, &keys).await;
    assert_one_op_per_row(&full_ops, "after the rows were created again");
    assert_eq!(ids_in(&full_ops, &all, false), ids(&[]), "no tombstone is left beside a put in 'all'");
    assert_eq!(ids_in(&full_ops, &open, false), ids(&[2]), "2's tombstone stays where 2 is not");
    assert_eq!(fresh.partitions, client.partitions, "fresh and incremental reads agree");
    assert_eq!(member_ids(&client, &open), ids(&[1, 3]));

    // 2 opens: its put replaces the tombstone it left in 'open'.
    staging.apply_changes(&ent("account"), upserts(vec![account(2, "b3", 0, None)])).await.unwrap();
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    let (fresh, full_ops, _) = full_read(&staging, &keys).await;
    assert_one_op_per_row(&full_ops, "after the re-created row entered another partition");
    assert!(full_ops.iter().all(|c| c.row.is_some()), "no tombstones are left");
    assert_eq!(fresh.partitions, client.partitions);
    assert_eq!(member_ids(&client, &open), ids(&[1, 2, 3]));

    // Deleted and created again once more, across pages and in one page
    // with other rows: still one entry per (partition, row).
    for round in 0..2 {
        staging.apply_changes(&ent("account"), deletes(vec![rid(1), rid(2)])).await.unwrap();
        let name = format!("round {round}");
        staging
            .apply_changes(
                &ent("account"),
                upserts(vec![
                    account(1, &name, 1, None),
                    account(2, &name, 0, None),
                    account(4, &name, 0, None),
                ]),
            )
            .await
            .unwrap();
    }
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    let (fresh, full_ops, _) = full_read(&staging, &keys).await;
    assert_one_op_per_row(&full_ops, "after repeated deletes and re-creations");
    assert_eq!(ids_in(&full_ops, &open, false), ids(&[1]), "1 left 'open' and is closed now");
    assert_eq!(fresh.partitions, client.partitions);
    assert_eq!(member_ids(&client, &all), ids(&[1, 2, 3, 4]));
    assert_eq!(member_ids(&client, &open), ids(&[2, 3, 4]));

    // After the tombstones are purged, a row created again is simply new.
    staging.apply_changes(&ent("account"), deletes(vec![rid(4)])).await.unwrap();
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    let head = staging.head().await.unwrap();
    staging.purge_tombstones(head).await.unwrap();
    staging.apply_changes(&ent("account"), upserts(vec![account(4, "d", 0, None)])).await.unwrap();
    client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    let (fresh, full_ops, _) = full_read(&staging, &keys).await;
    assert_one_op_per_row(&full_ops, "after a purge");
    assert_eq!(fresh.partitions, client.partitions);
    assert_eq!(member_ids(&client, &open), ids(&[2, 3, 4]));
}

/// Move-outs: a row whose filtered column changes leaves one partition and
/// enters another, with per-user partitions from `ownerid eq @user.id`.
pub async fn check_move_outs(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging
        .put_profile(&profile(
            "sales",
            "sales",
            vec![item("active", "account", "statecode eq 0"), item("mine", "account", "ownerid eq @user.id")],
        ))
        .await
        .unwrap();
    let alice = principal("contoso", 1, "sales");
    let bob = principal("contoso", 2, "sales");
    let alice_keys = keys_of(&staging, &alice).await;
    let bob_keys = keys_of(&staging, &bob).await;
    assert_eq!(alice_keys.len(), 2, "alice holds 'active' and her own 'mine'");
    let active = plain_key("sales", "active", "account");
    assert!(alice_keys.contains(&active) && bob_keys.contains(&active), "'active' is shared");
    let alice_mine = alice_keys.iter().find(|k| **k != active).unwrap().clone();
    let bob_mine = bob_keys.iter().find(|k| **k != active).unwrap().clone();
    assert_ne!(alice_mine, bob_mine, "each user has a partition of their own");

    staging
        .apply_changes(
            &ent("account"),
            upserts(vec![account(1, "A", 0, Some(1)), account(2, "B", 1, Some(2)), account(3, "C", 0, None)]),
        )
        .await
        .unwrap();
    let mut a = ClientModel::default();
    let mut b = ClientModel::default();
    a.pull_to_end(&staging, &alice_keys, 100, usize::MAX).await;
    b.pull_to_end(&staging, &bob_keys, 100, usize::MAX).await;
    let member_ids = |m: &ClientModel, k: &PartitionKey| {
        m.members(k).into_keys().map(|(_, id)| id).collect::<BTreeSet<_>>()
    };
    assert_eq!(member_ids(&a, &active), ids(&[1, 3]));
    assert_eq!(member_ids(&a, &alice_mine), ids(&[1]));
    assert_eq!(member_ids(&b, &bob_mine), ids(&[2]), "a null owner is in nobody's partition");

    // A is closed: it leaves 'active', stays in alice's 'mine' at a new version.
    staging.apply_changes(&ent("account"), upserts(vec![account(1, "A", 1, Some(1))])).await.unwrap();
    let (ops, _) = a.pull_to_end(&staging, &alice_keys, 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &active, false), ids(&[1]), "closing A removes it from 'active'");
    assert_eq!(ids_in(&ops, &alice_mine, true), ids(&[1]), "A stays in alice's partition with a put");
    let version = staging.row(&ent("account"), &rid(1)).await.unwrap().unwrap().version;
    assert_eq!(
        a.members(&alice_mine).values().next().unwrap().version,
        version,
        "the put carries the new version"
    );

    // A is reassigned to bob: it leaves alice's partition and enters bob's.
    staging.apply_changes(&ent("account"), upserts(vec![account(1, "A", 1, Some(2))])).await.unwrap();
    let (ops, _) = a.pull_to_end(&staging, &alice_keys, 100, usize::MAX).await;
    assert_eq!(
        ids_in(&ops, &alice_mine, false),
        ids(&[1]),
        "reassigning A removes it from alice's partition"
    );
    assert!(
        ids_in(&ops, &active, true).is_empty() && ids_in(&ops, &active, false).is_empty(),
        "'active' is untouched"
    );
    let (ops, _) = b.pull_to_end(&staging, &bob_keys, 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &bob_mine, true), ids(&[1]), "A enters bob's partition");
    assert!(ids_in(&ops, &active, true).is_empty(), "A is not active");
    assert_eq!(member_ids(&a, &alice_mine), ids(&[]));
    assert_eq!(member_ids(&a, &active), ids(&[3]));
    assert_eq!(member_ids(&b, &bob_mine), ids(&[1, 2]));

    // Reopened and unassigned: back in 'active', out of bob's partition.
    staging.apply_changes(&ent("account"), upserts(vec![account(1, "A", 0, None)])).await.unwrap();
    b.pull_to_end(&staging, &bob_keys, 100, usize::MAX).await;
    assert_eq!(member_ids(&b, &bob_mine), ids(&[2]));
    assert_eq!(member_ids(&b, &active), ids(&[1, 3]));

    // Fresh reads agree with the incremental ones.
    let (fresh_b, _, _) = full_read(&staging, &bob_keys).await;
    assert_eq!(fresh_b.partitions.get(&bob_mine), b.partitions.get(&bob_mine));
    assert_eq!(fresh_b.partitions.get(&active), b.partitions.get(&active));
}

/// Profiles: put (replace), get, list by name, delete; invalid profiles are
/// refused with `InvalidInput` and change nothing.
pub async fn check_profiles_crud(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    assert!(staging.profiles().await.unwrap().is_empty());
    expect_kind(
        staging.profile(&ProfileName::new("sales").unwrap()).await,
        ErrorKind::NotFound,
        "an absent profile",
    );

    let sales = profile("sales", "sales", vec![item("open", "account", "statecode eq 0")]);
    let audit = profile("audit", "auditor", vec![item("all", "account", "")]);
    staging.put_profile(&sales).await.unwrap();
    staging.put_profile(&audit).await.unwrap();
    assert_eq!(staging.profile(&sales.name).await.unwrap(), sales);
    let names: Vec<ProfileName> = staging.profiles().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, vec![audit.name.clone(), sales.name.clone()], "profiles() ordered by name");

    let mut replaced = sales.clone();
    replaced.items[0].filter = "statecode eq 1".into();
    replaced.roles.insert("manager".into());
    staging.put_profile(&replaced).await.unwrap();
    assert_eq!(
        staging.profile(&sales.name).await.unwrap(),
        replaced,
        "put replaces a profile of the same name"
    );
    assert_eq!(staging.profiles().await.unwrap().len(), 2);

    staging.apply_changes(&ent("account"), upserts(vec![account(1, "A", 0, Some(1))])).await.unwrap();
    let head = staging.head().await.unwrap();
    let invalid = [
        ("an unknown entity", profile("bad", "r", vec![item("x", "nosuchentity", "")])),
        ("an unknown column", profile("bad", "r", vec![item("x", "account", "nosuchcolumn eq 1")])),
        ("a syntax error", profile("bad", "r", vec![item("x", "account", "statecode eq eq 0")])),
        (
            "a literal of the wrong type",
            profile("bad", "r", vec![item("x", "account", "statecode eq 'open'")]),
        ),
        ("a misplaced parameter", profile("bad", "r", vec![item("x", "account", "ownerid ne @user.id")])),
        (
            "a parameter under 'or'",
            profile("bad", "r", vec![item("x", "account", "statecode eq 0 or ownerid eq @user.id")]),
        ),
        ("an unknown column in the column list", {
            let mut p = profile("bad", "r", vec![item("x", "account", "")]);
            p.items[0].columns = Some(vec![col("nosuchcolumn")]);
            p
        }),
        ("a broken replacement", profile("sales", "sales", vec![item("open", "account", "statecode eq")])),
    ];
    for (what, p) in invalid {
        expect_kind(
            staging.put_profile(&p).await,
            ErrorKind::InvalidInput,
            &format!("a profile with {what}"),
        );
    }
    assert_eq!(
        staging.profile(&sales.name).await.unwrap(),
        replaced,
        "a refused replacement keeps the old profile"
    );
    assert_eq!(staging.profiles().await.unwrap().len(), 2, "refused profiles are not saved");
    assert_eq!(staging.head().await.unwrap(), head, "refused profiles change no membership");

    staging.delete_profile(&audit.name).await.unwrap();
    expect_kind(staging.profile(&audit.name).await, ErrorKind::NotFound, "a deleted profile");
    expect_kind(staging.delete_profile(&audit.name).await, ErrorKind::NotFound, "deleting a deleted profile");
    let names: Vec<ProfileName> = staging.profiles().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, vec![sales.name.clone()]);
}

/// Changing a profile recomputes membership: rows that leave get removes,
/// rows that enter get puts at their unchanged version; a deleted profile's
/// partitions are emptied.
pub async fn check_profile_change_recomputes_membership(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    let rows: Vec<Row> = (1..=6).map(|n| account(n, "r", (n % 2) as i64, None)).collect();
    staging.apply_changes(&ent("account"), upserts(rows)).await.unwrap();
    let versions: BTreeMap<RowId, Seq> = {
        let mut v = BTreeMap::new();
        for n in 1..=6 {
            v.insert(rid(n), staging.row(&ent("account"), &rid(n)).await.unwrap().unwrap().version);
        }
        v
    };

    // A profile saved after the rows: its partition fills at once.
    let open = plain_key("p", "open", "account");
    staging
        .put_profile(&profile("p", "sales", vec![item("open", "account", "statecode eq 0")]))
        .await
        .unwrap();
    let mut client = ClientModel::default();
    client.pull_to_end(&staging, std::slice::from_ref(&open), 100, usize::MAX).await;
    assert_eq!(client.members(&open).into_keys().map(|(_, id)| id).collect::<BTreeSet<_>>(), ids(&[2, 4, 6]));

    // The filter flips: evens leave, odds enter at their unchanged versions.
    let head = staging.head().await.unwrap();
    staging
        .put_profile(&profile("p", "sales", vec![item("open", "account", "statecode eq 1")]))
        .await
        .unwrap();
    assert!(staging.head().await.unwrap() > head, "recomputed membership takes new seqs");
    let (ops, _) = client.pull_to_end(&staging, std::slice::from_ref(&open), 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &open, false), ids(&[2, 4, 6]), "rows that no longer match get removes");
    assert_eq!(ids_in(&ops, &open, true), ids(&[1, 3, 5]), "rows that now match get puts");
    for op in ops.iter().filter(|c| c.row.is_some()) {
        assert_eq!(
            op.row.as_ref().unwrap().version(),
            versions[&op.row_id],
            "a recomputed put keeps the row's version"
        );
        assert!(op.seq > head, "a recomputed op has a new seq");
    }
    for n in 1..=6 {
        let staged = staging.row(&ent("account"), &rid(n)).await.unwrap().unwrap();
        assert_eq!(staged.version, versions[&rid(n)], "a profile change does not change row versions");
    }

    // Renaming the item: the old partition empties, the new one fills.
    let renamed = plain_key("p", "odd", "account");
    staging
        .put_profile(&profile("p", "sales", vec![item("odd", "account", "statecode eq 1")]))
        .await
        .unwrap();
    let keys = vec![open.clone(), renamed.clone()];
    let (ops, _) = client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &open, false), ids(&[1, 3, 5]), "the old item's partition empties");
    assert_eq!(ids_in(&ops, &renamed, true), ids(&[1, 3, 5]), "the new item's partition fills");
    assert!(client.members(&open).is_empty());

    // Another profile on the same entity is untouched by this one's changes.
    let other = plain_key("q", "all", "account");
    staging.put_profile(&profile("q", "sales", vec![item("all", "account", "")])).await.unwrap();
    let mut other_client = ClientModel::default();
    other_client.pull_to_end(&staging, std::slice::from_ref(&other), 100, usize::MAX).await;
    assert_eq!(other_client.members(&other).len(), 6);

    // Moving the profile to another entity empties the old entity's partition.
    staging.apply_schema(&contact_meta()).await.unwrap();
    let contacts: Vec<Row> = (1..=3)
        .map(|n| Row::new(RowId::new(n.to_string()).unwrap(), [(col("fullname"), Value::from("c"))]))
        .collect();
    staging.apply_changes(&ent("contact"), upserts(contacts)).await.unwrap();
    let people = plain_key("p", "people", "contact");
    staging.put_profile(&profile("p", "sales", vec![item("people", "contact", "")])).await.unwrap();
    let keys = vec![open.clone(), renamed.clone(), people.clone()];
    let (ops, _) = client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &renamed, false), ids(&[1, 3, 5]), "the entity the profile left gets removes");
    assert_eq!(client.members(&people).len(), 3, "the entity the profile now names fills");
    assert!(client.members(&renamed).is_empty());

    // Deleting the profile removes its members.
    staging.delete_profile(&ProfileName::new("p").unwrap()).await.unwrap();
    let (ops, _) = client.pull_to_end(&staging, &keys, 100, usize::MAX).await;
    assert_eq!(ops.len(), 3, "a deleted profile's members get removes, nothing else");
    assert!(ops.iter().all(|c| c.partition == people && c.row.is_none()));
    assert!(client.members(&people).is_empty());
    let (ops, last) = other_client.pull_to_end(&staging, std::slice::from_ref(&other), 100, usize::MAX).await;
    assert!(ops.is_empty(), "deleting one profile sends nothing to another's partitions");
    assert_eq!(last.checksums.unwrap()[&other].count, 6);
}

async fn paging_fixture(store: &Arc<dyn StagingStore>) -> (Arc<dyn OrgStaging>, Vec<PartitionKey>) {
    let staging = setup(store, "contoso").await;
    staging
        .put_profile(&profile(
            "sales",
            "sales",
            vec![item("all", "account", ""), item("open", "account", "statecode eq 0")],
        ))
        .await
        .unwrap();
    let keys = vec![plain_key("sales", "open", "account"), plain_key("sales", "all", "account")];
    (staging, keys)
}

/// Pulls page by rows: every page within `max_rows`, positions resume
/// exactly, and the concatenated pages equal one unbounded read.
pub async fn check_pull_paging_by_rows(store: Arc<dyn StagingStore>) {
    let (staging, keys) = paging_fixture(&store).await;
    let rows: Vec<Row> = (1..=30).map(|n| account(n, "r", (n % 3 == 0) as i64, None)).collect();
    staging.apply_changes(&ent("account"), upserts(rows)).await.unwrap();
    // Interleave seqs across partitions and leave some removes.
    let moved: Vec<Row> = (1..=10).map(|n| account(n, "moved", 1, None)).collect();
    staging.apply_changes(&ent("account"), upserts(moved)).await.unwrap();
    staging.apply_changes(&ent("account"), deletes(vec![rid(29), rid(30)])).await.unwrap();

    let (reference, reference_ops, reference_last) = full_read(&staging, &keys).await;
    assert!(reference_ops.len() > 30, "the fixture yields ops in both partitions");

    for max_rows in [1, 4, 7, 1000] {
        let mut client = ClientModel::default();
        let mut ops = Vec::new();
        let mut pages = 0;
        loop {
            let before = client.positions.clone();
            let page = client.pull_page(&staging, &keys, max_rows, usize::MAX).await;
            pages += 1;
            assert!(!page.changes.is_empty() || !page.more, "progress on every page");
            // A partition stopped mid-way sits at its last delivered op.
            for (key, pos) in &page.positions {
                if let Some(last) = page.changes.iter().filter(|c| c.partition == *key).map(|c| c.seq).max() {
                    assert!(*pos >= last, "position of {key:?} must cover its delivered ops");
                    if page.more && *pos != page.head {
                        assert_eq!(*pos, last, "a partition stopped mid-way resumes right after its last op");
                    }
                } else if page.more && *pos != page.head {
                    assert_eq!(
                        Some(pos),
                        before.get(key).or(Some(&Seq::ZERO)),
                        "an unread partition keeps its position"
                    );
                }
            }
            ops.extend(page.changes);
            if !page.more {
                assert_eq!(page.checksums, reference_last.checksums, "max_rows {max_rows}: checksums");
                break;
            }
        }
        assert_eq!(ops, reference_ops, "max_rows {max_rows}: pages must concatenate to the unbounded read");
        assert_eq!(client.partitions, reference.partitions);
        if max_rows < reference_ops.len() {
            assert!(pages >= reference_ops.len().div_ceil(max_rows), "max_rows {max_rows} must be honoured");
        }
    }

    // Caught up: a pull at the head returns nothing, and only new changes follow.
    let mut client = reference.clone();
    let page = client.pull_page(&staging, &keys, 5, usize::MAX).await;
    assert!(page.changes.is_empty() && !page.more, "nothing is due at the head");
    staging.apply_changes(&ent("account"), upserts(vec![account(50, "new", 1, None)])).await.unwrap();
    let page = client.pull_page(&staging, &keys, 5, usize::MAX).await;
    let got: Vec<(PartitionKey, RowId)> =
        page.changes.iter().map(|c| (c.partition.clone(), c.row_id.clone())).collect();
    assert_eq!(
        got,
        vec![(plain_key("sales", "all", "account"), rid(50))],
        "only the new change is delivered"
    );

    // A partition planned from zero is read from the start while others resume.
    let mut positions = client.positions.clone();
    positions.insert(plain_key("sales", "open", "account"), Seq::ZERO);
    let page = staging.pull(&plan(&positions, &keys, 1000, usize::MAX)).await.unwrap();
    let open_ids = ids_in(&page.changes, &plain_key("sales", "open", "account"), true);
    assert_eq!(open_ids.len(), reference.members(&plain_key("sales", "open", "account")).len());
    assert!(page.changes.iter().all(|c| c.partition == plain_key("sales", "open", "account")));
}

/// Pulls page by bytes: each page stays within `max_bytes` unless it holds a
/// single op, at least one op comes back even when it alone is too large,
/// and the pages concatenate to the unbounded read.
pub async fn check_pull_paging_by_bytes(store: Arc<dyn StagingStore>) {
    let (staging, keys) = paging_fixture(&store).await;
    let rows: Vec<Row> = (1..=12)
        .map(|n| {
            let mut r = account(n, "r", (n % 2) as i64, None);
            r.values.insert(col("description"), Value::from("x".repeat(200 * n as usize)));
            r
        })
        .collect();
    staging.apply_changes(&ent("account"), upserts(rows)).await.unwrap();
    let (reference, reference_ops, _) = full_read(&staging, &keys).await;

    for max_bytes in [1, 600, 2_500, 10_000] {
        let mut client = ClientModel::default();
        let mut ops = Vec::new();
        loop {
            let page = client.pull_page(&staging, &keys, usize::MAX, max_bytes).await;
            let bytes: usize =
                page.changes.iter().filter_map(|c| c.row.as_ref().map(|r| r.approx_size(&c.row_id))).sum();
            assert!(
                bytes <= max_bytes || page.changes.len() == 1,
                "max_bytes {max_bytes}: a page of {} ops holds {bytes} bytes",
                page.changes.len()
            );
            if max_bytes == 1 {
                assert!(page.changes.len() <= 1, "a budget below any row returns one op per page");
            }
            ops.extend(page.changes);
            if !page.more {
                break;
            }
        }
        assert_eq!(ops, reference_ops, "max_bytes {max_bytes}: pages must concatenate to the unbounded read");
        assert_eq!(client.partitions, reference.partitions);
    }
}

/// After random churn — inserts, updates that move rows between partitions,
/// deletes, a profile change, interleaved partial pulls — a client holds
/// exactly what the planner selects, and every checksum equals one recomputed
/// from the full membership.
pub async fn check_checksums_after_churn(store: Arc<dyn StagingStore>) {
    for seed in [0x9e37_79b9_7f4a_7c15_u64, 42, 7_777_777] {
        let org = format!("churn{}", seed % 1000);
        let staging = setup(&store, &org).await;
        let items = vec![
            item("open", "account", "statecode eq 0"),
            item("closed", "account", "statecode eq 1"),
            item("mine", "account", "ownerid eq @user.id"),
        ];
        staging.put_profile(&profile("sales", "sales", items)).await.unwrap();
        let users: Vec<Principal> = (1..=3).map(|u| principal(&org, u, "sales")).collect();
        let mut clients: Vec<(Vec<PartitionKey>, ClientModel)> = Vec::new();
        for u in &users {
            clients.push((keys_of(&staging, u).await, ClientModel::default()));
        }
        let mut rng = Rng(seed);
        for step in 0..120 {
            let mut page = ChangePage::default();
            for _ in 0..=rng.below(6) {
                let n = u128::from(rng.below(40));
                if rng.below(5) == 0 {
                    page.deletes.push(rid(n));
                } else {
                    let owner = match rng.below(4) {
                        0 => None,
                        u => Some(u128::from(u)),
                    };
                    let mut row = account(n, &format!("v{}", rng.below(3)), rng.below(3) as i64, owner);
                    row.values.insert(col("revenue"), Value::Integer(rng.below(2000) as i64));
                    page.upserts.push(row);
                }
            }
            staging.apply_changes(&ent("account"), page).await.unwrap();
            if step == 60 {
                let items = vec![
                    item("open", "account", "statecode eq 0 and revenue gt 500"),
                    item("closed", "account", "statecode ne 0"),
                    item("mine", "account", "ownerid eq @user.id"),
                ];
                staging.put_profile(&profile("sales", "sales", items)).await.unwrap();
            }
            let (keys, client) = &mut clients[rng.below(3) as usize];
            if rng.below(3) == 0 {
                client.pull_page(&staging, keys, 1 + rng.below(5) as usize, usize::MAX).await;
            }
        }

        // The truth, from the planner over the staged rows.
        let meta = account_meta();
        let planner = MembershipPlanner::new(&meta, &staging.profiles().await.unwrap()).unwrap();
        let mut truth: BTreeMap<PartitionKey, BTreeMap<(EntityName, RowId), StagedRow>> = BTreeMap::new();
        for id in staging.row_ids(&ent("account"), None, usize::MAX).await.unwrap() {
            let staged = staging.row(&ent("account"), &id).await.unwrap().unwrap();
            for key in planner.partitions(&staged.row) {
                truth.entry(key).or_default().insert((ent("account"), id.clone()), staged.clone());
            }
        }
        for (keys, client) in &mut clients {
            let (_, last) = client.pull_to_end(&staging, keys, 3, usize::MAX).await;
            let sums = last.checksums.unwrap();
            let (fresh, fresh_ops, _) = full_read(&staging, keys).await;
            for key in keys.iter() {
                let expected = truth.get(key).cloned().unwrap_or_default();
                assert_eq!(
                    client.members(key),
                    expected,
                    "seed {seed}: incremental client of {key:?} converged"
                );
                assert_eq!(fresh.members(key), expected, "seed {seed}: fresh read of {key:?}");
                let mut recomputed = Checksum::default();
                let mut sum = 0u32;
                for op in fresh_ops.iter().filter(|c| c.partition == *key) {
                    if let Some(staged) = &op.row {
                        recomputed.add(&op.entity, &op.row_id, staged.version());
                        sum = sum.wrapping_add(membership_hash(&op.entity, &op.row_id, staged.version()));
                    }
                }
                assert_eq!(sums[key], recomputed, "seed {seed}: checksum of {key:?} equals a recomputation");
                assert_eq!(sums[key].sum, sum);
                assert_eq!(sums[key].count, expected.len() as u64);
            }
        }
        store.drop_org(&org_id(&org)).await.unwrap();
    }
}

/// Concurrent writers: readers pulling while pages commit never skip a
/// change (a position never passes a seq that commits later).
pub async fn check_concurrent_writes_are_not_skipped(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.put_profile(&profile("all", "sales", vec![item("all", "account", "")])).await.unwrap();
    let key = plain_key("all", "all", "account");
    let mut writers = Vec::new();
    for w in 0..4u128 {
        let staging = staging.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25u128 {
                let n = w * 1000 + i;
                staging
                    .apply_changes(&ent("account"), upserts(vec![account(n, "w", 0, None)]))
                    .await
                    .unwrap();
                if i % 5 == 4 {
                    staging.apply_changes(&ent("account"), deletes(vec![rid(n - 2)])).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut client = ClientModel::default();
    while writers.iter().any(|w| !w.is_finished()) {
        client.pull_page(&staging, std::slice::from_ref(&key), 3, usize::MAX).await;
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.expect("writer task");
    }
    client.pull_to_end(&staging, std::slice::from_ref(&key), 3, usize::MAX).await;
    let (fresh, _, _) = full_read(&staging, std::slice::from_ref(&key)).await;
    assert_eq!(client.members(&key), fresh.members(&key), "a reader during concurrent writes converges");
    assert_eq!(client.members(&key).len(), 4 * 20);
}

/// Tombstones: purging raises the floor and drops the removes at or below
/// it; a position below the floor is read as asked (without the purged
/// removes), one beyond the head is `ResyncRequired`; reads from zero and
/// from the floor still work and miss no live row.
pub async fn check_tombstone_retention(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.put_profile(&profile("all", "sales", vec![item("all", "account", "")])).await.unwrap();
    let key = plain_key("all", "all", "account");
    let keys = std::slice::from_ref(&key);
    assert_eq!(staging.tombstone_floor().await.unwrap(), Seq::ZERO, "the floor starts at zero");
    staging
        .apply_changes(&ent("account"), upserts((1..=6).map(|n| account(n, "r", 0, None)).collect()))
        .await
        .unwrap();
    let mut old_client = ClientModel::default();
    old_client.pull_to_end(&staging, keys, 100, usize::MAX).await;
    let old_position = old_client.positions[&key];

    staging.apply_changes(&ent("account"), deletes(vec![rid(1), rid(2)])).await.unwrap();
    let mut current = old_client.clone();
    current.pull_to_end(&staging, keys, 100, usize::MAX).await;
    let head = staging.head().await.unwrap();
    assert_eq!(staging.purge_tombstones(head).await.unwrap(), 2, "both tombstones are purged");
    assert_eq!(staging.tombstone_floor().await.unwrap(), head, "purging raises the floor");

    let mut positions = BTreeMap::new();
    positions.insert(key.clone(), old_position);
    // Below the floor the store reads as asked; the purged removes are gone,
    // which is why the caller (the service) decides whether to resync.
    let below = staging.pull(&plan(&positions, keys, 100, usize::MAX)).await.unwrap();
    assert!(ids_in(&below.changes, &key, false).is_empty(), "purged removes are not delivered");
    positions.insert(key.clone(), head.next());
    expect_kind(
        staging.pull(&plan(&positions, keys, 100, usize::MAX)).await,
        ErrorKind::ResyncRequired,
        "a position beyond the head",
    );
    let page = current.pull_page(&staging, keys, 100, usize::MAX).await;
    assert!(page.changes.is_empty() && !page.more, "a position at the floor is honoured");
    let (fresh, fresh_ops, _) = full_read(&staging, keys).await;
    assert!(fresh_ops.iter().all(|c| c.row.is_some()), "purged tombstones are gone from a full read");
    assert_eq!(fresh.members(&key), current.members(&key), "purging keeps every live member");
    assert_eq!(fresh.members(&key).len(), 4);

    // Purging never lowers the floor, and new tombstones are kept until purged.
    staging.purge_tombstones(Seq(1)).await.unwrap();
    assert_eq!(staging.tombstone_floor().await.unwrap(), head, "the floor never goes down");
    staging.apply_changes(&ent("account"), deletes(vec![rid(3)])).await.unwrap();
    let (ops, _) = current.pull_to_end(&staging, keys, 100, usize::MAX).await;
    assert_eq!(ids_in(&ops, &key, false), ids(&[3]), "a tombstone after the floor is delivered");
}

/// The mutation journal: unknown ids are `None`; a recorded result reads
/// back; recording the same record again succeeds; a different fingerprint
/// for a known id is `Conflict` and keeps the first record.
pub async fn check_mutation_journal(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    let id = MutationId(uuid(0xabc));
    assert_eq!(staging.mutation_result(&id).await.unwrap(), None, "an unseen mutation has no result");
    let row = account_meta().check_row(account(1, "A", 0, None)).unwrap();
    let record = MutationRecord {
        fingerprint: "sha256:1111".into(),
        outcome: MutationOutcome::Applied { row: Some(row), version: Seq(3) },
        checkpoint: Seq(3),
    };
    staging.record_mutation(&id, &record).await.unwrap();
    assert_eq!(staging.mutation_result(&id).await.unwrap(), Some(record.clone()), "the record reads back");
    staging.record_mutation(&id, &record).await.expect("recording the same record again succeeds");
    let other = MutationRecord {
        fingerprint: "sha256:2222".into(),
        outcome: MutationOutcome::Rejected { reason: "nope".into() },
        checkpoint: Seq(4),
    };
    expect_kind(staging.record_mutation(&id, &other).await, ErrorKind::Conflict, "a different fingerprint");
    assert_eq!(staging.mutation_result(&id).await.unwrap(), Some(record.clone()), "the first record is kept");

    let second = MutationId(uuid(0xdef));
    let conflict = MutationRecord {
        fingerprint: "sha256:3333".into(),
        outcome: MutationOutcome::Conflict { server_row: None, reason: "deleted on the server".into() },
        checkpoint: Seq(0),
    };
    staging.record_mutation(&second, &conflict).await.unwrap();
    assert_eq!(staging.mutation_result(&second).await.unwrap(), Some(conflict));
    assert_eq!(staging.mutation_result(&id).await.unwrap(), Some(record));
}

/// Status: per-entity rows, token, schema hash and the last run's time,
/// error and row count; the last success survives a failure.
pub async fn check_status_and_runs(store: Arc<dyn StagingStore>) {
    use time::macros::datetime;
    let staging = setup(&store, "contoso").await;
    staging.apply_schema(&contact_meta()).await.unwrap();
    let page = ChangePage {
        upserts: (1..=3).map(|n| account(n, "r", 0, None)).collect(),
        next_token: Some(token("t9")),
        ..Default::default()
    };
    staging.apply_changes(&ent("account"), page).await.unwrap();

    let ok_at = datetime!(2024-05-01 10:00:00 UTC);
    let failed_at = datetime!(2024-05-01 10:01:00 UTC);
    staging
        .record_run(&SyncRunReport { entity: ent("account"), at: ok_at, rows_applied: 3, error: None })
        .await
        .unwrap();
    let status = staging.status().await.unwrap();
    assert_eq!(status.org, org_id("contoso"));
    assert_eq!(status.schema_version, staging.schema_version().await.unwrap());
    assert_eq!(status.head, staging.head().await.unwrap());
    let names: Vec<&EntityName> = status.entities.iter().map(|e| &e.entity).collect();
    assert_eq!(names, vec![&ent("account"), &ent("contact")], "status lists staged entities by name");
    let a = &status.entities[0];
    assert_eq!(a.rows, 3);
    assert_eq!(a.token, Some(token("t9")));
    assert_eq!(a.schema_hash, account_meta().schema_hash());
    assert_eq!(a.last_run, Some(ok_at));
    assert_eq!(a.last_success, Some(ok_at));
    assert_eq!(a.last_error, None);
    assert_eq!(a.last_rows, 3);
    let c = &status.entities[1];
    assert_eq!((c.rows, c.last_run, c.last_success, c.last_rows), (0, None, None, 0), "no run recorded yet");
    assert_eq!(c.schema_hash, contact_meta().schema_hash());

    staging
        .record_run(&SyncRunReport {
            entity: ent("account"),
            at: failed_at,
            rows_applied: 0,
            error: Some("source unavailable".into()),
        })
        .await
        .unwrap();
    let status = staging.status().await.unwrap();
    let a = status.entities.iter().find(|e| e.entity == ent("account")).unwrap();
    assert_eq!(a.last_run, Some(failed_at), "last_run is the latest run");
    assert_eq!(a.last_success, Some(ok_at), "a failure keeps the last success");
    assert_eq!(a.last_error.as_deref(), Some("source unavailable"));
    assert_eq!(a.last_rows, 0);
    assert_eq!(a.rows, 3, "a failed run changes no row count");

    staging.apply_changes(&ent("account"), deletes(vec![rid(1)])).await.unwrap();
    let status = staging.status().await.unwrap();
    assert_eq!(
        status.entities.iter().find(|e| e.entity == ent("account")).unwrap().rows,
        2,
        "rows count deletes"
    );
}

/// Isolation: two orgs with the same entity, row ids, profile names and
/// mutation ids never see each other's data; dropping one keeps the other.
pub async fn check_org_isolation(store: Arc<dyn StagingStore>) {
    let alpha = setup(&store, "alpha").await;
    let beta = setup(&store, "beta").await;
    for (staging, name) in [(&alpha, "alpha"), (&beta, "beta")] {
        staging.put_profile(&profile("all", "sales", vec![item("all", "account", "")])).await.unwrap();
        let page = ChangePage {
            upserts: (1..=5).map(|n| account(n, name, 0, None)).collect(),
            next_token: Some(token(name)),
            ..Default::default()
        };
        staging.apply_changes(&ent("account"), page).await.unwrap();
    }
    alpha.apply_changes(&ent("account"), deletes(vec![rid(1)])).await.unwrap();
    alpha.apply_schema(&contact_meta()).await.unwrap();
    alpha.put_profile(&profile("extra", "sales", vec![item("c", "contact", "")])).await.unwrap();
    let mid = MutationId(uuid(77));
    let rec = |fp: &str| MutationRecord {
        fingerprint: fp.into(),
        outcome: MutationOutcome::Rejected { reason: fp.into() },
        checkpoint: Seq::ZERO,
    };
    alpha.record_mutation(&mid, &rec("alpha")).await.unwrap();
    beta.record_mutation(&mid, &rec("beta"))
        .await
        .expect("the same mutation id in another org is independent");

    assert!(alpha.row(&ent("account"), &rid(1)).await.unwrap().is_none());
    let b1 = beta.row(&ent("account"), &rid(1)).await.unwrap().expect("beta's row survives alpha's delete");
    assert_eq!(b1.row.get("name"), Some(&Value::from("beta")));
    assert_eq!(alpha.source_token(&ent("account")).await.unwrap(), Some(token("alpha")));
    assert_eq!(beta.source_token(&ent("account")).await.unwrap(), Some(token("beta")));
    assert_eq!(beta.schemas().await.unwrap(), vec![account_meta()], "alpha's schema change stays in alpha");
    assert_eq!(beta.schema_version().await.unwrap(), 1);
    assert_eq!(beta.profiles().await.unwrap().len(), 1, "alpha's profile stays in alpha");
    assert_eq!(beta.mutation_result(&mid).await.unwrap().unwrap().fingerprint, "beta");
    assert_eq!(alpha.mutation_result(&mid).await.unwrap().unwrap().fingerprint, "alpha");

    let key = plain_key("all", "all", "account");
    let (a_model, a_ops, _) = full_read(&alpha, std::slice::from_ref(&key)).await;
    let (b_model, b_ops, _) = full_read(&beta, std::slice::from_ref(&key)).await;
    assert!(
        a_ops.iter().filter_map(|c| c.row.as_ref()).all(|r| r.get("name") == Some(&Value::from("alpha")))
    );
    assert!(b_ops.iter().filter_map(|c| c.row.as_ref()).all(|r| r.get("name") == Some(&Value::from("beta"))));
    assert_eq!(a_model.members(&key).len(), 4);
    assert_eq!(b_model.members(&key).len(), 5);
    assert!(b_ops.iter().all(|c| c.row.is_some()), "alpha's delete sends no remove to beta");

    store.drop_org(&org_id("alpha")).await.unwrap();
    let beta = store.org(&org_id("beta")).await.expect("beta survives dropping alpha");
    assert_eq!(beta.row_ids(&ent("account"), None, 100).await.unwrap().len(), 5);
    let (after, _, _) = full_read(&beta, std::slice::from_ref(&key)).await;
    assert_eq!(after, b_model, "dropping alpha changes nothing in beta");
}

/// Dropping an org removes everything: re-created, it is empty.
pub async fn check_drop_removes_everything(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    staging.put_profile(&profile("all", "sales", vec![item("all", "account", "")])).await.unwrap();
    let page = ChangePage {
        upserts: (1..=4).map(|n| account(n, "r", 0, None)).collect(),
        next_token: Some(token("t")),
        ..Default::default()
    };
    staging.apply_changes(&ent("account"), page).await.unwrap();
    staging.apply_changes(&ent("account"), deletes(vec![rid(4)])).await.unwrap();
    let mid = MutationId(uuid(5));
    staging
        .record_mutation(
            &mid,
            &MutationRecord {
                fingerprint: "f".into(),
                outcome: MutationOutcome::Rejected { reason: "r".into() },
                checkpoint: Seq(1),
            },
        )
        .await
        .unwrap();
    staging
        .record_run(&SyncRunReport {
            entity: ent("account"),
            at: time::OffsetDateTime::UNIX_EPOCH,
            rows_applied: 4,
            error: None,
        })
        .await
        .unwrap();

    let incarnation = staging.incarnation();
    assert!(!incarnation.is_empty(), "an org has an incarnation");
    assert_eq!(
        store.org(&org_id("contoso")).await.unwrap().incarnation(),
        incarnation,
        "stable across handles"
    );
    store.create_org(&org_config("contoso")).await.unwrap();
    assert_eq!(
        store.org(&org_id("contoso")).await.unwrap().incarnation(),
        incarnation,
        "re-creating an existing org keeps its incarnation"
    );

    store.drop_org(&org_id("contoso")).await.unwrap();
    expect_kind(
        staging.pull(&plan(&BTreeMap::new(), &[], 10, 10)).await,
        ErrorKind::NotFound,
        "an old handle's pull",
    );
    expect_kind(staging.status().await, ErrorKind::NotFound, "an old handle's status");
    expect_kind(staging.profiles().await, ErrorKind::NotFound, "an old handle's profiles");

    store.create_org(&org_config("contoso")).await.unwrap();
    let fresh = store.org(&org_id("contoso")).await.unwrap();
    assert_ne!(fresh.incarnation(), incarnation, "a re-created org is a new incarnation");
    assert!(fresh.schemas().await.unwrap().is_empty(), "no schema survives a drop");
    assert_eq!(fresh.schema_version().await.unwrap(), 0, "the schema version starts again at 0");
    assert!(fresh.profiles().await.unwrap().is_empty(), "no profile survives a drop");
    assert_eq!(fresh.mutation_result(&mid).await.unwrap(), None, "the mutation journal is emptied");
    assert!(fresh.status().await.unwrap().entities.is_empty(), "no status survives a drop");
    match fresh.source_token(&ent("account")).await {
        Ok(None) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => panic!("no token survives a drop, got {other:?}"),
    }
    expect_kind(fresh.row(&ent("account"), &rid(1)).await, ErrorKind::NotFound, "rows of a dropped entity");
    let key = plain_key("all", "all", "account");
    let (model, ops, _) = full_read(&fresh, std::slice::from_ref(&key)).await;
    assert!(ops.is_empty() && model.members(&key).is_empty(), "no membership survives a drop");

    fresh.apply_schema(&account_meta()).await.unwrap();
    assert!(fresh.row_ids(&ent("account"), None, 100).await.unwrap().is_empty(), "no row survives a drop");
    assert_eq!(fresh.source_token(&ent("account")).await.unwrap(), None, "no token survives a drop");
}

/// `watch_head` sees the head after every commit.
pub async fn check_watch_head_notifies(store: Arc<dyn StagingStore>) {
    let staging = setup(&store, "contoso").await;
    let mut rx = staging.watch_head();
    assert_eq!(*rx.borrow_and_update(), staging.head().await.unwrap(), "the watch starts at the head");

    // A waiter parked before the commit wakes after it.
    let mut waiter_rx = staging.watch_head();
    waiter_rx.borrow_and_update();
    let waiter = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(10), waiter_rx.changed())
            .await
            .expect("woken")
            .expect("sender alive");
        *waiter_rx.borrow()
    });
    tokio::task::yield_now().await;
    let out = staging.apply_changes(&ent("account"), upserts(vec![account(1, "A", 0, None)])).await.unwrap();
    assert_eq!(waiter.await.unwrap(), out.head, "a parked waiter sees the committed head");

    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("notified")
        .expect("sender alive");
    assert_eq!(*rx.borrow_and_update(), out.head);

    for n in 2..=4 {
        let out =
            staging.apply_changes(&ent("account"), upserts(vec![account(n, "A", 0, None)])).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("notified")
            .expect("sender alive");
        assert_eq!(*rx.borrow_and_update(), out.head, "the watch follows every commit");
    }
    // A receiver taken later starts at the current head.
    assert_eq!(*staging.watch_head().borrow(), staging.head().await.unwrap());
}
