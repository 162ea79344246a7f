//! Builds through the cloud (`POST /v1/build`) against the real engine and
//! registry, on SQLite and PostgreSQL: a two-service project becomes a
//! release pinned as the fleet's target with its log stored; bad input
//! leaves the previous release and the fleet's target alone and makes no
//! release; closing the request cancels the build.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Backend, Server};
use resin_cloud::config::BuilderSettings;
use serde_json::Value;

both!(
    push_builds_a_release_and_pins_it,
    bad_builds_change_nothing,
    closing_the_request_cancels_the_build,
    git_push_builds_and_a_failed_build_rejects_the_push,
    a_build_left_by_a_killed_cloud_fails_after_its_lease,
    a_build_past_the_timeout_fails_and_changes_nothing,
    a_registry_that_is_down_fails_the_build_and_changes_nothing
);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is unset: run scripts/services.sh and `source /tmp/resin-run/env.sh`")
    })
}

/// Pushes the arm64 base image once per test binary; returns its name.
fn base_image() -> String {
    static DONE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/base-image.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg("source \"$1\" && push_base_image \"$2\" \"$3\"")
            .arg("bash")
            .arg(&script)
            .arg(env("RESIN_TEST_REGISTRY"))
            .arg(env("RESIN_TEST_DOCKER_HOST"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "push_base_image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/library/busybox", env("RESIN_TEST_REGISTRY"))
    })
    .clone()
}

fn server(backend: Backend) -> Server {
    server_with(backend, |_| {})
}

/// A server whose builder is tweaked by `tweak` (timeout, registry, …).
fn server_with(backend: Backend, tweak: impl FnOnce(&mut BuilderSettings)) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let mut b = BuilderSettings {
        registry: env("RESIN_TEST_REGISTRY"),
        device_registry: None,
        docker_host: env("RESIN_TEST_DOCKER_HOST"),
        workers: 1,
        timeout_secs: 120,
        max_context_bytes: 1 << 20,
        max_per_user: 2,
        lease_secs: 60,
        hook_exe: Some(env!("CARGO_BIN_EXE_resin-cloud").into()),
    };
    tweak(&mut b);
    Server::start_with(backend, |c| c.builder = Some(b))
}

/// A gzipped tar of `files`.
fn targz(files: &[(&str, String)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (p, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, p, text.as_bytes()).unwrap();
    }
    let tar = t.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn project(web_run: &str) -> Vec<(&'static str, String)> {
    let base = base_image();
    vec![
        (
            "docker-compose.yml",
            "services:\n  web:\n    build: ./web\n  worker:\n    build: ./worker\n".into(),
        ),
        (
            "web/Dockerfile",
            format!("FROM {base}\nRUN {web_run}\nCMD [\"sleep\", \"3600\"]\n"),
        ),
        (
            "worker/Dockerfile",
            format!("FROM {base}\nCOPY . /app\nCMD [\"sleep\", \"3600\"]\n"),
        ),
        ("worker/a.txt", "a\n".into()),
    ]
}

/// POSTs a build and reads the whole NDJSON answer (a build takes longer
/// than the harness agent's 30 s).
fn push(s: &Server, key: &str, fleet: &str, body: Vec<u8>) -> (u16, Vec<Value>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let resp = agent
        .post(format!("{}/v1/build?fleet={fleet}", s.base))
        .header("Authorization", format!("Bearer {key}"))
        .header("Content-Type", "application/gzip")
        .send(&body[..])
        .unwrap();
    let status = resp.status().as_u16();
    let mut r = std::io::BufReader::new(resp.into_body().into_reader());
    let (mut lines, mut text, mut line) = (Vec::new(), String::new(), String::new());
    while r.read_line(&mut line).unwrap() > 0 {
        text.push_str(&line);
        if status == 200 {
            lines.push(serde_json::from_str(line.trim_end()).unwrap());
        }
        line.clear();
    }
    (status, lines, text)
}

fn fleet_target(s: &Server, key: &str, fleet: i64) -> Value {
    s.get(&format!("/v1/fleet({fleet})"), key).json()["target_release"].clone()
}

fn release_count(s: &Server, key: &str) -> usize {
    s.get("/v1/release", key).json()["value"]
        .as_array()
        .unwrap()
        .len()
}

fn push_builds_a_release_and_pins_it(backend: Backend) {
    let s = server(backend);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    let (status, lines, body) = push(
        &s,
        &key,
        &fleet.to_string(),
        targz(&project("uname -m > /arch && echo \"ran on $(cat /arch)\"")),
    );
    assert_eq!(status, 200, "{body}");
    let last = lines.last().unwrap();
    assert_eq!(last["state"], "success", "{body}");
    let release = last["release"].as_i64().unwrap();
    assert!(
        body.contains("\"service\":\"web\",\"message\":\"ran on aarch64\""),
        "{body}"
    );
    // Pin on success: the fleet's target is the new release.
    assert_eq!(fleet_target(&s, &key, fleet), release);
    let r = s.get(&format!("/v1/release({release})"), &key).json();
    assert_eq!(r["status"], "success");
    let comp: Value = match &r["composition"] {
        Value::String(t) => serde_json::from_str(t).unwrap(),
        v => v.clone(),
    };
    for svc in ["web", "worker"] {
        let image = comp["services"][svc]["image"].as_str().unwrap();
        assert!(image.contains(&format!("/{svc}@sha256:")), "{svc}: {image}");
    }
    // The stored log, by release.
    let logs = s.get(&format!("/v1/release({release})/logs"), &key);
    assert_eq!(logs.status, 200);
    assert!(logs.body.contains("ran on aarch64"), "{}", logs.body);
    // Another user sees neither the build's log nor the fleet.
    let (_, other) = s.user("mallory");
    assert_eq!(
        s.get(&format!("/v1/release({release})/logs"), &other)
            .status,
        404
    );
}

fn bad_builds_change_nothing(backend: Backend) {
    let s = server(backend);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    let (_, lines, body) = push(&s, &key, "app", targz(&project("true")));
    assert_eq!(lines.last().unwrap()["state"], "success", "{body}");
    let good = fleet_target(&s, &key, fleet);
    let releases = release_count(&s, &key);

    let failing = |files: Vec<(&str, String)>, want: &str| {
        let (status, lines, body) = push(&s, &key, &fleet.to_string(), targz(&files));
        assert_eq!(status, 200, "{body}");
        let last = lines.last().unwrap();
        assert_eq!(last["state"], "failed", "{body}");
        let msg = last["message"].as_str().unwrap();
        assert!(msg.contains(want), "want {want:?} in {msg:?}");
        assert_eq!(fleet_target(&s, &key, fleet), good, "{want}");
        assert_eq!(release_count(&s, &key), releases, "{want}");
    };
    failing(
        project("echo about to fail && exit 3"),
        "service web: the build failed: The command '/bin/sh -c echo about to fail && exit 3' returned a non-zero code: 3",
    );
    failing(
        vec![("README", "nothing here".into())],
        "the project is empty",
    );
    let mut no_df = project("true");
    no_df.retain(|(p, _)| *p != "worker/Dockerfile");
    failing(
        no_df,
        "service worker: no Dockerfile at \"worker/Dockerfile\"",
    );
    let mut bad = project("true");
    bad[0].1 = "services:\n  web:\n    build: ./web\n    ports: ['80:99999']\n".into();
    failing(bad, "docker-compose.yml: services.web.ports[0]");

    // Over the upload limit: 413 before any build.
    let mut big = project("true");
    // Random letters: about 1.8 MiB gzipped, over the 1 MiB limit.
    let noise: String = (0..3 << 20)
        .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
        .collect();
    big.push(("worker/big.txt", noise));
    let (status, _, body) = push(&s, &key, &fleet.to_string(), targz(&big));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over the limit"), "{body}");
    // Another user's fleet: 404, as if it did not exist.
    let (_, other) = s.user("mallory");
    let (status, _, body) = push(&s, &other, &fleet.to_string(), targz(&project("true")));
    assert_eq!(status, 404, "{body}");
    // Not a gzipped tar.
    let (status, lines, body) = push(&s, &key, &fleet.to_string(), b"hello".to_vec());
    assert_eq!(status, 200, "{body}");
    assert_eq!(lines.last().unwrap()["state"], "failed", "{body}");
    assert_eq!(fleet_target(&s, &key, fleet), good);
    assert_eq!(release_count(&s, &key), releases);
}

fn closing_the_request_cancels_the_build(backend: Backend) {
    let s = server(backend);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let id;
    {
        let resp = agent
            .post(format!("{}/v1/build?fleet={fleet}", s.base))
            .header("Authorization", format!("Bearer {key}"))
            .header("Content-Type", "application/gzip")
            .send(&targz(&project("echo sleeping && sleep 60"))[..])
            .unwrap();
        assert_eq!(resp.status(), 200);
        id = resp
            .headers()
            .get("x-resin-build")
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<i64>()
            .unwrap();
        let mut r = std::io::BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        // Read until the RUN step is running, then hang up.
        loop {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
            if line.contains("sleeping") {
                break;
            }
        }
    }
    let t0 = Instant::now();
    loop {
        let b = s.get(&format!("/v1/build/{id}"), &key).json();
        if b["status"] == "cancelled" {
            assert!(b["release"].is_null());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "not cancelled: {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(fleet_target(&s, &key, fleet).is_null());
    let logs = s.get(&format!("/v1/build/{id}/logs"), &key);
    assert!(logs.body.contains("build cancelled"), "{}", logs.body);
}

/// Runs git in `dir` (no prompts, no user config); returns (success, stderr).
fn git(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn commit(dir: &std::path::Path, files: &[(&str, String)], msg: &str) {
    for (p, text) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }
    assert!(git(dir, &["add", "-A"]).0);
    let (ok, err) = git(dir, &["commit", "-q", "--allow-empty", "-m", msg]);
    assert!(ok, "{err}");
}

fn git_push_builds_and_a_failed_build_rejects_the_push(backend: Backend) {
    let s = server(backend);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    let host = s.base.strip_prefix("http://").unwrap();
    let url = format!("http://alice:{key}@{host}/git/app.git");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(git(&dir, &["init", "-q"]).0);

    // An empty project is refused, and nothing changes.
    commit(&dir, &[("README", "nothing to build".into())], "empty");
    let (ok, err) = git(&dir, &["push", &url, "HEAD:main"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("remote: build failed: the project is empty"),
        "{err}"
    );
    assert!(err.contains("pre-receive hook declined"), "{err}");
    assert!(fleet_target(&s, &key, fleet).is_null());
    assert_eq!(release_count(&s, &key), 0);

    // A good push: the build log arrives as remote: lines, and the release
    // is the fleet's target.
    commit(
        &dir,
        &project("uname -m > /arch && echo \"ran on $(cat /arch)\""),
        "two services",
    );
    let (ok, err) = git(&dir, &["push", &url, "HEAD:main"]);
    assert!(ok, "{err}");
    assert!(err.contains("remote: [web] ran on aarch64"), "{err}");
    assert!(err.contains("remote: build succeeded: release"), "{err}");
    let good = fleet_target(&s, &key, fleet);
    assert!(good.is_i64(), "{good}");
    assert_eq!(release_count(&s, &key), 1);

    // A failing Dockerfile: the push is rejected with the builder's error,
    // the fleet keeps its release, and no release is made.
    commit(&dir, &project("echo about to fail && exit 3"), "broken");
    let (ok, err) = git(&dir, &["push", &url, "HEAD:main"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("remote: build failed: service web: the build failed: The command '/bin/sh -c echo about to fail && exit 3' returned a non-zero code: 3"),
        "{err}"
    );
    assert!(err.contains("pre-receive hook declined"), "{err}");
    assert_eq!(fleet_target(&s, &key, fleet), good);
    assert_eq!(release_count(&s, &key), 1);

    // Wrong key: 401 (git says the authentication failed).
    let bad = format!("http://alice:resin_u_{}@{host}/git/app.git", "0".repeat(64));
    let (ok, err) = git(&dir, &["push", &bad, "HEAD:main"]);
    assert!(!ok && err.contains("Authentication failed"), "{err}");
    let r = s.raw(
        "GET",
        "/git/app.git/info/refs?service=git-receive-pack",
        None,
        &[],
        vec![],
    );
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate").unwrap().starts_with("Basic"),
        "{}",
        r.body
    );
    // Another user's fleet: not found, and nothing changes.
    let (_, other) = s.user("mallory");
    let theirs = format!("http://mallory:{other}@{host}/git/{fleet}.git");
    let (ok, err) = git(&dir, &["push", &theirs, "HEAD:main"]);
    assert!(!ok && err.contains("not found"), "{err}");
    assert_eq!(fleet_target(&s, &key, fleet), good);
}

/// A `resin-cloud serve` process (plain HTTP on `port`) on `s`'s database
/// and data dir, building with one worker and a 3 s lease.
fn cloud_process(s: &Server, port: u16) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_resin-cloud"))
        .args(["serve", "--plain-http", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--database-url")
        .arg(&s.app.config.database_url)
        .arg("--data-dir")
        .arg(s.dir.path())
        .env_remove("RESIN_CLOUD_CONFIG")
        .env("RESIN_CLOUD_BUILDER_REGISTRY", env("RESIN_TEST_REGISTRY"))
        .env(
            "RESIN_CLOUD_BUILDER_DOCKER_HOST",
            env("RESIN_TEST_DOCKER_HOST"),
        )
        .env("RESIN_CLOUD_BUILDER_WORKERS", "1")
        .env("RESIN_CLOUD_BUILDER_LEASE_SECS", "3")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "resin-cloud did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `path` from a cloud process on `port`.
fn get_from(port: u16, path: &str, key: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("Authorization", format!("Bearer {key}"))
        .call()
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// kill -9 of the cloud process in the middle of a build: the job does not
/// stay `building` for ever. A cloud started again on the same database
/// finds its lease run out and fails it with the reason in its log; no
/// release is made and the fleet's target stays.
fn a_build_left_by_a_killed_cloud_fails_after_its_lease(backend: Backend) {
    // This in-process server only holds the database (it has no builder).
    let s = Server::start(backend);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    let releases = release_count(&s, &key);
    let port = free_port();
    let mut first = cloud_process(&s, port);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(format!("http://127.0.0.1:{port}/v1/build?fleet={fleet}"))
        .header("Authorization", format!("Bearer {key}"))
        .header("Content-Type", "application/gzip")
        .send(&targz(&project("echo sleeping && sleep 60"))[..])
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id: i64 = resp
        .headers()
        .get("x-resin-build")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut r = std::io::BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
        if line.contains("sleeping") {
            break;
        }
    }
    first.kill().unwrap(); // SIGKILL: no cleanup of any kind
    first.wait().unwrap();
    drop(r);
    let b = s.get(&format!("/v1/build/{id}"), &key).json();
    assert_eq!(b["status"], "building", "{b}");
    let context = std::fs::read_dir(s.dir.path().join("builds"))
        .unwrap()
        .count();
    assert!(
        context > 0,
        "the dead process left its context and work dir"
    );

    // Started again on the same database: within a few leases the build is
    // failed, with the reason as its last log line.
    let port = free_port();
    let mut second = cloud_process(&s, port);
    let t0 = Instant::now();
    let b = loop {
        let b = get_from(port, &format!("/v1/build/{id}"), &key);
        if b["status"] != "building" {
            break b;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still building after 30 s: {b}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let waited = t0.elapsed();
    assert_eq!(b["status"], "failed", "{b}");
    assert!(b["release"].is_null(), "{b}");
    let error = b["error"].as_str().unwrap();
    assert!(
        error.contains("the builder working on it stopped (no heartbeat for over 3 s"),
        "{error}"
    );
    let logs = s.get(&format!("/v1/build/{id}/logs"), &key);
    let last: Value = serde_json::from_str(logs.body.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "failed", "{}", logs.body);
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("build failed: the builder working on it stopped"),
        "{last}"
    );
    assert!(fleet_target(&s, &key, fleet).is_null());
    assert_eq!(release_count(&s, &key), releases);
    // What the dead process left on disk is gone.
    let left: Vec<_> = std::fs::read_dir(s.dir.path().join("builds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    second.kill().unwrap();
    second.wait().unwrap();
    eprintln!("the killed build was failed {waited:?} after the restart");
}

/// A build past the configured timeout: a clear error as the last NDJSON
/// line, status `failed`, and the previous release stays the target.
fn a_build_past_the_timeout_fails_and_changes_nothing(backend: Backend) {
    // Long enough for the first, good build on a loaded CI machine.
    let s = server_with(backend, |b| b.timeout_secs = 40);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    let (_, lines, body) = push(&s, &key, "app", targz(&project("true")));
    assert_eq!(lines.last().unwrap()["state"], "success", "{body}");
    let good = fleet_target(&s, &key, fleet);
    let releases = release_count(&s, &key);
    let t0 = Instant::now();
    let (status, lines, body) = push(
        &s,
        &key,
        "app",
        targz(&project("echo sleeping && sleep 120")),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        t0.elapsed() < Duration::from_secs(100),
        "{:?}",
        t0.elapsed()
    );
    let last = lines.last().unwrap();
    assert_eq!(last["state"], "failed", "{body}");
    assert_eq!(
        last["message"], "build failed: the build ran past its timeout of 40 s",
        "{body}"
    );
    assert!(body.contains("sleeping"), "{body}");
    assert_eq!(fleet_target(&s, &key, fleet), good);
    assert_eq!(release_count(&s, &key), releases);
}

/// The registry is down (a closed loopback port): a clear error naming it,
/// status `failed`, and the fleet's target and releases stay.
fn a_registry_that_is_down_fails_the_build_and_changes_nothing(backend: Backend) {
    let closed = free_port();
    let s = server_with(backend, |b| b.registry = format!("127.0.0.1:{closed}"));
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    // A release made by hand is the fleet's target.
    let rel = s.post(
        "/v1/release",
        &key,
        serde_json::json!({"fleet": fleet, "composition": {"services": {"web": {"image": "busybox"}}}}),
    );
    assert_eq!(rel.status, 201, "{}", rel.body);
    let good = rel.json()["id"].as_i64().unwrap();
    let r = s.patch(
        &format!("/v1/fleet({fleet})"),
        &key,
        serde_json::json!({"target_release": good}),
    );
    assert!(r.status < 300, "{}", r.body);
    let releases = release_count(&s, &key);
    let (status, lines, body) = push(&s, &key, "app", targz(&project("true")));
    assert_eq!(status, 200, "{body}");
    let last = lines.last().unwrap();
    assert_eq!(last["state"], "failed", "{body}");
    let msg = last["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "build failed: registry http://127.0.0.1:{closed}/v2/: not reachable"
        )),
        "{msg}"
    );
    assert!(
        lines.iter().all(|l| l["release"].is_null()),
        "a line names a release: {body}"
    );
    assert_eq!(fleet_target(&s, &key, fleet), good);
    assert_eq!(release_count(&s, &key), releases);
}

/// A `resin-cloud builder` process (two builds at most: one worker) on
/// `s`'s PostgreSQL database and data dir.
fn builder_process(s: &Server) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_resin-cloud"))
        .arg("builder")
        .arg("--database-url")
        .arg(&s.app.config.database_url)
        .arg("--data-dir")
        .arg(s.dir.path())
        .env_remove("RESIN_CLOUD_CONFIG")
        .env("RESIN_CLOUD_BUILDER_REGISTRY", env("RESIN_TEST_REGISTRY"))
        .env(
            "RESIN_CLOUD_BUILDER_DOCKER_HOST",
            env("RESIN_TEST_DOCKER_HOST"),
        )
        .env("RESIN_CLOUD_BUILDER_WORKERS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Two `resin-cloud builder` processes on one PostgreSQL take different
/// jobs (SKIP LOCKED), while `serve` only queues (`builder_workers = 0`):
/// two builds pushed at once both succeed, each built by another process.
#[test]
fn two_builder_processes_on_postgres_take_different_jobs() {
    let s = server_with(Backend::Postgres, |b| b.workers = 0);
    let (_, key) = s.user("alice");
    let (fleet, _) = s.fleet(&key, "app");
    let mut a = builder_process(&s);
    let mut b = builder_process(&s);
    let pids = [a.id(), b.id()];
    let results: Vec<(u16, Vec<Value>, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let (s, key) = (&s, &key);
                scope.spawn(move || {
                    push(
                        s,
                        key,
                        &fleet.to_string(),
                        targz(&project(&format!("echo job {i} && sleep 8"))),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut builders = Vec::new();
    for (status, lines, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(lines.last().unwrap()["state"], "success", "{body}");
        let by = lines
            .iter()
            .find_map(|l| l["message"].as_str()?.strip_prefix("taken by builder "))
            .unwrap_or_else(|| panic!("no `taken by` line: {body}"));
        let pid: u32 = by.rsplit('/').next().unwrap().parse().unwrap();
        assert!(pids.contains(&pid), "built by {by}, not {pids:?}");
        builders.push(pid);
    }
    assert_ne!(builders[0], builders[1], "one process took both jobs");
    assert_eq!(release_count(&s, &key), 2);
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

/// `resin-cloud builder` refuses SQLite with a clear message.
#[test]
fn the_builder_process_refuses_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resin-cloud"))
        .arg("builder")
        .arg("--database-url")
        .arg(format!("sqlite://{}/r.db", dir.path().display()))
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RESIN_CLOUD_CONFIG")
        .env("RESIN_CLOUD_BUILDER_REGISTRY", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resin-cloud builder needs PostgreSQL"),
        "{err}"
    );
}
