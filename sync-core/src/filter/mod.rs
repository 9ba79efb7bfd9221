//! The filter language — a subset of OData `$filter` — and membership planning.
//!
//! ```text
//! statecode eq 0 and ownerid eq @user.id and (revenue gt 1000 or name ne null)
//! ```
//!
//! Operators `eq ne gt ge lt le and or not in`; literals for strings
//! (`'O''Brien'`), numbers, booleans, `null`, datetimes
//! (`2024-01-31T12:00:00Z`) and GUIDs; parameters `@user.id` and
//! `@user.<claim>` taken from the [`Principal`](crate::Principal).
//!
//! **Parameters** may appear only as `column eq @param` in the top-level
//! conjunction. That rule is what lets membership be computed when a row
//! changes rather than when a client asks: the row's value of `column` *is*
//! the parameter value of the partition it belongs to. Anything else is
//! rejected when the profile is saved ([`validate_profile`]).
//!
//! **Null semantics** are two-valued: `x eq null` holds when `x` is null,
//! `x ne null` when it is not; any other comparison with a null side is
//! false, `ne` is exactly `not eq`, and `not` negates.

mod ast;
mod parse;
mod planner;

use std::collections::BTreeMap;
use std::fmt;

pub use ast::{CmpOp, Expr, Literal, Operand};
pub use planner::{MembershipPlanner, principal_partitions, validate_profile};

use crate::error::{Error, Result};
use crate::ids::ColumnName;
use crate::profile::MAX_FILTER_LEN;
use crate::row::Row;
use crate::schema::{AttributeType, EntityMetadata};
use crate::value::Value;

/// A parsed filter. Its `Display` is canonical and parses back to an equal
/// filter.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    expr: Option<Expr>,
}

impl Filter {
    /// Parses filter text; empty (or blank) text is the filter that admits
    /// every row. Errors are `InvalidInput` with the character position.
    pub fn parse(text: &str) -> Result<Filter> {
        Ok(Filter { expr: Self::parse_spans(text)?.map(|p| p.expr) })
    }

    fn parse_spans(text: &str) -> Result<Option<parse::Parsed>> {
        if text.len() > MAX_FILTER_LEN {
            return Err(Error::limit("filter_length", MAX_FILTER_LEN as u64, text.len() as u64));
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        parse::parse(text).map(Some)
    }

    /// The expression, `None` for the filter that admits every row.
    pub fn expr(&self) -> Option<&Expr> {
        self.expr.as_ref()
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            Some(e) => write!(f, "{e}"),
            None => Ok(()),
        }
    }
}

/// A `column eq @param` term of a compiled filter.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamBinding {
    /// The column whose value is the parameter's.
    pub column: ColumnName,
    /// The column's type (the principal's value is coerced to it).
    pub ty: AttributeType,
    /// The parameter name without `@` (e.g. `user.id`).
    pub param: String,
}

/// A filter checked against an entity's schema: literals coerced to their
/// columns' types, parameter terms split off as [`ParamBinding`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledFilter {
    /// The parameter-free rest of the filter (`None` = always true).
    rest: Option<Expr>,
    params: Vec<ParamBinding>,
}

impl CompiledFilter {
    /// Parses and compiles `text` for `entity`. `InvalidInput` with a position
    /// for syntax errors, unknown columns, literals that do not fit their
    /// column's type, and parameters outside a top-level `column eq @param`.
    pub fn compile(text: &str, entity: &EntityMetadata) -> Result<CompiledFilter> {
        let Some(parsed) = Filter::parse_spans(text)? else {
            return Ok(CompiledFilter { rest: None, params: Vec::new() });
        };
        for span in &parsed.columns {
            if entity.attribute(&span.name).is_none() {
                return Err(Error::invalid_at(
                    format!("entity '{}' has no column '{}'", entity.name, span.name),
                    span.pos,
                ));
            }
        }
        for span in &parsed.params {
            if span.name != "user.id" && !span.name.starts_with("user.") {
                return Err(Error::invalid_at(
                    format!("unknown parameter '@{}'; parameters are @user.id and @user.<claim>", span.name),
                    span.pos,
                ));
            }
        }
        let mut conjuncts = Vec::new();
        split_and(parsed.expr, &mut conjuncts);
        let mut params = Vec::new();
        let mut rest: Option<Expr> = None;
        for c in conjuncts {
            if let Some((column, param)) = as_param_term(&c) {
                let attr = entity.attribute(&column).ok_or_else(|| {
                    Error::invalid(format!("entity '{}' has no column '{column}'", entity.name))
                })?;
                if matches!(attr.ty, AttributeType::Json | AttributeType::Float) {
                    return Err(Error::invalid(format!(
                        "column '{column}' has type {} and cannot be compared with a parameter",
                        attr.ty.name()
                    )));
                }
                params.push(ParamBinding { column: attr.name.clone(), ty: attr.ty.clone(), param });
                continue;
            }
            if let Some(p) = first_param(&c) {
                let pos = parsed.params.iter().find(|s| s.name == p).map(|s| s.pos);
                let message = format!(
                    "parameter '@{p}' may appear only as `column eq @{p}` in the top-level 'and' of the filter"
                );
                return Err(match pos {
                    Some(pos) => Error::invalid_at(message, pos),
                    None => Error::invalid(message),
                });
            }
            let c = coerce_literals(c, entity)?;
            rest = Some(match rest {
                None => c,
                Some(r) => Expr::And(Box::new(r), Box::new(c)),
            });
        }
        Ok(CompiledFilter { rest, params })
    }

    /// The parameter terms.
    pub fn params(&self) -> &[ParamBinding] {
        &self.params
    }

    /// Whether the parameter-free part admits `row`.
    pub fn matches_rest(&self, row: &Row) -> bool {
        self.rest.as_ref().is_none_or(|e| eval(e, row))
    }

    /// The parameter values under which `row` is admitted (parameter name →
    /// canonical text), or `None` when no principal's parameters admit it
    /// (the rest fails, a parameter column is null, or one parameter would
    /// need two values).
    pub fn row_params(&self, row: &Row) -> Option<BTreeMap<String, String>> {
        if !self.matches_rest(row) {
            return None;
        }
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for b in &self.params {
            let v = row.get(b.column.as_str()).filter(|v| !v.is_null())?;
            let text = v.canonical_text();
            match out.get(&b.param) {
                Some(prev) if *prev != text => return None,
                Some(_) => {}
                None => {
                    out.insert(b.param.clone(), text);
                }
            }
        }
        Some(out)
    }

    /// Whether `row` is admitted with the given parameter values (name →
    /// value, as a principal supplies them). A missing parameter admits nothing.
    pub fn matches(&self, row: &Row, params: &BTreeMap<String, Value>) -> bool {
        if !self.matches_rest(row) {
            return false;
        }
        self.params.iter().all(|b| {
            let Some(pv) = params.get(&b.param) else { return false };
            let Ok(pv) = pv.clone().coerce(&b.ty) else { return false };
            row.get(b.column.as_str()).is_some_and(|rv| {
                !rv.is_null() && !pv.is_null() && rv.canonical_text() == pv.canonical_text()
            })
        })
    }
}

fn split_and(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::And(a, b) => {
            split_and(*a, out);
            split_and(*b, out);
        }
        other => out.push(other),
    }
}

fn as_param_term(e: &Expr) -> Option<(String, String)> {
    match e {
        Expr::Compare { left: Operand::Column(c), op: CmpOp::Eq, right: Operand::Param(p) }
        | Expr::Compare { left: Operand::Param(p), op: CmpOp::Eq, right: Operand::Column(c) } => {
            Some((c.clone(), p.clone()))
        }
        _ => None,
    }
}

fn first_param(e: &Expr) -> Option<String> {
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => first_param(a).or_else(|| first_param(b)),
        Expr::Not(a) => first_param(a),
        Expr::Compare { left, right, .. } => [left, right].into_iter().find_map(|o| match o {
            Operand::Param(p) => Some(p.clone()),
            _ => None,
        }),
        Expr::In { operand: Operand::Param(p), .. } => Some(p.clone()),
        Expr::In { .. } => None,
    }
}

fn column_type<'a>(entity: &'a EntityMetadata, o: &Operand) -> Option<&'a AttributeType> {
    match o {
        Operand::Column(c) => entity.attribute(c).map(|a| &a.ty),
        _ => None,
    }
}

fn coerce_literal(l: Literal, ty: &AttributeType, entity: &EntityMetadata) -> Result<Literal> {
    let v = l.to_value().coerce(ty).map_err(|e| {
        Error::invalid(format!(
            "in a filter on entity '{}': literal does not fit its column: {e}",
            entity.name
        ))
    })?;
    Ok(match v {
        Value::Null => Literal::Null,
        Value::Boolean(b) => Literal::Bool(b),
        Value::Integer(i) => Literal::Int(i),
        Value::Decimal(d) => Literal::Decimal(d),
        Value::Float(f) => Literal::Float(f),
        Value::String(s) => Literal::String(s),
        Value::DateTime(t) => Literal::DateTime(t),
        Value::Uuid(u) => Literal::Guid(u),
        Value::Json(j) => Literal::String(j.to_string()),
    })
}

/// Coerces each literal compared with a column to that column's type, so
/// evaluation compares like with like (`'2024-01-01T00:00:00Z'` against a
/// datetime column, a GUID string against a lookup, …).
fn coerce_literals(e: Expr, entity: &EntityMetadata) -> Result<Expr> {
    Ok(match e {
        Expr::And(a, b) => {
            Expr::And(Box::new(coerce_literals(*a, entity)?), Box::new(coerce_literals(*b, entity)?))
        }
        Expr::Or(a, b) => {
            Expr::Or(Box::new(coerce_literals(*a, entity)?), Box::new(coerce_literals(*b, entity)?))
        }
        Expr::Not(a) => Expr::Not(Box::new(coerce_literals(*a, entity)?)),
        Expr::Compare { left, op, right } => {
            let (left, right) = match (column_type(entity, &left), column_type(entity, &right)) {
                (Some(ty), None) => match right {
                    Operand::Literal(l) if ty != &AttributeType::Json => {
                        (left, Operand::Literal(coerce_literal(l, ty, entity)?))
                    }
                    r => (left, r),
                },
                (None, Some(ty)) => match left {
                    Operand::Literal(l) if ty != &AttributeType::Json => {
                        (Operand::Literal(coerce_literal(l, ty, entity)?), right)
                    }
                    l => (l, right),
                },
                _ => (left, right),
            };
            Expr::Compare { left, op, right }
        }
        Expr::In { operand, values } => {
            let values = match column_type(entity, &operand) {
                Some(ty) if ty != &AttributeType::Json => {
                    values.into_iter().map(|l| coerce_literal(l, ty, entity)).collect::<Result<Vec<_>>>()?
                }
                _ => values,
            };
            Expr::In { operand, values }
        }
    })
}

/// An operand's value: borrowed from the row for a column (no copy of its
/// text per evaluated row).
fn operand_value<'r>(o: &Operand, row: &'r Row) -> std::borrow::Cow<'r, Value> {
    use std::borrow::Cow;
    match o {
        Operand::Column(c) => row.get(c).map_or(Cow::Owned(Value::Null), Cow::Borrowed),
        Operand::Literal(l) => Cow::Owned(l.to_value()),
        // Parameters never reach evaluation: compile splits them off.
        Operand::Param(_) => Cow::Owned(Value::Null),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.is_null(), b.is_null()) {
        (true, true) => true,
        (false, false) => a.compare(b) == Some(std::cmp::Ordering::Equal),
        _ => false,
    }
}

/// Evaluates a parameter-free expression against a row (two-valued logic).
pub fn eval(e: &Expr, row: &Row) -> bool {
    use std::cmp::Ordering::{Greater, Less};
    match e {
        Expr::And(a, b) => eval(a, row) && eval(b, row),
        Expr::Or(a, b) => eval(a, row) || eval(b, row),
        Expr::Not(a) => !eval(a, row),
        Expr::Compare { left, op, right } => {
            let (l, r) = (operand_value(left, row), operand_value(right, row));
            match op {
                CmpOp::Eq => equal(&l, &r),
                CmpOp::Ne => !equal(&l, &r),
                CmpOp::Gt => l.compare(&r) == Some(Greater),
                CmpOp::Ge => matches!(l.compare(&r), Some(o) if o != Less),
                CmpOp::Lt => l.compare(&r) == Some(Less),
                CmpOp::Le => matches!(l.compare(&r), Some(o) if o != Greater),
            }
        }
        Expr::In { operand, values } => {
            let v = operand_value(operand, row);
            values.iter().any(|l| equal(&v, &l.to_value()))
        }
    }
}

#[cfg(test)]
mod tests;
