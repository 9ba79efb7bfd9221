//! Decoding a staged column read from SQL Server into a [`Value`] of its
//! attribute type: the read side of the mapping [`sql::column_type`] defines.
//!
//! | attribute type   | T-SQL column (written by this crate) | also accepted when read        |
//! | ---------------- | ------------------------------------ | ------------------------------ |
//! | `string`         | `nvarchar(max)` (`nvarchar(450)` key) | any character type             |
//! | `integer`        | `bigint`                             | `tinyint`, `smallint`, `int`   |
//! | `decimal`        | `decimal(38,10)`                     | any `decimal`/`numeric`, integers |
//! | `float`          | `float`                              | `real`, integers               |
//! | `boolean`        | `bit`                                | integers holding 0 or 1        |
//! | `datetime`       | `datetimeoffset(7)`                  | `datetime2`, `datetime`, `smalldatetime` (read as UTC) |
//! | `uuid`, `lookup` | `uniqueidentifier`                   | character types holding a UUID |
//! | `json`           | `nvarchar(max)`                      | —                              |
//!
//! A SQL `NULL` of any type is [`Value::Null`]. Everything else is a typed
//! [`DecodeError`]; nothing here panics on what the server sends. The widened
//! reads are exact (no value changes) except integers read as floats, which
//! round like [`Value::coerce`] does: they serve columns created by hand or
//! by another tool with a narrower type.

use rust_decimal::Decimal;
use sync_core::{AttributeType, Value};
use tiberius::{ColumnData, FromSql, Row};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::error::{DecodeError, DecodeProblem};
use crate::sql;

/// The value of column `idx` of `row`, decoded as attribute type `ty`.
///
/// Errors: [`DecodeProblem::NoSuchColumn`] when the row is shorter,
/// [`DecodeProblem::TypeMismatch`] when the column's SQL type cannot hold
/// `ty` (see the module docs for what is accepted), and
/// [`DecodeProblem::BadValue`] when the type fits but the value does not
/// (a decimal beyond 28 digits, an integer other than 0/1 for a boolean,
/// text that is not a UUID or not JSON, a float that is not finite).
pub(crate) fn column_value(row: &Row, idx: usize, ty: &AttributeType) -> Result<Value, DecodeError> {
    let fail = |problem: DecodeProblem| DecodeError {
        column: row.columns().get(idx).map(|c| c.name().to_owned()).unwrap_or_default(),
        index: idx,
        problem,
    };
    let data = row.get_column_data(idx).map_err(|_| fail(DecodeProblem::NoSuchColumn))?;
    decode(data, ty).map_err(fail)
}

/// Decodes one cell; the caller adds the column's name and index.
fn decode(data: &ColumnData<'static>, ty: &AttributeType) -> Result<Value, DecodeProblem> {
    use AttributeType as T;
    use ColumnData as D;
    if is_null(data) {
        return Ok(Value::Null);
    }
    let expected = ty.name();
    let bad = |detail: String| DecodeProblem::BadValue { expected, detail };
    let value = match (ty, data) {
        (T::String, D::String(Some(s))) => Value::String(s.clone().into_owned()),

        (T::Integer, d) => match integer(d) {
            Some(i) => Value::Integer(i),
            None => return Err(mismatch(ty, d)),
        },

        (T::Decimal, D::Numeric(Some(n))) => Value::Decimal(decimal_of(*n).map_err(bad)?),
        (T::Decimal, d) => match integer(d) {
            Some(i) => Value::Decimal(Decimal::from(i)),
            None => return Err(mismatch(ty, d)),
        },

        (T::Float, d) => {
            let f = match d {
                D::F64(Some(f)) => *f,
                D::F32(Some(f)) => f64::from(*f),
                // Integers as floats round like `Value::coerce` does.
                d => match integer(d) {
                    Some(i) => i as f64,
                    None => return Err(mismatch(ty, d)),
                },
            };
            if !f.is_finite() {
                return Err(bad(format!("the non-finite float {f}")));
            }
            Value::Float(f)
        }

        (T::Boolean, D::Bit(Some(b))) => Value::Boolean(*b),
        (T::Boolean, d) => match integer(d) {
            Some(0) => Value::Boolean(false),
            Some(1) => Value::Boolean(true),
            Some(i) => return Err(bad(format!("the integer {i} (only 0 and 1 are booleans)"))),
            None => return Err(mismatch(ty, d)),
        },

        (T::DateTime, d @ D::DateTimeOffset(_)) => match OffsetDateTime::from_sql(d) {
            Ok(Some(t)) => Value::DateTime(t),
            Ok(None) => Value::Null,
            Err(e) => return Err(bad(format!("a datetimeoffset out of range ({e})"))),
        },
        (T::DateTime, d @ (D::DateTime2(_) | D::DateTime(_) | D::SmallDateTime(_))) => {
            match PrimitiveDateTime::from_sql(d) {
                // A date and time without an offset is read as UTC.
                Ok(Some(t)) => Value::DateTime(t.assume_utc()),
                Ok(None) => Value::Null,
                Err(e) => return Err(bad(format!("a {} out of range ({e})", sql_name(d)))),
            }
        }

        (T::Uuid | T::Lookup { .. }, D::Guid(Some(u))) => Value::Uuid(*u),
        (T::Uuid | T::Lookup { .. }, D::String(Some(s))) => Value::Uuid(
            uuid::Uuid::parse_str(s.trim())
                .map_err(|e| bad(format!("the text {:?}, not a UUID ({e})", clip(s))))?,
        ),

        (T::Json, D::String(Some(s))) => {
            Value::Json(serde_json::from_str(s).map_err(|e| bad(format!("text that is not JSON ({e})")))?)
        }

        (_, d) => return Err(mismatch(ty, d)),
    };
    Ok(value)
}

/// A `decimal`/`numeric` cell as a normalized [`Decimal`]. Trailing zeros of
/// the scale are dropped first, so a `decimal(38,10)` value whose padded
/// mantissa is wider than rust_decimal's 96 bits still reads when its
/// digits fit. Errors: a description of a value that does not fit.
pub(crate) fn decimal_of(n: tiberius::numeric::Numeric) -> Result<Decimal, String> {
    let mut value = n.value();
    let mut scale = u32::from(n.scale());
    while scale > 0 && value % 10 == 0 {
        value /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(value, scale)
        .map(|d| d.normalize())
        .map_err(|e| format!("the decimal {n} ({e})"))
}

/// An integer cell of any width, widened to `i64`.
fn integer(data: &ColumnData<'_>) -> Option<i64> {
    match data {
        ColumnData::U8(Some(v)) => Some(i64::from(*v)),
        ColumnData::I16(Some(v)) => Some(i64::from(*v)),
        ColumnData::I32(Some(v)) => Some(i64::from(*v)),
        ColumnData::I64(Some(v)) => Some(*v),
        _ => None,
    }
}

fn mismatch(ty: &AttributeType, data: &ColumnData<'_>) -> DecodeProblem {
    DecodeProblem::TypeMismatch {
        expected: ty.name(),
        sql_type: sql::column_type(ty, false),
        found: sql_name(data),
    }
}

/// The first characters of a text value, for an error message.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Whether the cell is SQL `NULL`.
fn is_null(data: &ColumnData<'_>) -> bool {
    use ColumnData as D;
    match data {
        D::U8(v) => v.is_none(),
        D::I16(v) => v.is_none(),
        D::I32(v) => v.is_none(),
        D::I64(v) => v.is_none(),
        D::F32(v) => v.is_none(),
        D::F64(v) => v.is_none(),
        D::Bit(v) => v.is_none(),
        D::String(v) => v.is_none(),
        D::Guid(v) => v.is_none(),
        D::Binary(v) => v.is_none(),
        D::Numeric(v) => v.is_none(),
        D::Xml(v) => v.is_none(),
        D::DateTime(v) => v.is_none(),
        D::SmallDateTime(v) => v.is_none(),
        D::Time(v) => v.is_none(),
        D::Date(v) => v.is_none(),
        D::DateTime2(v) => v.is_none(),
        D::DateTimeOffset(v) => v.is_none(),
    }
}

/// The T-SQL type family of a cell, for error messages.
fn sql_name(data: &ColumnData<'_>) -> &'static str {
    use ColumnData as D;
    match data {
        D::U8(_) => "tinyint",
        D::I16(_) => "smallint",
        D::I32(_) => "int",
        D::I64(_) => "bigint",
        D::F32(_) => "real",
        D::F64(_) => "float",
        D::Bit(_) => "bit",
        D::String(_) => "character (nvarchar/varchar)",
        D::Guid(_) => "uniqueidentifier",
        D::Binary(_) => "binary (varbinary/binary)",
        D::Numeric(_) => "decimal",
        D::Xml(_) => "xml",
        D::DateTime(_) => "datetime",
        D::SmallDateTime(_) => "smalldatetime",
        D::Time(_) => "time",
        D::Date(_) => "date",
        D::DateTime2(_) => "datetime2",
        D::DateTimeOffset(_) => "datetimeoffset",
    }
}

#[cfg(test)]
mod tds_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use sync_core::EntityName;
    use tiberius::ColumnType;
    use tiberius::numeric::Numeric;
    use time::macros::datetime;

    /// A one-column row holding `data`.
    fn row(data: ColumnData<'static>) -> Row {
        // The column type only labels the column; decoding looks at the data.
        Row::builder().column("c", ColumnType::Null, data).build()
    }

    fn ok(data: ColumnData<'static>, ty: &AttributeType) -> Value {
        column_value(&row(data), 0, ty).unwrap()
    }

    fn problem(data: ColumnData<'static>, ty: &AttributeType) -> DecodeProblem {
        let e = column_value(&row(data), 0, ty).unwrap_err();
        assert_eq!((e.column.as_str(), e.index), ("c", 0));
        e.problem
    }

    fn lookup() -> AttributeType {
        AttributeType::Lookup { target: EntityName::new("contact").unwrap() }
    }

    fn all_types() -> Vec<AttributeType> {
        use AttributeType as T;
        vec![T::String, T::Integer, T::Decimal, T::Float, T::Boolean, T::DateTime, T::Uuid, lookup(), T::Json]
    }

    #[test]
    fn each_type_decodes_from_the_column_type_sql_rs_creates() {
        use AttributeType as T;
        let u = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let t = datetime!(2026-11-26 09:15:00.1234567 +01:00);
        let cases: Vec<(AttributeType, ColumnData<'static>, Value)> = vec![
            (
                T::String,
                ColumnData::String(Some("Contoso ]; --".into())),
                Value::String("Contoso ]; --".into()),
            ),
            (T::Integer, ColumnData::I64(Some(i64::MIN)), Value::Integer(i64::MIN)),
            (
                T::Decimal,
                ColumnData::Numeric(Some(Numeric::new_with_scale(-12_345_000_000_000, 10))),
                Value::Decimal(Decimal::new(-12345, 1)),
            ),
            (T::Float, ColumnData::F64(Some(0.25)), Value::Float(0.25)),
            (T::Boolean, ColumnData::Bit(Some(true)), Value::Boolean(true)),
            (T::DateTime, t.into_sql_data(), Value::DateTime(t)),
            (T::Uuid, ColumnData::Guid(Some(u)), Value::Uuid(u)),
            (lookup(), ColumnData::Guid(Some(u)), Value::Uuid(u)),
            (
                T::Json,
                ColumnData::String(Some(r#"{"a":[1,null]}"#.into())),
                Value::Json(serde_json::json!({"a":[1,null]})),
            ),
        ];
        assert_eq!(cases.len(), all_types().len(), "every attribute type has a case");
        for (ty, data, want) in cases {
            assert_eq!(ok(data, &ty), want, "{}", ty.name());
        }
    }

    /// A date/time value as tiberius sends it to the server.
    trait IntoSqlData {
        fn into_sql_data(self) -> ColumnData<'static>;
    }
    impl<T: tiberius::ToSql> IntoSqlData for T {
        fn into_sql_data(self) -> ColumnData<'static> {
            // Date/time cells borrow nothing: rebuild them as 'static.
            match self.to_sql() {
                ColumnData::DateTimeOffset(v) => ColumnData::DateTimeOffset(v),
                ColumnData::DateTime2(v) => ColumnData::DateTime2(v),
                other => panic!("not a date/time cell: {other:?}"),
            }
        }
    }

    #[test]
    fn null_of_any_sql_type_is_null_for_every_attribute_type() {
        let nulls = [
            ColumnData::U8(None),
            ColumnData::I16(None),
            ColumnData::I32(None),
            ColumnData::I64(None),
            ColumnData::F64(None),
            ColumnData::Bit(None),
            ColumnData::String(None),
            ColumnData::Guid(None),
            ColumnData::Binary(None),
            ColumnData::Numeric(None),
            ColumnData::DateTimeOffset(None),
        ];
        for ty in all_types() {
            for n in &nulls {
                assert_eq!(ok(n.clone(), &ty), Value::Null, "{} from {n:?}", ty.name());
            }
        }
    }

    #[test]
    fn narrower_integer_columns_widen_exactly() {
        let ty = AttributeType::Integer;
        assert_eq!(ok(ColumnData::U8(Some(255)), &ty), Value::Integer(255));
        assert_eq!(ok(ColumnData::I16(Some(i16::MIN)), &ty), Value::Integer(-32768));
        assert_eq!(ok(ColumnData::I32(Some(i32::MAX)), &ty), Value::Integer(2_147_483_647));
        assert_eq!(ok(ColumnData::I32(Some(7)), &AttributeType::Decimal), Value::Decimal(Decimal::from(7)));
        assert_eq!(ok(ColumnData::I16(Some(-3)), &AttributeType::Float), Value::Float(-3.0));
        assert_eq!(ok(ColumnData::F32(Some(1.5)), &AttributeType::Float), Value::Float(1.5));
        assert_eq!(ok(ColumnData::U8(Some(0)), &AttributeType::Boolean), Value::Boolean(false));
        assert_eq!(ok(ColumnData::I64(Some(1)), &AttributeType::Boolean), Value::Boolean(true));
    }

    #[test]
    fn datetimes_without_an_offset_are_read_as_utc() {
        let t = datetime!(2026-01-02 03:04:05.5);
        let data = t.into_sql_data();
        assert_eq!(ok(data, &AttributeType::DateTime), Value::DateTime(t.assume_utc()));
    }

    #[test]
    fn uuid_text_decodes_and_bad_text_is_a_bad_value() {
        let u = uuid::Uuid::from_u128(42);
        let text = ColumnData::String(Some(u.hyphenated().to_string().into()));
        assert_eq!(ok(text, &lookup()), Value::Uuid(u));
        let p = problem(ColumnData::String(Some("not-a-uuid".into())), &AttributeType::Uuid);
        assert!(
            matches!(&p, DecodeProblem::BadValue { expected: "uuid", detail } if detail.contains("not-a-uuid")),
            "{p}"
        );
    }

    #[test]
    fn type_mismatches_are_typed_errors_naming_both_types() {
        let p = problem(ColumnData::String(Some("12".into())), &AttributeType::Integer);
        assert_eq!(
            p,
            DecodeProblem::TypeMismatch {
                expected: "integer",
                sql_type: "bigint",
                found: "character (nvarchar/varchar)"
            }
        );
        let p = problem(ColumnData::I32(Some(1)), &AttributeType::Uuid);
        assert!(matches!(p, DecodeProblem::TypeMismatch { found: "int", sql_type: "uniqueidentifier", .. }));
        let p = problem(ColumnData::I64(Some(1)), &AttributeType::String);
        assert!(matches!(p, DecodeProblem::TypeMismatch { found: "bigint", sql_type: "nvarchar(max)", .. }));
        let p = problem(ColumnData::Binary(Some(vec![1u8].into())), &AttributeType::Json);
        assert!(matches!(p, DecodeProblem::TypeMismatch { expected: "json", .. }));
        let p = problem(ColumnData::Bit(Some(true)), &AttributeType::DateTime);
        assert!(matches!(p, DecodeProblem::TypeMismatch { expected: "datetime", found: "bit", .. }));
        let p = problem(ColumnData::F64(Some(1.0)), &AttributeType::Integer);
        assert!(matches!(p, DecodeProblem::TypeMismatch { found: "float", .. }));
    }

    #[test]
    fn values_the_attribute_type_cannot_hold_are_bad_values() {
        let p = problem(ColumnData::I32(Some(2)), &AttributeType::Boolean);
        assert!(matches!(&p, DecodeProblem::BadValue { expected: "boolean", .. }), "{p}");
        let p = problem(ColumnData::String(Some("{not json".into())), &AttributeType::Json);
        assert!(matches!(&p, DecodeProblem::BadValue { expected: "json", .. }), "{p}");
        // decimal(38,0) holds more digits than rust_decimal's 96 bits.
        let huge = Numeric::new_with_scale(10i128.pow(37), 0);
        let p = problem(ColumnData::Numeric(Some(huge)), &AttributeType::Decimal);
        assert!(matches!(&p, DecodeProblem::BadValue { expected: "decimal", .. }), "{p}");
        let p = problem(ColumnData::F64(Some(f64::NAN)), &AttributeType::Float);
        assert!(matches!(&p, DecodeProblem::BadValue { expected: "float", .. }), "{p}");
    }

    #[test]
    fn a_missing_column_is_an_error_not_a_panic() {
        let e = column_value(&row(ColumnData::I32(Some(1))), 3, &AttributeType::Integer).unwrap_err();
        assert_eq!(e.problem, DecodeProblem::NoSuchColumn);
        assert_eq!((e.column.as_str(), e.index), ("", 3));
        let e = sync_core::Error::from(crate::error::MssqlError::from(e));
        assert_eq!(e.kind(), sync_core::ErrorKind::Internal);
        assert!(e.to_string().contains("index 3"), "{e}");
    }
}
