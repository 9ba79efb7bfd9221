//! Authentication: credentials to principals.

use async_trait::async_trait;

use crate::error::Result;
use crate::principal::Principal;

/// Turns a bearer credential into a [`Principal`].
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// Verifies `credential` (the text after `Bearer `).
    ///
    /// Errors: `Unauthenticated` for a missing, malformed, expired or
    /// otherwise invalid credential; `Unavailable` when a key set cannot be
    /// fetched.
    async fn authenticate(&self, credential: &str) -> Result<Principal>;
}
