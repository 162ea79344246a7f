//! Issue 15, beside tenancy (tenants.rs): OData null semantics and
//! timestamps over HTTP, delete guards, caps on what devices write, and the
//! error shapes and headers of the HTTP layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Server};
use serde_json::{json, Value};

both!(
    ne_and_not_keep_null_rows,
    timestamps_filter_as_instants,
    deletes_that_would_break_references_need_force,
    device_written_fields_are_capped,
    http_errors_and_headers
);

fn ids(v: &Value) -> Vec<i64> {
    v["value"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|x| x["id"].as_i64().unwrap())
        .collect()
}

fn ne_and_not_keep_null_rows(backend: Backend) {
    let s = Server::start(backend);
    let (_, k) = s.user("alice");
    let (fleet, prov) = s.fleet(&k, "f");
    // Five devices: two report 2.0.0, one 1.0.0, two never report a version.
    let mut devs = vec![];
    for v in [Some("2.0.0"), Some("1.0.0"), None, Some("2.0.0"), None] {
        let (id, uuid, key) = s.device(&prov);
        if let Some(v) = v {
            let r = s.patch(
                "/device/v3/state",
                &key,
                json!({ &uuid: {"os_version": v} }),
            );
            assert_eq!(r.status, 200, "{}", r.body);
        }
        devs.push(id);
    }
    let q = |f: &str| {
        let r = s.get(&format!("/v1/device?$filter={f}&$orderby=id"), &k);
        assert_eq!(r.status, 200, "{f}: {}", r.body);
        ids(&r.json())
    };
    let want = vec![devs[1], devs[2], devs[4]];
    assert_eq!(q("os_version ne '2.0.0'"), want);
    assert_eq!(q("not (os_version eq '2.0.0')"), want);
    assert_eq!(
        s.get("/v1/device/$count?$filter=os_version ne '2.0.0'", &k)
            .body,
        "3"
    );
    // A release pinned on one device: the other four are `ne` it.
    let rel = s.create(
        &k,
        "release",
        json!({"fleet": fleet, "composition": {"services": {"a": {"image": "x"}}}}),
    );
    let rid = rel["id"].as_i64().unwrap();
    s.patch(
        &format!("/v1/device({})", devs[0]),
        &k,
        json!({"pinned_release": rid}),
    );
    assert_eq!(q(&format!("pinned_release ne {rid}")).len(), 4);
    assert_eq!(q(&format!("pinned_release eq {rid}")), vec![devs[0]]);
    // Over a navigation: a device that pins nothing has a null
    // pinned_release_entity/status, which is `ne 'done'`.
    s.patch(
        &format!("/v1/release({rid})"),
        &k,
        json!({"status": "done"}),
    );
    let rest = devs[1..].to_vec();
    assert_eq!(q("pinned_release_entity/status ne 'done'"), rest);
    assert_eq!(q("not (pinned_release_entity/status eq 'done')"), rest);
    assert_eq!(q("pinned_release_entity/status eq 'done'"), vec![devs[0]]);
    assert_eq!(q("pinned_release_entity/status eq null"), rest);
}

fn timestamps_filter_as_instants(backend: Backend) {
    let s = Server::start(backend);
    let (_, k) = s.user("alice");
    s.fleet(&k, "f");
    let created = s.get("/v1/fleet", &k).json()["value"][0]["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    // 2026-12-01T15:52:31Z → …:31.000Z and the same instant at +02:00.
    let with_ms = created.replace('Z', ".000Z");
    let hour: u32 = created[11..13].parse().unwrap();
    let shifted = format!(
        "{}{:02}{}%2B01:00",
        &created[..11],
        (hour + 1) % 24,
        &created[13..19]
    );
    let count = |f: &str| {
        let r = s.get(&format!("/v1/fleet/$count?$filter={f}"), &k);
        (r.status, r.body)
    };
    assert_eq!(
        count(&format!("created_at eq {created}")),
        (200, "1".into())
    );
    assert_eq!(
        count(&format!("created_at eq {with_ms}")),
        (200, "1".into())
    );
    if hour < 23 {
        assert_eq!(
            count(&format!("created_at eq {shifted}")),
            (200, "1".into())
        );
    }
    assert_eq!(count("created_at gt 2020-01-01"), (200, "1".into()));
    assert_eq!(
        count("created_at lt 2020-01-01T00:00:00%2B14:00"),
        (200, "0".into())
    );
    // A string property is no timestamp (PostgreSQL would fail the cast).
    let (status, body) = count("created_at eq name");
    assert_eq!(status, 400, "{body}");
    for bad in [
        "created_at gt 'yesterday'",
        "created_at gt 2026-13-45T00:00:00Z",
        "created_at eq '2026-01-01T10:00:00'",
    ] {
        let (status, body) = count(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("is not a timestamp"), "{bad}: {body}");
    }
}

fn deletes_that_would_break_references_need_force(backend: Backend) {
    let s = Server::start(backend);
    let (_, k) = s.user("alice");
    let (fleet, prov) = s.fleet(&k, "f");
    let (dev, _, _) = s.device(&prov);
    let del = |p: &str| s.req("DELETE", p, Some(&k), None);
    // A fleet with devices.
    let r = del(&format!("/v1/fleet({fleet})"));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["target"], "device.fleet");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains(&format!("device({dev})")), "{msg}");
    assert!(msg.contains("force=true"), "{msg}");
    assert_eq!(s.get("/v1/device/$count", &k).body, "1", "nothing deleted");
    // A release the fleet targets and a device pins.
    let body = json!({"fleet": fleet, "composition": {"services": {"a": {"image": "x"}}}});
    let rel = s.create(&k, "release", body.clone())["id"]
        .as_i64()
        .unwrap();
    let pinned = s.create(&k, "release", body)["id"].as_i64().unwrap();
    s.patch(
        &format!("/v1/fleet({fleet})"),
        &k,
        json!({"target_release": rel}),
    );
    s.patch(
        &format!("/v1/device({dev})"),
        &k,
        json!({"pinned_release": pinned}),
    );
    let r = del(&format!("/v1/release({rel})"));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["target"], "fleet.target_release");
    assert!(r.body.contains(&format!("fleet({fleet})")), "{}", r.body);
    let r = del(&format!("/v1/release({pinned})"));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"]["target"], "device.pinned_release");
    assert_eq!(
        s.get(&format!("/v1/fleet({fleet})"), &k).json()["target_release"],
        rel
    );
    assert_eq!(del(&format!("/v1/release({rel})?force=maybe")).status, 400);
    // Forced: the references are cleared, then the fleet and its devices go.
    assert_eq!(del(&format!("/v1/release({rel})?force=true")).status, 204);
    assert_eq!(
        s.get(&format!("/v1/fleet({fleet})"), &k).json()["target_release"],
        Value::Null
    );
    assert_eq!(del(&format!("/v1/fleet({fleet})?force=true")).status, 204);
    assert_eq!(s.get("/v1/device/$count", &k).body, "0");
    // Nothing refers to an unused release: no force needed.
    let (f2, _) = s.fleet(&k, "g");
    let r = s.create(
        &k,
        "release",
        json!({"fleet": f2, "composition": {"services": {"a": {"image": "x"}}}}),
    );
    assert_eq!(del(&format!("/v1/release({})", r["id"])).status, 204);
    assert_eq!(del(&format!("/v1/fleet({f2})")).status, 204);
}

fn device_written_fields_are_capped(backend: Backend) {
    let s = Server::start(backend);
    let (_, k) = s.user("alice");
    let (_, prov) = s.fleet(&k, "f");
    let (dev, uuid, key) = s.device(&prov);
    let report = |body: Value| s.patch("/device/v3/state", &key, json!({ &uuid: body }));
    let big = "x".repeat(300 * 1024);
    let svc = json!({"status": "running", "release_uuid": "r", "image": big});
    let cases = [
        (json!({"status": "s".repeat(100 * 1024)}), "status", 400),
        (json!({"os_version": "v".repeat(10_000)}), "os_version", 400),
        (
            json!({"supervisor_version": "v".repeat(10_000)}),
            "supervisor_version",
            400,
        ),
        (
            json!({"ip_address": vec!["10.0.0.1"; 1000]}),
            "ip_address",
            400,
        ),
        (
            json!({"apps": {"a": {"services": {"web": svc}}}}),
            "apps",
            413,
        ),
    ];
    for (body, field, status) in cases {
        let r = report(body);
        assert_eq!(
            r.status,
            status,
            "{field}: {}",
            &r.body[..r.body.len().min(300)]
        );
        assert_eq!(r.json()["error"]["target"], field, "{}", r.body);
    }
    // Nothing of those reports was stored, not even the fields in bounds.
    let r = report(json!({"status": "idle", "os_version": "o".repeat(200)}));
    assert_eq!(r.status, 400);
    let d = s.get(&format!("/v1/device({dev})"), &k).json();
    assert_eq!(d["status"], Value::Null, "{d}");
    assert_eq!(d["os_version"], Value::Null, "{d}");
    assert_eq!(d["apps"], Value::Null, "{d}");
    // In bounds is fine.
    assert_eq!(report(json!({"status": "idle"})).status, 200);
    // Registration names and log lines are capped too.
    let r = s.post(
        "/device/register",
        &prov,
        json!({"uuid": "ffffffffffffffffffffffffffffffff", "deviceType": "qemuarm64",
            "name": "n".repeat(10_000)}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["target"], "name");
    let line = json!({"timestamp": 1, "message": "m".repeat(100 * 1024)}).to_string();
    let r = s.raw(
        "POST",
        &format!("/device/v2/{uuid}/log-stream"),
        Some(&key),
        &[],
        line.into_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["target"], "message");
}

fn http_errors_and_headers(backend: Backend) {
    let s = Server::start(backend);
    let (_, k) = s.user("alice");
    // 401 says which scheme to use.
    let r = s.req("GET", "/v1/fleet", None, None);
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{:?}",
        r.headers
    );
    // 201 says where the new entity is.
    let r = s.post(
        "/v1/fleet",
        &k,
        json!({"name": "f", "device_type": "qemuarm64"}),
    );
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_i64().unwrap();
    let loc = r.header("location").expect("Location");
    assert!(loc.ends_with(&format!("/v1/fleet({id})")), "{loc}");
    assert_eq!(s.get(&format!("/v1/fleet({id})"), &k).status, 200);
    let dev = s.create(&k, "device", json!({"fleet": id}))["id"].clone();
    // HEAD answers where GET does.
    for p in [
        "/v1/fleet".to_owned(),
        format!("/v1/fleet({id})"),
        "/v1/fleet/$count".into(),
        "/v1/$metadata".into(),
        format!("/v1/device({dev})/logs"),
        format!("/v1/device({dev})/logs?follow=true"),
    ] {
        let r = s.req("HEAD", &p, Some(&k), None);
        assert_eq!(r.status, 200, "HEAD {p}");
        assert!(r.body.is_empty(), "HEAD {p}: {}", r.body);
    }
    // 409 names the field.
    let r = s.post(
        "/v1/fleet",
        &k,
        json!({"name": "f", "device_type": "qemuarm64"}),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["target"], "owner, name", "{}", r.body);
    // 413 and 414 in the JSON error shape.
    let r = s.raw(
        "POST",
        "/v1/fleet",
        Some(&k),
        &[],
        vec![b' '; 17 * 1024 * 1024],
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "PayloadTooLarge", "{}", r.body);
    let long = format!("/v1/fleet?$filter=name eq '{}'", "a".repeat(64_100));
    let r = s.get(&long, &k);
    assert_eq!(r.status, 414);
    assert_eq!(r.json()["error"]["code"], "UriTooLong", "{}", r.body);
    // 405 too.
    let r = s.req("PUT", "/v1/fleet", Some(&k), None);
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["code"].is_string());
}

/// The settings flags work after the subcommand too, `serve --help` lists
/// them, and the log has no colour codes when stderr is not a terminal.
#[test]
fn flags_after_the_subcommand_and_plain_logs() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_resin-cloud");
    let dir = tempfile::tempdir().unwrap();
    let help = Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for flag in ["--listen", "--database-url", "--data-dir", "--public-url"] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    let db = format!("sqlite://{}/r.db", dir.path().display());
    let out = Command::new(bin)
        .args(["bootstrap", "--username", "u", "--database-url", &db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["api_key"].as_str().unwrap().starts_with("resin_u_"));

    let mut child = Command::new(bin)
        .args([
            "serve",
            "--plain-http",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = vec![];
    let listening = loop {
        match lines.next() {
            Some(Ok(l)) => {
                let done = l.contains("listening on");
                seen.push(l);
                if done {
                    break true;
                }
            }
            _ => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        listening,
        "serve --listen did not start:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in a piped log: {seen:?}"
    );
}
