//! Wiring: store, queue, demo source, service, workers and HTTP server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sync_core::engine::{SourceCache, TombstoneJanitor, WorkerRunner, WorkerSet};
use sync_core::memory::MemoryConnector;
use sync_core::principal::OPERATOR_ROLE;
use sync_core::{
    ConflictPolicy, EntityName, ErrorKind, OrgConfig, OrgId, Principal, Profile, ProfileItem, ProfileName,
    StagingStore, SyncService, WorkQueue,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;
use crate::demo;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
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

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Io { what, source }
}

fn sync(what: impl Into<String>) -> impl FnOnce(sync_core::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Sync { what, source }
}

/// The demo org's id.
pub const DEMO_ORG: &str = "demo";
/// The role the demo profile admits.
pub const DEMO_ROLE: &str = "salesperson";

/// Secrets generated once and kept in the data directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct Secrets {
    jwt_secret: String,
    cursor_secret: String,
}

fn load_or_make_secrets(dir: &Path) -> Result<Secrets, SetupError> {
    let path = dir.join("secrets.toml");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(s) = toml::from_str::<Secrets>(&text)
    {
        return Ok(s);
    }
    let fresh = || format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let secrets = Secrets { jwt_secret: fresh(), cursor_secret: fresh() };
    let text = toml::to_string(&secrets)
        .map_err(|e| SetupError::Io { what: "encoding secrets".into(), source: std::io::Error::other(e) })?;
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restricting {}", path.display())))?;
    }
    Ok(secrets)
}

fn init_logging(config: &Config) -> Result<tracing_appender::non_blocking::WorkerGuard, SetupError> {
    let logs = config.data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
    let (file, guard) =
        tracing_appender::non_blocking(tracing_appender::rolling::daily(&logs, "server.json"));
    let filter = || EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let console = tracing_subscriber::fmt::layer().with_target(false).with_filter(filter());
    let json = tracing_subscriber::fmt::layer().json().with_writer(file).with_filter(filter());
    // A host may have installed a subscriber already; then theirs stays.
    let _ = tracing_subscriber::registry().with(console).with(json).try_init();
    Ok(guard)
}

/// The demo profile: accounts by owner, open tasks for everyone, own open
/// opportunities; uploads allowed on tasks and accounts.
pub fn demo_profile() -> Result<Profile, sync_core::Error> {
    let mut accounts = ProfileItem::new(EntityName::new("account")?, "ownerid eq @user.id");
    accounts.allow_upload = true;
    let mut tasks = ProfileItem::new(EntityName::new("task")?, "statecode eq 0");
    tasks.allow_upload = true;
    tasks.conflict = ConflictPolicy::Merge;
    let opportunities =
        ProfileItem::new(EntityName::new("opportunity")?, "ownerid eq @user.id and statecode eq 0");
    Ok(Profile {
        name: ProfileName::new("field_sales")?,
        roles: [DEMO_ROLE.to_owned()].into(),
        items: vec![accounts, tasks, opportunities],
    })
}

async fn provision_demo(service: &SyncService, config: &Config) -> Result<(), SetupError> {
    let org = OrgId::new(DEMO_ORG).map_err(sync("demo org id"))?;
    let operator = Principal::new("embedded-server", org.clone()).with_role(OPERATOR_ROLE);
    let mut org_config = OrgConfig::new(org.clone(), MemoryConnector::config("demo"));
    org_config.sync_interval_secs = config.demo.sync_interval_secs;
    // A provision event is idempotent; sending it at every start also picks
    // up a changed interval and re-imports the (regenerated) demo source.
    service.provision(&operator, org_config).await.map_err(sync("provisioning the demo org"))?;
    let store = service.store().clone();
    let mut waited = Duration::ZERO;
    loop {
        match store.org(&org).await {
            Ok(handle) if handle.schemas().await.map(|s| s.len() >= 5).unwrap_or(false) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(sync("waiting for the demo org")(e)),
        }
        if waited > Duration::from_secs(60) {
            return Err(sync("waiting for the demo org")(sync_core::Error::unavailable(
                "the provisioning worker did not create the demo org within 60 s",
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    let profile = demo_profile().map_err(sync("demo profile"))?;
    service.put_profile(&operator, &org, &profile).await.map_err(sync("saving the demo profile"))?;
    Ok(())
}

fn print_banner(config: &Config, addr: std::net::SocketAddr, jwt_secret: &str) -> Result<(), SetupError> {
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{addr}");
    println!("offline-sync server listening on {base}");
    println!("  data directory: {}", config.data_dir.display());
    if !config.demo.enabled {
        return Ok(());
    }
    let org = OrgId::new(DEMO_ORG).map_err(sync("demo org id"))?;
    let day = Duration::from_secs(24 * 3600);
    for (name, n) in demo::DEMO_USERS {
        let token = transport_http::DevToken::new(demo::user_id(n).to_string(), &org)
            .with_role(DEMO_ROLE)
            .with_claim("name", serde_json::json!(name))
            .with_ttl(day)
            .sign_hs256(jwt_secret.as_bytes())
            .map_err(sync("signing a dev token"))?;
        println!("  dev token for {name}: {token}");
        println!(
            "    sync as {name}: cargo run -p sync-client --features cli -- --server {base} --org {DEMO_ORG} --token {token} --db {name}.sqlite sync"
        );
    }
    let admin = transport_http::DevToken::new("admin", &org)
        .with_role(sync_core::principal::ADMIN_ROLE)
        .with_role(OPERATOR_ROLE)
        .with_ttl(day)
        .sign_hs256(jwt_secret.as_bytes())
        .map_err(sync("signing a dev token"))?;
    println!("  admin token: {admin}");
    println!(
        "    org status: curl -H 'authorization: Bearer {admin}' {base}/v1/admin/orgs/{DEMO_ORG}/status"
    );
    Ok(())
}

/// Creates the data directory and starts logging to the console and to
/// JSON files under it. Keep the returned guard alive while the server runs:
/// dropping it flushes and closes the log file.
pub fn start_logging(config: &Config) -> Result<tracing_appender::non_blocking::WorkerGuard, SetupError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("creating {}", config.data_dir.display())))?;
    init_logging(config)
}

/// Runs the server on the SQLite store and queue under the data directory
/// until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), SetupError> {
    let _log_guard = start_logging(&config)?;
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
    run_on(config, store, queue).await
}

/// Runs the server on the given store and queue until SIGTERM or Ctrl-C:
/// the demo CRM (if enabled), the workers, the tombstone janitor and the
/// HTTP endpoints. Secrets left empty in `config` are generated once and kept
/// in the data directory. Logging is the caller's (see [`start_logging`]).
///
/// Several processes may run this over one shared store and queue (the SQL
/// Server example does): each runs its own workers, which share the queue's
/// work, and its own janitor, whose purge is idempotent. They must then share
/// `jwt_secret` and `cursor_secret`, so a cursor or token issued by one is
/// accepted by all.
pub async fn run_on(
    config: Config,
    store: Arc<dyn StagingStore>,
    queue: Arc<dyn WorkQueue>,
) -> Result<(), SetupError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("creating {}", config.data_dir.display())))?;
    let (jwt_secret, cursor_secret) = if config.jwt_secret.is_empty() || config.cursor_secret.is_empty() {
        let secrets = load_or_make_secrets(&config.data_dir)?;
        (
            if config.jwt_secret.is_empty() { secrets.jwt_secret } else { config.jwt_secret.clone() },
            if config.cursor_secret.is_empty() {
                secrets.cursor_secret
            } else {
                config.cursor_secret.clone()
            },
        )
    } else {
        (config.jwt_secret.clone(), config.cursor_secret.clone())
    };

    let connector = MemoryConnector::new();
    let mut demo_task = None;
    if config.demo.enabled {
        let size = demo::DemoSize { accounts: config.demo.accounts };
        let source = demo::build(size).map_err(sync("generating the demo CRM"))?;
        connector.register("demo", source.clone());
        if config.demo.change_every_ms > 0 {
            let every = Duration::from_millis(config.demo.change_every_ms);
            demo_task =
                Some(tokio::spawn(demo::keep_changing(source, size, every, config.demo.changes_per_round)));
        }
    }
    let sources = Arc::new(SourceCache::new(Arc::new(connector.clone())));
    let service =
        SyncService::builder(store.clone(), queue.clone(), Arc::new(connector), cursor_secret.as_bytes())
            .source_cache(sources.clone())
            .config(config.sync.clone())
            .build();
    let workers = WorkerRunner::start(
        store.clone(),
        queue.clone(),
        sources,
        config.workers.worker_config(),
        WorkerSet { provisioners: config.workers.provisioners, stagers: config.workers.stagers },
    );
    if config.demo.enabled {
        provision_demo(&service, &config).await?;
    }
    let retention = Duration::from_secs(config.tombstone_retention_hours.saturating_mul(3600));
    let janitor = tokio::spawn(async move {
        let mut janitor = TombstoneJanitor::new(store, retention);
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = janitor.tick().await {
                tracing::warn!(error = %e, "tombstone purge failed");
            }
        }
    });

    let auth =
        Arc::new(transport_http::JwtAuthenticator::hs256(jwt_secret.clone()).map_err(sync("JWT secret"))?);
    let http = transport_http::HttpConfig::default()
        .with_compression(config.http.compression)
        .with_metrics(config.http.metrics.clone());
    let app = transport_http::router(service, auth, http);
    let tls = match &config.tls {
        Some(t) => {
            Some(transport_http::serve::tls_config_from_pem_files(&t.cert, &t.key).map_err(sync("TLS"))?)
        }
        None => None,
    };
    let listener =
        transport_http::serve::bind(config.listen).await.map_err(io(format!("binding {}", config.listen)))?;
    let addr = listener.local_addr().map_err(io("reading the bound address"))?;
    print_banner(&config, addr, &jwt_secret)?;
    tracing::info!(%addr, tls = tls.is_some(), "serving");
    let shutdown = async {
        transport_http::serve::shutdown_signal().await;
        tracing::info!("shutdown requested; finishing in-flight requests");
    };
    let served = match tls {
        Some(tls) => transport_http::serve::serve_tls(listener, app, tls, shutdown, None).await,
        None => transport_http::serve::serve(listener, app, shutdown).await,
    };
    tracing::info!("HTTP server stopped; stopping workers");
    workers.shutdown().await;
    janitor.abort();
    if let Some(t) = demo_task {
        t.abort();
    }
    served.map_err(io("serving HTTP"))?;
    tracing::info!("embedded-server stopped cleanly");
    Ok(())
}
