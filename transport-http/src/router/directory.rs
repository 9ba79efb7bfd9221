//! A short-lived memory of the org directory, so routing a request does not
//! cost a store round trip (PERFORMANCE.md: "no changes" must not touch the
//! database).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sync_core::{Error, OrgId, Result, StagingStore};

/// The most orgs remembered; past it the memory starts over, so requests
/// naming ever new orgs cannot grow it without bound.
const MAX_ENTRIES: usize = 4096;

/// What the directory said of one org, and when it was asked.
type Entry = (Option<Arc<str>>, Instant);

/// Remembers `store.org_location(org)` answers for `ttl`.
pub(crate) struct DirectoryCache {
    ttl: Duration,
    entries: Mutex<HashMap<OrgId, Entry>>,
}

impl DirectoryCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        DirectoryCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The base URL of the deployment that serves `org`, if the directory
    /// places it elsewhere.
    pub(crate) async fn location(&self, store: &dyn StagingStore, org: &OrgId) -> Result<Option<Arc<str>>> {
        if !self.ttl.is_zero()
            && let Some((location, at)) = self.lock()?.get(org)
            && at.elapsed() < self.ttl
        {
            return Ok(location.clone());
        }
        let location: Option<Arc<str>> = store.org_location(org).await?.map(Arc::from);
        if !self.ttl.is_zero() {
            let mut entries = self.lock()?;
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(org.clone(), (location.clone(), Instant::now()));
        }
        Ok(location)
    }

    /// Forgets what is known of `org` (after this router changed its entry).
    pub(crate) fn forget(&self, org: &OrgId) -> Result<()> {
        self.lock()?.remove(org);
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<OrgId, Entry>>> {
        self.entries.lock().map_err(|_| Error::internal("org directory cache poisoned by a panic"))
    }
}
