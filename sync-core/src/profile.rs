//! Mobile offline profiles: who may go offline with which rows.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{ColumnName, EntityName, ItemId, ProfileName};
use crate::principal::Principal;

/// The most items one profile may hold.
pub const MAX_PROFILE_ITEMS: usize = 256;
/// The longest filter text accepted.
pub const MAX_FILTER_LEN: usize = 8 * 1024;

/// How an upload that meets a changed server row is resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// Column by column: the client's changed columns win, the rest keep the
    /// server's values (the default, as in Dataverse).
    #[default]
    Merge,
    /// The client's upload wins.
    ClientWins,
    /// The upload is dropped and reported as a conflict with the server's row.
    ServerWins,
    /// A host's own [`ConflictResolver`](crate::conflict::ConflictResolver),
    /// registered with the sync service under this name.
    Custom {
        /// The registered resolver's name.
        resolver: String,
    },
}

/// One entity of a profile with its filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileItem {
    /// The item's id, unique in its profile; defaults to the entity name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ItemId>,
    /// The entity.
    pub entity: EntityName,
    /// An OData `$filter` expression (see [`crate::filter`]); empty = all rows.
    #[serde(default)]
    pub filter: String,
    /// The columns sent to devices; `None` = all. The primary key is always sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<ColumnName>>,
    /// Whether devices may upload changes to this entity.
    #[serde(default)]
    pub allow_upload: bool,
    /// How upload conflicts are resolved.
    #[serde(default)]
    pub conflict: ConflictPolicy,
}

impl ProfileItem {
    /// An item over `entity` with `filter`, download only, merge on conflict.
    pub fn new(entity: EntityName, filter: impl Into<String>) -> Self {
        ProfileItem {
            id: None,
            entity,
            filter: filter.into(),
            columns: None,
            allow_upload: false,
            conflict: ConflictPolicy::Merge,
        }
    }

    /// The item's id: `id`, or the entity name when none is set.
    pub fn item_id(&self) -> ItemId {
        self.id.clone().unwrap_or_else(|| ItemId::from(&self.entity))
    }
}

/// A mobile offline profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Unique name in the org.
    pub name: ProfileName,
    /// Roles allowed to use this profile; a principal with any of them gets it.
    pub roles: BTreeSet<String>,
    /// The entities and filters.
    pub items: Vec<ProfileItem>,
}

impl Profile {
    /// Whether `principal` may use this profile.
    pub fn applies_to(&self, principal: &Principal) -> bool {
        self.roles.iter().any(|r| principal.has_role(r))
    }

    /// Checks what can be checked without the org's schemas: item count,
    /// unique item ids, filter length. Stores and the service additionally
    /// compile every filter against the entity's schema before saving.
    pub fn validate_shape(&self) -> Result<()> {
        if self.items.len() > MAX_PROFILE_ITEMS {
            return Err(Error::limit("items_per_profile", MAX_PROFILE_ITEMS as u64, self.items.len() as u64));
        }
        let mut ids = BTreeSet::new();
        for item in &self.items {
            if !ids.insert(item.item_id()) {
                return Err(Error::invalid(format!(
                    "profile '{}' has two items with id '{}'; give one an explicit id",
                    self.name,
                    item.item_id()
                )));
            }
            if item.filter.len() > MAX_FILTER_LEN {
                return Err(Error::limit("filter_length", MAX_FILTER_LEN as u64, item.filter.len() as u64));
            }
            if let ConflictPolicy::Custom { resolver } = &item.conflict
                && resolver.trim().is_empty()
            {
                return Err(Error::invalid("a custom conflict policy needs a resolver name"));
            }
        }
        Ok(())
    }
}
