//! Runs the workers on the host's tokio runtime and stops them gracefully.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Provisioner, SourceCache, StagingSync, WorkerConfig};
use crate::queue::WorkQueue;
use crate::staging::StagingStore;

/// How many workers of each kind to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSet {
    /// Provisioning workers.
    pub provisioners: usize,
    /// Staging-sync workers.
    pub stagers: usize,
}

impl Default for WorkerSet {
    fn default() -> Self {
        WorkerSet { provisioners: 1, stagers: 2 }
    }
}

/// Running workers. Dropping it without [`WorkerRunner::shutdown`] lets the
/// tasks run on until the runtime ends.
pub struct WorkerRunner {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl WorkerRunner {
    /// Spawns the workers on the current tokio runtime.
    pub fn start(
        store: Arc<dyn StagingStore>,
        queue: Arc<dyn WorkQueue>,
        sources: Arc<SourceCache>,
        config: WorkerConfig,
        set: WorkerSet,
    ) -> WorkerRunner {
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for n in 0..set.provisioners {
            let worker = Provisioner::new(store.clone(), queue.clone(), sources.clone(), config.clone());
            let mut rx = stop.subscribe();
            let idle = config.idle_poll;
            tasks.push(tokio::spawn(async move {
                tracing::debug!(worker = n, "provisioning worker started");
                while !*rx.borrow() {
                    match worker.run_once().await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(worker = n, error = %e, "provisioning worker: queue error"),
                    }
                    let _ = tokio::time::timeout(idle, rx.changed()).await;
                }
                tracing::debug!(worker = n, "provisioning worker stopped");
            }));
        }
        for n in 0..set.stagers {
            let worker = StagingSync::new(store.clone(), queue.clone(), sources.clone(), config.clone());
            let mut rx = stop.subscribe();
            let idle = config.idle_poll;
            tasks.push(tokio::spawn(async move {
                tracing::debug!(worker = n, "staging-sync worker started");
                while !*rx.borrow() {
                    let stop_view = rx.clone();
                    match worker.run_once(Some(&stop_view)).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(worker = n, error = %e, "staging-sync worker: queue error"),
                    }
                    let _ = tokio::time::timeout(idle, rx.changed()).await;
                }
                tracing::debug!(worker = n, "staging-sync worker stopped");
            }));
        }
        WorkerRunner { stop, tasks }
    }

    /// Stops every worker: an idle worker stops at once, a busy one after
    /// its current page (its work item is given back to the queue, so no
    /// lease is left hanging). Returns when all have stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a worker task ended abnormally");
            }
        }
    }
}
