//! The device API (design.md): registration with a provisioning key, the
//! target state with a strong ETag, the current-state PATCH and the NDJSON
//! log stream.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use resin_api_types::{
    config_flag, AppTarget, BundleRef, DeviceTarget, OsTarget, RegisterProof, RegisterRequest,
    RegisterResponse, ReleaseTarget, StateReport, TargetState, OS_ALLOW_DOWNGRADE_VAR,
};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::auth::{self, KeyKind};
use crate::cache::{self, Change};
use crate::error::{ApiError, ApiResult};
use crate::resources::{bind_all, check_slug, check_uuid, dyn_query, Param};
use crate::{db, perms, AppState};

/// Parses a JSON body into `T`, answering 400 with serde's message.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `POST /device/register`
pub async fn register(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let actor = auth::resolve(&app.db, &headers).await?;
    let fleet = perms::may_register(&actor)?;
    let req: RegisterRequest = json_body(&body)?;
    check_uuid(&req.uuid)?;
    check_slug("deviceType", &req.device_type)?;
    check_len("name", req.name.as_deref(), caps::NAME)?;
    check_len(
        "supervisorVersion",
        req.supervisor_version.as_deref(),
        caps::VERSION,
    )?;
    check_len("osVersion", req.os_version.as_deref(), caps::VERSION)?;
    let fleet_type: String = sqlx::query("SELECT device_type FROM fleet WHERE id = $1")
        .bind(fleet)
        .fetch_one(&app.db.pool)
        .await?
        .try_get(0)?;
    if fleet_type != req.device_type {
        return Err(ApiError::bad_request(format!(
            "deviceType {:?} does not match the fleet's device type {fleet_type:?}",
            req.device_type
        )));
    }
    let proof: RegisterProof = json_body(&body)?;
    let proved = proof.api_key.is_some();
    let (key, hash) = match proof.api_key {
        Some(k) => {
            check_device_key(&k)?;
            let h = auth::hash_key(&k);
            (k, h)
        }
        None => auth::new_key(KeyKind::Device),
    };
    let mut tx = app.db.begin_write().await?;
    let existing = sqlx::query("SELECT id, fleet, api_key_hash FROM device WHERE uuid = $1")
        .bind(&req.uuid)
        .fetch_optional(&mut *tx)
        .await?;
    let (id, status) = match existing {
        Some(row) => {
            let id: i64 = row.try_get(0)?;
            let their_fleet: i64 = row.try_get(1)?;
            let stored: Option<String> = row.try_get(2)?;
            // A uuid already registered is answered again only to the
            // device itself: the request carries its current key (a retry
            // after a lost answer, with the key the device chose). Anyone
            // else, a provisioning-key holder of any fleet included, gets
            // the same 409 whatever fleet or tenant the uuid is in.
            let same_key = proved
                && stored.is_some_and(|s| auth::constant_time_eq(s.as_bytes(), hash.as_bytes()));
            if !same_key || their_fleet != fleet {
                tracing::warn!(uuid = %req.uuid, fleet, "re-registration without the device key refused");
                return Err(ApiError::conflict_field(
                    "uuid",
                    format!(
                        "uuid {} is already registered; registering it again needs the \
                         device's current key as apiKey (or register with a fresh uuid)",
                        req.uuid
                    ),
                ));
            }
            // The same device, the same key: nothing changes.
            (id, StatusCode::OK)
        }
        None => {
            let name = req
                .name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| req.uuid[..7].to_owned());
            let row = sqlx::query(
                "INSERT INTO device (uuid, name, fleet, device_type, api_key_hash, \
                 supervisor_version, os_version, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(&req.uuid)
            .bind(name)
            .bind(fleet)
            .bind(&req.device_type)
            .bind(&hash)
            .bind(req.supervisor_version.clone())
            .bind(req.os_version.clone())
            .bind(db::now())
            .fetch_one(&mut *tx)
            .await?;
            (row.try_get(0)?, StatusCode::CREATED)
        }
    };
    tx.commit().await?;
    tracing::info!(device = id, uuid = %req.uuid, fleet, "device registered");
    Ok((
        status,
        Json(RegisterResponse {
            id,
            uuid: req.uuid,
            api_key: key,
        }),
    )
        .into_response())
}

/// A device key a device chose itself: `resin_d_` and 32 to 128 of
/// `[A-Za-z0-9_-]` (the cloud's own are `resin_d_` and 64 hex digits).
fn check_device_key(k: &str) -> ApiResult<()> {
    let rest = k.strip_prefix("resin_d_").unwrap_or_default();
    if !(32..=128).contains(&rest.len())
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(ApiError::bad_request_field(
            "apiKey",
            "apiKey must be resin_d_ followed by 32 to 128 of A-Z, a-z, 0-9, '_', '-'",
        ));
    }
    Ok(())
}

/// Builds the target state of device `id`.
pub async fn build_target(app: &AppState, id: i64) -> ApiResult<TargetState> {
    let row = sqlx::query(
        "SELECT d.uuid, d.name, d.device_type, d.pinned_release, d.target_os_version, \
         f.id, f.name, f.uuid, f.target_release, f.target_os_version, f.owner, \
         d.rollout_release, d.rollout_os_version, \
         CASE WHEN EXISTS (SELECT 1 FROM rollout_device rd JOIN rollout r ON r.id = rd.rollout \
           WHERE rd.device = d.id AND rd.state = 'reverted' AND r.os_version = d.os_version) \
           THEN 1 ELSE 0 END, d.action \
         FROM device d JOIN fleet f ON f.id = d.fleet WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(&app.db.pool)
    .await?;
    let uuid: String = row.try_get(0)?;
    let name: String = row.try_get(1)?;
    let device_type: String = row.try_get(2)?;
    let pinned: Option<i64> = row.try_get(3)?;
    let dev_os: Option<String> = row.try_get(4)?;
    let fleet_id: i64 = row.try_get(5)?;
    let fleet_name: String = row.try_get(6)?;
    let fleet_uuid: String = row.try_get(7)?;
    let fleet_release: Option<i64> = row.try_get(8)?;
    let fleet_os: Option<String> = row.try_get(9)?;
    let owner: i64 = row.try_get(10)?;
    // What a rollout assigned (crate::rollout): after a pin, before the fleet.
    let rollout_release: Option<i64> = row.try_get(11)?;
    let rollout_os: Option<String> = row.try_get(12)?;
    // The device runs the OS of a rollout that was rolled back: going back
    // down is what the rollback asked for.
    let on_reverted_os = row
        .try_get::<i32, _>(13)
        .map(i64::from)
        .or_else(|_| row.try_get::<i64, _>(13))?
        == 1;
    // Open device actions (crate::actions), kept on the row for this read.
    let open_actions: Option<String> = row.try_get(14)?;

    let mut app_target = AppTarget {
        id: fleet_id,
        name: fleet_name,
        ..Default::default()
    };
    let mut config = BTreeMap::new();
    let vars = sqlx::query(
        "SELECT 1, name, value FROM fleet_env_var WHERE fleet = $1 \
         UNION ALL SELECT 2, name, value FROM device_env_var WHERE device = $2 \
         UNION ALL SELECT 3, name, value FROM fleet_config_var WHERE fleet = $3 \
         UNION ALL SELECT 4, name, value FROM device_config_var WHERE device = $4",
    )
    .bind(fleet_id)
    .bind(id)
    .bind(fleet_id)
    .bind(id)
    .fetch_all(&app.db.pool)
    .await?;
    let mut device_config = Vec::new();
    for r in &vars {
        let layer: i64 = r
            .try_get::<i32, _>(0)
            .map(i64::from)
            .or_else(|_| r.try_get(0))?;
        let (k, v): (String, String) = (r.try_get(1)?, r.try_get(2)?);
        match layer {
            1 => {
                app_target.env.fleet.insert(k, v);
            }
            2 => {
                app_target.env.device.insert(k, v);
            }
            3 => {
                config.insert(k, v);
            }
            _ => device_config.push((k, v)),
        }
    }
    config.extend(device_config);

    if let Some(rel) = pinned.or(rollout_release).or(fleet_release) {
        if let Some(r) = sqlx::query("SELECT uuid, target_json FROM \"release\" WHERE id = $1")
            .bind(rel)
            .fetch_optional(&app.db.pool)
            .await?
        {
            let rel_uuid: String = r.try_get(0)?;
            let json: String = r.try_get(1)?;
            let mut target: ReleaseTarget =
                serde_json::from_str(&json).map_err(ApiError::internal)?;
            let svc_vars = sqlx::query(
                "SELECT s.name, v.name, v.value FROM service_env_var v \
                 JOIN service s ON s.id = v.service WHERE s.\"release\" = $1",
            )
            .bind(rel)
            .fetch_all(&app.db.pool)
            .await?;
            for v in &svc_vars {
                let svc: String = v.try_get(0)?;
                if let Some(s) = target.services.get_mut(&svc) {
                    s.environment.insert(v.try_get(1)?, v.try_get(2)?);
                }
            }
            app_target.releases.insert(rel_uuid, target);
        }
    }

    let os = match dev_os.or(rollout_os).or(fleet_os) {
        None => None,
        Some(version) => {
            // The fleet owner's own OS release, else a public one (an
            // admin's): another user's private 3.0 is never this fleet's 3.0.
            let r = sqlx::query(
                "SELECT id, bundle_sha256, bundle_size FROM os_release \
                 WHERE (owner = $1 OR is_public) AND device_type = $2 AND version = $3 \
                 ORDER BY CASE WHEN owner = $4 THEN 0 ELSE 1 END, id LIMIT 1",
            )
            .bind(owner)
            .bind(&device_type)
            .bind(&version)
            .bind(owner)
            .fetch_optional(&app.db.pool)
            .await?;
            let bundle = match r {
                Some(r) => {
                    let os_id: i64 = r.try_get(0)?;
                    let sha: Option<String> = r.try_get(1)?;
                    let size: Option<i64> = r.try_get(2)?;
                    match (sha, size) {
                        (Some(sha256), Some(size)) => Some(BundleRef {
                            url: format!("{}/os/bundle/{os_id}", app.config.public_url),
                            sha256,
                            size: u64::try_from(size).unwrap_or_default(),
                        }),
                        _ => None,
                    }
                }
                None => None,
            };
            let allow_downgrade = on_reverted_os
                || config
                    .get(OS_ALLOW_DOWNGRADE_VAR)
                    .is_some_and(|v| config_flag(v));
            Some(OsTarget {
                version,
                bundle,
                allow_downgrade,
            })
        }
    };
    let mut apps = BTreeMap::new();
    apps.insert(fleet_uuid, app_target);
    let mut state = TargetState::new();
    state.insert(
        uuid,
        DeviceTarget {
            name,
            config,
            apps,
            os,
            actions: crate::actions::open_actions(open_actions.as_deref()),
        },
    );
    Ok(state)
}

/// Does `If-None-Match` match `etag` (weak comparison, as RFC 9110 asks)?
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    let Some(v) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    v.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// `GET /device/v3/{uuid}/state`
///
/// Answered from [`crate::cache`] when the device is cached (no database
/// read at all, 304 or 200); otherwise read, built and cached.
pub async fn target_state(
    State(app): State<AppState>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key_digest = auth::bearer(&headers)
        .filter(|k| k.starts_with("resin_d_"))
        .map(auth::key_digest);
    let cached = key_digest.as_ref().and_then(|d| app.cache.get(d));
    let entry = match cached {
        Some(e) if e.uuid == uuid => e,
        _ => {
            let generation = app.cache.generation();
            let actor = auth::resolve(&app.db, &headers).await?;
            let id = perms::device_may_access(&actor, &uuid)?;
            let fleet = match &actor {
                auth::Actor::Device { fleet, .. } => *fleet,
                _ => return Err(ApiError::internal("a device actor without a fleet")),
            };
            let state = build_target(&app, id).await?;
            // BTreeMaps and struct field order make this deterministic.
            let bytes = serde_json::to_vec(&state).map_err(ApiError::internal)?;
            let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..16]));
            let entry = std::sync::Arc::new(crate::cache::Entry {
                id,
                uuid: uuid.clone(),
                fleet,
                key_digest: key_digest.unwrap_or_default(),
                etag: HeaderValue::from_str(&etag).map_err(ApiError::internal)?,
                body: Bytes::from(bytes),
            });
            if key_digest.is_some() {
                app.cache.insert(generation, entry.clone());
            }
            entry
        }
    };
    app.heartbeats.seen(entry.id);
    let etag = entry.etag.to_str().unwrap_or_default();
    if etag_matches(&headers, etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, entry.etag.clone())],
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, entry.etag.clone()),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        entry.body.clone(),
    )
        .into_response())
}

/// The device a device key belongs to, from the target-state cache when
/// the device is cached there (the cache drops a device on any change of
/// its key, fleet or row, or its deletion: [`cache::Change::Device`]), else
/// from the database.
async fn device_actor(app: &AppState, headers: &HeaderMap) -> ApiResult<auth::Actor> {
    let cached = auth::bearer(headers)
        .filter(|k| k.starts_with("resin_d_"))
        .and_then(|k| app.cache.get(&auth::key_digest(k)));
    match cached {
        Some(e) => Ok(auth::Actor::Device {
            id: e.id,
            uuid: e.uuid.clone(),
            fleet: e.fleet,
        }),
        None => auth::resolve(&app.db, headers).await,
    }
}

/// `UPDATE device SET <sets> WHERE id = <id>` with its parameters.
fn device_update(id: i64, sets: Vec<(&str, Param)>) -> (String, Vec<Param>) {
    let cols: Vec<String> = sets
        .iter()
        .enumerate()
        .map(|(i, (n, _))| format!("{n} = ${}", i + 1))
        .collect();
    let sql = format!(
        "UPDATE device SET {} WHERE id = ${}",
        cols.join(", "),
        sets.len() + 1
    );
    let mut params: Vec<Param> = sets.into_iter().map(|(_, p)| p).collect();
    params.push(Param::Int(Some(id)));
    (sql, params)
}

/// `PATCH /device/v3/state`
///
/// A device's own report that carries no action outcomes, no OS version and
/// no OS-update state is one `UPDATE` on its own (one round trip on
/// PostgreSQL); anything else is one transaction.
pub async fn report_state(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let actor = device_actor(&app, &headers).await?;
    let report: StateReport = json_body(&body)?;
    if report.is_empty() {
        return Err(ApiError::bad_request("the report names no device"));
    }
    let mut updates = Vec::new();
    let mut os_versions = Vec::new();
    for (uuid, r) in &report {
        let id = perms::device_may_access(&actor, uuid)?;
        check_report_sizes(r)?;
        let mut sets: Vec<(&str, Param)> = vec![
            ("last_seen", Param::Text(Some(db::now()))),
            ("is_online", Param::Bool(true)),
        ];
        let text = |v: &Option<String>| Param::Text(v.clone());
        let int = |v: Option<u64>| Param::Int(v.map(|x| i64::try_from(x).unwrap_or(i64::MAX)));
        if r.status.is_some() {
            sets.push(("status", text(&r.status)));
        }
        if let Some(v) = &r.os_version {
            os_versions.push((id, v.clone()));
        }
        if r.supervisor_version.is_some() {
            sets.push(("supervisor_version", text(&r.supervisor_version)));
        }
        if let Some(apps) = &r.apps {
            // AppReport holds only strings, enums and maps: this cannot fail.
            let json = serde_json::to_string(apps).unwrap_or_else(|_| "{}".to_owned());
            check_apps_len(json.len())?;
            sets.push(("apps", Param::Text(Some(json))));
        }
        if let Some(ips) = &r.ip_address {
            sets.push(("ip_address", Param::Text(Some(ips.join(" ")))));
        }
        if let Some(v) = r.cpu_usage {
            sets.push(("cpu_usage", Param::Real(Some(v))));
        }
        if let Some(v) = r.cpu_temp {
            sets.push(("cpu_temp", Param::Real(Some(v))));
        }
        for (name, v) in [
            ("memory_usage", r.memory_usage),
            ("memory_total", r.memory_total),
            ("storage_usage", r.storage_usage),
            ("storage_total", r.storage_total),
        ] {
            if v.is_some() {
                sets.push((name, int(v)));
            }
        }
        if let Some(os) = &r.os_update {
            sets.push((
                "os_update_state",
                Param::Text(Some(os.state.as_str().into())),
            ));
            sets.push(("os_update_progress", int(os.progress.map(u64::from))));
            sets.push(("os_update_reason", text(&os.reason)));
            if os.boot_slot.is_some() {
                sets.push(("boot_slot", text(&os.boot_slot)));
            }
        }
        updates.push((id, sets, r.actions.as_deref().unwrap_or_default(), r));
    }
    if os_versions.is_empty()
        && updates.len() == 1
        && updates[0].2.is_empty()
        && updates[0].3.os_update.is_none()
    {
        if let Some((id, sets, _, _)) = updates.pop() {
            let (sql, params) = device_update(id, sets);
            bind_all(dyn_query(sql), &params)
                .execute(&app.db.pool)
                .await?;
            return Ok((StatusCode::OK, Json(serde_json::json!({}))).into_response());
        }
    }
    let mut tx = app.db.begin_write().await?;
    let mut changed = Vec::new();
    for (id, sets, outcomes, r) in updates {
        if let Some(os) = &r.os_update {
            crate::os_history::record(&mut tx, id, os, r.os_version.as_deref()).await?;
        }
        if !outcomes.is_empty() && crate::actions::apply_outcomes(&mut tx, id, outcomes).await? {
            changed.push(id);
        }
        let (sql, params) = device_update(id, sets);
        bind_all(dyn_query(sql), &params).execute(&mut *tx).await?;
    }
    // The OS version is written only when it changed, because the target
    // depends on it (a rolled-back OS rollout allows the downgrade of a
    // device that runs its version): a changed version drops the device's
    // cached target.
    let mut os_changed = Vec::new();
    for (id, v) in os_versions {
        let n = sqlx::query(
            "UPDATE device SET os_version = $1 WHERE id = $2 \
             AND (os_version IS NULL OR os_version <> $3)",
        )
        .bind(&v)
        .bind(id)
        .bind(&v)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            os_changed.push(id);
        }
    }
    tx.commit().await?;
    changed.extend(os_changed);
    changed.sort_unstable();
    changed.dedup();
    for id in changed {
        cache::changed(&app, Change::Device(id)).await;
    }
    Ok((StatusCode::OK, Json(serde_json::json!({}))).into_response())
}

/// The most a device may write into each field it reports (bytes). What a
/// device writes, users download with every device listing, so one device
/// cannot bloat everyone's answers.
pub mod caps {
    /// `status`, `os_update.reason`.
    pub const STATUS: usize = 256;
    pub const REASON: usize = 1024;
    /// `os_version`, `supervisor_version`, `os_update.boot_slot`.
    pub const VERSION: usize = 128;
    /// The device name chosen at registration.
    pub const NAME: usize = 128;
    /// `ip_address`: addresses, and bytes of each.
    pub const IP_COUNT: usize = 32;
    pub const IP_LEN: usize = 64;
    /// `apps` as stored JSON.
    pub const APPS_JSON: usize = 256 * 1024;
    /// `actions`: outcomes in one report.
    pub const ACTIONS: usize = 64;
}

fn too_long(field: &str, max: usize) -> ApiError {
    ApiError::bad_request_field(field, format!("{field} is longer than {max} bytes"))
}

/// Checks a text field a device writes against its cap.
pub fn check_len(field: &str, v: Option<&str>, max: usize) -> ApiResult<()> {
    match v {
        Some(s) if s.len() > max => Err(too_long(field, max)),
        _ => Ok(()),
    }
}

/// Every device-written text field of a report against its cap (the apps
/// JSON is checked where it is serialised, [`check_apps_len`]); nothing is
/// stored when one is over: the caller checks before it writes.
fn check_report_sizes(r: &resin_api_types::DeviceReport) -> ApiResult<()> {
    check_len("status", r.status.as_deref(), caps::STATUS)?;
    if r.actions.as_ref().is_some_and(|a| a.len() > caps::ACTIONS) {
        return Err(ApiError::bad_request_field(
            "actions",
            format!("actions has more than {} entries", caps::ACTIONS),
        ));
    }
    check_len("os_version", r.os_version.as_deref(), caps::VERSION)?;
    check_len(
        "supervisor_version",
        r.supervisor_version.as_deref(),
        caps::VERSION,
    )?;
    if let Some(ips) = &r.ip_address {
        if ips.len() > caps::IP_COUNT {
            return Err(ApiError::bad_request_field(
                "ip_address",
                format!("ip_address has more than {} entries", caps::IP_COUNT),
            ));
        }
        for ip in ips {
            check_len("ip_address", Some(ip), caps::IP_LEN)?;
        }
    }
    if let Some(os) = &r.os_update {
        check_len("os_update.reason", os.reason.as_deref(), caps::REASON)?;
        check_len(
            "os_update.boot_slot",
            os.boot_slot.as_deref(),
            caps::VERSION,
        )?;
    }
    Ok(())
}

/// The apps report as stored JSON (`len` bytes) against its cap: 413.
fn check_apps_len(len: usize) -> ApiResult<()> {
    if len > caps::APPS_JSON {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!(
                "apps is {len} bytes as JSON, more than {} bytes",
                caps::APPS_JSON
            ),
        )
        .with_target("apps"));
    }
    Ok(())
}

/// Marks devices offline after the configured silence; runs forever.
pub async fn offline_sweeper(app: AppState) {
    let every = Duration::from_secs((app.config.offline_after_secs / 4).clamp(1, 30));
    loop {
        tokio::time::sleep(every).await;
        let cutoff = db::format_ts(
            time::OffsetDateTime::now_utc()
                - time::Duration::seconds(
                    i64::try_from(app.config.offline_after_secs).unwrap_or(i64::MAX / 2),
                ),
        );
        let res = sqlx::query(
            "UPDATE device SET is_online = FALSE WHERE is_online = TRUE \
             AND (last_seen IS NULL OR last_seen < $1)",
        )
        .bind(cutoff)
        .execute(&app.db.pool)
        .await;
        match res {
            Ok(r) if r.rows_affected() > 0 => {
                tracing::info!(devices = r.rows_affected(), "marked offline");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("offline sweep: {e}"),
        }
    }
}
