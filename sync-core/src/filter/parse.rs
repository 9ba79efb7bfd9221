//! Lexer and recursive-descent parser of the filter language.
//!
//! Grammar (lowest precedence first; keywords are lower case, as in OData):
//!
//! ```text
//! expr       := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | "(" expr ")" | comparison
//! comparison := operand ("eq"|"ne"|"gt"|"ge"|"lt"|"le") operand
//!             | operand "in" "(" literal ("," literal)* ")"
//! operand    := column | literal | "@" name ("." name)*
//! literal    := 'text' | number | true | false | null | datetime | guid
//! ```

use rust_decimal::Decimal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::ast::{CmpOp, Expr, Literal, Operand};
use crate::error::{Error, Result};

/// Deepest nesting of parentheses and `not` accepted.
pub const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Param(String),
    Lit(Literal),
    LParen,
    RParen,
    Comma,
    End,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: usize,
}

/// A reference to a column or parameter with its position, for later errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub name: String,
    pub pos: usize,
}

fn lex(text: &str) -> Result<Vec<Token>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => {
                out.push(Token { tok: Tok::LParen, pos: i });
                i += 1;
            }
            b')' => {
                out.push(Token { tok: Tok::RParen, pos: i });
                i += 1;
            }
            b',' => {
                out.push(Token { tok: Tok::Comma, pos: i });
                i += 1;
            }
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(rest) = text.get(i..) else {
                        return Err(Error::invalid_at("unterminated string literal", start));
                    };
                    let Some(q) = rest.find('\'') else {
                        return Err(Error::invalid_at("unterminated string literal", start));
                    };
                    s.push_str(&rest[..q]);
                    i += q + 1;
                    if bytes.get(i) == Some(&b'\'') {
                        s.push('\'');
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push(Token { tok: Tok::Lit(Literal::String(s)), pos: start });
            }
            b'@' => {
                i += 1;
                let name_start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
                {
                    i += 1;
                }
                let name = &text[name_start..i];
                let valid = !name.is_empty()
                    && name.split('.').all(|part| {
                        !part.is_empty()
                            && part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    });
                if !valid {
                    return Err(Error::invalid_at(
                        "expected a parameter name such as @user.id after '@'",
                        start,
                    ));
                }
                out.push(Token { tok: Tok::Param(name.to_owned()), pos: start });
            }
            _ => {
                if let Some((lit, len)) = lex_guid(&text[i..]).or_else(|| lex_datetime(&text[i..])) {
                    out.push(Token { tok: Tok::Lit(lit), pos: start });
                    i += len;
                } else if c.is_ascii_digit()
                    || (c == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
                {
                    let (lit, len) = lex_number(&text[i..], start)?;
                    out.push(Token { tok: Tok::Lit(lit), pos: start });
                    i += len;
                } else if c.is_ascii_alphabetic() || c == b'_' {
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                        i += 1;
                    }
                    let word = &text[start..i];
                    let tok = match word {
                        "true" => Tok::Lit(Literal::Bool(true)),
                        "false" => Tok::Lit(Literal::Bool(false)),
                        "null" => Tok::Lit(Literal::Null),
                        _ => Tok::Ident(word.to_owned()),
                    };
                    out.push(Token { tok, pos: start });
                } else {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    return Err(Error::invalid_at(format!("unexpected character {ch:?}"), start));
                }
            }
        }
    }
    out.push(Token { tok: Tok::End, pos: text.len() });
    Ok(out)
}

fn lex_guid(s: &str) -> Option<(Literal, usize)> {
    let cand = s.get(..36)?;
    let shape_ok = cand.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    let boundary = s.as_bytes().get(36).is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
    if !shape_ok || !boundary {
        return None;
    }
    Uuid::parse_str(cand).ok().map(|u| (Literal::Guid(u), 36))
}

fn lex_datetime(s: &str) -> Option<(Literal, usize)> {
    let b = s.as_bytes();
    let date_ok = b.len() > 11
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && b[10] == b'T';
    if !date_ok {
        return None;
    }
    let len = s
        .bytes()
        .position(|c| !(c.is_ascii_digit() || matches!(c, b'-' | b':' | b'.' | b'T' | b'Z' | b'+')))
        .unwrap_or(s.len());
    OffsetDateTime::parse(&s[..len], &Rfc3339).ok().map(|t| (Literal::DateTime(t), len))
}

fn lex_number(s: &str, pos: usize) -> Result<(Literal, usize)> {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut is_decimal = false;
    let mut is_float = false;
    if i < b.len() && b[i] == b'.' {
        is_decimal = true;
        i += 1;
        let digits = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == digits {
            return Err(Error::invalid_at("expected digits after the decimal point", pos));
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        is_float = true;
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let digits = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == digits {
            return Err(Error::invalid_at("expected digits in the exponent", pos));
        }
    }
    if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
        return Err(Error::invalid_at("a number runs into a name; put a space between them", pos));
    }
    let text = &s[..i];
    let lit = if is_float {
        let f: f64 = text.parse().map_err(|_| Error::invalid_at(format!("bad number {text:?}"), pos))?;
        if !f.is_finite() {
            return Err(Error::invalid_at(format!("number {text} is out of range"), pos));
        }
        Literal::Float(f)
    } else if is_decimal {
        Literal::Decimal(
            text.parse::<Decimal>()
                .map_err(|_| Error::invalid_at(format!("number {text} is out of range"), pos))?,
        )
    } else {
        Literal::Int(
            text.parse().map_err(|_| Error::invalid_at(format!("integer {text} is out of range"), pos))?,
        )
    };
    Ok((lit, i))
}

pub(crate) struct Parsed {
    pub expr: Expr,
    pub columns: Vec<Span>,
    pub params: Vec<Span>,
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
    depth: usize,
    columns: Vec<Span>,
    params: Vec<Span>,
}

pub(crate) fn parse(text: &str) -> Result<Parsed> {
    let toks = lex(text)?;
    let mut p = Parser { toks, at: 0, depth: 0, columns: Vec::new(), params: Vec::new() };
    let expr = p.or()?;
    let t = p.peek();
    if t.tok != Tok::End {
        return Err(Error::invalid_at(
            format!("unexpected {} after the end of the expression", describe(&t.tok)),
            t.pos,
        ));
    }
    Ok(Parsed { expr, columns: p.columns, params: p.params })
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(w) => format!("'{w}'"),
        Tok::Param(p) => format!("'@{p}'"),
        Tok::Lit(l) => format!("literal {l}"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::End => "end of input".into(),
    }
}

fn cmp_op(word: &str) -> Option<CmpOp> {
    Some(match word {
        "eq" => CmpOp::Eq,
        "ne" => CmpOp::Ne,
        "gt" => CmpOp::Gt,
        "ge" => CmpOp::Ge,
        "lt" => CmpOp::Lt,
        "le" => CmpOp::Le,
        _ => return None,
    })
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "and" | "or" | "not" | "in") || cmp_op(word).is_some()
}

impl Parser {
    fn peek(&self) -> Token {
        self.toks.get(self.at).cloned().unwrap_or(Token { tok: Tok::End, pos: 0 })
    }
    fn bump(&mut self) -> Token {
        let t = self.peek();
        if self.at < self.toks.len() {
            self.at += 1;
        }
        t
    }
    fn at_word(&self, w: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(x) if x == w)
    }

    fn or(&mut self) -> Result<Expr> {
        let mut left = self.and()?;
        while self.at_word("or") {
            self.bump();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut left = self.unary()?;
        while self.at_word("and") {
            self.bump();
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn enter(&mut self, pos: usize) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Error::invalid_at(
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
                pos,
            ));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr> {
        let t = self.peek();
        if self.at_word("not") {
            self.bump();
            self.enter(t.pos)?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        if t.tok == Tok::LParen {
            self.bump();
            self.enter(t.pos)?;
            let e = self.or()?;
            self.depth -= 1;
            let close = self.bump();
            if close.tok != Tok::RParen {
                return Err(Error::invalid_at(
                    format!(
                        "expected ')' to close the '(' at position {}, found {}",
                        t.pos,
                        describe(&close.tok)
                    ),
                    close.pos,
                ));
            }
            return Ok(e);
        }
        self.comparison()
    }

    fn operand(&mut self) -> Result<Operand> {
        let t = self.bump();
        match t.tok {
            Tok::Ident(w) if !is_keyword(&w) => {
                self.columns.push(Span { name: w.clone(), pos: t.pos });
                Ok(Operand::Column(w))
            }
            Tok::Param(p) => {
                self.params.push(Span { name: p.clone(), pos: t.pos });
                Ok(Operand::Param(p))
            }
            Tok::Lit(l) => Ok(Operand::Literal(l)),
            other => Err(Error::invalid_at(
                format!("expected a column, a literal or a parameter, found {}", describe(&other)),
                t.pos,
            )),
        }
    }

    fn comparison(&mut self) -> Result<Expr> {
        let left = self.operand()?;
        let t = self.bump();
        let word = match &t.tok {
            Tok::Ident(w) => w.clone(),
            other => {
                return Err(Error::invalid_at(
                    format!("expected an operator (eq ne gt ge lt le in), found {}", describe(other)),
                    t.pos,
                ));
            }
        };
        if word == "in" {
            let open = self.bump();
            if open.tok != Tok::LParen {
                return Err(Error::invalid_at("expected '(' after 'in'", open.pos));
            }
            let mut values = Vec::new();
            loop {
                let v = self.bump();
                match v.tok {
                    Tok::Lit(l) => values.push(l),
                    other => {
                        return Err(Error::invalid_at(
                            format!("'in' takes a list of literals, found {}", describe(&other)),
                            v.pos,
                        ));
                    }
                }
                let sep = self.bump();
                match sep.tok {
                    Tok::Comma => continue,
                    Tok::RParen => break,
                    other => {
                        return Err(Error::invalid_at(
                            format!("expected ',' or ')' in the 'in' list, found {}", describe(&other)),
                            sep.pos,
                        ));
                    }
                }
            }
            return Ok(Expr::In { operand: left, values });
        }
        let Some(op) = cmp_op(&word) else {
            return Err(Error::invalid_at(
                format!("expected an operator (eq ne gt ge lt le in), found '{word}'"),
                t.pos,
            ));
        };
        let right = self.operand()?;
        Ok(Expr::Compare { left, op, right })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_pos(text: &str) -> Option<usize> {
        match parse(text) {
            Err(Error::InvalidInput { position, .. }) => position,
            Ok(_) => panic!("{text:?} parsed"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn parses_the_design_example() {
        let p =
            parse("statecode eq 0 and ownerid eq @user.id and (revenue gt 1000 or name ne null)").unwrap();
        assert_eq!(p.params, vec![Span { name: "user.id".into(), pos: 30 }]);
        assert_eq!(
            p.expr.to_string(),
            "statecode eq 0 and ownerid eq @user.id and (revenue gt 1000 or name ne null)"
        );
    }

    #[test]
    fn literals() {
        let p = parse(
            "a eq 'O''Brien' and b eq -1.50 and c eq 1e3 and d eq 2024-01-31T12:00:00Z \
             and e eq 6F9619FF-8B86-D011-B42D-00C04FC964FF and f in (1, 2, 3) and g eq true",
        )
        .unwrap();
        let s = p.expr.to_string();
        assert!(s.contains("'O''Brien'"), "{s}");
        assert!(s.contains("6f9619ff-8b86-d011-b42d-00c04fc964ff"), "{s}");
        assert!(s.contains("2024-01-31T12:00:00Z"), "{s}");
    }

    #[test]
    fn error_positions() {
        assert_eq!(err_pos("name eq 'abc"), Some(8));
        assert_eq!(err_pos("name eq"), Some(7));
        assert_eq!(err_pos("name equals 1"), Some(5));
        assert_eq!(err_pos("(a eq 1"), Some(7));
        assert_eq!(err_pos("a eq 1 b"), Some(7));
        assert_eq!(err_pos("a eq #"), Some(5));
        assert_eq!(err_pos("a eq @"), Some(5));
        assert_eq!(err_pos("a in 1"), Some(5));
        assert_eq!(err_pos("a in (1 2)"), Some(8));
        assert_eq!(err_pos("a eq 99999999999999999999"), Some(5));
        assert_eq!(err_pos("a eq 1e999"), Some(5));
        assert_eq!(err_pos(""), Some(0));
        assert_eq!(err_pos("and eq 1"), Some(0));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}a eq 1{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(parse(&deep).is_err());
        let nots = format!("{}a eq 1", "not ".repeat(10_000));
        assert!(parse(&nots).is_err());
        let ok = format!("{}a eq 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
    }
}
