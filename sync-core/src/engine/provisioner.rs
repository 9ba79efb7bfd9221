//! The provisioning worker.

use std::sync::Arc;
use std::time::SystemTime;

use super::{SourceCache, WorkerConfig, settle};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::QueueName;
use crate::org::{DATASYNC_QUEUE, OrgConfig, PROVISIONING_QUEUE, ProvisioningEvent, SyncWorkItem};
use crate::queue::{Message, WorkQueue};
use crate::staging::StagingStore;

/// Handles `provisioning` events: a provision creates the org's staging
/// database, imports the source's metadata, applies the schemas and
/// schedules one recurring work item per entity; a deprovision stops the
/// schedule and removes every trace of the org. Both are idempotent.
pub struct Provisioner {
    store: Arc<dyn StagingStore>,
    queue: Arc<dyn WorkQueue>,
    sources: Arc<SourceCache>,
    config: WorkerConfig,
}

impl Provisioner {
    /// A provisioner over the given store, queue and sources.
    pub fn new(
        store: Arc<dyn StagingStore>,
        queue: Arc<dyn WorkQueue>,
        sources: Arc<SourceCache>,
        config: WorkerConfig,
    ) -> Self {
        Provisioner { store, queue, sources, config }
    }

    /// Handles one event.
    pub async fn handle(&self, event: &ProvisioningEvent) -> Result<()> {
        match event {
            ProvisioningEvent::Provision { org } => self.provision(org).await,
            ProvisioningEvent::Deprovision { org } => self.deprovision(org).await,
        }
    }

    async fn provision(&self, config: &OrgConfig) -> Result<()> {
        let org = &config.id;
        tracing::info!(org = %org, source = %config.source.kind, "provisioning org");
        self.store.create_org(config).await?;
        let source = self.sources.get(org, &config.source).await?;
        let entities = source.entities().await?;
        let handle = self.store.org(org).await?;
        let queue = QueueName::new(DATASYNC_QUEUE)?;
        let total = entities.len();
        for (i, meta) in entities.iter().enumerate() {
            let change = handle.apply_schema(meta).await?;
            let item =
                SyncWorkItem { org: org.clone(), entity: meta.name.clone(), source: config.source.clone() };
            let msg = Message::json(&item)?.with_dedup_key(item.dedup_key()).not_before(SystemTime::now());
            self.queue.send(&queue, msg).await?;
            tracing::info!(org = %org, entity = %meta.name, schema = ?change, progress = i + 1, of = total,
                "entity provisioned and scheduled");
        }
        tracing::info!(org = %org, entities = total, "org provisioned");
        Ok(())
    }

    async fn deprovision(&self, org: &crate::ids::OrgId) -> Result<()> {
        tracing::info!(org = %org, "deprovisioning org");
        let queue = QueueName::new(DATASYNC_QUEUE)?;
        match self.store.org(org).await {
            Ok(handle) => {
                for meta in handle.schemas().await? {
                    let key = format!("{org}/{}", meta.name);
                    self.queue.cancel(&queue, &key).await?;
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Items leased right now find the org gone and do not reschedule.
        self.store.drop_org(org).await?;
        self.sources.forget(org);
        tracing::info!(org = %org, "org deprovisioned");
        Ok(())
    }

    /// Receives and handles one event. Returns whether there was one.
    pub async fn run_once(&self) -> Result<bool> {
        let queue = QueueName::new(PROVISIONING_QUEUE)?;
        let Some(delivery) = self.queue.receive(&queue, self.config.lease).await? else {
            return Ok(false);
        };
        let result = match serde_json::from_slice::<ProvisioningEvent>(&delivery.body) {
            Ok(event) => self.handle(&event).await,
            Err(e) => Err(Error::invalid(format!("malformed provisioning event: {e}"))),
        };
        settle(self.queue.as_ref(), &delivery, &result, &self.config).await?;
        Ok(true)
    }
}
