//! The filter language: a subset of OData `$filter`, and membership planning.
//!
//! (Being written: the parser and evaluator land in this module.)

use crate::error::{Error, Result};
use crate::partition::{MembershipAction, MembershipOp, Partition, PartitionKey};
use crate::principal::Principal;
use crate::profile::Profile;
use crate::row::Row;
use crate::schema::EntityMetadata;

/// Checks every item of `profile` against `schemas`: the entity exists, the
/// filter parses and compiles, columns exist. `InvalidInput` otherwise.
pub fn validate_profile(profile: &Profile, schemas: &[EntityMetadata]) -> Result<()> {
    profile.validate_shape()?;
    for item in &profile.items {
        let meta = schemas.iter().find(|m| m.name == item.entity).ok_or_else(|| {
            Error::invalid(format!("profile '{}': unknown entity '{}'", profile.name, item.entity))
        })?;
        let _ = meta;
        if !item.filter.trim().is_empty() {
            return Err(Error::invalid("filters are not supported yet"));
        }
    }
    Ok(())
}

/// Computes which partitions a row of one entity belongs to, from the org's profiles.
#[derive(Clone, Debug, Default)]
pub struct MembershipPlanner {
    items: Vec<Partition>,
}

impl MembershipPlanner {
    /// Compiles the items of `profiles` that name `entity`.
    pub fn new(entity: &EntityMetadata, profiles: &[Profile]) -> Result<Self> {
        let mut items = Vec::new();
        for p in profiles {
            for item in &p.items {
                if item.entity == entity.name {
                    items.push(Partition {
                        profile: p.name.clone(),
                        item: item.item_id(),
                        entity: entity.name.clone(),
                        params: Default::default(),
                    });
                }
            }
        }
        Ok(MembershipPlanner { items })
    }

    /// The partitions `row` belongs to.
    pub fn partitions(&self, _row: &Row) -> Vec<PartitionKey> {
        self.items.iter().map(Partition::key).collect()
    }

    /// Membership ops for a row changing from `previous` to `new` (`None` =
    /// absent): a put for every partition of `new`, a remove for every
    /// partition of `previous` that `new` is not in.
    pub fn plan(&self, previous: Option<&Row>, new: Option<&Row>) -> Vec<MembershipOp> {
        let new_parts = new.map(|r| self.partitions(r)).unwrap_or_default();
        let mut ops: Vec<MembershipOp> = Vec::new();
        if let Some(prev) = previous {
            for p in self.partitions(prev) {
                if !new_parts.contains(&p) {
                    ops.push(MembershipOp { partition: p, action: MembershipAction::Remove });
                }
            }
        }
        ops.extend(
            new_parts.into_iter().map(|p| MembershipOp { partition: p, action: MembershipAction::Put }),
        );
        ops
    }
}

/// The partitions `principal` holds under `profiles`.
pub fn principal_partitions(
    principal: &Principal,
    profiles: &[Profile],
    schemas: &[EntityMetadata],
) -> Result<Vec<Partition>> {
    let mut out = Vec::new();
    for p in profiles.iter().filter(|p| p.applies_to(principal)) {
        for item in &p.items {
            if schemas.iter().any(|m| m.name == item.entity) {
                out.push(Partition {
                    profile: p.name.clone(),
                    item: item.item_id(),
                    entity: item.entity.clone(),
                    params: Default::default(),
                });
            }
        }
    }
    Ok(out)
}
