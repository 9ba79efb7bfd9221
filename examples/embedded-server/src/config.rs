//! Configuration: a TOML file, overridden by environment variables and flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};
use sync_core::SyncConfig;

/// The embedded offline-sync server: a SQLite staging store and queue under
/// a data directory, the provisioning and staging-sync workers, and the HTTP
/// sync and admin endpoints on 127.0.0.1 — with a demo CRM provisioned as
/// org `demo`, so a client syncs something at once.
///
/// Settings come from the TOML file named by --config (see
/// `embedded-server.example.toml`), then environment variables, then flags:
/// a later source overrides an earlier one.
#[derive(Parser, Debug, Default)]
#[command(name = "embedded-server", version)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "OFFLINE_SYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the control database, one database per org, the queue,
    /// generated secrets and JSON logs [default: ./data].
    #[arg(long, env = "OFFLINE_SYNC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP server listens on [default: 127.0.0.1:8080]; port 0
    /// picks a free port (printed at start).
    #[arg(long, env = "OFFLINE_SYNC_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Do not provision the demo CRM as org `demo`.
    #[arg(long, env = "OFFLINE_SYNC_NO_DEMO")]
    pub no_demo: bool,
    /// Accounts in the generated demo CRM; contacts, opportunities and tasks
    /// scale with it [default: 500].
    #[arg(long, env = "OFFLINE_SYNC_DEMO_ACCOUNTS")]
    pub demo_accounts: Option<u64>,
    /// Milliseconds between two rounds of demo CRM changes; 0 stops the
    /// changes [default: 5000].
    #[arg(long, env = "OFFLINE_SYNC_DEMO_CHANGE_EVERY_MS")]
    pub demo_change_every_ms: Option<u64>,
    /// Seconds between two staging syncs of each demo entity [default: 5].
    #[arg(long, env = "OFFLINE_SYNC_DEMO_SYNC_INTERVAL_SECS")]
    pub demo_sync_interval_secs: Option<u64>,
    /// Log filter for the console and the JSON files, e.g. `info` or
    /// `sync_core=debug,info` [default: info].
    #[arg(long, env = "OFFLINE_SYNC_LOG")]
    pub log: Option<String>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, env = "OFFLINE_SYNC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "OFFLINE_SYNC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The effective configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// See [`Cli::data_dir`].
    pub data_dir: PathBuf,
    /// See [`Cli::listen`].
    pub listen: SocketAddr,
    /// See [`Cli::log`].
    pub log: String,
    /// HS256 secret for device and admin tokens; generated and kept in the
    /// data directory when empty.
    pub jwt_secret: String,
    /// Secret that authenticates cursors; generated like `jwt_secret`.
    pub cursor_secret: String,
    /// Hours that removes are kept for clients that are behind.
    pub tombstone_retention_hours: u64,
    /// Workers.
    pub workers: Workers,
    /// Sync limits.
    pub sync: SyncConfig,
    /// The demo CRM.
    pub demo: Demo,
    /// HTTPS.
    pub tls: Option<Tls>,
    /// HTTP endpoints.
    pub http: Http,
}

/// HTTP endpoint settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Compress responses as clients ask (off saves CPU behind a proxy that
    /// compresses, or on loopback).
    pub compression: bool,
    /// Who may read `/metrics`: `"public"`, `"off"`, or `{ role = "…" }`.
    pub metrics: transport_http::MetricsAccess,
}

impl Default for Http {
    fn default() -> Self {
        Http { compression: true, metrics: transport_http::MetricsAccess::Public }
    }
}

/// Worker counts, and how the staging workers read and commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workers {
    /// Provisioning workers.
    pub provisioners: usize,
    /// Staging-sync workers.
    pub stagers: usize,
    /// Rows asked of a source per change page
    /// ([`WorkerConfig::page_size`](sync_core::engine::WorkerConfig::page_size)).
    pub page_size: usize,
    /// Most change data staged in one transaction, in bytes of row JSON;
    /// 0 commits every page on its own
    /// ([`WorkerConfig::commit_bytes`](sync_core::engine::WorkerConfig::commit_bytes)).
    pub commit_bytes: usize,
    /// Longest read pages wait for more before they are committed
    /// ([`WorkerConfig::commit_interval`](sync_core::engine::WorkerConfig::commit_interval)).
    pub commit_interval_ms: u64,
}

impl Workers {
    /// The staging workers' settings.
    pub fn worker_config(&self) -> sync_core::engine::WorkerConfig {
        sync_core::engine::WorkerConfig {
            page_size: self.page_size,
            commit_bytes: self.commit_bytes,
            commit_interval: std::time::Duration::from_millis(self.commit_interval_ms),
            ..sync_core::engine::WorkerConfig::default()
        }
    }
}

/// The demo CRM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Demo {
    /// Whether to provision it.
    pub enabled: bool,
    /// See [`Cli::demo_accounts`].
    pub accounts: u64,
    /// See [`Cli::demo_change_every_ms`].
    pub change_every_ms: u64,
    /// Changes per round.
    pub changes_per_round: u32,
    /// See [`Cli::demo_sync_interval_secs`].
    pub sync_interval_secs: u64,
}

/// HTTPS certificate and key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log: "info".into(),
            jwt_secret: String::new(),
            cursor_secret: String::new(),
            tombstone_retention_hours: 24 * 7,
            workers: Workers::default(),
            sync: SyncConfig::default(),
            demo: Demo::default(),
            tls: None,
            http: Http::default(),
        }
    }
}

impl Default for Workers {
    fn default() -> Self {
        let worker = sync_core::engine::WorkerConfig::default();
        Workers {
            provisioners: 1,
            stagers: 2,
            page_size: worker.page_size,
            commit_bytes: worker.commit_bytes,
            commit_interval_ms: u64::try_from(worker.commit_interval.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl Default for Demo {
    fn default() -> Self {
        Demo {
            enabled: true,
            accounts: 500,
            change_every_ms: 5000,
            changes_per_round: 20,
            sync_interval_secs: 5,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("invalid configuration in {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file (if any) and applies the command line and environment.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply_overrides(cli)?;
        Ok(config)
    }

    /// Applies the flags and environment variables of `cli` (all but
    /// `--config`) over `self`, then validates the result. For a host that
    /// reads `self` from a file of its own (the SQL Server example does).
    pub fn apply_overrides(&mut self, cli: &Cli) -> Result<(), ConfigError> {
        let config = self;
        if let Some(d) = &cli.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(l) = cli.listen {
            config.listen = l;
        }
        if cli.no_demo {
            config.demo.enabled = false;
        }
        if let Some(a) = cli.demo_accounts {
            config.demo.accounts = a;
        }
        if let Some(ms) = cli.demo_change_every_ms {
            config.demo.change_every_ms = ms;
        }
        if let Some(s) = cli.demo_sync_interval_secs {
            config.demo.sync_interval_secs = s;
        }
        if let Some(l) = &cli.log {
            config.log = l.clone();
        }
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            config.tls = Some(Tls { cert: cert.clone(), key: key.clone() });
        }
        config.validate()
    }

    /// Reads a TOML configuration file; keys it leaves out keep their
    /// defaults, unknown keys are refused.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Checks ranges: counts and intervals that must be at least 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.demo.enabled && (self.demo.accounts == 0 || self.demo.sync_interval_secs == 0) {
            return Err(ConfigError::Invalid(
                "demo.accounts and demo.sync_interval_secs must be at least 1".into(),
            ));
        }
        if self.workers.stagers == 0 || self.workers.provisioners == 0 {
            return Err(ConfigError::Invalid(
                "workers.provisioners and workers.stagers must be at least 1".into(),
            ));
        }
        if self.workers.page_size == 0 {
            return Err(ConfigError::Invalid("workers.page_size must be at least 1".into()));
        }
        if let transport_http::MetricsAccess::Role(role) = &self.http.metrics
            && role.trim().is_empty()
        {
            return Err(ConfigError::Invalid("http.metrics role must not be empty".into()));
        }
        if self.sync.max_rows_per_page == 0 {
            return Err(ConfigError::Invalid("sync.max_rows_per_page must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n[demo]\naccounts = 7\n").unwrap();
        let cli = Cli { config: Some(path.clone()), demo_accounts: Some(9), ..Cli::default() };
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.demo.accounts, 9);
        std::fs::write(&path, "lisen = 1\n").unwrap();
        let err = Config::load(&Cli { config: Some(path), ..Cli::default() }).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../embedded-server.example.toml");
        let c: Config = toml::from_str(text).unwrap();
        assert!(c.demo.enabled);
        assert_eq!(c.http.metrics, transport_http::MetricsAccess::Public);
        let c: Config =
            toml::from_str("[http]\ncompression = false\nmetrics = { role = \"ops\" }\n").unwrap();
        assert!(!c.http.compression);
        assert_eq!(c.http.metrics, transport_http::MetricsAccess::Role("ops".into()));
        let c: Config = toml::from_str("[http]\nmetrics = \"off\"\n").unwrap();
        assert_eq!(c.http.metrics, transport_http::MetricsAccess::Off);
    }

    #[test]
    fn the_staging_workers_take_their_settings_from_the_file() {
        let example: Config = toml::from_str(include_str!("../embedded-server.example.toml")).unwrap();
        assert_eq!(example.workers.worker_config(), sync_core::engine::WorkerConfig::default());
        let c: Config =
            toml::from_str("[workers]\npage_size = 5000\ncommit_bytes = 0\ncommit_interval_ms = 250\n")
                .unwrap();
        let w = c.workers.worker_config();
        assert_eq!((w.page_size, w.commit_bytes), (5000, 0));
        assert_eq!(w.commit_interval, std::time::Duration::from_millis(250));
        let bad: Config = toml::from_str("[workers]\npage_size = 0\n").unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("workers.page_size"), "{err}");
    }
}
