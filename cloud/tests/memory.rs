//! Memory goes back after a big response (#15): a `resin-cloud` process of
//! its own (the binary, so the resident set measured is the server's alone)
//! answers device listings of the maximum page size with `$expand`, tens of
//! MB in all, and its VmRSS a few seconds later is back near where it was
//! before them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Server};
use serde_json::json;

/// Devices seeded, and the bytes of the apps report stored for each (under
/// the 256 KiB cap): one listing of all of them is about 40 MB.
const DEVICES: usize = 200;
const APPS_BYTES: usize = 200 * 1024;
/// Big listings sent, one after another.
const REQUESTS: usize = 4;
/// How far above its baseline the resident set may stay once the responses
/// are gone. What legitimately stays: the database's page cache that the big
/// reads filled (SQLite: up to 2 MiB per connection, 8 connections) and the
/// allocator's own slack. Measured (debug build, SQLite): 16 MiB above with
/// the trim; 42 MiB above without it; 450 MiB above when every page was
/// built as a serde_json tree.
const BOUND_KIB: u64 = 24 * 1024;

/// A realistic apps report (app → services with status, image, release) of
/// about `bytes` bytes of JSON: many small objects, as a real fleet's.
fn apps_json(bytes: usize, seed: usize) -> String {
    let mut services = serde_json::Map::new();
    let mut i = 0;
    let mut len = 0;
    while len < bytes {
        let s = json!({
            "status": "Running",
            "image": format!("registry.example/fleet/svc{i}@sha256:{:064x}", seed * 1_000_000 + i),
            "releaseId": seed,
            "downloadProgress": null,
            "createdAt": "2026-12-01T10:00:00Z"
        });
        len += s.to_string().len() + 16;
        services.insert(format!("service-{i}"), s);
        i += 1;
    }
    json!({ "0f3c7a6e9b8d4c2a8e1f5b7d9c3a1e42": { "releaseId": seed, "services": services } })
        .to_string()
}

/// The resin-cloud binary serving `s`'s database on a free port; returns
/// it with its base URL. Its log is drained by a thread.
fn spawn_cloud(s: &Server) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_resin-cloud"))
        .args(["serve", "--plain-http", "--listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(&s.app.config.database_url)
        .arg("--data-dir")
        .arg(s.dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let base = loop {
        let Some(Ok(l)) = lines.next() else {
            let _ = child.kill();
            panic!("resin-cloud exited before listening:\n{}", seen.join("\n"));
        };
        if let Some(rest) = l.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap();
            break format!("http://{addr}");
        }
        seen.push(l);
    };
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// GETs `path` from `base`, reads the whole body, returns its length.
fn fetch(agent: &ureq::Agent, base: &str, path: &str, key: &str) -> usize {
    let resp = agent
        .get(format!("{base}{}", common::encode(path)))
        .header("Authorization", format!("Bearer {key}"))
        .header("Prefer", "odata.maxpagesize=5000")
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status(), 200, "GET {path}");
    let mut body = Vec::new();
    resp.into_body()
        .into_with_config()
        .limit(u64::MAX)
        .reader()
        .read_to_end(&mut body)
        .unwrap();
    body.len()
}

#[test]
fn memory_goes_back_after_big_responses_sqlite() {
    memory_goes_back(Backend::Sqlite);
}

#[test]
fn memory_goes_back_after_big_responses_postgres() {
    memory_goes_back(Backend::Postgres);
}

fn memory_goes_back(backend: Backend) {
    // Seed through an in-process server on the same database.
    let s = Server::start(backend);
    let update = match backend {
        Backend::Sqlite => "UPDATE device SET apps = ? WHERE id = ?",
        Backend::Postgres => "UPDATE device SET apps = $1 WHERE id = $2",
    };
    let (_, key) = s.user("alice");
    let (_, prov) = s.fleet(&key, "big");
    for i in 0..DEVICES {
        let (id, _, _) = s.device(&prov);
        let apps = apps_json(APPS_BYTES, i);
        s.rt.block_on(
            sqlx::query(sqlx::AssertSqlSafe(update))
                .bind(apps)
                .bind(id)
                .execute(&s.app.db.pool),
        )
        .unwrap();
    }

    let (mut child, base) = spawn_cloud(&s);
    let pid = child.id();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let big = "/v1/device?$expand=fleet_entity";
    // Baseline: the server warmed up on small answers of the same query.
    for _ in 0..3 {
        fetch(
            &agent,
            &base,
            "/v1/device?$top=5&$expand=fleet_entity",
            &key,
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let baseline = rss_kib(pid);

    // The big answers, with the resident set sampled while they run.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut total = 0;
    let t0 = Instant::now();
    for _ in 0..REQUESTS {
        total += fetch(&agent, &base, big, &key);
    }
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);

    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();

    eprintln!(
        "{backend:?}: {REQUESTS} answers, {} MB in all, in {took:.1?}; VmRSS baseline {baseline} KiB, \
         peak {peak} KiB, 3 s after {after} KiB",
        total / 1_000_000
    );
    assert!(
        total > REQUESTS * DEVICES * APPS_BYTES * 9 / 10,
        "the answers were smaller than seeded: {total} bytes"
    );
    // The test can fail: the big answers did take memory while they ran.
    assert!(
        peak > baseline + 4 * BOUND_KIB,
        "the big answers did not raise the resident set (baseline {baseline} KiB, peak {peak} KiB)"
    );
    assert!(
        after <= baseline + BOUND_KIB,
        "the resident set stayed up after the big answers: {after} KiB 3 s after, \
         baseline {baseline} KiB, peak {peak} KiB (bound: baseline + {BOUND_KIB} KiB)"
    );
}
