//! Device actions and moves, on SQLite and PostgreSQL: an action is in the
//! device's target state (with a new ETag) until the device reports it done;
//! bad requests change nothing; another user can neither act on nor see a
//! device; a move follows the new fleet's target and refuses other device
//! types and other owners.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Server};
use serde_json::{json, Value};

both!(
    an_action_is_in_the_target_until_the_device_reports_it_done,
    bad_action_requests_change_nothing,
    another_user_cannot_act_on_or_see_a_device,
    a_moved_device_follows_its_new_fleet
);

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

/// (status, ETag, the device's target) of a poll.
fn poll(s: &Server, uuid: &str, key: &str, etag: Option<&str>) -> (u16, String, Value) {
    let h: Vec<(&str, &str)> = etag.map(|e| ("If-None-Match", e)).into_iter().collect();
    let r = s.raw(
        "GET",
        &format!("/device/v3/{uuid}/state"),
        Some(key),
        &h,
        vec![],
    );
    let etag = r.header("etag").unwrap_or_default();
    let body = if r.status == 200 {
        r.json()[uuid].clone()
    } else {
        Value::Null
    };
    (r.status, etag, body)
}

fn report(s: &Server, uuid: &str, key: &str, actions: Value) {
    let r = s.patch(
        "/device/v3/state",
        key,
        json!({ uuid: {"actions": actions} }),
    );
    assert_eq!(r.status, 200, "report: {}", r.body);
}

fn actions_of(s: &Server, dev: i64, key: &str) -> Vec<Value> {
    let r = s.get(&format!("/v1/device({dev})/actions"), key);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["value"].as_array().unwrap().clone()
}

fn release(s: &Server, key: &str, fleet: i64) -> i64 {
    let rel = s.create(
        key,
        "release",
        json!({"fleet": fleet, "composition": {"services": {
            "web": {"image": "example/web"}, "db": {"image": "example/db"}}}}),
    );
    let id = rel["id"].as_i64().unwrap();
    let r = s.patch(
        &format!("/v1/fleet({fleet})"),
        key,
        json!({"target_release": id}),
    );
    assert!(r.status < 300, "{}", r.body);
    id
}

fn an_action_is_in_the_target_until_the_device_reports_it_done(backend: Backend) {
    let s = Server::start(backend);
    wait_listening(&s);
    let (uid, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "f");
    release(&s, &alice, fleet);
    let (dev, uuid, key) = s.device(&prov);
    let (st, etag0, t0) = poll(&s, &uuid, &key, None);
    assert_eq!(st, 200);
    assert!(t0.get("actions").is_none(), "no actions yet: {t0}");
    // Cached now: the next poll is a 304.
    assert_eq!(poll(&s, &uuid, &key, Some(&etag0)).0, 304);

    let r = s.post(
        &format!("/v1/device({dev})/actions"),
        &alice,
        json!({"action": "restart", "service": "web"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let a1 = r.json();
    assert_eq!(a1["state"], "pending");
    assert_eq!(a1["service"], "web");
    assert_eq!(a1["requested_by"], uid);
    let r = s.post(
        &format!("/v1/device({dev})/actions"),
        &alice,
        json!({"action": "reboot"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let a2 = r.json();
    let (id1, id2) = (a1["id"].as_i64().unwrap(), a2["id"].as_i64().unwrap());
    assert!(id2 > id1);

    // The cached 304 is gone: the same ETag now gets the actions, in order.
    let (st, etag1, t1) = poll(&s, &uuid, &key, Some(&etag0));
    assert_eq!(st, 200, "an action must change the ETag");
    assert_ne!(etag1, etag0);
    assert_eq!(
        t1["actions"],
        json!([{"id": id1, "action": "restart", "service": "web"}, {"id": id2, "action": "reboot"}])
    );
    assert_eq!(poll(&s, &uuid, &key, Some(&etag1)).0, 304);

    // Started: still in the target (the device keeps its own record).
    report(
        &s,
        &uuid,
        &key,
        json!([{"id": id2, "state": "started", "message": "waiting for update locks"}]),
    );
    assert_eq!(poll(&s, &uuid, &key, Some(&etag1)).0, 304);
    // Done: out of the target.
    report(
        &s,
        &uuid,
        &key,
        json!([{"id": id1, "state": "done", "message": "restarted web"}]),
    );
    let (st, etag2, t2) = poll(&s, &uuid, &key, Some(&etag1));
    assert_eq!(st, 200);
    assert_eq!(t2["actions"], json!([{"id": id2, "action": "reboot"}]));
    report(
        &s,
        &uuid,
        &key,
        json!([{"id": id2, "state": "done", "message": "rebooted"}]),
    );
    let (st, _, t3) = poll(&s, &uuid, &key, Some(&etag2));
    assert_eq!(st, 200);
    assert!(t3.get("actions").is_none(), "{t3}");
    // Without actions the target is byte-for-byte what it was.
    assert_eq!(t3, t0);

    // The API shows them, newest first, with the device's messages. A
    // report about a final action changes nothing.
    report(
        &s,
        &uuid,
        &key,
        json!([{"id": id1, "state": "failed", "message": "late"}]),
    );
    let list = actions_of(&s, dev, &alice);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], id2);
    assert_eq!(list[0]["state"], "done");
    assert_eq!(list[0]["result"], "rebooted");
    assert_eq!(list[1]["state"], "done");
    assert_eq!(list[1]["result"], "restarted web");
    // And through OData.
    let r = s.get(
        &common::encode(&format!(
            "/v1/device_action?$filter=device eq {dev} and state eq 'done'"
        )),
        &alice,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 2);
}

fn bad_action_requests_change_nothing(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "f");
    release(&s, &alice, fleet);
    let (dev, uuid, key) = s.device(&prov);
    let (_, etag, _) = poll(&s, &uuid, &key, None);
    let path = format!("/v1/device({dev})/actions");
    for (body, status, needle) in [
        (json!({"action": "shutdown"}), 400, "reboot"),
        (
            json!({"action": "reboot", "service": "web"}),
            400,
            "no service",
        ),
        (
            json!({"action": "restart", "service": "nope"}),
            400,
            "no service named \\\"nope\\\"",
        ),
        (
            json!({"action": "restart", "extra": 1}),
            400,
            "unknown field",
        ),
        (json!({}), 400, "action"),
    ] {
        let r = s.post(&path, &alice, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.body.contains(needle), "{body}: {}", r.body);
    }
    let r = s.post(
        "/v1/device(999999)/actions",
        &alice,
        json!({"action": "reboot"}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(actions_of(&s, dev, &alice).is_empty());
    assert_eq!(poll(&s, &uuid, &key, Some(&etag)).0, 304);
    // At most MAX_OPEN open actions.
    for _ in 0..resin_cloud::actions::MAX_OPEN {
        assert_eq!(
            s.post(&path, &alice, json!({"action": "restart"})).status,
            201
        );
    }
    let r = s.post(&path, &alice, json!({"action": "restart"}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("open actions"), "{}", r.body);
}

fn another_user_cannot_act_on_or_see_a_device(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let (fa, prov) = s.fleet(&alice, "fa");
    let (fb, bprov) = s.fleet(&bob, "fb");
    let (dev, uuid, key) = s.device(&prov);
    let (bdev, _, _) = s.device(&bprov);
    let (_, etag, _) = poll(&s, &uuid, &key, None);
    let a = s.post(
        &format!("/v1/device({dev})/actions"),
        &alice,
        json!({"action": "reboot"}),
    );
    assert_eq!(a.status, 201);
    let (_, etag, _) = poll(&s, &uuid, &key, Some(&etag));

    for (m, p, body) in [
        (
            "POST",
            format!("/v1/device({dev})/actions"),
            Some(json!({"action": "reboot"})),
        ),
        ("GET", format!("/v1/device({dev})/actions"), None),
        (
            "POST",
            format!("/v1/device({dev})/move"),
            Some(json!({"fleet": fb})),
        ),
    ] {
        let r = s.req(m, &p, Some(&bob), body.as_ref());
        assert_eq!(r.status, 404, "bob {m} {p}: {}", r.body);
    }
    // Bob cannot move his device into Alice's fleet either.
    let r = s.post(
        &format!("/v1/device({bdev})/move"),
        &bob,
        json!({"fleet": fa}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains(&format!("fleet({fa})")), "{}", r.body);
    // Nor see the actions through OData.
    let r = s.get("/v1/device_action", &bob);
    assert_eq!(r.json()["value"], json!([]));
    // A device key cannot ask for actions; a read-only key may look only.
    let r = s.post(
        &format!("/v1/device({dev})/actions"),
        &key,
        json!({"action": "reboot"}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let ro = s.create(
        &alice,
        "api_key",
        json!({"name": "ro", "scope": "read-only"}),
    );
    let ro = ro["key"].as_str().unwrap();
    let r = s.post(
        &format!("/v1/device({dev})/actions"),
        ro,
        json!({"action": "reboot"}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(actions_of(&s, dev, ro).len(), 1);
    // Nothing changed for the device.
    assert_eq!(poll(&s, &uuid, &key, Some(&etag)).0, 304);
    assert_eq!(actions_of(&s, dev, &alice).len(), 1);
}

fn a_moved_device_follows_its_new_fleet(backend: Backend) {
    let s = Server::start(backend);
    wait_listening(&s);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let (f1, prov) = s.fleet(&alice, "one");
    let (f2, _) = s.fleet(&alice, "two");
    let (fb, _) = s.fleet(&bob, "b");
    let other = s.create(
        &alice,
        "fleet",
        json!({"name": "pi", "device_type": "raspberrypi4-64"}),
    );
    let rel1 = release(&s, &alice, f1);
    let rel2 = release(&s, &alice, f2);
    let (dev, uuid, key) = s.device(&prov);
    let r = s.patch(
        &format!("/v1/device({dev})"),
        &alice,
        json!({"pinned_release": rel1}),
    );
    assert!(r.status < 300, "{}", r.body);
    let (_, etag, t) = poll(&s, &uuid, &key, None);
    let fleet_uuid = |id: i64| {
        s.get(&format!("/v1/fleet({id})"), &alice).json()["uuid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (u1, u2) = (fleet_uuid(f1), fleet_uuid(f2));
    assert!(t["apps"].get(&u1).is_some(), "{t}");

    // Another device type: 409, nothing moves.
    let r = s.post(
        &format!("/v1/device({dev})/move"),
        &alice,
        json!({"fleet": other["id"]}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("device type"), "{}", r.body);
    // Bob's fleet: as if it did not exist.
    let r = s.post(
        &format!("/v1/device({dev})/move"),
        &alice,
        json!({"fleet": fb}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = s.post(
        &format!("/v1/device({dev})/move"),
        &alice,
        json!({"fleet": "x"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(poll(&s, &uuid, &key, Some(&etag)).0, 304);

    let r = s.post(
        &format!("/v1/device({dev})/move"),
        &alice,
        json!({"fleet": f2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"device": dev, "from_fleet": f1, "fleet": f2})
    );
    let d = s.get(&format!("/v1/device({dev})"), &alice).json();
    assert_eq!(d["fleet"], f2);
    assert_eq!(
        d["pinned_release"],
        Value::Null,
        "the old fleet's pin is dropped"
    );
    let (st, _, t) = poll(&s, &uuid, &key, Some(&etag));
    assert_eq!(st, 200, "the move must change the target");
    assert!(t["apps"].get(&u1).is_none(), "{t}");
    let rels = t["apps"][&u2]["releases"].as_object().unwrap();
    let rel2_uuid = s.get(&format!("/v1/release({rel2})"), &alice).json()["uuid"].clone();
    assert_eq!(
        rels.keys().collect::<Vec<_>>(),
        [rel2_uuid.as_str().unwrap()]
    );
    // The device key still works, now for the new fleet.
    let r = s.patch(
        "/device/v3/state",
        &key,
        json!({ &uuid: {"status": "idle"} }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
