//! [`column_value`] on rows that crossed the wire: result sets scripted in
//! `mssql-mock-tds`, read through this crate's pool exactly as the queue and
//! the store read theirs (an `sp_executesql` RPC via `Client::query`).
//!
//! The mock sends integer columns (`tinyint` … `bigint`, NULL included) and
//! character columns only; the other T-SQL types are covered by the
//! unit tests in `decode.rs` on rows built in memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mssql_mock_tds::{
    ColumnDefinition, ColumnValue, MockTdsServer, QueryResponse, Row as MockRow, SqlDataType,
};
use sync_core::{AttributeType, EntityName, Value};
use tiberius::Row;

use super::column_value;
use crate::config::SqlServerConfig;
use crate::error::DecodeProblem;
use crate::pool::Pool;

/// The scripted statement. The mock finds a scripted RPC by searching the
/// request for the upper-cased text, so it is upper case; and it must not
/// contain the mock's built-in `SELECT 1`.
const QUERY: &str = "SELECT TINY, SMALL, REGULAR, BIG, NAME, DOC FROM DECODE_CASES";

fn utf16(s: &str) -> Vec<Vec<u16>> {
    vec![s.encode_utf16().collect()]
}

/// Runs [`QUERY`] against a mock scripted with three rows and returns them.
async fn scripted_rows() -> Vec<Row> {
    let server = MockTdsServer::new("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().port();
    let columns = vec![
        ColumnDefinition::new("tiny", SqlDataType::TinyInt),
        ColumnDefinition::new("small", SqlDataType::SmallInt),
        ColumnDefinition::new("regular", SqlDataType::Int),
        ColumnDefinition::new("big", SqlDataType::BigInt),
        ColumnDefinition::new("name", SqlDataType::NVarChar),
        ColumnDefinition::new("doc", SqlDataType::NVarCharMax),
    ];
    let rows = vec![
        MockRow::new(vec![
            ColumnValue::TinyInt(255),
            ColumnValue::SmallInt(i16::MIN),
            ColumnValue::Int(i32::MIN),
            ColumnValue::BigInt(i64::MAX),
            ColumnValue::NVarChar("Contoso ]; -- ü".into()),
            ColumnValue::NVarCharMax(utf16(r#"{"tags":["a",null],"n":1.5}"#)),
        ]),
        MockRow::new(vec![
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::NVarChar(String::new()),
            ColumnValue::NVarCharMaxNull,
        ]),
        MockRow::new(vec![
            ColumnValue::TinyInt(1),
            ColumnValue::SmallInt(0),
            ColumnValue::Int(2),
            ColumnValue::BigInt(-1),
            ColumnValue::NVarChar("not-a-uuid".into()),
            ColumnValue::NVarCharMax(utf16("{not json")),
        ]),
    ];
    server.query_registry().lock().await.register(QUERY, QueryResponse::new(columns, rows));
    let (_stop, stop) = tokio::sync::oneshot::channel::<()>();
    let mock = tokio::spawn(server.run_with_shutdown(stop));

    let config = SqlServerConfig::from_ado(format!(
        "server=tcp:127.0.0.1,{port};user=sync;password=secret;encrypt=DANGER_PLAINTEXT"
    ));
    let pool = Pool::new(config.tds_config().unwrap(), 1, Duration::from_secs(5));
    let mut conn = pool.get().await.unwrap();
    let rows = conn
        .run(async |c| {
            let sets = c.query(QUERY, &[]).await?.into_results().await?;
            Ok(sets.into_iter().flatten().collect::<Vec<_>>())
        })
        .await
        .unwrap();
    mock.abort();
    rows
}

fn uuid_type() -> AttributeType {
    AttributeType::Uuid
}

#[tokio::test]
async fn integers_text_json_and_nulls_decode_from_the_wire() {
    let rows = scripted_rows().await;
    assert_eq!(rows.len(), 3);
    let get = |row: usize, col: usize, ty: &AttributeType| column_value(&rows[row], col, ty).unwrap();
    let int = AttributeType::Integer;

    // Every integer width reads as an `integer`, exactly.
    assert_eq!(get(0, 0, &int), Value::Integer(255));
    assert_eq!(get(0, 1, &int), Value::Integer(i64::from(i16::MIN)));
    assert_eq!(get(0, 2, &int), Value::Integer(i64::from(i32::MIN)));
    assert_eq!(get(0, 3, &int), Value::Integer(i64::MAX));
    assert_eq!(get(0, 4, &AttributeType::String), Value::String("Contoso ]; -- ü".into()));
    assert_eq!(
        get(0, 5, &AttributeType::Json),
        Value::Json(serde_json::json!({"tags": ["a", null], "n": 1.5}))
    );
    // Integers widen into decimal and float attributes.
    assert_eq!(get(0, 2, &AttributeType::Decimal), Value::Decimal(i32::MIN.into()));
    assert_eq!(get(0, 0, &AttributeType::Float), Value::Float(255.0));

    // NULL of every wire type is Null, whatever the attribute type.
    let lookup = AttributeType::Lookup { target: EntityName::new("account").unwrap() };
    for col in [0, 1, 2, 3, 5] {
        for ty in [&int, &AttributeType::Boolean, &lookup, &AttributeType::DateTime, &AttributeType::Json] {
            assert_eq!(get(1, col, ty), Value::Null, "column {col} as {}", ty.name());
        }
    }
    assert_eq!(get(1, 4, &AttributeType::String), Value::String(String::new()), "empty is not NULL");

    // Integer 0/1 reads as a boolean, from any width.
    assert_eq!(get(2, 0, &AttributeType::Boolean), Value::Boolean(true));
    assert_eq!(get(2, 1, &AttributeType::Boolean), Value::Boolean(false));
    assert_eq!(get(2, 3, &int), Value::Integer(-1));
}

#[tokio::test]
async fn mismatches_from_the_wire_are_typed_errors_naming_the_column() {
    let rows = scripted_rows().await;
    let problem = |row: usize, col: usize, ty: &AttributeType, name: &str| {
        let e = column_value(&rows[row], col, ty).unwrap_err();
        assert_eq!((e.column.as_str(), e.index), (name, col));
        e.problem
    };

    let p = problem(0, 2, &uuid_type(), "regular");
    assert_eq!(
        p,
        DecodeProblem::TypeMismatch { expected: "uuid", sql_type: "uniqueidentifier", found: "int" }
    );
    let p = problem(0, 0, &AttributeType::DateTime, "tiny");
    assert!(matches!(p, DecodeProblem::TypeMismatch { found: "tinyint", .. }), "{p}");
    let p = problem(0, 3, &AttributeType::String, "big");
    assert!(matches!(p, DecodeProblem::TypeMismatch { found: "bigint", .. }), "{p}");
    let p = problem(0, 4, &AttributeType::Integer, "name");
    assert!(matches!(p, DecodeProblem::TypeMismatch { expected: "integer", sql_type: "bigint", .. }), "{p}");

    let p = problem(2, 2, &AttributeType::Boolean, "regular");
    assert!(matches!(&p, DecodeProblem::BadValue { expected: "boolean", .. }), "{p}");
    let p = problem(2, 4, &uuid_type(), "name");
    assert!(matches!(&p, DecodeProblem::BadValue { expected: "uuid", .. }), "{p}");
    let p = problem(2, 5, &AttributeType::Json, "doc");
    assert!(matches!(&p, DecodeProblem::BadValue { expected: "json", .. }), "{p}");

    let e = column_value(&rows[0], 6, &AttributeType::Integer).unwrap_err();
    assert_eq!(e.problem, DecodeProblem::NoSuchColumn);
    // Mapped for a sync-core caller: Internal, naming column and problem.
    let e = sync_core::Error::from(crate::error::MssqlError::from(
        column_value(&rows[0], 2, &uuid_type()).unwrap_err(),
    ));
    assert_eq!(e.kind(), sync_core::ErrorKind::Internal);
    assert!(e.to_string().contains("column 'regular'"), "{e}");
}
