//! A small W3C WebDriver client over ureq, driving Debian's `chromium`
//! through `chromedriver` (package chromium-driver), headless, with
//! `--no-sandbox` (the tests run as root). Nothing is downloaded.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the browser tests save their screenshots: `RESIN_SCREENSHOTS`, or
/// `dashboard-screenshots` in the tests' temporary dir.
pub fn screenshots() -> PathBuf {
    std::env::var_os("RESIN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots"))
}

/// A chromedriver process and one browser session.
pub struct Driver {
    child: Child,
    base: String,
    agent: ureq::Agent,
    pub downloads: PathBuf,
    _downloads_dir: tempfile::TempDir,
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

impl Driver {
    /// Starts chromedriver and a headless chromium session. Without
    /// chromedriver or chromium the test fails, naming the packages.
    pub fn start() -> Self {
        let driver = which("chromedriver").unwrap_or_else(|| {
            panic!("chromedriver is not installed: it comes from the Debian package chromium-driver (RESIN_APT_PACKAGES)")
        });
        let chromium = which("chromium").unwrap_or_else(|| {
            panic!("chromium is not installed: Debian package chromium (RESIN_APT_PACKAGES)")
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", driver.display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        loop {
            if let Ok(mut r) = agent.get(format!("{base}/status")).call() {
                let v: Value = r.body_mut().read_json().unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "chromedriver did not get ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut d = Driver {
            child,
            base,
            agent,
            downloads: dir.path().to_owned(),
            _downloads_dir: dir,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1500",
                         "--no-first-run", "--disable-extensions"],
                "prefs": {"download.default_directory": d.downloads,
                          "download.prompt_for_download": false}
            }
        }}});
        let v = d.call("POST", "/session", Some(caps));
        let sid = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        d.base = format!("{}/session/{sid}", d.base);
        d
    }

    fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Content-Type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .unwrap();
        let mut resp = self
            .agent
            .run(req)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let v: Value = resp.body_mut().read_json().unwrap_or_default();
        assert!(status < 400, "{method} {path}: {status} {v}");
        v
    }

    pub fn goto(&mut self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&mut self) -> String {
        self.call("GET", "/url", None)["value"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub fn find(&mut self, css: &str) -> String {
        let t = Instant::now();
        loop {
            let v = self.try_find(css);
            if let Some(e) = v {
                return e;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no element {css} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn try_find(&mut self, css: &str) -> Option<String> {
        let url = format!("{}/element", self.base);
        let body = json!({"using": "css selector", "value": css}).to_string();
        let req = ureq::http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("Content-Type", "application/json")
            .body(body)
            .unwrap();
        let mut resp = self.agent.run(req).ok()?;
        if resp.status().as_u16() >= 400 {
            return None;
        }
        let v: Value = resp.body_mut().read_json().ok()?;
        v["value"][ELEMENT].as_str().map(str::to_owned)
    }

    pub fn click(&mut self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    pub fn type_into(&mut self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }

    pub fn text(&mut self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None)["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn attr(&mut self, css: &str, name: &str) -> Option<String> {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/attribute/{name}"), None)["value"]
            .as_str()
            .map(str::to_owned)
    }

    /// The computed value of a CSS property of the first match
    /// (`rgba(255, 255, 255, 1)` for a colour).
    pub fn css_value(&mut self, css: &str, property: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/css/{property}"), None)["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits up to `within` for `f` to hold; returns how long it took.
    pub fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        mut f: impl FnMut(&mut Self) -> bool,
    ) -> Duration {
        let t = Instant::now();
        loop {
            if f(self) {
                return t.elapsed();
            }
            assert!(t.elapsed() < within, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap();
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
