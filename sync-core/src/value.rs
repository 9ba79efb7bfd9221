//! Typed attribute values.
//!
//! On the wire a [`Value`] is plain JSON (`null`, a string, a number, a
//! boolean, or any JSON for `json` attributes); decimals, datetimes and UUIDs
//! travel as strings. JSON alone does not say which type a string holds, so a
//! value read from the wire is coerced against its attribute type with
//! [`Value::coerce`], which is also where ill-typed input is rejected.

use std::cmp::Ordering;
use std::fmt;

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::schema::AttributeType;

/// The longest string value accepted, in bytes (1 MiB).
pub const MAX_STRING_LEN: usize = 1 << 20;

/// One attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// Text.
    String(String),
    /// A 64-bit signed integer.
    Integer(i64),
    /// An exact decimal number.
    Decimal(Decimal),
    /// A finite 64-bit float.
    Float(f64),
    /// A boolean.
    Boolean(bool),
    /// A point in time (kept with its offset; compared as instants).
    DateTime(OffsetDateTime),
    /// A UUID (also the value of a lookup).
    Uuid(Uuid),
    /// Any JSON document.
    Json(serde_json::Value),
}

impl Value {
    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Converts a loosely typed value (as read from JSON) into the exact
    /// variant of `ty`, or says why it cannot. `Null` coerces to every type.
    pub fn coerce(self, ty: &AttributeType) -> Result<Value> {
        use AttributeType as T;
        let mismatch =
            |v: &Value| Error::invalid(format!("expected a {} value, got {}", ty.name(), v.describe()));
        Ok(match (ty, self) {
            (_, Value::Null) => Value::Null,
            (T::String, Value::String(s)) => {
                if s.len() > MAX_STRING_LEN {
                    return Err(Error::invalid(format!(
                        "string value of {} bytes exceeds the maximum of {MAX_STRING_LEN}",
                        s.len()
                    )));
                }
                Value::String(s)
            }
            (T::Integer, Value::Integer(i)) => Value::Integer(i),
            (T::Integer, Value::Float(f)) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                Value::Integer(f as i64)
            }
            (T::Integer, Value::Decimal(d)) if d.fract().is_zero() => {
                Value::Integer(d.to_i64().ok_or_else(|| Error::invalid("integer value out of range"))?)
            }
            (T::Decimal, Value::Decimal(d)) => Value::Decimal(d.normalize()),
            (T::Decimal, Value::Integer(i)) => Value::Decimal(Decimal::from(i)),
            (T::Decimal, Value::Float(f)) => Value::Decimal(
                Decimal::from_f64(f).ok_or_else(|| Error::invalid("decimal value out of range"))?.normalize(),
            ),
            (T::Decimal, Value::String(s)) => Value::Decimal(
                s.trim()
                    .parse::<Decimal>()
                    .map_err(|e| Error::invalid(format!("{s:?} is not a decimal number: {e}")))?
                    .normalize(),
            ),
            (T::Float, Value::Float(f)) if f.is_finite() => Value::Float(f),
            (T::Float, Value::Integer(i)) => Value::Float(i as f64),
            (T::Float, Value::Decimal(d)) => {
                Value::Float(d.to_f64().ok_or_else(|| Error::invalid("float value out of range"))?)
            }
            (T::Boolean, Value::Boolean(b)) => Value::Boolean(b),
            (T::DateTime, Value::DateTime(t)) => Value::DateTime(t),
            (T::DateTime, Value::String(s)) => Value::DateTime(match parse_canonical_datetime(&s) {
                Some(t) => t,
                None => OffsetDateTime::parse(&s, &Rfc3339)
                    .map_err(|e| Error::invalid(format!("{s:?} is not an RFC 3339 datetime: {e}")))?,
            }),
            (T::Uuid | T::Lookup { .. }, Value::Uuid(u)) => Value::Uuid(u),
            (T::Uuid | T::Lookup { .. }, Value::String(s)) => Value::Uuid(
                Uuid::parse_str(&s).map_err(|e| Error::invalid(format!("{s:?} is not a UUID: {e}")))?,
            ),
            (T::Json, Value::Json(j)) => Value::Json(j),
            (T::Json, other) => Value::Json(other.to_json()),
            (_, other) => return Err(mismatch(&other)),
        })
    }

    /// A short description of the value's shape, for error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Decimal(_) => "a decimal",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::DateTime(_) => "a datetime",
            Value::Uuid(_) => "a UUID",
            Value::Json(_) => "a JSON document",
        }
    }

    /// The value as JSON, in its wire form.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::String(s) => J::String(s.clone()),
            Value::Integer(i) => J::from(*i),
            Value::Decimal(d) => J::String(d.normalize().to_string()),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Value::Boolean(b) => J::Bool(*b),
            Value::DateTime(t) => J::String(format_datetime(*t)),
            Value::Uuid(u) => J::String(u.hyphenated().to_string()),
            Value::Json(j) => j.clone(),
        }
    }

    /// The loosely typed value of a JSON document (strings stay strings;
    /// objects and arrays become [`Value::Json`]). Coerce it before use.
    pub fn from_json(json: serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Boolean(b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => match n.as_f64() {
                    Some(f) => Value::Float(f),
                    None => Value::Json(J::Number(n)),
                },
            },
            J::String(s) => Value::String(s),
            other => Value::Json(other),
        }
    }

    /// Canonical text of the value: equal values of one attribute type give
    /// equal text. Used for partition parameters and row ids.
    pub fn canonical_text(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            // The JSON text of these, without building a JSON value.
            Value::Integer(i) => i.to_string(),
            Value::Decimal(d) => d.normalize().to_string(),
            Value::DateTime(t) => format_datetime(*t),
            Value::Uuid(u) => uuid_text(*u),
            other => match other.to_json() {
                serde_json::Value::String(s) => s,
                j => j.to_string(),
            },
        }
    }

    /// Compares two values of compatible types (numbers with numbers, text
    /// with text, …). `None` when either is null or the types do not compare.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        use Value as V;
        match (self, other) {
            (V::Null, _) | (_, V::Null) => None,
            (V::String(a), V::String(b)) => Some(a.cmp(b)),
            (V::Boolean(a), V::Boolean(b)) => Some(a.cmp(b)),
            (V::Uuid(a), V::Uuid(b)) => Some(a.cmp(b)),
            (V::Uuid(a), V::String(b)) => Uuid::parse_str(b).ok().map(|b| a.cmp(&b)),
            (V::String(a), V::Uuid(b)) => Uuid::parse_str(a).ok().map(|a| a.cmp(b)),
            (V::DateTime(a), V::DateTime(b)) => Some(a.cmp(b)),
            (V::DateTime(a), V::String(b)) => OffsetDateTime::parse(b, &Rfc3339).ok().map(|b| a.cmp(&b)),
            (V::String(a), V::DateTime(b)) => OffsetDateTime::parse(a, &Rfc3339).ok().map(|a| a.cmp(b)),
            (V::Integer(a), V::Integer(b)) => Some(a.cmp(b)),
            (V::Decimal(a), V::Decimal(b)) => Some(a.cmp(b)),
            (V::Integer(a), V::Decimal(b)) => Some(Decimal::from(*a).cmp(b)),
            (V::Decimal(a), V::Integer(b)) => Some(a.cmp(&Decimal::from(*b))),
            (V::Float(a), b) => b.as_f64().and_then(|b| a.partial_cmp(&b)),
            (a, V::Float(b)) => a.as_f64().and_then(|a| a.partial_cmp(b)),
            (V::Json(a), V::Json(b)) => (a == b).then_some(Ordering::Equal),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Integer(i) => Some(*i as f64),
            Value::Decimal(d) => d.to_f64(),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Approximate size of the value's JSON form in bytes (for byte limits).
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Null => 4,
            Value::String(s) => s.len() + 2,
            Value::Integer(_) | Value::Float(_) => 12,
            Value::Decimal(_) => 20,
            Value::Boolean(_) => 5,
            Value::DateTime(_) => 27,
            Value::Uuid(_) => 38,
            Value::Json(j) => j.to_string().len(),
        }
    }
}

/// Parses an RFC 3339 datetime, taking a fast path for the UTC form
/// [`format_datetime`] writes (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`, as
/// sources and stores usually hold them) and the general parser otherwise.
pub fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    parse_canonical_datetime(s).or_else(|| OffsetDateTime::parse(s, &Rfc3339).ok())
}

/// The fast path of [`parse_datetime`]: `None` for anything that is not
/// `YYYY-MM-DDTHH:MM:SS[.1 to 9 digits]Z` denoting a valid time (leap
/// seconds included, which the general parser handles).
fn parse_canonical_datetime(s: &str) -> Option<OffsetDateTime> {
    fn num(b: &[u8]) -> Option<u32> {
        let mut n = 0u32;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u32::from(c - b'0');
        }
        Some(n)
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if *b.last()? != b'Z' {
        return None;
    }
    let year = i32::try_from(num(&b[0..4])?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(&b[5..7])?).ok()?).ok()?;
    let day = u8::try_from(num(&b[8..10])?).ok()?;
    let hour = u8::try_from(num(&b[11..13])?).ok()?;
    let minute = u8::try_from(num(&b[14..16])?).ok()?;
    let second = u8::try_from(num(&b[17..19])?).ok()?;
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if !digits.is_empty() && digits.len() <= 9 => {
            num(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let t = time::Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc())
}

/// RFC 3339 text of a datetime (UTC-normalised).
pub fn format_datetime(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::String(s) => serializer.serialize_str(s),
            Value::Integer(i) => serializer.serialize_i64(*i),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Boolean(b) => serializer.serialize_bool(*b),
            Value::Json(j) => j.serialize(serializer),
            other => serializer.serialize_str(&other.canonical_text()),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    /// The wire form, read as [`Value::from_json`] reads a JSON value, but
    /// without building one for scalars: a pulled page holds a million of
    /// them, and the detour allocated a `serde_json::Value` for each.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(WireVisitor)
    }
}

/// Reads the wire form of a [`Value`]; arrays and objects (and numbers
/// beyond `f64`, with serde_json's `arbitrary_precision`) go through
/// `serde_json::Value` and [`Value::from_json`].
struct WireVisitor;

impl<'de> serde::de::Visitor<'de> for WireVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> std::result::Result<Value, E> {
        Ok(Value::Boolean(b))
    }

    fn visit_i64<E: serde::de::Error>(self, i: i64) -> std::result::Result<Value, E> {
        Ok(Value::Integer(i))
    }

    fn visit_u64<E: serde::de::Error>(self, u: u64) -> std::result::Result<Value, E> {
        // As `from_json`: an integer beyond i64 is read as a float.
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Integer))
    }

    fn visit_f64<E: serde::de::Error>(self, f: f64) -> std::result::Result<Value, E> {
        Ok(Value::Float(f))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> std::result::Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> std::result::Result<Value, A::Error> {
        serde_json::Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
            .map(Value::from_json)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<Value, A::Error> {
        serde_json::Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            .map(Value::from_json)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}
impl From<Uuid> for Value {
    fn from(u: Uuid) -> Self {
        Value::Uuid(u)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<Decimal> for Value {
    fn from(d: Decimal) -> Self {
        Value::Decimal(d)
    }
}

/// The canonical text of a UUID: lower-case and hyphenated.
pub(crate) fn uuid_text(u: Uuid) -> String {
    let mut buf = Uuid::encode_buffer();
    u.hyphenated().encode_lower(&mut buf).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_reads_as_from_json_does() {
        for text in [
            "null",
            "true",
            "false",
            "0",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "1.5",
            "1.0",
            "-0.0",
            "1e300",
            r#""""#,
            r#""a \"quoted\" line\nwith \u00e9""#,
            "[]",
            r#"[1, "a", null, {"b": [2.5]}]"#,
            r#"{"k": {"nested": true}, "n": 18446744073709551615}"#,
        ] {
            let direct: Value = serde_json::from_str(text).unwrap();
            let detour = Value::from_json(serde_json::from_str(text).unwrap());
            assert_eq!(format!("{direct:?}"), format!("{detour:?}"), "{text}");
        }
        // Inside a row of a page, as the client reads them.
        let rows: Vec<Vec<Value>> =
            serde_json::from_str(r#"[[1, "x", null], [2.5, {"a": 1}, false]]"#).unwrap();
        assert_eq!(rows[0], vec![Value::Integer(1), Value::from("x"), Value::Null]);
        assert_eq!(rows[1][2], Value::Boolean(false));
        assert!(serde_json::from_str::<Value>("nul").is_err());
    }

    #[test]
    fn fast_datetime_path_matches_rfc3339() {
        for s in [
            "2024-01-02T03:04:05Z",
            "2024-01-02T03:04:05.5Z",
            "1999-12-31T23:59:59.123456789Z",
            "2024-02-29T00:00:00Z",
        ] {
            assert_eq!(parse_datetime(s), OffsetDateTime::parse(s, &Rfc3339).ok(), "{s}");
            assert!(parse_canonical_datetime(s).is_some(), "{s} takes the fast path");
        }
        for s in ["2024-01-02T03:04:05+01:00", "2024-01-02t03:04:05z", "1990-12-31T23:59:60Z"] {
            assert_eq!(parse_datetime(s), OffsetDateTime::parse(s, &Rfc3339).ok(), "{s}");
        }
        for s in ["2024-13-02T03:04:05Z", "2023-02-29T00:00:00Z", "2024-01-02T03:04:05.Z", "yesterday"] {
            assert!(parse_datetime(s).is_none(), "{s}");
        }
    }

    #[test]
    fn canonical_text_is_the_json_text() {
        let values = [
            Value::Integer(-42),
            Value::Decimal("12.340".parse().unwrap()),
            Value::DateTime(parse_datetime("2024-01-02T03:04:05.25+02:00").unwrap()),
            Value::Uuid(Uuid::new_v4()),
            Value::Boolean(true),
            Value::Float(0.5),
        ];
        for v in values {
            let json = match v.to_json() {
                serde_json::Value::String(s) => s,
                j => j.to_string(),
            };
            assert_eq!(v.canonical_text(), json, "{v:?}");
        }
    }

    #[test]
    fn coerces_wire_strings() {
        let u = Uuid::new_v4();
        assert_eq!(Value::from(u.to_string()).coerce(&AttributeType::Uuid).unwrap(), Value::Uuid(u));
        let d = Value::from("12.50").coerce(&AttributeType::Decimal).unwrap();
        assert_eq!(d.canonical_text(), "12.5");
        let t = Value::from("2024-01-02T03:04:05+01:00").coerce(&AttributeType::DateTime).unwrap();
        assert_eq!(t.canonical_text(), "2024-01-02T02:04:05Z");
        assert_eq!(Value::Integer(3).coerce(&AttributeType::Float).unwrap(), Value::Float(3.0));
    }

    #[test]
    fn rejects_ill_typed_values() {
        assert!(Value::from("x").coerce(&AttributeType::Integer).is_err());
        assert!(Value::Integer(1).coerce(&AttributeType::Boolean).is_err());
        assert!(Value::from("nope").coerce(&AttributeType::Uuid).is_err());
        assert!(Value::from("yesterday").coerce(&AttributeType::DateTime).is_err());
        assert!(Value::Float(1.5).coerce(&AttributeType::Integer).is_err());
        assert!(Value::Boolean(true).coerce(&AttributeType::String).is_err());
    }

    #[test]
    fn wire_round_trip() {
        let vals = vec![
            (Value::Null, AttributeType::String),
            (Value::from("a\"b"), AttributeType::String),
            (Value::Integer(-7), AttributeType::Integer),
            (Value::Decimal("1.25".parse().unwrap()), AttributeType::Decimal),
            (Value::Float(0.5), AttributeType::Float),
            (Value::Boolean(true), AttributeType::Boolean),
            (Value::Uuid(Uuid::new_v4()), AttributeType::Uuid),
            (Value::Json(serde_json::json!({"a": [1, 2]})), AttributeType::Json),
        ];
        for (v, ty) in vals {
            let text = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back.coerce(&ty).unwrap(), v, "{text}");
        }
    }

    #[test]
    fn compares_across_numeric_types() {
        assert_eq!(Value::Integer(2).compare(&Value::Float(2.5)), Some(Ordering::Less));
        assert_eq!(Value::Decimal("2.0".parse().unwrap()).compare(&Value::Integer(2)), Some(Ordering::Equal));
        assert_eq!(Value::Null.compare(&Value::Null), None);
        assert_eq!(Value::from("a").compare(&Value::Integer(1)), None);
    }
}
