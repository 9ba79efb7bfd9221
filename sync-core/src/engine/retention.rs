//! Tombstone retention: removes of membership are kept for a window of
//! time, then purged; a cursor older than the window gets `ResyncRequired`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::ids::{OrgId, Seq};
use crate::staging::StagingStore;

/// Purges tombstones older than a retention window. Stores count in seqs,
/// not time, so the janitor samples each org's head as time passes and
/// purges up to the head it saw one window ago.
pub struct TombstoneJanitor {
    store: Arc<dyn StagingStore>,
    retention: Duration,
    samples: HashMap<OrgId, VecDeque<(Instant, Seq)>>,
}

impl TombstoneJanitor {
    /// A janitor keeping tombstones for `retention`.
    pub fn new(store: Arc<dyn StagingStore>, retention: Duration) -> Self {
        TombstoneJanitor { store, retention, samples: HashMap::new() }
    }

    /// Samples every org's head and purges what has aged out. Call it
    /// periodically (e.g. every minute); returns how many tombstones went.
    pub async fn tick(&mut self) -> Result<u64> {
        self.tick_at(Instant::now()).await
    }

    async fn tick_at(&mut self, now: Instant) -> Result<u64> {
        let orgs = self.store.orgs().await?;
        self.samples.retain(|org, _| orgs.iter().any(|o| &o.id == org));
        let mut purged = 0;
        for config in orgs {
            let Ok(org) = self.store.org(&config.id).await else { continue };
            let head = org.head().await?;
            let samples = self.samples.entry(config.id.clone()).or_default();
            samples.push_back((now, head));
            // The newest sample at least one window old marks what may go.
            let mut cutoff = None;
            while let Some((at, seq)) = samples.front().copied() {
                if now.duration_since(at) >= self.retention {
                    cutoff = Some(seq);
                    samples.pop_front();
                } else {
                    break;
                }
            }
            if let Some(seq) = cutoff
                && seq > org.tombstone_floor().await?
            {
                let n = org.purge_tombstones(seq).await?;
                if n > 0 {
                    tracing::info!(org = %config.id, up_to = %seq, purged = n, "tombstones purged");
                }
                purged += n;
            }
        }
        Ok(purged)
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::memory::{MemoryConnector, MemoryStagingStore};
    use crate::*;

    #[tokio::test]
    async fn purges_only_after_the_window() {
        let store = Arc::new(MemoryStagingStore::new());
        let org = OrgId::new("o").unwrap();
        store.create_org(&OrgConfig::new(org.clone(), MemoryConnector::config("x"))).await.unwrap();
        let h = store.org(&org).await.unwrap();
        let meta = EntityMetadata::new(
            EntityName::new("t").unwrap(),
            ColumnName::new("id").unwrap(),
            vec![Attribute::new(ColumnName::new("id").unwrap(), AttributeType::String)],
        )
        .unwrap();
        h.apply_schema(&meta).await.unwrap();
        let item = ProfileItem::new(meta.name.clone(), "");
        h.put_profile(&Profile {
            name: ProfileName::new("p").unwrap(),
            roles: ["r".into()].into(),
            items: vec![item],
        })
        .await
        .unwrap();
        let page = |up: bool| ChangePage {
            upserts: if up { vec![Row::new(RowId::new("a").unwrap(), [])] } else { vec![] },
            deletes: if up { vec![] } else { vec![RowId::new("a").unwrap()] },
            ..ChangePage::default()
        };
        h.apply_changes(&meta.name, page(true)).await.unwrap();
        h.apply_changes(&meta.name, page(false)).await.unwrap();
        let mut janitor = TombstoneJanitor::new(store.clone(), Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(janitor.tick_at(t0).await.unwrap(), 0);
        assert_eq!(janitor.tick_at(t0 + Duration::from_secs(30)).await.unwrap(), 0, "inside the window");
        assert_eq!(janitor.tick_at(t0 + Duration::from_secs(61)).await.unwrap(), 1, "aged out");
        assert_eq!(h.tombstone_floor().await.unwrap(), h.head().await.unwrap());
    }
}
