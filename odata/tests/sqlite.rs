//! Runs rendered SQL on a real in-memory SQLite (bundled) and checks the JSON
//! rows a client would get: filters, expands, paging, and access rules that
//! hide other owners' rows, including through navigation and $expand.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

mod common;

use common::{scenarios, Db, SCHEMA};
use resin_odata::{parse_query, render_select, AllowAll, Dialect, Sql, Value};
use rusqlite::{types::Value as SqlValue, Connection};

struct Sqlite(Connection);

fn bind(params: &[Value]) -> Vec<SqlValue> {
    params
        .iter()
        .map(|v| match v {
            Value::Null => SqlValue::Null,
            Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
            Value::Int(i) => SqlValue::Integer(*i),
            Value::Float(f) => SqlValue::Real(*f),
            Value::Text(s) => SqlValue::Text(s.clone()),
        })
        .collect()
}

impl Db for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn rows(&mut self, sql: &Sql) -> Vec<serde_json::Value> {
        let mut stmt = self
            .0
            .prepare(&sql.sql)
            .unwrap_or_else(|e| panic!("prepare {}: {e}", sql.sql));
        assert_eq!(stmt.parameter_count(), sql.params.len(), "{}", sql.sql);
        assert_eq!(stmt.column_names(), vec!["json"]);
        let rows = stmt
            .query_map(rusqlite::params_from_iter(bind(&sql.params)), |r| {
                r.get::<_, String>(0)
            })
            .unwrap_or_else(|e| panic!("query {}: {e}", sql.sql));
        rows.map(|r| {
            let text = r.unwrap_or_else(|e| panic!("row of {}: {e}", sql.sql));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("json {text}: {e}"))
        })
        .collect()
    }

    fn count(&mut self, sql: &Sql) -> i64 {
        self.0
            .query_row(
                &sql.sql,
                rusqlite::params_from_iter(bind(&sql.params)),
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("count {}: {e}", sql.sql))
    }
}

fn db() -> Sqlite {
    let c = Connection::open_in_memory().expect("open in-memory SQLite");
    c.execute_batch(&common::ddl("INTEGER"))
        .expect("create tables");
    c.execute_batch(&common::rows("1", "0"))
        .expect("insert rows");
    Sqlite(c)
}

#[test]
fn whole_entities_with_typed_json() {
    scenarios::whole_entities_with_typed_json(&mut db());
}

#[test]
fn null_semantics() {
    scenarios::null_semantics(&mut db());
}

#[test]
fn timestamps_compare_as_instants() {
    scenarios::timestamps_compare_as_instants(&mut db());
}

#[test]
fn json_columns_are_embedded() {
    scenarios::json_columns_are_embedded(&mut db());
}

#[test]
fn invalid_json_in_a_json_column_comes_out_as_a_string() {
    let mut d = db();
    d.0.execute_batch("INSERT INTO fleet VALUES (30, 'broken', 1, 'not json')")
        .expect("insert");
    let rows = scenarios::get(
        &mut d,
        "fleet",
        "$select=config&$filter=id eq 30",
        &AllowAll,
    );
    assert_eq!(rows, vec![serde_json::json!({"config": "not json"})]);
}

#[test]
fn row_filters_hide_other_owners() {
    scenarios::row_filters_hide_other_owners(&mut db());
}

#[test]
fn by_key() {
    scenarios::by_key(&mut db());
}

#[test]
fn filters() {
    scenarios::filters(&mut db());
}

#[test]
fn navigation_in_filter_respects_access() {
    scenarios::navigation_in_filter_respects_access(&mut db());
}

#[test]
fn navigation_cannot_see_hidden_rows() {
    scenarios::navigation_cannot_see_hidden_rows(&mut db());
}

#[test]
fn expand_to_many_respects_access() {
    scenarios::expand_to_many_respects_access(&mut db());
}

#[test]
fn expand_nested() {
    scenarios::expand_nested(&mut db());
}

#[test]
fn ordering_and_paging() {
    scenarios::ordering_and_paging(&mut db());
}

#[test]
fn row_filter_params_out_of_order_bind_correctly() {
    // A rule that uses its parameters out of order and twice.
    struct Odd;
    impl resin_odata::Access for Odd {
        fn row_filter(&self, set: &resin_odata::EntitySet) -> Option<resin_odata::RowFilter> {
            (set.name == "device").then(|| resin_odata::RowFilter {
                sql: "({t}.fleet = $2 OR {t}.id = $1) AND {t}.name <> $3 AND {t}.fleet <> $2 + 1000 AND {t}.note_text <> '$1{t}'".into(),
                params: vec![Value::Int(200), Value::Int(10), Value::Text("dev-b".into())],
            })
        }
    }
    let mut d = db();
    let q = parse_query("$filter=id ne 999").expect("parse");
    let sql = render_select(&SCHEMA, "device", None, &q, &Odd, Dialect::Sqlite).expect("render");
    let rows = d.rows(&sql);
    let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(ids, vec![100, 200]);
}
