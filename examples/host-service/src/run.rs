//! Starting and stopping the host: store, queue, source, sync service,
//! workers on the host's runtime, and the HTTP server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_core::engine::{SourceCache, WorkerConfig, WorkerRunner, WorkerSet};
use sync_core::memory::{MemoryConnector, MemorySource};
use sync_core::principal::{ADMIN_ROLE, OPERATOR_ROLE};
use sync_core::{ErrorKind, OrgConfig, OrgId, Principal, StagingStore, SyncService, WorkQueue};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api_keys::ApiKeyAuthenticator;
use crate::app::{HostState, host_router};
use crate::helpdesk;

/// Why the host could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A part of offline-sync refused.
    #[error("{what}: {source}")]
    Sync {
        /// What was being done.
        what: String,
        /// The cause.
        source: sync_core::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let what = what.into();
    move |source| HostError::Io { what, source }
}

fn sync(what: impl Into<String>) -> impl FnOnce(sync_core::Error) -> HostError {
    let what = what.into();
    move |source| HostError::Sync { what, source }
}

/// How the host runs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where the staging databases, the queue and the cursor secret live.
    pub data_dir: PathBuf,
    /// The address to listen on; loopback by default (put a TLS-terminating
    /// proxy in front to serve devices elsewhere).
    pub listen: SocketAddr,
    /// Seconds between two staging syncs of the helpdesk.
    pub sync_interval_secs: u64,
    /// How long [`start`] waits for the first staging sync to land.
    pub startup_timeout: Duration,
}

impl HostConfig {
    /// Defaults: `127.0.0.1:3000`, a staging sync every 5 s, 60 s to start.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        HostConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 3000)),
            sync_interval_secs: 5,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

/// One API key and the helpdesk user it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyGrant {
    /// The key, sent as `Authorization: Bearer <key>`.
    pub key: String,
    /// The user it authenticates.
    pub user_id: String,
    /// The user's roles.
    pub roles: Vec<String>,
}

/// Fresh keys for two helpdesk agents, alice and bob. A real host issues
/// keys from its user administration and keeps only their digests.
pub fn demo_grants() -> Vec<ApiKeyGrant> {
    ["alice", "bob"]
        .into_iter()
        .map(|user| ApiKeyGrant {
            key: ApiKeyAuthenticator::generate_key(),
            user_id: user.to_owned(),
            roles: vec![helpdesk::AGENT_ROLE.to_owned()],
        })
        .collect()
}

/// The running host. Stop it with [`RunningHost::shutdown`]; dropping it
/// leaves the server and the workers running until the runtime ends.
pub struct RunningHost {
    addr: SocketAddr,
    source: Arc<MemorySource>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    workers: WorkerRunner,
}

impl std::fmt::Debug for RunningHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningHost").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl RunningHost {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The helpdesk's system of record, for the host's own code to edit.
    pub fn source(&self) -> &Arc<MemorySource> {
        &self.source
    }

    /// Stops accepting connections, answers the requests in flight, then
    /// stops the workers (a busy one gives its work item back to the queue).
    pub async fn shutdown(self) -> Result<(), HostError> {
        // The server may have stopped on its own; its result says why.
        let _ = self.stop.send(());
        let served = self.server.await;
        self.workers.shutdown().await;
        match served {
            Ok(result) => result.map_err(io("serving HTTP")),
            Err(e) => {
                Err(HostError::Io { what: "the HTTP server task".into(), source: std::io::Error::other(e) })
            }
        }
    }
}

/// The cursor secret, made once and kept in the data directory so device
/// cursors stay valid across restarts.
fn cursor_secret(dir: &Path) -> Result<String, HostError> {
    let path = dir.join("cursor-secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    }
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    std::fs::write(&path, &secret).map_err(io(format!("writing {}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restricting {}", path.display())))?;
    }
    Ok(secret)
}

/// Starts the host: opens the SQLite store and queue under the data
/// directory, starts the workers on the current runtime, provisions the
/// helpdesk org with the agents' profile, waits for its first staging sync,
/// then serves the host's routes and `/sync` on `config.listen`.
///
/// Errors: the step that failed, with its cause. Workers started before the
/// failure are stopped first.
pub async fn start(config: HostConfig, grants: &[ApiKeyGrant]) -> Result<RunningHost, HostError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("creating {}", config.data_dir.display())))?;
    let org = OrgId::new(helpdesk::ORG).map_err(sync("the helpdesk org id"))?;
    let mut auth = ApiKeyAuthenticator::new();
    for grant in grants {
        let mut principal = Principal::new(grant.user_id.clone(), org.clone());
        for role in &grant.roles {
            principal = principal.with_role(role.clone());
        }
        auth.grant(&grant.key, principal).map_err(sync(format!("the API key of {}", grant.user_id)))?;
    }
    let secret = cursor_secret(&config.data_dir)?;
    let store: Arc<dyn StagingStore> = Arc::new(
        storage_sqlite::SqliteStagingStore::open(config.data_dir.join("staging"))
            .await
            .map_err(sync("opening the staging store"))?,
    );
    let queue: Arc<dyn WorkQueue> = Arc::new(
        storage_sqlite::SqliteQueue::open_in_dir(&config.data_dir, storage_sqlite::QueueOptions::default())
            .await
            .map_err(sync("opening the work queue"))?,
    );
    let source = helpdesk::build().map_err(sync("building the helpdesk"))?;
    let connector = MemoryConnector::new();
    connector.register(helpdesk::ORG, source.clone());
    // One cache for the service and the workers: one connection per org.
    let sources = Arc::new(SourceCache::new(Arc::new(connector.clone())));
    let service = SyncService::builder(store.clone(), queue.clone(), Arc::new(connector), secret.as_bytes())
        .source_cache(sources.clone())
        .build();
    let workers = WorkerRunner::start(store, queue, sources, WorkerConfig::default(), WorkerSet::default());

    let serving = async {
        provision(&service, &org, &config).await?;
        let listener = transport_http::serve::bind(config.listen)
            .await
            .map_err(io(format!("binding {}", config.listen)))?;
        let addr = listener.local_addr().map_err(io("reading the bound address"))?;
        Ok::<_, HostError>((listener, addr))
    };
    let (listener, addr) = match serving.await {
        Ok(bound) => bound,
        Err(e) => {
            workers.shutdown().await;
            return Err(e);
        }
    };
    let auth: Arc<dyn sync_core::Authenticator> = Arc::new(auth);
    let sync_router = transport_http::router(service, auth.clone(), transport_http::HttpConfig::default());
    let app = host_router(HostState { auth, name: "Helpdesk (host-service example)".into() }, sync_router);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(transport_http::serve::serve(listener, app, async move {
        // A dropped sender stops the server too.
        let _ = stopped.await;
    }));
    tracing::info!(%addr, "host-service listening");
    Ok(RunningHost { addr, source, stop, server, workers })
}

/// Provisions the helpdesk org, saves the agents' profile and waits until
/// every entity has been staged once, so the first device sync finds data.
async fn provision(service: &SyncService, org: &OrgId, config: &HostConfig) -> Result<(), HostError> {
    let operator = Principal::new("host-service", org.clone()).with_role(OPERATOR_ROLE).with_role(ADMIN_ROLE);
    let mut org_config = OrgConfig::new(org.clone(), MemoryConnector::config(helpdesk::ORG));
    org_config.sync_interval_secs = config.sync_interval_secs;
    // Idempotent: sending it at every start picks up a changed interval.
    service.provision(&operator, org_config).await.map_err(sync("provisioning the helpdesk org"))?;
    let deadline = Instant::now() + config.startup_timeout;
    let mut profile_saved = false;
    loop {
        // The profile names staged entities, so it waits for the
        // provisioning worker to create the org and apply the schemas.
        if !profile_saved && schemas_applied(service, org).await? {
            let profile = helpdesk::agent_profile().map_err(sync("the agents' profile"))?;
            service
                .put_profile(&operator, org, &profile)
                .await
                .map_err(sync("saving the agents' profile"))?;
            profile_saved = true;
        }
        if profile_saved {
            let status = service.org_status(&operator, org).await.map_err(sync("reading the org status"))?;
            if !status.entities.is_empty() && status.entities.iter().all(|e| e.last_success.is_some()) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(sync("waiting for the first staging sync")(sync_core::Error::unavailable(format!(
                "the helpdesk was not staged within {} s",
                config.startup_timeout.as_secs()
            ))));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the provisioning worker has created the org and applied the
/// schema of every entity the helpdesk offers.
async fn schemas_applied(service: &SyncService, org: &OrgId) -> Result<bool, HostError> {
    let handle = match service.store().org(org).await {
        Ok(handle) => handle,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(sync("opening the helpdesk org")(e)),
    };
    let staged = handle.schemas().await.map_err(sync("reading the staged schemas"))?;
    Ok(staged.iter().any(|m| m.name.as_str() == helpdesk::TICKET))
}
