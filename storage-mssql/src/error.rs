//! The crate's private error type and its mapping into [`sync_core::Error`].

use std::time::Duration;

/// What can go wrong inside this adapter. Never leaves the crate: every
/// public method converts it into a [`sync_core::Error`] kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MssqlError {
    /// An error of the domain (not found, invalid input, …), passed through.
    #[error(transparent)]
    Core(#[from] sync_core::Error),
    /// The TDS client or the server failed.
    #[error("SQL Server: {0}")]
    Tds(#[from] tiberius::error::Error),
    /// The TCP connection could not be opened.
    #[error("connecting to SQL Server at {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Opening a connection (TCP, TLS and login) took longer than allowed.
    #[error("connecting to SQL Server at {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The configured connect timeout.
        after: Duration,
    },
    /// Every pooled connection stayed busy for longer than allowed.
    #[error("no pooled SQL Server connection became free within {0:?}")]
    PoolTimeout(Duration),
    /// A stored value does not decode into the expected type.
    #[error("a row from SQL Server does not decode: {0}")]
    Decode(String),
    /// A staged column value does not decode into its attribute type.
    #[error(transparent)]
    Column(#[from] DecodeError),
}

/// A column of a row read from SQL Server whose value does not decode into
/// the attribute type the entity's schema gives it: the table and the schema
/// disagree (a column altered by hand, a failed migration). Maps to
/// `Internal`: the caller's input is not at fault and retrying will not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column '{column}' (index {index}) of a row read from SQL Server does not decode: {problem}")]
pub(crate) struct DecodeError {
    /// The column's name as the server reported it (empty when unknown).
    pub(crate) column: String,
    /// Its index in the row.
    pub(crate) index: usize,
    /// What is wrong with it.
    pub(crate) problem: DecodeProblem,
}

/// Why a column value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeProblem {
    /// The row has no column at this index.
    #[error("the row has no such column")]
    NoSuchColumn,
    /// The column's SQL type cannot hold a value of the attribute type.
    #[error("expected a {expected} value (T-SQL {sql_type}), found a {found} column")]
    TypeMismatch {
        /// The attribute type's name (`integer`, `uuid`, …).
        expected: &'static str,
        /// The T-SQL type this crate stores the attribute type as.
        sql_type: &'static str,
        /// The T-SQL type of the value the server sent.
        found: &'static str,
    },
    /// The SQL type fits but this value does not (out of range, not a UUID,
    /// not JSON, …).
    #[error("expected a {expected} value, found {detail}")]
    BadValue {
        /// The attribute type's name.
        expected: &'static str,
        /// What the value was and why it does not fit.
        detail: String,
    },
}

/// Result alias of the crate's internals.
pub(crate) type R<T> = std::result::Result<T, MssqlError>;

/// SQL Server error numbers this adapter gives a meaning.
pub(crate) mod codes {
    /// Transaction was deadlocked and chosen as the victim.
    pub(crate) const DEADLOCK: u32 = 1205;
    /// Lock request time out period exceeded.
    pub(crate) const LOCK_TIMEOUT: u32 = 1222;
    /// Violation of a PRIMARY KEY or UNIQUE constraint.
    pub(crate) const UNIQUE_CONSTRAINT: u32 = 2627;
    /// Cannot insert a duplicate key row (unique index).
    pub(crate) const UNIQUE_INDEX: u32 = 2601;
    /// Login failed for user.
    pub(crate) const LOGIN_FAILED: u32 = 18456;
    /// Cannot open the database requested by the login.
    pub(crate) const CANNOT_OPEN_DATABASE: u32 = 4060;
    /// Invalid object name (a table of a dropped org).
    pub(crate) const INVALID_OBJECT: u32 = 208;
    /// Database does not exist.
    pub(crate) const DATABASE_MISSING: u32 = 911;
    /// The database is single-user and its one session is taken (an org
    /// database another process is dropping).
    pub(crate) const SINGLE_USER_IN_USE: u32 = 924;
    /// `DROP DATABASE` of a database some session still uses.
    pub(crate) const DATABASE_IN_USE: u32 = 3702;
    /// `ALTER DATABASE` could not lock the database (another session is
    /// changing or using it).
    pub(crate) const DATABASE_LOCK_REFUSED: u32 = 5061;
    /// `ALTER DATABASE` of a single-user database whose one session is taken.
    pub(crate) const DATABASE_OPTIONS_LOCKED: u32 = 5064;
    /// A snapshot transaction's update conflicted with another transaction.
    pub(crate) const SNAPSHOT_CONFLICT: u32 = 3960;
    /// A snapshot transaction read an object altered by DDL after it began.
    pub(crate) const SNAPSHOT_DDL: u32 = 3961;
    /// A snapshot transaction could not start: `ALTER DATABASE … SET
    /// ALLOW_SNAPSHOT_ISOLATION ON` is still waiting for the transactions
    /// open when it ran (the database is in transition to ON).
    pub(crate) const SNAPSHOT_PENDING: u32 = 3956;
    /// The application lock could not be granted (raised by this crate's batches).
    pub(crate) const APPLOCK_NOT_GRANTED: u32 = 51000;
    /// Azure SQL transient errors: database unavailable, service busy,
    /// resource limits, reconfiguration.
    pub(crate) const AZURE_TRANSIENT: &[u32] =
        &[40613, 40197, 40501, 40540, 49918, 49919, 49920, 10928, 10929, 4221];
}

impl From<MssqlError> for sync_core::Error {
    fn from(e: MssqlError) -> Self {
        let retry = |message: String, ms: u64| sync_core::Error::Unavailable {
            message,
            retry_after: Some(Duration::from_millis(ms)),
        };
        match e {
            MssqlError::Core(e) => e,
            MssqlError::Tds(ref inner) => match inner {
                tiberius::error::Error::Server(token) => match token.code() {
                    codes::DEADLOCK => {
                        retry(format!("chosen as a deadlock victim, retry: {}", token.message()), 50)
                    }
                    codes::SNAPSHOT_PENDING => retry(
                        format!(
                            "snapshot reads are being enabled on the database, retry: {}",
                            token.message()
                        ),
                        500,
                    ),
                    codes::SNAPSHOT_CONFLICT | codes::SNAPSHOT_DDL => retry(
                        format!("a snapshot read met a concurrent schema change, retry: {}", token.message()),
                        50,
                    ),
                    codes::LOCK_TIMEOUT | codes::APPLOCK_NOT_GRANTED => {
                        retry(format!("a lock was not granted in time: {}", token.message()), 100)
                    }
                    codes::UNIQUE_CONSTRAINT | codes::UNIQUE_INDEX => {
                        sync_core::Error::conflict(token.message())
                    }
                    codes::LOGIN_FAILED => sync_core::Error::internal(format!(
                        "SQL Server refused the configured login (check the user and password of the \
                         connection string): {}",
                        token.message()
                    )),
                    c if c == codes::CANNOT_OPEN_DATABASE || codes::AZURE_TRANSIENT.contains(&c) => {
                        retry(format!("SQL Server is temporarily unavailable: {}", token.message()), 1000)
                    }
                    codes::SINGLE_USER_IN_USE
                    | codes::DATABASE_IN_USE
                    | codes::DATABASE_LOCK_REFUSED
                    | codes::DATABASE_OPTIONS_LOCKED => retry(
                        format!("an org database is being dropped or altered, retry: {}", token.message()),
                        500,
                    ),
                    _ => sync_core::Error::internal(e.to_string()),
                },
                // Certificate trust is configuration, not a passing fault:
                // say which connection-string keys fix it.
                tiberius::error::Error::Tls(message) => sync_core::Error::internal(format!(
                    "the TLS handshake with SQL Server failed: {message} — in the connection string, name \
                     the server's CA with TrustServerCertificateCA=<path to a .pem/.crt/.der file>, or, for \
                     development servers only, accept any certificate with TrustServerCertificate=true \
                     (trust_cert in ConnectionTarget::Parts)"
                )),
                tiberius::error::Error::Io { .. } => retry(e.to_string(), 500),
                tiberius::error::Error::Routing { .. } => retry(e.to_string(), 100),
                _ => sync_core::Error::internal(e.to_string()),
            },
            MssqlError::Connect { .. } | MssqlError::ConnectTimeout { .. } => retry(e.to_string(), 1000),
            MssqlError::PoolTimeout(_) => retry(e.to_string(), 100),
            MssqlError::Decode(_) | MssqlError::Column(_) => sync_core::Error::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::ErrorKind;

    fn kind(e: MssqlError) -> ErrorKind {
        sync_core::Error::from(e).kind()
    }

    #[test]
    fn maps_transport_errors_to_kinds() {
        let io = tiberius::error::Error::Io { kind: std::io::ErrorKind::TimedOut, message: "stalled".into() };
        assert_eq!(kind(MssqlError::Tds(io)), ErrorKind::Unavailable);
        let tls = sync_core::Error::from(MssqlError::Tds(tiberius::error::Error::Tls("bad cert".into())));
        assert_eq!(tls.kind(), ErrorKind::Internal);
        assert!(tls.to_string().contains("bad cert") && tls.to_string().contains("TrustServerCertificate"));
        assert_eq!(
            kind(MssqlError::Tds(tiberius::error::Error::Conversion("x".into()))),
            ErrorKind::Internal
        );
        assert_eq!(kind(MssqlError::PoolTimeout(Duration::from_secs(1))), ErrorKind::Unavailable);
        assert_eq!(
            kind(MssqlError::ConnectTimeout { addr: "h:1433".into(), after: Duration::from_secs(1) }),
            ErrorKind::Unavailable
        );
        assert_eq!(kind(MssqlError::Decode("x".into())), ErrorKind::Internal);
        let column = DecodeError { column: "c".into(), index: 0, problem: DecodeProblem::NoSuchColumn };
        assert_eq!(kind(column.into()), ErrorKind::Internal);
        assert_eq!(kind(MssqlError::Core(sync_core::Error::not_found("org"))), ErrorKind::NotFound);
    }

    #[test]
    fn retryable_errors_carry_a_hint() {
        let e = sync_core::Error::from(MssqlError::PoolTimeout(Duration::from_secs(1)));
        assert!(e.is_retryable());
        assert!(matches!(e, sync_core::Error::Unavailable { retry_after: Some(_), .. }));
    }
}
