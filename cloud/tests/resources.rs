//! `/v1` resources end to end on SQLite and PostgreSQL: CRUD with
//! validation, OData queries, errors, `$metadata` and `/openapi.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Server};
use serde_json::{json, Value};

both!(crud_and_validation, odata_queries, service_documents);

fn names(v: &Value) -> Vec<String> {
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect()
}

fn crud_and_validation(backend: Backend) {
    let s = Server::start(backend);
    let (uid, k) = s.user("alice");
    // Create + read back.
    let f = s.create(
        &k,
        "fleet",
        json!({"name": "f1", "device_type": "qemuarm64"}),
    );
    let id = f["id"].as_i64().unwrap();
    assert_eq!(f["owner"], uid);
    assert_eq!(f["uuid"].as_str().unwrap().len(), 32);
    assert_eq!(s.get(&format!("/v1/fleet({id})"), &k).json()["name"], "f1");
    // Validation: unknown field, wrong type, read-only field, missing, bad slug, bad JSON.
    for (body, needle) in [
        (
            json!({"name": "x", "device_type": "qemuarm64", "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": 5, "device_type": "qemuarm64"}),
            "expected a string",
        ),
        (
            json!({"name": "x", "device_type": "qemuarm64", "owner": 1}),
            "owner",
        ),
        (
            json!({"device_type": "qemuarm64"}),
            "fleet.name is required",
        ),
        (
            json!({"name": "x", "device_type": "bad type!"}),
            "device_type",
        ),
        (json!({"name": "  ", "device_type": "qemuarm64"}), "empty"),
        (json!([1, 2]), "JSON object"),
    ] {
        let r = s.post("/v1/fleet", &k, body);
        assert_eq!(r.status, 400, "{}", r.body);
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        assert_eq!(r.json()["error"]["code"], "BadRequest");
    }
    let r = s.raw("POST", "/v1/fleet", Some(&k), &[], b"{\"name\":".to_vec());
    assert_eq!(r.status, 400);
    assert_eq!(
        s.post(
            "/v1/fleet",
            &k,
            json!({"name": "f1", "device_type": "qemuarm64"})
        )
        .status,
        409,
        "duplicate name"
    );
    assert_eq!(
        s.get("/v1/fleet", &k).json()["value"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing half-created"
    );
    // PATCH: changes, validates, device_type is create-only.
    assert_eq!(
        s.patch(&format!("/v1/fleet({id})"), &k, json!({"name": "renamed"}))
            .status,
        204
    );
    assert_eq!(
        s.get(&format!("/v1/fleet({id})"), &k).json()["name"],
        "renamed"
    );
    assert_eq!(
        s.patch(&format!("/v1/fleet({id})"), &k, json!({"device_type": "x"}))
            .status,
        400
    );
    assert_eq!(
        s.patch(&format!("/v1/fleet({id})"), &k, json!({})).status,
        400
    );
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({id})"),
            &k,
            json!({"target_release": 999})
        )
        .status,
        400
    );
    assert_eq!(
        s.patch("/v1/fleet(999)", &k, json!({"name": "x"})).status,
        404
    );
    assert_eq!(s.get("/v1/fleet(abc)", &k).status, 400);
    assert_eq!(s.get("/v1/nothing", &k).status, 404);
    // Env vars: name rules, unique per parent.
    assert_eq!(
        s.post(
            "/v1/fleet_env_var",
            &k,
            json!({"fleet": id, "name": "1BAD", "value": "v"})
        )
        .status,
        400
    );
    let ev = s.create(
        &k,
        "fleet_env_var",
        json!({"fleet": id, "name": "GOOD_1", "value": "v"}),
    );
    assert_eq!(
        s.post(
            "/v1/fleet_env_var",
            &k,
            json!({"fleet": id, "name": "GOOD_1", "value": "w"})
        )
        .status,
        409
    );
    assert_eq!(
        s.patch(
            &format!("/v1/fleet_env_var({})", ev["id"]),
            &k,
            json!({"value": "w"})
        )
        .status,
        204
    );
    // Releases: compose validation, services and images created.
    for (comp, needle) in [
        (json!({}), "services"),
        (json!({"services": {"a": {}}}), "image"),
        (
            json!({"services": {"a": {"image": "x", "bogus": 1}}}),
            "bogus",
        ),
        (
            json!({"services": {"a": {"image": "x", "restart": "sometimes"}}}),
            "restart",
        ),
        (
            json!({"services": {"a": {"image": "x", "environment": ["NOEQUALS"]}}}),
            "KEY=VALUE",
        ),
        (
            json!({"services": {"a": {"image": "x", "privileged": "yes"}}}),
            "privileged",
        ),
        // Refused at upload, not looped on the device (the one compose
        // validator of api-types): each names the service and the field.
        (
            json!({"services": {"a": {"image": "x", "ports": ["80:80", "8o:80"]}}}),
            "composition.services.a.ports[1]: port \\\"8o:80\\\"",
        ),
        (
            json!({"services": {"a": {"image": "x", "volumes": ["data:relative"]}}}),
            "composition.services.a.volumes[0]",
        ),
        (
            json!({"services": {"a": {"image": "x", "devices": ["/dev/a:/dev/a:rwx"]}}}),
            "composition.services.a.devices[0]",
        ),
    ] {
        let r = s.post("/v1/release", &k, json!({"fleet": id, "composition": comp}));
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains(needle),
            "{} should mention {needle}",
            r.body
        );
    }
    let rel = s.create(
        &k,
        "release",
        json!({"fleet": id, "composition": {"services": {
        "web": {"image": "reg/web@sha256:1111"}, "db": {"image": "reg/db:1"}}}}),
    );
    assert_eq!(rel["status"], "success");
    assert_eq!(
        rel["composition"]["services"]["web"]["image"],
        "reg/web@sha256:1111"
    );
    let imgs = s.get("/v1/image?$orderby=ref", &k).json();
    assert_eq!(imgs["value"][0]["ref"], "reg/db:1");
    assert_eq!(imgs["value"][0]["digest"], Value::Null);
    assert_eq!(imgs["value"][1]["digest"], "sha256:1111");
    assert_eq!(s.get("/v1/service/$count", &k).body, "2");
    assert_eq!(s.post("/v1/service", &k, json!({"name": "x"})).status, 405);
    // Target release must belong to the fleet.
    let f2 = s.create(
        &k,
        "fleet",
        json!({"name": "f2", "device_type": "qemuarm64"}),
    );
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({})", f2["id"]),
            &k,
            json!({"target_release": rel["id"]})
        )
        .status,
        400
    );
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({id})"),
            &k,
            json!({"target_release": rel["id"]})
        )
        .status,
        204
    );
    // Keys: plaintext once, hash never.
    let ak = s.create(
        &k,
        "api_key",
        json!({"name": "ci", "expires_at": "2030-01-01T00:00:00+01:00"}),
    );
    let newkey = ak["key"].as_str().unwrap();
    assert_eq!(ak["expires_at"], "2029-12-31T23:00:00Z");
    assert_eq!(s.get("/v1/fleet", newkey).status, 200);
    let listed = s.get("/v1/api_key", &k);
    assert!(!listed.body.contains("key_hash") && !listed.body.contains(newkey));
    let expired = s.create(
        &k,
        "api_key",
        json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}),
    );
    assert_eq!(
        s.get("/v1/fleet", expired["key"].as_str().unwrap()).status,
        401
    );
    assert_eq!(
        s.post(
            "/v1/api_key",
            &k,
            json!({"name": "x", "expires_at": "tomorrow"})
        )
        .status,
        400
    );
    // Devices created by users; a forced delete cascades; a forced release
    // delete clears the target (hardening.rs: without force, 409).
    let d = s.create(&k, "device", json!({"fleet": id, "name": "pre"}));
    assert_eq!(d["device_type"], "qemuarm64");
    assert_eq!(d["is_online"], false);
    s.create(
        &k,
        "device_tag",
        json!({"device": d["id"], "tag_key": "room", "value": "1"}),
    );
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/v1/release({})?force=true", rel["id"]),
            Some(&k),
            None
        )
        .status,
        204
    );
    assert_eq!(
        s.get(&format!("/v1/fleet({id})"), &k).json()["target_release"],
        Value::Null
    );
    assert_eq!(s.get("/v1/image/$count", &k).body, "0");
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/v1/fleet({id})?force=true"),
            Some(&k),
            None
        )
        .status,
        204
    );
    assert_eq!(s.get("/v1/device/$count", &k).body, "0");
    assert_eq!(s.get("/v1/device_tag/$count", &k).body, "0");
    assert_eq!(
        s.req("DELETE", &format!("/v1/fleet({id})"), Some(&k), None)
            .status,
        404
    );
}

fn odata_queries(backend: Backend) {
    let s = Server::start(backend);
    let (_, k) = s.user("alice");
    let mut fleets = vec![];
    for (name, dt) in [
        ("alpha", "qemuarm64"),
        ("beta", "raspberrypi4-64"),
        ("gamma 'quoted'", "qemuarm64"),
        ("δέλτα", "qemuarm64"),
    ] {
        fleets.push(
            s.create(&k, "fleet", json!({"name": name, "device_type": dt}))["id"]
                .as_i64()
                .unwrap(),
        );
    }
    for (i, f) in fleets.iter().enumerate() {
        for j in 0..=i {
            s.create(
                &k,
                "device",
                json!({"fleet": f, "name": format!("d{i}{j}")}),
            );
        }
    }
    let get = |q: &str| {
        let r = s.get(q, &k);
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()
    };
    assert_eq!(names(&get("/v1/fleet?$filter=name eq 'alpha'")), ["alpha"]);
    assert_eq!(
        names(&get("/v1/fleet?$filter=name eq 'gamma ''quoted'''")),
        ["gamma 'quoted'"]
    );
    assert_eq!(names(&get("/v1/fleet?$filter=name eq 'δέλτα'")), ["δέλτα"]);
    assert_eq!(
        names(&get(
            "/v1/fleet?$filter=startswith(name,'a') or endswith(name,'ta')&$orderby=name"
        )),
        ["alpha", "beta"]
    );
    assert_eq!(
        names(&get("/v1/fleet?$filter=contains(name,'quot')")),
        ["gamma 'quoted'"]
    );
    assert_eq!(
        names(&get(
            "/v1/fleet?$filter=not (device_type eq 'qemuarm64') and id gt 0"
        )),
        ["beta"]
    );
    assert_eq!(
        names(&get(
            "/v1/fleet?$filter=name in ('alpha','beta')&$orderby=name desc"
        )),
        ["beta", "alpha"]
    );
    assert_eq!(
        names(&get(
            "/v1/fleet?$filter=target_release eq null&$orderby=device_type desc,name&$top=2"
        )),
        ["beta", "alpha"]
    );
    assert_eq!(
        names(&get("/v1/fleet?$orderby=name&$skip=1&$top=1")),
        ["beta"]
    );
    // One-hop navigation in $filter.
    let r = get("/v1/device?$filter=fleet_entity/name eq 'beta'&$orderby=name");
    assert_eq!(names(&r), ["d10", "d11"]);
    // $select, $expand (nested), $count.
    let r = get("/v1/device?$select=name&$filter=name eq 'd00'");
    assert_eq!(
        r["value"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["name"]
    );
    let r = get("/v1/device?$filter=name eq 'd00'&$expand=fleet_entity($select=name)");
    assert_eq!(r["value"][0]["fleet_entity"]["name"], "alpha");
    assert_eq!(
        r["value"][0]["fleet"], fleets[0],
        "the id stays beside the entity"
    );
    // The navigation is not called like the id property (CSDL forbids it);
    // the old spelling gets a 400 that names the new one.
    let r = s.get("/v1/device?$expand=fleet", &k);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("'fleet_entity'"), "{}", r.body);
    let r = get("/v1/fleet?$filter=name eq 'beta'&$expand=device($select=name;$orderby=name desc;$filter=name ne 'd10')");
    assert_eq!(names(&json!({"value": r["value"][0]["device"]})), ["d11"]);
    let r = get("/v1/fleet?$count=true&$top=1&$filter=device_type eq 'qemuarm64'");
    assert_eq!(r["@odata.count"], 3);
    assert_eq!(r["value"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.get(
            "/v1/device/$count?$filter=fleet_entity/device_type eq 'qemuarm64'",
            &k
        )
        .body,
        "8"
    );
    assert_eq!(
        get(&format!("/v1/fleet({})?$select=id", fleets[1]))["id"],
        fleets[1]
    );
    assert_eq!(
        get("/v1/device?$filter=is_online eq false&$count=true")["@odata.count"],
        10
    );
    // Malformed queries: 400 saying what and where, never a 500.
    for q in [
        "/v1/fleet?$filter=name eq",
        "/v1/fleet?$filter=name eq 'unterminated",
        "/v1/fleet?$filter=nosuch eq 1",
        "/v1/fleet?$filter=name eq 1",
        "/v1/fleet?$filter=(name eq 'a'",
        "/v1/fleet?$top=-1",
        "/v1/fleet?$top=x",
        "/v1/fleet?$orderby=name sideways",
        "/v1/fleet?$expand=nosuch",
        "/v1/fleet?$select=nosuch",
        "/v1/fleet?$bogus=1",
        "/v1/fleet?$filter=%FF",
        "/v1/device?$filter=fleet_entity/owner_entity/username eq 'x'",
    ] {
        let r = s.get(q, &k);
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(
            r.json()["error"]["message"].as_str().unwrap().len() > 5,
            "{q}"
        );
    }
    let r = s.get("/v1/fleet?$filter=name eq", &k);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$filter"),
        "{}",
        r.body
    );
}

fn service_documents(backend: Backend) {
    let s = Server::start(backend);
    let m = s.req("GET", "/v1/$metadata", None, None);
    assert_eq!(m.status, 200);
    assert!(m
        .body
        .contains("<EntitySet Name=\"device\" EntityType=\"resin.device\">"));
    assert!(m
        .body
        .contains("<NavigationPropertyBinding Path=\"fleet_entity\" Target=\"fleet\"/>"));
    assert!(m.body.contains(
        "<NavigationProperty Name=\"fleet_entity\" Type=\"resin.fleet\" Nullable=\"false\" Partner=\"device\">"
    ));
    assert!(m
        .body
        .contains("<Property Name=\"fleet\" Type=\"Edm.Int64\" Nullable=\"false\"/>"));
    let o = s.req("GET", "/openapi.json", None, None).json();
    assert_eq!(o["openapi"], "3.1.0");
    for route in [
        "/v1/device/$count",
        "/v1/device({id})/logs",
        "/v1/os/download",
        "/os/bundle/{id}",
        "/v1/os_release({id})/bundle",
        "/device/register",
        "/device/v3/{uuid}/state",
        "/device/v3/state",
        "/device/v2/{uuid}/log-stream",
    ] {
        assert!(o["paths"][route].is_object(), "{route} is documented");
    }
    assert!(o["paths"]["/v1/device({id})"]["patch"].is_object());
    let del = &o["paths"]["/v1/fleet({id})"]["delete"];
    assert_eq!(del["parameters"][1]["name"], "force", "{del}");
    assert!(del["responses"]["409"].is_object(), "{del}");
    assert!(
        o["components"]["schemas"]["error"]["properties"]["error"]["properties"]["target"]
            .is_object()
    );
    assert!(o["components"]["schemas"]["fleet"]["properties"]["target_os_version"].is_object());
    let sd = s.req("GET", "/v1", None, None).json();
    assert!(sd["value"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "os_release"));
}
