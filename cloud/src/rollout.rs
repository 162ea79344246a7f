//! Staged rollouts: a fleet goes to a release (or an OS version) in waves,
//! and the evaluator halts the rollout by itself when a wave goes bad.
//!
//! The state machine (every transition is a `rollout_event` row with its
//! reason and the wave's counts):
//!
//! ```text
//!  draft ──start──▶ running ──(last wave met)──▶ completed
//!    │               │  ▲ │
//!  cancel     pause/ │  │ └──halt / error threshold──▶ halted
//!    │  (wave pause_after)│ resume                      │  ▲
//!    ▼               ▼  │                     resume◀───┘  │ halt
//!  cancelled ◀─rollback─ paused ───────────────────────────┘
//!       ▲──────────────────rollback (from running, paused, halted)
//! ```
//!
//! Membership is materialised in `rollout_device` when the rollout starts
//! (and for devices that join the fleet later): a percentage wave takes a
//! device when a hash of the rollout id and the device uuid falls below its
//! cumulative share, so a restart never reshuffles. What a device was
//! assigned is written onto its own row (`device.rollout_release`,
//! `device.rollout_os_version`), which the target state reads in the query it
//! already makes: the poll path has no query more and never touches the
//! rollout tables. Only the API's write path and the evaluator do.
//!
//! The evaluator ([`run_due`]) claims each due running rollout in a
//! transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one
//! writer) and moves `next_eval_at` on, so with several replicas exactly one
//! evaluates each pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use resin_api_types::rollout::{
    CreateRollout, RolloutAction, RolloutEvent, RolloutProgress, RolloutState, Wave, WaveCounts,
    WaveProgress,
};
use resin_api_types::{AppReport, ServiceStatus};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::auth::Actor;
use crate::cache::{self, Change};
use crate::db::{self, Db, Dialect};
use crate::error::{ApiError, ApiResult};
use crate::perms;
use crate::AppState;

/// Observations of a service exited or dead on the new release, within the
/// soak, that make a crash loop.
pub const CRASH_LOOP_OBSERVATIONS: i64 = 2;
/// The most waves a rollout may have.
pub const MAX_WAVES: usize = 20;
const MAX_SOAK_SECS: u64 = 7 * 24 * 3600;
const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// Hash buckets: a percentage wave of p % takes buckets below p × 100.
const BUCKETS: u64 = 10_000;
/// Rows per spliced `IN (...)` list or multi-row insert.
const CHUNK: usize = 500;

/// Checks a rollout's waves and thresholds; the message names the field.
pub fn validate(spec: &CreateRollout) -> ApiResult<()> {
    let bad = |field: &str, msg: String| Err(ApiError::bad_request_field(field, msg));
    match (&spec.release, &spec.os_version) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => {
            return bad(
                "release",
                "a rollout takes exactly one of release and os_version".into(),
            )
        }
    }
    if let Some(n) = &spec.name {
        if n.len() > 128 {
            return bad("name", "name is longer than 128 bytes".into());
        }
    }
    if spec.waves.is_empty() || spec.waves.len() > MAX_WAVES {
        return bad(
            "waves",
            format!(
                "a rollout has 1 to {MAX_WAVES} waves, not {}",
                spec.waves.len()
            ),
        );
    }
    let mut last_percent = 0;
    for (i, w) in spec.waves.iter().enumerate() {
        let field = format!("waves[{i}]");
        match (&w.percent, &w.tags) {
            (Some(p), None) => {
                if !(1..=100).contains(p) {
                    return bad(&field, format!("{field}.percent must be 1 to 100, not {p}"));
                }
                if *p <= last_percent {
                    return bad(
                        &field,
                        format!(
                            "{field}.percent is cumulative and must grow: {p} after {last_percent}"
                        ),
                    );
                }
                last_percent = *p;
            }
            (None, Some(tags)) if !tags.is_empty() => {}
            _ => {
                return bad(
                    &field,
                    format!("{field} takes exactly one of percent and tags (non-empty)"),
                )
            }
        }
        if w.soak_secs > MAX_SOAK_SECS {
            return bad(
                &field,
                format!(
                    "{field}.soak_secs is at most {MAX_SOAK_SECS}, not {}",
                    w.soak_secs
                ),
            );
        }
        if w.timeout_secs <= w.soak_secs || w.timeout_secs > MAX_TIMEOUT_SECS {
            return bad(
                &field,
                format!(
                    "{field}.timeout_secs must be more than soak_secs ({}) and at most {MAX_TIMEOUT_SECS}, not {}",
                    w.soak_secs, w.timeout_secs
                ),
            );
        }
        if !(1..=100).contains(&w.success_percent) {
            return bad(
                &field,
                format!(
                    "{field}.success_percent must be 1 to 100, not {}",
                    w.success_percent
                ),
            );
        }
        if w.max_failure_percent > 100 {
            return bad(
                &field,
                format!(
                    "{field}.max_failure_percent must be 0 to 100, not {}",
                    w.max_failure_percent
                ),
            );
        }
        if w.min_sample == 0 {
            return bad(&field, format!("{field}.min_sample must be at least 1"));
        }
    }
    if last_percent != 100 {
        return bad(
            "waves",
            format!(
                "the waves must reach 100 %: the last percentage wave is {last_percent} % \
                 (end with {{\"percent\": 100}})"
            ),
        );
    }
    Ok(())
}

/// The device's hash bucket in rollout `rollout` (0..10000).
pub fn bucket(rollout: i64, uuid: &str) -> u64 {
    let h = Sha256::digest(format!("{rollout}:{uuid}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b) % BUCKETS
}

/// The first wave that takes the device: a tag wave whose tags it all has,
/// or a percentage wave above its bucket. The last wave is 100 %, so every
/// device has one.
pub fn wave_of(
    waves: &[Wave],
    rollout: i64,
    uuid: &str,
    tags: Option<&BTreeMap<String, String>>,
) -> usize {
    let b = bucket(rollout, uuid);
    for (i, w) in waves.iter().enumerate() {
        if let Some(p) = w.percent {
            if b < u64::from(p) * (BUCKETS / 100) {
                return i;
            }
        } else if let (Some(want), Some(have)) = (&w.tags, tags) {
            if want.iter().all(|(k, v)| have.get(k) == Some(v)) {
                return i;
            }
        }
    }
    waves.len().saturating_sub(1)
}

/// What a rollout rolls out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A release: its id and uuid.
    Release(i64, String),
    Os(String),
}

/// The device as the evaluator reads it.
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    pub apps: Option<String>,
    pub os_version: Option<String>,
    pub os_update_state: Option<String>,
}

/// What one look at a device says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obs {
    /// Not there yet (downloading, installing, starting, not reported).
    Waiting,
    /// On the new release/OS with every service running.
    Running,
    /// A service of the new release exited or died.
    Crashed,
    /// Failed for good: the reason.
    Failed(&'static str),
}

fn services_state(apps: &BTreeMap<String, AppReport>, release_uuid: Option<&str>) -> Obs {
    let mut any = false;
    let mut all_running = true;
    for app in apps.values() {
        for s in app.services.values() {
            if release_uuid.is_some_and(|r| s.release_uuid != r) {
                all_running = false;
                continue;
            }
            any = true;
            match s.status {
                ServiceStatus::Exited | ServiceStatus::Dead => return Obs::Crashed,
                ServiceStatus::Running => {}
                _ => all_running = false,
            }
        }
    }
    match release_uuid {
        // A release rollout: on the new release when every service is.
        Some(r) => {
            let on_new = if any {
                all_running
            } else {
                // A release without services: the app names it.
                apps.values()
                    .any(|a| a.release_uuid.as_deref() == Some(r) && a.services.is_empty())
            };
            if on_new {
                Obs::Running
            } else {
                Obs::Waiting
            }
        }
        // An OS rollout: whatever runs must be running.
        None if all_running => Obs::Running,
        None => Obs::Waiting,
    }
}

/// Health of one device against the rollout's target, from what it reports.
pub fn observe(target: &Target, d: &DeviceView) -> Obs {
    let apps: BTreeMap<String, AppReport> = match d.apps.as_deref() {
        Some(j) => serde_json::from_str(j).unwrap_or_default(),
        None => BTreeMap::new(),
    };
    match target {
        Target::Release(_, uuid) => services_state(&apps, Some(uuid)),
        Target::Os(version) => {
            let on_new = d.os_version.as_deref() == Some(version.as_str());
            match d.os_update_state.as_deref() {
                Some("rolled-back") if !on_new => return Obs::Failed("os rollback"),
                Some("failed") if !on_new => return Obs::Failed("install error"),
                _ => {}
            }
            let settled = matches!(
                d.os_update_state.as_deref(),
                None | Some("idle" | "committed")
            );
            if on_new && settled {
                services_state(&apps, None)
            } else {
                Obs::Waiting
            }
        }
    }
}

/// One member's row, and what a look at it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Running: soak from now.
    StartSoak,
    /// Running no more (not crashed): the soak starts again.
    ResetSoak,
    /// Crashed once more (not yet a loop).
    Crash,
    Healthy,
    Failed(&'static str),
    Excluded,
}

/// The member's next step. `running_since`, `assigned_at` and `now` are ms.
pub fn step(
    obs: Obs,
    w: &Wave,
    assigned_at: i64,
    running_since: Option<i64>,
    restarts: i64,
    now: i64,
) -> Step {
    let soak = i64::try_from(w.soak_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let timeout = i64::try_from(w.timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let s = match obs {
        Obs::Failed(r) => return Step::Failed(r),
        Obs::Crashed if restarts + 1 >= CRASH_LOOP_OBSERVATIONS => {
            return Step::Failed("crash loop")
        }
        Obs::Crashed => Step::Crash,
        Obs::Running => match running_since {
            Some(t) if now - t >= soak => return Step::Healthy,
            Some(_) => Step::Nothing,
            None if soak == 0 => return Step::Healthy,
            None => Step::StartSoak,
        },
        Obs::Waiting if running_since.is_some() => Step::ResetSoak,
        Obs::Waiting => Step::Nothing,
    };
    if now - assigned_at > timeout {
        return Step::Failed("timeout");
    }
    s
}

/// The transitions a user may ask for: (action, from states, to state).
pub fn transition(action: &str, from: RolloutState) -> Result<RolloutState, String> {
    use RolloutState::*;
    let (allowed, to): (&[RolloutState], RolloutState) = match action {
        "start" => (&[Draft], Running),
        "pause" => (&[Running], Paused),
        "resume" => (&[Paused, Halted], Running),
        "halt" => (&[Running, Paused], Halted),
        "rollback" => (&[Running, Paused, Halted], Cancelled),
        "cancel" => (&[Draft], Cancelled),
        other => {
            return Err(format!(
                "no action {other:?}: use start, pause, resume, halt, rollback or cancel"
            ))
        }
    };
    if allowed.contains(&from) {
        Ok(to)
    } else {
        let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        Err(format!(
            "cannot {action} a {from} rollout ({action} is allowed from {})",
            names.join(", ")
        ))
    }
}

/// Why the wave halts the rollout, if it does.
pub fn tripped(w: &Wave, c: &WaveCounts) -> Option<String> {
    let decided = c.healthy + c.failed;
    if let Some(max) = w.max_failures {
        if c.failed > max {
            return Some(format!(
                "{} devices failed, more than max_failures {max}",
                c.failed
            ));
        }
    }
    if decided >= w.min_sample && c.failed * 100 > u64::from(w.max_failure_percent) * decided {
        return Some(format!(
            "{} of {decided} decided devices failed ({}%), more than max_failure_percent {} \
             (min_sample {})",
            c.failed,
            c.failed * 100 / decided.max(1),
            w.max_failure_percent,
            w.min_sample
        ));
    }
    None
}

/// Has the wave met its success threshold?
pub fn succeeded(w: &Wave, c: &WaveCounts) -> bool {
    let members = c.size.saturating_sub(c.excluded);
    c.healthy * 100 >= u64::from(w.success_percent) * members
}

// ---------------------------------------------------------------------------
// Database side.

type Tx = sqlx::Transaction<'static, sqlx::Any>;

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default(),
    )
    .unwrap_or(i64::MAX)
}

struct RolloutRow {
    id: i64,
    fleet: i64,
    name: String,
    release: Option<i64>,
    os_version: Option<String>,
    waves: Vec<Wave>,
    state: RolloutState,
    current_wave: usize,
}

const ROW_COLS: &str =
    "r.id, r.fleet, r.name, r.\"release\", r.os_version, r.waves, r.state, r.current_wave";

fn read_row(r: &sqlx::any::AnyRow) -> ApiResult<RolloutRow> {
    let waves: String = r.try_get(5)?;
    let state: String = r.try_get(6)?;
    let cw: i64 = r.try_get(7)?;
    Ok(RolloutRow {
        id: r.try_get(0)?,
        fleet: r.try_get(1)?,
        name: r.try_get(2)?,
        release: r.try_get(3)?,
        os_version: r.try_get(4)?,
        waves: serde_json::from_str(&waves).map_err(ApiError::internal)?,
        state: RolloutState::parse(&state)
            .ok_or_else(|| ApiError::internal(format!("rollout state {state:?}")))?,
        current_wave: usize::try_from(cw).unwrap_or_default(),
    })
}

/// The rollout's target, with the release uuid.
async fn target_of(tx: &mut Tx, r: &RolloutRow) -> ApiResult<Target> {
    match (&r.release, &r.os_version) {
        (Some(rel), _) => {
            let uuid: String = sqlx::query("SELECT uuid FROM \"release\" WHERE id = $1")
                .bind(*rel)
                .fetch_one(&mut **tx)
                .await?
                .try_get(0)?;
            Ok(Target::Release(*rel, uuid))
        }
        (None, Some(v)) => Ok(Target::Os(v.clone())),
        (None, None) => Err(ApiError::internal(format!(
            "rollout {} has no release and no OS version",
            r.id
        ))),
    }
}

/// The device filter of devices a rollout of this kind may take: not pinned.
fn eligible_sql(target: &Target) -> &'static str {
    match target {
        Target::Release(..) => "d.pinned_release IS NULL",
        Target::Os(_) => "d.target_os_version IS NULL",
    }
}

/// Adds the fleet's devices that have no membership yet (all of them when
/// the rollout starts; later, devices that joined the fleet).
async fn materialise(tx: &mut Tx, r: &RolloutRow, target: &Target) -> ApiResult<u64> {
    let sql = format!(
        "SELECT d.id, d.uuid FROM device d WHERE d.fleet = $1 AND {} AND NOT EXISTS \
         (SELECT 1 FROM rollout_device rd WHERE rd.rollout = $2 AND rd.device = d.id)",
        eligible_sql(target)
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(r.fleet)
        .bind(r.id)
        .fetch_all(&mut **tx)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tags: HashMap<i64, BTreeMap<String, String>> = HashMap::new();
    if r.waves.iter().any(|w| w.tags.is_some()) {
        for t in sqlx::query(
            "SELECT dt.device, dt.tag_key, dt.value FROM device_tag dt \
             JOIN device d ON d.id = dt.device WHERE d.fleet = $1",
        )
        .bind(r.fleet)
        .fetch_all(&mut **tx)
        .await?
        {
            tags.entry(t.try_get(0)?)
                .or_default()
                .insert(t.try_get(1)?, t.try_get(2)?);
        }
    }
    let mut values = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let uuid: String = row.try_get(1)?;
        let w = wave_of(&r.waves, r.id, &uuid, tags.get(&id));
        // Integers only: safe to splice.
        values.push(format!("({}, {id}, {w}, 'pending')", r.id));
    }
    for chunk in values.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO rollout_device (rollout, device, wave, state) VALUES {}",
            chunk.join(", ")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await?;
    }
    Ok(rows.len() as u64)
}

/// Gives the new release/OS to the pending members of waves up to the
/// current one.
async fn assign(tx: &mut Tx, r: &RolloutRow, target: &Target, now: i64) -> ApiResult<u64> {
    let wave = i64::try_from(r.current_wave).unwrap_or(i64::MAX);
    let members =
        "SELECT device FROM rollout_device WHERE rollout = $2 AND state = 'pending' AND wave <= $3";
    let res = match target {
        Target::Release(rel, _) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE device SET rollout_release = $1 WHERE id IN ({members})"
            )))
            .bind(*rel)
            .bind(r.id)
            .bind(wave)
            .execute(&mut **tx)
            .await?
        }
        Target::Os(v) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE device SET rollout_os_version = $1 WHERE id IN ({members})"
            )))
            .bind(v.clone())
            .bind(r.id)
            .bind(wave)
            .execute(&mut **tx)
            .await?
        }
    };
    sqlx::query(
        "UPDATE rollout_device SET state = 'assigned', assigned_at = $1 \
         WHERE rollout = $2 AND state = 'pending' AND wave <= $3",
    )
    .bind(now)
    .bind(r.id)
    .bind(wave)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected())
}

/// Counts by wave.
async fn counts(tx: &mut Tx, r: &RolloutRow) -> ApiResult<Vec<WaveCounts>> {
    let mut out = vec![WaveCounts::default(); r.waves.len()];
    for row in sqlx::query(
        "SELECT wave, state, COUNT(*) FROM rollout_device WHERE rollout = $1 GROUP BY wave, state",
    )
    .bind(r.id)
    .fetch_all(&mut **tx)
    .await?
    {
        let w: i64 = row.try_get(0)?;
        let state: String = row.try_get(1)?;
        let n: i64 = row.try_get(2)?;
        let n = u64::try_from(n).unwrap_or_default();
        let Some(c) = usize::try_from(w).ok().and_then(|w| out.get_mut(w)) else {
            continue;
        };
        c.size += n;
        match state.as_str() {
            "pending" => c.pending += n,
            "assigned" => c.in_progress += n,
            "healthy" => c.healthy += n,
            "failed" => c.failed += n,
            "reverted" => c.reverted += n,
            _ => c.excluded += n,
        }
    }
    Ok(out)
}

/// Failure reasons of a wave, `timeout: 3, crash loop: 30`.
async fn failure_reasons(tx: &mut Tx, r: &RolloutRow, wave: usize) -> ApiResult<String> {
    let rows = sqlx::query(
        "SELECT reason, COUNT(*) FROM rollout_device WHERE rollout = $1 AND wave = $2 \
         AND state = 'failed' GROUP BY reason ORDER BY reason",
    )
    .bind(r.id)
    .bind(i64::try_from(wave).unwrap_or_default())
    .fetch_all(&mut **tx)
    .await?;
    let mut parts = Vec::new();
    for row in rows {
        let reason: Option<String> = row.try_get(0)?;
        let n: i64 = row.try_get(1)?;
        parts.push(format!("{}: {n}", reason.unwrap_or_else(|| "?".into())));
    }
    Ok(parts.join(", "))
}

#[allow(clippy::too_many_arguments)]
async fn event(
    tx: &mut Tx,
    rollout: i64,
    from: Option<RolloutState>,
    to: RolloutState,
    wave: Option<usize>,
    action: &str,
    reason: &str,
    counts: Option<&WaveCounts>,
) -> ApiResult<()> {
    let counts = counts
        .map(serde_json::to_string)
        .transpose()
        .map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO rollout_event (rollout, from_state, to_state, wave, action, reason, counts, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(rollout)
    .bind(from.map(|s| s.as_str().to_owned()))
    .bind(to.as_str())
    .bind(wave.map(|w| i64::try_from(w).unwrap_or_default()))
    .bind(action)
    .bind(reason)
    .bind(counts)
    .bind(db::now())
    .execute(&mut **tx)
    .await?;
    tracing::info!(rollout, from = ?from, to = %to, action, reason, "rollout transition");
    Ok(())
}

async fn set_state(
    tx: &mut Tx,
    id: i64,
    state: RolloutState,
    current_wave: usize,
) -> ApiResult<()> {
    sqlx::query("UPDATE rollout SET state = $1, current_wave = $2, updated_at = $3 WHERE id = $4")
        .bind(state.as_str())
        .bind(i64::try_from(current_wave).unwrap_or_default())
        .bind(db::now())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `device` is one of the ids bound as parameter `$n`, in one statement
/// however many ids there are: a list spliced into the SQL would be parsed
/// and planned once per chunk (a pass that starts 100k soaks took 4.8 s on
/// PostgreSQL that way). Bind [`id_list`]'s text.
fn device_in(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("device = ANY(CAST(string_to_array(${n}, ',') AS BIGINT[]))"),
        Dialect::Sqlite => format!("device IN (SELECT value FROM json_each(${n}))"),
    }
}

/// The text [`device_in`] reads: `1,2,3` for PostgreSQL, `[1,2,3]` for SQLite.
fn id_list(dialect: Dialect, ids: &[i64]) -> String {
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    match dialect {
        Dialect::Postgres => list,
        Dialect::Sqlite => format!("[{list}]"),
    }
}

/// What a group of members gets.
enum Set<'a> {
    /// `running_since = now`: the soak starts.
    SoakFrom(i64),
    /// The soak starts again.
    SoakReset,
    /// The soak starts again and the restart counter goes up.
    Crash,
    Healthy,
    Excluded,
    Failed(&'a str),
}

/// Runs `UPDATE rollout_device SET <set> WHERE rollout = <id> AND device IN (ids)`
/// as one statement.
async fn update_members(
    tx: &mut Tx,
    dialect: Dialect,
    rollout: i64,
    set: Set<'_>,
    ids: &[i64],
) -> ApiResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let (sql, value, reason) = match set {
        Set::SoakFrom(now) => ("running_since = $3", Some(now), None),
        Set::SoakReset => ("running_since = NULL", None, None),
        Set::Crash => ("running_since = NULL, restarts = restarts + 1", None, None),
        Set::Healthy => ("state = 'healthy'", None, None),
        Set::Excluded => ("state = 'excluded'", None, None),
        Set::Failed(r) => ("state = 'failed', reason = $3", None, Some(r)),
    };
    let sql = format!(
        "UPDATE rollout_device SET {sql} WHERE rollout = $1 AND {}",
        device_in(dialect, 2)
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(rollout)
        .bind(id_list(dialect, ids));
    if let Some(v) = value {
        q = q.bind(v);
    }
    if let Some(r) = reason {
        q = q.bind(r.to_owned());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Looks at every undecided member once and records what changed.
async fn observe_members(
    tx: &mut Tx,
    dialect: Dialect,
    r: &RolloutRow,
    target: &Target,
    now: i64,
) -> ApiResult<()> {
    let rows = sqlx::query(
        "SELECT rd.device, rd.wave, rd.assigned_at, rd.running_since, rd.restarts, \
         d.apps, d.os_version, d.os_update_state, d.pinned_release, d.target_os_version, d.fleet \
         FROM rollout_device rd JOIN device d ON d.id = rd.device \
         WHERE rd.rollout = $1 AND rd.state = 'assigned'",
    )
    .bind(r.id)
    .fetch_all(&mut **tx)
    .await?;
    let mut groups: BTreeMap<&'static str, Vec<i64>> = BTreeMap::new();
    let mut failed: BTreeMap<&'static str, Vec<i64>> = BTreeMap::new();
    for row in &rows {
        let device: i64 = row.try_get(0)?;
        let wave: i64 = row.try_get(1)?;
        let assigned_at: Option<i64> = row.try_get(2)?;
        let running_since: Option<i64> = row.try_get(3)?;
        let restarts: i64 = row.try_get(4)?;
        let pinned: Option<i64> = row.try_get(8)?;
        let own_os: Option<String> = row.try_get(9)?;
        let fleet: i64 = row.try_get(10)?;
        let Some(w) = usize::try_from(wave).ok().and_then(|i| r.waves.get(i)) else {
            continue;
        };
        let excluded = fleet != r.fleet
            || match target {
                Target::Release(..) => pinned.is_some(),
                Target::Os(_) => own_os.is_some(),
            };
        let s = if excluded {
            Step::Excluded
        } else {
            let view = DeviceView {
                apps: row.try_get(5)?,
                os_version: row.try_get(6)?,
                os_update_state: row.try_get(7)?,
            };
            step(
                observe(target, &view),
                w,
                assigned_at.unwrap_or(now),
                running_since,
                restarts,
                now,
            )
        };
        let key = match s {
            Step::Nothing => continue,
            Step::StartSoak => "start",
            Step::ResetSoak => "reset",
            Step::Crash => "crash",
            Step::Healthy => "healthy",
            Step::Excluded => "excluded",
            Step::Failed(reason) => {
                failed.entry(reason).or_default().push(device);
                continue;
            }
        };
        groups.entry(key).or_default().push(device);
    }
    for (key, ids) in &groups {
        let set = match *key {
            "start" => Set::SoakFrom(now),
            "reset" => Set::SoakReset,
            "crash" => Set::Crash,
            "healthy" => Set::Healthy,
            _ => Set::Excluded,
        };
        update_members(tx, dialect, r.id, set, ids).await?;
    }
    for (reason, ids) in &failed {
        update_members(tx, dialect, r.id, Set::Failed(reason), ids).await?;
    }
    Ok(())
}

/// Ends a rollout that met its last wave: the fleet's target becomes the
/// new release/OS and the per-device assignments are cleared.
async fn complete(tx: &mut Tx, r: &RolloutRow, target: &Target) -> ApiResult<()> {
    match target {
        Target::Release(rel, _) => {
            sqlx::query("UPDATE fleet SET target_release = $1 WHERE id = $2")
                .bind(*rel)
                .bind(r.fleet)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "UPDATE device SET rollout_release = NULL WHERE id IN \
                 (SELECT device FROM rollout_device WHERE rollout = $1)",
            )
            .bind(r.id)
            .execute(&mut **tx)
            .await?;
        }
        Target::Os(v) => {
            sqlx::query("UPDATE fleet SET target_os_version = $1 WHERE id = $2")
                .bind(v.clone())
                .bind(r.fleet)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "UPDATE device SET rollout_os_version = NULL WHERE id IN \
                 (SELECT device FROM rollout_device WHERE rollout = $1)",
            )
            .bind(r.id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Moves the updated devices back: their assignment is cleared, so they
/// follow the fleet's target again, which a rollout leaves at the previous
/// release/OS until it completes. Answers how many moved.
async fn roll_back(tx: &mut Tx, r: &RolloutRow) -> ApiResult<u64> {
    let col = if r.release.is_some() {
        "rollout_release"
    } else {
        "rollout_os_version"
    };
    let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE device SET {col} = NULL WHERE {col} IS NOT NULL AND id IN \
         (SELECT device FROM rollout_device WHERE rollout = $1 AND state IN ('assigned', 'healthy', 'failed'))"
    )))
    .bind(r.id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE rollout_device SET state = 'reverted' WHERE rollout = $1 \
         AND state IN ('assigned', 'healthy', 'failed')",
    )
    .bind(r.id)
    .execute(&mut **tx)
    .await?;
    Ok(moved)
}

/// One evaluation of a running rollout: look at the members, then halt,
/// advance, pause or complete.
/// Answers whether a device's target changed.
async fn evaluate(tx: &mut Tx, dialect: Dialect, mut r: RolloutRow, now: i64) -> ApiResult<bool> {
    let target = target_of(tx, &r).await?;
    materialise(tx, &r, &target).await?;
    let mut moved = assign(tx, &r, &target, now).await? > 0;
    observe_members(tx, dialect, &r, &target, now).await?;
    loop {
        let c = counts(tx, &r).await?;
        for (i, w) in r.waves.iter().enumerate().take(r.current_wave + 1) {
            if let Some(why) = tripped(w, &c[i]) {
                let reasons = failure_reasons(tx, &r, i).await?;
                let reason = format!("wave {}: {why}; failures: {reasons}", i + 1);
                set_state(tx, r.id, RolloutState::Halted, r.current_wave).await?;
                event(
                    tx,
                    r.id,
                    Some(RolloutState::Running),
                    RolloutState::Halted,
                    Some(i),
                    "halt",
                    &reason,
                    Some(&c[i]),
                )
                .await?;
                return Ok(moved);
            }
        }
        let cw = r.current_wave;
        let (w, cc) = match (r.waves.get(cw), c.get(cw)) {
            (Some(w), Some(cc)) => (w, cc),
            _ => return Ok(moved),
        };
        if cc.pending > 0 || !succeeded(w, cc) {
            return Ok(moved);
        }
        let met = format!(
            "wave {}: {} of {} devices healthy, success_percent {} met",
            cw + 1,
            cc.healthy,
            cc.size.saturating_sub(cc.excluded),
            w.success_percent
        );
        if cw + 1 >= r.waves.len() {
            complete(tx, &r, &target).await?;
            set_state(tx, r.id, RolloutState::Completed, cw).await?;
            event(
                tx,
                r.id,
                Some(RolloutState::Running),
                RolloutState::Completed,
                Some(cw),
                "complete",
                &format!("{met}; the fleet's target is now the rollout's"),
                Some(cc),
            )
            .await?;
            return Ok(true);
        }
        r.current_wave = cw + 1;
        if w.pause_after {
            set_state(tx, r.id, RolloutState::Paused, r.current_wave).await?;
            event(
                tx,
                r.id,
                Some(RolloutState::Running),
                RolloutState::Paused,
                Some(cw),
                "pause",
                &format!("{met}; the wave asks to pause (resume to go on)"),
                Some(cc),
            )
            .await?;
            return Ok(moved);
        }
        set_state(tx, r.id, RolloutState::Running, r.current_wave).await?;
        event(
            tx,
            r.id,
            Some(RolloutState::Running),
            RolloutState::Running,
            Some(cw),
            "advance",
            &format!("{met}; wave {} starts", cw + 2),
            Some(cc),
        )
        .await?;
        moved |= assign(tx, &r, &target, now).await? > 0;
    }
}

/// Passes done by this process: (rollout, the pass number it read), for
/// tests that check no pass ran twice.
#[derive(Debug, Clone, Default)]
pub struct Passes(pub Arc<Mutex<Vec<(i64, i64)>>>);

/// Evaluates every running rollout that is due at `now` (ms), each in its
/// own transaction, claimed so that no other replica evaluates it in the
/// same pass. Answers the rollouts evaluated.
pub async fn run_due(
    app: &AppState,
    now: i64,
    interval_ms: i64,
    passes: &Passes,
) -> ApiResult<Vec<i64>> {
    let db = &app.db;
    let due: Vec<i64> = sqlx::query(
        "SELECT id FROM rollout WHERE state = 'running' AND next_eval_at <= $1 ORDER BY id",
    )
    .bind(now)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?;
    let lock = match db.dialect {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let mut done = Vec::new();
    for id in due {
        let mut tx = db.begin_write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLS}, r.passes FROM rollout r WHERE r.id = $1 AND r.state = 'running' \
             AND r.next_eval_at <= $2{lock}"
        )))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Another replica has it, or has just done it.
            continue;
        };
        let r = read_row(&row)?;
        let fleet = r.fleet;
        let pass: i64 = row.try_get(8)?;
        let moved = evaluate(&mut tx, db.dialect, r, now).await?;
        sqlx::query("UPDATE rollout SET passes = passes + 1, next_eval_at = $1 WHERE id = $2")
            .bind(now.saturating_add(interval_ms))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if moved {
            cache::changed(app, Change::Fleet(fleet)).await;
        }
        if let Ok(mut p) = passes.0.lock() {
            p.push((id, pass));
        }
        done.push(id);
    }
    Ok(done)
}

/// The evaluator of this replica; runs forever every `interval_ms`.
pub async fn evaluator(app: AppState, interval_ms: u64, passes: Passes) {
    let every = std::time::Duration::from_millis(interval_ms.max(1));
    let interval = i64::try_from(interval_ms).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = run_due(&app, now_ms(), interval, &passes).await {
            tracing::warn!("rollout evaluator: {}", e.message);
        }
    }
}

// ---------------------------------------------------------------------------
// The API.

/// Loads rollout `id` if the caller may see it, locked for a change.
async fn load(tx: &mut Tx, db: &Db, actor: &Actor, id: i64, lock: bool) -> ApiResult<RolloutRow> {
    // A change needs write access (a read-only key may only look).
    let scope = if lock {
        perms::write_scope(actor, "rollout", "r")
    } else {
        perms::read_scope(actor, "rollout", "r")
    }
    .to_sql();
    let lock = if lock && db.dialect == Dialect::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLS} FROM rollout r WHERE r.id = $1 AND {scope}{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("rollout({id}) does not exist")))?;
    read_row(&row)
}

/// `POST /v1/rollout`: a draft rollout.
pub async fn create(app: &AppState, actor: &Actor, body: &[u8]) -> ApiResult<RolloutProgress> {
    let db = &app.db;
    let spec: CreateRollout = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid rollout: {e}")))?;
    validate(&spec)?;
    let mut tx = db.begin_write().await?;
    let scope = perms::write_scope(actor, "fleet", "f").to_sql();
    let fleet = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT f.id, f.device_type, f.owner, f.name FROM fleet f WHERE f.id = $1 AND {scope}"
    )))
    .bind(spec.fleet)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| {
        ApiError::bad_request_field("fleet", format!("fleet({}) does not exist", spec.fleet))
    })?;
    let device_type: String = fleet.try_get(1)?;
    let owner: i64 = fleet.try_get(2)?;
    let fleet_name: String = fleet.try_get(3)?;
    if let Some(rel) = spec.release {
        let of: Option<i64> = sqlx::query("SELECT fleet FROM \"release\" WHERE id = $1")
            .bind(rel)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if of != Some(spec.fleet) {
            return Err(ApiError::bad_request_field(
                "release",
                format!("release({rel}) is not a release of fleet({})", spec.fleet),
            ));
        }
    }
    if let Some(v) = &spec.os_version {
        let found = sqlx::query(
            "SELECT id FROM os_release WHERE owner = $1 AND device_type = $2 AND version = $3",
        )
        .bind(owner)
        .bind(&device_type)
        .bind(v)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Err(ApiError::bad_request_field(
                "os_version",
                format!("there is no OS release {v:?} for device type {device_type:?}"),
            ));
        }
    }
    let open = sqlx::query(
        "SELECT id, state FROM rollout WHERE fleet = $1 AND state IN ('draft', 'running', 'paused', 'halted')",
    )
    .bind(spec.fleet)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(o) = open {
        let oid: i64 = o.try_get(0)?;
        let st: String = o.try_get(1)?;
        return Err(overlap(spec.fleet, oid, &st));
    }
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| format!("{fleet_name} rollout"));
    let waves = serde_json::to_string(&spec.waves).map_err(ApiError::internal)?;
    let now = db::now();
    let id: i64 = match sqlx::query(
        "INSERT INTO rollout (fleet, name, \"release\", os_version, waves, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'draft', $6, $7) RETURNING id",
    )
    .bind(spec.fleet)
    .bind(&name)
    .bind(spec.release)
    .bind(spec.os_version.clone())
    .bind(waves)
    .bind(&now)
    .bind(&now)
    .fetch_one(&mut *tx)
    .await
    {
        Ok(r) => r.try_get(0)?,
        // The unique index: a concurrent create won.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(overlap(spec.fleet, 0, "open"))
        }
        Err(e) => return Err(e.into()),
    };
    event(
        &mut tx,
        id,
        None,
        RolloutState::Draft,
        None,
        "create",
        "created",
        None,
    )
    .await?;
    tx.commit().await?;
    progress(db, actor, id).await
}

fn overlap(fleet: i64, other: i64, state: &str) -> ApiError {
    let which = if other > 0 {
        format!("rollout({other}) is {state}")
    } else {
        "another rollout is open".into()
    };
    ApiError::conflict_field(
        "fleet",
        format!(
            "fleet({fleet}) already has an open rollout: {which}; complete, roll back or cancel it first"
        ),
    )
}

/// `POST /v1/rollout({id})/{action}`.
pub async fn act(
    app: &AppState,
    actor: &Actor,
    id: i64,
    action: &str,
    body: &[u8],
) -> ApiResult<RolloutProgress> {
    let req: RolloutAction = if body.iter().all(u8::is_ascii_whitespace) {
        RolloutAction::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if let Some(r) = &req.reason {
        if r.len() > 1024 {
            return Err(ApiError::bad_request_field(
                "reason",
                "reason is longer than 1024 bytes",
            ));
        }
    }
    let db = &app.db;
    let mut tx = db.begin_write().await?;
    let r = load(&mut tx, db, actor, id, true).await?;
    let fleet = r.fleet;
    let to = transition(action, r.state).map_err(ApiError::conflict)?;
    let by_user = req
        .reason
        .clone()
        .unwrap_or_else(|| format!("{action} by the user"));
    let mut reason = by_user;
    let now = now_ms();
    match action {
        "start" => {
            let target = target_of(&mut tx, &r).await?;
            let members = materialise(&mut tx, &r, &target).await?;
            set_state(&mut tx, r.id, to, 0).await?;
            let started = RolloutRow {
                state: to,
                current_wave: 0,
                ..r
            };
            let assigned = assign(&mut tx, &started, &target, now).await?;
            reason = format!(
                "{reason}; {members} devices in {} waves, {assigned} in wave 1",
                started.waves.len()
            );
            sqlx::query("UPDATE rollout SET next_eval_at = $1 WHERE id = $2")
                .bind(now)
                .bind(r.id)
                .execute(&mut *tx)
                .await?;
            event(
                &mut tx,
                r.id,
                Some(r.state),
                to,
                Some(0),
                action,
                &reason,
                None,
            )
            .await?;
            tx.commit().await?;
            cache::changed(app, Change::Fleet(fleet)).await;
            return progress(db, actor, id).await;
        }
        "rollback" => {
            let moved = roll_back(&mut tx, &r).await?;
            reason = format!("{reason}; {moved} devices moved back");
        }
        _ => {}
    }
    set_state(&mut tx, r.id, to, r.current_wave).await?;
    if to == RolloutState::Running {
        sqlx::query("UPDATE rollout SET next_eval_at = $1 WHERE id = $2")
            .bind(now)
            .bind(r.id)
            .execute(&mut *tx)
            .await?;
    }
    event(
        &mut tx,
        r.id,
        Some(r.state),
        to,
        Some(r.current_wave),
        action,
        &reason,
        None,
    )
    .await?;
    tx.commit().await?;
    if action == "rollback" {
        cache::changed(app, Change::Fleet(fleet)).await;
    }
    progress(db, actor, id).await
}

/// `GET /v1/rollout({id})/progress`: per-wave counts and the events.
pub async fn progress(db: &Db, actor: &Actor, id: i64) -> ApiResult<RolloutProgress> {
    let mut tx = db.pool.begin().await?;
    let r = load(&mut tx, db, actor, id, false).await?;
    let c = counts(&mut tx, &r).await?;
    let mut events = Vec::new();
    for e in sqlx::query(
        "SELECT created_at, from_state, to_state, action, reason, wave, counts \
         FROM rollout_event WHERE rollout = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?
    {
        let from: Option<String> = e.try_get(1)?;
        let to: String = e.try_get(2)?;
        let wave: Option<i64> = e.try_get(5)?;
        let counts: Option<String> = e.try_get(6)?;
        events.push(RolloutEvent {
            at: e.try_get(0)?,
            from: from.as_deref().and_then(RolloutState::parse),
            to: RolloutState::parse(&to).unwrap_or(RolloutState::Draft),
            action: e.try_get(3)?,
            reason: e.try_get(4)?,
            wave: wave.and_then(|w| u64::try_from(w).ok()),
            counts: counts.and_then(|c| serde_json::from_str(&c).ok()),
        });
    }
    tx.commit().await?;
    Ok(RolloutProgress {
        id: r.id,
        fleet: r.fleet,
        name: r.name,
        state: r.state,
        release: r.release,
        os_version: r.os_version,
        current_wave: r.current_wave as u64,
        waves: r
            .waves
            .into_iter()
            .zip(c)
            .map(|(wave, counts)| WaveProgress { wave, counts })
            .collect(),
        events,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(waves: Vec<Wave>) -> CreateRollout {
        CreateRollout {
            fleet: 1,
            name: None,
            release: Some(1),
            os_version: None,
            waves,
        }
    }

    #[test]
    fn waves_must_grow_and_reach_100() {
        assert!(validate(&spec(vec![Wave::percent(10), Wave::percent(100)])).is_ok());
        let e = validate(&spec(vec![Wave::percent(10), Wave::percent(50)])).unwrap_err();
        assert!(e.message.contains("100 %"), "{}", e.message);
        assert!(validate(&spec(vec![
            Wave::percent(50),
            Wave::percent(10),
            Wave::percent(100)
        ]))
        .is_err());
        assert!(validate(&spec(vec![])).is_err());
        let mut w = Wave::percent(100);
        w.max_failure_percent = 101;
        assert!(validate(&spec(vec![w.clone()])).is_err());
        w.max_failure_percent = 10;
        w.success_percent = 0;
        assert!(validate(&spec(vec![w.clone()])).is_err());
        w.success_percent = 100;
        w.timeout_secs = w.soak_secs;
        assert!(validate(&spec(vec![w])).is_err());
        let mut both = spec(vec![Wave::percent(100)]);
        both.os_version = Some("3.0".into());
        assert!(validate(&both).is_err());
    }

    #[test]
    fn membership_is_stable_and_near_the_percentages() {
        let waves = vec![Wave::percent(10), Wave::percent(50), Wave::percent(100)];
        let mut n = [0usize; 3];
        for i in 0..10_000 {
            let uuid = format!("{i:032x}");
            let w = wave_of(&waves, 7, &uuid, None);
            assert_eq!(w, wave_of(&waves, 7, &uuid, None));
            n[w] += 1;
        }
        assert!((800..1200).contains(&n[0]), "{n:?}");
        assert!((3600..4400).contains(&n[1]), "{n:?}");
        let mut tags = BTreeMap::new();
        tags.insert("canary".to_owned(), "yes".to_owned());
        let mut canary = Wave::percent(1);
        canary.percent = None;
        canary.tags = Some(tags.clone());
        let waves = vec![canary, Wave::percent(100)];
        assert_eq!(wave_of(&waves, 7, "ab", Some(&tags)), 0);
        assert_eq!(wave_of(&waves, 7, "ab", None), 1);
    }

    #[test]
    fn steps_soak_crash_and_time_out() {
        let mut w = Wave::percent(100);
        w.soak_secs = 10;
        w.timeout_secs = 60;
        assert_eq!(step(Obs::Running, &w, 0, None, 0, 1000), Step::StartSoak);
        assert_eq!(
            step(Obs::Running, &w, 0, Some(1000), 0, 5000),
            Step::Nothing
        );
        assert_eq!(
            step(Obs::Running, &w, 0, Some(1000), 0, 11_000),
            Step::Healthy
        );
        assert_eq!(step(Obs::Crashed, &w, 0, Some(1000), 0, 2000), Step::Crash);
        assert_eq!(
            step(Obs::Crashed, &w, 0, None, 1, 3000),
            Step::Failed("crash loop")
        );
        assert_eq!(
            step(Obs::Waiting, &w, 0, None, 0, 61_000),
            Step::Failed("timeout")
        );
        assert_eq!(step(Obs::Waiting, &w, 0, Some(5), 0, 6), Step::ResetSoak);
    }

    #[test]
    fn thresholds_wait_for_the_sample() {
        let mut w = Wave::percent(100);
        w.min_sample = 10;
        w.max_failure_percent = 20;
        let c = |healthy, failed| WaveCounts {
            size: 100,
            healthy,
            failed,
            ..Default::default()
        };
        assert!(tripped(&w, &c(0, 5)).is_none(), "below the sample");
        assert!(tripped(&w, &c(7, 3)).is_some());
        assert!(
            tripped(&w, &c(8, 2)).is_none(),
            "20 % is not more than 20 %"
        );
        w.max_failures = Some(1);
        assert!(tripped(&w, &c(0, 2)).is_some());
    }

    #[test]
    fn transitions_are_guarded() {
        use RolloutState::*;
        assert_eq!(transition("start", Draft), Ok(Running));
        assert_eq!(transition("resume", Halted), Ok(Running));
        let e = transition("pause", Completed).unwrap_err();
        assert!(e.contains("cannot pause a completed rollout"), "{e}");
        assert!(transition("start", Running).is_err());
        assert!(transition("rollback", Completed).is_err());
        assert!(transition("explode", Running).is_err());
    }

    #[test]
    fn health_from_reports() {
        let t = Target::Release(1, "new".into());
        let apps = |status: &str, rel: &str| DeviceView {
            apps: Some(format!(
                r#"{{"a":{{"services":{{"main":{{"status":"{status}","release_uuid":"{rel}","image":"i"}}}}}}}}"#
            )),
            ..Default::default()
        };
        assert_eq!(observe(&t, &apps("running", "new")), Obs::Running);
        assert_eq!(observe(&t, &apps("running", "old")), Obs::Waiting);
        assert_eq!(observe(&t, &apps("exited", "new")), Obs::Crashed);
        assert_eq!(observe(&t, &apps("downloading", "new")), Obs::Waiting);
        let os = Target::Os("3.0".into());
        let d = |v: &str, s: &str| DeviceView {
            apps: None,
            os_version: Some(v.into()),
            os_update_state: Some(s.into()),
        };
        assert_eq!(observe(&os, &d("3.0", "committed")), Obs::Running);
        assert_eq!(observe(&os, &d("3.0", "verifying")), Obs::Waiting);
        assert_eq!(
            observe(&os, &d("2.0", "rolled-back")),
            Obs::Failed("os rollback")
        );
        assert_eq!(
            observe(&os, &d("2.0", "failed")),
            Obs::Failed("install error")
        );
    }
}
