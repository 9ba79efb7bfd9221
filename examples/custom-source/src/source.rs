//! [`HostDbSource`] (the [`MetadataSource`]) and [`HostDbConnector`] (its
//! [`SourceConnector`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params_from_iter};
use sync_core::{
    ChangePage, ChangeToken, ColumnName, EntityMetadata, EntityName, Error, MetadataSource, Mutation,
    MutationOp, OrgSourceConfig, Result, Row, RowId, SourceConnector, Value,
};

use crate::metadata::{TableSpec, VERSION_COLUMN, read_metadata};
use crate::sqlite_error::map;
use crate::tracking::{Clock, read_clock};
use crate::values::{from_sql, to_sql};

/// How long a statement waits for a host writer to finish before the call
/// fails as `Unavailable` (and the worker retries later).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const TOKEN_PREFIX: &str = "hostdb1";

/// A position in the feed of one entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    /// The last version delivered.
    version: i64,
    /// During a full read: the counter's value when it started. Rows
    /// deleted before then were never delivered, so their deletes are left
    /// out; deletes made during the read are not.
    full_read_start: Option<i64>,
}

impl Position {
    /// Deletes after this version concern the reader.
    fn deletes_after(self) -> i64 {
        self.version.max(self.full_read_start.unwrap_or(0))
    }

    /// `hostdb1:<epoch>:<version>`, with `:<start>` during a full read.
    fn encode(self, epoch: &str) -> ChangeToken {
        match self.full_read_start {
            None => ChangeToken(format!("{TOKEN_PREFIX}:{epoch}:{}", self.version)),
            Some(start) => ChangeToken(format!("{TOKEN_PREFIX}:{epoch}:{}:{start}", self.version)),
        }
    }

    /// The position a token stands for, checked against the database's clock.
    fn decode(token: &ChangeToken, clock: &Clock, entity: &EntityName) -> Result<Position> {
        let foreign =
            || Error::resync(format!("the change token of '{entity}' was not issued by this database"));
        let parts: Vec<&str> = token.0.split(':').collect();
        let (epoch, version, start) = match parts.as_slice() {
            [TOKEN_PREFIX, epoch, version] => (*epoch, *version, None),
            [TOKEN_PREFIX, epoch, version, start] => (*epoch, *version, Some(*start)),
            _ => return Err(foreign()),
        };
        let number = |text: &str| text.parse::<i64>().ok().filter(|v| (0..=clock.version).contains(v));
        // A version beyond the counter: a token of a database restored from an older backup.
        let version = number(version).ok_or_else(foreign)?;
        let full_read_start = match start {
            Some(start) => Some(number(start).ok_or_else(foreign)?),
            None => None,
        };
        if epoch != clock.epoch {
            return Err(foreign());
        }
        let position = Position { version, full_read_start };
        if position.deletes_after() < clock.purged_through {
            return Err(Error::resync(format!(
                "the change token of '{entity}' (version {version}) is older than the oldest retained delete \
                 (deletes up to version {} were purged); read the entity in full again",
                clock.purged_through
            )));
        }
        Ok(position)
    }
}

/// The host's own SQLite database as the system of record of one org.
///
/// Offers the tables it was opened with (see [`TableSpec`]); each table's
/// metadata comes from `PRAGMA table_info` at every call, so a column the
/// host adds reaches staging on the next sync. Change tracking must be
/// installed ([`install_change_tracking`](crate::install_change_tracking)).
///
/// # Change feed
/// Every write takes the next value of a database-wide counter and stamps
/// the row's `version` column; deletes go to the `deleted` table with their
/// version. A token is the last version delivered.
/// * `None` starts a **full read**: the current rows in version order,
///   `page_size` at a time. A row changed during the read moves to a later
///   version and comes in a later page, so nothing is skipped; rows deleted
///   during the read come as deletes, rows deleted before it not at all.
/// * With a token: the rows and deletes with later versions, oldest first.
/// * `more` is `true` exactly when reading again right away would return
///   something; the last page's token is the counter's value, so an idle
///   source answers empty pages without rescanning.
/// * A token older than the purge horizon (deletes up to it were forgotten),
///   from another database or newer than the database (restored from a
///   backup) is `ResyncRequired`.
///
/// Each page is read in one transaction, so it is consistent with its
/// token. Calls run on tokio's blocking pool.
pub struct HostDbSource {
    conn: Arc<Mutex<Connection>>,
    tables: Arc<BTreeMap<EntityName, TableSpec>>,
}

impl std::fmt::Debug for HostDbSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDbSource").field("tables", &self.tables.keys()).finish_non_exhaustive()
    }
}

impl HostDbSource {
    /// Opens the database at `path`, offering `tables`.
    ///
    /// Errors: `Unavailable` when the file cannot be opened; `InvalidInput`
    /// when change tracking is not installed or a table cannot be described
    /// (no single key, an unmappable column type); `NotFound` for a missing
    /// table.
    pub async fn open(path: impl AsRef<Path>, tables: Vec<TableSpec>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        blocking(move || {
            let conn = Connection::open(&path)
                .map_err(|e| Error::unavailable(format!("opening {}: {e}", path.display())))?;
            HostDbSource::from_connection(conn, tables)
        })
        .await
    }

    /// A source over an open connection (e.g. an in-memory database in a
    /// test). Errors as [`HostDbSource::open`].
    pub fn from_connection(conn: Connection, tables: Vec<TableSpec>) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(map("setting the busy timeout"))?;
        read_clock(&conn)?;
        for spec in &tables {
            read_metadata(&conn, &spec.table)?;
            let trigger = format!("{}_sync_insert", spec.table);
            let installed: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                    [&trigger],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map("looking for the change-tracking triggers"))?;
            if installed.is_none() {
                return Err(Error::invalid(format!(
                    "table '{}' has no change-tracking triggers: call install_change_tracking on it",
                    spec.table
                )));
            }
        }
        let tables = tables.into_iter().map(|s| (s.table.clone(), s)).collect();
        Ok(HostDbSource { conn: Arc::new(Mutex::new(conn)), tables: Arc::new(tables) })
    }

    fn spec(&self, entity: &EntityName) -> Result<&TableSpec> {
        self.tables.get(entity).ok_or_else(|| Error::not_found(format!("entity '{entity}'")))
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        blocking(move || {
            // A panic while holding the lock cannot leave a transaction
            // open (rusqlite rolls back on drop), so the connection is usable.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("the host-database task failed: {e}")))?
}

/// The columns to select for `meta`: the attributes in order, then the version.
fn select_list(meta: &EntityMetadata) -> String {
    let mut list: Vec<String> = meta.attributes.iter().map(|a| format!("\"{}\"", a.name)).collect();
    list.push(VERSION_COLUMN.to_owned());
    list.join(", ")
}

/// A row as selected with [`select_list`], and its version.
fn read_row(meta: &EntityMetadata, r: &rusqlite::Row<'_>) -> Result<(Row, i64)> {
    let mut values = BTreeMap::new();
    for (i, a) in meta.attributes.iter().enumerate() {
        let stored = r.get_ref(i).map_err(map("reading a row"))?;
        values.insert(a.name.clone(), from_sql(stored, &a.ty, a.name.as_str())?);
    }
    let version: i64 = r.get(meta.attributes.len()).map_err(map("reading a row version"))?;
    let key = values.get(&meta.primary_key).cloned().unwrap_or(Value::Null);
    if key.is_null() {
        return Err(Error::invalid(format!("a row of '{}' has a null primary key", meta.name)));
    }
    let id = RowId::new(key.canonical_text())?;
    Ok((meta.check_row(Row { id, values })?, version))
}

/// The row with key `key`, if any.
fn find_row(conn: &Connection, meta: &EntityMetadata, key: &Value) -> Result<Option<Row>> {
    let sql =
        format!("SELECT {} FROM \"{}\" WHERE \"{}\" = ?1", select_list(meta), meta.name, meta.primary_key);
    let mut stmt = conn.prepare(&sql).map_err(map("reading a row"))?;
    let mut rows = stmt.query([to_sql(key)]).map_err(map("reading a row"))?;
    match rows.next().map_err(map("reading a row"))? {
        Some(r) => Ok(Some(read_row(meta, r)?.0)),
        None => Ok(None),
    }
}

/// One change of the feed: its version, and the row (an upsert) or the id
/// of a deleted row.
enum Change {
    Upsert(Row),
    Delete(RowId),
}

/// One page of the feed, read inside one transaction.
fn read_page(
    conn: &mut Connection,
    entity: &EntityName,
    token: Option<&ChangeToken>,
    page_size: usize,
) -> Result<ChangePage> {
    let tx = conn.transaction().map_err(map("starting a read"))?;
    let meta = read_metadata(&tx, entity)?;
    let clock = read_clock(&tx)?;
    let position = match token {
        Some(t) => Position::decode(t, &clock, entity)?,
        None => Position { version: 0, full_read_start: Some(clock.version) },
    };
    // One more than asked for tells whether more follow.
    let limit = i64::try_from(page_size).unwrap_or(i64::MAX).saturating_add(1);
    let mut changes: Vec<(i64, Change)> = Vec::new();
    {
        let sql = format!(
            "SELECT {} FROM \"{entity}\" WHERE {VERSION_COLUMN} > ?1 ORDER BY {VERSION_COLUMN} LIMIT ?2",
            select_list(&meta)
        );
        let mut stmt = tx.prepare(&sql).map_err(map("reading changed rows"))?;
        let mut rows =
            stmt.query(rusqlite::params![position.version, limit]).map_err(map("reading changed rows"))?;
        while let Some(r) = rows.next().map_err(map("reading changed rows"))? {
            let (row, version) = read_row(&meta, r)?;
            changes.push((version, Change::Upsert(row)));
        }
    }
    {
        let mut stmt = tx
            .prepare(
                "SELECT id, version FROM deleted WHERE entity = ?1 AND version > ?2 ORDER BY version LIMIT ?3",
            )
            .map_err(map("reading deletes"))?;
        let deletes = stmt
            .query_map(rusqlite::params![entity.as_str(), position.deletes_after(), limit], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(map("reading deletes"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(map("reading deletes"))?;
        for (id, version) in deletes {
            changes.push((version, Change::Delete(meta.parse_row_id(&id)?)));
        }
    }
    // A read: ending it commits nothing.
    drop(tx);

    changes.sort_unstable_by_key(|(version, _)| *version);
    let more = changes.len() > page_size;
    changes.truncate(page_size);
    let next = match changes.last() {
        Some((version, _)) if more => Position { version: *version, ..position },
        // Caught up: everything up to the counter has been seen; a full
        // read ends here and the feed goes on incrementally.
        _ => Position { version: clock.version, full_read_start: None },
    };
    let mut page = ChangePage { next_token: Some(next.encode(&clock.epoch)), more, ..Default::default() };
    for (_, change) in changes {
        match change {
            Change::Upsert(row) => page.upserts.push(row),
            Change::Delete(id) => page.deletes.push(id),
        }
    }
    Ok(page)
}

/// Applies a client's change in one write transaction; the row as it now is.
fn write_back(conn: &mut Connection, entity: &EntityName, mutation: &Mutation) -> Result<Option<Row>> {
    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map("starting a write"))?;
    let meta = read_metadata(&tx, entity)?;
    let id = meta.parse_row_id(mutation.row_id.as_str())?;
    let key = meta.key_value(id.as_str())?;
    // Typed values of the columns the client set; unknown columns and
    // ill-typed values are refused before anything is written.
    let mut values: Vec<(ColumnName, Value)> = Vec::with_capacity(mutation.values.len());
    for (column, value) in &mutation.values {
        let attr = meta
            .attribute(column.as_str())
            .ok_or_else(|| Error::invalid(format!("entity '{entity}' has no column '{column}'")))?;
        let value =
            value.clone().coerce(&attr.ty).map_err(|e| Error::invalid(format!("column '{column}': {e}")))?;
        if *column == meta.primary_key {
            if value.canonical_text() != id.as_str() {
                return Err(Error::invalid(format!(
                    "row '{id}' of '{entity}': the primary key cannot change"
                )));
            }
            continue;
        }
        values.push((column.clone(), value));
    }
    let existing = find_row(&tx, &meta, &key)?;
    let table = &meta.name;
    let key_column = &meta.primary_key;
    match (mutation.op, existing) {
        (MutationOp::Insert, Some(_)) => {
            return Err(Error::conflict(format!("row '{id}' of '{entity}' already exists")));
        }
        (MutationOp::Update | MutationOp::Delete, None) => {
            return Err(Error::conflict(format!("row '{id}' of '{entity}' does not exist")));
        }
        (MutationOp::Insert, None) => {
            // Only the columns given: the table's defaults fill the rest.
            let mut columns = vec![format!("\"{key_column}\"")];
            columns.extend(values.iter().map(|(c, _)| format!("\"{c}\"")));
            let marks = (1..=columns.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
            let sql = format!("INSERT INTO \"{table}\" ({}) VALUES ({marks})", columns.join(", "));
            let args = std::iter::once(to_sql(&key)).chain(values.iter().map(|(_, v)| to_sql(v)));
            tx.execute(&sql, params_from_iter(args)).map_err(map("inserting a row"))?;
        }
        (MutationOp::Update, Some(_)) if values.is_empty() => {}
        (MutationOp::Update, Some(_)) => {
            let sets: Vec<String> =
                values.iter().enumerate().map(|(i, (c, _))| format!("\"{c}\" = ?{}", i + 2)).collect();
            let sql = format!("UPDATE \"{table}\" SET {} WHERE \"{key_column}\" = ?1", sets.join(", "));
            let args = std::iter::once(to_sql(&key)).chain(values.iter().map(|(_, v)| to_sql(v)));
            tx.execute(&sql, params_from_iter(args)).map_err(map("updating a row"))?;
        }
        (MutationOp::Delete, Some(_)) => {
            let sql = format!("DELETE FROM \"{table}\" WHERE \"{key_column}\" = ?1");
            tx.execute(&sql, [to_sql(&key)]).map_err(map("deleting a row"))?;
        }
    }
    let now = find_row(&tx, &meta, &key)?;
    tx.commit().map_err(map("committing a write"))?;
    Ok(now)
}

#[async_trait]
impl MetadataSource for HostDbSource {
    async fn entities(&self) -> Result<Vec<EntityMetadata>> {
        let tables: Vec<EntityName> = self.tables.keys().cloned().collect();
        self.with_conn(move |conn| tables.iter().map(|t| read_metadata(conn, t)).collect()).await
    }

    async fn changes(
        &self,
        entity: &EntityName,
        token: Option<ChangeToken>,
        page_size: usize,
    ) -> Result<ChangePage> {
        self.spec(entity)?;
        if page_size == 0 {
            return Err(Error::invalid("page_size must be at least 1"));
        }
        let entity = entity.clone();
        self.with_conn(move |conn| read_page(conn, &entity, token.as_ref(), page_size)).await
    }

    async fn apply(&self, entity: &EntityName, mutation: &Mutation) -> Result<Option<Row>> {
        if !self.spec(entity)?.writable {
            return Err(Error::forbidden(format!("entity '{entity}' is read-only in the host database")));
        }
        let entity = entity.clone();
        let mutation = mutation.clone();
        self.with_conn(move |conn| write_back(conn, &entity, &mutation)).await
    }
}

/// Connects orgs whose source configuration has kind
/// [`HostDbConnector::KIND`] and a `path` setting naming the host database
/// file, offering the connector's tables.
#[derive(Clone, Debug)]
pub struct HostDbConnector {
    tables: Vec<TableSpec>,
}

impl HostDbConnector {
    /// The `kind` of the configurations this connector accepts.
    pub const KIND: &'static str = "host-sqlite";
    /// The setting that holds the database path.
    pub const PATH_SETTING: &'static str = "path";

    /// A connector offering `tables` of every database it connects to.
    pub fn new(tables: Vec<TableSpec>) -> Self {
        HostDbConnector { tables }
    }

    /// The source configuration of the database at `path`.
    pub fn config(path: impl Into<PathBuf>) -> OrgSourceConfig {
        OrgSourceConfig {
            kind: Self::KIND.to_owned(),
            settings: BTreeMap::from([(
                Self::PATH_SETTING.to_owned(),
                path.into().to_string_lossy().into_owned(),
            )]),
        }
    }
}

#[async_trait]
impl SourceConnector for HostDbConnector {
    async fn connect(&self, config: &OrgSourceConfig) -> Result<Arc<dyn MetadataSource>> {
        if config.kind != Self::KIND {
            return Err(Error::invalid(format!("source kind '{}' is not '{}'", config.kind, Self::KIND)));
        }
        let path = config.settings.get(Self::PATH_SETTING).ok_or_else(|| {
            Error::invalid(format!("a '{}' source needs the setting '{}'", Self::KIND, Self::PATH_SETTING))
        })?;
        // Opening a missing file would create an empty database; refuse instead.
        if !Path::new(path).is_file() {
            return Err(Error::invalid(format!("the host database {path:?} does not exist")));
        }
        Ok(Arc::new(HostDbSource::open(path, self.tables.clone()).await?))
    }
}
