//! Rendering of parsed query options into one parameterised SQL statement
//! (SQLite or PostgreSQL) that returns each entity as a JSON object, with the
//! caller's access row filter applied to every set the query touches.

use crate::ast::{CmpOp, Expand, Expr, Func, OrderBy, QueryOptions};
use crate::schema::{EntitySet, Field, FieldType, NavKind, Navigation, Schema};
use crate::{Dialect, RenderError, Value};
use std::fmt::Write as _;

/// An extra WHERE condition the cloud's permission rules add for one entity
/// set: `{t}` stands for the table alias, `$1…` for `params` (renumbered by
/// the renderer). Empty `sql` means "every row".
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    /// SQL condition with `{t}` and `$N` placeholders.
    pub sql: String,
    /// Its parameters, `$1` first.
    pub params: Vec<Value>,
}

/// Which rows of each entity set the caller may read.
pub trait Access {
    /// The condition for `set`; `None` hides every row.
    fn row_filter(&self, set: &EntitySet) -> Option<RowFilter>;
}

/// An [`Access`] that shows every row of every set (for trusted callers and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Access for AllowAll {
    fn row_filter(&self, _set: &EntitySet) -> Option<RowFilter> {
        Some(RowFilter {
            sql: String::new(),
            params: Vec::new(),
        })
    }
}

/// A rendered statement and its parameters (`$1` is `params[0]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sql {
    /// The SQL text.
    pub sql: String,
    /// The bound parameters in placeholder order.
    pub params: Vec<Value>,
}

/// Renders a query over entity set `set` (or one entity of it, by `key`).
///
/// The statement returns one row per entity with one TEXT column `json`: the
/// entity as a JSON object holding the `$select`-ed fields (all selectable
/// ones by default) and the `$expand`-ed navigations (to-one: object or null;
/// to-many: array). Rows are ordered by `$orderby`, then by key.
pub fn render_select(
    schema: &Schema,
    set: &str,
    key: Option<&Value>,
    q: &QueryOptions,
    access: &dyn Access,
    dialect: Dialect,
) -> Result<Sql, RenderError> {
    let es = schema
        .set(set)
        .ok_or_else(|| RenderError::UnknownSet(set.to_string()))?;
    let mut r = Renderer::new(schema, access, dialect);
    let alias = r.alias();
    r.sql.push_str("SELECT ");
    r.object(es, &alias, q)?;
    if dialect == Dialect::Postgres {
        r.sql.push_str("::text");
    }
    let _ = write!(r.sql, " AS json FROM {} AS {alias} WHERE ", ident(es.table));
    r.row_filter(es, &alias)?;
    if let Some(k) = key {
        r.key_condition(es, &alias, k)?;
    }
    r.where_filter(es, &alias, q.filter.as_ref())?;
    r.order_limit(es, &alias, q)?;
    Ok(r.finish())
}

/// Renders `SELECT COUNT(*) AS count …` for the entities `q` matches
/// (`$filter` and access rules apply; `$top`/`$skip`/`$orderby` do not).
pub fn render_count(
    schema: &Schema,
    set: &str,
    q: &QueryOptions,
    access: &dyn Access,
    dialect: Dialect,
) -> Result<Sql, RenderError> {
    let es = schema
        .set(set)
        .ok_or_else(|| RenderError::UnknownSet(set.to_string()))?;
    let mut r = Renderer::new(schema, access, dialect);
    let alias = r.alias();
    let _ = write!(
        r.sql,
        "SELECT COUNT(*) AS count FROM {} AS {alias} WHERE ",
        ident(es.table)
    );
    r.row_filter(es, &alias)?;
    r.where_filter(es, &alias, q.filter.as_ref())?;
    Ok(r.finish())
}

/// A double-quoted SQL identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A single-quoted SQL string constant (only for names from the static schema).
fn text_const(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Escapes `\`, `%` and `_` for `LIKE … ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The type of an expression, as far as the renderer checks types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Null,
    Bool,
    Int,
    Float,
    Text,
    Timestamp,
    Json,
}

impl Ty {
    fn of_field(t: FieldType) -> Ty {
        match t {
            FieldType::Int => Ty::Int,
            FieldType::Float => Ty::Float,
            FieldType::Bool => Ty::Bool,
            FieldType::Text => Ty::Text,
            FieldType::Timestamp => Ty::Timestamp,
            FieldType::Json => Ty::Json,
        }
    }

    fn of_value(v: &Value) -> Ty {
        match v {
            Value::Null => Ty::Null,
            Value::Bool(_) => Ty::Bool,
            Value::Int(_) => Ty::Int,
            Value::Float(_) => Ty::Float,
            Value::Text(_) => Ty::Text,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Bool => "boolean",
            Ty::Int => "integer",
            Ty::Float => "decimal",
            Ty::Text => "string",
            Ty::Timestamp => "timestamp",
            Ty::Json => "json",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float)
    }

    fn textual(self) -> bool {
        matches!(self, Ty::Text | Ty::Timestamp)
    }

    /// Whether values of the two types can be compared with `op`.
    fn comparable(self, other: Ty, op: CmpOp) -> bool {
        let ordering = !matches!(op, CmpOp::Eq | CmpOp::Ne);
        (self.numeric() && other.numeric())
            || (self.textual() && other.textual())
            || (self == Ty::Bool && other == Ty::Bool && !ordering)
    }
}

/// Checks an OData `DateTimeOffset` literal (RFC 3339 with `Z` or an
/// offset, seconds and fractions optional) or a `Date` (`2026-01-31`,
/// taken as midnight UTC) and returns it in a form both databases read as
/// the same instant. Anything else (`'yesterday'`, `2026-13-45`, a time
/// without an offset) is refused.
pub(crate) fn timestamp_literal(s: &str) -> Result<String, RenderError> {
    let bad = || {
        RenderError::TypeMismatch(format!(
            "'{s}' is not a timestamp: use RFC 3339 with an offset, \
             e.g. 2026-01-31T12:00:00Z, or a date, e.g. 2026-01-31"
        ))
    };
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let d = b.get(from..from + len)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    let (y, m, d) = match (num(0, 4), b.get(4), num(5, 2), b.get(7), num(8, 2)) {
        (Some(y), Some(b'-'), Some(m), Some(b'-'), Some(d)) => (y, m, d),
        _ => return Err(bad()),
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d == 0 || d > days {
        return Err(bad());
    }
    if b.len() == 10 {
        return Ok(format!("{s}T00:00:00Z"));
    }
    if !matches!(b.get(10), Some(b'T' | b't')) {
        return Err(bad());
    }
    let (hh, mm) = match (num(11, 2), b.get(13), num(14, 2)) {
        (Some(h), Some(b':'), Some(m)) if h < 24 && m < 60 => (h, m),
        _ => return Err(bad()),
    };
    let _ = (hh, mm);
    let mut i = 16;
    if b.get(i) == Some(&b':') {
        match num(i + 1, 2) {
            Some(sec) if sec < 60 => i += 3,
            _ => return Err(bad()),
        }
        if b.get(i) == Some(&b'.') {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 12 {
                return Err(bad());
            }
            i += 1 + digits;
        }
    }
    let zone_ok = match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', ..] if b.len() == i + 6 => matches!(
            (num(i + 1, 2), b.get(i + 3), num(i + 4, 2)),
            (Some(h), Some(b':'), Some(m)) if h < 24 && m < 60
        ),
        _ => false,
    };
    if !zone_ok {
        return Err(bad());
    }
    Ok(s.to_owned())
}

/// Short OData-like text of an expression, for error messages.
fn describe(e: &Expr) -> String {
    match e {
        Expr::Literal(v) => v.to_string(),
        Expr::Path(p) => p.join("/"),
        Expr::Not(_) => "not (…)".to_string(),
        Expr::And(_) | Expr::Or(_) | Expr::Compare { .. } | Expr::In { .. } => {
            "a condition".to_string()
        }
        Expr::Call { func, .. } => format!("{}(…)", func.name()),
    }
}

/// A property path resolved against the schema.
enum Resolved {
    /// A field of the set itself.
    Own(&'static Field),
    /// A field reached over a to-one navigation.
    Nav(&'static Navigation, &'static EntitySet, &'static Field),
}

impl Resolved {
    fn field(&self) -> &'static Field {
        match self {
            Resolved::Own(f) | Resolved::Nav(_, _, f) => f,
        }
    }
}

/// Where paths of an atomic predicate point: the set's alias, and the alias
/// of each navigation joined for it.
struct Scope<'a> {
    set: &'static EntitySet,
    alias: &'a str,
    navs: Vec<(&'static str, String)>,
}

struct Renderer<'a> {
    schema: &'a Schema,
    access: &'a dyn Access,
    dialect: Dialect,
    sql: String,
    params: Vec<Value>,
    aliases: usize,
}

impl<'a> Renderer<'a> {
    fn new(schema: &'a Schema, access: &'a dyn Access, dialect: Dialect) -> Self {
        Renderer {
            schema,
            access,
            dialect,
            sql: String::new(),
            params: Vec::new(),
            aliases: 0,
        }
    }

    fn finish(self) -> Sql {
        Sql {
            sql: self.sql,
            params: self.params,
        }
    }

    fn alias(&mut self) -> String {
        let a = format!("t{}", self.aliases);
        self.aliases += 1;
        a
    }

    fn target(&self, nav: &Navigation) -> Result<&'static EntitySet, RenderError> {
        self.schema.set(nav.target).ok_or_else(|| {
            RenderError::BadSchema(format!(
                "navigation '{}' points at unknown entity set '{}'",
                nav.name, nav.target
            ))
        })
    }

    /// Appends a bound parameter (with a type cast in PostgreSQL, so the
    /// statement's parameter types never depend on inference).
    fn param(&mut self, v: Value) {
        self.params.push(v);
        let n = self.params.len();
        let cast = match (self.dialect, &self.params[n - 1]) {
            (Dialect::Sqlite, _) | (_, Value::Null) => "",
            (Dialect::Postgres, Value::Bool(_)) => "::boolean",
            (Dialect::Postgres, Value::Int(_)) => "::bigint",
            (Dialect::Postgres, Value::Float(_)) => "::double precision",
            (Dialect::Postgres, Value::Text(_)) => "::text",
        };
        let _ = write!(self.sql, "${n}{cast}");
    }

    /// Appends the access condition of `set` for rows aliased `alias`,
    /// always as one parenthesised boolean term.
    fn row_filter(&mut self, set: &EntitySet, alias: &str) -> Result<(), RenderError> {
        let Some(rf) = self.access.row_filter(set) else {
            self.sql.push_str("(1 = 0)");
            return Ok(());
        };
        if rf.sql.trim().is_empty() {
            self.sql.push_str("(1 = 1)");
            return Ok(());
        }
        let bad = |reason: String| RenderError::BadRowFilter {
            set: set.name.to_string(),
            reason,
        };
        self.sql.push('(');
        let src = rf.sql.as_str();
        let b = src.as_bytes();
        let mut i = 0;
        let mut lit_start = 0;
        while i < b.len() {
            match b[i] {
                b'\'' => {
                    // Copy a quoted string verbatim ('' stays inside it).
                    i += 1;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    if i >= b.len() {
                        return Err(bad("unterminated string constant".into()));
                    }
                    i += 1;
                }
                b'{' if src[i..].starts_with("{t}") => {
                    self.sql.push_str(&src[lit_start..i]);
                    self.sql.push_str(alias);
                    i += 3;
                    lit_start = i;
                }
                b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    self.sql.push_str(&src[lit_start..i]);
                    let mut j = i + 1;
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    let n: usize = src[i + 1..j].parse().unwrap_or(0);
                    let v = match n.checked_sub(1).and_then(|k| rf.params.get(k)) {
                        Some(v) => v.clone(),
                        None => {
                            return Err(bad(format!(
                                "${n} has no parameter ({} given)",
                                rf.params.len()
                            )))
                        }
                    };
                    // Each occurrence gets its own, next, number: placeholders stay
                    // in textual order, which SQLite's `$N` binding relies on.
                    self.params.push(v);
                    let _ = write!(self.sql, "${}", self.params.len());
                    i = j;
                    lit_start = i;
                }
                _ => i += 1,
            }
        }
        self.sql.push_str(&src[lit_start..]);
        self.sql.push(')');
        Ok(())
    }

    fn key_condition(
        &mut self,
        es: &EntitySet,
        alias: &str,
        key: &Value,
    ) -> Result<(), RenderError> {
        let expected = es.key_field().map(|f| Ty::of_field(f.ty));
        let got = Ty::of_value(key);
        let ok = match expected {
            Some(t) => t == got || (t.textual() && got == Ty::Text),
            None => matches!(got, Ty::Int | Ty::Text),
        };
        if !ok {
            return Err(RenderError::TypeMismatch(format!(
                "key of '{}' must be {}, got {}",
                es.name,
                expected.map_or("integer or string", Ty::name),
                got.name()
            )));
        }
        let _ = write!(self.sql, " AND {alias}.{} = ", ident(es.key));
        self.param(key.clone());
        Ok(())
    }

    fn where_filter(
        &mut self,
        es: &'static EntitySet,
        alias: &str,
        f: Option<&Expr>,
    ) -> Result<(), RenderError> {
        if let Some(f) = f {
            let t = self.check(es, f)?;
            if t != Ty::Bool {
                return Err(RenderError::TypeMismatch(format!(
                    "$filter must be a condition, got {} ({})",
                    describe(f),
                    t.name()
                )));
            }
            self.sql.push_str(" AND ");
            self.pred(es, alias, f)?;
        }
        Ok(())
    }

    // ---- type checking -------------------------------------------------

    fn resolve(
        &self,
        set: &'static EntitySet,
        path: &[String],
        context: &str,
    ) -> Result<Resolved, RenderError> {
        let unknown_field = |set: &EntitySet, f: &str| RenderError::UnknownField {
            set: set.name.to_string(),
            field: f.to_string(),
        };
        let r = match path {
            [name] => match set.field(name) {
                Some(f) => Resolved::Own(f),
                None => match set.navigation(name) {
                    Some(n) if matches!(n.kind, NavKind::ToMany { .. }) => {
                        return Err(RenderError::ToMany {
                            set: set.name.to_string(),
                            nav: name.clone(),
                            context: context.to_string(),
                        })
                    }
                    Some(_) => {
                        return Err(RenderError::Unsupported(format!(
                            "'{name}' is a navigation; use a field of it, e.g. {name}/id"
                        )))
                    }
                    None => return Err(unknown_field(set, name)),
                },
            },
            [nav, field] => {
                let n = set
                    .navigation(nav)
                    .ok_or_else(|| RenderError::UnknownNavigation {
                        set: set.name.to_string(),
                        nav: nav.clone(),
                    })?;
                if matches!(n.kind, NavKind::ToMany { .. }) {
                    return Err(RenderError::ToMany {
                        set: set.name.to_string(),
                        nav: nav.clone(),
                        context: context.to_string(),
                    });
                }
                let target = self.target(n)?;
                let f = target
                    .field(field)
                    .ok_or_else(|| unknown_field(target, field))?;
                if !f.filterable {
                    return Err(RenderError::NotFilterable {
                        set: target.name.to_string(),
                        field: field.clone(),
                    });
                }
                Resolved::Nav(n, target, f)
            }
            _ => {
                return Err(RenderError::Unsupported(format!(
                    "path '{}': only one navigation hop is supported",
                    path.join("/")
                )))
            }
        };
        if let Resolved::Own(f) = r {
            if !f.filterable {
                return Err(RenderError::NotFilterable {
                    set: set.name.to_string(),
                    field: f.name.to_string(),
                });
            }
        }
        Ok(r)
    }

    /// Checks `e` against the schema and returns its type.
    fn check(&self, set: &'static EntitySet, e: &Expr) -> Result<Ty, RenderError> {
        let mismatch = |m: String| Err(RenderError::TypeMismatch(m));
        match e {
            Expr::Literal(v) => Ok(Ty::of_value(v)),
            Expr::Path(p) => Ok(Ty::of_field(self.resolve(set, p, "$filter")?.field().ty)),
            Expr::Not(x) => match self.check(set, x)? {
                Ty::Bool => Ok(Ty::Bool),
                t => mismatch(format!(
                    "'not' needs a condition, got {} ({})",
                    describe(x),
                    t.name()
                )),
            },
            Expr::And(xs) | Expr::Or(xs) => {
                let word = if matches!(e, Expr::And(_)) {
                    "and"
                } else {
                    "or"
                };
                for x in xs {
                    let t = self.check(set, x)?;
                    if t != Ty::Bool {
                        return mismatch(format!(
                            "'{word}' needs conditions, got {} ({})",
                            describe(x),
                            t.name()
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            Expr::Compare { op, left, right } => {
                let (tl, tr) = (self.check(set, left)?, self.check(set, right)?);
                if tl == Ty::Null || tr == Ty::Null {
                    if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                        return mismatch(format!(
                            "null can only be used with eq and ne, not {}",
                            op.keyword()
                        ));
                    }
                    if tl == Ty::Null && tr == Ty::Null {
                        return mismatch("comparing null with null".to_string());
                    }
                    return Ok(Ty::Bool);
                }
                if tl == Ty::Json || tr == Ty::Json {
                    return mismatch("json fields can only be compared with null".to_string());
                }
                if tl == Ty::Timestamp || tr == Ty::Timestamp {
                    for (x, t) in [(&**left, tl), (&**right, tr)] {
                        match x {
                            Expr::Literal(Value::Text(t)) => {
                                timestamp_literal(t)?;
                            }
                            // A string property may hold anything: it is
                            // no instant to compare with.
                            _ if t != Ty::Timestamp => {
                                return mismatch(format!(
                                    "a timestamp compares only with a timestamp or a \
                                     timestamp literal, not {} ({})",
                                    describe(x),
                                    t.name()
                                ));
                            }
                            _ => {}
                        }
                    }
                }
                if !tl.comparable(tr, *op) {
                    return mismatch(format!(
                        "cannot compare {} ({}) {} {} ({})",
                        describe(left),
                        tl.name(),
                        op.keyword(),
                        describe(right),
                        tr.name()
                    ));
                }
                Ok(Ty::Bool)
            }
            Expr::In { target, list } => {
                if !matches!(**target, Expr::Path(_)) {
                    return Err(RenderError::Unsupported(format!(
                        "the left side of 'in' must be a property, not {}",
                        describe(target)
                    )));
                }
                let t = self.check(set, target)?;
                if matches!(t, Ty::Null | Ty::Json) {
                    return mismatch(format!(
                        "'in' cannot test {} ({})",
                        describe(target),
                        t.name()
                    ));
                }
                if list.is_empty() {
                    return mismatch("'in' needs at least one value".to_string());
                }
                for v in list {
                    if let (Ty::Timestamp, Value::Text(t)) = (t, v) {
                        timestamp_literal(t)?;
                    }
                    let tv = Ty::of_value(v);
                    if tv != Ty::Null && !t.comparable(tv, CmpOp::Eq) {
                        return mismatch(format!(
                            "'in' list value {v} ({}) does not fit {} ({})",
                            tv.name(),
                            describe(target),
                            t.name()
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            Expr::Call { func, args } => {
                let [a, b] = args.as_slice() else {
                    return mismatch(format!("{} takes 2 arguments", func.name()));
                };
                let ta = self.check(set, a)?;
                if !ta.textual() {
                    return mismatch(format!(
                        "{} needs a string, got {} ({})",
                        func.name(),
                        describe(a),
                        ta.name()
                    ));
                }
                if !matches!(b, Expr::Literal(Value::Text(_))) {
                    return Err(RenderError::Unsupported(format!(
                        "the second argument of {} must be a string literal",
                        func.name()
                    )));
                }
                Ok(Ty::Bool)
            }
        }
    }

    // ---- predicates ----------------------------------------------------

    /// Appends `e` (a checked condition) as a WHERE term.
    fn pred(&mut self, set: &'static EntitySet, alias: &str, e: &Expr) -> Result<(), RenderError> {
        match e {
            Expr::And(xs) | Expr::Or(xs) => {
                let word = if matches!(e, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                self.sql.push('(');
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(word);
                    }
                    self.pred(set, alias, x)?;
                }
                self.sql.push(')');
                Ok(())
            }
            Expr::Not(x) => {
                self.sql.push_str("(NOT ");
                self.pred(set, alias, x)?;
                self.sql.push(')');
                Ok(())
            }
            _ => self.atom(set, alias, e),
        }
    }

    /// Appends an atomic condition. When it reads fields over navigations,
    /// it becomes `EXISTS (SELECT 1 FROM <targets> WHERE <join> AND <access
    /// rule of each target> AND <condition>)`, so rows the caller cannot
    /// read never match.
    fn atom(&mut self, set: &'static EntitySet, alias: &str, e: &Expr) -> Result<(), RenderError> {
        let mut navs: Vec<&str> = Vec::new();
        collect_navs(e, &mut navs);
        let mut scope = Scope {
            set,
            alias,
            navs: Vec::new(),
        };
        if navs.is_empty() {
            return self.value(&scope, e, None);
        }
        let mut joined = Vec::new();
        for name in &navs {
            let nav = set
                .navigation(name)
                .ok_or_else(|| RenderError::UnknownNavigation {
                    set: set.name.to_string(),
                    nav: name.to_string(),
                })?;
            let NavKind::ToOne { local_column } = nav.kind else {
                return Err(RenderError::ToMany {
                    set: set.name.to_string(),
                    nav: name.to_string(),
                    context: "$filter".to_string(),
                });
            };
            let target = self.target(nav)?;
            let a = self.alias();
            joined.push((target, a.clone(), local_column));
            scope.navs.push((nav.name, a));
        }
        self.sql.push_str("(EXISTS (SELECT 1 FROM ");
        for (i, (target, a, _)) in joined.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            let _ = write!(self.sql, "{} AS {a}", ident(target.table));
        }
        self.sql.push_str(" WHERE ");
        for (target, a, local) in &joined {
            let _ = write!(
                self.sql,
                "{a}.{} = {alias}.{} AND ",
                ident(target.key),
                ident(local)
            );
            self.row_filter(target, a)?;
            self.sql.push_str(" AND ");
        }
        self.value(&scope, e, None)?;
        self.sql.push(')');
        // One hop whose link is null: OData reads the path as null, so the
        // condition is judged with null there (`pinned_release/status ne
        // 'x'` holds for a device that pins nothing). A link to a row the
        // caller may not read stays unmatched: that is the EXISTS above.
        if let [(_, _, local)] = joined.as_slice() {
            let _ = write!(self.sql, " OR ({alias}.{} IS NULL AND ", ident(local));
            for n in &mut scope.navs {
                n.1 = String::new();
            }
            self.value(&scope, e, None)?;
            self.sql.push(')');
        }
        self.sql.push(')');
        Ok(())
    }

    /// Appends `e` as an SQL value expression. `hint` is the type of the
    /// other side of a comparison, to bind integer literals as decimals
    /// where a decimal is compared.
    fn value(&mut self, scope: &Scope<'_>, e: &Expr, hint: Option<Ty>) -> Result<(), RenderError> {
        match e {
            Expr::Literal(v) => {
                let v = match (v, hint) {
                    (Value::Int(i), Some(Ty::Float)) => Value::Float(*i as f64),
                    _ => v.clone(),
                };
                self.param(v);
            }
            Expr::Path(p) => {
                let r = self.resolve(scope.set, p, "$filter")?;
                match r {
                    Resolved::Own(f) => {
                        let _ = write!(self.sql, "{}.{}", scope.alias, ident(f.column));
                    }
                    Resolved::Nav(n, _, f) => {
                        let a = scope
                            .navs
                            .iter()
                            .find(|(name, _)| *name == n.name)
                            .map(|(_, a)| a.clone())
                            .ok_or_else(|| {
                                RenderError::Unsupported(format!("navigation '{}' here", n.name))
                            })?;
                        if a.is_empty() {
                            // The link is null (see `atom`).
                            self.sql.push_str("NULL");
                        } else {
                            let _ = write!(self.sql, "{a}.{}", ident(f.column));
                        }
                    }
                }
            }
            Expr::Not(x) => {
                self.sql.push_str("(NOT ");
                self.value(scope, x, None)?;
                self.sql.push(')');
            }
            Expr::And(xs) | Expr::Or(xs) => {
                let word = if matches!(e, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                self.sql.push('(');
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(word);
                    }
                    self.value(scope, x, None)?;
                }
                self.sql.push(')');
            }
            Expr::Compare { op, left, right } => {
                let null_test = match (&**left, &**right) {
                    (x, Expr::Literal(Value::Null)) | (Expr::Literal(Value::Null), x) => Some(x),
                    _ => None,
                };
                if let Some(x) = null_test {
                    self.sql.push('(');
                    self.value(scope, x, None)?;
                    self.sql.push_str(if *op == CmpOp::Eq {
                        " IS NULL)"
                    } else {
                        " IS NOT NULL)"
                    });
                    return Ok(());
                }
                let tl = self.check(scope.set, left)?;
                let tr = self.check(scope.set, right)?;
                // OData's null semantics, not SQL's three-valued logic: a
                // comparison is always true or false. null equals null and
                // nothing else, so `null ne 'x'` is true, `null eq 'x'` and
                // `null gt 1` are false, and `not (x eq 'a')` keeps the rows
                // where x is null. Only property paths can be null here
                // (null literals were handled above).
                let paths: Vec<&Expr> = [&**left, &**right]
                    .into_iter()
                    .filter(|x| matches!(x, Expr::Path(_)))
                    .collect();
                // Timestamps compare as instants, not as text: `…:31Z`
                // equals `…:31.000Z` and `…:31+00:00`.
                let ts = tl == Ty::Timestamp || tr == Ty::Timestamp;
                if paths.len() == 2 && matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    let (is, is_not) = match self.dialect {
                        Dialect::Sqlite => (" IS ", " IS NOT "),
                        Dialect::Postgres => (" IS NOT DISTINCT FROM ", " IS DISTINCT FROM "),
                    };
                    self.sql.push('(');
                    self.operand(scope, left, Some(tr), ts)?;
                    self.sql
                        .push_str(if *op == CmpOp::Eq { is } else { is_not });
                    self.operand(scope, right, Some(tl), ts)?;
                    self.sql.push(')');
                    return Ok(());
                }
                self.sql.push_str("((");
                self.operand(scope, left, Some(tr), ts)?;
                let _ = write!(self.sql, " {} ", op.sql());
                self.operand(scope, right, Some(tl), ts)?;
                self.sql.push(')');
                for p in paths {
                    // ne: true where the property is null (a path against a
                    // literal); the others: false there.
                    self.sql
                        .push_str(if *op == CmpOp::Ne { " OR " } else { " AND " });
                    self.value(scope, p, None)?;
                    self.sql.push_str(if *op == CmpOp::Ne {
                        " IS NULL"
                    } else {
                        " IS NOT NULL"
                    });
                }
                self.sql.push(')');
            }
            Expr::In { target, list } => {
                let t = self.check(scope.set, target)?;
                let values: Vec<&Value> = list.iter().filter(|v| **v != Value::Null).collect();
                let has_null = values.len() < list.len();
                self.sql.push('(');
                let ts = t == Ty::Timestamp;
                if !values.is_empty() {
                    self.operand(scope, target, None, ts)?;
                    self.sql.push_str(" IN (");
                    for (i, v) in values.into_iter().enumerate() {
                        if i > 0 {
                            self.sql.push_str(", ");
                        }
                        self.operand(scope, &Expr::Literal(v.clone()), Some(t), ts)?;
                    }
                    self.sql.push(')');
                    if has_null {
                        self.sql.push_str(" OR ");
                    } else {
                        // false, not SQL's unknown, where the property is
                        // null, so `not (x in (…))` keeps those rows.
                        self.sql.push_str(" AND ");
                        self.value(scope, target, None)?;
                        self.sql.push_str(" IS NOT NULL");
                    }
                }
                if has_null {
                    self.value(scope, target, None)?;
                    self.sql.push_str(" IS NULL");
                }
                self.sql.push(')');
            }
            Expr::Call { func, args } => {
                let (Some(a), Some(Expr::Literal(Value::Text(s)))) = (args.first(), args.get(1))
                else {
                    return Err(RenderError::Unsupported(format!(
                        "the second argument of {} must be a string literal",
                        func.name()
                    )));
                };
                let p = like_escape(s);
                let pattern = match func {
                    Func::Contains => format!("%{p}%"),
                    Func::StartsWith => format!("{p}%"),
                    Func::EndsWith => format!("%{p}"),
                };
                self.sql.push('(');
                self.value(scope, a, None)?;
                self.sql.push_str(match self.dialect {
                    Dialect::Sqlite => " LIKE ",
                    Dialect::Postgres => " ILIKE ",
                });
                self.param(Value::Text(pattern));
                self.sql.push_str(" ESCAPE '\\')");
            }
        }
        Ok(())
    }

    /// Appends a comparison operand; when the comparison is between
    /// timestamps (`ts`), as an instant: `julianday(x)` in SQLite,
    /// `(x)::timestamptz` in PostgreSQL, a literal in its checked form.
    fn operand(
        &mut self,
        scope: &Scope<'_>,
        e: &Expr,
        hint: Option<Ty>,
        ts: bool,
    ) -> Result<(), RenderError> {
        if !ts {
            return self.value(scope, e, hint);
        }
        let lit;
        let e = match e {
            Expr::Literal(Value::Text(t)) => {
                lit = Expr::Literal(Value::Text(timestamp_literal(t)?));
                &lit
            }
            _ => e,
        };
        match self.dialect {
            Dialect::Sqlite => {
                self.sql.push_str("julianday(");
                self.value(scope, e, hint)?;
                self.sql.push(')');
            }
            Dialect::Postgres => {
                self.sql.push('(');
                self.value(scope, e, hint)?;
                self.sql.push_str(")::timestamptz");
            }
        }
        Ok(())
    }

    // ---- ordering and paging -----------------------------------------

    fn order_limit(
        &mut self,
        es: &'static EntitySet,
        alias: &str,
        q: &QueryOptions,
    ) -> Result<(), RenderError> {
        self.order_by(es, alias, &q.orderby)?;
        self.limit(q.top, q.skip)
    }

    fn order_by(
        &mut self,
        es: &'static EntitySet,
        alias: &str,
        keys: &[OrderBy],
    ) -> Result<(), RenderError> {
        self.sql.push_str(" ORDER BY ");
        let mut by_key = false;
        for k in keys {
            let r = self.resolve(es, &k.path, "$orderby")?;
            match r {
                Resolved::Own(f) => {
                    by_key |= f.column == es.key;
                    let _ = write!(self.sql, "{alias}.{}", ident(f.column));
                }
                Resolved::Nav(n, target, f) => {
                    let NavKind::ToOne { local_column } = n.kind else {
                        return Err(RenderError::ToMany {
                            set: es.name.to_string(),
                            nav: n.name.to_string(),
                            context: "$orderby".to_string(),
                        });
                    };
                    let a = self.alias();
                    let _ = write!(
                        self.sql,
                        "(SELECT {a}.{} FROM {} AS {a} WHERE {a}.{} = {alias}.{} AND ",
                        ident(f.column),
                        ident(target.table),
                        ident(target.key),
                        ident(local_column)
                    );
                    self.row_filter(target, &a)?;
                    self.sql.push(')');
                }
            }
            self.sql.push_str(if k.desc {
                " DESC NULLS LAST, "
            } else {
                " ASC NULLS FIRST, "
            });
        }
        if by_key {
            // Drop the trailing ", ".
            self.sql.truncate(self.sql.len() - 2);
        } else {
            let _ = write!(self.sql, "{alias}.{} ASC", ident(es.key));
        }
        Ok(())
    }

    fn limit(&mut self, top: Option<u64>, skip: Option<u64>) -> Result<(), RenderError> {
        let as_value = |n: u64, what: &str| {
            i64::try_from(n)
                .map(Value::Int)
                .map_err(|_| RenderError::Unsupported(format!("{what} larger than {}", i64::MAX)))
        };
        match (top, self.dialect) {
            (Some(t), _) => {
                self.sql.push_str(" LIMIT ");
                self.param(as_value(t, "$top")?);
            }
            (None, Dialect::Sqlite) if skip.is_some() => self.sql.push_str(" LIMIT -1"),
            _ => {}
        }
        if let Some(s) = skip {
            self.sql.push_str(" OFFSET ");
            self.param(as_value(s, "$skip")?);
        }
        Ok(())
    }

    // ---- JSON objects ----------------------------------------------------

    /// Appends the JSON object expression of one row of `es` aliased `alias`.
    fn object(
        &mut self,
        es: &'static EntitySet,
        alias: &str,
        q: &QueryOptions,
    ) -> Result<(), RenderError> {
        if q.count && self.aliases > 1 {
            return Err(RenderError::Unsupported(
                "$count inside $expand".to_string(),
            ));
        }
        let expanded: Vec<&str> = q.expand.iter().map(|e| e.nav.as_str()).collect();
        let fields: Vec<&'static Field> = match &q.select {
            Some(names) => {
                let mut out: Vec<&'static Field> = Vec::new();
                for n in names {
                    let f = es.field(n).ok_or_else(|| RenderError::UnknownField {
                        set: es.name.to_string(),
                        field: n.clone(),
                    })?;
                    if !f.selectable {
                        return Err(RenderError::NotSelectable {
                            set: es.name.to_string(),
                            field: n.clone(),
                        });
                    }
                    if !out.iter().any(|o| o.name == f.name) {
                        out.push(f);
                    }
                }
                out
            }
            None => es.fields.iter().filter(|f| f.selectable).collect(),
        };
        // An expanded navigation replaces a field of the same name (e.g. the
        // `fleet` foreign key of a device becomes the fleet object).
        let fields: Vec<&'static Field> = fields
            .into_iter()
            .filter(|f| !expanded.contains(&f.name))
            .collect();
        let pairs = fields.len() + q.expand.len();
        if self.dialect == Dialect::Postgres && pairs > 50 {
            return Err(RenderError::Unsupported(format!(
                "more than 50 fields and navigations in one object of '{}'",
                es.name
            )));
        }
        self.sql.push_str(match self.dialect {
            Dialect::Sqlite => "json_object(",
            Dialect::Postgres => "json_build_object(",
        });
        let mut first = true;
        for f in fields {
            if !first {
                self.sql.push_str(", ");
            }
            first = false;
            let col = format!("{alias}.{}", ident(f.column));
            let _ = write!(self.sql, "{}, ", text_const(f.name));
            match (self.dialect, f.ty) {
                (Dialect::Sqlite, FieldType::Bool) => {
                    let _ = write!(
                        self.sql,
                        "json(CASE WHEN {col} IS NULL THEN 'null' WHEN {col} THEN 'true' ELSE 'false' END)"
                    );
                }
                (Dialect::Sqlite, FieldType::Json) => {
                    let _ = write!(
                        self.sql,
                        "json(CASE WHEN json_valid({col}) THEN {col} ELSE json_quote({col}) END)"
                    );
                }
                (Dialect::Postgres, FieldType::Json) => {
                    let _ = write!(self.sql, "{col}::json");
                }
                _ => self.sql.push_str(&col),
            }
        }
        for ex in &q.expand {
            if !first {
                self.sql.push_str(", ");
            }
            first = false;
            self.expansion(es, alias, ex)?;
        }
        self.sql.push(')');
        Ok(())
    }

    /// Appends `'nav', <object, null or array>` for one `$expand` item.
    fn expansion(
        &mut self,
        es: &'static EntitySet,
        alias: &str,
        ex: &Expand,
    ) -> Result<(), RenderError> {
        let nav = es
            .navigation(&ex.nav)
            .ok_or_else(|| RenderError::UnknownNavigation {
                set: es.name.to_string(),
                nav: ex.nav.clone(),
            })?;
        let target = self.target(nav)?;
        let o = &ex.options;
        let _ = write!(self.sql, "{}, ", text_const(nav.name));
        let a = self.alias();
        match nav.kind {
            NavKind::ToOne { local_column } => {
                if !o.orderby.is_empty() || o.top.is_some() || o.skip.is_some() {
                    return Err(RenderError::Unsupported(format!(
                        "$orderby, $top and $skip in the to-one expansion '{}'",
                        nav.name
                    )));
                }
                if self.dialect == Dialect::Sqlite {
                    self.sql.push_str("json(");
                }
                self.sql.push_str("(SELECT ");
                self.object(target, &a, o)?;
                let _ = write!(
                    self.sql,
                    " FROM {} AS {a} WHERE {a}.{} = {alias}.{} AND ",
                    ident(target.table),
                    ident(target.key),
                    ident(local_column)
                );
                self.row_filter(target, &a)?;
                self.where_filter(target, &a, o.filter.as_ref())?;
                self.sql.push(')');
                if self.dialect == Dialect::Sqlite {
                    self.sql.push(')');
                }
            }
            NavKind::ToMany { remote_column } => {
                let j = format!("j{}", self.aliases);
                self.aliases += 1;
                match self.dialect {
                    Dialect::Sqlite => {
                        let _ = write!(
                            self.sql,
                            "json((SELECT json_group_array(json({j}.j)) FROM (SELECT "
                        );
                    }
                    Dialect::Postgres => {
                        let _ = write!(
                            self.sql,
                            "(SELECT COALESCE(json_agg({j}.j), '[]'::json) FROM (SELECT "
                        );
                    }
                }
                self.object(target, &a, o)?;
                let _ = write!(
                    self.sql,
                    " AS j FROM {} AS {a} WHERE {a}.{} = {alias}.{} AND ",
                    ident(target.table),
                    ident(remote_column),
                    ident(es.key)
                );
                self.row_filter(target, &a)?;
                self.where_filter(target, &a, o.filter.as_ref())?;
                self.order_limit(target, &a, o)?;
                let _ = write!(self.sql, ") AS {j})");
                if self.dialect == Dialect::Sqlite {
                    self.sql.push(')');
                }
            }
        }
        Ok(())
    }
}

/// The navigation names used by paths inside `e` (first segments of
/// two-segment paths), each once.
fn collect_navs<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
    match e {
        Expr::Literal(_) => {}
        Expr::Path(p) => {
            if p.len() > 1 {
                if let Some(first) = p.first() {
                    if !out.contains(&first.as_str()) {
                        out.push(first.as_str());
                    }
                }
            }
        }
        Expr::Not(x) => collect_navs(x, out),
        Expr::And(xs) | Expr::Or(xs) => xs.iter().for_each(|x| collect_navs(x, out)),
        Expr::Compare { left, right, .. } => {
            collect_navs(left, out);
            collect_navs(right, out);
        }
        Expr::In { target, .. } => collect_navs(target, out),
        Expr::Call { args, .. } => args.iter().for_each(|x| collect_navs(x, out)),
    }
}
