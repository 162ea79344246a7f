//! Remote access across replicas (PostgreSQL): a device's tunnel socket
//! lives on one replica, and a user's session may land on any.
//!
//! - Each replica has a row in `tunnel_replica` (a random id per process,
//!   the URL the other replicas reach it at, a heartbeat renewed every
//!   [`HEARTBEAT`]). A replica whose heartbeat is older than [`STALE`] is
//!   dead: its rows are ignored, and swept after [`SWEEP`] by any replica.
//! - When a device's socket connects, the replica upserts
//!   `tunnel_link(device, replica, conn)`; it deletes the row when that
//!   connection closes (only if the row is still that connection's).
//! - A session for a device whose socket is elsewhere is forwarded: the
//!   replica that took it checks the user's rights and the Origin, then opens
//!   `GET <holder>/internal/v1/tunnel/device(<id>)` with the replicas' shared
//!   secret (`replica_secret`, made by the first replica; never a user's key)
//!   and the user's id, and relays WebSocket messages both ways unchanged, so
//!   flow control stays end to end. The holder opens the session as for a
//!   local user and writes the audit row (once).
//!
//! On SQLite there is one process, so none of this runs.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use sqlx::Row;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::WebSocketStream;

use crate::db::{self, Dialect};
use crate::error::ApiError;
use crate::AppState;

/// How often a replica renews its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A replica whose heartbeat is older than this is dead (its links are
/// ignored).
pub const STALE: Duration = Duration::from_secs(30);
/// Rows of a replica dead for this long are deleted.
pub const SWEEP: Duration = Duration::from_secs(120);

/// The header carrying the replicas' shared secret.
pub const SECRET_HEADER: &str = "x-resin-replica-secret";
/// The header naming the user a forwarded session is for.
pub const USER_HEADER: &str = "x-resin-tunnel-user";

/// This replica, as the others see it.
#[derive(Default)]
pub struct Replica {
    /// Random per process start.
    pub id: String,
    url: OnceLock<String>,
    secret: OnceLock<String>,
}

impl Replica {
    pub fn new() -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            ..Default::default()
        }
    }

    /// The URL the other replicas reach this one at (once started).
    pub fn url(&self) -> Option<&str> {
        self.url.get().map(String::as_str)
    }

    /// Whether `headers` carry the replicas' secret (constant time).
    pub fn authenticates(&self, headers: &HeaderMap) -> bool {
        let (Some(secret), Some(given)) = (self.secret.get(), headers.get(SECRET_HEADER)) else {
            return false;
        };
        crate::auth::constant_time_eq(secret.as_bytes(), given.as_bytes())
    }
}

fn ago(d: Duration) -> String {
    db::format_ts(time::OffsetDateTime::now_utc() - d)
}

fn active(app: &AppState) -> bool {
    app.db.dialect == Dialect::Postgres && app.replica.url.get().is_some()
}

/// Registers this replica (PostgreSQL only): reads or makes the shared
/// secret, writes its row, and keeps its heartbeat (and re-registers its
/// links if another replica swept it as dead).
pub async fn start(app: &AppState, url: String) -> Result<(), sqlx::Error> {
    if app.db.dialect != Dialect::Postgres {
        return Ok(());
    }
    let (mine, _) = crate::auth::new_key(crate::auth::KeyKind::User);
    sqlx::query(
        "INSERT INTO replica_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&mine)
    .execute(&app.db.pool)
    .await?;
    let secret: String = sqlx::query("SELECT secret FROM replica_secret WHERE id = 1")
        .fetch_one(&app.db.pool)
        .await?
        .try_get(0)?;
    let _ = app.replica.secret.set(secret);
    beat(app, &url).await?;
    let _ = app.replica.url.set(url.clone());
    tracing::info!(replica = %app.replica.id, %url, "tunnel replica registered");
    let app = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = beat(&app, &url).await {
                tracing::warn!("tunnel replica heartbeat: {e}");
            }
        }
    });
    Ok(())
}

/// One heartbeat; the sweep of dead replicas; this replica's links again
/// if its row had been swept.
async fn beat(app: &AppState, url: &str) -> Result<(), sqlx::Error> {
    let pool = &app.db.pool;
    let me = &app.replica.id;
    let n = sqlx::query("UPDATE tunnel_replica SET heartbeat_at = $1, url = $2 WHERE id = $3")
        .bind(db::now())
        .bind(url)
        .bind(me)
        .execute(pool)
        .await?
        .rows_affected();
    if n == 0 {
        sqlx::query("INSERT INTO tunnel_replica (id, url, heartbeat_at) VALUES ($1, $2, $3)")
            .bind(me)
            .bind(url)
            .bind(db::now())
            .execute(pool)
            .await?;
        let links: Vec<(i64, u64)> = app.tunnels.connected();
        for (device, conn) in links {
            upsert(app, device, conn).await?;
        }
    }
    let dead = ago(SWEEP);
    sqlx::query(
        "DELETE FROM tunnel_link WHERE replica IN \
         (SELECT id FROM tunnel_replica WHERE heartbeat_at < $1)",
    )
    .bind(&dead)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM tunnel_replica WHERE heartbeat_at < $1")
        .bind(&dead)
        .execute(pool)
        .await?;
    Ok(())
}

async fn upsert(app: &AppState, device: i64, conn: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tunnel_link (device, replica, conn, connected_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (device) DO UPDATE SET replica = excluded.replica, conn = excluded.conn, \
         connected_at = excluded.connected_at",
    )
    .bind(device)
    .bind(&app.replica.id)
    .bind(i64::try_from(conn).unwrap_or(i64::MAX))
    .bind(db::now())
    .execute(&app.db.pool)
    .await?;
    Ok(())
}

/// A device's socket connected here.
pub async fn link_up(app: &AppState, device: i64, conn: u64) {
    if !active(app) {
        return;
    }
    if let Err(e) = upsert(app, device, conn).await {
        tracing::warn!(device, "recording the device's tunnel replica: {e}");
    }
}

/// A device's socket (connection `conn`) closed here.
pub async fn link_down(app: &AppState, device: i64, conn: u64) {
    if !active(app) {
        return;
    }
    let r = sqlx::query("DELETE FROM tunnel_link WHERE device = $1 AND replica = $2 AND conn = $3")
        .bind(device)
        .bind(&app.replica.id)
        .bind(i64::try_from(conn).unwrap_or(i64::MAX))
        .execute(&app.db.pool)
        .await;
    if let Err(e) = r {
        tracing::warn!(device, "removing the device's tunnel replica row: {e}");
    }
}

/// The URL of the live replica (not this one) that holds `device`'s socket.
pub async fn holder(app: &AppState, device: i64) -> Result<Option<String>, sqlx::Error> {
    if !active(app) {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT r.url FROM tunnel_link l JOIN tunnel_replica r ON r.id = l.replica \
         WHERE l.device = $1 AND r.id <> $2 AND r.heartbeat_at >= $3",
    )
    .bind(device)
    .bind(&app.replica.id)
    .bind(ago(STALE))
    .fetch_optional(&app.db.pool)
    .await?;
    row.map(|r| r.try_get::<String, _>(0)).transpose()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The socket to the holding replica.
pub struct Upstream(WebSocketStream<Box<dyn Io>>);

fn bad_gateway(url: &str, e: impl std::fmt::Display) -> Response {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "ReplicaUnreachable",
        format!("the replica holding the device's tunnel ({url}) could not be reached: {e}"),
    )
    .into_response()
}

fn client_tls(app: &AppState) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match app.config.tls.as_ref().and_then(|t| t.ca.as_ref()) {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Opens the forwarded session's socket to the holder at `base`. A refusal
/// there (409 no tunnel after all, 429 too many sessions) is passed back as
/// it was answered.
pub async fn connect(
    app: &AppState,
    base: &str,
    device: i64,
    user: i64,
) -> Result<Upstream, Response> {
    use tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/internal/v1/tunnel/device({device})",
        base.replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let secret = app
        .replica
        .secret
        .get()
        .ok_or_else(|| bad_gateway(base, "no replica secret"))?;
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| bad_gateway(base, e))?;
    let h = req.headers_mut();
    h.insert(
        SECRET_HEADER,
        secret.parse().map_err(|_| bad_gateway(base, "secret"))?,
    );
    h.insert(USER_HEADER, axum::http::HeaderValue::from(user));
    let uri = req.uri().clone();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .ok_or_else(|| bad_gateway(base, "no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| bad_gateway(base, "timed out after 10 s"))?
    .map_err(|e| bad_gateway(base, e))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if secure {
        let cfg = client_tls(app).map_err(|e| bad_gateway(base, e))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| bad_gateway(base, e))?;
        Box::new(
            tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| bad_gateway(base, e))?,
        )
    } else {
        Box::new(tcp)
    };
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    match tokio_tungstenite::client_async_with_config(req, io, Some(config)).await {
        Ok((ws, _)) => Ok(Upstream(ws)),
        Err(tungstenite::Error::Http(resp)) => {
            let (parts, body) = resp.into_parts();
            Err((
                parts.status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body.unwrap_or_default(),
            )
                .into_response())
        }
        Err(e) => Err(bad_gateway(base, e)),
    }
}

/// Relays a forwarded session: the user's socket here, the holder's there.
pub async fn pipe(user: WebSocket, up: Upstream) {
    let (mut usink, mut ustream) = user.split();
    let (mut hsink, mut hstream) = up.0.split();
    let to_holder = async {
        while let Some(Ok(m)) = ustream.next().await {
            let m = match m {
                Message::Binary(b) => tungstenite::Message::Binary(b),
                Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if hsink.send(m).await.is_err() {
                break;
            }
        }
        let _ = hsink.close().await;
    };
    let to_user = async {
        while let Some(Ok(m)) = hstream.next().await {
            let m = match m {
                tungstenite::Message::Binary(b) => Message::Binary(b),
                tungstenite::Message::Text(t) => Message::Text(t.as_str().into()),
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            if usink.send(m).await.is_err() {
                break;
            }
        }
        let _ = usink.close().await;
    };
    // Either side ending ends the relay (dropping both sockets).
    tokio::select! {
        _ = to_holder => {}
        _ = to_user => {}
    }
}
