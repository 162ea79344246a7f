//! The one typed configuration of `resin-cloud`: a TOML file (`--config`),
//! overridden by `RESIN_CLOUD_*` environment variables, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

pub use crate::tls::TlsSettings;

/// Settings as given on the command line or in the environment; every field
/// is optional so the file and the defaults can fill the gaps.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, global = true, env = "RESIN_CLOUD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on. Default: 127.0.0.1:8080.
    #[arg(long, global = true, env = "RESIN_CLOUD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `sqlite://<path>` or `postgres://…`. Default: `sqlite://<data-dir>/resin.db`.
    #[arg(long, global = true, env = "RESIN_CLOUD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the SQLite file, OS bundles and base images live. Default: /var/lib/resin-cloud.
    #[arg(long, global = true, env = "RESIN_CLOUD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base URL devices use to reach this server. Default: `https://<listen>`
    /// (`http://<listen>` with `--plain-http`).
    #[arg(long, global = true, env = "RESIN_CLOUD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Seconds without a report after which a device counts as offline. Default: 180.
    #[arg(long, global = true, env = "RESIN_CLOUD_OFFLINE_AFTER_SECS")]
    pub offline_after_secs: Option<u64>,
    /// Log lines kept per device (older ones are deleted). Default: 1000.
    #[arg(long, global = true, env = "RESIN_CLOUD_LOG_RETENTION")]
    pub log_retention: Option<u64>,
    /// Poll interval written into the config.json of downloaded images, ms. Default: 60000.
    #[arg(long, global = true, env = "RESIN_CLOUD_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// Maximum connections in the database pool. Default: 16 (SQLite: 4 writers share one file).
    #[arg(long, global = true, env = "RESIN_CLOUD_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Longest a `/v1` read may run in the database, ms; then it is stopped and
    /// answered 503 QueryTimeout. Default: 30000.
    #[arg(long, global = true, env = "RESIN_CLOUD_QUERY_TIMEOUT_MS")]
    pub query_timeout_ms: Option<u64>,
    /// Entities per page of a `/v1` collection when the client asks for no
    /// smaller page (`Prefer: odata.maxpagesize`); more come through
    /// `@odata.nextLink`. Default: 1000.
    #[arg(long, global = true, env = "RESIN_CLOUD_PAGE_SIZE")]
    pub page_size: Option<u64>,
    /// The largest page a client may ask for with `Prefer: odata.maxpagesize`. Default: 5000.
    #[arg(long, global = true, env = "RESIN_CLOUD_MAX_PAGE_SIZE")]
    pub max_page_size: Option<u64>,
    /// The most rows one `/v1` read may produce, by the `$expand` cost
    /// estimate (main rows plus expanded rows); above it the read is a 400. Default: 50000.
    #[arg(long, global = true, env = "RESIN_CLOUD_MAX_EXPAND_ROWS")]
    pub max_expand_rows: Option<u64>,
    /// Requests with a wrong or expired key one client address may make
    /// per minute; beyond it every request of that address carrying a key
    /// is answered 429 with Retry-After until the minute is over. 0: no
    /// limit. Default: 20.
    #[arg(long, global = true, env = "RESIN_CLOUD_AUTH_FAILURES_PER_MIN")]
    pub auth_failures_per_min: Option<u64>,
    /// Device-API requests (`/device/…`) one key may make per minute; beyond
    /// it 429 with Retry-After. 0: no limit. Default: 600.
    #[arg(long, global = true, env = "RESIN_CLOUD_DEVICE_REQUESTS_PER_MIN")]
    pub device_requests_per_min: Option<u64>,
    /// How often the rollout evaluator runs, ms; 0 turns it off in this
    /// process (another replica evaluates). Default: 5000.
    #[arg(long, global = true, env = "RESIN_CLOUD_ROLLOUT_EVAL_MS")]
    pub rollout_eval_ms: Option<u64>,
    /// A tunnel session with no data either way for this long is closed, s. Default: 1800.
    #[arg(long, global = true, env = "RESIN_CLOUD_TUNNEL_IDLE_SECS")]
    pub tunnel_idle_secs: Option<u64>,
    /// Tunnel sessions one device may have open at once. Default: 8.
    #[arg(long, global = true, env = "RESIN_CLOUD_TUNNEL_MAX_SESSIONS")]
    pub tunnel_max_sessions: Option<usize>,
    /// The base URL the other replicas reach this one at, to forward a
    /// tunnel session to the device's socket held here (PostgreSQL only).
    /// Default: `https://<listen address>` (`http://` with `--plain-http`);
    /// set it when listening on 0.0.0.0, and the TLS certificate must be
    /// valid for its host.
    #[arg(long, global = true, env = "RESIN_CLOUD_REPLICA_URL")]
    pub replica_url: Option<String>,
    /// Serve plain HTTP instead of HTTPS. Default: false: HTTPS, because
    /// device and API keys travel in every request; plain HTTP is for tests,
    /// the demo, or a TLS-terminating proxy in front.
    #[arg(long, global = true, env = "RESIN_CLOUD_PLAIN_HTTP", num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub plain_http: Option<bool>,
    /// PEM certificate chain served over HTTPS. Default: `<data-dir>/tls/server.pem`
    /// (what `resin-cloud init` writes).
    #[arg(long, global = true, env = "RESIN_CLOUD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default: `<data-dir>/tls/server.key`.
    #[arg(long, global = true, env = "RESIN_CLOUD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that configured images carry in config.json as
    /// `rootCA` (the only CA their devices then trust). Default:
    /// `<data-dir>/tls/ca.pem` if it exists, else none (devices trust the
    /// public roots, for a certificate from a public CA).
    #[arg(long, global = true, env = "RESIN_CLOUD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// How often the certificate files are checked for a change, ms (a changed
    /// pair is loaded without a restart; SIGHUP reloads at once). 0: only
    /// SIGHUP. Default: 10000.
    #[arg(long, global = true, env = "RESIN_CLOUD_TLS_WATCH_MS")]
    pub tls_watch_ms: Option<u64>,
    /// Builder (`resin push`, `git push`): the registry built images are
    /// pushed to, `host[:port]`. Unset: this cloud takes no builds.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_REGISTRY")]
    pub builder_registry: Option<String>,
    /// The same registry as devices reach it, `host[:port]`, when that name
    /// differs from `builder_registry` (the releases' images are named with
    /// it). Default: `builder_registry`.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_DEVICE_REGISTRY")]
    pub builder_device_registry: Option<String>,
    /// The Docker engine the builder drives. Default: unix:///var/run/docker.sock.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_DOCKER_HOST")]
    pub builder_docker_host: Option<String>,
    /// Builds this process runs at once; 0: it only queues (another
    /// process builds). Default: 1.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_WORKERS")]
    pub builder_workers: Option<u32>,
    /// A build's timeout, seconds. Default: 1800.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_TIMEOUT_SECS")]
    pub builder_timeout_secs: Option<u64>,
    /// The largest build context (the upload, and each service's context), MiB. Default: 500.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_MAX_CONTEXT_MIB")]
    pub builder_max_context_mib: Option<u64>,
    /// A running build's lease, seconds: its worker renews it every third
    /// of that; a build whose lease ran out (its process died) is marked
    /// failed by any builder process. Default: 60.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_LEASE_SECS")]
    pub builder_lease_secs: Option<u64>,
    /// Builds one user may have queued or running at once. Default: 2.
    #[arg(long, global = true, env = "RESIN_CLOUD_BUILDER_MAX_PER_USER")]
    pub builder_max_per_user: Option<u32>,
}

/// The builder's settings (`builder_registry` set).
#[derive(Debug, Clone)]
pub struct BuilderSettings {
    pub registry: String,
    /// The registry's name as devices reach it (`None`: `registry`).
    pub device_registry: Option<String>,
    pub docker_host: String,
    pub workers: u32,
    pub timeout_secs: u64,
    pub max_context_bytes: u64,
    pub max_per_user: u32,
    /// A running build's lease, seconds (renewed every third of it).
    pub lease_secs: u64,
    /// The program git hooks exec (`<it> git-hook pre-receive`); default:
    /// this process's own executable.
    pub hook_exe: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub public_url: String,
    pub offline_after_secs: u64,
    pub log_retention: u64,
    pub poll_interval_ms: u64,
    pub db_max_connections: u32,
    pub query_timeout_ms: u64,
    pub page_size: u64,
    pub max_page_size: u64,
    pub max_expand_rows: u64,
    pub auth_failures_per_min: u64,
    pub device_requests_per_min: u64,
    pub rollout_eval_ms: u64,
    pub tunnel_idle_secs: u64,
    pub tunnel_max_sessions: usize,
    /// Where the other replicas reach this one; `None`: the bound address.
    pub replica_url: Option<String>,
    /// HTTPS settings; `None` serves plain HTTP (`plain_http`).
    pub tls: Option<TlsSettings>,
    /// The builder; `None`: builds are refused.
    pub builder: Option<BuilderSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

impl ConfigArgs {
    /// Reads the file named by `--config` (if any) and lays flags/env on top.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => ConfigArgs::default(),
        };
        let pick = self.clone().or(file);
        let listen = pick
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let data_dir = pick
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/resin-cloud"));
        let database_url = pick
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}/resin.db", data_dir.display()));
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres")) {
            return Err(ConfigError::Invalid(format!(
                "database_url must start with sqlite:// or postgres://, got {database_url:?}"
            )));
        }
        let tls = if pick.plain_http.unwrap_or(false) {
            None
        } else {
            let tls_dir = data_dir.join("tls");
            let ca = match pick.tls_ca {
                Some(ca) => Some(ca),
                None => Some(tls_dir.join(crate::tls::CA_CERT)).filter(|p| p.exists()),
            };
            Some(TlsSettings {
                cert: pick
                    .tls_cert
                    .unwrap_or_else(|| tls_dir.join(crate::tls::SERVER_CERT)),
                key: pick
                    .tls_key
                    .unwrap_or_else(|| tls_dir.join(crate::tls::SERVER_KEY)),
                ca,
                watch_ms: pick.tls_watch_ms.unwrap_or(10_000),
            })
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = pick
            .public_url
            .unwrap_or_else(|| format!("{scheme}://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        Ok(Config {
            listen,
            database_url,
            data_dir,
            public_url,
            offline_after_secs: pick.offline_after_secs.unwrap_or(180),
            log_retention: pick.log_retention.unwrap_or(1000).max(1),
            poll_interval_ms: pick.poll_interval_ms.unwrap_or(60_000),
            db_max_connections: pick.db_max_connections.unwrap_or(16).max(1),
            query_timeout_ms: pick.query_timeout_ms.unwrap_or(30_000).max(1),
            page_size: pick.page_size.unwrap_or(1000).max(1),
            max_page_size: pick.max_page_size.unwrap_or(5000).max(1),
            max_expand_rows: pick.max_expand_rows.unwrap_or(50_000).max(1),
            auth_failures_per_min: pick.auth_failures_per_min.unwrap_or(20),
            device_requests_per_min: pick.device_requests_per_min.unwrap_or(600),
            rollout_eval_ms: pick.rollout_eval_ms.unwrap_or(5000),
            tunnel_idle_secs: pick.tunnel_idle_secs.unwrap_or(1800).max(1),
            tunnel_max_sessions: pick.tunnel_max_sessions.unwrap_or(8),
            replica_url: pick.replica_url.map(|u| u.trim_end_matches('/').to_owned()),
            tls,
            builder: pick.builder_registry.map(|registry| BuilderSettings {
                registry,
                device_registry: pick.builder_device_registry,
                docker_host: pick
                    .builder_docker_host
                    .unwrap_or_else(|| "unix:///var/run/docker.sock".into()),
                workers: pick.builder_workers.unwrap_or(1),
                timeout_secs: pick.builder_timeout_secs.unwrap_or(1800).max(1),
                max_context_bytes: pick.builder_max_context_mib.unwrap_or(500).max(1) << 20,
                max_per_user: pick.builder_max_per_user.unwrap_or(2).max(1),
                lease_secs: pick.builder_lease_secs.unwrap_or(60).max(3),
                hook_exe: None,
            }),
        })
    }

    fn or(self, o: ConfigArgs) -> ConfigArgs {
        ConfigArgs {
            config: self.config,
            listen: self.listen.or(o.listen),
            database_url: self.database_url.or(o.database_url),
            data_dir: self.data_dir.or(o.data_dir),
            public_url: self.public_url.or(o.public_url),
            offline_after_secs: self.offline_after_secs.or(o.offline_after_secs),
            log_retention: self.log_retention.or(o.log_retention),
            poll_interval_ms: self.poll_interval_ms.or(o.poll_interval_ms),
            db_max_connections: self.db_max_connections.or(o.db_max_connections),
            query_timeout_ms: self.query_timeout_ms.or(o.query_timeout_ms),
            page_size: self.page_size.or(o.page_size),
            max_page_size: self.max_page_size.or(o.max_page_size),
            max_expand_rows: self.max_expand_rows.or(o.max_expand_rows),
            auth_failures_per_min: self.auth_failures_per_min.or(o.auth_failures_per_min),
            device_requests_per_min: self.device_requests_per_min.or(o.device_requests_per_min),
            rollout_eval_ms: self.rollout_eval_ms.or(o.rollout_eval_ms),
            tunnel_idle_secs: self.tunnel_idle_secs.or(o.tunnel_idle_secs),
            tunnel_max_sessions: self.tunnel_max_sessions.or(o.tunnel_max_sessions),
            replica_url: self.replica_url.or(o.replica_url),
            plain_http: self.plain_http.or(o.plain_http),
            tls_cert: self.tls_cert.or(o.tls_cert),
            tls_key: self.tls_key.or(o.tls_key),
            tls_ca: self.tls_ca.or(o.tls_ca),
            tls_watch_ms: self.tls_watch_ms.or(o.tls_watch_ms),
            builder_registry: self.builder_registry.or(o.builder_registry),
            builder_device_registry: self.builder_device_registry.or(o.builder_device_registry),
            builder_docker_host: self.builder_docker_host.or(o.builder_docker_host),
            builder_workers: self.builder_workers.or(o.builder_workers),
            builder_timeout_secs: self.builder_timeout_secs.or(o.builder_timeout_secs),
            builder_max_context_mib: self.builder_max_context_mib.or(o.builder_max_context_mib),
            builder_max_per_user: self.builder_max_per_user.or(o.builder_max_per_user),
            builder_lease_secs: self.builder_lease_secs.or(o.builder_lease_secs),
        }
    }
}

fn read_file(path: &Path) -> Result<ConfigArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_and_flags_layer_in_order() {
        let c = ConfigArgs::default().resolve().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite:///var/lib/resin-cloud/resin.db");
        assert_eq!(c.public_url, "https://127.0.0.1:8080", "HTTPS by default");
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, Path::new("/var/lib/resin-cloud/tls/server.pem"));
        assert_eq!(tls.key, Path::new("/var/lib/resin-cloud/tls/server.key"));
        assert_eq!(tls.watch_ms, 10_000);
        assert_eq!((c.offline_after_secs, c.log_retention), (180, 1000));
        let plain = ConfigArgs {
            plain_http: Some(true),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            (plain.tls, plain.public_url.as_str()),
            (None, "http://127.0.0.1:8080")
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cloud.toml");
        std::fs::write(&file, "data_dir = \"/srv/resin\"\nlog_retention = 7\npublic_url = \"http://10.0.2.2:8080/\"\n").unwrap();
        let args = ConfigArgs {
            config: Some(file.clone()),
            log_retention: Some(9),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.database_url, "sqlite:///srv/resin/resin.db");
        assert_eq!(c.log_retention, 9, "flags beat the file");
        assert_eq!(c.public_url, "http://10.0.2.2:8080");

        std::fs::write(&file, "colour = \"red\"\n").unwrap();
        let err = ConfigArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let bad = ConfigArgs {
            database_url: Some("mysql://x".into()),
            ..Default::default()
        };
        assert!(bad.resolve().is_err());
    }
}
