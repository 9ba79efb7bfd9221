//! The one error type of offline-sync.
//!
//! Every trait in this crate returns [`Error`]. Adapters keep their own private
//! error types and convert them into these kinds, so a transport can map an
//! error to a status code without knowing which adapter produced it.

use std::time::Duration;

/// Result alias used throughout offline-sync.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by meaning rather than by cause.
///
/// The variants are the kinds a transport maps without knowing the adapter
/// (`NotFound` → 404, `Conflict` → 409, `InvalidInput` → 400,
/// `LimitExceeded` → 413/400, `Unauthenticated` → 401, `Forbidden` → 403,
/// `ResyncRequired` → 410, `Unavailable` → 503, `Internal` → 500).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The named thing does not exist (org, entity, row, profile, message…).
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for, e.g. `org 'contoso'`.
        what: String,
    },
    /// The request contradicts the current state (a stale lease, a
    /// duplicate with different content, a source-side write conflict).
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// The input is malformed or names something invalid. Nothing changed.
    #[error("invalid input: {message}{}", position.map(|p| format!(" (at position {p})")).unwrap_or_default())]
    InvalidInput {
        /// What was wrong, in words a caller can act on.
        message: String,
        /// Character offset into the offending text, where one applies.
        position: Option<usize>,
    },
    /// A configured limit was hit. Nothing changed.
    #[error("limit '{limit}' exceeded: the maximum is {max}, the request needed {requested}")]
    LimitExceeded {
        /// The name of the limit, as it appears in configuration.
        limit: String,
        /// The configured maximum.
        max: u64,
        /// What the request needed.
        requested: u64,
    },
    /// No valid credential was presented.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// Why the credential was refused.
        message: String,
    },
    /// The caller is known but may not do this.
    #[error("forbidden: {message}")]
    Forbidden {
        /// What was refused.
        message: String,
    },
    /// The caller's position can no longer be honoured (a garbage, foreign
    /// or too old cursor; an expired source change token): start over.
    #[error("resync required: {reason}")]
    ResyncRequired {
        /// Why the position cannot be honoured.
        reason: String,
    },
    /// A transient failure: retrying later may succeed.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What was unavailable.
        message: String,
        /// How long the caller should wait before retrying, when known.
        retry_after: Option<Duration>,
    },
    /// A bug or an unexpected state: not the caller's fault, not retryable.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
}

/// The kind of an [`Error`], without its details; stable for mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::InvalidInput`].
    InvalidInput,
    /// See [`Error::LimitExceeded`].
    LimitExceeded,
    /// See [`Error::Unauthenticated`].
    Unauthenticated,
    /// See [`Error::Forbidden`].
    Forbidden,
    /// See [`Error::ResyncRequired`].
    ResyncRequired,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Internal`].
    Internal,
}

impl ErrorKind {
    /// A stable, URL-safe name of the kind (used as the problem `type` suffix).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::ResyncRequired => "resync-required",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::LimitExceeded { .. } => ErrorKind::LimitExceeded,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::ResyncRequired { .. } => ErrorKind::ResyncRequired,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// [`Error::NotFound`] for `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }
    /// [`Error::Conflict`] with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict { message: message.into() }
    }
    /// [`Error::InvalidInput`] without a position.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput { message: message.into(), position: None }
    }
    /// [`Error::InvalidInput`] at a character position.
    pub fn invalid_at(message: impl Into<String>, position: usize) -> Self {
        Error::InvalidInput { message: message.into(), position: Some(position) }
    }
    /// [`Error::LimitExceeded`].
    pub fn limit(limit: impl Into<String>, max: u64, requested: u64) -> Self {
        Error::LimitExceeded { limit: limit.into(), max, requested }
    }
    /// [`Error::Unauthenticated`].
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::Unauthenticated { message: message.into() }
    }
    /// [`Error::Forbidden`].
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden { message: message.into() }
    }
    /// [`Error::ResyncRequired`].
    pub fn resync(reason: impl Into<String>) -> Self {
        Error::ResyncRequired { reason: reason.into() }
    }
    /// [`Error::Unavailable`] without a retry hint.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable { message: message.into(), retry_after: None }
    }
    /// [`Error::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into() }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::invalid(format!("malformed JSON: {e}"))
    }
}
