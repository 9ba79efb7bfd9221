//! Values between SQLite storage classes and [`sync_core::Value`].

use rusqlite::types::{Value as SqlValue, ValueRef};
use sync_core::{AttributeType, Error, Result, Value};

/// The SQLite value that stores `value` in a column of its attribute type:
/// text for strings, decimals, datetimes (RFC 3339), UUIDs and JSON;
/// integers for integers and booleans (0/1); reals for floats.
pub(crate) fn to_sql(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Boolean(b) => SqlValue::Integer(i64::from(*b)),
        Value::Json(j) => SqlValue::Text(j.to_string()),
        other => SqlValue::Text(other.canonical_text()),
    }
}

/// The typed value of a stored SQLite value, for an attribute of type `ty`.
///
/// Errors: `InvalidInput` when the stored value does not fit the type
/// (text in an integer column, a blob anywhere), naming `column`.
pub(crate) fn from_sql(stored: ValueRef<'_>, ty: &AttributeType, column: &str) -> Result<Value> {
    let loose = match stored {
        ValueRef::Null => return Ok(Value::Null),
        ValueRef::Integer(i) if *ty == AttributeType::Boolean => Value::Boolean(i != 0),
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Error::invalid(format!("column '{column}' holds text that is not UTF-8")))?;
            match ty {
                // A JSON column holds the document's text.
                AttributeType::Json => Value::Json(
                    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned())),
                ),
                _ => Value::String(text.to_owned()),
            }
        }
        ValueRef::Blob(_) => {
            return Err(Error::invalid(format!("column '{column}' holds a blob; blobs are not synced")));
        }
    };
    loose.coerce(ty).map_err(|e| Error::invalid(format!("column '{column}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_type() {
        let cases = [
            (AttributeType::String, Value::from("text")),
            (AttributeType::Integer, Value::from(42i64)),
            (AttributeType::Float, Value::from(2.5f64)),
            (AttributeType::Boolean, Value::from(true)),
            (AttributeType::Decimal, Value::from("12.50").coerce(&AttributeType::Decimal).unwrap()),
            (
                AttributeType::DateTime,
                Value::from("2024-05-01T10:00:00Z").coerce(&AttributeType::DateTime).unwrap(),
            ),
            (AttributeType::Uuid, Value::from(uuid::Uuid::from_u128(7))),
            (AttributeType::Json, Value::Json(serde_json::json!({"a": [1, 2]}))),
            (AttributeType::String, Value::Null),
        ];
        for (ty, value) in cases {
            let stored = to_sql(&value);
            let back = from_sql(ValueRef::from(&stored), &ty, "c").unwrap();
            assert_eq!(back, value, "{ty:?}");
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(from_sql(ValueRef::Text(b"abc"), &AttributeType::Integer, "n").is_err());
        assert!(from_sql(ValueRef::Blob(b"\x00"), &AttributeType::String, "b").is_err());
    }
}
