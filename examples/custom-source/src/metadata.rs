//! Entity metadata from the host's tables: `PRAGMA table_info` and a small
//! mapping of declared column types.

use rusqlite::Connection;
use sync_core::{Attribute, AttributeType, ColumnName, EntityMetadata, EntityName, Error, Result};

use crate::sqlite_error::map;

/// The column every tracked table carries: the global version of the row's
/// last write. It is change tracking, not data, so it is never synced.
pub const VERSION_COLUMN: &str = "version";

/// One host table offered for offline use. The entity has the table's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// The table (and entity) name.
    pub table: EntityName,
    /// Whether client uploads may write to it; writes to a read-only table
    /// are `Forbidden`.
    pub writable: bool,
}

impl TableSpec {
    /// A table clients may read and write.
    pub fn writable(table: &str) -> Result<Self> {
        Ok(TableSpec { table: EntityName::new(table)?, writable: true })
    }

    /// A table clients may only read.
    pub fn read_only(table: &str) -> Result<Self> {
        Ok(TableSpec { table: EntityName::new(table)?, writable: false })
    }
}

/// The attribute type of a column declared as `declared` (case-insensitive),
/// following SQLite's own affinity rules where they apply:
///
/// | declared type contains | attribute type |
/// | --- | --- |
/// | `BOOL` | boolean |
/// | `DATE`, `TIME` | datetime (RFC 3339 text) |
/// | `UUID`, `GUID` | uuid |
/// | `JSON` | json (the document's text) |
/// | `DEC`, `NUMERIC`, `MONEY` | decimal |
/// | `INT` | integer |
/// | `REAL`, `FLOA`, `DOUB` | float |
/// | `CHAR`, `CLOB`, `TEXT`, or nothing | string |
///
/// `None` for anything else (e.g. `BLOB`), which is not synced.
pub fn attribute_type(declared: &str) -> Option<AttributeType> {
    let d = declared.to_ascii_uppercase();
    let has = |s: &str| d.contains(s);
    Some(if has("BOOL") {
        AttributeType::Boolean
    } else if has("DATE") || has("TIME") {
        AttributeType::DateTime
    } else if has("UUID") || has("GUID") {
        AttributeType::Uuid
    } else if has("JSON") {
        AttributeType::Json
    } else if has("DEC") || has("NUMERIC") || has("MONEY") {
        AttributeType::Decimal
    } else if has("INT") {
        AttributeType::Integer
    } else if has("REAL") || has("FLOA") || has("DOUB") {
        AttributeType::Float
    } else if d.is_empty() || has("CHAR") || has("CLOB") || has("TEXT") {
        AttributeType::String
    } else {
        return None;
    })
}

/// One column as `PRAGMA table_info` reports it.
pub(crate) struct ColumnInfo {
    pub name: String,
    pub declared: String,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk: i64,
}

pub(crate) fn table_info(conn: &Connection, table: &EntityName) -> Result<Vec<ColumnInfo>> {
    let what = format!("reading the columns of table '{table}'");
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")")).map_err(map(&what))?;
    let columns = stmt
        .query_map([], |r| Ok(ColumnInfo { name: r.get(1)?, declared: r.get(2)?, pk: r.get(5)? }))
        .map_err(map(&what))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map(&what))?;
    if columns.is_empty() {
        return Err(Error::not_found(format!("table '{table}' in the host database")));
    }
    Ok(columns)
}

/// The single primary-key column of `table`.
///
/// Errors: `InvalidInput` for a table without a declared primary key or
/// with a composite one (a row id must be one value).
pub(crate) fn key_column(table: &EntityName, columns: &[ColumnInfo]) -> Result<String> {
    let keys: Vec<&ColumnInfo> = columns.iter().filter(|c| c.pk > 0).collect();
    match keys.as_slice() {
        [key] => Ok(key.name.clone()),
        [] => Err(Error::invalid(format!("table '{table}' has no declared PRIMARY KEY column"))),
        _ => Err(Error::invalid(format!(
            "table '{table}' has a composite primary key; give it a single key column to sync it"
        ))),
    }
}

/// The metadata of `table`: every column but [`VERSION_COLUMN`], typed by
/// [`attribute_type`], keyed by its primary key.
///
/// Errors: `NotFound` for a missing table; `InvalidInput` for a column
/// whose name is not an identifier or whose type does not map, and for
/// tables without a single key or without the version column.
pub fn read_metadata(conn: &Connection, table: &EntityName) -> Result<EntityMetadata> {
    let columns = table_info(conn, table)?;
    let key = key_column(table, &columns)?;
    if !columns.iter().any(|c| c.name == VERSION_COLUMN) {
        return Err(Error::invalid(format!(
            "table '{table}' has no '{VERSION_COLUMN}' column: install change tracking on it first"
        )));
    }
    let mut attributes = Vec::with_capacity(columns.len());
    for c in columns.iter().filter(|c| c.name != VERSION_COLUMN) {
        let ty = attribute_type(&c.declared).ok_or_else(|| {
            Error::invalid(format!(
                "column '{table}.{}' is declared {:?}, which has no attribute type",
                c.name, c.declared
            ))
        })?;
        attributes.push(Attribute::new(ColumnName::new(c.name.as_str())?, ty));
    }
    EntityMetadata::new(table.clone(), ColumnName::new(key)?, attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_like_sqlite_affinity() {
        let cases = [
            ("INTEGER", Some(AttributeType::Integer)),
            ("bigint", Some(AttributeType::Integer)),
            ("BOOLEAN", Some(AttributeType::Boolean)),
            ("VARCHAR(40)", Some(AttributeType::String)),
            ("", Some(AttributeType::String)),
            ("DECIMAL(10,2)", Some(AttributeType::Decimal)),
            ("DATETIME", Some(AttributeType::DateTime)),
            ("UUID", Some(AttributeType::Uuid)),
            ("JSON", Some(AttributeType::Json)),
            ("DOUBLE", Some(AttributeType::Float)),
            ("BLOB", None),
        ];
        for (declared, expected) in cases {
            assert_eq!(attribute_type(declared), expected, "{declared}");
        }
    }

    #[test]
    fn metadata_skips_the_version_column_and_finds_the_key() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE customer (customerid TEXT PRIMARY KEY, name TEXT NOT NULL, active BOOLEAN,
                                    version INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE pairs (a TEXT, b TEXT, version INTEGER, PRIMARY KEY (a, b));
             CREATE TABLE untracked (id TEXT PRIMARY KEY);",
        )
        .unwrap();
        let meta = read_metadata(&conn, &EntityName::new("customer").unwrap()).unwrap();
        assert_eq!(meta.primary_key.as_str(), "customerid");
        let names: Vec<&str> = meta.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["customerid", "name", "active"]);
        let composite = read_metadata(&conn, &EntityName::new("pairs").unwrap()).unwrap_err();
        assert!(composite.to_string().contains("composite"), "{composite}");
        let untracked = read_metadata(&conn, &EntityName::new("untracked").unwrap()).unwrap_err();
        assert!(untracked.to_string().contains("change tracking"), "{untracked}");
        let missing = read_metadata(&conn, &EntityName::new("nowhere").unwrap()).unwrap_err();
        assert_eq!(missing.kind(), sync_core::ErrorKind::NotFound);
    }
}
