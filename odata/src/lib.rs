//! OData v4 query options (`$filter`, `$select`, `$expand`, `$orderby`,
//! `$top`, `$skip`, `$count`) parsed from a raw URL query string and rendered
//! into one parameterised SQL statement for SQLite or PostgreSQL, with the
//! caller's access rules applied to every entity set the query touches.
//!
//! Pure logic: no I/O and no database dependency. See `docs/design/odata.md`.

mod ast;
mod cost;
mod error;
mod filter;
mod query;
mod render;
mod schema;
mod value;

pub use ast::{CmpOp, Expand, Expr, Func, OrderBy, QueryOptions};
pub use cost::{expand_cost, to_many_targets};
pub use error::{ParseError, RenderError};
pub use filter::{MAX_DEPTH, MAX_NODES};
pub use query::{
    parse_filter, parse_key, parse_query, percent_decode, MAX_EXPAND_DEPTH, MAX_QUERY_LEN,
};
pub use render::{render_count, render_select, Access, AllowAll, RowFilter, Sql};
pub use schema::{EntitySet, Field, FieldType, NavKind, Navigation, Schema};
pub use value::{Dialect, Value};

#[cfg(test)]
mod tests;
