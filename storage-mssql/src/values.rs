//! Values in and out of SQL Server: every attribute value is bound as a
//! typed parameter ([`Param`]) and read back from its typed column
//! ([`column_value`]).
//!
//! Storage precision: `decimal(38,10)` keeps 28 integer and 10 fractional
//! digits (Dataverse's widest decimal), `datetimeoffset(7)` keeps 100 ns and
//! whole-minute offsets. [`normalize_row`] brings a row to exactly what the
//! column will hold *before* it is compared or staged, so a value with more
//! digits is rounded once (and an identical re-ingested row is seen as
//! unchanged) instead of differing from its stored copy forever.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rust_decimal::Decimal;
use sync_core::{AttributeType, EntityMetadata, Error, Row, Seq, Value};
use tiberius::numeric::Numeric;
use tiberius::{ColumnData, ToSql};
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

use crate::error::{MssqlError, R};

/// Fractional digits of the `decimal(38,10)` columns.
pub(crate) const DECIMAL_SCALE: u32 = 10;

/// One bound parameter, typed so that a null still has its column's type.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Param {
    /// `nvarchar`.
    Str(Option<String>),
    /// `bigint`.
    I64(Option<i64>),
    /// `int`.
    I32(Option<i32>),
    /// `float`.
    F64(Option<f64>),
    /// `bit`.
    Bit(Option<bool>),
    /// `uniqueidentifier`.
    Guid(Option<Uuid>),
    /// `decimal(p,10)`.
    Num(Option<Numeric>),
    /// `datetimeoffset(7)`.
    Dto(Option<OffsetDateTime>),
}

impl ToSql for Param {
    fn to_sql(&self) -> ColumnData<'_> {
        match self {
            Param::Str(s) => ColumnData::String(s.as_deref().map(Cow::Borrowed)),
            Param::I64(v) => ColumnData::I64(*v),
            Param::I32(v) => ColumnData::I32(*v),
            Param::F64(v) => ColumnData::F64(*v),
            Param::Bit(v) => ColumnData::Bit(*v),
            Param::Guid(v) => ColumnData::Guid(*v),
            Param::Num(v) => ColumnData::Numeric(*v),
            Param::Dto(v) => v.to_sql(),
        }
    }
}

impl Param {
    /// A text parameter.
    pub(crate) fn text(s: impl Into<String>) -> Param {
        Param::Str(Some(s.into()))
    }

    /// A seq as `bigint`. Seqs never exceed `i64::MAX` in practice; a larger
    /// one is refused rather than wrapped.
    pub(crate) fn seq(s: Seq) -> R<Param> {
        Ok(Param::I64(Some(seq_to_i64(s)?)))
    }
}

/// A seq as `bigint`.
pub(crate) fn seq_to_i64(s: Seq) -> R<i64> {
    i64::try_from(s.0).map_err(|_| MssqlError::Decode(format!("seq {} exceeds bigint", s.0)))
}

/// A stored `bigint` as a seq.
pub(crate) fn seq_from_i64(v: i64) -> R<Seq> {
    u64::try_from(v).map(Seq).map_err(|_| MssqlError::Decode(format!("negative seq {v}")))
}

/// The typed null of an attribute type.
fn null_of(ty: &AttributeType) -> Param {
    match ty {
        AttributeType::String | AttributeType::Json => Param::Str(None),
        AttributeType::Integer => Param::I64(None),
        AttributeType::Decimal => Param::Num(None),
        AttributeType::Float => Param::F64(None),
        AttributeType::Boolean => Param::Bit(None),
        AttributeType::DateTime => Param::Dto(None),
        AttributeType::Uuid | AttributeType::Lookup { .. } => Param::Guid(None),
    }
}

/// The largest decimal magnitude `decimal(38,10)` holds, exclusive: 10^28.
fn decimal_limit() -> Decimal {
    // 10^28 fits rust_decimal's 96-bit mantissa (max ≈ 7.9 × 10^28).
    Decimal::from_i128_with_scale(10_000_000_000_000_000_000_000_000_000, 0)
}

/// Rounds a decimal to the column's scale; `InvalidInput` when it has more
/// than 28 integer digits.
pub(crate) fn fit_decimal(d: Decimal) -> sync_core::Result<Decimal> {
    if d.abs() >= decimal_limit() {
        return Err(Error::invalid(format!(
            "decimal {d} has more than 28 integer digits, the most a decimal(38,10) column holds"
        )));
    }
    Ok(d.round_dp(DECIMAL_SCALE).normalize())
}

/// Brings a datetime to what `datetimeoffset(7)` holds: 100 ns ticks, a
/// whole-minute offset (others are kept as UTC), years 1 to 9999.
pub(crate) fn fit_datetime(t: OffsetDateTime) -> sync_core::Result<OffsetDateTime> {
    // The UTC instant must lie in the years 1 to 9999, whatever the offset.
    let utc = t.to_offset(UtcOffset::UTC);
    if !(1..=9999).contains(&utc.year()) || !(1..=9999).contains(&t.year()) {
        return Err(Error::invalid(format!(
            "datetime {t} is outside the years 1 to 9999 that datetimeoffset holds"
        )));
    }
    let t = if t.offset().seconds_past_minute() != 0 { utc } else { t };
    let ns = t.nanosecond();
    t.replace_nanosecond(ns - ns % 100)
        .map_err(|e| Error::internal(format!("truncating datetime {t} to 100 ns: {e}")))
}

/// A value as it will read back from its column (see the module docs).
pub(crate) fn normalize(value: Value) -> sync_core::Result<Value> {
    Ok(match value {
        Value::Decimal(d) => Value::Decimal(fit_decimal(d)?),
        Value::DateTime(t) => Value::DateTime(fit_datetime(t)?),
        other => other,
    })
}

/// Every value of a checked row as it will read back (see [`normalize`]).
pub(crate) fn normalize_row(row: Row) -> sync_core::Result<Row> {
    let mut values = BTreeMap::new();
    for (k, v) in row.values {
        values.insert(k, normalize(v)?);
    }
    Ok(Row { id: row.id, values })
}

/// The parameter binding `value` into a column of type `ty`. The value must
/// already be coerced to `ty` (as [`EntityMetadata::check_row`] does).
pub(crate) fn encode(value: &Value, ty: &AttributeType) -> R<Param> {
    let mismatch =
        || MssqlError::Decode(format!("a {} value cannot be stored as {}", value.describe(), ty.name()));
    Ok(match (ty, value) {
        (_, Value::Null) => null_of(ty),
        (AttributeType::String, Value::String(s)) => Param::Str(Some(s.clone())),
        (AttributeType::Json, Value::Json(j)) => Param::Str(Some(j.to_string())),
        (AttributeType::Integer, Value::Integer(i)) => Param::I64(Some(*i)),
        (AttributeType::Float, Value::Float(f)) => Param::F64(Some(*f)),
        (AttributeType::Boolean, Value::Boolean(b)) => Param::Bit(Some(*b)),
        (AttributeType::Uuid | AttributeType::Lookup { .. }, Value::Uuid(u)) => Param::Guid(Some(*u)),
        (AttributeType::DateTime, Value::DateTime(t)) => Param::Dto(Some(fit_datetime(*t)?)),
        (AttributeType::Decimal, Value::Decimal(d)) => {
            let d = fit_decimal(*d)?;
            // Scale exactly 10, so that every value of a multi-row statement
            // has one type; |d| < 10^28 keeps the mantissa below 10^38.
            let shift = DECIMAL_SCALE.saturating_sub(d.scale());
            let mantissa = d
                .mantissa()
                .checked_mul(10i128.pow(shift))
                .ok_or_else(|| MssqlError::Decode(format!("decimal {d} overflows decimal(38,10)")))?;
            Param::Num(Some(Numeric::new_with_scale(mantissa, DECIMAL_SCALE as u8)))
        }
        _ => return Err(mismatch()),
    })
}

/// The parameters of a row's attributes, in metadata order.
pub(crate) fn encode_row(meta: &EntityMetadata, row: &Row) -> R<Vec<Param>> {
    meta.attributes.iter().map(|a| encode(row.values.get(&a.name).unwrap_or(&Value::Null), &a.ty)).collect()
}

/// The value of column `idx` of `row`, stored as type `ty`: the store's
/// read path, one decoder with the queue's ([`crate::decode`]).
pub(crate) fn column_value(row: &tiberius::Row, idx: usize, ty: &AttributeType) -> R<Value> {
    Ok(crate::decode::column_value(row, idx, ty)?)
}

/// A non-null `bigint` column.
pub(crate) fn get_i64(row: &tiberius::Row, idx: usize, what: &str) -> R<i64> {
    row.try_get::<i64, _>(idx)?.ok_or_else(|| MssqlError::Decode(format!("{what} is null")))
}

/// A non-null text column.
pub(crate) fn get_str<'a>(row: &'a tiberius::Row, idx: usize, what: &str) -> R<&'a str> {
    row.try_get::<&str, _>(idx)?.ok_or_else(|| MssqlError::Decode(format!("{what} is null")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::EntityName;

    #[test]
    fn every_type_binds_with_its_column_type_even_when_null() {
        let lookup = AttributeType::Lookup { target: EntityName::new("contact").unwrap() };
        let cases = [
            (AttributeType::String, Value::from("x"), "nvarchar(4000)"),
            (AttributeType::Json, Value::Json(serde_json::json!({"a": 1})), "nvarchar(4000)"),
            (AttributeType::Integer, Value::Integer(7), "bigint"),
            (AttributeType::Float, Value::Float(1.5), "float(53)"),
            (AttributeType::Boolean, Value::Boolean(true), "bit"),
            (AttributeType::Uuid, Value::Uuid(Uuid::from_u128(1)), "uniqueidentifier"),
            (lookup.clone(), Value::Uuid(Uuid::from_u128(2)), "uniqueidentifier"),
            (AttributeType::DateTime, Value::DateTime(OffsetDateTime::UNIX_EPOCH), "datetimeoffset"),
        ];
        for (ty, v, _) in &cases {
            let p = encode(v, ty).unwrap();
            let n = encode(&Value::Null, ty).unwrap();
            assert_eq!(std::mem::discriminant(&p), std::mem::discriminant(&n), "{ty:?}");
        }
        assert_eq!(encode(&Value::from("x"), &AttributeType::String).unwrap().to_sql(), "x".to_sql());
        assert_eq!(
            encode(&Value::Json(serde_json::json!({"a": 1})), &AttributeType::Json).unwrap(),
            Param::text(r#"{"a":1}"#)
        );
        assert!(encode(&Value::Integer(1), &AttributeType::String).is_err(), "uncoerced values are refused");
    }

    #[test]
    fn decimals_bind_at_scale_ten_and_read_back_normalized() {
        let d: Decimal = "12.50".parse().unwrap();
        let p = encode(&Value::Decimal(d), &AttributeType::Decimal).unwrap();
        let Param::Num(Some(n)) = p else { panic!("{p:?}") };
        assert_eq!((n.value(), n.scale()), (125_000_000_000, 10));
        assert_eq!(crate::decode::decimal_of(n).unwrap(), "12.5".parse::<Decimal>().unwrap());
        let big: Decimal = "9999999999999999999999999999".parse().unwrap();
        let Param::Num(Some(n)) = encode(&Value::Decimal(big), &AttributeType::Decimal).unwrap() else {
            panic!()
        };
        assert_eq!(n.precision(), 38);
        assert_eq!(crate::decode::decimal_of(n).unwrap(), big);
        let neg: Decimal = "-0.00000000015".parse().unwrap();
        assert_eq!(fit_decimal(neg).unwrap(), "-0.0000000002".parse::<Decimal>().unwrap());
        let too_big = Decimal::from_i128_with_scale(10_i128.pow(28), 0);
        assert!(fit_decimal(too_big).is_err());
        assert_eq!(crate::decode::decimal_of(Numeric::new_with_scale(0, 10)).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn datetimes_fit_datetimeoffset() {
        let t = time::macros::datetime!(2024-05-01 10:00:00.123456789 +02:00);
        let fitted = fit_datetime(t).unwrap();
        assert_eq!(fitted.nanosecond(), 123_456_700);
        assert_eq!(fitted.offset(), t.offset());
        let odd = time::macros::datetime!(2024-05-01 10:00:00 +02:00:30);
        assert_eq!(fit_datetime(odd).unwrap().offset(), UtcOffset::UTC);
        assert_eq!(fit_datetime(odd).unwrap(), odd);
        let ancient = time::macros::datetime!(-0001-01-01 0:00 UTC);
        assert!(fit_datetime(ancient).is_err());
    }

    #[test]
    fn seqs_stay_in_bigint() {
        assert_eq!(seq_to_i64(Seq(5)).unwrap(), 5);
        assert!(seq_to_i64(Seq(u64::MAX)).is_err());
        assert!(seq_from_i64(-1).is_err());
    }
}
