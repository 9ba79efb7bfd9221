//! The offline-sync server on SQL Server / Azure SQL.
//!
//! The same server as `embedded-server` — workers, HTTP sync and admin
//! endpoints, the optional demo CRM — with the staging store and the work
//! queue on one SQL Server ([`storage_mssql`]) instead of SQLite files. The
//! process keeps no state of its own beyond logs, so N of them behind a load
//! balancer serve one deployment; see this example's README.
//!
//! Settings come from a TOML file with a `[server]` table (the keys of
//! `embedded-server.example.toml`) and a `[sqlserver]` table, then from
//! environment variables, then from flags.
//!
//! ```
//! use clap::Parser;
//!
//! let cli = sqlserver_server::Cli::parse_from([
//!     "sqlserver-server",
//!     "--connection-string",
//!     "server=tcp:db.example.net,1433;database=offline_sync;user=sync;password=secret",
//!     "--layout",
//!     "schema-per-org",
//!     "--jwt-secret",
//!     "a shared secret of every process",
//!     "--cursor-secret",
//!     "another shared secret",
//! ]);
//! let settings = sqlserver_server::Settings::load(&cli).unwrap();
//! assert_eq!(settings.sqlserver.layout, storage_mssql::OrgLayout::SchemaPerOrg);
//! assert!(settings.server.demo.enabled);
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use embedded_server::config::{Config, ConfigError};
use embedded_server::setup::SetupError;
use serde::{Deserialize, Serialize};
use storage_mssql::{OrgLayout, SqlServerConfig, SqlServerQueue, SqlServerStagingStore};
use sync_core::{StagingStore, WorkQueue};

/// The offline-sync server with its staging store and work queue on SQL
/// Server or Azure SQL. Every process started with the same settings serves
/// the same deployment: run as many as the load needs behind one load
/// balancer.
///
/// Settings come from the TOML file named by --config (see
/// `sqlserver.example.toml`: a `[server]` table with the keys of the embedded
/// server and a `[sqlserver]` table), then environment variables, then flags.
#[derive(clap::Parser, Debug, Default)]
#[command(name = "sqlserver-server", version)]
#[group(id = "sqlserver")]
#[command(mut_arg("data_dir", |a| a.help(
    "Directory for JSON logs; all other state is on the SQL Server [default: ./data]"
)))]
pub struct Cli {
    /// The settings shared with the embedded server.
    #[command(flatten)]
    pub server: embedded_server::config::Cli,
    /// ADO.NET connection string of the control database, e.g.
    /// `server=tcp:db.example.net,1433;database=offline_sync;user=sync;password=…`.
    /// TLS is required unless the string says otherwise.
    #[arg(long, env = "OFFLINE_SYNC_MSSQL")]
    pub connection_string: Option<String>,
    /// Where each org's staging tables live [default: database-per-org].
    #[arg(long, env = "OFFLINE_SYNC_MSSQL_LAYOUT", value_enum)]
    pub layout: Option<Layout>,
    /// Prefix of each org's database or schema name [default: sync_org_].
    #[arg(long, env = "OFFLINE_SYNC_MSSQL_PREFIX")]
    pub database_prefix: Option<String>,
    /// Most open connections per pool [default: 10].
    #[arg(long, env = "OFFLINE_SYNC_MSSQL_POOL_SIZE")]
    pub pool_size: Option<usize>,
    /// HS256 secret of device and admin tokens; every process must have the
    /// same one.
    #[arg(long, env = "OFFLINE_SYNC_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Secret that authenticates cursors; every process must have the same
    /// one, or a device's next pull fails on another process.
    #[arg(long, env = "OFFLINE_SYNC_CURSOR_SECRET", hide_env_values = true)]
    pub cursor_secret: Option<String>,
}

/// Where each org's staging tables live.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// A database per org, created on provision and dropped on deprovision
    /// (needs `CREATE ANY DATABASE`).
    #[default]
    DatabasePerOrg,
    /// A schema per org in the control database, for Azure SQL logins that
    /// may not create databases.
    SchemaPerOrg,
}

impl From<Layout> for OrgLayout {
    fn from(l: Layout) -> OrgLayout {
        match l {
            Layout::DatabasePerOrg => OrgLayout::DatabasePerOrg,
            Layout::SchemaPerOrg => OrgLayout::SchemaPerOrg,
        }
    }
}

/// The `[sqlserver]` table of the configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlServerSection {
    /// See [`Cli::connection_string`].
    pub connection_string: String,
    /// See [`Cli::layout`].
    pub layout: Layout,
    /// See [`Cli::database_prefix`].
    pub database_prefix: String,
    /// Schema of the control and queue tables in the control database.
    pub control_schema: String,
    /// See [`Cli::pool_size`].
    pub pool_size: usize,
    /// Seconds to open a connection (TCP, TLS, login).
    pub connect_timeout_secs: u64,
    /// Seconds for each command round trip.
    pub command_timeout_secs: u64,
    /// Seconds a staging write waits for its org's write lock.
    pub lock_timeout_secs: u64,
}

impl Default for SqlServerSection {
    fn default() -> Self {
        let d = SqlServerConfig::from_ado(String::new());
        SqlServerSection {
            connection_string: String::new(),
            layout: Layout::default(),
            database_prefix: d.database_prefix,
            control_schema: d.control_schema,
            pool_size: d.pool_size,
            connect_timeout_secs: d.connect_timeout.as_secs(),
            command_timeout_secs: d.command_timeout.as_secs(),
            lock_timeout_secs: d.lock_timeout.as_secs(),
        }
    }
}

/// The configuration file: `[server]` and `[sqlserver]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// The settings shared with the embedded server.
    pub server: Config,
    /// Where the SQL Server is and how orgs are laid out on it.
    pub sqlserver: SqlServerSection,
}

/// The effective settings of one process.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Server settings (listen address, workers, demo, logs under `data_dir`).
    pub server: Config,
    /// Store and queue settings.
    pub sqlserver: SqlServerConfig,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The SQL Server settings are invalid or the server refused.
    #[error("{what}: {source}")]
    SqlServer {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: sync_core::Error,
    },
    /// The server failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text)
        .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
}

impl Settings {
    /// Reads the file named by `--config` (if any) and applies environment
    /// variables and flags. Errors name the setting that is missing or
    /// wrong: the connection string and both secrets are required, since
    /// every process of a deployment must share them.
    pub fn load(cli: &Cli) -> Result<Settings, Error> {
        let mut file = match &cli.server.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        if let Some(s) = &cli.jwt_secret {
            file.server.jwt_secret = s.clone();
        }
        if let Some(s) = &cli.cursor_secret {
            file.server.cursor_secret = s.clone();
        }
        file.server.apply_overrides(&cli.server)?;
        let sql = &mut file.sqlserver;
        if let Some(s) = &cli.connection_string {
            sql.connection_string = s.clone();
        }
        if let Some(l) = cli.layout {
            sql.layout = l;
        }
        if let Some(p) = &cli.database_prefix {
            sql.database_prefix = p.clone();
        }
        if let Some(n) = cli.pool_size {
            sql.pool_size = n;
        }
        if sql.connection_string.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "no SQL Server connection string: set sqlserver.connection_string, OFFLINE_SYNC_MSSQL \
                 or --connection-string"
                    .into(),
            )
            .into());
        }
        if file.server.jwt_secret.is_empty() || file.server.cursor_secret.is_empty() {
            return Err(ConfigError::Invalid(
                "server.jwt_secret and server.cursor_secret must be set (OFFLINE_SYNC_JWT_SECRET, \
                 OFFLINE_SYNC_CURSOR_SECRET): every process of the deployment must share them"
                    .into(),
            )
            .into());
        }
        let mut sqlserver = SqlServerConfig::from_ado(sql.connection_string.clone());
        sqlserver.layout = sql.layout.into();
        sqlserver.database_prefix = sql.database_prefix.clone();
        sqlserver.control_schema = sql.control_schema.clone();
        sqlserver.pool_size = sql.pool_size;
        sqlserver.connect_timeout = Duration::from_secs(sql.connect_timeout_secs);
        sqlserver.command_timeout = Duration::from_secs(sql.command_timeout_secs);
        sqlserver.lock_timeout = Duration::from_secs(sql.lock_timeout_secs);
        sqlserver
            .validate()
            .map_err(|source| Error::SqlServer { what: "the [sqlserver] settings", source })?;
        sqlserver
            .tds_config()
            .map_err(|source| Error::SqlServer { what: "the [sqlserver] settings", source })?;
        Ok(Settings { server: file.server, sqlserver })
    }

    /// The data directory (logs only: all state is on the SQL Server).
    pub fn data_dir(&self) -> PathBuf {
        self.server.data_dir.clone()
    }
}

/// Connects the store and the queue, then runs the server until SIGTERM or
/// Ctrl-C. Fails at once, naming the step, when the server cannot be reached
/// or refuses the login.
pub async fn run(settings: Settings) -> Result<(), Error> {
    let _log_guard = embedded_server::setup::start_logging(&settings.server)?;
    if settings.server.demo.enabled && settings.server.demo.change_every_ms > 0 {
        tracing::warn!(
            "the demo CRM lives in this process's memory and keeps changing: run a single process, or set \
             demo.change_every_ms = 0 on every process so all of them generate the same demo source"
        );
    }
    tracing::info!(layout = ?settings.sqlserver.layout, "connecting to SQL Server");
    let store: Arc<dyn StagingStore> = Arc::new(
        SqlServerStagingStore::connect(&settings.sqlserver)
            .await
            .map_err(|source| Error::SqlServer { what: "opening the staging store", source })?,
    );
    let queue: Arc<dyn WorkQueue> = Arc::new(
        SqlServerQueue::connect(&settings.sqlserver)
            .await
            .map_err(|source| Error::SqlServer { what: "opening the work queue", source })?,
    );
    embedded_server::setup::run_on(settings.server, store, queue).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("sqlserver-server").chain(args.iter().copied()))
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../sqlserver.example.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(file.sqlserver.layout, Layout::DatabasePerOrg);
        assert!(!file.sqlserver.connection_string.is_empty());
    }

    #[test]
    fn flags_override_the_file_and_required_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:9001\"\njwt_secret = \"j\"\ncursor_secret = \"c\"\n\
             [sqlserver]\nconnection_string = \"server=tcp:db,1433;user=u;password=p\"\npool_size = 4\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s =
            Settings::load(&cli(&["--config", p, "--pool-size", "7", "--layout", "schema-per-org"])).unwrap();
        assert_eq!(s.server.listen.port(), 9001);
        assert_eq!(s.sqlserver.pool_size, 7);
        assert_eq!(s.sqlserver.layout, OrgLayout::SchemaPerOrg);

        let err = Settings::load(&cli(&["--jwt-secret", "j", "--cursor-secret", "c"])).unwrap_err();
        assert!(err.to_string().contains("connection string"), "{err}");
        let err = Settings::load(&cli(&["--connection-string", "server=tcp:db,1433"])).unwrap_err();
        assert!(err.to_string().contains("jwt_secret"), "{err}");
        let err = Settings::load(&cli(&[
            "--connection-string",
            "server=tcp:db,1433",
            "--jwt-secret",
            "j",
            "--cursor-secret",
            "c",
            "--database-prefix",
            "bad prefix;",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("database_prefix"), "{err}");
        std::fs::write(&path, "[sqlserver]\nconection_string = \"x\"\n").unwrap();
        let err = Settings::load(&cli(&["--config", p])).unwrap_err();
        assert!(err.to_string().contains("conection_string"), "{err}");
    }
}
