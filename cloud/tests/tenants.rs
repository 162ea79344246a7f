//! Issue 15: what one tenant can do to another. OS releases are per owner
//! (a fleet's target OS version never resolves to another user's bundle),
//! and a provisioning key cannot take a registered uuid over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Server};
use serde_json::json;
use sha2::{Digest, Sha256};

both!(
    os_releases_are_per_owner,
    reregistration_needs_the_device_key,
    os_release_migration_keeps_rows
);

fn put_bundle(s: &Server, key: &str, id: i64, bytes: &[u8]) {
    let r = s.raw(
        "PUT",
        &format!("/v1/os_release({id})/bundle"),
        Some(key),
        &[],
        bytes.to_vec(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

fn os_releases_are_per_owner(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    // Bob takes 3.0 first; Alice can still publish her own 3.0.
    let osr = json!({"device_type": "qemuarm64", "version": "3.0"});
    let bob_os = s.create(&bob, "os_release", osr.clone())["id"]
        .as_i64()
        .unwrap();
    put_bundle(&s, &bob, bob_os, b"bob's bundle");
    let r = s.post("/v1/os_release", &alice, osr.clone());
    assert_eq!(r.status, 201, "alice's own 3.0: {}", r.body);
    let alice_os = r.json()["id"].as_i64().unwrap();
    put_bundle(&s, &alice, alice_os, b"alice's bundle");
    // A second 3.0 of the same owner is still refused, naming the fields.
    let r = s.post("/v1/os_release", &alice, osr.clone());
    assert_eq!(r.status, 409, "{}", r.body);

    // Alice's device targeting 3.0 gets Alice's bundle.
    let (fleet, prov) = s.fleet(&alice, "alice-fleet");
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &alice,
            json!({"target_os_version": "3.0"})
        )
        .status,
        204
    );
    let (_, uuid, dev_key) = s.device(&prov);
    let t = s.get(&format!("/device/v3/{uuid}/state"), &dev_key);
    assert_eq!(t.status, 200, "{}", t.body);
    let bundle = &t.json()[&uuid]["os"]["bundle"];
    assert_eq!(
        bundle["sha256"],
        hex::encode(Sha256::digest(b"alice's bundle")),
        "{bundle}"
    );
    assert!(
        bundle["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/os/bundle/{alice_os}")),
        "{bundle}"
    );
    let b = s.get(&format!("/os/bundle/{alice_os}"), &dev_key);
    assert_eq!((b.status, b.body.as_str()), (200, "alice's bundle"));
    // The device cannot fetch Bob's bundle of the same version either.
    assert_eq!(s.get(&format!("/os/bundle/{bob_os}"), &dev_key).status, 404);

    // Bob lists, reads and downloads only his own.
    let list = s.get("/v1/os_release", &bob).json();
    let ids: Vec<i64> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![bob_os]);
    assert_eq!(s.get("/v1/os_release/$count", &bob).body, "1");
    assert_eq!(
        s.get(&format!("/v1/os_release({alice_os})"), &bob).status,
        404
    );
    let r = s.get(&format!("/os/bundle/{alice_os}"), &bob);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!r.body.contains("alice's bundle"));
    assert_eq!(
        s.get(&format!("/v1/os/download?fleet={fleet}"), &bob)
            .status,
        404
    );
    // A fleet of Bob's targeting a version only Alice has gets no bundle.
    let (bob_fleet, bob_prov) = s.fleet(&bob, "bob-fleet");
    s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "4.0"}),
    );
    s.patch(
        &format!("/v1/fleet({bob_fleet})"),
        &bob,
        json!({"target_os_version": "4.0"}),
    );
    let (_, bob_uuid, bob_key) = s.device(&bob_prov);
    let t = s.get(&format!("/device/v3/{bob_uuid}/state"), &bob_key);
    assert_eq!(
        t.json()[&bob_uuid]["os"]["bundle"],
        json!(null),
        "{}",
        t.body
    );
}

fn reregistration_needs_the_device_key(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let (_, prov) = s.fleet(&alice, "alice-fleet");
    let (_, bob_prov) = s.fleet(&bob, "bob-fleet");
    let (id, uuid, key) = s.device(&prov);
    s.create(
        &alice,
        "device_env_var",
        json!({"device": id, "name": "SECRET", "value": "alice-secret"}),
    );
    let state = format!("/device/v3/{uuid}/state");

    // The provisioning key alone (it ships in every image) gets no key.
    let reg = json!({"uuid": uuid, "deviceType": "qemuarm64"});
    let own = s.post("/device/register", &prov, reg.clone());
    assert_eq!(own.status, 409, "{}", own.body);
    assert!(!own.body.contains("resin_d_"), "{}", own.body);
    assert_eq!(own.json()["error"]["target"], "uuid");
    // Another tenant's provisioning key gets the very same answer: whether
    // the uuid is in another fleet is not revealed.
    let other = s.post("/device/register", &bob_prov, reg.clone());
    assert_eq!(
        (other.status, other.json()),
        (own.status, own.json()),
        "same answer for any taken uuid"
    );
    // A wrong key is no proof.
    let wrong = json!({"uuid": uuid, "deviceType": "qemuarm64",
        "apiKey": format!("resin_d_{}", "0".repeat(64))});
    assert_eq!(s.post("/device/register", &prov, wrong).status, 409);
    // The real device still works, and its secrets went nowhere.
    let t = s.get(&state, &key);
    assert_eq!(t.status, 200, "{}", t.body);
    assert!(t.body.contains("alice-secret"));

    // With its current key the device gets itself back, key unchanged.
    let with_key = json!({"uuid": uuid, "deviceType": "qemuarm64", "apiKey": key});
    let r = s.post("/device/register", &prov, with_key.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], id);
    assert_eq!(r.json()["apiKey"], key.as_str());
    assert_eq!(s.get(&state, &key).status, 200);
    // …but not into another fleet.
    assert_eq!(s.post("/device/register", &bob_prov, with_key).status, 409);

    // A device may choose its key: a retry after a lost answer is then
    // answered with the same device.
    let mine = format!("resin_d_{}", "ab".repeat(32));
    let uuid2 = "00112233445566778899aabbccddeeff";
    let reg2 = json!({"uuid": uuid2, "deviceType": "qemuarm64", "apiKey": mine});
    let first = s.post("/device/register", &prov, reg2.clone());
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.json()["apiKey"], mine.as_str());
    let again = s.post("/device/register", &prov, reg2);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(
        s.get(&format!("/device/v3/{uuid2}/state"), &mine).status,
        200
    );
    // A chosen key must look like a device key.
    let bad = json!({"uuid": "ffeeddccbbaa99887766554433221100", "deviceType": "qemuarm64",
        "apiKey": "short"});
    let r = s.post("/device/register", &prov, bad);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["target"], "apiKey");
}

/// Migration 3 on a database made by migrations 1 and 2 with OS releases in
/// it: the rows stay, new ids follow the old ones, and two owners may then
/// hold the same version.
fn os_release_migration_keeps_rows(backend: Backend) {
    use sqlx::{Executor, Row};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let empty = common::EmptyDb::new(backend, dir.path(), &rt);
    let id = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    };
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&empty.url).await.unwrap();
        pool.execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY)")
            .await
            .unwrap();
        for (v, text) in [
            (1, include_str!("../migrations/0001_init.sql")),
            (2, include_str!("../migrations/0002_device_apps.sql")),
        ] {
            let body: String = text
                .replace("{{ID}}", id)
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            for stmt in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                pool.execute(sqlx::AssertSqlSafe(stmt.to_owned()))
                    .await
                    .unwrap();
            }
            pool.execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO schema_migrations (version) VALUES ({v})"
            )))
            .await
            .unwrap();
        }
        for stmt in [
            "INSERT INTO \"user\" (username, created_at) VALUES ('a', 'x'), ('b', 'x')",
            "INSERT INTO os_release (owner, device_type, version, bundle_sha256, created_at) \
             VALUES (1, 'qemuarm64', '1.0', 'aa', 'x'), (1, 'qemuarm64', '2.0', 'bb', 'x')",
        ] {
            pool.execute(stmt).await.unwrap();
        }
        pool.close().await;

        let db = resin_cloud::db::Db::connect(&empty.url, 2).await.unwrap();
        let rows =
            sqlx::query("SELECT id, owner, version, bundle_sha256 FROM os_release ORDER BY id")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        let got: Vec<(i64, i64, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1, "1.0".into(), "aa".into()),
                (2, 1, "2.0".into(), "bb".into())
            ]
        );
        let insert = |owner: i64| {
            sqlx::query(
                "INSERT INTO os_release (owner, device_type, version, created_at) \
                 VALUES ($1, 'qemuarm64', '1.0', 'x') RETURNING id",
            )
            .bind(owner)
            .fetch_one(&db.pool)
        };
        let new_id: i64 = insert(2).await.unwrap().get(0);
        assert_eq!(new_id, 3, "ids go on after the kept rows");
        assert!(insert(1).await.is_err(), "(owner, type, version) is unique");
        db.pool.close().await;
    });
    empty.drop_with(&rt);
}
