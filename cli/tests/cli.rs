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
    let bin = cloud_binary();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let env = |c: &mut Command| {
        c.env("RESIN_CLOUD_DATA_DIR", &data)
            .env("RESIN_CLOUD_LISTEN", format!("127.0.0.1:{port}"))
            .env("RESIN_CLOUD_PUBLIC_URL", &url)
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
    let mut serve = Command::new(&bin);
    env(&mut serve);
    let child = serve
        .arg("serve")
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
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ureq::get(format!("{}/ping", cloud.url)).call().is_ok() {
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
