//! The host-database source against the source checks, plus what is
//! particular to SQLite: read-only tables, schema drift, typed values,
//! constraint violations, the connector's configuration and recreated
//! databases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use custom_source::checks::SourceFixture;
use custom_source::{
    HostDbConnector, HostDbSource, TableSpec, current_version, install_change_tracking, purge_deletes_through,
};
use rusqlite::{Connection, params};
use sync_core::{
    AttributeType, ChangeToken, ColumnName, EntityName, Error, ErrorKind, MetadataSource, Mutation,
    MutationOp, OrgSourceConfig, Result, RowId, SourceConnector, Value,
};

const NOTES: &str = "CREATE TABLE note (
    noteid TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    score INTEGER NOT NULL DEFAULT 0)";

/// A host database in a temporary directory: the source reads it through
/// its own connection, the "host application" writes through another.
struct HostDb {
    _dir: tempfile::TempDir,
    path: PathBuf,
    host: Mutex<Connection>,
    source: Arc<HostDbSource>,
}

fn entity(name: &str) -> EntityName {
    EntityName::new(name).unwrap()
}

fn sql_error(e: rusqlite::Error) -> Error {
    Error::internal(e.to_string())
}

impl HostDb {
    async fn new(schema: &str, tables: Vec<TableSpec>) -> HostDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.sqlite");
        let mut host = Connection::open(&path).unwrap();
        host.execute_batch(schema).unwrap();
        let names: Vec<EntityName> = tables.iter().map(|t| t.table.clone()).collect();
        install_change_tracking(&mut host, &names).unwrap();
        let source = Arc::new(HostDbSource::open(&path, tables).await.unwrap());
        HostDb { _dir: dir, path, host: Mutex::new(host), source }
    }

    fn exec(&self, sql: &str) {
        self.host.lock().unwrap().execute_batch(sql).unwrap();
    }
}

#[async_trait]
impl SourceFixture for HostDb {
    fn source(&self) -> Arc<dyn MetadataSource> {
        self.source.clone()
    }

    fn entity(&self) -> EntityName {
        entity("note")
    }

    async fn put(&self, id: &str, title: &str, score: i64) -> Result<()> {
        self.host
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO note (noteid, title, score) VALUES (?1, ?2, ?3)
                 ON CONFLICT (noteid) DO UPDATE SET title = excluded.title, score = excluded.score",
                params![id, title, score],
            )
            .map_err(sql_error)?;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.host.lock().unwrap().execute("DELETE FROM note WHERE noteid = ?1", [id]).map_err(sql_error)?;
        Ok(())
    }

    async fn forget_history(&self) -> Result<()> {
        let mut host = self.host.lock().unwrap();
        let now = current_version(&host)?;
        purge_deletes_through(&mut host, now)?;
        Ok(())
    }
}

async fn notes() -> Box<dyn SourceFixture> {
    Box::new(HostDb::new(NOTES, vec![TableSpec::writable("note").unwrap()]).await)
}

custom_source::source_checks!(notes);

fn mutation(op: MutationOp, id: &str, values: Vec<(&str, Value)>) -> Mutation {
    Mutation {
        op,
        row_id: RowId::new(id).unwrap(),
        values: values.into_iter().map(|(c, v)| (ColumnName::new(c).unwrap(), v)).collect(),
    }
}

#[tokio::test]
async fn read_only_tables_refuse_write_back_as_forbidden() {
    let db = HostDb::new(NOTES, vec![TableSpec::read_only("note").unwrap()]).await;
    db.exec("INSERT INTO note (noteid, title) VALUES ('n1', 'read me')");
    let page = db.source.changes(&entity("note"), None, 10).await.unwrap();
    assert_eq!(page.upserts.len(), 1);
    let error =
        db.source.apply(&entity("note"), &mutation(MutationOp::Delete, "n1", vec![])).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden, "{error}");
    let still = db.source.changes(&entity("note"), page.next_token, 10).await.unwrap();
    assert!(still.deletes.is_empty(), "nothing was written");
}

#[tokio::test]
async fn a_column_the_host_adds_reaches_the_metadata_and_the_feed() {
    let db = HostDb::new(NOTES, vec![TableSpec::writable("note").unwrap()]).await;
    db.exec("INSERT INTO note (noteid, title) VALUES ('n1', 'before')");
    let page = db.source.changes(&entity("note"), None, 10).await.unwrap();
    db.exec("ALTER TABLE note ADD COLUMN due DATETIME; UPDATE note SET due = '2024-06-01T09:00:00Z'");
    let meta = db.source.entities().await.unwrap().remove(0);
    assert_eq!(meta.attribute("due").map(|a| &a.ty), Some(&AttributeType::DateTime));
    let next = db.source.changes(&entity("note"), page.next_token, 10).await.unwrap();
    let due = next.upserts[0].get("due").unwrap();
    assert_eq!(due, &Value::from("2024-06-01T09:00:00Z").coerce(&AttributeType::DateTime).unwrap());
}

#[tokio::test]
async fn values_keep_their_types_through_write_back_and_feed() {
    let schema = "CREATE TABLE item (
        itemid INTEGER PRIMARY KEY, done BOOLEAN, price DECIMAL(10,2), weight REAL,
        seen DATETIME, ref UUID, extra JSON, note TEXT)";
    let db = HostDb::new(schema, vec![TableSpec::writable("item").unwrap()]).await;
    let values = vec![
        ("done", Value::from(true)),
        ("price", Value::from("12.5").coerce(&AttributeType::Decimal).unwrap()),
        ("weight", Value::from(0.25f64)),
        ("seen", Value::from("2024-05-01T10:00:00Z").coerce(&AttributeType::DateTime).unwrap()),
        ("ref", Value::from(uuid::Uuid::from_u128(42))),
        ("extra", Value::Json(serde_json::json!({"tags": ["a", "b"]}))),
        ("note", Value::Null),
    ];
    let written = db
        .source
        .apply(&entity("item"), &mutation(MutationOp::Insert, "7", values.clone()))
        .await
        .unwrap()
        .unwrap();
    let page = db.source.changes(&entity("item"), None, 10).await.unwrap();
    assert_eq!(page.upserts, vec![written.clone()]);
    assert_eq!(written.id.as_str(), "7");
    assert_eq!(written.get("itemid"), Some(&Value::from(7i64)));
    for (column, value) in values {
        assert_eq!(written.get(column), Some(&value), "{column}");
    }
}

#[tokio::test]
async fn constraint_violations_are_invalid_input_and_change_nothing() {
    let schema = "CREATE TABLE task (taskid TEXT PRIMARY KEY, subject TEXT NOT NULL,
                  hours INTEGER CHECK (hours >= 0))";
    let db = HostDb::new(schema, vec![TableSpec::writable("task").unwrap()]).await;
    let task = entity("task");
    let missing = db.source.apply(&task, &mutation(MutationOp::Insert, "t1", vec![])).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::InvalidInput, "{missing}");
    let negative =
        mutation(MutationOp::Insert, "t1", vec![("subject", "x".into()), ("hours", (-1i64).into())]);
    let negative = db.source.apply(&task, &negative).await.unwrap_err();
    assert_eq!(negative.kind(), ErrorKind::InvalidInput, "{negative}");
    let ill_typed =
        mutation(MutationOp::Insert, "t1", vec![("subject", "x".into()), ("hours", "many".into())]);
    let ill_typed = db.source.apply(&task, &ill_typed).await.unwrap_err();
    assert_eq!(ill_typed.kind(), ErrorKind::InvalidInput, "{ill_typed}");
    let page = db.source.changes(&task, None, 10).await.unwrap();
    assert!(page.upserts.is_empty(), "no failed write left a row behind");
}

#[tokio::test]
async fn the_connector_checks_its_configuration() {
    let db = HostDb::new(NOTES, vec![TableSpec::writable("note").unwrap()]).await;
    let connector = HostDbConnector::new(vec![TableSpec::writable("note").unwrap()]);
    let source = connector.connect(&HostDbConnector::config(&db.path)).await.unwrap();
    assert_eq!(source.entities().await.unwrap()[0].name, entity("note"));

    let wrong_kind = OrgSourceConfig { kind: "dataverse".into(), settings: Default::default() };
    let no_path = OrgSourceConfig { kind: HostDbConnector::KIND.into(), settings: Default::default() };
    let no_file = HostDbConnector::config(db.path.with_file_name("missing.sqlite"));
    for config in [wrong_kind, no_path, no_file] {
        let error = connector.connect(&config).await.err().unwrap();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    }

    // A database (or table) without change tracking is refused with a hint.
    let plain = db.path.with_file_name("plain.sqlite");
    Connection::open(&plain).unwrap().execute_batch(NOTES).unwrap();
    let error = connector.connect(&HostDbConnector::config(&plain)).await.err().unwrap();
    assert!(error.to_string().contains("install_change_tracking"), "{error}");
    let error = HostDbConnector::new(vec![TableSpec::writable("nowhere").unwrap()])
        .connect(&HostDbConnector::config(&db.path))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
}

#[tokio::test]
async fn a_token_of_a_recreated_database_is_resync_required() {
    let db = HostDb::new(NOTES, vec![TableSpec::writable("note").unwrap()]).await;
    db.exec("INSERT INTO note (noteid) VALUES ('n1')");
    let token: ChangeToken = db.source.changes(&entity("note"), None, 10).await.unwrap().next_token.unwrap();

    let other = HostDb::new(NOTES, vec![TableSpec::writable("note").unwrap()]).await;
    other.exec("INSERT INTO note (noteid) VALUES ('n1'), ('n2'), ('n3')");
    let error = other.source.changes(&entity("note"), Some(token), 10).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ResyncRequired, "{error}");
    assert!(Path::new(&other.path).is_file());
}
