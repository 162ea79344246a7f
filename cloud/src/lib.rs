//! resin-cloud: the cloud API server. It serves the OData resources at
//! `/v1`, the device API under `/device`, OS bundles and configured image
//! downloads, over SQLite or PostgreSQL.
//!
//! Entry points: [`Config`](config::Config), [`App::start`] (used by the
//! binary and the tests) and [`bootstrap`].

pub mod actions;
pub mod api;
pub mod auth;
pub mod build;
pub mod cache;
pub mod config;
pub mod db;
pub mod device_api;
pub mod error;
pub mod git;
pub mod linger;
pub mod logs;
pub mod memory;
pub mod metadata;
pub mod os;
pub mod os_history;
pub mod perms;
pub mod query;
pub mod ratelimit;
pub mod release;
pub mod resources;
pub mod rollout;
pub mod schema;
pub mod tls;
pub mod tunnel;
pub mod tunnel_replicas;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use resin_api_types::paths;
use sqlx::Row;
use tokio::sync::broadcast;

use crate::config::Config;
use crate::db::Db;

/// Shared state of the server: a handle, cloned for every request (by
/// each extractor and middleware that takes it), so it is one `Arc`.
/// Fields are reached through `Deref` (`app.db`, `app.cache`, …).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
pub struct Shared {
    pub db: Db,
    pub config: Arc<Config>,
    pub logs: broadcast::Sender<logs::LogEvent>,
    /// Target states and device keys for the poll path ([`cache`]).
    pub cache: Arc<cache::Cache>,
    /// Devices seen since the last heartbeat write ([`cache::Heartbeats`]).
    pub heartbeats: Arc<cache::Heartbeats>,
    /// Rate limits ([`ratelimit`]).
    pub limits: Arc<ratelimit::Limits>,
    /// Wakes this process's build workers when a build is queued ([`build`]).
    pub builds: Arc<tokio::sync::Notify>,
    /// Counts this process's build log writes and build status changes;
    /// followers of a build's log wake on it instead of waiting for their
    /// next poll ([`build::follow`]).
    pub build_events: Arc<tokio::sync::watch::Sender<u64>>,
    /// The secret git hooks of this process present on its hook socket ([`git`]).
    pub hook_token: Arc<String>,
    /// Devices connected through the remote-access tunnel ([`tunnel`]).
    pub tunnels: Arc<tunnel::Tunnels>,
    /// This replica, as the others reach it for tunnel sessions ([`tunnel_replicas`]).
    pub replica: Arc<tunnel_replicas::Replica>,
}

impl AppState {
    pub async fn new(config: Config) -> Result<Self, db::DbError> {
        let db = Db::connect(&config.database_url, config.db_max_connections).await?;
        let (logs, _) = broadcast::channel(4096);
        Ok(Self(Arc::new(Shared {
            cache: Arc::new(cache::Cache::new(db.dialect)),
            db,
            config: Arc::new(config),
            logs,
            heartbeats: Arc::default(),
            limits: Arc::default(),
            builds: Arc::default(),
            build_events: Arc::new(tokio::sync::watch::Sender::new(0)),
            hook_token: Arc::new(auth::new_key(auth::KeyKind::User).0),
            tunnels: Arc::default(),
            replica: Arc::new(tunnel_replicas::Replica::new()),
        })))
    }
}

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1", get(api::service_document))
        .route("/v1/", get(api::service_document))
        .route("/v1/{seg}", axum::routing::any(api::v1))
        .route(
            "/v1/{seg}/{sub}",
            axum::routing::any(api::v1_sub).layer(DefaultBodyLimit::disable()),
        )
        .route("/openapi.json", get(metadata::openapi_handler))
        .route("/os/bundle/{id}", get(os::bundle))
        .route(paths::REGISTER, post(device_api::register))
        .route(paths::TARGET_STATE_ROUTE, get(device_api::target_state))
        .route(paths::STATE_REPORT, patch(device_api::report_state))
        .route(paths::LOG_STREAM_ROUTE, post(logs::log_stream))
        .route("/ping", get(|| async { "OK" }))
        .merge(build::router())
        .merge(git::router())
        .merge(web::router())
        .merge(tunnel::router())
        .with_state(state)
}

/// The routes wrapped in the server-wide middleware ([`edge`]) and the
/// default body limit.
///
/// The middleware wraps the router once rather than through
/// `Router::layer`, which wraps every route in its own boxed service: per
/// layer, that cost an allocation and a deep clone on every request, a
/// measurable part of the 304 poll path (BENCHMARKS.md, cloud).
pub fn service(
    state: AppState,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .service(router(state))
}

/// The server-wide middleware, one function so that a request pays for one
/// layer, in this order:
/// 1. an over-long request target is answered 414 ([`api::refuse_long_uri`]);
/// 2. the rate limits ([`ratelimit::check`], then [`ratelimit::record`]);
/// 3. errors axum answers in plain text get the JSON error shape
///    ([`api::json_error_shape`]);
/// 4. an error answer to a request with a body closes the connection
///    ([`linger::close_after_refused_body`]).
async fn edge(
    axum::extract::State(app): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = linger::has_body(&req);
    let resp = match api::refuse_long_uri(&req) {
        Some(resp) => resp,
        None => match ratelimit::check(&app, &req) {
            Err(refused) => axum::response::IntoResponse::into_response(refused),
            Ok(seen) => {
                let resp = next.run(req).await;
                ratelimit::record(&app, seen, &resp);
                resp
            }
        },
    };
    let mut resp = api::json_error_shape(resp);
    linger::close_after_refused_body(has_body, &mut resp);
    resp
}

/// A running server.
pub struct App {
    pub addr: SocketAddr,
    pub state: AppState,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The rollout passes this replica evaluated.
    pub rollout_passes: rollout::Passes,
}

impl App {
    /// Binds `config.listen` (port 0 picks a free one), loads the TLS
    /// certificate (unless plain HTTP), migrates, and serves in the background:
    /// HTTPS with HTTP/2 or HTTP/1.1 by ALPN, the certificate reloaded on
    /// SIGHUP or when its files change (`tls::spawn_reloader`).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let rustls = match &config.tls {
            Some(s) => Some(tls::load(s).await.context(
                "loading the TLS certificate (make one with `resin-cloud init --host <name or IP>`, \
                 or serve plain HTTP with --plain-http)",
            )?),
            None => None,
        };
        let mut config = config;
        if config.public_url.ends_with(":0") {
            let scheme = if rustls.is_some() { "https" } else { "http" };
            config.public_url = format!("{scheme}://{addr}");
        }
        let state = AppState::new(config)
            .await
            .context("opening the database")?;
        tokio::spawn(device_api::offline_sweeper(state.clone()));
        tokio::spawn(cache::heartbeat_flusher(state.clone()));
        tokio::spawn(memory::trimmer());
        let rollout_passes = rollout::Passes::default();
        if state.config.rollout_eval_ms > 0 {
            tokio::spawn(rollout::evaluator(
                state.clone(),
                state.config.rollout_eval_ms,
                rollout_passes.clone(),
            ));
        }
        if let Some(b) = state.config.builder.as_ref() {
            if b.workers > 0 {
                tokio::spawn(build::workers(state.clone(), b.workers));
            }
            tokio::spawn(build::reaper(state.clone(), b.lease_secs));
            let exe = match &b.hook_exe {
                Some(e) => e.clone(),
                None => std::env::current_exe().context("finding resin-cloud's own path")?,
            };
            git::write_hooks(&state.config.data_dir, &exe).context("writing the git hooks")?;
            let st = state.clone();
            tokio::spawn(async move {
                if let Err(e) = git::serve_hook_socket(st).await {
                    tracing::error!("the git hook socket: {e}");
                }
            });
        }
        if state.db.dialect == db::Dialect::Postgres {
            tokio::spawn(cache::listen(state.clone()));
            let scheme = if rustls.is_some() { "https" } else { "http" };
            let url = state
                .config
                .replica_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{addr}"));
            tunnel_replicas::start(&state, url)
                .await
                .context("registering this replica for tunnel sessions")?;
        }
        // The peer address feeds the rate limits (ratelimit::client_ip).
        use axum::ServiceExt as _;
        let task = match (rustls, state.config.tls.clone()) {
            (Some(rustls), Some(settings)) => {
                let reloader = tls::spawn_reloader(settings, rustls.clone());
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                    .acceptor(linger::LingerAcceptor);
                let server = axum_server::from_tcp(listener.into_std()?)?.acceptor(acceptor);
                // axum-server hands over hyper's own body type.
                let app = tower::ServiceBuilder::new()
                    .map_request(|r: axum::http::Request<_>| r.map(axum::body::Body::new))
                    .service(service(state.clone()))
                    .into_make_service_with_connect_info::<ratelimit::ClientAddr>();
                tokio::spawn(async move {
                    let r = server.serve(app).await;
                    reloader.abort();
                    r
                })
            }
            _ => {
                let listener = linger::LingerListener(listener);
                let app = service(state.clone())
                    .into_make_service_with_connect_info::<ratelimit::ClientAddr>();
                tokio::spawn(async move { axum::serve(listener, app).await })
            }
        };
        Ok(Self {
            addr,
            state,
            task,
            rollout_passes,
        })
    }
}

/// Makes user `user_id` an admin (or not): `resin-cloud bootstrap --admin`.
pub async fn set_admin(db: &Db, user_id: i64, admin: bool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE \"user\" SET is_admin = $1 WHERE id = $2")
        .bind(admin)
        .bind(user_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// What `resin-cloud bootstrap` prints.
#[derive(Debug, serde::Serialize)]
pub struct Bootstrapped {
    pub user_id: i64,
    pub api_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<i64>,
}

/// Creates the user if missing, a fresh API key for it, and optionally a
/// fleet (kept if it exists).
pub async fn bootstrap(
    db: &Db,
    username: &str,
    fleet: Option<(&str, &str)>,
) -> Result<Bootstrapped, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let existing = sqlx::query("SELECT id FROM \"user\" WHERE username = $1")
        .bind(username)
        .fetch_optional(&mut *tx)
        .await?;
    let user_id: i64 = match existing {
        Some(r) => r.try_get(0)?,
        None => {
            sqlx::query("INSERT INTO \"user\" (username, created_at) VALUES ($1, $2) RETURNING id")
                .bind(username)
                .bind(db::now())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?
        }
    };
    let (api_key, hash) = auth::new_key(auth::KeyKind::User);
    sqlx::query(
        "INSERT INTO api_key (\"user\", name, key_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(user_id)
    .bind("bootstrap")
    .bind(hash)
    .bind(db::now())
    .execute(&mut *tx)
    .await?;
    let fleet_id = match fleet {
        None => None,
        Some((name, device_type)) => {
            let found = sqlx::query("SELECT id FROM fleet WHERE owner = $1 AND name = $2")
                .bind(user_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            Some(match found {
                Some(r) => r.try_get(0)?,
                None => sqlx::query(
                    "INSERT INTO fleet (name, device_type, owner, uuid, created_at) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(name)
                .bind(device_type)
                .bind(user_id)
                .bind(resources::new_uuid())
                .bind(db::now())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?,
            })
        }
    };
    tx.commit().await?;
    Ok(Bootstrapped {
        user_id,
        api_key,
        fleet_id,
    })
}
