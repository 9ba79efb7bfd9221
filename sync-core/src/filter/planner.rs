//! Membership planning: which partitions a row belongs to, and which a
//! principal holds.

use std::collections::{BTreeMap, BTreeSet};

use super::CompiledFilter;
use crate::error::{Error, Result};
use crate::partition::{self, MembershipAction, MembershipOp, Partition, PartitionKey};
use crate::principal::Principal;
use crate::profile::Profile;
use crate::row::Row;
use crate::schema::EntityMetadata;
use crate::value::Value;

/// The most partitions one profile item may give one principal (claims
/// holding arrays multiply).
pub const MAX_PARTITIONS_PER_ITEM: usize = 1024;

/// Checks a profile against the org's schemas: its shape, that every item's
/// entity is staged, that every filter compiles, and that the listed columns
/// exist. `InvalidInput` saying which item and what is wrong; this is where a
/// misplaced parameter is refused, never at sync time.
pub fn validate_profile(profile: &Profile, schemas: &[EntityMetadata]) -> Result<()> {
    profile.validate_shape()?;
    for item in &profile.items {
        let meta = schemas.iter().find(|m| m.name == item.entity).ok_or_else(|| {
            Error::invalid(format!("profile '{}': entity '{}' is not staged", profile.name, item.entity))
        })?;
        CompiledFilter::compile(&item.filter, meta).map_err(|e| match e {
            Error::InvalidInput { message, position } => Error::InvalidInput {
                message: format!("profile '{}', item '{}': filter: {message}", profile.name, item.item_id()),
                position,
            },
            other => other,
        })?;
        for c in item.columns.iter().flatten() {
            if meta.attribute(c.as_str()).is_none() {
                return Err(Error::invalid(format!(
                    "profile '{}', item '{}': entity '{}' has no column '{c}'",
                    profile.name,
                    item.item_id(),
                    item.entity
                )));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct PlannedItem {
    filter: CompiledFilter,
    /// The start of the item's partition keys ([`partition::item_prefix`]).
    prefix: String,
    /// The item's one partition when it has no parameters: its key is
    /// built once, not per row.
    fixed: Option<PartitionKey>,
}

/// Computes the partitions a row of one entity belongs to, from the org's
/// profiles. Stores build one per entity (and rebuild it when a profile or
/// the schema changes) and call it inside their write transaction.
#[derive(Clone, Debug)]
pub struct MembershipPlanner {
    items: Vec<PlannedItem>,
}

impl MembershipPlanner {
    /// Compiles the items of `profiles` that name `entity`. Fails with
    /// `InvalidInput` when a filter no longer compiles against `entity`.
    pub fn new(entity: &EntityMetadata, profiles: &[Profile]) -> Result<Self> {
        let mut items = Vec::new();
        for p in profiles {
            for item in p.items.iter().filter(|i| i.entity == entity.name) {
                let filter = CompiledFilter::compile(&item.filter, entity)?;
                let item = item.item_id();
                let prefix = partition::item_prefix(&p.name, &item);
                let fixed =
                    filter.params().is_empty().then(|| partition::partition_key(&prefix, &BTreeMap::new()));
                items.push(PlannedItem { filter, prefix, fixed });
            }
        }
        Ok(MembershipPlanner { items })
    }

    /// Whether no profile item names this entity (no membership to plan).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The partitions `row` belongs to, sorted and without duplicates.
    pub fn partitions(&self, row: &Row) -> Vec<PartitionKey> {
        let mut out: Vec<PartitionKey> = self
            .items
            .iter()
            .filter_map(|it| match &it.fixed {
                Some(key) => it.filter.matches_rest(row).then(|| key.clone()),
                None => it.filter.row_params(row).map(|params| partition::partition_key(&it.prefix, &params)),
            })
            .collect();
        if out.len() > 1 {
            out.sort();
            out.dedup();
        }
        out
    }

    /// Membership ops for a row changing from `previous` to `new` (`None` =
    /// absent): a remove for every partition of `previous` that `new` is not
    /// in, then a put for every partition of `new` (staying rows get a put
    /// too: their version changed).
    pub fn plan(&self, previous: Option<&Row>, new: Option<&Row>) -> Vec<MembershipOp> {
        let new_parts = new.map(|r| self.partitions(r)).unwrap_or_default();
        let mut ops = Vec::new();
        if let Some(prev) = previous {
            for p in self.partitions(prev) {
                if new_parts.binary_search(&p).is_err() {
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

/// The values a principal supplies for a parameter: a JSON array claim gives
/// one value per element (a user in two teams holds two partitions).
fn parameter_values(principal: &Principal, name: &str) -> Vec<Value> {
    match principal.parameter(name) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Json(serde_json::Value::Array(items))) => {
            items.into_iter().map(Value::from_json).filter(|v| !v.is_null()).collect()
        }
        Some(v) => vec![v],
    }
}

/// The partitions `principal` holds under `profiles`: for every item of every
/// profile that applies to the principal and names a staged entity, one
/// partition per combination of the principal's parameter values. Items
/// whose parameters the principal lacks give none. Sorted, no duplicates.
pub fn principal_partitions(
    principal: &Principal,
    profiles: &[Profile],
    schemas: &[EntityMetadata],
) -> Result<Vec<Partition>> {
    let mut out = BTreeSet::new();
    for profile in profiles.iter().filter(|p| p.applies_to(principal)) {
        for item in &profile.items {
            let Some(meta) = schemas.iter().find(|m| m.name == item.entity) else { continue };
            let filter = match CompiledFilter::compile(&item.filter, meta) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(profile = %profile.name, item = %item.item_id(), error = %e,
                        "profile item no longer compiles against the staged schema; skipped");
                    continue;
                }
            };
            // One value set per distinct parameter name.
            let mut choices: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for b in filter.params() {
                if choices.contains_key(&b.param) {
                    continue;
                }
                let mut texts: Vec<String> = parameter_values(principal, &b.param)
                    .into_iter()
                    .filter_map(|v| v.coerce(&b.ty).ok())
                    .map(|v| v.canonical_text())
                    .collect();
                texts.sort();
                texts.dedup();
                choices.insert(b.param.clone(), texts);
            }
            let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
            for (name, texts) in &choices {
                let mut next = Vec::with_capacity(combos.len() * texts.len());
                for c in &combos {
                    for t in texts {
                        let mut c = c.clone();
                        c.insert(name.clone(), t.clone());
                        next.push(c);
                    }
                }
                if next.len() > MAX_PARTITIONS_PER_ITEM {
                    return Err(Error::limit(
                        "partitions_per_item",
                        MAX_PARTITIONS_PER_ITEM as u64,
                        next.len() as u64,
                    ));
                }
                combos = next;
            }
            for params in combos {
                out.insert(Partition {
                    profile: profile.name.clone(),
                    item: item.item_id(),
                    entity: item.entity.clone(),
                    params,
                });
            }
        }
    }
    Ok(out.into_iter().collect())
}
