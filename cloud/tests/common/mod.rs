//! Test harness: a real `resin-cloud` on 127.0.0.1:0 over a temp SQLite file
//! or a fresh PostgreSQL database (from `RESIN_TEST_PG_URL`), and a blocking
//! HTTP client.
#![allow(dead_code)]

use std::io::Read;
use std::time::Duration;

use resin_cloud::config::Config;
use serde_json::Value;
use sqlx::Executor;

pub mod fleet;
pub mod image;
pub mod web;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Server {
    pub base: String,
    pub app: resin_cloud::AppState,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    agent: ureq::Agent,
    /// The rollout passes this server's evaluator ran (when it runs one).
    pub rollout_passes: resin_cloud::rollout::Passes,
}

pub struct Resp {
    pub status: u16,
    pub body: String,
    pub headers: ureq::http::HeaderMap,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

fn pg_admin_url() -> String {
    std::env::var("RESIN_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("RESIN_TEST_PG_URL is not set: start PostgreSQL with scripts/services.sh and `source /tmp/resin-run/env.sh`")
    })
}

fn with_db(url: &str, db: &str) -> String {
    let (head, tail) = url.rsplit_once('/').expect("database URL with a path");
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{head}/{db}{query}")
}

/// A TLS client config that trusts only the CA certificate(s) in `ca` (PEM).
pub fn trusting(ca: &std::path::Path) -> ureq::tls::TlsConfig {
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("{}: {e}", ca.display()));
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert!(!certs.is_empty(), "no certificate in {}", ca.display());
    ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build()
}

/// Percent-encodes what may not appear raw in a URI (spaces, non-ASCII, …).
pub fn encode(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/?&=$()',:;*+@!%".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Server {
    pub fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {})
    }

    pub fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (database_url, pg) = match backend {
            Backend::Sqlite => (format!("sqlite://{}/resin.db", dir.path().display()), None),
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("resin_test_{}", uuid::Uuid::new_v4().simple());
                rt.block_on(async {
                    sqlx::any::install_default_drivers();
                    let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
                    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .await
                        .unwrap();
                    pool.close().await;
                });
                (with_db(&admin, &name), Some((admin, name)))
            }
        };
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url,
            data_dir: dir.path().to_owned(),
            public_url: "http://127.0.0.1:0".into(),
            offline_after_secs: 180,
            log_retention: 1000,
            poll_interval_ms: 60_000,
            db_max_connections: 8,
            query_timeout_ms: 30_000,
            page_size: 1000,
            max_page_size: 5000,
            max_expand_rows: 50_000,
            auth_failures_per_min: 20,
            device_requests_per_min: 600,
            // Rollout tests drive the evaluator with their own clock.
            rollout_eval_ms: 0,
            tunnel_idle_secs: 1800,
            tunnel_max_sessions: 8,
            replica_url: None,
            tls: None,
            builder: None,
        };
        tweak(&mut config);
        // With TLS the harness's client trusts exactly the configured CA.
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let ca = config.tls.as_ref().and_then(|t| t.ca.clone());
        let app = rt
            .block_on(resin_cloud::App::start(config))
            .expect("server starts");
        let mut agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)));
        if let Some(ca) = ca {
            agent = agent.tls_config(trusting(&ca));
        }
        let agent: ureq::Agent = agent.build().into();
        Server {
            base: format!("{scheme}://{}", app.addr),
            app: app.state,
            rt,
            dir,
            pg,
            task: app.task,
            agent,
            rollout_passes: app.rollout_passes,
        }
    }

    /// Stops the server and starts it again on the same database (a cloud
    /// restart: nothing survives but what is in the database).
    pub fn restart(&mut self) {
        self.task.abort();
        let pool = self.app.db.pool.clone();
        self.rt.block_on(pool.close());
        let mut config = (*self.app.config).clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.public_url = "http://127.0.0.1:0".into();
        let app = self
            .rt
            .block_on(resin_cloud::App::start(config))
            .expect("server restarts");
        self.base = format!("http://{}", app.addr);
        self.app = app.state;
        self.task = app.task;
        self.rollout_passes = app.rollout_passes;
    }

    /// Another replica on the same database (its own pool and evaluator).
    pub fn replica(&self) -> resin_cloud::App {
        let mut config = (*self.app.config).clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.public_url = "http://127.0.0.1:0".into();
        self.rt
            .block_on(resin_cloud::App::start(config))
            .expect("replica starts")
    }

    pub fn req(&self, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Resp {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, key, &[], bytes)
    }

    pub fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut b = ureq::http::Request::builder().method(method).uri(format!(
            "{}{}",
            self.base,
            encode(path)
        ));
        if let Some(k) = key {
            b = b.header("Authorization", format!("Bearer {k}"));
        }
        if !body.is_empty()
            && !headers
                .iter()
                .any(|(h, _)| h.eq_ignore_ascii_case("content-type"))
        {
            b = b.header("Content-Type", "application/json");
        }
        for (h, v) in headers {
            b = b.header(*h, *v);
        }
        let resp = self
            .agent
            .run(b.body(body).unwrap())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut bytes = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut bytes)
            .unwrap();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        Resp {
            status,
            body,
            headers,
        }
    }

    /// Opens a streaming GET (for SSE).
    pub fn stream(&self, path: &str, key: &str) -> ureq::http::Response<ureq::Body> {
        self.agent
            .get(format!("{}{}", self.base, path))
            .header("Authorization", format!("Bearer {key}"))
            .call()
            .unwrap()
    }

    pub fn get(&self, path: &str, key: &str) -> Resp {
        self.req("GET", path, Some(key), None)
    }
    pub fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.req("POST", path, Some(key), Some(&body))
    }
    pub fn patch(&self, path: &str, key: &str, body: Value) -> Resp {
        self.req("PATCH", path, Some(key), Some(&body))
    }

    /// A user with an API key (bootstrap path).
    pub fn user(&self, name: &str) -> (i64, String) {
        let b = self
            .rt
            .block_on(resin_cloud::bootstrap(&self.app.db, name, None))
            .unwrap();
        (b.user_id, b.api_key)
    }

    /// POST that must answer 201; returns the entity.
    pub fn create(&self, key: &str, resource: &str, body: Value) -> Value {
        let r = self.post(&format!("/v1/{resource}"), key, body);
        assert_eq!(r.status, 201, "POST {resource}: {}", r.body);
        r.json()
    }

    /// A fleet of `qemuarm64` with a provisioning key; returns (fleet id, key).
    pub fn fleet(&self, key: &str, name: &str) -> (i64, String) {
        let f = self.create(
            key,
            "fleet",
            serde_json::json!({"name": name, "device_type": "qemuarm64"}),
        );
        let id = f["id"].as_i64().unwrap();
        let p = self.create(
            key,
            "provisioning_key",
            serde_json::json!({"fleet": id, "name": "p"}),
        );
        (id, p["key"].as_str().unwrap().to_owned())
    }

    /// Registers a device; returns (id, uuid, device key).
    pub fn device(&self, prov: &str) -> (i64, String, String) {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let r = self.post(
            "/device/register",
            prov,
            serde_json::json!({"uuid": uuid, "deviceType": "qemuarm64"}),
        );
        assert_eq!(r.status, 201, "register: {}", r.body);
        let j = r.json();
        (
            j["id"].as_i64().unwrap(),
            uuid,
            j["apiKey"].as_str().unwrap().to_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let pool = self.app.db.pool.clone();
        let pg = self.pg.take();
        self.rt.block_on(async move {
            pool.close().await;
            if let Some((admin, name)) = pg {
                if let Ok(p) = sqlx::AnyPool::connect(&admin).await {
                    let _ = p
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                    p.close().await;
                }
            }
        });
    }
}

/// An empty database with no migrations applied: a SQLite file in `dir`, or
/// a fresh PostgreSQL database (dropped with the returned guard).
pub struct EmptyDb {
    pub url: String,
    pg: Option<(String, String)>,
}

impl EmptyDb {
    pub fn new(backend: Backend, dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> Self {
        match backend {
            Backend::Sqlite => EmptyDb {
                url: format!("sqlite://{}/empty.db?mode=rwc", dir.display()),
                pg: None,
            },
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("resin_test_{}", uuid::Uuid::new_v4().simple());
                rt.block_on(async {
                    sqlx::any::install_default_drivers();
                    let pool = sqlx::AnyPool::connect(&admin).await.unwrap();
                    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .await
                        .unwrap();
                    pool.close().await;
                });
                EmptyDb {
                    url: with_db(&admin, &name),
                    pg: Some((admin, name)),
                }
            }
        }
    }

    /// Drops the PostgreSQL database (call with every pool on it closed).
    pub fn drop_with(self, rt: &tokio::runtime::Runtime) {
        if let Some((admin, name)) = self.pg {
            rt.block_on(async {
                if let Ok(p) = sqlx::AnyPool::connect(&admin).await {
                    let _ = p
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                    p.close().await;
                }
            });
        }
    }
}

/// Generates one `#[test]` per backend for `fn name(backend: Backend)`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[test] fn $name() { super::$name(super::common::Backend::Sqlite) } )* }
        mod postgres { $( #[test] fn $name() { super::$name(super::common::Backend::Postgres) } )* }
    };
}
