//! Roles, key scopes and rate limits, tried as an outsider would, on SQLite
//! and PostgreSQL: a read-only key cannot write, a fleet-scoped key cannot
//! see another fleet, an expired key gets 401, only an admin publishes a
//! public OS release or manages users, and guessing keys or hammering the
//! device API gets 429 with Retry-After.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Server};
use serde_json::{json, Value};

both!(
    a_read_only_key_cannot_write,
    a_fleet_scoped_key_sees_only_its_fleet,
    an_expired_key_gets_401,
    only_an_admin_publishes_public_os_releases_and_manages_users,
    guessing_keys_gets_429,
    hammering_the_device_api_gets_429
);

fn make_admin(s: &Server, uid: i64) {
    s.rt.block_on(async {
        sqlx::query("UPDATE \"user\" SET is_admin = TRUE WHERE id = $1")
            .bind(uid)
            .execute(&s.app.db.pool)
            .await
            .unwrap();
    });
}

fn ids(v: &Value) -> Vec<i64> {
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

fn key_with(s: &Server, owner_key: &str, body: Value) -> String {
    s.create(owner_key, "api_key", body)["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn a_read_only_key_cannot_write(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (fleet, _) = s.fleet(&alice, "f");
    let ro = key_with(&s, &alice, json!({"name": "viewer", "scope": "read-only"}));
    assert_eq!(ids(&s.get("/v1/fleet", &ro).json()), [fleet], "it reads");
    let writes = [
        s.post(
            "/v1/fleet",
            &ro,
            json!({"name": "g", "device_type": "qemuarm64"}),
        ),
        s.patch(&format!("/v1/fleet({fleet})"), &ro, json!({"name": "x"})),
        s.req("DELETE", &format!("/v1/fleet({fleet})"), Some(&ro), None),
        s.post("/v1/api_key", &ro, json!({"name": "escalate"})),
        s.post(
            "/v1/fleet_env_var",
            &ro,
            json!({"fleet": fleet, "name": "A", "value": "1"}),
        ),
    ];
    for w in &writes {
        assert_eq!(w.status, 403, "{}", w.body);
        assert!(w.body.contains("read-only"), "{}", w.body);
    }
    assert_eq!(
        s.get(&format!("/v1/fleet({fleet})"), &alice).json()["name"],
        "f",
        "nothing changed"
    );
    let bad = s.post("/v1/api_key", &alice, json!({"name": "x", "scope": "root"}));
    assert_eq!(bad.status, 400, "{}", bad.body);
}

fn a_fleet_scoped_key_sees_only_its_fleet(backend: Backend) {
    let s = Server::start(backend);
    let (alice_id, alice) = s.user("alice");
    let (f, prov_f) = s.fleet(&alice, "f");
    let (g, prov_g) = s.fleet(&alice, "g");
    let (df, _, _) = s.device(&prov_f);
    let (dg, _, _) = s.device(&prov_g);
    let scoped = key_with(&s, &alice, json!({"name": "ops-f", "fleet": f}));
    assert_eq!(ids(&s.get("/v1/fleet", &scoped).json()), [f]);
    assert_eq!(ids(&s.get("/v1/device", &scoped).json()), [df]);
    assert_eq!(s.get(&format!("/v1/fleet({g})"), &scoped).status, 404);
    assert_eq!(s.get(&format!("/v1/device({dg})"), &scoped).status, 404);
    assert_eq!(
        s.get(&format!("/v1/device({dg})/logs"), &scoped).status,
        404
    );
    // Through navigation too.
    let u = s.get(&format!("/v1/user({alice_id})?$expand=fleet"), &scoped);
    assert_eq!(u.status, 200, "{}", u.body);
    let fleets: Vec<i64> = u.json()["fleet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(fleets, [f]);
    // No writes outside it, no new fleets or keys; inside it, yes.
    assert_eq!(
        s.patch(&format!("/v1/device({dg})"), &scoped, json!({"name": "x"}))
            .status,
        404
    );
    let r = s.post(
        "/v1/fleet_env_var",
        &scoped,
        json!({"fleet": g, "name": "A", "value": "1"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        s.post(
            "/v1/fleet",
            &scoped,
            json!({"name": "h", "device_type": "qemuarm64"})
        )
        .status,
        403
    );
    assert_eq!(
        s.post("/v1/api_key", &scoped, json!({"name": "wider"}))
            .status,
        403
    );
    assert_eq!(
        ids(&s.get("/v1/api_key", &scoped).json()),
        Vec::<i64>::new()
    );
    s.create(
        &scoped,
        "fleet_env_var",
        json!({"fleet": f, "name": "A", "value": "1"}),
    );
    // A fleet of someone else cannot be named as the scope.
    let (_, bob) = s.user("bob");
    let r = s.post("/v1/api_key", &bob, json!({"name": "steal", "fleet": f}));
    assert_eq!(r.status, 400, "{}", r.body);
}

fn an_expired_key_gets_401(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let old = key_with(
        &s,
        &alice,
        json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"}),
    );
    let r = s.get("/v1/fleet", &old);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("www-authenticate").is_some());
    let fresh = key_with(
        &s,
        &alice,
        json!({"name": "new", "expires_at": "2999-01-01T00:00:00+02:00"}),
    );
    assert_eq!(s.get("/v1/fleet", &fresh).status, 200);
}

fn only_an_admin_publishes_public_os_releases_and_manages_users(backend: Backend) {
    let s = Server::start(backend);
    let (root_id, root) = s.user("root");
    let (alice_id, alice) = s.user("alice");
    make_admin(&s, root_id);

    // Not an admin: no public OS release, no users.
    let r = s.post(
        "/v1/os_release",
        &alice,
        json!({"device_type": "qemuarm64", "version": "5.0", "is_public": true}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let own = s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "5.1"}),
    );
    let r = s.patch(
        &format!("/v1/os_release({})", own["id"]),
        &alice,
        json!({"is_public": true}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        s.post("/v1/user", &alice, json!({"username": "mallory"}))
            .status,
        403
    );
    assert_eq!(ids(&s.get("/v1/user", &alice).json()), [alice_id]);
    assert_eq!(
        s.patch(
            &format!("/v1/user({alice_id})"),
            &alice,
            json!({"is_admin": true})
        )
        .status,
        404
    );

    // The admin publishes 5.0; everyone sees it and may target it.
    let public = s.create(
        &root,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "5.0", "is_public": true}),
    );
    let pid = public["id"].as_i64().unwrap();
    assert_eq!(public["is_public"], true);
    let up = s.raw(
        "PUT",
        &format!("/v1/os_release({pid})/bundle"),
        Some(&root),
        &[("Content-Type", "application/octet-stream")],
        b"public bundle".to_vec(),
    );
    assert_eq!(up.status, 200, "{}", up.body);
    let (_, bob) = s.user("bob");
    assert!(ids(&s.get("/v1/os_release", &bob).json()).contains(&pid));
    let (fleet, prov) = s.fleet(&bob, "b");
    let (_, uuid, key) = s.device(&prov);
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &bob,
            json!({"target_os_version": "5.0"})
        )
        .status,
        204
    );
    let t = s.get(&format!("/device/v3/{uuid}/state"), &key).json();
    let url = t[&uuid]["os"]["bundle"]["url"].as_str().unwrap().to_owned();
    assert!(url.ends_with(&format!("/os/bundle/{pid}")), "{url}");
    let path = url.split_once("/os/").unwrap().1;
    assert_eq!(
        s.raw("GET", &format!("/os/{path}"), Some(&key), &[], vec![])
            .body,
        "public bundle"
    );
    // Not the admin's to change for others.
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/v1/os_release({pid})"),
            Some(&bob),
            None
        )
        .status,
        404
    );

    // User management.
    let carol = s.create(&root, "user", json!({"username": "carol"}));
    let carol_id = carol["id"].as_i64().unwrap();
    assert_eq!(carol["is_admin"], false);
    let all = ids(&s.get("/v1/user", &root).json());
    assert!(
        all.contains(&alice_id) && all.contains(&carol_id),
        "{all:?}"
    );
    let carol_key = key_with(&s, &root, json!({"name": "carol", "user": carol_id}));
    let me = s.get("/v1/user", &carol_key).json();
    assert_eq!(ids(&me), [carol_id]);
    assert_eq!(
        s.patch(
            &format!("/v1/user({carol_id})"),
            &root,
            json!({"is_admin": true})
        )
        .status,
        204
    );
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/v1/user({carol_id})"),
            Some(&root),
            None
        )
        .status,
        204
    );
    assert_eq!(s.get("/v1/user", &carol_key).status, 401);
}

fn guessing_keys_gets_429(backend: Backend) {
    let s = Server::start_with(backend, |c| c.auth_failures_per_min = 5);
    let (_, alice) = s.user("alice");
    for i in 0..5 {
        let r = s.get("/v1/fleet", &format!("resin_u_{i:064}"));
        assert_eq!(r.status, 401, "guess {i}");
    }
    let r = s.get("/v1/fleet", "resin_u_guess");
    assert_eq!(r.status, 429, "{}", r.body);
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    assert_eq!(r.json()["error"]["code"], "TooManyRequests");
    // This address is refused even with a good key until the minute is over;
    // another client (through a proxy on loopback) is not.
    assert_eq!(s.get("/v1/fleet", &alice).status, 429);
    let other = s.raw(
        "GET",
        "/v1/fleet",
        Some(&alice),
        &[("X-Forwarded-For", "192.0.2.7")],
        vec![],
    );
    assert_eq!(other.status, 200, "{}", other.body);
}

fn hammering_the_device_api_gets_429(backend: Backend) {
    let s = Server::start_with(backend, |c| c.device_requests_per_min = 5);
    let (_, alice) = s.user("alice");
    let (_, prov) = s.fleet(&alice, "f");
    let (_, uuid, key) = s.device(&prov); // 1: registration, with the provisioning key
    let (_, uuid2, key2) = s.device(&prov); // 2
    let path = format!("/device/v3/{uuid}/state");
    for i in 0..5 {
        assert_eq!(s.get(&path, &key).status, 200, "poll {i}");
    }
    let r = s.get(&path, &key);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    // Per key: another device is not affected.
    assert_eq!(
        s.get(&format!("/device/v3/{uuid2}/state"), &key2).status,
        200
    );
}
