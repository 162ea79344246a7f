//! A bound on the rows one query makes the database produce, so a server can
//! refuse an `$expand` tree that would multiply rows (`fleet → device →
//! fleet → device`) before running it.
//!
//! The estimate is the sum, over the main set and every expansion level, of
//! the rows that level can yield:
//! - the main set yields `rows` (the page size, `$top`, or 1 for a key);
//! - a to-one expansion yields at most one row per parent row;
//! - a to-many expansion yields at most `min($top, count)` rows per parent
//!   row, where `count` is how many rows of the target set the caller can
//!   see; and when the parents are distinct rows (the main set, or a to-many
//!   expansion of distinct rows), the children are distinct too, so the level
//!   yields at most `count` rows in all.
//!
//! `$filter` and `$skip` inside expansions are ignored: the bound stays an
//! upper bound.

use crate::ast::QueryOptions;
use crate::schema::{EntitySet, NavKind, Schema};
use crate::RenderError;

/// The entity sets reached by a to-many `$expand` anywhere in `q` (each once):
/// the sets whose visible row counts [`expand_cost`] needs.
pub fn to_many_targets(
    schema: &Schema,
    set: &str,
    q: &QueryOptions,
) -> Result<Vec<&'static str>, RenderError> {
    let es = schema
        .set(set)
        .ok_or_else(|| RenderError::UnknownSet(set.to_string()))?;
    let mut out = Vec::new();
    collect(schema, es, q, &mut out)?;
    Ok(out)
}

fn collect(
    schema: &Schema,
    es: &EntitySet,
    q: &QueryOptions,
    out: &mut Vec<&'static str>,
) -> Result<(), RenderError> {
    for ex in &q.expand {
        let (nav, target) = hop(schema, es, &ex.nav)?;
        if matches!(nav, NavKind::ToMany { .. }) && !out.contains(&target.name) {
            out.push(target.name);
        }
        collect(schema, target, &ex.options, out)?;
    }
    Ok(())
}

fn hop(
    schema: &Schema,
    es: &EntitySet,
    name: &str,
) -> Result<(NavKind, &'static EntitySet), RenderError> {
    let nav = es
        .navigation(name)
        .ok_or_else(|| RenderError::UnknownNavigation {
            set: es.name.to_string(),
            nav: name.to_string(),
        })?;
    let target = schema.set(nav.target).ok_or_else(|| {
        RenderError::BadSchema(format!(
            "navigation '{}' of '{}' targets unknown set '{}'",
            nav.name, es.name, nav.target
        ))
    })?;
    Ok((nav.kind, target))
}

/// The estimated number of rows a query over `set` produces, main rows and
/// expanded rows together (see the module doc). `rows` bounds the main set's
/// rows; `visible(set)` is the number of rows of `set` the caller can see.
/// Saturates at `u64::MAX`.
pub fn expand_cost(
    schema: &Schema,
    set: &str,
    q: &QueryOptions,
    rows: u64,
    visible: &dyn Fn(&str) -> u64,
) -> Result<u64, RenderError> {
    let es = schema
        .set(set)
        .ok_or_else(|| RenderError::UnknownSet(set.to_string()))?;
    let mut total = rows;
    walk(schema, es, q, rows, true, visible, &mut total)?;
    Ok(total)
}

fn walk(
    schema: &Schema,
    es: &EntitySet,
    q: &QueryOptions,
    rows: u64,
    distinct: bool,
    visible: &dyn Fn(&str) -> u64,
    total: &mut u64,
) -> Result<(), RenderError> {
    for ex in &q.expand {
        let (kind, target) = hop(schema, es, &ex.nav)?;
        let (n, d) = match kind {
            NavKind::ToOne { .. } => (rows, false),
            NavKind::ToMany { .. } => {
                let count = visible(target.name);
                let per = ex.options.top.map_or(count, |t| t.min(count));
                let n = rows.saturating_mul(per);
                if distinct {
                    (n.min(count), true)
                } else {
                    (n, false)
                }
            }
        };
        *total = total.saturating_add(n);
        walk(schema, target, &ex.options, n, d, visible, total)?;
    }
    Ok(())
}
