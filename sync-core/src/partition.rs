//! Partitions, membership operations and checksums.
//!
//! A profile item together with the values of its parameters names a
//! [`Partition`]. Membership — which rows sit in which partition — is
//! computed when a row changes (see [`crate::filter::MembershipPlanner`]) and
//! kept by the staging store as one latest op per (partition, row).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{EntityName, ItemId, ProfileName, RowId, Seq};

/// The longest partition key accepted.
pub const MAX_PARTITION_KEY_LEN: usize = 1024;

/// Canonical, opaque text naming a partition: equal partitions have equal
/// keys. Built by [`Partition::key`]; validated (length, no control
/// characters) when read from outside. Shared text inside (`Arc<str>`):
/// every pulled change carries its partition's key, and cloning it copies a
/// pointer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PartitionKey(Arc<str>);

impl PartitionKey {
    /// Validates and wraps a key read from outside (a cursor, a database).
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_PARTITION_KEY_LEN {
            return Err(Error::invalid(format!(
                "partition key must be 1 to {MAX_PARTITION_KEY_LEN} bytes, got {}",
                key.len()
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::invalid("partition key contains a control character"));
        }
        Ok(PartitionKey(Arc::from(key)))
    }
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for PartitionKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        PartitionKey::new(s)
    }
}
impl From<PartitionKey> for String {
    fn from(k: PartitionKey) -> String {
        k.0.as_ref().to_owned()
    }
}
impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionKey({:?})", self.0)
    }
}

/// A profile item and the values of its parameters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partition {
    /// The profile.
    pub profile: ProfileName,
    /// The item within the profile.
    pub item: ItemId,
    /// The item's entity.
    pub entity: EntityName,
    /// Parameter name (e.g. `user.id`) → canonical text of its value.
    pub params: BTreeMap<String, String>,
}

impl Partition {
    /// The partition's canonical key: `profile/item` followed, when the item
    /// has parameters, by their JSON object (keys sorted).
    pub fn key(&self) -> PartitionKey {
        partition_key(&item_prefix(&self.profile, &self.item), &self.params)
    }
}

/// The part of a partition key that names the profile item: every key of
/// the item starts with it.
pub(crate) fn item_prefix(profile: &ProfileName, item: &ItemId) -> String {
    format!("{profile}/{item}")
}

/// The key of the partition of the item with prefix `prefix` (see
/// [`item_prefix`]) under `params`: the prefix followed, when there are
/// parameters, by their JSON object (keys sorted).
pub(crate) fn partition_key(prefix: &str, params: &BTreeMap<String, String>) -> PartitionKey {
    if params.is_empty() {
        return PartitionKey(Arc::from(prefix));
    }
    let mut key = String::with_capacity(prefix.len() + 80);
    key.push_str(prefix);
    // A map of strings always serializes.
    key.push_str(&serde_json::to_string(params).unwrap_or_default());
    PartitionKey(Arc::from(key))
}

/// What happens to a row's membership of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipAction {
    /// The row is (still) in the partition, at a new version.
    Put,
    /// The row left the partition (moved out or deleted).
    Remove,
}

/// One planned membership change for one row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MembershipOp {
    /// The partition concerned.
    pub partition: PartitionKey,
    /// Put or remove.
    pub action: MembershipAction,
}

/// A membership row as a store keeps it: the latest op for (partition, row).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipEntry {
    /// The partition.
    pub partition: PartitionKey,
    /// The row's entity.
    pub entity: EntityName,
    /// The row.
    pub row_id: RowId,
    /// When the op was staged.
    pub seq: Seq,
    /// The row version the op refers to (the row's version for puts).
    pub version: Seq,
    /// Whether the op is a remove (a tombstone).
    pub removed: bool,
}

/// Hash of one membership `(entity, row_id, version)`, the unit of the
/// per-partition checksum (FNV-1a 64, folded to 32 bits).
pub fn membership_hash(entity: &EntityName, row_id: &RowId, version: Seq) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(entity.as_str().as_bytes());
    eat(&[0]);
    eat(row_id.as_str().as_bytes());
    eat(&[0]);
    eat(&version.0.to_le_bytes());
    ((h >> 32) ^ h) as u32
}

/// A partition's checksum: the wrapping sum of [`membership_hash`] over the
/// rows it holds, and their count. Kept incrementally by stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checksum {
    /// Wrapping sum of the members' hashes.
    pub sum: u32,
    /// Number of members.
    pub count: u64,
}

impl Checksum {
    /// Adds a member.
    pub fn add(&mut self, entity: &EntityName, row_id: &RowId, version: Seq) {
        self.sum = self.sum.wrapping_add(membership_hash(entity, row_id, version));
        self.count += 1;
    }
    /// Removes a member previously added with the same arguments.
    pub fn remove(&mut self, entity: &EntityName, row_id: &RowId, version: Seq) {
        self.sum = self.sum.wrapping_sub(membership_hash(entity, row_id, version));
        self.count = self.count.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_order_independent_and_reversible() {
        let e = EntityName::new("account").unwrap();
        let ids: Vec<RowId> = (0..10).map(|i| RowId::new(format!("r{i}")).unwrap()).collect();
        let mut a = Checksum::default();
        let mut b = Checksum::default();
        for id in &ids {
            a.add(&e, id, Seq(1));
        }
        for id in ids.iter().rev() {
            b.add(&e, id, Seq(1));
        }
        assert_eq!(a, b);
        a.remove(&e, &ids[3], Seq(1));
        a.add(&e, &ids[3], Seq(2));
        assert_ne!(a, b);
        a.remove(&e, &ids[3], Seq(2));
        a.add(&e, &ids[3], Seq(1));
        assert_eq!(a, b);
    }

    #[test]
    fn keys_are_canonical() {
        let p = Partition {
            profile: ProfileName::new("sales").unwrap(),
            item: ItemId::new("mine").unwrap(),
            entity: EntityName::new("account").unwrap(),
            params: [("user.id".to_owned(), "u1".to_owned())].into(),
        };
        assert_eq!(p.key().as_str(), r#"sales/mine{"user.id":"u1"}"#);
        assert!(PartitionKey::new("").is_err());
        assert!(PartitionKey::new("a\nb").is_err());
    }
}
