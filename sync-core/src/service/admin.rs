//! Admin operations: provisioning, profiles, "sync now", status, queues.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::SyncService;
use crate::error::{Error, Result};
use crate::ids::{EntityName, OrgId, ProfileName, QueueName};
use crate::org::{DATASYNC_QUEUE, OrgConfig, OrgStatus, PROVISIONING_QUEUE, ProvisioningEvent, SyncWorkItem};
use crate::principal::{OPERATOR_ROLE, Principal};
use crate::profile::Profile;
use crate::queue::{DeadLetter, Message, QueueDepth, SendOutcome};

/// Depth and dead letters of one queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// The queue.
    pub queue: QueueName,
    /// Its counts.
    pub depth: QueueDepth,
}

fn queue_name(name: &str) -> Result<QueueName> {
    QueueName::new(name)
}

impl SyncService {
    /// Admin rights over `org`: an operator (role [`OPERATOR_ROLE`]) manages
    /// every org; an admin ([`crate::principal::ADMIN_ROLE`]) only its own.
    pub fn authorize_admin(&self, principal: &Principal, org: Option<&OrgId>) -> Result<()> {
        if principal.has_role(OPERATOR_ROLE) {
            return Ok(());
        }
        match org {
            Some(o) if principal.is_admin() && &principal.org == o => Ok(()),
            Some(o) if principal.is_admin() => {
                Err(Error::forbidden(format!("an admin of org '{}' may not manage org '{o}'", principal.org)))
            }
            None if principal.is_admin() => {
                Err(Error::forbidden("this operation spans every org and needs the operator role"))
            }
            _ => Err(Error::forbidden("this operation needs the admin role")),
        }
    }

    /// Enqueues a provision event for `config` (the provisioning worker
    /// creates the staging database and schedules the sync).
    pub async fn provision(&self, principal: &Principal, config: OrgConfig) -> Result<SendOutcome> {
        self.authorize_admin(principal, Some(&config.id))?;
        if config.sync_interval_secs == 0 {
            return Err(Error::invalid("sync_interval_secs must be at least 1"));
        }
        if config.source.kind.trim().is_empty() {
            return Err(Error::invalid("source.kind is empty"));
        }
        let org = config.id.clone();
        let message = Message::json(&ProvisioningEvent::Provision { org: config })?;
        let outcome = self.inner.queue.send(&queue_name(PROVISIONING_QUEUE)?, message).await?;
        tracing::info!(org = %org, "provision event enqueued");
        Ok(outcome)
    }

    /// Enqueues a deprovision event for `org`.
    pub async fn deprovision(&self, principal: &Principal, org: &OrgId) -> Result<SendOutcome> {
        self.authorize_admin(principal, Some(org))?;
        let message = Message::json(&ProvisioningEvent::Deprovision { org: org.clone() })?;
        let outcome = self.inner.queue.send(&queue_name(PROVISIONING_QUEUE)?, message).await?;
        tracing::info!(org = %org, "deprovision event enqueued");
        Ok(outcome)
    }

    /// Every org staged here (operators only).
    pub async fn orgs(&self, principal: &Principal) -> Result<Vec<OrgConfig>> {
        self.authorize_admin(principal, None)?;
        self.inner.store.orgs().await
    }

    /// Saves a profile after validating it against the org's staged schemas
    /// (`InvalidInput` naming the item and the problem; nothing changes).
    pub async fn put_profile(&self, principal: &Principal, org: &OrgId, profile: &Profile) -> Result<()> {
        self.authorize_admin(principal, Some(org))?;
        let handle = self.inner.store.org(org).await?;
        crate::filter::validate_profile(profile, &handle.schemas().await?)?;
        for item in &profile.items {
            if let crate::profile::ConflictPolicy::Custom { resolver } = &item.conflict
                && !self.inner.resolvers.contains_key(resolver)
            {
                return Err(Error::invalid(format!(
                    "profile '{}', item '{}': conflict resolver '{resolver}' is not registered",
                    profile.name,
                    item.item_id()
                )));
            }
        }
        handle.put_profile(profile).await
    }

    /// A profile of `org`.
    pub async fn get_profile(
        &self,
        principal: &Principal,
        org: &OrgId,
        name: &ProfileName,
    ) -> Result<Profile> {
        self.authorize_admin(principal, Some(org))?;
        self.inner.store.org(org).await?.profile(name).await
    }

    /// Every profile of `org`.
    pub async fn list_profiles(&self, principal: &Principal, org: &OrgId) -> Result<Vec<Profile>> {
        self.authorize_admin(principal, Some(org))?;
        self.inner.store.org(org).await?.profiles().await
    }

    /// Deletes a profile of `org`.
    pub async fn delete_profile(&self, principal: &Principal, org: &OrgId, name: &ProfileName) -> Result<()> {
        self.authorize_admin(principal, Some(org))?;
        self.inner.store.org(org).await?.delete_profile(name).await
    }

    /// "Sync now": makes the staging sync of `entity` (or of every staged
    /// entity) due immediately. Returns how many work items were enqueued or
    /// brought forward.
    pub async fn sync_now(
        &self,
        principal: &Principal,
        org: &OrgId,
        entity: Option<&EntityName>,
    ) -> Result<usize> {
        self.authorize_admin(principal, Some(org))?;
        let config = self.inner.store.org_config(org).await?;
        let handle = self.inner.store.org(org).await?;
        let schemas = handle.schemas().await?;
        let entities: Vec<EntityName> = match entity {
            Some(e) => {
                if !schemas.iter().any(|m| &m.name == e) {
                    return Err(Error::not_found(format!("entity '{e}' in org '{org}'")));
                }
                vec![e.clone()]
            }
            None => schemas.into_iter().map(|m| m.name).collect(),
        };
        let queue = queue_name(DATASYNC_QUEUE)?;
        for e in &entities {
            let item = SyncWorkItem { org: org.clone(), entity: e.clone(), source: config.source.clone() };
            let msg = Message::json(&item)?.with_dedup_key(item.dedup_key()).not_before(SystemTime::now());
            self.inner.queue.send(&queue, msg).await?;
        }
        Ok(entities.len())
    }

    /// Status of `org`: per entity the token, row count, last run and error.
    pub async fn org_status(&self, principal: &Principal, org: &OrgId) -> Result<OrgStatus> {
        self.authorize_admin(principal, Some(org))?;
        self.inner.store.org(org).await?.status().await
    }

    /// Depths of the provisioning and data-sync queues (operators only).
    pub async fn queues(&self, principal: &Principal) -> Result<Vec<QueueReport>> {
        self.authorize_admin(principal, None)?;
        let mut out = Vec::new();
        for name in [PROVISIONING_QUEUE, DATASYNC_QUEUE] {
            let queue = queue_name(name)?;
            let depth = self.inner.queue.depth(&queue).await?;
            out.push(QueueReport { queue, depth });
        }
        Ok(out)
    }

    /// Up to `limit` dead letters of a queue (operators only).
    pub async fn dead_letters(
        &self,
        principal: &Principal,
        queue: &QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        self.authorize_admin(principal, None)?;
        if ![PROVISIONING_QUEUE, DATASYNC_QUEUE].contains(&queue.as_str()) {
            return Err(Error::not_found(format!("queue '{queue}'")));
        }
        self.inner.queue.dead_letters(queue, limit.min(1000)).await
    }

    /// Records in the org directory that `org` is served elsewhere
    /// (operators only).
    pub async fn set_org_location(
        &self,
        principal: &Principal,
        org: &OrgId,
        base_url: Option<String>,
    ) -> Result<()> {
        self.authorize_admin(principal, None)?;
        if let Some(url) = &base_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(Error::invalid(format!("org location {url:?} is not an http(s) URL")));
        }
        self.inner.store.set_org_location(org, base_url).await
    }
}
