//! Releases: `POST /v1/release` with `{fleet, composition}`, where the
//! composition is a compose document as JSON. It is validated into the
//! shared [`ReleaseTarget`] shape, and service and image rows are created.

use axum::http::StatusCode;
use resin_api_types::{compose, ReleaseTarget};
use serde_json::Value;
use sqlx::Row;

use crate::auth::Actor;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{self, new_uuid};
use crate::{schema, AppState};

/// Validates a compose document (as JSON) into a release target, with the
/// one compose validator of api-types; a refusal is a 400 naming the
/// service and the field (`composition.services.web.ports[0]: …`).
pub fn parse_composition(doc: &Value) -> ApiResult<ReleaseTarget> {
    compose::parse_release(doc).map_err(|e| {
        if e.path.is_empty() {
            ApiError::bad_request(format!("composition: {}", e.message))
        } else {
            ApiError::bad_request(format!("composition.{e}"))
        }
    })
}

/// `POST /v1/release`.
pub async fn create(app: &AppState, actor: &Actor, body: &Value) -> ApiResult<(StatusCode, Value)> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "fleet" | "composition" | "status") {
            return Err(ApiError::bad_request(format!(
                "release has no writable field {k:?}"
            )));
        }
    }
    let fleet = obj
        .get("fleet")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("release.fleet (an integer) is required"))?;
    let status = match obj.get("status") {
        None => "success".to_owned(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "release.status must be a non-empty string",
            ))
        }
    };
    let composition = obj
        .get("composition")
        .ok_or_else(|| ApiError::bad_request("release.composition is required"))?;
    if !resources::may_write(app, actor, "fleet", fleet).await? {
        return Err(ApiError::bad_request(format!(
            "release.fleet: fleet({fleet}) not found"
        )));
    }
    let target = parse_composition(composition)?;
    let mut tx = app.db.begin_write().await?;
    let id = insert(&mut tx, fleet, composition, target, &status).await?;
    tx.commit().await?;
    crate::cache::changed(app, crate::cache::Change::Fleet(fleet)).await;
    let res =
        schema::resource("release").ok_or_else(|| ApiError::internal("no release resource"))?;
    Ok((
        StatusCode::CREATED,
        resources::read_one(app, actor, res, id).await?,
    ))
}

/// Inserts a validated release with its service and image rows inside
/// `tx`; the caller commits and calls `cache::changed`. The builder uses it
/// too, so a built release is made in the same transaction as the build's
/// `success`.
pub async fn insert(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    fleet: i64,
    composition: &Value,
    mut target: ReleaseTarget,
    status: &str,
) -> ApiResult<i64> {
    let row = sqlx::query(
        "INSERT INTO \"release\" (uuid, fleet, composition, target_json, status, created_at) \
         VALUES ($1, $2, $3, '{}', $4, $5) RETURNING id",
    )
    .bind(new_uuid())
    .bind(fleet)
    .bind(composition.to_string())
    .bind(status)
    .bind(db::now())
    .fetch_one(&mut **tx)
    .await?;
    let id: i64 = row.try_get(0)?;
    for (name, svc) in target.services.iter_mut() {
        let row = sqlx::query(
            "INSERT INTO service (\"release\", name, image) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(id)
        .bind(name)
        .bind(&svc.image)
        .fetch_one(&mut **tx)
        .await?;
        svc.id = row.try_get(0)?;
        let digest = svc
            .image
            .split_once('@')
            .map(|(_, d)| d.to_owned())
            .filter(|d| d.starts_with("sha256:"));
        sqlx::query(
            "INSERT INTO image (service, \"release\", ref, digest) VALUES ($1, $2, $3, $4)",
        )
        .bind(svc.id)
        .bind(id)
        .bind(&svc.image)
        .bind(digest)
        .execute(&mut **tx)
        .await?;
    }
    target.id = id;
    let json = serde_json::to_string(&target).map_err(ApiError::internal)?;
    sqlx::query("UPDATE \"release\" SET target_json = $1 WHERE id = $2")
        .bind(json)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}
