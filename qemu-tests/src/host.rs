//! The host side of a QEMU test: resin-cloud (SQLite in a temp dir) and Docker
//! Distribution on loopback, and a small client for the cloud's API.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Errors of the host services.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Http {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{method} {url}: {source}")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let what = what.into();
    move |source| HostError::Io { what, source }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> Result<u16, HostError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("reading the bound port"))?.port())
}

/// A child process that is killed when dropped.
pub struct Service {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Service {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self, HostError> {
        let out = File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io("cloning a log handle"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {name}")))?;
        tracing::info!(pid = child.id(), log = %log.display(), "{name} started");
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    /// The last `n` lines of the service's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        crate::qemu::tail_lines(&text, n)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for `program` that dies with the runner: util-linux's
/// `setpriv --pdeathsig KILL` execs it with the parent-death signal set, so a
/// runner stopped by a signal (a `kill`, not only Ctrl-C to the whole group)
/// leaves no qemu, resin-cloud or registry behind. Spawn it from the main
/// thread: the signal follows the spawning thread's exit.
/// A program that is not found is left to `Command` itself, so spawning it
/// fails with the usual "not found".
pub fn dies_with_runner(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let program = program.as_ref();
    let found = if Path::new(program).is_absolute() {
        Path::new(program).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
    };
    if !found || !Path::new("/usr/bin/setpriv").is_file() {
        return Command::new(program);
    }
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd
}

/// Waits until `url` answers (any HTTP status) or the timeout passes.
pub fn wait_http(url: &str, timeout: Duration) -> bool {
    wait_http_with(url, timeout, None)
}

/// [`wait_http`] with a TLS trust (for the HTTPS cloud).
fn wait_http_with(url: &str, timeout: Duration, tls: Option<&ureq::tls::TlsConfig>) -> bool {
    let deadline = Instant::now() + timeout;
    let agent = agent(Some(Duration::from_secs(2)), tls);
    while Instant::now() < deadline {
        if agent.get(url).call().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A client of the cloud: `timeout` for a whole call (None: no limit, for a
/// stream followed until the end), trusting `tls`'s CA when given.
fn agent(timeout: Option<Duration>, tls: Option<&ureq::tls::TlsConfig>) -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout);
    if let Some(tls) = tls {
        b = b.tls_config(tls.clone());
    }
    b.build().into()
}

/// A TLS client config that trusts only the CA in the PEM file `ca`.
pub fn trust_only(ca: &Path) -> Result<ureq::tls::TlsConfig, HostError> {
    let failed = |detail: String| HostError::Failed {
        what: format!("reading the CA {}", ca.display()),
        detail,
    };
    let pem = std::fs::read(ca).map_err(|e| failed(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| failed(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(failed("no PEM certificate".into()));
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

/// Docker Distribution on 127.0.0.1:`port`. An already running registry on that
/// port (scripts/services.sh starts one on 55000) is reused.
pub fn ensure_registry(port: u16, dir: &Path) -> Result<Option<Service>, HostError> {
    let url = format!("http://127.0.0.1:{port}/v2/");
    if wait_http(&url, Duration::from_millis(300)) {
        tracing::info!("reusing the registry on 127.0.0.1:{port}");
        return Ok(None);
    }
    std::fs::create_dir_all(dir.join("data")).map_err(io("creating the registry dir"))?;
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )
    .map_err(io("writing the registry config"))?;
    let mut cmd = dies_with_runner("docker-registry");
    cmd.arg("serve").arg(&cfg);
    let svc = Service::spawn("docker-registry", cmd, dir.join("registry.log"))?;
    if !wait_http(&url, Duration::from_secs(20)) {
        return Err(HostError::Failed {
            what: "docker-registry did not answer".into(),
            detail: svc.log_tail(20),
        });
    }
    Ok(Some(svc))
}

/// A running resin-cloud with its own SQLite database, serving HTTPS with a
/// certificate of `resin-cloud init` for 10.0.2.2 (the guest's view of the
/// host) and 127.0.0.1; configured images carry its CA as `rootCA`.
pub struct Cloud {
    pub service: Service,
    /// Where the host reaches it (https://127.0.0.1:port).
    pub url: String,
    /// Where the guest reaches it (https://10.0.2.2:port).
    pub public_url: String,
    /// The CA of the cloud's certificate (PEM), `<data_dir>/tls/ca.pem`.
    pub ca: PathBuf,
    tls: ureq::tls::TlsConfig,
    pub data_dir: PathBuf,
    pub api_key: String,
    /// The bootstrap user's name (HTTP Basic of `git push`).
    pub username: String,
    pub user_id: i64,
    /// The bootstrap user's dashboard password, new for each run (the demo
    /// prints it as a one-time login).
    pub dashboard_password: String,
    /// The builder it was started with (None: it takes no builds).
    pub builder: Option<CloudBuilder>,
}

/// The builder of the harness's cloud (`git push`): it builds with the
/// private dockerd and pushes to the loopback registry, and names the
/// images with the registry's address as the guest reaches it.
#[derive(Debug, Clone)]
pub struct CloudBuilder {
    /// Where the engine pushes (`127.0.0.1:<port>`).
    pub registry: String,
    /// The same registry as the guest reaches it (`10.0.2.2:<port>`).
    pub device_registry: String,
    /// The Docker engine (`RESIN_TEST_DOCKER_HOST`).
    pub docker_host: String,
}

impl Cloud {
    /// Bootstraps a user and starts `resin-cloud serve` on a free port; with
    /// `builder`, the cloud takes builds (`git push`, `POST /v1/build`).
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        port: u16,
        builder: Option<&CloudBuilder>,
    ) -> Result<Self, HostError> {
        std::fs::create_dir_all(data_dir).map_err(io("creating the cloud data dir"))?;
        let port = if port == 0 { free_port()? } else { port };
        let url = format!("https://127.0.0.1:{port}");
        let public_url = format!("https://10.0.2.2:{port}");
        let common = |c: &mut Command| {
            c.arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--public-url")
                .arg(&public_url)
                // Devices of a test poll every 5 s (the product default is 60 s).
                .arg("--poll-interval-ms")
                .arg("5000")
                .env_remove("RESIN_CLOUD_CONFIG")
                .env_remove("RESIN_CLOUD_DATABASE_URL");
        };
        // The certificate names the host as the guest sees it (10.0.2.2).
        let mut init = Command::new(bin);
        common(&mut init);
        init.args(["init", "--force", "--host", "10.0.2.2,127.0.0.1,localhost"]);
        let out = init
            .output()
            .map_err(io(format!("running {} init", bin.display())))?;
        if !out.status.success() {
            return Err(HostError::Failed {
                what: "resin-cloud init".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let ca = data_dir.join("tls/ca.pem");
        let tls = trust_only(&ca)?;
        let mut boot = Command::new(bin);
        common(&mut boot);
        boot.args(["bootstrap", "--username", "qemu-tests"]);
        let out = boot
            .output()
            .map_err(io(format!("running {} bootstrap", bin.display())))?;
        if !out.status.success() {
            return Err(HostError::Failed {
                what: "resin-cloud bootstrap".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| HostError::Failed {
            what: "resin-cloud bootstrap output".into(),
            detail: e.to_string(),
        })?;
        let api_key = v["api_key"].as_str().unwrap_or_default().to_string();
        let user_id = v["user_id"].as_i64().unwrap_or_default();
        // A dashboard password for the bootstrap user, random for this run.
        let dashboard_password = {
            use rand::distr::{Alphanumeric, SampleString};
            Alphanumeric.sample_string(&mut rand::rng(), 20)
        };
        let mut passwd = Command::new(bin);
        common(&mut passwd);
        passwd
            .args(["user", "passwd", "qemu-tests"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = passwd
            .spawn()
            .map_err(io(format!("running {} user passwd", bin.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(format!("{dashboard_password}\n").as_bytes())
                .map_err(io("writing the dashboard password"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io(format!("running {} user passwd", bin.display())))?;
        if !out.status.success() {
            return Err(HostError::Failed {
                what: "resin-cloud user passwd".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut serve = dies_with_runner(bin);
        common(&mut serve);
        if let Some(b) = builder {
            serve
                .env("RESIN_CLOUD_BUILDER_REGISTRY", &b.registry)
                .env("RESIN_CLOUD_BUILDER_DEVICE_REGISTRY", &b.device_registry)
                .env("RESIN_CLOUD_BUILDER_DOCKER_HOST", &b.docker_host)
                .env("RESIN_CLOUD_BUILDER_TIMEOUT_SECS", "900");
        }
        serve.arg("serve");
        let service = Service::spawn("resin-cloud", serve, data_dir.join("cloud.log"))?;
        if !wait_http_with(
            &format!("{url}/v1/$metadata"),
            Duration::from_secs(30),
            Some(&tls),
        ) {
            return Err(HostError::Failed {
                what: "resin-cloud did not answer".into(),
                detail: service.log_tail(30),
            });
        }
        Ok(Self {
            service,
            url,
            public_url,
            ca,
            tls,
            data_dir: data_dir.into(),
            api_key,
            username: "qemu-tests".into(),
            user_id,
            dashboard_password,
            builder: builder.cloned(),
        })
    }

    /// An API client for this cloud with the bootstrap user's key.
    pub fn client(&self) -> Api {
        Api::new(&self.url, &self.api_key, Some(&self.tls))
    }
}

/// A small client for the cloud's resource API.
#[derive(Clone)]
pub struct Api {
    base: String,
    key: String,
    agent: ureq::Agent,
    /// The same client without a call timeout, for streams (`follow_logs`).
    stream_agent: ureq::Agent,
}

impl Api {
    pub fn new(base: &str, key: &str, tls: Option<&ureq::tls::TlsConfig>) -> Self {
        Self {
            base: base.trim_end_matches('/').into(),
            key: key.into(),
            agent: agent(Some(Duration::from_secs(600)), tls),
            stream_agent: agent(None, tls),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn check(
        method: &str,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, HostError> {
        let mut resp = r.map_err(|e| HostError::Transport {
            method: method.into(),
            url: url.into(),
            source: Box::new(e),
        })?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(HostError::Http {
                method: method.into(),
                url: url.into(),
                status,
                body,
            });
        }
        Ok(resp)
    }

    fn json(
        method: &str,
        url: &str,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<Value, HostError> {
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| HostError::Transport {
                method: method.into(),
                url: url.into(),
                source: Box::new(e),
            })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| HostError::Failed {
            what: format!("{method} {url}: JSON"),
            detail: e.to_string(),
        })
    }

    /// GET `path` (relative to the base URL), as JSON.
    pub fn get(&self, path: &str) -> Result<Value, HostError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.key))
            .call();
        let resp = Self::check("GET", &url, r)?;
        Self::json("GET", &url, resp)
    }

    /// POST JSON, answering the created entity.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, HostError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.key))
            .send_json(body);
        let resp = Self::check("POST", &url, r)?;
        Self::json("POST", &url, resp)
    }

    /// PATCH JSON.
    pub fn patch(&self, path: &str, body: &Value) -> Result<(), HostError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .patch(&url)
            .header("Authorization", &format!("Bearer {}", self.key))
            .send_json(body);
        Self::check("PATCH", &url, r).map(|_| ())
    }

    /// PUT a file as application/octet-stream.
    pub fn put_file(&self, path: &str, file: &Path) -> Result<(), HostError> {
        let url = format!("{}{path}", self.base);
        let f = File::open(file).map_err(io(format!("opening {}", file.display())))?;
        let r = self
            .agent
            .put(&url)
            .header("Authorization", &format!("Bearer {}", self.key))
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_owned_reader(f));
        Self::check("PUT", &url, r).map(|_| ())
    }

    /// GET `path` into `dest` (temp file + rename).
    pub fn download(&self, path: &str, dest: &Path) -> Result<u64, HostError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.key))
            .call();
        let mut resp = Self::check("GET", &url, r)?;
        let tmp = dest.with_extension("partial");
        let mut f = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let n = std::io::copy(&mut resp.body_mut().as_reader(), &mut f)
            .map_err(io(format!("downloading {url}")))?;
        f.sync_all().map_err(io("fsync"))?;
        std::fs::rename(&tmp, dest).map_err(io(format!("renaming to {}", dest.display())))?;
        Ok(n)
    }

    /// Follows `GET /v1/device(<id>)/logs?follow=true` (Server-Sent Events, one
    /// LogLine JSON per `data:`), calling `f` for each line until the stream ends.
    pub fn follow_logs(&self, device: i64, mut f: impl FnMut(&Value)) -> Result<(), HostError> {
        use std::io::BufRead;
        let url = format!("{}/v1/device({device})/logs?follow=true", self.base);
        let r = self
            .stream_agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.key))
            .call();
        let mut resp = Self::check("GET", &url, r)?;
        let reader = std::io::BufReader::new(resp.body_mut().as_reader());
        for line in reader.lines() {
            let line = line.map_err(io(format!("reading {url}")))?;
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                    f(&v);
                }
            }
        }
        Ok(())
    }

    /// The `value` array of a collection answer.
    pub fn list(&self, path: &str) -> Result<Vec<Value>, HostError> {
        Ok(self.get(path)?["value"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Polls `f` every `every` until it answers `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_child_dies_when_the_thread_that_started_it_ends() {
        // The runner's death is what matters; a thread's end sets off the
        // same parent-death signal.
        let mut child = std::thread::spawn(|| {
            let c = dies_with_runner("sleep")
                .arg("30")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            // Until setpriv has set the signal and exec'd sleep.
            std::thread::sleep(Duration::from_millis(500));
            c
        })
        .join()
        .unwrap();
        let t = Instant::now();
        let status = child.wait().unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "{status:?}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        // A missing program fails to spawn, as with Command::new.
        let e = dies_with_runner("resin-no-such-program")
            .spawn()
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn free_port_is_on_loopback_and_nonzero() {
        let p = free_port().unwrap();
        assert!(p > 0);
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn poll_gives_up_after_timeout() {
        let mut n = 0;
        let r: Option<()> = poll(Duration::from_millis(50), Duration::from_millis(10), || {
            n += 1;
            None
        });
        assert!(r.is_none());
        assert!(n >= 2);
        assert_eq!(
            poll(Duration::from_secs(1), Duration::from_millis(1), || Some(7)),
            Some(7)
        );
    }
}
