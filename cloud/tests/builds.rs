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
    git_push_builds_and_a_failed_build_rejects_the_push
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    Server::start_with(backend, |c| {
        c.builder = Some(BuilderSettings {
            registry: env("RESIN_TEST_REGISTRY"),
            docker_host: env("RESIN_TEST_DOCKER_HOST"),
            workers: 1,
            timeout_secs: 120,
            max_context_bytes: 1 << 20,
            max_per_user: 2,
            hook_exe: Some(env!("CARGO_BIN_EXE_resin-cloud").into()),
        });
    })
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
