//! [`SqlServerStagingStore`]: the control plane (orgs, the org directory)
//! and org provisioning in both layouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sync_core::{Error, OrgConfig, OrgId, OrgStaging, Result, StagingStore};

use crate::config::{OrgLayout, SqlServerConfig};
use crate::db::{batch, execute, first, query, with_conn};
use crate::error::{MssqlError, R, codes};
use crate::org::{ControlRef, HandleParts, Place, SqlServerOrgStaging, read_state};
use crate::pool::{Conn, Pool, Pooled};
use crate::sql;
use crate::values::{Param, get_str};

/// The longest pause between marking an org database dropped and closing
/// its sessions (the configured poll interval, at most this).
const MARK_GRACE: Duration = Duration::from_secs(2);

/// Attempts of an org database's `DROP` that lost its one session to another
/// process (see [`SqlServerStagingStore::drop_database`]).
const DROP_ATTEMPTS: u32 = 5;

/// The errors after which dropping an org database is tried again.
const DROP_RETRY_CODES: &[u32] = &[
    codes::DATABASE_IN_USE,
    codes::DATABASE_LOCK_REFUSED,
    codes::DATABASE_OPTIONS_LOCKED,
    codes::SINGLE_USER_IN_USE,
    codes::DEADLOCK,
];

/// The scale-out [`StagingStore`] on SQL Server / Azure SQL.
///
/// * **Control plane** in the configured database and control schema:
///   `sync_orgs` (id, configuration JSON, incarnation) and
///   `sync_org_directory` (id, base URL).
/// * **One database per org** (`<database_prefix><org>`, created on
///   [`create_org`](StagingStore::create_org) and dropped on
///   [`drop_org`](StagingStore::drop_org); each reached through a pool of
///   its own, never with `USE`), or **one schema per org** in the control
///   database ([`OrgLayout::SchemaPerOrg`], for Azure SQL where creating
///   databases is not allowed).
/// * **Per org**: a typed table per entity and the `_sync_` bookkeeping
///   tables (see [`sql::create_org_tables`]).
/// * **Seq order is commit order across processes**: every staging write
///   transaction first takes the org's `sp_getapplock` and allocates seqs
///   only while holding it (see the crate docs). Pulls read one `SNAPSHOT`.
/// * **Provisioning** of one org is serialized across processes by a
///   session-owned application lock, since `CREATE DATABASE` cannot run in a
///   transaction; both steps are idempotent, so an interrupted
///   `create_org` or `drop_org` is finished by running it again.
///
/// Cloning shares the pools and the cache of org handles.
#[derive(Clone)]
pub struct SqlServerStagingStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: SqlServerConfig,
    tds: tiberius::Config,
    control: Pool,
    /// The control database's name, which no org database may have.
    control_database: String,
    /// Pools of org databases (database-per-org), by database name, at
    /// most `max_org_pools` of them.
    org_pools: Mutex<HashMap<String, OrgPool>>,
    /// One handle per org, so that every caller shares its head watch.
    handles: Mutex<HashMap<OrgId, Arc<SqlServerOrgStaging>>>,
}

impl std::fmt::Debug for SqlServerStagingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerStagingStore")
            .field("layout", &self.inner.config.layout)
            .field("control_schema", &self.inner.config.control_schema)
            .field("database_prefix", &self.inner.config.database_prefix)
            .finish_non_exhaustive()
    }
}

/// The pool of one org database and when it was last used.
struct OrgPool {
    pool: Pool,
    last_used: Instant,
    org: OrgId,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold no invariant a panic could break half-way.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A session-owned provisioning lock on one connection. Dropped without
/// [`ProvisionLock::release`] (an error or a cancelled future), the
/// connection is discarded, which ends the session and so the lock.
struct ProvisionLock {
    conn: Pooled,
    resource: String,
    held: bool,
}

impl ProvisionLock {
    async fn take(pool: &Pool, org: &OrgId, timeout_ms: i32) -> R<Self> {
        let resource = sql::provision_lock_resource(org);
        let conn = pool.get().await?;
        let params = [Param::text(resource.clone()), Param::I32(Some(timeout_ms))];
        let mut lock = ProvisionLock { conn, resource, held: true };
        lock.conn.run(async |c| query(c, sql::TAKE_SESSION_LOCK, &params).await.map(drop)).await?;
        Ok(lock)
    }

    async fn query(&mut self, statement: &str, params: &[Param]) -> R<Vec<tiberius::Row>> {
        self.conn.run(async |c| query(c, statement, params).await).await
    }

    async fn release(mut self) -> R<()> {
        let params = [Param::text(self.resource.clone())];
        self.conn.run(async |c| execute(c, sql::RELEASE_SESSION_LOCK, &params).await).await?;
        self.held = false;
        Ok(())
    }
}

impl Drop for ProvisionLock {
    fn drop(&mut self) {
        if self.held {
            self.conn.discard();
        }
    }
}

impl SqlServerStagingStore {
    /// Connects and creates the control schema and tables when missing; in
    /// the schema-per-org layout also allows snapshot reads in the control
    /// database (needs `ALTER` on it, or Azure SQL, where they are on).
    /// Errors: `InvalidInput` for a bad configuration, `Unavailable` when
    /// the server cannot be reached, `Internal` when the login is refused.
    pub async fn connect(config: &SqlServerConfig) -> Result<Self> {
        config.validate()?;
        let tds = config.tds_config()?;
        let control = Pool::new(tds.clone(), config.pool_size, config.connect_timeout);
        let schema = config.control_schema.clone();
        let layout = config.layout;
        let control_database = with_conn(&control, async |c| {
            query(c, &sql::control::create_tables(&schema)?, &[Param::text(schema.clone())]).await?;
            if layout == OrgLayout::SchemaPerOrg {
                execute(c, sql::ALLOW_SNAPSHOT_HERE, &[]).await?;
            }
            let rows = query(c, "SELECT DB_NAME()", &[]).await?;
            Ok(get_str(first(&rows, "DB_NAME()")?, 0, "the control database's name")?.to_owned())
        })
        .await?;
        Ok(SqlServerStagingStore {
            inner: Arc::new(Inner {
                config: config.clone(),
                tds,
                control,
                control_database,
                org_pools: Mutex::new(HashMap::new()),
                handles: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SqlServerConfig {
        &self.inner.config
    }

    /// Drops every org (as [`StagingStore::drop_org`]) and then the control
    /// tables, and the control schema when it is not `dbo` and holds nothing
    /// else (the queue's tables are left alone). For tests and uninstalls.
    pub async fn uninstall(&self) -> Result<()> {
        for org in self.orgs().await? {
            self.drop_org(&org.id).await?;
        }
        let schema = self.inner.config.control_schema.clone();
        with_conn(&self.inner.control, async |c| {
            execute(c, &sql::control::drop_tables(&schema)?, &[Param::text(schema.clone())]).await
        })
        .await?;
        guard(&self.inner.handles).clear();
        guard(&self.inner.org_pools).clear();
        Ok(())
    }

    /// The org's database or schema ([`SqlServerConfig::org_container`]),
    /// never the control database.
    fn container(&self, org: &OrgId) -> Result<String> {
        let name = self.inner.config.org_container(org)?;
        if self.inner.config.layout == OrgLayout::DatabasePerOrg
            && name.eq_ignore_ascii_case(&self.inner.control_database)
        {
            return Err(Error::invalid(format!(
                "org '{org}' would be stored in '{name}', the control database; choose another database_prefix"
            )));
        }
        Ok(name)
    }

    fn control_schema(&self) -> &str {
        &self.inner.config.control_schema
    }

    fn lock_timeout_ms(&self) -> i32 {
        i32::try_from(self.inner.config.lock_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// Where `org`'s tables are.
    fn place(&self, org: &OrgId) -> Result<Place> {
        let name = self.container(org)?;
        Ok(match self.inner.config.layout {
            OrgLayout::SchemaPerOrg => {
                Place { pool: self.inner.control.clone(), schema: name, own_database: false }
            }
            OrgLayout::DatabasePerOrg => {
                let now = Instant::now();
                let mut pools = guard(&self.inner.org_pools);
                let pool = match pools.get_mut(&name) {
                    Some(entry) => {
                        entry.last_used = now;
                        entry.pool.clone()
                    }
                    None => {
                        let mut tds = self.inner.tds.clone();
                        tds.database(&name);
                        let pool = Pool::new(
                            tds,
                            self.inner.config.org_pool_size,
                            self.inner.config.connect_timeout,
                        );
                        pools.insert(
                            name.clone(),
                            OrgPool { pool: pool.clone(), last_used: now, org: org.clone() },
                        );
                        pool
                    }
                };
                // Past the bound, the least recently used org database's
                // pool (and its cached handle) goes: its idle connections
                // close once no caller holds that handle any more.
                let evicted = if pools.len() > self.inner.config.max_org_pools {
                    let oldest = pools
                        .iter()
                        .filter(|(n, _)| **n != name)
                        .min_by_key(|(_, e)| e.last_used)
                        .map(|(n, _)| n.clone());
                    oldest.and_then(|n| pools.remove(&n)).map(|e| e.org)
                } else {
                    None
                };
                drop(pools);
                if let Some(org) = evicted {
                    guard(&self.inner.handles).remove(&org);
                }
                Place { pool, schema: "dbo".to_owned(), own_database: true }
            }
        })
    }

    /// Control-table request.
    async fn control(&self, statement: &str, params: Vec<Param>) -> R<Vec<tiberius::Row>> {
        with_conn(&self.inner.control, async |c| query(c, statement, &params).await).await
    }

    /// Another org whose id differs from `org`'s only in case: its
    /// database or schema is `org`'s too (SQL Server compares those names
    /// ignoring case), so neither may provision or drop it for `org`.
    async fn case_clash(&self, lock: &mut ProvisionLock, org: &OrgId) -> R<Option<String>> {
        let clash = lock
            .query(&sql::control::org_case_clash(self.control_schema())?, &[Param::text(org.as_str())])
            .await?;
        clash.first().map(|r| get_str(r, 0, "id").map(str::to_owned)).transpose()
    }

    /// Creates the org's database or schema and its bookkeeping tables when
    /// missing; returns the org's incarnation (an existing one is kept).
    async fn provision(&self, lock: &mut ProvisionLock, org: &OrgId) -> R<String> {
        let name = self.container(org)?;
        if let Some(other) = self.case_clash(lock, org).await? {
            return Err(Error::invalid(format!(
                "org '{org}' differs from the org '{other}' only in case; their databases or schemas would collide"
            ))
            .into());
        }
        match self.inner.config.layout {
            OrgLayout::DatabasePerOrg => {
                lock.query(&sql::create_database(&name)?, &[Param::text(name.clone())]).await?;
            }
            OrgLayout::SchemaPerOrg => {
                lock.query(&sql::create_schema(&name)?, &[Param::text(name.clone())]).await?;
            }
        }
        let place = self.place(org)?;
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let init = async |c: &mut Conn| {
            batch(c, sql::SESSION_OPTIONS).await?;
            for ddl in sql::create_org_tables(&place.schema)? {
                execute(c, &ddl, &[]).await?;
            }
            let rows = query(c, &sql::init_org(&place.schema)?, &[Param::text(fresh.clone())]).await?;
            Ok(get_str(first(&rows, "init_org")?, 0, "incarnation")?.to_owned())
        };
        match self.inner.config.layout {
            // The org's tables live in the control database: use the
            // connection already held, so a pool of one connection suffices.
            OrgLayout::SchemaPerOrg => lock.conn.run(init).await,
            OrgLayout::DatabasePerOrg => with_conn(&place.pool, init).await,
        }
    }

    /// Drops the org's database or schema, and its control row.
    ///
    /// Other processes must stop using the org before its database can be
    /// dropped, so the order is: (1) its incarnation is marked dropped in
    /// its own bookkeeping ([`sql::mark_dropped`]): every handle of every
    /// process finds it gone on its next call, retires (closing its idle
    /// sessions) and stops polling; (2) its control row is deleted: `org()`
    /// answers `NotFound` everywhere without connecting; (3) the database or
    /// schema is dropped. An interruption anywhere leaves an org that
    /// answers `NotFound` and that `drop_org` or `create_org` finishes.
    async fn deprovision(&self, lock: &mut ProvisionLock, org: &OrgId, name: &str) -> R<()> {
        if let Some(handle) = lock_handles_remove(&self.inner.handles, org) {
            handle.retire();
        }
        match self.inner.config.layout {
            OrgLayout::DatabasePerOrg => {
                let exists = lock.query(sql::DATABASE_EXISTS, &[Param::text(name)]).await?;
                let exists = first(&exists, "database_exists")?.try_get::<bool, _>(0)?.unwrap_or(false);
                // Best effort: a database that cannot be reached (it is
                // single-user after an interrupted drop, say) is dropped
                // all the same.
                let marked = if exists { self.mark_database_dropped(org).await } else { 0 };
                lock.query(&sql::control::delete_org(self.control_schema())?, &[Param::text(org.as_str())])
                    .await?;
                // Idle pooled sessions on the database would be killed by the
                // drop anyway: forget the pool.
                guard(&self.inner.org_pools).remove(name);
                if marked > 0 {
                    // Let the head pollers of other processes see the mark
                    // (one poll interval) and retire before their sessions
                    // are closed, so none of them reconnects mid-drop.
                    tokio::time::sleep(self.inner.config.poll_interval.min(MARK_GRACE)).await;
                }
                self.drop_database(lock, name).await?;
            }
            OrgLayout::SchemaPerOrg => {
                lock.query(&sql::mark_dropped(name)?, &[]).await?;
                lock.query(&sql::control::delete_org(self.control_schema())?, &[Param::text(org.as_str())])
                    .await?;
                lock.query(&sql::drop_schema(name)?, &[Param::text(name)]).await?;
            }
        }
        Ok(())
    }

    /// Marks the org's database dropped (see [`sql::mark_dropped`]) through
    /// a short-lived connection of its own; the rows changed, 0 when the
    /// database could not be reached.
    async fn mark_database_dropped(&self, org: &OrgId) -> u64 {
        let Ok(place) = self.place(org) else { return 0 };
        let Ok(mark) = sql::mark_dropped(&place.schema) else { return 0 };
        let marked = with_conn(&place.pool, async |c| execute(c, &mark, &[]).await).await;
        place.pool.close_idle();
        marked.unwrap_or(0)
    }

    /// Runs [`sql::drop_database`], again after a pause when a session of
    /// another process took the database's one slot between its `SET
    /// SINGLE_USER` and its `DROP` (errors 3702, 5061, 5064, 924, or a
    /// deadlock): by then that process has found the org marked dropped and
    /// closed its sessions.
    async fn drop_database(&self, lock: &mut ProvisionLock, name: &str) -> R<()> {
        let statement = sql::drop_database(name)?;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match lock.query(&statement, &[Param::text(name)]).await {
                Ok(_) => return Ok(()),
                Err(MssqlError::Tds(tiberius::error::Error::Server(t)))
                    if attempt < DROP_ATTEMPTS && DROP_RETRY_CODES.contains(&t.code()) =>
                {
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the org's database or schema exists and holds this store's
    /// bookkeeping (an org, or what an interrupted drop left of one).
    async fn has_bookkeeping(&self, lock: &mut ProvisionLock, org: &OrgId, name: &str) -> R<bool> {
        let read = match self.inner.config.layout {
            OrgLayout::DatabasePerOrg => {
                let exists = lock.query(sql::DATABASE_EXISTS, &[Param::text(name)]).await?;
                if !first(&exists, "database_exists")?.try_get::<bool, _>(0)?.unwrap_or(false) {
                    return Ok(false);
                }
                let place = self.place(org)?;
                with_conn(&place.pool, async |c| read_state(c, &place.schema).await).await
            }
            OrgLayout::SchemaPerOrg => lock.conn.run(async |c| read_state(c, name).await).await,
        };
        match read {
            Ok(state) => Ok(state.is_some()),
            Err(MssqlError::Tds(tiberius::error::Error::Server(t))) => match t.code() {
                codes::INVALID_OBJECT => Ok(false),
                // Only a drop of this store leaves an org database
                // single-user (one that lost its session and could not be
                // put back): finish it.
                codes::SINGLE_USER_IN_USE => Ok(true),
                _ => Err(MssqlError::Tds(tiberius::error::Error::Server(t))),
            },
            Err(e) => Err(e),
        }
    }

    /// Whether the org's database or schema is missing, after reading its
    /// bookkeeping failed with `e`: its tables are missing (208), or its
    /// database cannot be opened (4060, 911) and does not exist.
    async fn container_missing(&self, org: &OrgId, e: &MssqlError) -> R<bool> {
        let MssqlError::Tds(tiberius::error::Error::Server(t)) = e else { return Ok(false) };
        match t.code() {
            codes::INVALID_OBJECT => Ok(true),
            codes::CANNOT_OPEN_DATABASE | codes::DATABASE_MISSING
                if self.inner.config.layout == OrgLayout::DatabasePerOrg =>
            {
                let name = self.container(org)?;
                let rows = self.control(sql::DATABASE_EXISTS, vec![Param::text(name)]).await?;
                Ok(!first(&rows, "database_exists")?.try_get::<bool, _>(0)?.unwrap_or(false))
            }
            _ => Ok(false),
        }
    }
}

fn lock_handles_remove(
    handles: &Mutex<HashMap<OrgId, Arc<SqlServerOrgStaging>>>,
    org: &OrgId,
) -> Option<Arc<SqlServerOrgStaging>> {
    guard(handles).remove(org)
}

fn parse_config(text: &str) -> R<OrgConfig> {
    serde_json::from_str(text).map_err(|e| MssqlError::Decode(format!("stored org configuration: {e}")))
}

#[async_trait]
impl StagingStore for SqlServerStagingStore {
    async fn create_org(&self, config: &OrgConfig) -> Result<()> {
        let name = self.container(&config.id)?;
        let json = serde_json::to_string(config).map_err(|e| {
            Error::internal(format!("encoding the configuration of org '{}': {e}", config.id))
        })?;
        let mut guard = ProvisionLock::take(&self.inner.control, &config.id, self.lock_timeout_ms()).await?;
        if let Some(other) = self.case_clash(&mut guard, &config.id).await? {
            guard.release().await?;
            return Err(Error::invalid(format!(
                "org '{}' differs from the org '{other}' only in case; their databases or schemas would collide",
                config.id
            )));
        }
        // An org without a control row whose container holds this store's
        // bookkeeping is the remains of an interrupted drop_org (its data
        // and incarnation must not come back): finish that drop first.
        let known = guard
            .query(&sql::control::select_org(self.control_schema())?, &[Param::text(config.id.as_str())])
            .await?;
        if known.is_empty() && self.has_bookkeeping(&mut guard, &config.id, &name).await? {
            self.deprovision(&mut guard, &config.id, &name).await?;
        }
        let mut incarnation = self.provision(&mut guard, &config.id).await?;
        if incarnation == sql::DROPPED_INCARNATION {
            // A drop interrupted after marking the org, before deleting its
            // control row.
            self.deprovision(&mut guard, &config.id, &name).await?;
            incarnation = self.provision(&mut guard, &config.id).await?;
        }
        guard
            .query(
                &sql::control::put_org(self.control_schema())?,
                &[Param::text(config.id.as_str()), Param::text(json), Param::text(incarnation)],
            )
            .await?;
        guard.release().await?;
        Ok(())
    }

    async fn drop_org(&self, org: &OrgId) -> Result<()> {
        // An id too long for a container name was never created.
        let Ok(name) = self.container(org) else { return Ok(()) };
        let mut guard = ProvisionLock::take(&self.inner.control, org, self.lock_timeout_ms()).await?;
        // The database or schema of an org whose id differs only in case
        // is that org's, not this unknown org's: leave it alone.
        if self.case_clash(&mut guard, org).await?.is_none() {
            self.deprovision(&mut guard, org, &name).await?;
        }
        guard.release().await?;
        Ok(())
    }

    async fn orgs(&self) -> Result<Vec<OrgConfig>> {
        let rows = self.control(&sql::control::select_orgs(self.control_schema())?, Vec::new()).await?;
        Ok(rows.iter().map(|r| parse_config(get_str(r, 1, "config")?)).collect::<R<Vec<_>>>()?)
    }

    async fn org_config(&self, org: &OrgId) -> Result<OrgConfig> {
        let rows = self
            .control(&sql::control::select_org(self.control_schema())?, vec![Param::text(org.as_str())])
            .await?;
        let row = rows.first().ok_or_else(|| Error::not_found(format!("org '{org}'")))?;
        Ok(parse_config(get_str(row, 0, "config")?)?)
    }

    async fn org(&self, org: &OrgId) -> Result<Arc<dyn OrgStaging>> {
        let rows = self
            .control(&sql::control::select_org(self.control_schema())?, vec![Param::text(org.as_str())])
            .await?;
        let row = rows.first().ok_or_else(|| Error::not_found(format!("org '{org}'")))?;
        let incarnation = get_str(row, 1, "incarnation").map_err(Error::from)?.to_owned();
        // Looked up first: it marks the org database's pool as recently used.
        let place = self.place(org)?;
        if let Some(handle) = guard(&self.inner.handles).get(org)
            && handle.incarnation_str() == incarnation
            && !handle.is_retired()
        {
            return Ok(handle.clone() as Arc<dyn OrgStaging>);
        }
        let schema = place.schema.clone();
        let state = match with_conn(&place.pool, async |c| read_state(c, &schema).await).await {
            Ok(state) => state,
            Err(e) if self.container_missing(org, &e).await? => None,
            Err(e) => return Err(e.into()),
        };
        // Missing bookkeeping, or bookkeeping marked dropped, is an
        // interrupted drop_org: the org is gone.
        let Some(state) = state.filter(|s| s.incarnation != sql::DROPPED_INCARNATION) else {
            return Err(Error::not_found(format!(
                "org '{org}': its staging data is missing (an interrupted drop_org?); drop and create it again"
            )));
        };
        if state.incarnation != incarnation {
            return Err(Error::unavailable(format!("org '{org}' is being re-created; retry")));
        }
        let handle = SqlServerOrgStaging::new(HandleParts {
            id: org.clone(),
            state,
            place,
            control: ControlRef {
                pool: self.inner.control.clone(),
                schema: self.control_schema().to_owned(),
            },
            lock_timeout: self.inner.config.lock_timeout,
            poll_interval: self.inner.config.poll_interval,
        });
        let mut handles = guard(&self.inner.handles);
        // Another caller may have made one meanwhile: share theirs.
        let shared = match handles.get(org) {
            Some(existing) if existing.incarnation_str() == incarnation && !existing.is_retired() => {
                existing.clone()
            }
            _ => {
                handles.insert(org.clone(), handle.clone());
                handle
            }
        };
        Ok(shared as Arc<dyn OrgStaging>)
    }

    async fn set_org_location(&self, org: &OrgId, base_url: Option<String>) -> Result<()> {
        let schema = self.control_schema();
        match base_url {
            Some(url) if url.trim().is_empty() => {
                Err(Error::invalid(format!("org '{org}': the directory needs a non-empty base URL")))
            }
            Some(url) => {
                self.control(
                    &sql::control::put_location(schema)?,
                    vec![Param::text(org.as_str()), Param::text(url)],
                )
                .await?;
                Ok(())
            }
            None => {
                self.control(&sql::control::delete_location(schema)?, vec![Param::text(org.as_str())])
                    .await?;
                Ok(())
            }
        }
    }

    async fn org_location(&self, org: &OrgId) -> Result<Option<String>> {
        let rows = self
            .control(&sql::control::select_location(self.control_schema())?, vec![Param::text(org.as_str())])
            .await?;
        Ok(rows.first().map(|r| get_str(r, 0, "base_url").map(str::to_owned)).transpose()?)
    }

    async fn ping(&self) -> Result<()> {
        self.control("SELECT 1", Vec::new()).await?;
        Ok(())
    }
}
