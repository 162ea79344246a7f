//! The poll path off the database, on SQLite and PostgreSQL: a cached
//! device is answered without any database read; every write that changes
//! a target state reaches the next poll; heartbeats are written in batches;
//! on PostgreSQL a change made through one replica reaches a device polling
//! another, and a lost listener connection drops the whole cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Server};
use serde_json::{json, Value};
use sqlx::Row;

both!(
    a_cached_poll_reads_nothing_from_the_database,
    every_write_that_changes_the_target_reaches_the_next_poll,
    heartbeats_are_written_in_batches
);

/// On PostgreSQL, waits until the server listens for other replicas'
/// changes (its cache is off until then).
fn wait_listening(s: &Server) {
    if s.app.db.dialect != resin_cloud::db::Dialect::Postgres {
        return;
    }
    let start = Instant::now();
    while !s.app.cache.is_enabled() {
        assert!(start.elapsed() < Duration::from_secs(10), "never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn poll(s: &Server, uuid: &str, key: &str, etag: Option<&str>) -> common::Resp {
    let h: Vec<(&str, &str)> = etag.map(|e| ("If-None-Match", e)).into_iter().collect();
    s.raw(
        "GET",
        &format!("/device/v3/{uuid}/state"),
        Some(key),
        &h,
        vec![],
    )
}

fn a_cached_poll_reads_nothing_from_the_database(backend: Backend) {
    let s = Server::start(backend);
    wait_listening(&s);
    let (_, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "f");
    s.create(
        &alice,
        "fleet_env_var",
        json!({"fleet": fleet, "name": "A", "value": "1"}),
    );
    let (_, uuid, key) = s.device(&prov);
    let first = poll(&s, &uuid, &key, None);
    assert_eq!(first.status, 200, "{}", first.body);
    let etag = first.header("etag").unwrap();

    // No database at all from here on: the pool is closed.
    s.rt.block_on(s.app.db.pool.close());
    let nm = poll(&s, &uuid, &key, Some(&etag));
    assert_eq!(
        nm.status, 304,
        "a 304 must not need the database: {}",
        nm.body
    );
    assert_eq!(nm.header("etag").as_deref(), Some(etag.as_str()));
    let again = poll(&s, &uuid, &key, None);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    // Another device's uuid with this key is still refused (403 or 401),
    // not answered from the cache.
    let other = poll(&s, "00000000000000000000000000000000", &key, None);
    assert!(other.status >= 400, "{}", other.status);
}

/// The target state of `uuid` after a write: 200 with a new ETag.
fn changed(s: &Server, uuid: &str, key: &str, etag: &mut String, what: &str) -> Value {
    let r = poll(s, uuid, key, Some(etag));
    assert_eq!(r.status, 200, "{what}: the next poll did not see it");
    *etag = r.header("etag").unwrap();
    // And it is cached again.
    assert_eq!(poll(s, uuid, key, Some(etag)).status, 304, "{what}");
    r.json()[uuid].clone()
}

fn every_write_that_changes_the_target_reaches_the_next_poll(backend: Backend) {
    let s = Server::start(backend);
    wait_listening(&s);
    let (_, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "f");
    let (id, uuid, key) = s.device(&prov);
    let r = poll(&s, &uuid, &key, None);
    let mut etag = r.header("etag").unwrap();
    assert_eq!(poll(&s, &uuid, &key, Some(&etag)).status, 304);
    let fleet_uuid = |t: &Value| {
        t["apps"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone()
    };
    let app = |t: &Value| {
        t["apps"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone()
    };

    let v = s.create(
        &alice,
        "fleet_env_var",
        json!({"fleet": fleet, "name": "F", "value": "1"}),
    );
    let t = changed(&s, &uuid, &key, &mut etag, "fleet env var created");
    assert_eq!(app(&t)["env"]["fleet"]["F"], "1");
    let vid = v["id"].as_i64().unwrap();
    assert_eq!(
        s.patch(
            &format!("/v1/fleet_env_var({vid})"),
            &alice,
            json!({"value": "2"})
        )
        .status,
        204
    );
    let t = changed(&s, &uuid, &key, &mut etag, "fleet env var changed");
    assert_eq!(app(&t)["env"]["fleet"]["F"], "2");
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/v1/fleet_env_var({vid})"),
            Some(&alice),
            None
        )
        .status,
        204
    );
    let t = changed(&s, &uuid, &key, &mut etag, "fleet env var deleted");
    assert!(app(&t)["env"]["fleet"].get("F").is_none());

    s.create(
        &alice,
        "device_env_var",
        json!({"device": id, "name": "D", "value": "d"}),
    );
    let t = changed(&s, &uuid, &key, &mut etag, "device env var");
    assert_eq!(app(&t)["env"]["device"]["D"], "d");
    s.create(
        &alice,
        "fleet_config_var",
        json!({"fleet": fleet, "name": "C", "value": "c"}),
    );
    let t = changed(&s, &uuid, &key, &mut etag, "fleet config var");
    assert_eq!(t["config"]["C"], "c");
    s.create(
        &alice,
        "device_config_var",
        json!({"device": id, "name": "C", "value": "dc"}),
    );
    let t = changed(&s, &uuid, &key, &mut etag, "device config var");
    assert_eq!(t["config"]["C"], "dc");

    // A release, the fleet's target, a service variable, a pin.
    let composition = |img: &str| json!({"services": {"web": {"image": format!("127.0.0.1:55000/{img}@sha256:abcd")}}});
    let r1 = s.create(
        &alice,
        "release",
        json!({"fleet": fleet, "composition": composition("one")}),
    );
    let r1 = r1["id"].as_i64().unwrap();
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &alice,
            json!({"target_release": r1})
        )
        .status,
        204
    );
    let t = changed(&s, &uuid, &key, &mut etag, "fleet target release");
    assert_eq!(app(&t)["releases"].as_object().unwrap().len(), 1);
    let svc = s.get(&format!("/v1/service?$filter=release eq {r1}"), &alice);
    let svc = svc.json()["value"][0]["id"].as_i64().unwrap();
    s.create(
        &alice,
        "service_env_var",
        json!({"service": svc, "name": "S", "value": "s"}),
    );
    let t = changed(&s, &uuid, &key, &mut etag, "service env var");
    let rel = app(&t)["releases"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(rel["services"]["web"]["environment"]["S"], "s");
    let r2 = s.create(
        &alice,
        "release",
        json!({"fleet": fleet, "composition": composition("two")}),
    );
    let r2_uuid = r2["uuid"].as_str().unwrap().to_owned();
    let r2 = r2["id"].as_i64().unwrap();
    assert_eq!(
        s.patch(
            &format!("/v1/device({id})"),
            &alice,
            json!({"pinned_release": r2})
        )
        .status,
        204
    );
    let t = changed(&s, &uuid, &key, &mut etag, "device pin");
    assert!(app(&t)["releases"].get(&r2_uuid).is_some(), "{t}");

    // An OS target, then its bundle.
    s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "9.1"}),
    );
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &alice,
            json!({"target_os_version": "9.1"})
        )
        .status,
        204
    );
    let t = changed(&s, &uuid, &key, &mut etag, "fleet OS target");
    assert_eq!(t["os"]["version"], "9.1");
    assert!(t["os"].get("bundle").is_none_or(Value::is_null), "{t}");
    let osr = s.get("/v1/os_release", &alice).json()["value"][0]["id"]
        .as_i64()
        .unwrap();
    let up = s.raw(
        "PUT",
        &format!("/v1/os_release({osr})/bundle"),
        Some(&alice),
        &[("Content-Type", "application/octet-stream")],
        b"bundle bytes".to_vec(),
    );
    assert_eq!(up.status, 200, "{}", up.body);
    let t = changed(&s, &uuid, &key, &mut etag, "OS bundle uploaded");
    assert!(t["os"]["bundle"]["sha256"].is_string(), "{t}");

    // The device is renamed and pinned to no release (a device cannot
    // move to another fleet through the API: device.fleet is set once).
    assert_eq!(
        s.patch(
            &format!("/v1/device({id})"),
            &alice,
            json!({"name": "renamed", "pinned_release": null})
        )
        .status,
        204
    );
    let t = changed(&s, &uuid, &key, &mut etag, "device renamed");
    assert_eq!(t["name"], "renamed");
    assert!(app(&t)["releases"].get(&r2_uuid).is_none(), "{t}");
    let f_uuid = s.get(&format!("/v1/fleet({fleet})"), &alice).json()["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fleet_uuid(&t), f_uuid);

    // A state report of the cached device (its key found in the cache) is
    // written.
    let report = json!({ uuid.clone(): {"status": "Idle"} });
    let r = s.patch("/device/v3/state", &key, report.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.get(&format!("/v1/device({id})"), &alice).json()["status"],
        "Idle"
    );

    // Deleted: its key stops working at once, for reports too (checked
    // before a poll could drop anything from the cache).
    assert_eq!(
        s.req("DELETE", &format!("/v1/device({id})"), Some(&alice), None)
            .status,
        204
    );
    assert_eq!(s.patch("/device/v3/state", &key, report).status, 401);
    assert_eq!(poll(&s, &uuid, &key, Some(&etag)).status, 401);
}

fn heartbeats_are_written_in_batches(backend: Backend) {
    let s = Server::start(backend);
    wait_listening(&s);
    let (_, alice) = s.user("alice");
    let (_, prov) = s.fleet(&alice, "f");
    let devices: Vec<_> = (0..3).map(|_| s.device(&prov)).collect();
    for (_, uuid, key) in &devices {
        for _ in 0..3 {
            assert_eq!(poll(&s, uuid, key, None).status, 200);
        }
    }
    let online = || {
        s.rt.block_on(async {
            sqlx::query("SELECT COUNT(*) FROM device WHERE is_online AND last_seen IS NOT NULL")
                .fetch_one(&s.app.db.pool)
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap()
        })
    };
    // Nine polls, no write yet (the flush runs every 10 s by default).
    assert_eq!(online(), 0);
    let written =
        s.rt.block_on(resin_cloud::cache::flush_heartbeats(&s.app))
            .unwrap();
    assert_eq!(written, 3, "one batch for the three devices");
    assert_eq!(online(), 3);
    assert_eq!(
        s.rt.block_on(resin_cloud::cache::flush_heartbeats(&s.app))
            .unwrap(),
        0
    );
}

/// PostgreSQL: a second replica on the same database.
fn second_replica(s: &Server) -> resin_cloud::App {
    let mut config = (*s.app.config).clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    s.rt.block_on(resin_cloud::App::start(config)).unwrap()
}

#[test]
fn postgres_a_change_through_one_replica_reaches_a_poll_through_another() {
    let s = Server::start(Backend::Postgres);
    let b = second_replica(&s);
    wait_listening(&s);
    let start = Instant::now();
    while !b.state.cache.is_enabled() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "f");
    let (_, uuid, key) = s.device(&prov);
    let agent = ureq::agent();
    let poll_b = |etag: Option<&str>| {
        let mut r = agent.get(format!("http://{}/device/v3/{uuid}/state", b.addr));
        r = r.header("Authorization", format!("Bearer {key}"));
        if let Some(e) = etag {
            r = r.header("If-None-Match", e);
        }
        let resp = r
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, etag)
    };
    let (st, etag) = poll_b(None);
    assert_eq!(st, 200);
    let etag = etag.unwrap();
    assert_eq!(poll_b(Some(&etag)).0, 304);
    assert_eq!(b.state.cache.len(), 1, "replica B caches the device");
    // Through replica A.
    s.create(
        &alice,
        "fleet_env_var",
        json!({"fleet": fleet, "name": "X", "value": "1"}),
    );
    let start = Instant::now();
    while !b.state.cache.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "replica B never heard of the change"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (st, new) = poll_b(Some(&etag));
    assert_eq!(st, 200);
    assert_ne!(new.unwrap(), etag);

    // B's listener connection is killed: B drops its whole cache.
    poll_b(None);
    assert_eq!(b.state.cache.len(), 1);
    let killed = s.rt.block_on(async {
        sqlx::query(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'resin-listener' AND datname = current_database()",
        )
        .fetch_one(&s.app.db.pool)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
    });
    assert_eq!(killed, 2, "one listener per replica");
    let start = Instant::now();
    while !b.state.cache.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "B kept its cache after losing its listener"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    b.task.abort();
}
