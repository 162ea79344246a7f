//! Runs the same scenarios as the SQLite test on a real PostgreSQL
//! (RESIN_TEST_PG_URL), in a schema of its own that is dropped afterwards.
#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

mod common;

use common::{scenarios, Db};
use postgres::{types::ToSql, Client, NoTls};
use resin_odata::{Dialect, Sql, Value};

struct Pg {
    client: Client,
    schema: String,
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
    }
}

fn bind(params: &[Value]) -> Vec<Box<dyn ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Value::Null => Box::new(Option::<String>::None),
                Value::Bool(b) => Box::new(*b),
                Value::Int(i) => Box::new(*i),
                Value::Float(f) => Box::new(*f),
                Value::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

impl Pg {
    fn query(&mut self, sql: &Sql) -> Vec<postgres::Row> {
        let owned = bind(&sql.params);
        let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
        self.client
            .query(sql.sql.as_str(), &refs)
            .unwrap_or_else(|e| panic!("query {}: {e:?}", sql.sql))
    }
}

impl Db for Pg {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn rows(&mut self, sql: &Sql) -> Vec<serde_json::Value> {
        self.query(sql)
            .iter()
            .map(|r| {
                let text: String = r.get("json");
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("json {text}: {e}"))
            })
            .collect()
    }

    fn count(&mut self, sql: &Sql) -> i64 {
        self.query(sql)[0].get("count")
    }
}

#[test]
fn scenarios_on_postgres() {
    let url = std::env::var("RESIN_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("RESIN_TEST_PG_URL is unset: start the test services with scripts/services.sh and source /tmp/resin-run/env.sh")
    });
    let client = Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let schema = format!("odata_test_{}_{nanos}", std::process::id());
    let mut pg = Pg { client, schema };
    let setup = format!(
        "CREATE SCHEMA {s}; SET search_path TO {s}; {ddl} {rows}",
        s = pg.schema,
        ddl = common::ddl("BOOLEAN"),
        rows = common::rows("TRUE", "FALSE")
    );
    pg.client
        .batch_execute(&setup)
        .expect("create schema, tables, rows");
    scenarios::all(&mut pg);
}
