//! The `/v1` routes: dispatch from URL segments (`device`, `device(42)`,
//! `device/$count`, `device(42)/logs`, …) to CRUD, queries and sub-resources.

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::auth::{self, Actor};
use crate::error::{ApiError, ApiResult};
use crate::schema::{self, Resource};
use crate::{logs, metadata, os, perms, query, resources, AppState};

/// `name` or `name(<integer key>)`.
pub fn parse_segment(seg: &str) -> ApiResult<(&'static Resource, Option<i64>)> {
    let (name, key) = match seg.find('(') {
        Some(i) => {
            let inner = seg[i + 1..].strip_suffix(')').ok_or_else(|| {
                ApiError::bad_request(format!("{seg:?}: the key must end with ')'"))
            })?;
            let inner = inner.strip_prefix("id=").unwrap_or(inner);
            let key = inner.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "{seg:?}: the key must be an integer, e.g. {}(42)",
                    &seg[..i]
                ))
            })?;
            (&seg[..i], Some(key))
        }
        None => (seg, None),
    };
    let res = schema::resource(name)
        .ok_or_else(|| ApiError::not_found(format!("no resource named {name:?}")))?;
    Ok((res, key))
}

fn body_json(body: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Everything at `/v1/{seg}`.
pub async fn v1(
    State(app): State<AppState>,
    method: Method,
    Path(seg): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        if seg == "$metadata" && method == Method::GET {
            return Ok(metadata::csdl_response());
        }
        let actor = auth::resolve(&app.db, &headers).await?;
        perms::may_use_v1(&actor)?;
        let (res, key) = parse_segment(&seg)?;
        match (method, key) {
            (Method::GET, key) => query::get(&app, &actor, res, key, q.as_deref(), false).await,
            (Method::POST, None) => {
                let (status, v) = resources::create(&app, &actor, res, &body_json(&body)?).await?;
                Ok((status, Json(v)).into_response())
            }
            (Method::PATCH, Some(id)) => {
                resources::patch(&app, &actor, res, id, &body_json(&body)?).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (Method::DELETE, Some(id)) => {
                resources::delete(&app, &actor, res, id).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (m, _) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} is not allowed on /v1/{seg}"),
            )),
        }
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Everything at `/v1/{seg}/{sub}`.
pub async fn v1_sub(
    State(app): State<AppState>,
    method: Method,
    Path((seg, sub)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let actor: Actor = auth::resolve(&app.db, &headers).await?;
        perms::may_use_v1(&actor)?;
        if seg == "os" && sub == "download" && method == Method::GET {
            return os::download(&app, &actor, q.as_deref()).await;
        }
        let (res, key) = parse_segment(&seg)?;
        match (method, res.name, key, sub.as_str()) {
            (Method::GET, _, None, "$count") => {
                query::get(&app, &actor, res, None, q.as_deref(), true).await
            }
            (Method::GET, "device", Some(id), "logs") => {
                logs::get_logs(&app, &actor, id, q.as_deref()).await
            }
            (Method::PUT, "os_release", Some(id), "bundle" | "image") => {
                os::upload(&app, &actor, id, &sub, body).await
            }
            _ => Err(ApiError::not_found(format!("no route /v1/{seg}/{sub}"))),
        }
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1`: the service document.
pub async fn service_document() -> Json<Value> {
    let sets: Vec<Value> = schema::RESOURCES
        .iter()
        .map(|r| serde_json::json!({"name": r.name, "kind": "EntitySet", "url": r.name}))
        .collect();
    Json(serde_json::json!({"@odata.context": "$metadata", "value": sets}))
}
