//! The OS-update history of each device (migration 0011): every change of
//! the OS-update state a device reports is kept as an `os_update_event`
//! row (state, the state before, the running and target versions, the
//! reason, the boot slot, the time), so an update that failed or was rolled
//! back stays visible after the device has gone back to idle.
//!
//! - Written by [`record`] inside the state report's transaction
//!   ([`crate::device_api::report_state`]); only a change of state makes a
//!   row (progress within a state does not), and going back to `idle` is
//!   not an event of its own.
//! - Bounded: a device keeps its last [`KEEP`] events.
//! - Read by the dashboard's device page ([`recent`]), after the caller's
//!   right to read the device was checked.

use resin_api_types::report::{OsUpdateReport, OsUpdateState};
use serde::Serialize;
use sqlx::Row;

use crate::db;

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Events kept per device; older ones are deleted when a new one comes.
pub const KEEP: i64 = 200;

/// Records `report` for `device` if its state differs from the state
/// stored for the device, which the caller then overwrites in the same
/// transaction. `os_version` is the version the same report names, if any.
/// An idle report (the common one) costs no query; another costs one
/// statement (the comparison is in its WHERE), and one more when it is an
/// event.
pub async fn record(
    tx: &mut Tx,
    device: i64,
    report: &OsUpdateReport,
    os_version: Option<&str>,
) -> Result<(), sqlx::Error> {
    if report.state == OsUpdateState::Idle {
        return Ok(());
    }
    let state = report.state.as_str();
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO os_update_event (device, state, from_state, os_version, target_version, \
         reason, boot_slot, at) \
         SELECT d.id, $1, d.os_update_state, COALESCE($2, d.os_version), $3, $4, $5, $6 \
         FROM device d WHERE d.id = $7 AND (d.os_update_state IS NULL OR d.os_update_state <> $8) \
         RETURNING id",
    )
    .bind(state)
    .bind(os_version.map(str::to_owned))
    .bind(report.target_version.clone())
    .bind(report.reason.clone())
    .bind(report.boot_slot.clone())
    .bind(db::now())
    .bind(device)
    .bind(state)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(id) = id else { return Ok(()) };
    // Past the device's bound: the oldest go (transitions are rare).
    sqlx::query(
        "DELETE FROM os_update_event WHERE device = $1 AND id < \
             (SELECT MIN(id) FROM (SELECT id FROM os_update_event WHERE device = $2 \
              ORDER BY id DESC LIMIT $3) AS newest)",
    )
    .bind(device)
    .bind(device)
    .bind(KEEP)
    .execute(&mut **tx)
    .await?;
    tracing::info!(device, event = id, state, "OS update state changed");
    Ok(())
}

/// One row of the history, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub state: String,
    pub from_state: Option<String>,
    pub os_version: Option<String>,
    pub target_version: Option<String>,
    pub reason: Option<String>,
    pub boot_slot: Option<String>,
    pub at: String,
}

/// Up to `limit` events of `device` older than event `before` (all when
/// `None`), newest first. The caller has checked the right to read the
/// device.
pub async fn recent(
    pool: &sqlx::AnyPool,
    device: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, state, from_state, os_version, target_version, reason, boot_slot, at \
         FROM os_update_event WHERE device = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(device)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Event {
                id: r.try_get(0)?,
                state: r.try_get(1)?,
                from_state: r.try_get(2)?,
                os_version: r.try_get(3)?,
                target_version: r.try_get(4)?,
                reason: r.try_get(5)?,
                boot_slot: r.try_get(6)?,
                at: r.try_get(7)?,
            })
        })
        .collect()
}
