//! Tokenizer and recursive-descent parser of `$filter` expressions, with
//! limits on nesting depth and size so hostile input cannot exhaust the stack.

use crate::ast::{CmpOp, Expr, Func};
use crate::{ParseError, Value};

/// Deepest nesting of parentheses, `not` and function calls accepted.
pub const MAX_DEPTH: usize = 32;
/// Most expression nodes accepted in one `$filter`.
pub const MAX_NODES: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    DateTime(String),
    LParen,
    RParen,
    Comma,
    Slash,
    Colon,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Int(i) => format!("'{i}'"),
            Tok::Float(f) => format!("'{f}'"),
            Tok::DateTime(s) => format!("'{s}'"),
            Tok::LParen => "'('".to_string(),
            Tok::RParen => "')'".to_string(),
            Tok::Comma => "','".to_string(),
            Tok::Slash => "'/'".to_string(),
            Tok::Colon => "':'".to_string(),
            Tok::Eof => "end of input".to_string(),
        }
    }
}

/// Splits `src` into tokens, each with its byte offset.
pub(crate) fn tokenize(option: &str, src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => {
                out.push((Tok::LParen, start));
                i += 1;
            }
            b')' => {
                out.push((Tok::RParen, start));
                i += 1;
            }
            b',' => {
                out.push((Tok::Comma, start));
                i += 1;
            }
            b'/' => {
                out.push((Tok::Slash, start));
                i += 1;
            }
            b':' => {
                out.push((Tok::Colon, start));
                i += 1;
            }
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match src[i..].find('\'') {
                        None => {
                            return Err(ParseError::at(
                                option,
                                src,
                                start,
                                "unterminated string literal",
                            ))
                        }
                        Some(q) => {
                            s.push_str(&src[i..i + q]);
                            i += q + 1;
                            if b.get(i) == Some(&b'\'') {
                                s.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                out.push((Tok::Str(s), start));
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_string()), start));
            }
            b'0'..=b'9' | b'-' | b'+' => {
                let (tok, end) = number(option, src, start)?;
                out.push((tok, start));
                i = end;
            }
            _ => {
                let ch = src[start..].chars().next().unwrap_or('?');
                return Err(ParseError::at(
                    option,
                    src,
                    start,
                    format!("unexpected character '{ch}'"),
                ));
            }
        }
    }
    out.push((Tok::Eof, src.len()));
    Ok(out)
}

/// Lexes a number or a datetime literal starting at `start`.
fn number(option: &str, src: &str, start: usize) -> Result<(Tok, usize), ParseError> {
    let b = src.as_bytes();
    let digits_at =
        |i: usize, n: usize| (i..i + n).all(|k| b.get(k).is_some_and(u8::is_ascii_digit));
    // Datetime / date: dddd-dd-dd[Thh:mm[:ss[.fff]][Z|±hh:mm]]
    if digits_at(start, 4) && b.get(start + 4) == Some(&b'-') && digits_at(start + 5, 2) {
        let mut i = start;
        while i < b.len()
            && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'-' | b':' | b'.' | b'+'))
        {
            i += 1;
        }
        let text = &src[start..i];
        if !looks_like_datetime(text) {
            return Err(ParseError::at(
                option,
                src,
                start,
                format!("invalid date/time literal '{text}'"),
            ));
        }
        return Ok((Tok::DateTime(text.to_string()), i));
    }
    let mut i = start;
    if matches!(b[i], b'-' | b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == int_start {
        return Err(ParseError::at(option, src, start, "expected a number"));
    }
    let mut is_float = false;
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        is_float = true;
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'-' | b'+')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            is_float = true;
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    if b.get(i)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        return Err(ParseError::at(option, src, start, "invalid number"));
    }
    let text = &src[start..i];
    if is_float {
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok((Tok::Float(f), i)),
            _ => Err(ParseError::at(
                option,
                src,
                start,
                format!("decimal out of range '{text}'"),
            )),
        }
    } else {
        match text.parse::<i64>() {
            Ok(n) => Ok((Tok::Int(n), i)),
            Err(_) => Err(ParseError::at(
                option,
                src,
                start,
                format!("integer out of range '{text}'"),
            )),
        }
    }
}

/// A loose RFC 3339 check: `YYYY-MM-DD` optionally followed by `T` and a time.
fn looks_like_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let d = |r: std::ops::Range<usize>| r.clone().all(|k| b.get(k).is_some_and(u8::is_ascii_digit));
    if !(d(0..4) && b.get(4) == Some(&b'-') && d(5..7) && b.get(7) == Some(&b'-') && d(8..10)) {
        return false;
    }
    if b.len() == 10 {
        return true;
    }
    if !(matches!(b.get(10), Some(b'T' | b't'))
        && d(11..13)
        && b.get(13) == Some(&b':')
        && d(14..16))
    {
        return false;
    }
    // The rest: [:ss[.fff]][Z|±hh:mm], only digits and those separators.
    let rest = &s[16..];
    let rest = rest.strip_suffix(['Z', 'z']).unwrap_or(rest);
    rest.bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b':' | b'.' | b'+' | b'-'))
}

/// Parses a `$filter` expression; errors are labelled with `option`.
pub(crate) fn parse_filter_as(option: &str, src: &str) -> Result<Expr, ParseError> {
    let toks = tokenize(option, src)?;
    let mut p = Parser {
        option,
        src,
        toks,
        i: 0,
        depth: 0,
        nodes: 0,
    };
    let e = p.or()?;
    let (t, pos) = p.peek_full();
    if *t != Tok::Eof {
        let msg = format!(
            "expected 'and', 'or' or end of input, found {}",
            t.describe()
        );
        return Err(p.err_at(pos, msg));
    }
    Ok(e)
}

struct Parser<'a> {
    option: &'a str,
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    i: usize,
    depth: usize,
    nodes: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.peek_full().0
    }

    fn peek_full(&self) -> (&Tok, usize) {
        match self.toks.get(self.i).or_else(|| self.toks.last()) {
            Some((t, p)) => (t, *p),
            None => (&Tok::Eof, self.src.len()),
        }
    }

    fn bump(&mut self) -> (Tok, usize) {
        let (t, p) = self.peek_full();
        let r = (t.clone(), p);
        if self.i < self.toks.len() {
            self.i += 1;
        }
        r
    }

    fn err_at(&self, pos: usize, msg: impl Into<String>) -> ParseError {
        ParseError::at(self.option, self.src, pos, msg)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == kw)
    }

    fn node(&mut self, e: Expr) -> Result<Expr, ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            let pos = self.peek_full().1;
            return Err(self.err_at(
                pos,
                format!("expression too large (limit {MAX_NODES} nodes)"),
            ));
        }
        Ok(e)
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let pos = self.peek_full().1;
            return Err(self.err_at(
                pos,
                format!("expression nested too deeply (limit {MAX_DEPTH})"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn expect(&mut self, t: Tok) -> Result<(), ParseError> {
        let (got, pos) = self.peek_full();
        if *got == t {
            self.bump();
            Ok(())
        } else {
            let msg = format!("expected {}, found {}", t.describe(), got.describe());
            Err(self.err_at(pos, msg))
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let first = self.and()?;
        if !self.is_kw("or") {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.is_kw("or") {
            self.bump();
            items.push(self.and()?);
        }
        self.node(Expr::Or(items))
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let first = self.cmp()?;
        if !self.is_kw("and") {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.is_kw("and") {
            self.bump();
            items.push(self.cmp()?);
        }
        self.node(Expr::And(items))
    }

    fn cmp_op(&self) -> Option<CmpOp> {
        match self.peek() {
            Tok::Ident(s) => CmpOp::from_keyword(s),
            _ => None,
        }
    }

    fn cmp(&mut self) -> Result<Expr, ParseError> {
        let left = self.unary()?;
        let e = if let Some(op) = self.cmp_op() {
            self.bump();
            let right = self.unary()?;
            self.node(Expr::Compare {
                op,
                left: Box::new(left),
                right: Box::new(right),
            })?
        } else if self.is_kw("in") {
            self.bump();
            self.expect(Tok::LParen)?;
            let mut list = Vec::new();
            loop {
                let (t, pos) = self.bump();
                match literal(&t) {
                    Some(v) => list.push(v),
                    None => {
                        let msg = format!(
                            "expected a literal in the 'in' list, found {}",
                            t.describe()
                        );
                        return Err(self.err_at(pos, msg));
                    }
                }
                self.node(Expr::Literal(Value::Null))?;
                match self.bump() {
                    (Tok::Comma, _) => continue,
                    (Tok::RParen, _) => break,
                    (t, pos) => {
                        let msg = format!("expected ',' or ')', found {}", t.describe());
                        return Err(self.err_at(pos, msg));
                    }
                }
            }
            self.node(Expr::In {
                target: Box::new(left),
                list,
            })?
        } else {
            return Ok(left);
        };
        if self.cmp_op().is_some() || self.is_kw("in") {
            let pos = self.peek_full().1;
            return Err(self.err_at(pos, "comparisons cannot be chained; add parentheses"));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.is_kw("not") {
            self.bump();
            self.enter()?;
            let inner = self.unary()?;
            self.leave();
            return self.node(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let (t, pos) = self.bump();
        match t {
            Tok::LParen => {
                self.enter()?;
                let e = self.or()?;
                self.expect(Tok::RParen)?;
                self.leave();
                Ok(e)
            }
            Tok::Ident(name) if *self.peek() == Tok::LParen => self.call(name, pos),
            Tok::Ident(ref name) if !matches!(name.as_str(), "null" | "true" | "false") => {
                let mut path = vec![name.clone()];
                while *self.peek() == Tok::Slash {
                    self.bump();
                    let (t, pos) = self.bump();
                    match t {
                        Tok::Ident(seg) => {
                            if matches!(seg.as_str(), "any" | "all") && *self.peek() == Tok::LParen
                            {
                                return Err(self.err_at(
                                    pos,
                                    format!("lambda operator '{seg}' is not supported"),
                                ));
                            }
                            path.push(seg);
                        }
                        other => {
                            let msg = format!(
                                "expected a property name after '/', found {}",
                                other.describe()
                            );
                            return Err(self.err_at(pos, msg));
                        }
                    }
                    if path.len() > 8 {
                        return Err(self.err_at(pos, "property path too long"));
                    }
                }
                self.node(Expr::Path(path))
            }
            other => match literal(&other) {
                Some(v) => self.node(Expr::Literal(v)),
                None => {
                    let msg = format!(
                        "expected a property, literal, function or '(', found {}",
                        other.describe()
                    );
                    Err(self.err_at(pos, msg))
                }
            },
        }
    }

    fn call(&mut self, name: String, pos: usize) -> Result<Expr, ParseError> {
        let Some(func) = Func::from_name(&name) else {
            return Err(self.err_at(pos, format!("unknown function '{name}'")));
        };
        self.expect(Tok::LParen)?;
        self.enter()?;
        let mut args = Vec::new();
        if *self.peek() != Tok::RParen {
            loop {
                args.push(self.or()?);
                if *self.peek() == Tok::Comma {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.expect(Tok::RParen)?;
        self.leave();
        if args.len() != 2 {
            return Err(self.err_at(pos, format!("{name} takes 2 arguments, got {}", args.len())));
        }
        self.node(Expr::Call { func, args })
    }
}

/// The literal value of a token, if it is one.
fn literal(t: &Tok) -> Option<Value> {
    Some(match t {
        Tok::Str(s) | Tok::DateTime(s) => Value::Text(s.clone()),
        Tok::Int(i) => Value::Int(*i),
        Tok::Float(f) => Value::Float(*f),
        Tok::Ident(s) if s == "null" => Value::Null,
        Tok::Ident(s) if s == "true" => Value::Bool(true),
        Tok::Ident(s) if s == "false" => Value::Bool(false),
        _ => return None,
    })
}

/// Parses an entity key: one integer or string literal.
pub(crate) fn parse_key_as(option: &str, src: &str) -> Result<Value, ParseError> {
    let toks = tokenize(option, src)?;
    match toks.as_slice() {
        [(Tok::Int(i), _), (Tok::Eof, _)] => Ok(Value::Int(*i)),
        [(Tok::Str(s), _), (Tok::Eof, _)] => Ok(Value::Text(s.clone())),
        [(Tok::Eof, p)] => Err(ParseError::at(option, src, *p, "empty key")),
        [(t, p), ..] => Err(ParseError::at(
            option,
            src,
            *p,
            format!(
                "expected an integer or a 'string' key, found {}",
                t.describe()
            ),
        )),
        [] => Err(ParseError::new(option, None, "empty key")),
    }
}
