//! The staging-sync worker.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::batch::PageBatch;
use super::{SourceCache, WorkerConfig, settle};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{QueueName, RowId};
use crate::org::{DATASYNC_QUEUE, SyncRunReport, SyncWorkItem};
use crate::queue::{Delivery, Message, WorkQueue};
use crate::row::ChangePage;
use crate::staging::{OrgStaging, StagingStore};

/// How a staging-sync run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The entity is in step with the source.
    Synced {
        /// Rows upserted or deleted in staging.
        rows: u64,
        /// Change pages read.
        pages: u64,
        /// Transactions the pages were staged in (see
        /// [`WorkerConfig::commit_bytes`]).
        commits: u64,
    },
    /// The org is not (or no longer) provisioned: nothing to do, no reschedule.
    OrgGone,
    /// The source no longer offers the entity: no reschedule.
    EntityGone,
    /// Stopped between two pages by a shutdown; the pages read before it
    /// are committed.
    Interrupted,
}

/// Counters of one run.
struct Progress {
    rows: u64,
    pages: u64,
    commits: u64,
    logged_pages: u64,
    started: Instant,
}

/// Keeps one entity's staging table in step with the source: applies schema
/// drift, then reads change pages and applies them, merged into batches of
/// up to [`WorkerConfig::commit_bytes`], each atomically with the token of
/// its last page; the next page is read while a batch commits. A token the source no longer honours triggers a full re-read
/// that also removes rows the source no longer has; during it no
/// intermediate token is committed, so a crash restarts the re-read rather
/// than leaving stale rows behind.
pub struct StagingSync {
    store: Arc<dyn StagingStore>,
    queue: Arc<dyn WorkQueue>,
    sources: Arc<SourceCache>,
    config: WorkerConfig,
}

impl StagingSync {
    /// A worker over the given store, queue and sources.
    pub fn new(
        store: Arc<dyn StagingStore>,
        queue: Arc<dyn WorkQueue>,
        sources: Arc<SourceCache>,
        config: WorkerConfig,
    ) -> Self {
        StagingSync { store, queue, sources, config }
    }

    /// Syncs one entity of one org. `lease` is extended while the run goes
    /// on; `stop` ends the run between two pages when it turns true.
    pub async fn sync_entity(
        &self,
        item: &SyncWorkItem,
        lease: Option<&Delivery>,
        stop: Option<&watch::Receiver<bool>>,
    ) -> Result<RunOutcome> {
        let org = match self.store.org(&item.org).await {
            Ok(o) => o,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(RunOutcome::OrgGone),
            Err(e) => return Err(e),
        };
        let config = match self.store.org_config(&item.org).await {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(RunOutcome::OrgGone),
            Err(e) => return Err(e),
        };
        let source = self.sources.get(&item.org, &config.source).await?;
        let Some(meta) = source.entities().await?.into_iter().find(|m| m.name == item.entity) else {
            tracing::warn!(org = %item.org, entity = %item.entity, "the source no longer offers this entity");
            return Ok(RunOutcome::EntityGone);
        };
        let change = org.apply_schema(&meta).await?;
        if change != crate::staging::SchemaChange::Unchanged {
            tracing::info!(org = %item.org, entity = %item.entity, change = ?change, "schema drift applied");
        }

        let mut token = org.source_token(&item.entity).await?;
        let mut full_reread: Option<HashSet<RowId>> = None;
        let mut run = Progress { rows: 0, pages: 0, commits: 0, logged_pages: 0, started: Instant::now() };
        let mut last_extend = Instant::now();
        // Pages read and not yet applied, and a page read while the
        // previous batch was being applied.
        let mut batch = PageBatch::default();
        let mut read_ahead: Option<Result<ChangePage>> = None;
        loop {
            if stop.is_some_and(|s| *s.borrow()) {
                if !batch.is_empty() {
                    let applied = org.apply_changes(&item.entity, batch.into_page()).await;
                    if self.applied(item, &mut run, applied).await?.is_none() {
                        return Ok(RunOutcome::OrgGone);
                    }
                }
                return Ok(RunOutcome::Interrupted);
            }
            if let Some(d) = lease
                && last_extend.elapsed() > self.config.lease / 3
            {
                self.queue.extend(d, self.config.lease).await?;
                last_extend = Instant::now();
            }
            let read = match read_ahead.take() {
                Some(r) => r,
                None => source.changes(&item.entity, token.clone(), self.config.page_size).await,
            };
            let mut page = match read {
                Ok(p) => p,
                Err(e) if e.kind() == ErrorKind::ResyncRequired && full_reread.is_none() => {
                    tracing::warn!(org = %item.org, entity = %item.entity, reason = %e,
                        "source token expired; re-reading the entity in full");
                    // The re-read supersedes whatever was read before.
                    full_reread = Some(HashSet::new());
                    batch = PageBatch::default();
                    token = None;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(RunOutcome::EntityGone),
                Err(e) => return Err(e),
            };
            run.pages += 1;
            let more = page.more;
            if more {
                if page.next_token.is_none() {
                    return Err(Error::internal(format!(
                        "source said more pages follow for '{}' but gave no token to read them with",
                        item.entity
                    )));
                }
                token.clone_from(&page.next_token);
            }
            if let Some(seen) = &mut full_reread {
                seen.extend(
                    page.upserts
                        .iter()
                        .map(|r| meta.parse_row_id(r.id.as_str()))
                        .collect::<Result<Vec<_>>>()?,
                );
                if more {
                    // No intermediate token: a crash restarts the re-read.
                    page.next_token = None;
                } else {
                    page.deletes.extend(unseen_rows(org.as_ref(), &item.entity, seen).await?);
                }
            }
            batch.push(&meta, page)?;
            if !more {
                let applied = org.apply_changes(&item.entity, std::mem::take(&mut batch).into_page()).await;
                if self.applied(item, &mut run, applied).await?.is_none() {
                    return Ok(RunOutcome::OrgGone);
                }
                break;
            }
            let due = batch.bytes() >= self.config.commit_bytes
                || batch.since().is_some_and(|t| t.elapsed() >= self.config.commit_interval);
            if due {
                // Read the next page while this batch commits; the read
                // starts first, so a slow source and a slow store overlap.
                let pending = std::mem::take(&mut batch).into_page();
                let (next, applied) = tokio::join!(
                    source.changes(&item.entity, token.clone(), self.config.page_size),
                    org.apply_changes(&item.entity, pending),
                );
                if self.applied(item, &mut run, applied).await?.is_none() {
                    return Ok(RunOutcome::OrgGone);
                }
                read_ahead = Some(next);
            }
        }
        let Progress { rows, pages, commits, .. } = run;
        tracing::debug!(org = %item.org, entity = %item.entity, pages, rows, commits, "entity in step with the source");
        Ok(RunOutcome::Synced { rows, pages, commits })
    }

    /// Counts an applied batch into `run` and reports progress. `Ok(None)`
    /// when the apply failed because the org was deprovisioned meanwhile.
    async fn applied(
        &self,
        item: &SyncWorkItem,
        run: &mut Progress,
        applied: Result<crate::staging::ApplyOutcome>,
    ) -> Result<Option<()>> {
        let outcome = match applied {
            Ok(o) => o,
            // Deprovisioned while we were reading: stop quietly.
            Err(e) if e.kind() == ErrorKind::NotFound && self.org_gone(&item.org).await? => {
                tracing::info!(org = %item.org, entity = %item.entity, "org deprovisioned during its sync; stopping");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        run.rows += outcome.upserted + outcome.deleted;
        run.commits += 1;
        if run.pages >= run.logged_pages + 50 {
            run.logged_pages = run.pages;
            tracing::info!(org = %item.org, entity = %item.entity, pages = run.pages, rows = run.rows,
                commits = run.commits, elapsed_ms = run.started.elapsed().as_millis() as u64,
                "staging sync in progress");
        }
        Ok(Some(()))
    }

    /// Receives and handles one work item: syncs, records the run, schedules
    /// the next run at the org's interval and completes; retries transient
    /// failures with backoff; dead-letters poison items (the org's status
    /// shows the error). Returns whether there was an item.
    pub async fn run_once(&self, stop: Option<&watch::Receiver<bool>>) -> Result<bool> {
        let queue = QueueName::new(DATASYNC_QUEUE)?;
        let Some(delivery) = self.queue.receive(&queue, self.config.lease).await? else {
            return Ok(false);
        };
        let item: SyncWorkItem = match serde_json::from_slice(&delivery.body) {
            Ok(i) => i,
            Err(e) => {
                let err = Err(Error::invalid(format!("malformed work item: {e}")));
                settle(self.queue.as_ref(), &delivery, &err, &self.config).await?;
                return Ok(true);
            }
        };
        let result = match self.sync_entity(&item, Some(&delivery), stop).await {
            // Deprovisioned mid-run (any step may see it): end quietly.
            Err(e) if e.kind() == ErrorKind::NotFound && self.org_gone(&item.org).await? => {
                Ok(RunOutcome::OrgGone)
            }
            other => other,
        };
        let report = |rows: u64, error: Option<String>| SyncRunReport {
            entity: item.entity.clone(),
            at: time::OffsetDateTime::now_utc(),
            rows_applied: rows,
            error,
        };
        let settled: Result<()> = match result {
            Ok(RunOutcome::Synced { rows, .. }) => {
                self.record(&item, report(rows, None)).await;
                self.reschedule(&item).await
            }
            Ok(RunOutcome::OrgGone | RunOutcome::EntityGone) => Ok(()),
            Ok(RunOutcome::Interrupted) => {
                // Give the item back at once: the next worker resumes from the committed token.
                self.queue.abandon(&delivery, Duration::ZERO).await?;
                return Ok(true);
            }
            Err(e) => {
                self.record(&item, report(0, Some(e.to_string()))).await;
                Err(e)
            }
        };
        settle(self.queue.as_ref(), &delivery, &settled, &self.config).await?;
        Ok(true)
    }

    async fn org_gone(&self, org: &crate::ids::OrgId) -> Result<bool> {
        match self.store.org(org).await {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    async fn record(&self, item: &SyncWorkItem, report: SyncRunReport) {
        let result = match self.store.org(&item.org).await {
            Ok(org) => org.record_run(&report).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(org = %item.org, entity = %item.entity, error = %e, "could not record the run");
        }
    }

    async fn reschedule(&self, item: &SyncWorkItem) -> Result<()> {
        let config = match self.store.org_config(&item.org).await {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let at = SystemTime::now() + Duration::from_secs(config.interval_for(&item.entity));
        let next = SyncWorkItem {
            org: item.org.clone(),
            entity: item.entity.clone(),
            source: config.source.clone(),
        };
        let msg = Message::json(&next)?.with_dedup_key(next.dedup_key()).not_before(at);
        self.queue.send(&QueueName::new(DATASYNC_QUEUE)?, msg).await?;
        Ok(())
    }
}

/// Staged ids of `entity` that a full re-read did not see.
async fn unseen_rows(
    org: &dyn OrgStaging,
    entity: &crate::ids::EntityName,
    seen: &HashSet<RowId>,
) -> Result<Vec<RowId>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let ids = org.row_ids(entity, after.clone(), 10_000).await?;
        let Some(last) = ids.last().cloned() else { break };
        out.extend(ids.into_iter().filter(|id| !seen.contains(id)));
        after = Some(last);
    }
    Ok(out)
}
