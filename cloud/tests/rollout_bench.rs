//! Benchmark (ignored by `cargo test`): one rollout evaluator pass over a
//! fleet of 100,000 simulated devices (tests/common/fleet.rs), every one of
//! them in the running wave, on SQLite and PostgreSQL. Issue 16 asks for
//! under 1 s per pass. The peer, measured in the same run on the same
//! database: the pass's own member SELECT alone (rollout_device ⋈ device),
//! which every pass has to read anyway; the ratio is pass ÷ that SELECT.
//!
//! ```text
//! cargo test -p resin-cloud --test rollout_bench -- --ignored --nocapture --test-threads 1
//! ```
//! `RESIN_BENCH_DEVICES` changes the fleet size (100000).
//!
//! The 304 poll path is not touched by rollouts: a cached poll reads nothing
//! from the database (tests/poll_cache.rs closes the pool and still gets its
//! 304), and the rollout's assignment is a column of the device row the
//! target state reads anyway (migration 0004).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::fleet::{waves, Script, SimFleet};
use common::{Backend, Server};
use resin_cloud::rollout::{self, Passes};
use serde_json::json;

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn rollout_pass_over_100k_devices_sqlite() {
    bench(Backend::Sqlite);
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn rollout_pass_over_100k_devices_postgres() {
    bench(Backend::Postgres);
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn bench(backend: Backend) {
    let n: usize = std::env::var("RESIN_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s = Server::start(backend);
    let (_, key) = s.user("bench");
    let t = Instant::now();
    let mut sim = SimFleet::new(&s, &key, "bench", n, |_| Script::Good);
    sim.tick(&s);
    let setup = t.elapsed();
    // One wave of 100 %: every device is a member of the running wave and
    // is looked at by every pass. A soak of an hour keeps them undecided.
    let r = s.post(
        "/v1/rollout",
        &key,
        json!({"fleet": sim.fleet, "release": sim.new_release, "waves": waves(&[100], 3600, 7200)}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    let t = Instant::now();
    let r = s.post(&format!("/v1/rollout({id})/start"), &key, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let start = t.elapsed();
    // The devices take the new release and report it running.
    sim.tick(&s);

    let pass = |label: &str| {
        let t = Instant::now();
        let done =
            s.rt.block_on(rollout::run_due(
                &s.app,
                now_ms() + 10,
                1,
                &Passes::default(),
            ))
            .unwrap();
        let took = t.elapsed();
        assert_eq!(done, [id], "{label}: the pass evaluated the rollout");
        took
    };
    // Pass 1 starts every device's soak (100k rows change); the passes
    // after it change nothing: the steady state of a long soak.
    let first = pass("first");
    let mut steady: Vec<Duration> = (0..5).map(|_| pass("steady")).collect();
    steady.sort();
    let median = steady[steady.len() / 2];

    // The peer: the member SELECT of a pass, alone, on the same data.
    let db = s.app.db.clone();
    let mut select: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let rows = s.rt.block_on(
                sqlx::query(
                    "SELECT rd.device, rd.wave, rd.assigned_at, rd.running_since, rd.restarts, \
                     d.apps, d.os_version, d.os_update_state, d.pinned_release, \
                     d.target_os_version, d.fleet \
                     FROM rollout_device rd JOIN device d ON d.id = rd.device \
                     WHERE rd.rollout = $1 AND rd.state = 'assigned'",
                )
                .bind(id)
                .fetch_all(&db.pool),
            );
            let took = t.elapsed();
            assert_eq!(rows.unwrap().len(), n);
            took
        })
        .collect();
    select.sort();
    let sel = select[select.len() / 2];
    let p = s.get(&format!("/v1/rollout({id})/progress"), &key).json();
    assert_eq!(p["state"], "running", "{p}");
    assert_eq!(p["waves"][0]["counts"]["size"], n, "{p}");
    println!(
        "rollout evaluator, {backend:?}, {n} devices in the running wave: setup {}, start {}, \
         pass 1 (every soak starts) {}, steady pass median of 5 {} (min {}, max {}); \
         the member SELECT alone, median of 5: {}; steady pass / SELECT = {:.2}x",
        secs(setup),
        secs(start),
        secs(first),
        secs(median),
        secs(steady[0]),
        secs(steady[steady.len() - 1]),
        secs(sel),
        median.as_secs_f64() / sel.as_secs_f64(),
    );
}
