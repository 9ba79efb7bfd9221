//! The client's error type.

use sync_core::ErrorKind;

/// Result alias of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What went wrong on the device side.
///
/// Server and transport errors keep their [`sync_core::Error`] (so their
/// kind — `Unavailable`, `ResyncRequired`, … — stays visible); local
/// failures get variants of their own. Every variant maps onto a
/// [`sync_core::ErrorKind`] through [`ClientError::kind`] and converts into a
/// [`sync_core::Error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server or the transport failed (or refused the request).
    #[error(transparent)]
    Sync(#[from] sync_core::Error),
    /// The local SQLite database failed.
    #[error("local database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The local database holds something this client cannot read (written
    /// by an incompatible version, or altered by hand).
    #[error("local database is inconsistent: {0}")]
    Corrupt(String),
    /// A local row or entity that an operation names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A local operation was given invalid input (unknown column, ill-typed
    /// value, a write through `query`, …). Nothing changed.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The server's answer broke the protocol (a batch for a partition it did
    /// not list, columns of an unknown schema, …). Nothing of it was applied.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The operation was cancelled; everything committed before stays.
    #[error("cancelled")]
    Cancelled,
    /// A blocking task of the client failed to run to completion.
    #[error("background task failed: {0}")]
    Task(String),
}

impl ClientError {
    /// The kind of the error, as a transport or a caller maps it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Sync(e) => e.kind(),
            ClientError::NotFound(_) => ErrorKind::NotFound,
            ClientError::Invalid(_) => ErrorKind::InvalidInput,
            ClientError::Cancelled => ErrorKind::Unavailable,
            ClientError::Database(_)
            | ClientError::Corrupt(_)
            | ClientError::Protocol(_)
            | ClientError::Task(_) => ErrorKind::Internal,
        }
    }

    /// Whether retrying later may succeed (a transient server or network
    /// failure, or a busy local database).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Sync(e) => e.is_retryable(),
            ClientError::Database(rusqlite::Error::SqliteFailure(f, _)) => {
                matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            }
            _ => false,
        }
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        ClientError::Corrupt(message.into())
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ClientError::Invalid(message.into())
    }
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        ClientError::Protocol(message.into())
    }
}

impl From<ClientError> for sync_core::Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Sync(e) => e,
            ClientError::NotFound(what) => sync_core::Error::not_found(what),
            ClientError::Invalid(m) => sync_core::Error::invalid(m),
            ClientError::Cancelled => sync_core::Error::unavailable("cancelled"),
            other => sync_core::Error::internal(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(e: serde_json::Error) -> Self {
        ClientError::Corrupt(format!("stored JSON does not decode: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_through() {
        let e = ClientError::from(sync_core::Error::resync("old"));
        assert_eq!(e.kind(), ErrorKind::ResyncRequired);
        assert!(ClientError::from(sync_core::Error::unavailable("x")).is_retryable());
        assert!(!ClientError::invalid("x").is_retryable());
        let core: sync_core::Error = ClientError::NotFound("row".into()).into();
        assert_eq!(core.kind(), ErrorKind::NotFound);
    }
}
