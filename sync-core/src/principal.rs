//! The authenticated caller.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::OrgId;
use crate::value::Value;

/// The role that may use the admin operations on its own org.
pub const ADMIN_ROLE: &str = "sync-admin";
/// The role that may use the admin operations on every org (a deployment's
/// operators: provisioning new orgs, queues, the org directory).
pub const OPERATOR_ROLE: &str = "sync-operator";

/// Who is calling: produced by an [`Authenticator`](crate::auth::Authenticator)
/// from a credential, and the only source of user parameters in filters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    /// Stable user id (a token's `sub`); the value of `@user.id`.
    pub user_id: String,
    /// The org the principal belongs to; it may read and write no other.
    pub org: OrgId,
    /// Roles (security roles) held.
    #[serde(default)]
    pub roles: BTreeSet<String>,
    /// Further claims; `@user.<claim>` in a filter reads `claims[claim]`.
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Principal {
    /// A principal with no roles or claims.
    pub fn new(user_id: impl Into<String>, org: OrgId) -> Self {
        Principal { user_id: user_id.into(), org, roles: BTreeSet::new(), claims: BTreeMap::new() }
    }

    /// Adds a role (builder style).
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.roles.insert(role.into());
        self
    }

    /// Adds a claim (builder style).
    pub fn with_claim(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }

    /// Whether the principal may use the admin operations.
    pub fn is_admin(&self) -> bool {
        self.has_role(ADMIN_ROLE)
    }

    /// The value of a filter parameter: `user.id` is the user id,
    /// `user.<claim>` a claim. `None` when the principal has no such value.
    pub fn parameter(&self, name: &str) -> Option<Value> {
        let rest = name.strip_prefix("user.")?;
        if rest == "id" {
            return Some(Value::String(self.user_id.clone()));
        }
        self.claims.get(rest).map(|j| Value::from_json(j.clone()))
    }
}
