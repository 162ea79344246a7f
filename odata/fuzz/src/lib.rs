//! The oracle shared by the fuzz target and the stable loop: parse an input,
//! render it for both dialects against a fixed schema, and check that the
//! placeholders are numbered in order and that SQLite accepts the SQL.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // a fuzz oracle panics on purpose

use resin_odata::{
    parse_filter, parse_key, parse_query, render_count, render_select, Access, Dialect, EntitySet, Field,
    FieldType, NavKind, Navigation, RowFilter, Schema, Sql, Value,
};

const fn f(name: &'static str, ty: FieldType) -> Field {
    Field { name, ty, column: name, filterable: true, selectable: true }
}

/// A small fleet/device/user schema with every field type and both kinds of navigation.
pub static SCHEMA: Schema = Schema {
    sets: &[
        EntitySet {
            name: "user",
            table: "user",
            key: "id",
            fields: &[
                f("id", FieldType::Int),
                f("username", FieldType::Text),
                Field { name: "secret", ty: FieldType::Text, column: "secret", filterable: false, selectable: false },
            ],
            navigations: &[Navigation { name: "fleets", target: "fleet", kind: NavKind::ToMany { remote_column: "owner" } }],
        },
        EntitySet {
            name: "fleet",
            table: "fleet",
            key: "id",
            fields: &[f("id", FieldType::Int), f("name", FieldType::Text), f("owner", FieldType::Int), f("config", FieldType::Json)],
            navigations: &[
                Navigation { name: "owner", target: "user", kind: NavKind::ToOne { local_column: "owner" } },
                Navigation { name: "devices", target: "device", kind: NavKind::ToMany { remote_column: "fleet" } },
            ],
        },
        EntitySet {
            name: "device",
            table: "device",
            key: "id",
            fields: &[
                f("id", FieldType::Int),
                f("name", FieldType::Text),
                f("fleet", FieldType::Int),
                f("is_online", FieldType::Bool),
                f("last_seen", FieldType::Timestamp),
                f("temp", FieldType::Float),
            ],
            navigations: &[Navigation { name: "fleet", target: "fleet", kind: NavKind::ToOne { local_column: "fleet" } }],
        },
    ],
};

const DDL: &str = r#"
CREATE TABLE "user" (id INTEGER PRIMARY KEY, username TEXT, secret TEXT);
CREATE TABLE fleet (id INTEGER PRIMARY KEY, name TEXT, owner INTEGER, config TEXT);
CREATE TABLE device (id INTEGER PRIMARY KEY, name TEXT, fleet INTEGER, is_online INTEGER, last_seen TEXT, temp REAL);
INSERT INTO "user" VALUES (1, 'a', 's');
INSERT INTO fleet VALUES (1, 'f', 1, '{"x":1}');
INSERT INTO device VALUES (1, 'd', 1, 1, '2024-01-01T00:00:00Z', 1.5);
"#;

/// Owner-based access rules with parameters, like the cloud's.
struct Owner;

impl Access for Owner {
    fn row_filter(&self, set: &EntitySet) -> Option<RowFilter> {
        let sql = match set.name {
            "user" => "{t}.id = $1",
            "fleet" => "{t}.owner = $1",
            _ => "{t}.fleet IN (SELECT id FROM fleet WHERE owner = $1)",
        };
        Some(RowFilter { sql: sql.into(), params: vec![Value::Int(1)] })
    }
}

/// The `$N` placeholders of `sql`, in textual order.
fn placeholders(sql: &str) -> Vec<usize> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let j = (i + 1..b.len()).find(|&j| !b[j].is_ascii_digit()).unwrap_or(b.len());
            if j > i + 1 {
                out.push(sql[i + 1..j].parse().unwrap_or(0));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// An in-memory SQLite with the schema's tables, to prepare rendered SQL.
pub struct Db(rusqlite::Connection);

impl Default for Db {
    fn default() -> Self {
        Self::new()
    }
}

impl Db {
    pub fn new() -> Db {
        let c = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        c.execute_batch(DDL).expect("fuzz schema");
        Db(c)
    }

    fn run(&self, what: &str, input: &str, sql: &Sql, dialect: Dialect) {
        let n = sql.params.len();
        assert_eq!(
            placeholders(&sql.sql),
            (1..=n).collect::<Vec<_>>(),
            "{what}: placeholders out of order for input {input:?}: {}",
            sql.sql
        );
        if dialect == Dialect::Sqlite {
            let mut stmt = self
                .0
                .prepare(&sql.sql)
                .unwrap_or_else(|e| panic!("{what}: SQLite rejects the SQL for input {input:?}: {e}\n{}", sql.sql));
            assert_eq!(stmt.parameter_count(), n, "{what}: parameter count for {input:?}");
            let params = sql.params.iter().map(|v| match v {
                Value::Null => rusqlite::types::Value::Null,
                Value::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
                Value::Int(i) => rusqlite::types::Value::Integer(*i),
                Value::Float(x) => rusqlite::types::Value::Real(*x),
                Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
            });
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .unwrap_or_else(|e| panic!("{what}: SQLite fails for input {input:?}: {e}\n{}", sql.sql));
            while let Some(row) = rows.next().unwrap_or_else(|e| panic!("{what}: row for {input:?}: {e}")) {
                if what == "select" {
                    let text: String = row.get(0).unwrap_or_else(|e| panic!("json column for {input:?}: {e}"));
                    assert!(text.starts_with('{'), "not a JSON object for {input:?}: {text}");
                }
            }
        }
    }

    /// Checks one input; panics on any broken invariant.
    pub fn check(&self, input: &str) {
        let _ = parse_filter(input);
        let _ = parse_key(input);
        let Ok(q) = parse_query(input) else { return };
        for set in ["device", "fleet", "user"] {
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                if let Ok(sql) = render_select(&SCHEMA, set, None, &q, &Owner, dialect) {
                    self.run("select", input, &sql, dialect);
                }
                if let Ok(sql) = render_select(&SCHEMA, set, Some(&Value::Int(1)), &q, &Owner, dialect) {
                    self.run("select", input, &sql, dialect);
                }
                if let Ok(sql) = render_count(&SCHEMA, set, &q, &Owner, dialect) {
                    self.run("count", input, &sql, dialect);
                }
            }
        }
    }
}

/// Valid and nearly-valid queries the mutation loop starts from.
pub const SEEDS: &str = include_str!("../seeds.txt");
