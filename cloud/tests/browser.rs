//! The dashboard in a real browser: Debian's chromium, headless, driven
//! through chromedriver (WebDriver). A user logs in, creates a fleet and
//! downloads its configured image; a fake device registers and reports; the
//! device page shows it online and a log line posted appears live; its
//! reboot button puts a reboot into the device's target state. When the
//! network drops, the live logs say so and reconnect by themselves.
//! Screenshots of the fleet and device pages are saved under
//! `$RESIN_SCREENSHOTS` (default: the cargo target's tmp dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use common::{Backend, Server};
use serde_json::json;
use webdriver::{screenshots, Driver};

const PW: &str = "correct horse battery";

#[test]
fn a_user_runs_a_fleet_in_chromium() {
    let s = Server::start(Backend::Sqlite);
    let (_, key) = s.web_user("alice", PW);
    let mut d = Driver::start();

    // Log in: the login page, then back to the fleets.
    d.goto(&format!("{}/fleets", s.base));
    assert!(d.url().contains("/login?next="), "{}", d.url());
    d.type_into("#username", "alice");
    d.type_into("#password", PW);
    d.click("form.login button[type=submit]");
    d.wait_for(Duration::from_secs(10), "the fleets page", |d| {
        d.url().ends_with("/fleets")
    });
    assert_eq!(d.text(".who"), "alice");

    // Create a fleet.
    d.type_into("#fleet-name", "demo");
    d.click("#create-fleet button");
    d.wait_for(Duration::from_secs(10), "the fleet page", |d| {
        d.url().contains("/fleets/")
    });
    assert_eq!(d.text("#fleet-name"), "demo");
    let fleet: i64 = d.url().rsplit('/').next().unwrap().parse().unwrap();

    // An OS release with an image (through the API), then the configured
    // image from the fleet page, downloaded by the browser.
    let work = tempfile::tempdir().unwrap();
    let img = common::image::base_image(work.path());
    let osr = s.create(
        &key,
        "os_release",
        json!({"device_type": "qemuarm64", "version": "1.0"}),
    );
    let osr = osr["id"].as_i64().unwrap();
    let r = s.raw(
        "PUT",
        &format!("/v1/os_release({osr})/image"),
        Some(&key),
        &[],
        std::fs::read(&img).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    d.goto(&format!("{}/fleets/{fleet}", s.base));
    d.click("#image-download button");
    let downloads = d.downloads.clone();
    d.wait_for(Duration::from_secs(60), "the image download", |_| {
        std::fs::read_dir(&downloads)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !n.ends_with(".crdownload") && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
            })
    });
    let file = std::fs::read_dir(&downloads)
        .unwrap()
        .filter_map(Result::ok)
        .next()
        .unwrap()
        .path();
    let head = std::fs::read(&file).unwrap();
    assert_eq!(
        &head[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "{}: zstd",
        file.display()
    );

    // A fake device registers with a provisioning key and reports.
    let prov = s.create(
        &key,
        "provisioning_key",
        json!({"fleet": fleet, "name": "p"}),
    );
    let (dev, uuid, dev_key) = s.device(prov["key"].as_str().unwrap());
    let report = json!({uuid.clone(): {"status": "Idle", "os_version": "1.0",
        "supervisor_version": "0.1.0", "ip_address": ["10.0.2.15"],
        "apps": {"a1": {"release_uuid": "r1", "services": {"main": {"status": "running",
            "release_uuid": "r1", "image": "reg/web@sha256:00"}}}}}});
    let r = s.req("PATCH", "/device/v3/state", Some(&dev_key), Some(&report));
    assert_eq!(r.status, 200, "{}", r.body);

    // The fleet page lists it online.
    d.goto(&format!("{}/fleets/{fleet}", s.base));
    let row = d.text(&format!("tr[data-device-id='{dev}']"));
    assert!(row.contains("online"), "{row}");
    d.screenshot(&screenshots().join("fleet.png"));

    // The device page: online, and a log line posted shows up live.
    d.goto(&format!("{}/devices/{dev}", s.base));
    assert_eq!(d.text("#device-online"), "online");
    d.wait_for(Duration::from_secs(10), "the log stream", |d| {
        d.attr("#logs", "data-state").as_deref() == Some("live")
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let line =
        json!({"timestamp": now as i64, "service": "main", "message": "hello from the device"});
    let r = s.raw(
        "POST",
        &format!("/device/v2/{uuid}/log-stream"),
        Some(&dev_key),
        &[("Content-Type", "application/x-ndjson")],
        format!("{line}\n").into_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let took = d.wait_for(Duration::from_secs(2), "the log line in the page", |d| {
        d.text("#log-lines").contains("main hello from the device")
    });
    eprintln!("the log line appeared after {took:?}");
    d.screenshot(&screenshots().join("device.png"));

    // Pause holds lines back; resume shows them.
    d.click("#log-pause");
    assert_eq!(d.attr("#logs", "data-state").as_deref(), Some("paused"));
    let line = json!({"timestamp": now as i64 + 1, "service": "main", "message": "while paused"});
    let r = s.raw(
        "POST",
        &format!("/device/v2/{uuid}/log-stream"),
        Some(&dev_key),
        &[("Content-Type", "application/x-ndjson")],
        format!("{line}\n").into_bytes(),
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!d.text("#log-lines").contains("while paused"));
    d.click("#log-pause");
    d.wait_for(Duration::from_secs(2), "the held line", |d| {
        d.text("#log-lines").contains("while paused")
    });

    // The reboot button: the page lists the action, and it reaches the
    // device's target state (what the supervisor polls).
    d.click("#reboot button");
    d.wait_for(Duration::from_secs(10), "the action in the page", |d| {
        d.try_find("#action-list tr[data-action-id]").is_some()
    });
    let row = d.text("#action-list tbody tr");
    assert!(row.contains("reboot") && row.contains("pending"), "{row}");
    let r = s.raw(
        "GET",
        &format!("/device/v3/{uuid}/state"),
        Some(&dev_key),
        &[],
        vec![],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let actions = r.json()[&uuid]["actions"].clone();
    assert_eq!(actions[0]["action"], "reboot", "{actions}");
}

/// The live logs over a network that drops: the browser reaches the cloud
/// through a proxy that cuts every connection and refuses new ones for a
/// while. The page says the stream dropped, reconnects by itself when the
/// network is back, and new lines appear again.
#[test]
fn live_logs_say_when_the_stream_drops_and_reconnect() {
    let s = Server::start(Backend::Sqlite);
    let (_, key) = s.web_user("alice", PW);
    let (_, prov) = s.fleet(&key, "f");
    let (dev, uuid, dev_key) = s.device(&prov);
    let upstream: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let net = proxy::Proxy::start(upstream);
    let base = format!("http://{}", net.addr);
    let mut d = Driver::start();
    d.goto(&format!("{base}/login"));
    d.type_into("#username", "alice");
    d.type_into("#password", PW);
    d.click("form.login button[type=submit]");
    d.wait_for(Duration::from_secs(10), "the fleets page", |d| {
        d.url().ends_with("/fleets")
    });
    d.goto(&format!("{base}/devices/{dev}"));
    d.wait_for(Duration::from_secs(10), "the log stream", |d| {
        d.attr("#logs", "data-state").as_deref() == Some("live")
    });
    let post = |msg: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let line = json!({"timestamp": now, "service": "main", "message": msg});
        let r = s.raw(
            "POST",
            &format!("/device/v2/{uuid}/log-stream"),
            Some(&dev_key),
            &[("Content-Type", "application/x-ndjson")],
            format!("{line}\n").into_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    post("before the drop");
    d.wait_for(Duration::from_secs(2), "the first line", |d| {
        d.text("#log-lines").contains("before the drop")
    });

    // The network drops: the page says so (and keeps what it showed).
    net.cut();
    let took = d.wait_for(Duration::from_secs(5), "the dropped state", |d| {
        d.attr("#logs", "data-state").as_deref() == Some("dropped")
    });
    eprintln!("the page showed the drop after {took:?}");
    assert_eq!(d.text("#log-state"), "stream dropped, reconnecting…");
    assert!(d.text("#log-lines").contains("before the drop"));
    // Still down a while later: still saying so, not pretending to be live.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.attr("#logs", "data-state").as_deref(), Some("dropped"));

    // The network is back: the page reconnects by itself, and new lines
    // appear again.
    net.up();
    let took = d.wait_for(Duration::from_secs(15), "the reconnect", |d| {
        d.attr("#logs", "data-state").as_deref() == Some("live")
    });
    eprintln!("the page reconnected {took:?} after the network came back");
    assert_eq!(d.text("#log-state"), "live");
    post("after the reconnect");
    d.wait_for(Duration::from_secs(2), "a line after the reconnect", |d| {
        d.text("#log-lines").contains("after the reconnect")
    });
}
