//! SQL parameter values and the SQL dialects the renderer targets.

/// The SQL dialect a statement is rendered for.
///
/// Both use `$1, $2, …` placeholders, numbered in the order they appear in the
/// text (so SQLite, which treats `$N` as a named parameter indexed by first
/// appearance, binds them the same way as PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite 3.38 or newer (json_object, json_group_array, NULLS FIRST/LAST).
    Sqlite,
    /// PostgreSQL 12 or newer (json_build_object, json_agg).
    Postgres,
}

/// A literal: a bound SQL parameter, or a key parsed by [`crate::parse_key`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean (SQLite stores it as 0/1; bind it as an integer there).
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// A string.
    Text(String),
}

impl Value {
    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "decimal",
            Value::Text(_) => "string",
        }
    }
}

impl std::fmt::Display for Value {
    /// Formats the value the way it is written in an OData URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
        }
    }
}
