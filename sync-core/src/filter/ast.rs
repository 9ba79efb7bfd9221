//! The filter syntax tree and its canonical printer.

use std::fmt;

use rust_decimal::Decimal;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::value::{Value, format_datetime};

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lt`
    Lt,
    /// `le`
    Le,
}

impl CmpOp {
    /// The operator's keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
        }
    }

    /// The operator with its operands swapped (`a lt b` ⇔ `b gt a`).
    pub fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::Ne => CmpOp::Ne,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
        }
    }
}

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer such as `42` or `-7`.
    Int(i64),
    /// A decimal such as `10.5`.
    Decimal(Decimal),
    /// A float with an exponent such as `1e3`.
    Float(f64),
    /// A string such as `'O''Brien'`.
    String(String),
    /// A datetime such as `2024-01-31T12:00:00Z`.
    DateTime(OffsetDateTime),
    /// A GUID such as `6f9619ff-8b86-d011-b42d-00c04fc964ff`.
    Guid(Uuid),
}

impl Literal {
    /// The literal as a (loosely typed) value.
    pub fn to_value(&self) -> Value {
        match self {
            Literal::Null => Value::Null,
            Literal::Bool(b) => Value::Boolean(*b),
            Literal::Int(i) => Value::Integer(*i),
            Literal::Decimal(d) => Value::Decimal(*d),
            Literal::Float(f) => Value::Float(*f),
            Literal::String(s) => Value::String(s.clone()),
            Literal::DateTime(t) => Value::DateTime(*t),
            Literal::Guid(u) => Value::Uuid(*u),
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Decimal(d) => {
                // Always print a decimal point so it reads back as a decimal.
                let s = d.to_string();
                if s.contains('.') { f.write_str(&s) } else { write!(f, "{s}.0") }
            }
            Literal::Float(x) => write!(f, "{x:e}"),
            Literal::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::DateTime(t) => f.write_str(&format_datetime(*t)),
            Literal::Guid(u) => write!(f, "{}", u.hyphenated()),
        }
    }
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A column of the entity.
    Column(String),
    /// A literal.
    Literal(Literal),
    /// A parameter such as `@user.id`, without the `@`.
    Param(String),
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Column(c) => f.write_str(c),
            Operand::Literal(l) => write!(f, "{l}"),
            Operand::Param(p) => write!(f, "@{p}"),
        }
    }
}

/// A filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// Either holds.
    Or(Box<Expr>, Box<Expr>),
    /// Does not hold.
    Not(Box<Expr>),
    /// `left op right`.
    Compare {
        /// Left operand.
        left: Operand,
        /// Operator.
        op: CmpOp,
        /// Right operand.
        right: Operand,
    },
    /// `operand in (v1, v2, …)`.
    In {
        /// The tested operand.
        operand: Operand,
        /// The candidate values.
        values: Vec<Literal>,
    },
}

impl Expr {
    fn precedence(&self) -> u8 {
        match self {
            Expr::Or(..) => 1,
            Expr::And(..) => 2,
            Expr::Not(_) => 3,
            Expr::Compare { .. } | Expr::In { .. } => 4,
        }
    }

    fn write_child(&self, f: &mut fmt::Formatter<'_>, child: &Expr, right_side: bool) -> fmt::Result {
        // Left-associative binary operators: a right child of equal
        // precedence needs parentheses to read back the same tree.
        let p = self.precedence();
        let cp = child.precedence();
        if cp < p || (right_side && cp == p && cp < 3) {
            write!(f, "({child})")
        } else {
            write!(f, "{child}")
        }
    }
}

impl fmt::Display for Expr {
    /// Prints the canonical text, which parses back to an equal tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                let kw = if matches!(self, Expr::And(..)) { "and" } else { "or" };
                self.write_child(f, a, false)?;
                write!(f, " {kw} ")?;
                self.write_child(f, b, true)
            }
            Expr::Not(e) => {
                f.write_str("not ")?;
                if e.precedence() < 3 { write!(f, "({e})") } else { write!(f, "{e}") }
            }
            Expr::Compare { left, op, right } => write!(f, "{left} {} {right}", op.keyword()),
            Expr::In { operand, values } => {
                write!(f, "{operand} in (")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str(")")
            }
        }
    }
}
