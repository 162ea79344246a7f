//! Device logs: the NDJSON log stream devices post, bounded per-device
//! retention, reading them back and following them live (Server-Sent Events).

use std::convert::Infallible;
use std::io::Read;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use resin_api_types::logs::parse_ndjson;
use resin_api_types::LogLine;
use sqlx::Row;
use tokio::sync::broadcast;

use crate::auth::{self, Actor};
use crate::error::{ApiError, ApiResult};
use crate::{perms, AppState};

/// A stored line, as broadcast to followers.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub device: i64,
    pub id: i64,
    pub line: LogLine,
}

/// The most one log line's message may be (bytes).
const MAX_MESSAGE: usize = 64 * 1024;

/// The most a decompressed log batch may be.
const MAX_BATCH: u64 = 16 * 1024 * 1024;

/// `POST /device/v2/{uuid}/log-stream`
pub async fn log_stream(
    State(app): State<AppState>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let actor = auth::resolve(&app.db, &headers).await?;
    let device = perms::device_may_access(&actor, &uuid)?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let raw = match gzip {
        Some(true) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(MAX_BATCH + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::bad_request(format!("gzip body: {e}")))?;
            if out.len() as u64 > MAX_BATCH {
                return Err(ApiError::bad_request("log batch larger than 16 MiB"));
            }
            out
        }
        Some(false) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "Content-Encoding must be gzip or absent",
            ))
        }
        None => body.to_vec(),
    };
    let text = String::from_utf8(raw)
        .map_err(|e| ApiError::bad_request(format!("log batch is not UTF-8: {e}")))?;
    let lines = parse_ndjson(&text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for l in &lines {
        crate::device_api::check_len("message", Some(&l.message), MAX_MESSAGE)?;
        crate::device_api::check_len(
            "service",
            l.service.as_deref(),
            crate::device_api::caps::NAME,
        )?;
    }
    let stored = store(&app, device, lines).await?;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({ "stored": stored })),
    )
        .into_response())
}

/// Stores lines in one transaction, trims to the retention, broadcasts.
pub async fn store(app: &AppState, device: i64, lines: Vec<LogLine>) -> ApiResult<usize> {
    if lines.is_empty() {
        return Ok(0);
    }
    let mut tx = app.db.begin_write().await?;
    let mut events = Vec::with_capacity(lines.len());
    for line in lines {
        let row = sqlx::query(
            "INSERT INTO device_log (device, timestamp, service, message, is_stderr, is_system) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(device)
        .bind(line.timestamp)
        .bind(line.service.clone())
        .bind(&line.message)
        .bind(line.is_stderr)
        .bind(line.is_system)
        .fetch_one(&mut *tx)
        .await?;
        events.push(LogEvent {
            device,
            id: row.try_get(0)?,
            line,
        });
    }
    let keep = i64::try_from(app.config.log_retention).unwrap_or(i64::MAX);
    sqlx::query(
        "DELETE FROM device_log WHERE device = $1 AND id <= \
         (SELECT id FROM device_log WHERE device = $2 ORDER BY id DESC LIMIT 1 OFFSET $3)",
    )
    .bind(device)
    .bind(device)
    .bind(keep)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let n = events.len();
    if app.db.dialect == crate::db::Dialect::Postgres {
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            // Followers on the other replicas read these lines back.
            crate::cache::notify(app, &format!("l {device} {} {}", first.id, last.id)).await;
        }
    }
    for e in events {
        // No followers is fine.
        let _ = app.logs.send(e);
    }
    Ok(n)
}

/// Another replica stored lines `first..=last` of a device (`rest` is
/// `<device> <first> <last>`): read them and hand them to this replica's
/// followers, if it has any.
pub async fn remote_lines(app: &AppState, rest: &str) {
    let nums: Vec<i64> = rest.split(' ').filter_map(|n| n.parse().ok()).collect();
    let [device, first, last] = nums[..] else {
        tracing::warn!("unknown log notice {rest:?}");
        return;
    };
    if app.logs.receiver_count() == 0 {
        return;
    }
    let rows = sqlx::query(
        "SELECT id, timestamp, service, message, \
         CASE WHEN is_stderr THEN 1 ELSE 0 END, CASE WHEN is_system THEN 1 ELSE 0 END \
         FROM device_log WHERE device = $1 AND id >= $2 AND id <= $3 ORDER BY id",
    )
    .bind(device)
    .bind(first)
    .bind(last)
    .fetch_all(&app.db.pool)
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(device, "reading another replica's log lines: {e}");
            return;
        }
    };
    for r in &rows {
        let event = (|| {
            Ok::<_, sqlx::Error>(LogEvent {
                device,
                id: r.try_get(0)?,
                line: LogLine {
                    timestamp: r.try_get(1)?,
                    service: r.try_get(2)?,
                    message: r.try_get(3)?,
                    is_stderr: r.try_get::<i64, _>(4)? != 0,
                    is_system: r.try_get::<i64, _>(5)? != 0,
                },
            })
        })();
        match event {
            Ok(e) => {
                let _ = app.logs.send(e);
            }
            Err(e) => tracing::warn!(device, "another replica's log line: {e}"),
        }
    }
}

/// The stored lines of a device, oldest first, with their ids.
async fn read(app: &AppState, device: i64, limit: i64) -> ApiResult<Vec<(i64, LogLine)>> {
    let rows = sqlx::query(
        "SELECT id, timestamp, service, message, \
         CASE WHEN is_stderr THEN 1 ELSE 0 END, CASE WHEN is_system THEN 1 ELSE 0 END \
         FROM device_log WHERE device = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(device)
    .bind(limit)
    .fetch_all(&app.db.pool)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>(0)?,
                LogLine {
                    timestamp: r.try_get(1)?,
                    service: r.try_get(2)?,
                    message: r.try_get(3)?,
                    is_stderr: r.try_get::<i64, _>(4)? != 0,
                    is_system: r.try_get::<i64, _>(5)? != 0,
                },
            ))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

/// `GET /v1/device(<id>)/logs[?follow=true][&count=N]`
pub async fn get_logs(
    app: &AppState,
    actor: &Actor,
    device: i64,
    query: Option<&str>,
) -> ApiResult<Response> {
    perms::require_device(&app.db, actor, device, perms::Access::Read).await?;
    let mut follow = false;
    let mut count = i64::try_from(app.config.log_retention).unwrap_or(i64::MAX);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "follow" => {
                follow = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::bad_request("follow must be true or false")),
                }
            }
            "count" => {
                count =
                    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        ApiError::bad_request("count must be a non-negative integer")
                    })?
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query option {k:?} (follow, count)"
                )))
            }
        }
    }
    if !follow {
        let lines: Vec<LogLine> = read(app, device, count)
            .await?
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        return Ok(Json(serde_json::json!({ "value": lines })).into_response());
    }
    // Subscribe before reading the backlog so no line falls in between.
    let rx = app.logs.subscribe();
    let backlog = read(app, device, count).await?;
    let last = backlog.last().map(|(id, _)| *id).unwrap_or(0);
    let first = stream::iter(backlog.into_iter().map(|(_, l)| l));
    let live = stream::unfold((rx, last), move |(mut rx, last)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.device == device && e.id > last => {
                    let id = e.id;
                    return Some((e.line, (rx, id)));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(device, skipped = n, "log follower lagged");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(sse(first.chain(live)).into_response())
}

fn sse(
    lines: impl Stream<Item = LogLine> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events =
        lines.map(|l| Ok(Event::default().data(serde_json::to_string(&l).unwrap_or_default())));
    Sse::new(events).keep_alive(KeepAlive::default())
}
