//! Mapping between [`Value`]s and SQLite, and identifier quoting.
//!
//! | attribute type | SQLite column | stored as |
//! | --- | --- | --- |
//! | string, uuid, lookup | `TEXT` | the text (UUIDs lower-case hyphenated) |
//! | integer | `INTEGER` | the integer |
//! | decimal | `TEXT` | canonical decimal text (exact, unlike `REAL`) |
//! | float | `REAL` | the float |
//! | boolean | `INTEGER` | `0` / `1` |
//! | datetime | `TEXT` | RFC 3339 in UTC (sorts chronologically) |
//! | json | `TEXT` | the JSON document |

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};
use sync_core::{AttributeType, Value};

use crate::error::{ClientError, Result};

/// Double-quotes an identifier for SQL. Entity and column names are already
/// validated identifiers; quoting keeps keywords (`order`, `group`) working
/// and makes the internal `sync:` tables impossible to collide with.
pub(crate) fn quote(ident: &str) -> String {
    sync_core::ids::quote_sql_identifier(ident)
}

/// The SQLite column type of an attribute type.
pub(crate) fn column_type(ty: &AttributeType) -> &'static str {
    match ty {
        AttributeType::Integer | AttributeType::Boolean => "INTEGER",
        AttributeType::Float => "REAL",
        _ => "TEXT",
    }
}

/// A [`Value`] bound as a SQL parameter.
pub(crate) struct SqlValue<'a>(pub &'a Value);

impl ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::String(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Integer(i) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*i)),
            Value::Float(f) => ToSqlOutput::Owned(rusqlite::types::Value::Real(*f)),
            Value::Boolean(b) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(i64::from(*b))),
            Value::Json(j) => ToSqlOutput::Owned(rusqlite::types::Value::Text(j.to_string())),
            other => ToSqlOutput::Owned(rusqlite::types::Value::Text(other.canonical_text())),
        })
    }
}

/// Reads a stored SQLite value back as a typed [`Value`] of `ty`.
pub(crate) fn read_value(v: ValueRef<'_>, ty: &AttributeType) -> Result<Value> {
    let loose = match v {
        ValueRef::Null => return Ok(Value::Null),
        ValueRef::Integer(i) => match ty {
            AttributeType::Boolean => Value::Boolean(i != 0),
            AttributeType::String => Value::String(i.to_string()),
            _ => Value::Integer(i),
        },
        ValueRef::Real(f) => match ty {
            AttributeType::String => Value::String(f.to_string()),
            _ => Value::Float(f),
        },
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t)
                .map_err(|_| ClientError::corrupt("a text column holds invalid UTF-8"))?
                .to_owned();
            match ty {
                AttributeType::Json => {
                    Value::Json(serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s)))
                }
                AttributeType::Integer => {
                    s.parse::<i64>().map(Value::Integer).unwrap_or_else(|_| Value::String(s))
                }
                AttributeType::Float => {
                    s.parse::<f64>().map(Value::Float).unwrap_or_else(|_| Value::String(s))
                }
                AttributeType::Boolean => match s.as_str() {
                    "1" | "true" => Value::Boolean(true),
                    "0" | "false" => Value::Boolean(false),
                    _ => Value::String(s),
                },
                _ => Value::String(s),
            }
        }
        ValueRef::Blob(b) => Value::Json(serde_json::Value::String(String::from_utf8_lossy(b).into_owned())),
    };
    loose.coerce(ty).map_err(|e| ClientError::corrupt(format!("stored value does not fit its column: {e}")))
}

/// A stored value as JSON (for `query` results).
pub(crate) fn value_ref_to_json(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => serde_json::Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into),
        ValueRef::Text(t) => serde_json::Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => serde_json::Value::String(format!("<{} bytes>", b.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote("order"), "\"order\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn round_trips_through_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (i INTEGER, v)").unwrap();
        let cases = vec![
            (Value::Null, AttributeType::String),
            (Value::from("x'y"), AttributeType::String),
            (Value::Integer(-3), AttributeType::Integer),
            (Value::Decimal("12.5".parse().unwrap()), AttributeType::Decimal),
            (Value::Float(0.25), AttributeType::Float),
            (Value::Boolean(true), AttributeType::Boolean),
            (
                Value::from("2024-01-02T03:04:05Z").coerce(&AttributeType::DateTime).unwrap(),
                AttributeType::DateTime,
            ),
            (Value::Uuid(uuid::Uuid::new_v4()), AttributeType::Uuid),
            (Value::Json(serde_json::json!({"a": [1]})), AttributeType::Json),
        ];
        for (i, (v, ty)) in cases.iter().enumerate() {
            conn.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![i as i64, SqlValue(v)]).unwrap();
            let back = conn
                .query_row("SELECT v FROM t WHERE i = ?1", [i as i64], |r| Ok(read_value(r.get_ref(0)?, ty)))
                .unwrap()
                .unwrap();
            assert_eq!(&back, v);
        }
    }
}
