//! A small fleet/device/user schema, its tables, its rows and a few access
//! policies, shared by the SQLite and PostgreSQL tests.
#![allow(dead_code)]

use resin_odata::{
    Access, EntitySet, Field, FieldType, NavKind, Navigation, RowFilter, Schema, Value,
};

const fn f(name: &'static str, ty: FieldType) -> Field {
    Field {
        name,
        ty,
        column: name,
        filterable: true,
        selectable: true,
    }
}

pub static SCHEMA: Schema = Schema {
    sets: &[
        EntitySet {
            name: "user",
            table: "user",
            key: "id",
            fields: &[
                f("id", FieldType::Int),
                f("username", FieldType::Text),
                f("created_at", FieldType::Timestamp),
                Field {
                    name: "password_hash",
                    ty: FieldType::Text,
                    column: "password_hash",
                    filterable: false,
                    selectable: false,
                },
            ],
            navigations: &[Navigation {
                name: "fleets",
                target: "fleet",
                kind: NavKind::ToMany {
                    remote_column: "owner",
                },
            }],
        },
        EntitySet {
            name: "fleet",
            table: "fleet",
            key: "id",
            fields: &[
                f("id", FieldType::Int),
                f("name", FieldType::Text),
                f("owner", FieldType::Int),
                f("config", FieldType::Json),
            ],
            navigations: &[
                Navigation {
                    name: "owner",
                    target: "user",
                    kind: NavKind::ToOne {
                        local_column: "owner",
                    },
                },
                Navigation {
                    name: "devices",
                    target: "device",
                    kind: NavKind::ToMany {
                        remote_column: "fleet",
                    },
                },
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
                f("cpu_temp", FieldType::Float),
                Field {
                    name: "note",
                    ty: FieldType::Text,
                    column: "note_text",
                    filterable: true,
                    selectable: true,
                },
            ],
            navigations: &[Navigation {
                name: "fleet",
                target: "fleet",
                kind: NavKind::ToOne {
                    local_column: "fleet",
                },
            }],
        },
    ],
};

/// Tables; `bool_type` is INTEGER in SQLite and BOOLEAN in PostgreSQL.
pub fn ddl(bool_type: &str) -> String {
    format!(
        r#"
CREATE TABLE "user" (id BIGINT PRIMARY KEY, username TEXT NOT NULL, created_at TEXT NOT NULL, password_hash TEXT NOT NULL);
CREATE TABLE fleet (id BIGINT PRIMARY KEY, name TEXT NOT NULL, owner BIGINT NOT NULL REFERENCES "user"(id), config TEXT);
CREATE TABLE device (id BIGINT PRIMARY KEY, name TEXT NOT NULL, fleet BIGINT NOT NULL REFERENCES fleet(id),
    is_online {bool_type} NOT NULL, last_seen TEXT, cpu_temp DOUBLE PRECISION, note_text TEXT);
"#
    )
}

/// Rows; `t`/`f` are the boolean constants of the dialect.
pub fn rows(t: &str, f: &str) -> String {
    format!(
        r#"
INSERT INTO "user" VALUES (1, 'alice', '2024-01-01T00:00:00Z', 'secret-a'), (2, 'bob', '2024-02-01T00:00:00Z', 'secret-b');
INSERT INTO fleet VALUES (10, 'Zürich 日本', 1, '{{"a": [1, 2], "b": {{"c": true}}}}'), (11, 'alpha_50%', 1, NULL), (20, 'bobfleet', 2, '[]');
INSERT INTO device VALUES
  (100, 'O''Brien', 10, {t}, '2024-03-01T10:00:00Z', 40.5, 'x'),
  (101, 'dev-b', 10, {f}, '2023-12-31T23:59:59Z', NULL, NULL),
  (102, 'dev_c', 11, {t}, NULL, 61.0, 'y'),
  (200, 'bob-dev', 20, {t}, '2024-05-05T05:05:05Z', 55.25, 'x');
"#
    )
}

/// The usual policy: a user sees their own user row, fleets and devices.
pub struct Owner(pub i64);

impl Access for Owner {
    fn row_filter(&self, set: &EntitySet) -> Option<RowFilter> {
        let sql = match set.name {
            "user" => "{t}.id = $1",
            "fleet" => "{t}.owner = $1",
            "device" => "{t}.fleet IN (SELECT id FROM fleet WHERE owner = $1)",
            _ => return None,
        };
        Some(RowFilter {
            sql: sql.to_string(),
            params: vec![Value::Int(self.0)],
        })
    }
}

/// Every device is visible, but fleets and users only the caller's own:
/// navigation from a visible device to a hidden fleet must find nothing.
pub struct DevicesPublic(pub i64);

impl Access for DevicesPublic {
    fn row_filter(&self, set: &EntitySet) -> Option<RowFilter> {
        match set.name {
            "device" => Some(RowFilter {
                sql: String::new(),
                params: vec![],
            }),
            _ => Owner(self.0).row_filter(set),
        }
    }
}

/// Every fleet is visible, devices only in the caller's fleets.
pub struct FleetsPublic(pub i64);

impl Access for FleetsPublic {
    fn row_filter(&self, set: &EntitySet) -> Option<RowFilter> {
        match set.name {
            "fleet" => Some(RowFilter {
                sql: String::new(),
                params: vec![],
            }),
            _ => Owner(self.0).row_filter(set),
        }
    }
}

/// Nothing at all is visible.
pub struct Nothing;

impl Access for Nothing {
    fn row_filter(&self, _set: &EntitySet) -> Option<RowFilter> {
        None
    }
}

/// A database the rendered SQL runs against.
pub trait Db {
    fn dialect(&self) -> resin_odata::Dialect;
    /// Runs a rendered select and parses each row's `json` column.
    fn rows(&mut self, sql: &resin_odata::Sql) -> Vec<serde_json::Value>;
    /// Runs a rendered count.
    fn count(&mut self, sql: &resin_odata::Sql) -> i64;
}

pub mod scenarios;
