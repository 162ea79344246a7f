//! Plain-text tables for human output: a header row and left-aligned
//! columns separated by two spaces.

use serde_json::Value;

/// Renders `rows` under `headers`; each column is as wide as its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A JSON field as a table cell: strings bare, null as `-`.
pub fn cell(v: &Value, field: &str) -> String {
    match v.get(field) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let t = render(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["100".into(), "bb".into()],
            ],
        );
        assert_eq!(t, "ID   NAME\n1    a\n100  bb\n");
    }

    #[test]
    fn cells_show_null_as_dash() {
        let v = serde_json::json!({"a": null, "b": "x", "c": 3});
        assert_eq!(cell(&v, "a"), "-");
        assert_eq!(cell(&v, "b"), "x");
        assert_eq!(cell(&v, "c"), "3");
        assert_eq!(cell(&v, "zz"), "-");
    }
}
