//! Heavy reads stay bounded (issue 15, item 2): the `$expand` cost model
//! answers 400 before running a query that multiplies rows, server-driven
//! paging (`@odata.nextLink`) walks every row once, a query over the
//! statement timeout answers 503 QueryTimeout, and a client that goes away
//! stops the database work. On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{Backend, Server};
use sqlx::Row;

/// The request that ran for minutes: fleets, their devices, each device's
/// fleet, and that fleet's devices again.
const CYCLE: &str = "/v1/fleet?$expand=device($expand=fleet_entity($expand=device))";

/// Inserts `n` devices into fleet `fleet` in one statement.
fn devices(s: &Server, fleet: i64, n: i64) {
    s.rt.block_on(async {
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
             INSERT INTO device (uuid, name, fleet, device_type, created_at) \
             SELECT 'u' || CAST($1 AS TEXT) || '-' || CAST(i AS TEXT), 'd' || CAST(i AS TEXT), $1, 'qemuarm64', '2026-01-01T00:00:00Z' FROM n",
        )
        .bind(fleet)
        .bind(n)
        .execute(&s.app.db.pool)
        .await
        .unwrap();
    });
}

fn expand_cycle_is_refused_quickly(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "big");
    devices(&s, fleet, 3000);

    let t = Instant::now();
    let r = s.get(CYCLE, &key);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("rows") && msg.contains("$top"),
        "the message says why and what to do: {msg}"
    );

    // One level of devices is fine: every device at most once.
    let r = s.get("/v1/fleet?$expand=device($select=id)", &key);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["value"][0]["device"].as_array().unwrap().len(),
        3000
    );
    // And the cycle with a small $top per level is within the budget.
    let r = s.get(
        "/v1/fleet?$expand=device($top=5;$expand=fleet_entity($expand=device($top=5;$select=id)))",
        &key,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

fn paging_walks_every_row_once(backend: Backend) {
    let s = Server::start(backend);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "big");
    devices(&s, fleet, 2500);

    // Follows @odata.nextLink from `first`; returns the ids and the page sizes.
    let walk = |first: &str, headers: &[(&str, &str)]| {
        let mut ids = Vec::new();
        let mut pages = Vec::new();
        let mut next = Some(first.to_owned());
        while let Some(path) = next.take() {
            let r = s.raw("GET", &path, Some(&key), headers, vec![]);
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            let j = r.json();
            let page = j["value"].as_array().unwrap();
            pages.push(page.len());
            ids.extend(page.iter().map(|d| d["id"].as_i64().unwrap()));
            if let Some(count) = j.get("@odata.count") {
                assert_eq!(count, 2500, "$count is the whole collection on every page");
            }
            next = j["@odata.nextLink"].as_str().map(|l| {
                let path = l.strip_prefix(&s.base).unwrap_or_else(|| panic!("{l}"));
                path.to_owned()
            });
            assert!(pages.len() < 20, "paging does not end");
        }
        (ids, pages)
    };
    let all: BTreeSet<i64> = s.rt.block_on(async {
        sqlx::query("SELECT id FROM device")
            .fetch_all(&s.app.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<i64, _>(0).unwrap())
            .collect()
    });

    let (ids, pages) = walk("/v1/device?$select=id,name&$count=true", &[]);
    assert_eq!(pages, vec![1000, 1000, 500], "default page size 1000");
    assert_eq!(ids.len(), 2500, "no row twice");
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), all);

    // Ordered by name descending, with a filter, from a $skip: still each once.
    let (ids, pages) = walk(
        "/v1/device?$select=id&$orderby=name desc&$filter=startswith(name,'d')&$skip=100",
        &[],
    );
    assert_eq!(pages, vec![1000, 1000, 400]);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 2400);

    // A client $top above the page size is served in pages that stop at $top.
    let (ids, pages) = walk("/v1/device?$select=id&$top=1500", &[]);
    assert_eq!(pages, vec![1000, 500]);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 1500);
    // $top within the page: one page, no link.
    let (_, pages) = walk("/v1/device?$select=id&$top=1000", &[]);
    assert_eq!(pages, vec![1000]);

    // Prefer: odata.maxpagesize picks a smaller page (and is acknowledged).
    let (ids, pages) = walk(
        "/v1/device?$select=id",
        &[("Prefer", "odata.maxpagesize=700")],
    );
    assert_eq!(pages, vec![700, 700, 700, 400]);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 2500);
    let r = s.raw(
        "GET",
        "/v1/device?$select=id",
        Some(&key),
        &[("Prefer", "odata.maxpagesize=700")],
        vec![],
    );
    assert_eq!(
        r.header("preference-applied").as_deref(),
        Some("odata.maxpagesize=700")
    );
    // ... but never above the maximum page size (5000).
    let r = s.raw(
        "GET",
        "/v1/device?$select=id",
        Some(&key),
        &[("Prefer", "odata.maxpagesize=100000")],
        vec![],
    );
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 2500);
    assert_eq!(
        r.header("preference-applied").as_deref(),
        Some("odata.maxpagesize=5000")
    );
}

fn query_over_the_timeout_answers_503(backend: Backend) {
    let s = Server::start_with(backend, |c| {
        c.query_timeout_ms = 500;
        c.max_expand_rows = u64::MAX;
    });
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "big");
    devices(&s, fleet, 3000);

    let t = Instant::now();
    let r = s.get(CYCLE, &key);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let j = r.json();
    assert_eq!(j["error"]["code"], "QueryTimeout", "{j}");
    assert!(
        j["error"]["message"].as_str().unwrap().contains("500 ms"),
        "{j}"
    );
    // The server is fine afterwards.
    let r = s.get("/v1/fleet?$select=name", &key);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// CPU seconds used so far by the threads of this process whose names start
/// with `prefix` (SQLite's worker threads).
fn thread_cpu(prefix: &str) -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the name: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / 100.0
}

/// Active PostgreSQL statements that build JSON arrays (our expansions).
fn pg_active_expansions(s: &Server) -> i64 {
    s.rt.block_on(async {
        sqlx::query(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%json_agg%'",
        )
        .fetch_one(&s.app.db.pool)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
    })
}

fn client_going_away_stops_the_query(backend: Backend) {
    let s = Server::start_with(backend, |c| {
        c.query_timeout_ms = 600_000;
        c.max_expand_rows = u64::MAX;
    });
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "big");
    devices(&s, fleet, 3000);

    // The server's read threads (before the fix: every SQLite worker).
    let threads = s
        .app
        .db
        .sqlite_read_threads()
        .unwrap_or("sqlx-sqlite")
        .to_owned();
    let sqlite_worker_cpu = || thread_cpu(&threads);
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n",
        common::encode(CYCLE)
    )
    .unwrap();
    // Let the query get going, and check that it is running.
    std::thread::sleep(Duration::from_millis(1500));
    match backend {
        Backend::Sqlite => {
            let a = sqlite_worker_cpu();
            std::thread::sleep(Duration::from_millis(1000));
            let used = sqlite_worker_cpu() - a;
            assert!(used > 0.05, "the query is running: {used} s of CPU in 1 s");
        }
        Backend::Postgres => assert_eq!(pg_active_expansions(&s), 1, "the query is running"),
    }
    // The client goes away.
    drop(conn);
    std::thread::sleep(Duration::from_millis(1500));
    match backend {
        Backend::Sqlite => {
            let a = sqlite_worker_cpu();
            std::thread::sleep(Duration::from_millis(2000));
            let used = sqlite_worker_cpu() - a;
            assert!(
                used < 0.03,
                "SQLite still works for the gone client: {used} s of CPU in 2 s"
            );
        }
        Backend::Postgres => {
            assert_eq!(
                pg_active_expansions(&s),
                0,
                "PostgreSQL still runs the query of the gone client"
            )
        }
    }
}

both!(
    expand_cycle_is_refused_quickly,
    paging_walks_every_row_once,
    query_over_the_timeout_answers_503,
    client_going_away_stops_the_query,
);
