//! The host-database source driven by the real engine: provisioned by the
//! `Provisioner`, staged by `StagingSync` into the in-memory store, served
//! by `SyncService` and pulled and pushed through `InProcessTransport` —
//! each device receives exactly the rows its filter selects, the host's own
//! writes follow, and device edits land in the host's database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use custom_source::{HostDbConnector, TableSpec, install_change_tracking};
use rusqlite::{Connection, params};
use sync_core::engine::{Provisioner, SourceCache, StagingSync, WorkerConfig};
use sync_core::memory::{MemoryQueue, MemoryStagingStore};
use sync_core::principal::{ADMIN_ROLE, OPERATOR_ROLE};
use sync_core::protocol::{ClientMutation, MutationOutcome, PullRequest, PushRequest};
use sync_core::{
    AttributeType, ColumnName, EntityName, InProcessTransport, MutationId, MutationOp, OrgConfig, OrgId,
    Principal, Profile, ProfileItem, ProfileName, RowId, SyncService, SyncTransport, Value,
};

const REP_ROLE: &str = "rep";

/// The host's database as it was before offline sync came along: rows
/// already in it, and a table that is not offered.
fn host_database(path: &Path) {
    let mut db = Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE customer (
             customerid TEXT PRIMARY KEY,
             name TEXT NOT NULL,
             owner TEXT NOT NULL,
             active BOOLEAN NOT NULL DEFAULT 1,
             credit DECIMAL(12,2));
         CREATE TABLE audit_log (id INTEGER PRIMARY KEY, line TEXT);
         INSERT INTO audit_log (line) VALUES ('not for devices');",
    )
    .unwrap();
    for n in 1..=30 {
        let owner = ["alice", "bob", "carol"][n % 3];
        db.execute(
            "INSERT INTO customer (customerid, name, owner, active, credit) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![format!("C{n:03}"), format!("Customer {n}"), owner, n % 4 != 0, format!("{n}.50")],
        )
        .unwrap();
    }
    install_change_tracking(&mut db, &[EntityName::new("customer").unwrap()]).unwrap();
}

/// What the host's database says `user` should have: their active customers.
fn expected(db: &Connection, user: &str) -> BTreeSet<String> {
    let mut stmt =
        db.prepare("SELECT customerid FROM customer WHERE owner = ?1 AND active = 1 ORDER BY 1").unwrap();
    stmt.query_map([user], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
}

/// A device's local copy of `customer`: rows by id, as column → value.
#[derive(Default)]
struct Device {
    rows: BTreeMap<String, BTreeMap<String, Value>>,
    versions: BTreeMap<String, sync_core::Seq>,
    cursor: Option<String>,
}

impl Device {
    /// Pulls until caught up; returns the ids put and removed on the way.
    async fn pull(&mut self, transport: &InProcessTransport) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut put, mut removed) = (BTreeSet::new(), BTreeSet::new());
        loop {
            let request =
                PullRequest { cursor: self.cursor.clone(), limit: Some(4), ..PullRequest::default() };
            let page = transport.pull(&request).await.unwrap();
            for batch in page.batches.iter().filter(|b| b.entity.as_str() == "customer") {
                let key = batch.columns.iter().position(|c| c.as_str() == "customerid").unwrap();
                for (values, version) in batch.puts.iter().zip(&batch.versions) {
                    let Value::String(id) = &values[key] else { panic!("key {:?}", values[key]) };
                    let row = batch.columns.iter().map(|c| c.as_str().to_owned()).zip(values.iter().cloned());
                    self.rows.insert(id.clone(), row.collect());
                    self.versions.insert(id.clone(), *version);
                    put.insert(id.clone());
                }
                for id in &batch.removes {
                    self.rows.remove(id.as_str());
                    removed.insert(id.as_str().to_owned());
                }
            }
            self.cursor = Some(page.cursor);
            if !page.has_more {
                return (put, removed);
            }
        }
    }

    fn ids(&self) -> BTreeSet<String> {
        self.rows.keys().cloned().collect()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    host: Connection,
    service: SyncService,
    stager: StagingSync,
    operator: Principal,
    org: OrgId,
}

impl Rig {
    async fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.sqlite");
        host_database(&path);

        let connector = Arc::new(HostDbConnector::new(vec![TableSpec::writable("customer").unwrap()]));
        let store = Arc::new(MemoryStagingStore::new());
        let queue = Arc::new(MemoryQueue::new());
        let sources = Arc::new(SourceCache::new(connector.clone()));
        // Small pages, so staging reads the host's table in several.
        let config = WorkerConfig { page_size: 7, ..WorkerConfig::default() };
        let service =
            SyncService::builder(store.clone(), queue.clone(), connector, b"cursor secret of the test")
                .source_cache(sources.clone())
                .build();
        let provisioner = Provisioner::new(store.clone(), queue.clone(), sources.clone(), config.clone());
        let stager = StagingSync::new(store, queue, sources, config);

        let org = OrgId::new("fieldsales").unwrap();
        let operator = Principal::new("ops", org.clone()).with_role(OPERATOR_ROLE).with_role(ADMIN_ROLE);
        service
            .provision(&operator, OrgConfig::new(org.clone(), HostDbConnector::config(&path)))
            .await
            .unwrap();
        assert!(provisioner.run_once().await.unwrap(), "the provision event was handled");
        let mut customers =
            ProfileItem::new(EntityName::new("customer").unwrap(), "owner eq @user.id and active eq true");
        customers.allow_upload = true;
        let profile = Profile {
            name: ProfileName::new("reps").unwrap(),
            roles: [REP_ROLE.to_owned()].into(),
            items: vec![customers],
        };
        service.put_profile(&operator, &org, &profile).await.unwrap();
        let rig = Rig { _dir: dir, host: Connection::open(&path).unwrap(), service, stager, operator, org };
        rig.stage().await;
        rig
    }

    /// Makes the staging sync due now and runs it until the queue is idle.
    async fn stage(&self) {
        self.service.sync_now(&self.operator, &self.org, None).await.unwrap();
        let mut runs = 0;
        while self.stager.run_once(None).await.unwrap() {
            runs += 1;
            assert!(runs < 10, "staging kept finding work");
        }
        assert!(runs > 0, "the staging sync ran");
        let status = self.service.org_status(&self.operator, &self.org).await.unwrap();
        assert_eq!(status.entities.len(), 1, "only the offered table is staged: {status:?}");
        assert_eq!(status.entities[0].last_error, None);
    }

    fn device(&self, user: &str) -> InProcessTransport {
        let principal = Principal::new(user, self.org.clone()).with_role(REP_ROLE);
        InProcessTransport::new(self.service.clone(), principal)
    }
}

#[tokio::test]
async fn each_device_receives_exactly_its_filtered_rows_and_follows_the_host() {
    let rig = Rig::new().await;
    let alice_transport = rig.device("alice");
    let mut alice = Device::default();
    alice.pull(&alice_transport).await;
    let mut bob = Device::default();
    bob.pull(&rig.device("bob")).await;

    assert_eq!(alice.ids(), expected(&rig.host, "alice"));
    assert_eq!(bob.ids(), expected(&rig.host, "bob"));
    assert!(!alice.ids().is_empty() && alice.ids().is_disjoint(&bob.ids()));
    // Values arrive in their wire form, from the host's typed columns (the
    // version column is change tracking, not data).
    let (first_id, first) = alice.rows.iter().next().unwrap();
    assert_eq!(first.get("active"), Some(&Value::from(true)));
    let n: u32 = first_id[1..].parse().unwrap();
    let decimal = |v: Value| v.coerce(&AttributeType::Decimal).unwrap();
    assert_eq!(decimal(first["credit"].clone()), decimal(Value::from(format!("{n}.50"))));
    assert!(!first.contains_key("version"));

    // The host's own code changes its database.
    let alice_ids: Vec<String> = alice.ids().into_iter().collect();
    let bobs_first = bob.ids().into_iter().next().unwrap();
    rig.host
        .execute_batch(&format!(
            "UPDATE customer SET active = 0 WHERE customerid = '{deactivated}';
             DELETE FROM customer WHERE customerid = '{deleted}';
             UPDATE customer SET name = 'Renamed by the host' WHERE customerid = '{renamed}';
             UPDATE customer SET owner = 'alice' WHERE customerid = '{bobs_first}';
             INSERT INTO customer (customerid, name, owner) VALUES ('C900', 'New customer', 'alice');",
            deactivated = alice_ids[0],
            deleted = alice_ids[1],
            renamed = alice_ids[2],
        ))
        .unwrap();
    rig.stage().await;

    let (put, removed) = alice.pull(&alice_transport).await;
    assert_eq!(removed, BTreeSet::from([alice_ids[0].clone(), alice_ids[1].clone()]));
    assert_eq!(put, BTreeSet::from([alice_ids[2].clone(), bobs_first.clone(), "C900".to_owned()]));
    assert_eq!(alice.ids(), expected(&rig.host, "alice"));
    assert_eq!(alice.rows[&alice_ids[2]].get("name"), Some(&Value::from("Renamed by the host")));
    let (_, bob_removed) = bob.pull(&rig.device("bob")).await;
    assert_eq!(bob_removed, BTreeSet::from([bobs_first]));
    assert_eq!(bob.ids(), expected(&rig.host, "bob"));
}

#[tokio::test]
async fn device_edits_land_in_the_host_database_and_source_conflicts_come_back() {
    let rig = Rig::new().await;
    let transport = rig.device("alice");
    let mut alice = Device::default();
    alice.pull(&transport).await;
    let ids: Vec<String> = alice.ids().into_iter().collect();
    let customer = EntityName::new("customer").unwrap();
    let col = |c: &str| ColumnName::new(c).unwrap();
    let edit = |op, id: &str, values: Vec<(&str, Value)>, base: Option<sync_core::Seq>| ClientMutation {
        id: MutationId::new_v4(),
        entity: customer.clone(),
        op,
        row_id: RowId::new(id).unwrap(),
        base_version: base,
        values: values.into_iter().map(|(c, v)| (col(c), v)).collect(),
    };

    // The host deletes a row the device still holds; the device edits it.
    rig.host.execute("DELETE FROM customer WHERE customerid = ?1", [&ids[1]]).unwrap();
    let pushed = transport
        .push(&PushRequest {
            mutations: vec![
                edit(
                    MutationOp::Update,
                    &ids[0],
                    vec![("name", "Edited offline".into())],
                    alice.versions.get(&ids[0]).copied(),
                ),
                edit(
                    MutationOp::Insert,
                    "C777",
                    vec![
                        ("name", "Met at the fair".into()),
                        ("owner", "alice".into()),
                        ("active", true.into()),
                    ],
                    None,
                ),
                edit(
                    MutationOp::Update,
                    &ids[1],
                    vec![("name", "Too late".into())],
                    alice.versions.get(&ids[1]).copied(),
                ),
            ],
        })
        .await
        .unwrap();
    let outcomes: Vec<&MutationOutcome> = pushed.results.iter().map(|r| &r.outcome).collect();
    assert!(matches!(outcomes[0], MutationOutcome::Applied { .. }), "{outcomes:?}");
    assert!(matches!(outcomes[1], MutationOutcome::Applied { .. }), "{outcomes:?}");
    let MutationOutcome::Conflict { reason, .. } = outcomes[2] else { panic!("{outcomes:?}") };
    assert!(reason.contains("does not exist"), "{reason}");

    let name: String = rig
        .host
        .query_row("SELECT name FROM customer WHERE customerid = ?1", [&ids[0]], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "Edited offline");
    let (owner, credit): (String, Option<String>) = rig
        .host
        .query_row("SELECT owner, credit FROM customer WHERE customerid = 'C777'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((owner.as_str(), credit), ("alice", None), "columns not sent keep the table's defaults");

    // After the next staging sync the device converges on the host's rows.
    rig.stage().await;
    alice.pull(&transport).await;
    assert_eq!(alice.ids(), expected(&rig.host, "alice"));
    assert!(alice.ids().contains("C777") && !alice.ids().contains(&ids[1]));
    assert_eq!(alice.rows[&ids[0]].get("name"), Some(&Value::from("Edited offline")));
}
