//! The authorisation matrix: every endpoint × every kind of caller
//! (anonymous, owner, other user, provisioning key, own device, other
//! device), on SQLite and PostgreSQL, including attempts to reach other
//! owners' rows through `$expand` and `$filter` navigation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Server};
use serde_json::{json, Value};

both!(authz_matrix, no_reach_through_navigation);

const ACTORS: [&str; 6] = [
    "anonymous",
    "owner",
    "other user",
    "provisioning key",
    "own device",
    "other device",
];

type Body = Box<dyn Fn(usize) -> Option<Value>>;

struct Case {
    method: &'static str,
    path: Box<dyn Fn(usize) -> String>,
    body: Body,
    expect: [u16; 6],
    /// Text that only the owner may ever see in a 2xx answer.
    secret: Option<String>,
}

fn case(
    method: &'static str,
    path: impl Into<String>,
    body: Option<Value>,
    expect: [u16; 6],
) -> Case {
    let path = path.into();
    Case {
        method,
        path: Box::new(move |_| path.clone()),
        body: Box::new(move |_| body.clone()),
        expect,
        secret: None,
    }
}

fn authz_matrix(backend: Backend) {
    let s = Server::start(backend);
    let (alice_id, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let (fleet, prov) = s.fleet(&alice, "alice-secret-fleet");
    let (_bob_fleet, _) = s.fleet(&bob, "bob-fleet");
    let (dev, uuid, dev_key) = s.device(&prov);
    let (_, _, other_dev_key) = s.device(&prov);
    let rel = s.create(&alice, "release", json!({"fleet": fleet, "composition": {"services": {"web": {"image": "alice-secret-image"}}}}));
    let rel_id = rel["id"].as_i64().unwrap();
    let svc = s.get("/v1/service", &alice).json()["value"][0]["id"]
        .as_i64()
        .unwrap();
    let img = s.get("/v1/image", &alice).json()["value"][0]["id"]
        .as_i64()
        .unwrap();
    let osr = s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "1.0"}),
    );
    let osr_id = osr["id"].as_i64().unwrap();
    assert_eq!(
        s.raw(
            "PUT",
            &format!("/v1/os_release({osr_id})/bundle"),
            Some(&alice),
            &[],
            b"bundle".to_vec()
        )
        .status,
        200
    );
    let mut vars = std::collections::BTreeMap::new();
    for (res, parent, key) in [
        ("fleet_env_var", "fleet", "name"),
        ("fleet_config_var", "fleet", "name"),
        ("fleet_tag", "fleet", "tag_key"),
        ("device_env_var", "device", "name"),
        ("device_config_var", "device", "name"),
        ("device_tag", "device", "tag_key"),
        ("service_env_var", "service", "name"),
    ] {
        let pid = match parent {
            "fleet" => fleet,
            "device" => dev,
            _ => svc,
        };
        let row = s.create(
            &alice,
            res,
            json!({parent: pid, key: "ALICE_SECRET", "value": "alice-secret-value"}),
        );
        vars.insert(res, (parent, pid, key, row["id"].as_i64().unwrap()));
    }
    // Rows for each caller to try deleting.
    let doomed: Vec<i64> = (0..6)
        .map(|i| {
            s.create(
                &alice,
                "device_tag",
                json!({"device": dev, "tag_key": format!("doomed{i}"), "value": "x"}),
            )["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let keys: [Option<String>; 6] = [
        None,
        Some(alice.clone()),
        Some(bob.clone()),
        Some(prov.clone()),
        Some(dev_key.clone()),
        Some(other_dev_key.clone()),
    ];

    const OWNER_ONLY_READ: [u16; 6] = [401, 200, 404, 403, 403, 403];
    const OWNER_ONLY_WRITE: [u16; 6] = [401, 204, 404, 403, 403, 403];
    const OWNER_ONLY_CREATE: [u16; 6] = [401, 201, 400, 403, 403, 403];
    const USERS_LIST: [u16; 6] = [401, 200, 200, 403, 403, 403];
    const DEVICE_ONLY: [u16; 6] = [401, 403, 403, 403, 200, 403];
    let mut cases: Vec<Case> = vec![];
    // Every collection: users list (only their rows), others are refused.
    for r in [
        "user",
        "api_key",
        "fleet",
        "device",
        "release",
        "service",
        "image",
        "fleet_env_var",
        "device_env_var",
        "service_env_var",
        "fleet_config_var",
        "device_config_var",
        "fleet_tag",
        "device_tag",
        "provisioning_key",
        "os_release",
    ] {
        let mut c = case("GET", format!("/v1/{r}"), None, USERS_LIST);
        if r != "os_release" {
            c.secret = Some("alice".into());
        }
        cases.push(c);
        let mut c = case("GET", format!("/v1/{r}/$count"), None, USERS_LIST);
        c.secret = None;
        cases.push(c);
    }
    // Every entity by key.
    let mut by_key: Vec<(&str, i64)> = vec![
        ("user", alice_id),
        ("fleet", fleet),
        ("device", dev),
        ("release", rel_id),
        ("service", svc),
        ("image", img),
    ];
    for (res, (_, _, _, id)) in &vars {
        by_key.push((res, *id));
    }
    for (res, id) in &by_key {
        cases.push(case(
            "GET",
            format!("/v1/{res}({id})"),
            None,
            OWNER_ONLY_READ,
        ));
    }
    // OS releases are per owner (issue 15).
    cases.push(case(
        "GET",
        format!("/v1/os_release({osr_id})"),
        None,
        OWNER_ONLY_READ,
    ));
    cases.push(case(
        "GET",
        format!("/v1/device({dev})/logs"),
        None,
        OWNER_ONLY_READ,
    ));
    // Writes.
    cases.push(case(
        "PATCH",
        format!("/v1/fleet({fleet})"),
        Some(json!({"target_os_version": "1.0"})),
        OWNER_ONLY_WRITE,
    ));
    cases.push(case(
        "PATCH",
        format!("/v1/device({dev})"),
        Some(json!({"name": "renamed"})),
        OWNER_ONLY_WRITE,
    ));
    cases.push(case(
        "PATCH",
        format!("/v1/release({rel_id})"),
        Some(json!({"status": "done"})),
        OWNER_ONLY_WRITE,
    ));
    cases.push(case(
        "PATCH",
        format!("/v1/os_release({osr_id})"),
        Some(json!({})),
        [401, 400, 404, 403, 403, 403],
    ));
    for (res, (_, _, _, id)) in &vars {
        cases.push(case(
            "PATCH",
            format!("/v1/{res}({id})"),
            Some(json!({"value": "changed"})),
            OWNER_ONLY_WRITE,
        ));
    }
    for (res, (parent, pid, key, _)) in vars.clone() {
        cases.push(Case {
            method: "POST",
            path: Box::new(move |_| format!("/v1/{res}")),
            body: Box::new(move |i| {
                Some(json!({parent: pid, key: format!("NEW_{i}"), "value": "v"}))
            }),
            expect: OWNER_ONLY_CREATE,
            secret: None,
        });
    }
    cases.push(case(
        "POST",
        "/v1/device",
        Some(json!({"fleet": fleet})),
        OWNER_ONLY_CREATE,
    ));
    cases.push(case(
        "POST",
        "/v1/release",
        Some(json!({"fleet": fleet, "composition": {"services": {"a": {"image": "x"}}}})),
        OWNER_ONLY_CREATE,
    ));
    cases.push(Case {
        method: "POST",
        path: Box::new(|_| "/v1/provisioning_key".into()),
        body: Box::new(move |i| Some(json!({"fleet": fleet, "name": format!("k{i}")}))),
        expect: OWNER_ONLY_CREATE,
        secret: None,
    });
    cases.push(case(
        "POST",
        "/v1/fleet",
        None,
        [401, 400, 400, 403, 403, 403],
    ));
    cases.push(Case {
        method: "DELETE",
        path: Box::new(move |i| format!("/v1/device_tag({})", doomed[i])),
        body: Box::new(|_| None),
        expect: OWNER_ONLY_WRITE,
        secret: None,
    });
    cases.push(case(
        "PUT",
        format!("/v1/os_release({osr_id})/bundle"),
        Some(json!("x")),
        [401, 200, 404, 403, 403, 403],
    ));
    cases.push(case(
        "GET",
        format!("/v1/os/download?fleet={fleet}&version=9"),
        None,
        [401, 404, 404, 403, 403, 403],
    ));
    // Device API.
    cases.push(case(
        "GET",
        format!("/device/v3/{uuid}/state"),
        None,
        DEVICE_ONLY,
    ));
    cases.push(case(
        "PATCH",
        "/device/v3/state",
        Some(json!({&uuid: {"status": "idle"}})),
        DEVICE_ONLY,
    ));
    cases.push(Case {
        method: "POST",
        path: {
            let u = uuid.clone();
            Box::new(move |_| format!("/device/v2/{u}/log-stream"))
        },
        body: Box::new(|_| Some(json!({"timestamp": 1, "message": "m"}))),
        expect: DEVICE_ONLY,
        secret: None,
    });
    cases.push(Case {
        method: "POST",
        path: Box::new(|_| "/device/register".into()),
        body: Box::new(|i| Some(json!({"uuid": format!("{i:032x}"), "deviceType": "qemuarm64"}))),
        expect: [401, 403, 403, 201, 403, 403],
        secret: None,
    });
    cases.push(case(
        "GET",
        format!("/os/bundle/{osr_id}"),
        None,
        [401, 200, 404, 403, 200, 200],
    ));
    // Service documents are public.
    cases.push(case("GET", "/v1/$metadata", None, [200; 6]));
    cases.push(case("GET", "/openapi.json", None, [200; 6]));

    let mut failures = vec![];
    for c in &cases {
        for (i, key) in keys.iter().enumerate() {
            let path = (c.path)(i);
            let body = (c.body)(i);
            let r = s.req(c.method, &path, key.as_deref(), body.as_ref());
            if r.status != c.expect[i] {
                failures.push(format!(
                    "{} {path} as {}: expected {}, got {} {}",
                    c.method, ACTORS[i], c.expect[i], r.status, r.body
                ));
            }
            if r.status >= 500 {
                failures.push(format!(
                    "{} {path} as {}: server error {}",
                    c.method, ACTORS[i], r.body
                ));
            }
            if i != 1 && (200..300).contains(&r.status) {
                if let Some(secret) = &c.secret {
                    if r.body.contains(secret.as_str()) {
                        failures.push(format!(
                            "{} {path} as {} leaked {secret}: {}",
                            c.method, ACTORS[i], r.body
                        ));
                    }
                }
            }
            if r.status >= 400 && !path.ends_with("$metadata") {
                assert!(
                    r.json()["error"]["code"].is_string(),
                    "{} {path}: not an OData error: {}",
                    c.method,
                    r.body
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} authz failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn no_reach_through_navigation(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let (fleet, prov) = s.fleet(&alice, "alice-fleet");
    let (dev, _, _) = s.device(&prov);
    s.create(
        &alice,
        "device_env_var",
        json!({"device": dev, "name": "SECRET", "value": "alice-secret"}),
    );
    let rel = s.create(
        &alice,
        "release",
        json!({"fleet": fleet, "composition": {"services": {"web": {"image": "alice-image"}}}}),
    );
    s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "1.0"}),
    );
    let (bob_fleet, bob_prov) = s.fleet(&bob, "bob-fleet");
    let (bob_dev, _, _) = s.device(&bob_prov);

    let leaks = |q: &str| {
        let r = s.get(q, &bob);
        assert!(
            r.status == 200 || r.status == 400,
            "{q}: {} {}",
            r.status,
            r.body
        );
        for secret in ["alice", "SECRET"] {
            assert!(!r.body.contains(secret), "{q} leaked {secret}: {}", r.body);
        }
        r
    };
    // $filter through navigation finds nothing of alice's.
    assert_eq!(
        leaks("/v1/device?$filter=fleet_entity/name eq 'alice-fleet'").json()["value"],
        json!([])
    );
    assert_eq!(
        leaks(&format!("/v1/device?$filter=fleet_entity/id eq {fleet}")).json()["value"],
        json!([])
    );
    assert_eq!(
        leaks("/v1/device_env_var?$filter=device_entity/name ne 'x'").json()["value"],
        json!([])
    );
    assert_eq!(
        leaks(&format!("/v1/device/$count?$filter=fleet eq {fleet}")).body,
        "0"
    );
    // $expand from rows bob can see never shows alice's rows.
    leaks("/v1/os_release?$expand=owner_entity");
    let r = leaks("/v1/os_release?$expand=owner_entity");
    assert_eq!(
        r.json()["value"][0]["owner_entity"],
        Value::Null,
        "alice's user row stays hidden"
    );
    leaks("/v1/user?$expand=fleet($expand=device($expand=device_env_var)),api_key");
    leaks("/v1/fleet?$expand=device($expand=device_env_var),release($expand=service),provisioning_key");
    leaks(&format!(
        "/v1/device({bob_dev})?$expand=fleet_entity($expand=owner_entity)"
    ));
    leaks("/v1/service?$expand=release_entity($expand=fleet_entity)");
    // Writes that point at alice's rows are refused.
    assert_eq!(
        s.patch(
            &format!("/v1/device({bob_dev})"),
            &bob,
            json!({"pinned_release": rel["id"]})
        )
        .status,
        400
    );
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({bob_fleet})"),
            &bob,
            json!({"target_release": rel["id"]})
        )
        .status,
        400
    );
    assert_eq!(
        s.post("/v1/device", &bob, json!({"fleet": fleet})).status,
        400
    );
    assert_eq!(
        s.post(
            "/v1/device_env_var",
            &bob,
            json!({"device": dev, "name": "X", "value": "y"})
        )
        .status,
        400
    );
    // Alice still sees hers.
    let r = s
        .get(
            &format!("/v1/device({dev})?$expand=device_env_var,fleet_entity($select=name)"),
            &alice,
        )
        .json();
    assert_eq!(r["device_env_var"][0]["value"], "alice-secret");
    assert_eq!(r["fleet_entity"]["name"], "alice-fleet");
}
