//! Device actions and device moves (api-types `actions`):
//!
//! - `POST /v1/device({id})/actions` asks for a reboot or a restart (of all
//!   services, or of one); `GET /v1/device({id})/actions` lists them, newest
//!   first (also readable as the `device_action` resource).
//! - The open actions (pending, started) are kept as JSON in `device.action`
//!   as well, written in the same transaction as `device_action`, so the
//!   target state reads them with the device row (no query more on a poll)
//!   and every change invalidates the device's cached target
//!   ([`cache::changed`], which on PostgreSQL also reaches other replicas).
//! - The supervisor reports outcomes in its state report
//!   ([`apply_outcomes`]); a done or failed action leaves the target state.
//! - `POST /v1/device({id})/move` moves a device to another fleet of the
//!   same owner and device type; its target follows the new fleet.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use resin_api_types::actions::{
    ActionInfo, ActionKind, ActionOutcome, ActionRequest, ActionState, DeviceAction, MoveRequest,
    MoveResult,
};
use sqlx::Row;

use crate::auth::Actor;
use crate::cache::{self, Change};
use crate::db::{self, Dialect};
use crate::error::{ApiError, ApiResult};
use crate::{perms, AppState};

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// The most open actions one device may have.
pub const MAX_OPEN: i64 = 16;
/// The longest result message kept from a device (bytes).
pub const MAX_RESULT: usize = 1024;

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The device row the caller may change (`lock`: for update) or read.
async fn device_row(
    tx: &mut Tx,
    app: &AppState,
    actor: &Actor,
    id: i64,
    write: bool,
) -> ApiResult<sqlx::any::AnyRow> {
    let scope = if write {
        perms::write_scope(actor, "device", "d")
    } else {
        perms::read_scope(actor, "device", "d")
    }
    .to_sql();
    let lock = if write && app.db.dialect == Dialect::Postgres {
        " FOR UPDATE OF d"
    } else {
        ""
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT d.id, d.fleet, COALESCE(d.device_type, f.device_type), f.owner, \
         COALESCE(d.pinned_release, d.rollout_release, f.target_release) \
         FROM device d JOIN fleet f ON f.id = d.fleet WHERE d.id = $1 AND {scope}{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("device({id}) does not exist")))
}

fn info(r: &sqlx::any::AnyRow) -> ApiResult<ActionInfo> {
    let action: String = r.try_get(2)?;
    let state: String = r.try_get(4)?;
    Ok(ActionInfo {
        id: r.try_get(0)?,
        device: r.try_get(1)?,
        action: serde_json::from_value(serde_json::Value::String(action))
            .unwrap_or(ActionKind::Unknown),
        service: r.try_get(3)?,
        state: ActionState::parse(&state)
            .ok_or_else(|| ApiError::internal(format!("device_action state {state:?}")))?,
        result: r.try_get(5)?,
        requested_by: r.try_get(6)?,
        requested_at: r.try_get(7)?,
        updated_at: r.try_get(8)?,
    })
}

const COLS: &str =
    "id, device, action, service, state, result, requested_by, requested_at, updated_at";

/// Writes the device's open actions into `device.action` (NULL when none).
async fn refresh_open(tx: &mut Tx, device: i64) -> ApiResult<()> {
    let rows = sqlx::query(
        "SELECT id, action, service FROM device_action \
         WHERE device = $1 AND state IN ('pending', 'started') ORDER BY id",
    )
    .bind(device)
    .fetch_all(&mut **tx)
    .await?;
    let mut open = Vec::with_capacity(rows.len());
    for r in &rows {
        let action: String = r.try_get(1)?;
        open.push(DeviceAction {
            id: r.try_get(0)?,
            action: serde_json::from_value(serde_json::Value::String(action))
                .unwrap_or(ActionKind::Unknown),
            service: r.try_get(2)?,
        });
    }
    let json = if open.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&open).map_err(ApiError::internal)?)
    };
    sqlx::query("UPDATE device SET action = $1 WHERE id = $2")
        .bind(json)
        .bind(device)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The open actions stored in `device.action` (the target state's part).
pub fn open_actions(json: Option<&str>) -> Vec<DeviceAction> {
    match json {
        None | Some("") => Vec::new(),
        Some(j) => serde_json::from_str(j).unwrap_or_else(|e| {
            tracing::warn!("ignoring an unreadable device.action: {e}");
            Vec::new()
        }),
    }
}

/// `POST /v1/device({id})/actions`: 201 with the new action.
pub async fn create(app: &AppState, actor: &Actor, id: i64, body: &[u8]) -> ApiResult<Response> {
    let uid = perms::may_change(actor)?;
    let req: ActionRequest = parse_json(body)?;
    match (req.action, &req.service) {
        (ActionKind::Unknown, _) => {
            return Err(ApiError::bad_request_field(
                "action",
                "action must be \"reboot\" or \"restart\"",
            ))
        }
        (ActionKind::Reboot, Some(_)) => {
            return Err(ApiError::bad_request_field(
                "service",
                "a reboot takes no service (it restarts the whole device)",
            ))
        }
        (ActionKind::Restart, Some(s)) if s.is_empty() || s.len() > 255 => {
            return Err(ApiError::bad_request_field(
                "service",
                "service must be a service name of 1 to 255 bytes",
            ))
        }
        _ => {}
    }
    let mut tx = app.db.begin_write().await?;
    let dev = device_row(&mut tx, app, actor, id, true).await?;
    let release: Option<i64> = dev.try_get(4)?;
    if let Some(service) = &req.service {
        let known = match release {
            Some(rel) => sqlx::query("SELECT 1 FROM service WHERE \"release\" = $1 AND name = $2")
                .bind(rel)
                .bind(service)
                .fetch_optional(&mut *tx)
                .await?
                .is_some(),
            None => false,
        };
        if !known {
            return Err(ApiError::bad_request_field(
                "service",
                format!(
                    "device({id})'s target release has no service named {service:?} \
                     (see `resin device show`)"
                ),
            ));
        }
    }
    let open: i64 = sqlx::query(
        "SELECT COUNT(*) FROM device_action WHERE device = $1 AND state IN ('pending', 'started')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    if open >= MAX_OPEN {
        return Err(ApiError::conflict(format!(
            "device({id}) already has {open} open actions; wait until it carries them out"
        )));
    }
    let now = db::now();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO device_action (device, action, service, state, requested_by, requested_at, \
         updated_at) VALUES ($1, $2, $3, 'pending', $4, $5, $6) RETURNING {COLS}"
    )))
    .bind(id)
    .bind(req.action.as_str())
    .bind(req.service.clone())
    .bind(uid)
    .bind(&now)
    .bind(&now)
    .fetch_one(&mut *tx)
    .await?;
    let created = info(&row)?;
    refresh_open(&mut tx, id).await?;
    tx.commit().await?;
    cache::changed(app, Change::Device(id)).await;
    tracing::info!(device = id, action = created.id, kind = req.action.as_str(), service = ?req.service, "device action requested");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/device({id})/actions`: `{"value": [ActionInfo…]}`, newest first.
pub async fn list(app: &AppState, actor: &Actor, id: i64) -> ApiResult<Response> {
    let mut tx = app.db.pool.begin().await?;
    device_row(&mut tx, app, actor, id, false).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM device_action WHERE device = $1 ORDER BY id DESC LIMIT 100"
    )))
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let value = rows.iter().map(info).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(serde_json::json!({ "value": value })).into_response())
}

/// Applies a device's reported outcomes inside the report's transaction.
/// Returns whether the device's target state changed (an action became
/// done or failed), so the caller invalidates its cache after the commit.
/// Outcomes of actions that are not the device's, or already final, are
/// ignored.
pub async fn apply_outcomes(
    tx: &mut Tx,
    device: i64,
    outcomes: &[ActionOutcome],
) -> ApiResult<bool> {
    let mut target_changed = false;
    for o in outcomes.iter().take(MAX_OPEN as usize * 2) {
        if o.state == ActionState::Pending {
            continue;
        }
        let mut msg = o.message.clone();
        if let Some(m) = &mut msg {
            if m.len() > MAX_RESULT {
                let mut cut = MAX_RESULT;
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
            }
        }
        // pending → started/done/failed, started → done/failed; never back.
        let from: &[&str] = if o.state == ActionState::Started {
            &["pending"]
        } else {
            &["pending", "started"]
        };
        let r = sqlx::query(
            "UPDATE device_action SET state = $1, result = $2, updated_at = $3 \
             WHERE id = $4 AND device = $5 AND state IN ($6, $7)",
        )
        .bind(o.state.as_str())
        .bind(msg)
        .bind(db::now())
        .bind(o.id)
        .bind(device)
        .bind(from[0])
        .bind(from.get(1).copied().unwrap_or(from[0]))
        .execute(&mut **tx)
        .await?;
        if r.rows_affected() > 0 {
            tracing::info!(device, action = o.id, state = o.state.as_str(), message = ?o.message, "device action reported");
            if o.state.is_final() {
                target_changed = true;
            }
        }
    }
    if target_changed {
        refresh_open(tx, device).await?;
    }
    Ok(target_changed)
}

/// `POST /v1/device({id})/move`: to another fleet of the same owner and
/// device type (409 otherwise). The pin and any rollout assignment are
/// dropped (they name the old fleet's releases); the device then follows the
/// new fleet's target (and its rollout, if one runs).
pub async fn move_device(
    app: &AppState,
    actor: &Actor,
    id: i64,
    body: &[u8],
) -> ApiResult<Json<MoveResult>> {
    perms::may_change(actor)?;
    let req: MoveRequest = parse_json(body)?;
    let mut tx = app.db.begin_write().await?;
    let dev = device_row(&mut tx, app, actor, id, true).await?;
    let from: i64 = dev.try_get(1)?;
    let device_type: String = dev.try_get(2)?;
    let owner: i64 = dev.try_get(3)?;
    let scope = perms::write_scope(actor, "fleet", "f").to_sql();
    let fleet = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT f.owner, f.device_type FROM fleet f WHERE f.id = $1 AND {scope}"
    )))
    .bind(req.fleet)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| {
        ApiError::not_found(format!("fleet({}) does not exist", req.fleet)).with_target("fleet")
    })?;
    let (to_owner, to_type): (i64, String) = (fleet.try_get(0)?, fleet.try_get(1)?);
    if to_owner != owner {
        return Err(ApiError::conflict_field(
            "fleet",
            format!("fleet({}) has another owner than device({id})", req.fleet),
        ));
    }
    if to_type != device_type {
        return Err(ApiError::conflict_field(
            "fleet",
            format!(
                "fleet({}) is for device type {to_type:?}, device({id}) is a {device_type:?}; \
                 a device moves only to a fleet of its own device type",
                req.fleet
            ),
        ));
    }
    if req.fleet != from {
        sqlx::query(
            "UPDATE device SET fleet = $1, pinned_release = NULL, rollout_release = NULL, \
             rollout_os_version = NULL WHERE id = $2",
        )
        .bind(req.fleet)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // Out of the old fleet's rollout (its membership and counts).
        sqlx::query(
            "DELETE FROM rollout_device WHERE device = $1 AND rollout IN \
             (SELECT id FROM rollout WHERE fleet = $2)",
        )
        .bind(id)
        .bind(from)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if req.fleet != from {
        cache::changed(app, Change::Device(id)).await;
        tracing::info!(device = id, from, to = req.fleet, "device moved");
    }
    Ok(Json(MoveResult {
        device: id,
        from_fleet: from,
        fleet: req.fleet,
    }))
}
