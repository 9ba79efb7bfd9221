//! The crate's private error type and its mapping into [`sync_core::Error`].

use std::time::Duration;

use rusqlite::ErrorCode;

/// What can go wrong inside this adapter. Never leaves the crate: every
/// public method converts it into a [`sync_core::Error`] kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// An error of the domain (not found, invalid input, …), passed through.
    #[error(transparent)]
    Core(#[from] sync_core::Error),
    /// SQLite refused or failed.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file-system operation on the data directory failed.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path concerned.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Stored data does not decode (edited by hand, or corrupt).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A blocking task panicked or was cancelled.
    #[error("a blocking database task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Result alias of the crate's internals.
pub(crate) type R<T> = std::result::Result<T, StoreError>;

impl StoreError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::Io { what, path: path.display().to_string(), source }
    }
}

impl From<StoreError> for sync_core::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Core(e) => e,
            StoreError::Sqlite(ref inner) => match inner.sqlite_error_code() {
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => sync_core::Error::Unavailable {
                    message: format!("the database is busy: {inner}"),
                    retry_after: Some(Duration::from_millis(100)),
                },
                Some(ErrorCode::ConstraintViolation) => sync_core::Error::conflict(inner.to_string()),
                Some(ErrorCode::DiskFull | ErrorCode::OutOfMemory) => {
                    sync_core::Error::unavailable(format!("the database is out of space or memory: {inner}"))
                }
                _ => sync_core::Error::internal(e.to_string()),
            },
            StoreError::Io { .. } | StoreError::Corrupt(_) | StoreError::Join(_) => {
                sync_core::Error::internal(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::ErrorKind;

    fn failure(code: i32) -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn maps_sqlite_codes_to_kinds() {
        let kind = |e: StoreError| sync_core::Error::from(e).kind();
        assert_eq!(kind(failure(rusqlite::ffi::SQLITE_BUSY)), ErrorKind::Unavailable);
        assert_eq!(kind(failure(rusqlite::ffi::SQLITE_LOCKED)), ErrorKind::Unavailable);
        assert_eq!(kind(failure(rusqlite::ffi::SQLITE_CONSTRAINT)), ErrorKind::Conflict);
        assert_eq!(kind(failure(rusqlite::ffi::SQLITE_CORRUPT)), ErrorKind::Internal);
        assert_eq!(kind(failure(rusqlite::ffi::SQLITE_IOERR)), ErrorKind::Internal);
        assert_eq!(kind(StoreError::Corrupt("x".into())), ErrorKind::Internal);
        assert_eq!(kind(StoreError::Core(sync_core::Error::not_found("org"))), ErrorKind::NotFound);
    }
}
