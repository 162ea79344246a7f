//! Remote access through the cloud: each device keeps one WebSocket open to
//! `GET /device/v1/tunnel` (device key); a user opens a session with a
//! WebSocket to `GET /v1/device(<id>)/tunnel` (API key with write rights on
//! the device's fleet) and the cloud relays frames between the two
//! (`resin_api_types::tunnel`), renumbering streams. Flow control is end
//! to end (credit frames pass through), so the relay holds at most one
//! window per stream and direction.
//!
//! Also: the registry of connected devices ([`Tunnels`]), the session
//! limits (idle timeout, sessions per device), the audit table
//! `tunnel_session` (`GET /v1/device(<id>)/tunnel/sessions`), and "poll now"
//! ([`poll_now`]): whenever a device's cached target state is invalidated,
//! a PollNow frame goes down its tunnel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use resin_api_types::tunnel::{CloseInfo, Frame, OpenRequest, DEVICE_PATH, HEADER_LEN, MAX_DATA};
use serde_json::{json, Value};
use sqlx::Row;
use tokio::sync::{mpsc, Notify};

use crate::auth::{self, Actor};
use crate::cache::Change;
use crate::error::{ApiError, ApiResult};
use crate::{db, perms, tunnel_replicas, AppState};

/// The device's WebSocket is pinged this often (keeps NAT mappings open and
/// finds dead peers).
const PING_EVERY: Duration = Duration::from_secs(20);
/// A device connection with no message for this long is dropped.
const DEVICE_SILENCE: Duration = Duration::from_secs(75);
/// A user's socket must send its Open frame within this time.
const OPEN_WITHIN: Duration = Duration::from_secs(10);
/// The WebSocket's read buffer (tungstenite allocates it per connection;
/// its 128 KiB default would dominate an idle device's memory).
const WS_BUFFER: usize = 8 * 1024;
/// The largest WebSocket message accepted (one frame).
const MAX_MESSAGE: usize = HEADER_LEN + MAX_DATA + 1024;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(DEVICE_PATH, get(device_socket))
        .route("/v1/{seg}/tunnel", get(user_socket))
        .route("/v1/{seg}/tunnel/sessions", get(sessions))
        .route("/v1/{seg}/tunnel/reboot", axum::routing::post(reboot_now))
        .route("/internal/v1/tunnel/{seg}", get(forwarded_socket))
}

/// One connected device.
pub struct Link {
    device: i64,
    fleet: i64,
    conn: u64,
    out: mpsc::UnboundedSender<Frame>,
    sessions: Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>,
    next_stream: AtomicU32,
    closed: Notify,
}

impl Link {
    fn send(&self, f: Frame) {
        let _ = self.out.send(f);
    }

    /// A new stream for a session, unless the device has `max` open.
    fn add_session(&self, max: usize, tx: mpsc::UnboundedSender<Frame>) -> Option<u32> {
        let mut s = self.sessions.lock().ok()?;
        if s.len() >= max {
            return None;
        }
        let id = loop {
            let id = self.next_stream.fetch_add(1, Ordering::Relaxed).max(1);
            if !s.contains_key(&id) {
                break id;
            }
        };
        s.insert(id, tx);
        Some(id)
    }

    fn remove_session(&self, stream: u32) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&stream);
        }
    }

    fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// A frame from the device to its session.
    fn to_session(&self, f: Frame) {
        let stream = f.stream();
        let Ok(s) = self.sessions.lock() else { return };
        if let Some(tx) = s.get(&stream) {
            let _ = tx.send(f);
        }
    }

    /// Ends every session (the device went away).
    fn fail_all(&self, why: &str) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .map(|mut s| s.drain().collect())
            .unwrap_or_default();
        for (stream, tx) in sessions {
            let _ = tx.send(Frame::Close(
                stream,
                CloseInfo {
                    exit_code: None,
                    error: Some(why.to_owned()),
                },
            ));
        }
    }
}

/// The devices connected to this replica.
#[derive(Default)]
pub struct Tunnels {
    links: Mutex<HashMap<i64, Arc<Link>>>,
    next_conn: AtomicU64,
}

impl Tunnels {
    /// The link of a connected device.
    pub fn get(&self, device: i64) -> Option<Arc<Link>> {
        self.links.lock().ok()?.get(&device).cloned()
    }

    /// Number of connected devices.
    pub fn len(&self) -> usize {
        self.links.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (device, connection) of every connected device.
    pub fn connected(&self) -> Vec<(i64, u64)> {
        self.links
            .lock()
            .map(|l| l.values().map(|k| (k.device, k.conn)).collect())
            .unwrap_or_default()
    }

    /// Sends `f` to every connected device that `change` concerns.
    fn broadcast(&self, change: Change, f: &Frame) -> usize {
        let Ok(links) = self.links.lock() else {
            return 0;
        };
        let mut n = 0;
        for l in links.values() {
            let hit = match change {
                Change::Device(id) => l.device == id,
                Change::Fleet(f) => l.fleet == f,
                Change::All => true,
            };
            if hit {
                l.send(f.clone());
                n += 1;
            }
        }
        n
    }
}

/// Tells the connected devices whose target state `change` touched to poll
/// now. Called wherever the target-state cache is invalidated (this
/// replica's writes and, on PostgreSQL, the other replicas' notices).
pub fn poll_now(app: &AppState, change: Change) {
    let n = app.tunnels.broadcast(change, &Frame::PollNow);
    if n > 0 {
        tracing::debug!(?change, devices = n, "poll-now sent down the tunnel");
    }
}

/// Asks a connected device to reboot (a control frame; the device honours
/// its update locks). False when the device has no tunnel here.
pub fn reboot(app: &AppState, device: i64) -> bool {
    match app.tunnels.get(device) {
        Some(l) => {
            l.send(Frame::Reboot);
            true
        }
        None => false,
    }
}

fn upgrade_error(e: WebSocketUpgradeRejection) -> ApiError {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "UpgradeRequired",
        format!("this endpoint speaks WebSocket only: {e}"),
    )
}

/// `GET /device/v1/tunnel`: a device's one tunnel (device key only).
async fn device_socket(
    State(app): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let r = async {
        let actor = auth::resolve(&app.db, &headers).await?;
        let (id, fleet) = match actor {
            Actor::Device { id, fleet, .. } => (id, fleet),
            Actor::Anonymous => return Err(ApiError::unauthorized()),
            _ => {
                return Err(ApiError::forbidden(
                    "only a device key opens a device's tunnel",
                ))
            }
        };
        let ws = ws.map_err(upgrade_error)?;
        Ok(ws
            .max_message_size(MAX_MESSAGE)
            .read_buffer_size(WS_BUFFER)
            .write_buffer_size(0)
            .on_upgrade(move |s| serve_device(app, id, fleet, s)))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn serve_device(app: AppState, device: i64, fleet: i64, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let conn = app.tunnels.next_conn.fetch_add(1, Ordering::Relaxed);
    let link = Arc::new(Link {
        device,
        fleet,
        conn,
        out: tx,
        sessions: Mutex::default(),
        next_stream: AtomicU32::new(1),
        closed: Notify::new(),
    });
    let old = app
        .tunnels
        .links
        .lock()
        .ok()
        .and_then(|mut l| l.insert(device, link.clone()));
    if let Some(old) = old {
        old.fail_all("the device opened a new tunnel");
        old.closed.notify_waiters();
    }
    tunnel_replicas::link_up(&app, device, conn).await;
    tracing::info!(device, conn, "device tunnel connected");
    // A change made while the device was away: let it look now.
    link.send(Frame::PollNow);
    let writer_link = link.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let msg = tokio::select! {
                f = rx.recv() => match f.map(|f| f.encode()) {
                    Some(Ok(b)) => Message::Binary(b.into()),
                    Some(Err(e)) => { tracing::warn!(device, "not sent: {e}"); continue }
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Vec::new().into()),
                _ = writer_link.closed.notified() => break,
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(DEVICE_SILENCE, stream.next()) => m,
            _ = link.closed.notified() => break,
        };
        match msg {
            Ok(Some(Ok(Message::Binary(b)))) => match Frame::decode(&b) {
                Ok(f) if f.stream() != 0 => link.to_session(f),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(device, "device tunnel: {e}; closing it");
                    break;
                }
            },
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => {
                tracing::info!(
                    device,
                    "device tunnel silent for {DEVICE_SILENCE:?}: dropped"
                );
                break;
            }
        }
    }
    let mine = app.tunnels.links.lock().is_ok_and(|mut l| {
        l.get(&device)
            .is_some_and(|c| c.conn == conn)
            .then(|| l.remove(&device))
            .is_some()
    });
    if mine {
        tunnel_replicas::link_down(&app, device, conn).await;
    }
    link.fail_all("the device's tunnel closed");
    link.closed.notify_waiters();
    writer.abort();
    tracing::info!(device, conn, "device tunnel disconnected");
}

/// `device(<id>)` of a path segment.
fn device_of(seg: &str) -> ApiResult<i64> {
    seg.strip_prefix("device(")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ApiError::not_found(format!("no route /v1/{seg}/tunnel")))
}

/// The origin (`scheme://host[:port]`) of a URL.
fn origin_of(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// A browser's WebSocket carries `Origin`: only the cloud's own pages may
/// open sessions (a user's key in a cookie must not be usable by another
/// site). Clients that send no Origin (the CLI) pass.
fn check_origin(app: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let ours = origin_of(&app.config.public_url);
    match origin.to_str() {
        Ok(o) if o.eq_ignore_ascii_case(ours) => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "WebSocket Origin {origin:?} is not this cloud's ({ours})"
        ))),
    }
}

/// The device, if the caller may open sessions to it (write rights on its
/// fleet); otherwise 404, as for any row the caller cannot change.
async fn writable_device(app: &AppState, actor: &Actor, device: i64) -> ApiResult<()> {
    perms::require_device(&app.db, actor, device, perms::Access::Write).await
}

/// How long a dashboard terminal's ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// A single-use ticket for user `user`'s session to `device` (the caller
/// has checked the user's rights on it): valid for [`TICKET_TTL`], kept
/// hashed in the database so any replica can take it.
pub async fn issue_ticket(app: &AppState, user: i64, device: i64) -> Result<String, sqlx::Error> {
    let now = time::OffsetDateTime::now_utc();
    sqlx::query("DELETE FROM tunnel_ticket WHERE expires_at < $1")
        .bind(db::format_ts(now))
        .execute(&app.db.pool)
        .await?;
    let (ticket, hash) = auth::new_key(auth::KeyKind::User);
    sqlx::query(
        "INSERT INTO tunnel_ticket (hash, \"user\", device, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(user)
    .bind(device)
    .bind(db::format_ts(now + TICKET_TTL))
    .execute(&app.db.pool)
    .await?;
    Ok(ticket)
}

/// Takes a ticket (deleting it, so it works once): the user it was made
/// for, if it is for `device` and has not expired. Anything else is 401.
async fn redeem_ticket(app: &AppState, ticket: &str, device: i64) -> ApiResult<Actor> {
    let row = sqlx::query(
        "DELETE FROM tunnel_ticket WHERE hash = $1 RETURNING \"user\", device, expires_at",
    )
    .bind(auth::hash_key(ticket))
    .fetch_optional(&app.db.pool)
    .await?;
    let refused = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "BadTicket",
            format!("the terminal ticket {why}; open the terminal page again"),
        )
    };
    let Some(row) = row else {
        return Err(refused("is unknown or was used already"));
    };
    let (user, for_device, expires): (i64, i64, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    if for_device != device {
        return Err(refused("is for another device"));
    }
    if expires < db::now() {
        return Err(refused("has expired"));
    }
    let admin: i64 =
        sqlx::query("SELECT CASE WHEN is_admin THEN 1 ELSE 0 END FROM \"user\" WHERE id = $1")
            .bind(user)
            .fetch_optional(&app.db.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .ok_or_else(|| refused("is for a user that is gone"))?;
    Ok(Actor::User {
        id: user,
        admin: admin != 0,
        read_only: false,
        fleet: None,
    })
}

/// The `ticket` of a query string.
fn ticket_of(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
        .filter(|t| !t.is_empty())
}

/// `GET /v1/device(<id>)/tunnel`: one session to a device, with a user's
/// key, or with `?ticket=` (the dashboard terminal's single-use ticket).
async fn user_socket(
    State(app): State<AppState>,
    Path(seg): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let r = async {
        let device = device_of(&seg)?;
        let actor = match ticket_of(uri.query()) {
            Some(t) => {
                check_origin(&app, &headers)?;
                redeem_ticket(&app, t, device).await?
            }
            None => auth::resolve(&app.db, &headers).await?,
        };
        writable_device(&app, &actor, device).await?;
        check_origin(&app, &headers)?;
        let user = match actor {
            Actor::User { id, .. } => id,
            _ => return Err(ApiError::unauthorized()),
        };
        let Some(link) = app.tunnels.get(device) else {
            // Held by another replica? Forward the session there.
            let Some(holder) = tunnel_replicas::holder(&app, device).await? else {
                return Err(no_tunnel(device));
            };
            let ws = ws.map_err(upgrade_error)?;
            let up = match tunnel_replicas::connect(&app, &holder, device, user).await {
                Ok(up) => up,
                Err(refused) => return Ok(refused),
            };
            tracing::info!(device, user, %holder, "tunnel session forwarded to the replica holding the device");
            return Ok(ws
                .max_message_size(MAX_MESSAGE)
                .read_buffer_size(WS_BUFFER)
                .write_buffer_size(0)
                .on_upgrade(move |s| tunnel_replicas::pipe(s, up)));
        };
        local_session(app, link, user, ws)
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

fn no_tunnel(device: i64) -> ApiError {
    ApiError::conflict(format!(
        "device({device}) has no tunnel to this cloud: it is offline, or its tunnel is off"
    ))
}

/// A session to a device whose socket is on this replica.
fn local_session(
    app: AppState,
    link: Arc<Link>,
    user: i64,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    if link.session_count() >= app.config.tunnel_max_sessions {
        return Err(too_many(link.device, app.config.tunnel_max_sessions));
    }
    let ws = ws.map_err(upgrade_error)?;
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |s| serve_user(app, link, user, s)))
}

/// `GET /internal/v1/tunnel/device(<id>)`: a session forwarded by another
/// replica (which checked the user's rights and the Origin), authenticated
/// with the replicas' shared secret; the user is named in a header. 404 to
/// anyone without the secret.
async fn forwarded_socket(
    State(app): State<AppState>,
    Path(seg): Path<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let r = async {
        if !app.replica.authenticates(&headers) {
            return Err(ApiError::not_found("no route /internal/v1/tunnel"));
        }
        let device = device_of(&seg)?;
        let user = headers
            .get(tunnel_replicas::USER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| ApiError::bad_request("a forwarded session names its user"))?;
        let link = app.tunnels.get(device).ok_or_else(|| no_tunnel(device))?;
        local_session(app, link, user, ws)
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

fn too_many(device: i64, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManySessions",
        format!("device({device}) already has {max} tunnel sessions open"),
    )
}

async fn send_frame(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    f: Frame,
) -> bool {
    match f.encode() {
        Ok(b) => sink.send(Message::Binary(b.into())).await.is_ok(),
        Err(_) => false,
    }
}

fn closed(error: impl Into<String>) -> CloseInfo {
    CloseInfo {
        exit_code: None,
        error: Some(error.into()),
    }
}

async fn serve_user(app: AppState, link: Arc<Link>, user: i64, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    // The first frame opens the session.
    let (cs, req) = match tokio::time::timeout(OPEN_WITHIN, stream.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => match Frame::decode(&b) {
            Ok(Frame::Open(cs, req)) => (cs, req),
            Ok(f) => {
                let s = f.stream().max(1);
                send_frame(
                    &mut sink,
                    Frame::Close(s, closed("the first frame must be Open")),
                )
                .await;
                return;
            }
            Err(e) => {
                send_frame(&mut sink, Frame::Close(1, closed(e.to_string()))).await;
                return;
            }
        },
        _ => return,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let Some(ds) = link.add_session(app.config.tunnel_max_sessions, tx) else {
        let e = too_many(link.device, app.config.tunnel_max_sessions);
        send_frame(&mut sink, Frame::Close(cs, closed(e.message))).await;
        return;
    };
    let audit = audit_start(&app, user, link.device, &req).await;
    tracing::info!(device = link.device, user, kind = req.kind(), target = %req.target(), "tunnel session opened");
    link.send(Frame::Open(ds, req));
    let idle = Duration::from_secs(app.config.tunnel_idle_secs.max(1));
    let mut deadline = tokio::time::Instant::now() + idle;
    let (mut up, mut down) = (0u64, 0u64);
    let mut end = CloseInfo::default();
    loop {
        tokio::select! {
            m = stream.next() => {
                let f = match m {
                    Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                        Ok(f) if f.stream() == cs => f,
                        Ok(_) => {
                            end = closed("frame for another stream");
                            link.send(Frame::Close(ds, end.clone()));
                            send_frame(&mut sink, Frame::Close(cs, end.clone())).await;
                            break;
                        }
                        Err(e) => {
                            end = closed(format!("client: {e}"));
                            link.send(Frame::Close(ds, end.clone()));
                            send_frame(&mut sink, Frame::Close(cs, end.clone())).await;
                            break;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        end = closed("the client went away");
                        link.send(Frame::Close(ds, end.clone()));
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                if matches!(f, Frame::Data(..)) {
                    up += f.window_len() as u64;
                    deadline = tokio::time::Instant::now() + idle;
                }
                let is_close = matches!(f, Frame::Close(..));
                if let Frame::Close(_, c) = &f {
                    end = CloseInfo { exit_code: None, error: c.error.clone().or(Some("closed by the client".into())) };
                }
                link.send(f.with_stream(ds));
                if is_close {
                    break;
                }
            }
            f = rx.recv() => {
                let Some(f) = f else {
                    end = closed("the device's tunnel closed");
                    send_frame(&mut sink, Frame::Close(cs, end.clone())).await;
                    break;
                };
                if f.window_len() > 0 {
                    down += f.window_len() as u64;
                    deadline = tokio::time::Instant::now() + idle;
                }
                let close = if let Frame::Close(_, c) = &f { Some(c.clone()) } else { None };
                if !send_frame(&mut sink, f.with_stream(cs)).await {
                    end = closed("the client went away");
                    link.send(Frame::Close(ds, end.clone()));
                    break;
                }
                if let Some(c) = close {
                    end = c;
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                end = closed(format!("idle for {} s: closed", idle.as_secs()));
                link.send(Frame::Close(ds, end.clone()));
                send_frame(&mut sink, Frame::Close(cs, end.clone())).await;
                break;
            }
        }
    }
    link.remove_session(ds);
    let _ = sink.close().await;
    tracing::info!(
        device = link.device,
        user,
        up,
        down,
        ?end,
        "tunnel session closed"
    );
    if let Some(id) = audit {
        audit_end(&app, id, up, down, &end).await;
    }
}

async fn audit_start(app: &AppState, user: i64, device: i64, req: &OpenRequest) -> Option<i64> {
    let r = async {
        sqlx::query(
            "INSERT INTO tunnel_session (device, device_uuid, owner, \"user\", username, kind, target, started_at) \
             SELECT d.id, d.uuid, f.owner, u.id, u.username, $3, $4, $5 \
             FROM device d JOIN fleet f ON f.id = d.fleet, \"user\" u WHERE d.id = $1 AND u.id = $2 \
             RETURNING id",
        )
        .bind(device)
        .bind(user)
        .bind(req.kind())
        .bind(req.target())
        .bind(db::now())
        .fetch_one(&app.db.pool)
        .await?
        .try_get::<i64, _>(0)
    }
    .await;
    match r {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(device, user, "writing the tunnel audit row: {e}");
            None
        }
    }
}

async fn audit_end(app: &AppState, id: i64, up: u64, down: u64, end: &CloseInfo) {
    let r = sqlx::query(
        "UPDATE tunnel_session SET ended_at = $1, bytes_up = $2, bytes_down = $3, exit_code = $4, error = $5 \
         WHERE id = $6",
    )
    .bind(db::now())
    .bind(i64::try_from(up).unwrap_or(i64::MAX))
    .bind(i64::try_from(down).unwrap_or(i64::MAX))
    .bind(end.exit_code.map(i64::from))
    .bind(end.error.as_deref())
    .bind(id)
    .execute(&app.db.pool)
    .await;
    if let Err(e) = r {
        tracing::error!(id, "closing the tunnel audit row: {e}");
    }
}

/// `POST /v1/device(<id>)/tunnel/reboot`: a Reboot frame down the device's
/// tunnel (write rights on its fleet); 409 when it has no tunnel here.
async fn reboot_now(
    State(app): State<AppState>,
    Path(seg): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let actor = auth::resolve(&app.db, &headers).await?;
        let device = device_of(&seg)?;
        writable_device(&app, &actor, device).await?;
        check_origin(&app, &headers)?;
        if !reboot(&app, device) {
            return Err(ApiError::conflict(format!(
                "device({device}) has no tunnel to this cloud: it is offline, or its tunnel is off"
            )));
        }
        tracing::info!(device, "reboot sent down the tunnel");
        Ok((StatusCode::ACCEPTED, Json(json!({"sent": true}))).into_response())
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/device(<id>)/tunnel/sessions`: the audit of a device's sessions,
/// newest first (whoever may read the device).
async fn sessions(
    State(app): State<AppState>,
    Path(seg): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let actor = auth::resolve(&app.db, &headers).await?;
        perms::may_use_v1(&actor)?;
        let device = device_of(&seg)?;
        perms::require_device(&app.db, &actor, device, perms::Access::Read).await?;
        let rows = sqlx::query(
            "SELECT id, device, device_uuid, \"user\", username, kind, target, started_at, ended_at, \
             bytes_up, bytes_down, exit_code, error FROM tunnel_session WHERE device = $1 \
             ORDER BY id DESC LIMIT 1000",
        )
        .bind(device)
        .fetch_all(&app.db.pool)
        .await?;
        let value = rows
            .iter()
            .map(|r| -> Result<Value, sqlx::Error> {
                Ok(json!({
                    "id": r.try_get::<i64, _>(0)?,
                    "device": r.try_get::<i64, _>(1)?,
                    "device_uuid": r.try_get::<String, _>(2)?,
                    "user": r.try_get::<Option<i64>, _>(3)?,
                    "username": r.try_get::<String, _>(4)?,
                    "kind": r.try_get::<String, _>(5)?,
                    "target": r.try_get::<String, _>(6)?,
                    "started_at": r.try_get::<String, _>(7)?,
                    "ended_at": r.try_get::<Option<String>, _>(8)?,
                    "bytes_up": r.try_get::<i64, _>(9)?,
                    "bytes_down": r.try_get::<i64, _>(10)?,
                    "exit_code": r.try_get::<Option<i64>, _>(11)?,
                    "error": r.try_get::<Option<String>, _>(12)?,
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Json(json!({ "value": value })).into_response())
    }
    .await;
    r.unwrap_or_else(|e: ApiError| e.into_response())
}

/// The OpenAPI entries of this module's routes.
pub fn openapi_paths(paths: &mut serde_json::Map<String, Value>, err: &Value) {
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}});
    paths.insert(
        DEVICE_PATH.into(),
        json!({"get": {"operationId": "device_tunnel",
            "summary": "The device's remote-access tunnel: a WebSocket of binary frames (docs/interfaces.md, \"Tunnel\"); device key only",
            "responses": {"101": {"description": "switching to WebSocket"}, "401": err, "403": err, "426": err}}}),
    );
    paths.insert(
        "/v1/device({id})/tunnel".into(),
        json!({"get": {"operationId": "device_tunnel_session",
            "summary": "Open one session (shell, exec, TCP forward) to a connected device: a WebSocket whose first frame is Open; needs write rights on the device's fleet",
            "parameters": [id],
            "responses": {"101": {"description": "switching to WebSocket"}, "401": err, "403": err, "404": err,
                "409": err, "426": err, "429": err}}}),
    );
    paths.insert(
        "/v1/device({id})/tunnel/reboot".into(),
        json!({"post": {"operationId": "device_tunnel_reboot",
            "summary": "Reboot a connected device now, through its tunnel (the device honours its update locks)",
            "parameters": [id.clone()],
            "responses": {"202": {"description": "sent", "content": {"application/json": {"schema": {"type": "object",
                "properties": {"sent": {"type": "boolean"}}}}}}, "401": err, "403": err, "404": err, "409": err}}}),
    );
    paths.insert(
        "/v1/device({id})/tunnel/sessions".into(),
        json!({"get": {"operationId": "device_tunnel_sessions",
            "summary": "The audit of a device's tunnel sessions, newest first",
            "parameters": [id],
            "responses": {"200": {"description": "sessions", "content": {"application/json": {"schema": {"type": "object",
                "properties": {"value": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "device": {"type": "integer"}, "device_uuid": {"type": "string"},
                    "user": {"type": ["integer", "null"]}, "username": {"type": "string"},
                    "kind": {"type": "string", "enum": ["shell", "exec", "tcp"]}, "target": {"type": "string"},
                    "started_at": {"type": "string"}, "ended_at": {"type": ["string", "null"]},
                    "bytes_up": {"type": "integer"}, "bytes_down": {"type": "integer"},
                    "exit_code": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}}}}}}}}},
                "401": err, "404": err}}}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_segments() {
        assert_eq!(
            origin_of("https://cloud.example:8443/x/y"),
            "https://cloud.example:8443"
        );
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(device_of("device(42)").ok(), Some(42));
        assert!(device_of("fleet(42)").is_err());
        assert!(device_of("device(x)").is_err());
    }
}
