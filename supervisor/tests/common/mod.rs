//! Shared helpers of the supervisor's integration tests: the real Docker
//! engine and registry from scripts/services.sh, tiny busybox images, and
//! target-state builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use resin_api_types::{AppTarget, ReleaseTarget, ServiceTarget};
use resin_supervisor::engine::Engine;
use resin_supervisor::planner::TargetApps;

pub fn docker_host() -> String {
    std::env::var("RESIN_TEST_DOCKER_HOST").unwrap_or_else(|_| {
        panic!("RESIN_TEST_DOCKER_HOST is unset: run scripts/services.sh and `source /tmp/resin-run/env.sh`")
    })
}

pub fn registry() -> String {
    std::env::var("RESIN_TEST_REGISTRY").unwrap_or_else(|_| {
        panic!("RESIN_TEST_REGISTRY is unset: run scripts/services.sh and `source /tmp/resin-run/env.sh`")
    })
}

/// Runs the docker CLI against the test engine; panics with its stderr.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", docker_host())
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Like [`docker`], but returns None on failure.
pub fn docker_ok(args: &[&str]) -> Option<String> {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", docker_host())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A tar of a busybox-static rootfs (Debian's busybox-static), made once
/// (tests of one binary ask for it side by side: the first one makes it).
fn busybox_tar() -> PathBuf {
    static TAR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TAR.get_or_init(make_busybox_tar).clone()
}

fn make_busybox_tar() -> PathBuf {
    let dir = PathBuf::from("/tmp/resin-run/supervisor-test");
    let tar = dir.join("busybox-rootfs.tar");
    if tar.exists() {
        return tar;
    }
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "/bin/busybox missing: apt-get install busybox-static (scripts/services.sh installs it)"
    );
    let root = dir.join(format!("rootfs.{}", std::process::id()));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["tmp", "data", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for app in [
        "sh", "sleep", "echo", "cat", "touch", "ls", "date", "env", "rm", "mkdir", "true",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    let part = dir.join(format!("busybox.{}.tar", std::process::id()));
    let st = Command::new("tar")
        .args([
            "-C",
            root.to_str().unwrap(),
            "-cf",
            part.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&part, &tar).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    tar
}

/// Imports a distinct busybox image, pushes it to the test registry and
/// removes it locally, so the supervisor has to pull it. Returns its ref.
pub fn registry_image(name: &str) -> String {
    let r = local_image(&format!("{}/sv-test/{name}", registry()));
    docker(&["push", &r]);
    docker(&["rmi", &r]);
    r
}

/// Imports a distinct busybox image under `repo:latest` (no registry).
pub fn local_image(repo: &str) -> String {
    let tar = busybox_tar();
    let r = format!("{repo}:latest");
    docker(&[
        "import",
        "--change",
        &format!("ENV IMAGE_REF={r}"),
        tar.to_str().unwrap(),
        &r,
    ]);
    r
}

/// A unique 32-hex app uuid per test.
pub fn app_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A service running a shell that logs a line and waits, and exits on TERM.
pub fn svc(image: &str) -> ServiceTarget {
    ServiceTarget {
        image: image.into(),
        restart: "always".into(),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo started $RESIN_SERVICE_NAME; trap 'exit 0' TERM; while true; do sleep 1; done"
                .into(),
        ]),
        ..Default::default()
    }
}

pub fn target(app: &str, release: &str, services: &[(&str, ServiceTarget)]) -> TargetApps {
    let mut rel = ReleaseTarget::default();
    for (n, s) in services {
        rel.services.insert((*n).into(), s.clone());
    }
    let mut a = AppTarget {
        name: "test-app".into(),
        ..Default::default()
    };
    a.releases.insert(release.into(), rel);
    BTreeMap::from([(app.to_owned(), a)])
}

pub async fn engine() -> Engine {
    Engine::connect(Some(&docker_host()))
        .await
        .expect("connect to the test dockerd")
}

/// `name state release` of the managed containers of `app`, sorted.
pub fn containers_of(app: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
        "--format",
        "{{.Label \"io.resin.service-name\"}} {{.State}} {{.Label \"io.resin.release-uuid\"}}",
    ]);
    let mut v: Vec<String> = out
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// Removes everything of `app` (containers, networks, volumes, lock dir).
pub fn cleanup(app: &str) {
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
    ]);
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let _ = docker_ok(&["rm", "-f", id]);
    }
    let nets = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
    ]);
    for n in nets.lines().filter(|l| !l.is_empty()) {
        let _ = docker_ok(&["network", "rm", n]);
    }
    let vols = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.resin.app-uuid={app}"),
    ]);
    for v in vols.lines().filter(|l| !l.is_empty()) {
        let _ = docker_ok(&["volume", "rm", v]);
    }
    let _ = std::fs::remove_dir_all(format!("/tmp/resin/locks/{app}"));
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client that trusts the test clouds' CA ([`tls_dir`]).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .tls_config(trust_only(
            &std::fs::read(tls_dir().join("ca.pem")).unwrap(),
        ))
        .build()
        .into()
}

/// The TLS client config of a device whose config.json carries `ca_pem`.
pub fn trust_only(ca_pem: &[u8]) -> ureq::tls::TlsConfig {
    resin_supervisor::cloud::trust_only(ca_pem).unwrap()
}

/// One CA and server certificate (for 127.0.0.1) per test process, made by
/// `resin-cloud init`; every CloudProc of the process serves it over HTTPS.
pub fn tls_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("resin-sv-tls-{}", std::process::id()));
        let out = Command::new(cloud_bin())
            .args([
                "init",
                "--force",
                "--host",
                "127.0.0.1,localhost",
                "--out-dir",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resin-cloud init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .clone()
}

/// A CA other than the test clouds' (for a device that must refuse them).
pub fn other_ca(dir: &std::path::Path) -> Vec<u8> {
    let out = Command::new(cloud_bin())
        .args(["init", "--host", "127.0.0.1", "--out-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join("ca.pem")).unwrap()
}

/// (status, body) of a request with an optional bearer key and JSON body.
pub fn http(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let a = agent();
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    if let Some(k) = key {
        b = b.header("Authorization", format!("Bearer {k}"));
    }
    let r = match body {
        Some(j) => a.run(
            b.header("Content-Type", "application/json")
                .body(j.to_string())
                .unwrap(),
        ),
        None => a.run(b.body(()).unwrap()),
    };
    match r {
        Ok(mut resp) => (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `f` every 250 ms until it returns Some, or panics after `secs`.
pub fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn workspace_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The resin-cloud binary, built with `cargo build -p resin-cloud` if missing.
pub fn cloud_bin() -> PathBuf {
    let bin = workspace_target().join("debug/resin-cloud");
    if !bin.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "resin-cloud"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p resin-cloud failed");
    }
    bin
}

/// A real resin-cloud process on loopback, SQLite in a temp dir.
pub struct CloudProc {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_key: String,
    child: Option<std::process::Child>,
    /// `RESIN_CLOUD_*` settings of both `bootstrap` and `serve`.
    env: Vec<(String, String)>,
}

/// A fresh PostgreSQL database on `RESIN_TEST_PG_URL` (made and dropped
/// with psql), for clouds whose replicas share it.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

impl PgDb {
    pub fn new() -> Self {
        let admin = std::env::var("RESIN_TEST_PG_URL").expect(
            "RESIN_TEST_PG_URL is not set: start PostgreSQL with scripts/services.sh and `source /tmp/resin-run/env.sh`",
        );
        let name = format!("resin_sv_{}", uuid::Uuid::new_v4().simple());
        let st = Command::new("psql")
            .args(["-q", &admin, "-c", &format!("CREATE DATABASE {name}")])
            .status()
            .unwrap();
        assert!(st.success(), "psql CREATE DATABASE {name}");
        let (head, _) = admin.rsplit_once('/').unwrap();
        Self {
            url: format!("{head}/{name}"),
            admin,
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-q",
                &self.admin,
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl CloudProc {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// A cloud with `RESIN_CLOUD_*` settings (e.g. a PostgreSQL database).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(cloud_bin())
            .envs(env.iter().cloned())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["bootstrap", "--username", "admin"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let admin_key = j["api_key"].as_str().unwrap().to_owned();
        let mut c = Self {
            dir,
            port: free_port(),
            admin_key,
            child: None,
            env,
        };
        c.serve();
        c
    }

    /// Another replica on the same database (its own port and data dir;
    /// the same keys work on both).
    pub fn replica(&self) -> Self {
        let mut c = Self {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            admin_key: self.admin_key.clone(),
            child: None,
            env: self.env.clone(),
        };
        c.serve();
        c
    }

    /// config.json's `rootCA` for devices of this cloud.
    pub fn root_ca(&self) -> String {
        resin_api_types::encode_root_ca(&self.ca_pem())
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(tls_dir().join("ca.pem")).unwrap()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// (Re)starts `serve` on the same port and data dir.
    pub fn serve(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("cloud.log")).unwrap();
        let child = Command::new(cloud_bin())
            .envs(self.env.iter().cloned())
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--public-url",
                &self.url(),
                "--data-dir",
            ])
            .arg(self.dir.path())
            .arg("--tls-cert")
            .arg(tls_dir().join("server.pem"))
            .arg("--tls-key")
            .arg(tls_dir().join("server.key"))
            .arg("--tls-ca")
            .arg(tls_dir().join("ca.pem"))
            .arg("serve")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("{}/v1/fleet", self.url());
        let key = self.admin_key.clone();
        let mut last = (0, String::new());
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < end {
            last = http("GET", &url, Some(&key), None);
            if last.0 == 200 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let log = std::fs::read_to_string(self.dir.path().join("cloud.log")).unwrap_or_default();
        panic!("resin-cloud did not answer GET {url}: {last:?}\n{log}");
    }

    /// The serving process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn get(&self, path: &str) -> serde_json::Value {
        let (s, b) = http(
            "GET",
            &format!("{}{path}", self.url()),
            Some(&self.admin_key),
            None,
        );
        assert_eq!(s, 200, "GET {path}: {b}");
        serde_json::from_str(&b).unwrap()
    }

    pub fn create(&self, resource: &str, body: serde_json::Value) -> serde_json::Value {
        let (s, b) = http(
            "POST",
            &format!("{}/v1/{resource}", self.url()),
            Some(&self.admin_key),
            Some(body),
        );
        assert_eq!(s, 201, "POST {resource}: {b}");
        serde_json::from_str(&b).unwrap()
    }

    pub fn patch(&self, path: &str, body: serde_json::Value) {
        let (s, b) = http(
            "PATCH",
            &format!("{}{path}", self.url()),
            Some(&self.admin_key),
            Some(body),
        );
        assert_eq!(s, 204, "PATCH {path}: {b}");
    }
}

impl Drop for CloudProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A resin-supervisor process with its own state dir and local API port.
pub struct SupervisorProc {
    pub state: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl SupervisorProc {
    /// `config_json` is written to the state dir's parent; `apps` scopes it.
    pub fn new(
        root: &std::path::Path,
        config_json: &serde_json::Value,
        apps: &[&str],
        extra: &[(&str, &str)],
    ) -> Self {
        let state = root.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let cj = root.join("config.json");
        std::fs::write(&cj, config_json.to_string()).unwrap();
        let osr = root.join("os-release");
        std::fs::write(&osr, "NAME=resin\nVERSION_ID=\"test-1\"\n").unwrap();
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            (
                "RESIN_SUPERVISOR_CONFIG_JSON".into(),
                cj.display().to_string(),
            ),
            (
                "RESIN_SUPERVISOR_STATE_DIR".into(),
                state.display().to_string(),
            ),
            ("RESIN_SUPERVISOR_DOCKER_HOST".into(), docker_host()),
            (
                "RESIN_SUPERVISOR_LISTEN".into(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "RESIN_SUPERVISOR_OS_RELEASE".into(),
                osr.display().to_string(),
            ),
            (
                "RESIN_SUPERVISOR_DATA_PATH".into(),
                root.display().to_string(),
            ),
            ("RESIN_SUPERVISOR_OS_UPDATES".into(), "false".into()),
            ("RESIN_SUPERVISOR_ONLY_APPS".into(), apps.join(",")),
            ("RESIN_SUPERVISOR_REPORT_DEBOUNCE_MS".into(), "200".into()),
            ("RESIN_SUPERVISOR_LOG_FLUSH_MS".into(), "300".into()),
            ("RESIN_SUPERVISOR_LOG".into(), "debug".into()),
        ];
        for (k, v) in extra {
            env.push(((*k).into(), (*v).into()));
        }
        Self {
            state,
            port,
            log: root.join("supervisor.log"),
            env,
            child: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_resin-supervisor"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("NOTIFY_SOCKET")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, as a power cut or OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn api_key(&self) -> String {
        wait_until(30, "local API key", || {
            std::fs::read_to_string(self.state.join("local-api.key"))
                .ok()
                .filter(|k| !k.is_empty())
        })
    }

    pub fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        http(
            method,
            &format!("http://127.0.0.1:{}{path}", self.port),
            Some(&self.api_key()),
            body,
        )
    }
}

impl Drop for SupervisorProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
