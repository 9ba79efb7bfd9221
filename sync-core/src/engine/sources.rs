//! A cache of connected sources, one per org.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::ids::OrgId;
use crate::org::OrgSourceConfig;
use crate::source::{MetadataSource, SourceConnector};

type Connected = HashMap<OrgId, (OrgSourceConfig, Arc<dyn MetadataSource>)>;

/// Connects each org's source once and reuses it while the org's source
/// configuration stays the same.
pub struct SourceCache {
    connector: Arc<dyn SourceConnector>,
    connected: Mutex<Connected>,
}

impl SourceCache {
    /// A cache over `connector`.
    pub fn new(connector: Arc<dyn SourceConnector>) -> Self {
        SourceCache { connector, connected: Mutex::new(HashMap::new()) }
    }

    /// The source of `org` under `config`, connecting when not cached or
    /// when the configuration changed.
    pub async fn get(&self, org: &OrgId, config: &OrgSourceConfig) -> Result<Arc<dyn MetadataSource>> {
        if let Some((cfg, src)) = self.lock().get(org)
            && cfg == config
        {
            return Ok(src.clone());
        }
        let src = self.connector.connect(config).await?;
        self.lock().insert(org.clone(), (config.clone(), src.clone()));
        Ok(src)
    }

    /// Forgets `org`'s source (after deprovisioning).
    pub fn forget(&self, org: &OrgId) {
        self.lock().remove(org);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connected> {
        // A poisoned cache only means a panic elsewhere; its data is still valid.
        self.connected.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
