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
pub async fn record(
    tx: &mut Tx,
    device: i64,
    report: &OsUpdateReport,
    os_version: Option<&str>,
) -> Result<(), sqlx::Error> {
    let row = sqlx::query("SELECT os_update_state, os_version FROM device WHERE id = $1")
        .bind(device)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(()) };
    let before: Option<String> = row.try_get(0)?;
    let stored_version: Option<String> = row.try_get(1)?;
    let state = report.state.as_str();
    if !is_event(before.as_deref(), report.state) {
        return Ok(());
    }
    let id: i64 = sqlx::query(
        "INSERT INTO os_update_event (device, state, from_state, os_version, target_version, \
         reason, boot_slot, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(device)
    .bind(state)
    .bind(before)
    .bind(os_version.map(str::to_owned).or(stored_version))
    .bind(report.target_version.clone())
    .bind(report.reason.clone())
    .bind(report.boot_slot.clone())
    .bind(db::now())
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
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

/// Whether a report of `now` after the stored state `before` is an event:
/// a change of state other than back to idle.
pub fn is_event(before: Option<&str>, now: OsUpdateState) -> bool {
    now != OsUpdateState::Idle && before != Some(now.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_of_state_are_events() {
        use OsUpdateState::*;
        assert!(is_event(None, Downloading));
        assert!(is_event(Some("idle"), Downloading));
        assert!(!is_event(Some("downloading"), Downloading), "progress only");
        assert!(is_event(Some("downloading"), Installing));
        assert!(is_event(Some("rebooting"), RolledBack));
        assert!(!is_event(Some("committed"), Idle), "back to idle");
        assert!(!is_event(None, Idle));
    }
}
