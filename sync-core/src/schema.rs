//! Entity metadata: the schema of a staged entity, as the source describes it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::{ColumnName, EntityName, RowId};
use crate::row::Row;
use crate::value::Value;

/// The most attributes one entity may have.
pub const MAX_ATTRIBUTES: usize = 1024;

/// The type of an attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttributeType {
    /// Text.
    String,
    /// 64-bit signed integer.
    Integer,
    /// Exact decimal.
    Decimal,
    /// 64-bit float.
    Float,
    /// Boolean.
    Boolean,
    /// Point in time (RFC 3339 on the wire).
    #[serde(rename = "datetime")]
    DateTime,
    /// UUID.
    Uuid,
    /// A reference to a row of another entity (its UUID key).
    Lookup {
        /// The referenced entity.
        target: EntityName,
    },
    /// Any JSON document.
    Json,
}

impl AttributeType {
    /// The type's name as written in metadata (`lookup` for lookups).
    pub fn name(&self) -> &'static str {
        match self {
            AttributeType::String => "string",
            AttributeType::Integer => "integer",
            AttributeType::Decimal => "decimal",
            AttributeType::Float => "float",
            AttributeType::Boolean => "boolean",
            AttributeType::DateTime => "datetime",
            AttributeType::Uuid => "uuid",
            AttributeType::Lookup { .. } => "lookup",
            AttributeType::Json => "json",
        }
    }

    /// Whether this type may serve as a primary key.
    pub fn can_be_key(&self) -> bool {
        matches!(self, AttributeType::String | AttributeType::Integer | AttributeType::Uuid)
    }
}

/// One attribute (column) of an entity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attribute {
    /// Logical name.
    pub name: ColumnName,
    /// Type.
    #[serde(rename = "type")]
    pub ty: AttributeType,
}

impl Attribute {
    /// A new attribute.
    pub fn new(name: ColumnName, ty: AttributeType) -> Self {
        Attribute { name, ty }
    }
}

/// The schema of one entity: its name, primary key and attributes.
///
/// Invariants (checked by [`EntityMetadata::validate`], which every store
/// runs before applying a schema): the primary key is one of the attributes
/// and has a key type; attribute names are unique; at most
/// [`MAX_ATTRIBUTES`] attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityMetadata {
    /// Logical name of the entity.
    pub name: EntityName,
    /// The attribute that holds the primary key.
    pub primary_key: ColumnName,
    /// All attributes, the primary key included, in source order.
    pub attributes: Vec<Attribute>,
}

impl EntityMetadata {
    /// Builds and validates metadata.
    pub fn new(name: EntityName, primary_key: ColumnName, attributes: Vec<Attribute>) -> Result<Self> {
        let meta = EntityMetadata { name, primary_key, attributes };
        meta.validate()?;
        Ok(meta)
    }

    /// Checks the invariants above.
    pub fn validate(&self) -> Result<()> {
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(Error::limit(
                "attributes_per_entity",
                MAX_ATTRIBUTES as u64,
                self.attributes.len() as u64,
            ));
        }
        let mut seen = BTreeSet::new();
        for a in &self.attributes {
            // Column names compare case-insensitively in SQL; so must we.
            if !seen.insert(a.name.as_str().to_ascii_lowercase()) {
                return Err(Error::invalid(format!(
                    "entity '{}' declares attribute '{}' twice",
                    self.name, a.name
                )));
            }
        }
        match self.attribute(self.primary_key.as_str()) {
            None => Err(Error::invalid(format!(
                "entity '{}': primary key '{}' is not among its attributes",
                self.name, self.primary_key
            ))),
            Some(a) if !a.ty.can_be_key() => Err(Error::invalid(format!(
                "entity '{}': primary key '{}' has type {}; keys are string, integer or uuid",
                self.name,
                self.primary_key,
                a.ty.name()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The attribute named `name`, if any.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name.as_str() == name)
    }

    /// Every column in the order a pull sends a row's values: the primary
    /// key first, then the other attributes in schema order. Stores build
    /// [`PulledRow`](crate::PulledRow)s in this order, so the service moves
    /// them into a response without reordering.
    pub fn pull_columns(&self) -> Vec<ColumnName> {
        std::iter::once(self.primary_key.clone())
            .chain(self.attributes.iter().map(|a| a.name.clone()).filter(|c| *c != self.primary_key))
            .collect()
    }

    /// The type of the primary key.
    pub fn key_type(&self) -> Result<&AttributeType> {
        self.attribute(self.primary_key.as_str())
            .map(|a| &a.ty)
            .ok_or_else(|| Error::invalid(format!("entity '{}' has no primary key attribute", self.name)))
    }

    /// A hash of the schema (name, key, attributes in order, types): equal
    /// schemas hash equal, and any change changes the hash.
    pub fn schema_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Parses a row id from text into the key's canonical form
    /// (e.g. upper-case UUIDs become lower-case).
    pub fn parse_row_id(&self, text: &str) -> Result<RowId> {
        RowId::new(self.key_value(text)?.canonical_text())
    }

    /// The typed primary key value written as `text`.
    pub fn key_value(&self, text: &str) -> Result<Value> {
        key_value_of(self.key_type()?, text)
    }

    /// Checks a row against this schema and returns it in canonical form:
    /// every value coerced to its attribute's type, the primary key value set
    /// from the row id (or checked against it), unknown columns rejected,
    /// missing columns filled with null. To check many rows, build a
    /// [`RowChecker`] once with [`EntityMetadata::row_checker`].
    pub fn check_row(&self, row: Row) -> Result<Row> {
        self.row_checker()?.check(row)
    }

    /// A checker of rows against this schema, prepared once for many rows.
    /// Fails when the schema has no primary key attribute.
    pub fn row_checker(&self) -> Result<RowChecker<'_>> {
        let mut sorted: Vec<&Attribute> = self.attributes.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(RowChecker { meta: self, key_type: self.key_type()?, sorted })
    }
}

/// [`EntityMetadata::check_row`] prepared for many rows of one schema: a
/// row keeps its values sorted by column, and the checker keeps the
/// attributes sorted the same way, so checking a row is one merge of two
/// sorted lists instead of a search per value.
#[derive(Clone, Debug)]
pub struct RowChecker<'a> {
    meta: &'a EntityMetadata,
    key_type: &'a AttributeType,
    sorted: Vec<&'a Attribute>,
}

/// The primary key value of type `ty` written as `text`.
fn key_value_of(ty: &AttributeType, text: &str) -> Result<Value> {
    match ty {
        AttributeType::Integer => text
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| Error::invalid(format!("row id {text:?} is not an integer key"))),
        ty => Value::String(text.to_owned()).coerce(ty),
    }
}

impl RowChecker<'_> {
    /// Checks `row` as [`EntityMetadata::check_row`] does.
    pub fn check(&self, row: Row) -> Result<Row> {
        let meta = self.meta;
        let id_value = key_value_of(self.key_type, row.id.as_str())?;
        let canonical = id_value.canonical_text();
        // Most ids arrive in canonical form already: keep them.
        let id = if canonical == row.id.as_str() { row.id } else { RowId::new(canonical)? };
        // Coerced in place: the row's map is kept, not rebuilt.
        let mut values = row.values;
        let mut attrs = self.sorted.iter();
        for (name, v) in &mut values {
            let Some(attr) = attrs.by_ref().find(|a| a.name >= *name).filter(|a| a.name == *name) else {
                return Err(Error::invalid(format!("entity '{}' has no column '{name}'", meta.name)));
            };
            let given = std::mem::replace(v, Value::Null);
            *v = given
                .coerce(&attr.ty)
                .map_err(|e| Error::invalid(format!("column '{}.{name}': {e}", meta.name)))?;
        }
        match values.get(&meta.primary_key) {
            Some(v) if !v.is_null() && v.canonical_text() != id.as_str() => {
                return Err(Error::invalid(format!(
                    "row id '{id}' differs from its primary key column '{}' = {v}",
                    meta.primary_key
                )));
            }
            _ => {
                values.insert(meta.primary_key.clone(), id_value);
            }
        }
        // Every column is an attribute, so fewer columns than attributes
        // means some are missing.
        if values.len() < self.sorted.len() {
            for a in &self.sorted {
                values.entry(a.name.clone()).or_insert(Value::Null);
            }
        }
        Ok(Row { id, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(s: &str) -> ColumnName {
        ColumnName::new(s).unwrap()
    }

    fn account() -> EntityMetadata {
        EntityMetadata::new(
            EntityName::new("account").unwrap(),
            col("accountid"),
            vec![
                Attribute::new(col("accountid"), AttributeType::Uuid),
                Attribute::new(col("name"), AttributeType::String),
                Attribute::new(col("revenue"), AttributeType::Decimal),
            ],
        )
        .unwrap()
    }

    #[test]
    fn validates_key_and_duplicates() {
        let mut m = account();
        m.primary_key = col("missing");
        assert!(m.validate().is_err());
        let mut m = account();
        m.attributes.push(Attribute::new(col("NAME"), AttributeType::String));
        assert!(m.validate().is_err());
        let mut m = account();
        m.primary_key = col("revenue");
        assert!(m.validate().is_err());
    }

    #[test]
    fn schema_hash_tracks_changes() {
        let a = account();
        let mut b = account();
        assert_eq!(a.schema_hash(), b.schema_hash());
        b.attributes[2].ty = AttributeType::Float;
        assert_ne!(a.schema_hash(), b.schema_hash());
    }

    #[test]
    fn check_row_canonicalises() {
        let m = account();
        let id = uuid::Uuid::new_v4();
        let row = Row::new(
            RowId::new(id.to_string().to_uppercase()).unwrap(),
            [(col("revenue"), Value::from("10.50"))],
        );
        let row = m.check_row(row).unwrap();
        assert_eq!(row.id.as_str(), id.to_string());
        assert_eq!(row.values[&col("accountid")], Value::Uuid(id));
        assert_eq!(row.values[&col("name")], Value::Null);
        assert_eq!(row.values[&col("revenue")].canonical_text(), "10.5");
        let bad = Row::new(RowId::new(id.to_string()).unwrap(), [(col("nope"), Value::Null)]);
        assert!(m.check_row(bad).is_err());
        let bad = Row::new(RowId::new("not-a-uuid").unwrap(), []);
        assert!(m.check_row(bad).is_err());
    }

    #[test]
    fn a_row_checker_checks_many_rows_by_merging_sorted_columns() {
        let m = account();
        let checker = m.row_checker().unwrap();
        let id = uuid::Uuid::new_v4();
        let rid = || RowId::new(id.to_string()).unwrap();
        // Unknown columns sorting before, between and after the attributes.
        for unknown in ["aaa", "nam", "nose", "zzz"] {
            let row = Row::new(rid(), [(col("name"), Value::from("N")), (col(unknown), Value::Null)]);
            let err = checker.check(row).unwrap_err();
            assert!(err.to_string().contains(&format!("no column '{unknown}'")), "{err}");
        }
        // Every attribute given, the key column agreeing with the id.
        let full = Row::new(
            rid(),
            [
                (col("accountid"), Value::from(id.to_string().to_uppercase())),
                (col("name"), Value::from("N")),
                (col("revenue"), Value::Integer(3)),
            ],
        );
        let row = checker.check(full.clone()).unwrap();
        assert_eq!(row.values.len(), 3);
        assert_eq!(row.values[&col("accountid")], Value::Uuid(id));
        assert_eq!(row.values[&col("revenue")].canonical_text(), "3");
        // The same checker goes on: a key column that contradicts the id.
        let mut other = full;
        other.values.insert(col("accountid"), Value::Uuid(uuid::Uuid::new_v4()));
        assert!(checker.check(other).unwrap_err().to_string().contains("differs from its primary key"));
        // A value that does not fit its type names the column.
        let bad = Row::new(rid(), [(col("revenue"), Value::from("lots"))]);
        assert!(checker.check(bad).unwrap_err().to_string().contains("account.revenue"));
    }
}
