//! SQL building blocks: identifier quoting, the mapping of attribute types to
//! SQLite column types, binding and decoding of values, and connection set-up.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};
use rust_decimal::Decimal;
use sync_core::value::{format_datetime, parse_datetime};
use sync_core::{AttributeType, Value};
use uuid::Uuid;

use crate::error::{R, StoreError};

/// Quotes an identifier for SQL. Every identifier reaching this function is
/// already a validated `sync-core` identifier (`[A-Za-z_][A-Za-z0-9_]*`);
/// quoting (with embedded quotes doubled) is the second line of defence and
/// keeps names that happen to be SQL keywords usable.
pub(crate) fn quote(ident: &str) -> String {
    sync_core::ids::quote_sql_identifier(ident)
}

/// The SQLite column type of an attribute type. Declared types are chosen so
/// that SQLite's type affinity never rewrites a bound value: exact decimals,
/// datetimes, UUIDs and JSON are TEXT in canonical form.
pub(crate) fn column_type(ty: &AttributeType) -> &'static str {
    match ty {
        AttributeType::String => "TEXT",
        AttributeType::Integer => "INTEGER",
        AttributeType::Decimal => "TEXT",
        AttributeType::Float => "REAL",
        AttributeType::Boolean => "INTEGER",
        AttributeType::DateTime => "TEXT",
        AttributeType::Uuid => "TEXT",
        AttributeType::Lookup { .. } => "TEXT",
        AttributeType::Json => "TEXT",
    }
}

/// A [`Value`] bound as an SQL parameter in its stored form.
pub(crate) struct Bind<'a>(pub(crate) &'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::String(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Integer(i) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*i)),
            Value::Decimal(d) => ToSqlOutput::Owned(rusqlite::types::Value::Text(d.normalize().to_string())),
            Value::Float(f) => ToSqlOutput::Owned(rusqlite::types::Value::Real(*f)),
            Value::Boolean(b) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(i64::from(*b))),
            Value::DateTime(t) => ToSqlOutput::Owned(rusqlite::types::Value::Text(format_datetime(*t))),
            Value::Uuid(u) => {
                let mut buf = Uuid::encode_buffer();
                let s: &str = u.hyphenated().encode_lower(&mut buf);
                ToSqlOutput::Owned(rusqlite::types::Value::Text(s.to_owned()))
            }
            Value::Json(j) => ToSqlOutput::Owned(rusqlite::types::Value::Text(j.to_string())),
        })
    }
}

/// Decodes a stored column value of type `ty`. Values written by this crate
/// take the fast path; anything else (a value edited by hand with the
/// `sqlite3` shell) is coerced like wire input, and is `Corrupt` when it does
/// not fit the type.
///
/// Always inlined: a pull decodes every column of every row through it, and
/// returning its large `Result` through memory stalled the caller's loads
/// (store forwarding) for a measured ~8 % of a pull.
#[inline(always)]
pub(crate) fn decode(ty: &AttributeType, column: &str, v: ValueRef<'_>) -> R<Value> {
    let fast = match (ty, v) {
        (_, ValueRef::Null) => Some(Value::Null),
        (AttributeType::String, ValueRef::Text(t)) => {
            std::str::from_utf8(t).ok().map(|s| Value::String(s.to_owned()))
        }
        (AttributeType::Integer, ValueRef::Integer(i)) => Some(Value::Integer(i)),
        (AttributeType::Float, ValueRef::Real(f)) => Some(Value::Float(f)),
        (AttributeType::Boolean, ValueRef::Integer(i @ (0 | 1))) => Some(Value::Boolean(i == 1)),
        (AttributeType::Decimal, ValueRef::Text(t)) => plain_decimal(t)
            .or_else(|| std::str::from_utf8(t).ok()?.parse::<Decimal>().ok())
            .map(Value::Decimal),
        (AttributeType::DateTime, ValueRef::Text(t)) => {
            std::str::from_utf8(t).ok().and_then(parse_datetime).map(Value::DateTime)
        }
        (AttributeType::Uuid | AttributeType::Lookup { .. }, ValueRef::Text(t)) => {
            Uuid::try_parse_ascii(t).ok().map(Value::Uuid)
        }
        (AttributeType::Json, ValueRef::Text(t)) => serde_json::from_slice(t).ok().map(Value::Json),
        _ => None,
    };
    if let Some(v) = fast {
        return Ok(v);
    }
    let loose = match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(_) => {
            return Err(StoreError::Corrupt(format!(
                "column '{column}' holds a blob; expected {}",
                ty.name()
            )));
        }
    };
    loose.coerce(ty).map_err(|e| StoreError::Corrupt(format!("column '{column}': {e}")))
}

/// The fast path of decoding a stored decimal: `-?D+(.D+)?` with at most
/// 18 digits (the form this crate writes for all but huge values) parses
/// to the same mantissa and scale as `Decimal::from_str`; `None` for
/// anything else, and for a negative zero, which the general parser keeps.
fn plain_decimal(t: &[u8]) -> Option<Decimal> {
    let (negative, body) = match t {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, t),
    };
    if body.is_empty() || body.len() > 19 {
        return None;
    }
    let (mut mantissa, mut digits, mut scale) = (0i64, 0u32, None);
    for (i, &c) in body.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                if digits == 18 {
                    return None;
                }
                mantissa = mantissa * 10 + i64::from(c - b'0');
                digits += 1;
            }
            b'.' if scale.is_none() && i > 0 && i + 1 < body.len() => {
                scale = Some((body.len() - i - 1) as u32)
            }
            _ => return None,
        }
    }
    if negative && mantissa == 0 {
        return None;
    }
    Some(Decimal::new(if negative { -mantissa } else { mantissa }, scale.unwrap_or(0)))
}

/// Connection settings shared by every database this crate opens.
#[derive(Clone, Debug)]
pub(crate) struct ConnSettings {
    pub(crate) busy_timeout: Duration,
    pub(crate) cache_size_kib: u32,
    pub(crate) mmap_size: u64,
    pub(crate) wal_autocheckpoint: u32,
}

/// Opens a database file with the crate's pragmas. `create` allows creating
/// the file (and switches it to WAL); `read_only` makes a query-only reader.
pub(crate) fn open(path: &Path, settings: &ConnSettings, create: bool, read_only: bool) -> R<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(settings.busy_timeout)?;
    if create {
        // Persistent: every later connection of the file is in WAL mode.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "'{}' could not be switched to WAL (journal_mode is {mode})",
                path.display()
            )));
        }
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -{};
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = OFF;
         PRAGMA mmap_size = {};
         PRAGMA wal_autocheckpoint = {};",
        settings.cache_size_kib, settings.mmap_size, settings.wal_autocheckpoint
    ))?;
    if read_only {
        conn.execute_batch("PRAGMA query_only = 1;")?;
    }
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_millis(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_parse_as_the_general_parser_does() {
        for text in ["0", "7", "-7", "1234.5", "-0.001", "0.10", "999999999999999999", "-12345678901234567.8"]
        {
            let fast = plain_decimal(text.as_bytes()).unwrap();
            let general: Decimal = text.parse().unwrap();
            assert_eq!((fast.mantissa(), fast.scale()), (general.mantissa(), general.scale()), "{text}");
        }
        for text in
            ["", "-", "-0", "-0.0", ".5", "5.", "1.2.3", "+1", "1e5", " 1", "1234567890123456789", "1_000"]
        {
            assert_eq!(plain_decimal(text.as_bytes()), None, "{text:?} takes the general path");
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_decimals_agree_with_from_str(text in "-?[0-9]{1,20}(\\.[0-9]{1,20})?") {
            if let Some(fast) = plain_decimal(text.as_bytes()) {
                let general: Decimal = text.parse().unwrap();
                proptest::prop_assert_eq!((fast.mantissa(), fast.scale()), (general.mantissa(), general.scale()));
            }
        }
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote("account"), "\"account\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let conn = Connection::open_in_memory().unwrap();
        let cases = vec![
            (AttributeType::String, Value::from("x'y\"z")),
            (AttributeType::Integer, Value::Integer(-5)),
            (AttributeType::Decimal, Value::Decimal("12.340".parse().unwrap())),
            (AttributeType::Float, Value::Float(0.1)),
            (AttributeType::Boolean, Value::Boolean(true)),
            (AttributeType::DateTime, Value::from("2024-01-02T03:04:05.25+02:00")),
            (AttributeType::Uuid, Value::Uuid(Uuid::new_v4())),
            (AttributeType::Json, Value::Json(serde_json::json!({"a": [1, "b", null]}))),
            (AttributeType::Uuid, Value::Null),
        ];
        for (ty, v) in cases {
            let v = v.coerce(&ty).unwrap();
            let back = conn
                .query_row("SELECT ?1", [Bind(&v)], |r| Ok(decode(&ty, "c", r.get_ref(0)?)))
                .unwrap()
                .unwrap();
            assert_eq!(back, v, "{ty:?}");
        }
    }

    #[test]
    fn hand_edited_values_are_coerced_or_corrupt() {
        let d = decode(&AttributeType::Float, "c", ValueRef::Integer(3)).unwrap();
        assert_eq!(d, Value::Float(3.0));
        assert!(decode(&AttributeType::Uuid, "c", ValueRef::Text(b"nope")).is_err());
        assert!(decode(&AttributeType::String, "c", ValueRef::Blob(b"x")).is_err());
    }
}
