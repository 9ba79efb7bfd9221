//! [`SqlServerConfig`]: where the server is, how orgs are laid out, pool
//! size and timeouts.

use std::fmt;
use std::time::Duration;

use sync_core::queue::DEFAULT_MAX_DELIVERIES;
use sync_core::{Error, Result};

/// How each org's staging data is placed on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrgLayout {
    /// One database per org (`CREATE DATABASE` on provision, `DROP DATABASE`
    /// on deprovision), named `<database_prefix><org>`: the layout of the
    /// system this project reproduces. Needs the `CREATE ANY DATABASE`
    /// permission.
    #[default]
    DatabasePerOrg,
    /// One schema per org inside the configured database, named
    /// `<database_prefix><org>`: for Azure SQL deployments where a login may
    /// not create databases.
    SchemaPerOrg,
}

/// Where the server is: an ADO.NET connection string or its parts.
#[derive(Clone, PartialEq, Eq)]
pub enum ConnectionTarget {
    /// An ADO.NET connection string, e.g.
    /// `server=tcp:db.example.net,1433;database=offline_sync;user=sync;password=…;encrypt=true`.
    Ado(String),
    /// The parts of a SQL login connection; TLS is required and the server
    /// certificate verified against the web PKI roots unless `trust_cert`.
    Parts {
        /// Host name or address.
        host: String,
        /// TCP port (1433 by default on SQL Server).
        port: u16,
        /// The control database (orgs, directory, queues).
        database: String,
        /// SQL login.
        user: String,
        /// Its password.
        password: String,
        /// Accept any server certificate (development servers only).
        trust_cert: bool,
    },
}

impl fmt::Debug for ConnectionTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A connection string may hold a password: never print it.
            ConnectionTarget::Ado(_) => f.write_str("Ado(<redacted>)"),
            ConnectionTarget::Parts { host, port, database, user, trust_cert, .. } => f
                .debug_struct("Parts")
                .field("host", host)
                .field("port", port)
                .field("database", database)
                .field("user", user)
                .field("password", &"<redacted>")
                .field("trust_cert", trust_cert)
                .finish(),
        }
    }
}

/// Configuration of the SQL Server store and queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlServerConfig {
    /// Where the server is.
    pub target: ConnectionTarget,
    /// Database per org or schema per org.
    pub layout: OrgLayout,
    /// Prefix of each org's database (or schema) name. Default `sync_org_`.
    pub database_prefix: String,
    /// Schema of the control tables and the queue tables in the control
    /// database. Default `dbo`.
    pub control_schema: String,
    /// Most open connections of the control pool (control tables, queue,
    /// and every org's staging data in the schema-per-org layout). Default 10.
    pub pool_size: usize,
    /// Most open connections per org database (database-per-org layout:
    /// each org database has a pool of its own, opened on first use).
    /// Default 4.
    pub org_pool_size: usize,
    /// Most org databases a process keeps a pool open for (database-per-org
    /// layout); past it, the least recently used org's pool is closed and
    /// reopened on its next use. Bounds a process's connections to about
    /// `pool_size + org_pool_size × max_org_pools`. Default 64.
    pub max_org_pools: usize,
    /// Bound on opening a connection (TCP, pre-login, TLS, login), and on
    /// waiting for a free pooled connection. Default 15 s.
    pub connect_timeout: Duration,
    /// Bound on every server round trip of a command. A connection whose
    /// command timed out is discarded, never reused. Default 30 s.
    pub command_timeout: Duration,
    /// How long a staging write waits for its org's write lock
    /// (`sp_getapplock`) before failing with `Unavailable`. Default 10 s.
    pub lock_timeout: Duration,
    /// Deliveries after which a queue message is dead-lettered. Default
    /// [`DEFAULT_MAX_DELIVERIES`].
    pub max_deliveries: u32,
    /// How often a watched org's head is read from the server while some
    /// receiver of [`watch_head`](sync_core::OrgStaging::watch_head) is
    /// alive, so that commits made by other processes wake live pulls.
    /// Commits made through this process notify at once. Default 500 ms.
    pub poll_interval: Duration,
}

/// SQL Server's system databases and fixed schemas: never an org's
/// database or schema (see [`SqlServerConfig::org_container`]).
const SYSTEM_NAMES: &[&str] = &[
    "master",
    "model",
    "msdb",
    "tempdb",
    "distribution",
    "dbo",
    "guest",
    "sys",
    "INFORMATION_SCHEMA",
    "db_owner",
    "db_accessadmin",
    "db_securityadmin",
    "db_ddladmin",
    "db_backupoperator",
    "db_datareader",
    "db_datawriter",
    "db_denydatareader",
    "db_denydatawriter",
];

impl SqlServerConfig {
    /// A configuration from an ADO.NET connection string, with defaults for
    /// the rest. The string is parsed when a pool is built.
    pub fn from_ado(connection_string: impl Into<String>) -> Self {
        Self::with_target(ConnectionTarget::Ado(connection_string.into()))
    }

    /// A configuration with defaults for everything but the target.
    pub fn with_target(target: ConnectionTarget) -> Self {
        SqlServerConfig {
            target,
            layout: OrgLayout::default(),
            database_prefix: "sync_org_".to_owned(),
            control_schema: "dbo".to_owned(),
            pool_size: 10,
            org_pool_size: 4,
            max_org_pools: 64,
            connect_timeout: Duration::from_secs(15),
            command_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            poll_interval: Duration::from_millis(500),
        }
    }

    /// The name of `org`'s database (database-per-org) or schema
    /// (schema-per-org): `<database_prefix><org>`. Errors: `InvalidInput`
    /// when it is longer than SQL Server's 128-character identifiers, or
    /// (with an empty or short prefix) names a system database or schema,
    /// or the control schema in the schema-per-org layout: provisioning
    /// would write into it and `drop_org` drop every table in it.
    pub fn org_container(&self, org: &sync_core::OrgId) -> Result<String> {
        let name = format!("{}{}", self.database_prefix, org.as_str());
        sync_core::ids::validate_identifier("org database or schema", &name)?;
        let is_control =
            self.layout == OrgLayout::SchemaPerOrg && name.eq_ignore_ascii_case(&self.control_schema);
        if is_control || SYSTEM_NAMES.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            return Err(Error::invalid(format!(
                "org '{org}' would be stored in '{name}', a system {} or the control schema; choose another \
                 database_prefix or org id",
                if self.layout == OrgLayout::SchemaPerOrg { "schema" } else { "database" }
            )));
        }
        Ok(name)
    }

    /// Checks the configuration: names are identifiers, sizes and timeouts
    /// are not zero. Errors: `InvalidInput` naming the field.
    pub fn validate(&self) -> Result<()> {
        sync_core::ids::validate_identifier("control_schema", &self.control_schema)?;
        if !self.database_prefix.is_empty() {
            sync_core::ids::validate_identifier("database_prefix", &self.database_prefix)?;
        }
        if self.pool_size == 0 {
            return Err(Error::invalid("pool_size must be at least 1"));
        }
        if self.org_pool_size == 0 {
            return Err(Error::invalid("org_pool_size must be at least 1"));
        }
        if self.max_org_pools == 0 {
            return Err(Error::invalid("max_org_pools must be at least 1"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::invalid("max_deliveries must be at least 1"));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("lock_timeout", self.lock_timeout),
            ("poll_interval", self.poll_interval),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(format!("{name} must not be zero")));
            }
        }
        Ok(())
    }

    /// The tiberius client configuration, with the timeouts applied.
    /// Errors: `InvalidInput` for a connection string tiberius refuses.
    pub fn tds_config(&self) -> Result<tiberius::Config> {
        let mut config = match &self.target {
            ConnectionTarget::Ado(s) => tiberius::Config::from_ado_string(s)
                .map_err(|e| Error::invalid(format!("the SQL Server connection string is invalid: {e}")))?,
            ConnectionTarget::Parts { host, port, database, user, password, trust_cert } => {
                let mut c = tiberius::Config::new();
                c.host(host);
                c.port(*port);
                c.database(database);
                c.authentication(tiberius::AuthMethod::sql_server(user, password));
                c.encryption(tiberius::EncryptionLevel::Required);
                if *trust_cert {
                    c.trust_cert();
                }
                c
            }
        };
        config.application_name("offline-sync");
        config.handshake_timeout(Some(self.connect_timeout));
        config.command_timeout(Some(self.command_timeout));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_secrets_stay_hidden() {
        let c = SqlServerConfig::from_ado(
            "server=tcp:localhost,1433;user=sa;password=Sup3r$ecret;TrustServerCertificate=true",
        );
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("Sup3r"));
        let cfg = c.tds_config().unwrap();
        assert_eq!(cfg.get_addr(), "localhost:1433");
        assert_eq!(cfg.get_command_timeout(), Some(Duration::from_secs(30)));
        let parts = SqlServerConfig::with_target(ConnectionTarget::Parts {
            host: "db".into(),
            port: 14330,
            database: "sync".into(),
            user: "u".into(),
            password: "hunter2".into(),
            trust_cert: false,
        });
        assert!(!format!("{parts:?}").contains("hunter2"));
        assert_eq!(parts.tds_config().unwrap().get_addr(), "db:14330");
    }

    #[test]
    fn bad_settings_are_invalid_input() {
        let mut c = SqlServerConfig::from_ado("server=tcp:localhost,1433");
        c.control_schema = "dbo]; DROP TABLE x --".into();
        assert!(c.validate().is_err());
        let mut c = SqlServerConfig::from_ado("server=tcp:localhost,1433");
        c.pool_size = 0;
        assert!(c.validate().is_err());
        let mut c = SqlServerConfig::from_ado("server=tcp:localhost,1433");
        c.command_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = SqlServerConfig::from_ado("server=tcp:localhost,1433");
        c.org_pool_size = 0;
        assert!(c.validate().is_err());
        let mut c = SqlServerConfig::from_ado("server=tcp:localhost,1433");
        c.max_org_pools = 0;
        assert!(c.validate().is_err());
        let mut c = SqlServerConfig::from_ado("server=tcp:localhost,1433");
        c.poll_interval = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
