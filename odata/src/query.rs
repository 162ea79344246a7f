//! Parsing of a raw URL query string into [`QueryOptions`]: percent-decoding,
//! `$select`, `$expand` (with nested options), `$orderby`, `$top`, `$skip`,
//! `$count`, and `$filter` through the filter parser.

use crate::ast::{Expand, OrderBy, QueryOptions};
use crate::filter::{parse_filter_as, parse_key_as};
use crate::{Expr, ParseError, Value};

/// Deepest `$expand` nesting accepted.
pub const MAX_EXPAND_DEPTH: usize = 8;
/// Longest query string accepted, in bytes.
pub const MAX_QUERY_LEN: usize = 64 * 1024;

/// Parses a raw URL query string (without or with the leading `?`).
///
/// Keys and values are percent-decoded, `+` meaning space. Options starting
/// with `$` must be one of `$filter $select $expand $orderby $top $skip
/// $count`, each at most once; other parameters (e.g. `follow=true`) are
/// ignored.
pub fn parse_query(raw_query_string: &str) -> Result<QueryOptions, ParseError> {
    let raw = raw_query_string
        .strip_prefix('?')
        .unwrap_or(raw_query_string);
    if raw.len() > MAX_QUERY_LEN {
        return Err(ParseError::new(
            "query",
            None,
            format!("query string longer than {MAX_QUERY_LEN} bytes"),
        ));
    }
    let mut q = QueryOptions::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in raw.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode("query parameter name", k)?;
        if !key.starts_with('$') {
            continue;
        }
        let value = percent_decode(&key, v)?;
        if seen.contains(&key) {
            return Err(ParseError::new(&key, None, "given more than once"));
        }
        apply_option(&mut q, &key, &key, &value, 0)?;
        seen.push(key);
    }
    Ok(q)
}

/// Parses a `$filter` expression (already percent-decoded).
pub fn parse_filter(s: &str) -> Result<Expr, ParseError> {
    parse_filter_as("$filter", s)
}

/// Parses an entity key, the `42` or `'abc'` in `device(42)`: an integer or a
/// quoted string with `''` escaping. The text must already be percent-decoded.
pub fn parse_key(s: &str) -> Result<Value, ParseError> {
    parse_key_as("key", s)
}

/// Decodes `%XX` escapes and `+` (space); the result must be UTF-8.
pub fn percent_decode(option: &str, s: &str) -> Result<String, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
                match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        return Err(ParseError::at(option, s, i, "invalid percent-encoding"));
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        ParseError::new(
            option,
            None,
            format!("value is not valid UTF-8 after percent-decoding (byte {bad})"),
        )
    })
}

/// Sets one option on `q`. `label` names it in errors; `depth` is the
/// `$expand` nesting level (0 at the top).
fn apply_option(
    q: &mut QueryOptions,
    name: &str,
    label: &str,
    value: &str,
    depth: usize,
) -> Result<(), ParseError> {
    match name {
        "$filter" => q.filter = Some(parse_filter_as(label, value)?),
        "$select" => q.select = parse_select(label, value)?,
        "$expand" => q.expand = parse_expand(label, value, depth + 1)?,
        "$orderby" => q.orderby = parse_orderby(label, value)?,
        "$top" => q.top = Some(parse_count_number(label, value)?),
        "$skip" => q.skip = Some(parse_count_number(label, value)?),
        "$count" if depth > 0 => {
            return Err(ParseError::new(
                label,
                None,
                "$count is not supported inside $expand",
            ))
        }
        "$count" => {
            q.count = match value.trim() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ParseError::new(
                        label,
                        Some(1),
                        format!("expected true or false, found '{other}'"),
                    ))
                }
            }
        }
        other => {
            let known = "$filter, $select, $expand, $orderby, $top, $skip, $count";
            return Err(ParseError::new(
                label,
                None,
                format!("unknown query option '{other}' (supported: {known})"),
            ));
        }
    }
    Ok(())
}

fn parse_count_number(label: &str, value: &str) -> Result<u64, ParseError> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ParseError::new(
            label,
            Some(1),
            format!("expected a non-negative integer, found '{value}'"),
        ));
    }
    match v.parse::<i64>() {
        Ok(n) => Ok(n.unsigned_abs()),
        Err(_) => Err(ParseError::new(
            label,
            Some(1),
            format!("integer out of range '{v}'"),
        )),
    }
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Items of `s` separated by `sep` outside quotes and parentheses, each with
/// its byte offset, untrimmed.
fn split_top<'a>(label: &str, s: &'a str, sep: u8) -> Result<Vec<(usize, &'a str)>, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut start = 0;
    let mut open_at = Vec::new();
    let mut quote_at = 0;
    for (i, &c) in b.iter().enumerate() {
        if in_str {
            if c == b'\'' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'\'' => {
                in_str = true;
                quote_at = i;
            }
            b'(' => {
                depth += 1;
                open_at.push(i);
            }
            b')' => {
                if depth == 0 {
                    return Err(ParseError::at(label, s, i, "unbalanced ')'"));
                }
                depth -= 1;
                open_at.pop();
            }
            _ if c == sep && depth == 0 => {
                out.push((start, &s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_str {
        return Err(ParseError::at(
            label,
            s,
            quote_at,
            "unterminated string literal",
        ));
    }
    if let Some(&p) = open_at.last() {
        return Err(ParseError::at(label, s, p, "'(' is never closed"));
    }
    out.push((start, &s[start..]));
    Ok(out)
}

/// Offset of the first non-space byte of `item` within the whole value.
fn trimmed(off: usize, item: &str) -> (usize, &str) {
    let lead = item.len() - item.trim_start().len();
    (off + lead, item.trim())
}

fn parse_select(label: &str, value: &str) -> Result<Option<Vec<String>>, ParseError> {
    let mut out: Vec<String> = Vec::new();
    let mut star = false;
    for (off, item) in split_top(label, value, b',')? {
        let (off, item) = trimmed(off, item);
        if item == "*" {
            star = true;
        } else if is_ident(item) {
            if !out.iter().any(|x| x == item) {
                out.push(item.to_string());
            }
        } else if item.is_empty() {
            return Err(ParseError::at(label, value, off, "expected a field name"));
        } else {
            return Err(ParseError::at(
                label,
                value,
                off,
                format!("'{item}' is not a field name"),
            ));
        }
    }
    Ok(if star { None } else { Some(out) })
}

fn parse_path(label: &str, value: &str, off: usize, s: &str) -> Result<Vec<String>, ParseError> {
    let segs: Vec<&str> = s.split('/').collect();
    if segs.len() > 8 || !segs.iter().all(|x| is_ident(x)) {
        return Err(ParseError::at(
            label,
            value,
            off,
            format!("'{s}' is not a property path"),
        ));
    }
    Ok(segs.into_iter().map(str::to_string).collect())
}

fn parse_orderby(label: &str, value: &str) -> Result<Vec<OrderBy>, ParseError> {
    let mut out = Vec::new();
    for (off, item) in split_top(label, value, b',')? {
        let (off, item) = trimmed(off, item);
        if item.is_empty() {
            return Err(ParseError::at(label, value, off, "expected a property"));
        }
        let mut words = item.split_whitespace();
        let path = words.next().unwrap_or_default();
        let path = parse_path(label, value, off, path)?;
        let desc = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(ParseError::at(
                    label,
                    value,
                    off,
                    format!("expected 'asc' or 'desc', found '{other}'"),
                ))
            }
        };
        if let Some(extra) = words.next() {
            return Err(ParseError::at(
                label,
                value,
                off,
                format!("unexpected '{extra}' (separate keys with ',')"),
            ));
        }
        out.push(OrderBy { path, desc });
    }
    Ok(out)
}

fn parse_expand(label: &str, value: &str, depth: usize) -> Result<Vec<Expand>, ParseError> {
    if depth > MAX_EXPAND_DEPTH {
        return Err(ParseError::new(
            label,
            None,
            format!("$expand nested too deeply (limit {MAX_EXPAND_DEPTH})"),
        ));
    }
    let mut out: Vec<Expand> = Vec::new();
    for (off, item) in split_top(label, value, b',')? {
        let (off, item) = trimmed(off, item);
        let (name, inner) = match item.find('(') {
            None => (item, None),
            Some(p) => {
                if !item.ends_with(')') {
                    return Err(ParseError::at(
                        label,
                        value,
                        off + p,
                        "expected ')' to close the nested options",
                    ));
                }
                (
                    item[..p].trim_end(),
                    Some((off + p + 1, &item[p + 1..item.len() - 1])),
                )
            }
        };
        if name == "*" {
            return Err(ParseError::at(
                label,
                value,
                off,
                "$expand=* is not supported; name the navigations",
            ));
        }
        if !is_ident(name) {
            let msg = if name.is_empty() {
                "expected a navigation name".to_string()
            } else {
                format!("'{name}' is not a navigation name (nest $expand instead of paths)")
            };
            return Err(ParseError::at(label, value, off, msg));
        }
        if out.iter().any(|e| e.nav == name) {
            return Err(ParseError::at(
                label,
                value,
                off,
                format!("'{name}' expanded twice"),
            ));
        }
        let mut options = QueryOptions::default();
        if let Some((inner_off, inner)) = inner {
            let mut seen: Vec<String> = Vec::new();
            for (o, opt) in split_top(label, inner, b';')? {
                let (o, opt) = trimmed(o, opt);
                if opt.is_empty() {
                    continue;
                }
                let Some((k, v)) = opt.split_once('=') else {
                    return Err(ParseError::at(
                        label,
                        value,
                        inner_off + o,
                        format!("expected '$option=value', found '{opt}'"),
                    ));
                };
                let k = k.trim();
                let nested_label = format!("{label}/{name}/{k}");
                if seen.iter().any(|s| s == k) {
                    return Err(ParseError::new(&nested_label, None, "given more than once"));
                }
                apply_option(&mut options, k, &nested_label, v, depth)?;
                seen.push(k.to_string());
            }
        }
        out.push(Expand {
            nav: name.to_string(),
            options,
        });
    }
    Ok(out)
}
