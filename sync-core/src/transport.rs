//! The client side of the sync protocol.

use async_trait::async_trait;

use crate::error::Result;
use crate::protocol::{ProfileResponse, PullRequest, PullResponse, PushRequest, PushResponse};

/// How a client reaches a sync server. The org and the credential are part
/// of the transport's configuration.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SyncTransport: Send + Sync {
    /// `GET profile`.
    async fn profile(&self) -> Result<ProfileResponse>;
    /// `POST pull`. `ResyncRequired` means: wipe and pull from scratch.
    async fn pull(&self, request: &PullRequest) -> Result<PullResponse>;
    /// `POST push`. Retrying after a lost response is safe: mutation ids make
    /// it idempotent.
    async fn push(&self, request: &PushRequest) -> Result<PushResponse>;
}
