//! [`SyncClient`]: the async face of the local database and the sync loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sync_core::protocol::{MutationOutcome, MutationResult, PullRequest, PullResponse, PushRequest};
use sync_core::{ColumnName, EntityName, ErrorKind, MutationId, Row, RowId, SyncTransport, Value};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::control::{Backoff, BackoffConfig, CancelToken};
use crate::error::{ClientError, Result};
use crate::events::{Progress, StreamKind, SyncEvent, SyncReport};
use crate::store::{
    AckOutcome, ConflictRecord, LocalOp, LocalWrite, PendingMutation, QueryResult, Store, StoreOptions,
    Stream,
};

/// A callback receiving every [`SyncEvent`].
pub type EventCallback = Arc<dyn Fn(&SyncEvent) + Send + Sync>;

/// Tuning of a [`SyncClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Rows asked for per pull page (`None`: the server's maximum).
    pub page_limit: Option<u32>,
    /// Most mutations per push request.
    pub push_batch: usize,
    /// Pull pages fetched ahead of the one being applied.
    pub prefetch_pages: usize,
    /// A transaction applying pull pages commits after this many rows…
    pub max_rows_per_commit: u64,
    /// …or after this long, or when no page is ready within `page_wait`.
    pub max_commit_interval: Duration,
    /// How long an open transaction waits for the next page before it
    /// commits what it has.
    pub page_wait: Duration,
    /// Retry of `Unavailable` errors.
    pub backoff: BackoffConfig,
    /// Partition repairs one sync may run before it gives up until the next.
    pub max_repairs_per_sync: u32,
    /// Full resyncs one sync may start before it gives up until the next.
    pub max_resyncs_per_sync: u32,
    /// The local database's tuning.
    pub store: StoreOptions,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            page_limit: None,
            push_batch: 500,
            prefetch_pages: 16,
            max_rows_per_commit: 200_000,
            max_commit_interval: Duration::from_secs(2),
            page_wait: Duration::from_millis(100),
            backoff: BackoffConfig::default(),
            max_repairs_per_sync: 1,
            max_resyncs_per_sync: 2,
            store: StoreOptions::default(),
        }
    }
}

/// Options of the live loop ([`SyncClient::run`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveOptions {
    /// How long each pull waits on the server for a change (`wait_ms`).
    pub wait: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions { wait: Duration::from_secs(30) }
    }
}

/// Builds a [`SyncClient`].
pub struct SyncClientBuilder {
    transport: Arc<dyn SyncTransport>,
    path: Option<PathBuf>,
    config: ClientConfig,
    callback: Option<EventCallback>,
}

impl SyncClientBuilder {
    /// Sets the configuration.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Calls `callback` with every event (from the thread that produces it;
    /// keep it short).
    pub fn on_event(mut self, callback: impl Fn(&SyncEvent) + Send + Sync + 'static) -> Self {
        self.callback = Some(Arc::new(callback));
        self
    }

    /// Opens the database (creating it if needed) and builds the client.
    pub fn open(self) -> Result<SyncClient> {
        let store = match &self.path {
            Some(p) => Store::open(p, &self.config.store)?,
            None => Store::open_in_memory(&self.config.store)?,
        };
        let (events, _) = broadcast::channel(1024);
        Ok(SyncClient {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                transport: self.transport,
                config: self.config,
                events,
                callback: self.callback,
                sync_lock: tokio::sync::Mutex::new(()),
                local_change: Notify::new(),
                local_gen: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }
}

/// A device's local copy of its server data, and the loop that keeps it in
/// sync. Cheap to clone; every clone shares the database.
///
/// See the [crate documentation](crate) for the guarantees and an example.
#[derive(Clone)]
pub struct SyncClient {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    transport: Arc<dyn SyncTransport>,
    config: ClientConfig,
    events: broadcast::Sender<SyncEvent>,
    callback: Option<EventCallback>,
    sync_lock: tokio::sync::Mutex<()>,
    local_change: Notify,
    /// Bumped by every local write (with `local_change` notified), so a live
    /// wait can tell whether an edit arrived since a given moment.
    local_gen: std::sync::atomic::AtomicU64,
}

impl Inner {
    fn local_write_done(&self) {
        self.local_gen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.local_change.notify_waiters();
    }

    /// Completes once a local write happens after generation `since`.
    async fn local_write_since(&self, since: u64) {
        loop {
            let notified = self.local_change.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.local_gen.load(std::sync::atomic::Ordering::SeqCst) != since {
                return;
            }
            notified.await;
        }
    }

    fn store(&self) -> Result<MutexGuard<'_, Store>> {
        self.store
            .lock()
            .map_err(|_| ClientError::Task("the local database lock was poisoned by a panic".into()))
    }

    fn emit(&self, event: SyncEvent) {
        if let Some(cb) = &self.callback {
            cb(&event);
        }
        let _ = self.events.send(event);
    }
}

/// How a pull stream ended.
#[derive(Debug, Default)]
struct StreamResult {
    complete: bool,
}

impl SyncClient {
    /// Starts building a client whose database is the file at `path`.
    pub fn builder(path: impl AsRef<Path>, transport: Arc<dyn SyncTransport>) -> SyncClientBuilder {
        SyncClientBuilder {
            transport,
            path: Some(path.as_ref().to_path_buf()),
            config: ClientConfig::default(),
            callback: None,
        }
    }

    /// Starts building a client over an in-memory database (nothing
    /// survives the process; for tests and throwaway clients).
    pub fn in_memory(transport: Arc<dyn SyncTransport>) -> SyncClientBuilder {
        SyncClientBuilder { transport, path: None, config: ClientConfig::default(), callback: None }
    }

    /// Opens the database at `path` with the default configuration.
    pub fn open(path: impl AsRef<Path>, transport: Arc<dyn SyncTransport>) -> Result<SyncClient> {
        Self::builder(path, transport).open()
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.inner.events.subscribe()
    }

    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = inner.store()?;
            f(&mut store)
        })
        .await
        .map_err(|e| ClientError::Task(e.to_string()))?
    }

    // ----- local data -----

    /// Inserts a row (its key among `values`). The row shows at once and is
    /// uploaded on the next sync.
    pub async fn insert(
        &self,
        entity: &EntityName,
        values: BTreeMap<ColumnName, Value>,
    ) -> Result<LocalWrite> {
        let entity = entity.clone();
        let w = self.with_store(move |s| s.local_write(&entity, LocalOp::Insert(values))).await?;
        self.inner.local_write_done();
        Ok(w)
    }

    /// Changes some columns of a row.
    pub async fn update(
        &self,
        entity: &EntityName,
        row_id: &RowId,
        values: BTreeMap<ColumnName, Value>,
    ) -> Result<LocalWrite> {
        let (entity, row_id) = (entity.clone(), row_id.clone());
        let w = self.with_store(move |s| s.local_write(&entity, LocalOp::Update(row_id, values))).await?;
        self.inner.local_write_done();
        Ok(w)
    }

    /// Deletes a row.
    pub async fn delete(&self, entity: &EntityName, row_id: &RowId) -> Result<LocalWrite> {
        let (entity, row_id) = (entity.clone(), row_id.clone());
        let w = self.with_store(move |s| s.local_write(&entity, LocalOp::Delete(row_id))).await?;
        self.inner.local_write_done();
        Ok(w)
    }

    /// The row as the app sees it (server data with pending edits applied).
    pub async fn row(&self, entity: &EntityName, row_id: &RowId) -> Result<Option<Row>> {
        let (entity, row_id) = (entity.clone(), row_id.clone());
        self.with_store(move |s| {
            let meta = s.require_schema(&entity)?;
            s.visible_row(&meta, &row_id)
        })
        .await
    }

    /// Every visible row of `entity`, ordered by key.
    pub async fn rows(&self, entity: &EntityName) -> Result<Vec<Row>> {
        let entity = entity.clone();
        self.with_store(move |s| s.all_rows(&entity)).await
    }

    /// Runs a read-only SQL statement over the local database (entity tables
    /// carry the entities' names; the client's own tables start with `sync:`).
    pub async fn query(&self, sql: &str, params: Vec<Value>) -> Result<QueryResult> {
        let sql = sql.to_owned();
        self.with_store(move |s| s.query(&sql, &params)).await
    }

    /// Offline edits not yet acknowledged, oldest first.
    pub async fn pending(&self) -> Result<Vec<PendingMutation>> {
        self.with_store(|s| s.pending()).await
    }

    /// Uploads the server refused (conflicts and rejections) not yet dismissed.
    pub async fn conflicts(&self) -> Result<Vec<ConflictRecord>> {
        self.with_store(|s| s.conflicts()).await
    }

    /// Removes a refused upload from the conflict log. `false` when unknown.
    pub async fn dismiss_conflict(&self, id: MutationId) -> Result<bool> {
        self.with_store(move |s| s.dismiss_conflict(&id)).await
    }

    /// The state of the local copy.
    pub async fn status(&self) -> Result<crate::events::Status> {
        self.with_store(|s| s.status()).await
    }

    /// Checks the local copy against itself (recomputed checksums, held
    /// rows present) and marks partitions that fail for repair; the next
    /// sync re-reads them. Returns those partitions. Reads every membership:
    /// run it now and then (after a crash, on a schedule), not on every sync.
    pub async fn verify(&self) -> Result<Vec<sync_core::PartitionKey>> {
        self.with_store(|s| s.verify()).await
    }

    // ----- sync -----

    /// Pushes every pending edit, then pulls until the server has nothing
    /// more (`has_more = false`), verifying partition checksums and
    /// repairing partitions that do not match. Retries `Unavailable` with
    /// backoff a few times, then returns the error; everything committed
    /// before an error stays.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.sync_with(&CancelToken::new()).await
    }

    /// [`SyncClient::sync`] that stops at the next safe point when `cancel`
    /// is cancelled (returning [`ClientError::Cancelled`]).
    pub async fn sync_with(&self, cancel: &CancelToken) -> Result<SyncReport> {
        let _guard = self.inner.sync_lock.lock().await;
        let report = self.sync_locked(cancel, None).await?;
        self.inner.emit(SyncEvent::Completed(report.clone()));
        Ok(report)
    }

    /// Pushes pending edits only.
    pub async fn push(&self) -> Result<SyncReport> {
        let _guard = self.inner.sync_lock.lock().await;
        let mut report = SyncReport::default();
        self.push_all(&mut report, &CancelToken::new()).await?;
        Ok(report)
    }

    /// The live loop: syncs, then keeps a pull open on the server (`wait`)
    /// so changes arrive within moments; a local edit interrupts the wait to
    /// upload at once. `Unavailable` is retried with backoff without end;
    /// returns `Ok(())` when `cancel` is cancelled, or the first error that
    /// retrying cannot fix (`Unauthenticated`, `Forbidden`, …).
    pub async fn run(&self, options: LiveOptions, cancel: CancelToken) -> Result<()> {
        let mut backoff = Backoff::new(self.inner.config.backoff.clone());
        let mut first = true;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let result = {
                let _guard = self.inner.sync_lock.lock().await;
                let wait = if first { None } else { Some(options.wait) };
                self.sync_locked(&cancel, wait).await
            };
            match result {
                Ok(report) => {
                    first = false;
                    backoff.reset();
                    if report.pushed > 0 || report.rows > 0 || report.removes > 0 {
                        self.inner.emit(SyncEvent::Completed(report));
                    }
                }
                Err(ClientError::Cancelled) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    let retry_after = match &e {
                        ClientError::Sync(sync_core::Error::Unavailable { retry_after, .. }) => *retry_after,
                        _ => None,
                    };
                    let delay = backoff.next_delay(retry_after);
                    self.inner.emit(SyncEvent::Retrying { error: e.to_string(), delay });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn sync_locked(&self, cancel: &CancelToken, wait: Option<Duration>) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let generation = self.inner.local_gen.load(std::sync::atomic::Ordering::SeqCst);
        self.push_all(&mut report, cancel).await?;
        let mut wait = if report.pushed > 0 { None } else { wait.map(|w| (w, generation)) };
        let mut resyncs = 0;
        loop {
            let (running, _) = self.with_store(|s| s.repair_state()).await?;
            let stream = if running { Stream::Repair } else { Stream::Main };
            let result = match self.pull_stream(stream, &mut report, cancel, wait.take()).await {
                Ok(r) => r,
                Err(ClientError::Sync(e)) if e.kind() == ErrorKind::ResyncRequired => {
                    resyncs += 1;
                    if resyncs > self.inner.config.max_resyncs_per_sync {
                        return Err(ClientError::Sync(e));
                    }
                    match stream {
                        Stream::Main => {
                            tracing::warn!(reason = %e, "cursor refused by the server; resyncing");
                            self.inner.emit(SyncEvent::ResyncStarted { reason: e.to_string() });
                            self.with_store(|s| s.begin_full_resync()).await?;
                            report.resyncs += 1;
                        }
                        Stream::Repair => {
                            self.with_store(|s| s.restart_repair()).await?;
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if stream == Stream::Repair {
                continue;
            }
            if !result.complete {
                // Interrupted by a local edit during a live wait: go round.
                return Ok(report);
            }
            report.complete = true;
            let (_, needed) = self.with_store(|s| s.repair_state()).await?;
            if needed && (report.repairs as u32) < self.inner.config.max_repairs_per_sync {
                let partitions = self.with_store(|s| s.begin_repair()).await?;
                tracing::warn!(?partitions, "repairing partitions");
                self.inner.emit(SyncEvent::RepairStarted { partitions });
                report.repairs += 1;
                report.complete = false;
                continue;
            }
            return Ok(report);
        }
    }

    /// Calls `f` until it succeeds, retrying `Unavailable` with backoff up
    /// to the configured number of retries.
    async fn retrying<T, F, Fut>(&self, cancel: &CancelToken, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = sync_core::Result<T>>,
    {
        let mut backoff = Backoff::new(self.inner.config.backoff.clone());
        loop {
            let r = tokio::select! {
                r = f() => r,
                _ = cancel.cancelled() => return Err(ClientError::Cancelled),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && backoff.attempts() < self.inner.config.backoff.retries => {
                    let retry_after = match &e {
                        sync_core::Error::Unavailable { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let delay = backoff.next_delay(retry_after);
                    tracing::debug!(error = %e, ?delay, "transient failure; retrying");
                    self.inner.emit(SyncEvent::Retrying { error: e.to_string(), delay });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Err(ClientError::Cancelled),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn push_all(&self, report: &mut SyncReport, cancel: &CancelToken) -> Result<()> {
        let mut batch_size = self.inner.config.push_batch.max(1);
        let mut one_by_one = 0usize;
        loop {
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            let size = if one_by_one > 0 { 1 } else { batch_size };
            let mutations = self.with_store(move |s| s.next_upload(size)).await?;
            if mutations.is_empty() {
                return Ok(());
            }
            let ids: Vec<MutationId> = mutations.iter().map(|m| m.id).collect();
            {
                let ids = ids.clone();
                self.with_store(move |s| s.mark_sent(&ids)).await?;
            }
            let request = PushRequest { mutations };
            let transport = self.inner.transport.clone();
            let response = self.retrying(cancel, || transport.push(&request)).await;
            let results = match response {
                Ok(r) => {
                    if r.results.is_empty() {
                        return Err(ClientError::protocol("push answered with no results"));
                    }
                    one_by_one = one_by_one.saturating_sub(1);
                    r.results
                }
                Err(ClientError::Sync(sync_core::Error::LimitExceeded { limit, max, .. }))
                    if limit == "max_mutations_per_push" && max > 0 && (max as usize) < size =>
                {
                    batch_size = max as usize;
                    continue;
                }
                Err(ClientError::Sync(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::InvalidInput | ErrorKind::LimitExceeded | ErrorKind::Conflict
                    ) =>
                {
                    if ids.len() > 1 {
                        // One of them spoils the request: send them one at a
                        // time to find it; the rest go through.
                        one_by_one = ids.len();
                        continue;
                    }
                    one_by_one = one_by_one.saturating_sub(1);
                    tracing::warn!(error = %e, "upload refused as a whole; recording it as rejected");
                    ids.iter()
                        .map(|id| MutationResult {
                            id: *id,
                            outcome: MutationOutcome::Rejected { reason: e.to_string() },
                        })
                        .collect()
                }
                Err(e) => return Err(e),
            };
            report.pushed += ids.len() as u64;
            let acks = self.with_store(move |s| s.acknowledge(&results)).await?;
            for a in acks {
                match a {
                    AckOutcome::Applied { id, entity, row_id, version } => {
                        report.applied += 1;
                        self.inner.emit(SyncEvent::Applied { mutation_id: id, entity, row_id, version });
                    }
                    AckOutcome::Refused(record) => {
                        match record.kind {
                            crate::store::RefusalKind::Conflict => report.conflicts += 1,
                            crate::store::RefusalKind::Rejected => report.rejected += 1,
                        }
                        tracing::info!(mutation = %record.mutation_id, reason = %record.reason, "upload refused");
                        self.inner.emit(SyncEvent::Refused(record));
                    }
                }
            }
        }
    }

    /// Pulls one stream until `has_more` is false. Fetching runs ahead of
    /// applying; applied pages commit together with the cursor in
    /// transactions of up to `max_rows_per_commit` rows.
    async fn pull_stream(
        &self,
        stream: Stream,
        report: &mut SyncReport,
        cancel: &CancelToken,
        wait: Option<(Duration, u64)>,
    ) -> Result<StreamResult> {
        let start = self
            .with_store(move |s| match stream {
                Stream::Main => s.cursor(),
                Stream::Repair => s.repair_cursor(),
            })
            .await?
            .filter(|c| !c.is_empty());
        let (tx, rx) = mpsc::channel::<Result<PullResponse>>(self.inner.config.prefetch_pages.max(1));
        let fetch = self.fetch_pages(start, tx, cancel, wait);
        let inner = self.inner.clone();
        let handle = tokio::runtime::Handle::current();
        let kind = match stream {
            Stream::Main => StreamKind::Main,
            Stream::Repair => StreamKind::Repair,
        };
        let apply = tokio::task::spawn_blocking(move || apply_pages(&inner, &handle, rx, stream, kind));
        let ((), applied) = tokio::join!(fetch, apply);
        let (outcome, result) = applied.map_err(|e| ClientError::Task(e.to_string()))?;
        report.pages += outcome.pages;
        report.rows += outcome.puts;
        report.removes += outcome.removes;
        report.swept += outcome.swept;
        let complete = result?;
        Ok(StreamResult { complete })
    }

    async fn fetch_pages(
        &self,
        mut cursor: Option<String>,
        tx: mpsc::Sender<Result<PullResponse>>,
        cancel: &CancelToken,
        mut wait: Option<(Duration, u64)>,
    ) {
        let limit = self.inner.config.page_limit;
        loop {
            let live = wait.take();
            let request = PullRequest {
                cursor: cursor.clone(),
                limit,
                wait_ms: live.map(|(d, _)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            };
            let transport = self.inner.transport.clone();
            let call = self.retrying(cancel, || transport.pull(&request));
            let response = if let Some((_, generation)) = live {
                // A local edit ends the wait: the loop goes round to upload it.
                tokio::select! {
                    r = call => r,
                    _ = self.inner.local_write_since(generation) => return,
                }
            } else {
                call.await
            };
            match response {
                Ok(page) => {
                    let more = page.has_more;
                    cursor = Some(page.cursor.clone());
                    if tx.send(Ok(page)).await.is_err() || !more {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}

/// The applying side of a pull stream, on a blocking thread. Returns what
/// was applied and whether the stream completed (`Ok(true)`), ended early
/// (`Ok(false)`), or failed.
fn apply_pages(
    inner: &Inner,
    handle: &tokio::runtime::Handle,
    mut rx: mpsc::Receiver<Result<PullResponse>>,
    stream: Stream,
    kind: StreamKind,
) -> (crate::store::PageOutcome, Result<bool>) {
    let mut total = crate::store::PageOutcome::default();
    let config = &inner.config;
    loop {
        // Wait for a page before taking the database.
        let first = match rx.blocking_recv() {
            None => return (total, Ok(false)),
            Some(Err(e)) => return (total, Err(e)),
            Some(Ok(p)) => p,
        };
        let mut store = match inner.store() {
            Ok(s) => s,
            Err(e) => return (total, Err(e)),
        };
        let started = Instant::now();
        let mut batch = match store.begin_pages(stream) {
            Ok(b) => b,
            Err(e) => return (total, Err(e)),
        };
        let mut page = Some(first);
        let mut ended: Option<Result<bool>> = None;
        while let Some(p) = page.take() {
            if let Err(e) = batch.apply(p) {
                return (total, Err(e));
            }
            let o = batch.outcome();
            if !o.has_more {
                ended = Some(Ok(true));
                break;
            }
            let elapsed = started.elapsed();
            if o.puts + o.removes >= config.max_rows_per_commit || elapsed >= config.max_commit_interval {
                break;
            }
            let budget = config.page_wait.min(config.max_commit_interval - elapsed);
            match handle.block_on(async { tokio::time::timeout(budget, rx.recv()).await }) {
                Err(_) => break, // nothing ready: commit what we have
                Ok(None) => {
                    ended = Some(Ok(false));
                    break;
                }
                Ok(Some(Err(e))) => {
                    ended = Some(Err(e));
                    break;
                }
                Ok(Some(Ok(p))) => page = Some(p),
            }
        }
        let outcome = match batch.commit() {
            Ok(o) => o,
            Err(e) => return (total, Err(e)),
        };
        drop(store);
        total.pages += outcome.pages;
        total.puts += outcome.puts;
        total.removes += outcome.removes;
        total.swept += outcome.swept;
        total.has_more = outcome.has_more;
        for p in &outcome.dropped_partitions {
            inner.emit(SyncEvent::PartitionDropped { partition: p.clone() });
        }
        if outcome.repair_finished {
            inner.emit(SyncEvent::RepairFinished { still_mismatched: outcome.mismatched.clone() });
        }
        inner.emit(SyncEvent::Progress(Progress {
            stream: kind,
            pages: total.pages,
            rows: total.puts,
            removes: total.removes,
            has_more: outcome.has_more,
        }));
        if let Some(end) = ended {
            return (total, end);
        }
    }
}
