//! [`SqliteStagingStore`]: the control database, the org handles and the
//! bounded cache of open org databases.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};
use sync_core::staging::{ApplyOutcome, MutationRecord, PullPage, PullPlan, SchemaChange};
use sync_core::{
    ChangePage, ChangeToken, Checksum, EntityMetadata, EntityName, Error, MutationId, OrgConfig, OrgId,
    OrgStaging, OrgStatus, PartitionKey, Profile, ProfileName, Result, RowId, Seq, StagedRow, StagingStore,
    SyncRunReport,
};
use tokio::sync::watch;

use crate::error::{R, StoreError};
use crate::org_db;
use crate::sql::{ConnSettings, open};

/// The control database's file name inside the data directory.
pub const CONTROL_FILE: &str = "control.sqlite";
/// The folder of the org databases inside the data directory.
pub const ORGS_DIR: &str = "orgs";
const LOCK_FILE: &str = "LOCK";

const CONTROL_DDL: &str = "
CREATE TABLE IF NOT EXISTS orgs (
    id     TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS org_directory (
    id       TEXT PRIMARY KEY,
    base_url TEXT NOT NULL
);
";

/// Tuning of a [`SqliteStagingStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most org databases kept open at once (least recently used ones are
    /// closed beyond it). Each open org holds one writer connection and up to
    /// `readers_per_org` idle readers, about three file descriptors each.
    /// Default 64.
    pub max_open_orgs: usize,
    /// Idle reader connections kept per open org (more are opened while
    /// reads run concurrently, and closed afterwards). Default 2.
    pub readers_per_org: usize,
    /// SQLite page cache per connection, in KiB. A larger cache roughly
    /// doubles write speed on large tables. Default 32 MiB.
    pub cache_size_kib: u32,
    /// How long a connection waits for another writer's lock before the
    /// operation fails with `Unavailable`. Default 5 s.
    pub busy_timeout: Duration,
    /// Bytes of each database file (the org databases and the control
    /// database) SQLite may memory-map (`PRAGMA mmap_size`). Mapped pages are read in place from the operating
    /// system's page cache, which every connection shares, instead of being
    /// copied into each connection's own cache: a reader's first pass over
    /// a large org allocates no page memory, and the files' pages are held
    /// once however many connections read them. The price is SQLite's: an
    /// I/O error while reading a mapped page is a `SIGBUS` for the process
    /// rather than an error of the operation. 0 turns memory mapping off.
    /// Default 1 GiB on 64-bit targets (address space only: the mapping
    /// never exceeds the file), 0 elsewhere.
    pub mmap_size: u64,
    /// WAL pages after which an org's WAL is copied back into its database.
    /// For org databases that copy (a checkpoint) runs in the background,
    /// beside the writer; only at four times this many pages does the
    /// writer checkpoint itself, which bounds the `-wal` file. The control
    /// database checkpoints inside the commit (`PRAGMA wal_autocheckpoint`).
    /// Larger values make commits of large change pages cheaper (a page
    /// rewritten by several commits is copied once) at the price of a
    /// larger `-wal` file; 0 turns checkpoints off but for the one SQLite
    /// runs when the last connection closes. Default 10,000 pages (about
    /// 40 MB).
    pub wal_autocheckpoint: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_open_orgs: 64,
            readers_per_org: 2,
            cache_size_kib: 32 * 1024,
            busy_timeout: Duration::from_secs(5),
            mmap_size: if cfg!(target_pointer_width = "64") { 1 << 30 } else { 0 },
            wal_autocheckpoint: 10_000,
        }
    }
}

impl StoreOptions {
    fn settings(&self) -> ConnSettings {
        ConnSettings {
            busy_timeout: self.busy_timeout,
            cache_size_kib: self.cache_size_kib,
            mmap_size: self.mmap_size,
            wal_autocheckpoint: self.wal_autocheckpoint,
        }
    }
}

/// Locks a mutex, recovering from poisoning: a panic in a blocking task
/// unwinds through rusqlite's transaction guards, which roll back, so the
/// connection behind the mutex is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs blocking database work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> R<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(StoreError::from(e).into()),
    }
}

thread_local! {
    /// Frames in the WAL after the last commit of an org writer on this
    /// thread, as SQLite reported them to [`note_wal_frames`].
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// The WAL hook of org writers: replaces SQLite's autocheckpoint (which
/// copies the WAL back inside the commit that crossed the threshold) with a
/// note of the WAL's size, which [`OrgDb::with_writer`] acts on.
fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|c| c.set(frames));
    Ok(())
}

/// Makes `conn` an org writer: its commits no longer checkpoint.
fn as_writer(conn: Connection) -> Connection {
    conn.wal_hook(Some(note_wal_frames));
    conn
}

/// One org's open connections: a writer (all writes of the org go through it,
/// one at a time, each in a `BEGIN IMMEDIATE` transaction) and a few idle
/// readers (reads run concurrently on WAL snapshots).
///
/// Checkpoints run in the background: once a commit leaves at least
/// `wal_autocheckpoint` frames in the WAL, a task on the blocking pool
/// copies them back with its own connection (`PASSIVE`, so it never blocks
/// the writer or readers) while the writer goes on. Only when the WAL
/// reaches four times that (the background cannot keep up, or a reader
/// holds an old snapshot) does the writer checkpoint itself, which bounds
/// the WAL.
struct OrgDb {
    path: PathBuf,
    settings: ConnSettings,
    writer: Mutex<Option<Connection>>,
    readers: Mutex<Vec<Connection>>,
    max_idle_readers: usize,
    /// A background checkpoint is queued or running; `checkpointed` is
    /// notified when it ends.
    checkpointing: Mutex<bool>,
    checkpointed: Condvar,
    /// Counts the org's live connection sets (see [`OrgShared::alive`]).
    _alive: Arc<()>,
}

impl OrgDb {
    /// The writer connection kept in `slot`, opened there when there is none.
    fn writer_in<'g>(&self, slot: &'g mut Option<Connection>) -> R<&'g mut Connection> {
        match slot {
            Some(c) => Ok(c),
            None => Ok(slot.insert(as_writer(open_org(&self.path, &self.settings, false)?))),
        }
    }

    fn with_writer<T>(self: &Arc<Self>, f: impl FnOnce(&mut Connection) -> R<T>) -> R<T> {
        let mut guard = lock(&self.writer);
        let conn = self.writer_in(&mut guard)?;
        WAL_FRAMES.with(|c| c.set(0));
        let out = f(conn);
        let frames = u32::try_from(WAL_FRAMES.with(|c| c.replace(0))).unwrap_or(0);
        let threshold = self.settings.wal_autocheckpoint;
        if threshold > 0 && frames >= threshold.saturating_mul(4) {
            tracing::debug!(path = %self.path.display(), frames, "the writer checkpoints the WAL itself");
            if let Err(e) = checkpoint(conn) {
                tracing::warn!(path = %self.path.display(), error = %e, "checkpoint failed");
            }
        } else if threshold > 0
            && frames >= threshold
            && !std::mem::replace(&mut *lock(&self.checkpointing), true)
        {
            let db = Arc::clone(self);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || db.checkpoint_in_background())),
                Err(_) => db.checkpoint_in_background(),
            }
        }
        out
    }

    /// Copies the WAL back into the database on a connection of its own.
    fn checkpoint_in_background(&self) {
        let started = Instant::now();
        let result = open_org(&self.path, &self.settings, false).and_then(|c| checkpoint(&c));
        *lock(&self.checkpointing) = false;
        self.checkpointed.notify_all();
        match result {
            Ok((frames, copied)) => tracing::debug!(
                path = %self.path.display(),
                frames,
                copied,
                ms = started.elapsed().as_millis() as u64,
                "background checkpoint"
            ),
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "background checkpoint failed"),
        }
    }

    /// Copies the whole WAL back into the database and empties it, with no
    /// commit in between: waits for a background checkpoint under way, then
    /// (up to the busy timeout) for readers of older snapshots.
    fn checkpoint_now(&self) -> R<()> {
        let mut guard = lock(&self.writer);
        let conn = self.writer_in(&mut guard)?;
        let running = self
            .checkpointed
            .wait_timeout_while(lock(&self.checkpointing), self.settings.busy_timeout, |running| *running)
            .map(|(running, _)| *running)
            .unwrap_or_else(|poisoned| *poisoned.into_inner().0);
        if running {
            return Err(Error::unavailable(format!(
                "a background checkpoint of '{}' is still running; try again",
                self.path.display()
            ))
            .into());
        }
        let started = Instant::now();
        let (busy, frames): (i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if busy != 0 {
            return Err(Error::unavailable(format!(
                "readers of older snapshots of '{}' kept its WAL in use; try again",
                self.path.display()
            ))
            .into());
        }
        tracing::debug!(
            path = %self.path.display(),
            frames,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint on request"
        );
        Ok(())
    }

    fn with_reader<T>(&self, f: impl FnOnce(&mut Connection) -> R<T>) -> R<T> {
        let idle = lock(&self.readers).pop();
        let mut conn = match idle {
            Some(c) => c,
            None => open_org(&self.path, &self.settings, true)?,
        };
        let out = f(&mut conn);
        if conn.is_autocommit() {
            let mut readers = lock(&self.readers);
            if readers.len() < self.max_idle_readers {
                readers.push(conn);
            }
        }
        out
    }
}

/// A `PASSIVE` checkpoint: copies what no reader still needs, waiting for
/// nobody. Returns the frames in the WAL and how many of them are copied.
fn checkpoint(conn: &Connection) -> R<(i64, i64)> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))?)
}

fn open_org(path: &Path, settings: &ConnSettings, read_only: bool) -> R<Connection> {
    if !path.exists() {
        return Err(StoreError::Corrupt(format!("the org database '{}' is missing", path.display())));
    }
    open(path, settings, false, read_only)
}

/// What every handle of one org incarnation shares.
struct OrgShared {
    id: OrgId,
    incarnation: String,
    path: PathBuf,
    head: watch::Sender<Seq>,
    /// Read-held by every operation; write-held by `drop_org`, which sets it
    /// to `true` (dropped) before removing the files.
    gate: tokio::sync::RwLock<bool>,
    /// Cloned into every [`OrgDb`] of this org, so `drop_org` can wait until
    /// all its connections are closed before unlinking the files.
    alive: Arc<()>,
    /// Write generation: bumped after every write transaction of this org
    /// ends, committed or not. The store owns its data directory (`LOCK`),
    /// so every write passes here and an unchanged generation means an
    /// unchanged org.
    writes: AtomicU64,
    /// What reads may answer from memory while the generation stands.
    memo: Mutex<Memo>,
    /// The org's tables as pulls read them, by schema version.
    tables: Mutex<org_db::TableCache>,
}

/// Facts of one org read at write generation `generation`: the per-request
/// reads of a sync (profiles, schemas, the tombstone floor) and, for "no
/// changes" pulls, the checksums at `head` of partitions a complete pull
/// read to the end. Never stale: an entry is used only while the org's write
/// generation still equals `generation` (PERFORMANCE.md: "no changes" should
/// not touch SQLite).
#[derive(Default)]
struct Memo {
    generation: u64,
    schemas: Option<Vec<EntityMetadata>>,
    schema_version: Option<u64>,
    profiles: Option<Vec<Profile>>,
    floor: Option<Seq>,
    /// The head of a complete pull and the checksums it returned there.
    complete: Option<(Seq, BTreeMap<PartitionKey, Checksum>)>,
}

impl OrgShared {
    /// The write generation; read it *before* reading the database, so what
    /// is then read is at least as new as this generation.
    fn generation(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    /// A fact from the memo, if it was read at the current generation.
    fn recall<T>(&self, get: impl FnOnce(&Memo) -> Option<T>) -> Option<T> {
        let generation = self.generation();
        let memo = lock(&self.memo);
        if memo.generation == generation { get(&memo) } else { None }
    }

    /// Keeps facts read after observing `generation`; a memo of another
    /// generation is replaced, one of a newer generation is left alone.
    fn remember(&self, generation: u64, put: impl FnOnce(&mut Memo)) {
        let mut memo = lock(&self.memo);
        if memo.generation > generation {
            return;
        }
        if memo.generation < generation {
            *memo = Memo { generation, ..Memo::default() };
        }
        put(&mut memo);
    }

    /// The answer to a pull whose every partition is already at the
    /// remembered complete head: nothing to send, the checksums as they are.
    fn recall_up_to_date(&self, plan: &PullPlan) -> Option<PullPage> {
        self.recall(|memo| {
            let (head, sums) = memo.complete.as_ref()?;
            let mut checksums = BTreeMap::new();
            for (key, position) in &plan.partitions {
                if position != head {
                    return None;
                }
                checksums.insert(key.clone(), *sums.get(key)?);
            }
            Some(PullPage {
                changes: Vec::new(),
                positions: plan.partitions.clone(),
                more: false,
                head: *head,
                checksums: Some(checksums),
            })
        })
    }

    fn advance(&self, head: Seq) {
        self.head.send_if_modified(|h| {
            if head > *h {
                *h = head;
                true
            } else {
                false
            }
        });
    }
}

/// A bounded least-recently-used cache of open org databases.
struct ConnCache {
    map: HashMap<OrgId, (Arc<OrgDb>, u64)>,
    tick: u64,
    capacity: usize,
}

impl ConnCache {
    fn get(
        &mut self,
        shared: &OrgShared,
        settings: &ConnSettings,
        readers: usize,
    ) -> (Arc<OrgDb>, Vec<Arc<OrgDb>>) {
        self.tick += 1;
        if let Some((db, used)) = self.map.get_mut(&shared.id) {
            *used = self.tick;
            return (db.clone(), Vec::new());
        }
        let db = Arc::new(OrgDb {
            path: shared.path.clone(),
            settings: settings.clone(),
            writer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            max_idle_readers: readers,
            checkpointing: Mutex::new(false),
            checkpointed: Condvar::new(),
            _alive: shared.alive.clone(),
        });
        self.map.insert(shared.id.clone(), (db.clone(), self.tick));
        let mut evicted = Vec::new();
        while self.map.len() > self.capacity.max(1) {
            let oldest = self.map.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| id.clone());
            match oldest.and_then(|id| self.map.remove(&id)) {
                Some((db, _)) => evicted.push(db),
                None => break,
            }
        }
        (db, evicted)
    }
}

struct Inner {
    dir: PathBuf,
    settings: ConnSettings,
    options: StoreOptions,
    control: Mutex<Connection>,
    /// Serializes create, drop and first access of orgs.
    admin: tokio::sync::Mutex<()>,
    live: Mutex<HashMap<OrgId, Arc<OrgShared>>>,
    cache: Mutex<ConnCache>,
    /// Held for the store's lifetime: one process owns a data directory.
    _lock: File,
}

impl Inner {
    fn org_path(&self, org: &OrgId) -> PathBuf {
        org_path(&self.dir, org)
    }

    /// The live incarnation of `org`, made from the facts read through
    /// `writer` when there is none yet; `writer` becomes the org's cached
    /// writer connection (so opening an org costs no extra open and close).
    /// Blocking: call on the blocking pool.
    fn attach(&self, org: &OrgId, incarnation: String, head: Seq, writer: Connection) -> Arc<OrgShared> {
        let shared = {
            let mut live = lock(&self.live);
            if let Some(s) = live.get(org) {
                return s.clone();
            }
            let shared = Arc::new(OrgShared {
                id: org.clone(),
                incarnation,
                path: self.org_path(org),
                head: watch::channel(head).0,
                gate: tokio::sync::RwLock::new(false),
                alive: Arc::new(()),
                writes: AtomicU64::new(0),
                memo: Mutex::new(Memo::default()),
                tables: Mutex::new(org_db::TableCache::default()),
            });
            live.insert(org.clone(), shared.clone());
            shared
        };
        let (db, evicted) = lock(&self.cache).get(&shared, &self.settings, self.options.readers_per_org);
        let mut slot = lock(&db.writer);
        if slot.is_none() {
            *slot = Some(as_writer(writer));
        }
        drop(slot);
        drop(evicted);
        shared
    }

    /// The org's open databases, opening (lazily) and evicting as needed.
    fn db(&self, shared: &OrgShared) -> Arc<OrgDb> {
        let (db, evicted) = lock(&self.cache).get(shared, &self.settings, self.options.readers_per_org);
        if !evicted.is_empty() {
            // Closing a connection may checkpoint its WAL: not on this thread.
            tokio::task::spawn_blocking(move || drop(evicted));
        }
        db
    }
}

fn org_path(dir: &Path, org: &OrgId) -> PathBuf {
    dir.join(ORGS_DIR).join(format!("{}.sqlite", org.as_str()))
}

/// Removes an org database with its `-wal`, `-shm` and `-journal` files.
fn remove_org_files(path: &Path) -> R<()> {
    let mut names = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        names.push(PathBuf::from(p));
    }
    for p in names {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("removing", &p, e)),
        }
    }
    Ok(())
}

/// The staging store on SQLite: a control database and one database file
/// per org under a data directory.
///
/// Layout of the data directory:
///
/// | file | holds |
/// | --- | --- |
/// | `control.sqlite` | `orgs` (id, configuration JSON), `org_directory` (id, base URL); the queue tables when a [`SqliteQueue`](crate::SqliteQueue) is opened on it |
/// | `orgs/<org>.sqlite` | one table per entity, named after it, with one typed column per attribute plus `_sync_version`; the `_sync_*` tables (schemas, profiles, partitions with checksums, membership, tokens, runs, mutations, meta) |
/// | `LOCK` | held while a store has the directory open |
///
/// Writes to one org are serialized (one writer connection, `BEGIN
/// IMMEDIATE`), so seq order is commit order and a pull never skips a
/// commit; reads run concurrently on WAL snapshots. All SQLite work runs on
/// tokio's blocking pool. One process opens a data directory at a time.
#[derive(Clone)]
pub struct SqliteStagingStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStagingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStagingStore").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl SqliteStagingStore {
    /// Opens (creating when needed) the store in `dir` with default options.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, StoreOptions::default()).await
    }

    /// Opens (creating when needed) the store in `dir`.
    ///
    /// Creates the directory, `control.sqlite` and `orgs/`; removes org files
    /// that no org owns (left by a crash during `create_org` or `drop_org`).
    /// Errors: `Unavailable` when another process has the directory open;
    /// `Internal` when the directory or the control database cannot be
    /// created or read.
    pub async fn open_with(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let settings = options.settings();
        let (control, lock_file) = blocking({
            let dir = dir.clone();
            let settings = settings.clone();
            move || open_control(&dir, &settings)
        })
        .await?;
        let cache = ConnCache { map: HashMap::new(), tick: 0, capacity: options.max_open_orgs };
        Ok(SqliteStagingStore {
            inner: Arc::new(Inner {
                dir,
                settings,
                options,
                control: Mutex::new(control),
                admin: tokio::sync::Mutex::new(()),
                live: Mutex::new(HashMap::new()),
                cache: Mutex::new(cache),
                _lock: lock_file,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The path of the control database (where [`SqliteQueue`](crate::SqliteQueue)
    /// keeps its tables by default).
    pub fn control_path(&self) -> PathBuf {
        self.inner.dir.join(CONTROL_FILE)
    }

    /// The path of an org's database file (which exists once the org is created).
    pub fn org_path(&self, org: &OrgId) -> PathBuf {
        self.inner.org_path(org)
    }

    /// How many org databases are open right now (at most
    /// [`StoreOptions::max_open_orgs`], plus those still in use by running
    /// operations).
    pub fn open_orgs(&self) -> usize {
        lock(&self.inner.cache).map.len()
    }

    /// Copies `org`'s write-ahead log back into its database file and
    /// empties the log, as SQLite's checkpoints do in the background; waits
    /// for one under way. Until the next write, the org's `.sqlite` file
    /// alone then holds every committed change: for a file-level backup
    /// while writes are paused, before a shutdown, or to count a large
    /// ingest's copy-back as part of it. Writes to the org wait meanwhile.
    ///
    /// Errors: `NotFound` for an unknown org; `Unavailable` when a
    /// background checkpoint, or a reader of an older snapshot, holds the
    /// log beyond [`StoreOptions::busy_timeout`] (nothing is lost; the log
    /// is copied back later).
    pub async fn checkpoint(&self, org: &OrgId) -> Result<()> {
        let shared = self.shared(org).await?;
        let gate = shared.gate.read().await;
        if *gate {
            return Err(Error::not_found(format!("org '{org}'")));
        }
        let db = self.inner.db(&shared);
        let out = blocking(move || db.checkpoint_now()).await;
        drop(gate);
        out
    }

    async fn control<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> R<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || f(&lock(&inner.control))).await
    }

    async fn shared(&self, org: &OrgId) -> Result<Arc<OrgShared>> {
        if let Some(s) = lock(&self.inner.live).get(org) {
            return Ok(s.clone());
        }
        let _admin = self.inner.admin.lock().await;
        if let Some(s) = lock(&self.inner.live).get(org) {
            return Ok(s.clone());
        }
        let id = org.clone();
        let exists = self
            .control(move |c| {
                Ok(c.prepare_cached("SELECT 1 FROM orgs WHERE id = ?1")?
                    .query_row([id.as_str()], |_| Ok(()))
                    .optional()?
                    .is_some())
            })
            .await?;
        if !exists {
            return Err(Error::not_found(format!("org '{org}'")));
        }
        let inner = self.inner.clone();
        let id = org.clone();
        blocking(move || {
            let conn = open_org(&inner.org_path(&id), &inner.settings, false)?;
            org_db::complete_layout(&conn)?;
            let (incarnation, head) = (org_db::incarnation(&conn)?, org_db::head(&conn)?);
            Ok(inner.attach(&id, incarnation, head, conn))
        })
        .await
    }
}

fn open_control(dir: &Path, settings: &ConnSettings) -> R<(Connection, File)> {
    let orgs = dir.join(ORGS_DIR);
    std::fs::create_dir_all(&orgs).map_err(|e| StoreError::io("creating", &orgs, e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::io("opening", &lock_path, e))?;
    match lock_file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::unavailable(format!(
                "the data directory '{}' is in use by another process",
                dir.display()
            ))
            .into());
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io("locking", &lock_path, e)),
    }
    let control = open(&dir.join(CONTROL_FILE), settings, true, false)?;
    control.execute_batch(CONTROL_DDL)?;
    // Org files without an org row are leftovers of an interrupted create
    // or drop: remove them so a later create starts empty.
    let known: std::collections::HashSet<String> = {
        let mut stmt = control.prepare("SELECT id FROM orgs")?;
        stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    let entries = std::fs::read_dir(&orgs).map_err(|e| StoreError::io("listing", &orgs, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing", &orgs, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(org) = name.strip_suffix(".sqlite")
            && !known.contains(org)
        {
            tracing::warn!(org, "removing the database of an org that no longer exists");
            remove_org_files(&entry.path())?;
        }
    }
    Ok((control, lock_file))
}

#[async_trait]
impl StagingStore for SqliteStagingStore {
    async fn create_org(&self, config: &OrgConfig) -> Result<()> {
        let _admin = self.inner.admin.lock().await;
        let inner = self.inner.clone();
        let config = config.clone();
        blocking(move || {
            let path = inner.org_path(&config.id);
            let (conn, incarnation, head) = org_db::create_file(&path, &inner.settings)?;
            let json = serde_json::to_string(&config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            lock(&inner.control)
                .prepare_cached(
                    "INSERT INTO orgs (id, config) VALUES (?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET config = excluded.config",
                )?
                .execute(rusqlite::params![config.id.as_str(), json])?;
            inner.attach(&config.id, incarnation, head, conn);
            Ok(())
        })
        .await
    }

    async fn drop_org(&self, org: &OrgId) -> Result<()> {
        let _admin = self.inner.admin.lock().await;
        let shared = lock(&self.inner.live).remove(org);
        let mut closing = Vec::new();
        let mut gate = None;
        if let Some(s) = &shared {
            let mut g = s.gate.write().await;
            *g = true;
            gate = Some(g);
            if let Some((db, _)) = lock(&self.inner.cache).map.remove(org) {
                closing.push(db);
            }
        }
        let inner = self.inner.clone();
        let id = org.clone();
        let alive = shared.as_ref().map(|s| s.alive.clone());
        let out = blocking(move || {
            drop(closing);
            lock(&inner.control).prepare_cached("DELETE FROM orgs WHERE id = ?1")?.execute([id.as_str()])?;
            if let Some(alive) = alive {
                // Evicted connection sets may still be closing on the
                // blocking pool; unlinking under them could let their
                // close delete a new incarnation's WAL.
                let deadline = Instant::now() + Duration::from_secs(30);
                while Arc::strong_count(&alive) > 2 {
                    if Instant::now() > deadline {
                        return Err(Error::unavailable(format!(
                            "org '{id}' still has open connections; try again"
                        ))
                        .into());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            remove_org_files(&inner.org_path(&id))
        })
        .await;
        drop(gate);
        out
    }

    async fn orgs(&self) -> Result<Vec<OrgConfig>> {
        self.control(|c| {
            let mut stmt = c.prepare_cached("SELECT config FROM orgs ORDER BY id")?;
            let texts = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            texts
                .iter()
                .map(|t| serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("org config: {e}"))))
                .collect()
        })
        .await
    }

    async fn org_config(&self, org: &OrgId) -> Result<OrgConfig> {
        let id = org.clone();
        self.control(move |c| {
            let text: Option<String> = c
                .prepare_cached("SELECT config FROM orgs WHERE id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?;
            let text = text.ok_or_else(|| Error::not_found(format!("org '{id}'")))?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("org config: {e}")))
        })
        .await
    }

    async fn org(&self, org: &OrgId) -> Result<Arc<dyn OrgStaging>> {
        let shared = self.shared(org).await?;
        Ok(Arc::new(SqliteOrgStaging { inner: self.inner.clone(), shared }))
    }

    async fn set_org_location(&self, org: &OrgId, base_url: Option<String>) -> Result<()> {
        if base_url.as_ref().is_some_and(|u| u.trim().is_empty()) {
            return Err(Error::invalid(format!("org '{org}': the directory needs a non-empty base URL")));
        }
        let id = org.clone();
        self.control(move |c| {
            match base_url {
                Some(url) => c
                    .prepare_cached(
                        "INSERT INTO org_directory (id, base_url) VALUES (?1, ?2) \
                         ON CONFLICT (id) DO UPDATE SET base_url = excluded.base_url",
                    )?
                    .execute(rusqlite::params![id.as_str(), url])?,
                None => {
                    c.prepare_cached("DELETE FROM org_directory WHERE id = ?1")?.execute([id.as_str()])?
                }
            };
            Ok(())
        })
        .await
    }

    async fn org_location(&self, org: &OrgId) -> Result<Option<String>> {
        let id = org.clone();
        self.control(move |c| {
            Ok(c.prepare_cached("SELECT base_url FROM org_directory WHERE id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.control(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }
}

/// A handle on one org's staging database (see [`OrgStaging`]). Bound to
/// the org as it was when the handle was made: after
/// [`StagingStore::drop_org`] every call fails with `NotFound`, even if an
/// org of the same id is created again.
pub struct SqliteOrgStaging {
    inner: Arc<Inner>,
    shared: Arc<OrgShared>,
}

impl SqliteOrgStaging {
    fn gone(&self) -> Error {
        Error::not_found(format!("org '{}'", self.shared.id))
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R<T> + Send + 'static,
    ) -> Result<T> {
        let gate = self.shared.gate.read().await;
        if *gate {
            return Err(self.gone());
        }
        let db = self.inner.db(&self.shared);
        let out = blocking(move || db.with_writer(f)).await;
        // After the transaction ended (a failed one may still have changed
        // nothing, but bumping is always safe): later reads miss the memo.
        self.shared.writes.fetch_add(1, Ordering::AcqRel);
        drop(gate);
        out
    }

    /// A read answered from the memo when it holds the fact at the current
    /// generation, else from the database (and then remembered).
    async fn read_memo<T: Clone + Send + 'static>(
        &self,
        recall: impl FnOnce(&Memo) -> Option<T>,
        load: impl FnOnce(&mut Connection) -> R<T> + Send + 'static,
        put: impl FnOnce(&mut Memo, T),
    ) -> Result<T> {
        {
            let gate = self.shared.gate.read().await;
            if *gate {
                return Err(self.gone());
            }
            if let Some(hit) = self.shared.recall(recall) {
                return Ok(hit);
            }
        }
        let generation = self.shared.generation();
        let value = self.read(load).await?;
        self.shared.remember(generation, |memo| put(memo, value.clone()));
        Ok(value)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R<T> + Send + 'static,
    ) -> Result<T> {
        let gate = self.shared.gate.read().await;
        if *gate {
            return Err(self.gone());
        }
        let db = self.inner.db(&self.shared);
        let out = blocking(move || db.with_reader(f)).await;
        drop(gate);
        out
    }
}

#[async_trait]
impl OrgStaging for SqliteOrgStaging {
    fn org_id(&self) -> OrgId {
        self.shared.id.clone()
    }

    fn incarnation(&self) -> String {
        self.shared.incarnation.clone()
    }

    async fn apply_schema(&self, meta: &EntityMetadata) -> Result<SchemaChange> {
        let meta = meta.clone();
        let (change, head) = self.write(move |c| org_db::apply_schema(c, &meta)).await?;
        self.shared.advance(head);
        Ok(change)
    }

    async fn schemas(&self) -> Result<Vec<EntityMetadata>> {
        self.read_memo(|m| m.schemas.clone(), |c| org_db::load_schemas(c), |m, v| m.schemas = Some(v)).await
    }

    async fn schema_version(&self) -> Result<u64> {
        self.read_memo(|m| m.schema_version, |c| org_db::schema_version(c), |m, v| m.schema_version = Some(v))
            .await
    }

    async fn put_profile(&self, profile: &Profile) -> Result<()> {
        let profile = profile.clone();
        let head = self.write(move |c| org_db::put_profile(c, &profile)).await?;
        self.shared.advance(head);
        Ok(())
    }

    async fn profile(&self, name: &ProfileName) -> Result<Profile> {
        let name = name.clone();
        self.read(move |c| {
            org_db::load_profile(c, &name)?
                .ok_or_else(|| Error::not_found(format!("profile '{name}'")).into())
        })
        .await
    }

    async fn profiles(&self) -> Result<Vec<Profile>> {
        self.read_memo(|m| m.profiles.clone(), |c| org_db::load_profiles(c), |m, v| m.profiles = Some(v))
            .await
    }

    async fn delete_profile(&self, name: &ProfileName) -> Result<()> {
        let name = name.clone();
        let head = self.write(move |c| org_db::delete_profile(c, &name)).await?;
        self.shared.advance(head);
        Ok(())
    }

    async fn apply_changes(&self, entity: &EntityName, page: ChangePage) -> Result<ApplyOutcome> {
        let entity = entity.clone();
        let outcome = self.write(move |c| org_db::apply_changes(c, &entity, page)).await?;
        self.shared.advance(outcome.head);
        Ok(outcome)
    }

    async fn source_token(&self, entity: &EntityName) -> Result<Option<ChangeToken>> {
        let entity = entity.clone();
        self.read(move |c| org_db::source_token(c, &entity)).await
    }

    async fn row(&self, entity: &EntityName, id: &RowId) -> Result<Option<StagedRow>> {
        let entity = entity.clone();
        let id = id.clone();
        self.read(move |c| org_db::row(c, &entity, &id)).await
    }

    async fn row_ids(&self, entity: &EntityName, after: Option<RowId>, limit: usize) -> Result<Vec<RowId>> {
        let entity = entity.clone();
        self.read(move |c| org_db::row_ids(c, &entity, after.as_ref(), limit)).await
    }

    async fn pull(&self, plan: &PullPlan) -> Result<PullPage> {
        {
            let gate = self.shared.gate.read().await;
            if *gate {
                return Err(self.gone());
            }
            if let Some(page) = self.shared.recall_up_to_date(plan) {
                return Ok(page);
            }
        }
        let generation = self.shared.generation();
        let owned = plan.clone();
        let shared = Arc::clone(&self.shared);
        let page = self.read(move |c| org_db::pull(c, &owned, &shared.tables)).await?;
        if let (false, Some(sums)) = (page.more, &page.checksums) {
            self.shared.remember(generation, |memo| match &mut memo.complete {
                Some((head, known)) if *head == page.head => {
                    known.extend(sums.iter().map(|(k, v)| (k.clone(), *v)));
                }
                _ => memo.complete = Some((page.head, sums.clone())),
            });
        }
        Ok(page)
    }

    async fn head(&self) -> Result<Seq> {
        // Not published to the watch here: a caller may hold a borrow of
        // the watch across this call.
        self.read(|c| org_db::head(c)).await
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        self.shared.head.subscribe()
    }

    async fn purge_tombstones(&self, up_to: Seq) -> Result<u64> {
        self.write(move |c| org_db::purge_tombstones(c, up_to)).await
    }

    async fn tombstone_floor(&self) -> Result<Seq> {
        self.read_memo(|m| m.floor, |c| org_db::tombstone_floor(c), |m, v| m.floor = Some(v)).await
    }

    async fn mutation_result(&self, id: &MutationId) -> Result<Option<MutationRecord>> {
        let id = *id;
        self.read(move |c| org_db::mutation_result(c, &id)).await
    }

    async fn record_mutation(&self, id: &MutationId, record: &MutationRecord) -> Result<()> {
        let id = *id;
        let record = record.clone();
        self.write(move |c| org_db::record_mutation(c, &id, &record)).await
    }

    async fn record_run(&self, report: &SyncRunReport) -> Result<()> {
        let report = report.clone();
        self.write(move |c| org_db::record_run(c, &report)).await
    }

    async fn status(&self) -> Result<OrgStatus> {
        let org = self.shared.id.clone();
        self.read(move |c| org_db::status(c, &org)).await
    }
}
