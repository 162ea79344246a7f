//! Builds: the job queue in the database, the workers that run
//! [`resin_builder`] on queued jobs, and the HTTP side.
//!
//! - `POST /v1/build?fleet=<id|uuid|name>[&nocache=true][&pin=false]` takes a
//!   gzipped tar of the project, queues a job and answers its log as NDJSON
//!   ([`BuildLogLine`]) until the build ends; closing the request cancels it.
//! - `GET /v1/build/{id}` is the job; `GET /v1/build/{id}/logs` and
//!   `GET /v1/release({id})/logs` its stored log.
//! - A worker takes the oldest queued job (`FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL, so replicas never take the same one; SQLite has one writer),
//!   builds it, and on success creates the release and, unless `pin=false`,
//!   makes it the fleet's target, in the transaction that marks the build
//!   `success`. A failed or cancelled build creates no release and leaves the
//!   fleet's target alone.
//!
//! States (guarded: [`BuildState::can_go`], and each UPDATE names the state
//! it leaves): queued → building → success | failed | cancelled; queued →
//! cancelled | failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use resin_api_types::build::{platform_of_device_type, BuildLogLine, BuildState};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::auth::{self, Actor};
use crate::db::{self, Dialect};
use crate::error::{ApiError, ApiResult};
use crate::resources::{dyn_query, new_uuid};
use crate::{perms, AppState};

/// The build routes (merged into the cloud's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/build", post(post_build))
        .route("/v1/build/{id}", get(get_build))
        .route("/v1/build/{id}/logs", get(get_build_logs))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

#[derive(Debug, Deserialize)]
pub struct BuildParams {
    pub fleet: String,
    #[serde(default)]
    pub nocache: Option<bool>,
    #[serde(default)]
    pub pin: Option<bool>,
}

/// A fleet the caller may build for.
#[derive(Debug, Clone)]
pub struct FleetRef {
    pub id: i64,
    pub uuid: String,
}

fn no_builder() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "NoBuilder",
        "this cloud has no builder (set builder_registry)",
    )
}

/// The user behind a key that may write.
pub fn writing_user(actor: &Actor) -> ApiResult<i64> {
    match actor {
        Actor::User {
            id,
            read_only: false,
            ..
        } => Ok(*id),
        Actor::User { .. } => Err(ApiError::forbidden("this API key is read-only")),
        Actor::Anonymous => Err(ApiError::unauthorized()),
        _ => Err(ApiError::forbidden("builds need a user's API key")),
    }
}

/// Resolves `fleet` (id, uuid or name) among the fleets `actor` may write;
/// any other fleet is "not found", whether it exists or not.
pub async fn writable_fleet(app: &AppState, actor: &Actor, fleet: &str) -> ApiResult<FleetRef> {
    let scope = perms::write_scope(actor, "fleet", "t");
    let by_id = fleet.parse::<i64>().ok();
    let sql = format!(
        "SELECT t.id, t.uuid FROM fleet t WHERE (t.id = $1 OR t.uuid = $2 OR t.name = $2) AND {} ORDER BY t.id",
        scope.to_sql()
    );
    let row = dyn_query(sql)
        .bind(by_id.unwrap_or(-1))
        .bind(fleet)
        .fetch_optional(&app.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("fleet {fleet:?} not found")))?;
    Ok(FleetRef {
        id: row.try_get(0)?,
        uuid: row.try_get(1)?,
    })
}

/// Refuses a new build when the user already has `max_per_user` queued or running.
pub async fn check_user_limit(app: &AppState, user: i64) -> ApiResult<()> {
    let b = app.config.builder.as_ref().ok_or_else(no_builder)?;
    let n: i64 = sqlx::query(
        "SELECT COUNT(*) FROM build WHERE \"user\" = $1 AND status IN ('queued', 'building')",
    )
    .bind(user)
    .fetch_one(&app.db.pool)
    .await?
    .try_get(0)?;
    if n >= i64::from(b.max_per_user) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyBuilds",
            format!(
                "you have {n} build(s) queued or running; the limit is {}",
                b.max_per_user
            ),
        ));
    }
    Ok(())
}

fn builds_dir(app: &AppState) -> PathBuf {
    app.config.data_dir.join("builds")
}

/// Stores an uploaded context (gzipped tar) under the data dir, refusing it
/// past the limit (413); a partial file never stays behind.
pub async fn store_context(
    app: &AppState,
    mut body: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
) -> ApiResult<PathBuf> {
    use tokio::io::AsyncWriteExt;
    let b = app.config.builder.as_ref().ok_or_else(no_builder)?;
    let dir = builds_dir(app);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::io("creating the builds directory", e))?;
    let path = dir.join(format!("{}.tar.gz", new_uuid()));
    let partial = path.with_extension("partial");
    let r = async {
        let mut f = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| ApiError::io("storing the build context", e))?;
        let mut n: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("reading the build context: {e}")))?;
            n += chunk.len() as u64;
            if n > b.max_context_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "ContextTooLarge",
                    format!(
                        "the build context is over the limit of {} bytes",
                        b.max_context_bytes
                    ),
                ));
            }
            f.write_all(&chunk)
                .await
                .map_err(|e| ApiError::io("storing the build context", e))?;
        }
        if n == 0 {
            return Err(ApiError::bad_request(
                "the build context is empty: send a gzipped tar of the project",
            ));
        }
        f.sync_all()
            .await
            .map_err(|e| ApiError::io("storing the build context", e))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| ApiError::io("storing the build context", e))
    }
    .await;
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    Ok(path)
}

/// Queues a build; returns its id.
pub async fn enqueue(
    app: &AppState,
    user: i64,
    fleet: &FleetRef,
    source: &str,
    nocache: bool,
    pin: bool,
    context: &Path,
) -> ApiResult<i64> {
    let row = sqlx::query(
        "INSERT INTO build (uuid, fleet, \"user\", status, source, nocache, pin, context_path, created_at) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(new_uuid())
    .bind(fleet.id)
    .bind(user)
    .bind(source)
    .bind(nocache)
    .bind(pin)
    .bind(context.to_string_lossy().into_owned())
    .bind(db::now())
    .fetch_one(&app.db.pool)
    .await?;
    let id: i64 = row.try_get(0)?;
    tracing::info!(build = id, fleet = fleet.id, source, "build queued");
    app.builds.notify_waiters();
    Ok(id)
}

/// Asks a queued or running build to stop (the worker sees it within a second).
pub async fn request_cancel(app: &AppState, id: i64) {
    let r = sqlx::query(
        "UPDATE build SET cancel_requested = TRUE WHERE id = $1 AND status IN ('queued', 'building')",
    )
    .bind(id)
    .execute(&app.db.pool)
    .await;
    if let Err(e) = r {
        tracing::warn!(build = id, "cancelling: {e}");
    }
    build_changed(app);
}

/// Cancels the build when dropped before the stream saw its end (the
/// client went away: Ctrl-C on `resin push`, or `git push` interrupted).
struct CancelOnDrop {
    app: AppState,
    id: i64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let (app, id) = (self.app.clone(), self.id);
            tokio::spawn(async move { request_cancel(&app, id).await });
        }
    }
}

struct Follow {
    guard: CancelOnDrop,
    last: i64,
    done: bool,
    events: tokio::sync::watch::Receiver<u64>,
}

/// Tells this process's log followers that a build's log or status changed.
fn build_changed(app: &AppState) {
    app.build_events.send_modify(|n| *n = n.wrapping_add(1));
}

/// The build's log lines as NDJSON bytes, from the first line until the
/// build is final (read from the database, so it works whichever process
/// or replica builds). With `cancel_on_drop`, dropping the stream early
/// cancels the build.
pub fn follow(
    app: AppState,
    id: i64,
    cancel_on_drop: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let events = app.build_events.subscribe();
    let st = Follow {
        guard: CancelOnDrop {
            app,
            id,
            armed: cancel_on_drop,
        },
        last: 0,
        done: false,
        events,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            // What is written from here on wakes the wait below.
            st.events.borrow_and_update();
            let app = &st.guard.app;
            // Status first, then lines: a final status means its last line
            // is already stored (the worker writes both in one transaction).
            let status: Result<String, sqlx::Error> =
                sqlx::query("SELECT status FROM build WHERE id = $1")
                    .bind(st.guard.id)
                    .fetch_one(&app.db.pool)
                    .await
                    .and_then(|r| r.try_get(0));
            let rows = sqlx::query(
                "SELECT id, line FROM build_log WHERE build = $1 AND id > $2 ORDER BY id LIMIT 500",
            )
            .bind(st.guard.id)
            .bind(st.last)
            .fetch_all(&app.db.pool)
            .await;
            let (status, rows) = match (status, rows) {
                (Ok(s), Ok(r)) => (s, r),
                (Err(e), _) | (_, Err(e)) => {
                    st.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), st));
                }
            };
            if !rows.is_empty() {
                let mut out = String::new();
                for r in &rows {
                    st.last = r.try_get(0).unwrap_or(st.last);
                    out.push_str(&r.try_get::<String, _>(1).unwrap_or_default());
                    out.push('\n');
                }
                return Some((Ok(Bytes::from(out)), st));
            }
            if status.parse::<BuildState>().is_ok_and(BuildState::is_final) {
                st.guard.armed = false;
                drop(st);
                return None;
            }
            // This process's workers wake us as they write; a builder in
            // another process is only seen by polling.
            tokio::select! {
                _ = st.events.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
}

fn ndjson(body: Body, id: i64) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&id.to_string()) {
        r.headers_mut().insert("x-resin-build", v);
    }
    r
}

async fn post_build(
    State(app): State<AppState>,
    Query(p): Query<BuildParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let actor = auth::resolve(&app.db, &headers).await?;
        let user = writing_user(&actor)?;
        app.config.builder.as_ref().ok_or_else(no_builder)?;
        let fleet = writable_fleet(&app, &actor, &p.fleet).await?;
        check_user_limit(&app, user).await?;
        let stream = body
            .into_data_stream()
            .map(|r| r.map_err(std::io::Error::other));
        let ctx = store_context(&app, stream).await?;
        let id = enqueue(
            &app,
            user,
            &fleet,
            "push",
            p.nocache.unwrap_or(false),
            p.pin.unwrap_or(true),
            &ctx,
        )
        .await?;
        Ok::<_, ApiError>(ndjson(Body::from_stream(follow(app.clone(), id, true)), id))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The build row as JSON, if the caller may read its fleet.
async fn read_build(app: &AppState, actor: &Actor, id: i64) -> ApiResult<Value> {
    let scope = perms::read_scope(actor, "fleet", "f");
    let sql = format!(
        "SELECT b.id, b.uuid, b.fleet, b.status, b.source, CASE WHEN b.nocache THEN 1 ELSE 0 END, \
         CASE WHEN b.pin THEN 1 ELSE 0 END, b.\"release\", b.error, \
         b.created_at, b.started_at, b.finished_at FROM build b JOIN fleet f ON f.id = b.fleet \
         WHERE b.id = $1 AND {}",
        scope.to_sql()
    );
    let r = dyn_query(sql)
        .bind(id)
        .fetch_optional(&app.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("build({id}) not found")))?;
    Ok(json!({
        "id": r.try_get::<i64, _>(0)?,
        "uuid": r.try_get::<String, _>(1)?,
        "fleet": r.try_get::<i64, _>(2)?,
        "status": r.try_get::<String, _>(3)?,
        "source": r.try_get::<String, _>(4)?,
        "nocache": r.try_get::<i64, _>(5)? != 0,
        "pin": r.try_get::<i64, _>(6)? != 0,
        "release": r.try_get::<Option<i64>, _>(7)?,
        "error": r.try_get::<Option<String>, _>(8)?,
        "created_at": r.try_get::<String, _>(9)?,
        "started_at": r.try_get::<Option<String>, _>(10)?,
        "finished_at": r.try_get::<Option<String>, _>(11)?,
    }))
}

async fn get_build(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
) -> Response {
    async {
        let actor = auth::resolve(&app.db, &headers).await?;
        perms::may_use_v1(&actor)?;
        Ok::<_, ApiError>(Json(read_build(&app, &actor, id).await?).into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// The stored log of a build, NDJSON (`follow=true` waits for its end).
async fn stored_log(app: &AppState, id: i64, follow_it: bool) -> ApiResult<Response> {
    if follow_it {
        return Ok(ndjson(
            Body::from_stream(follow(app.clone(), id, false)),
            id,
        ));
    }
    let rows = sqlx::query("SELECT line FROM build_log WHERE build = $1 ORDER BY id")
        .bind(id)
        .fetch_all(&app.db.pool)
        .await?;
    let mut out = String::new();
    for r in rows {
        out.push_str(&r.try_get::<String, _>(0)?);
        out.push('\n');
    }
    Ok(ndjson(Body::from(out), id))
}

#[derive(Debug, Deserialize)]
struct LogParams {
    #[serde(default)]
    follow: Option<bool>,
}

async fn get_build_logs(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<i64>,
    Query(p): Query<LogParams>,
    headers: HeaderMap,
) -> Response {
    async {
        let actor = auth::resolve(&app.db, &headers).await?;
        perms::may_use_v1(&actor)?;
        read_build(&app, &actor, id).await?;
        stored_log(&app, id, p.follow.unwrap_or(false)).await
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/release(<id>)/logs`: the log of the build that made the release.
pub async fn release_logs(app: &AppState, actor: &Actor, release: i64) -> ApiResult<Response> {
    let scope = perms::read_scope(actor, "fleet", "f");
    let sql = format!(
        "SELECT b.id FROM build b JOIN fleet f ON f.id = b.fleet WHERE b.\"release\" = $1 AND {}",
        scope.to_sql()
    );
    let row = dyn_query(sql)
        .bind(release)
        .fetch_optional(&app.db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "release({release}) not found, or it was not built by resin's builder"
            ))
        })?;
    stored_log(app, row.try_get(0)?, false).await
}

// ---- the worker ----

/// A job a worker took.
#[derive(Debug, Clone)]
struct Job {
    id: i64,
    fleet: i64,
    nocache: bool,
    pin: bool,
    context: PathBuf,
}

/// Takes the oldest queued job and marks it building, atomically: on
/// PostgreSQL `FOR UPDATE SKIP LOCKED` lets concurrent workers pass each
/// other's rows; on SQLite the write transaction is exclusive.
async fn take_job(app: &AppState) -> Result<Option<Job>, sqlx::Error> {
    let pick = match app.db.dialect {
        Dialect::Postgres => {
            "SELECT id FROM build WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        }
        Dialect::Sqlite => "SELECT id FROM build WHERE status = 'queued' ORDER BY id LIMIT 1",
    };
    let mut tx = app.db.begin_write().await?;
    let Some(row) = sqlx::query(pick).fetch_optional(&mut *tx).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let id: i64 = row.try_get(0)?;
    let r = sqlx::query(
        "UPDATE build SET status = 'building', started_at = $1, heartbeat_at = $1 WHERE id = $2 AND status = 'queued' \
         RETURNING fleet, CASE WHEN nocache THEN 1 ELSE 0 END, CASE WHEN pin THEN 1 ELSE 0 END, context_path",
    )
    .bind(db::now())
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(r) = r else {
        tx.rollback().await?;
        return Ok(None);
    };
    let job = Job {
        id,
        fleet: r.try_get(0)?,
        nocache: r.try_get::<i64, _>(1)? != 0,
        pin: r.try_get::<i64, _>(2)? != 0,
        context: PathBuf::from(r.try_get::<String, _>(3)?),
    };
    tx.commit().await?;
    tracing::info!(build = id, from = "queued", to = "building", "build taken");
    Ok(Some(job))
}

/// Runs builds as long as the process lives: `workers` of them at once.
pub async fn workers(app: AppState, n: u32) {
    let mut tasks = Vec::new();
    for w in 0..n {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let notified = app.builds.notified();
                match take_job(&app).await {
                    Ok(Some(job)) => run_job(&app, job).await,
                    Ok(None) => {
                        tokio::select! {
                            _ = notified => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(worker = w, "taking a build job: {e}");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

enum Outcome {
    Built(resin_builder::BuildOutput),
    Failed(String),
    Cancelled,
}

async fn cancel_requested(app: &AppState, id: i64) -> bool {
    sqlx::query("SELECT CASE WHEN cancel_requested THEN 1 ELSE 0 END FROM build WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .is_ok_and(|v| v != 0)
}

/// This process as a builder: `<host name>/<pid>` (a build's log says
/// which process built it).
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!(
        "{}/{}",
        if host.is_empty() { "localhost" } else { host },
        std::process::id()
    )
}

/// Renews a running build's lease; false when the build is no longer
/// `building` (another process found its lease run out and failed it).
async fn renew_lease(app: &AppState, id: i64) -> bool {
    match sqlx::query("UPDATE build SET heartbeat_at = $1 WHERE id = $2 AND status = 'building'")
        .bind(db::now())
        .bind(id)
        .execute(&app.db.pool)
        .await
    {
        Ok(r) => r.rows_affected() == 1,
        Err(e) => {
            // The database is away: keep building; the lease decides.
            tracing::warn!(build = id, "renewing the build's lease: {e}");
            true
        }
    }
}

/// Fails every `building` job whose lease ran out: the process building it
/// died (killed, crashed, the machine went down) or lost the database. Each
/// gets its final log line and error in one transaction, guarded by the
/// state it leaves; no release exists for it (a release is only made in the
/// transaction that marks a build `success`). Returns the builds failed.
pub async fn reap_stale(app: &AppState, lease_secs: u64) -> Result<Vec<i64>, ApiError> {
    let lease = i64::try_from(lease_secs).unwrap_or(i64::MAX);
    let cutoff = db::format_ts(time::OffsetDateTime::now_utc() - time::Duration::seconds(lease));
    let stale = sqlx::query(
        "SELECT id, context_path FROM build WHERE status = 'building' \
         AND (heartbeat_at IS NULL OR heartbeat_at < $1) ORDER BY id",
    )
    .bind(&cutoff)
    .fetch_all(&app.db.pool)
    .await?;
    let mut failed = Vec::new();
    for row in stale {
        let id: i64 = row.try_get(0)?;
        let context: String = row.try_get(1)?;
        let error = format!(
            "the builder working on it stopped (no heartbeat for over {lease_secs} s: its process died or lost the database); nothing was released, push again"
        );
        let last = BuildLogLine {
            service: None,
            message: format!("build failed: {error}"),
            state: Some(BuildState::Failed),
            release: None,
            is_error: true,
        };
        let mut tx = app.db.begin_write().await?;
        let done = sqlx::query(
            "UPDATE build SET status = 'failed', error = $1, finished_at = $2 WHERE id = $3 \
             AND status = 'building' AND (heartbeat_at IS NULL OR heartbeat_at < $4)",
        )
        .bind(&error)
        .bind(db::now())
        .bind(id)
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            // Renewed or finished meanwhile.
            tx.rollback().await?;
            continue;
        }
        sqlx::query("INSERT INTO build_log (build, line) VALUES ($1, $2)")
            .bind(id)
            .bind(serde_json::to_string(&last).map_err(ApiError::internal)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::warn!(
            build = id,
            from = "building",
            to = "failed",
            "build's lease ran out: {error}"
        );
        // What the dead process left on this machine's disk, if it was here.
        let _ = tokio::fs::remove_file(&context).await;
        let _ = tokio::fs::remove_dir_all(work_dir(app, id)).await;
        failed.push(id);
        build_changed(app);
    }
    Ok(failed)
}

/// Runs [`reap_stale`] at start-up and then every third of the lease, in
/// every process that has a builder configured (whether it builds or only
/// queues).
pub async fn reaper(app: AppState, lease_secs: u64) {
    let every = Duration::from_secs((lease_secs / 3).max(1));
    loop {
        if let Err(e) = reap_stale(&app, lease_secs).await {
            tracing::warn!("failing builds whose lease ran out: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

fn line(message: impl Into<String>) -> BuildLogLine {
    BuildLogLine {
        service: None,
        message: message.into(),
        state: None,
        release: None,
        is_error: false,
    }
}

/// Stores log lines in one statement (a build's engine output comes in
/// bursts) and wakes this process's followers.
async fn store_lines(app: &AppState, id: i64, lines: &[BuildLogLine]) {
    if lines.is_empty() {
        return;
    }
    let values: Vec<String> = (0..lines.len())
        .map(|i| format!("($1, ${})", i + 2))
        .collect();
    let sql = format!(
        "INSERT INTO build_log (build, line) VALUES {}",
        values.join(", ")
    );
    let mut q = dyn_query(sql).bind(id);
    for l in lines {
        q = q.bind(serde_json::to_string(l).unwrap_or_default());
    }
    if let Err(e) = q.execute(&app.db.pool).await {
        tracing::warn!(build = id, "storing {} build log line(s): {e}", lines.len());
    }
    build_changed(app);
}

/// Where a build's context is unpacked; [`run_job`] removes it after the
/// outcome (and the reaper, for a build whose process died).
fn work_dir(app: &AppState, id: i64) -> PathBuf {
    builds_dir(app).join(format!("work-{id}"))
}

async fn run_job(app: &AppState, job: Job) {
    let id = job.id;
    let mut first = line("building");
    first.state = Some(BuildState::Building);
    let taken = line(format!("taken by builder {}", worker_name()));
    store_lines(app, id, &[first, taken]).await;
    let outcome = build_job(app, &job).await;
    // The outcome first (the push waits for it), the clean-up after.
    let finished = finish(app, &job, outcome).await;
    let _ = tokio::fs::remove_file(&job.context).await;
    let _ = tokio::fs::remove_dir_all(work_dir(app, id)).await;
    if let Err(e) = finished {
        tracing::error!(build = id, "finishing the build: {e}");
        // Never leave it `building`.
        let _ = sqlx::query(
            "UPDATE build SET status = 'failed', error = $1, finished_at = $2 WHERE id = $3 AND status = 'building'",
        )
        .bind(format!("internal error: {e}"))
        .bind(db::now())
        .bind(id)
        .execute(&app.db.pool)
        .await;
    }
}

async fn build_job(app: &AppState, job: &Job) -> Outcome {
    let Some(b) = app.config.builder.clone() else {
        return Outcome::Failed("this cloud has no builder".into());
    };
    let fleet = sqlx::query("SELECT uuid, device_type FROM fleet WHERE id = $1")
        .bind(job.fleet)
        .fetch_one(&app.db.pool)
        .await
        .and_then(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)));
    let (fleet_uuid, device_type) = match fleet {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("reading the fleet: {e}")),
    };
    let Some(platform) = platform_of_device_type(&device_type) else {
        return Outcome::Failed(
            resin_builder::BuildError::UnknownDeviceType(device_type).to_string(),
        );
    };
    let work = work_dir(app, job.id);
    let (ctx, dir) = (job.context.clone(), work.clone());
    let unpacked = tokio::task::spawn_blocking(move || unpack(&ctx, &dir)).await;
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Outcome::Failed(e);
        }
        Err(e) => return Outcome::Failed(format!("unpacking the context: {e}")),
    }
    let docker = match bollard::Docker::connect_with_host(&b.docker_host) {
        Ok(d) => d,
        Err(e) => {
            return Outcome::Failed(format!("the Docker engine at {}: {e}", b.docker_host));
        }
    };
    let req = resin_builder::BuildRequest {
        project_dir: work.clone(),
        registry: b.registry.clone(),
        device_registry: b.device_registry.clone(),
        namespace: fleet_uuid,
        platform: platform.into(),
        tag: format!("build-{}", job.id),
        nocache: job.nocache,
        limits: resin_builder::Limits {
            timeout: Duration::from_secs(b.timeout_secs),
            max_context_bytes: b.max_context_bytes,
        },
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BuildLogLine>();
    let writer = {
        let app = app.clone();
        let id = job.id;
        tokio::spawn(async move {
            // Whatever arrived while the last write ran goes in the next
            // one (at most 200 lines a statement).
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 200).await > 0 {
                store_lines(&app, id, &batch).await;
                batch.clear();
            }
        })
    };
    // What the build leaves in the engine is removed while the outcome is
    // recorded (or at once, when the build was dropped: cancelled, lease lost).
    let leftovers = resin_builder::Leftovers::default();
    let outcome = {
        let run = resin_builder::run_leaving(&docker, &req, &tx, &leftovers);
        tokio::pin!(run);
        let renew_every = Duration::from_secs((b.lease_secs / 3).max(1));
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                r = &mut run => break match r {
                    Ok(out) => Outcome::Built(out),
                    Err(e) => Outcome::Failed(e.to_string()),
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if cancel_requested(app, job.id).await {
                        break Outcome::Cancelled;
                    }
                    if renewed.elapsed() >= renew_every {
                        renewed = tokio::time::Instant::now();
                        if !renew_lease(app, job.id).await {
                            break Outcome::Failed(format!(
                                "build {} is no longer this worker's (its lease of {} s ran out)",
                                job.id, b.lease_secs
                            ));
                        }
                    }
                }
            }
        }
    };
    drop(tx);
    let _ = writer.await;
    tokio::spawn(async move { leftovers.remove(&docker).await });
    outcome
}

/// Unpacks a gzipped tar into `dir` (the tar crate refuses entries that
/// would land outside it).
fn unpack(ctx: &Path, dir: &Path) -> Result<(), String> {
    let f = std::fs::File::open(ctx).map_err(|e| format!("opening the build context: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    a.set_preserve_permissions(false);
    a.unpack(dir)
        .map_err(|e| format!("the build context is not a readable gzipped tar: {e}"))
}

/// Records the outcome: the final log line, the status and, for a
/// success, the release (and the fleet's new target) in one transaction.
async fn finish(app: &AppState, job: &Job, outcome: Outcome) -> Result<(), ApiError> {
    let from = BuildState::Building;
    let (to, error) = match &outcome {
        Outcome::Built(_) => (BuildState::Success, None),
        Outcome::Failed(e) => (BuildState::Failed, Some(e.clone())),
        Outcome::Cancelled => (BuildState::Cancelled, None),
    };
    if !from.can_go(to) {
        return Err(ApiError::internal(format!(
            "build cannot go from {from} to {to}"
        )));
    }
    let mut tx = app.db.begin_write().await?;
    let mut release = None;
    if let Outcome::Built(out) = &outcome {
        let id = crate::release::insert(
            &mut tx,
            job.fleet,
            &out.composition,
            out.target.clone(),
            "success",
        )
        .await?;
        if job.pin {
            sqlx::query("UPDATE fleet SET target_release = $1 WHERE id = $2")
                .bind(id)
                .bind(job.fleet)
                .execute(&mut *tx)
                .await?;
        }
        release = Some(id);
    }
    let message = match (&outcome, release) {
        (Outcome::Built(_), Some(r)) if job.pin => {
            format!("build succeeded: release {r}, now the fleet's target")
        }
        (Outcome::Built(_), Some(r)) => format!("build succeeded: release {r}"),
        (Outcome::Failed(e), _) => format!("build failed: {e}"),
        _ => "build cancelled".to_owned(),
    };
    let last = BuildLogLine {
        service: None,
        message,
        state: Some(to),
        release,
        is_error: to != BuildState::Success,
    };
    sqlx::query("INSERT INTO build_log (build, line) VALUES ($1, $2)")
        .bind(job.id)
        .bind(serde_json::to_string(&last).map_err(ApiError::internal)?)
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query(
        "UPDATE build SET status = $1, error = $2, \"release\" = $3, finished_at = $4 \
         WHERE id = $5 AND status = $6",
    )
    .bind(to.as_str())
    .bind(&error)
    .bind(release)
    .bind(db::now())
    .bind(job.id)
    .bind(from.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Err(ApiError::internal(format!(
            "build {} was no longer {from}",
            job.id
        )));
    }
    tx.commit().await?;
    build_changed(app);
    tracing::info!(build = job.id, from = %from, to = %to, ?release, "build finished");
    if release.is_some() {
        crate::cache::changed(app, crate::cache::Change::Fleet(job.fleet)).await;
    }
    Ok(())
}
