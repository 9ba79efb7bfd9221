//! The in-process [`SyncTransport`]: calls a [`SyncService`] directly. The
//! test double of the transport trait, and a way to embed a client and a
//! server in one process.

use async_trait::async_trait;

use crate::error::Result;
use crate::ids::OrgId;
use crate::principal::Principal;
use crate::protocol::{ProfileResponse, PullRequest, PullResponse, PushRequest, PushResponse};
use crate::service::SyncService;
use crate::transport::SyncTransport;

/// A transport bound to one principal and org, calling the service in-process.
#[derive(Clone)]
pub struct InProcessTransport {
    service: SyncService,
    principal: Principal,
    org: OrgId,
}

impl InProcessTransport {
    /// A transport that acts as `principal` on its own org.
    pub fn new(service: SyncService, principal: Principal) -> Self {
        let org = principal.org.clone();
        InProcessTransport { service, principal, org }
    }

    /// A transport that acts as `principal` against `org` (which may differ,
    /// to test isolation).
    pub fn for_org(service: SyncService, principal: Principal, org: OrgId) -> Self {
        InProcessTransport { service, principal, org }
    }
}

#[async_trait]
impl SyncTransport for InProcessTransport {
    async fn profile(&self) -> Result<ProfileResponse> {
        self.service.profile(&self.principal, &self.org).await
    }
    async fn pull(&self, request: &PullRequest) -> Result<PullResponse> {
        // Round-trip through JSON, as a real transport would.
        let request: PullRequest = serde_json::from_value(serde_json::to_value(request)?)?;
        let response = self.service.pull(&self.principal, &self.org, &request).await?;
        Ok(serde_json::from_value(serde_json::to_value(&response)?)?)
    }
    async fn push(&self, request: &PushRequest) -> Result<PushResponse> {
        let request: PushRequest = serde_json::from_value(serde_json::to_value(request)?)?;
        let response = self.service.push(&self.principal, &self.org, &request).await?;
        Ok(serde_json::from_value(serde_json::to_value(&response)?)?)
    }
}
