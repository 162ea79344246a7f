//! End-to-end tests of the `resin` binary against a real resin-cloud
//! process (SQLite in a temp dir), as a user would drive it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// target/debug/resin-cloud, built (or brought up to date) by cargo.
fn cloud_binary() -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", "resin-cloud", "--bin", "resin-cloud"])
        .current_dir(&root)
        .status()
        .expect("running cargo build -p resin-cloud");
    assert!(st.success(), "cargo build -p resin-cloud failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("resin-cloud");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

struct Cloud {
    child: Child,
    url: String,
    key: String,
    _dir: tempfile::TempDir,
    home: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_cloud() -> Cloud {
    start_cloud_with(false)
}

/// A cloud on plain HTTP, or with `https` on HTTPS with the certificate of
/// `resin-cloud init` (CA in `<data>/tls/ca.pem`).
fn start_cloud_with(https: bool) -> Cloud {
    let bin = cloud_binary();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let port = free_port();
    let url = format!(
        "{}://127.0.0.1:{port}",
        if https { "https" } else { "http" }
    );
    let env = |c: &mut Command| {
        c.env("RESIN_CLOUD_DATA_DIR", &data)
            .env("RESIN_CLOUD_LISTEN", format!("127.0.0.1:{port}"))
            .env("RESIN_CLOUD_PUBLIC_URL", &url)
            // Pages of 2: every list the CLI shows spans several pages, so
            // each test also checks that `@odata.nextLink` is followed.
            .env("RESIN_CLOUD_PAGE_SIZE", "2")
            .env_remove("RESIN_CLOUD_DATABASE_URL")
            .env_remove("RESIN_CLOUD_CONFIG");
    };
    let mut boot = Command::new(&bin);
    env(&mut boot);
    let out = boot
        .args(["bootstrap", "--username", "admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v["api_key"].as_str().unwrap().to_string();
    if https {
        let mut init = Command::new(&bin);
        env(&mut init);
        let out = init.args(["init", "--host", "127.0.0.1"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut serve = Command::new(&bin);
    env(&mut serve);
    serve.arg("serve");
    if !https {
        serve.arg("--plain-http");
    }
    let child = serve
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cloud = Cloud {
        child,
        url,
        key,
        _dir: dir,
        home,
        bin,
        data,
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", cloud.port)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resin-cloud did not answer /ping within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cloud
}

impl Cloud {
    /// Another user of the same cloud (`resin-cloud bootstrap`): its API key.
    fn add_user(&self, username: &str) -> String {
        let out = Command::new(&self.bin)
            .env("RESIN_CLOUD_DATA_DIR", &self.data)
            .env("RESIN_CLOUD_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("RESIN_CLOUD_PUBLIC_URL", &self.url)
            .env_remove("RESIN_CLOUD_DATABASE_URL")
            .env_remove("RESIN_CLOUD_CONFIG")
            .args(["bootstrap", "--username", username])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bootstrap {username} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["api_key"].as_str().unwrap().to_string()
    }

    /// `resin ARGS` with HOME pointing at the test's own home (no env login).
    fn resin(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_resin"))
            .args(args)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RESIN_API_URL")
            .env_remove("RESIN_API_KEY")
            .env_remove("RESIN_CLI_CONFIG")
            .output()
            .unwrap()
    }

    /// `resin ARGS` with this cloud's URL and `key` in the environment:
    /// (exit code, stdout, stderr).
    fn run_as(&self, key: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_resin"))
            .args(args)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RESIN_CLI_CONFIG")
            .env("RESIN_API_URL", &self.url)
            .env("RESIN_API_KEY", key)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "resin {args:?} panicked: {err}");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            err,
        )
    }

    /// Runs `resin ARGS` as `key`, asserts exit 0, returns stdout.
    fn ok_as(&self, key: &str, args: &[&str]) -> String {
        let (code, out, err) = self.run_as(key, args);
        assert_eq!(code, 0, "resin {args:?}:\nstdout: {out}\nstderr: {err}");
        out
    }

    /// Runs `resin ARGS --json` as `key`, asserts exit 0, parses stdout.
    fn json_as(&self, key: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok_as(key, &a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("resin {a:?}: {e}: {out}"))
    }

    /// Runs `resin ARGS` as `key`, asserts exit code `code` with an
    /// `error:` line on stderr, returns stderr.
    fn fails_as(&self, key: &str, code: i32, args: &[&str]) -> String {
        let (got, out, err) = self.run_as(key, args);
        assert_eq!(got, code, "resin {args:?}:\nstdout: {out}\nstderr: {err}");
        assert!(err.starts_with("error:"), "resin {args:?}: {err}");
        err
    }

    /// Runs `resin ARGS`, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.resin(args);
        assert!(
            out.status.success(),
            "resin {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `resin ARGS`, asserts a clean failure, returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.resin(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "resin {args:?} should fail");
        assert!(!err.contains("panicked"), "resin {args:?} panicked: {err}");
        assert!(err.starts_with("error:"), "resin {args:?}: {err}");
        err
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// A direct API call, for what the CLI does not cover (devices).
    fn api(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {key}");
        let mut resp = match (method, body) {
            ("GET", _) => ureq::get(&url).header("Authorization", &auth).call(),
            ("POST", Some(b)) => ureq::post(&url)
                .header("Authorization", &auth)
                .send_json(&b),
            ("PATCH", Some(b)) => ureq::patch(&url)
                .header("Authorization", &auth)
                .send_json(&b),
            _ => unreachable!(),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = resp.body_mut().read_to_string().unwrap();
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }
}

fn post_logs(cloud: &Cloud, uuid: &str, device_key: &str, msgs: &[&str]) {
    let body: String = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "{}\n",
                json!({"timestamp": 1_700_000_000_000i64 + i as i64, "service": "web",
                       "message": m, "isStderr": false, "isSystem": false})
            )
        })
        .collect();
    ureq::post(format!("{}/device/v2/{uuid}/log-stream", cloud.url))
        .header("Authorization", format!("Bearer {device_key}"))
        .header("Content-Type", "application/x-ndjson")
        .send(body.as_bytes())
        .unwrap();
}

#[test]
fn a_fleet_owner_session() {
    let c = start_cloud();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let compose = data.join("docker-compose.yml");
    let compose = compose.to_str().unwrap();

    // Nothing stored yet: a clear hint, not a panic.
    let e = c.fails(&["fleet", "list"]);
    assert!(e.contains("resin login"), "{e}");

    // A wrong key is refused and nothing is stored.
    let e = c.fails(&["login", "--api-url", &c.url, "--api-key", "resin_u_wrong"]);
    assert!(e.contains("401"), "{e}");
    let cfg = c.home.join(".config/resin/cli.json");
    assert!(!cfg.exists());

    let out = c.ok(&["login", "--api-url", &c.url, "--api-key", &c.key]);
    assert!(out.contains("logged in"), "{out}");
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    assert_eq!(stored["api_key"], c.key.as_str());

    // Fleets.
    let out = c.ok(&["fleet", "create", "demo", "--device-type", "qemuarm64"]);
    assert!(out.contains("created fleet demo"), "{out}");
    let e = c.fails(&["fleet", "create", "demo", "--device-type", "qemuarm64"]);
    assert!(e.contains("HTTP 4"), "duplicate fleet: {e}");
    let table = c.ok(&["fleet", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("demo") && l.contains("qemuarm64")),
        "{table}"
    );
    let fleets = c.json(&["fleet", "list"]);
    let fleet_id = fleets[0]["id"].as_i64().unwrap();
    assert_eq!(fleets[0]["name"], "demo");

    // Env vars: create, then update in place.
    assert!(c
        .ok(&["env", "set", "MODE", "dev", "--fleet", "demo"])
        .contains("created MODE"));
    assert!(c
        .ok(&["env", "set", "MODE", "prod", "--fleet", "demo"])
        .contains("updated MODE"));
    let vars = c.api(
        "GET",
        &format!("/v1/fleet_env_var?$filter=fleet%20eq%20{fleet_id}"),
        &c.key,
        None,
    );
    let vars = vars["value"].as_array().unwrap();
    assert_eq!(vars.len(), 1, "{vars:?}");
    assert_eq!(vars[0]["value"], "prod");
    let e = c.fails(&["env", "set", "1BAD", "x", "--fleet", "demo"]);
    assert!(e.contains("invalid variable name"), "{e}");
    let e = c.fails(&["env", "set", "A", "x", "--fleet", "nope"]);
    assert!(e.contains("no fleet named"), "{e}");

    // Releases from a compose file.
    let e = c.fails(&["release", "create", "--fleet", "demo", "--compose", compose]);
    assert!(e.contains("--image web=REF"), "{e}");
    let bad = data.join("bad-compose.yml");
    let e = c.fails(&[
        "release",
        "create",
        "--fleet",
        "demo",
        "--compose",
        bad.to_str().unwrap(),
    ]);
    assert!(e.contains("image"), "{e}");
    let rel = c.json(&[
        "release",
        "create",
        "--fleet",
        "demo",
        "--compose",
        compose,
        "--image",
        "web=127.0.0.1:55000/web:1",
        "--pin",
    ]);
    let rel_id = rel["id"].as_i64().unwrap();
    assert_eq!(rel["uuid"].as_str().unwrap().len(), 32, "{rel}");
    let fleets = c.json(&["fleet", "list"]);
    assert_eq!(fleets[0]["target_release"], rel_id);
    let svc = c.api(
        "GET",
        &format!("/v1/service?$filter=release%20eq%20{rel_id}"),
        &c.key,
        None,
    );
    let mut names: Vec<&str> = svc["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["web", "worker"]);
    let out = c.ok(&[
        "env",
        "set",
        "LEVEL",
        "debug",
        "--service",
        "web",
        "--release",
        &rel_id.to_string(),
    ]);
    assert!(out.contains("created LEVEL on service web"), "{out}");
    let e = c.fails(&[
        "env",
        "set",
        "LEVEL",
        "x",
        "--service",
        "db",
        "--release",
        &rel_id.to_string(),
    ]);
    assert!(e.contains("no service named"), "{e}");

    // A device registers with a provisioning key, as the supervisor does.
    let pk = c.api(
        "POST",
        "/v1/provisioning_key",
        &c.key,
        Some(json!({"fleet": fleet_id, "name": "test"})),
    );
    let pk = pk["key"].as_str().unwrap();
    let uuid = "0123456789abcdef0123456789abcdef";
    let reg = c.api(
        "POST",
        "/device/register",
        pk,
        Some(json!({"uuid": uuid, "deviceType": "qemuarm64"})),
    );
    let dev_key = reg["apiKey"].as_str().unwrap().to_string();
    let dev_id = reg["id"].as_i64().unwrap();

    let table = c.ok(&["device", "list", "--fleet", "demo"]);
    assert!(table.lines().any(|l| l.contains(uuid)), "{table}");
    let all = c.json(&["device", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert!(c
        .ok(&["env", "set", "ROLE", "edge", "--device", uuid])
        .contains("created ROLE"));

    // Logs: history by uuid and by id, then follow.
    post_logs(&c, uuid, &dev_key, &["hello from web", "second line"]);
    let out = c.ok(&["logs", uuid]);
    assert!(out.contains("[web] hello from web"), "{out}");
    assert!(
        out.contains("2023-11-14T22:13:20"),
        "timestamps are readable: {out}"
    );
    let out = c.ok(&["logs", &dev_id.to_string(), "--json"]);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["message"], "hello from web");
    let e = c.fails(&["logs", "ffffffffffffffffffffffffffffffff"]);
    assert!(e.contains("no device"), "{e}");

    let mut follow = Command::new(env!("CARGO_BIN_EXE_resin"))
        .args(["logs", uuid, "--follow"])
        .env("HOME", &c.home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("RESIN_API_URL")
        .env_remove("RESIN_API_KEY")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = |rx: &mpsc::Receiver<String>, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("`resin logs --follow` never printed {needle:?}"),
            }
        }
    };
    want(&rx, "second line");
    post_logs(&c, uuid, &dev_key, &["live line"]);
    want(&rx, "live line");
    let _ = follow.kill();
    let _ = follow.wait();

    // OS release upload: the cloud's sha256 matches ours.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("os.raucb");
    std::fs::write(&bundle, vec![7u8; 300_000]).unwrap();
    let up = c.json(&[
        "os",
        "upload",
        "--device-type",
        "qemuarm64",
        "--version",
        "1.2.3",
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(up["bundle_size"], 300_000);
    let os = c.api(
        "GET",
        &format!("/v1/os_release({})", up["id"]),
        &c.key,
        None,
    );
    assert_eq!(os["bundle_sha256"], up["bundle_sha256"]);
    let e = c.fails(&[
        "os",
        "upload",
        "--device-type",
        "qemuarm64",
        "--version",
        "1.2.4",
        "--bundle",
        "/nonexistent.raucb",
    ]);
    assert!(e.contains("/nonexistent.raucb"), "{e}");

    // A download the cloud refuses leaves no file behind.
    let img = dir.path().join("out.img");
    let e = c.fails(&[
        "os",
        "download",
        "--fleet",
        "demo",
        "--version",
        "9.9.9",
        "-o",
        img.to_str().unwrap(),
    ]);
    assert!(e.contains("HTTP 4"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the bundle remains"
    );

    // Env overrides win over the stored login.
    let out = Command::new(env!("CARGO_BIN_EXE_resin"))
        .args(["fleet", "list"])
        .env("HOME", &c.home)
        .env("RESIN_API_KEY", "resin_u_nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// A small image with resin's layout, built by resin-imagegen (slots shrunk).
fn base_image(dir: &Path) -> PathBuf {
    let layout = workspace_root().join("imagegen/layouts/resin-ab.toml");
    let sets: Vec<String> = [
        "rootA.size=8MiB",
        "boot.size=8MiB",
        "state.size=8MiB",
        "data.min-size=8MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan = resin_imagegen::layout::Layout::load(&layout, &sets)
        .unwrap()
        .plan()
        .unwrap();
    let rootfs = dir.join("rootfs");
    let boot = dir.join("boot");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/os-release"), "VERSION_ID=2.0\n").unwrap();
    std::fs::create_dir_all(&boot).unwrap();
    let out = dir.join("base.img");
    let opts = resin_imagegen::build::BuildOptions {
        inputs: [("rootfs".to_string(), rootfs), ("boot".to_string(), boot)]
            .into_iter()
            .collect(),
        config: None,
        output: out.clone(),
        bmap: false,
        compression: resin_imagegen::configure::Compression::None,
        seed: Some("cli-test".into()),
    };
    resin_imagegen::build::build(&plan, &opts).unwrap();
    out
}

#[test]
fn os_upload_then_configured_download() {
    let c = start_cloud();
    let dir = tempfile::tempdir().unwrap();
    let img = base_image(dir.path());
    let bundle = dir.path().join("os.raucb");
    std::fs::write(&bundle, b"not really a bundle, but bytes to store").unwrap();
    let (url, key) = (c.url.clone(), c.key.clone());
    let with = |args: &[&str]| {
        let mut a = vec!["--api-url", url.as_str(), "--api-key", key.as_str()];
        a.extend_from_slice(args);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        c.ok(&refs)
    };
    run(with(&[
        "fleet",
        "create",
        "edge",
        "--device-type",
        "qemuarm64",
    ]));
    let out = run(with(&[
        "os",
        "upload",
        "--device-type",
        "qemuarm64",
        "--version",
        "2.0",
        "--bundle",
        bundle.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]));
    assert!(out.contains("uploaded OS release 2.0"), "{out}");

    // Uncompressed: same size as the base image, config.json written in.
    let plain = dir.path().join("edge.img");
    let out = run(with(&[
        "os",
        "download",
        "--fleet",
        "edge",
        "--version",
        "2.0",
        "-o",
        plain.to_str().unwrap(),
    ]));
    assert!(out.contains("wrote"), "{out}");
    let got = std::fs::read(&plain).unwrap();
    assert_eq!(got.len() as u64, std::fs::metadata(&img).unwrap().len());
    assert_ne!(
        got,
        std::fs::read(&img).unwrap(),
        "config.json was injected"
    );

    // zstd: decompresses to the same configured image.
    let z = dir.path().join("edge.img.zst");
    run(with(&[
        "os",
        "download",
        "--fleet",
        "edge",
        "--version",
        "2.0",
        "--compression",
        "zstd",
        "-o",
        z.to_str().unwrap(),
    ]));
    let unz = zstd::decode_all(std::fs::File::open(&z).unwrap()).unwrap();
    assert_eq!(unz.len(), got.len());
    // No temp files left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Registers a device as the supervisor does: (device id, device key).
fn register(c: &Cloud, provisioning_key: &str, uuid: &str) -> (i64, String) {
    let reg = c.api(
        "POST",
        "/device/register",
        provisioning_key,
        Some(json!({"uuid": uuid, "deviceType": "qemuarm64"})),
    );
    (
        reg["id"].as_i64().unwrap(),
        reg["apiKey"].as_str().unwrap().to_string(),
    )
}

/// A state report with just a status, as the supervisor sends it.
fn report_status(c: &Cloud, uuid: &str, device_key: &str, status: &str) {
    c.api(
        "PATCH",
        "/device/v3/state",
        device_key,
        Some(json!({ uuid: {"status": status} })),
    );
}

fn uuids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d["uuid"].as_str().unwrap().to_string())
        .collect()
}

fn data_rows(table: &str) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

const D1: &str = "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1";
const D2: &str = "d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2";
const D3: &str = "d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3";
const D4: &str = "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4";

#[test]
fn an_operator_session() {
    let c = start_cloud();
    let k = c.key.as_str();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let compose = data.join("docker-compose.yml");
    let compose = compose.to_str().unwrap();

    // whoami, with the global flag before and after the subcommand.
    let out = c.ok_as(k, &["whoami"]);
    assert!(out.contains("admin") && out.contains(&c.url), "{out}");
    assert_eq!(c.json_as(k, &["whoami"])["username"], "admin");
    let v: Value = serde_json::from_str(&c.ok_as(k, &["--json", "whoami"])).unwrap();
    assert_eq!(v["username"], "admin");

    // Bad usage is exit 2, whether clap or resin notices it.
    let (code, _, err) = c.run_as(k, &["device"]);
    assert_eq!(code, 2, "{err}");
    c.fails_as(k, 2, &["devices", "--online", "--offline"]);
    c.fails_as(k, 2, &["env", "list"]);
    let e = c.fails_as(k, 2, &["env", "set", "1BAD", "x", "--fleet", "ops"]);
    assert!(e.contains("invalid variable name"), "{e}");

    c.ok_as(k, &["fleet", "create", "ops", "--device-type", "qemuarm64"]);
    c.ok_as(k, &["fleet", "create", "lab", "--device-type", "qemuarm64"]);
    // An error from the cloud is exit 1 with its message.
    let e = c.fails_as(
        k,
        1,
        &["fleet", "create", "ops", "--device-type", "qemuarm64"],
    );
    assert!(e.contains("HTTP 409"), "{e}");

    // Provisioning keys: create (shown once), list, register with them.
    let pk = c.json_as(
        k,
        &["provisioning-key", "create", "line1", "--fleet", "ops"],
    );
    let pk_key = pk["key"].as_str().unwrap().to_string();
    let table = c.ok_as(k, &["provisioning-key", "list", "--fleet", "ops"]);
    assert!(table.contains("line1"), "{table}");
    assert!(!table.contains(&pk_key), "keys are never listed: {table}");
    let pk_lab = c.json_as(k, &["provisioning-key", "create", "lab", "--fleet", "lab"]);
    let (d1_id, d1_key) = register(&c, &pk_key, D1);
    let (_, d2_key) = register(&c, &pk_key, D2);
    register(&c, &pk_key, D3);
    register(&c, pk_lab["key"].as_str().unwrap(), D4);
    report_status(&c, D1, &d1_key, "idle");
    report_status(&c, D2, &d2_key, "updating");

    // Filters; `device list` and `devices` are the same command.
    assert_eq!(
        uuids(&c.json_as(k, &["devices", "--fleet", "ops"])),
        [D1, D2, D3]
    );
    assert_eq!(uuids(&c.json_as(k, &["device", "list"])), [D1, D2, D3, D4]);
    assert_eq!(
        uuids(&c.json_as(k, &["devices", "--status", "updating"])),
        [D2]
    );
    assert_eq!(uuids(&c.json_as(k, &["devices", "--online"])), [D1, D2]);
    assert_eq!(
        uuids(&c.json_as(k, &["device", "list", "--offline", "--fleet", "ops"])),
        [D3]
    );
    let table = c.ok_as(k, &["devices", "--fleet", "lab"]);
    assert!(table.starts_with("ID") && table.contains(D4), "{table}");
    let row = table.lines().find(|l| l.contains(D4)).unwrap();
    assert!(
        row.split_whitespace().any(|w| w == "lab"),
        "fleet by name: {row}"
    );
    assert_eq!(
        c.json_as(k, &["devices", "--fleet", "lab"])[0]["fleet_name"],
        "lab"
    );
    let e = c.fails_as(k, 1, &["devices", "--fleet", "nope"]);
    assert!(
        e.contains("no fleet named \"nope\"") && e.contains("resin fleet list"),
        "{e}"
    );

    // Tags.
    c.ok_as(k, &["tag", "set", "env", "prod", "--device", D1]);
    let out = c.ok_as(k, &["tag", "set", "env", "staging", "--device", D1]);
    assert!(out.contains("updated tag env=staging"), "{out}");
    c.ok_as(k, &["tag", "set", "env", "dev", "--device", D2]);
    c.ok_as(k, &["tag", "set", "region", "eu", "--fleet", "ops"]);
    let table = c.ok_as(k, &["tag", "list", "--device", D1]);
    assert_eq!(data_rows(&table), 1, "{table}");
    assert!(
        table.contains("env") && table.contains("staging"),
        "{table}"
    );
    assert!(c
        .ok_as(k, &["tag", "list", "--fleet", "ops"])
        .contains("eu"));
    assert_eq!(
        uuids(&c.json_as(k, &["devices", "--tag", "env=staging"])),
        [D1]
    );
    assert_eq!(uuids(&c.json_as(k, &["devices", "--tag", "env"])), [D1, D2]);
    assert_eq!(
        uuids(&c.json_as(k, &["devices", "--tag", "env", "--status", "updating"])),
        [D2]
    );
    let table = c.ok_as(k, &["devices", "--tag", "env=prod"]);
    assert_eq!(data_rows(&table), 0, "{table}");
    // Destructive: refused without --yes when stdin is not a terminal.
    let e = c.fails_as(k, 2, &["tag", "rm", "env", "--device", D2]);
    assert!(e.contains("--yes"), "{e}");
    assert_eq!(uuids(&c.json_as(k, &["devices", "--tag", "env"])), [D1, D2]);
    c.ok_as(k, &["tag", "rm", "env", "--device", D2, "--yes"]);
    assert_eq!(uuids(&c.json_as(k, &["devices", "--tag", "env"])), [D1]);
    let e = c.fails_as(k, 1, &["tag", "rm", "env", "--device", D2, "--yes"]);
    assert!(e.contains("has no tag"), "{e}");

    // Rename and show.
    let out = c.ok_as(k, &["device", "rename", D1, "kitchen"]);
    assert!(out.contains("renamed device"), "{out}");
    let show = c.ok_as(k, &["device", "show", &d1_id.to_string()]);
    for want in ["kitchen", "ops", "env=staging", "idle", D1] {
        assert!(show.contains(want), "{want}: {show}");
    }
    let dev = c.json_as(k, &["device", "show", D1]);
    assert_eq!(dev["name"], "kitchen");
    assert_eq!(dev["fleet_name"], "ops");
    assert_eq!(dev["tags"], json!({"env": "staging"}));
    let e = c.fails_as(
        k,
        1,
        &["device", "show", "ffffffffffffffffffffffffffffffff"],
    );
    assert!(
        e.contains("no device") && e.contains("resin devices"),
        "{e}"
    );

    // Releases: list, show, pin, remove.
    let r1 = c.json_as(
        k,
        &[
            "release",
            "create",
            "--fleet",
            "ops",
            "--compose",
            compose,
            "--image",
            "web=127.0.0.1:55000/web:1",
            "--pin",
        ],
    )["id"]
        .as_i64()
        .unwrap();
    let r2 = c.json_as(
        k,
        &[
            "release",
            "create",
            "--fleet",
            "ops",
            "--compose",
            compose,
            "--image",
            "web=127.0.0.1:55000/web:2",
        ],
    )["id"]
        .as_i64()
        .unwrap();
    let r_lab = c.json_as(
        k,
        &[
            "release",
            "create",
            "--fleet",
            "lab",
            "--compose",
            compose,
            "--image",
            "web=127.0.0.1:55000/web:3",
        ],
    )["id"]
        .as_i64()
        .unwrap();
    let (r1s, r2s, r_labs) = (r1.to_string(), r2.to_string(), r_lab.to_string());
    let list = c.json_as(k, &["release", "list", "--fleet", "ops"]);
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [r2, r1], "newest first");
    assert_eq!(list[1]["is_fleet_target"], true);
    assert_eq!(list[0]["is_fleet_target"], false);
    assert_eq!(data_rows(&c.ok_as(k, &["release", "list"])), 3);
    let show = c.ok_as(k, &["release", "show", &r2s]);
    assert!(
        show.contains("web") && show.contains("127.0.0.1:55000/web:2"),
        "{show}"
    );
    assert!(show.contains("worker"), "{show}");
    let rel = c.json_as(k, &["release", "show", &r2s]);
    assert_eq!(rel["services"].as_array().unwrap().len(), 2);

    let out = c.ok_as(k, &["device", "pin", D2, &r2s]);
    assert!(out.contains(&format!("pinned to release {r2}")), "{out}");
    assert_eq!(c.json_as(k, &["device", "show", D2])["pinned_release"], r2);
    let e = c.fails_as(k, 1, &["device", "pin", D2, &r_labs]);
    assert!(
        e.contains("another fleet") && e.contains("resin release list"),
        "{e}"
    );
    assert_eq!(c.json_as(k, &["device", "show", D2])["pinned_release"], r2);
    // A pinned release is in use: rm says what to do.
    c.fails_as(k, 2, &["release", "rm", &r2s]);
    let e = c.fails_as(k, 1, &["release", "rm", &r2s, "--yes"]);
    assert!(
        e.contains("--force") && e.contains("device.pinned_release"),
        "{e}"
    );
    c.ok_as(k, &["device", "unpin", D2]);
    assert_eq!(
        c.json_as(k, &["device", "show", D2])["pinned_release"],
        Value::Null
    );
    let out = c.ok_as(k, &["release", "rm", &r2s, "--yes"]);
    assert!(out.contains(&format!("removed release {r2}")), "{out}");
    let e = c.fails_as(k, 1, &["release", "show", &r2s]);
    assert!(e.contains("no release"), "{e}");
    // The fleet's target goes only with --force.
    c.fails_as(k, 1, &["release", "rm", &r1s, "-y"]);
    c.ok_as(k, &["release", "rm", &r1s, "-y", "--force"]);
    assert_eq!(
        data_rows(&c.ok_as(k, &["release", "list", "--fleet", "ops"])),
        0
    );

    // Env and config vars of fleets, devices and services.
    c.ok_as(k, &["env", "add", "MODE", "prod", "--fleet", "ops"]);
    c.ok_as(k, &["env", "set", "MODE", "dev", "--fleet", "ops"]);
    c.ok_as(
        k,
        &[
            "env",
            "set",
            "RESIN_SUPERVISOR_POLL_INTERVAL",
            "60000",
            "--fleet",
            "ops",
            "--config-var",
        ],
    );
    c.ok_as(k, &["env", "set", "ROLE", "edge", "--device", D1]);
    c.ok_as(
        k,
        &[
            "env",
            "set",
            "LEVEL",
            "debug",
            "--service",
            "web",
            "--release",
            &r_labs,
        ],
    );
    let vars = c.json_as(k, &["env", "list", "--fleet", "ops"]);
    assert_eq!(
        vars.as_array().unwrap().len(),
        1,
        "config vars are apart: {vars}"
    );
    assert_eq!(vars[0]["value"], "dev");
    let table = c.ok_as(k, &["env", "list", "--fleet", "ops", "--config-var"]);
    assert!(
        table.contains("RESIN_SUPERVISOR_POLL_INTERVAL") && table.contains("60000"),
        "{table}"
    );
    assert!(c
        .ok_as(k, &["env", "list", "--device", D1])
        .contains("ROLE"));
    assert!(c
        .ok_as(
            k,
            &["env", "list", "--service", "web", "--release", &r_labs]
        )
        .contains("LEVEL"));
    c.fails_as(
        k,
        2,
        &[
            "env",
            "list",
            "--service",
            "web",
            "--release",
            &r_labs,
            "--config-var",
        ],
    );
    c.fails_as(k, 2, &["env", "rm", "MODE", "--fleet", "ops"]);
    c.ok_as(k, &["env", "rm", "MODE", "--fleet", "ops", "--yes"]);
    assert_eq!(
        data_rows(&c.ok_as(k, &["env", "list", "--fleet", "ops"])),
        0
    );
    let e = c.fails_as(k, 1, &["env", "rm", "MODE", "--fleet", "ops", "--yes"]);
    assert!(
        e.contains("has no variable") && e.contains("resin env list"),
        "{e}"
    );

    // API keys: a new key works until it is revoked.
    let created = c.json_as(k, &["key", "create", "ci"]);
    let ci_key = created["key"].as_str().unwrap().to_string();
    let ci_id = created["id"].as_i64().unwrap().to_string();
    assert_eq!(c.json_as(&ci_key, &["whoami"])["username"], "admin");
    let table = c.ok_as(k, &["key", "list"]);
    assert!(table.contains("ci") && !table.contains(&ci_key), "{table}");
    c.fails_as(k, 2, &["key", "revoke", &ci_id]);
    c.ok_as(&ci_key, &["whoami"]);
    c.ok_as(k, &["key", "revoke", &ci_id, "--yes"]);
    let e = c.fails_as(&ci_key, 1, &["whoami"]);
    assert!(e.contains("401") && e.contains("resin login"), "{e}");
    let e = c.fails_as(k, 2, &["key", "create", "x", "--expires", "soon", "--nope"]);
    assert!(e.contains("--nope"), "{e}");
    let e = c.fails_as(k, 1, &["key", "create", "x", "--expires", "soon"]);
    assert!(e.contains("expires_at"), "{e}");

    // Scoped keys: a read-only key changes nothing; a fleet-scoped key sees
    // only its fleet.
    let ro = c.json_as(k, &["key", "create", "viewer", "--read-only"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!c
        .json_as(&ro, &["fleet", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    let e = c.fails_as(&ro, 1, &["env", "set", "RO", "x", "--fleet", "ops"]);
    assert!(e.contains("read-only"), "{e}");
    c.ok_as(
        k,
        &[
            "fleet",
            "create",
            "scope-other",
            "--device-type",
            "qemuarm64",
        ],
    );
    let scoped = c.json_as(k, &["key", "create", "ops-only", "--fleet", "ops"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let names: Vec<Value> = c
        .json_as(&scoped, &["fleet", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, [json!("ops")]);
    let table = c.ok_as(k, &["key", "list"]);
    assert!(table.contains("read-only"), "{table}");

    // Revoked provisioning keys register nothing.
    let pk_id = pk["id"].as_i64().unwrap().to_string();
    c.ok_as(k, &["provisioning-key", "revoke", &pk_id, "--yes"]);
    assert_eq!(
        data_rows(&c.ok_as(k, &["provisioning-key", "list", "--fleet", "ops"])),
        0
    );
    let resp = ureq::post(format!("{}/device/register", c.url))
        .header("Authorization", format!("Bearer {pk_key}"))
        .send_json(json!({"uuid": "e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5", "deviceType": "qemuarm64"}));
    assert!(resp.is_err(), "a revoked provisioning key still registers");

    // OS releases.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("os.raucb");
    std::fs::write(&bundle, vec![1u8; 1000]).unwrap();
    let b = bundle.to_str().unwrap();
    c.ok_as(
        k,
        &[
            "os",
            "upload",
            "--device-type",
            "qemuarm64",
            "--version",
            "3.1",
            "--bundle",
            b,
        ],
    );
    c.ok_as(
        k,
        &[
            "os",
            "upload",
            "--device-type",
            "raspberrypi4-64",
            "--version",
            "3.2",
            "--bundle",
            b,
        ],
    );
    let table = c.ok_as(k, &["os", "list"]);
    assert!(table.contains("3.1") && table.contains("3.2"), "{table}");
    let only = c.json_as(k, &["os", "list", "--device-type", "raspberrypi4-64"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["version"], "3.2");

    // Logs: --tail, --service, --since.
    let body: String = [
        ("web", "w1"),
        ("worker", "k1"),
        ("web", "w2"),
        ("worker", "k2"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (svc, m))| {
        format!(
            "{}\n",
            json!({"timestamp": 1_700_000_000_000i64 + i as i64 * 1000, "service": svc,
                       "message": m, "isStderr": false, "isSystem": false})
        )
    })
    .collect();
    ureq::post(format!("{}/device/v2/{D1}/log-stream", c.url))
        .header("Authorization", format!("Bearer {d1_key}"))
        .header("Content-Type", "application/x-ndjson")
        .send(body.as_bytes())
        .unwrap();
    let msgs = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["logs", D1];
        a.extend_from_slice(args);
        c.ok_as(k, &a)
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(msgs(&[]), ["w1", "k1", "w2", "k2"]);
    assert_eq!(msgs(&["--tail", "2"]), ["w2", "k2"]);
    assert_eq!(msgs(&["--service", "worker"]), ["k1", "k2"]);
    assert_eq!(msgs(&["--since", "2023-11-14T22:13:22Z"]), ["w2", "k2"]);
    assert_eq!(msgs(&["--since", "1h"]), Vec::<String>::new());
    let e = c.fails_as(k, 2, &["logs", D1, "--since", "yesterday"]);
    assert!(e.contains("30s, 10m"), "{e}");

    // Device removal: refused without --yes, then gone.
    c.fails_as(k, 2, &["device", "rm", D3]);
    assert_eq!(
        uuids(&c.json_as(k, &["devices", "--fleet", "ops"])),
        [D1, D2, D3]
    );
    let e = c.fails_as(
        k,
        1,
        &[
            "device",
            "rm",
            D3,
            "ffffffffffffffffffffffffffffffff",
            "--yes",
        ],
    );
    assert!(e.contains("no device"), "{e}");
    assert_eq!(
        uuids(&c.json_as(k, &["devices", "--fleet", "ops"])),
        [D1, D2, D3],
        "nothing is removed when one of the devices is unknown"
    );
    let out = c.ok_as(k, &["device", "rm", D3, "--yes"]);
    assert!(out.contains(&format!("removed device {D3}")), "{out}");
    assert_eq!(
        uuids(&c.json_as(k, &["devices", "--fleet", "ops"])),
        [D1, D2]
    );
}

#[test]
fn another_user_sees_and_changes_nothing_of_the_first() {
    let c = start_cloud();
    let k = c.key.as_str();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let compose = data.join("docker-compose.yml");
    c.ok_as(k, &["fleet", "create", "ops", "--device-type", "qemuarm64"]);
    let pk = c.json_as(k, &["provisioning-key", "create", "p", "--fleet", "ops"]);
    let pk_id = pk["id"].as_i64().unwrap().to_string();
    let (d1_id, _) = register(&c, pk["key"].as_str().unwrap(), D1);
    let d1 = d1_id.to_string();
    c.ok_as(k, &["device", "rename", D1, "kitchen"]);
    c.ok_as(k, &["tag", "set", "env", "prod", "--device", D1]);
    let rel = c.json_as(
        k,
        &[
            "release",
            "create",
            "--fleet",
            "ops",
            "--compose",
            compose.to_str().unwrap(),
            "--image",
            "web=127.0.0.1:55000/web:1",
        ],
    )["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let key_id = c.json_as(k, &["key", "list"])[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();

    let m = c.add_user("mallory");
    let m = m.as_str();
    assert_eq!(c.json_as(m, &["whoami"])["username"], "mallory");
    c.ok_as(m, &["fleet", "create", "ops", "--device-type", "qemuarm64"]);
    assert_eq!(uuids(&c.json_as(m, &["devices"])), Vec::<String>::new());
    assert!(!c.ok_as(m, &["devices"]).contains(D1));
    assert_eq!(c.json_as(m, &["release", "list"]), json!([]));
    assert_eq!(c.json_as(m, &["provisioning-key", "list"]), json!([]));
    assert_eq!(c.json_as(m, &["key", "list"]).as_array().unwrap().len(), 1);

    for d in [D1, d1.as_str()] {
        let e = c.fails_as(m, 1, &["device", "show", d]);
        assert!(
            e.contains("no device") && e.contains("resin devices"),
            "{e}"
        );
        c.fails_as(m, 1, &["device", "rename", d, "mine"]);
        c.fails_as(m, 1, &["device", "rm", d, "--yes"]);
        c.fails_as(m, 1, &["device", "unpin", d]);
        c.fails_as(m, 1, &["tag", "set", "env", "evil", "--device", d]);
        c.fails_as(m, 1, &["tag", "rm", "env", "--device", d, "--yes"]);
        c.fails_as(m, 1, &["env", "set", "X", "1", "--device", d]);
        c.fails_as(m, 1, &["logs", d]);
    }
    let e = c.fails_as(m, 1, &["release", "show", &rel]);
    assert!(e.contains("no release"), "{e}");
    c.fails_as(m, 1, &["release", "rm", &rel, "--yes", "--force"]);
    // The cloud's own 404 for ids of another user's keys.
    let e = c.fails_as(m, 1, &["key", "revoke", &key_id, "--yes"]);
    assert!(e.contains("404") && e.contains("another user"), "{e}");
    let e = c.fails_as(m, 1, &["provisioning-key", "revoke", &pk_id, "--yes"]);
    assert!(e.contains("404"), "{e}");
    // Mallory's "ops" is her own fleet, not the first user's.
    assert_eq!(c.json_as(m, &["devices", "--fleet", "ops"]), json!([]));

    // The first user's things are as they were.
    let dev = c.json_as(k, &["device", "show", D1]);
    assert_eq!(dev["name"], "kitchen");
    assert_eq!(dev["tags"], json!({"env": "prod"}));
    assert_eq!(c.json_as(k, &["env", "list", "--device", D1]), json!([]));
    c.ok_as(k, &["release", "show", &rel]);
    c.ok_as(k, &["whoami"]);
    assert_eq!(
        c.json_as(k, &["provisioning-key", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for sh in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_resin"))
            .args(["completions", sh])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sh}");
        let text = String::from_utf8(out.stdout).unwrap();
        for word in ["provisioning-key", "whoami", "config-var"] {
            assert!(text.contains(word), "{sh} completions lack {word}");
        }
    }
    // bash can at least parse its script.
    let out = Command::new(env!("CARGO_BIN_EXE_resin"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("resin.bash");
    std::fs::write(&f, out.stdout).unwrap();
    let st = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(st.success(), "bash -n rejects the completion script");
    let out = Command::new(env!("CARGO_BIN_EXE_resin"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// On a terminal (a pty from `script`), destructive commands ask; only "y"
/// goes ahead.
#[test]
fn destructive_commands_ask_on_a_terminal() {
    let c = start_cloud();
    let k = c.key.as_str();
    c.ok_as(k, &["fleet", "create", "ops", "--device-type", "qemuarm64"]);
    c.ok_as(k, &["tag", "set", "env", "prod", "--fleet", "ops"]);
    let on_tty = |answer: &str| {
        let mut child = Command::new("script")
            .args([
                "-qec",
                &format!("{} tag rm env --fleet ops", env!("CARGO_BIN_EXE_resin")),
                "/dev/null",
            ])
            .env("HOME", &c.home)
            .env("RESIN_API_URL", &c.url)
            .env("RESIN_API_KEY", k)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = on_tty("n\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("remove tag env from fleet ops? [y/N]"),
        "{out}"
    );
    assert!(out.contains("cancelled; nothing was changed"), "{out}");
    assert_eq!(
        c.json_as(k, &["tag", "list", "--fleet", "ops"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (code, out) = on_tty("y\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("removed tag env from fleet ops"), "{out}");
    assert_eq!(c.json_as(k, &["tag", "list", "--fleet", "ops"]), json!([]));
}

/// Over HTTPS the CLI trusts the CA given with `--ca` (kept by `login`), and
/// refuses a cloud whose certificate it cannot verify, with a hint.
#[test]
fn https_with_the_clouds_ca() {
    let c = start_cloud_with(true);
    assert!(c.url.starts_with("https://"), "{}", c.url);
    let ca = c.data.join("tls/ca.pem");
    let ca = ca.to_str().unwrap();

    // The public roots do not know a private CA.
    let e = c.fails(&["login", "--api-url", &c.url, "--api-key", &c.key]);
    assert!(
        e.contains("hint: the cloud's TLS certificate is not trusted"),
        "{e}"
    );
    assert!(e.contains("--ca"), "{e}");

    // With its CA: logged in, and later commands use the stored CA.
    let out = c.ok(&[
        "login",
        "--api-url",
        &c.url,
        "--api-key",
        &c.key,
        "--ca",
        ca,
    ]);
    assert!(out.contains("logged in"), "{out}");
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(c.home.join(".config/resin/cli.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["ca"], ca);
    c.ok(&["fleet", "create", "tls-fleet", "--device-type", "qemuarm64"]);
    let fleets = c.json(&["fleet", "list"]);
    assert!(fleets.to_string().contains("tls-fleet"), "{fleets}");

    // Another CA is refused, the flag beating the stored one.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(&c.bin)
        .args(["init", "--host", "127.0.0.1", "--out-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let other_ca = other.path().join("ca.pem");
    let e = c.fails(&["fleet", "list", "--ca", other_ca.to_str().unwrap()]);
    assert!(
        e.contains("hint: the cloud's TLS certificate is not trusted"),
        "{e}"
    );
    // A CA file that is no certificate is a clear error.
    let e = c.fails(&["fleet", "list", "--ca", "/etc/hostname"]);
    assert!(e.contains("CA file /etc/hostname"), "{e}");
}

#[test]
fn a_rollout_from_the_cli() {
    let c = start_cloud();
    let k = c.key.as_str();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let compose = data.join("docker-compose.yml");
    c.ok_as(
        k,
        &["fleet", "create", "wave", "--device-type", "qemuarm64"],
    );
    let pk = c.json_as(k, &["provisioning-key", "create", "p", "--fleet", "wave"]);
    let (d1, _) = register(&c, pk["key"].as_str().unwrap(), D1);
    c.ok_as(k, &["tag", "set", "canary", "yes", "--device", D1]);
    let create = |tag: &str| {
        c.json_as(
            k,
            &[
                "release",
                "create",
                "--fleet",
                "wave",
                "--compose",
                compose.to_str().unwrap(),
                "--image",
                &format!("web=127.0.0.1:55000/web:{tag}"),
            ],
        )["id"]
            .as_i64()
            .unwrap()
            .to_string()
    };
    let _old = create("1");
    let new = create("2");
    // Bad input is refused by the cloud (exit 1) or by clap (exit 2).
    let e = c.fails_as(
        k,
        1,
        &[
            "rollout",
            "create",
            "--fleet",
            "wave",
            "--release",
            &new,
            "--waves",
            "10,50",
        ],
    );
    assert!(e.contains("100 %"), "{e}");
    c.fails_as(k, 2, &["rollout", "create", "--fleet", "wave"]);
    let p = c.json_as(
        k,
        &[
            "rollout",
            "create",
            "--fleet",
            "wave",
            "--release",
            &new,
            "--canary-tag",
            "canary=yes",
            "--waves",
            "50,100",
            "--soak",
            "60",
            "--start",
        ],
    );
    assert_eq!(p["state"], "running", "{p}");
    let id = p["id"].as_i64().unwrap().to_string();
    let show = c.json_as(k, &["rollout", "show", &id]);
    assert_eq!(show["waves"].as_array().unwrap().len(), 3);
    assert_eq!(show["waves"][0]["counts"]["size"], 1, "{show}");
    let text = c.ok_as(k, &["rollout", "show", &id]);
    assert!(
        text.contains("wave 1") && text.contains("canary=yes"),
        "{text}"
    );
    assert!(text.contains("0/1 healthy"), "{text}");
    let listed = c.json_as(k, &["rollout", "list", "--fleet", "wave"]);
    assert_eq!(listed[0]["state"], "running");
    assert!(c
        .ok_as(k, &["rollout", "pause", &id, "--reason", "lunch"])
        .contains("paused"));
    let e = c.fails_as(k, 1, &["rollout", "pause", &id]);
    assert!(e.contains("cannot pause a paused rollout"), "{e}");
    c.ok_as(k, &["rollout", "resume", &id]);
    c.ok_as(k, &["rollout", "halt", &id]);
    // Another user reaches none of it.
    let m = c.add_user("mallory");
    c.fails_as(&m, 1, &["rollout", "show", &id]);
    c.fails_as(&m, 1, &["rollout", "rollback", &id, "--yes"]);
    assert_eq!(c.json_as(&m, &["rollout", "list"]), json!([]));
    let out = c.ok_as(k, &["rollout", "rollback", &id, "--yes"]);
    assert!(
        out.contains("cancelled") && out.contains("1 devices moved back"),
        "{out}"
    );
    let show = c.json_as(k, &["rollout", "show", &id]);
    let actions: Vec<&str> = show["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["create", "start", "pause", "resume", "halt", "rollback"]
    );
    assert_eq!(show["events"][2]["reason"], "lunch");
    let _ = d1;
}

#[test]
fn device_restart_reboot_and_move_from_the_cli() {
    let c = start_cloud();
    let k = c.key.as_str();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let compose = data.join("docker-compose.yml");
    for (name, ty) in [
        ("one", "qemuarm64"),
        ("two", "qemuarm64"),
        ("pi", "raspberrypi4-64"),
    ] {
        c.ok_as(k, &["fleet", "create", name, "--device-type", ty]);
    }
    c.ok_as(
        k,
        &[
            "release",
            "create",
            "--fleet",
            "one",
            "--compose",
            compose.to_str().unwrap(),
            "--image",
            "web=127.0.0.1:55000/web:1",
            "--pin",
        ],
    );
    let pk = c.json_as(k, &["provisioning-key", "create", "p", "--fleet", "one"]);
    register(&c, pk["key"].as_str().unwrap(), D1);

    // Without --yes on a non-terminal stdin: usage error, nothing asked.
    let e = c.fails_as(k, 2, &["device", "reboot", D1]);
    assert!(e.contains("--yes"), "{e}");
    let e = c.fails_as(k, 1, &["device", "restart", D1, "--service", "nope", "-y"]);
    assert!(e.contains("no service named"), "{e}");
    let a = c.json_as(k, &["device", "restart", D1, "--service", "web", "-y"]);
    assert_eq!(a["action"], "restart", "{a}");
    assert_eq!(a["service"], "web", "{a}");
    assert_eq!(a["state"], "pending", "{a}");
    let out = c.ok_as(k, &["device", "reboot", D1, "--yes"]);
    assert!(out.contains("reboot once no update lock is held"), "{out}");
    let list = c.json_as(k, &["device", "actions", D1]);
    let kinds: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reboot", "restart"], "newest first: {list}");
    let text = c.ok_as(k, &["device", "actions", D1]);
    assert!(text.contains("STATE") && text.contains("pending"), "{text}");

    // Moves: not to another device type, nor to a fleet that is not there.
    let e = c.fails_as(k, 1, &["device", "move", D1, "pi", "-y"]);
    assert!(e.contains("device type"), "{e}");
    let e = c.fails_as(k, 1, &["device", "move", D1, "nowhere", "-y"]);
    assert!(e.contains("resin fleet list"), "{e}");
    c.fails_as(k, 2, &["device", "move", D1]);
    let m = c.json_as(k, &["device", "move", D1, "two", "--yes"]);
    let two = c.json_as(k, &["fleet", "list"]);
    let two_id = two
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "two")
        .unwrap()["id"]
        .clone();
    assert_eq!(m["fleet"], two_id, "{m}");
    let d = c.json_as(k, &["device", "show", D1]);
    assert_eq!(d["fleet_name"], "two", "{d}");
}

/// A fake device's tunnel (`/device/v1/tunnel` with its key) that answers
/// every shell session with one line and exit code 3, until the test ends.
fn fake_tunnel(c: &Cloud, device_key: &str) {
    use futures_util::{SinkExt, StreamExt};
    use resin_api_types::tunnel::{CloseInfo, Frame, DEVICE_PATH};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}{DEVICE_PATH}", c.url.replacen("http://", "ws://", 1));
    let key = device_key.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("Authorization", format!("Bearer {key}").parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                let Message::Binary(b) = m else { continue };
                if let Ok(Frame::Open(s, _)) = Frame::decode(&b) {
                    for f in [
                        Frame::Opened(s),
                        Frame::Data(s, b"hello from the fake device\n".to_vec()),
                        Frame::Close(
                            s,
                            CloseInfo {
                                exit_code: Some(3),
                                error: None,
                            },
                        ),
                    ] {
                        let m = Message::Binary(f.encode().unwrap().into());
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    });
}

#[test]
fn device_sessions_audit_from_the_cli() {
    let c = start_cloud();
    let k = c.key.as_str();
    c.ok_as(k, &["fleet", "create", "one", "--device-type", "qemuarm64"]);
    let pk = c.json_as(k, &["provisioning-key", "create", "p", "--fleet", "one"]);
    let (_, dkey) = register(&c, pk["key"].as_str().unwrap(), D1);
    // No session yet: an empty audit.
    assert_eq!(c.json_as(k, &["device", "sessions", D1]), json!([]));
    let text = c.ok_as(k, &["device", "sessions", D1]);
    assert!(text.contains("KIND") && text.contains("EXIT"), "{text}");

    fake_tunnel(&c, &dkey);
    // `resin ssh` once the device's tunnel is up (409 before): its output
    // and its exit code come back.
    let t = Instant::now();
    let (code, out, err) = loop {
        let r = c.run_as(k, &["ssh", D1, "--", "cat", "/etc/os-release"]);
        if r.0 == 3 || t.elapsed() > Duration::from_secs(20) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 3, "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "hello from the fake device\n");

    // The audit: who, what, bytes, the exit status, the end.
    let t = Instant::now();
    let s = loop {
        let v = c.json_as(k, &["device", "sessions", D1]);
        let done = v[0]["ended_at"].is_string();
        if done || t.elapsed() > Duration::from_secs(10) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows = s.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{s}");
    let r = &rows[0];
    assert_eq!(r["username"], "admin", "{s}");
    assert_eq!(r["kind"], "shell", "{s}");
    assert_eq!(r["target"], "cat /etc/os-release", "{s}");
    assert_eq!(r["exit_code"], 3, "{s}");
    assert_eq!(r["device_uuid"], D1, "{s}");
    assert_eq!(
        r["bytes_down"].as_i64(),
        Some("hello from the fake device\n".len() as i64),
        "{s}"
    );
    assert!(r["ended_at"].is_string(), "{s}");
    let text = c.ok_as(k, &["device", "sessions", D1]);
    let row = text.lines().nth(1).unwrap_or_default();
    for want in ["admin", "shell", "cat /etc/os-release"] {
        assert!(row.contains(want), "{want} in {text}");
    }
    assert!(!text.contains("(open)"), "{text}");

    // Another user sees no such device.
    let other = c.add_user("other");
    let e = c.fails_as(&other, 1, &["device", "sessions", D1]);
    assert!(e.contains("not found") || e.contains("no device"), "{e}");
}
