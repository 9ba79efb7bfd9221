//! Validated identifiers and small opaque newtypes.
//!
//! Org, entity, column, profile, profile-item and queue names are SQL-safe by
//! construction: 1 to [`MAX_IDENT_LEN`] characters matching
//! `[A-Za-z_][A-Za-z0-9_]*`. Anything else is [`Error::InvalidInput`], so a
//! hostile name in source metadata or a request never reaches SQL.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest identifier accepted (SQL Server's identifier limit).
pub const MAX_IDENT_LEN: usize = 128;

/// Checks that `name` is a valid identifier; `what` names it in the error.
pub fn validate_identifier(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} name is empty")));
    }
    if name.len() > MAX_IDENT_LEN {
        return Err(Error::invalid(format!(
            "{what} name is {} characters long; at most {MAX_IDENT_LEN} are allowed",
            name.len()
        )));
    }
    for (i, c) in name.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            return Err(Error::invalid_at(
                format!("{what} name {name:?} has the character {c:?}; names match [A-Za-z_][A-Za-z0-9_]*"),
                i,
            ));
        }
    }
    Ok(())
}

/// Double-quotes an identifier for SQL (ANSI quoting, embedded quotes
/// doubled). Identifiers reaching SQL are validated names already; quoting
/// is the second line of defence and keeps names that are keywords usable.
/// Shared by every SQL-speaking crate so the rule lives in one place.
pub fn quote_sql_identifier(ident: &str) -> String {
    let mut s = String::with_capacity(ident.len() + 2);
    s.push('"');
    for c in ident.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// Shared text inside (`Arc<str>`): cloning a name, as every row and
        /// pulled change does, copies a pointer, not the text.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `name` and wraps it.
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                validate_identifier($what, &name)?;
                Ok(Self(Arc::from(name)))
            }
            /// The name as a string slice (always a valid identifier).
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0.as_ref().to_owned()
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

identifier!(
    /// An organization (tenant) id: names its staging database.
    OrgId, "org"
);
identifier!(
    /// The logical name of an entity (a staging table).
    EntityName, "entity"
);
identifier!(
    /// The logical name of an attribute (a staging column).
    ColumnName, "column"
);
identifier!(
    /// The name of a mobile offline profile, unique within an org.
    ProfileName, "profile"
);
identifier!(
    /// The id of a profile item, unique within its profile (defaults to the entity name).
    ItemId, "profile item"
);
identifier!(
    /// The name of a work queue (`provisioning`, `datasync`, …).
    QueueName, "queue"
);

impl From<&EntityName> for ItemId {
    /// An entity name is a valid identifier, hence a valid item id.
    fn from(entity: &EntityName) -> Self {
        ItemId(entity.0.clone())
    }
}

/// The longest row id accepted.
pub const MAX_ROW_ID_LEN: usize = 256;

/// A row's primary key in canonical text form (a lower-case hyphenated UUID,
/// a decimal integer, or the string itself). Bound as a parameter, never
/// spliced into SQL, so any non-empty text without control characters is safe.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RowId(String);

impl RowId {
    /// Validates and wraps a row id: 1 to [`MAX_ROW_ID_LEN`] bytes, no control characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::invalid("row id is empty"));
        }
        if id.len() > MAX_ROW_ID_LEN {
            return Err(Error::invalid(format!(
                "row id is {} bytes long; at most {MAX_ROW_ID_LEN} are allowed",
                id.len()
            )));
        }
        if let Some(pos) = id.find(|c: char| c.is_control()) {
            return Err(Error::invalid_at("row id contains a control character", pos));
        }
        Ok(RowId(id))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for RowId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        RowId::new(s)
    }
}
impl From<uuid::Uuid> for RowId {
    /// The canonical id of a UUID key: lower-case and hyphenated (always valid).
    fn from(u: uuid::Uuid) -> Self {
        RowId(crate::value::uuid_text(u))
    }
}
impl From<RowId> for String {
    fn from(v: RowId) -> String {
        v.0
    }
}
impl fmt::Display for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowId({:?})", self.0)
    }
}

/// An org-wide, strictly increasing change counter. Every staged change
/// (membership put or remove) gets the next `Seq`; seq order is commit order.
/// `Seq(0)` means "before everything".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The position before any change.
    pub const ZERO: Seq = Seq(0);
    /// The next seq.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}
impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

/// A source's change-tracking token: opaque to everything but the source.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeToken(pub String);

impl fmt::Debug for ChangeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChangeToken({:?})", self.0)
    }
}
impl fmt::Display for ChangeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-made mutation id (a UUID): the idempotency key of an upload.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MutationId(pub uuid::Uuid);

impl MutationId {
    /// A fresh random id.
    pub fn new_v4() -> Self {
        MutationId(uuid::Uuid::new_v4())
    }
}
impl fmt::Display for MutationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn accepts_valid_identifiers() {
        for ok in ["a", "_", "account", "Account_2", "_x9", &"a".repeat(MAX_IDENT_LEN)] {
            assert!(EntityName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_hostile_identifiers() {
        let long = "a".repeat(MAX_IDENT_LEN + 1);
        for bad in
            ["", "1abc", "a b", "a;drop table x", "a\"b", "a]b", "a-b", "é", "a\0", "名前", long.as_str()]
        {
            let err = ColumnName::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn error_names_the_offending_position() {
        match OrgId::new("ab;c") {
            Err(Error::InvalidInput { position, .. }) => assert_eq!(position, Some(2)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<OrgId>("\"good_org\"").is_ok());
        assert!(serde_json::from_str::<OrgId>("\"bad org\"").is_err());
        assert!(serde_json::from_str::<RowId>("\"\"").is_err());
        assert!(serde_json::from_str::<RowId>("\"a\\u0000\"").is_err());
    }

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_sql_identifier("order"), "\"order\"");
        assert_eq!(quote_sql_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn row_id_limits() {
        assert!(RowId::new("x".repeat(MAX_ROW_ID_LEN)).is_ok());
        assert!(RowId::new("x".repeat(MAX_ROW_ID_LEN + 1)).is_err());
    }

    #[test]
    fn a_uuid_row_id_is_lower_case_and_hyphenated() {
        let u = uuid::Uuid::parse_str("A1B2C3D4E5F60718293A4B5C6D7E8F90").unwrap();
        let id = RowId::from(u);
        assert_eq!(id.as_str(), "a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90");
        assert_eq!(RowId::new(id.as_str()).unwrap(), id);
    }
}
