//! The resin-supervisor binary end to end: against a real resin-cloud
//! process (provisioning, polling with ETag/304, state report, logs, local
//! API, cloud outage) and a real dockerd (kill -9 mid-update, then a restart
//! converges with no orphaned container).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

/// A fleet with a provisioning key and a release running `image`; returns
/// (fleet id, fleet uuid = app uuid, provisioning key, release uuid).
fn fleet_with_release(
    cloud: &CloudProc,
    name: &str,
    image: &str,
    command: &str,
) -> (i64, String, String, String) {
    let f = cloud.create("fleet", json!({"name": name, "device_type": "qemuarm64"}));
    let fleet = f["id"].as_i64().unwrap();
    let app = f["uuid"].as_str().unwrap().to_owned();
    let p = cloud.create("provisioning_key", json!({"fleet": fleet, "name": "p"}));
    let prov = p["key"].as_str().unwrap().to_owned();
    let rel = cloud.create(
        "release",
        json!({"fleet": fleet, "composition": {"services": {"web": {
            "image": image, "command": ["sh", "-c", command], "environment": {"GREETING": "hi"}}}}}),
    );
    cloud.patch(
        &format!("/v1/fleet({fleet})"),
        json!({"target_release": rel["id"]}),
    );
    (fleet, app, prov, rel["uuid"].as_str().unwrap().to_owned())
}

fn config_json(cloud: &CloudProc, fleet: i64, prov: &str) -> serde_json::Value {
    json!({"apiEndpoint": cloud.url(), "fleetId": fleet, "fleetName": "f", "deviceType": "qemuarm64",
           "provisioningKey": prov, "pollIntervalMs": 1000, "rootCA": cloud.root_ca()})
}

fn device_row(cloud: &CloudProc, uuid: &str) -> Option<serde_json::Value> {
    let v = cloud.get(&format!("/v1/device?$filter=uuid%20eq%20'{uuid}'"));
    v["value"].as_array().and_then(|a| a.first().cloned())
}

#[test]
fn provisions_applies_reports_forwards_logs_and_serves_the_local_api() {
    let mut cloud = CloudProc::start();
    let root = tempfile::tempdir().unwrap();
    let img = local_image(&format!("sv-test/agent-{}", &app_uuid()[..8]));
    let cmd = "echo started $GREETING; trap 'exit 0' TERM; while true; do sleep 1; done";
    let (fleet, app, prov, rel) = fleet_with_release(&cloud, "agent", &img, cmd);
    let mut sup = SupervisorProc::new(
        root.path(),
        &config_json(&cloud, fleet, &prov),
        &[&app],
        &[],
    );
    sup.start();

    // Registered, device.json holds uuid, key and the cloud's id (the key
    // alone is there before the register call).
    let dev: serde_json::Value = wait_until(30, "device.json with an id", || {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sup.state.join("device.json")).ok()?)
                .ok()?;
        (d["apiKey"].is_string() && d["id"].is_i64()).then_some(d)
    });
    let uuid = dev["uuid"].as_str().unwrap().to_owned();
    // The target is applied.
    wait_until(60, "web running", || {
        (containers_of(&app) == [format!("web running {rel}")]).then_some(())
    });
    // The report reaches the cloud.
    let row = wait_until(30, "state report", || {
        let r = device_row(&cloud, &uuid)?;
        (r["os_version"] == "test-1" && r["supervisor_version"].is_string()).then_some(r)
    });
    let device_id = row["id"].as_i64().unwrap();
    // Logs arrive, stamped with the time the container wrote them (the
    // engine's), not the time the forwarder read them.
    let line = wait_until(30, "container log line in the cloud", || {
        let logs = cloud.get(&format!("/v1/device({device_id})/logs"));
        logs["value"]
            .as_array()?
            .iter()
            .find(|l| l["message"] == "started hi")
            .cloned()
    });
    let started = docker(&[
        "inspect",
        "--format",
        "{{.State.StartedAt}}",
        &docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=io.resin.app-uuid={app}"),
        ]),
    ]);
    // The supervisor's steps show as system lines in the same log.
    wait_until(30, "the step 'start web' as a system line", || {
        let logs = cloud.get(&format!("/v1/device({device_id})/logs"));
        logs["value"]
            .as_array()?
            .iter()
            .any(|l| l["message"] == "start web" && l["isSystem"] == true)
            .then_some(())
    });
    let started_ms = resin_supervisor::logs::split_timestamp(&format!("{started} x"), 0).0;
    let ts = line["timestamp"].as_i64().unwrap();
    assert!(
        started_ms > 0 && (started_ms - 50..started_ms + 1000).contains(&ts),
        "line at {ts}, container started at {started} ({started_ms})"
    );
    // Polls after the first are answered 304.
    wait_until(15, "a 304", || {
        sup.log_text().contains("not modified (304)").then_some(())
    });

    // Local API.
    let base = format!("http://127.0.0.1:{}", sup.port);
    assert_eq!(
        http("GET", &format!("{base}/ping"), None, None),
        (200, "OK".into())
    );
    assert_eq!(
        http("GET", &format!("{base}/v2/version"), None, None).0,
        401
    );
    assert_eq!(
        http("GET", &format!("{base}/v2/version"), Some("wrong"), None).0,
        401
    );
    let (s, b) = sup.api("GET", "/v2/version", None);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("success"));
    assert_eq!(sup.api("GET", "/v1/healthy", None).0, 200);
    let (s, b) = sup.api("GET", "/v2/applications/state", None);
    assert_eq!(s, 200);
    let state: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        state[&app]["services"]["web"]["status"], "running",
        "{state}"
    );
    let action = |a: &str| {
        sup.api(
            "POST",
            &format!("/v2/applications/{app}/{a}"),
            Some(json!({"serviceName": "web"})),
        )
    };
    assert_eq!(action("stop-service").0, 200);
    wait_until(30, "web stopped", || {
        (containers_of(&app) == [format!("web exited {rel}")]).then_some(())
    });
    assert_eq!(action("start-service").0, 200);
    wait_until(30, "web running again", || {
        (containers_of(&app) == [format!("web running {rel}")]).then_some(())
    });
    // While an update lock is held (the service's or the app's), restart,
    // stop and start answer 423 and do nothing, unless forced.
    let lock_dir = format!("/tmp/resin/locks/{app}/web");
    std::fs::create_dir_all(&lock_dir).unwrap();
    std::fs::write(format!("{lock_dir}/updates.lock"), "").unwrap();
    for a in ["stop-service", "restart-service", "start-service"] {
        let (s, b) = action(a);
        assert_eq!(s, 423, "{a}: {b}");
        assert!(b.contains("updates.lock"), "{b}");
    }
    assert_eq!(containers_of(&app), [format!("web running {rel}")]);
    std::fs::remove_file(format!("{lock_dir}/updates.lock")).unwrap();
    let app_lock = format!("/tmp/resin/locks/{app}/updates.lock");
    std::fs::write(&app_lock, "").unwrap();
    assert_eq!(action("stop-service").0, 423);
    let (s, b) = sup.api("POST", "/v1/restart", Some(json!({"appUuid": app})));
    assert_eq!(s, 423, "{b}");
    let (s, b) = sup.api(
        "POST",
        &format!("/v2/applications/{app}/restart-service"),
        Some(json!({"serviceName": "web", "force": true})),
    );
    assert_eq!(s, 200, "{b}");
    std::fs::remove_file(&app_lock).unwrap();
    wait_until(30, "web running after the forced restart", || {
        (containers_of(&app) == [format!("web running {rel}")]).then_some(())
    });
    assert_eq!(action("no-such-action").0, 404);
    let (s, _) = sup.api(
        "POST",
        &format!("/v2/applications/{app}/stop-service"),
        Some(json!({"serviceName": "nope"})),
    );
    assert_eq!(s, 404);
    let (s, _) = sup.api(
        "POST",
        &format!("/v2/applications/{app}/stop-service"),
        Some(json!({"bad": 1})),
    );
    assert!(s == 400 || s == 422, "{s}");
    assert_eq!(
        sup.api("POST", "/v1/update", Some(json!({"force": true})))
            .0,
        204
    );

    // A restart does not register again: the same key keeps working (the
    // cloud revokes the old key on every registration).
    sup.kill9();
    sup.start();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sup.state.join("device.json")).unwrap())
            .unwrap();
    assert_eq!(again, dev);
    let (s, _) = http(
        "GET",
        &format!("{}/device/v3/{uuid}/state", cloud.url()),
        dev["apiKey"].as_str(),
        None,
    );
    assert_eq!(s, 200);
    let devices = cloud.get(&format!("/v1/device?$filter=fleet%20eq%20{fleet}"));
    assert_eq!(devices["value"].as_array().unwrap().len(), 1);

    // Cloud away: the app keeps running, also across a supervisor restart.
    cloud.stop();
    sup.kill9();
    sup.start();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(containers_of(&app), [format!("web running {rel}")]);
    assert!(sup.log_text().contains("target poll failed"));

    sup.kill9();
    cleanup(&app);
    let _ = docker_ok(&["rmi", &img]);
}

#[test]
fn dropped_log_lines_are_counted_and_reported_when_the_cloud_returns() {
    let mut cloud = CloudProc::start();
    let root = tempfile::tempdir().unwrap();
    let img = local_image(&format!("sv-test/logs-{}", &app_uuid()[..8]));
    let cmd = "i=0; trap 'exit 0' TERM; while true; do i=$((i+1)); echo line $i; sleep 0.05; done";
    let (fleet, app, prov, _rel) = fleet_with_release(&cloud, "logs", &img, cmd);
    let mut sup = SupervisorProc::new(
        root.path(),
        &config_json(&cloud, fleet, &prov),
        &[&app],
        &[("RESIN_SUPERVISOR_LOG_BUFFER_LINES", "20")],
    );
    sup.start();
    let uuid = wait_until(60, "running and logging", || {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sup.state.join("device.json")).ok()?)
                .ok()?;
        let u = d["uuid"].as_str()?.to_owned();
        let id = device_row(&cloud, &u)?["id"].as_i64()?;
        let logs = cloud.get(&format!("/v1/device({id})/logs"));
        logs["value"]
            .as_array()?
            .iter()
            .any(|l| l["message"].as_str().unwrap_or("").starts_with("line "))
            .then_some(u)
    });
    cloud.stop();
    // ~60 lines in 3 s against a 20-line buffer.
    std::thread::sleep(std::time::Duration::from_secs(3));
    cloud.serve();
    let id = device_row(&cloud, &uuid).unwrap()["id"].as_i64().unwrap();
    let line = wait_until(30, "the dropped-lines system line", || {
        let logs = cloud.get(&format!("/v1/device({id})/logs"));
        logs["value"].as_array()?.iter().find_map(|l| {
            let m = l["message"].as_str()?;
            (l["isSystem"] == true && m.contains("dropped")).then(|| m.to_owned())
        })
    });
    let n: u64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert!(n >= 10, "{line}");
    sup.kill9();
    cleanup(&app);
    let _ = docker_ok(&["rmi", &img]);
}

#[test]
fn kill_9_mid_update_then_restart_converges_without_orphans() {
    // No cloud: the supervisor runs the persisted target.json, as offline.
    let root = tempfile::tempdir().unwrap();
    let app = app_uuid();
    let uuid = app_uuid();
    let img = local_image(&format!("sv-test/kill9-{}", &app[..8]));
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("device.json"),
        json!({"uuid": uuid, "apiKey": "k", "id": 1}).to_string(),
    )
    .unwrap();
    let write_target = |release: &str, n: usize| {
        let mut services = serde_json::Map::new();
        for i in 0..n {
            // Each release changes the services' config: a release that
            // changes nothing keeps the containers.
            let mut s = svc(&img);
            s.environment.insert("RELEASE".into(), release.into());
            services.insert(format!("s{i}"), serde_json::to_value(s).unwrap());
        }
        let t = json!({"etag": null, "target": {uuid.clone(): {"name": "d", "apps": {app.clone(): {"name": "a",
            "releases": {release: {"services": services}}}}}}});
        std::fs::write(state.join("target.json"), t.to_string()).unwrap();
    };
    let cj = json!({"apiEndpoint": format!("http://127.0.0.1:{}", free_port()), "fleetId": 1, "fleetName": "f",
                    "deviceType": "qemuarm64", "provisioningKey": "unused", "pollIntervalMs": 60000});
    write_target("rel1", 6);
    let mut sup = SupervisorProc::new(root.path(), &cj, &[&app], &[]);
    sup.start();
    wait_until(60, "release 1 running", || {
        let c = containers_of(&app);
        (c.len() == 6 && c.iter().all(|l| l.ends_with("running rel1"))).then_some(())
    });
    sup.kill9();

    // Release 2: kill -9 as soon as the update has started.
    write_target("rel2", 6);
    sup.start();
    wait_until(60, "update under way", || {
        containers_of(&app)
            .iter()
            .any(|l| l.ends_with("rel2"))
            .then_some(())
    });
    sup.kill9();
    let mid = containers_of(&app);
    assert!(
        mid.iter().any(|l| l.ends_with("rel1")),
        "killed too late to be mid-update: {mid:?}"
    );

    sup.start();
    wait_until(90, "release 2 converged", || {
        let c = containers_of(&app);
        (c.len() == 6 && c.iter().all(|l| l.ends_with("running rel2"))).then_some(())
    });
    // Still converged a moment later: nothing left behind.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let c = containers_of(&app);
    assert_eq!(c.len(), 6, "{c:?}");
    sup.kill9();
    cleanup(&app);
    let _ = docker_ok(&["rmi", &img]);
}

/// A service container removed behind the supervisor's back (`docker rm
/// -f`) is back within seconds: the engine's event stream starts a
/// reconcile at once, not at the next poll (10 minutes here).
#[test]
fn a_container_removed_outside_the_supervisor_is_back_within_seconds() {
    let root = tempfile::tempdir().unwrap();
    let app = app_uuid();
    let uuid = app_uuid();
    let img = local_image(&format!("sv-test/events-{}", &app[..8]));
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("device.json"),
        json!({"uuid": uuid, "apiKey": "k", "id": 1}).to_string(),
    )
    .unwrap();
    let services = json!({"web": svc(&img), "side": svc(&img)});
    let t = json!({"etag": null, "target": {uuid.clone(): {"name": "d", "apps": {app.clone(): {"name": "a",
        "releases": {"rel1": {"services": services}}}}}}});
    std::fs::write(state.join("target.json"), t.to_string()).unwrap();
    let cj = json!({"apiEndpoint": format!("http://127.0.0.1:{}", free_port()), "fleetId": 1, "fleetName": "f",
                    "deviceType": "qemuarm64", "provisioningKey": "unused", "pollIntervalMs": 600000});
    let mut sup = SupervisorProc::new(root.path(), &cj, &[&app], &[]);
    sup.start();
    let id_of = |svc: &str| {
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=io.resin.app-uuid={app}"),
            "--filter",
            &format!("label=io.resin.service-name={svc}"),
        ])
    };
    wait_until(60, "both running", || {
        (containers_of(&app) == ["side running rel1", "web running rel1"]).then_some(())
    });
    // Settle: the first round's own events are handled.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (web, side) = (id_of("web"), id_of("side"));
    let t0 = std::time::Instant::now();
    docker(&["rm", "-f", &web]);
    wait_until(15, "web back after docker rm -f", || {
        let now = id_of("web");
        (!now.is_empty() && now != web).then_some(())
    });
    let took = t0.elapsed();
    eprintln!("web back {took:?} after docker rm -f");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert_eq!(id_of("side"), side, "the other service is untouched");
    sup.kill9();
    cleanup(&app);
    let _ = docker_ok(&["rmi", &img]);
}

/// Before a reboot the supervisor flushes the state report: the cloud shows
/// an OS update's `rebooting` even with a long debounce, and the flush is
/// answered once the report is out.
#[test]
fn a_flush_sends_the_state_at_once_despite_the_debounce() {
    use resin_api_types::{OsUpdateReport, OsUpdateState, RegisterProof, RegisterRequest};
    use resin_supervisor::report::Reporter;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot, watch};

    let cloud = CloudProc::start();
    let f = cloud.create(
        "fleet",
        json!({"name": "flush", "device_type": "qemuarm64"}),
    );
    let p = cloud.create("provisioning_key", json!({"fleet": f["id"], "name": "p"}));
    let client =
        resin_supervisor::cloud::Cloud::with_tls(&cloud.url(), Some(trust_only(&cloud.ca_pem())));
    let uuid = app_uuid();
    let reg = client
        .register(
            p["key"].as_str().unwrap(),
            &RegisterRequest {
                uuid: uuid.clone(),
                device_type: "qemuarm64".into(),
                name: None,
                supervisor_version: None,
                os_version: None,
            },
            &RegisterProof::default(),
        )
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_current_tx, current) = watch::channel(Default::default());
    let (_status_tx, status) = watch::channel("idle".to_string());
    let (os_tx, os) = watch::channel(OsUpdateReport::default());
    let (_pulls_tx, pulls) = watch::channel(Default::default());
    let (_target_tx, target) = watch::channel(None);
    let (flush_tx, flush) = mpsc::channel(1);
    let (_actions_tx, actions) = watch::channel(Vec::new());
    let reporter = Reporter {
        cloud: client,
        uuid: uuid.clone(),
        key: reg.api_key.clone(),
        version: "test".into(),
        os_release: "/nonexistent".into(),
        data_path: "/".into(),
        interval: Duration::from_secs(600),
        debounce: Duration::from_secs(60),
        pulls,
        target,
        flush,
        actions,
    };
    rt.spawn(reporter.run(current, status, os));
    let state = || device_row(&cloud, &uuid).unwrap()["os_update_state"].clone();
    // The first report goes out at once.
    wait_until(20, "the first report", || (state() == "idle").then_some(()));

    os_tx.send_replace(OsUpdateReport {
        state: OsUpdateState::Rebooting,
        target_version: Some("2.0.0".into()),
        ..Default::default()
    });
    let t0 = std::time::Instant::now();
    rt.block_on(async {
        let (ack, sent) = oneshot::channel();
        flush_tx.send(ack).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("the flush is answered")
            .unwrap();
    });
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(state(), "rebooting", "sent before the flush was answered");
}

/// A fleet and its provisioning key for the provisioning tests; returns the
/// device's config.json (no uuid in it) and the provisioning key.
fn provisioning_fleet(cloud: &CloudProc, name: &str) -> (resin_api_types::ConfigJson, String) {
    let f = cloud.create("fleet", json!({"name": name, "device_type": "qemuarm64"}));
    let fleet = f["id"].as_i64().unwrap();
    let p = cloud.create("provisioning_key", json!({"fleet": fleet, "name": "p"}));
    let prov = p["key"].as_str().unwrap().to_owned();
    let config = serde_json::from_value(config_json(cloud, fleet, &prov)).unwrap();
    (config, prov)
}

/// Runs the provisioning FSM against `api` for at most `secs`; None when it
/// is still retrying then.
fn provision_for(
    secs: u64,
    config: &resin_api_types::ConfigJson,
    state: &std::path::Path,
    api: &str,
) -> Option<(String, String)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = config.root_ca_pem().unwrap().map(|pem| trust_only(&pem));
    let cloud = resin_supervisor::cloud::Cloud::with_tls(api, tls);
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(secs),
            resin_supervisor::provision::provision(config, state, &cloud, (None, None), &|_| {}),
        )
        .await
    })
    .ok()
    .map(|r| r.unwrap())
}

fn device_json(state: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state.join("device.json")).unwrap()).unwrap()
}

/// The supervisor dies after the cloud registered it but before the answer
/// was saved: the next start registers again with the uuid and the key it
/// saved before the first call, and the cloud answers the same device.
#[test]
fn a_registration_whose_answer_was_lost_gets_the_same_device_on_the_next_start() {
    let cloud = CloudProc::start();
    let (config, prov) = provisioning_fleet(&cloud, "lost-answer");
    let state = tempfile::tempdir().unwrap();

    // First start: the cloud cannot be reached, so the FSM is stopped after
    // its first attempt. Uuid and device key are on disk already; no id.
    let down = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(provision_for(2, &config, state.path(), &down), None);
    let saved = device_json(state.path());
    let uuid = saved["uuid"].as_str().unwrap().to_owned();
    let key = saved["apiKey"]
        .as_str()
        .unwrap_or_else(|| panic!("no apiKey saved before the first call: {saved}"))
        .to_owned();
    let hex = key.strip_prefix("resin_d_").unwrap();
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{key}"
    );
    assert!(saved.get("id").is_none(), "{saved}");

    // That call reached the cloud and its answer was lost (the body the
    // supervisor sends: its uuid and the key it chose).
    let (s, b) = http(
        "POST",
        &format!("{}/device/register", cloud.url()),
        Some(&prov),
        Some(json!({"uuid": uuid, "deviceType": "qemuarm64", "apiKey": key})),
    );
    assert_eq!(s, 201, "{b}");
    let id = serde_json::from_str::<serde_json::Value>(&b).unwrap()["id"]
        .as_i64()
        .unwrap();

    // Next start: registered again, same uuid, same key, same device.
    let got = provision_for(30, &config, state.path(), &cloud.url()).expect("registered");
    assert_eq!(got, (uuid.clone(), key.clone()));
    let saved = device_json(state.path());
    assert_eq!(saved["id"], id, "{saved}");
    let rows = cloud.get(&format!("/v1/device?$filter=uuid%20eq%20'{uuid}'"));
    assert_eq!(rows["value"].as_array().unwrap().len(), 1, "{rows}");
    // The key is the device's: the target state answers it.
    let (s, b) = http(
        "GET",
        &format!("{}/device/v3/{uuid}/state", cloud.url()),
        Some(&key),
        None,
    );
    assert_eq!(s, 200, "{b}");
}

/// A supervisor of before this change saved only the uuid, and its register
/// call went through: the cloud now refuses that uuid without its key (409).
/// The uuid was the supervisor's own pick, so it picks a fresh one and
/// registers, instead of retrying the refused uuid forever.
#[test]
fn a_refused_uuid_of_its_own_is_replaced_by_a_fresh_one() {
    let cloud = CloudProc::start();
    let (config, prov) = provisioning_fleet(&cloud, "refused");
    let state = tempfile::tempdir().unwrap();
    let taken = app_uuid();
    let (s, b) = http(
        "POST",
        &format!("{}/device/register", cloud.url()),
        Some(&prov),
        Some(json!({"uuid": taken, "deviceType": "qemuarm64"})),
    );
    assert_eq!(s, 201, "{b}");
    std::fs::write(
        state.path().join("device.json"),
        json!({ "uuid": taken }).to_string(),
    )
    .unwrap();

    let (uuid, key) = provision_for(20, &config, state.path(), &cloud.url())
        .expect("registered under a fresh uuid");
    assert_ne!(uuid, taken);
    let saved = device_json(state.path());
    assert_eq!(saved["uuid"], uuid.as_str(), "{saved}");
    assert_eq!(saved["apiKey"], key.as_str(), "{saved}");
    let row = device_row(&cloud, &uuid).expect("the new device in the cloud");
    assert_eq!(saved["id"], row["id"], "{saved}");
}

/// A uuid from config.json is the operator's: a 409 for it is retried (and
/// logged), never swapped for another uuid.
#[test]
fn a_refused_uuid_from_config_json_is_kept() {
    let cloud = CloudProc::start();
    let (mut config, prov) = provisioning_fleet(&cloud, "refused-config");
    let state = tempfile::tempdir().unwrap();
    let taken = app_uuid();
    let (s, b) = http(
        "POST",
        &format!("{}/device/register", cloud.url()),
        Some(&prov),
        Some(json!({"uuid": taken, "deviceType": "qemuarm64"})),
    );
    assert_eq!(s, 201, "{b}");
    config.uuid = Some(taken.clone());

    assert_eq!(provision_for(3, &config, state.path(), &cloud.url()), None);
    let saved = device_json(state.path());
    assert_eq!(saved["uuid"], taken.as_str(), "{saved}");
    assert!(saved.get("id").is_none(), "{saved}");
}

/// A device whose config.json names another CA refuses the cloud: it never
/// registers, and its log says that the cloud's certificate is not trusted.
#[test]
fn a_device_with_another_ca_refuses_the_cloud() {
    let cloud = CloudProc::start();
    let root = tempfile::tempdir().unwrap();
    let f = cloud.create(
        "fleet",
        json!({"name": "wrong-ca", "device_type": "qemuarm64"}),
    );
    let p = cloud.create("provisioning_key", json!({"fleet": f["id"], "name": "p"}));
    let mut cj = config_json(
        &cloud,
        f["id"].as_i64().unwrap(),
        p["key"].as_str().unwrap(),
    );
    let other = other_ca(&root.path().join("other-ca"));
    cj["rootCA"] = json!(resin_api_types::encode_root_ca(&other));
    let mut sup = SupervisorProc::new(&root.path().join("dev"), &cj, &[], &[]);
    sup.start();
    let line = wait_until(30, "the refusal in the supervisor's log", || {
        sup.log_text()
            .lines()
            .find(|l| l.contains("registration failed"))
            .map(str::to_owned)
    });
    assert!(
        line.contains("refusing the cloud at https://127.0.0.1")
            && line.contains("not trusted")
            && line.contains("invalid peer certificate"),
        "{line}"
    );
    let devices = cloud.get("/v1/device");
    assert_eq!(devices["value"], json!([]), "nothing registered");
    sup.kill9();
}

/// Device actions end to end (real cloud, real dockerd): a restart of one
/// service restarts that container and not its sibling, and the cloud shows
/// it done; a reboot is asked of logind once, reported `started` first, and
/// `done` after the next start in a new boot, and never asked again.
#[test]
fn device_actions_restart_one_service_and_reboot_once() {
    let mut cloud = CloudProc::start();
    let root = tempfile::tempdir().unwrap();
    let img = local_image(&format!("sv-test/actions-{}", &app_uuid()[..8]));
    let f = cloud.create(
        "fleet",
        json!({"name": "actions", "device_type": "qemuarm64"}),
    );
    let fleet = f["id"].as_i64().unwrap();
    let app = f["uuid"].as_str().unwrap().to_owned();
    let p = cloud.create("provisioning_key", json!({"fleet": fleet, "name": "p"}));
    let cmd = json!([
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done"
    ]);
    let rel = cloud.create(
        "release",
        json!({"fleet": fleet, "composition": {"services": {
            "web": {"image": img, "command": cmd}, "side": {"image": img, "command": cmd}}}}),
    );
    cloud.patch(
        &format!("/v1/fleet({fleet})"),
        json!({"target_release": rel["id"]}),
    );
    let rel = rel["uuid"].as_str().unwrap().to_owned();
    let boot = root.path().join("boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let boot_env = boot.display().to_string();
    // No logind at this address: the reboot is asked for and fails.
    let dbus = format!("unix:path={}", root.path().join("no-bus").display());
    let mut sup = SupervisorProc::new(
        root.path(),
        &config_json(&cloud, fleet, p["key"].as_str().unwrap()),
        &[&app],
        &[
            ("RESIN_SUPERVISOR_BOOT_ID", &boot_env),
            ("RESIN_SUPERVISOR_DBUS_ADDRESS", &dbus),
        ],
    );
    sup.start();
    wait_until(60, "both running", || {
        (containers_of(&app) == [format!("side running {rel}"), format!("web running {rel}")])
            .then_some(())
    });
    let dev: serde_json::Value = wait_until(30, "device.json", || {
        serde_json::from_str(&std::fs::read_to_string(sup.state.join("device.json")).ok()?).ok()
    });
    let dev_id = dev["id"].as_i64().unwrap();
    let started = |svc: &str| {
        let id = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=io.resin.app-uuid={app}"),
            "--filter",
            &format!("label=io.resin.service-name={svc}"),
        ]);
        let at = docker(&["inspect", "--format", "{{.State.StartedAt}}", &id]);
        (id, at)
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (web0, side0) = (started("web"), started("side"));
    let action = |id: i64| {
        let list = cloud.get(&format!("/v1/device({dev_id})/actions"));
        list["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap()
    };

    let a = cloud.create(
        &format!("device({dev_id})/actions"),
        json!({"action": "restart", "service": "web"}),
    );
    let id = a["id"].as_i64().unwrap();
    let done = wait_until(30, "the restart reported done", || {
        let a = action(id);
        (a["state"] == "done").then_some(a)
    });
    assert_eq!(done["result"], "restarted web");
    let (web1, side1) = (started("web"), started("side"));
    assert_eq!(web1.0, web0.0, "restarted, not recreated");
    assert_ne!(web1.1, web0.1, "web was restarted");
    assert_eq!(side1, side0, "side was not touched");
    // Its outcome leaves the target, and it is not run again.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(started("web"), web1);

    let a = cloud.create(
        &format!("device({dev_id})/actions"),
        json!({"action": "reboot"}),
    );
    let id = a["id"].as_i64().unwrap();
    let s = wait_until(30, "the reboot reported started", || {
        let a = action(id);
        (a["state"] == "started" && a["result"] == "rebooting").then_some(a)
    });
    assert_eq!(s["action"], "reboot");
    wait_until(30, "the reboot asked of logind", || {
        sup.log_text()
            .contains("rebooting through logind")
            .then_some(())
    });
    // The "reboot": a restart in a new boot.
    sup.kill9();
    std::fs::write(&boot, "boot-2\n").unwrap();
    sup.start();
    wait_until(60, "the reboot reported done", || {
        let a = action(id);
        (a["state"] == "done" && a["result"] == "rebooted").then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let asked = sup.log_text().matches("rebooting through logind").count();
    assert_eq!(asked, 1, "the reboot was asked for {asked} times");
    sup.kill9();
    cloud.stop();
    cleanup(&app);
    let _ = docker_ok(&["rmi", &img]);
}
