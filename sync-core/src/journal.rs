//! A typed text encoding of push outcomes, for the mutation journal a
//! staging store keeps ([`OrgStaging::record_mutation`](crate::OrgStaging::record_mutation)).
//!
//! A [`Value`]'s own serde form is the wire form, which does not say which
//! type a string holds; a journal entry must read back exactly as recorded
//! (a UUID stays a UUID, a float keeps every bit), so rows are stored with a
//! type tag per value. Stores that keep outcomes as text share this one
//! encoding, so a journal written by one reads back in another.
//!
//! ```
//! use sync_core::journal::{decode_outcome, encode_outcome};
//! use sync_core::protocol::MutationOutcome;
//! use sync_core::{ColumnName, Row, RowId, Seq, Value};
//!
//! let row = Row::new(
//!     RowId::new("r1").unwrap(),
//!     [(ColumnName::new("id").unwrap(), Value::Uuid(uuid::Uuid::nil()))],
//! );
//! let outcome = MutationOutcome::Applied { row: Some(row), version: Seq(7) };
//! let text = encode_outcome(&outcome).unwrap();
//! assert_eq!(decode_outcome(&text).unwrap(), outcome);
//! assert!(decode_outcome("{\"status\":\"applied\"").is_err());
//! ```

use serde::{Deserialize, Serialize};

use crate::protocol::MutationOutcome;
use crate::value::{format_datetime, parse_datetime};
use crate::{ColumnName, Error, Result, Row, RowId, Seq, Value};

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", content = "v", rename_all = "lowercase")]
enum Typed {
    Null,
    String(String),
    Integer(i64),
    Decimal(String),
    /// The IEEE bits, so every float reads back exactly.
    Float(u64),
    Boolean(bool),
    DateTime(String),
    Uuid(String),
    Json(serde_json::Value),
}

#[derive(Serialize, Deserialize)]
struct TypedRow {
    id: String,
    values: Vec<(String, Typed)>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Stored {
    Applied { row: Option<TypedRow>, version: u64 },
    Conflict { server_row: Option<TypedRow>, reason: String },
    Rejected { reason: String },
}

fn typed(v: &Value) -> Typed {
    match v {
        Value::Null => Typed::Null,
        Value::String(s) => Typed::String(s.clone()),
        Value::Integer(i) => Typed::Integer(*i),
        Value::Decimal(d) => Typed::Decimal(d.to_string()),
        Value::Float(f) => Typed::Float(f.to_bits()),
        Value::Boolean(b) => Typed::Boolean(*b),
        Value::DateTime(t) => Typed::DateTime(
            t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| format_datetime(*t)),
        ),
        Value::Uuid(u) => Typed::Uuid(u.to_string()),
        Value::Json(j) => Typed::Json(j.clone()),
    }
}

fn value(t: Typed) -> Result<Value> {
    let bad = |what: &str, s: &str| Error::internal(format!("journal {what} {s:?}"));
    Ok(match t {
        Typed::Null => Value::Null,
        Typed::String(s) => Value::String(s),
        Typed::Integer(i) => Value::Integer(i),
        Typed::Decimal(s) => Value::Decimal(s.parse().map_err(|_| bad("decimal", &s))?),
        Typed::Float(bits) => Value::Float(f64::from_bits(bits)),
        Typed::Boolean(b) => Value::Boolean(b),
        Typed::DateTime(s) => Value::DateTime(parse_datetime(&s).ok_or_else(|| bad("datetime", &s))?),
        Typed::Uuid(s) => Value::Uuid(uuid::Uuid::parse_str(&s).map_err(|_| bad("uuid", &s))?),
        Typed::Json(j) => Value::Json(j),
    })
}

fn typed_row(r: &Row) -> TypedRow {
    TypedRow {
        id: r.id.as_str().to_owned(),
        values: r.values.iter().map(|(k, v)| (k.as_str().to_owned(), typed(v))).collect(),
    }
}

fn row(r: TypedRow) -> Result<Row> {
    let corrupt = |e: Error| Error::internal(format!("journal row: {e}"));
    let mut values = std::collections::BTreeMap::new();
    for (k, v) in r.values {
        values.insert(ColumnName::new(k).map_err(corrupt)?, value(v)?);
    }
    Ok(Row { id: RowId::new(r.id).map_err(corrupt)?, values })
}

/// The outcome as text to store. Errors: `Internal` if it cannot be encoded.
pub fn encode_outcome(outcome: &MutationOutcome) -> Result<String> {
    let stored = match outcome {
        MutationOutcome::Applied { row, version } => {
            Stored::Applied { row: row.as_ref().map(typed_row), version: version.0 }
        }
        MutationOutcome::Conflict { server_row, reason } => {
            Stored::Conflict { server_row: server_row.as_ref().map(typed_row), reason: reason.clone() }
        }
        MutationOutcome::Rejected { reason } => Stored::Rejected { reason: reason.clone() },
    };
    serde_json::to_string(&stored).map_err(|e| Error::internal(format!("encoding an outcome: {e}")))
}

/// The outcome stored as `text` by [`encode_outcome`]. Errors: `Internal`
/// naming what is corrupt, for text this encoding did not write.
pub fn decode_outcome(text: &str) -> Result<MutationOutcome> {
    let stored: Stored =
        serde_json::from_str(text).map_err(|e| Error::internal(format!("journal outcome: {e}")))?;
    Ok(match stored {
        Stored::Applied { row: r, version } => {
            MutationOutcome::Applied { row: r.map(row).transpose()?, version: Seq(version) }
        }
        Stored::Conflict { server_row, reason } => {
            MutationOutcome::Conflict { server_row: server_row.map(row).transpose()?, reason }
        }
        Stored::Rejected { reason } => MutationOutcome::Rejected { reason },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_back_exactly() {
        let row = Row::new(
            RowId::new("r1").unwrap(),
            [
                (ColumnName::new("u").unwrap(), Value::Uuid(uuid::Uuid::new_v4())),
                (ColumnName::new("d").unwrap(), Value::Decimal("1.50".parse().unwrap())),
                (ColumnName::new("f").unwrap(), Value::Float(0.1 + 0.2)),
                (ColumnName::new("t").unwrap(), Value::from("2024-01-02T03:04:05.5+02:00")),
                (ColumnName::new("j").unwrap(), Value::Json(serde_json::json!({"a": [1, null]}))),
                (ColumnName::new("n").unwrap(), Value::Null),
                (ColumnName::new("b").unwrap(), Value::Boolean(true)),
                (ColumnName::new("i").unwrap(), Value::Integer(-3)),
            ],
        );
        let mut row = row;
        let t = row.values.get(&ColumnName::new("t").unwrap()).cloned().unwrap();
        row.values.insert(ColumnName::new("t").unwrap(), t.coerce(&crate::AttributeType::DateTime).unwrap());
        for outcome in [
            MutationOutcome::Applied { row: Some(row.clone()), version: Seq(7) },
            MutationOutcome::Applied { row: None, version: Seq(8) },
            MutationOutcome::Conflict { server_row: Some(row.clone()), reason: "changed".into() },
            MutationOutcome::Rejected { reason: "no".into() },
        ] {
            assert_eq!(decode_outcome(&encode_outcome(&outcome).unwrap()).unwrap(), outcome);
        }
    }
}
