//! The transport-free sync server: `profile`, `pull`, `push` and the admin
//! operations. A transport adapter (HTTP, in-process) authenticates the
//! caller and maps its protocol onto these calls; everything that decides
//! what a device receives or may write lives here.

mod admin;
mod pull;
mod push;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::conflict::ConflictResolver;
use crate::cursor::CursorCodec;
use crate::engine::SourceCache;
use crate::error::{Error, Result};
use crate::ids::{EntityName, OrgId};
use crate::partition::Partition;
use crate::principal::Principal;
use crate::profile::{Profile, ProfileItem};
use crate::protocol::{PartitionInfo, ProfileResponse};
use crate::queue::WorkQueue;
use crate::schema::EntityMetadata;
use crate::source::SourceConnector;
use crate::staging::{OrgStaging, StagingStore};

pub use admin::QueueReport;

/// Limits and knobs of the sync service. Every limit, when hit, produces an
/// error naming it, its value and what the request needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncConfig {
    /// Most rows in one pull page.
    pub max_rows_per_page: usize,
    /// Approximate most bytes of row data in one pull page.
    pub max_bytes_per_page: usize,
    /// Most partitions one caller may hold.
    pub max_partitions_per_user: usize,
    /// Most mutations in one push.
    pub max_mutations_per_push: usize,
    /// Longest live-mode wait a pull may ask for, in milliseconds.
    pub max_wait_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_rows_per_page: 1000,
            max_bytes_per_page: 4 << 20,
            max_partitions_per_user: 256,
            max_mutations_per_push: 1000,
            max_wait_ms: 60_000,
        }
    }
}

/// The sync service. Cheap to clone (shared state behind `Arc`s).
#[derive(Clone)]
pub struct SyncService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn StagingStore>,
    queue: Arc<dyn WorkQueue>,
    sources: Arc<SourceCache>,
    resolvers: HashMap<String, Arc<dyn ConflictResolver>>,
    codec: CursorCodec,
    config: SyncConfig,
}

/// Builds a [`SyncService`].
pub struct SyncServiceBuilder {
    store: Arc<dyn StagingStore>,
    queue: Arc<dyn WorkQueue>,
    sources: Arc<SourceCache>,
    resolvers: HashMap<String, Arc<dyn ConflictResolver>>,
    secret: Vec<u8>,
    config: SyncConfig,
}

impl SyncServiceBuilder {
    /// Sets the limits.
    pub fn config(mut self, config: SyncConfig) -> Self {
        self.config = config;
        self
    }
    /// Registers a host conflict resolver under `name` (referenced by
    /// `ConflictPolicy::Custom { resolver: name }`).
    pub fn resolver(mut self, name: impl Into<String>, resolver: Arc<dyn ConflictResolver>) -> Self {
        self.resolvers.insert(name.into(), resolver);
        self
    }
    /// Shares a source cache with the workers (so one process connects once).
    pub fn source_cache(mut self, sources: Arc<SourceCache>) -> Self {
        self.sources = sources;
        self
    }
    /// Builds the service.
    pub fn build(self) -> SyncService {
        SyncService {
            inner: Arc::new(Inner {
                store: self.store,
                queue: self.queue,
                sources: self.sources,
                resolvers: self.resolvers,
                codec: CursorCodec::new(&self.secret),
                config: self.config,
            }),
        }
    }
}

/// What the service knows about a caller in one org: the org handle, its
/// schemas and profiles, and the caller's partitions.
pub(crate) struct CallerView {
    pub org: Arc<dyn OrgStaging>,
    pub schema_version: u64,
    pub schemas: Vec<EntityMetadata>,
    pub profiles: Vec<Profile>,
    pub partitions: Vec<Partition>,
}

impl CallerView {
    pub fn schema(&self, entity: &EntityName) -> Option<&EntityMetadata> {
        self.schemas.iter().find(|m| &m.name == entity)
    }

    /// The profile item that defines `partition`.
    pub fn item_of(&self, partition: &Partition) -> Option<&ProfileItem> {
        self.profiles
            .iter()
            .find(|p| p.name == partition.profile)?
            .items
            .iter()
            .find(|i| i.item_id() == partition.item)
    }

    /// The caller's items over `entity` (from every profile that applies).
    pub fn items_for<'a>(&'a self, principal: &'a Principal, entity: &'a EntityName) -> Vec<&'a ProfileItem> {
        self.profiles
            .iter()
            .filter(|p| p.applies_to(principal))
            .flat_map(|p| p.items.iter())
            .filter(|i| &i.entity == entity)
            .collect()
    }

    pub fn partition_infos(&self) -> Vec<PartitionInfo> {
        self.partitions.iter().map(|p| PartitionInfo { key: p.key(), entity: p.entity.clone() }).collect()
    }
}

impl SyncService {
    /// Starts building a service over a store, a queue and a source
    /// connector; `cursor_secret` keys the cursor MAC and must be the same in
    /// every process of a deployment.
    pub fn builder(
        store: Arc<dyn StagingStore>,
        queue: Arc<dyn WorkQueue>,
        connector: Arc<dyn SourceConnector>,
        cursor_secret: impl AsRef<[u8]>,
    ) -> SyncServiceBuilder {
        SyncServiceBuilder {
            store,
            queue,
            sources: Arc::new(SourceCache::new(connector)),
            resolvers: HashMap::new(),
            secret: cursor_secret.as_ref().to_vec(),
            config: SyncConfig::default(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &SyncConfig {
        &self.inner.config
    }

    /// The staging store.
    pub fn store(&self) -> &Arc<dyn StagingStore> {
        &self.inner.store
    }

    /// The work queue.
    pub fn queue(&self) -> &Arc<dyn WorkQueue> {
        &self.inner.queue
    }

    /// The source cache (shared with the workers of this process).
    pub fn sources(&self) -> &Arc<SourceCache> {
        &self.inner.sources
    }

    /// Loads the caller's view of its org. `NotFound` for an org that is not
    /// staged here; `Forbidden` when the caller belongs to another org or
    /// no profile applies to it.
    pub(crate) async fn caller_view(&self, principal: &Principal, org: &OrgId) -> Result<CallerView> {
        if &principal.org != org {
            return Err(Error::forbidden(format!(
                "principal of org '{}' may not use org '{org}'",
                principal.org
            )));
        }
        let handle = self.inner.store.org(org).await?;
        let profiles = handle.profiles().await?;
        if !profiles.iter().any(|p| p.applies_to(principal)) {
            return Err(Error::forbidden(format!(
                "no mobile offline profile of org '{org}' allows the roles of user '{}'",
                principal.user_id
            )));
        }
        let schemas = handle.schemas().await?;
        let schema_version = handle.schema_version().await?;
        let partitions = crate::filter::principal_partitions(principal, &profiles, &schemas)?;
        let max = self.inner.config.max_partitions_per_user;
        if partitions.len() > max {
            return Err(Error::limit("max_partitions_per_user", max as u64, partitions.len() as u64));
        }
        Ok(CallerView { org: handle, schema_version, schemas, profiles, partitions })
    }

    /// `GET profile`: the caller's profiles, partitions and the schemas of
    /// their entities.
    pub async fn profile(&self, principal: &Principal, org: &OrgId) -> Result<ProfileResponse> {
        let view = self.caller_view(principal, org).await?;
        let entities: std::collections::BTreeSet<&EntityName> =
            view.partitions.iter().map(|p| &p.entity).collect();
        Ok(ProfileResponse {
            org: org.clone(),
            user_id: principal.user_id.clone(),
            profiles: view
                .profiles
                .iter()
                .filter(|p| p.applies_to(principal))
                .map(|p| p.name.clone())
                .collect(),
            partitions: view.partition_infos(),
            schema_version: view.schema_version,
            schemas: view.schemas.iter().filter(|m| entities.contains(&m.name)).cloned().collect(),
        })
    }
}

/// A wait bounded by the service's maximum.
pub(crate) fn bounded_wait(requested: Option<u64>, max_ms: u64) -> Duration {
    Duration::from_millis(requested.unwrap_or(0).min(max_ms))
}
