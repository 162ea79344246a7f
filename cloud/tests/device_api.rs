//! Device API end to end against a real server, on SQLite and PostgreSQL:
//! registration, target state with ETag/304, state reports, log stream,
//! logs read and follow, retention, offline after silence, OS bundles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{Backend, Server};
use serde_json::json;

both!(
    register_target_report_logs,
    retention_and_offline,
    bundles_with_ranges,
    concurrent_registrations_and_reports,
    plain_reports_at_once_are_each_stored_and_keep_what_they_leave_out,
    depends_on_reaches_the_target_state
);

fn register_target_report_logs(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "f1");

    // Register; a repeat without the device key is refused (tenants.rs
    // has the whole rule) and the first key keeps working.
    let uuid = "00112233445566778899aabbccddeeff";
    let reg = json!({"uuid": uuid, "deviceType": "qemuarm64", "name": "dev1", "osVersion": "1.0"});
    let r1 = s.post("/device/register", &prov, reg.clone());
    assert_eq!(r1.status, 201, "{}", r1.body);
    let r2 = s.post("/device/register", &prov, reg.clone());
    assert_eq!(r2.status, 409, "{}", r2.body);
    let id = r1.json()["id"].as_i64().unwrap();
    let key = r1.json()["apiKey"].as_str().unwrap().to_owned();
    let state_path = format!("/device/v3/{uuid}/state");
    // Bad registrations.
    let bad_type =
        json!({"uuid": "ffffffffffffffffffffffffffffffff", "deviceType": "raspberrypi4-64"});
    let r = s.post("/device/register", &prov, bad_type);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("device type"));
    let bad_uuid = json!({"uuid": "XYZ", "deviceType": "qemuarm64"});
    assert_eq!(s.post("/device/register", &prov, bad_uuid).status, 400);
    assert_eq!(
        s.req("POST", "/device/register", None, Some(&reg)).status,
        401
    );
    assert_eq!(s.post("/device/register", &alice, reg.clone()).status, 403);
    assert_eq!(
        s.raw(
            "POST",
            "/device/register",
            Some(&prov),
            &[],
            b"{nope".to_vec()
        )
        .status,
        400
    );

    // Target state with a strong ETag; If-None-Match answers 304 and no body.
    let t = s.get(&state_path, &key);
    assert_eq!(t.status, 200, "{}", t.body);
    let etag = t.header("etag").expect("etag");
    assert!(etag.starts_with('"') && !etag.starts_with("W/"));
    let target = t.json();
    assert_eq!(target[uuid]["name"], "dev1");
    let nm = s.raw(
        "GET",
        &state_path,
        Some(&key),
        &[("If-None-Match", &etag)],
        vec![],
    );
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    assert_eq!(
        s.get(&state_path, &key).header("etag").unwrap(),
        etag,
        "stable ETag"
    );

    // A release, env and config vars and an OS target show up; the ETag changes.
    let rel = s.create(&alice, "release", json!({"fleet": fleet, "composition": {
        "services": {"web": {"image": "127.0.0.1:55000/web@sha256:abcd", "environment": {"A": "1", "B": "2"},
            "labels": ["io.resin.update.strategy=hand-over"], "ports": ["8080:80"], "restart": "unless-stopped",
            "command": "sh -c true", "privileged": false, "cap_add": ["NET_ADMIN"]}},
        "volumes": {"data": {}}, "networks": {"backend": {"driver": "bridge"}}}}));
    let rel_id = rel["id"].as_i64().unwrap();
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &alice,
            json!({"target_release": rel_id})
        )
        .status,
        204
    );
    let svc = s.get(&format!("/v1/service?$filter=release eq {rel_id}"), &alice);
    let svc_id = if svc.status == 200 {
        svc.json()["value"][0]["id"].as_i64().unwrap()
    } else {
        s.get("/v1/service", &alice).json()["value"][0]["id"]
            .as_i64()
            .unwrap()
    };
    s.create(
        &alice,
        "fleet_env_var",
        json!({"fleet": fleet, "name": "F", "value": "fleet"}),
    );
    s.create(
        &alice,
        "device_env_var",
        json!({"device": id, "name": "D", "value": "dev"}),
    );
    s.create(
        &alice,
        "service_env_var",
        json!({"service": svc_id, "name": "B", "value": "svc"}),
    );
    s.create(
        &alice,
        "fleet_config_var",
        json!({"fleet": fleet, "name": "RESIN_SUPERVISOR_POLL_INTERVAL", "value": "1000"}),
    );
    s.create(
        &alice,
        "device_config_var",
        json!({"device": id, "name": "RESIN_SUPERVISOR_POLL_INTERVAL", "value": "2000"}),
    );
    let t2 = s.raw(
        "GET",
        &state_path,
        Some(&key),
        &[("If-None-Match", &etag)],
        vec![],
    );
    assert_eq!(t2.status, 200, "changed state is not a 304");
    assert_ne!(t2.header("etag").unwrap(), etag);
    let d = &t2.json()[uuid];
    assert_eq!(
        d["config"]["RESIN_SUPERVISOR_POLL_INTERVAL"], "2000",
        "device config wins"
    );
    let app = d["apps"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(app["id"], fleet);
    assert_eq!(app["env"]["fleet"]["F"], "fleet");
    assert_eq!(app["env"]["device"]["D"], "dev");
    let release = &app["releases"][rel["uuid"].as_str().unwrap()];
    let web = &release["services"]["web"];
    assert_eq!(web["image"], "127.0.0.1:55000/web@sha256:abcd");
    assert_eq!(web["environment"], json!({"A": "1", "B": "svc"}));
    assert_eq!(web["labels"]["io.resin.update.strategy"], "hand-over");
    assert_eq!(web["command"], json!(["sh", "-c", "true"]));
    assert_eq!(web["restart"], "unless-stopped");
    assert_eq!(release["networks"]["backend"]["driver"], "bridge");
    assert!(release["volumes"]["data"].is_object());
    // OS target: fleet version, device override, resolved for the device type.
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &alice,
            json!({"target_os_version": "2.0"})
        )
        .status,
        204
    );
    let os = s.get(&state_path, &key).json()[uuid]["os"].clone();
    assert_eq!(os, json!({"version": "2.0"}), "no bundle uploaded yet");
    let osr = s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "2.1"}),
    );
    let osr_id = osr["id"].as_i64().unwrap();
    let up = s.raw(
        "PUT",
        &format!("/v1/os_release({osr_id})/bundle"),
        Some(&alice),
        &[("Content-Type", "application/octet-stream")],
        b"bundle bytes".to_vec(),
    );
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(
        s.patch(
            &format!("/v1/device({id})"),
            &alice,
            json!({"target_os_version": "2.1"})
        )
        .status,
        204
    );
    let os = s.get(&state_path, &key).json()[uuid]["os"].clone();
    assert_eq!(os["version"], "2.1");
    assert_eq!(os["bundle"]["size"], 12);
    assert_eq!(
        os["bundle"]["url"],
        format!("{}/os/bundle/{osr_id}", s.base)
    );
    assert_eq!(os["bundle"]["sha256"], up.json()["sha256"]);

    // State report updates the device row.
    let report = json!({uuid: {"status": "idle", "os_version": "2.0", "supervisor_version": "0.1.0",
        "ip_address": ["10.0.2.15"], "cpu_usage": 12.5, "memory_usage": 1000, "memory_total": 2000,
        "os_update": {"state": "rolled-back", "progress": 100, "reason": "boot counter ran out", "boot_slot": "rootfs.0"},
        "apps": {"a1": {"release_uuid": "r1", "services": {"main": {"status": "running",
            "release_uuid": "r1", "image": "reg/web@sha256:00"}}}}}});
    let r = s.req("PATCH", "/device/v3/state", Some(&key), Some(&report));
    assert_eq!(r.status, 200, "{}", r.body);
    let dev = s.get(&format!("/v1/device({id})"), &alice).json();
    assert_eq!(dev["status"], "idle");
    assert_eq!(dev["os_version"], "2.0");
    assert_eq!(dev["supervisor_version"], "0.1.0");
    assert_eq!(dev["ip_address"], "10.0.2.15");
    assert_eq!(dev["is_online"], true);
    assert!(dev["last_seen"].is_string());
    assert_eq!(dev["os_update_state"], "rolled-back");
    assert_eq!(dev["os_update_progress"], 100);
    assert_eq!(dev["os_update_reason"], "boot counter ran out");
    assert_eq!(dev["boot_slot"], "rootfs.0");
    assert_eq!(dev["cpu_usage"], 12.5);
    assert_eq!(dev["apps"]["a1"]["services"]["main"]["status"], "running");
    assert_eq!(dev["apps"]["a1"]["release_uuid"], "r1");
    // Reports for another device, or garbage, are refused.
    let other = json!({"ffffffffffffffffffffffffffffffff": {"status": "x"}});
    assert_eq!(
        s.req("PATCH", "/device/v3/state", Some(&key), Some(&other))
            .status,
        403
    );
    let garbage = json!({uuid: {"memory_usage": "lots"}});
    assert_eq!(
        s.req("PATCH", "/device/v3/state", Some(&key), Some(&garbage))
            .status,
        400
    );

    // Logs: plain NDJSON, gzip, and a bad batch that stores nothing.
    let logs_path = format!("/device/v2/{uuid}/log-stream");
    let plain = b"{\"timestamp\":1,\"service\":\"web\",\"message\":\"one\"}\n\n{\"timestamp\":2,\"message\":\"two \xc3\xa9\",\"isStderr\":true,\"isSystem\":true}\n".to_vec();
    let r = s.raw(
        "POST",
        &logs_path,
        Some(&key),
        &[("Content-Type", "application/x-ndjson")],
        plain,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"{\"timestamp\":3,\"message\":\"three\"}\n")
        .unwrap();
    let r = s.raw(
        "POST",
        &logs_path,
        Some(&key),
        &[
            ("Content-Type", "application/x-ndjson"),
            ("Content-Encoding", "gzip"),
        ],
        gz.finish().unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let bad = b"{\"timestamp\":4,\"message\":\"four\"}\n{\"timestamp\":\"x\"}\n".to_vec();
    let r = s.raw(
        "POST",
        &logs_path,
        Some(&key),
        &[("Content-Type", "application/x-ndjson")],
        bad,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{}",
        r.body
    );
    let r = s.raw(
        "POST",
        &logs_path,
        Some(&key),
        &[("Content-Encoding", "gzip")],
        b"not gzip".to_vec(),
    );
    assert_eq!(r.status, 400);
    let logs = s.get(&format!("/v1/device({id})/logs"), &alice).json();
    let msgs: Vec<&str> = logs["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, ["one", "two é", "three"]);
    assert_eq!(logs["value"][1]["isStderr"], true);
    assert_eq!(logs["value"][0]["service"], "web");

    // Follow: the backlog, then a line posted afterwards.
    let resp = s.stream(&format!("/v1/device({id})/logs?follow=true"), &alice);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let poster = {
        let (base, key, path) = (s.base.clone(), key.clone(), logs_path.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            ureq::post(format!("{base}{path}"))
                .header("Authorization", format!("Bearer {key}"))
                .send("{\"timestamp\":5,\"message\":\"live!\"}\n")
                .unwrap();
        })
    };
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m == "live!") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            let l: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            seen.push(l["message"].as_str().unwrap().to_owned());
        }
    }
    poster.join().unwrap();
    assert_eq!(seen, ["one", "two é", "three", "live!"]);

    // Another device's key gets nothing of this device.
    let (_, _, other_key) = s.device(&prov);
    assert_eq!(s.get(&state_path, &other_key).status, 403);
    assert_eq!(
        s.raw(
            "POST",
            &logs_path,
            Some(&other_key),
            &[],
            b"{\"timestamp\":1,\"message\":\"x\"}".to_vec()
        )
        .status,
        403
    );
    assert_eq!(s.req("GET", &state_path, None, None).status, 401);
}

fn retention_and_offline(backend: Backend) {
    let s = Server::start_with(backend, |c| {
        c.log_retention = 5;
        c.offline_after_secs = 2;
    });
    let (_, alice) = s.user("alice");
    let (_, prov) = s.fleet(&alice, "f");
    let (id, uuid, key) = s.device(&prov);
    let body: String = (0..8)
        .map(|i| format!("{{\"timestamp\":{i},\"message\":\"m{i}\"}}\n"))
        .collect();
    let r = s.raw(
        "POST",
        &format!("/device/v2/{uuid}/log-stream"),
        Some(&key),
        &[],
        body.into_bytes(),
    );
    assert_eq!(r.status, 200);
    let logs = s.get(&format!("/v1/device({id})/logs"), &alice).json();
    let msgs: Vec<&str> = logs["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, ["m3", "m4", "m5", "m6", "m7"]);
    let two = s
        .get(&format!("/v1/device({id})/logs?count=2"), &alice)
        .json();
    assert_eq!(two["value"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.get(&format!("/v1/device({id})/logs?count=x"), &alice)
            .status,
        400
    );

    assert_eq!(
        s.get(&format!("/v1/device({id})"), &alice).json()["is_online"],
        false
    );
    let r = s.req(
        "PATCH",
        "/device/v3/state",
        Some(&key),
        Some(&json!({&uuid: {"status": "idle"}})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        s.get(&format!("/v1/device({id})"), &alice).json()["is_online"],
        true
    );
    let mut online = true;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(250));
        online = s.get(&format!("/v1/device({id})"), &alice).json()["is_online"] == true;
        if !online {
            break;
        }
    }
    assert!(!online, "device still online after the configured silence");
    // Polling brings it back, with the next heartbeat write (batched: every
    // quarter of the offline timeout here, at least 1 s).
    assert_eq!(s.get(&format!("/device/v3/{uuid}/state"), &key).status, 200);
    let mut online = false;
    for _ in 0..20 {
        online = s.get(&format!("/v1/device({id})"), &alice).json()["is_online"] == true;
        if online {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(online, "a polling device is not back online after 2 s");
}

fn bundles_with_ranges(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_, bob) = s.user("bob");
    let (_, prov) = s.fleet(&alice, "f");
    let (_, _, dev_key) = s.device(&prov);
    let rpi = s.create(
        &alice,
        "fleet",
        json!({"name": "pis", "device_type": "raspberrypi4-64"}),
    );
    let rpi_prov = s.create(
        &alice,
        "provisioning_key",
        json!({"fleet": rpi["id"], "name": "p"}),
    );
    let r = s.post(
        "/device/register",
        rpi_prov["key"].as_str().unwrap(),
        json!({"uuid": "abababababababababababababababab", "deviceType": "raspberrypi4-64"}),
    );
    let rpi_key = r.json()["apiKey"].as_str().unwrap().to_owned();

    let osr = s.create(
        &alice,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "3.0"}),
    );
    let id = osr["id"].as_i64().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = format!("/v1/os_release({id})/bundle");
    assert_eq!(
        s.raw("PUT", &path, Some(&bob), &[], b"x".to_vec()).status,
        404,
        "other user"
    );
    assert_eq!(
        s.raw("PUT", &path, Some(&alice), &[], vec![]).status,
        400,
        "empty upload"
    );
    let up = s.raw("PUT", &path, Some(&alice), &[], data.clone());
    assert_eq!(up.status, 200, "{}", up.body);
    let row = s.get(&format!("/v1/os_release({id})"), &alice).json();
    assert_eq!(row["bundle_size"], 200_000);
    assert_eq!(row["bundle_sha256"].as_str().unwrap().len(), 64);
    // No temp files left behind.
    let dir = s.dir.path().join("os").join(id.to_string());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["bundle.raucb"]);

    let url = format!("/os/bundle/{id}");
    let full = s.raw("GET", &url, Some(&dev_key), &[], vec![]);
    assert_eq!(full.status, 200);
    assert_eq!(full.header("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(full.header("content-length").as_deref(), Some("200000"));
    let get_range = |range: &str| s.agent_bytes(&url, &dev_key, range);
    let (st, cr, body) = get_range("bytes=10-19");
    assert_eq!(st, 206);
    assert_eq!(cr.as_deref(), Some("bytes 10-19/200000"));
    assert_eq!(body, &data[10..20]);
    let (st, cr, body) = get_range("bytes=199990-");
    assert_eq!(
        (st, cr.as_deref()),
        (206, Some("bytes 199990-199999/200000"))
    );
    assert_eq!(body, &data[199_990..]);
    let (st, _, body) = get_range("bytes=-5");
    assert_eq!(st, 206);
    assert_eq!(body, &data[199_995..]);
    let (st, cr, _) = get_range("bytes=200000-");
    assert_eq!((st, cr.as_deref()), (416, Some("bytes */200000")));
    assert_eq!(get_range("bytes=9-3").0, 416);
    assert_eq!(get_range("lines=1-2").0, 416);
    // Who may fetch.
    assert_eq!(s.raw("GET", &url, None, &[], vec![]).status, 401);
    assert_eq!(
        s.raw("GET", &url, Some(&rpi_key), &[], vec![]).status,
        403,
        "other device type"
    );
    assert_eq!(s.raw("GET", &url, Some(&prov), &[], vec![]).status, 403);
    assert_eq!(
        s.raw("GET", "/os/bundle/9999", Some(&dev_key), &[], vec![])
            .status,
        404
    );
    assert_eq!(
        s.raw("GET", "/os/bundle/x", Some(&dev_key), &[], vec![])
            .status,
        400
    );
}

trait Bytes {
    fn agent_bytes(&self, path: &str, key: &str, range: &str) -> (u16, Option<String>, Vec<u8>);
}

impl Bytes for Server {
    fn agent_bytes(&self, path: &str, key: &str, range: &str) -> (u16, Option<String>, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .get(format!("{}{}", self.base, path))
            .header("Authorization", format!("Bearer {key}"))
            .header("Range", range)
            .call()
            .unwrap();
        let st = resp.status().as_u16();
        let cr = resp
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.into_body().read_to_vec().unwrap();
        (st, cr, body)
    }
}

/// Many devices registering and reporting at once: every request succeeds
/// (on SQLite, concurrent writers used to get `500 database is locked`).
fn concurrent_registrations_and_reports(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_fleet, prov) = s.fleet(&alice, "busy");
    let threads = 12;
    let per_thread = 8;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (s, prov) = (&s, &prov);
            scope.spawn(move || {
                for i in 0..per_thread {
                    let uuid = format!("{:016x}{:016x}", t + 1, i + 1);
                    let reg = json!({"uuid": uuid, "deviceType": "qemuarm64"});
                    let r = s.post("/device/register", prov, reg);
                    assert_eq!(r.status, 201, "register {uuid}: {}", r.body);
                    let key = r.json()["apiKey"].as_str().unwrap().to_owned();
                    let report = json!({ uuid.clone(): {"status": "idle", "osVersion": "1.0"} });
                    let r = s.patch("/device/v3/state", &key, report);
                    assert!(r.status < 300, "report {uuid}: {} {}", r.status, r.body);
                }
            });
        }
    });
    let count = s.get("/v1/device/$count", &alice);
    assert_eq!(count.status, 200, "{}", count.body);
    assert_eq!(count.body.trim(), (threads * per_thread).to_string());
}

/// Plain reports (no actions, no OS version or update: the single-`UPDATE`
/// path) from many devices at once: each device's own values land on its
/// own row, a field a report leaves out keeps what an earlier report
/// stored, every 200 means the report is already readable, and a report
/// with one field over its cap stores nothing.
fn plain_reports_at_once_are_each_stored_and_keep_what_they_leave_out(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (_fleet, prov) = s.fleet(&alice, "busy");
    let devices: Vec<(i64, String, String)> = (0..24).map(|_| s.device(&prov)).collect();
    // Every device sends the report `make(i)` at once; each checks that its
    // status reads back as soon as its 200 came.
    let round = |make: &(dyn Fn(usize) -> serde_json::Value + Sync)| {
        std::thread::scope(|scope| {
            for (i, (id, uuid, key)) in devices.iter().enumerate() {
                let (s, alice) = (&s, &alice);
                scope.spawn(move || {
                    let fields = make(i);
                    let want = fields["status"].clone();
                    let r = s.patch("/device/v3/state", key, json!({ uuid.clone(): fields }));
                    assert_eq!(r.status, 200, "report of device {i}: {}", r.body);
                    let dev = s.get(&format!("/v1/device({id})"), alice).json();
                    assert_eq!(dev["status"], want, "device {i}: {dev}");
                });
            }
        });
    };
    round(&|i| {
        json!({"status": format!("s{i}"), "supervisor_version": "0.2.0",
            "ip_address": [format!("10.0.2.{i}"), "fe80::1"], "cpu_usage": i as f64 + 0.5,
            "cpu_temp": 40.0, "memory_usage": i * 1000, "memory_total": 2_000_000,
            "storage_usage": i, "storage_total": 99,
            "apps": {"a1": {"release_uuid": format!("r{i}"), "services": {}}}})
    });
    round(&|i| json!({"status": format!("idle{i}"), "memory_usage": 7}));
    for (i, (id, _, _)) in devices.iter().enumerate() {
        let dev = s.get(&format!("/v1/device({id})"), &alice).json();
        assert_eq!(dev["status"], format!("idle{i}").as_str(), "{dev}");
        assert_eq!(dev["memory_usage"], 7, "{dev}");
        // Left out of the second report: still the first one's.
        assert_eq!(dev["supervisor_version"], "0.2.0", "{dev}");
        assert_eq!(
            dev["ip_address"],
            format!("10.0.2.{i} fe80::1").as_str(),
            "{dev}"
        );
        assert_eq!(dev["cpu_usage"], i as f64 + 0.5, "{dev}");
        assert_eq!(dev["cpu_temp"], 40.0, "{dev}");
        assert_eq!(dev["memory_total"], 2_000_000, "{dev}");
        assert_eq!(dev["storage_usage"], i, "{dev}");
        assert_eq!(dev["storage_total"], 99, "{dev}");
        assert_eq!(
            dev["apps"]["a1"]["release_uuid"],
            format!("r{i}").as_str(),
            "{dev}"
        );
        assert_eq!(dev["is_online"], true, "{dev}");
        assert!(dev["last_seen"].is_string(), "{dev}");
    }
    // A report with one field over its cap is refused whole.
    let (id, uuid, key) = &devices[0];
    let long = "x".repeat(300);
    let r = s.patch(
        "/device/v3/state",
        key,
        json!({ uuid.clone(): {"status": long, "memory_usage": 1} }),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let dev = s.get(&format!("/v1/device({id})"), &alice).json();
    assert_eq!(dev["memory_usage"], 7, "{dev}");
}

/// Compose `depends_on` (list or map form) is stored and reaches the
/// device's target state; a name that is not a service of the release, a
/// condition the supervisor cannot keep, or a cycle is a 400 naming it.
fn depends_on_reaches_the_target_state(backend: Backend) {
    let s = Server::start(backend);
    let (_, alice) = s.user("alice");
    let (fleet, prov) = s.fleet(&alice, "deps");
    for (deps, needle) in [
        (
            json!({"web": {"image": "x", "depends_on": ["db", "cache"]}, "db": {"image": "y"}}),
            "services.web.depends_on: unknown service \\\"cache\\\"",
        ),
        (
            json!({"web": {"image": "x", "depends_on": {"db": {"condition": "service_healthy"}}},
                   "db": {"image": "y"}}),
            "services.web.depends_on.db.condition",
        ),
        (
            json!({"a": {"image": "x", "depends_on": ["b"]}, "b": {"image": "x", "depends_on": ["c"]},
                   "c": {"image": "x", "depends_on": ["a"]}}),
            "dependency cycle a -> b -> c -> a",
        ),
        (
            json!({"a": {"image": "x", "depends_on": ["a"]}}),
            "dependency cycle a -> a",
        ),
        (
            json!({"a": {"image": "x", "depends_on": "b"}, "b": {"image": "x"}}),
            "services.a.depends_on: expected a list",
        ),
    ] {
        let r = s.post(
            "/v1/release",
            &alice,
            json!({"fleet": fleet, "composition": {"services": deps}}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains(needle), "{} should say {needle}", r.body);
    }
    let rel = s.create(
        &alice,
        "release",
        json!({"fleet": fleet, "composition": {"services": {
            "web": {"image": "reg/web:1", "depends_on": ["db", "cache"]},
            "api": {"image": "reg/api:1", "depends_on": {"db": {"condition": "service_started"}, "cache": {}}},
            "db": {"image": "reg/db:1"},
            "cache": {"image": "reg/cache:1", "depends_on": ["db"]}}}}),
    );
    assert_eq!(
        s.patch(
            &format!("/v1/fleet({fleet})"),
            &alice,
            json!({"target_release": rel["id"]})
        )
        .status,
        204
    );
    let uuid = "0123456789abcdef0123456789abcdef";
    let r = s.post(
        "/device/register",
        &prov,
        json!({"uuid": uuid, "deviceType": "qemuarm64"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.json()["apiKey"].as_str().unwrap().to_owned();
    let t = s.get(&format!("/device/v3/{uuid}/state"), &key).json();
    let services = t[uuid]["apps"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["releases"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["services"]
        .clone();
    assert_eq!(
        services["web"]["depends_on"],
        json!(["db", "cache"]),
        "{services}"
    );
    assert_eq!(
        services["api"]["depends_on"],
        json!(["cache", "db"]),
        "{services}"
    );
    assert_eq!(services["cache"]["depends_on"], json!(["db"]), "{services}");
    assert!(services["db"].get("depends_on").is_none(), "{services}");
}
